"""Federated splits, weighted layer-group averaging, the batched training engine (against a plain per-client
torch.optim.SGD loop), one whole repetition on a toy data set, metrics, gap diagnostics and aggregation."""

import math

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from llmc_utils.core.config import ParamsError
from llmc_utils.core.data import ImageData
from llmc_utils.core.io import save_table
from llmc_utils.core.layers import keys_of, logical_layers
from llmc_utils.core.trainer import TrainingDiverged, sgd_epoch
from llmc_utils.pipeline.params import validate_params
from llmc_utils.stages import federated as fd

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def one_thread():
    """The stage runs on one thread (params: threads 1); so do these tests (many tiny ops)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


N_CLASSES = 10


def labels(n_per_class=37, n_classes=N_CLASSES):
    return torch.arange(n_classes).repeat_interleave(n_per_class)[
        torch.randperm(n_per_class * n_classes, generator=torch.Generator().manual_seed(0))
    ]


def split(name, seed=0, **kw):
    cfg = fd.FederatedConfig(seed=seed, n_clients=10, batch_size=8, **kw)
    train_y, test_y = labels(37), labels(11)
    train, test = fd.partition(cfg, name, train_y, test_y, N_CLASSES)
    return cfg, train_y, test_y, train, test


@pytest.mark.parametrize("name", ["iid", "dirichlet", "pathological"])
def test_every_sample_assigned_exactly_once_and_deterministic(name):
    _, train_y, test_y, train, test = split(name)
    for parts, y in ((train, train_y), (test, test_y)):
        assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(y)))
    _, _, _, again, again_test = split(name)
    assert all(np.array_equal(a, b) for a, b in zip(train + test, again + again_test))


@pytest.mark.parametrize("name", ["dirichlet", "pathological"])
def test_other_seed_gives_other_partition(name):
    _, _, _, train, _ = split(name, seed=0)
    _, _, _, other, _ = split(name, seed=1)
    assert any(not np.array_equal(a, b) for a, b in zip(train, other))


def test_iid_split_gives_every_client_every_class_evenly():
    _, train_y, _, train, _ = split("iid")
    counts = fd.label_counts(train_y, train, N_CLASSES)
    assert counts.min() == 3 and counts.max() == 4  # 37 per class over 10 clients: 3 or 4 each
    assert (counts.sum(0) == 37).all()


def test_pathological_split_gives_k_classes_per_client_and_same_classes_in_test():
    _, train_y, test_y, train, test = split("pathological", classes_per_client=2)
    counts, test_counts = fd.label_counts(train_y, train, N_CLASSES), fd.label_counts(test_y, test, N_CLASSES)
    assert ((counts > 0).sum(1) == 2).all()  # two classes per client
    assert ((counts > 0).sum(0) == 2).all()  # 10 clients x 2 classes: every class held by exactly two clients
    assert set(np.unique(counts)) <= {0, 18, 19}  # a class's 37 samples halved between its two holders
    assert np.array_equal(counts > 0, test_counts > 0)  # the test set follows the same label mix


def test_pathological_split_refuses_orphan_classes():
    with pytest.raises(ValueError, match="every sample needs an owner"):
        fd.class_shares("pathological", 3, N_CLASSES, np.random.default_rng(0), classes_per_client=2)


def test_dirichlet_split_is_skewed_and_follows_its_shares():
    _, train_y, _, train, _ = split("dirichlet", dirichlet_concentration=0.1)
    counts = fd.label_counts(train_y, train, N_CLASSES)
    assert counts.sum(1).min() >= 8  # min_size = batch_size
    majority = counts.max(1) / counts.sum(1)
    assert majority.mean() > 0.4  # strongly skewed, far from IID's 0.1 (one class in ten)
    rng = np.random.default_rng([0, fd.SPLIT_IDS["dirichlet"]])  # the same draw partition() makes
    shares = fd.class_shares("dirichlet", 10, N_CLASSES, rng, np.full(N_CLASSES, 37), 0.1, min_size=8)
    assert np.allclose(shares.sum(0), 1.0)
    assert np.array_equal(counts, np.stack([fd.round_shares(shares[:, c], 37) for c in range(N_CLASSES)], 1))


def test_round_shares_by_hand():
    # 7 * [.5, .3, .2] = [3.5, 2.1, 1.4] -> floors [3, 2, 1], the one left over goes to the largest remainder (.5)
    assert fd.round_shares(np.array([0.5, 0.3, 0.2]), 7).tolist() == [4, 2, 1]
    assert fd.round_shares(np.full(3, 1 / 3), 10).tolist() == [4, 3, 3]


def weighted_average(
    states: list[dict[str, torch.Tensor]], weights: torch.Tensor, keys: list[str]
) -> dict[str, torch.Tensor]:
    """sum_i w_i * state_i[key] / sum_i w_i for each key: FedAvg's aggregation (weights = client data sizes), written
    the plain way, as the reference the batched engine (fd.StackedMLP) is checked against."""
    w = weights.double() / weights.double().sum()
    return {k: sum(wi * s[k].double() for wi, s in zip(w, states)).to(states[0][k].dtype) for k in keys}


def train_federated(
    make_model, clients: list[tuple[torch.Tensor, torch.Tensor]], averaged: list[str] | None, cfg: fd.FederatedConfig
) -> list[dict[str, torch.Tensor]]:
    """One federation on its own through the stage's engine (fd.train_federations): clients = [(x_i, y_i)]; returns
    the clients' final state dicts (data seed cfg.seed + 1, as in fd.run)."""
    x = torch.cat([c[0] for c in clients])
    y = torch.cat([c[1] for c in clients])
    bounds = np.cumsum([0] + [len(c[1]) for c in clients])
    fed = fd.Federation(
        "federation", [np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:])], averaged, cfg.seed + 1
    )
    bank, position = fd.train_federations(make_model, x, y, [fed], cfg)
    return [bank.state_dict(position[(0, i)]) for i in range(len(clients))]


def test_weighted_average_of_a_layer_group_by_hand():
    states = [
        {"a.weight": torch.tensor([1.0, 2.0]), "b.weight": torch.tensor([0.0])},
        {"a.weight": torch.tensor([3.0, 6.0]), "b.weight": torch.tensor([8.0])},
    ]
    avg = weighted_average(states, torch.tensor([100, 300]), ["a.weight"])  # weights 1/4 and 3/4
    assert list(avg) == ["a.weight"]
    assert torch.allclose(avg["a.weight"], torch.tensor([2.5, 5.0]))


def toy_clients(n_clients=3, n=24, seed=0, step=8):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(n + step * i, 1, 2, 2, generator=g), torch.randint(0, 3, (n + step * i,), generator=g))
        for i in range(n_clients)
    ]


@pytest.mark.parametrize("averaged, shared", [(None, {"fc1", "fc2", "fc3"}), (["fc2"], {"fc2"}), ([], set())])
def test_strategies_share_exactly_the_averaged_layers(averaged, shared):
    cfg = fd.FederatedConfig(
        n_clients=3,
        hidden=[5, 5],
        layer_groups={"mid": ["fc2"]},
        claim_group="mid",
        rounds=2,
        batch_size=8,
        lr=0.1,
        n_train=10,
        n_test=10,
        sweep_n_train=0,
    )
    states = train_federated(lambda: fd.MLP(4, [5, 5], 3), toy_clients(), averaged, cfg)
    for layer in ("fc1", "fc2", "fc3"):
        same = all(torch.equal(states[0][f"{layer}.weight"], s[f"{layer}.weight"]) for s in states[1:])
        assert same == (layer in shared), layer


@pytest.mark.parametrize(
    "section, message",
    [
        ({"layer_groups": {"middle": ["fc9"]}}, "unknown"),
        ({"claim_group": "head"}, "claim_group"),
        ({"sweep_concentrations": [0.1, 0.1]}, "sweep_concentrations"),
        ({"sweep_concentrations": [0.0]}, "sweep_concentrations"),
        ({"sweep_n_train": 7000}, "sweep_n_train"),
        ({"layer_groups": {"full": ["fc1"]}}, "built-in"),
        ({"barrier_clients": [0, 10]}, "barrier_clients"),
        ({"splits": ["non-iid"]}, "splits"),
        ({"dirichlet_concentration": 0}, "dirichlet_concentration"),
        ({"n_clients": 1}, "n_clients"),
        ({"rounds": 0}, "rounds"),
    ],
)
def test_config_errors_name_the_key(section, message):
    with pytest.raises(ParamsError, match=message):
        validate_params({"federated": section})


# ------------------------------------------------------------------------------------------ engine vs a plain loop
def reference(make_model, clients, averaged, cfg):
    """What the engine must compute, written the plain way: one nn.Module and a fresh torch.optim.SGD per client and
    round, trainer.sgd_epoch for the data order (one generator, client after client), then weighted_average."""
    torch.manual_seed(cfg.seed)
    init = make_model().state_dict()
    models = [make_model() for _ in clients]
    for model in models:
        model.load_state_dict(init)
    keys = list(init) if averaged is None else keys_of(logical_layers(init), averaged)
    sizes = torch.tensor([len(y) for _, y in clients])
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    for _ in range(cfg.rounds):
        for model, (x, y) in zip(models, clients):
            optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
            for _ in range(cfg.local_epochs):
                sgd_epoch(model, optimizer, x, y, cfg.batch_size, generator, F.cross_entropy)
        if keys:
            average = weighted_average([m.state_dict() for m in models], sizes, keys)
            with torch.no_grad():
                for model in models:
                    for k, v in average.items():
                        model.state_dict()[k].copy_(v)
    return [m.state_dict() for m in models]


def toy_config(**kw):
    base = dict(
        n_clients=3,
        hidden=[5, 5],
        layer_groups={"mid": ["fc2"]},
        claim_group="mid",
        rounds=3,
        batch_size=8,
        lr=0.1,
        n_train=10,
        n_test=10,
        sweep_n_train=0,
        local_epochs=2,
        stack_size=2,
    )
    return fd.FederatedConfig(**{**base, **kw})


def max_difference(states, others):
    return max(float((a[k] - b[k]).abs().max()) for a, b in zip(states, others) for k in a)


@pytest.mark.parametrize("averaged", [None, ["fc2"], []])
def test_engine_matches_per_client_sgd(averaged):
    # uneven clients (24, 37, 50 samples: partial last batches, 3 to 7 steps per epoch), 2 local epochs, stacks of 2
    cfg = toy_config()
    make = lambda: fd.MLP(4, [5, 5], 3)
    clients = toy_clients(n=24, step=13)
    engine = train_federated(make, clients, averaged, cfg)
    assert max_difference(engine, reference(make, clients, averaged, cfg)) < 1e-5


def test_engine_trains_many_federations_at_once_like_one_each():
    # three strategies on the same clients (round 1 trained once and copied) and one on other clients, in one stack
    cfg = toy_config(momentum=0.5)
    make = lambda: fd.MLP(4, [5, 5], 3)
    first, second = toy_clients(n=24, step=13), toy_clients(n=20, step=5, seed=5)
    x = torch.cat([c[0] for c in first + second])
    y = torch.cat([c[1] for c in first + second])
    bounds = np.cumsum([0] + [len(c[1]) for c in first + second])
    parts = [np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    runs = [(parts[:3], None, first), (parts[:3], ["fc2"], first), (parts[:3], [], first), (parts[3:], ["fc2"], second)]
    federations = [fd.Federation(str(f), p, averaged, cfg.seed + 1) for f, (p, averaged, _) in enumerate(runs)]
    bank, position = fd.train_federations(make, x, y, federations, cfg)
    for f, (_, averaged, clients) in enumerate(runs):
        states = [bank.state_dict(position[(f, i)]) for i in range(3)]
        assert max_difference(states, reference(make, clients, averaged, cfg)) < 1e-5, f


def test_engine_stops_a_diverging_run_naming_it():
    cfg = toy_config(lr=1e6, momentum=0.9, rounds=3)
    with pytest.raises(TrainingDiverged, match="client"):
        train_federated(lambda: fd.MLP(4, [5, 5], 3), toy_clients(n=24, step=13), None, cfg)


def test_stacked_mlp_refuses_other_architectures():
    with pytest.raises(TypeError, match="StackedMLP"):
        fd.StackedMLP(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3), torch.nn.Tanh()), {}, 2)


# ------------------------------------------------------------------------------------- one repetition, toy data
def toy_images(n_train=600, n_test=300, seed=0):
    """10 classes of 4x4 grey images: each class a fixed random pattern plus noise (learnable in a few steps)."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.randint(40, 216, (10, 1, 4, 4), generator=g).float()

    def draw(n):
        y = torch.arange(n) % 10
        x = (patterns[y] + 25 * torch.randn(n, 1, 4, 4, generator=g)).clamp(0, 255).to(torch.uint8)
        return x, y

    (train_x, train_y), (test_x, test_y) = draw(n_train), draw(n_test)
    return ImageData(
        "toy", [str(c) for c in range(10)], train_x, train_y, test_x, test_y, torch.tensor([0.5]), torch.tensor([0.25])
    )


def small_config(**kw):
    base = dict(
        n_clients=4,
        n_train=400,
        n_test=200,
        sweep_n_train=0,
        hidden=[16, 16],
        classes_per_client=3,
        layer_groups={"middle": ["fc2"], "body": ["fc1", "fc2"]},
        claim_group="body",
        sweep_concentrations=[0.3, 10.0],
        rounds=3,
        batch_size=16,
        lr=0.1,
        eval_subset=20,
    )
    return fd.FederatedConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def repetition():
    torch.set_num_threads(1)
    cfg = small_config().for_repetition(1)
    return cfg, fd.run(cfg, toy_images())


def test_repetition_offsets_every_seed():
    cfg = small_config(seed=3)
    assert cfg.for_repetition(0) == cfg and cfg.for_repetition(2).seed == 203
    images = toy_images()
    y, ty = images.split("train", 400, 3)[1], images.split("test", 200, 3)[1]
    y2, ty2 = images.split("train", 400, 203)[1], images.split("test", 200, 203)[1]
    a = fd.partition(cfg, "dirichlet", y, ty, 10)[0]
    b = fd.partition(cfg.for_repetition(2), "dirichlet", y2, ty2, 10)[0]
    assert any(len(p) != len(q) for p, q in zip(a, b))


def test_run_tables_have_one_row_per_client_round_and_strategy(repetition):
    cfg, t = repetition
    n_strategies = len(cfg.strategies)
    assert len(t["clients"]) == 3 * n_strategies * cfg.n_clients
    assert len(t["rounds"]) == 3 * n_strategies * cfg.rounds * cfg.n_clients
    assert sorted(set(t["rounds"]["round"])) == list(range(1, cfg.rounds + 1))
    assert t["rounds"].n_test.max() <= cfg.eval_subset < t["clients"].n_test.max()  # the rounds' fixed subsets
    assert set(t["sweep"].strategy) == {"full", cfg.claim_group}
    assert len(t["sweep"]) == 2 * len(cfg.sweep_concentrations) * cfg.n_clients
    assert list(t["table1"].strategy[:n_strategies]) == list(cfg.strategies)
    assert t["table1"].claim.sum() == 3 and set(t["table1"][t["table1"].claim].strategy) == {cfg.claim_group}
    assert t["clients"][["test_accuracy", "train_accuracy"]].apply(lambda c: c.between(0, 100)).all().all()
    assert t["clients"].groupby(["split", "strategy"]).n_train.sum().eq(cfg.n_train).all()
    assert t["clients"].groupby(["split", "strategy"]).n_test.sum().eq(cfg.n_test).all()  # all held-out test data
    # full averaging hands every client the same model: the pair's full barrier is exactly 0
    full = t["barriers"][(t["barriers"].strategy == "full") & (t["barriers"].layer_set == "full")]
    assert np.allclose(full.barrier, 0.0, atol=1e-6)


def test_sweep_at_the_main_concentration_is_the_main_dirichlet_run(repetition):
    cfg, t = repetition
    main = t["clients"][(t["clients"].split == "dirichlet") & t["clients"].strategy.isin(["full", cfg.claim_group])]
    sweep = t["sweep"][t["sweep"].concentration == cfg.dirichlet_concentration]
    columns = ["strategy", "client", "n_train", "n_test", "test_accuracy", "train_accuracy"]
    pd.testing.assert_frame_equal(main[columns].reset_index(drop=True), sweep[columns].reset_index(drop=True))


def test_sweep_on_fewer_images_uses_a_prefix_of_the_training_subset():
    cfg = small_config(
        sweep_n_train=200, sweep_concentrations=[1.0], splits=["iid"], layer_groups={"body": ["fc1"]}, rounds=10
    )
    t = fd.run(cfg, toy_images())
    assert t["sweep"].groupby("strategy").n_train.sum().eq(200).all()
    part = t["partition"]
    assert set(part.images) == {400, 200} and part[part.images == 200].n_train.sum() == 200


def test_headline_metrics_and_claim_values(repetition):
    cfg, t = repetition
    m = fd.headline_metrics(t, cfg)
    assert all(isinstance(v, float) and math.isfinite(v) for v in m.values())
    acc = t["clients"].groupby(["split", "strategy"]).test_accuracy.mean()
    for split in cfg.splits:
        assert m[f"gap_claim/{split}"] == pytest.approx(acc[split, "body"] - acc[split, "full"])
        assert m[f"gap_best/{split}"] == max(m[f"gap/{split}/{g}"] for g in cfg.layer_groups)
    assert {k for k in m if k.startswith("sweep_gap/")} == {"sweep_gap/0.3", "sweep_gap/10"}
    assert m["sweep_gap/0.3"] == pytest.approx(m["gap_claim/dirichlet"])
    claims = fd.table1_claims(cfg.layer_groups)  # every split x group of this configuration
    assert [c.measure(m, None) for c in claims] == [m[f"gap/{s}/{g}"] for s in fd.SPLIT_IDS for g in cfg.layer_groups]
    assert fd.fedavg_pair_barrier(m) < 1e-6 and fd.SANITY_CHECKS[0].measure(m, None) == fd.fedavg_pair_barrier(m)


# ------------------------------------------------------------------------------------------- gaps and summaries
def rounds_table(values: dict, seed=None):
    """values[(split, strategy)] = accuracy per round (two clients, +-1 around it)."""
    rows = [
        dict(split=s, strategy=g, round=r + 1, client=c, n_train=100, test_accuracy=a + (1 if c else -1))
        for (s, g), accs in values.items()
        for r, a in enumerate(accs)
        for c in range(2)
    ]
    return pd.DataFrame(rows).assign(**({} if seed is None else {"seed": seed}))


def sweep_table(values: dict, seed=None):
    """values[concentration] = (full accuracy, body accuracy)."""
    rows = [
        dict(concentration=c, strategy=g, client=i, n_train=50, test_accuracy=a)
        for c, pair in values.items()
        for g, a in zip(("full", "body"), pair)
        for i in range(2)
    ]
    return pd.DataFrame(rows).assign(**({} if seed is None else {"seed": seed}))


def test_gap_table_by_hand():
    rounds = rounds_table({("iid", "full"): [50, 60], ("iid", "body"): [52, 58], ("iid", "local"): [40, 45]})
    gaps = fd.gap_table(rounds, sweep_table({0.1: (60, 80), 10: (70, 69)}))
    by_round = gaps[gaps.axis == "round"].set_index("x").gap
    assert by_round.to_dict() == {1: 2.0, 2: -2.0} and set(gaps[gaps.axis == "round"].images) == {200}
    by_conc = gaps[gaps.axis == "concentration"].set_index("x").gap
    assert by_conc.to_dict() == {0.1: 20.0, 10: -1.0}
    assert set(gaps.group) == {"body"}  # local is not a layer group


@pytest.mark.parametrize(
    "sweep, expected",
    [
        (
            {0.1: (60, 80), 1: (70, 75), 10: (70, 69)},
            "beats full averaging by 5.0 to 20.0 points at Dirichlet "
            "concentration <= 1, not above (gap -1.0 points at 10)",
        ),
        ({0.1: (60, 80), 10: (70, 71)}, "at every Dirichlet concentration tried (0.1 to 10), by 1.0 to 20.0 points"),
        ({0.1: (60, 59), 10: (70, 69)}, "does not beat full averaging at any Dirichlet concentration tried"),
        ({0.1: (60, 59), 10: (70, 79)}, "at Dirichlet concentrations [10.0] and not at [0.1]"),
    ],
)
def test_gap_summary_is_computed_from_the_numbers(sweep, expected):
    rounds = rounds_table({("dirichlet", "full"): [50, 60], ("dirichlet", "body"): [62, 63]})
    text = fd.gap_summary(fd.gap_table(rounds, sweep_table(sweep)), threshold=0.0)
    assert expected in text
    assert "gap is +12.0 points after round 1 and +3.0 after round 2" in text
    assert text.endswith("(mean over 1 repetition).")


def test_aggregation_over_seeds(tmp_path, repetition):
    cfg, t = repetition
    for seed, shift in ((0, 0.0), (1, 2.0)):  # seed 1: every accuracy of the claim group 2 points higher
        folder = tmp_path / "results" / "federated" / f"repetition_{seed}"
        bump = lambda df, col, shift=shift: df.assign(**{col: df[col] + shift * (df.strategy == cfg.claim_group)})
        save_table(bump(t["table1"], "mean_accuracy"), folder / "table1.csv")
        save_table(bump(t["rounds"], "test_accuracy"), folder / "rounds.csv")
        save_table(bump(t["sweep"], "test_accuracy"), folder / "sweep.csv")
        save_table(t["barriers"], folder / "barriers.csv")
    table = fd.aggregate_table1(tmp_path, [0, 1])
    body = table[(table.split == "iid") & (table.strategy == cfg.claim_group)].iloc[0]
    one = t["table1"].set_index(["split", "strategy"]).mean_accuracy
    assert body.n_repetitions == 2 and body.sd_accuracy == pytest.approx(math.sqrt(2))
    assert body.mean_gap == pytest.approx(one["iid", "body"] - one["iid", "full"] + 1.0)
    assert (table[table.strategy == "full"].mean_gap == 0).all()
    gaps = fd.aggregate_gaps(tmp_path, [0, 1])
    assert set(gaps.repetition) == {0, 1} and set(gaps[gaps.claim].group) == {cfg.claim_group}
    per_repetition = gaps[gaps.claim & (gaps.axis == "concentration")].pivot(
        index="x", columns="repetition", values="gap"
    )
    assert np.allclose(per_repetition[1] - per_repetition[0], 2.0)
    barriers = fd.aggregate_barriers(tmp_path, [0, 1])
    assert (barriers.n_repetitions == 2).all() and np.allclose(barriers.sd_barrier, 0.0)
    assert "repetitions" in fd.gap_summary(gaps)
    for fig in (fd.plot_table1(table), fd.plot_gaps(gaps), fd.plot_barriers(barriers)):
        assert len(fig.axes) >= 2
        matplotlib.pyplot.close(fig)
