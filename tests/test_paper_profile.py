"""The paper profile's code path (CIFAR-10 files -> ResNet18 without norm -> layer-wise barriers) at toy size, on
CIFAR-10 files the test fabricates, through the same DVC stages and notebooks as the real run."""

import json

import pandas as pd
import pytest
import torch

from llmc_utils.pipeline import profiles
from llmc_utils.pipeline.params import load_profile, validate_params
from tests import fabricate

pytestmark = pytest.mark.pipeline  # runs stages through DVC: scheduled first (tests/conftest.py)

TOY = {
    "runtime": {"progress": False, "device": "cpu"},
    "repetitions": {"train_pairs": [0], "robustness": [0]},
    "train_pairs": {
        "optim": {"epochs": 1, "batch_size": 16},
        "checkpoint_epochs": [0, 1],
        "chance_guard": False,
        "curve_train_subset": 16,
        "curve_test_subset": 8,
    },
    "layerwise_barriers": {"train_subset": 16, "test_subset": 8, "alphas": [0.5]},
}


def test_paper_profile_is_the_papers_setting():
    params = load_profile(profiles.profile_path("paper"))
    validate_params(params)
    pairs = params["train_pairs"]
    assert params["data"]["dataset"] == "cifar10" and pairs["arch"] == "resnet18"
    assert pairs["scheme"] == "same_init_different_order"
    assert pairs["optim"] == {
        "epochs": 200,
        "batch_size": 64,
        "lr": 0.05,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "schedule": "constant",
        "warmup_epochs": 0,
    }
    assert pairs["checkpoint_epochs"] == list(range(0, 201, 20))


def test_paper_code_path_on_fabricated_cifar(tmp_path):
    fabricate.cifar10(tmp_path / "raw", per_batch=8)  # 40 training and 8 test images in the real pickle format
    overrides = dict(TOY, data={"root": str(tmp_path / "raw"), "download": False})
    ws = profiles.make_workspace(profiles.profile_path("paper"), tmp_path / "ws", overrides)
    profiles.dvc(ws, "repro", "layerwise_barriers@0")

    ckpt = torch.load(ws / "models" / "pair" / "repetition_0" / "B" / "epoch_0001.pt", weights_only=True)
    assert ckpt["meta"]["spec"]["arch"] == "resnet18" and ckpt["meta"]["spec"]["in_channels"] == 3
    table = pd.read_csv(ws / "results" / "layerwise_barriers" / "repetition_0" / "barriers.csv")
    layer_sets = set(table.layer_set)
    assert "full" in layer_sets and len(layer_sets - {"full"}) == 21  # ResNet18 without norm: 21 logical layers
    assert set(table.epoch) == {0, 1} and set(table.base) == {"A", "B"}
    metrics = json.loads((ws / "metrics" / "layerwise_barriers" / "repetition_0.json").read_text())
    assert metrics["last_epoch"] == 1
    assert json.loads((ws / "metrics" / "train_pairs" / "repetition_0.json").read_text())["arch"] == "resnet18"
