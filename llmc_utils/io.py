"""Atomic file output and checked checkpoint loading.

Every result a stage writes goes through a temporary file in the same folder and os.replace, so an interrupted stage
never leaves a half-written file behind that a rerun (or DVC) could mistake for a finished one. A folder that cannot
be written stops the stage with OutputNotWritable naming the file and the folder, before anything there changes.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch


class OutputNotWritable(PermissionError):
    """An output whose folder cannot be created or written (read-only folder, another owner)."""


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path` in one step, on failure it is removed."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        blocked = next(p for p in (path.parent, *path.parent.parents) if p.exists())  # the folder that refused
        raise OutputNotWritable(f"cannot write {path}: {blocked} is not writable ({exc.strerror}); make it "
                                "writable (chmod u+w) or run in another folder") from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def save_torch(obj: Any, path: str | Path) -> None:
    # Serialise to memory first: torch.save names the archive after the file it writes, so saving straight to the
    # random temporary name would make identical content hash differently, and DVC would rerun downstream stages.
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def save_json(obj: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_table(df, path: str | Path) -> None:
    """Write a tidy pandas table as CSV (float precision kept, no index)."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def save_text(text: str, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or not what the caller expected."""


def load_checkpoint(path: str | Path, required_keys: tuple[str, ...] = (), **expected: Any) -> dict:
    """Load a dict checkpoint, naming the file in every error.

    `required_keys` must be present; each keyword in `expected` must equal the stored value (e.g. arch="cnn"), which
    catches a checkpoint written by another configuration.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; run the stage that writes it (dvc repro)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise CheckpointError(f"checkpoint {path} is corrupt, truncated or not a torch file ({type(exc).__name__}: "
                              f"{reason}); move it away (mv {path} {path}.bad) and rerun the stage that writes it"
                              ) from exc
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(ckpt).__name__}, expected a dict: it was not written "
                              f"by this pipeline; move it away (mv {path} {path}.bad) and rerun the stage that writes it")
    missing = [k for k in required_keys if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}: it was written by another version or stage; move "
                              f"it away (mv {path} {path}.bad) and rerun the stage that writes it")
    for key, value in expected.items():
        if ckpt.get(key) != value:
            raise CheckpointError(f"checkpoint {path} has {key}={ckpt.get(key)!r}, expected {value!r}; "
                                  "it belongs to another configuration: delete it and rerun the stage")
    return ckpt


def read_seed_tables(workspace: str | Path, stage: str, filename: str, seeds) -> "pd.DataFrame":
    """Concatenate results/<stage>/seed_<r>/<filename> over repetitions r, with a `seed` column; a missing
    repetition is an error naming the stage to run."""
    import pandas as pd

    frames = []
    for seed in seeds:
        path = Path(workspace) / "results" / stage / f"seed_{seed}" / filename
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run repetition {seed} of stage {stage} "
                                    f"(dvc repro {stage}@{seed})")
        frames.append(pd.read_csv(path).assign(seed=seed))
    return pd.concat(frames, ignore_index=True)
