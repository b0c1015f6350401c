"""Image-classification data for GViT: image folders, CSV lists and the generated phantom-slice task.

Accepted inputs (``dataset`` argument of :func:`load_classification_data`):

* a folder with one sub-folder per class (``root/<class>/<image>``), split into training and validation
  stratified by class; or a folder holding ``train/`` and ``val/`` folders of that form (kept as given);
* a CSV file of ``path,label`` rows (an optional ``path,label`` header; paths relative to the CSV's folder);
  an optional third column ``split`` with ``train`` / ``val`` fixes the split.

Images are any file :func:`medgmae.twod.images.read_image` reads (PNG / JPEG / BMP / TIFF, 8 or 16 bit, grey or
colour; a NIfTI slice; DICOM), loaded by the same :class:`~medgmae.twod.data2d.LoadImage2Dd` as 2D GMAE's
images: scaled to ``[0, 1]`` and brought to the model's channels and square size. Problems (missing or empty folders, a single class,
unreadable images, malformed CSV rows, an image in two CSV rows) raise ``ValueError`` naming the file and the problem.

Without a dataset, :func:`resolve_classification_data` writes (or reuses) the default task of
:mod:`medgmae.twod.phantom_task`: axial phantom slices labelled by the organ that covers most of each.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from monai.data import CacheDataset
from monai.transforms import Compose, CopyItemsd, EnsureTyped

from medgmae.cli_types import as_path_text
from medgmae.data.datalist import DatasetError
from medgmae.twod.classification_csv import csv_split, indexed_classes, read_csv_list, warn_if_classes_differ_in_case
from medgmae.twod.classification_split import split_record, stratified_split
from medgmae.twod.data2d import LoadImage2Dd, image_channels, listed_files, log_intensity_scaling, no_images_message, skipped_files_note
from medgmae.twod.gvit_augment import gvit_augmentation
from medgmae.twod.image_copies import warn_about_copies
from medgmae.twod.images import IMAGE_SUFFIXES, read_image
from medgmae.twod.phantom_task import TASK_WINDOW, check_phantom_task_resume, write_phantom_slice_task
from medgmae.twod.windows import window_setting
from medgmae.words import label_text, plural, plural_noun

__all__ = [
    "ClassificationData",
    "scan_image_folder",
    "read_csv_list",
    "load_classification_data",
    "make_dataset",
    "resolve_classification_data",
]

logger = logging.getLogger("medgmae.gvit")


@dataclass
class ClassificationData:
    """A resolved classification dataset.

    Attributes:
        train: ``[{"image": path, "label": int}]`` training items.
        val: validation items of the same form.
        class_names: class index -> name.
        channels: 1 or 3: 3 when any image of the dataset is colour (or the model's, given to
            :func:`load_classification_data`).
        source: the dataset folder or CSV.
        counts: images per class and split.
        seeded_split: the split was drawn by the seed (class folders, a CSV without a ``split`` column), not fixed
            by the dataset (``train/`` and ``val/`` folders, a ``split`` column).
        settings: how the data were chosen (set by :func:`resolve_classification_data`): ``dataset_dir`` (absolute,
            ``""`` for the phantom task), ``default_root``, ``num_phantoms``, ``seed``, ``val_fraction``,
            ``image_size``, and for a seeded split ``split_files`` (each split's images:
            :func:`~medgmae.twod.classification_split.split_record`); saved in GViT's ``model.pt`` so that evaluation
            finds the same data in the same split.
    """

    train: list[dict]
    val: list[dict]
    class_names: list[str]
    channels: int = 1
    source: str = ""
    counts: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    seeded_split: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def scan_image_folder(root: str | Path, known: Sequence[str] | None = None) -> tuple[list[dict], list[str]]:
    """Items and class names of a folder with one sub-folder of images per class (sorted by name; a model's ``known``
    classes, in its order, for its evaluation: :func:`~medgmae.twod.classification_csv.indexed_classes`); a class folder's
    images are found in its sub-folders too (``root/<class>/<patient>/<image>``, as torchvision's ``ImageFolder``
    finds them). The files of the folder and its class folders that are not images (a ``README.txt``) are left out,
    in one logged line.

    Raises:
        DatasetError: ``root`` is missing, has fewer than two class folders (training) or one the model does not
            know, or a class folder holds no images (the files it holds named:
            :func:`~medgmae.twod.data2d.skipped_files_note`).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    classes = _class_folders(root)
    loose_images, others = listed_files(root, recursive=False)  # others: named with the class folders' below
    if not classes:
        loose = len(loose_images)
        other = sum(1 for p in root.iterdir() if not p.name.startswith("."))
        what = (f"holds {plural(loose, 'image')} but no class sub-folders" if loose
                else f"holds no class sub-folders and no images ({plural(other, 'other file')})" if other else "is empty")  # fmt: skip
        raise DatasetError(f"dataset folder {root} {what}: expected one sub-folder of images per class (root/<class>/<image>)")
    # NFC names, one class per name (a folder copied from macOS, NFD, beside one named on Linux, NFC: one class)
    names = indexed_classes(list(dict.fromkeys(label_text(c) for c in classes)), f"dataset folder {root}", known)
    warn_if_classes_differ_in_case(names, f"dataset folder {root}", "class folders")
    indices = [names.index(label_text(c)) for c in classes]
    items, empty, empty_left_out = [], [], []
    for idx, name in zip(indices, classes):
        files, left_out = listed_files(root / name)  # with its sub-folders (one per patient, say)
        others += left_out
        empty += [] if files else [str(root / name)]
        empty_left_out += [] if files else left_out
        items += [{"image": str(f), "label": idx} for f in files]
    if empty:  # every one named at once, with what they hold
        several = len(empty) > 1
        raise DatasetError(no_images_message(f"class folder{'s' if several else ''} {', '.join(empty)}", empty_left_out, root,
                                           "hold" if several else "holds"))  # fmt: skip
    skipped = skipped_files_note(others, root)
    if skipped:
        logger.info("dataset folder %s: %s", root, skipped)
    return items, names


def _class_folders(root: Path) -> list[str]:
    """The names of ``root``'s class folders (sub-folders not hidden), sorted by their class name."""
    return sorted((p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=label_text)


def _check_split_classes(path: Path, known: Sequence[str] | None) -> None:
    """For training (``known`` None, not a model's evaluation, which may read a part of its classes), refuse
    ``path/train`` and ``path/val`` of different class folders (by class name), naming both sets."""
    if known is not None:
        return
    names = [list(dict.fromkeys(map(label_text, _class_folders(path / s)))) for s in ("train", "val")]
    if names[0] != names[1]:
        raise DatasetError(f"dataset {path}: train/ has classes {names[0]} but val/ has {names[1]} (val/ must hold "
                           "every class of train/, and no other)")  # fmt: skip


#: Names of a dataset's split folders (any case), which are no class names.
_SPLIT_NAMES = ("train", "training", "val", "valid", "validation", "test", "testing")


def _split_folders(root: Path) -> list[Path]:
    """The sub-folders of ``root`` named as a split (:data:`_SPLIT_NAMES`), sorted; none when it is no folder."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.lower() in _SPLIT_NAMES)


def load_classification_data(
    dataset: str | Path,
    val_fraction: float = 0.2,
    seed: int = 0,
    check_images: bool = True,
    channels: int | None = None,
    class_names: Sequence[str] | None = None,
) -> ClassificationData:
    """Resolve a dataset folder or CSV into training and validation items.

    Args:
        dataset: class-folder root, a root with ``train/`` and ``val/`` class folders, or a CSV file.
        val_fraction: fraction of each class held out for validation when the split is not given.
        seed: seed of the stratified split.
        check_images: decode every image once now, so that a corrupt file fails before training.
        channels: the channel count every image is converted to, a trained model's (evaluation); ``None``: the
            dataset's (training): 3 when any of its images is colour, whatever the split (and so the seed).
        class_names: a trained model's classes (its evaluation): the dataset's labels are mapped onto its class
            indices by name, and may be a part of them (one class, even); ``None``: the dataset's own (training),
            two at least.

    Returns:
        :class:`ClassificationData`.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or None, got {channels}")
    path = Path(as_path_text(dataset)).expanduser()
    if path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES):
        raise DatasetError(f"dataset {path} is an image: give the dataset's folder (class folders, or train/ and val/ "
                         "holding them) or a CSV file of path,label rows")  # fmt: skip
    if path.suffix.lower() == ".csv" or path.is_file():
        train, val, classes, seeded = csv_split(path, val_fraction, seed, class_names)
    elif (path / "train").is_dir() and (path / "val").is_dir():
        others = [p.name + "/" for p in _split_folders(path) if p.name not in ("train", "val")]
        if others:
            logger.info("dataset %s: %s left out (training and its evaluation read train/ and val/)", path, ", ".join(others))
        _check_split_classes(path, class_names)  # before either is read: val/ of one class is no 1-class dataset
        train, classes = scan_image_folder(path / "train", class_names)
        val, _ = scan_image_folder(path / "val", class_names)  # the same classes (an evaluation's: the model's)
        seeded = False
    else:
        splits = [p.name + "/" for p in _split_folders(path)]
        if splits:  # read as classes, they would make a task of telling the splits apart
            raise DatasetError(f"dataset folder {path} holds split folders ({', '.join(splits)}), not class folders: give "
                             "train/ and val/ folders of class folders (a test/ beside them is left out), or one folder "
                             "of class folders")  # fmt: skip
        items, classes = scan_image_folder(path, class_names)
        train, val = stratified_split(items, val_fraction, seed)
        seeded = True
    if not train:
        raise DatasetError(f"dataset {path}: no training images after the split")
    found = image_channels([it["image"] for it in train + val], f"dataset {path}") if check_images else {}
    used = channels or _dataset_channels(train + val, found)
    whose = "the model's" if channels else "colour, as the dataset holds colour images"
    _warn_if_channels_mixed(train + val, found, classes, used, path, whose)
    counts = {"train": dict(Counter(classes[it["label"]] for it in train)), "val": dict(Counter(classes[it["label"]] for it in val))}
    return ClassificationData(train, val, list(classes), int(used), str(path), counts, seeded_split=seeded)


def _dataset_channels(items: list[dict], found: dict) -> int:
    """The channels a model trained on ``items`` takes, whatever the split (so whatever the seed): 3 when any image
    is colour, else 1 (``found``: each image's channels; without them, the first image by path's)."""
    if found:
        return 3 if max(found.values()) > 1 else 1
    return 3 if read_image(min(it["image"] for it in items)).shape[0] > 1 else 1


def _warn_if_channels_mixed(
    items: list[dict], channels: dict, classes: Sequence[str], used: int, path, whose: str
) -> None:
    """Warn when the images have different channel counts (grey and colour): all are converted to ``used`` channels
    (``whose``: colour, as some are, or the model's), and when classes differ in it the model can learn the
    colour instead of the content."""
    per_class: dict = {}
    for it in items:
        if it["image"] in channels:
            per_class.setdefault(classes[it["label"]], Counter())[channels[it["image"]]] += 1
    if len({c for counter in per_class.values() for c in counter}) < 2:
        return
    shown = "; ".join(f"{name}: " + ", ".join(f"{n} of {c} channel{'s' if c > 1 else ''}" for c, n in sorted(counter.items()))
                      for name, counter in per_class.items())  # fmt: skip
    logger.warning("dataset %s mixes grey and colour images (%s): every image is converted to %d channel%s (%s); where "
                   "classes differ in this, the model can learn the colour, not the content",
                   path, shown, used, "s" if used > 1 else "", whose)  # fmt: skip


def make_dataset(
    items: list[dict],
    image_size: int | Sequence[int],
    channels: int,
    cache: bool = True,
    window: Sequence[float] | None = None,
    augment: bool = False,
) -> CacheDataset:
    """A MONAI :class:`~monai.data.CacheDataset` of ``{"image": (C, H, W) in [0, 1], "label": long, "path": str}``.

    Images are read and resized by :class:`~medgmae.twod.data2d.LoadImage2Dd` (all cached when ``cache``); with
    ``augment`` each is then flipped and cropped at random, anew on every read
    (:func:`~medgmae.twod.gvit_augment.gvit_augmentation`).

    Args:
        items: ``[{"image": path, "label": int}]``.
        image_size: ``(H, W)`` or an int.
        channels: 1 (colour images to ITU-R 601 luma) or 3 (grey replicated).
        cache: cache every loaded image.
        window: intensity window ``(low, high)`` of NIfTI/DICOM files (e.g. HU), as ``medgmae-2d --window`` maps
            it; ``None``: each file's DICOM window or 0.5/99.5 percentiles. PNG/JPEG/BMP/TIFF are not windowed.
        augment: the paper's augmentation of training images (the bundle's ``augment``); never for validation.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
    transform = Compose([
        CopyItemsd(keys="image", names="path"),
        LoadImage2Dd("image", size, channels, window),
        EnsureTyped(keys="label", dtype=torch.long, track_meta=False),
        *gvit_augmentation(bool(augment), size),
    ])  # fmt: skip
    return CacheDataset(items, transform=transform, cache_rate=1.0 if cache else 0.0, num_workers=0, progress=False)


def _classes_have(names: Sequence[str]) -> tuple[str, str, str]:
    """``("class", "'a'", "has")`` or ``("classes", "'a', 'b'", "have")``: a warning's words for classes."""
    one = len(names) == 1
    return ("class" if one else plural_noun("class")), ", ".join(map(repr, names)), ("has" if one else "have")


def resolve_classification_data(
    dataset_dir: str | Path | None,
    default_root: str | Path,
    image_size: int = 32,
    seed: int = 0,
    val_fraction: float = 0.2,
    num_cases: int = 10,
    window: Sequence[float] | None = None,
    channels: int | None = None,
    class_names: Sequence[str] | None = None,
    resume_dir: str | Path | None = None,
    scaling_logged: bool = False,
) -> ClassificationData:
    """``dataset_dir`` (folder or CSV) loaded by :func:`load_classification_data`; when it is empty or None,
    the default phantom-slice task written to (or reused from) ``default_root``; with ``resume_dir`` (the GViT run a
    resume continues), a task there of other settings is refused before it is replaced
    (:func:`~medgmae.twod.phantom_task.check_phantom_task_resume`).

    ``window`` (the NIfTI/DICOM intensity window, see :func:`make_dataset`) is recorded in the settings when given
    (for the default task, the window its PNGs were written at, :data:`~medgmae.twod.phantom_task.TASK_WINDOW`, so
    that a model trained on it maps NIfTI/DICOM inputs as its slices were); how the NIfTI/DICOM images are scaled is
    logged (:func:`~medgmae.twod.data2d.log_intensity_scaling`; ``scaling_logged``: by the caller). A class without
    validation images is named in a warning. ``channels`` and ``class_names``: as :func:`load_classification_data`'s
    (an evaluated model's; its classes without images here are named in one logged line). Copies are warned about."""
    window = window_setting(window)
    dataset_dir = as_path_text(dataset_dir)
    phantom = dataset_dir is None or str(dataset_dir).strip() == ""
    if phantom:
        logger.info("no dataset_dir given: using the generated phantom-slice task in %s", default_root)
        if resume_dir is not None:
            check_phantom_task_resume(default_root, resume_dir, num_cases, seed, image_size)
        dataset_dir = write_phantom_slice_task(default_root, num_cases=num_cases, seed=seed, image_size=image_size)
    data = load_classification_data(dataset_dir, val_fraction=val_fraction, seed=seed, channels=channels,
                                    class_names=class_names)
    data.settings = {"dataset_dir": "" if phantom else str(Path(dataset_dir).expanduser().resolve()),
                     "default_root": str(Path(default_root).resolve()) if phantom else "",
                     "num_phantoms": int(num_cases), "seed": int(seed), "val_fraction": float(val_fraction),
                     "image_size": int(image_size)}  # fmt: skip
    if data.seeded_split:  # a split the dataset fixes cannot move training images into val: nothing to keep
        data.settings["split_files"] = split_record(data.train, data.val, data.source)
    if phantom:  # its PNGs were written at the task's window, whatever the setting (which maps NIfTI/DICOM files)
        if window is not None and tuple(window) != TASK_WINDOW:
            logger.warning("window %g..%g maps NIfTI/DICOM images, and the default task holds PNGs written at %g..%g HU: "
                           "the model records the task's window", *window, *TASK_WINDOW)  # fmt: skip
        window = TASK_WINDOW
    if window is not None:
        data.settings["window"] = [float(v) for v in window]
    logger.info("dataset %s: classes %s, %s", data.source, data.class_names, data.counts)
    absent = [name for name in data.class_names if not data.counts["train"].get(name) and not data.counts["val"].get(name)]
    if absent:  # a test set of a part of the model's classes
        logger.info("dataset %s holds no images of the model's %s %s: %s accuracy is n/a", data.source,
                    *_classes_have(absent)[:2], "its" if len(absent) == 1 else "their")  # fmt: skip
    unvalidated = [name for name in data.class_names if name not in absent and not data.counts["val"].get(name)]
    if data.val and unvalidated:
        logger.warning("dataset %s: %s %s %s no validation image (too few images to hold one out): the "
                       "validation accuracy does not cover them", data.source, *_classes_have(unvalidated))  # fmt: skip
    if not phantom:
        log_intensity_scaling([it["image"] for it in data.train + data.val], window, f"dataset {data.source}", scaling=not scaling_logged)
        warn_about_copies(data.train, data.val, data.class_names, data.source)
    return data
