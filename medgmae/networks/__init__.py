"""Networks: the masked ViT encoder, the shared masked-autoencoder base, MedGMAE / MedGMAE*, the voxel-MAE baseline
and the UNETR for fine-tuning (``medgmae.networks.unetr``)."""

from medgmae.networks.mae_base import MaskedAutoencoder
from medgmae.networks.medgmae import (
    MAEOutput,
    MaskedAutoencoder3D,
    MedGMAE,
    ResidualGaussianLevel,
    masked_mse,
    patch_mask_to_voxels,
)
from medgmae.networks.vit import VIT_PRESETS, MaskedViTEncoder, ViTPreset, random_masking
from medgmae.networks.voxel_mae import VoxelMAE

__all__ = [
    "MAEOutput",
    "MaskedAutoencoder",
    "MaskedAutoencoder3D",
    "MaskedViTEncoder",
    "MedGMAE",
    "ResidualGaussianLevel",
    "VIT_PRESETS",
    "ViTPreset",
    "VoxelMAE",
    "masked_mse",
    "patch_mask_to_voxels",
    "random_masking",
]
