"""What every notebook does first: validate params, fix the thread count, print the config, locate outputs.

A notebook's `parameters` cell holds `params_file` and `workspace` (DVC passes `params.yaml` and `.`; the committed
defaults point at the tiny profile and a scratch folder, so nbval reruns stay fast) and, for a repeated stage,
`repetition`: the index r. DVC runs one stage per repetition (dvc.yaml `foreach` over the `repetitions` section of
params.yaml); each writes its own results/<stage>/repetition_<r>/ and metrics/<stage>/repetition_<r>.json, and the
aggregate and report stages read them all.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import cast

import torch

from llmc_utils.core import runtime as _runtime
from llmc_utils.core.config import to_yaml
from llmc_utils.core.runtime import RuntimeConfig, Stage, progress, quiet, resolve_device
from llmc_utils.pipeline.params import load_params
from llmc_utils.stages.spec import EVALUATION

__all__ = ["setup", "progress", "Stage"]  # notebooks call stage.progress


def setup(
    name: str, params_file: str | Path, workspace: str | Path, verbose: bool = True, repetition: int | None = None
) -> Stage:
    """Validate the whole params file, configure torch, print this stage's config, and return the Stage.

    `name` is a stage of the registry (or its params section). `repetition` is the index r of a repeated stage
    (see the module docstring): st.config is then the section as that repetition runs it (Section.for_repetition:
    every seed offset). Only the runtime keys the stage's StageSpec declares take effect: a stage that does not
    declare the evaluation keys evaluates in fp32 with the default cache, whatever the file says."""
    from llmc_utils.core.evaluation import set_speed
    from llmc_utils.pipeline.registry import spec as stage_spec

    spec = stage_spec(name)
    params = load_params(params_file)
    runtime = cast(RuntimeConfig, params["runtime"])  # load_params validates section "runtime" as a RuntimeConfig
    config = params[spec.section]
    if repetition is not None:
        config = config.for_repetition(repetition)
    # runtime.num_threads for every stage, unless the stage's own section sets `threads` (tiny-op stages run faster
    # on one thread); fixed either way, so numbers and timings are reproducible
    torch.set_num_threads(getattr(config, "threads", None) or runtime.num_threads)
    _runtime._progress_enabled = runtime.progress
    declared = set(spec.runtime_keys())
    evaluation = RuntimeConfig() if not declared >= set(EVALUATION) else runtime
    set_speed(evaluation.eval_precision, evaluation.channels_last, evaluation.cache_gb)
    if quiet():
        warnings.filterwarnings("ignore")
    readable = frozenset(s for s in params if spec.reads_section(s))
    stage = Stage(
        name=spec.section,
        config=config,
        runtime=runtime,
        workspace=Path(workspace),
        params=params,
        device=resolve_device(runtime.device),
        repetition=repetition,
        readable=readable,
    )
    if verbose:
        print(to_yaml(runtime))
        print(to_yaml(config))
        print(
            f"workspace: {stage.workspace}  device: {stage.device}  threads: {torch.get_num_threads()}"
            + ("" if repetition is None else f"  repetition: {repetition}")
        )
    return stage
