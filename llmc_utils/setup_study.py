"""Appendix study: how the Fig. 1 claims depend on the pair's setup (width, residual vs plain, training length).

Why it exists: with one small plain CNN the verdict of Fig. 1 flipped between pairs, so the default architecture is
chosen by a rule stated before any claim was measured (params.yaml, `train_pairs`: the paper's class of network, a
residual net without normalization, at the cost of the earlier plain CNN), and this study shows what the other
choices would have given. Each variant of `setup_study.variants` (arch, width) trains the pairs of
`setup_study.repetitions` with everything else exactly as `train_pairs` (data subset, seeds, optimizer, checkpoints),
and the three Fig. 1 claims (llmc_utils.barriers.CLAIMS, same report thresholds) are evaluated over those pairs at each
training length of `setup_study.lengths`. The learning rate is constant, so the checkpoint at epoch e IS a run of
e epochs: one run per pair gives every length.

It is not part of `dvc repro` (several times the 15-minute budget on 2 CPU cores):

    python -m llmc_utils.setup_study            # params.yaml; needs data/images.pt (dvc repro prepare_data)

Resumable: checkpoints go under `setup_study.scratch` (written atomically by the trainer, resumed on a rerun), each
finished pair writes its rows once, and a rerun skips finished pairs. The result, results/setup_study/fig1_by_setup.csv
(one row per variant, pair and length), is committed to git; the report stage turns it into per-variant intervals
and verdicts (results/report/setup_study_claims.csv) and draws them (figures/figA_setup_study.png). A pair whose
training diverges or ends at chance level is recorded as such (status column, message) and left out of the
intervals; it never reaches a barrier.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import Field, model_validator

from llmc_utils import plotting
from llmc_utils.config import PositiveInt, Section

RESULT = Path("results") / "setup_study" / "fig1_by_setup.csv"
STATUS_OK = "ok"


class Variant(Section):
    arch: Literal["cnn", "rescnn", "resnet18", "vgg11"]
    width: PositiveInt


class SetupStudyConfig(Section):
    variants: dict[str, Variant] = Field(default_factory=lambda: {
        "plain_w16": Variant(arch="cnn", width=16), "plain_w32": Variant(arch="cnn", width=32),
        "residual_w16": Variant(arch="rescnn", width=16), "residual_w32": Variant(arch="rescnn", width=32)},
        min_length=1)
    repetitions: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=3)  # pairs per variant (>= 3)
    lengths: list[PositiveInt] = Field(default_factory=lambda: [5, 10, 20, 30], min_length=1)  # epochs; checkpoints
    scratch: str = "build/setup_study"  # checkpoints and per-pair rows (not committed)

    @model_validator(mode="after")
    def _check(self):
        if len(set(self.repetitions)) != len(self.repetitions) or min(self.repetitions) < 0:
            raise ValueError(f"repetitions must be distinct non-negative indices, got {self.repetitions}")
        if sorted(set(self.lengths)) != list(self.lengths):
            raise ValueError(f"lengths must be strictly increasing, got {self.lengths}")
        return self


def check_lengths(cfg: SetupStudyConfig, pair_cfg) -> None:
    """Every length must be a checkpoint of train_pairs (the study reads the run at that checkpoint)."""
    missing = sorted(set(cfg.lengths) - set(pair_cfg.checkpoint_epochs))
    if missing:
        raise ValueError(f"setup_study.lengths {missing} are not in train_pairs.checkpoint_epochs "
                         f"{pair_cfg.checkpoint_epochs}")


def variant_pair_config(pair_cfg, variant: Variant):
    """train_pairs with the variant's architecture and width; everything else (data, seeds, optimizer, epochs,
    checkpoints) unchanged."""
    return pair_cfg.model_copy(update=dict(arch=variant.arch, width=variant.width))


def pair_rows(name: str, variant: Variant, repetition: int, cfg: SetupStudyConfig, pair_cfg, barrier_cfg, images,
              workspace: Path, device, progress, processes: int = 1) -> list[dict]:
    """Train one pair of one variant (resuming), then the Fig. 1 headline metrics at every study length."""
    from llmc_utils import barriers, pairs
    from llmc_utils.evaluation import LayerEvaluator
    from llmc_utils.trainer import TrainingDiverged, check_not_chance

    vcfg = variant_pair_config(pair_cfg, variant)
    base = dict(variant=name, arch=variant.arch, width=variant.width, seed=repetition)
    try:
        pairs.train_pair(vcfg, images, workspace, repetition, device, processes)
        splits = pairs.pair_splits(images, vcfg, barrier_cfg.train_subset, barrier_cfg.test_subset,
                                   barrier_cfg.subset_seed, device)
        evaluator = LayerEvaluator(pairs.pair_model(workspace, repetition), splits, barrier_cfg.eval_batch_size,
                                   device, barrier_cfg.cache_activations)
        epochs = [e for e in pairs.pair_checkpoints(workspace, repetition)
                  if barrier_cfg.claim_from_epoch <= e <= max(cfg.lengths)]
        table, _ = barriers.barrier_table(evaluator, lambda e: pairs.load_pair(workspace, e, repetition), epochs,
                                          barrier_cfg, progress=progress)
        rows = [dict(base, length=length, status=STATUS_OK, message="",
                     **barriers.headline_metrics(table[table.epoch <= length], barrier_cfg.heatmap_alpha,
                                                 barrier_cfg.claim_from_epoch)) for length in cfg.lengths]
        for member in ("A", "B"):  # the last checkpoint must have learned something
            check_not_chance(rows[-1][f"test_error_{member}_last"], len(images.classes),
                             f"setup study {name}: model {member} of pair {repetition}", max(cfg.lengths))
        return rows
    except TrainingDiverged as exc:  # recorded, never plotted as a barrier
        return [dict(base, length=length, status="diverged", message=str(exc)) for length in cfg.lengths]


def metrics_by_variant(table: pd.DataFrame) -> dict[tuple[str, int], dict]:
    """{(variant, length): {"layerwise_barriers": {seed: metrics}}}: the shape llmc_utils.claims reads, from the
    finished (status ok) pairs only."""
    out: dict[tuple[str, int], dict] = {}
    for row in table[table.status == STATUS_OK].to_dict("records"):
        out.setdefault((row["variant"], int(row["length"])), {"layerwise_barriers": {}})[
            "layerwise_barriers"][int(row["seed"])] = row
    return out


def claims_by_setup(table: pd.DataFrame, report_cfg) -> pd.DataFrame:
    """The Fig. 1 claims per variant and training length: n pairs, mean, interval, verdict (as the main table),
    and how many pairs of that variant diverged."""
    from llmc_utils.barriers import CLAIMS
    from llmc_utils.claims import evaluate

    diverged = table[table.status != STATUS_OK].groupby(["variant", "length"]).seed.nunique()
    rows = []
    for (name, length), metrics in metrics_by_variant(table).items():
        info = table[table.variant == name].iloc[0]
        for claim in CLAIMS:
            row = evaluate(claim, metrics, report_cfg, report_cfg.confidence)
            rows.append(dict(variant=name, arch=info.arch, width=int(info.width), length=length,
                             diverged=int(diverged.get((name, length), 0)), **row))
    return pd.DataFrame(rows)


def verdict_grid(claims: pd.DataFrame) -> pd.DataFrame:
    """Display layout: one row per variant and length, one column per claim, cells "mean [low, high] verdict"."""
    from llmc_utils.barriers import CLAIMS

    short = {c.statement: f"claim {i}" for i, c in enumerate(CLAIMS, 1)}
    cells = claims.assign(
        claim=claims.claim.map(short),
        cell=[f"{r.mean:.3f} [{r.low:.3f}, {r.high:.3f}] {r.verdict}" + (f" ({r.diverged} diverged)" if r.diverged
                                                                        else "") for r in claims.itertuples()])
    return cells.pivot(index=["variant", "length"], columns="claim", values="cell")


def figure(claims: pd.DataFrame, report_cfg):
    """One panel per Fig. 1 claim: each variant's mean and 95 % interval against training length, with the
    criterion's threshold; a point whose interval lies on the threshold's good side is a reproduced verdict."""
    from llmc_utils.barriers import CLAIMS

    fig, axes = plotting.panels(len(CLAIMS), width=4.6, height=3.6)
    variants = list(dict.fromkeys(claims.variant))
    offsets = {v: (i - (len(variants) - 1) / 2) * 0.35 for i, v in enumerate(variants)}
    for i, (ax, claim) in enumerate(zip(axes, CLAIMS), 1):
        sel = claims[claims.claim == claim.statement]
        for name in variants:
            v = sel[sel.variant == name].sort_values("length")
            x = v.length + offsets[name]
            lo, hi = (v["mean"] - v.low).clip(upper=1e3), (v.high - v["mean"]).clip(upper=1e3)
            ax.errorbar(x, v["mean"], yerr=[lo, hi], marker="o", ms=4, capsize=2, lw=1,
                        label=f"{name} (n={int(v.n.max())})")
        ax.axhline(claim.threshold_value(report_cfg), color="k", ls="--", lw=0.8, label="threshold")
        ax.set_xlabel("training length (epochs)")
        # the means and the threshold in view; intervals wider than that run off the axis (they are that wide)
        ax.set_ylim(min(-0.5, sel["mean"].min() - 0.3), max(1.0, sel["mean"].max() * 1.3 + 0.3))
        ax.set_title(textwrap.fill(f"({i}) {claim.statement}", 55)
                     + f"\nclaim value {claim.relation} threshold; mean, 95 % interval", fontsize=8)
        ax.set_ylabel(textwrap.fill(claim.quantity, 60), fontsize=6)
    axes[0].legend(fontsize=6)
    return fig


def run(params_file: str | Path = "params.yaml", workspace: str | Path = ".", threads: int | None = None
        ) -> pd.DataFrame:
    """Every variant x repetition (skipping finished ones), then the combined table written to RESULT. `threads`
    overrides runtime.num_threads for the evaluation (1 when other jobs share the cores: a two-thread team whose
    second thread waits for a busy core runs many times slower than one thread)."""
    from llmc_utils import data, stage
    from llmc_utils.config import get_section
    from llmc_utils.io import save_table

    st = stage.setup("setup_study", params_file, workspace)
    if threads:
        import torch

        torch.set_num_threads(threads)
    cfg, pair_cfg = st.config, get_section(st.params, "train_pairs")
    barrier_cfg = get_section(st.params, "layerwise_barriers")
    barrier_cfg = barrier_cfg.model_copy(update=dict(alphas=[barrier_cfg.heatmap_alpha], epochs=None))
    check_lengths(cfg, pair_cfg)
    prepared = data.prepared_path(st.workspace)
    if not prepared.is_file():
        raise FileNotFoundError(f"{prepared} not found: run `dvc repro prepare_data` first")
    images = data.load_prepared(prepared)
    scratch = st.workspace / cfg.scratch
    tables = []
    jobs = [(name, v, r) for name, v in cfg.variants.items() for r in cfg.repetitions]
    for name, variant, r in stage.progress(jobs, desc="setup study pairs"):
        done = scratch / name / f"rows_seed_{r}.csv"
        if not done.is_file():
            rows = pair_rows(name, variant, r, cfg, pair_cfg, barrier_cfg, images, scratch / name, st.device,
                             stage.progress, st.runtime.train_processes)
            save_table(pd.DataFrame(rows), done)
        tables.append(pd.read_csv(done, keep_default_na=False, na_values=[""]))
    table = pd.concat(tables, ignore_index=True)
    save_table(table, st.workspace / RESULT)
    return table


def load(workspace: str | Path = ".") -> pd.DataFrame:
    """The study table of `workspace`, else the one committed in this repository (a scratch workspace, such as the
    test suite's, has none of its own); a clear error when neither exists."""
    for path in (Path(workspace) / RESULT, Path(__file__).resolve().parent.parent / RESULT):
        if path.is_file():
            return pd.read_csv(path, keep_default_na=False, na_values=[""])
    raise FileNotFoundError(f"{Path(workspace) / RESULT} not found: run `python -m llmc_utils.setup_study` "
                            "(outside dvc repro)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--workspace", default=".")
    parser.add_argument("--threads", type=int, help="torch threads of the evaluation (default runtime.num_threads)")
    args = parser.parse_args(argv)
    table = run(args.params, args.workspace, args.threads)
    print(f"wrote {Path(args.workspace) / RESULT}: {len(table)} rows, "
          f"{int((table.status != STATUS_OK).sum())} rows of diverged pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
