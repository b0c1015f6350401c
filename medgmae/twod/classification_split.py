"""The training / validation split of a GViT classification dataset, and the record of it that ``model.pt`` keeps.

A dataset without a fixed split (class folders, a CSV without a ``split`` column) is split per class by a seeded
shuffle (:func:`stratified_split`). That split depends on the files present: images added to a class folder after
training would move some of training's images into validation, and an evaluation "on the recorded split" would
then score images the model was trained on. So training records each split's files (:func:`split_record`: paths
relative to the dataset's folder, so a dataset moved as a whole still matches) and evaluation keeps to that record
(:func:`apply_recorded_split`), naming what changed. The record is training's folder's: another folder (an external
test set whose file names may happen to match training's) is evaluated whole (:func:`evaluation_splits`).
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Mapping

from medgmae.words import plural

__all__ = ["stratified_split", "split_record", "apply_recorded_split", "evaluation_splits", "without_split_files"]

logger = logging.getLogger("medgmae.gvit")


def stratified_split(items: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Training and validation items, ``val_fraction`` of each class (rounded, at least one of a class with two
    or more images, never all of them) drawn by ``random.Random(seed)``.

    Args:
        items: ``{"image": path, "label": int}`` items.
        val_fraction: fraction of each class held out, in ``[0, 1)``.
        seed: seed of the shuffle.

    Returns:
        ``(train, val)``.
    """
    rng = random.Random(seed)
    train, val = [], []
    for label in sorted({it["label"] for it in items}):
        group = [it for it in items if it["label"] == label]
        rng.shuffle(group)
        n_val = int(round(len(group) * val_fraction)) if len(group) > 1 else 0
        n_val = min(max(n_val, 1 if len(group) > 1 and val_fraction > 0 else 0), len(group) - 1)
        val += group[:n_val]
        train += group[n_val:]
    return train, val


def _root(source: str | os.PathLike) -> Path:
    """The folder split records are relative to: the dataset folder, or a CSV list's folder."""
    path = Path(source).resolve()
    return path if path.is_dir() else path.parent


def _relative(item: Mapping, root: Path) -> str:
    return os.path.relpath(Path(item["image"]).resolve(), root).replace(os.sep, "/")


def split_record(train: list[dict], val: list[dict], source: str | os.PathLike) -> dict:
    """``{"train": [...], "val": [...]}``: each split's image paths relative to the dataset's folder, sorted.

    Args:
        train, val: the split's items.
        source: the dataset folder or CSV file (``ClassificationData.source``).
    """
    root = _root(source)
    return {"train": sorted(_relative(it, root) for it in train), "val": sorted(_relative(it, root) for it in val)}


def apply_recorded_split(
    train: list[dict], val: list[dict], recorded: Mapping | None, source: str | os.PathLike
) -> tuple[list[dict], list[dict]]:
    """The dataset's items in training's split, as ``recorded`` by :func:`split_record`.

    Unchanged data keep their split. When images were added or removed since training, every image training saw
    stays in its split and the added ones are in neither (a warning gives the numbers); a dataset holding none of
    training's images (another dataset) keeps the split given, with a warning.

    Args:
        train, val: the items as the seed splits them now.
        recorded: training's record; None (a model file of an earlier version): ``train`` and ``val`` as given.
        source: the dataset folder or CSV file.

    Returns:
        ``(train, val)``.
    """
    if not recorded:
        return train, val
    saved = {k: set(recorded.get(k) or ()) for k in ("train", "val")}
    root = _root(source)
    now = {"train": {_relative(it, root): it for it in train}, "val": {_relative(it, root): it for it in val}}
    if {k: set(v) for k, v in now.items()} == saved:
        return train, val
    where, trained_or_validated = {**now["train"], **now["val"]}, saved["train"] | saved["val"]
    known = [rel for rel in where if rel in trained_or_validated]
    if not known:
        logger.warning("dataset %s holds none of the images training's split recorded: it is split by the seed, and "
                       "these are not the images the model was trained or validated on", source)  # fmt: skip
        return train, val
    added, missing = len(where) - len(known), len(trained_or_validated) - len(known)
    train = [it for rel, it in where.items() if rel in saved["train"]]
    val = [it for rel, it in where.items() if rel in saved["val"]]
    logger.warning("dataset %s has changed since training (%s added, %d missing%s): the seeded split drawn now "
                   "differs from training's, so training's split is kept as its model file records it (%d training, "
                   "%s here)%s", source, plural(added, "image"), missing,
                   "" if added or missing else "; classes changed", len(train), plural(len(val), "validation image"),
                   "; the added images are in neither split (--split all evaluates them)" if added else "")  # fmt: skip
    return train, val


def _trained_folder(recorded: Mapping) -> str:
    """The folder (or CSV) ``recorded`` data settings name: ``dataset_dir``, or the phantom task's ``default_root``."""
    return str(recorded.get("dataset_dir") or recorded.get("default_root") or "")


def evaluation_splits(data, recorded: Mapping | None, keep_recorded: bool) -> dict[str, list[dict]]:
    """The images each evaluation split means: ``{"train": [...], "val": [...], "all": [...]}``, ``"all"`` being
    every image of the dataset.

    With ``keep_recorded`` (training's seed and fraction, a seeded split), the dataset of the folder the model was
    trained on (its resolved path as ``model.pt`` records it), or of a folder holding every image of training's record
    (the dataset moved or copied as a whole), is split as training recorded it (:func:`apply_recorded_split`).
    Another folder (an external test set) is not: each split is every one of its images, said in one logged line.

    Args:
        data: the :class:`~medgmae.twod.classification_data.ClassificationData` evaluated (its ``settings`` as
            :func:`~medgmae.twod.classification_data.resolve_classification_data` sets them).
        recorded: the model's recorded data settings (None for a model file that records none).
        keep_recorded: training's split is to be kept where it applies.
    """
    everything = data.train + data.val
    splits = {"train": data.train, "val": data.val, "all": everything}
    files = (recorded or {}).get("split_files")
    if not keep_recorded or not files:
        return splits
    trained, now = _trained_folder(recorded), _trained_folder(data.settings)
    if trained and now and trained != now:
        root = _root(data.source)
        present = {_relative(it, root) for it in everything}
        if not set(files.get("train") or ()) | set(files.get("val") or ()) <= present:
            logger.info("dataset %s is not the folder the model was trained on (%s) and does not hold all of its "
                        "images: training's split does not apply, every one of its %s is evaluated", data.source,
                        trained, plural(len(everything), "image"))  # fmt: skip
            return {key: everything for key in splits}
    splits["train"], splits["val"] = apply_recorded_split(data.train, data.val, files, data.source)
    return splits


def without_split_files(settings: Mapping | None) -> dict | None:
    """Data settings without the split's file lists, as ``metrics.json`` and the resume check show them (the
    training files themselves are compared by a :class:`~medgmae.engine.records.CasesRecord`)."""
    return None if settings is None else {k: v for k, v in settings.items() if k != "split_files"}
