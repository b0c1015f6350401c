"""Raw 2D Gaussian vectors: their layout, decoding to renderable parameters, random sampling and token embedding."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
from monai.utils import ensure_tuple_rep
from torch import Tensor
from medgmae.words import plural

__all__ = ["Gaussians2D", "gaussian_dim", "decode_gaussians_2d", "sample_gaussian_tokens", "GaussianTokenEmbedding"]
_MIN_SCALE = 1e-4


def gaussian_dim(channels: int) -> int:
    """Length ``6 + C`` of a raw Gaussian vector for ``C``-channel images (9 for RGB)."""
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    return 6 + channels


@dataclass
class Gaussians2D:
    """A batch of decoded 2D Gaussians in the image-plane frame ``[-1, 1]^2``.

    Attributes:
        means: ``(B, K, 2)`` centres ``(x, y)``; x runs along the image width, y along its height.
        scales: ``(B, K, 2)`` standard deviations along the Gaussian's own axes.
        angles: ``(B, K)`` rotation of the first axis from the x axis, radians.
        colors: ``(B, K, C)`` colours in ``[0, 1]``.
        opacities: ``(B, K)`` opacities in ``[0, 1]``.
    """

    means: Tensor
    scales: Tensor
    angles: Tensor
    colors: Tensor
    opacities: Tensor

    def covariances(self) -> Tensor:
        """``(B, K, 2, 2)`` covariance matrices ``R diag(s^2) R^T``."""
        c, s = torch.cos(self.angles), torch.sin(self.angles)
        rot = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
        return (rot * self.scales.unsqueeze(-2).square()) @ rot.transpose(-1, -2)

    def determinants(self) -> Tensor:
        """``(B, K)`` ``det(Sigma) = (s_x s_y)^2``, the paper's saliency proxy (small = class-relevant)."""
        return (self.scales[..., 0] * self.scales[..., 1]).square()

    def render(self, image_size: Sequence[int] | int, backend: str = "auto") -> Tensor:
        """Render to ``(B, C, H, W)`` with the 2D Gaussian renderer (gsplat on CUDA, PyTorch on CPU)."""
        from medgmae.twod.render import render_planar_gaussians

        size = tuple(ensure_tuple_rep(image_size, 2))
        return render_planar_gaussians(
            self.means, self.scales, self.angles, self.colors, self.opacities, size, backend=backend
        )


def decode_gaussians_2d(g: Tensor, channels: int, scale_factor: float = 1.0) -> Gaussians2D:
    """Activate raw Gaussian vectors ``(B, K, 6 + C)`` into :class:`Gaussians2D`.

    Args:
        g: raw vectors ``(m_x, m_y, s_x, s_y, phi, colour_1..C, o)``.
        channels: number of colour channels ``C``.
        scale_factor: the bound ``c`` of ``scale = c * sigmoid(s)``.
    """
    if g.dim() != 3 or g.shape[-1] != gaussian_dim(channels):
        raise ValueError(f"Gaussians must be (B, K, {gaussian_dim(channels)}) for {plural(channels, 'channel')}, got {tuple(g.shape)}")
    return Gaussians2D(
        means=torch.tanh(g[..., 0:2]),
        scales=(scale_factor * torch.sigmoid(g[..., 2:4])).clamp_min(_MIN_SCALE),
        angles=g[..., 4],
        colors=torch.sigmoid(g[..., 5 : 5 + channels]),
        opacities=torch.sigmoid(g[..., 5 + channels]),
    )


def sample_gaussian_tokens(
    batch: int,
    num_gaussians: int,
    channels: int,
    scale_factor: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Random raw Gaussians ``g0`` ``(B, K, 6 + C)``: the noise the denoising encoder starts from.

    Centres are uniform over ``[-0.9, 0.9]^2``, scales around ``1 / sqrt(K)`` (the spacing of a ``K``-point grid
    on ``[-1, 1]^2``, below the cap ``c``), angles uniform, colours and opacities around 0.5. Sampled on the CPU
    (so that a generator gives the same tokens on every device) and moved to ``device``.
    """
    if batch < 1 or num_gaussians < 1:
        raise ValueError(f"batch and num_gaussians must be >= 1, got {batch} and {num_gaussians}")
    shape = (batch, num_gaussians)
    means = torch.atanh(torch.rand(*shape, 2, generator=generator) * 1.8 - 0.9)
    target = min(1.0 / math.sqrt(num_gaussians), 0.5 * scale_factor)
    scales = math.log(target / (scale_factor - target)) + 0.3 * torch.randn(*shape, 2, generator=generator)
    angles = (torch.rand(*shape, 1, generator=generator) * 2 - 1) * math.pi
    colors = 0.5 * torch.randn(*shape, channels, generator=generator)
    opacities = 0.5 * torch.randn(*shape, 1, generator=generator)
    return torch.cat([means, scales, angles, colors, opacities], -1).to(device)


class GaussianTokenEmbedding(nn.Module):
    """Embeds raw Gaussians as tokens: activated parameters plus Fourier features of the centre, then a linear map.

    Features per Gaussian: centre (2), ``log`` scales (2), ``cos 2 phi`` and ``sin 2 phi`` (an ellipse is the same
    after a half turn), colour (C), opacity (1), and ``sin`` / ``cos`` of the centre at ``num_freqs`` octaves
    (``4 * num_freqs``), which play the part of a positional embedding.

    Args:
        channels: colour channels C.
        hidden_size: token width.
        scale_factor: scale bound ``c`` used to decode the raw vectors.
        num_freqs: Fourier octaves of the centre.
    """

    def __init__(self, channels: int, hidden_size: int, scale_factor: float = 1.0, num_freqs: int = 6) -> None:
        super().__init__()
        if num_freqs < 0:
            raise ValueError(f"num_freqs must be >= 0, got {num_freqs}")
        self.channels, self.scale_factor, self.num_freqs = channels, scale_factor, num_freqs
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(num_freqs, dtype=torch.float32), persistent=False)
        self.proj = nn.Linear(7 + channels + 4 * num_freqs, hidden_size)

    def forward(self, g: Tensor) -> Tensor:
        """``(B, K, 6 + C)`` raw Gaussians to ``(B, K, hidden_size)`` tokens."""
        d = decode_gaussians_2d(g, self.channels, self.scale_factor)
        two_phi = 2 * d.angles.unsqueeze(-1)
        feats = [d.means, torch.log(d.scales), torch.cos(two_phi), torch.sin(two_phi), d.colors, d.opacities.unsqueeze(-1)]
        if self.num_freqs:
            ang = d.means.unsqueeze(-1) * self.freqs.to(g.dtype)  # (B, K, 2, F)
            feats += [torch.sin(ang).flatten(-2), torch.cos(ang).flatten(-2)]
        return self.proj(torch.cat(feats, -1))
