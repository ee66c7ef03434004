"""One SGD training run with checkpoints at chosen epochs, written atomically and resumable.

Used by every stage that trains (CNN pairs, ViT pairs, MLPs, federated clients, the char-level GPT). The initial
weights come from `init_seed`, the data order and augmentation from `data_seed` (a private torch.Generator), so
"same init, different data order" is two runs with equal init_seed and different data_seed.

A checkpoint stores model, optimizer, scheduler and generator state: a run interrupted after checkpoint e resumes
from e and produces the same weights as an uninterrupted one. Under DVC the checkpoint folders in models/ (pairs,
BN pair, ViT pair, subspace MLPs, language models) are `persist` outputs, so this also holds for an interrupted `dvc
repro`. A checkpoint is only resumed from when its stored `meta` (seeds, optimizer, data, architecture: whatever
the caller describes the run with) equals the run's: checkpoints of another configuration are moved aside
(`stale_dir`; the stages pass `stale_dir_of(run_dir)`, the same path under models/stale/) or stop the run with what
to do, and a file that is not a readable checkpoint of this trainer stops it; nothing is ever mixed in, guessed about
or deleted.

Guards: a non-finite loss stops the run at once, and so does a checkpoint about to be saved with a non-finite weight
(the last step of an epoch comes after its loss; TrainingDiverged names the run, its seeds and the epoch); a stage then
calls `check_checkpoints` on a classifier's error at its checkpoints, so that no checkpoint of a run that ended at
chance level, or fell back to it, reaches a figure. `perturb_init` lets the test suite prove that no checked output
depends on the last digits of a training run (LLMC_PERTURB_INIT=1e-6 multiplies every initial weight by 1 + 1e-6 *
noise; set only while nbval runs the notebooks, by notebooks/conftest.py).
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from llmc_utils.core.config import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Section
from llmc_utils.core.io import CheckpointError, load_checkpoint, save_torch
from llmc_utils.core.runtime import progress


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
    # model and images in channels_last memory format: faster convolutions on CPU (benchmarks/bench_training.py
    # compares it with the default layout), other last digits; images only (4-D inputs), a no-op for token ids
    channels_last: bool = False


class TrainingDiverged(RuntimeError):
    """A training run whose loss became non-finite, or whose model ended at chance level."""


PERTURB_ENV = "LLMC_PERTURB_INIT"


def perturb_init(model: torch.nn.Module) -> torch.nn.Module:
    """Multiply every floating-point tensor of a freshly initialised model by 1 + eps * N(0, 1), eps taken from
    $LLMC_PERTURB_INIT (no-op when unset). It imitates another CPU's rounding: nbval runs the notebooks with it and
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
        raise TrainingDiverged(
            f"{desc}: training diverged at epoch {epoch} (loss {value}); lower the learning rate "
            "or add gradient clipping in params.yaml"
        )


def check_finite_state(state: Mapping[str, torch.Tensor], desc: str, epoch: int) -> None:
    """Stop before a checkpoint with a NaN or infinite weight is written, naming the tensor."""
    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise TrainingDiverged(
                f"{desc}: training diverged at epoch {epoch} ({key} is no longer finite); lower "
                "the learning rate or add gradient clipping in params.yaml"
            )


def check_not_chance(error: float, n_classes: int, desc: str, epoch: int, margin: float = 0.95) -> None:
    """Stop when a trained classifier's error (%) is at least `margin` x chance (100 (1 - 1/C)): a run that fell off
    the stable training regime must never reach a figure."""
    chance = 100.0 * (1.0 - 1.0 / n_classes)
    if not error < margin * chance:  # NaN too
        raise TrainingDiverged(
            f"{desc}: error {error:.1f} % at epoch {epoch} is at chance level ({chance:.0f} %); "
            "the run degenerated: lower the learning rate or change the recipe in params.yaml"
        )


def check_checkpoints(errors: Mapping[int, float], n_classes: int, desc: str, margin: float = 0.95) -> None:
    """check_not_chance over a run's checkpoints ({epoch: error %}): at the last one, and at every one after the
    first that left chance level. A run may start slowly (the initialisation, epoch 0, is at chance by construction
    and never counts as having left it), but a run that falls back to chance half way must not put those
    checkpoints into a figure, even when it recovers by the end."""
    trained = sorted(epoch for epoch in errors if epoch > 0)
    left_chance = False
    for epoch in trained:
        if left_chance or epoch == trained[-1]:
            check_not_chance(errors[epoch], n_classes, desc, epoch, margin)
        left_chance = left_chance or errors[epoch] < margin * 100.0 * (1.0 - 1.0 / n_classes)


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


def sgd_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    loss_fn: Callable,
    augment: bool = False,
    grad_clip: float = 0.0,
    after_step: Callable[[], None] = lambda: None,
) -> torch.Tensor:
    """One pass over (x, y) in an order drawn from `generator`; returns the last batch's loss. Shared by
    train_model and the federated clients, so both draw data order and augmentation the same way."""
    order = torch.randperm(len(y), generator=generator)
    for i in range(0, len(y), batch_size):
        idx = order[i : i + batch_size]
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


RESUME_KEYS = ("model", "optimizer", "scheduler", "generator", "epoch", "meta")


def meta_differences(stored, expected, prefix: str = "") -> list[str]:
    """Where a checkpoint's meta differs from the run's, one 'key: stored in the checkpoint, expected now' each."""
    if isinstance(stored, dict) and isinstance(expected, dict):
        out = []
        for key in sorted(set(stored) | set(expected), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in stored:
                out.append(f"{name}: absent in the checkpoint, {expected[key]!r} now")
            elif key not in expected:
                out.append(f"{name}: {stored[key]!r} in the checkpoint, absent now")
            else:
                out += meta_differences(stored[key], expected[key], name)
        return out
    return [] if stored == expected else [f"{prefix or 'meta'}: {stored!r} in the checkpoint, {expected!r} now"]


def survey_checkpoints(run_dir: Path, meta: dict) -> tuple[dict[int, Path], dict[Path, list[str]]]:
    """The checkpoints already in `run_dir`: ({epoch: path} of this configuration, {path: meta differences} of
    another one). A file that is not a complete checkpoint of train_model (truncated, foreign, renamed) raises
    CheckpointError naming it and what to do: it is never moved, deleted or resumed from."""
    current, other = {}, {}
    for path in sorted(Path(run_dir).glob("epoch_*.pt")):
        ckpt = load_checkpoint(path, RESUME_KEYS)
        if not isinstance(ckpt["epoch"], int) or f"epoch_{ckpt['epoch']:04d}.pt" != path.name:
            raise CheckpointError(
                f"checkpoint {path} holds epoch {ckpt['epoch']}: it was renamed or copied here; "
                f"move it away (mv {path} {path}.bad) and rerun"
            )
        differences = meta_differences(ckpt["meta"], meta)
        if differences:
            other[path] = differences
        else:
            current[ckpt["epoch"]] = path
    return current, other


def model_layout(model: torch.nn.Module) -> dict[str, list[int]]:
    """{state-dict key: shape} of a model: for a checkpoint's meta when the configuration alone does not fix the
    architecture (the data set fixes input and output sizes), so that checkpoints of another one are not resumed."""
    return {key: list(tensor.shape) for key, tensor in model.state_dict().items()}


def stale_dir_of(run_dir: Path) -> Path:
    """Where checkpoints of another configuration found in `run_dir` go: the same path under models/stale/ of its
    workspace (models/robustness/repetition_0/vit/A -> models/stale/robustness/repetition_0/vit/A), outside every DVC
    output and ignored by git; a run folder outside any models/ folder gets stale/ beside it."""
    parts = Path(run_dir).parts
    if "models" not in parts:
        return Path(run_dir).parent / "stale" / Path(run_dir).name
    cut = len(parts) - parts[::-1].index("models")  # after the last "models"
    return Path(*parts[:cut], "stale", *parts[cut:])


def set_aside(stale: dict[Path, list[str]], run_dir: Path, stale_dir: Path | None, desc: str) -> None:
    """Move checkpoints of another configuration out of `run_dir` into a new folder under `stale_dir` (nothing is
    deleted: they may be hours of compute), saying where; without a stale_dir, stop and say what to do."""
    differences = next(iter(stale.values()))
    what = (
        f"{len(stale)} checkpoint(s) in {run_dir} were written under another configuration "
        f"({'; '.join(differences[:4])}{'; ...' if len(differences) > 4 else ''})"
    )
    if stale_dir is None:
        raise CheckpointError(
            f"{desc}: {what}; they must not be mixed into this run. Move them away "
            f"(mv {run_dir} {run_dir}.old) or delete them, then rerun"
        )
    dest = Path(stale_dir) / time.strftime("%Y%m%dT%H%M%S")
    for n in range(1, 1000):
        if not dest.exists():
            break
        dest = dest.with_name(f"{dest.name.split('-')[0]}-{n}")
    dest.mkdir(parents=True)
    for path in stale:
        shutil.move(path, dest / path.name)
    print(f"{desc}: {what}; moved them to {dest} (delete that folder once you no longer need them)", flush=True)


def resume_epoch(current: dict[int, Path], checkpoint_epochs: Sequence[int]) -> int:
    """The latest finished checkpoint that every requested checkpoint before it exists for (0: start afresh), so a
    checkpoint epoch added to the list later is trained again rather than skipped."""
    complete = [e for e in current if all(c in current for c in checkpoint_epochs if c <= e)]
    return max(complete, default=0)


def train_model(
    make_model: Callable[[], torch.nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: OptimConfig,
    *,
    init_seed: int,
    data_seed: int,
    checkpoint_epochs: Sequence[int],
    run_dir: Path,
    meta: dict | None = None,
    desc: str = "train",
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    stale_dir: Path | None = None,
) -> list[Path]:
    """Train one model for cfg.epochs epochs and return the checkpoint paths (one per entry of checkpoint_epochs).

    Resumes from the checkpoints already in `run_dir` (see resume_epoch). `meta` (anything JSON-like describing the
    run) is stored in each checkpoint and compared on resume: checkpoints of another configuration are moved into a
    new folder under `stale_dir` (printed), or, without one, stop the run with CheckpointError saying what to do.
    """
    checkpoint_epochs = sorted(set(checkpoint_epochs))
    if checkpoint_epochs[0] < 0 or checkpoint_epochs[-1] > cfg.epochs:
        raise ValueError(f"checkpoint epochs must lie in [0, {cfg.epochs}], got {checkpoint_epochs}")
    meta = dict(meta or {}, init_seed=init_seed, data_seed=data_seed, optim=cfg.model_dump())
    paths = [checkpoint_path(run_dir, e) for e in checkpoint_epochs]
    for stale in Path(run_dir).glob(".*.tmp"):  # left by a run killed mid-write (SIGKILL skips atomic_path's cleanup)
        stale.unlink()
    current, other = survey_checkpoints(run_dir, meta)
    if other:
        set_aside(other, Path(run_dir), stale_dir, desc)
    if all(e in current for e in checkpoint_epochs):
        return paths
    loss_fn = loss_fn or (
        lambda logits, target: F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
    )

    torch.manual_seed(init_seed)
    model = perturb_init(make_model())
    if cfg.channels_last and x.dim() == 4:  # batches drawn by indexing keep the format of x
        # Module.to takes memory_format (documented), which the overloads of torch's type hints leave out
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        x = x.contiguous(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(data_seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(y) / cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s, steps_per_epoch))

    start = resume_epoch(current, checkpoint_epochs)
    if start in current:  # resume from the latest finished checkpoint (the initial one too: it stays as it is)
        ckpt = load_checkpoint(current[start], RESUME_KEYS)
        if start > 0:
            print(f"{desc}: resuming at epoch {start} of {cfg.epochs} from {current[start]}", flush=True)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        generator.set_state(ckpt["generator"])
        start = ckpt["epoch"]

    run = f"{desc} (init seed {init_seed}, data seed {data_seed})"  # how the guards name the run

    def save(epoch: int) -> None:
        check_finite_state(model.state_dict(), run, epoch)
        save_torch(
            dict(
                epoch=epoch,
                meta=meta,
                model=model.state_dict(),
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
                generator=generator.get_state(),
            ),
            checkpoint_path(run_dir, epoch),
        )

    if 0 in checkpoint_epochs and 0 not in current:
        save(0)
    bar = progress(total=(cfg.epochs - start) * steps_per_epoch, desc=desc, leave=False)
    model.train()

    def after_step() -> None:
        scheduler.step()
        bar.update(1)

    for epoch in range(start + 1, cfg.epochs + 1):
        loss = sgd_epoch(
            model,
            optimizer,
            x,
            y,
            cfg.batch_size,
            generator,
            loss_fn,
            cfg.augment,
            cfg.grad_clip,
            after_step=after_step,
        )
        check_finite(loss, run, epoch)
        bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}", refresh=False)  # shown at the next timed refresh
        if epoch in checkpoint_epochs:
            save(epoch)
    bar.close()
    return paths


def _train_in_worker(job: dict, show_progress: bool) -> list[Path]:
    """One train_model call in a worker process of train_many: one thread, the parent's progress setting. A worker's
    bar is plain text on the notebook's stderr, where every refresh becomes a line of the executed notebook: it
    refreshes every 10 s instead of 10 times a second."""
    from llmc_utils.core import runtime

    torch.set_num_threads(1)
    runtime._progress_enabled = show_progress
    runtime._progress_mininterval = 10.0
    kwargs: dict[str, Any] = {k: torch.from_numpy(v) if k in ("x", "y") else v for k, v in job.items()}
    return train_model(**kwargs)


def train_many(jobs: Sequence[dict], processes: int = 1) -> list[list[Path]]:
    """train_model(**job) for every job (independent runs, e.g. A and B of a pair); the checkpoint paths per job.

    processes > 1 trains up to that many runs side by side, each in its own one-thread process (spawned, so the
    notebook kernel's threads are never forked). For the small networks of the CPU profiles, two one-thread processes
    train a pair faster than one two-thread process, whose time goes to per-operation overheads rather than
    arithmetic; starting the workers costs a few seconds, so the gain grows with the run's length
    (benchmarks/bench_training.py measures it). Every argument of a job must pickle (make_model: a
    module-level function or functools.partial, not a lambda). Every worker uses one thread, so the numbers do not
    depend on `processes` (any value above 1; more processes than cores still helps when three equal runs share two
    cores); processes = 1 trains in this process with the stage's thread count, which gives other last digits.
    Jobs whose data sit on an accelerator (x not on the CPU) always train one after the other in this process, so a
    stage passes runtime.train_processes whatever its device.
    """
    if processes <= 1 or len(jobs) < 2 or any(job["x"].device.type != "cpu" for job in jobs):
        return [train_model(**job) for job in jobs]
    from concurrent.futures import ProcessPoolExecutor

    from llmc_utils.core import runtime

    context = torch.multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(processes, len(jobs)), mp_context=context) as pool:
        # data go as numpy arrays (copied into the pickle): torch's own pickling would move the tensors' storage
        # into shared memory, and the stage's process was measured evaluating several times slower afterwards
        futures = [
            pool.submit(
                _train_in_worker,
                {k: v.numpy() if k in ("x", "y") else v for k, v in job.items()},
                runtime._progress_enabled,
            )
            for job in jobs
        ]
        return [f.result() for f in futures]  # re-raises a worker's TrainingDiverged here, by name


def train_members(members: Mapping[str, Mapping], processes: int = 1, **shared) -> dict[str, list[Path]]:
    """Train the named members of a pair (A, B; the language model's A, B, B') with train_many: each member's
    train_model arguments over the `shared` ones; {name: checkpoint paths}, in the order of `members`."""
    jobs = [{**shared, **own} for own in members.values()]
    return dict(zip(members, train_many(jobs, processes)))


def load_weights(path: Path, meta: dict | None = None) -> dict[str, torch.Tensor]:
    """The model state dict of a checkpoint written by train_model."""
    expected = {"meta": meta} if meta is not None else {}
    return load_checkpoint(path, ("model", "epoch"), **expected)["model"]
