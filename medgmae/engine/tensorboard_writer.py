"""The TensorBoard writer of a training run that may resume: it purges what a stopped run logged past the newest
epoch checkpoint, and logs nothing twice at the step of an epoch that a stop cut short while it was validated.

A stop while an epoch is validated saves that epoch's training, marked pending (:mod:`medgmae.engine.epoch_validation`);
the stopped run has logged the epoch's training scalars at its last iteration and, at that same iteration, whatever
validation had written before the stop. The resume validates the epoch again and logs its validation at that
iteration once more. TensorBoard's purge, at the iteration after the checkpoint's, keeps the stopped run's events
at that iteration (the training scalars the resume does not log again), so the writer leaves out the tags the
folder already holds at that iteration instead.

Events are written as they are logged, in the caller's thread (:class:`_EventFile`): TensorBoard's own event file
writer writes from a thread of its own, whose error on a full disk printed that thread's traceback amid the run's
lines and came back later as a bare ``OSError`` naming no file; a write without room now raises the toolkit's
:class:`~medgmae.write_failures.OutputWriteError` naming the events file, whose whole records are kept.
"""

from __future__ import annotations

import io
import os
import socket
import time
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.writer import FileWriter

from medgmae.engine.resume import resumed_engine_record
from medgmae.write_failures import OutputWriteError, write_failure

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


class _EventFile:
    """TensorBoard's ``EventFileWriter`` without its writing thread: each event is appended to the events file when
    it is logged, so that an error of the write is raised to the caller; a write without room (a full disk or quota,
    a file-size limit) as an :class:`~medgmae.write_failures.OutputWriteError` naming the file, which is cut back to
    the whole records written before it (TensorBoard reads them).

    Args:
        log_dir: the TensorBoard folder (made if missing).
        filename_suffix: the end of the file's name, after TensorBoard's ``events.out.tfevents.<time>.<host>.<pid>.<n>``.
    """

    def __init__(self, log_dir: str, filename_suffix: str = "") -> None:
        from tensorboard.compat.proto import event_pb2
        from tensorboard.summary.writer import event_file_writer

        self._log_dir = log_dir
        number = event_file_writer._global_uid.get()  # TensorBoard's count of the files of this process
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{number}"
        self.path = os.path.join(log_dir, name + filename_suffix)
        try:
            os.makedirs(log_dir, exist_ok=True)
            self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o666)
        except OSError as e:
            raise (write_failure(self.path, e) or e) from e
        try:
            self.add_event(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2",
                                           source_metadata=event_pb2.SourceMetadata(writer=event_file_writer.__name__)))
        except BaseException:
            self.close()
            raise

    def get_logdir(self) -> str:
        """The TensorBoard folder."""
        return self._log_dir

    def add_event(self, event: Any) -> None:
        """Append ``event`` (an ``Event`` protocol buffer) as one TFRecord: length, its CRC, the data, its CRC."""
        from tensorboard.summary.writer.record_writer import RecordWriter

        if self._fd is None:
            raise ValueError(f"{self.path} is closed")
        record = io.BytesIO()
        RecordWriter(record).write(event.SerializeToString())
        size = os.fstat(self._fd).st_size
        try:
            data = memoryview(record.getvalue())
            while data:
                data = data[os.write(self._fd, data):]
        except OSError as e:
            failure = write_failure(self.path, e)
            if failure is None:
                raise
            os.ftruncate(self._fd, size)  # whole records only: TensorBoard stops reading a file at a cut one
            raise _kept(failure) from e

    def flush(self) -> None:
        """Nothing to do: each event is written when logged."""

    def close(self) -> None:
        """Close the file (again: nothing)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _kept(failure: OutputWriteError) -> OutputWriteError:
    """``failure`` saying that the events written before are kept (it says nothing of the file was)."""
    said = str(failure.strerror).replace("Nothing of it was kept", "The events logged before are kept")
    return OutputWriteError(failure.errno, said, failure.filename)


class _FileWriter(FileWriter):
    """PyTorch's ``FileWriter`` on an :class:`_EventFile`."""

    def __init__(self, log_dir: str, filename_suffix: str = "") -> None:  # no super(): it would make another file
        self.event_writer = _EventFile(str(log_dir), filename_suffix)


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
    TensorBoard alone (no collective). The events of the folder's own file (``add_scalar``, ``add_image`` and the
    other methods of one tag: all the toolkit logs) are written when logged (:class:`_EventFile`: ``max_queue`` and
    ``flush_secs`` have no use), and a write without room raises an ``OutputWriteError`` naming the events file;
    ``add_scalars`` and ``add_hparams`` still make torch's own writers (their sub-folders), with TensorBoard's thread.

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

    def _get_file_writer(self) -> FileWriter:
        """The :class:`_FileWriter` of the folder, made (with the purge's events) where none is open."""
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog

        if self.all_writers is None or self.file_writer is None:
            self.file_writer = _FileWriter(self.log_dir, self.filename_suffix)
            self.all_writers = {self.file_writer.get_logdir(): self.file_writer}
            if self.purge_step is not None:  # as SummaryWriter's: TensorBoard drops the folder's events from it on
                self.file_writer.add_event(Event(step=self.purge_step, file_version="brain.Event:2"))
                self.file_writer.add_event(Event(step=self.purge_step, session_log=SessionLog(status=SessionLog.START)))
                self.purge_step = None
        return self.file_writer

    def _logged_before(self, tag: str, step: Any) -> bool:
        return step is not None and self._pending_step is not None and int(step) == self._pending_step and tag in self._logged

    def add_scalar(self, tag: str, scalar_value: Any, global_step: Any = None, *args: Any, **kwargs: Any) -> None:
        if not self._logged_before(tag, global_step):
            super().add_scalar(tag, scalar_value, global_step, *args, **kwargs)

    def add_image(self, tag: str, img_tensor: Any, global_step: Any = None, *args: Any, **kwargs: Any) -> None:
        if not self._logged_before(tag, global_step):
            super().add_image(tag, img_tensor, global_step, *args, **kwargs)
