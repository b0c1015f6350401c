"""The detector offset of :class:`recon.geometry.CTGeometry`: one ``(u, v)`` for all views, or one per view.

A flexmap (a real CBCT's gantry sags, so the detector's offset changes by a few mm over the turn, as RTK's
per-projection ``ProjectionOffsetX/Y`` state) is a ``det_offset`` that lists one ``[u, v]`` per view. This module
parses either form, gives the per-view ``(views, 2)`` array every user of the offset reads, and checks what the
geometry needs of it: finite, one pair per view, the central ray on the detector in every view, and the detector
covering the volume in every view (the worst view decides: its nearer edge for a centred scan, its wide side for a
half-fan scan, whose views must then all have their offset on the same side).
"""

from __future__ import annotations

import numpy as np

from recon.angle_checks import full_turn
from recon.geometry_fields import NO_OFFSET, offset_pair

__all__ = ["offset_field", "per_view", "offset_array", "describe_offset", "check_offsets", "coverage", "check_coverage",
           "max_abs", "wide_side"]


def _is_sequence(value) -> bool:
    return hasattr(value, "__len__") and not isinstance(value, (str, bytes, dict))


def offset_field(value) -> tuple:
    """``det_offset`` as ``(u, v)`` floats, or, for a list of pairs, a tuple of ``(u, v)`` per view.

    A list with any entry that is itself a list is read as one pair per view, so that one bad entry (a ``null``) is
    named by its index rather than the whole list being read as one pair.

    Raises:
        ValueError: neither two numbers nor a list of pairs, naming the entry at fault.
    """
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if _is_sequence(value) and any(_is_sequence(e) for e in value):
        pairs = []
        for i, entry in enumerate(value):
            try:
                pairs.append(offset_pair(entry))
            except ValueError as e:
                raise ValueError(f"det_offset[{i}] (view {i}'s offset): {e}") from None
        return tuple(pairs)
    return offset_pair(value)


def per_view(det_offset: tuple) -> bool:
    """Whether ``det_offset`` (as :func:`offset_field` gives it) lists one pair per view."""
    return len(det_offset) > 0 and isinstance(det_offset[0], tuple)


def offset_array(det_offset: tuple, num_views: int) -> np.ndarray:
    """``(num_views, 2)`` float64: each view's ``(u, v)`` offset in mm (one pair repeated for every view)."""
    if per_view(det_offset):
        return np.asarray(det_offset, dtype=np.float64).reshape(-1, 2)
    return np.tile(np.asarray(det_offset, dtype=np.float64), (num_views, 1))


def describe_offset(det_offset: tuple) -> str:
    """``det_offset`` for a message (mm, the unit left to the caller): the pair, or the range of a per-view list."""
    if not per_view(det_offset):
        return str(tuple(det_offset))
    a = np.asarray(det_offset, dtype=np.float64)
    return (f"per view ({len(a)} views), u from {a[:, 0].min():g} to {a[:, 0].max():g}, v from {a[:, 1].min():g} "
            f"to {a[:, 1].max():g}")  # fmt: skip


def check_offsets(det_offset: tuple, num_views: int, det_shape: tuple, det_spacing: tuple) -> None:
    """Raise ``ValueError`` unless every view's offset is finite and keeps the central ray on the detector, and a
    per-view list has one pair per view."""
    many = per_view(det_offset)
    if many and len(det_offset) != num_views:
        raise ValueError(f"det_offset lists {len(det_offset)} (u, v) pairs but the scan has {num_views} views: give one "
                         "pair for all views or one per view")  # fmt: skip
    off = offset_array(det_offset, num_views)
    if not np.isfinite(off).all():
        bad = int(np.argmax(~np.isfinite(off).all(1)))
        shown = f"{tuple(float(x) for x in off[bad])} in view {bad}" if many else str(tuple(det_offset))
        raise ValueError(f"det_offset (u, v) must be finite mm, got {shown}")
    half_w = det_shape[1] * det_spacing[1] / 2
    half_h = det_shape[0] * det_spacing[0] / 2
    k = int(np.argmax(np.abs(off[:, 0])))
    where = f" in view {k}" if many else ""
    if abs(off[k, 0]) >= half_w:
        raise ValueError(
            f"det_offset u = {off[k, 0]:g} mm{where} puts the central ray off the detector (half its width is "
            f"{half_w:g} mm): a half-fan (offset-detector) scan needs the detector to reach past the central ray, "
            "where the rays seen from both sides are weighted"
        )
    k = int(np.argmax(np.abs(off[:, 1])))
    if abs(off[k, 1]) >= half_h:
        raise ValueError(f"det_offset v = {off[k, 1]:g} mm{' in view ' + str(k) if many else ''} puts the central ray "
                         f"off the detector (half its height is {half_h:g} mm)")  # fmt: skip


def coverage(g) -> tuple[float, float, float, float, float]:
    """``(det_w, det_h, need_w, need_h, tol)`` in mm on the detector of the geometry ``g``: what it covers
    symmetrically about the central ray in its worst view (an offset detector: within its nearer edge), what the
    volume's inscribed cylinder needs, and the tolerance of the comparison."""
    half = [0.5 * n * s for n, s in zip(g.volume_shape, g.voxel_size)]
    off = np.abs(offset_array(g.det_offset, g.num_views))
    det_w = g.det_shape[1] * g.det_spacing[1] - 2 * float(off[:, 0].max())
    det_h = g.det_shape[0] * g.det_spacing[0] - 2 * float(off[:, 1].max())
    mag = 1.0 if g.kind == "parallel" else g.source_detector / g.source_origin
    return det_w, det_h, 2 * min(half[1], half[2]) * mag, 2 * half[0] * mag, 1e-6 + 1e-3 * max(det_w, det_h)


def check_coverage(g) -> None:
    """Raise ``ValueError`` unless the detector of the geometry ``g`` covers the volume in every view: about the
    central ray, or, a half-fan scan, with its wide side over a full turn (the offsets of all views on one side)."""
    det_w, det_h, need_w, need_h, tol = coverage(g)
    u = offset_array(g.det_offset, g.num_views)[:, 0]
    wide_reach = g.det_shape[1] * g.det_spacing[1] / 2 + float(np.abs(u).min())
    if det_h + tol >= need_h and det_w + tol < need_w and wide_reach + tol / 2 >= need_w / 2:
        if not full_turn(g.angles):
            raise ValueError(
                f"the detector covers {det_w:.2f} mm about the central ray (less twice its offset u = "
                f"{_u_text(g.det_offset)} mm) where the volume needs {need_w:.2f} mm: such a half-fan (offset-detector) "
                "scan covers the volume only with views all round (360 degrees), and these angles leave a gap")  # fmt: skip
        if (u > 0).any() and (u < 0).any():
            k = int(np.argmax(np.abs(u)))
            raise ValueError(
                f"detector too small for the volume in view {k}: it covers {det_w:.2f} mm about the central ray there "
                f"(less twice its offset u = {u[k]:g} mm) where the volume needs {need_w:.2f} mm; nor is this a "
                f"half-fan scan, as det_offset u changes side across the views ({_u_text(g.det_offset)} mm) and a "
                "half-fan detector must reach past the central ray on the same side in every view")  # fmt: skip
        return  # a half-fan scan: each ray is seen from one side or the other
    if det_w + tol < need_w or det_h + tol < need_h:
        shifted = "" if g.det_offset == NO_OFFSET else (
            f" about the central ray (the detector less twice its offset (u, v) {describe_offset(g.det_offset)} mm"
            f"{', in the worst view' if per_view(g.det_offset) else ''})")  # fmt: skip
        raise ValueError(
            f"detector too small for the volume: {det_w:.2f} x {det_h:.2f} mm (cols x rows){shifted} but the "
            f"volume needs at least {need_w:.2f} x {need_h:.2f} mm at the detector"
        )


def _u_text(det_offset: tuple) -> str:
    """The offset ``u`` for a message: the number, or the range over the views."""
    if not per_view(det_offset):
        return f"{det_offset[0]:g}"
    u = [p[0] for p in det_offset]
    return f"{min(u):g} to {max(u):g} (per view)"


def max_abs(det_offset: tuple) -> tuple[float, float]:
    """The largest ``|u|`` and ``|v|`` over the views."""
    a = np.abs(offset_array(det_offset, 1))  # a per-view list gives every view
    return float(a[:, 0].max()), float(a[:, 1].max())


def wide_side(det_offset: tuple) -> float:
    """The side of the central ray the detector reaches further: ``1.0`` toward ``+u``, ``-1.0`` toward ``-u``.

    It is the sign of ``u`` in the view where ``|u|`` is largest (the first such view), so that a view centred on
    the central ray (``u = 0``) or offset slightly the other way does not decide a half-fan scan's side (whose views
    must all be offset to one side, :func:`check_coverage`); ``1.0`` when no view is offset.
    """
    u = offset_array(det_offset, 1)[:, 0]  # a per-view list gives every view
    return -1.0 if u[int(np.argmax(np.abs(u)))] < 0 else 1.0
