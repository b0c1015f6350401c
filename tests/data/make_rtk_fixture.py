"""Writes the RTK reference fixtures of ``tests/test_rtk_geometry.py`` and ``tests/test_flexmap_rtk.py``: RTK geometry XML files and RTK's analytic
projections of two off-centre ellipsoids.

Run with a Python that has ``itk-rtk`` (not a dependency of the toolkit, and not needed by the tests, which read the
committed files only), from the repository root::

    python3 -m venv /tmp/rtkvenv && /tmp/rtkvenv/bin/pip install itk-rtk numpy
    /tmp/rtkvenv/bin/python tests/data/make_rtk_fixture.py

Each scan is 24 views over 360 degrees, SourceToIsocenterDistance 600 mm, SourceToDetectorDistance 900 mm (but the
parallel one), a 40 x 32 pixel detector of 2 mm whose projection images have RTK's centred origin
``-(n - 1) / 2 * spacing``:

* ``rtk_offset.xml``: ProjectionOffsetX 6 mm, ProjectionOffsetY -3 mm (the detector covers the volume);
* ``rtk_half_fan.xml``: ProjectionOffsetX -24 mm (a half-fan scan: the detector covers one side of the volume);
* ``rtk_parallel.xml``: RTK's parallel beam (SourceToDetectorDistance 0), ProjectionOffsetX 3 mm, ProjectionOffsetY
  2 mm;
* ``rtk_flexmap.xml``: a cone beam whose detector offset changes over the turn, as a CBCT's flexmap:
  ProjectionOffsetX ``6 + 3 sin(g) + cos(2 g)`` mm and ProjectionOffsetY ``-3 + 1.5 cos(g)`` mm at gantry angle ``g``
  (:func:`flexmap`).

``rtk_projections.npz`` holds, per scan, ``<scan>_projections`` (views, rows, cols) float32 line integrals computed
by ``rtk.RayEllipsoidIntersectionImageFilter`` (exact chords through the ellipsoids, summed), the detector spacing
and origin (ITK's (x, y) = (column, row)), and the ellipsoids in RTK's fixed frame (``ellipsoids``: rows of centre
x, y, z, semi-axes x, y, z in mm and density in 1/mm).
"""

from __future__ import annotations

from pathlib import Path

import itk
import numpy as np
from itk import RTK as rtk

HERE = Path(__file__).resolve().parent
VIEWS, SID, SDD = 24, 600.0, 900.0
COLS, ROWS, PITCH = 40, 32, 2.0
#: Centre (x, y, z), semi-axes (x, y, z) in mm and density (1/mm), in RTK's fixed frame (rotation axis y).
ELLIPSOIDS = np.array([
    [10.0, 4.0, -6.0, 8.0, 5.0, 6.0, 0.02],
    [-9.0, -3.0, 8.0, 5.0, 7.0, 4.0, 0.01],
])  # fmt: skip


def flexmap(gantry_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ProjectionOffsetX and ProjectionOffsetY (mm) of the flexmap scan at the gantry angles (degrees)."""
    g = np.deg2rad(gantry_deg)
    return 6.0 + 3.0 * np.sin(g) + np.cos(2 * g), -3.0 + 1.5 * np.cos(g)


GANTRY = 360.0 * np.arange(VIEWS) / VIEWS
#: Scan name -> (SourceToDetectorDistance, ProjectionOffsetX, ProjectionOffsetY), the offsets one for all views or
#: one per view; SDD 0 is RTK's parallel beam.
SCANS = {"offset": (SDD, 6.0, -3.0), "half_fan": (SDD, -24.0, 0.0), "parallel": (0.0, 3.0, 2.0),
         "flexmap": (SDD, *flexmap(GANTRY))}  # fmt: skip


def geometry(sdd: float, offset_x, offset_y):
    """RTK's circular geometry of one scan: VIEWS gantry angles over 360 degrees, each view at its offset."""
    g = rtk.ThreeDCircularProjectionGeometry.New()
    xs, ys = np.broadcast_to(offset_x, (VIEWS,)), np.broadcast_to(offset_y, (VIEWS,))
    for i in range(VIEWS):
        g.AddProjection(SID, sdd, float(GANTRY[i]), float(xs[i]), float(ys[i]))
    return g


def project(g) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RTK's line integrals of :data:`ELLIPSOIDS` on the centred detector: ``(views, rows, cols)``, spacing, origin."""
    image = itk.Image[itk.F, 3]
    spacing = np.array([PITCH, PITCH, 1.0])
    origin = np.array([-(COLS - 1) / 2 * PITCH, -(ROWS - 1) / 2 * PITCH, 0.0])
    source = rtk.ConstantImageSource[image].New()
    source.SetOrigin(origin.tolist())
    source.SetSpacing(spacing.tolist())
    source.SetSize([COLS, ROWS, VIEWS])
    source.SetConstant(0.0)
    out = source.GetOutput()
    for e in ELLIPSOIDS:
        f = rtk.RayEllipsoidIntersectionImageFilter[image, image].New()
        f.SetInput(out)
        f.SetGeometry(g)
        f.SetCenter([float(v) for v in e[:3]])
        f.SetAxis([float(v) for v in e[3:6]])
        f.SetDensity(float(e[6]))
        f.Update()
        out = f.GetOutput()
        out.DisconnectPipeline()
    return np.asarray(itk.array_from_image(out), np.float32), spacing[:2], origin[:2]


def main() -> None:
    arrays = {"ellipsoids": ELLIPSOIDS}
    for name, (sdd, ox, oy) in SCANS.items():
        g = geometry(sdd, ox, oy)
        writer = rtk.ThreeDCircularProjectionGeometryXMLFileWriter.New()
        writer.SetFilename(str(HERE / f"rtk_{name}.xml"))
        writer.SetObject(g)
        writer.WriteFile()
        proj, spacing, origin = project(g)
        arrays.update({f"{name}_projections": proj, f"{name}_spacing": spacing, f"{name}_origin": origin})
    np.savez_compressed(HERE / "rtk_projections.npz", **arrays)


if __name__ == "__main__":
    main()
