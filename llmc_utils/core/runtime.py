"""What a running stage is: the runtime section (threads, device, precision), the `Stage` context a stage's code
receives (its validated config, the params, where its files go), and the progress bars every long loop shows.

Engine code (training, evaluation) and stage modules import it; `llmc_utils.pipeline.stage.setup` builds a Stage from
a params file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, ValidationInfo, field_validator

from llmc_utils.core.config import PositiveFloat, PositiveInt, Section, checks_environment


class RuntimeConfig(Section):
    num_threads: PositiveInt = 2  # torch.set_num_threads; fixed so numbers and timings are reproducible
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")  # auto = CUDA when present
    progress: bool = True  # tqdm bars; tests turn them off
    # up to this many independent models of a stage (A and B of a pair) trained side by side, each in a one-thread
    # process, on a CPU (trainer.train_many; 1 = one after the other in the stage's own process with num_threads)
    train_processes: PositiveInt = 3
    # how evaluations run (evaluation.set_speed; a GPU profile may turn these on): fp32 | tf32 (CUDA only) | bf16
    # (autocast: other barriers in the last digits that matter; tests/test_engine_cache.py bounds and prints the
    # change); channels_last images; the most memory (GiB) the cached activations of one evaluated endpoint may take
    # (the deepest boundaries that fit are kept)
    eval_precision: Literal["fp32", "tf32", "bf16"] = "fp32"
    channels_last: bool = False
    cache_gb: PositiveFloat = 4.0

    @field_validator("device")
    @classmethod
    def _device_present(cls, device: str, info: ValidationInfo) -> str:
        """A CUDA device must exist on the machine that runs the file (checked before any stage starts)."""
        if not device.startswith("cuda") or not checks_environment(info):
            return device
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.split(":")[1]) if ":" in device else 0
        if count == 0:
            raise ValueError("no CUDA device is present on this machine; allowed here: auto, cpu")
        if index >= count:
            raise ValueError(
                f"this machine has {count} CUDA device(s); allowed here: auto, cpu, cuda, "
                + ", ".join(f"cuda:{i}" for i in range(count))
            )
        return device


_progress_enabled = True
_progress_mininterval = 0.1  # seconds between refreshes; worker processes raise it (see trainer._train_in_worker)


def quiet() -> bool:
    """Tests set LLMC_QUIET=1 (inherited by notebook kernels): no bars, no warnings."""
    return os.environ.get("LLMC_QUIET", "") not in ("", "0")


def progress(iterable=None, **kwargs):
    """tqdm (notebook-aware) that follows runtime.progress and LLMC_QUIET."""
    from tqdm.auto import tqdm

    kwargs.setdefault("mininterval", _progress_mininterval)
    return tqdm(iterable, disable=not _progress_enabled or quiet(), dynamic_ncols=True, **kwargs)


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"runtime.device = {spec!r} but CUDA is not available; use 'auto' or 'cpu'")
    return torch.device(spec)


@dataclass
class Stage:
    """A running stage: its validated config (as its repetition runs it), the params it declared it reads, and where
    its files go."""

    name: str
    config: Section
    runtime: RuntimeConfig
    workspace: Path
    params: dict = field(repr=False)
    device: torch.device = torch.device("cpu")
    repetition: int | None = None  # index r of a repeated stage; None for a stage that runs once
    readable: frozenset[str] = frozenset()  # the sections its StageSpec declares it reads

    def section(self, name: str) -> Section:
        """Another params section this stage reads; one its StageSpec does not declare in `reads` is an error, so
        dvc.yaml (written from the declarations) lists every parameter a stage's results depend on."""
        if name not in self.readable:
            raise KeyError(
                f"stage {self.name} reads section {name!r} but its StageSpec does not declare it in "
                f"`reads` (declared: {', '.join(sorted(self.readable))}); add it there and rerun "
                "scripts/write_dvc_yaml.py"
            )
        return self.params[name]

    def _dir(self, kind: str) -> Path:
        path = self.workspace / kind
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def tag(self) -> str:
        """'repetition_<r>' for a repetition, '' for a stage that runs once."""
        return "" if self.repetition is None else f"repetition_{self.repetition}"

    @property
    def models_dir(self) -> Path:
        return self._dir(f"models/{self.name}/{self.tag}" if self.tag else f"models/{self.name}")

    @property
    def results_dir(self) -> Path:
        return self._dir(f"results/{self.name}/{self.tag}" if self.tag else f"results/{self.name}")

    @property
    def figures_dir(self) -> Path:
        return self._dir("figures")

    @property
    def metrics_path(self) -> Path:
        if self.tag:
            return self._dir(f"metrics/{self.name}") / f"{self.tag}.json"
        return self._dir("metrics") / f"{self.name}.json"
