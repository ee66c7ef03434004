"""Training speed of the default pair's network: every option side by side, in images per second, in one run.

    python benchmarks/bench_training.py                  # train_pairs of params.yaml, 200 SGD steps per option
    python benchmarks/bench_training.py --steps 200 --params profiles/faithful.yaml

What it measures (one SGD step = forward, backward and update of one batch, momentum and weight decay as configured;
images already in memory, as the trainer holds them), each after a few warm-up steps:

* per model, one thread (what each worker of trainer.train_many runs): the default (float32, contiguous), with
  channels_last memory format, with batch 128 and batch 256 (speed only: the learning rate would have to be scaled,
  and the run would differ), with torch.compile (its compile time printed apart), and two models stacked into one
  batched pass with torch.func (vmap over stacked parameters);
* per pair, the way the stage trains it: A and B one after the other with runtime.num_threads threads, and A and B
  side by side in two one-thread processes (train_many), start-up included, over --pair-epochs epochs each (default:
  the profile's, so the stage's real run).

Numbers depend on the CPU and on what else runs on it: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from llmc_utils.core import data
from llmc_utils.core import runtime as llmc_runtime
from llmc_utils.core.trainer import train_many
from llmc_utils.pipeline.params import load_params
from llmc_utils.stages import train_pairs as pairs

WARMUP = 5


def timed_steps(step, steps: int) -> float:
    """Seconds per call of step() over `steps` calls, after WARMUP untimed ones."""
    for _ in range(WARMUP):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def sgd_step_fn(model, optim_cfg, x, y, batch: int):
    optimizer = torch.optim.SGD(
        model.parameters(), lr=optim_cfg.lr, momentum=optim_cfg.momentum, weight_decay=optim_cfg.weight_decay
    )
    g = torch.Generator().manual_seed(0)

    def step():
        idx = torch.randint(0, len(y), (batch,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def stacked_step_fn(make_model, optim_cfg, x, y, batch: int, members: int = 2):
    """`members` models in one batched pass: parameters stacked, torch.func.vmap over functional_call."""
    from torch.func import functional_call, grad_and_value, stack_module_state, vmap

    models = [make_model() for _ in range(members)]
    params, buffers = stack_module_state(models)
    base = models[0].to("meta")
    params = {k: v.detach().requires_grad_(False) for k, v in params.items()}
    velocity = {k: torch.zeros_like(v) for k, v in params.items()}
    g = torch.Generator().manual_seed(0)

    def loss(p, b, xb, yb):
        return F.cross_entropy(functional_call(base, (p, b), (xb,)), yb)

    grads_of = vmap(grad_and_value(loss))

    def step():
        idx = torch.randint(0, len(y), (members, batch), generator=g)
        grads, _ = grads_of(params, buffers, x[idx], y[idx])
        with torch.no_grad():
            for k in params:  # SGD with momentum and weight decay, as torch.optim.SGD
                d = grads[k] + optim_cfg.weight_decay * params[k]
                velocity[k].mul_(optim_cfg.momentum).add_(d)
                params[k].sub_(optim_cfg.lr * velocity[k])

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--steps", type=int, default=200, help="timed SGD steps per option")
    parser.add_argument("--pair-epochs", type=int, help="epochs of each pair run (default: train_pairs.optim.epochs)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (it needs a C compiler)")
    args = parser.parse_args()
    params = load_params(args.params)
    cfg, runtime = params["train_pairs"], params["runtime"]
    images = data.load_prepared(data.prepared_path("."))
    x, y = images.split("train", cfg.train_subset, cfg.subset_seed)
    spec = pairs.model_spec(cfg, images.shape, len(images.classes))
    make = partial(pairs.make_model, spec)
    batch = cfg.optim.batch_size
    print(f"{cfg.arch} width {cfg.width} depth {cfg.depth}, batch {batch}, {args.steps} timed steps per option")

    torch.set_num_threads(1)
    rows = []

    def add(name: str, seconds_per_step: float, images_per_step: int, note: str = ""):
        rows.append((name, images_per_step / seconds_per_step, note))

    add("default (float32, 1 thread)", timed_steps(sgd_step_fn(make(), cfg.optim, x, y, batch), args.steps), batch)
    model = make().to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    add("channels_last", timed_steps(sgd_step_fn(model, cfg.optim, x_cl, y, batch), args.steps), batch)
    for big in (128, 256):
        add(
            f"batch {big} (lr would need scaling)",
            timed_steps(sgd_step_fn(make(), cfg.optim, x, y, big), max(1, args.steps * batch // big)),
            big,
        )
    add(
        "2 models stacked (torch.func.vmap)",
        timed_steps(stacked_step_fn(make, cfg.optim, x, y, batch), args.steps),
        2 * batch,
    )
    if not args.no_compile:
        compiled = torch.compile(make())
        start = time.perf_counter()
        step = sgd_step_fn(compiled, cfg.optim, x, y, batch)
        step()
        compile_s = time.perf_counter() - start
        add("torch.compile", timed_steps(step, args.steps), batch, f"compile {compile_s:.0f} s")

    # the pair as the stage trains it, start-up included
    torch.set_num_threads(runtime.num_threads)
    llmc_runtime._progress_enabled = False
    epochs = args.pair_epochs or cfg.optim.epochs
    optim = cfg.optim.model_copy(update=dict(epochs=epochs))
    scratch = Path(tempfile.mkdtemp(prefix="bench_training_"))
    try:

        def jobs(tag: str) -> list[dict]:
            return [
                dict(
                    make_model=make,
                    x=x,
                    y=y,
                    cfg=optim,
                    init_seed=0,
                    data_seed=seed,
                    checkpoint_epochs=[0, epochs],
                    run_dir=scratch / tag / str(seed),
                )
                for seed in (1, 2)
            ]

        for name, processes in (
            (f"pair: A then B, {runtime.num_threads} threads", 1),
            ("pair: A and B side by side, 1 thread each", 2),
        ):
            start = time.perf_counter()
            train_many(jobs(name), processes=processes)
            add(name, time.perf_counter() - start, 2 * epochs * len(y), f"{epochs} epochs each, start-up included")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    base = rows[0][1]
    print(f"{'option':48s} {'images/s':>9s} {'x default':>9s}")
    for name, rate, note in rows:
        print(f"{name:48s} {rate:9.0f} {rate / base:9.2f}  {note}")


if __name__ == "__main__":
    main()
