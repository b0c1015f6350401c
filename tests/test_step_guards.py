"""The step guards: a loss that is NaN or infinite anywhere stops the run; a network with one non-finite weight
is named as diverged."""

from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Engine

from medgmae.engine import NonFiniteLossHandler
from medgmae.engine.step_guards import non_finite_weights


def _run_with_loss(loss) -> None:
    def step(engine, _):
        engine.state.output = {"loss": loss}
        return engine.state.output

    engine = Engine(step)
    NonFiniteLossHandler("loss").attach(engine)
    engine.run([0])


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_an_infinite_or_nan_scalar_loss_stops_the_run(bad):
    with pytest.raises(FloatingPointError, match=r"non-finite loss \((nan|inf|-inf)\) at epoch 1, iteration 1"):
        _run_with_loss(torch.tensor(bad))
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        _run_with_loss(bad)  # a Python float too


@pytest.mark.parametrize("where", [0, 2])
def test_a_per_item_loss_with_one_nan_item_stops_the_run(where):
    """A loss of several items (a per-sample loss) is checked whole: a NaN in any item stops the run."""
    loss = torch.tensor([0.5, 0.25, 0.125])
    loss[where] = math.nan
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        _run_with_loss(loss)
    _run_with_loss(torch.tensor([0.5, 0.25, 0.125]))  # finite: goes on


def test_one_non_finite_weight_among_finite_ones_is_named():
    """A single NaN or infinite element of a weight tensor counts, not only a wholly non-finite tensor."""
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    assert non_finite_weights({"network": net}) is None
    with torch.no_grad():
        net[1].weight[1, 2] = math.inf
    said = non_finite_weights({"network": net, "other": object()})
    assert said == "the weights of 'network' became NaN or infinite (1.weight first)"
    with torch.no_grad():
        net[0].bias[3] = math.nan
    assert "(0.bias first)" in non_finite_weights({"network": net})
