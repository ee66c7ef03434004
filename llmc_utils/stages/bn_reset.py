"""Layer-wise barriers of a BatchNorm pair, with and without REPAIR's reset (beyond the paper; the paper's networks
have no normalization).

A pair A, B of the small residual CNN with a BatchNorm2d after every conv (`rescnn_bn`, 19 logical layers: a BN's weight
and bias form a layer, its running statistics travel with it) is trained like pair 0 of train_pairs (same images, seeds,
optimizer) for `epochs` epochs, by default from different initializations (`scheme`): REPAIR and Git Re-Basin study
independently trained networks, whose units need not be in the same order. At the last checkpoint four variants are
measured:
* plain: interpolate everything, running statistics included;
* bn_reset: the same, then every BatchNorm's statistics re-estimated on `reset_batches` training batches
  (llmc_utils.core.normalization.BNReset), the endpoints keeping their own;
* aligned, aligned+bn_reset: the same between A and B aligned to A by weight matching (llmc_utils.core.weight_matching,
  checked to compute B's function).
For each: the full path (loss barrier at every alpha of `path_alphas`) and the Fig. 1 column (full and every single
layer at alpha 0.5, into A and into B). One pair: the numbers are descriptive, not claims.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import Field, model_validator

from llmc_utils.core import plotting
from llmc_utils.core import weight_matching as align
from llmc_utils.core.config import Alpha, NonNegativeInt, PositiveInt, Section
from llmc_utils.core.evaluation import FULL, LayerEvaluator, barrier_rows, checkpoint_barriers, endpoints
from llmc_utils.core.layers import logical_layers, mix
from llmc_utils.core.normalization import BNReset, reset_batches
from llmc_utils.core.pair_variants import VARIANTS, pair_variants
from llmc_utils.core.trainer import load_weights
from llmc_utils.stages import train_pairs as pairs
from llmc_utils.stages.spec import EVALUATION, RUNTIME, TRAINING, Figure, StageSpec


class BNResetConfig(Section):
    arch: Literal["rescnn_bn", "cnn_bn"] = "rescnn_bn"
    epochs: PositiveInt = 10  # training length; everything else as train_pairs pair 0
    scheme: Literal["same_init_different_order", "different_init"] = "different_init"
    reset_batches: PositiveInt = 2  # training batches the reset re-estimates the statistics on
    reset_batch_size: PositiveInt = 128
    reset_seed: NonNegativeInt = 0
    path_alphas: list[Alpha] = Field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0], min_length=2)
    alpha: Alpha = 0.5  # of the single-layer (Fig. 1) column
    bases: list[Literal["A", "B"]] = Field(["A", "B"], min_length=1)
    train_subset: NonNegativeInt = 300  # evaluation images from the pair's training images (0 = all)
    test_subset: NonNegativeInt = 200
    subset_seed: NonNegativeInt = 1
    eval_batch_size: PositiveInt = 256
    align_seed: NonNegativeInt = 0

    @model_validator(mode="after")
    def _check(self):
        if self.alpha not in self.path_alphas:
            raise ValueError(f"alpha={self.alpha} must be one of path_alphas={self.path_alphas}")
        return self


def pair_config(cfg: BNResetConfig, pair_cfg: pairs.TrainPairsConfig) -> pairs.TrainPairsConfig:
    """train_pairs' configuration with this stage's architecture, scheme and length (checkpoints at 0 and the end)."""
    return pair_cfg.model_copy(
        update=dict(
            arch=cfg.arch,
            scheme=cfg.scheme,
            optim=pair_cfg.optim.model_copy(update={"epochs": cfg.epochs}),
            checkpoint_epochs=[0, cfg.epochs],
        )
    )


def train(
    cfg: BNResetConfig, params: dict, images, models_dir: Path, workspace, device, processes: int
) -> tuple[pairs.TrainPairsConfig, dict, dict]:
    """Train (or resume) the BN pair; (its config, state of A, state of B) at the last epoch."""
    pair_cfg = pair_config(cfg, params["train_pairs"])
    paths = pairs.train_pair(pair_cfg, images, workspace, 0, device, processes, run_root=models_dir)
    return pair_cfg, load_weights(paths["A"][-1]), load_weights(paths["B"][-1])


def full_path(evaluator: LayerEvaluator, state_a, state_b, alphas, reset=None, **where) -> list[dict]:
    """Barrier rows of the full interpolation at every alpha (with `reset`, each interpolated model's BatchNorm
    statistics re-estimated first; alphas 0 and 1 too, so their barrier shows what the reset alone changes)."""
    ends = endpoints(evaluator, state_a, state_b, ())
    rows = []
    for alpha in alphas:
        mixed = mix(state_a, state_b, alpha)
        rows += barrier_rows(dict(where, alpha=alpha), evaluator(reset(mixed) if reset else mixed), ends, alpha)
    return rows


def variant_tables(
    cfg: BNResetConfig, model, splits, state_a, state_b, reset_x, device="cpu", progress=lambda it, **kw: it
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(full-path rows, Fig. 1 column rows, alignment info) of the four VARIANTS. The aligned B is checked to compute
    B's function on the first split's inputs (align.check_function_kept raises AlignmentFailed otherwise)."""
    evaluator = LayerEvaluator(model, splits, cfg.eval_batch_size, device)
    reset = BNReset(model, reset_batches(reset_x, cfg.reset_batches, cfg.reset_batch_size, cfg.reset_seed), device)
    aligned = align.align(model, state_a, state_b, seed=cfg.align_seed)
    check = align.check_function_kept(model, state_b, aligned.state, next(iter(splits.values()))[0])
    layers = logical_layers(state_a)
    path, column = [], []
    for variant, other, hook in progress(pair_variants(state_b, aligned.state, reset), desc="variants"):
        path += full_path(evaluator, state_a, other, cfg.path_alphas, hook, variant=variant)
        column += [
            dict(row, variant=variant)
            for row in checkpoint_barriers(evaluator, cfg.epochs, state_a, other, layers, [cfg.alpha], cfg.bases, hook)
        ]
    info = dict(
        sweeps=aligned.sweeps,
        identity_fraction=aligned.identity_fraction,
        max_logit_difference=check.max_difference,
        reset_calls=reset.calls,
    )
    return pd.DataFrame(path), pd.DataFrame(column), info


def headline_metrics(path: pd.DataFrame, column: pd.DataFrame, alpha: float) -> dict:
    """Per variant (train loss): the full barrier at `alpha`, the largest barrier along the path, the largest
    |single-layer barrier| (both bases) and the layer where it is; the endpoints' test errors."""
    out = {}
    path = path[(path.split == "train") & (path.metric == "loss")]
    column = column[(column.split == "train") & (column.metric == "loss")]
    for variant in VARIANTS:
        p, c = path[path.variant == variant], column[column.variant == variant]
        single = c[c.layer_set != FULL]
        worst = single.loc[single.barrier.abs().idxmax()]
        out[variant] = dict(
            full_barrier=float(p[p.alpha == alpha].barrier.iloc[0]),
            max_path_barrier=float(p.barrier.max()),
            max_abs_single_layer_barrier=float(single.barrier.abs().max()),
            worst_single_layer=f"{worst.layer_set} into {worst.base}",
        )
    return out


def figure(path: pd.DataFrame, column: pd.DataFrame, bases, alpha: float):
    """Left: the full path's train-loss barrier against alpha per variant. Then per base a heatmap: rows "full" then
    every logical layer (BatchNorm layers included), columns the four variants, cells the barrier at `alpha`."""
    fig, axes = plotting.panels(1 + len(bases), width=4.8, height=0.32 * column.layer_set.nunique() + 2.0)
    sel = path[(path.split == "train") & (path.metric == "loss")]
    plotting.curves(
        axes[0],
        sel,
        x="alpha",
        y="barrier",
        hue="variant",
        hue_order=list(VARIANTS),
        title="full interpolation: train-loss barrier",
    )
    axes[0].axhline(0, color="grey", lw=0.5)
    loss = column[(column.split == "train") & (column.metric == "loss")]
    order = list(dict.fromkeys(loss.layer_set))
    tables = {
        f"averaged layers into {base} (alpha {alpha})": loss[loss.base == base]
        .pivot(index="layer_set", columns="variant", values="barrier")
        .loc[order, list(VARIANTS)]
        for base in bases
    }
    plotting.barrier_heatmaps(axes[1:], tables, "train loss barrier")
    fig.tight_layout()
    return fig


SPEC = StageSpec(
    name="bn_reset",
    notebook="10_bn_reset",
    config=BNResetConfig,
    reads=(*RUNTIME, *TRAINING, *EVALUATION, "train_pairs"),
    inputs=("data/images.pt",),
    persist=("models/bn_reset",),
    figures=(
        Figure(
            "fig9_bn_reset",
            "Beyond the paper: a BatchNorm pair, full path and single-layer barriers, plain, "
            "with the BN reset, aligned and both.",
        ),
    ),
)
