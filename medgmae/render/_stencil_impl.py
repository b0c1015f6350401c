"""Per-Gaussian stencil renderer (plain PyTorch, any device): runs of in-cutoff voxels.

Each Gaussian is evaluated only on the voxels inside its cutoff ellipsoid, as runs along the last axis (``w``,
contiguous in memory). Completing the square in ``u_w`` (``u = voxel - centre``),

``-q/2 = -(Pww/2) (u_w + a_d u_d + a_h u_h)^2 + r(u_d, u_h)``, ``(a_d, a_h) = (Pdw, Phw) / Pww``,

with ``r`` the quadratic form of the Schur complement (the ``(d, h)`` marginal's precision) times ``-1/2``. So
for every voxel column ``(d, h)`` of the Gaussian's clipped cutoff box the voxels with ``q <= cutoff^2`` form one
interval of ``w``, known in closed form: ``|u_w + a_d u_d + a_h u_h| <= sqrt((r + cutoff^2 / 2) / (Pww / 2))``
(empty where ``r < -cutoff^2 / 2``). The runs are found without per-voxel work (see :class:`_Runs`) and widened by
a small margin (:func:`_margin`), so they hold every voxel the exponent keeps despite rounding; the exponent is
then thresholded at ``q <= cutoff^2`` as on the tile path. Runs of equal length ``L`` form a group evaluated as
one ``(L, C)`` block (offset-major, so every operation runs along the long axis), in chunks of at most
:data:`CHUNK_ELEMS` evaluations: no padding and no box corners, about one evaluation per in-cutoff voxel where a
whole box costs 2-3 for rotated Gaussians and a tile 64 or more. Gaussians are set up in blocks of about
:data:`BLOCK_COLUMNS` box columns, ordered by box height and then by position, so each block has few groups and
its scatter walks the volume in memory order.

Coordinates are Gaussian-local (small magnitudes), so float32 does not lose the offsets to cancellation. The
forward pass scatters with ``scatter_add_``; the backward pass gathers the output gradient and reduces it against
the weights to per-run moments ``sum f k^i`` (``i <= 2``, one small matrix product per chunk), which give each
Gaussian's moments ``sum f u_a u_b`` through two ``index_add_`` (runs to rows, rows to Gaussians); the gradients
of means, conics and intensities follow in closed form. The forward pass keeps the weights of its first chunks, up to :data:`SAVED_ELEMS` evaluations, for
the backward pass, which recomputes the rest.

Why not a library: neither MONAI nor gsplat renders 3D Gaussians into voxels on the CPU; R2-Gaussian's voxeliser
is CUDA only.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["MAX_WIDTH", "CHUNK_ELEMS", "SAVED_ELEMS", "BLOCK_COLUMNS", "stencil_widths", "render_stencil"]

#: Widest clipped cutoff box (voxels per axis) rendered here; Gaussians with wider boxes go to the tile path.
#: Runs beat tiles at every size measured on the CPU (``bench/RESULTS.md``), so only volumes wider than this many
#: voxels (and run lengths that would not fit the int16 sort keys) use tiles.
MAX_WIDTH = 1 << 14
#: Upper bound on voxel evaluations held at once.
CHUNK_ELEMS = 1 << 20
#: Weights of up to this many voxel evaluations are kept from the forward for the backward pass (the rest are
#: recomputed), so memory stays bounded: 64 MiB in float32.
SAVED_ELEMS = 1 << 24
#: Box columns set up at once: the runs of a block of Gaussians are found and rendered before the next block's,
#: so their per-run arrays stay small (in cache, and off the allocator's page-faulting path for large blocks).
BLOCK_COLUMNS = 1 << 18


def stencil_widths(extents: Tensor) -> Tensor:
    """``(..., 3)`` int64 ``floor(2 extent) + 1``: the most voxels a cutoff box of these half-widths can hold."""
    return torch.floor(2.0 * extents.detach()).long() + 1


def _coefficients(conics: Tensor) -> Tensor:
    """``(N, 6)`` float64 ``(-Pww/2, a_d, a_h, r_dd, r_dh, r_hh)`` of the exponent factorised in ``u_w``.

    ``-q/2 = -(Pww/2) (u_w + a_d u_d + a_h u_h)^2 + r_dd u_d^2 + r_dh u_d u_h + r_hh u_h^2``.
    """
    pdd, phh, pww, pdh, pdw, phw = conics.detach().double().unbind(-1)
    ad, ah = pdw / pww, phw / pww
    return torch.stack([-0.5 * pww, ad, ah, -0.5 * (pdd - pdw * ad), -(pdh - pdw * ah), -0.5 * (phh - phw * ah)], -1)


class _Runs:
    """The runs of in-cutoff voxels along ``w`` of one block of Gaussians, grouped by length into chunks.

    Found in two stages without per-voxel work: per box row ``(Gaussian, d)`` the quantities that do not depend
    on ``h``; then, for the rows of each box height ``Sh`` at once, a dense ``(Sh, rows)`` grid of columns (every
    operation contiguous and vectorised), each column's run bounds in closed form.

    Per run (sorted by length): ``t0`` the completed-square variable at its first voxel (``u_w + a_d u_d + a_h
    u_h``), ``r`` and ``nw`` the exponent's coefficients, ``uh`` and ``uw0`` its local ``h`` and first ``w``
    coordinates, ``row`` its box row, ``base`` the flat index of its first voxel in the ``(B, D, H, W)`` output,
    ``length``; per row: ``rg`` the Gaussian (index into the block), ``ud``. ``chunks`` lists ``(slice, L)``.

    Args:
        g: per Gaussian of the block: ``local`` ``(10, n)`` in the evaluation dtype: ``u_d`` and ``u_h`` at the
            box's first voxel, the centre's ``w`` from it, the box width in ``w`` minus one, and the
            :func:`_coefficients`; ``width`` ``(n, 3)`` int64 boxes, ``base`` ``(n,)`` flat index of the box's
            first voxel, ``sh`` ``(n,)`` int16 box heights.
        shape: ``(D, H, W)``.
        cutoff: Mahalanobis cutoff.
    """

    def __init__(self, g: dict, shape, cutoff: float):
        rows = self._rows(g, shape)
        cols = self._columns(rows, 0.5 * cutoff * cutoff, int(shape[2]))
        length, order = torch.sort(cols.pop("length"), stable=True)  # a radix sort for int16 keys
        first = int(torch.searchsorted(length, torch.ones((), dtype=length.dtype)))
        sel, self.length = order[first:], length[first:]
        for key, val in cols.items():
            setattr(self, key, val.index_select(0, sel))
        self.rg, self.ud = rows["rg"], rows["ud"]
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
        """``(L * C,)`` flat output indices of a chunk's voxels, offset-major like :func:`_weights`."""
        return (_ramp(n, self.base.device, torch.int64)[:, None] + self.base[sl]).reshape(-1)

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
            "rowbase": g["base"].index_select(0, rg) + jd * (h_ * w_),
        }

    @staticmethod
    def _columns(rows: dict, c2: float, row_stride: int) -> dict:
        """Every box column's run, for the rows of each box height at once (flat, grouped by height).

        Per column: ``length`` (int16, 0 where empty), ``t0``, ``uw0``, ``r``, ``uh`` (the rows' dtype), ``base``,
        ``row``. The closed-form bounds are widened by a relative and absolute ``margin`` (:func:`_margin`).
        """
        margin = _margin(rows["nw"].dtype)
        heights, counts = torch.unique_consecutive(rows["sh"], return_counts=True)  # rows come sorted by height
        out, start = {k: [] for k in ("length", "t0", "uw0", "r", "uh", "base", "row")}, 0
        for n, cnt in zip(heights.tolist(), counts.tolist()):  # one host sync
            sl, v = slice(start, start + cnt), {}
            for key in ("cw", "ah", "rhh", "s0", "r0", "r1", "uh0", "wn", "rowbase"):
                v[key] = rows[key][sl]
            v["inv"] = -(1 + margin) ** 2 / rows["nw"][sl]
            k = torch.arange(n, device=v["cw"].device)[:, None]
            uh = v["uh0"] + k  # (Sh, rows): h - mu_h
            s = v["s0"] + v["ah"] * uh
            r = v["r0"] + (v["r1"] + v["rhh"] * uh) * uh
            # half-length of the run, widened: sqrt((r + c2 + margin) / (Pww / 2) * (1 + margin)^2)
            half = ((r + (c2 + margin)) * v["inv"]).clamp_min_(0).sqrt_()
            centre = v["cw"] - s  # the run is centre +- half, in voxels from the box's first w, within the box
            lo = torch.ceil(centre - half).clamp_min_(0)
            length = (torch.minimum(torch.floor(centre + half), v["wn"]) - lo + 1).clamp_min_(0)
            uw0 = lo - v["cw"]
            for key, val in (
                ("length", length.to(torch.int16)), ("t0", uw0 + s), ("uw0", uw0), ("r", r), ("uh", uh),
                ("base", v["rowbase"] + (k * row_stride + lo.long())),
                ("row", torch.arange(start, start + cnt, device=k.device).expand(n, -1)),
            ):
                out[key].append(val.reshape(-1))
            start += cnt
        return {k: torch.cat(v) for k, v in out.items()}


def _margin(dtype: torch.dtype) -> float:
    """Relative and absolute widening of the runs' closed-form bounds, so they hold every voxel the exponent
    keeps despite rounding: 1e-6 in float64, 64 ulps (7.6e-6) in float32."""
    return max(1e-6, 64 * torch.finfo(dtype).eps)


def _blocks(width: Tensor) -> list:
    """Slices of consecutive Gaussians holding about :data:`BLOCK_COLUMNS` box columns each (two host syncs)."""
    cols = torch.cumsum(width[:, 0] * width[:, 1], 0)
    if cols.numel() == 0:
        return []
    marks = torch.arange(1, max(1, -(-int(cols[-1]) // BLOCK_COLUMNS)), device=width.device) * BLOCK_COLUMNS
    ends = (torch.searchsorted(cols, marks) + 1).tolist() + [cols.numel()]
    starts = [0] + ends[:-1]
    return [slice(a, b) for a, b in zip(starts, ends) if b > a]


@functools.lru_cache(maxsize=64)
def _ramp(n: int, device, dtype) -> Tensor:
    return torch.arange(n, device=device, dtype=dtype)


def _weights(t0: Tensor, nw: Tensor, r: Tensor, n: int, lim: float) -> Tensor:
    """``(L, C)`` weights ``exp(-q/2)`` of a chunk's ``C`` runs of length ``L``, zero where ``-q/2 < lim``.

    Laid out offset-major so every operation runs along the long ``C`` axis (vectorised; a ``(C, L)`` layout
    with ``L`` of a few voxels costs several times more per element).
    """
    t = _ramp(n, t0.device, t0.dtype)[:, None] + t0
    t.mul_(t)
    e = torch.addcmul(r, t, nw, out=t)  # -q/2
    return F.threshold_(e, lim, -math.inf).exp_()


def _threshold(cutoff: float, dtype: torch.dtype) -> float:
    """The largest ``dtype`` value below ``-cutoff^2 / 2``: ``F.threshold`` keeps values strictly above it."""
    lim = torch.tensor(-0.5 * cutoff * cutoff, dtype=dtype)
    return float(torch.nextafter(lim, torch.tensor(-math.inf, dtype=dtype)))


@functools.lru_cache(maxsize=64)
def _power_table(n: int, device, dtype) -> Tensor:
    """``(3, n)`` powers 0, 1, 2 of the centred offsets ``k - (n - 1) / 2``."""
    k = torch.arange(n, device=device, dtype=dtype) - 0.5 * (n - 1)
    return torch.stack([torch.ones_like(k), k, k * k], 0)


def _block_runs(means: Tensor, conics: Tensor, gids: Tensor, origin: Tensor, width: Tensor, shape, cutoff: float):
    """``gids`` ordered by box height, and ``[(slice, _Runs)]`` of the blocks of :func:`_blocks` of that order
    (arguments as in :func:`render_stencil`)."""
    d_, h_, w_ = shape
    base = (((gids // means.shape[1]) * d_ + origin[:, 0]) * h_ + origin[:, 1]) * w_ + origin[:, 2]
    # by box height (a block's rows then come grouped by height), then by position: the runs of one length stay
    # in memory order, so the scatter and gathers walk the volume instead of jumping across it
    order = torch.sort(width[:, 1] * (means.shape[0] * d_ * h_ * w_) + base)[1]
    gids, origin, width, base = gids[order], origin[order], width[order], base[order]
    mu = means.detach().reshape(-1, 3).index_select(0, gids).double()
    nw, ad, ah, rdd, rdh, rhh = _coefficients(conics.reshape(-1, 6).index_select(0, gids)).unbind(-1)
    o = origin.double()
    # local terms only (offsets from the box's first voxel), so float32 keeps them to ~1e-6 voxels
    local = torch.stack(
        [o[:, 0] - mu[:, 0], o[:, 1] - mu[:, 1], mu[:, 2] - o[:, 2], width[:, 2] - 1.0, nw, ad, ah, rdd, rdh, rhh]
    ).to(means.dtype)
    sh = width[:, 1].to(torch.int16)
    blocks = []
    for blk in _blocks(width):
        g = {"local": local[:, blk], "width": width[blk], "base": base[blk], "sh": sh[blk]}
        blocks.append((blk, _Runs(g, shape, cutoff)))
    return gids, blocks


class _RenderStencil(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, conics, intensities, gids, origin, width, shape, cutoff):  # type: ignore[override]
        gids, plan = _block_runs(means, conics, gids, origin, width, shape, cutoff)
        inten = intensities.detach().reshape(-1).index_select(0, gids)
        lim = _threshold(cutoff, means.dtype)
        out = torch.zeros(means.shape[0] * math.prod(shape), device=means.device, dtype=means.dtype)
        blocks, budget = [], SAVED_ELEMS if any(ctx.needs_input_grad[:3]) else 0
        for blk, runs in plan:
            it, kept = inten[blk].index_select(0, runs.rg).index_select(0, runs.row), {}
            for i, (sl, n) in enumerate(runs.chunks):
                w = _weights(runs.t0[sl], runs.nw[sl], runs.r[sl], n, lim)
                out.scatter_add_(0, runs.index(sl, n), (w * it[sl]).reshape(-1))
                if w.numel() <= budget:  # keep the weights for the backward pass while the budget lasts
                    kept[i] = w
                    budget -= w.numel()
            blocks.append((blk, runs, kept))
        ctx.save_for_backward(means, conics, intensities, gids)
        ctx.blocks, ctx.lim = blocks, lim
        return out.view(means.shape[0], *shape)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        means, conics, intensities, gids = ctx.saved_tensors
        g = grad_out.reshape(-1)
        mom = torch.zeros(gids.numel(), 10, device=means.device, dtype=means.dtype)
        for blk, runs, kept in ctx.blocks:
            raw = torch.empty(3, runs.row.numel(), device=means.device, dtype=means.dtype)
            for i, (sl, n) in enumerate(runs.chunks):
                w = kept[i] if i in kept else _weights(runs.t0[sl], runs.nw[sl], runs.r[sl], n, ctx.lim)
                f = g.index_select(0, runs.index(sl, n)).view_as(w).mul_(w)  # (L, C)
                raw[:, sl] = _power_table(n, f.device, f.dtype) @ f
            mom[blk] = _gaussian_moments(raw, runs, blk.stop - blk.start)
        grads = _gradients(mom, means, conics, intensities, gids, ctx.needs_input_grad)
        return (*grads, None, None, None, None, None)


def _gaussian_moments(raw: Tensor, runs: _Runs, n: int) -> Tensor:
    """``(n, 10)`` per-Gaussian moments ``sum f u^a`` of ``f = G w``, ``a`` in ``1, d, h, w, dd, hh, ww, dh, dw, hw``.

    Args:
        raw: ``(3, R)`` per-run sums of ``f k^i``, ``k`` the offset from the run's middle voxel.
        runs: the runs of a block of ``n`` Gaussians.
        n: number of Gaussians in the block.
    """
    f0, f1, f2 = raw.unbind(0)
    mid = runs.uw0 + 0.5 * (runs.length.to(raw.dtype) - 1)  # u_w at the run's middle: u_w = mid + k
    m1 = f1 + mid * f0
    m2 = f2 + mid * (2.0 * f1 + mid * f0)
    uh = runs.uh
    hf0 = uh * f0
    per_run = torch.stack([f0, hf0, uh * hf0, m1, uh * m1, m2])  # 1, h, hh, w, hw, ww
    # (k, R) layouts: index_add_ along the last dimension is several times faster than along the first here
    per_row = torch.zeros(6, runs.rg.numel(), device=raw.device, dtype=raw.dtype).index_add_(1, runs.row, per_run)
    a, h, hh, w, hw, ww = per_row.unbind(0)
    ud = runs.ud
    per_row = torch.stack([a, ud * a, h, w, ud * ud * a, hh, ww, ud * h, ud * w, hw])
    return torch.zeros(10, n, device=raw.device, dtype=raw.dtype).index_add_(1, runs.rg, per_row).t()


def _gradients(mom: Tensor, means: Tensor, conics: Tensor, intensities: Tensor, gids: Tensor, needs) -> tuple:
    """Gradients of means, conics and intensities from the per-Gaussian moments of ``G w``."""
    b, k = means.shape[:2]
    n0, m1 = mom[:, 0], mom[:, 1:4]
    m2 = torch.cat([mom[:, 4:7], 2.0 * mom[:, 7:10]], -1)  # conic order (dd, hh, ww, dh, dw, hw)
    dq = -0.5 * intensities.detach().reshape(-1)[gids]  # dL/dq = -I/2 G w
    c = conics.detach().reshape(-1, 6)[gids]
    p = torch.stack([c[:, [0, 3, 4]], c[:, [3, 1, 5]], c[:, [4, 5, 2]]], 1)  # (N, 3, 3) precision
    pm = (p @ m1.unsqueeze(-1)).squeeze(-1)  # P sum(F u)
    z = functools.partial(torch.zeros, device=means.device, dtype=means.dtype)
    return (
        z(b * k, 3).index_add_(0, gids, -2.0 * dq[:, None] * pm).view(b, k, 3) if needs[0] else None,
        z(b * k, 6).index_add_(0, gids, dq[:, None] * m2).view(b, k, 6) if needs[1] else None,
        z(b * k).index_add_(0, gids, n0).view(b, k) if needs[2] else None,
    )


def render_stencil(
    means: Tensor,
    conics: Tensor,
    intensities: Tensor,
    gids: Tensor,
    origin: Tensor,
    width: Tensor,
    shape: Sequence[int],
    cutoff: float,
) -> Tensor:
    """Render the Gaussians ``gids`` (flat ``b * K + k``) of pre-processed inputs on their in-cutoff voxels.

    Args:
        means: ``(B, K, 3)`` voxel-frame centres.
        conics: ``(B, K, 6)`` precision entries ``(Pdd, Phh, Pww, Pdh, Pdw, Phw)``.
        intensities: ``(B, K)``.
        gids: ``(N,)`` int64 flat indices of the Gaussians to render (the others contribute nothing and get zero
            gradients).
        origin: ``(N, 3)`` int64 first voxel of each one's box, inside the volume.
        width: ``(N, 3)`` int64 box widths, 1 to ``MAX_WIDTH``; ``origin .. origin + width - 1`` must hold every
            voxel of the volume inside the Gaussian's cutoff ellipsoid (e.g. its clipped cutoff box).
        shape: ``(D, H, W)``.
        cutoff: Mahalanobis cutoff.

    Returns:
        ``(B, D, H, W)`` volume in the dtype of ``means``; differentiable w.r.t. means, conics, intensities.
    """
    shape = tuple(int(s) for s in shape)
    return _RenderStencil.apply(means, conics, intensities, gids, origin, width, shape, float(cutoff))
