"""Layer-wise barriers of a language-model-like architecture: a tiny character-level GPT (docs/figures.md).

Text: Python's own help topics (`pydoc_data.topics`, ~465k characters, concatenated in sorted key order) or a text file
named in params; the first (1 - test_fraction) of the characters train, the rest test. Inputs are random windows of
`context` characters, targets the same windows shifted by one (x, y: (N, T) int64), trained with the core trainer.

Repetition r (the notebook's `seed`) draws its training and test windows with repetition_seed(window_seed, r) and
trains three models from the seeds a = repetition_seed(seed_a, r), b = repetition_seed(seed_b, r):

* A  - init a, data order a;
* B  - init b, data order b;
* B' - init a (A's initial weights), data order b (B's order).

So every repetition gives both pair schemes, differing in the initialization only: the *different-init* pair (A, B)
and the *same-init* pair (A, B'). At every checkpoint the core engine evaluates the midpoint (alpha = 0.5) of the full
interpolation and of each single logical layer, into A and into B, against the two full endpoint models, on fixed
"train" windows (a subset of the windows every model trained on) and held-out "test" windows. `same_init_epochs` may
restrict the same-init pair to fewer checkpoints (its epoch-0 pair is one model twice: barrier 0 by construction).
Cost: training dominates (three models); the default profile is sized so that one repetition fits its time budget on
2 CPU cores (params.yaml says how), which shortens training compared with an unconstrained run. The same-init barrier
only starts to grow late in training, so it is the quantity most sensitive to that length.

Scheme of the claims (`scheme`, default "different_init"), chosen before any verdict was computed: the claims contrast
single-layer barriers with the full one, so they need a pair whose full barrier is clearly present (the default
profile's rule, docs/profiles.md). A char-level GPT of this size trained from one
initialization stayed almost linearly connected in an earlier run (its full barrier was a small fraction of the
different-init one), which leaves nothing to contrast; the same-init pair is still trained and measured in every
repetition, so the figure and the summary show how much of the full barrier the shared initialization removes.
Expected (paper): a clear full barrier while single-layer barriers stay near zero. The clear full barrier is the
premise (`lm_regime`: the whole interval of the claim scheme's full train-loss barrier >= report.clear_barrier); the
claim is Fig. 1's relative band in the paper's unit, each repetition one unit: every single layer (both bases, last
checkpoint, train loss) within +-report.single_layer_relative (0.1 / 2.3) of the full barrier beyond its standard
error over the evaluation windows (`barriers.Band`), with the artifact's former 25 % as a sensitivity row. For
different inits the two runs may learn unrelated embedding tables and attention features, so some single layers can
carry a large part of the full barrier: the claim can fail, and the report then says so.

A run is stopped loudly when it diverges (non-finite loss, trainer.train_model) or degenerates: final loss on the train
or test windows no better than the unigram entropy of the training text (`check_not_degenerate`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Literal

import pandas as pd
import torch
from pydantic import Field, ValidationInfo, field_validator, model_validator

from llmc_utils.core import plotting
from llmc_utils.core.claims import Claim, Condition, Premise
from llmc_utils.core.config import ExistingFile, NonNegativeInt, PositiveInt, Section, Seed, checks_environment
from llmc_utils.core.evaluation import FULL, Evaluator, LayerEvaluator, checkpoint_barriers
from llmc_utils.core.io import read_repetition_tables
from llmc_utils.core.layers import logical_layers
from llmc_utils.core.trainer import OptimConfig, TrainingDiverged, load_weights, stale_dir_of, train_members
from llmc_utils.core.transformer import Block
from llmc_utils.stages.layerwise_barriers import Band, cell_metrics
from llmc_utils.stages.spec import EVALUATION, RUNTIME, TRAINING, Figure, StageSpec

STAGE = "language_model"
MODELS = ("A", "B", "B'")
PAIRS: dict[str, tuple[str, str]] = {"different_init": ("A", "B"), "same_init": ("A", "B'")}
Scheme = Literal["different_init", "same_init"]


class LanguageModelConfig(Section):
    text_file: ExistingFile = None  # UTF-8 text; None = pydoc_data.topics (ships with Python)
    max_chars: NonNegativeInt = 0  # 0 = the whole text; else its first max_chars characters
    test_fraction: float = Field(0.1, gt=0.0, lt=1.0)  # the last part of the text is the test text
    context: PositiveInt = 32  # characters per window (T)
    d_model: PositiveInt = 48
    n_heads: PositiveInt = 4
    n_blocks: PositiveInt = 2
    train_windows: PositiveInt = 1280  # random windows drawn once per repetition from the train text: one epoch
    eval_windows: PositiveInt = 48  # windows of each split (train, test) on which barriers are measured
    window_seed: Seed = 0  # base seed of the window draw; repetition r uses window_seed + 100 r
    seed_a: Seed = 0  # base seed of A (init and data order) and of B's init in the same-init pair B'
    seed_b: Seed = 1  # base seed of B (init and data order) and of B''s data order
    scheme: Scheme = "different_init"  # the pair the claims and the heatmap use (module docstring says why)
    optim: OptimConfig = OptimConfig(epochs=8, batch_size=16, lr=0.3, weight_decay=0.0, grad_clip=1.0)
    checkpoint_epochs: list[NonNegativeInt] = Field(default_factory=lambda: [0, 1, 2, 4, 6, 8], min_length=2)
    # checkpoints where the same-init pair is measured; None = all
    same_init_epochs: list[NonNegativeInt] | None = Field(default_factory=lambda: [0, 4, 6, 8])
    eval_batch_size: PositiveInt = 512  # windows per evaluation batch
    threads: PositiveInt = 1  # torch threads for training and evaluation (applied by stage.setup; tiny ops)

    @model_validator(mode="after")
    def _check(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model = {self.d_model} must be a multiple of n_heads = {self.n_heads}")
        epochs = list(self.checkpoint_epochs)
        if epochs != sorted(set(epochs)):
            raise ValueError(f"checkpoint_epochs must be strictly increasing, got {epochs}")
        if epochs[-1] != self.optim.epochs:
            raise ValueError(
                f"checkpoint_epochs {epochs} must end at optim.epochs = {self.optim.epochs} (the claims "
                "and the degeneracy check read the final models); none may go past it"
            )
        if self.same_init_epochs is not None:
            outside = sorted(set(self.same_init_epochs) - set(epochs))
            if outside or epochs[-1] not in self.same_init_epochs:
                raise ValueError(
                    f"same_init_epochs {self.same_init_epochs} must be checkpoint_epochs {epochs} and "
                    "include the last one"
                )
        if self.eval_windows > self.train_windows:
            raise ValueError(
                f"eval_windows = {self.eval_windows} exceeds train_windows = {self.train_windows}: the "
                "train split is a subset of the training windows"
            )
        if self.seed_a == self.seed_b:
            raise ValueError("seed_a and seed_b are equal: A and B would be identical")
        return self

    @field_validator("text_file")
    @classmethod
    def _utf8(cls, text_file: str | None, info: ValidationInfo) -> str | None:
        """The text must decode before any compute, not when the stage reaches it."""
        if text_file is not None and checks_environment(info):
            read_text_file(text_file)
        return text_file


# ---------------------------------------------------------------------------------------------------------- text
def read_text_file(path: str | Path) -> str:
    """The text of a UTF-8 file; any other encoding raises ValueError naming the file, the first bad byte and how
    to convert it (a silent fallback encoding would change the vocabulary)."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{path} is not UTF-8 text (byte {exc.start}: {exc.reason}); convert it first, e.g. "
            f"iconv -f LATIN1 -t UTF-8 {path} > {Path(path).with_suffix('.utf8.txt')}"
        ) from None


def load_text(cfg: LanguageModelConfig) -> str:
    if cfg.text_file is None:
        from pydoc_data.topics import topics  # a dict of help texts; sorted keys make the order reproducible

        text = "".join(topics[key] for key in sorted(topics))
    else:
        path = Path(cfg.text_file)
        if not path.is_file():
            raise FileNotFoundError(f"language_model.text_file = {cfg.text_file!r} does not exist")
        text = read_text_file(path)
    return text[: cfg.max_chars] if cfg.max_chars else text


class CharTokenizer:
    """One token per distinct character of the text, in sorted order."""

    def __init__(self, text: str):
        self.chars = sorted(set(text))
        self.index = {c: i for i, c in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        unknown = set(text) - set(self.index)
        if unknown:
            raise ValueError(f"characters outside the vocabulary: {sorted(unknown)[:10]}")
        return torch.tensor([self.index[c] for c in text], dtype=torch.int64)

    def decode(self, ids: torch.Tensor) -> str:
        return "".join(self.chars[i] for i in ids.tolist())


def windows(ids: torch.Tensor, n: int, context: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n random windows: x = ids[s : s + T], y = ids[s + 1 : s + T + 1] (next-character targets), both (n, T)."""
    if len(ids) <= context:
        raise ValueError(f"text of {len(ids)} tokens is too short for context {context}")
    starts = torch.randint(0, len(ids) - context, (n,), generator=generator)
    offsets = torch.arange(context + 1)
    chunks = ids[starts[:, None] + offsets]
    return chunks[:, :-1].contiguous(), chunks[:, 1:].contiguous()


def unigram_entropy(ids: torch.Tensor, vocab_size: int) -> float:
    """Entropy (nats per character) of the character frequencies of `ids`: the loss of the best model that ignores
    context. A language model that does not get below it has learnt nothing a histogram could not."""
    p = torch.bincount(ids, minlength=vocab_size).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log()).sum())


def prepare(cfg: LanguageModelConfig, repetition: int = 0) -> dict:
    """Tokenizer, the training windows of repetition r and its fixed train/test evaluation windows.

    `cfg` is the section as repetition r runs it (for_repetition). Training and test windows are drawn from
    generators seeded with its window_seed, one per text, so
    the test windows do not change with train_windows. Evaluation "train" = the first eval_windows training windows
    (the draw is random, so they are a fixed random subset of what every model trains on); "test" = windows of the
    held-out end of the text."""
    text = load_text(cfg)
    tokenizer = CharTokenizer(text)
    ids = tokenizer.encode(text)
    cut = int(len(ids) * (1.0 - cfg.test_fraction))
    seed = cfg.window_seed
    train_x, train_y = windows(ids[:cut], cfg.train_windows, cfg.context, torch.Generator().manual_seed(seed))
    eval_train = (train_x[: cfg.eval_windows], train_y[: cfg.eval_windows])  # windows the models trained on
    eval_test = windows(ids[cut:], cfg.eval_windows, cfg.context, torch.Generator().manual_seed(seed))
    return dict(
        tokenizer=tokenizer,
        n_chars=len(ids),
        n_train_chars=cut,
        train=(train_x, train_y),
        splits={"train": eval_train, "test": eval_test},
        repetition=repetition,
        unigram_entropy=unigram_entropy(ids[:cut], tokenizer.vocab_size),
    )


# --------------------------------------------------------------------------------------------------------- model
@torch.fx.wrap
def _check_context(t: int, context: int) -> None:
    """ValueError for a sequence longer than the context. Wrapped for torch.fx: tracing records one call instead of
    branching on the (symbolic) length, so CharGPT stays traceable and LayerEvaluator caches its activations."""
    if t > context:
        raise ValueError(f"sequence length {t} exceeds the context {context}")


class CharGPT(torch.nn.Module):
    """Token + position embeddings, n_blocks causal pre-norm blocks (transformer.Block, MLP 4 x d_model), final
    LayerNorm, untied head: (N, T) ids -> (N, T, V) logits."""

    def __init__(self, vocab_size: int, context: int, d_model: int = 64, n_heads: int = 4, n_blocks: int = 2):
        super().__init__()
        self.context = context
        self.tok_emb = torch.nn.Embedding(vocab_size, d_model)
        self.pos_emb = torch.nn.Embedding(context, d_model)
        self.blocks = torch.nn.ModuleList(Block(d_model, n_heads, 4, causal=True) for _ in range(n_blocks))
        self.ln_f = torch.nn.LayerNorm(d_model)
        self.head = torch.nn.Linear(d_model, vocab_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        _check_context(t, self.context)
        x = self.tok_emb(ids) + self.pos_emb(torch.arange(t, device=ids.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def model_factory(cfg: LanguageModelConfig, vocab_size: int):
    return partial(CharGPT, vocab_size, cfg.context, cfg.d_model, cfg.n_heads, cfg.n_blocks)  # picklable


# ------------------------------------------------------------------------------------------ training the three models
def model_seeds(cfg: LanguageModelConfig) -> dict[str, tuple[int, int]]:
    """(init seed, data seed) of A, B and B': A = (a, a), B = (b, b), B' = (a, b), from seed_a and seed_b of the
    section as the repetition runs it (for_repetition)."""
    a, b = cfg.seed_a, cfg.seed_b
    return {"A": (a, a), "B": (b, b), "B'": (a, b)}


def run_dir_name(model: str) -> str:
    return model.replace("'", "_prime")


def check_not_degenerate(losses: dict[str, float], entropy: float, desc: str, epoch: int) -> None:
    """Stop when a trained LM's loss on some split ({split: loss in nats per character}) is not below the unigram
    entropy of the training text: such a model predicts no better than character frequencies."""
    for split, loss in losses.items():
        if not loss < entropy:
            raise TrainingDiverged(
                f"{desc}: {split} loss {loss:.3f} nats/char at epoch {epoch} is no better than the "
                f"unigram entropy {entropy:.3f} of the training text; the run degenerated: lower "
                "the learning rate or train longer (language_model.optim in params.yaml)"
            )


def train_models(cfg: LanguageModelConfig, prepared: dict, run_root: Path, processes: int = 1) -> dict[str, list[Path]]:
    """Train A, B and B' of the repetition `prepared` was made for, with the core trainer (resumes what is on disk);
    {model: checkpoint paths in checkpoint_epochs order}. Each final model must beat the unigram entropy."""
    repetition = prepared["repetition"]
    make_model = model_factory(cfg, prepared["tokenizer"].vocab_size)
    x, y = prepared["train"]
    model = make_model()
    # the state-dict keys name the layers: checkpoints of another layout are another configuration (trainer)
    meta = dict(
        arch="char_gpt",
        vocab=prepared["tokenizer"].vocab_size,
        n_chars=prepared["n_chars"],
        repetition=repetition,
        keys=list(model.state_dict()),
        **cfg.model_dump(
            include={
                "context",
                "d_model",
                "n_heads",
                "n_blocks",
                "train_windows",
                "window_seed",
                "text_file",
                "max_chars",
                "test_fraction",
            }
        ),
    )
    evaluator = Evaluator(model, prepared["splits"], cfg.eval_batch_size)
    seeds = model_seeds(cfg)
    members = {
        name: dict(
            init_seed=init_seed,
            data_seed=data_seed,
            run_dir=run_root / run_dir_name(name),
            stale_dir=stale_dir_of(run_root / run_dir_name(name)),
            desc=f"GPT {name} of repetition {repetition}",
        )
        for name, (init_seed, data_seed) in seeds.items()
    }
    paths = train_members(
        members,
        processes,
        make_model=make_model,
        x=x,
        y=y,
        cfg=cfg.optim,
        checkpoint_epochs=cfg.checkpoint_epochs,
        meta=meta,
    )
    for name, (init_seed, data_seed) in seeds.items():
        final = evaluator(load_weights(paths[name][-1]))
        check_not_degenerate(
            {split: m["loss"] for split, m in final.items()},
            prepared["unigram_entropy"],
            f"GPT {name} of repetition {repetition} (init seed {init_seed}, data seed {data_seed})",
            cfg.checkpoint_epochs[-1],
        )
    return paths


# ---------------------------------------------------------------------------------------------- barriers over training
def steps_per_epoch(cfg: LanguageModelConfig) -> int:
    return math.ceil(cfg.train_windows / cfg.optim.batch_size)


def barriers_over_training(
    cfg: LanguageModelConfig, prepared: dict, paths: dict[str, list[Path]]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(barriers, endpoints): tidy tables over checkpoints. Barrier rows: both pairs (column `pair`), full + every
    logical layer, both bases, alpha 0.5, train and test windows, loss and error. Endpoint rows: A, B, B' at every
    checkpoint."""
    evaluator = LayerEvaluator(
        model_factory(cfg, prepared["tokenizer"].vocab_size)(), prepared["splits"], batch_size=cfg.eval_batch_size
    )
    same_init_epochs = set(cfg.same_init_epochs if cfg.same_init_epochs is not None else cfg.checkpoint_epochs)
    barrier_rows, end_rows = [], []
    for i, epoch in enumerate(cfg.checkpoint_epochs):
        states = {name: load_weights(paths[name][i]) for name in MODELS}
        where = dict(epoch=epoch, step=epoch * steps_per_epoch(cfg))
        for name, state in states.items():
            for split, m in evaluator(state).items():
                end_rows.append(dict(where, model=name, split=split, loss=m["loss"], error=m["error"]))
        for pair, (a, b) in PAIRS.items():
            if pair == "same_init" and epoch not in same_init_epochs:
                continue
            rows = checkpoint_barriers(
                evaluator, epoch, states[a], states[b], logical_layers(states[a]), alphas=[0.5], bases=["A", "B"]
            )
            barrier_rows += [dict(pair=pair, **row, step=where["step"]) for row in rows]
    return pd.DataFrame(barrier_rows), pd.DataFrame(end_rows)


def barrier_curves(barriers: pd.DataFrame, split: str = "train", metric: str = "loss") -> pd.DataFrame:
    """Per (seed,) pair and checkpoint: the full barrier and the largest single-layer barrier over every layer and
    both bases, with that layer and base (alpha 0.5). Works on one repetition's table and on the aggregate."""
    sel = barriers[(barriers.split == split) & (barriers.metric == metric) & (barriers.alpha == 0.5)]
    keys = [k for k in ("repetition", "pair", "epoch", "step") if k in sel]
    full = sel[sel.layer_set == FULL].groupby(keys).barrier.max().rename("full_barrier")
    single = sel[sel.layer_set != FULL]
    top = single.loc[single.groupby(keys).barrier.idxmax()].set_index(keys)
    top = top[["barrier", "layer_set", "base"]].rename(
        columns={
            "barrier": "max_single_layer_barrier",
            "layer_set": "max_single_layer",
            "base": "max_single_layer_base",
        }
    )
    return pd.concat([full, top], axis=1).reset_index()


def repetition_metrics(
    cfg: LanguageModelConfig, barriers: pd.DataFrame, endpoints: pd.DataFrame, prepared: dict
) -> dict:
    """The flat per-repetition metrics the claims read. At the last checkpoint (train loss, alpha 0.5), per pair
    scheme: full barrier and largest single-layer barrier over layers and both bases (also on test loss); the claim
    scheme's two values again under scheme-free keys, with the full barrier's standard error and every single-layer
    cell (barriers.cell_metrics); final losses of A, B, B' and the unigram entropy."""
    last = cfg.checkpoint_epochs[-1]
    metrics = {}
    for split in ("train", "test"):
        curves = barrier_curves(barriers, split).set_index(["pair", "epoch"])
        for pair in PAIRS:
            row = curves.loc[(pair, last)]
            metrics[f"{pair}_full_barrier_{split}_loss"] = float(row.full_barrier)
            metrics[f"{pair}_max_single_layer_barrier_{split}_loss"] = float(row.max_single_layer_barrier)
    metrics["full_barrier_train_loss"] = metrics[f"{cfg.scheme}_full_barrier_train_loss"]
    metrics["max_single_layer_barrier_train_loss"] = metrics[f"{cfg.scheme}_max_single_layer_barrier_train_loss"]
    scheme = barriers[(barriers.pair == cfg.scheme) & (barriers.epoch == last)]
    full = scheme[
        (scheme.layer_set == FULL) & (scheme.split == "train") & (scheme.metric == "loss") & (scheme.alpha == 0.5)
    ]
    metrics["full_barrier_train_loss_se"] = float(full.se.iloc[0])
    metrics.update(cell_metrics(scheme, 0.5, last))  # the claim scheme's single layers at the last checkpoint
    final = endpoints[endpoints.epoch == last].set_index(["model", "split"])
    for name in MODELS:
        for split in ("train", "test"):
            metrics[f"final_{split}_loss_{run_dir_name(name)}"] = float(final.loc[(name, split), "loss"])
    metrics.update(
        unigram_entropy=float(prepared["unigram_entropy"]),
        last_epoch=int(last),
        last_step=int(last * steps_per_epoch(cfg)),
        n_layers=int(barriers[barriers.layer_set != FULL].layer_set.nunique()),
    )
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in metrics.items()}


# --------------------------------------------------------------------------------------------------------------- claims
LM_REGIME = "lm_regime"
PREMISES = [
    Premise(
        LM_REGIME,
        "Fig. 7 (LM)",
        "The char-level GPT pairs of language_model.scheme are in the regime the claim is "
        "about: averaging all layers creates a clear barrier at the end of training",
        (
            Condition(
                "full train-loss barrier at the last checkpoint (nats)",
                "a clear full barrier between the language models compared",
                STAGE,
                lambda m, c: m["full_barrier_train_loss"],
                ">=",
                "clear_barrier",
                "interval",
            ),
        ),
    ),
]

LM_RELATIVE = Band("single_layer_relative", full="full_barrier_train_loss", epoch="last_epoch")
LM_RELATIVE_LOOSE = Band("single_layer_relative_loose", full="full_barrier_train_loss", epoch="last_epoch")
_LM = (
    "Char-level GPT pair (scheme: language_model.scheme): in most repetitions, every single-layer barrier at the "
    "end of training stays below 0.1 / 2.3 of the full barrier, beyond its evaluation error"
)
_CELL = "inside the band beyond z x its standard error over the evaluation windows"
CLAIMS = [
    Claim(
        "Fig. 7 (LM)",
        _LM,
        "single-layer barriers near zero (Fig. 1's band: 0.1 against 2.3)",
        STAGE,
        LM_RELATIVE.measure,
        ">",
        "majority",
        "fraction of repetitions whose every single layer (both bases, train loss, last checkpoint) lies within "
        f"+-single_layer_relative x the full barrier, {_CELL}",
        premise=LM_REGIME,
        kind="count",
        null=LM_RELATIVE.null(),
    ),
    Claim(
        "Fig. 7 (LM)",
        _LM.replace("0.1 / 2.3", "25 %"),
        "(sensitivity: a band 6x looser than the paper's)",
        STAGE,
        LM_RELATIVE_LOOSE.measure,
        ">",
        "majority",
        "fraction of repetitions whose every single layer lies within +-single_layer_relative_loose x the full "
        f"barrier, {_CELL}",
        premise=LM_REGIME,
        kind="count",
        null=LM_RELATIVE_LOOSE.null(),
        sensitivity_of=_LM,
    ),
]


# ------------------------------------------------------------------------------------- aggregate over repetitions
def aggregate_language_model(workspace: str | Path, repetitions: Sequence[int]) -> pd.DataFrame:
    """Barrier rows of every repetition (results/language_model/repetition_<r>/barriers.csv) with a `repetition`
    column."""
    return read_repetition_tables(workspace, STAGE, "barriers.csv", repetitions)


def _checkpoint_labels(table: pd.DataFrame) -> dict[int, str]:
    steps = table.drop_duplicates("epoch").set_index("epoch")["step"]
    return {e: f"ep {e}\n(step {s})" for e, s in steps.items()}


def layer_barrier_grid(
    table: pd.DataFrame, pair: str, split: str = "train", metric: str = "loss"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Heatmap layout for one pair scheme: rows "full" then every layer in forward order, columns = checkpoints;
    cells = (mean, sd) over repetitions of the larger of the two bases' barriers (alpha 0.5); sd is NaN for one."""
    sel = table[(table.pair == pair) & (table.split == split) & (table.metric == metric) & (table.alpha == 0.5)]
    if "repetition" not in sel:
        sel = sel.assign(repetition=0)
    per_repetition = sel.groupby(["repetition", "layer_set", "epoch"], sort=False).barrier.max().reset_index()
    by_cell = per_repetition.groupby(["layer_set", "epoch"], sort=False).barrier
    order, labels = list(dict.fromkeys(sel.layer_set)), _checkpoint_labels(table)
    mean, sd = (stat.unstack("epoch").loc[order].rename(columns=labels) for stat in (by_cell.mean(), by_cell.std()))
    return mean, sd


def plot_language_model(
    table: pd.DataFrame, scheme: str = "different_init", heatmap_pairs: Sequence[str] | None = None
):
    """Fig. 7: (left) full and largest single-layer train-loss barrier vs epoch for both pair schemes, mean and
    ±1 sd band over repetitions; (right) layer x checkpoint heatmap (mean ± sd over repetitions) of the barriers of
    the `scheme` pairs (or of each of `heatmap_pairs`). `table`: aggregate_language_model's rows, or one repetition's
    barriers."""
    heatmap_pairs = list(heatmap_pairs or [scheme])
    curves = barrier_curves(table)
    n_repetitions = curves.repetition.nunique() if "repetition" in curves else 1
    long = curves.melt(
        id_vars=[k for k in ("repetition", "pair", "epoch") if k in curves],
        value_vars=["full_barrier", "max_single_layer_barrier"],
        var_name="interpolation",
        value_name="barrier",
    )
    long["interpolation"] = long.interpolation.map(
        {"full_barrier": "full", "max_single_layer_barrier": "max single layer"}
    )
    long["pair"] = long.pair.str.replace("_", " ")
    fig, axes = plotting.panels(1 + len(heatmap_pairs), width=7.0, height=6.0)
    plotting.curves(
        axes[0],
        long,
        x="epoch",
        y="barrier",
        hue="pair",
        style="interpolation",
        title=f"train-loss barrier at alpha 0.5\nmean ± 1 sd over {n_repetitions} repetition(s)",
    )
    axes[0].axhline(0.0, color="grey", lw=0.8)
    axes[0].set_xlabel(f"epoch ({int(curves.step.max() / max(curves.epoch.max(), 1))} SGD steps each)")
    axes[0].set_ylabel("barrier (nats per character)")
    for ax, pair in zip(axes[1:], heatmap_pairs):
        mean, sd = layer_barrier_grid(table, pair)
        plotting.heatmap(
            ax,
            mean,
            fmt=".2f",
            cbar_label="barrier (nats)",
            spread=sd,
            title=f"{pair.replace('_', ' ')} pairs: train-loss barrier per averaged layer\n"
            f"larger of the two bases, mean ± sd over {n_repetitions} repetition(s)",
        )
        ax.set_xlabel("checkpoint")
        ax.set_ylabel("averaged layer (full = all)")
    return fig


def summary(table: pd.DataFrame, scheme: str = "different_init") -> str:
    """One computed sentence for the report: the last checkpoint's full barrier of both schemes and the largest
    single-layer barrier of the claim scheme (mean ± sd over repetitions), and the layer that most often carries it."""
    curves = barrier_curves(table)
    if "repetition" not in curves:
        curves = curves.assign(repetition=0)
    last = curves[curves.epoch == curves.epoch.max()]
    n = last.repetition.nunique()

    def stat(values: pd.Series) -> str:
        return f"{values.mean():.2f}" + (f" ± {values.std(ddof=1):.2f}" if len(values) > 1 else "")

    by_pair = {pair: rows for pair, rows in last.groupby("pair")}
    own = by_pair[scheme]
    ratio = (own.max_single_layer_barrier / own.full_barrier.clip(lower=1e-6)).mean()
    counts = own.max_single_layer.value_counts()
    layer, k = counts.index[0], int(counts.iloc[0])
    others = ", ".join(
        f"{stat(rows.full_barrier)} nats for {pair.replace('_', ' ')} pairs"
        for pair, rows in by_pair.items()
        if pair != scheme
    )
    return (
        f"Char-level GPT ({n} repetition{'s' * (n > 1)}, last checkpoint: epoch {int(last.epoch.iloc[0])}, "
        f"step {int(last.step.iloc[0])}): the full train-loss barrier is {stat(own.full_barrier)} nats for "
        f"{scheme.replace('_', ' ')} pairs"
        + (f" and {others}" if others else "")
        + f"; for the {scheme.replace('_', ' ')} pairs the largest single-layer barrier is "
        f"{stat(own.max_single_layer_barrier)} nats ({ratio:.0%} of the full one on average), carried by {layer} "
        f"in {k} of {n}."
    )


def aggregate(st, repetitions: list[int]) -> str:
    """The language model's figure over every repetition; returns its summary sentence."""
    scheme = st.section("language_model").scheme
    table = aggregate_language_model(st.workspace, repetitions)
    plotting.save(plot_language_model(table, scheme), st.figures_dir / "fig7_language_model")
    print("language-model repetitions:", sorted(table.repetition.unique().tolist()))
    return summary(table, scheme)


SPEC = StageSpec(
    name="language_model",
    notebook="08_language_model",
    config=LanguageModelConfig,
    repeats_over="language_model",
    repetitions=(0, 1, 2),
    reads=(*RUNTIME, *TRAINING, *EVALUATION),
    persist=("models/language_model/repetition_{r}",),
    aggregate_figures=(
        Figure(
            "fig7_language_model",
            "Language model: full and largest single-layer barrier of "
            "char-level GPT pairs over training, different-init and same-init pairs (mean ± sd over "
            "repetitions), and the layer x checkpoint barriers of the claim's scheme.",
        ),
    ),
    aggregate=aggregate,
    aggregate_reads=("language_model",),
    claims=tuple(CLAIMS),
    premises=tuple(PREMISES),
)
