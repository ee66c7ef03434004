"""Typed, validated parameters: one pydantic model per params.yaml section, checked once before any compute.

Every stage module defines the model of its own section; SECTIONS maps section names to those models so that a typo
anywhere in params.yaml (an unknown key, a negative size, an unknown dataset, alpha outside [0, 1]) stops the run with
a message naming the key, the value and what is allowed.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# section name -> "module:Class"; imported lazily so a stage only pays for the modules it uses
SECTIONS: dict[str, str] = {
    "runtime": "llmc_utils.config:RuntimeConfig",
    "repetitions": "llmc_utils.config:RepetitionsConfig",
    "data": "llmc_utils.data:DataConfig",
    "train_pairs": "llmc_utils.pairs:TrainPairsConfig",
    "layerwise_barriers": "llmc_utils.barriers:LayerwiseBarriersConfig",
    "cumulative_averaging": "llmc_utils.cumulative:CumulativeAveragingConfig",
    "deep_linear": "llmc_utils.deep_linear:DeepLinearConfig",
    "robustness": "llmc_utils.robustness:RobustnessConfig",
    "subspace_perturbations": "llmc_utils.subspace:SubspacePerturbationsConfig",
    "federated": "llmc_utils.federated:FederatedConfig",
    "language_model": "llmc_utils.language_model:LanguageModelConfig",
    "aggregate": "llmc_utils.config:AggregateConfig",
    "report": "llmc_utils.report:ReportConfig",
}

# Reusable constrained types: the constraint is part of the error message pydantic writes.
Alpha = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0.0)]
NonNegativeFloat = Annotated[float, Field(ge=0.0)]


class Section(BaseModel):
    """Base of every section: unknown keys are errors, values are immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class RuntimeConfig(Section):
    num_threads: PositiveInt = 2  # torch.set_num_threads; fixed so numbers and timings are reproducible
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")  # auto = CUDA when present
    progress: bool = True  # tqdm bars; tests turn them off


Seeds = Annotated[list[NonNegativeInt], Field(min_length=1)]


class RepetitionsConfig(Section):
    """Repetition indices r of every repeated stage; dvc.yaml runs one stage per index (`foreach`), so adding an
    index runs only that repetition, and the report's intervals are taken across them. Repetition r of a stage
    derives all its seeds from r (see each stage module)."""

    train_pairs: Seeds = Field(default_factory=lambda: [0, 1, 2, 3, 4])  # Fig. 1/2 pairs (>= 5 for the claims)
    robustness: Seeds = Field(default_factory=lambda: [0, 1, 2])  # ViT pairs; CNN heatmap of pair r
    subspace_perturbations: Seeds = Field(default_factory=lambda: [0, 1, 2])
    federated: Seeds = Field(default_factory=lambda: [0, 1, 2])
    language_model: Seeds = Field(default_factory=lambda: [0, 1, 2])

    @model_validator(mode="after")
    def _check(self):
        for name in type(self).model_fields:
            seeds = getattr(self, name)
            if len(set(seeds)) != len(seeds):
                raise ValueError(f"{name}: repetition indices must not repeat, got {seeds}")
        missing = sorted(set(self.robustness) - set(self.train_pairs))
        if missing:
            raise ValueError(f"robustness repetitions {missing} need the CNN pairs of the same index, which "
                             f"train_pairs {self.train_pairs} does not train")
        return self


class AggregateConfig(Section):
    """The aggregate stage (figures over all repetitions) reads the `repetitions` section; nothing of its own."""


def repetition_seed(base: int, repetition: int) -> int:
    """The seed that `base` becomes in repetition r: base + 100 r (r = 0 keeps the configured seeds). One rule for
    every stage, so the seeds of all repetitions are distinct as long as configured seeds stay below 100."""
    return base + 100 * repetition


class ParamsError(ValueError):
    """A params file that does not validate; the message lists every offending key."""


def section_model(name: str) -> type[Section]:
    module, cls = SECTIONS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def _describe(source: str, section: str, err: dict[str, Any], model: type[Section]) -> str:
    key = ".".join([section, *map(str, err["loc"])])
    if err["type"] == "extra_forbidden":
        allowed = ", ".join(model.model_fields)
        return f"{source}: unknown key {key} (value {err['input']!r}); allowed keys in '{section}': {allowed}"
    if err["type"] == "missing":
        return f"{source}: missing key {key}"
    return f"{source}: {key} = {err['input']!r} is not allowed: {err['msg']}"


def validate_params(raw: Any, source: str = "params") -> dict[str, Section]:
    """Validate a whole params mapping; raise ParamsError listing every problem at once."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    problems, sections = [], {}
    for name, values in raw.items():
        if name not in SECTIONS:
            problems.append(f"{source}: unknown section {name!r}; allowed sections: {', '.join(SECTIONS)}")
            continue
        model = section_model(name)
        try:
            sections[name] = model.model_validate(values or {})
        except ValidationError as exc:
            problems.extend(_describe(source, name, e, model) for e in exc.errors())
    if problems:
        raise ParamsError("invalid parameters:\n  " + "\n  ".join(problems))
    return sections


def load_params(path: str | Path) -> dict[str, Section]:
    """Read and validate a params YAML file. Sections left out take their defaults when asked for."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from exc
    return validate_params(raw or {}, source=str(path))


def get_section(params: dict[str, Section], name: str) -> Section:
    """The validated section, or its defaults when the file leaves it out."""
    if name not in SECTIONS:
        raise KeyError(f"unknown section {name!r}; known: {', '.join(SECTIONS)}")
    return params.get(name) or section_model(name)()


def to_yaml(section: Section) -> str:
    return yaml.safe_dump({type(section).__name__: section.model_dump(mode="json")}, sort_keys=False).rstrip()
