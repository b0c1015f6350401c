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
_CHUNK_SAMPLES = 1 << 24


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
        self._tables: dict = {}

    # ------------------------------------------------------------------ rays
    def _rays(self, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Ray start points (closest approach to the origin minus the radius) and unit directions,
        ``(views, rows*cols, 3)`` each, in grid_sample's normalised ``(x, y, z)`` coordinates per mm."""
        key = (device, dtype)
        if key not in self._tables:
            g = self.geometry
            vec = torch.as_tensor(g.vectors(), dtype=torch.float64)
            rows, cols = g.det_shape
            r = torch.arange(rows, dtype=torch.float64) - (rows - 1) / 2
            c = torch.arange(cols, dtype=torch.float64) - (cols - 1) / 2
            rr, cc = torch.meshgrid(r, c, indexing="ij")
            rr, cc = rr.reshape(1, -1, 1), cc.reshape(1, -1, 1)
            pix = vec[:, None, 3:6] + cc * vec[:, None, 6:9] + rr * vec[:, None, 9:12]  # (V, P, 3)
            if g.kind == "parallel":
                d = vec[:, None, 0:3].expand_as(pix)
            else:
                d = pix - vec[:, None, 0:3]
            d = d / d.norm(dim=-1, keepdim=True)
            # closest point of each ray to the origin, then back off by the bounding radius
            closest = pix - (pix * d).sum(-1, keepdim=True) * d
            start = closest - self.radius * d
            self._tables[key] = (start.to(device, dtype), d.to(device, dtype))
        return self._tables[key]

    def _to_grid(self, pts: Tensor) -> Tensor:
        """mm ``(x, y, z)`` to grid_sample's ``[-1, 1]`` (align_corners=False: -1/+1 are the outer voxel edges)."""
        ext = self.geometry.extent  # (z, y, x)
        half = pts.new_tensor([ext[2] / 2, ext[1] / 2, ext[0] / 2])
        return pts / half

    # ------------------------------------------------------------------ operators
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
        b = volume.shape[0]
        start, d = self._rays(volume.device, volume.dtype)
        if views is not None:
            start, d = start[views], d[views]
        nv, npix = start.shape[:2]
        ns = self.num_steps
        t = (torch.arange(ns, device=volume.device, dtype=volume.dtype) + 0.5) * self.step_mm
        inp = volume.unsqueeze(0)  # (1, B, D, H, W): the batch rides in the channel dim
        start, d = start.reshape(-1, 3), d.reshape(-1, 3)
        chunk = max(1, _CHUNK_SAMPLES // ns)
        outs = []
        for r0 in range(0, start.shape[0], chunk):
            pts = start[r0 : r0 + chunk, None, :] + t.view(1, ns, 1) * d[r0 : r0 + chunk, None, :]
            grid = self._to_grid(pts).unsqueeze(0).unsqueeze(0)  # (1, 1, rays, ns, 3)
            samp = F.grid_sample(inp, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            outs.append(samp.sum(-1)[0, :, 0] * self.step_mm)  # (B, rays)
        out = torch.cat(outs, -1)
        return out.reshape(b, nv, *g.det_shape)

    def adjoint_plain(self, proj: Tensor, views: Tensor | None = None) -> Tensor:
        """``A^T y`` as the vector-Jacobian product of :meth:`forward_plain` (exact adjoint).

        Args:
            proj: ``(B, V, rows, cols)`` (``V`` the selected views when ``views`` is given).
            views: optional subset of views.

        Returns:
            ``(B, D, H, W)``.
        """
        g = self.geometry
        b = proj.shape[0]
        with torch.enable_grad():
            x = torch.zeros((b, *g.volume_shape), device=proj.device, dtype=proj.dtype, requires_grad=True)
            y = self.forward_plain(x, views)
            if tuple(y.shape) != tuple(proj.shape):
                raise ValueError(f"projections must be {tuple(y.shape)}, got {tuple(proj.shape)}")
            (grad,) = torch.autograd.grad(y, x, grad_outputs=proj.detach())
        return grad

    def _forward_raw(self, volume: Tensor, views: Tensor | None) -> Tensor:
        return self.forward_plain(volume, views)

    def _adjoint_raw(self, proj: Tensor, views: Tensor | None) -> Tensor:
        return self.adjoint_plain(proj, views)
