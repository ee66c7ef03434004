"""Claims of the paper as testable statements over repetitions: a value per repetition, a 95 % interval, a verdict.

A claim reads one number per repetition (seed) of the stage that measures it, e.g. "largest |single-layer barrier|
of pair r". Across the n repetitions it reports the mean and a Student-t confidence interval
(mean +- t_{n-1, (1+c)/2} * sd / sqrt(n)), and compares the whole interval with the criterion `value REL threshold`:

* reproduced      - every value in the interval satisfies the criterion;
* not reproduced  - every value in the interval violates it;
* inconclusive    - the interval straddles the threshold (or n < 2: one run has no interval);
* premise not met - the claim names a `Premise` (the regime in which the paper's statement is about something, e.g.
                    "the pair has a large full barrier and both endpoints fit their data") and the measured runs are
                    not in it: the claim is not tested, whatever its interval says.

So a verdict never rests on one run that sits on its threshold, and a different CPU (other rounding, other last
digits) moves the interval a little but not the verdict unless the interval itself touches the threshold.

Thresholds are read from the `report` section of params.yaml by name, so the criterion printed in the claims table is
the one applied. Identities of the setup (e.g. a ratio fixed by the chosen minima, a theorem checked numerically)
are `SanityCheck`s: listed apart, they must hold exactly and are not evidence for the paper.

Each stage module owns its claims (`CLAIMS`, `SANITY_CHECKS`, `PREMISES`) next to the metrics they read;
`all_claims()` and `all_premises()` collect them in the paper's order.
"""

from __future__ import annotations

import importlib
import math
import operator
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np

Relation = Literal["<=", "<", ">=", ">"]
_OPS: dict[str, Callable[[float, float], bool]] = {"<=": operator.le, "<": operator.lt, ">=": operator.ge,
                                                   ">": operator.gt}
VERDICTS = ("reproduced", "inconclusive", "not reproduced", "premise not met")
PREMISE_NOT_MET = VERDICTS[3]

# stage modules that define CLAIMS / SANITY_CHECKS, in the paper's order
CLAIM_MODULES = ("llmc_utils.barriers", "llmc_utils.cumulative", "llmc_utils.deep_linear", "llmc_utils.robustness",
                 "llmc_utils.subspace", "llmc_utils.federated", "llmc_utils.language_model", "llmc_utils.alignment")


@dataclass(frozen=True)
class Claim:
    """`measure(metrics of one repetition of `stage`, report config)` gives that repetition's value; the claim is
    `value relation threshold`, the threshold being a report config field (by name) or a number of the statement. A measure may
    also return a list: then each element is one repetition (e.g. many random pairs inside one deterministic stage).
    """

    source: str  # figure or table of the paper
    statement: str
    paper: str  # the paper's number or statement
    stage: str  # whose per-repetition metrics `measure` reads
    measure: Callable[[dict, Any], float | Sequence[float]]
    relation: Relation
    threshold: str | float  # a field of ReportConfig, or a number that is part of the statement (e.g. 0)
    quantity: str  # what the measured value is, in words (shown in the criterion column)
    premise: str | None = None  # name of the Premise the claim is tested under (None: none needed)

    def threshold_value(self, cfg) -> float:
        return float(getattr(cfg, self.threshold) if isinstance(self.threshold, str) else self.threshold)

    def criterion(self, cfg) -> str:
        if isinstance(self.threshold, str):
            return f"{self.quantity} {self.relation} {self.threshold} = {self.threshold_value(cfg):g}"
        return f"{self.quantity} {self.relation} {self.threshold:g}"


@dataclass(frozen=True)
class Condition:
    """One condition of a Premise: `measure` per repetition (like a Claim's), `relation threshold`, required either
    of the whole interval over repetitions (over="interval": its far end must satisfy it, as a reproduced verdict) or
    of every repetition's value (over="every")."""

    quantity: str
    paper: str  # the paper's number for this quantity
    stage: str  # whose per-repetition metrics `measure` reads
    measure: Callable[[dict, Any], float | Sequence[float]]
    relation: Relation
    threshold: str | float
    over: Literal["interval", "every"]

    threshold_value = Claim.threshold_value
    criterion = Claim.criterion


@dataclass(frozen=True)
class Premise:
    """The regime a group of claims is about, stated before they are measured: it holds when every condition does.
    It is not evidence for the paper (the setup was chosen to meet it); claims naming it are judged only when it
    holds, and their verdict is "premise not met" otherwise."""

    name: str
    source: str
    statement: str
    conditions: tuple[Condition, ...]


@dataclass(frozen=True)
class SanityCheck:
    """An identity of the setup that must hold in every run (value relation threshold, no interval)."""

    source: str
    statement: str
    stage: str
    measure: Callable[[dict, Any], float]
    relation: Relation
    threshold: str | float
    quantity: str

    threshold_value = Claim.threshold_value
    criterion = Claim.criterion


def interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student-t confidence interval of the mean of independent repetitions.
    One value gives (v, -inf, inf): a single run bounds nothing."""
    v = np.asarray(values, dtype=float)
    if v.size == 0 or not np.all(np.isfinite(v)):
        raise ValueError(f"claim values must be finite and non-empty, got {list(v)}")
    mean = float(v.mean())
    if v.size < 2:
        return mean, -math.inf, math.inf
    from scipy import stats  # here, not at import: every stage module imports this one

    half = float(stats.t.ppf(0.5 + confidence / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return mean, mean - half, mean + half


def verdict(low: float, high: float, relation: Relation, threshold: float) -> str:
    """Three-state verdict of an interval [low, high] against `x relation threshold`."""
    holds = _OPS[relation]
    if holds(low, threshold) and holds(high, threshold):
        return "reproduced"
    if not holds(low, threshold) and not holds(high, threshold):
        return "not reproduced"
    return "inconclusive"


def claim_values(claim: Claim | SanityCheck | Condition, metrics: dict[str, dict[int | None, dict]], cfg
                 ) -> list[float]:
    """One value per repetition; `metrics[stage][seed]` is one repetition's metrics (seed None: a single run)."""
    if claim.stage not in metrics or not metrics[claim.stage]:
        raise KeyError(f"{claim.quantity!r} needs the metrics of stage {claim.stage!r}, which no run wrote; "
                       "run the whole pipeline (dvc repro)")
    values: list[float] = []
    for seed, m in sorted(metrics[claim.stage].items(), key=lambda kv: -1 if kv[0] is None else kv[0]):
        try:
            value = claim.measure(m, cfg)
        except KeyError as exc:
            raise KeyError(f"{claim.quantity!r} needs metric {exc} in {claim.stage} (seed {seed}); "
                           "rerun that stage") from exc
        values += [float(x) for x in value] if isinstance(value, (list, tuple, np.ndarray)) else [float(value)]
    return values


def evaluate(claim: Claim, metrics: dict, cfg, confidence: float = 0.95, premise_holds: bool | None = None) -> dict:
    """One row of the claims table; premise_holds=False (the claim's premise was measured and failed) turns the
    verdict into "premise not met", keeping the measured interval beside it."""
    values = claim_values(claim, metrics, cfg)
    mean, low, high = interval(values, confidence)
    threshold = claim.threshold_value(cfg)
    judged = verdict(low, high, claim.relation, threshold) if premise_holds is not False else PREMISE_NOT_MET
    return dict(source=claim.source, claim=claim.statement, paper=claim.paper, criterion=claim.criterion(cfg),
                n=len(values), mean=mean, low=low, high=high, verdict=judged, premise=claim.premise or "")


def evaluate_premise(premise: Premise, metrics: dict, cfg, confidence: float = 0.95) -> list[dict]:
    """One row per condition of `premise` (premise name, condition, n, mean [interval], worst value, holds) and the
    premise's overall `premise_holds` on every row (all conditions hold)."""
    rows = []
    for condition in premise.conditions:
        values = claim_values(condition, metrics, cfg)  # same lookup rules as a claim
        mean, low, high = interval(values, confidence)
        threshold, holds = condition.threshold_value(cfg), _OPS[condition.relation]
        worst = max(values) if condition.relation in ("<=", "<") else min(values)
        ok = (holds(low, threshold) and holds(high, threshold)) if condition.over == "interval" else holds(worst, threshold)
        rows.append(dict(premise=premise.name, source=premise.source, statement=premise.statement,
                         condition=condition.criterion(cfg) + (" (whole interval)" if condition.over == "interval"
                                                               else " (every repetition)"), paper=condition.paper,
                         n=len(values), mean=mean, low=low, high=high, worst=worst, holds=ok))
    overall = all(r["holds"] for r in rows)
    return [dict(r, premise_holds=overall) for r in rows]


def check(sanity: SanityCheck, metrics: dict, cfg) -> dict:
    """One row of the sanity-check table: every repetition's value must satisfy the relation."""
    values = claim_values(sanity, metrics, cfg)  # same lookup rules as a claim
    threshold = sanity.threshold_value(cfg)
    ok = all(_OPS[sanity.relation](v, threshold) for v in values)
    return dict(source=sanity.source, check=sanity.statement, criterion=sanity.criterion(cfg), n=len(values),
                worst=max(values) if sanity.relation in ("<=", "<") else min(values), holds=ok)


def all_claims() -> tuple[list[Claim], list[SanityCheck]]:
    """Every stage module's CLAIMS and SANITY_CHECKS, in CLAIM_MODULES order."""
    claims, checks = [], []
    for name in CLAIM_MODULES:
        module = importlib.import_module(name)
        claims += list(getattr(module, "CLAIMS", []))
        checks += list(getattr(module, "SANITY_CHECKS", []))
    return claims, checks


def all_premises() -> dict[str, Premise]:
    """Every stage module's PREMISES by name, in CLAIM_MODULES order."""
    out: dict[str, Premise] = {}
    for name in CLAIM_MODULES:
        out.update({p.name: p for p in getattr(importlib.import_module(name), "PREMISES", [])})
    return out


def nested_metrics(prefix: str, nested: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict[str, float]:
    """Per-seed metric entries of evaluations nested {outer: {inner: {metric: value}}}, as the claims read them:
    {f"{prefix}_{metric}/{outer}/{inner}": value}, e.g. vit_loss/A/test or endpoint_error/synthetic/B."""
    return {f"{prefix}_{metric}/{outer}/{inner}": float(value)
            for outer, by_inner in nested.items() for inner, values in by_inner.items()
            for metric, value in values.items()}


def finite_metrics(metrics: dict[str, float], stage: str) -> dict[str, float]:
    """`metrics`, once every value is known to be finite; else ValueError naming the stage and the bad keys."""
    bad = [k for k, v in metrics.items() if not np.isfinite(v)]
    if bad:
        raise ValueError(f"non-finite {stage} metrics: {bad}")
    return metrics
