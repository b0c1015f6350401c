"""A GViT trained on the default phantom task records the window its PNGs were written at (-500..500 HU), so that
NIfTI inputs are mapped as its training slices were; a model recording none says so when NIfTI inputs meet it."""

import csv
import logging

import nibabel as nib
import numpy as np
import pytest

from medgmae.twod.classification_data import resolve_classification_data
from medgmae.twod.gvit import GViT
from medgmae.twod.gvit_infer import classify_images
from medgmae.twod.gvit_settings import phase_settings


def test_the_default_task_records_the_window_its_pngs_were_written_at(tmp_path, caplog):
    data = resolve_classification_data("", tmp_path / "task", image_size=16, num_cases=3)
    assert data.settings["window"] == [-500.0, 500.0]
    with caplog.at_level(logging.WARNING):
        given = resolve_classification_data("", tmp_path / "task", image_size=16, num_cases=3, window=[-1000, 1000])
    assert given.settings["window"] == [-500.0, 500.0]  # the window maps none of the task's PNGs
    assert any("-1000..1000 maps NIfTI/DICOM images" in r.getMessage() for r in caplog.records)
    # the task's fixed window is no setting a resume compares (runs of earlier versions recorded None)
    assert "window" not in phase_settings(None, {}, data.settings, {"lr": 1e-3, "weight_decay": 0.0}, None)["data"]


NOTES = {  # what training did, so what the line says: a window recorded (none), a dataset read with window null (each
    # image on its own, as inference reads it: an INFO line saying so), the default task before its window was recorded
    "windowed": ({"window": [-500.0, 500.0]}, None, None),
    "dataset": ({"dataset_dir": "/data/ct", "seed": 0}, logging.INFO, "as training scaled its NIfTI/DICOM images"),
    "task": ({"dataset_dir": ""}, logging.WARNING, "were PNGs written at -500..500 HU; give that window with --window"),
}


@pytest.mark.parametrize("trained", sorted(NOTES))
def test_inference_of_a_nifti_says_when_the_model_records_no_window(tmp_path, caplog, trained):
    data, level, said = NOTES[trained]
    model = GViT(1, 16, 2, num_gaussians=4, patch_size=4)
    model.save(tmp_path / "model.pt", class_names=["a", "b"], data=data)
    vol = np.full((16, 16, 3), -1000, np.int16)
    vol[4:12, 4:12] = 40
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / "ct.nii.gz"))
    with caplog.at_level(logging.INFO, logger="medgmae.gvit"):
        out = classify_images(tmp_path / "model.pt", [str(tmp_path / "ct.nii.gz")], None, tmp_path / "inf", device="cpu")
    notes = [r for r in caplog.records if "records no intensity window" in r.getMessage()]
    assert len(notes) == (0 if level is None else 1)
    if level is not None:
        text = notes[0].getMessage()
        assert text.startswith(f"{tmp_path / 'model.pt'} records no intensity window") and "1 NIfTI/DICOM image is" in text
        assert notes[0].levelno == level and said in text and "not as the training images were" not in text
    with open(out, newline="", encoding="utf-8") as f:
        assert len(list(csv.DictReader(f))) == 1
