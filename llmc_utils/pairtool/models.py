"""Layer-wise barriers of any pair of checkpoints: the logic behind `llmc barriers` (llmc_utils.pairtool.cli) and its
Python API.

Why: the pipeline measures the paper's own pairs; a reader wants the same table and figures for two networks of their
own (docs/own_models.md). `analyse_pair(model, a, b, data, out, **options)` builds the architecture offline
(`torchvision:NAME`, `timm:NAME`, `hf:CONFIG_OR_DIR`, `module.path:callable`), loads the two checkpoints, reads the
data (llmc_utils.pairtool.data), checks everything that can be checked before any heavy compute (checkpoint keys and
shapes against each other and the model, values finite and of a floating type where the model has one, one forward
pass on two samples, BatchNorm present for a reset, the architecture supported by alignment, the output folder
writable and free to write: own_report.out_problem), then runs the pipeline's engine unchanged
(evaluation.checkpoint_barriers, cumulative.checkpoint_cumulative) once per variant:
* plain: A and B as they are;
* bn_reset (`bn_reset=N`): every interpolated model's BatchNorm statistics re-estimated on N training batches
  (normalization.BNReset); the endpoints keep their own;
* aligned, aligned+bn_reset (`align=True`): the same with B replaced by B aligned to A (align.align), checked to
  compute B's function.
It writes the tidy tables, the figures and the report (llmc_utils.pairtool.report). Every input error raises
PairInputError with a one-line message naming the input; the CLI prints it as `llmc: error: ...` and exits with code 2.

Nothing from the inputs runs as code, except what the user names as code: checkpoints are read as tensors only
(torch.load(weights_only=True), safetensors), data sets through own_data (CIFAR-10's pickles by a reader that only
rebuilds arrays); a `module.path:callable` model spec imports that module and calls the callable, as its user asks.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
import torch
from torch import nn

import llmc_utils  # noqa: F401  (the torchvision compatibility step comes before torchvision and timm)
from llmc_utils.core import data as pipeline_data
from llmc_utils.core.evaluation import LayerEvaluator, checkpoint_barriers
from llmc_utils.core.io import error_line, holds_objects, unsafe_global
from llmc_utils.core.layers import logical_layers
from llmc_utils.core.normalization import BNReset, has_batchnorm
from llmc_utils.core.pair_variants import Variant, pair_variants
from llmc_utils.core.runtime import quiet, resolve_device
from llmc_utils.pairtool import data as own_data
from llmc_utils.pairtool import report as own_report
from llmc_utils.stages import cumulative_averaging as cumulative

if TYPE_CHECKING:
    from llmc_utils.core.weight_matching import Alignment

MODEL_SPECS = "torchvision:NAME, timm:NAME, hf:CONFIG_OR_DIR or module.path:callable"
ORDERS: tuple[cumulative.Order, ...] = ("shallow_to_deep", "deep_to_shallow", "outer_first")
COLUMNS = ["variant", "layer_set", "base", "alpha", "split", "metric", "value", "value_a", "value_b", "barrier", "se"]


class PairInputError(ValueError):
    """An input of `llmc barriers` that cannot work (model spec, checkpoint, data, option); one line naming it."""


def _few(keys, limit: int = 5) -> str:
    keys = list(keys)
    return ", ".join(keys[:limit]) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "") if keys else "none"


# ------------------------------------------------------------------------------------------------------------ models
def _logits_only(module, args, output):
    """Forward hook of HF models: return the logits tensor instead of a ModelOutput, keeping HF's state-dict keys."""
    return getattr(output, "logits", output)


def _hf_model(arg: str, num_classes: int, kwargs: dict) -> nn.Module:
    """A transformers model built from a local config (no download): causal LM or image classifier."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    path = Path(arg)
    config_file = path / "config.json" if path.is_dir() else path
    if not config_file.is_file():
        raise PairInputError(f"--model hf:{arg}: no config file there (give a config.json or a folder holding one)")
    explicit = json.loads(config_file.read_text())
    transformers.logging.set_verbosity_error()  # warnings about token ids of tiny test configs are not ours to fix
    config = transformers.AutoConfig.from_pretrained(str(config_file), **kwargs)
    archs = config.architectures or []
    causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs) or (
        not any("ForImageClassification" in a for a in archs) and config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    )
    if causal:
        config.use_cache = False  # no key/value cache for single forward passes
        model = transformers.AutoModelForCausalLM.from_config(config)
    else:
        if not {"num_labels", "id2label"} & (set(explicit) | set(kwargs)):
            config.num_labels = num_classes  # like num_classes of torchvision / timm: from the data
        model = transformers.AutoModelForImageClassification.from_config(config)
    model.register_forward_hook(_logits_only)
    return model


def build_model(
    spec: str, num_classes: int, in_chans: int | None = None, model_kwargs: dict | None = None
) -> nn.Module:
    """The architecture named by `spec`, randomly initialised, offline (weights are loaded afterwards)."""
    kind, sep, name = spec.partition(":")
    if not sep or not kind or not name:
        raise PairInputError(f"--model {spec!r}: expected {MODEL_SPECS}")
    kw = dict(model_kwargs or {})
    try:
        if kind == "torchvision":
            import torchvision

            model = torchvision.models.get_model(name, weights=None, **{"num_classes": num_classes, **kw})
        elif kind == "timm":
            import timm

            chans = {"in_chans": in_chans} if in_chans else {}
            model = timm.create_model(name, pretrained=False, **{"num_classes": num_classes, **chans, **kw})
        elif kind == "hf":
            model = _hf_model(name, num_classes, kw)
        else:
            target: Any = importlib.import_module(kind)  # then an attribute of it: a callable
            for attr in name.split("."):
                target = getattr(target, attr)
            model = target(**kw)
    except PairInputError:
        raise
    except Exception as exc:  # each library raises its own types for an unknown name or a bad argument
        raise PairInputError(f"cannot build --model {spec!r}: {error_line(exc, 300)}") from None
    if not isinstance(model, nn.Module):
        raise PairInputError(
            f"--model {spec!r} returned a {type(model).__name__}, not a torch.nn.Module (a "
            "module.path:callable spec imports that module and calls the callable: it ran)"
        )
    return model.eval()


# ------------------------------------------------------------------------------------------------------- checkpoints
def load_state(path: str | Path, label: str = "A") -> dict[str, torch.Tensor]:
    """A state dict from a torch file (a state dict, or a dict with a "state_dict" or "model" entry) or a
    .safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise PairInputError(f"checkpoint {label}: there is no file {path}")
    obj: object  # whatever the file holds: checked below
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch and safetensors raise several types for foreign or truncated files
        if name := unsafe_global(exc):
            raise PairInputError(
                f"checkpoint {label} ({path}) {holds_objects(name)}: save the weights alone, "
                "torch.save(model.state_dict(), file) or safetensors"
            ) from None
        raise PairInputError(f"checkpoint {label} ({path}) cannot be read: {error_line(exc)}") from None
    if isinstance(obj, dict):
        obj = next((obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), dict)), obj)
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PairInputError(
            f"checkpoint {label} ({path}) holds a {type(obj).__name__} that is not a state dict "
            "of tensors (nor a dict with a 'state_dict' or 'model' entry)"
        )
    return dict(obj)


def tied_aliases(model: nn.Module) -> dict[str, str]:
    """{alias key: canonical key} of tensors shared by several state-dict keys (e.g. GPT-2's lm_head.weight is
    transformer.wte.weight). Only the canonical key is interpolated; functional_call ties the alias to it."""
    first: dict[int, str] = {}
    aliases = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        aliases.update({key: first[id(tensor)]} if id(tensor) in first else {})
        first.setdefault(id(tensor), key)
    return aliases


def _normalise_keys(state: dict, model: nn.Module, aliases: dict[str, str], label: str) -> dict:
    """The checkpoint's keys in the model's naming: wrapper prefixes that the model lacks stripped (module.,
    _orig_mod., ...), a prefix that every model key has added (a transformers base-model checkpoint, h.0... for
    transformer.h.0...), keys that transformers itself ignores on loading dropped (GPT-2's attn.bias masks), tied
    aliases folded into one key."""
    model_keys = set(model.state_dict())
    own = os.path.commonprefix([k for k in model_keys if k not in aliases]).rpartition(".")[0]

    def with_own(keys: dict) -> dict:
        return {(f"{own}.{k}" if own and f"{own}.{k}" in model_keys else k): v for k, v in keys.items()}

    def fit(keys: dict) -> int:
        return max(len(set(keys) & model_keys), len(set(with_own(keys)) & model_keys))

    for _ in range(3):  # strip a prefix that all keys share while more keys then fit
        prefix = os.path.commonprefix(list(state)).rpartition(".")[0]
        stripped = {k[len(prefix) + 1 :]: v for k, v in state.items()} if prefix else state
        if fit(stripped) <= fit(state):
            break
        state = stripped
    if len(set(with_own(state)) & model_keys) > len(set(state) & model_keys):
        state = with_own(state)
    ignored = [re.compile(p) for p in getattr(model, "_keys_to_ignore_on_load_unexpected", None) or []]
    state = {k: v for k, v in state.items() if k in model_keys or not any(p.search(k) for p in ignored)}
    for alias, canonical in aliases.items():
        if alias in state:
            value = state.pop(alias)
            if canonical in state and not torch.equal(state[canonical], value):
                raise PairInputError(
                    f"checkpoint {label}: {alias} and {canonical} are one tied tensor in the model "
                    "but differ in the checkpoint"
                )
            state.setdefault(canonical, value)
    return state


def check_values(state: dict, reference: dict, spec: str, name: str) -> None:
    """Stop on tensors that would make every number computed from them garbage: NaN or infinite values (a run that
    diverged), or integer or bool values for a floating-point tensor of the model (a quantised checkpoint, whose
    integers mean nothing without their scales, would otherwise be cast silently). `name`: "A (file)"."""
    for key, tensor in state.items():
        if reference[key].is_floating_point() and not (tensor.is_floating_point() or tensor.is_complex()):
            raise PairInputError(
                f"checkpoint {name}: {key} is {tensor.dtype}, but --model {spec} has "
                f"{reference[key].dtype} there; integers cast to floats are not the weights (a "
                "quantised checkpoint? save it dequantised)"
            )
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            nan, inf = int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())
            raise PairInputError(
                f"checkpoint {name}: {key} holds {nan} NaN and {inf} infinite values (of "
                f"{tensor.numel()}); every barrier would be NaN: use a checkpoint from before the "
                "run diverged"
            )


def fit_pair(
    model: nn.Module, spec: str, state_a: dict, state_b: dict, names: tuple[str, str] = ("A", "B")
) -> tuple[dict, dict]:
    """Both checkpoints checked against each other and the model, and their values (check_values; `names` of the
    two in messages); returned in the model's key order and dtypes, tied aliases dropped. Raises PairInputError
    naming a few missing/unexpected keys, a key with both shapes, or the tensor and file with bad values."""
    reference = model.state_dict()
    aliases = tied_aliases(model)
    a = _normalise_keys(state_a, model, aliases, "A")
    b = _normalise_keys(state_b, model, aliases, "B")
    if set(a) != set(b):
        raise PairInputError(
            f"checkpoints A and B hold different keys: only in A [{_few(k for k in a if k not in b)}]"
            f", only in B [{_few(k for k in b if k not in a)}]"
        )
    for key in a:
        if a[key].shape != b[key].shape:
            raise PairInputError(
                f"checkpoints A and B differ in shape at {key}: A {tuple(a[key].shape)}, B {tuple(b[key].shape)}"
            )
    expected = [k for k in reference if k not in aliases]
    missing, unexpected = [k for k in expected if k not in a], [k for k in a if k not in reference]
    if missing or unexpected:
        raise PairInputError(
            f"the checkpoints do not fit --model {spec}: missing keys [{_few(missing)}], unexpected "
            f"keys [{_few(unexpected)}]"
        )
    for key in expected:
        if a[key].shape != reference[key].shape:
            raise PairInputError(
                f"the checkpoints do not fit --model {spec} at {key}: checkpoints "
                f"{tuple(a[key].shape)}, model {tuple(reference[key].shape)}"
            )

    for state, name in ((a, names[0]), (b, names[1])):
        check_values({k: state[k] for k in expected}, reference, spec, name)

    def cast(state):
        return {k: state[k].to(reference[k].dtype) if reference[k].is_floating_point() else state[k] for k in expected}

    return cast(a), cast(b)


def check_fit(model: nn.Module, spec: str, state: dict, data: own_data.EvalData, device) -> None:
    """One forward pass on two samples of the first split: the data must fit the model, the logits the targets."""
    x, y = next(iter(data.splits.values()))
    x, y = x[:2].to(device), y[:2].to(device)
    if data.kind == "image":
        need = (
            f"images (N, {x.shape[1]}, {x.shape[2]}, {x.shape[3]}): check the model's input channels (timm: "
            "in_chans, torchvision models take 3) and image size (--image-size, --grayscale, --model-kwargs)"
        )
    else:
        need = (
            f"(N, {x.shape[1]}) byte ids 0..255: a vocabulary of at least 256 and at least {x.shape[1]} "
            "positions (--context)"
        )
    try:
        with torch.inference_mode():
            logits = torch.func.functional_call(model, state, (x,))
    except Exception as exc:  # whatever the model raises on inputs it cannot take
        raise PairInputError(
            f"--model {spec} cannot read --data {data.spec}: it must take {need}; the forward pass "
            f"on inputs {tuple(x.shape)} raised {error_line(exc)}"
        ) from None
    if not isinstance(logits, torch.Tensor):
        raise PairInputError(f"--model {spec} returns a {type(logits).__name__}, not a tensor of logits")
    if logits.shape[:-1] != y.shape:
        raise PairInputError(
            f"--model {spec} returns logits {tuple(logits.shape)} for targets {tuple(y.shape)} of "
            f"--data {data.spec}: classifiers must return (N, classes), sequence models (N, T, vocab)"
        )
    if logits.shape[-1] < data.num_classes:
        per, what = (
            ("token", "a vocabulary of 256 bytes") if data.kind == "text" else ("sample", f"{data.num_classes} classes")
        )
        raise PairInputError(
            f"--model {spec} returns {logits.shape[-1]} logits per {per}, --data {data.spec} has {what}"
        )


# ----------------------------------------------------------------------------------------------------------- the API
@dataclass
class Options:
    """Everything `llmc barriers` can set besides model, checkpoints, data and output folder (docs/own_models.md)."""

    layers: list[str] | None = None  # logical layer names or glob patterns for the single-layer rows; None = all
    alphas: tuple[float, ...] = (0.25, 0.5, 0.75)
    bases: tuple[Literal["A", "B"], ...] = ("A", "B")
    bn_reset: int = 0  # training batches of the BN reset; 0 = no reset variant
    bn_reset_batch_size: int = 128
    align: bool = False
    align_max_iter: int = 100
    orders: tuple[cumulative.Order, ...] = ORDERS  # cumulative orders; () = no cumulative table
    n_eval: int = 1000  # samples (images, text windows) per split; 0 = all
    batch_size: int = 256
    seed: int = 0  # evaluation subsets, reset batches, alignment order
    device: str = "auto"
    threads: int = 0  # torch CPU threads while the analysis runs; 0 = leave torch's setting
    model_kwargs: dict = field(default_factory=dict)
    image_size: int = 32
    grayscale: bool = False
    context: int = 64
    progress: bool = True

    def check(self) -> None:
        bad = [a for a in self.alphas if not 0.0 <= a <= 1.0]
        if not self.alphas or bad or len(set(self.alphas)) != len(self.alphas):
            raise PairInputError(f"--alphas must be distinct values in [0, 1], got {list(self.alphas)}")
        if not self.bases or set(self.bases) - {"A", "B"} or len(set(self.bases)) != len(self.bases):
            raise PairInputError(f"--bases must be A and/or B, got {list(self.bases)}")
        if set(self.orders) - set(ORDERS):
            raise PairInputError(
                f"--orders: unknown {sorted(set(self.orders) - set(ORDERS))}; known: {', '.join(ORDERS)}"
            )
        for name in ("bn_reset", "n_eval", "threads"):
            if getattr(self, name) < 0:
                raise PairInputError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        for name in ("bn_reset_batch_size", "batch_size", "image_size", "context", "align_max_iter"):
            if getattr(self, name) < 1:
                raise PairInputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")


@dataclass
class Pair:
    """A checked pair, ready to evaluate: model, states, data, layers, variants and their resets."""

    spec: str
    model: nn.Module
    state_a: dict
    state_b: dict
    data: own_data.EvalData
    layers: dict[str, tuple[str, ...]]  # every logical layer
    selected: list[str]  # the layers of the single-layer rows
    device: torch.device
    reset: BNReset | None = None
    alignment: Alignment | None = None
    info: dict = field(default_factory=dict)

    def variants(self) -> list[Variant]:
        return pair_variants(self.state_b, None if self.alignment is None else self.alignment.state, self.reset)


def select_layers(names: list[str], wanted: list[str] | None) -> list[str]:
    """The logical layers named (exactly or by a glob pattern such as 'layer1.*') in `wanted`, in model order."""
    if not wanted:
        return list(names)
    from fnmatch import fnmatchcase

    unknown = [w for w in wanted if not any(fnmatchcase(n, w) for n in names)]
    if unknown:
        raise PairInputError(
            f"--layers: unknown {', '.join(unknown)}; the model's logical layers are: {', '.join(names)}"
        )
    return [n for n in names if any(fnmatchcase(n, w) for w in wanted)]


def _align(pair: Pair, opts: Options, log) -> None:
    from llmc_utils.core import weight_matching as align

    try:
        result = align.align(pair.model, pair.state_a, pair.state_b, seed=opts.seed, max_iter=opts.align_max_iter)
    except getattr(align, "UnsupportedArchitecture", ValueError) as exc:
        raise PairInputError(f"--align: {exc}") from None
    x = next(iter(pair.data.splits.values()))[0][:8].to(pair.device)
    try:
        diff = align.check_function_kept(pair.model, pair.state_b, result.state, x).max_difference
    except align.AlignmentFailed as exc:  # a bug of weight matching, not an input error: a traceback, not exit 2
        raise align.AlignmentFailed(f"--align: {exc}; please report it") from None
    pair.alignment = result
    pair.info["alignment"] = dict(
        sweeps=result.sweeps,
        objective_before=result.objective_before,
        objective_after=result.objective_after,
        max_logit_difference=diff,
        identity_fraction=getattr(result, "identity_fraction", None),
    )
    log(
        f"aligned B to A: {result.sweeps} sweeps, objective {result.objective_before:.4g} -> "
        f"{result.objective_after:.4g}, max |logit(B) - logit(aligned B)| = {diff:.2g}"
    )


def prepare(model: str, a, b, data: str, opts: Options, log: Callable = print) -> Pair:
    """Read and check every input (no heavy compute): returns the Pair or raises PairInputError."""
    opts.check()
    try:
        device = resolve_device(opts.device)
    except RuntimeError as exc:
        raise PairInputError(f"--device: {exc}") from None
    checkpoints = load_state(a, "A"), load_state(b, "B")
    try:
        evaldata = own_data.load(data, opts.n_eval, opts.seed, opts.image_size, opts.grayscale, opts.context)
    except (own_data.DataError, pipeline_data.DatasetNotFound, pipeline_data.DatasetUnreadable) as exc:
        raise PairInputError(str(exc)) from None
    net = build_model(model, evaldata.num_classes, evaldata.in_chans, opts.model_kwargs).to(device)
    fitted = fit_pair(net, model, *checkpoints, names=(f"A ({a})", f"B ({b})"))
    state_a, state_b = ({k: v.to(device) for k, v in s.items()} for s in fitted)
    check_fit(net, model, state_a, evaldata, device)
    layers = logical_layers(state_a)
    pair = Pair(model, net, state_a, state_b, evaldata, layers, select_layers(list(layers), opts.layers), device)
    pair.info = dict(
        model=model,
        checkpoint_a=str(a),
        checkpoint_b=str(b),
        data=evaldata.describe(),
        n_parameters=sum(p.numel() for p in net.parameters()),
        n_layers=len(layers),
        batchnorm=has_batchnorm(net),
        device=str(device),
    )
    if opts.bn_reset:
        if not has_batchnorm(net):
            raise PairInputError(
                f"--bn-reset: --model {model} has no BatchNorm layer (with running "
                "statistics) to reset; LayerNorm and GroupNorm normalise per sample and need none: "
                "leave --bn-reset out"
            )
        try:
            batches = evaldata.draw(opts.bn_reset, opts.bn_reset_batch_size, opts.seed)
        except ValueError as exc:
            raise PairInputError(f"--bn-reset: {exc} (--bn-reset, --bn-reset-batch-size)") from None
        pair.reset = BNReset(net, batches, device)
    if opts.align:
        _align(pair, opts, log)
    return pair


class _Counted(LayerEvaluator):
    """LayerEvaluator that moves a progress bar by one per evaluated model (its `calls` count one per split)."""

    bar = None

    def _tick(self):
        if self.bar is not None:
            self.bar.update(max(0, getattr(self, "calls", 0) // len(self.splits) - self.bar.n))

    def __call__(self, state):
        out = super().__call__(state)
        self._tick()
        return out

    def endpoint(self, state, tag):
        out = super().endpoint(state, tag)
        self._tick()
        return out

    def partial(self, state, tag, keys):
        out = super().partial(state, tag, keys)
        self._tick()
        return out


def evaluate(pair: Pair, opts: Options, log: Callable = print) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(barrier table, cumulative table or None): the engine once per variant."""
    from tqdm.auto import tqdm

    evaluator = _Counted(pair.model, pair.data.splits, opts.batch_size, pair.device)
    cfg = (
        cumulative.CumulativeAveragingConfig(orders=list(opts.orders), window=0, alpha=0.5, bases=list(opts.bases))
        if opts.orders
        else None
    )
    per_variant = 2 + len(opts.alphas) + len(pair.selected) * len(opts.alphas) * len(opts.bases)
    if cfg is not None:
        per_variant += 2 + len(cumulative.groups(cfg, list(pair.layers))) * len(opts.bases)
    variants = pair.variants()
    table, cum = [], []
    with tqdm(
        total=per_variant * len(variants),
        desc="models evaluated",
        unit="model",
        dynamic_ncols=True,
        disable=not opts.progress or quiet(),
    ) as bar:
        evaluator.bar = bar
        for variant, state_b, reset in variants:
            start = time.time()
            rows = checkpoint_barriers(
                evaluator,
                0,
                pair.state_a,
                state_b,
                {n: pair.layers[n] for n in pair.selected},
                opts.alphas,
                opts.bases,
                reset,
            )
            table += [dict(r, variant=variant) for r in rows]
            if cfg is not None:
                cum += [
                    dict(r, variant=variant)
                    for r in cumulative.checkpoint_cumulative(evaluator, 0, pair.state_a, state_b, cfg, reset)
                ]
            pair.info.setdefault("seconds", {})[variant] = round(time.time() - start, 2)
    reason = getattr(evaluator, "cache_reason", None)  # why the engine evaluated every model in full, if it did
    pair.info["activation_caching"] = "on" if getattr(evaluator, "enabled", False) else f"off ({reason or 'unknown'})"
    log(
        f"activation caching: {pair.info['activation_caching']}"
        + ("; models with a BN reset are evaluated in full" if pair.reset else "")
    )
    barriers = pd.DataFrame(table)[COLUMNS]
    cum_table = pd.DataFrame(cum).drop(columns="epoch") if cum else None
    if cum_table is not None:
        cum_table = cum_table[["variant"] + [c for c in cum_table.columns if c != "variant"]]
    return barriers, cum_table


@dataclass
class PairResult:
    """What analyse_pair computed and where it wrote it."""

    barriers: pd.DataFrame
    cumulative: pd.DataFrame | None
    summary: dict
    files: list[Path]


def check_out(out: Path, cumulative: bool, force: bool) -> None:
    """Stop before any compute when the output folder cannot be written (the writers would fail at the end) or must
    not be written (own_report.out_problem); nothing is created before the analysis has run."""
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        raise PairInputError(f"--out {out}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PairInputError(f"--out {out}: {existing} is not writable")
    problem = own_report.out_problem(out, cumulative, force)
    if problem:
        raise PairInputError(problem)


def analyse_pair(
    model: str, a, b, data: str, out=None, log: Callable | None = print, force: bool = False, **options
) -> PairResult:
    """Layer-wise barriers of checkpoints `a` and `b` of the architecture `model` on `data`; with `out`, the tables,
    figures and report are written there (docs/own_models.md lists them; `force`: also into a folder that holds
    other files). `options`: the fields of Options."""
    unknown = set(options) - {f.name for f in dataclasses.fields(Options)}
    if unknown:
        raise TypeError(f"analyse_pair: unknown options {sorted(unknown)}")
    opts = Options(**options)
    log = log or (lambda *args, **kw: None)
    if out is not None:
        check_out(Path(out), bool(opts.orders), force)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(opts.threads or threads)  # one thread is faster on a CPU that others share
        pair = prepare(model, a, b, data, opts, log)
        log(
            f"{model}: {pair.info['n_layers']} logical layers ({len(pair.selected)} in the table), "
            f"{pair.info['n_parameters']:,} parameters; data {pair.info['data']}; variants: "
            f"{', '.join(v.name for v in pair.variants())}"
        )
        barriers, cum = evaluate(pair, opts, log)
    finally:
        torch.set_num_threads(threads)
    summary = own_report.summarise(barriers, pair.info, opts, pair.selected)
    if own_report.non_finite_note(summary):
        log(f"warning: {own_report.non_finite_note(summary)}")
    files = []
    if out is not None:
        if own_report.earlier_outputs(Path(out)) is not None:
            log(f"{out} holds an earlier run of llmc barriers: its files are replaced")
        files = own_report.write_outputs(Path(out), barriers, cum, summary)
        log("wrote " + ", ".join(str(f) for f in files))
    return PairResult(barriers, cum, summary, files)
