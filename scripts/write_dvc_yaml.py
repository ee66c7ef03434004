"""Write dvc.yaml from the stage table below, with each stage's code dependencies computed from its notebook's
imports (transitively through llmc_utils), so the pipeline reruns exactly the stages an edit can change.

    python scripts/write_dvc_yaml.py        # rewrites dvc.yaml; tests/test_dvc_deps.py checks it stays complete

Repeated stages (one per repetition index) use DVC's `foreach` over a list in the `repetitions` section of
params.yaml; `${item}` is the repetition index r.

The first stage, check_params, validates the whole params.yaml (llmc_utils/check_params.py); every other stage
depends on its stamp, so a bad params file stops `dvc repro` before DVC deletes any stage's outputs.

Every checkpoint folder a stage trains into (`persist` in the table) is a `persist` output: DVC does not delete it
before rerunning the stage, so an interrupted `dvc repro` resumes training (llmc_utils.trainer), and checkpoints of
other params are moved to models/stale/ rather than mixed in.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SKIPPED = {"__init__", "_torchvision_compat"}

# name: (notebook, repetitions key or None, params sections, data/model deps, outs, metrics, extra options)
R = "${item}"
RUNTIME_PARAMS = ["runtime.num_threads", "runtime.device", "runtime.train_processes"]  # read by every stage
STAGES = {
    "prepare_data": ("00_data", None, ["data"], [], ["data/images.pt"], ["metrics/data.json"],
                     {"figures": ["data_samples"]}),
    "deep_linear": ("04_deep_linear", None, ["deep_linear"], [], ["results/deep_linear"], ["metrics/deep_linear.json"],
                    {"figures": ["fig3_minimal_example", "fig3_theorem_check", "fig3_random_minima"]}),
    "train_pairs": ("01_train_pairs", "train_pairs", ["train_pairs"], ["data/images.pt"],
                    [f"results/train_pairs/seed_{R}"], [f"metrics/train_pairs/seed_{R}.json"],
                    {"persist": [f"models/pair/seed_{R}"]}),
    "layerwise_barriers": ("02_layerwise_barriers", "train_pairs",
                           ["layerwise_barriers", "train_pairs.train_subset", "train_pairs.subset_seed"],
                           ["data/images.pt", f"models/pair/seed_{R}"],
                           [f"results/layerwise_barriers/seed_{R}"], [f"metrics/layerwise_barriers/seed_{R}.json"], {}),
    "cumulative_averaging": ("03_cumulative_averaging", "train_pairs",
                             ["cumulative_averaging", "train_pairs.train_subset", "train_pairs.subset_seed"],
                             ["data/images.pt", f"models/pair/seed_{R}"],
                             [f"results/cumulative_averaging/seed_{R}"], [f"metrics/cumulative_averaging/seed_{R}.json"],
                             {}),
    "robustness": ("05_robustness", "robustness", ["robustness", "train_pairs.train_subset", "train_pairs.subset_seed"],
                   ["data/images.pt", f"models/pair/seed_{R}"],
                   [f"results/robustness/seed_{R}"], [f"metrics/robustness/seed_{R}.json"],
                   {"persist": [f"models/robustness/seed_{R}"]}),
    "subspace_perturbations": ("06_subspace_perturbations", "subspace_perturbations", ["subspace_perturbations"],
                               ["data/images.pt"], [f"results/subspace_perturbations/seed_{R}"],
                               [f"metrics/subspace_perturbations/seed_{R}.json"],
                               {"persist": [f"models/subspace_perturbations/seed_{R}"]}),
    "federated": ("07_federated", "federated", ["federated", "report.partial_minus_full_points"], ["data/images.pt"], [f"results/federated/seed_{R}"],
                  [f"metrics/federated/seed_{R}.json"], {}),
    "alignment": ("09_alignment", None,
                  ["alignment", "layerwise_barriers", "cumulative_averaging", "train_pairs.train_subset",
                   "train_pairs.subset_seed", "train_pairs.scheme", "train_pairs.seed_a", "train_pairs.seed_b",
                   "repetitions.train_pairs"],
                  # every pair's checkpoints: A of pair r and B of the next form a cross pair (different inits)
                  ["data/images.pt", "models/pair"],
                  ["results/alignment", "metrics/alignment"], [],  # metrics/alignment/seed_<r>.json: one per pair
                  {"figures": ["fig8_alignment", "fig8_alignment_cumulative"]}),
    "bn_reset": ("10_bn_reset", None, ["bn_reset", "train_pairs"], ["data/images.pt"], ["results/bn_reset"],
                 ["metrics/bn_reset.json"], {"persist": ["models/bn_reset"], "figures": ["fig9_bn_reset"]}),
    "language_model": ("08_language_model", "language_model", ["language_model"], [],
                       [f"results/language_model/seed_{R}"], [f"metrics/language_model/seed_{R}.json"],
                       {"persist": [f"models/language_model/seed_{R}"]}),
}


def imported_modules(source: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("llmc_utils"):
            found |= {a.name for a in node.names} if node.module == "llmc_utils" else {node.module.split(".")[1]}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("llmc_utils.")}
    return {m for m in found if (ROOT / "llmc_utils" / f"{m}.py").is_file()}


def module_files(modules) -> list[str]:
    """The files of `modules` and of every llmc_utils module they import, transitively."""
    todo, seen = list(modules), set()
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += imported_modules((ROOT / "llmc_utils" / f"{module}.py").read_text())
    return [f"llmc_utils/{m}.py" for m in sorted(seen - SKIPPED)]


def code_deps(notebook: str) -> list[str]:
    cells = json.loads((ROOT / "notebooks" / f"{notebook}.ipynb").read_text())["cells"]
    source = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    return [f"notebooks/{notebook}.ipynb"] + module_files(imported_modules(source))


def papermill(notebook: str, repeated: bool) -> str:
    if repeated:
        out = f"reports/executed/{notebook}/seed_{R}.ipynb"
        return (f"mkdir -p reports/executed/{notebook} && papermill notebooks/{notebook}.ipynb {out} "
                f"-p params_file params.yaml -p workspace . -p seed {R} -p draw_figures False")
    return (f"mkdir -p reports/executed && papermill notebooks/{notebook}.ipynb reports/executed/{notebook}.ipynb "
            "-p params_file params.yaml -p workspace .")


def uncached(paths):
    """Small results, figures and the executed notebooks are committed to git (cache: false), so a clone without a DVC
    remote shows the real run; prepared data and model checkpoints stay in DVC's cache."""
    return [p if p.startswith("data/") else {p: {"cache": False}} for p in paths]


def figure_outs(stems):
    return uncached([f"figures/{s}.png" for s in stems])


def stage_entry(name, spec):
    notebook, reps, params, data_deps, outs, metrics, extra = spec
    executed = f"reports/executed/{notebook}/seed_{R}.ipynb" if reps else f"reports/executed/{notebook}.ipynb"
    body = {
        "cmd": papermill(notebook, bool(reps)),
        "deps": code_deps(notebook) + data_deps,
        "params": params + RUNTIME_PARAMS,
        "outs": ([{p: {"persist": True}} for p in extra.get("persist", [])]
                 + uncached([executed] + outs) + figure_outs(extra.get("figures", []))),
        "metrics": uncached(metrics),
    }
    return {"foreach": f"${{repetitions.{reps}}}", "do": body} if reps else body


# figures drawn from all repetitions by the aggregate stage (notebook 11)
AGGREGATE_FIGURES = ["fig1_layerwise_barriers", "fig1_layerwise_barriers_test_loss", "fig1_layerwise_barriers_train_error",
                     "fig1_layerwise_barriers_test_error", "fig_pair_training_curves", "fig_layer_geometry",
                     "fig2_cumulative_averaging", "fig2_cumulative_controls", "fig2_cumulative_last_checkpoint",
                     "fig4_robustness", "fig4_robustness_cnn", "fig5_subspace_perturbations", "fig6_federated_table", "fig6_federated_sweep", "fig6_federated_barriers", "fig7_language_model"]


def gather_stages(aggregate_figures: list[str]) -> dict:
    repeated = [n for n, s in STAGES.items() if s[1]]
    aggregate = {
        "cmd": papermill("11_aggregate", False),
        "deps": code_deps("11_aggregate") + [f"results/{n}" for n in repeated],
        # the sections whose settings the figures read (bases, alphas, schemes), beside the repetitions
        "params": ["repetitions"] + [n for n in repeated if n != "train_pairs"] + [
            "report.partial_minus_full_points", "report.tie_margin", *RUNTIME_PARAMS],
        "outs": uncached(["reports/executed/11_aggregate.ipynb", "results/aggregate"]) + figure_outs(aggregate_figures),
    }
    from llmc_utils.claims import CLAIM_MODULES
    from llmc_utils.report import FIGURES
    from llmc_utils.setup_study import RESULT as SETUP_STUDY_RESULT

    # the report judges the CLAIMS, PREMISES and SANITY_CHECKS of every stage module (claims.all_claims imports them
    # by name, which the notebook's imports do not show): a changed claim must rerun the report
    claim_code = module_files(name.split(".")[1] for name in CLAIM_MODULES)

    report = {
        "cmd": (papermill("12_report", False) + " && jupyter nbconvert --to html --no-input --log-level WARN "
                "--output-dir reports --output report reports/executed/12_report.ipynb"),
        "deps": (list(dict.fromkeys(code_deps("12_report") + claim_code)) + [f"metrics/{n}" for n in repeated]
                 + ["metrics/alignment"]
                 + [m for s in STAGES.values() if not s[1] for m in s[5]] + ["results/aggregate"]
                 + [f"figures/{stem}.png" for stem, _ in FIGURES]
                 # the appendix setup study runs outside dvc repro; its committed table is an input here
                 + [str(SETUP_STUDY_RESULT)]),
        "params": ["report", "repetitions", *RUNTIME_PARAMS],
        "outs": (uncached(["reports/executed/12_report.ipynb", "results/report", "reports/report.html",
                           "reports/results.md"])
                 + figure_outs(["figA_setup_study"])),
        "metrics": uncached(["metrics/report.json"]),
    }
    return {"aggregate": aggregate, "report": report}


CHECK_STAMP = "reports/executed/check_params.txt"  # = llmc_utils.check_params.STAMP


def check_stage() -> dict:
    """The check_params stage: reruns when params.yaml or any module defining a section changes; its
    stamp's content is constant while the file is valid."""
    from llmc_utils.config import SECTIONS

    modules = ["check_params"] + [target.split(":")[0].split(".")[1] for target in SECTIONS.values()]
    return {"cmd": f"python -m llmc_utils.check_params params.yaml --stamp {CHECK_STAMP}",
            "deps": ["params.yaml"] + module_files(modules),  # DVC refuses dvc.yaml
            # persist: DVC would delete the stamp before rerunning the check; kept, a failed check changes nothing
            "outs": [{CHECK_STAMP: {"cache": False, "persist": True}}]}


def after_check(stages: dict) -> dict:
    """check_params first, and every other stage depending on its stamp."""
    for entry in stages.values():
        entry.get("do", entry)["deps"].append(CHECK_STAMP)
    return {"check_params": check_stage(), **stages}


def plots(params: dict) -> list:
    """Top-level `plots:` for `dvc plots show/diff`: every figure as an image, and data series from small per-repetition
    CSVs (one line per repetition and column). The repetitions are read from params.yaml when this script runs: after
    changing a `repetitions` list, rerun it so the data plots list the new repetitions too."""
    from llmc_utils.report import FIGURES

    reps = params["repetitions"]["train_pairs"]
    alpha = params["layerwise_barriers"]["heatmap_alpha"]
    series = [
        {"fig1_full_vs_largest_single_layer": {
            "title": f"Fig. 1 per pair: full vs largest |single-layer| train-loss barrier (alpha {alpha}), per checkpoint",
            "x": "epoch", "x_label": "epoch", "y_label": "barrier (nats)",
            "y": {f"results/layerwise_barriers/seed_{r}/full_vs_single.csv": ["full", "largest_single"] for r in reps}}},
        {"pair_test_error": {
            "title": "Training pairs: test error of A and B per checkpoint",
            "x": "epoch", "x_label": "epoch", "y_label": "test error (%)",
            "y": {f"results/train_pairs/seed_{r}/test_error.csv": ["A", "B"] for r in reps}}},
    ]
    return [f"figures/{stem}.png" for stem, _ in FIGURES] + ["figures/figA_setup_study.png"] + series


if __name__ == "__main__":
    stages = {name: stage_entry(name, spec) for name, spec in STAGES.items()}
    stages.update(gather_stages(AGGREGATE_FIGURES))
    stages = after_check(stages)
    header = ("# Written by scripts/write_dvc_yaml.py (code deps computed from each notebook's imports); edit the table\n"
              "# there and rerun it. `dvc repro` regenerates every figure of the default profile; repeated stages run\n"
              "# once per index of the `repetitions` section of params.yaml (stage@index).\n")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    (ROOT / "dvc.yaml").write_text(header + yaml.safe_dump({"stages": stages, "plots": plots(params)}, sort_keys=False,
                                                           width=120))
    print(f"wrote dvc.yaml: {len(stages)} stages")
