"""What a stage is, declared once: a `StageSpec` beside the stage's code (the module's `SPEC`).

Everything else is derived from the specs (llmc_utils.pipeline.registry collects them, in notebook order):
dvc.yaml (command, code dependencies, params dependencies from `reads`, outputs, persistent checkpoint folders),
the sections params.yaml may hold and the `repetitions` lists, the figure list and the claims of the report, the
aggregate stage's figures, launch's gather, and the test tables. A stage that runs once per repetition index r
writes results/<name>/repetition_<r>/ and metrics/<name>/repetition_<r>.json; a stage that runs once writes
results/<name>/ and metrics/<name>.json.

`reads` names every params key a stage's code reads beyond its own section: other sections or single keys of them
("train_pairs.train_subset"), and the runtime keys (RUNTIME for every stage; TRAINING and EVALUATION for stages
whose code trains or evaluates). The declaration is enforced where it can be: `Stage.section` refuses an undeclared
section, and stage setup applies the evaluation settings only to a stage that declares them, so a stage's numbers
depend on no runtime key that dvc.yaml does not list (tests/test_stage_specs.py checks the declarations against the
code each notebook imports).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmc_utils.core.config import Section

REPETITION = "{r}"  # stands for the repetition index in paths; dvc.yaml writes ${item}

RUNTIME = ("runtime.num_threads", "runtime.device")  # every stage: stage setup applies them
TRAINING = ("runtime.train_processes",)  # stages that train models (llmc_utils.core.trainer)
EVALUATION = ("runtime.eval_precision", "runtime.channels_last", "runtime.cache_gb")  # stages that evaluate barriers


@dataclass(frozen=True)
class Figure:
    """A figure file figures/<stem>.png and the caption the report prints under it."""

    stem: str
    caption: str


@dataclass(frozen=True)
class StageSpec:
    """One stage of the pipeline: its notebook, params, outputs, figures and claims.

    name            the DVC stage; also its params section unless `section` names another
    notebook        notebooks/<notebook>.ipynb, run by papermill with params_file, workspace (and repetition)
    config          the pydantic model of its section
    repeats_over    None: runs once; else the `repetitions` list it runs once per index of (its own name, or the
                    list of the stage whose outputs it reads, e.g. layerwise_barriers over train_pairs)
    repetitions     the default list, for a stage that owns a `repetitions` list (repeats_over == name)
    needs_pairs_of  a repeated stage that reads another stage's repetition r: its indices must be among that list's
    reads           params it reads beyond its own section (see the module docstring)
    inputs          data and checkpoint folders it reads ({r}: the repetition index)
    persist         checkpoint folders kept across reruns, so an interrupted stage resumes (DVC `persist`)
    outs            its outputs besides figures and metrics (default: its results folder)
    metrics         its metrics files (default: metrics/<section>.json, or one per repetition)
    figures         drawn by its own notebook
    aggregate_figures  drawn by the aggregate stage from every repetition, by `aggregate(stage, repetitions)`,
                    which returns one sentence for results/aggregate/findings.json (or None)
    aggregate_reads the params `aggregate` reads (the aggregate stage declares the union of them)
    claims, sanity_checks, premises  what the report judges from its metrics (llmc_utils.core.claims)
    gather          for launch: merges the outputs of a run-once stage that ran in every repetition's workspace
                    (gather(workspace, sources, repetitions, params)); a run-once stage without it runs in one workspace
    """

    name: str
    notebook: str
    config: type[Section]
    section: str = ""
    repeats_over: str | None = None
    repetitions: tuple[int, ...] = ()
    needs_pairs_of: str | None = None
    reads: tuple[str, ...] = RUNTIME
    inputs: tuple[str, ...] = ()
    persist: tuple[str, ...] = ()
    outs: tuple[str, ...] | None = None
    metrics: tuple[str, ...] | None = None
    figures: tuple[Figure, ...] = ()
    aggregate_figures: tuple[Figure, ...] = ()
    aggregate: Callable[[Any, list[int]], str | None] | None = None
    aggregate_reads: tuple[str, ...] = ()
    claims: tuple = ()
    sanity_checks: tuple = ()
    premises: tuple = ()
    gather: Callable[[Any, dict, list[int], dict], None] | None = None

    def __post_init__(self):
        if not self.section:
            object.__setattr__(self, "section", self.name)
        if self.repetitions and self.repeats_over != self.name:
            raise ValueError(f"stage {self.name}: only a stage that repeats over its own list sets `repetitions`")
        if self.repeats_over == self.name and not self.repetitions:
            raise ValueError(f"stage {self.name} repeats over its own list: give its default `repetitions`")
        if bool(self.aggregate_figures) != (self.aggregate is not None):
            raise ValueError(f"stage {self.name}: `aggregate_figures` and `aggregate` go together")

    @property
    def repeated(self) -> bool:
        return self.repeats_over is not None

    def output_paths(self) -> tuple[str, ...]:
        """Its outputs besides figures and metrics ({r}: the repetition index)."""
        if self.outs is not None:
            return self.outs
        return (f"results/{self.section}/repetition_{REPETITION}",) if self.repeated else (f"results/{self.section}",)

    def metrics_paths(self) -> tuple[str, ...]:
        if self.metrics is not None:
            return self.metrics
        return (
            (f"metrics/{self.section}/repetition_{REPETITION}.json",)
            if self.repeated
            else (f"metrics/{self.section}.json",)
        )

    def figure_stems(self) -> list[str]:
        return [f.stem for f in self.figures]

    def runtime_keys(self) -> tuple[str, ...]:
        return tuple(key for key in self.reads if key.startswith("runtime."))

    def reads_section(self, section: str) -> bool:
        """Whether its code may read params section `section` (its own, or one named in `reads`)."""
        return section == self.section or any(key.split(".")[0] == section for key in self.reads)
