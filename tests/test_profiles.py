"""The profiles CLI accepts every form its help, the README and the profile files show, and runs `dvc repro` with
the right targets in the right workspace (DVC itself is replaced by a recorder here; tests/test_pipeline.py and
tests/test_resume.py run the real thing)."""

import re
import shlex
import sys

import pytest

from llmc_utils.pipeline import profiles
from tests.conftest import ROOT

DOCUMENTED = [  # every place that shows a command line of the CLI
    ROOT / "llmc_utils" / "pipeline" / "profiles.py",
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "profiles").glob("*.yaml")),
]


def documented_commands() -> list[list[str]]:
    commands = []
    for path in DOCUMENTED:
        for match in re.finditer(r"python -m llmc_utils\.pipeline\.profiles ([^`#\n]*)", path.read_text()):
            commands.append(shlex.split(match.group(1)))
    return commands


@pytest.fixture
def recorder(monkeypatch):
    """Replace workspace creation and DVC with recorders: {"workspace": (profile, dest), "dvc": (argv, cwd)}."""
    calls = {}
    monkeypatch.setattr(
        profiles, "make_workspace", lambda path, dest, force: calls.setdefault("workspace", (path, dest))
    )
    monkeypatch.setattr(profiles.subprocess, "call", lambda argv, cwd, env: calls.setdefault("dvc", (argv, cwd)) and 0)
    return calls


def test_every_documented_form_is_accepted(recorder, monkeypatch):
    monkeypatch.setattr(profiles, "profile_path", profiles.Path)  # the files the examples name need not exist
    commands = documented_commands()
    assert len(commands) >= 6, commands  # the docstring's four, the README's two, the profile files'
    for argv in commands:
        recorder.clear()
        assert profiles.main(argv) == 0, argv
        assert recorder["dvc"][0][:4] == [sys.executable, "-m", "dvc", "repro"]


@pytest.mark.parametrize(
    "argv",
    [
        ["my.yaml", "--dest", "runs/mine", "--", "cumulative_averaging"],  # the docstring's form
        ["my.yaml", "cumulative_averaging", "--dest", "runs/mine"],
        ["my.yaml", "--dest", "runs/mine", "cumulative_averaging"],
        ["--dest", "runs/mine", "my.yaml", "cumulative_averaging"],
        ["--dest=runs/mine", "my.yaml", "--", "cumulative_averaging"],
    ],
)
def test_targets_and_options_in_any_order(argv, recorder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my.yaml").write_text("train_pairs: {width: 8}\n")
    assert profiles.main(argv) == 0
    assert recorder["workspace"] == (profiles.Path("my.yaml"), profiles.Path("runs/mine"))
    argv_dvc, cwd = recorder["dvc"]
    assert argv_dvc[3:] == ["repro", "cumulative_averaging"] and cwd == profiles.Path("runs/mine")


def test_several_targets_and_the_default_workspace(recorder):
    assert profiles.main(["paper", "--", "train_pairs@0", "layerwise_barriers@0"]) == 0
    assert recorder["dvc"][0][3:] == ["repro", "train_pairs@0", "layerwise_barriers@0"]
    assert recorder["workspace"] == (ROOT / "profiles" / "paper.yaml", ROOT / "runs" / "paper")


def test_profile_names_resolve_to_files():
    assert profiles.profile_path("tiny") == ROOT / "profiles" / "tiny.yaml"
    assert profiles.profile_path("paper_vgg11") == ROOT / "profiles" / "paper_vgg11.yaml"  # profiles/<name>.yaml
    assert profiles.profile_path(ROOT / "params.yaml") == ROOT / "params.yaml"


def test_usage_errors_are_one_line_without_traceback(capsys):
    with pytest.raises(SystemExit) as exc:
        profiles.main(["--dest"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage: python -m llmc_utils.pipeline.profiles" in err and "Traceback" not in err
