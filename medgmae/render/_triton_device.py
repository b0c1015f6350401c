"""Device helpers of the Triton renderer's kernels (:mod:`medgmae.render._triton_kernels`, whose docstring holds
the derivation they implement): tile and voxel coordinates, the chunked load of a tile's Gaussians, and the
sliced, TF32-exact evaluation of the quadratic form (``_coefficient_slices``, ``_log2_weights``) in the forward
layout and transposed (``_t``) for the backward."""

from __future__ import annotations

import triton
import triton.language as tl

__all__: list[str] = []  # private to the renderer's kernels


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
def _voxel_coords(v0, b, t_d, t_h, t_w, D, H, W, TILE: tl.constexpr, BLOCK_V: tl.constexpr):
    """Voxels ``v0 .. v0 + BLOCK_V`` of a tile: output offsets, in-volume mask, tile-centred ``xd, xh, xw``."""
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
    return out_off, inside, vd.to(tl.float32) - half, vh.to(tl.float32) - half, vw.to(tl.float32) - half


@triton.jit
def _voxel_block(v0, b, t_d, t_h, t_w, D, H, W, TILE: tl.constexpr, BLOCK_V: tl.constexpr):
    """Voxels ``v0 .. v0 + BLOCK_V`` of a tile: monomials A ``(BLOCK_V, 16)``, output offsets, in-volume mask and
    the tile-centred coordinates ``xd, xh, xw``."""
    out_off, inside, xd, xh, xw = _voxel_coords(v0, b, t_d, t_h, t_w, D, H, W, TILE, BLOCK_V)
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
    out_off, inside, xd, xh, xw = _voxel_coords(v0, b, t_d, t_h, t_w, D, H, W, TILE, BLOCK_V)
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
