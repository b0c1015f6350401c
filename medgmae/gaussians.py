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

import numbers
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from medgmae.engine.devices import usable_device
from medgmae.render import render_volume
from medgmae.rotations import covariance_matrices, factorise_covariance, precision_matrices, quaternion_to_rotation_matrix
from medgmae.whole_numbers import whole_sizes

__all__ = [
    "Gaussians3D",
    "activate_gaussian_heads",
    "SCALE_BIAS_INIT",
    "INTENSITY_BIAS_INIT",
]

#: Scale-head bias from MedGMAE's design table: sigmoid(-1.386) = 0.2, i.e. 0.2 of the cap at initialisation.
SCALE_BIAS_INIT = -1.386
#: Intensity-head bias from MedGMAE's design table: sigmoid(-0.405) = 0.4.
INTENSITY_BIAS_INIT = -0.405


def activate_gaussian_heads(
    raw_means: Tensor, raw_scales: Tensor, raw_quats: Tensor, raw_intensities: Tensor, scale_cap: float = 1.0
) -> "Gaussians3D":
    """MedGMAE's head activations: sigmoid centres, ``scale_cap * sigmoid`` scales, L2-normalised quaternions (a
    raw quaternion of four zeros stays zero, which the renderer refuses: ``quats must be non-zero``), sigmoid
    intensities. The result lives in the normalised frame.

    Args:
        raw_means: ``(B, K, 3)`` centre-head outputs.
        raw_scales: ``(B, K, 3)`` scale-head outputs.
        raw_quats: ``(B, K, 4)`` rotation-head outputs.
        raw_intensities: ``(B, K)`` or ``(B, K, 1)`` intensity-head outputs.
        scale_cap: upper bound of the scales, as a fraction of the volume's extent (positive).

    Returns:
        :class:`Gaussians3D` in normalised coordinates.

    Raises:
        ValueError: ``scale_cap`` is not a positive finite number.
    """
    if not 0 < float(scale_cap) < float("inf"):
        raise ValueError(f"scale_cap must be a positive finite number, got {scale_cap!r}")
    if raw_intensities.dim() == 3:
        raw_intensities = raw_intensities.squeeze(-1)
    return Gaussians3D(
        means=torch.sigmoid(raw_means),
        scales=scale_cap * torch.sigmoid(raw_scales),
        quats=F.normalize(raw_quats, dim=-1, eps=1e-8),
        intensities=torch.sigmoid(raw_intensities),
    )


def _single_index(index) -> int | None:
    """``index`` as an int where it is one integer (a Python int, a NumPy integer, a 0-d integer tensor or NumPy
    array: torch and NumPy would index with such a tensor or array as with the int, dropping the batch dimension);
    ``None`` for anything else (slices, lists, masks, tensors of indices, bools: a bool is no position)."""
    if isinstance(index, (bool, np.bool_)):
        return None
    if isinstance(index, Tensor):
        plain = index.dim() == 0 and not index.dtype.is_floating_point and not index.dtype.is_complex
        return int(index.item()) if plain and index.dtype != torch.bool else None
    if isinstance(index, np.ndarray):
        return int(index) if index.ndim == 0 and np.issubdtype(index.dtype, np.integer) else None
    return int(index) if isinstance(index, numbers.Integral) else None


def _shape_tensor(shape: Sequence[int], like: Tensor) -> Tensor:
    """``shape`` as a float tensor like ``like``; ``ValueError`` unless it is three positive integers, checked as
    :func:`medgmae.render.render_volume` checks its shape (:func:`~medgmae.whole_numbers.whole_sizes`: ``8.5`` is refused,
    not truncated)."""
    sizes = whole_sizes(shape, "shape must be three positive whole sizes (D, H, W)")
    if len(sizes) != 3 or any(s <= 0 for s in sizes):
        raise ValueError(f"shape must be three positive whole sizes (D, H, W), got {shape!r}")
    return torch.as_tensor([float(s) for s in sizes], dtype=like.dtype, device=like.device)


@dataclass
class Gaussians3D:
    """A batch of 3D Gaussians; NumPy arrays are taken as CPU tensors (dtype kept).

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
        names = ("means", "scales", "quats", "intensities")
        for name in names:
            t = getattr(self, name)
            if isinstance(t, np.ndarray):
                t = torch.as_tensor(t)
                setattr(self, name, t)
            if not isinstance(t, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor or NumPy array, got {type(t).__name__}")
            if not t.is_floating_point():
                raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
        devices = {str(getattr(self, name).device) for name in names}
        if len(devices) != 1:
            raise ValueError(f"means, scales, quats and intensities must be on one device, got {sorted(devices)}")
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
        """The batch moved or cast as :meth:`torch.Tensor.to` moves each tensor, the device checked first
        (:func:`~medgmae.engine.devices.usable_device`: CUDA on a machine without it is a ``ValueError`` saying so;
        ``"auto"`` is taken)."""
        if "device" in kwargs:
            kwargs["device"] = usable_device(kwargs["device"])
        elif args and isinstance(args[0], (str, int, torch.device)):
            args = (usable_device(args[0]), *args[1:])
        return Gaussians3D(*(t.to(*args, **kwargs) for t in self.tensors()))

    def detach(self) -> "Gaussians3D":
        return Gaussians3D(*(t.detach() for t in self.tensors()))

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.means, self.scales, self.quats, self.intensities

    def __getitem__(self, index) -> "Gaussians3D":
        """Select batch entries (``g[0:1]``) keeping the batch dimension for integer indices too (a Python int, a
        NumPy integer, or a 0-d integer tensor or array such as ``torch.tensor(0)``; ``-1`` the last entry; one past
        either end is an ``IndexError``, as a list's)."""
        i = _single_index(index)
        if i is not None:
            b = self.batch_size
            if not -b <= i < b:
                raise IndexError(f"index {i} is out of range for a batch of {b}")
            index = slice(i % b, i % b + 1)
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
        """Inverse of :meth:`as_tensor` for ``(B, K, 11)`` tensors (or NumPy arrays)."""
        if isinstance(params, np.ndarray):
            params = torch.as_tensor(params)
        if not isinstance(params, Tensor):
            raise TypeError(f"params must be a torch.Tensor or NumPy array, got {type(params).__name__}")
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
        scales, quats = factorise_covariance(cov)
        return Gaussians3D(means, scales, quats, self.intensities)

    def to_normalized(self, shape: Sequence[int]) -> "Gaussians3D":
        """Inverse of :meth:`to_voxel`."""
        n = _shape_tensor(shape, self.means)
        means = (self.means + 0.5) / n
        if bool((n == n[0]).all()):
            return Gaussians3D(means, self.scales / n[0], self.quats, self.intensities)
        cov = self.covariances() / (n.view(3, 1) * n.view(1, 3))
        scales, quats = factorise_covariance(cov)
        return Gaussians3D(means, scales, quats, self.intensities)

    def transformed(self, linear: Tensor, offset: Tensor) -> "Gaussians3D":
        """The Gaussians under the affine map ``x -> linear @ x + offset``.

        Centres map exactly; covariances become ``linear Sigma linear^T``, re-factorised into scales and a rotation
        (computed in float64, returned in the Gaussians' dtype). Intensities (peak values) are unchanged.

        Args:
            linear: ``(3, 3)`` matrix, e.g. an affine's upper-left block (any finite non-singular matrix).
            offset: ``(3,)`` translation.

        Returns:
            The mapped :class:`Gaussians3D`.

        Raises:
            ValueError: wrong shapes, or a ``linear`` that is singular (it would flatten the Gaussians to zero
                scales) or not finite.
        """
        lin = torch.as_tensor(linear, dtype=torch.float64, device=self.means.device)
        off = torch.as_tensor(offset, dtype=torch.float64, device=self.means.device)
        if lin.shape != (3, 3) or off.shape != (3,):
            raise ValueError(f"linear must be (3, 3) and offset (3,), got {tuple(lin.shape)} and {tuple(off.shape)}")
        host = lin.detach().cpu()  # nine numbers, checked once per call
        det, size = float(torch.linalg.det(host)), float(host.abs().max())
        if not (abs(det) > 1e-12 * size**3 and size < float("inf")):
            raise ValueError(f"linear must be a finite non-singular (3, 3) matrix, got determinant {det:g}: "
                             f"{host.tolist()}")
        means = self.means.double() @ lin.T + off
        cov = lin @ covariance_matrices(self.scales.double(), self.quats.double()) @ lin.T
        scales, quats = factorise_covariance(0.5 * (cov + cov.transpose(-1, -2)))
        dt = self.means.dtype
        return Gaussians3D(means.to(dt), scales.to(dt), quats.to(dt), self.intensities)

    def render(self, shape: Sequence[int], cutoff: float = 3.0, backend: str = "auto") -> Tensor:
        """Render Gaussians given in the **voxel** frame to a ``(B, D, H, W)`` volume."""
        return render_volume(*self.tensors(), shape=shape, cutoff=cutoff, backend=backend)
