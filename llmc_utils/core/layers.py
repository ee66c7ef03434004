"""Logical layers and interpolation of state dicts without copying them.

A logical layer is every state-dict tensor of one module: the key prefix before the last dot, so `conv1.weight` and
`conv1.bias` form layer `conv1` (docs/method.md). ResNet18 without normalisation has 21 of them.

Interpolations return a new dict that shares every untouched tensor with the base model; only the tensors of the
averaged layers are new. That is what makes hundreds of evaluation points per checkpoint cheap (see evaluation.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch

StateDict = Mapping[str, torch.Tensor]


def layer_name(key: str) -> str:
    return key.rsplit(".", 1)[0] if "." in key else key


def logical_layers(state: StateDict, groups: Mapping[str, Sequence[str]] | None = None) -> dict[str, tuple[str, ...]]:
    """Ordered {layer name: state-dict keys}, in state-dict (= forward, for our models) order.

    `groups` overrides the default grouping: {name: [keys...]}; together they must cover every key exactly once.
    """
    if groups is not None:
        listed = [k for keys in groups.values() for k in keys]
        missing, extra = set(state) - set(listed), set(listed) - set(state)
        duplicated = {k for k in listed if listed.count(k) > 1}
        if missing or extra or duplicated:
            raise ValueError(
                f"layer groups must cover every state-dict key exactly once; missing={sorted(missing)}, "
                f"unknown={sorted(extra)}, repeated={sorted(duplicated)}"
            )
        return {name: tuple(keys) for name, keys in groups.items()}
    layers: dict[str, list[str]] = {}
    for key in state:
        layers.setdefault(layer_name(key), []).append(key)
    return {name: tuple(keys) for name, keys in layers.items()}


def keys_of(layers: Mapping[str, Sequence[str]], names: Iterable[str]) -> list[str]:
    """State-dict keys of a group of logical layers."""
    return [k for name in names for k in layers[name]]


def mix(
    state_a: StateDict, state_b: StateDict, alpha: float, keys: Iterable[str] | None = None, base: str = "A"
) -> dict[str, torch.Tensor]:
    """(1 - alpha) * A + alpha * B on `keys` (all keys when None); every other tensor comes from the base model.

    base="A" is the paper's "into A" (A with the chosen layers averaged toward B), base="B" is "into B". alpha always
    weighs model B, as in the full interpolation theta(alpha), so alpha=0 is A's value and alpha=1 is B's.
    """
    if base not in ("A", "B"):
        raise ValueError(f"base must be 'A' or 'B', got {base!r}")
    out = dict(state_a if base == "A" else state_b)
    for key in state_a.keys() if keys is None else keys:
        a, b = state_a[key], state_b[key]
        if a.is_floating_point():  # integer buffers (e.g. counters) are not interpolated
            out[key] = torch.lerp(a, b, alpha) if 0.0 < alpha < 1.0 else (a if alpha == 0.0 else b).clone()
    return out


def flat(state: StateDict, keys: Iterable[str]) -> torch.Tensor:
    return torch.cat([state[k].reshape(-1).float() for k in keys])


def add_flat(state: StateDict, keys: Sequence[str], delta: torch.Tensor) -> dict[str, torch.Tensor]:
    """`state` with the tensors at `keys` moved by `delta`, a flat vector laid out as flat(state, keys) (each slice
    cast to its tensor's dtype and device); every other tensor is shared with `state`, not copied."""
    out, start = dict(state), 0
    for key in keys:
        size = state[key].numel()
        out[key] = state[key] + delta[start : start + size].view_as(state[key]).to(state[key].device, state[key].dtype)
        start += size
    return out


def layer_geometry(state_a: StateDict, state_b: StateDict, layers: Mapping[str, Sequence[str]]) -> list[dict]:
    """Per logical layer: parameter count, norms of A and B, distance ||A-B|| and cosine(A, B)."""
    rows = []
    for name, keys in layers.items():
        a, b = flat(state_a, keys), flat(state_b, keys)
        rows.append(
            dict(
                layer=name,
                n_params=a.numel(),
                norm_a=a.norm().item(),
                norm_b=b.norm().item(),
                distance=(a - b).norm().item(),
                cosine=torch.nn.functional.cosine_similarity(a, b, dim=0).item(),
            )
        )
    return rows
