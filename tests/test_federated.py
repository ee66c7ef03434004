"""Federated splits, weighted layer-group averaging and strategies on toy problems with hand-known answers."""

import numpy as np
import pytest
import torch

from llmc_utils import federated as fd
from llmc_utils.config import ParamsError, validate_params

N_CLASSES = 10


def labels(n_per_class=37, n_classes=N_CLASSES):
    return torch.arange(n_classes).repeat_interleave(n_per_class)[torch.randperm(n_per_class * n_classes,
                                                                                  generator=torch.Generator().manual_seed(0))]


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


def test_weighted_average_of_a_layer_group_by_hand():
    states = [{"a.weight": torch.tensor([1.0, 2.0]), "b.weight": torch.tensor([0.0])},
              {"a.weight": torch.tensor([3.0, 6.0]), "b.weight": torch.tensor([8.0])}]
    avg = fd.weighted_average(states, torch.tensor([100, 300]), ["a.weight"])  # weights 1/4 and 3/4
    assert list(avg) == ["a.weight"]
    assert torch.allclose(avg["a.weight"], torch.tensor([2.5, 5.0]))


def toy_clients(n_clients=3, n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n + 8 * i, 1, 2, 2, generator=g), torch.randint(0, 3, (n + 8 * i,), generator=g))
            for i in range(n_clients)]


@pytest.mark.parametrize("averaged, shared", [(None, {"fc1", "fc2", "fc3"}), (["fc2"], {"fc2"}), ([], set())])
def test_strategies_share_exactly_the_averaged_layers(averaged, shared):
    cfg = fd.FederatedConfig(n_clients=3, hidden=[5, 5], layer_groups={"mid": ["fc2"]}, rounds=2, batch_size=8,
                             lr=0.1, n_train=10, n_test=10)
    states = fd.train_federated(lambda: fd.MLP(4, [5, 5], 3), toy_clients(), averaged, cfg)
    for layer in ("fc1", "fc2", "fc3"):
        same = all(torch.equal(states[0][f"{layer}.weight"], s[f"{layer}.weight"]) for s in states[1:])
        assert same == (layer in shared), layer


@pytest.mark.parametrize("section, message", [
    ({"layer_groups": {"middle": ["fc9"]}}, "unknown"),
    ({"layer_groups": {"full": ["fc1"]}}, "built-in"),
    ({"barrier_clients": [0, 10]}, "barrier_clients"),
    ({"splits": ["non-iid"]}, "splits"),
    ({"dirichlet_concentration": 0}, "dirichlet_concentration"),
    ({"n_clients": 1}, "n_clients"),
    ({"rounds": 0}, "rounds"),
])
def test_config_errors_name_the_key(section, message):
    with pytest.raises(ParamsError, match=message):
        validate_params({"federated": section})
