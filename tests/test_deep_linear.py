"""Deep linear networks: Theorem 4.1's closed form, convexity of single-layer cuts, the 1-D minimal example by hand,
a two-layer counterexample, single layer vs full path (random 1-D minima against their closed form; pairs that must
make the claim fail), the stage's claims and sanity checks on synthetic metrics, and config validation."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from llmc_utils.core import claims
from llmc_utils.core.config import ParamsError
from llmc_utils.pipeline.params import validate_params
from llmc_utils.pipeline.report import ReportConfig
from llmc_utils.stages import deep_linear as dl

DT = dl.DTYPE


def random_net(generator, dims, scale=1.0):
    return {
        dl.key(k): scale * torch.randn(a, b, generator=generator, dtype=DT) / a**0.5
        for k, (a, b) in enumerate(zip(dims[:-1], dims[1:]), start=1)
    }


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
        assert value.item() == pytest.approx(c0 + c1 * alpha0 + c2 * alpha0**2, rel=1e-12)
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
            assert torch.allclose(
                dl.second_differences(losses),
                torch.full((39,), 2 * c2 * h * h, dtype=DT),
                rtol=1e-8,
                atol=1e-12 * losses.max().item(),
            )
            assert torch.allclose(losses, c0 + c1 * alphas + c2 * alphas**2, rtol=1e-12)


def test_cut_endpoints_are_the_hybrid_and_full_models(problem):
    a, b, x, y = problem
    ends = dl.cut_losses(a, b, (1, 2, 3), "A", x, y, torch.tensor([0.0, 1.0], dtype=DT))
    assert ends.tolist() == pytest.approx([dl.network_loss(a, x, y), dl.network_loss(b, x, y)], rel=1e-14)
    hybrid = dict(b, **{dl.key(2): a[dl.key(2)]})  # base B with layer 2 still at A's value
    assert dl.cut_losses(a, b, (2,), "B", x, y, torch.tensor([0.0], dtype=DT)).item() == pytest.approx(
        dl.network_loss(hybrid, x, y), rel=1e-14
    )


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
    assert both[10].item() == pytest.approx((x**2).mean().item())
    assert dl.second_differences(both).min().item() < -1e-3
    for layer in (1, 2):  # each layer alone stays convex
        assert dl.second_differences(dl.cut_losses(a, b, (layer,), "A", x, x, alphas)).min().item() >= -1e-15


def test_theorem_check_on_a_small_run():
    cfg = dl.DeepLinearConfig(
        depths=[2, 3], widths=[3], replicates=2, n_alphas=21, train_steps=30, random_minima=50, landscape_resolution=11
    )
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
    # barriers against the two full models (docs/method.md): the full path's max over the grid is at least its midpoint
    # value
    full = cuts[cuts.n_layers == cuts.depth]
    assert (full.barrier_max >= full.barrier_mid - 1e-12).all()
    pairs = dl.pair_barriers(cuts, tie_rtol=cfg.tie_rtol)
    assert len(pairs) == 8 and (pairs.best_single_mid <= pairs.worst_single_mid).all()
    assert (pairs.every_single_lower_mid <= pairs.best_single_lower_mid).all()  # every lower implies best lower
    # the stage's metrics: the lists the claims read, one element per pair, and the sanity checks' inputs
    _, barriers = dl.minimal_example(cfg)
    _, minima_cuts = dl.random_minima(cfg)
    all_pairs = dl.pair_barriers(minima_cuts, cuts, tie_rtol=cfg.tie_rtol)
    metrics = dl.stage_metrics(cfg, barriers, cuts, all_pairs, minima_cuts)
    assert len(metrics["random_minima_best_single_lower"]) == len(metrics["random_minima_paths_mid"]) == 50
    assert len(metrics["trained_best_single_lower"]) == len(metrics["random_init_best_single_lower"]) == 4
    assert set(metrics["trained_best_single_lower"]) <= {0, 1}
    # per pair [full, single-layer paths...]: 4 single cuts at depth 2, 6 at depth 3, in every reading
    assert sorted(len(p) for p in metrics["trained_paths_own"]) == [5, 5, 7, 7]
    assert all(max(p[1:]) <= 1e-12 for p in metrics["trained_paths_own"])  # Theorem 4.1: no bump above own chord
    assert SEC4.measure(metrics, None) == [float(v) for v in metrics["trained_best_single_lower"]]
    assert set(all_pairs.branch) <= {"same", "opposite", "connected"}
    assert set(dl.lower_by_depth(all_pairs).depth) == {2, 3}
    assert metrics["minimal_ratio_expected"] == 16.0
    assert metrics["minimal_ratio_full_over_layer2"] == pytest.approx(16.0, rel=1e-12)
    json.dumps(metrics)  # plain JSON types only
    everything = {"deep_linear": {None: metrics}}
    for claim in dl.CLAIMS:
        assert claims.evaluate(claim, everything, ReportConfig())["n"] > 1
    for check in dl.SANITY_CHECKS:  # this small run has fewer cuts than the default profile requires
        assert claims.check(check, everything, ReportConfig(min_theorem_cuts=10))["holds"], check.statement


@pytest.mark.parametrize(
    "values, fragment",
    [
        ({"minimum_scale": 1.0}, "minimum_scale must differ from 1"),
        ({"minimum_scale": -2.0}, "deep_linear.minimum_scale = -2.0"),
        ({"minimum_scale": 5.0}, "must contain both minima"),
        ({"depths": [1, 2]}, "deep_linear.depths.0 = 1"),
        ({"widths": [4, 4]}, "widths must not repeat"),
        ({"n_alphas": 3}, "deep_linear.n_alphas = 3"),
        ({"n_alphas": 50}, "n_alphas must be odd"),
        ({"random_minima_scale": 1.0}, "deep_linear.random_minima_scale"),
        ({"random_minima": 1}, "deep_linear.random_minima"),
        ({"pair_kinds": ["trained", "permuted"]}, "'random' or 'trained'"),
        ({"bases": []}, "deep_linear.bases"),
        ({"momentum": 1.0}, "deep_linear.momentum"),
        ({"learning_rte": 0.1}, "unknown key deep_linear.learning_rte"),
    ],
)
def test_bad_config_is_rejected_with_key(values, fragment):
    with pytest.raises(ParamsError, match="deep_linear") as exc:
        validate_params({"deep_linear": values}, source="params.yaml")
    assert fragment in str(exc.value)


def test_tiny_and_default_params_validate(root):
    import yaml

    for path in (root / "params.yaml", root / "profiles" / "tiny.yaml"):
        section = yaml.safe_load(path.read_text())["deep_linear"]
        cfg = validate_params({"deep_linear": section}, source=str(path))["deep_linear"]
        assert isinstance(cfg, dl.DeepLinearConfig)


# ---------------------------------------------------------------------------------------------------------------------
# Single layer vs full path


def one_d_formulas(r, m):
    """Module docstring: barriers at alpha = 0.5 of the 1-D minima (a, 1/a), (a', 1/a'), r = a'/a."""
    full = m * (r - 1) ** 4 / (16 * r**2)
    best = m * (r - 1) ** 2 / 4 * np.minimum(1.0, 1.0 / r**2)
    return full, best


def test_random_minima_match_the_closed_form():
    cfg = dl.DeepLinearConfig(random_minima=3000, n_alphas=21, landscape_resolution=11)
    minima, cuts = dl.random_minima(cfg)
    assert len(minima) == 3000 and len(cuts) == 3000 * 5  # 2 layers x 2 bases + the full path
    assert np.abs(minima.w1_a * minima.w2_a - 1).max() < 1e-15 and minima.loss_a.max() < 1e-28
    assert (np.abs(np.log(np.abs(minima[["w1_a", "w1_b"]].to_numpy()))) <= math.log(3.0) + 1e-12).all()
    assert 0.4 < minima.same_branch.mean() < 0.6  # random branch
    pairs = dl.pair_barriers(cuts, tie_rtol=cfg.tie_rtol)
    x, _ = dl.minimal_data(cfg)
    r = (minima.w1_b / minima.w1_a).to_numpy()
    full, best = one_d_formulas(r, (x**2).mean().item())
    np.testing.assert_allclose(pairs.full_mid, full, rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(pairs.best_single_mid, best, rtol=1e-9, atol=1e-14)
    # best single lower exactly when r < 0 or |log r| > log 3 (away from the boundary, where rounding decides)
    clear = np.abs(np.abs(np.log(np.abs(r))) - math.log(3.0)) > 1e-6
    expected = (r < 0) | (np.abs(np.log(np.abs(r))) > math.log(3.0))
    assert (pairs.best_single_lower_mid.to_numpy()[clear] == expected[clear]).all()
    assert not pairs.every_single_lower_mid.any()  # one single-layer path always overshoots
    p = dl.expected_fraction_random_minima(3.0)
    assert p == pytest.approx(0.625)
    assert abs(pairs.best_single_lower_mid.mean() - p) < 4 * math.sqrt(p * (1 - p) / 3000)
    assert dl.expected_fraction_random_minima(math.sqrt(3.0)) == pytest.approx(0.5)


SEC4, SEC4_MAX, SEC4_OWN = dl.CLAIMS


def sec4_row(paths, claim=SEC4):
    """The Sec. 4 claim on one population of trained pairs, each [full, single-layer paths...] (same lists for every
    reading)."""
    metrics = {"deep_linear": {None: dict(tie_rtol=1e-9, **{f"trained_paths_{at}": paths for at in dl.READINGS})}}
    return claims.evaluate(claim, metrics, ReportConfig(), ReportConfig().confidence)


def test_sec4_claim_names_its_reading_and_is_a_count_against_the_exchangeable_rate():
    assert [c.stage for c in dl.CLAIMS] == ["deep_linear"] * 3
    assert "alpha = 0.5" in SEC4.statement and SEC4.sensitivity_of is None
    assert "max over the alpha grid" in SEC4_MAX.statement and SEC4_MAX.sensitivity_of == SEC4.statement
    assert "own end points" in SEC4_OWN.statement and SEC4_OWN.sensitivity_of == SEC4.statement
    for claim in dl.CLAIMS:
        assert claim.kind == "count" and claim.relation == ">" and claim.null is not None
    assert SEC4.measure({"tie_rtol": 1e-9, "trained_paths_mid": [[1.0, 0.2, 3.0], [0.5, 0.5, 0.9]]}, None) == [1.0, 0.0]


@pytest.mark.parametrize(
    "lower, n, expected",
    [
        (200, 200, "reproduced"),  # every pair: the interval lies above the exchangeable rate 4/5
        (170, 200, "inconclusive"),  # 85 %: straddles 4/5
        (120, 200, "not reproduced"),  # 60 %: a majority, yet below what alike paths give
        (1, 1, "inconclusive"),  # one pair bounds nothing
    ],
)
def test_sec4_verdicts_against_the_exchangeable_rate(lower, n, expected):
    paths = [[1.0, 0.1, 2.0, 2.0, 2.0]] * lower + [[1.0, 1.5, 2.0, 2.0, 2.0]] * (n - lower)  # depth 2: k = 4
    row = sec4_row(paths)
    assert row["verdict"] == expected and row["n"] == n
    assert row["mean"] == pytest.approx(lower / n) and row["threshold_low"] == pytest.approx(0.8)
    assert 0.0 <= row["low"] <= row["high"] <= 1.0 and row["high"] > row["low"]


def test_identical_pairs_make_the_claim_fail():
    # A = B: every barrier is exactly 0, a tie, so no single-layer path is "lower"
    x = torch.randn(12, 1, generator=torch.Generator().manual_seed(0), dtype=DT)
    w = np.array([0.5, 2.0, -1.5, 1.0, -0.7] * 8)
    _, cuts = dl.one_d_pairs(w, w.copy(), x, x, dl.alpha_grid(11), ["A", "B"])
    pairs = dl.pair_barriers(cuts, tie_rtol=1e-9)
    assert (pairs[["full_mid", "best_single_mid"]].to_numpy() == 0).all()
    assert dl.population_metrics(pairs)["random_minima_best_single_lower"] == [0] * 40
    assert sec4_row(dl.path_lists(cuts)["random_minima"]["mid"])["verdict"] == "not reproduced"


def test_sign_flip_is_a_tie_not_a_win():
    # w' = -w (r = -1): full and best single-layer barrier are both m; rounding must not decide
    x = torch.randn(12, 1, generator=torch.Generator().manual_seed(1), dtype=DT)
    w = np.array([0.3, 1.7, 2.9])
    _, cuts = dl.one_d_pairs(w, -w, x, x, dl.alpha_grid(11), ["A", "B"])
    pairs = dl.pair_barriers(cuts, tie_rtol=1e-9)
    np.testing.assert_allclose(pairs.full_mid, pairs.best_single_mid, rtol=1e-12)
    assert not pairs.best_single_lower_mid.any()
    assert set(pairs.branch) == {"opposite"}


def test_rescaled_one_d_minima_make_the_claim_fail():
    # same branch, scales less than 3x apart (w' = c w up to the symmetry w1 w2 = 1): the full path wins every time
    x = torch.randn(16, 1, generator=torch.Generator().manual_seed(2), dtype=DT)
    rng = np.random.default_rng(0)
    w = rng.choice([-1.0, 1.0], 50) * np.exp(rng.uniform(-1, 1, 50))
    c = np.exp(rng.uniform(-1.0, 1.0, 50))  # |log c| < log 3
    _, cuts = dl.one_d_pairs(w, c * w, x, x, dl.alpha_grid(11), ["A", "B"])
    pairs = dl.pair_barriers(cuts, tie_rtol=1e-9)
    assert dl.population_metrics(pairs)["random_minima_fraction_best_single_lower_mid"] == 0.0
    assert set(pairs.branch) == {"same"}
    assert sec4_row(dl.path_lists(cuts)["random_minima"]["mid"])["verdict"] == "not reproduced"


def test_rescaled_deep_linear_pairs_make_the_claim_fail():
    # depth 2, B = (c W1, W2 / c): the same function, so both are exact minima of Y = f_A(X); the full path's
    # output is scaled by (2 + c + 1/c) / 4 (second order in c - 1), each single-layer path by (1 + c) / 2 or
    # (1 + 1/c) / 2 (first order), so for 1 < c < 3 the full path is lower every time
    cfg = dl.DeepLinearConfig(n_alphas=11)
    g = torch.Generator().manual_seed(3)
    rows = []
    for replicate, c in enumerate(np.linspace(1.2, 2.5, 8)):
        a = random_net(g, [4, 5, 3])
        b = {dl.key(1): c * a[dl.key(1)], dl.key(2): a[dl.key(2)] / c}
        x = torch.randn(20, 4, generator=g, dtype=DT)
        y = dl.forward(dl.weights(a), x)
        where = dict(pair_kind="trained", depth=2, width=5, replicate=replicate, branch=dl.branch(a, b, x))
        for row, _, _ in dl.pair_cuts(cfg, a, b, x, y, dl.alpha_grid(cfg.n_alphas)):
            rows.append(dict(where, **row))
    cuts = pd.DataFrame(rows)
    pairs = dl.pair_barriers(cuts, tie_rtol=cfg.tie_rtol)
    assert len(pairs) == 8 and (pairs.full_mid > 0).all()
    assert set(pairs.branch) == {"connected"}  # width 5 > input dimension 4: the hidden layer can turn freely
    assert dl.population_metrics(pairs)["trained_best_single_lower"] == [0] * 8
    assert sec4_row(dl.path_lists(cuts)["trained"]["mid"])["verdict"] == "not reproduced"


def test_branch_of_deep_linear_pairs():
    """The sign of the map between the two hidden representations: a reflection of one hidden unit puts B on the
    other branch, a rescaling keeps it on A's; a hidden layer wider than its input's rank is connected."""
    g = torch.Generator().manual_seed(4)
    a = random_net(g, [4, 3, 2])
    x = torch.randn(30, 4, generator=g, dtype=DT)
    flip = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=DT))
    scale = torch.diag(torch.tensor([2.0, 0.5, 1.5], dtype=DT))
    for g_map, expected in ((flip, "opposite"), (scale, "same")):
        b = {dl.key(1): a[dl.key(1)] @ g_map, dl.key(2): torch.linalg.inv(g_map) @ a[dl.key(2)]}
        assert dl.branch(a, b, x) == expected
    wide = random_net(g, [4, 6, 2])
    assert dl.branch(wide, random_net(g, [4, 6, 2]), x) == "connected"


def test_lower_by_depth_gives_counts_intervals_and_the_exchangeable_rate():
    x = torch.randn(12, 1, generator=torch.Generator().manual_seed(5), dtype=DT)
    rng = np.random.default_rng(1)
    w = rng.choice([-1.0, 1.0], 60) * np.exp(rng.uniform(-1, 1, 60))
    _, cuts = dl.one_d_pairs(w, -3.5 * w, x, x, dl.alpha_grid(11), ["A", "B"])  # opposite branch, scales 3.5x apart
    table = dl.lower_by_depth(dl.pair_barriers(cuts, tie_rtol=1e-9))
    assert set(table.branch) == {"opposite"} and set(table.reading) == set(dl.READING_LABELS.values())
    assert (table.pairs == 60).all() and np.allclose(table.exchangeable_rate, 0.8)
    assert ((0 <= table.low) & (table.low <= table.fraction) & (table.fraction <= table.high) & (table.high <= 1)).all()


def good_sanity_metrics():
    return dict(
        minimal_ratio_full_over_layer2=16.0 * (1 + 1e-13),
        minimal_ratio_expected=16.0,
        n_single_layer_violations=0,
        n_closed_form_mismatches=0,
        n_single_layer_cuts=2000,
        n_two_layer_nonconvex=5,
        expected_fraction_random_minima=0.625,
        random_minima_best_single_lower=[1] * 250 + [0] * 150,
    )


@pytest.mark.parametrize(
    "change, failing",
    [
        ({}, None),
        ({"minimal_ratio_full_over_layer2": 16.0 * (1 + 1e-6)}, "ratio equals"),
        ({"n_single_layer_violations": 1}, "is convex"),
        ({"n_closed_form_mismatches": 2}, "is convex"),
        ({"n_single_layer_cuts": 999}, "enough single-layer cuts"),
        ({"n_two_layer_nonconvex": 0}, "counterexample exists"),
        ({"random_minima_best_single_lower": [1] * 300 + [0] * 100}, "closed form"),  # 0.75, 5 SEs off 0.625
    ],
)
def test_sanity_checks_fail_on_bad_metrics(change, failing):
    metrics = {"deep_linear": {None: dict(good_sanity_metrics(), **change)}}
    rows = [claims.check(c, metrics, ReportConfig()) for c in dl.SANITY_CHECKS]
    broken = [row["check"] for row in rows if not row["holds"]]
    if failing is None:
        assert broken == []
    else:
        assert len(broken) == 1 and failing in broken[0]
