"""Tests of the Triton renderer (medgmae.render._triton_impl, _triton_binning, _triton_kernels).

On a CPU-only machine the kernels run under ``TRITON_INTERPRET=1`` (set by conftest.py before triton is imported):
the same kernel source that compiles for the GPU. Values are checked against the float64 dense reference of
render_helpers.py, gradients against the torch backend (the kernels compute in float32, so no float64 gradcheck).
The ``gpu`` tests compare both backends on CUDA at realistic sizes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from render_helpers import assert_matches_reference, random_gaussians, special_gaussians  # noqa: E402

from medgmae.render._reference import render_volume_reference as dense_reference  # noqa: E402

from medgmae.render import preprocess_gaussians, render_volume  # noqa: E402
from medgmae.render._torch_impl import bin_gaussians_to_tiles, render_torch  # noqa: E402
from medgmae.render._triton_impl import bin_pairs, render_triton  # noqa: E402

needs_triton_here = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or TRITON_INTERPRET=1",
)
pytestmark = [needs_triton_here, pytest.mark.triton_interpreter]
#: where the kernels run: the GPU if there is one, else the CPU through the interpreter
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _dev(ts):
    return [t.to(DEVICE) for t in ts]


@pytest.fixture(autouse=True)
def tf32_products_in_interpreter(monkeypatch):
    """Make the interpreter's ``tl.dot`` truncate float32 operands to TF32 (10 mantissa bits) like the GPU's
    tensor cores with ``input_precision="tf32"``, so that the CPU tests see the GPU's product precision."""
    if DEVICE.type == "cuda" or os.environ.get("TRITON_INTERPRET") != "1":
        yield
        return
    import numpy as np
    from triton.runtime import interpreter

    original = interpreter.InterpreterBuilder.create_dot

    def tf32_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        def trunc(h):
            if h.data.dtype != np.float32:
                return h
            return interpreter.TensorHandle((h.data.view(np.int32) & np.int32(-8192)).view(np.float32), h.dtype)

        return original(self, trunc(a), trunc(b), d, input_precision, max_num_imprecise_acc)

    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_dot", tf32_dot)
    yield


def _raw(gs, shape, cutoff, tile):
    m, c, i, e = preprocess_gaussians(*_dev(gs), cutoff)
    return render_triton(m, c, i, e, shape, cutoff, tile)


@pytest.mark.parametrize(
    "shape,tile,cutoff",
    [((11, 14, 9), 4, 3.0), ((13, 9, 10), 8, 3.0), ((11, 14, 9), 4, 1.5)],
)
def test_triton_matches_dense_reference(shape, tile, cutoff):
    """Non-cubic volumes, partial tiles, B=2, rotated anisotropic / outside / tiny / huge / needle Gaussians."""
    rnd = random_gaussians(2, 14, shape, seed=11)
    sp = special_gaussians(shape, tiny=0.12)
    gs = [torch.cat([r, s.expand(2, *s.shape[1:])], 1) for r, s in zip(rnd, sp)]
    ref, amb = dense_reference(*gs, shape, cutoff)
    out = _raw(gs, shape, cutoff, tile)
    assert out.shape == (2, *shape) and out.dtype == torch.float32
    assert_matches_reference(out, ref, amb)


def test_triton_accurate_with_tf32_products():
    """Small, sharp Gaussians (where the monomial terms are large and cancel) match the float64 reference to
    float32 accuracy, forward and backward, although tl.dot's operands are TF32 (truncated in the interpreter by
    the fixture below, as the tensor cores do): the coefficient split of the kernels is exact enough."""
    shape = (9, 8, 10)
    gs = random_gaussians(1, 24, shape, seed=21, scale_range=(0.06, 0.3), margin=0.0)
    ref, amb = dense_reference(*gs, shape, 3.0)
    assert_matches_reference(_raw(gs, shape, 3.0, 8), ref, amb, rtol=1e-4, atol=1e-5)
    _check_grads_against_torch(gs, shape, 3.0, 8)


def _worst_weight_error(gs, shape, tile, cutoff=3.0):
    """Worst error of the triton output relative to ``sum_i |I_i| w_i``, the voxel's magnitude before signs cancel
    (so it bounds the relative error of the weights), against the float64 dense reference; terms whose ``q`` is
    within rounding of the cutoff are excused (``amb``)."""
    means, scales, quats, inten = gs
    ref, amb = dense_reference(*gs, shape, cutoff)
    mag, _ = dense_reference(means, scales, quats, inten.abs(), shape, cutoff)
    err = ((_raw(gs, shape, cutoff, tile).detach().cpu().double() - ref).abs() - amb).clamp_min(0)
    live = mag > 1e-9 * mag.max()
    assert err[~live].max().item() <= 1e-9 * mag.max().item() if (~live).any() else True
    return (err[live] / mag[live]).max().item()


#: Bound on the weights' relative error for scales >= 0.06 voxel, per tile edge (module docstring of _triton_kernels:
#: the error bound grows with sum_j |A_j| * max_j |C_j|, ~20x from 8^3 to 16^3 tiles; render_volume uses 8^3);
#: the previous kernel erred by up to 1.5e-4 on 8^3 tiles.
SUB_VOXEL_RTOL = {8: 2e-5, 16: 2e-4}


@pytest.mark.parametrize("seed", [100, 101])
def test_triton_sub_voxel_accuracy_many_draws(seed):
    """24 independent draws (batch items) of 32 sub-voxel Gaussians (scales 0.06-0.3 voxel) filling two 8^3 tiles
    per axis, every tile corner among the voxels: the weights are float32-accurate although the quadratic forms
    are products of large monomial terms that cancel (up to ~3e4 for a sigma of 0.06 at a tile corner)."""
    shape = (16, 16, 16)
    gs = random_gaussians(12, 32, shape, seed=seed, scale_range=(0.06, 0.3), margin=0.0)
    assert _worst_weight_error(gs, shape, 8) < SUB_VOXEL_RTOL[8]


def test_triton_sub_voxel_accuracy_tile16_larger_grid():
    """Tile 16 (monomials up to 56, four times tile 8's) on a larger non-cubic grid, two draws of 48 Gaussians."""
    shape = (32, 20, 24)
    gs = random_gaussians(2, 48, shape, seed=102, scale_range=(0.06, 0.3), margin=0.0)
    assert _worst_weight_error(gs, shape, 16) < SUB_VOXEL_RTOL[16]


@pytest.mark.parametrize("tile", [8, 16])
def test_triton_far_gaussians_no_cancellation(tile):
    """Large Gaussians centred far outside the tile (big tile-local means): float32 cancellation stays small."""
    shape = (8, 8, 8) if tile == 8 else (16, 9, 12)
    means = torch.tensor([[[-40.0, 50.0, 3.0], [4.0, 4.0, 70.0], [30.0, 30.0, 30.0]]])
    scales = torch.tensor([[[20.0, 25.0, 30.0], [8.0, 9.0, 30.0], [15.0, 15.0, 15.0]]])
    quats = torch.tensor([[[0.9, 0.1, 0.3, -0.2], [0.6, 0.3, 0.3, 0.6], [1.0, 0.0, 0.0, 0.0]]])
    inten = torch.tensor([[1.0, 2.0, 0.5]])
    gs = (means, scales, quats, inten)
    ref, amb = dense_reference(*gs, shape, 3.0)
    assert (ref.abs() > 0.01).float().mean() > 0.85  # nearly every voxel gets real contributions
    assert_matches_reference(_raw(gs, shape, 3.0, tile), ref, amb, rtol=2e-5, atol=1e-6)


def test_triton_many_gaussians_per_tile():
    """More Gaussians per tile than one chunk (wide chunks, several loop iterations, staggered backward)."""
    shape = (8, 6, 7)
    gs = random_gaussians(1, 70, shape, seed=12, scale_range=(2.0, 6.0))
    ref, amb = dense_reference(*gs, shape, 3.0)
    out = _raw(gs, shape, 3.0, 4)
    assert_matches_reference(out, ref, amb)
    _check_grads_against_torch(gs, shape, 3.0, 4)


def _check_grads_against_torch(gs, shape, cutoff, tile, seed=0):
    """Triton's gradients of means, conics and intensities against the torch backend's (float64)."""
    m, c, i, e = preprocess_gaussians(*_dev([t.double() for t in gs]), cutoff)
    inputs64 = [t.detach().clone().requires_grad_() for t in (m, c, i)]
    inputs32 = [t.detach().float().clone().requires_grad_() for t in (m, c, i)]
    ref = render_torch(*inputs64[:3], e, shape, cutoff, tile)
    out = render_triton(inputs32[0], inputs32[1], inputs32[2], e.float(), shape, cutoff, tile)
    w = torch.randn(ref.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(DEVICE)
    want = torch.autograd.grad((ref * w).sum(), inputs64)
    got = torch.autograd.grad((out * w.float()).sum(), inputs32)
    for name, a, b in zip(("means", "conics", "intensities"), got, want):
        assert a.dtype == torch.float32
        scale = b.abs().max().item()
        assert scale > 0
        err = (a.double() - b).abs().max().item()
        assert err <= 2e-4 * scale, f"{name}: max error {err:.3g} vs scale {scale:.3g}"


@pytest.mark.parametrize("tile", [4, 8])
def test_triton_gradients_match_torch(tile):
    shape = (10, 7, 12)
    rnd = random_gaussians(2, 10, shape, seed=13)
    sp = special_gaussians(shape, tiny=0.3)
    gs = [torch.cat([r, s.expand(2, *s.shape[1:])], 1) for r, s in zip(rnd, sp)]
    _check_grads_against_torch(gs, shape, 3.0, tile)


def test_render_volume_triton_all_four_gradients():
    """Through the public API: gradients of means, scales, quats, intensities match the torch backend."""
    shape = (9, 8, 10)
    gs32 = _dev(random_gaussians(2, 9, shape, seed=14))
    leaves = {}
    for backend in ("torch", "triton"):
        xs = [t.clone().requires_grad_() for t in gs32]
        out = render_volume(*xs, shape, backend=backend)
        w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
        leaves[backend] = (out, torch.autograd.grad((out * w).sum(), xs))
    torch.testing.assert_close(leaves["triton"][0], leaves["torch"][0], rtol=1e-4, atol=1e-5)
    for name, a, b in zip(("means", "scales", "quats", "intensities"), leaves["triton"][1], leaves["torch"][1]):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * b.abs().max().item(), msg=lambda m: f"{name}: {m}")


def test_triton_float64_inputs_give_float64_outputs():
    shape = (6, 5, 7)
    gs = random_gaussians(1, 6, shape, seed=15, dtype=torch.float64)
    xs = [t.clone().requires_grad_() for t in _dev(gs)]
    out = render_volume(*xs, shape, backend="triton")
    assert out.dtype == torch.float64
    out.sum().backward()
    assert all(x.grad.dtype == torch.float64 for x in xs)
    ref, amb = dense_reference(*gs, shape, 3.0)
    assert_matches_reference(out, ref, amb)


def test_triton_k_zero_and_no_pairs():
    empty = _dev((torch.zeros(2, 0, 3), torch.ones(2, 0, 3), torch.ones(2, 0, 4), torch.ones(2, 0)))
    out = render_volume(*empty, (4, 5, 6), backend="triton")
    assert out.shape == (2, 4, 5, 6) and torch.count_nonzero(out) == 0
    # Gaussians whose cutoff boxes all miss the volume: zero output and zero gradients
    means = torch.tensor([[[-20.0, 2.0, 2.0], [2.0, 40.0, 2.0]]], device=DEVICE, requires_grad=True)
    inten = torch.ones(1, 2, device=DEVICE, requires_grad=True)
    quats = torch.tensor([[[1.0, 0, 0, 0]] * 2], device=DEVICE)
    out = render_volume(means, torch.ones(1, 2, 3, device=DEVICE), quats, inten, (4, 5, 6), backend="triton")
    assert torch.count_nonzero(out) == 0
    out.sum().backward()
    assert torch.count_nonzero(means.grad) == 0 and torch.count_nonzero(inten.grad) == 0


@pytest.mark.parametrize("tile", [4, 8])
def test_bin_pairs_against_torch_binning(tile):
    """The torch backend's box pairs, grouped by (batch, tile) with Gaussians ascending, less culled tiles, each
    of which has no voxel within the cutoff (checked in float64 over the tile)."""
    shape = (21, 9, 17)
    b, k, cutoff = 3, 25, 3.0
    gs = _dev(random_gaussians(b, k, shape, seed=16, scale_range=(0.3, 5.0), margin=8.0))
    m, c, _, e = preprocess_gaussians(*gs, cutoff)
    gids, tile_start, n = bin_pairs(m, c, e, shape, cutoff, tile)
    gid_ref, tid_ref = bin_gaussians_to_tiles(m, e, shape, tile)
    assert n == gid_ref.numel() == gids.numel() and n > 0
    n_keys = tile_start.numel() - 1
    n_tiles = n_keys // b
    assert n_keys % b == 0 and tile_start[0] == 0 and 0 < tile_start[-1] < n  # some culling happened
    got = set()
    for key in range(n_keys):
        seg = gids[tile_start[key] : tile_start[key + 1]].long()
        assert torch.all(seg[1:] > seg[:-1])
        assert torch.all(seg // k == key // n_tiles)  # right batch
        got.update((key, int(g)) for g in seg)
    box = set(zip(((gid_ref // k) * n_tiles + tid_ref).tolist(), gid_ref.tolist()))
    assert got <= box and len(got) == int(tile_start[-1])
    # every culled tile is out of reach: all its voxels have q > cutoff^2
    nt = [(s + tile - 1) // tile for s in shape]
    r = torch.arange(tile, dtype=torch.float64)
    offs = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    m64, c64 = m.double().cpu().reshape(-1, 3), c.double().cpu().reshape(-1, 6)
    for key, g in box - got:
        t = key % n_tiles
        origin = torch.tensor([t // (nt[1] * nt[2]), (t // nt[2]) % nt[1], t % nt[2]], dtype=torch.float64) * tile
        x = origin + offs
        x = x[(x < torch.tensor(shape, dtype=torch.float64)).all(-1)]
        d = x - m64[g]
        p = c64[g]
        q = (p[0] * d[:, 0] ** 2 + p[1] * d[:, 1] ** 2 + p[2] * d[:, 2] ** 2
             + 2 * (p[3] * d[:, 0] * d[:, 1] + p[4] * d[:, 0] * d[:, 2] + p[5] * d[:, 1] * d[:, 2]))  # fmt: skip
        assert q.min() > cutoff**2, (key, g)


def test_triton_on_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    kw = dict(
        means=torch.rand(1, 2, 3), scales=torch.ones(1, 2, 3), quats=torch.ones(1, 2, 4), intensities=torch.ones(1, 2)
    )
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        render_volume(**kw, shape=(4, 4, 4), backend="triton")
    m, c, i, e = preprocess_gaussians(kw["means"], kw["scales"], kw["quats"], kw["intensities"], 3.0)
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        render_triton(m, c, i, e, (4, 4, 4), 3.0)


@pytest.mark.parametrize("tile", [2, 6, 32])
def test_render_triton_bad_tile(tile):
    gs = _dev((torch.rand(1, 2, 3), torch.ones(1, 2, 3), torch.ones(1, 2, 4), torch.ones(1, 2)))
    m, c, i, e = preprocess_gaussians(*gs, 3.0)
    with pytest.raises(ValueError, match="tile"):
        render_triton(m, c, i, e, (4, 4, 4), 3.0, tile)


# ---------------------------------------------------------------------------------------------------------------------
# GPU: both backends at realistic sizes
# ---------------------------------------------------------------------------------------------------------------------
def _gpu_case(b, k, n, scale, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    means = torch.rand(b, k, 3, device="cuda", generator=g) * n
    scales = scale * (0.8 + 0.4 * torch.rand(b, k, 3, device="cuda", generator=g))
    quats = torch.randn(b, k, 4, device="cuda", generator=g)
    inten = torch.rand(b, k, device="cuda", generator=g)
    return means, scales, quats, inten


def _compare_backends_cuda(gs, shape, grad_rtol):
    res = {}
    for backend in ("torch", "triton"):
        xs = [t.clone().requires_grad_() for t in gs]
        out = render_volume(*xs, shape, backend=backend)
        w = torch.randn(out.shape, device="cuda", generator=torch.Generator(device="cuda").manual_seed(2))
        res[backend] = (out.detach(), torch.autograd.grad((out * w).sum(), xs))
    ref = res["torch"][0]
    # on the GPU the split-TF32 products carry up to 2^-20 relative error per coefficient (module docstring)
    torch.testing.assert_close(res["triton"][0], ref, rtol=5e-4, atol=5e-5 * ref.abs().max().item())
    for name, a, b in zip(("means", "scales", "quats", "intensities"), res["triton"][1], res["torch"][1]):
        torch.testing.assert_close(
            a, b, rtol=grad_rtol, atol=grad_rtol * b.abs().max().item(), msg=lambda m: f"{name}: {m}"
        )


@pytest.mark.gpu
def test_gpu_dense_96_b2_k2048():
    shape = (96, 96, 96)
    # MedGMAE's initial scale, 0.2 of the volume (sigma ~19 voxels): every Gaussian covers most tiles
    _compare_backends_cuda(_gpu_case(2, 2048, 96, 0.2 * 96, seed=0), shape, grad_rtol=2e-3)


@pytest.mark.gpu
def test_gpu_sparse_256_k50k():
    shape = (256, 256, 256)
    _compare_backends_cuda(_gpu_case(1, 50_000, 256, 1.5, seed=1), shape, grad_rtol=2e-3)  # sigma 1.2-1.8


@pytest.mark.gpu
@pytest.mark.parametrize("tile,shape,b", [(8, (16, 16, 16), 48), (16, (32, 20, 24), 8)])
def test_gpu_sub_voxel_accuracy(tile, shape, b):
    """The sub-voxel accuracy of the sliced products on the tensor cores themselves (the interpreter only emulates
    TF32 operands, not the hardware's alignment of the accumulation): many draws of 0.06-0.3 voxel Gaussians."""
    gs = random_gaussians(b, 32, shape, seed=200 + tile, scale_range=(0.06, 0.3), margin=0.0)
    assert _worst_weight_error(gs, shape, tile) < SUB_VOXEL_RTOL[tile]
