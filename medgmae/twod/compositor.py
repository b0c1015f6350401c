"""The 2D splatting conventions and the PyTorch compositor that implements them on any device.

The frame and camera are those of :mod:`medgmae.twod.render`. The conventions below are those of gsplat 1.5's
``"classic"`` rasterisation, which this compositor reproduces so that it is the CPU path and the test oracle of the
gsplat backend (:mod:`medgmae.twod.gsplat_backend`):

* a low-pass dilation of ``EPS2D = 0.3`` pixel^2 is added to the diagonal of every projected 2D covariance,
  without opacity compensation (``rasterize_mode="classic"``, ``eps2d=0.3``);
* ``alpha = min(ALPHA_MAX, o * exp(-d^T Sigma^-1 d / 2))`` with ``ALPHA_MAX = 0.999`` (gsplat's clamp; the
  original 3DGS rasteriser uses 0.99);
* contributions with ``alpha < ALPHA_MIN = 1/255`` are skipped;
* a pixel stops compositing before the Gaussian that would bring its transmittance to ``T_MIN = 1e-4`` or below
  (gsplat's exclusive early stop);
* ``pixel = sum_k c_k alpha_k T_k + T_final * background``.

Compositing is chunked over pixels (and recomputed per chunk in backward), so memory stays about one chunk of
``(B, K, pixels)`` whatever the image size.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from medgmae.rotations import covariance_matrices

__all__ = ["ALPHA_MAX", "ALPHA_MIN", "EPS2D", "T_MIN", "project_gaussians_2d", "render_torch"]

#: Low-pass dilation (pixel^2) added to the projected covariance's diagonal (gsplat's ``eps2d``).
EPS2D = 0.3
#: Upper clamp of a Gaussian's alpha at a pixel (gsplat 1.5).
ALPHA_MAX = 0.999
#: Contributions below this alpha are skipped.
ALPHA_MIN = 1.0 / 255.0
#: Compositing stops before the transmittance would reach this value.
T_MIN = 1e-4
_LOG_T_MIN = math.log(T_MIN)
#: Pixels per chunk are chosen so that one chunk holds about this many ``(B, K, pixels)`` elements.
_CHUNK_ELEMENTS = 1 << 23


def project_gaussians_2d(
    means: Tensor, scales: Tensor, quats: Tensor, image_size: Sequence[int], eps2d: float = EPS2D
) -> tuple[Tensor, Tensor]:
    """Orthographic projection of 3D Gaussians to pixel-space 2D means and dilated covariances.

    Args:
        means: ``(B, K, 3)`` centres, ``x, y`` in ``[-1, 1]`` image-plane units.
        scales: ``(B, K, 3)`` standard deviations in the same units (``W / 2`` pixels along ``x``, ``H / 2`` along
            ``y``, once rotated).
        quats: ``(B, K, 4)`` rotations ``(w, x, y, z)``.
        image_size: ``(H, W)``.
        eps2d: dilation added to the diagonal of the pixel-space covariance.

    Returns:
        ``(means2d, cov2d)``: ``(B, K, 2)`` centres in pixel units (pixel ``j`` has its centre at ``j + 0.5``)
        and ``(B, K, 2, 2)`` covariances in pixel^2, dilated by ``eps2d``.
    """
    h, w = (int(s) for s in image_size)
    focal = means.new_tensor([w / 2.0, h / 2.0])
    means2d = (means[..., :2] + 1.0) * focal
    cov2d = covariance_matrices(scales, quats)[..., :2, :2] * focal.view(2, 1) * focal.view(1, 2)
    cov2d = cov2d + eps2d * torch.eye(2, dtype=cov2d.dtype, device=cov2d.device)
    return means2d, cov2d


def _composite_chunk(means2d: Tensor, conics: Tensor, opacities: Tensor, colors: Tensor, pix: Tensor) -> tuple[Tensor, Tensor]:
    """Front-to-back compositing of depth-sorted Gaussians at a chunk of pixel centres.

    Args:
        means2d: ``(B, K, 2)`` sorted pixel-space centres.
        conics: ``(B, K, 3)`` ``(a, b, c)`` of the inverse covariance ``[[a, b], [b, c]]``.
        opacities: ``(B, K)``.
        colors: ``(B, K, C)``.
        pix: ``(P, 2)`` pixel centres ``(x, y)``.

    Returns:
        ``(B, C, P)`` accumulated colour and ``(B, P)`` final transmittance.
    """
    dx = means2d[..., 0:1] - pix[:, 0]  # (B, K, P)
    dy = means2d[..., 1:2] - pix[:, 1]
    a, b, c = (t.unsqueeze(-1) for t in conics.unbind(-1))
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    alpha = (opacities.unsqueeze(-1) * torch.exp(-sigma)).clamp(max=ALPHA_MAX)
    alpha = torch.where((sigma < 0) | (alpha < ALPHA_MIN), torch.zeros_like(alpha), alpha)
    # transmittances as cumulative sums of log(1 - alpha) (1 - alpha >= 1 - ALPHA_MAX > 0): cheaper to
    # differentiate than cumprod
    with torch.no_grad():  # exclusive early stop: drop the Gaussian that would take T to T_MIN or below, and all after
        alive = torch.cumsum(torch.log1p(-alpha), dim=1) > _LOG_T_MIN
    alpha = alpha * alive
    log_keep = torch.log1p(-alpha)
    log_incl = torch.cumsum(log_keep, dim=1)  # (B, K, P): log T after each Gaussian
    weights = alpha * torch.exp(log_incl - log_keep)  # alpha_k * T before Gaussian k
    image = torch.einsum("bkp,bkc->bcp", weights, colors)
    return image, torch.exp(log_incl[:, -1])


def render_torch(means, scales, quats, colors, opacities, size, background) -> tuple[Tensor, Tensor]:
    """Render validated inputs (see :func:`medgmae.twod.render.render_gaussians_2d`) with the PyTorch compositor.

    Returns:
        ``(B, C, H, W)`` image and ``(B, 1, H, W)`` accumulated opacity ``1 - T_final``.
    """
    h, w = size
    b, k = means.shape[:2]
    means2d, cov2d = project_gaussians_2d(means, scales, quats, size)
    det = cov2d[..., 0, 0] * cov2d[..., 1, 1] - cov2d[..., 0, 1] * cov2d[..., 1, 0]
    conics = torch.stack([cov2d[..., 1, 1], -cov2d[..., 0, 1], cov2d[..., 0, 0]], -1) / det.unsqueeze(-1)
    order = torch.argsort(means[..., 2].detach(), dim=1, stable=True)
    gather = lambda t: torch.gather(t, 1, order.view(b, k, *([1] * (t.dim() - 2))).expand_as(t))  # noqa: E731
    means2d, conics, opacities, colors = gather(means2d), gather(conics), gather(opacities), gather(colors)
    ys, xs = torch.meshgrid(
        torch.arange(h, device=means.device, dtype=means2d.dtype) + 0.5,
        torch.arange(w, device=means.device, dtype=means2d.dtype) + 0.5,
        indexing="ij",
    )
    pix = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1)  # (H*W, 2)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, b * k))
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (means2d, conics, opacities, colors))
    images, trans = [], []
    for start in range(0, pix.shape[0], chunk):
        args = (means2d, conics, opacities, colors, pix[start : start + chunk])
        if needs_grad and pix.shape[0] > chunk:  # recompute per chunk in backward: memory ~ one chunk
            img, t = checkpoint(_composite_chunk, *args, use_reentrant=False)
        else:
            img, t = _composite_chunk(*args)
        images.append(img)
        trans.append(t)
    image = torch.cat(images, -1).reshape(b, -1, h, w)
    t_final = torch.cat(trans, -1).reshape(b, 1, h, w)
    if background is not None:
        image = image + t_final * background.view(-1, background.shape[-1], 1, 1)
    return image, 1.0 - t_final
