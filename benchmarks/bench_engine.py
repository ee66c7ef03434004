"""Benchmark: the layer-wise barrier engine against a naive reference on the default grid (alpha = 0.5).

Naive reference (how such grids are often computed): for every checkpoint, layer set ("full" + every logical layer) and
base, deep-copy the base state dict, write the averaged layer into it, load_state_dict into a module, and evaluate it
with a fresh DataLoader; the two endpoints are re-evaluated for every point. Engine:
llmc_utils.stages.layerwise_barriers (endpoints once per checkpoint, shared tensors, functional_call, cached activations
in front of the changed layer).

Prints, for the default pair's last checkpoints and then for one random pair each of the paper profile's ResNet18 and
the tiny ViT (random images of their input shapes: a forward pass costs the same whatever the numbers): wall time of
both, the speed ratio (target on the default grid: >= 4.5x), the FLOP ratio, the largest difference between the two
barrier tables (must be <= 1e-5), where activations are cached, and the achieved fraction of this machine's peak matmul
FLOP/s (model FLOPs counted with torch.utils.flop_counter.FlopCounterMode; peak measured with a large torch.matmul).

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

from llmc_utils.core import data, evaluation, models
from llmc_utils.core.evaluation import barrier
from llmc_utils.core.layers import logical_layers
from llmc_utils.core.vit import TinyViT, ViTConfig
from llmc_utils.pipeline.params import load_params
from llmc_utils.stages import train_pairs as pairs


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
        rows = evaluation.checkpoint_barriers(
            evaluator, epoch, state_a, state_b, logical_layers(state_a), [0.5], ["A", "B"]
        )
        out.update(
            {(r["epoch"], r["layer_set"], r["base"], r["split"]): r["barrier"] for r in rows if r["metric"] == "loss"}
        )
    return out


def peak_matmul_flops(n=2048, repeats=5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def counted_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--workspace", default=".")
    parser.add_argument("--checkpoints", type=int, default=3, help="the last N checkpoints of the pair")
    parser.add_argument("--resnet-images", type=int, default=8, help="random images per split for resnet18")
    parser.add_argument("--vit-images", type=int, default=300, help="random images per split for the tiny ViT")
    args = parser.parse_args()

    params = load_params(args.params)
    torch.set_num_threads(params["runtime"].num_threads)
    cfg = params["layerwise_barriers"]
    images = data.load_prepared(data.prepared_path(args.workspace))
    splits = pairs.pair_splits(images, params["train_pairs"], cfg.train_subset, cfg.test_subset, cfg.subset_seed)
    epochs = list(pairs.pair_checkpoints(args.workspace))[-args.checkpoints :]
    cache = {}

    def load_pair(epoch):  # both methods read the same (cached) weights, so disk time does not count
        if epoch not in cache:
            cache[epoch] = pairs.load_pair(args.workspace, epoch)
        return cache[epoch]

    for epoch in epochs:
        load_pair(epoch)
    peak = peak_matmul_flops()
    print(f"peak matmul (2048^2 fp32): {peak / 1e9:.1f} GFLOP/s, threads {torch.get_num_threads()}")
    failed = compare(
        "default pair", pairs.pair_model(args.workspace), load_pair, epochs, splits, cfg.eval_batch_size, peak
    )
    # other architectures: two random initialisations (a forward pass costs the same whatever the weights), random
    # images of their input shape, one checkpoint
    for name, make, shape, n in (
        (
            "resnet18 (paper profile)",
            lambda: models.build_model("resnet18", 3, 10, 32),
            (3, 32, 32),
            args.resnet_images,
        ),
        ("tiny ViT (Fig. 4)", lambda: TinyViT(ViTConfig()), (1, 28, 28), args.vit_images),
    ):
        torch.manual_seed(0)
        module, other = make(), make()
        # copies: the naive reference loads every state into `module`, which would overwrite tensors it shares
        states = tuple({k: v.detach().clone() for k, v in m.state_dict().items()} for m in (module, other))
        images_of = {s: (torch.randn(n, *shape), torch.randint(0, 10, (n,))) for s in ("train", "test")}
        failed |= compare(name, module, lambda epoch, states=states: states, [0], images_of, cfg.eval_batch_size, peak)
    if failed:
        raise SystemExit(1)


def compare(name, module, load_pair, epochs, splits, batch_size, peak: float) -> bool:
    """Time engine and naive reference on one grid, print both with their FLOPs, the ratio and the largest barrier
    difference; True when the difference exceeds the tolerance."""
    evaluator = evaluation.LayerEvaluator(copy.deepcopy(module), splits, batch_size)
    n_layers = len(logical_layers(load_pair(epochs[0])[0]))
    start = time.perf_counter()
    engine = engine_grid(evaluator, load_pair, epochs)
    engine_s = time.perf_counter() - start
    start = time.perf_counter()
    naive = naive_grid(module, load_pair, epochs, splits)
    naive_s = time.perf_counter() - start

    assert set(engine) == set(naive), "the two grids cover different points"
    diff = max(abs(engine[k] - naive[k]) for k in naive)
    engine_flops = counted_flops(lambda: engine_grid(evaluator, load_pair, epochs))
    per_sample = counted_flops(lambda: module(splits["train"][0][:1]))
    naive_flops = len(epochs) * (1 + n_layers) * 2 * 3 * per_sample * sum(len(y) for _, y in splits.values())
    cached = (
        "cache at " + ", ".join(evaluator.boundaries) if evaluator.enabled else "no cache: " + evaluator.cache_reason
    )
    print(
        f"\n{name}: checkpoints {epochs}, {n_layers} layers + full, bases A/B, alpha 0.5, splits "
        f"{ {s: len(y) for s, (x, y) in splits.items()} }; {cached}"
    )
    for label, seconds, flops in (("naive ", naive_s, naive_flops), ("engine", engine_s, engine_flops)):
        print(
            f"  {label}: {seconds:8.2f} s  {flops / 1e9:8.1f} GFLOP  {flops / seconds / 1e9:6.1f} GFLOP/s "
            f"({100 * flops / seconds / peak:.0f} % of peak)"
        )
    print(f"  speed ratio naive/engine: {naive_s / engine_s:.1f}x; FLOP ratio {naive_flops / engine_flops:.1f}x")
    print(
        f"  max |barrier difference| engine vs naive: {diff:.2e} ({'OK' if diff <= 1e-5 else 'FAIL'}: tolerance 1e-5)"
    )
    return diff > 1e-5


if __name__ == "__main__":
    main()
