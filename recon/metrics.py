"""Image-quality metrics for reconstructions.

Normalisation: both volumes are compared on the reference's dynamic range ``R = max(ref) - min(ref)``
(attenuation units, nothing is clipped or rescaled):

* ``PSNR = 10 log10(R^2 / MSE)`` over all voxels;
* ``SSIM``: 3D SSIM (scikit-image, 7^3 uniform window, ``data_range = R``, K1 = 0.01, K2 = 0.03), averaged over
  the volume; volumes with a side shorter than 7 use the largest odd window that fits.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["psnr", "ssim", "evaluate"]


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _check(recon: np.ndarray, reference: np.ndarray) -> float:
    if recon.shape != reference.shape:
        raise ValueError(f"reconstruction shape {recon.shape} does not match the reference's {reference.shape}")
    if not (np.isfinite(recon).all() and np.isfinite(reference).all()):
        raise ValueError("volumes must be finite (found NaN or Inf)")
    rng = float(reference.max() - reference.min())
    if rng <= 0:
        raise ValueError("the reference is constant: PSNR/SSIM are undefined")
    return rng


def psnr(recon, reference) -> float:
    """PSNR in dB on the reference's range (see the module docstring)."""
    r, ref = _np(recon), _np(reference)
    rng = _check(r, ref)
    mse = float(np.mean((r - ref) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(rng * rng / mse)


def ssim(recon, reference) -> float:
    """Mean 3D SSIM on the reference's range (see the module docstring)."""
    from skimage.metrics import structural_similarity

    r, ref = _np(recon), _np(reference)
    rng = _check(r, ref)
    win = min(7, *(s if s % 2 else s - 1 for s in ref.shape))
    if win < 3:
        raise ValueError(f"volumes of shape {ref.shape} are too small for SSIM")
    return float(structural_similarity(r, ref, data_range=rng, win_size=win))


def evaluate(recon, reference) -> dict:
    """``{"psnr", "ssim", "data_range"}`` of ``recon`` against ``reference``."""
    ref = _np(reference)
    return {"psnr": psnr(recon, ref), "ssim": ssim(recon, ref), "data_range": float(ref.max() - ref.min())}
