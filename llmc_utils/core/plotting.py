"""The one plotting helper: annotated heatmaps, curve panels, and saving as PNG.

Every figure of the pipeline goes through `save()`, so all land in figures/ as <stem>.png (pass formats=("png", "pdf")
for vector copies; the pipeline writes PNG only, as PDFs of the annotated heatmaps are slow to write within the
budget), written
atomically. Colour scales of barrier heatmaps are centred at zero: blue = no barrier, red = barrier.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from llmc_utils.core.io import atomic_path

if TYPE_CHECKING:
    import pandas as pd


@functools.cache
def _seaborn():
    """seaborn (and through it scipy and pyplot), imported on first use: the import is slow, and most stages that
    import a module with a figure function run under DVC without drawing (their figures come from the aggregate
    stage)."""
    import seaborn as sns

    sns.set_theme(style="white", context="paper")
    return sns


def heatmap(
    ax,
    table: pd.DataFrame,
    title: str = "",
    fmt: str = ".1f",
    center: float | None = 0.0,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "RdBu_r",
    cbar_label: str = "",
    annot: bool = True,
    spread: pd.DataFrame | None = None,
):
    """Annotated heatmap of a wide table (rows x columns as in the table's index and columns). With `spread` (same
    shape, e.g. the sd across repetitions) each cell reads "mean\n±spread"; cells whose spread is NaN (one
    repetition) show the mean alone."""
    import pandas as pd

    sns = _seaborn()
    if spread is not None and annot:
        spread = spread.reindex(index=table.index, columns=table.columns)
        annot = table.map(lambda v: format(v, fmt)) + spread.map(lambda v: "" if pd.isna(v) else "\n±" + format(v, fmt))
        fmt = ""
    sns.heatmap(
        table,
        ax=ax,
        annot=annot,
        fmt=fmt,
        center=center,
        vmin=vmin,
        vmax=vmax,
        cmap=cmap,
        cbar_kws={"label": cbar_label},
        annot_kws={"fontsize": 6 if spread is not None else 7},
        linewidths=0.3,
        linecolor="white",
    )
    ax.set_title(title)
    ax.tick_params(axis="y", rotation=0)
    return ax


def barrier_heatmaps(
    axes,
    tables: Mapping[str, pd.DataFrame],
    cbar_label: str,
    xlabel: str = "",
    ylabel: str = "",
    spreads: Mapping[str, pd.DataFrame | None] | None = None,
    same_scale: bool = False,
    annot: bool = True,
):
    """One annotated barrier heatmap per entry of `tables` (panel title -> wide table, rows the averaged layers), on
    `axes` in order: cells to two decimals, colours centred at zero, the axis labels given (seaborn's default, the
    pivoted column names, would say nothing). `spreads` (title -> sd table or None) adds "±sd" to the cells of a
    panel. `same_scale`: every panel on one colour scale, symmetric around zero and set by the largest |value| over
    all panels, so that the panels compare by colour (unaligned beside aligned). A panel whose cells are all NaN (not
    finite barriers, which the callers' reports explain) stays blank, without seaborn's warning."""
    top = max(float(t.abs().max().max()) for t in tables.values()) if same_scale else None
    for ax, (title, table) in zip(axes, tables.items()):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "All-NaN slice", RuntimeWarning)
            heatmap(
                ax,
                table,
                title=title,
                fmt=".2f",
                vmin=None if top is None else -top,
                vmax=top,
                cbar_label=cbar_label,
                annot=annot,
                spread=(spreads or {}).get(title),
            )
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    return axes


def curves(
    ax,
    df: pd.DataFrame,
    x: str,
    y: str,
    hue: str | None = None,
    style: str | None = None,
    title: str = "",
    errorbar=("sd", 1),
    **kwargs,
):
    """Line plot of a tidy table; repeated rows per x (e.g. random draws) become mean and +-1 sd band."""
    _seaborn().lineplot(
        data=df, x=x, y=y, hue=hue, style=style, ax=ax, errorbar=errorbar, marker="o", markersize=3, **kwargs
    )
    ax.set_title(title)
    return ax


def repetition_band(df: pd.DataFrame, keys: Sequence[str]) -> tuple[pd.DataFrame, str]:
    """What the band of `curves` spans, for a tidy table with a `value` and a `repetition` column and random draws
    repeated per `keys`: with several repetitions, the draws are averaged within each repetition, so the band is +-1 sd
    over repetitions; with one, the draws stay and the band is +-1 sd over them. Returns the table and the band's
    label."""
    n = df.repetition.nunique()
    if n > 1:
        return df.groupby([*keys, "repetition"]).value.mean().reset_index(), f"±1 sd over {n} repetitions"
    return df, "±1 sd over random draws"


def panels(n: int, ncols: int | None = None, width: float = 4.5, height: float = 3.5, **kwargs):
    """A figure with n axes in a grid; returns (fig, flat list of the n axes), spare axes removed."""
    _seaborn()  # the theme applies to every figure, also those drawn without seaborn
    import matplotlib.pyplot as plt

    ncols = ncols or n
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, **kwargs)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.remove()
    return fig, flat[:n]


def save(fig, stem: str | Path, formats: Sequence[str] = ("png",), dpi: int = 120, show: bool = True) -> list[Path]:
    """Save `fig` as <stem>.<format> for each format, atomically; returns the paths.

    In a notebook (`show`), the saved PNG itself is displayed and the figure closed: the inline backend would otherwise
    render the figure a second time, which costs as much as saving it, and could differ from the file."""
    import matplotlib.pyplot as plt

    stem = Path(stem)
    fig.tight_layout()
    paths = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        with atomic_path(path) as tmp:
            # no creation date in PDFs: a rerun with the same numbers then writes the same bytes
            fig.savefig(
                tmp, format=fmt, dpi=dpi, bbox_inches="tight", metadata={"CreationDate": None} if fmt == "pdf" else None
            )
            if fmt == "png":
                _to_palette(tmp)
        paths.append(path)
    png = stem.with_suffix(".png")
    if show and png in paths and _in_notebook():
        from IPython.display import Image, display

        display(Image(filename=str(png)))
        plt.close(fig)
    return paths


def _to_palette(path: Path) -> None:
    """Rewrite a PNG with a 256-colour palette: several times smaller, with no visible change for plots. Every figure is
    committed to git and embedded in the executed notebooks and the HTML report, so its size counts several times."""
    from PIL import Image

    with Image.open(path) as image:
        palette = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    palette.save(path, format="png", optimize=True)


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None
