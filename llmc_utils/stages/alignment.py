"""Layer-wise barriers after permutation alignment (beyond the paper): Fig. 1 and Fig. 2 between A and B aligned to A.

Two networks trained apart differ partly by a permutation of their hidden units, which the loss does not see but
averaging does. Weight matching (llmc_utils.core.weight_matching, Git Re-Basin) permutes B's units to match A's, leaving
B's function unchanged; then the same layer-wise barriers are measured between A and the aligned B. The question the
paper's readers ask: once the full barrier shrinks, which layers still carry one?

Which pairs. Alignment can only change a pair that differs by a permutation: two runs from different
initializations, as in Git Re-Basin. The pairs of train_pairs share their initialization (the paper's scheme), and
weight matching returns the identity for them, so this stage pairs models of different pairs instead, at no training
cost: cross pair i is A of pair r_i with B of pair r_{i+1} (cyclic over the first `pairs` repetitions of
train_pairs), trained with the same recipe on the same images from different initializations and data orders.
Neighbouring cross pairs share an initialization through a same-init twin (B of pair r and A of pair r), a weak link
between repetitions that the intervals ignore. The premise `different_init` (every cross pair's A and B from different
initializations) says whether the claims are about anything; with a single pair of train_pairs the cross pair is that
pair and the premise fails.

At the checkpoints `epochs` (default: the last one), B is aligned to A (checked: the aligned B's logits equal B's
within `function_tolerance` of their scale, weight_matching.check_function_kept), then, for the unaligned and the
aligned B alike,
* Fig. 1: the full and every single-layer barrier at layerwise_barriers.heatmap_alpha, with the layer-wise stage's
  evaluation images (its subsets, bases, batch size);
* Fig. 2 at the last of `epochs`: the cumulative `orders` (and the sliding window) with cumulative_averaging's images.
  Per-cross-pair numbers go to metrics/alignment/repetition_<r>.json (r = the repetition whose A it uses), which the
  report turns into intervals over the cross pairs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch

from llmc_utils.core import plotting
from llmc_utils.core import weight_matching as align
from llmc_utils.core.claims import Claim, Condition, Null, Premise, spread
from llmc_utils.core.config import NonNegativeInt, PositiveFloat, PositiveInt, Section
from llmc_utils.core.data import load_prepared, prepared_path
from llmc_utils.core.evaluation import FULL, LayerEvaluator, checkpoint_barriers
from llmc_utils.core.io import copy_output, save_table
from llmc_utils.core.layers import logical_layers
from llmc_utils.core.pair_variants import pair_variants
from llmc_utils.stages import cumulative_averaging as cumulative
from llmc_utils.stages import layerwise_barriers as barriers
from llmc_utils.stages import train_pairs as pairs
from llmc_utils.stages.spec import EVALUATION, RUNTIME, Figure, StageSpec

UNALIGNED = "unaligned"  # this stage's name of the plain variant (pair_variants): B as it is


class AlignmentConfig(Section):
    # checkpoints to align and evaluate: a list, "last" (the last of cumulative_averaging.epochs) or "cumulative" (all
    # of them); Fig. 2 is measured at the last one
    epochs: list[NonNegativeInt] | Literal["last", "cumulative"] = "last"
    # cumulative orders of Fig. 2 after alignment (its sliding window always; null = those of cumulative_averaging)
    orders: list[Literal["shallow_to_deep", "deep_to_shallow", "random", "outer_first"]] | None = [
        "shallow_to_deep",
        "deep_to_shallow",
    ]
    pairs: PositiveInt = 3  # cross pairs: A of pair r_i with B of pair r_{i+1}, over the first `pairs` of train_pairs
    seed: NonNegativeInt = 0  # order in which weight matching solves its assignment problems
    max_iter: PositiveInt = 100  # sweeps over every permutation group at most
    # max |logit(aligned B) - logit(B)| allowed, relative to max(1, max |logit(B)|) (weight_matching.
    # check_function_kept says why); more stops the stage
    function_tolerance: PositiveFloat = align.FUNCTION_TOLERANCE


def checkpoint_epochs(cfg: AlignmentConfig, params: dict) -> list[int]:
    if isinstance(cfg.epochs, list):
        return list(cfg.epochs)
    cumulative_epochs = params["cumulative_averaging"].epochs
    if cumulative_epochs is None:  # every checkpoint of the pairs
        cumulative_epochs = params["train_pairs"].checkpoint_epochs
    return [max(cumulative_epochs)] if cfg.epochs == "last" else list(cumulative_epochs)


def align_pair(
    model, state_a, state_b, cfg: AlignmentConfig, check_x: torch.Tensor
) -> tuple[align.Alignment, align.FunctionCheck]:
    """B aligned to A, and the function check on check_x; raises align.AlignmentFailed when the aligned B computes
    another function."""
    result = align.align(model, state_a, state_b, seed=cfg.seed, max_iter=cfg.max_iter)
    try:
        return result, align.check_function_kept(model, state_b, result.state, check_x, cfg.function_tolerance)
    except align.AlignmentFailed as exc:
        raise align.AlignmentFailed(f"{exc} (tolerance: alignment.function_tolerance)") from None


def cross_pairs(repetitions: list[int], n: int) -> list[tuple[int, int]]:
    """(repetition whose A, repetition whose B) of every cross pair: the first n repetitions of train_pairs, each A
    with the next one's B (cyclic). One repetition gives its own (same-init) pair."""
    chosen = list(repetitions)[:n]
    return [(r, chosen[(i + 1) % len(chosen)]) for i, r in enumerate(chosen)]


def pair_tables(
    workspace: str | Path,
    params: dict,
    cfg: AlignmentConfig,
    cross: tuple[int, int],
    device="cpu",
    progress=lambda it, **kw: it,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(Fig. 1 rows, Fig. 2 rows, alignment rows) of cross pair (A of pair cross[0], B of pair cross[1]) at `epochs`,
    unaligned and with B aligned to A (column `variant`)."""
    pair_cfg = params["train_pairs"]
    fig1_cfg, fig2_cfg = params["layerwise_barriers"], params["cumulative_averaging"]
    if cfg.orders is not None:
        fig2_cfg = fig2_cfg.model_copy(update={"orders": cfg.orders})
    epochs = checkpoint_epochs(cfg, params)
    images = load_prepared(prepared_path(workspace))
    model = pairs.pair_model(workspace, cross[0]).to(device).eval()

    def evaluator(section):
        splits = pairs.pair_splits(
            images, pair_cfg, section.train_subset, section.test_subset, section.subset_seed, device
        )
        wanted = getattr(section, "splits", list(splits))
        return LayerEvaluator(
            model,
            {s: splits[s] for s in wanted},
            section.eval_batch_size,
            device,
            getattr(section, "cache_activations", True),
        )

    fig1_eval, fig2_eval = evaluator(fig1_cfg), evaluator(fig2_cfg)
    fig1, fig2, info = [], [], []
    for epoch in progress(epochs, desc=f"cross pair {cross}: align + evaluate"):
        state_a, state_b = (
            pairs.load_pair(workspace, epoch, cross[0])[0],
            pairs.load_pair(workspace, epoch, cross[1])[1],
        )
        result, check = align_pair(model, state_a, state_b, cfg, fig1_eval.splits["test"][0])
        info.append(
            dict(
                epoch=epoch,
                sweeps=result.sweeps,
                objective_before=result.objective_before,
                objective_after=result.objective_after,
                identity_fraction=result.identity_fraction,
                max_logit_difference=check.max_difference,
                allowed_logit_difference=check.allowed,
            )
        )
        layers = logical_layers(state_a, fig1_cfg.layer_groups)
        for variant, other, _ in pair_variants(state_b, result.state, plain=UNALIGNED):
            fig1 += [
                dict(row, variant=variant)
                for row in checkpoint_barriers(
                    fig1_eval, epoch, state_a, other, layers, [fig1_cfg.heatmap_alpha], fig1_cfg.bases
                )
            ]
            if epoch == epochs[-1]:
                fig2 += [
                    dict(row, variant=variant)
                    for row in cumulative.checkpoint_cumulative(fig2_eval, epoch, state_a, other, fig2_cfg)
                ]
    return pd.DataFrame(fig1), pd.DataFrame(fig2), pd.DataFrame(info)


def init_seeds(params: dict, cross: tuple[int, int]) -> dict[str, float]:
    """The initialization seeds of the cross pair's A and B and whether they differ (the premise)."""
    pair_cfg = params["train_pairs"]
    init_a = pair_cfg.for_repetition(cross[0]).member_seeds("A")[0]
    init_b = pair_cfg.for_repetition(cross[1]).member_seeds("B")[0]
    return dict(init_seed_A=init_a, init_seed_B=init_b, different_init=float(init_a != init_b))


def headline_metrics(fig1: pd.DataFrame, fig2: pd.DataFrame, info: pd.DataFrame, alpha: float) -> dict:
    """One cross pair's numbers (train loss): full barrier unaligned / aligned at the last epoch (with standard
    errors) and its drop; every aligned single-layer cell (barriers.cell_metrics, epochs from 1) and the largest
    |single-layer barrier| after alignment (every epoch from 1, both bases; and at the last epoch); per layer, its
    aligned barrier at the last epoch (largest over bases) and its share of the aligned full barrier; the cumulative
    full barrier of both; the alignment's own numbers (worst function check, sweeps, units left in place)."""
    last = int(fig1.epoch.max())
    sel = fig1[(fig1.split == "train") & (fig1.metric == "loss") & (fig1.alpha == alpha)]

    def full(variant, column="barrier"):
        return float(sel[(sel.variant == variant) & (sel.layer_set == FULL) & (sel.epoch == last)][column].iloc[0])

    aligned = sel[sel.variant == "aligned"]
    single = aligned[(aligned.layer_set != FULL) & (aligned.epoch >= 1)]
    per_layer = single[single.epoch == last].groupby("layer_set", sort=False).barrier.max()
    worst = single.loc[single.barrier.abs().idxmax()]
    cum = fig2[(fig2.split == fig2.split.iloc[0]) & (fig2.metric == "loss") & ~fig2.order.str.startswith("window")]
    cum_full = cum[cum.j == cum.j.max()].groupby("variant").barrier.first()
    aligned_full = full("aligned")
    return dict(
        last_epoch=last,
        alpha=alpha,
        full_barrier_unaligned_last=full("unaligned"),
        full_barrier_aligned_last=aligned_full,
        full_barrier_unaligned_last_se=full("unaligned", "se"),
        full_barrier_aligned_last_se=full("aligned", "se"),
        full_barrier_drop=full("unaligned") - aligned_full,
        max_abs_single_layer_barrier_aligned=float(single.barrier.abs().max()),
        max_abs_single_layer_barrier_aligned_last=float(single[single.epoch == last].barrier.abs().max()),
        worst_single_layer_aligned=f"{worst.layer_set} into {worst.base} at epoch {int(worst.epoch)}",
        aligned_layer_barrier_last={k: float(v) for k, v in per_layer.items()},
        aligned_layer_share_of_full_last={
            k: float(v / aligned_full) if aligned_full > 0 else None for k, v in per_layer.items()
        },
        cumulative_full_barrier={k: float(v) for k, v in cum_full.items()},
        max_logit_difference=float(info.max_logit_difference.max()),
        sweeps_max=int(info.sweeps.max()),
        identity_fraction_last=float(info[info.epoch == last].identity_fraction.iloc[0]),
        **barriers.cell_metrics(aligned, alpha, 1),
    )


def drop(m: dict, _cfg=None) -> float:
    """Unaligned minus aligned full barrier of one cross pair (last checkpoint, train loss)."""
    return m["full_barrier_unaligned_last"] - m["full_barrier_aligned_last"]


def _drop_null(rng: np.random.Generator, runs: list[dict], cfg) -> list[dict]:
    """Alignment lowers the full barrier by exactly tie_margin, plus the measured spread of the drops."""
    noise = spread([drop(m) for m in runs])
    return [
        dict(m, full_barrier_aligned_last=m["full_barrier_unaligned_last"] - cfg.tie_margin - rng.normal(0.0, noise))
        for m in runs
    ]


DIFFERENT_INIT = "different_init"
PREMISES = [
    Premise(
        DIFFERENT_INIT,
        "Beyond: alignment",
        "Every pair can be changed by a permutation: A and B start from "
        "different initializations, as in Git Re-Basin (weight matching returns the identity for a same-init "
        "pair)",
        (
            Condition(
                "A and B from different initializations (1 = yes)",
                "Git Re-Basin aligns independently initialized networks",
                "alignment",
                lambda m, c: m["different_init"],
                ">=",
                1.0,
                "every",
            ),
        ),
    ),
]

ALIGNED_BAND = barriers.Band("single_layer_tolerance")
CLAIMS = [
    Claim(
        "Beyond: alignment",
        "On average over different-init pairs, weight matching (Git Re-Basin) lowers the full barrier",
        "Git Re-Basin: near 0 for wide ResNets; smaller drop for narrow nets",
        "alignment",
        drop,
        ">=",
        "tie_margin",
        "unaligned - aligned full train-loss barrier, last checkpoint",
        premise=DIFFERENT_INIT,
        null=Null("the drop exactly at tie_margin, plus the measured spread over pairs", _drop_null),
    ),
    Claim(
        "Beyond: alignment",
        "In most different-init pairs, after alignment every single-layer barrier lies inside "
        "the band [-0.1, 0.1], beyond its evaluation error",
        "(not in the paper) every single-layer barrier within [-0.1, 0.1]",
        "alignment",
        ALIGNED_BAND.measure,
        ">",
        "majority",
        "fraction of pairs whose every aligned single-layer cell (alpha 0.5, alignment.epochs from 1, both bases) "
        "lies within +-single_layer_tolerance, inside the band beyond z x its standard error",
        premise=DIFFERENT_INIT,
        kind="count",
        null=ALIGNED_BAND.null(),
    ),
]


def layer_summary(metrics: dict[int | None, dict]) -> pd.DataFrame:
    """Per layer, over the pairs: mean, min and max of its aligned barrier at the last checkpoint and of its share of
    the aligned full barrier, largest first: the layers that keep a barrier after alignment."""
    rows = [
        dict(pair=r, layer=layer, barrier=value, share=m["aligned_layer_share_of_full_last"][layer])
        for r, m in metrics.items()
        for layer, value in m["aligned_layer_barrier_last"].items()
    ]
    table = (
        pd.DataFrame(rows)
        .groupby("layer", sort=False)
        .agg(
            barrier_mean=("barrier", "mean"),
            barrier_min=("barrier", "min"),
            barrier_max=("barrier", "max"),
            share_mean=("share", "mean"),
            pairs=("pair", "nunique"),
        )
    )
    return table.sort_values("barrier_mean", ascending=False).reset_index()


def figure(fig1: pd.DataFrame, bases, alpha: float):
    """Fig. 1 beside its aligned twin: per base a row of two heatmaps (rows "full" then every layer, columns
    checkpoints) of the mean train-loss barrier over pairs, unaligned then aligned, on one colour scale; last panel
    the full barrier at the last checkpoint, one line per pair from unaligned to aligned."""
    n = fig1.repetition.nunique()
    wides = {
        (base, v): barriers.mean_sd_wide(fig1[fig1.variant == v], base, "train", "loss", alpha)
        for base in bases
        for v in ("unaligned", "aligned")
    }
    n_rows, n_cols = next(iter(wides.values()))[0].shape
    fig, axes = plotting.panels(len(wides) + 1, ncols=2, width=0.9 * n_cols + 3.5, height=0.45 * n_rows + 1.5)
    pairs_label = f"mean ± sd, {n} pairs" if n > 1 else "one pair"
    titles = {key: f"{key[1]} B, into {key[0]} (alpha {alpha}; {pairs_label})" for key in wides}
    plotting.barrier_heatmaps(
        axes,
        {titles[k]: mean for k, (mean, _) in wides.items()},
        "train loss barrier",
        "epoch",
        "averaged layers",
        same_scale=True,
        spreads={titles[k]: sd if n > 1 else None for k, (_, sd) in wides.items()},
    )
    full = fig1[
        (fig1.layer_set == FULL)
        & (fig1.split == "train")
        & (fig1.metric == "loss")
        & (fig1.alpha == alpha)
        & (fig1.base == bases[0])
    ]
    last = full[full.epoch == full.epoch.max()]
    per_pair = last.pivot(index="repetition", columns="variant", values="barrier")[["unaligned", "aligned"]]
    ax = axes[-1]
    for seed, row in per_pair.iterrows():
        ax.plot([0, 1], row.values, "o-", color="tab:blue", lw=1)
        ax.annotate(
            f"pair {seed}", (1, row.aligned), xytext=(5, 0), textcoords="offset points", fontsize=7, va="center"
        )
    ax.set_xticks([0, 1], ["unaligned", "aligned"])
    ax.set_xlim(-0.3, 1.5)
    ax.set_ylim(min(0.0, float(per_pair.min().min())) - 0.1, float(per_pair.max().max()) + 0.2)
    ax.set_ylabel("full train-loss barrier")
    ax.set_title(f"full barrier at epoch {int(last.epoch.max())}, per pair")
    ax.axhline(0, color="grey", lw=0.5)
    fig.tight_layout()
    return fig


def cumulative_figure(fig2: pd.DataFrame, bases, split: str):
    """Fig. 2 at the last checkpoint beside its aligned twin: barrier against j for every order, solid unaligned,
    dashed aligned (mean ± sd over pairs)."""
    fig, axes = plotting.panels(len(bases), width=6.0, height=4.0)
    sel = fig2[(fig2.split == split) & (fig2.metric == "loss")]
    for ax, base in zip(axes, bases):
        plotting.curves(
            ax,
            sel[sel.base == base],
            x="j",
            y="barrier",
            hue="order",
            style="variant",
            style_order=["unaligned", "aligned"],
            title=f"epoch {int(sel.epoch.max())}, into {base}: cumulative {split}-loss barrier",
        )
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_xlabel("layers averaged j (window: start)")
    return fig


# ------------------------------------------------------------------ launch: pairs run in separate workspaces
def gather(workspace: Path, sources: dict[int, Path], repetitions: list[int], params: dict) -> None:
    """The alignment stage ran in each repetition's workspace on its own pair: concatenate its per-pair tables (their
    `repetition` column), copy its per-pair metrics, and recompute the layer summary and both figures with the functions
    notebook 09 uses, so they show every pair as in a single-machine run."""
    import matplotlib.pyplot as plt
    import pandas as pd

    results, metrics_dir = workspace / "results" / "alignment", workspace / "metrics" / "alignment"
    shutil.rmtree(results, ignore_errors=True)
    shutil.rmtree(metrics_dir, ignore_errors=True)
    tables = {}
    for path in sorted((sources[repetitions[0]] / "results" / "alignment").glob("*.csv")):
        if path.name == "layer_summary.csv":
            continue  # a summary over the pairs: recomputed below
        frames = [pd.read_csv(sources[r] / "results" / "alignment" / path.name) for r in repetitions]
        if any("repetition" not in f for f in frames):
            raise ValueError(
                f"results/alignment/{path.name} has no `repetition` column: teach alignment.gather to merge it"
            )
        tables[path.name] = pd.concat([f[f.repetition == r] for f, r in zip(frames, repetitions)], ignore_index=True)
        save_table(tables[path.name], results / path.name)
    per_pair: dict[int | None, dict] = {}
    for r in repetitions:
        copy_output(sources[r], workspace, f"metrics/alignment/repetition_{r}.json")
        per_pair[r] = json.loads((metrics_dir / f"repetition_{r}.json").read_text())
        notebook = sources[r] / "reports" / "executed" / "09_alignment.ipynb"
        if notebook.is_file():  # each pair's executed notebook, for reading; the gather has no single one
            (workspace / "reports" / "executed" / "09_alignment").mkdir(parents=True, exist_ok=True)
            shutil.copy2(notebook, workspace / "reports" / "executed" / "09_alignment" / f"repetition_{r}.ipynb")
    save_table(layer_summary(per_pair), results / "layer_summary.csv")
    fig1, fig2 = params["layerwise_barriers"], params["cumulative_averaging"]
    for fig, stem in (
        (figure(tables["barriers.csv"], fig1.bases, fig1.heatmap_alpha), "fig8_alignment"),
        (cumulative_figure(tables["cumulative.csv"], fig2.bases, fig2.splits[0]), "fig8_alignment_cumulative"),
    ):
        plotting.save(fig, workspace / "figures" / stem, show=False)
        plt.close(fig)


SPEC = StageSpec(
    name="alignment",
    notebook="09_alignment",
    config=AlignmentConfig,
    # every pair's checkpoints: A of pair r and B of the next form a cross pair (different inits)
    reads=(
        *RUNTIME,
        *EVALUATION,
        "layerwise_barriers",
        "cumulative_averaging",
        "train_pairs.train_subset",
        "train_pairs.subset_seed",
        "train_pairs.scheme",
        "train_pairs.seed_a",
        "train_pairs.seed_b",
        "train_pairs.checkpoint_epochs",
        "repetitions.train_pairs",
    ),
    inputs=("data/images.pt", "models/pair"),
    outs=("results/alignment", "metrics/alignment"),
    metrics=(),  # metrics/alignment/repetition_<r>.json: one per pair
    figures=(
        Figure(
            "fig8_alignment",
            "Beyond the paper: Fig. 1 between A and B aligned to A by weight matching, beside "
            "the unaligned pair (mean ± sd over pairs).",
        ),
        Figure("fig8_alignment_cumulative", "Beyond the paper: Fig. 2 at the last checkpoint, unaligned and aligned."),
    ),
    claims=tuple(CLAIMS),
    premises=tuple(PREMISES),
    gather=gather,
)
