"""Pure-PyTorch ray-marching projector (CPU or GPU).

Each detector pixel's ray is sampled at ``step`` mm intervals over the volume's bounding sphere; samples are
trilinearly interpolated from the volume with ``grid_sample`` (zero outside) and summed times ``step``. The
operator is therefore the exact line integral of the trilinear interpolant up to the midpoint rule, and because
it is a linear map built from ``grid_sample`` its adjoint is obtained exactly by autograd of the forward
(no separately written, mismatched backprojector). Views are processed in chunks to bound memory.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from recon.geometry import CTGeometry
from recon.projectors.base import Projector

__all__ = ["TorchProjector"]

#: Upper bound on ray samples (rays x steps) evaluated at once.
_CHUNK_SAMPLES = 1 << 22


class TorchProjector(Projector):
    """Ray-marching forward projector ``A`` and its exact adjoint for a :class:`CTGeometry`.

    Args:
        geometry: the scan.
        step: sampling interval along rays as a fraction of the smallest voxel size (0.5 by default).
    """

    name = "torch"

    def __init__(self, geometry: CTGeometry, step: float = 0.5):
        if not (step > 0 and math.isfinite(step)):
            raise ValueError(f"step must be a positive fraction of a voxel, got {step}")
        super().__init__(geometry)
        self.step_mm = float(step) * min(geometry.voxel_size)
        ext = geometry.extent
        self.radius = 0.5 * math.sqrt(sum(e * e for e in ext))
        self.num_steps = int(math.ceil(2 * self.radius / self.step_mm))
        self._vectors: Tensor | None = None  # (views, 12) float64, from the geometry when first needed

    # ------------------------------------------------------------------ rays
    def _rays_of(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """Start points (the ray's closest approach to the isocentre minus the bounding radius) and unit directions,
        ``(N, 3)`` float64 each, in mm ``(x, y, z)`` about the isocentre, of the rays with flat indices ``index``
        into ``(views, rows, cols)`` (computed per chunk rather than tabulated: a clinical scan's table would take
        GBs)."""
        g = self.geometry
        if self._vectors is None:
            self._vectors = torch.as_tensor(g.vectors(), dtype=torch.float64)
        rows, cols = g.det_shape
        index = index.to("cpu", torch.long)
        vec = self._vectors[index // (rows * cols)]
        pixel = index % (rows * cols)
        rr = (pixel // cols).to(torch.float64).unsqueeze(1) - (rows - 1) / 2
        cc = (pixel % cols).to(torch.float64).unsqueeze(1) - (cols - 1) / 2
        pix = vec[:, 3:6] + cc * vec[:, 6:9] + rr * vec[:, 9:12]
        d = vec[:, 0:3] if g.kind == "parallel" else pix - vec[:, 0:3]
        d = d / d.norm(dim=-1, keepdim=True)
        closest = pix - (pix * d).sum(-1, keepdim=True) * d
        return closest - self.radius * d, d

    def _rays(self, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Every ray's start point and unit direction, ``(views, rows*cols, 3)`` each (see :meth:`_rays_of`)."""
        g = self.geometry
        start, d = self._rays_of(torch.arange(g.num_views * g.det_shape[0] * g.det_shape[1]))
        shape = (g.num_views, g.det_shape[0] * g.det_shape[1], 3)
        return start.reshape(shape).to(device, dtype), d.reshape(shape).to(device, dtype)

    def _to_grid(self, pts: Tensor) -> Tensor:
        """mm ``(x, y, z)`` to grid_sample's ``[-1, 1]`` (align_corners=False: -1/+1 are the outer voxel edges)."""
        ext = self.geometry.extent  # (z, y, x)
        half = pts.new_tensor([ext[2] / 2, ext[1] / 2, ext[0] / 2])
        return pts / half

    # ------------------------------------------------------------------ operators
    def _ray_chunks(self, volume: Tensor, views: Tensor | None):
        """Yield ``(rays, integrals)`` per chunk of at most :data:`_CHUNK_SAMPLES` ray samples: ``rays`` the slice of
        the flattened ``(views * rows * cols)`` rays, ``integrals`` their ``(B, rays)`` sums (differentiable)."""
        g = self.geometry
        per_view = g.det_shape[0] * g.det_shape[1]
        nv = g.num_views if views is None else views.numel()
        ns = self.num_steps
        t = (torch.arange(ns, device=volume.device, dtype=volume.dtype) + 0.5) * self.step_mm
        inp = volume.unsqueeze(0)  # (1, B, D, H, W): the batch rides in the channel dim
        chunk = max(1, _CHUNK_SAMPLES // ns)
        views = None if views is None else views.cpu()
        for r0 in range(0, nv * per_view, chunk):
            rays = slice(r0, min(r0 + chunk, nv * per_view))
            index = torch.arange(rays.start, rays.stop)
            if views is not None:  # rays of the selected views -> rays of the scan
                index = views[index // per_view] * per_view + index % per_view
            start, d = (a.to(volume.device, volume.dtype) for a in self._rays_of(index))
            pts = start[:, None, :] + t.view(1, ns, 1) * d[:, None, :]
            grid = self._to_grid(pts).unsqueeze(0).unsqueeze(0)  # (1, 1, rays, ns, 3)
            samp = F.grid_sample(inp, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            yield rays, samp.sum(-1)[0, :, 0] * self.step_mm

    def forward_plain(self, volume: Tensor, views: Tensor | None = None) -> Tensor:
        """``A x`` built from differentiable ops (autograd gives the exact adjoint).

        Args:
            volume: ``(B, D, H, W)``.
            views: optional 1D long tensor selecting a subset of the views.

        Returns:
            ``(B, V, rows, cols)`` line integrals (volume units times mm).
        """
        g = self.geometry
        if volume.dim() != 4 or tuple(volume.shape[1:]) != g.volume_shape:
            raise ValueError(f"volume must be (B, *{g.volume_shape}), got {tuple(volume.shape)}")
        nv = g.num_views if views is None else views.numel()
        out = torch.cat([s for _, s in self._ray_chunks(volume, views)], -1)
        return out.reshape(volume.shape[0], nv, *g.det_shape)

    def adjoint_plain(self, proj: Tensor, views: Tensor | None = None) -> Tensor:
        """``A^T y``: the vector-Jacobian product of :meth:`forward_plain` (exact adjoint), one chunk of rays at a
        time, so memory is one chunk's samples (autograd of the whole forward would keep every chunk's sampling
        grid, about 16 bytes per ray sample: tens of GB for a clinical cone-beam scan).

        Args:
            proj: ``(B, V, rows, cols)`` (``V`` the selected views when ``views`` is given).
            views: optional subset of views.

        Returns:
            ``(B, D, H, W)``.
        """
        g = self.geometry
        nv = g.num_views if views is None else views.numel()
        if proj.dim() != 4 or tuple(proj.shape[1:]) != (nv, *g.det_shape):
            raise ValueError(f"projections must be (B, {nv}, {g.det_shape[0]}, {g.det_shape[1]}), got {tuple(proj.shape)}")
        y = proj.detach().reshape(proj.shape[0], -1)
        with torch.enable_grad():
            x = torch.zeros((proj.shape[0], *g.volume_shape), device=proj.device, dtype=proj.dtype, requires_grad=True)
            for rays, s in self._ray_chunks(x, views):
                s.backward(y[:, rays])  # accumulates into x.grad
        return x.grad

    def _forward_raw(self, volume: Tensor, views: Tensor | None) -> Tensor:
        return self.forward_plain(volume, views)

    def _adjoint_raw(self, proj: Tensor, views: Tensor | None) -> Tensor:
        return self.adjoint_plain(proj, views)
