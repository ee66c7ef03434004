"""Kill a training run half way (SIGKILL, no cleanup) and rerun: it completes, nothing corrupt or stray is left, and
the result equals an uninterrupted run."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from llmc_utils.core.io import load_checkpoint
from llmc_utils.core.trainer import OptimConfig, checkpoint_path, load_weights, train_model

EPOCHS = 12
SCRIPT = f"""
import sys, torch
from pathlib import Path
sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
from tests.test_reliability import train
train(Path(sys.argv[1]))
"""


def make_model():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))


def train(run_dir: Path):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2048, 64, generator=g), torch.randint(0, 4, (2048,), generator=g)
    return train_model(
        make_model,
        x,
        y,
        OptimConfig(epochs=EPOCHS, batch_size=32, lr=0.05),
        init_seed=0,
        data_seed=1,
        checkpoint_epochs=range(EPOCHS + 1),
        run_dir=run_dir,
    )


def test_killed_run_resumes_to_identical_result(tmp_path):
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(killed)])
    deadline = time.time() + 120
    while not checkpoint_path(killed, 2).exists() and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = sorted(p.name for p in killed.glob("epoch_*.pt"))
    assert 2 < len(written) < EPOCHS + 1, f"kill did not land half way: {written}"
    for path in killed.glob("epoch_*.pt"):  # whatever the kill interrupted, every visible checkpoint is complete
        load_checkpoint(path, ("model", "epoch"))

    resumed = train(killed)
    assert not list(killed.glob(".*.tmp")), "stray temporary files left behind"
    reference = train(tmp_path / "clean")
    a, b = load_weights(resumed[-1]), load_weights(reference[-1])
    assert all(torch.equal(a[k], b[k]) for k in a)
