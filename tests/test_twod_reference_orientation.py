"""A picture-file reference mask of a NIfTI image: read in the displayed (radiological) orientation, a mask saved
from the stored array refused when its shape is the image's transposed, and noted by ``medgmae-2d segment``."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from medgmae.twod.cli import main
from medgmae.twod.gmae import GMAE2D
from medgmae.twod.images import read_mask, read_reference

#: 1 mm in-plane voxels in RAS order, 2.5 mm slices
AFFINE = np.diag([1.0, 1.0, 2.5, 1.0])
#: stored left-to-right and posterior-to-anterior flipped (LPS), anisotropic voxels, away from the origin
LPS_AFFINE = np.array([[-0.8, 0.0, 0.0, 40.0], [0.0, -1.1, 0.0, -25.0], [0.0, 0.0, 2.5, 7.5], [0.0, 0.0, 0.0, 1.0]])


def _volumes(tmp_path, shape, affine=AFFINE):
    """A CT of ``shape`` (X, Y, Z) with a bright corner, and its mask, as NIfTI files; the mask array."""
    vol = np.full(shape, -1000, np.int16)
    vol[4:-4, 4:-4] = 40
    vol[4:12, 4:14] = 300  # asymmetric: a transpose or flip of the mask does not land on itself
    mask = (vol > 200).astype(np.uint8)
    nib.save(nib.Nifti1Image(vol, affine), str(tmp_path / "ct.nii.gz"))
    nib.save(nib.Nifti1Image(mask, affine), str(tmp_path / "mask.nii.gz"))
    return mask


@pytest.mark.parametrize("affine", [AFFINE, LPS_AFFINE], ids=["RAS", "LPS-anisotropic"])
def test_a_stored_array_png_of_a_non_square_slice_is_refused_as_transposed(tmp_path, affine):
    mask = _volumes(tmp_path, (40, 24, 6), affine)
    Image.fromarray(mask[:, :, 3] * 255).save(tmp_path / "naive.png")  # the array as stored: 40 x 24
    with pytest.raises(ValueError) as e:
        read_reference(tmp_path / "naive.png", tmp_path / "ct.nii.gz", (24, 40), 3)  # displayed: 24 x 40
    message = str(e.value)
    assert "shape 40 x 24 vs 24 x 40" in message and "transposed" in message
    assert "displayed orientation" in message and "input.png" in message
    # a picture of the displayed slice is the NIfTI mask's pixels
    shown = read_mask(tmp_path / "mask.nii.gz", 3)
    Image.fromarray(shown.astype(np.uint8) * 255).save(tmp_path / "shown.png")
    np.testing.assert_array_equal(read_reference(tmp_path / "shown.png", tmp_path / "ct.nii.gz", (24, 40), 3), shown)


def test_a_transposed_picture_of_a_picture_is_called_so_without_the_scan_advice(tmp_path):
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "img.png")
    Image.fromarray(np.full((30, 20), 255, np.uint8)).save(tmp_path / "ref.png")
    with pytest.raises(ValueError, match="transposed$"):
        read_reference(tmp_path / "ref.png", tmp_path / "img.png", (20, 30))


def test_segment_notes_that_a_picture_reference_of_a_nifti_is_read_as_displayed(tmp_path, capsys):
    torch.manual_seed(0)
    model = GMAE2D(img_size=32, patch_size=8, in_channels=1, model_size="tiny", num_gaussians=48)
    torch.save(model.model_checkpoint(), tmp_path / "model.pt")
    mask = _volumes(tmp_path, (32, 32, 6))
    Image.fromarray(mask[:, :, 3] * 255).save(tmp_path / "naive.png")  # square: the shape cannot tell
    common = ["segment", "--checkpoint", str(tmp_path / "model.pt"), "--image", str(tmp_path / "ct.nii.gz"),
              "--slice", "3", "--num-layers", "4"]  # fmt: skip
    assert main([*common, "--reference", str(tmp_path / "naive.png"), "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "naive.png" in line]
    assert len(notes) == 1 and "note:" in notes[0] and "displayed orientation" in notes[0]
    assert main([*common, "--reference", str(tmp_path / "mask.nii.gz"), "--out", str(tmp_path / "b")]) == 0
    assert "displayed orientation" not in capsys.readouterr().err  # a NIfTI reference on the image's grid
    assert "iou" in json.loads((tmp_path / "b" / "segment.json").read_text(encoding="utf-8"))
