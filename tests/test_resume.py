"""Nothing lost under DVC: an interrupted `dvc repro` resumes training, and a bad params file stops `dvc repro`
before any output is deleted.

The DVC tests drive the real pipeline (dvc.yaml, notebooks 01 and 08, papermill) on the tiny profile in a scratch
workspace, on fabricated Fashion-MNIST files (random pixels, so the chance guard is off), and run one training stage
at a time, train_pairs@0 and language_model@0 (the language models, like the ViT pair and the subspace MLPs, became
`persist` outputs later than the pairs): SIGKILL `dvc repro` and every process under it once model A has written its
epoch-1 checkpoint, rerun, and show that

* it resumed: every checkpoint written before the kill is the very same file afterwards (same inode, time and bytes;
  a restart from epoch 0 would have replaced each through a new temporary file), and the rerun's executed notebook
  says "resuming at epoch 1 of 3" for A, so A trained 2 epochs instead of 3;
* the outputs that must not persist (metrics, results, executed notebook) were written by the rerun;
* the final checkpoints equal an uninterrupted run's (same seeds, same thread count, same machine).

Every other checkpoint folder of dvc.yaml is declared `persist` the same way (checked without running it).
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml

from llmc_utils.core import data
from llmc_utils.core.trainer import OptimConfig, train_model
from llmc_utils.pipeline import check_params, profiles
from llmc_utils.pipeline.params import load_params
from llmc_utils.stages import language_model as lm
from llmc_utils.stages import train_pairs as pairs
from tests import fabricate

pytestmark = pytest.mark.pipeline  # runs stages through DVC: scheduled first (tests/conftest.py)

# ------------------------------------------------------------------------------------------- resume without DVC


def make_mlp():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def train(run_dir, checkpoint_epochs=(0, 1, 3)):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 1, 4, 4, generator=g), torch.randint(0, 3, (64,), generator=g)
    return train_model(
        make_mlp,
        x,
        y,
        OptimConfig(epochs=3, batch_size=16, lr=0.1),
        init_seed=0,
        data_seed=1,
        checkpoint_epochs=checkpoint_epochs,
        run_dir=run_dir,
        desc="toy",
    )


def identity(path: Path):
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns, path.read_bytes()


def assert_same_checkpoint(got: Path, want: Path):
    """Same epoch, meta, weights, optimizer momenta and data-order generator (the bytes may differ: pickle's layout
    of equal objects depends on their history)."""
    a, b = torch.load(got, weights_only=True), torch.load(want, weights_only=True)
    assert a["epoch"] == b["epoch"] and a["meta"] == b["meta"] and torch.equal(a["generator"], b["generator"])
    assert a["model"].keys() == b["model"].keys() and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    momenta = [
        (s["momentum_buffer"], t["momentum_buffer"])
        for s, t in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values())
    ]
    assert len(momenta) == len(b["optimizer"]["state"]) and all(torch.equal(s, t) for s, t in momenta), got


def test_resume_skips_finished_epochs_and_says_so(tmp_path, capsys):
    paths = train(tmp_path / "run")
    paths[-1].unlink()  # killed between epochs 1 and 3
    kept = {p: identity(p) for p in paths[:2]}
    capsys.readouterr()
    train(tmp_path / "run")
    assert "toy: resuming at epoch 1 of 3 from" in capsys.readouterr().out
    assert {p: identity(p) for p in paths[:2]} == kept  # not retrained, not rewritten
    assert_same_checkpoint(paths[-1], train(tmp_path / "fresh")[-1])


def test_a_run_killed_after_its_initial_checkpoint_keeps_it(tmp_path):
    paths = train(tmp_path / "run")
    for path in paths[1:]:
        path.unlink()
    kept = identity(paths[0])
    train(tmp_path / "run")
    assert identity(paths[0]) == kept  # the initial checkpoint is resumed from, not written again
    assert_same_checkpoint(paths[-1], train(tmp_path / "fresh")[-1])


def test_a_checkpoint_epoch_added_later_is_trained_not_skipped(tmp_path):
    train(tmp_path / "run", checkpoint_epochs=(0, 3))
    paths = train(tmp_path / "run", checkpoint_epochs=(0, 1, 3))  # epoch 1 is asked for after the run finished
    fresh = train(tmp_path / "fresh", checkpoint_epochs=(0, 1, 3))
    for got, want in zip(paths, fresh, strict=True):
        assert_same_checkpoint(got, want)


# --------------------------------------------------------------------------------------------------- under DVC
OVERRIDES = {
    "repetitions": {"train_pairs": [0]},
    # the tiny profile's pair (rescnn width 8, 3 epochs, checkpoints 0 1 3); random pixels, so the models
    # stay at chance level and the guard is off
    "train_pairs": {"curve_train_subset": 100, "curve_test_subset": 100, "chance_guard": False},
    # A then B in the notebook's own process, on one thread: a second thread only adds waiting on a busy
    # 2-core machine (measured: 0.1 s per epoch on one thread, 8 s on two while another job ran)
    "runtime": {"train_processes": 1, "num_threads": 1},
    # 128 steps per epoch instead of 32 (about 0.25 s): room for the kill between A's checkpoints 1 and 3
    "language_model": {"train_windows": 2048},
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The tiny profile's workspace with data/images.pt prepared and the check stamp written (in process: the DVC
    runs below are only train_pairs@0 and the check)."""
    tmp = tmp_path_factory.mktemp("resume")
    raw = fabricate.fashion_mnist(tmp / "raw", n_train=1024, n_test=100)
    ws = profiles.make_workspace(
        profiles.profile_path("tiny"), tmp / "ws", dict(OVERRIDES, data={"root": str(raw), "download": False})
    )
    data.prepare(load_params(ws / "params.yaml")["data"], ws)
    cwd = os.getcwd()
    os.chdir(ws)
    try:
        assert check_params.main([]) == 0
    finally:
        os.chdir(cwd)
    return ws


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL `dvc repro` and everything it started, as a killed job or a lost machine would: the notebook's kernel
    runs in a session of its own (jupyter_client), so killing the process group alone would leave it training."""
    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for process in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGKILL)
    psutil.wait_procs(tree, timeout=30)
    proc.wait()


# stage: (its checkpoint folder for repetition 0, what its notebook prints when model A resumes, its notebook)
KILLED = {
    "train_pairs": ("models/pair/repetition_0", "train A of pair 0: resuming at epoch 1 of 3 from", "01_train_pairs"),
    "language_model": (
        "models/language_model/repetition_0",
        "GPT A of repetition 0: resuming at epoch 1 of 3 from",
        "08_language_model",
    ),
}


def train_uninterrupted(stage: str, workspace: Path, reference: Path) -> dict[str, list[Path]]:
    """{member: checkpoint paths} of the stage's training run without interruption, in this process with the thread
    count its notebook sets, in the workspace folder `reference`."""
    params = load_params(workspace / "params.yaml")
    threads = torch.get_num_threads()
    torch.set_num_threads(getattr(params[stage], "threads", None) or params["runtime"].num_threads)
    try:
        if stage == "train_pairs":
            return pairs.train_pair(params[stage], data.load_prepared(data.prepared_path(workspace)), reference, 0)
        return lm.train_models(params[stage], lm.prepare(params[stage], 0), reference / KILLED[stage][0])
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("stage", list(KILLED))
def test_killed_dvc_repro_resumes_training(workspace, stage):
    folder, resumed, notebook = KILLED[stage]
    ckpt_dir = workspace / folder
    proc = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro", "-s", f"{stage}@0"],
        cwd=workspace,
        env=profiles.dvc_env(),
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 180
    while not (ckpt_dir / "A" / "epoch_0001.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    kill_tree(proc)
    at_kill = {p: identity(p) for p in sorted(ckpt_dir.rglob("epoch_*.pt"))}
    names = [str(p.relative_to(ckpt_dir)) for p in at_kill]
    assert "A/epoch_0001.pt" in names and "A/epoch_0003.pt" not in names, f"kill did not land mid-training: {names}"

    started = time.time_ns()
    log = profiles.dvc(workspace, "repro", "-s", f"{stage}@0")
    assert f"Running stage '{stage}@0'" in log.stdout
    # resumed: the checkpoints of before the kill are the same files, and A restarted at epoch 1
    assert {p: identity(p) for p in at_kill} == at_kill
    executed = json.loads((workspace / "reports" / "executed" / notebook / "repetition_0.ipynb").read_text())
    printed = "".join("".join(o.get("text", "")) for c in executed["cells"] for o in c.get("outputs", []))
    assert resumed in printed
    # outputs that must not persist stale were written again by the rerun
    for path in (f"metrics/{stage}/repetition_0.json", f"results/{stage}/repetition_0"):
        assert (workspace / path).stat().st_mtime_ns >= started, path
    assert not list(ckpt_dir.rglob("*.tmp"))

    # the final checkpoints equal an uninterrupted run's (what the notebook does, in this process, same threads)
    for paths in train_uninterrupted(stage, workspace, workspace.parent / "reference").values():
        for path in paths:
            assert_same_checkpoint(ckpt_dir / path.parent.name / path.name, path)


def test_every_checkpoint_folder_survives_an_interrupted_repro(root):
    """DVC deletes a stage's outputs before it reruns the stage, unless they are `persist`: every checkpoint folder
    under models/ must be, or a killed `dvc repro` would make its stage train from scratch."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    outs = [out for stage in stages.values() for out in stage.get("do", stage).get("outs", [])]
    models = {
        next(iter(out)) if isinstance(out, dict) else out: out
        for out in outs
        if str(next(iter(out)) if isinstance(out, dict) else out).startswith("models/")
    }
    assert {
        "models/pair/repetition_${item}",
        "models/robustness/repetition_${item}",
        "models/subspace_perturbations/repetition_${item}",
        "models/language_model/repetition_${item}",
        "models/bn_reset",
    } == set(models)
    assert all(isinstance(out, dict) and out[path] == {"persist": True} for path, out in models.items())


def snapshot(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".dvc" not in p.relative_to(folder).parts
    }


def test_bad_params_stop_dvc_repro_before_any_output_is_deleted(workspace):
    """The issue's typo (an alpha of 1.5) and a negative learning rate, which without the check would rerun
    train_pairs@0 and so delete its metrics, figures and results first."""
    params_path = workspace / "params.yaml"
    good = params_path.read_text()
    params = yaml.safe_load(good)
    params["layerwise_barriers"]["alphas"] = [0.25, 0.5, 1.5]
    params["train_pairs"]["optim"]["lr"] = -0.1
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    before = snapshot(workspace)
    try:
        out = profiles.dvc(workspace, "repro", check=False)
        assert out.returncode != 0
        assert snapshot(workspace) == before  # nothing deleted, nothing rewritten: not even the check's stamp
        assert "Traceback" not in out.stdout + out.stderr
        lines = out.stderr.strip().splitlines()
        # the message comes last, followed only by DVC's one-line note of which stage failed
        assert lines[-1].startswith("ERROR: failed to reproduce 'check_params'")
        assert lines[-4] == "error: invalid parameters:"
        assert (
            lines[-3].strip() == "params.yaml: train_pairs.optim.lr = -0.1 is not allowed: Input should be "
            "greater than 0"
        )
        assert (
            lines[-2].strip() == "params.yaml: layerwise_barriers.alphas.2 = 1.5 is not allowed: Input should be "
            "less than or equal to 1"
        )
        assert "Running stage 'train_pairs@0'" not in out.stdout
    finally:
        params_path.write_text(good)
