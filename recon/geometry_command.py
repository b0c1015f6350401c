"""``medgmae-recon geometry``: a ``geometry.json`` from RTK's circular geometry XML (:mod:`recon.rtk_geometry`).

RTK's XML holds the source, detector and angles of each view but neither the detector's pixel count and pitch nor the
volume to reconstruct: the detector comes from the projection stack (``--projections``: a MetaImage / NRRD header's
size and spacing, read without its pixels, and its origin's offset from RTK's centred one, added to
``ProjectionOffsetX/Y``; another stack's shape with ``--det-spacing``) or from ``--det-shape`` and ``--det-spacing``;
the volume from ``--volume-shape`` and ``--voxel-size``, centred on the isocentre. ProjectionOffsetX/Y that vary
across the views (a flexmap) become a per-view ``det_offset``. A header origin off the centred one beside nonzero
ProjectionOffsetX/Y is refused before the two are added; the geometry is then checked as every command checks it
(the detector must cover the volume, or its wide side over a full turn; an error names the header origin's share)
and written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medgmae.folder_lock import folder_made
from recon.commands import CLIError, check_out_file
from recon.detector_offset import describe_offset, offset_array, per_view
from recon.geometry import CTGeometry

__all__ = ["cmd_geometry", "stack_detector"]


def stack_detector(path: str, det_spacing: tuple[float, float] | None) -> tuple[int, tuple[int, int], tuple[float, float] | None]:
    """The views, detector ``(rows, cols)`` and pitch ``(row, col)`` of a projection stack.

    Args:
        path: the stack (layouts of :func:`recon.scan_files.load_projections`).
        det_spacing: ``--det-spacing`` ``(row, col)`` mm, or ``None``: a MetaImage / NRRD header's spacing.

    Returns:
        ``(views, (rows, cols), (row, col) pitch)``; the pitch is ``None`` where neither states it.

    Raises:
        ValueError: an unreadable stack (naming the file).
    """
    from recon.scan_files import ITK_HEADERS, detector_stack_shape, itk_header

    p = Path(path)
    if p.name.lower().endswith(ITK_HEADERS) and p.is_file():
        try:
            info = itk_header(p)
        except RuntimeError as e:
            raise ValueError(f"projections {path}: header not readable: {e}") from e
        size, spacing = info.GetSize(), info.GetSpacing()
        if len(size) != 3:
            raise ValueError(f"projections {path} must be a 3D stack (column, row, view), got size {tuple(size)}")
        pitch = det_spacing if det_spacing is not None else (float(spacing[1]), float(spacing[0]))
        return int(size[2]), (int(size[1]), int(size[0])), pitch
    views, rows, cols = detector_stack_shape(p)
    return views, (rows, cols), det_spacing


def _pair(value, flag: str) -> tuple | None:
    """A flag of one or two numbers as ``(row, col)``."""
    if value is None:
        return None
    if len(value) not in (1, 2):
        raise CLIError(f"{flag} takes one value or two (row, col), got {len(value)}")
    return tuple(value) * (2 if len(value) == 1 else 1)


def _detector(args, views: int) -> tuple[tuple[int, int], tuple[float, float], tuple[float, float] | None]:
    """``(det_shape, det_spacing, origin offset)`` from ``--projections`` or ``--det-shape`` / ``--det-spacing``."""
    from recon.stack_header import check_projection_header

    spacing = _pair(args.det_spacing, "--det-spacing")
    if args.projections is None:
        if args.det_shape is None or spacing is None:
            raise CLIError("RTK's geometry holds no detector size or pitch: give --projections (the stack) or both "
                           "--det-shape ROWS COLS and --det-spacing")  # fmt: skip
        return tuple(args.det_shape), spacing, None
    if args.det_shape is not None:
        raise CLIError("--det-shape and --projections both give the detector: give one")
    try:
        n, shape, pitch = stack_detector(args.projections, spacing)
        if pitch is None:
            raise CLIError(f"projections {args.projections} state no detector pitch: give --det-spacing")
        origin = check_projection_header(args.projections, pitch, shape)
    except ValueError as e:
        raise CLIError(str(e)) from e
    if n != views:
        raise CLIError(f"projections {args.projections} hold {n} views but RTK geometry {args.rtk} has {views} "
                       "projections")  # fmt: skip
    return shape, pitch, origin


def cmd_geometry(args) -> int:
    """``geometry``: convert an RTK geometry XML (``--rtk``) into ``geometry.json`` (``--out``)."""
    from recon.rtk_geometry import read_rtk_geometry, rtk_to_ct_geometry

    out = check_out_file(args.out, "--out", (".json",))
    try:
        scan = read_rtk_geometry(args.rtk)
    except ValueError as e:
        raise CLIError(str(e)) from e
    shape, pitch, origin = _detector(args, scan.num_views)
    _check_origin(args, scan, origin)
    try:
        geom = rtk_to_ct_geometry(scan, args.volume_shape, tuple(args.voxel_size), shape, pitch, origin)
    except ValueError as e:
        raise CLIError(f"RTK geometry {args.rtk} on that volume and detector{_header_share(args, origin)}: {e}") from e
    if scan.collimated:
        print(f"warning: RTK geometry {args.rtk} states a collimation, which the toolkit does not model: the rays it "
              "blocks are read as measured", flush=True)  # fmt: skip
    replaced = " (it replaced the file of that name)" if out.exists() else ""
    with folder_made(out.parent):  # a write that fails (a full disk) leaves no folder it made
        geom.save(out)
    print(_summary(geom, args.rtk, out) + replaced)
    return 0


def _header_share(args, origin: tuple[float, float] | None) -> str:
    """What a conversion error owes to the stack header's origin: ``""`` for a centred origin (or none)."""
    if origin in (None, (0.0, 0.0)):
        return ""
    return (f", with the detector shifted by the header's origin of projections {args.projections}, which puts the "
            f"detector centre (u, v) = {origin} mm off RTK's centred origin -(n - 1) / 2 * spacing (RTK adds that to "
            "ProjectionOffsetX/Y; an origin of 0, ITK's default, is not centred: write the stack with the centred "
            "origin)")  # fmt: skip


def _check_origin(args, scan, origin: tuple[float, float] | None) -> None:
    """Refuse a stack whose header origin shifts the detector beside the XML's ProjectionOffsetX/Y, before the two
    are added: ``fbp`` and ``reconstruct`` read a stack's origin as the whole offset and would refuse the pair."""
    if origin in (None, (0.0, 0.0)) or scan.projection_offset == (0.0, 0.0):
        return
    many = per_view(scan.projection_offset)
    total = offset_array(scan.projection_offset, scan.num_views) + np.asarray(origin, dtype=np.float64)
    added = tuple(map(tuple, total.tolist())) if many else tuple(total[0].tolist())
    raise CLIError(
        f"projections {args.projections}: the header's origin shifts the detector by {origin} mm beside RTK "
        f"geometry {args.rtk}'s ProjectionOffsetX/Y {describe_offset(scan.projection_offset)} mm; RTK adds the two "
        f"(det_offset {describe_offset(added)} mm), but fbp and reconstruct read a stack's origin as the whole "
        "offset and would refuse the pair: write the stack with RTK's centred origin -(n - 1) / 2 * spacing, then "
        "convert again")  # fmt: skip


def _summary(geom: CTGeometry, rtk: str, out: Path) -> str:
    """The line that names what was written."""
    beam = "parallel beam" if geom.kind == "parallel" else f"cone beam, SID {geom.source_origin:g} mm, SDD {geom.source_detector:g} mm"
    fan = ", half-fan" if geom.half_fan else ""
    return (f"wrote {out} from RTK geometry {rtk}: {geom.num_views} views, {beam}, detector {geom.det_shape[0]} x "
            f"{geom.det_shape[1]} (rows x cols) of {geom.det_spacing[0]:g} x {geom.det_spacing[1]:g} mm, det_offset "
            f"{describe_offset(geom.det_offset)} mm{fan}, volume {'x'.join(map(str, geom.volume_shape))} (z, y, x) of "
            f"{'x'.join(f'{v:g}' for v in geom.voxel_size)} mm")
