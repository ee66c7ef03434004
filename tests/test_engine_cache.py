"""Activation caching for any architecture (LayerEvaluator + graph_cache): boundaries are found in the torch.fx graph
of the CNNs, ResNets (ours, torchvision's, timm's with BatchNorm), VGG, the tiny ViT and the char-level GPT; resuming
there gives the numbers of a full evaluation with fewer FLOPs; models fx cannot trace, or that change a cached
activation in place, are evaluated in full and say why."""

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import llmc_utils  # noqa: F401  (the torchvision compatibility step, before timm imports torchvision)
from llmc_utils.core.evaluation import Evaluator, LayerEvaluator
from llmc_utils.core.layers import logical_layers, mix
from llmc_utils.core.models import build_model
from llmc_utils.core.vit import TinyViT, ViTConfig
from llmc_utils.stages.language_model import CharGPT


def images(channels, side, n=6):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, channels, side, side, generator=g), torch.randint(0, 10, (n,), generator=g)


def timm_resnet18():
    import timm

    # zero_init_last=False: timm's default zeroes the last BatchNorm of every residual branch, so that changing
    # a block's conv1 would change nothing
    return timm.create_model("resnet18", pretrained=False, num_classes=10, in_chans=1, zero_init_last=False)


MODELS = {  # name: (model factory, split)
    "cnn": (lambda: build_model("cnn", 1, 10, 28), lambda: images(1, 28)),
    "rescnn": (lambda: build_model("rescnn", 1, 10, 28), lambda: images(1, 28)),
    "resnet18": (lambda: build_model("resnet18", 3, 10, 32), lambda: images(3, 32, n=3)),
    "vgg11": (lambda: build_model("vgg11", 3, 10, 32, width=8), lambda: images(3, 32)),
    "timm_resnet18": (timm_resnet18, lambda: images(1, 32, n=3)),
    "vit": (lambda: TinyViT(ViTConfig()), lambda: images(1, 28)),
    "char_gpt": (
        lambda: CharGPT(vocab_size=20, context=16),
        lambda: tuple(torch.randint(0, 20, (6, 16), generator=torch.Generator().manual_seed(1)) for _ in range(2)),
    ),
}


def build(name):
    torch.manual_seed(0)
    factory, split = MODELS[name]
    return factory().eval(), {"test": split()}


def other(state):
    """B: A plus noise of a tenth of each tensor's scale (BatchNorm variances stay positive; counters stay)."""
    g = torch.Generator().manual_seed(5)
    out = {}
    for k, v in state.items():
        if not v.is_floating_point():
            out[k] = v
            continue
        moved = v + 0.1 * v.abs().mean() * torch.randn(v.shape, generator=g)
        out[k] = moved.abs() if k.endswith("running_var") else moved
    return out


@pytest.mark.parametrize("name", list(MODELS))
def test_partial_from_cached_boundaries_equals_full_evaluation(name):
    model, splits = build(name)
    ev, plain = LayerEvaluator(model, splits, batch_size=2), Evaluator(model, splits, batch_size=2)
    assert ev.enabled and ev.cache_reason is None and ev.boundaries
    a = {k: v.clone() for k, v in model.state_dict().items()}
    b = other(a)
    layers = logical_layers(a)
    base = ev.endpoint(a, "A")
    assert base["test"]["loss"] == pytest.approx(plain(a)["test"]["loss"], abs=1e-5)
    names = list(layers)
    for layer in (names[0], names[len(names) // 2], names[-1]):
        state = mix(a, b, 0.5, layers[layer])
        got, want = ev.partial(state, "A", layers[layer]), plain(state)
        assert got["test"]["loss"] == pytest.approx(want["test"]["loss"], abs=1e-5), layer
        assert got["test"]["error"] == want["test"]["error"], layer
        assert got["test"]["loss"] != pytest.approx(base["test"]["loss"], abs=1e-7), layer  # the change mattered


def test_boundaries_of_the_architectures():
    blocks = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    expected = {
        "rescnn": ["block1", "block2", "block3", "fc"],
        "resnet18": [*blocks, "fc"],
        "timm_resnet18": ["bn1", *blocks, "fc"],
        "vit": ["tokens", "block0", "block1", "norm", "head"],
        "char_gpt": ["blocks.0", "blocks.1", "ln_f", "head"],
    }
    for name, boundaries in expected.items():
        model, splits = build(name)
        assert LayerEvaluator(model, splits).boundaries == boundaries, name


def test_partial_of_the_last_layer_reruns_only_the_head():
    model, splits = build("resnet18")
    ev = LayerEvaluator(model, splits, batch_size=3)
    a = {k: v.clone() for k, v in model.state_dict().items()}
    b = other(a)
    layers = logical_layers(a)

    def flops(evaluate):
        with FlopCounterMode(display=False) as counter:
            evaluate()
        return counter.get_total_flops()

    full = flops(lambda: ev.endpoint(a, "A"))
    first, last = list(layers)[0], list(layers)[-1]
    assert flops(lambda: ev.partial(mix(a, b, 0.5, layers[first]), "A", layers[first])) == full
    assert flops(lambda: ev.partial(mix(a, b, 0.5, layers[last]), "A", layers[last])) == 2 * 3 * 512 * 10  # fc only
    middle = "layer4.0.conv1"  # the last of four stages of about equal cost
    assert 0 < flops(lambda: ev.partial(mix(a, b, 0.5, layers[middle]), "A", layers[middle])) < full / 3


class Branching(nn.Module):
    """Control flow on the input: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        h = self.fc1(x)
        return self.fc2(h if h.sum() > 0 else -h)


class InPlace(nn.Module):
    """Traceable, with a boundary in front of fc2 whose activation a later node changes in place."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        h = self.fc1(x)
        y = self.fc2(h)
        h.mul_(2.0)
        return self.fc3(y + h)


@pytest.mark.parametrize(
    "model_class, reason",
    [(Branching, "torch.fx cannot trace Branching"), (InPlace, "modifies an activation in place")],
)
def test_models_without_a_usable_cache_are_evaluated_in_full_and_say_why(model_class, reason):
    torch.manual_seed(0)
    model = model_class()
    g = torch.Generator().manual_seed(1)
    splits = {"test": (torch.randn(10, 4, generator=g), torch.randint(0, 3, (10,), generator=g))}
    ev, plain = LayerEvaluator(model, splits, batch_size=4), Evaluator(model, splits, batch_size=4)
    a = {k: v.clone() for k, v in model.state_dict().items()}
    b = other(a)
    assert ev.endpoint(a, "A")["test"]["loss"] == pytest.approx(plain(a)["test"]["loss"], abs=1e-6)
    assert not ev.enabled and reason in ev.cache_reason and not ev.cache
    state = mix(a, b, 0.5, ["fc2.weight", "fc2.bias"])
    assert ev.partial(state, "A", ["fc2.weight", "fc2.bias"]) == plain(state)


def test_caching_can_be_switched_off():
    model, splits = build("rescnn")
    ev = LayerEvaluator(model, splits, cache_activations=False)
    assert not ev.enabled and "cache_activations=False" in ev.cache_reason and ev.boundaries == []


def test_cache_budget_keeps_the_deepest_boundaries_that_fit():
    model, (x, y) = build_model("resnet18", 3, 10, 32), images(3, 32, n=3)
    unlimited = LayerEvaluator(model, {"test": (x, y)}, batch_size=3)
    unlimited.endpoint(model.state_dict(), "A")
    everything = set(unlimited.kept)
    # about 0.75 MB per image at layer1's inputs, under 0.1 MB from layer3 on: 1 MB for 3 images keeps only deep ones
    small = LayerEvaluator(model, {"test": (x, y)}, batch_size=3, cache_gb=1e-3)
    state = model.state_dict()
    small.endpoint(state, "A")
    assert small.kept and small.kept < everything and min(small.kept) > min(everything)
    assert all(set(batch) == small.kept for batch in small.cache["A"]["test"])
    changed = mix(
        state, {k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}, 1.0, ["layer1.0.conv1.weight"]
    )  # in front of every kept boundary: runs from the input
    assert small.partial(changed, "A", ["layer1.0.conv1.weight"])["test"]["loss"] == pytest.approx(
        Evaluator(model, {"test": (x, y)})(changed)["test"]["loss"], abs=1e-5
    )
    none = LayerEvaluator(model, {"test": (x, y)}, batch_size=3, cache_gb=1e-9)
    none.endpoint(state, "A")
    assert none.kept == set() and "cache_gb" in none.cache_reason


def test_bf16_and_channels_last_change_barriers_only_slightly(capsys):
    """Evaluation under bfloat16 autocast (a GPU option, here on the CPU): the barrier table of a pair trained a few
    steps apart moves by a small amount, printed; channels_last gives the float32 numbers up to rounding."""
    from llmc_utils.core.evaluation import checkpoint_barriers
    from llmc_utils.core.trainer import sgd_epoch

    x, y = images(1, 28, n=128)
    y = (x.mean((1, 2, 3)) > 0).long() + 2 * (x[:, :, :14].mean((1, 2, 3)) > 0).long()  # a learnable rule
    states = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        net = build_model("rescnn", 1, 10, 28, width=8)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        sgd_epoch(
            net,
            optimizer,
            x,
            y,
            32,
            torch.Generator().manual_seed(seed),
            lambda out, target: torch.nn.functional.cross_entropy(out, target),
        )
        states.append({k: v.detach() for k, v in net.state_dict().items()})
    layers = logical_layers(states[0])

    def table(**speed):
        evaluator = LayerEvaluator(build_model("rescnn", 1, 10, 28, width=8), {"train": (x, y)}, 64, **speed)
        rows = checkpoint_barriers(evaluator, 0, *states, layers, [0.5], ["A", "B"])
        return {(r["layer_set"], r["base"], r["metric"]): r["barrier"] for r in rows if r["metric"] == "loss"}

    fp32, bf16, nhwc = table(), table(precision="bf16"), table(channels_last=True)
    bf16_diff = max(abs(fp32[k] - bf16[k]) for k in fp32)
    with capsys.disabled():
        print(
            f"\nmax |barrier(bf16) - barrier(fp32)| over {len(fp32)} loss barriers: {bf16_diff:.2e} "
            f"(largest |barrier| {max(map(abs, fp32.values())):.3f}); channels_last: "
            f"{max(abs(fp32[k] - nhwc[k]) for k in fp32):.1e}"
        )
    assert 0 < bf16_diff < 0.05  # bfloat16 keeps ~3 significant digits of losses of order 1
    assert max(abs(fp32[k] - nhwc[k]) for k in fp32) < 1e-5
