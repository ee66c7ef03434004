"""The claims table of the final report: each claim of the paper, measured in its unit (mean over repetitions, or a
count of units with an exact binomial interval), with its interval at the confidence report.confidence sets, the rate
at which its own null reads "reproduced", and a three-state verdict (llmc_utils.core.claims, docs/claims.md); premises
and the sanity checks of the setup listed apart.

Every measured value is read from the metrics JSON files the stages wrote (metrics/<stage>.json for a stage that runs
once, metrics/<stage>/repetition_<r>.json per repetition); nothing is typed in. A claim whose metric is missing makes
the report fail loudly rather than print a stale or invented number.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
from pydantic import Field

from llmc_utils.core.claims import (
    PREMISE_NOT_MET,
    VERDICTS,
    Claim,
    Premise,
    SanityCheck,
    check,
    clopper_pearson,
    evaluate,
    evaluate_premise,
    null_rate,
)
from llmc_utils.core.config import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Section
from llmc_utils.pipeline import registry
from llmc_utils.stages.spec import RUNTIME, Figure, StageSpec


class ReportConfig(Section):
    """Rules of the verdicts (docs/claims.md), section `report` of params.yaml: the claims of every stage read their
    thresholds from here by name, so the criterion printed is the one applied; every threshold names its source."""

    # --- intervals, verdicts and nulls of every claim (llmc_utils.core.claims) ---
    confidence: float = Field(0.95, gt=0.0, lt=1.0)  # of every interval (Student-t, Clopper-Pearson, chi-square)
    majority: float = Field(0.5, ge=0.0, lt=1.0)  # "most pairs / layers": a fraction strictly above this
    # a verdict whose interval ends closer to its threshold than this many half-widths is marked "near threshold":
    # rerun elsewhere (other last digits of training), it may turn inconclusive (claims.edge_margin)
    near_threshold: NonNegativeFloat = 0.25
    # sanity checks that compare a measured quantity with its expectation (noise floor, 1-D random minima): agreement
    # within this many standard errors (a false alarm every 1 / 6e-5 checks under the expectation)
    sanity_z: PositiveFloat = 4.0
    # every claim's null is drawn this many times in the report (its null rate; tests/test_claims_null.py asserts the
    # rate <= 5 % on synthetic metrics)
    null_draws: PositiveInt = 200
    null_seed: NonNegativeInt = 0
    # --- premise of the language-model claims (language_model.PREMISES) ---
    clear_barrier: PositiveFloat = 0.5  # premise lm_regime: a full barrier (train loss, nats) at least this large
    # --- premise of the Fig. 1 / 2 claims, the paper's regime (layerwise_barriers.PREMISES; docs/profiles.md), fixed
    # before any single-layer number was looked at: the whole interval of the full train-loss barrier over the pairs
    # at or above regime_barrier nats (the paper: 1.9-2.3, near ln 10), and every endpoint's error on its own training
    # images at most fit_train_error % (the paper's models fit CIFAR-10's training set)
    regime_barrier: PositiveFloat = 1.0
    fit_train_error: NonNegativeFloat = 2.0
    # --- thresholds of the single-layer band claims (Fig. 1: layerwise_barriers, alignment; Fig. 7: language_model) ---
    single_layer_tolerance: NonNegativeFloat = 0.1  # paper's Fig. 1: every single-layer barrier within [-0.1, 0.1]
    single_layer_relative: PositiveFloat = 0.0435  # paper's Fig. 1: that band against its full barrier, 0.1 / 2.3
    single_layer_relative_loose: PositiveFloat = 0.25  # sensitivity row only: a looser band, in no figure of the paper
    # --- thresholds of the deep_linear claims ---
    min_theorem_cuts: PositiveInt = 1000  # Theorem 4.1 check must cover at least this many single-layer cuts
    minimal_ratio_rtol: PositiveFloat = 1e-9  # Fig. 3 identity: full/layer-2 ratio = (s^2-1)^2/4 to this relative error
    max_theorem_violations: int = Field(0, ge=0)  # Thm. 4.1: convexity violations + closed-form mismatches allowed
    min_nonconvex_two_layer_cuts: PositiveInt = 1  # Thm. 4.1 counterexample: at least this many non-convex 2-layer cuts
    # --- thresholds of the robustness, subspace_perturbations and alignment claims ---
    # Loss gap (nats) a comparison must exceed to count as a win (Fig. 4: interpolation vs random increase; Fig. 5:
    # a direction vs the null space; alignment: the drop of the full barrier); a smaller gap is a tie, not a win.
    # Fixed before any claim was measured with it: 0.01 nats is 1 % of the base losses of these models (0.3-1 nats),
    # far above float rounding of exact means over the fixed images, far below the effects the paper describes (0.1
    # to several nats).
    tie_margin: NonNegativeFloat = 0.01
    step_norm_tolerance: PositiveFloat = 1e-4  # Fig. 4: |norm(random step) / norm(interpolation step) - 1| (float32)
    orthogonality_tolerance: PositiveFloat = 1e-6  # Fig. 5: max |cos(null-space vector, snapshot)| (float64)
    # --- thresholds of the federated claims ---
    # Table 1: accuracy of a layer group minus full averaging, in points of mean client accuracy, against this (the
    # paper's 0: "does not beat") plus the margin, the seed-to-seed sd of full averaging (federated.CLAIMS)
    partial_minus_full_points: float = 0.0


def load_metrics(metrics_dir: str | Path) -> dict[str, dict[int | None, dict]]:
    """{stage: {repetition: metrics}} from metrics/<stage>.json (repetition None: a stage that runs once) and
    metrics/<stage>/repetition_<r>.json (one file per repetition)."""
    metrics_dir = Path(metrics_dir)
    out: dict[str, dict[int | None, dict]] = {}
    for path in sorted(metrics_dir.glob("*.json")):
        if path.stem not in ("report", "aggregate"):
            out.setdefault(path.stem, {})[None] = json.loads(path.read_text())
    for path in sorted(metrics_dir.glob("*/repetition_*.json")):
        out.setdefault(path.parent.name, {})[int(path.stem.split("_")[1])] = json.loads(path.read_text())
    return out


def premise_table(metrics: dict, cfg: ReportConfig, premises: dict[str, Premise] | None = None) -> pd.DataFrame:
    """One row per condition of every premise (claims.evaluate_premise), with the premise's overall verdict."""
    premises = registry.all_premises() if premises is None else premises
    return pd.DataFrame([row for p in premises.values() for row in evaluate_premise(p, metrics, cfg, cfg.confidence)])


def claims_table(
    metrics: dict,
    cfg: ReportConfig,
    claims: list[Claim] | None = None,
    premises: pd.DataFrame | None = None,
    null_draws: int | None = None,
) -> pd.DataFrame:
    """One row per claim and sensitivity row (claims.evaluate: source, statement, paper, premise, kind, criterion,
    n, per-unit values, mean, interval, threshold bounds, verdict, note; "premise not met" when the claim's premise,
    from `premises` = premise_table(...), fails), its null's rate of "reproduced" over `null_draws` draws
    (cfg.null_draws unless given; 0: not drawn), the interval's edge margin to the threshold and whether it is under
    cfg.near_threshold. A claim whose sensitivity row reads another verdict says so in its note."""
    claims = registry.all_claims()[0] if claims is None else claims
    premises = premise_table(metrics, cfg) if premises is None else premises
    draws = cfg.null_draws if null_draws is None else null_draws
    holds = dict(zip(premises.premise, premises.premise_holds)) if len(premises) else {}
    rows = []
    for claim in claims:
        if claim.premise is not None and claim.premise not in holds:
            raise KeyError(f"claim {claim.statement!r} names premise {claim.premise!r}, which no stage module defines")
        row = evaluate(claim, metrics, cfg, cfg.confidence, holds.get(claim.premise))
        rate = (
            null_rate(claim, metrics, cfg, draws, cfg.null_seed, cfg.confidence) if draws and claim.null else math.nan
        )
        margin = min(edge_margin(row["low"], row["high"], t) for t in (row["threshold_low"], row["threshold_high"]))
        rows.append(dict(row, null_rate=rate, null=claim.null.statement if claim.null else "", edge_margin=margin))
    table = pd.DataFrame(rows)  # a claim that is not judged (premise not met) has no verdict to sit near
    table["note"] = [_with_sensitivity(r, table) for r in table.itertuples()]
    return table.assign(near_threshold=(table.edge_margin < cfg.near_threshold) & (table.verdict != PREMISE_NOT_MET))


def _with_sensitivity(row, table: pd.DataFrame) -> str:
    """A claim's note, plus every sensitivity row of it whose verdict differs from the claim's."""
    if row.sensitivity_of:
        return row.note
    others = table[(table.sensitivity_of == row.claim) & (table.verdict != row.verdict)]
    return "; ".join(
        [row.note] * bool(row.note) + [f"read otherwise ({r.claim}): {r.verdict}" for r in others.itertuples()]
    )


def main_claims(claims: pd.DataFrame) -> pd.DataFrame:
    """The claims themselves, without their sensitivity rows (which are never counted as verdicts)."""
    return claims[claims.sensitivity_of == ""] if "sensitivity_of" in claims else claims


def edge_margin(low: float, high: float, threshold: float) -> float:
    """Distance from the threshold to the nearer end of the interval, in half-widths of the interval: how far the
    interval must move (as when another CPU gives other last digits of training) before the verdict changes. Small
    (below report.near_threshold) = a verdict that sits on its threshold; inf for a zero-width interval off it."""
    half = (high - low) / 2
    distance = min(abs(low - threshold), abs(high - threshold))
    return distance / half if half > 0 else (math.inf if distance > 0 else 0.0)


def sanity_table(metrics: dict, cfg: ReportConfig, checks: list[SanityCheck] | None = None) -> pd.DataFrame:
    """One row per identity of the setup: must hold in every run; not counted as evidence for the paper."""
    checks = registry.all_claims()[1] if checks is None else checks
    return pd.DataFrame([check(c, metrics, cfg) for c in checks])


def summary(claims: pd.DataFrame, sanity: pd.DataFrame, premises: pd.DataFrame | None = None) -> dict:
    """Counts per verdict, the verdict of every claim and whether each premise holds (metrics/report.json; `dvc
    metrics diff` compares them); sensitivity rows are not claims and are not counted."""
    held = (
        {}
        if premises is None or not len(premises)
        else {name: bool(rows.premise_holds.iloc[0]) for name, rows in premises.groupby("premise", sort=False)}
    )
    claims = main_claims(claims)
    return dict(
        n_claims=len(claims),
        **{f"n_{v.replace(' ', '_')}": int((claims.verdict == v).sum()) for v in VERDICTS},
        n_near_threshold=int(claims.near_threshold.sum()) if "near_threshold" in claims else 0,
        n_sanity_checks=len(sanity),
        n_sanity_failed=int((~sanity.holds).sum()) if len(sanity) else 0,
        premises_hold=held,
        verdicts={f"{r.source}: {r.claim}": r.verdict for r in claims.itertuples()},
    )


def styled(claims: pd.DataFrame):
    """The claims table for display: numbers to 3 digits, verdicts coloured."""
    colours = {
        "reproduced": "color: #070",
        "not reproduced": "color: #b00; font-weight: bold",
        "inconclusive": "color: #a60",
    }
    return claims.style.hide(axis="index").format(precision=3).map(lambda v: colours.get(v, ""), subset=["verdict"])


THUMBNAILS = ("fig1_layerwise_barriers", "fig2_cumulative_averaging")


def _interval(r) -> str:
    return f"{r.mean:.3g} [{r.low:.3g}, {r.high:.3g}]"


def beyond_the_paper(metrics: dict[str, dict[int | None, dict]]) -> list[str]:
    """Markdown bullets with the numbers of the stages beyond the paper, from their metrics: per cross pair of the
    alignment stage the full barrier before and after weight matching (mean ± sd over pairs) and the layers that keep
    the largest barrier after it; the BatchNorm pair's full and largest single-layer barrier per variant."""
    from llmc_utils.core.pair_variants import VARIANTS
    from llmc_utils.stages.alignment import layer_summary

    def mean_sd(values, fmt=".2f") -> str:
        s = pd.Series(values, dtype=float)
        return f"{s.mean():{fmt}} ± {s.std(ddof=1):{fmt}}" if len(s) > 1 else f"{s.mean():{fmt}}"

    lines = []
    if per_pair := metrics.get("alignment"):
        top = layer_summary(per_pair).head(3)
        lines.append(
            f"- **Permutation alignment** (weight matching, {len(per_pair)} different-init cross pair(s): "
            "A of one pair with B of the next, last checkpoint, train loss): full "
            f"barrier {mean_sd([m['full_barrier_unaligned_last'] for m in per_pair.values()])} unaligned, "
            f"{mean_sd([m['full_barrier_aligned_last'] for m in per_pair.values()])} aligned; hidden units left in "
            f"place {mean_sd([100 * m['identity_fraction_last'] for m in per_pair.values()], '.0f')} %; largest "
            "single-layer barriers after alignment (mean over pairs, worse base): "
            + ", ".join(f"{r.layer} {r.barrier_mean:.2f}" for r in top.itertuples())
            + "."
        )
    if bn := metrics.get("bn_reset", {}).get(None):
        lines.append(
            r"- **BatchNorm pair** (one pair, train loss at alpha 0.5; full / largest \|single layer\|): "
            + "; ".join(
                f"{v} {bn[v]['full_barrier']:.2f} / {bn[v]['max_abs_single_layer_barrier']:.2f}"
                for v in VARIANTS
                if v in bn
            )
            + "."
        )
    return lines


def sec4_by_depth(
    metrics: dict[str, dict[int | None, dict]], confidence: float = ReportConfig().confidence
) -> list[str]:
    """Markdown lines of the Sec. 4 claim per depth and branch of the trained deep linear pairs (deep_linear
    metrics `trained_lower_by_depth`): for each barrier reading, how many pairs have their best single-layer path
    below the full one, with its Clopper-Pearson interval at `confidence` (recomputed from the counts, so it is the
    report's confidence whatever the stage used), beside the rate exchangeable paths give."""
    rows = metrics.get("deep_linear", {}).get(None, {}).get("trained_lower_by_depth")
    if not rows:
        return []
    lines = [
        f"Sec. 4 per depth and branch (trained deep linear pairs; best single-layer path below the full one, with "
        f"its {100 * confidence:g} % Clopper-Pearson interval, against the rate exchangeable paths give):",
        "",
        "| depth | branch | reading | pairs below / pairs [interval] | exchangeable rate |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        low, high = clopper_pearson(r["lower"], r["pairs"], confidence)
        lines.append(
            f"| {r['depth']} | {r['branch']} | {r['reading']} | {r['lower']} / {r['pairs']} [{low:.2f}, "
            f"{high:.2f}] | {r['exchangeable_rate']:.3f} |"
        )
    return lines


def _cell(text) -> str:
    """Markdown table cell: a "|" inside it (as in "max |barrier|") would end it."""
    return str(text).replace("|", "\\|")


def premises_markdown(premises: pd.DataFrame, confidence: float = ReportConfig().confidence) -> list[str]:
    """Markdown lines of the premise table: per condition n, mean [interval], worst repetition, whether it holds,
    and each premise's overall verdict."""
    lines = [
        f"Premises: the regime a claim is about, fixed before the claims were measured; a claim whose premise "
        f"fails is not judged (*premise not met*). Mean over n with a {100 * confidence:g} % interval, and the "
        "worst repetition:",
        "",
        "| premise | condition | n | mean [interval] | worst | holds |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {_cell(r.source)}: {_cell(r.statement)} | {_cell(r.condition)} | {r.n} | {_interval(r)} | "
        f"{r.worst:.3g} | {'yes' if r.holds else '**no**'} |"
        for r in premises.itertuples()
    ]
    for name, rows in premises.groupby("premise", sort=False):
        lines += ["", f"Premise `{name}`: **{'holds' if rows.premise_holds.iloc[0] else 'not met'}**."]
    return lines


def results_markdown(
    claims: pd.DataFrame,
    sanity: pd.DataFrame,
    findings: dict[str, str],
    study: pd.DataFrame | None = None,
    confidence: float = ReportConfig().confidence,
    beyond: list[str] | None = None,
    premises: pd.DataFrame | None = None,
    details: list[str] | None = None,
) -> str:
    """The README's "Results" block: the premises of the claims (premises_markdown), the claims table (premise, n,
    per-unit values, mean [interval at `confidence`], criterion, null rate, verdict and note), `details` of claims
    (e.g. sec4_by_depth), the located findings, the setup study's summary, the numbers
    beyond the paper (`beyond_the_paper`), the sanity checks' count, and the Fig. 1/2 thumbnails. Written by the
    report stage from the computed tables, so it cannot drift from metrics/report.json."""
    lines = premises_markdown(premises, confidence) + [""] if premises is not None and len(premises) else []
    lines += [
        f"Claims measured by the last `dvc repro`, each in the paper's unit (docs/claims.md): per unit the "
        f"repetitions' values or how many units satisfy it, the mean with a {100 * confidence:g} % interval "
        "(Student t for a mean, Clopper-Pearson for a count), the rate at which the claim's own null reads "
        '"reproduced", and the verdict from the whole interval; *sensitivity* rows read a claim another way '
        "and are not counted:",
        "",
        "| source | claim | premise | n | per unit | mean [interval] | criterion | null rate | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    near = claims.near_threshold if "near_threshold" in claims else pd.Series(False, index=claims.index)
    for r, is_near in zip(claims.itertuples(), near):
        sensitivity = "*sensitivity:* " if getattr(r, "sensitivity_of", "") else ""
        note = f" ({_cell(r.note)})" if getattr(r, "note", "") else ""
        rate = getattr(r, "null_rate", math.nan)
        lines.append(
            f"| {_cell(r.source)} | {sensitivity}{_cell(r.claim)} | {_cell(getattr(r, 'premise', ''))} | "
            f"{r.n} | {_cell(getattr(r, 'values', ''))} | {_interval(r)} | {_cell(r.criterion)} | "
            f"{'' if math.isnan(rate) else f'{rate:.3f}'} | **{r.verdict}**"
            + (" (near threshold)" if is_near else "")
            + f"{note} |"
        )
    counted = main_claims(claims)
    counts = counted.verdict.value_counts()
    lines += [
        "",
        f"In all ({len(counted)} claims): "
        + ", ".join(f"{int(counts.get(v, 0))} {v}" for v in VERDICTS)
        + f"; sanity checks of the setup: {int(sanity.holds.sum()) if len(sanity) else 0} of {len(sanity)} hold.",
    ]
    if near.any():
        lines += [
            f"{int(near.sum())} verdict(s) marked *near threshold*: the interval ends closer to the threshold "
            "than report.near_threshold of its half-width, so the last digits of training on another machine may "
            "change them (a decided verdict may turn inconclusive, an inconclusive one may be decided)."
        ]
    if details:
        lines += [""] + details
    if findings:
        lines += ["", "Where a claim does not reproduce, located:", ""]
        lines += [f"- **{name}**: {sentence}" for name, sentence in findings.items()]
    if study is not None and len(study):
        met = study[study.premise_holds]
        chosen = study[study.chosen != ""]
        lines += [
            "",
            f"Setup study ({len(study)} variants, {_count_range(study.n)} pairs each; table and figure in "
            "the report): the premise holds for "
            + (", ".join(met.variant) if len(met) else "no variant")
            + "; "
            + (
                "; ".join(
                    f"chosen by the rule as the {r.chosen} pair: {r.variant} ({r.levers})" for r in chosen.itertuples()
                )
                if len(chosen)
                else "no variant was chosen"
            )
            + ".",
        ]
    if beyond:
        lines += ["", "Beyond the paper (descriptive numbers; the alignment claims are in the table above):", ""]
        lines += beyond
    lines += [""] + [f"![{stem}](../figures/{stem}.png)" for stem in THUMBNAILS]  # from reports/
    return "\n".join(lines) + "\n"


def _count_range(counts: pd.Series) -> str:
    low, high = int(counts.min()), int(counts.max())
    return str(low) if low == high else f"{low}-{high}"


def paper_vs_ours(claims: pd.DataFrame, premises: pd.DataFrame) -> str:
    """Markdown table, one row per premise condition and per claim, in the paper's order: the paper's own number or
    statement next to ours (mean [interval] over n repetitions) and the verdict (results/report/paper_vs_ours.md,
    linked from docs/figures.md)."""
    lines = ["| figure | what | paper | ours: mean [interval] (n) | verdict |", "| --- | --- | --- | --- | --- |"]
    lines += [
        f"| {_cell(r.source)} | premise: {_cell(r.condition)} | {_cell(r.paper)} | {_interval(r)} ({r.n}; "
        f"worst {r.worst:.3g}) | {'holds' if r.holds else 'not met'} |"
        for r in premises.itertuples()
    ]
    lines += [
        f"| {_cell(r.source)} | {_cell(r.claim)} | {_cell(r.paper)} | {_interval(r)} ({r.n}) | {r.verdict} |"
        for r in claims.itertuples()
    ]
    return "\n".join(lines) + "\n"


def figure_paths(figures_dir: str | Path) -> list[tuple[Path, str]]:
    """(png path, caption) of every figure; a missing one is an error naming it."""
    paths = [(Path(figures_dir) / f"{f.stem}.png", f.caption) for f in registry.report_figures()]
    missing = [str(p) for p, _ in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"figures missing (run the whole pipeline): {missing}")
    return paths


SPEC = StageSpec(
    name="report",
    notebook="12_report",
    config=ReportConfig,
    reads=("report", "repetitions", "setup_study", *RUNTIME),
    outs=("results/report", "reports/report.html", "reports/results.md"),
    metrics=("metrics/report.json",),
    figures=(
        Figure(
            "figA_setup_study",
            "Appendix: the setup study that chose the default pair (full barrier and endpoint fit per variant).",
        ),
    ),
)
