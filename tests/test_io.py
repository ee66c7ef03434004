"""Atomic writes leave nothing half-written, with the umask's mode, checkpoints synced to disk; checkpoint errors
name the file."""

import os
import stat
from pathlib import Path

import pytest
import torch

from llmc_utils.core.io import CheckpointError, atomic_path, load_checkpoint, save_json, save_torch


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


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_files_get_the_mode_of_the_umask(tmp_path, umask, mode):
    """As a file written in place would: mkstemp's 0600 would hide a shared folder's results from the group."""
    previous = os.umask(umask)
    try:
        save_torch({"w": torch.ones(2)}, tmp_path / "epoch_0001.pt")
        save_json({"v": 1}, tmp_path / "metrics.json")
    finally:
        os.umask(previous)
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {
        "epoch_0001.pt": mode,
        "metrics.json": mode,
    }


def test_checkpoints_are_fsynced_file_then_folder(tmp_path, monkeypatch):
    """The checkpoint's bytes reach the disk before the rename makes it the checkpoint, and the rename itself before
    save_torch returns."""
    events = []
    fsync, replace = os.fsync, os.replace

    def record_fsync(fd):
        events.append(("fsync", "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"))
        fsync(fd)

    def record_replace(src, dst):
        events.append(("replace", Path(dst).name))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", record_fsync)
    monkeypatch.setattr(os, "replace", record_replace)
    save_torch({"w": torch.ones(2)}, tmp_path / "epoch_0001.pt")
    assert events == [("fsync", "file"), ("replace", "epoch_0001.pt"), ("fsync", "folder")]
    events.clear()
    save_json({"v": 1}, tmp_path / "metrics.json")  # results are cheap to recompute: renamed without a sync
    assert events == [("replace", "metrics.json")]
