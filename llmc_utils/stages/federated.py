"""Table 1 of the paper: federated personalization by averaging all, some, or none of the logical layers.

N clients share one initialization and hold a partition of a Fashion-MNIST subset: IID (every class split evenly),
Dirichlet non-IID (each class split across clients with proportions ~ Dir(concentration)) or pathological (each client
holds `classes_per_client` classes). Every `local_epochs` of plain local SGD, a strategy averages the tensors of a group
of logical layers (weighted by client data size) and hands the average back to every client; the other layers stay
local. Strategies: "full" (FedAvg), one per named layer group in params (e.g. the middle or the outer layers of the
MLP), and "local" (no averaging at all). Each client is scored on its OWN test distribution: the test set (held out,
never trained on) is partitioned with the same per-class shares as the training set; "train" accuracies are measured
on each client's own training images.

Claims (`CLAIMS`, paper: partial averaging does not beat full averaging, except under pathological non-IID): every
layer group the stage trains is compared with full averaging, split by split, as the paper's table compares groups
(docs/claims.md). gap = mean client accuracy of the group minus that of full averaging, in points, one value per
repetition (mean claims). A gap counts only beyond a margin, the seed-to-seed standard deviation of full averaging's
accuracy (a tie between the two is seed noise, not a coin flip between two verdicts); the margin is estimated from the
repetitions, so it enters with its chi-square interval, each verdict against the bound that makes it hardest. IID and
Dirichlet: gap <= report.partial_minus_full_points + margin ("does not beat"); pathological: gap > it ("beats"). The
null sets every gap exactly at the margin, with the measured seed noise. `claim_group` (params) is the group the
diagnostics follow: the one closest to the authors' active group, which averages the classifier head with a few body
layers (default "outer": the first layer and the head). `gap_best/<split>` (the best group per repetition) is biased
upward by the choice of the max: a description only, never a claim.

Where the claims fail, two diagnostics locate it, both inside each repetition:
* `rounds`: the accuracy of every main run after every round (on a fixed random subset of `eval_subset` of each
  client's test images, to keep it cheap): the gap as a function of the number of rounds;
* `sweep`: full averaging and the claim group at each Dirichlet concentration of `sweep_concentrations`: the gap as a
  function of how skewed the label mix is. To fit the stage's time budget the sweep's clients may share fewer images
  (`sweep_n_train`, the first ones of the training subset); with sweep_n_train = n_train, the sweep run at the main
  concentration is the main Dirichlet run, trained once.
`gap_summary` turns both into one computed sentence.

Repetition r derives every seed (training and test subsets, partitions, the shared initialization, the data order) from
config.repetition_seed(seed, r) (`FederatedConfig.for_repetition`).

Engine: all clients of all runs (split x strategy, plus the sweep) are one stack of MLPs (StackedMLP), trained in
stacks of `stack_size` models with one batched matrix product per layer and step, and a hand-written backward pass
that accumulates the weight gradient straight into the momentum buffer; that is what makes a repetition fit its CPU
budget. Each model still does exactly what per-client SGD does: its own data order (one torch.Generator per run,
drawn client after client as a sequential loop would), its own partial last batch, its own momentum buffer restarted
every round (a fresh optimizer per round); models whose round is over stop updating while the others go on. Before
the first averaging the strategies of one partition train identical models, so round 1 is trained once per partition
and copied. tests/test_federated.py checks the engine against a plain per-client torch.optim.SGD loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from llmc_utils.core import plotting
from llmc_utils.core.claims import Claim, DataThreshold, Null, Relation, SanityCheck, sd_interval, spread
from llmc_utils.core.config import NonNegativeInt, PositiveFloat, PositiveInt, Section, Seed
from llmc_utils.core.evaluation import LayerEvaluator, checkpoint_barriers
from llmc_utils.core.io import read_repetition_tables
from llmc_utils.core.layers import keys_of, logical_layers
from llmc_utils.core.models import MLP
from llmc_utils.core.runtime import progress
from llmc_utils.core.trainer import check_finite, check_not_chance, perturb_init
from llmc_utils.stages.spec import EVALUATION, RUNTIME, Figure, StageSpec

STAGE = "federated"
SplitName = Literal["iid", "dirichlet", "pathological"]
PartitionKey = tuple[SplitName, float | None, int]  # (split, concentration or None, training images shared out)
RunKey = tuple[SplitName, float | None, int, str]  # (*partition key, strategy)
FULL, LOCAL = "full", "local"


class FederatedConfig(Section):
    seed: Seed = 0  # subsets, partitions, initialization and data order all derive from it (and from r)
    n_clients: int = Field(10, ge=2)
    n_train: PositiveInt = 4000  # random subset of the training set that the clients share out
    n_test: PositiveInt = 5000  # random subset of the test set, partitioned like the training set
    splits: list[SplitName] = Field(["iid", "dirichlet", "pathological"], min_length=1)
    dirichlet_concentration: PositiveFloat = 0.3  # smaller = more skewed label mix per client
    classes_per_client: PositiveInt = 2  # pathological split
    hidden: list[PositiveInt] = Field(default_factory=lambda: [200, 100, 100, 100], min_length=1)  # MLP widths
    layer_groups: dict[str, list[str]] = Field(  # strategy name -> logical layers averaged; the rest stays local
        default_factory=lambda: {
            "middle": ["fc2", "fc3", "fc4"],
            "outer": ["fc1", "fc5"],
            "body": ["fc1", "fc2", "fc3", "fc4"],
        }
    )
    claim_group: str = "outer"  # the layer group the claims compare with full averaging (rule: module docstring)
    # Dirichlet concentrations of the sweep (full averaging and claim_group only); [] = no sweep
    sweep_concentrations: list[PositiveFloat] = Field(default_factory=lambda: [0.1, 1.0, 10.0])
    sweep_n_train: NonNegativeInt = 2000  # images the sweep's clients share (the first of the subset); 0 = n_train
    # per client, the fixed random subsets behind the cheap numbers: own test images for the rounds table, own training
    # images for the train accuracy (Table 1's test accuracy uses all own test images); 0 = all
    eval_subset: NonNegativeInt = 100
    rounds: PositiveInt = 10
    local_epochs: PositiveInt = 1  # local passes over each client's data between two averagings
    batch_size: PositiveInt = 32
    lr: PositiveFloat = 0.02  # 0.05 with momentum 0.9 made a pathological local client diverge
    momentum: float = Field(0.9, ge=0.0, lt=1.0)  # buffers restart each round (a fresh optimizer per round)
    barrier_clients: tuple[NonNegativeInt, NonNegativeInt] = (0, 1)  # the pair whose layer-wise barriers are shown
    # models trained side by side in one batched step; all of a stack's steps of a round run before the next stack's,
    # so its weights stay in cache (speed only: on 2 busy cores, stacks of a few dozen models took less time per
    # model and step than either one stack of all the models or one model at a time)
    stack_size: PositiveInt = 32
    # torch threads for this stage (stage.setup applies it, overriding runtime.num_threads)
    threads: PositiveInt = 1

    @model_validator(mode="after")
    def _check(self):
        layers = [f"fc{i + 1}" for i in range(len(self.hidden) + 1)]
        for name, group in self.layer_groups.items():
            if name in (FULL, LOCAL):
                raise ValueError(f"layer_groups.{name}: 'full' and 'local' are built-in strategies, pick another name")
            unknown = [layer for layer in group if layer not in layers]
            if unknown or not group:
                raise ValueError(f"layer_groups.{name} = {group}: needs layers among {layers}, unknown: {unknown}")
        if self.claim_group not in self.layer_groups:
            raise ValueError(
                f"claim_group = {self.claim_group!r} must be one of layer_groups {list(self.layer_groups)}"
            )
        if len(set(self.sweep_concentrations)) != len(self.sweep_concentrations):
            raise ValueError(f"sweep_concentrations must not repeat, got {self.sweep_concentrations}")
        if max(self.barrier_clients) >= self.n_clients or len(set(self.barrier_clients)) != 2:
            raise ValueError(f"barrier_clients = {self.barrier_clients}: two different clients below n_clients")
        if self.n_train < self.n_clients or self.n_test < self.n_clients:
            raise ValueError("n_train and n_test must be at least n_clients")
        if self.sweep_n_train and not self.n_clients <= self.sweep_n_train <= self.n_train:
            raise ValueError(f"sweep_n_train = {self.sweep_n_train} must lie in [n_clients, n_train] (0 = n_train)")
        return self

    @property
    def strategies(self) -> dict[str, list[str] | None]:
        """Strategy name -> averaged layers; None = all layers (FedAvg), [] = none (local only)."""
        return {FULL: None, **self.layer_groups, LOCAL: []}


# --------------------------------------------------------------------------------------------------------- partitions

SPLIT_IDS = {"iid": 0, "dirichlet": 1, "pathological": 2}  # stable per-split seed offsets (str hashes are salted)


def class_shares(
    split: SplitName,
    n_clients: int,
    n_classes: int,
    rng: np.random.Generator,
    class_counts: np.ndarray | None = None,
    concentration: float = 0.3,
    classes_per_client: int = 2,
    min_size: int = 10,
) -> np.ndarray:
    """(n_clients, n_classes) matrix: the share of each class's samples that each client gets; columns sum to 1."""
    if split == "iid":
        return np.full((n_clients, n_classes), 1.0 / n_clients)
    if split == "dirichlet":
        for _ in range(1000):  # redraw until every client has enough samples to train on (the usual practice)
            shares = rng.dirichlet(np.full(n_clients, concentration), size=n_classes).T
            if class_counts is None:
                return shares
            # client sizes, as assign() cuts
            sizes = np.sum([round_shares(shares[:, c], int(n)) for c, n in enumerate(class_counts)], axis=0)
            if sizes.min() >= min_size:
                return shares
        raise ValueError(
            f"dirichlet split (concentration {concentration}): no draw gave every client {min_size} "
            "samples; raise the concentration"
        )
    if split == "pathological":
        if classes_per_client > n_classes or n_clients * classes_per_client < n_classes:
            raise ValueError(
                f"pathological split needs classes_per_client <= {n_classes} and n_clients x "
                f"classes_per_client >= {n_classes} (every sample needs an owner); got "
                f"{n_clients} x {classes_per_client}"
            )
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


def partition(
    cfg: FederatedConfig,
    split: SplitName,
    train_y: torch.Tensor,
    test_y: torch.Tensor,
    n_classes: int,
    concentration: float | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Train and test indices per client; the test set gets the same per-class shares, hence the same label mix.
    `concentration` overrides cfg.dirichlet_concentration (the sweep); the random stream depends on (seed, split)
    only, so the sweep's partition at the main concentration is the main Dirichlet partition."""
    rng = np.random.default_rng([cfg.seed, SPLIT_IDS[split]])
    train_labels, test_labels = train_y.numpy(), test_y.numpy()
    shares = class_shares(
        split,
        cfg.n_clients,
        n_classes,
        rng,
        np.bincount(train_labels, minlength=n_classes),
        cfg.dirichlet_concentration if concentration is None else concentration,
        cfg.classes_per_client,
        min_size=cfg.batch_size,
    )
    return assign(train_labels, shares, rng), assign(test_labels, shares, rng)


def label_counts(labels: torch.Tensor, parts: list[np.ndarray], n_classes: int) -> np.ndarray:
    """(n_clients, n_classes) label counts of a partition."""
    return np.stack([np.bincount(labels.numpy()[p], minlength=n_classes) for p in parts])


# ------------------------------------------------------------------------------------------------- training rounds
@dataclass
class Federation:
    """One training run: clients (index arrays into the shared training / test sets) and what they average.

    `averaged`: logical layers averaged after every round (None = all, [] = none). Runs with equal `data_seed` and
    equal client sizes see the same data order, so strategies on one partition differ only in what they average."""

    name: str
    train_parts: list[np.ndarray]
    averaged: list[str] | None
    data_seed: int
    test_parts: list[np.ndarray] = field(default_factory=list)


class StackedMLP:
    """M copies of an MLP (models.MLP: Flatten, then Linear, ReLU, ..., Linear) as stacked tensors: weight
    (M, in, out) and bias (M, 1, out) per Linear, every copy starting from `init`, plus a momentum buffer per tensor.

    `sgd_step(sl, x, y, w)` is one SGD step of the copies in slice `sl`, each on its own batch, written out by hand:
    forward with one baddbmm per layer, backward of the weighted cross-entropy, and torch.optim.SGD's momentum update
    (buf = momentum * buf + grad; p -= lr * buf) with the weight gradient accumulated straight into the buffer
    (buf.baddbmm_(h^T, dz, beta=momentum)): the gradient is never stored, which saves a pass over the weights."""

    def __init__(self, model: nn.Module, init: dict[str, torch.Tensor], n_models: int):
        kinds = [type(m) for m in model.children()]
        n = (len(kinds) - 2) // 2
        if kinds != [nn.Flatten] + [nn.Linear, nn.ReLU] * n + [nn.Linear]:
            raise TypeError(f"StackedMLP needs Flatten, (Linear, ReLU) x n, Linear; got {kinds}")
        self.linears = [name for name, m in model.named_children() if isinstance(m, nn.Linear)]
        self.weights = [
            init[f"{name}.weight"].T.unsqueeze(0).repeat(n_models, 1, 1).contiguous() for name in self.linears
        ]
        self.biases = [init[f"{name}.bias"].view(1, 1, -1).repeat(n_models, 1, 1).contiguous() for name in self.linears]
        self.buffers = [torch.zeros_like(t) for t in self.weights + self.biases]
        self.n_models = n_models

    @property
    def params(self) -> dict[str, torch.Tensor]:
        """State-dict key -> stacked tensor (weights in (M, in, out) layout)."""
        return {
            **{f"{n}.weight": w for n, w in zip(self.linears, self.weights)},
            **{f"{n}.bias": b for n, b in zip(self.linears, self.biases)},
        }

    def restart_momentum(self) -> None:
        for buf in self.buffers:
            buf.zero_()

    def sgd_step(
        self, sl: slice, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, lr: float, momentum: float
    ) -> torch.Tensor:
        """One step of copies sl on their batches x (k, B, ...), labels y (k, B), sample weights w (k, B) (1 / batch
        size, 0 for padding): each copy's loss is the w-weighted sum of its cross-entropies. Returns those losses."""
        weights = [t[sl] for t in self.weights]
        biases = [t[sl] for t in self.biases]
        hs = [x.flatten(2)]  # inputs of each Linear
        for i, (weight, bias) in enumerate(zip(weights, biases)):
            z = torch.baddbmm(bias, hs[-1], weight)
            hs.append(torch.relu(z) if i < len(weights) - 1 else z)
        log_p = torch.log_softmax(hs.pop(), -1)
        losses = (-log_p.gather(-1, y.unsqueeze(-1)).squeeze(-1) * w).sum(1)
        dz = log_p.exp_().scatter_add_(-1, y.unsqueeze(-1), torch.full_like(log_p[..., :1], -1.0))
        dz.mul_(w.unsqueeze(-1))  # d(sum of weighted losses) / d logits
        n = len(weights)
        buf_w, buf_b = [t[sl] for t in self.buffers[:n]], [t[sl] for t in self.buffers[n:]]
        for i in reversed(range(n)):
            buf_w[i].baddbmm_(hs[i].transpose(1, 2), dz, beta=momentum)
            buf_b[i].mul_(momentum).add_(dz.sum(1, keepdim=True))
            if i:
                dz = torch.bmm(dz, weights[i].transpose(1, 2)).mul_(hs[i] > 0)
        torch._foreach_add_(weights + biases, buf_w + buf_b, alpha=-lr)
        return losses

    def forward_one(self, m: int, x: torch.Tensor) -> torch.Tensor:
        """Logits (n, C) of copy m on inputs x (n, ...)."""
        h = x.flatten(1)
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            h = torch.addmm(bias[m, 0], h, weight[m])
            if i < len(self.weights) - 1:
                h = torch.relu(h)
        return h

    def state_dict(self, m: int) -> dict[str, torch.Tensor]:
        """Copy m as an nn.Module state dict (its own tensors, nn.Linear layout)."""
        out = {}
        for name, weight, bias in zip(self.linears, self.weights, self.biases):
            out[f"{name}.weight"] = weight[m].T.contiguous()
            out[f"{name}.bias"] = bias[m, 0].clone()
        return out


@torch.inference_mode()
def accuracy_and_loss(
    bank: StackedMLP, m: int, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2048
) -> tuple[float, float]:
    """(accuracy in %, mean cross-entropy) of copy m on (x, y), summed exactly over samples."""
    loss, correct = 0.0, 0
    for start in range(0, len(y), batch_size):
        logits = bank.forward_one(m, x[start : start + batch_size])
        yb = y[start : start + batch_size]
        loss += float(F.cross_entropy(logits, yb, reduction="sum").double())
        correct += int((logits.argmax(1) == yb).sum())
    return 100.0 * correct / len(y), loss / len(y)


def train_federations(
    make_model: Callable[[], nn.Module],
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    federations: Sequence[Federation],
    cfg: FederatedConfig,
    after_round: Callable[[int, StackedMLP, dict[tuple[int, int], int]], None] | None = None,
    desc: str = "federated",
) -> tuple[StackedMLP, dict[tuple[int, int], int]]:
    """Train every federation for cfg.rounds rounds of cfg.local_epochs local SGD epochs, each followed by the
    weighted averaging of its `averaged` layers. Returns the stacked models and position[(federation, client)].

    Every client of every federation starts from one initialization: torch.manual_seed(cfg.seed), then make_model()
    (perturbed by trainer.perturb_init when the test suite asks for it). `after_round(round, bank, position)` is
    called after each round's averaging (round = 1..rounds).
    """
    torch.manual_seed(cfg.seed)
    model = perturb_init(make_model())
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    layers = logical_layers(init)
    members = [(f, i) for f, fed in enumerate(federations) for i in range(len(fed.train_parts))]
    sizes = np.array([len(federations[f].train_parts[i]) for f, i in members])
    if sizes.min() < 1:
        raise ValueError("every client needs at least one training sample")
    batches = -(-sizes // cfg.batch_size)  # per epoch
    steps = cfg.local_epochs * batches
    # Until the first averaging, federations with the same clients and data seed train identical models (one shared
    # initialization): round 1 trains the first of each such family and copies it to the others.
    family: dict[tuple, int] = {}
    first_of = [
        family.setdefault((fed.data_seed, tuple(map(tuple, fed.train_parts))), f) for f, fed in enumerate(federations)
    ]
    copy = np.array([first_of[f] != f for f, _ in members])
    # positions: the first of each family, then the copies; within each, most steps first, so that the models of a
    # stack that still train at step t are a prefix of it
    order = np.lexsort((-steps, copy))
    position = {members[j]: p for p, j in enumerate(order)}
    n_models, n_ticks, bsz = len(members), int(steps.max()), cfg.batch_size
    sorted_steps = steps[order]
    n_first = int((~copy).sum())
    stacks = [
        (a, min(a + cfg.stack_size, end))
        for begin, end in ((0, n_first), (n_first, n_models))
        for a in range(begin, end, cfg.stack_size)
    ]
    copies = [(position[(f, i)], position[(first_of[f], i)]) for f, i in members if first_of[f] != f]
    bank = StackedMLP(model, init, n_models)
    params = bank.params
    parts = {(f, i): torch.as_tensor(federations[f].train_parts[i], dtype=torch.long) for f, i in members}
    averaging = []  # (positions in client order, client weights, keys)
    for f, fed in enumerate(federations):
        keys = list(init) if fed.averaged is None else keys_of(layers, fed.averaged)
        if keys:
            pos = torch.tensor([position[(f, i)] for i in range(len(fed.train_parts))])
            weights = torch.tensor([len(p) for p in fed.train_parts], dtype=torch.float64)
            averaging.append((pos, weights / weights.sum(), keys))
    generators = [torch.Generator().manual_seed(fed.data_seed) for fed in federations]
    bar = progress(total=cfg.rounds, desc=desc, leave=False)
    for round_index in range(1, cfg.rounds + 1):
        # this round's batches: model m, tick t -> sample indices (padded with index 0 at weight 0)
        index = torch.zeros(n_models, n_ticks, bsz, dtype=torch.long)
        weight = torch.zeros(n_models, n_ticks, bsz)
        for j, (f, i) in enumerate(members):  # client after client, epoch after epoch: a sequential loop's draws
            p, n, nb = position[(f, i)], int(sizes[j]), int(batches[j])
            for epoch in range(cfg.local_epochs):
                order_i = parts[(f, i)][torch.randperm(n, generator=generators[f])]
                flat_idx = torch.zeros(nb * bsz, dtype=torch.long)
                flat_w = torch.zeros(nb * bsz)
                flat_idx[:n] = order_i
                flat_w[:n] = 1.0
                rows = slice(epoch * nb, (epoch + 1) * nb)
                index[p, rows] = flat_idx.view(nb, bsz)
                weight[p, rows] = flat_w.view(nb, bsz) / flat_w.view(nb, bsz).sum(1, keepdim=True)
        bank.restart_momentum()  # a fresh optimizer per round
        last_loss = torch.zeros(n_models)
        with torch.no_grad():
            for start, stop in stacks:  # a stack's models take all their steps of the round before the next stack's
                if round_index == 1 and start >= n_first:
                    break
                stack_steps = sorted_steps[start:stop]
                for t in range(int(stack_steps[0])):
                    sl = slice(start, start + int((stack_steps > t).sum()))
                    idx = index[sl, t]
                    last_loss[sl] = bank.sgd_step(sl, train_x[idx], train_y[idx], weight[sl, t], cfg.lr, cfg.momentum)
            if round_index == 1 and copies:
                to, source = map(torch.tensor, zip(*copies))
                for tensor in bank.weights + bank.biases:
                    tensor[to] = tensor[source]
                last_loss[to] = last_loss[source]
        bad = [m for m in members if not math.isfinite(float(last_loss[position[m]]))]
        if bad:
            f, i = bad[0]
            check_finite(
                last_loss[position[(f, i)]], f"{desc}: {federations[f].name}, client {i} (seed {cfg.seed})", round_index
            )
        with torch.no_grad():
            for pos, w, keys in averaging:
                for key in keys:
                    stacked = params[key][pos].double()
                    mean = torch.tensordot(w, stacked, dims=1).to(params[key].dtype)
                    params[key][pos] = mean.unsqueeze(0).expand_as(params[key][pos])
        if after_round is not None:
            after_round(round_index, bank, position)
        bar.update(1)
    bar.close()
    return bank, position


# ------------------------------------------------------------------------------------------------------ experiment
def run(cfg: FederatedConfig, images) -> dict[str, pd.DataFrame]:
    """One repetition (cfg = section.for_repetition(r)): every split x strategy, plus the concentration sweep.

    Tables:
    * clients: per client of every main run, the final test loss / accuracy on its own (held-out) test data and the
      accuracy on a fixed random subset of `eval_subset` of its own training images;
    * rounds: per client of every main run, the test accuracy after every round, on a fixed random subset of
      `eval_subset` of its own test images (the final Table 1 numbers use all of them);
    * sweep: like clients, for full averaging and claim_group at every sweep concentration; the sweep's clients share
      the first `sweep_n_train` images of the training subset;
    * partition: label counts per client of every partition (sweep_n_train = images shared out; concentration =
      NaN for the iid and pathological splits);
    * barriers: layer-wise barriers between barrier_clients at the end, on the union of their test data;
    * table1: mean and sd over clients per split x strategy.
    A sweep run identical to a main run (same images, concentration and strategy) is trained once."""
    train_x, train_y = images.split("train", cfg.n_train, cfg.seed)
    test_x, test_y = images.split("test", cfg.n_test, cfg.seed)
    n_classes = len(images.classes)
    n_sweep = cfg.sweep_n_train or cfg.n_train  # the sweep's images: train_x[:n_sweep] (a prefix of a random subset)

    def make_model():
        return MLP(train_x[0].numel(), cfg.hidden, n_classes)

    # partition key: (split, concentration or None, number of training images shared out)
    main_keys: list[PartitionKey] = [
        (s, cfg.dirichlet_concentration if s == "dirichlet" else None, cfg.n_train) for s in cfg.splits
    ]
    sweep_keys: list[PartitionKey] = [("dirichlet", float(c), n_sweep) for c in cfg.sweep_concentrations]
    partitions: dict[PartitionKey, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    for key in main_keys + sweep_keys:
        if key not in partitions:
            partitions[key] = partition(cfg, key[0], train_y[: key[2]], test_y, n_classes, concentration=key[1])
    runs: dict[RunKey, Federation] = {}  # (*partition key, strategy) -> run
    main: list[RunKey] = []  # (*partition key, strategy)
    sweep: list[RunKey] = []
    for key in main_keys:
        for strategy, averaged in cfg.strategies.items():
            main.append((*key, strategy))
            runs.setdefault(
                main[-1],
                Federation(f"{key[0]}/{strategy}", partitions[key][0], averaged, cfg.seed + 1, partitions[key][1]),
            )
    for key in sweep_keys:
        for strategy in (FULL, cfg.claim_group):
            sweep.append((*key, strategy))
            runs.setdefault(
                sweep[-1],
                Federation(
                    f"dirichlet({key[1]:g}, {key[2]} images)/{strategy}",
                    partitions[key][0],
                    cfg.strategies[strategy],
                    cfg.seed + 1,
                    partitions[key][1],
                ),
            )
    names = list(runs)
    federations = [runs[k] for k in names]

    def data(x, y, idx):
        idx = torch.as_tensor(idx, dtype=torch.long)
        return x[idx], y[idx]

    test_sets = {
        (key, i): data(test_x, test_y, p) for key, (_, parts) in partitions.items() for i, p in enumerate(parts)
    }
    rng = np.random.default_rng([cfg.seed, len(SPLIT_IDS)])  # the fixed evaluation subsets

    def subset(p: np.ndarray) -> np.ndarray:
        return (
            p
            if not cfg.eval_subset or len(p) <= cfg.eval_subset
            else np.sort(rng.choice(p, cfg.eval_subset, replace=False))
        )

    round_sets = {
        (key, i): data(test_x, test_y, subset(p)) for key in main_keys for i, p in enumerate(partitions[key][1])
    }  # every strategy of a partition on the same images
    train_sets = {
        (key, i): data(train_x, train_y, subset(p))
        for key, (parts, _) in partitions.items()
        for i, p in enumerate(parts)
    }
    main_index = [names.index(k) for k in main]
    round_rows = []

    def after_round(round_index: int, bank: StackedMLP, position) -> None:
        for f in main_index:
            key = names[f]
            for i in range(cfg.n_clients):
                x, y = round_sets[(key[:3], i)]
                acc, loss = accuracy_and_loss(bank, position[(f, i)], x, y)
                round_rows.append(
                    dict(
                        split=key[0],
                        strategy=key[3],
                        round=round_index,
                        client=i,
                        n_train=len(federations[f].train_parts[i]),
                        n_test=len(y),
                        test_loss=loss,
                        test_accuracy=acc,
                    )
                )

    bank, position = train_federations(make_model, train_x, train_y, federations, cfg, after_round)

    final: dict[tuple[RunKey, int], dict[str, float]] = {}  # (run key, client) -> final metrics
    for f, run_key in enumerate(names):
        fed = federations[f]
        for i, tp in enumerate(fed.train_parts):
            x, y = test_sets[(run_key[:3], i)]
            acc, loss = accuracy_and_loss(bank, position[(f, i)], x, y)
            train_acc, _ = accuracy_and_loss(bank, position[(f, i)], *train_sets[(run_key[:3], i)])
            final[(run_key, i)] = dict(
                client=i, n_train=len(tp), n_test=len(y), test_loss=loss, test_accuracy=acc, train_accuracy=train_acc
            )
        mean_error = 100.0 - np.mean([final[(run_key, i)]["test_accuracy"] for i in range(cfg.n_clients)])
        check_not_chance(
            mean_error, n_classes, f"federated {fed.name} (seed {cfg.seed}), mean over clients", cfg.rounds
        )
    clients = pd.DataFrame(
        [dict(split=k[0], strategy=k[3], **final[(k, i)]) for k in main for i in range(cfg.n_clients)]
    )
    sweep_table = pd.DataFrame(
        [dict(concentration=k[1], strategy=k[3], **final[(k, i)]) for k in sweep for i in range(cfg.n_clients)],
        columns=[
            "concentration",
            "strategy",
            "client",
            "n_train",
            "n_test",
            "test_loss",
            "test_accuracy",
            "train_accuracy",
        ],
    )
    count_rows = []
    for (split, concentration, n_images), (train_parts, test_parts) in partitions.items():
        for i, (tr, te) in enumerate(zip(train_parts, test_parts)):
            for c in range(n_classes):
                count_rows.append(
                    dict(
                        split=split,
                        concentration=concentration,
                        images=n_images,
                        client=i,
                        label=c,
                        n_train=int((train_y[tr] == c).sum()),
                        n_test=int((test_y[te] == c).sum()),
                    )
                )
    barrier_rows = []
    a, b = cfg.barrier_clients
    for run_key in main:
        f = names.index(run_key)
        pair = np.concatenate([partitions[run_key[:3]][1][a], partitions[run_key[:3]][1][b]])
        state_a, state_b = bank.state_dict(position[(f, a)]), bank.state_dict(position[(f, b)])
        evaluator = LayerEvaluator(make_model(), {"test": data(test_x, test_y, pair)})
        for row in checkpoint_barriers(
            evaluator, cfg.rounds, state_a, state_b, logical_layers(state_a), alphas=[0.5], bases=["A", "B"]
        ):
            barrier_rows.append(dict(row, split=run_key[0], strategy=run_key[3]))  # evaluated on the pair's test data
    return dict(
        clients=clients,
        rounds=pd.DataFrame(round_rows),
        sweep=sweep_table,
        partition=pd.DataFrame(count_rows),
        barriers=pd.DataFrame(barrier_rows),
        table1=table1(clients, cfg),
    )


def layers_label(averaged: list[str] | None) -> str:
    return "all" if averaged is None else ",".join(averaged) or "none"


def table1(clients: pd.DataFrame, cfg: FederatedConfig) -> pd.DataFrame:
    """Tidy Table 1 of one repetition: split x strategy -> mean and sd over clients of the accuracy on their own test
    data (and of the train accuracy on their own training images); `claim` marks cfg.claim_group."""
    table = (
        clients.groupby(["split", "strategy"], sort=False)
        .agg(
            mean_accuracy=("test_accuracy", "mean"),
            std_accuracy=("test_accuracy", "std"),
            mean_train_accuracy=("train_accuracy", "mean"),
            n_clients=("test_accuracy", "count"),
        )
        .reset_index()
    )
    order = list(cfg.strategies)
    table["layers"] = [layers_label(cfg.strategies[s]) for s in table.strategy]
    table["claim"] = table.strategy == cfg.claim_group
    table = table.assign(_s=table.split.map(SPLIT_IDS), _g=table.strategy.map(order.index))
    return table.sort_values(["_s", "_g"]).drop(columns=["_s", "_g"]).reset_index(drop=True)


# -------------------------------------------------------------------------------------------- metrics and claims
def gap_table(rounds: pd.DataFrame, sweep: pd.DataFrame) -> pd.DataFrame:
    """Partial minus full averaging, mean client accuracy in points, per repetition (a `repetition` column when
    present): axis "round" (x = round, every split and layer group of the main runs, on the rounds table's test subsets)
    and axis "concentration" (x = Dirichlet concentration of the sweep, split "dirichlet", the group the sweep trains);
    `images` = training images the federation shares out."""
    keys = ["repetition"] if "repetition" in rounds.columns else []
    out = []
    for table, axis, x, split in (
        (rounds, "round", "round", None),
        (sweep, "concentration", "concentration", "dirichlet"),
    ):
        if not len(table):
            continue
        group_keys = keys + ([] if split else ["split"]) + [x]
        mean = table.groupby(group_keys + ["strategy"], sort=False).test_accuracy.mean().unstack("strategy")
        images = table.groupby(group_keys + ["strategy"], sort=False).n_train.sum().groupby(group_keys).max()
        for group in [s for s in mean.columns if s not in (FULL, LOCAL)]:
            gap = pd.DataFrame({"gap": mean[group] - mean[FULL], "images": images}).reset_index()
            gap = gap.rename(columns={x: "x"}).assign(axis=axis, group=group)
            out.append(gap.assign(split=split) if split else gap)
    return pd.concat(out, ignore_index=True)[keys + ["axis", "split", "group", "x", "gap", "images"]]


def headline_metrics(tables: dict[str, pd.DataFrame], cfg: FederatedConfig) -> dict[str, float]:
    """Flat per-repetition metrics (points = percentage points of mean client test accuracy):

    accuracy/<split>/<strategy>, accuracy_sd_clients/<split>/<strategy>, train_accuracy/<split>/<strategy>;
    gap/<split>/<group> = group - full for every layer group (what the claims read); gap_claim/<split> = the same
    for cfg.claim_group (the group the diagnostics follow); gap_best/<split> = the largest group gap (descriptive
    only: the max over groups is biased up);
    gap_claim_round1/<split> = claim-group gap after the first round (rounds table, its test subsets);
    sweep_gap/<concentration> = claim group - full at each sweep concentration;
    pair_full_loss_barrier/<split>/<strategy> = midpoint loss barrier of the full average between barrier_clients
    (0 under full averaging: the clients are identical; SANITY_CHECKS)."""
    clients = tables["clients"]
    by = clients.groupby(["split", "strategy"])
    acc, sd, train = by.test_accuracy.mean(), by.test_accuracy.std(), by.train_accuracy.mean()
    m: dict[str, float] = {}
    for split in cfg.splits:
        for strategy in cfg.strategies:
            m[f"accuracy/{split}/{strategy}"] = float(acc[split, strategy])
            m[f"accuracy_sd_clients/{split}/{strategy}"] = float(sd[split, strategy])
            m[f"train_accuracy/{split}/{strategy}"] = float(train[split, strategy])
        gaps = {g: float(acc[split, g] - acc[split, FULL]) for g in cfg.layer_groups}
        m.update({f"gap/{split}/{g}": v for g, v in gaps.items()})
        m[f"gap_claim/{split}"] = gaps[cfg.claim_group]
        m[f"gap_best/{split}"] = max(gaps.values())
    gaps = gap_table(tables["rounds"], tables["sweep"])
    first = gaps[(gaps.axis == "round") & (gaps.x == 1) & (gaps.group == cfg.claim_group)]
    m.update({f"gap_claim_round1/{r.split}": float(r.gap) for r in first.itertuples()})
    sweep = gaps[gaps.axis == "concentration"]
    m.update({f"sweep_gap/{r.x:g}": float(r.gap) for r in sweep.itertuples()})
    barriers = tables["barriers"]
    full = barriers[(barriers.metric == "loss") & (barriers.layer_set == "full") & (barriers.base == "A")]
    m.update({f"pair_full_loss_barrier/{r.split}/{r.strategy}": float(r.barrier) for r in full.itertuples()})
    return m


def _gap(split: str, group: str) -> Callable[[dict, object], float]:
    def measure(m: dict, _cfg) -> float:
        return m[f"gap/{split}/{group}"]

    return measure


def _margin(split: str) -> DataThreshold:
    """report.partial_minus_full_points plus the seed-to-seed sd of full averaging's accuracy on `split`, with the
    sd's chi-square interval over the repetitions."""

    def bounds(runs: list[dict], cfg) -> tuple[float, float]:
        low, high = sd_interval([m[f"accuracy/{split}/{FULL}"] for m in runs], cfg.confidence)
        return cfg.partial_minus_full_points + low, cfg.partial_minus_full_points + high

    return DataThreshold("partial_minus_full_points + seed-to-seed sd of full averaging", bounds)


def _margin_null(split: str, group: str) -> Null:
    """The group's gap exactly at the margin (the measured seed-to-seed sd of full averaging), full averaging's
    accuracy and the gap redrawn with their measured seed spread (so the margin is re-estimated in every draw)."""

    def draw(rng: np.random.Generator, runs: list[dict], cfg) -> list[dict]:
        full = [m[f"accuracy/{split}/{FULL}"] for m in runs]
        sd_full, sd_gap = spread(full), spread([m[f"gap/{split}/{group}"] for m in runs])
        edge = cfg.partial_minus_full_points + sd_full
        return [
            dict(
                m,
                **{
                    f"accuracy/{split}/{FULL}": float(np.mean(full)) + rng.normal(0.0, sd_full),
                    f"gap/{split}/{group}": edge + rng.normal(0.0, sd_gap),
                },
            )
            for m in runs
        ]

    return Null("the group's gap exactly at the margin, plus the measured seed spread", draw)


# the group of the default profile closest to the authors' active group (the head with a few body layers)
AUTHORS_CLOSEST = "outer"
# split -> (who, relation, verb, the paper's statement)
_SPLIT_CLAIMS: dict[SplitName, tuple[str, Relation, str, str]]
_SPLIT_CLAIMS = {
    "iid": ("IID clients", "<=", "does not beat", "full averaging best on IID"),
    "dirichlet": ("Dirichlet non-IID clients", "<=", "does not beat", "full averaging best on Dirichlet non-IID"),
    "pathological": ("Pathological non-IID clients", ">", "beats", "partial averaging best on pathological non-IID"),
}


def table1_claims(groups) -> list[Claim]:
    """Every split x layer group (names of params federated.layer_groups) against full averaging."""
    out = []
    for split, (who, relation, verb, paper) in _SPLIT_CLAIMS.items():
        for group in groups:
            closest = ", closest to the authors' active group" if group == AUTHORS_CLOSEST else ""
            out.append(
                Claim(
                    "Table 1",
                    f"{who}: on average, averaging only the {group} layers (federated.layer_groups.{group}"
                    f"{closest}) {verb} full averaging by more than the seed-to-seed spread",
                    paper,
                    STAGE,
                    _gap(split, group),
                    relation,
                    _margin(split),
                    f"accuracy of {group} minus full averaging (points, mean over clients)",
                    null=_margin_null(split, group),
                    bounds=(-100.0, 100.0),
                )
            )
    return out


CLAIMS: list[Claim] = table1_claims(FederatedConfig().layer_groups)


def fedavg_pair_barrier(m: dict, _cfg=None) -> float:
    """Largest |full loss barrier| between the two barrier clients under full averaging, over the splits."""
    values = [abs(v) for k, v in m.items() if k.startswith("pair_full_loss_barrier/") and k.endswith("/full")]
    if not values:
        raise KeyError("pair_full_loss_barrier/<split>/full")
    return max(values)


SANITY_CHECKS: list[SanityCheck] = [
    SanityCheck(
        "Table 1",
        "Full averaging hands every client the same model (two clients' loss barrier is 0)",
        STAGE,
        fedavg_pair_barrier,
        "<=",
        1e-6,
        "max over splits of |full loss barrier between two FedAvg clients|",
    ),
]


# ------------------------------------------------------------------------------------ aggregation over repetitions
def aggregate_table1(workspace: str | Path, repetitions: Sequence[int]) -> pd.DataFrame:
    """Table 1 over repetitions: split x strategy -> mean and sd over repetitions of each repetition's mean client
    accuracy, and of the paired gap to full averaging (0 for full itself), with the averaged layers and the claim
    flag."""
    t = read_repetition_tables(workspace, STAGE, "table1.csv", repetitions)
    full = t[t.strategy == FULL].set_index(["repetition", "split"]).mean_accuracy
    t = t.assign(gap=t.mean_accuracy.to_numpy() - full.loc[list(zip(t.repetition, t.split))].to_numpy())
    out = (
        t.groupby(["split", "strategy"], sort=False)
        .agg(
            layers=("layers", "first"),
            claim=("claim", "first"),
            n_repetitions=("repetition", "nunique"),
            mean_accuracy=("mean_accuracy", "mean"),
            sd_accuracy=("mean_accuracy", "std"),
            mean_gap=("gap", "mean"),
            sd_gap=("gap", "std"),
            mean_train_accuracy=("mean_train_accuracy", "mean"),
        )
        .reset_index()
    )
    return out


def aggregate_gaps(workspace: str | Path, repetitions: Sequence[int]) -> pd.DataFrame:
    """Per-repetition gaps (partial minus full, points) against the number of rounds and the Dirichlet concentration
    (gap_table of every seed's rounds.csv and sweep.csv), with a `repetition` column; `claim` marks the claim group."""
    rounds = read_repetition_tables(workspace, STAGE, "rounds.csv", repetitions)
    sweep = read_repetition_tables(workspace, STAGE, "sweep.csv", repetitions)
    claim = set(read_repetition_tables(workspace, STAGE, "table1.csv", repetitions).query("claim").strategy)
    gaps = gap_table(rounds, sweep)
    return gaps.assign(claim=gaps.group.isin(claim))


def aggregate_barriers(workspace: str | Path, repetitions: Sequence[int]) -> pd.DataFrame:
    """Layer-wise barriers between the two barrier clients, mean (and sd) over repetitions per split x strategy x layer
    set x base x alpha x metric."""
    b = read_repetition_tables(workspace, STAGE, "barriers.csv", repetitions)
    keys = ["split", "strategy", "layer_set", "base", "alpha", "metric"]
    return (
        b.groupby(keys, sort=False).barrier.agg(barrier="mean", sd_barrier="std", n_repetitions="count").reset_index()
    )


def _span(values: pd.Series, fmt: str) -> str:
    """'a to b' of the smallest and largest value, or just 'a' when they print the same."""
    low, high = format(values.min(), fmt), format(values.max(), fmt)
    return low if low == high else f"{low} to {high}"


def gap_summary(gaps: pd.DataFrame, threshold: float = 0.0) -> str:
    """One sentence, computed from aggregate_gaps (or gap_table of one repetition): where the claim group beats full
    averaging by more than `threshold` points along the concentration sweep, and the gap after the first and the
    last round on the main Dirichlet split (means over repetitions)."""
    gaps = gaps[gaps.claim] if "claim" in gaps else gaps
    group = ", ".join(sorted(set(gaps.group)))
    n = gaps.repetition.nunique() if "repetition" in gaps else 1
    conc = gaps[gaps.axis == "concentration"].groupby("x").gap.mean().sort_index()
    above = conc > threshold
    tried = _span(pd.Series(conc.index), "g") if len(conc) else ""
    if conc.empty:
        text = "no concentration sweep was run"
    elif above.all():
        text = (
            f"averaging only {group} beats full averaging at every Dirichlet concentration tried ({tried}), "
            f"by {_span(conc, '.1f')} points"
        )
    elif not above.any():
        text = (
            f"averaging only {group} does not beat full averaging at any Dirichlet concentration tried "
            f"({tried}; gap {_span(conc, '+.1f')} points)"
        )
    elif above.iloc[: int(above.sum())].all():
        below = conc[~above]
        text = (
            f"averaging only {group} beats full averaging by {_span(conc[above], '.1f')} points at Dirichlet "
            f"concentration <= {above[above].index[-1]:g}, not above (gap {_span(below, '+.1f')} points at "
            f"{_span(pd.Series(below.index), 'g')})"
        )
    else:
        text = (
            f"averaging only {group} beats full averaging at Dirichlet concentrations "
            f"{[float(c) for c in conc[above].index]} and not at {[float(c) for c in conc[~above].index]}"
        )
    rounds = gaps[(gaps.axis == "round") & (gaps.split == "dirichlet")].groupby("x").gap.mean().sort_index()
    if len(rounds):
        text += (
            f"; on the main Dirichlet split the gap is {rounds.iloc[0]:+.1f} points after round "
            f"{rounds.index[0]:g} and {rounds.iloc[-1]:+.1f} after round {rounds.index[-1]:g}"
        )
    return text[0].upper() + text[1:] + f" (mean over {n} repetition{'s' if n != 1 else ''})."


# ------------------------------------------------------------------------------------------------------- figures
def _repetitions(n: int) -> str:
    return f"{n} repetition{'s' if n != 1 else ''}"


def plot_table1(table: pd.DataFrame):
    """fig6_federated_table: Table 1 as a heatmap of "mean ± sd over repetitions" (accuracy per split x strategy), next
    to the paired gap of each layer group to full averaging (red: the group beats full averaging)."""
    splits = [s for s in SPLIT_IDS if s in set(table.split)]
    strategies = list(dict.fromkeys(table.strategy))
    labels = {
        r.strategy: f"{r.strategy}{' (claim)' if r.claim else ''}\n[{r.layers}]"
        for r in table.drop_duplicates("strategy").itertuples()
    }
    wide = lambda col, rows: table.pivot(index="strategy", columns="split", values=col).loc[rows, splits]
    groups = [s for s in strategies if s not in (FULL, LOCAL)]
    n = int(table.n_repetitions.max())
    fig, (ax_acc, ax_gap) = plotting.panels(2, width=5.0, height=0.55 * len(strategies) + 2.0)
    plotting.heatmap(
        ax_acc,
        wide("mean_accuracy", strategies),
        spread=wide("sd_accuracy", strategies),
        title=f"Table 1: client accuracy on own test data (%)\nmean ± sd over {_repetitions(n)}",
        center=None,
        cmap="viridis",
        cbar_label="accuracy (%)",
    )
    ax_acc.set_yticklabels([labels[s] for s in strategies], fontsize=7)
    plotting.heatmap(
        ax_gap,
        wide("mean_gap", groups),
        spread=wide("sd_gap", groups),
        title=f"layer group minus full averaging (points)\nmean ± sd over {_repetitions(n)} (paired)",
        cbar_label="accuracy gap (points)",
    )
    ax_gap.set_yticklabels([labels[s] for s in groups], fontsize=7)
    for ax in (ax_acc, ax_gap):
        ax.set_xlabel("split")
        ax.set_ylabel("")
    return fig


def plot_gaps(gaps: pd.DataFrame, threshold: float = 0.0):
    """fig6_federated_sweep: claim-group minus full averaging (points) against the Dirichlet concentration (sweep) and
    against the number of rounds (main runs, per split); mean over repetitions with a ±1 sd band, thin per-repetition
    lines; dashed: the claims' threshold; dotted: the IID split's final gap (main runs, concentration -> infinity)."""
    gaps = gaps[gaps.claim] if "claim" in gaps else gaps
    group = ", ".join(sorted(set(gaps.group)))
    n = gaps.repetition.nunique() if "repetition" in gaps else 1
    fig, (ax_c, ax_r) = plotting.panels(2, width=4.8, height=3.4)
    conc, rounds = gaps[gaps.axis == "concentration"], gaps[gaps.axis == "round"]
    if len(conc):
        plotting.curves(
            ax_c,
            conc,
            x="x",
            y="gap",
            title=f"{group} - full vs concentration ({int(conc.images.max())} images, {_repetitions(n)})",
        )
        if "repetition" in conc:
            for _, one in conc.groupby("repetition"):
                ax_c.plot(one.x, one.gap, color="grey", lw=0.5, alpha=0.6)
        ax_c.set_xscale("log")
    iid = rounds[(rounds.split == "iid") & (rounds.x == rounds.x.max())]
    if len(iid):
        ax_c.axhline(
            iid.gap.mean(),
            color="tab:green",
            ls=":",
            lw=1.0,
            label=f"IID split, main runs ({int(iid.images.max())} images)",
        )
        ax_c.legend(fontsize=7)
    ax_c.set_xlabel("Dirichlet concentration (smaller = more skewed label mix)")
    plotting.curves(
        ax_r,
        rounds,
        x="x",
        y="gap",
        hue="split",
        title=f"{group} - full vs rounds ({_repetitions(n)})",
        hue_order=[s for s in SPLIT_IDS if s in set(rounds.split)],
    )
    ax_r.set_xlabel("round (accuracy on a fixed subset of each client's test data)")
    ax_r.legend(fontsize=7, title="split", title_fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    for ax in (ax_c, ax_r):
        ax.axhline(threshold, color="k", ls="--", lw=0.8)
        ax.set_ylabel("accuracy gap (points)")
    return fig


def plot_barriers(barriers: pd.DataFrame, alpha: float = 0.5):
    """fig6_federated_barriers: loss barrier (mean over repetitions) between the two barrier clients at the end of
    training, of the full average and of each single logical layer, into A and into B, per split / strategy."""
    loss = barriers[(barriers.metric == "loss") & (barriers.alpha == alpha)]
    loss = loss.assign(column=loss.split + "/" + loss.strategy)
    columns = list(dict.fromkeys(loss.column))
    rows = list(dict.fromkeys(loss.layer_set))  # "full" first, then forward order
    n = int(loss.n_repetitions.max()) if "n_repetitions" in loss else 1
    fig, axes = plotting.panels(2, ncols=1, width=max(6.0, 0.7 * len(columns)), height=3.2, sharex=True)
    for ax, base in zip(axes, ("A", "B")):
        grid = loss[loss.base == base].pivot(index="layer_set", columns="column", values="barrier").loc[rows, columns]
        plotting.heatmap(
            ax,
            grid,
            title=f"loss barrier between two clients, into {base} (mean over {_repetitions(n)})",
            fmt=".2f",
            vmin=-1.0,
            vmax=1.0,
            cbar_label="barrier (loss; colours clipped at ±1)",
        )
        ax.set_xlabel("split / strategy" if base == "B" else "")
        ax.set_ylabel("averaged layer(s)")
    axes[0].tick_params(axis="x", labelbottom=False)
    return fig


def aggregate(st, repetitions: list[int]) -> str:
    """Table 1 over every repetition: the accuracy table, the located gap sweep and the client barriers; returns the
    gap's summary sentence."""
    threshold = st.section("report").partial_minus_full_points
    plotting.save(plot_table1(aggregate_table1(st.workspace, repetitions)), st.figures_dir / "fig6_federated_table")
    gaps = aggregate_gaps(st.workspace, repetitions)
    plotting.save(plot_gaps(gaps, threshold), st.figures_dir / "fig6_federated_sweep")
    plotting.save(
        plot_barriers(aggregate_barriers(st.workspace, repetitions)), st.figures_dir / "fig6_federated_barriers"
    )
    print("federated repetitions:", sorted(gaps.repetition.unique().tolist()) if "repetition" in gaps else "n/a")
    return gap_summary(gaps, threshold)


SPEC = StageSpec(
    name="federated",
    notebook="07_federated",
    config=FederatedConfig,
    repeats_over="federated",
    repetitions=(0, 1, 2),
    reads=(*RUNTIME, *EVALUATION, "report.partial_minus_full_points"),
    inputs=("data/images.pt",),
    aggregate_figures=(
        Figure("fig6_federated_table", "Table 1: per-client test accuracy of full, partial and no averaging."),
        Figure(
            "fig6_federated_sweep",
            "Table 1, located: partial-minus-full accuracy gap against the Dirichlet "
            "concentration and against the number of rounds (mean ± sd over repetitions).",
        ),
        Figure("fig6_federated_barriers", "Table 1 companion: layer-wise barriers between two clients at the end."),
    ),
    aggregate=aggregate,
    aggregate_reads=("report.partial_minus_full_points",),
    claims=tuple(CLAIMS),
    sanity_checks=tuple(SANITY_CHECKS),
)
