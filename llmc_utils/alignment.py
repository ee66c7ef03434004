"""Layer-wise barriers after permutation alignment (beyond the paper): Fig. 1 and Fig. 2 between A and B aligned to A.

Two networks trained apart differ partly by a permutation of their hidden units, which the loss does not see but
averaging does. Weight matching (llmc_utils.align, Git Re-Basin) permutes B's units to match A's, leaving B's function
unchanged; then the same layer-wise barriers are measured between A and the aligned B. The question the paper's
readers ask: once the full barrier shrinks, which layers still carry one?

One stage over every pair of train_pairs (the repetitions): at the checkpoints `epochs` (default: the last one), B is
aligned to A (checked: the aligned B's logits equal B's within `function_tolerance`), then
* Fig. 1 between A and aligned B: the full and every single-layer barrier at layerwise_barriers.heatmap_alpha, with
  the layer-wise stage's evaluation images (its subsets, bases, batch size), so the unaligned numbers are read from
  that stage's table, not recomputed;
* Fig. 2 at the last of `epochs`: the cumulative `orders` (and the sliding window) with cumulative_averaging's
  images, beside its table.
Per-pair numbers go to metrics/alignment/seed_<r>.json, which the report turns into intervals over the pairs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pandas as pd
import torch
from pydantic import Field

from llmc_utils import align, barriers, cumulative, pairs, plotting
from llmc_utils.claims import Claim
from llmc_utils.config import NonNegativeInt, PositiveFloat, PositiveInt, Section, get_section
from llmc_utils.data import load_prepared, prepared_path
from llmc_utils.evaluation import FULL, LayerEvaluator, checkpoint_barriers
from llmc_utils.io import read_seed_tables
from llmc_utils.layers import logical_layers


class AlignmentConfig(Section):
    # checkpoints to align and evaluate: a list, "last" (the last of cumulative_averaging.epochs) or "cumulative" (all
    # of them); Fig. 2 is measured at the last one
    epochs: list[NonNegativeInt] | Literal["last", "cumulative"] = "last"
    # cumulative orders of Fig. 2 after alignment (its sliding window always; null = those of cumulative_averaging)
    orders: list[Literal["shallow_to_deep", "deep_to_shallow", "random", "outer_first"]] | None = Field(
        default_factory=lambda: ["shallow_to_deep", "deep_to_shallow", "outer_first"])
    seed: NonNegativeInt = 0  # order in which weight matching solves its assignment problems
    max_iter: PositiveInt = 100  # sweeps over every permutation group at most
    function_tolerance: PositiveFloat = 1e-4  # max |logit(aligned B) - logit(B)|; more stops the stage


class AlignmentFailed(RuntimeError):
    """The permuted B does not compute B's function: a wrong permutation spec for this architecture."""


def checkpoint_epochs(cfg: AlignmentConfig, params: dict) -> list[int]:
    if isinstance(cfg.epochs, list):
        return list(cfg.epochs)
    cumulative_epochs = get_section(params, "cumulative_averaging").epochs
    if cumulative_epochs is None:  # every checkpoint of the pairs
        cumulative_epochs = get_section(params, "train_pairs").checkpoint_epochs
    return [max(cumulative_epochs)] if cfg.epochs == "last" else list(cumulative_epochs)


def max_logit_difference(model: torch.nn.Module, state_b: dict, state_aligned: dict, x: torch.Tensor) -> float:
    """max |logits of B - logits of aligned B| on x: 0 up to float rounding when the permutation is valid."""
    with torch.inference_mode():
        return (torch.func.functional_call(model, state_b, (x,))
                - torch.func.functional_call(model, state_aligned, (x,))).abs().max().item()


def align_pair(model, state_a, state_b, cfg: AlignmentConfig, check_x: torch.Tensor) -> tuple[align.Alignment, float]:
    """B aligned to A, and the function check; raises AlignmentFailed when the aligned B computes another function."""
    result = align.align(model, state_a, state_b, seed=cfg.seed, max_iter=cfg.max_iter)
    diff = max_logit_difference(model, state_b, result.state, check_x)
    if not diff <= cfg.function_tolerance:
        raise AlignmentFailed(f"aligned B differs from B by {diff:.2e} in the logits (> alignment.function_tolerance "
                              f"= {cfg.function_tolerance:g}): the permutation spec of {type(model).__name__} is wrong")
    return result, diff


def pair_tables(workspace: str | Path, params: dict, cfg: AlignmentConfig, repetition: int, device="cpu",
                progress=lambda it, **kw: it) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(Fig. 1 rows, Fig. 2 rows, alignment rows) between A and aligned B of pair `repetition`, at `epochs`."""
    pair_cfg = get_section(params, "train_pairs")
    fig1_cfg, fig2_cfg = get_section(params, "layerwise_barriers"), get_section(params, "cumulative_averaging")
    if cfg.orders is not None:
        fig2_cfg = fig2_cfg.model_copy(update={"orders": cfg.orders})
    epochs = checkpoint_epochs(cfg, params)
    images = load_prepared(prepared_path(workspace))
    model = pairs.pair_model(workspace, repetition).to(device).eval()

    def evaluator(section):
        splits = pairs.pair_splits(images, pair_cfg, section.train_subset, section.test_subset, section.subset_seed,
                                   device)
        wanted = getattr(section, "splits", list(splits))
        return LayerEvaluator(model, {s: splits[s] for s in wanted}, section.eval_batch_size, device,
                              getattr(section, "cache_activations", True))

    fig1_eval, fig2_eval = evaluator(fig1_cfg), evaluator(fig2_cfg)
    fig1, fig2, info = [], [], []
    for epoch in progress(epochs, desc=f"pair {repetition}: align + evaluate"):
        state_a, state_b = pairs.load_pair(workspace, epoch, repetition)
        result, diff = align_pair(model, state_a, state_b, cfg, fig1_eval.splits["test"][0])
        info.append(dict(epoch=epoch, sweeps=result.sweeps, objective_before=result.objective_before,
                         objective_after=result.objective_after, identity_fraction=result.identity_fraction,
                         max_logit_difference=diff))
        layers = logical_layers(state_a, fig1_cfg.layer_groups)
        fig1 += checkpoint_barriers(fig1_eval, epoch, state_a, result.state, layers, [fig1_cfg.heatmap_alpha],
                                    fig1_cfg.bases)
        if epoch == epochs[-1]:
            fig2 += cumulative.checkpoint_cumulative(fig2_eval, epoch, state_a, result.state, fig2_cfg)
    return pd.DataFrame(fig1), pd.DataFrame(fig2), pd.DataFrame(info)


def with_unaligned(aligned: pd.DataFrame, workspace, stage: str, filename: str, seeds) -> pd.DataFrame:
    """The aligned rows (variant "aligned") beside the unaligned stage's rows of the same epochs (variant
    "unaligned"; alphas, and cumulative orders, restricted to those of the aligned table)."""
    unaligned = read_seed_tables(workspace, stage, filename, seeds)
    keep = unaligned.epoch.isin(set(aligned.epoch))
    for column in ("alpha", "order"):
        if column in aligned:
            keep &= unaligned[column].isin(set(aligned[column]))
    missing = set(aligned.epoch) - set(unaligned[keep].epoch)
    if missing:
        raise ValueError(f"alignment.epochs {sorted(missing)} are not in the {stage} table; evaluate them there too "
                         f"({stage}.epochs) or drop them from alignment.epochs")
    return pd.concat([unaligned[keep].assign(variant="unaligned"), aligned.assign(variant="aligned")],
                     ignore_index=True)


def headline_metrics(fig1: pd.DataFrame, fig2: pd.DataFrame, info: pd.DataFrame, alpha: float) -> dict:
    """One pair's numbers (train loss): full barrier unaligned / aligned at the last epoch and its drop; the largest
    |single-layer barrier| after alignment (every epoch from 1, both bases; and at the last epoch); per layer, its
    aligned barrier at the last epoch (largest over bases) and its share of the aligned full barrier; the cumulative
    full barrier of both; the alignment's own numbers (worst function check, sweeps, units left in place)."""
    last = int(fig1.epoch.max())
    sel = fig1[(fig1.split == "train") & (fig1.metric == "loss") & (fig1.alpha == alpha)]

    def full(variant):
        return float(sel[(sel.variant == variant) & (sel.layer_set == FULL) & (sel.epoch == last)].barrier.iloc[0])

    single = sel[(sel.variant == "aligned") & (sel.layer_set != FULL) & (sel.epoch >= 1)]
    per_layer = single[single.epoch == last].groupby("layer_set", sort=False).barrier.max()
    worst = single.loc[single.barrier.abs().idxmax()]
    cum = fig2[(fig2.split == fig2.split.iloc[0]) & (fig2.metric == "loss") & ~fig2.order.str.startswith("window")]
    cum_full = cum[cum.j == cum.j.max()].groupby("variant").barrier.first()
    aligned_full = full("aligned")
    return dict(
        last_epoch=last, alpha=alpha,
        full_barrier_unaligned_last=full("unaligned"), full_barrier_aligned_last=aligned_full,
        full_barrier_drop=full("unaligned") - aligned_full,
        max_abs_single_layer_barrier_aligned=float(single.barrier.abs().max()),
        max_abs_single_layer_barrier_aligned_last=float(single[single.epoch == last].barrier.abs().max()),
        worst_single_layer_aligned=f"{worst.layer_set} into {worst.base} at epoch {int(worst.epoch)}",
        aligned_layer_barrier_last={k: float(v) for k, v in per_layer.items()},
        aligned_layer_share_of_full_last={k: float(v / aligned_full) if aligned_full > 0 else None
                                          for k, v in per_layer.items()},
        cumulative_full_barrier={k: float(v) for k, v in cum_full.items()},
        max_logit_difference=float(info.max_logit_difference.max()), sweeps_max=int(info.sweeps.max()),
        identity_fraction_last=float(info[info.epoch == last].identity_fraction.iloc[0]))


CLAIMS = [
    Claim("Beyond: alignment", "Weight matching (Git Re-Basin) lowers the full barrier of the pair",
          "Git Re-Basin: near 0 for wide ResNets; smaller drop for narrow nets", "alignment",
          lambda m, c: m["full_barrier_drop"], ">=", "tie_margin",
          "unaligned - aligned full train-loss barrier, last checkpoint"),
    Claim("Beyond: alignment", "After alignment, averaging any single layer still creates (almost) no barrier",
          "(not in the paper) every single-layer barrier within [-0.1, 0.1]", "alignment",
          lambda m, c: m["max_abs_single_layer_barrier_aligned"], "<=", "single_layer_tolerance",
          "max |single-layer train-loss barrier| after alignment, alpha 0.5, alignment.epochs from 1 on, both bases"),
]


def layer_summary(metrics: dict[int, dict]) -> pd.DataFrame:
    """Per layer, over the pairs: mean, min and max of its aligned barrier at the last checkpoint and of its share of
    the aligned full barrier, largest first: the layers that keep a barrier after alignment."""
    rows = [dict(pair=r, layer=layer, barrier=value, share=m["aligned_layer_share_of_full_last"][layer])
            for r, m in metrics.items() for layer, value in m["aligned_layer_barrier_last"].items()]
    table = pd.DataFrame(rows).groupby("layer", sort=False).agg(
        barrier_mean=("barrier", "mean"), barrier_min=("barrier", "min"), barrier_max=("barrier", "max"),
        share_mean=("share", "mean"), pairs=("pair", "nunique"))
    return table.sort_values("barrier_mean", ascending=False).reset_index()


def figure(fig1: pd.DataFrame, bases, alpha: float):
    """Fig. 1 beside its aligned twin: per base a row of two heatmaps (rows "full" then every layer, columns
    checkpoints) of the mean train-loss barrier over pairs, unaligned then aligned, on one colour scale; last panel
    the full barrier per checkpoint, both variants (mean ± sd over pairs)."""
    n = fig1.seed.nunique()
    wides = {(base, v): barriers.mean_sd_wide(fig1[fig1.variant == v], base, "train", "loss", alpha)
             for base in bases for v in ("unaligned", "aligned")}
    top = max(float(mean.abs().max().max()) for mean, _ in wides.values())
    n_rows, n_cols = next(iter(wides.values()))[0].shape
    fig, axes = plotting.panels(len(wides) + 1, ncols=2, width=0.9 * n_cols + 3.5, height=0.45 * n_rows + 1.5)
    pairs_label = f"mean ± sd, {n} pairs" if n > 1 else "one pair"
    for ax, ((base, variant), (mean, sd)) in zip(axes, wides.items()):
        plotting.heatmap(ax, mean, spread=sd if n > 1 else None, vmin=-top, vmax=top, fmt=".2f",
                         cbar_label="train loss barrier",
                         title=f"{variant} B, into {base} (alpha {alpha}; {pairs_label})")
        ax.set_xlabel("epoch")
        ax.set_ylabel("averaged layers")
    full = fig1[(fig1.layer_set == FULL) & (fig1.split == "train") & (fig1.metric == "loss")
                & (fig1.alpha == alpha) & (fig1.base == bases[0])]
    plotting.curves(axes[-1], full, x="epoch", y="barrier", hue="variant", hue_order=["unaligned", "aligned"],
                    title=f"full train-loss barrier ({pairs_label})")
    axes[-1].axhline(0, color="grey", lw=0.5)
    fig.tight_layout()
    return fig


def cumulative_figure(fig2: pd.DataFrame, bases, split: str):
    """Fig. 2 at the last checkpoint beside its aligned twin: barrier against j for every order, solid unaligned,
    dashed aligned (mean ± sd over pairs)."""
    fig, axes = plotting.panels(len(bases), width=6.0, height=4.0)
    sel = fig2[(fig2.split == split) & (fig2.metric == "loss")]
    for ax, base in zip(axes, bases):
        plotting.curves(ax, sel[sel.base == base], x="j", y="barrier", hue="order", style="variant",
                        style_order=["unaligned", "aligned"],
                        title=f"epoch {int(sel.epoch.max())}, into {base}: cumulative {split}-loss barrier")
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_xlabel("layers averaged j (window: start)")
    return fig
