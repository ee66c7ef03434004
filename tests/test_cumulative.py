"""Cumulative averaging: orders defined by hand, and the j = L group equals the full average."""

import pytest
import torch
from torch import nn

from llmc_utils.core.config import ParamsError
from llmc_utils.core.evaluation import LayerEvaluator
from llmc_utils.pipeline.params import validate_params
from llmc_utils.stages.cumulative_averaging import (
    CumulativeAveragingConfig,
    cumulative_table,
    groups,
    layer_order,
    onset,
    outer_first,
    sliding_windows,
)
from llmc_utils.stages.layerwise_barriers import LayerwiseBarriersConfig, barrier_table

NAMES21 = [f"l{i}" for i in range(21)]


def test_outer_first_orders():
    order = outer_first(NAMES21, 5)  # the paper's ResNet18: first 5 + last 5, then the middle 11
    assert order[:10] == NAMES21[:5] + NAMES21[-5:] and order[10:] == NAMES21[5:16]
    assert outer_first(list("abcdefghi"), 5) == list("abhicdefg")  # L = 9: k = 9 // 4 = 2
    assert outer_first(list("abc"), 5) == list("abc")  # fewer than 4 layers: no outer part
    assert sorted(outer_first(NAMES21, 3)) == sorted(NAMES21)


def test_other_orders_and_windows():
    names = list("abcde")
    assert layer_order("shallow_to_deep", names) == names
    assert layer_order("deep_to_shallow", names) == list("edcba")
    shuffled = layer_order("random", names, seed=3)
    assert sorted(shuffled) == names and shuffled == layer_order("random", names, seed=3)
    assert sliding_windows(names, 2) == [list("ab"), list("bc"), list("cd"), list("de")]
    assert sliding_windows(names, 0) == [] and sliding_windows(names, 6) == []
    cfg = CumulativeAveragingConfig(window=3)
    labelled = groups(cfg, names)
    assert sum(g["order"] == "window_3" for g in labelled) == 3
    assert sum(g["order"] == "shallow_to_deep" for g in labelled) == 5
    assert [g["layers"] for g in labelled if g["order"] == "deep_to_shallow"][1] == ["e", "d"]


def test_all_layers_averaged_is_the_full_barrier():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3))
    a = {k: v.clone() for k, v in model.state_dict().items()}
    b = {k: torch.randn_like(v) for k, v in a.items()}
    g = torch.Generator().manual_seed(1)
    splits = {"train": (torch.randn(40, 3, generator=g), torch.randint(0, 3, (40,), generator=g))}
    cfg = CumulativeAveragingConfig(window=2)
    table = cumulative_table(LayerEvaluator(model, splits, batch_size=16), lambda e: (a, b), [5], cfg)
    # 4 orders x 3 groups + 2 windows, 2 bases, 1 split, 2 metrics
    assert len(table) == (4 * 3 + 2) * 2 * 2
    full, _ = barrier_table(LayerEvaluator(model, splits), lambda e: (a, b), [5], LayerwiseBarriersConfig(alphas=[0.5]))
    full_loss = full[(full.layer_set == "full") & (full.metric == "loss")].barrier.iloc[0]
    last = table[(table.j == 3) & (table.metric == "loss") & ~table.order.str.startswith("window")]
    assert last.barrier.values == pytest.approx([full_loss] * len(last), abs=1e-5)
    first = table[(table.order == "shallow_to_deep") & (table.j == 1) & (table.metric == "loss")]
    assert first.layers.tolist() == ["0", "0"]
    # the same row builder as the layer-wise table (evaluation.barrier_rows): averaging the first layer alone is the
    # single-layer barrier of that layer, against the same endpoints
    single = full[(full.layer_set == "0") & (full.metric == "loss")].set_index("base")
    for row in first.itertuples():
        assert (row.value_a, row.value_b) == pytest.approx((single.value_a[row.base], single.value_b[row.base]))
        assert row.barrier == pytest.approx(single.barrier[row.base], abs=1e-6)
    j = onset(table, "shallow_to_deep", fraction=0.5)
    assert j is None or 1 <= j <= 3


def test_bad_cumulative_config_rejected_naming_the_key():
    with pytest.raises(ParamsError, match="cumulative_averaging.orders"):
        validate_params({"cumulative_averaging": {"orders": ["middle_first"]}})
    with pytest.raises(ParamsError, match="cumulative_averaging.alpha"):
        validate_params({"cumulative_averaging": {"alpha": -0.1}})
