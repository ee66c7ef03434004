"""Typed parameters: the base of every params.yaml section, the constrained types sections use, and the one rule that
maps a repetition index to its seeds.

A section is a pydantic model that forbids unknown keys and is immutable once validated; the model of each stage's
section lives beside the stage (its StageSpec's `config`), and llmc_utils.pipeline.params validates a whole file
against all of them. Fields typed `Seed` (or `SeedList`) are the section's RNG seeds: `Section.for_repetition(r)`
offsets every one of them by repetition_seed, so repetition r of a stage draws its own randomness and r = 0 runs the
configured seeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo

# Reusable constrained types: the constraint is part of the error message pydantic writes.
Alpha = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0.0)]
NonNegativeFloat = Annotated[float, Field(ge=0.0)]


class SeedField:
    """Marks a field as an RNG seed that repetition r offsets (Section.for_repetition)."""


Seed = Annotated[int, Field(ge=0), SeedField()]
SeedList = Annotated[list[Seed], SeedField()]


def checks_environment(info: ValidationInfo) -> bool:
    """True while validating a file that is about to run here (validate_params(check_environment=True)): only then do
    validators look at the machine (paths, devices); a params mapping checked on its own stays machine-independent."""
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


def repetition_seed(base: int, repetition: int) -> int:
    """The seed that `base` becomes in repetition r: base + 100 r (r = 0 keeps the configured seeds). One rule for
    every stage, so the seeds of all repetitions are distinct as long as configured seeds stay below 100."""
    return base + 100 * repetition


class Section(BaseModel):
    """Base of every section: unknown keys are errors, values are immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def seed_fields(cls) -> list[str]:
        return [name for name, f in cls.model_fields.items() if any(isinstance(m, SeedField) for m in f.metadata)]

    def seeds(self) -> dict[str, int | list[int]]:
        """Every RNG seed of the section (its `Seed` fields), as this repetition runs them."""
        return {name: getattr(self, name) for name in self.seed_fields()}

    def for_repetition(self, repetition: int) -> Section:
        """This section as repetition r runs it: every `Seed` field offset by repetition_seed (r = 0: unchanged)."""

        def shift(seed):
            return (
                [repetition_seed(s, repetition) for s in seed]
                if isinstance(seed, list)
                else repetition_seed(seed, repetition)
            )

        return self.model_copy(update={name: shift(value) for name, value in self.seeds().items()})


class ParamsError(ValueError):
    """A params file that does not validate; the message lists every offending key."""


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
        raise ParamsError(
            f"{path} is empty: a params file maps section names (runtime, train_pairs, ...) to their "
            "settings; start from a copy of params.yaml"
        )
    if not isinstance(raw, dict):
        raise ParamsError(
            f"{path}: expected a mapping of section names to settings, got a {type(raw).__name__} "
            f"({str(raw)[:60]!r}); start from a copy of params.yaml"
        )
    return raw


def to_yaml(section: Section) -> str:
    return yaml.safe_dump({type(section).__name__: section.model_dump(mode="json")}, sort_keys=False).rstrip()
