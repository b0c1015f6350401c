"""Per-Gaussian stencil renderer (plain PyTorch, any device) for small Gaussians.

Each Gaussian is evaluated on its own cutoff box only: a stencil of ``Sd x Sh x Sw`` voxels starting at
``ceil(mu - extent)``, where ``S = floor(2 extent) + 1`` (rounded up to one of :data:`LEVELS`) covers every voxel
inside the cutoff ellipsoid. Gaussians with the same rounded stencil form a group; a group is evaluated in chunks
of at most :data:`CHUNK_ELEMS` voxel evaluations, so memory stays bounded. Coordinates are stencil-local (voxel
minus centre, small magnitudes), so float32 loses nothing to cancellation.

The exponent is factorised by completing the square in the first axis:

``-q/2 = -(Pdd/2) (u_d + b_h u_h + b_w u_w)^2 + r(u_h, u_w)``, ``b = (Pdh, Pdw) / Pdd``,

with ``r`` the quadratic form of the Schur complement (the ``(h, w)`` marginal's precision) times ``-1/2``, so
the shift and ``r`` are two-dimensional per Gaussian and only a handful of passes run over the 3D stencil.
The forward pass scatters with ``index_add_`` into a padded volume; the backward pass gathers the output
gradient and reduces it against the weights to the moments ``sum F u_a^i u_b^j`` (``i + j <= 2``) with three
small matrix products against fixed integer-power tables, from which the gradients of means, conics and
intensities follow in closed form. The weights are recomputed in the backward pass.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

__all__ = ["LEVELS", "CHUNK_ELEMS", "stencil_widths", "render_stencil"]

#: Stencil edge lengths (voxels) a Gaussian's box width is rounded up to; the last is the largest stencil.
LEVELS = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16)
#: Upper bound on voxel evaluations held at once.
CHUNK_ELEMS = 1 << 18


def stencil_widths(extents: Tensor) -> Tensor:
    """``(..., 3)`` int64 stencil widths ``floor(2 extent) + 1``: voxels an interval of that length can hold."""
    return torch.floor(2.0 * extents.detach()).long() + 1


class _Plan:
    """Groups of Gaussians by rounded stencil shape, their stencil origins and the padded output frame."""

    def __init__(self, means: Tensor, extents: Tensor, gids: Tensor, shape: Sequence[int], batch: int, k: int):
        dev = means.device
        self.shape, self.batch, self.k = tuple(int(s) for s in shape), batch, k
        levels = torch.tensor(LEVELS, device=dev)
        m, e = means.detach().reshape(-1, 3)[gids], extents.detach().reshape(-1, 3)[gids]
        li = torch.bucketize(stencil_widths(e), levels)  # index of the level each width rounds up to
        key = (li[:, 0] * len(LEVELS) + li[:, 1]) * len(LEVELS) + li[:, 2]
        key, order = torch.sort(key, stable=True)
        self.gids = gids[order]
        origin = torch.ceil(m[order] - e[order]).long()  # (N, 3) first stencil voxel
        width = levels[li[order]]
        n = torch.tensor(self.shape, device=dev)
        lo = (-origin.min(0).values).clamp_min(0) if origin.numel() else torch.zeros(3, dtype=torch.long, device=dev)
        hi = (origin + width - n).max(0).values.clamp_min(0) if origin.numel() else lo
        keys, counts = torch.unique_consecutive(key, return_counts=True)
        sync = torch.cat([lo, hi, keys, counts]).tolist()  # the one host sync
        self.pad_lo, pad_hi = sync[:3], sync[3:6]
        ng = len(keys)
        self.padded = tuple(a + b + c for a, b, c in zip(self.shape, self.pad_lo, pad_hi))
        self.origin = origin + torch.tensor(self.pad_lo, device=dev)  # in the padded frame
        self.groups = []
        start = 0
        for key_g, cnt in zip(sync[6 : 6 + ng], sync[6 + ng :]):
            s = (LEVELS[key_g // len(LEVELS) ** 2], LEVELS[(key_g // len(LEVELS)) % len(LEVELS)], LEVELS[key_g % len(LEVELS)])
            step = max(1, CHUNK_ELEMS // (s[0] * s[1] * s[2]))
            for a in range(start, start + cnt, step):
                self.groups.append((slice(a, min(start + cnt, a + step)), s))
            start += cnt
        self.index_dtype = torch.int32 if batch * self.padded[0] * self.padded[1] * self.padded[2] < 2**31 else torch.int64

    def offsets(self, s: tuple, device) -> Tensor:
        """Flat padded-volume offsets ``(Sd*Sh*Sw,)`` of a stencil's voxels from its first voxel."""
        _, ph, pw = self.padded
        i, j, k = (torch.arange(n, device=device) for n in s)
        return ((i[:, None, None] * ph + j[None, :, None]) * pw + k[None, None, :]).reshape(-1).to(self.index_dtype)

    def flat_index(self, sl: slice, s: tuple) -> Tensor:
        """``(P, Sd*Sh*Sw)`` flat indices into the padded ``(B, Dp, Hp, Wp)`` volume of a chunk's stencils."""
        dp, hp, wp = self.padded
        g, o = self.gids[sl], self.origin[sl]
        base = (g // self.k) * (dp * hp * wp) + (o[:, 0] * hp + o[:, 1]) * wp + o[:, 2]
        return base.to(self.index_dtype)[:, None] + self.offsets(s, g.device)[None, :]


def _coefficients(conics: Tensor) -> Tensor:
    """Per-Gaussian ``(N, 6)`` ``(Pdd/2, b_h, b_w, r_hh, r_hw, r_ww)`` of the factorised exponent (float64 maths)."""
    c = conics.detach().double()
    pdd, phh, pww, pdh, pdw, phw = c.unbind(-1)
    bh, bw = pdh / pdd, pdw / pdd
    return torch.stack(
        [0.5 * pdd, bh, bw, -0.5 * (phh - pdh * bh), -(phw - pdh * bw), -0.5 * (pww - pdw * bw)], -1
    ).to(conics.dtype)


def _local_axes(plan: _Plan, sl: slice, s: tuple, means: Tensor):
    """Stencil-local coordinates ``u_a = voxel_a - mu_a`` per axis: three ``(P, S_a)`` tensors."""
    m = means.reshape(-1, 3)[plan.gids[sl]]
    u0 = (plan.origin[sl] - torch.tensor(plan.pad_lo, device=m.device)).to(m.dtype) - m  # (P, 3)
    return [u0[:, a : a + 1] + torch.arange(s[a], device=m.device, dtype=m.dtype) for a in range(3)]


def _log_weights(coef: Tensor, u, cutoff: float) -> Tensor:
    """``(P, Sd, Sh, Sw)`` weights ``exp(-q/2)``, zero where ``q > cutoff^2``."""
    ud, uh, uw = u
    h, bh, bw, rhh, rhw, rww = (coef[:, i, None, None] for i in range(6))
    shift = bh * uh[:, :, None] + bw * uw[:, None, :]  # (P, Sh, Sw)
    r = rhh * (uh * uh)[:, :, None] + rhw * uh[:, :, None] * uw[:, None, :] + rww * (uw * uw)[:, None, :]
    t = ud[:, :, None, None] + shift[:, None]
    t.mul_(t)
    e = torch.addcmul(r[:, None], t, h[:, None].neg(), out=t)  # -q/2
    e.masked_fill_(e < -0.5 * cutoff * cutoff, float("-inf"))
    return e.exp_()


def _moments(f: Tensor, u, s: tuple) -> Tensor:
    """``(P, 3, 3, 3)`` moments ``sum f u_d^i u_h^j u_w^k`` (``i, j, k <= 2``) of ``f`` ``(P, Sd, Sh, Sw)``.

    Contracts each axis against the powers of centred integer offsets (one matrix product over all Gaussians per
    axis), then shifts the polynomial basis to ``u`` per Gaussian: ``[1, u, u^2] = L [1, k, k^2]``.
    """
    p = f.shape[0]
    out = f
    lows = []
    for a in (2, 1, 0):
        c0 = 0.5 * (s[a] - 1)
        k = torch.arange(s[a], device=f.device, dtype=f.dtype) - c0
        table = torch.stack([torch.ones_like(k), k, k * k], -1)  # (S_a, 3)
        out = out.movedim(a + 1, -1) @ table if a != 2 else out @ table  # contract axis a, its powers go last
        delta = u[a][:, 0] + c0  # u = delta + k
        low = torch.zeros(p, 3, 3, device=f.device, dtype=f.dtype)
        low[:, 0, 0], low[:, 1, 1], low[:, 2, 2] = 1.0, 1.0, 1.0
        low[:, 1, 0], low[:, 2, 0], low[:, 2, 1] = delta, delta * delta, 2.0 * delta
        lows.append(low)
    # out is (P, 3_w, 3_h, 3_d) after the three contractions (w, then h, then d, each moved last in turn)
    lw, lh, ld = lows
    return torch.einsum("pai,pbj,pck,pkji->pabc", ld, lh, lw, out)


class _RenderStencil(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, conics, intensities, extents, gids, shape, cutoff):  # type: ignore[override]
        b, k = means.shape[:2]
        plan = _Plan(means, extents, gids, shape, b, k)
        coef = _coefficients(conics.reshape(-1, 6)[plan.gids])
        dp, hp, wp = plan.padded
        out = torch.zeros(b * dp * hp * wp, device=means.device, dtype=means.dtype)
        inten = intensities.reshape(-1)[plan.gids]
        for sl, s in plan.groups:
            w = _log_weights(coef[sl], _local_axes(plan, sl, s, means), cutoff)
            w.mul_(inten[sl, None, None, None])
            out.index_add_(0, plan.flat_index(sl, s).reshape(-1), w.reshape(-1))
        ctx.save_for_backward(means, conics, intensities, coef)
        ctx.plan, ctx.cutoff = plan, cutoff
        d, h, w_ = plan.shape
        lo = plan.pad_lo
        return out.view(b, dp, hp, wp)[:, lo[0] : lo[0] + d, lo[1] : lo[1] + h, lo[2] : lo[2] + w_].contiguous()

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        means, conics, intensities, coef = ctx.saved_tensors
        plan, cutoff = ctx.plan, ctx.cutoff
        b, k = means.shape[:2]
        dp, hp, wp = plan.padded
        d, h, w_ = plan.shape
        lo = plan.pad_lo
        g_pad = torch.zeros(b, dp, hp, wp, device=means.device, dtype=means.dtype)
        g_pad[:, lo[0] : lo[0] + d, lo[1] : lo[1] + h, lo[2] : lo[2] + w_] = grad_out
        g_flat = g_pad.reshape(-1)
        mom = torch.empty(plan.gids.numel(), 3, 3, 3, device=means.device, dtype=means.dtype)
        for sl, s in plan.groups:
            u = _local_axes(plan, sl, s, means)
            f = _log_weights(coef[sl], u, cutoff)
            f.mul_(g_flat.index_select(0, plan.flat_index(sl, s).reshape(-1)).view_as(f))
            mom[sl] = _moments(f, u, s)
        return (*_gradients(mom, means, conics, intensities, plan.gids, ctx.needs_input_grad), None, None, None, None)


def _gradients(mom: Tensor, means: Tensor, conics: Tensor, intensities: Tensor, gids: Tensor, needs) -> tuple:
    """Gradients of means, conics and intensities from the per-Gaussian moments of ``G w``."""
    b, k = means.shape[:2]
    n0 = mom[:, 0, 0, 0]
    m1 = torch.stack([mom[:, 1, 0, 0], mom[:, 0, 1, 0], mom[:, 0, 0, 1]], -1)
    m2 = torch.stack(
        [mom[:, 2, 0, 0], mom[:, 0, 2, 0], mom[:, 0, 0, 2], 2 * mom[:, 1, 1, 0], 2 * mom[:, 1, 0, 1], 2 * mom[:, 0, 1, 1]],
        -1,
    )
    dq = -0.5 * intensities.reshape(-1)[gids]  # dL/dq = -I/2 G w
    g_int = torch.zeros(b * k, device=means.device, dtype=means.dtype).index_add_(0, gids, n0)
    g_con = torch.zeros(b * k, 6, device=means.device, dtype=means.dtype).index_add_(0, gids, dq[:, None] * m2)
    c = conics.reshape(-1, 6)[gids]
    pm = torch.stack(
        [
            c[:, 0] * m1[:, 0] + c[:, 3] * m1[:, 1] + c[:, 4] * m1[:, 2],
            c[:, 3] * m1[:, 0] + c[:, 1] * m1[:, 1] + c[:, 5] * m1[:, 2],
            c[:, 4] * m1[:, 0] + c[:, 5] * m1[:, 1] + c[:, 2] * m1[:, 2],
        ],
        -1,
    )  # P sum(F u)
    g_means = torch.zeros(b * k, 3, device=means.device, dtype=means.dtype).index_add_(0, gids, -2.0 * dq[:, None] * pm)
    return (
        g_means.view(b, k, 3) if needs[0] else None,
        g_con.view(b, k, 6) if needs[1] else None,
        g_int.view(b, k) if needs[2] else None,
    )


def render_stencil(
    means: Tensor, conics: Tensor, intensities: Tensor, extents: Tensor, gids: Tensor, shape: Sequence[int], cutoff: float
) -> Tensor:
    """Render the Gaussians ``gids`` (flat ``b * K + k``) of pre-processed inputs with per-Gaussian stencils.

    Args:
        means: ``(B, K, 3)`` voxel-frame centres.
        conics: ``(B, K, 6)`` precision entries ``(Pdd, Phh, Pww, Pdh, Pdw, Phw)``.
        intensities: ``(B, K)``.
        extents: ``(B, K, 3)`` cutoff-box half-widths (no gradient); every selected Gaussian's stencil width
            :func:`stencil_widths` must be at most ``LEVELS[-1]``.
        gids: ``(N,)`` int64 flat indices of the Gaussians to render (others contribute nothing and get zero
            gradients); each one's cutoff box must meet the volume (the padded frame covers their stencils).
        shape: ``(D, H, W)``.
        cutoff: Mahalanobis cutoff.

    Returns:
        ``(B, D, H, W)`` volume in the dtype of ``means``; differentiable w.r.t. means, conics, intensities.
    """
    return _RenderStencil.apply(means, conics, intensities, extents, gids, tuple(int(s) for s in shape), float(cutoff))
