"""The engine defends itself: LayerEvaluator.partial() refuses a state that is not its cached endpoint with only
`keys` changed (wrong tag, unlisted change, other keys), and activation caching never runs the children of a model
with its own forward as a chain (a residual block whose skip spans the whole model has no boundary to resume at)."""

import pytest
import torch
from torch import nn

from llmc_utils.core.evaluation import Evaluator, LayerEvaluator
from llmc_utils.core.layers import logical_layers, mix


def pair(model: nn.Module):
    state_a = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(5)
    state_b = {k: torch.randn(v.shape, generator=g) for k, v in state_a.items()}
    return state_a, state_b


def splits(n=40):
    g = torch.Generator().manual_seed(1)
    return {"test": (torch.randn(n, 3, generator=g), torch.randint(0, 3, (n,), generator=g))}


@pytest.fixture
def chain():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3))
    return (model, *pair(model))


def test_partial_refuses_a_tag_that_does_not_match_the_base(chain):
    model, a, b = chain
    ev = LayerEvaluator(model, splits())
    ev.endpoint(a, "A"), ev.endpoint(b, "B")
    keys = logical_layers(a)["2"]
    mixed_into_b = mix(a, b, 0.5, keys, base="B")
    with pytest.raises(ValueError, match="differs from the endpoint under tag 'A' outside `keys`, at 0.weight"):
        ev.partial(mixed_into_b, "A", keys)  # would start from A's cached activations: A's layer 0, not B's
    assert ev.partial(mixed_into_b, "B", keys) == Evaluator(model, splits())(mixed_into_b)  # right tag: accepted


def test_partial_refuses_a_change_outside_keys(chain):
    model, a, b = chain
    ev = LayerEvaluator(model, splits())
    ev.endpoint(a, "A")
    state = mix(a, b, 0.5, logical_layers(a)["2"])
    state["4.bias"] = state["4.bias"] + 1.0  # a second change that `keys` does not list
    with pytest.raises(ValueError, match="outside `keys`, at 4.bias"):
        ev.partial(state, "A", logical_layers(a)["2"])


def test_partial_accepts_equal_copies_and_refuses_unknown_tags_keys_and_missing_tensors(chain):
    model, a, b = chain
    ev = LayerEvaluator(model, splits())
    with pytest.raises(ValueError, match="no endpoint under tag 'A'"):
        ev.partial(a, "A", ["0.weight"])
    ev.endpoint(a, "A")
    copy = {k: v.clone() for k, v in mix(a, b, 0.5, ["2.weight"]).items()}  # equal, not identical: still the endpoint
    assert ev.partial(copy, "A", ["2.weight"]) == Evaluator(model, splits())(copy)
    with pytest.raises(ValueError, match="unknown: 9.weight"):
        ev.partial(a, "A", ["9.weight"])
    with pytest.raises(ValueError, match="keys is empty"):
        ev.partial(a, "A", [])
    with pytest.raises(ValueError, match=r"missing \[4.bias\]"):
        ev.partial({k: v for k, v in a.items() if k != "4.bias"}, "A", ["2.weight"])


def test_partial_checks_even_when_caching_is_off(chain):
    model, a, b = chain
    ev = LayerEvaluator(model, splits(), cache_activations=False)
    ev.endpoint(a, "A"), ev.endpoint(b, "B")
    with pytest.raises(ValueError, match="outside `keys`"):
        ev.partial(mix(a, b, 0.5, ["2.weight"], base="B"), "A", ["2.weight"])


class Residual(nn.Sequential):
    """x + f(x): an nn.Sequential subclass whose output is not the chain of its children."""

    def forward(self, x):
        return x + super().forward(x)


def test_sequential_subclass_with_its_own_forward_is_evaluated_whole():
    torch.manual_seed(0)
    model = Residual(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3))
    a, b = pair(model)
    ev, plain = LayerEvaluator(model, splits()), Evaluator(model, splits())
    assert not ev.enabled  # no activation cache: children in a row would drop the skip connection
    assert ev.endpoint(a, "A") == plain(a)
    mixed = mix(a, b, 0.5, ["2.weight", "2.bias"])
    assert ev.partial(mixed, "A", ["2.weight", "2.bias"]) == plain(mixed)

    class Chain(nn.Sequential):  # a subclass that keeps Sequential's forward is still a chain
        pass

    assert LayerEvaluator(Chain(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3)), splits()).enabled


def test_plain_chain_of_the_residual_block_would_have_been_wrong():
    """Why the guard matters: running the residual block's children as a chain gives another endpoint loss."""
    torch.manual_seed(0)
    model = Residual(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3))
    a, _ = pair(model)
    chained = nn.Sequential(*model.children())
    assert Evaluator(chained, splits())(a)["test"]["loss"] != pytest.approx(
        Evaluator(model, splits())(a)["test"]["loss"]
    )
