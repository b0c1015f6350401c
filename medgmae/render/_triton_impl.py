"""Triton voxel-accumulation renderer with a hand-written backward.

Same inputs and maths as :func:`medgmae.render._torch_impl.render_torch` (pre-processed Gaussians in the
voxel-index frame; ``conics`` = ``(Pdd, Phh, Pww, Pdh, Pdw, Phw)`` of the precision matrix ``P``; ``extents`` =
half-widths of the cutoff boxes), organised like a 3DGS tile rasteriser and evaluated like attention.

**Binning** (:func:`bin_pairs`). The output is split into ``TILE^3`` voxel tiles. A small kernel
(``_emit_pairs_kernel``, one program per Gaussian of the whole ``(B, K)`` set) writes one int32 key
``b * n_tiles + tile`` and one int32 Gaussian index ``b * K + k`` for every tile its (clipped) cutoff box touches,
at offsets given by an exclusive cumulative sum of the per-Gaussian tile counts; tiles of the box that are provably
beyond the cutoff (tile-centre Mahalanobis distance minus the tile's half-diagonal times ``sqrt(lambda_max(P))``)
get a sentinel key that sorts after all others. The only host synchronisation is reading the total pair count to
allocate these arrays. A stable ``torch.sort`` by key groups the pairs by
``(batch, tile)`` (Gaussians in index order inside a tile, so the forward summation order is deterministic) and
``torch.searchsorted`` gives each tile's ``[start, end)`` range. Keys and Gaussian indices are int32 (checked);
offsets into the pair list and into the output are int64, so volumes up to 512^3 with B > 8 and K up to 1M do not
overflow.

**Forward** (``_forward_kernel``, one program per ``(batch, tile)``). With tile-centred voxel coordinates
``x`` (components in ``[-(T-1)/2, (T-1)/2]``, so no float32 cancellation from large absolute positions) and the
tile-local mean ``m``, the quadratic form is linear in the ten monomials of ``x``::

    q = x^T P x - 2 (P m)^T x + m^T P m = A(x) . C(P, m),
    A = (xd^2, xh^2, xw^2, xd xh, xd xw, xh xw, xd, xh, xw, 1),
    C = (Pdd, Phh, Pww, 2Pdh, 2Pdw, 2Phw, -2(Pm)_d, -2(Pm)_h, -2(Pm)_w, m^T P m).

A block of ``BLOCK_V`` voxels of the tile against a chunk of ``BLOCK_G`` Gaussians is therefore one
``(BLOCK_V, 16) x (16, BLOCK_G)`` matrix product (``tl.dot``, the 10 monomials zero-padded to 16) followed by
``exp2``, the cutoff mask and a weighted row sum, like a FlashAttention tile. The program walks its tile block by
block (outer loop) and the tile's Gaussians chunk by chunk (inner loop), so the output is written once, with no
atomics, and every voxel of the volume exactly once (``torch.empty`` output). The coefficients are pre-scaled by ``-log2(e) / 2`` so the product is directly
the ``exp2`` argument.

*Precision of the product.* The terms of ``A . C`` are large and cancel: for a Gaussian of scale 0.06 voxel near a
tile corner the ten products reach ~3e4 in sum while the result ``e`` (``log2`` of the weight) must be right to
~1e-5 where the weight matters (``|e| <= 6.5`` inside the cutoff). Plain float32 arithmetic errs by ~2^-24 of the
terms (~1e-3 in ``e``), in three places: rounding the coefficients ``C`` (``m^T P m`` alone), the tensor cores'
accumulation (on NVIDIA GPUs products are aligned to the largest term, low bits truncated), and TF32's 10-bit
operands. The kernels avoid all three:

1. ``C`` is computed in float64 from the float32 ``m`` and ``P`` (products of two float32 values are exact), then
   held as ``c1 + c2`` in float32 (~2^-48 relative).
2. With ``2^k <= M = max_j |C_j| < 2^(k+1)`` per Gaussian, ``C`` is sliced as ``hi + mid + lo``: ``hi`` is ``C``
   rounded to the grid ``g1 = 2^(k-10)`` (at most 11 significant bits: exact in TF32), ``mid`` the remainder
   rounded to ``g2 = 2^(k-21)`` (exact in TF32, ``|mid| <= g1 / 2``), ``lo`` the rest (``<= g2 / 2``) rounded to
   TF32 (``(x + 1.5 * 2^23 g) - 1.5 * 2^23 g`` rounds ``x`` to the grid ``g`` exactly).
3. The monomials of the tile-centred grid are multiples of 1/4 no larger than ``(T/2)^2``, so ``A_j hi_j`` are
   integers times ``g1 / 4`` and their partial sums stay below ``2^22`` such units for ``T <= 16``: the ``hi``
   product is exact in any order and under any alignment. The ``mid`` product accumulates onto it: for a pair
   inside the cutoff ``|A . hi| <= |e| + sum_j |A_j| g1 / 2``, so that sum and the ``mid`` products span under 24
   bits above ``g2 / 4`` and are exact too (or, when ``|e|`` dominates, rounded to ~2^-22 of ``|e|``). The ``lo``
   product adds to a running sum that is already ``~e``, with errors ~2^-24 of it.

So ``|e_kernel - e| <= 2^(k-33) sum_j |A_j| + 2^-21 |e|``: the only sizeable term is the TF32 rounding of ``lo``,
``sum_j |A_j| <= 85`` for ``T = 8`` (361 for ``T = 16``) at a tile corner, and ``M`` at most ~``0.72 |P| |m|^2``.
For a scale of 0.06 voxel (``|P| = 278``) at an 8^3 tile's corner (``|m|^2 ~ 37``) the bound is ~7e-5 in ``e``,
i.e. ~5e-5 relative in the weight; errors of random sign over ten slices stay far below it. Measured against the
float64 oracle with TF32-truncated products (interpreter; the draws of ``tests/test_render_triton.py``, Gaussians
of 0.06-0.3 voxel): worst relative weight error 2.9e-6 over 24 draws on 8^3 tiles (the previous scheme: 1.5e-4),
6.0e-5 on 16^3 tiles (previously 5.9e-4), whose bound is ~20x larger. The error scales as ``1 / scale^2``, so
Gaussians of a voxel or more are accurate to ~1e-7. The price: the float64 coefficients and the slicing, per
Gaussian and voxel block in the forward (an estimate from the code: one or two float64 operations per
Gaussian-voxel pair; not yet timed on a GPU) and per Gaussian chunk in the backward; the three chained TF32
products per pair are as before (the previous scheme rounded ``C`` in float32, sliced each coefficient relative to
its own size and accumulated the smallest slice first). The AOT test checks that the grid rounding survives
compilation (two exact FMAs with ``+-12288 * 2^k``).

**Backward** (``_backward_kernel``, one program per ``(batch, tile)``). For each chunk of ``BLOCK_G`` Gaussians
it walks the tile in blocks of ``BLOCK_V`` voxels, recomputing the weights with the same sliced product (the
slices computed once per chunk; here transposed, Gaussians along the rows, so that the per-Gaussian sums are row
reductions inside a thread and a few lanes, and per-Gaussian values are not replicated across the accumulator
layout), and accumulates with ``g`` the
incoming gradient: ``dL/dI = sum_v g w`` and the nine monomial moments ``sum_v g w A_vj``; ``dL/dC_j`` is these
times ``-I/2`` (``dL/dq = -1/2 g I w``), the constant monomial's being ``-I/2 dL/dI``. A voxel block lies inside
one d-slice of the tile, so ``xd`` is constant over it and the four moments involving ``xd`` follow from the
others: per Gaussian-voxel element this costs 5 multiplies and 6 row-sum adds besides the exponential. The moments
map to the conic and mean gradients in closed form. The moments are plain FMAs and row sums rather than a second ``A^T r`` tensor-core
product: that product has a 16-row output and a long contraction, which ``mma`` can only do with every warp
holding whole operands (255 registers and heavy spills in ``ptxas -v``). Each program then adds its per-Gaussian
partial sums (10 floats per pair) to the outputs with relaxed ``tl.atomic_add`` (``red.global.add.f32``). A
per-pair buffer plus segmented reduction would need ``10 x 4`` bytes per pair written and read again (1.1 GB at
B=8, K=2048, 96^3, where a pair is 512 voxel evaluations), while the atomics touch only ``B*K*10`` floats that stay
resident in L2; to spread the contention of the dense regime (every tile holding the same Gaussians) each program
starts its chunk loop at a different chunk (``pid mod n_chunks``). The price is that the gradient summation order,
and so the last bits of the gradients, are not deterministic (the forward is).

Launch shapes (:func:`_launch_config`) are chosen so that no kernel spills registers on sm_80 or sm_90.

Everything runs unchanged under ``TRITON_INTERPRET=1`` on CPU tensors (how the tests run it); ``tl.dot``'s
``input_precision`` is ignored there (numpy float32 matmul).

This module is longer than the toolkit's other modules on purpose: the forward kernel and its hand-written backward
twin must evaluate exactly the same weights, so they share the device helpers (tile coordinates, voxel blocks,
coefficient slicing, ``log2`` weights) and the precision argument above, and are kept in one file where a change
to one is seen beside the other. The two long kernels (``_emit_pairs_kernel``, ``_backward_kernel``) follow the
derivations above step by step; split into helpers they would pass a dozen per-Gaussian values back and forth as
long tuples, which reads worse.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from medgmae.render._torch_impl import _tile_grid, _voxel_ranges

__all__ = ["TILE", "bin_pairs", "render_triton"]

#: Edge of the cubic voxel tiles (``TILE^3`` voxels per program).
TILE = 8
_LOG2E = 1.4426950408889634
_INT32_MAX = 2**31 - 1


# --------------------------------------------------------------------------------------------------------------------
# binning
# --------------------------------------------------------------------------------------------------------------------
@triton.jit
def _emit_pairs_kernel(
    tlo_ptr,  # (N, 3) int32 first tile index per axis
    span_ptr,  # (N, 3) int32 number of tiles per axis (0 for an empty box)
    start_ptr,  # (N,) int64 exclusive cumulative pair count
    means_ptr,  # (N, 3) float32
    conics_ptr,  # (N, 6) float32
    keys_ptr,  # (P,) int32 out: b * n_tiles + tile, or the sentinel B * n_tiles for a culled tile
    gids_ptr,  # (P,) int32 out: b * K + k
    K,
    NT_H,
    NT_W,
    N_TILES,
    SENTINEL,
    cull_dist,  # cutoff with a rounding margin
    TILE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Write the ``(key, Gaussian)`` pairs of Gaussian ``g`` (one program each) for the tiles its box touches.

    Over 60 lines because the Gaussian's mean and nine precision values are loaded once and all used by the tile
    loop's culling test; helpers would pass them around as long tuples.
    """
    g = tl.program_id(0).to(tl.int64)
    mu_d = tl.load(means_ptr + g * 3 + 0)
    mu_h = tl.load(means_ptr + g * 3 + 1)
    mu_w = tl.load(means_ptr + g * 3 + 2)
    pdd = tl.load(conics_ptr + g * 6 + 0)
    phh = tl.load(conics_ptr + g * 6 + 1)
    pww = tl.load(conics_ptr + g * 6 + 2)
    pdh = tl.load(conics_ptr + g * 6 + 3)
    pdw = tl.load(conics_ptr + g * 6 + 4)
    phw = tl.load(conics_ptr + g * 6 + 5)
    # lambda_max(P) <= min(trace, largest Gershgorin row sum); tile voxels lie within `rho` of the tile centre
    gersh = tl.maximum(tl.maximum(pdd + tl.abs(pdh) + tl.abs(pdw), phh + tl.abs(pdh) + tl.abs(phw)),
                       pww + tl.abs(pdw) + tl.abs(phw))  # fmt: skip
    lam = tl.minimum(pdd + phh + pww, gersh)
    rho = (TILE - 1) * 0.8660254037844386  # (TILE - 1) / 2 * sqrt(3)
    reach = cull_dist + rho * tl.sqrt(lam)
    sd = tl.load(span_ptr + g * 3 + 0)
    sh = tl.load(span_ptr + g * 3 + 1)
    sw = tl.load(span_ptr + g * 3 + 2)
    td0 = tl.load(tlo_ptr + g * 3 + 0)
    th0 = tl.load(tlo_ptr + g * 3 + 1)
    tw0 = tl.load(tlo_ptr + g * 3 + 2)
    start = tl.load(start_ptr + g)
    count = sd * sh * sw
    base = (g // K) * N_TILES
    gid32 = g.to(tl.int32)
    offs = tl.arange(0, BLOCK)
    for i in range(0, count, BLOCK):
        local = i + offs
        mask = local < count
        tw = local % sw
        th = (local // sw) % sh
        td = local // (sw * sh)
        tile = ((td + td0) * NT_H + (th + th0)) * NT_W + (tw + tw0)
        # cull tiles whose every voxel is beyond the cutoff: |x - mu|_P >= |c - mu|_P - rho sqrt(lambda_max)
        dd = ((td + td0) * TILE).to(tl.float32) + (TILE - 1) * 0.5 - mu_d
        dh = ((th + th0) * TILE).to(tl.float32) + (TILE - 1) * 0.5 - mu_h
        dw = ((tw + tw0) * TILE).to(tl.float32) + (TILE - 1) * 0.5 - mu_w
        q = (pdd * dd * dd + phh * dh * dh + pww * dw * dw
             + 2.0 * (pdh * dd * dh + pdw * dd * dw + phw * dh * dw))  # fmt: skip
        key = tl.where(q <= reach * reach, base + tile, SENTINEL)
        dst = start + local.to(tl.int64)
        tl.store(keys_ptr + dst, key.to(tl.int32), mask=mask)
        tl.store(gids_ptr + dst, tl.zeros([BLOCK], dtype=tl.int32) + gid32, mask=mask)


def bin_pairs(
    means: Tensor, conics: Tensor, extents: Tensor, shape: Sequence[int], cutoff: float, tile: int = TILE
) -> tuple[Tensor, Tensor, int]:
    """Bin all Gaussians of the batch to the voxel tiles their cutoff boxes touch, culling tiles out of reach.

    A tile of the box is dropped when even its nearest voxel is provably beyond the cutoff: the Mahalanobis
    distance of the tile centre minus the tile's half-diagonal times ``sqrt(lambda_max(P))`` (bounded by the
    trace and the Gershgorin row sums) exceeds ``cutoff``. This removes about a quarter of the pairs in the dense
    regime (the corners of the boxes around large ellipsoids). Culled pairs get a sentinel key that sorts last.

    Args:
        means: ``(B, K, 3)`` float32 centres in voxel coordinates.
        conics: ``(B, K, 6)`` float32 precision entries.
        extents: ``(B, K, 3)`` cutoff-box half-widths in voxels.
        shape: ``(D, H, W)``.
        cutoff: Mahalanobis cutoff.
        tile: tile edge in voxels.

    Returns:
        ``(gids, tile_start, n_pairs)``: ``gids`` ``(P,)`` int32 flat Gaussian indices ``b * K + k`` sorted by
        ``(batch, tile)`` key (and by Gaussian inside a tile); ``tile_start`` ``(B * n_tiles + 1,)`` int64 so that
        the pairs of key ``j`` are ``gids[tile_start[j]:tile_start[j + 1]]``; ``n_pairs`` = P, the number of box
        pairs before culling (``tile_start[-1]`` of them were kept; the rest trail ``gids``).

    Over 60 lines because it is one pipeline (tile ranges, pair emission, sort, tile offsets) whose intermediates mean
    nothing apart; most of its body is the kernel launch's argument list.
    """
    b, k = means.shape[:2]
    nt = _tile_grid(shape, tile)
    n_tiles = nt[0] * nt[1] * nt[2]
    if b * n_tiles + 1 > _INT32_MAX or b * k > _INT32_MAX:
        raise ValueError(f"B * tiles ({b * n_tiles}) and B * K ({b * k}) must fit in int32 for the triton backend")
    device = means.device
    lo, hi, nonempty = _voxel_ranges(means.detach(), extents.detach(), shape)
    tlo = torch.div(lo, tile, rounding_mode="floor")
    thi = torch.div(hi, tile, rounding_mode="floor")
    span = (thi - tlo + 1) * nonempty.unsqueeze(-1)
    counts = span.prod(-1).reshape(-1)
    ends = torch.cumsum(counts, 0)
    n_pairs = int(ends[-1]) if ends.numel() else 0  # the one host sync: the size of the pair list
    if n_pairs == 0:
        return (
            torch.zeros(0, dtype=torch.int32, device=device),
            torch.zeros(b * n_tiles + 1, dtype=torch.int64, device=device),
            0,
        )
    keys = torch.empty(n_pairs, dtype=torch.int32, device=device)
    gids = torch.empty(n_pairs, dtype=torch.int32, device=device)
    _emit_pairs_kernel[(b * k,)](
        tlo.to(torch.int32).contiguous(),
        span.to(torch.int32).contiguous(),
        (ends - counts).contiguous(),
        means.contiguous(),
        conics.contiguous(),
        keys,
        gids,
        k,
        nt[1],
        nt[2],
        n_tiles,
        b * n_tiles,
        float(cutoff) * (1.0 + 1e-3) + 1e-3,
        TILE=tile,
        BLOCK=256,
    )
    keys, order = torch.sort(keys, stable=True)
    gids = gids[order]
    bounds = torch.arange(b * n_tiles + 1, dtype=torch.int32, device=device)
    tile_start = torch.searchsorted(keys, bounds)  # int64
    return gids, tile_start, n_pairs


# --------------------------------------------------------------------------------------------------------------------
# shared device helpers
# --------------------------------------------------------------------------------------------------------------------
@triton.jit
def _tile_coords(pid, N_TILES, NT_H, NT_W, TILE: tl.constexpr):
    """Batch index, tile grid indices and the tile centre (voxel coordinates) of program ``pid``."""
    b = pid // N_TILES
    t = pid % N_TILES
    t_d = t // (NT_H * NT_W)
    t_h = (t // NT_W) % NT_H
    t_w = t % NT_W
    half = (TILE - 1) * 0.5
    c_d = (t_d * TILE).to(tl.float32) + half
    c_h = (t_h * TILE).to(tl.float32) + half
    c_w = (t_w * TILE).to(tl.float32) + half
    return b, t_d, t_h, t_w, c_d, c_h, c_w


@triton.jit
def _voxel_block(v0, b, t_d, t_h, t_w, D, H, W, TILE: tl.constexpr, BLOCK_V: tl.constexpr):
    """Voxels ``v0 .. v0 + BLOCK_V`` of a tile: monomials A ``(BLOCK_V, 16)``, output offsets, in-volume mask and
    the tile-centred coordinates ``xd, xh, xw``."""
    v = v0 + tl.arange(0, BLOCK_V)
    vd = v // (TILE * TILE)
    vh = (v // TILE) % TILE
    vw = v % TILE
    gd = t_d * TILE + vd
    gh = t_h * TILE + vh
    gw = t_w * TILE + vw
    inside = (gd < D) & (gh < H) & (gw < W)
    out_off = b * D * H * W + (gd * H + gh) * W + gw  # int64: b and the tile indices are int64
    half = (TILE - 1) * 0.5
    xd = vd.to(tl.float32) - half
    xh = vh.to(tl.float32) - half
    xw = vw.to(tl.float32) - half
    col = tl.arange(0, 16)[None, :]
    a = tl.where(col == 0, (xd * xd)[:, None], 0.0)
    a = tl.where(col == 1, (xh * xh)[:, None], a)
    a = tl.where(col == 2, (xw * xw)[:, None], a)
    a = tl.where(col == 3, (xd * xh)[:, None], a)
    a = tl.where(col == 4, (xd * xw)[:, None], a)
    a = tl.where(col == 5, (xh * xw)[:, None], a)
    a = tl.where(col == 6, xd[:, None], a)
    a = tl.where(col == 7, xh[:, None], a)
    a = tl.where(col == 8, xw[:, None], a)
    a = tl.where(col == 9, 1.0, a)
    return a, out_off, inside, xd, xh, xw


@triton.jit
def _load_chunk(gids_ptr, means_ptr, conics_ptr, inten_ptr, j, end, c_d, c_h, c_w, BLOCK_G: tl.constexpr):
    """Load a chunk of Gaussians starting at pair ``j``; tile-local means and the precision entries."""
    jj = j + tl.arange(0, BLOCK_G)
    gmask = jj < end
    g = tl.load(gids_ptr + jj, mask=gmask, other=0).to(tl.int64)
    md = tl.load(means_ptr + g * 3 + 0, mask=gmask, other=0.0) - c_d
    mh = tl.load(means_ptr + g * 3 + 1, mask=gmask, other=0.0) - c_h
    mw = tl.load(means_ptr + g * 3 + 2, mask=gmask, other=0.0) - c_w
    pdd = tl.load(conics_ptr + g * 6 + 0, mask=gmask, other=0.0)
    phh = tl.load(conics_ptr + g * 6 + 1, mask=gmask, other=0.0)
    pww = tl.load(conics_ptr + g * 6 + 2, mask=gmask, other=0.0)
    pdh = tl.load(conics_ptr + g * 6 + 3, mask=gmask, other=0.0)
    pdw = tl.load(conics_ptr + g * 6 + 4, mask=gmask, other=0.0)
    phw = tl.load(conics_ptr + g * 6 + 5, mask=gmask, other=0.0)
    inten = tl.load(inten_ptr + g, mask=gmask, other=0.0)
    return g, gmask, md, mh, mw, pdd, phh, pww, pdh, pdw, phw, inten


@triton.jit
def _bcast(v, G_ROWS: tl.constexpr):
    """A per-Gaussian vector as a row (Gaussians along the columns) or, with ``G_ROWS``, as a column."""
    if G_ROWS:
        return v[:, None]
    else:
        return v[None, :]


@triton.jit
def _coefficient_slices(md, mh, mw, pdd, phh, pww, pdh, pdw, phw, G_ROWS: tl.constexpr):
    """The coefficients ``C`` of the chunk (pre-scaled by ``-log2(e)/2``) as three TF32-exact slices.

    Returns ``(hi, mid, lo)``, each ``(16, BLOCK_G)`` (``(BLOCK_G, 16)`` with ``G_ROWS``), rows 10-15 zero:
    ``hi`` and ``mid`` on the per-Gaussian fixed-point grids ``g1 = 2^(k-10)`` and ``g2 = 2^(k-21)``, where
    ``2^k <= max_j |C_j| < 2^(k+1)``, and ``lo`` the remainder rounded to TF32 (module docstring: *Precision*).
    """
    md64 = md.to(tl.float64)
    mh64 = mh.to(tl.float64)
    mw64 = mw.to(tl.float64)
    pdd64 = pdd.to(tl.float64)
    phh64 = phh.to(tl.float64)
    pww64 = pww.to(tl.float64)
    pdh64 = pdh.to(tl.float64)
    pdw64 = pdw.to(tl.float64)
    phw64 = phw.to(tl.float64)
    # float64: products of two float32 values are exact, so C carries ~2^-50 relative error
    pmd = pdd64 * md64 + pdh64 * mh64 + pdw64 * mw64
    pmh = pdh64 * md64 + phh64 * mh64 + phw64 * mw64
    pmw = pdw64 * md64 + phw64 * mh64 + pww64 * mw64
    mpm = md64 * pmd + mh64 * pmh + mw64 * pmw
    s = -0.7213475204444817  # -log2(e) / 2 (a common factor of all C_j: its own rounding is harmless)
    if G_ROWS:
        j = tl.arange(0, 16)[None, :]
    else:
        j = tl.arange(0, 16)[:, None]
    c = tl.where(j == 0, _bcast(s * pdd64, G_ROWS), 0.0)
    c = tl.where(j == 1, _bcast(s * phh64, G_ROWS), c)
    c = tl.where(j == 2, _bcast(s * pww64, G_ROWS), c)
    c = tl.where(j == 3, _bcast(2.0 * s * pdh64, G_ROWS), c)
    c = tl.where(j == 4, _bcast(2.0 * s * pdw64, G_ROWS), c)
    c = tl.where(j == 5, _bcast(2.0 * s * phw64, G_ROWS), c)
    c = tl.where(j == 6, _bcast(-2.0 * s * pmd, G_ROWS), c)
    c = tl.where(j == 7, _bcast(-2.0 * s * pmh, G_ROWS), c)
    c = tl.where(j == 8, _bcast(-2.0 * s * pmw, G_ROWS), c)
    c = tl.where(j == 9, _bcast(s * mpm, G_ROWS), c)
    c1 = c.to(tl.float32)  # C = c1 + c2 to ~2^-48 relative
    c2 = (c - c1.to(tl.float64)).to(tl.float32)
    if G_ROWS:
        big = tl.max(tl.abs(c1), axis=1)
    else:
        big = tl.max(tl.abs(c1), axis=0)
    p2k = (big.to(tl.int32, bitcast=True) & 0x7F800000).to(tl.float32, bitcast=True)  # 2^k (0 for an empty lane)
    # (x + 1.5 * 2^23 * g) - 1.5 * 2^23 * g rounds x to a multiple of g (|x| < 2^22 g): 1.5 * 2^23 * g1 = 12288 * 2^k
    b1 = _bcast(p2k * 12288.0, G_ROWS)
    b2 = _bcast(p2k * 6.0, G_ROWS)
    hi = (c1 + b1) - b1
    r1 = c1 - hi  # exact, |r1| <= g1 / 2
    mid = (r1 + b2) - b2
    lo = _round_tf32((r1 - mid) + c2)
    return hi, mid, lo


@triton.jit
def _round_tf32(x):
    """``x`` rounded to the nearest TF32 value (10 mantissa bits; ties away from zero)."""
    return ((x.to(tl.int32, bitcast=True) + 4096) & -8192).to(tl.float32, bitcast=True)


@triton.jit
def _log2_weights(a, hi, mid, lo, gmask, thr):
    """``log2`` of the Gaussian weights ``(BLOCK_V, BLOCK_G)`` and the within-cutoff mask.

    The largest slice first, each later product accumulating onto it: ``hi``'s fixed-point sum is exact, and the
    running sum the tensor cores align the next products to is then already small (module docstring).
    """
    e = tl.dot(a, hi, input_precision="tf32")
    e = tl.dot(a, mid, acc=e, input_precision="tf32")
    e = tl.dot(a, lo, acc=e, input_precision="tf32")
    keep = (e >= thr) & gmask[None, :]
    return e, keep


@triton.jit
def _voxel_block_t(v0, b, t_d, t_h, t_w, D, H, W, TILE: tl.constexpr, BLOCK_V: tl.constexpr):
    """As :func:`_voxel_block` with the monomials transposed, ``(16, BLOCK_V)`` (voxels along the columns)."""
    v = v0 + tl.arange(0, BLOCK_V)
    vd = v // (TILE * TILE)
    vh = (v // TILE) % TILE
    vw = v % TILE
    gd = t_d * TILE + vd
    gh = t_h * TILE + vh
    gw = t_w * TILE + vw
    inside = (gd < D) & (gh < H) & (gw < W)
    out_off = b * D * H * W + (gd * H + gh) * W + gw
    half = (TILE - 1) * 0.5
    xd = vd.to(tl.float32) - half
    xh = vh.to(tl.float32) - half
    xw = vw.to(tl.float32) - half
    row = tl.arange(0, 16)[:, None]
    a = tl.where(row == 0, (xd * xd)[None, :], 0.0)
    a = tl.where(row == 1, (xh * xh)[None, :], a)
    a = tl.where(row == 2, (xw * xw)[None, :], a)
    a = tl.where(row == 3, (xd * xh)[None, :], a)
    a = tl.where(row == 4, (xd * xw)[None, :], a)
    a = tl.where(row == 5, (xh * xw)[None, :], a)
    a = tl.where(row == 6, xd[None, :], a)
    a = tl.where(row == 7, xh[None, :], a)
    a = tl.where(row == 8, xw[None, :], a)
    a = tl.where(row == 9, 1.0, a)
    return a, out_off, inside, xd, xh, xw


@triton.jit
def _log2_weights_t(a_t, hi, mid, lo, gmask, thr):
    """As :func:`_log2_weights`, transposed: ``(BLOCK_G, BLOCK_V)`` with Gaussians along the rows."""
    e = tl.dot(hi, a_t, input_precision="tf32")
    e = tl.dot(mid, a_t, acc=e, input_precision="tf32")
    e = tl.dot(lo, a_t, acc=e, input_precision="tf32")
    keep = (e >= thr) & gmask[:, None]
    return e, keep


# --------------------------------------------------------------------------------------------------------------------
# forward / backward kernels
# --------------------------------------------------------------------------------------------------------------------
@triton.jit
def _forward_kernel(
    means_ptr,
    conics_ptr,
    inten_ptr,
    gids_ptr,
    tile_start_ptr,
    out_ptr,
    N_TILES,
    NT_H,
    NT_W,
    D,
    H,
    W,
    thr,
    TILE: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_G: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    b, t_d, t_h, t_w, c_d, c_h, c_w = _tile_coords(pid, N_TILES, NT_H, NT_W, TILE)
    start = tl.load(tile_start_ptr + pid)
    end = tl.load(tile_start_ptr + pid + 1)
    for s in range(0, TILE * TILE * TILE // BLOCK_V):
        a, out_off, inside, xd, xh, xw = _voxel_block(s * BLOCK_V, b, t_d, t_h, t_w, D, H, W, TILE, BLOCK_V)
        acc = tl.zeros([BLOCK_V], dtype=tl.float32)
        for j in range(start, end, BLOCK_G):
            g, gmask, md, mh, mw, pdd, phh, pww, pdh, pdw, phw, inten = _load_chunk(
                gids_ptr, means_ptr, conics_ptr, inten_ptr, j, end, c_d, c_h, c_w, BLOCK_G
            )
            hi, mid, lo = _coefficient_slices(md, mh, mw, pdd, phh, pww, pdh, pdw, phw, False)
            e, keep = _log2_weights(a, hi, mid, lo, gmask, thr)
            w = tl.where(keep, tl.exp2(e), 0.0)
            acc += tl.sum(w * inten[None, :], axis=1)
        tl.store(out_ptr + out_off, acc, mask=inside)


@triton.jit
def _backward_kernel(
    means_ptr,
    conics_ptr,
    inten_ptr,
    gids_ptr,
    tile_start_ptr,
    grad_out_ptr,
    g_means_ptr,
    g_conics_ptr,
    g_inten_ptr,
    N_TILES,
    NT_H,
    NT_W,
    D,
    H,
    W,
    thr,
    TILE: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_G: tl.constexpr,
):
    """Gradients of the means, conics and intensities from one ``(batch, tile)`` program (see the module docstring).

    Over 60 lines because the ten per-Gaussian moment accumulators of the voxel-block loop feed the closed-form
    conic and mean gradients right after it; helpers would pass the ten values back and forth as long tuples.
    """
    pid = tl.program_id(0).to(tl.int64)
    b, t_d, t_h, t_w, c_d, c_h, c_w = _tile_coords(pid, N_TILES, NT_H, NT_W, TILE)
    start = tl.load(tile_start_ptr + pid)
    end = tl.load(tile_start_ptr + pid + 1)
    n_chunks = (end - start + BLOCK_G - 1) // BLOCK_G
    tl.static_assert(BLOCK_V <= TILE * TILE, "a backward voxel block must lie in one d-slice of the tile")
    for i in range(0, n_chunks):
        # staggered start: concurrent programs of the dense regime add to different Gaussians
        j = start + ((i + pid) % n_chunks) * BLOCK_G
        g, gmask, md, mh, mw, pdd, phh, pww, pdh, pdw, phw, inten = _load_chunk(
            gids_ptr, means_ptr, conics_ptr, inten_ptr, j, end, c_d, c_h, c_w, BLOCK_G
        )
        hi, mid, lo = _coefficient_slices(md, mh, mw, pdd, phh, pww, pdh, pdw, phw, True)
        # dL/dC_j = sum_v A_vj r_v, accumulated over the tile's voxel blocks; g9 = sum r = -I/2 dL/dI
        d_inten = tl.zeros([BLOCK_G], dtype=tl.float32)
        g0 = tl.zeros([BLOCK_G], dtype=tl.float32)
        g1 = tl.zeros([BLOCK_G], dtype=tl.float32)
        g2 = tl.zeros([BLOCK_G], dtype=tl.float32)
        g3 = tl.zeros([BLOCK_G], dtype=tl.float32)
        g4 = tl.zeros([BLOCK_G], dtype=tl.float32)
        g5 = tl.zeros([BLOCK_G], dtype=tl.float32)
        g6 = tl.zeros([BLOCK_G], dtype=tl.float32)
        g7 = tl.zeros([BLOCK_G], dtype=tl.float32)
        g8 = tl.zeros([BLOCK_G], dtype=tl.float32)
        for s in range(0, TILE * TILE * TILE // BLOCK_V):
            a_t, out_off, inside, xd, xh, xw = _voxel_block_t(s * BLOCK_V, b, t_d, t_h, t_w, D, H, W, TILE, BLOCK_V)
            go = tl.load(grad_out_ptr + out_off, mask=inside, other=0.0)
            e, keep = _log2_weights_t(a_t, hi, mid, lo, gmask, thr)
            gw = tl.where(keep, tl.exp2(e), 0.0) * go[None, :]
            # the block lies in one d-slice of the tile: xd is constant, its moments follow from the others
            xd0 = ((s * BLOCK_V) // (TILE * TILE)) * 1.0 - (TILE - 1) * 0.5  # "* 1.0": a loop index or a Python int
            r_h = gw * xh[None, :]
            r_w = gw * xw[None, :]
            s0 = tl.sum(gw, axis=1)
            s_h = tl.sum(r_h, axis=1)
            s_w = tl.sum(r_w, axis=1)
            d_inten += s0
            g1 += tl.sum(r_h * xh[None, :], axis=1)
            g2 += tl.sum(r_w * xw[None, :], axis=1)
            g5 += tl.sum(r_h * xw[None, :], axis=1)
            g7 += s_h
            g8 += s_w
            g6 += xd0 * s0
            g0 += (xd0 * xd0) * s0
            g3 += xd0 * s_h
            g4 += xd0 * s_w
        # the sums above are of g*w; dL/dq = -I/2 g w
        rs = -0.5 * inten
        g0 = g0 * rs
        g1 = g1 * rs
        g2 = g2 * rs
        g3 = g3 * rs
        g4 = g4 * rs
        g5 = g5 * rs
        g6 = g6 * rs
        g7 = g7 * rs
        g8 = g8 * rs
        g9 = d_inten * rs
        # C = (Pdd, Phh, Pww, 2Pdh, 2Pdw, 2Phw, -2Pm, m^T P m) -> gradients of P's six entries and of m
        pmd = pdd * md + pdh * mh + pdw * mw
        pmh = pdh * md + phh * mh + phw * mw
        pmw = pdw * md + phw * mh + pww * mw
        gp_dd = g0 - 2.0 * md * g6 + md * md * g9
        gp_hh = g1 - 2.0 * mh * g7 + mh * mh * g9
        gp_ww = g2 - 2.0 * mw * g8 + mw * mw * g9
        gp_dh = 2.0 * (g3 - mh * g6 - md * g7 + md * mh * g9)
        gp_dw = 2.0 * (g4 - mw * g6 - md * g8 + md * mw * g9)
        gp_hw = 2.0 * (g5 - mw * g7 - mh * g8 + mh * mw * g9)
        gm_d = -2.0 * (pdd * g6 + pdh * g7 + pdw * g8) + 2.0 * pmd * g9
        gm_h = -2.0 * (pdh * g6 + phh * g7 + phw * g8) + 2.0 * pmh * g9
        gm_w = -2.0 * (pdw * g6 + phw * g7 + pww * g8) + 2.0 * pmw * g9
        tl.atomic_add(g_inten_ptr + g, d_inten, mask=gmask, sem="relaxed")
        tl.atomic_add(g_means_ptr + g * 3 + 0, gm_d, mask=gmask, sem="relaxed")
        tl.atomic_add(g_means_ptr + g * 3 + 1, gm_h, mask=gmask, sem="relaxed")
        tl.atomic_add(g_means_ptr + g * 3 + 2, gm_w, mask=gmask, sem="relaxed")
        tl.atomic_add(g_conics_ptr + g * 6 + 0, gp_dd, mask=gmask, sem="relaxed")
        tl.atomic_add(g_conics_ptr + g * 6 + 1, gp_hh, mask=gmask, sem="relaxed")
        tl.atomic_add(g_conics_ptr + g * 6 + 2, gp_ww, mask=gmask, sem="relaxed")
        tl.atomic_add(g_conics_ptr + g * 6 + 3, gp_dh, mask=gmask, sem="relaxed")
        tl.atomic_add(g_conics_ptr + g * 6 + 4, gp_dw, mask=gmask, sem="relaxed")
        tl.atomic_add(g_conics_ptr + g * 6 + 5, gp_hw, mask=gmask, sem="relaxed")


# --------------------------------------------------------------------------------------------------------------------
# autograd wrapper
# --------------------------------------------------------------------------------------------------------------------
def _launch_config(n_pairs: int, n_keys: int, tile: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """``(BLOCK_V, BLOCK_G, num_warps)`` for the forward and the backward kernel.

    Wide Gaussian chunks when tiles hold many Gaussians (dense regime), narrow ones when they hold few (sparse). The
    choices keep every kernel free of register spills on sm_80 and sm_90 (checked with ``ptxas -v`` on
    ahead-of-time compilations): at most ~160 registers per thread in the dense backward, whose chunk of 64
    Gaussians fills one warpgroup's 64-row tensor-core tile.
    """
    per_tile = n_pairs / max(n_keys, 1)
    bv = min(tile**3, 128)
    bv_b = min(tile * tile, 64)  # backward blocks stay inside one d-slice of the tile
    if per_tile >= 48:
        return (bv, 32, 8 if bv * 32 >= 4096 else 4), (min(bv_b, 32), 64, 4)
    if per_tile >= 20:
        return (bv, 32, 8 if bv * 32 >= 4096 else 4), (bv_b, 32 if bv_b <= 32 else 16, 4)
    return (bv, 16, 4 if bv * 16 >= 2048 else 2), (bv_b, 16, 4 if bv_b * 16 >= 1024 else 2)


def _device_guard(device: torch.device):
    """Launch on the tensors' GPU (Triton uses the current CUDA device)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


class _RenderTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, conics, intensities, extents, shape, cutoff, tile):  # type: ignore[override]
        out_dtype = means.dtype
        b, k = means.shape[:2]
        d, h, w = shape
        nt = _tile_grid(shape, tile)
        n_tiles = nt[0] * nt[1] * nt[2]
        m32, c32, i32 = (t.detach().to(torch.float32).contiguous() for t in (means, conics, intensities))
        with _device_guard(means.device):
            gids, tile_start, n_pairs = bin_pairs(m32, c32, extents, shape, cutoff, tile)
            cfg_fwd, cfg_bwd = _launch_config(n_pairs, b * n_tiles, tile)
            out = torch.empty((b, d, h, w), device=means.device, dtype=torch.float32)
            thr = -0.5 * _LOG2E * cutoff * cutoff
            _forward_kernel[(b * n_tiles,)](
                m32, c32, i32, gids, tile_start, out,
                n_tiles, nt[1], nt[2], d, h, w, thr,
                TILE=tile, BLOCK_V=cfg_fwd[0], BLOCK_G=cfg_fwd[1], num_warps=cfg_fwd[2],
            )  # fmt: skip
        ctx.save_for_backward(m32, c32, i32, gids, tile_start)
        ctx.meta = (shape, cutoff, tile, cfg_bwd, n_tiles, nt, (means.dtype, conics.dtype, intensities.dtype))
        return out.to(out_dtype)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        m32, c32, i32, gids, tile_start = ctx.saved_tensors
        shape, cutoff, tile, cfg_bwd, n_tiles, nt, (m_dtype, c_dtype, i_dtype) = ctx.meta
        b, k = m32.shape[:2]
        d, h, w = shape
        g_means = torch.zeros_like(m32)
        g_conics = torch.zeros_like(c32)
        g_inten = torch.zeros_like(i32)
        if gids.numel() > 0:
            go = grad_out.to(torch.float32).contiguous()
            with _device_guard(m32.device):
                _backward_kernel[(b * n_tiles,)](
                    m32, c32, i32, gids, tile_start, go, g_means, g_conics, g_inten,
                    n_tiles, nt[1], nt[2], d, h, w, -0.5 * _LOG2E * cutoff * cutoff,
                    TILE=tile, BLOCK_V=cfg_bwd[0], BLOCK_G=cfg_bwd[1], num_warps=cfg_bwd[2],
                )  # fmt: skip
        return (
            g_means.to(m_dtype) if ctx.needs_input_grad[0] else None,
            g_conics.to(c_dtype) if ctx.needs_input_grad[1] else None,
            g_inten.to(i_dtype) if ctx.needs_input_grad[2] else None,
            None,
            None,
            None,
            None,
        )


def render_triton(
    means: Tensor,
    conics: Tensor,
    intensities: Tensor,
    extents: Tensor,
    shape: Sequence[int],
    cutoff: float,
    tile: int = TILE,
) -> Tensor:
    """Render pre-processed Gaussians to ``(B, D, H, W)`` with Triton; differentiable w.r.t. means, conics, intensities.

    Same contract as :func:`medgmae.render._torch_impl.render_torch`. The kernels compute in float32; a float64
    input gives a float64 output holding float32-accurate values (and float64 gradients likewise).

    Args:
        means: ``(B, K, 3)`` voxel-frame centres.
        conics: ``(B, K, 6)`` precision entries ``(Pdd, Phh, Pww, Pdh, Pdw, Phw)``.
        intensities: ``(B, K)``.
        extents: ``(B, K, 3)`` cutoff-box half-widths (no gradient).
        shape: ``(D, H, W)``.
        cutoff: Mahalanobis cutoff.
        tile: tile edge in voxels: 4, 8 or 16.

    Returns:
        ``(B, D, H, W)`` volume in the dtype of ``means``.

    Raises:
        ValueError: for tensors on a CPU without ``TRITON_INTERPRET=1``, or a bad ``tile``.
    """
    if means.device.type != "cuda" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise ValueError(
            f"the triton backend needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors), got {means.device}"
        )
    if tile not in (4, 8, 16):
        # >= 4: tl.dot needs 16+ rows; <= 16: tile-centred monomials and the hi/mid sums stay exact (module docstring)
        raise ValueError(f"tile must be 4, 8 or 16, got {tile}")
    if not math.isfinite(cutoff) or cutoff <= 0:
        raise ValueError(f"cutoff must be a positive finite number, got {cutoff!r}")
    shape = tuple(int(s) for s in shape)
    return _RenderTriton.apply(means, conics, intensities, extents, shape, float(cutoff), int(tile))
