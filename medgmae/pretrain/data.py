"""Pre-training data: the items of a user's datalist / folder, or of phantom volumes generated on first use, checked
before training (the shared 3D data layer, :mod:`medgmae.data`, does the work)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from medgmae.data.datalist import resolve_datalist
from medgmae.data.precheck import check_datalist

__all__ = ["pretrain_datalist"]


def pretrain_datalist(
    dataset_dir: str | Path,
    work_dir: str | Path,
    num_phantoms: int = 4,
    phantom_seed: int = 0,
    phantom_shape: Sequence[int] | None = None,
    phantom_spacing: Sequence[float] | float | None = None,
    validate: bool = True,
    precheck_workers: int = 0,
    ledger_dir: str | Path | None = None,
) -> list[dict]:
    """The training items (``{"image": path[, "label": path]}``) for pre-training, every file checked.

    Args:
        dataset_dir: ``""`` (generate phantoms), a Decathlon-style ``dataset.json``, a folder holding one, or a
            folder of volumes (NIfTI, NRRD, MetaImage, DICOM series sub-folders).
        work_dir: phantoms are written to ``work_dir/phantom``.
        num_phantoms: phantom volumes to generate when ``dataset_dir`` is empty.
        phantom_seed: seed of the phantom generator.
        phantom_shape: phantom volume shape (the generator's default when ``None``).
        phantom_spacing: phantom voxel size in mm (the generator's default when ``None``).
        validate: run :func:`~medgmae.data.precheck.check_datalist` on every file (images, and labels when listed).
        precheck_workers: processes of the pre-check.
        ledger_dir: where the pre-check remembers the files that passed (the cache folder).

    Returns:
        Training and validation items together (pre-training uses no labels for supervision).

    Raises:
        FileNotFoundError: ``dataset_dir`` does not exist.
        DatasetError: the datalist is empty or invalid, or files are unusable (one message names them all).
    """
    items, source = resolve_datalist(dataset_dir, work_dir, phantom_cases=int(num_phantoms), phantom_seed=int(phantom_seed),
                                     phantom_shape=phantom_shape, phantom_spacing=phantom_spacing)  # fmt: skip
    if validate:
        check_datalist(items, label_key="label", workers=int(precheck_workers), ledger_dir=ledger_dir, source=str(source))
    return items
