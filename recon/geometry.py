"""Circular parallel-beam and cone-beam CT geometries.

World frame (millimetres): the volume is centred on the origin, the rotation axis is ``z``. A volume array has
shape ``(D, H, W)`` with axes ``(z, y, x)``: voxel ``(k, j, i)`` has its centre at
``((i - (W-1)/2) sx, (j - (H-1)/2) sy, (k - (D-1)/2) sz)``. Projections have shape ``(views, rows, cols)``;
detector rows run along ``z`` and columns along ``u``.

At angle ``theta`` (ASTRA's convention for its ``parallel3d`` and ``cone`` geometries):

* parallel beam: rays travel along ``(sin t, -cos t, 0)``; the detector is centred on the origin;
* cone beam: the source sits at ``dso (sin t, -cos t, 0)`` and the detector centre at ``-(dsd - dso)
  (sin t, -cos t, 0)``;
* detector columns step along ``u = (cos t, sin t, 0)`` and rows along ``v = (0, 0, 1)``; pixel ``(r, c)`` has its
  centre at ``d + (c - (cols-1)/2) du u + (r - (rows-1)/2) dv v``.

Detector offset: ``det_offset = (offset_u, offset_v)`` mm moves the detector within its own plane, so that its centre
is ``d + offset_u u + offset_v v`` (``u``, ``v`` the unit axes above, in the detector's rotating frame): one offset
for every view, or a list of one per view (a flexmap, as a real CBCT's sagging gantry has; parsed and checked by
:mod:`recon.detector_offset`; the projectors and FBP/FDK place each view's detector at its own offset). The central
ray (through the isocentre, perpendicular to the detector) then meets the detector at pixel
``((rows-1)/2 - offset_v / dv, (cols-1)/2 - offset_u / du)``: a positive ``offset_u`` shifts the image of the
rotation axis towards column 0. It plays the part of RTK's ``ProjectionOffsetX/Y`` (a shift of the detector in its
plane, here along this frame's ``u`` and ``v``); a projection stack's header origin ``-(n-1)/2 spacing + offset``
states it (:func:`recon.stack_header.check_projection_header`), and ASTRA's vector geometries take it as the shifted
detector centre. The central ray must stay on the detector in every view (an offset of half the detector or more is
refused). When the detector less twice its offset (what it covers on both sides of the central ray; in the view
where the offset is largest) is narrower than the volume, the scan is a half-fan (offset-detector) scan, as
radiotherapy CBCT's large field of view: accepted when the views go all round (:func:`recon.angle_checks.full_turn`)
and the detector's wider side covers the volume in every view, each ray then being measured from one side or the
other (:attr:`CTGeometry.half_fan`; FDK weights its redundant rays, :func:`recon.fbp.half_fan_weights`).

:meth:`CTGeometry.vectors` writes these as ASTRA ``parallel3d_vec`` / ``cone_vec`` rows, the single definition both
projector backends use.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from medgmae.missing_paths import missing_path_message
from recon.angle_checks import check_directions, check_radians
from recon.detector_offset import (check_coverage, check_offsets, coverage, max_abs, offset_array, offset_field,
                                    per_view)
from recon.geometry_fields import (AFFINE_RTOL, NO_OFFSET, affine_list, angle_list, check_affine, check_source,
                                   factory_args, floats, ints, number, positive, source_distance, view_indices)

__all__ = ["CTGeometry", "GEOMETRY_KINDS", "AFFINE_RTOL", "NO_OFFSET"]

GEOMETRY_KINDS = ("parallel", "cone")
SOURCE_FIELDS = ("source_origin", "source_detector")


@dataclass
class CTGeometry:
    """A circular-orbit CT scan.

    Attributes:
        kind: ``"parallel"`` or ``"cone"``.
        volume_shape: ``(D, H, W)`` voxels, axes ``(z, y, x)``.
        voxel_size: ``(sz, sy, sx)`` in mm.
        det_shape: detector ``(rows, cols)``.
        det_spacing: detector pixel size ``(row, col)`` in mm (on the detector, not at the isocentre).
        angles: projection angles in radians (a tuple of floats; any sequence is taken).
        source_origin: source-to-isocentre distance in mm (cone beam only).
        source_detector: source-to-detector distance in mm (cone beam only).
        affine: optional 4x4 voxel-to-world affine of the NIfTI the volume came from (array order ``(x, y, z)``),
            carried so that reconstructions are written in the same space. It must be finite with last row
            ``0 0 0 1``, non-singular, and its columns (the steps of ``x``, ``y``, ``z``) must have the lengths
            ``(sx, sy, sz)``, i.e. ``voxel_size`` reversed (relative tolerance :data:`AFFINE_RTOL`).
        det_offset: ``(offset_u, offset_v)`` in mm on the detector: its centre sits ``offset_u`` along the column
            axis ``u`` and ``offset_v`` along the row axis ``v`` from where the central ray meets it (module
            docstring); finite, each under half the detector's extent along it. Note the order ``(u, v)`` =
            (column, row), as RTK orders its ``ProjectionOffsetX/Y``, unlike ``det_shape`` and ``det_spacing``. Or a
            list of one ``(u, v)`` per view (a flexmap; :meth:`offsets` gives the ``(views, 2)`` array either way).

    The fields are checked together when the geometry is made, and cannot be set afterwards, nor changed in place
    (``angles`` and ``affine`` are tuples; a changed
    ``volume_shape`` would no longer match the ``affine``, a changed ``angles`` the per-view offsets):
    ``dataclasses.replace(geometry, field=value)`` makes a new, checked one.
    """

    kind: str
    volume_shape: tuple
    voxel_size: tuple
    det_shape: tuple
    det_spacing: tuple
    angles: tuple = ()
    source_origin: float | None = None
    source_detector: float | None = None
    affine: tuple | None = None
    det_offset: tuple = NO_OFFSET

    def __post_init__(self) -> None:
        self.volume_shape = ints("volume_shape", self.volume_shape, 3, "z, y, x")
        self.voxel_size = floats("voxel_size", self.voxel_size, 3, "z, y, x")
        self.det_shape = ints("det_shape", self.det_shape, 2, "rows, cols")
        self.det_spacing = floats("det_spacing", self.det_spacing, 2, "rows, cols")
        self.angles = angle_list(self.angles)
        if self.source_origin is not None:
            self.source_origin = number("source_origin", self.source_origin)
        if self.source_detector is not None:
            self.source_detector = number("source_detector", self.source_detector)
        self.affine = affine_list(self.affine)
        self.det_offset = offset_field(self.det_offset)
        self.validate()
        object.__setattr__(self, "_checked", True)

    def __setattr__(self, name: str, value) -> None:
        if self.__dict__.get("_checked"):
            raise AttributeError(
                f"CTGeometry.{name} cannot be set once the geometry is made (its fields are checked together): make a "
                f"new one with dataclasses.replace(geometry, {name}=...), which checks it"
            )
        object.__setattr__(self, name, value)

    # ------------------------------------------------------------------ construction
    @classmethod
    def parallel(
        cls,
        volume_shape: Sequence[int],
        voxel_size: float | Sequence[float] = 1.0,
        det_shape: Sequence[int] | None = None,
        det_spacing: float | Sequence[float] | None = None,
        num_angles: int = 180,
        arc_deg: float = 180.0,
        angles: Sequence[float] | None = None,
        affine=None,
        det_offset: Sequence[float] = NO_OFFSET,
    ) -> "CTGeometry":
        """Parallel-beam geometry; the default detector covers the volume's diagonal at the voxel pitch (wider by
        twice the offset on an offset detector, so that it still covers it).

        Args:
            volume_shape: ``(D, H, W)``.
            voxel_size: mm, one value or ``(sz, sy, sx)``.
            det_shape: ``(rows, cols)``; default ``(ceil(D sz / row pitch), ceil(diagonal / col pitch))`` (rows
                ignore a fraction under 0.001), the diagonal that of the ``(H sy, W sx)`` slice and each length plus
                twice the offset along it (rows are ``D`` at the default pitch only).
            det_spacing: mm, default ``(sz, max(sy, sx))``.
            num_angles: number of equispaced views over ``arc_deg`` (ignored when ``angles`` is given).
            arc_deg: scan arc in degrees (at most 2 pi, radians, is refused); views at ``arc * i / num_angles``.
            angles: explicit angles in radians.
            affine: optional NIfTI affine to carry.
            det_offset: ``(u, v)`` detector offset in mm, or one per view (class docstring).

        Returns:
            The geometry.
        """
        volume_shape, vs, det_spacing, angles = factory_args(volume_shape, voxel_size, det_spacing, num_angles, arc_deg, angles)
        off = offset_field(det_offset)
        off_u, off_v = max_abs(off)
        if det_spacing is None:
            det_spacing = (vs[0], max(vs[1], vs[2]))
        det_spacing = floats("det_spacing", det_spacing, 2, "rows, cols")
        if det_shape is None:
            diag = math.hypot(volume_shape[1] * vs[1], volume_shape[2] * vs[2]) + 2 * off_u
            height = volume_shape[0] * vs[0] + 2 * off_v
            det_shape = (int(height / float(det_spacing[0]) + 0.999), int(math.ceil(diag / float(det_spacing[1]))))
        return cls(
            "parallel", volume_shape, vs, tuple(det_shape), tuple(det_spacing), angles, None, None, affine_list(affine), off,
        )  # fmt: skip

    @classmethod
    def cone(
        cls,
        volume_shape: Sequence[int],
        voxel_size: float | Sequence[float] = 1.0,
        source_origin: float | None = None,
        source_detector: float | None = None,
        det_shape: Sequence[int] | None = None,
        det_spacing: float | Sequence[float] | None = None,
        num_angles: int = 360,
        arc_deg: float = 360.0,
        angles: Sequence[float] | None = None,
        affine=None,
        det_offset: Sequence[float] = NO_OFFSET,
    ) -> "CTGeometry":
        """Cone-beam geometry; defaults put the source at 4 volume half-diagonals with magnification 1.5 and a
        detector that covers the magnified volume (wider by twice the offset on an offset detector).

        Args:
            volume_shape: ``(D, H, W)``.
            voxel_size: mm, one value or ``(sz, sy, sx)``.
            source_origin: source-to-isocentre distance in mm.
            source_detector: source-to-detector distance in mm.
            det_shape: ``(rows, cols)``; default ``(ceil(D sz M / row pitch), ceil(2 r sdd / sqrt(sod^2 - r^2) /
                col pitch))``, ``r`` the radius of the volume's ``(y, x)`` footprint, ``M = sdd / (sod - r)`` the
                largest magnification and each length plus twice the offset along it.
            det_spacing: detector pixel size in mm; default the voxel size times the magnification.
            num_angles: number of equispaced views over ``arc_deg`` (ignored when ``angles`` is given).
            arc_deg: scan arc in degrees (at most 2 pi, radians, is refused).
            angles: explicit angles in radians.
            affine: optional NIfTI affine to carry.
            det_offset: ``(u, v)`` detector offset in mm, or one per view (class docstring).

        Returns:
            The geometry.
        """
        volume_shape, vs, det_spacing, angles = factory_args(volume_shape, voxel_size, det_spacing, num_angles, arc_deg, angles)
        source_origin, source_detector = (source_distance(n, v) for n, v in zip(SOURCE_FIELDS, (source_origin, source_detector)))
        off = offset_field(det_offset)
        off_u, off_v = max_abs(off)
        half = [0.5 * n * s for n, s in zip(volume_shape, vs)]
        r_xy = math.hypot(half[1], half[2])
        if source_origin is None:
            source_origin = 4.0 * math.sqrt(sum(h * h for h in half))
        if source_detector is None:
            source_detector = 1.5 * source_origin
        if source_origin <= r_xy:
            raise ValueError(f"source_origin ({source_origin} mm) must exceed the volume's radius ({r_xy:.2f} mm)")
        mag_max = source_detector / (source_origin - r_xy)
        if det_spacing is None:
            m = source_detector / source_origin
            det_spacing = (vs[0] * m, max(vs[1], vs[2]) * m)
        det_spacing = floats("det_spacing", det_spacing, 2, "rows, cols")
        if det_shape is None:
            rows = int(math.ceil((2 * half[0] * mag_max + 2 * off_v) / float(det_spacing[0])))
            width = 2 * r_xy * source_detector / math.sqrt(source_origin**2 - r_xy**2) + 2 * off_u
            det_shape = (rows, int(math.ceil(width / float(det_spacing[1]))))
        return cls(
            "cone", volume_shape, vs, tuple(det_shape), tuple(det_spacing), angles, float(source_origin),
            float(source_detector), affine_list(affine), off,
        )  # fmt: skip

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ``ValueError`` on an inconsistent geometry."""
        if self.kind not in GEOMETRY_KINDS:
            fan = " (a fan beam is a cone beam of one detector row over a volume of one slice)" if "fan" in str(self.kind).lower() else ""
            raise ValueError(f"geometry kind must be one of {GEOMETRY_KINDS}, got {self.kind!r}{fan}")
        if any(s <= 0 for s in self.volume_shape):
            raise ValueError(f"volume_shape must be positive, got {self.volume_shape}")
        for name, vals in (("voxel_size", self.voxel_size), ("det_spacing", self.det_spacing)):
            positive(name, vals)
        if any(s <= 0 for s in self.det_shape):
            raise ValueError(f"det_shape must be positive, got {self.det_shape}")
        if not self.angles:
            raise ValueError("angles must not be empty")
        if not all(math.isfinite(a) for a in self.angles):
            raise ValueError("angles must be finite (found NaN or Inf)")
        check_radians(self.angles)
        if self.affine is not None:
            check_affine(self.affine, self.voxel_size)
        check_offsets(self.det_offset, self.num_views, self.det_shape, self.det_spacing)
        if self.kind == "parallel":
            if self.source_origin is not None or self.source_detector is not None:
                raise ValueError("source_origin/source_detector apply to cone-beam geometries only")
        else:
            check_source(self.source_origin, self.source_detector, self.volume_shape, self.voxel_size)
        check_coverage(self)

    @property
    def half_fan(self) -> bool:
        """Whether this is a half-fan (offset-detector) scan: the detector, less twice its offset (in the view where
        that is largest), is narrower than the volume, which its wider side covers over a full turn (module
        docstring)."""
        det_w, _, need_w, _, tol = coverage(self)
        return det_w + tol < need_w

    @property
    def per_view_offset(self) -> bool:
        """Whether :attr:`det_offset` lists one ``(u, v)`` per view (a flexmap) rather than one for all views."""
        return per_view(self.det_offset)

    def offsets(self) -> np.ndarray:
        """``(views, 2)`` float64: each view's ``(u, v)`` detector offset in mm."""
        return offset_array(self.det_offset, self.num_views)

    # ------------------------------------------------------------------ derived
    @property
    def num_views(self) -> int:
        return len(self.angles)

    def select_views(self, views: Sequence[int]) -> "CTGeometry":
        """The same scan with only the views ``views`` (indices into :attr:`angles`, in the order given, or a boolean
        mask with one entry per view; a per-view :attr:`det_offset` keeps those views' offsets)."""
        idx = [int(v) for v in view_indices(views, self.num_views)]
        if not idx or any(not 0 <= v < self.num_views for v in idx):
            raise ValueError(f"views must be a non-empty list of indices below {self.num_views}, got {idx}")
        offset = tuple(self.det_offset[v] for v in idx) if self.per_view_offset else self.det_offset
        return replace(self, angles=[self.angles[v] for v in idx], det_offset=offset)

    @property
    def proj_shape(self) -> tuple:
        """``(views, rows, cols)`` of the projection array."""
        return (self.num_views, *self.det_shape)

    @property
    def extent(self) -> tuple:
        """Physical size ``(z, y, x)`` of the volume in mm."""
        return tuple(n * s for n, s in zip(self.volume_shape, self.voxel_size))

    def vectors(self) -> np.ndarray:
        """``(views, 12)`` float64 rows in ASTRA's ``parallel3d_vec`` / ``cone_vec`` layout (x, y, z order):
        ray direction (parallel) or source position (cone), detector centre (shifted by :attr:`det_offset`), column
        step ``u``, row step ``v``."""
        a = np.asarray(self.angles, dtype=np.float64)
        s, c, z = np.sin(a), np.cos(a), np.zeros_like(a)
        direction = np.stack([s, -c, z], 1)
        u_axis, v_axis = np.stack([c, s, z], 1), np.stack([z, z, np.ones_like(a)], 1)
        off = self.offsets()  # one (u, v) per view, a single offset repeated
        shift = off[:, :1] * u_axis + off[:, 1:] * v_axis
        u, v = u_axis * self.det_spacing[1], v_axis * self.det_spacing[0]
        if self.kind == "parallel":
            return np.concatenate([direction, shift, u, v], 1)
        src = direction * self.source_origin
        det = -direction * (self.source_detector - self.source_origin) + shift
        return np.concatenate([src, det, u, v], 1)

    def detector_coords(self) -> tuple[np.ndarray, np.ndarray]:
        """Where the pixel centres sit on the detector, in mm from where the central ray meets it (offset included).

        Returns:
            ``(u, v)``: float64 ``(cols,)`` ``(c - (cols-1)/2) du + offset_u`` and ``(rows,)``
            ``(r - (rows-1)/2) dv + offset_v``; with a per-view :attr:`det_offset`, ``(views, cols)`` and
            ``(views, rows)``, each view's own.
        """
        rows, cols = self.det_shape
        if self.per_view_offset:
            off = self.offsets()
            u = (np.arange(cols) - (cols - 1) / 2)[None, :] * self.det_spacing[1] + off[:, :1]
            v = (np.arange(rows) - (rows - 1) / 2)[None, :] * self.det_spacing[0] + off[:, 1:]
            return u, v
        u = (np.arange(cols) - (cols - 1) / 2) * self.det_spacing[1] + self.det_offset[0]
        v = (np.arange(rows) - (rows - 1) / 2) * self.det_spacing[0] + self.det_offset[1]
        return u, v

    def default_affine(self) -> np.ndarray:
        """Affine of the NIfTI the volume came from, or a centred diagonal one for array order ``(x, y, z)``."""
        if self.affine is not None:
            return np.asarray(self.affine, dtype=np.float64)
        aff = np.eye(4)
        sz, sy, sx = self.voxel_size
        aff[0, 0], aff[1, 1], aff[2, 2] = sx, sy, sz
        aff[:3, 3] = [-(self.volume_shape[2] - 1) / 2 * sx, -(self.volume_shape[1] - 1) / 2 * sy, -(self.volume_shape[0] - 1) / 2 * sz]
        return aff

    def check_projections(self, shape: Sequence[int], name: str = "projections") -> None:
        """Raise ``ValueError`` unless ``shape`` ends with ``(views, rows, cols)`` of this geometry."""
        if tuple(shape[-3:]) != self.proj_shape or len(shape) not in (3, 4):
            raise ValueError(
                f"{name} have shape {tuple(shape)} but the geometry expects (views, rows, cols) = {self.proj_shape}"
            )

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        """The fields as JSON-able values; ``det_offset`` only when it is not :data:`NO_OFFSET`, so that a centred
        detector's ``geometry.json`` (and the keys made from it: a run's scan fingerprint, the kept projector
        matrix's) are what they were before offsets existed. A per-view ``det_offset`` is a list of ``[u, v]``, and
        so part of those keys."""
        d = asdict(self)
        if self.det_offset == NO_OFFSET:
            del d["det_offset"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CTGeometry":
        if not isinstance(d, dict):
            raise ValueError(f"a geometry must be a JSON object, got {type(d).__name__}")
        known = {"kind", "volume_shape", "voxel_size", "det_shape", "det_spacing", "angles", "source_origin", "source_detector", "affine",
                 "det_offset"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown geometry fields {sorted(unknown)}")
        missing = {"kind", "volume_shape", "voxel_size", "det_shape", "det_spacing", "angles"} - set(d)
        if missing:
            raise ValueError(f"geometry is missing fields {sorted(missing)}")
        return cls(**d)

    def save(self, path: str | Path) -> None:
        """Write the geometry as JSON (atomically)."""
        from medgmae.files import save_json_atomic

        save_json_atomic(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | Path) -> "CTGeometry":
        """Read a geometry JSON; errors name the file."""
        path = Path(path)
        if not path.is_file():
            inside = f": give {path / 'geometry.json'}" if (path / "geometry.json").is_file() else ": give a geometry JSON file"
            raise ValueError(f"geometry file {path} is a folder{inside}" if path.is_dir()
                             else missing_path_message(path, f"geometry file {path} does not exist"))
        try:
            d = json.loads(path.read_text(encoding="utf-8-sig"))  # a byte-order mark (Windows Notepad) skipped
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"geometry file {path} is not valid JSON: {e}") from e
        try:
            geom = cls.from_dict(d)
            check_directions(geom.angles, geom.kind)  # a file's angles; a subset of views (one held out) may have one
        except (ValueError, TypeError) as e:
            raise ValueError(f"geometry file {path}: {e}") from e
        return geom
