"""Exact, fast evaluation of many parameter settings of one architecture.

Exact: the loss is the mean of per-sample cross-entropies in float64 (a text window's is the mean over its tokens),
never a mean of batch means; the per-sample values stay with the metrics (`Metrics.samples`), so every barrier gets
its standard error over the evaluation samples (`barrier_se`) without another forward pass. Fast: the data sit on the
device as tensors; parameters are passed to torch.func.functional_call, so an interpolated model is a dict of tensors
(mostly shared with an endpoint) and nothing is deep-copied or loaded into a module; evaluation runs in inference mode
with large batches.

Barrier tables (`checkpoint_barriers`, the engine of the layer-wise, federated and language-model stages; cumulative
averaging builds its rows with the same `endpoints` and `barrier_rows`), fast because (benchmarks/bench_engine.py
measures it):
* endpoints are evaluated once per checkpoint and reused by every layer set, base and alpha;
* interpolated models are dicts that share untouched tensors with the base (layers.mix): no copies, no module reload;
* data sit in memory as tensors, evaluated in large batches in inference mode (Evaluator);
* the activations of the base model at the boundaries of its forward graph (torch.fx: the cuts that one tensor
  crosses, e.g. between the blocks of a ResNet or a transformer) are cached while the endpoint is evaluated, so
  averaging layer k re-runs only the graph from the last boundary in front of k on (exactly the same numbers:
  LayerEvaluator, graph_cache); a model that fx cannot trace is evaluated in full (LayerEvaluator.cache_reason).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.utils._pytree import tree_leaves

from llmc_utils.core.graph_cache import InPlaceChange, trace
from llmc_utils.core.layers import mix


def per_sample(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy, 0/1 error) of every sample in float64; a sequence sample's (logits (N, T, V)) are the means over
    its tokens, so that a window of text is one sample (its tokens are not independent)."""
    logits = logits.reshape(len(y), -1, logits.shape[-1])
    y = y.reshape(len(y), -1)
    loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="none").double()
    return loss.reshape(y.shape).mean(1), (logits.argmax(-1) != y).double().mean(1)


class Metrics(dict):
    """{"loss": mean cross-entropy, "error": 100 - accuracy in %} of one split (exact means of per-sample values in
    float64), with `samples`: the same two per sample, from which `barrier_rows` takes a barrier's standard error over
    the evaluation images without any further forward pass."""

    def __init__(self, loss: torch.Tensor, wrong: torch.Tensor):
        super().__init__(loss=loss.mean().item(), error=100.0 * wrong.mean().item())
        self.samples = {"loss": loss, "error": 100.0 * wrong}


PRECISIONS = ("fp32", "tf32", "bf16")


@dataclass
class Speed:
    """How every evaluator of a stage runs unless told otherwise: set once by stage.setup from the runtime section.
    precision: fp32 (default), tf32 (CUDA matmuls and convolutions in TF32) or bf16 (forward passes under bfloat16
    autocast; the loss is always summed in float64 from float32 logits); channels_last: images in that memory format
    (faster convolutions); cache_gb: the most memory the cached activations of one endpoint may take."""

    precision: str = "fp32"
    channels_last: bool = False
    cache_gb: float = 4.0


SPEED = Speed()


def set_speed(precision: str = "fp32", channels_last: bool = False, cache_gb: float = 4.0) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    SPEED.precision, SPEED.channels_last, SPEED.cache_gb = precision, channels_last, cache_gb
    # TF32 is a global switch of the CUDA backends (no effect on a CPU)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"


class Evaluator:
    """Evaluate `model` with arbitrary state dicts on fixed named splits, e.g. {"train": (x, y), "test": (x, y)}.

    Works for classifiers (logits (N, C), labels (N,)) and sequence models (logits (N, T, V), targets (N, T)).
    `precision` and `channels_last` default to the stage's (SPEED, runtime section).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        splits: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
        batch_size: int = 512,
        device: torch.device | str = "cpu",
        precision: str | None = None,
        channels_last: bool | None = None,
    ):
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.precision = precision or SPEED.precision
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        layout = SPEED.channels_last if channels_last is None else channels_last

        def placed(x: torch.Tensor) -> torch.Tensor:
            x = x.to(self.device)
            return x.contiguous(memory_format=torch.channels_last) if layout and x.dim() == 4 else x

        self.splits = {name: (placed(x), y.to(self.device)) for name, (x, y) in splits.items()}
        self.batch_size = batch_size
        self.calls = 0  # number of (state, split) evaluations, for benchmarks

    def autocast(self):
        """The forward passes' numeric context: bfloat16 autocast with precision bf16, else plain float32."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def split_metrics(self, state: Mapping[str, torch.Tensor], split: str) -> Metrics:
        x, y = self.splits[split]
        state = {k: v.to(self.device) for k, v in state.items()}
        losses, wrong = [], []
        with torch.inference_mode(), self.autocast():
            for start in range(0, len(y), self.batch_size):
                xb, yb = x[start : start + self.batch_size], y[start : start + self.batch_size]
                batch_loss, batch_wrong = per_sample(functional_call(self.model, state, (xb,)), yb)
                losses.append(batch_loss)
                wrong.append(batch_wrong)
        self.calls += 1
        return Metrics(torch.cat(losses), torch.cat(wrong))

    def logits_metrics(self, logits: torch.Tensor, y: torch.Tensor) -> Metrics:
        """Metrics of logits computed elsewhere (e.g. from cached activations), counted like an evaluation."""
        self.calls += 1
        return Metrics(*per_sample(logits, y))

    def __call__(self, state: Mapping[str, torch.Tensor]) -> dict[str, Metrics]:
        return {split: self.split_metrics(state, split) for split in self.splits}


Value = TypeVar("Value", float, torch.Tensor)


def barrier(value_mid: Value, value_a: Value | float, value_b: Value | float, alpha: Value | float = 0.5) -> Value:
    """Loss barrier (docs/method.md): L(theta(alpha)) - [(1 - alpha) L(A) + alpha L(B)], always against the two FULL
    models; numbers, or tensors that broadcast (a whole path of losses at once)."""
    return value_mid - ((1.0 - alpha) * value_a + alpha * value_b)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """The same tensor (identity: what mix() keeps for untouched keys), or an equal one on the same device."""
    return a is b or (a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b))


def _listed(keys: list[str], limit: int = 5) -> str:
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


class LayerEvaluator(Evaluator):
    """Evaluator that evaluates 'base model with some layers changed' from cached base activations when it can.

    `endpoint(state, tag)` evaluates a model and keeps, per split and batch under `tag`, the activation at every
    boundary of its forward graph in front of a node that reads state-dict keys (graph_cache: a cut that one tensor
    crosses, e.g. between the blocks of a ResNet or a transformer); `partial(state, tag, keys)` evaluates `state`, which
    must equal that model except on `keys`, resuming at the last boundary in front of the first node that reads one of
    `keys`. partial() checks that premise (same keys; outside `keys` the very tensors, or equal ones, of the endpoint's
    state) and raises ValueError otherwise: a wrong tag or an unlisted change would silently give the numbers of
    another model. A model that torch.fx cannot trace (control flow on the input), one without a boundary (a skip
    connection around the whole model) or one that modifies a cached activation in place is evaluated in full;
    `cache_reason` says why (None while caching is on), `boundaries` lists where activations are cached.
    """

    def __init__(
        self,
        model,
        splits,
        batch_size=256,
        device="cpu",
        cache_activations=True,
        precision=None,
        channels_last=None,
        cache_gb: float | None = None,
    ):
        super().__init__(model, splits, batch_size, device, precision, channels_last)
        self.graph, self.cache_reason = (
            trace(self.model) if cache_activations else (None, "activation caching is off (cache_activations=False)")
        )
        self.cache_gb = SPEED.cache_gb if cache_gb is None else cache_gb
        # the boundaries whose activations are kept: the deepest ones that fit cache_gb per endpoint (decided on the
        # first batch; deep boundaries hold the smallest activations and save the most recomputation)
        self.kept: set[int] | None = None
        # cache[tag][split] = one {node index: activation at the boundary in front of it} per batch
        self.cache: dict[str, dict[str, list[dict[int, torch.Tensor]]]] = {}
        # bases[tag] = the state endpoint() evaluated under tag (references, not copies), what partial() checks against
        self.bases: dict[str, dict[str, torch.Tensor]] = {}

    @property
    def enabled(self) -> bool:
        return self.graph is not None

    @property
    def boundaries(self) -> list[str]:
        """The nodes (module paths) in front of which activations are cached; empty when caching is off."""
        return self.graph.boundaries if self.graph is not None else []

    def _on_device(self, state) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device) for k, v in state.items()}

    def endpoint(self, state, tag: str):
        self.bases[tag] = dict(state)
        if self.enabled:
            try:
                return self._cached_endpoint(self._on_device(state), tag)
            except Exception as error:
                # the cache would hold wrong activations (InPlaceChange), or the traced graph does not run: evaluate
                # in full from now on (which raises again if the model itself fails)
                self.graph = None
                self.cache.clear()
                self.cache_reason = (
                    str(error)
                    if isinstance(error, InPlaceChange)
                    else f"the traced graph of {type(self.model).__name__} failed ({type(error).__name__}: {error})"
                )
        return self(state)

    def _choose_kept(self, first: dict[int, torch.Tensor], batch: int) -> set[int]:
        """The deepest boundaries whose activations for every image of every split fit in cache_gb."""
        images = sum(len(y) for _, y in self.splits.values())
        kept, total = set(), 0.0
        for i in sorted(first, reverse=True):
            size = sum(t.numel() * t.element_size() for t in tree_leaves(first[i]) if isinstance(t, torch.Tensor))
            total += size / batch * images
            if total > self.cache_gb * 2**30:
                break
            kept.add(i)
        if not kept:
            self.cache_reason = f"no boundary's activations fit in cache_gb = {self.cache_gb:g}"
        return kept

    def _cached_endpoint(self, state, tag: str):
        if self.graph is None:
            raise RuntimeError("activation caching is off: there is no traced graph to cache the endpoint with")
        params, out, self.cache[tag] = self.graph.params(state), {}, {}
        for split, (x, y) in self.splits.items():
            batches: list[dict[int, torch.Tensor]]
            batches, logits = [], []
            # no_grad, not inference mode: the version counters of the kept tensors reveal an in-place change
            with torch.no_grad(), self.autocast():
                for i in range(0, len(x), self.batch_size):
                    batches.append({})
                    logits.append(self.graph.run(x[i : i + self.batch_size], state, params, kept=batches[-1]))
                    if self.kept is None:
                        self.kept = self._choose_kept(batches[-1], len(logits[-1]))
                    batches[-1] = {j: v for j, v in batches[-1].items() if j in self.kept}
            self.cache[tag][split] = batches
            out[split] = self.logits_metrics(torch.cat(logits), y)
        return out

    def _check_partial(self, state, tag: str, keys: set[str]) -> None:
        """Raise ValueError unless `state` is the endpoint cached under `tag` with only `keys` changed."""
        if tag not in self.bases:
            raise ValueError(
                f"partial(): no endpoint under tag {tag!r} (known: {sorted(self.bases)}); call "
                f"endpoint(state, {tag!r}) on the base model first"
            )
        base = self.bases[tag]
        unknown = sorted(keys - set(base))
        if not keys or unknown:
            raise ValueError(
                f"partial(): keys must be a non-empty subset of the model's keys; unknown: "
                f"{_listed(unknown) or 'none (keys is empty)'}"
            )
        if set(state) != set(base):
            missing, extra = sorted(set(base) - set(state)), sorted(set(state) - set(base))
            raise ValueError(
                f"partial(): the state's keys differ from the endpoint under tag {tag!r}: missing "
                f"[{_listed(missing)}], extra [{_listed(extra)}]"
            )
        changed = [k for k in state if k not in keys and not _same(state[k], base[k])]
        if changed:
            raise ValueError(
                f"partial(): the state differs from the endpoint under tag {tag!r} outside `keys`, at "
                f"{_listed(changed)}; mix it into that endpoint's state (mix(..., base={tag!r})), use "
                "the tag of the model it was mixed into, or list those keys too"
            )

    def partial(self, state, tag: str, keys: Iterable[str]):
        keys = set(keys)
        self._check_partial(state, tag, keys)
        if self.graph is None or tag not in self.cache:  # caching off (not self.enabled)
            return self(state)
        # None: no boundary in front of the first changed layer; the graph then runs from the input (the same ops,
        # with the direct Conv2d / Linear calls that a whole-model functional_call lacks)
        start = self.graph.start(keys, among=self.kept)
        state, out = self._on_device(state), {}
        params = self.graph.params(state, start or 0)
        for split, (x, y) in self.splits.items():
            # inference mode is safe here: endpoint() ran these very nodes and saw no in-place change of a kept tensor
            with torch.inference_mode(), self.autocast():
                if start is None:
                    logits = [
                        self.graph.run(x[i : i + self.batch_size], state, params)
                        for i in range(0, len(x), self.batch_size)
                    ]
                else:
                    logits = [
                        self.graph.resume_from(kept[start], start, state, params) for kept in self.cache[tag][split]
                    ]
            out[split] = self.logits_metrics(torch.cat(logits), y)
        return out


# ------------------------------------------------------------------------------------------------- barrier tables
FULL = "full"  # layer set of the full interpolation (every layer averaged) in barrier tables


def endpoints(evaluator: LayerEvaluator, state_a, state_b, bases: Iterable[str]) -> dict[str, dict[str, Metrics]]:
    """{"A": metrics of A, "B": metrics of B}; each model named in `bases` is evaluated as an endpoint (its
    activations kept for partial() evaluations of that base with some layers changed)."""
    bases = set(bases)
    return {
        tag: evaluator.endpoint(state, tag) if tag in bases else evaluator(state)
        for tag, state in (("A", state_a), ("B", state_b))
    }


def barrier_se(mid: Metrics, end_a: Metrics, end_b: Metrics, metric: str, alpha: float) -> float:
    """Standard error of a barrier over its evaluation samples: the barrier is the mean of the paired per-sample
    differences d_i = m_mid,i - (1 - alpha) m_A,i - alpha m_B,i (same images for all three), so se = sd(d) / sqrt(n)
    (0 for one sample)."""
    d = mid.samples[metric] - (1.0 - alpha) * end_a.samples[metric] - alpha * end_b.samples[metric]
    return float(d.std() / d.numel() ** 0.5) if d.numel() > 1 else 0.0


def barrier_rows(
    where: dict, metrics: dict[str, Metrics], ends: dict[str, dict[str, Metrics]], alpha: float
) -> list[dict]:
    """Tidy rows of one evaluated model: the columns of `where` (epoch, what was averaged, base, ...), then split,
    metric, value, the two full endpoints' values, the barrier against them at `alpha` and its standard error over
    the evaluation samples (`barrier_se`)."""
    return [
        dict(
            where,
            split=split,
            metric=metric,
            value=value,
            value_a=ends["A"][split][metric],
            value_b=ends["B"][split][metric],
            barrier=barrier(value, ends["A"][split][metric], ends["B"][split][metric], alpha),
            se=barrier_se(by_metric, ends["A"][split], ends["B"][split], metric, alpha),
        )
        for split, by_metric in metrics.items()
        for metric, value in by_metric.items()
    ]


def evaluate_changed(evaluator: LayerEvaluator, state, base: str, keys, reset=None) -> dict[str, Metrics]:
    """Metrics of `state`, the endpoint `base` with `keys` changed: from that endpoint's cached activations, or with
    a BatchNorm reset (normalization.BNReset) in full after re-estimating the statistics (the reset changes every
    BatchNorm of the model, so no cached activation is valid any more)."""
    if reset is None:
        return evaluator.partial(state, base, keys)
    return evaluator(reset(state))


def checkpoint_barriers(
    evaluator: LayerEvaluator,
    epoch: int,
    state_a,
    state_b,
    layers: Mapping[str, tuple],
    alphas: Iterable[float],
    bases: Iterable[str],
    reset=None,
) -> list[dict]:
    """Tidy rows of one checkpoint: full interpolation (same for both bases) and every single layer, every alpha.

    Endpoints are evaluated once and reused by every layer set, base and alpha; interpolated models share untouched
    tensors with the base (layers.mix); averaging one layer re-runs only the layers from it on (LayerEvaluator).
    `reset` (a normalization.BNReset) re-estimates the BatchNorm statistics of every interpolated model first; the
    endpoints keep their own."""
    bases = list(bases)
    ends = endpoints(evaluator, state_a, state_b, bases)
    rows = []
    for alpha in alphas:
        mixed = mix(state_a, state_b, alpha)
        full = evaluator(reset(mixed) if reset else mixed)  # the full interpolation does not depend on the base
        for base in bases:
            rows += barrier_rows(dict(epoch=epoch, layer_set=FULL, base=base, alpha=alpha), full, ends, alpha)
    for base in bases:
        for name, keys in layers.items():
            for alpha in alphas:
                metrics = evaluate_changed(evaluator, mix(state_a, state_b, alpha, keys, base=base), base, keys, reset)
                rows += barrier_rows(dict(epoch=epoch, layer_set=name, base=base, alpha=alpha), metrics, ends, alpha)
    evaluator.cache.clear()
    return rows
