"""Per-Gaussian stencil renderer (plain PyTorch, any device) for small Gaussians.

Each Gaussian is evaluated on its own cutoff box only, clipped to the volume: a stencil of ``Sd x Sh x Sw``
voxels (at most :data:`MAX_WIDTH` per axis) that holds every voxel inside the cutoff ellipsoid. Gaussians with the
same stencil shape form a group (small groups are merged); a group is evaluated in chunks of at most
:data:`CHUNK_ELEMS` voxel evaluations, so memory stays bounded. Coordinates are stencil-local (voxel minus
centre, small magnitudes), so float32 does not lose the offsets to cancellation against large coordinates.

The exponent is factorised by completing the square in the first axis:

``-q/2 = -(Pdd/2) (u_d + b_h u_h + b_w u_w)^2 + r(u_h, u_w)``, ``b = (Pdh, Pdw) / Pdd``,

with ``r`` the quadratic form of the Schur complement (the ``(h, w)`` marginal's precision) times ``-1/2``, so
the shift and ``r`` are two-dimensional per Gaussian and only a handful of passes run over the 3D stencil.
The forward pass scatters with ``scatter_add_`` into a padded volume; the backward pass gathers the output
gradient and reduces it against the weights to the moments ``sum F u_a^i u_b^j`` (``i + j <= 2``) with three
small matrix products against fixed integer-power tables, from which the gradients of means, conics and
intensities follow in closed form. The forward pass keeps the weights of its first chunks, up to
:data:`SAVED_ELEMS` evaluations, for the backward pass, which recomputes the rest.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["MAX_WIDTH", "CHUNK_ELEMS", "SAVED_ELEMS", "MIN_GROUP_ELEMS", "stencil_widths", "render_stencil"]

#: Widest stencil (voxels per axis); Gaussians with wider boxes go to the tile path.
MAX_WIDTH = 16
#: Upper bound on voxel evaluations held at once.
CHUNK_ELEMS = 1 << 20
#: Weights of up to this many voxel evaluations are kept from the forward for the backward pass (the rest are
#: recomputed), so memory stays bounded: 64 MiB in float32.
SAVED_ELEMS = 1 << 24
#: Consecutive groups of fewer voxel evaluations each are merged with each other (see :class:`_Plan`).
MIN_GROUP_ELEMS = 1 << 16


def stencil_widths(extents: Tensor) -> Tensor:
    """``(..., 3)`` int64 ``floor(2 extent) + 1``: the most voxels a cutoff box of these half-widths can hold."""
    return torch.floor(2.0 * extents.detach()).long() + 1


class _Plan:
    """Groups of Gaussians by stencil shape, their stencil origins and the padded output frame.

    Gaussians are sorted by their stencil shape ``(Sd, Sh, Sw)`` (their clipped box); consecutive groups holding
    fewer than :data:`MIN_GROUP_ELEMS` voxel evaluations each are merged until they hold that many (the per-axis
    maximum shape, which may reach past the volume: the output is padded for it), so many small groups do not
    cost one pass of Python overhead each. Groups are split into chunks of at most :data:`CHUNK_ELEMS` evaluations.
    """

    def __init__(self, gids: Tensor, origin: Tensor, width: Tensor, shape: Sequence[int], batch: int, k: int):
        dev = gids.device
        self.shape, self.batch, self.k = tuple(int(s) for s in shape), batch, k
        nl = MAX_WIDTH + 1
        key = (width[:, 0] * nl + width[:, 1]) * nl + width[:, 2]
        key, order = torch.sort(key, stable=True)
        self.gids, origin = gids[order], origin[order]
        keys, counts = torch.unique_consecutive(key, return_counts=True)
        sync = torch.cat([keys, counts]).tolist()  # one host sync for the plan...
        self.chunks, self.centre = self._chunks(sync, len(keys), dev)
        width = (2.0 * self.centre).long() + 1  # stencil widths after merging
        n = torch.tensor(self.shape, device=dev)
        pad = (origin + width - n).max(0).values.clamp_min(0).tolist()  # ...and one for the padding
        self.padded = tuple(a + b for a, b in zip(self.shape, pad))
        self.origin = origin  # (N, 3) first stencil voxel (inside the volume)
        dp, hp, wp = self.padded
        self.base = (self.gids // k) * (dp * hp * wp) + (origin[:, 0] * hp + origin[:, 1]) * wp + origin[:, 2]
        self._offsets: dict = {}

    def _chunks(self, sync: list, ng: int, dev) -> tuple[list, Tensor]:
        """``[(slice, (Sd, Sh, Sw))]`` chunks, merging small groups; ``(N, 3)`` centre ``(S - 1) / 2`` per Gaussian."""
        nl = MAX_WIDTH + 1
        groups: list = []  # [start, count, shape, merged from small groups]
        for key_g, cnt in zip(sync[:ng], sync[ng:]):
            s = (key_g // nl**2, (key_g // nl) % nl, key_g % nl)
            small = cnt * math.prod(s) < MIN_GROUP_ELEMS
            if small and groups and groups[-1][3] and groups[-1][1] * math.prod(groups[-1][2]) < MIN_GROUP_ELEMS:
                groups[-1][1] += cnt  # small groups merge with each other, never into a large one
                groups[-1][2] = tuple(max(a, b) for a, b in zip(groups[-1][2], s))
            else:
                groups.append([groups[-1][0] + groups[-1][1] if groups else 0, cnt, s, small])
        chunks, centre = [], []
        for start, cnt, s, _ in groups:
            step = max(1, CHUNK_ELEMS // math.prod(s))
            chunks += [(slice(a, min(start + cnt, a + step)), s) for a in range(start, start + cnt, step)]
            centre.append(torch.tensor([0.5 * (a - 1) for a in s]).expand(cnt, 3))
        return chunks, torch.cat(centre).to(dev) if centre else torch.zeros(0, 3, device=dev)

    def offsets(self, s: tuple) -> Tensor:
        """Flat padded-volume offsets ``(Sd*Sh*Sw,)`` of a stencil's voxels from its first voxel (cached)."""
        if s not in self._offsets:
            _, ph, pw = self.padded
            i, j, k = (torch.arange(n, device=self.base.device) for n in s)
            off = (i[:, None, None] * ph + j[None, :, None]) * pw + k[None, None, :]
            self._offsets[s] = off.reshape(-1)
        return self._offsets[s]

    def flat_index(self, sl: slice, s: tuple) -> Tensor:
        """``(P * Sd*Sh*Sw,)`` flat indices into the padded ``(B, Dp, Hp, Wp)`` volume of a chunk's stencils."""
        return (self.base[sl, None] + self.offsets(s)[None, :]).reshape(-1)


def _coefficients(conics: Tensor) -> Tensor:
    """Per-Gaussian ``(N, 6)`` ``(-Pdd/2, b_h, b_w, r_hh, r_hw, r_ww)`` of the factorised exponent (float64 maths)."""
    c = conics.detach().double()
    pdd, phh, pww, pdh, pdw, phw = c.unbind(-1)
    bh, bw = pdh / pdd, pdw / pdd
    return torch.stack(
        [-0.5 * pdd, bh, bw, -0.5 * (phh - pdh * bh), -(phw - pdh * bw), -0.5 * (pww - pdw * bw)], -1
    ).to(conics.dtype)


@functools.lru_cache(maxsize=64)
def _ramp(n: int, device, dtype) -> Tensor:
    return torch.arange(n, device=device, dtype=dtype)


def _weights(coef: Tensor, u0: Tensor, s: tuple, cutoff: float) -> Tensor:
    """``(P, Sd, Sh, Sw)`` weights ``exp(-q/2)`` of a chunk, zero where ``q > cutoff^2``.

    Args:
        coef: ``(P, 6)`` from :func:`_coefficients`.
        u0: ``(P, 3)`` stencil-local coordinates of the first stencil voxel.
        s: the stencil shape.
        cutoff: Mahalanobis cutoff.
    """
    ud, uh, uw = (u0[:, a, None] + _ramp(s[a], u0.device, u0.dtype) for a in range(3))
    nh, bh, bw, rhh, rhw, rww = (coef[:, i, None] for i in range(6))
    uh, uw = uh[:, :, None], uw[:, None, :]
    shift = (bh[:, :, None] * uh + bw[:, :, None] * uw).unsqueeze(1)  # (P, 1, Sh, Sw)
    r = (rhh * uh.squeeze(2)).unsqueeze(2) * uh + (rhw[:, :, None] * uh + (rww * uw.squeeze(1))[:, None, :]) * uw
    t = ud[:, :, None, None] + shift  # (P, Sd, Sh, Sw): u_d + b_h u_h + b_w u_w
    t.mul_(t)
    e = torch.addcmul(r.unsqueeze(1), t, nh[:, :, None, None], out=t)  # -q/2
    lim = torch.nextafter(torch.tensor(-0.5 * cutoff * cutoff, dtype=e.dtype), torch.tensor(-math.inf, dtype=e.dtype))
    return F.threshold_(e, float(lim), -math.inf).exp_()  # keeps -q/2 >= -cutoff^2/2


@functools.lru_cache(maxsize=64)
def _power_table(n: int, device, dtype) -> Tensor:
    """``(n, 3)`` powers 0, 1, 2 of the centred offsets ``k - (n - 1) / 2``."""
    k = torch.arange(n, device=device, dtype=dtype) - 0.5 * (n - 1)
    return torch.stack([torch.ones_like(k), k, k * k], -1)


def _raw_moments(f: Tensor, s: tuple) -> Tensor:
    """``(P, 3, 3, 3)`` moments ``sum f k_w^c k_h^b k_d^a`` (index order ``[c, b, a]``) over centred offsets.

    Three matrix products over all Gaussians of the chunk at once, one per axis (``w``, then ``h``, then ``d``).
    """
    p = f.shape[0]
    out = f @ _power_table(s[2], f.device, f.dtype)  # (P, Sd, Sh, 3)
    out = out.transpose(2, 3).reshape(-1, s[1]) @ _power_table(s[1], f.device, f.dtype)  # (P * Sd * 3, 3)
    out = out.view(p, s[0], 9).transpose(1, 2).reshape(-1, s[0]) @ _power_table(s[0], f.device, f.dtype)
    return out.view(p, 3, 3, 3)


def _shift_moments(raw: Tensor, delta: Tensor) -> Tensor:
    """Moments over ``u = delta + k`` from those over ``k``: ``[1, u, u^2] = [1, k + d, k^2 + 2 d k + d^2]``.

    Args:
        raw: ``(N, 3, 3, 3)`` from :func:`_raw_moments` (index order ``[w, h, d]``).
        delta: ``(N, 3)`` ``u`` at each stencil's centre offset, per axis ``(d, h, w)``.

    Returns:
        ``(N, 3, 3, 3)`` moments ``sum f u_w^c u_h^b u_d^a``, same index order ``[c, b, a]``.
    """
    out = raw
    for axis, dim in ((2, 1), (1, 2), (0, 3)):  # (delta column, moment dim); r0, r1, r2 are (N, 3, 3)
        dl = delta[:, axis, None, None]
        r0, r1, r2 = out.unbind(dim)
        out = torch.stack([r0, r1 + dl * r0, r2 + dl * (2.0 * r1 + dl * r0)], dim)
    return out


class _RenderStencil(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, conics, intensities, gids, origin, width, shape, cutoff):  # type: ignore[override]
        b, k = means.shape[:2]
        plan = _Plan(gids, origin, width, shape, b, k)
        plan.u0 = plan.origin.to(means.dtype) - means.detach().reshape(-1, 3)[plan.gids]  # (N, 3) local first voxel
        coef = _coefficients(conics.reshape(-1, 6)[plan.gids])
        dp, hp, wp = plan.padded
        out = torch.zeros(b * dp * hp * wp, device=means.device, dtype=means.dtype)
        inten = intensities.reshape(-1)[plan.gids]
        kept, budget = {}, SAVED_ELEMS if any(ctx.needs_input_grad[:3]) else 0
        for i, (sl, s) in enumerate(plan.chunks):
            w = _weights(coef[sl], plan.u0[sl], s, cutoff)
            out.scatter_add_(0, plan.flat_index(sl, s), (w * inten[sl, None, None, None]).reshape(-1))
            if w.numel() <= budget:  # keep the weights for the backward pass while the budget lasts
                kept[i] = w
                budget -= w.numel()
        ctx.save_for_backward(means, conics, intensities, coef)
        ctx.plan, ctx.cutoff, ctx.kept = plan, cutoff, kept
        d, h, w_ = plan.shape
        return out.view(b, dp, hp, wp)[:, :d, :h, :w_].contiguous()

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        means, conics, intensities, coef = ctx.saved_tensors
        plan, cutoff = ctx.plan, ctx.cutoff
        b = means.shape[0]
        dp, hp, wp = plan.padded
        d, h, w_ = plan.shape
        g_pad = torch.zeros(b, dp, hp, wp, device=means.device, dtype=means.dtype)
        g_pad[:, :d, :h, :w_] = grad_out
        g_flat = g_pad.reshape(-1)
        raw = torch.empty(plan.gids.numel(), 3, 3, 3, device=means.device, dtype=means.dtype)
        for i, (sl, s) in enumerate(plan.chunks):
            w = ctx.kept[i] if i in ctx.kept else _weights(coef[sl], plan.u0[sl], s, cutoff)
            f = g_flat.index_select(0, plan.flat_index(sl, s)).view_as(w).mul_(w)
            raw[sl] = _raw_moments(f, s)
        mom = _shift_moments(raw, plan.u0 + plan.centre)
        grads = _gradients(mom, means, conics, intensities, plan.gids, ctx.needs_input_grad)
        return (*grads, None, None, None, None, None)


def _gradients(mom: Tensor, means: Tensor, conics: Tensor, intensities: Tensor, gids: Tensor, needs) -> tuple:
    """Gradients of means, conics and intensities from the per-Gaussian moments of ``G w``."""
    b, k = means.shape[:2]
    n0 = mom[:, 0, 0, 0]  # index order [w, h, d] powers
    m1 = torch.stack([mom[:, 0, 0, 1], mom[:, 0, 1, 0], mom[:, 1, 0, 0]], -1)
    m2 = torch.stack(
        [mom[:, 0, 0, 2], mom[:, 0, 2, 0], mom[:, 2, 0, 0],
         2 * mom[:, 0, 1, 1], 2 * mom[:, 1, 0, 1], 2 * mom[:, 1, 1, 0]],
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
    means: Tensor,
    conics: Tensor,
    intensities: Tensor,
    gids: Tensor,
    origin: Tensor,
    width: Tensor,
    shape: Sequence[int],
    cutoff: float,
) -> Tensor:
    """Render the Gaussians ``gids`` (flat ``b * K + k``) of pre-processed inputs on per-Gaussian stencils.

    Args:
        means: ``(B, K, 3)`` voxel-frame centres.
        conics: ``(B, K, 6)`` precision entries ``(Pdd, Phh, Pww, Pdh, Pdw, Phw)``.
        intensities: ``(B, K)``.
        gids: ``(N,)`` int64 flat indices of the Gaussians to render (the others contribute nothing and get zero
            gradients).
        origin: ``(N, 3)`` int64 first voxel of each one's stencil, inside the volume.
        width: ``(N, 3)`` int64 stencil widths, 1 to ``MAX_WIDTH``; ``origin .. origin + width - 1`` must hold
            every voxel of the volume inside the Gaussian's cutoff ellipsoid (e.g. its clipped cutoff box).
        shape: ``(D, H, W)``.
        cutoff: Mahalanobis cutoff.

    Returns:
        ``(B, D, H, W)`` volume in the dtype of ``means``; differentiable w.r.t. means, conics, intensities.
    """
    shape = tuple(int(s) for s in shape)
    return _RenderStencil.apply(means, conics, intensities, gids, origin, width, shape, float(cutoff))
