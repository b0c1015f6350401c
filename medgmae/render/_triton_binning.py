"""Tile binning of the Triton renderer: which Gaussians each voxel tile must evaluate.

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

Used by :mod:`medgmae.render._triton_impl` (and by ``bench/render.py`` to count pairs).
"""

from __future__ import annotations

from typing import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from medgmae.render._torch_impl import _tile_grid, _voxel_ranges

__all__ = ["TILE", "bin_pairs"]

#: Edge of the cubic voxel tiles (``TILE^3`` voxels per program).
TILE = 8
_INT32_MAX = 2**31 - 1
#: Every kernel of the renderer is compiled with floating-point contraction (a * b + c as one FMA) named
#: explicitly: Triton 3.9 warns when it is left to its default, whose value changes to off in Triton 3.10. On is
#: what the precision argument of :mod:`medgmae.render._triton_kernels` and ``bench/triton_aot.py`` assume.
FP_FUSION = True


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
        enable_fp_fusion=FP_FUSION,
    )
    keys, order = torch.sort(keys, stable=True)
    gids = gids[order]
    bounds = torch.arange(b * n_tiles + 1, dtype=torch.int32, device=device)
    tile_start = torch.searchsorted(keys, bounds)  # int64
    return gids, tile_start, n_pairs
