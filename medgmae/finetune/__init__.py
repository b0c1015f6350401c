"""UNETR segmentation fine-tuning from the pre-trained encoder: data, weights, evaluation (see bundles/unetr_finetune)."""

from medgmae.finetune.data import check_cases, evaluation_cases, prepare_datalists, select_label_fraction
from medgmae.data.datalist import DatasetError, read_datalist
from medgmae.finetune.classes import label_names, resolve_num_classes
from medgmae.finetune.segment_inputs import inference_cases
from medgmae.finetune.spec import finetune_spec, finetuned_spec
from medgmae.finetune.transforms import inference_transforms, train_transforms, val_transforms
from medgmae.finetune.report import FinetuneSummary, SegmentationPicture, dice_table, segmentation_figure
from medgmae.finetune.evaluate import SaveSegmentationd, SegmentationReport, check_num_classes, per_case_dice
from medgmae.finetune.progress import CaseProgress
from medgmae.finetune.sliding import LoggedSlidingWindowInferer
from medgmae.finetune.run_line import FinetuneRunLine
from medgmae.finetune.best_model import BestCheckpointSaver, load_finetuned
from medgmae.finetune.weights import (
    build_unetr,
    layer_id,
    load_pretrained_encoder,
    param_groups,
    default_roi_size,
    pretrained_check,
    read_encoder_file,
    set_encoder_trainable,
    stock_unetr_from_encoder,
)

__all__ = [
    "BestCheckpointSaver",
    "build_unetr",
    "CaseProgress",
    "check_cases",
    "check_num_classes",
    "DatasetError",
    "default_roi_size",
    "dice_table",
    "evaluation_cases",
    "finetune_spec",
    "finetuned_spec",
    "FinetuneRunLine",
    "FinetuneSummary",
    "inference_cases",
    "inference_transforms",
    "label_names",
    "layer_id",
    "load_finetuned",
    "LoggedSlidingWindowInferer",
    "load_pretrained_encoder",
    "param_groups",
    "per_case_dice",
    "prepare_datalists",
    "pretrained_check",
    "read_datalist",
    "read_encoder_file",
    "resolve_num_classes",
    "SaveSegmentationd",
    "segmentation_figure",
    "SegmentationPicture",
    "SegmentationReport",
    "select_label_fraction",
    "set_encoder_trainable",
    "stock_unetr_from_encoder",
    "train_transforms",
    "val_transforms",
]
