"""Atomic writes leave nothing half-written; checkpoint errors name the file."""

import pytest
import torch

from llmc_utils.io import CheckpointError, atomic_path, load_checkpoint, save_json, save_torch


def test_interrupted_write_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "result.json"
    save_json({"v": 1}, target)
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text('{"v": 2, "trunc')
            raise KeyboardInterrupt  # killed half way
    assert target.read_text().strip().endswith("}") and '"v": 1' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_corrupt_checkpoint_named(tmp_path):
    path = tmp_path / "epoch_0001.pt"
    save_torch({"model": {"w": torch.ones(3)}, "epoch": 1}, path)
    path.write_bytes(path.read_bytes()[:40])  # truncated
    with pytest.raises(CheckpointError, match="epoch_0001.pt is corrupt"):
        load_checkpoint(path)


def test_mismatched_checkpoint_named(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_torch({"model": {}, "arch": "cnn"}, path)
    with pytest.raises(CheckpointError, match="ckpt.pt has arch='cnn', expected 'vgg11'"):
        load_checkpoint(path, arch="vgg11")
    with pytest.raises(CheckpointError, match="lacks \\['epoch'\\]"):
        load_checkpoint(path, ("model", "epoch"))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_same_content_gives_identical_bytes(tmp_path):
    # DVC compares hashes: saving equal objects twice must give equal files, whatever the temporary name was
    obj = {"w": torch.arange(5.0)}
    save_torch(obj, tmp_path / "a.pt")
    save_torch(obj, tmp_path / "b.pt")
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
