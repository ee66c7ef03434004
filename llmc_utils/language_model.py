"""Layer-wise barriers of a language-model-like architecture: a tiny character-level GPT (SPEC section 3, item 7).

Text: Python's own help topics (`pydoc_data.topics`, ~465k characters, concatenated in sorted key order) or a text file
named in params; the first (1 - test_fraction) of the characters train, the rest test. Inputs are random windows of
`context` characters, targets the same windows shifted by one (x, y: (N, T) int64), trained with the core trainer.

Two runs form the pair (init and data seeds from params); checkpoints over training; at every checkpoint the core
engine evaluates the midpoint of the full interpolation and of each single logical layer, into A and into B.
Expected (paper, GPT-2-like models): a clear full barrier after the first checkpoints while single-layer barriers stay
near zero. Default profile (different inits, 1536 SGD steps, test loss ~1.6 nats/char): full train-loss barrier ~1.8 at
the end; LayerNorms and most second-block layers far below it, but the token embedding (~1.6) and the first block's
attention qkv (~1.3) alone nearly reproduce it, so the finding appears only in part. A same-init pair reaches only ~0.1.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from llmc_utils.config import NonNegativeInt, PositiveInt, Section
from llmc_utils.barriers import checkpoint_barriers
from llmc_utils.evaluation import LayerEvaluator
from llmc_utils.layers import logical_layers
from llmc_utils.trainer import OptimConfig, load_weights, train_model


class LanguageModelConfig(Section):
    text_file: str | None = None  # None = pydoc_data.topics (ships with Python)
    max_chars: NonNegativeInt = 0  # 0 = the whole text; else its first max_chars characters
    test_fraction: float = Field(0.1, gt=0.0, lt=1.0)  # the last part of the text is the test text
    context: PositiveInt = 32  # characters per window (T)
    d_model: PositiveInt = 48
    n_heads: PositiveInt = 4
    n_blocks: PositiveInt = 2
    train_windows: PositiveInt = 6144  # random windows drawn once from the train text: one epoch
    eval_windows: PositiveInt = 128  # windows of each split (train, test) on which barriers are measured
    window_seed: NonNegativeInt = 0
    init_seeds: tuple[NonNegativeInt, NonNegativeInt] = (0, 1)  # model A, model B (same init: barrier ~0.1 only)
    data_seeds: tuple[NonNegativeInt, NonNegativeInt] = (1, 2)
    optim: OptimConfig = OptimConfig(epochs=8, batch_size=32, lr=0.3, weight_decay=0.0, grad_clip=1.0)
    checkpoint_epochs: list[NonNegativeInt] = Field(default_factory=lambda: [0, 1, 2, 4, 6, 8], min_length=2)
    threads: PositiveInt = 1  # torch threads for training and evaluation (applied by stage.setup; tiny ops: see FederatedConfig.threads)

    @model_validator(mode="after")
    def _check(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model = {self.d_model} must be a multiple of n_heads = {self.n_heads}")
        if max(self.checkpoint_epochs) > self.optim.epochs:
            raise ValueError(f"checkpoint_epochs {self.checkpoint_epochs} go past optim.epochs = {self.optim.epochs}")
        if self.init_seeds[0] == self.init_seeds[1] and self.data_seeds[0] == self.data_seeds[1]:
            raise ValueError("init_seeds and data_seeds are both equal: the two runs would be identical")
        return self


# ---------------------------------------------------------------------------------------------------------- text
def load_text(cfg: LanguageModelConfig) -> str:
    if cfg.text_file is None:
        from pydoc_data.topics import topics  # a dict of help texts; sorted keys make the order reproducible

        text = "".join(topics[key] for key in sorted(topics))
    else:
        path = Path(cfg.text_file)
        if not path.is_file():
            raise FileNotFoundError(f"language_model.text_file = {cfg.text_file!r} does not exist")
        text = path.read_text(encoding="utf-8")
    return text[:cfg.max_chars] if cfg.max_chars else text


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


def prepare(cfg: LanguageModelConfig) -> dict:
    """Tokenizer, training windows and the fixed train/test evaluation windows."""
    text = load_text(cfg)
    tokenizer = CharTokenizer(text)
    ids = tokenizer.encode(text)
    cut = int(len(ids) * (1.0 - cfg.test_fraction))
    generator = torch.Generator().manual_seed(cfg.window_seed)
    train_x, train_y = windows(ids[:cut], cfg.train_windows, cfg.context, generator)
    eval_train = (train_x[:cfg.eval_windows], train_y[:cfg.eval_windows])  # windows the models trained on
    eval_test = windows(ids[cut:], cfg.eval_windows, cfg.context, generator)
    return dict(tokenizer=tokenizer, n_chars=len(ids), n_train_chars=cut, train=(train_x, train_y),
                splits={"train": eval_train, "test": eval_test})


# --------------------------------------------------------------------------------------------------------- model
class CausalSelfAttention(torch.nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = torch.nn.Linear(d_model, 3 * d_model)
        self.proj = torch.nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # no mask buffer: the state dict is weights only
        return self.proj(out.transpose(1, 2).reshape(n, t, d))


class MLPBlock(torch.nn.Module):
    def __init__(self, d_model: int):
        super().__init__()
        self.fc = torch.nn.Linear(d_model, 4 * d_model)
        self.proj = torch.nn.Linear(4 * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(torch.nn.Module):
    """Pre-LayerNorm transformer block (LayerNorm acts per token, so it interpolates like any other layer)."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.ln1, self.attn = torch.nn.LayerNorm(d_model), CausalSelfAttention(d_model, n_heads)
        self.ln2, self.mlp = torch.nn.LayerNorm(d_model), MLPBlock(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class CharGPT(torch.nn.Module):
    """Token + position embeddings, n_blocks blocks, final LayerNorm, untied head: (N, T) ids -> (N, T, V) logits."""

    def __init__(self, vocab_size: int, context: int, d_model: int = 64, n_heads: int = 4, n_blocks: int = 2):
        super().__init__()
        self.context = context
        self.tok_emb = torch.nn.Embedding(vocab_size, d_model)
        self.pos_emb = torch.nn.Embedding(context, d_model)
        self.blocks = torch.nn.ModuleList(Block(d_model, n_heads) for _ in range(n_blocks))
        self.ln_f = torch.nn.LayerNorm(d_model)
        self.head = torch.nn.Linear(d_model, vocab_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        if t > self.context:
            raise ValueError(f"sequence length {t} exceeds the context {self.context}")
        x = self.tok_emb(ids) + self.pos_emb(torch.arange(t, device=ids.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def model_factory(cfg: LanguageModelConfig, vocab_size: int):
    return lambda: CharGPT(vocab_size, cfg.context, cfg.d_model, cfg.n_heads, cfg.n_blocks)


# ------------------------------------------------------------------------------------------------ pair + barriers
def train_pair(cfg: LanguageModelConfig, prepared: dict, run_root: Path) -> dict[str, list[Path]]:
    """Train models A and B with the core trainer; {"A": checkpoint paths, "B": ...} in checkpoint_epochs order."""
    make_model = model_factory(cfg, prepared["tokenizer"].vocab_size)
    x, y = prepared["train"]
    meta = dict(arch="char_gpt", vocab=prepared["tokenizer"].vocab_size, n_chars=prepared["n_chars"],
                **cfg.model_dump(include={"context", "d_model", "n_heads", "n_blocks", "train_windows",
                                          "window_seed", "text_file", "max_chars", "test_fraction"}))
    paths = {}
    for name, init_seed, data_seed in zip("AB", cfg.init_seeds, cfg.data_seeds):
        paths[name] = train_model(make_model, x, y, cfg.optim, init_seed=init_seed, data_seed=data_seed,
                                  checkpoint_epochs=cfg.checkpoint_epochs, run_dir=run_root / f"model_{name}",
                                  meta=meta, desc=f"GPT {name}")
    return paths


def barriers_over_training(cfg: LanguageModelConfig, prepared: dict,
                           paths: dict[str, list[Path]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(barriers, endpoints): tidy tables over checkpoints; barrier rows = full + every logical layer, both bases."""
    evaluator = LayerEvaluator(model_factory(cfg, prepared["tokenizer"].vocab_size)(), prepared["splits"],
                               batch_size=512)
    steps_per_epoch = -(-cfg.train_windows // cfg.optim.batch_size)
    barrier_rows, end_rows = [], []
    for epoch, path_a, path_b in zip(sorted(set(cfg.checkpoint_epochs)), paths["A"], paths["B"]):
        state_a, state_b = load_weights(path_a), load_weights(path_b)
        where = dict(epoch=epoch, step=epoch * steps_per_epoch)
        for model, state in (("A", state_a), ("B", state_b)):
            for split, m in evaluator(state).items():
                end_rows.append(dict(where, model=model, split=split, loss=m["loss"], error=m["error"]))
        barrier_rows += [dict(row, step=where["step"]) for row in checkpoint_barriers(
            evaluator, epoch, state_a, state_b, logical_layers(state_a), alphas=[0.5], bases=["A", "B"])]
    return pd.DataFrame(barrier_rows), pd.DataFrame(end_rows)
