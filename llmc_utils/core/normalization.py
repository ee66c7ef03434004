"""BatchNorm statistics of interpolated models: REPAIR's reset (Jordan, Sedghi, Saukh, Entezari, Neyshabur, ICLR 2023).

A BatchNorm layer's weight and bias interpolate like any other logical layer, but its running mean and variance are
statistics of the activations of the model it belongs to. Averaging two networks changes those activations (their
variance collapses toward the middle of the path), so the interpolated model normalises with the wrong statistics and
its loss barrier measures that mismatch as much as the geometry of the loss surface. The reset re-estimates every
BatchNorm's running statistics of the interpolated model on N training batches in train mode (momentum None: the
plain average over the batches of each batch's mean and unbiased variance, not an exponential one), then evaluates in
eval mode. Barriers are reported with
and without it; the endpoints keep their own statistics. LayerNorm (ViT, GPT) normalises per sample: nothing to reset.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import nn

BATCHNORM = nn.modules.batchnorm._BatchNorm


def batchnorms(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    """{qualified name: module} of every BatchNorm (1d/2d/3d, SyncBatchNorm) that tracks running statistics."""
    return {name: m for name, m in model.named_modules() if isinstance(m, BATCHNORM) and m.track_running_stats}


def has_batchnorm(model: nn.Module) -> bool:
    return bool(batchnorms(model))


def reset_batches(x: torch.Tensor, n_batches: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    """n_batches batches of `batch_size` inputs drawn without replacement from x (seeded), for the reset."""
    if n_batches * batch_size > len(x):
        raise ValueError(
            f"BN reset needs {n_batches} x {batch_size} = {n_batches * batch_size} inputs, only "
            f"{len(x)} available; lower the number of batches or the batch size"
        )
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[: n_batches * batch_size]
    return list(x[order].split(batch_size))


class BNReset:
    """Callable state -> state with every BatchNorm's running mean/var re-estimated on `batches` (other tensors
    shared with the input state). Runs on a private copy of `model`: only the BatchNorm modules go to train mode, so
    dropout and the like stay off while the statistics are collected."""

    def __init__(self, model: nn.Module, batches: Sequence[torch.Tensor], device: torch.device | str = "cpu"):
        self.model = copy.deepcopy(model).to(device).eval()
        self.norms = batchnorms(self.model)
        if not self.norms:
            raise ValueError(
                f"BN reset asked for a {type(model).__name__} without BatchNorm layers (LayerNorm and "
                "GroupNorm normalise per sample and need no reset)"
            )
        if not batches:
            raise ValueError("BN reset needs at least one batch")
        self.batches = [b.to(device) for b in batches]
        self.keys = [f"{name}.{buffer}" for name in self.norms for buffer in ("running_mean", "running_var")]
        self.calls = 0

    def __call__(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.model.load_state_dict(state)
        for m in self.norms.values():
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the reset batches
            m.train()
        with torch.no_grad():
            for x in self.batches:
                self.model(x)
        for m in self.norms.values():
            m.eval()
        self.calls += 1
        fresh = self.model.state_dict()
        return {**state, **{k: fresh[k].detach().clone() for k in self.keys}}
