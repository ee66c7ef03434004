"""Exact, fast evaluation of many parameter settings of one architecture.

Exact: the loss is the sum of per-sample (or per-token) cross-entropies divided by the number of samples, never a mean
of batch means. Fast: the data sit on the device as tensors; parameters are passed to torch.func.functional_call, so an
interpolated model is a dict of tensors (mostly shared with an endpoint) and nothing is deep-copied or loaded into a
module; evaluation runs in inference mode with large batches.

Barrier tables (`checkpoint_barriers`, the engine of the layer-wise, federated and language-model stages; cumulative
averaging builds its rows with the same `endpoints` and `barrier_rows`), fast because (benchmarks/bench_engine.py
measures it):
* endpoints are evaluated once per checkpoint and reused by every layer set, base and alpha;
* interpolated models are dicts that share untouched tensors with the base (layers.mix): no copies, no module reload;
* data sit in memory as tensors, evaluated in large batches in inference mode (Evaluator);
* for plain nn.Sequential models (the pairs' CNNs, the ViT) the activations of the base model in front of every layer
  are cached while the endpoint is evaluated, so averaging layer k re-runs only the layers from k on (exactly the same
  numbers: LayerEvaluator).
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch.func import functional_call

from llmc_utils.layers import mix

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
    """Loss barrier (docs/method.md): L(theta(alpha)) - [(1 - alpha) L(A) + alpha L(B)], always against the two FULL
    models."""
    return value_mid - ((1.0 - alpha) * value_a + alpha * value_b)


def _apply(child: torch.nn.Module, params: dict, h: torch.Tensor) -> torch.Tensor:
    """child(h) with `params` in place of its own tensors. Conv2d and Linear call the functional op directly:
    torch.func.functional_call's parameter swap is a large share of a small layer's cost (measured on the default
    grid, 3 checkpoints: 3.0 s with functional_call everywhere, 2.6 s with the direct ops)."""
    if not params:
        return child(h)
    if type(child) is torch.nn.Conv2d and child.padding_mode == "zeros":
        return F.conv2d(h, params["weight"], params.get("bias"), child.stride, child.padding, child.dilation,
                        child.groups)
    if type(child) is torch.nn.Linear:
        return F.linear(h, params["weight"], params.get("bias"))
    return functional_call(child, params, (h,))


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """The same tensor (identity: what mix() keeps for untouched keys), or an equal one on the same device."""
    return a is b or (a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b))


def _listed(keys: list[str], limit: int = 5) -> str:
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


class LayerEvaluator(Evaluator):
    """Evaluator that evaluates 'base model with some layers changed' from cached base activations when it can.

    `endpoint(state, tag)` evaluates a model and (for a plain nn.Sequential) keeps the input of every child per split
    under `tag`; `partial(state, tag, keys)` evaluates `state`, which must equal that model except on `keys`, starting
    at the first child that owns one of `keys`. partial() checks that premise (same keys; outside `keys` the very
    tensors, or equal ones, of the endpoint's state) and raises ValueError otherwise: a wrong tag or an unlisted change
    would silently give the numbers of another model. Any other model (including an nn.Sequential subclass with its
    own forward, such as a residual block, whose output is not the chain of its children) is evaluated in full.
    """

    def __init__(self, model, splits, batch_size=256, device="cpu", cache_activations=True):
        super().__init__(model, splits, batch_size, device)
        chain = isinstance(self.model, torch.nn.Sequential) and type(self.model).forward is torch.nn.Sequential.forward
        self.children = list(self.model.named_children()) if chain else []
        self.enabled = cache_activations and bool(self.children)
        # cache[tag][split] = one {child index: input of that child} per batch, kept only for children with parameters
        # (the only places partial() can start): about half the memory of keeping every activation
        self.cache: dict[str, dict[str, list[dict[int, torch.Tensor]]]] = {}
        # bases[tag] = the state endpoint() evaluated under tag (references, not copies), what partial() checks against
        self.bases: dict[str, dict[str, torch.Tensor]] = {}

    def _own(self, state, start: int) -> list[dict]:
        """Per child from `start` on: its own tensors of `state`, keys relative to the child."""
        return [{k[len(name) + 1:]: v.to(self.device) for k, v in state.items() if k.startswith(name + ".")}
                for name, _ in self.children[start:]]

    def _run(self, own: list[dict], h: torch.Tensor, start: int, kept: dict | None = None) -> torch.Tensor:
        for j, ((_, child), params) in enumerate(zip(self.children[start:], own), start):
            if kept is not None and params:
                kept[j] = h
            h = _apply(child, params, h)
        return h

    def endpoint(self, state, tag: str):
        self.bases[tag] = dict(state)
        if not self.enabled:
            return self(state)
        own, out = self._own(state, 0), {}
        self.cache[tag] = {}
        for split, (x, y) in self.splits.items():
            batches, logits = [], []
            with torch.inference_mode():
                for i in range(0, len(x), self.batch_size):
                    batches.append({})
                    logits.append(self._run(own, x[i:i + self.batch_size], 0, kept=batches[-1]))
            self.cache[tag][split] = batches
            out[split] = self.logits_metrics(torch.cat(logits), y)
        return out

    def _check_partial(self, state, tag: str, keys: set[str]) -> None:
        """Raise ValueError unless `state` is the endpoint cached under `tag` with only `keys` changed."""
        if tag not in self.bases:
            raise ValueError(f"partial(): no endpoint under tag {tag!r} (known: {sorted(self.bases)}); call "
                             f"endpoint(state, {tag!r}) on the base model first")
        base = self.bases[tag]
        unknown = sorted(keys - set(base))
        if not keys or unknown:
            raise ValueError(f"partial(): keys must be a non-empty subset of the model's keys; unknown: "
                             f"{_listed(unknown) or 'none (keys is empty)'}")
        if set(state) != set(base):
            missing, extra = sorted(set(base) - set(state)), sorted(set(state) - set(base))
            raise ValueError(f"partial(): the state's keys differ from the endpoint under tag {tag!r}: missing "
                             f"[{_listed(missing)}], extra [{_listed(extra)}]")
        changed = [k for k in state if k not in keys and not _same(state[k], base[k])]
        if changed:
            raise ValueError(f"partial(): the state differs from the endpoint under tag {tag!r} outside `keys`, at "
                             f"{_listed(changed)}; mix it into that endpoint's state (mix(..., base={tag!r})), use "
                             "the tag of the model it was mixed into, or list those keys too")

    def partial(self, state, tag: str, keys: Iterable[str]):
        keys = set(keys)
        self._check_partial(state, tag, keys)
        if not self.enabled or tag not in self.cache:
            return self(state)
        start = next(i for i, (name, _) in enumerate(self.children) if any(k.startswith(name + ".") for k in keys))
        own, out = self._own(state, start), {}
        for split, (_, y) in self.splits.items():
            with torch.inference_mode():
                logits = [self._run(own, kept[start], start) for kept in self.cache[tag][split]]
            out[split] = self.logits_metrics(torch.cat(logits), y)
        return out


# ------------------------------------------------------------------------------------------------- barrier tables
FULL = "full"  # layer set of the full interpolation (every layer averaged) in barrier tables


def endpoints(evaluator: LayerEvaluator, state_a, state_b, bases: Iterable[str]) -> dict[str, dict[str, Metrics]]:
    """{"A": metrics of A, "B": metrics of B}; each model named in `bases` is evaluated as an endpoint (its
    activations kept for partial() evaluations of that base with some layers changed)."""
    bases = set(bases)
    return {tag: evaluator.endpoint(state, tag) if tag in bases else evaluator(state)
            for tag, state in (("A", state_a), ("B", state_b))}


def barrier_rows(where: dict, metrics: dict[str, Metrics], ends: dict[str, dict[str, Metrics]],
                 alpha: float) -> list[dict]:
    """Tidy rows of one evaluated model: the columns of `where` (epoch, what was averaged, base, ...), then split,
    metric, value, the two full endpoints' values and the barrier against them at `alpha`."""
    return [dict(where, split=split, metric=metric, value=value, value_a=ends["A"][split][metric],
                 value_b=ends["B"][split][metric],
                 barrier=barrier(value, ends["A"][split][metric], ends["B"][split][metric], alpha))
            for split, by_metric in metrics.items() for metric, value in by_metric.items()]


def checkpoint_barriers(evaluator: LayerEvaluator, epoch: int, state_a, state_b, layers: Mapping[str, tuple],
                        alphas: Iterable[float], bases: Iterable[str]) -> list[dict]:
    """Tidy rows of one checkpoint: full interpolation (same for both bases) and every single layer, every alpha.

    Endpoints are evaluated once and reused by every layer set, base and alpha; interpolated models share untouched
    tensors with the base (layers.mix); averaging one layer re-runs only the layers from it on (LayerEvaluator)."""
    bases = list(bases)
    ends = endpoints(evaluator, state_a, state_b, bases)
    rows = []
    for alpha in alphas:
        full = evaluator(mix(state_a, state_b, alpha))  # the full interpolation does not depend on the base
        for base in bases:
            rows += barrier_rows(dict(epoch=epoch, layer_set=FULL, base=base, alpha=alpha), full, ends, alpha)
    for base in bases:
        for name, keys in layers.items():
            for alpha in alphas:
                metrics = evaluator.partial(mix(state_a, state_b, alpha, keys, base=base), base, keys)
                rows += barrier_rows(dict(epoch=epoch, layer_set=name, base=base, alpha=alpha), metrics, ends, alpha)
    evaluator.cache.clear()
    return rows
