"""Weight matching (llmc_utils.core.weight_matching): the aligned B computes B's function, a permuted copy of A is
recovered."""

import pytest
import torch
from torch import nn

import llmc_utils  # noqa: F401  (before torchvision/timm: the compatibility step)
from llmc_utils.core import weight_matching as align
from llmc_utils.core.models import MLP, build_model
from llmc_utils.core.vit import TinyViT, ViTConfig


def _timm_resnet18():
    import timm

    return timm.create_model("resnet18", pretrained=False, num_classes=10, in_chans=1)


def _tv_resnet18():
    import torchvision

    return torchvision.models.resnet18(num_classes=10)


# name -> (factory, input shape of one image)
ARCHS = {
    "mlp": (lambda: MLP(48, [32, 16], 10), (3, 4, 4)),
    "cnn": (lambda: build_model("cnn", 3, 10, 32, width=4), (3, 32, 32)),
    "cnn_bn": (lambda: build_model("cnn_bn", 3, 10, 32, width=4), (3, 32, 32)),
    "rescnn": (lambda: build_model("rescnn", 1, 10, 28, width=8), (1, 28, 28)),
    "rescnn_bn": (lambda: build_model("rescnn_bn", 1, 10, 28, width=8), (1, 28, 28)),
    "resnet18": (lambda: build_model("resnet18", 3, 10, 32), (3, 32, 32)),
    "vgg11": (lambda: build_model("vgg11", 3, 10, 32, width=4), (3, 32, 32)),
    "tv_resnet18": (_tv_resnet18, (3, 32, 32)),
    "timm_resnet18": (_timm_resnet18, (1, 32, 32)),
}
MAX_DIFF = {}  # arch -> max |logit difference| of the function check, printed with pytest -s


def _model(name: str, seed: int) -> nn.Module:
    """A freshly initialised model; BatchNorm gets random affine parameters and non-trivial running statistics,
    so that a wrongly permuted BatchNorm changes the function."""
    torch.manual_seed(seed)
    factory, shape = ARCHS[name]
    model = factory()
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if norms:
        with torch.no_grad():
            for m in norms:
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
            model.train()
            for _ in range(3):
                model(torch.randn(8, *shape) * 2 + 0.5)
    return model.eval()


def _logits(name: str, state: dict, x: torch.Tensor) -> torch.Tensor:
    fresh = ARCHS[name][0]()
    fresh.load_state_dict(state, strict=True)
    with torch.no_grad():
        return fresh.eval()(x)


@pytest.mark.parametrize("name", list(ARCHS))
def test_aligned_b_computes_the_same_function(name):
    a, b = _model(name, 0), _model(name, 1)
    state_a, state_b = a.state_dict(), b.state_dict()
    result = align.align(a, state_a, state_b, seed=0)
    assert set(result.state) == set(state_b)
    torch.manual_seed(2)
    x = torch.randn(4, *ARCHS[name][1])
    diff = (_logits(name, result.state, x) - _logits(name, state_b, x)).abs().max().item()
    MAX_DIFF[name] = diff
    print(
        f"{name}: max |logit difference| = {diff:.2e}, sweeps {result.sweeps}, identity fraction "
        f"{result.identity_fraction:.3f}, objective {result.objective_before:.4g} -> {result.objective_after:.4g}"
    )
    assert diff <= 1e-4
    assert result.objective_after >= result.objective_before
    assert result.identity_fraction < 0.5  # independent inits: almost every unit moves
    assert 1 <= result.sweeps <= 100
    # BatchNorm step counters are not permuted; every permuted key keeps its shape
    for key, value in result.state.items():
        assert value.shape == state_b[key].shape
        if key.endswith("num_batches_tracked"):
            assert value is state_b[key]


@pytest.mark.parametrize("name", list(ARCHS))
def test_spec_covers_exactly_the_hidden_axes(name):
    """Every weight is permuted on both axes, every 1-D tensor on axis 0, except the first layer's input axis, the
    classifier's outputs (weight axis 0, bias) and the BatchNorm step counters."""
    model = _model(name, 0)
    state, spec = model.state_dict(), align.permutation_spec(model)
    weights = [k for k, v in state.items() if v.ndim >= 2]
    first, last = weights[0], weights[-1]
    assert last.endswith(("fc.weight", "fc3.weight", "classifier.weight"))
    expected = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked") or key == last.replace("weight", "bias"):
            continue
        axes = {0, 1} if value.ndim >= 2 else {0}
        expected[key] = axes - ({1} if key == first else set()) - ({0} if key == last else set())
    assert {k: {axis for axis, _ in v} for k, v in spec.axes.items()} == expected
    for group, entries in spec.perms.items():
        sizes = {state[k].shape[axis] for k, axis in entries}
        n = min(sizes)
        assert all(s % n == 0 for s in sizes), group  # equal, or k*n for a Linear after Flatten
        assert len(entries) == len(set(entries))


def test_resnet_stages_share_one_permutation():
    spec = align.permutation_spec(_tv_resnet18())
    group = {key: g for key, axes in spec.axes.items() for axis, g in axes if axis == 0}
    assert len(spec.perms) == 12  # stem/layer1, 8 inner block units, layer2/3/4
    assert (
        group["conv1.weight"]
        == group["bn1.running_mean"]
        == group["layer1.0.conv2.weight"]
        == group["layer1.1.bn2.bias"]
    )
    assert (
        group["layer2.0.downsample.0.weight"]
        == group["layer2.0.bn2.weight"]
        == group["layer2.1.conv2.weight"]
        != group["conv1.weight"]
    )
    assert group["layer2.0.conv1.weight"] != group["layer2.0.conv2.weight"]
    assert spec.stats == {k for k in spec.axes if k.endswith(("running_mean", "running_var"))}


@pytest.mark.parametrize("name", list(ARCHS))
def test_recovers_a_permuted_copy(name):
    model = _model(name, 0)
    state_a, spec = model.state_dict(), align.permutation_spec(model)
    gen = torch.Generator().manual_seed(3)
    sizes = spec.sizes(state_a)
    perms = {g: torch.randperm(n, generator=gen) for g, n in sizes.items()}
    state_b = align.apply_permutation(spec, perms, state_a)
    assert any(not torch.equal(state_b[k], state_a[k]) for k in spec.axes)
    result = align.align(model, state_a, state_b, seed=1)
    for key, value in state_a.items():
        assert torch.allclose(result.state[key].float(), value.float(), atol=1e-6, rtol=0), key
    assert result.objective_after >= result.objective_before
    assert result.objective_after == pytest.approx(
        sum((state_a[k].double() ** 2).sum().item() for k in spec.axes if k not in spec.stats), rel=1e-9
    )


@pytest.mark.parametrize("name", ["mlp", "rescnn_bn", "tv_resnet18"])
def test_aligning_a_to_itself_is_the_identity(name):
    model = _model(name, 0)
    state = model.state_dict()
    result = align.align(model, state, state, seed=5)
    assert result.sweeps == 1 and result.identity_fraction == 1.0
    assert all(torch.equal(p, torch.arange(len(p))) for p in result.perms.values())
    assert result.objective_after == result.objective_before


def test_weight_matching_is_seeded_and_apply_shares_other_keys():
    a, b = _model("cnn_bn", 0), _model("cnn_bn", 1)
    spec = align.permutation_spec(a)
    p1 = align.weight_matching(spec, a.state_dict(), b.state_dict(), seed=7)
    p2 = align.weight_matching(spec, a.state_dict(), b.state_dict(), seed=7)
    assert p1.keys() == p2.keys() and all(torch.equal(p1[g], p2[g]) for g in p1)
    state_b = b.state_dict()
    out = align.apply_permutation(spec, p1, state_b)
    assert out is not state_b and out["fc3.bias"] is state_b["fc3.bias"]
    assert out["bn1.num_batches_tracked"] is state_b["bn1.num_batches_tracked"]


def test_unsupported_architectures_name_the_model():
    with pytest.raises(align.UnsupportedArchitecture, match="TinyViT.*Supported"):
        align.permutation_spec(TinyViT(ViTConfig()))

    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x)

    with pytest.raises(align.UnsupportedArchitecture, match="Custom"):
        align.align(Custom(), Custom().state_dict(), Custom().state_dict())
    grouped = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.ReLU(), nn.Conv2d(8, 2, 1))
    with pytest.raises(align.UnsupportedArchitecture, match="Conv2d \\(grouped\\)"):
        align.permutation_spec(grouped)


def test_function_check_passes_rounding_relative_to_the_logits_scale():
    """A valid alignment passes, also with logits far above 1 (the tolerance scales with them); a wrong permutation
    (one layer's output units moved without the next layer's inputs) is stopped with a message naming the model."""
    a, b = _model("cnn_bn", 0), _model("cnn_bn", 1)
    state_b = b.state_dict()
    result = align.align(a, a.state_dict(), state_b, seed=0)
    x = torch.randn(4, 3, 32, 32)
    check = align.check_function_kept(a, state_b, result.state, x)
    assert check.max_difference <= check.allowed and check.allowed >= align.FUNCTION_TOLERANCE

    last = [k for k in state_b if k.endswith(".weight")][-1]
    loud = {k: v * 1e4 if k == last else v for k, v in state_b.items()}  # logits ~1e4: absolute 1e-4 is below rounding
    loud_aligned = {k: v * 1e4 if k == last else v for k, v in result.state.items()}
    loud_check = align.check_function_kept(a, loud, loud_aligned, x)
    assert loud_check.allowed > 1.0 and loud_check.max_difference <= loud_check.allowed

    first = next(k for k in state_b if k.endswith(".weight"))
    broken = dict(result.state, **{first: result.state[first].roll(1, dims=0)})
    with pytest.raises(align.AlignmentFailed, match="does not compute B's function.*CNN"):
        align.check_function_kept(a, state_b, broken, x)
    assert not a.training  # the check leaves the model's mode as it found it
