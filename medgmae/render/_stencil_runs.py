"""Finding the runs of in-cutoff voxels of 3D Gaussians, for the per-Gaussian renderer (:mod:`._stencil_impl`).

Completing the square in the last axis ``w`` (contiguous in memory) with ``u = voxel - centre``,

``-q/2 = -(Pww/2) (u_w + a_d u_d + a_h u_h)^2 + r(u_d, u_h)``, ``(a_d, a_h) = (Pdw, Phw) / Pww``,

with ``r`` the quadratic form of the Schur complement (the ``(d, h)`` marginal's precision) times ``-1/2``. So
for every voxel column ``(d, h)`` of a Gaussian's clipped cutoff box the voxels with ``q <= cutoff^2`` form one
interval of ``w``, known in closed form: ``|u_w + a_d u_d + a_h u_h| <= sqrt((r + cutoff^2 / 2) / (Pww / 2))``
(empty where ``r < -cutoff^2 / 2``). :class:`Runs` finds them without per-voxel work, widened by a small margin
(:func:`_margin`) so they hold every voxel the exponent keeps despite rounding, and sorts them by length: runs of
one length ``L`` are then evaluated as one ``(L, C)`` block.

Gaussians are planned in blocks (:func:`plan_blocks`) of about :data:`BLOCK_COLUMNS` box columns, ordered by
position: a block's voxels are a slab of the volume, which stays in the cache while the block's runs are
scattered and gathered (profiled on 256^3: markedly cheaper per voxel than blocks spread over the volume).
Coordinates are Gaussian-local (small magnitudes), so float32 does not lose the offsets to cancellation.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

#: Upper bound on voxel evaluations held at once (one chunk of runs of equal length).
CHUNK_ELEMS = 1 << 20
#: Box columns set up at once: the runs of a block of Gaussians are found and rendered before the next block's,
#: so their per-run arrays and their slab of the volume stay small (in cache).
BLOCK_COLUMNS = 1 << 18
#: Fewest box columns per worker for which the blocks are split among worker threads (below it the threads'
#: overheads outweighed their gain when the quick sparse benchmark case of K = 2000 was profiled).
MIN_BLOCK_COLUMNS = 1 << 17


def _coefficients(conics: Tensor) -> Tensor:
    """``(N, 6)`` float64 ``(-Pww/2, a_d, a_h, r_dd, r_dh, r_hh)`` of the exponent factorised in ``u_w``.

    ``-q/2 = -(Pww/2) (u_w + a_d u_d + a_h u_h)^2 + r_dd u_d^2 + r_dh u_d u_h + r_hh u_h^2``.
    """
    pdd, phh, pww, pdh, pdw, phw = conics.detach().double().unbind(-1)
    ad, ah = pdw / pww, phw / pww
    return torch.stack([-0.5 * pww, ad, ah, -0.5 * (pdd - pdw * ad), -(pdh - pdw * ah), -0.5 * (phh - phw * ah)], -1)


class Runs:
    """The runs of in-cutoff voxels along ``w`` of one block of Gaussians, grouped by length into chunks.

    Found in two stages without per-voxel work: per box row ``(Gaussian, d)`` the quantities that do not depend
    on ``h``; then a dense ``(Sh, rows)`` grid of columns, ``Sh`` the block's tallest box (every operation
    contiguous and vectorised; columns past a row's own box height are empty), each column's run bounds in
    closed form.

    Per run (sorted by length): ``t0`` the completed-square variable at its first voxel (``u_w + a_d u_d + a_h
    u_h``), ``r`` and ``nw`` the exponent's coefficients, ``uh`` and ``uw0`` its local ``h`` and first ``w``
    coordinates, ``row`` its box row, ``base`` the flat index of its first voxel in the ``(B, D, H, W)`` output,
    ``length``; per row: ``rg`` the Gaussian (index into the block), ``ud``. ``chunks`` lists ``(slice, L)``.
    Runs of one length come in the grid's order: by ``h`` offset, then by Gaussian (by position), then by ``d``.

    Args:
        g: per Gaussian of the block: ``local`` ``(10, n)`` in the evaluation dtype: ``u_d`` and ``u_h`` at the
            box's first voxel, the centre's ``w`` from it, the box width in ``w`` minus one, and the
            :func:`_coefficients`; ``width`` ``(n, 3)`` int64 boxes, ``base`` ``(n,)`` flat index of the box's
            first voxel (int32 where the volume's indices fit, else int64), ``sh`` ``(n,)`` int16 box heights.
        shape: ``(D, H, W)``.
        cutoff: Mahalanobis cutoff.
    """

    def __init__(self, g: dict, shape, cutoff: float):
        rows = self._rows(g, shape)
        cols = self._columns(rows, 0.5 * cutoff * cutoff, int(shape[2]))
        length, order = torch.sort(cols.pop("length"), stable=True)  # a radix sort for int16 keys
        first = int((length < 1).sum())  # the empty runs sort first (a CPU scalar to searchsorted fails on CUDA)
        sel, self.length = order[first:], length[first:]
        for key, val in cols.items():
            setattr(self, key, val.index_select(0, sel))
        self.rg, self.ud, self.row = rows["rg"], rows["ud"], self.row.long()  # gathered as int32 (less traffic)
        self.nw = rows["nw"].index_select(0, self.row)
        self.chunks = self._chunks(self.length)

    @staticmethod
    def _chunks(length: Tensor) -> list:
        """``[(slice, L)]``: runs of one length ``L`` per chunk, at most :data:`CHUNK_ELEMS` evaluations each."""
        lengths, counts = torch.unique_consecutive(length, return_counts=True)
        chunks, start = [], 0
        for n, cnt in zip(lengths.tolist(), counts.tolist()):  # one host sync
            step = max(1, CHUNK_ELEMS // n)
            chunks += [(slice(a, min(start + cnt, a + step)), n) for a in range(start, start + cnt, step)]
            start += cnt
        return chunks

    def index(self, sl: slice, n: int) -> Tensor:
        """``(L * C,)`` int64 flat output indices of a chunk's voxels, offset-major like the weights."""
        return (ramp(n, self.base.device, torch.int64)[:, None] + self.base[sl]).reshape(-1)

    @staticmethod
    def _rows(g: dict, shape) -> dict:
        """Per box row ``(Gaussian, d)``: the Gaussian ``rg`` and the ``h``-independent terms of its columns."""
        h_, w_ = shape[1:]
        width, dev = g["width"], g["width"].device
        rg = torch.repeat_interleave(torch.arange(width.shape[0], device=dev), width[:, 0])
        jd = torch.arange(rg.numel(), device=dev) - (torch.cumsum(width[:, 0], 0) - width[:, 0]).index_select(0, rg)
        ud0, uh0, cw, wn, nw, ad, ah, rdd, rdh, rhh = g["local"].index_select(1, rg)
        ud = ud0 + jd
        return {
            "rg": rg, "ud": ud, "nw": nw, "ah": ah, "rhh": rhh, "s0": ad * ud, "r0": rdd * ud * ud, "r1": rdh * ud,
            "uh0": uh0, "cw": cw, "wn": wn, "sh": g["sh"].index_select(0, rg),
            "rowbase": (g["base"].index_select(0, rg) + jd * (h_ * w_)).to(g["base"].dtype),
        }

    @staticmethod
    def _columns(rows: dict, c2: float, row_stride: int) -> dict:
        """Every box column's run, flat in ``(Sh, rows)`` order, ``Sh`` the block's tallest box.

        Per column: ``length`` (int16, 0 where empty), ``t0``, ``uw0``, ``r``, ``uh`` (the rows' dtype), ``base``
        (the rows' index dtype), ``row`` (int32). The closed-form bounds are widened by a relative and absolute
        ``margin`` (:func:`_margin`). One grid per block rather than one per box height: the padding (a third
        more columns than the boxes hold on the sparse benchmark cases, all empty) cost less than a pass per
        height when profiled.
        """
        margin = _margin(rows["nw"].dtype)
        n, v = int(rows["sh"].max()), rows  # one host sync
        inv = -(1 + margin) ** 2 / rows["nw"]
        k = torch.arange(n, device=inv.device)[:, None]
        uh = v["uh0"] + k  # (Sh, rows): h - mu_h
        s = v["s0"] + v["ah"] * uh
        r = v["r0"] + (v["r1"] + v["rhh"] * uh) * uh
        # half-length of the run, widened: sqrt((r + c2 + margin) / (Pww / 2) * (1 + margin)^2)
        half = ((r + (c2 + margin)) * inv).clamp_min_(0).sqrt_()
        centre = v["cw"] - s  # the run is centre +- half, in voxels from the box's first w, within the box
        lo = torch.ceil(centre - half).clamp_min_(0)
        length = (torch.minimum(torch.floor(centre + half), v["wn"]) - lo + 1).clamp_min_(0)
        length.masked_fill_(k >= v["sh"], 0)
        uw0 = lo - v["cw"]
        out = {
            "length": length.to(torch.int16), "t0": uw0 + s, "uw0": uw0, "r": r, "uh": uh,
            "base": v["rowbase"] + (k.to(v["rowbase"].dtype) * row_stride + lo.to(v["rowbase"].dtype)),
            "row": torch.arange(inv.numel(), device=k.device, dtype=torch.int32).expand(n, -1),
        }
        return {k: v.reshape(-1) for k, v in out.items()}


def _margin(dtype: torch.dtype) -> float:
    """Relative and absolute widening of the runs' closed-form bounds, so they hold every voxel the exponent
    keeps despite rounding: 1e-6 in float64, 64 ulps (7.6e-6) in float32."""
    return max(1e-6, 64 * torch.finfo(dtype).eps)


def _blocks(width: Tensor, parts: int = 1) -> list:
    """Slices of consecutive Gaussians holding at most about :data:`BLOCK_COLUMNS` box columns each, their count
    a multiple of ``parts`` where there are at least :data:`MIN_BLOCK_COLUMNS` per part (two host syncs)."""
    cols = torch.cumsum(width[:, 0] * width[:, 1], 0)
    if cols.numel() == 0:
        return []
    total = int(cols[-1])
    if total < parts * MIN_BLOCK_COLUMNS:
        parts = 1
    count = parts * max(1, -(-total // (parts * BLOCK_COLUMNS)))  # a multiple of parts: balanced workers
    size = max(1, -(-total // count))
    marks = torch.arange(1, max(1, -(-total // size)), device=width.device) * size
    ends = (torch.searchsorted(cols, marks) + 1).tolist() + [cols.numel()]
    starts = [0] + ends[:-1]
    return [slice(a, b) for a, b in zip(starts, ends) if b > a]


@functools.lru_cache(maxsize=64)
def ramp(n: int, device, dtype) -> Tensor:
    """``arange(n)``, cached."""
    return torch.arange(n, device=device, dtype=dtype)


def plan_blocks(means: Tensor, conics: Tensor, gids: Tensor, origin: Tensor, width: Tensor, shape, parts: int):
    """The Gaussians ``gids`` ordered by position, and the blocks to find their runs in.

    Args:
        means, conics, gids, origin, width, shape: as in :func:`._stencil_impl.render_stencil`.
        parts: worker threads: the number of blocks is a multiple of it (see :func:`_blocks`).

    Returns:
        ``gids`` reordered, and ``[(slice, spec)]``: per block its slice of that order and the per-Gaussian
        arguments of :class:`Runs` (``g``).
    """
    d_, h_, w_ = shape
    base = (((gids // means.shape[1]) * d_ + origin[:, 0]) * h_ + origin[:, 1]) * w_ + origin[:, 2]
    # by position: a block's voxels are then a slab of the volume, which stays in the cache while its runs are
    # scattered and gathered
    order = torch.sort(base)[1]
    spans = _blocks(width.index_select(0, order), parts)
    gids, origin, width, base = (t.index_select(0, order) for t in (gids, origin, width, base))
    mu = means.detach().reshape(-1, 3).index_select(0, gids).double()
    nw, ad, ah, rdd, rdh, rhh = _coefficients(conics.reshape(-1, 6).index_select(0, gids)).unbind(-1)
    o = origin.double()
    # local terms only (offsets from the box's first voxel), so float32 keeps them to ~1e-6 voxels
    local = torch.stack(
        [o[:, 0] - mu[:, 0], o[:, 1] - mu[:, 1], mu[:, 2] - o[:, 2], width[:, 2] - 1.0, nw, ad, ah, rdd, rdh, rhh]
    ).to(means.dtype)
    sh = width[:, 1].to(torch.int16)
    # flat voxel indices in int32 where they fit: half the memory traffic of int64 when the runs are gathered
    flat = torch.int32 if means.shape[0] * d_ * h_ * w_ < 2**31 else torch.int64
    specs = [(blk, {"local": local[:, blk], "width": width[blk], "base": base[blk].to(flat), "sh": sh[blk]})
             for blk in spans]
    return gids, specs
