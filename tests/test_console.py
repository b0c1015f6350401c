"""Console hygiene: known third-party notices, ignite's start notice, other ranks' information lines, stop traces."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch

from medgmae.engine import EpochProgress, ValidationProgress, quiet_known_warnings
from medgmae.engine.console import _ConsoleLines


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
