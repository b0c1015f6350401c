"""Pure-PyTorch ray-marching projector (CPU or GPU).

Each detector pixel's ray is sampled at intervals of ``step`` times the smallest voxel size (``step_mm``, in mm)
over the volume's bounding sphere; samples are trilinearly interpolated from the volume with ``grid_sample`` (zero
outside) and summed times ``step_mm``; a chunk of rays evaluates only the steps where one of its rays can be near
the volume (the others read zero). The operator is therefore the exact line integral of the trilinear
interpolant up to the midpoint rule, and because it is a linear map built from ``grid_sample`` its adjoint is
obtained exactly by autograd of the forward (no separately written, mismatched backprojector). Rays are processed
in chunks, forward and adjoint alike, so memory is one chunk's samples whatever the scan; the rays' geometry is
computed per chunk on the volume's device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from medgmae.terminal import ProgressLines
from recon.geometry import CTGeometry
from recon.projectors.base import Projector

__all__ = ["TorchProjector", "box_interval", "sampling_support_half"]

#: Upper bound on ray samples (rays x steps) evaluated at once.
_CHUNK_SAMPLES = 1 << 22
#: The same on a GPU, where larger launches pay (memory stays bounded: about 55 bytes per sample, under 1 GB).
_CHUNK_SAMPLES_GPU = 1 << 24


def box_interval(start: Tensor, d: Tensor, half: Tensor) -> tuple[Tensor, Tensor]:
    """Where each ray enters and leaves the box ``|p| <= half`` (slab method).

    Args:
        start: ``(N, 3)`` ray start points, mm ``(x, y, z)`` about the box's centre.
        d: ``(N, 3)`` unit directions.
        half: ``(3,)`` the box's half sizes, mm ``(x, y, z)``.

    Returns:
        ``(lo, hi)``, ``(N,)`` each: distances from ``start`` in mm, ``lo >= hi`` for rays that miss.
    """
    inv = 1.0 / d  # +-inf along axes a ray does not move on
    t0, t1 = (-half - start) * inv, (half - start) * inv
    return torch.minimum(t0, t1).nan_to_num(-math.inf).amax(-1), torch.maximum(t0, t1).nan_to_num(math.inf).amin(-1)


def sampling_support_half(geometry: CTGeometry) -> Tensor:
    """Half the sampling support ``(x, y, z)`` in mm (float64): the volume padded by half a voxel, where
    ``grid_sample`` still reads an edge voxel; a sample outside it reads zero."""
    vs = torch.tensor(geometry.voxel_size[::-1], dtype=torch.float64)
    return torch.tensor(geometry.extent[::-1], dtype=torch.float64) / 2 + vs / 2


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
        self._vectors: dict = {}  # (views, 12) geometry vectors by (device, dtype), made when first needed

    # ------------------------------------------------------------------ rays
    def _rays_of(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """Start points (the ray's closest approach to the isocentre minus the bounding radius) and unit directions,
        ``(N, 3)`` each, in mm ``(x, y, z)`` about the isocentre, of the rays with flat indices ``index`` into
        ``(views, rows, cols)``, computed on ``index``'s device in float64 (float32 where the device has no float64)
        per chunk rather than tabulated: a clinical scan's table would take GBs."""
        g = self.geometry
        dtype = torch.float32 if index.device.type == "mps" else torch.float64
        key = (index.device, dtype)
        if key not in self._vectors:
            self._vectors[key] = torch.as_tensor(g.vectors(), dtype=torch.float64).to(index.device, dtype)
        rows, cols = g.det_shape
        index = index.long()
        vec = self._vectors[key][index // (rows * cols)]
        pixel = index % (rows * cols)
        rr = (pixel // cols).to(dtype).unsqueeze(1) - (rows - 1) / 2
        cc = (pixel % cols).to(dtype).unsqueeze(1) - (cols - 1) / 2
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
    @staticmethod
    def _view_indices(views, device: torch.device) -> Tensor | None:
        """``views`` (indices, a list, or a boolean mask over the views) as a 1D long tensor on ``device``."""
        if views is None:
            return None
        v = torch.as_tensor(views, device=device)
        return (v.nonzero().flatten() if v.dtype == torch.bool else v.long()).reshape(-1)

    def _ray_chunks(self, volume: Tensor, views: Tensor | None):
        """Yield ``(rays, integrals)`` per chunk of at most :data:`_CHUNK_SAMPLES` ray samples: ``rays`` the slice of
        the flattened ``(views * rows * cols)`` rays, ``integrals`` their ``(B, rays)`` sums (differentiable);
        ``views`` as :meth:`_view_indices` gives them; with :attr:`lines`, a progress line a minute. A chunk samples
        only the steps where one of its rays can be within the sampling support (:func:`sampling_support_half`):
        the others read zero."""
        g = self.geometry
        per_view = g.det_shape[0] * g.det_shape[1]
        nv = g.num_views if views is None else views.numel()
        ns = self.num_steps
        inp = volume.unsqueeze(0)  # (1, B, D, H, W): the batch rides in the channel dim
        chunk = max(1, (_CHUNK_SAMPLES if volume.device.type == "cpu" else _CHUNK_SAMPLES_GPU) // ns)
        lines = ProgressLines("projecting", nv, "views", bar=not self.lines)  # no bar shows a projection
        support = sampling_support_half(g).to(volume.device, torch.float32 if volume.device.type == "mps" else None)
        scale = self._to_grid(support.new_ones(3))  # mm -> grid_sample's [-1, 1], per axis
        for r0 in range(0, nv * per_view, chunk):
            lines.update(r0 // per_view)
            rays = slice(r0, min(r0 + chunk, nv * per_view))
            index = torch.arange(rays.start, rays.stop, device=volume.device)
            if views is not None:  # rays of the selected views -> rays of the scan
                index = views[index // per_view] * per_view + index % per_view
            start, d = self._rays_of(index)
            steps = self._chunk_steps(start, d, support)
            if steps is None:  # no ray of the chunk meets the volume
                yield rays, volume.new_zeros(volume.shape[0], rays.stop - rays.start)
                continue
            t = (torch.arange(*steps, device=volume.device, dtype=volume.dtype) + 0.5) * self.step_mm
            start, d = (start * scale).to(volume.dtype), (d * scale).to(volume.dtype)  # in [-1, 1] units
            grid = torch.addcmul(start[:, None, :], t.view(1, -1, 1), d[:, None, :])  # (rays, steps, 3)
            samp = F.grid_sample(inp, grid[None, None], mode="bilinear", padding_mode="zeros", align_corners=False)
            yield rays, samp.sum(-1)[0, :, 0] * self.step_mm

    def steps_within(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """The first and last (inclusive) step indices whose samples, at ``(k + 0.5) * step_mm`` from a ray's start,
        can lie within ``[lo, hi]`` (mm from the start, e.g. :func:`box_interval`'s), widened by a step at either end
        and clamped to the ray's steps: ``first > last`` where none can (a miss, ``lo >= hi``, or infinite bounds).

        Args:
            lo: entry distances (mm), any shape.
            hi: exit distances (mm), the same shape.

        Returns:
            ``(first, last)``, float tensors of step indices of ``lo``'s shape.
        """
        first = (torch.ceil(lo / self.step_mm - 0.5) - 1).clamp(0, self.num_steps)
        last = (torch.floor(hi / self.step_mm - 0.5) + 1).clamp(-1, self.num_steps - 1)
        return first, last

    def _chunk_steps(self, start: Tensor, d: Tensor, support: Tensor) -> tuple[int, int] | None:
        """The range ``(first, stop)`` of step indices at which some of the rays ``start + t d`` (``(N, 3)`` mm) can
        be within the box ``support`` (:meth:`steps_within` of their joint span), ``None`` where every ray misses it."""
        lo, hi = box_interval(start, d, support.to(start.dtype))
        hit = lo < hi
        inf = torch.tensor(math.inf, dtype=lo.dtype, device=lo.device)
        span = self.steps_within(torch.where(hit, lo, inf).amin(), torch.where(hit, hi, -inf).amax())
        first, last = (int(v) for v in torch.stack(span).tolist())  # one transfer to the host (a GPU waits for each)
        return (first, last + 1) if first <= last else None

    def forward_plain(self, volume: Tensor, views: Tensor | None = None) -> Tensor:
        """``A x`` built from differentiable ops (autograd gives the exact adjoint).

        Args:
            volume: ``(B, D, H, W)``.
            views: optional subset of the views (indices, or a boolean mask).

        Returns:
            ``(B, V, rows, cols)`` line integrals (volume units times mm).
        """
        g = self.geometry
        if volume.dim() != 4 or tuple(volume.shape[1:]) != g.volume_shape:
            raise ValueError(f"volume must be (B, *{g.volume_shape}), got {tuple(volume.shape)}")
        views = self._view_indices(views, volume.device)
        nv = g.num_views if views is None else views.numel()
        out = torch.cat([s for _, s in self._ray_chunks(volume, views)], -1)
        return out.reshape(volume.shape[0], nv, *g.det_shape)

    def adjoint_plain(self, proj: Tensor, views: Tensor | None = None) -> Tensor:
        """``A^T y``: the vector-Jacobian product of :meth:`forward_plain` (exact adjoint), one chunk of rays at a
        time, so memory is one chunk's samples (autograd of the whole forward would keep every chunk's sampling
        grid, 12 bytes per ray sample: tens of GB for a clinical cone-beam scan).

        Args:
            proj: ``(B, V, rows, cols)`` (``V`` the selected views when ``views`` is given).
            views: optional subset of views.

        Returns:
            ``(B, D, H, W)``.
        """
        g = self.geometry
        views = self._view_indices(views, proj.device)
        nv = g.num_views if views is None else views.numel()
        if proj.dim() != 4 or tuple(proj.shape[1:]) != (nv, *g.det_shape):
            raise ValueError(f"projections must be (B, {nv}, {g.det_shape[0]}, {g.det_shape[1]}), got {tuple(proj.shape)}")
        y = proj.detach().reshape(proj.shape[0], -1)
        with torch.enable_grad():
            x = torch.zeros((proj.shape[0], *g.volume_shape), device=proj.device, dtype=proj.dtype, requires_grad=True)
            for rays, s in self._ray_chunks(x, views):
                if s.requires_grad:  # a chunk of rays that all miss the volume reads nothing
                    s.backward(y[:, rays])  # accumulates into x.grad
        return x.grad if x.grad is not None else torch.zeros_like(x.detach())

    def _forward_raw(self, volume: Tensor, views: Tensor | None) -> Tensor:
        return self.forward_plain(volume, views)

    def _adjoint_raw(self, proj: Tensor, views: Tensor | None) -> Tensor:
        return self.adjoint_plain(proj, views)
