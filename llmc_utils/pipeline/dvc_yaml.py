"""dvc.yaml, derived from the stage registry: one entry per StageSpec, its code dependencies computed from its
notebook's imports (transitively through llmc_utils), so the pipeline reruns exactly the stages an edit can change.

    python scripts/write_dvc_yaml.py           # rewrites dvc.yaml
    python scripts/write_dvc_yaml.py --check   # exit 1 if dvc.yaml is not what the specs give (a test runs it)

Repeated stages use DVC's `foreach` over a list of the `repetitions` section; `${item}` is the repetition index r.
Params dependencies are the spec's own section plus its declared `reads` (runtime keys included), so changing a key
reruns exactly the stages that read it.

The first stage, check_params, validates the whole params.yaml (llmc_utils.pipeline.check_params); every other stage
depends on its stamp, so a bad params file stops `dvc repro` before DVC deletes any stage's outputs.

Every checkpoint folder a stage trains into (`persist` of its spec) is a `persist` output: DVC does not delete it
before rerunning the stage, so an interrupted `dvc repro` resumes training (llmc_utils.core.trainer), and checkpoints
of other params are moved to models/stale/ rather than mixed in.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import yaml

from llmc_utils.pipeline import registry
from llmc_utils.pipeline.check_params import STAMP
from llmc_utils.pipeline.setup_study import RESULT as SETUP_STUDY_RESULT
from llmc_utils.stages.spec import REPETITION, StageSpec

ROOT = Path(__file__).resolve().parents[2]
R = "${item}"
# import plumbing, not logic: the torchvision shim every import of llmc_utils runs (package __init__ files, which
# hold docstrings, are skipped too)
SKIPPED = {"llmc_utils/_torchvision_compat.py"}
# A stage's setup validates the whole params file, so it reaches every section's model through the registry; what
# that validation reads is check_params' dependency, not the stage's: the closure stops at the registry (its own file
# stays a dependency). The aggregate and report stages, which do call into other stages, name them explicitly.
BOUNDARY = {"llmc_utils.pipeline.registry"}
HEADER = (
    "# Written by scripts/write_dvc_yaml.py from the StageSpec of every stage (llmc_utils/stages/); edit a spec\n"
    "# and rerun it. `dvc repro` regenerates every figure of the default profile; repeated stages run once per\n"
    "# index of the `repetitions` section of params.yaml (stage@index).\n"
)


def module_path(dotted: str) -> str | None:
    """The file of module `dotted` (a llmc_utils module or package), relative to the repository; None if absent."""
    base = ROOT.joinpath(*dotted.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return str(path.relative_to(ROOT))
    return None


def imported_modules(source: str) -> set[str]:
    """The llmc_utils modules `source` imports: `import llmc_utils.a.b`, `from llmc_utils.a import b` (b a module
    or a name in a), `from llmc_utils.a.b import name`."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "llmc_utils":
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if module_path(child) else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "llmc_utils"}
    return {m for m in found if module_path(m)}


def _file_of(module: str) -> str:
    path = module_path(module)
    if path is None:
        raise FileNotFoundError(f"module {module} has no file in {ROOT}")
    return path


def module_files(modules) -> list[str]:
    """The files of `modules` and of every llmc_utils module they import, transitively (SKIPPED left out)."""
    todo, seen = list(modules), set()
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            if module not in BOUNDARY:
                todo += imported_modules((ROOT / _file_of(module)).read_text())
    return sorted(p for p in {_file_of(m) for m in seen} - SKIPPED if not p.endswith("__init__.py"))


def notebook_imports(notebook: str) -> set[str]:
    cells = json.loads((ROOT / "notebooks" / f"{notebook}.ipynb").read_text())["cells"]
    return imported_modules("\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code"))


def code_deps(notebook: str, extra_modules=()) -> list[str]:
    return [f"notebooks/{notebook}.ipynb"] + module_files([*notebook_imports(notebook), *extra_modules])


def stage_module(spec: StageSpec) -> str:
    return f"llmc_utils.stages.{spec.name}"


def with_item(paths) -> list[str]:
    return [p.replace(REPETITION, R) for p in paths]


def uncached(paths):
    """Small results, figures and the executed notebooks are committed to git (cache: false), so a clone without a DVC
    remote shows the real run; prepared data and model checkpoints stay in DVC's cache."""
    return [p if p.startswith("data/") else {p: {"cache": False}} for p in paths]


def papermill(spec: StageSpec) -> str:
    nb = spec.notebook
    if spec.repeated:
        return (
            f"mkdir -p reports/executed/{nb} && papermill --engine llmc notebooks/{nb}.ipynb "
            f"reports/executed/{nb}/repetition_{R}.ipynb -p params_file params.yaml -p workspace . "
            f"-p repetition {R} -p draw_figures False"
        )
    return (
        f"mkdir -p reports/executed && papermill --engine llmc notebooks/{nb}.ipynb reports/executed/{nb}.ipynb "
        "-p params_file params.yaml -p workspace ."
    )


def executed(spec: StageSpec) -> str:
    return (
        f"reports/executed/{spec.notebook}/repetition_{R}.ipynb"
        if spec.repeated
        else f"reports/executed/{spec.notebook}.ipynb"
    )


def entry(spec: StageSpec, deps: list[str]) -> dict:
    body = {
        "cmd": papermill(spec),
        "deps": list(dict.fromkeys(deps + with_item(spec.inputs) + [str(STAMP)])),
        # its own section (unless it has no keys, as aggregate) and what it declares it reads
        "params": list(dict.fromkeys([spec.section] * bool(spec.config.model_fields) + list(spec.reads))),
        "outs": (
            [{p: {"persist": True}} for p in with_item(spec.persist)]
            + uncached([executed(spec), *with_item(spec.output_paths())])
            + uncached([f"figures/{stem}.png" for stem in spec.figure_stems()])
        ),
    }
    if metrics := with_item(spec.metrics_paths()):
        body["metrics"] = uncached(metrics)
    return {"foreach": f"${{repetitions.{spec.repeats_over}}}", "do": body} if spec.repeated else body


def metrics_of(spec: StageSpec) -> list[str]:
    """What the report reads of a stage: its metrics folder (repeated) or files, and metrics folders among its outs."""
    own = [f"metrics/{spec.section}"] if spec.repeated else list(spec.metrics_paths())
    return own + [p for p in spec.output_paths() if p.startswith("metrics/")]


def check_stage() -> dict:
    """check_params: reruns when params.yaml or any module defining a section changes; its stamp's content is
    constant while the file is valid."""
    modules = [
        "llmc_utils.pipeline.check_params",
        "llmc_utils.pipeline.aggregate",
        "llmc_utils.pipeline.report",
        "llmc_utils.pipeline.setup_study",
        *(stage_module(s) for s in registry.stage_specs()),
    ]
    return {
        "cmd": f"python -m llmc_utils.pipeline.check_params params.yaml --stamp {STAMP}",
        "deps": ["params.yaml"] + module_files(modules),  # DVC refuses dvc.yaml as a dependency
        # persist: DVC would delete the stamp before rerunning the check; kept, a failed check changes nothing
        "outs": [{str(STAMP): {"cache": False, "persist": True}}],
    }


def stages() -> dict:
    specs = registry.stage_specs()
    out = {"check_params": check_stage()}
    out.update({s.name: entry(s, code_deps(s.notebook)) for s in specs})
    aggregate, report = registry.spec("aggregate"), registry.spec("report")
    # the aggregate stage calls every repeated stage's `aggregate` (found through the registry, which its notebook's
    # imports do not show); the report judges every stage's claims
    drawn = [stage_module(s) for s in specs if s.aggregate is not None]
    out["aggregate"] = entry(aggregate, code_deps(aggregate.notebook, drawn))
    report_entry = entry(report, code_deps(report.notebook, [stage_module(s) for s in specs]))
    report_entry["cmd"] += (
        " && jupyter nbconvert --to html --no-input --log-level WARN --output-dir reports "
        "--output report reports/executed/12_report.ipynb"
    )
    report_entry["deps"] += (
        [m for s in specs for m in metrics_of(s)]
        + ["results/aggregate"]
        + [f"figures/{f.stem}.png" for f in registry.report_figures()]
        # the appendix setup study runs outside dvc repro; its committed table is an input
        + [str(SETUP_STUDY_RESULT)]
    )
    out["report"] = report_entry
    return out


def plots(params: dict) -> list:
    """Top-level `plots:` for `dvc plots show/diff`: every figure as an image, and data series from small per-repetition
    CSVs (one line per repetition and column). The repetitions are read from params.yaml when this runs: after
    changing a `repetitions` list, rerun it so the data plots list the new repetitions too."""
    reps = params["repetitions"]["train_pairs"]
    alpha = params["layerwise_barriers"]["heatmap_alpha"]
    series = [
        {
            "fig1_full_vs_largest_single_layer": {
                "title": f"Fig. 1 per pair: full vs largest |single-layer| train-loss barrier (alpha {alpha}), "
                "per checkpoint",
                "x": "epoch",
                "x_label": "epoch",
                "y_label": "barrier (nats)",
                "y": {
                    f"results/layerwise_barriers/repetition_{r}/full_vs_single.csv": ["full", "largest_single"]
                    for r in reps
                },
            }
        },
        {
            "pair_test_error": {
                "title": "Training pairs: test error of A and B per checkpoint",
                "x": "epoch",
                "x_label": "epoch",
                "y_label": "test error (%)",
                "y": {f"results/train_pairs/repetition_{r}/test_error.csv": ["A", "B"] for r in reps},
            }
        },
    ]
    figures = [f.stem for f in registry.report_figures()] + [f.stem for f in registry.spec("report").figures]
    return [f"figures/{stem}.png" for stem in figures] + series


def render() -> str:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    return HEADER + yaml.safe_dump({"stages": stages(), "plots": plots(params)}, sort_keys=False, width=120)
