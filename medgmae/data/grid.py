"""Whether two volumes lie on the same voxel grid: the one check behind every "is this mask / label / reference on
that image's voxels?" of the toolkit (the data pre-check, ``medgmae-recon``'s FBP and reference volumes,
``medgmae-2d segment --reference``).

Two volumes are on the same grid when they have the same shape and their voxel-to-world affines put every voxel
in the same place. The affines are compared by what they do, not entry by entry: at each voxel centre ``v`` (an
index ``(i, j, k)``), the distance in mm between ``A @ v`` and ``B @ v``; the largest such distance over the grid
is the grid's offset. The difference of two affine maps is affine and a norm is convex, so the largest distance
over the grid's box lies at one of its eight corner voxels: eight points give the exact maximum over every voxel.

The tolerance is :data:`GRID_TOLERANCE` (1e-2) times the smallest voxel size of the two grids (the shortest
column of either affine), in mm. Why this convention:

* One number in mm for origin, direction and spacing: all three are seen as where a voxel lands. An origin error
  moves every voxel by the same distance; a spacing or direction error moves a voxel in proportion to its index,
  so it is largest at the far corner, and that is what an entry-by-entry tolerance on the columns misses (1e-3 mm
  on a column is 0.5 mm at voxel 512).
* Relative to the voxel size: a voxel placed 1/100 voxel off is read at the same voxel by any interpolation,
  while half a voxel off (a corner- vs centre-of-voxel mix-up) is a real error whatever the voxel size. ITK's
  check that a filter's inputs share a grid is relative to the spacing for the same reason.
* 1e-2 rather than tighter: NIfTI stores affines in float32 (about 7 digits: ~3e-5 mm at the far corner of a
  512-voxel 1 mm grid 300 mm from the origin), and DICOM writes positions and direction cosines as decimal
  strings that converters round differently (6 decimals: ~5e-4 mm at voxel 512 of a 1 mm grid); an image and a
  label written by two tools through these paths must not be refused, and the check has no override. A
  hundredth of a voxel is still 50 times below the half-voxel errors it is there to catch.

Shapes are in the affine's index order ``(i, j, k)`` (a NIfTI file's order; ``recon/``'s ``(z, y, x)`` arrays pass
their shape reversed); shorter shapes (a 2D image) are padded with 1s.
"""

from __future__ import annotations

import itertools
import os
from typing import Sequence

import numpy as np

__all__ = ["GRID_TOLERANCE", "canonical_grid", "grid_fix_once", "grid_offset_mm", "grid_tolerance_mm", "label_grid_problem",
           "nearest_unsheared_frame", "same_grid_problem", "shear_offset_mm"]

#: Largest offset between two grids' voxels still taken as the same grid, as a fraction of the smallest voxel size.
GRID_TOLERANCE = 1e-2


def _shape3(shape: Sequence[int]) -> tuple[int, ...]:
    """``shape`` as three ints, padded with 1s (a 2D image is one slice)."""
    shape = tuple(int(s) for s in shape)
    if not 1 <= len(shape) <= 3:
        raise ValueError(f"a voxel grid has 1 to 3 axes, got shape {shape}")
    return shape + (1,) * (3 - len(shape))


def _fmt_shape(shape: Sequence[int]) -> str:
    return " x ".join(str(int(s)) for s in shape)


def grid_offset_mm(shape: Sequence[int], affine: np.ndarray, ref_affine: np.ndarray) -> float:
    """The largest distance (mm) between where ``affine`` and ``ref_affine`` put the same voxel of a grid of
    ``shape``: the maximum over the grid's eight corner voxels, which is the maximum over all its voxels.

    Args:
        shape: the grid's shape in the affines' index order (1 to 3 axes).
        affine: a 4x4 voxel-to-world affine.
        ref_affine: the other 4x4 voxel-to-world affine.

    Returns:
        The offset in mm (NaN if either affine is not finite).
    """
    diff = np.asarray(affine, dtype=np.float64)[:3] - np.asarray(ref_affine, dtype=np.float64)[:3]
    corners = np.array([[*c, 1.0] for c in itertools.product(*[(0, n - 1) for n in _shape3(shape)])])
    return float(np.linalg.norm(corners @ diff.T, axis=1).max())


def nearest_unsheared_frame(affine: np.ndarray) -> np.ndarray | None:
    """The unsheared voxel-to-world frame nearest ``affine``: a rotation (or reflection) times voxel sizes, what a
    NIfTI qform, ITK's direction and spacing, or an orthogonal grid can state (nibabel's decomposition of a qform).
    The toolkit's one test of a sheared affine (a gantry tilt left unresampled) compares the two with
    :func:`grid_offset_mm` against :data:`medgmae.files.FRAME_TOLERANCE_MM`; an unsheared affine is its own.

    Args:
        affine: a 4x4 voxel-to-world affine.

    Returns:
        The ``(4, 4)`` frame, or ``None`` for a singular affine (no frame is near it).
    """
    import nibabel as nib

    header = nib.Nifti1Header()
    try:
        header.set_qform(np.asarray(affine, dtype=np.float64), code=1)
    except Exception:  # noqa: BLE001  (nibabel's HeaderDataError: "Could not decompose affine")
        return None
    return header.get_qform()


def shear_offset_mm(shape: Sequence[int], affine: np.ndarray) -> float:
    """How far (mm) a sheared ``affine`` puts a voxel of a grid of ``shape`` from where its
    :func:`nearest_unsheared_frame` does: above :data:`medgmae.files.FRAME_TOLERANCE_MM`, the grid is sheared.

    Args:
        shape: the grid's shape in the affine's index order (1 to 3 axes).
        affine: a 4x4 voxel-to-world affine.

    Returns:
        The offset in mm; 0 for an unsheared affine and for a singular one (no unsheared frame is near it).
    """
    nearest = nearest_unsheared_frame(affine)
    return 0.0 if nearest is None else grid_offset_mm(shape, affine, nearest)


def grid_tolerance_mm(affine: np.ndarray, ref_affine: np.ndarray) -> float:
    """The largest offset (mm) accepted between two grids: :data:`GRID_TOLERANCE` times the smallest voxel size
    of either affine (see the module docstring).

    Args:
        affine: a 4x4 voxel-to-world affine.
        ref_affine: the other 4x4 voxel-to-world affine.

    Returns:
        The tolerance in mm.
    """
    columns = np.concatenate([np.asarray(a, dtype=np.float64)[:3, :3] for a in (affine, ref_affine)], axis=1)
    return GRID_TOLERANCE * float(np.linalg.norm(columns, axis=0).min())


def canonical_grid(shape: Sequence[int], affine: np.ndarray) -> tuple[tuple[int, ...], np.ndarray]:
    """The same voxels with the axes permuted and flipped to the closest RAS order (as nibabel's
    ``as_closest_canonical`` and MONAI's ``Orientationd("RAS")`` store them).

    Args:
        shape: the grid's shape in ``affine``'s index order (1 to 3 axes).
        affine: its 4x4 voxel-to-world affine.

    Returns:
        ``(shape, affine)`` of the reordered grid.
    """
    from nibabel.orientations import inv_ornt_aff, io_orientation

    shape3, affine = _shape3(shape), np.asarray(affine, dtype=np.float64)
    ornt = io_orientation(affine)
    out = [0, 0, 0]
    for axis, (to, _) in enumerate(ornt):
        out[int(to)] = shape3[axis]
    return tuple(out), affine @ inv_ornt_aff(ornt, shape3)


def same_grid_problem(
    name: str,
    shape: Sequence[int],
    affine: np.ndarray | None,
    ref_name: str,
    ref_shape: Sequence[int],
    ref_affine: np.ndarray | None,
    reoriented: bool = False,
) -> str | None:
    """Why the volume ``name`` is not on the voxel grid of ``ref_name``, or ``None`` when it is.

    The message has one format wherever it is raised: both names, both shapes when they differ (equal shapes are
    not the problem, so they are not shown), and the largest offset in mm between the two affines' voxels with the
    tolerance (see the module docstring), e.g. ``label a.nii.gz is not on the voxel grid of image b.nii.gz: voxels
    up to 50 mm apart (tolerance 0.015 mm)`` or ``...: shape 16 x 16 x 12 vs 16 x 16 x 11, voxels up to ...``;
    when only the shapes differ it says so. When either affine is ``None`` (a picture without one, a geometry
    without one) only the shapes are compared, and the message says so.

    Args:
        name: the volume checked, as the message names it (e.g. ``"label /data/a_seg.nii.gz"``).
        shape: its shape, in its affine's index order.
        affine: its 4x4 voxel-to-world affine (mm), or ``None``.
        ref_name: the volume it must match, as the message names it.
        ref_shape: that volume's shape.
        ref_affine: that volume's affine, or ``None``.
        reoriented: compare the grids after :func:`canonical_grid` (for consumers that reorient both volumes, as
            the training pipelines' ``Orientationd`` does): the same voxels stored in another axis order or
            direction pass. Otherwise such a pair is refused with a message saying so.

    Returns:
        The problem in one line, or ``None``.
    """
    same_shape = _shape3(shape) == _shape3(ref_shape)
    head = f"{name} is not on the voxel grid of {ref_name}"
    head += "" if same_shape else f": shape {_fmt_shape(shape)} vs {_fmt_shape(ref_shape)}"  # equal shapes: not the problem
    if affine is None or ref_affine is None:
        return None if same_shape else f"{head} (no affine to compare)"
    if _grid_mismatch(shape, affine, ref_shape, ref_affine) is None:
        return None
    finite = np.isfinite(affine).all() and np.isfinite(ref_affine).all()
    if finite and _grid_mismatch(*canonical_grid(shape, affine), *canonical_grid(ref_shape, ref_affine)) is None:
        return None if reoriented else (f"{head}: the same voxels stored in another axis order or direction (reorient "
                                        f"it to the orientation of {ref_name})")  # fmt: skip
    offset, tol = _grid_mismatch(shape, affine, ref_shape, ref_affine)
    if offset <= tol:  # the shapes alone differ
        return f"{head} (the shapes differ; the affines agree)"
    return f"{head}{':' if same_shape else ','} voxels up to {offset:.4g} mm apart (tolerance {tol:.2g} mm)"


def _grid_mismatch(shape, affine, ref_shape, ref_affine) -> tuple[float, float] | None:
    """``None`` for the same grid, else ``(largest voxel offset, tolerance)`` in mm (the offset over every voxel
    of either grid, so another shape with agreeing affines gives an offset within the tolerance)."""
    grid = np.maximum(_shape3(shape), _shape3(ref_shape))
    offset, tol = grid_offset_mm(grid, affine, ref_affine), grid_tolerance_mm(affine, ref_affine)
    return None if _shape3(shape) == _shape3(ref_shape) and offset <= tol else (offset, tol)


#: The fix :func:`label_grid_problem` adds to its message.
LABEL_GRID_FIX = ("; resample the label map onto the image's grid with nearest-neighbour interpolation (e.g. 3D "
                  "Slicer's Resample Scalar/Vector/DWI Volume, or SimpleITK.Resample with sitkNearestNeighbor)")


def grid_fix_once(problems: Sequence[str]) -> tuple[list[str], str]:
    """``problems`` (lines) with :data:`LABEL_GRID_FIX` said once: where two or more lines end with it, they lose it
    and the fix is returned as a sentence of its own, for the caller to add after them; otherwise the lines unchanged
    and ``""``."""
    if sum(p.endswith(LABEL_GRID_FIX) for p in problems) < 2:
        return list(problems), ""
    return [p.removesuffix(LABEL_GRID_FIX) for p in problems], LABEL_GRID_FIX[2:]


def label_grid_problem(
    label: str | os.PathLike,
    label_shape: Sequence[int],
    label_affine: np.ndarray | None,
    image: str | os.PathLike,
    image_shape: Sequence[int],
    image_affine: np.ndarray | None,
) -> str | None:
    """Why the label map ``label`` is not on the voxel grid of its image ``image``, else ``None``: the one wording
    of fine-tuning's pre-check and ``medgmae-datalist`` (:func:`same_grid_problem`; both volumes are reoriented
    together, so an axis order alone is no problem).

    Args:
        label: the label map's path, as the message names it.
        label_shape: its shape.
        label_affine: its affine.
        image: the image's path.
        image_shape: its shape.
        image_affine: its affine.

    Returns:
        The problem in one line ending with how to fix it (:data:`LABEL_GRID_FIX`), or ``None``.
    """
    problem = same_grid_problem(f"label {label}", label_shape, label_affine, f"image {image}", image_shape,
                                image_affine, reoriented=True)  # fmt: skip
    return None if problem is None else problem + LABEL_GRID_FIX

