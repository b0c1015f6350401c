"""The 2D intensity window read by one function at every layer, the window a model recorded (in ``model.pt`` or in
a training checkpoint's settings record), and training checkpoints recognised from what was read once."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from medgmae.checkpoint import load_checkpoint
from medgmae.checkpoint_checks import TrainingStateError
from medgmae.engine.records import SettingsRecord
from medgmae.mae_training import ModelConfigRecord
from medgmae.twod.cli import main as cli_main
from medgmae.twod.data2d import gmae2d_data_settings, window_to_image
from medgmae.twod.gmae import GMAE2D
from medgmae.twod.gvit import GViT
from medgmae.twod.gvit.model import is_gvit_training_state
from medgmae.twod.gvit_eval import evaluate_model_file
from medgmae.twod.gvit_phases import resume_records
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


def _gmae2d_training_checkpoint(path: Path, model: GMAE2D, settings: dict) -> Path:
    """What the 2D GMAE bundle's CheckpointHandler writes: the model, its config record and its settings record."""
    objects = {"model": model.state_dict(), "optimizer": torch.optim.AdamW(model.parameters()).state_dict(),
               "config": ModelConfigRecord(model).state_dict(),
               "settings": SettingsRecord(settings, "2D GMAE pre-training").state_dict()}  # fmt: skip
    torch.save({"engine": {"epoch": 1}, "objects": objects}, path)
    return path


def _layers(checkpoint: Path, image: Path, out: Path, *extra: str) -> bytes:
    argv = ["layers", "--checkpoint", str(checkpoint), "--image", str(image), "--out", str(out), "--num-layers", "4"]
    assert cli_main([*argv, *extra]) == 0
    return (out / "input.png").read_bytes()


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


# ----------------------------------------------------------------------------------------------- training checkpoints
def test_a_gmae2d_training_checkpoint_supplies_the_recorded_window(tmp_path, capsys):
    model = _gmae2d()
    settings = gmae2d_data_settings(tmp_path, False, WINDOW)
    ckpt = _gmae2d_training_checkpoint(tmp_path / "checkpoint_epoch=1.pt", model, settings)
    assert load_checkpoint(ckpt).extra == {"training_state": True, "data": settings}
    assert GMAE2D.from_checkpoint(ckpt).data_settings == {"flip": False, "window": WINDOW}

    image = _ct_slice(tmp_path / "ct.nii.gz")
    torch.save(model.model_checkpoint(), tmp_path / "model.pt")  # the same weights, no window recorded
    implicit = _layers(ckpt, image, tmp_path / "implicit")
    assert implicit == _layers(tmp_path / "model.pt", image, tmp_path / "explicit", "--window", "-350", "400")
    assert implicit != _layers(tmp_path / "model.pt", image, tmp_path / "percentiles")
    _layers(ckpt, image, tmp_path / "other", "--window", "-1000", "1000")
    assert "not the window -350 400 the model was trained with" in capsys.readouterr().err


def test_a_settings_record_of_the_model_is_not_taken_for_data_settings(tmp_path):
    model = _gmae2d()
    ckpt = _gmae2d_training_checkpoint(tmp_path / "checkpoint_epoch=1.pt", model, {"model": model.config()})
    assert load_checkpoint(ckpt).extra == {"training_state": True}
    assert GMAE2D.from_checkpoint(ckpt).data_settings is None


def test_a_gvit_phase_checkpoint_is_recognised_from_one_read(tmp_path, monkeypatch, capsys):
    model = GViT(1, 16, 2, num_gaussians=4, patch_size=4)
    objects = {"model": model.state_dict(), "optimizer": torch.optim.AdamW(model.parameters()).state_dict(),
               "settings": resume_records({"model": model.config(), "data": {"seed": 0}}, None)["settings"].state_dict()}  # fmt: skip
    ckpt = tmp_path / "checkpoint_epoch=1.pt"
    torch.save({"engine": {"epoch": 1}, "objects": objects}, ckpt)
    reads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: reads.append(a[0]) or real_load(*a, **k))
    with pytest.raises(ValueError, match="a GViT training checkpoint .* give the GViT run's model.pt"):
        GViT.from_checkpoint(ckpt)
    assert len(reads) == 1
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "img.png")
    argv = ["layers", "--checkpoint", str(ckpt), "--image", str(tmp_path / "img.png"), "--out", str(tmp_path / "o")]
    assert cli_main(argv) == 2 and len(reads) == 2
    assert "is a gvit training checkpoint (GViT classifier); expected gmae2d" in capsys.readouterr().err

    monkeypatch.undo()
    with pytest.raises(TrainingStateError) as err:
        load_checkpoint(ckpt, "gvit")
    assert is_gvit_training_state(err.value.objects)
    assert not is_gvit_training_state({"model": {}, "optimizer": {}})
