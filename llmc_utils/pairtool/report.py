"""Outputs of `llmc barriers` (llmc_utils.pairtool.models): the tables, the two figures, summary.json and the report.

Why separate: the analysis returns tidy tables; this module turns them into the files a reader opens, all written
atomically (io.save_table / save_json / save_text, plotting.save). The figures use the pipeline's one plotting helper
(llmc_utils.core.plotting): a Fig. 1-style heatmap per variant and base (rows "full" then every logical layer of the
table, columns the alphas) and the Fig. 2-style cumulative curves (barrier against the number j of averaged layers,
one line per order). The report is built as a list of blocks rendered twice, to Markdown and to HTML, so the two
always say the same thing without a Markdown converter. A barrier that is not finite (the endpoints' loss overflowed)
is shown as such, and the report says how many there are instead of ranking them.

The output folder: a marker file (MARKER) lists the files a run wrote there. `out_problem` (checked before any
compute) refuses a non-empty folder without one unless forced, and any file to be written or replaced that git or DVC
tracks, forced or not; a rerun into the same folder removes the files of the earlier run that it does not write again
(cumulative.* when the orders are dropped), so the folder and the report's list of files always agree.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import html
import json
import math
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from llmc_utils.core import plotting
from llmc_utils.core.evaluation import FULL
from llmc_utils.core.io import save_json, save_table, save_text

TOP = 5  # layers listed per variant in the report
MARKER = ".llmc_barriers.json"  # in --out: the files an llmc barriers run wrote there


def _alpha(alphas) -> float:
    """The alpha the report reads: 0.5 (the paper's midpoint) when computed, else the nearest one."""
    return min(alphas, key=lambda a: (abs(a - 0.5), a))


def _finite(value) -> float | None:
    """A number of summary.json: the float, or None (JSON null) when it is NaN or infinite."""
    value = float(value)
    return value if math.isfinite(value) else None


def summarise(barriers: pd.DataFrame, info: dict, opts, selected: list[str]) -> dict:
    """The numbers of the report, as a JSON-able dict: endpoints, full barrier and the largest single-layer barriers
    per variant (loss on the report split, "train" when present, at the report alpha). Values that are not finite
    become None, and `non_finite_barriers` counts them."""
    alpha = _alpha(barriers.alpha.unique())
    splits = list(dict.fromkeys(barriers.split))
    split = "train" if "train" in splits else splits[0]
    at = barriers[barriers.alpha == alpha]
    ends = at[(at.variant == "plain") & (at.layer_set == FULL)].drop_duplicates(["split", "metric"])
    out: dict[str, Any] = dict(
        inputs=info.copy(),
        report_alpha=float(alpha),
        report_split=split,
        layers=selected,
        options={k: v for k, v in dataclasses.asdict(opts).items() if k != "progress"},
        variants=list(dict.fromkeys(barriers.variant)),
        endpoints={
            s: {
                m: {"A": _finite(g.value_a.iloc[0]), "B": _finite(g.value_b.iloc[0])}
                for m, g in ends[ends.split == s].groupby("metric", sort=False)
            }
            for s in splits
        },
        full_barrier={},
        full_barrier_max_over_alpha={},
        top_layers={},
        non_finite_barriers=int((~barriers.barrier.map(math.isfinite)).sum()),
        n_barriers=len(barriers),
    )
    out["inputs"].pop("alignment", None)
    out["alignment"] = info.get("alignment")
    for variant, rows in barriers.groupby("variant", sort=False):
        full = rows[(rows.layer_set == FULL) & (rows.base == rows.base.iloc[0])]
        out["full_barrier"][variant] = {
            s: {
                m: _finite(g[g.alpha == alpha].barrier.iloc[0])
                for m, g in full[full.split == s].groupby("metric", sort=False)
            }
            for s in splits
        }
        loss = full[(full.split == split) & (full.metric == "loss") & full.barrier.map(math.isfinite)]
        if ((loss.alpha > 0) & (loss.alpha < 1)).any():  # at 0 and 1 the plain barrier is 0 by definition
            loss = loss[(loss.alpha > 0) & (loss.alpha < 1)]
        out["full_barrier_max_over_alpha"][variant] = (
            dict(barrier=float(loss.barrier.max()), alpha=float(loss.loc[loss.barrier.idxmax(), "alpha"]))
            if len(loss)
            else dict(barrier=None, alpha=None)
        )
        single = rows[
            (rows.layer_set != FULL) & (rows.alpha == alpha) & (rows.split == split) & (rows.metric == "loss")
        ].sort_values("barrier", ascending=False)  # not finite: last
        worst = single.drop_duplicates("layer_set").head(TOP)
        out["top_layers"][variant] = [
            dict(layer=r.layer_set, base=r.base, barrier=_finite(r.barrier)) for r in worst.itertuples()
        ]
    return out


# ----------------------------------------------------------------------------------------------------------- figures
def heatmap_figure(barriers: pd.DataFrame, split: str, metric: str = "loss"):
    """Fig. 1 for one pair: per variant and base a heatmap of the barrier, rows "full" then every layer of the table,
    columns the alphas."""
    variants, bases = list(dict.fromkeys(barriers.variant)), list(dict.fromkeys(barriers.base))
    rows, alphas = list(dict.fromkeys(barriers.layer_set)), sorted(barriers.alpha.unique())
    fig, axes = plotting.panels(
        len(variants) * len(bases), ncols=len(bases), width=0.8 * len(alphas) + 3.6, height=0.28 * len(rows) + 1.5
    )
    sel = barriers[(barriers.split == split) & (barriers.metric == metric)]
    tables = {}
    for variant, base in [(v, b) for v in variants for b in bases]:
        wide = (
            sel[(sel.variant == variant) & (sel.base == base)]
            .pivot(index="layer_set", columns="alpha", values="barrier")
            .loc[rows, alphas]
        )
        wide.columns = [f"{a:g}" for a in alphas]
        tables[f"{variant}, into {base}"] = wide
    plotting.barrier_heatmaps(
        axes, tables, f"{split} {metric} barrier", "alpha (weight of B)", "averaged layers", annot=len(rows) <= 60
    )
    return fig


def cumulative_figure(table: pd.DataFrame, split: str, metric: str = "loss"):
    """Fig. 2 for one pair: barrier against the number j of averaged layers, one line per order, per variant and
    base."""
    variants, bases = list(dict.fromkeys(table.variant)), list(dict.fromkeys(table.base))
    fig, axes = plotting.panels(len(variants) * len(bases), ncols=len(bases), width=5.5, height=3.8)
    for ax, (variant, base) in zip(axes, [(v, b) for v in variants for b in bases]):
        sel = table[
            (table.variant == variant) & (table.base == base) & (table.split == split) & (table.metric == metric)
        ]
        plotting.curves(ax, sel, x="j", y="barrier", hue="order", errorbar=None, title=f"{variant}, into {base}")
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_xlabel("layers averaged j (alpha 0.5)")
        ax.set_ylabel(f"{split} {metric} barrier")
    return fig


def _save(fig, stem: Path) -> Path:
    import matplotlib.pyplot as plt

    path = plotting.save(fig, stem, show=False)[0]
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------------------ report
def _num(v) -> str:
    return "not finite" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def non_finite_note(s: dict) -> str | None:
    """One sentence on barriers that are not finite, for the log and the report; None when every one is finite."""
    bad, total = s["non_finite_barriers"], s["n_barriers"]
    if not bad:
        return None
    which = "Every barrier" if bad == total else f"{bad} of the {total} barriers"
    return (
        f"{which} of this pair {'is' if bad == total else 'are'} NaN or infinite: the loss of A, B or an "
        "interpolated model is not finite on this data (logits that overflow?); such values read 'not finite' "
        "below and in summary.json (null), and barriers.csv holds them as NaN or inf"
    )


def report_blocks(s: dict, files: list[str]) -> list[tuple]:
    """The report as blocks: ("h1"|"h2"|"p", text), ("ul", [items]), ("table", header, rows), ("img", file)."""
    i, alpha, split = s["inputs"], s["report_alpha"], s["report_split"]
    blocks: list[tuple] = [
        ("h1", "Layer-wise barriers of a pair"),
        ("h2", "What was compared"),
        (
            "ul",
            [
                f"model: `{i['model']}` ({i['n_parameters']:,} parameters, {i['n_layers']} logical layers, "
                f"{'with' if i['batchnorm'] else 'no'} BatchNorm)",
                f"A: `{i['checkpoint_a']}`",
                f"B: `{i['checkpoint_b']}`",
                f"data: {i['data']}",
                f"alphas {', '.join(f'{a:g}' for a in s['options']['alphas'])}; "
                f"bases {', '.join(s['options']['bases'])}; variants {', '.join(s['variants'])}; "
                f"device {i['device']}; activation caching {i.get('activation_caching', 'unknown')}",
                "barrier = value - [(1 - alpha) value(A) + alpha value(B)], against the two full models "
                f"(docs/method.md); the report reads the {split} loss at alpha {alpha:g}",
            ],
        ),
    ]
    if s.get("alignment"):
        a = s["alignment"]
        blocks.append(
            (
                "p",
                f"Alignment (weight matching): {a['sweeps']} sweeps, objective {a['objective_before']:.4g}"
                f" -> {a['objective_after']:.4g}, max |logit(B) - logit(aligned B)| = "
                f"{a['max_logit_difference']:.2g}.",
            )
        )
    if non_finite_note(s):
        blocks.append(("p", f"**Warning.** {non_finite_note(s)}."))
    blocks += [
        ("h2", "Endpoints"),
        (
            "table",
            ["split", "metric", "A", "B"],
            [[sp, m, _num(v["A"]), _num(v["B"])] for sp, by in s["endpoints"].items() for m, v in by.items()],
        ),
    ]
    blocks += [
        ("h2", f"Full barrier (all layers interpolated, alpha {alpha:g})"),
        (
            "table",
            ["variant", "split", "metric", "barrier"],
            [
                [var, sp, m, _num(v)]
                for var, by in s["full_barrier"].items()
                for sp, ms in by.items()
                for m, v in ms.items()
            ],
        ),
        (
            "p",
            f"Largest full {split} loss barrier over the alphas (inside (0, 1) when any): "
            + "; ".join(
                f"{var} {_num(v['barrier'])} at alpha {v['alpha']:g}"
                if v["alpha"] is not None
                else f"{var} not finite at every alpha"
                for var, v in s["full_barrier_max_over_alpha"].items()
            )
            + ".",
        ),
    ]
    blocks.append(
        ("h2", f"The {TOP} layers with the largest single-layer barriers ({split} loss, alpha {alpha:g}, larger base)")
    )
    for var, top in s["top_layers"].items():
        blocks += [
            ("p", f"**{var}**"),
            (
                "table",
                ["rank", "layer", "base", "barrier"],
                [[str(k + 1), t["layer"], t["base"], _num(t["barrier"])] for k, t in enumerate(top)],
            ),
        ]
    blocks += [("h2", "Figures")] + [("img", f) for f in files if f.endswith(".png")]
    blocks += [("h2", "Files"), ("ul", [f"`{f}`" for f in files])]
    return blocks


def to_markdown(blocks: list[tuple]) -> str:
    out = []
    for kind, *body in blocks:
        if kind in ("h1", "h2"):
            out.append(("# " if kind == "h1" else "## ") + body[0])
        elif kind == "p":
            out.append(body[0])
        elif kind == "ul":
            out.append("\n".join(f"- {item}" for item in body[0]))
        elif kind == "table":
            header, rows = body
            out.append("\n".join("| " + " | ".join(r) + " |" for r in [header, ["---"] * len(header), *rows]))
        elif kind == "img":
            out.append(f"![{body[0]}]({body[0]})")
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    """Markdown's `code` and **bold** of the report's own text as HTML (the rest escaped)."""
    parts = html.escape(text).split("`")
    text = "".join(f"<code>{p}</code>" if k % 2 else p for k, p in enumerate(parts))
    parts = text.split("**")
    return "".join(f"<strong>{p}</strong>" if k % 2 else p for k, p in enumerate(parts))


def to_html(blocks: list[tuple], title: str = "Layer-wise barriers") -> str:
    out = [
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}img{max-width:100%}</style></head><body>"
    ]
    for kind, *body in blocks:
        if kind in ("h1", "h2", "p"):
            out.append(f"<{kind}>{_inline(body[0])}</{kind}>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in body[0]) + "</ul>")
        elif kind == "table":
            header, rows = body
            out.append(
                "<table><tr>"
                + "".join(f"<th>{html.escape(h)}</th>" for h in header)
                + "</tr>"
                + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
                + "</table>"
            )
        elif kind == "img":
            out.append(f"<p><img src='{html.escape(body[0])}' alt='{html.escape(body[0])}'></p>")
    return "\n".join(out) + "\n</body></html>\n"


def output_names(cumulative: bool) -> list[str]:
    """The files write_outputs writes (besides the marker), in the order the report lists them."""
    return [
        "barriers.csv",
        *(["cumulative.csv"] if cumulative else []),
        "heatmap.png",
        *(["cumulative.png"] if cumulative else []),
        "summary.json",
        "report.md",
        "report.html",
    ]


def earlier_outputs(out: Path) -> list[str] | None:
    """The files that the marker in `out` says an earlier run wrote there; None without a readable marker."""
    try:
        names = json.loads((out / MARKER).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    # only plain names of files in the folder itself: a marker must never make a rerun delete anything else
    return (
        [n for n in names if isinstance(n, str) and n not in ("", ".", "..") and n == Path(n).name]
        if isinstance(names, list)
        else None
    )


def _absolute(path: Path) -> Path:
    """The path with its folder resolved, not the file: writing replaces a symlink, never what it points to."""
    return path.parent.resolve() / path.name


def _git_tracked(folder: Path, paths: list[Path]) -> set[Path]:
    """The `paths` (under `folder`) that git tracks in the work tree holding `folder`; none outside a work tree."""
    if shutil.which("git") is None:
        return set()
    listed = subprocess.run(
        ["git", "-C", str(folder), "ls-files", "-z", "--", *(str(_absolute(p)) for p in paths)],
        capture_output=True,
        text=True,
    )
    if listed.returncode:  # not a git work tree (or git refuses it): nothing is tracked
        return set()
    found = {_absolute(folder / name) for name in listed.stdout.split("\0") if name}
    return {p for p in paths if _absolute(p) in found}


def _dvc_outputs(root: Path) -> list[str]:
    """Patterns (relative to the DVC root; `${...}` of foreach stages as *) of the outputs, metrics and plots that
    root/dvc.yaml declares and root/dvc.lock records."""
    patterns = []
    for name in ("dvc.yaml", "dvc.lock"):
        try:
            stages = (yaml.safe_load((root / name).read_text()) or {}).get("stages") or {}
        except (OSError, yaml.YAMLError, AttributeError):
            continue
        for stage in stages.values():
            body = stage.get("do", stage) if isinstance(stage, dict) else {}
            for entry in [e for kind in ("outs", "metrics", "plots") for e in body.get(kind) or []]:
                path = entry.get("path", next(iter(entry), "")) if isinstance(entry, dict) else entry
                patterns.append(re.sub(r"\$\{[^}]*\}", "*", str(path)).rstrip("/"))
    return [p for p in patterns if p]


def _dvc_tracked(folder: Path, paths: list[Path]) -> dict[Path, str]:
    """{path: what tracks it} for the `paths` that the DVC repository holding `folder` tracks: an output (or a file
    inside an output folder) of its dvc.yaml / dvc.lock, or a file (or folder) with a .dvc file beside it."""
    folder = folder.resolve()  # paths are compared resolved: a symlink on the way must not hide the project
    root = next((p for p in (folder, *folder.parents) if (p / ".dvc").is_dir()), None)
    if root is None:
        return {}
    patterns, found = _dvc_outputs(root), {}
    for path in paths:
        rel = _absolute(path).relative_to(root)
        if any(
            fnmatch.fnmatchcase(rel.as_posix(), p) or fnmatch.fnmatchcase(rel.as_posix(), f"{p}/*") for p in patterns
        ):
            found[path] = f"an output of the DVC pipeline in {root} (dvc.yaml / dvc.lock)"
        for above in (rel, *rel.parents[:-1]):  # the file, then each folder above it up to the root
            if (root / above).with_name(above.name + ".dvc").is_file():
                found[path] = f"tracked by DVC ({above}.dvc)"
    return found


def out_problem(out: Path, cumulative: bool, force: bool) -> str | None:
    """Why `llmc barriers` must not write into `out` (None: it may): a file to be written or replaced that git or
    DVC tracks (even with `force`: tracked files belong to a repository, and a report written over them is a change
    nobody asked for), or a non-empty folder that holds no earlier run's marker (unless `force`)."""
    earlier = earlier_outputs(out) if out.is_dir() else None
    folder = next(p for p in (out, *out.parents) if p.exists())
    touched = [out / n for n in dict.fromkeys([*output_names(cumulative), *(earlier or []), MARKER])]
    git, dvc = _git_tracked(folder, touched), _dvc_tracked(folder, touched)
    tracked = next((p for p in touched if p in git or p in dvc), None)
    if tracked is not None:
        why = " and ".join((["tracked by git"] if tracked in git else []) + ([dvc[tracked]] if tracked in dvc else []))
        return (
            f"--out {out}: {tracked} is {why}; llmc barriers never writes over tracked files, not even with "
            "--force: choose a folder outside the repository's tracked outputs"
        )
    present = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if present and earlier is None and not force:
        shown = ", ".join(present[:5]) + (f" (+{len(present) - 5} more)" if len(present) > 5 else "")
        return (
            f"--out {out} holds files that llmc barriers did not write ({shown}; no {MARKER}); choose a new or "
            "empty folder, or add --force to write beside them (files of the same name are replaced)"
        )
    return None


def write_outputs(out: Path, barriers: pd.DataFrame, cumulative: pd.DataFrame | None, summary: dict) -> list[Path]:
    """Every output file in `out`, each written atomically, and the marker; the earlier run's files that this run
    does not write are removed. Returns the paths (the marker aside)."""
    names = output_names(cumulative is not None)
    earlier = earlier_outputs(out) or []
    # while this run writes, the marker lists the earlier run's files too: interrupted, it leaves none unlisted
    save_json({"files": list(dict.fromkeys([*earlier, *names]))}, out / MARKER)
    split = summary["report_split"]
    save_table(barriers, out / "barriers.csv")
    if cumulative is not None:
        save_table(cumulative, out / "cumulative.csv")
    _save(heatmap_figure(barriers, split), out / "heatmap")
    if cumulative is not None:
        _save(cumulative_figure(cumulative, split), out / "cumulative")
    save_json(summary, out / "summary.json")
    blocks = report_blocks(summary, names)
    save_text(to_markdown(blocks), out / "report.md")
    save_text(to_html(blocks), out / "report.html")
    for name in set(earlier) - set(names):
        if (out / name).is_file():
            (out / name).unlink()
    save_json({"files": names}, out / MARKER)
    return [out / name for name in names]
