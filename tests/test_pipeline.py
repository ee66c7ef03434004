"""End to end: the DVC pipeline on the tiny profile (two training pairs) in a temporary copy.

Checks that `dvc repro` runs every stage once per repetition and produces every declared output, that a second
`dvc repro` is a no-op, that retraining one pair reproduces its checkpoints byte for byte, and that changing one
parameter reruns only the stage that uses it (downstream stages are skipped when its outputs did not change).
"""

import re
import shutil

import pytest
import yaml

from llmc_utils.pipeline import profiles, registry
from llmc_utils.stages.spec import EVALUATION

pytestmark = pytest.mark.pipeline  # runs stages through DVC: scheduled first (tests/conftest.py)


def dvc(cwd, *args: str) -> str:
    out = profiles.dvc(cwd, *args)
    return out.stdout + out.stderr


def ran_stages(log: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", log))


def expanded_stages(workspace) -> list[str]:
    """Stage names as DVC runs them: a repeated stage once per repetition (name@index)."""
    return dvc(workspace, "stage", "list", "--name-only").split()


def declared_outputs(pipeline: dict, params: dict) -> list[str]:
    paths = []
    for stage in pipeline["stages"].values():
        body = stage.get("do", stage)
        items = params["repetitions"][stage["foreach"].split(".")[-1].rstrip("}")] if "foreach" in stage else [None]
        for entry in body.get("outs", []) + body.get("metrics", []) + body.get("plots", []):
            path = next(iter(entry)) if isinstance(entry, dict) else entry
            paths += [path.replace("${item}", str(item)) for item in items]
    return paths


# Two pairs (the alignment stage's cross pair needs two; the forced-rerun test retrains pair 1), one repetition of every
# other repeated stage: the aggregate over several repetitions of each of them is what tests/test_launch.py gathers.
REPETITIONS = {
    "repetitions": {s.name: [0, 1] if s.name == "train_pairs" else [0] for s in registry.repetition_owners()}
}


@pytest.fixture(scope="module")
def pipeline_copy(tmp_path_factory):
    return profiles.make_workspace(profiles.profile_path("tiny"), tmp_path_factory.mktemp("pipeline"), REPETITIONS)


def test_repro_produces_every_output(pipeline_copy):
    log = dvc(pipeline_copy, "repro")
    pipeline = yaml.safe_load((pipeline_copy / "dvc.yaml").read_text())
    params = yaml.safe_load((pipeline_copy / "params.yaml").read_text())
    assert ran_stages(log) == set(expanded_stages(pipeline_copy))
    assert {"train_pairs@0", "train_pairs@1", "aggregate", "report"} <= ran_stages(log)
    missing = [p for p in declared_outputs(pipeline, params) if not (pipeline_copy / p).exists()]
    assert not missing, f"declared but not produced: {missing}"


def test_second_repro_is_a_no_op(pipeline_copy):
    log = dvc(pipeline_copy, "repro")
    assert ran_stages(log) == set() and "up to date" in log


def test_forced_rerun_gives_identical_checkpoints(pipeline_copy):
    # same machine, seeds and thread count: retraining pair 1 from scratch writes byte-identical checkpoints and the
    # same metrics, so DVC finds every stage downstream of them up to date (another CPU may give other last digits;
    # the claims' intervals absorb that, see notebooks/conftest.py)
    metrics = pipeline_copy / "metrics" / "train_pairs" / "repetition_1.json"
    before = metrics.read_text()
    shutil.rmtree(pipeline_copy / "models" / "pair" / "repetition_1")  # persisted checkpoints: remove them to retrain
    assert ran_stages(dvc(pipeline_copy, "repro", "--force", "--single-item", "train_pairs@1")) == {"train_pairs@1"}
    assert metrics.read_text() == before
    downstream = ("layerwise_barriers@1", "cumulative_averaging@1", "alignment")
    assert "up to date" in dvc(pipeline_copy, "status", *downstream)


def test_changing_one_param_reruns_only_its_stage(pipeline_copy):
    params_path = pipeline_copy / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    # data.download only matters when no local copy exists: the stage reruns, its output is byte-identical,
    # so nothing downstream may rerun.
    params.setdefault("data", {})["download"] = not params["data"].get("download", False)
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    status = dvc(pipeline_copy, "status")
    assert "prepare_data" in status
    # check_params reruns on any edit of params.yaml; its stamp stays the same, so it reruns nothing by itself
    assert ran_stages(dvc(pipeline_copy, "repro")) == {"check_params", "prepare_data"}


def test_changing_eval_precision_marks_exactly_the_evaluating_stages(pipeline_copy):
    """runtime.eval_precision changes the numbers of every stage that evaluates barriers (stage setup applies it to
    them), so `dvc status` must list those stages as changed, and no other stage but check_params."""
    params_path = pipeline_copy / "params.yaml"
    original = params_path.read_text()
    params = yaml.safe_load(original)
    params["runtime"]["eval_precision"] = "bf16"
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        changed = set(re.findall(r"^(\w+)(?:@\d+)?:", dvc(pipeline_copy, "status"), flags=re.M))
    finally:
        params_path.write_text(original)
    evaluating = {s.name for s in registry.all_specs() if set(EVALUATION) <= set(s.reads)}
    assert evaluating >= {"layerwise_barriers", "cumulative_averaging", "alignment", "federated"}
    assert changed == evaluating | {"check_params"}
