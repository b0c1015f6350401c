"""The Gaussian encoder: images to ``K`` raw Gaussians (denoising or learned-query variant)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
from torch import Tensor

from medgmae.networks.vit import MaskedViTEncoder, check_model_input
from medgmae.whole_numbers import positive_count
from medgmae.twod.gvit.tokens import GaussianTokenEmbedding, Gaussians2D, decode_gaussians_2d, gaussian_dim, sample_gaussian_tokens

__all__ = ["ENCODER_MODES", "DenoisingGaussianEncoder"]

ENCODER_MODES = ("denoising", "queries")


def _mlp(hidden_size: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, out_dim))


class DenoisingGaussianEncoder(nn.Module):
    """Predicts ``K`` raw Gaussians per image.

    ``mode="denoising"`` (default): the tokens are ``[cls, patches, embed(g0)]`` with ``g0`` random Gaussians;
    the MLP head reads the Gaussian outputs and predicts ``delta``; returns ``g0 + delta``. The last head layer
    starts at zero, so an untrained encoder returns ``g0``. In eval mode (and no generator given), every image
    starts from the same ``g0``, drawn from a generator seeded with ``eval_seed``, so that a prediction is
    deterministic and independent of the batch it is in.

    ``mode="queries"``: ``K`` learned query tokens replace ``embed(g0)`` and the head predicts ``g`` directly.

    Args:
        in_channels: image channels C (1 or 3); the Gaussians carry C colours.
        img_size: image size ``(H, W)`` or an int.
        patch_size: patch edge(s).
        num_gaussians: K.
        hidden_size, num_layers, num_heads, mlp_ratio: ViT width and depth.
        mode: ``"denoising"`` or ``"queries"``.
        scale_factor: the bound ``c`` of ``scale = c * sigmoid(s)``.
        eval_seed: seed of ``g0`` in eval mode.
    """

    def __init__(
        self,
        in_channels: int = 3,
        img_size: Sequence[int] | int = 32,
        patch_size: Sequence[int] | int = 4,
        num_gaussians: int = 64,
        hidden_size: int = 96,
        num_layers: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        mode: str = "denoising",
        scale_factor: float = 1.0,
        eval_seed: int = 0,
    ) -> None:
        super().__init__()
        if mode not in ENCODER_MODES:
            raise ValueError(f"mode must be one of {ENCODER_MODES}, got {mode!r}")
        num_gaussians = positive_count(num_gaussians, "num_gaussians")
        if not scale_factor > 0:
            raise ValueError(f"scale_factor must be > 0, got {scale_factor}")
        self.vit = MaskedViTEncoder(
            in_channels, img_size, patch_size, hidden_size, num_layers, num_heads, mlp_ratio, spatial_dims=2
        )
        self.in_channels, self.num_gaussians, self.mode = in_channels, num_gaussians, mode
        self.scale_factor, self.eval_seed = scale_factor, eval_seed
        dim = gaussian_dim(in_channels)
        if mode == "denoising":
            self.gaussian_embed = GaussianTokenEmbedding(in_channels, hidden_size, scale_factor)
        else:
            self.queries = nn.Parameter(torch.randn(1, num_gaussians, hidden_size) * 0.02)
        self.gaussian_type = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.head = _mlp(hidden_size, dim)
        if mode == "denoising":
            nn.init.zeros_(self.head[-1].weight)
            nn.init.zeros_(self.head[-1].bias)

    def config(self) -> dict:
        """Constructor arguments."""
        v = self.vit
        return dict(
            in_channels=self.in_channels, img_size=list(v.img_size), patch_size=list(v.patch_size),
            num_gaussians=self.num_gaussians, hidden_size=v.hidden_size, num_layers=v.num_layers,
            num_heads=v.num_heads, mlp_ratio=v.mlp_ratio, mode=self.mode, scale_factor=self.scale_factor,
            eval_seed=self.eval_seed,
        )  # fmt: skip

    def initial_gaussians(self, batch: int, device, generator: torch.Generator | None = None) -> Tensor:
        """``g0`` ``(B, K, 6 + C)``: random tokens (denoising; in eval mode without ``generator`` one seeded draw
        shared by the batch) or zeros (queries)."""
        if self.mode == "queries":
            return torch.zeros(batch, self.num_gaussians, gaussian_dim(self.in_channels), device=device)
        if generator is None and not self.training:  # one seeded g0 for every image: a prediction is the image's
            generator = torch.Generator().manual_seed(self.eval_seed)  # alone, whatever its batch and place in it
            one = sample_gaussian_tokens(1, self.num_gaussians, self.in_channels, self.scale_factor, generator, device)
            return one.expand(batch, -1, -1)
        return sample_gaussian_tokens(batch, self.num_gaussians, self.in_channels, self.scale_factor, generator, device)

    def forward(self, x: Tensor, g0: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Predict raw Gaussians.

        Args:
            x: images ``(B, C, H, W)`` scaled to ``[0, 1]``.
            g0: optional initial Gaussians ``(B, K, 6 + C)`` (denoising mode); drawn at random when omitted.
            generator: random generator for ``g0``.

        Returns:
            ``(B, K, 6 + C)`` raw Gaussians ``g = g0 + delta`` (denoising) or ``g = MLP(x)`` (queries).
        """
        check_model_input(x, self.in_channels, self.vit.img_size, next(self.parameters()).dtype, self)
        b = x.shape[0]
        patches = self.vit.patch_embedding(x)
        if g0 is None:
            g0 = self.initial_gaussians(b, x.device, generator)
        elif tuple(g0.shape) != (b, self.num_gaussians, gaussian_dim(self.in_channels)):
            raise ValueError(f"g0 must be {(b, self.num_gaussians, gaussian_dim(self.in_channels))}, got {tuple(g0.shape)}")
        g0 = g0.to(x.dtype)  # the residual sum stays in the input precision under autocast
        gtok = self.gaussian_embed(g0) if self.mode == "denoising" else self.queries.expand(b, -1, -1)
        tokens = torch.cat([self.vit.cls_token.expand(b, -1, -1), patches, gtok + self.gaussian_type], dim=1)
        for blk in self.vit.blocks:
            tokens = blk(tokens)
        tokens = self.vit.norm(tokens)
        return g0 + self.head(tokens[:, -self.num_gaussians :]).to(g0.dtype)

    def decode(self, g: Tensor) -> Gaussians2D:
        """Activated Gaussians of raw ``g``."""
        return decode_gaussians_2d(g, self.in_channels, self.scale_factor)
