"""The console scripts' entry points: each imports its command's module (torch, MONAI: seconds on a busy machine)
and runs its ``main``, so that Ctrl-C (or SIGTERM) while that import runs ends the command as during its work, with
one line on stderr and exit status 130 (143) instead of Python's traceback (or a silent end). The ``python -m`` forms (``recon/__main__.py``,
``medgmae/data/phantom/__main__.py``) go through :func:`run` too; the packages they import first (``recon``,
``medgmae.data``, ``medgmae.data.phantom``) load neither torch nor MONAI. No torch or MONAI imports here.

A command stopped by Ctrl-C (status 130) or SIGTERM (143) ends by that signal once it has said what it left
(:func:`ended`, at exit once Python's own shutdown work is done; POSIX only), as Python does for an uncaught
Ctrl-C: a shell loop over runs (``for f in ...; do medgmae-recon ...; done``) then stops at Ctrl-C instead of going
on to the next run, and the status is the same.
A command whose ``main`` installs no SIGTERM handler of its own (``medgmae-2d``, ``medgmae-datalist``,
``medgmae-runs-table``, ``medgmae-ellipsoids``, ``medgmae-info``) keeps :func:`run`'s through its work: SIGTERM then
gives ``<prog>: terminated (SIGTERM)`` and status 143, where it ended the process silently.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
from importlib import import_module
from typing import Any, Callable

__all__ = [
    "run", "ended", "recon", "twod", "phantom", "datalist", "runs_table", "ellipsoids", "info", "INTERRUPTED", "TERMINATED",
]  # fmt: skip

#: Exit status after Ctrl-C (128 + SIGINT), as each command's own handling returns.
INTERRUPTED = 130
#: Exit status after SIGTERM (128 + SIGTERM).
TERMINATED = 128 + signal.SIGTERM


def run(prog: str, module: str, *args: Any) -> int:
    """Import ``module`` and return its ``main(*args)``'s exit status; Ctrl-C while it imports, or one its ``main``
    does not handle itself, prints ``<prog>: interrupted ...`` on stderr and returns 130; SIGTERM likewise (while it
    imports, or during a ``main`` that installs no handler of its own) prints ``<prog>: terminated (SIGTERM) ...``
    and returns 143, where it ended the process silently.

    Args:
        prog: the command's name, the start of the line printed after Ctrl-C.
        module: the module whose ``main`` is the command.
        *args: ``main``'s arguments: none for a console script's module (its ``main`` reads ``sys.argv``); a
            command that parses its flags before importing its work passes the parsed flags (``medgmae-2d``).

    Returns:
        The command's exit status.
    """
    previous = _stop_on_sigterm()
    try:
        try:
            main = import_module(module).main
        except _Terminated:
            print(f"{prog}: terminated (SIGTERM) while starting: nothing was written", file=sys.stderr)
            return TERMINATED
        except KeyboardInterrupt:
            print(f"{prog}: interrupted while starting: nothing was written", file=sys.stderr)
            return INTERRUPTED
        try:  # a command that handles SIGTERM itself (medgmae-recon, medgmae-phantom) installs its own handler
            return main(*args)
        except _Terminated:  # the others' line (medgmae-2d: its outputs are staged, so none was half-written)
            print(f"{prog}: terminated (SIGTERM)", file=sys.stderr)
            return TERMINATED
        except KeyboardInterrupt:  # the commands that handle Ctrl-C say what they left; this is the others' line
            print(f"{prog}: interrupted", file=sys.stderr)
            return INTERRUPTED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class _Terminated(KeyboardInterrupt):
    """SIGTERM while a command imports or runs without a handler of its own (a batch system's time limit, ``kill``)."""


def _raise_terminated(signum, frame) -> None:
    raise _Terminated


def _stop_on_sigterm() -> Callable | int | None:
    """Make SIGTERM raise :class:`_Terminated` while the command imports and runs, where it has the default action
    and this is the main thread (it ended the process silently, status 143); the handler it replaces, else ``None``."""
    try:
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return None
        return signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread
        return None


def ended(status: int) -> int:
    """``status``, the command's; after Ctrl-C (130) or SIGTERM (143) the process ends by that signal instead, at
    exit (on POSIX; its output flushed, its exit handlers run), so that the shell that ran it sees it stopped.

    Args:
        status: the command's exit status.

    Returns:
        ``status`` (any other status; a signal's only where the process is not ended by it).
    """
    signum = {INTERRUPTED: signal.SIGINT, TERMINATED: signal.SIGTERM}.get(status)
    if signum is not None and os.name == "posix":  # Windows: os.kill ends a process with the signal's number
        _END_BY[:] = [signum]
    return status


#: The signal :func:`_end_by_signal` ends the process by, once Python has shut down (set by :func:`ended`).
_END_BY: list[int] = []


def _end_by_signal() -> None:
    """At exit, after the exit handlers registered later (logging's, torch's) and the joins of threads: end by the
    signal :func:`ended` chose, with the output flushed (a closed pipe or no stream is passed over)."""
    if not _END_BY:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    signal.signal(_END_BY[0], signal.SIG_DFL)
    os.kill(os.getpid(), _END_BY[0])


atexit.register(_end_by_signal)  # at import, before the command's modules: it runs after their exit handlers


def _command(prog: str, module: str, name: str) -> Callable[[], int]:
    """The entry point of the console script ``prog`` (named ``name`` here, as ``pyproject.toml`` names it).

    Args:
        prog: the command's name.
        module: its module (whose ``main`` is the command).
        name: the entry point's name in this module.

    Returns:
        A function of no arguments returning :func:`ended` of :func:`run` (the exit status).
    """

    def entry() -> int:
        return ended(run(prog, module))

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = f"``{prog}`` (``{module}``); returns the exit status."
    return entry


recon = _command("medgmae-recon", "recon.cli", "recon")
twod = _command("medgmae-2d", "medgmae.twod.cli", "twod")
phantom = _command("medgmae-phantom", "medgmae.data.phantom.cli", "phantom")
datalist = _command("medgmae-datalist", "medgmae.data.decathlon", "datalist")
runs_table = _command("medgmae-runs-table", "medgmae.finetune.runs_table", "runs_table")
ellipsoids = _command("medgmae-ellipsoids", "medgmae.ellipsoids_cli", "ellipsoids")
info = _command("medgmae-info", "medgmae.info_cli", "info")
