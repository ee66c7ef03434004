"""BN reset (REPAIR): re-estimated statistics are the averages over the reset batches of each batch's mean and
unbiased variance (BatchNorm's cumulative average, momentum None)."""

import pytest
import torch
from torch import nn

from llmc_utils.core.evaluation import LayerEvaluator, checkpoint_barriers
from llmc_utils.core.layers import logical_layers, mix
from llmc_utils.core.models import build_model
from llmc_utils.core.normalization import BNReset, has_batchnorm, reset_batches


def _trained_stats(model, x):
    """Give the running statistics values far from the defaults (0, 1), as training would."""
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


def test_reset_gives_exact_statistics_of_the_batches():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    _trained_stats(net, 3 * torch.randn(16, 1, 8, 8) + 2)
    x = torch.randn(24, 1, 8, 8)
    batches = reset_batches(x, 3, 8, seed=0)
    state = net.state_dict()
    reset = BNReset(net, batches)(state)
    conv = [net[0](b).detach().transpose(0, 1).reshape(4, -1) for b in batches]  # channels x values, per batch
    assert torch.allclose(reset["1.running_mean"], torch.stack([c.mean(1) for c in conv]).mean(0), atol=1e-5)
    assert torch.allclose(reset["1.running_var"], torch.stack([c.var(1) for c in conv]).mean(0), atol=1e-4)
    assert reset["0.weight"] is state["0.weight"]  # parameters are shared, not copied
    assert not torch.allclose(reset["1.running_mean"], state["1.running_mean"])  # the stored statistics did change
    assert net.training is False and torch.equal(net.state_dict()["1.running_mean"], state["1.running_mean"])


def test_reset_errors_are_clear():
    with pytest.raises(ValueError, match="without BatchNorm"):
        BNReset(build_model("rescnn", 1, 10, 28), [torch.randn(2, 1, 28, 28)])
    with pytest.raises(ValueError, match="needs 4 x 8 = 32 inputs, only 10"):
        reset_batches(torch.randn(10, 3), 4, 8, seed=0)


def test_bn_models_and_barrier_rows_with_reset():
    torch.manual_seed(0)
    a, b = build_model("rescnn_bn", 1, 10, 28, width=4), build_model("rescnn_bn", 1, 10, 28, width=4)
    x = torch.randn(32, 1, 28, 28)
    for net in (a, b):
        _trained_stats(net, x)
    assert has_batchnorm(a) and not has_batchnorm(build_model("rescnn", 1, 10, 28))
    layers = logical_layers(a.state_dict())
    assert len(layers) == 19 and {"bn", "block2.shortcut.1"} <= set(layers)
    assert set(layers["bn"]) == {"bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"}
    splits = {"test": (x[:16], torch.randint(0, 10, (16,)))}
    evaluator = LayerEvaluator(a, splits, batch_size=8)
    reset = BNReset(a, reset_batches(x, 2, 8, seed=0))
    rows = checkpoint_barriers(evaluator, 0, a.state_dict(), b.state_dict(), {"bn": layers["bn"]}, [0.5], ["A"], reset)
    assert {r["layer_set"] for r in rows} == {"full", "bn"} and reset.calls == 2  # full mix + one layer
    # with the reset the full mix is evaluated with re-estimated statistics: the same as resetting by hand
    by_hand = LayerEvaluator(a, splits, batch_size=8)(reset(mix(a.state_dict(), b.state_dict(), 0.5)))
    full = next(r for r in rows if r["layer_set"] == "full" and r["metric"] == "loss")
    assert full["value"] == pytest.approx(by_hand["test"]["loss"], abs=1e-6)


def test_pair_variants_follow_the_inputs_in_one_order():
    from llmc_utils.core.pair_variants import VARIANTS, pair_variants

    b, aligned, reset = {"w": 1}, {"w": 2}, lambda state: state
    assert [v.name for v in pair_variants(b)] == ["plain"]
    assert [(v.name, v.state_b, v.reset) for v in pair_variants(b, reset=reset)] == [
        ("plain", b, None),
        ("bn_reset", b, reset),
    ]
    assert [(v.name, v.state_b) for v in pair_variants(b, aligned, plain="unaligned")] == [
        ("unaligned", b),
        ("aligned", aligned),
    ]
    assert tuple(v.name for v in pair_variants(b, aligned, reset)) == VARIANTS
    assert [v.reset for v in pair_variants(b, aligned, reset)] == [None, reset, None, reset]
