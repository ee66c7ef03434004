"""The language_model premise and claims on synthetic per-repetition metrics: the premise (a clear full barrier)
holds or fails on its interval; the claim (every single layer within Fig. 1's relative band beyond its standard error)
counts repetitions, and can come out reproduced, not reproduced or inconclusive, so it is not true by construction."""

import numpy as np
import pytest

from llmc_utils.core import claims
from llmc_utils.pipeline import registry
from llmc_utils.pipeline.report import ReportConfig
from llmc_utils.stages import language_model as lm

CFG = ReportConfig()  # clear_barrier 0.5, single_layer_relative 0.0435 (0.1 / 2.3)
CLAIM, LOOSE = lm.CLAIMS
REGIME = lm.PREMISES[0]
LAYERS = ["tok_emb", "blocks.0.attn.qkv", "head"]


def run(full: float, singles: list[float], se: float = 0.002) -> dict:
    """One repetition: the full barrier and its se, and every layer's barrier (both bases) at the last epoch 8."""
    m = dict(full_barrier_train_loss=full, full_barrier_train_loss_se=0.01, last_epoch=8)
    for base in ("A", "B"):
        for layer, b in zip(LAYERS, singles):
            m[f"cell/8/{base}/{layer}"], m[f"cell_se/8/{base}/{layer}"] = b, se
    return m


def metrics(runs: list[dict]) -> dict:
    return {"language_model": dict(enumerate(runs))}


def test_claims_read_the_language_model_stage_under_its_premise():
    assert [c.stage for c in lm.CLAIMS] == ["language_model", "language_model"]
    assert all(c.premise == lm.LM_REGIME and c.kind == "count" for c in lm.CLAIMS)
    assert (CLAIM.threshold, CLAIM.relation) == ("majority", ">") and LOOSE.sensitivity_of == CLAIM.statement
    assert "single_layer_relative x" in CLAIM.quantity and "single_layer_relative_loose" in LOOSE.quantity
    assert set(lm.CLAIMS) <= set(registry.all_claims()[0])  # collected by the report


@pytest.mark.parametrize(
    "full, holds", [([1.7, 1.8, 1.75], True), ([0.10, 0.12, 0.11], False), ([0.3, 0.9, 0.5], False)]
)
def test_premise_is_a_clear_full_barrier_over_the_whole_interval(full, holds):
    rows = claims.evaluate_premise(REGIME, metrics([run(f, [0.0] * 3) for f in full]), CFG)
    assert rows[0]["premise_holds"] is holds


@pytest.mark.parametrize(
    "singles, verdict",
    [
        ([0.01, 0.02, 0.0], "reproduced"),  # every layer far inside 4.35 % of 1.8 (0.078)
        ([1.6, 0.02, 0.0], "not reproduced"),  # one layer (e.g. the embedding) carries almost the whole barrier
        ([0.075, 0.0, 0.0], "inconclusive"),  # one layer at the band's edge: neither inside nor outside beyond its se
    ],
)
def test_relative_band_claim(singles, verdict):
    row = claims.evaluate(CLAIM, metrics([run(1.8, singles) for _ in range(8)]), CFG)
    assert row["verdict"] == verdict and row["n"] == 8


def test_the_looser_band_is_a_sensitivity_row_only():
    runs = metrics([run(1.8, [0.3, 0.0, 0.0]) for _ in range(8)])  # 17 % of the full barrier
    assert claims.evaluate(CLAIM, runs, CFG)["verdict"] == "not reproduced"
    assert claims.evaluate(LOOSE, runs, CFG)["verdict"] == "reproduced"
    assert np.isclose(CFG.single_layer_relative, 0.1 / 2.3, atol=1e-4)
