"""Tests of medgmae.render.render_volume: the torch backend (its stencil and tile paths) and the public API
(dtypes, gradients; argument checks: test_render_inputs.py).

The reference is :func:`medgmae.render._reference.render_volume_reference`, an independent float64 evaluation of
the formula over all voxels and all Gaussians: rotations by quaternion conjugation of the basis vectors, the
covariance ``R diag(s^2) R^T`` inverted with ``torch.linalg.inv``, no tiles, no boxes, no stencils. The Triton
backend's tests use it too.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from medgmae.render import preprocess_gaussians, render_volume
from medgmae.render import _stencil_impl, _stencil_runs
from medgmae.render._reference import render_volume_reference as dense_reference
from medgmae.render._reference import rotation_by_conjugation
from medgmae.render._stencil_impl import MAX_WIDTH, stencil_widths
from medgmae.render._torch_impl import _voxel_ranges, torch_path

from render_helpers import assert_matches_reference, random_gaussians, special_gaussians


SHAPE = (11, 14, 9)


@pytest.mark.parametrize("path", ["auto", "tile"])
@pytest.mark.parametrize("cutoff", [3.0, 1.5])
def test_torch_matches_dense_reference(cutoff, path):
    rnd = random_gaussians(2, 16, SHAPE, seed=1)
    sp = special_gaussians(SHAPE)
    gs = [torch.cat([r, s.expand(2, *s.shape[1:])], 1) for r, s in zip(rnd, sp)]
    ref, amb = dense_reference(*gs, SHAPE, cutoff)
    with torch_path(path):
        out = render_volume(*gs, SHAPE, cutoff=cutoff, backend="torch")
    assert out.shape == (2, *SHAPE) and out.dtype == torch.float32
    assert_matches_reference(out, ref, amb)


def test_cutoff_drops_terms():
    """The cutoff matters (reference without it differs) and is honoured by the backend."""
    gs = random_gaussians(1, 10, SHAPE, seed=2, scale_range=(1.0, 3.0))
    ref_cut, amb = dense_reference(*gs, SHAPE, 1.5)
    ref_full, _ = dense_reference(*gs, SHAPE, 1e3)
    assert (ref_full - ref_cut).abs().max() > 0.05
    assert_matches_reference(render_volume(*gs, SHAPE, cutoff=1.5, backend="torch"), ref_cut, amb)


def test_single_gaussian_analytic():
    """Isotropic unit Gaussian on a voxel centre, cutoff 2: exp(-r^2/2) inside radius 2, exactly 0 beyond."""
    means = torch.tensor([[[4.0, 5.0, 3.0]]])
    quats = torch.tensor([[[1.0, 0.0, 0.0, 0.0]]])  # identity: q is exact in float32, so r = 2 is kept
    out = render_volume(means, torch.ones(1, 1, 3), quats, torch.ones(1, 1), (9, 10, 7), 2.0, "torch")
    assert out[0, 4, 5, 3] == pytest.approx(1.0)
    assert out[0, 5, 5, 3] == pytest.approx(math.exp(-0.5), rel=1e-6)
    assert out[0, 5, 6, 4] == pytest.approx(math.exp(-1.5), rel=1e-6)
    assert out[0, 6, 5, 3] == pytest.approx(math.exp(-2.0), rel=1e-6)  # r = 2: on the boundary, kept
    assert out[0, 6, 6, 3] == 0.0  # r = sqrt(5) > 2
    assert out[0, 4, 5, 6] == 0.0  # r = 3
    assert int((out > 0).sum()) == 33  # lattice points with |v|^2 <= 4: 1 + 6 + 12 + 8 + 6


def test_k_zero_returns_zeros():
    means = torch.zeros(3, 0, 3, requires_grad=True)
    out = render_volume(means, torch.ones(3, 0, 3), torch.ones(3, 0, 4), torch.ones(3, 0), (4, 5, 6), backend="torch")
    assert out.shape == (3, 4, 5, 6) and torch.count_nonzero(out) == 0
    out.sum().backward()
    assert means.grad.shape == (3, 0, 3)


def test_gradcheck_float64_all_inputs():
    """Float64 gradcheck of means, scales, quats and intensities (cutoff 8: the mask's jumps are ~1e-14)."""
    shape = (4, 5, 3)
    gs = random_gaussians(2, 2, shape, seed=3, scale_range=(0.7, 2.0), dtype=torch.float64, margin=1.0)
    gs = [t.clone().requires_grad_() for t in gs]

    def f(m, s, q, i):
        return render_volume(m, s, q, i, shape, cutoff=8.0, backend="torch")

    assert torch.autograd.gradcheck(f, gs, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_float64_gradients_with_cutoff_match_reference():
    """Gradients at the default cutoff against autograd through the dense reference written in torch ops."""
    gs = random_gaussians(2, 8, SHAPE, seed=4, dtype=torch.float64)
    gs = [t.clone().requires_grad_() for t in gs]
    out = render_volume(*gs, SHAPE, cutoff=3.0, backend="torch")
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = torch.autograd.grad((out * w).sum(), gs)
    ref, _ = dense_reference(*gs, SHAPE, 3.0)  # differentiable; the mask is piecewise constant
    want = torch.autograd.grad((ref * w).sum(), gs)
    for name, a, b in zip(("means", "scales", "quats", "intensities"), got, want):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10, msg=lambda m: f"{name}: {m}")


def _stencil_sized(gs, cutoff):
    """Whether every Gaussian's cutoff box fits a stencil (so the torch backend renders all of them that way)."""
    _, _, _, ext = preprocess_gaussians(*gs, cutoff)
    return bool((stencil_widths(ext) <= MAX_WIDTH).all())


# (scale range in voxels, cutoff): sub-voxel, about a voxel, several voxels (the widest stencils)
STENCIL_REGIMES = [((0.1, 0.6), 3.0), ((0.4, 2.0), 3.0), ((1.5, 2.6), 3.0), ((0.3, 4.0), 1.5)]


@pytest.mark.parametrize("seed", range(12))
def test_stencil_path_matches_reference_many_seeds(seed):
    """Rotated anisotropic Gaussians, centres up to 3 voxels outside the volume (boxes cut by the border),
    rendered on stencils only, against the float64 oracle; float32 and float64."""
    scales, cutoff = STENCIL_REGIMES[seed % len(STENCIL_REGIMES)]
    shape = [(11, 14, 9), (7, 16, 12), (13, 5, 10)][seed % 3]
    gs = random_gaussians(2, 40, shape, seed=100 + seed, scale_range=scales)
    assert _stencil_sized(gs, cutoff)
    ref, amb = dense_reference(*gs, shape, cutoff)
    assert ref.abs().max() > 0.1  # something inside the volume
    assert_matches_reference(render_volume(*gs, shape, cutoff=cutoff, backend="torch"), ref, amb)
    out64 = render_volume(*[t.double() for t in gs], shape, cutoff=cutoff, backend="torch")
    assert_matches_reference(out64, ref, amb, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_stencil_path_float64_gradients_match_reference(seed):
    scales, cutoff = STENCIL_REGIMES[seed]
    gs = random_gaussians(2, 12, SHAPE, seed=200 + seed, scale_range=scales, dtype=torch.float64)
    assert _stencil_sized(gs, cutoff)
    gs = [t.clone().requires_grad_() for t in gs]
    out = render_volume(*gs, SHAPE, cutoff=cutoff, backend="torch")
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    got = torch.autograd.grad((out * w).sum(), gs)
    ref, _ = dense_reference(*gs, SHAPE, cutoff)
    want = torch.autograd.grad((ref * w).sum(), gs)
    for name, a, b in zip(("means", "scales", "quats", "intensities"), got, want):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10, msg=lambda m: f"{name}: {m}")


def test_stencil_path_gradcheck_float64():
    """Cutoff 4 with scales up to 1.2 voxels: every box fits a stencil, and the mask's jumps are ~3e-4 of the
    peak, far from the perturbed points."""
    shape = (5, 6, 4)
    gs = random_gaussians(1, 3, shape, seed=7, scale_range=(0.5, 1.2), dtype=torch.float64, margin=1.0)
    assert _stencil_sized(gs, 4.0)
    gs = [t.clone().requires_grad_() for t in gs]

    def f(m, s, q, i):
        return render_volume(m, s, q, i, shape, cutoff=4.0, backend="torch")

    assert torch.autograd.gradcheck(f, gs, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_stencil_chunks_bounded(monkeypatch):
    """A tiny chunk and saved-weight limit (many chunks, weights partly kept from the forward pass and partly
    recomputed) gives the same volume and gradients as the defaults, and no chunk holds more than
    ``CHUNK_ELEMS`` voxel evaluations."""
    gs = random_gaussians(1, 60, SHAPE, seed=9, scale_range=(0.2, 2.5), dtype=torch.float64)
    assert _stencil_sized(gs, 3.0)
    gs = [t.clone().requires_grad_() for t in gs]
    w = torch.randn(1, *SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def run():
        out = render_volume(*gs, SHAPE, cutoff=3.0, backend="torch")
        return out.detach(), torch.autograd.grad((out * w).sum(), gs)

    want = run()
    sizes, calls = [], []
    original = _stencil_runs.Runs._chunks

    def spy(length):
        chunks = original(length)
        sizes.extend((sl.stop - sl.start) * n for sl, n in chunks)
        calls.append(len(chunks))
        return chunks

    monkeypatch.setattr(_stencil_runs, "CHUNK_ELEMS", 200)
    monkeypatch.setattr(_stencil_runs, "BLOCK_COLUMNS", 300)  # several blocks of Gaussians
    monkeypatch.setattr(_stencil_impl, "SAVED_ELEMS", 1000)  # some chunks' weights kept, the rest recomputed
    monkeypatch.setattr(_stencil_runs.Runs, "_chunks", staticmethod(spy))
    got = run()
    assert len(calls) >= 3 and len(sizes) >= 10 and max(sizes) <= 200
    torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=1e-12)
    for a, b in zip(got[1], want[1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_stencil_worker_threads_match_reference(monkeypatch):
    """Blocks rendered by two worker threads (each into its own volume, forward; disjoint moments, backward) give
    the float64 oracle's volume and gradients, bit-identical on a second run, and leave the caller's thread
    count as it was."""
    gs = random_gaussians(2, 40, SHAPE, seed=31, scale_range=(0.3, 2.5), dtype=torch.float64)
    assert _stencil_sized(gs, 3.0)
    gs = [t.clone().requires_grad_() for t in gs]
    w = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    monkeypatch.setattr(_stencil_runs, "BLOCK_COLUMNS", 100)
    monkeypatch.setattr(_stencil_runs, "MIN_BLOCK_COLUMNS", 16)
    groups = []
    original = _stencil_impl._groups
    monkeypatch.setattr(_stencil_impl, "_groups", lambda *a: groups.append(original(*a)) or groups[-1])
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        outs = [render_volume(*gs, SHAPE, cutoff=3.0, backend="torch") for _ in range(2)]
        grads = [torch.autograd.grad((out * w).sum(), gs) for out in outs]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert len(groups) == 2 and all(len(g) == 2 and min(map(len, g)) >= 2 for g in groups)  # two forwards
    ref, amb = dense_reference(*gs, SHAPE, 3.0)
    assert_matches_reference(outs[0].detach(), ref.detach(), amb, rtol=1e-12, atol=1e-12)
    assert torch.equal(outs[0], outs[1])
    want = torch.autograd.grad((ref * w).sum(), gs)
    for name, a, b, c in zip(("means", "scales", "quats", "intensities"), grads[0], want, grads[1]):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10, msg=lambda m: f"{name}: {m}")
        assert torch.equal(a, c), name


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_stencil_worker_pool_is_renewed_in_a_forked_child():
    """A forked child (a data loader worker) has none of the parent's pool threads: it gets a new pool."""
    pool = _stencil_impl._pool(2)
    assert pool.submit(int).result() == 0
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            child = _stencil_impl._pool(2)
            ok = child is not pool and child.submit(lambda: 7).result(timeout=30) == 7
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"


def test_stencil_runs_hold_the_in_cutoff_voxels_once(monkeypatch):
    """The runs cover each Gaussian's in-cutoff voxels (float64 count, within the volume) and nothing else but
    voxels at the cutoff's rounding margin: about one evaluation per in-cutoff pair."""
    shape = (17, 15, 19)
    gs = random_gaussians(1, 50, shape, seed=21, scale_range=(0.3, 2.5), dtype=torch.float64)
    assert _stencil_sized(gs, 3.0)
    means, conics, _, ext = preprocess_gaussians(*gs, 3.0)
    lo, hi, nonempty = _voxel_ranges(means, ext, shape)
    gids = nonempty.reshape(-1).nonzero().squeeze(1)
    lo, hi = lo.reshape(-1, 3)[gids], hi.reshape(-1, 3)[gids]
    monkeypatch.setattr(_stencil_runs, "BLOCK_COLUMNS", 64)  # several blocks
    _, specs = _stencil_runs.plan_blocks(means, conics, gids, lo, hi - lo + 1, shape, 1)
    blocks = [(blk, _stencil_runs.Runs(g, shape, 3.0)) for blk, g in specs]
    evals = sum((sl.stop - sl.start) * n for _, runs in blocks for sl, n in runs.chunks)
    assert len(blocks) >= 5 and sum(blk.stop - blk.start for blk, _ in blocks) == gids.numel()
    m, sc, qt, _ = (t.double() for t in gs)
    rot = rotation_by_conjugation(qt)
    prec = torch.linalg.inv(rot @ torch.diag_embed(sc.square()) @ rot.transpose(-1, -2))
    grid = torch.stack(torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in shape), indexing="ij"), -1)
    d = grid.reshape(1, 1, -1, 3) - m.unsqueeze(2)
    q = torch.einsum("bkvi,bkij,bkvj->bkv", d, prec, d)
    inside, band = int((q <= 9.0).sum()), int(((q - 9.0).abs() <= 1e-6).sum())
    assert inside > 1000 and inside <= evals <= inside + band


def test_stencil_backward_twice_gives_the_same_gradients():
    """The weights kept from the forward pass are not consumed by a backward pass (``retain_graph``)."""
    gs = [t.clone().requires_grad_() for t in random_gaussians(1, 20, SHAPE, seed=11, scale_range=(0.3, 2.0))]
    out = render_volume(*gs, SHAPE, backend="torch")
    first = torch.autograd.grad(out.square().sum(), gs, retain_graph=True)
    second = torch.autograd.grad(out.square().sum(), gs)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.triton_interpreter)])
def test_bf16_under_autocast_computes_in_float32(backend):
    # triton runs on CUDA where there is one, else on the CPU through the interpreter (see conftest.py)
    device = "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"
    shape = (6, 7, 5)
    gs = random_gaussians(1, 5, shape, seed=5, scale_range=(0.8, 2.0))
    bf = [t.to(torch.bfloat16) for t in gs]
    with torch.autocast(device, dtype=torch.bfloat16):
        out = render_volume(*[t.to(device) for t in bf], shape, backend=backend)
    assert out.dtype == torch.float32
    ref, amb = dense_reference(*[t.float() for t in bf], shape, 3.0)
    assert_matches_reference(out, ref, amb)
