"""GViT inference and evaluation take a ``window`` (inference.json / evaluate.json): ``null`` keeps the model's
recorded window, a given ``[low, high]`` maps NIfTI/DICOM inputs instead (warned about when it differs from the
recorded one), a bad one is refused naming ``window``, and pictures are not windowed (a note says so)."""

import csv
import json
import logging

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from gvit_helpers import perturb_head

from medgmae.twod.gvit import GViT
from medgmae.twod.gvit_eval import evaluate_model_file
from medgmae.twod.gvit_infer import classify_images


def _rings(path, size: int = 16) -> np.ndarray:
    """A one-slice NIfTI of concentric square rings, -1000 HU outside to 400 HU in the centre (the same under any
    flip or transpose, so the slice read is this array whatever the reader's orientation); returns the slice."""
    idx = np.abs(np.arange(size) - (size - 1) / 2)
    ring = np.maximum(idx[:, None], idx[None, :]).astype(int)  # 0 (centre) .. size/2 - 1 (border)
    hu = (400 - 200 * ring).astype(np.int16)
    nib.save(nib.Nifti1Image(hu[:, :, None], np.eye(4)), str(path))
    return hu.astype(np.float32)


def _models(tmp_path):
    """One tiny GViT, its output depending on its input, saved twice: recording the window [-500, 500], and recording none."""
    torch.manual_seed(0)
    model = GViT(1, 16, 2, num_gaussians=4, patch_size=4)
    perturb_head(model.encoder)  # the Gaussians depend on the image (the residual head starts at zero)
    model.save(tmp_path / "windowed.pt", class_names=["a", "b"], data={"window": [-500.0, 500.0]})
    model.save(tmp_path / "plain.pt", class_names=["a", "b"], data={"dataset_dir": ""})
    return tmp_path / "windowed.pt", tmp_path / "plain.pt"


def _predictions(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _probabilities(rows):
    return np.array([[float(r["probability_a"]), float(r["probability_b"])] for r in rows])


def test_a_given_window_scales_a_nifti_as_training_did(tmp_path, caplog):
    """window [-500, 500] on a model recording none: the NIfTI is the network's input (-500..500 mapped to 0..1,
    computed here) and is classified as by a model recording that window; without it, the percentiles differ."""
    windowed, plain = _models(tmp_path)
    hu = _rings(tmp_path / "ct.nii.gz")
    image = [str(tmp_path / "ct.nii.gz")]
    given = _predictions(classify_images(plain, image, None, tmp_path / "given", device="cpu", window=[-500, 500]))
    recorded = _predictions(classify_images(windowed, image, None, tmp_path / "recorded", device="cpu"))
    own = _predictions(classify_images(plain, image, None, tmp_path / "own", device="cpu"))
    model = GViT.from_checkpoint(plain).eval()
    with torch.no_grad():
        x = torch.from_numpy(np.clip((hu + 500) / 1000, 0, 1))[None, None].float()
        expected = torch.softmax(model(x), -1).numpy()
    assert np.allclose(_probabilities(given), expected, atol=1e-5)
    assert np.allclose(_probabilities(recorded), expected, atol=1e-5)
    assert not np.allclose(_probabilities(own), expected, atol=1e-3)  # -1000..400: another input
    assert given[0]["window"] == "-500..500 (given)"
    assert recorded[0]["window"] == f"-500..500 (recorded in {windowed})"
    assert own[0]["window"].endswith("(percentiles 0.5/99.5)")


def test_a_window_differing_from_the_recorded_one_is_used_with_a_warning(tmp_path, caplog):
    windowed, _ = _models(tmp_path)
    _rings(tmp_path / "ct.nii.gz")
    image = [str(tmp_path / "ct.nii.gz")]
    with caplog.at_level(logging.WARNING, logger="medgmae.gvit"):
        classify_images(windowed, image, None, tmp_path / "same", device="cpu", window="[-500, 500]")
        assert "differs from the window" not in caplog.text
        rows = _predictions(classify_images(windowed, image, None, tmp_path / "other", device="cpu", window=[-1000, 1000]))
    warnings = [r.getMessage() for r in caplog.records if "differs from the window" in r.getMessage()]
    assert warnings == [f"window -1000..1000 differs from the window -500..500 recorded in {windowed}: NIfTI/DICOM "
                        "inputs are scaled differently from the model's training images"]
    assert rows[0]["window"] == "-1000..1000 (given)"


@pytest.mark.parametrize("bad", [[500, -500], [0, float("nan")], [1, 2, 3], "abc"])
def test_a_bad_window_is_refused_naming_it(tmp_path, bad):
    windowed, _ = _models(tmp_path)
    _rings(tmp_path / "ct.nii.gz")
    with pytest.raises(ValueError, match=r"^window: expected"):
        classify_images(windowed, [str(tmp_path / "ct.nii.gz")], None, tmp_path / "out", device="cpu", window=bad)
    assert not (tmp_path / "out" / "predictions.csv").exists()
    with pytest.raises(ValueError, match=r"^window: expected"):  # before the (missing) dataset is read
        evaluate_model_file(windowed, tmp_path / "missing", tmp_path / "eval", device="cpu", window=bad)
    assert not (tmp_path / "eval").exists()


def test_pictures_ignore_a_given_window_with_a_note(tmp_path, caplog):
    windowed, _ = _models(tmp_path)
    picture = np.tile(np.linspace(0, 255, 16, dtype=np.uint8), (16, 1))
    Image.fromarray(picture).save(tmp_path / "a.png")
    image = [str(tmp_path / "a.png")]
    with caplog.at_level(logging.WARNING, logger="medgmae.gvit"):
        given = _predictions(classify_images(windowed, image, None, tmp_path / "given", device="cpu", window=[-500, 500]))
    plain = _predictions(classify_images(windowed, image, None, tmp_path / "plain", device="cpu"))
    assert np.allclose(_probabilities(given), _probabilities(plain))
    assert given[0]["window"] == "" and plain[0]["window"] == ""
    assert "inference inputs hold no NIfTI/DICOM images: window -500..500 maps none of them" in caplog.text


def test_evaluation_uses_and_records_the_window(tmp_path, caplog):
    """evaluate_model_file on a NIfTI dataset: a given window is recorded in metrics.json (data.window,
    data.window_source) and warned about when it differs; without one, the recorded window."""
    windowed, _ = _models(tmp_path)
    for name in ("a", "b"):
        (tmp_path / "data" / name).mkdir(parents=True)
        _rings(tmp_path / "data" / name / "ct.nii.gz")
    common = dict(split="all", device="cpu", num_explanations=0, seed=0, val_fraction=0.5)
    with caplog.at_level(logging.WARNING, logger="medgmae.gvit"):
        given = evaluate_model_file(windowed, tmp_path / "data", tmp_path / "given", window=[-1000, 1000], **common)
    assert "window -1000..1000 differs from the window -500..500" in caplog.text
    recorded = evaluate_model_file(windowed, tmp_path / "data", tmp_path / "recorded", **common)
    assert (given["data"]["window"], given["data"]["window_source"]) == ([-1000.0, 1000.0], "given")
    assert (recorded["data"]["window"], recorded["data"]["window_source"]) == ([-500.0, 500.0], f"recorded in {windowed}")
    saved = json.loads((tmp_path / "given" / "metrics.json").read_text())
    assert saved["data"]["window"] == [-1000.0, 1000.0]
