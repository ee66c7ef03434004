"""Shared test setup: quiet notebooks and code, a clean nbval workspace, the repository root."""

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Inherited by notebook kernels that nbval and papermill start: no progress bars, no warnings.
os.environ["LLMC_QUIET"] = "1"


def pytest_collection_finish(session):
    # Notebooks run in file order and hand results to each other through build/nbval. When the chain is run from its
    # first notebook, start from nothing; a single notebook run (while editing it) reuses what upstream ones left.
    if any(item.nodeid.startswith("notebooks/00_") for item in session.items):
        shutil.rmtree(ROOT / "build" / "nbval", ignore_errors=True)


@pytest.fixture
def root() -> Path:
    return ROOT
