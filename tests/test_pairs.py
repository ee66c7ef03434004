"""Pair training: seeds per scheme, checkpoint layout, resume = uninterrupted run, config validation."""

import pytest
import torch

from llmc_utils.core.config import ParamsError
from llmc_utils.core.data import ImageData
from llmc_utils.pipeline.params import validate_params
from llmc_utils.stages.train_pairs import TrainPairsConfig, load_pair, pair_checkpoints, pair_model, train_pair


def fake_images(n=48, side=8):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 1, side, side), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return ImageData(
        name="fake",
        classes=["a", "b", "c"],
        train_x=x,
        train_y=y,
        test_x=x[:16],
        test_y=y[:16],
        mean=torch.tensor([0.5]),
        std=torch.tensor([0.3]),
    )


def tiny_cfg(**kw):
    return TrainPairsConfig(
        width=2, train_subset=32, checkpoint_epochs=[0, 1, 2], optim=dict(epochs=2, batch_size=8, lr=0.01), **kw
    )


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    images, cfg = fake_images(), tiny_cfg()
    train_pair(cfg, images, tmp_path / "full")
    train_pair(cfg, images, tmp_path / "cut")
    for member in "AB":  # interrupt after epoch 1: the last checkpoint is gone, the rerun resumes from epoch 1
        (tmp_path / "cut" / "models" / "pair" / "repetition_0" / member / "epoch_0002.pt").unlink()
    train_pair(cfg, images, tmp_path / "cut")
    full, cut = load_pair(tmp_path / "full", 2), load_pair(tmp_path / "cut", 2)
    for s_full, s_cut in zip(full, cut):
        assert all(torch.equal(s_full[k], s_cut[k]) for k in s_full)


def test_schemes_layout_and_model_rebuild(tmp_path):
    images = fake_images()
    train_pair(tiny_cfg(scheme="same_init_different_order"), images, tmp_path / "same")
    train_pair(tiny_cfg(scheme="different_init"), images, tmp_path / "diff")
    ckpts = pair_checkpoints(tmp_path / "same")
    assert list(ckpts) == [0, 1, 2] and ckpts[2][0].name == "epoch_0002.pt" and ckpts[2][1].parent.name == "B"
    a0, b0 = load_pair(tmp_path / "same", 0)
    assert all(torch.equal(a0[k], b0[k]) for k in a0)  # same init
    a2, b2 = load_pair(tmp_path / "same", 2)
    assert not torch.equal(a2["conv1.weight"], b2["conv1.weight"])  # different data order
    c0, d0 = load_pair(tmp_path / "diff", 0)
    assert not torch.equal(c0["conv1.weight"], d0["conv1.weight"])
    model = pair_model(tmp_path / "same")
    model.load_state_dict(a2)
    assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 3)


def test_bad_pair_config_rejected_naming_the_key():
    with pytest.raises(ParamsError, match="checkpoint_epochs"):
        validate_params({"train_pairs": {"optim": {"epochs": 5}, "checkpoint_epochs": [0, 3, 8]}})
    with pytest.raises(ParamsError, match="checkpoint_epochs"):
        validate_params({"train_pairs": {"optim": {"epochs": 5}, "checkpoint_epochs": [1, 5]}})
    with pytest.raises(ParamsError, match="train_pairs.scheme"):
        validate_params({"train_pairs": {"scheme": "same_order"}})
    with pytest.raises(ParamsError, match="train_pairs.optim.lr"):
        validate_params({"train_pairs": {"optim": {"lr": -1}}})


def test_disjoint_halves_share_the_init_and_split_the_training_subset(tmp_path):
    from llmc_utils.stages.train_pairs import own_train_splits

    images, cfg = fake_images(), tiny_cfg(scheme="disjoint_halves")
    pair_1 = cfg.for_repetition(1)
    assert pair_1.member_seeds("A")[0] == pair_1.member_seeds("B")[0] != pair_1.member_seeds("B")[1]  # one init
    assert (cfg.member_images("A", 32), cfg.member_images("B", 32)) == (slice(0, 16), slice(16, 32))
    assert tiny_cfg().member_images("B", 32) == slice(0, 32)  # the other schemes: every image for both
    own = own_train_splits(images, cfg, 0, 0)
    x, y = images.split("train", cfg.train_subset, cfg.subset_seed)
    assert torch.equal(own["A"][0], x[:16]) and torch.equal(own["B"][0], x[16:])
    assert len(own_train_splits(images, cfg, 5, 0)["B"][1]) == 5
    train_pair(cfg, images, tmp_path)
    a0, b0 = load_pair(tmp_path, 0)
    assert all(torch.equal(a0[k], b0[k]) for k in a0)
    a2, b2 = load_pair(tmp_path, 2)
    assert not torch.equal(a2["conv1.weight"], b2["conv1.weight"])


def test_endpoint_fit_reads_each_member_on_its_own_images():
    from llmc_utils.stages.train_pairs import endpoint_fit, make_model, model_spec

    images, cfg = fake_images(), tiny_cfg(scheme="disjoint_halves")
    model = make_model(model_spec(cfg, images.shape, 3))
    state = model.state_dict()
    fit = endpoint_fit(images, cfg, model, state, state, 0, 0, suffix="_last")
    assert set(fit) == {f"own_train_{k}_{m}_last" for m in "AB" for k in ("loss", "error")}
    # the same weights on the two halves: the numbers differ because the images do
    assert fit["own_train_loss_A_last"] != fit["own_train_loss_B_last"]


def test_depth_applies_to_the_small_networks_only():
    assert TrainPairsConfig(arch="cnn", depth=2).depth == 2
    with pytest.raises(ValueError, match="depth=2 applies to cnn and rescnn only"):
        TrainPairsConfig(arch="resnet18", width=64, depth=2)
