"""Deep linear networks: the paper's minimal example (Fig. 3) and a numeric check of Theorem 4.1.

Paper (Adilova et al. 2024, Sec. 4): for a deep linear network f(X) = X W1 ... WL with squared loss, interpolating ONE
layer k between two parameter settings leaves every other factor fixed, so the output is affine in alpha,
    f(alpha) = P + alpha * Q,   P = X W1..A_k..WL,   Q = X W1..(B_k - A_k)..WL,
and the loss L(alpha) = mean_i ||P_i + alpha Q_i - Y_i||^2 = c0 + c1 alpha + c2 alpha^2 with
    c0 = mean ||P - Y||^2,   c1 = 2 mean <P - Y, Q>,   c2 = mean ||Q||^2 >= 0,
a convex quadratic: no barrier above the chord of the cut is possible. Interpolating two or more layers makes the
output a polynomial of higher degree in alpha and L(alpha) can be non-convex.

What this module produces:
* minimal example: the 1-D diagonal network y = w2 * w1 * x, target y = x, so L(w1, w2) = mean(x^2) (w1 w2 - 1)^2 and
  every point of the hyperbola w1 w2 = 1 is a global minimum. With w = (1/s, s), w' = (s, 1/s) and s = 3 the full path
  has a barrier of mean(x^2) * 256/81 (about 3.2 mean(x^2)) at alpha = 0.5, the layer-2 path (w1 = 1/s fixed) only
  mean(x^2) * 16/81 (about 0.2 mean(x^2)), while the layer-1 path is HIGHER than the full one (16 mean(x^2)): for any
  pair on the hyperbola one of the two single-layer paths is low and the other high.
* Theorem 4.1 check: many random deep linear networks (depths x widths x replicates), endpoint pairs random (two
  initialisations) and trained (those two initialisations after full-batch gradient descent on the same data, via
  llmc_utils.trainer). Every single-layer cut must have second differences >= -tol and match the closed form to
  rounding error (expected: 0 violations, errors ~1e-15 relative); cuts of two layers or all layers are searched for
  negative second differences (expected: frequent for trained pairs, a counterexample always found).

Conventions: a network is a state dict {"layer1.weight": W1, ..., "layerL.weight": WL} of (d_in, d_out) float64
matrices (f = X W1 ... WL as in the paper); logical layers, interpolation and barriers come from llmc_utils.layers /
llmc_utils.evaluation, so "layer k" means exactly what it means for the real networks.
"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, model_validator

from llmc_utils.config import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Section
from llmc_utils.evaluation import barrier
from llmc_utils.layers import logical_layers, mix
from llmc_utils.stage import progress
from llmc_utils.trainer import OptimConfig, load_weights, train_model

DTYPE = torch.float64  # second differences of a quadratic are ~h^2 * L''; float32 rounding would swamp them

State = dict[str, torch.Tensor]


class DeepLinearConfig(Section):
    seed: NonNegativeInt = 0
    # --- minimal example: y = w2 * w1 * x with target y = x; minima w = (1/s, s) and w' = (s, 1/s)
    minimum_scale: PositiveFloat = 3.0  # s; s = 3 gives full barrier 3.2 and layer-2 barrier 0.2 (x mean(x^2))
    n_points: PositiveInt = 32  # 1-D inputs x ~ N(0, 1)
    landscape_range: tuple[float, float] = (-1.0, 4.0)  # (low, high) of both axes of the loss landscape
    landscape_resolution: int = Field(201, ge=11)
    # --- Theorem 4.1 check
    depths: list[Annotated_depth := int] = Field(default_factory=lambda: [2, 3, 4, 6], min_length=1)  # noqa
    widths: list[PositiveInt] = Field(default_factory=lambda: [2, 8, 32], min_length=1)
    input_dim: PositiveInt = 8
    output_dim: PositiveInt = 4
    n_samples: PositiveInt = 32
    label_noise: NonNegativeFloat = 0.1  # Y = X T + noise * N(0, 1), teacher T ~ N(0, 1/input_dim)
    replicates: PositiveInt = 16  # networks per (depth, width); each gives one random and one trained pair
    pair_kinds: list[Literal["random", "trained"]] = Field(default_factory=lambda: ["random", "trained"], min_length=1)
    bases: list[Literal["A", "B"]] = Field(default_factory=lambda: ["A", "B"], min_length=1)
    n_alphas: int = Field(51, ge=5)  # alpha grid on [0, 1] of the cuts
    convexity_tolerance: PositiveFloat = 1e-9  # second difference >= -tol * max |L| counts as convex
    closed_form_tolerance: PositiveFloat = 1e-9  # |closed form - numeric| <= tol * max |L| counts as a match
    # full-batch gradient descent of the trained pairs (batch_size is set to n_samples)
    optim: OptimConfig = OptimConfig(epochs=100, batch_size=1, lr=0.02, momentum=0.9, weight_decay=0.0)

    @model_validator(mode="after")
    def _check(self):
        s = self.minimum_scale
        if abs(s - 1.0) < 1e-6:
            raise ValueError("minimum_scale must differ from 1 (else both minima are the same point (1, 1))")
        low, high = self.landscape_range
        if not low < min(s, 1 / s) and max(s, 1 / s) < high:
            raise ValueError(f"landscape_range {self.landscape_range} must contain both minima (1/s, s) and (s, 1/s) "
                             f"with s = {s}")
        if not (low < min(s, 1 / s) and max(s, 1 / s) < high):
            raise ValueError(f"landscape_range {self.landscape_range} must contain both minima (1/s, s) and (s, 1/s) "
                             f"with s = {s}")
        if min(self.depths) < 2:
            raise ValueError(f"depths must be >= 2 (a depth-1 network has no second layer to compare), got {self.depths}")
        if len(set(self.depths)) != len(self.depths) or len(set(self.widths)) != len(self.widths):
            raise ValueError("depths and widths must not repeat values")
        if len(set(self.pair_kinds)) != len(self.pair_kinds) or len(set(self.bases)) != len(self.bases):
            raise ValueError("pair_kinds and bases must not repeat values")
        return self
