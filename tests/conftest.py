"""Shared test setup: quiet notebooks and code, the order in which workers take the tests, the repository root."""

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Inherited by notebook kernels that nbval and papermill start: no progress bars, no warnings.
os.environ["LLMC_QUIET"] = "1"
# Under pytest-xdist, several workers share the cores, each with torch's own threads; OpenMP threads that spin while
# they wait take the cores from those with work (benchmarks/bench_tests.py measures it). Inherited by every process a
# worker starts (DVC, papermill, kernels) and read when torch loads its OpenMP runtime: waiting threads sleep.
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def pytest_collection_modifyitems(items):
    # The README's test command runs on every core (pytest-xdist, `--dist loadscope`): each test module is one unit of
    # work (its module-scoped fixtures are made once), the notebooks are one unit (notebooks/conftest.py), and workers
    # take units in collection order. Units that run stages through DVC or papermill take minutes, so they go first:
    # the one started last would otherwise keep a single core busy while the other idles.
    items.sort(key=lambda item: not (item.get_closest_marker("pipeline") or item.path.suffix == ".ipynb"))


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture(scope="module")
def repo_snapshot(tmp_path_factory):
    """A copy of what profiles.make_workspace copies from the repository (and the profiles it reads), used as
    profiles.REPO for the whole module: a file edited in the checkout meanwhile cannot change what a launch runs."""
    from llmc_utils.pipeline import profiles

    repo = tmp_path_factory.mktemp("repo")
    for name in ("llmc_utils", "notebooks", "profiles"):
        shutil.copytree(profiles.REPO / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "params.yaml"):  # params.yaml: the file every profile extends
        shutil.copy(profiles.REPO / name, repo / name)
    study = Path("results/setup_study/fig1_by_setup.csv")
    (repo / study).parent.mkdir(parents=True)
    shutil.copy(profiles.REPO / study, repo / study)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(profiles, "REPO", repo)
        yield repo
