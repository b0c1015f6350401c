"""Labels inverted a few class channels at a time (medgmae.finetune.invert) against MONAI's all-channel recipe."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Activationsd, AsDiscreted, Compose, Invertd

from medgmae.finetune.transforms import inference_transforms
from medgmae.finetune.invert import InvertedArgmaxd
from medgmae.preprocessing import PreprocessingSpec

SPEC = PreprocessingSpec(spacing=(0.8, 1.1, 2.5), hu_window=(-300.0, 400.0), input_size=(24, 24, 12), patch_size=12)


def _case(tmp_path, classes: int) -> tuple[Compose, dict]:
    """An oblique, anisotropic scan pre-processed as the bundle does it, and softmaxed random logits on its grid;
    classes 2 and 3 are equal everywhere (ties)."""
    rng = np.random.default_rng(1)
    hu = np.full((30, 26, 9), -1000.0, dtype=np.float32)  # air around a body: the foreground crop is inverted too
    hu[4:26, 3:22, 1:8] = rng.normal(40.0, 150.0, size=(22, 19, 7))
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    affine = np.eye(4)
    affine[:3, :3] = np.array([[-c, s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([0.9, 1.2, 2.7])
    affine[:3, 3] = [30.0, -12.0, 80.0]
    nib.save(nib.Nifti1Image(hu, affine), str(tmp_path / "ct.nii.gz"))
    pre = inference_transforms(SPEC)
    d = pre({"image": str(tmp_path / "ct.nii.gz")})
    logits = torch.from_numpy(rng.normal(size=(classes, *d["image"].shape[1:])).astype(np.float32))
    logits[3] = logits[2]
    d["pred"] = logits
    return pre, Activationsd(keys="pred", softmax=True)(d)


@pytest.mark.parametrize("step", [1, 2, 3, 7])
def test_stepwise_labels_equal_monais_all_channel_labels(tmp_path, step):
    """Voxel for voxel, dtype, shape and affine: ``Invertd`` (linear) of all 7 channels then ``AsDiscreted``."""
    pre, d = _case(tmp_path, classes=7)
    reference = Compose([Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True),
                         AsDiscreted(keys="pred", argmax=True)])({**d, "pred": d["pred"].clone()})["pred"]  # fmt: skip
    out = InvertedArgmaxd(keys="pred", transform=pre, orig_keys="image", channels_per_step=step)(d)["pred"]
    assert out.shape == reference.shape == (1, 30, 26, 9)
    assert out.dtype == reference.dtype
    assert len(torch.unique(reference)) > 2 and not (reference == 3).any()  # ties go to class 2, as argmax's
    torch.testing.assert_close(out, reference, rtol=0, atol=0)
    np.testing.assert_array_equal(np.asarray(out.affine), np.asarray(reference.affine))
    assert out.meta["filename_or_obj"] == reference.meta["filename_or_obj"]
    assert not out.applied_operations


def test_a_nan_probability_wins_as_in_argmax():
    """``torch.argmax`` takes a NaN as the largest value; so does the running maximum, in whichever group it is."""
    from medgmae.finetune.invert import _merge_group

    probs = torch.tensor([[[0.2, 0.5]], [[0.7, float("nan")]], [[0.1, 0.9]]])  # (3, 1, 2)
    best, label = _merge_group(None, None, probs[:1], 0)
    for first in (1, 2):
        best, label = _merge_group(best, label, probs[first : first + 1], first)
    assert label.tolist() == torch.argmax(probs, dim=0, keepdim=True).float().tolist() == [[[1.0, 1.0]]]


def test_channels_per_step_must_be_positive():
    with pytest.raises(ValueError, match="channels_per_step must be a positive whole number, got 0"):
        InvertedArgmaxd(keys="pred", transform=Compose([]), orig_keys="image", channels_per_step=0)


def test_a_long_inversion_logs_its_class_groups(tmp_path, monkeypatch, caplog):
    """No bar shows the inversion (a full-size scan of many classes took minutes without a line): a line a minute,
    here every group with the interval at 0; none at the last group (the case's own line follows)."""
    import logging

    from medgmae import terminal

    monkeypatch.setattr(terminal, "LINE_SECONDS", 0.0)
    pre, d = _case(tmp_path, classes=7)
    with caplog.at_level(logging.INFO, logger="medgmae.finetune.invert"):
        InvertedArgmaxd(keys="pred", transform=pre, orig_keys="image", channels_per_step=3)(d)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("inverting")]
    assert [line.split(",")[0] for line in lines] == ["inverting to the input's grid: 1/3 class groups",
                                                      "inverting to the input's grid: 2/3 class groups"]  # fmt: skip
