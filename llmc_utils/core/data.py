"""Datasets as compact uint8 tensor files, preloaded whole for fast exact evaluation.

Default profile: real Fashion-MNIST (70k 28x28 grey images, 10 classes), read from `data.root`, else the Debian package
dataset-fashion-mnist (/usr/share/datasets/fashion-mnist), else a torchvision download in $LLMC_DATA_HOME
(default ~/.cache/llmc_data).
Paper profile: CIFAR-10 in torchvision's python format (cifar-10-batches-py), local or downloaded. Those batches are
pickles, and unpickling can call any function a file names: `read_data_pickle` rebuilds only what numpy's own
pickles of arrays need, and a file that asks for anything else is an error naming it (nothing of it runs).
`prepare()` writes one file, data/images.pt, that every later stage reads with `load_prepared()`.
"""

from __future__ import annotations

import gzip
import importlib
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import ValidationInfo, field_validator

from llmc_utils.core import plotting
from llmc_utils.core.config import ExistingDir, Section, checks_environment
from llmc_utils.core.io import load_checkpoint, save_torch

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
# Where downloads go (scripts/setup.sh falls back to it when apt is unavailable); shared by every workspace.
DATA_HOME = Path(os.environ.get("LLMC_DATA_HOME", Path.home() / ".cache" / "llmc_data"))
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")

HOW_TO_GET = {
    "fashion_mnist": (
        "Fashion-MNIST not found. Get it one of these ways:\n"
        "  * Debian/Ubuntu: sudo apt-get update && sudo apt-get install dataset-fashion-mnist\n"
        "    (files land in /usr/share/datasets/fashion-mnist)\n"
        "  * set data.root in params.yaml to a folder holding train-images-idx3-ubyte(.gz),\n"
        "    train-labels-idx1-ubyte(.gz), t10k-images-idx3-ubyte(.gz) and t10k-labels-idx1-ubyte(.gz)\n"
        "  * set data.download: true to let torchvision download it into $LLMC_DATA_HOME (~/.cache/llmc_data)"
    ),
    "cifar10": (
        "CIFAR-10 not found. Get it one of these ways:\n"
        "  * set data.root to a folder containing cifar-10-batches-py/ (the python version of CIFAR-10:\n"
        "    data_batch_1..5, test_batch, batches.meta)\n"
        "  * set data.download: true to let torchvision download it into $LLMC_DATA_HOME (~/.cache/llmc_data)"
    ),
}


class DataConfig(Section):
    dataset: Literal["fashion_mnist", "cifar10"] = "fashion_mnist"
    root: ExistingDir = None  # folder with the raw files; None = Debian copy (Fashion-MNIST) or $LLMC_DATA_HOME
    download: bool = False  # allow torchvision to download when no local copy is found

    @field_validator("root")
    @classmethod
    def _holds_dataset(cls, root: str | None, info: ValidationInfo) -> str | None:
        """A given root must hold the dataset's raw files, checked before any stage runs (not in prepare_data)."""
        if root is None or not checks_environment(info) or "dataset" not in info.data:
            return root
        names, candidates = raw_files(info.data["dataset"], Path(root))
        if _find_files(candidates, names) is None:
            missing = [n for n in names if not any((c / n).is_file() or (c / f"{n}.gz").is_file() for c in candidates)]
            raise ValueError(
                f"{root} does not hold the {info.data['dataset']} files: missing "
                f"{', '.join(missing)} (looked in {', '.join(str(c) for c in candidates)})"
            )
        return root


def subset_indices(total: int, n: int, seed: int) -> torch.Tensor:
    """Indices of a fixed random subset of size n out of `total` (n = 0 or n >= total: all, in order)."""
    if 0 < n < total:
        return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n]
    return torch.arange(total)


class DatasetNotFound(FileNotFoundError):
    pass


class DatasetUnreadable(ValueError):
    """Raw files that exist but are not the dataset: truncated, corrupt, or of another format."""


@dataclass
class ImageData:
    """A whole dataset in memory: uint8 images (N, C, H, W) and int64 labels, plus train-set channel statistics."""

    name: str
    classes: list[str]
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def split(
        self,
        split: Literal["train", "test"],
        n: int = 0,
        seed: int = 0,
        device="cpu",
        within: tuple[int, int] | None = None,
    ):
        """Normalised float32 images and labels of a split; n > 0 takes a fixed random subset of that size.

        within=(train_subset, subset_seed) restricts the train split to the images a model was trained on (the
        subset drawn with that size and seed) before taking n of them: "train" numbers then describe the training
        data itself, as in the paper, not unseen images of the same split.
        """
        x, y = (self.train_x, self.train_y) if split == "train" else (self.test_x, self.test_y)
        if within is not None and split == "train":
            idx = subset_indices(len(y), *within)
            x, y = x[idx], y[idx]
        idx = subset_indices(len(y), n, seed)
        return self.normalize(x[idx]).to(device), y[idx].to(device)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255.0 - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)

    @property
    def shape(self) -> tuple[int, int, int]:
        channels, height, width = self.train_x.shape[1:]
        return channels, height, width


def _find_files(candidates: list[Path], names: tuple[str, ...]) -> Path | None:
    """First folder holding every file in `names`, plain or gzipped."""
    for folder in candidates:
        if all((folder / n).is_file() or (folder / f"{n}.gz").is_file() for n in names):
            return folder
    return None


def read_fashion_mnist(folder: Path) -> dict:
    """Read the four idx files through torchvision's FashionMNIST (it wants them un-gzipped in
    <root>/FashionMNIST/raw)."""
    from torchvision.datasets import FashionMNIST

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "FashionMNIST" / "raw"
        raw.mkdir(parents=True)
        for name in FASHION_MNIST_FILES:
            src = folder / name
            if src.is_file():
                shutil.copyfile(src, raw / name)
            else:
                with gzip.open(folder / f"{name}.gz", "rb") as fin, open(raw / name, "wb") as fout:
                    shutil.copyfileobj(fin, fout)
        train, test = FashionMNIST(tmp, train=True), FashionMNIST(tmp, train=False)
        return dict(
            classes=list(train.classes),
            train_x=train.data.unsqueeze(1),
            train_y=train.targets.long(),
            test_x=test.data.unsqueeze(1),
            test_y=test.targets.long(),
        )


class _Refused(pickle.UnpicklingError):
    """A pickle that asks for more than plain data (_DataUnpickler)."""


def _latin1_bytes(text: str, encoding: str) -> bytes:
    """`_codecs.encode` as pickle protocols 0-2 use it to write bytes (always latin1); no other codec is run."""
    if encoding not in ("latin1", "latin-1"):
        raise _Refused(f"it names _codecs.encode with the codec {encoding!r}")
    return text.encode("latin1")


def _numpy_globals() -> dict[tuple[str, str], object]:
    """The functions and classes numpy's pickles of arrays, dtypes and scalars name, under numpy 1.x's module names
    (numpy.core, which CIFAR-10's own files use) and 2.x's (numpy._core); protocol 5 rebuilds arrays with
    _frombuffer. Each only builds an array, a dtype or a number from the data that follows it."""
    try:  # import_module: the private names below are not in numpy's type hints
        multiarray = importlib.import_module("numpy._core.multiarray")
        numeric = importlib.import_module("numpy._core.numeric")
    except ImportError:  # numpy < 2
        multiarray = importlib.import_module("numpy.core.multiarray")
        numeric = importlib.import_module("numpy.core.numeric")
    found = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): _latin1_bytes}
    for core in ("numpy.core", "numpy._core"):
        found.update(
            {
                (f"{core}.multiarray", "_reconstruct"): multiarray._reconstruct,
                (f"{core}.multiarray", "scalar"): multiarray.scalar,
                (f"{core}.numeric", "_frombuffer"): numeric._frombuffer,
            }
        )
    return found


class _DataUnpickler(pickle.Unpickler):
    """An unpickler of plain data: dicts, lists, tuples, str, bytes, numbers (built by pickle's own opcodes) and numpy
    arrays and dtypes. Unpickling calls every function a file names; any name outside _numpy_globals raises."""

    allowed = _numpy_globals()

    def find_class(self, module: str, name: str):
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise _Refused(f"it names {module}.{name}") from None

    def persistent_load(self, pid):
        raise _Refused("it refers to objects outside the file")


def read_data_pickle(path: Path):
    """The data in a pickle of plain data (see _DataUnpickler; latin1 decodes the strings of Python 2 pickles, as
    CIFAR-10's are); a file that asks for anything else raises DatasetUnreadable naming it."""
    with open(path, "rb") as f:
        try:
            return _DataUnpickler(f, encoding="latin1").load()
        except _Refused as exc:
            raise DatasetUnreadable(
                f"{path} is not a plain data pickle ({exc}; only numpy arrays, dicts, lists, "
                "strings, bytes and numbers are read from a data set's pickles, since "
                "unpickling anything else can run code): nothing of it was run; replace it "
                "with a good copy"
            ) from None


def _text(value):
    """A string of a batch as str: Python 2 wrote str, which latin1 decodes; a copy made by Python 3 may hold bytes."""
    return value.decode("latin1") if isinstance(value, bytes) else value


def read_cifar10(folder: Path) -> dict:
    """Read CIFAR-10's python pickles (the format torchvision.datasets.CIFAR10 downloads) into NCHW uint8 tensors."""

    def load(name):
        return {_text(key): value for key, value in read_data_pickle(folder / name).items()}

    def stack(batches):
        x = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32)
        y = np.concatenate([b["labels"] for b in batches])
        return torch.from_numpy(x.copy()), torch.from_numpy(y).long()

    train_x, train_y = stack([load(f"data_batch_{i}") for i in range(1, 6)])
    test_x, test_y = stack([load("test_batch")])
    classes = [_text(name) for name in load("batches.meta")["label_names"]]
    return dict(classes=classes, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y)


def raw_files(dataset: str, root: Path | None) -> tuple[tuple[str, ...], list[Path]]:
    """(names of the raw files, folders that may hold them) of `dataset` under data.root (None: the defaults)."""
    if dataset == "fashion_mnist":
        return FASHION_MNIST_FILES, [root] if root else [DEBIAN_FASHION_MNIST, DATA_HOME / "FashionMNIST/raw"]
    base = root or DATA_HOME
    return CIFAR10_FILES, [base / "cifar-10-batches-py", base]


def locate(cfg: DataConfig) -> Path:
    """The folder holding the raw files, downloading only if allowed; raises DatasetNotFound with instructions."""
    names, candidates = raw_files(cfg.dataset, Path(cfg.root) if cfg.root else None)
    sub = "FashionMNIST/raw" if cfg.dataset == "fashion_mnist" else "cifar-10-batches-py"
    found = _find_files(candidates, names)
    if found is None and cfg.download:
        download(cfg.dataset)
        found = _find_files([DATA_HOME / sub], names)
    if found is None:
        looked = ", ".join(str(c) for c in candidates)
        raise DatasetNotFound(f"{HOW_TO_GET[cfg.dataset]}\n(looked in: {looked})")
    return found


def download(dataset: str, root: Path = DATA_HOME) -> None:
    """torchvision download into `root` (needs internet)."""
    from torchvision.datasets import CIFAR10, FashionMNIST

    print(f"downloading {dataset} with torchvision into {root} ...")
    (FashionMNIST if dataset == "fashion_mnist" else CIFAR10)(str(root), train=True, download=True)


def read_raw(dataset: str, folder: Path) -> dict:
    """The raw files of `dataset` in `folder` as tensors; files that cannot be read as that dataset raise
    DatasetUnreadable naming the folder, instead of a parser error from deep inside torchvision or pickle."""
    try:
        tensors = read_fashion_mnist(folder) if dataset == "fashion_mnist" else read_cifar10(folder)
    except DatasetUnreadable:
        raise  # already names the file and what is wrong with it
    except Exception as exc:  # gzip, pickle, torchvision and numpy each raise their own types for a bad file
        reason = (str(exc).strip().splitlines() or [""])[0][:200]
        raise DatasetUnreadable(
            f"the {dataset} files in {folder} cannot be read ({type(exc).__name__}: {reason}): "
            f"they are truncated, corrupt or not {dataset}'s; replace them with a good copy (or "
            "point data.root at one) and rerun"
        ) from exc
    for split in ("train", "test"):
        n_x, n_y = len(tensors[f"{split}_x"]), len(tensors[f"{split}_y"])
        if n_x == 0 or n_x != n_y:
            raise DatasetUnreadable(
                f"the {dataset} files in {folder} hold {n_x} {split} images but {n_y} labels: "
                "they do not belong together; replace them with a good copy and rerun"
            )
    return tensors


def prepare(cfg: DataConfig, workspace: Path) -> Path:
    """Materialise data/images.pt from the raw files and return its path."""
    folder = locate(cfg)
    tensors = read_raw(cfg.dataset, folder)
    pixels = tensors["train_x"].float() / 255.0
    mean, std = pixels.mean(dim=(0, 2, 3)), pixels.std(dim=(0, 2, 3))
    out = prepared_path(workspace)
    save_torch(dict(dataset=cfg.dataset, source=str(folder), mean=mean, std=std, **tensors), out)
    return out


def prepared_path(workspace: str | Path) -> Path:
    """The one file every later stage reads, whatever the dataset (its name is stored inside)."""
    return Path(workspace) / "data" / "images.pt"


def load_prepared(path: str | Path) -> ImageData:
    ckpt = load_checkpoint(path, required_keys=("dataset", "classes", "train_x", "train_y", "test_x", "test_y"))
    return ImageData(
        name=ckpt["dataset"],
        classes=ckpt["classes"],
        train_x=ckpt["train_x"],
        train_y=ckpt["train_y"],
        test_x=ckpt["test_x"],
        test_y=ckpt["test_y"],
        mean=ckpt["mean"],
        std=ckpt["std"],
    )


def summary(data: ImageData) -> dict:
    """Rounded facts worth printing (and checking under nbval)."""
    return dict(
        dataset=data.name,
        image_shape=list(data.shape),
        n_train=len(data.train_y),
        n_test=len(data.test_y),
        n_classes=len(data.classes),
        train_label_counts=torch.bincount(data.train_y).tolist(),
        mean=[round(float(m), 4) for m in data.mean],
        std=[round(float(s), 4) for s in data.std],
    )


def samples_figure(data: ImageData, per_class: int = 6):
    """The first `per_class` training images of every class, class name on the first of each row: to see that labels
    and pixels line up."""
    fig, axes = plotting.panels(len(data.classes) * per_class, ncols=per_class * 2, width=0.9, height=0.9)
    for c, name in enumerate(data.classes):
        for j, i in enumerate(torch.nonzero(data.train_y == c)[:per_class, 0]):
            ax = axes[c * per_class + j]
            ax.imshow(data.train_x[i].permute(1, 2, 0).squeeze(-1), cmap="gray")
            ax.set_axis_off()
            if j == 0:
                ax.set_title(name, fontsize=7, loc="left")
    return fig
