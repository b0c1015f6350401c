"""MedGMAE pre-training: the trainer, data sources, weight export and zero-shot inference used by the
``bundles/medgmae_pretrain`` configs."""

from medgmae.pretrain.data import pretrain_split
from medgmae.pretrain.export import ENCODER_FILE, MODEL_FILE, ModelExportHandler, save_pretrained
from medgmae.pretrain.inference import GaussianInference, slices_png
from medgmae.pretrain.pictures import ValidationPictureHandler, reconstruction_figure
from medgmae.pretrain.summary import PretrainSummary
from medgmae.pretrain.trainer import (
    MODEL_KINDS,
    MaskedAutoencoderTrainer,
    as_bool,
    ModelConfigRecord,
    build_model,
    masked_psnr,
    unwrap_model,
)
from medgmae.pretrain.validation import BEST_MODEL_FILE, MaskedValidationHandler, masked_psnr_per_sample, masked_ssim

__all__ = [
    "BEST_MODEL_FILE",
    "MaskedValidationHandler",
    "PretrainSummary",
    "ValidationPictureHandler",
    "masked_psnr_per_sample",
    "masked_ssim",
    "pretrain_split",
    "reconstruction_figure",
    "ENCODER_FILE",
    "MODEL_FILE",
    "MODEL_KINDS",
    "GaussianInference",
    "MaskedAutoencoderTrainer",
    "as_bool",
    "ModelConfigRecord",
    "ModelExportHandler",
    "build_model",
    "masked_psnr",
    "save_pretrained",
    "slices_png",
    "unwrap_model",
]
