"""bench/axis_check.py at toy sizes, so that the script cannot rot between runs; its exact ball projections agree
with the toolkit's projector (the same detector convention, offset included)."""

import json

import numpy as np
import pytest
import torch

from recon.geometry import CTGeometry
from recon.projectors import TorchProjector

from bench_helpers import load_bench

pytestmark = pytest.mark.usefixtures("one_thread")

bench = load_bench("axis_check")


@pytest.mark.parametrize("kind", ["parallel", "cone"])
def test_ball_projections_match_the_projector(kind):
    """An off-centre ball on a detector offset by 1.5 columns: the exact line integrals and the PyTorch projector's
    of the ball voxelised (4x supersampled) have the same mass and, in every view, the same centroid column."""
    shape = (24, 32, 32)
    ball = np.array([[5.0, -3.0, 2.0, 6.0, 0.02]])  # x, y, z, radius (mm), mu
    s = 4
    z, y, x = (((np.arange(n * s) + 0.5) / s - 0.5 - (n - 1) / 2) for n in shape)
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    fine = ((xx - 5) ** 2 + (yy + 3) ** 2 + (zz - 2) ** 2 < 36).astype(np.float32) * 0.02
    vol = torch.from_numpy(fine.reshape(shape[0], s, shape[1], s, shape[2], s).mean((1, 3, 5)))
    make = CTGeometry.parallel if kind == "parallel" else CTGeometry.cone
    du = make(shape, 1.0, num_angles=12).det_spacing[1]
    g = make(shape, 1.0, num_angles=12, arc_deg=360, det_offset=(1.5 * du, 0.0))
    exact, voxels = bench.ball_projections(g, ball, views_per_step=5).numpy(), TorchProjector(g)(vol).numpy()
    cols = np.arange(g.det_shape[1])
    centroid = lambda p: (p.sum(1) * cols).sum(1) / p.sum((1, 2))  # noqa: E731
    assert abs(exact.sum() / voxels.sum() - 1) < 0.02
    assert np.abs(centroid(exact) - centroid(voxels)).max() < 0.05


def test_the_script_runs_at_toy_sizes(tmp_path, capsys):
    out = tmp_path / "axis.json"
    args = ["--stack", "24", "64", "64", "--offsets", "0", "1.5", "--seeds", "0", "--balls", "4", "--repeats", "2",
            "--phantom-size", "8", "16", "16", "--views", "16", "--errors", "1", "--json", str(out)]  # fmt: skip
    assert bench.main(args) == 0
    result = json.loads(out.read_text(encoding="utf-8"))
    assert set(result["estimate"]) == {name for name, _, _ in bench.SCANS}
    for r in result["estimate"].values():
        assert r["estimates"] + len(r["no_estimate"]) == 2 and len(r["seconds"]) == 2
        assert r["estimates"] == 2 and r["max_abs_error_columns"] < 0.25
    for kind in ("parallel", "cone"):
        (row,) = result["cost"][kind]["rows"]
        assert row["axis_error_columns"] == 1 and row["cost_db"] > 0
    table = capsys.readouterr().out
    assert "| cone, full turn | 2 | 0 |" in table and "| FDK, cone, 360 degrees | 1 |" in table
    assert "2x finer grid" in table
