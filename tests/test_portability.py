"""The notebook checks survive another CPU: rerun every notebook under nbval with perturbed numerics.

Another machine computes training in other last digits (measured: a tiny-profile test error of 72.0 on one CPU and 67.0
on another for the same commit). So the cells nbval compares may print only facts that rounding cannot change. This test
proves it: it copies the notebooks, the tiny profile and the params.yaml it extends into a scratch tree (so nothing is
shared with the main nbval run in build/nbval) and runs them under nbval with LLMC_PERTURB_INIT=1e-6, which multiplies
every initial weight by 1 + 1e-6 * noise (llmc_utils.core.trainer.perturb_init). Every checked cell must still match the
committed text.
"""

import os
import shutil
import subprocess
import sys

from tests.conftest import ROOT


def test_notebook_checks_pass_with_perturbed_initial_weights(tmp_path):
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    (tmp_path / "profiles").mkdir()
    shutil.copy(ROOT / "profiles" / "tiny.yaml", tmp_path / "profiles" / "tiny.yaml")
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")  # the file the tiny profile extends
    env = dict(os.environ, LLMC_PERTURB_INIT="1e-6", LLMC_QUIET="1")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--nbval-lax",
            "--nbval-current-env",
            f"--nbval-sanitize-with={ROOT / 'tests' / 'nbval_sanitize.cfg'}",
            "notebooks",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, f"perturbed nbval run failed:\n{out.stdout[-6000:]}\n{out.stderr[-2000:]}"
