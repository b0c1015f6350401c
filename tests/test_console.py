"""Console hygiene and progress: only the listed third-party notices are filtered; the per-epoch line and the
recorded mean loss."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch
from ignite.engine import Engine

from medgmae.engine import EpochProgress, MetricHistory, loss_value, quiet_known_warnings


def test_only_the_known_notices_are_filtered(caplog):
    quiet_known_warnings()
    quiet_known_warnings()  # idempotent
    log = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    with caplog.at_level(logging.INFO):
        log.warning("nvImageCodec is not available; skipping pydicom decoder plugin registration.")
        log.warning("something else went wrong")
    assert [r.getMessage() for r in caplog.records] == ["something else went wrong"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_known_warnings()  # filters go in front of "always"
        warnings.warn("NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register successfully.", UserWarning)
        warnings.warn("our own warning", UserWarning)
    assert [str(w.message) for w in caught] == ["our own warning"]


def test_epoch_progress_logs_one_line_per_epoch_and_records_the_mean_loss(caplog):
    losses = np.random.default_rng(0).random((2, 5))
    engine = Engine(lambda e, b: {"loss": torch.tensor(losses[e.state.epoch - 1, (e.state.iteration - 1) % 5])})
    history = MetricHistory()
    EpochProgress(history=history, progress_bar="false").attach(engine)
    with caplog.at_level(logging.INFO, logger="medgmae.engine"):
        engine.run(range(5), max_epochs=2)
    lines = [r.getMessage() for r in caplog.records if r.name == "medgmae.engine"]
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2: train_loss") and "5 iterations" in lines[0]
    epochs, values = history.get("train_loss")
    assert epochs == [1, 2] and np.allclose(values, losses.mean(1))
    assert loss_value([{"loss": torch.tensor(0.5)}]) == 0.5 and loss_value({"other": 1}) is None
    with pytest.raises(ValueError, match="progress_bar"):
        EpochProgress(progress_bar="maybe")


def test_the_meaningless_engine_resuming_line_is_dropped(caplog):
    """A MONAI trainer starts with ignite's "Engine run resuming from iteration 0, epoch 0", fresh or resumed; with
    EpochProgress attached that line is gone and ignite's other lines stay."""
    from monai.engines import SupervisedTrainer

    def trainer(progress: bool) -> SupervisedTrainer:
        net = torch.nn.Linear(2, 1)
        data = [{"image": torch.zeros(1, 2), "label": torch.zeros(1, 1)}]
        t = SupervisedTrainer(device=torch.device("cpu"), max_epochs=1, train_data_loader=data, network=net,
                              optimizer=torch.optim.SGD(net.parameters(), lr=0.1), loss_function=torch.nn.MSELoss())
        if progress:
            EpochProgress(progress_bar=False).attach(t)
        return t

    with caplog.at_level(logging.INFO):
        trainer(progress=False).run()
    assert "Engine run resuming from iteration 0, epoch 0" in caplog.text  # what ignite says without it
    caplog.clear()
    with caplog.at_level(logging.INFO):
        trainer(progress=True).run()
    assert "Engine run resuming from iteration 0" not in caplog.text and "Engine run finished" in caplog.text


def test_slice_pictures_are_shown_radiologically():
    """A marker at the patient's right, anterior and superior corner of a RAS-ordered volume appears at the top left
    of the sagittal (anterior on the left), coronal and axial (the patient's right on the left) slices, and
    slice_point puts a point where mid_slices shows it."""
    from medgmae.engine.figures import mid_slices, slice_point

    shape = (10, 12, 14)  # (R, A, S) voxel counts
    vol = np.zeros(shape)
    point = (9, 11, 13)  # the right-most, most anterior, most superior voxel
    vol[point] = 1.0
    centred = np.zeros(shape)
    centred[5, 6, 7] = 1.0  # through the default mid-slices
    for view, sl in enumerate(mid_slices(vol, centre=point)):
        assert np.argwhere(sl == 1.0).tolist() == [[0, 0]], view
    for view, sl in enumerate(mid_slices(centred)):
        row, col, dist = slice_point(view, (5, 6, 7), shape)
        assert dist == 0 and sl[int(row), int(col)] == 1.0, view
