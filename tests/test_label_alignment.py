"""Labels go through the pre-processing as labels: resampled nearest-neighbour (only the label values, as MONAI's
own ``Spacingd(mode="nearest")`` gives them), and moved with their image by every random spatial transform of the
fine-tuning training pipeline."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import torch

from medgmae.preprocessing import PreprocessingSpec


def _two_blocks(shape: tuple[int, int, int]) -> np.ndarray:
    """Two overlapping, asymmetric label blocks (values 1 and 2): no flip or rotation maps them onto themselves."""
    lab = np.zeros(shape, np.uint8)
    lab[2:14, 3:9, 4:12] = 1
    lab[8:20, 10:18, 2:7] = 2
    return lab


def test_fine_tuning_training_crops_keep_image_and_label_aligned(tmp_path):
    from medgmae.finetune.transforms import train_transforms

    lab = _two_blocks((24, 20, 16))
    img = np.where(lab > 0, 250.0, -175.0).astype(np.float32)  # a thresholded copy: above the window / below it
    affine = np.diag([1.5, 1.5, 1.5, 1.0])  # already at the spec's spacing: nothing is interpolated
    for name, arr in (("img", img), ("lab", lab)):
        nib.save(nib.Nifti1Image(arr, affine), tmp_path / f"{name}.nii.gz")
    spec = PreprocessingSpec(spacing=1.5, input_size=16, patch_size=8)
    pipeline = train_transforms(spec, num_samples=4, warn_padding=False)
    pipeline.set_random_state(0)
    item = {"image": str(tmp_path / "img.nii.gz"), "label": str(tmp_path / "lab.nii.gz")}
    samples = [s for _ in range(15) for s in pipeline(dict(item))]
    assert len(samples) == 60
    for s in samples:
        image, label = np.asarray(s["image"]), np.asarray(s["label"])
        assert image.shape == label.shape == (1, 16, 16, 16)
        # after the window the image is 0 outside and 1 inside, give or take the 10 % intensity jitter
        np.testing.assert_array_equal(image > 0.5, label > 0)


def test_labels_are_resampled_nearest_neighbour_as_monai_does():
    from monai.data import MetaTensor
    from monai.transforms import Compose, Orientationd, Spacingd

    spec = PreprocessingSpec(spacing=(1.5, 1.5, 2.0), input_size=16, patch_size=8)
    lab = _two_blocks((20, 18, 9)).astype(np.float32)
    affine = torch.tensor([[-0.8, 0, 0, 30], [0, 0.9, 0, -10], [0, 0, 3.0, 5], [0, 0, 0, 1.0]], dtype=torch.float64)
    data = {"image": MetaTensor(torch.from_numpy(lab * 100)[None], affine=affine),
            "label": MetaTensor(torch.from_numpy(lab)[None], affine=affine)}
    out = Compose(spec.transforms(["image"], ["label"]))(data)["label"]
    ref = Compose([Orientationd("label", axcodes="RAS"), Spacingd("label", pixdim=(1.5, 1.5, 2.0), mode="nearest")])(
        {"label": data["label"].clone()})["label"]
    assert set(np.unique(out.numpy())) == {0.0, 1.0, 2.0}
    np.testing.assert_array_equal(out.numpy(), ref.numpy())
    np.testing.assert_allclose(out.affine.numpy(), ref.affine.numpy())
