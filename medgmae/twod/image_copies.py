"""Copies of one image in a classification dataset: byte-identical files under two classes, or in both splits.

A file copied into two class folders is one image with two labels: training pulls the model both ways on it, and
where one copy validates, the validation scores a label the training contradicts. A copy in training and one in
validation (the same class) is an image the model has seen counted as unseen, raising the validation accuracy.
:func:`warn_about_copies` names both kinds in a warning. Files are compared by their bytes (same size, then the
same SHA-256 of both ends, then of the whole), so only files that share their size with another are read, and only
those that also share their ends are read whole; the same picture saved again in another format or quality is not
found.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

from medgmae.data.fingerprint import file_sha256
from medgmae.words import plural

__all__ = ["same_content_groups", "warn_about_copies"]

logger = logging.getLogger("medgmae.gvit")

#: Groups of copies a warning names, the rest counted.
SHOWN = 5


#: Bytes read from each end of a file for its quick digest: a DICOM slice's header and pixels differ from the next
#: slice's within them, so only files that agree there (copies, mostly) are read whole.
_QUICK = 1 << 16


def _ends_digest(path: str) -> str:
    """SHA-256 of the file's first and last :data:`_QUICK` bytes (the whole file's: :func:`file_sha256`)."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        sha.update(f.read(_QUICK))
        f.seek(max(0, os.path.getsize(path) - _QUICK))
        sha.update(f.read(_QUICK))
    return sha.hexdigest()


def _grouped(paths: Iterable[str], key) -> list[list[str]]:
    """The groups of two or more ``paths`` of one ``key(path)`` (a path whose key cannot be read left out)."""
    groups: dict = defaultdict(list)
    for p in paths:
        try:
            groups[key(p)].append(p)
        except OSError:
            continue
    return [g for g in groups.values() if len(g) > 1]


def same_content_groups(paths: Iterable[str | os.PathLike]) -> list[list[str]]:
    """The groups of two or more of ``paths`` whose files hold the same bytes, each in the order given (a path
    given twice counts once; a file that cannot be read is left out: the image checks name it).

    Args:
        paths: image files.

    Returns:
        ``[[path, path, ...], ...]``, in the order of each group's first path.
    """
    unique = list(dict.fromkeys(str(p) for p in paths))
    out = []
    for same_size in _grouped(unique, os.path.getsize):
        for same_ends in _grouped(same_size, _ends_digest):
            out += _grouped(same_ends, file_sha256)
    order = {p: i for i, p in enumerate(unique)}
    return sorted(out, key=lambda g: order[g[0]])


def _shown(groups: Sequence[str], root: Path) -> str:
    more = f"; and {len(groups) - SHOWN} more" if len(groups) > SHOWN else ""
    return "; ".join(groups[:SHOWN]).replace(f"{root}{os.sep}", "") + more


def warn_about_copies(train: Sequence[dict], val: Sequence[dict], class_names: Sequence[str], source: str | os.PathLike) -> None:
    """Warn when byte-identical image files carry different labels, or sit in both training and validation.

    Args:
        train: ``[{"image": path, "label": int}]`` training items.
        val: validation items of the same form.
        class_names: class index -> name.
        source: the dataset (folder or CSV), named in the warnings; paths under its folder are shown relative to it.
    """
    split = {it["image"]: "train" for it in train} | {it["image"]: "val" for it in val}
    label = {it["image"]: class_names[it["label"]] for it in [*train, *val]}
    root = Path(source) if Path(source).is_dir() else Path(source).parent
    two_labels, both_splits = [], []
    for group in same_content_groups(split):
        shown = " = ".join(f"{p} ({label[p]}, {split[p]})" for p in group)
        if len({label[p] for p in group}) > 1:
            two_labels.append(shown)
        elif len({split[p] for p in group}) > 1:
            both_splits.append(shown)
    if two_labels:
        logger.warning("dataset %s: %s stored more than once under different classes (byte-identical files): %s; "
                       "the model is trained (and validated) on one image with two labels: keep each image in one "
                       "class", source, _images(len(two_labels)), _shown(two_labels, root))  # fmt: skip
    if both_splits:
        logger.warning("dataset %s: %s stored both in training and in validation (byte-identical files): %s; the "
                       "validation accuracy counts a copy of a training image as unseen: remove the copies", source,
                       _images(len(both_splits)), _shown(both_splits, root))  # fmt: skip


def _images(n: int) -> str:
    return f"{plural(n, 'image')} {'is' if n == 1 else 'are'}"
