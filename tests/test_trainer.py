"""The shared trainer: deterministic, resumable, schedules and augmentation as documented."""

from pathlib import Path

import pytest
import torch

from llmc_utils.core.io import CheckpointError
from llmc_utils.core.trainer import OptimConfig, augment_batch, load_weights, lr_factor, train_model


def make_mlp():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


@pytest.fixture
def toy():
    g = torch.Generator().manual_seed(0)
    return torch.randn(96, 1, 4, 4, generator=g), torch.randint(0, 3, (96,), generator=g)


def run(toy, tmp_path, name, **kw):
    cfg = OptimConfig(epochs=4, batch_size=16, lr=0.1, schedule="cosine", augment=False)
    return train_model(
        make_mlp,
        *toy,
        cfg,
        init_seed=0,
        data_seed=kw.pop("data_seed", 1),
        checkpoint_epochs=[0, 2, 4],
        run_dir=tmp_path / name,
        **kw,
    )


def test_resume_after_interruption_gives_identical_weights(toy, tmp_path):
    full = load_weights(run(toy, tmp_path, "full")[-1])
    paths = run(toy, tmp_path, "cut")
    paths[-1].unlink()  # as if killed between epoch 2 and 4
    resumed = load_weights(run(toy, tmp_path, "cut")[-1])
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_same_init_different_order(toy, tmp_path):
    a, b = run(toy, tmp_path, "a", data_seed=1), run(toy, tmp_path, "b", data_seed=2)
    init_a, init_b = load_weights(a[0]), load_weights(b[0])
    assert all(torch.equal(init_a[k], init_b[k]) for k in init_a)
    end_a, end_b = load_weights(a[-1]), load_weights(b[-1])
    assert not torch.equal(end_a["1.weight"], end_b["1.weight"])


def test_stale_checkpoints_of_another_config_are_reported(toy, tmp_path):
    run(toy, tmp_path, "x", data_seed=1)
    with pytest.raises(CheckpointError, match="another configuration"):
        run(toy, tmp_path, "x", data_seed=5)


def test_lr_schedules():
    cfg = OptimConfig(epochs=10, schedule="step")
    assert [round(lr_factor(cfg, s, 1), 6) for s in (0, 4, 5, 7, 8, 9)] == [1, 1, 0.1, 0.1, 0.01, 0.01]
    cos = OptimConfig(epochs=10, schedule="cosine", warmup_epochs=2)
    assert lr_factor(cos, 0, 1) == 0.5 and lr_factor(cos, 2, 1) == 1.0 and lr_factor(cos, 10, 1) == pytest.approx(0)


def test_augmentation_is_crop_and_flip():
    x = torch.arange(2 * 28 * 28, dtype=torch.float32).view(2, 1, 28, 28)
    out = augment_batch(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    for img, orig in zip(out, x):  # every output row is a (possibly flipped) shifted piece of the input or padding
        values = set(img.flatten().tolist()) - {0.0}
        assert values <= set(orig.flatten().tolist())


def test_perturb_init_moves_every_weight_by_the_relative_amount_asked(monkeypatch):
    from llmc_utils.core.trainer import PERTURB_ENV, perturb_init

    torch.manual_seed(0)
    model = torch.nn.Linear(50, 40)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    monkeypatch.delenv(PERTURB_ENV, raising=False)
    perturb_init(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # unset: no-op
    monkeypatch.setenv(PERTURB_ENV, "1e-6")
    perturb_init(model)
    rel = (model.weight - before["weight"]).abs() / before["weight"].abs()
    assert 0 < rel.median() < 1e-5 and rel.max() < 1e-4


def test_divergence_and_chance_level_stop_the_run_naming_it():
    from llmc_utils.core.trainer import TrainingDiverged, check_finite, check_not_chance

    check_finite(torch.tensor(2.3), "model A (seed 0)", 3)  # finite: passes
    with pytest.raises(TrainingDiverged, match=r"model A \(seed 0\).*epoch 3"):
        check_finite(torch.tensor(float("nan")), "model A (seed 0)", 3)
    check_not_chance(20.0, 10, "model B of pair 4", 30)
    with pytest.raises(TrainingDiverged, match="model B of pair 4.*chance"):
        check_not_chance(90.1, 10, "model B of pair 4", 30)
    with pytest.raises(TrainingDiverged, match="error nan % at epoch 30"):
        check_not_chance(float("nan"), 10, "model B of pair 4", 30)


def test_every_checkpoint_after_leaving_chance_is_checked():
    from llmc_utils.core.trainer import TrainingDiverged, check_checkpoints

    # epoch 0 (the initialisation) and a slow first epoch at chance are fine while the run learns afterwards
    check_checkpoints({0: 80.0, 1: 89.0, 5: 30.0, 10: 20.0}, 10, "model A of pair 0")
    with pytest.raises(TrainingDiverged, match="model A of pair 0: error 88.0 % at epoch 5"):
        check_checkpoints({0: 90.0, 1: 40.0, 5: 88.0, 10: 20.0}, 10, "model A of pair 0")  # collapsed, recovered
    with pytest.raises(TrainingDiverged, match="at epoch 10"):
        check_checkpoints({0: 90.0, 1: 89.0, 10: 89.5}, 10, "model A of pair 0")  # never learned


def test_a_checkpoint_with_a_non_finite_weight_is_not_written(tmp_path):
    """The last step of an epoch comes after the loss that check_finite sees: the weights it leaves are checked
    before the checkpoint is saved."""
    from llmc_utils.core.trainer import OptimConfig, TrainingDiverged, train_model

    x, y = 1e3 * torch.randn(16, 4), torch.randint(0, 3, (16,))  # finite loss, gradients in the hundreds
    cfg = OptimConfig(epochs=1, batch_size=16, lr=1e38, momentum=0.0, weight_decay=0.0)  # one step, to infinity
    with pytest.raises(
        TrainingDiverged,
        match=r"toy \(init seed 0, data seed 0\): training diverged at epoch 1 "
        r"\((weight|bias) is no longer finite\)",
    ):
        train_model(
            lambda: torch.nn.Linear(4, 3),
            x,
            y,
            cfg,
            init_seed=0,
            data_seed=0,
            checkpoint_epochs=[0, 1],
            run_dir=tmp_path,
            desc="toy",
        )
    assert [p.name for p in tmp_path.glob("*.pt")] == ["epoch_0000.pt"]


def test_a_nan_learning_run_stops_train_model(tmp_path):
    from llmc_utils.core.trainer import OptimConfig, TrainingDiverged, train_model

    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    x[5, 0] = float("inf")  # one bad input poisons the weights: every later loss is NaN
    cfg = OptimConfig(epochs=2, batch_size=16, lr=0.1, momentum=0.0, weight_decay=0.0)
    with pytest.raises(TrainingDiverged, match="diverged"):
        train_model(
            lambda: torch.nn.Linear(4, 3),
            x,
            y,
            cfg,
            init_seed=0,
            data_seed=1,
            checkpoint_epochs=[0, 2],
            run_dir=tmp_path,
            desc="exploding model",
        )


def test_train_many_in_worker_processes_equals_one_thread_runs_in_process(toy, tmp_path):
    """The parallel path (A and B of a pair side by side, one thread each) gives exactly the weights of the same
    runs trained one after the other on one thread: parallelism changes the wall time, never the numbers."""
    from llmc_utils.core.trainer import train_many

    cfg = OptimConfig(epochs=2, batch_size=16, lr=0.1)
    jobs = [
        dict(
            make_model=make_mlp,
            x=toy[0],
            y=toy[1],
            cfg=cfg,
            init_seed=0,
            data_seed=seed,
            checkpoint_epochs=[0, 2],
            run_dir=tmp_path / "parallel" / str(seed),
        )
        for seed in (1, 2)
    ]
    parallel = train_many(jobs, processes=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        serial = train_many([dict(job, run_dir=tmp_path / "serial" / str(job["data_seed"])) for job in jobs])
    finally:
        torch.set_num_threads(threads)
    for p, s in zip(parallel, serial):
        a, b = load_weights(p[-1]), load_weights(s[-1])
        assert all(torch.equal(a[k], b[k]) for k in a)
    first, second = (load_weights(p[-1]) for p in parallel)
    assert not torch.equal(first["1.weight"], second["1.weight"])  # two different runs, not one twice


def test_train_members_merges_shared_arguments_and_keeps_accelerator_data_in_process(monkeypatch):
    """train_members: each member's arguments over the shared ones, results by name; train_many trains jobs whose
    data are not on the CPU one after the other in this process, whatever `processes` says (no worker is started:
    a tensor on another device would not even reach one)."""
    from llmc_utils.core import trainer

    calls = []
    monkeypatch.setattr(trainer, "train_model", lambda **job: calls.append(job) or [job["run_dir"]])
    x = torch.empty(4, 2, device="meta")
    paths = trainer.train_members(
        {"A": dict(run_dir="a", data_seed=1), "B": dict(run_dir="b", data_seed=2)},
        processes=3,
        x=x,
        y=x,
        data_seed=0,
        init_seed=7,
    )
    assert paths == {"A": ["a"], "B": ["b"]}
    assert [(c["data_seed"], c["init_seed"], c["x"] is x) for c in calls] == [(1, 7, True), (2, 7, True)]


def test_stale_checkpoints_go_to_the_same_path_under_models_stale():
    from llmc_utils.core.trainer import stale_dir_of

    assert stale_dir_of(Path("ws/models/robustness/repetition_0/vit/A")) == Path(
        "ws/models/stale/robustness/repetition_0/vit/A"
    )
    assert stale_dir_of(Path("models/language_model/repetition_1/B_prime")) == Path(
        "models/stale/language_model/repetition_1/B_prime"
    )
    assert stale_dir_of(Path("/tmp/run/A")) == Path("/tmp/run/stale/A")  # outside a workspace: beside the run
