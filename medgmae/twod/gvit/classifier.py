"""Classifiers: the Gaussian-token ViT of GViT and the patch-token ViT baseline."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import TransformerBlock
from torch import Tensor

from medgmae.networks.vit import VIT_PRESETS, MaskedViTEncoder
from medgmae.twod.gvit.tokens import GaussianTokenEmbedding, gaussian_dim
from medgmae.whole_numbers import positive_count

__all__ = ["GaussianViTClassifier", "PatchViTClassifier", "vit_preset"]


def vit_preset(model_size: str):
    """The :data:`~medgmae.networks.vit.VIT_PRESETS` entry of ``model_size``; ValueError for an unknown size."""
    if model_size not in VIT_PRESETS:
        raise ValueError(f"model_size must be one of {sorted(VIT_PRESETS)}, got {model_size!r}")
    return VIT_PRESETS[model_size]


#: Default Fourier octaves of the classifier's centre features (the paper's classifier has none: a linear projection
#: and learnt position embeddings).
CLASSIFIER_FREQS = 2

#: The octaves of classifiers made before they were a setting: what a ``model.pt`` or phase checkpoint that records
#: none was made with.
LEGACY_CLASSIFIER_FREQS = 6


class GaussianViTClassifier(nn.Module):
    """ViT over Gaussian tokens with a class token; any number of Gaussians, independent of their order.

    Args:
        channels: colour channels C of the Gaussians.
        num_classes: number of classes.
        hidden_size, num_layers, num_heads, mlp_ratio: ViT width and depth.
        scale_factor: scale bound ``c`` used to decode the raw Gaussians.
        num_freqs: Fourier octaves of the centres in the token embedding (:data:`CLASSIFIER_FREQS` by default: the
            finest period is half the image; with 6 octaves it was under a pixel of a 24-pixel image, and a
            classifier trained on the Gaussians of one ``g0`` learnt their exact sub-pixel centres, at chance for
            any other ``g0`` and lost once the joint phase moved them).
        dropout_rate: dropout in the transformer blocks.
    """

    def __init__(
        self,
        channels: int = 3,
        num_classes: int = 2,
        hidden_size: int = 96,
        num_layers: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        scale_factor: float = 1.0,
        num_freqs: int = CLASSIFIER_FREQS,
        dropout_rate: float = 0.0,
    ) -> None:
        super().__init__()
        num_classes = positive_count(num_classes, "num_classes")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if hidden_size % num_heads != 0:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
        self.channels, self.num_classes, self.scale_factor, self.num_freqs = channels, num_classes, scale_factor, num_freqs
        self.hidden_size, self.num_layers, self.num_heads, self.mlp_ratio = hidden_size, num_layers, num_heads, mlp_ratio
        self.embed = GaussianTokenEmbedding(channels, hidden_size, scale_factor, num_freqs)
        self.cls_token = nn.Parameter(torch.randn(1, 1, hidden_size) * 0.02)
        mlp_dim = int(hidden_size * mlp_ratio)
        self.blocks = nn.ModuleList(
            [TransformerBlock(hidden_size, mlp_dim, num_heads, dropout_rate, qkv_bias=True, use_flash_attention=True) for _ in range(num_layers)]
        )
        self.norm = nn.LayerNorm(hidden_size)
        self.head = nn.Linear(hidden_size, num_classes)

    def config(self) -> dict:
        """Constructor arguments."""
        return dict(
            channels=self.channels, num_classes=self.num_classes, hidden_size=self.hidden_size,
            num_layers=self.num_layers, num_heads=self.num_heads, mlp_ratio=self.mlp_ratio,
            scale_factor=self.scale_factor, num_freqs=self.num_freqs,
        )  # fmt: skip

    def forward(self, g: Tensor) -> Tensor:
        """``(B, K, 6 + C)`` raw Gaussians (any ``K >= 1``) to ``(B, num_classes)`` logits."""
        if g.dim() != 3 or g.shape[-1] != gaussian_dim(self.channels) or g.shape[1] < 1:
            raise ValueError(f"expected Gaussians (B, K>=1, {gaussian_dim(self.channels)}), got {tuple(g.shape)}")
        tokens = self.embed(g)
        tokens = torch.cat([self.cls_token.expand(g.shape[0], -1, -1).to(tokens.dtype), tokens], dim=1)
        for blk in self.blocks:
            tokens = blk(tokens)
        return self.head(self.norm(tokens[:, 0]))

class PatchViTClassifier(nn.Module):
    """Patch-token ViT classifier (class-token readout), the baseline GViT is compared with.

    Args:
        in_channels: image channels.
        img_size: image size.
        num_classes: number of classes.
        model_size: a :data:`~medgmae.networks.vit.VIT_PRESETS` key (same widths as GViT's classifier).
        patch_size: patch edge.
    """

    kind = "patch-vit"

    def __init__(
        self,
        in_channels: int = 3,
        img_size: Sequence[int] | int = 32,
        num_classes: int = 2,
        model_size: str = "tiny",
        patch_size: Sequence[int] | int = 4,
    ) -> None:
        super().__init__()
        num_classes = positive_count(num_classes, "num_classes")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        p = vit_preset(model_size)
        self.model_size = model_size
        self.vit = MaskedViTEncoder(in_channels, img_size, patch_size, p.hidden_size, p.num_layers, p.num_heads, p.mlp_ratio, spatial_dims=2)
        self.head = nn.Linear(p.hidden_size, num_classes)

    def config(self) -> dict:
        """Constructor arguments."""
        v = self.vit
        return dict(in_channels=v.in_channels, img_size=list(v.img_size), num_classes=self.head.out_features,
                    model_size=self.model_size, patch_size=list(v.patch_size))  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        """Images ``(B, C, H, W)`` to logits ``(B, num_classes)``."""
        latent = self.vit(x)[0]
        return self.head(latent[:, 0])
