"""The TensorBoard writer of a training run that may resume: it purges what a stopped run logged past the newest
epoch checkpoint, and logs nothing twice at the step of an epoch that a stop cut short while it was validated.

A stop while an epoch is validated saves that epoch's training, marked pending (:mod:`medgmae.engine.epoch_validation`);
the stopped run has logged the epoch's training scalars at its last iteration and, at that same iteration, whatever
validation had written before the stop. The resume validates the epoch again and logs its validation at that
iteration once more. TensorBoard's purge, at the iteration after the checkpoint's, keeps the stopped run's events
at that iteration (the training scalars the resume does not log again), so the writer leaves out the tags the
folder already holds at that iteration instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from medgmae.engine.resume import resumed_engine_record

__all__ = ["ResumeSummaryWriter", "logged_tags"]


def logged_tags(log_dir: str | Path, step: int) -> set[str]:
    """The tags that TensorBoard shows at ``step`` from the event files of ``log_dir``: those logged at ``step``,
    less those a later file's purge (a ``purge_step`` at or before ``step``) drops. Unreadable files count as empty."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.compat.proto.event_pb2 import SessionLog

    tags: set[str] = set()
    for path in sorted(Path(log_dir).glob("events.out.tfevents.*")):
        try:
            for event in EventFileLoader(str(path)).Load():
                if event.HasField("session_log") and event.session_log.status == SessionLog.START and event.step <= step:
                    tags.clear()
                elif event.step == step and event.HasField("summary"):
                    tags.update(value.tag for value in event.summary.value)
        except Exception:  # a truncated last record of a killed run: what was read counts
            continue
    return tags


class ResumeSummaryWriter(SummaryWriter):
    """A ``SummaryWriter`` for ``log_dir`` that continues a resumed run's TensorBoard curves: ``purge_step`` is the
    iteration after the newest epoch checkpoint's (:func:`~medgmae.engine.resume.resumed_engine_record`; none for a
    run that starts afresh or has no readable engine state, which the resume itself names), so that TensorBoard
    drops what the interrupted run logged past it instead of showing those steps twice; and when that checkpoint is
    of an epoch a stop cut short while it was validated, scalars and images at the checkpoint's iteration under a
    tag the folder already shows there are not written again.

    TensorBoard purges every tag of the folder at that step, whichever event file it is in: give it to the one
    writer of a folder, and log every scalar at the iteration (a tag at epoch steps, all smaller, would be kept and
    shown twice: the bundles log validation at the iteration that ends the epoch); a second writer whose file sorts
    first would lose its own later events (each bundle has one writer per folder). Built by the process that writes
    TensorBoard alone (no collective).

    Args:
        log_dir: the TensorBoard folder.
        checkpoint_dir: the run's checkpoint folder.
        resume: whether the run resumes.
        **kwargs: passed on to ``SummaryWriter``.
    """

    def __init__(self, log_dir: str | Path, checkpoint_dir: str | Path, resume: bool, **kwargs: Any) -> None:
        engine = resumed_engine_record(checkpoint_dir, resume)
        self._pending_step = engine["iteration"] if engine.get("pending") else None
        self._logged = logged_tags(log_dir, self._pending_step) if self._pending_step is not None else set()
        purge_step = engine["iteration"] + 1 if engine else None
        super().__init__(str(log_dir), purge_step=purge_step, **kwargs)

    def _logged_before(self, tag: str, step: Any) -> bool:
        return step is not None and self._pending_step is not None and int(step) == self._pending_step and tag in self._logged

    def add_scalar(self, tag: str, scalar_value: Any, global_step: Any = None, *args: Any, **kwargs: Any) -> None:
        if not self._logged_before(tag, global_step):
            super().add_scalar(tag, scalar_value, global_step, *args, **kwargs)

    def add_image(self, tag: str, img_tensor: Any, global_step: Any = None, *args: Any, **kwargs: Any) -> None:
        if not self._logged_before(tag, global_step):
            super().add_image(tag, img_tensor, global_step, *args, **kwargs)
