"""Stage aggregate (notebook 11): the figures of every repeated stage drawn over all its repetitions, each by the
stage's own `aggregate` function (its StageSpec), and the summary sentences some of them return
(results/aggregate/findings.json, read by the report)."""

from __future__ import annotations

from llmc_utils.core.config import Section
from llmc_utils.core.runtime import Stage
from llmc_utils.stages.spec import RUNTIME, StageSpec


class AggregateConfig(Section):
    """The aggregate stage has no settings of its own: it reads `repetitions` and what each stage's `aggregate`
    declares (StageSpec.aggregate_reads)."""


def spec(stages: tuple[StageSpec, ...]) -> StageSpec:
    """The aggregate stage's spec, derived from the stages it draws: their figures and the params they read."""
    drawn = [s for s in stages if s.aggregate is not None]
    reads = dict.fromkeys(("repetitions", *RUNTIME, *(key for s in drawn for key in s.aggregate_reads)))
    return StageSpec(
        name="aggregate",
        notebook="11_aggregate",
        config=AggregateConfig,
        reads=tuple(reads),
        inputs=tuple(f"results/{s.section}" for s in stages if s.repeated),
        metrics=(),
        figures=tuple(f for s in drawn for f in s.aggregate_figures),
    )


def run(st: Stage) -> dict[str, str]:
    """Every repeated stage's `aggregate` over the indices of its `repetitions` list, in notebook order; returns
    {stage: summary sentence} of those that give one."""
    from llmc_utils.pipeline.registry import stage_specs

    repetitions = st.section("repetitions")
    findings = {}
    for s in stage_specs():
        if s.aggregate is None:
            continue
        if s.repeats_over is None:
            raise ValueError(
                f"stage {s.name} has an `aggregate` but runs once (repeats_over None): no repetitions to aggregate"
            )
        print(f"== {s.name}")
        sentence = s.aggregate(st, getattr(repetitions, s.repeats_over))
        if sentence:
            findings[s.name] = sentence
    return findings
