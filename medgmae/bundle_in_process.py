"""Bundles run from Python: ``monai.bundle.run(...)`` in a notebook or a script, or a ``ConfigWorkflow`` built by
hand, as MONAI documents it.

The process goes on after such a run, so what a command line keeps to its exit is kept here for one run of the
workflow: its output folder is held from the start of each ``run`` to its end, however it ends, and let go then
(another process, or the next run, may write into it); a folder the run made and left empty is removed. Ctrl-C
reaches the caller as ``KeyboardInterrupt`` with the command line's advice as a note (how to resume, or to run again;
Python 3.11+ shows it under the traceback). The command line's error hook (:func:`~medgmae.bundle_errors.summarise_errors`)
is not installed: it would stay after the run and take over the caller's own errors.

The workflow is found as the ``self`` of its ``initialize`` on the call stack (the settings check runs there, as the
first step of every bundle's ``initialize``); its ``run`` is wrapped for that one object.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from medgmae.bundle_errors import INTERRUPTED_NO_RESUME, checkpoint_files, stopped_run_advice
from medgmae.folder_lock import hold_until_ended

__all__ = ["initialising_workflow", "scope_run"]


def initialising_workflow() -> Any:
    """The bundle workflow whose ``initialize`` is running (MONAI's ``BundleWorkflow``, e.g. the ``ConfigWorkflow``
    that ``monai.bundle.run`` builds): the ``self`` of that call on the stack; ``None`` without one (a config
    expression evaluated alone)."""
    from monai.bundle import BundleWorkflow

    frame = sys._getframe(1)
    while frame is not None:
        workflow = frame.f_locals.get("self") if frame.f_code.co_name == "initialize" else None
        if isinstance(workflow, BundleWorkflow):
            return workflow
        frame = frame.f_back
    return None


def scope_run(workflow: Any, folder: str | Path, flag: str, resume: bool | None = None, training: bool = False) -> None:
    """Hold ``folder`` during each run of ``workflow`` (:func:`~medgmae.folder_lock.hold_until_ended`) and note on a
    ``KeyboardInterrupt`` how to go on. Nothing is held between ``initialize`` and ``run`` (neither writes there), so an
    ``initialize`` that fails, or a workflow only inspected, holds nothing; a new ``initialize`` replaces the wrapper.

    Args:
        workflow: the bundle workflow (:func:`initialising_workflow`).
        folder: the output folder the run writes into.
        flag: its setting, as the refusal names it (``"--output_dir"``).
        resume: a training run's ``resume`` setting (``None``: not known).
        training: the run trains (Ctrl-C advises a resume) and ``folder`` is its ``output_dir``.

    Raises:
        FolderInUse: (from the wrapped ``run``) another process holds ``folder``.
    """
    run = getattr(workflow.run, "unscoped", workflow.run)

    def scoped_run(*args: Any, **kwargs: Any) -> Any:
        end = hold_until_ended(folder, flag)
        at_start = checkpoint_files(folder) if training else {}
        try:
            return run(*args, **kwargs)
        except KeyboardInterrupt as stop:
            advice = getattr(stop, "resume_advice", None) or stopped_run_advice(str(folder), resume, at_start)
            if hasattr(stop, "add_note"):  # Python 3.11+
                stop.add_note(f"{advice if training else INTERRUPTED_NO_RESUME} (from Python: the same call, "
                              "with `--key value` as `key=value`)")  # fmt: skip
            raise
        finally:
            end()

    scoped_run.unscoped = run
    workflow.run = scoped_run
