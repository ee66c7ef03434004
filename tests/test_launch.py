"""Scale out (llmc_utils.pipeline.launch): repetitions in workspaces of their own, run by submitit's local executor
(DVC's experiment queue: tests/test_queue.py), gathered into one claims table; a DVC remote that lets a fresh workspace
pull checkpoints.

One launch of two tiny repetitions (module fixture, with the gather and a remote) serves the launch, gather, resubmit
and remote tests. Nothing here compares a trained number: files, repetitions, stages run or skipped, claims and verdict
columns. The launch runs on a snapshot of the sources, so a file edited in the checkout meanwhile cannot make the
resubmit test see changed code.
"""

import contextlib
import io
import json

import pandas as pd
import pytest
import yaml

from llmc_utils.core.claims import VERDICTS
from llmc_utils.pipeline import launch, profiles, report

pytestmark = pytest.mark.pipeline  # runs stages through DVC: scheduled first (tests/conftest.py)

TINY = ["tiny", "--repetitions", "0-1", "--executor", "local", "--set", "runtime.num_threads=1"]


def run_main(argv) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = launch.main(argv)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def launched(repo_snapshot, tmp_path_factory):
    dest = tmp_path_factory.mktemp("launch")
    code, out = run_main([*TINY, "--dest", str(dest), "--remote", str(dest / "remote"), "--gather"])
    print(out)
    assert code == 0, out
    return dest, out


def test_parse_repetitions():
    assert launch.parse_repetitions("0-4") == [0, 1, 2, 3, 4]
    assert launch.parse_repetitions("7,0,2") == [0, 2, 7]
    assert launch.parse_repetitions("0-2,7,1") == [0, 1, 2, 7]
    for bad in ("", "a", "3-1", "-1", "0-", "1.5"):
        with pytest.raises(ValueError, match="bad repetitions"):
            launch.parse_repetitions(bad)
    # at most MAX_REPETITIONS distinct repetitions (overlaps counted once) without --many-repetitions; counted before
    # any list is made
    assert len(launch.parse_repetitions("0-999,500-999,7")) == launch.MAX_REPETITIONS == 1000
    with pytest.raises(ValueError, match="--repetitions 0-1000 asks for 1,001 repetitions"):
        launch.parse_repetitions("0-1000")
    with pytest.raises(ValueError, match="asks for 100,000,000,000 repetitions"):
        launch.parse_repetitions("5,0-99999999999")
    assert len(launch.parse_repetitions("0-1000", limit=None)) == 1001


@pytest.mark.parametrize(
    "argv, message",
    [
        (["tiny", "--repetitions", "2-0"], "bad repetitions '2-0'"),
        (["no_such_profile", "--repetitions", "0"], "unknown profile 'no_such_profile'"),
        (["tiny", "--repetitions", "0", "--set", "runtime"], "bad --set 'runtime'"),
        (["tiny", "--repetitions", "0", "--executor", "slurm"], "`sbatch` is not on PATH"),
        (["tiny", "--repetitions", "0", "--executor", "queue", "--remote", "x"], "--remote is for the local and slurm"),
    ],
)
def test_usage_errors_name_the_problem(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here (nor anywhere on this machine)
    assert launch.main([*argv, "--dest", str(tmp_path / "dest")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "dest").exists()  # stopped before any workspace was made


def test_repetition_targets_split_run_once_and_gather_stages():
    first, other = launch.repetition_targets(profiles.REPO, True), launch.repetition_targets(profiles.REPO, False)
    assert {"train_pairs", "layerwise_barriers", "alignment"} <= set(other)
    assert {"prepare_data", "deep_linear", "bn_reset"} <= set(first) - set(other)
    assert not set(launch.GATHER_STAGES) & set(first)


def test_each_repetition_ran_in_its_own_workspace(launched):
    dest, out = launched
    assert "2 job(s) submitted" in out
    for r, other in ((0, 1), (1, 0)):
        ws = dest / f"repetition_{r}"
        params = yaml.safe_load((ws / "params.yaml").read_text())
        assert all(v == [r] for v in params["repetitions"].values())
        assert (ws / "metrics" / "train_pairs" / f"repetition_{r}.json").is_file()
        assert (ws / "metrics" / "alignment" / f"repetition_{r}.json").is_file()
        assert not (ws / "metrics" / "train_pairs" / f"repetition_{other}.json").exists()
        assert not (ws / "metrics" / "report.json").exists()  # aggregate and report run only in the gather
    # the stages that run once ran in the lowest repetition's workspace only
    assert (dest / "repetition_0" / "metrics" / "deep_linear.json").is_file()
    assert not (dest / "repetition_1" / "metrics" / "deep_linear.json").exists()
    assert list((dest / "submitit").glob("*/*_log.out"))


def test_gather_has_every_claim_over_both_repetitions(launched):
    dest, out = launched
    gather = dest / "gather"
    assert "gather: ran ['check_params', 'aggregate', 'report']" in out
    assert all(v == [0, 1] for v in yaml.safe_load((gather / "params.yaml").read_text())["repetitions"].values())
    claims = pd.read_csv(gather / "results" / "report" / "claims.csv")
    assert {"source", "claim", "n", "mean", "low", "high", "verdict", "near_threshold"} <= set(claims.columns)
    assert set(claims.verdict) <= set(VERDICTS)
    assert (claims[claims.source.str.startswith("Fig. 1")].n == 2).all()
    assert claims.claim.str.contains("single-layer").any()
    summary = json.loads((gather / "metrics" / "report.json").read_text())
    counted = claims[claims.sensitivity_of.isna()]  # sensitivity rows (another reading of a claim) are not counted
    assert summary["n_claims"] == len(counted) > 0 and len(counted) < len(claims)
    assert report.figure_paths(gather / "figures")  # every figure the report shows exists
    assert (gather / "reports" / "report.html").is_file()
    metrics = report.load_metrics(gather / "metrics")
    for stage in ("train_pairs", "layerwise_barriers", "federated", "language_model", "alignment"):
        assert set(metrics[stage]) == {0, 1}, stage
    assert set(pd.read_csv(gather / "results" / "alignment" / "barriers.csv").repetition) == {0, 1}
    print("\n".join(line for line in out.splitlines() if " done in " in line))


def test_resubmitting_skips_finished_repetitions(launched, capsys):
    dest, _ = launched
    code, out = run_main([*TINY, "--dest", str(dest), "--remote", str(dest / "remote")])
    assert code == 0, out
    assert "repetition 0: up to date" in out and "repetition 1: up to date" in out
    assert "0 job(s) submitted, 2 repetition(s) skipped" in out


def test_fresh_workspace_pulls_checkpoints_instead_of_retraining(launched, tmp_path, monkeypatch):
    dest, _ = launched
    remote = dest / "remote"
    assert (remote / launch.LOCKS / "tiny" / "repetition_0.lock").is_file()  # the job kept its dvc.lock there
    ws = profiles.make_workspace(
        profiles.profile_path("tiny"),
        tmp_path / "repetition_0",
        launch.with_repetitions(profiles.profile_path("tiny"), {}, [0]),
    )
    launch.configure_remote(ws, remote)
    checkpoints = {}
    stream = launch._stream

    def spy(workspace, *args, check=True):  # what the pull left, just before `dvc repro`
        if args[0] == "repro":
            checkpoints.update(
                {p: p.stat().st_mtime_ns for p in (ws / "models" / "pair" / "repetition_0").rglob("*.pt")}
            )
        return stream(workspace, *args, check=check)

    monkeypatch.setattr(launch, "_stream", spy)
    result = launch.run_repetition(str(ws), ["train_pairs@0"], str(remote), "tiny/repetition_0.lock")
    assert checkpoints, "dvc pull restored no checkpoint of pair 0"
    assert {p: p.stat().st_mtime_ns for p in checkpoints} == checkpoints  # not retrained: files untouched
    assert (ws / "data" / "images.pt").is_file()
    assert "train_pairs@0" in result["ran"]  # its uncached outputs (curves, metrics) were recomputed
    assert launch.state(ws, ["train_pairs@0"]) == "done"
