"""2D words that were not true: the start lines' global batch of a dataset smaller than a batch, and counts of one
written as plurals ("1 distinct images")."""

from __future__ import annotations

import logging

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from medgmae.engine.run_words import global_batch_words, loader_items
from medgmae.mae_training import MaskedAutoencoderTrainer
from medgmae.twod.gmae import GMAE2D
from medgmae.twod.gvit import GViT
from medgmae.twod.gvit_run_line import gvit_run_line


def _pictures(folder, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(folder / f"{i}.png")


def test_the_2d_start_line_counts_the_images_a_step_really_holds(tmp_path):
    """Two images with batch_size 16: the loader keeps its short batch (drop_last false, nothing repeated), so each
    step trains on those 2 images, which the line now says instead of "global batch 16 images per step"."""
    from medgmae.twod.data2d import gmae2d_dataset

    _pictures(tmp_path / "two", 2)
    ds = gmae2d_dataset(tmp_path / "two", (16, 16), 1, cache=False, log=False)
    loader = DataLoader(ds, batch_size=16, shuffle=True, drop_last=False)  # as bundles/gmae2d_pretrain builds it
    assert [len(batch["image"]) for batch in loader] == [2] and loader_items(loader) == 2
    model = GMAE2D(img_size=16, patch_size=8, model_size="tiny", num_gaussians=4)
    trainer = MaskedAutoencoderTrainer("cpu", 1, loader, model, torch.optim.SGD(model.parameters(), lr=0.01))
    assert trainer.run_settings().endswith(
        "global batch 2 images per step (1 process x 2; batch_size 16, but the dataset holds 2 images)"
    )
    assert global_batch_words(1, 16, 1, 2, items=40) == "global batch 16 images per step (1 process x 16)"
    assert global_batch_words(2, 4, 3, items=1) == (
        "global batch 6 crops per step (2 processes x 1 volume x 3 crops; batch_size 4, but each process draws 1 volume)"
    )


def test_the_gvit_start_line_counts_the_images_a_step_really_holds():
    model = GViT(1, 16, 2, num_gaussians=6, patch_size=4)
    line = gvit_run_line(model, "cpu", False, "torch", {"warmup": 1}, batch_size=32, items=3)
    assert line.endswith("global batch 3 images per step (1 process x 3; batch_size 32, but the dataset holds 3 images)")
    assert gvit_run_line(model, "cpu", False, "torch", {"warmup": 1}, 32).endswith("global batch 32 images per step (1 process x 32)")
