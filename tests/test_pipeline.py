"""End to end: the DVC pipeline on the tiny profile in a temporary copy of the repository.

Checks that `dvc repro` produces every declared output, that a second `dvc repro` is a no-op, and that changing one
parameter reruns only the stage that uses it (downstream stages are skipped when its outputs did not change).
"""

import re

import pytest
import yaml

from llmc_utils import profiles


def dvc(cwd, *args: str) -> str:
    out = profiles.dvc(cwd, *args)
    return out.stdout + out.stderr


def ran_stages(log: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", log))


def declared_outputs(pipeline: dict) -> list[str]:
    paths = []
    for stage in pipeline["stages"].values():
        for entry in stage.get("outs", []) + stage.get("metrics", []) + stage.get("plots", []):
            paths.append(next(iter(entry)) if isinstance(entry, dict) else entry)
    return paths


@pytest.fixture(scope="module")
def pipeline_copy(tmp_path_factory):
    return profiles.make_workspace(profiles.profile_path("tiny"), tmp_path_factory.mktemp("pipeline"))


def test_repro_produces_every_output(pipeline_copy):
    log = dvc(pipeline_copy, "repro")
    pipeline = yaml.safe_load((pipeline_copy / "dvc.yaml").read_text())
    assert ran_stages(log) == set(pipeline["stages"])
    missing = [p for p in declared_outputs(pipeline) if not (pipeline_copy / p).exists()]
    assert not missing, f"declared but not produced: {missing}"


def test_second_repro_is_a_no_op(pipeline_copy):
    log = dvc(pipeline_copy, "repro")
    assert ran_stages(log) == set() and "up to date" in log


def test_forced_rerun_gives_identical_metrics(pipeline_copy):
    # same seeds and thread count: retraining the pair from scratch reproduces every number downstream exactly
    targets = ("train_pairs", "layerwise_barriers", "cumulative_averaging")
    before = {t: (pipeline_copy / "metrics" / f"{t}.json").read_text() for t in targets}
    assert ran_stages(dvc(pipeline_copy, "repro", "--force", *targets)) >= set(targets)
    assert {t: (pipeline_copy / "metrics" / f"{t}.json").read_text() for t in targets} == before


def test_changing_one_param_reruns_only_its_stage(pipeline_copy):
    params_path = pipeline_copy / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    # data.download only matters when no local copy exists: the stage reruns, its output is byte-identical,
    # so nothing downstream may rerun.
    params.setdefault("data", {})["download"] = not params["data"].get("download", False)
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    status = dvc(pipeline_copy, "status")
    assert "prepare_data" in status
    assert ran_stages(dvc(pipeline_copy, "repro")) == {"prepare_data"}
