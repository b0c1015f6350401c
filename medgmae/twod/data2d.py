"""2D training and evaluation data: slices of the toolkit's CT phantoms, or any folder of images.

* :func:`axial_slices` cuts axial slices (HU, organ labels, body mask) out of a phantom from
  :func:`medgmae.data.phantom.generate_phantom`, shown radiologically (patient's right on the image's left,
  anterior at the top), and :func:`window_to_image` windows one to ``[0, 1]`` at the model's size: the one
  phantom-slice generator of 2D GMAE (:func:`phantom_slices`) and GViT
  (:func:`medgmae.twod.phantom_task.write_phantom_slice_task`).
* :func:`image_folder_items` lists PNG/JPEG/NIfTI/DICOM files of a folder (recursively), with
  :func:`medgmae.twod.image_folders.listed_files` (re-exported here, with :func:`skipped_files_note` and
  :func:`no_images_message`).
* :class:`LoadImage2Dd` is the one loader of 2D image files, for 2D GMAE and GViT: a MONAI dictionary transform
  that reads a file with :func:`medgmae.twod.images.read_image` and brings it to the model's channels and size
  with :func:`medgmae.twod.images.to_model_input`.
* :func:`gmae2d_dataset` combines them with MONAI transforms into the pre-training dataset of the
  ``gmae2d_pretrain`` bundle.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any, Hashable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import CacheDataset, Dataset
from monai.transforms import Compose, EnsureTyped, MapTransform, RandFlipd, SelectItemsd

from medgmae.cli_types import as_path_text
from medgmae.data.datalist import DatasetError
from medgmae.words import plural
from medgmae.twod.image_folders import listed_files, no_images_message, skipped_files_note
from medgmae.twod.images import (
    holds_several_slices,
    is_windowed,
    read_image,
    to_model_input,
)
from medgmae.twod.windows import window_setting
from medgmae.twod.picture_range import warn_if_16bit_range_narrow

__all__ = [
    "gmae2d_data_settings",
    "axial_slices",
    "window_to_image",
    "phantom_slices",
    "image_folder_items",
    "LoadImage2Dd",
    "gmae2d_dataset",
    "DEFAULT_WINDOW",
    "edge_map",
    "log_intensity_scaling",
    "image_channels",
    "listed_files",
    "several_slices_notes",
    "skipped_files_note",
    "no_images_message",
]

logger = logging.getLogger("medgmae.twod")

#: Soft-tissue-and-air CT window (HU) of phantom slices when no ``window`` is given.
DEFAULT_WINDOW = (-350.0, 400.0)


def _nearest(arr: np.ndarray, size: Sequence[int]) -> np.ndarray:
    t = torch.as_tensor(np.ascontiguousarray(arr), dtype=torch.float32)[None, None]
    return F.interpolate(t, size=tuple(size), mode="nearest-exact")[0, 0].numpy()


def axial_slices(phantom, indices: Iterable[int] | None = None) -> Iterator[dict]:
    """Axial slices of a phantom, shown radiologically (rows anterior first, columns patient's right first).

    Args:
        phantom: a :class:`medgmae.data.phantom.Phantom` (RAS voxel order, the last axis inferior to superior).
        indices: slice indices along the last axis (default: all).

    Yields:
        ``{"slice": k, "hu": (H, W) float32, "label": (H, W) uint8, "body": (H, W) bool}`` at the phantom's
        resolution (``H`` = its A-P size, ``W`` its R-L size).
    """
    depth = phantom.image.shape[2]
    body = phantom.tissue > 0 if phantom.tissue is not None else phantom.image > -500
    for k in range(depth) if indices is None else indices:
        k = int(k)
        if not 0 <= k < depth:
            raise ValueError(f"slice {k} is outside the phantom's {depth} slices")
        yield {"slice": k, "hu": phantom.image[::-1, ::-1, k].T, "label": phantom.label[::-1, ::-1, k].T,
               "body": body[::-1, ::-1, k].T}  # fmt: skip


def window_to_image(hu: np.ndarray, window: Sequence[float], size: Sequence[int]) -> np.ndarray:
    """``(H, W)`` HU -> ``(h, w)`` float32 in ``[0, 1]``: ``window`` mapped to ``[0, 1]`` (clipped), then resized
    as every 2D input is (:func:`~medgmae.twod.images.to_model_input`: area when shrinking, bilinear otherwise)."""
    lo, hi = window_setting(window)
    img = np.clip((np.asarray(hu, dtype=np.float32) - lo) / (hi - lo), 0.0, 1.0)
    return to_model_input(img[None], 1, size)[0, 0].numpy()


def phantom_slices(
    num_cases: int = 4,
    slices_per_case: int = 8,
    image_size: Sequence[int] = (64, 64),
    seed: int = 0,
    volume_shape: Sequence[int] = (96, 96, 32),
    spacing: Sequence[float] = (2.0, 2.0, 5.0),
    window: Sequence[float] = DEFAULT_WINDOW,
    in_channels: int = 1,
) -> list[dict]:
    """Axial slices of phantom CT volumes with their labels.

    Args:
        num_cases: phantom volumes (seeds ``seed, seed + 1, ...``).
        slices_per_case: slices per volume, evenly spaced over its central 70 % craniocaudally.
        image_size: output ``(H, W)``.
        seed: first phantom seed.
        volume_shape: phantom ``(X, Y, Z)`` voxels.
        spacing: phantom voxel size (mm).
        window: HU mapped to ``[0, 1]`` (clipped).
        in_channels: 1, or 3 to repeat the grey channel.

    Returns:
        Dicts with ``image`` ``(C, H, W)`` float32 in ``[0, 1]``, ``label`` ``(1, H, W)`` uint8 organ ids
        (``medgmae.data.phantom.ORGAN_LABELS``), ``body`` ``(1, H, W)`` uint8 (1 inside the body), ``case`` and
        ``slice``.
    """
    from medgmae.data.phantom import generate_phantom

    if num_cases < 1 or slices_per_case < 1:
        raise ValueError(f"num_cases and slices_per_case must be >= 1, got {num_cases}, {slices_per_case}")
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
    size = tuple(int(s) for s in image_size)
    items = []
    for case in range(num_cases):
        ph = generate_phantom(int(seed) + case, shape=tuple(volume_shape), spacing=tuple(spacing))
        depth = ph.image.shape[2]
        ks = np.unique(np.linspace(0.15 * depth, 0.85 * depth - 1, slices_per_case).round().astype(int))
        for sl in axial_slices(ph, ks):
            img = window_to_image(sl["hu"], window, size)[None]
            label = _nearest(sl["label"].astype(np.float32), size).astype(np.uint8)[None]
            body = (_nearest(sl["body"].astype(np.float32), size) > 0.5).astype(np.uint8)[None]
            items.append({"image": np.repeat(img, in_channels, 0), "label": label, "body": body, "case": case, "slice": sl["slice"]})
    return items


def edge_map(label: np.ndarray) -> np.ndarray:
    """Boolean boundary pixels of a label map ``(H, W)``: where a pixel differs from its right or lower neighbour."""
    label = np.asarray(label)
    out = np.zeros(label.shape, dtype=bool)
    out[:, :-1] |= label[:, 1:] != label[:, :-1]
    out[:-1, :] |= label[1:, :] != label[:-1, :]
    return out


def image_folder_items(dataset_dir: str | os.PathLike, log: bool = True) -> list[dict]:
    """``[{"image": path}, ...]`` for every readable-looking image under ``dataset_dir`` (sorted, recursive).

    Each file gives one image: a 3D NIfTI volume its middle axial slice, a multi-frame DICOM its middle frame.
    With ``log``, how many files and volumes were found is logged, and the files left out that are not images
    (:func:`skipped_files_note`).

    Raises:
        DatasetError: the folder does not exist, or holds no PNG/JPEG/BMP/TIFF/NIfTI/DICOM file.
    """
    folder = Path(as_path_text(dataset_dir)).expanduser()
    if not folder.is_dir():
        raise DatasetError(f"dataset_dir not found or not a folder: {folder}")
    files, others = listed_files(folder)
    if not files:
        raise DatasetError(no_images_message(f"dataset_dir {folder}", others, folder))
    if log:
        note = "".join(f"; {n}" for n in several_slices_notes(files))
        logger.info("dataset_dir %s: %s -> %s (one per file%s)", folder, plural(len(files), "image file"),
                    plural(len(files), "training image"), note)  # fmt: skip
        skipped = skipped_files_note(others, folder)
        if skipped:
            logger.info("dataset_dir %s: %s", folder, skipped)
    return [{"image": str(p)} for p in files]


def several_slices_notes(paths: Iterable[str | os.PathLike]) -> list[str]:
    """What the 2D reader takes of the files among ``paths`` that hold several slices (from their headers): ``["2 of
    them 3D NIfTI volumes, each contributing its middle axial slice", "1 of them a multi-frame DICOM file,
    contributing its middle frame"]``, the parts that apply (none for pictures and single slices)."""
    several = [Path(p) for p in paths if holds_several_slices(p)]
    volumes = sum(p.name.lower().endswith((".nii", ".nii.gz")) for p in several)
    kinds = ((volumes, "3D NIfTI volume", "middle axial slice"),
             (len(several) - volumes, "multi-frame DICOM file", "middle frame"))  # fmt: skip
    return [f"{n} of them a {what}, contributing its {part}" if n == 1
            else f"{n} of them {what}s, each contributing its {part}" for n, what, part in kinds if n]  # fmt: skip


def gmae2d_data_settings(dataset_dir: str | os.PathLike | None, flip: bool, window: Any) -> dict:
    """The data settings a 2D GMAE model records (``extra["data"]`` of its files) and a resume must match:
    ``{"flip", "window"}``, ``window`` being the one the training images were mapped with (phantom slices: the
    setting, :data:`DEFAULT_WINDOW` without one), so that ``medgmae-2d`` maps a scan as the model saw its data.

    Args:
        dataset_dir: the bundle's ``dataset_dir`` (``""``/``None``: phantom slices).
        flip: the ``flip`` setting.
        window: the ``window`` setting (:func:`~medgmae.twod.windows.window_setting` reads it).

    Returns:
        ``{"flip": bool, "window": [low, high] or None}``.
    """
    used = window_setting(window)
    if not str(dataset_dir or "").strip():
        used = used or DEFAULT_WINDOW
    return {"flip": bool(flip), "window": None if used is None else [float(v) for v in used]}


def log_intensity_scaling(
    paths: Iterable[str | os.PathLike], window: Sequence[float] | None, where: str, scaling: bool = True
) -> None:
    """Log how the NIfTI/DICOM files among ``paths`` are brought to ``[0, 1]``: by the fixed ``window``, or, without
    one, each by its own DICOM window or 0.5/99.5 percentiles (then one HU reads differently between images: a
    warning suggests training's ``--window``; GViT evaluation logs its own lines instead, with ``scaling=False``:
    :func:`~medgmae.twod.windows.input_window`). Without any, a ``window`` given is said to map none of them. 16-bit PNG/TIFF
    files whose values span a narrow part of the 16-bit range (12-bit data, CT as HU + 1024) are named in a warning
    (:func:`~medgmae.twod.picture_range.warn_if_16bit_range_narrow`).

    Args:
        paths: the image files.
        window: the ``window`` setting, ``(low, high)`` or ``None``.
        where: the data's name in the message (e.g. the folder).
        scaling: ``False``: the 16-bit warning alone (the caller logs how the NIfTI/DICOM images are scaled).
    """
    paths = list(paths)
    warn_if_16bit_range_narrow(paths, where)
    if not scaling:
        return
    count = sum(is_windowed(p) for p in paths)
    if not count:
        if window is not None:
            logger.warning("%s holds no NIfTI/DICOM images: --window %g..%g maps none of its images (PNG/JPEG are "
                           "read as they are), though the model records it, and medgmae-2d or GViT inference and "
                           "evaluation apply it to NIfTI/DICOM inputs; leave --window out for a folder of pictures", where, *window)  # fmt: skip
        return
    if window is not None:
        logger.info("%s: %d NIfTI/DICOM images mapped from the window %g..%g to 0..1 (clipped)", where, count, *window)
    else:
        logger.warning(
            "%s: %d NIfTI/DICOM images are scaled each by its own DICOM window or 0.5/99.5 percentiles, so one HU "
            "reads differently between images; for CT give a fixed window in HU, e.g. --window \"[-1000, 1000]\"",
            where, count,
        )


def image_channels(paths: Iterable[str | os.PathLike], where: str) -> dict[str, int]:
    """Read every image once: ``{path: channels}``, or one ``ValueError`` naming every unreadable file (a folder's
    truncated PNG, a text file named ``.png``...), so that the user fixes them all at once.

    Args:
        paths: the image files.
        where: the data's name in the message (e.g. the folder).
    """
    channels, problems = {}, []
    for path in paths:
        try:
            channels[str(path)] = int(read_image(path).shape[0])
        except (OSError, ValueError) as e:
            problems.append(str(e))
    if problems:
        raise DatasetError(f"{plural(len(problems), 'unreadable image')} in {where}; fix or remove {'it' if len(problems) == 1 else 'them'}:\n  - " + "\n  - ".join(problems))
    return channels


class LoadImage2Dd(MapTransform):
    """Read 2D image files (PNG/JPEG/NIfTI slice/DICOM) into ``(C, H, W)`` float32 tensors in ``[0, 1]``.

    Entries that are already arrays/tensors are only brought to ``channels`` and ``image_size``.

    Args:
        keys: keys to load.
        image_size: output ``(H, W)``.
        channels: 1 or 3 (grey <-> RGB conversion as in :func:`~medgmae.twod.images.to_model_input`).
        window: intensity window ``(low, high)`` for NIfTI/DICOM, mapped to ``[0, 1]`` as
            :func:`~medgmae.twod.images.read_image` maps it (also ``medgmae-2d --window``); ``None``: each file's
            DICOM window or 0.5/99.5 percentiles. PNG/JPEG/BMP/TIFF are not windowed.
        allow_missing_keys: as in MONAI.
    """

    def __init__(
        self,
        keys,
        image_size: Sequence[int],
        channels: int = 1,
        window: Sequence[float] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_size = tuple(int(s) for s in image_size)
        self.channels, self.window = int(channels), window_setting(window)
        self.file_channels: Counter = Counter()  # the channels of the files read, before conversion

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            arr = read_image(value, window=self.window) if isinstance(value, (str, os.PathLike)) else value
            if isinstance(value, (str, os.PathLike)):
                self.file_channels[int(arr.shape[0])] += 1
            d[key] = to_model_input(arr, self.channels, self.image_size)[0]
        return d


def gmae2d_dataset(
    dataset_dir: str | os.PathLike | None = "",
    image_size: Sequence[int] = (64, 64),
    in_channels: int = 1,
    num_phantom_cases: int = 4,
    slices_per_case: int = 8,
    seed: int = 0,
    flip: bool = False,
    cache: bool = True,
    log: bool = True,
    window: Sequence[float] | None = None,
) -> Dataset:
    """The 2D GMAE pre-training dataset: ``{"image": (C, H, W)}`` items.

    Args:
        dataset_dir: an image folder, or ``""``/``None`` for phantom slices.
        image_size: ``(H, W)``.
        in_channels: 1 or 3.
        num_phantom_cases: phantom volumes when no folder is given.
        slices_per_case: slices per phantom volume.
        seed: first phantom seed.
        flip: random left-right flips (MONAI ``RandFlipd``, probability 0.5); off by default: left and right
            differ in medical images.
        cache: cache the deterministic part (MONAI ``CacheDataset``).
        log: log what an image folder holds (:func:`image_folder_items`) and how its NIfTI/DICOM files are scaled
            (:func:`log_intensity_scaling`).
        window: intensity window for NIfTI/DICOM files (see :class:`LoadImage2Dd`) and for phantom slices, which are
            generated in HU (:data:`DEFAULT_WINDOW` when ``None``), as the 3D bundles' HU window maps their phantoms.

    Returns:
        A MONAI dataset.
    """
    size = tuple(int(s) for s in image_size)
    window = window_setting(window)
    dataset_dir = as_path_text(dataset_dir)
    if dataset_dir:
        items = image_folder_items(dataset_dir, log)
        if log:
            log_intensity_scaling([it["image"] for it in items], window, f"dataset_dir {dataset_dir}")
    else:
        hu = window or DEFAULT_WINDOW
        if log and window is not None:
            logger.info("phantom slices mapped from the window %g..%g HU to 0..1 (clipped)", *hu)
        slices = phantom_slices(num_phantom_cases, slices_per_case, size, seed, window=hu, in_channels=in_channels)
        items = [{"image": it["image"]} for it in slices]
    load = LoadImage2Dd("image", size, in_channels, window)
    transforms = [
        load,
        SelectItemsd(keys="image"),
        EnsureTyped(keys="image", dtype=torch.float32, track_meta=False),
    ]
    if flip:
        transforms.append(RandFlipd(keys="image", prob=0.5, spatial_axis=1))
    pipeline = Compose(transforms)
    if not cache:
        return Dataset(items, pipeline)
    dataset = _cached_dataset(items, pipeline, dataset_dir)  # every file read now: their channels counted
    if log:
        _warn_if_channels_mixed(load.file_channels, dataset_dir, in_channels)
    return dataset


def _warn_if_channels_mixed(file_channels: Counter, dataset_dir: str, in_channels: int) -> None:
    """Warn once when the files read were grey and colour (``file_channels``: ``{channels: files}``)."""
    grey, colour = file_channels[1], sum(n for c, n in file_channels.items() if c > 1)
    if grey and colour:
        logger.warning("dataset_dir %s mixes grey and colour images (%d grey, %d colour): every image is converted to "
                       "%s (--in_channels %d)", dataset_dir, grey, colour, plural(in_channels, "channel"), in_channels)  # fmt: skip


def _cached_dataset(items: list[dict], pipeline: Compose, dataset_dir: str) -> CacheDataset:
    """A :class:`~monai.data.CacheDataset` of ``items`` through ``pipeline``, every item loaded now.

    The cache stops at the first file it cannot read; for an image folder (``dataset_dir`` not ``""``) the folder's
    files are then read again, so that one ``ValueError`` names every unreadable file (:func:`image_channels`).

    Raises:
        DatasetError: unreadable images of ``dataset_dir``, all named; otherwise the cache's own error.
    """
    try:
        return CacheDataset(items, pipeline, cache_rate=1.0, num_workers=0, progress=False)
    except Exception:
        if dataset_dir:  # read again only on failure
            image_channels([it["image"] for it in items], f"dataset_dir {dataset_dir}")
        raise
