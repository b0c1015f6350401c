"""Progress of an evaluation or segmentation run: one log line per case.

A run over hundreds of CT volumes spends seconds to minutes on each (reading, resampling, sliding-window
inference, inverting the pre-processing, writing). :class:`CaseProgress` logs, as each case finishes, its number,
name, time and, for an evaluation, its Dice; with an estimate of the time left, e.g.
``case 3/120 liver_012: 12.3 s, mean Dice 0.81234 (about 24.0 min left)``.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Mapping

from ignite.engine import Engine, Events

from medgmae.engine import is_main_process
from medgmae.finetune.evaluate import SegmentationReport, case_mean_dice, case_name
from medgmae.terminal import duration_text

__all__ = ["CaseProgress"]

logger = logging.getLogger(__name__)


def _case_label(item: Any, given: Any) -> str:
    """A case's name in its line: the ``name`` entry of its output or of its input (a MONAI evaluator keeps the
    input's keys, segmentation's unique output name among them, in ``state.batch``, not in ``state.output``), else
    its image's file name (:func:`~medgmae.finetune.evaluate.case_name`)."""
    for d in (item, given):
        name = d.get("name") if isinstance(d, Mapping) else None
        name = name[0] if isinstance(name, (list, tuple)) and len(name) == 1 else name
        if isinstance(name, str) and name:
            return name
    return case_name(item) if isinstance(item, Mapping) else "case"


class CaseProgress:
    """Log one line per case of a MONAI evaluator run, and one line for the run.

    A case's time runs from the end of the previous case (or the start of the run), so it includes reading and
    pre-processing its image as well as inference and post-processing. The line names the case by its ``name``
    entry where it has one (the unique output name of a segmentation, ``a_ct`` for ``a_ct_seg.nii.gz``), else by
    its image file; it adds the case's mean Dice
    over its classes when ``report`` is given (a segmentation names its written file itself).

    Args:
        report: the run's :class:`~medgmae.finetune.evaluate.SegmentationReport`, attached before this handler;
            its per-case Dice are logged.
        what: the run's verb in the opening line (``evaluating``, ``segmenting``).
    """

    def __init__(self, report: SegmentationReport | None = None, what: str = "evaluating") -> None:
        if report is not None and not isinstance(report, SegmentationReport):
            raise ValueError(f"report must be a SegmentationReport or None, got {type(report).__name__}")
        self.report, self.what = report, what
        self._done, self._t0, self._last = 0, 0.0, 0.0

    def attach(self, engine: Engine) -> None:
        if self.report is not None and not engine.has_event_handler(self.report._collect, Events.ITERATION_COMPLETED):
            raise ValueError("attach the SegmentationReport to the evaluator before CaseProgress (list it first)")
        engine.add_event_handler(Events.EPOCH_STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._case)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._end)

    def _start(self, engine: Engine) -> None:
        self._done, self._t0 = 0, time.perf_counter()
        self._last = self._t0
        if is_main_process():
            n = engine.state.epoch_length
            logger.info("%s %s case%s", self.what, n, "" if n == 1 else "s")

    def _case(self, engine: Engine) -> None:
        now = time.perf_counter()
        seconds, self._last = now - self._last, now
        output, batch = engine.state.output, engine.state.batch
        items: list[Any] = list(output) if isinstance(output, (list, tuple)) else [output]
        inputs: list[Any] = list(batch) if isinstance(batch, (list, tuple)) else [batch]
        inputs = inputs if len(inputs) == len(items) else [None] * len(items)
        dice = self.report.rows[-len(items):] if self.report is not None else [None] * len(items)
        total = engine.state.epoch_length
        for item, given, row in zip(items, inputs, dice):
            self._done += 1
            if not is_main_process():
                continue
            parts = [f"{seconds / len(items):.1f} s"]
            if row is not None:
                mean = case_mean_dice(row[2])
                parts.append(f"mean Dice {mean:.5f}" if math.isfinite(mean) else "mean Dice n/a (no labelled class)")
            left = (now - self._t0) / self._done * (total - self._done) if total else 0.0
            eta = f" (about {duration_text(left)} left)" if total and self._done < total else ""
            logger.info("case %d/%s %s: %s%s", self._done, total or "?", _case_label(item, given), ", ".join(parts), eta)

    def _end(self, engine: Engine) -> None:
        if is_main_process():
            seconds = time.perf_counter() - self._t0
            logger.info("%d case%s in %s", self._done, "" if self._done == 1 else "s", duration_text(seconds))
