"""The language_model claims on synthetic per-repetition metrics: each can come out reproduced, not reproduced or
inconclusive (3 repetitions, Student-t interval), so neither is true by construction."""

import math

import pytest

from llmc_utils import claims
from llmc_utils import language_model as lm
from llmc_utils.report import ReportConfig

CFG = ReportConfig()  # clear_barrier 0.5, single_layer_relative 0.25
FULL_CLAIM, RATIO_CLAIM = lm.CLAIMS


def metrics(full: list[float], single: list[float]) -> dict:
    """{stage: {seed: metrics}} of three repetitions with the two values the claims read."""
    return {"language_model": {seed: {"full_barrier_train_loss": f, "max_single_layer_barrier_train_loss": s}
                               for seed, (f, s) in enumerate(zip(full, single))}}


def test_claims_read_the_language_model_stage_and_existing_thresholds():
    assert [c.stage for c in lm.CLAIMS] == ["language_model", "language_model"]
    assert (FULL_CLAIM.threshold, FULL_CLAIM.relation) == ("clear_barrier", ">=")
    assert (RATIO_CLAIM.threshold, RATIO_CLAIM.relation) == ("single_layer_relative", "<=")
    assert set(lm.CLAIMS) <= set(claims.all_claims()[0])  # collected by the report


@pytest.mark.parametrize("full, verdict", [
    ([1.7, 1.8, 1.75], "reproduced"),  # a clear barrier in every repetition
    ([0.10, 0.12, 0.11], "not reproduced"),  # e.g. a same-init pair that stays linearly connected
    ([0.3, 0.9, 0.5], "inconclusive"),  # the interval straddles clear_barrier
])
def test_full_barrier_claim(full, verdict):
    row = claims.evaluate(FULL_CLAIM, metrics(full, [0.1] * 3), CFG)
    assert row["verdict"] == verdict and row["n"] == 3
    assert row["mean"] == pytest.approx(sum(full) / 3)


@pytest.mark.parametrize("single, verdict", [
    ([0.10, 0.12, 0.15], "reproduced"),  # every layer far below the full barrier of 1.8
    ([1.6, 1.5, 1.65], "not reproduced"),  # one layer (e.g. the embedding) carries almost the whole barrier
    ([0.18, 0.72, 0.45], "inconclusive"),  # ratios 0.1, 0.4, 0.25 straddle single_layer_relative
])
def test_single_layer_ratio_claim(single, verdict):
    row = claims.evaluate(RATIO_CLAIM, metrics([1.8] * 3, single), CFG)
    assert row["verdict"] == verdict
    assert row["mean"] == pytest.approx(sum(single) / 3 / 1.8)


def test_ratio_stays_finite_without_a_full_barrier():
    value = lm.single_to_full_ratio({"full_barrier_train_loss": 0.0, "max_single_layer_barrier_train_loss": 0.01})
    assert math.isfinite(value) and value > CFG.single_layer_relative  # no barrier to contrast: the ratio fails
