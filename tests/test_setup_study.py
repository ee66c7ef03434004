"""The appendix setup study: per-variant Fig. 1 verdicts from a tidy table, diverged pairs kept out of intervals."""

import matplotlib

matplotlib.use("Agg")

import pandas as pd
import pytest
from pydantic import ValidationError

from llmc_utils import setup_study
from llmc_utils.pairs import TrainPairsConfig
from llmc_utils.report import ReportConfig

CFG = ReportConfig()


def row(variant, seed, length, full, single, status="ok"):
    base = dict(variant=variant, arch="cnn" if variant.startswith("plain") else "rescnn", width=16, seed=seed,
                length=length, status=status, message="" if status == "ok" else "diverged at epoch 3")
    if status != "ok":
        return base
    return dict(base, full_barrier_train_loss_last=full, max_abs_single_layer_barrier=single,
                max_abs_single_layer_barrier_last=single)


@pytest.fixture
def table():
    rows = []
    for seed, jitter in enumerate((0.0, 0.01, -0.01)):
        # "good": clear full barrier, tiny single-layer barriers -> all three claims reproduced
        rows += [row("good", seed, length, 1.5 + jitter, 0.02 + jitter / 10) for length in (10, 30)]
        # "bad": no full barrier, large single-layer ones -> all three not reproduced
        rows += [row("plain_bad", seed, length, 0.1 + jitter, 0.8 + jitter) for length in (10, 30)]
    rows += [row("plain_bad", 3, length, 0, 0, status="diverged") for length in (10, 30)]
    return pd.DataFrame(rows)


def test_claims_by_setup_gives_one_verdict_per_variant_length_and_claim(table):
    claims = setup_study.claims_by_setup(table, CFG)
    assert len(claims) == 2 * 2 * 3
    good, bad = claims[claims.variant == "good"], claims[claims.variant == "plain_bad"]
    assert set(good.verdict) == {"reproduced"}
    assert set(bad.verdict) == {"not reproduced"}
    assert set(good.n) == {3} and set(bad.n) == {3}  # the diverged pair is not a fourth value
    assert set(bad.diverged) == {1} and set(good.diverged) == {0}


def test_a_spread_across_pairs_that_straddles_the_threshold_is_inconclusive(table):
    straddle = table.copy()
    sel = (straddle.variant == "good") & (straddle.seed == 0)
    straddle.loc[sel, "max_abs_single_layer_barrier"] = 0.4  # one pair far above 0.1, two below
    claims = setup_study.claims_by_setup(straddle, CFG)
    second = claims[(claims.variant == "good") & (claims.claim.str.contains("any single layer"))]
    assert set(second.verdict) == {"inconclusive"}


def test_verdict_grid_and_figure(table):
    claims = setup_study.claims_by_setup(table, CFG)
    grid = setup_study.verdict_grid(claims)
    assert grid.shape == (4, 3)
    assert grid.loc[("plain_bad", 30), "claim 1"].endswith("not reproduced (1 diverged)")
    fig = setup_study.figure(claims, CFG)
    assert len(fig.axes) == 3


def test_config_is_validated_before_any_training():
    with pytest.raises(ValidationError, match="lengths must be strictly increasing"):
        setup_study.SetupStudyConfig(lengths=[10, 5])
    with pytest.raises(ValidationError):
        setup_study.SetupStudyConfig(repetitions=[0, 1])  # fewer than 3 pairs bound nothing
    with pytest.raises(ValueError, match=r"lengths \[15\] are not in train_pairs.checkpoint_epochs"):
        setup_study.check_lengths(setup_study.SetupStudyConfig(lengths=[10, 15]),
                                  TrainPairsConfig(optim=dict(epochs=30), checkpoint_epochs=[0, 10, 30]))


def test_load_reads_the_committed_table_when_the_workspace_has_none(tmp_path):
    committed = setup_study.load(tmp_path)
    assert {"variant", "seed", "length", "status"} <= set(committed.columns)
    assert committed.groupby("variant").seed.nunique().min() >= 3
