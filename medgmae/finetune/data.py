"""Segmentation data for UNETR fine-tuning: the cases of a run (its label subset, checked) and of an evaluation.

Datalists, phantom data and the pre-check of every case come from the shared 3D data layer (:mod:`medgmae.data`).
Datalists are Decathlon-style JSON files (``training`` / ``validation`` / ``test`` lists of ``{"image", "label"}``
paths relative to the datalist's folder or to ``data_dir``) with a ``labels`` map ``{"0": "background", ...}``,
as distributed for BTCV (14 classes) and AMOS CT (16 classes). The run's pre-processing is in
:mod:`medgmae.finetune.spec`, its transforms in :mod:`medgmae.finetune.transforms`.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from medgmae.data.datalist import DatasetError, read_datalist, warn_if_lists_overlap
from medgmae.data.precheck import check_datalist
from medgmae.distributed import is_main_process, warn_if_sampler_repeats
from medgmae.finetune.classes import label_names, training_class_names, warn_untrained_classes
from medgmae.finetune.run_record import (
    case_record, check_resume_matches, run_datalist, training_datalist, write_run_record,
)  # fmt: skip
from medgmae.words import plural

__all__ = [
    "select_label_fraction",
    "check_cases",
    "prepare_datalists",
    "evaluation_cases",
]

logger = logging.getLogger(__name__)


def select_label_fraction(
    cases: Sequence[dict], fraction: float, seed: int = 0, output_dir: str | Path | None = None
) -> list[dict]:
    """A deterministic subset of the training cases: ``max(1, floor(fraction * n + 0.5))`` of them.

    One seeded permutation orders the cases, and each fraction takes its head, so for a fixed seed the subsets are
    nested (the 1 % cases are inside the 10 % cases). The chosen list is written to
    ``output_dir/training_cases.json``.

    Args:
        cases: training cases.
        fraction: in ``(0, 1]``.
        seed: permutation seed.
        output_dir: folder for ``training_cases.json`` (not written when ``None``).

    Returns:
        the chosen cases in their original order.
    """
    if not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"label_fraction must be in (0, 1], got {fraction}")
    if not cases:
        raise DatasetError("no training cases to choose from")
    n = max(1, math.floor(float(fraction) * len(cases) + 0.5 + 1e-9))  # half up: 10 % of 25 cases is 3, as one reads it
    order = np.random.default_rng(seed).permutation(len(cases))
    chosen = [cases[i] for i in sorted(order[:n].tolist())]
    if output_dir is not None:
        write_run_record(output_dir, case_record(fraction, seed, len(cases), chosen))
    share = n / len(cases)
    if not is_main_process():  # every torchrun process chooses the same cases; rank 0 says which
        return chosen
    if abs(share - float(fraction)) > 0.5 * float(fraction):  # e.g. "1 %" of 4 cases: one case, 25 % of the labels
        logger.warning("label_fraction %s of %d training cases is %.3g cases, rounded to %d: this run trains on %.3g %% "
                       "of the labelled cases, not %.3g %% (at least one case is always used)", fraction, len(cases),
                       float(fraction) * len(cases), n, 100 * share, 100 * float(fraction))  # fmt: skip
    else:  # 1 is every case: the papers' "1 %" is 0.01, said where it could be meant
        every = " (every one: 1 % of the labels is label_fraction 0.01)" if n == len(cases) > 1 and float(fraction) == 1 else ""
        logger.info("label_fraction %s: %d of %d training cases%s", fraction, n, len(cases), every)
    return chosen


def check_cases(
    cases: Sequence[dict], num_classes: int, workers: int = 0, source: str = "", ledger_dir: str | Path | None = None,
    pending_ledger: list[Callable[[], None]] | None = None,
) -> list[dict]:
    """The fine-tuning pre-check: every case has an image and a label that read, with the same shape and affine,
    finite voxels and labels in ``[0, num_classes)``; one :class:`DatasetError` lists every unusable file
    (``ledger_dir``, ``pending_ledger``: :func:`~medgmae.data.precheck.check_datalist`'s).

    Returns:
        ``cases`` unchanged (so that the call can sit inside a bundle config).
    """
    return check_datalist(cases, label_key="label", num_classes=num_classes, require_label=True, workers=workers,
                    ledger_dir=ledger_dir, source=source, pending_ledger=pending_ledger)  # fmt: skip


def _check_labelled(datalist: str | Path, lists: dict[str, list[dict]]) -> None:
    """Raise one :class:`DatasetError` naming each case without a ``label``, and the datalist list it is in."""
    missing = [f"{case['image']} (in '{key}')" for key, cases in lists.items() for case in cases if "label" not in case]
    if missing:
        shown = "\n  - ".join(missing[:20]) + (f"\n  - and {len(missing) - 20} more" if len(missing) > 20 else "")
        lists = "lists" if len(missing) == 1 else "list"
        raise DatasetError(f"datalist {datalist}: fine-tuning trains and validates on labelled cases, but "
                           f"{plural(len(missing), 'case')} {lists} no 'label' (images without labels belong in its 'test' list, which "
                           f"inference reads):\n  - {shown}")  # fmt: skip


def _choose_cases(
    datalist: str | Path, dataset_dir: str | Path, label_fraction: float, seed: int
) -> tuple[list[dict], list[dict], list[dict]]:
    """Read the datalist's training and validation lists and choose the labelled subset to train on.

    Args:
        datalist: Decathlon JSON.
        dataset_dir: folder its relative paths resolve against.
        label_fraction: fraction of training cases with labels used.
        seed: subset seed.

    Returns:
        ``(training, chosen, validation)``: every training case, the chosen ones, and the validation cases; the
        chosen and validation cases are warned about when they overlap and checked to be labelled.
    """
    training = read_datalist(datalist, "training", dataset_dir)
    validation = read_datalist(datalist, "validation", dataset_dir)
    chosen = select_label_fraction(training, label_fraction, seed)
    if is_main_process():  # the cases this run trains on, not every case of the training list
        warn_if_lists_overlap(chosen, validation, datalist)
    warn_if_sampler_repeats(len(chosen), "case")
    _check_labelled(datalist, {"training": chosen, "validation": validation})
    return training, chosen, validation


def prepare_datalists(
    dataset_dir: str | Path, datalist: str | Path, output_dir: str | Path, label_fraction: float = 1.0, seed: int = 0,
    num_classes: int | None = None, phantom_cases: int = 6, phantom_shape: Sequence[int] | None = None,
    phantom_spacing: Sequence[float] | None = None, precheck_workers: int = 0, ledger_dir: str | Path | None = None,
    resume: bool = False, subset_seed: int | None = None,
) -> dict:
    """The data of a fine-tuning run: its cases (phantom data without a dataset), labelled subset and checks.

    Args:
        dataset_dir: folder with the images (``""``: the datalist's folder, or, without a datalist, phantom data).
        datalist: Decathlon JSON (``""``: ``dataset_dir/dataset.json``); relative paths resolve against its folder.
        output_dir: run folder (phantom data go to ``output_dir/phantom``; a resume's record is read there).
        label_fraction, seed: the fraction of training cases with labels used, and the subset's seed.
        num_classes: class count (``None`` or 0: from the datalist's ``labels``).
        phantom_cases, phantom_shape, phantom_spacing: the phantom data made without a dataset: cases (training and
            validation), volume shape and voxel size in mm (``None``: the generator's default).
        precheck_workers: processes of the pre-check.
        ledger_dir: where the pre-check remembers the files that passed (the cache folder; ``None``: nowhere).
        resume: the run resumes: its recorded cases (``training_cases.json``) must be the ones chosen now.
        subset_seed: the seed of the labelled subset and of the phantom data (``None``: ``seed``), so that runs
            with several ``seed`` values train on the same 1 % / 10 % cases; recorded as the record's ``seed``.

    Returns:
        ``{"datalist", "num_classes", "label_names", "training", "validation", "record", "pending_ledger"}``: checked
        case lists, the run's record (``training_cases.json``: :func:`~medgmae.finetune.run_record.case_record`) and a
        resume's rewrite of the pre-check's ledger. These two are not written here: the bundle writes them once the
        resume check of its checkpoint (:func:`medgmae.engine.check_resume_fits`) has passed, so that a refused resume
        leaves the run folder as it was.

    Raises:
        DatasetError: unusable data (every problem listed), or a resumed run whose cases differ from the record.
    """
    seed = int(seed if subset_seed is None else subset_seed)  # the data's seed; training's own seed is MONAI's
    dataset_dir, datalist, source = training_datalist(dataset_dir, datalist, output_dir, phantom_cases, seed,
                                                      phantom_shape, phantom_spacing, resume)  # fmt: skip
    training, chosen, validation = _choose_cases(datalist, dataset_dir, label_fraction, seed)
    names = training_class_names(datalist, num_classes, chosen + validation, precheck_workers)
    record = case_record(label_fraction, seed, len(training), chosen, source)
    if resume:
        check_resume_matches(output_dir, record)
    pending = [] if resume else None
    check_cases(chosen + validation, len(names), precheck_workers, str(datalist), ledger_dir, pending)
    warn_untrained_classes(names, chosen, label_fraction)
    return {"datalist": str(datalist), "num_classes": len(names), "label_names": names, "training": chosen,
            "validation": validation, "record": record, "pending_ledger": pending or []}  # fmt: skip


def evaluation_cases(
    dataset_dir: str | Path, datalist: str | Path, output_dir: str | Path, key: str = "validation",
    num_classes: int | None = None,
    network: Any = None,
    checkpoint: str | Path = "the model",
) -> dict:
    """Cases to evaluate, each checked with its label: list ``key`` of the datalist; when both ``dataset_dir`` and ``datalist`` are
    empty, of the data the run in ``output_dir`` was trained on (its ``training_cases.json``; the run's phantom
    datalist for a phantom run).

    Args:
        dataset_dir: image folder (``""``: the run's, see above).
        datalist: Decathlon JSON (``""``: ``dataset_dir/dataset.json``).
        output_dir: the training run's folder.
        key: datalist list to read.
        num_classes: class count (``None`` or 0: from the datalist).
        network: the model evaluated: one predicting another number of classes is refused before any file is read
            (:func:`~medgmae.finetune.evaluate.check_num_classes`; its labels would otherwise all be out of range).
        checkpoint: the model's file, as that error names it.

    Returns:
        ``{"datalist", "num_classes", "label_names", "cases"}``.
    """
    from medgmae.finetune.evaluate import check_num_classes

    dataset_dir, datalist = run_datalist(dataset_dir, datalist, output_dir)
    if not datalist.is_file() and not dataset_dir:
        raise DatasetError(f"no datalist given and no phantom datalist at {datalist}: run training first or set datalist")
    names = label_names(datalist, num_classes or None)
    cases = read_datalist(datalist, key, dataset_dir or None)
    if network is not None:
        check_num_classes(network, len(names), f"{checkpoint}", names)
    if cases and not any(c.get("label") for c in cases):  # e.g. a Decathlon 'test' list: images only
        raise DatasetError(f"the '{key}' list of {datalist} has no labels to score against (evaluation compares with "
                           f"reference labels): segment its images with the inference config instead (run inferring "
                           f"--data_key {key}, as the bundle's README shows)")  # fmt: skip
    check_cases(cases, len(names), source=str(datalist))
    return {"datalist": str(datalist), "num_classes": len(names), "label_names": names, "cases": cases}
