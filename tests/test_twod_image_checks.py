"""medgmae-2d refuses images whose geometry or content gives nothing to layer, with the 3D readers' words: a NIfTI
whose voxel-to-world matrix is singular or not finite, a blank image or slice (every pixel one value), a symbolic
link loop; a tiny picture is noted as upscaled. Nothing is written for a refused image."""

import os

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from gmae2d_helpers import tiny_gmae2d
from medgmae.twod.cli import main


@pytest.fixture()
def model_file(tmp_path):
    torch.save(tiny_gmae2d(k=8, size=16).model_checkpoint(), tmp_path / "model.pt")
    return tmp_path / "model.pt"


def _segment(model_file, image, out, *extra):
    return main(["segment", "--checkpoint", str(model_file), "--image", str(image), "--out", str(out),
                 "--device", "cpu", *extra])  # fmt: skip


def _volume(path, data, affine):
    img = nib.Nifti1Image(np.asarray(data, np.float32), np.eye(4))
    img.set_qform(None, code=0)  # the frame only in the sform (a singular one cannot be a qform)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))
    return path


@pytest.mark.parametrize("entry", ["nan", "singular"])
def test_a_nifti_whose_affine_places_no_voxel_is_refused_as_the_3d_readers_refuse_it(model_file, tmp_path, capsys,
                                                                                      entry):  # fmt: skip
    """NaN in the sform was layered from a meaningless orientation (exit 0); a singular one failed inside nibabel
    ("Cannot drop coordinates when applying orientation to data"). Both now get the 3D reader's line."""
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[(0, 3) if entry == "nan" else (2, 2)] = np.nan if entry == "nan" else 0.0
    data = np.random.default_rng(0).normal(0, 100, (12, 12, 5))
    path = _volume(tmp_path / "ct.nii.gz", data, affine)
    assert _segment(model_file, path, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert f"medgmae-2d segment: error: {path}: the voxel-to-world matrix is singular or not finite:" in err, err
    assert not (tmp_path / "out").exists()


def test_a_blank_picture_is_refused_with_its_value(model_file, tmp_path, capsys):
    """Every pixel 7 (8-bit): layers and masks of nothing were written with exit 0."""
    Image.fromarray(np.full((20, 24), 7, np.uint8)).save(tmp_path / "blank.png")
    assert _segment(model_file, tmp_path / "blank.png", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 'blank.png'}: every pixel is {7 / 255:.4g} (7 of 255), a blank image" in err, err
    assert not (tmp_path / "out").exists()


def test_a_constant_slice_of_a_volume_is_refused_naming_the_slice_and_value(model_file, tmp_path, capsys):
    """Slice 2 of a volume holds -1000 only (air outside the body); the other slices do not."""
    data = np.random.default_rng(1).normal(0, 100, (12, 12, 5))
    data[:, :, 2] = -1000.0
    path = _volume(tmp_path / "ct.nii.gz", data, np.diag([2.0, 2.0, 3.0, 1.0]))
    assert _segment(model_file, path, tmp_path / "out", "--slice", "2") == 2
    err = capsys.readouterr().err
    assert f"error: {path}, axial slice 2 of 5 (numbered from 0): every pixel is -1000, a blank image" in err, err
    assert not (tmp_path / "out").exists()
    assert _segment(model_file, path, tmp_path / "out", "--slice", "1") == 0  # a slice with content is layered


def test_a_one_pixel_picture_is_noted_as_upscaled(model_file, tmp_path, capsys):
    """A 1 x 1 picture is resized to the model's input by design (no blank-image refusal: it has one pixel); a
    short note says so."""
    Image.fromarray(np.full((1, 1), 90, np.uint8)).save(tmp_path / "dot.png")
    assert _segment(model_file, tmp_path / "dot.png", tmp_path / "out") == 0
    assert "medgmae-2d segment: note: dot.png is upscaled from 1x1 to the model's 16x16 input" in capsys.readouterr().err


def test_a_symbolic_link_loop_is_named_as_one(model_file, tmp_path, capsys):
    """A link to itself was "a link to loop.png, which is not found"; the recon commands said "does not exist"."""
    from recon.cli import main as recon_main

    loop = tmp_path / "loop.nii.gz"
    os.symlink(loop.name, loop)
    said = f"{loop}: a symbolic link loop (it points back to itself)"
    assert _segment(model_file, loop, tmp_path / "out") == 2
    assert f"medgmae-2d segment: error: {said}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert recon_main(["simulate", "--volume", str(loop), "--geometry", "parallel", "--views", "4",
                       "--out", str(tmp_path / "sim")]) == 2  # fmt: skip
    assert f"medgmae-recon simulate: error: {said}" in capsys.readouterr().err
