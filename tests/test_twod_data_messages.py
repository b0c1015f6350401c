"""What the 2D datasets say about the folders they are given."""

import logging

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medgmae.twod.classification_data import scan_image_folder
from medgmae.twod.data2d import image_folder_items


def test_image_folder_logs_files_and_volume_slices(tmp_path, caplog):
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 5), np.float32), np.eye(4)), str(tmp_path / "vol.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 1), np.float32), np.eye(4)), str(tmp_path / "one.nii.gz"))
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    with caplog.at_level(logging.INFO, logger="medgmae.twod"):
        assert len(image_folder_items(tmp_path)) == 3
    assert "3 image files -> 3 training images" in caplog.text
    assert "1 of them 3D NIfTI volumes, each contributing its middle axial slice" in caplog.text


def test_class_folder_without_sub_folders_says_so(tmp_path):
    for i in range(7):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / f"{i}.png")
    with pytest.raises(ValueError, match="holds 7 image\\(s\\) but no class sub-folders"):
        scan_image_folder(tmp_path)
    with pytest.raises(ValueError, match="is empty"):
        scan_image_folder((tmp_path / "empty").mkdir() or tmp_path / "empty")
