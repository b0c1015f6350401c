"""The GViT paper's augmentation of training images (the bundle's ``augment``): it changes the training inputs
when on and leaves them as loaded when off, never touches validation or evaluation images, draws the same flips and
crops for the same seed, and is recorded for a resume."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import DataLoader
from monai.transforms import Compose, Randomizable
from monai.utils import set_determinism

from medgmae.engine.random_state import randomizables
from medgmae.twod.classification_data import load_classification_data, make_dataset
from medgmae.twod.gvit_augment import CROP_AREA, CROP_RATIO, RandResizedCropd, gvit_augmentation

from gvit_helpers import BUNDLE, gvit_workflow, shapes_dataset


def _random_transforms(dataset) -> list:
    """The random transforms of a dataset's chain (a Compose is one too, and draws nothing of its own here)."""
    return [t for t in randomizables(dataset) if not isinstance(t, Compose)]


def test_augmentation_changes_training_images_when_on_and_not_when_off(tmp_path):
    data = load_classification_data(shapes_dataset(tmp_path / "shapes"), val_fraction=0.25)
    plain = make_dataset(data.train, 16, 1)
    off = make_dataset(data.train, 16, 1, augment=False)
    on = make_dataset(data.train, 16, 1, augment=True)
    on.transform.set_random_state(0)
    for i in range(len(data.train)):
        assert torch.equal(off[i]["image"], plain[i]["image"]) and torch.equal(off[i]["image"], off[i]["image"])
    changed = [not torch.equal(on[i]["image"], plain[i]["image"]) for i in range(len(data.train))]
    assert sum(changed) >= len(changed) - 1, changed  # a crop of the whole image, not flipped, is possible
    x = on[0]
    assert type(x["image"]) is torch.Tensor and x["image"].dtype == torch.float32 and x["image"].shape == (1, 16, 16)
    assert x["label"] == data.train[0]["label"] and x["path"] == data.train[0]["image"]


def test_augmentation_is_the_same_for_a_seed_and_differs_between_seeds(tmp_path):
    data = load_classification_data(shapes_dataset(tmp_path / "shapes"), val_fraction=0.25)

    def batches(seed: int) -> list[torch.Tensor]:
        set_determinism(seed=seed)
        loader = DataLoader(make_dataset(data.train, 16, 1, augment=True), batch_size=4, shuffle=True)
        return [b["image"] for _ in range(2) for b in loader]

    first, again, other = batches(0), batches(0), batches(1)
    set_determinism(seed=None)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_the_crop_has_the_papers_area_and_torchvisions_aspect_ratio():
    crop = RandResizedCropd("image", (32, 32))
    crop.set_random_state(0)
    boxes = [crop.crop_box(32, 32) for _ in range(500)]
    for top, left, h, w in boxes:
        assert 0 <= top and top + h <= 32 and 0 <= left and left + w <= 32
        # the drawn area and ratio, up to the rounding of each side to whole pixels
        assert CROP_AREA[0] * 1024 * 0.85 <= h * w <= 1024
        assert CROP_RATIO[0] * 0.9 <= w / h <= CROP_RATIO[1] / 0.9
    areas = np.array([h * w for _, _, h, w in boxes]) / 1024
    assert areas.min() < 0.55 and areas.max() > 0.95  # the whole range is drawn
    assert crop.crop_box(2, 40) == (0, 18, 2, 3)  # nothing fits: the centre crop, its ratio clamped to 4/3
    x = torch.arange(32 * 32, dtype=torch.float32).reshape(1, 32, 32)
    out = crop({"image": x})["image"]
    assert out.shape == (1, 32, 32) and not torch.equal(torch.as_tensor(out), x)
    with pytest.raises(ValueError, match="area"):
        RandResizedCropd("image", (8, 8), area=(0.5, 1.5))
    assert math.isclose(CROP_RATIO[0] * CROP_RATIO[1], 1.0)


def test_augmentation_is_a_flip_and_a_crop_or_nothing():
    assert gvit_augmentation(False, (16, 16)) == []
    names = [type(t).__name__ for t in gvit_augmentation(True, (16, 16))]
    assert names == ["RandFlipd", "RandResizedCropd", "EnsureTyped"]
    flip = gvit_augmentation(True, (16, 16))[0]
    assert flip.flipper.spatial_axis == 1 and flip.prob == 0.5  # left-right: the width axis of (C, H, W)


def test_the_bundle_augments_training_images_only(tmp_path):
    """train.json's default is the paper's (augment true) and reaches the training dataset; the validation dataset
    of train.json and the datasets of evaluate.json are built without it, so they hold no random transform."""
    data = load_classification_data(shapes_dataset(tmp_path / "shapes"), val_fraction=0.25)
    config = json.loads((BUNDLE / "configs" / "train.json").read_text())
    assert config["augment"] is True and config["checked_settings"]["augment"] == ["@augment", "bool"]
    for augment in (True, False):
        parser = ConfigParser(config)
        parser["data"], parser["augment"] = data, augment
        train, val = parser.get_parsed_content("train#dataset"), parser.get_parsed_content("validate#dataset")
        assert bool(_random_transforms(train)) is augment
        assert not _random_transforms(val)
        assert parser.get_parsed_content("workflow#data_settings", lazy=False)["augment"] is augment
    evaluation = (BUNDLE / "configs" / "evaluate.json").read_text() + (BUNDLE / "configs" / "inference.json").read_text()
    assert "augment" not in evaluation
    assert issubclass(RandResizedCropd, Randomizable)


def test_a_resume_with_other_augmentation_is_refused_and_an_older_run_reads_as_without(tmp_path):
    data = load_classification_data(shapes_dataset(tmp_path / "shapes"), val_fraction=0.25)
    first = gvit_workflow(data, tmp_path / "run", resume=False, augment=True)
    first.epochs = {"warmup": 1, "classifier": 0, "joint": 0}
    first.run()
    again = gvit_workflow(data, tmp_path / "run", resume=True)
    again.data_settings = {"augment": False}
    with pytest.raises(ValueError, match=r"data\.augment: saved True, now False"):
        again.trainer("warmup").run()
    older = gvit_workflow(data, tmp_path / "older", resume=False)  # records no augment, as before the setting
    older.epochs = {"warmup": 1, "classifier": 0, "joint": 0}
    older.run()
    now = gvit_workflow(data, tmp_path / "older", resume=True, augment=True)
    with pytest.raises(ValueError, match=r"data\.augment: saved False, now True"):
        now.trainer("warmup").run()
