"""The code type-checks (mypy) and passes the linter and the formatter (ruff), with the versions pinned in the `test`
extra of pyproject.toml; each check runs as CI runs it, from the repository root, in this interpreter's environment."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the whole tree as `ruff check .` sees it from the root: code and notebooks (the formatter also the Python blocks
# of the Markdown docs); pyproject.toml excludes the executed notebook copies the pipeline writes, .gitignore the rest
LINTED = ["."]


def check(*args: str) -> None:
    """Run `python -m ARGS` in the repository root; fail with the tool's output unless it exits 0."""
    result = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}"


def test_mypy():
    check("mypy", "llmc_utils")


def test_ruff_check():
    check("ruff", "check", *LINTED)


def test_ruff_format():
    check("ruff", "format", "--check", *LINTED)
