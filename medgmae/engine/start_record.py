"""How a training run started and how each resume of it ran, kept in its checkpoints for the run's records.

:class:`StartRecord` is a ``state_dict``-able object for :class:`~medgmae.engine.CheckpointHandler`'s ``objects``.
A fresh run records its own settings (those its records name), its training loader's ``num_workers`` and its
software (:func:`medgmae.software.software_versions`) as the run's start. A resume restores the start from the
checkpoint, so that it stays the fresh start's whatever the resuming session runs with, and once the checkpoint
handler has restored the checkpoint (:func:`note_resume`) adds this session's entry to ``resumes``
(:func:`resume_entry`: the epoch it resumed from, its loader workers, its software and the settings it runs with
that differ from the start's); a resumed run's checkpoints carry the start and every resume on. A checkpoint
written before runs recorded their start (the previous release) holds none: the start is then unknown, ``None``
rather than the resuming session's, and that session's entry names each of its settings as not recorded at the
start.

Pre-training's and 2D GMAE's ``summary.json`` (:class:`~medgmae.mae_training.summary.PretrainSummary`) and GViT's
``metrics.json`` and ``summary.json`` (:class:`~medgmae.twod.gvit_train.GViTWorkflow`) write :meth:`StartRecord.summary`.
Fine-tuning records its start in ``training_cases.json`` (:func:`medgmae.finetune.run_record.start_record`), which
it writes before training and evaluation and ``medgmae-runs-table`` read, and appends the same
:func:`resume_entry` to its ``resumes``.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Mapping

import medgmae.software as software
from medgmae.distributed import is_main_process
from medgmae.settings_diff import settings_differences

__all__ = ["StartRecord", "UNKNOWN_START", "resume_entry", "note_resume"]

logger = logging.getLogger("medgmae.engine")

#: The start of a run whose checkpoint recorded none (written before runs recorded their start).
UNKNOWN_START = {"settings": None, "num_workers": None, "software": None}


def _workers(num_workers: Any) -> int | None:
    """``num_workers`` checked: a whole number >= 0, or ``None`` (not recorded)."""
    if num_workers is not None and (isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0):
        raise ValueError(f"num_workers must be a whole number >= 0 or None, got {num_workers!r}")
    return num_workers


def resume_entry(epoch: int, num_workers: int | None, ran_with: Mapping, stage: str | None = None,
                 changed: list[str] | None = None) -> dict:  # fmt: skip
    """One resume of a run, as its records list it under ``resumes``.

    Args:
        epoch: the epoch of the checkpoint it resumed from (the epochs trained before it).
        num_workers: its training loader's ``num_workers`` (``None``: not known).
        ran_with: its software (:func:`medgmae.software.software_versions`).
        stage: the stage of a run of several whose checkpoint it resumed from (GViT's phase); ``None``: left out.
        changed: its settings that differ from the start's, a line each
            (:func:`~medgmae.settings_diff.settings_differences`); ``None``: left out (a record of no settings).

    Returns:
        ``{"epoch", "stage" (where given), "num_workers", "software", "changed_settings" (where given)}``.
    """
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"epoch must be a whole number >= 0, got {epoch!r}")
    if not isinstance(ran_with, Mapping):
        raise ValueError(f"ran_with must be the software record (a mapping), got {type(ran_with).__name__}")
    return {"epoch": epoch, **({} if stage is None else {"stage": str(stage)}), "num_workers": _workers(num_workers),
            "software": dict(ran_with), **({} if changed is None else {"changed_settings": list(changed)})}  # fmt: skip


class StartRecord:
    """A run's start (settings, loader workers, software) and its resumes, kept in its checkpoints.

    Args:
        settings: the run's settings as its records name them (nested plain data; ``None``: none recorded).
        num_workers: the training loader's ``num_workers`` (``None``: not recorded).
        device: the training device, for the GPU entry of the software record.
        stage: the stage of the run whose checkpoints hold the record (GViT's phase; its workflow sets it as each
            phase starts), named in a resume's entry; ``None`` for a run of one stage.

    Attributes:
        start: ``{"settings", "num_workers", "software"}`` of the fresh start (:data:`UNKNOWN_START` after a resume
            from a checkpoint that recorded none).
        resumes: one :func:`resume_entry` per resume, oldest first.
    """

    def __init__(self, settings: Mapping | None = None, num_workers: int | None = None, device: Any = None,
                 stage: str | None = None) -> None:  # fmt: skip
        if settings is not None and not isinstance(settings, Mapping):
            raise ValueError(f"settings must be a mapping or None, got {type(settings).__name__}")
        plain = None if settings is None else json.loads(json.dumps(settings, default=str))
        # this session's, computed once: a software record reads the packages' metadata and the git checkout
        self.session = {"settings": plain, "num_workers": _workers(num_workers),
                        "software": software.software_versions(device)}  # fmt: skip
        self.records_settings, self.stage = settings is not None, stage
        self.start: dict = dict(self.session)
        self.resumes: list[dict] = []
        self._earlier: list[dict] = []  # the resumes the checkpoint recorded, before this session's

    def state_dict(self) -> dict:
        """``{"start", "resumes"}``, saved with the checkpoint (plain JSON data)."""
        return {"start": dict(self.start), "resumes": [dict(r) for r in self.resumes]}

    def load_state_dict(self, state: Mapping) -> None:
        """Take the start and the resumes a checkpoint recorded (compares nothing; loaded again, it starts over
        from ``state``, as a GViT phase after another does).

        Args:
            state: what :meth:`state_dict` returned when the checkpoint was written; ``{}`` for a checkpoint written
                before runs recorded their start: the start is then unknown (:data:`UNKNOWN_START`).
        """
        start = state.get("start")
        if not isinstance(start, Mapping) and is_main_process():
            logger.info("the checkpoint records no start of its run (an earlier release wrote it): the run's start "
                        "settings and software are recorded as unknown (null)")  # fmt: skip
        self.start = {**UNKNOWN_START, **start} if isinstance(start, Mapping) else dict(UNKNOWN_START)
        resumes = state.get("resumes")
        self._earlier = [dict(r) for r in resumes if isinstance(r, Mapping)] if isinstance(resumes, list) else []
        self.resumes = list(self._earlier)

    def resumed(self, epoch: int) -> dict:
        """Add this session's entry (:func:`resume_entry`) to the resumes the checkpoint recorded.

        Args:
            epoch: the epoch of the checkpoint this session resumed from.

        Returns:
            The entry.
        """
        changed = None
        if self.records_settings:  # where the start is unknown, each setting reads "saved (not recorded)"
            start = self.start.get("settings")
            changed = settings_differences(_sections(self.session["settings"]) if start is None else start,
                                           self.session["settings"])  # fmt: skip
        entry = resume_entry(int(epoch), self.session["num_workers"], self.session["software"], self.stage, changed)
        self.resumes = [*self._earlier, entry]
        return entry

    def summary(self) -> dict:
        """What a run's records say of how it was made: ``settings`` (the start's; left out for a record of none),
        ``software`` (the start's) and, after a resume, ``resumes``; ``None`` for what the start did not record."""
        out = {"settings": self.start.get("settings")} if self.records_settings else {}
        out["software"] = self.start.get("software")
        return {**out, "resumes": [dict(r) for r in self.resumes]} if self.resumes else out


def _sections(settings: Mapping) -> dict:
    """``settings``' nested sections without their values: compared with it, each of its settings differs on its own
    line (``training.seed: saved (not recorded), now 3``), not each section as one."""
    return {k: _sections(v) for k, v in settings.items() if isinstance(v, Mapping)}


def note_resume(objects: Mapping[str, Any], epoch: int) -> None:
    """Tell each :class:`StartRecord` among a checkpoint handler's ``objects`` that the run resumed from a
    checkpoint of ``epoch`` (after the handler restored them)."""
    for obj in objects.values():
        if isinstance(obj, StartRecord):
            obj.resumed(epoch)
