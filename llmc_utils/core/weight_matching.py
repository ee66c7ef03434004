"""Permutation alignment by weight matching (Git Re-Basin, Ainsworth, Hayase & Srinivasa, ICLR 2023).

Why: two networks trained apart can compute similar functions with their hidden units in a different order. The loss
does not see that order, but averaging weights does: averaging unit i of A with unit i of B mixes unrelated features.
Permuting B's hidden units changes nothing about B's function, so B can first be brought into A's order.

What: permutations P_g of B's hidden units, one per permutation group g, that maximise the objective
sum over weights W of <W_A, W_B permuted on every axis that a group acts on>. With all other groups fixed the
objective is linear in P_g, so each step is one linear assignment problem (scipy's linear_sum_assignment); the groups
are solved in a seeded random order, sweep after sweep, until a whole sweep changes no group (or max_iter sweeps).
A group's new permutation is taken only when it strictly raises the objective, so the objective never falls and ties
cannot make the sweeps cycle. BatchNorm running statistics are permuted with their units but are not weights, so
they are left out of the objective.

Check: the aligned B must compute B's function (check_function_kept, the one check every caller runs: its logits
equal B's up to float32 rounding, relative to their scale); a difference beyond that means the permutation spec does
not fit the architecture.

Groups: every Conv2d/Linear output starts one, which the following BatchNorm (weight, bias, running_mean,
running_var) and the next layer's input axis share. A residual sum ties its two inputs to one group: a block with an
identity shortcut keeps its input's group for conv2/bn2, and one with a conv shortcut (ResNet's downsample) starts a
group shared by the shortcut conv/bn, conv2/bn2 and every later identity block of the stage. The input channels of
the first layer and the output of the final layer are never permuted. A Linear after a Flatten of a conv's output
(index c*H*W + s) has an input axis of length k*n for n channels: that axis is viewed as (n, k) and n is permuted.

Supported (permutation_spec inspects the module structure; anything else raises UnsupportedArchitecture):
* an nn.Sequential chain of Conv2d / Linear / BatchNorm1d / BatchNorm2d / basic blocks, with parameter-free
  activations, pools, Flatten, Identity and Dropout between them: llmc_utils.core.models.MLP, CNN (`cnn`, `cnn_bn`),
  ResCNN (`rescnn`, `rescnn_bn`), VGG11 (`vgg11`, the appendix profile);
* torchvision and timm ResNets of BasicBlocks (resnet18/34), including llmc_utils.core.models.resnet18 (no norm).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple, cast

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

import llmc_utils.core.models as models

SUPPORTED = (
    "nn.Sequential chains of Conv2d/Linear/BatchNorm1d/BatchNorm2d with parameter-free activations, pools, "
    "Flatten, Identity or Dropout between them (MLP, cnn, cnn_bn), ResCNN (rescnn, rescnn_bn), VGG11, torchvision/"
    "timm ResNets of BasicBlocks (resnet18, resnet34)"
)
_PASS = (
    nn.Identity,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.GELU,
    nn.SiLU,
    nn.ELU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Dropout,
    nn.Flatten,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)  # act on each channel
_BN = (nn.BatchNorm1d, nn.BatchNorm2d)
_NEW = object()  # layer(): start a new group for the output


class UnsupportedArchitecture(ValueError):
    """permutation_spec does not know where this model's hidden units are."""


@dataclass
class PermutationSpec:
    """perms: group name -> [(state key, axis)] that the group's permutation acts on; stats: state keys that are
    permuted but left out of the matching objective (BatchNorm running statistics)."""

    perms: dict[str, list[tuple[str, int]]]
    stats: frozenset[str] = field(default_factory=frozenset)

    @cached_property
    def axes(self) -> dict[str, list[tuple[int, str]]]:
        """state key -> [(axis, group)]: the keys not listed here are never permuted."""
        out: dict[str, list[tuple[int, str]]] = {}
        for group, entries in self.perms.items():
            for key, axis in entries:
                out.setdefault(key, []).append((axis, group))
        return out

    def sizes(self, state: dict[str, torch.Tensor]) -> dict[str, int]:
        """Units per group: the shortest axis of the group (a Flatten-ed axis is a multiple of it)."""
        return {g: min(state[k].shape[a] for k, a in entries) for g, entries in self.perms.items()}


class _Builder:
    """Walks the modules in data-flow order, carrying the group of the current activation (None: not permuted)."""

    def __init__(self, model: nn.Module):
        self.model, self.state = model, model.state_dict()
        self.perms: dict[str, list[tuple[str, int]]] = {}
        self.size: dict[str, int] = {}
        self.stats: set[str] = set()
        self.seen: set[str] = set()

    def fail(self, why: str):
        raise UnsupportedArchitecture(
            f"weight matching does not support {type(self.model).__name__}: {why}. Supported: {SUPPORTED}"
        )

    def put(self, group, key: str, axis: int, multiple: bool = False):
        self.seen.add(key)
        if group is None:
            return
        n, length = self.size[group], self.state[key].shape[axis]
        if length != n and not (multiple and length % n == 0):  # the walk does not match the shapes
            self.fail(f"axis {axis} of {key} has {length} entries, its permutation group {group!r} {n}")
        self.perms[group].append((key, axis))

    def layer(self, m: nn.Module, name: str, g_in, g_out=_NEW):
        if type(m) not in (nn.Conv2d, nn.Linear) or getattr(m, "groups", 1) != 1:
            self.fail(f"{name} is a {type(m).__name__}" + (" (grouped)" if getattr(m, "groups", 1) != 1 else ""))
        if g_out is _NEW:
            g_out = name
            self.perms[g_out], self.size[g_out] = [], m.get_parameter("weight").shape[0]
        self.put(g_out, f"{name}.weight", 0)
        self.put(g_in, f"{name}.weight", 1, multiple=type(m) is nn.Linear)  # Linear after Flatten: c*H*W + s
        if m.bias is not None:
            self.put(g_out, f"{name}.bias", 0)
        return g_out

    def norm(self, m: nn.Module, name: str, g):
        for local in m.state_dict():  # weight, bias, running_mean, running_var, num_batches_tracked (not permuted)
            self.put(None if local == "num_batches_tracked" else g, f"{name}.{local}", 0)
            if local in ("running_mean", "running_var"):
                self.stats.add(f"{name}.{local}")
        return g

    def block(self, m: nn.Module, name: str, g_in):
        """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)): shortcut and conv2/bn2 share the output group."""
        short = cast(nn.Module | None, m.shortcut if isinstance(m, models.BasicBlock) else m.downsample)
        short_name = f"{name}.shortcut" if isinstance(m, models.BasicBlock) else f"{name}.downsample"
        known = {"conv1", "bn1", "conv2", "bn2", "shortcut", "downsample"}
        for child_name, child in m.named_children():  # timm's drop_block, aa, act, se, drop_path: per channel only
            if child_name not in known and type(child) not in _PASS:
                self.fail(f"{name}.{child_name} is a {type(child).__name__}")
        g_out = g_in if short is None else self.visit(short, short_name, g_in)
        conv1 = self.layer(m.get_submodule("conv1"), f"{name}.conv1", g_in)
        h = self.visit(m.get_submodule("bn1"), f"{name}.bn1", conv1)
        return self.visit(
            m.get_submodule("bn2"), f"{name}.bn2", self.layer(m.get_submodule("conv2"), f"{name}.conv2", h, g_out)
        )

    def visit(self, m: nn.Module, name: str, g):
        prefix = f"{name}." if name else ""
        if type(m) in (nn.Conv2d, nn.Linear):  # exact types: subclasses (e.g. a ViT patch embedding) may reshape
            return self.layer(m, name, g)
        if type(m) in _BN:
            return self.norm(m, name, g)
        if type(m) in _PASS or (type(m).__name__ == "SelectAdaptivePool2d" and "cat" not in cast(str, m.pool_type)):
            return g  # per-channel (timm's pool: avg or max, then flatten; "cat" would concatenate two)
        is_tv_block = type(m).__name__ == "BasicBlock" and type(m).__module__ in (
            "torchvision.models.resnet",
            "timm.models.resnet",
        )
        if isinstance(m, models.BasicBlock) or is_tv_block:
            return self.block(m, name, g)
        if isinstance(m, models.VGG11):  # features, a per-channel functional average pool, then the classifier
            return self.visit(m.classifier, f"{prefix}classifier", self.visit(m.features, f"{prefix}features", g))
        is_resnet = type(m).__name__ == "ResNet" and type(m).__module__ in (
            "torchvision.models.resnet",
            "timm.models.resnet",
        )
        if (type(m).forward is nn.Sequential.forward and isinstance(m, nn.Sequential)) or is_resnet:
            for child_name, child in m.named_children():  # Sequential, and both ResNets: children in data-flow order
                g = self.visit(child, prefix + child_name, g)
            return g
        self.fail(f"{name or 'the model'} is a {type(m).__name__}")


def permutation_spec(model: nn.Module) -> PermutationSpec:
    """The permutation groups of `model`'s hidden units; raises UnsupportedArchitecture for unknown structures."""
    b = _Builder(model)
    g_final = b.visit(model, "", None)  # the network's input is not permuted ...
    b.perms.pop(g_final, None)  # ... nor its output (a group that reaches the output stays in place everywhere)
    if missing := sorted(set(b.state) - b.seen):
        b.fail(f"the state keys {missing[:5]} belong to no known layer")
    return PermutationSpec({g: e for g, e in b.perms.items() if e}, frozenset(b.stats))


def _permute(t: torch.Tensor, axis: int, perm: torch.Tensor, n: int) -> torch.Tensor:
    """t with index perm[i] of `axis` moved to i; an axis of length k*n is viewed as (n, k) (Flatten, channel-major)."""
    shape = t.shape
    view = t.reshape(*shape[:axis], n, shape[axis] // n, *shape[axis + 1 :])
    return view.index_select(axis, perm.to(t.device)).reshape(shape)


def apply_permutation(spec: PermutationSpec, perms: dict[str, torch.Tensor], state: dict) -> dict:
    """A new state dict with every spec'd axis permuted (aligned[i] = state[perm[i]]); groups missing from perms
    stay in place, and keys outside the spec are shared with `state`, not copied."""
    sizes, out = spec.sizes(state), dict(state)
    with torch.no_grad():
        for key, axes in spec.axes.items():
            for axis, group in axes:
                if group in perms:
                    out[key] = _permute(out[key], axis, perms[group], sizes[group])
    return out


def _objective(spec: PermutationSpec, a: dict, b: dict) -> float:
    return float(sum((a[k].double() * b[k].double()).sum() for k in spec.axes if k not in spec.stats))


def _match(spec, state_a, state_b, seed, max_iter) -> tuple[dict[str, torch.Tensor], int]:
    sizes = spec.sizes(state_a)
    a = {k: state_a[k].detach().double() for k in spec.axes if k not in spec.stats}
    b = {k: state_b[k].detach().double() for k in a}
    perms = {g: torch.arange(n) for g, n in sizes.items()}
    rng, sweeps = np.random.default_rng(seed), 0
    while sweeps < max_iter:
        sweeps += 1
        changed = False
        for group in rng.permutation(sorted(spec.perms)):
            n = sizes[group]
            cost: torch.Tensor | int = 0
            for key, axis in spec.perms[group]:
                if key not in a:
                    continue
                w = b[key]  # B with every other group of this weight applied, then rows = units of `group`
                for other_axis, other in spec.axes[key]:
                    if other_axis != axis:
                        w = _permute(w, other_axis, perms[other], sizes[other])
                cost = cost + a[key].movedim(axis, 0).reshape(n, -1) @ w.movedim(axis, 0).reshape(n, -1).T
            if isinstance(cost, int):  # never: every group holds the weight of a layer, which `a` has
                continue
            matrix = cost.cpu().numpy()
            new = linear_sum_assignment(matrix, maximize=True)[1]
            old = perms[group].numpy()
            gain = matrix[np.arange(n), new].sum() - matrix[np.arange(n), old].sum()
            if gain > 1e-12 * max(1.0, abs(matrix[np.arange(n), old].sum())):  # strict gain only: no cycling on ties
                perms[group], changed = torch.from_numpy(new).long(), True
        if not changed:
            break
    return perms, sweeps


def weight_matching(
    spec: PermutationSpec, state_a: dict, state_b: dict, seed: int = 0, max_iter: int = 100
) -> dict[str, torch.Tensor]:
    """group -> index permutation (CPU int64) such that apply_permutation(spec, perms, state_b) matches state_a."""
    return _match(spec, state_a, state_b, seed, max_iter)[0]


@dataclass
class Alignment:
    state: dict  # B's state with its hidden units in A's order: the same function as B
    perms: dict[str, torch.Tensor]  # group -> index permutation
    sweeps: int  # sweeps over all groups, the last one changing nothing unless max_iter stopped them
    objective_before: float  # sum of <W_A, W_B> over the matched weights
    objective_after: float  # the same with B aligned: >= objective_before
    identity_fraction: float  # share of hidden units that stay in place (1.0: B was already in A's order)


def align(model: nn.Module, state_a: dict, state_b: dict, seed: int = 0, max_iter: int = 100) -> Alignment:
    """B (state_b of `model`'s architecture) aligned to A by weight matching; see the module docstring."""
    spec = permutation_spec(model)
    if missing := sorted((set(model.state_dict()) - set(state_a)) | (set(model.state_dict()) - set(state_b))):
        raise KeyError(f"state dicts lack keys of {type(model).__name__}: {missing[:5]}")
    perms, sweeps = _match(spec, state_a, state_b, seed, max_iter)
    aligned = apply_permutation(spec, perms, state_b)
    kept = sum(int((p == torch.arange(len(p))).sum()) for p in perms.values())
    return Alignment(
        aligned,
        perms,
        sweeps,
        _objective(spec, state_a, state_b),
        _objective(spec, state_a, aligned),
        kept / max(1, sum(len(p) for p in perms.values())),
    )


# ------------------------------------------------------------------------------------------ the function check
FUNCTION_TOLERANCE = 1e-4  # of check_function_kept: relative to the logits' scale (floor 1)


class AlignmentFailed(RuntimeError):
    """The permuted B does not compute B's function: the permutation spec does not fit this architecture."""


class FunctionCheck(NamedTuple):
    max_difference: float  # max |logit(B) - logit(aligned B)| over the check inputs
    allowed: float  # the most the rule allows: tolerance x max(1, max |logit(B)|)


def check_function_kept(
    model: nn.Module, state_b: dict, state_aligned: dict, x: torch.Tensor, tolerance: float = FUNCTION_TOLERANCE
) -> FunctionCheck:
    """Whether the aligned B computes B's function on the inputs x: raises AlignmentFailed when
    max |logit(B) - logit(aligned B)| exceeds tolerance x max(1, max |logit(B)|), else returns both numbers.

    Why this rule: a permutation of hidden units changes no result in exact arithmetic, but in float32 it reorders
    the sums of every layer (and lets the backend pick other kernels), so the two sets of logits differ by rounding,
    and rounding grows with the size of the numbers summed. An absolute tolerance would therefore stop a valid
    alignment of a network whose logits are large (a long-trained, confident classifier; a language model), and a
    relative one alone would demand rounding finer than float32 resolves when every logit is near zero (an untrained
    network), hence the floor of 1 on the scale. A wrong permutation mixes unrelated units and changes the logits by
    a sizeable fraction of their scale, orders of magnitude above the default tolerance, so the margin costs no
    power."""
    training = model.training
    model.eval()  # in train mode BatchNorm would use batch statistics and write running ones into the states
    try:
        with torch.inference_mode():
            logits_b = torch.func.functional_call(model, state_b, (x,))
            logits_aligned = torch.func.functional_call(model, state_aligned, (x,))
    finally:
        model.train(training)
    check = FunctionCheck(
        (logits_b - logits_aligned).abs().max().item(), tolerance * max(1.0, logits_b.abs().max().item())
    )
    if not check.max_difference <= check.allowed:  # NaN (non-finite logits) fails too
        raise AlignmentFailed(
            f"the aligned B does not compute B's function: max |logit(B) - logit(aligned B)| = "
            f"{check.max_difference:.3g} > {check.allowed:.3g} (tolerance {tolerance:g} x "
            f"max(1, max |logit(B)|)): the permutation spec does not fit {type(model).__name__}"
        )
    return check
