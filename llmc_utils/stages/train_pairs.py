"""Train the pair of networks A and B whose layer-wise mode connectivity the later stages measure.

Paper (Adilova et al. 2024, Sec. 3): ResNet18 without normalization on CIFAR-10, same initialization and different data
order, SGD (momentum 0.9, wd 5e-4, batch 64, lr 0.05), 200 epochs, checkpoints every 20; the full barrier then reaches
about ln(10) = 2.3 in train loss. Default profile: the setup study's choice (llmc_utils/pipeline/setup_study.py: the
cheapest setup whose pairs meet the premise of Fig. 1, same initialization first), a plain CNN without normalization on
a Fashion-MNIST subset from different initializations, with the paper's optimizer; the comments of `train_pairs` in
params.yaml and docs/profiles.md say why. Schemes: same_init_different_order (the paper's), disjoint_halves (the
authors' code for Fig. 1: one init, each model on its half of the training subset; "train" numbers are then taken on the
union, and each endpoint's fit on its own half, `endpoint_fit`), different_init.

Repetitions: pair r (the `repetitions.train_pairs` indices) offsets both seeds by 100 r (config.repetition_seed), so
the pairs differ in data order (and in init under the different_init scheme) and nothing else.

Files: models/pair/repetition_<r>/{A,B}/epoch_NNNN.pt (written by llmc_utils.core.trainer.train_model: atomic and
resumable; a DVC `persist` output, so an interrupted `dvc repro` resumes them). Checkpoints of another configuration
found there (params changed since they were written) are moved to models/stale/pair/repetition_<r>/<member>/<time>/,
never mixed in. Each checkpoint's `meta` holds everything needed to rebuild the architecture (`pair_model`), so stages
downstream (layer-wise barriers, cumulative averaging, robustness heatmap) only need the workspace and the repetition
index.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Literal, Protocol, cast

import torch
from pydantic import Field, model_validator

from llmc_utils.core import plotting
from llmc_utils.core.config import NonNegativeInt, PositiveInt, Section, Seed
from llmc_utils.core.data import load_prepared, prepared_path, subset_indices
from llmc_utils.core.evaluation import Evaluator, LayerEvaluator
from llmc_utils.core.io import CheckpointError, load_checkpoint, read_repetition_tables
from llmc_utils.core.models import build_model
from llmc_utils.core.runtime import Stage
from llmc_utils.core.trainer import OptimConfig, check_checkpoints, stale_dir_of, train_members
from llmc_utils.stages.spec import EVALUATION, RUNTIME, TRAINING, Figure, StageSpec

PAIR_DIR = Path("models") / "pair"


def pair_dir(workspace: str | Path, repetition: int) -> Path:
    return Path(workspace) / PAIR_DIR / f"repetition_{repetition}"


Scheme = Literal["same_init_different_order", "disjoint_halves", "different_init"]
SAME_INIT_SCHEMES = ("same_init_different_order", "disjoint_halves")


class TrainPairsConfig(Section):
    arch: Literal["cnn", "rescnn", "resnet18", "vgg11", "cnn_bn", "rescnn_bn"] = "cnn"
    width: PositiveInt = 16  # base channel count (cnn: 16; resnet18: must be 64; vgg11: 64 in the paper)
    depth: PositiveInt = 1  # cnn: stride-1 convs per stage; rescnn: blocks per stage (models.build_model)
    train_subset: NonNegativeInt = 1500  # training images used (fixed random subset); 0 = the whole training set
    subset_seed: NonNegativeInt = 0
    # same_init_different_order: both start from seed_a's init, data order from seed_a / seed_b (the paper's setting);
    # disjoint_halves: seed_a's init for both, A trains on the first half of the training subset and B on the second
    # (the authors' code for Fig. 1: two federated clients that never average); different_init: init and data order
    # from seed_a / seed_b. Default: the setup study's choice (params.yaml, comments of train_pairs)
    scheme: Scheme = "different_init"
    seed_a: Seed = 0
    seed_b: Seed = 1
    optim: OptimConfig = OptimConfig(epochs=30, schedule="step", warmup_epochs=2)
    checkpoint_epochs: list[NonNegativeInt] = Field(
        default_factory=lambda: [0, 1, 2, 5, 10, 15, 20, 25, 30], min_length=2
    )
    # training curves (notebook 01): loss / error of A and B at every checkpoint on fixed subsets
    curve_train_subset: NonNegativeInt = 500
    curve_test_subset: NonNegativeInt = 500
    eval_batch_size: PositiveInt = 256  # fastest per image on 2 CPU cores; benchmarks/bench_fig1_grid.py --batch-size
    # stop the stage when a trained model ends at chance level; off only for code-path tests on a few fabricated
    # images, which cannot learn anything in one epoch
    chance_guard: bool = True

    @model_validator(mode="after")
    def _check(self):
        epochs = sorted(set(self.checkpoint_epochs))
        if epochs != list(self.checkpoint_epochs):
            raise ValueError(f"checkpoint_epochs must be strictly increasing, got {self.checkpoint_epochs}")
        if epochs[0] != 0:
            raise ValueError(f"checkpoint_epochs must start with 0 (the initialization), got {self.checkpoint_epochs}")
        if epochs[-1] > self.optim.epochs:
            raise ValueError(
                f"checkpoint_epochs must lie in [0, optim.epochs={self.optim.epochs}], got {self.checkpoint_epochs}"
            )
        if self.seed_a == self.seed_b:
            raise ValueError("seed_a and seed_b must differ (else A and B are the same run)")
        if self.depth != 1 and self.arch in ("resnet18", "vgg11"):
            raise ValueError(
                f"depth={self.depth} applies to cnn and rescnn only; {self.arch} has a fixed depth (use 1)"
            )
        if self.scheme == "disjoint_halves" and self.train_subset == 1:
            raise ValueError("disjoint_halves needs train_subset >= 2 (or 0 = every image): each model trains on half")
        return self

    def member_seeds(self, member: str) -> tuple[int, int]:
        """(init_seed, data_seed) of model A or B (of pair r when this is the section as pair r runs it,
        `for_repetition(r)`)."""
        own = self.seed_a if member == "A" else self.seed_b
        return (self.seed_a if self.scheme in SAME_INIT_SCHEMES else own), own

    def member_images(self, member: str, n: int) -> slice:
        """Which of the pair's n training images (the subset, in subset order) `member` trains on: all of them, or
        its half under disjoint_halves."""
        if self.scheme != "disjoint_halves":
            return slice(0, n)
        return slice(0, n // 2) if member == "A" else slice(n // 2, n)


def model_spec(cfg: TrainPairsConfig, image_shape: tuple[int, int, int], num_classes: int) -> dict:
    """Everything build_model needs, stored in every checkpoint's meta."""
    return dict(
        arch=cfg.arch,
        in_channels=image_shape[0],
        num_classes=num_classes,
        image_size=image_shape[-1],
        width=cfg.width,
        depth=cfg.depth,
    )


def make_model(spec: dict, device: torch.device | str = "cpu") -> torch.nn.Module:
    return build_model(
        spec["arch"],
        spec["in_channels"],
        spec["num_classes"],
        spec["image_size"],
        width=spec["width"],
        depth=spec.get("depth", 1),
    ).to(device)


def train_pair(
    cfg: TrainPairsConfig,
    images,
    workspace: str | Path,
    repetition: int = 0,
    device: torch.device | str = "cpu",
    processes: int = 1,
    run_root: Path | None = None,
) -> dict[str, list[Path]]:
    """Train A and B of pair `repetition` (resuming whatever is already on disk) into run_root/{A,B} (default: the
    pair's folder models/pair/repetition_<r>); returns {"A": paths, "B": paths}. `processes` (runtime.train_processes):
    see trainer.train_many."""
    run_root = Path(run_root) if run_root is not None else pair_dir(workspace, repetition)
    x, y = images.split("train", cfg.train_subset, cfg.subset_seed, device=device)
    spec = model_spec(cfg, images.shape, len(images.classes))
    members = {}
    for member in ("A", "B"):
        init_seed, data_seed = cfg.member_seeds(member)
        own = cfg.member_images(member, len(y))
        members[member] = dict(
            init_seed=init_seed,
            data_seed=data_seed,
            x=x[own],
            y=y[own],
            run_dir=run_root / member,
            meta=dict(
                spec=spec,
                scheme=cfg.scheme,
                member=member,
                train_subset=cfg.train_subset,
                subset_seed=cfg.subset_seed,
                dataset=images.name,
            ),
            stale_dir=stale_dir_of(run_root / member),
            desc=f"train {member} of pair {repetition}",
        )
    return train_members(
        members,
        processes,
        make_model=partial(make_model, spec, device),
        cfg=cfg.optim,
        checkpoint_epochs=cfg.checkpoint_epochs,
    )


def pair_checkpoints(workspace: str | Path, repetition: int = 0) -> dict[int, tuple[Path, Path]]:
    """{epoch: (path of A, path of B)} for every epoch both members have a checkpoint of, in epoch order."""
    root = pair_dir(workspace, repetition)
    found = {m: {int(p.stem.split("_")[1]): p for p in (root / m).glob("epoch_*.pt")} for m in ("A", "B")}
    common = sorted(set(found["A"]) & set(found["B"]))
    if not common:
        raise CheckpointError(
            f"no pair checkpoints under {root}; run the train_pairs stage first (dvc repro train_pairs@{repetition})"
        )
    return {e: (found["A"][e], found["B"][e]) for e in common}


def pair_spec(workspace: str | Path, repetition: int = 0) -> tuple[dict, Path]:
    """(architecture spec, checkpoint it was read from): the spec of the pair's first checkpoint of A."""
    path_a, _ = next(iter(pair_checkpoints(workspace, repetition).values()))
    return load_checkpoint(path_a, ("meta",))["meta"]["spec"], path_a


def pair_model(workspace: str | Path, repetition: int = 0) -> torch.nn.Module:
    """A fresh module of the pair's architecture, rebuilt from the spec stored in the checkpoints."""
    return make_model(pair_spec(workspace, repetition)[0])


def _describe_spec(spec) -> str:
    return f"{spec.get('arch')} of width {spec.get('width')}" if isinstance(spec, dict) else repr(spec)


def load_member(path: Path, spec: dict, reference: Path) -> dict:
    """The weights of one pair checkpoint, which must be of architecture `spec` (read from `reference`): a folder
    that mixes checkpoints of two architectures or widths stops here, not in a shape error deep in the engine."""
    ckpt = load_checkpoint(path, ("model", "epoch", "meta"))
    stored = ckpt["meta"].get("spec") if isinstance(ckpt["meta"], dict) else None
    if stored != spec:
        raise CheckpointError(
            f"checkpoint {path} is a {_describe_spec(stored)} model, but the pair is a "
            f"{_describe_spec(spec)} ({reference}): the folder mixes runs of different "
            f"configurations; move {path.parent} away and rerun the train_pairs stage"
        )
    return ckpt["model"]


def load_pair(workspace: str | Path, epoch: int, repetition: int = 0) -> tuple[dict, dict]:
    """State dicts (A, B) of pair `repetition` at `epoch`, both of the pair's architecture (load_member)."""
    checkpoints = pair_checkpoints(workspace, repetition)
    if epoch not in checkpoints:
        raise CheckpointError(f"no pair checkpoint at epoch {epoch}; available: {sorted(checkpoints)}")
    spec, reference = pair_spec(workspace, repetition)
    path_a, path_b = checkpoints[epoch]
    return load_member(path_a, spec, reference), load_member(path_b, spec, reference)


def pair_splits(
    images, pair_cfg: TrainPairsConfig, n_train: int, n_test: int, seed: int, device: torch.device | str = "cpu"
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Evaluation splits of a pair: "train" = n_train of the images the pair trained on (pair_cfg.train_subset,
    pair_cfg.subset_seed; under disjoint_halves the union of both halves, as the authors evaluate their Fig. 1
    pair), "test" = n_test held-out test images; both subsets drawn with `seed` (n = 0: all)."""
    trained_on = (pair_cfg.train_subset, pair_cfg.subset_seed)
    return {
        "train": images.split("train", n_train, seed, device=device, within=trained_on),
        "test": images.split("test", n_test, seed, device=device),
    }


def own_train_splits(
    images, pair_cfg: TrainPairsConfig, n: int, seed: int, device: torch.device | str = "cpu"
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{member: n of the images that member itself trained on} (drawn with `seed`; n = 0: all): how well each endpoint
    fits its own training data, the first half of the paper's regime (docs/profiles.md). Under disjoint_halves a
    member's half, else the whole training subset."""
    x, y = images.split("train", pair_cfg.train_subset, pair_cfg.subset_seed, device=device)
    out = {}
    for member in ("A", "B"):
        own = pair_cfg.member_images(member, len(y))
        idx = subset_indices(len(y[own]), n, seed).to(y.device)
        out[member] = x[own][idx], y[own][idx]
    return out


def endpoint_fit(
    images,
    pair_cfg: TrainPairsConfig,
    model: torch.nn.Module,
    state_a: dict,
    state_b: dict,
    n: int,
    seed: int,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    suffix: str = "",
) -> dict:
    """own_train_{loss,error}_{A,B}{suffix}: each endpoint on n of the images it was trained on (own_train_splits),
    the "fit" half of the paper's regime (barriers.PREMISES)."""
    splits = own_train_splits(images, pair_cfg, n, seed, device)
    out = {}
    for member, state in (("A", state_a), ("B", state_b)):
        metrics = Evaluator(model, {"own": splits[member]}, batch_size, device)(state)["own"]
        out.update({f"own_train_{name}_{member}{suffix}": value for name, value in metrics.items()})
    return out


class PairEvaluationConfig(Protocol):
    """The keys stage_endpoint_fit and pair_inputs read from the section of the stage that calls them (the pair
    evaluating stages: layerwise_barriers, cumulative_averaging)."""

    epochs: list[int] | None
    train_subset: int
    test_subset: int
    subset_seed: int
    eval_batch_size: int


def stage_endpoint_fit(st: Stage, repetition: int, epoch: int) -> dict:
    """endpoint_fit of pair `repetition` at `epoch` with the stage's evaluation sizes (train_subset, subset_seed,
    eval_batch_size), keys suffixed "_last": what the layer-wise stage adds to its headline metrics."""
    cfg = cast(PairEvaluationConfig, st.config)
    images = load_prepared(prepared_path(st.workspace))
    state_a, state_b = load_pair(st.workspace, epoch, repetition)
    return endpoint_fit(
        images,
        st.params["train_pairs"],
        pair_model(st.workspace, repetition).to(st.device),
        state_a,
        state_b,
        cfg.train_subset,
        cfg.subset_seed,
        cfg.eval_batch_size,
        st.device,
        "_last",
    )


def pair_inputs(
    st: Stage, repetition: int, splits: Sequence[str] = ("train", "test"), cache_activations: bool = True
) -> tuple[list[int], LayerEvaluator, Callable[[int], tuple[dict, dict]]]:
    """What a stage that evaluates pair r needs, from its config (epochs, train_subset, test_subset, subset_seed,
    eval_batch_size): the checkpoint epochs to evaluate (`epochs`, or every checkpoint of the pair), a LayerEvaluator
    of the pair's architecture on `splits` (pair_splits), and load(epoch) -> (state of A, state of B)."""
    cfg = cast(PairEvaluationConfig, st.config)
    checkpoints = pair_checkpoints(st.workspace, repetition)
    epochs = cfg.epochs if cfg.epochs is not None else list(checkpoints)
    missing = sorted(set(epochs) - set(checkpoints))
    if missing:
        raise CheckpointError(
            f"{st.name}.epochs {missing} have no checkpoint of pair {repetition} (available: "
            f"{list(checkpoints)}); list only those, or add them to train_pairs.checkpoint_epochs"
        )
    images = load_prepared(prepared_path(st.workspace))
    found = pair_splits(images, st.params["train_pairs"], cfg.train_subset, cfg.test_subset, cfg.subset_seed, st.device)
    evaluator = LayerEvaluator(
        pair_model(st.workspace, repetition),
        {s: found[s] for s in splits},
        cfg.eval_batch_size,
        st.device,
        cache_activations,
    )
    return epochs, evaluator, partial(load_pair, st.workspace, repetition=repetition)


def training_curves(workspace: str | Path, evaluator, repetition: int = 0) -> list[dict]:
    """Tidy rows (epoch, member, split, metric, value) of A and B at every checkpoint."""
    rows = []
    spec, reference = pair_spec(workspace, repetition)
    for epoch, paths in pair_checkpoints(workspace, repetition).items():
        for member, path in zip(("A", "B"), paths):
            for split, metrics in evaluator(load_member(path, spec, reference)).items():
                rows += [dict(epoch=epoch, member=member, split=split, metric=k, value=v) for k, v in metrics.items()]
    return rows


def headline_metrics(curves, cfg: TrainPairsConfig) -> dict:
    """Final loss and error of A and B on the training subset and the test subset (from training_curves rows)."""
    last = curves[curves.epoch == curves.epoch.max()]
    out = {f"final_{r.split}_{r.metric}_{r.member}": float(r.value) for r in last.itertuples()}
    return dict(out, arch=cfg.arch, width=cfg.width, scheme=cfg.scheme, epochs=cfg.optim.epochs)


def check_curves(curves, cfg: TrainPairsConfig, n_classes: int, repetition: int) -> None:
    """trainer.check_checkpoints on the test error of A and B at every checkpoint of the curves (unless
    cfg.chance_guard is off): a degenerate checkpoint stops the stage, naming the model, its seeds and the epoch."""
    errors = member_curve(curves, "test", "error").set_index("epoch")
    for member in ("A", "B") if cfg.chance_guard else ():
        check_checkpoints(
            errors[member].to_dict(),
            n_classes,
            f"model {member} of pair {repetition} ({cfg.arch}, seeds {cfg.member_seeds(member)})",
        )


def member_curve(curves, split: str = "test", metric: str = "error"):
    """One metric of A and B per checkpoint (columns epoch, A, B): the small per-pair series behind DVC's data plot."""
    sel = curves[(curves.split == split) & (curves.metric == metric)]
    return sel.pivot(index="epoch", columns="member", values="value").reset_index().rename_axis(columns=None)


def curves_figure(curves, label: str):
    """Training curves of A and B (training_curves rows; with a `repetition` column: mean and sd band over pairs): train
    and test loss, then train and test error, against epoch; `label` names the pair(s) in every title."""
    fig, axes = plotting.panels(4, ncols=4, width=3.6, height=3.0)
    for ax, (split, metric) in zip(axes, [(s, m) for m in ("loss", "error") for s in ("train", "test")]):
        plotting.curves(
            ax,
            curves[(curves.split == split) & (curves.metric == metric)],
            x="epoch",
            y="value",
            hue="member",
            title=f"{label}: {split} {metric}",
        )
        ax.set_ylabel("cross-entropy" if metric == "loss" else "error (%)")
    fig.tight_layout()
    return fig


def aggregate(st: Stage, repetitions: list[int]) -> None:
    """Training curves of every pair (figure only)."""
    curves = read_repetition_tables(st.workspace, "train_pairs", "training_curves.csv", repetitions)
    plotting.save(curves_figure(curves, f"{len(repetitions)} pairs"), st.figures_dir / "fig_pair_training_curves")
    print("pairs:", sorted(curves.repetition.unique().tolist()), "rows:", len(curves))
    return None


SPEC = StageSpec(
    name="train_pairs",
    notebook="01_train_pairs",
    config=TrainPairsConfig,
    repeats_over="train_pairs",
    repetitions=(0, 1, 2, 3, 4, 5),  # Fig. 1/2 pairs (>= 6: count claims can decide)
    reads=(*RUNTIME, *TRAINING, *EVALUATION),
    inputs=("data/images.pt",),
    persist=("models/pair/repetition_{r}",),
    aggregate_figures=(
        Figure("fig_pair_training_curves", "Training pair: loss and error of A and B at every checkpoint."),
    ),
    aggregate=aggregate,
)
