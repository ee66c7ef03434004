"""Scale out on one machine with several devices (llmc_utils.pipeline.launch.run_queue): DVC's experiment queue runs
one experiment per repetition, each exported for the gather. Its own module, so that a second pytest-xdist worker runs
it beside the launch test (tests/test_launch.py). Checks files, names and repetitions, no trained number."""

import json

import pytest
import yaml

from llmc_utils.pipeline import launch, profiles

pytestmark = pytest.mark.pipeline  # runs stages through DVC: scheduled first (tests/conftest.py)


def test_queue_runs_one_experiment_per_repetition(repo_snapshot, tmp_path):
    exported = launch.run_queue(
        profiles.profile_path("tiny"),
        [0, 1],
        tmp_path,
        ["cpu", "cpu"],
        {"runtime": {"num_threads": 1}},
        targets=["train_pairs"],
        poll_s=2,
    )
    for r, tree in exported.items():
        assert (tree / "metrics" / "train_pairs" / f"repetition_{r}.json").is_file()
        assert yaml.safe_load((tree / "params.yaml").read_text())["repetitions"]["train_pairs"] == [r]
    shown = profiles.dvc(tmp_path / "queue", "exp", "show", "--json").stdout
    revs = [rev for row in json.loads(shown) for exp in row.get("experiments") or [] for rev in exp["revs"]]
    assert {rev["name"] for rev in revs} == {"repetition_0", "repetition_1"}
    for rev in revs:
        repetition = rev["name"].split("_")[1]
        metrics = rev["data"]["metrics"][f"metrics/train_pairs/repetition_{repetition}.json"]
        assert "data" in metrics and metrics["data"]
