"""Small raw data sets in the real on-disk formats (CIFAR-10 python pickles, MNIST idx files), made by the tests."""

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class Python2Pickler(pickle._Pickler):
    """Pickles as Python 2's cPickle wrote CIFAR-10's own files: protocol 2, byte strings (Python 2's str) as
    BINSTRING, which Python 3 reads back as str with encoding="latin1", and numpy under its 1.x name numpy.core."""

    dispatch = dict(pickle._Pickler.dispatch)

    def __init__(self, file):
        super().__init__(file, protocol=2)

    def save_bytes(self, obj):
        size = len(obj)
        self.write(
            (pickle.SHORT_BINSTRING + bytes([size]) if size < 256 else pickle.BINSTRING + struct.pack("<i", size)) + obj
        )
        self.memoize(obj)

    dispatch[bytes] = save_bytes

    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", "")
        if not module.startswith("numpy._core"):
            return super().save_global(obj, name)
        self.write(pickle.GLOBAL + f"{module.replace('numpy._core', 'numpy.core')}\n{name or obj.__name__}\n".encode())
        self.memoize(obj)


def as_bytes(obj):
    """Every str of a batch as bytes: Python 2's str, which Python2Pickler writes as it did."""
    if isinstance(obj, str):
        return obj.encode("latin1")
    if isinstance(obj, dict):
        return {as_bytes(k): as_bytes(v) for k, v in obj.items()}
    return [as_bytes(v) for v in obj] if isinstance(obj, list) else obj


def _dump(obj, path: Path, protocol: int | str) -> None:
    with open(path, "wb") as f:
        if protocol == "python2":
            Python2Pickler(f).dump(as_bytes(obj))
        else:
            pickle.dump(obj, f, protocol=protocol)


def cifar10(root: Path, per_batch: int = 20, seed: int = 0, protocol: int | str = pickle.DEFAULT_PROTOCOL) -> Path:
    """root/cifar-10-batches-py with 5 train batches and a test batch of `per_batch` images each, pickled with
    `protocol`, or "python2" as the real files are (Python2Pickler)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {
            "batch_label": name,
            "labels": [int(v) for v in rng.integers(0, 10, per_batch)],
            "data": rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8),
            "filenames": [f"{name}_{i}.png" for i in range(per_batch)],
        }
        _dump(batch, folder / name, protocol)
    _dump(
        {"label_names": CIFAR_CLASSES, "num_cases_per_batch": per_batch, "num_vis": 3072},
        folder / "batches.meta",
        protocol,
    )
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
