"""What a :class:`~recon.gaussian_recon.GaussianReconstructor` is given, checked before anything is optimised: the
projections and reference as tensors (NumPy arrays taken as they are), their shapes against the geometry, and the
start's Gaussians against the reconstruction grid, where a start built on another grid (an FBP volume in ``(x, y,
z)`` order, Gaussians in world millimetres) reconstructed a worse volume, or nothing, without a word.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import Tensor

from medgmae.engine.devices import usable_device
from medgmae.gaussians import Gaussians3D
from medgmae.volume_units import looks_like_hu
from recon.geometry import CTGeometry
from recon.projectors.base import as_tensor

__all__ = ["checked_inputs"]

logger = logging.getLogger("recon")

#: The share of the start's centres outside the grid above which the start is warned about.
OUTSIDE_WARNING = 0.05


def _tensor(value: Any, name: str) -> Tensor:
    """``value`` as a tensor (a NumPy array or nested list converted, float32: :func:`recon.projectors.base.as_tensor`);
    ``TypeError`` for anything else."""
    value = as_tensor(np.asarray(value) if isinstance(value, (list, tuple)) else value)
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a tensor or a NumPy array, got {type(value).__name__}")
    return value


def _check_start(init: Gaussians3D, shape: tuple[int, ...]) -> None:
    """``ValueError`` for a start none of whose Gaussians lies in the ``shape`` grid (its voxels span ``[-0.5, n -
    0.5]`` along each axis, centres in voxel indices ``(z, y, x)``); a warning when more than
    :data:`OUTSIDE_WARNING` of them lie outside it."""
    if not isinstance(init, Gaussians3D):
        raise TypeError(f"init must be a Gaussians3D (recon.initialisation builds one), got {type(init).__name__}")
    if init.batch_size != 1 or init.num_gaussians < 1:
        raise ValueError(f"init must hold one set (B=1) of at least one Gaussian, got B={init.batch_size}, K={init.num_gaussians}")
    means = init.means[0].detach().float().cpu()
    inside = ((means >= -0.5) & (means <= torch.tensor(shape, dtype=torch.float32) - 0.5)).all(dim=1)
    share = 1.0 - float(inside.float().mean())
    span = f"their centres span {means.amin(0).tolist()} to {means.amax(0).tolist()}"
    where = f"voxel indices (z, y, x) of the {tuple(shape)} grid are expected, not world millimetres or (x, y, z)"
    if share == 1.0:
        raise ValueError(f"none of the {init.num_gaussians} start Gaussians lies in the volume: {span}; {where}")
    if share > OUTSIDE_WARNING:
        logger.warning("%.0f %% of the %d start Gaussians lie outside the volume (%s; %s): is the start built on "
                       "this geometry's grid?", 100 * share, init.num_gaussians, span, where)  # fmt: skip


def checked_inputs(
    geometry: CTGeometry, projections: Any, init: Gaussians3D, reference: Any, device: str | torch.device,
    unit_check: bool = True,
) -> tuple[Tensor, Tensor | None, torch.device]:
    """The projections and reference as tensors and the device, each checked (:mod:`recon.reconstructor_inputs`);
    with ``unit_check``, a reference in HU (:func:`medgmae.volume_units.looks_like_hu`, the check of the CLI's
    ``--reference``) is refused.

    Returns:
        ``(projections (V, rows, cols), reference (D, H, W) or None, device)``.

    Raises:
        TypeError: an input of another type. ValueError: projections that are not 3-D ``(V, rows, cols)`` (a batch
        ``(B, V, rows, cols)`` included), shapes that do not fit the geometry, non-finite projections,
        a start outside the grid, a CUDA device where there is none, a reference in HU.
    """
    device = usable_device(device)  # a CUDA one that exists (the toolkit's check and words)
    projections = _tensor(projections, "projections")
    if projections.dim() != 3:  # the geometry's check lets a batch through, which the reconstructor cannot fit
        raise ValueError(f"projections must be one scan's (views, rows, cols) = {geometry.proj_shape}, got shape "
                         f"{tuple(projections.shape)}; a batch of scans is not taken")
    geometry.check_projections(tuple(projections.shape))
    if not torch.isfinite(projections).all():
        raise ValueError("projections contain NaN or Inf")
    _check_start(init, geometry.volume_shape)
    if reference is not None:
        reference = _tensor(reference, "reference")
        if tuple(reference.shape) != geometry.volume_shape:
            raise ValueError(f"reference shape {tuple(reference.shape)} does not match the volume {geometry.volume_shape}")
        if unit_check and looks_like_hu(reference):
            raise ValueError(f"reference looks like a CT in HU (values {float(reference.min()):.4g} .. "
                             f"{float(reference.max()):.4g}), not linear attenuation in 1/mm (water 0.0192): convert "
                             "it with recon.initialisation.hu_to_mu, or pass unit_check=False")  # fmt: skip
    return projections, reference, device
