"""Deep linear networks: Theorem 4.1's closed form, convexity of single-layer cuts, the 1-D minimal example by hand,
a two-layer counterexample, and config validation."""

import pytest
import torch

from llmc_utils import deep_linear as dl
from llmc_utils.config import ParamsError, validate_params

DT = dl.DTYPE


def random_net(generator, dims, scale=1.0):
    return {dl.key(k): scale * torch.randn(a, b, generator=generator, dtype=DT) / a ** 0.5
            for k, (a, b) in enumerate(zip(dims[:-1], dims[1:]), start=1)}


@pytest.fixture
def problem():
    g = torch.Generator().manual_seed(0)
    dims = [5, 7, 6, 3]
    a, b = random_net(g, dims), random_net(g, dims, scale=2.0)
    x = torch.randn(20, 5, generator=g, dtype=DT)
    y = torch.randn(20, 3, generator=g, dtype=DT)
    return a, b, x, y


def loss_of_alpha(a, b, x, y, layer, base):
    """L(alpha) written directly (no mix, no closed form), differentiable in alpha."""
    def fn(alpha):
        other = a if base == "A" else b
        ws = [other[dl.key(k)] for k in range(1, len(a) + 1)]
        ws[layer - 1] = (1 - alpha) * a[dl.key(layer)] + alpha * b[dl.key(layer)]
        out = x
        for w in ws:
            out = out @ w
        return ((out - y) ** 2).sum(-1).mean()
    return fn


@pytest.mark.parametrize("layer", [1, 2, 3])
@pytest.mark.parametrize("base", ["A", "B"])
def test_closed_form_matches_autograd_derivatives(problem, layer, base):
    a, b, x, y = problem
    c0, c1, c2 = dl.quadratic_coefficients(a, b, layer, base, x, y)
    fn = loss_of_alpha(a, b, x, y, layer, base)
    for alpha0 in (0.0, 0.3, 1.0):
        alpha = torch.tensor(alpha0, dtype=DT, requires_grad=True)
        value = fn(alpha)
        (grad,) = torch.autograd.grad(value, alpha, create_graph=True)
        (second,) = torch.autograd.grad(grad, alpha)
        assert value.item() == pytest.approx(c0 + c1 * alpha0 + c2 * alpha0 ** 2, rel=1e-12)
        assert grad.item() == pytest.approx(c1 + 2 * c2 * alpha0, rel=1e-10, abs=1e-12)
        assert second.item() == pytest.approx(2 * c2, rel=1e-10)
    hessian = torch.autograd.functional.hessian(fn, torch.tensor(0.7, dtype=DT))
    assert hessian.item() == pytest.approx(2 * c2, rel=1e-10) and c2 > 0


def test_every_single_layer_cut_is_convex_and_equals_closed_form(problem):
    a, b, x, y = problem
    alphas = dl.alpha_grid(41)
    for layer in (1, 2, 3):
        for base in ("A", "B"):
            losses = dl.cut_losses(a, b, (layer,), base, x, y, alphas)
            c0, c1, c2 = dl.quadratic_coefficients(a, b, layer, base, x, y)
            h = 1 / 40
            # a quadratic's second difference is exactly 2 c2 h^2 on a uniform grid
            assert torch.allclose(dl.second_differences(losses), torch.full((39,), 2 * c2 * h * h, dtype=DT),
                                  rtol=1e-8, atol=1e-12 * losses.max().item())
            assert torch.allclose(losses, c0 + c1 * alphas + c2 * alphas ** 2, rtol=1e-12)


def test_cut_endpoints_are_the_hybrid_and_full_models(problem):
    a, b, x, y = problem
    ends = dl.cut_losses(a, b, (1, 2, 3), "A", x, y, torch.tensor([0.0, 1.0], dtype=DT))
    assert ends.tolist() == pytest.approx([dl.network_loss(a, x, y), dl.network_loss(b, x, y)], rel=1e-14)
    hybrid = dict(b, **{dl.key(2): a[dl.key(2)]})  # base B with layer 2 still at A's value
    assert dl.cut_losses(a, b, (2,), "B", x, y, torch.tensor([0.0], dtype=DT)).item() == pytest.approx(
        dl.network_loss(hybrid, x, y), rel=1e-14)


def test_one_dimensional_network_by_hand():
    x = torch.tensor([[1.0], [2.0]], dtype=DT)  # mean x^2 = 2.5; target y = x
    def net(w1, w2):
        return {dl.key(1): torch.tensor([[w1]], dtype=DT), dl.key(2): torch.tensor([[w2]], dtype=DT)}
    # L(w1, w2) = 2.5 (w1 w2 - 1)^2
    assert dl.network_loss(net(1.0, 1.0), x, x) == 0.0
    assert dl.network_loss(net(2.0, 1.0), x, x) == pytest.approx(2.5)
    assert dl.network_loss(net(0.0, 0.0), x, x) == pytest.approx(2.5)
    assert dl.network_loss(net(2.0, 2.0), x, x) == pytest.approx(22.5)
    assert dl.network_loss(net(-1.0, 3.0), x, x) == pytest.approx(40.0)


def test_minimal_example_barriers_match_the_formulas():
    cfg = dl.DeepLinearConfig(minimum_scale=3.0, n_alphas=21, landscape_resolution=11)
    paths, barriers = dl.minimal_example(cfg)
    m = barriers.mean_x2.iloc[0]
    by = barriers.set_index(["path", "base"]).barrier_mid
    # alpha = 0.5: full path at w1 = w2 = 5/3 -> (25/9 - 1)^2; layer 2 (w1 = 1/3): (5/9 - 1)^2; layer 1 (w2 = 3): 4^2
    assert by["full", "A"] == pytest.approx(m * 256 / 81, rel=1e-12)
    assert by["layer 2", "A"] == pytest.approx(m * 16 / 81, rel=1e-12)
    assert by["layer 1", "A"] == pytest.approx(m * 16, rel=1e-12)
    assert by["layer 1", "B"] == pytest.approx(by["layer 2", "A"], rel=1e-12)  # the roles swap with the base
    start = paths[(paths.path == "layer 2") & (paths.alpha == 0.0)].iloc[0]
    assert (start.w1, start.w2, start.loss) == pytest.approx((1 / 3, 3.0, 0.0), abs=1e-12)
    w1, w2, loss = dl.minimal_landscape(cfg)
    assert w1.shape == loss.shape == (11, 11) and loss.min() >= 0
    i, j = 2, 8  # a grid point, checked against the formula
    assert loss[i, j] == pytest.approx(m * (w1[i, j] * w2[i, j] - 1) ** 2, rel=1e-12)


def test_two_layer_counterexample_is_not_convex():
    # y = w2 w1 x with target y = x: w = (1, 1) and w' = (-1, -1) are both minima, but interpolating both layers
    # passes through (0, 0): L = mean x^2 at alpha = 0.5, a bump between two zeros
    x = torch.tensor([[1.0], [-2.0], [0.5]], dtype=DT)
    a = {dl.key(1): torch.ones(1, 1, dtype=DT), dl.key(2): torch.ones(1, 1, dtype=DT)}
    b = {k: -v for k, v in a.items()}
    alphas = dl.alpha_grid(21)
    both = dl.cut_losses(a, b, (1, 2), "A", x, x, alphas)
    assert both[0].item() == 0.0 and both[-1].item() == 0.0
    assert both[10].item() == pytest.approx((x ** 2).mean().item())
    assert dl.second_differences(both).min().item() < -1e-3
    for layer in (1, 2):  # each layer alone stays convex
        assert dl.second_differences(dl.cut_losses(a, b, (layer,), "A", x, x, alphas)).min().item() >= -1e-15


def test_theorem_check_on_a_small_run():
    cfg = dl.DeepLinearConfig(depths=[2, 3], widths=[3], replicates=2, n_alphas=21, train_steps=30)
    cuts, curves = dl.theorem_check(cfg)
    # per network pair: depth 2 -> 4 single + 1 pair; depth 3 -> 6 single + 6 pairs + 1 all; x 2 kinds x 2 replicates
    assert len(cuts) == (5 + 13) * 2 * 2
    facts = dl.summary(cuts)
    assert facts["n_single_layer_cuts"] == (4 + 6) * 4
    assert facts["n_single_layer_violations"] == 0 and facts["n_closed_form_mismatches"] == 0
    assert facts["max_closed_form_error_rel"] < 1e-12
    assert facts["two_layer_counterexample_found"]
    shown = curves[curves.n_layers == 2]
    assert shown.min_curvature_rel.iloc[0] < 0 and len(shown) == 21
    trained, random = (cuts[cuts.pair_kind == k].loss_a.mean() for k in ("trained", "random"))
    assert trained < 0.5 * random  # gradient descent really trained the endpoints
    table = dl.nonconvex_table(cuts)
    assert set(table.group) == {"single layer", "two layers", "all layers"}


@pytest.mark.parametrize("values, fragment", [
    ({"minimum_scale": 1.0}, "minimum_scale must differ from 1"),
    ({"minimum_scale": -2.0}, "deep_linear.minimum_scale = -2.0"),
    ({"minimum_scale": 5.0}, "must contain both minima"),
    ({"depths": [1, 2]}, "deep_linear.depths.0 = 1"),
    ({"widths": [4, 4]}, "widths must not repeat"),
    ({"n_alphas": 3}, "deep_linear.n_alphas = 3"),
    ({"pair_kinds": ["trained", "permuted"]}, "'random' or 'trained'"),
    ({"bases": []}, "deep_linear.bases"),
    ({"momentum": 1.0}, "deep_linear.momentum"),
    ({"learning_rte": 0.1}, "unknown key deep_linear.learning_rte"),
])
def test_bad_config_is_rejected_with_key(values, fragment):
    with pytest.raises(ParamsError, match="deep_linear") as exc:
        validate_params({"deep_linear": values}, source="params.yaml")
    assert fragment in str(exc.value)


def test_tiny_and_default_params_validate(root):
    import yaml
    for path in (root / "params.yaml", root / "tests" / "params_tiny.yaml"):
        section = yaml.safe_load(path.read_text())["deep_linear"]
        cfg = validate_params({"deep_linear": section}, source=str(path))["deep_linear"]
        assert isinstance(cfg, dl.DeepLinearConfig)
