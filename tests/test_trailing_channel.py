"""A NIfTI ``(X, Y, Z, 1)`` (a single trailing channel, as some tools save a 3D volume) is the 3D volume: the
segmentation and the zero-shot rendering written from it are 3D on its grid, with its affine; an ``(X, Y, Z, C)``
input of ``C > 1`` channels is refused, naming the file."""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pytest
import torch

from medgmae.data.reader import read_volume
from medgmae.preprocessing import PreprocessingSpec

from model_helpers import tiny_model_file


def _oblique_affine() -> np.ndarray:
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    affine = np.eye(4)
    affine[:3, :3] = np.array([[-c, s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([0.9, 1.2, 2.7])
    affine[:3, 3] = [30.0, -12.0, 80.0]
    return affine


def _ct(shape=(30, 26, 9)) -> np.ndarray:
    hu = np.full(shape, -1000.0, dtype=np.float32)  # air around a body
    body = tuple(slice(n // 8, n - n // 8) for n in shape)
    hu[body] = np.random.default_rng(1).normal(40.0, 150.0, size=hu[body].shape)
    return hu


def _save(array: np.ndarray, path) -> str:
    nib.save(nib.Nifti1Image(array, _oblique_affine()), str(path))
    return str(path)


def test_a_trailing_channel_of_one_is_read_as_the_volume_and_more_are_refused(tmp_path):
    vol = read_volume(_save(_ct()[..., None], tmp_path / "ct4d.nii.gz"))
    assert vol.array.shape == (30, 26, 9)
    np.testing.assert_allclose(vol.affine, _oblique_affine(), atol=1e-5)
    movie = _save(np.stack([_ct()] * 3, axis=-1), tmp_path / "movie.nii.gz")
    with pytest.raises(ValueError) as e:
        read_volume(movie)
    assert str(e.value) == (f"{movie}: expected a single 3D volume, got an array of shape (30, 26, 9, 3): 3 volumes or "
                            "channels beyond its three spatial axes (a time series or a multi-channel image); give one "
                            "3D volume per file (a single trailing channel, (X, Y, Z, 1), is read as the 3D volume)")  # fmt: skip


def test_the_segmentation_of_an_xyz1_input_is_3d_with_its_affine(tmp_path):
    from monai.transforms import Activationsd

    from medgmae.finetune import SaveSegmentationd
    from medgmae.finetune.transforms import inference_transforms
    from medgmae.finetune.invert import InvertedArgmaxd

    spec = PreprocessingSpec(spacing=(0.8, 1.1, 2.5), hu_window=(-300.0, 400.0), input_size=(24, 24, 12), patch_size=12)
    image = _save(_ct()[..., None], tmp_path / "ct.nii.gz")
    pre = inference_transforms(spec)
    d = pre({"image": image})
    logits = torch.from_numpy(np.random.default_rng(2).normal(size=(3, *d["image"].shape[1:])).astype(np.float32))
    d = Activationsd(keys="pred", softmax=True)({**d, "pred": logits})
    d = InvertedArgmaxd(keys="pred", transform=pre, orig_keys="image")(d)
    path = SaveSegmentationd(output_dir=tmp_path / "seg")(d)["pred_path"]
    written = nib.load(path)
    assert written.shape == (30, 26, 9)
    np.testing.assert_allclose(written.affine, _oblique_affine(), atol=1e-4)
    np.testing.assert_allclose(written.get_qform(), _oblique_affine(), atol=1e-4)


def test_the_zero_shot_rendering_of_an_xyz1_input_is_3d_with_its_affine(tmp_path, monkeypatch, caplog):
    import medgmae.mae_training.inference as zero_shot

    monkeypatch.setattr(zero_shot, "slices_png", lambda *args, **kwargs: None)
    model = str(tiny_model_file(tmp_path / "model.pt", spacing=1.5, num_gaussians=8))
    image = _save(_ct((16, 16, 12))[..., None], tmp_path / "ct.nii.gz")
    with caplog.at_level(logging.WARNING, logger="medgmae"):
        paths = zero_shot.GaussianInference(model, image, tmp_path / "out", device="cpu").run()
    written = nib.load(str(paths["nifti"]))
    assert written.shape == (16, 16, 12)
    np.testing.assert_allclose(written.affine, _oblique_affine(), atol=1e-4)
