"""Benchmark: the layer-wise barrier engine against a naive reference on the default grid (alpha = 0.5).

Naive reference (how such grids are often computed): for every checkpoint, layer set ("full" + every logical layer)
and base, deep-copy the base state dict, write the averaged layer into it, load_state_dict into a module, and evaluate
it with a fresh DataLoader; the two endpoints are re-evaluated for every point. Engine: llmc_utils.barriers
(endpoints once per checkpoint, shared tensors, functional_call, cached activations in front of the changed layer).

Prints: wall time of both, the speed ratio (target >= 5x), the largest difference between the two barrier tables
(must be <= 1e-5), and the achieved fraction of this machine's peak matmul FLOP/s for each (model FLOPs counted with
torch.utils.flop_counter.FlopCounterMode; peak measured with a large torch.matmul).

    python benchmarks/bench_engine.py [--params params.yaml] [--workspace .] [--checkpoints 3]
Needs the pair checkpoints of the train_pairs stage (dvc repro -s train_pairs).
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from llmc_utils import data, evaluation, pairs
from llmc_utils.config import get_section, load_params
from llmc_utils.evaluation import barrier
from llmc_utils.layers import logical_layers


def naive_metrics(module, state, x, y, batch_size=256) -> float:
    module.load_state_dict(state)
    module.eval()
    loss_sum, n = 0.0, 0
    with torch.no_grad():
        for xb, yb in DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False):
            loss_sum += F.cross_entropy(module(xb), yb, reduction="sum").item()
            n += len(yb)
    return loss_sum / n


def naive_grid(module, load_pair, epochs, splits) -> dict:
    out = {}
    for epoch in epochs:
        state_a, state_b = load_pair(epoch)
        layers = {"full": list(state_a), **{k: list(v) for k, v in logical_layers(state_a).items()}}
        for name, keys in layers.items():
            for base in ("A", "B"):
                mixed = copy.deepcopy(state_a if base == "A" else state_b)
                for key in keys:
                    mixed[key] = 0.5 * state_a[key] + 0.5 * state_b[key]
                for split, (x, y) in splits.items():
                    mid = naive_metrics(module, mixed, x, y)
                    end_a = naive_metrics(module, copy.deepcopy(state_a), x, y)
                    end_b = naive_metrics(module, copy.deepcopy(state_b), x, y)
                    out[(epoch, name, base, split)] = barrier(mid, end_a, end_b, 0.5)
    return out


def engine_grid(evaluator, load_pair, epochs) -> dict:
    out = {}
    for epoch in epochs:
        state_a, state_b = load_pair(epoch)
        rows = evaluation.checkpoint_barriers(evaluator, epoch, state_a, state_b, logical_layers(state_a), [0.5],
                                              ["A", "B"])
        out.update({(r["epoch"], r["layer_set"], r["base"], r["split"]): r["barrier"] for r in rows
                    if r["metric"] == "loss"})
    return out


def peak_matmul_flops(n=2048, repeats=5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


def counted_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--workspace", default=".")
    parser.add_argument("--checkpoints", type=int, default=3, help="the last N checkpoints of the pair")
    args = parser.parse_args()

    params = load_params(args.params)
    torch.set_num_threads(get_section(params, "runtime").num_threads)
    cfg = get_section(params, "layerwise_barriers")
    images = data.load_prepared(data.prepared_path(args.workspace))
    splits = pairs.pair_splits(images, get_section(params, "train_pairs"), cfg.train_subset, cfg.test_subset,
                               cfg.subset_seed)
    epochs = list(pairs.pair_checkpoints(args.workspace))[-args.checkpoints:]
    cache = {}

    def load_pair(epoch):  # both methods read the same (cached) weights, so disk time does not count
        if epoch not in cache:
            cache[epoch] = pairs.load_pair(args.workspace, epoch)
        return cache[epoch]

    for epoch in epochs:
        load_pair(epoch)
    module = pairs.pair_model(args.workspace)
    evaluator = evaluation.LayerEvaluator(copy.deepcopy(module), splits, cfg.eval_batch_size)
    print(f"grid: checkpoints {epochs}, {len(logical_layers(cache[epochs[0]][0]))} layers + full, bases A/B, "
          f"alpha 0.5, splits { {s: len(y) for s, (x, y) in splits.items()} }, threads {torch.get_num_threads()}")

    start = time.perf_counter()
    engine = engine_grid(evaluator, load_pair, epochs)
    engine_s = time.perf_counter() - start
    start = time.perf_counter()
    naive = naive_grid(module, load_pair, epochs, splits)
    naive_s = time.perf_counter() - start

    diff = max(abs(engine[k] - naive[k]) for k in naive)
    assert set(engine) == set(naive), "the two grids cover different points"
    engine_flops = counted_flops(lambda: engine_grid(evaluator, load_pair, epochs))
    per_sample = counted_flops(lambda: module(splits["train"][0][:1]))
    n_evals_naive = len(epochs) * (1 + len(logical_layers(cache[epochs[0]][0]))) * 2 * 3
    naive_flops = n_evals_naive * per_sample * sum(len(y) for _, y in splits.values())
    peak = peak_matmul_flops()

    print(f"naive : {naive_s:8.2f} s  {naive_flops / 1e9:8.1f} GFLOP  {naive_flops / naive_s / 1e9:6.1f} GFLOP/s "
          f"({100 * naive_flops / naive_s / peak:.1f} % of peak)")
    print(f"engine: {engine_s:8.2f} s  {engine_flops / 1e9:8.1f} GFLOP  {engine_flops / engine_s / 1e9:6.1f} GFLOP/s "
          f"({100 * engine_flops / engine_s / peak:.1f} % of peak)")
    print(f"peak matmul (2048^2 fp32): {peak / 1e9:.1f} GFLOP/s")
    print(f"speed ratio naive/engine: {naive_s / engine_s:.1f}x (target >= 5x)")
    print(f"max |barrier difference| engine vs naive: {diff:.2e} ({'OK' if diff <= 1e-5 else 'FAIL'}: tolerance 1e-5)")
    if diff > 1e-5:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
