"""The classes of a fine-tuning run: their names, in label order, from a datalist's ``labels`` map or a count."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from medgmae.data.datalist import DatasetError, is_nnunet_datalist, load_datalist_json, nnunet_datalist_error
from medgmae.data.precheck import check_datalist
from medgmae.data.reader import read_volume
from medgmae.distributed import is_main_process
from medgmae.finetune.run_record import run_datalist
from medgmae.words import plural

__all__ = [
    "label_names", "names_classes", "refuse_unnamed_classes", "run_label_names", "resolve_num_classes", "log_classes",
    "training_class_names", "warn_untrained_classes",
]  # fmt: skip

logger = logging.getLogger(__name__)

#: How many class names :func:`log_classes` names before saying how many more there are.
SHOWN_CLASSES = 20

#: The largest labelled subset whose label maps :func:`warn_untrained_classes` reads (each read again, about a second
#: for a large CT): the 1 % and 10 % subsets of BTCV (24 cases) and AMOS (200), where a class can be missing.
UNTRAINED_CHECK_MAX_CASES = 30


def label_names(datalist: str | Path | None = None, num_classes: int | None = None) -> list[str]:
    """Class names in label order (background first) from the datalist's ``labels`` map or a class count.

    Args:
        datalist: Decathlon JSON with a ``labels`` map ``{"0": "background", "1": "spleen", ...}`` (or nnU-Net v2's
            ``{"background": 0, "spleen": 1}``; an nnU-Net ``dataset.json`` with a ``training`` list of its own
            is read as a Decathlon datalist).
        num_classes: class count from the configuration; checked against the datalist when both are given.

    Returns:
        ``num_classes`` names (``class_<i>`` where the datalist has none).
    """
    content = load_datalist_json(datalist, check_lists=False) if datalist else {}  # its labels alone are read
    if is_nnunet_datalist(content) and not content.get("training"):  # nnU-Net's own: its folder pairs the cases
        raise nnunet_datalist_error(Path(datalist).expanduser())
    labels = content.get("labels")
    if labels:
        index = _label_index(labels, datalist)
        if sorted(index) != list(range(len(index))):
            missing = sorted(set(range(max(index) + 1)) - set(index))
            raise DatasetError(f"datalist {datalist}: 'labels' keys must be 0..{len(index) - 1} (a class per label value "
                               f"from 0 up), got {sorted(index)}" + (f"; name {', '.join(map(str, missing))} too (a value "
                               "no label map holds may be named, e.g. 'unused'), or renumber the label maps" if missing
                               else ""))  # fmt: skip
        values = {}
        for value in sorted(index):  # Dice is reported by name: a second class of one name would overwrite the first
            values.setdefault(index[value], []).append(value)
        twice = [f"{name!r} (classes {', '.join(map(str, v))})" for name, v in values.items() if len(v) > 1]
        if twice:
            raise DatasetError(f"datalist {datalist}: 'labels' gives more than one class the same name: {'; '.join(twice)}; "
                               "give each class a name of its own (metrics.json and per_case_dice.csv report Dice by name)")
        if num_classes and int(num_classes) != len(index):
            raise DatasetError(f"num_classes={num_classes} but datalist {datalist} names {len(index)} labels")
        return [index[i] for i in range(len(index))]
    if not num_classes:
        raise DatasetError(f"set num_classes: datalist {datalist} has no 'labels' map")
    return ["background"] + [f"class_{i}" for i in range(1, int(num_classes))]


def _label_index(labels, datalist: str | Path) -> dict[int, str]:
    """``{value: name}`` of a datalist's ``labels``: the Decathlon's form (``{"0": "background", "1": "liver"}``), or
    nnU-Net v2's (``{"background": 0, "liver": 1}``, names to values, as ``medgmae-datalist`` reads it) turned round
    when each name has one whole-number value of its own.

    Raises:
        DatasetError: neither form (nnU-Net's regions, a name with several values, named as such), or a value given
            two names.
    """
    bad = f"datalist {datalist}: 'labels' must map integer strings to names ({{\"0\": \"background\", \"1\": \"liver\"}})"
    if not isinstance(labels, dict):
        raise DatasetError(f"{bad}, got {labels!r}")
    try:
        return {int(k): str(v) for k, v in labels.items()}
    except ValueError:
        pass
    values = list(labels.values())
    if any(isinstance(v, list) for v in values):
        raise DatasetError(f"{bad}; it maps names to values as nnU-Net v2 does, with regions (a name for several "
                           f"values: {labels!r}), which are no classes: give one value per name")  # fmt: skip
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise DatasetError(f"{bad}, or names to whole-number values as nnU-Net v2 does, got {labels!r}")
    if len(set(values)) < len(values):
        twice = sorted({v for v in values if values.count(v) > 1})
        raise DatasetError(f"{bad}; it maps names to values as nnU-Net v2 does, but gives the value(s) {twice} more "
                           f"than one name: {labels!r}")  # fmt: skip
    return {int(v): str(k) for k, v in labels.items()}


def names_classes(datalist: str | Path) -> bool:
    """Whether ``datalist`` has a ``labels`` map (of any form: :func:`label_names` judges it).

    Args:
        datalist: a Decathlon (or nnU-Net) JSON file.

    Returns:
        ``True`` when it holds a non-empty ``labels`` entry.
    """
    return bool(load_datalist_json(datalist, check_lists=False).get("labels"))


def refuse_unnamed_classes(datalist: str | Path, cases: list[dict], workers: int = 0) -> None:
    """Stop a run whose datalist names no classes and that sets no ``num_classes``, saying the count its label maps
    need: the pre-check reads them (against a background-only count) and the error gives ``--num_classes`` for the
    highest label found, with the pre-check's other problems.

    Args:
        datalist: the datalist without a ``labels`` map.
        cases: its labelled cases the run would read.
        workers: pre-check processes.

    Raises:
        DatasetError: always.
    """
    head = f"set num_classes: datalist {datalist} has no 'labels' map"
    try:
        check_datalist(cases, label_key="label", num_classes=1, require_label=True, workers=workers, source=str(datalist))
    except DatasetError as e:
        needed = getattr(e, "needed_classes", None)
        if needed is None:
            raise DatasetError(f"{head}, and its data have problems:\n{e}") from e
        others = "".join(f"\n  - {p}" for p in e.problems[1:]) + (getattr(e, "advice", "") if e.problems[1:] else "")
        # from None: the probe's own wording (a one-class range) would show above this line in the traceback
        raise DatasetError(f"{head}; its label maps hold labels 0-{needed - 1}: --num_classes {needed} (or a 'labels' "
                           f"map naming {needed} classes, background first)" + (f"; other problems:{others}" if others else "")) from None  # fmt: skip
    raise DatasetError(f"{head}, and its label maps hold only background (0): label the structures to learn")


def run_label_names(checkpoint: str | os.PathLike, num_classes: int) -> list[str]:
    """Class names of the run that wrote ``checkpoint``: the ``labels`` of the datalist recorded in the run's
    ``training_cases.json`` (beside the checkpoint) when it names ``num_classes`` of them, else ``background``,
    ``class_1``, ... ``class_<num_classes - 1>``."""
    try:
        _, datalist = run_datalist("", "", Path(checkpoint).parent)
        if datalist.is_file():
            return label_names(datalist, num_classes)
    except (DatasetError, OSError, ValueError):
        pass
    return label_names(None, num_classes)


def resolve_num_classes(datalist: str | Path | None, num_classes: int | None = None) -> int:
    """The class count: ``num_classes`` when set (> 0), else the size of the datalist's ``labels`` map."""
    n = len(label_names(datalist, num_classes or None))
    if n < 2:
        raise DatasetError(f"need at least 2 classes (background and one structure), got {n}")
    return n


def log_classes(names: Sequence[str], datalist: str | Path) -> None:
    """Log (on rank 0) ``"14 classes of <datalist>: background, spleen, ..."``: the classes a run reads, the first
    :data:`SHOWN_CLASSES` named, then how many more."""
    if not is_main_process():  # every torchrun process reads them
        return
    shown = ", ".join(names[:SHOWN_CLASSES])
    more = f" and {len(names) - SHOWN_CLASSES} more" if len(names) > SHOWN_CLASSES else ""
    logger.info("%d classes of %s: %s%s", len(names), datalist, shown, more)


def training_class_names(
    datalist: str | Path, num_classes: int | None, cases: list[dict], workers: int = 0
) -> list[str]:
    """The classes a fine-tuning run trains on, logged (:func:`log_classes`): ``num_classes`` of them, or those the
    datalist's ``labels`` map names; a datalist naming none without ``num_classes`` stops the run with the count
    its label maps need (:func:`refuse_unnamed_classes`).

    Args:
        datalist: the run's Decathlon JSON.
        num_classes: the class count given (``None`` or 0: from the datalist's ``labels``).
        cases: the labelled cases the run reads (training and validation), read for the count when none is named.
        workers: pre-check processes of that reading.

    Returns:
        The class names in label order, background first.

    Raises:
        DatasetError: no class count given or named (with the count the label maps need), or a ``labels`` map
            that does not fit ``num_classes``.
    """
    if not num_classes and not names_classes(datalist):  # the count the label maps need, read by the pre-check
        refuse_unnamed_classes(datalist, cases, workers)
    names = label_names(datalist, num_classes or None)
    log_classes(names, datalist)
    return names


def warn_untrained_classes(names: Sequence[str], cases: Sequence[dict], label_fraction: float) -> list[str]:
    """Warn (rank 0) about the classes that no voxel of a labelled subset's training cases holds: with 1 % or 10 %
    of the cases, a class some cases lack (a removed gallbladder, say) can be in none of them, and the model then
    never sees it, so its Dice stays 0. A run on every case (``label_fraction`` 1), or on a subset of more than
    :data:`UNTRAINED_CHECK_MAX_CASES` cases, reads nothing here.

    Args:
        names: the class names in label order, background first.
        cases: the chosen training cases (``{"image", "label"}``), checked by the pre-check.
        label_fraction: the run's fraction of the training cases.

    Returns:
        The classes warned about, as ``"<value> (<name>)"``.
    """
    if float(label_fraction) >= 1.0 or len(cases) > UNTRAINED_CHECK_MAX_CASES or not is_main_process():
        return []
    counts = np.zeros(len(names), np.int64)
    for case in cases:  # plane by plane: no full-volume integer copy
        for plane in read_volume(case["label"], label=True).array:
            counts += np.bincount(plane.ravel().astype(np.intp), minlength=len(names))[: len(names)]
    absent = [f"{value} ({names[value]})" for value in range(1, len(names)) if counts[value] == 0]
    if absent:
        logger.warning("label_fraction %s: the %s chosen hold%s no voxel of class%s %s: the model cannot learn %s, "
                       "and %s Dice stays 0; choose other cases (--subset_seed) or a larger label_fraction",
                       label_fraction, plural(len(cases), "training case"), "s" if len(cases) == 1 else "",
                       "" if len(absent) == 1 else "es", ", ".join(absent), "it" if len(absent) == 1 else "them",
                       "its" if len(absent) == 1 else "their")  # fmt: skip
    return absent
