"""Pre-training data: the training / validation split of a user's datalist or folder, or of phantom volumes
generated on first use, every file checked before training (the shared 3D data layer, :mod:`medgmae.data`, does
the reading and checking).

Validation data is held out from training: extra phantom volumes when the toolkit generates its data, the
``validation`` list of a Decathlon datalist, or else a seeded random fraction of the user's volumes.

A refused resume writes nothing: the bundle resolves the split with ``validate=False`` (a resume with other phantom
settings is refused here, before phantoms are generated again), checks the resume
(:func:`medgmae.engine.check_resume_fits`), and only then runs the pre-check (:func:`check_pretrain_split`), which
writes its ledger into the cache folder.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Sequence

from medgmae.data.datalist import read_datalist, warn_if_lists_overlap
from medgmae.data.sources import datalist_base, resolve_datalist
from medgmae.distributed import is_main_process, warn_if_sampler_repeats
from medgmae.data.phantom.writer import damaged_cases
from medgmae.engine.restore import ResumeRefused
from medgmae.engine.resume import latest_checkpoint, phantom_resume_differences
from medgmae.data.precheck import check_datalist
from medgmae.words import plural

__all__ = ["pretrain_split", "check_pretrain_split", "held_out_count"]

#: The pre-training settings behind each recorded phantom generator parameter, as a refused resume names them.
_PHANTOM_FLAGS = {"num_cases": "num_phantoms + num_val_phantoms", "num_validation": "num_val_phantoms",
                  "shape": "phantom_shape", "spacing": "phantom_spacing", "seed": "seed"}  # fmt: skip

logger = logging.getLogger("medgmae.mae_training")


def held_out_count(val_fraction: float, n: int) -> int:
    """How many of ``n`` volumes (``n >= 2``) a ``val_fraction > 0`` holds out: ``round(val_fraction * n)`` (Python's
    rounding: an exact half goes to the even number), at least 1 and at most ``n - 1``, so that at least one volume
    validates and one trains (0.1 of 2 volumes holds out 1, 0.1 of 25 holds out 2, 0.9 of 3 holds out 2)."""
    return min(n - 1, max(1, round(val_fraction * n)))


def _fraction_split(items: list[dict], val_fraction: float, seed: int, source: str) -> tuple[list[dict], list[dict]]:
    """``(training, validation)``: :func:`held_out_count` of ``items`` held out by a ``seed``-ed draw, the split
    warned about when it is far from ``val_fraction`` (:func:`_warn_if_split_surprises`); with ``val_fraction`` 0 or
    a single item, validation runs on the training items."""
    if len(items) < 2 or val_fraction == 0:
        if len(items) < 2 and is_main_process():
            logger.warning("%s: a single volume, nothing to hold out: validating on the training volume", source)
        return items, list(items)
    n_val = held_out_count(val_fraction, len(items))
    _warn_if_split_surprises(val_fraction, len(items), n_val, source)
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_val])
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


def _warn_if_split_surprises(val_fraction: float, n: int, n_val: int, source: str) -> None:
    """Warn (rank 0) when ``n_val`` of ``n`` volumes is far from ``val_fraction`` (off by more than half of it: 0.1
    of 2 volumes validates on 1, half of them) or leaves a single volume to train on."""
    share = n_val / n
    far, one_left = abs(share - val_fraction) > 0.5 * val_fraction, n - n_val == 1
    if not (far or one_left) or not is_main_process():
        return
    what = [f"{n_val} of {n} volumes ({100 * share:.3g} %) validate, not {100 * val_fraction:.3g} %"] if far else []
    what += ["a single volume is left to train on"] if one_left else []
    logger.warning(
        "%s: val_fraction %s of %d volumes is %.3g volumes, held out as %d (rounded, at least 1 and at most %d): %s; "
        "add volumes, give a datalist with a 'validation' list, or set val_fraction 0 to validate on the training "
        "volumes", source, val_fraction, n, val_fraction * n, n_val, n - 1, " and ".join(what),
    )  # fmt: skip


def _check_phantom_resume(work_dir: Path, num_cases: int, num_validation: int, seed: int, shape, spacing) -> None:
    """Refuse, before any phantom is written again, a resume whose phantom settings differ from those of the
    phantoms in ``work_dir/phantom`` (the interrupted run's data), or whose phantom files are damaged (cut short:
    named, with the way on, rather than refused later as other data); nothing to check without a checkpoint."""
    diff = phantom_resume_differences(work_dir, num_cases, seed, shape, spacing, num_validation, labels=_PHANTOM_FLAGS)
    if diff:
        raise ResumeRefused(
            f"the checkpoint in {work_dir} was trained on phantoms generated with other settings (" + "; ".join(diff)
            + "). Resume with the interrupted run's phantom settings or train into a new output_dir"
        )
    damaged = damaged_cases(work_dir / "phantom") if latest_checkpoint(work_dir) is not None else []
    if damaged:
        them = "it" if len(damaged) == 1 else "them"
        raise ResumeRefused(
            f"{plural(len(damaged), 'phantom file')} the checkpoint in {work_dir} trained on "
            f"{'is' if len(damaged) == 1 else 'are'} damaged: " + "; ".join(damaged)
            + f". Delete {them} and resume again: the run generates {them} again, the same as before"
        )


def _training_items(
    dataset_dir: str | Path,
    work_dir: str | Path,
    datalist: str | Path,
    resume: bool,
    num_phantoms: int,
    num_val_phantoms: int,
    seed: int,
    phantom_shape: Sequence[int] | None,
    phantom_spacing: Sequence[float] | float | None,
) -> tuple[list[dict], Path]:
    """The training items and their source: the user's datalist or folder, or phantoms generated on first use.

    Args:
        dataset_dir: as :func:`pretrain_split`'s.
        work_dir: where phantoms are written (``work_dir/phantom``).
        datalist: as :func:`pretrain_split`'s.
        resume: the run resumes: phantoms generated with other settings are refused before being written again.
        num_phantoms: phantom training volumes.
        num_val_phantoms: further phantom volumes held out for validation.
        seed: phantom generator seed.
        phantom_shape: phantom volume shape (the generator's default when ``None``).
        phantom_spacing: phantom voxel size in mm (the generator's default when ``None``).

    Returns:
        ``(training items, source)``, the source being the datalist file or the folder.
    """
    if resume and not str(datalist).strip() and not str(dataset_dir).strip():
        _check_phantom_resume(Path(work_dir), num_phantoms + num_val_phantoms, num_val_phantoms, seed, phantom_shape,
                              phantom_spacing)  # fmt: skip
    return resolve_datalist(
        dataset_dir, work_dir, keys=("training",), phantom_cases=num_phantoms + num_val_phantoms,
        phantom_validation=num_val_phantoms, phantom_seed=seed, phantom_shape=phantom_shape,
        phantom_spacing=phantom_spacing, datalist=datalist,
    )  # fmt: skip


def _validation_items(
    train: list[dict], source: Path, base: Path | None, val_fraction: float, seed: int
) -> tuple[list[dict], list[dict], str]:
    """The validation items: the datalist's ``validation`` list, or else a seeded fraction held out of ``train``.

    Args:
        train: the training items.
        source: the datalist file or folder they come from.
        base: the folder the datalist's relative paths resolve against (:func:`~medgmae.data.sources.datalist_base`).
        val_fraction: fraction held out when the datalist has no ``validation`` list.
        seed: seed of the held-out draw.

    Returns:
        ``(training, validation, how)``: the training items left, the validation items, and how the validation
        items were chosen, in words.
    """
    val = read_datalist(source, "validation", data_dir=base, required=False) if source.is_file() else []
    how = "the datalist's 'validation' list"
    if not val:
        train, val = _fraction_split(train, float(val_fraction), seed, str(source))
        if val == train:
            how = "the training volumes"
        else:
            names = ", ".join(str(it["image"]) for it in val[:3]) + (f" and {len(val) - 3} more" if len(val) > 3 else "")
            how = f"{len(val)} held out at random (val_fraction {val_fraction}): {names}"
    return train, val, how


def _report_split(train: list[dict], val: list[dict], source: Path, how: str) -> None:
    """Log the split and warn about training and validation items in common, or items the distributed sampler repeats
    (:func:`~medgmae.distributed.warn_if_sampler_repeats`).

    Args:
        train: the training items.
        val: the validation items.
        source: the datalist file or folder they come from.
        how: how the validation items were chosen (:func:`_validation_items`).
    """
    if is_main_process():
        logger.info("data: %d training and %d validation volumes from %s (validation: %s)", len(train), len(val),
                    source, how)  # fmt: skip
        if how != "the training volumes":  # val_fraction 0 validates on the training volumes on purpose
            warn_if_lists_overlap(train, val, source)
    warn_if_sampler_repeats(len(train), "volume")


def pretrain_split(
    dataset_dir: str | Path,
    work_dir: str | Path,
    num_phantoms: int = 8,
    num_val_phantoms: int = 1,
    val_fraction: float = 0.1,
    seed: int = 0,
    phantom_shape: Sequence[int] | None = None,
    phantom_spacing: Sequence[float] | float | None = None,
    validate: bool = True,
    precheck_workers: int = 0,
    ledger_dir: str | Path | None = None,
    datalist: str | Path = "",
    resume: bool = False,
) -> dict:
    """Training and validation items (``{"image": path[, "label": path]}``) for pre-training, every file checked.

    Args:
        dataset_dir: ``""`` (generate phantoms), a Decathlon-style ``dataset.json``, a folder holding one, or a
            folder of volumes (NIfTI, NRRD, MetaImage, DICOM series sub-folders); with ``datalist``, the folder the
            datalist's relative paths resolve against (``""``: the datalist's folder).
        work_dir: where phantoms are written (``work_dir/phantom``).
        num_phantoms: phantom training volumes when ``dataset_dir`` is empty.
        num_val_phantoms: further phantom volumes held out for validation (>= 1).
        val_fraction: fraction of the user's volumes held out when the datalist has no ``validation`` list (a
            folder of volumes, or a datalist with ``training`` only), drawn with ``seed``; in ``[0, 1)``. Of ``n``
            volumes :func:`held_out_count` (rounded, 1 to ``n - 1``), warned about when far from ``val_fraction``
            or leaving one training volume. With 0, or a single volume, validation runs on the training volumes.
        seed: phantom generator seed and seed of the held-out draw.
        phantom_shape: phantom volume shape (the generator's default when ``None``).
        phantom_spacing: phantom voxel size in mm (the generator's default when ``None``).
        validate: run :func:`~medgmae.data.precheck.check_datalist` on every file (images, and labels when listed).
        precheck_workers: processes of the pre-check.
        ledger_dir: where the pre-check remembers the files that passed (the cache folder).
        datalist: a Decathlon datalist JSON, as fine-tuning's ``datalist`` (``""``: the data come from
            ``dataset_dir`` alone).
        resume: the run resumes a checkpoint in ``work_dir``: phantoms generated there with other settings are a
            refusal (a ``ResumeRefused``, a ``ValueError``, naming them) instead of being generated again, and
            damaged phantom files one naming them.

    Returns:
        ``{"training": [...], "validation": [...], "source": datalist or folder}``, both lists non-empty.

    Raises:
        FileNotFoundError: ``dataset_dir`` does not exist.
        ValueError: a bad argument; ``DatasetError`` (a ``ValueError``) for an empty or invalid datalist or unusable
            files (one message names them all).
    """
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if int(num_val_phantoms) < 1:
        raise ValueError(f"num_val_phantoms must be >= 1, got {num_val_phantoms}")
    train, source = _training_items(dataset_dir, work_dir, datalist, resume, int(num_phantoms), int(num_val_phantoms),
                                    int(seed), phantom_shape, phantom_spacing)  # fmt: skip
    train, val, how = _validation_items(train, source, datalist_base(dataset_dir, datalist), val_fraction, int(seed))
    _report_split(train, val, source, how)
    split = {"training": train, "validation": val, "source": str(source)}
    if validate:
        check_pretrain_split(split, precheck_workers, ledger_dir)
    return split


def check_pretrain_split(split: dict, precheck_workers: int = 0, ledger_dir: str | Path | None = None) -> dict:
    """Run the pre-check (:func:`~medgmae.data.precheck.check_datalist`) on every file of a split, once each.

    Args:
        split: what :func:`pretrain_split` returned.
        precheck_workers: processes of the pre-check.
        ledger_dir: where the pre-check remembers the files that passed (the cache folder; written only when
            every file passed).

    Returns:
        ``split``, so that the call can sit inside a bundle config expression.

    Raises:
        DatasetError: unusable files (one message names them all).
    """
    unique = list({item["image"]: item for item in split["training"] + split["validation"]}.values())
    labelled = sum("label" in item for item in unique)
    if 0 < labelled < len(unique) and is_main_process():  # the crops are then drawn without them (the bundle's has_labels): not read
        logger.info("%d of the %s have a label map: crops are drawn over each volume's foreground box, without the "
                    "label maps, which are not read", labelled, plural(len(unique), "volume"))  # fmt: skip
    check_datalist(unique, label_key="label" if labelled == len(unique) else None, workers=int(precheck_workers),
                   ledger_dir=ledger_dir, source=split.get("source", ""))  # fmt: skip
    return split
