"""MedGMAE pre-training: the trainer, data sources, weight export and zero-shot inference used by the
``bundles/medgmae_pretrain`` configs."""

from medgmae.pretrain.data import pretrain_datalist
from medgmae.pretrain.export import ENCODER_FILE, MODEL_FILE, ModelExportHandler, save_pretrained
from medgmae.pretrain.inference import GaussianInference, slices_png
from medgmae.pretrain.trainer import (
    MODEL_KINDS,
    MaskedAutoencoderTrainer,
    as_bool,
    ModelConfigRecord,
    build_model,
    masked_psnr,
    unwrap_model,
)

__all__ = [
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
    "pretrain_datalist",
    "save_pretrained",
    "slices_png",
    "unwrap_model",
]
