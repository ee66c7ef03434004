"""Robustness (Fig. 4): equal-norm random directions, layer-wise curves, headline fraction, tiny ViT, config errors."""

import pytest
import torch

from llmc_utils import robustness
from llmc_utils.config import ParamsError, validate_params
from llmc_utils.evaluation import Evaluator
from llmc_utils.layers import flat, logical_layers
from llmc_utils.vit import TinyViT, ViTConfig


def toy_pair():
    gen = torch.Generator().manual_seed(0)
    a = {"l1.weight": torch.randn(3, 4, generator=gen), "l1.bias": torch.randn(3, generator=gen),
         "l2.weight": torch.randn(2, 3, generator=gen)}
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
    assert set(r) == set(keys)  # only the layer's tensors
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
    assert robustness.fraction_worse(summary) == {"A->B": {"train": 0.0}}


def test_moving_away_from_the_minimum_along_the_pair_is_worse_than_random():
    a, b = toy_pair()
    center = {k: 2 * a[k] - b[k] for k in a}  # A between the minimum and B: toward B = straight uphill
    df = robustness.layer_curves(quadratic_loss(center), a, b, logical_layers(a), [0.0, 1.0], [0, 1, 2],
                                 directions=["A->B"])
    summary = robustness.loss_increase(df, 1.0)
    # interpolation: (1+1)^2 D^2 - D^2 = 3 D^2; random: on average D^2 (orthogonal step), never more than 3 D^2
    assert summary.interpolation_worse.all()
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
    assert list(layers) == ["patch_embed", "tokens", "blocks.0.norm1", "blocks.0.attn.qkv", "blocks.0.attn.proj",
                            "blocks.0.norm2", "blocks.0.mlp.fc1", "blocks.0.mlp.fc2", "norm", "head"]
    x, y = torch.randn(20, 1, 28, 28), torch.randint(0, 10, (20,))
    assert model_a(x).shape == (20, 10)
    evaluator = Evaluator(TinyViT(cfg), {"test": (x, y)})
    a, b = model_a.state_dict(), model_b.state_dict()
    df = robustness.layer_curves(evaluator, a, b, layers, [0.0, 1.0], [0])
    base = evaluator(a)["test"]
    at_zero = df[(df.alpha == 0.0) & (df.direction == "A->B")]
    assert at_zero[at_zero.metric == "loss"].value.eq(base["loss"]).all()
    head_swapped = evaluator({**a, "head.weight": b["head.weight"], "head.bias": b["head.bias"]})["test"]["loss"]
    got = df.query("direction == 'A->B' and kind == 'interpolation' and layer == 'head' and alpha == 1.0 "
                   "and metric == 'loss'").value.item()
    assert got == pytest.approx(head_swapped, rel=1e-6)


def test_checkpoint_comparison_and_gap():
    a, b = toy_pair()
    pairs = [(0, a, b), (5, b, a)]
    table = robustness.checkpoint_comparison(quadratic_loss(b), pairs, logical_layers(a), 0.5, [0, 1])
    assert set(table.kind) == {"base", "interpolation", "random"}
    assert (table[table.kind == "base"].groupby(["epoch", "direction", "layer"]).size() == 1).all()
    gap = robustness.checkpoint_gap(table)
    assert len(gap) == 2 * 2 * 2  # epochs x directions x layers
    # epoch 0, A->B: toward the minimum is better than random
    assert (gap.query("epoch == 0 and direction == 'A->B'").gap < 0).all()


def test_vit_rejects_bad_shapes():
    with pytest.raises(ValueError, match="patch"):
        TinyViT(ViTConfig(patch=5))
    with pytest.raises(ValueError, match="heads"):
        TinyViT(ViTConfig(dim=10, heads=4))


@pytest.mark.parametrize("section, needle", [
    ({"alphas": [0.0, 1.5]}, "robustness.alphas.1"),
    ({"alphas": [0.2, 1.0]}, "must contain 0.0"),
    ({"compare_alpha": 0.3}, "compare_alpha"),
    ({"random_seeds": []}, "random_seeds"),
    ({"random_seeds": [1, 1]}, "distinct"),
    ({"vit": {"depth": 0}}, "robustness.vit.depth"),
    ({"optim_b": {"epochs": 10, "batch_size": 128, "lr": 0.1, "weight_decay": 1e-4, "schedule": "cosine",
                  "warmup_epochs": 1, "grad_clip": 1.0}}, "identical"),
    ({"n_evall": 5}, "unknown key robustness.n_evall"),
    ({"n_eval": 100, "cnn_n_eval": 200}, "must not exceed"),
])
def test_config_errors(section, needle):
    with pytest.raises(ParamsError, match=needle.replace(".", r"\.")):
        validate_params({"robustness": section})
