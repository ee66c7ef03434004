"""Robustness view of layer-wise averaging (paper Fig. 4): is moving one layer toward the other model worse than moving
it the same distance in a random direction?

For a pair (A, B) and every logical layer k, with base model A ("A->B") or B ("B->A"):
  interpolation: base with layer k at (1 - alpha) * base_k + alpha * other_k;
  random:        base with layer k at (1 - alpha) * base_k + alpha * r,  r = base_k + ||A_k - B_k|| * u / ||u||,
                 u ~ N(0, I) over all tensors of the layer (docs/method.md), one draw per seed in `random_seeds`;
so at every alpha both moves have the same length alpha * ||A_k - B_k||.

The paper (ViTs trained with different learning rates and augmentations) finds that the interpolation curves rise
above the random ones: the direction toward the other model is a "bad" direction. Here the same comparison runs on a
tiny ViT pair trained in this stage (model A: lr_a, no augmentation; model B: lr_b, with augmentation) and, as a
heatmap over layers x checkpoints, on the CNN pair of Fig. 1 (stage train_pairs).

Repetitions: repetition r trains its own ViT pair, with every seed of this section (init, both data orders, the
training/evaluation subsets, the random directions) offset by config.repetition_seed, and draws the CNN heatmap of
CNN pair r. "train" numbers are measured on images the models trained on: the ViTs on a fixed subset of their
`n_train` training images, the CNN pair on a fixed subset of its own training subset (train_pairs.train_subset,
train_pairs.subset_seed); "test" numbers on held-out test images.

Headline per layer (and, for the CNN, per checkpoint): the gap = loss increase of the interpolation minus the mean loss
increase of the random directions at one alpha. A layer counts as "the direction toward the other model hurts more"
only when the gap exceeds the report's tie margin (report.tie_margin): a tie is not a win. The claims (CLAIMS) are
count claims over the repetitions (docs/claims.md): repetition r counts when most of its layers (layer x checkpoint
cells for the CNN) hurt more toward the other model, and the report gives how many of n do with an exact binomial
interval (three repetitions cannot decide a majority). Their null flips the sign of every measured gap at random:
interpolation and random directions alike, the gaps' sizes kept.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import pandas as pd
import torch
from pydantic import Field, model_validator

from llmc_utils.core import plotting
from llmc_utils.core.claims import Claim, SanityCheck, finite_metrics, nested_metrics, sign_flip_null
from llmc_utils.core.config import Alpha, PositiveInt, Section, Seed, SeedList
from llmc_utils.core.io import CheckpointError, load_checkpoint, read_repetition_tables
from llmc_utils.core.layers import StateDict, add_flat, flat, mix
from llmc_utils.core.runtime import progress
from llmc_utils.core.trainer import OptimConfig, check_not_chance, model_layout, stale_dir_of, train_members
from llmc_utils.core.vit import ViTConfig
from llmc_utils.stages.spec import EVALUATION, RUNTIME, TRAINING, Figure, StageSpec

STAGE = "robustness"
DIRECTIONS = {"A->B": "A", "B->A": "B"}  # direction -> base model (the one whose layer moves)
SPLITS = ("train", "test")


class RobustnessConfig(Section):
    vit: ViTConfig = ViTConfig()
    n_train: PositiveInt = 2000  # Fashion-MNIST training subset both ViTs train on
    n_eval: PositiveInt = 200  # samples per split behind every ViT curve point ("train": drawn from the n_train)
    subset_seed: Seed = 0  # training subset and evaluation subsets (offset per repetition)
    init_seed: Seed = 0  # both ViTs start from the same initialisation ...
    data_seed_a: Seed = 1  # ... and see different data orders
    data_seed_b: Seed = 2
    # paper: model A lr1 without augmentation, model B lr2 with augmentation
    optim_a: OptimConfig = OptimConfig(
        epochs=8,
        batch_size=128,
        lr=0.1,
        weight_decay=1e-4,
        schedule="cosine",
        warmup_epochs=1,
        grad_clip=1.0,
        augment=False,
    )
    optim_b: OptimConfig = OptimConfig(
        epochs=8,
        batch_size=128,
        lr=0.03,
        weight_decay=1e-4,
        schedule="cosine",
        warmup_epochs=1,
        grad_clip=1.0,
        augment=True,
    )
    alphas: list[Alpha] = Field(default_factory=lambda: [0.0, 0.25, 0.5, 1.0], min_length=2)
    random_seeds: SeedList = Field(default_factory=lambda: [0, 1], min_length=1)
    compare_alpha: Alpha = 1.0  # where the headline compares interpolation with random (must be on the alpha grid)
    cnn_alpha: Alpha = 0.5  # alpha of the CNN-pair heatmap (layers x checkpoints)
    cnn_n_eval: PositiveInt = 120  # samples per split for the CNN heatmap ("train": from the pair's training subset)
    # all | trained (every checkpoint but the initialisation, epoch 0: a same-init pair coincides there and every move
    # has length 0) | last
    cnn_checkpoints: Literal["all", "trained", "last"] = "trained"

    @model_validator(mode="after")
    def _check(self):
        if 0.0 not in self.alphas:
            raise ValueError("alphas must contain 0.0 (the unmoved base model)")
        if self.compare_alpha not in self.alphas:
            raise ValueError(f"compare_alpha = {self.compare_alpha} must be one of alphas {self.alphas}")
        if self.cnn_alpha == 0.0:
            raise ValueError("cnn_alpha must be > 0 (alpha 0 is the unmoved model: nothing to compare)")
        if self.n_eval > self.n_train:
            raise ValueError(
                f"n_eval = {self.n_eval} must not exceed n_train = {self.n_train}: the 'train' curves "
                "are measured on images the ViTs trained on"
            )
        if len(set(self.random_seeds)) != len(self.random_seeds):
            raise ValueError(f"random_seeds must be distinct, got {self.random_seeds}")
        if self.optim_a == self.optim_b:
            raise ValueError("optim_a and optim_b are identical; the pair must differ in lr and/or augmentation")
        return self

    def members(self) -> dict[str, tuple[OptimConfig, int]]:
        """{"A": (optimizer, data seed), "B": ...}: what the two ViTs differ in (same init_seed, same images)."""
        return {"A": (self.optim_a, self.data_seed_a), "B": (self.optim_b, self.data_seed_b)}


# ----------------------------------------------------------------------------------------------------------- data ---


def vit_data(cfg: RobustnessConfig, images, device="cpu") -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(x_train, y_train, evaluation splits) of the ViT pair: `n_train` training images; "train" evaluation = `n_eval`
    of those very images (without augmentation), "test" = `n_eval` test images."""
    x_train, y_train = images.split("train", cfg.n_train, cfg.subset_seed, device=device)
    splits = {
        "train": images.split(
            "train", cfg.n_eval, cfg.subset_seed, device=device, within=(cfg.n_train, cfg.subset_seed)
        ),
        "test": images.split("test", cfg.n_eval, cfg.subset_seed, device=device),
    }
    return x_train, y_train, splits


def check_pair_subset(checkpoint: Path, pair_cfg) -> None:
    """Stop when the CNN checkpoints were trained on another subset than the params say: the heatmap's "train"
    images would not be the ones the pair trained on."""
    meta = load_checkpoint(checkpoint, ("meta",))["meta"]
    stored = (meta.get("train_subset"), meta.get("subset_seed"))
    if stored != (pair_cfg.train_subset, pair_cfg.subset_seed):
        raise CheckpointError(
            f"{checkpoint} was trained on train_subset/subset_seed {stored}, but train_pairs says "
            f"{(pair_cfg.train_subset, pair_cfg.subset_seed)}; rerun the train_pairs stage"
        )


# ------------------------------------------------------------------------------------------------------- training ---


def make_vit(vit_cfg: ViTConfig, image_shape, n_classes: int, device="cpu") -> torch.nn.Module:
    """A fresh TinyViT on `device` (module-level, so functools.partial of it pickles for trainer.train_many)."""
    from llmc_utils.core.vit import TinyViT

    return TinyViT(vit_cfg, image_shape, n_classes).to(device)


def train_pair(
    cfg: RobustnessConfig,
    make_model: Callable[[], torch.nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    run_root: Path,
    processes: int = 1,
) -> dict[str, Path]:
    """Train the ViT pair with llmc_utils.core.trainer (resumable; A and B side by side when processes > 1, see
    trainer.train_many); returns {"A": final checkpoint, "B": ...}. Checkpoints of another configuration (their meta:
    the ViT, its state-dict layout, which the data set's image size and classes fix, and the training subset) are
    moved to models/stale/."""
    members = {
        name: dict(
            cfg=optim,
            data_seed=data_seed,
            checkpoint_epochs=[0, optim.epochs],
            run_dir=Path(run_root) / name,
            stale_dir=stale_dir_of(Path(run_root) / name),
            desc=f"ViT {name}",
        )
        for name, (optim, data_seed) in cfg.members().items()
    }
    paths = train_members(
        members,
        processes,
        make_model=make_model,
        x=x,
        y=y,
        init_seed=cfg.init_seed,
        meta=dict(
            arch="vit",
            vit=cfg.vit.model_dump(),
            layout=model_layout(make_model()),
            n_train=cfg.n_train,
            subset_seed=cfg.subset_seed,
        ),
    )
    return {name: member_paths[-1] for name, member_paths in paths.items()}


def check_endpoints(cfg: RobustnessConfig, endpoints: Mapping[str, dict], n_classes: int, repetition: int) -> None:
    """trainer.check_not_chance on the final test error of both ViTs, their only trained checkpoint: a degenerate
    model stops the stage."""
    for member, (optim, data_seed) in cfg.members().items():
        check_not_chance(
            endpoints[member]["test"]["error"],
            n_classes,
            f"ViT {member} of repetition {repetition} (init seed {cfg.init_seed}, data seed {data_seed})",
            optim.epochs,
        )


# --------------------------------------------------------------------------------------------------------- curves ---


def draw_seed(seed: int, layer_index: int, direction: str) -> int:
    """A distinct, reproducible stream per (draw, layer, direction)."""
    return seed * 100_003 + layer_index * 2 + (direction == "B->A")


def random_endpoint(base: StateDict, other: StateDict, keys: Sequence[str], seed: int) -> dict[str, torch.Tensor]:
    """The base model with layer k (all its keys) at r = base_k + ||base_k - other_k|| * u / ||u||, u ~ N(0, I)."""
    generator = torch.Generator().manual_seed(seed)
    u = torch.randn(flat(base, keys).numel(), generator=generator, dtype=torch.float64)
    distance = (flat(base, keys).double() - flat(other, keys).double()).norm()
    return add_flat(base, keys, (distance * u / u.norm()).float())


def _evaluators(evaluate, tag: str):
    """(evaluate the base model, evaluate 'base with `keys` changed'): with an evaluation.LayerEvaluator the second
    re-runs only the layers from the first changed one on (same numbers, fewer FLOPs); else both evaluate fully."""
    if hasattr(evaluate, "endpoint") and hasattr(evaluate, "partial"):
        return (lambda state: evaluate.endpoint(state, tag)), (lambda state, keys: evaluate.partial(state, tag, keys))
    return evaluate, (lambda state, keys: evaluate(state))


def layer_curves(
    evaluate: Callable[[Mapping[str, torch.Tensor]], dict],
    state_a: StateDict,
    state_b: StateDict,
    layers: Mapping[str, Sequence[str]],
    alphas: Sequence[float],
    random_seeds: Sequence[int],
    directions: Sequence[str] = tuple(DIRECTIONS),
    desc: str = "layers",
) -> pd.DataFrame:
    """Tidy table: layer x direction x kind (interpolation|random) x draw x alpha x split x metric -> value.

    `evaluate(state)` returns {split: {metric: value}} (an evaluation.Evaluator; a LayerEvaluator is used
    incrementally). alpha = 0 is the base model itself and is evaluated once per direction.
    """
    rows = []
    for direction in directions:
        base, other = (state_a, state_b) if DIRECTIONS[direction] == "A" else (state_b, state_a)
        full, partial = _evaluators(evaluate, tag=direction)
        at_zero = full(base)
        for index, (name, keys) in enumerate(progress(layers.items(), desc=f"{desc} {direction}", leave=False)):
            targets = [("interpolation", 0, other)]
            for draw, seed in enumerate(random_seeds):
                targets.append(("random", draw, random_endpoint(base, other, keys, draw_seed(seed, index, direction))))
            for kind, draw, target in targets:
                for alpha in alphas:
                    # mix(base, target, alpha, keys): base with only layer k moved alpha of the way to target
                    result = at_zero if alpha == 0.0 else partial(mix(base, target, alpha, keys), keys)
                    rows += [
                        dict(
                            layer=name,
                            layer_index=index,
                            direction=direction,
                            kind=kind,
                            draw=draw,
                            alpha=alpha,
                            split=split,
                            metric=metric,
                            value=value,
                        )
                        for split, metrics in result.items()
                        for metric, value in metrics.items()
                    ]
    return pd.DataFrame(rows)


def step_norm_mismatch(
    state_a: StateDict, state_b: StateDict, layers: Mapping[str, Sequence[str]], random_seeds: Sequence[int]
) -> float:
    """Largest |‖random step‖ - ‖interpolation step‖| / ‖interpolation step‖ over layers, directions and draws (the
    absolute difference where the two models coincide on a layer): the equal-norm construction, checked."""
    worst = 0.0
    for direction in DIRECTIONS:
        base, other = (state_a, state_b) if DIRECTIONS[direction] == "A" else (state_b, state_a)
        for index, keys in enumerate(layers.values()):
            distance = float((flat(other, keys).double() - flat(base, keys).double()).norm())
            for seed in random_seeds:
                r = random_endpoint(base, other, keys, draw_seed(seed, index, direction))
                step = float((flat(r, keys).double() - flat(base, keys).double()).norm())
                worst = max(worst, abs(step - distance) / (distance if distance > 0 else 1.0))
    return worst


def loss_increase(curves: pd.DataFrame, alpha: float, metric: str = "loss") -> pd.DataFrame:
    """Per layer, direction, split: increase over the base model at `alpha`, interpolation vs mean (sd) of random
    draws, and gap = increase_interpolation - increase_random (> 0: toward the other model is worse)."""
    df = curves[curves.metric == metric]
    keys = ["layer", "layer_index", "direction", "split"]
    zero = df[df.alpha == 0.0].groupby(keys).value.first().rename("base")
    at = df[df.alpha == alpha]
    interp = at[at.kind == "interpolation"].groupby(keys).value.mean().rename("interpolation")
    rand = at[at.kind == "random"].groupby(keys).value
    out = pd.concat([zero, interp, rand.mean().rename("random_mean"), rand.std(ddof=0).rename("random_sd")], axis=1)
    out["increase_interpolation"] = out.interpolation - out.base
    out["increase_random"] = out.random_mean - out.base
    out["gap"] = out.increase_interpolation - out.increase_random
    return out.reset_index().sort_values(["direction", "split", "layer_index"], ignore_index=True)


def checkpoint_comparison(
    evaluate,
    pairs: Sequence[tuple[int, StateDict, StateDict]],
    layers: Mapping[str, Sequence[str]],
    alpha: float,
    random_seeds: Sequence[int],
) -> pd.DataFrame:
    """The same comparison at one alpha for a pair over training: rows (epoch, layer, direction, kind, draw, split,
    metric, value), kind "base" holding the unmoved model. `pairs` = [(epoch, state_A, state_B), ...]."""
    frames = []
    for epoch, state_a, state_b in progress(pairs, desc="checkpoints", leave=False):
        df = layer_curves(evaluate, state_a, state_b, layers, [0.0, alpha], random_seeds, desc=f"epoch {epoch}")
        base = df[(df.alpha == 0.0) & (df.kind == "interpolation")].assign(kind="base")  # alpha 0: same for all kinds
        frames += [base.assign(epoch=epoch), df[df.alpha != 0.0].assign(epoch=epoch)]
    return pd.concat(frames, ignore_index=True)


def checkpoint_gap(table: pd.DataFrame, metric: str = "loss") -> pd.DataFrame:
    """Per (direction, split, layer, epoch): loss toward the other model minus mean loss toward random directions
    (both against the same unmoved base, so this equals the gap of loss increases)."""
    df = table[(table.metric == metric) & (table.kind != "base")]
    mean = df.groupby(["direction", "split", "layer", "layer_index", "epoch", "kind"]).value.mean().unstack("kind")
    return (mean.interpolation - mean.random).rename("gap").reset_index()


def trained_epochs(epochs: Sequence[int]) -> list[int]:
    """Checkpoints after training started (epoch > 0; train_pairs always stores the initialisation as epoch 0, where
    a same-init pair coincides and every move has length 0): the cells the CNN claims count."""
    return sorted(e for e in set(epochs) if e > 0)


def select_checkpoints(checkpoints: Mapping[int, tuple[Path, Path]], mode: str) -> dict[int, tuple[Path, Path]]:
    """The pair checkpoints the CNN heatmap evaluates (cnn_checkpoints: all | trained | last)."""
    epochs = sorted(checkpoints)
    chosen = {"all": epochs, "trained": trained_epochs(epochs), "last": epochs[-1:]}[mode]
    if not chosen:
        raise ValueError(f"cnn_checkpoints = {mode!r} leaves no checkpoint of {epochs}")
    return {e: checkpoints[e] for e in chosen}


# -------------------------------------------------------------------------------------------- per-repetition metrics


def repetition_metrics(
    endpoints: Mapping[str, dict],
    vit_summary: pd.DataFrame,
    cnn_gap: pd.DataFrame | None,
    cfg: RobustnessConfig,
    step_mismatch: float,
) -> dict[str, float]:
    """The flat metrics of one repetition that the claims read (keys 'group/direction/split/...').

    vit_gap/<dir>/<split>/<layer>: ViT gap at compare_alpha; cnn_gap/<dir>/train/<epoch>/<layer>: CNN gap (train
    loss, cnn_alpha) at every trained checkpoint; vit_<metric>/<member>/<split>: the two ViTs; the mean loss increases
    per direction and split; the equal-norm check. No threshold is applied here: the claims apply report.tie_margin.
    """
    m: dict[str, float] = dict(
        compare_alpha=float(cfg.compare_alpha),
        cnn_alpha=float(cfg.cnn_alpha),
        n_vit_layers=float(vit_summary.layer.nunique()),
        max_step_norm_mismatch=step_mismatch,
    )
    m.update(nested_metrics("vit", endpoints))
    for row in vit_summary.itertuples():
        m[f"vit_gap/{row.direction}/{row.split}/{row.layer}"] = float(row.gap)
    means = vit_summary.groupby(["direction", "split"])[["increase_interpolation", "increase_random"]].mean()
    for (direction, split), row in means.iterrows():
        m[f"vit_mean_increase_interpolation/{direction}/{split}"] = float(row.increase_interpolation)
        m[f"vit_mean_increase_random/{direction}/{split}"] = float(row.increase_random)
    if cnn_gap is not None:
        epochs = trained_epochs(cnn_gap.epoch.unique())
        m["n_cnn_checkpoints"] = float(len(epochs))
        for row in cnn_gap[(cnn_gap.split == "train") & cnn_gap.epoch.isin(epochs)].itertuples():
            m[f"cnn_gap/{row.direction}/train/{int(row.epoch)}/{row.layer}"] = float(row.gap)
    return finite_metrics(m, "robustness")


# ------------------------------------------------------------------------------------------------------- claims ---


def most_beyond_margin(prefix: str) -> Callable[[dict, object], float]:
    """Measure: 1 when more than report.majority of the metrics under `prefix` (one per layer, or per layer x
    checkpoint) have a gap above report.tie_margin (those count as "toward the other model hurts more than random";
    ties do not), else 0: one repetition, one unit."""

    def measure(m: dict, cfg) -> float:
        gaps = [v for k, v in m.items() if k.startswith(prefix)]
        if not gaps:
            raise KeyError(prefix)
        return float(sum(g > cfg.tie_margin for g in gaps) / len(gaps) > cfg.majority)

    return measure


_PAPER = "the interpolation curve lies above the random-direction curves for most layers"
_NULL = "interpolation and random directions alike: every measured gap's sign flipped at random"
CLAIMS: list[Claim] = [
    *[
        Claim(
            "Fig. 4",
            f"ViT pair, {d} ({s} loss): in most repetitions, moving one layer toward the other model hurts "
            "more than an equal-norm random move in most layers",
            _PAPER,
            STAGE,
            most_beyond_margin(f"vit_gap/{d}/{s}/"),
            ">",
            "majority",
            f"fraction of repetitions where more than `majority` of the layers have a {s}-loss gap (interpolation - "
            "random increase, alpha = compare_alpha) > tie_margin",
            kind="count",
            null=sign_flip_null(f"vit_gap/{d}/{s}/", _NULL),
        )
        for d in DIRECTIONS
        for s in SPLITS
    ],
    *[
        Claim(
            "Fig. 4 (CNN)",
            f"CNN pair of Fig. 1, {d}: in most repetitions, toward the other model hurts more than "
            "random in most (layer, trained checkpoint) cells",
            _PAPER,
            STAGE,
            most_beyond_margin(f"cnn_gap/{d}/train/"),
            ">",
            "majority",
            "fraction of repetitions where more than `majority` of the (layer, trained checkpoint) cells have a "
            "train-loss gap (alpha = cnn_alpha) > tie_margin",
            kind="count",
            null=sign_flip_null(f"cnn_gap/{d}/train/", _NULL),
        )
        for d in DIRECTIONS
    ],
]

SANITY_CHECKS: list[SanityCheck] = [
    SanityCheck(
        "Fig. 4",
        "Random directions have exactly the length of the move toward the other model",
        STAGE,
        lambda m, c: m["max_step_norm_mismatch"],
        "<=",
        "step_norm_tolerance",
        "max relative |norm(random step) - norm(interpolation step)| (ViT, all layers, both directions)",
    ),
]


# ------------------------------------------------------------------------------------------ aggregation, figures ---


def aggregate_vit_curves(workspace: str | Path, repetitions: Sequence[int]) -> pd.DataFrame:
    """All repetitions' ViT curves (results/robustness/repetition_<r>/vit_curves.csv) with a `repetition` column."""
    return read_repetition_tables(workspace, STAGE, "vit_curves.csv", repetitions)


def aggregate_cnn_gaps(workspace: str | Path, repetitions: Sequence[int]) -> pd.DataFrame:
    """All repetitions' CNN gaps (results/robustness/repetition_<r>/cnn_gap.csv) with a `repetition` column."""
    return read_repetition_tables(workspace, STAGE, "cnn_gap.csv", repetitions)


def vit_gap_table(curves: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """Per direction, split, layer: mean and sd over repetitions of the gap at `alpha` (curves with a `repetition`
    column), and "mean ± sd" as text."""
    gaps = pd.concat(
        [loss_increase(g, alpha).assign(repetition=s) for s, g in curves.groupby("repetition")], ignore_index=True
    )
    out = (
        gaps.groupby(["direction", "split", "layer_index", "layer"])
        .gap.agg(["mean", "std", "count"])
        .reset_index()
        .rename(columns={"count": "n_repetitions"})
    )
    out["std"] = out["std"].fillna(0.0)
    out["mean ± sd"] = [f"{m:.3f} ± {s:.3f}" for m, s in zip(out["mean"], out["std"])]
    return out


def fig4_robustness(curves: pd.DataFrame, compare_alpha: float, split: str = "train", margin: float | None = None):
    """Fig. 4: one panel per logical layer, `split` loss against alpha (colour = direction, solid = toward the other
    model, dashed = random directions of equal norm; line = mean, band = +-1 sd over repetitions, or over the random
    draws for a single repetition), then per direction the gap (interpolation - random loss increase) at compare_alpha
    per layer, train and test (bars: mean over repetitions, error bars: sd). `curves` has a `repetition` column."""
    order = curves.drop_duplicates("layer").sort_values("layer_index").layer.tolist()
    loss, band = plotting.repetition_band(
        curves[(curves.split == split) & (curves.metric == "loss")], ["layer", "direction", "kind", "alpha"]
    )
    fig, axes = plotting.panels(len(order) + 2, ncols=6, width=3.0, height=2.5)
    for ax, name in zip(axes, order):
        plotting.curves(
            ax,
            loss[loss.layer == name],
            x="alpha",
            y="value",
            hue="direction",
            style="kind",
            hue_order=list(DIRECTIONS),
            style_order=["interpolation", "random"],
            title=name,
            legend=ax is axes[0],
        )
        ax.set_ylabel(f"{split} loss")
    table = vit_gap_table(curves, compare_alpha)
    for ax, direction in zip(axes[-2:], DIRECTIONS):
        for offset, (s, colour) in zip((-0.2, 0.2), (("train", "tab:red"), ("test", "tab:blue"))):
            part = table[(table.direction == direction) & (table.split == s)].sort_values("layer_index")
            ax.bar(part.layer_index + offset, part["mean"], width=0.4, yerr=part["std"], color=colour, label=s)
        ax.axhline(0.0, color="black", lw=0.6)
        if margin is not None:
            ax.axhline(margin, color="gray", lw=0.6, ls=":", label=f"tie margin {margin:g}")
        ax.set_xlabel("layer index")
        ax.set_ylabel(f"gap at alpha={compare_alpha}")
        ax.set_title(f"{direction}: interpolation - random\nloss increase", fontsize=8)
        ax.legend(fontsize=6)
    n = curves.repetition.nunique()
    fig.suptitle(
        "Fig. 4  tiny ViT pair: one layer moved toward the other model vs equal-norm random directions "
        + (f"({band})" if n > 1 else f"(one repetition, {band})"),
        y=1.01,
    )
    fig.tight_layout()
    return fig


def fig4_robustness_cnn(gaps: pd.DataFrame, alpha: float, split: str = "train"):
    """Fig. 4 for the CNN pair: per direction a heatmap of layers x checkpoints, cell = L(layer moved toward the
    other model) - mean L(moved as far in random directions) at `alpha`, mean over repetitions, annotated "mean ± sd"
    (sd over repetitions). Red: toward the other model is worse. `gaps` has a `repetition` column."""
    df = gaps[gaps.split == split]
    stats = df.groupby(["direction", "layer", "layer_index", "epoch"]).gap.agg(["mean", "std"]).reset_index()
    layers = stats.drop_duplicates("layer").sort_values("layer_index").layer.tolist()
    epochs = sorted(stats.epoch.unique())
    n = df.repetition.nunique()
    fig, axes = plotting.panels(2, ncols=2, width=0.9 * len(epochs) + 3, height=0.45 * len(layers) + 1.5)
    limit = float(stats["mean"].abs().max()) or 1.0
    for ax, direction in zip(axes, DIRECTIONS):
        part = stats[stats.direction == direction]
        wide = lambda col, part=part: part.pivot(index="layer", columns="epoch", values=col).reindex(
            index=layers, columns=epochs
        )
        # sd over repetitions is NaN with one repetition: the cells then show the value alone
        plotting.heatmap(
            ax,
            wide("mean"),
            title=f"CNN {direction}: alpha={alpha}",
            fmt=".2f",
            vmin=-limit,
            vmax=limit,
            spread=wide("std"),
            cbar_label=f"L(toward other) - mean L(random), {split}",
        )
        ax.set_xlabel("checkpoint epoch")
    fig.suptitle(
        f"Fig. 4 (CNN pair of Fig. 1): one layer moved toward the other model vs equal-norm random "
        f"directions; red = toward the other model is worse ({n} repetition{'s' if n > 1 else ''}"
        f"{', mean ± sd' if n > 1 else ''})",
        y=1.02,
    )
    fig.tight_layout()
    return fig


def aggregate(st, repetitions: list[int]) -> None:
    """Fig. 4 over every repetition: the ViT curves with their gap table, and the CNN pairs' heatmap."""
    from llmc_utils.core.io import save_table

    cfg, margin = st.section("robustness"), st.section("report").tie_margin
    vit = aggregate_vit_curves(st.workspace, repetitions)
    save_table(vit_gap_table(vit, cfg.compare_alpha), st.results_dir / "fig4_vit_gaps.csv")
    plotting.save(fig4_robustness(vit, cfg.compare_alpha, margin=margin), st.figures_dir / "fig4_robustness")
    plotting.save(
        fig4_robustness_cnn(aggregate_cnn_gaps(st.workspace, repetitions), cfg.cnn_alpha),
        st.figures_dir / "fig4_robustness_cnn",
    )
    print("robustness repetitions:", sorted(vit.repetition.unique().tolist()))
    return None


SPEC = StageSpec(
    name="robustness",
    notebook="05_robustness",
    config=RobustnessConfig,
    repeats_over="robustness",
    repetitions=(0, 1, 2),
    needs_pairs_of="train_pairs",  # CNN heatmap of pair r
    reads=(
        *RUNTIME,
        *TRAINING,
        *EVALUATION,
        "train_pairs.train_subset",
        "train_pairs.subset_seed",
        "train_pairs.scheme",
    ),
    inputs=("data/images.pt", "models/pair/repetition_{r}"),
    persist=("models/robustness/repetition_{r}",),
    aggregate_figures=(
        Figure(
            "fig4_robustness",
            "Fig. 4: ViT pair, one layer moved toward the other model vs equal-norm random directions.",
        ),
        Figure(
            "fig4_robustness_cnn", "Fig. 4 for the CNN pair: interpolation minus random loss per layer and checkpoint."
        ),
    ),
    aggregate=aggregate,
    aggregate_reads=("robustness", "report.tie_margin"),
    claims=tuple(CLAIMS),
    sanity_checks=tuple(SANITY_CHECKS),
)
