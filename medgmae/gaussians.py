"""Batches of 3D Gaussians: the parameterisation shared by MedGMAE, its renderer and the reconstruction.

A Gaussian is 11 numbers: centre (3), scale (3, standard deviations along its own axes), rotation quaternion
(4, ``(w, x, y, z)``) and intensity (1). Batch-first tensors throughout: ``(B, K, ...)``.

Two coordinate frames are used:

* **normalised**: ``[0, 1]^3`` over the volume's extent, as predicted by MedGMAE's sigmoid heads. 0 is the outer
  edge of the first voxel and 1 the outer edge of the last one, so voxel ``j`` of ``N`` has its centre at
  ``(j + 0.5) / N``. Scales are fractions of the extent along each axis.
* **voxel**: voxel-index coordinates along the volume's three spatial dims (voxel centre ``j`` is at ``j``), the
  frame :func:`medgmae.render.render_volume` takes. Scales are in voxels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Gaussians3D",
    "quaternion_to_rotation_matrix",
    "covariance_matrices",
    "precision_matrices",
    "activate_gaussian_heads",
    "SCALE_BIAS_INIT",
    "INTENSITY_BIAS_INIT",
]

#: Scale-head bias from MedGMAE's design table: sigmoid(-1.386) = 0.2, i.e. 0.2 of the cap at initialisation.
SCALE_BIAS_INIT = -1.386
#: Intensity-head bias from MedGMAE's design table: sigmoid(-0.405) = 0.4.
INTENSITY_BIAS_INIT = -0.405


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


def activate_gaussian_heads(
    raw_means: Tensor, raw_scales: Tensor, raw_quats: Tensor, raw_intensities: Tensor, scale_cap: float = 1.0
) -> "Gaussians3D":
    """MedGMAE's head activations: sigmoid centres, ``scale_cap * sigmoid`` scales, L2-normalised quaternions,
    sigmoid intensities. The result lives in the normalised frame.

    Args:
        raw_means: ``(B, K, 3)`` centre-head outputs.
        raw_scales: ``(B, K, 3)`` scale-head outputs.
        raw_quats: ``(B, K, 4)`` rotation-head outputs.
        raw_intensities: ``(B, K)`` or ``(B, K, 1)`` intensity-head outputs.
        scale_cap: upper bound of the scales, as a fraction of the volume's extent.

    Returns:
        :class:`Gaussians3D` in normalised coordinates.
    """
    if raw_intensities.dim() == 3:
        raw_intensities = raw_intensities.squeeze(-1)
    return Gaussians3D(
        means=torch.sigmoid(raw_means),
        scales=scale_cap * torch.sigmoid(raw_scales),
        quats=F.normalize(raw_quats, dim=-1, eps=1e-8),
        intensities=torch.sigmoid(raw_intensities),
    )


def _shape_tensor(shape: Sequence[int], like: Tensor) -> Tensor:
    if len(shape) != 3 or any(int(s) <= 0 for s in shape):
        raise ValueError(f"shape must be three positive sizes (D, H, W), got {tuple(shape)}")
    return torch.as_tensor([float(s) for s in shape], dtype=like.dtype, device=like.device)


@dataclass
class Gaussians3D:
    """A batch of 3D Gaussians.

    Attributes:
        means: ``(B, K, 3)`` centres.
        scales: ``(B, K, 3)`` positive standard deviations along each Gaussian's own axes.
        quats: ``(B, K, 4)`` rotations as ``(w, x, y, z)``.
        intensities: ``(B, K)`` intensities.
    """

    means: Tensor
    scales: Tensor
    quats: Tensor
    intensities: Tensor

    def __post_init__(self) -> None:
        if self.means.dim() != 3 or self.means.shape[-1] != 3:
            raise ValueError(f"means must be (B, K, 3), got {tuple(self.means.shape)}")
        b, k = self.means.shape[:2]
        for name, t, tail in (("scales", self.scales, (3,)), ("quats", self.quats, (4,)), ("intensities", self.intensities, ())):
            if tuple(t.shape) != (b, k, *tail):
                raise ValueError(f"{name} must be {(b, k, *tail)} to match means, got {tuple(t.shape)}")

    # ------------------------------------------------------------------ basics
    @property
    def batch_size(self) -> int:
        return self.means.shape[0]

    @property
    def num_gaussians(self) -> int:
        return self.means.shape[1]

    def to(self, *args, **kwargs) -> "Gaussians3D":
        return Gaussians3D(*(t.to(*args, **kwargs) for t in self.tensors()))

    def detach(self) -> "Gaussians3D":
        return Gaussians3D(*(t.detach() for t in self.tensors()))

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.means, self.scales, self.quats, self.intensities

    def __getitem__(self, index) -> "Gaussians3D":
        """Select batch entries (``g[0:1]``) keeping the batch dimension for integer indices too."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return Gaussians3D(*(t[index] for t in self.tensors()))

    @staticmethod
    def cat(items: Sequence["Gaussians3D"], dim: int = 1) -> "Gaussians3D":
        """Concatenate along the Gaussian dimension (``dim=1``) or the batch dimension (``dim=0``)."""
        if not items:
            raise ValueError("cat needs at least one Gaussians3D")
        return Gaussians3D(*(torch.cat(ts, dim=dim) for ts in zip(*(g.tensors() for g in items))))

    def as_tensor(self) -> Tensor:
        """``(B, K, 11)``: centre 3, scale 3, quaternion 4, intensity 1."""
        return torch.cat([self.means, self.scales, self.quats, self.intensities.unsqueeze(-1)], dim=-1)

    @classmethod
    def from_tensor(cls, params: Tensor) -> "Gaussians3D":
        """Inverse of :meth:`as_tensor` for ``(B, K, 11)`` tensors."""
        if params.dim() != 3 or params.shape[-1] != 11:
            raise ValueError(f"params must be (B, K, 11), got {tuple(params.shape)}")
        return cls(params[..., 0:3], params[..., 3:6], params[..., 6:10], params[..., 10])

    # ------------------------------------------------------------------ geometry
    def rotation_matrices(self) -> Tensor:
        """``(B, K, 3, 3)``."""
        return quaternion_to_rotation_matrix(self.quats)

    def covariances(self) -> Tensor:
        """``(B, K, 3, 3)`` covariance matrices."""
        return covariance_matrices(self.scales, self.quats)

    def precisions(self) -> Tensor:
        """``(B, K, 3, 3)`` inverse covariance matrices."""
        return precision_matrices(self.scales, self.quats)

    # ------------------------------------------------------------------ frames
    def to_voxel(self, shape: Sequence[int]) -> "Gaussians3D":
        """Normalised ``[0, 1]^3`` frame to voxel-index frame of a volume of ``shape`` ``(D, H, W)``.

        For a cubic volume this scales the centres and scales; for a non-cubic one the covariance
        ``diag(N) Sigma diag(N)`` is re-factorised (eigendecomposition) into scales and a rotation, so the
        rendered Gaussian is exactly the stretched one.
        """
        n = _shape_tensor(shape, self.means)
        means = self.means * n - 0.5
        if bool((n == n[0]).all()):
            return Gaussians3D(means, self.scales * n[0], self.quats, self.intensities)
        cov = self.covariances() * n.view(3, 1) * n.view(1, 3)
        scales, quats = _factorise_covariance(cov)
        return Gaussians3D(means, scales, quats, self.intensities)

    def to_normalized(self, shape: Sequence[int]) -> "Gaussians3D":
        """Inverse of :meth:`to_voxel`."""
        n = _shape_tensor(shape, self.means)
        means = (self.means + 0.5) / n
        if bool((n == n[0]).all()):
            return Gaussians3D(means, self.scales / n[0], self.quats, self.intensities)
        cov = self.covariances() / (n.view(3, 1) * n.view(1, 3))
        scales, quats = _factorise_covariance(cov)
        return Gaussians3D(means, scales, quats, self.intensities)

    def transformed(self, linear: Tensor, offset: Tensor) -> "Gaussians3D":
        """The Gaussians under the affine map ``x -> linear @ x + offset``.

        Centres map exactly; covariances become ``linear Sigma linear^T``, re-factorised into scales and a rotation
        (computed in float64, returned in the Gaussians' dtype). Intensities (peak values) are unchanged.

        Args:
            linear: ``(3, 3)`` matrix, e.g. an affine's upper-left block (any non-singular matrix).
            offset: ``(3,)`` translation.

        Returns:
            The mapped :class:`Gaussians3D`.
        """
        lin = torch.as_tensor(linear, dtype=torch.float64, device=self.means.device)
        off = torch.as_tensor(offset, dtype=torch.float64, device=self.means.device)
        if lin.shape != (3, 3) or off.shape != (3,):
            raise ValueError(f"linear must be (3, 3) and offset (3,), got {tuple(lin.shape)} and {tuple(off.shape)}")
        means = self.means.double() @ lin.T + off
        cov = lin @ covariance_matrices(self.scales.double(), self.quats.double()) @ lin.T
        scales, quats = _factorise_covariance(0.5 * (cov + cov.transpose(-1, -2)))
        dt = self.means.dtype
        return Gaussians3D(means.to(dt), scales.to(dt), quats.to(dt), self.intensities)

    def render(self, shape: Sequence[int], cutoff: float = 3.0, backend: str = "auto") -> Tensor:
        """Render Gaussians given in the **voxel** frame to a ``(B, D, H, W)`` volume."""
        from medgmae.render import render_volume

        return render_volume(*self.tensors(), shape=shape, cutoff=cutoff, backend=backend)


def _factorise_covariance(cov: Tensor) -> tuple[Tensor, Tensor]:
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
