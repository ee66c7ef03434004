"""CONTRIBUTING.md's worked example is real: its three files (a stage module, a notebook, a params.yaml section), added
to a copy of the repository with no other edit, make a repeated stage that the registry, dvc.yaml, params validation,
the aggregate stage and the report pick up; and its notebook runs on a small trained pair."""

import json
import os
import re
import shutil
import subprocess
import sys

import nbformat
import pytest
import yaml

from tests.conftest import ROOT

pytestmark = pytest.mark.pipeline  # runs stages through DVC: scheduled first (tests/conftest.py)

MODULE, NOTEBOOK, PARAMS = "llmc_utils/stages/layer_norms.py", "notebooks/13_layer_norms.ipynb", "params.yaml"


def example_files() -> dict[str, str]:
    """{path: text} of the numbered files in CONTRIBUTING.md's worked example."""
    section = (ROOT / "CONTRIBUTING.md").read_text().split("## Adding a repeated stage")[1].split("\n## ")[0]
    return dict(re.findall(r"\*\*\d\. `([^`]+)`\*\*.*?```\w*\n(.*?)```", section, flags=re.S))


def notebook_from_percent(source: str) -> str:
    """A notebook from a jupytext percent script: one code cell per `# %%` marker, `tags=["parameters"]` kept."""
    nb = nbformat.v4.new_notebook()
    for chunk in re.split(r"(?m)^# %%", source)[1:]:
        header, _, body = chunk.partition("\n")
        cell = nbformat.v4.new_code_cell(body.strip("\n"))
        if "parameters" in header:
            cell.metadata["tags"] = ["parameters"]
        nb.cells.append(cell)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nbformat.writes(nb)


def run(cwd, *args, check=True) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        PYTHONPATH=str(cwd),
        LLMC_QUIET="1",
        PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    out = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert not check or out.returncode == 0, out.stdout + out.stderr
    return out


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    copy = tmp_path_factory.mktemp("contributing") / "repo"
    for name in ("llmc_utils", "notebooks", "scripts", "profiles"):
        shutil.copytree(ROOT / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(ROOT / name, copy / name)
    files = example_files()
    assert set(files) == {MODULE, NOTEBOOK, PARAMS}
    (copy / MODULE).write_text(files[MODULE])
    (copy / NOTEBOOK).write_text(notebook_from_percent(files[NOTEBOOK]))
    with open(copy / PARAMS, "a") as params:
        params.write("\n" + files[PARAMS])
    run(copy, "scripts/write_dvc_yaml.py")
    return copy


def test_dvc_yaml_gets_the_stage_and_what_follows_from_it(repo):
    old = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    new = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    assert list(new).index("layer_norms") == list(new).index("bn_reset") + 1  # notebook order, before aggregate
    entry = new["layer_norms"]
    assert entry["foreach"] == "${repetitions.train_pairs}"
    body = entry["do"]
    assert {MODULE, NOTEBOOK, "models/pair/repetition_${item}"} <= set(body["deps"])
    assert body["params"][0] == "layer_norms"
    outs = [next(iter(o)) for o in body["outs"]]
    assert "results/layer_norms/repetition_${item}" in outs
    assert [next(iter(m)) for m in body["metrics"]] == ["metrics/layer_norms/repetition_${item}.json"]
    assert MODULE in new["aggregate"]["deps"] and "results/layer_norms" in new["aggregate"]["deps"]
    assert "figures/figB_layer_norms.png" in [next(iter(o)) for o in new["aggregate"]["outs"]]
    assert {"figures/figB_layer_norms.png", "metrics/layer_norms", MODULE} <= set(new["report"]["deps"])
    assert MODULE in new["check_params"]["deps"]
    untouched = set(old) - {"check_params", "aggregate", "report"}
    assert {name: new[name] for name in untouched} == {name: old[name] for name in untouched}


def test_params_validate_the_new_section(repo, tmp_path):
    run(repo, "-m", "llmc_utils.pipeline.check_params", "params.yaml", "--stamp", str(tmp_path / "ok.txt"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: " + str(repo / "params.yaml") + "\nlayer_norms: {relative: sometimes}\n")
    out = run(
        repo, "-m", "llmc_utils.pipeline.check_params", str(bad), "--stamp", str(tmp_path / "no.txt"), check=False
    )
    assert out.returncode == 2 and "layer_norms.relative = 'sometimes' is not allowed" in out.stderr


def test_the_notebook_runs_on_a_trained_pair(repo, tmp_path):
    workspace = tmp_path / "ws"
    run(
        repo,
        "-c",
        f"""
import torch
from llmc_utils.core.data import ImageData
from llmc_utils.stages.train_pairs import TrainPairsConfig, train_pair

g = torch.Generator().manual_seed(0)
x, y = torch.randint(0, 256, (48, 1, 8, 8), dtype=torch.uint8, generator=g), torch.randint(0, 3, (48,), generator=g)
images = ImageData(name="fake", classes=["a", "b", "c"], train_x=x, train_y=y, test_x=x[:16], test_y=y[:16],
                   mean=torch.tensor([0.5]), std=torch.tensor([0.3]))
cfg = TrainPairsConfig(width=2, train_subset=32, checkpoint_epochs=[0, 1], optim=dict(epochs=1, batch_size=8, lr=0.01))
train_pair(cfg, images, {str(workspace)!r})
""",
    )
    executed = tmp_path / "executed.ipynb"
    papermill = shutil.which("papermill", path=os.path.dirname(sys.executable)) or "papermill"
    out = subprocess.run(
        [
            papermill,
            "--engine",
            "llmc",
            NOTEBOOK,
            str(executed),
            "-p",
            "params_file",
            "profiles/tiny.yaml",
            "-p",
            "workspace",
            str(workspace),
        ],
        cwd=repo,
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(repo), LLMC_QUIET="1"),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    printed = "".join(
        "".join(o.get("text", "")) for c in json.loads(executed.read_text())["cells"] for o in c.get("outputs", [])
    )
    assert "layers: ['conv1'" in printed and "checkpoints: [0, 1]" in printed
    metrics = json.loads((workspace / "metrics" / "layer_norms" / "repetition_0.json").read_text())
    assert metrics["largest_relative_norm"] > 0
