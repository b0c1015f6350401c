"""Writing a Decathlon-style phantom dataset: NIfTI images and labels with a ``dataset.json``."""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import time
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medgmae.data.phantom.generator import (
    DEFAULT_SHAPE,
    DEFAULT_SPACING,
    GENERATOR_VERSION,
    ORGAN_LABELS,
    generate_phantom,
    shape_memory_problem,
    validate_geometry,
)
from medgmae.data.datalist import DatasetError
from medgmae.files import save_json_atomic, save_nifti_atomic
from medgmae.settings_diff import settings_differences
from medgmae.whole_numbers import nonnegative_count, positive_count
from medgmae.words import plural

__all__ = ["case_seeds", "damaged_cases", "regeneration_note", "validation_count", "write_phantom_dataset", "recorded_differences"]

logger = logging.getLogger("medgmae.data")

#: written before the first case and removed with ``dataset.json``'s arrival: a folder holding it is a phantom
#: dataset whose generation was interrupted, which may be generated again
IN_PROGRESS = ".phantom_in_progress.json"


def case_seeds(seed: int, num_cases: int) -> list[int]:
    """Per-case seeds of a phantom dataset (independent streams derived from the dataset seed)."""
    ss = np.random.SeedSequence(nonnegative_count(seed, "seed"))
    return [int(s.generate_state(1, np.uint32)[0]) for s in ss.spawn(nonnegative_count(num_cases, "num_cases"))]


def validation_count(num_validation: Any, num_cases: int) -> int:
    """``num_validation`` of a dataset of ``num_cases`` cases as an int in ``[0, num_cases - 1]`` (at least one case
    trains); anything else is a ``ValueError`` naming the range."""
    try:
        held_out = nonnegative_count(num_validation, "num_validation")
    except ValueError:
        held_out = -1
    if not 0 <= held_out < num_cases:
        raise ValueError(f"num_validation must be in [0, num_cases - 1] = [0, {num_cases - 1}], got {num_validation!r}.")
    return held_out


def _dataset_params(num_cases, seed, shape, spacing, num_validation) -> dict:
    """The validated generator parameters recorded in ``dataset.json`` (``num_validation`` defaulted)."""
    num_cases = positive_count(num_cases, "num_cases")
    if num_validation is None:
        num_validation = num_cases // 5 if num_cases >= 2 else 0
    held_out = validation_count(num_validation, num_cases)
    seed = nonnegative_count(seed, "seed")
    shape, spacing = validate_geometry(shape, spacing)
    return {
        "generator": "medgmae.data.phantom",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "num_cases": num_cases,
        "num_validation": held_out,
        "shape": list(shape),
        "spacing": list(spacing),
    }


def _listed_files(doc: Mapping) -> list[str]:
    """The image and label paths a ``dataset.json`` lists in its ``training`` and ``validation`` lists."""
    return [e[k] for lst in ("training", "validation") for e in doc.get(lst, []) if isinstance(e, dict)
            for k in ("image", "label") if isinstance(e.get(k), str)]  # fmt: skip


def _is_complete(json_path: Path, params: dict) -> bool:
    """Whether ``json_path`` records the generator ``params`` and every file it lists exists."""
    if not json_path.is_file():
        return False
    try:
        old = json.loads(json_path.read_text(encoding="utf-8"))
        files = _listed_files(old)
        return (old.get("phantom") == params and len(files) == 2 * params["num_cases"]
                and all((json_path.parent / f).is_file() for f in files))  # fmt: skip
    except (ValueError, OSError, KeyError, TypeError, AttributeError):
        return False  # unreadable or foreign dataset.json: not complete (_earlier_phantoms decides)


def recorded_differences(
    out_dir: str | os.PathLike,
    num_cases: int,
    seed: int = 0,
    shape: Sequence[int] | None = None,
    spacing: Sequence[float] | float | None = None,
    num_validation: int | None = None,
    labels: Mapping[str, str] | None = None,
) -> list[str]:
    """How the generator parameters recorded in ``out_dir/dataset.json`` differ from these, one line each.

    Reads only: :func:`write_phantom_dataset` with these parameters would regenerate the dataset when a line is
    returned. Arguments as :func:`write_phantom_dataset` (``None``: the generator's default shape and spacing);
    ``labels`` names the parameters in the lines (``{"seed": "--seed"}``, the recorded key otherwise).

    Returns:
        ``"seed: saved 0, now 1"`` lines (:func:`~medgmae.settings_diff.settings_differences`); ``[]`` when the
        parameters are the same or ``out_dir`` holds no readable phantom ``dataset.json`` (nothing to compare).
    """
    params = _dataset_params(num_cases, seed, DEFAULT_SHAPE if shape is None else shape,
                             DEFAULT_SPACING if spacing is None else spacing, num_validation)  # fmt: skip
    saved = (_phantom_doc(Path(out_dir) / "dataset.json") or {}).get("phantom")
    return settings_differences(saved, params, labels) if saved else []


def _phantom_doc(json_path: Path) -> dict | None:
    """The content of ``json_path`` when it is a ``dataset.json`` this generator wrote (with its ``phantom`` record
    of the generator parameters); ``None`` for any other file, one that does not read as JSON, or none."""
    try:
        doc = json.loads(json_path.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("phantom"), dict) else None


def regeneration_note(datalist: str | os.PathLike) -> str:
    """What a refusal of unusable files adds when they are phantoms this generator wrote (``datalist`` is its
    ``dataset.json``): a deleted phantom is generated again, the same as before; ``""`` for any other datalist."""
    if not str(datalist).endswith(".json") or _phantom_doc(Path(datalist)) is None:
        return ""
    return (f"\nThese are generated phantoms (listed in {datalist}): delete a damaged one and the next run generates "
            "it again, the same as before")


def _earlier_phantoms(out: Path) -> list[Path] | None:
    """The files of the phantom dataset ``out`` holds (its ``dataset.json``'s cases, or the ``case_*.nii.gz`` files
    of its ``imagesTr/`` and ``labelsTr/`` when its generation was interrupted), to be replaced; ``None`` when ``out``
    holds no dataset.

    Raises:
        DatasetError: ``out`` holds a dataset (a ``dataset.json``, ``imagesTr/`` or ``labelsTr/`` files) that this
            generator did not write: it is never overwritten. A folder of this generator's cases whose
            ``dataset.json`` is damaged or gone is refused too, saying to delete it to generate the phantoms again.
    """
    json_path = out / "dataset.json"
    if json_path.is_file():
        why = "it holds no phantom record"  # e.g. the text null: it parses, to None
        try:
            doc = json.loads(json_path.read_text(encoding="utf-8"))
        except (ValueError, OSError) as e:
            doc, why = None, f"it does not read as JSON: {e}"
        if isinstance(doc, dict) and isinstance(doc.get("phantom"), dict):
            return [out / f for f in _listed_files(doc)]
        if doc is None and (cases := _generated_cases(out)):
            raise DatasetError(f"{out} holds a damaged dataset.json ({why}) beside {plural(cases, 'phantom case')} in "
                               f"imagesTr/ and labelsTr/: {_REGENERATE.format(out=out)}")  # fmt: skip
        raise DatasetError(f"{out} holds a dataset.json that the phantom generator did not write: it is not "
                           "overwritten; write the phantoms into another (empty or new) folder")  # fmt: skip
    others = [p for sub in ("imagesTr", "labelsTr") if (out / sub).is_dir() for p in sorted((out / sub).iterdir())]
    if (out / IN_PROGRESS).is_file():  # an interrupted generation's cases, to be replaced
        return [p for p in others if p.name.startswith("case_") and p.name.endswith(".nii.gz")]
    if cases := _generated_cases(out):
        raise DatasetError(f"{out} holds {plural(cases, 'phantom case')} in imagesTr/ and labelsTr/ but no "
                           f"dataset.json (removed?): {_REGENERATE.format(out=out)}")  # fmt: skip
    if others:
        raise DatasetError(f"{out} holds {len(others)} files in imagesTr/ or labelsTr/ (e.g. {others[0]}) and no "
                           "phantom dataset.json: they are not overwritten; write the phantoms into another (empty or "
                           "new) folder")  # fmt: skip
    return None


#: The way on from a folder of this generator's cases without a readable ``dataset.json``.
_REGENERATE = ("delete {out} to generate the phantoms again (the same settings give the same phantoms; the folder "
               "is not overwritten unasked)")

_CASE_NAME = re.compile(r"case_\d{4}\.nii\.gz")


def _generated_cases(out: Path) -> int:
    """How many cases ``out`` holds when it looks as this generator leaves a folder: nothing but ``dataset.json``,
    ``imagesTr/`` and ``labelsTr/`` (and hidden files: the in-progress marker, a killed write's temporary file),
    the two folders holding the same ``case_NNNN.nii.gz`` names; 0 for any other folder (a user's data)."""
    def visible(folder: Path) -> set[str]:
        return {p.name for p in folder.iterdir() if not p.name.startswith(".")}

    try:
        if not visible(out) <= {"dataset.json", "imagesTr", "labelsTr"}:
            return 0
        images, labels = visible(out / "imagesTr"), visible(out / "labelsTr")
    except OSError:  # no imagesTr/ or labelsTr/ folder
        return 0
    generated = images == labels and all(_CASE_NAME.fullmatch(n) for n in images)
    return len(images) if generated else 0


def damaged_cases(out_dir: str | os.PathLike) -> list[str]:
    """The damaged files of the phantom dataset in ``out_dir``: each file its ``dataset.json`` lists that is not
    one whole gzip stream (cut short, overwritten: the generator writes every case gzip-compressed).

    Reads every listed file through (decompressing, keeping nothing): a few tenths of a second for nine cases of
    the default shape. A missing file is not damaged (the generator writes it again).

    Args:
        out_dir: the phantom dataset's folder.

    Returns:
        ``"<path>: <what is wrong>"`` lines; ``[]`` when every listed file reads whole or ``out_dir`` holds no
        readable phantom ``dataset.json``.
    """
    doc = _phantom_doc(Path(out_dir) / "dataset.json")
    if doc is None:
        return []
    damaged = []
    for path in (Path(out_dir) / f for f in _listed_files(doc)):
        try:
            with gzip.open(path, "rb") as f:
                while f.read(1 << 22):
                    pass
        except FileNotFoundError:
            continue
        except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
            damaged.append(f"{path}: {type(e).__name__}: {e}")
    return damaged


def _dataset_doc(entries: list[dict], num_validation: int, params: dict, seeds: list[int]) -> dict:
    """The ``dataset.json`` content: the last ``num_validation`` entries form the validation list."""
    n_train = len(entries) - num_validation
    return {
        "name": "MedGMAE abdominal CT phantoms",
        "description": "Synthetic non-contrast abdominal CT phantoms with organ labels (medgmae.data.phantom).",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {str(k): v for k, v in ORGAN_LABELS.items()},
        "numTraining": n_train,
        "numValidation": num_validation,
        "numTest": 0,
        "training": entries[:n_train],
        "validation": entries[n_train:],
        "test": [],
        "phantom": params,
        "case_seeds": seeds,
    }


def _write_cases(
    out: Path, seeds: list[int], shape: Sequence[int], spacing: Sequence[float], verbose: bool
) -> list[dict]:
    """Generate and write one phantom case per seed (``imagesTr/`` and ``labelsTr/`` under ``out``).

    Args:
        out: the dataset folder (its ``imagesTr/`` and ``labelsTr/`` exist).
        seeds: the cases' seeds (:func:`case_seeds`).
        shape: (X, Y, Z) voxels per case.
        spacing: voxel size in mm.
        verbose: print one line per written case.

    Returns:
        The datalist entries ``{"image", "label"}``, paths relative to ``out``.
    """
    entries = []
    for i, s in enumerate(seeds):
        t0 = time.perf_counter()
        ph = generate_phantom(s, shape, spacing)
        name = f"case_{i:04d}.nii.gz"
        save_nifti_atomic(np.rint(ph.image), ph.affine, out / "imagesTr" / name, np.int16)
        save_nifti_atomic(ph.label, ph.affine, out / "labelsTr" / name, np.uint8)
        entries.append({"image": f"imagesTr/{name}", "label": f"labelsTr/{name}"})
        if verbose:
            print(f"  {out / 'imagesTr' / name} (seed {s}, {time.perf_counter() - t0:.1f} s)")
    return entries


def _remove_leftovers(out: Path, earlier: list[Path], entries: list[dict]) -> None:
    """Delete the earlier dataset's files that the new one does not have (it had more cases).

    Args:
        out: the dataset folder; only files inside it are deleted.
        earlier: the earlier dataset's files (:func:`_earlier_phantoms`).
        entries: the new dataset's entries.
    """
    written = {out / e[k] for e in entries for k in ("image", "label")}
    inside = out.resolve()
    for path in earlier:  # the earlier dataset's cases this one does not have (it had more)
        if path not in written and path.resolve().is_relative_to(inside):
            path.unlink(missing_ok=True)


def write_phantom_dataset(
    out_dir: str | os.PathLike,
    num_cases: int,
    seed: int = 0,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] | float = DEFAULT_SPACING,
    num_validation: int | None = None,
    verbose: bool = False,
) -> Path:
    """Write a Decathlon-style phantom dataset and return the path of its ``dataset.json``.

    Layout: ``imagesTr/case_XXXX.nii.gz`` (int16 HU, rounded), ``labelsTr/case_XXXX.nii.gz`` (uint8 labels), both
    with the RAS affine of ``phantom_affine``, and ``dataset.json`` with ``name``, ``description``, ``labels``
    (``{"0": "background", ...}``), ``numTraining``/``numValidation`` and ``training``/``validation`` lists of
    ``{"image", "label"}`` paths relative to the json's folder (the last ``num_validation`` cases are the
    validation list). Every file is written to a temporary name in its folder and renamed, ``dataset.json`` last.
    When ``dataset.json`` already records the same generator parameters and all its files exist, nothing is
    generated again.

    Args:
        out_dir: output folder (created).
        num_cases: number of cases (>= 1).
        seed: dataset seed; case ``i`` is ``generate_phantom(case_seeds(seed, num_cases)[i], shape, spacing)``.
        shape: (X, Y, Z) voxels per case.
        spacing: voxel size in mm.
        num_validation: cases held out in the ``validation`` list; default ``num_cases // 5`` (0 for < 2 cases).
        verbose: print one line per written case.

    Returns:
        Path of ``dataset.json``.

    Raises:
        ValueError: a bad parameter; ``DatasetError`` (a ``ValueError``) for ``out_dir`` holding a dataset this
            generator did not write, or its own cases without a readable ``dataset.json``.
        MemoryError: a case of ``shape`` needs more memory than the machine has or a cgroup or address-space
            limit allows (:func:`shape_memory_problem`), raised before anything is written. Any failure while
            generating removes the files and folders this call created (an earlier dataset's cases it replaced
            stay, without their ``dataset.json`` and marked in progress: the next run generates them again).
    """
    params = _dataset_params(num_cases, seed, shape, spacing, num_validation)
    num_cases, num_validation = params["num_cases"], params["num_validation"]
    shape, spacing = tuple(params["shape"]), tuple(params["spacing"])
    out = Path(out_dir)
    json_path = out / "dataset.json"
    if _is_complete(json_path, params):
        return json_path
    earlier = _earlier_phantoms(out)
    if earlier is not None:
        logger.warning("replacing the phantom dataset in %s (%s)", out,
                       "; ".join(recorded_differences(out, num_cases, seed, shape, spacing, num_validation))
                       or "its generation was interrupted or files are missing")  # fmt: skip
    if problem := shape_memory_problem(shape):
        raise MemoryError(problem)
    entries = _generate(out, params, earlier is not None, verbose)
    _remove_leftovers(out, earlier or [], entries)
    (out / IN_PROGRESS).unlink(missing_ok=True)
    return json_path


def _generate(out: Path, params: dict, replacing: bool, verbose: bool) -> list[dict]:
    """Write the cases and then ``dataset.json`` of the generator ``params`` into ``out``; return the entries.

    The in-progress marker is written first and an earlier ``dataset.json`` removed before any case is written, so
    that a replacement that fails partway is never read as a complete dataset. On any failure the files and folders
    this call created are removed, except the marker when ``replacing`` an earlier dataset (its cases may be
    partly overwritten: the next run regenerates them).
    """
    keep = {out / IN_PROGRESS} if replacing else set()
    created = [p for p in _not_there_yet(out, params["num_cases"]) if p not in keep]
    try:
        (out / "imagesTr").mkdir(parents=True, exist_ok=True)
        save_json_atomic(params, out / IN_PROGRESS)
        (out / "dataset.json").unlink(missing_ok=True)
        (out / "labelsTr").mkdir(parents=True, exist_ok=True)
        seeds = case_seeds(params["seed"], params["num_cases"])
        entries = _write_cases(out, seeds, tuple(params["shape"]), tuple(params["spacing"]), verbose)
        save_json_atomic(_dataset_doc(entries, params["num_validation"], params, seeds), out / "dataset.json")
    except BaseException:  # out of memory, a full disk, Ctrl-C: what this run created goes, nothing else
        _remove_paths(created)
        raise
    return entries


def _not_there_yet(out: Path, num_cases: int) -> list[Path]:
    """The files and folders a generation of ``num_cases`` into ``out`` may create that do not exist yet, each
    before the folder holding it: what a failed generation removes (files it replaced stay)."""
    names = [f"case_{i:04d}.nii.gz" for i in range(num_cases)]
    files = [out / sub / n for sub in ("imagesTr", "labelsTr") for n in names] + [out / IN_PROGRESS]
    folders = [out / "imagesTr", out / "labelsTr", out, *out.parents]  # deepest first
    return [p for p in files + folders if not p.exists()]


def _remove_paths(paths: Sequence[Path]) -> None:
    """Delete these files and (empty) folders, in order; a folder that something else wrote into stays."""
    for path in paths:
        try:
            path.rmdir() if path.is_dir() else path.unlink(missing_ok=True)
        except OSError:  # not empty: another writer's files
            pass
