"""The default GViT task: axial slices of generated phantoms, labelled by the organ that covers most of each.

:func:`write_phantom_slice_task` cuts the phantoms of :mod:`medgmae.data.phantom` (through
:func:`medgmae.twod.data2d.axial_slices`) into class-folder PNGs, the last phantoms forming the validation split,
and records its parameters in ``task.json`` so that a task of the same parameters is reused and one of others is
replaced (:func:`phantom_task_conflicts` tells evaluation when it would be; :func:`check_phantom_task_resume` refuses
a resume that would replace its run's). ``medgmae.twod.classification_data`` loads it as any class-folder dataset.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from medgmae.files import save_json_atomic
from medgmae.settings_diff import settings_differences
from medgmae.twod.data2d import axial_slices, window_to_image
from medgmae.twod.images import save_png

__all__ = ["TASK_WINDOW", "VAL_PHANTOMS", "check_num_phantoms", "check_phantom_task_resume", "phantom_task_conflicts",
           "phantom_task_params", "recorded_default_task", "write_phantom_slice_task"]

logger = logging.getLogger("medgmae.gvit")

_TASK_VERSION = 2
"""Bumped when the task's images change for the same parameters (2: slices resized as every 2D input is)."""

#: The HU window the default task's PNGs are written at, which a model trained on them records (``extra["data"]``),
#: so that NIfTI/DICOM inputs are mapped as its training slices were.
TASK_WINDOW = (-500.0, 500.0)

#: Phantoms of the default task's validation split (the last ones).
VAL_PHANTOMS = 2

#: The GViT bundle's settings behind each recorded task parameter, as a refused resume names them.
_TASK_FLAGS = {"num_cases": "num_phantoms", "image_size": "image_size", "seed": "seed", "version": "task version"}


def recorded_default_task(data_settings: Mapping | None) -> bool:
    """Whether a run's recorded data settings (``data.settings`` of
    :func:`~medgmae.twod.classification_data.resolve_classification_data`) are the default task's: its
    ``dataset_dir`` recorded as ``""``. Its PNGs' fixed window (:data:`TASK_WINDOW`) maps none of its images, which
    are compared by their cases, so a resume does not compare the recorded ``window``."""
    return data_settings is not None and data_settings.get("dataset_dir", None) == ""


def check_num_phantoms(value: Any, dataset_dir: Any = "") -> None:
    """The GViT bundle's ``num_phantoms`` setting, checked up front when the phantom task is used (no
    ``dataset_dir``): an integer above :data:`VAL_PHANTOMS` (the last phantoms are the validation split, at least one
    trains). Raises ``ValueError`` naming the minimum."""
    from medgmae.cli_types import is_integer_text

    if str(dataset_dir or "").strip():
        return
    n = int(value.strip()) if isinstance(value, str) and is_integer_text(value) else value
    if isinstance(n, bool) or not isinstance(n, int) or n <= VAL_PHANTOMS:
        raise ValueError(f"expected an integer of at least {VAL_PHANTOMS + 1} (the last {VAL_PHANTOMS} phantoms are "
                         f"the validation split), got {value!r}")  # fmt: skip


def write_phantom_slice_task(
    out_dir: str | Path,
    num_cases: int = 10,
    num_val_cases: int = VAL_PHANTOMS,
    seed: int = 0,
    image_size: int = 32,
    volume_shape: Sequence[int] = (64, 64, 48),
    min_fraction: float = 0.02,
    max_per_class: int = 200,
    window: tuple[float, float] = TASK_WINDOW,
) -> Path:
    """Write the default GViT task: axial phantom slices labelled by their largest organ, as class-folder PNGs.

    Each phantom of :func:`medgmae.data.phantom.generate_phantom` is cut into axial slices (the last, S-I axis of
    its RAS voxel grid); a slice is labelled by the organ of :data:`~medgmae.data.phantom.ORGAN_LABELS` with the
    largest area in it, kept when that area is at least ``min_fraction`` of the slice. With the phantom's upper
    abdominal field of view this gives a body-region task (lung bases / liver / bowel). Organs with fewer than 4
    training slices are dropped and each class is capped at ``max_per_class`` slices per split. Intensities are
    windowed to ``window`` HU and shown radiologically (anterior up, patient's right on the left).

    The last ``num_val_cases`` phantoms form the validation split, so that no case has slices in both splits.
    Files are ``out_dir/{train,val}/<organ>/case<i>_z<k>.png``; ``out_dir/task.json`` (written last) records the
    parameters and counts, and an existing task with the same parameters is reused.

    Returns:
        ``out_dir``, a dataset folder for :func:`medgmae.twod.classification_data.load_classification_data`.
    """
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8, got {image_size}")
    if not 1 <= num_val_cases < num_cases:
        raise ValueError(f"need 1 <= num_val_cases < num_cases (at least one case trains), got {num_val_cases} "
                         f"validation cases of {num_cases}")  # fmt: skip
    out_dir = Path(out_dir)
    params = _task_params(num_cases, num_val_cases, seed, image_size, volume_shape, min_fraction, max_per_class, window)
    marker = out_dir / "task.json"
    if _reuse_or_clear(out_dir, params):
        return out_dir
    slices = _labelled_slices(num_cases, num_val_cases, seed, volume_shape, min_fraction)
    classes = sorted(name for name, group in slices["train"].items() if len(group) >= 4)
    missing = [c for c in classes if not slices["val"].get(c)]
    if len(classes) < 2 or missing:
        raise ValueError(
            f"the phantom slice task has training classes {classes} and validation lacks {missing}: "
            "use more cases (num_cases / num_val_cases) or a larger volume_shape"
        )
    rng = random.Random(seed)
    counts: dict[str, dict[str, int]] = {"train": {}, "val": {}}
    for split in ("train", "val"):
        for name in classes:
            group = slices[split][name]
            rng.shuffle(group)
            for stem, hu in sorted(group[:max_per_class], key=lambda t: t[0]):
                save_png(window_to_image(hu, window, (image_size, image_size)), out_dir / split / name / f"{stem}.png")
            counts[split][name] = min(len(group), max_per_class)
    save_json_atomic({"task": "phantom axial slices labelled by the organ with the largest area", "params": params,
                      "counts": counts}, marker)  # fmt: skip
    return out_dir


def _task_params(num_cases: int = 10, num_val_cases: int = 2, seed: int = 0, image_size: int = 32,
                 volume_shape: Sequence[int] = (64, 64, 48), min_fraction: float = 0.02, max_per_class: int = 200,
                 window: Sequence[float] = TASK_WINDOW) -> dict:  # fmt: skip
    """The parameters recorded in a phantom task's ``task.json`` (the arguments of :func:`write_phantom_slice_task`)."""
    return dict(version=_TASK_VERSION, num_cases=num_cases, num_val_cases=num_val_cases, seed=seed,
                image_size=image_size, volume_shape=list(volume_shape), min_fraction=min_fraction,
                max_per_class=max_per_class, window=list(window))  # fmt: skip


def phantom_task_params(out_dir: str | Path) -> dict | None:
    """The parameters of the finished phantom task in ``out_dir`` (its ``task.json``), or None when there is none."""
    try:
        return json.loads((Path(out_dir) / "task.json").read_text(encoding="utf-8")).get("params")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def phantom_task_conflicts(out_dir: str | Path, num_cases: int, seed: int, image_size: int) -> dict | None:
    """The parameters of a finished task in ``out_dir`` that :func:`write_phantom_slice_task` with these arguments
    would replace (None when the folder holds no task or the same one)."""
    old = phantom_task_params(out_dir)
    return old if old is not None and old != _task_params(num_cases, seed=seed, image_size=image_size) else None


def phantom_task_ready(out_dir: str | Path, num_cases: int, seed: int, image_size: int) -> bool:
    """Whether ``out_dir`` holds the finished task :func:`write_phantom_slice_task` with these arguments would write
    (it then only reads it: nothing is written there)."""
    return phantom_task_params(out_dir) == _task_params(num_cases, seed=seed, image_size=image_size)


def check_phantom_task_resume(out_dir: str | Path, run_dir: str | Path, num_cases: int, seed: int,
                              image_size: int) -> None:  # fmt: skip
    """Refuse, before the task is cleared or written again, a resume whose settings differ from those of the phantom
    task in ``out_dir`` (the interrupted run's data), so that a refused resume leaves the task as it was.

    Args:
        out_dir: the task's folder (the run's ``data``).
        run_dir: the GViT run a resume continues; nothing to check without an epoch checkpoint in its
            ``checkpoints/<phase>`` folders (nothing to resume), or without a finished task in ``out_dir``.
        num_cases, seed, image_size: as :func:`write_phantom_slice_task`'s (the bundle's ``num_phantoms``, ``seed``
            and ``image_size``).

    Raises:
        ResumeRefused: the recorded task has other settings; the message names each, saved and now.
    """
    from medgmae.engine.restore import ResumeRefused
    from medgmae.engine.resume import latest_checkpoint
    from medgmae.twod.gvit_step import PHASES

    checkpoints = Path(run_dir) / "checkpoints"
    saved = phantom_task_params(out_dir)
    if not isinstance(saved, dict) or not any(latest_checkpoint(checkpoints / p) for p in PHASES):
        return
    given = _task_params(num_cases, seed=seed, image_size=image_size)
    diff = settings_differences(saved, given, _TASK_FLAGS)
    if diff:
        advice = ("Resume with the interrupted run's phantom settings or train into a new output_dir"
                  if saved.get("version") == given["version"] else  # another toolkit's task: its settings do not help
                  "This version of the toolkit makes the task otherwise: train into a new output_dir")  # fmt: skip
        raise ResumeRefused(f"the checkpoints in {checkpoints} were trained on a phantom task generated with other "
                            f"settings ({'; '.join(diff)}). {advice}")  # fmt: skip


def _reuse_or_clear(out_dir: Path, params: dict) -> bool:
    """True when ``out_dir`` holds a finished task with ``params``; otherwise removes any stale or partial task's
    slices (so that no old file is counted) and returns False."""
    marker = out_dir / "task.json"
    if marker.is_file():
        try:
            if json.loads(marker.read_text(encoding="utf-8")).get("params") == params:
                return True
        except (json.JSONDecodeError, OSError):
            pass
    if out_dir.is_dir():
        if marker.is_file():
            logger.warning("%s holds a phantom task with other parameters: replacing it (%s)", out_dir, params)
        marker.unlink(missing_ok=True)
        for old in out_dir.glob("*/*/case*_z*.png"):
            old.unlink()
    return False


def _labelled_slices(
    num_cases: int, num_val_cases: int, seed: int, volume_shape: Sequence[int], min_fraction: float
) -> dict[str, dict[str, list[tuple[str, np.ndarray]]]]:
    """``{split: {organ: [(stem, hu (H, W)), ...]}}``: every axial slice whose largest organ covers at least
    ``min_fraction`` of it, labelled by that organ; the last ``num_val_cases`` phantoms are the validation split."""
    from medgmae.data.phantom import ORGAN_LABELS, generate_phantom

    slices: dict[str, dict[str, list[tuple[str, np.ndarray]]]] = {"train": {}, "val": {}}
    for case in range(num_cases):
        split = "val" if case >= num_cases - num_val_cases else "train"
        for sl in axial_slices(generate_phantom(seed + case, shape=tuple(volume_shape))):
            lab = sl["label"]
            areas = np.bincount(lab.ravel(), minlength=max(ORGAN_LABELS) + 1)
            areas[0] = 0
            organ = int(areas.argmax())
            if areas[organ] < min_fraction * lab.size or organ not in ORGAN_LABELS:
                continue
            slices[split].setdefault(ORGAN_LABELS[organ], []).append((f"case{case}_z{sl['slice']:03d}", sl["hu"]))
    return slices
