"""The training / validation split of pre-training data.

Validation data is held out from training: extra phantom volumes when the toolkit generates its data, the
``validation`` list of a Decathlon datalist, or else a seeded random fraction of the user's volumes.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Sequence

from monai.data import load_decathlon_datalist

from medgmae.pretrain.data import _folder_datalist, _validate, phantom_dataset

__all__ = ["pretrain_split"]

logger = logging.getLogger("medgmae.pretrain")


def _load_list(json_path: Path, key: str) -> list[dict]:
    try:
        return load_decathlon_datalist(str(json_path), is_segmentation=True, data_list_key=key)
    except ValueError as e:
        if key != "training" and "not specified" in str(e):
            return []  # no such list
        raise ValueError(f"{json_path}: not a usable Decathlon-style datalist ({type(e).__name__}: {e})") from e
    except Exception as e:
        raise ValueError(f"{json_path}: not a usable Decathlon-style datalist ({type(e).__name__}: {e})") from e


def _fraction_split(items: list[dict], val_fraction: float, seed: int, source: str) -> tuple[list[dict], list[dict]]:
    if len(items) < 2 or val_fraction == 0:
        if len(items) < 2:
            logger.warning("%s: a single volume, nothing to hold out: validating on the training volume", source)
        return items, list(items)
    n_val = min(len(items) - 1, max(1, round(val_fraction * len(items))))
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_val])
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


def pretrain_split(
    dataset_dir: str | Path,
    work_dir: str | Path,
    num_phantoms: int = 8,
    num_val_phantoms: int = 1,
    val_fraction: float = 0.1,
    seed: int = 0,
    phantom_shape: Sequence[int] | None = None,
    phantom_spacing: Sequence[float] | float | None = None,
) -> dict[str, list[dict]]:
    """Training and validation items (``{"image": path[, "label": path]}``) for pre-training.

    Args:
        dataset_dir: ``""`` (generate phantoms), a Decathlon-style ``dataset.json``, a folder holding one, or a
            folder of volumes (NIfTI, NRRD, MHA, DICOM series sub-folders).
        work_dir: where phantoms are written (``work_dir/phantom``).
        num_phantoms: phantom training volumes when ``dataset_dir`` is empty.
        num_val_phantoms: further phantom volumes held out for validation (>= 1).
        val_fraction: fraction of the user's volumes held out when the datalist has no ``validation`` list (a
            folder of volumes, or a datalist with ``training`` only), drawn with ``seed``; in ``[0, 1)``. With 0, or
            a single volume, validation runs on the training volumes.
        seed: phantom generator seed and seed of the held-out draw.
        phantom_shape: phantom volume shape (the generator's default when ``None``).
        phantom_spacing: phantom voxel size in mm (the generator's default when ``None``).

    Returns:
        ``{"training": [...], "validation": [...]}``, both non-empty.

    Raises:
        FileNotFoundError: ``dataset_dir`` or a listed file does not exist (the message names it).
        ValueError: a bad argument, an unusable datalist or an empty one (the message names the file).
    """
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if int(num_val_phantoms) < 1:
        raise ValueError(f"num_val_phantoms must be >= 1, got {num_val_phantoms}")
    if str(dataset_dir).strip() == "":
        json_path = phantom_dataset(work_dir, int(num_phantoms), int(seed), phantom_shape, phantom_spacing,
                                    num_validation=int(num_val_phantoms))  # fmt: skip
    else:
        src = Path(dataset_dir).expanduser()
        if not src.exists():
            raise FileNotFoundError(f"dataset_dir does not exist: {src}")
        json_path = src if src.is_file() else src / "dataset.json"
    if json_path.is_file():
        train, val = _load_list(json_path, "training"), _load_list(json_path, "validation")
        source = json_path
    else:
        train, val, source = _folder_datalist(Path(dataset_dir)), [], Path(dataset_dir)
    if not train:
        raise ValueError(f"no training volumes found in {dataset_dir or json_path}: the datalist is empty")
    if not val:
        train, val = _fraction_split(train, float(val_fraction), int(seed), str(source))
    _validate(train + val, source)
    return {"training": train, "validation": val}
