"""How ``medgmae-datalist`` (:mod:`medgmae.data.decathlon`) pairs the images of ``imagesTr/`` with the label maps of
``labelsTr/`` (and, in AMOS's layout, those of ``imagesVa/`` with ``labelsVa/``).

* By case name: ``imagesTr/<case>.nii.gz`` (or nnU-Net's single channel ``<case>_0000.nii.gz``) with
  ``labelsTr/<case>.nii.gz``; any volume format :func:`~medgmae.data.reader.read_volume` reads, and DICOM series
  folders. nnU-Net's channel ending is taken off an image's name only where its label is named without it
  (``case_001_0000`` with ``case_001``); a Decathlon name ending in four digits (``case_0001``) is a case of its own.
* Where the names differ, by the number ending them (BTCV's ``img0001`` with ``label0001``): only when every image
  is one prefix followed by a number, every label map another prefix followed by a number, each number is on one
  file of each side, and both sides hold the same numbers; the pairing is then printed.

Anything else in these folders (a ``README.txt``) is left out, and named (hidden files, such as macOS's ``._x``
resource files, are left out silently).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from medgmae.data.datalist import DatasetError
from medgmae.data.reader import DICOM_FILE_SUFFIXES, VOLUME_SUFFIXES, is_volume_path, volume_stem
from medgmae.files import skipped_files_note
from medgmae.words import plural

__all__ = ["case_pairs"]

#: nnU-Net's channel ending of an image file name (``case_001_0000.nii.gz``: channel 0 of case ``case_001``).
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
#: A case name ending in a number (``img0001``: prefix ``img``, number 1).
_NUMBERED = re.compile(r"^(?P<prefix>.*?)(?P<number>\d+)$")
#: How images and label maps pair, as a refusal to pair them says it.
_PAIRING_HINT = ("(an image pairs with the label map of its name, nnU-Net's <case>_0000 with <case>; where the names "
                 "differ, by the number ending them, e.g. img0001 with label0001, when each side's names are one "
                 "prefix and a number, each number on one image and one label map)")  # fmt: skip


def _volumes(folder: Path, skipped: list[Path]) -> list[Path]:
    """The volume files and DICOM series folders directly in ``folder``, sorted (hidden names skipped); anything
    else there is appended to ``skipped``."""
    found = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES + DICOM_FILE_SUFFIXES):
            found.append(p)
        elif p.is_dir() and is_volume_path(p):
            found.append(p)
        else:
            skipped.append(p)
    return found


def _by_case(paths: Sequence[Path], folder: Path, label_cases: set[str] | None = None) -> dict[str, Path]:
    """``{case: path}`` by file name. With ``label_cases`` (images): a name that is no label's but ends in an
    nnU-Net channel (``case_001_0000``) whose case is a label's (``case_001``) is that case's channel; a Decathlon
    name that merely ends in four digits (``case_0001``, ``amos_0001``) is its own case.

    Raises:
        DatasetError: another channel than ``_0000`` (fine-tuning takes one CT channel), or two files of one case.
    """
    cases: dict[str, list[Path]] = {}
    for p in paths:
        stem = volume_stem(p)
        m = _CHANNEL.match(stem) if label_cases is not None and stem not in label_cases else None
        m = m if m and m["case"] in label_cases else None
        if m and m["channel"] != "0000":
            raise DatasetError(f"{p}: channel {m['channel']} of case {m['case']}: the fine-tuning model takes one CT "
                               "channel (nnU-Net's _0000); give a folder of single-channel images")  # fmt: skip
        cases.setdefault(m["case"] if m else stem, []).append(p)
    twice = {c: ps for c, ps in cases.items() if len(ps) > 1}
    if twice:
        shown = "; ".join(", ".join(p.name for p in ps) for ps in list(twice.values())[:5])
        raise DatasetError(f"{folder}: {plural(len(twice), 'case name')} given by more than one file ({shown})")
    return {c: ps[0] for c, ps in cases.items()}


def _case_name(case: str, images: dict[str, Path]) -> str:
    """The case an image of ``images`` (:func:`_by_case`) without a label map is of: its name without nnU-Net's
    channel ending ``_0000`` where the folder's images are named so (every one ends so, or those paired with a label
    map do: ``case_d_0000`` is of case ``case_d``), else its name (a Decathlon ``amos_0502``, ``case_0000``)."""
    m = _CHANNEL.match(case)
    channelled = all(c.endswith("_0000") for c in images) or any(volume_stem(p) != c for c, p in images.items())
    return m["case"] if m and m["channel"] == "0000" and channelled else case


def _numbers(cases: Sequence[str]) -> dict[int, str] | None:
    """``{number: case}`` when every case name is one and the same prefix followed by a number of its own, else
    ``None``."""
    matches = [_NUMBERED.match(c) for c in cases]
    if not matches or not all(matches) or len({m["prefix"] for m in matches}) != 1:
        return None
    by_number = {int(m["number"]): m.string for m in matches}
    return by_number if len(by_number) == len(matches) else None  # two names of one number: ambiguous


def _pair_by_number(images: Sequence[str], labels: Sequence[str]) -> list[tuple[str, str]] | None:
    """``(image case, label case)`` pairs by the number ending their names (see the module), in number order;
    ``None`` when they do not pair so one to one."""
    image_numbers, label_numbers = _numbers(images), _numbers(labels)
    if image_numbers is None or label_numbers is None or set(image_numbers) != set(label_numbers):
        return None
    return [(image_numbers[n], label_numbers[n]) for n in sorted(image_numbers)]


def _pairing(folder: Path, images: dict[str, Path], labels: dict[str, Path], progress: bool, split: str = "Tr") -> tuple[list, str]:
    """``([(image case, label case)], "name" or "number")``: the cases of ``images<split>/`` and ``labels<split>/``
    paired by name, else by number (printed with ``progress``).

    Raises:
        DatasetError: images and label maps that pair neither way, each unpaired file named.
    """
    if set(images) == set(labels):
        return [(c, c) for c in sorted(images)], "name"
    by_number = _pair_by_number(list(images), list(labels))
    if by_number is not None:
        if progress:
            shown = ", ".join(f"{i} with {lab}" for i, lab in by_number[:3])
            more = f" and {len(by_number) - 3} more" if len(by_number) > 3 else ""
            print(f"note: images{split}/ and labels{split}/ name their cases differently: paired {shown}{more} by their number",
                  flush=True)  # fmt: skip
        return by_number, "number"
    problems = [f"{images[c]}: no label map of case {_case_name(c, images)} in labels{split}/"
                for c in sorted(set(images) - set(labels))]
    problems += [f"{labels[c]}: no image of case {c} in images{split}/" for c in sorted(set(labels) - set(images))]
    more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
    unlabelled = (f"\nimages without a label map: add their maps to labels{split}/, or move the images to imagesTs/ "
                  "(the test list, images only) or out of the folder") if set(images) - set(labels) and split == "Tr" else ""  # fmt: skip
    raise DatasetError(f"{folder}: images and label maps do not pair by name:\n  " + "\n  ".join(problems[:10]) + more
                       + f"\n{_PAIRING_HINT}{unlabelled}")  # fmt: skip


def case_pairs(folder: str | Path, progress: bool = False, split: str = "Tr") -> tuple[list[dict], list[dict], str]:
    """The ``{"image", "label"}`` pairs of ``folder/images<split>`` and ``folder/labels<split>`` and the
    ``{"image"}`` items of ``folder/imagesTs`` (none without that folder); absolute paths.

    Args:
        folder: the folder holding ``imagesTr/`` and ``labelsTr/``.
        progress: print how the cases were paired where not by name, and the files left out as not volumes.
        split: ``"Tr"``, or ``"Va"`` for the validation cases of AMOS's layout (``imagesVa/``, ``labelsVa/``).

    Returns:
        ``(pairs, test, how)``: the pairs in case order, the test items, and ``"name"`` or ``"number"``.

    Raises:
        DatasetError: no ``images<split>`` / ``labels<split>``, no volumes in them, or images and labels that do
            not pair (each unpaired file named).
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a folder")
    missing = [name for name in (f"images{split}", f"labels{split}") if not (folder / name).is_dir()]
    if missing:
        raise DatasetError(f"{folder}: no {' and no '.join(f'{m}/' for m in missing)} (a Decathlon or nnU-Net layout: "
                           "imagesTr/ with the CT volumes, labelsTr/ with their label maps of the same names)")  # fmt: skip
    skipped: list[Path] = []
    labels = _by_case(_volumes(folder / f"labels{split}", skipped), folder / f"labels{split}")
    images = _by_case(_volumes(folder / f"images{split}", skipped), folder / f"images{split}", label_cases=set(labels))
    test_dir = folder / "imagesTs"
    test = [{"image": str(p)} for p in _volumes(test_dir, skipped)] if test_dir.is_dir() and split == "Tr" else []
    note = skipped_files_note(skipped, folder, what="volumes")
    if note and progress:
        print(f"note: {note}", flush=True)
    if not images:
        raise DatasetError(f"{folder / f'images{split}'}: no volumes (readable: {', '.join(VOLUME_SUFFIXES)}, DICOM series "
                           f"folders){'; ' + note if note else ''}")  # fmt: skip
    paired, how = _pairing(folder, images, labels, progress, split)
    return [{"image": str(images[i]), "label": str(labels[lab])} for i, lab in paired], test, how
