"""Console hygiene and progress: only the listed third-party notices are filtered, ignite's start notice of every
engine and, on ranks other than 0, the information lines that repeat rank 0's; the per-epoch line and the recorded
mean loss (over every process's iterations)."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from torch.utils.data import DataLoader

from medgmae.engine import EpochProgress, MetricHistory, ValidationProgress, loss_value, quiet_known_warnings
from medgmae.engine.console import _ConsoleLines, mean_over_processes


@pytest.fixture(autouse=True)
def _root_handlers_as_they_were():
    """quiet_known_warnings filters the root logger's handlers (pytest's capture handlers among them): undo it."""
    yield
    for handler in logging.getLogger().handlers:
        for f in [f for f in handler.filters if isinstance(f, _ConsoleLines)]:
            handler.removeFilter(f)


class _Lines(logging.Handler):
    """The messages that reach a handler of the root logger."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.name, record.getMessage()))


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


def _validation_lines(caplog, monkeypatch, lengths, batch_size: int) -> list[str]:
    """The lines a :class:`ValidationProgress` logs over passes of ``lengths`` items in batches of ``batch_size``
    (a bar shown, as on a terminal)."""
    import medgmae.engine.console as console

    monkeypatch.setattr(console, "progress_bars_shown", lambda: True)
    engine = Engine(lambda e, b: None)
    ValidationProgress(progress_bar=True).attach(engine)
    with caplog.at_level(logging.INFO, logger="medgmae.engine"):
        for n in lengths:
            engine.run(DataLoader(range(n), batch_size=batch_size), max_epochs=1)
    return [r.getMessage() for r in caplog.records if r.name == "medgmae.engine"]


def test_validation_progress_logs_one_line_per_pass_with_its_case_count(caplog, capsys, monkeypatch):
    lines = _validation_lines(caplog, monkeypatch, (3, 1), batch_size=1)
    assert len(lines) == 2 and lines[0].startswith("validation: 3 cases in ") and lines[1].startswith("validation: 1 case in ")
    err = capsys.readouterr().err  # the bar, on stderr
    assert "validation: [1/3]" in err and "validation: [1/1]" in err
    with pytest.raises(ValueError, match="progress_bar"):
        ValidationProgress(progress_bar="sometimes")


def test_validation_progress_counts_batches_of_more_than_one_case(caplog, monkeypatch):
    """A pass over 5 cases in batches of 2 is 3 iterations: batches, not cases (it said 3 cases)."""
    lines = _validation_lines(caplog, monkeypatch, (5, 2), batch_size=2)
    assert len(lines) == 2 and lines[0].startswith("validation: 3 batches in ") and lines[1].startswith("validation: 1 batch in ")


def test_bars_are_drawn_on_a_terminal_not_into_a_captured_log(capsys, caplog, monkeypatch):
    """stderr captured (a batch job's log): no bar redraws, the epoch and validation lines alone; a terminal or a
    Jupyter kernel gets the bars."""
    import io
    import sys

    from medgmae.terminal import progress_bars_shown

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    for stream, shown in ((io.StringIO(), False), (Tty(), True), (None, False)):
        monkeypatch.setattr(sys, "stderr", stream)
        assert progress_bars_shown() is shown
    monkeypatch.undo()
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    engine = Engine(lambda e, b: {"loss": torch.tensor(0.5)})
    EpochProgress(progress_bar=True).attach(engine)
    ValidationProgress(progress_bar=True).attach(engine)
    with caplog.at_level(logging.INFO, logger="medgmae.engine"):
        engine.run(range(3), max_epochs=1)
    assert capsys.readouterr().err == ""  # pytest captures stderr: not a terminal
    lines = [r.getMessage() for r in caplog.records if r.name == "medgmae.engine"]
    assert lines[0].startswith("epoch 1/1: train_loss") and lines[1].startswith("validation: 3 batches")  # no loader
    monkeypatch.setitem(sys.modules, "ipykernel", sys)  # in a notebook the bars are widgets
    assert progress_bars_shown()


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

    for name in ("ignite.engine.engine.SupervisedTrainer", "ignite.engine.engine", "ignite"):  # filters that earlier
        logging.getLogger(name).filters.clear()  # tests in this process attached to the shared ignite loggers
    with caplog.at_level(logging.INFO):
        trainer(progress=False).run()
    assert "Engine run resuming from iteration 0, epoch 0" in caplog.text  # what ignite says without it
    caplog.clear()
    with caplog.at_level(logging.INFO):
        trainer(progress=True).run()
    assert "Engine run resuming from iteration 0" not in caplog.text and "Engine run finished" in caplog.text


class _FixedPrediction(torch.nn.Module):
    """A network whose one-hot output is always ``pred``."""

    def __init__(self, pred: torch.Tensor) -> None:
        super().__init__()
        self.pred = pred

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pred.clone()


@pytest.mark.parametrize("quieted_by", ["ValidationProgress", "quiet_known_warnings"])
def test_later_validations_say_nothing_of_resuming_and_keep_their_metrics(caplog, quieted_by):
    """MONAI's evaluator takes the trainer's epoch before ignite's run, which took every validation after the first
    for a resumed run ("Engine run resuming from iteration 0, epoch 1 until 2 epochs"); the line is gone, the Dice
    and the epochs the evaluator records are as before."""
    from monai.engines import SupervisedEvaluator
    from monai.handlers import MeanDice, from_engine

    fg_pred, fg_label = torch.zeros(4, 4), torch.zeros(4, 4)
    fg_pred[:2, :2] = 1  # 4 pixels
    fg_label[0, :] = 1  # 4 pixels, 2 of them shared: Dice 2 * 2 / (4 + 4)
    one_hot = lambda fg: torch.stack([1 - fg, fg])[None]  # noqa: E731
    data = [{"image": torch.zeros(1, 1, 4, 4), "label": one_hot(fg_label)}]
    for name in ("ignite.engine.engine.SupervisedEvaluator", "ignite.engine.engine", "ignite"):
        logging.getLogger(name).filters.clear()  # filters earlier tests attached to the shared ignite loggers
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=data, network=_FixedPrediction(one_hot(fg_pred)),
        key_val_metric={"val_mean_dice": MeanDice(include_background=False,
                                                  output_transform=from_engine(["pred", "label"]))},
    )  # fmt: skip
    if quieted_by == "ValidationProgress":
        ValidationProgress(progress_bar=False).attach(evaluator)
    else:
        quiet_known_warnings()  # on the root logger's handlers, caplog's among them
    dice = []
    with caplog.at_level(logging.INFO):
        for epoch in (1, 2):  # as the trainer's validation handler calls it after epochs 1 and 2
            evaluator.run(global_epoch=epoch)
            dice.append(evaluator.state.metrics["val_mean_dice"])
    assert "resuming" not in caplog.text and "Engine run finished" in caplog.text
    assert dice == [pytest.approx(0.5), pytest.approx(0.5)]
    assert evaluator.state.epoch == 2 and evaluator.state.best_metric_epoch == 1


def _ctrl_c(*args, **kwargs):
    raise KeyboardInterrupt


def test_every_engine_loses_the_start_notice_and_other_ranks_their_information_lines(caplog, monkeypatch):
    """After quiet_known_warnings (every bundle's initialize), an evaluator without EpochProgress starts without
    ignite's "resuming from iteration 0, epoch 0"; on rank 1 (torchrun's RANK before the process group exists) the
    information lines of ignite and the toolkit are dropped, warnings and other libraries' lines stay."""
    from monai.engines import SupervisedEvaluator

    lines = _Lines()
    logging.getLogger().addHandler(lines)
    try:
        quiet_known_warnings()
        quiet_known_warnings()  # idempotent: one filter per handler
        assert sum(isinstance(f, _ConsoleLines) for f in lines.filters) == 1
        net = torch.nn.Linear(2, 1)
        evaluator = SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=[{"image": torch.zeros(1, 2)}],
                                        network=net)  # fmt: skip
        with caplog.at_level(logging.INFO):
            evaluator.run()
            assert not any("Engine run resuming from iteration 0" in m for _, m in lines.lines)
            assert any(n.startswith("ignite.engine") for n, _ in lines.lines)  # ignite's other lines stay
            lines.lines.clear()
            with pytest.raises(KeyboardInterrupt):  # ignite's error line names nothing after Ctrl-C
                SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=[{"image": torch.zeros(1, 2)}],
                                    network=net, prepare_batch=_ctrl_c).run()  # fmt: skip
            assert not any(m.startswith("Engine run is terminating") for _, m in lines.lines)
            monkeypatch.setenv("RANK", "1")
            lines.lines.clear()
            for name in ("medgmae.engine", "ignite.engine.engine.SupervisedTrainer", "monai.bundle"):
                logging.getLogger(name).info("information")
                logging.getLogger(name).warning("warning")
            assert sorted(lines.lines) == sorted([("medgmae.engine", "warning"), ("monai.bundle", "information"),
                                                  ("monai.bundle", "warning"),
                                                  ("ignite.engine.engine.SupervisedTrainer", "warning")])  # fmt: skip
            monkeypatch.setenv("RANK", "0")
            lines.lines.clear()
            logging.getLogger("medgmae.engine").info("information")
            assert lines.lines == [("medgmae.engine", "information")]
    finally:
        logging.getLogger().removeHandler(lines)


def test_the_epoch_loss_is_the_mean_over_every_process(monkeypatch):
    """Under torch.distributed the epoch's loss is the mean of all ranks' iterations (here a fake second rank with
    3 iterations summing to 0.9 beside this rank's 2 summing to 0.2: 1.1 / 5), not this rank's alone."""
    import torch.distributed as dist

    assert mean_over_processes(0.2, 2) == 0.2 / 2 and np.isnan(mean_over_processes(0.0, 0))
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "get_backend", lambda: "gloo")
    monkeypatch.setattr(dist, "all_reduce", lambda t, op=None: t.add_(torch.tensor([0.9, 3.0], dtype=t.dtype)))
    assert mean_over_processes(0.2, 2) == pytest.approx(1.1 / 5)


def test_a_single_process_epoch_loss_is_the_plain_mean_bit_for_bit():
    losses = np.random.default_rng(1).random(7).astype(np.float32)
    engine = Engine(lambda e, b: {"loss": torch.tensor(losses[e.state.iteration - 1])})
    history = MetricHistory()
    EpochProgress(history=history, progress_bar=False).attach(engine)
    engine.run(range(7), max_epochs=1)
    total = 0.0
    for value in losses:
        total += float(value)
    assert history.get("train_loss") == ([1], [total / 7])


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


def test_orientation_letters_name_the_directions_at_each_edge_of_a_view():
    """Each view's edge letters are where mid_slices shows that direction: a slab at the patient's far right
    (R, the highest first index of a RAS volume), left, anterior... lies along the edge its letter marks; the letters
    are drawn in yellow at the edges' middles of a tile, and not on a tile too small to hold them."""
    from medgmae.engine.figures import _EDGE_LETTERS, LETTER_COLOUR, mid_slices, with_orientation_letters

    slabs = {"R": (-1, 0), "L": (0, 0), "A": (-1, 1), "P": (0, 1), "S": (-1, 2), "I": (0, 2)}  # (index, RAS axis)
    edges = {0: lambda sl: sl[:, 0], 1: lambda sl: sl[:, -1], 2: lambda sl: sl[0, :], 3: lambda sl: sl[-1, :]}
    for view, letters in enumerate(_EDGE_LETTERS):
        for edge, letter in enumerate(letters):
            vol = np.zeros((10, 12, 14))
            index, axis = slabs[letter]
            vol[(slice(None),) * axis + (index,)] = 1.0
            sl = mid_slices(vol)[view]
            assert edges[edge](sl).min() == 1.0 and sl.sum() == edges[edge](sl).sum(), (view, letter)
    tile = with_orientation_letters(np.zeros((64, 80, 3), np.uint8), 2)
    yellow = np.all(tile == LETTER_COLOUR, axis=-1)
    assert yellow[24:40, :8].any() and yellow[24:40, -8:].any() and yellow[:12, 32:48].any() and yellow[-12:, 32:48].any()
    assert not yellow[12:52, 12:68].any()  # the image itself is left alone
    assert not np.all(with_orientation_letters(np.zeros((20, 80, 3), np.uint8), 2) == LETTER_COLOUR, axis=-1).any()


def test_a_title_longer_than_its_picture_widens_it_instead_of_being_cut():
    """A zero-shot picture of a small scan (two 128-pixel tiles) under a 90-character title lost the title's end:
    the band, and the picture with it, is widened with black to hold the whole text; a short one changes nothing."""
    from PIL import Image, ImageDraw

    from medgmae.engine.figures import figure_font, label_tile

    title = "case_0000: voxels 0.70 (R-L) x 0.90 (A-P) x 2.50 (I-S) mm; grey window [-1000, 1000] HU"
    img = np.full((40, 128, 3), 90, np.uint8)
    out = label_tile(img, title)
    ink = np.argwhere(out[:14].max(axis=-1) > 0)  # the band's white pixels
    full = ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(title, font=figure_font())
    assert out.shape[1] > 128 and ink[:, 1].max() >= full - 6  # the text's last glyph is drawn
    assert np.array_equal(out[14:, :128], img) and not out[14:, 128:].any()  # the picture as it was, black beside
    assert label_tile(img, "short").shape == (54, 128, 3)


def test_each_figure_function_names_itself_in_its_refusals():
    """``orthogonal_views`` refused mismatched names in the words of ``orthogonal_slices`` (a wrapper since
    removed), a function its caller never called; it now names itself."""
    from medgmae.engine.figures import mid_slices, orthogonal_views

    vol = np.zeros((4, 5, 6), np.float32)
    with pytest.raises(ValueError, match=r"^orthogonal_views needs .* got 1, 2 and 1$"):
        orthogonal_views([mid_slices(vol)], names=["a", "b"])
    assert orthogonal_views([mid_slices(vol)], names=["a"]).ndim == 3


@pytest.mark.parametrize("logger_name", [None, "default"])
def test_a_stop_in_validation_leaves_no_stats_handler_traceback_and_errors_keep_theirs(logger_name):
    """MONAI's StatsHandler on a validation engine logs ``Exception: `` with a traceback from its exception hook:
    after quiet_known_warnings dropped for a Ctrl-C / SIGTERM stop (a ``KeyboardInterrupt``; the run's last line
    says what to do), kept for a real error; on MONAI's own StatsHandler logger (the bundles') and on the engine's."""
    from monai.engines import SupervisedEvaluator
    from monai.handlers import StatsHandler

    from medgmae.bundle_errors import Terminated

    def stopped(batch, device=None, non_blocking=False, **kwargs):
        raise Terminated()

    def failed(batch, device=None, non_blocking=False, **kwargs):
        raise RuntimeError("a broken batch")

    lines = _Lines()
    kwargs = {} if logger_name == "default" else {"name": None}
    watched = logging.getLogger() if logger_name is None else StatsHandler(**kwargs).logger
    watched.addHandler(lines)
    try:
        quiet_known_warnings()
        for prepare, error in ((stopped, Terminated), (failed, RuntimeError)):
            evaluator = SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=[{"image": torch.zeros(1, 2)}],
                                            network=torch.nn.Linear(2, 1), prepare_batch=prepare)  # fmt: skip
            StatsHandler(iteration_log=False, **kwargs).attach(evaluator)
            lines.lines.clear()
            with pytest.raises(error):
                evaluator.run()
            logged = {m for _, m in lines.lines if m.startswith("Exception: ")}
            assert logged == (set() if error is Terminated else {"Exception: a broken batch"})
    finally:
        watched.removeHandler(lines)



@pytest.mark.parametrize("logger_name", [None, "default"])
def test_a_write_without_room_leaves_no_engine_error_lines_and_other_errors_keep_theirs(logger_name):
    """Of an error, ignite logs ``Current run is terminating ...`` and ``Engine run is terminating ...`` and MONAI's
    StatsHandler ``Exception: `` with the whole traceback, twice; of a write without room (an ``OutputWriteError``
    under MONAI's transform wrappers) the run's last line names the file and the problem, so after
    quiet_known_warnings none of them is left; an error of another kind keeps them."""
    import errno

    from monai.engines import SupervisedEvaluator
    from monai.handlers import StatsHandler

    from medgmae.write_failures import OutputWriteError

    def no_room(batch, device=None, non_blocking=False, **kwargs):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as e:
            try:
                raise OutputWriteError(errno.ENOSPC, "seg.nii.gz could not be written", "seg.nii.gz") from e
            except OutputWriteError as failure:
                raise RuntimeError("applying transform <SaveSegmentationd>") from failure

    def broken(batch, device=None, non_blocking=False, **kwargs):
        raise RuntimeError("a broken batch")

    lines, stats_lines = _Lines(), _Lines()
    kwargs = {} if logger_name == "default" else {"name": None}
    logging.getLogger().addHandler(lines)
    stats = StatsHandler(**kwargs).logger if logger_name == "default" else logging.getLogger("unused")
    stats.addHandler(stats_lines)  # MONAI's own logger, which does not propagate to the root logger
    try:
        quiet_known_warnings()
        for prepare in (no_room, broken):
            evaluator = SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=[{"image": torch.zeros(1, 2)}],
                                            network=torch.nn.Linear(2, 1), prepare_batch=prepare)  # fmt: skip
            StatsHandler(iteration_log=False, **kwargs).attach(evaluator)
            lines.lines.clear(), stats_lines.lines.clear()
            with pytest.raises(RuntimeError):
                evaluator.run()
            logged = [m for _, m in lines.lines + stats_lines.lines if "terminating" in m or m.startswith("Exception")]
            assert len(logged) == (0 if prepare is no_room else 4), logged
    finally:
        logging.getLogger().removeHandler(lines)
        stats.removeHandler(stats_lines)
