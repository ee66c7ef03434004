"""What every notebook does first: validate params, fix the thread count, print the config, locate outputs.

A notebook's `parameters` cell holds `params_file` and `workspace` (DVC passes `params.yaml` and `.`; the committed
defaults point at the tiny test profile and a scratch folder, so nbval reruns stay fast) and, for stages repeated
over seeds, `seed`: the repetition index r. DVC runs one stage per repetition (dvc.yaml `foreach` over the
`repetitions` section of params.yaml); each writes its own results/<stage>/seed_<r>/ and metrics/<stage>/seed_<r>.json,
and the aggregate and report stages read them all.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llmc_utils.config import RuntimeConfig, Section, get_section, load_params, to_yaml

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
    """A running stage: its validated config, the other sections it may read, and where its files go."""

    name: str
    config: Section
    runtime: RuntimeConfig
    workspace: Path
    params: dict = field(repr=False)
    device: torch.device = torch.device("cpu")
    seed: int | None = None  # repetition index of a repeated stage; None for a stage that runs once

    def _dir(self, kind: str) -> Path:
        path = self.workspace / kind
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def tag(self) -> str:
        """'seed_<r>' for a repetition, '' for a stage that runs once."""
        return "" if self.seed is None else f"seed_{self.seed}"

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


def setup(name: str, params_file: str | Path, workspace: str | Path, verbose: bool = True,
          seed: int | None = None) -> Stage:
    """Validate the whole params file, configure torch, print this stage's config, and return the Stage.

    `seed` is the repetition index of a repeated stage (see the module docstring); a section with
    `for_repetition(r)` (its seeds offset for repetition r) becomes st.config as that repetition runs it."""
    global _progress_enabled
    params = load_params(params_file)
    runtime = get_section(params, "runtime")
    config = get_section(params, name)
    if seed is not None and hasattr(config, "for_repetition"):
        config = config.for_repetition(seed)  # the section as repetition r runs it: every seed offset
    # runtime.num_threads for every stage, unless the stage's own section sets `threads` (tiny-op stages run faster
    # on one thread); fixed either way, so numbers and timings are reproducible
    torch.set_num_threads(getattr(config, "threads", None) or runtime.num_threads)
    _progress_enabled = runtime.progress
    from llmc_utils.evaluation import set_speed

    set_speed(runtime.eval_precision, runtime.channels_last, runtime.cache_gb)
    if quiet():
        warnings.filterwarnings("ignore")
    stage = Stage(name=name, config=config, runtime=runtime, workspace=Path(workspace), params=params,
                  device=resolve_device(runtime.device), seed=seed)
    if verbose:
        print(to_yaml(runtime))
        print(to_yaml(config))
        print(f"workspace: {stage.workspace}  device: {stage.device}  threads: {torch.get_num_threads()}"
              + ("" if seed is None else f"  repetition: {seed}"))
    return stage
