"""Masked ViT encoder shared by MedGMAE (3D), the voxel-MAE baseline, 2D GMAE, GViT and the UNETR fine-tuning.

Built from MONAI's :class:`~monai.networks.blocks.PatchEmbeddingBlock` and
:class:`~monai.networks.blocks.TransformerBlock`, with MONAI ViT's attribute names (``patch_embedding``,
``blocks``, ``norm``) so that its weights drop into MONAI's ``UNETR.vit`` unchanged when the patch size matches.
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import PatchEmbeddingBlock, TransformerBlock
from torch import Tensor

from medgmae.input_scale import IMAGE_SCALE_HOW, VOLUME_SCALE_HOW, warn_off_scale
from medgmae.whole_numbers import positive_sizes

__all__ = ["MaskedViTEncoder", "ViTPreset", "VIT_PRESETS", "batch_tokens", "check_model_input", "quiet_monai_meshgrid",
           "random_masking", "visible_patch_count"]


@contextmanager
def quiet_monai_meshgrid() -> Iterator[None]:
    """Silence torch's ``meshgrid`` indexing notice inside MONAI's sin-cos position embedding, which calls
    ``torch.meshgrid`` without ``indexing=`` (its ``"ij"`` default is what MONAI means); other warnings pass."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.meshgrid: in an upcoming release", category=UserWarning)
        yield


@dataclass(frozen=True)
class ViTPreset:
    """Encoder and decoder widths of a model size."""

    hidden_size: int
    num_layers: int
    num_heads: int
    mlp_ratio: float
    decoder_hidden_size: int
    decoder_num_layers: int
    decoder_num_heads: int


#: ``tiny`` is for CPU tests and demos; ``base`` is ViT-B; ``large`` is the MedGMAE paper's configuration.
VIT_PRESETS: dict[str, ViTPreset] = {
    "tiny": ViTPreset(96, 2, 4, 2.0, 64, 1, 4),
    "small": ViTPreset(384, 6, 6, 4.0, 256, 2, 8),
    "base": ViTPreset(768, 12, 12, 4.0, 512, 8, 16),
    "large": ViTPreset(1536, 12, 16, 4.0, 528, 8, 16),
}


def visible_patch_count(n_tokens: int, mask_ratio: float) -> int:
    """How many of ``n_tokens`` patches the encoder sees under ``mask_ratio``: ``n_tokens * (1 - mask_ratio)``
    rounded to the nearest integer (a half to the even one, as Python's ``round``), at least one.

    MAE and the MedGMAE release truncate (``int``); both give the paper's 128 of 512 patches at 0.75, and rounding
    keeps a product such as ``10 * (1 - 0.9) = 0.999...`` from losing its one visible patch.
    """
    return max(1, int(round(n_tokens * (1.0 - mask_ratio))))


def random_masking(n_tokens: int, batch: int, mask_ratio: float, device, generator: torch.Generator | None = None):
    """MAE's per-sample random masking by argsort of uniform noise.

    Args:
        n_tokens: number of patches N.
        batch: batch size B.
        mask_ratio: fraction of patches to mask, in ``[0, 1)``.
        device: tensor device.
        generator: optional random generator for reproducible masks.

    Returns:
        ``(ids_keep, mask, ids_restore)``: ``(B, N_keep)`` indices of visible patches, ``(B, N)`` mask with 1 for
        masked patches (in the original patch order), ``(B, N)`` permutation that undoes the shuffle.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    n_keep = visible_patch_count(n_tokens, mask_ratio)
    noise = torch.rand(batch, n_tokens, device=device, generator=generator)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :n_keep]
    mask = torch.ones(batch, n_tokens, device=device)
    mask[:, :n_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return ids_keep, mask, ids_restore


def freeze_unused_cross_attn_norms(module: nn.Module) -> None:
    """Freeze the ``norm_cross_attn`` of every MONAI ``TransformerBlock`` in ``module`` built without
    cross-attention: MONAI always builds that LayerNorm, it never receives a gradient, and DistributedDataParallel
    rejects parameters without one. Their weights stay in the state dict. The one place this rule lives (encoders,
    MAE decoders, UNETR, and :func:`medgmae.finetune.weights.set_encoder_trainable` after unfreezing)."""
    for block in module.modules():
        if isinstance(block, TransformerBlock) and not getattr(block, "with_cross_attention", False):
            norm = getattr(block, "norm_cross_attn", None)
            if isinstance(norm, nn.Module):
                norm.requires_grad_(False)


def batch_tokens(token: Tensor, batch: int) -> Tensor:
    """A learnt ``(1, n, C)`` token parameter for each of ``batch`` items, ``token.expand(batch, -1, -1)``, whose
    gradient is a dense tensor of its own.

    Concatenated with other tokens, the expanded view of a batch of one passed a strided view of the concatenation's
    gradient on to the parameter, which DistributedDataParallel copies into its gradient bucket with a warning on
    every torchrun process ("Grad strides do not match bucket view strides"); the product by 1, which changes no
    value, makes the gradient a new dense tensor.
    """
    return token.expand(batch, -1, -1) * 1


class MaskedViTEncoder(nn.Module):
    """ViT over non-overlapping patches with fixed sin-cos positional embedding, a class token and MAE masking.

    Args:
        in_channels: image channels.
        img_size: spatial size, e.g. ``(96, 96, 96)`` or ``(224, 224)``.
        patch_size: patch edge(s); must divide ``img_size``.
        hidden_size: token width.
        num_layers: transformer blocks.
        num_heads: attention heads; must divide ``hidden_size``.
        mlp_ratio: MLP width over ``hidden_size``.
        spatial_dims: 2 or 3.
        dropout_rate: dropout in embedding and blocks.
        qkv_bias: bias in the attention projections.
    """

    def __init__(
        self,
        in_channels: int = 1,
        img_size: Sequence[int] | int = 96,
        patch_size: Sequence[int] | int = 12,
        hidden_size: int = 768,
        num_layers: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        spatial_dims: int = 3,
        dropout_rate: float = 0.0,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        img = positive_sizes(img_size, spatial_dims, "img_size")
        patch = positive_sizes(patch_size, spatial_dims, "patch_size")
        for i, p in zip(img, patch):
            if i % p != 0:
                raise ValueError(f"patch_size {patch} must divide img_size {img}")
        if hidden_size % num_heads != 0:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
        if hidden_size % (2 * spatial_dims) != 0:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by {2 * spatial_dims} for sin-cos embedding")
        self.img_size, self.patch_size, self.spatial_dims = img, patch, spatial_dims
        self.in_channels, self.hidden_size, self.num_layers, self.num_heads = in_channels, hidden_size, num_layers, num_heads
        self.mlp_ratio, self.qkv_bias, self.dropout_rate = mlp_ratio, qkv_bias, dropout_rate
        self.grid_size = tuple(i // p for i, p in zip(img, patch))
        self.num_patches = int(torch.tensor(self.grid_size).prod())
        with quiet_monai_meshgrid():
            self.patch_embedding = PatchEmbeddingBlock(
                in_channels=in_channels,
                img_size=img,
                patch_size=patch,
                hidden_size=hidden_size,
                num_heads=num_heads,
                proj_type="conv",
                pos_embed_type="sincos",
                dropout_rate=dropout_rate,
                spatial_dims=spatial_dims,
            )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        mlp_dim = int(hidden_size * mlp_ratio)
        self.blocks = nn.ModuleList(
            [
                TransformerBlock(hidden_size, mlp_dim, num_heads, dropout_rate, qkv_bias=qkv_bias, use_flash_attention=True)
                for _ in range(num_layers)
            ]
        )
        self.norm = nn.LayerNorm(hidden_size)
        nn.init.normal_(self.cls_token, std=0.02)
        freeze_unused_cross_attn_norms(self)

    def config(self) -> dict:
        """Constructor arguments, saved beside weights so that the encoder can be rebuilt."""
        return dict(
            in_channels=self.in_channels,
            img_size=list(self.img_size),
            patch_size=list(self.patch_size),
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            spatial_dims=self.spatial_dims,
            dropout_rate=self.dropout_rate,
            qkv_bias=self.qkv_bias,
        )

    def patchify(self, x: Tensor) -> Tensor:
        """``(B, C, *img)`` to ``(B, N, C * prod(patch))`` in the token order of the patch embedding."""
        b, c = x.shape[:2]
        g, p = self.grid_size, self.patch_size
        if self.spatial_dims == 3:
            x = x.reshape(b, c, g[0], p[0], g[1], p[1], g[2], p[2]).permute(0, 2, 4, 6, 3, 5, 7, 1)
        else:
            x = x.reshape(b, c, g[0], p[0], g[1], p[1]).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(b, self.num_patches, -1)

    def unpatchify(self, tokens: Tensor, channels: int = 1) -> Tensor:
        """Inverse of :meth:`patchify`."""
        b = tokens.shape[0]
        g, p = self.grid_size, self.patch_size
        if self.spatial_dims == 3:
            x = tokens.reshape(b, *g, *p, channels).permute(0, 7, 1, 4, 2, 5, 3, 6)
        else:
            x = tokens.reshape(b, *g, *p, channels).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, channels, *self.img_size)

    def forward(
        self, x: Tensor, mask_ratio: float = 0.0, generator: torch.Generator | None = None, return_hidden: bool = False
    ):
        """Encode the visible patches.

        Args:
            x: ``(B, C, *img_size)``.
            mask_ratio: fraction of patches hidden from the encoder (0 keeps all, in order).
            generator: optional random generator for the mask.
            return_hidden: also return each block's output (without the class token), for UNETR skips.

        Returns:
            ``(latent, mask, ids_restore[, hidden])``: ``latent`` ``(B, 1 + N_visible, hidden)`` with the class
            token first, ``mask`` ``(B, N)`` (1 = masked), ``ids_restore`` ``(B, N)``, and optionally a list of
            ``(B, N_visible, hidden)`` block outputs.
        """
        if tuple(x.shape[2:]) != self.img_size or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected input (B, {self.in_channels}, {', '.join(map(str, self.img_size))}), got {tuple(x.shape)}"
            )
        tokens = self.patch_embedding(x)
        b, n, _ = tokens.shape
        if mask_ratio > 0:
            ids_keep, mask, ids_restore = random_masking(n, b, mask_ratio, x.device, generator)
            tokens = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        else:
            mask = torch.zeros(b, n, device=x.device)
            ids_restore = torch.arange(n, device=x.device).unsqueeze(0).expand(b, -1)
        tokens = torch.cat([batch_tokens(self.cls_token, b), tokens], dim=1)
        hidden = []
        for blk in self.blocks:
            tokens = blk(tokens)
            if return_hidden:
                hidden.append(tokens[:, 1:])
        latent = self.norm(tokens)
        if return_hidden:
            return latent, mask, ids_restore, hidden
        return latent, mask, ids_restore


def check_model_input(
    x: Tensor, in_channels: int, img_size: Sequence[int], weights: torch.dtype, model: nn.Module | None = None,
    scale: tuple[float, float] = (0.0, 1.0),
) -> None:
    """The input check of every model on a ViT encoder (the masked autoencoders, GViT): a tensor ``(B, C, *img_size)``
    with ``B >= 1``, floating point, in the weights' dtype (or under autocast), finite; ``ValueError`` naming what to
    change otherwise. Values off ``scale`` (a 0-255 image, a CT crop in HU) are warned of once per ``model``
    (:func:`medgmae.input_scale.warn_off_scale`, :func:`~medgmae.twod.images.to_model_input`'s words).

    The finiteness and the range come from one ``aminmax`` (NaN and infinities reach its ends) and one read of its
    two numbers: a training step waits for the device here once, as it did for the finiteness check alone, and the
    reduction costs less than that check's ``isfinite(x).all()`` did.

    Args:
        x: the batch.
        in_channels: ``C``.
        img_size: the spatial size the model takes.
        weights: the dtype of the model's weights.
        model: the model given ``x``, which keeps whether it warned (``None``: the range is not checked).
        scale: the values the model takes (:func:`medgmae.input_scale.model_input_range`).
    """
    size = tuple(int(s) for s in img_size)
    if not isinstance(x, Tensor) or x.dim() != 2 + len(size) or x.shape[1] != in_channels or tuple(x.shape[2:]) != size:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"expected input (B, {in_channels}, {', '.join(map(str, size))}), got {got}")
    if x.shape[0] == 0:
        raise ValueError(f"the input batch is empty: got {tuple(x.shape)}, expected at least one image")
    if not x.is_floating_point():  # autocast casts floats only: an integer input would reach the convolution
        raise ValueError(f"input dtype {x.dtype} is not floating point: the model takes inputs scaled to [0, 1] "
                         f"(convert with x.to({weights}) after scaling)")  # fmt: skip
    if x.dtype != weights and not torch.is_autocast_enabled(x.device.type):
        raise ValueError(f"input dtype {x.dtype} differs from the model's weights ({weights}): convert the input "
                         f"(x.to({weights})) or the model, or run under torch.autocast")  # fmt: skip
    lo, hi = torch.stack(torch.aminmax(x.detach())).tolist()
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("the input holds NaN or infinite values: the model takes inputs scaled to [0, 1] (check "
                         "the data or its pre-processing)")  # fmt: skip
    if model is not None:
        how = VOLUME_SCALE_HOW if len(size) == 3 else f"{IMAGE_SCALE_HOW}; to_model_input makes the batch"
        warn_off_scale(model, x, lo, hi, how, scale)
