"""Evaluation data of `llmc barriers` (llmc_utils.pairtool.models): the `--data` specs, read into tensors in memory.

Why a module of its own: the pipeline's stages read one prepared file (data.load_prepared), while a user's pair comes
with its own data set. Each spec gives the evaluation splits as tensors, so that the barrier engine
(evaluation.LayerEvaluator) evaluates them exactly, and a way to draw training batches for a BatchNorm reset.

Specs:
* `fashion_mnist[:DIR]`, `cifar10[:DIR]`: the pipeline's readers (data.locate, data.read_raw; DIR = the folder with
  the raw files, else the default places), normalised per channel with the training split's mean and std, as the
  pipeline's own pairs are trained;
* `imagefolder:DIR`: torchvision's ImageFolder (one sub-folder per class), every image resized to a square of
  `image_size` pixels and scaled to [0, 1] (ToTensor, no normalisation), RGB unless `grayscale`. With `DIR/train` and
  `DIR/test` (or `DIR/val`) the two are the splits "train" and "test"; otherwise the whole folder is one split, "all";
* `text:FILE`: byte-level tokens (token id = UTF-8 byte, vocabulary 256); the first 90 % of the file is "train", the
  last 10 % "test"; each split is cut into non-overlapping windows of context + 1 bytes, inputs ids[:-1] and targets
  ids[1:] (so a model reads (N, context) ids and returns (N, context, >= 256) logits).

Only what is evaluated is materialised: `n_eval` samples (images or windows) per split, a seeded subset
(data.subset_indices; 0 = all), and the reset batches when asked for.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

import torch

import llmc_utils  # noqa: F401  (the torchvision compatibility step comes before torchvision)
from llmc_utils.core import data as pipeline_data
from llmc_utils.core.normalization import reset_batches

SPECS = "fashion_mnist[:DIR], cifar10[:DIR], imagefolder:DIR or text:FILE"
BuiltinDataset = Literal["fashion_mnist", "cifar10"]  # the pipeline's data sets (data.DataConfig.dataset)
TEXT_VOCAB = 256
TEXT_TEST_FRACTION = 0.1


class DataError(ValueError):
    """A `--data` spec that cannot be read; the message names the spec and what is wrong."""


@dataclass
class EvalData:
    """What the analysis needs of a data set: evaluation splits, sizes, and reset batches on demand."""

    spec: str
    kind: str  # "image" or "text"
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]]  # {split: (inputs, labels or next-token targets)}
    num_classes: int  # classes, or the vocabulary (256) for text
    in_chans: int | None  # image channels; None for text
    available: dict[str, int]  # samples (images, windows) per split before the n_eval subset
    draw: Callable[[int, int, int], list[torch.Tensor]] = field(repr=False)  # (n_batches, batch_size, seed) -> inputs
    note: str = ""  # one line for the report: source and preprocessing

    def describe(self) -> str:
        sizes = ", ".join(f"{s} {len(y)} of {self.available[s]}" for s, (_, y) in self.splits.items())
        return f"{self.spec} ({sizes}; {self.note})"


def load(
    spec: str, n_eval: int = 1000, seed: int = 0, image_size: int = 32, grayscale: bool = False, context: int = 64
) -> EvalData:
    """The data named by `spec` (see the module docstring); raises DataError, data.DatasetNotFound or
    data.DatasetUnreadable with a message that says what to do."""
    kind, sep, arg = spec.partition(":")
    if kind in ("fashion_mnist", "cifar10"):
        return _builtin(spec, cast(BuiltinDataset, kind), arg or None, n_eval, seed)
    if kind == "imagefolder" and arg:
        return _imagefolder(spec, Path(arg), n_eval, seed, image_size, grayscale)
    if kind == "text" and arg:
        return _text(spec, Path(arg), n_eval, seed, context)
    what = f"{kind}: needs a path after the colon" if kind in ("imagefolder", "text") else "unknown kind"
    raise DataError(f"--data {spec!r}: {what}; expected {SPECS}")


def _channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (unbiased) std of uint8 images (N, C, H, W) scaled to [0, 1], in chunks (no float copy
    of the whole set)."""
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for chunk in x.split(4096):
        c = chunk.double() / 255.0
        total += c.sum(dim=(0, 2, 3))
        squares += (c * c).sum(dim=(0, 2, 3))
    n = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / n
    return mean.float(), ((squares - n * mean**2) / (n - 1)).clamp_min(0).sqrt().float()


@functools.lru_cache(maxsize=2)
def _read_builtin(dataset: str, folder: Path) -> pipeline_data.ImageData:
    """The whole data set with its channel statistics, kept for the next call: analysing several pairs on one data
    set in a Python session reads and decompresses the files once (tensors are shared, never modified)."""
    raw = pipeline_data.read_raw(dataset, folder)
    mean, std = _channel_stats(raw["train_x"])
    return pipeline_data.ImageData(
        name=dataset,
        classes=raw["classes"],
        mean=mean,
        std=std,
        **{k: raw[k] for k in ("train_x", "train_y", "test_x", "test_y")},
    )


def _builtin(spec: str, dataset: BuiltinDataset, root: str | None, n_eval: int, seed: int) -> EvalData:
    if root is not None and not Path(root).is_dir():
        raise DataError(f"--data {spec!r}: there is no folder {root}")
    try:
        folder = pipeline_data.locate(pipeline_data.DataConfig(dataset=dataset, root=root))
    except pipeline_data.DatasetNotFound as exc:
        raise pipeline_data.DatasetNotFound(f"{exc}\n  * with llmc: --data {dataset}:DIR names the folder") from None
    images = _read_builtin(dataset, Path(folder).resolve())
    splits = {s: images.split(s, n_eval, seed) for s in ("train", "test")}

    def draw(n_batches: int, batch_size: int, draw_seed: int) -> list[torch.Tensor]:
        return [images.normalize(b) for b in reset_batches(images.train_x, n_batches, batch_size, draw_seed)]

    return EvalData(
        spec,
        "image",
        splits,
        len(images.classes),
        images.shape[0],
        {"train": len(images.train_y), "test": len(images.test_y)},
        draw,
        f"{folder}, normalised with the training split's channel mean and std",
    )


def _imagefolder(spec: str, root: Path, n_eval: int, seed: int, image_size: int, grayscale: bool) -> EvalData:
    from torchvision import datasets, transforms

    if not root.is_dir():
        raise DataError(f"--data {spec!r}: there is no folder {root}")
    test = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    folders = {"train": root / "train", "test": test} if (root / "train").is_dir() and test else {"all": root}
    steps = [transforms.Resize((image_size, image_size))] + ([transforms.Grayscale(1)] if grayscale else [])
    transform = transforms.Compose(steps + [transforms.PILToTensor()])
    sets = {}
    for split, folder in folders.items():
        try:
            sets[split] = datasets.ImageFolder(str(folder), transform=transform)
        except (FileNotFoundError, OSError) as exc:
            raise DataError(
                f"--data {spec!r}: {folder} is not an image folder (one sub-folder of images per class): {exc}"
            ) from None
    classes = {split: s.classes for split, s in sets.items()}
    if len({tuple(c) for c in classes.values()}) > 1:
        raise DataError(f"--data {spec!r}: the splits have different classes: {classes}")

    def stack(dataset, indices) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            items = [dataset[int(i)] for i in indices]
        except Exception as exc:  # PIL raises several types for a broken image
            raise DataError(f"--data {spec!r}: an image cannot be read ({type(exc).__name__}: {exc})") from None
        return torch.stack([x for x, _ in items]).float() / 255.0, torch.tensor([y for _, y in items])

    splits = {split: stack(s, pipeline_data.subset_indices(len(s), n_eval, seed)) for split, s in sets.items()}
    pool = sets["train" if "train" in sets else "all"]

    def draw(n_batches: int, batch_size: int, draw_seed: int) -> list[torch.Tensor]:
        return [stack(pool, b)[0] for b in reset_batches(torch.arange(len(pool)), n_batches, batch_size, draw_seed)]

    return EvalData(
        spec,
        "image",
        splits,
        len(next(iter(classes.values()))),
        1 if grayscale else 3,
        {split: len(s) for split, s in sets.items()},
        draw,
        f"{' and '.join(str(f) for f in folders.values())}, resized to {image_size}x{image_size}, "
        f"{'grey' if grayscale else 'RGB'}, scaled to [0, 1] (no normalisation)",
    )


def byte_windows(ids: torch.Tensor, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every non-overlapping window of context + 1 ids: inputs (n, context) = ids[:-1], targets = ids[1:]."""
    n = (len(ids) - 1) // context
    chunks = ids[torch.arange(n)[:, None] * context + torch.arange(context + 1)]
    return chunks[:, :-1].contiguous(), chunks[:, 1:].contiguous()


def _text(spec: str, path: Path, n_eval: int, seed: int, context: int) -> EvalData:
    if not path.is_file():
        raise DataError(f"--data {spec!r}: there is no file {path}")
    raw = path.read_bytes()
    if not raw:
        raise DataError(f"--data {spec!r}: {path} is empty")
    ids = torch.frombuffer(bytearray(raw), dtype=torch.uint8).long()
    cut = int(len(ids) * (1 - TEXT_TEST_FRACTION))
    parts = {"train": ids[:cut], "test": ids[cut:]}
    short = {s: len(p) for s, p in parts.items() if len(p) < context + 1}
    if short:
        raise DataError(
            f"--data {spec!r}: {len(ids)} bytes are too few for windows of --context {context} + 1 in "
            f"every split (bytes per split: {short}); use a longer file or a shorter --context"
        )
    windows = {s: byte_windows(p, context) for s, p in parts.items()}
    splits = {}
    for s, (x, y) in windows.items():
        idx = pipeline_data.subset_indices(len(y), n_eval, seed)
        splits[s] = (x[idx], y[idx])

    def draw(n_batches: int, batch_size: int, draw_seed: int) -> list[torch.Tensor]:
        return reset_batches(windows["train"][0], n_batches, batch_size, draw_seed)

    return EvalData(
        spec,
        "text",
        splits,
        TEXT_VOCAB,
        None,
        {s: len(y) for s, (_, y) in windows.items()},
        draw,
        f"{path}, {len(ids)} bytes, byte-level tokens (vocabulary {TEXT_VOCAB}), windows of {context}, "
        f"first {1 - TEXT_TEST_FRACTION:.0%} train, last {TEXT_TEST_FRACTION:.0%} test",
    )
