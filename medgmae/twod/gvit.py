"""GViT: images as sets of 2D Gaussians for classification.

A 2D Gaussian is a vector of ``6 + C`` raw numbers ``g = (m_x, m_y, s_x, s_y, phi, colour_1..C, o)``: for RGB
images that is the paper's 9 numbers (centre 2, scale 2, rotation angle 1, colour 3, opacity 1). The raw vector
is what the encoder predicts, what the classifier reads and what the guidance gradient of equation (1) acts on;
:func:`decode_gaussians_2d` maps it to renderable parameters:

* centre ``tanh(m)`` in the image-plane frame ``[-1, 1]^2`` (x along the width, y along the height),
* scales ``c * sigmoid(s)`` (standard deviations in the same frame; ``c`` = ``scale_factor``, the paper's best 1.0),
* rotation angle ``phi`` in radians (unbounded, used through ``cos`` / ``sin``),
* colour and opacity ``sigmoid``.

Modules:

* :class:`DenoisingGaussianEncoder`: image patches plus ``K`` randomly sampled Gaussian tokens ``g0`` through a
  ViT (:class:`~medgmae.networks.vit.MaskedViTEncoder`); an MLP on the Gaussian outputs predicts a residual,
  ``g = g0 + delta``. ``mode="queries"`` is the learned-query variant (``K`` learned tokens, ``g = MLP(x)``).
* :class:`GaussianViTClassifier`: a ViT whose tokens are embedded Gaussians (no patches, no index positions:
  a Gaussian's position is its centre), with a class token. It takes any number ``K`` of Gaussians and its
  output does not depend on their order.
* :class:`GViT`: the encoder and the classifier together; ``forward(image) -> logits``.
* :class:`PatchViTClassifier`: the patch-token ViT baseline of the same width and depth as the classifier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import TransformerBlock
from monai.utils import ensure_tuple_rep
from torch import Tensor

from medgmae.networks.vit import VIT_PRESETS, MaskedViTEncoder

__all__ = [
    "Gaussians2D",
    "gaussian_dim",
    "decode_gaussians_2d",
    "sample_gaussian_tokens",
    "GaussianTokenEmbedding",
    "DenoisingGaussianEncoder",
    "GaussianViTClassifier",
    "GViT",
    "PatchViTClassifier",
    "ENCODER_MODES",
]

ENCODER_MODES = ("denoising", "queries")
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
        from medgmae.twod.render import render_2d_gaussians

        size = tuple(ensure_tuple_rep(image_size, 2))
        return render_2d_gaussians(self.means, self.scales, self.angles, self.colors, self.opacities, size, backend=backend)


def decode_gaussians_2d(g: Tensor, channels: int, scale_factor: float = 1.0) -> Gaussians2D:
    """Activate raw Gaussian vectors ``(B, K, 6 + C)`` into :class:`Gaussians2D`.

    Args:
        g: raw vectors ``(m_x, m_y, s_x, s_y, phi, colour_1..C, o)``.
        channels: number of colour channels ``C``.
        scale_factor: the bound ``c`` of ``scale = c * sigmoid(s)``.
    """
    if g.dim() != 3 or g.shape[-1] != gaussian_dim(channels):
        raise ValueError(f"Gaussians must be (B, K, {gaussian_dim(channels)}) for {channels} channel(s), got {tuple(g.shape)}")
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


def _mlp(hidden_size: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, out_dim))


class DenoisingGaussianEncoder(nn.Module):
    """Predicts ``K`` raw Gaussians per image.

    ``mode="denoising"`` (default): the tokens are ``[cls, patches, embed(g0)]`` with ``g0`` random Gaussians;
    the MLP head reads the Gaussian outputs and predicts ``delta``; returns ``g0 + delta``. The last head layer
    starts at zero, so an untrained encoder returns ``g0``. In eval mode, ``g0`` is drawn from a generator seeded
    with ``eval_seed`` so that predictions are deterministic.

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
        if num_gaussians < 1:
            raise ValueError(f"num_gaussians must be >= 1, got {num_gaussians}")
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
        """``g0`` ``(B, K, 6 + C)``: random tokens (denoising) or zeros (queries)."""
        if self.mode == "queries":
            return torch.zeros(batch, self.num_gaussians, gaussian_dim(self.in_channels), device=device)
        if generator is None and not self.training:
            generator = torch.Generator().manual_seed(self.eval_seed)
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
        if x.dim() != 4 or tuple(x.shape[1:]) != (self.in_channels, *self.vit.img_size):
            size = ", ".join(map(str, self.vit.img_size))
            raise ValueError(f"expected images (B, {self.in_channels}, {size}), got {tuple(x.shape)}")
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


class GaussianViTClassifier(nn.Module):
    """ViT over Gaussian tokens with a class token; any number of Gaussians, independent of their order.

    Args:
        channels: colour channels C of the Gaussians.
        num_classes: number of classes.
        hidden_size, num_layers, num_heads, mlp_ratio: ViT width and depth.
        scale_factor: scale bound ``c`` used to decode the raw Gaussians.
        num_freqs: Fourier octaves of the centres in the token embedding.
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
        num_freqs: int = 6,
        dropout_rate: float = 0.0,
    ) -> None:
        super().__init__()
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


def _preset(model_size: str):
    if model_size not in VIT_PRESETS:
        raise ValueError(f"model_size must be one of {sorted(VIT_PRESETS)}, got {model_size!r}")
    return VIT_PRESETS[model_size]


class GViT(nn.Module):
    """Gaussian encoder plus Gaussian-token classifier; ``forward(images) -> logits``.

    Args:
        in_channels: image channels (1 or 3).
        img_size: image size ``(H, W)`` or an int.
        num_classes: number of classes.
        num_gaussians: K Gaussians per image.
        model_size: a :data:`~medgmae.networks.vit.VIT_PRESETS` key, used for the encoder and the classifier.
        patch_size: encoder patch edge.
        mode: encoder variant, ``"denoising"`` or ``"queries"``.
        scale_factor: the scale bound ``c``.
    """

    kind = "gvit"

    def __init__(
        self,
        in_channels: int = 3,
        img_size: Sequence[int] | int = 32,
        num_classes: int = 2,
        num_gaussians: int = 64,
        model_size: str = "tiny",
        patch_size: Sequence[int] | int = 4,
        mode: str = "denoising",
        scale_factor: float = 1.0,
    ) -> None:
        super().__init__()
        p = _preset(model_size)
        self.model_size = model_size
        self.encoder = DenoisingGaussianEncoder(
            in_channels, img_size, patch_size, num_gaussians, p.hidden_size, p.num_layers, p.num_heads, p.mlp_ratio,
            mode=mode, scale_factor=scale_factor,
        )  # fmt: skip
        self.classifier = GaussianViTClassifier(
            in_channels, num_classes, p.hidden_size, p.num_layers, p.num_heads, p.mlp_ratio, scale_factor
        )

    @property
    def img_size(self) -> tuple[int, int]:
        return tuple(self.encoder.vit.img_size)

    @property
    def in_channels(self) -> int:
        return self.encoder.in_channels

    @property
    def num_classes(self) -> int:
        return self.classifier.num_classes

    def config(self) -> dict:
        """Constructor arguments, saved beside the weights."""
        e = self.encoder
        return dict(
            in_channels=e.in_channels, img_size=list(e.vit.img_size), num_classes=self.classifier.num_classes,
            num_gaussians=e.num_gaussians, model_size=self.model_size, patch_size=list(e.vit.patch_size),
            mode=e.mode, scale_factor=e.scale_factor,
        )  # fmt: skip

    def gaussians(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Raw Gaussians ``(B, K, 6 + C)`` of images ``x``."""
        return self.encoder(x, generator=generator)

    def forward(self, x: Tensor) -> Tensor:
        """Images ``(B, C, H, W)`` in ``[0, 1]`` to logits ``(B, num_classes)``."""
        return self.classifier(self.encoder(x))

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location="cpu") -> "GViT":
        """Rebuild from a ``model.pt`` (``{"kind": "gvit", "config", "state_dict"}``) or a training checkpoint
        (a dict with ``"model"`` and ``"config"``)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {path}")
        try:
            ckpt = torch.load(path, map_location=map_location, weights_only=False)
        except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupt file
            raise ValueError(f"cannot read model file {path}: {e}") from e
        if not isinstance(ckpt, dict) or "config" not in ckpt:
            raise ValueError(f"{path} is not a GViT model file (no 'config' entry)")
        if "state_dict" in ckpt:
            if ckpt.get("kind") != cls.kind:
                raise ValueError(f"{path} holds a model of kind {ckpt.get('kind')!r}, expected {cls.kind!r}")
            state = ckpt["state_dict"]
        elif "model" in ckpt:
            state = ckpt["model"]
        else:
            raise ValueError(f"{path} has neither 'state_dict' nor 'model' weights")
        model = cls(**ckpt["config"])
        model.load_state_dict(state)
        model.class_names = ckpt.get("class_names")
        return model

    def save(self, path: str | Path, class_names: Sequence[str] | None = None) -> None:
        """Write ``model.pt`` (``{"kind": "gvit", "config", "state_dict", "class_names"}``) atomically."""
        from medgmae.engine import atomic_write

        names = list(class_names) if class_names is not None else getattr(self, "class_names", None)
        with atomic_write(path) as tmp:
            torch.save({"kind": self.kind, "config": self.config(), "state_dict": self.state_dict(), "class_names": names}, tmp)


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
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        p = _preset(model_size)
        self.model_size = model_size
        self.vit = MaskedViTEncoder(in_channels, img_size, patch_size, p.hidden_size, p.num_layers, p.num_heads, p.mlp_ratio, spatial_dims=2)
        self.head = nn.Linear(p.hidden_size, num_classes)

    def config(self) -> dict:
        v = self.vit
        return dict(in_channels=v.in_channels, img_size=list(v.img_size), num_classes=self.head.out_features,
                    model_size=self.model_size, patch_size=list(v.patch_size))  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        """Images ``(B, C, H, W)`` to logits ``(B, num_classes)``."""
        latent = self.vit(x)[0]
        return self.head(latent[:, 0])
