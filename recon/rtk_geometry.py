"""RTK's circular geometry XML (``rtk.ThreeDCircularProjectionGeometryXMLFileWriter``, as ``rtksimulatedgeometry``,
``rtkelektasynergygeometry`` or ``rtkvarianobigeometry`` write it) read as a :class:`recon.geometry.CTGeometry`.

RTK describes each projection by nine numbers (``documentation/docs/Geometry.md`` and
``rtkThreeDCircularProjectionGeometry.cxx``): ``GantryAngle``, ``OutOfPlaneAngle`` and ``InPlaneAngle`` in degrees,
``SourceToIsocenterDistance`` (SID), ``SourceToDetectorDistance`` (SDD, 0 for a parallel beam), ``SourceOffsetX/Y``
and ``ProjectionOffsetX/Y`` in mm. A value written at the top level holds for every projection, and the reader keeps
each value until a later element gives another (RTK's reader does the same). RTK's fixed frame ``(x, y, z)`` has its
rotation axis along ``y``; with the other angles and the source offsets zero, the volume is rotated by
``Ry(-GantryAngle)`` into the rotated frame, where the source sits at ``(0, 0, SID)``, the detector plane at
``z = SID - SDD``, and a point of the projection image at physical coordinates ``(u, v)`` (ITK's origin + index x
spacing, ``x`` the column and ``y`` the row) at ``(u + ProjectionOffsetX, v + ProjectionOffsetY, SID - SDD)``. In the
fixed frame the source is at ``SID (sin g, 0, cos g)``, the image's column axis is ``(cos g, 0, -sin g)`` and its row
axis ``y``.

The toolkit's frame (:mod:`recon.geometry`) has its rotation axis along ``z``, the source at ``SO (sin t, -cos t, 0)``,
columns along ``(cos t, sin t, 0)`` and rows along ``z``. The rotation

    ``(x, y, z)_toolkit = (x_rtk, -z_rtk, y_rtk)``

(determinant +1: no mirror) takes each RTK view onto the toolkit's view at ``t = g`` (``GantryAngle`` in radians,
wrapped to [0, 2 pi) as RTK stores it): RTK's source direction ``(sin g, 0, cos g)`` becomes ``(sin g, -cos g, 0)``,
its column axis ``(cos g, 0, -sin g)`` becomes ``(cos g, sin g, 0)`` and its row axis ``y`` becomes ``z``. So
``angles = radians(GantryAngle)``, ``source_origin = SID``, ``source_detector = SDD`` (``kind`` parallel where SDD
is 0), and the stack's columns and rows are the toolkit's (a MetaImage stack is read with ``x`` the column, ``y`` the
row and ``z`` the view, as RTK writes it). The central ray (through the isocentre, ``u + ProjectionOffsetX = 0``)
meets the image at ``u = -ProjectionOffsetX``; the toolkit puts it ``det_offset_u`` from the centre towards column 0,
hence ``det_offset = (ProjectionOffsetX + h_u, ProjectionOffsetY + h_v)`` where ``h = origin + (n - 1) / 2 spacing``
is the offset of the stack's own origin from RTK's centred one (zero for a centred origin). An object at RTK's
``(x, y, z)`` is reconstructed at the toolkit's ``(x, -z, y)``, i.e. RTK's axial slices (``y`` constant) are the
toolkit's ``z`` slices, the volume centred on the isocentre.

What the toolkit's geometry holds is a circular scan with one source distance and one detector distance for all
views, the detector upright and facing the source, and a detector offset for all views or one per view: SID and SDD
must be constant across the views (within :data:`CONSTANT_MM`), OutOfPlaneAngle and InPlaneAngle zero (within
:data:`ZERO_DEGREES`), SourceOffsetX/Y zero (within :data:`CONSTANT_MM`) and the detector flat (no
``RadiusCylindricalDetector``). Anything else (a tilted panel, a varying source distance) is refused, naming the
file, the field and its range across the views. ProjectionOffsetX/Y that vary across the views by more than
:data:`CONSTANT_MM` (a flexmap: Elekta's and Varian's CBCT detectors shift by a few mm over the turn as the gantry
sags) become a per-view ``det_offset``; constant ones, one ``det_offset`` for all views, as before.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from recon.angle_checks import check_degrees
from recon.detector_offset import per_view
from recon.geometry import CTGeometry

__all__ = ["RTKScan", "read_rtk_geometry", "rtk_to_ct_geometry", "CONSTANT_MM", "ZERO_DEGREES", "RTK_FIELDS"]

#: Tolerance (mm) within which a distance or offset counts as the same for every view, or as zero.
CONSTANT_MM = 1e-3
#: Tolerance (degrees) within which OutOfPlaneAngle and InPlaneAngle count as zero.
ZERO_DEGREES = 1e-6
#: RTK's per-projection fields, with their defaults (RTK's reader starts from zero for each).
RTK_FIELDS = ("GantryAngle", "SourceToIsocenterDistance", "SourceToDetectorDistance", "ProjectionOffsetX",
              "ProjectionOffsetY", "OutOfPlaneAngle", "InPlaneAngle", "SourceOffsetX", "SourceOffsetY")  # fmt: skip
#: Element names RTK's reader accepts (compared without case) -> the field they set ("Angle": older files).
_NAMES = {**{f.lower(): f for f in RTK_FIELDS}, "angle": "GantryAngle"}
_COLLIMATION = ("collimationuinf", "collimationusup", "collimationvinf", "collimationvsup")
_ROOT, _VERSIONS = "RTKThreeDCircularGeometry", ("2", "3")


@dataclass(frozen=True)
class RTKScan:
    """A circular RTK scan the toolkit's geometry can hold.

    Attributes:
        path: the XML file.
        gantry_deg: ``GantryAngle`` of each view in degrees, wrapped to [0, 360).
        sid: SourceToIsocenterDistance in mm.
        sdd: SourceToDetectorDistance in mm (0: parallel beam).
        projection_offset: ``(ProjectionOffsetX, ProjectionOffsetY)`` in mm, or one such pair per view where they
            vary across the views (a flexmap).
        collimated: whether the file states a collimation (not modelled by the toolkit).
    """

    path: Path
    gantry_deg: np.ndarray
    sid: float
    sdd: float
    projection_offset: tuple
    collimated: bool = False

    @property
    def num_views(self) -> int:
        return int(self.gantry_deg.size)


def _parse(path: Path) -> tuple[dict[str, np.ndarray], bool, float]:
    """The nine fields of every ``Projection`` as arrays (RTK's reader semantics), whether a collimation is stated,
    and ``RadiusCylindricalDetector``; errors name the file."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise ValueError(f"RTK geometry {path} is not readable XML: {e}") from e
    except OSError as e:
        raise ValueError(f"RTK geometry {path} cannot be read: {e}") from e
    if root.tag != _ROOT:
        raise ValueError(f"RTK geometry {path}: its root element is <{root.tag}>, not <{_ROOT}> (the file "
                         "rtk.ThreeDCircularProjectionGeometryXMLFileWriter writes)")  # fmt: skip
    if root.get("version") not in _VERSIONS:
        raise ValueError(f"RTK geometry {path}: version {root.get('version')!r}; RTK's circular geometry files of "
                         f"versions {' and '.join(_VERSIONS)} are read")  # fmt: skip
    state = dict.fromkeys(RTK_FIELDS, 0.0)
    views: list[dict] = []
    extra = {"collimated": False, "radius": 0.0}

    def take(element: ET.Element, where: str) -> None:
        name = element.tag.lower()
        if name not in _NAMES and name not in _COLLIMATION and name != "radiuscylindricaldetector":
            return  # Matrix (derived from the fields) and anything else RTK's reader ignores
        try:
            value = float((element.text or "").strip())
        except ValueError:
            raise ValueError(f"RTK geometry {path}: <{element.tag}> of {where} is {element.text!r}, not a number") from None
        if name in _NAMES:
            state[_NAMES[name]] = value
        elif name in _COLLIMATION:
            extra["collimated"] |= math.isfinite(value) and value < 1e300  # RTK's default is the largest double
        else:
            extra["radius"] = value

    for child in root:
        if child.tag.lower() == "projection":
            for element in child:
                take(element, f"projection {len(views)}")
            views.append(dict(state))
        else:
            take(child, "the global values")
    if not views:
        raise ValueError(f"RTK geometry {path} holds no <Projection>")
    return {f: np.array([v[f] for v in views]) for f in RTK_FIELDS}, extra["collimated"], extra["radius"]


def _range(values: np.ndarray) -> str:
    lo, hi = int(np.argmin(values)), int(np.argmax(values))
    return f"from {values[lo]:g} (view {lo}) to {values[hi]:g} (view {hi})"


def _check_circular(path: Path, fields: dict[str, np.ndarray], radius: float) -> None:
    """Refuse what the toolkit's geometry cannot hold (module docstring), naming the field and its range."""
    n = fields["GantryAngle"].size
    if not all(np.isfinite(v).all() for v in fields.values()):
        bad = [f for f, v in fields.items() if not np.isfinite(v).all()]
        raise ValueError(f"RTK geometry {path}: {', '.join(bad)} not finite")
    try:
        check_degrees(fields["GantryAngle"])  # radians written where RTK has degrees: a 6-degree "scan"
    except ValueError as e:
        raise ValueError(f"RTK geometry {path}: {e}") from None
    holds = {
        "SourceToIsocenterDistance": "one source-isocentre distance (source_origin)",
        "SourceToDetectorDistance": "one source-detector distance (source_detector)",
    }
    for field, what in holds.items():
        v = fields[field]
        if np.ptp(v) > CONSTANT_MM:
            raise ValueError(f"RTK geometry {path}: {field} varies across the {n} views, {_range(v)} mm; the toolkit's "
                             f"geometry has {what}, so this scan cannot be converted (tolerance {CONSTANT_MM:g} mm)")  # fmt: skip
    zeros = {
        "OutOfPlaneAngle": ("degrees", ZERO_DEGREES, "the detector parallel to the rotation axis"),
        "InPlaneAngle": ("degrees", ZERO_DEGREES, "the detector rows perpendicular to the rotation axis"),
        "SourceOffsetX": ("mm", CONSTANT_MM, "the source on the ray through the isocentre perpendicular to the detector"),
        "SourceOffsetY": ("mm", CONSTANT_MM, "the source on the ray through the isocentre perpendicular to the detector"),
    }
    for field, (unit, tol, what) in zeros.items():
        v = fields[field]
        wrapped = (v + 180.0) % 360.0 - 180.0 if unit == "degrees" else v  # RTK wraps angles to [0, 360)
        if np.abs(wrapped).max() > tol:
            raise ValueError(f"RTK geometry {path}: {field} is not 0 ({_range(v)} {unit} across the {n} views); the "
                             f"toolkit's geometry has {what}, so this scan cannot be converted")  # fmt: skip
    if radius != 0.0:
        raise ValueError(f"RTK geometry {path}: RadiusCylindricalDetector {radius:g} mm (a curved detector); the "
                         "toolkit's geometry has a flat detector")  # fmt: skip
    sdd = fields["SourceToDetectorDistance"]
    if sdd[0] != 0.0 and not fields["SourceToIsocenterDistance"][0] > 0.0:
        raise ValueError(f"RTK geometry {path}: SourceToIsocenterDistance is {fields['SourceToIsocenterDistance'][0]:g}; "
                         "a cone beam needs the source's distance from the isocentre (mm, positive)")  # fmt: skip


def read_rtk_geometry(path: str | Path) -> RTKScan:
    """Read an RTK circular geometry XML file that the toolkit's geometry can hold (module docstring).

    Args:
        path: the XML file.

    Returns:
        The scan's angles, distances and detector offset (one per view where ProjectionOffsetX/Y vary).

    Raises:
        ValueError: the file is missing or unreadable, not RTK's circular geometry, or a scan the toolkit's geometry
            cannot hold; the message names the file, the field and its range across the views.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"RTK geometry {path} " + ("is a folder: give RTK's geometry file (.xml) in it" if path.is_dir()
                                                   else "does not exist"))
    fields, collimated, radius = _parse(path)
    _check_circular(path, fields, radius)
    return RTKScan(
        path=path,
        gantry_deg=np.mod(fields["GantryAngle"], 360.0),
        sid=float(np.mean(fields["SourceToIsocenterDistance"])),
        sdd=float(np.mean(fields["SourceToDetectorDistance"])),
        projection_offset=_projection_offset(fields["ProjectionOffsetX"], fields["ProjectionOffsetY"]),
        collimated=collimated,
    )


def _projection_offset(x: np.ndarray, y: np.ndarray) -> tuple:
    """``(ProjectionOffsetX, ProjectionOffsetY)``: their means where both are constant across the views (within
    :data:`CONSTANT_MM`), else each view's pair (a flexmap)."""
    if np.ptp(x) <= CONSTANT_MM and np.ptp(y) <= CONSTANT_MM:
        return float(np.mean(x)), float(np.mean(y))
    return tuple((float(a), float(b)) for a, b in zip(x, y))


def rtk_to_ct_geometry(
    scan: RTKScan,
    volume_shape: Sequence[int],
    voxel_size: float | Sequence[float],
    det_shape: Sequence[int],
    det_spacing: float | Sequence[float],
    origin_offset: tuple[float, float] | None = None,
) -> CTGeometry:
    """The toolkit's geometry of an RTK scan (the mapping of the module docstring).

    Args:
        scan: the scan, as :func:`read_rtk_geometry` reads it.
        volume_shape: ``(D, H, W)`` voxels, axes ``(z, y, x)`` of the toolkit (``z`` the rotation axis: RTK's ``y``).
        voxel_size: mm, one value or ``(sz, sy, sx)``.
        det_shape: detector ``(rows, cols)`` (RTK's projection image ``(y, x)`` size).
        det_spacing: detector pitch ``(row, col)`` in mm, one value or two.
        origin_offset: ``(h_u, h_v)`` mm, the projection stack's origin less RTK's centred origin
            (:func:`recon.stack_header.check_projection_header`), added to ProjectionOffsetX/Y (each view's, where they
            vary); ``None``: centred.

    Returns:
        The geometry (``ValueError`` from its checks where the detector does not fit the volume).
    """
    h = (0.0, 0.0) if origin_offset is None else origin_offset

    def shifted(pair) -> tuple[float, float]:
        return tuple(0.0 if abs(v) <= 1e-9 else v for v in (float(p + o) for p, o in zip(pair, h)))

    offset = (tuple(shifted(p) for p in scan.projection_offset) if per_view(scan.projection_offset)
              else shifted(scan.projection_offset))
    common = dict(volume_shape=tuple(volume_shape), voxel_size=voxel_size, det_shape=tuple(det_shape),
                  det_spacing=det_spacing, angles=np.deg2rad(scan.gantry_deg).tolist(), det_offset=offset)  # fmt: skip
    if scan.sdd == 0.0:  # RTK's parallel beam
        return CTGeometry(kind="parallel", **common)
    return CTGeometry(kind="cone", source_origin=scan.sid, source_detector=scan.sdd, **common)
