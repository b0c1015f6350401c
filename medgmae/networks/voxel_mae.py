"""Voxel-MAE baseline: MedGMAE's encoder with MAE's decoder, predicting the voxels of every patch.

The decoder follows MAE: visible tokens are projected to the decoder width, mask tokens are put back in the
patch order, the sin-cos embedding of every patch position is added, MONAI transformer blocks run, and a linear
head predicts each patch's voxels. The output fields and the loss (MSE on the masked voxels) are MedGMAE's, so
Gaussian and voxel pre-training are compared in one code base.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
from torch import Tensor

from medgmae.networks.mae_base import MaskedAutoencoder, full_precision

__all__ = ["VoxelMAE"]


class VoxelMAE(MaskedAutoencoder):
    """MAE with a voxel-regression decoder over :class:`~medgmae.networks.vit.MaskedViTEncoder`.

    Args:
        img_size: input volume size ``(D, H, W)`` (or one int).
        patch_size: patch edge(s); must divide ``img_size``.
        in_channels: image channels.
        model_size: a key of :data:`~medgmae.networks.vit.VIT_PRESETS`.
        mask_ratio: fraction of patches hidden from the encoder during training.
        loss_on_all_voxels: MSE over every voxel instead of the masked ones only.
    """

    kind = "voxel-mae"

    def __init__(
        self,
        img_size: Sequence[int] | int = 96,
        patch_size: Sequence[int] | int = 12,
        in_channels: int = 1,
        model_size: str = "base",
        mask_ratio: float = 0.75,
        loss_on_all_voxels: bool = False,
    ) -> None:
        super().__init__(img_size, patch_size, in_channels, model_size, mask_ratio, loss_on_all_voxels)
        dec = self.preset.decoder_hidden_size
        self.mask_token = nn.Parameter(torch.randn(1, 1, dec) * 0.02)
        voxels_per_patch = int(torch.tensor(self.patch_size).prod()) * self.in_channels
        self.decoder_pred = nn.Linear(dec, voxels_per_patch)
        nn.init.xavier_uniform_(self.decoder_pred.weight)
        nn.init.zeros_(self.decoder_pred.bias)

    def reconstruct(self, latent: Tensor, ids_restore: Tensor) -> tuple[Tensor, None]:
        """MAE decoding: un-shuffle with mask tokens, add positions, predict every patch's voxels.

        Args:
            latent: ``(B, 1 + N_vis, C_enc)``, class token first.
            ids_restore: ``(B, N)``.

        Returns:
            ``((B, C, D, H, W) prediction, None)``.
        """
        x = self.decoder_embed(latent)
        b, n_vis, c = x.shape[0], x.shape[1] - 1, x.shape[2]
        n = ids_restore.shape[1]
        tokens = torch.cat([x[:, 1:], self.mask_token.expand(b, n - n_vis, -1)], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore.unsqueeze(-1).expand(-1, -1, c))
        tokens = torch.cat([x[:, :1], tokens + self.decoder_pos_embed], dim=1)
        patches = full_precision(self.decoder_pred(self.run_decoder(tokens)[:, 1:]))
        return self.encoder.unpatchify(patches, self.in_channels), None
