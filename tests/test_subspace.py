"""Subspace perturbations (Fig. 5): bases, null-space vectors, copied snapshots, a quadratic toy, config errors."""

import pandas as pd
import pytest
import torch

from llmc_utils.core.config import ParamsError
from llmc_utils.core.evaluation import Evaluator
from llmc_utils.core.layers import add_flat, flat, logical_layers
from llmc_utils.pipeline.params import validate_params
from llmc_utils.stages import subspace_perturbations as subspace


def test_basis_is_orthonormal_with_numerical_rank():
    e = torch.eye(5, dtype=torch.float64)
    columns = torch.stack([e[0], e[1], e[0] + 2 * e[1], 3 * e[0]], dim=1)  # rank 2: span{e0, e1}
    basis = subspace.orthonormal_basis(columns)
    assert basis.shape == (5, 2)
    assert torch.allclose(basis.T @ basis, torch.eye(2, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(basis[2:], torch.zeros(3, 2, dtype=torch.float64))
    gen = torch.Generator().manual_seed(0)
    null = subspace.null_space_vector(basis, gen)
    assert null.norm().item() == pytest.approx(1.0) and torch.allclose(null[:2], torch.zeros(2, dtype=torch.float64))
    inside = subspace.subspace_vector(basis, gen)
    assert inside.norm().item() == pytest.approx(1.0) and torch.allclose(
        inside[2:], torch.zeros(3, dtype=torch.float64)
    )
    full = subspace.orthonormal_basis(torch.eye(3))
    assert subspace.null_space_vector(full, gen) is None  # span = whole space: no null space


def tiny_runs(tmp_path, epochs=3):
    cfg = subspace.SubspacePerturbationsConfig(
        datasets=["synthetic"],
        synthetic_samples=80,
        hidden=[6],
        n_draws=2,
        sigmas=[0.0, 1.0],
        optim=dict(epochs=epochs, batch_size=8, lr=0.05, weight_decay=0.0),
    )
    tensors = subspace.synthetic_data(cfg)
    make, runs = subspace.train_halves(cfg, tensors, cfg.synthetic_classes, tmp_path)
    return cfg, tensors, make, runs


def test_checkpoints_of_other_data_are_moved_aside_not_resumed(tmp_path, capsys):
    """The MLPs' checkpoints persist across `dvc repro` runs: a run on other data (here: another make_classification
    draw of the same size) must not find them as its own, but train afresh and keep them under models/stale/."""
    run_root = tmp_path / "models" / "subspace_perturbations" / "repetition_0" / "synthetic"
    cfg, _, _, runs = tiny_runs(run_root, epochs=1)
    first = {p: p.read_bytes() for member in runs.values() for p in member}
    other = cfg.model_copy(update={"synthetic_informative": 4})
    subspace.train_halves(other, subspace.synthetic_data(other), other.synthetic_classes, run_root)
    assert "synthetic_informative: 8 in the checkpoint, 4 now" in capsys.readouterr().out
    stale = tmp_path / "models" / "stale" / "subspace_perturbations" / "repetition_0" / "synthetic"
    moved = [p.read_bytes() for p in stale.glob("[AB]/*/epoch_*.pt")]  # <member>/<time>/
    assert sorted(moved) == sorted(first.values())  # kept, byte for byte
    assert all(path.read_bytes() != first[path] for path in first)  # trained afresh


def test_snapshots_are_copies_and_null_vectors_are_orthogonal_to_all(tmp_path):
    cfg, tensors, make, runs = tiny_runs(tmp_path)
    snaps_a, snaps_b = subspace.load_snapshots(runs["A"]), subspace.load_snapshots(runs["B"])
    assert len(snaps_a) == len(snaps_b) == cfg.optim.epochs + 1
    keys = list(snaps_a[0])
    # same init, then different halves: epoch 0 equal, later snapshots all distinct (no aliasing of live weights)
    assert torch.equal(flat(snaps_a[0], keys), flat(snaps_b[0], keys))
    vectors = [flat(s, keys) for s in snaps_a[1:] + snaps_b[1:]]
    assert all(not torch.equal(u, v) for i, u in enumerate(vectors) for v in vectors[i + 1 :])
    snaps_a[-1][keys[0]].add_(1.0)  # mutating one loaded snapshot leaves the others (and a fresh load) untouched
    assert not torch.equal(subspace.load_snapshots(runs["A"])[-1][keys[0]], snaps_a[-1][keys[0]])

    columns = subspace.snapshot_columns(snaps_a, snaps_b, "snapshots")
    final = subspace.snapshot_columns(snaps_a, snaps_b, "final_only")
    assert len(columns) == 2 * len(snaps_a) and len(final) == 2 and final[1] is snaps_b[-1]
    matrix = torch.stack([flat(c, keys).double() for c in columns], dim=1)
    basis = subspace.orthonormal_basis(matrix)
    assert basis.shape[1] == 2 * len(snaps_a) - 1  # the shared init counts once
    found, rank = subspace.directions(columns, snaps_a[-1], snaps_b[-1], keys, 3, 0, 1e-6)
    assert rank == basis.shape[1]
    for v in found["null space"]:
        assert v.norm().item() == pytest.approx(1.0)
        assert (matrix.T @ v).abs().max().item() < 1e-9 * matrix.norm().item()  # orthogonal to every snapshot
    expected = flat(snaps_a[-1], keys).double() - flat(snaps_b[-1], keys).double()
    away, toward = found[subspace.AWAY_FROM_B], found[subspace.TOWARD_B]
    assert len(away) == len(toward) == 1  # one fixed vector per sign
    assert torch.allclose(away[0], expected / expected.norm()) and torch.allclose(toward[0], -away[0])
    # -d moves A toward B: a step of ||A - B|| lands exactly on B
    landed = flat(add_flat(snaps_a[-1], keys, float(expected.norm()) * toward[0]), keys).double()
    assert torch.allclose(landed, flat(snaps_b[-1], keys).double(), atol=1e-5)
    assert subspace.max_cosine(found["null space"], matrix) < 1e-9


def test_curves_on_a_real_mlp(tmp_path):
    cfg, tensors, make, runs = tiny_runs(tmp_path, epochs=2)
    snaps_a, snaps_b = subspace.load_snapshots(runs["A"]), subspace.load_snapshots(runs["B"])
    evaluator = Evaluator(make(), {"test": (tensors["x_test"], tensors["y_test"])})
    curves, spans = subspace.perturbation_curves(
        evaluator,
        subspace.snapshot_columns(snaps_a, snaps_b, "final_only"),
        snaps_a[-1],
        snaps_b[-1],
        cfg.sigmas,
        cfg.n_draws,
        0,
    )
    assert list(spans.scope) == ["all", *logical_layers(snaps_a[-1])] and (spans.subspace_rank == 2).all()
    assert (spans.null_max_cosine < 1e-9).all()
    base = evaluator(snaps_a[-1])["test"]["loss"]
    zero = curves[(curves.sigma == 0.0) & (curves.metric == "loss")]
    assert zero.value.eq(base).all()
    moved = curves[(curves.sigma == 1.0) & (curves.metric == "loss")]
    assert not moved.value.eq(base).any()
    assert set(moved.kind) == set(subspace.KINDS)


def test_toy_quadratic_feels_only_the_training_subspace():
    """Loss = ||P (theta - theta*)||^2 with P the projector onto the span of the 'snapshots' and theta* in that span:
    null-space moves cost nothing, subspace moves cost exactly sigma^2."""
    gen = torch.Generator().manual_seed(1)
    snaps = [{"w.weight": torch.randn(4, 3, generator=gen, dtype=torch.float64)} for _ in range(3)]
    keys = ["w.weight"]
    basis = subspace.orthonormal_basis(torch.stack([flat(s, keys).double() for s in snaps], dim=1))
    projector = basis @ basis.T
    final_a, final_b = snaps[-1], snaps[-2]

    def evaluate(state):
        d = flat(state, keys).double() - flat(final_a, keys).double()
        return {"test": {"loss": float(d @ projector @ d)}}

    curves, _ = subspace.perturbation_curves(evaluate, snaps, final_a, final_b, [0.0, 2.0], n_draws=4, seed=0)
    at2 = curves[curves.sigma == 2.0].groupby("kind").value
    assert at2.max()["null space"] == pytest.approx(0.0, abs=1e-9)
    assert at2.min()["training subspace"] == pytest.approx(4.0)
    for kind in (subspace.TOWARD_B, subspace.AWAY_FROM_B):  # A - B lies in the span of the snapshots
        assert at2.min()[kind] == pytest.approx(4.0)


@pytest.mark.parametrize(
    "section, needle",
    [
        ({"sigmas": [1.0, 2.0]}, "must contain 0.0"),
        ({"sigmas": [0.0, -1.0]}, "subspace_perturbations.sigmas.1"),
        ({"variants": ["snapshots", "aliased"]}, "subspace_perturbations.variants.1"),
        ({"datasets": ["cifar"]}, "subspace_perturbations.datasets.0"),
        ({"data_seed_a": 3, "data_seed_b": 3}, "must differ"),
        ({"synthetic_informative": 20}, "exceeds"),
        ({"n_draws": 0}, "subspace_perturbations.n_draws"),
        ({"snapshot_every": 2, "extra": 1}, "unknown key subspace_perturbations.extra"),
    ],
)
def test_config_errors(section, needle):
    with pytest.raises(ParamsError, match=needle.replace(".", r"\.")):
        validate_params({"subspace_perturbations": section})


def test_snapshot_epochs_include_the_end():
    cfg = subspace.SubspacePerturbationsConfig(snapshot_every=3, optim=dict(epochs=7))
    assert cfg.snapshot_epochs() == [0, 3, 6, 7]


def test_repetition_offsets_every_seed_by_100_r():
    cfg = subspace.SubspacePerturbationsConfig()
    assert cfg.for_repetition(0) == cfg
    rep = cfg.for_repetition(1)
    assert rep.seeds() == dict(
        synthetic_seed=100, subset_seed=100, init_seed=100, data_seed_a=101, data_seed_b=102, draw_seed=100
    )
    assert rep.optim == cfg.optim and rep.sigmas == cfg.sigmas
    a, b = subspace.synthetic_data(cfg), subspace.synthetic_data(rep)
    assert not torch.equal(a["x_train"], b["x_train"])  # another repetition, another draw of the dataset


def test_check_snapshots_stops_an_mlp_back_at_chance():
    """Every snapshot's test error is checked: a slow start passes, a fall back to chance after leaving it does not,
    even when the run recovers by its last snapshot."""
    from llmc_utils.core.trainer import TrainingDiverged

    cfg = subspace.SubspacePerturbationsConfig(optim=dict(epochs=3, batch_size=32, lr=0.05))  # snapshots 0, 1, 2, 3
    errors = lambda e: {"test": {"loss": 1.0, "error": e}}  # a snapshot here is its error
    slow = {"A": [66.0, 65.0, 40.0, 30.0], "B": [66.0, 30.0, 25.0, 20.0]}
    subspace.check_snapshots(errors, slow, 3, cfg, "synthetic", 0)
    relapse = {"A": [66.0, 30.0, 65.0, 20.0], "B": slow["B"]}
    with pytest.raises(TrainingDiverged, match=r"MLP A on synthetic, repetition 2 .*error 65.0 % at epoch 2"):
        subspace.check_snapshots(errors, relapse, 3, cfg, "synthetic", 2)


def run_tables(tmp_path, seed=0):
    """(curves, spans, at_max, endpoints) of one tiny repetition on the synthetic data, as the notebook builds them."""
    from llmc_utils.core.io import save_table

    cfg, tensors, make, runs = tiny_runs(tmp_path / f"models_{seed}", epochs=2)
    snaps_a, snaps_b = subspace.load_snapshots(runs["A"]), subspace.load_snapshots(runs["B"])
    evaluator = Evaluator(make(), {"test": (tensors["x_test"], tensors["y_test"])})
    frames, span_frames = [], []
    for variant in ("snapshots", "final_only"):
        curves, spans = subspace.perturbation_curves(
            evaluator,
            subspace.snapshot_columns(snaps_a, snaps_b, variant),
            snaps_a[-1],
            snaps_b[-1],
            [0.0, 1.0, 3.0],
            2,
            seed,
        )
        frames.append(curves.assign(dataset="synthetic", variant=variant))
        span_frames.append(spans.assign(dataset="synthetic", variant=variant))
    curves, spans = pd.concat(frames, ignore_index=True), pd.concat(span_frames, ignore_index=True)
    save_table(curves, tmp_path / "results" / "subspace_perturbations" / f"repetition_{seed}" / "curves.csv")
    endpoints = {"synthetic": {m: evaluator(s[-1])["test"] for m, s in (("A", snaps_a), ("B", snaps_b))}}
    return curves, spans, subspace.loss_at(curves, 3.0), endpoints


def test_seed_metrics_hold_every_panel_and_kind(tmp_path):
    curves, spans, at_max, endpoints = run_tables(tmp_path)
    m = subspace.repetition_metrics(at_max, spans, endpoints, 3.0)
    loss_keys = [k for k in m if k.startswith("loss/")]
    assert len(loss_keys) == 2 * 3 * len(subspace.KINDS)  # variants x scopes (all, fc1, fc2) x kinds
    assert {k.split("/")[-1] for k in loss_keys} == set(subspace.KINDS)
    assert m["null_max_cosine"] < 1e-9 and m["sigma_max"] == 3.0
    assert m["subspace_rank/synthetic/final_only/all"] == 2.0


def test_aggregation_and_figure_over_repetitions(tmp_path):
    import matplotlib.pyplot as plt

    for seed in (0, 1):
        run_tables(tmp_path, seed)
    curves = subspace.aggregate_curves(tmp_path, [0, 1])
    assert sorted(curves.repetition.unique()) == [0, 1]
    table = subspace.loss_at_table(curves, 3.0)
    assert (table.n_repetitions == 2).all() and set(table.kind) == set(subspace.KINDS) and "mean ± sd" in table
    for fig in (
        subspace.fig5_subspace_perturbations(curves),
        subspace.fig5_subspace_perturbations(curves[curves.repetition == 1]),
    ):
        assert len(fig.axes) == 2 * 3  # (dataset, variant) rows x scopes
        assert fig.axes[0].get_title().startswith("synthetic · all\nsubspace: span of all snapshots")  # table order
        plt.close(fig)
    fig = subspace.fig5_subspace_perturbations(curves, scopes=["all"])  # the per-seed notebook's view
    assert [ax.get_title().split("\n")[0] for ax in fig.axes] == ["synthetic · all"] * 2
    plt.close(fig)
    with pytest.raises(FileNotFoundError, match="subspace_perturbations@5"):
        subspace.aggregate_curves(tmp_path, [5])
