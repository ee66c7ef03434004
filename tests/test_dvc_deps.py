"""dvc.yaml is what the stage specs give, and the specs tell the truth: every stage depends on the code its notebook
imports and on every runtime key its code reads, and every stage runs after check_params, the stage that validates
params.yaml before DVC deletes any output."""

import json
import re
import subprocess
import sys

import pytest
import yaml

from llmc_utils.pipeline import dvc_yaml, registry
from llmc_utils.stages.spec import EVALUATION, TRAINING
from tests.conftest import ROOT

PIPELINE = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
NOTEBOOK_STAGES = [name for name in PIPELINE if "papermill" in PIPELINE[name].get("do", PIPELINE[name])["cmd"]]


def body(name: str) -> dict:
    return PIPELINE[name].get("do", PIPELINE[name])  # a repeated stage (foreach) keeps its body under `do`


def notebook_code(notebook: str) -> str:
    cells = json.loads((ROOT / "notebooks" / f"{notebook}.ipynb").read_text())["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


def test_dvc_yaml_is_what_the_specs_give():
    out = subprocess.run(
        [sys.executable, "scripts/write_dvc_yaml.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr


def test_every_stage_of_the_registry_is_in_dvc_yaml_in_notebook_order():
    names = [s.name for s in registry.all_specs()]
    assert list(PIPELINE) == ["check_params", *names]
    notebooks = [s.notebook for s in registry.stage_specs()]
    assert notebooks == sorted(notebooks) and len(set(notebooks)) == len(notebooks)


@pytest.mark.parametrize("spec", registry.all_specs(), ids=lambda s: s.name)
def test_stage_depends_on_its_notebook_and_every_module_it_imports(spec):
    deps = set(body(spec.name)["deps"])
    # the modules named in its notebook's import lines (`from llmc_utils.pkg import module, ...`, `from
    # llmc_utils.pkg.module import name`), read with a plain pattern, independently of dvc_yaml's parser
    direct = set()
    for package, names in re.findall(
        r"from (llmc_utils\.\w+(?:\.\w+)?) import ([\w, ]+)", notebook_code(spec.notebook)
    ):
        for name in (n.split(" as ")[0].strip() for n in names.split(",")):
            direct.add(f"{package}.{name}" if dvc_yaml.module_path(f"{package}.{name}") else package)
    files = {dvc_yaml.module_path(m) for m in direct} - {None} - dvc_yaml.SKIPPED
    assert f"notebooks/{spec.notebook}.ipynb" in deps
    assert files <= deps, sorted(files - deps)
    assert set(dvc_yaml.module_files(dvc_yaml.notebook_imports(spec.notebook))) <= deps


@pytest.mark.parametrize("spec", registry.stage_specs(), ids=lambda s: s.name)
def test_runtime_keys_declared_where_the_code_reads_them(spec):
    """A stage whose code evaluates barriers (llmc_utils.core.evaluation, whose precision, memory layout and cache
    stage setup sets) declares the evaluation keys; one whose notebook passes runtime.train_processes declares it."""
    # its notebook's and its module's code, stage setup aside (setup imports the evaluation module to configure it)
    imports = dvc_yaml.notebook_imports(spec.notebook) - {"llmc_utils.pipeline.stage"}
    code = dvc_yaml.module_files([*imports, dvc_yaml.stage_module(spec)])
    evaluates = "llmc_utils/core/evaluation.py" in code
    assert set(EVALUATION) <= set(spec.reads) if evaluates else not set(EVALUATION) & set(spec.reads), spec.name
    trains = "runtime.train_processes" in notebook_code(spec.notebook)
    assert (set(TRAINING) <= set(spec.reads)) == trains, spec.name
    assert set(body(spec.name)["params"]) >= set(spec.reads)


def test_check_params_runs_first_and_every_stage_waits_for_it():
    from llmc_utils.pipeline.check_params import STAMP

    check = PIPELINE["check_params"]
    assert "llmc_utils.pipeline.check_params" in check["cmd"] and "params.yaml" in check["deps"]
    assert [next(iter(o)) if isinstance(o, dict) else o for o in check["outs"]] == [str(STAMP)]
    # the check validates every section, so it reruns when any module defining one changes
    stage_modules = {f"llmc_utils/stages/{s.name}.py" for s in registry.stage_specs()}
    assert stage_modules <= set(check["deps"]), sorted(stage_modules - set(check["deps"]))
    assert list(PIPELINE)[0] == "check_params" and set(NOTEBOOK_STAGES) == set(PIPELINE) - {"check_params"}
    for name in NOTEBOOK_STAGES:
        assert str(STAMP) in body(name)["deps"], name


def test_every_declared_plot_is_a_pipeline_output():
    """`dvc plots show` renders what dvc.yaml declares: each plotted file lies in a stage's outputs (images: a figure
    output; data series: a per-repetition results folder), and data plots name their x and y columns."""
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    reps = yaml.safe_load((ROOT / "params.yaml").read_text())["repetitions"]["train_pairs"]
    outs = set()
    for stage in dvc["stages"].values():
        for out in stage.get("do", stage).get("outs", []):
            path = next(iter(out)) if isinstance(out, dict) else out
            outs |= {path.replace("${item}", str(r)) for r in reps} if "${item}" in path else {path}
    images = [p for p in dvc["plots"] if isinstance(p, str)]
    assert {f"figures/{f.stem}.png" for f in registry.report_figures()} <= set(images)
    assert set(images) <= outs
    series = [next(iter(p.values())) for p in dvc["plots"] if isinstance(p, dict)]
    assert series
    for plot in series:
        assert plot["x"] and all(plot["y"].values())
        for path in plot["y"]:
            assert any(path.startswith(out + "/") for out in outs), path
