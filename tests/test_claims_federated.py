"""The federated (Table 1) claims on synthetic per-repetition metrics: each can come out reproduced, not reproduced
or inconclusive (3 repetitions, Student-t interval), so none is true by construction."""

import pytest

from llmc_utils import claims
from llmc_utils import federated as fd
from llmc_utils.report import ReportConfig

CFG = ReportConfig()  # partial_minus_full_points = 0, the paper's statement
IID, DIRICHLET, PATHOLOGICAL = fd.CLAIMS


def metrics(split: str, gaps: list[float]) -> dict:
    """{stage: {seed: metrics}} of three repetitions: claim-group minus full accuracy (points) on `split`; the other
    splits' gaps and a misleading best-group gap are there too, so a claim that read the wrong key would show."""
    other = {s: 99.0 for s in ("iid", "dirichlet", "pathological") if s != split}
    return {"federated": {seed: {f"gap_claim/{split}": g, f"gap_best/{split}": abs(g) + 50.0,
                                 **{f"gap_claim/{s}": v for s, v in other.items()}}
                          for seed, g in enumerate(gaps)}}


def test_claims_read_the_federated_stage_and_one_threshold():
    assert [c.stage for c in fd.CLAIMS] == ["federated"] * 3
    assert {c.threshold for c in fd.CLAIMS} == {"partial_minus_full_points"} and CFG.partial_minus_full_points == 0
    assert [c.relation for c in fd.CLAIMS] == ["<=", "<=", ">"]
    assert set(fd.CLAIMS) <= set(claims.all_claims()[0])  # collected by the report


@pytest.mark.parametrize("claim, split", [(IID, "iid"), (DIRICHLET, "dirichlet")])
@pytest.mark.parametrize("gaps, verdict", [
    ([-2.1, -1.5, -2.8], "reproduced"),  # full averaging ahead in every repetition
    ([9.5, 10.3, 11.0], "not reproduced"),  # e.g. personalization wins on a strongly skewed label mix
    ([-1.0, 0.8, -0.2], "inconclusive"),  # the interval straddles 0
])
def test_partial_does_not_beat_full(claim, split, gaps, verdict):
    row = claims.evaluate(claim, metrics(split, gaps), CFG)
    assert row["verdict"] == verdict and row["n"] == 3
    assert row["mean"] == pytest.approx(sum(gaps) / 3)


@pytest.mark.parametrize("gaps, verdict", [
    ([45.0, 49.2, 40.1], "reproduced"),  # keeping layers local wins when each client sees two classes
    ([-3.0, -2.6, -3.3], "not reproduced"),  # one shared model serves the clients better
    ([3.0, -2.0, 0.5], "inconclusive"),
])
def test_partial_beats_full_on_pathological_splits(gaps, verdict):
    row = claims.evaluate(PATHOLOGICAL, metrics("pathological", gaps), CFG)
    assert row["verdict"] == verdict
    assert row["mean"] == pytest.approx(sum(gaps) / 3)


def test_threshold_comes_from_the_report_config():
    moved = ReportConfig(partial_minus_full_points=5.0)  # "partial does not beat full by more than 5 points"
    row = claims.evaluate(DIRICHLET, metrics("dirichlet", [2.0, 3.0, 2.5]), moved)
    assert row["verdict"] == "reproduced" and "= 5" in row["criterion"]
    assert claims.evaluate(DIRICHLET, metrics("dirichlet", [2.0, 3.0, 2.5]), CFG)["verdict"] == "not reproduced"


@pytest.mark.parametrize("barrier, holds", [(0.0, True), (3e-8, True), (0.2, False)])
def test_fedavg_sanity_check(barrier, holds):
    check, = fd.SANITY_CHECKS
    m = {"federated": {0: {"pair_full_loss_barrier/iid/full": 0.0, "pair_full_loss_barrier/dirichlet/full": -barrier,
                           "pair_full_loss_barrier/dirichlet/body": -3.0}}}
    assert claims.check(check, m, CFG)["holds"] is holds
