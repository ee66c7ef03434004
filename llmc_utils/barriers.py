"""Layer-wise barriers (Fig. 1 of Adilova et al. 2024): average ONE logical layer of A and B, keep the rest.

For every checkpoint, layer set ("full" + every logical layer), base ("into A" / "into B"), alpha, split and metric:
value = metric of the interpolated model, barrier = value - [(1 - alpha) * metric(A) + alpha * metric(B)], always
against the two FULL endpoint models (SPEC section 2). Paper (ResNet18 without norm, CIFAR-10): full barrier 0.0 at
init, then 1.9-2.3 in train loss; every single-layer barrier within [-0.1, 0.1]. Default profile (CNN pair of
train_pairs, 30 epochs): full train-loss barrier 0.9 after one epoch, 1.66 at epoch 30; largest |single-layer|
barrier at epoch 30 about 0.10 (fc3), larger (up to 0.7, fc3 into A) early in training. Notebook 02 prints it.

Engine (why it is fast, benchmarks/bench_engine.py measures it):
* endpoints are evaluated once per checkpoint and reused by every layer set, base and alpha;
* interpolated models are dicts that share untouched tensors with the base (layers.mix): no copies, no module reload;
* data sit in memory as tensors, evaluated in large batches in inference mode (evaluation.Evaluator);
* for nn.Sequential models (the CNN) the activations of the base model in front of every layer are cached while the
  endpoint is evaluated, so averaging layer k re-runs only the layers from k on (exactly the same numbers).
"""

from __future__ import annotations

from typing import Iterable, Literal, Mapping

import pandas as pd
from pydantic import Field, model_validator

from llmc_utils.config import Alpha, NonNegativeInt, PositiveInt, Section
from llmc_utils.evaluation import LayerEvaluator, barrier
from llmc_utils.layers import layer_geometry, logical_layers, mix

FULL = "full"


class LayerwiseBarriersConfig(Section):
    train_subset: NonNegativeInt = 1000  # evaluation images from the training set (0 = all)
    test_subset: NonNegativeInt = 1000  # evaluation images from the test set (0 = all)
    subset_seed: NonNegativeInt = 1
    alphas: list[Alpha] = Field(default_factory=lambda: [0.25, 0.5, 0.75], min_length=1)  # grid for max-over-alpha
    heatmap_alpha: Alpha = 0.5  # the paper's figures: the midpoint
    bases: list[Literal["A", "B"]] = Field(default_factory=lambda: ["A", "B"], min_length=1)
    eval_batch_size: PositiveInt = 256  # measured on 2 CPU cores: 2048 is 2.4x slower per image than 256
    epochs: list[NonNegativeInt] | None = None  # checkpoints to evaluate; null = every checkpoint of the pair
    layer_groups: dict[str, list[str]] | None = None  # override of the logical layers: {name: [state-dict keys]}
    cache_activations: bool = True  # prefix caching for nn.Sequential models (same numbers, fewer FLOPs)

    @model_validator(mode="after")
    def _check(self):
        if self.heatmap_alpha not in self.alphas:
            raise ValueError(f"heatmap_alpha={self.heatmap_alpha} must be one of alphas={self.alphas}")
        if len(set(self.alphas)) != len(self.alphas):
            raise ValueError(f"alphas must not repeat, got {self.alphas}")
        return self


def eval_splits(images, cfg: LayerwiseBarriersConfig, device="cpu") -> dict:
    return {"train": images.split("train", cfg.train_subset, cfg.subset_seed, device=device),
            "test": images.split("test", cfg.test_subset, cfg.subset_seed, device=device)}


def _rows(epoch, layer_set, base, alpha, metrics, end_a, end_b) -> list[dict]:
    return [dict(epoch=epoch, layer_set=layer_set, base=base, alpha=alpha, split=split, metric=metric, value=value,
                 value_a=end_a[split][metric], value_b=end_b[split][metric],
                 barrier=barrier(value, end_a[split][metric], end_b[split][metric], alpha))
            for split, by_metric in metrics.items() for metric, value in by_metric.items()]


def checkpoint_barriers(evaluator: LayerEvaluator, epoch: int, state_a, state_b, layers: Mapping[str, tuple],
                        alphas: Iterable[float], bases: Iterable[str]) -> list[dict]:
    """Tidy rows of one checkpoint: full interpolation (same for both bases) and every single layer, every alpha."""
    bases = list(bases)
    ends = {"A": evaluator.endpoint(state_a, "A")}
    if "B" in bases:
        ends["B"] = evaluator.endpoint(state_b, "B")
    else:
        ends["B"] = evaluator(state_b)
    rows = []
    for alpha in alphas:
        full = evaluator(mix(state_a, state_b, alpha))  # the full interpolation does not depend on the base
        for base in bases:
            rows += _rows(epoch, FULL, base, alpha, full, ends["A"], ends["B"])
    for base in bases:
        for name, keys in layers.items():
            for alpha in alphas:
                metrics = evaluator.partial(mix(state_a, state_b, alpha, keys, base=base), base, keys)
                rows += _rows(epoch, name, base, alpha, metrics, ends["A"], ends["B"])
    evaluator.cache.clear()
    return rows


def barrier_table(evaluator: LayerEvaluator, load_pair, epochs: Iterable[int], cfg: LayerwiseBarriersConfig,
                  progress=lambda it, **kw: it) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(barriers, geometry) over checkpoints; load_pair(epoch) -> (state_a, state_b)."""
    rows, geometry = [], []
    for epoch in progress(list(epochs), desc="checkpoints"):
        state_a, state_b = load_pair(epoch)
        layers = logical_layers(state_a, cfg.layer_groups)
        rows += checkpoint_barriers(evaluator, epoch, state_a, state_b, layers, cfg.alphas, cfg.bases)
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
