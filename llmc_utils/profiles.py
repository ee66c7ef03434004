"""Run the pipeline on another parameter profile, in a workspace of its own, leaving params.yaml untouched.

    python -m llmc_utils.profiles paper                 # CIFAR-10, ResNet18 without norm, 200 epochs (GPU)
    python -m llmc_utils.profiles my_params.yaml --dest runs/mine -- cumulative_averaging

The workspace (default runs/<profile>/) gets copies of dvc.yaml, the notebooks and the package sources the stages
depend on, the profile as its params.yaml, and an offline DVC config; then `dvc repro [targets]` runs there. The
tiny-profile pipeline test and the budget benchmark use the same two functions.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from llmc_utils.config import SECTIONS, get_section, validate_params

REPO = Path(__file__).resolve().parent.parent
PROFILES = {"default": REPO / "params.yaml", "paper": REPO / "profiles" / "paper.yaml",
            "tiny": REPO / "tests" / "params_tiny.yaml"}


def profile_path(profile: str | Path) -> Path:
    path = PROFILES.get(str(profile), Path(profile))
    if not Path(path).is_file():
        raise FileNotFoundError(f"unknown profile {profile!r}: give one of {', '.join(PROFILES)} or a params file")
    return Path(path)


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def load_profile(path: str | Path) -> dict:
    """A profile's full parameters: the file itself, merged onto the file its `extends` key names (recursively)."""
    path = Path(path)
    raw = yaml.safe_load(path.read_text()) or {}
    parent = raw.pop("extends", None)
    return _merge(load_profile(path.parent / parent), raw) if parent else raw


def dvc(workspace: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the DVC of this Python environment in `workspace` (its bin folder first on PATH, for papermill)."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    out = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=workspace, env=env, capture_output=True, text=True)
    if check and out.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(args)} failed in {workspace}:\n{out.stdout}\n{out.stderr}")
    return out


def make_workspace(params_file: str | Path, dest: str | Path, overrides: dict | None = None) -> Path:
    """A fresh (or refreshed) pipeline workspace at `dest` running on the profile `params_file` (with `overrides`
    merged on top). Outputs already there are kept, so DVC reruns only what changed."""
    params = _merge(load_profile(params_file), overrides or {})
    validated = validate_params(params, source=str(params_file))  # fail before copying anything
    # every section with every key, defaults filled in: DVC reads the keys a stage depends on from the file itself
    params = {name: get_section(validated, name).model_dump(mode="json") for name in SECTIONS}
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("notebooks", "llmc_utils"):
        shutil.copytree(REPO / name, dest / name, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", dest / "dvc.yaml")
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if not (dest / ".dvc").is_dir():
        dvc(dest, "init", "--no-scm", "-q")
    dvc(dest, "config", "core.analytics", "false")
    dvc(dest, "config", "core.check_update", "false")
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", help=f"one of {', '.join(PROFILES)}, or a params YAML file")
    parser.add_argument("--dest", help="workspace folder (default runs/<profile name>)")
    parser.add_argument("targets", nargs="*", help="dvc repro targets (default: the whole pipeline)")
    args = parser.parse_args(argv)
    dest = Path(args.dest or REPO / "runs" / Path(str(args.profile)).stem)
    make_workspace(profile_path(args.profile), dest)
    print(f"workspace {dest}: dvc repro {' '.join(args.targets)}", flush=True)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.call([sys.executable, "-m", "dvc", "repro", *args.targets], cwd=dest, env=env)


if __name__ == "__main__":
    sys.exit(main())
