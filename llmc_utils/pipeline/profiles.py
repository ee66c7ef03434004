"""Run the pipeline on another parameter profile, in a workspace of its own, leaving params.yaml untouched.

    python -m llmc_utils.pipeline.profiles paper                 # CIFAR-10, ResNet18 without norm, 200 epochs (GPU)
    python -m llmc_utils.pipeline.profiles my_params.yaml --dest runs/mine
    python -m llmc_utils.pipeline.profiles my_params.yaml --dest runs/mine -- cumulative_averaging
    python -m llmc_utils.pipeline.profiles my_params.yaml cumulative_averaging --dest runs/mine  # any order

A profile is one of the names below, a file profiles/<name>.yaml, or any params file; `extends: other.yaml` merges it
onto another file, and relative paths in it (data.root, language_model.text_file) are relative to its own folder.
The whole profile is validated first, against this machine too (paths exist, the device is present): a bad one stops
here with the file, key, value and what is allowed, before the workspace is touched. The workspace (default
runs/<profile>/) gets copies of dvc.yaml, the notebooks and the package sources the stages depend on, the profile as
its params.yaml, and an offline DVC config; then `dvc repro [targets]` runs there. The tiny-profile pipeline test and
the budget benchmark use the same two functions.

A workspace is marked as made here (WORKSPACE_MARKER), so rerunning into it refreshes those files. A folder that
holds any of them without the marker (the repository itself, another project) is refused before anything changes,
unless --force: its params.yaml, dvc.yaml and notebooks would be overwritten.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from llmc_utils.core.config import ParamsError
from llmc_utils.pipeline.params import load_profile, merge, validate_params

REPO = Path(__file__).resolve().parents[2]
PROFILES = {"default": REPO / "params.yaml"}  # every other profile is profiles/<name>.yaml


def profile_path(profile: str | Path) -> Path:
    """The params file of a profile name (PROFILES, then profiles/<name>.yaml) or of a path."""
    named = PROFILES.get(str(profile), REPO / "profiles" / f"{profile}.yaml")
    for path in (Path(named), Path(profile)):
        if path.is_file():
            return path
    names = sorted(set(PROFILES) | {p.stem for p in (REPO / "profiles").glob("*.yaml")})
    raise ParamsError(
        f"unknown profile {str(profile)!r}: no such file; give one of {', '.join(names)} or the path of a params file"
    )


def dvc_env() -> dict[str, str]:
    """The environment for a DVC of this Python environment: its bin folder first on PATH, so that the stages' commands
    find this environment's papermill."""
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


def dvc(workspace: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the DVC of this Python environment in `workspace` (dvc_env)."""
    out = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=workspace, env=dvc_env(), capture_output=True, text=True
    )
    if check and out.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(args)} failed in {workspace}:\n{out.stdout}\n{out.stderr}")
    return out


WORKSPACE_MARKER = ".llmc_workspace"
WORKSPACE_FILES = ("params.yaml", "dvc.yaml", "notebooks", "llmc_utils", ".dvc")  # what make_workspace (re)writes


class WorkspaceInUse(ValueError):
    """A destination folder holding pipeline files that make_workspace did not write."""


def check_dest(dest: Path, force: bool = False) -> None:
    """Raise WorkspaceInUse when `dest` holds any of WORKSPACE_FILES but no WORKSPACE_MARKER, unless `force`."""
    found = [name for name in WORKSPACE_FILES if (Path(dest) / name).exists()]
    if found and not force and not (Path(dest) / WORKSPACE_MARKER).is_file():
        raise WorkspaceInUse(
            f"--dest {dest} holds {', '.join(found)}, not written by llmc (no {WORKSPACE_MARKER} "
            "there), and making a workspace would overwrite them; choose another --dest, or add "
            "--force to replace them"
        )


def claim(dest: Path, force: bool = False) -> None:
    """check_dest, then the folder made (a read-only one fails here, before anything is copied) and marked."""
    check_dest(dest, force)
    dest.mkdir(parents=True, exist_ok=True)
    os.close(os.open(dest / ".write_probe", os.O_CREAT | os.O_WRONLY))
    os.unlink(dest / ".write_probe")
    if not (dest / WORKSPACE_MARKER).is_file():
        (dest / WORKSPACE_MARKER).write_text(
            "a pipeline workspace made by llmc_utils.pipeline.profiles: params.yaml, "
            "dvc.yaml, notebooks/ and llmc_utils/ are rewritten when it is made "
            "again\n"
        )


def make_workspace(
    params_file: str | Path, dest: str | Path, overrides: dict | None = None, force: bool = False
) -> Path:
    """A fresh (or refreshed) pipeline workspace at `dest` running on the profile `params_file` (with `overrides`
    merged on top). Outputs already there are kept, so DVC reruns only what changed. A folder with pipeline files
    that were not made here raises WorkspaceInUse (check_dest) unless `force`."""
    params = merge(load_profile(params_file), overrides or {})
    # fail before copying anything; paths must exist and the device must be present on this machine
    validated = validate_params(params, source=str(params_file), check_environment=True)
    # every section with every key, defaults filled in: DVC reads the keys a stage depends on from the file itself
    params = {name: section.model_dump(mode="json") for name, section in validated.items()}
    dest = Path(dest)
    claim(dest, force)
    for name in ("notebooks", "llmc_utils"):
        shutil.copytree(REPO / name, dest / name, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", dest / "dvc.yaml")
    # committed inputs that no stage writes (the appendix setup study runs outside dvc repro)
    from llmc_utils.pipeline.setup_study import RESULT

    if (REPO / RESULT).is_file():
        (dest / RESULT).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / RESULT, dest / RESULT)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if not (dest / ".dvc").is_dir():
        dvc(dest, "init", "--no-scm", "-q")
    dvc(dest, "config", "core.analytics", "false")
    dvc(dest, "config", "core.check_update", "false")
    return dest


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """PROFILE [TARGETS...] [--dest DIR] [-- TARGETS...], options and targets in any order (see the docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    after = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(
        prog="python -m llmc_utils.pipeline.profiles",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("profile", help=f"one of {', '.join(PROFILES)}, a file profiles/<name>.yaml, or a params file")
    parser.add_argument("--dest", help="workspace folder (default runs/<profile name>)")
    parser.add_argument(
        "--force",
        action="store_true",
        help="make the workspace in a folder that holds a params.yaml, "
        "dvc.yaml, notebooks/, llmc_utils/ or .dvc/ of its own (they are overwritten)",
    )
    parser.add_argument("targets", nargs="*", help="dvc repro targets (default: the whole pipeline)")
    args = parser.parse_intermixed_args(argv)
    args.targets = [*args.targets, *after]
    return args


def main(argv: list[str] | None = None) -> int:
    """The CLI: a bad profile or an unwritable workspace ends with one message naming it (exit 2), no traceback."""
    args = parse_args(argv)
    dest = Path(args.dest or REPO / "runs" / Path(str(args.profile)).stem)
    try:
        make_workspace(profile_path(args.profile), dest, force=args.force)
    except (ParamsError, WorkspaceInUse) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. a read-only or foreign-owned workspace folder
        print(
            f"error: cannot write the workspace {dest}: {exc.strerror or exc} ({exc.filename or dest}); choose "
            "another --dest or make it writable",
            file=sys.stderr,
        )
        return 2
    print(f"workspace {dest}: dvc repro {' '.join(args.targets)}", flush=True)
    return subprocess.call([sys.executable, "-m", "dvc", "repro", *args.targets], cwd=dest, env=dvc_env())


if __name__ == "__main__":
    sys.exit(main())
