"""Every stage's `StageSpec`, collected: the one place the pipeline learns which stages exist.

A stage is a module of llmc_utils.stages with a module-level `SPEC`; it is found by scanning that package, so adding
a stage adds no line here. The aggregate and report stages (llmc_utils.pipeline.aggregate / .report) come last.
Stages are ordered by notebook, which is the paper's order; the report lists figures and claims in it.

Derived here: the params sections (`sections()`, what params.yaml may hold), the `repetitions` section's model
(one list per stage that owns one), every claim, premise, sanity check and figure of the report.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from pydantic import Field, create_model, model_validator

from llmc_utils.core.claims import Claim, Premise, SanityCheck
from llmc_utils.core.config import NonNegativeInt, Section
from llmc_utils.core.runtime import RuntimeConfig
from llmc_utils.stages.spec import Figure, StageSpec


@cache
def stage_specs() -> tuple[StageSpec, ...]:
    """The SPEC of every module of llmc_utils.stages, in notebook order."""
    import llmc_utils.stages as package

    specs = []
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        spec = getattr(module, "SPEC", None)
        if isinstance(spec, StageSpec):
            specs.append(spec)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"two stage modules declare the same stage name: {sorted(names)}")
    return tuple(sorted(specs, key=lambda s: s.notebook))


@cache
def all_specs() -> tuple[StageSpec, ...]:
    """Every stage of dvc.yaml but check_params: the stage modules', then aggregate and report."""
    from llmc_utils.pipeline import aggregate, report

    return (*stage_specs(), aggregate.spec(stage_specs()), report.SPEC)


def spec(name: str) -> StageSpec:
    """The stage called `name`, or whose params section is `name` (notebook 00 sets up section `data`)."""
    for s in all_specs():
        if name in (s.name, s.section):
            return s
    raise KeyError(f"unknown stage {name!r}; known: {', '.join(s.name for s in all_specs())}")


def repetition_owners() -> tuple[StageSpec, ...]:
    """The stages that own a list of the `repetitions` section (the others repeat over one of these)."""
    return tuple(s for s in stage_specs() if s.repeats_over == s.name)


class _RepetitionsBase(Section):
    """Repetition indices r of every repeated stage; dvc.yaml runs one stage per index (`foreach`), so adding an
    index runs only that repetition, and the report's intervals are taken across them. Repetition r of a stage
    derives all its seeds from r (config.Section.for_repetition)."""

    @model_validator(mode="after")
    def _check(self):
        for name in type(self).model_fields:
            indices = getattr(self, name)
            if len(set(indices)) != len(indices):
                raise ValueError(f"{name}: repetition indices must not repeat, got {indices}")
        for s in repetition_owners():
            if s.needs_pairs_of and (
                missing := sorted(set(getattr(self, s.name)) - set(getattr(self, s.needs_pairs_of)))
            ):
                raise ValueError(
                    f"{s.name} repetitions {missing} need the {s.needs_pairs_of} of the same index, "
                    f"which {s.needs_pairs_of} {getattr(self, s.needs_pairs_of)} does not run"
                )
        return self


@cache
def repetitions_model() -> type[Section]:
    """The `repetitions` section: one non-empty list of distinct indices per owner, defaulting to its spec's."""
    fields = {
        s.name: (list[NonNegativeInt], Field(default_factory=lambda s=s: list(s.repetitions), min_length=1))
        for s in repetition_owners()
    }
    return create_model("RepetitionsConfig", __base__=_RepetitionsBase, **fields)  # type: ignore[call-overload]


@cache
def sections() -> dict[str, type[Section]]:
    """Every section params.yaml may hold: runtime, repetitions, each stage's own (aggregate and report included)
    and setup_study."""
    from llmc_utils.pipeline.setup_study import SetupStudyConfig

    out: dict[str, type[Section]] = {"runtime": RuntimeConfig, "repetitions": repetitions_model()}
    out.update({s.section: s.config for s in all_specs()})
    out["setup_study"] = SetupStudyConfig  # the appendix study: run outside dvc repro, its table committed
    return out


def all_claims() -> tuple[list[Claim], list[SanityCheck]]:
    """Every stage's claims and sanity checks, in the paper's order."""
    return ([c for s in stage_specs() for c in s.claims], [c for s in stage_specs() for c in s.sanity_checks])


def all_premises() -> dict[str, Premise]:
    return {p.name: p for s in stage_specs() for p in s.premises}


def report_figures() -> list[Figure]:
    """Every figure the report shows, in the paper's order: each stage's own, then those the aggregate draws of it."""
    return [f for s in stage_specs() for f in (*s.figures, *s.aggregate_figures)]
