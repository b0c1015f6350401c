"""Settings a resumed run must share with the run that wrote its checkpoint.

:class:`SettingsRecord` is a ``state_dict``-able object for :class:`~medgmae.engine.CheckpointHandler`'s
``objects``: saved with every checkpoint, and on resume it refuses a checkpoint written with other settings,
naming each one that differs (the handler restores such records before any weights, so a changed setting is
named rather than a tensor shape; a setting that changes no shape would otherwise resume silently).
:class:`CasesRecord` does the same for the training data: other files, or files whose size changed, at an equal
number of cases (which the epoch-length check cannot see); and for the validation data, on which the best model is
chosen. A checkpoint written before its run recorded one of these, or its
:class:`~medgmae.engine.start_record.StartRecord` (which compares nothing), still resumes (:func:`restorable`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from medgmae.data.fingerprint import file_fingerprint
from medgmae.distributed import is_main_process
from medgmae.engine.restore import ResumeRefused
from medgmae.engine.resume_words import check_flags, flag_value, resume_flags, unflagged
from medgmae.engine.start_record import StartRecord
from medgmae.words import plural
from medgmae.settings_diff import settings_differences

__all__ = ["SettingsRecord", "CasesRecord", "RECORDS", "restorable", "unrecorded_states", "resume_flags", "check_flags"]

logger = logging.getLogger("medgmae.engine")


class SettingsRecord:
    """The settings of a run (nested plain data), checked against a checkpoint's on resume.

    Args:
        settings: e.g. ``{"model": model.config(), "data": {...}}``.
        what: how the error message names the run (``"GViT training"``).
        saved_defaults: ``{section: {key: value}}`` read into a saved record that lacks the key (a setting added
            later, whose earlier behaviour was ``value``), where this run's record holds the key; a value that is
            no mapping is a top-level setting's (``{"flip": True}``). A checkpoint written before its run recorded
            settings at all is compared on these alone (:func:`unrecorded_states`).
        sources: ``{section: where its values come from}``, said after the differences of that section (settings
            no flag names: fine-tuning's pre-processing and encoder come from the ``--pretrained`` file); a
            setting's own entry (``{"model.feature_size": ...}``) is said for it instead of its section's, and an
            empty one says nothing (a setting its flag alone gives, in a section the file gives).
        retired: ``{section: keys}`` that earlier versions recorded and this one no longer does, because they no
            longer change what a resumed run trains (GViT's ``data.default_root``): dropped from a saved record
            before comparing. Any other key only the saved record holds is still a difference.
        flags: ``{setting: bundle flag}`` (``{"model.classifier_freqs": "classifier_freqs"}``): a refusal naming
            one of them says the flags and saved values that resume the run (``--classifier_freqs 6``, quoted where
            the shell needs it: ``--window "[-1000.0, 1000.0]"``); :func:`resume_flags` has the forms.
        given_by: ``{section: what alone gives its settings that no flag gives}`` (fine-tuning's pre-processing:
            ``"the interrupted run's --pretrained file"``), which a refusal naming such a setting leads with, the
            flags of the others after it; a differing setting no flag gives of another section is said to be given
            as the interrupted run did.
    """

    def __init__(self, settings: Mapping, what: str = "the run", saved_defaults: Mapping | None = None,
                 sources: Mapping[str, str] | None = None, retired: Mapping[str, Sequence[str]] | None = None,
                 flags: Mapping[str, str] | None = None, given_by: Mapping[str, str] | None = None) -> None:  # fmt: skip
        if not isinstance(settings, Mapping):
            raise ValueError(f"settings must be a mapping, got {type(settings).__name__}")
        if retired is not None and (not isinstance(retired, Mapping)
                                    or any(isinstance(v, str) or not isinstance(v, Sequence) for v in retired.values())):
            raise ValueError(f"retired must map each section to a list of keys, got {retired!r}")
        self.settings, self.what = dict(settings), what
        self.saved_defaults = {k: dict(v) if isinstance(v, Mapping) else v for k, v in (saved_defaults or {}).items()}
        # explicit per record, not every key the saved record alone holds: such a key may be a setting the old run
        # trained with that this version cannot give (a resume would then go on silently without it); only a key
        # known to change nothing any more may be dropped
        self.retired = {k: frozenset(v) for k, v in (retired or {}).items()}
        self.sources, self.flags, self.given_by = dict(sources or {}), check_flags(flags), dict(given_by or {})
        self._warned = False

    def state_dict(self) -> dict:
        """The settings as plain JSON data (tuples as lists), saved with the checkpoint."""
        return {"settings": json.loads(json.dumps(self.settings, default=str))}

    def load_state_dict(self, state: Mapping) -> None:
        """Accept a checkpoint written with these settings.

        Args:
            state: what :meth:`state_dict` returned when the checkpoint was written; ``{}`` for a checkpoint that
                holds no settings record (:func:`unrecorded_states`): only :attr:`saved_defaults` are compared.

        Raises:
            ValueError: naming each differing setting (:func:`~medgmae.settings_diff.settings_differences`).
        """
        recorded = "settings" in state
        saved, now = dict(state.get("settings") or {}), self.state_dict()["settings"]
        for section, keys in self.retired.items():  # settings no longer recorded: the old value changes nothing now
            if isinstance(saved.get(section), Mapping):
                saved[section] = {k: v for k, v in saved[section].items() if k not in keys}
        partial = bool(saved) or not recorded  # an empty recorded record is compared whole, as it was
        defaulted = self._saved_with_defaults(saved, now) if partial else {}
        unrecorded = [k for k in now if k not in saved] if partial else []
        for section, keys in defaulted.items():  # a section an earlier record lacks: its defaulted keys compared
            unrecorded += [f"{section}.{k}" for k in now[section] if k not in keys]
            now[section] = {k: v for k, v in now[section].items() if k in keys}
            saved[section] = {k: v for k, v in saved[section].items() if k in keys}
        if unrecorded:  # settings added to the record later: an earlier version's checkpoint still resumes
            if recorded and not self._warned and is_main_process():  # the resume check and the restore: said once
                logger.warning("the checkpoint of %s records no %s settings (an earlier version wrote it): they are "
                               "not compared, so give the same ones as that run", self.what, " or ".join(unrecorded))  # fmt: skip
            self._warned = True
            now = {k: v for k, v in now.items() if k in saved}
        if diff := settings_differences(saved, now):
            self._refuse(diff, saved, recorded)

    def _refuse(self, diff: list[str], saved: Mapping, recorded: bool) -> None:
        """Raise the refusal naming ``diff`` (lines of :func:`settings_differences`), where each section's values
        come from (:attr:`sources`), the flags that give the saved values (:attr:`flags`) and, leading, what gives
        those no flag gives (:attr:`given_by`, else said to be given as the interrupted run did)."""
        why = self._sources_of(diff)
        given, missing = resume_flags(self.flags, diff, saved), unflagged(self.flags, diff, saved) if self.flags else {}
        led = {name: self.given_by[name.split(".")[0]] for name in missing if name.split(".")[0] in self.given_by}
        rest = [f"{name} ({reason})" if reason else name for name, reason in missing.items() if name not in led]
        how = (f"{' and '.join(dict.fromkeys(led.values()))} (which alone gives {', '.join(led)}: no flag does)"
               if led else "the saved settings")  # fmt: skip
        if rest:
            how += f"; no flag gives {', '.join(rest)}: give {'it' if len(rest) == 1 else 'them'} as the interrupted run did"
        if given:  # after what no flag gives, so that the words do not read as enough
            how += (f"{';' if rest else ' and'} the saved values of the others" if missing else "") + f" (here {' '.join(given)})"
        when = "" if recorded else " before runs recorded their settings; the version that wrote it trained"
        raise ResumeRefused(
            f"the checkpoint was written by {self.what}{when} with other settings (" + "; ".join(diff) + "). "
            + (f"Where they come from: {'; '.join(why)}. " if why else "")
            + f"Resume with {how} or train into a new output_dir"
        )

    def _sources_of(self, diff: list[str]) -> list[str]:
        """``"section.*: source"`` (or ``"section.key: source"``) for each of :attr:`sources` that gives a setting
        ``diff`` names, in the order of :attr:`sources`: a setting's own entry before its section's; an empty
        source names none."""
        used = set()
        for name in (line.partition(": ")[0] for line in diff):
            used.add(name if name in self.sources else name.split(".")[0])
        return [f"{key if '.' in key else key + '.*'}: {source}" for key, source in self.sources.items()
                if key in used and source]  # fmt: skip

    def _saved_with_defaults(self, saved: dict, now: Mapping) -> dict[str, set]:
        """Fill ``saved`` (in place) with :attr:`saved_defaults` for the settings this run records and it lacks: a
        top-level setting, in a section it holds, and a whole section it lacks (its defaulted keys are compared,
        the rest of it is not).

        Returns:
            ``{section: the defaulted keys}`` for the sections ``saved`` lacked.
        """
        defaulted = {}
        for section, defaults in self.saved_defaults.items():
            if not isinstance(defaults, Mapping):  # a top-level setting
                if section in now and not isinstance(now[section], Mapping) and section not in saved:
                    saved[section] = defaults
                continue
            if not isinstance(now.get(section), Mapping):
                continue  # a setting this run does not record is not compared
            known = {k: v for k, v in defaults.items() if k in now[section]}
            if isinstance(saved.get(section), Mapping):
                saved[section] = {**known, **saved[section]}
            elif section not in saved and known:
                saved[section], defaulted[section] = dict(known), set(known)
        return defaulted


def unrecorded_states(records: Mapping[str, Any]) -> dict[str, dict]:
    """The saved state that stands for each of ``records`` a checkpoint lacks (written before its run recorded
    them): ``{}`` for a :class:`SettingsRecord` with :attr:`~SettingsRecord.saved_defaults`, so that a setting
    whose earlier behaviour is known is still compared, and for a
    :class:`~medgmae.engine.start_record.StartRecord` (the run's start is then unknown); none for the others (not
    compared).

    Args:
        records: name -> the records the checkpoint holds no state of.

    Returns:
        ``{name: {}}``.
    """
    return {name: {} for name, record in records.items()
            if isinstance(record, StartRecord) or isinstance(record, SettingsRecord) and record.saved_defaults}  # fmt: skip


def restorable(path: Path, objects: Mapping[str, Any], saved: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """What a resume restores from a checkpoint: ``ResumeRefused`` when it lacks the state of a training object (a
    checkpoint of another kind of run); a record it lacks (written before the run recorded it) is left out with a
    warning, or compared on its stand-in where its earlier values are known (:func:`unrecorded_states`).

    Args:
        path: the checkpoint, as the messages name it.
        objects: this run's objects by name.
        saved: the checkpoint's saved states by name.

    Returns:
        ``(objects to restore, their saved states)``.
    """
    missing = set(objects) - set(saved)
    unrecorded = {name for name in missing if isinstance(objects[name], RECORDS)}
    if missing - unrecorded:
        raise ResumeRefused(f"checkpoint {path} lacks state for {sorted(missing)}: it was written by another kind of run")
    stand_ins = unrecorded_states({name: objects[name] for name in unrecorded})
    compared = {name for name in unrecorded if not isinstance(objects[name], StartRecord)}  # a start compares nothing
    if compared:
        logger.warning("checkpoint %s was written before its run recorded %s: resuming without comparing them%s", path,
                       sorted(compared), " (but for settings whose earlier values are known)" * bool(set(stand_ins) & compared))  # fmt: skip
    restore = {k: v for k, v in objects.items() if k not in unrecorded or k in stand_ins}
    return restore, {**saved, **stand_ins}


def _entry(value: Any) -> tuple[str, int | str] | None:
    """What a case's value is compared by: ``(path, size in bytes)`` of a file (a folder, e.g. a DICOM series: the
    sizes of its files added), ``("<array>", digest)`` of an in-memory array, ``("<int>", value)`` of an integer
    (a class index), ``None`` for anything else."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return "<int>", int(value)
    if isinstance(value, (str, os.PathLike)):
        path = Path(value).resolve()
        if path.is_file():  # the file's own size (a .mhd header's, not its data file's added: as recorded before)
            return str(path), path.stat().st_size
        fingerprint = file_fingerprint(path)
        return str(path), -1 if fingerprint is None else fingerprint[0]
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        array = np.ascontiguousarray(np.asarray(value.detach().cpu() if hasattr(value, "detach") else value))
        return "<array>", f"{array.dtype}{list(array.shape)}:{hashlib.sha1(array.tobytes()).hexdigest()[:16]}"
    return None


class CasesRecord:
    """A run's training cases, each file by its path and size, checked against a checkpoint's on resume.

    Paths are kept relative to the folder holding all of them, so a dataset moved as a whole still resumes; file
    contents are not read (a same-size edit is not seen). In-memory arrays (2D phantom slices) are compared by
    digest, integers (GViT's class indices) by value.

    Args:
        cases: the training datalist (``{"image": path, "label": path, ...}`` items).
        keys: the item keys compared.
        what: how the error message names the run.
        role: what the run did with the cases, as the error message says it (``"validated on"`` for a record of
            the validation cases: the best model would otherwise be chosen on two validation sets).
        hint: the settings that choose the cases, said in the refusal (``"the split is drawn with --seed"``): a
            resume without the run's own ``--seed`` chose other cases.
        chosen_by: ``{flag: value}`` of the settings that chose the cases (``{"seed": 1, "val_fraction": 0.34}``),
            saved with them: a refusal gives the saved values of those that differ as their flags
            (``--seed 1``).
        noun: what the refusal calls one item (``"case"``; the 2D bundles' ``"image"``).
    """

    def __init__(
        self, cases: Sequence[Mapping], keys: Sequence[str] = ("image", "label"), what: str = "the run",
        role: str = "trained on", hint: str = "", chosen_by: Mapping[str, Any] | None = None, noun: str = "case",
    ) -> None:  # fmt: skip
        if isinstance(cases, (str, bytes)) or not isinstance(cases, Sequence):
            raise ValueError(f"cases must be a list of datalist items, got {type(cases).__name__}")
        entries = [[(k, _entry(item[k])) for k in keys if isinstance(item, Mapping) and k in item] for item in cases]
        paths = [e[0] for case in entries for _, e in case if e is not None and not e[0].startswith("<")]
        root = os.path.commonpath([os.path.dirname(p) for p in paths]) if paths else ""
        self.cases = [
            {k: [os.path.relpath(e[0], root).replace(os.sep, "/") if not e[0].startswith("<") else e[0], e[1]]
             for k, e in case if e is not None}
            for case in entries
        ]  # fmt: skip
        self.what, self.role, self.hint, self.noun = what, role, str(hint), str(noun)
        if chosen_by is not None and not isinstance(chosen_by, Mapping):
            raise ValueError(f"chosen_by must map each flag to its value, got {chosen_by!r}")
        self.chosen_by = json.loads(json.dumps(dict(chosen_by or {})))

    def state_dict(self) -> dict:
        """``{"cases": [{key: [relative path, "<array>" or "<int>", size, digest or value]}]}``, saved with the
        checkpoint, and ``"chosen_by"`` where the run has it."""
        return {"cases": self.cases, **({"chosen_by": self.chosen_by} if self.chosen_by else {})}

    def load_state_dict(self, state: Mapping) -> None:
        """Accept a checkpoint trained on these cases.

        Args:
            state: what :meth:`state_dict` returned when the checkpoint was written.

        Raises:
            ValueError: naming how many cases differ and the first few (file, saved and current size).
        """
        saved = [json.dumps(c, sort_keys=True) for c in state.get("cases") or []]
        now = [json.dumps(c, sort_keys=True) for c in self.cases]
        if saved == now:
            return
        saved_set, now_set = set(saved), set(now)
        gone, new = [c for c in saved if c not in now_set], [c for c in now if c not in saved_set]
        detail = [f"saved {c}" for c in gone[:2]] + [f"now {c}" for c in new[:2]]
        if gone + new and all(_generated_only(c) for c in gone + new):  # digests say nothing to a reader
            detail = [f"{plural(max(len(gone), len(new)), 'generated image')} (held in memory, e.g. phantom slices) "
                      "with other pixels: made with other data settings"]  # fmt: skip
        chosen = state.get("chosen_by") if isinstance(state.get("chosen_by"), Mapping) else {}
        words = [f"--{flag} {flag_value(value)}" for flag, value in chosen.items() if self.chosen_by.get(flag, _NONE) != value]
        given = f" (here {' '.join(words)})" if words else ""
        hint = f" ({self.hint}{given})" if self.hint else given
        raise ResumeRefused(
            f"the checkpoint was written by {self.what} {self.role} other data: {plural(len(saved), self.noun)} then, "
            f"{len(now)} now, {max(len(gone), len(new))} differing ({'; '.join(detail) or 'the same cases in another order'}). "
            f"Resume with the interrupted run's data{hint} or train into a new output_dir"
        )


#: A value no saved setting has (``chosen_by`` lacking a flag).
_NONE = object()


def _generated_only(case: str) -> bool:
    """Whether a saved case (its JSON) holds in-memory arrays only (no file to name, only digests)."""
    entries = json.loads(case).values()
    return bool(entries) and all(e[0] == "<array>" for e in entries)


#: The record types a checkpoint may lack when it was written before its run recorded them (resumed with a
#: warning instead of refused; a start record without one: its start is unknown).
RECORDS = (SettingsRecord, CasesRecord, StartRecord)
