"""Per-Gaussian stencil renderer (plain PyTorch, any device): runs of in-cutoff voxels.

Each Gaussian is evaluated only on the voxels inside its cutoff ellipsoid, as runs along the last axis (``w``,
contiguous in memory) whose ends are known in closed form (:mod:`._stencil_runs` finds them). Runs of equal
length ``L`` form a group evaluated as one ``(L, C)`` block (offset-major, so every operation runs along the
long axis), in chunks of at most :data:`._stencil_runs.CHUNK_ELEMS` evaluations: no padding and no box corners,
about one evaluation per in-cutoff voxel where a whole box costs 2-3 for rotated Gaussians and a tile 64 or
more. The exponent is thresholded at ``q <= cutoff^2`` as on the tile path.

The forward pass scatters with ``scatter_add_``; the backward pass gathers the output gradient and reduces it
against the weights to per-run moments ``sum f k^i`` (``i <= 2``, one small matrix product per chunk), which give
each Gaussian's moments ``sum f u_a u_b`` through two ``index_add_`` (runs to rows, rows to Gaussians); the
gradients of means, conics and intensities follow in closed form. The forward pass keeps the weights of its
first chunks, up to :data:`SAVED_ELEMS` evaluations, for the backward pass, which recomputes the rest.

On the CPU the blocks of Gaussians are shared among worker threads, one intra-op thread each (:func:`_map`):
PyTorch runs ``scatter_add_`` and ``index_add_`` on one thread, so with the intra-op threads alone the other
cores wait through much of the pass. Each worker renders a contiguous range of blocks, i.e. a slab of the volume:
the first scatters into the output, the others into zeroed copies of their slabs (added in a fixed order at the
end), and each writes the moments of its own Gaussians, so the result does not depend on thread timing.

Why not a library: neither MONAI nor gsplat renders 3D Gaussians into voxels on the CPU; R2-Gaussian's voxeliser
is CUDA only.
"""

from __future__ import annotations

import concurrent.futures
import functools
import math
import os
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from medgmae.render._stencil_runs import Runs, plan_blocks, ramp

__all__ = ["MAX_WIDTH", "SAVED_ELEMS", "stencil_widths", "render_stencil"]

#: Widest clipped cutoff box (voxels per axis) rendered here; Gaussians with wider boxes go to the tile path.
#: Runs beat tiles at every size measured on the CPU (``bench/RESULTS.md``), so only volumes wider than this many
#: voxels (and run lengths that would not fit the int16 sort keys) use tiles.
MAX_WIDTH = 1 << 14
#: Weights of up to this many voxel evaluations are kept from the forward for the backward pass (the rest are
#: recomputed), so memory stays bounded: 64 MiB in float32.
SAVED_ELEMS = 1 << 24


def stencil_widths(extents: Tensor) -> Tensor:
    """``(..., 3)`` int64 ``floor(2 extent) + 1``: the most voxels a cutoff box of these half-widths can hold."""
    return torch.floor(2.0 * extents.detach()).long() + 1


def _weights(t0: Tensor, nw: Tensor, r: Tensor, n: int, lim: float) -> Tensor:
    """``(L, C)`` weights ``exp(-q/2)`` of a chunk's ``C`` runs of length ``L``, zero where ``-q/2 < lim``.

    Laid out offset-major so every operation runs along the long ``C`` axis (vectorised; a ``(C, L)`` layout
    with ``L`` of a few voxels costs several times more per element).
    """
    t = ramp(n, t0.device, t0.dtype)[:, None] + t0
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


def _worker_count(device: torch.device) -> int:
    """Worker threads rendering blocks at once: the intra-op threads on the CPU, one on accelerators."""
    return torch.get_num_threads() if device.type == "cpu" else 1


def _groups(items: list, n: int) -> list:
    """``items`` split into ``n`` (or fewer, if fewer items) contiguous groups, one per worker thread."""
    n = max(1, min(len(items), n))
    bounds = [round(i * len(items) / n) for i in range(n + 1)]
    return [items[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


@functools.lru_cache(maxsize=4)
def _pool(n: int) -> concurrent.futures.ThreadPoolExecutor:
    """A persistent pool: a new thread's first operations cost milliseconds."""
    return concurrent.futures.ThreadPoolExecutor(n, thread_name_prefix="medgmae-render")


if hasattr(os, "register_at_fork"):  # a forked child (e.g. a data loader worker) has none of the pool's threads
    os.register_at_fork(after_in_child=_pool.cache_clear)


def _map(fn, groups: list) -> list:
    """``[fn(j, group_j)]``, the groups on worker threads of one intra-op thread each (in the caller's thread if
    there is one group). The thread count is process-wide in PyTorch: it is set to one while the workers run (the
    caller waits meanwhile) and restored after."""
    if len(groups) <= 1:
        return [fn(j, g) for j, g in enumerate(groups)]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        return list(_pool(len(groups)).map(fn, range(len(groups)), groups))
    finally:
        torch.set_num_threads(threads)


def _render_blocks(blocks: list, inten: Tensor, out: Tensor, shape, cutoff: float, lim: float, keep: int) -> list:
    """Forward pass of one worker's blocks ``[(slice, spec)]``, scattered into ``out`` (the flat voxels from the
    one the specs' indices are relative to); returns ``[(slice, Runs, kept weights by chunk)]``, keeping up to
    ``keep`` evaluations' weights."""
    done = []
    for blk, spec in blocks:
        runs = Runs(spec, shape, cutoff)
        it, kept = inten[blk].index_select(0, runs.rg).index_select(0, runs.row), {}
        for i, (sl, n) in enumerate(runs.chunks):
            w = _weights(runs.t0[sl], runs.nw[sl], runs.r[sl], n, lim)
            out.scatter_add_(0, runs.index(sl, n), (w * it[sl]).reshape(-1))
            if w.numel() <= keep:  # keep the weights for the backward pass while the budget lasts
                kept[i] = w
                keep -= w.numel()
        done.append((blk, runs, kept))
    return done


def _moment_blocks(blocks: list, grad: Tensor, mom: Tensor, lim: float) -> None:
    """Backward pass of one worker's blocks (as returned by :func:`_render_blocks`): their Gaussians' rows of
    ``mom`` from the flat output gradient ``grad`` (from the voxel the blocks' indices are relative to)."""
    for blk, runs, kept in blocks:
        raw = torch.empty(3, runs.row.numel(), device=grad.device, dtype=mom.dtype)
        for i, (sl, n) in enumerate(runs.chunks):
            w = kept[i] if i in kept else _weights(runs.t0[sl], runs.nw[sl], runs.r[sl], n, lim)
            f = grad.index_select(0, runs.index(sl, n)).view_as(w).mul_(w)  # (L, C)
            raw[:, sl] = _power_table(n, f.device, f.dtype) @ f
        mom[blk] = _gaussian_moments(raw, runs, blk.stop - blk.start)


def _regions(groups: list, shape, size: int) -> list:
    """Per worker's group of blocks, the flat index range ``(lo, hi)`` of the voxels its boxes can touch, and the
    group with its boxes' flat indices made relative to ``lo``; the whole output ``(0, size)`` for one group (no
    host syncs on accelerators)."""
    if len(groups) == 1:
        return [((0, size), groups[0])]
    h_, w_ = shape[1:]
    out = []
    for group in groups:  # never empty: _groups makes at most one group per block
        base = torch.cat([spec["base"] for _, spec in group])
        width = torch.cat([spec["width"] for _, spec in group])
        last = base.long() + ((width[:, 0] - 1) * h_ + width[:, 1] - 1) * w_ + width[:, 2] - 1
        lo, hi = int(base.min()), int(last.max()) + 1
        out.append(((lo, hi), [(blk, dict(spec, base=spec["base"] - lo)) for blk, spec in group]))
    return out


class _RenderStencil(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, conics, intensities, gids, origin, width, shape, cutoff):  # type: ignore[override]
        workers = _worker_count(means.device)
        gids, specs = plan_blocks(means, conics, gids, origin, width, shape, workers)
        inten = intensities.detach().reshape(-1).index_select(0, gids)
        lim = _threshold(cutoff, means.dtype)
        size = means.shape[0] * math.prod(shape)
        regions = _regions(_groups(specs, workers), shape, size)
        out = torch.zeros(size, device=means.device, dtype=means.dtype)
        # the first worker scatters into the output, the others into zeroed copies of their own regions
        parts = [out[lo:hi] if j == 0 else torch.zeros_like(out[lo:hi]) for j, ((lo, hi), _) in enumerate(regions)]
        keep = SAVED_ELEMS // len(regions) if any(ctx.needs_input_grad[:3]) else 0

        def work(j, group):
            return _render_blocks(group, inten, parts[j], shape, cutoff, lim, keep)

        ctx.blocks = _map(work, [group for _, group in regions])
        for ((lo, hi), _), part in zip(regions[1:], parts[1:]):
            out[lo:hi] += part
        ctx.save_for_backward(means, conics, intensities, gids)
        ctx.lim, ctx.ranges = lim, [r for r, _ in regions]
        return out.view(means.shape[0], *shape)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        means, conics, intensities, gids = ctx.saved_tensors
        grad = grad_out.reshape(-1)
        mom = torch.zeros(gids.numel(), 10, device=means.device, dtype=means.dtype)

        def work(j, blocks):
            lo, hi = ctx.ranges[j]
            _moment_blocks(blocks, grad[lo:hi], mom, ctx.lim)

        _map(work, ctx.blocks)
        grads = _gradients(mom, means, conics, intensities, gids, ctx.needs_input_grad)
        return (*grads, None, None, None, None, None)


def _gaussian_moments(raw: Tensor, runs: Runs, n: int) -> Tensor:
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
