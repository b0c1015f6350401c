"""The half-resolution coarse stage of the reconstruction (3DGR-CT's ``low_reso_stage``).

3DGR-CT (train_ct_recon.py) renders its Gaussians on the 8 strided sub-grids ``grid[:, i::2, j::2, k::2]`` in
turn during the first ``low_reso_stage`` iterations, projects them with a half-resolution projector and compares
them with projections of the matching sub-grid of the *ground-truth* image (``image[:, i::2, j::2, k::2]``),
which a real scan does not have. Here the Gaussians are rendered on one half-resolution grid with the same centre
and extent (voxels twice the size, ``ceil(n / 2)`` per axis), projected on a detector with ``ceil(n / 2)`` pixels
of twice the pitch, and compared with the *measured* projections downsampled 2x2 onto that detector.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from medgmae.render import render_volume
from recon.geometry import CTGeometry

__all__ = ["HalfResolutionStage", "halving_matrix", "half_geometry"]


def halving_matrix(n: int, device=None) -> Tensor:
    """``(ceil(n/2), n)`` operator taking ``n`` detector pixels to ``ceil(n/2)`` pixels of twice the pitch on the
    same centre: each output is the mean of the linear interpolant over its two half-pixels (exactly the mean of
    two neighbouring pixels when ``n`` is even)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    m = (n + 1) // 2
    out = torch.zeros(m, n, device=device)
    for r in range(m):
        centre = 2.0 * (r - (m - 1) / 2) + (n - 1) / 2
        for pos in (centre - 0.5, centre + 0.5):
            pos = min(max(pos, 0.0), n - 1.0)
            lo = int(math.floor(pos))
            hi, w = min(lo + 1, n - 1), pos - lo
            out[r, lo] += 0.5 * (1 - w)
            out[r, hi] += 0.5 * w
    return out


def half_geometry(g: CTGeometry) -> CTGeometry:
    """``g`` at half resolution: ``ceil(n / 2)`` voxels and detector pixels of twice the size, same centre (and the
    same detector offset)."""
    return CTGeometry(
        g.kind, tuple((n + 1) // 2 for n in g.volume_shape), tuple(2 * v for v in g.voxel_size),
        tuple((n + 1) // 2 for n in g.det_shape), tuple(2 * d for d in g.det_spacing), g.angles,
        g.source_origin, g.source_detector, det_offset=g.det_offset,
    )  # fmt: skip


class HalfResolutionStage:
    """Half-resolution geometry, projector and downsampled measured projections.

    Args:
        geometry: the full-resolution scan.
        backend: projector backend name (``"torch"``, ``"astra"`` or ``"matrix"``), as the full-resolution
            projector.
        projections: ``(V, rows, cols)`` measured projections.
    """

    def __init__(self, geometry: CTGeometry, backend: str, projections: Tensor):
        from recon.projectors import make_projector

        self.full = geometry
        self.geometry = half_geometry(geometry)
        self.projector = make_projector(self.geometry, backend, projections.device)
        mr, mc = (halving_matrix(n, projections.device).to(projections.dtype) for n in geometry.det_shape)
        self.proj = torch.einsum("ri,vij,cj->vrc", mr, projections, mc)

    def render(self, means: Tensor, scales: Tensor, quats: Tensor, intensities: Tensor, min_scale: float, cutoff: float) -> Tensor:
        """Render ``(K, 3)`` full-resolution voxel-frame Gaussians on the half-resolution grid ``(D', H', W')``."""
        full = torch.tensor(self.full.volume_shape, dtype=means.dtype, device=means.device)
        small = torch.tensor(self.geometry.volume_shape, dtype=means.dtype, device=means.device)
        m = (means - (full - 1) / 2) / 2 + (small - 1) / 2
        s = (scales / 2).clamp_min(min_scale / 2)
        return render_volume(m[None], s[None], quats[None], intensities[None], self.geometry.volume_shape, cutoff)[0]
