"""Claims of the paper as testable statements, each judged in the paper's unit, on an interval, against its own null.

A claim reads one value per repetition of the stage that measures it, or one value per unit when a stage holds
many units (the trained pairs of the deep linear stage). Two kinds (docs/claims.md):

* mean  - values per repetition; Student-t confidence interval of their mean (mean +- t_{n-1,(1+c)/2} sd / sqrt(n));
          the claim's sentence says "on average";
* count - every unit (a pair, a repetition) is 1 (it satisfies the statement beyond its own error), 0 (it violates it
          beyond its error) or UNDECIDED; the fraction that satisfies it lies in [CP_low(k, n), CP_high(n - j, n)]
          (k units at 1, j at 0; exact Clopper-Pearson), which never leaves [0, 1] and never has zero width.

The whole interval is compared with the criterion `value REL threshold`:

* reproduced      - every value in the interval satisfies the criterion;
* not reproduced  - every value in the interval violates it;
* inconclusive    - the interval straddles the threshold (or one run: no interval);
* premise not met - the claim names a `Premise` (the regime in which the paper's statement is about something, e.g.
                    "the pair has a large full barrier and both endpoints fit their data") and the measured runs are
                    not in it: the claim is not tested, whatever its interval says.

Thresholds are read from the `report` section of params.yaml by name (so the criterion printed is the one applied),
are numbers of the statement, or are a `DataThreshold` computed from every repetition's metrics with its own interval
[t_low, t_high] (a margin estimated from seeds): "reproduced" is then judged against the bound that makes it hardest.

Every claim names a `Null`: its effect removed by construction from its own measured metrics, noise kept. `null_rate`
draws it and counts how often the claim would read "reproduced" (the report prints it; tests/test_claims_null.py
asserts <= 5 % per claim). `band_unit` is the per-unit test of the band claims ("every single-layer barrier within
[-h, h]", each barrier with its standard error). Identities of the setup are `SanityCheck`s: listed apart, they must
hold in every run and are not evidence for the paper. A claim may have sensitivity rows (`sensitivity_of`): another
reading of it, judged and shown beside it, never counted as a verdict.

Each stage module owns its claims (`CLAIMS`, `SANITY_CHECKS`, `PREMISES`) next to the metrics they read and names them
in its StageSpec; llmc_utils.pipeline.registry collects them in the paper's order.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Literal

import numpy as np

Relation = Literal["<=", "<", ">=", ">"]
Kind = Literal["mean", "count"]
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
    ">": operator.gt,
}
VERDICTS = ("reproduced", "inconclusive", "not reproduced", "premise not met")
REPRODUCED, PREMISE_NOT_MET = VERDICTS[0], VERDICTS[3]
UNDECIDED = 0.5  # a count claim's unit whose own noise cannot tell whether it satisfies the statement
UNIT_VALUES = (0.0, UNDECIDED, 1.0)

PerRepetition = list[dict]  # one stage's metrics, one dict per repetition in repetition order


@dataclass(frozen=True)
class DataThreshold:
    """A threshold computed from the claim stage's metrics of every repetition: bounds(per-repetition metrics, report
    config) -> (t_low, t_high), the threshold's own interval (t_low = t_high when it is exact). The criterion prints
    `label` and the bounds."""

    label: str
    bounds: Callable[[PerRepetition, Any], tuple[float, float]]


@dataclass(frozen=True)
class Null:
    """The claim's effect removed by construction: draw(rng, measured per-repetition metrics, report config) -> one
    synthetic set of per-repetition metrics of the same shape, with the measured noise and without the effect.
    `statement` says how, in words (shown in the report)."""

    statement: str
    draw: Callable[[np.random.Generator, PerRepetition, Any], PerRepetition]


class _Thresholded:
    """threshold_value and criterion of a Claim, a Condition and a SanityCheck (`quantity relation threshold`)."""

    quantity: str
    relation: Relation
    threshold: str | float | DataThreshold

    def threshold_value(self, cfg) -> float:
        if isinstance(self.threshold, DataThreshold):
            raise TypeError(f"{self.quantity!r}: its threshold is computed from the metrics (threshold_bounds)")
        return float(getattr(cfg, self.threshold) if isinstance(self.threshold, str) else self.threshold)

    def criterion(self, cfg, bounds: tuple[float, float] | None = None) -> str:
        if isinstance(self.threshold, DataThreshold):
            if bounds is None:
                raise TypeError(f"{self.quantity!r}: its threshold is computed from the metrics; pass its bounds")
            low, high = bounds
            shown = f"{low:.3g}" if low == high else f"[{low:.3g}, {high:.3g}]"
            return f"{self.quantity} {self.relation} {self.threshold.label} = {shown}"
        if isinstance(self.threshold, str):
            return f"{self.quantity} {self.relation} {self.threshold} = {self.threshold_value(cfg):g}"
        return f"{self.quantity} {self.relation} {self.threshold:g}"


@dataclass(frozen=True)
class Claim(_Thresholded):
    """`measure(metrics of one repetition of `stage`, report config)` gives that repetition's value (kind "mean") or
    unit (kind "count": 1, 0 or UNDECIDED); a measure may also return a list, each element one unit or repetition
    (e.g. many pairs inside one deterministic stage). The claim is `value relation threshold`, the threshold being a
    report config field (by name), a number of the statement, or a DataThreshold."""

    source: str  # figure or table of the paper
    statement: str
    paper: str  # the paper's number or statement
    stage: str  # whose per-repetition metrics `measure` reads
    measure: Callable[[dict, Any], float | Sequence[float]]
    relation: Relation
    threshold: str | float | DataThreshold  # ReportConfig field, a number of the statement, or computed from data
    quantity: str  # what the measured value is, in words (shown in the criterion column)
    premise: str | None = None  # name of the Premise the claim is tested under (None: none needed)
    kind: Kind = "mean"
    null: Null | None = None  # every claim of CLAIMS has one (tests/test_claims_null.py)
    sensitivity_of: str | None = None  # statement of the claim this row reads another way (never a verdict)
    bounds: tuple[float, float] | None = None  # a bounded mean's range: its interval never leaves it

    def threshold_bounds(self, cfg, per_repetition: PerRepetition) -> tuple[float, float]:
        if isinstance(self.threshold, DataThreshold):
            low, high = self.threshold.bounds(per_repetition, cfg)
            return float(low), float(high)
        value = self.threshold_value(cfg)
        return value, value


@dataclass(frozen=True)
class Condition(_Thresholded):
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
class SanityCheck(_Thresholded):
    """An identity of the setup that must hold in every run (value relation threshold, no interval)."""

    source: str
    statement: str
    stage: str
    measure: Callable[[dict, Any], float]
    relation: Relation
    threshold: str | float
    quantity: str


def _finite(values: Sequence[float]) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    if v.size == 0 or not np.all(np.isfinite(v)):
        raise ValueError(f"claim values must be finite and non-empty, got {list(v)}")
    return v


def interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student-t confidence interval of the mean of independent repetitions.
    One value gives (v, -inf, inf): a single run bounds nothing."""
    v = _finite(values)
    mean = float(v.mean())
    if v.size < 2:
        return mean, -math.inf, math.inf
    from scipy import stats  # here, not at import: every stage module imports this one

    half = float(stats.t.ppf(0.5 + confidence / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return mean, mean - half, mean + half


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided interval of a binomial fraction k / n: (0, ...) for k = 0, (..., 1) for k = n."""
    from scipy import stats

    tail = (1 - confidence) / 2
    low = float(stats.beta.ppf(tail, k, n - k + 1)) if k > 0 else 0.0
    high = float(stats.beta.ppf(1 - tail, k + 1, n - k)) if k < n else 1.0
    return low, high


def count_interval(units: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(k / n, low, high) of a count claim: units are 1 (satisfies), 0 (violates) or UNDECIDED; the fraction that
    satisfies lies between the Clopper-Pearson lower bound of the k satisfied units and the upper bound of the n - j
    units not shown to violate it."""
    u = _finite(units)
    if not np.isin(u, UNIT_VALUES).all():
        raise ValueError(f"a count claim's units must be 1, 0 or UNDECIDED ({UNDECIDED}), got {sorted(set(u))}")
    n, k, j = u.size, int((u == 1.0).sum()), int((u == 0.0).sum())
    return k / n, clopper_pearson(k, n, confidence)[0], clopper_pearson(n - j, n, confidence)[1]


def sd_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Chi-square interval of the standard deviation of normal repetitions, (0, inf) from fewer than two."""
    v = _finite(values)
    if v.size < 2:
        return 0.0, math.inf
    from scipy import stats

    sd, dof, tail = float(v.std(ddof=1)), v.size - 1, (1 - confidence) / 2
    return sd * math.sqrt(dof / stats.chi2.ppf(1 - tail, dof)), sd * math.sqrt(dof / stats.chi2.ppf(tail, dof))


def band_unit(
    barriers: Sequence[float] | np.ndarray,
    ses: Sequence[float] | np.ndarray,
    half_width: float,
    half_width_se: float = 0.0,
    confidence: float = 0.95,
) -> float:
    """One unit of a band claim "every barrier within [-h, h]": 1 when every barrier's interval b +- z se (z for
    `confidence`) lies inside the band (h taken at its lower bound h - z se_h); 0 when some barrier lies outside it
    by more than its Bonferroni interval over the unit's m barriers (h at h + z_m se_h), so that m barriers of noise
    do not push one of them out; UNDECIDED otherwise."""
    b, se = np.abs(np.asarray(barriers, dtype=float)), np.asarray(ses, dtype=float)
    if b.size == 0 or b.shape != se.shape or not (np.isfinite(b).all() and np.isfinite(se).all()):
        raise ValueError(f"band_unit needs finite barriers with one standard error each, got {b.size} and {se.size}")
    tail = (1 - confidence) / 2
    z, z_m = NormalDist().inv_cdf(1 - tail), NormalDist().inv_cdf(1 - tail / b.size)  # (drawn often by the nulls)
    if np.all(b + z * se <= half_width - z * half_width_se):
        return 1.0
    if np.any(b - z_m * se > half_width + z_m * half_width_se):
        return 0.0
    return UNDECIDED


def spread(values: Sequence[float]) -> float:
    """Sample standard deviation (0 for one value): the measured noise a null draws with."""
    v = np.asarray(values, dtype=float)
    return float(v.std(ddof=1)) if v.size > 1 else 0.0


def sign_flip_null(prefix: str, statement: str) -> Null:
    """The null of a claim about signed differences (the metrics under `prefix`, e.g. interpolation minus random
    loss per layer): every measured difference's sign flipped at random, its size kept, so the two compared things
    are alike by construction."""

    def draw(rng: np.random.Generator, runs: PerRepetition, _cfg) -> PerRepetition:
        return [dict(m, **{k: v * rng.choice((-1.0, 1.0)) for k, v in m.items() if k.startswith(prefix)}) for m in runs]

    return Null(statement, draw)


def verdict(low: float, high: float, relation: Relation, threshold: float, threshold_high: float | None = None) -> str:
    """Three-state verdict of an interval [low, high] against `x relation threshold`; a threshold with its own
    interval [threshold, threshold_high] is passed with the bound that makes each verdict hardest."""
    t_low, t_high = threshold, threshold if threshold_high is None else threshold_high
    holds = _OPS[relation]
    strict_side = t_low if relation in ("<=", "<") else t_high  # "reproduced" against the harder bound
    other_side = t_high if relation in ("<=", "<") else t_low
    if holds(low, strict_side) and holds(high, strict_side):
        return "reproduced"
    if not holds(low, other_side) and not holds(high, other_side):
        return "not reproduced"
    return "inconclusive"


def per_repetition(metrics: dict[str, dict[int | None, dict]], stage: str, what: str) -> PerRepetition:
    """metrics[stage] as a list in repetition order (repetition None: a single run)."""
    if stage not in metrics or not metrics[stage]:
        raise KeyError(
            f"{what!r} needs the metrics of stage {stage!r}, which no run wrote; run the whole pipeline (dvc repro)"
        )
    return [m for _, m in sorted(metrics[stage].items(), key=lambda kv: -1 if kv[0] is None else kv[0])]


def values_of(claim: Claim | SanityCheck | Condition, runs: PerRepetition, cfg) -> list[float]:
    """One value per repetition (or per unit, when a measure returns a list)."""
    values: list[float] = []
    for index, m in enumerate(runs):
        try:
            value = claim.measure(m, cfg)
        except KeyError as exc:
            raise KeyError(
                f"{claim.quantity!r} needs metric {exc} in {claim.stage} (repetition {index}); rerun that stage"
            ) from exc
        values += [float(x) for x in value] if isinstance(value, (Sequence, np.ndarray)) else [float(value)]
    return values


def claim_values(
    claim: Claim | SanityCheck | Condition, metrics: dict[str, dict[int | None, dict]], cfg
) -> list[float]:
    """One value per repetition; `metrics[stage][r]` is repetition r's metrics (r None: a single run)."""
    return values_of(claim, per_repetition(metrics, claim.stage, claim.quantity), cfg)


def judge(claim: Claim, runs: PerRepetition, cfg, confidence: float = 0.95) -> dict:
    """values, mean, low, high, threshold bounds and verdict of `claim` on one stage's per-repetition metrics."""
    values = values_of(claim, runs, cfg)
    mean, low, high = (count_interval if claim.kind == "count" else interval)(values, confidence)
    if claim.bounds is not None:  # the mean of a bounded quantity lies in its bounds: the interval may stop there
        low, high = max(low, claim.bounds[0]), min(high, claim.bounds[1])
    t_low, t_high = claim.threshold_bounds(cfg, runs)
    return dict(
        values=values,
        mean=mean,
        low=low,
        high=high,
        threshold_low=t_low,
        threshold_high=t_high,
        verdict=verdict(low, high, claim.relation, t_low, t_high),
    )


def describe(values: Sequence[float], kind: Kind, shown: int = 12) -> str:
    """The per-unit values in a table cell: "k of n" (count; and how many undecided), else the values to 3 digits
    (or their range beyond `shown` values)."""
    v = np.asarray(values, dtype=float)
    if kind == "count":
        undecided = int((v == UNDECIDED).sum())
        return f"{int((v == 1.0).sum())} of {v.size}" + (f" ({undecided} undecided)" if undecided else "")
    if v.size > shown:
        return f"{v.size} values, {v.min():.3g} to {v.max():.3g}"
    return ", ".join(f"{x:.3g}" for x in v)


def too_few(claim: Claim, n: int, bounds: tuple[float, float], confidence: float) -> str:
    """A note when n units cannot give a count claim a verdict whatever they say (all n units satisfying it still
    straddle the threshold, or none satisfying it does), else ""."""
    if claim.kind != "count":
        return ""
    holds, above = _OPS[claim.relation], claim.relation in (">=", ">")
    every, none = clopper_pearson(n, n, confidence), clopper_pearson(0, n, confidence)
    # reproduced needs the whole interval on the claim's side of the harder bound, not reproduced the whole interval
    # on the other side of the easier one
    can_reproduce = holds(every[0], bounds[1]) if above else holds(none[1], bounds[0])
    can_fail = not holds(none[1], bounds[0]) if above else not holds(every[0], bounds[1])
    missing = [word for word, possible in (("reproduce", can_reproduce), ("fail", can_fail)) if not possible]
    if not missing:
        return ""
    return (
        f"n = {n} cannot {' or '.join(missing)} it at {100 * confidence:g} %: {n} of {n} gives "
        f"[{every[0]:.2f}, 1], 0 of {n} gives [0, {none[1]:.2f}]"
    )


def evaluate(claim: Claim, metrics: dict, cfg, confidence: float = 0.95, premise_holds: bool | None = None) -> dict:
    """One row of the claims table; premise_holds=False (the claim's premise was measured and failed) turns the
    verdict into "premise not met", keeping the measured interval beside it."""
    runs = per_repetition(metrics, claim.stage, claim.quantity)
    row = judge(claim, runs, cfg, confidence)
    bounds = (row["threshold_low"], row["threshold_high"])
    judged = row["verdict"] if premise_holds is not False else PREMISE_NOT_MET
    return dict(
        source=claim.source,
        claim=claim.statement,
        paper=claim.paper,
        premise=claim.premise or "",
        kind=claim.kind,
        criterion=claim.criterion(cfg, bounds),
        n=len(row["values"]),
        values=describe(row["values"], claim.kind),
        mean=row["mean"],
        low=row["low"],
        high=row["high"],
        threshold_low=bounds[0],
        threshold_high=bounds[1],
        verdict=judged,
        note=too_few(claim, len(row["values"]), bounds, confidence),
        sensitivity_of=claim.sensitivity_of or "",
    )


def null_rate(claim: Claim, metrics: dict, cfg, draws: int, seed: int = 0, confidence: float = 0.95) -> float:
    """Fraction of `draws` draws of the claim's null (on its stage's measured metrics) that it judges "reproduced"."""
    if claim.null is None:
        raise ValueError(f"claim {claim.statement!r} has no null")
    runs = per_repetition(metrics, claim.stage, claim.quantity)
    rng = np.random.default_rng(seed)
    hits = sum(
        judge(claim, claim.null.draw(rng, runs, cfg), cfg, confidence)["verdict"] == REPRODUCED for _ in range(draws)
    )
    return hits / draws


def evaluate_premise(premise: Premise, metrics: dict, cfg, confidence: float = 0.95) -> list[dict]:
    """One row per condition of `premise` (premise name, condition, n, mean [interval], worst value, holds) and the
    premise's overall `premise_holds` on every row (all conditions hold)."""
    rows = []
    for condition in premise.conditions:
        values = claim_values(condition, metrics, cfg)  # same lookup rules as a claim
        mean, low, high = interval(values, confidence)
        threshold, holds = condition.threshold_value(cfg), _OPS[condition.relation]
        worst = max(values) if condition.relation in ("<=", "<") else min(values)
        ok = (
            (holds(low, threshold) and holds(high, threshold))
            if condition.over == "interval"
            else holds(worst, threshold)
        )
        rows.append(
            dict(
                premise=premise.name,
                source=premise.source,
                statement=premise.statement,
                condition=condition.criterion(cfg)
                + (" (whole interval)" if condition.over == "interval" else " (every repetition)"),
                paper=condition.paper,
                n=len(values),
                mean=mean,
                low=low,
                high=high,
                worst=worst,
                holds=ok,
            )
        )
    overall = all(r["holds"] for r in rows)
    return [dict(r, premise_holds=overall) for r in rows]


def check(sanity: SanityCheck, metrics: dict, cfg) -> dict:
    """One row of the sanity-check table: every repetition's value must satisfy the relation."""
    values = claim_values(sanity, metrics, cfg)  # same lookup rules as a claim
    threshold = sanity.threshold_value(cfg)
    ok = all(_OPS[sanity.relation](v, threshold) for v in values)
    return dict(
        source=sanity.source,
        check=sanity.statement,
        criterion=sanity.criterion(cfg),
        n=len(values),
        worst=max(values) if sanity.relation in ("<=", "<") else min(values),
        holds=ok,
    )


def nested_metrics(prefix: str, nested: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict[str, float]:
    """Per-seed metric entries of evaluations nested {outer: {inner: {metric: value}}}, as the claims read them:
    {f"{prefix}_{metric}/{outer}/{inner}": value}, e.g. vit_loss/A/test or endpoint_error/synthetic/B."""
    return {
        f"{prefix}_{metric}/{outer}/{inner}": float(value)
        for outer, by_inner in nested.items()
        for inner, values in by_inner.items()
        for metric, value in values.items()
    }


def finite_metrics(metrics: dict[str, float], stage: str) -> dict[str, float]:
    """`metrics`, once every value is known to be finite; else ValueError naming the stage and the bad keys."""
    bad = [k for k, v in metrics.items() if not np.isfinite(v)]
    if bad:
        raise ValueError(f"non-finite {stage} metrics: {bad}")
    return metrics
