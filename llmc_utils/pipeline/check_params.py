"""The first stage of `dvc repro`: validate the whole params.yaml before DVC deletes any stage's outputs.

DVC removes a stage's outputs right before it runs the stage, so a notebook that validates its params is too late: a
typo would already have cost the stage's figures and metrics. Every stage of dvc.yaml therefore depends on the stamp
this stage writes, and this stage depends on params.yaml: when params.yaml changes, `dvc repro` runs this check first,
and a bad file stops the pipeline here, with nothing else touched. While the file is valid the stamp's content never
changes, so a valid edit reruns only the stages whose own params changed.

Checked: everything config.load_params checks (the file is YAML and a mapping; known sections and keys; types and
ranges; paths that exist; a device that is present), plus every key dvc.yaml reads from params.yaml (a stage's
`params` and a `foreach` over a repetitions list), which DVC itself would only report after deleting outputs.

    python -m llmc_utils.pipeline.check_params [params.yaml] [--dvc-yaml dvc.yaml] [--stamp FILE]

A bad file ends with one message naming the file, key, value and what is allowed (exit 2), never a traceback.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

from llmc_utils.core.config import ParamsError
from llmc_utils.core.io import save_text
from llmc_utils.pipeline.params import load_params, load_profile, section_model, sections

STAMP = Path("reports") / "executed" / "check_params.txt"  # the output every stage depends on
STAMP_TEXT = "params.yaml: valid\n"  # constant while the file is valid: a valid edit changes nothing downstream


def dvc_param_keys(dvc_yaml: str | Path, params_name: str = "params.yaml") -> dict[str, list[str]]:
    """{dotted key of params.yaml: stages of dvc.yaml that read it} (their `params` and `foreach: ${...}`)."""
    stages = (yaml.safe_load(Path(dvc_yaml).read_text()) or {}).get("stages", {})
    keys: dict[str, list[str]] = {}
    for name, stage in stages.items():
        body = stage.get("do", stage)
        for entry in body.get("params", []):
            listed = (
                [entry] if isinstance(entry, str) else entry.get(params_name, []) if isinstance(entry, dict) else []
            )
            for key in listed:
                keys.setdefault(key, []).append(name)
        for key in re.findall(r"\$\{\s*([\w.]+)\s*\}", str(stage.get("foreach", ""))):
            keys.setdefault(key, []).append(name)
    return keys


def _lookup(mapping, dotted: str):
    """(found, value) of a dotted key in nested mappings."""
    for part in dotted.split("."):
        if not isinstance(mapping, dict) or part not in mapping:
            return False, None
        mapping = mapping[part]
    return True, mapping


def missing_dvc_keys(raw: dict, dvc_yaml: str | Path, source: str) -> list[str]:
    """One problem per key dvc.yaml reads that the file leaves out, with the value to add (the section default)."""
    problems, read = [], dvc_param_keys(dvc_yaml)
    missing = {key for key in read if not _lookup(raw, key)[0]}
    for key in sorted(missing):
        if any(key.startswith(other + ".") for other in missing):
            continue  # reported with the missing key above it
        stages = list(dict.fromkeys(s for k in sorted(read) if k == key or k.startswith(key + ".") for s in read[k]))
        section = key.split(".")[0]
        defaults = {section: section_model(section)().model_dump(mode="json")} if section in sections() else {}
        found, default = _lookup(defaults, key)
        hint = f"; add it (default: {default!r})" if found else ""
        problems.append(f"{source}: missing key {key}, which dvc.yaml's stage(s) {', '.join(stages)} read{hint}")
    return problems


def check(params_file: str | Path = "params.yaml", dvc_yaml: str | Path | None = "dvc.yaml") -> dict:
    """Validate `params_file` for a run on this machine (and for `dvc_yaml`); return its sections or raise
    ParamsError listing every problem."""
    raw = load_profile(params_file)  # an unreadable or empty file (or one it extends) stops here
    missing = missing_dvc_keys(raw, dvc_yaml, str(params_file)) if dvc_yaml and Path(dvc_yaml).is_file() else []
    try:
        params = load_params(params_file)
    except ParamsError as exc:  # report every problem at once
        raise ParamsError("\n  ".join([str(exc), *missing])) from None
    if missing:
        raise ParamsError("invalid parameters:\n  " + "\n  ".join(missing))
    return params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m llmc_utils.pipeline.check_params",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("params", nargs="?", default="params.yaml", help="the params file (default params.yaml)")
    parser.add_argument("--dvc-yaml", default="dvc.yaml", help="pipeline whose params keys must be present")
    parser.add_argument("--stamp", default=str(STAMP), help=f"file written when valid (default {STAMP})")
    args = parser.parse_args(argv)
    try:
        params = check(args.params, args.dvc_yaml)
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    save_text(STAMP_TEXT, args.stamp)
    print(f"{args.params}: valid ({len(params)} sections, every key dvc.yaml reads present)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
