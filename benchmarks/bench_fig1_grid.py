"""Benchmark: the Fig. 1 grid of a profile (full + every single layer, into A and into B, at its alphas) for one
checkpoint on the device at hand, and the whole stage's evaluation time estimated from it.

The pair is two random initialisations of the profile's architecture and the images are random tensors of the
profile's data shape: the time of a forward pass depends on neither, so no dataset and no trained pair are needed
(CIFAR-10 is not reachable on every machine). Per checkpoint it times `evaluation.checkpoint_barriers` twice, with the
whole alpha grid and with `heatmap_alpha` alone (layerwise_barriers.grid_epochs decides which checkpoints get which),
each the fastest of `--repeat` runs after a warm-up, and prints the stage's estimate: every checkpoint of
train_pairs.checkpoint_epochs (or layerwise_barriers.epochs) times its cost. Training time is not included.

    python benchmarks/bench_fig1_grid.py --profile paper              # ResNet18, 10k + 10k images, 11 checkpoints
    python benchmarks/bench_fig1_grid.py --profile default --repeat 1  # the default profile's pair on this machine
"""

from __future__ import annotations

import argparse
import time

import torch

from llmc_utils.core.evaluation import LayerEvaluator, checkpoint_barriers
from llmc_utils.core.layers import logical_layers
from llmc_utils.core.runtime import resolve_device
from llmc_utils.pipeline import profiles
from llmc_utils.pipeline.params import load_profile, validate_params
from llmc_utils.stages import train_pairs as pairs

# (channels, height, width), classes, and full training and test-set sizes of each dataset the profiles use
DATASETS = {"fashion_mnist": ((1, 28, 28), 10, 60000, 10000), "cifar10": ((3, 32, 32), 10, 50000, 10000)}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeat: int) -> float:
    """Fastest of `repeat` runs of fn() after one warm-up run (kernel selection, caches), in seconds."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="paper", help="profile name or params file (default: paper)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--batch-size", type=int, default=None, help="evaluation batch (default: the profile's)")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    params = validate_params(load_profile(profiles.profile_path(args.profile)), source=args.profile)
    pair_cfg, cfg = params["train_pairs"], params["layerwise_barriers"]
    dataset = params["data"].dataset
    shape, n_classes, n_train, n_test = DATASETS[dataset]
    # "train" images come from the pair's training subset (0 = all), "test" from the test set; 0 here = all of them
    n_eval = {"train": cfg.train_subset or pair_cfg.train_subset or n_train, "test": cfg.test_subset or n_test}
    device = resolve_device(args.device)
    torch.manual_seed(0)
    splits = {
        split: (torch.randn(n, *shape, device=device), torch.randint(0, n_classes, (n,), device=device))
        for split, n in n_eval.items()
    }
    spec = pairs.model_spec(pair_cfg, shape, n_classes)
    model = pairs.make_model(spec, device)
    state_a = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state_b = {k: v.detach().clone() for k, v in pairs.make_model(spec, device).state_dict().items()}
    layers = logical_layers(state_a, cfg.layer_groups)
    evaluator = LayerEvaluator(model, splits, args.batch_size or cfg.eval_batch_size, device, cfg.cache_activations)

    def grid(alphas):
        return lambda: checkpoint_barriers(evaluator, 0, state_a, state_b, layers, alphas, cfg.bases)

    seconds = {
        "grid": timed(grid(cfg.alphas), device, args.repeat),
        "heatmap": timed(grid([cfg.heatmap_alpha]), device, args.repeat),
    }
    epochs = cfg.epochs if cfg.epochs is not None else pair_cfg.checkpoint_epochs
    n_grid = len(epochs) if cfg.grid_epochs == "all" else 1
    total = n_grid * seconds["grid"] + (len(epochs) - n_grid) * seconds["heatmap"]
    # models evaluated per checkpoint: the two endpoints, then per alpha the full mix and every layer in every base
    models = {
        k: 2 + len(a) * (1 + len(layers) * len(cfg.bases))
        for k, a in (("grid", cfg.alphas), ("heatmap", [cfg.heatmap_alpha]))
    }
    images = sum(n_eval.values())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(
        f"profile {args.profile}: {spec['arch']} width {spec['width']}, {len(layers)} logical layers, "
        f"{sum(v.numel() for v in state_a.values()) / 1e6:.1f} M parameters; {n_eval['train']} train + "
        f"{n_eval['test']} test images; batch {evaluator.batch_size}; device {name}; activation cache "
        f"{'on at ' + ', '.join(evaluator.boundaries) if evaluator.enabled else 'off: ' + evaluator.cache_reason}"
    )
    for kind, alphas in (("grid", cfg.alphas), ("heatmap", [cfg.heatmap_alpha])):
        print(
            f"one checkpoint, alphas {alphas}: {models[kind]} models x {images} images in {seconds[kind]:.2f} s "
            f"({models[kind] * images / seconds[kind]:,.0f} images/s)"
        )
    print(
        f"layerwise_barriers stage, {len(epochs)} checkpoints (grid_epochs: {cfg.grid_epochs}): about {total:.0f} s "
        f"({total / 3600:.2f} h) of evaluation"
    )


if __name__ == "__main__":
    main()
