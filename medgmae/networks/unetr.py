"""UNETR around the pre-trained :class:`~medgmae.networks.vit.MaskedViTEncoder`, for any patch size.

MONAI's :class:`~monai.networks.nets.UNETR` fixes the patch size to 16 and the depth to 12. The MedGMAE encoder is
pre-trained with 12^3 patches on 96^3 crops (and may be of any width and depth), so this module rebuilds the same
architecture from MONAI's UNETR blocks (:class:`~monai.networks.blocks.UnetrBasicBlock`,
:class:`~monai.networks.blocks.UnetrPrUpBlock`, :class:`~monai.networks.blocks.UnetrUpBlock`,
:class:`~monai.networks.blocks.UnetOutBlock`) around the encoder as it is.

Decoder design. Like UNETR, the decoder has four stages that go from the token grid back to the input resolution;
the skips come from the input (``encoder1``) and from the outputs of the blocks of 0-based indices ``depth // 4``,
``depth // 2`` and ``3 * depth // 4`` (3, 6 and 9 of 12: the 4th, 7th and 10th blocks, as MONAI's UNETR, whose
weights this keeps; the UNETR paper's z3, z6, z9 are the outputs of the 3rd, 6th and 9th). The up-sampling factor of each stage is
derived from the patch size, per axis, by :func:`upsample_factors`: the prime factors of the patch edge, largest
first (coarsest stage first); more than four factors are folded by multiplying the two smallest, fewer than four are
padded with factor 1 at the coarsest stages (a stage that fuses at the token resolution). So 16 gives
``2, 2, 2, 2`` (UNETR), 12 gives ``1, 3, 2, 2`` (the odd factor is folded into one x3 up-block) and 32 gives
``4, 2, 2, 2``. Each transposed convolution uses its factor as kernel and stride, as UNETR does. The projection path
of a transformer skip groups consecutive equal factors into one :class:`UnetrPrUpBlock` (its ``num_layer`` counts
the extra steps), so with 16^3 patches every block, and every parameter name apart from ``vit.cls_token``, is the
same as in MONAI's UNETR.
"""

from __future__ import annotations

from typing import Sequence

import torch.nn as nn
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock
from torch import Tensor

from medgmae.networks.vit import MaskedViTEncoder, freeze_unused_cross_attn_norms

__all__ = ["MedGMAEUNETR", "upsample_factors", "skip_layer_indices"]

NUM_STAGES = 4


def _prime_factors(n: int) -> list[int]:
    factors, p = [], 2
    while p * p <= n:
        while n % p == 0:
            factors.append(p)
            n //= p
        p += 1
    if n > 1:
        factors.append(n)
    return factors


def upsample_factors(patch_size: Sequence[int], num_stages: int = NUM_STAGES) -> list[tuple[int, ...]]:
    """Per-stage, per-axis up-sampling factors whose product along each axis is the patch edge.

    Args:
        patch_size: patch edge per spatial axis, e.g. ``(12, 12, 12)``.
        num_stages: decoder stages.

    Returns:
        ``num_stages`` tuples (coarsest stage first), each with one factor per axis.

    Example:
        >>> upsample_factors((12, 16, 32))
        [(1, 2, 4), (3, 2, 2), (2, 2, 2), (2, 2, 2)]
    """
    if num_stages < 1:
        raise ValueError(f"num_stages must be >= 1, got {num_stages}")
    per_axis = []
    for p in patch_size:
        if int(p) < 1:
            raise ValueError(f"patch_size entries must be >= 1, got {tuple(patch_size)}")
        f = sorted(_prime_factors(int(p)), reverse=True)
        while len(f) > num_stages:  # fold the two smallest factors into one stage
            a, b = f.pop(), f.pop()
            f = sorted(f + [a * b], reverse=True)
        per_axis.append([1] * (num_stages - len(f)) + f)
    return [tuple(axis[s] for axis in per_axis) for s in range(num_stages)]


def skip_layer_indices(num_layers: int) -> tuple[int, int, int]:
    """0-based indices of the transformer blocks whose outputs feed the three transformer skips (3, 6, 9 for 12
    blocks: the 4th, 7th and 10th, as MONAI's UNETR)."""
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    return tuple(min(num_layers - 1, k * num_layers // 4) for k in (1, 2, 3))  # type: ignore[return-value]


class MedGMAEUNETR(nn.Module):
    """UNETR whose ViT is a :class:`MaskedViTEncoder` of any patch size, width and depth.

    Args:
        out_channels: segmentation classes (background included).
        encoder: the encoder to wrap (kept as ``self.vit``); built from ``encoder_kwargs`` when ``None``.
        feature_size: decoder width at full resolution (UNETR's ``feature_size``).
        norm_name: decoder normalisation.
        res_block: residual convolution blocks in the decoder.
        encoder_kwargs: :class:`MaskedViTEncoder` arguments when ``encoder`` is ``None``.

    Shapes:
        input ``(B, in_channels, *encoder.img_size)``, output ``(B, out_channels, *encoder.img_size)`` logits.
    """

    def __init__(
        self,
        out_channels: int,
        encoder: MaskedViTEncoder | None = None,
        feature_size: int = 16,
        norm_name: tuple | str = "instance",
        res_block: bool = True,
        **encoder_kwargs,
    ) -> None:
        super().__init__()
        if out_channels < 1:
            raise ValueError(f"out_channels must be >= 1, got {out_channels}")
        if feature_size < 1:
            raise ValueError(f"feature_size must be >= 1, got {feature_size}")
        if encoder is None:
            encoder = MaskedViTEncoder(**encoder_kwargs)
        elif encoder_kwargs:
            raise ValueError(f"pass either an encoder or encoder keyword arguments, not both: {sorted(encoder_kwargs)}")
        self.vit = encoder
        self.out_channels, self.feature_size = out_channels, feature_size
        dims, hidden, fs = encoder.spatial_dims, encoder.hidden_size, feature_size
        self.stages = upsample_factors(encoder.patch_size)
        self.skip_layers = skip_layer_indices(encoder.num_layers)
        common = dict(spatial_dims=dims, kernel_size=3, norm_name=norm_name, res_block=res_block)

        self.encoder1 = UnetrBasicBlock(in_channels=encoder.in_channels, out_channels=fs, stride=1, **common)
        self.encoder2 = self._projection(hidden, fs * 2, self.stages[:3], common)
        self.encoder3 = self._projection(hidden, fs * 4, self.stages[:2], common)
        self.encoder4 = self._projection(hidden, fs * 8, self.stages[:1], common)
        self.decoder5 = UnetrUpBlock(in_channels=hidden, out_channels=fs * 8, upsample_kernel_size=self.stages[0], **common)
        self.decoder4 = UnetrUpBlock(in_channels=fs * 8, out_channels=fs * 4, upsample_kernel_size=self.stages[1], **common)
        self.decoder3 = UnetrUpBlock(in_channels=fs * 4, out_channels=fs * 2, upsample_kernel_size=self.stages[2], **common)
        self.decoder2 = UnetrUpBlock(in_channels=fs * 2, out_channels=fs, upsample_kernel_size=self.stages[3], **common)
        self.out = UnetOutBlock(spatial_dims=dims, in_channels=fs, out_channels=out_channels)
        freeze_unused_cross_attn_norms(self)

    @staticmethod
    def _projection(hidden: int, channels: int, stages: list[tuple[int, ...]], common: dict) -> nn.Module:
        """UNETR's projection-upsampling path for a transformer skip: runs of equal factors share one block."""
        ones = tuple(1 for _ in stages[0])
        steps = [s for s in stages if s != ones] or [ones]
        runs: list[list[tuple[int, ...]]] = []
        for s in steps:
            if runs and runs[-1][0] == s:
                runs[-1].append(s)
            else:
                runs.append([s])
        blocks = [
            UnetrPrUpBlock(
                spatial_dims=common["spatial_dims"],
                in_channels=hidden if i == 0 else channels,
                out_channels=channels,
                num_layer=len(run) - 1,
                kernel_size=3,
                stride=1,
                upsample_kernel_size=run[0],
                norm_name=common["norm_name"],
                conv_block=True,
                res_block=common["res_block"],
            )
            for i, run in enumerate(runs)
        ]
        return blocks[0] if len(blocks) == 1 else nn.Sequential(*blocks)

    def config(self) -> dict:
        """Constructor arguments (with the encoder's), to rebuild the network beside its weights."""
        return dict(out_channels=self.out_channels, feature_size=self.feature_size, **self.vit.config())

    def proj_feat(self, tokens: Tensor) -> Tensor:
        """``(B, N, hidden)`` tokens in patch order to a ``(B, hidden, *grid)`` feature map."""
        b, _, c = tokens.shape
        x = tokens.reshape(b, *self.vit.grid_size, c)
        return x.permute(0, x.ndim - 1, *range(1, x.ndim - 1)).contiguous()

    def forward(self, x_in: Tensor) -> Tensor:
        """Segment ``x_in`` ``(B, C, *img_size)`` into ``(B, out_channels, *img_size)`` logits."""
        latent, _, _, hidden = self.vit(x_in, return_hidden=True)
        enc1 = self.encoder1(x_in)
        enc2 = self.encoder2(self.proj_feat(hidden[self.skip_layers[0]]))
        enc3 = self.encoder3(self.proj_feat(hidden[self.skip_layers[1]]))
        enc4 = self.encoder4(self.proj_feat(hidden[self.skip_layers[2]]))
        dec4 = self.proj_feat(latent[:, 1:])
        dec3 = self.decoder5(dec4, enc4)
        dec2 = self.decoder4(dec3, enc3)
        dec1 = self.decoder3(dec2, enc2)
        return self.out(self.decoder2(dec1, enc1))
