"""Masked-autoencoder training, 2D and 3D: the trainer, data split, masked validation, weight export and
zero-shot inference that the ``bundles/medgmae_pretrain`` and ``bundles/gmae2d_pretrain`` configs instantiate."""

from medgmae.mae_training.data import check_pretrain_split, pretrain_split
from medgmae.mae_training.export import ENCODER_FILE, MODEL_FILE, ModelExportHandler, save_pretrained
from medgmae.mae_training.inference import GaussianInference, slices_png
from medgmae.mae_training.models import MODEL_KINDS, ModelConfigRecord, build_model
from medgmae.mae_training.pictures import ValidationPictureHandler, reconstruction_figure
from medgmae.mae_training.summary import PretrainSummary
from medgmae.mae_training.trainer import MaskedAutoencoderTrainer
from medgmae.mae_training.validation import (
    BEST_MODEL_FILE,
    MaskedValidationHandler,
    masked_psnr,
    masked_psnr_per_sample,
    masked_ssim,
)

__all__ = [
    "BEST_MODEL_FILE",
    "MaskedValidationHandler",
    "PretrainSummary",
    "ValidationPictureHandler",
    "masked_psnr_per_sample",
    "masked_ssim",
    "pretrain_split",
    "check_pretrain_split",
    "reconstruction_figure",
    "ENCODER_FILE",
    "MODEL_FILE",
    "MODEL_KINDS",
    "GaussianInference",
    "MaskedAutoencoderTrainer",
    "ModelConfigRecord",
    "ModelExportHandler",
    "build_model",
    "masked_psnr",
    "save_pretrained",
    "slices_png",
]
