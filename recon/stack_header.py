"""What a MetaImage / NRRD (or NIfTI) projection stack's header says about the detector: its pixel pitch, checked
against ``geometry.json``, its direction, which must be the identity, and the detector offset its origin states
under RTK's convention, taken into the geometry or refused (:func:`check_projection_header`,
:func:`with_header_offset`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recon.scan_files import CENTRED_TOLERANCE, ITK_HEADERS, itk_header

__all__ = ["check_projection_header", "with_header_offset"]


def check_projection_header(path, det_spacing: tuple[float, float], det_shape: tuple[int, int]) -> tuple[float, float] | None:
    """The detector offset a MetaImage / NRRD projection stack's header states; refuse a header (NIfTI included)
    that states another detector pitch than ``geometry.json``.

    RTK stores a stack's detector pitch as its spacing ``(col, row, ·)`` and the detector's position as its origin:
    a centred detector has ``origin = -(n - 1) / 2 * spacing`` along each detector axis, and an origin beyond that
    is the detector's offset ``(u, v) = origin + (n - 1) / 2 * spacing`` (RTK's convention; the geometry's
    ``det_offset``, :mod:`recon.geometry`). A header that states nothing (spacing 1, origin 0, ITK's defaults)
    passes; another pitch, or a direction other than the identity, is refused. A NIfTI stack's pixel size
    (``pixdim``, 1 when not stated) is checked the same way; its origin is not read (NIfTI has no detector
    convention for it).

    Args:
        path: the projection file (other endings than MetaImage / NRRD / NIfTI are not checked).
        det_spacing: ``geometry.json``'s detector pitch ``(row, col)`` in mm.
        det_shape: its detector ``(rows, cols)``.

    Returns:
        ``(offset_u, offset_v)`` in mm as the header's origin states it (``(0.0, 0.0)`` for a centred detector's
        origin, to a thousandth of a pixel), or ``None`` where the header states none (ITK's defaults, a NIfTI, other).

    Raises:
        ValueError: naming the file, the header's values and the geometry's.
    """
    path = Path(path)
    if path.name.lower().endswith((".nii", ".nii.gz")):  # its pixdim: the pitch (its origin is a world position)
        from medgmae.data.reader import load_nifti  # as the stack itself was read (a .nii.gz not gzipped too)

        spacing, origin = np.asarray(load_nifti(path).header.get_zooms()[:2], float), None
    elif path.name.lower().endswith(ITK_HEADERS):
        info = itk_header(path)
        spacing, origin = np.asarray(info.GetSpacing()[:2], float), np.asarray(info.GetOrigin()[:2], float)
        _check_identity_direction(path, np.asarray(info.GetDirection(), float))
    else:
        return None
    pitch, n = np.asarray(det_spacing[::-1], float), np.asarray(det_shape[::-1], float)  # (col, row) as ITK's (x, y)
    stated = not np.allclose(spacing, 1.0) or (origin is not None and not np.allclose(origin, 0.0))
    if not stated:
        return None
    mm = lambda v: "(" + ", ".join(f"{float(x):.4g}" for x in v) + ")"  # noqa: E731
    if not np.allclose(spacing, pitch, rtol=1e-3):
        raise ValueError(f"projections {path}: the header's detector pixel spacing (col, row) {mm(spacing)} mm differs "
                         f"from geometry.json's det_spacing (col, row) {mm(pitch)} mm")  # fmt: skip
    if origin is None:
        return None
    offset = origin + (n - 1) / 2 * spacing  # zero for a centred detector (RTK's convention)
    offset[np.abs(offset) <= CENTRED_TOLERANCE * spacing] = 0.0  # a centred origin as rounded (float32 headers)
    return float(offset[0]), float(offset[1])


def with_header_offset(geom, offset: tuple[float, float] | None, path):
    """``geom`` (a :class:`~recon.geometry.CTGeometry`) with the detector offset a projection stack's header origin
    states (:func:`check_projection_header`): taken, with a note, where ``geometry.json`` has none; refused where it
    states another one. RTK's centred origin (offset ``(0, 0)``) states none and keeps ``geometry.json``'s, as RTK
    keeps its geometry's ``ProjectionOffsetX/Y`` for a centred projection image.

    Args:
        geom: the geometry as ``geometry.json`` gives it.
        offset: the header's ``(u, v)`` offset in mm, or ``None`` (no origin stated).
        path: the projection file, as messages name it.

    Returns:
        The geometry to reconstruct with.

    Raises:
        ValueError: the two offsets differ (by more than a thousandth of a pixel), or the header's leaves the central
            ray off the detector or the volume unseen (the geometry's checks), naming the file.
    """
    from recon.geometry import NO_OFFSET, CTGeometry

    if offset is None or offset == NO_OFFSET:
        return geom
    shown = "(" + ", ".join(f"{float(v):.6g}" for v in offset) + ")"  # float32 headers: 81.00000099271307 as 81
    stated = f"projections {path}: the header's origin puts the detector centre (u, v) = {shown} mm off the central ray"
    if geom.per_view_offset:
        raise ValueError(f"{stated}, but the geometry has one det_offset per view: write the stack with RTK's centred "
                         "origin -(n - 1) / 2 * spacing, which keeps the geometry's offsets")  # fmt: skip
    if np.allclose(offset, geom.det_offset, rtol=0, atol=CENTRED_TOLERANCE * min(geom.det_spacing)):
        return geom
    hint = _default_origin_hint(geom, offset)
    if geom.det_offset != NO_OFFSET:
        raise ValueError(f"{stated}, but the geometry has det_offset {geom.det_offset} mm: make them agree{hint}")
    try:
        shifted = CTGeometry.from_dict({**geom.to_dict(), "det_offset": offset})
    except ValueError as e:
        raise ValueError(f"{stated}, and with that detector offset: {e}{hint}") from e
    print(f"note: {stated}: reconstructing with that detector offset (det_offset; the geometry has none)", flush=True)
    return shifted


def _default_origin_hint(geom, offset: tuple[float, float]) -> str:
    """Advice for a header offset that is what an origin of ``(0, 0)`` (ITK's default, which SimpleITK and most
    writers store unless told) means under RTK's convention: detector pixel ``(0, 0)`` on the central ray. A
    writer that set the spacing alone leaves it there, for a detector that was centred; ``""`` for other offsets."""
    (row_mm, col_mm), (rows, cols) = geom.det_spacing, geom.det_shape
    corner = ((cols - 1) / 2 * col_mm, (rows - 1) / 2 * row_mm)
    if not np.allclose(offset, corner, rtol=0, atol=CENTRED_TOLERANCE * min(row_mm, col_mm)):
        return ""
    return (f" (the header's origin is (0, 0), ITK's default: read as RTK does, it puts detector pixel (0, 0) on the "
            f"central ray; for a centred detector write the stack with RTK's centred origin -(n - 1) / 2 * spacing, "
            f"(x, y) = ({-corner[0]:.6g}, {-corner[1]:.6g}) mm (SimpleITK: image.SetOrigin), or save it as .npy)")


def _check_identity_direction(path: Path, direction: np.ndarray) -> None:
    """Refuse a MetaImage / NRRD stack whose header direction is not the identity: its stored columns, rows or
    views would run otherwise than the array's, which ``geometry.json`` describes (RTK writes the identity; what a
    flipped direction means for a detector is a convention nothing here can check, so it is not guessed)."""
    n = int(round(np.sqrt(direction.size)))
    if not np.allclose(direction.reshape(n, n), np.eye(n), atol=1e-6):
        rows = "; ".join(" ".join(f"{v:g}" for v in r) for r in direction.reshape(n, n))
        raise ValueError(f"projections {path}: the header's direction ({rows}) is not the identity, so its columns, rows "
                         "or views are stored flipped or permuted, and reading the array as geometry.json describes it "
                         "would mirror the scan; write the stack with the identity direction (SimpleITK: "
                         "image.SetDirection(numpy.eye(3).ravel())), its array in (view, row, column) order as "
                         "geometry.json has it")  # fmt: skip
