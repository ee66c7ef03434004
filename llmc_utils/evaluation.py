"""Exact, fast evaluation of many parameter settings of one architecture.

Exact: the loss is the sum of per-sample (or per-token) cross-entropies divided by the number of samples, never a mean
of batch means. Fast: the data sit on the device as tensors; parameters are passed to torch.func.functional_call, so an
interpolated model is a dict of tensors (mostly shared with an endpoint) and nothing is deep-copied or loaded into a
module; evaluation runs in inference mode with large batches.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch.func import functional_call

Metrics = dict[str, float]  # {"loss": mean cross-entropy, "error": 100 - accuracy in %}


def _sums(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of cross-entropies in float64, number correct) of one batch; sequence logits are flattened per token."""
    logits, y = logits.reshape(-1, logits.shape[-1]), y.reshape(-1)
    return F.cross_entropy(logits.float(), y, reduction="sum").double(), (logits.argmax(-1) == y).sum()


def _metrics(loss_sum: torch.Tensor, correct: torch.Tensor, n: int) -> Metrics:
    return {"loss": loss_sum.item() / n, "error": 100.0 * (1.0 - correct.item() / n)}


class Evaluator:
    """Evaluate `model` with arbitrary state dicts on fixed named splits, e.g. {"train": (x, y), "test": (x, y)}.

    Works for classifiers (logits (N, C), labels (N,)) and sequence models (logits (N, T, V), targets (N, T)).
    """

    def __init__(self, model: torch.nn.Module, splits: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
                 batch_size: int = 512, device: torch.device | str = "cpu"):
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.splits = {name: (x.to(self.device), y.to(self.device)) for name, (x, y) in splits.items()}
        self.batch_size = batch_size
        self.calls = 0  # number of (state, split) evaluations, for benchmarks

    def split_metrics(self, state: Mapping[str, torch.Tensor], split: str) -> Metrics:
        x, y = self.splits[split]
        state = {k: v.to(self.device) for k, v in state.items()}
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        with torch.inference_mode():
            for start in range(0, len(y), self.batch_size):
                xb, yb = x[start:start + self.batch_size], y[start:start + self.batch_size]
                batch_loss, batch_correct = _sums(functional_call(self.model, state, (xb,)), yb)
                loss_sum += batch_loss
                correct += batch_correct
        self.calls += 1
        return _metrics(loss_sum, correct, y.numel())

    def logits_metrics(self, logits: torch.Tensor, y: torch.Tensor) -> Metrics:
        """Metrics of logits computed elsewhere (e.g. from cached activations), counted like an evaluation."""
        self.calls += 1
        return _metrics(*_sums(logits, y), y.numel())

    def __call__(self, state: Mapping[str, torch.Tensor]) -> dict[str, Metrics]:
        return {split: self.split_metrics(state, split) for split in self.splits}


def barrier(value_mid: float, value_a: float, value_b: float, alpha: float = 0.5) -> float:
    """SPEC section 2: L(theta(alpha)) - [(1 - alpha) L(A) + alpha L(B)], always against the two FULL models."""
    return value_mid - ((1.0 - alpha) * value_a + alpha * value_b)
