"""The 2D intensity window read by one function at every layer, and the window a model recorded."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medgmae.twod.cli import main as cli_main
from medgmae.twod.data2d import window_to_image
from medgmae.twod.gmae import GMAE2D
from medgmae.twod.gvit import GViT
from medgmae.twod.gvit_eval import evaluate_model_file
from medgmae.twod.images import read_image
from medgmae.twod.windows import recorded_window

WINDOW = [-350.0, 400.0]


def _ct_slice(path: Path) -> Path:
    """A CT slice in HU whose 0.5/99.5 percentiles are not -350..400 (1500 HU in a corner)."""
    v = np.full((32, 32, 1), -1000.0, np.float32)
    v[8:24, 8:24] = 0.0
    v[:4, :4] = 1500.0
    nib.save(nib.Nifti1Image(v, np.eye(4)), str(path))
    return path


def _gmae2d() -> GMAE2D:
    torch.manual_seed(0)
    return GMAE2D(img_size=32, patch_size=8, in_channels=1, model_size="tiny", num_gaussians=16)


# ----------------------------------------------------------------------------------------------- one reader
def test_recorded_window_reads_the_setting_and_names_the_file():
    assert recorded_window(None, "m.pt") is None
    assert recorded_window({"flip": False}, "m.pt") is None
    assert recorded_window({"window": None}, "m.pt") is None
    assert recorded_window({"window": WINDOW}, "m.pt") == (-350.0, 400.0)
    with pytest.raises(ValueError, match=r"m\.pt: the recorded training window is unusable .*high > low"):
        recorded_window({"window": [400.0, -350.0]}, "m.pt")


def test_the_image_reader_and_the_phantom_mapping_read_windows_as_the_setting_does(tmp_path):
    image = _ct_slice(tmp_path / "ct.nii.gz")
    assert np.array_equal(read_image(image, window="[-350, 400]"), read_image(image, window=(-350, 400)))
    for bad in ((400, -350), (0, 1, 2)):
        with pytest.raises(ValueError, match="expected"):
            read_image(image, window=bad)
        with pytest.raises(ValueError, match="expected"):
            window_to_image(np.zeros((4, 4)), bad, (4, 4))


def test_medgmae_2d_names_a_reversed_window_flag(tmp_path, capsys):
    torch.save(_gmae2d().model_checkpoint(), tmp_path / "model.pt")
    image = _ct_slice(tmp_path / "ct.nii.gz")
    argv = ["layers", "--checkpoint", str(tmp_path / "model.pt"), "--image", str(image), "--out", str(tmp_path / "o")]
    assert cli_main([*argv, "--window", "400", "-350"]) == 2
    assert "--window: expected [low, high] with high > low" in capsys.readouterr().err


def test_gvit_evaluation_names_the_file_of_an_unusable_recorded_window(tmp_path):
    model = GViT(in_channels=1, img_size=16, num_classes=2, num_gaussians=6, model_size="tiny", patch_size=4)
    data = {"dataset_dir": str(tmp_path / "classes"), "seed": 0, "val_fraction": 0.5, "window": [400.0, -350.0]}
    model.save(tmp_path / "model.pt", class_names=["a", "b"], data=data)
    with pytest.raises(ValueError, match=r"model\.pt: the recorded training window is unusable"):  # before any data
        evaluate_model_file(tmp_path / "model.pt", None, tmp_path / "eval", device="cpu", render_backend="torch")
