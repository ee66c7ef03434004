"""Table 1 of the paper: federated personalization by averaging all, some, or none of the logical layers.

N clients share one initialization and hold a partition of a Fashion-MNIST subset: IID (every class split evenly),
Dirichlet non-IID (each class split across clients with proportions ~ Dir(concentration)) or pathological (each client
holds `classes_per_client` classes). Every `local_epochs` of plain local SGD, a strategy averages the tensors of a group
of logical layers (weighted by client data size) and hands the average back to every client; the other layers stay
local. Strategies: "full" (FedAvg), one per named layer group in params (e.g. the middle or the outer layers of the
MLP), and "local" (no averaging at all). Each client is scored on its OWN test distribution: the test set is
partitioned with the same per-class shares as the training set.

Expected (paper, CIFAR-10): partial averaging does not beat full averaging, except under the pathological split, where
keeping some layers local (personalization) wins; local-only training wins there too since each client sees 2 classes.
Default profile (MLP, 10 clients, 6k images, 12 rounds), mean client accuracy: IID full 80 % > partial 75-79 % > local
73 %; pathological full 50 % (spread 40) < partial ~ local 99 %; Dirichlet(0.3) partial 84-87 % > full 77 % (unlike the
paper, whose Dirichlet split did not reward partial averaging).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from llmc_utils.config import NonNegativeInt, PositiveFloat, PositiveInt, Section
from llmc_utils.barriers import checkpoint_barriers
from llmc_utils.evaluation import LayerEvaluator
from llmc_utils.evaluation import Evaluator
from llmc_utils.layers import keys_of, logical_layers
from llmc_utils.models import MLP
from llmc_utils.stage import progress
from llmc_utils.trainer import sgd_epoch

SplitName = Literal["iid", "dirichlet", "pathological"]


class FederatedConfig(Section):
    seed: NonNegativeInt = 0  # partitions, initialization and data order all derive from it
    n_clients: int = Field(10, ge=2)
    n_train: PositiveInt = 6000  # random subset of the training set that the clients share out
    n_test: PositiveInt = 5000  # random subset of the test set, partitioned like the training set
    splits: list[SplitName] = Field(default_factory=lambda: ["iid", "dirichlet", "pathological"], min_length=1)
    dirichlet_concentration: PositiveFloat = 0.3  # smaller = more skewed label mix per client
    classes_per_client: PositiveInt = 2  # pathological split
    hidden: list[PositiveInt] = Field(default_factory=lambda: [200, 100, 100, 100], min_length=1)  # MLP widths
    layer_groups: dict[str, list[str]] = Field(  # strategy name -> logical layers averaged; the rest stays local
        default_factory=lambda: {"middle": ["fc2", "fc3", "fc4"], "outer": ["fc1", "fc5"],
                                 "body": ["fc1", "fc2", "fc3", "fc4"]})
    rounds: PositiveInt = 12
    local_epochs: PositiveInt = 1  # local passes over each client's data between two averagings
    batch_size: PositiveInt = 32
    lr: PositiveFloat = 0.02  # 0.05 with momentum 0.9 made a pathological local client diverge
    momentum: float = Field(0.9, ge=0.0, lt=1.0)  # buffers restart each round (a fresh optimizer per round)
    barrier_clients: tuple[NonNegativeInt, NonNegativeInt] = (0, 1)  # the pair whose layer-wise barriers are shown
    # torch threads for this stage (stage.setup applies it, overriding runtime.num_threads): thousands of tiny steps
    # (batch 32, small layers) gain nothing from intra-op threads and lose a lot when cores are shared (measured on 2
    # busy cores: 2 rounds of 10 clients took 45 s of CPU with 2 threads, 1.2 s with 1)
    threads: PositiveInt = 1

    @model_validator(mode="after")
    def _check(self):
        layers = [f"fc{i + 1}" for i in range(len(self.hidden) + 1)]
        for name, group in self.layer_groups.items():
            if name in ("full", "local"):
                raise ValueError(f"layer_groups.{name}: 'full' and 'local' are built-in strategies, pick another name")
            unknown = [layer for layer in group if layer not in layers]
            if unknown or not group:
                raise ValueError(f"layer_groups.{name} = {group}: needs layers among {layers}, unknown: {unknown}")
        if max(self.barrier_clients) >= self.n_clients or len(set(self.barrier_clients)) != 2:
            raise ValueError(f"barrier_clients = {self.barrier_clients}: two different clients below n_clients")
        if self.n_train < self.n_clients or self.n_test < self.n_clients:
            raise ValueError("n_train and n_test must be at least n_clients")
        return self

    @property
    def strategies(self) -> dict[str, list[str] | None]:
        """Strategy name -> averaged layers; None = all layers (FedAvg), [] = none (local only)."""
        return {"full": None, **self.layer_groups, "local": []}


# --------------------------------------------------------------------------------------------------------- partitions

SPLIT_IDS = {"iid": 0, "dirichlet": 1, "pathological": 2}  # stable per-split seed offsets (str hashes are salted)


def class_shares(split: SplitName, n_clients: int, n_classes: int, rng: np.random.Generator,
                 class_counts: np.ndarray | None = None, concentration: float = 0.3, classes_per_client: int = 2,
                 min_size: int = 10) -> np.ndarray:
    """(n_clients, n_classes) matrix: the share of each class's samples that each client gets; columns sum to 1."""
    if split == "iid":
        return np.full((n_clients, n_classes), 1.0 / n_clients)
    if split == "dirichlet":
        for _ in range(1000):  # redraw until every client has enough samples to train on (the usual practice)
            shares = rng.dirichlet(np.full(n_clients, concentration), size=n_classes).T
            if class_counts is None:
                return shares
            sizes = sum(round_shares(shares[:, c], int(n)) for c, n in enumerate(class_counts))  # as assign() cuts
            if sizes.min() >= min_size:
                return shares
        raise ValueError(f"dirichlet split: no draw gave every client {min_size} samples; raise the concentration")
    if split == "pathological":
        if classes_per_client > n_classes or n_clients * classes_per_client < n_classes:
            raise ValueError(f"pathological split needs classes_per_client <= {n_classes} and n_clients x "
                             f"classes_per_client >= {n_classes} (every sample needs an owner); got "
                             f"{n_clients} x {classes_per_client}")
        order = rng.permutation(n_classes)
        held = np.zeros((n_clients, n_classes))
        for i in range(n_clients):  # consecutive slots of a cyclic class order: each class held equally often
            for j in range(classes_per_client):
                held[i, order[(i * classes_per_client + j) % n_classes]] = 1.0
        return held / held.sum(0, keepdims=True)
    raise ValueError(f"unknown split {split!r}; allowed: {list(SPLIT_IDS)}")


def round_shares(shares: np.ndarray, n: int) -> np.ndarray:
    """Integer counts summing to exactly n, proportional to `shares` (largest remainder, ties to the lower index)."""
    exact = shares / shares.sum() * n
    counts = np.floor(exact).astype(int)
    remainder = exact - counts
    counts[np.argsort(-remainder, kind="stable")[: n - counts.sum()]] += 1
    return counts


def assign(labels: np.ndarray, shares: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Split sample indices among clients: each class's (shuffled) indices cut by round_shares of its column."""
    parts: list[list[np.ndarray]] = [[] for _ in range(shares.shape[0])]
    for c in range(shares.shape[1]):
        idx = rng.permutation(np.flatnonzero(labels == c))
        bounds = np.cumsum(round_shares(shares[:, c], len(idx)))[:-1]
        for i, chunk in enumerate(np.split(idx, bounds)):
            parts[i].append(chunk)
    return [np.sort(np.concatenate(p)) for p in parts]


def partition(cfg: FederatedConfig, split: SplitName, train_y: torch.Tensor, test_y: torch.Tensor,
              n_classes: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Train and test indices per client; the test set gets the same per-class shares, hence the same label mix."""
    rng = np.random.default_rng([cfg.seed, SPLIT_IDS[split]])
    train_labels, test_labels = train_y.numpy(), test_y.numpy()
    shares = class_shares(split, cfg.n_clients, n_classes, rng, np.bincount(train_labels, minlength=n_classes),
                          cfg.dirichlet_concentration, cfg.classes_per_client, min_size=cfg.batch_size)
    return assign(train_labels, shares, rng), assign(test_labels, shares, rng)


def label_counts(labels: torch.Tensor, parts: list[np.ndarray], n_classes: int) -> np.ndarray:
    """(n_clients, n_classes) label counts of a partition."""
    return np.stack([np.bincount(labels.numpy()[p], minlength=n_classes) for p in parts])


# ------------------------------------------------------------------------------------------------- training rounds
def weighted_average(states: list[dict[str, torch.Tensor]], weights: torch.Tensor,
                     keys: list[str]) -> dict[str, torch.Tensor]:
    """sum_i w_i * state_i[key] / sum_i w_i for each key (FedAvg's aggregation, weights = client data sizes)."""
    w = weights.double() / weights.double().sum()
    return {k: sum(wi * s[k].double() for wi, s in zip(w, states)).to(states[0][k].dtype) for k in keys}


def train_federated(make_model, clients: list[tuple[torch.Tensor, torch.Tensor]], averaged: list[str] | None,
                    cfg: FederatedConfig, desc: str = "federated") -> list[dict[str, torch.Tensor]]:
    """Rounds of local SGD on every client, then averaging of the `averaged` logical layers (None = all, [] = none).

    All clients start from one initialization (seed), and the data order is the same for every strategy, so the
    strategies differ only in what they average.
    """
    torch.manual_seed(cfg.seed)
    init = make_model().state_dict()
    models = [make_model() for _ in clients]
    for model in models:
        model.load_state_dict(init)
    layers = logical_layers(init)
    keys = list(init) if averaged is None else keys_of(layers, averaged)
    sizes = torch.tensor([len(y) for _, y in clients])
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    bar = progress(total=cfg.rounds * len(clients), desc=desc, leave=False)
    for _ in range(cfg.rounds):
        for model, (x, y) in zip(models, clients):
            optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
            model.train()
            for _ in range(cfg.local_epochs):
                sgd_epoch(model, optimizer, x, y, cfg.batch_size, generator, F.cross_entropy)
            bar.update(1)
        if keys:
            averaged_state = weighted_average([m.state_dict() for m in models], sizes, keys)
            with torch.no_grad():
                for model in models:
                    state = model.state_dict()  # shares storage with the parameters: copy_ writes into the model
                    for k, v in averaged_state.items():
                        state[k].copy_(v)
    bar.close()
    return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in models]


# ------------------------------------------------------------------------------------------------------ experiment
def run(cfg: FederatedConfig, images) -> dict[str, pd.DataFrame]:
    """Every split x strategy: per-client accuracy on its own test distribution, partition counts, pair barriers."""
    train_x, train_y = images.split("train", cfg.n_train, cfg.seed)
    test_x, test_y = images.split("test", cfg.n_test, cfg.seed)
    n_classes = len(images.classes)

    def make_model():
        return MLP(train_x[0].numel(), cfg.hidden, n_classes)

    clients_rows, count_rows, barrier_rows = [], [], []
    for split in cfg.splits:
        train_parts, test_parts = partition(cfg, split, train_y, test_y, n_classes)
        for i, (tr, te) in enumerate(zip(train_parts, test_parts)):
            for c in range(n_classes):
                count_rows.append(dict(split=split, client=i, label=c, n_train=int((train_y[tr] == c).sum()),
                                       n_test=int((test_y[te] == c).sum())))
        clients = [(train_x[p], train_y[p]) for p in train_parts]
        for strategy, averaged in cfg.strategies.items():
            states = train_federated(make_model, clients, averaged, cfg, desc=f"{split}/{strategy}")
            evaluator = Evaluator(make_model(), {i: (test_x[p], test_y[p]) for i, p in enumerate(test_parts)})
            for i, state in enumerate(states):
                m = evaluator.split_metrics(state, i)
                clients_rows.append(dict(split=split, strategy=strategy, client=i, n_train=len(train_parts[i]),
                                         n_test=len(test_parts[i]), test_loss=m["loss"],
                                         test_accuracy=100.0 - m["error"]))
            a, b = cfg.barrier_clients
            pair = np.concatenate([test_parts[a], test_parts[b]])
            pair_evaluator = LayerEvaluator(make_model(), {"test": (test_x[pair], test_y[pair])})
            for row in checkpoint_barriers(pair_evaluator, cfg.rounds, states[a], states[b],
                                           logical_layers(states[a]), alphas=[0.5], bases=["A", "B"]):
                barrier_rows.append(dict(row, split=split, strategy=strategy))  # evaluated on the pair's test data
    return dict(clients=pd.DataFrame(clients_rows), partition=pd.DataFrame(count_rows),
                barriers=pd.DataFrame(barrier_rows))


def table1(clients: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Tidy Table 1: split x strategy -> mean and std over clients of the accuracy on their own test data."""
    table = (clients.groupby(["split", "strategy"], sort=False)["test_accuracy"]
             .agg(mean_accuracy="mean", std_accuracy="std", n_clients="count").reset_index())
    table["strategy"] = pd.Categorical(table["strategy"], order, ordered=True)
    return table.sort_values(["split", "strategy"], key=lambda s: s if s.name == "strategy" else
                             s.map({k: v for v, k in enumerate(SPLIT_IDS)})).reset_index(drop=True)
