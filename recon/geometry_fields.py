"""Parsing and checks of :class:`recon.geometry.CTGeometry`'s fields: numbers, whole numbers, the angles, the
detector offset, the cone beam's source distances and the carried affine, each refused with a ``ValueError`` naming the field;
the factories' arguments, checked before they are computed with; a boolean mask of views as their indices."""

from __future__ import annotations

import math

import numpy as np
import torch

from medgmae.whole_numbers import positive_count
from recon.angle_checks import TURN_RTOL

__all__ = ["AFFINE_RTOL", "NO_OFFSET", "entries", "number", "floats", "ints", "positive", "offset_pair", "angle_list",
           "equispaced_angles", "factory_args", "source_distance", "view_indices", "affine_list", "check_affine",
           "check_source"]

#: Relative tolerance of the check that the affine's column norms are the voxel sizes.
AFFINE_RTOL = 1e-3
#: A centred detector's ``det_offset`` ``(u, v)`` in mm.
NO_OFFSET = (0.0, 0.0)


def entries(name: str, value, n: int, axes: str, repeat: bool = True) -> tuple:
    """``value`` as ``n`` entries: a list of ``n`` (or, where ``repeat``, of one, repeated, or a single value
    repeated); a string is a single value (not a list of characters)."""
    try:
        t = (value,) if isinstance(value, (str, bytes)) else tuple(value)
    except TypeError:
        t = (value,)
    if len(t) == 1 and repeat:
        t = t * n
    if len(t) != n:
        raise ValueError(f"{name} must have {n} entries ({axes}), got {value!r}")
    return t


def number(name: str, value, shown=None) -> float:
    """``value`` as a float; ``ValueError`` naming ``name`` (and ``shown``, the whole field) for a non-number."""
    if isinstance(value, (str, bytes, bool)) or value is None:
        raise ValueError(f"{name} must hold numbers, got {value if shown is None else shown!r}")
    try:
        return float(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must hold numbers, got {value if shown is None else shown!r}") from e


def floats(name: str, value, n: int, axes: str, repeat: bool = True) -> tuple:
    """``n`` numbers (one repeated where ``repeat``: an isotropic voxel size or detector pitch)."""
    return tuple(number(name, v, value) for v in entries(name, value, n, axes, repeat))


def ints(name: str, value, n: int, axes: str) -> tuple:
    """``n`` whole numbers (``20.0`` is 20); a fraction such as ``20.7`` is refused rather than truncated, and so is
    a single number (a shape of one number is ambiguous: ``det_shape [29]`` is a typo more often than a square
    detector, and repeating it led to errors about another field)."""
    out = floats(name, value, n, axes, repeat=False)
    if not all(v.is_integer() for v in out):
        raise ValueError(f"{name} must be whole numbers, got {value!r}")
    return tuple(int(v) for v in out)


def positive(name: str, vals: tuple) -> tuple:
    """``vals`` unchanged; ``ValueError`` naming ``name`` unless each is positive and finite."""
    if not all(math.isfinite(v) and v > 0 for v in vals):
        raise ValueError(f"{name} must be positive and finite, got {vals}")
    return vals


def offset_pair(value) -> tuple:
    """``det_offset`` as two floats ``(u, v)``: exactly two numbers (a single one is not repeated, as it is for the
    spacings: the two axes' offsets are unrelated)."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise ValueError(f"det_offset must be two numbers (u, v) in mm, got {value!r}")
    return tuple(number("det_offset", v, value) for v in value)


def angle_list(angles) -> tuple:
    """The projection angles as a tuple of floats (a tuple, so that a made geometry's angles cannot be changed in
    place); ``ValueError`` for a missing (null) or non-numeric field, or angles of more than one axis (a 2-D array is
    not read as views one row after another)."""
    if angles is None:
        raise ValueError("angles is null: give the projection angles as a list of numbers (radians)")
    if isinstance(angles, torch.Tensor):  # any dtype or device, with or without grad: the values, on the host
        angles = angles.detach().to("cpu", torch.float64).numpy()
    try:
        a = np.asarray(angles, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"angles must be a list of numbers (radians), got {str(angles)[:80]!r}") from e
    if a.ndim > 1:
        raise ValueError(f"angles must be a 1-D list of numbers (radians), got shape {a.shape}")
    return tuple(float(v) for v in a.reshape(-1))


def equispaced_angles(num_angles: int, arc_deg: float, angles) -> list:
    """``angles`` as floats when given, else ``num_angles`` equispaced views over ``arc_deg``: ``arc * i / n``
    (radians). An ``arc_deg`` within 1 % of a quarter, half, three quarters or a full turn in radians (``pi / 2`` ...
    ``2 pi``) is refused: an arc given in radians, as :func:`recon.angle_checks.check_degrees` refuses angles in
    degrees that span a turn (another short arc of a few degrees is taken)."""
    if angles is not None:
        return list(angle_list(angles))
    n = positive_count(num_angles, "num_angles")
    arc = number("arc_deg", arc_deg)
    if not (math.isfinite(arc) and arc > 0):
        raise ValueError(f"arc must be a positive number of degrees, got {arc_deg}")
    for quarters, words in ((1, "a quarter"), (2, "half a"), (3, "three quarters of a"), (4, "a full")):
        if abs(arc - quarters * math.pi / 2) <= TURN_RTOL * quarters * math.pi / 2:
            raise ValueError(f"arc_deg is {arc:.4g}: {words} turn in radians, while arc_deg is in degrees; give the "
                             "arc in degrees (numpy.rad2deg(arc), e.g. 180 or 360)")  # fmt: skip
    return list(np.deg2rad(arc) * np.arange(n) / n)


def source_distance(name: str, value) -> float | None:
    """A cone beam's ``source_origin`` or ``source_detector`` as a positive finite float (``None`` stays ``None``:
    the factory's default); ``ValueError`` naming ``name`` otherwise."""
    v = None if value is None else number(name, value)
    if v is not None and not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a positive finite distance in mm, got {value!r}")
    return v


def factory_args(volume_shape, voxel_size, det_spacing, num_angles, arc_deg, angles) -> tuple:
    """The arguments :meth:`recon.geometry.CTGeometry.parallel` and ``cone`` compute with, checked first (so that a
    bad one is named, not met as an error of the arithmetic).

    Args:
        volume_shape: ``(D, H, W)``, three positive whole numbers.
        voxel_size: one positive finite number or three.
        det_spacing: ``None`` (the factory's default), or one positive finite number or two.
        num_angles: a positive int (when ``angles`` is ``None``).
        arc_deg: the arc in degrees (when ``angles`` is ``None``).
        angles: ``None``, or a 1-D list of angles in radians.

    Returns:
        ``(volume_shape, voxel_size, det_spacing, angles)`` as tuples of ints and floats (``det_spacing`` may be
        ``None``) and a list of floats.
    """
    shape = ints("volume_shape", volume_shape, 3, "z, y, x")
    if any(s <= 0 for s in shape):
        raise ValueError(f"volume_shape must be positive, got {shape}")
    vs = positive("voxel_size", floats("voxel_size", voxel_size, 3, "z, y, x"))
    if det_spacing is not None:
        det_spacing = positive("det_spacing", floats("det_spacing", det_spacing, 2, "rows, cols"))
    return shape, vs, det_spacing, equispaced_angles(num_angles, arc_deg, angles)


def view_indices(views, num_views: int):
    """``views`` as given, or, for a boolean mask with one entry per view, the indices of the views it selects
    (``numpy.flatnonzero``); a boolean mask of another length is refused, naming both lengths."""
    if isinstance(views, (list, tuple)):
        mask = len(views) > 0 and all(isinstance(v, (bool, np.bool_)) for v in views)
    else:  # an array or tensor by its dtype: an index tensor on a GPU is not copied here
        mask = str(getattr(views, "dtype", "")) in ("bool", "torch.bool")
    if not mask:
        return views
    a = np.asarray(views.cpu() if hasattr(views, "cpu") else views)
    if a.ndim != 1 or a.size != num_views:
        raise ValueError(f"views as a boolean mask must have one entry per view ({num_views}), got {a.size} entries")
    return np.flatnonzero(a).tolist()


def affine_list(affine) -> tuple | None:
    """``affine`` as a finite 4x4 nested tuple, rows of floats (``None`` stays ``None``); raises ``ValueError``
    otherwise."""
    if affine is None:
        return None
    try:
        a = np.asarray(affine, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"affine must be a 4x4 matrix of numbers, got {affine!r}") from e
    if a.shape != (4, 4):
        raise ValueError(f"affine must be a 4x4 matrix, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"affine must be finite (found NaN or Inf):\n{a}")
    return tuple(tuple(row) for row in a.tolist())


def check_affine(affine: list, voxel_size: tuple) -> None:
    """Raise ``ValueError`` unless the finite 4x4 ``affine`` (array order ``(x, y, z)``) is a non-singular
    voxel-to-world map with last row ``0 0 0 1`` whose column norms are ``voxel_size`` ``(sz, sy, sx)`` reversed."""
    a = np.asarray(affine, dtype=np.float64)
    if not np.array_equal(a[3], [0.0, 0.0, 0.0, 1.0]):
        raise ValueError(f"affine's last row must be 0 0 0 1, got {a[3].tolist()}")
    lin = a[:3, :3]
    norms = np.linalg.norm(lin, axis=0)
    if not norms.all() or abs(np.linalg.det(lin)) <= 1e-6 * float(np.prod(norms)):
        raise ValueError(f"affine is singular (not a voxel-to-world map):\n{a}")
    expected = np.asarray(voxel_size[::-1], dtype=np.float64)
    if not np.allclose(norms, expected, rtol=AFFINE_RTOL, atol=0.0):
        raise ValueError(f"affine's column norms {tuple(round(float(n), 6) for n in norms)} (x, y, z) contradict voxel_size "
                         f"{tuple(voxel_size)} (z, y, x), i.e. {tuple(expected.tolist())} (x, y, z)")  # fmt: skip


def check_source(so: float | None, sd: float | None, volume_shape: tuple, voxel_size: tuple) -> None:
    """Raise ``ValueError`` unless a cone beam's source-isocentre ``so`` and source-detector ``sd`` distances (mm) are
    given, positive, finite, ordered (``sd >= so``) and put the source outside the volume's bounding cylinder."""
    half = [0.5 * n * s for n, s in zip(volume_shape, voxel_size)]
    r_xy = math.hypot(half[1], half[2])
    if so is None or sd is None:
        raise ValueError("a cone-beam geometry needs source_origin and source_detector (mm)")
    if not (math.isfinite(so) and math.isfinite(sd) and so > 0 and sd > 0):
        raise ValueError(f"source distances must be positive and finite, got {so}, {sd}")
    if sd < so:
        raise ValueError(f"source_detector ({sd} mm) must be at least source_origin ({so} mm)")
    if so <= r_xy:
        raise ValueError(f"source_origin ({so} mm) must lie outside the volume (radius {r_xy:.2f} mm)")
