"""Every DVC stage depends on every llmc_utils module its notebook imports, directly or through other modules, so
editing the package reruns exactly the stages it can change; and every stage runs after check_params, the stage that
validates params.yaml before DVC deletes any output."""

import ast
import json
import re

import pytest
import yaml

from tests.conftest import ROOT

ALWAYS_SKIPPED = {"__init__", "_torchvision_compat"}  # import plumbing, not logic
PIPELINE = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
NOTEBOOK_STAGES = [name for name in PIPELINE if "papermill" in PIPELINE[name].get("do", PIPELINE[name])["cmd"]]


def imported_modules(source: str) -> set[str]:
    """llmc_utils modules named by `import llmc_utils.x`, `from llmc_utils import x`, `from llmc_utils.x import y`."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("llmc_utils"):
            if node.module == "llmc_utils":
                found |= {a.name for a in node.names}
            else:
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("llmc_utils.")}
    return {m for m in found if (ROOT / "llmc_utils" / f"{m}.py").is_file()}


def closure(modules: set[str]) -> set[str]:
    todo, seen = list(modules), set()
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += imported_modules((ROOT / "llmc_utils" / f"{module}.py").read_text())
    return seen - ALWAYS_SKIPPED


@pytest.mark.parametrize("name", NOTEBOOK_STAGES)
def test_stage_depends_on_every_module_it_runs(name):
    stage = PIPELINE[name].get("do", PIPELINE[name])  # a repeated stage (foreach) keeps its body under `do`
    notebook = re.search(r"papermill (notebooks/\S+\.ipynb)", stage["cmd"]).group(1)
    cells = json.loads((ROOT / notebook).read_text())["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    needed = {f"llmc_utils/{m}.py" for m in closure(imported_modules(code))}
    assert notebook in stage["deps"]
    assert needed <= set(stage["deps"]), f"stage {name} misses deps {sorted(needed - set(stage['deps']))}"


def test_check_params_runs_first_and_every_stage_waits_for_it():
    from llmc_utils.check_params import STAMP
    from llmc_utils.config import SECTIONS

    check = PIPELINE["check_params"]
    assert "llmc_utils.check_params" in check["cmd"] and "params.yaml" in check["deps"]
    assert [next(iter(o)) if isinstance(o, dict) else o for o in check["outs"]] == [str(STAMP)]
    # the check validates every section, so it reruns when any module defining one changes
    sections = {target.split(":")[0].split(".")[1] for target in SECTIONS.values()}
    needed = {f"llmc_utils/{m}.py" for m in closure(sections | {"check_params"})}
    assert needed <= set(check["deps"]), sorted(needed - set(check["deps"]))
    assert list(PIPELINE)[0] == "check_params" and set(NOTEBOOK_STAGES) == set(PIPELINE) - {"check_params"}
    for name in NOTEBOOK_STAGES:
        assert str(STAMP) in PIPELINE[name].get("do", PIPELINE[name])["deps"], name


def test_every_declared_plot_is_a_pipeline_output():
    """`dvc plots show` renders what dvc.yaml declares: each plotted file lies in a stage's outputs (images: a figure
    output; data series: a per-repetition results folder), and data plots name their x and y columns."""
    from llmc_utils.report import FIGURES

    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    reps = yaml.safe_load((ROOT / "params.yaml").read_text())["repetitions"]["train_pairs"]
    outs = set()
    for stage in dvc["stages"].values():
        body = stage.get("do", stage)
        for out in body.get("outs", []):
            path = next(iter(out)) if isinstance(out, dict) else out
            outs |= {path.replace("${item}", str(r)) for r in reps} if "${item}" in path else {path}
    images = [p for p in dvc["plots"] if isinstance(p, str)]
    assert {f"figures/{stem}.png" for stem, _ in FIGURES} <= set(images)
    assert set(images) <= outs
    series = [next(iter(p.values())) for p in dvc["plots"] if isinstance(p, dict)]
    assert series
    for plot in series:
        assert plot["x"] and all(plot["y"].values())
        for path in plot["y"]:
            assert any(path.startswith(out + "/") for out in outs), path
