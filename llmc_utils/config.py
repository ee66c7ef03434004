"""Typed, validated parameters: one pydantic model per params.yaml section, checked once before any compute.

Every stage module defines the model of its own section; SECTIONS maps section names to those models so that a typo
anywhere in params.yaml (an unknown key, a negative size, an unknown dataset, alpha outside [0, 1]) stops the run with
a message naming the file, the key, the value and what is allowed.

A file that is about to run on this machine (`load_params`, used by every stage, the check_params stage and the
profiles CLI) is also checked against the machine: the paths it names must exist (fields typed `ExistingDir` or
`ExistingFile`; relative paths are taken relative to the params file's folder) and the device it asks for must be
present. So a bad file stops `dvc repro` in its first stage, before DVC deletes any output (see check_params).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, \
    model_validator

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
    "alignment": "llmc_utils.alignment:AlignmentConfig",
    "bn_reset": "llmc_utils.bn_reset:BNResetConfig",
    "aggregate": "llmc_utils.config:AggregateConfig",
    "setup_study": "llmc_utils.setup_study:SetupStudyConfig",
    "report": "llmc_utils.report:ReportConfig",
}

# Reusable constrained types: the constraint is part of the error message pydantic writes.
Alpha = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0.0)]
NonNegativeFloat = Annotated[float, Field(ge=0.0)]


def checks_environment(info: ValidationInfo) -> bool:
    """True while validating a file that is about to run here (validate_params(check_environment=True)): only then
    do validators look at the machine (paths, devices); a params mapping checked on its own stays machine-independent."""
    return bool(info.context and info.context.get("check_environment"))


class PathField:
    """Marks a field that names a file or folder: `resolve_paths` makes a relative value absolute against the folder
    of the params file that sets it, so a profile means the same path whichever folder the pipeline runs in."""

    def __init__(self, kind: str):
        self.kind = kind  # "dir" or "file"


def _must_exist(kind: str):
    def check(value: str | None, info: ValidationInfo) -> str | None:
        if value is None or not checks_environment(info):
            return value
        path = Path(value)
        if kind == "dir" and not path.is_dir():
            raise ValueError(f"{path} is a file, not a folder" if path.exists() else f"there is no folder {path}")
        if kind == "file" and not path.is_file():
            raise ValueError(f"{path} is a folder, not a file" if path.exists() else f"there is no file {path}")
        return value

    return check


# Optional paths that must exist on the machine that runs the file (None = the field's documented fallback).
ExistingDir = Annotated[str | None, PathField("dir"), AfterValidator(_must_exist("dir"))]
ExistingFile = Annotated[str | None, PathField("file"), AfterValidator(_must_exist("file"))]


class Section(BaseModel):
    """Base of every section: unknown keys are errors, values are immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class RuntimeConfig(Section):
    num_threads: PositiveInt = 2  # torch.set_num_threads; fixed so numbers and timings are reproducible
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")  # auto = CUDA when present
    progress: bool = True  # tqdm bars; tests turn them off
    # up to this many independent models of a stage (A and B of a pair) trained side by side, each in a one-thread
    # process, on a CPU (trainer.train_many; 1 = one after the other in the stage's own process with num_threads)
    train_processes: PositiveInt = 2
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
            raise ValueError(f"this machine has {count} CUDA device(s); allowed here: auto, cpu, cuda, "
                             + ", ".join(f"cuda:{i}" for i in range(count)))
        return device


Seeds = Annotated[list[NonNegativeInt], Field(min_length=1)]


class RepetitionsConfig(Section):
    """Repetition indices r of every repeated stage; dvc.yaml runs one stage per index (`foreach`), so adding an
    index runs only that repetition, and the report's intervals are taken across them. Repetition r of a stage
    derives all its seeds from r (see each stage module)."""

    train_pairs: Seeds = Field(default_factory=lambda: [0, 1, 2, 3, 4, 5])  # Fig. 1/2 pairs (>= 6: count claims)
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
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        allowed = ", ".join(model.model_fields)
        return f"{source}: unknown key {key} (value {err['input']!r}); allowed keys in '{section}': {allowed}"
    if err["type"] == "missing":
        return f"{source}: missing key {key}"
    if not err["loc"] and err["type"] == "value_error":  # a rule across several keys of the section
        return f"{source}: {key}: {msg}"
    return f"{source}: {key} = {err['input']!r} is not allowed: {msg}"


def validate_params(raw: Any, source: str = "params", check_environment: bool = False) -> dict[str, Section]:
    """Validate a whole params mapping; raise ParamsError listing every problem at once.

    check_environment: the file is about to run on this machine, so the paths it names must exist and its device
    must be present (see the module docstring)."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    problems, sections = [], {}
    for name, values in raw.items():
        if name not in SECTIONS:
            problems.append(f"{source}: unknown section {name!r}; allowed sections: {', '.join(SECTIONS)}")
            continue
        model = section_model(name)
        try:
            sections[name] = model.model_validate(values or {}, context={"check_environment": check_environment})
        except ValidationError as exc:
            problems.extend(_describe(source, name, e, model) for e in exc.errors())
    if problems:
        raise ParamsError("invalid parameters:\n  " + "\n  ".join(problems))
    return sections


def read_params_file(path: str | Path) -> dict:
    """The raw mapping of a params YAML file. A missing, empty, binary or unparsable file, or one that is not a
    mapping of sections, raises ParamsError naming the file (and the line, for a YAML syntax error)."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file not found: {path}" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ParamsError(f"{path}: not a YAML params file: byte {exc.start} is not UTF-8 text") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ParamsError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    if raw is None:
        raise ParamsError(f"{path} is empty: a params file maps section names ({', '.join(SECTIONS)}) to their "
                          "settings; start from a copy of params.yaml")
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of section names to settings, got a {type(raw).__name__} "
                          f"({str(raw)[:60]!r}); start from a copy of params.yaml")
    return raw


def resolve_paths(raw: dict, base_dir: str | Path) -> dict:
    """`raw` with every relative path of a PathField made absolute against `base_dir` (the folder of the file that
    set it): `data.root: raw/fmnist` in my.yaml means my.yaml's folder/raw/fmnist, wherever the pipeline runs."""
    out = dict(raw)
    for name, values in raw.items():
        if name not in SECTIONS or not isinstance(values, dict):
            continue
        fields = section_model(name).model_fields
        for key, value in values.items():
            marked = key in fields and any(isinstance(m, PathField) for m in fields[key].metadata)
            if marked and isinstance(value, str) and not Path(value).expanduser().is_absolute():
                out[name] = dict(out[name], **{key: os.path.abspath(Path(base_dir) / value)})
            elif marked and isinstance(value, str):
                out[name] = dict(out[name], **{key: str(Path(value).expanduser())})
    return out


def load_params(path: str | Path, check_environment: bool = True) -> dict[str, Section]:
    """Read and validate a params YAML file that is about to run here (paths relative to its folder must exist, the
    device must be present). Sections left out take their defaults when asked for."""
    path = Path(path)
    raw = resolve_paths(read_params_file(path), path.parent)
    return validate_params(raw, source=str(path), check_environment=check_environment)


def get_section(params: dict[str, Section], name: str) -> Section:
    """The validated section, or its defaults when the file leaves it out."""
    if name not in SECTIONS:
        raise KeyError(f"unknown section {name!r}; known: {', '.join(SECTIONS)}")
    return params.get(name) or section_model(name)()


def to_yaml(section: Section) -> str:
    return yaml.safe_dump({type(section).__name__: section.model_dump(mode="json")}, sort_keys=False).rstrip()
