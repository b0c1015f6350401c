"""Batch segmentation resumed: the cases a stopped ``inference.json`` run (a job's time limit, Ctrl-C) wrote are
skipped when it is run again with ``--resume true``, as nnU-Net's ``--continue_prediction`` does, but only where
they are the output this run would write.

Each segmentation records what made it in its NIfTI header's ``descrip`` field (80 bytes, shown by
``nib.load(path).header["descrip"]`` and 3D Slicer's volume information): :func:`segmentation_id`, a hash of the
model file's content, the pre-processing it is run with (the recorded one, or ``--pixdim`` / ``--hu_range``'s) and
the sliding window's overlap and precision. A file of another model or other settings, of an earlier release (no
such record), or one that cannot be read is segmented again and replaced; an output is written whole or not at all
(:func:`medgmae.files.atomic_write`), so no half-written file is ever taken for a done case.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from medgmae.preprocessing import PreprocessingSpec
from medgmae.temp_names import fitted_name

__all__ = ["ID_PREFIX", "cases_to_segment", "segmentation_id", "segmentation_path", "written_id"]

logger = logging.getLogger(__name__)

#: The start of every :func:`segmentation_id` (the rest: 32 hex digits).
ID_PREFIX = "medgmae-seg "


def segmentation_path(output_dir: str | Path, case: str, postfix: str = "seg") -> Path:
    """Where a case's segmentation is written: ``<output_dir>/<case>_<postfix>.nii.gz``, a name too long for the
    file system keeping its start and 8 hex digits of its hash (:func:`medgmae.temp_names.fitted_name`)."""
    return Path(output_dir) / fitted_name(case, f"_{postfix}.nii.gz")


def segmentation_id(checkpoint: str | Path, spec: PreprocessingSpec, overlap: float, amp: bool) -> str:
    """What a segmentation records of what made it: :data:`ID_PREFIX` and 32 hex digits of the SHA-256 of the
    model file's SHA-256, the pre-processing ``spec`` and the sliding window's ``overlap`` and ``amp``.

    Args:
        checkpoint: the fine-tuned model file (``best_model.pt``).
        spec: the pre-processing the run applies (overrides included).
        overlap: the sliding window's overlap.
        amp: mixed precision.

    Returns:
        ``"medgmae-seg <32 hex digits>"`` (44 characters: within NIfTI's 80-byte ``descrip``).
    """
    from medgmae.data.fingerprint import file_sha256

    made_by = {"model_sha256": file_sha256(checkpoint), "preprocessing": asdict(spec), "overlap": float(overlap),
               "amp": bool(amp)}  # fmt: skip
    text = json.dumps(made_by, sort_keys=True, default=str)
    return ID_PREFIX + hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def written_id(path: str | Path) -> str | None:
    """The :func:`segmentation_id` a NIfTI file records, or ``None`` (no such file, an unreadable one, no record)."""
    import nibabel as nib

    try:
        descrip = nib.load(str(path)).header["descrip"]
    except Exception:  # noqa: BLE001 - any unreadable file is segmented again
        return None
    text = bytes(descrip.tobytes()).split(b"\0", 1)[0].decode("utf-8", "replace").strip()
    return text if text.startswith(ID_PREFIX) else None


def cases_to_segment(cases: Sequence[dict], output_dir: str | Path, seg_id: str, resume: bool,
                     postfix: str = "seg") -> list[dict]:  # fmt: skip
    """The cases still to segment: all of them, or with ``resume`` those whose output in ``output_dir`` does not
    record ``seg_id``; the skipped ones are counted in one log line.

    Args:
        cases: ``[{"image": path, "name": output name}]``
            (:func:`~medgmae.finetune.segment_inputs.inference_cases`).
        output_dir: the segmentations' folder.
        seg_id: this run's :func:`segmentation_id`.
        resume: skip the cases done already.
        postfix: the outputs' postfix (:class:`~medgmae.finetune.evaluate.SaveSegmentationd`'s).

    Returns:
        The cases to segment, in their order.
    """
    if not resume:
        return list(cases)
    todo = [c for c in cases if written_id(segmentation_path(output_dir, c["name"], postfix)) != seg_id]
    done = len(cases) - len(todo)
    logger.info("--resume: %d of %d cases segmented already in %s by this model and settings (skipped); %d to segment",
                done, len(cases), output_dir, len(todo))  # fmt: skip
    return todo
