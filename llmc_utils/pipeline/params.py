"""Validating a whole params file: every section of every stage (llmc_utils.pipeline.registry), checked once before
any compute.

Each stage module defines the model of its own section (its StageSpec's `config`), so a typo anywhere in params.yaml
(an unknown key, a negative size, an unknown dataset, alpha outside [0, 1]) stops the run with a message naming the
file, the key, the value and what is allowed.

A file that is about to run on this machine (`load_params`, used by every stage, the check_params stage and the
profiles CLI) is also checked against the machine: the paths it names must exist (fields typed `ExistingDir` or
`ExistingFile`; relative paths are taken relative to the params file's folder) and the device it asks for must be
present. So a bad file stops `dvc repro` in its first stage, before DVC deletes any output (see check_params).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from llmc_utils.core.config import ParamsError, PathField, Section, read_params_file
from llmc_utils.pipeline.registry import sections


def section_model(name: str) -> type[Section]:
    return sections()[name]


def _describe(source: str, section: str, err: ErrorDetails, model: type[Section]) -> str:
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
    problems, validated = [], {}
    known = sections()
    for name in raw:
        if name not in known:
            problems.append(f"{source}: unknown section {name!r}; allowed sections: {', '.join(known)}")
            continue
    # every section, a left-out one with its defaults (which equal params.yaml's, tests/test_config.py)
    for name, model in known.items():
        try:
            validated[name] = model.model_validate(
                raw.get(name) or {}, context={"check_environment": check_environment}
            )
        except ValidationError as exc:
            problems.extend(_describe(source, name, e, model) for e in exc.errors())
    if problems:
        raise ParamsError("invalid parameters:\n  " + "\n  ".join(problems))
    return validated


def resolve_paths(raw: dict, base_dir: str | Path) -> dict:
    """`raw` with every relative path of a PathField made absolute against `base_dir` (the folder of the file that
    set it): `data.root: raw/fmnist` in my.yaml means my.yaml's folder/raw/fmnist, wherever the pipeline runs."""
    out = dict(raw)
    for name, values in raw.items():
        if name not in sections() or not isinstance(values, dict):
            continue
        fields = section_model(name).model_fields
        for key, value in values.items():
            marked = key in fields and any(isinstance(m, PathField) for m in fields[key].metadata)
            if marked and isinstance(value, str) and not Path(value).expanduser().is_absolute():
                out[name] = dict(out[name], **{key: os.path.abspath(Path(base_dir) / value)})
            elif marked and isinstance(value, str):
                out[name] = dict(out[name], **{key: str(Path(value).expanduser())})
    return out


def merge(base: dict, override: dict) -> dict:
    """`override` merged onto `base`, nested mappings key by key."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def load_profile(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """A profile's full parameters: the file itself, merged onto the file its `extends` key names (recursively),
    each file's relative paths taken relative to its own folder. Unreadable files and `extends` loops raise
    ParamsError naming the file."""
    path = Path(path)
    if path.resolve() in _seen:
        raise ParamsError(f"{path}: `extends` loops back to a file it extends ({' -> '.join(map(str, _seen))})")
    raw = resolve_paths(read_params_file(path), path.parent)
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise ParamsError(f"{path}: extends = {parent!r} is not allowed: give the path of another params file")
    if not (path.parent / parent).is_file():
        raise ParamsError(f"{path}: extends = {parent!r} is not allowed: there is no file {path.parent / parent}")
    return merge(load_profile(path.parent / parent, (*_seen, path.resolve())), raw)


def load_params(path: str | Path, check_environment: bool = True) -> dict[str, Section]:
    """Read and validate a params YAML file that is about to run here (with the files it `extends`; paths relative to
    each file's folder must exist, the device must be present). Every section is in the result; one left out has
    its defaults."""
    return validate_params(load_profile(path), source=str(path), check_environment=check_environment)
