"""Setup study: which pair setups put Fig. 1 in the paper's regime, and what the single layers do there.

Why it exists. The paper's Fig. 1 asks whether averaging ONE layer stays harmless even when averaging ALL of them
breaks the model (full train-loss barrier 1.9-2.3 nats, near ln 10, with both models fitting CIFAR-10). Whether two
runs from one initialization end in different basins depends on their instability to SGD noise (Frankle et al.
2020), which depends on the data, the number of steps, learning rate and batch size, augmentation, the schedule, the
network and the pairing scheme. So the default pair is not assumed: this study measures those levers, and the
default is chosen from it by a rule fixed before it ran (params.yaml, comments of `setup_study`; docs/profiles.md):

1. the premise (barriers.PREMISES, thresholds `report.regime_barrier` and `report.fit_train_error`) holds over the
   variant's pairs: the whole interval of the full train-loss barrier at the last checkpoint lies at or above
   regime_barrier, and every endpoint's error on its own training images is at most fit_train_error; and every pair
   trained: none diverged or ended at chance level (the pipeline stops on such a model, so such a variant cannot be
   the default; this clause was added after the first combination round, in which a plain net collapsed);
2. a same-initialization scheme (the paper's different data order, or the authors' disjoint halves) is preferred;
   a different-init variant only when no same-init variant meets (1);
3. among those, the cheapest in training FLOPs per pair (at equal FLOPs, the smaller worst endpoint error, i.e. the
   larger margin on the premise; this tie-break was added when two variants of equal cost met the premise); it
   becomes the default profile when a pair trains within `pair_budget_s` (A and B side by side on this machine),
   else the `faithful` profile.

Only the premise's quantities decide; the single-layer barriers (what Fig. 1 tests) are measured and reported per
variant but never enter the choice.

Design: one factor at a time around `base` (the screening round: each variant changes one lever of the base, its
name says which), then a combination round of levers that the screening showed to move the premise's quantities
(the variant names list every lever changed). Each variant trains `repetitions` pairs (seeds as train_pairs pair r)
and is evaluated at its last checkpoint with the layer-wise stage's images and engine: full and single-layer
barriers at alpha 0.5 (both bases), the endpoints' fit (pairs.endpoint_fit) and test error.

It is not part of `dvc repro` (several times the pipeline's budget on 2 CPU cores):

    python -m llmc_utils.pipeline.setup_study            # params.yaml; needs data/images.pt (dvc repro prepare_data)

Resumable: checkpoints go under `setup_study.scratch` (written atomically by the trainer, resumed on a rerun), each
finished pair writes its row once, and a rerun skips finished pairs. The result, results/setup_study/fig1_by_setup.csv
(one row per variant and pair), is committed to git; the report stage turns it into the per-variant table
(results/report/setup_study.csv) and figure (figures/figA_setup_study.png). A pair whose training diverges or ends
at chance level is recorded as such (status column, message) and left out of the intervals.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, cast

import pandas as pd
from pydantic import Field, ValidationError, field_validator, model_validator

from llmc_utils.core import plotting
from llmc_utils.core.config import PositiveFloat, PositiveInt, Section
from llmc_utils.pipeline.params import merge

RESULT = Path("results") / "setup_study" / "fig1_by_setup.csv"
STATUS_OK = "ok"
BASE = "base"  # name of the screening round's centre in the results


class SetupStudyConfig(Section):
    # the screening round's centre, as overrides of train_pairs (spelled out, so that changing the default pair later
    # does not change the study)
    base: dict[str, Any] = Field(
        default_factory=lambda: dict(
            arch="rescnn",
            width=16,
            depth=1,
            train_subset=1500,
            scheme="same_init_different_order",
            optim=dict(epochs=30, batch_size=64, lr=0.05, schedule="constant", warmup_epochs=0, augment=False),
        )
    )
    # variant name -> overrides of `base` (keys of train_pairs; optim merged key by key)
    variants: dict[str, dict[str, Any]] = Field({BASE: {}}, min_length=1)
    repetitions: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=3)  # pairs per variant (>= 3)
    pair_budget_s: PositiveFloat = 60.0  # rule (3): training seconds per pair that fit the default budget
    flop_batch: PositiveInt = 8  # images of the one forward + backward pass that counts a variant's FLOPs per image
    scratch: str = "build/setup_study"  # checkpoints and per-pair rows (not committed)

    @field_validator("repetitions")
    @classmethod
    def _distinct(cls, repetitions: list[int]) -> list[int]:
        if len(set(repetitions)) != len(repetitions) or min(repetitions) < 0:
            raise ValueError(f"repetitions must be distinct non-negative indices, got {repetitions}")
        return repetitions

    @model_validator(mode="after")
    def _variants_build(self):
        """Every variant must be a valid train_pairs section (checked here, before any training)."""
        from llmc_utils.stages.train_pairs import TrainPairsConfig

        for name in self.variants:
            try:
                variant_pair_config(TrainPairsConfig(), self, name)
            except ValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(map(str, e['loc'])) or 'setup'} = {e['input']!r}: "
                    f"{e['msg'].removeprefix('Value error, ')}"
                    for e in exc.errors()
                )
                raise ValueError(f"variant {name!r} is not a valid train_pairs setup: {problems}") from None
        return self


def variant_pair_config(pair_cfg, cfg: SetupStudyConfig, name: str):
    """train_pairs with the study's base and then variant `name` applied; checkpoints at 0 and the last epoch (the
    study reads the last one)."""
    merged = merge(merge(pair_cfg.model_dump(), cfg.base), cfg.variants[name])
    merged["checkpoint_epochs"] = [0, merged["optim"]["epochs"]]
    return type(pair_cfg).model_validate(merged)


def levers(cfg: SetupStudyConfig, name: str) -> str:
    """What variant `name` changes relative to the base, e.g. "arch=cnn, optim.schedule=step"."""

    def flat(d: dict, prefix: str = "") -> dict:
        return {
            k2: v2
            for k, v in d.items()
            for k2, v2 in (flat(v, f"{prefix}{k}.").items() if isinstance(v, dict) else [(f"{prefix}{k}", v)])
        }

    return ", ".join(f"{k}={v}" for k, v in flat(cfg.variants[name]).items()) or "(base)"


def train_flop_per_image(vcfg, image_shape, num_classes: int, batch: int = 8) -> float:
    """FLOPs of one training image (forward + backward, torch's FLOP counter on a batch of `batch`): the variant's
    cost in a machine-independent unit."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from llmc_utils.stages.train_pairs import make_model, model_spec

    model = make_model(model_spec(vcfg, image_shape, num_classes))
    x = torch.randn(batch, *image_shape)
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(model(x), torch.zeros(batch, dtype=torch.long)).backward()
    return counter.get_total_flops() / batch


def pair_row(
    name: str,
    repetition: int,
    cfg: SetupStudyConfig,
    pair_cfg,
    barrier_cfg,
    images,
    workspace: Path,
    device,
    progress,
    processes: int = 1,
) -> dict:
    """Train one pair of one variant (resuming), then its numbers at the last checkpoint: the Fig. 1 headline
    metrics (barriers.headline_metrics), the endpoints' fit on their own training images and the cost."""
    import math

    from llmc_utils.core.evaluation import LayerEvaluator
    from llmc_utils.core.trainer import TrainingDiverged, check_not_chance
    from llmc_utils.stages import layerwise_barriers as barriers
    from llmc_utils.stages import train_pairs as pairs

    vcfg = variant_pair_config(pair_cfg, cfg, name)
    n_train = vcfg.train_subset or len(images.train_y)
    per_member = len(range(n_train)[vcfg.member_images("A", n_train)])
    steps = vcfg.optim.epochs * math.ceil(per_member / vcfg.optim.batch_size)
    flop = train_flop_per_image(vcfg, images.shape, len(images.classes), cfg.flop_batch)
    base = dict(
        variant=name,
        levers=levers(cfg, name),
        repetition=repetition,
        arch=vcfg.arch,
        width=vcfg.width,
        depth=vcfg.depth,
        scheme=vcfg.scheme,
        train_subset=n_train,
        images_per_model=per_member,
        epochs=vcfg.optim.epochs,
        batch_size=vcfg.optim.batch_size,
        lr=vcfg.optim.lr,
        schedule=vcfg.optim.schedule,
        augment=vcfg.optim.augment,
        steps_per_model=steps,
        train_tflop_per_pair=2 * flop * per_member * vcfg.optim.epochs / 1e12,
    )
    try:
        start = time.perf_counter()
        pairs.train_pair(vcfg.for_repetition(repetition), images, workspace, repetition, device, processes)
        train_seconds = time.perf_counter() - start
        last = vcfg.optim.epochs
        splits = pairs.pair_splits(
            images, vcfg, barrier_cfg.train_subset, barrier_cfg.test_subset, barrier_cfg.subset_seed, device
        )
        model = pairs.pair_model(workspace, repetition)
        evaluator = LayerEvaluator(model, splits, barrier_cfg.eval_batch_size, device, barrier_cfg.cache_activations)
        load = partial(pairs.load_pair, workspace, repetition=repetition)
        table, _ = barriers.barrier_table(evaluator, load, [last], barrier_cfg, progress=progress)
        metrics = barriers.headline_metrics(table, barrier_cfg.heatmap_alpha, barrier_cfg.claim_from_epoch)
        metrics.update(
            pairs.endpoint_fit(
                images,
                vcfg,
                model,
                *load(last),
                barrier_cfg.train_subset,
                barrier_cfg.subset_seed,
                barrier_cfg.eval_batch_size,
                device,
                "_last",
            )
        )
        for member in ("A", "B"):  # the last checkpoint must have learned something
            check_not_chance(
                metrics[f"test_error_{member}_last"],
                len(images.classes),
                f"setup study {name}: model {member} of pair {repetition}",
                last,
            )
        return dict(base, status=STATUS_OK, message="", train_seconds=train_seconds, **metrics)
    except TrainingDiverged as exc:  # recorded, never plotted as a barrier
        return dict(base, status="diverged", message=str(exc))


def metrics_by_variant(table: pd.DataFrame) -> dict[str, dict]:
    """{variant: {"layerwise_barriers": {seed: metrics}}}: the shape llmc_utils.core.claims reads, from the finished
    (status ok) pairs only."""
    out: dict[str, dict] = {}
    for row in table[table.status == STATUS_OK].to_dict("records"):
        out.setdefault(row["variant"], {"layerwise_barriers": {}})["layerwise_barriers"][int(row["repetition"])] = row
    return out


def summarize(table: pd.DataFrame, report_cfg, pair_budget_s: float = SetupStudyConfig().pair_budget_s) -> pd.DataFrame:
    """One row per variant: its levers and cost, the premise's quantities (full barrier with its interval over the
    pairs, the worst endpoint fit) and whether the premise holds, the largest single-layer barrier with its interval
    (reported, never used to choose; the Fig. 1 claims themselves count pairs, which 3 pairs per variant cannot
    decide at the default report.confidence, so they are judged only on the pipeline's pairs), and `chosen` by the
    rule of the module docstring."""
    from llmc_utils.core.claims import evaluate_premise, interval
    from llmc_utils.stages.layerwise_barriers import FIG1_REGIME, PREMISES
    from llmc_utils.stages.train_pairs import SAME_INIT_SCHEMES

    premise = {p.name: p for p in PREMISES}[FIG1_REGIME]
    rows = []
    for name, metrics in metrics_by_variant(table).items():
        mine = table[table.variant == name]
        ok = mine[mine.status == STATUS_OK]
        conditions = evaluate_premise(premise, metrics, report_cfg, report_cfg.confidence)
        holds = conditions[0]["premise_holds"]
        single = interval(ok.max_abs_single_layer_barrier_last, report_cfg.confidence)
        rows.append(
            dict(
                variant=name,
                levers=mine.levers.iloc[0],
                scheme=mine.scheme.iloc[0],
                n=len(ok),
                diverged=int((mine.status != STATUS_OK).sum()),
                train_tflop_per_pair=float(mine.train_tflop_per_pair.iloc[0]),
                train_seconds_per_pair=float(ok.train_seconds.mean()),
                full_barrier=conditions[0]["mean"],
                full_barrier_low=conditions[0]["low"],
                full_barrier_high=conditions[0]["high"],
                worst_own_train_error=conditions[1]["worst"],
                premise_holds=bool(holds),
                max_single_layer_barrier=single[0],
                max_single_layer_barrier_low=single[1],
                max_single_layer_barrier_high=single[2],
            )
        )
    summary = pd.DataFrame(rows)
    return summary.assign(chosen=choose(summary, pair_budget_s, SAME_INIT_SCHEMES))


def choose(summary: pd.DataFrame, pair_budget_s: float, same_init_schemes) -> pd.Series:
    """The rule of the module docstring, as a column: "default" for the cheapest variant (training FLOPs) whose
    premise holds and none of whose pairs diverged, same-init schemes first, that trains a pair within pair_budget_s;
    "faithful" for the cheapest such variant when none fits the budget; "" elsewhere."""
    chosen = pd.Series("", index=summary.index)
    eligible = summary[summary.premise_holds & (summary.diverged == 0)]  # the pipeline stops on a diverged model
    same_init = eligible[eligible.scheme.isin(same_init_schemes)]
    pool = same_init if len(same_init) else eligible
    if len(pool):
        fits = pool[pool.train_seconds_per_pair <= pair_budget_s]
        label, pick = ("default", fits) if len(fits) else ("faithful", pool)
        # equal cost (the same network and number of steps): the larger margin on the premise's fit decides
        chosen[pick.sort_values(["train_tflop_per_pair", "worst_own_train_error"]).index[0]] = label
    return chosen


def figure(summary: pd.DataFrame, report_cfg):
    """Three panels, one line per variant (cheapest first): the full train-loss barrier (mean and interval over the
    pairs, the regime threshold dashed), the worst endpoint's error on its own training images (the fit threshold
    dashed), and the largest single-layer barrier (the paper's band dashed); premise met in colour, not met in grey,
    the chosen variant marked."""
    data = summary.sort_values("train_tflop_per_pair", ascending=False).reset_index(drop=True)
    fig, axes = plotting.panels(3, ncols=3, width=4.2, height=0.32 * len(data) + 1.6)
    labels = [
        f"{r.variant}{' ← ' + r.chosen if r.chosen else ''} ({r.train_tflop_per_pair:.2g} TFLOP"
        + (f", {r.diverged} of {r.n + r.diverged} diverged)" if r.diverged else ")")
        for r in data.itertuples()
    ]
    colour = [
        "tab:blue" if held and not diverged else "0.6" for held, diverged in zip(data.premise_holds, data.diverged)
    ]
    panels = [
        ("full_barrier", "full train-loss barrier (nats)", report_cfg.regime_barrier),
        ("worst_own_train_error", "worst endpoint: error on its own training images (%)", report_cfg.fit_train_error),
        ("max_single_layer_barrier", "largest |single-layer barrier| (nats)", report_cfg.single_layer_tolerance),
    ]
    for ax, (column, title, threshold) in zip(axes, panels):
        y = range(len(data))
        if f"{column}_low" in data:  # intervals of a few pairs can be very wide: drawn to the edge of the view
            values = data[column]
            span = (min(values.min(), threshold, 0) - 0.5, max(values.max(), threshold) + 0.5)
            ax.hlines(
                y,
                data[f"{column}_low"].clip(lower=span[0]),
                data[f"{column}_high"].clip(upper=span[1]),
                colors=colour,
                lw=2,
            )
            ax.set_xlim(*span)
        values = data[column]
        if column == "worst_own_train_error":  # errors far above the 2 % threshold: at the edge, value written
            edge = 10 * threshold
            for i, v in enumerate(values):
                if v > edge:
                    ax.annotate(f"{v:.0f} →", (edge, i), ha="right", va="center", fontsize=7)
            values = values.clip(upper=edge)
            ax.set_xlim(0, edge)
        ax.scatter(values, y, c=colour, zorder=3, s=18)
        ax.axvline(threshold, color="k", ls="--", lw=0.8)
        ax.set_title(title, fontsize=9)
        ax.set_yticks(list(y))
        ax.set_yticklabels(labels if ax is axes[0] else [], fontsize=7)
    axes[0].set_xlabel(
        f"mean and {100 * report_cfg.confidence:g} % interval over pairs; blue: premise met, no pair diverged",
        fontsize=8,
    )
    axes[1].set_xlabel("max over pairs and both endpoints")
    axes[2].set_xlabel("last checkpoint, alpha 0.5, both bases; mean and interval")
    fig.tight_layout()
    return fig


def run(
    params_file: str | Path = "params.yaml",
    workspace: str | Path = ".",
    threads: int | None = None,
    only: list[str] | None = None,
) -> pd.DataFrame:
    """Every variant (or those named in `only`) x repetition, skipping finished ones, then the combined table of
    every finished pair written to RESULT. `threads` overrides runtime.num_threads for the evaluation (1 when other
    jobs share the cores: a two-thread team whose second thread waits for a busy core runs many times slower)."""
    from llmc_utils.core import data
    from llmc_utils.core.io import save_table
    from llmc_utils.pipeline import stage

    st = stage.setup("setup_study", params_file, workspace)
    if threads:
        import torch

        torch.set_num_threads(threads)
    cfg, pair_cfg = cast(SetupStudyConfig, st.config), st.params["train_pairs"]  # the section of this stage
    barrier_cfg = st.params["layerwise_barriers"]
    barrier_cfg = barrier_cfg.model_copy(update=dict(alphas=[barrier_cfg.heatmap_alpha], epochs=None))
    unknown = sorted(set(only or []) - set(cfg.variants))
    if unknown:
        raise ValueError(f"unknown variants {unknown}; setup_study.variants has {list(cfg.variants)}")
    prepared = data.prepared_path(st.workspace)
    if not prepared.is_file():
        raise FileNotFoundError(f"{prepared} not found: run `dvc repro prepare_data` first")
    images = data.load_prepared(prepared)
    scratch = st.workspace / cfg.scratch
    jobs = [(name, r) for name in cfg.variants if not only or name in only for r in cfg.repetitions]
    for name, r in stage.progress(jobs, desc="setup study pairs"):
        done = scratch / name / f"row_repetition_{r}.csv"
        if not done.is_file():
            row = pair_row(
                name,
                r,
                cfg,
                pair_cfg,
                barrier_cfg,
                images,
                scratch / name,
                st.device,
                stage.progress,
                st.runtime.train_processes,
            )
            save_table(pd.DataFrame([row]), done)
    rows = [
        pd.read_csv(p, keep_default_na=False, na_values=[""])
        for name in cfg.variants
        for p in sorted((scratch / name).glob("row_repetition_*.csv"))
    ]
    table = pd.concat(rows, ignore_index=True)
    save_table(table, st.workspace / RESULT)
    return table


def load(workspace: str | Path = ".") -> pd.DataFrame:
    """The study table of `workspace`, else the one committed in this repository (a scratch workspace, such as the
    test suite's, has none of its own); a clear error when neither exists."""
    for path in (Path(workspace) / RESULT, Path(__file__).resolve().parents[2] / RESULT):
        if path.is_file():
            return pd.read_csv(path, keep_default_na=False, na_values=[""])
    raise FileNotFoundError(
        f"{Path(workspace) / RESULT} not found: run `python -m llmc_utils.pipeline.setup_study` (outside dvc repro)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--workspace", default=".")
    parser.add_argument("--threads", type=int, help="torch threads of the evaluation (default runtime.num_threads)")
    parser.add_argument("--only", nargs="+", metavar="VARIANT", help="train and evaluate only these variants")
    args = parser.parse_args(argv)
    table = run(args.params, args.workspace, args.threads, args.only)
    print(
        f"wrote {Path(args.workspace) / RESULT}: {len(table)} pairs, {int((table.status != STATUS_OK).sum())} diverged"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
