"""Plain dense float64 reference of :func:`medgmae.render.render_volume` (the oracle of the renderer's tests).

Every Gaussian is evaluated at every voxel, in float64, straight from the formula: rotations by quaternion
conjugation of the basis vectors (independent of :func:`medgmae.gaussians.quaternion_to_rotation_matrix`), the
covariance ``R diag(s^2) R^T`` inverted with ``torch.linalg.inv``, no tiles, no boxes, no stencils. It holds a
``(B, K, D*H*W)`` tensor, so it is meant for small problems only.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

__all__ = ["render_volume_reference", "rotation_by_conjugation"]


def _hamilton(p: Tensor, q: Tensor) -> Tensor:
    pw, px, py, pz = p.unbind(-1)
    qw, qx, qy, qz = q.unbind(-1)
    return torch.stack(
        [
            pw * qw - px * qx - py * qy - pz * qz,
            pw * qx + px * qw + py * qz - pz * qy,
            pw * qy - px * qz + py * qw + pz * qx,
            pw * qz + px * qy - py * qx + pz * qw,
        ],
        -1,
    )


def rotation_by_conjugation(quats: Tensor) -> Tensor:
    """``(..., 3, 3)`` rotation whose column ``j`` is ``q e_j q*`` for the normalised quaternion ``q`` (w, x, y, z)."""
    q = quats / quats.norm(dim=-1, keepdim=True)
    conj = q * torch.tensor([1.0, -1.0, -1.0, -1.0], dtype=q.dtype, device=q.device)
    cols = []
    for j in range(3):
        e = torch.zeros(4, dtype=q.dtype, device=q.device)
        e[1 + j] = 1.0
        cols.append(_hamilton(_hamilton(q, e.expand_as(q)), conj)[..., 1:])
    return torch.stack(cols, -1)


def render_volume_reference(
    means: Tensor,
    scales: Tensor,
    quats: Tensor,
    intensities: Tensor,
    shape: Sequence[int],
    cutoff: float = 3.0,
    margin: float = 1e-3,
) -> tuple[Tensor, Tensor]:
    """Float64 ``V(x) = sum_i I_i exp(-q_i(x)/2) [q_i(x) <= cutoff^2]`` over every voxel and Gaussian.

    Differentiable (autograd through plain float64 tensor operations; the cutoff mask is piecewise constant).

    Args:
        means: ``(B, K, 3)`` voxel-index positions.
        scales: ``(B, K, 3)`` standard deviations in voxels.
        quats: ``(B, K, 4)`` rotations ``(w, x, y, z)``, normalised inside.
        intensities: ``(B, K)``.
        shape: ``(D, H, W)``.
        cutoff: Mahalanobis cutoff.
        margin: relative band around ``cutoff^2`` for ``ambiguity``.

    Returns:
        ``(volume, ambiguity)``, both ``(B, D, H, W)`` float64: ``ambiguity`` (no gradient) sums the ``|terms|``
        whose ``q`` lies within a relative ``margin`` of ``cutoff^2``, where float32 backends may legitimately
        round the cutoff test either way.
    """
    means, scales, quats, intensities = (t.double() for t in (means, scales, quats, intensities))
    rot = rotation_by_conjugation(quats)
    cov = rot @ torch.diag_embed(scales.square()) @ rot.transpose(-1, -2)
    prec = torch.linalg.inv(cov)  # (B, K, 3, 3)
    axes = (torch.arange(int(n), dtype=torch.float64, device=means.device) for n in shape)
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)
    d = grid.reshape(1, 1, -1, 3) - means.unsqueeze(2)  # (B, K, V, 3)
    q = torch.einsum("bkvi,bkij,bkvj->bkv", d, prec, d)
    term = intensities.unsqueeze(-1) * torch.exp(-0.5 * q)
    c2 = cutoff * cutoff
    vol = (term * (q <= c2)).sum(1)
    with torch.no_grad():
        amb = (term.abs() * ((q - c2).abs() <= margin * c2)).sum(1)
    b = means.shape[0]
    return vol.reshape(b, *shape), amb.reshape(b, *shape)
