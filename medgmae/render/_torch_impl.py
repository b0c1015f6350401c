"""Plain PyTorch voxel-accumulation renderer (any device), the same maths as the Triton kernels.

The Gaussians arrive pre-processed by :func:`medgmae.render.render_volume`:

* ``means`` ``(B, K, 3)`` in voxel-index coordinates,
* ``conics`` ``(B, K, 6)``: the precision matrix ``P = Sigma^-1`` as ``(Pdd, Phh, Pww, Pdh, Pdw, Phw)``,
* ``intensities`` ``(B, K)``,
* ``extents`` ``(B, K, 3)``: half-widths ``cutoff * sqrt(Sigma_aa)`` of each Gaussian's cutoff bounding box.

Two paths:

* stencil (:mod:`medgmae.render._stencil_impl`), the default for every Gaussian whose cutoff box, clipped to the
  volume, is at most ``MAX_WIDTH`` voxels wide (all of them in practice): evaluated on the voxels inside its
  cutoff ellipsoid only, as runs along ``w`` found in closed form;
* tile, forced with :func:`torch_path` (and for any wider box): organised like the Triton kernels' tile
  rasteriser: the output is split into ``TILE^3`` voxel tiles, every Gaussian is binned to the tiles its cutoff
  box touches, and (Gaussian, tile) pairs are evaluated in chunks with tile-local coordinates (small magnitudes,
  no float32 cancellation); the volume clips the work. It evaluates whole tiles, so it is slower on the CPU at
  every size measured (``bench/RESULTS.md``), and stays as the plain-PyTorch twin of the GPU kernels.

Memory is bounded by the chunk sizes, never ``B x K x D*H*W``. Both backward passes are written by hand; the tile
path recomputes the weights per chunk, the stencil path keeps those of its first chunks.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import Tensor

from medgmae.render._stencil_impl import MAX_WIDTH, render_stencil

__all__ = ["TILE", "PATHS", "bin_gaussians_to_tiles", "render_torch", "count_pairs", "torch_path"]

#: Choices of :func:`torch_path`: per-Gaussian choice (the default), or every Gaussian on tiles.
PATHS = ("auto", "tile")
_path = "auto"

#: Edge of the cubic voxel tiles Gaussians are binned to.
TILE = 8
#: Upper bound on (pair x voxel) elements evaluated at once.
_CHUNK_ELEMS = 1 << 21


def _tile_grid(shape: Sequence[int], tile: int) -> tuple[int, int, int]:
    return tuple((int(s) + tile - 1) // tile for s in shape)  # type: ignore[return-value]


def _voxel_ranges(means: Tensor, extents: Tensor, shape: Sequence[int]) -> tuple[Tensor, Tensor, Tensor]:
    """Inclusive voxel index ranges ``[lo, hi]`` of each Gaussian's cutoff box, clipped; and a non-empty flag."""
    n = torch.as_tensor(list(shape), device=means.device)
    lo = torch.ceil(means - extents).clamp_min(0)
    hi = torch.floor(means + extents)
    hi = torch.minimum(hi, (n - 1).to(hi.dtype))
    nonempty = (lo <= hi).all(-1) & torch.isfinite(lo).all(-1) & torch.isfinite(hi).all(-1)
    lo = torch.where(nonempty.unsqueeze(-1), lo, torch.zeros_like(lo)).long()
    hi = torch.where(nonempty.unsqueeze(-1), hi, torch.zeros_like(hi)).long()
    return lo, hi, nonempty


def bin_gaussians_to_tiles(
    means: Tensor, extents: Tensor, shape: Sequence[int], tile: int = TILE
) -> tuple[Tensor, Tensor]:
    """List the (Gaussian, tile) pairs whose cutoff box and tile overlap.

    Args:
        means: ``(B, K, 3)`` centres in voxel coordinates.
        extents: ``(B, K, 3)`` half-widths of the cutoff boxes in voxels.
        shape: ``(D, H, W)``.
        tile: tile edge in voxels.

    Returns:
        ``(gid, tid)``: flat Gaussian index ``b * K + k`` and flat tile index (row-major over the tile grid) of
        every pair, both int64 of length P, ordered by Gaussian.
    """
    b, k = means.shape[:2]
    nt = _tile_grid(shape, tile)
    lo, hi, nonempty = _voxel_ranges(means.detach(), extents.detach(), shape)
    tlo = torch.div(lo, tile, rounding_mode="floor").reshape(b * k, 3)
    thi = torch.div(hi, tile, rounding_mode="floor").reshape(b * k, 3)
    span = (thi - tlo + 1) * nonempty.reshape(b * k, 1)
    counts = span.prod(-1)
    gid = torch.repeat_interleave(torch.arange(b * k, device=means.device), counts)
    if gid.numel() == 0:
        return gid, gid.clone()
    starts = torch.cumsum(counts, 0) - counts
    local = torch.arange(gid.numel(), device=means.device) - starts[gid]
    sp = span[gid]
    tw = local % sp[:, 2]
    th = (local // sp[:, 2]) % sp[:, 1]
    td = local // (sp[:, 2] * sp[:, 1])
    t0 = tlo[gid]
    tid = ((td + t0[:, 0]) * nt[1] + (th + t0[:, 1])) * nt[2] + (tw + t0[:, 2])
    return gid, tid


def count_pairs(means: Tensor, extents: Tensor, shape: Sequence[int]) -> int:
    """Number of (Gaussian, voxel) pairs inside the Gaussians' cutoff boxes (clipped to the volume)."""
    lo, hi, nonempty = _voxel_ranges(means.detach(), extents.detach(), shape)
    return int(((hi - lo + 1) * nonempty.unsqueeze(-1)).prod(-1).sum())


def _tile_offsets(tile: int, device, dtype) -> Tensor:
    r = torch.arange(tile, device=device)
    grid = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    return grid.to(dtype)


class _Context:
    """Shared per-chunk geometry for forward and backward."""

    def __init__(self, shape: Sequence[int], tile: int, batch: int, k: int, device, dtype):
        self.shape = tuple(int(s) for s in shape)
        self.tile = tile
        self.nt = _tile_grid(shape, tile)
        self.padded = tuple(n * tile for n in self.nt)
        self.k = k
        self.batch = batch
        self.offsets = _tile_offsets(tile, device, dtype)  # (T^3, 3)
        dp, hp, wp = self.padded
        o = self.offsets.long()
        self.offset_flat = (o[:, 0] * hp + o[:, 1]) * wp + o[:, 2]  # (T^3,)

    def chunk(self, gid: Tensor, tid: Tensor, means: Tensor, conics: Tensor, cutoff: float):
        """Tile-local displacements, exponent, weights and padded-output voxel indices for a chunk of pairs."""
        nt, tile = self.nt, self.tile
        dp, hp, wp = self.padded
        td = tid // (nt[1] * nt[2])
        th = (tid // nt[2]) % nt[1]
        tw = tid % nt[2]
        origin = torch.stack([td, th, tw], -1) * tile  # (P, 3) long
        m = means.reshape(-1, 3)[gid] - origin.to(means.dtype)  # tile-local centres
        c = conics.reshape(-1, 6)[gid]
        d = self.offsets.unsqueeze(0) - m.unsqueeze(1)  # (P, T^3, 3)
        dx, dy, dz = d.unbind(-1)
        q = (
            c[:, 0:1] * dx * dx + c[:, 1:2] * dy * dy + c[:, 2:3] * dz * dz
            + 2.0 * (c[:, 3:4] * dx * dy + c[:, 4:5] * dx * dz + c[:, 5:6] * dy * dz)
        )  # fmt: skip
        w = torch.exp(-0.5 * q) * (q <= cutoff * cutoff)
        b = gid // self.k
        base = b * (dp * hp * wp) + (origin[:, 0] * hp + origin[:, 1]) * wp + origin[:, 2]
        idx = base.unsqueeze(1) + self.offset_flat.unsqueeze(0)  # (P, T^3)
        return d, w, idx


def _chunks(n: int, per: int):
    step = max(1, _CHUNK_ELEMS // per)
    for s in range(0, n, step):
        yield slice(s, min(n, s + step))


class _RenderTorch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, conics, intensities, extents, shape, cutoff, tile):  # type: ignore[override]
        b, k = means.shape[:2]
        geo = _Context(shape, tile, b, k, means.device, means.dtype)
        gid, tid = bin_gaussians_to_tiles(means, extents, shape, tile)
        dp, hp, wp = geo.padded
        out = torch.zeros(b * dp * hp * wp, device=means.device, dtype=means.dtype)
        inten = intensities.reshape(-1)
        for sl in _chunks(gid.numel(), tile**3):
            _, w, idx = geo.chunk(gid[sl], tid[sl], means, conics, cutoff)
            out.index_add_(0, idx.reshape(-1), (w * inten[gid[sl]].unsqueeze(1)).reshape(-1))
        ctx.save_for_backward(means, conics, intensities, gid, tid)
        ctx.geo, ctx.cutoff = geo, cutoff
        d, h, w_ = geo.shape
        return out.view(b, dp, hp, wp)[:, :d, :h, :w_].contiguous()

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        means, conics, intensities, gid, tid = ctx.saved_tensors
        geo, cutoff = ctx.geo, ctx.cutoff
        b, k = means.shape[:2]
        dp, hp, wp = geo.padded
        d_, h_, w_ = geo.shape
        g_pad = torch.zeros(b, dp, hp, wp, device=means.device, dtype=means.dtype)
        g_pad[:, :d_, :h_, :w_] = grad_out
        g_flat = g_pad.reshape(-1)
        inten = intensities.reshape(-1)
        g_means = torch.zeros(b * k, 3, device=means.device, dtype=means.dtype)
        g_conics = torch.zeros(b * k, 6, device=means.device, dtype=means.dtype)
        g_int = torch.zeros(b * k, device=means.device, dtype=means.dtype)
        for sl in _chunks(gid.numel(), geo.tile**3):
            g = gid[sl]
            d, w, idx = geo.chunk(g, tid[sl], means, conics, cutoff)
            go = g_flat[idx]  # (P, T^3)
            gw = go * w
            g_int.index_add_(0, g, gw.sum(1))
            dq = -0.5 * gw * inten[g].unsqueeze(1)  # dL/dq
            dx, dy, dz = d.unbind(-1)
            gc = torch.stack(
                [
                    (dq * dx * dx).sum(1), (dq * dy * dy).sum(1), (dq * dz * dz).sum(1),
                    2.0 * (dq * dx * dy).sum(1), 2.0 * (dq * dx * dz).sum(1), 2.0 * (dq * dy * dz).sum(1),
                ],
                -1,
            )  # fmt: skip
            g_conics.index_add_(0, g, gc)
            # dq/dm = -2 P d  (d = x - m)
            c = conics.reshape(-1, 6)[g]
            pd = torch.stack(
                [
                    c[:, 0:1] * dx + c[:, 3:4] * dy + c[:, 4:5] * dz,
                    c[:, 3:4] * dx + c[:, 1:2] * dy + c[:, 5:6] * dz,
                    c[:, 4:5] * dx + c[:, 5:6] * dy + c[:, 2:3] * dz,
                ],
                -1,
            )
            g_means.index_add_(0, g, -2.0 * (dq.unsqueeze(-1) * pd).sum(1))
        return (
            g_means.view(b, k, 3) if ctx.needs_input_grad[0] else None,
            g_conics.view(b, k, 6) if ctx.needs_input_grad[1] else None,
            g_int.view(b, k) if ctx.needs_input_grad[2] else None,
            None,
            None,
            None,
            None,
        )


@contextlib.contextmanager
def torch_path(path: str) -> Iterator[None]:
    """Force the torch backend's path inside the ``with`` block (for benchmarks and tests).

    Args:
        path: ``"auto"`` (runs of in-cutoff voxels for every Gaussian whose clipped box is at most ``MAX_WIDTH``
            wide, i.e. all in practice, tiles for the rest; the default)
            or ``"tile"`` (every Gaussian on tiles: the implementation before the stencil path).

    Raises:
        ValueError: on another ``path``.
    """
    global _path
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    old, _path = _path, path
    try:
        yield
    finally:
        _path = old


def render_torch(
    means: Tensor,
    conics: Tensor,
    intensities: Tensor,
    extents: Tensor,
    shape: Sequence[int],
    cutoff: float,
    tile: int = TILE,
) -> Tensor:
    """Render pre-processed Gaussians to ``(B, D, H, W)``; differentiable w.r.t. means, conics, intensities.

    Args:
        means: ``(B, K, 3)`` voxel-frame centres.
        conics: ``(B, K, 6)`` precision entries ``(Pdd, Phh, Pww, Pdh, Pdw, Phw)``.
        intensities: ``(B, K)``.
        extents: ``(B, K, 3)`` cutoff-box half-widths (no gradient).
        shape: ``(D, H, W)``.
        cutoff: Mahalanobis cutoff.
        tile: tile edge in voxels.

    Returns:
        ``(B, D, H, W)`` volume in the dtype of ``means``.
    """
    shape = tuple(int(s) for s in shape)
    if _path == "tile":
        return _RenderTorch.apply(means, conics, intensities, extents, shape, float(cutoff), int(tile))
    lo, hi, nonempty = _voxel_ranges(means.detach(), extents.detach(), shape)
    small = (hi - lo < MAX_WIDTH).all(-1)  # clipped box at most MAX_WIDTH voxels wide
    gids = (small & nonempty).reshape(-1).nonzero().squeeze(1)
    if gids.numel() == 0:
        return _RenderTorch.apply(means, conics, intensities, extents, shape, float(cutoff), int(tile))
    lo, hi = lo.reshape(-1, 3)[gids], hi.reshape(-1, 3)[gids]
    out = render_stencil(means, conics, intensities, gids, lo, hi - lo + 1, shape, float(cutoff))
    if bool((~small & nonempty).any()):
        # the tile path skips the stencil Gaussians: a negative extent makes their box empty
        rest = torch.where(small.unsqueeze(-1), torch.full_like(extents, -1.0), extents)
        out = out + _RenderTorch.apply(means, conics, intensities, rest, shape, float(cutoff), int(tile))
    return out
