"""How a training run started and how each resume of it ran, kept in its checkpoints for the run's records.

:class:`StartRecord` is a ``state_dict``-able object for :class:`~medgmae.engine.CheckpointHandler`'s ``objects``.
A fresh run records its own settings (those its records name), its training loader's ``num_workers`` and its
software (:func:`medgmae.software.software_versions`) as the run's start. A resume restores the start from the
checkpoint, so that it stays the fresh start's whatever the resuming session runs with, and once the checkpoint
handler has restored the checkpoint (:func:`note_resume`) adds this session's entry to ``resumes``
(:func:`resume_entry`: the epoch it resumed from, its loader workers, its software and the settings it runs with
that differ from the start's); a resumed run's checkpoints carry the start and every resume on. A checkpoint
written before runs recorded their start (the previous release) holds none: the start's loader workers and software
are then unknown, ``None`` rather than the resuming session's, and so are its settings but for those the
checkpoint's other records hold (``recorded_in``: the model's configuration and pre-processing, the settings a
resume must match), which the resume has just compared with its own and which every session of the run has shared:
the start's settings are those, and the resuming session's entry names each other setting as not recorded at the
start (``None`` and every setting so where the records hold none).

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
#: A key a saved state lacks.
_MISSING = object()


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
        recorded_in: ``{setting: where the checkpoint's records hold it}``, dotted paths (``{"model":
            "config.config", "training.learning_rate": "settings.settings.optimiser.learning_rate"}``: a setting or
            a section of ``settings``, and the name of a checkpointed object followed by the keys into its saved
            state): the start's settings of a checkpoint that recorded no start (module docstring).

    Attributes:
        start: ``{"settings", "num_workers", "software"}`` of the fresh start (:data:`UNKNOWN_START` after a resume
            from a checkpoint that recorded none).
        resumes: one :func:`resume_entry` per resume, oldest first.
    """

    def __init__(self, settings: Mapping | None = None, num_workers: int | None = None, device: Any = None,
                 stage: str | None = None, recorded_in: Mapping[str, str] | None = None) -> None:  # fmt: skip
        if settings is not None and not isinstance(settings, Mapping):
            raise ValueError(f"settings must be a mapping or None, got {type(settings).__name__}")
        if recorded_in is not None and (not isinstance(recorded_in, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) and k and "." in v for k, v in recorded_in.items())):
            raise ValueError("recorded_in must map each setting to an object and the keys into its saved state, "
                             f"dotted (e.g. 'config.config'), got {recorded_in!r}")  # fmt: skip
        self.recorded_in = dict(recorded_in or {})
        self._unrecorded = self._told = False  # the checkpoint loaded last recorded no start; that note logged
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
        self._unrecorded = not isinstance(start, Mapping)  # its settings are read from the records in resumed()
        self.start = {**UNKNOWN_START, **start} if isinstance(start, Mapping) else dict(UNKNOWN_START)
        resumes = state.get("resumes")
        self._earlier = [dict(r) for r in resumes if isinstance(r, Mapping)] if isinstance(resumes, list) else []
        self.resumes = list(self._earlier)

    def resumed(self, epoch: int, saved: Mapping[str, Any] | None = None) -> dict:
        """Add this session's entry (:func:`resume_entry`) to the resumes the checkpoint recorded.

        Args:
            epoch: the epoch of the checkpoint this session resumed from.
            saved: the checkpoint's saved states by object name, restored and accepted: where the checkpoint
                recorded no start, the start's settings are read from them (``recorded_in``).

        Returns:
            The entry.
        """
        if self._unrecorded:
            self.start["settings"] = self._settings_in(saved or {})
            self._note_unrecorded()
        changed = None
        if self.records_settings:  # each setting the start lacks reads "saved (not recorded)", a line each
            start = _merged(_sections(self.session["settings"]), self.start.get("settings") or {})
            changed = settings_differences(start, self.session["settings"])
        entry = resume_entry(int(epoch), self.session["num_workers"], self.session["software"], self.stage, changed)
        self.resumes = [*self._earlier, entry]
        return entry

    def _settings_in(self, saved: Mapping[str, Any]) -> dict | None:
        """The start's settings that the checkpoint's records hold (``recorded_in``); ``None`` where none."""
        known: dict = {}
        for setting, where in self.recorded_in.items():
            value: Any = saved
            for key in where.split("."):
                value = value.get(key, _MISSING) if isinstance(value, Mapping) else _MISSING
            if value is not _MISSING:
                *sections, name = setting.split(".")
                place = known
                for section in sections:
                    place = place.setdefault(section, {})
                place[name] = json.loads(json.dumps(value, default=str))
        return known or None

    def _note_unrecorded(self) -> None:
        """Say once (a GViT run loads the record once per phase) that the checkpoint recorded no start, and what of
        it is known."""
        if self._told or not is_main_process():
            return
        self._told = True
        logger.info("the checkpoint records no start of its run (an earlier release wrote it): %s", (
            "the start's settings are those the checkpoint's records hold, which a resume compares and every session "
            "of the run shared; its other settings, loader workers and software are recorded as unknown (null)"
            if self.start.get("settings") else "the run's start settings and software are recorded as unknown (null)"))

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


def _merged(base: Mapping, over: Mapping) -> dict:
    """``over`` laid over ``base``, nested mappings merged key by key."""
    out = dict(base)
    for key, value in over.items():
        both = isinstance(value, Mapping) and isinstance(out.get(key), Mapping)
        out[key] = _merged(out[key], value) if both else value
    return out


def note_resume(objects: Mapping[str, Any], epoch: int, saved: Mapping[str, Any] | None = None) -> None:
    """Tell each :class:`StartRecord` among a checkpoint handler's ``objects`` that the run resumed from a
    checkpoint of ``epoch`` (after the handler restored them from ``saved``, the checkpoint's states by name)."""
    for obj in objects.values():
        if isinstance(obj, StartRecord):
            obj.resumed(epoch, saved)
