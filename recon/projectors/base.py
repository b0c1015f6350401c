"""The projector interface and the autograd pair that makes any backend differentiable."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from recon.geometry import CTGeometry
from recon.geometry_fields import view_indices

__all__ = ["Projector", "ForwardProjection", "BackProjection", "as_tensor", "check_geometry", "floating"]


class ForwardProjection(torch.autograd.Function):
    """``y = A x``; the backward pass applies the adjoint ``A^T``."""

    @staticmethod
    def forward(ctx, volume: Tensor, projector: "Projector", views):  # type: ignore[override]
        ctx.projector, ctx.views = projector, views
        with torch.no_grad():
            return projector._forward_raw(volume, views)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return ctx.projector._adjoint_raw(grad.contiguous(), ctx.views), None, None


class BackProjection(torch.autograd.Function):
    """``x = A^T y``; the backward pass applies the forward projection ``A``."""

    @staticmethod
    def forward(ctx, proj: Tensor, projector: "Projector", views):  # type: ignore[override]
        ctx.projector, ctx.views = projector, views
        with torch.no_grad():
            return projector._adjoint_raw(proj, views)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return ctx.projector._forward_raw(grad.contiguous(), ctx.views), None, None


class Projector:
    """A linear CT projector ``A`` for one :class:`CTGeometry` (subclasses implement ``_forward_raw`` and
    ``_adjoint_raw``).

    ``forward`` and ``adjoint`` are differentiable PyTorch operations (each is the other's backward).
    Volumes are ``(B, D, H, W)`` (or ``(D, H, W)``) and projections ``(B, V, rows, cols)`` (or ``(V, rows, cols)``),
    with ``V`` the number of selected views.
    """

    name = "base"
    #: Print a progress line a minute during one long projection (simulate's projection of a whole scan, which no
    #: bar shows; :class:`medgmae.terminal.ProgressLines`); the backends that loop over rays in steps honour it.
    lines = False

    def __init__(self, geometry: CTGeometry):
        self.geometry = check_geometry(geometry)

    def _forward_raw(self, volume: Tensor, views: Tensor | None) -> Tensor:
        raise NotImplementedError

    def _adjoint_raw(self, proj: Tensor, views: Tensor | None) -> Tensor:
        raise NotImplementedError

    def _views(self, views, device) -> Tensor | None:
        views = view_indices(views, self.geometry.num_views)
        if views is None:
            return None
        v = torch.as_tensor(views, dtype=torch.long).reshape(-1)
        if v.numel() == 0 or int(v.min()) < 0 or int(v.max()) >= self.geometry.num_views:
            raise ValueError(f"views must index 0..{self.geometry.num_views - 1}, got {v.tolist()}")
        return v.to(device)

    def forward(self, volume: Tensor, views=None) -> Tensor:
        """Forward projection ``A x``.

        Args:
            volume: ``(B, D, H, W)`` or ``(D, H, W)`` in attenuation units (1/mm): a tensor, or a NumPy array (taken as float32).
            views: optional indices of the views to project, or a boolean mask with one entry per view.

        Returns:
            ``(B, V, rows, cols)`` (or ``(V, rows, cols)``) line integrals.
        """
        volume = floating(as_tensor(volume), "volume")
        squeeze = volume.dim() == 3
        x = volume.unsqueeze(0) if squeeze else volume
        if x.dim() != 4 or tuple(x.shape[1:]) != self.geometry.volume_shape:
            raise ValueError(f"volume must be (B, *{self.geometry.volume_shape}), got {tuple(volume.shape)}")
        y = ForwardProjection.apply(x, self, self._views(views, x.device))
        return y[0] if squeeze else y

    def adjoint(self, proj: Tensor, views=None) -> Tensor:
        """Adjoint (unfiltered backprojection) ``A^T y``.

        Args:
            proj: ``(B, V, rows, cols)`` or ``(V, rows, cols)``: a tensor, or a NumPy array (taken as float32).
            views: optional indices of the views ``proj`` holds, or a boolean mask with one entry per view.

        Returns:
            ``(B, D, H, W)`` (or ``(D, H, W)``).
        """
        proj = floating(as_tensor(proj), "proj")
        squeeze = proj.dim() == 3
        y = proj.unsqueeze(0) if squeeze else proj
        v = self._views(views, y.device)
        nv = self.geometry.num_views if v is None else v.numel()
        if y.dim() != 4 or tuple(y.shape[1:]) != (nv, *self.geometry.det_shape):
            raise ValueError(f"projections must be (B, {nv}, {self.geometry.det_shape[0]}, {self.geometry.det_shape[1]}), got {tuple(proj.shape)}")
        x = BackProjection.apply(y, self, v)
        return x[0] if squeeze else x

    __call__ = forward


def check_geometry(geometry) -> CTGeometry:
    """``geometry`` unchanged; ``TypeError`` naming the argument unless it is a :class:`CTGeometry` (a dict, such as
    :meth:`CTGeometry.to_dict` gives, is made one with :meth:`CTGeometry.from_dict`, which checks it)."""
    if not isinstance(geometry, CTGeometry):
        hint = ": make one with CTGeometry.from_dict(...)" if isinstance(geometry, dict) else ""
        raise TypeError(f"geometry must be a CTGeometry, got {type(geometry).__name__}{hint}")
    return geometry


def floating(x, name: str) -> Tensor:
    """``x`` unchanged; ``TypeError`` naming ``name`` unless it is a floating-point tensor (an integer one would come
    back from some backends as integer projections, truncated, and fail in others)."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"{name} must be a floating-point tensor or NumPy array, got {got}")
    return x


def as_tensor(x: Tensor | np.ndarray) -> Tensor:
    """A volume or projections as recon's functions take them: a NumPy array becomes a float32 tensor (on the CPU),
    anything else is returned as it is (for the caller's own check)."""
    return torch.from_numpy(np.asarray(x, dtype=np.float32)) if isinstance(x, np.ndarray) else x
