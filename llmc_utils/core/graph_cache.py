"""Where a model's forward pass can resume from a cached activation: the boundaries of its torch.fx graph (the
activation cache of evaluation.LayerEvaluator).

The model is traced with modules as leaves, except the containers nn.Sequential, nn.ModuleList and nn.ModuleDict:
ResNet's `layer1` expands into its blocks `layer1.0`, `layer1.1`, which stay single nodes, as do torch.nn layers and
user blocks. In topological node order, a boundary is a cut that exactly one value crosses (defined before the cut,
used after it; parameters and constants do not count: they come from the state dict or the module). Everything after
the cut is a function of that value and of the tensors read after the cut, so a model that differs from a base model
only in tensors read after the cut gives the same output when its forward pass resumes there from the base model's
value: the same ops on the same values, hence exactly the numbers of a full evaluation.

Tracing fails on control flow that depends on the input (HuggingFace GPT2, ...); `trace` then says why and the caller
evaluates in full.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.fx import Node
from torch.fx.node import map_arg
from torch.utils._pytree import tree_leaves

CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return not isinstance(m, CONTAINERS)


def apply_module(child: nn.Module, params: dict, h: torch.Tensor) -> torch.Tensor:
    """child(h) with `params` in place of its own tensors. Conv2d and Linear call the functional op directly:
    torch.func.functional_call's parameter swap is a large share of a small layer's cost, so the direct ops make the
    default grid noticeably faster (benchmarks/bench_engine.py times the engine)."""
    if not params:
        return child(h)
    if type(child) is nn.Conv2d and child.padding_mode == "zeros":
        return F.conv2d(
            h, params["weight"], params.get("bias"), child.stride, child.padding, child.dilation, child.groups
        )
    if type(child) is nn.Linear:
        return F.linear(h, params["weight"], params.get("bias"))
    return functional_call(child, params, (h,))


class InPlaceChange(RuntimeError):
    """A later node modified a cached boundary value in place: the cache would hold another value than the cut's."""


class ForwardGraph:
    """The traced forward pass of `model`: its nodes, the state-dict keys each reads, and the boundaries in front of
    the nodes that read keys (`resume`: the only places a partial evaluation can start). Raises if tracing fails."""

    def __init__(self, model: nn.Module):
        self.model = model
        # forward(x) is called with one input: the other parameters keep their defaults (None checks stay exact)
        extra = list(inspect.signature(model.forward).parameters.values())[1:]
        graph = _Tracer().trace(model, concrete_args={p.name: p.default for p in extra if p.default is not p.empty})
        self.nodes: list[Node] = list(graph.nodes)
        self.placeholders = [n for n in self.nodes if n.op == "placeholder"]
        if any(not p.args for p in self.placeholders[1:]):
            raise TypeError("forward() takes more than one required input")
        keys = list(model.state_dict())
        # owned[i]: (key, key relative to the module) of every key of call_module node i's module (its target: the
        # module's path)
        paths = {i: cast(str, n.target) for i, n in enumerate(self.nodes) if n.op == "call_module"}
        self.owned = {
            i: [(k, k[len(path) + 1 :]) for k in keys if k.startswith(path + ".")] for i, path in paths.items()
        }
        self.modules = {i: model.get_submodule(path) for i, path in paths.items()}
        # reads[i]: the keys node i reads: its module's, the key it fetches (get_attr), those of the get_attr it uses
        key_set = set(keys)
        self.reads = [
            {k for k, _ in self.owned.get(i, ())}
            | ({n.target} & key_set if n.op == "get_attr" else set())
            | {a.target for a in n.all_input_nodes if a.op == "get_attr" and a.target in key_set}
            for i, n in enumerate(self.nodes)
        ]
        # free[i]: values last used by node i, dropped after it (peak memory as in eager mode)
        index = {n: i for i, n in enumerate(self.nodes)}
        self.free: list[list[Node]] = [[] for _ in self.nodes]
        for n, i in index.items():
            self.free[max((index[u] for u in n.users), default=i)].append(n)
        # resume[i]: the one value crossing the cut in front of node i, where node i reads keys; a cut that only the
        # input crosses saves nothing and is left out
        self.resume: dict[int, Node] = {}
        live: set[Node] = set()
        for i, n in enumerate(self.nodes):
            if len(live) == 1 and self.reads[i] and next(iter(live)).op != "placeholder":
                self.resume[i] = next(iter(live))
            live = (live | ({n} if n.op != "get_attr" else set())) - set(self.free[i])

    @property
    def boundaries(self) -> list[str]:
        """The nodes (module paths, or fx names of functions) in front of which an activation is cached."""
        return [
            str(self.nodes[i].target) if self.nodes[i].op in ("call_module", "get_attr") else self.nodes[i].name
            for i in sorted(self.resume)
        ]

    def start(self, keys: set[str], among: set[int] | None = None) -> int | None:
        """Index of the last boundary (of `among`, default all) in front of the first node that reads one of `keys`;
        None: no such boundary (or no node reads them), run from the input."""
        first = next((i for i, read in enumerate(self.reads) if read & keys), None)
        candidates = self.resume if among is None else among
        return None if first is None else max((i for i in candidates if i <= first), default=None)

    def params(self, state, start: int = 0) -> dict[int, dict]:
        """Per call_module node from `start` on: its module's tensors of `state`, keys relative to the module."""
        return {i: {rel: state[k] for k, rel in owned if k in state} for i, owned in self.owned.items() if i >= start}

    def _attr(self, target: str, state):
        return state[target] if target in state else functools.reduce(getattr, target.split("."), self.model)

    def run(self, x, state, params: dict[int, dict], kept: dict | None = None):
        """The model's output on input `x` with `state`; `kept` collects the value at every boundary, by index. Raises
        InPlaceChange when a later node modifies a kept value in place (version counters: run it under no_grad)."""
        env = {p: x if j == 0 else p.args[0] for j, p in enumerate(self.placeholders)}
        versions = {}
        for i, n in enumerate(self.nodes):
            if kept is not None and i in self.resume:
                kept[i] = env[self.resume[i]]
                versions[i] = _versions(kept[i])
            if n.op == "output":
                if kept is not None and any(_versions(kept[i]) != v for i, v in versions.items()):
                    raise InPlaceChange(
                        f"{type(self.model).__name__} modifies an activation in place after a "
                        "boundary of its forward graph"
                    )
                return map_arg(n.args[0], env.__getitem__)
            self._step(i, n, env, state, params)

    def resume_from(self, value, start: int, state, params: dict[int, dict]):
        """The output when the forward pass resumes in front of node `start` from the boundary value `value`."""
        env = {self.resume[start]: value}
        env.update((n, self._attr(cast(str, n.target), state)) for n in self.nodes[:start] if n.op == "get_attr")
        for i, n in enumerate(self.nodes[start:], start):
            if n.op == "output":
                return map_arg(n.args[0], env.__getitem__)
            self._step(i, n, env, state, params)

    def _step(self, i: int, n: Node, env: dict, state, params: dict[int, dict]) -> None:
        """Execute node i into env (call_module with the state's tensors) and drop values nobody needs any more."""
        if n.op == "get_attr":
            env[n] = self._attr(cast(str, n.target), state)
        elif n.op != "placeholder":  # placeholders are bound by run()
            # map_arg keeps the structure of its argument but puts the values of env (tensors, ...) for the nodes
            args, kwargs = cast(tuple[tuple[Any, ...], dict[str, Any]], map_arg((n.args, n.kwargs), env.__getitem__))
            if n.op == "call_function":
                env[n] = cast(Callable[..., Any], n.target)(*args, **kwargs)
            elif n.op == "call_method":
                env[n] = getattr(args[0], cast(str, n.target))(*args[1:], **kwargs)
            else:  # call_module
                module, own = self.modules[i], params[i]
                env[n] = (
                    apply_module(module, own, args[0])
                    if len(args) == 1 and not kwargs
                    else functional_call(module, own, args, kwargs)
                    if own
                    else module(*args, **kwargs)
                )
        for dead in self.free[i]:
            env.pop(dead, None)


def _versions(value) -> list[int]:
    """Version counters of the tensors in `value` (inference tensors have none, and cannot be changed in place)."""
    return [t._version for t in tree_leaves(value) if isinstance(t, torch.Tensor) and not t.is_inference()]


def trace(model: nn.Module) -> tuple[ForwardGraph | None, str | None]:
    """(graph, None) when the forward pass of `model` can resume from cached activations, else (None, why not)."""
    name = type(model).__name__
    try:
        graph = ForwardGraph(model)
    except Exception as error:  # any tracing failure means: evaluate in full
        first_line = (str(error).strip().splitlines() or [""])[0]
        return None, f"torch.fx cannot trace {name} ({type(error).__name__}: {first_line[:200]})"
    if not graph.resume:
        return None, (
            f"no boundary in {name}'s forward graph: no single activation carries the whole forward pass "
            "in front of a layer (e.g. a skip connection spans the model)"
        )
    return graph, None
