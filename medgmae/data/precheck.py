"""The pre-check: every file of a training run opened once, all problems reported together, before training starts.

A bad file found while training (a truncated ``.nii.gz`` fails deep inside a dataset with ``EOFError`` and no file
name) wastes the run up to that point. :func:`check_datalist` reads each image (and label) fully with
:func:`~medgmae.data.reader.read_volume` (header and data: truncated or corrupt files, 2D/4D arrays, complex values,
NaN/inf voxels, singular geometry), refuses single slices saved as 3D (``(X, Y, 1)``, as most tools write a slice),
compares each label with its image (the same voxel grid: :func:`~medgmae.data.grid.same_grid_problem`, shape and
affine) and checks label values (integers in ``[0, num_classes)``; float noise within
:data:`~medgmae.data.reader.LABEL_TOLERANCE` of a whole number rounded, other fractions refused). It collects every problem and raises ONE :class:`DatasetError` naming each file
and its problem, before anything is written. Given the model's pre-processing (``spec``: segmentation does), it also
warns, once per image and before any work, about an image that is no CT in HU for a model of HU: a label map listed
as an image, attenuation in 1/mm, a constant or air-less volume (:func:`~medgmae.volume_units.warn_if_not_hu`).

Cost: the check decodes every volume once. It runs in ``workers`` processes (a 512 x 512 x 160 CT ``.nii.gz``
took 3 s on a shared CPU core, ``bench/RESULTS.md``: a 5,000-volume folder in about 16 minutes on 16 processes),
and files that passed are remembered in a ledger (path, size and modification time) next to the disk cache, so a
resumed or repeated run re-reads only new or changed files. The ledger is rewritten (atomically) whenever files
passed, also when others failed if its folder exists (a resumed or repeated run's; a first run's data error leaves
no output folder, so point ``cache_dir`` at an existing folder to keep its passes): a run repeated after fixing one
bad file among hundreds reads only that file (and any other that changed). A fine-tuning resume rewrites it only
once its checkpoint has accepted the run and its data passed (``pending_ledger``: a resume refused, for its settings
or its data, leaves its folder as it was, and its passes are read again next time). Runs on
other data sharing the cache with the same check settings keep each other's passes in it (those of files since
changed or removed are dropped); runs with other settings, fine-tuning's beside pre-training's, keep a record each
(up to :data:`OTHER_RECORDS` besides the current one); two runs ending their checks at the same moment may lose the
passes of the first, which then reads its files again. A long check logs a line a minute
(``pre-check of X: 120/5000 items, 1.0 min, about 40.6 min left``).
Under torch.distributed rank 0 checks and the verdict is broadcast, so a cluster job decodes each file once, not
once per process.

Why a separate pass rather than checking while the disk cache fills: the cache fills in the loader workers during
epoch 1 (decode + resample + write: ~7x the decode alone, ``bench/RESULTS.md``), so checking there would either
find a bad file hours into training or, done before step 1, make the start wait for the whole pre-processing. The
pre-check costs one extra decode per file, once.
"""

from __future__ import annotations

import json
import os
import logging
import re
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from functools import partial
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from medgmae.data.datalist import DatasetError, load_datalist_json
from medgmae.data.fingerprint import file_fingerprint
from medgmae.data.grid import GRID_TOLERANCE, grid_fix_once, label_grid_problem
from medgmae.data.phantom.writer import regeneration_note
from medgmae.data.reader import read_volume
from medgmae.distributed import main_process_only
from medgmae.files import save_json_atomic
from medgmae.preprocessing import PreprocessingSpec
from medgmae.terminal import ProgressLines
from medgmae.volume_units import warn_if_not_hu
from medgmae.words import plural
from medgmae.whole_numbers import nonnegative_count

__all__ = ["check_datalist", "check_item", "single_slice_problem", "LEDGER_FILE"]

logger = logging.getLogger("medgmae.data")

#: Name of the record of checked files (inside the cache folder).
LEDGER_FILE = "precheck.json"


def single_slice_problem(path: Any, shape: Sequence[int]) -> str:
    """The problem of a volume that is a single slice or line (a 2D slice saved as ``(X, Y, 1)``, as most tools
    write one), ``""`` for a volume with at least 2 voxels on every axis: the 3D models' one rule."""
    if min(shape) > 1:
        return ""
    return (f"{path}: a single slice or line (shape {tuple(shape)}), not a 3D volume: the models need volumes with "
            "at least 2 voxels on every axis")


def blank_image_problem(path: Any, array: np.ndarray) -> str:
    """The problem of an image whose voxels all hold one value (an empty or blanked export), ``""`` otherwise: such a
    volume has nothing to learn from or to segment, and fine-tuning's label-guided crops find no place to cut one
    (MONAI's "No sampling location available", mid-run)."""
    if array.size == 0 or array.min() != array.max():
        return ""
    return f"{path}: every voxel is {float(array.flat[0]):g}, an empty or blanked volume: nothing to learn from or to segment"


def _fingerprint(item: dict, keys: Sequence[str]) -> list:
    """``[path, size, mtime_ns]`` of each file (or folder) of ``item`` (:func:`~medgmae.data.fingerprint.
    file_fingerprint`; ``None`` for a missing one)."""
    return [[str(Path(item[key])), *(file_fingerprint(item[key]) or (None, None))] for key in keys if key in item]


def _still_true(fingerprint: list) -> bool:
    """Whether every file of a ledger entry (:func:`_fingerprint`) is still there with its recorded size and time:
    an entry of a file since changed or removed is not kept (the ledger would grow with every edit)."""
    return all([*(file_fingerprint(path) or (None, None))] == [size, mtime] for path, size, mtime in fingerprint)


#: How many files a grouped problem line names before saying how many more.
SHOWN_FILES = 3


class LabelRangeProblem(str):
    """The problem line of a label map holding class values ``0..highest`` beyond ``num_classes`` (a ``str``, as
    every problem, that also carries them, so that :func:`check_datalist` reports all such maps in one line)."""

    path: str
    highest: int
    num_classes: int


def _range_problem(path: str, highest: int, num_classes: int) -> LabelRangeProblem:
    """The line of label map ``path`` whose classes run to ``highest``, beyond ``num_classes``."""
    problem = LabelRangeProblem(f"{path}: label values in [0, {highest}] are outside the class range [0, {num_classes - 1}]")
    problem.path, problem.highest, problem.num_classes = path, highest, num_classes
    return problem


def _grouped_range_problems(problems: list[str]) -> tuple[list[str], int | None]:
    """``problems`` with every :class:`LabelRangeProblem` replaced by one line naming the files (the first
    :data:`SHOWN_FILES`, then a count) and the class count the label maps need; and that count (``None``: no such
    problem)."""
    ranged = [p for p in problems if isinstance(p, LabelRangeProblem)]
    if not ranged:
        return problems, None
    highest, num_classes = max(p.highest for p in ranged), ranged[0].num_classes
    own = len({p.highest for p in ranged}) > 1  # maps of several ranges: each named with its own
    files = ", ".join(p.path + (f" (0-{p.highest})" if own else "") for p in ranged[:SHOWN_FILES]) + (
        f" and {len(ranged) - SHOWN_FILES} more" if len(ranged) > SHOWN_FILES else "")
    need = (f"labels 0-{highest} found: they need {highest + 1} classes (--num_classes {highest + 1}, with as many "
            "names in the datalist's 'labels' map when it has one)")
    line = f"{ranged[0]}; {need}" if len(ranged) == 1 else (
        f"{len(ranged)} label maps hold class values outside the class range [0, {num_classes - 1}] ({num_classes} "
        f"classes): {files}; {need}")  # fmt: skip
    others = [p for p in problems if not isinstance(p, LabelRangeProblem)]
    return [line] + others, highest + 1


def _label_problems(label: np.ndarray, path: str, num_classes: int | None) -> list[str]:
    lo, hi = int(label.min()), int(label.max())
    if lo < 0 or (num_classes is not None and hi >= num_classes):
        if num_classes is None:  # a label map holds class indices 0, 1, 2...: an image given as the label?
            return [f"{path}: label values in [{lo}, {hi}] include negative ones: a label map holds class indices "
                    "from 0 (is this an image listed as the label?)"]  # fmt: skip
        if lo == 0 and hi == 255 and not ((label != 0) & (label != 255)).any():  # not 256 classes: a 0/255 mask
            return [f"{path}: label values in [0, 255] are outside the class range [0, {num_classes - 1}]: only 0 and "
                    "255: a binary mask saved as 0/255? divide it by 255"]  # fmt: skip
        if lo >= 0 and hi < 256:  # class indices, only more of them: the count they need is worth saying
            return [_range_problem(path, hi, num_classes)]
        return [f"{path}: label values in [{lo}, {hi}] are outside the class range [0, {num_classes - 1}]"]
    return []


def check_item(
    item: dict, image_key: str = "image", label_key: str | None = None, num_classes: int | None = None,
    require_label: bool = False, spec: PreprocessingSpec | None = None,
) -> list[str]:
    """All problems of one datalist item (each a line naming the file), ``[]`` when it is usable.

    Args:
        item: ``{"image": path[, "label": path]}``.
        image_key: key of the image.
        label_key: key of the label (``None``: images only).
        num_classes: labels must lie in ``[0, num_classes)`` (``None``: only non-negative integers).
        require_label: an item without ``label_key`` is a problem.
        spec: the model's pre-processing: a readable image that is no CT in HU for a model of HU is warned about
            (:func:`~medgmae.volume_units.warn_if_not_hu`: a label map, attenuation in 1/mm...), not refused.

    Returns:
        Problem descriptions.
    """
    if image_key not in item:
        return [f"datalist item {item!r} has no '{image_key}'"]
    has_label = label_key is not None and label_key in item
    if label_key is not None and require_label and not has_label:
        return [f"{item[image_key]}: no '{label_key}' listed for this image"]
    problems, vols = [], {}
    for key in [image_key] + ([label_key] if has_label else []):
        try:
            vols[key] = read_volume(item[key], label=key == label_key)
        except (FileNotFoundError, ValueError) as e:
            problems.append(f"{key} {e}" if isinstance(e, FileNotFoundError) else str(e))
    if image_key in vols and (flat := single_slice_problem(item[image_key], vols[image_key].array.shape)
                              or blank_image_problem(item[image_key], vols[image_key].array)):
        problems.append(flat)
    if image_key in vols and spec is not None and not problems:  # a blank one is refused: not warned about too
        warn_if_not_hu(vols[image_key].array, spec, str(item[image_key]))
    if not has_label or len(vols) < 2:
        return problems
    image, label = vols[image_key], vols[label_key]
    grid = label_grid_problem(label.path, label.array.shape, label.affine, image.path, image.array.shape, image.affine)
    problems += [grid] if grid else []
    return problems + _label_problems(label.array, str(label.path), num_classes)


def _all_missing_hint(items: Sequence[Mapping], image_key: str, source: str = "") -> str:
    """When no listed image exists, where the paths pointed (a datalist's relative paths resolved against the wrong
    folder is the usual cause, said unless ``source`` is a list of files given as such, ``input_files``); otherwise
    ``""``."""
    paths = [Path(it[image_key]) for it in items if isinstance(it, Mapping) and image_key in it]
    if not paths or any(p.exists() for p in paths):
        return ""
    where = os.path.commonpath([str(p.parent) for p in paths]) if all(p.is_absolute() for p in paths) else "the current folder"
    hint = f"\nNone of the {len(paths)} images exist: their paths resolve under {where}"
    if source == "input_files":
        return hint
    return hint + (_absolute_paths_hint(Path(source)) or ". A datalist's relative paths resolve against --dataset_dir "
                   "when it is given, else against the datalist's own folder")


def _absolute_paths_hint(datalist: Path) -> str:
    """When the datalist lists every image by an absolute path (written on another machine: ``/home/x/Task09/...``,
    ``C:\\data\\...``), what to do, with the file its folder holds by the end of the first path where it holds one;
    otherwise ``""``."""
    try:
        content = load_datalist_json(datalist) if datalist.is_file() else {}
    except DatasetError:
        return ""
    listed = [it.get("image") if isinstance(it, dict) else it for key in ("training", "validation", "test")
              for it in (content.get(key) or []) if isinstance(content.get(key), list)]  # fmt: skip
    listed = [p for p in listed if isinstance(p, str)]
    if not listed or not all(p.startswith(("/", "\\")) or re.match(r"[A-Za-z]:[\\/]", p) for p in listed):
        return ""
    advice = (": the datalist lists absolute paths, none of which exist here (written on another machine?); write "
              "them relative to the datalist's folder, as the Decathlon's own are, or as they are on this machine")
    parts = [q for q in re.split(r"[\\/]", listed[0]) if q]
    for n in range(len(parts) - 1, 0, -1):
        if (datalist.parent / Path(*parts[-n:])).is_file():
            return advice + f" (its folder holds {datalist.parent / Path(*parts[-n:])}, listed as {listed[0]})"
    return advice


def _check_one(args: tuple) -> list[str]:
    item, kwargs = args
    return check_item(item, **kwargs)


def _ledger_records(path: Path | None) -> list[dict]:
    """The ledger's records, one per set of check settings (``{"settings": ..., "passed": [...]}``): a fine-tuning
    run (labels checked) and a pre-training run (images only) sharing one cache folder each keep theirs. A ledger
    of the earlier one-record form is that one record; an unreadable one, or one of another shape, is none, and
    entries not of the form :func:`_fingerprint` writes are left out."""
    if path is None or not path.is_file():
        return []
    try:
        ledger = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return []
    records = (ledger.get("records", [ledger]) if isinstance(ledger, dict) else None) or []
    records = records if isinstance(records, list) else []
    return [{"settings": r["settings"], "passed": [fp for fp in r["passed"] if _well_formed(fp)]} for r in records
            if isinstance(r, dict) and isinstance(r.get("settings"), dict) and isinstance(r.get("passed"), list)]  # fmt: skip


def _well_formed(fingerprint: Any) -> bool:
    """Whether a ledger entry is a list of ``[path, size, mtime_ns]`` as :func:`_fingerprint` writes them."""
    return isinstance(fingerprint, list) and all(
        isinstance(f, list) and len(f) == 3 and isinstance(f[0], str) for f in fingerprint
    )


def _load_ledger(path: Path | None, settings: dict) -> set:
    """The fingerprints that passed the check under ``settings``."""
    record = next((r for r in _ledger_records(path) if r["settings"] == settings), {})
    return {json.dumps(f) for f in record.get("passed", [])}


#: Records of other check settings a ledger keeps besides the current run's (the most recently written ones).
OTHER_RECORDS = 4


def _other_records(path: Path, settings: dict) -> list[dict]:
    """The records a rewrite keeps besides ``settings``' own: those of other settings checked by this version
    (the same ``checks`` and grid tolerance; an older version's never match again) holding any pass, at most
    :data:`OTHER_RECORDS`, as they are (their entries of files since changed never match, so they are not stat'ed
    again here: on a network file system that is seconds per thousand files)."""
    same_version = {k: settings[k] for k in ("checks", "grid_tolerance")}
    kept = [r for r in _ledger_records(path) if r["settings"] != settings and r["passed"]
            and all(r["settings"].get(k) == v for k, v in same_version.items())]  # fmt: skip
    return kept[-OTHER_RECORDS:]


def _counted(results: Iterable[list[str]], lines: ProgressLines) -> list[list[str]]:
    """``results`` as a list, as they come in, with a progress line a minute (no bar shows the pre-check)."""
    done: list[list[str]] = []
    for result in results:
        done.append(result)
        lines.update(len(done))
    return done


def _run_checks(items: Sequence[dict], kwargs: dict, workers: int, ledger: Path | None, source: str,
                pending: list[Callable[[], None]] | None = None) -> list[str]:
    keys = [k for k in (kwargs.get("image_key", "image"), kwargs.get("label_key")) if k]
    # the grid tolerance is part of what a pass means: a ledger written under another one re-checks every file
    # (the spec only adds warnings: a file that passed under one passed under any)
    settings = {**{k: v for k, v in kwargs.items() if k != "spec"}, "grid_tolerance": GRID_TOLERANCE, "checks": 3}
    known = _load_ledger(ledger, settings)
    prints = [_fingerprint(it, keys) for it in items]
    todo = [i for i, fp in enumerate(prints) if json.dumps(fp) not in known]
    logger.info("pre-check of %s: reading %d of %d items (%d checked before)%s", source or "the datalist",
                len(todo), len(items), len(items) - len(todo), f" in {workers} processes" if workers > 1 else "")
    jobs = [(items[i], kwargs) for i in todo]
    lines = ProgressLines(f"pre-check of {source or 'the datalist'}", len(jobs), "items", logger.info, bar=False)
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
            results = _counted(pool.map(_check_one, jobs, chunksize=max(1, len(jobs) // (8 * workers))), lines)
    else:
        results = _counted(map(_check_one, jobs), lines)
    problems = list(dict.fromkeys(p for r in results for p in r))  # a case in two lists is one problem, named once
    # some files passed now: remember them, failures or not; after a failure only in a folder there already (a
    # first run's data error leaves no output folder behind, so its retry reads every file again)
    if ledger is not None and any(not r for r in results) and (not problems or ledger.parent.is_dir()):
        failed = {i for i, r in zip(todo, results) if r}
        passed = [fp for i, fp in enumerate(prints) if i not in failed]
        # the passes of other data checked into this cache (runs sharing one --cache_dir) are kept: each names its
        # file by path, size and time, so it stays true whatever this run checks
        mine, paths = {json.dumps(fp) for fp in prints}, {f[0] for fp in prints for f in fp}
        passed += [fp for fp in map(json.loads, sorted(known - mine)) if not {f[0] for f in fp} & paths and _still_true(fp)]
        records = {"records": [*_other_records(ledger, settings), {"settings": settings, "passed": passed}]}
        if pending is None:
            save_json_atomic(records, ledger)
        else:  # written by the caller once the run can no longer be refused
            pending.append(partial(save_json_atomic, records, ledger))
    return problems


def check_datalist(
    items: Sequence[dict],
    label_key: str | None = None,
    num_classes: int | None = None,
    require_label: bool = False,
    workers: int = 0,
    ledger_dir: str | Path | None = None,
    source: str = "",
    image_key: str = "image",
    spec: PreprocessingSpec | None = None,
    pending_ledger: list[Callable[[], None]] | None = None,
) -> list[dict]:
    """Open every file of ``items`` once and raise one error listing every unusable file (see the module docstring).

    Args:
        items: datalist items ``{"image": path[, "label": path]}``.
        label_key: key of the labels to check against their images (``None``: images only).
        num_classes: label values must be in ``[0, num_classes)``.
        require_label: every item must have a label (fine-tuning).
        workers: processes reading files in parallel (0 or 1: in this process).
        ledger_dir: folder of the ledger of files that passed (``None``: none; every file is read each time).
        source: the datalist or folder, named in the message.
        image_key: key of the images.
        spec: the model's pre-processing, to warn about images that are no CT in HU for it (see :func:`check_item`;
            a file the ledger remembers is not read again, so not warned about again).
        pending_ledger: a list the ledger's rewrite is appended to, for the caller to call (``None``: done here).

    Returns:
        ``items`` (as a list), so that the call can sit inside a bundle config expression.

    Raises:
        DatasetError: the list is empty or any file is unusable; one message lists them all (label maps beyond
            ``num_classes`` in one line, first, with the count they need, also set as the error's
            ``needed_classes``; the lines are its ``problems``, the advice said once after them its ``advice``).
    """
    if not items:
        raise DatasetError(f"{source or 'datalist'}: no items to check (the list is empty)")
    workers = nonnegative_count(workers, "precheck workers")
    kwargs = {"image_key": image_key, "label_key": label_key, "num_classes": None if num_classes is None else int(num_classes),
              "require_label": bool(require_label), "spec": spec}  # fmt: skip
    ledger = Path(ledger_dir) / LEDGER_FILE if ledger_dir else None

    def check() -> None:
        try:
            problems = _run_checks(list(items), kwargs, workers, ledger, str(source), pending_ledger)
        except Exception as e:  # not the data (each file's problems are collected below): the traceback stays
            raise RuntimeError(f"the pre-check of {source or 'the datalist'} failed: {type(e).__name__}: {e}") from e
        if problems:
            problems, needed = _grouped_range_problems(problems)
            lines, fix = grid_fix_once(problems)  # the resampling advice once, not on every off-grid label line
            advice = f"\nfor the label maps off their image's grid: {fix}" if fix else ""  # after the list, no item of it
            err = DatasetError(f"{plural(len(problems), 'problem')} in the data of {source or 'the datalist'} "
                               f"({len(items)} items); fix or remove these files:\n  - " + "\n  - ".join(lines)
                               + advice + _all_missing_hint(items, image_key, str(source))
                               + regeneration_note(source))  # fmt: skip
            err.needed_classes, err.problems, err.advice = needed, lines, advice
            raise err

    main_process_only(check, DatasetError)
    return list(items)

