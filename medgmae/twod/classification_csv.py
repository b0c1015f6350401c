"""GViT's CSV lists of images: ``path,label[,split]`` rows read into items and class names.

The layout (:func:`read_csv_list`): an optional ``path,label`` header (``path,label,split`` with a third column);
paths relative to the CSV's folder (a path written on Windows, ``normal\\im0.png``, is
found as ``normal/im0.png``); an optional third column ``split`` with ``train`` / ``val`` that fixes the
split (:func:`csv_split`). Every bad row is named in one error, by its line. :func:`indexed_classes` gives the
class indices, shared with the class-folder reading of :mod:`medgmae.twod.classification_data`: for training the
labels found (two at least), for a model's evaluation the model's classes (a part of them may be present).
"""

from __future__ import annotations

import codecs
import csv
import io
import logging
import re
from pathlib import Path
from typing import Sequence

from medgmae.data.datalist import DatasetError, listed_path
from medgmae.files import absolute_path
from medgmae.twod.classification_split import stratified_split
from medgmae.words import label_text

__all__ = ["read_csv_list", "csv_split", "require_classes", "indexed_classes", "warn_if_classes_differ_in_case"]

logger = logging.getLogger("medgmae.gvit")


def require_classes(class_names: Sequence[str], where: str) -> None:
    """Refuse fewer than two classes (training needs two to tell apart).

    Args:
        class_names: the dataset's classes.
        where: the dataset, as the message names it (``CSV file <path>``).

    Raises:
        DatasetError: fewer than two classes.
    """
    if len(class_names) < 2:
        found = f"only class {list(class_names)}" if class_names else "no classes"
        raise DatasetError(f"{where}: classification needs at least 2 classes, found {found}")


def indexed_classes(found: Sequence[str], where: str, known: Sequence[str] | None = None) -> list[str]:
    """The class names, by class index, of a dataset whose labels are ``found``.

    For training (``known`` None) they are ``found`` itself, which must hold two classes at least. For a trained
    model's evaluation they are the model's ``known`` classes, in its order: the dataset may hold a part of them
    (one class, even), but no label the model does not know.

    Args:
        found: the dataset's labels, sorted.
        where: the dataset, as the message names it (``CSV file <path>``).
        known: the model's class names (class index -> name), or None.

    Returns:
        The class names by index.

    Raises:
        DatasetError: fewer than two classes for training, or labels the model does not know, named.
    """
    if known is None:
        require_classes(found, where)
        return list(found)
    known = [label_text(k) for k in known]
    unknown = [c for c in found if c not in known]
    if unknown:
        one = len(unknown) == 1
        raise DatasetError(f"{where} has {'class' if one else 'classes'} {', '.join(map(repr, unknown))}, which the model "
                           f"does not know: it was trained on classes {known}")  # fmt: skip
    return known


def _without_header(rows: list[tuple[int, list[str]]], csv_path: Path) -> list[tuple[int, list[str]]]:
    """``rows`` without the header line ``path,label[,split]``; a first line of other column names (``file,class``,
    ``path,label,patient``) is refused, naming them (it was read as an image, or its third column as every row's
    split)."""
    names = [c.strip().lower() for c in rows[0][1]] if rows else []
    if names[:2] == ["path", "label"] and names[2:] in ([], ["split"]):
        return rows[1:]
    words = len(rows) > 1 and all(re.fullmatch(r"[a-z][a-z _-]*", n) for n in names)
    if words and not (csv_path.parent / rows[0][1][0].strip()).is_file():  # an absolute path stays itself
        raise DatasetError(f"CSV file {csv_path}, line 1 reads as a header ({','.join(rows[0][1])}): a header must be "
                           "path,label or path,label,split (split: train or val), or left out")  # fmt: skip
    return rows


def _csv_text(csv_path: Path) -> str:
    """The text of a CSV file read as UTF-8 (a byte-order mark dropped).

    Raises:
        DatasetError: it is not UTF-8 (saved as Latin-1 or Windows-1252, say), naming the line of the first byte
            that is not and asking for UTF-8.
    """
    data = csv_path.read_bytes()
    body = data[len(codecs.BOM_UTF8) :] if data.startswith(codecs.BOM_UTF8) else data
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as e:
        line = body.count(b"\n", 0, e.start) + 1
        raise DatasetError(f"CSV file {csv_path}, line {line}: byte 0x{body[e.start]:02x} is not UTF-8 text (the file "
                           "is in another encoding, Latin-1 or Windows-1252, say): save it as UTF-8") from e
def read_csv_list(csv_path: str | Path, known: Sequence[str] | None = None) -> tuple[list[dict], list[str]]:
    """Items and class names of a ``path,label[,split]`` CSV; classes sorted by name, or a model's ``known`` ones
    (:func:`indexed_classes`).

    Raises:
        DatasetError: a missing or empty file, a row without both fields, an unknown split, a listed image that
            does not exist or is listed twice, fewer than two classes (training), or a label not ``known``.
    """
    csv_path = Path(csv_path).expanduser()
    if not csv_path.is_file():
        raise DatasetError(f"CSV file not found: {csv_path}")
    text = _csv_text(csv_path)
    try:
        rows = [(i + 1, r) for i, r in enumerate(csv.reader(io.StringIO(text, newline=""))) if r and any(c.strip() for c in r)]
    except csv.Error as e:
        raise DatasetError(f"CSV file {csv_path} cannot be parsed: {e}") from e
    rows = _without_header(rows, csv_path)
    if not rows:
        raise DatasetError(f"CSV file {csv_path} lists no images: expected rows of path,label")
    parsed, problems = [], []
    for line, r in rows:  # every bad row named in one error
        if len(r) not in (2, 3) or not r[0].strip() or not r[1].strip():
            problems.append(f"line {line}: expected 'path,label' or 'path,label,split', got {r}")
            continue
        split = r[2].strip().lower() if len(r) == 3 else ""
        if split not in ("", "train", "val"):
            problems.append(f"line {line}: split must be 'train' or 'val', got {r[2]!r}")
            continue
        path = Path(listed_path(csv_path.parent, r[0].strip()))  # Windows backslashes read as separators
        if not path.is_file():
            problems.append(f"line {line}: image not found: {path}")
            continue
        parsed.append((str(path), label_text(r[1]), split, line))
    problems += _listed_twice(parsed)
    if problems:
        more = f"; and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise DatasetError(f"CSV file {csv_path}, " + "; ".join(problems[:10]) + more)
    classes = sorted({label for _, label, _, _ in parsed})
    warn_if_classes_differ_in_case(classes, f"CSV file {csv_path}", "labels")
    classes = indexed_classes(classes, f"CSV file {csv_path}", known)
    index = {c: i for i, c in enumerate(classes)}
    return [{"image": p, "label": index[c], **({"split": s} if s else {})} for p, c, s, _ in parsed], classes


def warn_if_classes_differ_in_case(classes: Sequence[str], source: str, what: str) -> None:
    """Warn when class names differ only in case (``Liver``, ``liver``): each is a class of its own, which is
    seldom meant (a typo splits a class in two).

    Args:
        classes: the class names.
        source: where they come from, as the warning names it (``"CSV file labels.csv"``).
        what: what they are there (``"labels"``, ``"class folders"``).
    """
    folded: dict[str, list[str]] = {}
    for name in classes:
        folded.setdefault(name.casefold(), []).append(name)
    alike = [" / ".join(map(repr, names)) for names in folded.values() if len(names) > 1]
    if alike:
        logger.warning("%s: %s that differ only in case are classes of their own: %s; write each class one way if "
                       "they are one", source, what, "; ".join(alike))  # fmt: skip


def _listed_twice(parsed: Sequence[tuple[str, str, str, int]]) -> list[str]:
    """One problem per image that rows of ``parsed`` (``(path, label, split, line)``) list more than once, naming its
    lines (``a.png`` and ``./a.png`` are one file, compared by :func:`~medgmae.files.absolute_path` as
    :func:`~medgmae.files.given_more_than_once` compares inference inputs): such an image would count twice, could
    be in both splits, or carry two labels."""
    lines: dict[str, list[str]] = {}
    for p, _, _, line in parsed:
        lines.setdefault(str(absolute_path(p)), []).append(str(line))
    return [f"lines {', '.join(n)}: image listed more than once (give each image one row): {p}"
            for p, n in lines.items() if len(n) > 1]  # fmt: skip


def csv_split(
    path: Path, val_fraction: float, seed: int, known: Sequence[str] | None = None
) -> tuple[list[dict], list[dict], list[str], bool]:
    """The training and validation items of a CSV file of ``path,label[,split]`` rows (:func:`read_csv_list`):
    by its ``split`` column where it has one (rows without a split train), else a stratified split drawn with
    ``val_fraction`` and ``seed``; ``known``: a model's classes (:func:`indexed_classes`).

    Returns:
        ``(train, val, classes, seeded)``, ``seeded`` telling whether the split was drawn; the items keep no
        ``split`` entry.
    """
    items, classes = read_csv_list(path, known)
    seeded = not any("split" in it for it in items)
    if not seeded:
        train = [it for it in items if it.get("split", "train") == "train"]
        val = [it for it in items if it.get("split") == "val"]
    else:
        train, val = stratified_split(items, val_fraction, seed)
    for it in items:
        it.pop("split", None)
    return train, val, classes, seeded
