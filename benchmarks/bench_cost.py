"""Benchmark: what a profile costs on the device at hand, before renting one: FLOPs of each pair stage counted,
divided by the throughput measured here.

FLOPs are counted with torch.utils.flop_counter.FlopCounterMode on the profile's own architecture (random weights,
random images of the dataset's shape: a forward pass costs the same whatever the numbers):
* train_pairs: one SGD step (forward + backward) per image, x epochs x training images x 2 models;
* layerwise_barriers: one checkpoint of `evaluation.checkpoint_barriers` (endpoints, full mix, every layer and base,
  with the activation cache exactly as the stage runs it) per evaluated image, x images x checkpoints (the alpha grid
  at the checkpoints grid_epochs gives it, heatmap_alpha at the others);
* cumulative_averaging: one checkpoint of `cumulative.checkpoint_cumulative`, x images x checkpoints;
* alignment: the Fig. 1 column at each of its checkpoints and Fig. 2 at the last (weight matching itself is a few
  linear assignments: seconds).
Throughput is measured here in the same precision the stages run (fp32): a training step at the profile's batch size
and a forward pass at its evaluation batch size, each the best of a few timed runs after a warm-up. Estimated time =
FLOPs / measured FLOP/s per stage, per repetition (one pair), and the parallelism that brings K repetitions under
one hour.
The small models (ViT, MLPs, char-level GPT, deep linear nets) are not counted: minutes on one CPU at any profile.

    python benchmarks/bench_cost.py --profile paper [--device cuda] [--repetitions 5]
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from bench_fig1_grid import DATASETS, timed  # the script's folder is on sys.path
from torch.utils.flop_counter import FlopCounterMode

from llmc_utils.core.evaluation import LayerEvaluator, checkpoint_barriers
from llmc_utils.core.layers import logical_layers
from llmc_utils.core.runtime import resolve_device
from llmc_utils.pipeline import profiles
from llmc_utils.pipeline.params import load_profile, validate_params
from llmc_utils.stages import cumulative_averaging as cumulative
from llmc_utils.stages import train_pairs as pairs
from llmc_utils.stages.alignment import checkpoint_epochs as alignment_epochs

PROBE = 2  # images per split when counting a grid's FLOPs (the count scales linearly with the images)


def counted(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="paper", help="profile name or params file (default: paper)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--repetitions", type=int, default=5, help="K: repetitions (pairs) to plan for")
    args = parser.parse_args()

    params = validate_params(load_profile(profiles.profile_path(args.profile)), source=args.profile)
    pair_cfg, fig1 = params["train_pairs"], params["layerwise_barriers"]
    fig2, align_cfg = params["cumulative_averaging"], params["alignment"]
    shape, n_classes, n_train, n_test = DATASETS[params["data"].dataset]
    device = resolve_device(args.device)
    torch.manual_seed(0)
    spec = pairs.model_spec(pair_cfg, shape, n_classes)
    model = pairs.make_model(spec, device)
    state_a = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state_b = {k: v.detach().clone() for k, v in pairs.make_model(spec, device).state_dict().items()}
    layers = logical_layers(state_a, fig1.layer_groups)

    def images(n):
        return torch.randn(n, *shape, device=device), torch.randint(0, n_classes, (n,), device=device)

    # --- FLOPs per image of one training step and of one checkpoint of each grid
    x, y = images(pair_cfg.optim.batch_size)

    def train_step():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    model.train()
    step_flops = counted(train_step) / len(y)
    model.eval()
    probe = LayerEvaluator(
        model, {"train": images(PROBE), "test": images(PROBE)}, PROBE, device, fig1.cache_activations
    )
    fig1_flops = {
        k: counted(lambda a=a: checkpoint_barriers(probe, 0, state_a, state_b, layers, a, fig1.bases)) / (2 * PROBE)
        for k, a in (("grid", fig1.alphas), ("heatmap", [fig1.heatmap_alpha]))
    }
    probe2 = LayerEvaluator(model, {s: images(PROBE) for s in fig2.splits}, PROBE, device)
    fig2_flops = counted(lambda: cumulative.checkpoint_cumulative(probe2, 0, state_a, state_b, fig2)) / (
        len(fig2.splits) * PROBE
    )

    # --- images each stage pushes through those, per pair
    train_images = pair_cfg.train_subset or n_train
    eval1 = (fig1.train_subset or train_images) + (fig1.test_subset or n_test)
    eval2 = sum(
        (fig2.train_subset or train_images) if s == "train" else (fig2.test_subset or n_test) for s in fig2.splits
    )
    epochs1 = fig1.epochs if fig1.epochs is not None else pair_cfg.checkpoint_epochs
    n_grid = len(epochs1) if fig1.grid_epochs == "all" else 1
    epochs2 = fig2.epochs if fig2.epochs is not None else pair_cfg.checkpoint_epochs
    stages = {
        "train_pairs": 2 * pair_cfg.optim.epochs * train_images * step_flops,
        "layerwise_barriers": eval1 * (n_grid * fig1_flops["grid"] + (len(epochs1) - n_grid) * fig1_flops["heatmap"]),
        "cumulative_averaging": eval2 * len(epochs2) * fig2_flops,
        "alignment": eval1 * len(alignment_epochs(align_cfg, params)) * fig1_flops["heatmap"] + eval2 * fig2_flops,
    }

    # --- throughput of this device, fp32
    model.train()
    train_rate = step_flops * len(y) / timed(train_step, device, 3)
    model.eval()
    xe, _ = images(fig1.eval_batch_size)
    with torch.inference_mode():
        eval_rate = counted(lambda: model(xe)) / timed(lambda: model(xe), device, 3)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(
        f"profile {args.profile}: {spec['arch']} width {spec['width']}, {len(layers)} logical layers, "
        f"{train_images} training images, {pair_cfg.optim.epochs} epochs; device {name}"
    )
    print(
        f"measured fp32 throughput: training step {train_rate / 1e12:.2f} TFLOP/s (batch {len(y)}), "
        f"evaluation {eval_rate / 1e12:.2f} TFLOP/s (batch {fig1.eval_batch_size})"
    )
    total = 0.0
    print(f"{'stage':22s} {'PFLOP/pair':>11s} {'hours/pair':>11s}")
    for stage, flops in stages.items():
        hours = flops / (train_rate if stage == "train_pairs" else eval_rate) / 3600
        total += hours
        print(f"{stage:22s} {flops / 1e15:11.2f} {hours:11.2f}")
    print(f"{'per repetition (pair)':22s} {'':11s} {total:11.2f}")
    k = args.repetitions
    print(f"{k} repetitions: {k * total:.1f} device-hours in series")
    if total <= 1.0:  # each device runs floor(1 / total) whole repetitions in an hour
        print(f"under one hour of wall time: {math.ceil(k / math.floor(1.0 / total))} devices")
    else:  # repetitions are the unit of parallelism (one workspace each): one longer than an hour stays that long
        print(
            f"one repetition per device ({k} devices): {total:.1f} h of wall time; under one hour is out of reach "
            "without splitting a repetition's stages across devices"
        )


if __name__ == "__main__":
    main()
