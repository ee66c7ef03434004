"""The alignment stage's pairs and premise: cross pairs of train_pairs (A of one pair with B of the next) start from
different initializations under every pairing scheme, a single pair does not, and the premise says so."""

import pytest

from llmc_utils.core import claims
from llmc_utils.pipeline import registry
from llmc_utils.pipeline.params import validate_params
from llmc_utils.pipeline.report import ReportConfig
from llmc_utils.stages import alignment


def test_cross_pairs_take_the_next_pairs_b_cyclically():
    assert alignment.cross_pairs([0, 1, 2, 3, 4], 3) == [(0, 1), (1, 2), (2, 0)]
    assert alignment.cross_pairs([3, 7], 3) == [(3, 7), (7, 3)]
    assert alignment.cross_pairs([0], 3) == [(0, 0)]  # one pair: its own (same-init) pair


@pytest.mark.parametrize("scheme", ["same_init_different_order", "disjoint_halves", "different_init"])
def test_cross_pairs_differ_in_initialization_under_every_scheme(scheme):
    params = validate_params({"train_pairs": {"scheme": scheme}})
    for cross in alignment.cross_pairs([0, 1, 2], 3):
        seeds = alignment.init_seeds(params, cross)
        assert seeds["different_init"] == 1.0 and seeds["init_seed_A"] != seeds["init_seed_B"]
    own = alignment.init_seeds(params, (0, 0))["different_init"]
    assert own == (1.0 if scheme == "different_init" else 0.0)


def test_premise_fails_for_a_same_init_pair():
    premise = registry.all_premises()[alignment.DIFFERENT_INIT]
    assert all(c.premise == alignment.DIFFERENT_INIT for c in alignment.CLAIMS)
    runs = {"alignment": {0: {"different_init": 1.0}, 1: {"different_init": 0.0}}}
    assert claims.evaluate_premise(premise, runs, ReportConfig())[0]["premise_holds"] is False
    runs["alignment"][1]["different_init"] = 1.0
    assert claims.evaluate_premise(premise, runs, ReportConfig())[0]["premise_holds"] is True
