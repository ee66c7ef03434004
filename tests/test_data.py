"""Data stage: both real loaders on fabricated files in the real formats, and the missing-data message."""

import pytest
import torch

from llmc_utils.core import data
from tests import fabricate


def test_cifar10_from_fabricated_python_batches(tmp_path):
    fabricate.cifar10(tmp_path / "raw", per_batch=20)
    out = data.prepare(data.DataConfig(dataset="cifar10", root=str(tmp_path / "raw")), tmp_path / "ws")
    images = data.load_prepared(out)
    assert images.name == "cifar10" and images.classes == fabricate.CIFAR_CLASSES
    assert images.train_x.shape == (100, 3, 32, 32) and images.train_x.dtype == torch.uint8
    assert images.test_x.shape == (20, 3, 32, 32) and images.test_y.dtype == torch.int64
    x, y = images.split("train", n=10, seed=1)
    assert x.shape == (10, 3, 32, 32) and x.dtype == torch.float32
    # normalisation with train statistics: the whole train split has mean 0, std 1 per channel
    full, _ = images.split("train")
    assert torch.allclose(full.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(full.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3)


def test_cifar10_pixels_keep_channel_layout(tmp_path):
    folder = fabricate.cifar10(tmp_path, per_batch=4)
    raw = data.read_cifar10(folder)
    import pickle

    with open(folder / "data_batch_1", "rb") as f:
        first = pickle.load(f)["data"][0]
    # CIFAR rows are 1024 red, then green, then blue values, each row-major 32x32
    assert torch.equal(raw["train_x"][0, 1], torch.from_numpy(first[1024:2048].reshape(32, 32)))


def test_cifar10_in_every_pickle_format_reads_the_same(tmp_path):
    """The restricted reader takes CIFAR-10's own format (Python 2, protocol 2: keys and data as latin1 strings, numpy
    under numpy.core), copies re-pickled by Python 3 (protocols 2 and 5, bytes keys) alike."""
    import pickle

    reference = data.read_cifar10(fabricate.cifar10(tmp_path / "python2", per_batch=4, protocol="python2"))
    assert reference["classes"] == fabricate.CIFAR_CLASSES
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        assert_same_tensors(
            data.read_cifar10(fabricate.cifar10(tmp_path / str(protocol), per_batch=4, protocol=protocol)), reference
        )
    folder = fabricate.cifar10(tmp_path / "bytes", per_batch=4)
    for path in folder.iterdir():  # keys and strings as bytes (loaded with encoding="bytes"), pickled by Python 3
        with open(path, "rb") as f:
            path.write_bytes(pickle.dumps(fabricate.as_bytes(pickle.load(f)), protocol=2))
    assert_same_tensors(data.read_cifar10(folder), reference)


def assert_same_tensors(got: dict, want: dict) -> None:
    assert got["classes"] == want["classes"]
    assert all(torch.equal(got[k], want[k]) for k in ("train_x", "train_y", "test_x", "test_y"))


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_idx_files(tmp_path, gz):
    folder = fabricate.fashion_mnist(tmp_path / "fm", n_train=30, n_test=10, gz=gz)
    images = data.load_prepared(data.prepare(data.DataConfig(root=str(folder)), tmp_path / "ws"))
    assert images.train_x.shape == (30, 1, 28, 28) and images.test_y.tolist() == list(range(10))
    assert images.classes[0] == "T-shirt/top"


def test_missing_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(data.DatasetNotFound) as exc:
        data.prepare(data.DataConfig(root=str(tmp_path / "empty")), tmp_path / "ws")
    assert "apt-get install dataset-fashion-mnist" in str(exc.value) and str(tmp_path / "empty") in str(exc.value)
    with pytest.raises(data.DatasetNotFound, match="cifar-10-batches-py"):
        data.prepare(data.DataConfig(dataset="cifar10", root=str(tmp_path)), tmp_path / "ws")
    assert not (tmp_path / "ws" / "data" / "images.pt").exists()


def test_debian_copy_is_the_default_when_present():
    if not data.DEBIAN_FASHION_MNIST.is_dir():
        pytest.skip("Debian dataset-fashion-mnist not installed")
    assert data.locate(data.DataConfig()) == data.DEBIAN_FASHION_MNIST
