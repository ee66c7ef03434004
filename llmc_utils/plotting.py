"""The one plotting helper: annotated heatmaps, curve panels, and saving as PNG.

Every figure of the pipeline goes through `save()`, so all land in figures/ as <stem>.png (pass formats=("png", "pdf")
for vector copies; the pipeline writes PNG only, as PDFs of the annotated heatmaps are slow to write within the
budget), written
atomically. Colour scales of barrier heatmaps are centred at zero: blue = no barrier, red = barrier.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from llmc_utils.io import atomic_path

sns.set_theme(style="white", context="paper")


def heatmap(ax, table: pd.DataFrame, title: str = "", fmt: str = ".1f", center: float | None = 0.0,
            vmin: float | None = None, vmax: float | None = None, cmap: str = "RdBu_r", cbar_label: str = "",
            annot: bool = True, spread: pd.DataFrame | None = None):
    """Annotated heatmap of a wide table (rows x columns as in the table's index and columns). With `spread` (same
    shape, e.g. the sd across repetitions) each cell reads "mean\n±spread"; cells whose spread is NaN (one
    repetition) show the mean alone."""
    if spread is not None and annot:
        spread = spread.reindex(index=table.index, columns=table.columns)
        annot = table.map(lambda v: format(v, fmt)) + spread.map(lambda v: "" if pd.isna(v) else "\n±" + format(v, fmt))
        fmt = ""
    sns.heatmap(table, ax=ax, annot=annot, fmt=fmt, center=center, vmin=vmin, vmax=vmax, cmap=cmap,
                cbar_kws={"label": cbar_label}, annot_kws={"fontsize": 6 if spread is not None else 7},
                linewidths=0.3, linecolor="white")
    ax.set_title(title)
    ax.tick_params(axis="y", rotation=0)
    return ax


def curves(ax, df: pd.DataFrame, x: str, y: str, hue: str | None = None, style: str | None = None,
           title: str = "", errorbar=("sd", 1), **kwargs):
    """Line plot of a tidy table; repeated rows per x (e.g. random draws) become mean and +-1 sd band."""
    sns.lineplot(data=df, x=x, y=y, hue=hue, style=style, ax=ax, errorbar=errorbar, marker="o", markersize=3,
                 **kwargs)
    ax.set_title(title)
    return ax


def panels(n: int, ncols: int | None = None, width: float = 4.5, height: float = 3.5, **kwargs):
    """A figure with n axes in a grid; returns (fig, flat list of the n axes), spare axes removed."""
    ncols = ncols or n
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, **kwargs)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.remove()
    return fig, flat[:n]


def save(fig, stem: str | Path, formats: Sequence[str] = ("png",), dpi: int = 150) -> list[Path]:
    """Save `fig` as <stem>.<format> for each format, atomically; returns the paths."""
    stem = Path(stem)
    fig.tight_layout()
    paths = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        with atomic_path(path) as tmp:
            # no creation date in PDFs: a rerun with the same numbers then writes the same bytes
            fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight",
                        metadata={"CreationDate": None} if fmt == "pdf" else None)
        paths.append(path)
    return paths
