"""Rotations and covariances of 3D Gaussians: quaternion <-> rotation matrix, ``Sigma = R diag(s^2) R^T`` and its
inverse, and the factorisation of a covariance back into scales and a rotation.

Plain tensor maths with no other toolkit import, shared by :mod:`medgmae.gaussians` and :mod:`medgmae.render`
(which keeps the import graph acyclic: gaussians -> render -> rotations).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "quaternion_to_rotation_matrix",
    "rotation_matrix_to_quaternion",
    "covariance_matrices",
    "precision_matrices",
    "factorise_covariance",
]


def quaternion_to_rotation_matrix(quats: Tensor, eps: float = 1e-12) -> Tensor:
    """Rotation matrices from quaternions ``(w, x, y, z)``; normalises the quaternions first.

    Args:
        quats: ``(..., 4)`` quaternions, not necessarily unit length.
        eps: guard against division by zero for the normalisation.

    Returns:
        ``(..., 3, 3)`` rotation matrices ``R`` with ``R @ v`` rotating column vectors.
    """
    if quats.shape[-1] != 4:
        raise ValueError(f"quats must have a last dimension of 4 (w, x, y, z), got shape {tuple(quats.shape)}")
    q = quats / quats.norm(dim=-1, keepdim=True).clamp_min(eps)
    w, x, y, z = q.unbind(-1)
    rot = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    )  # fmt: skip
    return rot.reshape(*q.shape[:-1], 3, 3)


def covariance_matrices(scales: Tensor, quats: Tensor) -> Tensor:
    """``Sigma = R diag(s^2) R^T`` for ``scales`` ``(..., 3)`` and ``quats`` ``(..., 4)``; returns ``(..., 3, 3)``."""
    rot = quaternion_to_rotation_matrix(quats)
    return (rot * scales.unsqueeze(-2).square()) @ rot.transpose(-1, -2)


def precision_matrices(scales: Tensor, quats: Tensor) -> Tensor:
    """``Sigma^-1 = R diag(1 / s^2) R^T`` computed without a matrix inverse; returns ``(..., 3, 3)``."""
    rot = quaternion_to_rotation_matrix(quats)
    return (rot * scales.unsqueeze(-2).square().reciprocal()) @ rot.transpose(-1, -2)


def factorise_covariance(cov: Tensor) -> tuple[Tensor, Tensor]:
    """Scales and ``(w, x, y, z)`` quaternions of symmetric positive-definite ``cov`` ``(..., 3, 3)``."""
    evals, evecs = torch.linalg.eigh(cov)
    # make it a proper rotation (det = +1)
    det = torch.linalg.det(evecs)
    evecs = torch.cat([evecs[..., :2], evecs[..., 2:] * det.sign().unsqueeze(-1).unsqueeze(-1)], dim=-1)
    return evals.clamp_min(0).sqrt(), rotation_matrix_to_quaternion(evecs)


def rotation_matrix_to_quaternion(rot: Tensor) -> Tensor:
    """``(w, x, y, z)`` quaternions (``w >= 0``) of rotation matrices ``(..., 3, 3)`` (Shepperd's method)."""
    m = rot
    tr = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    cands = torch.stack(
        [
            torch.stack([1 + tr, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
            torch.stack([m[..., 2, 1] - m[..., 1, 2], 1 + 2 * m[..., 0, 0] - tr, m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], -1),
            torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], 1 + 2 * m[..., 1, 1] - tr, m[..., 1, 2] + m[..., 2, 1]], -1),
            torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1], 1 + 2 * m[..., 2, 2] - tr], -1),
        ],
        dim=-2,
    )  # (..., 4, 4): each row is 4*q_i*q scaled; pick the row with the largest diagonal term
    diag = torch.stack([1 + tr, 1 + 2 * m[..., 0, 0] - tr, 1 + 2 * m[..., 1, 1] - tr, 1 + 2 * m[..., 2, 2] - tr], -1)
    idx = diag.argmax(-1, keepdim=True).unsqueeze(-1).expand(*diag.shape[:-1], 1, 4)
    q = F.normalize(torch.gather(cands, -2, idx).squeeze(-2), dim=-1)
    return q * torch.where(q[..., :1] < 0, -1.0, 1.0).to(q)
