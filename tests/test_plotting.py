"""The one plotting helper: figures land as palette PNGs (small enough to commit and embed), atomically, and the
mean ± spread annotation of heatmaps reads what the tables hold."""

import math

import pandas as pd
from PIL import Image

from llmc_utils.core import plotting


def test_save_writes_a_palette_png_atomically(tmp_path):
    fig, (ax,) = plotting.panels(1)
    plotting.heatmap(ax, pd.DataFrame([[0.12, -0.03], [0.5, 0.0]], index=["full", "fc"], columns=[1, 2]), fmt=".2f")
    paths = plotting.save(fig, tmp_path / "fig1_test", formats=("png", "pdf"))
    assert paths == [tmp_path / "fig1_test.png", tmp_path / "fig1_test.pdf"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig1_test.pdf", "fig1_test.png"]  # no temporaries left
    with Image.open(paths[0]) as image:
        assert image.mode == "P" and image.size[0] > 100
    assert paths[1].read_bytes().startswith(b"%PDF")


def test_heatmap_annotates_mean_and_spread():
    fig, (ax,) = plotting.panels(1)
    mean = pd.DataFrame([[0.25, 1.0]], index=["full"], columns=[0, 1])
    spread = pd.DataFrame([[0.05, math.nan]], index=["full"], columns=[0, 1])
    plotting.heatmap(ax, mean, fmt=".2f", spread=spread)
    texts = sorted(t.get_text() for t in ax.texts)
    assert texts == ["0.25\n±0.05", "1.00"]  # one repetition (NaN spread): the mean alone


def test_barrier_heatmaps_share_one_symmetric_scale_on_request():
    fig, axes = plotting.panels(2)
    tables = {
        "unaligned": pd.DataFrame([[0.5, -0.1]], index=["full"], columns=[1, 2]),
        "aligned": pd.DataFrame([[0.2, -0.8]], index=["full"], columns=[1, 2]),
    }
    plotting.barrier_heatmaps(axes, tables, "train loss barrier", "epoch", "averaged layers", same_scale=True)
    assert [ax.get_title() for ax in axes] == ["unaligned", "aligned"]
    assert all(ax.collections[0].get_clim() == (-0.8, 0.8) for ax in axes)
    assert [ax.get_xlabel() for ax in axes] == ["epoch", "epoch"]
    fig, axes = plotting.panels(2)
    plotting.barrier_heatmaps(axes, tables, "train loss barrier")
    assert axes[0].collections[0].get_clim() == (-0.1, 0.5)  # its own range (seaborn centres the colours at zero)
    assert axes[0].get_ylabel() == ""


def test_repetition_band_averages_draws_within_repetitions_only_when_there_are_several():
    draws = pd.DataFrame(
        {"alpha": [0.5] * 4, "repetition": [0, 0, 1, 1], "draw": [0, 1, 0, 1], "value": [1.0, 3.0, 5.0, 9.0]}
    )
    averaged, label = plotting.repetition_band(draws, ["alpha"])
    assert label == "±1 sd over 2 repetitions"
    assert averaged.sort_values("repetition").value.tolist() == [2.0, 7.0]  # one row per repetition: its draws' mean
    one, label = plotting.repetition_band(draws[draws.repetition == 0], ["alpha"])
    assert label == "±1 sd over random draws" and one.value.tolist() == [1.0, 3.0]  # the draws stay
