"""Train the pair of networks A and B whose layer-wise mode connectivity the later stages measure.

Paper (Adilova et al. 2024, Sec. 3): ResNet18 without normalization on CIFAR-10, same initialization and different
data order, SGD (momentum 0.9, wd 5e-4, batch 64, lr 0.05), 200 epochs, checkpoints every 20; the full barrier then
reaches about ln(10) = 2.3 in train loss. Default profile: a 9-layer CNN on a Fashion-MNIST subset (see params.yaml for
the scheme chosen and why): 30 epochs, both models at about 15 % test error.

Repetitions: pair r (the `repetitions.train_pairs` indices) offsets both seeds by 100 r (config.repetition_seed), so
the pairs differ in data order (and in init under the different_init scheme) and nothing else.

Files: models/pair/seed_<r>/{A,B}/epoch_NNNN.pt (written by llmc_utils.trainer.train_model: atomic and resumable).
Each checkpoint's `meta` holds everything needed to rebuild the architecture (`pair_model`), so stages downstream
(layer-wise barriers, cumulative averaging, robustness heatmap) only need the workspace and the repetition index.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, model_validator

from llmc_utils.config import NonNegativeInt, PositiveInt, Section, repetition_seed
from llmc_utils.io import CheckpointError, load_checkpoint
from llmc_utils.models import build_model
from llmc_utils.trainer import OptimConfig, load_weights, train_model

PAIR_DIR = Path("models") / "pair"


def pair_dir(workspace: str | Path, repetition: int) -> Path:
    return Path(workspace) / PAIR_DIR / f"seed_{repetition}"


class TrainPairsConfig(Section):
    arch: Literal["cnn", "rescnn", "resnet18", "vgg11"] = "cnn"
    width: PositiveInt = 16  # base channel count (cnn: 16; resnet18: must be 64; vgg11: 64 in the paper)
    train_subset: NonNegativeInt = 10000  # training images used (fixed random subset); 0 = the whole training set
    subset_seed: NonNegativeInt = 0
    # same_init_different_order: both start from seed_a's init, data order from seed_a / seed_b (the paper's setting);
    # different_init: init and data order from seed_a / seed_b
    scheme: Literal["same_init_different_order", "different_init"] = "same_init_different_order"
    seed_a: NonNegativeInt = 0
    seed_b: NonNegativeInt = 1
    optim: OptimConfig = OptimConfig()
    checkpoint_epochs: list[NonNegativeInt] = Field(default_factory=lambda: [0, 1, 2, 5, 10], min_length=2)
    # training curves (notebook 01): loss / error of A and B at every checkpoint on fixed subsets
    curve_train_subset: NonNegativeInt = 2000
    curve_test_subset: NonNegativeInt = 2000
    eval_batch_size: PositiveInt = 256  # fastest per image on 2 CPU cores (2048: 2.4x slower)
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
            raise ValueError(f"checkpoint_epochs must lie in [0, optim.epochs={self.optim.epochs}], "
                             f"got {self.checkpoint_epochs}")
        if self.seed_a == self.seed_b:
            raise ValueError("seed_a and seed_b must differ (else A and B are the same run)")
        return self

    def seeds(self, member: str, repetition: int = 0) -> tuple[int, int]:
        """(init_seed, data_seed) of model A or B in pair `repetition`."""
        own = repetition_seed(self.seed_a if member == "A" else self.seed_b, repetition)
        init = repetition_seed(self.seed_a, repetition) if self.scheme == "same_init_different_order" else own
        return init, own


def model_spec(cfg: TrainPairsConfig, image_shape: tuple[int, int, int], num_classes: int) -> dict:
    """Everything build_model needs, stored in every checkpoint's meta."""
    return dict(arch=cfg.arch, in_channels=image_shape[0], num_classes=num_classes, image_size=image_shape[-1],
                width=cfg.width)


def make_model(spec: dict) -> torch.nn.Module:
    return build_model(spec["arch"], spec["in_channels"], spec["num_classes"], spec["image_size"], width=spec["width"])


def train_pair(cfg: TrainPairsConfig, images, workspace: str | Path, repetition: int = 0,
               device: torch.device | str = "cpu") -> dict[str, list[Path]]:
    """Train A and B of pair `repetition` (resuming whatever is already on disk); returns {"A": paths, "B": paths}."""
    x, y = images.split("train", cfg.train_subset, cfg.subset_seed, device=device)
    spec = model_spec(cfg, images.shape, len(images.classes))
    runs = {}
    for member in ("A", "B"):
        init_seed, data_seed = cfg.seeds(member, repetition)
        meta = dict(spec=spec, scheme=cfg.scheme, member=member, train_subset=cfg.train_subset,
                    subset_seed=cfg.subset_seed, dataset=images.name)
        runs[member] = train_model(lambda: make_model(spec).to(device), x, y, cfg.optim, init_seed=init_seed,
                                   data_seed=data_seed, checkpoint_epochs=cfg.checkpoint_epochs,
                                   run_dir=pair_dir(workspace, repetition) / member, meta=meta,
                                   desc=f"train {member} of pair {repetition}")
    return runs


def pair_checkpoints(workspace: str | Path, repetition: int = 0) -> dict[int, tuple[Path, Path]]:
    """{epoch: (path of A, path of B)} for every epoch both members have a checkpoint of, in epoch order."""
    root = pair_dir(workspace, repetition)
    found = {m: {int(p.stem.split("_")[1]): p for p in (root / m).glob("epoch_*.pt")} for m in ("A", "B")}
    common = sorted(set(found["A"]) & set(found["B"]))
    if not common:
        raise CheckpointError(f"no pair checkpoints under {root}; run the train_pairs stage first "
                              f"(dvc repro train_pairs@{repetition})")
    return {e: (found["A"][e], found["B"][e]) for e in common}


def pair_model(workspace: str | Path, repetition: int = 0) -> torch.nn.Module:
    """A fresh module of the pair's architecture, rebuilt from the spec stored in the checkpoints."""
    path_a, _ = next(iter(pair_checkpoints(workspace, repetition).values()))
    return make_model(load_checkpoint(path_a, ("meta",))["meta"]["spec"])


def load_pair(workspace: str | Path, epoch: int, repetition: int = 0) -> tuple[dict, dict]:
    """State dicts (A, B) of pair `repetition` at `epoch`."""
    checkpoints = pair_checkpoints(workspace, repetition)
    if epoch not in checkpoints:
        raise CheckpointError(f"no pair checkpoint at epoch {epoch}; available: {sorted(checkpoints)}")
    path_a, path_b = checkpoints[epoch]
    return load_weights(path_a), load_weights(path_b)


def training_curves(workspace: str | Path, evaluator, repetition: int = 0) -> list[dict]:
    """Tidy rows (epoch, member, split, metric, value) of A and B at every checkpoint."""
    rows = []
    for epoch, paths in pair_checkpoints(workspace, repetition).items():
        for member, path in zip(("A", "B"), paths):
            for split, metrics in evaluator(load_weights(path)).items():
                rows += [dict(epoch=epoch, member=member, split=split, metric=k, value=v) for k, v in metrics.items()]
    return rows


def headline_metrics(curves, cfg: TrainPairsConfig) -> dict:
    """Final loss and error of A and B on the training subset and the test subset (from training_curves rows)."""
    last = curves[curves.epoch == curves.epoch.max()]
    out = {f"final_{r.split}_{r.metric}_{r.member}": float(r.value) for r in last.itertuples()}
    return dict(out, arch=cfg.arch, width=cfg.width, scheme=cfg.scheme, epochs=cfg.optim.epochs)
