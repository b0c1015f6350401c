"""Initial Gaussians for the reconstruction: ``random``, ``fbp`` (3DGR-CT's) and ``medgmae`` (zero-shot).

All three return voxel-frame :class:`~medgmae.gaussians.Gaussians3D` (``B = 1``) for the reconstruction grid,
intensities in attenuation units (1/mm), and finish with the same amplitude calibration: one least-squares gain
``alpha = <R, F> / <R, R>`` between the rendered initial Gaussians ``R`` and the FBP volume ``F``.

Attenuation and HU: ``HU = 1000 (mu / mu_water - 1)`` with ``mu_water`` = :data:`MU_WATER` (0.0192 / mm, water at
about 70 keV), so air (``mu = 0``) is -1000 HU.

Zero-shot MedGMAE initialisation (:func:`medgmae_init`):

1. the FBP volume (attenuation) is converted to HU and windowed like the pre-training data, ``[-175, 250]`` HU
   -> ``[0, 1]`` (clipped);
2. it is resampled (trilinear) to the pre-training spacing (1.5 mm) and tiled into windows of the model's input
   size (96^3 for the paper's model; zero padding = below the window);
3. the decoder predicts each window's Gaussians (normalised frame, ``mask_ratio = 0``), which are mapped to the
   window's voxels, shifted by the window's origin, and stretched from the 1.5 mm grid to the reconstruction grid
   (anisotropic stretches re-factorise the covariance), keeping those centred inside the volume;
4. intensities (window units) are mapped to attenuation with the window's slope ``425 / 1000 * mu_water``; the
   window clips everything below -175 HU, an additive offset no sum of Gaussians can carry, so the common
   least-squares gain against the FBP finishes the mapping.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from medgmae.gaussians import Gaussians3D, rotation_matrix_to_quaternion
from medgmae.render import render_volume

__all__ = [
    "MU_WATER",
    "HU_WINDOW",
    "PRETRAIN_SPACING",
    "INIT_METHODS",
    "hu_to_mu",
    "mu_to_hu",
    "random_init",
    "fbp_init",
    "medgmae_init",
    "stretch_gaussians",
    "calibrate_intensities",
]

#: Linear attenuation coefficient of water (1/mm) used for HU <-> attenuation.
MU_WATER = 0.0192
#: MedGMAE's pre-training intensity window (HU), mapped to [0, 1].
HU_WINDOW = (-175.0, 250.0)
#: MedGMAE's pre-training voxel spacing (mm).
PRETRAIN_SPACING = 1.5
INIT_METHODS = ("random", "fbp", "medgmae")


def hu_to_mu(hu, mu_water: float = MU_WATER):
    """``mu = mu_water (1 + HU / 1000)``, clipped at 0 (nothing attenuates less than vacuum)."""
    if isinstance(hu, Tensor):
        return (mu_water * (1.0 + hu / 1000.0)).clamp_min(0.0)
    return np.maximum(mu_water * (1.0 + np.asarray(hu) / 1000.0), 0.0)


def mu_to_hu(mu, mu_water: float = MU_WATER):
    """``HU = 1000 (mu / mu_water - 1)``."""
    return 1000.0 * (mu / mu_water - 1.0)


def _check_volume(fbp_volume: Tensor) -> Tensor:
    if not isinstance(fbp_volume, Tensor) or fbp_volume.dim() != 3:
        raise ValueError(f"the FBP volume must be a (D, H, W) tensor, got {getattr(fbp_volume, 'shape', type(fbp_volume))}")
    if not torch.isfinite(fbp_volume).all():
        raise ValueError("the FBP volume contains NaN or Inf")
    return fbp_volume.detach().float()


def calibrate_intensities(g: Gaussians3D, target: Tensor, cutoff: float = 3.0) -> Gaussians3D:
    """Scale intensities by the least-squares gain between the rendered Gaussians and ``target`` ``(D, H, W)``."""
    with torch.no_grad():
        r = render_volume(*g.tensors(), shape=target.shape, cutoff=cutoff)[0]
        den = float(r.square().sum())
        alpha = float((r * target).sum()) / den if den > 0 else 1.0
    if not math.isfinite(alpha) or alpha <= 0:
        alpha = 1.0
    return Gaussians3D(g.means, g.scales, g.quats, g.intensities * alpha)


def _nn_scales(points: Tensor, k: int = 3) -> Tensor:
    """Mean distance of each point to its ``k`` nearest neighbours."""
    from scipy.spatial import cKDTree

    pts = points.cpu().double().numpy()
    if len(pts) <= 1:
        return torch.ones(len(pts), dtype=torch.float32)
    d, _ = cKDTree(pts).query(pts, k=min(k, len(pts) - 1) + 1)
    return torch.from_numpy(np.asarray(d)[:, 1:].mean(1)).float()


def _identity_quats(n: int, device) -> Tensor:
    q = torch.zeros(n, 4, device=device)
    q[:, 0] = 1
    return q


def random_init(fbp_volume: Tensor, num_gaussians: int, seed: int = 0, cutoff: float = 3.0) -> Gaussians3D:
    """Gaussians at uniformly random positions, isotropic scales from the mean spacing ``(N / K)^(1/3)``, equal
    intensities calibrated against the FBP volume (only its overall level is used).

    Args:
        fbp_volume: ``(D, H, W)`` attenuation volume (for the intensity level).
        num_gaussians: K.
        seed: random seed.
        cutoff: renderer cutoff used for the calibration.
    """
    vol = _check_volume(fbp_volume)
    if num_gaussians < 1:
        raise ValueError(f"num_gaussians must be >= 1, got {num_gaussians}")
    gen = torch.Generator().manual_seed(seed)
    shape = torch.tensor(vol.shape, dtype=torch.float32)
    means = torch.rand(num_gaussians, 3, generator=gen) * shape - 0.5
    s = 0.5 * float((shape.prod() / num_gaussians) ** (1 / 3))
    scales = torch.full((num_gaussians, 3), max(s, 0.5))
    g = Gaussians3D(means[None], scales[None], _identity_quats(num_gaussians, "cpu")[None], torch.ones(1, num_gaussians))
    return calibrate_intensities(g.to(vol.device), vol, cutoff)


def fbp_init(
    fbp_volume: Tensor, num_gaussians: int, seed: int = 0, uniform_fraction: float = 0.2, cutoff: float = 3.0
) -> Gaussians3D:
    """3DGR-CT's initialisation: Gaussians at high-gradient voxels of the FBP volume.

    Centres are drawn without replacement from the voxels with a probability proportional to the FBP's
    gradient magnitude (plus ``uniform_fraction`` of its mean, so flat regions are not left empty), restricted
    to voxels above 5 % of the volume's maximum, and jittered within their voxel. Scales are isotropic, half the
    mean distance to the 3 nearest centres (local density); intensities are the FBP values at the centres,
    then calibrated.

    Args:
        fbp_volume: ``(D, H, W)`` attenuation volume.
        num_gaussians: K (at most the number of candidate voxels).
        seed: random seed.
        uniform_fraction: weight of the uniform part of the sampling density.
        cutoff: renderer cutoff used for the calibration.
    """
    vol = _check_volume(fbp_volume)
    if num_gaussians < 1:
        raise ValueError(f"num_gaussians must be >= 1, got {num_gaussians}")
    gen = torch.Generator().manual_seed(seed)
    v = vol.cpu()
    grads = torch.gradient(v)
    mag = torch.sqrt(sum(g * g for g in grads))
    weight = mag + uniform_fraction * mag.mean()
    weight = weight * (v > 0.05 * v.max())
    if int((weight > 0).sum()) == 0:
        weight = torch.ones_like(v)
    k = min(num_gaussians, int((weight > 0).sum()))
    idx = torch.multinomial(weight.flatten(), k, replacement=False, generator=gen)
    coords = torch.stack(torch.unravel_index(idx, v.shape), -1).float()
    means = coords + torch.rand(k, 3, generator=gen) - 0.5
    scales = (0.5 * _nn_scales(means)).clamp(0.5, 0.25 * min(v.shape)).unsqueeze(-1).expand(k, 3).contiguous()
    inten = v.flatten()[idx]
    g = Gaussians3D(means[None], scales[None], _identity_quats(k, "cpu")[None], inten[None])
    return calibrate_intensities(g.to(vol.device), vol, cutoff)


def stretch_gaussians(g: Gaussians3D, factors: Sequence[float], offset: Sequence[float] = (0.0, 0.0, 0.0)) -> Gaussians3D:
    """Map Gaussians by ``x -> diag(factors) x + offset``: covariances become ``F Sigma F`` (re-factorised when
    anisotropic)."""
    f = torch.as_tensor([float(a) for a in factors], dtype=g.means.dtype, device=g.means.device)
    o = torch.as_tensor([float(a) for a in offset], dtype=g.means.dtype, device=g.means.device)
    means = g.means * f + o
    if bool((f == f[0]).all()):
        return Gaussians3D(means, g.scales * f[0], g.quats, g.intensities)
    cov = g.covariances() * f.view(3, 1) * f.view(1, 3)
    evals, evecs = torch.linalg.eigh(cov.double())
    det = torch.linalg.det(evecs)
    evecs = torch.cat([evecs[..., :2], evecs[..., 2:] * det.sign()[..., None, None]], -1)
    scales = evals.clamp_min(1e-12).sqrt().to(g.scales.dtype)
    return Gaussians3D(means, scales, rotation_matrix_to_quaternion(evecs).to(g.quats.dtype), g.intensities)


def window_fbp(fbp_volume: Tensor, mu_water: float = MU_WATER, hu_window: Sequence[float] = HU_WINDOW) -> Tensor:
    """Attenuation -> HU -> ``[0, 1]`` over ``hu_window`` (clipped), as MedGMAE was pre-trained."""
    lo, hi = hu_window
    return ((mu_to_hu(fbp_volume, mu_water) - lo) / (hi - lo)).clamp(0.0, 1.0)


def _window_origins(n: int, w: int, overlap: int) -> tuple[list[int], list[float]]:
    """Window origins along one axis (stride ``w - overlap``, the last window flush with the end) and the
    boundaries between the windows' own regions (midpoints of the overlaps), so every position is owned by one."""
    if n <= w:
        return [0], []
    stride = max(1, w - overlap)
    origins = sorted(set(list(range(0, n - w, stride)) + [n - w]))
    bounds = [0.5 * (b + a + w) - 0.5 for a, b in zip(origins, origins[1:])]
    return origins, bounds


@torch.no_grad()
def medgmae_init(
    fbp_volume: Tensor,
    voxel_size: Sequence[float],
    model,
    spacing: float = PRETRAIN_SPACING,
    mu_water: float = MU_WATER,
    hu_window: Sequence[float] = HU_WINDOW,
    overlap: int = 0,
    batch_size: int = 2,
    min_intensity: float = 1e-3,
    calibrate: bool = True,
    cutoff: float = 3.0,
) -> Gaussians3D:
    """Zero-shot initialisation from a pre-trained MedGMAE (see the module docstring for the mapping).

    Args:
        fbp_volume: ``(D, H, W)`` attenuation volume (1/mm).
        voxel_size: ``(sz, sy, sx)`` of the reconstruction grid in mm.
        model: a MedGMAE (``predict_gaussians(x, mask_ratio=0.0) -> Gaussians3D`` in the normalised frame and an
            ``img_size`` attribute, the window size).
        spacing: the model's pre-training spacing in mm.
        mu_water: attenuation of water (1/mm) for the HU conversion.
        hu_window: the pre-training intensity window (HU).
        overlap: minimum overlap between windows (voxels of the resampled grid); the last window along each axis is
            flush with the volume's end. Each Gaussian is kept by the one window that owns its centre (the
            boundaries between windows are the middles of their overlaps).
        batch_size: windows per decoder call.
        min_intensity: drop Gaussians below this window-unit intensity.
        calibrate: finish with the least-squares gain against the FBP volume.
        cutoff: renderer cutoff used for the calibration.
    """
    vol = _check_volume(fbp_volume)
    vs = [float(v) for v in voxel_size]
    if len(vs) != 3 or not all(v > 0 for v in vs):
        raise ValueError(f"voxel_size must be three positive numbers, got {voxel_size}")
    win = getattr(model, "img_size", 96)
    win = tuple(int(w) for w in (win if isinstance(win, (tuple, list)) else (win,) * 3))
    if overlap < 0 or any(overlap >= w for w in win):
        raise ValueError(f"overlap must be in [0, window) = [0, {min(win)}), got {overlap}")
    param = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    device = param.device if param is not None else vol.device
    shape = vol.shape
    new_shape = [max(1, int(round(n * v / spacing))) for n, v in zip(shape, vs)]
    x = window_fbp(vol, mu_water, hu_window)
    x = F.interpolate(x[None, None], size=new_shape, mode="trilinear", align_corners=False)[0, 0]
    pad = [max(0, w - n) for n, w in zip(new_shape, win)]
    x = F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]))
    axes = [_window_origins(n, w, overlap) for n, w in zip(new_shape, win)]
    tiles = [(i, j, k) for i in range(len(axes[0][0])) for j in range(len(axes[1][0])) for k in range(len(axes[2][0]))]
    kept: list[Gaussians3D] = []
    for t0 in range(0, len(tiles), batch_size):
        batch = tiles[t0 : t0 + batch_size]
        orgs = [tuple(axes[a][0][t[a]] for a in range(3)) for t in batch]
        inp = torch.stack([x[a : a + win[0], b : b + win[1], c : c + win[2]] for a, b, c in orgs])[:, None].to(device)
        pred = model.predict_gaussians(inp.float(), mask_ratio=0.0).to(vol.device).to_voxel(win)
        for i, (tile, org) in enumerate(zip(batch, orgs)):
            g = pred[i]
            m = g.means[0] + torch.tensor(org, dtype=g.means.dtype, device=g.means.device)
            ok = g.intensities[0] > min_intensity
            for ax in range(3):
                origins, bounds = axes[ax]
                lo = bounds[tile[ax] - 1] if tile[ax] > 0 else -0.5
                hi = bounds[tile[ax]] if tile[ax] < len(origins) - 1 else new_shape[ax] - 0.5
                ok &= (m[:, ax] >= lo) & (m[:, ax] < hi)
            kept.append(Gaussians3D(m[ok][None], g.scales[0][ok][None], g.quats[0][ok][None], g.intensities[0][ok][None]))
    merged = Gaussians3D.cat(kept, dim=1)
    if merged.num_gaussians == 0:
        raise ValueError("the MedGMAE decoder produced no Gaussians inside the volume (is the FBP volume empty?)")
    # resampled grid -> reconstruction grid: x = (x' + 0.5) f - 0.5 with f = N / N'
    f = [n / m for n, m in zip(shape, new_shape)]
    g = stretch_gaussians(merged, f, [0.5 * a - 0.5 for a in f])
    lo, hi = hu_window
    g = Gaussians3D(g.means, g.scales.clamp_min(0.3), g.quats, g.intensities * (hi - lo) / 1000.0 * mu_water)
    return calibrate_intensities(g, vol, cutoff) if calibrate else g
