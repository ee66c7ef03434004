"""Perturbations inside and outside the training subspace (paper Fig. 5): which directions does a trained MLP tolerate?

Two small MLPs start from the same initialisation and train on disjoint halves of one dataset (sklearn
make_classification with 600 points, 16 features, 3 classes, as the authors' notebooks; and a flattened Fashion-MNIST
subset). Snapshots of both runs are real copies: train_model writes a checkpoint every `snapshot_every` epochs and the
snapshots are read back from those files, so no snapshot can alias the live weights.
  * training subspace: orthonormal basis (SVD, relative rank tolerance) of the span of all snapshots of both runs;
  * null space: its orthogonal complement (a Gaussian vector with its component in the span projected out);
  * averaging direction: d = (theta_A - theta_B) / ||theta_A - theta_B||, with its sign named: +d moves A away from
    B, -d moves A toward B (the direction averaging moves A in). The two signs are separate kinds everywhere.
Model A is perturbed to theta_A + sigma * v for a unit vector v of each kind, for the whole network and for each
layer alone (v restricted to that layer's coordinates, the subspace built from the snapshots' restriction to it).
Variant "final_only" builds the subspace from the two final models only: what the reference notebooks compute,
because their snapshots alias the live weights (every stored "snapshot" ends up equal to the final model).

Paper: training-subspace and averaging-direction perturbations raise the test loss far more than null-space ones of the
same size. Null-space directions are, in these dimensions, essentially random directions, to which MLPs are robust.
Claims (CLAIMS): per variant and kind, count claims over the repetitions (docs/claims.md): repetition r counts when in
most (dataset, scope) panels that kind's mean test loss at the largest sigma exceeds the null space's by more than
report.tie_margin; the report gives how many of n do, with an exact binomial interval. Their null flips the sign of
every measured difference to the null space at random (the kind and the null space alike, the sizes kept).
Repetition r offsets every seed of the section (dataset, subsets, init, data orders, draws) by
config.repetition_seed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, model_validator
from torch import nn

from llmc_utils.core import plotting
from llmc_utils.core.claims import Claim, Null, SanityCheck, finite_metrics, nested_metrics
from llmc_utils.core.config import NonNegativeFloat, PositiveFloat, PositiveInt, Section, Seed
from llmc_utils.core.io import read_repetition_tables
from llmc_utils.core.layers import StateDict, add_flat, flat, logical_layers
from llmc_utils.core.models import MLP
from llmc_utils.core.trainer import OptimConfig, check_checkpoints, load_weights, stale_dir_of, train_members
from llmc_utils.stages.spec import EVALUATION, RUNTIME, Figure, StageSpec

Dataset = Literal["synthetic", "fashion_mnist"]
Variant = Literal["snapshots", "final_only"]
STAGE = "subspace_perturbations"
TOWARD_B, AWAY_FROM_B = "averaging -d (A toward B)", "averaging +d (A away from B)"
KINDS = ("training subspace", "null space", TOWARD_B, AWAY_FROM_B)
COMPARED = ("training subspace", TOWARD_B, AWAY_FROM_B)  # each compared with the null space by the claims
VARIANT_LABELS = {"snapshots": "span of all snapshots (copies)", "final_only": "span of the two final models only"}


class SubspacePerturbationsConfig(Section):
    datasets: list[Dataset] = Field(["synthetic", "fashion_mnist"], min_length=1)
    # sklearn.datasets.make_classification, as the reference notebooks
    synthetic_samples: PositiveInt = 600
    synthetic_features: PositiveInt = 16
    synthetic_classes: int = Field(3, ge=2)
    synthetic_informative: PositiveInt = 8
    synthetic_seed: Seed = 0
    synthetic_test_fraction: float = Field(0.3, gt=0.0, lt=1.0)
    fashion_train: PositiveInt = 2000  # split into two disjoint halves of 1000
    fashion_test: PositiveInt = 500
    subset_seed: Seed = 0
    hidden: list[PositiveInt] = Field(default_factory=lambda: [32, 32], min_length=1)
    init_seed: Seed = 0  # both runs start here ...
    data_seed_a: Seed = 1  # ... and see their own half in their own order
    data_seed_b: Seed = 2
    optim: OptimConfig = OptimConfig(epochs=12, batch_size=32, lr=0.05, weight_decay=0.0)
    snapshot_every: PositiveInt = 1  # epochs between snapshots (an epoch is a few steps on these small halves)
    variants: list[Variant] = Field(["snapshots", "final_only"], min_length=1)
    sigmas: list[NonNegativeFloat] = Field(default_factory=lambda: [0.0, 1.0, 2.0, 4.0, 8.0], min_length=2)
    n_draws: PositiveInt = 5  # random unit vectors per random kind (each averaging sign is one fixed vector)
    draw_seed: Seed = 0
    rank_rtol: PositiveFloat = 1e-6  # singular values below rtol * largest do not count toward the span

    @model_validator(mode="after")
    def _check(self):
        if 0.0 not in self.sigmas:
            raise ValueError("sigmas must contain 0.0 (the unperturbed model A)")
        if self.data_seed_a == self.data_seed_b:
            raise ValueError("data_seed_a and data_seed_b must differ")
        if self.synthetic_informative > self.synthetic_features:
            raise ValueError(
                f"synthetic_informative = {self.synthetic_informative} exceeds synthetic_features = "
                f"{self.synthetic_features}"
            )
        if len(set(self.variants)) != len(self.variants) or len(set(self.datasets)) != len(self.datasets):
            raise ValueError("variants and datasets must not repeat")
        return self

    def data_seeds(self) -> dict[str, int]:
        """{"A": data seed, "B": data seed}: each run's order over its own half (both start from init_seed)."""
        return {"A": self.data_seed_a, "B": self.data_seed_b}

    def snapshot_epochs(self) -> list[int]:
        return sorted(set(range(0, self.optim.epochs + 1, self.snapshot_every)) | {self.optim.epochs})


def synthetic_data(cfg: SubspacePerturbationsConfig) -> dict[str, torch.Tensor]:
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=cfg.synthetic_samples,
        n_features=cfg.synthetic_features,
        n_informative=cfg.synthetic_informative,
        n_classes=cfg.synthetic_classes,
        random_state=cfg.synthetic_seed,
    )
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.int64)
    n_test = round(cfg.synthetic_test_fraction * len(y))
    return dict(x_train=x[n_test:], y_train=y[n_test:], x_test=x[:n_test], y_test=y[:n_test])


def fashion_data(cfg: SubspacePerturbationsConfig, images) -> dict[str, torch.Tensor]:
    x, y = images.split("train", cfg.fashion_train, cfg.subset_seed)
    xt, yt = images.split("test", cfg.fashion_test, cfg.subset_seed)
    return dict(x_train=x.flatten(1), y_train=y, x_test=xt.flatten(1), y_test=yt)


# the fields that decide what the MLPs train on (a checkpoint's meta): the data sets and the subset drawn from them
DATA_FIELDS = {
    "synthetic_samples",
    "synthetic_features",
    "synthetic_classes",
    "synthetic_informative",
    "synthetic_seed",
    "synthetic_test_fraction",
    "fashion_train",
    "subset_seed",
}


def train_halves(
    cfg: SubspacePerturbationsConfig,
    tensors: Mapping[str, torch.Tensor],
    n_classes: int,
    run_root: Path,
    processes: int = 1,
) -> tuple[Callable[[], nn.Module], dict[str, list[Path]]]:
    """Train A on one half and B on the other (same init); returns (model factory, {member: snapshot paths}).
    `processes`: see trainer.train_many. Checkpoints of another configuration (meta: the MLP and the DATA_FIELDS)
    are moved to models/stale/."""
    x, y = tensors["x_train"], tensors["y_train"]
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(cfg.subset_seed))
    halves = {"A": order[: len(y) // 2], "B": order[len(y) // 2 :]}
    make = partial(MLP, x.shape[1], list(cfg.hidden), n_classes)
    meta = dict(
        arch="mlp",
        in_features=x.shape[1],
        hidden=list(cfg.hidden),
        n_classes=n_classes,
        n=len(y),
        data=cfg.model_dump(include=DATA_FIELDS),
    )
    members = {
        member: dict(
            x=x[halves[member]],
            y=y[halves[member]],
            data_seed=data_seed,
            run_dir=Path(run_root) / member,
            stale_dir=stale_dir_of(Path(run_root) / member),
            meta=dict(meta, half=member),
            desc=f"MLP {member}",
        )
        for member, data_seed in cfg.data_seeds().items()
    }
    return make, train_members(
        members,
        processes,
        make_model=make,
        cfg=cfg.optim,
        init_seed=cfg.init_seed,
        checkpoint_epochs=cfg.snapshot_epochs(),
    )


def load_snapshots(paths: Sequence[Path]) -> list[dict[str, torch.Tensor]]:
    """Snapshots read back from their checkpoint files: independent copies by construction."""
    return [load_weights(p) for p in paths]


def snapshot_columns(
    snapshots_a: Sequence[StateDict], snapshots_b: Sequence[StateDict], variant: Variant
) -> list[StateDict]:
    """The states whose span is the training subspace: all snapshots, or the two final models only."""
    if variant == "final_only":
        return [snapshots_a[-1], snapshots_b[-1]]
    return [*snapshots_a, *snapshots_b]


def orthonormal_basis(columns: torch.Tensor, rtol: float = 1e-6) -> torch.Tensor:
    """Orthonormal basis (P x r) of the span of the columns of a P x m matrix; r = numerical rank."""
    u, s, _ = torch.linalg.svd(columns.double(), full_matrices=False)
    rank = int((s > rtol * s.max()).sum()) if s.numel() and s.max() > 0 else 0
    return u[:, :rank]


def unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


def subspace_vector(basis: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random unit vector inside the span: basis @ c / ||c||, c ~ N(0, I_r)."""
    return basis @ unit(torch.randn(basis.shape[1], generator=generator, dtype=torch.float64))


def null_space_vector(basis: torch.Tensor, generator: torch.Generator) -> torch.Tensor | None:
    """A random unit vector orthogonal to the span (Gaussian with its span component removed, twice for precision);
    None when the span is the whole space."""
    if basis.shape[1] >= basis.shape[0]:
        return None
    g = torch.randn(basis.shape[0], generator=generator, dtype=torch.float64)
    for _ in range(2):
        g = g - basis @ (basis.T @ g)
    return unit(g)


def stack(columns: Sequence[StateDict], keys: Sequence[str]) -> torch.Tensor:
    """P x m float64 matrix of the states restricted to `keys`."""
    return torch.stack([flat(c, keys).double() for c in columns], dim=1)


def directions(
    columns: Sequence[StateDict],
    final_a: StateDict,
    final_b: StateDict,
    keys: Sequence[str],
    n_draws: int,
    seed: int,
    rtol: float,
) -> tuple[dict[str, list[torch.Tensor]], int]:
    """{kind: unit vectors over `keys`} and the dimension of the training subspace restricted to `keys`."""
    basis = orthonormal_basis(stack(columns, keys), rtol)
    generator = torch.Generator().manual_seed(seed)
    inside = [subspace_vector(basis, generator) for _ in range(n_draws)]
    outside = [null_space_vector(basis, generator) for _ in range(n_draws)]
    d = unit(flat(final_a, keys).double() - flat(final_b, keys).double())  # +d: A away from B
    found = {
        "training subspace": inside,
        "null space": [v for v in outside if v is not None],
        TOWARD_B: [-d],
        AWAY_FROM_B: [d],
    }
    return found, basis.shape[1]


def max_cosine(vectors: Sequence[torch.Tensor], columns: torch.Tensor) -> float:
    """Largest |cos| between any of `vectors` and any column (0 for no vectors): a null-space vector must be
    orthogonal to every snapshot."""
    norms = columns.norm(dim=0).clamp_min(torch.finfo(columns.dtype).tiny)
    return max((float(((v @ columns) / norms).abs().max()) for v in vectors), default=0.0)


def perturbation_curves(
    evaluate: Callable[[StateDict], dict],
    columns: Sequence[StateDict],
    final_a: StateDict,
    final_b: StateDict,
    sigmas: Sequence[float],
    n_draws: int,
    seed: int,
    rtol: float = 1e-6,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Perturb model A (final_a) along each kind of direction, for the whole network ("all") and each layer.

    Returns (curves: scope x kind x draw x sigma x split x metric -> value, spans: scope -> n_params, subspace rank,
    null_max_cosine = largest |cos| between a null-space vector and a column, the orthogonality check).
    """
    layers = logical_layers(final_a)
    scopes = {"all": [k for keys in layers.values() for k in keys], **{n: list(k) for n, k in layers.items()}}
    at_zero = evaluate(final_a)
    rows, spans = [], []
    for s_index, (scope, keys) in enumerate(scopes.items()):
        found, rank = directions(columns, final_a, final_b, keys, n_draws, seed * 1000 + s_index, rtol)
        spans.append(
            dict(
                scope=scope,
                n_params=sum(final_a[k].numel() for k in keys),
                subspace_rank=rank,
                null_max_cosine=max_cosine(found["null space"], stack(columns, keys)),
            )
        )
        for kind, vectors in found.items():
            for draw, v in enumerate(vectors):
                for sigma in sigmas:
                    result = at_zero if sigma == 0.0 else evaluate(add_flat(final_a, keys, sigma * v))
                    rows += [
                        dict(scope=scope, kind=kind, draw=draw, sigma=sigma, split=split, metric=metric, value=value)
                        for split, metrics in result.items()
                        for metric, value in metrics.items()
                    ]
    return pd.DataFrame(rows), pd.DataFrame(spans)


def loss_at(curves: pd.DataFrame, sigma: float, metric: str = "loss") -> pd.DataFrame:
    """Mean and sd over draws of `metric` at `sigma`, per (dataset, variant, scope, kind, split) present."""
    keys = [c for c in ("dataset", "variant", "scope", "split", "kind") if c in curves]
    df = curves[(curves.sigma == sigma) & (curves.metric == metric)]
    return df.groupby(keys).value.agg(["mean", "std"]).reset_index()


def check_snapshots(
    evaluate: Callable[[StateDict], dict],
    snapshots: Mapping[str, Sequence[StateDict]],
    n_classes: int,
    cfg: SubspacePerturbationsConfig,
    dataset: str,
    repetition: int,
) -> None:
    """trainer.check_checkpoints on the test error of every snapshot of both MLPs of one dataset (evaluate(state) ->
    {"test": {"error", ...}}): a degenerate run stops the stage, naming the MLP, its seeds and the epoch."""
    for member, data_seed in cfg.data_seeds().items():
        errors = {
            epoch: evaluate(state)["test"]["error"]
            for epoch, state in zip(cfg.snapshot_epochs(), snapshots[member], strict=True)
        }
        check_checkpoints(
            errors,
            n_classes,
            f"MLP {member} on {dataset}, repetition {repetition} (init seed {cfg.init_seed}, data seed {data_seed})",
        )


# -------------------------------------------------------------------------------------------- per-repetition metrics


def repetition_metrics(
    at_max: pd.DataFrame, spans: pd.DataFrame, endpoints: Mapping[str, Mapping[str, dict]], sigma_max: float
) -> dict[str, float]:
    """The flat metrics of one repetition that the claims read.

    loss/<dataset>/<variant>/<scope>/<kind>: mean test loss over draws at the largest sigma (one "panel" per
    dataset, variant and scope); endpoint_<metric>/<dataset>/<member>: the unperturbed MLPs; subspace_rank/...;
    null_max_cosine: the orthogonality check. No threshold is applied here: the claims apply report.tie_margin.
    """
    m: dict[str, float] = dict(sigma_max=float(sigma_max), null_max_cosine=float(spans.null_max_cosine.max()))
    m.update(nested_metrics("endpoint", endpoints))
    for row in spans.itertuples():
        m[f"subspace_rank/{row.dataset}/{row.variant}/{row.scope}"] = float(row.subspace_rank)
    for row in at_max[at_max.split == "test"].itertuples():
        m[f"loss/{row.dataset}/{row.variant}/{row.scope}/{row.kind}"] = float(row.mean)
    return finite_metrics(m, "subspace")


# ------------------------------------------------------------------------------------------------------- claims ---

NULL_SPACE = "null space"


def panels(m: dict, variant: str) -> list[str]:
    """The loss/<dataset>/<variant>/<scope>/ prefixes of `variant`'s panels that have a null space."""
    found = [
        k[: -len(NULL_SPACE)]
        for k in m
        if k.startswith("loss/") and k.endswith("/" + NULL_SPACE) and k.split("/")[2] == variant
    ]
    if not found:
        raise KeyError(f"loss/<dataset>/{variant}/<scope>/{NULL_SPACE}")
    return found


def most_above_null(variant: str, kind: str) -> Callable[[dict, object], float]:
    """Measure: 1 when in more than report.majority of `variant`'s (dataset, scope) panels `kind`'s test loss at the
    largest sigma exceeds the null space's by more than report.tie_margin, else 0: one repetition, one unit."""

    def measure(m: dict, cfg) -> float:
        found = panels(m, variant)
        return float(sum(m[p + kind] - m[p + NULL_SPACE] > cfg.tie_margin for p in found) / len(found) > cfg.majority)

    return measure


def flip_null(variant: str, kind: str) -> Null:
    """`kind` and the null space alike: each panel's measured loss difference to the null space with its sign
    flipped at random."""

    def draw(rng: np.random.Generator, runs: list[dict], _cfg) -> list[dict]:
        out = []
        for m in runs:
            new = dict(m)
            for p in panels(m, variant):
                new[p + kind] = m[p + NULL_SPACE] + rng.choice((-1.0, 1.0)) * (m[p + kind] - m[p + NULL_SPACE])
            out.append(new)
        return out

    return Null("the direction and the null space alike: each panel's loss difference signed at random", draw)


_CLAIM_TEXT = {
    "training subspace": (
        "Perturbations inside the training subspace hurt more than null-space ones of the same size",
        "training-subspace curves far above the null-space curves",
    ),
    TOWARD_B: (
        "Moving A along the averaging direction toward B (-d, what averaging does) hurts more than null-space "
        "perturbations",
        "averaging-direction curves above the null-space curves",
    ),
    AWAY_FROM_B: (
        "Moving A along the averaging direction away from B (+d) hurts more than null-space perturbations",
        "averaging-direction curves above the null-space curves",
    ),
}
CLAIMS: list[Claim] = [
    Claim(
        "Fig. 5",
        f"{_CLAIM_TEXT[kind][0]}, in most panels of most repetitions [subspace: {VARIANT_LABELS[variant]}]",
        _CLAIM_TEXT[kind][1],
        STAGE,
        most_above_null(variant, kind),
        ">",
        "majority",
        f"fraction of repetitions where in more than `majority` of the (dataset, scope) panels the test loss at the "
        f"largest sigma exceeds the null space's by > tie_margin ({variant})",
        kind="count",
        null=flip_null(variant, kind),
    )
    for variant in ("snapshots", "final_only")
    for kind in COMPARED
]

SANITY_CHECKS: list[SanityCheck] = [
    SanityCheck(
        "Fig. 5",
        "Null-space directions are orthogonal to every snapshot that spans the training subspace",
        STAGE,
        lambda m, c: m["null_max_cosine"],
        "<=",
        "orthogonality_tolerance",
        "max |cos(null-space vector, snapshot)| over datasets, variants, scopes",
    ),
]


# ------------------------------------------------------------------------------------------ aggregation, figure ---


def aggregate_curves(workspace: str | Path, repetitions: Sequence[int]) -> pd.DataFrame:
    """All repetitions' curves (results/subspace_perturbations/repetition_<r>/curves.csv) with a `repetition` column."""
    return read_repetition_tables(workspace, STAGE, "curves.csv", repetitions)


def loss_at_table(curves: pd.DataFrame, sigma: float) -> pd.DataFrame:
    """Per dataset, variant, scope, kind: test loss at `sigma`, mean over draws per repetition, then mean,
    sd and "mean ± sd" over repetitions (curves with a `repetition` column)."""
    df = curves[(curves.sigma == sigma) & (curves.metric == "loss") & (curves.split == "test")]
    keys = ["dataset", "variant", "scope", "kind"]
    per_repetition = df.groupby([*keys, "repetition"], sort=False).value.mean().reset_index()
    out = per_repetition.groupby(keys, sort=False).value.agg(["mean", "std", "count"]).reset_index()
    out = out.rename(columns={"count": "n_repetitions"})
    out["mean ± sd"] = [f"{m:.3f} ± {0.0 if pd.isna(s) else s:.3f}" for m, s in zip(out["mean"], out["std"])]
    return out


def fig5_subspace_perturbations(curves: pd.DataFrame, scopes: Sequence[str] | None = None):
    """Fig. 5: one row per dataset and variant, one column per scope (whole network, then each layer; `scopes` restricts
    them); test loss of model A against sigma per kind of direction (the two signs of the averaging direction apart).
    Line = mean, band = +-1 sd over repetitions (for a single repetition: over the random draws). `curves` has a
    `repetition` column."""
    loss = curves[(curves.metric == "loss") & (curves.split == "test")]
    scopes = [s for s in dict.fromkeys(loss.scope) if scopes is None or s in scopes]  # the order of the table
    rows = list(dict.fromkeys(zip(loss.dataset, loss.variant)))
    n = loss.repetition.nunique()
    loss, band = plotting.repetition_band(loss, ["dataset", "variant", "scope", "kind", "sigma"])
    ncols = len(scopes) if len(scopes) > 1 else 2  # a single scope: the rows wrap into two columns
    fig, axes = plotting.panels(len(rows) * len(scopes), ncols=ncols, width=3.2, height=2.6)
    for r, (name, variant) in enumerate(rows):
        for c, scope in enumerate(scopes):
            ax = axes[r * len(scopes) + c]
            part = loss[(loss.dataset == name) & (loss.variant == variant) & (loss.scope == scope)]
            plotting.curves(
                ax,
                part,
                x="sigma",
                y="value",
                hue="kind",
                hue_order=list(KINDS),
                title=f"{name} · {scope}\nsubspace: {VARIANT_LABELS[variant]}",
                legend=(r == 0 and c == 0),
            )
            ax.title.set_fontsize(7)
            ax.set_ylabel("test loss")
    fig.suptitle(
        "Fig. 5  perturbing model A by sigma x unit vector: training subspace vs null space vs averaging "
        "direction (-d: toward B, +d: away from B)\n" + (band if n > 1 else f"one repetition, {band}"),
        y=1.01,
    )
    fig.tight_layout()
    return fig


def aggregate(st, repetitions: list[int]) -> None:
    """Fig. 5 over every repetition, and the loss at the largest perturbation as a table."""
    from llmc_utils.core.io import save_table

    cfg = st.section("subspace_perturbations")
    curves = aggregate_curves(st.workspace, repetitions)
    save_table(loss_at_table(curves, max(cfg.sigmas)), st.results_dir / "fig5_loss_at_largest_sigma.csv")
    plotting.save(fig5_subspace_perturbations(curves), st.figures_dir / "fig5_subspace_perturbations")
    print("subspace repetitions:", sorted(curves.repetition.unique().tolist()))
    return None


SPEC = StageSpec(
    name="subspace_perturbations",
    notebook="06_subspace_perturbations",
    config=SubspacePerturbationsConfig,
    repeats_over="subspace_perturbations",
    repetitions=(0, 1, 2),
    reads=(*RUNTIME, *EVALUATION),
    inputs=("data/images.pt",),
    persist=("models/subspace_perturbations/repetition_{r}",),
    aggregate_figures=(
        Figure(
            "fig5_subspace_perturbations",
            "Fig. 5: MLP test loss under training-subspace, null-space and averaging-direction perturbations.",
        ),
    ),
    aggregate=aggregate,
    aggregate_reads=("subspace_perturbations",),
    claims=tuple(CLAIMS),
    sanity_checks=tuple(SANITY_CHECKS),
)
