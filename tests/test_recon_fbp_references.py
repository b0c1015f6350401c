"""FBP against scikit-image's iradon and ASTRA's CPU FBP; FDK of a cone-beam ball; 3D parallel FBP; input errors."""

import math

import numpy as np
import pytest
import torch

from recon.fbp import fbp
from recon.geometry import CTGeometry
from recon.projectors import AstraProjector, TorchProjector

from fbp_helpers import ellipses_slice as _slice, interior_disc as _interior


@pytest.mark.parametrize(
    "ours, theirs", [("ram-lak", "ramp"), ("shepp-logan", "shepp-logan"), ("cosine", "cosine"), ("hann", "hann")]
)
def test_fbp_matches_skimage_iradon(ours, theirs):
    """Same sinogram (scikit-image's radon) into both. skimage's angle theta is our -theta with its detector
    centre at n // 2 (our (n - 1) / 2 for odd n). Both filter identically and interpolate linearly; the
    residual is the two backprojectors' interpolation."""
    from skimage.transform import iradon, radon

    n = 65
    img = _slice(n)
    theta = np.linspace(0, 180, 90, endpoint=False)
    sino = radon(img, theta, circle=True)  # (n, views)
    ref = iradon(sino, theta, filter_name=theirs, circle=True, output_size=n)
    g = CTGeometry.parallel((1, n, n), 1.0, det_shape=(1, n), det_spacing=1.0, angles=-np.deg2rad(theta))
    rec = fbp(torch.from_numpy(sino.T.copy())[:, None, :], g, ours)[0].numpy()
    m = _interior(n, 28)
    assert np.abs(rec - ref)[m].max() < 0.02 * np.abs(ref).max()
    assert np.abs(rec - ref)[m].mean() < 0.002 * np.abs(ref).max()


@pytest.mark.astra
def test_fbp_matches_astra_cpu_fbp():
    import astra

    n = 64
    img = _slice(n).astype(np.float32)
    g = CTGeometry.parallel((1, n, n), 1.0, num_angles=120)
    # ASTRA's CPU FBP takes its circular "parallel" geometry, which our vectors reproduce (see the geometry tests)
    vg = astra.create_vol_geom(n, n, -n / 2, n / 2, -n / 2, n / 2)
    pg = astra.create_proj_geom("parallel", g.det_spacing[1], g.det_shape[1], np.asarray(g.angles))
    pid = astra.create_projector("linear", pg, vg)
    sid, s = astra.create_sino(img[::-1].copy(), pid)  # ASTRA's 2D row 0 is the top (largest y)
    sino = torch.from_numpy(s.astype(np.float64))[:, None, :]
    rid = astra.data2d.create("-vol", vg, 0.0)
    cfg = astra.astra_dict("FBP")
    cfg.update(ProjectorId=pid, ProjectionDataId=sid, ReconstructionDataId=rid, option={"FilterType": "ram-lak"})
    alg = astra.algorithm.create(cfg)
    astra.algorithm.run(alg)
    ref = astra.data2d.get(rid)[::-1]  # ASTRA's 2D row 0 is the top (largest y)
    astra.algorithm.delete(alg)
    astra.data2d.delete([sid, rid])
    astra.projector.delete(pid)
    torch.testing.assert_close(sino, AstraProjector(g, projector_2d="linear")(torch.from_numpy(img)[None].double())[:, :1], rtol=1e-3, atol=1e-3)
    rec = fbp(sino, g, "ram-lak")[0].numpy()
    m = _interior(n, 26)
    assert np.abs(rec - ref)[m].mean() < 0.01 * img.max()
    assert np.abs(rec - ref)[m].max() < 0.06 * img.max()
    # and both reconstruct the slice
    assert np.abs(rec - img)[m].mean() < 0.03 * img.max()


def test_fdk_cone_ball():
    shape, radius, mu = (24, 32, 32), 7.0, 0.02
    g = CTGeometry.cone(shape, 1.0, source_origin=100.0, source_detector=150.0, num_angles=72)
    z, y, x = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) - (n - 1) / 2 for n in shape], indexing="ij")
    vol = ((z - 2) ** 2 + (y + 3) ** 2 + (x - 4) ** 2 <= radius**2).double() * mu
    proj = TorchProjector(g, step=0.5)(vol)
    rec = fbp(proj, g, "shepp-logan")
    core = (z - 2) ** 2 + (y + 3) ** 2 + (x - 4) ** 2 <= (radius - 2.5) ** 2
    outside = (z - 2) ** 2 + (y + 3) ** 2 + (x - 4) ** 2 >= (radius + 2.5) ** 2
    assert abs(float(rec[core].mean()) - mu) < 0.02 * mu
    assert float((rec[core] - mu).abs().max()) < 0.1 * mu
    assert float(rec[outside & (z.abs() < 8)].abs().mean()) < 0.02 * mu
    # the ball's mass is recovered
    assert abs(float(rec.sum()) / float(vol.sum()) - 1) < 0.03


def test_parallel_fbp_3d_matches_slicewise():
    """A parallel-beam volume is the stack of its slices' 2D reconstructions."""
    n = 24
    g3 = CTGeometry.parallel((3, n, n), 1.0, num_angles=30)
    g1 = CTGeometry.parallel((1, n, n), 1.0, num_angles=30)
    vol = torch.rand(3, n, n, dtype=torch.float64)
    p = TorchProjector(g3)(vol)
    rec3 = fbp(p, g3)
    for k in range(3):
        torch.testing.assert_close(rec3[k], fbp(p[:, k : k + 1], g1)[0])


def test_fbp_input_errors():
    g = CTGeometry.parallel((2, 8, 8), 1.0, num_angles=4)
    with pytest.raises(ValueError, match="expects"):
        fbp(torch.zeros(5, *g.det_shape), g)
    bad = torch.zeros(g.proj_shape)
    bad[0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        fbp(bad, g)
