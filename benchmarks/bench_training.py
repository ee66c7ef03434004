"""Pair training: A and B one after the other on the stage's threads vs side by side (trainer.train_many).

    python benchmarks/bench_training.py                 # default profile's pair settings, 2 epochs each
    python benchmarks/bench_training.py --epochs 5

Trains the default pair (train_pairs section of params.yaml, on data/images.pt) twice in scratch folders: (1) A then
B in this process with runtime.num_threads threads, (2) A and B together in two one-thread worker processes, and
prints the wall time of each and their ratio. It also times one evaluation in this process before and after (2): the
stage evaluates in the same process right after training, so a slowdown there counts too. Starting the workers costs a
few seconds, so short runs (the 2-epoch default) can be slower side by side; the README's "Budget" section records
what a full-length run measured.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from llmc_utils import data, pairs  # noqa: E402
from llmc_utils.config import get_section, load_params  # noqa: E402
from llmc_utils.evaluation import Evaluator  # noqa: E402
from llmc_utils.trainer import train_many  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    params = load_params(args.params)
    cfg, runtime = get_section(params, "train_pairs"), get_section(params, "runtime")
    torch.set_num_threads(runtime.num_threads)
    images = data.load_prepared(data.prepared_path("."))
    x, y = images.split("train", cfg.train_subset, cfg.subset_seed)
    spec = pairs.model_spec(cfg, images.shape, len(images.classes))
    optim = cfg.optim.model_copy(update=dict(epochs=args.epochs))
    evaluator = Evaluator(pairs.make_model(spec), {"train": (x, y)}, cfg.eval_batch_size)
    state = pairs.make_model(spec).state_dict()

    def evaluate() -> float:
        start = time.perf_counter()
        evaluator(state)
        return time.perf_counter() - start

    scratch = Path(tempfile.mkdtemp(prefix="bench_training_"))
    try:
        def jobs(tag: str) -> list[dict]:
            return [dict(make_model=partial(pairs.make_model, spec), x=x, y=y, cfg=optim, init_seed=0,
                         data_seed=seed, checkpoint_epochs=[0, args.epochs], run_dir=scratch / tag / str(seed))
                    for seed in (1, 2)]

        eval_before = evaluate()
        start = time.perf_counter()
        train_many(jobs("serial"), processes=1)
        serial = time.perf_counter() - start
        start = time.perf_counter()
        train_many(jobs("parallel"), processes=2)
        parallel = time.perf_counter() - start
        eval_after = evaluate()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"pair of {cfg.arch} width {cfg.width}, {len(y)} images, {args.epochs} epochs each")
    print(f"A then B, {runtime.num_threads} threads:      {serial:6.1f} s")
    print(f"A and B side by side, 1 thread each: {parallel:6.1f} s   ({serial / parallel:.2f}x)")
    print(f"one evaluation before / after:       {eval_before:6.2f} s / {eval_after:.2f} s")


if __name__ == "__main__":
    main()
