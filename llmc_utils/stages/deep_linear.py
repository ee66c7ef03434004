"""Deep linear networks: the paper's minimal example (Fig. 3), how often a single layer beats the full path, and a
numeric check of Theorem 4.1.

Paper (Adilova et al. 2024, Sec. 4): for a deep linear network f(X) = X W1 ... WL with squared loss, interpolating ONE
layer k between two parameter settings leaves every other factor fixed, so the output is affine in alpha,
    f(alpha) = P + alpha * Q,   P = f(alpha = 0),   Q = f(alpha = 1) - f(alpha = 0),
and the loss L(alpha) = mean_i ||P_i + alpha Q_i - Y_i||^2 = c0 + c1 alpha + c2 alpha^2 with
    c0 = mean ||P - Y||^2,   c1 = 2 mean <P - Y, Q>,   c2 = mean ||Q||^2 >= 0,
a convex quadratic (its second difference on a grid of step h is exactly 2 c2 h^2 >= 0). Interpolating two or more
layers makes the output a polynomial of higher degree in alpha, and L(alpha) can be non-convex.

What this module produces:
* minimal example: the 1-D diagonal network y = w2 * w1 * x with target y = x, so L(w1, w2) = m (w1 w2 - 1)^2 with
  m = mean(x^2), and the hyperbola w1 w2 = 1 is a valley of global minima (two branches: w1, w2 > 0 and < 0). For two
  minima w = (a, 1/a), w' = (a', 1/a') with r = a'/a, the barriers at alpha = 0.5 (loss at the midpoint minus
  the mean of the two endpoint losses, here 0) are, by hand:
      full path                        m (r - 1)^4 / (16 r^2)
      layer 1 into A = layer 2 into B  m (r - 1)^2 / 4
      layer 2 into A = layer 1 into B  m (r - 1)^2 / (4 r^2)
  so full / best single = (r - 1)^2 / (4 min(r^2, 1)): the best single-layer path is lower than the full path exactly
  when r < 0 (minima on opposite branches, r != -1) or |log r| > log 3 (same branch, scales more than 3x apart); for
  minima closer than that the full path hugs the valley (4th order in r - 1) and beats every single-layer path
  (2nd order). Never are both single-layer paths lower than the full one. The paper's pair w = (1/s, s), w' = (s, 1/s)
  has r = s^2 and full / layer-2 ratio (s^2 - 1)^2 / 4 (16 for s = 3) whatever the data: an identity of the chosen
  pair, checked as a sanity check, not evidence.
* random pairs of 1-D global minima: w1 = sign * exp(u) with u ~ U(-log S, log S) and sign = +-1 with probability 1/2
  each (independently per minimum), w2 = 1 / w1; S = random_minima_scale. By the formulas above the expected fraction
  of pairs whose best single-layer barrier is below the full one is 1/2 + 1/2 (1 - log 3 / (2 log S))_+^2
  (`expected_fraction_random_minima`, 0.625 at S = 3): a property of how the minima are drawn, so the measured
  fraction is a sanity check against it, never evidence.
* Sec. 4's question on the trained deep linear pairs of the theorem check (the claim): does the best single-layer
  path have a lower barrier than the full path? A pair has k = depth x bases single-layer paths and one full path; if
  the k + 1 paths were alike (exchangeable), the best of k would beat the full one with probability k / (k + 1)
  anyway (0.8 at depth 2), so that exchangeable rate is the claim's threshold and its null. The barrier is read at
  alpha = 0.5 (the authors' code); beside it, as sensitivity rows, the max over the alpha grid (against the chord of
  the two full models: a single-layer path ends at a hybrid model, which is charged for) and the max above the path's
  own end points (by Theorem 4.1 never above 0 for a single layer). Per depth and per branch (`branch`: whether A and
  B lie on one branch of the valley of factorisations, as w1 w1' > 0 in 1-D) in `lower_by_depth`.
* Theorem 4.1 check: random deep linear networks (depths x widths x replicates); endpoint pairs "random" (two
  initialisations) and "trained" (the same two after full-batch gradient descent on the same data, trained with
  llmc_utils.core.trainer). Expected: every single-layer cut convex and equal to the closed form up to rounding; cuts
  through two layers (or all layers) can be non-convex, so a counterexample is searched for.

Claims (`CLAIMS`) and identities of the setup (`SANITY_CHECKS`) read the metrics built by `stage_metrics`
(metrics/deep_linear.json; the stage runs once: float64, deterministic, no repetitions).

Conventions: one network is a state dict {"layer1.weight": W1, ..., "layerL.weight": WL} of (d_in, d_out) float64
matrices (f = X W1 ... WL as in the paper). Logical layers, interpolation (layers.mix) and barriers
(evaluation.barrier) are the ones the real networks use, so "layer k into A" means the same thing everywhere.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Annotated, Literal, cast

import numpy as np
import pandas as pd
import torch
from pydantic import Field, model_validator

from llmc_utils.core import plotting
from llmc_utils.core.claims import Claim, DataThreshold, Null, SanityCheck, clopper_pearson
from llmc_utils.core.config import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Section
from llmc_utils.core.evaluation import barrier
from llmc_utils.core.layers import logical_layers, mix
from llmc_utils.core.runtime import progress
from llmc_utils.core.trainer import OptimConfig, load_weights, train_members
from llmc_utils.stages.spec import EVALUATION, RUNTIME, Figure, StageSpec

DTYPE = torch.float64  # second differences are ~h^2 L''; float32 rounding of L would swamp them
Depth = Annotated[int, Field(ge=2)]  # depth 1 has no second layer, so nothing to compare
State = dict[str, torch.Tensor]


class DeepLinearConfig(Section):
    # torch threads for this stage (stage.setup applies it): the matrices are tiny (<= 51 x 32 x 32), a second thread
    # only adds synchronisation, which costs far more CPU time than the arithmetic on a busy 2-core machine
    threads: PositiveInt = 1
    seed: NonNegativeInt = 0
    # --- minimal example: y = w2 * w1 * x, target y = x; minima w = (1/s, s) and w' = (s, 1/s)
    minimum_scale: PositiveFloat = 3.0  # s; s = 3: full barrier 3.16, layer-2 barrier 0.20 (times mean x^2)
    n_points: PositiveInt = 32  # 1-D inputs x ~ N(0, 1)
    landscape_range: tuple[float, float] = (-1.0, 4.0)  # (low, high) of both axes of the loss landscape
    landscape_resolution: int = Field(201, ge=11)
    # --- random pairs of 1-D global minima: w1 = sign * exp(u), u ~ U(-log S, log S), sign = +-1, w2 = 1 / w1
    random_minima: int = Field(400, ge=2)  # number of pairs (one claim value each)
    random_minima_scale: float = Field(3.0, gt=1.0)  # S; S = minimum_scale puts the Fig. 3 pair at the range's ends
    # a single-layer barrier counts as lower than the full one only if below it by > tie_rtol * max(|full|, |single|):
    # exact ties (identical endpoints, the sign flip w' = -w) must not be decided by the last bit
    tie_rtol: NonNegativeFloat = 1e-9
    # --- Theorem 4.1 check on random deep linear networks
    depths: list[Depth] = Field(default_factory=lambda: [2, 3, 4, 6], min_length=1)
    widths: list[PositiveInt] = Field(default_factory=lambda: [2, 8, 32], min_length=1)
    input_dim: PositiveInt = 8
    output_dim: PositiveInt = 4
    n_samples: PositiveInt = 32
    label_noise: NonNegativeFloat = 0.1  # Y = X T + noise * N(0, 1), teacher T ~ N(0, 1 / input_dim)
    replicates: PositiveInt = 6  # networks per (depth, width); each gives one random and one trained pair
    pair_kinds: list[Literal["random", "trained"]] = Field(["random", "trained"], min_length=1)
    bases: list[Literal["A", "B"]] = Field(["A", "B"], min_length=1)
    n_alphas: int = Field(51, ge=5)  # alpha grid on [0, 1] for every cut and path; odd, so it holds alpha = 0.5
    convexity_tolerance: PositiveFloat = 1e-9  # a second difference >= -tol * max|L| counts as convex
    closed_form_tolerance: PositiveFloat = 1e-9  # |closed form - numeric| <= tol * max|L| counts as a match
    # trained pairs: full-batch gradient descent (llmc_utils.core.trainer with batch = all samples)
    train_steps: PositiveInt = 100
    learning_rate: PositiveFloat = 0.03  # divided by the depth: the sharpness grows ~linearly with depth
    momentum: float = Field(0.9, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _check(self):
        s = self.minimum_scale
        if abs(s - 1.0) < 1e-6:
            raise ValueError("minimum_scale must differ from 1 (else both minima are the same point (1, 1))")
        low, high = self.landscape_range
        if not (low < min(s, 1 / s) and max(s, 1 / s) < high):
            raise ValueError(
                f"landscape_range {list(self.landscape_range)} must contain both minima (1/s, s) and "
                f"(s, 1/s) with s = minimum_scale = {s}"
            )
        if self.n_alphas % 2 == 0:
            raise ValueError(
                f"n_alphas must be odd so that the grid holds alpha = 0.5 (where barriers are read), "
                f"got {self.n_alphas}"
            )
        for name in ("depths", "widths", "pair_kinds", "bases"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ValueError(f"{name} must not repeat values, got {values}")
        return self

    def optim(self, depth: int) -> OptimConfig:
        return OptimConfig(
            epochs=self.train_steps,
            batch_size=self.n_samples,
            lr=self.learning_rate / depth,
            momentum=self.momentum,
            weight_decay=0.0,
        )


# ---------------------------------------------------------------------------------------------------------------------
# Deep linear networks as state dicts


def key(layer: int) -> str:
    return f"layer{layer}.weight"


def depth_of(state: State) -> int:
    return len(logical_layers(state))


def weights(state: State) -> list[torch.Tensor]:
    """W1, ..., WL in forward order (each (d_in, d_out), or (G, d_in, d_out) for a batch of G networks)."""
    return [state[key(k)] for k in range(1, depth_of(state) + 1)]


def forward(ws: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """X W1 ... WL; a leading batch dimension on any W broadcasts (used to evaluate a whole alpha grid at once)."""
    h = x
    for w in ws:
        h = h @ w
    return h


def squared_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """mean over samples of ||f(x) - y||^2 (sum over output dimensions); keeps leading batch dimensions."""
    return ((out - y) ** 2).sum(-1).mean(-1)


def network_loss(state: State, x: torch.Tensor, y: torch.Tensor) -> float:
    return squared_loss(forward(weights(state), x), y).item()


def cut_losses(
    state_a: State,
    state_b: State,
    layers: tuple[int, ...],
    base: str,
    x: torch.Tensor,
    y: torch.Tensor,
    alphas: torch.Tensor,
) -> torch.Tensor:
    """L(alpha) on the grid for the cut that interpolates `layers` (1-based) and keeps the rest from `base`.

    Built numerically: one interpolated state dict per alpha (layers.mix), then all of them in one batched product.
    """
    keys = [key(k) for k in layers]
    states = [mix(state_a, state_b, t, keys, base) for t in alphas.tolist()]
    layer_keys = [key(i) for i in range(1, depth_of(state_a) + 1)]
    ws = [torch.stack([s[k] for s in states]) if k in keys else states[0][k] for k in layer_keys]
    return squared_loss(forward(ws, x), y)


def quadratic_coefficients(
    state_a: State, state_b: State, layer: int, base: str, x: torch.Tensor, y: torch.Tensor
) -> tuple[float, float, float]:
    """Theorem 4.1 closed form (c0, c1, c2) of L(alpha) = c0 + c1 alpha + c2 alpha^2 for the single-layer cut."""
    keys = [key(layer)]
    f0 = forward(weights(mix(state_a, state_b, 0.0, keys, base)), x)
    f1 = forward(weights(mix(state_a, state_b, 1.0, keys, base)), x)
    p, q = f0 - y, f1 - f0
    return (p * p).sum(-1).mean().item(), 2 * (p * q).sum(-1).mean().item(), (q * q).sum(-1).mean().item()


def second_differences(values: torch.Tensor) -> torch.Tensor:
    return values[2:] - 2 * values[1:-1] + values[:-2]


def alpha_grid(n: int) -> torch.Tensor:
    return torch.linspace(0.0, 1.0, n, dtype=DTYPE)


def midpoint(alphas: torch.Tensor) -> int:
    """Index of alpha = 0.5 in the grid, where barriers are read; the grid must hold it exactly."""
    mid = (len(alphas) - 1) // 2
    if len(alphas) % 2 == 0 or alphas[mid].item() != 0.5:
        raise ValueError(f"the alpha grid must hold 0.5 at its middle (odd length), got {len(alphas)} points")
    return mid


def path_barriers(losses: torch.Tensor, loss_a, loss_b, alphas: torch.Tensor) -> tuple:
    """(barrier at alpha = 0.5, max barrier over the grid) of L(alpha) against the chord of the two FULL models.
    losses: (n_alphas, ...) with loss_a, loss_b broadcasting over the trailing dimensions (floats or tensors)."""
    shape = (-1,) + (1,) * (losses.dim() - 1)
    over_chord = barrier(losses, loss_a, loss_b, alphas.reshape(shape))
    return over_chord[midpoint(alphas)], over_chord.max(0).values


# ---------------------------------------------------------------------------------------------------------------------
# Minimal example (Fig. 3): y = w2 * w1 * x with target y = x


def minimal_pair(scale: float) -> tuple[State, State]:
    """w = (1/s, s) and w' = (s, 1/s): two global minima on the hyperbola w1 w2 = 1."""

    def net(w1, w2):
        return {key(1): torch.tensor([[w1]], dtype=DTYPE), key(2): torch.tensor([[w2]], dtype=DTYPE)}

    return net(1.0 / scale, scale), net(scale, 1.0 / scale)


def minimal_data(cfg: DeepLinearConfig) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(cfg.seed)
    x = torch.randn(cfg.n_points, 1, generator=generator, dtype=DTYPE)
    return x, x.clone()  # target y = x: the network must learn w1 * w2 = 1


MINIMAL_PATHS = {"full": (1, 2), "layer 1": (1,), "layer 2": (2,)}


def minimal_example(cfg: DeepLinearConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(paths, barriers): L(alpha) along the full, layer-1 and layer-2 paths (both bases) and their barriers.

    Barriers as in docs/method.md: against the two FULL models, at alpha = 0.5 and as the max over the grid.
    """
    a, b = minimal_pair(cfg.minimum_scale)
    x, y = minimal_data(cfg)
    alphas = alpha_grid(cfg.n_alphas)
    loss_a, loss_b = network_loss(a, x, y), network_loss(b, x, y)
    path_rows, barrier_rows = [], []
    for path, layers in MINIMAL_PATHS.items():
        for base in ("A",) if len(layers) == 2 else ("A", "B"):  # the full path does not depend on the base
            losses = cut_losses(a, b, layers, base, x, y, alphas)
            for t, loss in zip(alphas.tolist(), losses.tolist()):
                state = mix(a, b, t, [key(k) for k in layers], base)
                path_rows.append(
                    dict(path=path, base=base, alpha=t, w1=state[key(1)].item(), w2=state[key(2)].item(), loss=loss)
                )
            barrier_mid, barrier_max = path_barriers(losses, loss_a, loss_b, alphas)
            barrier_rows.append(
                dict(
                    path=path,
                    base=base,
                    loss_a=loss_a,
                    loss_b=loss_b,
                    loss_mid=losses[midpoint(alphas)].item(),
                    barrier_mid=barrier_mid.item(),
                    barrier_max=barrier_max.item(),
                    mean_x2=(x**2).mean().item(),
                )
            )
    return pd.DataFrame(path_rows), pd.DataFrame(barrier_rows)


def minimal_landscape(cfg: DeepLinearConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(w1 grid, w2 grid, loss) over landscape_range^2, evaluated with the same forward/loss as the paths."""
    x, y = minimal_data(cfg)
    axis = torch.linspace(*cfg.landscape_range, cfg.landscape_resolution, dtype=DTYPE)
    w1, w2 = torch.meshgrid(axis, axis, indexing="xy")
    loss = squared_loss(forward([w1.reshape(-1, 1, 1), w2.reshape(-1, 1, 1)], x), y).reshape(w1.shape)
    return w1.numpy(), w2.numpy(), loss.numpy()


# ---------------------------------------------------------------------------------------------------------------------
# Theorem 4.1 on many random deep linear networks


class LinearStack(torch.nn.Module):
    """R independent deep linear networks trained as one module: weights (R, d_in, d_out), inputs (n, R, d_in).

    Their losses add, so each network follows its own gradient; one train_model call trains all replicates.
    Init N(0, 1/d_in) keeps the output scale ~1 at every depth (the default Linear init shrinks it by 3^(L/2)).
    """

    def __init__(self, dims: list[int], replicates: int):
        super().__init__()
        for k, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:]), start=1):
            layer = torch.nn.Module()
            layer.weight = torch.nn.Parameter(torch.randn(replicates, d_in, d_out, dtype=DTYPE) / d_in**0.5)
            self.add_module(f"layer{k}", layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = [cast(torch.Tensor, layer.weight) for layer in self.children()]  # the Parameters of __init__
        return forward(weights, x.transpose(0, 1)).transpose(0, 1)


def stacked_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((out - y) ** 2).sum(-1).mean(0).sum()  # sum over replicates of each network's own mean loss


def network_pairs(cfg: DeepLinearConfig, depth: int, width: int, run_seed: int) -> dict[str, list[tuple]]:
    """{"random": [(A, B, x, y)] * R, "trained": [...]} for one (depth, width): replicate r has its own data.

    A and B start from init seeds run_seed + 1 and run_seed + 2; "trained" = both after full-batch gradient descent
    on the same data.
    """
    generator = torch.Generator().manual_seed(run_seed)
    r, n = cfg.replicates, cfg.n_samples
    x = torch.randn(n, r, cfg.input_dim, generator=generator, dtype=DTYPE)
    teacher = torch.randn(r, cfg.input_dim, cfg.output_dim, generator=generator, dtype=DTYPE) / cfg.input_dim**0.5
    y = forward([teacher], x.transpose(0, 1)).transpose(0, 1)
    y = y + cfg.label_noise * torch.randn(y.shape, generator=generator, dtype=DTYPE)
    dims = [cfg.input_dim] + [width] * (depth - 1) + [cfg.output_dim]
    steps = cfg.train_steps
    with tempfile.TemporaryDirectory() as tmp:  # the endpoints are cheap to remake from their seeds; keep none
        members = {
            member: dict(
                init_seed=init_seed, run_dir=Path(tmp) / member, desc=f"GD depth {depth} width {width} {member}"
            )
            for member, init_seed in (("A", run_seed + 1), ("B", run_seed + 2))
        }
        # in this process (processes = 1): each run is a few hundred full-batch steps of a tiny stack, shorter than
        # starting a worker, and the grid trains one pair per (depth, width)
        paths = train_members(
            members,
            make_model=partial(LinearStack, dims, r),
            x=x,
            y=y,
            cfg=cfg.optim(depth),
            data_seed=run_seed,
            checkpoint_epochs=[0, steps],
            loss_fn=stacked_loss,
        )
        states = {member: {"random": load_weights(p[0]), "trained": load_weights(p[-1])} for member, p in paths.items()}
    pairs: dict[str, list[tuple]] = {}
    for kind in cfg.pair_kinds:
        pairs[kind] = []
        for i in range(r):
            a = {k: v[i].to(DTYPE) for k, v in states["A"][kind].items()}
            b = {k: v[i].to(DTYPE) for k, v in states["B"][kind].items()}
            pairs[kind].append((a, b, x[:, i], y[:, i]))
    if "trained" in pairs:
        for a, b, xi, yi in pairs["trained"]:
            for state in (a, b):
                if not np.isfinite(network_loss(state, xi, yi)):
                    raise FloatingPointError(
                        f"gradient descent diverged (depth {depth}, width {width}); lower "
                        f"deep_linear.learning_rate ({cfg.learning_rate}) or momentum"
                    )
    return pairs


def cuts_of(depth: int, bases: Sequence[str]) -> list[tuple[tuple[int, ...], str]]:
    """Every single layer and every pair of layers in each base, plus all layers at once (base-independent)."""
    layers = range(1, depth + 1)
    groups: list[tuple[int, ...]] = [(k,) for k in layers] + list(itertools.combinations(layers, 2))
    if depth > 2:
        groups.append(tuple(layers))
    return [(g, base) for g in groups for base in (bases[:1] if len(g) == depth else bases)]


def group_name(n_layers: int) -> str:
    """A depth-2 network's full interpolation counts as 'two layers'."""
    return "single layer" if n_layers == 1 else ("two layers" if n_layers == 2 else "all layers")


def analyse_cut(
    cfg: DeepLinearConfig,
    a: State,
    b: State,
    x: torch.Tensor,
    y: torch.Tensor,
    layers: tuple[int, ...],
    base: str,
    alphas: torch.Tensor,
    ends: tuple[float, float] | None = None,
) -> tuple[dict, torch.Tensor]:
    """One row of the cut table (and the L(alpha) values): convexity verdict, for one layer the closed-form error,
    and the loss barriers against the two full models (at alpha = 0.5 and the max over the grid). `ends`: the full
    models' losses (L(A), L(B)) when already known."""
    losses = cut_losses(a, b, layers, base, x, y, alphas)
    loss_a, loss_b = ends if ends is not None else (network_loss(a, x, y), network_loss(b, x, y))
    barrier_mid, barrier_max = path_barriers(losses, loss_a, loss_b, alphas)
    h = (alphas[1] - alphas[0]).item()
    scale = losses.abs().max().item()
    min_sd = second_differences(losses).min().item()
    chord_gap = barrier(losses, losses[0], losses[-1], alphas).max().item()  # height above the cut's own chord
    error = float("nan")
    if len(layers) == 1:
        c0, c1, c2 = quadratic_coefficients(a, b, layers[0], base, x, y)
        error = (c0 + c1 * alphas + c2 * alphas**2 - losses).abs().max().item()
    row = dict(
        layers="+".join(map(str, layers)),
        n_layers=len(layers),
        group=group_name(len(layers)),
        base=base if len(layers) < depth_of(a) else "-",
        min_second_difference=min_sd,
        loss_scale=scale,
        min_curvature_rel=min_sd / (h * h * scale),
        max_above_chord=chord_gap,
        closed_form_max_error=error,
        barrier_mid=barrier_mid.item(),
        barrier_max=barrier_max.item(),
        convex=bool(min_sd >= -cfg.convexity_tolerance * scale),
        closed_form_match=bool(error <= cfg.closed_form_tolerance * scale) if len(layers) == 1 else None,
    )
    return row, losses


def pair_cuts(cfg: DeepLinearConfig, a: State, b: State, x: torch.Tensor, y: torch.Tensor, alphas: torch.Tensor):
    """(row, layers, base) of every cut of one network pair (`cuts_of`); rows carry the full models' losses."""
    loss_a, loss_b = network_loss(a, x, y), network_loss(b, x, y)
    for layers, base in cuts_of(depth_of(a), cfg.bases):
        row, _ = analyse_cut(cfg, a, b, x, y, layers, base, alphas, ends=(loss_a, loss_b))
        yield dict(loss_a=loss_a, loss_b=loss_b, **row), layers, base


def branch(a: State, b: State, x: torch.Tensor, rtol: float = 1e-8) -> str:
    """Whether two networks lie on one branch of the valley of factorisations: at every hidden layer k, the map G_k
    that takes A's hidden representation H_A = X W1 ... Wk to B's (least squares on the inputs x) has det > 0
    ("same"); some det < 0 ("opposite": along the full path that layer's factor must pass through a singular one,
    where the network loses rank, as w1 crosses 0 between the two branches of the 1-D valley w1 w2 = 1, whose G is
    w1' / w1); a hidden layer wider than the rank of its representation leaves G free to turn through the unused
    directions, so its factorisations are connected ("connected")."""
    hidden_a, hidden_b, connected = x, x, False
    for w_a, w_b in zip(weights(a)[:-1], weights(b)[:-1]):
        hidden_a, hidden_b = hidden_a @ w_a, hidden_b @ w_b
        singular = [torch.linalg.svdvals(h) for h in (hidden_a, hidden_b)]
        if hidden_a.shape[1] > hidden_a.shape[0] or any(s[-1] <= rtol * s[0] for s in singular):
            connected = True
            continue
        if torch.linalg.det(torch.linalg.lstsq(hidden_a, hidden_b).solution) < 0:
            return "opposite"
    return "connected" if connected else "same"


def theorem_check(cfg: DeepLinearConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(cuts, counterexample curves). cuts: one row per network x cut; curves: L(alpha) of the most non-convex
    two-layer cut and of the single-layer cuts of its two layers (same network, same base)."""
    alphas = alpha_grid(cfg.n_alphas)
    rows, most_negative = [], None
    configs = list(itertools.product(cfg.depths, cfg.widths))
    for run, (depth, width) in enumerate(progress(configs, desc="deep linear networks")):
        pairs = network_pairs(cfg, depth, width, run_seed=1000 * cfg.seed + 10 * run)
        for kind, replicate_pairs in pairs.items():
            for replicate, (a, b, x, y) in enumerate(replicate_pairs):
                where = dict(depth=depth, width=width, pair_kind=kind, replicate=replicate, branch=branch(a, b, x))
                for row, layers, base in pair_cuts(cfg, a, b, x, y, alphas):
                    rows.append(dict(where, **row))
                    # the counterexample shown: a non-convex pair of layers inside a deeper network (the rest of the
                    # network fixed, not the full interpolation of a depth-2 net) with the highest bump above its
                    # chord relative to the loss scale, so the non-convexity is visible by eye
                    rank = (
                        row["convex"],
                        depth == 2,
                        -row["max_above_chord"] / row["loss_scale"],
                        row["min_curvature_rel"],
                    )
                    if row["n_layers"] == 2 and (most_negative is None or rank < most_negative[0]):
                        most_negative = (rank, rows[-1], (a, b, x, y), layers, base)
    cuts = pd.DataFrame(rows)
    curves = []
    if most_negative is not None:
        _, row, (a, b, x, y), layers, base = most_negative
        label = f"depth {row['depth']}, width {row['width']}, {row['pair_kind']} pair {row['replicate']}"
        h = (alphas[1] - alphas[0]).item()
        for cut in (layers, (layers[0],), (layers[1],)):
            losses = cut_losses(a, b, cut, base, x, y, alphas)
            curvature = second_differences(losses).min().item() / (h * h * losses.abs().max().item())
            for t, loss in zip(alphas.tolist(), losses.tolist()):
                curves.append(
                    dict(
                        network=label,
                        base=base,
                        layers="+".join(map(str, cut)),
                        n_layers=len(cut),
                        min_curvature_rel=curvature,
                        alpha=t,
                        loss=loss,
                    )
                )
    return cuts, pd.DataFrame(curves)


def summary(cuts: pd.DataFrame) -> dict:
    """Headline numbers (DVC metrics): single-layer verdicts and how often multi-layer cuts are non-convex."""
    single, two, full = (cuts[cuts.group == g] for g in ("single layer", "two layers", "all layers"))
    rel_error = single.closed_form_max_error / single.loss_scale
    out = dict(
        n_networks=int(cuts.groupby(["depth", "width", "pair_kind", "replicate"]).ngroups),
        n_single_layer_cuts=len(single),
        n_single_layer_violations=int((~single.convex).sum()),
        n_closed_form_mismatches=int((~single.closed_form_match.astype(bool)).sum()),
        max_closed_form_error=float(single.closed_form_max_error.max()),
        max_closed_form_error_rel=float(rel_error.max()),
        min_single_layer_curvature_rel=float(single.min_curvature_rel.min()),
        n_two_layer_cuts=len(two),
        n_two_layer_nonconvex=int((~two.convex).sum()),
        n_all_layer_cuts=len(full),
        n_all_layer_nonconvex=int((~full.convex).sum()),
        two_layer_counterexample_found=bool((~two.convex).any()),
    )
    for kind, part in two.groupby("pair_kind"):
        out[f"fraction_two_layer_nonconvex_{kind}"] = float((~part.convex).mean())
    return out


def nonconvex_table(cuts: pd.DataFrame) -> pd.DataFrame:
    """Cuts, non-convex cuts and their fraction per pair kind and group (single / two / all layers)."""
    table = cuts.groupby(["pair_kind", "group"]).convex.agg(cuts="size", convex="sum").reset_index()
    table["nonconvex"] = table.cuts - table.convex
    table["fraction_nonconvex"] = table.nonconvex / table.cuts
    return table.drop(columns="convex")


# ---------------------------------------------------------------------------------------------------------------------
# Does the best single layer beat the full path? Random 1-D minima and the deep linear pairs of the theorem check

RANDOM_MINIMA_STREAM = 0x1D  # numpy seed stream (seed, stream) of the random minima, apart from every torch seed
# population (the pair_kind of a cut row) -> prefix of its metrics
POPULATIONS = {"1-D minima": "random_minima", "trained": "trained", "random": "random_init"}
PAIR_KEYS = ["pair_kind", "depth", "width", "replicate"]  # one network pair of a cut table


def expected_fraction_random_minima(scale: float) -> float:
    """P(best single-layer barrier < full barrier) for the random 1-D minima (module docstring): opposite branches
    (probability 1/2) always; the same branch when |u - u'| > log 3, u, u' ~ U(-log S, log S) independent."""
    same_branch = max(0.0, 1.0 - np.log(3.0) / (2.0 * np.log(scale))) ** 2
    return float(0.5 + 0.5 * same_branch)


def random_minima(cfg: DeepLinearConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(minima, cuts) of `random_minima` random pairs of global minima of the 1-D network (distribution in the module
    docstring), on the data of the minimal example; see `one_d_pairs`."""
    rng = np.random.default_rng((cfg.seed, RANDOM_MINIMA_STREAM))
    log_s = float(np.log(cfg.random_minima_scale))
    u = rng.uniform(-log_s, log_s, size=(2, cfg.random_minima))
    sign = rng.choice([-1.0, 1.0], size=(2, cfg.random_minima))
    x, y = minimal_data(cfg)
    return one_d_pairs(sign[0] * np.exp(u[0]), sign[1] * np.exp(u[1]), x, y, alpha_grid(cfg.n_alphas), cfg.bases)


def one_d_pairs(
    w1_a: np.ndarray, w1_b: np.ndarray, x: torch.Tensor, y: torch.Tensor, alphas: torch.Tensor, bases: Sequence[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(minima, cuts) for the pairs of 1-D minima (w1_a, 1 / w1_a), (w1_b, 1 / w1_b) of y = w2 w1 x, target y = x.

    minima: one row per pair (w1, w2 of both minima, same branch?, |log |r||, endpoint losses). cuts: the rows
    `pair_barriers` reads, one per pair and path (each single layer in each base, and the full path), with the loss
    barriers at alpha = 0.5, the max over the grid and the max above the path's own chord, and the pair's branch.
    All pairs are evaluated at once (a leading batch dimension on every weight) with the same cut_losses / mix as
    the deep networks.
    """
    n = len(w1_a)
    w1 = torch.tensor(np.stack([w1_a, w1_b]), dtype=DTYPE)
    a, b = ({key(1): w1[i].reshape(n, 1, 1), key(2): (1.0 / w1[i]).reshape(n, 1, 1)} for i in (0, 1))
    loss_a, loss_b = (squared_loss(forward(weights(state), x), y).reshape(n) for state in (a, b))
    ids = dict(pair_kind="1-D minima", depth=2, width=1, replicate=np.arange(n))
    minima = pd.DataFrame(
        dict(
            **ids,
            w1_a=w1_a,
            w2_a=1.0 / w1_a,
            w1_b=w1_b,
            w2_b=1.0 / w1_b,
            same_branch=np.sign(w1_a) == np.sign(w1_b),
            log_abs_ratio=np.abs(np.log(np.abs(w1_b / w1_a))),
            loss_a=loss_a.numpy(),
            loss_b=loss_b.numpy(),
        )
    )
    parts = []
    branches = np.where(np.sign(w1_a) == np.sign(w1_b), "same", "opposite")  # `branch` of a 1-D pair
    for layers, base in cuts_of(2, bases):
        losses = cut_losses(a, b, layers, base, x, y, alphas).reshape(len(alphas), n)
        barrier_mid, barrier_max = path_barriers(losses, loss_a, loss_b, alphas)
        own = barrier(losses, losses[0], losses[-1], alphas.reshape(-1, 1)).max(0).values
        parts.append(
            pd.DataFrame(
                dict(
                    **ids,
                    branch=branches,
                    layers="+".join(map(str, layers)),
                    n_layers=len(layers),
                    base=base if len(layers) == 1 else "-",
                    barrier_mid=barrier_mid.numpy(),
                    barrier_max=barrier_max.numpy(),
                    max_above_chord=own.numpy(),
                )
            )
        )
    return minima, pd.concat(parts, ignore_index=True)


def lower(single, full, tie_rtol: float):
    """single < full by more than tie_rtol * max(|full|, |single|) (elementwise on arrays): a tie is not 'lower'."""
    single, full = np.asarray(single, dtype=float), np.asarray(full, dtype=float)
    return single < full - tie_rtol * np.maximum(np.abs(full), np.abs(single))


READINGS = {"mid": "barrier_mid", "max": "barrier_max", "own": "max_above_chord"}  # reading -> cut-table column
READING_LABELS = {
    "mid": "alpha = 0.5 (the authors' code)",
    "max": "max over the alpha grid",
    "own": "max above the path's own end points",
}


def _cut_table(*cut_tables: pd.DataFrame) -> pd.DataFrame:
    columns = PAIR_KEYS + ["branch", "layers", "n_layers", "base", *READINGS.values()]
    return pd.concat([table[columns] for table in cut_tables], ignore_index=True)


def pair_barriers(*cut_tables: pd.DataFrame, tie_rtol: float) -> pd.DataFrame:
    """One row per network pair of the cut tables (theorem check, random minima): its branch, the number k of
    single-layer paths, and per reading (READINGS: alpha = 0.5, max over the grid, max above the path's own chord)
    the full path's barrier, the lowest and highest single-layer barrier (over layers and bases), and whether the best
    (every) single-layer path is lower than the full one (`lower`, same tie rule for all)."""
    cuts = _cut_table(*cut_tables)
    full = cuts[cuts.n_layers == cuts.depth].set_index(PAIR_KEYS)
    single = cuts[cuts.n_layers == 1]
    if full.index.has_duplicates:
        raise ValueError("a network pair has more than one full-path row")
    grouped = single.groupby(PAIR_KEYS, sort=False)
    out = pd.DataFrame(
        {
            f"{which}_single_{at}": getattr(grouped[column], fn)()
            for which, fn in (("best", "min"), ("worst", "max"))
            for at, column in READINGS.items()
        }
    )
    out.insert(0, "branch", grouped.branch.first())
    out.insert(1, "k_single", grouped.size())
    out["best_single_cut"] = (
        single.loc[grouped.barrier_mid.idxmin(), ["layers", "base"]].agg(" into ".join, axis=1).to_numpy()
    )
    out = out.join(
        full[list(READINGS.values())].rename(columns={c: f"full_{at}" for at, c in READINGS.items()}), how="inner"
    )
    if len(out) != grouped.ngroups:
        raise ValueError("every network pair needs its full-path row and at least one single-layer row")
    for at in READINGS:
        out[f"best_single_lower_{at}"] = lower(out[f"best_single_{at}"], out[f"full_{at}"], tie_rtol)
        out[f"every_single_lower_{at}"] = lower(out[f"worst_single_{at}"], out[f"full_{at}"], tie_rtol)
    return out.reset_index()


def path_lists(*cut_tables: pd.DataFrame) -> dict[str, dict[str, list[list[float]]]]:
    """{population: {reading: one list per pair, [full, every single-layer path...]}}: what the Sec. 4 claim and its
    null (a random relabelling of a pair's paths) read, in the row order of `pair_barriers`."""
    cuts = _cut_table(*cut_tables)
    cuts = cuts[(cuts.n_layers == 1) | (cuts.n_layers == cuts.depth)]  # not the two-layer cuts of deeper networks
    cuts = cuts.assign(is_full=cuts.n_layers == cuts.depth).sort_values("is_full", ascending=False, kind="stable")
    out: dict[str, dict[str, list[list[float]]]] = {}
    for (kind, *_), part in cuts.groupby(PAIR_KEYS, sort=False):
        for at, column in READINGS.items():
            out.setdefault(POPULATIONS[kind], {}).setdefault(at, []).append([float(v) for v in part[column]])
    return out


def lower_table(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per population: pairs, and the fraction where the best / every single-layer path is lower than the full one,
    per reading (alpha = 0.5, max over the grid, max above the own chord)."""
    columns = [f"{w}_single_lower_{at}" for w in ("best", "every") for at in READINGS]
    table = pairs.groupby("pair_kind", sort=False)[columns].mean()
    table.insert(0, "pairs", pairs.groupby("pair_kind", sort=False).size())
    return table.rename(index=lambda k: POPULATIONS.get(k, k)).rename_axis("population").reset_index()


def lower_by_depth(pairs: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Per population, depth, branch and reading: pairs, how many have their best single-layer path lower than the
    full one, that fraction with its Clopper-Pearson interval, and the rate exchangeable paths would give (mean of
    k / (k + 1))."""
    rows = []
    for (kind, depth, branch_), part in pairs.groupby(["pair_kind", "depth", "branch"]):
        exchangeable = float((part.k_single / (part.k_single + 1)).mean())
        for at in READINGS:
            k, n = int(part[f"best_single_lower_{at}"].sum()), len(part)
            low, high = clopper_pearson(k, n, confidence)
            rows.append(
                dict(
                    population=POPULATIONS[kind],
                    depth=int(depth),
                    branch=branch_,
                    reading=READING_LABELS[at],
                    pairs=n,
                    lower=k,
                    fraction=k / n,
                    low=low,
                    high=high,
                    exchangeable_rate=exchangeable,
                )
            )
    return pd.DataFrame(rows)


def stage_metrics(
    cfg: DeepLinearConfig,
    minimal_barriers: pd.DataFrame,
    cuts: pd.DataFrame,
    pairs: pd.DataFrame,
    minima_cuts: pd.DataFrame,
) -> dict:
    """The stage's metrics (metrics/deep_linear.json), built in one place from its result tables.

    Scalars: the theorem check (`summary`), the minimal example's barriers and its ratio identity, and per population
    (random_minima, trained, random_init) the number of pairs and the fractions of `lower_table`. Lists (one element
    per pair, what the claims and sanity checks read): `<prefix>_paths_<reading>` ([full, single-layer paths...] per
    pair, `path_lists`) and the 0/1 indicator "best single lower" at alpha = 0.5 (`<prefix>_best_single_lower`).
    """
    by_path = minimal_barriers[minimal_barriers.base == "A"].set_index("path").barrier_mid  # the paper's view: from w
    s = cfg.minimum_scale
    out = dict(summary(cuts))
    out.update(
        minimum_scale=s,
        minimal_full_barrier=float(by_path["full"]),
        minimal_layer1_barrier=float(by_path["layer 1"]),
        minimal_layer2_barrier=float(by_path["layer 2"]),
        minimal_ratio_full_over_layer2=float(by_path["full"] / by_path["layer 2"]),
        minimal_ratio_expected=(s * s - 1) ** 2 / 4,
        tie_rtol=cfg.tie_rtol,
        random_minima_scale=cfg.random_minima_scale,
        expected_fraction_random_minima=expected_fraction_random_minima(cfg.random_minima_scale),
    )
    out.update(population_metrics(pairs))
    out["trained_lower_by_depth"] = lower_by_depth(pairs[pairs.pair_kind == "trained"]).to_dict("records")
    for prefix, by_reading in path_lists(minima_cuts, cuts).items():
        out.update({f"{prefix}_paths_{at}": lists for at, lists in by_reading.items()})
    return out


def population_metrics(pairs: pd.DataFrame) -> dict:
    """Per population of a `pair_barriers` table (metrics prefix from POPULATIONS): number of pairs, the fractions
    of `lower_table`, and the per-pair 0/1 list "best single lower" at alpha = 0.5."""
    out: dict[str, float | list[int]] = {}
    for kind, part in pairs.groupby("pair_kind", sort=False):
        prefix = POPULATIONS[kind]
        out[f"{prefix}_pairs"] = len(part)
        for which in ("best", "every"):
            for at in READINGS:
                out[f"{prefix}_fraction_{which}_single_lower_{at}"] = float(part[f"{which}_single_lower_{at}"].mean())
        out[f"{prefix}_best_single_lower"] = [int(v) for v in part.best_single_lower_mid]
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Claims and sanity checks (read by the report; thresholds in ReportConfig)


def _best_single_lower(prefix: str, at: str):
    """Measure: per pair of the population, 1 where its best single-layer path is lower than the full one (reading
    `at`, the stage's tie rule), else 0."""

    def measure(m: dict, _cfg) -> list[float]:
        return [float(lower(min(p[1:]), p[0], m["tie_rtol"])) for p in m[f"{prefix}_paths_{at}"]]

    return measure


def _exchangeable_rate(prefix: str) -> DataThreshold:
    """The fraction of pairs whose best single-layer path would beat the full one if a pair's k + 1 paths were alike:
    mean of k / (k + 1) over the pairs (exact, from the design)."""

    def bounds(runs: list[dict], _cfg) -> tuple[float, float]:
        rate = float(np.mean([(len(p) - 1) / len(p) for m in runs for p in m[f"{prefix}_paths_mid"]]))
        return rate, rate

    return DataThreshold("exchangeable rate (mean of k / (k + 1))", bounds)


def _relabel(prefix: str) -> Null:
    def draw(rng: np.random.Generator, runs: list[dict], _cfg) -> list[dict]:
        keys = [f"{prefix}_paths_{at}" for at in READINGS]
        out = []
        for m in runs:
            orders = [rng.permutation(len(p)) for p in m[keys[0]]]  # one relabelling per pair, every reading
            out.append(dict(m, **{key: [[p[i] for i in order] for p, order in zip(m[key], orders)] for key in keys}))
        return out

    return Null("exchangeable paths: each pair's full and single-layer barriers relabelled at random", draw)


_SEC4 = (
    "Trained deep linear networks (every depth and width of the theorem check): the best single-layer path has a "
    "lower barrier than the full path more often than if the paths were alike"
)
CLAIMS = [
    Claim(
        "Sec. 4",
        f"{_SEC4} [barrier at {READING_LABELS[at]}]",
        "single-layer interpolation avoids barriers of full interpolation"
        if at == "mid"
        else f"(sensitivity: the barrier read as the {READING_LABELS[at]})",
        "deep_linear",
        _best_single_lower("trained", at),
        ">",
        _exchangeable_rate("trained"),
        f"fraction of trained pairs with best single-layer barrier < full barrier ({READING_LABELS[at]})",
        kind="count",
        null=_relabel("trained"),
        sensitivity_of=None if at == "mid" else f"{_SEC4} [barrier at {READING_LABELS['mid']}]",
    )
    for at in READINGS
]


def _minima_z(m: dict, _cfg) -> float:
    """|measured - closed-form fraction| of the 1-D random minima, in binomial standard errors."""
    lower_ = np.asarray(m["random_minima_best_single_lower"], dtype=float)
    p = m["expected_fraction_random_minima"]
    return abs(lower_.mean() - p) / np.sqrt(p * (1 - p) / lower_.size)


SANITY_CHECKS = [
    SanityCheck(
        "Fig. 3",
        "Minimal example: full / layer-2 barrier ratio equals (s^2 - 1)^2 / 4 (fixed by the pair)",
        "deep_linear",
        lambda m, c: abs(m["minimal_ratio_full_over_layer2"] / m["minimal_ratio_expected"] - 1.0),
        "<=",
        "minimal_ratio_rtol",
        "relative deviation of the ratio from (s^2 - 1)^2 / 4",
    ),
    SanityCheck(
        "Fig. 3",
        "1-D random minima: the fraction whose best single-layer path beats the full one is the "
        "closed form of how they are drawn (0.625 at S = 3)",
        "deep_linear",
        _minima_z,
        "<=",
        "sanity_z",
        "|measured - expected_fraction_random_minima| in binomial standard errors",
    ),
    SanityCheck(
        "Thm. 4.1",
        "Every single-layer cut is convex and equals the closed-form quadratic",
        "deep_linear",
        lambda m, c: m["n_single_layer_violations"] + m["n_closed_form_mismatches"],
        "<=",
        "max_theorem_violations",
        "convexity violations + closed-form mismatches",
    ),
    SanityCheck(
        "Thm. 4.1",
        "The theorem check covers enough single-layer cuts",
        "deep_linear",
        lambda m, c: m["n_single_layer_cuts"],
        ">=",
        "min_theorem_cuts",
        "single-layer cuts checked",
    ),
    SanityCheck(
        "Thm. 4.1",
        "Interpolating two layers at once can be non-convex: a counterexample exists",
        "deep_linear",
        lambda m, c: m["n_two_layer_nonconvex"],
        ">=",
        "min_nonconvex_two_layer_cuts",
        "non-convex two-layer cuts",
    ),
]


# ---------------------------------------------------------------------------------------------------------------------
# Figures

PATH_COLOURS = {"full": "tab:red", "layer 1": "tab:orange", "layer 2": "tab:blue"}


def plot_minimal_example(paths: pd.DataFrame, barriers: pd.DataFrame, landscape, scale: float):
    """Left: log loss over (w1, w2) with the three paths (base A); right: L(alpha) of each path."""
    fig, (ax_map, ax_curve) = plotting.panels(2, width=5.0, height=4.3)
    w1, w2, loss = landscape
    mesh = ax_map.contourf(w1, w2, np.log10(loss + 1e-3), levels=30, cmap="viridis")
    fig.colorbar(mesh, ax=ax_map, label="log10(loss + 1e-3)")
    hyperbola = np.linspace(max(w1.min(), 0.2), w1.max(), 200)
    ax_map.plot(hyperbola, 1 / hyperbola, "w--", lw=1, label="minima: w1 w2 = 1")
    base_a = paths[paths.base == "A"]
    for path, part in base_a.groupby("path", sort=False):
        ax_map.plot(part.w1, part.w2, color=PATH_COLOURS[path], lw=2.5, label=f"{path} path")
    ax_map.plot([1 / scale], [scale], "wo", ms=8)
    ax_map.annotate("w", (1 / scale, scale), xytext=(6, 6), textcoords="offset points", color="w", fontsize=11)
    ax_map.plot([scale], [1 / scale], "ws", ms=8)
    ax_map.annotate("w'", (scale, 1 / scale), xytext=(6, 6), textcoords="offset points", color="w", fontsize=11)
    ax_map.set(
        xlim=(w1.min(), w1.max()),
        ylim=(w2.min(), w2.max()),
        xlabel="w1 (layer 1)",
        ylabel="w2 (layer 2)",
        title="loss landscape of y = w2 w1 x (target y = x)",
    )
    ax_map.legend(loc="lower left", fontsize=7)
    for path, part in base_a.groupby("path", sort=False):
        b = barriers[(barriers.path == path) & (barriers.base == "A")].iloc[0]
        ax_curve.plot(
            part.alpha, part.loss, color=PATH_COLOURS[path], lw=2, label=f"{path}: barrier {b.barrier_mid:.2f}"
        )
    ax_curve.set_yscale("symlog", linthresh=0.1)
    ax_curve.set(xlabel="alpha (0 = w, 1 = w')", ylabel="loss L(alpha)", title="loss along each path (base w)")
    ax_curve.legend(fontsize=8)
    return fig


def plot_theorem_check(cuts: pd.DataFrame, curves: pd.DataFrame):
    """Left: histogram of min second difference / (h^2 max|L|) per group; middle: non-convex fraction; right: the
    counterexample's L(alpha) next to its single-layer cuts."""
    fig, (ax_hist, ax_bar, ax_curve) = plotting.panels(3, width=4.8, height=4.0)
    values = cuts.min_curvature_rel
    linthresh = 1e-3
    bins = np.concatenate(
        [
            -np.logspace(np.log10(max(-values.min(), 10 * linthresh)), np.log10(linthresh), 15),
            np.linspace(-linthresh, linthresh, 5)[1:-1],
            np.logspace(np.log10(linthresh), np.log10(max(values.max(), 10 * linthresh)), 15),
        ]
    )
    for group, colour in (("single layer", "tab:blue"), ("two layers", "tab:orange"), ("all layers", "tab:red")):
        part = values[cuts.group == group]
        if len(part):
            ax_hist.hist(part, bins=bins, alpha=0.55, color=colour, label=f"{group} ({len(part)} cuts)")
    ax_hist.axvline(0, color="k", lw=0.8)
    ax_hist.set_xscale("symlog", linthresh=linthresh)
    ax_hist.set_xticks([-10, -0.1, -1e-3, 0, 1e-3, 0.1, 10])
    ax_hist.set_yscale("log")
    ax_hist.set(
        xlabel="min second difference / (h^2 max L)", ylabel="cuts", title="curvature of L(alpha): < 0 = non-convex"
    )
    ax_hist.legend(fontsize=7)
    table = nonconvex_table(cuts)
    pivot = table.pivot(index="group", columns="pair_kind", values="fraction_nonconvex")
    pivot = pivot.reindex([g for g in ("single layer", "two layers", "all layers") if g in pivot.index])
    pivot.plot.bar(ax=ax_bar, rot=0)
    ax_bar.set(ylabel="fraction of cuts non-convex", xlabel="", title="non-convex cuts per group", ylim=(0, 1))
    for container in ax_bar.containers:
        ax_bar.bar_label(container, fmt="%.2f", fontsize=7)
    if len(curves):
        for layers, part in curves.groupby("layers", sort=False):
            n = part.n_layers.iloc[0]
            ax_curve.plot(
                part.alpha,
                part.loss,
                lw=2.5 if n > 1 else 1.5,
                ls="-" if n > 1 else "--",
                label=f"layers {layers}" if n > 1 else f"layer {layers} only",
            )
            if n > 1:
                ends = part.loss.iloc[[0, -1]].to_numpy()
                ax_curve.plot([0, 1], ends, "k:", lw=1, label=f"chord of layers {layers}")
                top = part.loss.max()
        ax_curve.set_ylim(0, 1.6 * top)  # focus on the two-layer cut; single-layer cuts may leave the frame
        negative = curves[curves.n_layers == 2].min_curvature_rel.iloc[0] < 0
        what = "two-layer counterexample (non-convex)" if negative else "most curved two-layer cut (convex)"
        ax_curve.set(
            xlabel="alpha",
            ylabel="loss L(alpha)",
            title=f"{what}\n{curves.network.iloc[0]}, base {curves.base.iloc[0]}",
        )
        ax_curve.legend(fontsize=8)
    else:
        ax_curve.set_title("no two-layer cut was analysed")
    return fig


POPULATION_LABELS = {
    "1-D minima": "1-D random minima",
    "trained": "deep linear, trained",
    "random": "deep linear, init",
}


def plot_random_minima(minima: pd.DataFrame, pairs: pd.DataFrame, tie_rtol: float):
    """Left: 1-D random minima, best single-layer vs full barrier (alpha = 0.5), by branch; middle: the same for the
    trained deep linear pairs, by depth; right: per population, the fraction of pairs whose best / every single-layer
    path is lower than the full one (alpha = 0.5 and max over the grid). Points below the diagonal: single layer
    lower."""
    fig, (ax_1d, ax_deep, ax_bar) = plotting.panels(3, width=4.8, height=4.2)

    def diagonal(ax, values):
        low, high = np.nanmin(values), np.nanmax(values)
        ax.plot([low, high], [low, high], "k--", lw=1, label="single = full")

    one_d = pairs[pairs.pair_kind == "1-D minima"].merge(minima[["replicate", "same_branch"]], on="replicate")
    for same, colour, label in ((True, "tab:blue", "same branch"), (False, "tab:red", "opposite branches")):
        part = one_d[one_d.same_branch == same]
        if len(part):
            ax_1d.scatter(
                part.full_mid, part.best_single_mid, s=8, alpha=0.6, color=colour, label=f"{label} ({len(part)})"
            )
    if len(one_d):
        diagonal(ax_1d, np.concatenate([one_d.full_mid, one_d.best_single_mid]))
        ax_1d.set_xscale("symlog", linthresh=1e-3)
        ax_1d.set_yscale("symlog", linthresh=1e-3)
    ax_1d.set(
        xlabel="full-path barrier", ylabel="best single-layer barrier", title="1-D network: random pairs of minima"
    )
    ax_1d.legend(fontsize=7)

    trained = pairs[pairs.pair_kind == "trained"]
    for depth, part in trained.groupby("depth"):
        ax_deep.scatter(part.full_mid, part.best_single_mid, s=10, alpha=0.7, label=f"depth {depth}")
    if len(trained):
        values = np.concatenate([trained.full_mid, trained.best_single_mid])
        diagonal(ax_deep, values)
        linthresh = max(1e-3, float(np.nanpercentile(np.abs(values), 5)))
        ax_deep.set_xscale("symlog", linthresh=linthresh)
        ax_deep.set_yscale("symlog", linthresh=linthresh)
    ax_deep.set(
        xlabel="full-path barrier",
        ylabel="best single-layer barrier (layers x bases)",
        title="trained deep linear pairs",
    )
    ax_deep.legend(fontsize=7)

    table = lower_table(pairs).set_index("population")
    table = table.rename(index={v: POPULATION_LABELS[k] for k, v in POPULATIONS.items()})
    columns = {
        "best_single_lower_mid": "best single lower (alpha 0.5)",
        "best_single_lower_max": "best single lower (max over alpha)",
        "best_single_lower_own": "best single lower (max above own chord)",
        "every_single_lower_mid": "every single lower (alpha 0.5)",
    }
    table[list(columns)].rename(columns=columns).plot.bar(ax=ax_bar, rot=0, width=0.8)
    ax_bar.axhline(0.5, color="k", lw=0.8, ls=":")
    ax_bar.set_xticks(range(len(table)), [f"{name}\n({n} pairs)" for name, n in table.pairs.items()], fontsize=7)
    ax_bar.set(
        ylim=(0, 1.25),
        ylabel="fraction of pairs",
        xlabel="",
        title=f"single layer lower than full path\n(ties within {tie_rtol:g} relative)",
    )
    for container in ax_bar.containers:
        ax_bar.bar_label(container, fmt="%.2f", fontsize=6, rotation=90, padding=2)
    ax_bar.legend(fontsize=6, loc="upper left")
    return fig


SPEC = StageSpec(
    name="deep_linear",
    notebook="04_deep_linear",
    config=DeepLinearConfig,
    reads=(*RUNTIME, *EVALUATION),
    figures=(
        Figure("fig3_minimal_example", "Fig. 3: the 1-D network y = w2 w1 x, its loss landscape and the three paths."),
        Figure(
            "fig3_theorem_check", "Theorem 4.1: curvature of L(alpha) for single-layer, two-layer and all-layer cuts."
        ),
        Figure(
            "fig3_random_minima",
            "Fig. 3 claim: full-path vs best single-layer barrier over random pairs of "
            "minima (1-D network) and trained deep linear pairs.",
        ),
    ),
    claims=tuple(CLAIMS),
    sanity_checks=tuple(SANITY_CHECKS),
)
