"""The last line of a failed bundle run: its reason in the toolkit's words, and how to go on.

MONAI wraps a bundle's failure in several exceptions (``Failed to evaluate ConfigExpression``...) and ignite logs its
own lines, so the reason sits far up a long traceback. :func:`summarise_errors`, installed by
:func:`medgmae.bundle_checks.check_settings` at every bundle's start, ends the output with the innermost reason
(``error: ValueError: ...``), with advice for Ctrl-C or SIGTERM (resume, or run again) and, under torchrun, with
who stopped first.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

# imported now, not in the hook: importing torch while Python handles an uncaught KeyboardInterrupt loses the
# interrupt's exit status (130 became 1)
from medgmae.bundle_command_line import is_bundle_command_line
from medgmae.distributed import is_main_process, process_count, process_rank
from medgmae.files import os_error_message

__all__ = ["INTERRUPTED", "INTERRUPTED_NO_RESUME", "INTERRUPTED_SKIP_WRITTEN", "InputRefusal", "LOST_PEER",
           "SIGTERM_GRACE_SECONDS", "TRACEBACK_ENV", "Terminated", "catch_sigterm", "exception_chain",
           "checkpoint_files", "data_worker_init", "on_sigint", "on_sigterm", "stopped_run_advice", "summarise_errors"]


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a batch system's time limit), raised where the run is so that it stops as on Ctrl-C: a
    training run saves ``checkpoint_interrupted.pt`` and the last line says how to resume. Without it the process
    died at once, its log ending mid-epoch with no word (a cluster job's usual end)."""


#: Seconds after a first SIGTERM in which a repeated one is ignored: ``srun torchrun`` or ``kill -TERM -<group>``
#: deliver two at once, and the first is still saving ``checkpoint_interrupted.pt`` and saying how to resume.
SIGTERM_GRACE_SECONDS = 10.0
_FIRST_SIGTERM: list[float] = []


def on_sigterm(signum, frame) -> None:
    """The SIGTERM handler of the bundles and ``medgmae-recon``: raise :class:`Terminated` where the run is. A
    repeat within :data:`SIGTERM_GRACE_SECONDS` is ignored; a later one ends the process at once (its stop was
    swallowed or is stuck). A run blocked in C code (a collective waiting for a lost peer) runs no Python handler
    until that call returns or times out: there torchrun's or the batch system's SIGKILL ends it."""
    now = time.monotonic()
    if _FIRST_SIGTERM:
        if now - _FIRST_SIGTERM[0] >= SIGTERM_GRACE_SECONDS:
            _kill_by_sigterm()
        return
    _FIRST_SIGTERM.append(now)
    if _EXITING:  # the run's stop is reported and the process is ending (torchrun signals the ranks left): no
        return  # exception into the exit's own callbacks ("Exception ignored in atexit callback")
    raise Terminated()


#: Set by the error hook as it starts: the run has stopped and the process is on its way out.
_EXITING: list[bool] = []


#: Set by the error hook when the run stopped on SIGTERM: the process then ends by SIGTERM (:func:`_end_by_sigterm`).
_STOPPED_BY_SIGTERM: list[bool] = []


def _catch_sigterm() -> None:
    """Turn SIGTERM into :class:`Terminated` in a process that MONAI's bundle runner started (``python -m
    monai.bundle run``), from its main thread; a handler set by someone else is kept, and a bundle run in-process
    (a notebook, a test) leaves its host's SIGTERM as it was."""
    runner = is_bundle_command_line()
    main_thread = threading.current_thread() is threading.main_thread()
    if runner and main_thread and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        catch_sigterm()
        atexit.register(_end_by_sigterm)  # early, so it runs late: after the error hook and its callers' output


def catch_sigterm() -> Any:
    """Install :func:`on_sigterm` (from the main thread), its grace period not yet started, and :func:`on_sigint`
    where Ctrl-C has Python's own handler; returns the SIGTERM handler it replaces."""
    _FIRST_SIGTERM.clear()
    _EXITING.clear()
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, on_sigint)
    return signal.signal(signal.SIGTERM, on_sigterm)


def on_sigint(signum, frame) -> None:
    """Ctrl-C as Python handles it (``KeyboardInterrupt``), starting :func:`on_sigterm`'s grace period: torchrun
    that gets a second signal while it passes SIGINT on to its workers sends them SIGTERM at once, which then cut
    short the save of the interrupted state (a pre-training epoch stopped in its validation was lost)."""
    if not _FIRST_SIGTERM:
        _FIRST_SIGTERM.append(time.monotonic())
    signal.default_int_handler(signum, frame)


def data_worker_init(worker_id: int) -> None:
    """The bundles' data loader ``worker_init_fn``: MONAI's (each worker's own random transform states), then a
    SIGTERM ends the worker at once with status 0, whoever sent it.

    torch ends a worker so only on its parent's SIGTERM (its own shutdown); another sender's (``kill -TERM
    -<group>``, a batch system signalling every process of the job) killed the worker by the signal, and the main
    process, stopping on the same SIGTERM, then raised ``DataLoader worker (pid N) is killed by signal: Terminated``
    in the middle of its stop (ignite's ERROR line, a traceback) as if the run had crashed. Now only the main process
    reports the stop (:class:`Terminated`); a worker killed alone still shows as one that "exited unexpectedly".

    Args:
        worker_id: the worker's index, as torch passes it.
    """
    from monai.data.utils import worker_init_fn

    worker_init_fn(worker_id)
    signal.signal(signal.SIGTERM, _end_worker)


def _end_worker(signum, frame) -> None:
    """A data loader worker's SIGTERM handler: exit now, as torch's worker does on its parent's SIGTERM."""
    os._exit(0)


def _end_by_sigterm() -> None:
    """At exit after a SIGTERM stop, end the process as SIGTERM would have (status 143 in a shell, -15 to
    ``subprocess``), as Python ends with SIGINT after an uncaught Ctrl-C, so batch systems and torchrun see what
    happened. Not from the error hook itself: under torchrun, ``torch.distributed`` wraps that hook and writes
    what it printed (with a ``[rank0]:`` prefix) only after it returns. Registered when the bundle starts, it runs
    before the exit handlers registered earlier (logging's, whose flush it does itself; multiprocessing's: data
    loader workers exit on their own when they find their parent gone)."""
    if not _STOPPED_BY_SIGTERM:
        return
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    logging.shutdown()
    _kill_by_sigterm()


def _kill_by_sigterm() -> None:
    """End this process by SIGTERM now (the default action restored first)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes, outermost first (``raise ... from`` causes, then implicit contexts)."""
    chain, seen = [exc], {id(exc)}
    while True:
        nxt = chain[-1].__cause__ or (None if chain[-1].__suppress_context__ else chain[-1].__context__)
        if nxt is None or id(nxt) in seen:
            return chain
        seen.add(id(nxt))
        chain.append(nxt)


def _is_monai_wrapper(exc: BaseException) -> bool:
    """MONAI's ``RuntimeError`` around a config expression's, component's or transform's error (``applying
    transform <...LoadImage2Dd object at 0x...>``), which names no cause."""
    return isinstance(exc, RuntimeError) and str(exc).startswith(_MONAI_WRAPPERS)


#: How MONAI's wrappers' messages begin.
_MONAI_WRAPPERS = ("Failed to evaluate", "Failed to instantiate", "applying transform")


#: torch's message for an error re-raised from a data-loader worker: where, then the worker's whole traceback.
_WORKER_ERROR = re.compile(r"Caught \w+ (in [^\n]*?)\.\nOriginal (Traceback \(most recent call last\):\n.*)", re.DOTALL)
_CHAINED = re.compile(r"\n\n(?:The above exception was the direct cause of the following exception|"
                      r"During handling of the above exception, another exception occurred):\n\n")


def _reason_text(reason: BaseException) -> str:
    """``<type>: <message>`` of ``reason``; for an error re-raised from a data-loader worker, whose message is the
    worker's whole traceback, the worker's own reason instead (the outermost error there that MONAI did not wrap,
    such as the reader's ``ValueError`` naming the file) and where it was raised."""
    found = _WORKER_ERROR.match(str(reason))
    if found:
        errors = [_exception_text(block) for block in _CHAINED.split(found.group(2).rstrip())]
        wrapped = tuple(f"RuntimeError: {w}" for w in _MONAI_WRAPPERS)
        own = next((e for e in reversed(errors) if e and not e.startswith(wrapped)), None)
        if own:
            return f"{own} ({found.group(1)})"
    return f"{type(reason).__name__}: {reason}"


def _exception_text(block: str) -> str:
    """The ``<type>: <message>`` that ends one exception's part of a formatted traceback (its frames dropped; the
    type without its module, as the other last lines name it)."""
    lines = block.splitlines()[1:] if block.startswith("Traceback") else block.splitlines()
    while lines and (not lines[0].strip() or lines[0].startswith(" ")):
        lines.pop(0)
    return re.sub(r"^(?:[A-Za-z_]\w*\.)+(?=\w+(?::|$))", "", "\n".join(lines).strip())


#: Set (to anything but ``0`` or nothing) to keep the traceback above an :class:`InputRefusal`'s message.
TRACEBACK_ENV = "MEDGMAE_TRACEBACK"


class InputRefusal(ValueError):
    """An error in what the user gave (a setting, a datalist or one of its files, a checkpoint of the wrong kind)
    whose message says all there is to say: the file or setting and the problem. A bundle stopped by one prints that
    message alone, ``error: <type>: <message>``, without the traceback of where it was raised (MONAI's runner adds
    tens of lines of its own wrappers; :data:`TRACEBACK_ENV` keeps them). Errors of any other type keep their
    traceback: they may be the toolkit's fault."""


def _traceback_wanted() -> bool:
    """Whether :data:`TRACEBACK_ENV` asks for the traceback above an :class:`InputRefusal`."""
    return os.environ.get(TRACEBACK_ENV, "").strip() not in ("", "0")


#: The last line of a training run stopped with Ctrl-C.
INTERRUPTED = ("interrupted: run the same command with --resume true to continue from the newest "
               "checkpoint_epoch=N.pt in its output folder (an epoch cut short is trained again)")
#: The last line of any other bundle run (inference, evaluation, export) stopped with Ctrl-C.
INTERRUPTED_NO_RESUME = "interrupted: run the same command again (no file is left half-written)"
INTERRUPTED_SKIP_WRITTEN = ("interrupted: run the same command with --resume true to go on with the inputs not written "
                            "yet (no file is left half-written)")  # an inference whose resume skips what it wrote


#: What rank 0 adds when its error is the loss of another process of the run (killed, out of memory).
LOST_PEER = ("another process of this run stopped first (see its output and torchrun's summary): this one lost its "
             "connection to it; --resume true continues from the newest checkpoint_epoch=N.pt")  # fmt: skip
#: What gloo and NCCL say when the other end of a connection went away. Only these words count: other NCCL failures
#: (``DistBackendError`` too) may be the process's own, its GPU out of memory or a timeout.
_PEER_PHRASES = ("connection reset by peer", "connection closed by peer", "broken pipe", "nccl communicator was aborted",
                 "ncclremoteerror")  # fmt: skip


def _lost_peer(reason: BaseException) -> bool:
    """Whether ``reason`` is a collective's failure because another process went away (gloo's / NCCL's words)."""
    text = f"{type(reason).__name__}: {reason}".lower()
    return any(p in text for p in _PEER_PHRASES)


def _say_interrupted(chain: list[BaseException], main: bool, resumable: bool | str, run: tuple = ()) -> None:
    """The one line after Ctrl-C or SIGTERM (rank 0 only; ``chain`` holds the ``KeyboardInterrupt``): how to
    resume (the checkpoint handler's ``resume_advice`` when it set one; otherwise :func:`stopped_run_advice` of
    ``run``, its ``(output_dir, resume, checkpoints at its start)``) or to run again; after SIGTERM the process is marked to end
    by SIGTERM (:func:`_end_by_sigterm`)."""
    interrupt = next(e for e in chain if isinstance(e, KeyboardInterrupt))
    terminated = any(isinstance(e, Terminated) for e in chain)
    if main:  # where it struck is no news to anyone, and one process says what to do
        advice = getattr(interrupt, "resume_advice", None) if resumable is True else resumable or INTERRUPTED_NO_RESUME
        advice = advice or (stopped_run_advice(*run) if run else INTERRUPTED)  # the folder read only when needed
        if terminated and advice.startswith("interrupted"):
            advice = "terminated (SIGTERM)" + advice[len("interrupted"):]
        _say(f"\n{advice}")
    if terminated:
        _STOPPED_BY_SIGTERM.append(True)


#: Where a training bundle's epoch checkpoints lie below its ``output_dir``: in it, or (GViT) one folder per phase.
CHECKPOINT_GLOBS = ("checkpoint_*.pt", "checkpoints/*/checkpoint_*.pt")


def checkpoint_files(output_dir: str | os.PathLike) -> dict[str, tuple[int, int, int]]:
    """``{path: (inode, size, mtime in ns)}`` of the checkpoints below ``output_dir`` (:data:`CHECKPOINT_GLOBS`):
    what a run found at its start, so that at its end the files it wrote tell themselves apart without a clock."""
    folder = Path(output_dir)
    try:
        is_dir = folder.is_dir()
    except OSError:  # a path too long to look up holds no checkpoint (the bundle's output check names it)
        is_dir = False
    found = {}
    for pattern in CHECKPOINT_GLOBS:
        for p in folder.glob(pattern) if is_dir else ():
            try:
                st = p.stat()
            except OSError:
                continue
            found[str(p)] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return found


def stopped_run_advice(output_dir: str | None, resume: bool | None = None, at_start: dict | None = None) -> str:
    """The line of a training run stopped where its checkpoint handler did not say (reading or generating its data,
    building the model, between GViT's phases, its closing evaluation, the closing steps after its last epoch).

    Args:
        output_dir: the run's folder (its checkpoints: :data:`CHECKPOINT_GLOBS`).
        resume: the run's ``resume`` setting (``None``: not known).
        at_start: :func:`checkpoint_files` when the run started (a file new or rewritten since is this run's).

    Returns:
        :data:`INTERRUPTED` when there is a checkpoint to resume from (this run's, or the earlier run it resumes);
        after this run saved its ``checkpoint_final.pt`` (its last completion step), that it has ended; otherwise that
        there is no checkpoint, or that an earlier run's were left as they were.
    """
    if output_dir is None or resume is None:
        return INTERRUPTED
    now = checkpoint_files(output_dir)
    epochs = [p for p in now if Path(p).name.startswith("checkpoint_epoch=")]
    own = [p for p in now if (at_start or {}).get(p) != now[p]]
    if str(Path(output_dir) / "checkpoint_final.pt") in own:  # GViT's phases keep theirs below and resume past them
        return ("interrupted after the run ended (checkpoint_final.pt, the last of its completion steps, was saved): "
                "its outputs are written; a resume has nothing left to do (--resume true with a larger --max_epochs "
                "trains on)")  # fmt: skip
    if not epochs:
        return (f"interrupted before training started: there is no checkpoint_epoch=N.pt in {output_dir} to continue "
                "from, so run the same command again (with or without --resume true) to start")  # fmt: skip
    if resume or own:
        return INTERRUPTED
    return (f"interrupted before this run saved a checkpoint: the earlier run's checkpoints in {output_dir} are as they "
            "were; run the same command again to start over (with --resume true it would continue the earlier run "
            "instead)")  # fmt: skip


def summarise_errors(resumable: bool | str = False, output_dir: str | None = None, resume: bool | None = None) -> bool:
    """Make a bundle's failure end with its reason: after Python's usual traceback, one last line
    ``error: <type>: <message>`` repeats the outermost exception of the chain that is not MONAI's wrapper; when that
    exception is an :class:`InputRefusal` (a bad setting, datalist or checkpoint), its message is printed alone.

    ``python -m monai.bundle run`` wraps every error of a config expression in ``RuntimeError: Failed to evaluate
    ConfigExpression``, so the last line a user reads names the expression, and the message that says what to do
    (a bad key, a file that cannot be read, a resume that is refused) sits tens of lines higher. After Ctrl-C the
    one line printed says how to continue instead (:data:`INTERRUPTED` for a bundle that resumes, or the
    ``resume_advice`` its checkpoint handler set on the interrupt when there is no epoch checkpoint to continue
    from), without the traceback of where the interrupt struck; Python exits with the interrupt's status (130).
    Under ``torchrun`` only rank 0 (:func:`medgmae.distributed.is_main_process`) prints the traceback and the
    reason, and the Ctrl-C line; every other rank prints one line, ``rank N stopped: <type>: <the reason, on one
    line, cut at 300 characters>; see rank 0`` (all ranks usually stop on the same reason; a rank whose collective
    lost its connection to a process gone first says so instead, as that process may not be rank 0), and nothing
    after Ctrl-C; torchrun's own report of the stopped processes follows. Installing this ``sys.excepthook`` is part of :func:`check_settings`,
    the first step of each bundle's ``initialize``; on rank 0 it keeps the whole traceback of any error but an
    :class:`InputRefusal` (:data:`TRACEBACK_ENV` keeps that one's too), and
    it is installed once however often it is called. It also makes SIGTERM stop the run as Ctrl-C does
    (:class:`Terminated`; the line says ``terminated (SIGTERM)``, and the process then ends by SIGTERM, status 143).

    Args:
        resumable: the bundle has a ``resume`` setting (a training run), so Ctrl-C advises ``--resume true``; a text:
            the line Ctrl-C prints (:data:`INTERRUPTED_SKIP_WRITTEN` for an inference whose resume skips its outputs).
        output_dir: the training run's folder, whose epoch checkpoints decide the line of a run stopped where
            its checkpoint handler could not say (:func:`stopped_run_advice`; ``None``: not known).
        resume: the run's ``resume`` setting (``None``: not known).

    Returns:
        ``True`` (so that the call can sit in a bundle's ``initialize`` list).
    """
    _catch_sigterm()
    if getattr(sys.excepthook, "summarises_errors", False):
        sys.excepthook.resumable = sys.excepthook.resumable or resumable
        if output_dir is not None:
            at_start = sys.excepthook.run[2] if sys.excepthook.run else checkpoint_files(output_dir)
            sys.excepthook.run = (output_dir, resume, at_start)
        return True
    sys.excepthook = _summarising_hook(sys.excepthook, resumable, output_dir, resume)
    return True


def _summarising_hook(previous, resumable: bool | str, output_dir: str | None, resume: bool | None):
    """The ``sys.excepthook`` :func:`summarise_errors` installs, calling ``previous`` for the traceback."""

    def hook(exc_type, exc, tb) -> None:
        _EXITING.append(True)
        chain = exception_chain(exc) if isinstance(exc, BaseException) else []
        # the outermost error MONAI did not wrap: the toolkit's message naming the file, not the library's under it
        reason = next((e for e in chain if not _is_monai_wrapper(e)), chain[-1]) if chain else None
        main = is_main_process()
        if any(isinstance(e, KeyboardInterrupt) for e in chain):
            _say_interrupted(chain, main, hook.resumable, hook.run)
            return
        if not main and reason is not None:  # under torchrun: rank 0 prints the traceback and the reason
            _say_rank_stopped(reason)
            return
        if isinstance(reason, InputRefusal) and not _traceback_wanted():  # the user's input: where it was raised
            _say(f"error: {_reason_text(reason)}")  # is no news to them
            return
        if isinstance(reason, OSError) and (said := os_error_message(reason)) and not _traceback_wanted():
            _say(f"error: {said}")  # a path given too long to look up, a write without room
            return
        previous(exc_type, exc, tb)
        text = _reason_text(reason) if reason is not None else ""
        if reason is not None and (reason is not exc or text != f"{type(reason).__name__}: {reason}"):
            _say(f"\nerror: {text}")  # a worker's reason: its traceback is but text above
        if reason is not None and hook.resumable and _lost_peer(reason):
            if process_count() > 1:  # a broken pipe of a single process (output piped to head) is not a lost peer
                _say(LOST_PEER)

    hook.summarises_errors, hook.resumable = True, resumable if isinstance(resumable, str) else bool(resumable)
    hook.run = (output_dir, resume, checkpoint_files(output_dir)) if output_dir is not None else ()
    return hook


def _say_rank_stopped(reason: BaseException) -> None:
    """Print a non-zero rank's one line for the error ``reason`` (rank 0 prints it whole, with the traceback)."""
    text = " ".join(_reason_text(reason).split())  # its lines joined, cut short
    text = text if len(text) <= 300 else text[:297] + "..."
    if _lost_peer(reason):  # the reason is elsewhere, maybe not on rank 0
        _say(f"rank {process_rank()} stopped: another process stopped first and this one lost its connection to it "
             f"({text}); that process's lines or torchrun's summary say why")  # fmt: skip
        return
    _say(f"rank {process_rank()} stopped: {text}; see rank 0")


def _say(line: str) -> None:
    """Write ``line`` and its newline to stderr in one write: ``print`` writes them apart to an unbuffered stderr,
    and another rank's line could land between them (``...nothing was writtenrank 1 stopped: ...``)."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
