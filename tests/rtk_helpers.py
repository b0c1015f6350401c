"""The RTK fixture of the geometry-conversion tests (``tests/data/make_rtk_fixture.py`` wrote it with RTK): its
projections as the MetaImage stack RTK writes, the conversion command, and RTK's ellipsoids in the toolkit's frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recon.cli import main

DATA = Path(__file__).parent / "data"
SHAPE = (28, 40, 40)  # (z, y, x) 1 mm voxels: the converted volume


@pytest.fixture(scope="module")
def rtk_data():
    return dict(np.load(DATA / "rtk_projections.npz"))


def rtk_stack(tmp_path: Path, rtk_data: dict, scan: str, origin_shift=(0.0, 0.0)) -> Path:
    """RTK's projections as the MetaImage stack RTK writes: x the column, y the row, z the view."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(rtk_data[f"{scan}_projections"])
    img.SetSpacing((*map(float, rtk_data[f"{scan}_spacing"]), 1.0))
    img.SetOrigin((*(float(o + s) for o, s in zip(rtk_data[f"{scan}_origin"], origin_shift)), 0.0))
    path = tmp_path / f"{scan}.mha"
    sitk.WriteImage(img, str(path))
    return path


def convert_rtk(tmp_path: Path, xml: Path, *detector: str) -> tuple[int, Path]:
    out = tmp_path / "geometry.json"
    argv = ["geometry", "--rtk", str(xml), *detector, "--volume-shape", *map(str, SHAPE), "--voxel-size", "1", "--out", str(out)]
    return main(argv), out


def toolkit_ellipsoids(ellipsoids: np.ndarray, mirror: bool = False) -> list[tuple]:
    """RTK's ellipsoids in the toolkit's frame, ``(x, y, z) = (x_rtk, -z_rtk, y_rtk)`` (``mirror``: ``+z_rtk``, a
    reflection): centre, semi-axes, density."""
    sign = 1.0 if mirror else -1.0
    return [(np.array([cx, sign * cz, cy]), np.array([ax, az, ay]), mu) for cx, cy, cz, ax, ay, az, mu in ellipsoids]


def view_centroids(p: np.ndarray) -> np.ndarray:
    """Each view's intensity-weighted (row, column)."""
    rows, cols = np.meshgrid(np.arange(p.shape[1]), np.arange(p.shape[2]), indexing="ij")
    total = p.sum((1, 2))
    return np.stack([(p * rows).sum((1, 2)) / total, (p * cols).sum((1, 2)) / total], 1)
