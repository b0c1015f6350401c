"""GViT inference names a 16-bit picture of 12-bit data (values within 0..4095), as training warns of such a dataset
and ``medgmae-2d`` notes it: divided by 65535, the model sees it almost without contrast."""

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medgmae.twod.gvit import GViT
from medgmae.twod.gvit_infer import classify_images


def test_a_12_bit_picture_is_named_once_and_the_others_not(tmp_path, caplog):
    torch.manual_seed(0)
    GViT(in_channels=1, img_size=16, num_classes=2, num_gaussians=6, model_size="tiny", patch_size=4).save(
        tmp_path / "model.pt", class_names=["a", "b"])
    rng = np.random.default_rng(0)
    twelve = rng.integers(0, 4096, (16, 16)).astype(np.uint16)
    twelve[0, :2] = (0, 4095)
    Image.fromarray(twelve).save(tmp_path / "twelve.png")
    full = rng.integers(0, 65536, (16, 16)).astype(np.uint16)
    full[0, :2] = (0, 65535)
    Image.fromarray(full).save(tmp_path / "full.png")
    Image.fromarray((rng.random((16, 16)) * 255).astype(np.uint8)).save(tmp_path / "eight.png")
    with caplog.at_level(logging.WARNING):
        classify_images(tmp_path / "model.pt", [str(tmp_path / n) for n in ("twelve.png", "full.png", "eight.png")],
                        None, tmp_path / "out", device="cpu")  # fmt: skip
    warned = [r.getMessage() for r in caplog.records if "almost without contrast" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith(f"{tmp_path / 'twelve.png'}: ")
    assert f"within 0..4095, {100 * 4095 / 65535:.0f} %" in warned[0]
    assert f"{tmp_path / 'twelve.png'}: its values (one 16-bit PNG/TIFF) lie within 0..4095" in warned[0]  # one file: not "its files"
    assert f"within {0:.3f}..{4095 / 65535:.3f}, almost without contrast" in warned[0]


def test_images_given_as_a_file_pattern_are_expanded_and_one_matching_nothing_is_named(tmp_path):
    """--images "['data/*/*.png']" was 'image not found: .../*.png'; segmentation's --input_files took patterns. Both
    expand them one way now; a pattern matching nothing is named."""
    from medgmae.data.datalist import DatasetError
    from medgmae.twod.gvit_infer import inference_images

    for name in ("a/1.png", "b/2.png", "b/3.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / name)
    got = inference_images([str(tmp_path / "*" / "*.png")], None)
    assert got == [tmp_path / "a/1.png", tmp_path / "b/2.png", tmp_path / "b/3.png"]
    with pytest.raises(DatasetError, match=r"--images: no file matches '.*\*\.jpg'"):
        inference_images([str(tmp_path / "*.jpg")], None)


def test_each_16_bit_picture_is_opened_once_and_classified_as_its_values_say(tmp_path, caplog, monkeypatch):
    """Each 16-bit PNG of a folder is opened once: the 12-bit warning comes from the values read for the model,
    not from reading the file again; the predictions are the model's on the pictures divided by 65535."""
    import csv

    import PIL.Image

    torch.manual_seed(0)
    model = GViT(in_channels=1, img_size=16, num_classes=2, num_gaussians=6, model_size="tiny", patch_size=4)
    model.save(tmp_path / "model.pt", class_names=["a", "b"])
    rng, folder = np.random.default_rng(1), tmp_path / "pictures"
    folder.mkdir()
    stored = {"narrow.png": rng.integers(100, 4001, (16, 16)), "full.png": rng.integers(0, 65536, (16, 16))}
    for name, values in stored.items():
        Image.fromarray(values.astype(np.uint16)).save(folder / name)
    opened, real_open = [], PIL.Image.open
    monkeypatch.setattr(PIL.Image, "open", lambda fp, *a, **k: opened.append(Path(fp).name) or real_open(fp, *a, **k))
    with caplog.at_level(logging.WARNING):
        out = classify_images(tmp_path / "model.pt", None, folder, tmp_path / "out", device="cpu")
    assert sorted(opened) == ["full.png", "narrow.png"]
    warned = [r.getMessage() for r in caplog.records if "almost without contrast" in r.getMessage()]
    low, high = int(stored["narrow.png"].min()), int(stored["narrow.png"].max())
    assert len(warned) == 1 and warned[0].startswith(f"{folder / 'narrow.png'}: its values (one 16-bit PNG/TIFF) "
                                                     f"lie within {low}..{high}, ")  # fmt: skip
    rows = {Path(r["image"]).name: r for r in csv.DictReader(open(out, encoding="utf-8"))}
    model = GViT.from_checkpoint(tmp_path / "model.pt", map_location="cpu").eval()
    for name, values in stored.items():
        with torch.no_grad():
            want = torch.softmax(model(torch.tensor(values / 65535.0, dtype=torch.float32)[None, None]), -1)[0]
        assert [float(rows[name][f"probability_{c}"]) for c in "ab"] == pytest.approx(want.tolist(), abs=2e-6)
