"""Claims as intervals over repetitions: the interval, the three-state verdict, and for every claim of the pair family
(Fig. 1 and Fig. 2) metrics that reproduce it and metrics that make it fail. The other stages' claims have the same
kind of test in tests/test_claims_<stage>.py."""

import dataclasses
import json
import math

import pandas as pd
import pytest

from llmc_utils import barriers, claims, cumulative, report
from llmc_utils.claims import evaluate, interval, verdict

CFG = report.ReportConfig()


def test_student_t_interval_matches_the_textbook_value():
    mean, low, high = interval([1.0, 2.0, 3.0], 0.95)  # sd 1, n 3, t_{2, 0.975} = 4.303
    assert mean == 2.0 and high - mean == pytest.approx(4.3027 / math.sqrt(3), rel=1e-4)
    assert interval([5.0]) == (5.0, -math.inf, math.inf)  # one run bounds nothing
    with pytest.raises(ValueError, match="finite"):
        interval([1.0, float("nan")])


@pytest.mark.parametrize("low, high, expected", [(0.1, 0.4, "reproduced"), (0.6, 0.9, "not reproduced"),
                                                 (0.4, 0.6, "inconclusive"), (-math.inf, math.inf, "inconclusive")])
def test_verdict_needs_the_whole_interval_on_one_side(low, high, expected):
    assert verdict(low, high, "<=", 0.5) == expected


def seeds(**per_seed_values):
    """{stage: {seed: metrics}} from lists of per-seed values of each metric key."""
    n = len(next(iter(per_seed_values.values())))
    return [{k: v[i] for k, v in per_seed_values.items()} for i in range(n)]


def verdict_of(claim, per_seed):
    return evaluate(claim, {claim.stage: dict(enumerate(per_seed))}, CFG)["verdict"]


FIG1 = {c.statement: c for c in barriers.CLAIMS}
FIG2 = {c.statement: c for c in cumulative.CLAIMS}
REGIME = claims.all_premises()[barriers.FIG1_REGIME]


def regime(full, errors_a, errors_b):
    return claims.evaluate_premise(REGIME, {"layerwise_barriers": dict(enumerate(seeds(
        full_barrier_train_loss_last=full, own_train_error_A_last=errors_a, own_train_error_B_last=errors_b)))}, CFG)


@pytest.mark.parametrize("full, errors_b, holds", [
    ([1.5, 1.7, 1.6, 1.4, 1.8], [0.0, 0.4, 1.0, 0.2, 1.8], True),
    ([1.5, 1.7, 1.6, 1.4, 1.8], [0.0, 0.4, 2.6, 0.2, 1.8], False),  # one endpoint does not fit its data
    ([0.1, 1.5, 0.4, 0.9, 0.2], [0.0] * 5, False),  # the interval of the full barrier reaches below 1.0
    ([1.2, 1.15, 1.25, 1.2, 1.2], [0.0] * 5, True)])  # the whole interval above the threshold
def test_fig1_regime_premise_needs_a_large_full_barrier_and_fitted_endpoints(full, errors_b, holds):
    rows = regime(full, [0.0] * 5, errors_b)
    assert rows[1]["holds"] is (max(errors_b) <= 2.0) and rows[1]["worst"] == max(errors_b)
    assert all(r["premise_holds"] is holds for r in rows)


def test_claims_under_a_failed_premise_are_not_judged_but_keep_their_interval():
    metrics = {"layerwise_barriers": dict(enumerate(seeds(
        full_barrier_train_loss_last=[0.2, 0.3, 0.25], own_train_error_A_last=[0.0] * 3,
        own_train_error_B_last=[0.0] * 3, max_abs_single_layer_barrier=[0.01, 0.02, 0.03],
        max_abs_single_layer_barrier_last=[0.01, 0.02, 0.03])))}
    table = report.claims_table(metrics, CFG, barriers.CLAIMS, report.premise_table(metrics, CFG, {REGIME.name: REGIME}))
    assert set(table.verdict) == {"premise not met"}
    assert table["mean"].iloc[0] == pytest.approx(0.02)
    moved = {"layerwise_barriers": {r: dict(m, full_barrier_train_loss_last=2.0)
                                    for r, m in metrics["layerwise_barriers"].items()}}
    passed = report.claims_table(moved, CFG, barriers.CLAIMS, report.premise_table(moved, CFG, {REGIME.name: REGIME}))
    assert list(passed.verdict) == ["reproduced", "reproduced"]


def test_a_claim_naming_an_unknown_premise_stops_the_report():
    import dataclasses

    claim = dataclasses.replace(barriers.CLAIMS[0], premise="nowhere")
    metrics = {"layerwise_barriers": {0: {"max_abs_single_layer_barrier": 0.1}}}
    with pytest.raises(KeyError, match="nowhere"):
        report.claims_table(metrics, CFG, [claim], report.premise_table(metrics, CFG, {}))


@pytest.mark.parametrize("values, expected", [([0.03, 0.05, 0.04, 0.06, 0.05], "reproduced"),
                                              ([0.3, 1.0, 0.25, 0.4, 0.5], "not reproduced"),
                                              ([0.05, 0.2, 0.08, 0.12, 0.09], "inconclusive")])
def test_single_layer_band_claim(values, expected):
    claim = FIG1["Averaging any single layer creates (almost) no barrier"]
    assert verdict_of(claim, seeds(max_abs_single_layer_barrier=values)) == expected


def test_single_layer_relative_claim_fails_when_one_layer_carries_the_barrier():
    claim = FIG1["Single-layer barriers are small next to the full barrier"]
    small = seeds(max_abs_single_layer_barrier_last=[0.05, 0.1, 0.08], full_barrier_train_loss_last=[1.5, 1.6, 1.4])
    large = seeds(max_abs_single_layer_barrier_last=[1.0, 1.2, 0.9], full_barrier_train_loss_last=[1.5, 1.6, 1.4])
    assert verdict_of(claim, small) == "reproduced"
    assert verdict_of(claim, large) == "not reproduced"


def test_fig2_outer_group_claim():
    claim = FIG2["Averaging the outer layers together (first k + last k) creates little barrier"]
    base = dict(onset_fraction=[0.5] * 3, full_barrier_last=[2.0, 2.1, 1.9])
    low = seeds(outer_group_barrier_into_A=[0.1, 0.2, 0.1], outer_group_barrier_into_B=[0.2, 0.1, 0.3], **base)
    high = seeds(outer_group_barrier_into_A=[0.1, 0.2, 0.1], outer_group_barrier_into_B=[1.9, 1.8, 2.0], **base)
    assert verdict_of(claim, low) == "reproduced"
    assert verdict_of(claim, high) == "not reproduced"  # the worse base decides


def test_fig2_middle_window_claim():
    claim = FIG2["Windows of consecutive middle layers carry more barrier than windows at either end"]
    middle = seeds(middle_minus_end_window_into_A=[0.5, 0.6, 0.4], middle_minus_end_window_into_B=[0.3, 0.5, 0.4])
    ends = seeds(middle_minus_end_window_into_A=[-0.5, -0.6, -0.4], middle_minus_end_window_into_B=[0.3, 0.5, 0.4])
    assert verdict_of(claim, middle) == "reproduced"
    assert verdict_of(claim, ends) == "not reproduced"


def test_missing_metrics_name_the_stage_to_run():
    claim = barriers.CLAIMS[0]
    with pytest.raises(KeyError, match="layerwise_barriers"):
        evaluate(claim, {}, CFG)
    with pytest.raises(KeyError, match="max_abs_single_layer_barrier"):
        evaluate(claim, {"layerwise_barriers": {0: {}, 1: {}}}, CFG)


def test_every_claim_module_is_importable_and_claims_have_valid_thresholds():
    all_claims, checks = claims.all_claims()
    assert len(all_claims) >= 5
    for c in [*all_claims, *checks]:
        assert c.relation in ("<=", "<", ">=", ">")
        c.threshold_value(CFG)  # a field that exists, or a number
        assert c.criterion(CFG)


def test_load_metrics_reads_single_runs_and_repetitions(tmp_path):
    (tmp_path / "layerwise_barriers").mkdir()
    for seed, value in enumerate([1.0, 2.0]):
        (tmp_path / "layerwise_barriers" / f"seed_{seed}.json").write_text(json.dumps({"x": value}))
    (tmp_path / "deep_linear.json").write_text(json.dumps({"y": 3}))
    (tmp_path / "report.json").write_text("{}")
    assert report.load_metrics(tmp_path) == {"deep_linear": {None: {"y": 3}},
                                             "layerwise_barriers": {0: {"x": 1.0}, 1: {"x": 2.0}}}


def test_claims_table_columns_and_summary_counts():
    metrics = {"layerwise_barriers": dict(enumerate(seeds(
        full_barrier_train_loss_last=[1.5, 1.6, 1.4], own_train_error_A_last=[0.0] * 3,
        own_train_error_B_last=[1.0] * 3, max_abs_single_layer_barrier=[0.3, 0.4, 0.5],
        max_abs_single_layer_barrier_last=[0.02, 0.5, 0.1])))}
    plain = dataclasses.replace(FIG1["Averaging any single layer creates (almost) no barrier"], premise=None)
    table = report.claims_table(metrics, CFG, [*barriers.CLAIMS, plain], report.premise_table(metrics, CFG))
    assert list(table.columns) == ["source", "claim", "paper", "criterion", "n", "mean", "low", "high", "verdict",
                                   "premise", "edge_margin", "near_threshold"]
    assert list(table.verdict) == ["not reproduced", "inconclusive", "not reproduced"]
    assert list(table.premise) == [barriers.FIG1_REGIME] * 2 + [""]
    summary = report.summary(table, report.sanity_table(metrics, CFG, []))
    assert (summary["n_reproduced"], summary["n_not_reproduced"], summary["n_inconclusive"],
            summary["n_premise_not_met"]) == (0, 2, 1, 0)


def _one_claim_table():
    per_seed = {"layerwise_barriers": {r: {"max_abs_single_layer_barrier": v} for r, v in enumerate((0.02, 0.03, 0.01))}}
    claim = dataclasses.replace(barriers.CLAIMS[0], premise=None)
    claims_df = report.claims_table(per_seed, CFG, [claim], pd.DataFrame())
    sanity = pd.DataFrame([dict(source="Fig. 3", check="identity", criterion="x <= 0", n=1, worst=0.0, holds=True)])
    return claims_df, sanity


def test_readme_results_block_is_the_computed_table_and_escapes_bars():
    claims_df, sanity = _one_claim_table()
    block = report.results_markdown(claims_df, sanity, {"Table 1": "the gap grows with heterogeneity"})
    row = next(line for line in block.splitlines() if line.startswith("| Fig. 1"))
    assert row.count(" | ") == 5  # six cells: the "|" of "max |...|" in the criterion is escaped
    assert "\\|single-layer" in row and "**reproduced**" in row
    assert f"{claims_df['mean'].iloc[0]:.3g}" in row
    assert "1 reproduced, 0 inconclusive, 0 not reproduced" in block
    assert "![fig1_layerwise_barriers](figures/fig1_layerwise_barriers.png)" in block


def test_update_readme_replaces_only_the_marked_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.README_START}\nstale numbers\n{report.README_END}\nrest\n")
    assert report.update_readme(readme, "fresh table\n")
    assert readme.read_text() == f"intro\n{report.README_START}\nfresh table\n{report.README_END}\nrest\n"
    assert not report.update_readme(tmp_path / "absent.md", "x")
    (tmp_path / "plain.md").write_text("no markers")
    assert not report.update_readme(tmp_path / "plain.md", "x")
    assert (tmp_path / "plain.md").read_text() == "no markers"


def test_readme_results_block_states_the_configured_confidence():
    claims_df, sanity = _one_claim_table()
    assert "with a 95 % interval" in report.results_markdown(claims_df, sanity, {})
    assert "with a 90 % interval" in report.results_markdown(claims_df, sanity, {}, confidence=0.9)


def test_edge_margin_marks_verdicts_that_sit_on_their_threshold():
    from llmc_utils.report import edge_margin

    assert edge_margin(0.6, 1.0, 0.5) == pytest.approx(0.5)  # 0.1 away, half-width 0.2
    assert edge_margin(0.4, 1.0, 0.5) == pytest.approx(1 / 3)  # straddling: the nearer end counts
    assert edge_margin(1.0, 1.0, 0.5) == math.inf and edge_margin(0.5, 0.5, 0.5) == 0.0
    # same claim, two sets of repetitions: one clears 0.1 by far, one ends just below it
    far = {"layerwise_barriers": {r: {"max_abs_single_layer_barrier": v} for r, v in enumerate((0.02, 0.03, 0.01))}}
    near = {"layerwise_barriers": {r: {"max_abs_single_layer_barrier": v} for r, v in enumerate((0.08, 0.085, 0.09))}}
    claim = dataclasses.replace(barriers.CLAIMS[0], premise=None)
    tables = {name: report.claims_table(m, CFG, [claim], pd.DataFrame()) for name, m in (("far", far), ("near", near))}
    assert list(tables["far"].near_threshold) == [False] and list(tables["near"].near_threshold) == [True]
    assert tables["near"].verdict.iloc[0] == "reproduced"  # the mark does not change the verdict
    block = report.results_markdown(tables["near"], _one_claim_table()[1], {})
    assert "**reproduced** (near threshold)" in block and "1 verdict(s) marked *near threshold*" in block
    assert "near threshold" not in report.results_markdown(tables["far"], _one_claim_table()[1], {})


def test_beyond_the_paper_reads_the_numbers_of_both_stages():
    pair = dict(full_barrier_unaligned_last=0.5, full_barrier_aligned_last=0.25, identity_fraction_last=0.1,
                aligned_layer_barrier_last={"stem": 0.2, "fc": 0.05, "mid": 0.125},
                aligned_layer_share_of_full_last={"stem": 0.8, "fc": 0.2, "mid": 0.5})
    other = dict(pair, full_barrier_unaligned_last=0.7, full_barrier_aligned_last=0.35,
                 aligned_layer_barrier_last={"stem": 0.0, "fc": 0.05, "mid": 0.325})
    bn = {v: dict(full_barrier=f, max_abs_single_layer_barrier=f / 2)
          for v, f in (("aligned+bn_reset", 0.1), ("plain", 0.8), ("bn_reset", 0.4), ("aligned", 0.6))}
    lines = report.beyond_the_paper({"alignment": {0: pair, 1: other}, "bn_reset": {None: bn}})
    assert len(lines) == 2
    assert "2 pair(s)" in lines[0] and "0.60 ± 0.14 unaligned" in lines[0] and "0.30 ± 0.07 aligned" in lines[0]
    assert "mid 0.23, stem 0.10, fc 0.05" in lines[0]  # largest mean barrier first
    assert lines[1].index("plain 0.80 / 0.40") < lines[1].index("bn_reset 0.40 / 0.20") \
        < lines[1].index("aligned+bn_reset 0.10 / 0.05")  # the stage's variant order, not the file's
    assert report.beyond_the_paper({}) == []


def test_premises_and_the_paper_side_by_side_in_the_written_blocks(tmp_path):
    metrics = {"layerwise_barriers": dict(enumerate(seeds(
        full_barrier_train_loss_last=[1.8, 1.9, 2.0], own_train_error_A_last=[0.0, 0.2, 0.4],
        own_train_error_B_last=[3.0, 0.0, 0.0], max_abs_single_layer_barrier=[0.01, 0.02, 0.03],
        max_abs_single_layer_barrier_last=[0.01, 0.02, 0.03])))}
    premises = report.premise_table(metrics, CFG, {REGIME.name: REGIME})
    table = report.claims_table(metrics, CFG, barriers.CLAIMS, premises)
    block = report.results_markdown(table, _one_claim_table()[1], {}, premises=premises)
    assert "| **no** |" in block and "Premise `fig1_regime`: **not met**." in block  # one endpoint at 3 % error
    assert block.index("Premises") < block.index("Claims measured")
    side = report.paper_vs_ours(table, premises)
    assert side.count("\n") == 2 + len(premises) + len(table)
    assert "1.9-2.3 (-> ln 10)" in side and "| premise not met |" in side and "worst 3)" in side
    doc = tmp_path / "figures.md"
    doc.write_text(f"# Figures\n{report.PAPER_VS_OURS_START}\nold\n{report.PAPER_VS_OURS_END}\nmore\n")
    assert report.update_readme(doc, side, report.PAPER_VS_OURS_START, report.PAPER_VS_OURS_END)
    assert side in doc.read_text() and "\nold\n" not in doc.read_text() and doc.read_text().endswith("more\n")
