"""Initial Gaussians for the reconstruction: ``random``, ``fbp`` (the toolkit's, FBP-based) and ``medgmae`` (zero-shot).

All three return voxel-frame :class:`~medgmae.gaussians.Gaussians3D` (``B = 1``) for the reconstruction grid,
intensities in attenuation units (1/mm), and finish with the same amplitude calibration: one least-squares gain
``alpha = <R, F> / <R, R>`` between the rendered initial Gaussians ``R`` and the FBP volume ``F``.

Attenuation and HU: ``HU = 1000 (mu / mu_water - 1)`` with ``mu_water`` = :data:`MU_WATER` (0.0192 / mm, water at
about 70 keV), so air (``mu = 0``) is -1000 HU.

Zero-shot MedGMAE initialisation (:func:`medgmae_init`): the FBP volume (attenuation) is converted to HU and
handed, with its affine, to :func:`medgmae.zeroshot.zero_shot_gaussians`, which prepares it exactly as the model's
pre-training data (orientation, spacing and HU window read from ``model.pt``), tiles it and maps the decoder's
Gaussians back to the reconstruction's ``(z, y, x)`` voxel frame. This module adds only the intensity mapping:
window units -> attenuation with the window's slope (``(a_max - a_min) / 1000 * mu_water`` per unit), then the
common least-squares gain against the FBP. The gain does not undo the window: its floor (the attenuation at
``a_min``, 0.0158 / mm for the default -175 HU, 82 % of water's) is an additive offset inside the body that the
decoder's Gaussians do not carry and no gain restores; the gain stands in for it by stretching their contrast
(3.8 times the slope on the scan of ``bench/zero_shot_fidelity.py``). Measured there (``bench/RESULTS.md``, "How
well the zero-shot start reproduces its FDK"), the start reproduces the FDK volume at 14.3 dB, limited first by the
decoder itself (13.1 dB against its own windowed input); inverting the window exactly, per Gaussian or pointwise,
does worse (11.7 and 9.7 dB), and ``fit_iterations`` (each Gaussian's intensity fitted) reaches 20.9 dB.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch import Tensor

from medgmae.gaussians import Gaussians3D
from medgmae.preprocessing import DEFAULT_SPEC, PreprocessingSpec
from medgmae.render import render_volume
from medgmae.volume_units import looks_like_hu
from medgmae.whole_numbers import nonnegative_count, positive_count
from recon.cli_names import INIT_METHODS
from recon.projectors.base import as_tensor

__all__ = [
    "MU_WATER",
    "INIT_METHODS",
    "hu_to_mu",
    "mu_to_hu",
    "random_init",
    "fbp_init",
    "medgmae_init",
    "window_fbp",
    "zyx_affine",
    "calibrate_intensities",
    "fit_intensities",
    "subdivide_gaussians",
]

logger = logging.getLogger("recon")

#: Linear attenuation coefficient of water (1/mm) used for HU <-> attenuation.
MU_WATER = 0.0192


def hu_to_mu(hu, mu_water: float = MU_WATER):
    """``mu = mu_water (1 + HU / 1000)``, clipped at 0 (nothing attenuates less than vacuum)."""
    if isinstance(hu, Tensor):
        return (mu_water * (1.0 + hu / 1000.0)).clamp_min(0.0)
    return np.maximum(mu_water * (1.0 + np.asarray(hu) / 1000.0), 0.0)


def mu_to_hu(mu, mu_water: float = MU_WATER):
    """``HU = 1000 (mu / mu_water - 1)``."""
    return 1000.0 * (mu / mu_water - 1.0)


def _check_volume(fbp_volume: Tensor | np.ndarray) -> Tensor:
    """The FBP volume as a float32 tensor (a NumPy array converted); ``ValueError`` for another rank or NaN / Inf."""
    fbp_volume = as_tensor(fbp_volume)
    if not isinstance(fbp_volume, Tensor):
        raise ValueError(f"the FBP volume must be a (D, H, W) tensor or NumPy array, got {type(fbp_volume).__name__}")
    if fbp_volume.dim() != 3 or fbp_volume.numel() == 0:
        empty = " with voxels" if fbp_volume.dim() == 3 else ""
        raise ValueError(f"the FBP volume must be a (D, H, W) tensor{empty}, got shape {tuple(fbp_volume.shape)}")
    if not torch.isfinite(fbp_volume).all():
        raise ValueError("the FBP volume contains NaN or Inf")
    return fbp_volume.detach().float()


def _warn_if_hu(volume: Tensor, start: str) -> None:
    """Warn where ``fbp_volume`` looks like a CT in HU (:func:`~medgmae.volume_units.looks_like_hu`: below -100 or
    above 10) though ``start`` (``"FBP start"``...) reads it as linear attenuation in 1/mm: the start would be off by
    orders of magnitude (the command line refuses such an ``--fbp``)."""
    if looks_like_hu(volume):
        logger.warning("fbp_volume looks like a CT in HU (values %.4g .. %.4g), not linear attenuation in 1/mm (water "
                       "0.0192): the %s reads it as attenuation; convert with mu = 0.0192 (1 + HU / 1000), clipped at 0",
                       float(volume.min()), float(volume.max()), start)  # fmt: skip


def calibrate_intensities(g: Gaussians3D, target: Tensor, cutoff: float = 3.0) -> Gaussians3D:
    """Scale intensities by the least-squares gain between the rendered Gaussians and ``target`` ``(D, H, W)``."""
    with torch.no_grad():
        r = render_volume(*g.tensors(), shape=target.shape, cutoff=cutoff)[0]
        den = float(r.square().sum())
        alpha = float((r * target).sum()) / den if den > 0 else 1.0
    if not math.isfinite(alpha) or alpha <= 0:
        alpha = 1.0
    return Gaussians3D(g.means, g.scales, g.quats, g.intensities * alpha)


def fit_intensities(g: Gaussians3D, target: Tensor, iterations: int = 20, cutoff: float = 3.0) -> Gaussians3D:
    """Per-Gaussian intensities fitted to ``target``: non-negative least squares ``min_{I >= 0} ||R(I) - F||^2``.

    The rendered volume ``R`` is linear in the intensities, so the problem is convex; it is solved by projected
    steepest descent with the exact step along the (bound-masked) gradient, starting from ``g``'s intensities, for
    ``iterations`` steps of two renders and one backward pass each (a dense NNLS solver would need the
    ``voxels x K`` matrix). Means, scales and rotations are kept.

    Args:
        g: ``B = 1`` voxel-frame Gaussians on ``target``'s grid.
        target: ``(D, H, W)`` volume (the FBP): a tensor, or a NumPy array (taken in the dtype of ``g``'s
            intensities).
        iterations: descent steps (0 returns ``g`` unchanged).
        cutoff: renderer cutoff.

    Returns:
        ``g`` with the fitted, non-negative intensities.
    """
    iterations = nonnegative_count(iterations, "iterations")
    if isinstance(target, np.ndarray):  # in the Gaussians' dtype, on their device, as a tensor target would be
        target = torch.as_tensor(target, dtype=g.intensities.dtype, device=g.means.device)
    means, scales, quats = (t.detach() for t in (g.means, g.scales, g.quats))
    x = g.intensities.detach().clamp_min(0)
    for _ in range(iterations):
        with torch.enable_grad():  # callers may run under no_grad
            xi = x.clone().requires_grad_(True)
            residual = render_volume(means, scales, quats, xi, shape=target.shape, cutoff=cutoff)[0] - target
            (grad,) = torch.autograd.grad(0.5 * residual.square().sum(), xi)
        d = torch.where((x <= 0) & (grad > 0), torch.zeros_like(grad), grad)  # no step out of the bound
        with torch.no_grad():
            rd = render_volume(means, scales, quats, d, shape=target.shape, cutoff=cutoff)[0]
            den = float(rd.square().sum())
            if not den > 0:
                break
            x = (x - float(d.square().sum()) / den * d).clamp_min(0)
    return Gaussians3D(g.means, g.scales, g.quats, x)


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
    """Gaussians at uniformly random positions, isotropic scales of half the mean spacing ``(N / K)^(1/3)`` (``N``
    voxels, ``K`` Gaussians) but at least half a voxel, equal intensities calibrated against the FBP volume (only its
    overall level is used).

    Args:
        fbp_volume: ``(D, H, W)`` attenuation volume (for the intensity level); one whose range is HU's is warned
            about, as by :func:`fbp_init`.
        num_gaussians: K, a whole number >= 1.
        seed: random seed.
        cutoff: renderer cutoff used for the calibration.
    """
    vol = _check_volume(fbp_volume)
    _warn_if_hu(vol, "random start")
    num_gaussians = positive_count(num_gaussians, "num_gaussians")
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
    """The toolkit's FBP-based initialisation (``--init fbp``): Gaussians where the FBP volume has edges.

    Centres are drawn without replacement from the voxels with a probability proportional to the FBP's
    gradient magnitude (plus ``uniform_fraction`` of its mean, so flat regions are not left empty), restricted
    to voxels above 5 % of the volume's maximum, and jittered within their voxel. Scales are isotropic, half the
    mean distance to the 3 nearest centres (local density), at most a quarter of the volume's shortest side, but
    at least one voxel (also where that quarter is less, in a volume of a few slices): dense starts (20,000
    Gaussians in 131k voxels) otherwise begin at about half a voxel, below what the voxel grid resolves, and the
    optimisation did not grow them (``bench/RESULTS.md``, reconstruction study: 20.3 dB after 600 iterations on
    a 20-view scan with a floor of half a voxel). Intensities are the FBP values at the centres, then calibrated.

    Args:
        fbp_volume: ``(D, H, W)`` attenuation volume (1/mm); one whose range is HU's (below -100 or above 10,
            :func:`~medgmae.volume_units.looks_like_hu`) is warned about, as by :func:`medgmae_init`.
        num_gaussians: K, a whole number >= 1; a larger K than the candidate voxels (those above 5 % of the
            maximum, each holding at most one centre, as they are drawn without replacement) gives one Gaussian per
            candidate voxel.
        seed: random seed.
        uniform_fraction: weight of the uniform part of the sampling density.
        cutoff: renderer cutoff used for the calibration.
    """
    vol = _check_volume(fbp_volume)
    v = vol.cpu()
    _warn_if_hu(v, "FBP start")
    num_gaussians = positive_count(num_gaussians, "num_gaussians")
    gen = torch.Generator().manual_seed(seed)
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
    cap = max(1.0, 0.25 * min(v.shape))  # the floor wins over a thin volume's quarter (half a voxel of 2 slices)
    scales = (0.5 * _nn_scales(means)).clamp(1.0, cap).unsqueeze(-1).expand(k, 3).contiguous()
    inten = v.flatten()[idx]
    g = Gaussians3D(means[None], scales[None], _identity_quats(k, "cpu")[None], inten[None])
    return calibrate_intensities(g.to(vol.device), vol, cutoff)


@torch.no_grad()
def subdivide_gaussians(g: Gaussians3D, num_gaussians: int, seed: int = 0) -> Gaussians3D:
    """Replace each Gaussian by ``m = floor(num_gaussians / K)`` smaller children whose expected sum is the parent.

    Children of a Gaussian ``(mu, Sigma = R diag(s^2) R^T, I)`` have covariance ``f^2 Sigma`` with
    ``f = m^(-1/3)``, the parent's intensity ``I`` and centres drawn from ``N(mu, (1 - f^2) Sigma)``: the
    expected rendered sum ``m I N(mu, (1 - f^2) Sigma) * exp(-x^T (f^2 Sigma)^-1 x / 2)`` is exactly the parent
    (peak-valued Gaussians, the renderer's convention). A coarse start keeps its picture and gets the Gaussian
    budget of the other initialisations, each child free to move on its own.

    Args:
        g: Gaussians (``B = 1``), any frame.
        num_gaussians: the budget; returned unchanged when it is not at least twice ``K``.
        seed: random seed of the child centres.

    Returns:
        ``m K`` Gaussians (``B = 1``) on ``g``'s device.
    """
    if g.batch_size != 1:
        raise ValueError(f"subdivide_gaussians takes one set of Gaussians (B = 1), got B = {g.batch_size}")
    k = g.num_gaussians
    m = num_gaussians // max(k, 1)
    if k == 0 or m < 2:
        return g
    f = m ** (-1.0 / 3.0)
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(k, m, 3, generator=gen, dtype=torch.float64).to(g.means.device)
    rot = g.rotation_matrices()[0].double()  # (K, 3, 3)
    offs = torch.einsum("kij,kmj->kmi", rot, z * g.scales[0].double()[:, None, :]) * math.sqrt(1.0 - f * f)
    means = (g.means[0].double()[:, None, :] + offs).reshape(-1, 3).float()
    rep = lambda t: t[0].repeat_interleave(m, dim=0)  # noqa: E731
    return Gaussians3D(means[None], (rep(g.scales) * f)[None], rep(g.quats)[None], rep(g.intensities)[None])


def window_fbp(fbp_volume: Tensor, mu_water: float = MU_WATER, spec: PreprocessingSpec = DEFAULT_SPEC) -> Tensor:
    """Attenuation -> HU -> the model's intensity window (``spec``)."""
    return spec.window(mu_to_hu(fbp_volume, mu_water))


def zyx_affine(affine_xyz: np.ndarray) -> np.ndarray:
    """The index -> world matrix of a ``(z, y, x)`` array from the NIfTI affine of its ``(x, y, z)`` original."""
    a = np.asarray(affine_xyz, dtype=np.float64)
    if a.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got shape {a.shape}")
    return a[:, [2, 1, 0, 3]]


@torch.no_grad()
def medgmae_init(
    fbp_volume: Tensor,
    affine: np.ndarray,
    model,
    spec: PreprocessingSpec | None = None,
    mu_water: float = MU_WATER,
    overlap: int = 0,
    batch_size: int = 2,
    min_intensity: float = 1e-3,
    calibrate: bool = True,
    cutoff: float = 3.0,
    num_gaussians: int | None = None,
    seed: int = 0,
    fit_iterations: int = 0,
    overrides_warned: bool = False,
) -> Gaussians3D:
    """Zero-shot initialisation from a pre-trained MedGMAE (see the module docstring).

    Args:
        fbp_volume: ``(D, H, W)`` = ``(z, y, x)`` attenuation volume (1/mm); one whose range is HU's (below -100 or
            above 10, :func:`~medgmae.volume_units.looks_like_hu`) is warned about.
        affine: ``(4, 4)`` NIfTI affine of the volume's ``(x, y, z)`` array order (as :func:`recon.scan_files.load_volume`
            and ``CTGeometry.default_affine`` give it), index -> world mm.
        model: a MedGMAE (``predict_gaussians``, ``img_size``; ``preprocessing`` when loaded from ``model.pt``).
        spec: overrides the model's recorded pre-processing (warned of, unless ``overrides_warned``: the caller
            said so naming the model's file, as ``reconstruct`` does).
        mu_water: attenuation of water (1/mm) for the HU conversion.
        overlap: minimum overlap between windows (voxels of the model's grid).
        batch_size: windows per decoder call.
        min_intensity: drop Gaussians at or below this window-unit intensity.
        calibrate: finish with the least-squares gain against the FBP volume.
        cutoff: renderer cutoff used for the calibration.
        num_gaussians: a Gaussian budget: the decoder's Gaussians are subdivided to about this many
            (:func:`subdivide_gaussians`) before the calibration; ``None`` keeps the decoder's own count.
        seed: random seed of the subdivision.
        fit_iterations: after the calibration, fit each Gaussian's intensity to the FBP volume with this many
            steps of :func:`fit_intensities` (0: the decoder's intensities, one common gain).

    Returns:
        Voxel-frame ``(z, y, x)`` Gaussians (``B = 1``) in attenuation units.
    """
    from medgmae.zeroshot import zero_shot_gaussians

    vol = _check_volume(fbp_volume)
    host = vol.cpu()  # the scan goes to the CPU for its preparation anyway; the unit check reads it there once
    _warn_if_hu(host, "zero-shot start")
    res = zero_shot_gaussians(mu_to_hu(host, mu_water), zyx_affine(affine), model, spec=spec, overlap=overlap,
                              batch_size=batch_size, min_intensity=min_intensity, source="fbp_volume (as HU)",
                              overrides_warned=overrides_warned)  # fmt: skip
    if res.voxel.num_gaussians == 0:
        raise ValueError(f"the MedGMAE decoder produced no Gaussians inside the volume: {res.no_gaussians_reason()}; "
                         "or start from --init fbp")  # fmt: skip
    g = res.voxel.to(vol.device)
    slope = res.spec.hu_per_unit / 1000.0 * mu_water
    g = Gaussians3D(g.means, g.scales.clamp_min(0.3), g.quats, g.intensities * slope)
    if num_gaussians is not None:
        g = subdivide_gaussians(g, num_gaussians, seed)
    g = calibrate_intensities(g, vol, cutoff) if calibrate else g
    return fit_intensities(g, vol, fit_iterations, cutoff) if fit_iterations else g
