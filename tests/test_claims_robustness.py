"""Claims of the robustness (Fig. 4) and subspace-perturbation (Fig. 5) stages, count claims over repetitions: for
every claim, synthetic per-seed metrics that must give each of the three verdicts (eight repetitions; three cannot
decide a majority), ties that must not count as wins, and the sanity checks of both stages."""

import pytest

from llmc_utils.core.claims import check, claim_values, evaluate
from llmc_utils.pipeline.report import ReportConfig
from llmc_utils.stages import robustness
from llmc_utils.stages import subspace_perturbations as subspace

CFG = ReportConfig()
WIN = CFG.tie_margin + 0.2  # clearly beyond the margin
TIE = CFG.tie_margin  # exactly at the margin: a tie, not a win (a gap metric is compared with the margin as is)
HALF_TIE = CFG.tie_margin / 2  # inside the margin (a difference of two losses: rounding must not decide it)

LAYERS = [f"layer{i}" for i in range(10)]
EPOCHS = [1, 5]  # trained checkpoints of the CNN heatmap
DATASETS, SCOPES = ("synthetic", "fashion_mnist"), ("all", "fc1", "fc2")


def robustness_metrics(fraction: float) -> dict:
    """One repetition whose every gap group (ViT direction x split, CNN direction) wins in `fraction` of its cells
    and ties in the rest."""

    def gaps(n):
        wins = round(fraction * n)
        return [WIN] * wins + [TIE] * (n - wins)

    m = {"max_step_norm_mismatch": 1e-7}
    for d in robustness.DIRECTIONS:
        for s in robustness.SPLITS:
            m.update({f"vit_gap/{d}/{s}/{layer}": g for layer, g in zip(LAYERS, gaps(len(LAYERS)))})
        cells = [(e, layer) for e in EPOCHS for layer in LAYERS]
        m.update({f"cnn_gap/{d}/train/{e}/{layer}": g for (e, layer), g in zip(cells, gaps(len(cells)))})
    return m


def subspace_metrics(fraction: float) -> dict:
    """One repetition where every compared kind beats the null space in `fraction` of the (dataset, scope) panels of
    every variant and ties it (within the margin) in the rest."""
    panels = [(d, s) for d in DATASETS for s in SCOPES]
    wins = round(fraction * len(panels))
    m = {"null_max_cosine": 1e-16, "sigma_max": 8.0}
    for variant in ("snapshots", "final_only"):
        for i, (d, s) in enumerate(panels):
            m[f"loss/{d}/{variant}/{s}/null space"] = 1.0
            for kind in subspace.COMPARED:
                m[f"loss/{d}/{variant}/{s}/{kind}"] = 1.0 + (WIN if i < wins else HALF_TIE)
    return m


BUILDERS = {"robustness": robustness_metrics, "subspace_perturbations": subspace_metrics}
CLAIMS = [*robustness.CLAIMS, *subspace.CLAIMS]
FRACTIONS = {
    "reproduced": [0.9, 1.0, 0.9, 0.8, 1.0, 0.9, 0.9, 1.0],  # most cells in every repetition: 8 of 8, [0.63, 1]
    "not reproduced": [0.1, 0.0, 0.2, 0.5, 0.1, 0.0, 0.2, 0.1],  # never more than half: 0 of 8, [0, 0.37]
    "inconclusive": [0.2, 1.0, 0.5, 0.9, 0.1, 1.0, 0.0, 0.8],  # repetitions disagree: 4 of 8 straddles one half
}


def by_seed(claim, fractions):
    return {claim.stage: {seed: BUILDERS[claim.stage](f) for seed, f in enumerate(fractions)}}


def test_every_claim_of_both_stages_is_covered():
    assert len(robustness.CLAIMS) == 6 and len(subspace.CLAIMS) == 6
    assert {c.stage for c in robustness.CLAIMS} == {"robustness"}
    assert {c.stage for c in subspace.CLAIMS} == {"subspace_perturbations"}
    assert len({c.statement for c in CLAIMS}) == len(CLAIMS)  # no claim twice
    for claim in CLAIMS:
        assert claim.threshold == "majority" and claim.relation == ">" and claim.kind == "count"
        assert "tie_margin" in claim.quantity and claim.criterion(CFG)


@pytest.mark.parametrize("expected", list(FRACTIONS))
@pytest.mark.parametrize("claim", CLAIMS, ids=lambda c: c.statement[:70])
def test_three_verdicts(claim, expected):
    row = evaluate(claim, by_seed(claim, FRACTIONS[expected]), CFG)
    assert row["n"] == 8
    assert row["verdict"] == expected, row
    assert 0.0 <= row["low"] < row["high"] <= 1.0  # a fraction's interval stays in [0, 1], never of zero width


@pytest.mark.parametrize("claim", CLAIMS, ids=lambda c: c.statement[:70])
def test_three_agreeing_repetitions_are_not_certainty(claim):
    row = evaluate(claim, by_seed(claim, [1.0, 1.0, 1.0]), CFG)
    assert row["verdict"] == "inconclusive" and row["values"] == "3 of 3"
    assert row["low"] == pytest.approx(0.025 ** (1 / 3)) and row["high"] == 1.0
    assert "n = 3 cannot reproduce or fail" in row["note"]


@pytest.mark.parametrize("claim", CLAIMS, ids=lambda c: c.statement[:70])
def test_ties_are_not_wins_and_wins_need_the_margin(claim):
    metrics = by_seed(claim, [0.0, 0.0, 0.0])  # every cell a tie: at (gaps) or within (losses) the margin
    assert claim_values(claim, metrics, CFG) == [0.0, 0.0, 0.0]
    no_margin = CFG.model_copy(update=dict(tie_margin=0.0))  # the same data, margin 0: every tie becomes a win
    assert claim_values(claim, metrics, no_margin) == [1.0, 1.0, 1.0]


def test_each_claim_reads_its_own_group():
    """A win in one group (direction, split, variant, kind) must not count for another claim."""
    base = robustness_metrics(0.0)
    only = {k: (WIN if k.startswith("vit_gap/B->A/test/") else v) for k, v in base.items()}
    values = {c.statement: c.measure(only, CFG) for c in robustness.CLAIMS}
    assert [v for s, v in values.items() if "B->A (test loss)" in s] == [1.0]
    assert sum(values.values()) == 1.0
    sub = subspace_metrics(0.0)
    for dataset, scope in [("synthetic", "fc1"), ("synthetic", "all"), ("fashion_mnist", "fc2"), ("synthetic", "fc2")]:
        sub[f"loss/{dataset}/final_only/{scope}/{subspace.TOWARD_B}"] += 1.0  # 4 of 6 panels: a majority
    values = {(c.statement, i): c.measure(sub, CFG) for i, c in enumerate(subspace.CLAIMS)}
    hits = [s for (s, _), v in values.items() if v > 0]
    assert len(hits) == 1 and "toward B" in hits[0] and "final models only" in hits[0]
    assert max(values.values()) == 1.0


def test_panels_without_a_null_space_are_left_out_and_missing_metrics_are_named():
    m = subspace_metrics(1.0)
    del m["loss/synthetic/snapshots/fc2/null space"]  # span = whole layer: no null-space vector exists
    claim = next(c for c in subspace.CLAIMS if "snapshots" in c.quantity)
    assert claim.measure(m, CFG) == 1.0
    with pytest.raises(KeyError, match="vit_gap/A->B/train/"):
        claim_values(robustness.CLAIMS[0], {"robustness": {0: {}}}, CFG)
    with pytest.raises(KeyError, match="null space"):
        claim_values(claim, {"subspace_perturbations": {0: {"sigma_max": 8.0}}}, CFG)


@pytest.mark.parametrize(
    "module, key, good, bad",
    [
        (robustness, "max_step_norm_mismatch", 1e-7, 1e-2),
        (subspace, "null_max_cosine", 1e-15, 1e-3),
    ],
)
def test_sanity_checks_hold_on_the_construction_and_fail_when_it_breaks(module, key, good, bad):
    (sanity,) = module.SANITY_CHECKS
    assert check(sanity, {sanity.stage: {0: {key: good}, 1: {key: good}}}, CFG)["holds"]
    assert not check(sanity, {sanity.stage: {0: {key: good}, 1: {key: bad}}}, CFG)["holds"]
