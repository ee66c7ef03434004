"""Robustness (Fig. 4): equal-norm random directions, layer-wise curves, headline fraction, tiny ViT, config errors."""

import pytest
import torch

from llmc_utils.core.config import ParamsError
from llmc_utils.core.evaluation import Evaluator, LayerEvaluator
from llmc_utils.core.layers import flat, logical_layers
from llmc_utils.core.vit import TinyViT, ViTConfig
from llmc_utils.pipeline.params import validate_params
from llmc_utils.stages import robustness


def toy_pair():
    gen = torch.Generator().manual_seed(0)
    a = {
        "l1.weight": torch.randn(3, 4, generator=gen),
        "l1.bias": torch.randn(3, generator=gen),
        "l2.weight": torch.randn(2, 3, generator=gen),
    }
    b = {k: v + torch.randn(v.shape, generator=gen) for k, v in a.items()}
    return a, b


def quadratic_loss(center):
    """evaluate(state) -> ||theta - center||^2 as the 'train loss': curves along lines are known by hand."""
    keys = list(center)
    return lambda state: {"train": {"loss": float((flat(state, keys) - flat(center, keys)).pow(2).sum())}}


def test_random_endpoint_has_the_distance_of_the_other_model():
    a, b = toy_pair()
    keys = ["l1.weight", "l1.bias"]
    r = robustness.random_endpoint(a, b, keys, seed=3)
    assert set(r) == set(a) and all(r[k] is a[k] for k in a if k not in keys)  # only the layer moves; rest shared
    distance = (flat(a, keys) - flat(b, keys)).norm()
    assert torch.isclose((flat(r, keys) - flat(a, keys)).norm(), distance, rtol=1e-5)
    again, other = robustness.random_endpoint(a, b, keys, 3), robustness.random_endpoint(a, b, keys, 4)
    assert torch.equal(flat(again, keys), flat(r, keys)) and not torch.allclose(flat(other, keys), flat(r, keys))
    # a random direction is almost orthogonal to B - A in 15 dimensions, never exactly B
    assert not torch.allclose(flat(r, keys), flat(b, keys))


def test_curves_start_at_the_base_model_and_follow_the_quadratic():
    a, b = toy_pair()
    layers = logical_layers(a)
    evaluate = quadratic_loss(b)  # minimum at B: moving a layer toward B must help, random must hurt
    df = robustness.layer_curves(evaluate, a, b, layers, [0.0, 0.5, 1.0], [0, 1], directions=["A->B"])
    assert len(df) == len(layers) * 3 * 3  # (interpolation + 2 draws) x 3 alphas, one split/metric
    zero = df[df.alpha == 0.0].value
    assert zero.eq(evaluate(a)["train"]["loss"]).all()  # alpha 0 is A itself for every layer and kind
    d2 = {n: float((flat(a, k) - flat(b, k)).pow(2).sum()) for n, k in layers.items()}
    total = sum(d2.values())
    for name in layers:
        row = df[(df.layer == name) & (df.kind == "interpolation")].set_index("alpha").value
        assert row[0.5] == pytest.approx(total - 0.75 * d2[name], rel=1e-5)  # (1 - alpha)^2 on that layer
        assert row[1.0] == pytest.approx(total - d2[name], rel=1e-5)
    summary = robustness.loss_increase(df, 1.0)
    # toward the minimum: the interpolation lowers the loss, random moves raise it, so every gap is negative
    assert (summary.increase_interpolation < 0).all() and (summary.gap < 0).all()
    assert summary.gap.to_numpy() == pytest.approx(
        (summary.increase_interpolation - summary.increase_random).to_numpy()
    )


def test_moving_away_from_the_minimum_along_the_pair_is_worse_than_random():
    a, b = toy_pair()
    center = {k: 2 * a[k] - b[k] for k in a}  # A between the minimum and B: toward B = straight uphill
    df = robustness.layer_curves(
        quadratic_loss(center), a, b, logical_layers(a), [0.0, 1.0], [0, 1, 2], directions=["A->B"]
    )
    summary = robustness.loss_increase(df, 1.0)
    # interpolation: (1+1)^2 D^2 - D^2 = 3 D^2; random: on average D^2 (orthogonal step), never more than 3 D^2
    assert (summary.gap > 0).all()
    assert (summary.increase_interpolation > summary.increase_random).all()


def test_b_to_a_moves_model_b():
    a, b = toy_pair()
    df = robustness.layer_curves(quadratic_loss(a), a, b, logical_layers(a), [0.0, 1.0], [0], directions=["B->A"])
    assert df[df.alpha == 0.0].value.eq(quadratic_loss(a)(b)["train"]["loss"]).all()


def test_tiny_vit_layers_and_evaluator_curves():
    cfg = ViTConfig(dim=8, depth=1, heads=2, patch=7, mlp_ratio=1)
    torch.manual_seed(0)
    model_a, model_b = TinyViT(cfg), TinyViT(cfg)
    layers = logical_layers(model_a.state_dict())
    assert list(layers) == [
        "patch_embed",
        "tokens",
        "block0.norm1",
        "block0.attn.qkv",
        "block0.attn.proj",
        "block0.norm2",
        "block0.mlp.fc1",
        "block0.mlp.fc2",
        "norm",
        "head",
    ]
    x, y = torch.randn(20, 1, 28, 28), torch.randint(0, 10, (20,))
    assert model_a(x).shape == (20, 10)
    evaluator = Evaluator(TinyViT(cfg), {"test": (x, y)})
    a, b = model_a.state_dict(), model_b.state_dict()
    df = robustness.layer_curves(evaluator, a, b, layers, [0.0, 1.0], [0])
    base = evaluator(a)["test"]
    at_zero = df[(df.alpha == 0.0) & (df.direction == "A->B")]
    assert at_zero[at_zero.metric == "loss"].value.eq(base["loss"]).all()
    head_swapped = evaluator({**a, "head.weight": b["head.weight"], "head.bias": b["head.bias"]})["test"]["loss"]
    got = df.query(
        "direction == 'A->B' and kind == 'interpolation' and layer == 'head' and alpha == 1.0 and metric == 'loss'"
    ).value.item()
    assert got == pytest.approx(head_swapped, rel=1e-6)
    # the ViT is an nn.Sequential: the cached evaluator re-runs only from the changed block, same numbers
    cached = robustness.layer_curves(
        LayerEvaluator(TinyViT(cfg), {"test": (x, y)}, batch_size=8), a, b, layers, [0.0, 1.0], [0]
    )
    assert cached.value.to_numpy() == pytest.approx(df.value.to_numpy(), rel=1e-5, abs=1e-6)


def test_checkpoint_comparison_and_gap():
    a, b = toy_pair()
    pairs = [(0, a, b), (5, b, a)]
    table = robustness.checkpoint_comparison(quadratic_loss(b), pairs, logical_layers(a), 0.5, [0, 1])
    assert set(table.kind) == {"base", "interpolation", "random"}
    assert (table[table.kind == "base"].groupby(["epoch", "direction", "layer"]).size() == 1).all()
    gap = robustness.checkpoint_gap(table)
    assert len(gap) == 2 * 2 * 2  # epochs x directions x layers (one split)
    assert set(gap.split) == {"train"}
    # epoch 0, A->B: toward the minimum is better than random
    assert (gap.query("epoch == 0 and direction == 'A->B'").gap < 0).all()


def test_vit_rejects_bad_shapes():
    with pytest.raises(ValueError, match="patch"):
        TinyViT(ViTConfig(patch=5))
    with pytest.raises(ValueError, match="heads"):
        TinyViT(ViTConfig(dim=10, heads=4))


@pytest.mark.parametrize(
    "section, needle",
    [
        ({"alphas": [0.0, 1.5]}, "robustness.alphas.1"),
        ({"alphas": [0.2, 1.0]}, "must contain 0.0"),
        ({"compare_alpha": 0.3}, "compare_alpha"),
        ({"random_seeds": []}, "random_seeds"),
        ({"random_seeds": [1, 1]}, "distinct"),
        ({"vit": {"depth": 0}}, "robustness.vit.depth"),
        ({"optim_b": robustness.RobustnessConfig().optim_a.model_dump(mode="json")}, "identical"),  # B = A's recipe
        ({"n_evall": 5}, "unknown key robustness.n_evall"),
        ({"n_train": 100, "n_eval": 200}, "must not exceed n_train"),
        ({"cnn_alpha": 0.0}, "cnn_alpha must be > 0"),
    ],
)
def test_config_errors(section, needle):
    with pytest.raises(ParamsError, match=needle.replace(".", r"\.")):
        validate_params({"robustness": section})


# ------------------------------------------------------------------------------------------- repetitions, data ---


def fake_images(n_train=300, n_test=100, seed=0):
    """An ImageData whose every training image is distinct (pixel 0 holds its index), so subsets can be traced."""
    from llmc_utils.core.data import ImageData

    gen = torch.Generator().manual_seed(seed)
    train_x = torch.randint(0, 256, (n_train, 1, 28, 28), generator=gen, dtype=torch.uint8)
    train_x[:, 0, 0, 0], train_x[:, 0, 0, 1] = torch.arange(n_train) % 256, torch.arange(n_train) // 256
    test_x = torch.randint(0, 256, (n_test, 1, 28, 28), generator=gen, dtype=torch.uint8)
    return ImageData(
        name="fake",
        classes=[str(i) for i in range(10)],
        train_x=train_x,
        train_y=torch.randint(0, 10, (n_train,), generator=gen),
        test_x=test_x,
        test_y=torch.randint(0, 10, (n_test,), generator=gen),
        mean=torch.tensor([0.5]),
        std=torch.tensor([0.25]),
    )


def rows_of(x):
    return {tuple(r.tolist()) for r in x.flatten(1)}


def test_repetition_offsets_every_seed_by_100_r():
    cfg = robustness.RobustnessConfig(random_seeds=[0, 1, 2])
    assert cfg.for_repetition(0) == cfg
    rep = cfg.for_repetition(2)
    assert rep.seeds() == dict(
        subset_seed=200, init_seed=200, data_seed_a=201, data_seed_b=202, random_seeds=[200, 201, 202]
    )
    assert rep.vit == cfg.vit and rep.optim_a == cfg.optim_a and rep.alphas == cfg.alphas  # only seeds change


def test_vit_train_split_is_made_of_training_images_and_test_is_not():
    images = fake_images()
    cfg = robustness.RobustnessConfig(n_train=120, n_eval=50, subset_seed=3)
    x_train, y_train, splits = robustness.vit_data(cfg, images)
    assert x_train.shape == (120, 1, 28, 28) and splits["train"][0].shape == (50, 1, 28, 28)
    assert rows_of(splits["train"][0]) <= rows_of(x_train)  # every "train" image is one the ViTs trained on
    assert not rows_of(splits["test"][0]) & rows_of(x_train)
    other = robustness.vit_data(cfg.for_repetition(1), images)[0]
    assert rows_of(other) != rows_of(x_train)  # another repetition trains on another subset


def test_cnn_train_split_comes_from_the_pairs_training_subset():
    from llmc_utils.stages.train_pairs import TrainPairsConfig, pair_splits

    images = fake_images()
    pair_cfg = TrainPairsConfig(train_subset=80, subset_seed=5)
    pair_x, _ = images.split("train", pair_cfg.train_subset, pair_cfg.subset_seed)  # what train_pair trains on
    cfg = robustness.RobustnessConfig(cnn_n_eval=40, n_eval=100, n_train=200)
    splits = pair_splits(images, pair_cfg, cfg.cnn_n_eval, cfg.cnn_n_eval, cfg.subset_seed)  # as notebook 05
    assert splits["train"][0].shape[0] == 40 and rows_of(splits["train"][0]) <= rows_of(pair_x)
    assert splits["test"][0].shape[0] == 40


def test_check_pair_subset_rejects_another_training_subset(tmp_path):
    from llmc_utils.core.io import CheckpointError, save_torch
    from llmc_utils.stages.train_pairs import TrainPairsConfig

    path = tmp_path / "epoch_0000.pt"
    save_torch(dict(meta=dict(train_subset=80, subset_seed=5)), path)
    robustness.check_pair_subset(path, TrainPairsConfig(train_subset=80, subset_seed=5))
    with pytest.raises(CheckpointError, match="train_subset"):
        robustness.check_pair_subset(path, TrainPairsConfig(train_subset=100, subset_seed=5))


def test_check_endpoints_stops_a_vit_at_chance():
    from llmc_utils.core.trainer import TrainingDiverged

    cfg = robustness.RobustnessConfig()
    good = {m: {"test": {"loss": 0.5, "error": 20.0}} for m in "AB"}
    robustness.check_endpoints(cfg, good, 10, repetition=1)
    with pytest.raises(TrainingDiverged, match="ViT B of repetition 1"):
        robustness.check_endpoints(cfg, {**good, "B": {"test": {"loss": 2.3, "error": 91.0}}}, 10, repetition=1)


# -------------------------------------------------------------------------------- engine, metrics, aggregation ---


def test_layer_evaluator_gives_the_same_curves_as_full_evaluation():
    from llmc_utils.core.evaluation import LayerEvaluator

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3)
    )
    a = {k: v.clone() for k, v in net.state_dict().items()}
    b = {k: v + 0.3 * torch.randn_like(v) for k, v in a.items()}
    splits = {
        "train": (torch.randn(40, 6), torch.randint(0, 3, (40,))),
        "test": (torch.randn(30, 6), torch.randint(0, 3, (30,))),
    }
    layers = logical_layers(a)
    full = robustness.layer_curves(Evaluator(net, splits), a, b, layers, [0.0, 0.5, 1.0], [0, 1])
    cached = robustness.layer_curves(LayerEvaluator(net, splits, batch_size=16), a, b, layers, [0.0, 0.5, 1.0], [0, 1])
    assert full.drop(columns="value").equals(cached.drop(columns="value"))
    assert cached.value.to_numpy() == pytest.approx(full.value.to_numpy(), rel=1e-5, abs=1e-6)


def test_step_norm_mismatch_is_rounding_only():
    a, b = toy_pair()
    assert robustness.step_norm_mismatch(a, b, logical_layers(a), [0, 1, 2]) < 1e-5
    assert robustness.step_norm_mismatch(a, a, logical_layers(a), [0]) == 0.0  # coinciding layers: no move at all


def vit_like_run(seed=0, epochs=(0, 2, 5)):
    """(endpoints, vit_summary, cnn_gap) of a toy pair with a quadratic loss, as the notebook builds them."""
    a, b = toy_pair()
    center = {k: 2 * a[k] - b[k] + 0.1 * seed for k in a}
    evaluate = lambda s: {
        split: {"loss": quadratic_loss(center)(s)["train"]["loss"] + i, "error": 10.0}
        for i, split in enumerate(("train", "test"))
    }
    layers = logical_layers(a)
    summary = robustness.loss_increase(robustness.layer_curves(evaluate, a, b, layers, [0.0, 1.0], [0, 1]), 1.0)
    table = robustness.checkpoint_comparison(evaluate, [(e, a, b) for e in epochs], layers, 0.5, [0, 1])
    endpoints = {"A": evaluate(a), "B": evaluate(b)}
    return endpoints, summary, robustness.checkpoint_gap(table)


def test_seed_metrics_are_flat_finite_and_hold_every_gap():
    endpoints, summary, gap = vit_like_run()
    cfg = robustness.RobustnessConfig()
    m = robustness.repetition_metrics(endpoints, summary, gap, cfg, 1e-7)
    assert all(isinstance(v, float) for v in m.values())
    vit_keys = [k for k in m if k.startswith("vit_gap/")]
    assert len(vit_keys) == 2 * 2 * 2  # directions x splits x layers
    cnn_keys = [k for k in m if k.startswith("cnn_gap/")]
    assert len(cnn_keys) == 2 * 2 * 2 and not any("/0/" in k for k in cnn_keys)  # trained checkpoints 2, 5 only
    assert m["vit_gap/A->B/test/l1"] == pytest.approx(
        summary.query("direction == 'A->B' and split == 'test' and layer == 'l1'").gap.item()
    )
    assert m["max_step_norm_mismatch"] == 1e-7 and m["n_cnn_checkpoints"] == 2.0
    assert robustness.trained_epochs([5]) == [5] and robustness.trained_epochs([0, 1, 3]) == [1, 3]
    paths = {0: "a0", 1: "a1", 3: "a3"}
    assert list(robustness.select_checkpoints(paths, "all")) == [0, 1, 3]
    assert list(robustness.select_checkpoints(paths, "trained")) == [1, 3]
    assert list(robustness.select_checkpoints(paths, "last")) == [3]
    with pytest.raises(ValueError, match="leaves no checkpoint"):
        robustness.select_checkpoints({0: "a0"}, "trained")


def write_seed_results(workspace, seeds):
    from llmc_utils.core.io import save_table

    a, b = toy_pair()
    for seed in seeds:
        endpoints, summary, gap = vit_like_run(seed)
        curves = robustness.layer_curves(
            quadratic_loss({k: v + seed for k, v in b.items()}), a, b, logical_layers(a), [0.0, 0.5, 1.0], [0, 1]
        )
        folder = workspace / "results" / "robustness" / f"repetition_{seed}"
        save_table(curves, folder / "vit_curves.csv")
        save_table(gap, folder / "cnn_gap.csv")


def test_aggregation_and_figures_over_repetitions(tmp_path):
    import matplotlib.pyplot as plt

    write_seed_results(tmp_path, [0, 1, 2])
    curves = robustness.aggregate_vit_curves(tmp_path, [0, 1, 2])
    assert sorted(curves.repetition.unique()) == [0, 1, 2]
    table = robustness.vit_gap_table(curves, 1.0)
    assert (table.n_repetitions == 3).all() and table["std"].notna().all() and "mean ± sd" in table
    gaps = robustness.aggregate_cnn_gaps(tmp_path, [0, 1, 2])
    for fig in (
        robustness.fig4_robustness(curves, 1.0, margin=0.01),
        robustness.fig4_robustness_cnn(gaps, 0.5),
        robustness.fig4_robustness(curves[curves.repetition == 0], 1.0),
    ):
        assert len(fig.axes) >= 2
        plt.close(fig)
    with pytest.raises(FileNotFoundError, match="robustness@3"):
        robustness.aggregate_vit_curves(tmp_path, [0, 3])
