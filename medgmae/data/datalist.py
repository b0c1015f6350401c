"""A Decathlon datalist file read: its JSON and the form of its lists checked, its paths resolved.

The one datalist reader of pre-training and fine-tuning (:func:`read_datalist`; the data sources built on it are in
:mod:`medgmae.data.sources`): a ``dataset.json`` with ``training`` / ``validation`` / ``test`` lists of
``{"image", "label"}`` paths relative to the json's folder or to ``data_dir`` (:func:`listed_path`: a datalist
written on Windows read too). A malformed list is refused naming the item; nnU-Net's ``dataset.json`` (which lists
no cases) and a missing list, with what to give instead. A non-CT ``modality``, validation images also in training
and images listed twice are warned about. :class:`DatasetError` is the data layer's refusal.

Contents are checked by :func:`medgmae.data.precheck.check_datalist`; here only the lists are read.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
from collections import Counter
from pathlib import Path
from typing import Callable, Mapping, Sequence

from medgmae.bundle_errors import InputRefusal
from medgmae.data.reader import is_volume_path
from medgmae.distributed import is_main_process

__all__ = [
    "DatasetError", "listed_path", "load_datalist_json", "read_datalist", "warn_if_lists_overlap",
    "is_nnunet_datalist", "nnunet_datalist_error", "check_datalist_lists", "LIST_KEYS",
]  # fmt: skip

logger = logging.getLogger("medgmae.data")


class DatasetError(InputRefusal):
    """A datalist or one of its files cannot be used; the message names the file and the problem."""


#: The lists of cases a Decathlon datalist may hold.
LIST_KEYS = ("training", "validation", "test")
_ENTRY = '{"image", "label"}'


def load_datalist_json(path: str | Path, check_lists: bool = True) -> dict:
    """The JSON object of a datalist file.

    Args:
        path: the JSON file.
        check_lists: check the form of its ``training`` / ``validation`` / ``test`` lists
            (:func:`check_datalist_lists`); ``False`` where only other fields (``labels``) are read.

    Returns:
        The JSON object.

    Raises:
        DatasetError: the file is missing, not valid JSON, or not a JSON object, or (``check_lists``) a list of
            cases is malformed.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"datalist not found: {path}")
    if is_volume_path(path):
        raise DatasetError(f"{path} is a volume, not a datalist: give the folder holding the volumes, or a JSON "
                           "datalist (Decathlon 'training' / 'validation' lists)")  # fmt: skip
    try:
        content = json.loads(path.read_text(encoding="utf-8-sig"))  # -sig: a BOM (Windows Notepad) is skipped
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"datalist {path} is not valid JSON: {e}") from e
    if not isinstance(content, dict):
        raise DatasetError(f"datalist {path} must hold a JSON object (with 'training' / 'validation' lists)")
    if check_lists:
        check_datalist_lists(path, content)
    return content


def check_datalist_lists(path: Path, content: Mapping) -> None:
    """Check the form of a datalist's lists of cases before any of their files is read: each of ``training``,
    ``validation`` and ``test`` present is a list (``null``: none), of ``{"image", "label"}`` objects or image
    path strings (as the Decathlon's ``test`` list), whose ``image`` and ``label`` are path strings.

    Args:
        path: the datalist file, for the message.
        content: its JSON object.

    Raises:
        DatasetError: naming the file, the list, the item and what it holds instead.
    """
    for key in (k for k in LIST_KEYS if content.get(k) is not None):
        items = content[key]
        if not isinstance(items, list):
            raise DatasetError(f"datalist {path}: '{key}' must be a list of {_ENTRY} entries, got {_json_kind(items)}")
        for i, item in enumerate(items):
            if isinstance(item, str):
                continue
            if not isinstance(item, dict):
                raise DatasetError(f"datalist {path}: item {i} of '{key}' must be a {_ENTRY} object or an image path "
                                   f"string, got {_json_kind(item)}")  # fmt: skip
            if "image" not in item:
                raise DatasetError(f"datalist {path}: item {i} of '{key}' has no 'image': {item!r}")
            for k in ("image", "label"):
                if k in item and not isinstance(item[k], str):
                    raise DatasetError(f"datalist {path}: item {i} of '{key}' has a '{k}' that is "
                                       f"{_json_kind(item[k])}, not a path string")  # fmt: skip


_MODALITY_WARNED: set = set()
#: Words that make a modality name a CT ("CT", "CTA", "Non-contrast CT", "CBCT", "computed tomography").
_CT_WORDS = {"ct", "cta", "ctp", "cbct", "cect", "ncct", "hrct", "ldct", "tomography"}


def _is_ct(name: str) -> bool:
    return bool(_CT_WORDS & set(re.split(r"[^a-z0-9]+", name.lower())))


def _warn_if_not_ct(path: Path, content: dict) -> None:
    """Warn once per file (rank 0 under torchrun) when a datalist's ``modality`` (Decathlon) or ``channel_names`` (nnU-Net v2) field names
    anything but CT: every image goes through the models' HU window, so an MRI channel is trained on (or
    segmented) as a meaningless crop."""
    names = []
    for field in ("modality", "channel_names"):
        value = content.get(field)
        names += list(value.values()) if isinstance(value, dict) else [value] if value else []
    other = sorted({str(n) for n in names if not _is_ct(str(n))})
    if not other or str(path) in _MODALITY_WARNED or not is_main_process():  # every torchrun process reads it
        return
    _MODALITY_WARNED.add(str(path))
    logger.warning("datalist %s declares the modality %s: this toolkit's models take CT in HU (every image goes "
                   "through the HU window), so leave non-CT cases and channels out of the lists", path,
                   " and ".join(repr(n) for n in other))  # fmt: skip


def is_nnunet_datalist(content: Mapping) -> bool:
    """Whether a datalist file's JSON object is nnU-Net v2's ``dataset.json`` (``channel_names`` and
    ``file_ending``), which lists no cases: nnU-Net pairs ``imagesTr/`` and ``labelsTr/`` by file name."""
    return "channel_names" in content and "file_ending" in content


def nnunet_datalist_error(path: Path, key: str = "training") -> DatasetError:
    """The error for nnU-Net's ``dataset.json`` given as a datalist: what it is, and the command writing a Decathlon
    datalist of its folder to give instead."""
    return DatasetError(f"datalist {path} is nnU-Net's dataset.json (channel_names, file_ending), which lists no "
                        f"'{key}' cases: `{_split_command(path.parent, 'dataset_decathlon.json')}` writes a Decathlon "
                        "datalist of its imagesTr/ and labelsTr/; give that file as --datalist")  # fmt: skip


def _split_command(folder: Path, out_name: str) -> str:
    """The ``medgmae-datalist`` command writing a Decathlon datalist of ``folder`` into ``folder/out_name``."""
    return f"medgmae-datalist {shlex.quote(str(folder))} --out {shlex.quote(str(folder / out_name))}"


def _empty_list_hint(path: Path, key: str, content: dict, folder: Path) -> str:
    """How to give a datalist the ``validation`` list it lacks ("" for other lists); ``folder`` is the one its
    paths resolve against, where a Decathlon layout (``imagesTr/``, ``labelsTr/``) can be split."""
    if key != "validation":
        return ""
    phantom = content.get("phantom")
    if isinstance(phantom, dict) and "num_cases" in phantom:
        flags = {k: phantom[k] if isinstance(phantom[k], list) else [phantom[k]]
                 for k in ("num_cases", "seed", "shape", "spacing") if k in phantom}  # fmt: skip
        flags["num_cases"] = [max(2, int(phantom["num_cases"]))]  # one training case stays
        same = "".join(f" --{k.replace('_', '-')} {' '.join(map(str, v))}" for k, v in flags.items())
        return (f"; write the phantoms again with a case held out for validation: medgmae-phantom --out {shlex.quote(str(path.parent))}"
                f"{same} --num-validation 1 --force")  # it replaces the set without one
    if (folder / "imagesTr").is_dir() and (folder / "labelsTr").is_dir():  # e.g. a Decathlon download
        return (f"; `{_split_command(folder, 'dataset_split.json')}` writes a seeded split of its imagesTr/ and "
                "labelsTr/ into 'training' and 'validation' lists: give that file as --datalist (or add a "
                '"validation" list of {"image": ..., "label": ...} cases, not those of "training", to this one)')
    return ('; add a "validation" list of {"image": ..., "label": ...} cases (not those of "training") to the '
            "datalist")


def read_datalist(
    datalist: str | Path, key: str = "training", data_dir: str | Path | None = None, required: bool = True
) -> list[dict]:
    """The items of one list of a Decathlon datalist, with absolute paths.

    Args:
        datalist: the JSON file.
        key: ``"training"``, ``"validation"`` or ``"test"``.
        data_dir: base folder of relative paths (default: the datalist's folder).
        required: an absent or empty list is an error (else ``[]``).

    Returns:
        Dicts with ``image`` (and ``label`` where given) as absolute path strings below the base folder resolved
        (links followed), the same whichever way the datalist is named and from whichever working folder; backslashes of a datalist written on Windows read as folder separators (:func:`listed_path`).

    Raises:
        DatasetError: the file is missing or not valid JSON, one of its lists is malformed
            (:func:`check_datalist_lists`), or a required list is absent or empty. A ``modality`` field naming anything but CT (``{"0": "MRI"}``) is warned about, once per file.
    """
    path = Path(datalist).expanduser()
    content = load_datalist_json(path)
    _warn_if_not_ct(path, content)
    items = content.get(key)
    base = (Path(data_dir).expanduser() if data_dir else path.parent).resolve()
    if not items and is_nnunet_datalist(content):
        raise nnunet_datalist_error(path, key)
    if not items:
        if required:
            what = "is empty" if key in content else f"is missing (the file has {sorted(content)})"
            raise DatasetError(f"datalist {path}: the '{key}' list {what}{_empty_list_hint(path, key, content, base)}")
        return []
    out = []
    for item in items:  # their form is checked by load_datalist_json
        item = {"image": item} if isinstance(item, str) else item
        out.append({k: listed_path(base, v) if k in ("image", "label") else v for k, v in item.items()})
    return out


def listed_path(base: Path, text: str) -> str:
    """A datalist's (or GViT CSV list's) path ``text`` resolved against ``base``. A datalist written on Windows separates folders with
    backslashes (``imagesTr\\case_0001.nii.gz``), which on Linux and macOS are characters of a name: they are read as
    separators unless a file named with them exists (or the path starts with a drive, ``C:\\``: kept as written, for
    the pre-check's message to show it). A path starting with ``~`` is in the user's home folder, as for paths given
    on the command line."""
    path = base / os.path.expanduser(text)  # unlike Path.expanduser, no error for "~name" of no user
    if "\\" in text and not os.path.lexists(path) and not re.match(r"[A-Za-z]:\\", text):  # lexists: False for a
        # name too long for the file system, where Path.exists raises on Python 3.10 and 3.11
        path = base / os.path.expanduser(text.replace("\\", "/"))
    return str(path)


def _json_kind(value) -> str:
    """What a JSON value is, as the file writes it: ``null``, ``a number (3)``, ``a string ("a.nii.gz")``,
    ``a list (["a.nii.gz"])``... (a long value cut short)."""
    text = json.dumps(value, default=repr)
    if value is None or isinstance(value, bool):
        return text
    kind = ("a number" if isinstance(value, (int, float)) else "a string" if isinstance(value, str)
            else "a list" if isinstance(value, list) else "an object")  # fmt: skip
    return f"{kind} ({text if len(text) <= 80 else text[:77] + '...'})"


def _labels_differ(items: Sequence[dict], images: Sequence[str], key) -> bool:
    """Whether any of ``images`` is listed with two different labels among ``items``."""
    labels: dict = {}
    for it in items:
        if isinstance(it, dict) and "image" in it and key(it) in images:
            labels.setdefault(key(it), set()).add(os.path.realpath(str(it.get("label", ""))))
    return any(len(v) > 1 for v in labels.values())


def warn_if_lists_overlap(training: Sequence[dict], validation: Sequence[dict], source: str | Path) -> int:
    """Warn when images of the validation list are also in the training list (a datalist edited by hand, a
    case copied into both): validation then scores cases the model trained on and overstates how it generalises;
    and when an image is listed more than once in either list (a training one weighs more, with two labels they
    contradict; a validation one weighs more in the mean Dice that chooses the best model).

    Returns:
        The number of validation images also trained on.
    """
    def key(item) -> str:
        return os.path.realpath(str(item["image"]))

    listed = _warn_if_repeated(training, source, "training", "these weigh more in training", key)
    _warn_if_repeated(validation, source, "validation", "these weigh more in the mean score that chooses the best model", key)
    trained = set(listed)
    both = [str(it["image"]) for it in validation if isinstance(it, dict) and "image" in it and key(it) in trained]
    if both:
        what = "is also a training image" if len(both) == 1 else "are also training images"
        logger.warning("%s: %d of the %d validation image%s %s (%s%s): validation scores cases the model trains on, "
                       "so it overstates how the model does on new ones", source, len(both), len(validation),
                       "s" if len(validation) > 1 else "", what, ", ".join(both[:3]),
                       f" and {len(both) - 3} more" if len(both) > 3 else "")  # fmt: skip
    return len(both)


def _warn_if_repeated(items: Sequence[dict], source: str | Path, role: str, weighs: str, key: Callable) -> list[str]:
    """Warn of the images listed more than once in ``items`` (the ``role`` list: each listing is a case of its own,
    so they ``weigh`` more); returns every listed image's ``key``."""
    listed = [key(it) for it in items if isinstance(it, dict) and "image" in it]
    twice = sorted(p for p, n in Counter(listed).items() if n > 1)
    if twice:
        logger.warning("%s: %d %s image%s listed more than once (%s%s): each listing is a case of its own, so %s%s",
                       source, len(twice), role, "s are" if len(twice) > 1 else " is", ", ".join(twice[:3]),
                       f" and {len(twice) - 3} more" if len(twice) > 3 else "", weighs,
                       "; with different labels, the labels contradict each other" if _labels_differ(items, twice, key) else "")  # fmt: skip
    return listed
