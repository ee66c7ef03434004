"""The federated (Table 1) claims on synthetic per-repetition metrics: every split x layer group against full
averaging, with the margin (the seed-to-seed sd of full averaging, with its chi-square interval); each claim can come
out reproduced, not reproduced or inconclusive (3 repetitions, Student-t interval), so none is true by construction."""

import pytest

from llmc_utils.core import claims
from llmc_utils.pipeline import registry
from llmc_utils.pipeline.report import ReportConfig
from llmc_utils.stages import federated as fd

CFG = ReportConfig()  # partial_minus_full_points = 0, the paper's statement
GROUPS = ("middle", "outer", "body")
FULL_ACCURACY = [80.0, 81.0, 79.0]  # sd 1 point over the seeds: margin in [0.52, 6.28] at 95 %


def claim(split: str, group: str):
    return next(
        c for c in fd.CLAIMS if c.statement.startswith(fd._SPLIT_CLAIMS[split][0]) and f" {group} layers" in c.statement
    )


def metrics(split: str, group: str, gaps: list[float], full=FULL_ACCURACY) -> dict:
    """{stage: {seed: metrics}} of three repetitions: `group` minus full accuracy (points) on `split`; the other
    groups' and splits' gaps are far off, so a claim that read the wrong key would show."""
    runs = {}
    for seed, (g, f) in enumerate(zip(gaps, full)):
        m = {f"gap/{s}/{other}": 99.0 for s in ("iid", "dirichlet", "pathological") for other in GROUPS}
        m.update({f"accuracy/{s}/full": 50.0 for s in ("iid", "dirichlet", "pathological")})
        runs[seed] = dict(m, **{f"gap/{split}/{group}": g, f"accuracy/{split}/full": f})
    return {"federated": runs}


def test_every_split_and_group_is_a_claim_with_the_seed_margin():
    assert len(fd.CLAIMS) == 9 and {c.stage for c in fd.CLAIMS} == {"federated"}
    assert [c.relation for c in fd.CLAIMS] == ["<="] * 6 + [">"] * 3
    assert all(isinstance(c.threshold, claims.DataThreshold) and c.null is not None for c in fd.CLAIMS)
    assert sum("closest to the authors' active group" in c.statement for c in fd.CLAIMS) == 3
    assert set(fd.CLAIMS) <= set(registry.all_claims()[0])  # collected by the report
    low, high = claim("iid", "body").threshold_bounds(
        CFG, list(metrics("iid", "body", [0, 0, 0])["federated"].values())
    )
    assert low == pytest.approx(0.5207, abs=1e-3) and high == pytest.approx(6.2847, abs=1e-3)


@pytest.mark.parametrize("split", ["iid", "dirichlet"])
@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize(
    "gaps, verdict",
    [
        ([-2.1, -1.5, -2.8], "reproduced"),  # full averaging ahead in every repetition
        ([19.5, 20.3, 21.0], "not reproduced"),  # e.g. personalization wins on a strongly skewed label mix
        ([-1.0, 0.8, -0.2], "inconclusive"),  # within the seed noise of full averaging: a tie is not a verdict
    ],
)
def test_partial_does_not_beat_full(split, group, gaps, verdict):
    row = claims.evaluate(claim(split, group), metrics(split, group, gaps), CFG)
    assert row["verdict"] == verdict and row["n"] == 3
    assert row["mean"] == pytest.approx(sum(gaps) / 3)


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize(
    "gaps, verdict",
    [
        ([45.0, 49.2, 40.1], "reproduced"),  # keeping layers local wins when each client sees two classes
        ([-3.0, -2.6, -3.3], "not reproduced"),  # one shared model serves the clients better
        ([3.0, -2.0, 0.5], "inconclusive"),
    ],
)
def test_partial_beats_full_on_pathological_splits(group, gaps, verdict):
    row = claims.evaluate(claim("pathological", group), metrics("pathological", group, gaps), CFG)
    assert row["verdict"] == verdict
    assert row["mean"] == pytest.approx(sum(gaps) / 3)


def test_threshold_comes_from_the_report_config_plus_the_margin():
    moved = ReportConfig(partial_minus_full_points=5.0)  # "partial does not beat full by more than 5 points"
    row = claims.evaluate(claim("dirichlet", "outer"), metrics("dirichlet", "outer", [2.0, 3.0, 2.5]), moved)
    assert row["verdict"] == "reproduced" and "partial_minus_full_points + seed-to-seed sd" in row["criterion"]
    assert row["threshold_low"] == pytest.approx(5.5207, abs=1e-3)
    unmoved = claims.evaluate(claim("dirichlet", "outer"), metrics("dirichlet", "outer", [2.0, 3.0, 2.5]), CFG)
    assert unmoved["verdict"] == "inconclusive"  # 2-3 points: beyond the sd's low bound, within its high bound


@pytest.mark.parametrize("barrier, holds", [(0.0, True), (3e-8, True), (0.2, False)])
def test_fedavg_sanity_check(barrier, holds):
    (check,) = fd.SANITY_CHECKS
    m = {
        "federated": {
            0: {
                "pair_full_loss_barrier/iid/full": 0.0,
                "pair_full_loss_barrier/dirichlet/full": -barrier,
                "pair_full_loss_barrier/dirichlet/body": -3.0,
            }
        }
    }
    assert claims.check(check, m, CFG)["holds"] is holds
