"""Projectors: PyTorch ray marcher vs ASTRA's CPU 2D projectors, analytic ball line integrals, adjointness,
autograd, and (on GPU) ASTRA's CUDA 3D projectors vs the PyTorch one."""

import logging
import math
import sys

import numpy as np
import pytest
import torch
from chord_helpers import partial_volume_ball

from recon.geometry import CTGeometry
from recon.projectors import AstraProjector, TorchProjector, astra_cuda_available, make_projector, resolve_backend


def _blobs(shape, seed=0, dtype=torch.float64):
    """A smooth-edged random test volume inside the inscribed cylinder."""
    gen = torch.Generator().manual_seed(seed)
    d, h, w = shape
    z, y, x = torch.meshgrid(*[torch.arange(n, dtype=dtype) - (n - 1) / 2 for n in shape], indexing="ij")
    vol = torch.zeros(shape, dtype=dtype)
    for _ in range(5):
        c = (torch.rand(3, generator=gen, dtype=dtype) - 0.5) * torch.tensor([d, h, w], dtype=dtype) * 0.5
        r = 2 + torch.rand(3, generator=gen, dtype=dtype) * min(h, w) / 5
        vol += torch.rand((), generator=gen, dtype=dtype) * (((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2 < 1)
    return vol * 0.02


def _analytic_ball_projection(geom, centre_xyz, radius, mu):
    """Exact line integrals ``2 mu sqrt(R^2 - d^2)`` of a ball through every detector pixel centre."""
    vec = geom.vectors()
    rows, cols = geom.det_shape
    r = np.arange(rows) - (rows - 1) / 2
    c = np.arange(cols) - (cols - 1) / 2
    rr, cc = np.meshgrid(r, c, indexing="ij")
    pix = vec[:, None, None, 3:6] + cc[None, ..., None] * vec[:, None, None, 6:9] + rr[None, ..., None] * vec[:, None, None, 9:12]
    if geom.kind == "parallel":
        d = np.broadcast_to(vec[:, None, None, 0:3], pix.shape)
    else:
        d = pix - vec[:, None, None, 0:3]
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    rel = np.asarray(centre_xyz) - pix
    perp = rel - (rel * d).sum(-1, keepdims=True) * d
    dist2 = (perp**2).sum(-1)
    return 2 * mu * np.sqrt(np.clip(radius**2 - dist2, 0, None)), dist2


@pytest.mark.astra
@pytest.mark.parametrize("name, rel_l2", [("strip", 0.006), ("linear", 0.03)])
def test_torch_matches_astra_cpu_2d_slice_by_slice(name, rel_l2):
    """ASTRA's strip model integrates over the detector pixel width, its linear (Joseph) model interpolates
    along the dominant axis; our ray marcher integrates the trilinear interpolant along the pixel's central
    ray. Strip agrees to well under 1 % (relative L2), linear to a few per cent at sharp edges."""
    g = CTGeometry.parallel((3, 24, 24), 1.0, num_angles=9, arc_deg=180)
    vol = _blobs(g.volume_shape).unsqueeze(0)
    ours = TorchProjector(g, step=0.25)(vol)
    ref = AstraProjector(g, projector_2d=name)(vol)
    err = (ours - ref).norm() / ref.norm()
    assert err < rel_l2
    # slice k of the volume lands on detector row k (and only there)
    single = torch.zeros_like(vol)
    single[0, 1] = vol[0, 1]
    p = AstraProjector(g, projector_2d=name)(single)
    assert p[0, :, 1].abs().sum() > 0 and p[0, :, 0].abs().sum() == 0 and p[0, :, 2].abs().sum() == 0


@pytest.mark.parametrize("kind", ["parallel", "cone"])
def test_ball_line_integrals(kind):
    shape, voxel = (20, 24, 24), (1.0, 1.0, 1.0)
    centre_zyx, radius, mu = (1.3, -2.1, 3.2), 6.0, 0.02
    if kind == "parallel":
        g = CTGeometry.parallel(shape, voxel, num_angles=6)
    else:
        g = CTGeometry.cone(shape, voxel, source_origin=60.0, source_detector=90.0, num_angles=6)
    vol = partial_volume_ball(shape, voxel, centre_zyx, radius, mu)
    ours = TorchProjector(g, step=0.25)(vol).numpy()
    exact, dist2 = _analytic_ball_projection(g, centre_zyx[::-1], radius, mu)
    # Away from the rim: there the partial-volume voxelisation and the trilinear blur shorten chords (a few
    # per cent at 0.8 R, -0.5 % on average in the core; a geometric offset of even half a voxel would give ~10 %).
    inner = dist2 < (0.5 * radius) ** 2
    assert inner.sum() > 50
    rel = (ours[inner] - exact[inner]) / exact[inner]
    assert np.abs(rel).max() < 0.03 and abs(rel.mean()) < 0.01
    outer = dist2 > (radius + 2.0) ** 2
    assert np.abs(ours[outer]).max() < 1e-6 * exact.max()
    # total attenuation mass per view (parallel: integral over the detector = mu * volume)
    if kind == "parallel":
        mass = ours.sum(axis=(1, 2)) * g.det_spacing[0] * g.det_spacing[1]
        np.testing.assert_allclose(mass, mu * 4 / 3 * math.pi * radius**3, rtol=0.01)


@pytest.mark.parametrize("kind", ["parallel", "cone"])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_adjointness(kind, dtype, tol):
    shape = (6, 10, 12)
    g = CTGeometry.parallel(shape, (1.5, 1.0, 1.0), num_angles=7) if kind == "parallel" else CTGeometry.cone(shape, (1.5, 1.0, 1.0), num_angles=7)
    p = TorchProjector(g, step=0.5)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand((2, *shape), generator=gen).to(dtype)
    y = torch.rand((2, *g.proj_shape), generator=gen).to(dtype)
    lhs = (p(x) * y).sum()
    rhs = (x * p.adjoint(y)).sum()
    assert abs(float(lhs - rhs)) <= tol * abs(float(lhs))


@pytest.mark.parametrize("kind", ["parallel", "cone"])
@pytest.mark.parametrize("chunk", [50, 997, 1 << 22])
def test_adjointness_over_chunks_and_view_subsets(kind, chunk, monkeypatch):
    """The adjoint works one chunk of rays at a time (chunks that split rows and views, a last partial one): the
    inner-product identity holds for view subsets in any order, and the ball's analytic integrals do not move."""
    import recon.projectors.torch_proj as tp

    monkeypatch.setattr(tp, "_CHUNK_SAMPLES", chunk)
    shape = (5, 9, 11)
    g = CTGeometry.parallel(shape, (2.0, 1.0, 1.2), num_angles=6) if kind == "parallel" else CTGeometry.cone(shape, (2.0, 1.0, 1.2), num_angles=6)
    p = TorchProjector(g, step=0.5)
    gen = torch.Generator().manual_seed(3)
    views = [4, 0, 5]
    x = torch.rand((2, *shape), generator=gen, dtype=torch.float64)
    y = torch.rand((2, len(views), *g.det_shape), generator=gen, dtype=torch.float64)
    lhs, rhs = (p(x, views=views) * y).sum(), (x * p.adjoint(y, views=views)).sum()
    assert abs(float(lhs - rhs)) <= 1e-12 * abs(float(lhs))
    full = p(x)
    torch.testing.assert_close(p(x, views=views), full[:, views], rtol=1e-12, atol=1e-12)


@pytest.mark.astra
def test_astra_cpu_adjointness_and_autograd():
    g = CTGeometry.parallel((2, 12, 12), 1.0, num_angles=5)
    a = AstraProjector(g)
    x = torch.rand((1, *g.volume_shape), dtype=torch.float64, requires_grad=True)
    y = torch.rand((1, *g.proj_shape), dtype=torch.float64)
    (a(x) * y).sum().backward()
    # ASTRA's CPU backprojector is the transpose of its projector (float32 inside ASTRA)
    torch.testing.assert_close(x.grad, a.adjoint(y), rtol=0, atol=0)
    lhs, rhs = float((a(x.detach()) * y).sum()), float((x.detach() * a.adjoint(y)).sum())
    assert abs(lhs - rhs) < 1e-5 * abs(lhs)


def test_autograd_pairs_are_each_others_backward():
    g = CTGeometry.cone((5, 8, 8), 1.0, num_angles=4)
    p = TorchProjector(g)
    x = torch.rand((1, *g.volume_shape), dtype=torch.float64, requires_grad=True)
    y = torch.rand((1, *g.proj_shape), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: p(v), (x,), eps=1e-6, atol=1e-6, fast_mode=True)
    assert torch.autograd.gradcheck(lambda v: p.adjoint(v), (y,), eps=1e-6, atol=1e-6, fast_mode=True)


def test_view_subsets_match_full_projection():
    g = CTGeometry.parallel((3, 10, 10), 1.0, num_angles=8)
    p = TorchProjector(g)
    x = _blobs(g.volume_shape).unsqueeze(0)
    full = p(x)
    views = [1, 4, 6]
    torch.testing.assert_close(p(x, views=views), full[:, views])
    y = torch.rand_like(full[:, views])
    lhs, rhs = float((p(x, views=views) * y).sum()), float((x * p.adjoint(y, views=views)).sum())
    assert abs(lhs - rhs) < 1e-12 * abs(lhs)


def test_input_validation():
    g = CTGeometry.parallel((3, 10, 10), 1.0, num_angles=4)
    p = make_projector(g, "torch")
    with pytest.raises(ValueError, match="volume must be"):
        p(torch.zeros(1, 3, 10, 11))
    with pytest.raises(ValueError, match="projections must be"):
        p.adjoint(torch.zeros(1, 5, *g.det_shape))
    with pytest.raises(ValueError, match="views"):
        p(torch.zeros(1, 3, 10, 10), views=[4])
    with pytest.raises(ValueError, match="backend"):
        make_projector(g, "gpu")


@pytest.mark.astra
def test_astra_cpu_tensors_never_reach_the_3d_path():
    """CPU tensors take ASTRA's 2D path or raise (ASTRA's 3D functions abort the process without CUDA)."""
    cone = CTGeometry.cone((4, 8, 8), 1.0, num_angles=3)
    with pytest.raises(ValueError, match="parallel-beam|CUDA"):
        AstraProjector(cone)(torch.zeros(1, 4, 8, 8))
    par = CTGeometry.parallel((4, 8, 8), 1.0, det_shape=(6, 12), det_spacing=(1.0, 1.0), num_angles=3)
    with pytest.raises(ValueError, match="one detector row per slice"):
        AstraProjector(par)(torch.zeros(1, 4, 8, 8))
    assert make_projector(cone, "auto", "cpu").name == "matrix"  # no ASTRA CPU cone beam: the ray marcher's matrix
    parallel = CTGeometry.parallel((4, 8, 8), num_angles=6)
    assert make_projector(parallel, "auto", "cpu").name == "astra"  # ASTRA's CPU 2D projectors, slice by slice
    assert make_projector(par, "auto", "cpu").name == "torch"  # rows do not match slices: ASTRA's CPU path cannot
    oblong = CTGeometry.parallel((4, 8, 8), (2.5, 1.2, 1.5), num_angles=6)  # 1.2 x 1.5 mm pixels: ASTRA 2D has one size
    with pytest.raises(ValueError, match="square in-plane voxels"):
        AstraProjector(oblong)(torch.zeros(1, 4, 8, 8))
    assert make_projector(oblong, "auto", "cpu").name == "torch"
    # what reconstruct announces before building: the same choice
    assert [resolve_backend(g, "auto", "cpu") for g in (cone, parallel, par, oblong)] == ["matrix", "astra", "torch", "torch"]


def test_auto_uses_pytorch_where_astra_is_not_installed(monkeypatch):
    """astra-toolbox lacks wheels for some platforms: 'auto' then projects with PyTorch, and asking for ASTRA by
    name says what is missing."""
    monkeypatch.setitem(sys.modules, "astra", None)  # import astra raises ImportError
    parallel = CTGeometry.parallel((4, 8, 8), num_angles=6)
    assert make_projector(parallel, "auto", "cpu").name == "torch"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the choice a CUDA machine makes
    assert resolve_backend(parallel, "auto", "cuda") == "torch"
    with pytest.raises(ValueError, match="needs astra-toolbox installed"):
        make_projector(parallel, "astra", "cpu")


@pytest.mark.astra
def test_auto_says_from_python_why_it_projects_with_the_ray_marcher(caplog):
    """``make_projector(g)`` from Python: where 'auto' leaves ASTRA's CPU projectors for the PyTorch ray marcher
    (about 60 times slower), one warning on the ``recon`` logger says why and how to get ASTRA (the command line
    printed it, Python said nothing); a choice made by name, or one that keeps ASTRA, says nothing."""
    oblong = CTGeometry.parallel((4, 8, 8), (2.5, 1.2, 1.5), num_angles=6)  # 1.2 x 1.5 mm pixels
    square = CTGeometry.parallel((4, 8, 8), 1.0, num_angles=6)
    with caplog.at_level(logging.WARNING, logger="recon"):
        assert make_projector(oblong).name == "torch"
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and said[0].startswith("ASTRA's CPU projectors cannot take this scan (it needs square "
                                                 "in-plane voxels, not 1.2 x 1.5 mm)"), said  # fmt: skip
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="recon"):
        assert make_projector(oblong, "torch").name == "torch" and make_projector(square).name == "astra"
    assert caplog.records == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_cuda_projector_without_cuda_is_refused():
    """``make_projector(g, device="cuda")`` on a machine without CUDA returned a CPU projector without a word; it is
    refused as the toolkit refuses ``--device cuda`` there."""
    g = CTGeometry.parallel((4, 8, 8), num_angles=6)
    for backend in ("auto", "torch"):
        with pytest.raises(ValueError, match="device 'cuda' was requested but CUDA is not available on this machine"):
            make_projector(g, backend, device="cuda")


@pytest.mark.astra
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_tensors_use_astra_2d_even_when_astra_has_cuda(monkeypatch, dtype):
    """astra-toolbox's Linux wheels are CUDA builds: with ``astra.use_cuda()`` answering True (a GPU machine),
    CPU tensors must still take the 2D CPU path, give the same numbers as without CUDA, and ``auto`` on the
    CPU must keep choosing a backend that works there."""
    import astra

    g = CTGeometry.parallel((3, 16, 16), 1.0, num_angles=7)
    vol = _blobs(g.volume_shape, seed=3, dtype=dtype).unsqueeze(0)
    proj = torch.rand((1, *g.proj_shape), generator=torch.Generator().manual_seed(1), dtype=dtype)
    ref_fwd, ref_adj = AstraProjector(g)(vol), AstraProjector(g).adjoint(proj)
    monkeypatch.setattr(astra, "use_cuda", lambda: True)
    assert astra_cuda_available()
    p = make_projector(g, "auto", "cpu")
    assert p.name == "astra"
    fwd, adj = p(vol), p.adjoint(proj)
    assert fwd.device.type == "cpu" and fwd.dtype == dtype and adj.dtype == dtype
    torch.testing.assert_close(fwd, ref_fwd, rtol=0, atol=0)
    torch.testing.assert_close(adj, ref_adj, rtol=0, atol=0)
    # the two are still each other's adjoint (independent of the no-CUDA reference above)
    assert float((fwd * proj).sum()) == pytest.approx(float((vol * adj).sum()), rel=1e-5)
    cone = CTGeometry.cone((4, 8, 8), 1.0, num_angles=3)
    assert make_projector(cone, "auto", "cpu").name == "matrix"
    with pytest.raises(ValueError, match="backend='torch'"):
        AstraProjector(cone)(torch.zeros(1, 4, 8, 8))


@pytest.mark.astra
@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["parallel", "cone"])
@pytest.mark.parametrize("offset", [(0.0, 0.0), (2.5, -1.5)])
def test_astra_cuda_matches_torch(kind, offset):
    """ASTRA's CUDA 3D projectors on this geometry's vectors (a detector offset included) against the ray marcher."""
    if not astra_cuda_available():
        pytest.skip("ASTRA has no CUDA")
    shape = (16, 24, 28)
    make = CTGeometry.parallel if kind == "parallel" else CTGeometry.cone
    g = make(shape, (1.5, 1.0, 1.0), num_angles=10, det_offset=offset)
    x = _blobs(shape, dtype=torch.float32).unsqueeze(0).cuda()
    ours = TorchProjector(g, step=0.25)(x)
    a = AstraProjector(g)
    ref = a(x)
    assert ref.device.type == "cuda"
    assert float((ours - ref).norm() / ref.norm()) < 0.02
    y = torch.rand_like(ref)
    bt, ba = TorchProjector(g, step=0.25).adjoint(y), a.adjoint(y)
    assert float((bt - ba).norm() / ba.norm()) < 0.05
    lhs, rhs = float((a(x) * y).sum()), float((x * a.adjoint(y)).sum())
    assert abs(lhs - rhs) < 0.02 * abs(lhs)  # ASTRA's GPU FP/BP are matched only approximately


@pytest.mark.astra
def test_astra_cpu_cache_stays_bounded_under_random_view_subsets():
    g = CTGeometry.parallel((2, 8, 8), 1.0, num_angles=12)
    p = AstraProjector(g)
    vol = _blobs(g.volume_shape, dtype=torch.float32)
    full = p(vol)
    gen = torch.Generator().manual_seed(0)
    for _ in range(40):
        views = torch.randperm(12, generator=gen)[:4].sort().values
        torch.testing.assert_close(p(vol, views), full[views])
        assert len(p._ids) <= 17
