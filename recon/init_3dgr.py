"""3DGR-CT's initialisation (SigmaLDC/3DGR-CT, ``3DGR-CT/models/gaussian_model.py``, ``create_from_fbp``).

1. The FBP volume is normalised by its maximum (3DGR-CT's images are normalised to ``[0, 1]``; this maximum is
   the ``value_scale`` of the reconstruction) and subsampled to half resolution by striding
   (``fbp_recon[:, ::2, ::2, ::2]`` in ``train_ct_recon.py``); values below ``air_threshold`` are set to 0.
2. The gradient magnitude is the norm of the absolute forward differences along the three axes on the interior
   voxels (0 on the border). The voxels are ranked by it; the top ``start`` fraction of *all* voxels is skipped
   (edges of streaks and of the body outline) and the next ``num_gaussians`` are taken (fewer when the volume
   has fewer voxels left).
3. Each Gaussian sits at its voxel (half-resolution index ``i`` -> full-resolution voxel ``2 i``), isotropic,
   identity rotation, with scale ``ini_sigma / n`` in the normalised frame (the volume's largest side = 1),
   ``n`` the number of selected voxels in its ``5^3`` neighbourhood (itself included): local neighbour density.
4. Intensity ``ini_intensity * f + 0.001`` of the normalised, thresholded FBP value ``f`` at the voxel, i.e. the
   value of ``sigmoid(logit)`` the optimisation starts from.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from medgmae.gaussians import Gaussians3D
from recon.presets import THREEDGR_CT_INIT

__all__ = ["init_3dgr_ct", "forward_difference_gradient"]


def forward_difference_gradient(volume: Tensor) -> Tensor:
    """``(D, H, W)`` norm of the absolute forward differences along the three axes, computed on the interior
    voxels ``[1:-1]`` and 0 on the border (3DGR-CT's ``create_from_fbp``)."""
    v = volume
    c = v[1:-1, 1:-1, 1:-1]
    gz = (c - v[2:, 1:-1, 1:-1]).abs()
    gy = (c - v[1:-1, 2:, 1:-1]).abs()
    gx = (c - v[1:-1, 1:-1, 2:]).abs()
    return F.pad(torch.sqrt(gx * gx + gy * gy + gz * gz), (1, 1, 1, 1, 1, 1))


def _check_init_arguments(
    fbp_volume: Tensor, num_gaussians: int, start: float, neighbour_kernel: int, ini_sigma: float, ini_intensity: float
) -> None:
    """Raise ``ValueError`` naming the first bad argument of :func:`init_3dgr_ct`."""
    if not isinstance(fbp_volume, Tensor) or fbp_volume.dim() != 3:
        raise ValueError(f"the FBP volume must be a (D, H, W) tensor, got {getattr(fbp_volume, 'shape', type(fbp_volume))}")
    if not torch.isfinite(fbp_volume).all():
        raise ValueError("the FBP volume contains NaN or Inf")
    if num_gaussians < 1:
        raise ValueError(f"num_gaussians must be >= 1, got {num_gaussians}")
    if not 0 <= start < 1:
        raise ValueError(f"start must be in [0, 1), got {start}")
    if neighbour_kernel < 1 or neighbour_kernel % 2 == 0:
        raise ValueError(f"neighbour_kernel must be a positive odd number, got {neighbour_kernel}")
    if not (ini_sigma > 0 and ini_intensity > 0):
        raise ValueError(f"ini_sigma and ini_intensity must be positive, got {ini_sigma}, {ini_intensity}")


def init_3dgr_ct(
    fbp_volume: Tensor,
    num_gaussians: int = THREEDGR_CT_INIT["num_gaussian"],
    start: float = THREEDGR_CT_INIT["start"],
    air_threshold: float = THREEDGR_CT_INIT["air_threshold"],
    ini_intensity: float = THREEDGR_CT_INIT["ini_intensity"],
    ini_sigma: float = THREEDGR_CT_INIT["ini_sigma"],
    neighbour_kernel: int = THREEDGR_CT_INIT["neighbour_kernel"],
    intensity_offset: float = THREEDGR_CT_INIT["intensity_offset"],
) -> tuple[Gaussians3D, float]:
    """3DGR-CT's initial Gaussians from an FBP volume (see the module docstring).

    Args:
        fbp_volume: ``(D, H, W)`` attenuation volume (1/mm) with a positive maximum.
        num_gaussians: Gaussians to place (3DGR-CT: 50,000).
        start: fraction of the half-resolution voxels with the largest gradient that is skipped.
        air_threshold: normalised FBP values below this are set to 0.
        ini_intensity: slope of the initial intensity in the normalised FBP value.
        ini_sigma: scale numerator (normalised frame).
        neighbour_kernel: side of the neighbourhood counted for the scales (odd).
        intensity_offset: added to every initial intensity.

    Returns:
        ``(gaussians, value_scale)``: voxel-frame Gaussians (``B = 1``) in attenuation units and the FBP's maximum,
        the intensity unit of the reconstruction.
    """
    _check_init_arguments(fbp_volume, num_gaussians, start, neighbour_kernel, ini_sigma, ini_intensity)
    vol = fbp_volume.detach().float().cpu()
    value_scale = float(vol.max())
    if not value_scale > 0:
        raise ValueError("the FBP volume has no positive value to initialise from")
    half = (vol / value_scale)[::2, ::2, ::2].clone()
    half[half < air_threshold] = 0
    grad = forward_difference_gradient(half).flatten()
    n_vox = grad.numel()
    skip = int(start * n_vox)
    k = min(num_gaussians, n_vox - skip)
    if k < 1:
        raise ValueError(f"the half-resolution volume {tuple(half.shape)} has no voxel left after skipping {skip}")
    idx = torch.topk(grad, skip + k).indices[skip:]
    coords = torch.stack(torch.unravel_index(idx, half.shape), -1)
    grid = torch.zeros(half.shape)
    grid[coords[:, 0], coords[:, 1], coords[:, 2]] += 1
    kern = torch.ones(1, 1, neighbour_kernel, neighbour_kernel, neighbour_kernel)
    counts = F.conv3d(grid[None, None], kern, padding=neighbour_kernel // 2)[0, 0]
    n = counts[coords[:, 0], coords[:, 1], coords[:, 2]]
    side = float(max(vol.shape))  # the normalised frame's unit, in full-resolution voxels
    scales = (ini_sigma / n * side).unsqueeze(-1).expand(k, 3).contiguous()
    inten = (ini_intensity * half.flatten()[idx] + intensity_offset) * value_scale
    quats = torch.zeros(k, 4)
    quats[:, 0] = 1
    means = (2 * coords).float()
    g = Gaussians3D(means[None], scales[None], quats[None], inten[None])
    return g.to(fbp_volume.device), value_scale
