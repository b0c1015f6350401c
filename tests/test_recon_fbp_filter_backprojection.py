"""The ramp filters and their chunked FFT; backprojection against float64 oracles; FDK's cosine weights; NumPy input."""

import math

import numpy as np
import pytest
import torch

from recon.fbp import FILTERS, backproject, filter_projections, ramp_filter
from recon.geometry import CTGeometry


def test_ramp_filter_shape():
    f = ramp_filter(128, "ram-lak")
    freq = np.fft.fftfreq(128)
    assert abs(float(f[0])) < 5e-3  # (almost) no DC bias: spatial-domain construction
    np.testing.assert_allclose(f.numpy()[1:20], np.abs(freq[1:20]), atol=5e-3)
    np.testing.assert_allclose(float(f[64]), 0.5, atol=5e-3)
    for name in FILTERS[1:]:  # apodised windows attenuate high frequencies only
        g = ramp_filter(128, name)
        assert float(g[64]) < 0.7 * float(f[64]) and abs(float(g[3] - f[3])) < 0.01
    with pytest.raises(ValueError, match="filter"):
        ramp_filter(128, "butterworth")


def _full_fft_filter(proj: torch.Tensor, spacing: float, name: str) -> torch.Tensor:
    """The ramp filter as one float64 complex FFT of the whole stack (the formula before chunking), the oracle."""
    cols = proj.shape[-1]
    size = max(64, 1 << int(math.ceil(math.log2(2 * cols))))
    padded = torch.nn.functional.pad(proj.to(torch.float64), (0, size - cols))
    spec = torch.fft.fft(padded, dim=-1) * ramp_filter(size, name, torch.float64)
    return torch.fft.ifft(spec, dim=-1).real[..., :cols] / spacing


@pytest.mark.parametrize("name", FILTERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chunked_real_fft_filter_matches_the_full_complex_fft(name, dtype):
    """Rows filtered in chunks (a byte budget forcing 7 of 13 rows and a last partial one, 300 columns padded to
    1024) with a real FFT equal the full-stack complex float64 FFT, to float32 / float64 rounding."""
    gen = torch.Generator().manual_seed(5)
    proj = (torch.rand((2, 3, 5, 300), generator=gen, dtype=torch.float64) * 4).to(dtype)  # 30 rows
    ref = _full_fft_filter(proj, 0.7, name)
    out = filter_projections(proj, 0.7, name, chunk_bytes=7 * 8 * 1024)
    assert out.shape == proj.shape and out.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    assert float((out.double() - ref).abs().max()) <= tol * float(ref.abs().max())
    one = filter_projections(proj, 0.7, name, chunk_bytes=1)  # one row per chunk
    torch.testing.assert_close(one, out, rtol=0, atol=0)


@pytest.mark.parametrize("seed", range(12))
def test_slice_by_slice_parallel_backprojection_samples_as_the_3d_grid(seed):
    """The parallel-beam backprojection interpolates rows to the voxels' z, then backprojects each slice (no 3D
    sampling grid): bilinear sampling is separable, so it equals the 3D grid's sampling, in float64, for random
    anisotropic volumes, detectors (rows other than slices, spacings other than the voxels') and angles."""
    rng = np.random.default_rng(seed)
    while True:
        shape, rows, cols = tuple(int(v) for v in rng.integers(1, 14, 3)), int(rng.integers(1, 20)), int(rng.integers(2, 40))
        try:
            g = CTGeometry(kind="parallel", volume_shape=shape, voxel_size=tuple(rng.uniform(0.5, 2.5, 3)),
                           det_shape=(rows, cols), det_spacing=tuple(rng.uniform(0.5, 2.5, 2)),
                           angles=np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(1, 12)))))  # fmt: skip
            break
        except ValueError:  # a detector too small for the volume: draw again
            continue
    filtered = torch.from_numpy(rng.normal(size=(2, g.num_views, rows, cols)))
    grid = backproject(filtered, g, per_slice=False)
    assert grid.abs().max() > 0
    torch.testing.assert_close(backproject(filtered, g, chunk=3), grid, rtol=0, atol=1e-12)


def _bilinear_zero_padded(img: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``img`` at fractional (row, column) indices, neighbours outside the image counting as zeros."""
    r0, c0 = np.floor(r).astype(int), np.floor(c).astype(int)
    out = np.zeros(r.shape)
    for dr in (0, 1):
        for dc in (0, 1):
            rr, cc = r0 + dr, c0 + dc
            wgt = (1 - np.abs(r - rr)) * (1 - np.abs(c - cc))
            ok = (rr >= 0) & (rr < img.shape[0]) & (cc >= 0) & (cc < img.shape[1])
            out[ok] += wgt[ok] * img[rr[ok], cc[ok]]
    return out


@pytest.mark.parametrize("seed", range(10))
def test_cone_backprojection_in_slabs_matches_a_per_voxel_float64_oracle(seed, monkeypatch):
    """The cone-beam backprojection cuts each step's slices into slabs (bounded memory): with a budget of a few
    sampling positions (slabs of 1-3 slices, views in chunks of 1-4) it equals ``sum_i w_i(x) q_i(u_i(x), v_i(x))``
    evaluated voxel by voxel in NumPy, over random anisotropic volumes, detectors and angles."""
    import recon.fbp as fbp_module

    rng = np.random.default_rng(100 + seed)
    while True:
        shape = tuple(int(v) for v in rng.integers(2, 9, 3))
        try:
            g = CTGeometry(kind="cone", volume_shape=shape, voxel_size=tuple(rng.uniform(0.5, 2.5, 3)),
                           det_shape=(int(rng.integers(2, 20)), int(rng.integers(2, 30))),
                           det_spacing=tuple(rng.uniform(0.5, 2.5, 2)), source_origin=float(rng.uniform(40, 80)),
                           source_detector=float(rng.uniform(90, 160)),
                           angles=np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(1, 9)))))  # fmt: skip
            break
        except ValueError:  # a detector too small for the volume: draw again
            continue
    filtered = rng.normal(size=(1, g.num_views, *g.det_shape))
    chunk = int(rng.integers(1, 5))
    monkeypatch.setattr(fbp_module, "SAMPLES_PER_STEP", chunk * shape[1] * shape[2] * int(rng.integers(1, 4)))
    ours = backproject(torch.from_numpy(filtered), g, chunk=chunk)[0].numpy()
    (d, h, w), (sz, sy, sx), (rows, cols) = shape, g.voxel_size, g.det_shape
    z, y, x = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, (sz, sy, sx))], indexing="ij")
    oracle = np.zeros(shape)
    for i, a in enumerate(g.angles):
        t, s = x * np.cos(a) + y * np.sin(a), x * np.sin(a) - y * np.cos(a)
        mag = g.source_detector / (g.source_origin - s)
        fr, fc = z * mag / g.det_spacing[0] + (rows - 1) / 2, t * mag / g.det_spacing[1] + (cols - 1) / 2
        oracle += (g.source_origin / (g.source_origin - s)) ** 2 * _bilinear_zero_padded(filtered[0, i], fr, fc)
    assert np.abs(oracle).max() > 0
    np.testing.assert_allclose(ours, oracle, rtol=0, atol=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_filter_and_the_backprojection_take_numpy_arrays(dtype):
    """``filter_projections`` and ``backproject`` of a NumPy array ended in ``TypeError`` (a NumPy dtype handed to
    ``torch.empty`` / ``torch.arange``); they now filter as the full-stack FFT does, keeping a float64 array's
    precision, and backproject a detector of ones to one per view in every voxel."""
    proj = np.random.default_rng(3).random((2, 4, 5, 40)).astype(dtype)
    out = filter_projections(proj, 0.7, "hann")
    assert isinstance(out, torch.Tensor) and out.dtype == torch.from_numpy(proj).dtype
    ref = _full_fft_filter(torch.from_numpy(proj), 0.7, "hann")
    tol = 1e-6 if dtype == np.float32 else 1e-12
    assert float((out.double() - ref).abs().max()) <= tol * float(ref.abs().max())
    for kind in ("parallel", "cone"):
        g = getattr(CTGeometry, kind)((3, 6, 6), 1.0, num_angles=5)
        vol = backproject(np.ones((1, *g.proj_shape), dtype=dtype), g, fdk_weights=False)
        assert vol.shape == (1, *g.volume_shape)
        torch.testing.assert_close(vol.double(), torch.full(vol.shape, 5.0, dtype=torch.float64))


@pytest.mark.parametrize("offset", [(14.0, -3.0), "per-view"])
def test_fdk_cosine_weights_are_each_rays_cosine_to_the_central_ray(offset):
    """FDK's pre-weights are, at every pixel, the cosine of the angle between its ray and the central ray:
    ``dot(d, -e)``, with each pixel's unit ray ``d`` written from the scan's definition in float64
    (:func:`chord_helpers.geometry_rays`; the toolkit's weights use the isocentre-scaled ``so / sqrt(so^2 + u^2 +
    v^2)``, the same number). A wide fan (about 31 degrees to the outer columns) and cone (about 11 degrees to the
    outer rows), and a detector offset in both directions (one for all views, or one per view), so that dropping
    either the ``u`` or the ``v`` term, or either offset, moves some weights by far more than rounding."""
    from chord_helpers import geometry_rays

    from recon.fbp import _cosine_weights

    angles = np.deg2rad([0.0, 37.0, 111.0, 200.0, 290.0])
    if offset == "per-view":
        offset = [(14.0, -3.0), (-9.0, 4.0), (0.0, 0.0), (20.0, 2.5), (-17.0, -5.0)]
    g = CTGeometry("cone", (16, 48, 48), 1.0, (40, 120), (1.5, 1.5), angles, 100.0, 150.0, det_offset=offset)
    pix, d = geometry_rays(g)  # (V, rows, cols, 3)
    toward_detector = np.stack([-np.sin(angles), np.cos(angles), 0 * angles], -1)  # -e: source to isocentre
    expected = (d * toward_detector[:, None, None, :]).sum(-1)
    w = _cosine_weights(g, torch.float64, "cpu").numpy()
    if not g.per_view_offset:
        assert w.shape == g.det_shape
        w = np.broadcast_to(w, expected.shape)
    assert w.shape == expected.shape and expected.min() < 0.85  # the fan and cone are wide enough to matter
    np.testing.assert_allclose(w, expected, rtol=1e-12, atol=0)
