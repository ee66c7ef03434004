"""nbval runs the notebooks here as another CPU would: every initial weight multiplied by 1 + 1e-6 * noise
(LLMC_PERTURB_INIT, read by llmc_utils.core.trainer.perturb_init). The committed outputs come from an unperturbed run
(scripts/refresh_notebooks.py), so a checked cell that prints a number depending on the last digits of training fails
here rather than on the next machine. The variable is set for the notebook items only (nbval's kernel inherits it when
it starts, at a notebook's first cell) and removed after each item, so the unit tests never see it.

The notebooks run in file order and hand results to each other through build/nbval: under pytest-xdist they are one
unit of work (NotebookChain), and a run that starts from the first notebook starts from an empty build/nbval (a single
notebook run while editing it reuses what upstream ones left).

nbval's kernels start as the pipeline's do (llmc_utils.pipeline.notebook_engine): one that dies before it answers,
as when another process took one of its ports meanwhile, is started again."""

import functools
import os
import shutil
from pathlib import Path

import nbval.kernel
import pytest

from llmc_utils.core.trainer import PERTURB_ENV
from llmc_utils.pipeline.notebook_engine import retry_kernel_start

# nbval's RunningKernel calls this module-level function; a later nbval without it fails here, loudly
_nbval_start_new_kernel = nbval.kernel.start_new_kernel
nbval.kernel.start_new_kernel = functools.wraps(_nbval_start_new_kernel)(
    lambda *args, **kwargs: retry_kernel_start(lambda: _nbval_start_new_kernel(*args, **kwargs))
)

PERTURBATION = "1e-6"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    os.environ[PERTURB_ENV] = PERTURBATION
    if item.path.name.startswith("00_") and item.name == "Cell 0":
        shutil.rmtree(Path(__file__).resolve().parent.parent / "build" / "nbval", ignore_errors=True)


def pytest_runtest_teardown(item):
    os.environ.pop(PERTURB_ENV, None)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """xdist's loadscope (a test module is one unit of work), except that every notebook belongs to one unit. Only for
    `--dist loadscope` (pyproject.toml's default); another --dist given on the command line gets xdist's own."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class NotebookChain(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "notebooks" if nodeid.startswith("notebooks/") else super()._split_scope(nodeid)

    return NotebookChain(config, log)
