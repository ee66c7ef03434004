"""One SGD training run with checkpoints at chosen epochs, written atomically and resumable.

Used by every stage that trains (CNN pairs, ViT pairs, MLPs, federated clients, the char-level GPT). The initial
weights come from `init_seed`, the data order and augmentation from `data_seed` (a private torch.Generator), so
"same init, different data order" is two runs with equal init_seed and different data_seed.

A checkpoint stores model, optimizer, scheduler and generator state: a run interrupted after checkpoint e resumes
from e and produces the same weights as an uninterrupted one.

Two guards: a non-finite loss stops the run at once (TrainingDiverged names the run, its seeds and the epoch), and
`perturb_init` lets the test suite prove that no checked output depends on the last digits of a training run
(LLMC_PERTURB_INIT=1e-6 multiplies every initial weight by 1 + 1e-6 * noise; unset everywhere but in that test).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field

from llmc_utils.config import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Section
from llmc_utils.io import load_checkpoint, save_torch
from llmc_utils.stage import progress


class OptimConfig(Section):
    epochs: PositiveInt = 10
    batch_size: PositiveInt = 64
    lr: PositiveFloat = 0.05
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: NonNegativeFloat = 5e-4
    schedule: Literal["constant", "cosine", "step"] = "constant"  # step: x0.1 at 50% and 75% of training
    warmup_epochs: NonNegativeInt = 0
    augment: bool = False  # random crop (pad 2 for 28px, 4 for 32px) + horizontal flip
    grad_clip: NonNegativeFloat = 0.0  # 0 = off


class TrainingDiverged(RuntimeError):
    """A training run whose loss became non-finite, or whose model ended at chance level."""


PERTURB_ENV = "LLMC_PERTURB_INIT"


def perturb_init(model: torch.nn.Module) -> torch.nn.Module:
    """Multiply every floating-point tensor of a freshly initialised model by 1 + eps * N(0, 1), eps taken from
    $LLMC_PERTURB_INIT (no-op when unset). It imitates another CPU's rounding: tests run the notebooks with it and
    their checked outputs must not change. The noise has its own generator, so the global RNG stream is untouched."""
    eps = float(os.environ.get(PERTURB_ENV) or 0.0)
    if eps:
        generator = torch.Generator().manual_seed(12345)
        with torch.no_grad():
            for tensor in model.state_dict().values():
                if tensor.is_floating_point():
                    noise = torch.randn(tensor.shape, generator=generator).to(tensor.device, tensor.dtype)
                    tensor.mul_(1.0 + eps * noise)
    return model


def check_finite(loss: torch.Tensor | float, desc: str, epoch: int) -> None:
    """Stop a run whose loss is NaN or infinite, naming the run (desc holds model and seeds) and the epoch."""
    value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
    if not math.isfinite(value):
        raise TrainingDiverged(f"{desc}: training diverged at epoch {epoch} (loss {value}); lower the learning rate "
                               "or add gradient clipping in params.yaml")


def check_not_chance(error: float, n_classes: int, desc: str, epoch: int, margin: float = 0.95) -> None:
    """Stop when a trained classifier's error (%) is at least `margin` x chance (100 (1 - 1/C)): a run that fell off
    the stable training regime must never reach a figure."""
    chance = 100.0 * (1.0 - 1.0 / n_classes)
    if error >= margin * chance:
        raise TrainingDiverged(f"{desc}: error {error:.1f} % at epoch {epoch} is at chance level ({chance:.0f} %); "
                               "the run degenerated: lower the learning rate or change the recipe in params.yaml")


def lr_factor(cfg: OptimConfig, step: int, steps_per_epoch: int) -> float:
    total, warmup = cfg.epochs * steps_per_epoch, cfg.warmup_epochs * steps_per_epoch
    if step < warmup:
        return (step + 1) / warmup
    progress_frac = (step - warmup) / max(1, total - warmup)
    if cfg.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress_frac))
    if cfg.schedule == "step":
        return 0.1 ** ((progress_frac >= 0.5) + (progress_frac >= 0.75))
    return 1.0


def augment_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-sample random crop with zero padding and random horizontal flip, vectorised (images N, C, H, W)."""
    n, c, h, w = x.shape
    pad = 2 if h <= 28 else 4
    padded = F.pad(x, (pad, pad, pad, pad))
    di = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dj = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (di[:, None] + torch.arange(h))[:, None, :, None]
    cols = (dj[:, None] + torch.arange(w))[:, None, None, :]
    out = padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    flip = torch.rand(n, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


def sgd_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
              batch_size: int, generator: torch.Generator, loss_fn: Callable, augment: bool = False,
              grad_clip: float = 0.0, after_step: Callable[[], None] = lambda: None) -> torch.Tensor:
    """One pass over (x, y) in an order drawn from `generator`; returns the last batch's loss. Shared by
    train_model and the federated clients, so both draw data order and augmentation the same way."""
    order = torch.randperm(len(y), generator=generator)
    for i in range(0, len(y), batch_size):
        idx = order[i:i + batch_size]
        xb = augment_batch(x[idx], generator) if augment else x[idx]
        loss = loss_fn(model(xb), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        after_step()
    return loss


def checkpoint_path(run_dir: Path, epoch: int) -> Path:
    return Path(run_dir) / f"epoch_{epoch:04d}.pt"


def train_model(make_model: Callable[[], torch.nn.Module], x: torch.Tensor, y: torch.Tensor, cfg: OptimConfig, *,
                init_seed: int, data_seed: int, checkpoint_epochs: Sequence[int], run_dir: Path,
                meta: dict | None = None, desc: str = "train",
                loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> list[Path]:
    """Train one model for cfg.epochs epochs and return the checkpoint paths (one per entry of checkpoint_epochs).

    `meta` (anything JSON-like describing the run) is stored in each checkpoint and checked on resume, so a
    checkpoint left by a different configuration is reported instead of silently reused.
    """
    checkpoint_epochs = sorted(set(checkpoint_epochs))
    if checkpoint_epochs[0] < 0 or checkpoint_epochs[-1] > cfg.epochs:
        raise ValueError(f"checkpoint epochs must lie in [0, {cfg.epochs}], got {checkpoint_epochs}")
    meta = dict(meta or {}, init_seed=init_seed, data_seed=data_seed, optim=cfg.model_dump())
    paths = [checkpoint_path(run_dir, e) for e in checkpoint_epochs]
    for stale in Path(run_dir).glob(".*.tmp"):  # left by a run killed mid-write (SIGKILL skips atomic_path's cleanup)
        stale.unlink()
    if all(p.is_file() for p in paths):
        for p in paths:  # cheap guard against a stale run directory from another configuration
            load_checkpoint(p, ("model", "epoch"), meta=meta)
        return paths
    loss_fn = loss_fn or (lambda logits, target: F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1)))

    torch.manual_seed(init_seed)
    model = perturb_init(make_model())
    generator = torch.Generator().manual_seed(data_seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(y) / cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s, steps_per_epoch))

    start = 0
    done = [e for e, p in zip(checkpoint_epochs, paths) if p.is_file()]
    if done:  # resume from the latest finished checkpoint
        ckpt = load_checkpoint(checkpoint_path(run_dir, done[-1]),
                               ("model", "optimizer", "scheduler", "generator", "epoch"), meta=meta)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        generator.set_state(ckpt["generator"])
        start = ckpt["epoch"]

    def save(epoch: int) -> None:
        save_torch(dict(epoch=epoch, meta=meta, model=model.state_dict(), optimizer=optimizer.state_dict(),
                        scheduler=scheduler.state_dict(), generator=generator.get_state()),
                   checkpoint_path(run_dir, epoch))

    if start == 0 and 0 in checkpoint_epochs:
        save(0)
    bar = progress(total=(cfg.epochs - start) * steps_per_epoch, desc=desc, leave=False)
    model.train()
    for epoch in range(start + 1, cfg.epochs + 1):
        loss = sgd_epoch(model, optimizer, x, y, cfg.batch_size, generator, loss_fn, cfg.augment, cfg.grad_clip,
                         after_step=lambda: (scheduler.step(), bar.update(1)))
        check_finite(loss, f"{desc} (init seed {init_seed}, data seed {data_seed})", epoch)
        bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}")
        if epoch in checkpoint_epochs:
            save(epoch)
    bar.close()
    return paths


def load_weights(path: Path, meta: dict | None = None) -> dict[str, torch.Tensor]:
    """The model state dict of a checkpoint written by train_model."""
    expected = {"meta": meta} if meta is not None else {}
    return load_checkpoint(path, ("model", "epoch"), **expected)["model"]
