"""Robustness view of layer-wise averaging (paper Fig. 4): is moving one layer toward the other model worse than moving
it the same distance in a random direction?

For a pair (A, B) and every logical layer k, with base model A ("A->B") or B ("B->A"):
  interpolation: base with layer k at (1 - alpha) * base_k + alpha * other_k;
  random:        base with layer k at (1 - alpha) * base_k + alpha * r,  r = base_k + ||A_k - B_k|| * u / ||u||,
                 u ~ N(0, I) over all tensors of the layer (SPEC section 2), one draw per seed in `random_seeds`;
so at every alpha both moves have the same length alpha * ||A_k - B_k||.

The paper (ViTs trained with different learning rates and augmentations) finds that the interpolation curves rise
above the random ones: the direction toward the other model is a "bad" direction. Here the same comparison runs on a
tiny ViT pair trained in this stage (model A: lr_a, no augmentation; model B: lr_b, with augmentation) and, as a
heatmap over layers x checkpoints, on the CNN pair of Fig. 1 (stage train_pairs).
Headline: fraction of layers where the interpolation hurts more than the mean random direction, per direction.
Default profile (A: 13.9/17.8 % train/test error, B: 27.3/29.6 %; alpha = 1): A->B 15/16 layers (train and test loss),
B->A only 9/16 (train) and 8/16 (test): the augmented, weaker model B is hurt less by A's embedding, token and head
layers than by random moves of equal norm. CNN pair (alpha 0.5, trained checkpoints of the 30-epoch pair): 93 % (A->B), 91 % (B->A) of cells.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Literal, Mapping, Sequence

import pandas as pd
import torch
from pydantic import Field, model_validator

from llmc_utils.config import Alpha, NonNegativeInt, PositiveInt, Section
from llmc_utils.layers import StateDict, flat, mix
from llmc_utils.stage import progress
from llmc_utils.trainer import OptimConfig, train_model
from llmc_utils.vit import ViTConfig

DIRECTIONS = {"A->B": "A", "B->A": "B"}  # direction -> base model (the one whose layer moves)


class RobustnessConfig(Section):
    vit: ViTConfig = ViTConfig()
    n_train: PositiveInt = 8000  # Fashion-MNIST training subset both ViTs train on
    n_eval: PositiveInt = 1000  # samples per split (train without augmentation, test) in every evaluation
    subset_seed: NonNegativeInt = 0
    init_seed: NonNegativeInt = 0  # both ViTs start from the same initialisation ...
    data_seed_a: NonNegativeInt = 1  # ... and see different data orders
    data_seed_b: NonNegativeInt = 2
    # paper: model A lr1 without augmentation, model B lr2 with augmentation
    optim_a: OptimConfig = OptimConfig(epochs=10, batch_size=128, lr=0.1, weight_decay=1e-4, schedule="cosine",
                                       warmup_epochs=1, grad_clip=1.0, augment=False)
    optim_b: OptimConfig = OptimConfig(epochs=10, batch_size=128, lr=0.03, weight_decay=1e-4, schedule="cosine",
                                       warmup_epochs=1, grad_clip=1.0, augment=True)
    alphas: list[Alpha] = Field(default_factory=lambda: [0.0, 0.2, 0.4, 0.6, 0.8, 1.0], min_length=2)
    random_seeds: list[NonNegativeInt] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    compare_alpha: Alpha = 1.0  # where the headline compares interpolation with random (must be on the alpha grid)
    cnn_alpha: Alpha = 0.5  # alpha of the CNN-pair heatmap (layers x checkpoints)
    cnn_n_eval: PositiveInt = 500  # samples per split for the CNN heatmap (a CNN evaluation costs ~6x a ViT one)
    cnn_checkpoints: Literal["all", "last"] = "all"

    @model_validator(mode="after")
    def _check(self):
        if 0.0 not in self.alphas:
            raise ValueError("alphas must contain 0.0 (the unmoved base model)")
        if self.compare_alpha not in self.alphas:
            raise ValueError(f"compare_alpha = {self.compare_alpha} must be one of alphas {self.alphas}")
        if self.cnn_n_eval > self.n_eval:
            raise ValueError(f"cnn_n_eval = {self.cnn_n_eval} must not exceed n_eval = {self.n_eval} (a prefix of "
                             "the same evaluation subsets)")
        if len(set(self.random_seeds)) != len(self.random_seeds):
            raise ValueError(f"random_seeds must be distinct, got {self.random_seeds}")
        if self.optim_a == self.optim_b:
            raise ValueError("optim_a and optim_b are identical; the pair must differ in lr and/or augmentation")
        return self


def draw_seed(seed: int, layer_index: int, direction: str) -> int:
    """A distinct, reproducible stream per (draw, layer, direction)."""
    return seed * 100_003 + layer_index * 2 + (direction == "B->A")


def random_endpoint(base: StateDict, other: StateDict, keys: Sequence[str], seed: int) -> dict[str, torch.Tensor]:
    """r = base_k + ||base_k - other_k|| * u / ||u||, u ~ N(0, I) over the whole logical layer (all its keys)."""
    generator = torch.Generator().manual_seed(seed)
    u = torch.randn(flat(base, keys).numel(), generator=generator, dtype=torch.float64)
    distance = (flat(base, keys).double() - flat(other, keys).double()).norm()
    step = (distance * u / u.norm()).float()
    out, start = {}, 0
    for key in keys:
        size = base[key].numel()
        out[key] = base[key] + step[start:start + size].view_as(base[key])
        start += size
    return out


def layer_curves(evaluate: Callable[[Mapping[str, torch.Tensor]], dict], state_a: StateDict, state_b: StateDict,
                 layers: Mapping[str, Sequence[str]], alphas: Sequence[float], random_seeds: Sequence[int],
                 directions: Sequence[str] = tuple(DIRECTIONS), desc: str = "layers") -> pd.DataFrame:
    """Tidy table: layer x direction x kind (interpolation|random) x draw x alpha x split x metric -> value.

    `evaluate(state)` returns {split: {metric: value}} (an evaluation.Evaluator). alpha = 0 is the base model itself and
    is evaluated once per direction.
    """
    rows = []
    for direction in directions:
        base, other = (state_a, state_b) if DIRECTIONS[direction] == "A" else (state_b, state_a)
        at_zero = evaluate(base)
        for index, (name, keys) in enumerate(progress(layers.items(), desc=f"{desc} {direction}", leave=False)):
            targets = [("interpolation", 0, other)]
            for draw, seed in enumerate(random_seeds):
                targets.append(("random", draw, {**base, **random_endpoint(base, other, keys, draw_seed(
                    seed, index, direction))}))
            for kind, draw, target in targets:
                for alpha in alphas:
                    # mix(base, target, alpha, keys): base with only layer k moved alpha of the way to target
                    result = at_zero if alpha == 0.0 else evaluate(mix(base, target, alpha, keys))
                    rows += [dict(layer=name, layer_index=index, direction=direction, kind=kind, draw=draw,
                                  alpha=alpha, split=split, metric=metric, value=value)
                             for split, metrics in result.items() for metric, value in metrics.items()]
    return pd.DataFrame(rows)


def loss_increase(curves: pd.DataFrame, alpha: float, metric: str = "loss") -> pd.DataFrame:
    """Per layer, direction, split: increase over the base model at `alpha`, interpolation vs mean (sd) of random draws."""
    df = curves[curves.metric == metric]
    keys = ["layer", "layer_index", "direction", "split"]
    zero = df[df.alpha == 0.0].groupby(keys).value.first().rename("base")
    at = df[df.alpha == alpha]
    interp = at[at.kind == "interpolation"].groupby(keys).value.mean().rename("interpolation")
    rand = at[at.kind == "random"].groupby(keys).value
    out = pd.concat([zero, interp, rand.mean().rename("random_mean"), rand.std(ddof=0).rename("random_sd")], axis=1)
    out["increase_interpolation"] = out.interpolation - out.base
    out["increase_random"] = out.random_mean - out.base
    out["interpolation_worse"] = out.interpolation > out.random_mean
    return out.reset_index().sort_values(["direction", "split", "layer_index"], ignore_index=True)


def fraction_worse(summary: pd.DataFrame) -> dict[str, dict[str, float]]:
    """{direction: {split: fraction of layers where moving toward the other model hurts more than random}}."""
    grouped = summary.groupby(["direction", "split"]).interpolation_worse.mean()
    return {d: {s: float(v) for (dd, s), v in grouped.items() if dd == d} for d in summary.direction.unique()}


def checkpoint_comparison(evaluate, pairs: Sequence[tuple[int, StateDict, StateDict]],
                          layers: Mapping[str, Sequence[str]], alpha: float, random_seeds: Sequence[int]) -> pd.DataFrame:
    """The same comparison at one alpha for a pair over training: rows (epoch, layer, direction, kind, draw, split,
    metric, value), kind "base" holding the unmoved model. `pairs` = [(epoch, state_A, state_B), ...]."""
    frames = []
    for epoch, state_a, state_b in progress(pairs, desc="checkpoints", leave=False):
        df = layer_curves(evaluate, state_a, state_b, layers, [0.0, alpha], random_seeds, desc=f"epoch {epoch}")
        base = df[(df.alpha == 0.0) & (df.kind == "interpolation")].assign(kind="base")  # alpha 0: same for all kinds
        frames += [base.assign(epoch=epoch), df[df.alpha != 0.0].assign(epoch=epoch)]
    return pd.concat(frames, ignore_index=True)


def checkpoint_gap(table: pd.DataFrame, split: str = "train", metric: str = "loss") -> pd.DataFrame:
    """Per (direction, layer, epoch): loss toward the other model minus mean loss toward random directions."""
    df = table[(table.split == split) & (table.metric == metric) & (table.kind != "base")]
    mean = df.groupby(["direction", "layer", "layer_index", "epoch", "kind"]).value.mean().unstack("kind")
    return (mean.interpolation - mean.random).rename("gap").reset_index()


def train_pair(cfg: RobustnessConfig, make_model: Callable[[], torch.nn.Module], x: torch.Tensor, y: torch.Tensor,
               run_root: Path) -> dict[str, Path]:
    """Train the ViT pair with llmc_utils.trainer (resumable); returns {"A": final checkpoint, "B": ...}."""
    out = {}
    for name, optim, data_seed in (("A", cfg.optim_a, cfg.data_seed_a), ("B", cfg.optim_b, cfg.data_seed_b)):
        paths = train_model(make_model, x, y, optim, init_seed=cfg.init_seed, data_seed=data_seed,
                            checkpoint_epochs=[0, optim.epochs], run_dir=Path(run_root) / name,
                            meta=dict(arch="vit", vit=cfg.vit.model_dump(), n_train=cfg.n_train,
                                      subset_seed=cfg.subset_seed), desc=f"ViT {name}")
        out[name] = paths[-1]
    return out


__all__ = ["RobustnessConfig", "DIRECTIONS", "random_endpoint", "layer_curves", "loss_increase", "fraction_worse",
           "checkpoint_comparison", "checkpoint_gap", "train_pair"]
