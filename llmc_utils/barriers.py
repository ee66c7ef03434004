"""Layer-wise barriers (Fig. 1 of Adilova et al. 2024): average ONE logical layer of A and B, keep the rest.

For every checkpoint, layer set ("full" + every logical layer), base ("into A" / "into B"), alpha, split and metric:
value = metric of the interpolated model, barrier = value - [(1 - alpha) * metric(A) + alpha * metric(B)], always
against the two FULL endpoint models. Paper (ResNet18 without norm, CIFAR-10): full barrier 0.0 at init, then
1.9-2.3 in train loss; every single-layer barrier within [-0.1, 0.1]. Each repetition (pair r of train_pairs) writes
its own table; `CLAIMS` state the paper's findings as criteria on one pair's headline metrics, and the report takes
intervals across pairs. "train" = a fixed subset of the images the pair was trained on.

The rows of one checkpoint come from the barrier engine, evaluation.checkpoint_barriers (shared with the federated
and language-model stages; its docstring says why it is fast).
"""

from __future__ import annotations

from typing import Iterable, Literal

import pandas as pd
from pydantic import Field, model_validator

from llmc_utils import plotting
from llmc_utils.config import Alpha, NonNegativeInt, PositiveInt, Section
from llmc_utils.claims import Claim, Condition, Premise
from llmc_utils.evaluation import FULL, LayerEvaluator, checkpoint_barriers
from llmc_utils.io import read_seed_tables
from llmc_utils.layers import layer_geometry, logical_layers


class LayerwiseBarriersConfig(Section):
    train_subset: NonNegativeInt = 1000  # evaluation images from the training set (0 = all)
    test_subset: NonNegativeInt = 1000  # evaluation images from the test set (0 = all)
    subset_seed: NonNegativeInt = 1
    alphas: list[Alpha] = Field(default_factory=lambda: [0.25, 0.5, 0.75], min_length=1)  # grid for max-over-alpha
    heatmap_alpha: Alpha = 0.5  # the paper's figures: the midpoint
    # checkpoints that get the whole alpha grid; the others get heatmap_alpha only (the figures and the claims read
    # heatmap_alpha at every checkpoint; the grid is reported beside them): last = 3x fewer evaluations
    grid_epochs: Literal["all", "last"] = "all"
    bases: list[Literal["A", "B"]] = Field(default_factory=lambda: ["A", "B"], min_length=1)
    eval_batch_size: PositiveInt = 256  # measured on 2 CPU cores: 2048 is 2.4x slower per image than 256
    epochs: list[NonNegativeInt] | None = None  # checkpoints to evaluate; null = every checkpoint of the pair
    layer_groups: dict[str, list[str]] | None = None  # override of the logical layers: {name: [state-dict keys]}
    cache_activations: bool = True  # resume from cached activations at graph boundaries (same numbers, fewer FLOPs)
    claim_from_epoch: NonNegativeInt = 1  # single-layer claim: checkpoints from this epoch on (0 = init, trivial)

    @model_validator(mode="after")
    def _check(self):
        if self.heatmap_alpha not in self.alphas:
            raise ValueError(f"heatmap_alpha={self.heatmap_alpha} must be one of alphas={self.alphas}")
        if len(set(self.alphas)) != len(self.alphas):
            raise ValueError(f"alphas must not repeat, got {self.alphas}")
        return self


def barrier_table(evaluator: LayerEvaluator, load_pair, epochs: Iterable[int], cfg: LayerwiseBarriersConfig,
                  progress=lambda it, **kw: it) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(barriers, geometry) over checkpoints; load_pair(epoch) -> (state_a, state_b)."""
    rows, geometry = [], []
    epochs = list(epochs)
    for epoch in progress(epochs, desc="checkpoints"):
        state_a, state_b = load_pair(epoch)
        layers = logical_layers(state_a, cfg.layer_groups)
        grid = cfg.grid_epochs == "all" or epoch == max(epochs)
        rows += checkpoint_barriers(evaluator, epoch, state_a, state_b, layers,
                                    cfg.alphas if grid else [cfg.heatmap_alpha], cfg.bases)
        geometry += [dict(epoch=epoch, **row) for row in layer_geometry(state_a, state_b, layers)]
    return pd.DataFrame(rows), pd.DataFrame(geometry)


def max_over_alpha(table: pd.DataFrame) -> pd.DataFrame:
    """Largest barrier over the alpha grid per checkpoint, layer set, base, split and metric (with its alpha)."""
    keys = ["epoch", "layer_set", "base", "split", "metric"]
    idx = table.groupby(keys, sort=False)["barrier"].idxmax()
    return table.loc[idx, keys + ["alpha", "barrier"]].rename(columns={"alpha": "argmax_alpha"}).reset_index(drop=True)


def wide(table: pd.DataFrame, base: str, split: str = "train", metric: str = "loss", alpha: float = 0.5,
         value: str = "barrier", rows: str = "layer_set") -> pd.DataFrame:
    """Heatmap layout: one row per layer set in table order ("full" first), one column per checkpoint epoch."""
    sel = table[(table.base == base) & (table.split == split) & (table.metric == metric)]
    if "alpha" in sel:
        sel = sel[sel.alpha == alpha]
    order = list(dict.fromkeys(sel[rows]))
    return sel.pivot(index=rows, columns="epoch", values=value).loc[order]


def full_vs_single(table: pd.DataFrame, alpha: float = 0.5, split: str = "train", metric: str = "loss") -> pd.DataFrame:
    """Per checkpoint: the full barrier and the largest |single-layer barrier| over layers and bases, at `alpha`. The
    small per-pair series behind DVC's data plot (`dvc plots show`) of Fig. 1's contrast."""
    sel = table[(table.split == split) & (table.metric == metric) & (table.alpha == alpha)]
    is_full = sel.layer_set == FULL
    return pd.DataFrame({"full": sel[is_full].groupby("epoch").barrier.first(),
                         "largest_single": sel[~is_full].groupby("epoch").barrier.apply(lambda b: b.abs().max())}
                        ).reset_index()


def headline_metrics(table: pd.DataFrame, alpha: float = 0.5, from_epoch: int = 1) -> dict:
    """One pair's numbers behind the Fig. 1 claims (train loss unless named): the full barrier at the last
    checkpoint; the largest |single-layer barrier| at `alpha` over every checkpoint with epoch >= from_epoch and
    both bases, and at the last checkpoint alone; the largest single-layer barrier over the whole alpha grid, at the
    checkpoints that have it (`grid_epochs`; away from 0.5 the "into A" path tends to the hybrid A-with-B_k, so it is
    reported, not claimed)."""
    last = int(table.epoch.max())
    loss = table[(table.split == "train") & (table.metric == "loss")]
    at_alpha = loss[loss.alpha == alpha]
    full = at_alpha[at_alpha.layer_set == FULL]
    single = at_alpha[(at_alpha.layer_set != FULL) & (at_alpha.epoch >= from_epoch)]
    single_last = single[single.epoch == last]
    grid = loss[(loss.layer_set != FULL) & (loss.epoch >= from_epoch)]
    full_last = float(full[full.epoch == last].barrier.iloc[0])
    worst = single.loc[single.barrier.abs().idxmax()]
    test_full = table[(table.layer_set == FULL) & (table.epoch == last) & (table.split == "test")
                      & (table.metric == "loss") & (table.alpha == alpha)]
    errors = table[(table.epoch == last) & (table.split == "test") & (table.metric == "error")].iloc[0]
    return dict(
        last_epoch=last, alpha=alpha, from_epoch=from_epoch,
        full_barrier_train_loss_last=full_last,
        full_barrier_test_loss_last=float(test_full.barrier.iloc[0]),
        max_abs_single_layer_barrier=float(single.barrier.abs().max()),
        max_abs_single_layer_barrier_last=float(single_last.barrier.abs().max()),
        max_single_layer_barrier_over_alpha_grid=float(grid.barrier.max()),
        worst_single_layer=f"{worst.layer_set} into {worst.base} at epoch {int(worst.epoch)}",
        test_error_A_last=float(errors.value_a), test_error_B_last=float(errors.value_b))


# The paper's Fig. 1 asks whether single layers stay near 0 EVEN WHEN averaging all of them breaks the model; a pair
# whose full barrier is small cannot answer that. So the regime is a premise, fixed before any single-layer number
# was looked at (docs/profiles.md): the claims below are judged only for pairs in it.
FIG1_REGIME = "fig1_regime"
PREMISES = [
    Premise(FIG1_REGIME, "Fig. 1", "The pairs are in the paper's regime: averaging all layers creates a large barrier "
            "while both endpoints fit the images they were trained on", (
                Condition("full train-loss barrier at the last checkpoint (nats)",
                          "1.9-2.3 (-> ln 10) on CIFAR-10 / ResNet18", "layerwise_barriers",
                          lambda m, c: m["full_barrier_train_loss_last"], ">=", "regime_barrier", "interval"),
                Condition("train error (%) of A and of B on their own training images, last checkpoint",
                          "the models fit CIFAR-10's training set (200 epochs)", "layerwise_barriers",
                          lambda m, c: [m["own_train_error_A_last"], m["own_train_error_B_last"]],
                          "<=", "fit_train_error", "every"))),
]

CLAIMS = [
    Claim("Fig. 1", "Averaging any single layer creates (almost) no barrier",
          "every single-layer barrier within [-0.1, 0.1]", "layerwise_barriers",
          lambda m, c: m["max_abs_single_layer_barrier"], "<=", "single_layer_tolerance",
          "max |single-layer train-loss barrier| at alpha 0.5, every checkpoint from epoch 1, both bases",
          premise=FIG1_REGIME),
    Claim("Fig. 1", "Single-layer barriers are small next to the full barrier",
          "< 5 % of the full barrier", "layerwise_barriers",
          lambda m, c: m["max_abs_single_layer_barrier_last"] - c.single_layer_relative * m["full_barrier_train_loss_last"],
          "<=", 0.0, "max |single-layer barrier| - single_layer_relative x full barrier, last checkpoint",
          premise=FIG1_REGIME),
]


def aggregate(workspace, seeds) -> pd.DataFrame:
    """Every repetition's barrier table, with a `seed` column."""
    return read_seed_tables(workspace, "layerwise_barriers", "barriers.csv", seeds)


def mean_sd_wide(tables: pd.DataFrame, base: str, split: str = "train", metric: str = "loss",
                 alpha: float = 0.5) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Heatmap layout of the mean and the sd across repetitions (sd NaN with a single repetition)."""
    per_seed = [wide(t, base, split, metric, alpha) for _, t in tables.groupby("seed", sort=True)]
    stacked = pd.concat(per_seed, keys=range(len(per_seed)))
    grouped = stacked.groupby(level=1, sort=False)
    order = per_seed[0].index
    return grouped.mean().loc[order], grouped.std(ddof=1).loc[order]


# The paper's Fig. 1 full-averaging row (train loss, ResNet18 without normalization on CIFAR-10, alpha 0.5), read off
# the published heatmap: {epoch: barrier} over its 200 epochs. Drawn beside ours on a relative-time axis.
PAPER_FULL_ROW = {0: 0.0, 20: 1.9, 40: 2.1, 60: 2.0, 80: 2.1, 100: 2.2, 120: 2.2, 140: 2.3, 160: 2.3, 180: 2.3, 200: 2.3}


def figure(tables: pd.DataFrame, bases, split: str = "train", metric: str = "loss", alpha: float = 0.5):
    """Fig. 1: per base a heatmap (rows "full" then every layer, columns checkpoints) of the mean barrier across
    repetitions, cells "mean ±sd"; beside it the full row of every repetition against the fraction of training done
    (epoch / last epoch), with the paper's published row (PAPER_FULL_ROW) on the same axis for the train loss."""
    means = {base: mean_sd_wide(tables, base, split, metric, alpha) for base in bases}
    n_rows, n_cols = means[bases[0]][0].shape
    fig, axes = plotting.panels(len(bases) + 1, width=0.9 * n_cols + 3, height=0.45 * n_rows + 1.5)
    n = tables.seed.nunique()
    for ax, base in zip(axes, bases):
        mean, sd = means[base]
        plotting.heatmap(ax, mean, spread=sd if n > 1 else None, cbar_label=f"{metric} barrier",
                         title=f"{split} {metric} barrier, into {base} (alpha={alpha}; "
                               + (f"mean ± sd over {n} pairs)" if n > 1 else "one pair)"))
        ax.set_xlabel("epoch")
        ax.set_ylabel("averaged layers")
    full = tables[(tables.layer_set == FULL) & (tables.split == split) & (tables.metric == metric)
                  & (tables.alpha == alpha) & (tables.base == bases[0])]
    full = full.assign(pair=full.seed.astype(str), training_done=full.epoch / full.epoch.max())
    plotting.curves(axes[-1], full, x="training_done", y="barrier", hue="pair", errorbar=None,
                    title=f"full-averaging {split} {metric} barrier, per pair")
    if (split, metric) == ("train", "loss"):
        last = max(PAPER_FULL_ROW)
        axes[-1].plot([e / last for e in PAPER_FULL_ROW], list(PAPER_FULL_ROW.values()), "k--o", ms=3, lw=1.2,
                      label="paper (ResNet18, CIFAR-10)")
        axes[-1].legend(fontsize=7)
    axes[-1].set_xlabel("fraction of training (epoch / last epoch)")
    axes[-1].axhline(0, color="grey", lw=0.5)
    return fig


def geometry_figure(geometry: pd.DataFrame):
    """Appendix figure: per-layer distance ||A_k - B_k|| and cosine(A_k, B_k) per checkpoint (layer_geometry rows;
    with several pairs, the mean over them)."""
    order = list(dict.fromkeys(geometry.layer))
    fig, axes = plotting.panels(2, width=0.9 * geometry.epoch.nunique() + 3, height=0.4 * len(order) + 1.5)
    for ax, (column, fmt) in zip(axes, (("distance", ".1f"), ("cosine", ".2f"))):
        table = geometry.groupby(["layer", "epoch"])[column].mean().unstack().loc[order]
        plotting.heatmap(ax, table, title=f"per-layer {column} between A and B (mean over pairs)", fmt=fmt,
                         center=None, cmap="viridis", cbar_label=column)
    return fig
