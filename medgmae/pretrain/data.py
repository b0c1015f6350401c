"""Where pre-training data comes from: a user's datalist / folder, or phantom volumes generated on first use."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.distributed as dist
from monai.data import load_decathlon_datalist
from monai.transforms import MapTransform

__all__ = ["pretrain_datalist", "phantom_dataset", "CheckVolumed", "VOLUME_SUFFIXES"]

logger = logging.getLogger("medgmae.pretrain")

#: File endings taken as volumes when ``dataset_dir`` is a plain folder.
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")


def _dist_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def phantom_dataset(
    work_dir: str | Path,
    num_cases: int,
    seed: int = 0,
    shape: Sequence[int] | None = None,
    spacing: Sequence[float] | float | None = None,
    num_validation: int = 0,
) -> Path:
    """Generate (once) phantom CT volumes under ``work_dir/phantom`` and return their dataset.json.

    ``num_cases`` volumes make the ``training`` list and ``num_validation`` further ones the ``validation`` list
    (the training cases do not depend on ``num_validation``). Under torch.distributed only rank 0 writes; the
    others wait at a barrier.
    """
    if num_cases < 1:
        raise ValueError(f"num_phantoms must be >= 1, got {num_cases}")
    if num_validation < 0:
        raise ValueError(f"num_val_phantoms must be >= 0, got {num_validation}")
    from medgmae.data.phantom import write_phantom_dataset

    out = Path(work_dir) / "phantom"
    json_path = out / "dataset.json"
    if _dist_rank() == 0:
        kwargs: dict = {} if shape is None else {"shape": tuple(int(s) for s in shape)}
        if spacing is not None:
            kwargs["spacing"] = spacing
        if not json_path.is_file():
            logger.info("no dataset_dir given: writing %d + %d phantom volumes (training + validation) to %s",
                        num_cases, num_validation, out)  # fmt: skip
        # returns at once when the dataset.json there was written with the same parameters
        json_path = Path(write_phantom_dataset(out, num_cases + num_validation, seed=seed, num_validation=num_validation, **kwargs))
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    return json_path


def _folder_datalist(folder: Path) -> list[dict]:
    items = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES))
    dicom_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and any(p.glob("*.dcm")))
    return [{"image": str(p)} for p in items + dicom_dirs]


def pretrain_datalist(
    dataset_dir: str | Path,
    work_dir: str | Path,
    num_phantoms: int = 4,
    phantom_seed: int = 0,
    phantom_shape: Sequence[int] | None = None,
    phantom_spacing: Sequence[float] | float | None = None,
    validate: bool = True,
) -> list[dict]:
    """The training items (``{"image": path[, "label": path]}``) for pre-training.

    Args:
        dataset_dir: ``""`` (generate phantoms), a Decathlon-style ``dataset.json``, a folder holding one, or a
            folder of volumes (NIfTI, NRRD, MHA, DICOM series sub-folders).
        work_dir: where phantoms are written.
        num_phantoms: phantom volumes to generate when ``dataset_dir`` is empty.
        phantom_seed: seed of the phantom generator.
        phantom_shape: phantom volume shape (the generator's default when ``None``).
        phantom_spacing: phantom voxel size in mm (the generator's default when ``None``).
        validate: check that every listed file exists.

    Returns:
        Training and validation items together (pre-training uses no labels for supervision).

    Raises:
        FileNotFoundError: ``dataset_dir`` does not exist.
        ValueError: the datalist is empty or an image is unusable (the message names the file).
    """
    if str(dataset_dir).strip() == "":
        json_path = phantom_dataset(work_dir, num_phantoms, phantom_seed, phantom_shape, phantom_spacing)
    else:
        src = Path(dataset_dir).expanduser()
        if not src.exists():
            raise FileNotFoundError(f"dataset_dir does not exist: {src}")
        json_path = src if src.is_file() else src / "dataset.json"
    if json_path.is_file():
        try:
            items = load_decathlon_datalist(str(json_path), is_segmentation=True, data_list_key="training")
        except Exception as e:
            raise ValueError(f"{json_path}: not a usable Decathlon-style datalist ({type(e).__name__}: {e})") from e
        try:
            items += load_decathlon_datalist(str(json_path), is_segmentation=True, data_list_key="validation")
        except ValueError:
            pass  # no validation list
    else:
        items = _folder_datalist(Path(dataset_dir))
    if not items:
        raise ValueError(f"no training volumes found in {dataset_dir or json_path}: the datalist is empty")
    if validate:
        _validate(items, json_path if json_path.is_file() else Path(dataset_dir))
    return items


def _validate(items: list[dict], source: Path) -> None:
    """Every listed file must exist (contents are checked by :class:`CheckVolumed` while the data is cached)."""
    for item in items:
        for key in ("image", "label"):
            if key in item and not Path(item[key]).exists():
                raise FileNotFoundError(f"{source}: {key} listed in the datalist does not exist: {item[key]}")


class CheckVolumed(MapTransform):
    """Stop with the file's name when a loaded image is not a finite single-channel 3D volume.

    Placed right after ``LoadImaged`` / ``EnsureChannelFirstd``, it runs while the dataset is cached, i.e. before
    training starts.

    Args:
        keys: keys of the images to check.
    """

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            meta = getattr(img, "meta", {}) or {}
            name = meta.get("filename_or_obj", key)
            shape = tuple(img.shape)
            if len(shape) != 4 or shape[0] != 1:
                raise ValueError(f"{name}: expected a single-channel 3D volume, got an array of shape {shape[1:]} "
                                 f"with {shape[0]} channel(s) (2D and 4D images are not supported)")
            t = img.as_tensor() if hasattr(img, "as_tensor") else torch.as_tensor(img)
            if not torch.isfinite(t).all():
                raise ValueError(f"{name}: the volume contains NaN or infinite voxels")
        return d
