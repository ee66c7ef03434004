"""Layer-wise barrier engine on toy models whose answers are known by hand."""

import math

import pytest
import torch
from torch import nn

from llmc_utils.core.config import ParamsError
from llmc_utils.core.evaluation import FULL, Evaluator, LayerEvaluator, barrier
from llmc_utils.core.layers import logical_layers, mix
from llmc_utils.pipeline.params import validate_params
from llmc_utils.stages.layerwise_barriers import (
    LayerwiseBarriersConfig,
    barrier_table,
    cell_metrics,
    headline_metrics,
    max_over_alpha,
    noise_floor,
    wide,
)


def toy_pair(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3))
    state_a = {k: v.clone() for k, v in model.state_dict().items()}
    state_b = {k: torch.randn_like(v) for k, v in state_a.items()}
    return model, state_a, state_b


def toy_splits(n=50):
    g = torch.Generator().manual_seed(1)
    return {
        "train": (torch.randn(n, 3, generator=g), torch.randint(0, 3, (n,), generator=g)),
        "test": (torch.randn(n, 3, generator=g), torch.randint(0, 3, (n,), generator=g)),
    }


def test_mix_alpha_endpoints_and_midpoint_both_bases():
    a = {"l.weight": torch.tensor([0.0, 2.0]), "l.bias": torch.tensor([4.0]), "m.weight": torch.tensor([1.0])}
    b = {"l.weight": torch.tensor([2.0, 6.0]), "l.bias": torch.tensor([0.0]), "m.weight": torch.tensor([3.0])}
    keys = logical_layers(a)["l"]
    assert torch.equal(mix(a, b, 0.5, keys, "A")["l.weight"], torch.tensor([1.0, 4.0]))
    assert torch.equal(mix(a, b, 0.5, keys, "A")["m.weight"], torch.tensor([1.0]))  # untouched layer from A
    assert torch.equal(mix(a, b, 0.5, keys, "B")["m.weight"], torch.tensor([3.0]))  # untouched layer from B
    assert torch.equal(mix(a, b, 0.5, keys, "B")["l.bias"], torch.tensor([2.0]))
    for base in "AB":
        assert torch.equal(mix(a, b, 0.0, keys, base)["l.weight"], a["l.weight"])
        assert torch.equal(mix(a, b, 1.0, keys, base)["l.weight"], b["l.weight"])
    assert torch.equal(mix(a, b, 0.25)["m.weight"], torch.tensor([1.5]))


def test_full_barrier_known_by_hand():
    # logits = bias only; A = (c, 0), B = (0, c), label 0: midpoint (c/2, c/2) has loss ln 2
    c = 3.0
    model = nn.Linear(1, 2)
    a = {"weight": torch.zeros(2, 1), "bias": torch.tensor([c, 0.0])}
    b = {"weight": torch.zeros(2, 1), "bias": torch.tensor([0.0, c])}
    ev = Evaluator(model, {"train": (torch.zeros(4, 1), torch.zeros(4, dtype=torch.long))})
    la, lb, mid = ev(a)["train"]["loss"], ev(b)["train"]["loss"], ev(mix(a, b, 0.5))["train"]["loss"]
    assert la == pytest.approx(math.log1p(math.exp(-c)))
    assert lb == pytest.approx(math.log1p(math.exp(c)))
    assert barrier(mid, la, lb) == pytest.approx(math.log(2) - (la + lb) / 2)


def test_loss_is_exact_mean_whatever_the_batch_size():
    model, state_a, _ = toy_pair()
    x, y = toy_splits(37)["train"]
    expected = nn.functional.cross_entropy(model(x), y).item()
    for batch in (1, 5, 37, 1000):
        assert Evaluator(model, {"train": (x, y)}, batch_size=batch)(state_a)["train"]["loss"] == pytest.approx(
            expected, abs=1e-6
        )
        cached = LayerEvaluator(model, {"train": (x, y)}, batch_size=batch)
        assert cached.endpoint(state_a, "A")["train"]["loss"] == pytest.approx(expected, abs=1e-6)


def test_cached_partial_evaluation_equals_plain_evaluation():
    model, state_a, state_b = toy_pair()
    plain, cached = Evaluator(model, toy_splits()), LayerEvaluator(model, toy_splits(), batch_size=7)
    layers = logical_layers(state_a)
    for base, state in (("A", state_a), ("B", state_b)):
        cached.endpoint(state, base)
        for keys in layers.values():
            mixed = mix(state_a, state_b, 0.3, keys, base)
            got, want = cached.partial(mixed, base, keys), plain(mixed)
            for split in want:
                for metric in want[split]:
                    assert got[split][metric] == pytest.approx(want[split][metric], abs=1e-5)


def test_barrier_of_model_with_itself_is_zero():
    model, state_a, _ = toy_pair()
    cfg = LayerwiseBarriersConfig(alphas=[0.25, 0.5])
    table, _ = barrier_table(LayerEvaluator(model, toy_splits()), lambda e: (state_a, state_a), [0], cfg)
    assert table.barrier.abs().max() < 1e-6


def test_barrier_table_shape_and_keys():
    model, state_a, state_b = toy_pair()
    cfg = LayerwiseBarriersConfig(alphas=[0.25, 0.5, 0.75], grid_epochs="all")  # the whole grid at both epochs
    table, geometry = barrier_table(LayerEvaluator(model, toy_splits()), lambda e: (state_a, state_b), [0, 3], cfg)
    n_layers = 3
    assert len(table) == 2 * (1 + n_layers) * 2 * 3 * 2 * 2  # epochs x sets x bases x alphas x splits x metrics
    assert set(table.columns) >= {"epoch", "layer_set", "base", "alpha", "split", "metric", "value", "barrier"}
    assert list(dict.fromkeys(table.layer_set)) == [FULL, "0", "2", "4"]
    # the full interpolation does not depend on the base; endpoints are the full models
    full = table[table.layer_set == FULL]
    assert (full[full.base == "A"].barrier.values == full[full.base == "B"].barrier.values).all()
    heat = wide(table, "A")
    assert list(heat.index) == [FULL, "0", "2", "4"] and list(heat.columns) == [0, 3]
    best = max_over_alpha(table)
    assert len(best) == len(table) // 3
    mid = table[table.alpha == 0.5].merge(best, on=["epoch", "layer_set", "base", "split", "metric"])
    assert (mid.barrier_y >= mid.barrier_x).all() and mid.argmax_alpha.isin([0.25, 0.5, 0.75]).all()
    assert len(geometry) == 2 * n_layers and (geometry.distance > 0).all()


def test_every_barrier_has_the_standard_error_of_its_paired_per_image_differences():
    model, state_a, state_b = toy_pair()
    splits = toy_splits(40)
    cfg = LayerwiseBarriersConfig(alphas=[0.25, 0.5])
    table, _ = barrier_table(LayerEvaluator(model, splits, batch_size=7), lambda e: (state_a, state_b), [0, 2], cfg)
    x, y = splits["train"]

    def losses(state):
        return nn.functional.cross_entropy(torch.func.functional_call(model, state, (x,)), y, reduction="none").double()

    keys = logical_layers(state_a)["2"]
    mid = mix(state_a, state_b, 0.25, keys, "B")
    d = losses(mid) - 0.75 * losses(state_a) - 0.25 * losses(state_b)
    row = table[
        (table.layer_set == "2")
        & (table.base == "B")
        & (table.alpha == 0.25)
        & (table.split == "train")
        & (table.metric == "loss")
        & (table.epoch == 2)
    ].iloc[0]
    assert row.barrier == pytest.approx(d.mean().item(), abs=1e-6)
    assert row.se == pytest.approx((d.std() / math.sqrt(len(d))).item(), rel=1e-4)
    assert (table.se >= 0).all() and (table[table.layer_set != FULL].se > 0).any()
    cells = cell_metrics(table, 0.5, from_epoch=1)
    assert len(cells) == 2 * 3 * 2 and all(k.split("/")[1] == "2" for k in cells)  # (barrier, se) x layers x bases
    metrics = headline_metrics(table, 0.5, 1)
    assert metrics["full_barrier_train_loss_last_se"] > 0 and {k for k in metrics if k.startswith("cell")} == set(cells)


def test_a_sequence_sample_is_its_window_of_tokens():
    from llmc_utils.core.evaluation import per_sample

    g = torch.Generator().manual_seed(2)
    logits, targets = torch.randn(6, 5, 7, generator=g), torch.randint(0, 7, (6, 5), generator=g)
    loss, wrong = per_sample(logits, targets)
    assert loss.shape == wrong.shape == (6,)
    expected = nn.functional.cross_entropy(logits.reshape(30, 7), targets.reshape(30)).item()
    assert loss.mean().item() == pytest.approx(expected, abs=1e-6)
    assert wrong.mean().item() == pytest.approx((logits.argmax(-1) != targets).float().mean().item())


def test_noise_floor_is_a_model_against_itself_on_two_halves_of_the_images():
    model, state_a, _ = toy_pair()
    x, y = toy_splits(40)["train"]
    floor = noise_floor(Evaluator(model, {"train": (x, y)}), state_a)
    per_image = nn.functional.cross_entropy(model(x), y, reduction="none").detach().double()
    assert floor["noise_floor_train_loss"] == pytest.approx(
        (per_image[0::2].mean() - per_image[1::2].mean()).item(), abs=1e-6
    )
    assert floor["noise_floor_se"] == pytest.approx(
        math.sqrt(per_image[0::2].var().item() / 20 + per_image[1::2].var().item() / 20), rel=1e-4
    )


def test_bad_config_values_are_rejected_naming_the_key():
    with pytest.raises(ParamsError, match="layerwise_barriers.alphas"):
        validate_params({"layerwise_barriers": {"alphas": [0.5, 1.5]}})
    with pytest.raises(ParamsError, match="heatmap_alpha"):
        validate_params({"layerwise_barriers": {"alphas": [0.25], "heatmap_alpha": 0.5}})
    with pytest.raises(ParamsError, match="layerwise_barriers.bases"):
        validate_params({"layerwise_barriers": {"bases": ["C"]}})
