"""Small raw data sets in the real on-disk formats (CIFAR-10 python pickles, MNIST idx files), made by the tests."""

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar10(root: Path, per_batch: int = 20, seed: int = 0) -> Path:
    """root/cifar-10-batches-py with 5 train batches and a test batch of `per_batch` images each."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {"batch_label": name, "labels": [int(v) for v in rng.integers(0, 10, per_batch)],
                 "data": rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8),
                 "filenames": [f"{name}_{i}.png" for i in range(per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR_CLASSES, "num_cases_per_batch": per_batch, "num_vis": 3072}, f)
    return folder


def _idx(path: Path, array: np.ndarray, gz: bool) -> None:
    magic = 2051 if array.ndim == 3 else 2049
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(f"{path}.gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def fashion_mnist(folder: Path, n_train: int = 30, n_test: int = 10, gz: bool = True, seed: int = 0) -> Path:
    """The four Fashion-MNIST idx files (gzipped like the Debian package by default)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _idx(folder / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), gz)
        _idx(folder / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, gz)
    return folder
