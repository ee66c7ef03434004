"""The claims table of the final report: each claim of the paper (SPEC section 3), the number this run measured,
the paper's number where known, and a verdict computed here with a stated tolerance.

Every measured value is read from the metrics JSON files the stages wrote (metrics/<stage>.json); nothing is typed in.
A claim whose metric is missing makes the report fail loudly rather than print a stale or invented number.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from llmc_utils.config import NonNegativeFloat, PositiveFloat, PositiveInt, Section


class ReportConfig(Section):
    clear_barrier: PositiveFloat = 0.5  # a full barrier (train loss, nats) at least this large is "clearly present"
    single_layer_tolerance: NonNegativeFloat = 0.1  # paper: every single-layer barrier within [-0.1, 0.1]
    single_layer_relative: PositiveFloat = 0.25  # looser: every single-layer barrier below 25 % of the full one
    minimal_example_ratio: PositiveFloat = 2.0  # Fig. 3: full-path barrier at least this many times the layer-2 one
    min_theorem_cuts: PositiveInt = 1000  # Theorem 4.1 check must cover at least this many single-layer cuts
    majority: float = 0.5  # "most layers": a fraction strictly above this


@dataclass(frozen=True)
class Claim:
    source: str  # figure or table of the paper
    statement: str
    paper: str  # the paper's number or statement
    criterion: str  # what "reproduced" means here, in words
    measure: Callable[[dict, ReportConfig], float]  # reads the measured value from all metrics
    holds: Callable[[float, ReportConfig], bool]


def _single_over_full(m: dict, _cfg) -> float:
    lw = m["layerwise_barriers"]
    return lw["max_abs_single_layer_barrier_train_loss_last"] / lw["full_barrier_train_loss_last"]


def _onsets_inside(m: dict, _cfg) -> float:
    """Fraction of the two main orders (x 2 bases) whose onset lies strictly between a single layer and all layers."""
    c = m["cumulative_averaging"]
    keys = [f"onset_{o}_into_{b}" for o in ("shallow_to_deep", "deep_to_shallow") for b in "AB"]
    return sum(1 < (c[k] or 0) <= c["n_layers"] for k in keys) / len(keys)


def _federated_gap(split: str) -> Callable[[dict, ReportConfig], float]:
    """Best partial-averaging accuracy minus full-averaging accuracy on one split (percentage points)."""
    def measure(m: dict, _cfg) -> float:
        acc = m["federated"]["accuracy"]
        partial = [v for k, v in acc.items() if k.startswith(f"{split}/") and k.split("/")[1] not in ("full", "local")]
        return max(partial) - acc[f"{split}/full"]
    return measure


CLAIMS: list[Claim] = [
    Claim("Fig. 1", "Averaging all layers creates a clear loss barrier once training is under way",
          "1.9-2.3 (-> ln 10) on CIFAR-10 / ResNet18", "full train-loss barrier at the last checkpoint >= clear_barrier",
          lambda m, c: m["layerwise_barriers"]["full_barrier_train_loss_last"], lambda v, c: v >= c.clear_barrier),
    Claim("Fig. 1", "Averaging any single layer creates (almost) no barrier",
          "every single-layer barrier within [-0.1, 0.1]", "max |single-layer barrier| (last checkpoint, both bases) "
          "<= single_layer_tolerance",
          lambda m, c: m["layerwise_barriers"]["max_abs_single_layer_barrier_train_loss_last"],
          lambda v, c: v <= c.single_layer_tolerance),
    Claim("Fig. 1", "Single-layer barriers are small next to the full barrier",
          "< 5 % of the full barrier", "max |single-layer barrier| / full barrier <= single_layer_relative",
          _single_over_full, lambda v, c: v <= c.single_layer_relative),
    Claim("Fig. 2", "A barrier appears only once a group of layers (reaching the middle) is averaged",
          "barrier appears when middle layers join", "fraction of {shallow->deep, deep->shallow} x {into A, into B} "
          "whose onset (first j over half the full barrier) is > 1 layer; must be 1",
          _onsets_inside, lambda v, c: v == 1.0),
    Claim("Fig. 3", "1-D linear net: the full path has a barrier, the layer-2 path a much lower one",
          "layer-2 path much lower", "full-path barrier / layer-2-path barrier >= minimal_example_ratio",
          lambda m, c: m["deep_linear"]["minimal_full_barrier"] / m["deep_linear"]["minimal_layer2_barrier"],
          lambda v, c: v >= c.minimal_example_ratio),
    Claim("Thm. 4.1", "Deep linear nets: the loss along a single-layer interpolation is convex",
          "holds for every layer (theorem)", "0 violations and 0 closed-form mismatches over >= min_theorem_cuts cuts; "
          "measured = number of violations",
          lambda m, c: (m["deep_linear"]["n_single_layer_violations"] + m["deep_linear"]["n_closed_form_mismatches"]
                        if m["deep_linear"]["n_single_layer_cuts"] >= c.min_theorem_cuts else float("inf")),
          lambda v, c: v == 0),
    Claim("Thm. 4.1", "Interpolating two layers at once can be non-convex",
          "counterexample exists", "fraction of two-layer cuts that are non-convex > 0",
          lambda m, c: m["deep_linear"]["n_two_layer_nonconvex"] / m["deep_linear"]["n_two_layer_cuts"],
          lambda v, c: v > 0),
    Claim("Fig. 4", "ViT pair: moving a layer toward the other model (A->B) hurts more than an equal-norm random move",
          "holds for most layers", "fraction of layers (train loss, alpha = compare_alpha) > majority",
          lambda m, c: m["robustness"]["vit"]["fraction_interpolation_worse"]["A->B"]["train"],
          lambda v, c: v > c.majority),
    Claim("Fig. 4", "ViT pair, other direction (B->A): the same",
          "holds for most layers", "fraction of layers (train loss) > majority",
          lambda m, c: m["robustness"]["vit"]["fraction_interpolation_worse"]["B->A"]["train"],
          lambda v, c: v > c.majority),
    Claim("Fig. 4 (CNN)", "CNN pair of Fig. 1: interpolation hurts more than random, over layers x checkpoints",
          "holds for most layers", "fraction of trained (layer, checkpoint) cells, both directions' minimum > majority",
          lambda m, c: min(d["all_trained_checkpoints"]
                           for d in m["robustness"]["cnn"]["fraction_interpolation_worse"].values()),
          lambda v, c: v > c.majority),
    Claim("Fig. 5", "Training-subspace and averaging-direction perturbations hurt more than null-space ones",
          "null space flattest", "fraction of panels (datasets x whole net / layers, copied-snapshot subspace) where "
          "both beat the null space at the largest sigma; minimum of the two > majority",
          lambda m, c: min(m["subspace_perturbations"]["fraction_above_null_space"]["snapshots"].values()),
          lambda v, c: v > c.majority),
    Claim("Table 1", "IID clients: averaging only a group of layers does not beat full averaging",
          "full averaging best", "best partial-averaging accuracy - full-averaging accuracy <= 0 (points)",
          _federated_gap("iid"), lambda v, c: v <= 0),
    Claim("Table 1", "Dirichlet non-IID clients: partial averaging does not beat full averaging",
          "full averaging best", "best partial - full accuracy <= 0 (points)",
          _federated_gap("dirichlet"), lambda v, c: v <= 0),
    Claim("Table 1", "Pathological non-IID clients: partial averaging beats full averaging",
          "partial averaging best", "best partial - full accuracy > 0 (points)",
          _federated_gap("pathological"), lambda v, c: v > 0),
    Claim("Sec. 7 (LM)", "Language model: full barrier present, single-layer barriers small",
          "single layers far below full", "max single-layer barrier / full barrier (train loss, last checkpoint) "
          "<= single_layer_relative",
          lambda m, c: (m["language_model"]["final_max_single_layer_barrier"]
                        / m["language_model"]["final_full_barrier_train_loss"]),
          lambda v, c: v <= c.single_layer_relative),
]


def load_metrics(metrics_dir: str | Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(Path(metrics_dir).glob("*.json")) if p.stem != "report"}


def claims_table(metrics: dict[str, dict], cfg: ReportConfig, claims: list[Claim] = CLAIMS) -> pd.DataFrame:
    """One row per claim: source, statement, paper, criterion, measured, verdict."""
    rows = []
    for claim in claims:
        try:
            measured = float(claim.measure(metrics, cfg))
        except KeyError as exc:
            raise KeyError(f"claim {claim.statement!r} needs metric {exc} which no stage wrote; "
                           "run the whole pipeline (dvc repro)") from exc
        rows.append(dict(source=claim.source, claim=claim.statement, paper=claim.paper, criterion=claim.criterion,
                         measured=round(measured, 4),
                         verdict="reproduced" if claim.holds(measured, cfg) else "NOT reproduced"))
    return pd.DataFrame(rows)


# Every figure the pipeline draws, in reading order, with the caption the report prints under it.
FIGURES: list[tuple[str, str]] = [
    ("data_samples", "Data: six training images per class of the default dataset."),
    ("fig_pair_training_curves", "Training pair: loss and error of A and B at every checkpoint."),
    ("fig1_layerwise_barriers", "Fig. 1: train-loss barrier of full averaging (top row) and of averaging one layer, "
                                "per checkpoint, into A and into B."),
    ("fig1_layerwise_barriers_test_loss", "Fig. 1, test loss panel."),
    ("fig1_layerwise_barriers_train_error", "Fig. 1, train error panel."),
    ("fig1_layerwise_barriers_test_error", "Fig. 1, test error panel."),
    ("fig_layer_geometry", "Appendix: per-layer distance and cosine between A and B over training."),
    ("fig2_cumulative_averaging", "Fig. 2: barrier when the first j layers (shallow->deep, deep->shallow) are "
                                  "averaged."),
    ("fig2_cumulative_controls", "Fig. 2 controls: random order, outer-first, sliding window."),
    ("fig2_cumulative_last_checkpoint", "Fig. 2 at the last checkpoint: every order on one axis."),
    ("fig3_minimal_example", "Fig. 3: the 1-D network y = w2 w1 x, its loss landscape and the three paths."),
    ("fig3_theorem_check", "Theorem 4.1: curvature of L(alpha) for single-layer, two-layer and all-layer cuts."),
    ("fig4_robustness", "Fig. 4: ViT pair, one layer moved toward the other model vs equal-norm random directions."),
    ("fig4_robustness_cnn", "Fig. 4 for the CNN pair: interpolation minus random loss per layer and checkpoint."),
    ("fig5_subspace_perturbations", "Fig. 5: MLP test loss under training-subspace, null-space and "
                                    "averaging-direction perturbations."),
    ("fig6_federated_table", "Table 1: per-client test accuracy of full, partial and no averaging."),
    ("fig6_federated_barriers", "Table 1 companion: layer-wise barriers between two clients at the end."),
    ("fig7_language_model", "Language model: layer-wise barriers of a char-level GPT pair over training."),
]


def figure_paths(figures_dir: str | Path) -> list[tuple[Path, str]]:
    """(png path, caption) of every figure; a missing one is an error naming it."""
    paths = [(Path(figures_dir) / f"{stem}.png", caption) for stem, caption in FIGURES]
    missing = [str(p) for p, _ in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"figures missing (run the whole pipeline): {missing}")
    return paths
