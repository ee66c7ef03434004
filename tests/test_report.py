"""Claims as intervals: the Student-t and Clopper-Pearson intervals, the three-state verdict (with a threshold that has
its own interval), and for every claim of the pair family (Fig. 1 and Fig. 2) metrics that reproduce it and metrics
that make it fail; the claims table, its null rates, sensitivity rows and the README block. The other stages' claims
have the same kind of test in tests/test_claims_<stage>.py, and every claim's null in tests/test_claims_null.py."""

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest

from llmc_utils.core import claims
from llmc_utils.core.claims import evaluate, interval, verdict
from llmc_utils.pipeline import registry, report
from llmc_utils.stages import cumulative_averaging as cumulative
from llmc_utils.stages import layerwise_barriers as barriers

CFG = report.ReportConfig()


def test_student_t_interval_matches_the_textbook_value():
    mean, low, high = interval([1.0, 2.0, 3.0], 0.95)  # sd 1, n 3, t_{2, 0.975} = 4.303
    assert mean == 2.0 and high - mean == pytest.approx(4.3027 / math.sqrt(3), rel=1e-4)
    assert interval([5.0]) == (5.0, -math.inf, math.inf)  # one run bounds nothing
    with pytest.raises(ValueError, match="finite"):
        interval([1.0, float("nan")])


@pytest.mark.parametrize(
    "low, high, expected",
    [
        (0.1, 0.4, "reproduced"),
        (0.6, 0.9, "not reproduced"),
        (0.4, 0.6, "inconclusive"),
        (-math.inf, math.inf, "inconclusive"),
    ],
)
def test_verdict_needs_the_whole_interval_on_one_side(low, high, expected):
    assert verdict(low, high, "<=", 0.5) == expected


def test_a_threshold_with_its_own_interval_judges_each_verdict_against_its_harder_bound():
    assert verdict(0.1, 0.4, "<=", 0.3, 0.6) == "inconclusive"  # above the low bound: not surely below the threshold
    assert verdict(0.1, 0.25, "<=", 0.3, 0.6) == "reproduced"
    assert verdict(0.5, 0.9, "<=", 0.3, 0.6) == "inconclusive"  # not surely above the high bound
    assert verdict(0.7, 0.9, "<=", 0.3, 0.6) == "not reproduced"
    assert verdict(0.7, 0.9, ">", 0.3, 0.6) == "reproduced" and verdict(0.5, 0.9, ">", 0.3, 0.6) == "inconclusive"


def test_clopper_pearson_count_intervals_stay_in_bounds_and_never_have_zero_width():
    assert claims.clopper_pearson(5, 5) == pytest.approx((0.025**0.2, 1.0))
    assert claims.clopper_pearson(0, 3) == pytest.approx((0.0, 1 - 0.025 ** (1 / 3)))
    low, high = claims.clopper_pearson(7, 20)
    assert low == pytest.approx(0.1539, abs=1e-4) and high == pytest.approx(0.5922, abs=1e-4)  # textbook values
    u = claims.UNDECIDED
    assert claims.count_interval([1, 1, 0, u, u]) == pytest.approx(
        (0.4, claims.clopper_pearson(2, 5)[0], claims.clopper_pearson(4, 5)[1])
    )
    with pytest.raises(ValueError, match="1, 0 or UNDECIDED"):
        claims.count_interval([1.0, 0.3])


def seeds(**per_seed_values):
    """{stage: {seed: metrics}} from lists of per-seed values of each metric key."""
    n = len(next(iter(per_seed_values.values())))
    return [{k: v[i] for k, v in per_seed_values.items()} for i in range(n)]


def verdict_of(claim, per_seed):
    return evaluate(claim, {claim.stage: dict(enumerate(per_seed))}, CFG)["verdict"]


FIG1_BAND, FIG1_RELATIVE, FIG1_LOOSE = barriers.CLAIMS
FIG2_OUTER, FIG2_WINDOWS = cumulative.CLAIMS
REGIME = registry.all_premises()[barriers.FIG1_REGIME]
LAYERS = ["stem", "block1.conv1", "fc"]


def pair(full=2.0, single=(0.01, 0.02, 0.0), se=0.005, epochs=(1, 5), **extra):
    """One pair's Fig. 1 metrics: every single-layer cell (both bases, every epoch) with its se, the full barrier."""
    m = dict(
        full_barrier_train_loss_last=full,
        full_barrier_train_loss_last_se=0.01,
        last_epoch=epochs[-1],
        own_train_error_A_last=0.0,
        own_train_error_B_last=0.0,
        **extra,
    )
    for epoch in epochs:
        for base in ("A", "B"):
            for layer, b in zip(LAYERS, single):
                m[f"cell/{epoch}/{base}/{layer}"], m[f"cell_se/{epoch}/{base}/{layer}"] = b, se
    return m


def regime(full, errors_a, errors_b):
    return claims.evaluate_premise(
        REGIME,
        {
            "layerwise_barriers": dict(
                enumerate(
                    seeds(
                        full_barrier_train_loss_last=full,
                        own_train_error_A_last=errors_a,
                        own_train_error_B_last=errors_b,
                    )
                )
            )
        },
        CFG,
    )


@pytest.mark.parametrize(
    "full, errors_b, holds",
    [
        ([1.5, 1.7, 1.6, 1.4, 1.8], [0.0, 0.4, 1.0, 0.2, 1.8], True),
        ([1.5, 1.7, 1.6, 1.4, 1.8], [0.0, 0.4, 2.6, 0.2, 1.8], False),  # one endpoint does not fit its data
        ([0.1, 1.5, 0.4, 0.9, 0.2], [0.0] * 5, False),  # the interval of the full barrier reaches below 1.0
        ([1.2, 1.15, 1.25, 1.2, 1.2], [0.0] * 5, True),
    ],
)  # the whole interval above the threshold
def test_fig1_regime_premise_needs_a_large_full_barrier_and_fitted_endpoints(full, errors_b, holds):
    rows = regime(full, [0.0] * 5, errors_b)
    assert rows[1]["holds"] is (max(errors_b) <= 2.0) and rows[1]["worst"] == max(errors_b)
    assert all(r["premise_holds"] is holds for r in rows)


def test_claims_under_a_failed_premise_are_not_judged_but_keep_their_interval():
    metrics = {"layerwise_barriers": dict(enumerate([pair(full=f) for f in (0.2, 0.3, 0.25, 0.2, 0.3, 0.25, 0.2)]))}
    table = report.claims_table(
        metrics, CFG, barriers.CLAIMS, report.premise_table(metrics, CFG, {REGIME.name: REGIME}), null_draws=0
    )
    assert set(table.verdict) == {"premise not met"}
    assert table["mean"].iloc[0] == 1.0 and table["values"].iloc[0] == "7 of 7"
    moved = {
        "layerwise_barriers": {
            r: dict(m, full_barrier_train_loss_last=2.0) for r, m in metrics["layerwise_barriers"].items()
        }
    }
    passed = report.claims_table(
        moved, CFG, barriers.CLAIMS, report.premise_table(moved, CFG, {REGIME.name: REGIME}), null_draws=0
    )
    assert list(passed.verdict) == ["reproduced"] * 3


def test_a_claim_naming_an_unknown_premise_stops_the_report():
    claim = dataclasses.replace(FIG1_BAND, premise="nowhere")
    metrics = {"layerwise_barriers": {0: pair()}}
    with pytest.raises(KeyError, match="nowhere"):
        report.claims_table(metrics, CFG, [claim], report.premise_table(metrics, CFG, {}))


@pytest.mark.parametrize(
    "single, n, expected",
    [
        ((0.01, 0.02, 0.0), 7, "reproduced"),  # every cell inside +-0.1 beyond its se, in 7 of 7 pairs: [0.59, 1]
        ((0.5, 0.02, 0.0), 7, "not reproduced"),  # one layer far outside the band in every pair
        ((0.1, 0.02, 0.0), 7, "inconclusive"),  # one layer on the band's edge: no pair can tell
        ((0.01, 0.02, 0.0), 5, "inconclusive"),  # five pairs cannot decide a majority (5 of 5: [0.48, 1])
    ],
)
def test_single_layer_band_claim_counts_pairs(single, n, expected):
    row = evaluate(FIG1_BAND, {"layerwise_barriers": dict(enumerate([pair(single=single)] * n))}, CFG)
    assert row["verdict"] == expected and row["n"] == n
    assert ("cannot reproduce or fail" in row["note"]) is (n == 5)


def test_a_cell_is_outside_the_band_only_beyond_its_error():
    noisy = pair(single=(0.13, 0.0, 0.0), se=0.05)  # 0.13 > 0.1, but within the noise of one of 12 cells
    assert FIG1_BAND.measure(noisy, CFG) == claims.UNDECIDED
    assert FIG1_BAND.measure(pair(single=(0.13, 0.0, 0.0), se=0.001), CFG) == 0.0


def test_single_layer_relative_claim_uses_the_papers_band_and_keeps_the_loose_one_as_sensitivity():
    assert CFG.single_layer_relative == pytest.approx(0.1 / 2.3, abs=1e-4)
    assert FIG1_LOOSE.sensitivity_of == FIG1_RELATIVE.statement
    tenth = [pair(full=2.0, single=(0.2, 0.0, 0.0))] * 7  # one layer at 10 % of the full barrier
    assert verdict_of(FIG1_RELATIVE, tenth) == "not reproduced"
    assert verdict_of(FIG1_LOOSE, tenth) == "reproduced"
    assert verdict_of(FIG1_RELATIVE, [pair(full=2.0, single=(0.03, 0.0, 0.0))] * 7) == "reproduced"


def fig2_pair(outer=(0.1, 0.2), windows=(0.1, 0.5, 0.6, 0.7, 0.8, 0.15), full=2.0):
    m = dict(
        onset_fraction=0.5,
        full_barrier_last=full,
        outer_group_barrier_into_A=outer[0],
        outer_group_barrier_into_B=outer[1],
    )
    for base in ("A", "B"):
        m.update({f"window/{base}/{j}": w for j, w in enumerate(windows, start=1)})
    return m


def test_fig2_outer_group_claim():
    low = [fig2_pair(outer=(0.1, 0.2)), fig2_pair(outer=(0.2, 0.1)), fig2_pair(outer=(0.1, 0.3))]
    high = [fig2_pair(outer=(0.1, 1.9)), fig2_pair(outer=(0.2, 1.8)), fig2_pair(outer=(0.1, 2.0))]
    assert verdict_of(FIG2_OUTER, low) == "reproduced"
    assert verdict_of(FIG2_OUTER, high) == "not reproduced"  # the worse base decides


def test_fig2_window_claim_ranks_equal_weight_groups():
    assert cumulative.middle_minus_end_rank(np.array([0.1, 0.5, 0.6, 0.7, 0.8, 0.15])) == pytest.approx((4.5 - 1.5) / 3)
    middle = [fig2_pair(), fig2_pair(windows=(0.2, 0.5, 0.9, 0.7, 0.6, 0.1)), fig2_pair(windows=(0.0, 1, 2, 3, 4, 1.5))]
    ends = [fig2_pair(windows=(0.9, 0.1, 0.2, 0.3, 0.2, 0.8))] * 3
    assert verdict_of(FIG2_WINDOWS, middle) == "reproduced"
    assert verdict_of(FIG2_WINDOWS, ends) == "not reproduced"
    row = evaluate(FIG2_WINDOWS, {"cumulative_averaging": dict(enumerate(middle))}, CFG)
    assert -1.0 <= row["low"] < row["high"] == 1.0  # a bounded mean: its t interval stops at the bound


def test_missing_metrics_name_the_stage_to_run():
    with pytest.raises(KeyError, match="layerwise_barriers"):
        evaluate(FIG1_BAND, {}, CFG)
    with pytest.raises(KeyError, match="cell/"):
        evaluate(FIG1_BAND, {"layerwise_barriers": {0: {}, 1: {}}}, CFG)


def test_every_claim_module_is_importable_and_claims_have_valid_thresholds():
    all_claims, checks = registry.all_claims()
    assert len(all_claims) >= 5
    for c in [*all_claims, *checks]:
        assert c.relation in ("<=", "<", ">=", ">")
        if not isinstance(c.threshold, claims.DataThreshold):
            c.threshold_value(CFG)  # a field that exists, or a number
            assert c.criterion(CFG)
    for c in all_claims:
        assert c.kind in ("mean", "count") and c.null is not None
        assert c.sensitivity_of is None or c.sensitivity_of in {x.statement for x in all_claims}


def test_load_metrics_reads_single_runs_and_repetitions(tmp_path):
    (tmp_path / "layerwise_barriers").mkdir()
    for seed, value in enumerate([1.0, 2.0]):
        (tmp_path / "layerwise_barriers" / f"repetition_{seed}.json").write_text(json.dumps({"x": value}))
    (tmp_path / "deep_linear.json").write_text(json.dumps({"y": 3}))
    (tmp_path / "report.json").write_text("{}")
    assert report.load_metrics(tmp_path) == {
        "deep_linear": {None: {"y": 3}},
        "layerwise_barriers": {0: {"x": 1.0}, 1: {"x": 2.0}},
    }


def test_claims_table_columns_null_rates_sensitivity_notes_and_summary_counts():
    metrics = {"layerwise_barriers": dict(enumerate([pair(single=(0.2, 0.0, 0.0))] * 7))}  # 10 % of the full barrier
    plain = dataclasses.replace(FIG1_BAND, premise=None)
    premises = report.premise_table(metrics, CFG, {REGIME.name: REGIME})
    table = report.claims_table(metrics, CFG, [*barriers.CLAIMS, plain], premises, null_draws=20)
    assert list(table.columns) == [
        "source",
        "claim",
        "paper",
        "premise",
        "kind",
        "criterion",
        "n",
        "values",
        "mean",
        "low",
        "high",
        "threshold_low",
        "threshold_high",
        "verdict",
        "note",
        "sensitivity_of",
        "null_rate",
        "null",
        "edge_margin",
        "near_threshold",
    ]
    assert list(table.verdict) == ["not reproduced", "not reproduced", "reproduced", "not reproduced"]
    assert list(table.premise) == [barriers.FIG1_REGIME] * 3 + [""]
    assert (table.null_rate == 0.0).all() and table.null.str.contains("just outside the band").all()
    assert "read otherwise" in table.note.iloc[1] and "reproduced" in table.note.iloc[1]  # the loose band disagrees
    summary = report.summary(table, report.sanity_table(metrics, CFG, []))
    assert summary["n_claims"] == 3  # the sensitivity row is not a claim
    assert (
        summary["n_reproduced"],
        summary["n_not_reproduced"],
        summary["n_inconclusive"],
        summary["n_premise_not_met"],
    ) == (0, 3, 0, 0)


def _one_claim_table():
    claim = dataclasses.replace(FIG1_BAND, premise=None)
    claims_df = report.claims_table(
        {"layerwise_barriers": dict(enumerate([pair()] * 7))}, CFG, [claim], pd.DataFrame(), null_draws=0
    )
    sanity = pd.DataFrame([dict(source="Fig. 3", check="identity", criterion="x <= 0", n=1, worst=0.0, holds=True)])
    return claims_df, sanity


def test_results_summary_is_the_computed_table_and_escapes_bars():
    claims_df, sanity = _one_claim_table()
    claims_df = claims_df.assign(criterion="max |single-layer barrier| <= 0.1")
    block = report.results_markdown(claims_df, sanity, {"Table 1": "the gap grows with heterogeneity"})
    row = next(line for line in block.splitlines() if line.startswith("| Fig. 1"))
    assert row.count(" | ") == 8  # nine cells: the "|" of "max |...|" in the criterion is escaped
    assert "\\|single-layer" in row and "**reproduced**" in row and "| 7 of 7 |" in row
    assert f"{claims_df['mean'].iloc[0]:.3g}" in row
    assert "In all (1 claims): 1 reproduced, 0 inconclusive, 0 not reproduced" in block
    assert "![fig1_layerwise_barriers](../figures/fig1_layerwise_barriers.png)" in block  # from reports/results.md


def test_results_summary_states_the_configured_confidence():
    claims_df, sanity = _one_claim_table()
    assert "with a 95 % interval" in report.results_markdown(claims_df, sanity, {})
    assert "with a 90 % interval" in report.results_markdown(claims_df, sanity, {}, confidence=0.9)


def test_sec4_by_depth_states_and_applies_the_configured_confidence():
    # the stage stored an interval at its own confidence; the report recomputes it from the counts at the report's
    row = dict(depth=2, branch="same", reading="max", lower=5, pairs=6, low=0.0, high=1.0, exchangeable_rate=0.5)
    metrics = {"deep_linear": {None: {"trained_lower_by_depth": [row]}}}
    for confidence in (0.95, 0.8):
        text = "\n".join(report.sec4_by_depth(metrics, confidence))
        low, high = claims.clopper_pearson(5, 6, confidence)
        assert f"its {100 * confidence:g} % Clopper-Pearson interval" in text
        assert f"5 / 6 [{low:.2f}, {high:.2f}]" in text
    assert report.sec4_by_depth({}) == []


def test_edge_margin_marks_verdicts_that_sit_on_their_threshold():
    from llmc_utils.pipeline.report import edge_margin

    assert edge_margin(0.6, 1.0, 0.5) == pytest.approx(0.5)  # 0.1 away, half-width 0.2
    assert edge_margin(0.4, 1.0, 0.5) == pytest.approx(1 / 3)  # straddling: the nearer end counts
    assert edge_margin(1.0, 1.0, 0.5) == math.inf and edge_margin(0.5, 0.5, 0.5) == 0.0
    # same claim, two sets of repetitions: one clears 0 by far, one ends just below it
    far = {"cumulative_averaging": dict(enumerate(fig2_pair(outer=(v, v)) for v in (0.02, 0.03, 0.01)))}
    near = {"cumulative_averaging": dict(enumerate(fig2_pair(outer=(v, v)) for v in (0.98, 0.985, 0.99)))}
    claim = dataclasses.replace(FIG2_OUTER, premise=None)
    tables = {
        name: report.claims_table(m, CFG, [claim], pd.DataFrame(), null_draws=0)
        for name, m in (("far", far), ("near", near))
    }
    assert list(tables["far"].near_threshold) == [False] and list(tables["near"].near_threshold) == [True]
    assert tables["near"].verdict.iloc[0] == "reproduced"  # the mark does not change the verdict
    block = report.results_markdown(tables["near"], _one_claim_table()[1], {})
    assert "**reproduced** (near threshold)" in block and "1 verdict(s) marked *near threshold*" in block
    assert "near threshold" not in report.results_markdown(tables["far"], _one_claim_table()[1], {})


def test_beyond_the_paper_reads_the_numbers_of_both_stages():
    pair = dict(
        full_barrier_unaligned_last=0.5,
        full_barrier_aligned_last=0.25,
        identity_fraction_last=0.1,
        aligned_layer_barrier_last={"stem": 0.2, "fc": 0.05, "mid": 0.125},
        aligned_layer_share_of_full_last={"stem": 0.8, "fc": 0.2, "mid": 0.5},
    )
    other = dict(
        pair,
        full_barrier_unaligned_last=0.7,
        full_barrier_aligned_last=0.35,
        aligned_layer_barrier_last={"stem": 0.0, "fc": 0.05, "mid": 0.325},
    )
    bn = {
        v: dict(full_barrier=f, max_abs_single_layer_barrier=f / 2)
        for v, f in (("aligned+bn_reset", 0.1), ("plain", 0.8), ("bn_reset", 0.4), ("aligned", 0.6))
    }
    lines = report.beyond_the_paper({"alignment": {0: pair, 1: other}, "bn_reset": {None: bn}})
    assert len(lines) == 2
    assert "2 different-init cross pair(s)" in lines[0]
    assert "0.60 ± 0.14 unaligned" in lines[0] and "0.30 ± 0.07 aligned" in lines[0]
    assert "mid 0.23, stem 0.10, fc 0.05" in lines[0]  # largest mean barrier first
    assert (
        lines[1].index("plain 0.80 / 0.40")
        < lines[1].index("bn_reset 0.40 / 0.20")
        < lines[1].index("aligned+bn_reset 0.10 / 0.05")
    )  # the stage's variant order, not the file's
    assert report.beyond_the_paper({}) == []


def test_premises_and_the_paper_side_by_side_in_the_written_summaries():
    metrics = {
        "layerwise_barriers": {
            r: dict(pair(full), own_train_error_A_last=0.2 * r, own_train_error_B_last=b_error)
            for r, (full, b_error) in enumerate(((1.8, 3.0), (1.9, 0.0), (2.0, 0.0)))
        }
    }
    premises = report.premise_table(metrics, CFG, {REGIME.name: REGIME})
    table = report.claims_table(metrics, CFG, barriers.CLAIMS, premises, null_draws=0)
    block = report.results_markdown(table, _one_claim_table()[1], {}, premises=premises)
    assert "| **no** |" in block and "Premise `fig1_regime`: **not met**." in block  # one endpoint at 3 % error
    assert block.index("Premises") < block.index("Claims measured")
    side = report.paper_vs_ours(table, premises)
    assert side.count("\n") == 2 + len(premises) + len(table)
    assert "1.9-2.3 (-> ln 10)" in side and "| premise not met |" in side and "worst 3)" in side
