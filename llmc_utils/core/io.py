"""Atomic file output and checked checkpoint loading.

Every result a stage writes goes through a temporary file in the same folder and os.replace, so an interrupted stage
never leaves a half-written file behind that a rerun (or DVC) could mistake for a finished one. A folder that cannot
be written stops the stage with OutputNotWritable naming the file and the folder, before anything there changes.
Every file gets the mode the process's umask gives a new file (0644 under umask 022, 0664 under 002), as if it had been
written in place; torch files (checkpoints, the prepared data) are also fsynced, file and folder, so that a machine
that loses power just after a checkpoint was renamed into place does not come back with an empty one.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    import pandas as pd


class OutputNotWritable(PermissionError):
    """An output whose folder cannot be created or written (read-only folder, another owner)."""


def _umask() -> int:
    """The process's umask. Linux reports it in /proc without changing it; elsewhere it is set and restored at once,
    and a file that another thread creates in that instant gets umask 022 (no stage writes files from threads)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync(path: Path, folder: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems cannot sync a folder; the file's own data is synced by then
        if not folder or exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, sync: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path` in one step, on failure it is removed.
    The result gets the umask's mode; with `sync` the file is fsynced before the rename and the folder after it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        blocked = next(p for p in (path.parent, *path.parent.parents) if p.exists())  # the folder that refused
        raise OutputNotWritable(
            f"cannot write {path}: {blocked} is not writable ({exc.strerror}); make it "
            "writable (chmod u+w) or run in another folder"
        ) from None
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes the file 0600 whatever the umask: a group-shared folder would hold files the group cannot read
        os.chmod(tmp, 0o666 & ~_umask())
        if sync:
            _fsync(Path(tmp))
        os.replace(tmp, path)
        if sync:
            _fsync(path.parent, folder=True)  # the rename itself lasts only once the folder's entry is on disk
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def save_torch(obj: Any, path: str | Path) -> None:
    # Serialise to memory first: torch.save names the archive after the file it writes, so saving straight to the
    # random temporary name would make identical content hash differently, and DVC would rerun downstream stages.
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path, sync=True) as tmp:
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


WEIGHTS_ONLY_FAILED = "Weights only load failed"  # how torch.load(weights_only=True) begins a refusal


def error_line(exc: BaseException, limit: int = 200) -> str:
    """'Type: first line' of an error, for a one-line message. Of torch.load's refusal of a file under
    weights_only=True only the reason is kept: torch's message begins by suggesting weights_only=False, which would
    run whatever the file asks for."""
    text = str(exc).strip()
    if text.startswith(WEIGHTS_ONLY_FAILED):
        text = text.partition("WeightsUnpickler error:")[2].strip() or "not a file of tensors"
    return f"{type(exc).__name__}: {(text.splitlines() or [''])[0][:limit]}"


def unsafe_global(exc: BaseException) -> str | None:
    """The Python object (module.name) whose unpickling made torch.load(weights_only=True) refuse a file, if that
    was the reason."""
    found = re.search(r"GLOBAL ([\w.]+)", str(exc)) if str(exc).startswith(WEIGHTS_ONLY_FAILED) else None
    return found[1] if found else None


def holds_objects(name: str) -> str:
    """The end of a one-line message about a torch file that holds the pickled object `name` (unsafe_global)."""
    return (
        f"holds a pickled Python object ({name}), not only tensors, dicts, lists and numbers; such a file is not "
        "loaded, because unpickling an object can run code"
    )


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
        if name := unsafe_global(exc):
            raise CheckpointError(
                f"checkpoint {path} {holds_objects(name)}; it was not written by this pipeline: "
                f"move it away (mv {path} {path}.bad) and rerun the stage that writes it"
            ) from None
        raise CheckpointError(
            f"checkpoint {path} is corrupt, truncated or not a torch file ({error_line(exc)}); "
            f"move it away (mv {path} {path}.bad) and rerun the stage that writes it"
        ) from exc
    if not isinstance(ckpt, dict):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(ckpt).__name__}, expected a dict: it was not written "
            f"by this pipeline; move it away (mv {path} {path}.bad) and rerun the stage that writes it"
        )
    missing = [k for k in required_keys if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} lacks {missing}: it was written by another version or stage; move "
            f"it away (mv {path} {path}.bad) and rerun the stage that writes it"
        )
    for key, value in expected.items():
        if ckpt.get(key) != value:
            raise CheckpointError(
                f"checkpoint {path} has {key}={ckpt.get(key)!r}, expected {value!r}; "
                "it belongs to another configuration: delete it and rerun the stage"
            )
    return ckpt


def read_repetition_tables(workspace: str | Path, stage: str, filename: str, repetitions) -> pd.DataFrame:
    """Concatenate results/<stage>/repetition_<r>/<filename> over repetitions r, with a `repetition` column; a missing
    repetition is an error naming the stage to run."""
    import pandas as pd

    frames = []
    for r in repetitions:
        path = Path(workspace) / "results" / stage / f"repetition_{r}" / filename
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run repetition {r} of stage {stage} (dvc repro {stage}@{r})")
        frames.append(pd.read_csv(path).assign(repetition=r))
    return pd.concat(frames, ignore_index=True)


def copy_output(source: Path, workspace: Path, rel: str) -> None:
    """Copy file or folder `rel` of workspace `source` into `workspace` (replacing it there): how a gather collects
    what each repetition's workspace wrote. A missing source names the repetition's workspace that has not finished."""
    src, dst = Path(source) / rel, Path(workspace) / rel
    if not src.exists():
        raise FileNotFoundError(
            f"{src} is missing: that repetition has not finished (launch it again without "
            "--gather to finish it, or gather only the finished repetitions)"
        )
    if dst.is_dir():
        shutil.rmtree(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
