"""How the toolkit reads one volume (``medgmae-info --volume FILE``): what every pipeline sees of a scan before any
pre-processing, so that a scan that segments badly or lands in the wrong place can be looked at in one command.

The facts are those of :func:`medgmae.data.reader.read_volume`, the one reader of the toolkit (NIfTI, NRRD,
MetaImage, a DICOM series folder or a multi-frame DICOM file): the array's shape in the file's index order
``(I, J, K)``, the voxel size along each of those axes, the voxel-to-RAS affine and the axis codes it gives
(nibabel's ``aff2axcodes``: ``("L", "P", "S")`` is the first index running towards the patient's left...), how far
its axes turn from the world's (an oblique scan), the value range and percentiles of the finite voxels and how many
are not finite (a reader run refuses them), and what the values look like (:mod:`medgmae.volume_units`: CT in HU,
attenuation in 1/mm, a label map, HU shifted up by the rescale intercept or down by it applied twice).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = ["volume_facts", "volume_lines"]

#: The percentiles reported of the finite voxels.
PERCENTILES = (0.5, 50.0, 99.5)


def _axis_turn_degrees(affine: np.ndarray) -> float:
    """The largest angle (degrees) between a voxel axis and the world axis nearest it: 0 for a scan whose voxel
    axes run along the world's (in any order and sense)."""
    directions = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    cosines = np.clip(np.abs(directions).max(axis=0), 0.0, 1.0)
    return float(np.degrees(np.arccos(cosines.min())))


def _values(array: np.ndarray) -> dict[str, Any]:
    """The value facts of ``array``: range, percentiles, non-finite count and what the values look like."""
    from medgmae import volume_units

    finite = np.isfinite(array)
    values = array[finite] if not finite.all() else array
    facts: dict[str, Any] = {"non_finite": int(array.size - int(finite.sum()))}
    if values.size == 0:
        return {**facts, "min": None, "max": None, "percentiles": {}, "looks_like": "no finite voxel"}
    sample = values.ravel()[:: max(1, values.size // 2_000_000)]  # percentiles of a regular sample of big scans
    kind, found = volume_units.value_kind(values)  # the judgement the pipelines' warning makes; its range read once
    facts.update(min=found["lo"], max=found["hi"],
                 percentiles={f"{p:g}": round(float(v), 4) for p, v in zip(PERCENTILES, np.percentile(sample, PERCENTILES))})  # fmt: skip
    said = {"constant": "constant (every voxel the same): an empty or blanked volume?",
            "label_map": f"a label map ({found.get('values')} classes)",
            "attenuation": "attenuation (1/mm), not HU",
            "shifted_up": "no air: HU shifted up by the rescale intercept (raw stored values, 1024 above HU?), a crop "
                          "without air or another modality",
            "shifted_down": "HU shifted down by 1024 (the rescale intercept applied twice?)"}.get(kind)  # fmt: skip
    if said is None:
        hu = volume_units.range_is_hu(found["lo"], found["hi"])  # looks_like_hu, on the range read above
        said = "CT in HU" if hu else "neither CT in HU, attenuation nor a label map"
    return {**facts, "looks_like": said}


def volume_facts(path: str | os.PathLike) -> dict[str, Any]:
    """What the toolkit reads of the volume at ``path`` (module docstring), as JSON-ready data.

    Args:
        path: a volume file or DICOM series folder.

    Returns:
        ``{"path", "shape" (I, J, K), "voxel_mm" (along I, J, K), "axis_codes" (e.g. ["L", "P", "S"]),
        "oblique_degrees", "affine" (4 x 4, index to RAS mm), "origin_mm" (the RAS point of voxel (0, 0, 0)),
        "non_finite", "min", "max", "percentiles" ({"0.5": ..., "50": ..., "99.5": ...}), "looks_like"}``.

    Raises:
        FileNotFoundError: no such file or folder.
        ValueError: a file the reader refuses (the message names it and why).
    """
    import nibabel as nib

    from medgmae.data.reader import read_volume

    volume = read_volume(path, check_finite=False)
    affine = np.asarray(volume.affine, dtype=np.float64)
    return {
        "path": str(volume.path),
        "shape": [int(n) for n in volume.array.shape],
        "voxel_mm": [round(v, 6) for v in volume.spacing],
        "axis_codes": list(nib.aff2axcodes(affine)),
        "oblique_degrees": round(_axis_turn_degrees(affine), 3),
        "affine": [[round(float(v), 6) + 0.0 for v in row] for row in affine],
        "origin_mm": [round(float(v), 4) + 0.0 for v in affine[:3, 3]],
        **_values(volume.array),
    }


def volume_lines(facts: dict[str, Any]) -> list[tuple[str, str]]:
    """``facts`` (:func:`volume_facts`) as ``medgmae-info``'s labelled lines."""
    from medgmae.words import plural

    shape = " x ".join(map(str, facts["shape"]))
    voxels = " x ".join(f"{v:g}" for v in facts["voxel_mm"])
    turn = facts["oblique_degrees"]
    axes = "along the world's axes" if turn == 0 else f"oblique: an axis turned {turn:g} degrees from the world's"
    lines = [("volume", facts["path"]),
             ("  grid", f"{shape} voxels (I, J, K) of {voxels} mm, axis codes {''.join(facts['axis_codes'])} ({axes})"),
             ("  origin", "voxel (0, 0, 0) at RAS " + ", ".join(f"{v:g}" for v in facts["origin_mm"]) + " mm")]  # fmt: skip
    if facts["min"] is not None:
        spread = ", ".join(f"{p}%: {v:g}" for p, v in facts["percentiles"].items())
        lines.append(("  values", f"{facts['min']:g} to {facts['max']:g} (percentiles {spread}): {facts['looks_like']}"))
    else:
        lines.append(("  values", facts["looks_like"]))
    if facts["non_finite"]:
        lines.append(("  non-finite", f"{plural(facts['non_finite'], 'voxel')} (NaN or infinite): the pipelines refuse them"))
    return lines
