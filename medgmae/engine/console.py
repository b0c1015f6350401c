"""What a training run prints: a per-epoch progress bar, one summary line per epoch, and no known-harmless
third-party noise.

:func:`quiet_known_warnings` removes, by exact message, the notices that MONAI emits on every run although
nothing is wrong (the nvImageCodec DICOM plugin missing on a machine without it), ignite's start notice of every
engine (and of every validation: a false "resuming"), and on training processes other than rank 0 the information lines that repeat rank 0's. Everything else, and
every warning of the toolkit itself, stays visible. :class:`EpochProgress` puts ignite's tqdm
:class:`~ignite.handlers.ProgressBar` (loss, it/s, ETA; redrawn at most every half second,
:func:`medgmae.terminal.steady_bar`) on the console and logs one line per epoch for log files;
:class:`ValidationProgress` does the same for a validation pass (a bar over its batches, one line with its time).
Where no bar can be drawn (a log) a long epoch or pass logs a line every
:data:`medgmae.terminal.LINE_SECONDS` instead, with its count and time left (:class:`medgmae.terminal.ProgressLines`).
"""

from __future__ import annotations

import logging
import math
import re
import sys
import time
import warnings
from typing import Any, Callable, Mapping

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events

from medgmae.bundle_errors import exception_chain
from medgmae.cli_types import as_bool
from medgmae.distributed import is_main_process, rank_world, sharded_loader
from medgmae.words import plural, plural_noun
from medgmae.terminal import ProgressLines, progress_bars_shown, steady_bar
from medgmae.write_failures import OutputWriteError

__all__ = [
    "EpochProgress",
    "ValidationProgress",
    "IGNITE_START",
    "KNOWN_HARMLESS",
    "loss_value",
    "mean_over_processes",
    "quiet_known_warnings",
]

logger = logging.getLogger("medgmae.engine")

#: ``(logger name or warning category, message start)`` of the third-party notices :func:`quiet_known_warnings`
#: removes. Each is emitted on every run and needs no action.
KNOWN_HARMLESS: tuple[tuple[str, str], ...] = (
    # MONAI's DICOM reader looks for NVIDIA's optional GPU JPEG decoder and says so when it is absent
    ("monai.data.nvimgcodec_pydicom_plugin", "nvImageCodec is not available"),
    ("UserWarning", "NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register"),
)


class _DropMessages(logging.Filter):
    def __init__(self, starts: tuple[str, ...]) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.starts)


#: ignite's notice when a MONAI workflow starts, fresh or resumed, and at every validation: never informative. The
#: workflow builds the engine's state before ignite's ``run``, which takes any state not yet done for a run to resume:
#: a trainer's at epoch 0, and an evaluator's at each validation, as MONAI's ``Evaluator.run`` sets its epoch to the
#: trainer's (``epoch 1 until 2 epochs`` at the second), so that its metrics and best epoch are recorded at the
#: trainer's epoch; resetting that state would change those epochs, so the line is dropped. A resumed run names its
#: checkpoint and epoch itself; ignite's notice of a truly resumed engine starts at a later iteration and stays.
IGNITE_START = "Engine run resuming from iteration 0, "


#: ignite's error line for an exception without a message: after Ctrl-C it names nothing (the run's last line says
#: how to continue).
_IGNITE_CTRL_C = "Engine run is terminating due to exception: "


#: MONAI ``StatsHandler``'s error line with its traceback (``Exception: `` and the exception's text): logged by a
#: validation engine's handler when Ctrl-C or SIGTERM stops a pass, where it names nothing the run's last line does
#: not (the trainer's checkpoint handler re-raises a stop before its own ``StatsHandler`` sees it).
_STATS_EXCEPTION = "Exception: "


def _is_stop_traceback(record: logging.LogRecord) -> bool:
    """Whether ``record`` is a ``StatsHandler``'s :data:`_STATS_EXCEPTION` line of a Ctrl-C / SIGTERM stop (a
    ``KeyboardInterrupt``)."""
    stop = bool(record.exc_info) and isinstance(record.exc_info[1], KeyboardInterrupt)
    return stop and str(record.getMessage()).startswith(_STATS_EXCEPTION)


#: ignite's error lines of an engine stopped by an error, logged (with no traceback) while it handles the error.
_IGNITE_STOPPED = ("Current run is terminating due to exception: ", _IGNITE_CTRL_C)


def _is_write_failure_traceback(record: logging.LogRecord) -> bool:
    """Whether ``record`` is of a write without room, which the run's last line names with its file and problem
    (:func:`medgmae.bundle_errors.summarise_errors`; with the whole traceback where that line is not the reason's):
    a ``StatsHandler``'s ``Exception: `` with the traceback of an exception whose chain (causes and contexts) holds
    an :class:`~medgmae.write_failures.OutputWriteError`, or ignite's ``Current run is terminating ...`` and
    ``Engine run is terminating ...`` of one, logged as ignite handles it (so the exception being handled)."""
    error = record.exc_info[1] if record.exc_info else None
    if error is None and record.name.startswith("ignite.") and str(record.getMessage()).startswith(_IGNITE_STOPPED):
        error = sys.exc_info()[1]  # a filter runs in the logging call, inside ignite's ``except`` block
    return isinstance(error, BaseException) and any(isinstance(e, OutputWriteError) for e in exception_chain(error))


class _DropStopTracebacks(logging.Filter):
    """On ``StatsHandler``'s own logger (MONAI's default, which has its own handler and does not propagate): drops
    :func:`_is_stop_traceback` and :func:`_is_write_failure_traceback` lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_is_stop_traceback(record) or _is_write_failure_traceback(record))


def _stats_handler_logger() -> logging.Logger:
    """The logger MONAI's ``StatsHandler`` logs to by default (its ``name`` argument's default)."""
    import inspect

    from monai.handlers import StatsHandler

    return logging.getLogger(inspect.signature(StatsHandler.__init__).parameters["name"].default)


class _ConsoleLines(logging.Filter):
    """On a log handler: drops :data:`IGNITE_START` of every engine, its empty error line after Ctrl-C, a
    ``StatsHandler``'s traceback of a Ctrl-C / SIGTERM stop, the error lines of a write without room
    (:func:`_is_write_failure_traceback`), and on training processes other than rank 0 the
    information lines of ignite and the toolkit (each would repeat rank 0's); warnings and errors stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.getMessage())
        if record.name.startswith("ignite.") and (message.startswith(IGNITE_START) or message == _IGNITE_CTRL_C):
            return False
        if _is_stop_traceback(record):  # a StatsHandler given the engine's logger (name=None)
            return False
        if _is_write_failure_traceback(record):  # the run's last line names the file
            return False
        return not (record.levelno <= logging.INFO and record.name.split(".")[0] in ("ignite", "medgmae")
                    and not is_main_process())  # fmt: skip




def _drop_start_notice(engine: Engine) -> None:
    """Drop :data:`IGNITE_START` on ``engine``'s own logger, also where :func:`quiet_known_warnings` was not called."""
    if not any(isinstance(f, _DropMessages) and f.starts == (IGNITE_START,) for f in engine.logger.filters):
        engine.logger.addFilter(_DropMessages((IGNITE_START,)))


def quiet_known_warnings() -> None:
    """Filter the notices listed in :data:`KNOWN_HARMLESS` (by exact message start), a validation
    ``StatsHandler``'s traceback of a Ctrl-C / SIGTERM stop or of a write without room, and on the root logger's
    handlers ignite's start notice of every engine (:data:`IGNITE_START`), the error lines of a write without room
    (the run's last line names the file) and, on ranks other than 0, the information lines of ignite and the
    toolkit; idempotent.

    Call it before the data pipeline is built (the bundles do so from their ``initialize`` step, after MONAI's
    runner has set up the logging handlers).
    """
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _ConsoleLines) for f in handler.filters):
            handler.addFilter(_ConsoleLines())
    categories = {"UserWarning": UserWarning, "FutureWarning": FutureWarning, "DeprecationWarning": DeprecationWarning}
    stats = _stats_handler_logger()
    if not any(isinstance(f, _DropStopTracebacks) for f in stats.filters):
        stats.addFilter(_DropStopTracebacks())
    for source, start in KNOWN_HARMLESS:
        if source in categories:
            warnings.filterwarnings("ignore", message=re.escape(start), category=categories[source])
            continue
        log = logging.getLogger(source)
        if not any(isinstance(f, _DropMessages) and f.starts == (start,) for f in log.filters):
            log.addFilter(_DropMessages((start,)))




def loss_value(output: Any, key: str = "loss") -> float | None:
    """The loss of an engine output as a float (dict, decollated list of dicts, tensor or number), or None."""
    if isinstance(output, (list, tuple)) and output and isinstance(output[0], Mapping):
        output = output[0]  # decollated batch: every item carries the batch loss
    value = output.get(key) if isinstance(output, Mapping) else output
    if value is None:
        return None
    if torch.is_tensor(value):
        return float(value.detach().float().mean())
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def mean_over_processes(total: float, count: int) -> float:
    """The mean of values summed and counted in each training process: ``sum(total) / sum(count)`` over the
    processes under torch.distributed (a collective: every rank calls it), ``total / count`` without it.

    Args:
        total: this process's sum of the values.
        count: how many values it summed.

    Returns:
        The mean over all processes' values (NaN when none has any).
    """
    if rank_world()[1] == 1:
        return total / count if count else math.nan
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    both = torch.tensor([float(total), float(count)], dtype=torch.float64, device=device)
    dist.all_reduce(both, op=dist.ReduceOp.SUM)
    total, count = float(both[0]), float(both[1])
    return total / count if count else math.nan


class _LoopLines:
    """A :class:`~medgmae.terminal.ProgressLines` over each epoch of an engine (a training epoch, a validation pass),
    logged where no bar shows it.

    Args:
        label: the line's start for the engine's current epoch (``"epoch 3/15"``, ``"validation"``).
        unit: what an iteration is, in the singular (``"iteration"``), or a function of the engine giving it
            (:func:`_batch_unit`).
    """

    def __init__(self, label: Callable[[Engine], str], unit: str | Callable[[Engine], str]) -> None:
        self.label, self.unit = label, unit
        self.lines: ProgressLines | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._step)

    def _start(self, engine: Engine) -> None:
        total = engine.state.epoch_length
        unit = plural_noun(self.unit if isinstance(self.unit, str) else self.unit(engine))
        self.lines = None if not total else ProgressLines(
            self.label(engine), total, unit, logger.info, first=engine.state.iteration % total, bar=False)

    def _step(self, engine: Engine) -> None:
        if self.lines is not None:
            self.lines.update((engine.state.iteration - 1) % self.lines.total + 1)


def _epoch_label(engine: Engine) -> str:
    """``"epoch 3/15"``: the engine's current epoch and its number of epochs."""
    return f"epoch {engine.state.epoch}/{engine.state.max_epochs or 0}"


def _batch_unit(engine: Engine) -> str:
    """What an iteration of a validation pass is: ``"case"`` when the engine's data loader takes one item a batch,
    else ``"batch"`` (a larger or unknown batch size)."""
    loader = getattr(engine.state, "dataloader", None)
    return "case" if getattr(loader, "batch_size", None) == 1 else "batch"


def _attach_progress(engine: Engine, progress_bar: bool, bar: Callable[[], Any], lines: _LoopLines) -> None:
    """On rank 0: the tqdm bar made by ``bar`` where one can be drawn and ``progress_bar`` asks for it; ``lines``
    where none can be drawn (a log)."""
    if not is_main_process():
        return
    if not progress_bars_shown():
        lines.attach(engine)
    elif progress_bar:
        bar()


class EpochProgress:
    """A tqdm progress bar per epoch (loss, it/s, ETA) and one summary line per epoch in the log.

    The bar goes to the terminal (stderr) and disappears at the epoch's end, where one line
    ``epoch 3/15: train_loss 0.01234 (16 iterations, 14.2 s, 1.13 it/s)`` is logged instead; log files so hold one
    line per epoch. The epoch's mean loss (under torch.distributed: over every process's iterations) is also
    recorded in ``history`` (a :class:`~medgmae.engine.history.MetricHistory`) as ``train_loss`` when one is given.

    Attach it before the checkpoint handler so that the recorded loss of an epoch is in that epoch's checkpoint.

    Args:
        loss_key: key of the loss in ``engine.state.output``.
        history: where the epoch's mean loss is recorded (optional).
        progress_bar: show the tqdm bar on a terminal (the epoch line is logged either way; into a log, a long
            epoch adds ``epoch 3/15: 94/190 iterations, 4.6 min, about 4.8 min left`` a minute).
        name: name of the loss in the line and the history.
        terms: the loss's terms, ``{label: key in engine.state.output}``, whose epoch means the line shows
            after the loss, ``train_loss 0.93468 (rec 0.41234 + cls 0.52234; 16 iterations, ...)`` (none by default).
    """

    def __init__(
        self, loss_key: str = "loss", history: Any = None, progress_bar: bool = True, name: str = "train_loss",
        terms: Mapping[str, str] | None = None,
    ) -> None:  # fmt: skip
        self.loss_key, self.history, self.name = loss_key, history, name
        self.progress_bar = as_bool(progress_bar, "progress_bar")
        self.terms = dict(terms or {})
        self._sum, self._count, self._t0 = 0.0, 0, 0.0
        self._terms = {label: [0.0, 0] for label in self.terms}

    def attach(self, engine: Engine) -> None:
        _drop_start_notice(engine)
        engine.add_event_handler(Events.EPOCH_STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._step)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._end)
        _attach_progress(engine, self.progress_bar, lambda: self._bar(engine), _LoopLines(_epoch_label, "iteration"))

    def _bar(self, engine: Engine) -> None:
        from ignite.handlers import ProgressBar

        bar = ProgressBar(
            persist=False,
            bar_format="{desc}[{n_fmt}/{total_fmt}] {percentage:3.0f}%|{bar}{postfix} [{elapsed}<{remaining}, {rate_fmt}]",
            mininterval=0.5,
        )
        bar.pbar_cls = steady_bar(bar.pbar_cls)  # ignite sets the loss and label every iteration, each a redraw
        bar.attach(engine, output_transform=lambda out: {self.name: loss_value(out, self.loss_key) or 0.0})

    def _start(self, engine: Engine) -> None:
        self._sum, self._count, self._t0 = 0.0, 0, time.perf_counter()
        self._terms = {label: [0.0, 0] for label in self.terms}

    def _step(self, engine: Engine) -> None:
        value = loss_value(engine.state.output, self.loss_key)
        if value is not None:
            self._sum, self._count = self._sum + value, self._count + 1
        for label, key in self.terms.items():
            term = loss_value(engine.state.output, key)
            if term is not None:
                self._terms[label] = [self._terms[label][0] + term, self._terms[label][1] + 1]

    def _end(self, engine: Engine) -> None:
        seconds = max(time.perf_counter() - self._t0, 1e-9)
        iters = engine.state.epoch_length or self._count
        mean = mean_over_processes(self._sum, self._count)  # every rank's crops, not rank 0's alone
        terms = {label: mean_over_processes(*summed) for label, summed in self._terms.items()}  # every rank calls it
        if self.history is not None and self._count:
            self.history.record(self.name, engine.state.epoch, mean)
        if not is_main_process():
            return
        shown = " + ".join(f"{label} {value:.5f}" for label, value in terms.items())
        logger.info(
            "epoch %d/%d: %s %.5f (%s%s, %.1f s, %.2f it/s)",
            engine.state.epoch, engine.state.max_epochs or 0, self.name, mean, f"{shown}; " if shown else "",
            plural(iters, "iteration"), seconds, iters / seconds,
        )  # fmt: skip


class ValidationProgress:
    """A tqdm progress bar over the batches of a validation pass, and one line with its length and time in the log.

    Sliding-window validation of whole CT volumes takes from seconds to minutes per case; without a bar the console
    is silent that long after each epoch's line. The bar goes to the terminal (stderr) of rank 0 and disappears at
    the pass's end, where ``validation: 6 cases in 41.2 s`` is logged instead (the metrics follow from MONAI's
    ``StatsHandler``): cases when the data loader's batch size is 1, else batches (``validation: 3 batches in
    40.8 s``).

    Args:
        progress_bar: show the tqdm bar on a terminal (the line is logged either way; into a log, a long pass adds
            ``validation: 3/6 cases, 2.1 min, about 2.1 min left`` a minute).
        desc: the bar's label.
    """

    def __init__(self, progress_bar: bool = True, desc: str = "validation") -> None:
        if not isinstance(desc, str) or not desc:
            raise ValueError(f"desc must be a non-empty string, got {desc!r}")
        self.progress_bar, self.desc = as_bool(progress_bar, "progress_bar"), desc
        self._t0 = 0.0

    def attach(self, engine: Engine) -> None:
        _drop_start_notice(engine)
        engine.add_event_handler(Events.EPOCH_STARTED, self._start)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._end)
        _attach_progress(engine, self.progress_bar, lambda: self._bar(engine), _LoopLines(lambda e: self.desc, _batch_unit))

    def _bar(self, engine: Engine) -> None:
        from ignite.handlers import ProgressBar

        bar = ProgressBar(
            persist=False,
            desc=self.desc,
            bar_format="{desc}[{n_fmt}/{total_fmt}] {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]",
            mininterval=0.5,
        )
        bar.pbar_cls = steady_bar(bar.pbar_cls)  # redrawn every 0.5 s, not at each batch's new label
        bar.attach(engine)

    def _start(self, engine: Engine) -> None:
        self._t0 = time.perf_counter()

    def _end(self, engine: Engine) -> None:
        if not is_main_process():
            return
        seconds, count = time.perf_counter() - self._t0, engine.state.epoch_length or engine.state.iteration
        share, loader = "", getattr(engine, "data_loader", None)
        if sharded_loader(loader):  # rank 0 counts its own share of the cases
            share = f" (this process's share of {len(loader.sampler.dataset)} over {rank_world()[1]} processes)"
        logger.info("%s: %s in %.1f s%s", self.desc, plural(count, _batch_unit(engine)), seconds, share)
