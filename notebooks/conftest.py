"""nbval runs the notebooks here as another CPU would: every initial weight multiplied by 1 + 1e-6 * noise
(LLMC_PERTURB_INIT, read by llmc_utils.core.trainer.perturb_init). The committed outputs come from an unperturbed run
(scripts/refresh_notebooks.py), so a checked cell that prints a number depending on the last digits of training fails
here rather than on the next machine. The variable is set for the notebook items only (nbval's kernel inherits it when
it starts, at a notebook's first cell) and removed after each item, so the unit tests never see it."""

import os

import pytest

from llmc_utils.core.trainer import PERTURB_ENV

PERTURBATION = "1e-6"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    os.environ[PERTURB_ENV] = PERTURBATION


def pytest_runtest_teardown(item):
    os.environ.pop(PERTURB_ENV, None)
