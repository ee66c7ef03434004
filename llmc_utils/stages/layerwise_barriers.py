"""Layer-wise barriers (Fig. 1 of Adilova et al. 2024): average ONE logical layer of A and B, keep the rest.

For every checkpoint, layer set ("full" + every logical layer), base ("into A" / "into B"), alpha, split and metric:
value = metric of the interpolated model, barrier = value - [(1 - alpha) * metric(A) + alpha * metric(B)], always
against the two FULL endpoint models. Paper (ResNet18 without norm, CIFAR-10): full barrier 0.0 at init, then
1.9-2.3 in train loss; every single-layer barrier within [-0.1, 0.1]. Each repetition (pair r of train_pairs) writes
its own table, every barrier with its standard error over the evaluation images (`se`). "train" = a fixed subset of
the images the pair was trained on.

Claims (`CLAIMS`, docs/claims.md): the paper's statements are about every layer of a pair, so each pair is one unit
that satisfies, violates or cannot tell the statement (`Band`: every single-layer cell inside the band beyond its
standard error; some cell outside it beyond a Bonferroni interval over the pair's cells), and the report counts the
pairs with an exact binomial interval. The bands are the paper's: +-0.1 (Fig. 1's colour scale) and 0.1 / 2.3 of the
full barrier; the artifact's former 25 % stays as a sensitivity row. `noise_floor` pairs model A with itself on two
disjoint halves of the evaluation images: the size of pure evaluation noise, a check of the standard errors.

The rows of one checkpoint come from the barrier engine, evaluation.checkpoint_barriers (shared with the federated
and language-model stages; its docstring says why it is fast).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from llmc_utils.core import plotting
from llmc_utils.core.claims import Claim, Condition, Null, Premise, SanityCheck, band_unit
from llmc_utils.core.config import Alpha, NonNegativeInt, PositiveInt, Section
from llmc_utils.core.evaluation import FULL, Evaluator, LayerEvaluator, checkpoint_barriers
from llmc_utils.core.io import read_repetition_tables
from llmc_utils.core.layers import layer_geometry, logical_layers
from llmc_utils.stages.spec import EVALUATION, RUNTIME, Figure, StageSpec


class LayerwiseBarriersConfig(Section):
    train_subset: NonNegativeInt = 500  # evaluation images from the training set (0 = all)
    test_subset: NonNegativeInt = 300  # evaluation images from the test set (0 = all)
    subset_seed: NonNegativeInt = 1
    alphas: list[Alpha] = Field(default_factory=lambda: [0.25, 0.5, 0.75], min_length=1)  # grid for max-over-alpha
    heatmap_alpha: Alpha = 0.5  # the paper's figures: the midpoint
    # checkpoints that get the whole alpha grid; the others get heatmap_alpha only (the figures and the claims read
    # heatmap_alpha at every checkpoint; the grid is reported beside them): last = one alpha instead of the whole grid
    # at every earlier checkpoint
    grid_epochs: Literal["all", "last"] = "last"
    bases: list[Literal["A", "B"]] = Field(["A", "B"], min_length=1)
    eval_batch_size: PositiveInt = 256  # fastest per image on 2 CPU cores; benchmarks/bench_fig1_grid.py --batch-size
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


def barrier_table(
    evaluator: LayerEvaluator,
    load_pair,
    epochs: Iterable[int],
    cfg: LayerwiseBarriersConfig,
    progress=lambda it, **kw: it,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(barriers, geometry) over checkpoints; load_pair(epoch) -> (state_a, state_b)."""
    rows, geometry = [], []
    epochs = list(epochs)
    for epoch in progress(epochs, desc="checkpoints"):
        state_a, state_b = load_pair(epoch)
        layers = logical_layers(state_a, cfg.layer_groups)
        grid = cfg.grid_epochs == "all" or epoch == max(epochs)
        rows += checkpoint_barriers(
            evaluator, epoch, state_a, state_b, layers, cfg.alphas if grid else [cfg.heatmap_alpha], cfg.bases
        )
        geometry += [dict(epoch=epoch, **row) for row in layer_geometry(state_a, state_b, layers)]
    return pd.DataFrame(rows), pd.DataFrame(geometry)


def max_over_alpha(table: pd.DataFrame) -> pd.DataFrame:
    """Largest barrier over the alpha grid per checkpoint, layer set, base, split and metric (with its alpha)."""
    keys = ["epoch", "layer_set", "base", "split", "metric"]
    idx = table.groupby(keys, sort=False)["barrier"].idxmax()
    return table.loc[idx, keys + ["alpha", "barrier"]].rename(columns={"alpha": "argmax_alpha"}).reset_index(drop=True)


def wide(
    table: pd.DataFrame,
    base: str,
    split: str = "train",
    metric: str = "loss",
    alpha: float = 0.5,
    value: str = "barrier",
    rows: str = "layer_set",
) -> pd.DataFrame:
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
    return pd.DataFrame(
        {
            "full": sel[is_full].groupby("epoch").barrier.first(),
            "largest_single": sel[~is_full].groupby("epoch").barrier.apply(lambda b: b.abs().max()),
        }
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
    test_full = table[
        (table.layer_set == FULL)
        & (table.epoch == last)
        & (table.split == "test")
        & (table.metric == "loss")
        & (table.alpha == alpha)
    ]
    errors = table[(table.epoch == last) & (table.split == "test") & (table.metric == "error")].iloc[0]
    return dict(
        last_epoch=last,
        alpha=alpha,
        from_epoch=from_epoch,
        full_barrier_train_loss_last=full_last,
        full_barrier_train_loss_last_se=float(full[full.epoch == last].se.iloc[0]),
        full_barrier_test_loss_last=float(test_full.barrier.iloc[0]),
        max_abs_single_layer_barrier=float(single.barrier.abs().max()),
        max_abs_single_layer_barrier_last=float(single_last.barrier.abs().max()),
        max_single_layer_barrier_over_alpha_grid=float(grid.barrier.max()),
        worst_single_layer=f"{worst.layer_set} into {worst.base} at epoch {int(worst.epoch)}",
        test_error_A_last=float(errors.value_a),
        test_error_B_last=float(errors.value_b),
        **cell_metrics(table, alpha, from_epoch),
    )


def cell_metrics(
    table: pd.DataFrame, alpha: float = 0.5, from_epoch: int = 1, split: str = "train", metric: str = "loss"
) -> dict[str, float]:
    """Every single-layer cell of a barrier table (one pair) at `alpha` from `from_epoch` on, as flat metrics:
    cell/<epoch>/<base>/<layer> = barrier and cell_se/<epoch>/<base>/<layer> = its standard error. What the band
    claims read (`Band`), for the layer-wise, language-model and alignment stages alike."""
    sel = table[
        (table.split == split)
        & (table.metric == metric)
        & (table.alpha == alpha)
        & (table.layer_set != FULL)
        & (table.epoch >= from_epoch)
    ]
    out = {}
    for row in sel.itertuples():
        where = f"{int(row.epoch)}/{row.base}/{row.layer_set}"
        out[f"cell/{where}"], out[f"cell_se/{where}"] = float(row.barrier), float(row.se)
    return out


def cell_keys(m: dict, epoch: int | None = None) -> list[str]:
    """The cell/... keys of one unit's metrics (at `epoch`, or all). A row of a table that holds pairs of several
    architectures (the setup study) has NaN in the cells of the other architectures' layers: those are not its
    cells."""
    keys = [
        k
        for k, v in m.items()
        if k.startswith("cell/") and np.isfinite(v) and (epoch is None or int(k.split("/")[1]) == epoch)
    ]
    if not keys:
        raise KeyError("cell/<epoch>/<base>/<layer>" + ("" if epoch is None else f" at epoch {epoch}"))
    return keys


def cell_se(m: dict, keys: list[str]) -> np.ndarray:
    return np.array([m["cell_se/" + k.removeprefix("cell/")] for k in keys], dtype=float)


@dataclass(frozen=True)
class Band:
    """A band claim's unit test on one pair's cells (`cell_metrics`): every single-layer barrier inside [-h, h]
    (claims.band_unit). h = report.<scale> (absolute) or report.<scale> x m[full] (relative to the full barrier,
    whose standard error is m[full + "_se"]); `epoch` names the metric of the only checkpoint whose cells count (None:
    every cell)."""

    scale: str
    full: str | None = None
    epoch: str | None = None

    def half_width(self, m: dict, cfg) -> tuple[float, float]:
        scale = getattr(cfg, self.scale)
        return (scale, 0.0) if self.full is None else (scale * m[self.full], scale * m[self.full + "_se"])

    def keys(self, m: dict) -> list[str]:
        return cell_keys(m, None if self.epoch is None else int(m[self.epoch]))

    def measure(self, m: dict, cfg) -> float:
        keys = self.keys(m)
        return band_unit([m[k] for k in keys], cell_se(m, keys), *self.half_width(m, cfg), cfg.confidence)

    def null(self) -> Null:
        """The least favourable case of "some single layer is outside the band": in every pair one cell (at random)
        just outside the band, every other cell at 0, each observed with its measured standard error (the full
        barrier of a relative band too)."""

        def draw(rng: np.random.Generator, runs: list[dict], cfg) -> list[dict]:
            out = []
            for m in runs:
                keys, new = self.keys(m), dict(m)
                truth = np.zeros(len(keys))
                truth[rng.integers(len(keys))] = rng.choice([-1.0, 1.0]) * self.half_width(m, cfg)[0] * (1 + 1e-9)
                new.update(zip(keys, truth + rng.normal(0.0, cell_se(m, keys))))
                if self.full is not None:
                    new[self.full] = m[self.full] + rng.normal(0.0, m[self.full + "_se"])
                out.append(new)
            return out

        return Null("in every pair one cell just outside the band, the others at 0, measured standard errors", draw)


def noise_floor(evaluator: Evaluator, state: dict, split: str = "train") -> dict[str, float]:
    """Model `state` paired with itself on two disjoint halves of the evaluation images of `split` (every other
    image; the subset is in random order): the difference of its mean losses (pure evaluation noise, what a barrier
    of a model with itself reads on other images) and that difference's standard error from the per-image losses.
    One evaluation."""
    loss = evaluator.split_metrics(state, split).samples["loss"]
    first, second = loss[0::2], loss[1::2]
    se = (first.var() / first.numel() + second.var() / second.numel()) ** 0.5
    return dict(noise_floor_train_loss=float(first.mean() - second.mean()), noise_floor_se=float(se))


# The paper's Fig. 1 asks whether single layers stay near 0 EVEN WHEN averaging all of them breaks the model; a pair
# whose full barrier is small cannot answer that. So the regime is a premise, fixed before any single-layer number
# was looked at (docs/profiles.md): the claims below are judged only for pairs in it.
FIG1_REGIME = "fig1_regime"
PREMISES = [
    Premise(
        FIG1_REGIME,
        "Fig. 1",
        "The pairs are in the paper's regime: averaging all layers creates a large barrier "
        "while both endpoints fit the images they were trained on",
        (
            Condition(
                "full train-loss barrier at the last checkpoint (nats)",
                "1.9-2.3 (-> ln 10) on CIFAR-10 / ResNet18",
                "layerwise_barriers",
                lambda m, c: m["full_barrier_train_loss_last"],
                ">=",
                "regime_barrier",
                "interval",
            ),
            Condition(
                "train error (%) of A and of B on their own training images, last checkpoint",
                "the models fit CIFAR-10's training set (200 epochs)",
                "layerwise_barriers",
                lambda m, c: [m["own_train_error_A_last"], m["own_train_error_B_last"]],
                "<=",
                "fit_train_error",
                "every",
            ),
        ),
    ),
]

FIG1_BAND = Band("single_layer_tolerance")
FIG1_RELATIVE = Band("single_layer_relative", full="full_barrier_train_loss_last", epoch="last_epoch")
FIG1_RELATIVE_LOOSE = Band("single_layer_relative_loose", full="full_barrier_train_loss_last", epoch="last_epoch")
_RELATIVE = (
    "In most pairs, every single-layer barrier at the last checkpoint stays below 0.1 / 2.3 of the full "
    "barrier, beyond its evaluation error"
)
_CELL = "inside the band beyond z x its standard error (pairs that cannot tell: undecided)"
CLAIMS = [
    Claim(
        "Fig. 1",
        "In most pairs, every single-layer barrier lies inside the paper's band [-0.1, 0.1], beyond its "
        "evaluation error",
        "every single-layer barrier within [-0.1, 0.1]",
        "layerwise_barriers",
        FIG1_BAND.measure,
        ">",
        "majority",
        "fraction of pairs whose every single-layer cell (train loss, alpha 0.5, checkpoints from claim_from_epoch, "
        f"both bases) lies within +-single_layer_tolerance, {_CELL}",
        premise=FIG1_REGIME,
        kind="count",
        null=FIG1_BAND.null(),
    ),
    Claim(
        "Fig. 1",
        _RELATIVE,
        "0.1 against a full barrier of 2.3: under 5 %",
        "layerwise_barriers",
        FIG1_RELATIVE.measure,
        ">",
        "majority",
        "fraction of pairs whose every single-layer cell at the last checkpoint lies within +-single_layer_relative "
        f"x the full barrier, {_CELL}",
        premise=FIG1_REGIME,
        kind="count",
        null=FIG1_RELATIVE.null(),
    ),
    Claim(
        "Fig. 1",
        _RELATIVE.replace("0.1 / 2.3", "25 %"),
        "(sensitivity: a band 6x looser than the paper's)",
        "layerwise_barriers",
        FIG1_RELATIVE_LOOSE.measure,
        ">",
        "majority",
        "fraction of pairs whose every single-layer cell at the last checkpoint lies within "
        f"+-single_layer_relative_loose x the full barrier, {_CELL}",
        premise=FIG1_REGIME,
        kind="count",
        null=FIG1_RELATIVE_LOOSE.null(),
        sensitivity_of=_RELATIVE,
    ),
]

SANITY_CHECKS = [
    SanityCheck(
        "Fig. 1",
        "Evaluation noise: model A paired with itself on two disjoint halves of the evaluation images "
        "differs by no more than its standard error predicts",
        "layerwise_barriers",
        lambda m, c: abs(m["noise_floor_train_loss"]) / m["noise_floor_se"],
        "<=",
        "sanity_z",
        "|mean train loss on one half - on the other| / its standard error (last checkpoint)",
    ),
]


def aggregate(workspace, repetitions) -> pd.DataFrame:
    """Every repetition's barrier table, with a `repetition` column."""
    return read_repetition_tables(workspace, "layerwise_barriers", "barriers.csv", repetitions)


def mean_sd_wide(
    tables: pd.DataFrame, base: str, split: str = "train", metric: str = "loss", alpha: float = 0.5
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Heatmap layout of the mean and the sd across repetitions (sd NaN with a single repetition)."""
    per_repetition = [wide(t, base, split, metric, alpha) for _, t in tables.groupby("repetition", sort=True)]
    stacked = pd.concat(per_repetition, keys=range(len(per_repetition)))
    grouped = stacked.groupby(level=1, sort=False)
    order = per_repetition[0].index
    return grouped.mean().loc[order], grouped.std(ddof=1).loc[order]


# The paper's Fig. 1 full-averaging row (train loss, ResNet18 without normalization on CIFAR-10, alpha 0.5), read off
# the published heatmap: {epoch: barrier} over its 200 epochs. Drawn beside ours on a relative-time axis.
PAPER_FULL_ROW = {
    0: 0.0,
    20: 1.9,
    40: 2.1,
    60: 2.0,
    80: 2.1,
    100: 2.2,
    120: 2.2,
    140: 2.3,
    160: 2.3,
    180: 2.3,
    200: 2.3,
}


def figure(tables: pd.DataFrame, bases, split: str = "train", metric: str = "loss", alpha: float = 0.5):
    """Fig. 1: per base a heatmap (rows "full" then every layer, columns checkpoints) of the mean barrier across
    repetitions, cells "mean ±sd"; beside it the full row of every repetition against the fraction of training done
    (epoch / last epoch), with the paper's published row (PAPER_FULL_ROW) on the same axis for the train loss."""
    means = {base: mean_sd_wide(tables, base, split, metric, alpha) for base in bases}
    n_rows, n_cols = means[bases[0]][0].shape
    fig, axes = plotting.panels(len(bases) + 1, width=0.9 * n_cols + 3, height=0.45 * n_rows + 1.5)
    n = tables.repetition.nunique()
    for ax, base in zip(axes, bases):
        mean, sd = means[base]
        plotting.heatmap(
            ax,
            mean,
            spread=sd if n > 1 else None,
            cbar_label=f"{metric} barrier",
            title=f"{split} {metric} barrier, into {base} (alpha={alpha}; "
            + (f"mean ± sd over {n} pairs)" if n > 1 else "one pair)"),
        )
        ax.set_xlabel("epoch")
        ax.set_ylabel("averaged layers")
    full = tables[
        (tables.layer_set == FULL)
        & (tables.split == split)
        & (tables.metric == metric)
        & (tables.alpha == alpha)
        & (tables.base == bases[0])
    ]
    full = full.assign(pair=full.repetition.astype(str), training_done=full.epoch / full.epoch.max())
    plotting.curves(
        axes[-1],
        full,
        x="training_done",
        y="barrier",
        hue="pair",
        errorbar=None,
        title=f"full-averaging {split} {metric} barrier, per pair",
    )
    if (split, metric) == ("train", "loss"):
        last = max(PAPER_FULL_ROW)
        axes[-1].plot(
            [e / last for e in PAPER_FULL_ROW],
            list(PAPER_FULL_ROW.values()),
            "k--o",
            ms=3,
            lw=1.2,
            label="paper (ResNet18, CIFAR-10)",
        )
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
        plotting.heatmap(
            ax,
            table,
            title=f"per-layer {column} between A and B (mean over pairs)",
            fmt=fmt,
            center=None,
            cmap="viridis",
            cbar_label=column,
        )
    return fig


def aggregate_stage(st, repetitions: list[int]) -> None:
    """Fig. 1 over every pair: the four heatmaps (train/test x loss/error), its table, the layer geometry."""
    from llmc_utils.core.io import save_table

    cfg = st.section("layerwise_barriers")
    tables = aggregate(st.workspace, repetitions)
    for split, metric in (("train", "loss"), ("test", "loss"), ("train", "error"), ("test", "error")):
        stem = "fig1_layerwise_barriers" + ("" if (split, metric) == ("train", "loss") else f"_{split}_{metric}")
        plotting.save(figure(tables, cfg.bases, split, metric, cfg.heatmap_alpha), st.figures_dir / stem)
    mean, sd = mean_sd_wide(tables, cfg.bases[0], "train", "loss", cfg.heatmap_alpha)
    save_table(
        mean.reset_index()
        .melt(id_vars="layer_set", var_name="epoch", value_name="mean_barrier")
        .merge(sd.reset_index().melt(id_vars="layer_set", var_name="epoch", value_name="sd_barrier")),
        st.results_dir / "fig1_train_loss_into_A.csv",
    )
    print(mean.round(2).to_string())
    print("layer sets:", list(mean.index), "checkpoints:", list(mean.columns))
    geometry = read_repetition_tables(st.workspace, "layerwise_barriers", "layer_geometry.csv", repetitions)
    plotting.save(geometry_figure(geometry), st.figures_dir / "fig_layer_geometry")
    return None


SPEC = StageSpec(
    name="layerwise_barriers",
    notebook="02_layerwise_barriers",
    config=LayerwiseBarriersConfig,
    repeats_over="train_pairs",
    reads=(*RUNTIME, *EVALUATION, "train_pairs.train_subset", "train_pairs.subset_seed", "train_pairs.scheme"),
    inputs=("data/images.pt", "models/pair/repetition_{r}"),
    aggregate_figures=(
        Figure(
            "fig1_layerwise_barriers",
            "Fig. 1: train-loss barrier of full averaging (top row) and of averaging one "
            "layer, per checkpoint, into A and into B.",
        ),
        Figure("fig1_layerwise_barriers_test_loss", "Fig. 1, test loss panel."),
        Figure("fig1_layerwise_barriers_train_error", "Fig. 1, train error panel."),
        Figure("fig1_layerwise_barriers_test_error", "Fig. 1, test error panel."),
        Figure("fig_layer_geometry", "Appendix: per-layer distance and cosine between A and B over training."),
    ),
    aggregate=aggregate_stage,
    aggregate_reads=("layerwise_barriers",),
    claims=tuple(CLAIMS),
    sanity_checks=tuple(SANITY_CHECKS),
    premises=tuple(PREMISES),
)
