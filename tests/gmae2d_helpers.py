"""A tiny 2D GMAE for tests, and the 2D bundles' training configs (the GMAE one parsed with small settings)."""

from __future__ import annotations

from pathlib import Path

import torch
from monai.bundle import ConfigParser, run

from medgmae.twod.gmae import GMAE2D


def tiny_gmae2d(in_channels=1, k=32, size=32, **kw):
    torch.manual_seed(0)
    return GMAE2D(img_size=size, patch_size=8, in_channels=in_channels, model_size="tiny", num_gaussians=k, **kw)


BUNDLES = Path(__file__).resolve().parents[1] / "bundles"
GMAE_TRAIN = str(BUNDLES / "gmae2d_pretrain" / "configs" / "train.json")
GVIT_TRAIN = str(BUNDLES / "gvit_classification" / "configs" / "train.json")


def gmae_parser(tmp_path: Path, **overrides) -> ConfigParser:
    """The 2D GMAE bundle's training config, 32-pixel images of 8-pixel patches on the CPU, into ``tmp_path``."""
    parser = ConfigParser()
    parser.read_config(GMAE_TRAIN)
    parser.update({"output_dir": str(tmp_path / "run"), "image_size": 32, "patch_size": 8, "device": "cpu",
                   "dataset_dir": str(tmp_path / "data"), **overrides})  # fmt: skip
    return parser


#: the 2D GMAE bundle's settings of a tiny run on the CPU (6 phantom slices of 32 pixels)
TINY_GMAE = dict(model_size="tiny", image_size=32, patch_size=8, num_gaussians=32, batch_size=4, num_phantoms=1,
                 slices_per_case=6, device="cpu", amp=False, warmup_steps=1)  # fmt: skip


def train_gmae2d_bundle(output_dir: Path, **overrides) -> None:
    """``monai.bundle run training`` of the 2D GMAE bundle in this process, at :data:`TINY_GMAE` and ``overrides``."""
    run("training", config_file=GMAE_TRAIN, logging_file=False, output_dir=str(output_dir), **{**TINY_GMAE, **overrides})
