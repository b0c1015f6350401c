"""What makes fine-tuning runs one experiment, for ``medgmae-runs-table --summary``; and whether a run has finished.

:func:`read_experiment` gathers what a run recorded of how it was trained, beyond the runs table's columns: its
data (the datalist file of ``training_cases.json``, a dataset folder's ``dataset.json`` where it names only the
folder, as evaluation resolves it, else ``phantom data``; how many training cases the data held; and the validation
cases its newest ``checkpoint_epoch=N.pt`` records, by their paths relative to the folder holding them and their
sizes, so that a dataset moved as a whole still reads alike: :func:`same_data`), ``max_epochs`` (the
checkpoint's), the settings the checkpoint records (network, optimiser, loss, crops per item, validation; else the
network of ``best_model.pt``) and the pre-processing beyond the table's columns (``input_size``, ...); and of its
``eval/metrics.json``: where its Dice was scored (``dice_space``) and on which list. Seeds, the encoder file and
the number of data loader workers are left out: runs that differ only in those are repeats of one experiment.
:func:`agree` compares two runs field by field (a field one of them does not record is not compared), and
:func:`differing_fields` names, per summary row, the fields that tell the rows apart. :func:`run_progress` tells a
run still training (another process holds its folder) or stopped before ``max_epochs`` (or training on another
machine, whose lock this host cannot see) from a finished one; :func:`markdown_rows` shows it in the ``epochs``
cell.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["read_experiment", "run_progress", "same_data", "agree", "markdown_rows", "differing_fields", "EVAL_FIELDS"]

#: The fields that only ``eval_dice`` is compared by (where its Dice was scored and on which cases).
EVAL_FIELDS = ("dice_space", "eval_cases")
#: Settings the table's own columns show (spacing, HU window, orientation) or that name no setting (class names).
_SHOWN = {"preprocessing.spacing", "preprocessing.hu_window", "preprocessing.orientation", "model.class_names"}


def _canon(value: Any) -> Any:
    """``value`` as a comparable, printable cell: numbers as they are (whole floats as ints), lists and mappings as
    compact JSON text with whole floats as ints (``[96, 96, 96]``), ``None`` as it is."""
    def whole(v: Any) -> Any:
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, (list, tuple)):
            return [whole(x) for x in v]
        if isinstance(v, Mapping):
            return {str(k): whole(x) for k, x in v.items()}
        return v

    value = whole(value)
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value


def _newest_checkpoint(newest: Path | None) -> dict:
    """The ``engine`` and ``objects`` records of the run's newest ``checkpoint_epoch=N.pt`` (memory-mapped: its
    weights are not read); ``{}`` without one (``None``), or where it does not read (a file cut short, or no
    training checkpoint)."""
    from medgmae.torch_files import load_torch_file

    if newest is None:
        return {}
    try:
        ckpt = load_torch_file(newest, "cpu", mmap=True)
    except (OSError, ValueError, RuntimeError, EOFError):
        return {}
    return ckpt if isinstance(ckpt, dict) else {}


def _validation_cases(objects: Any) -> str | None:
    """The validation cases a checkpoint records (``objects.validation``: relative paths and sizes) as ``N cases
    #digest``; ``None`` where it records none."""
    cases = (objects.get("validation") or {}).get("cases") if isinstance(objects, Mapping) else None
    if not isinstance(cases, list) or not cases:
        return None
    text = json.dumps(cases, sort_keys=True, default=str)
    return f"{len(cases)} cases #{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def _settings(objects: Any, model_config: Mapping | None, spec: Mapping | None) -> dict[str, Any]:
    """The run's settings as ``{"section.key": value}``: the checkpoint's settings record where it holds one, else
    ``best_model.pt``'s network (``model.*``) and the run's pre-processing (``preprocessing.*``); the settings the
    table's columns show are left out."""
    settings = (objects.get("settings") or {}).get("settings") if isinstance(objects, Mapping) else None
    if not isinstance(settings, Mapping) or not settings:
        settings = {"model": dict(model_config or {}), "preprocessing": dict(spec or {})}
    flat = {f"{section}.{key}": _canon(value) for section, values in settings.items() if isinstance(values, Mapping)
            for key, value in values.items()}  # fmt: skip
    return {key: value for key, value in flat.items() if key not in _SHOWN}


def _run_datalist(folder: Path, record: Mapping) -> Path | None:
    """The datalist file the run's data are, as :func:`medgmae.finetune.run_record.run_datalist` resolves a run's
    record for its evaluation (its datalist, else ``dataset_dir/dataset.json``, else its phantoms'
    ``folder/phantom/dataset.json``), absolute (links resolved); ``None`` where the record does not read again."""
    from medgmae.data.datalist import DatasetError
    from medgmae.finetune.run_record import run_datalist

    dataset_dir = str(record.get("dataset_dir") or "")
    try:
        _, datalist = run_datalist(dataset_dir, str(record.get("datalist") or ""), folder)
    except (DatasetError, ValueError, OSError):  # a folder without its dataset.json now: named as training named it
        if not dataset_dir:
            return None
        datalist = Path(dataset_dir) / "dataset.json"
    return Path(datalist).expanduser().resolve()


def _eval_cases(own: Path | None, evaluation: Mapping) -> str | None:
    """Which cases ``eval/metrics.json`` scored: ``'<key>' list of the run's data`` where the datalist it names is
    the run's own (``own``, :func:`_run_datalist`; a relative one, recorded against the folder the evaluation ran
    in, where it names the end of that path), else ``'<key>' list of <datalist>``; ``None`` where it names none."""
    key, datalist = evaluation.get("data_key"), evaluation.get("datalist")
    if not datalist:
        return None
    named = Path(str(datalist)).expanduser()
    if named.is_absolute():
        mine = own is not None and named.resolve() == own
    else:
        parts = Path(os.path.normpath(named)).parts
        mine = own is not None and ".." not in parts and own.parts[-len(parts):] == parts
    return f"'{key}' list of " + ("the run's data" if mine else str(datalist))


def read_experiment(folder: Path, record: Mapping, spec: Mapping | None, model_config: Mapping | None,
                    evaluation: Mapping, newest: Path | None) -> dict[str, Any]:  # fmt: skip
    """What a run recorded of how it was trained and evaluated, as the summary compares runs by it.

    Args:
        folder: the run folder.
        record: its ``training_cases.json``.
        spec: its pre-processing as a ``PreprocessingSpec.to_dict()`` (the record's, else ``best_model.pt``'s), or
            ``None``.
        model_config: ``best_model.pt``'s network config, or ``None``.
        evaluation: its ``eval/metrics.json`` (``{}`` without one).
        newest: its newest ``checkpoint_epoch=N.pt`` (``None``: none), as the table listed them.

    Returns:
        ``{field: value}`` (``None`` where the run records nothing): ``data``, ``training set`` (the data's
        training cases), ``validation`` (its cases, digested), ``max_epochs``, the settings (``model.feature_size``,
        ``preprocessing.input_size``, ``optimiser.learning_rate``, ...) and :data:`EVAL_FIELDS`; and
        ``"_progress"``: :func:`run_progress`'s ``(cell, note, status)`` or ``None``.
    """
    ckpt = _newest_checkpoint(newest)
    objects, engine = ckpt.get("objects"), ckpt.get("engine")
    source = str(record.get("datalist") or record.get("dataset_dir") or "")
    own, total = _run_datalist(folder, record), record.get("num_total")
    return {"data": (str(own or source) if source else "phantom data"),
            "training set": f"{total} cases" if isinstance(total, int) and not isinstance(total, bool) else None,
            "validation": _validation_cases(objects) if source else None,  # phantoms: each run's own, by its seed
            "max_epochs": engine.get("max_epochs") if isinstance(engine, Mapping) else None,
            **_settings(objects, model_config, spec),
            "dice_space": evaluation.get("dice_space"), "eval_cases": _eval_cases(own, evaluation),
            "_progress": run_progress(folder, engine)}  # fmt: skip


def run_progress(folder: Path, engine: Any) -> tuple[str, str, str] | None:
    """Whether the run has not finished: ``(epochs cell, note, status)`` for a run still training (a process of this
    host holds its folder, :func:`medgmae.folder_lock.folder_holder`) or stopped before its ``max_epochs`` (its
    newest checkpoint's epoch below them: stopped, or training on another machine, whose lock this host cannot
    see); ``None`` for a finished run, or one whose checkpoint does not say.

    Args:
        folder: the run folder.
        engine: the newest checkpoint's ``engine`` record (``epoch``, ``max_epochs``), or ``None``.
    """
    from medgmae.folder_lock import folder_holder

    epoch, most = (engine.get("epoch"), engine.get("max_epochs")) if isinstance(engine, Mapping) else (None, None)
    done = f"epoch {epoch} of {most}" if isinstance(epoch, int) and isinstance(most, int) else "no epoch checkpoint yet"
    held = folder_holder(folder)
    if held is not None and held[0] != os.getpid():
        return (f"{epoch or 0} of {most or '?'}, still training",
                f"{folder}: still training ({done}; process {held[0]} holds the folder): its Dice are of an "
                "unfinished run, not scored in the summary", "still training")  # fmt: skip
    if isinstance(epoch, int) and isinstance(most, int) and epoch < most:
        status = "stopped, or training on another machine"
        return (f"{epoch} of {most}, {status}",
                f"{folder}: {status} (a lock held on another host is not seen from this one) at {done}, not finished:"
                " once no run trains in it, resume it (--resume true) to finish; its Dice are not scored in the "
                "summary", status)  # fmt: skip
    return None


def same_data(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two runs' :func:`read_experiment` records name the same data: one datalist file (a field one of them
    does not record is not compared), or a dataset moved as a whole, or reached by another path: datalists of the
    same file name in other folders, where both runs record their validation cases (:func:`agree` compares those by
    content). Two datalists of one folder (``split1.json``, ``split2.json``) are other data, whatever their cases."""
    x, y = a.get("data"), b.get("data")
    if x is None or y is None or x == y:
        return True
    recorded = a.get("validation") is not None and b.get("validation") is not None
    return recorded and Path(str(x)).name == Path(str(y)).name and Path(str(x)).parent != Path(str(y)).parent


def agree(a: Mapping[str, Any], b: Mapping[str, Any], fields: Sequence[str]) -> bool:
    """Whether two runs' :func:`read_experiment` records agree on ``fields``: a field one of them records nothing
    of is not compared, and ``data`` as :func:`same_data` compares it."""
    for field in fields:
        x, y = a.get(field), b.get(field)
        if field == "data":
            if not same_data(a, b):
                return False
        elif x is not None and y is not None and x != y:
            return False
    return True


def _value(group: Sequence[Mapping], field: str) -> Any:
    """A group of runs' value of ``field``: the first one recorded, else ``None``."""
    return next((run[field] for run in group if run.get(field) is not None), None)


def differing_fields(groups: Sequence[Sequence[Mapping]], fields: Sequence[str]) -> list[str]:
    """Each group's cell of what tells it from the other groups: ``field value`` for each of ``fields`` whose
    recorded values are not the same in every group (``not recorded`` where none of its runs records it),
    ``; ``-separated; the
    validation cases only where the data's paths do not already tell the groups apart."""
    values = {field: [_value(g, field) for g in groups] for field in fields}
    varying = [f for f in fields if len({json.dumps(v, default=str) for v in values[f] if v is not None}) > 1]
    if "data" in varying:  # named only where the groups' data are not one dataset (moved) as agree compares them
        recorded = values.get("validation") or [None] * len(groups)
        firsts = [{"data": data, "validation": validation} for data, validation in zip(values["data"], recorded)]
        if all(same_data(x, y) for x in firsts for y in firsts):
            varying.remove("data")
    if "validation" in varying and "data" in varying:
        by_data: dict[Any, set] = {}
        for data, cases in zip(values["data"], values["validation"]):
            by_data.setdefault(data, set()).add(cases)
        if all(len(cases) == 1 for cases in by_data.values()):
            varying.remove("validation")
    labels = _labels(fields)
    return ["; ".join(f"{labels[f]} {'not recorded' if values[f][i] is None else values[f][i]}" for f in varying)
            for i in range(len(groups))]


def _labels(fields: Sequence[str]) -> dict[str, str]:
    """How ``differs_in`` names each of ``fields``: a setting by its last part (``feature_size``), with its section
    where two of ``fields`` share that part (``model.patch_size``, ``preprocessing.patch_size``)."""
    named = {"validation": "validation cases", "eval_cases": "eval cases"}
    leaves = [f.split(".")[-1] for f in fields]
    return {f: named.get(f, leaf if leaves.count(leaf) == 1 else f) for f, leaf in zip(fields, leaves)}


def markdown_rows(rows: Sequence[Mapping]) -> list[dict]:
    """Runs-table rows as the markdown table shows them: an unfinished run's ``epochs`` cell says so
    (``1 of 3, still training``, :func:`run_progress`); the rows' ``epochs`` stay numbers (the CSV's, with a
    ``status`` column)."""
    return [{**row, "epochs": progress[0]} if (progress := (row.get("experiment") or {}).get("_progress")) else dict(row)
            for row in rows]  # fmt: skip
