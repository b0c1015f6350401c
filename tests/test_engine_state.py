"""The metric history's best epoch (ties keep the earlier epoch, in both modes) and the random states a resume
restores exactly (NumPy's cached Gaussian included)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.transforms import RandGaussianNoised

from medgmae.engine import MetricHistory
from medgmae.engine.random_state import RandomStateTracker
from medgmae.engine.resume import epoch_checkpoints, latest_checkpoint


@pytest.mark.parametrize("mode, values, best", [
    ("max", [1.0, 3.0, 3.0, 2.0], (3.0, 2)),
    ("min", [3.0, 1.0, 1.0, 2.0], (1.0, 2)),
    ("min", [math.nan, 2.0, math.inf, 2.0], (2.0, 2)),
])  # fmt: skip
def test_a_tie_keeps_the_earlier_best_epoch(mode, values, best):
    history = MetricHistory("val_loss", mode)
    improved = [history.update_best(epoch, v) for epoch, v in enumerate(values, start=1)]
    assert (history.best_value, history.best_epoch) == best
    assert improved[best[1] - 1] and not any(improved[best[1]:])


def test_forgetting_the_best_lets_any_finite_value_win_in_both_modes():
    for mode, value in (("max", -1e30), ("min", 1e30)):
        history = MetricHistory("m", mode)
        history.update_best(1, 0.0)
        history.forget_best()
        assert not history.has_best and history.update_best(2, value) and history.best_epoch == 2


def test_record_replaces_only_the_same_epoch():
    history = MetricHistory()
    for epoch, value in ((1, 1.0), (2, 2.0), (2, 2.5), (1, 0.5)):
        history.record("val_psnr", epoch, value)
    assert history.get("val_psnr") == ([1, 2, 1], [1.0, 2.5, 0.5])


def test_a_restored_state_continues_numpy_s_cached_gaussian():
    """NumPy's legacy normal draws come in pairs, the second cached: a state saved between them must give the cached
    value next, for the global generator and a transform's own."""
    tracker = RandomStateTracker(RandGaussianNoised(keys="image", prob=1.0))
    rs = tracker.transforms[0].R
    np.random.seed(3), rs.seed(4), torch.manual_seed(5)
    np.random.standard_normal(), rs.standard_normal()  # an odd number of draws: one value cached in each
    assert np.random.get_state()[3] == 1 and rs.get_state()[3] == 1
    saved = tracker.state_dict()
    expected = [np.random.standard_normal(3).tolist(), rs.standard_normal(3).tolist(), torch.rand(2).tolist()]
    np.random.seed(0), rs.seed(0), torch.manual_seed(0)
    RandomStateTracker(None).load_state_dict(saved)  # another process without the transform: global state only
    assert np.random.standard_normal(3).tolist() == expected[0]
    tracker.load_state_dict(saved)
    got = [np.random.standard_normal(3).tolist(), rs.standard_normal(3).tolist(), torch.rand(2).tolist()]
    assert got == expected


def test_the_newest_checkpoint_is_the_largest_epoch_number_not_the_last_name(tmp_path):
    """``checkpoint_epoch=10.pt`` is newer than ``=9.pt`` (which sorts after it as text); other files are ignored."""
    for name in ("checkpoint_epoch=9.pt", "checkpoint_epoch=10.pt", "checkpoint_epoch=2.pt", "checkpoint_epoch=3.pt.tmp",
                 "checkpoint_interrupted.pt", "model.pt"):  # fmt: skip
        (tmp_path / name).write_bytes(b"")
    assert [n for n, _ in epoch_checkpoints(tmp_path)] == [10, 9, 2]
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint_epoch=10.pt"
    assert latest_checkpoint(tmp_path / "none") is None and epoch_checkpoints(tmp_path / "none") == []
