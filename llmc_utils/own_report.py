"""Outputs of `llmc barriers` (llmc_utils.own_models): the tables, the two figures, summary.json and the report.

Why separate: the analysis returns tidy tables; this module turns them into the files a reader opens, all written
atomically (io.save_table / save_json / save_text, plotting.save). The figures use the pipeline's one plotting helper
(llmc_utils.plotting): a Fig. 1-style heatmap per variant and base (rows "full" then every logical layer of the
table, columns the alphas) and the Fig. 2-style cumulative curves (barrier against the number j of averaged layers,
one line per order). The report is built as a list of blocks rendered twice, to Markdown and to HTML, so the two
always say the same thing without a Markdown converter.
"""

from __future__ import annotations

import dataclasses
import html
from pathlib import Path

import pandas as pd

from llmc_utils import plotting
from llmc_utils.evaluation import FULL
from llmc_utils.io import save_json, save_table, save_text

TOP = 5  # layers listed per variant in the report


def _alpha(alphas) -> float:
    """The alpha the report reads: 0.5 (the paper's midpoint) when computed, else the nearest one."""
    return min(alphas, key=lambda a: (abs(a - 0.5), a))


def summarise(barriers: pd.DataFrame, info: dict, opts, selected: list[str]) -> dict:
    """The numbers of the report, as a JSON-able dict: endpoints, full barrier and the largest single-layer barriers
    per variant (loss on the report split, "train" when present, at the report alpha)."""
    alpha = _alpha(barriers.alpha.unique())
    splits = list(dict.fromkeys(barriers.split))
    split = "train" if "train" in splits else splits[0]
    at = barriers[barriers.alpha == alpha]
    ends = at[(at.variant == "plain") & (at.layer_set == FULL)].drop_duplicates(["split", "metric"])
    out = dict(inputs=info.copy(), report_alpha=float(alpha), report_split=split, layers=selected,
               options={k: v for k, v in dataclasses.asdict(opts).items() if k != "progress"},
               variants=list(dict.fromkeys(barriers.variant)),
               endpoints={s: {m: {"A": float(g.value_a.iloc[0]), "B": float(g.value_b.iloc[0])}
                              for m, g in ends[ends.split == s].groupby("metric", sort=False)} for s in splits},
               full_barrier={}, full_barrier_max_over_alpha={}, top_layers={})
    out["inputs"].pop("alignment", None)
    out["alignment"] = info.get("alignment")
    for variant, rows in barriers.groupby("variant", sort=False):
        full = rows[(rows.layer_set == FULL) & (rows.base == rows.base.iloc[0])]
        out["full_barrier"][variant] = {s: {m: float(g[g.alpha == alpha].barrier.iloc[0])
                                            for m, g in full[full.split == s].groupby("metric", sort=False)}
                                        for s in splits}
        loss = full[(full.split == split) & (full.metric == "loss")]
        if ((loss.alpha > 0) & (loss.alpha < 1)).any():  # at 0 and 1 the plain barrier is 0 by definition
            loss = loss[(loss.alpha > 0) & (loss.alpha < 1)]
        out["full_barrier_max_over_alpha"][variant] = dict(barrier=float(loss.barrier.max()),
                                                          alpha=float(loss.loc[loss.barrier.idxmax(), "alpha"]))
        single = rows[(rows.layer_set != FULL) & (rows.alpha == alpha) & (rows.split == split)
                      & (rows.metric == "loss")].sort_values("barrier", ascending=False)
        worst = single.drop_duplicates("layer_set").head(TOP)
        out["top_layers"][variant] = [dict(layer=r.layer_set, base=r.base, barrier=float(r.barrier))
                                      for r in worst.itertuples()]
    return out


# ----------------------------------------------------------------------------------------------------------- figures
def heatmap_figure(barriers: pd.DataFrame, split: str, metric: str = "loss"):
    """Fig. 1 for one pair: per variant and base a heatmap of the barrier, rows "full" then every layer of the table,
    columns the alphas."""
    variants, bases = list(dict.fromkeys(barriers.variant)), list(dict.fromkeys(barriers.base))
    rows, alphas = list(dict.fromkeys(barriers.layer_set)), sorted(barriers.alpha.unique())
    fig, axes = plotting.panels(len(variants) * len(bases), ncols=len(bases), width=0.8 * len(alphas) + 3.6,
                                height=0.28 * len(rows) + 1.5)
    for ax, (variant, base) in zip(axes, [(v, b) for v in variants for b in bases]):
        sel = barriers[(barriers.variant == variant) & (barriers.base == base) & (barriers.split == split)
                       & (barriers.metric == metric)]
        wide = sel.pivot(index="layer_set", columns="alpha", values="barrier").loc[rows, alphas]
        wide.columns = [f"{a:g}" for a in alphas]
        plotting.heatmap(ax, wide, title=f"{variant}, into {base}", fmt=".2f", annot=len(rows) <= 60,
                         cbar_label=f"{split} {metric} barrier")
        ax.set_xlabel("alpha (weight of B)")
        ax.set_ylabel("averaged layers")
    return fig


def cumulative_figure(table: pd.DataFrame, split: str, metric: str = "loss"):
    """Fig. 2 for one pair: barrier against the number j of averaged layers, one line per order, per variant and
    base."""
    variants, bases = list(dict.fromkeys(table.variant)), list(dict.fromkeys(table.base))
    fig, axes = plotting.panels(len(variants) * len(bases), ncols=len(bases), width=5.5, height=3.8)
    for ax, (variant, base) in zip(axes, [(v, b) for v in variants for b in bases]):
        sel = table[(table.variant == variant) & (table.base == base) & (table.split == split)
                    & (table.metric == metric)]
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
    return "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def report_blocks(s: dict, files: list[str]) -> list[tuple]:
    """The report as blocks: ("h1"|"h2"|"p", text), ("ul", [items]), ("table", header, rows), ("img", file)."""
    i, alpha, split = s["inputs"], s["report_alpha"], s["report_split"]
    blocks = [("h1", "Layer-wise barriers of a pair"), ("h2", "What was compared"), ("ul", [
        f"model: `{i['model']}` ({i['n_parameters']:,} parameters, {i['n_layers']} logical layers, "
        f"{'with' if i['batchnorm'] else 'no'} BatchNorm)",
        f"A: `{i['checkpoint_a']}`", f"B: `{i['checkpoint_b']}`", f"data: {i['data']}",
        f"alphas {', '.join(f'{a:g}' for a in s['options']['alphas'])}; bases {', '.join(s['options']['bases'])}; "
        f"variants {', '.join(s['variants'])}; device {i['device']}; activation caching "
        f"{i.get('activation_caching', 'unknown')}",
        f"barrier = value - [(1 - alpha) value(A) + alpha value(B)], against the two full models (docs/method.md); "
        f"the report reads the {split} loss at alpha {alpha:g}"])]
    if s.get("alignment"):
        a = s["alignment"]
        blocks.append(("p", f"Alignment (weight matching): {a['sweeps']} sweeps, objective {a['objective_before']:.4g}"
                            f" -> {a['objective_after']:.4g}, max |logit(B) - logit(aligned B)| = "
                            f"{a['max_logit_difference']:.2g}."))
    blocks += [("h2", "Endpoints"), ("table", ["split", "metric", "A", "B"],
                [[sp, m, _num(v["A"]), _num(v["B"])] for sp, by in s["endpoints"].items() for m, v in by.items()])]
    blocks += [("h2", f"Full barrier (all layers interpolated, alpha {alpha:g})"),
               ("table", ["variant", "split", "metric", "barrier"],
                [[var, sp, m, _num(v)] for var, by in s["full_barrier"].items() for sp, ms in by.items()
                 for m, v in ms.items()]),
               ("p", f"Largest full {split} loss barrier over the alphas (inside (0, 1) when any): " + "; ".join(
                   f"{var} {_num(v['barrier'])} at alpha {v['alpha']:g}"
                   for var, v in s["full_barrier_max_over_alpha"].items()) + ".")]
    blocks.append(("h2", f"The {TOP} layers with the largest single-layer barriers ({split} loss, alpha {alpha:g}, "
                         "larger base)"))
    for var, top in s["top_layers"].items():
        blocks += [("p", f"**{var}**"), ("table", ["rank", "layer", "base", "barrier"],
                                          [[str(k + 1), t["layer"], t["base"], _num(t["barrier"])]
                                           for k, t in enumerate(top)])]
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
            out.append("\n".join("| " + " | ".join(r) + " |"
                                 for r in [header, ["---"] * len(header), *rows]))
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
    out = [f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
           "body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
           "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}img{max-width:100%}</style></head><body>"]
    for kind, *body in blocks:
        if kind in ("h1", "h2", "p"):
            out.append(f"<{kind}>{_inline(body[0])}</{kind}>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in body[0]) + "</ul>")
        elif kind == "table":
            header, rows = body
            out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
                       + "</table>")
        elif kind == "img":
            out.append(f"<p><img src='{html.escape(body[0])}' alt='{html.escape(body[0])}'></p>")
    return "\n".join(out) + "\n</body></html>\n"


def write_outputs(out: Path, barriers: pd.DataFrame, cumulative: pd.DataFrame | None, summary: dict) -> list[Path]:
    """Every output file in `out`, each written atomically; returns their paths."""
    split = summary["report_split"]
    files = [out / "barriers.csv"]
    save_table(barriers, files[-1])
    if cumulative is not None:
        files.append(out / "cumulative.csv")
        save_table(cumulative, files[-1])
    files.append(_save(heatmap_figure(barriers, split), out / "heatmap"))
    if cumulative is not None:
        files.append(_save(cumulative_figure(cumulative, split), out / "cumulative"))
    files.append(out / "summary.json")
    save_json(summary, files[-1])
    names = [f.name for f in files] + ["report.md", "report.html"]
    blocks = report_blocks(summary, names)
    save_text(to_markdown(blocks), out / "report.md")
    save_text(to_html(blocks), out / "report.html")
    return files + [out / "report.md", out / "report.html"]
