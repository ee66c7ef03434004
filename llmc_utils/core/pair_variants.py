"""The variants of a pair A, B whose barriers are measured: B as it is or aligned to A (weight matching), each with or
without REPAIR's BatchNorm reset of every interpolated model.

Why one place: the BN-reset stage, the alignment stage and `llmc barriers` measure the same barriers for several
versions of the same pair. A variant is only what the engine (evaluation.checkpoint_barriers and its kin) is called
with besides A: the state of B and the reset hook. Building the list here keeps the names and the order of the
`variant` column alike in all their tables and figures.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

PLAIN, BN_RESET, ALIGNED, ALIGNED_BN_RESET = "plain", "bn_reset", "aligned", "aligned+bn_reset"
VARIANTS = (PLAIN, BN_RESET, ALIGNED, ALIGNED_BN_RESET)  # every variant, in the order of the tables and figures


class Variant(NamedTuple):
    name: str
    state_b: dict  # B's state, or B's state aligned to A
    reset: Callable[[dict], dict] | None  # applied to every interpolated model (normalization.BNReset), or None


def pair_variants(
    state_b: dict, aligned_b: dict | None = None, reset: Callable[[dict], dict] | None = None, plain: str = PLAIN
) -> list[Variant]:
    """The variants of VARIANTS that the inputs allow, in that order: plain always; bn_reset with `reset`; aligned
    with `aligned_b` (B aligned to A); aligned+bn_reset with both. `plain` names B as it is: the alignment stage, which
    has no reset, calls it "unaligned" in its tables."""
    variants = [Variant(plain, state_b, None)]
    if reset is not None:
        variants.append(Variant(BN_RESET, state_b, reset))
    if aligned_b is not None:
        variants.append(Variant(ALIGNED, aligned_b, None))
        if reset is not None:
            variants.append(Variant(ALIGNED_BN_RESET, aligned_b, reset))
    return variants
