"""Label maps stored as float with float noise (``1.0000001``) are read as their whole class numbers wherever labels
are read (the pre-check, the training transforms, native-space Dice, ``medgmae-datalist``); a label value far from
any whole number (``0.5``) is still refused, naming the file."""

from __future__ import annotations

import numpy as np
import pytest

from medgmae.data import DatasetError, check_datalist
from medgmae.data.decathlon import class_values
from medgmae.data.reader import LABEL_TOLERANCE, LoadVolumed, read_volume, whole_labels

from data_helpers import nifti_file

SHAPE = (12, 10, 8)


def _pair(folder, labels: np.ndarray, name: str = "case") -> dict:
    image = np.random.default_rng(0).normal(0, 100, SHAPE).astype(np.float32)
    return {"image": nifti_file(folder / f"{name}.nii.gz", image),
            "label": nifti_file(folder / f"{name}_seg.nii.gz", labels.astype(np.float32))}  # fmt: skip


def _noisy_labels() -> np.ndarray:
    """Classes 0, 1, 2 with float32 noise on both sides of each: 1.0000001 is 1 + one float32 step."""
    classes = np.zeros(SHAPE, np.float32)
    classes[2:6], classes[6:10] = 1, 2
    noise = np.random.default_rng(1).uniform(-LABEL_TOLERANCE / 2, LABEL_TOLERANCE / 2, SHAPE).astype(np.float32)
    noisy = classes + noise * (classes > 0)
    noisy[3, 3, 3], noisy[7, 7, 7] = np.float32(1.0000001), np.float32(1.9999999)
    return noisy


def test_float_noise_is_rounded_and_a_real_fraction_refused():
    noisy = _noisy_labels()
    assert not np.array_equal(noisy, np.round(noisy))
    rounded = whole_labels(noisy, "seg.nii.gz")
    assert rounded.dtype == np.float32 and np.array_equal(rounded, np.round(noisy)) and rounded[7, 7, 7] == 2
    exact = np.round(noisy)
    assert whole_labels(exact, "seg.nii.gz") is exact  # nothing to round: no copy
    half = np.round(noisy)
    half[1, 1, 1] = 0.5
    with pytest.raises(ValueError) as e:
        whole_labels(half, "/data/seg.nii.gz")
    assert str(e.value).startswith("/data/seg.nii.gz: a label map holds whole class numbers, but 1 voxel of this "
                                   "one lies further than 0.001 from any (0.5)")  # fmt: skip


def test_the_pre_check_takes_noisy_labels_and_names_a_fractional_one(tmp_path):
    """The pre-check refused a float label map with noise as 'label has non-integer values'."""
    noisy = _pair(tmp_path, _noisy_labels(), "noisy")
    assert check_datalist([noisy], label_key="label", num_classes=3, require_label=True) == [noisy]
    half = np.round(_noisy_labels())
    half[0, 0, :] = 0.5
    bad = _pair(tmp_path, half, "half")
    with pytest.raises(DatasetError) as e:
        check_datalist([noisy, bad], label_key="label", num_classes=3, require_label=True)
    assert f"{bad['label']}: a label map holds whole class numbers, but 8 voxels of this one lie further" in str(e.value)
    assert noisy["label"] not in str(e.value)


def test_labels_are_loaded_rounded_so_no_cast_truncates_them(tmp_path):
    """Read as it was, ``0.9999999`` became class 0 in the one-hot cast of the loss and of Dice."""
    case = _pair(tmp_path, _noisy_labels())
    loaded = LoadVolumed(keys=["image", "label"], label_keys="label")(case)
    label = loaded["label"].numpy()[0]
    assert np.array_equal(label, np.round(_noisy_labels())) and np.array_equal(label.astype(np.int64), label)
    image = LoadVolumed(keys=["image"])(case)["image"].numpy()[0]
    assert np.array_equal(image, read_volume(case["image"]).array)  # images are not rounded
    assert np.array_equal(read_volume(case["label"], label=True).array, label)


def test_the_datalist_writer_counts_noisy_classes_and_names_a_fractional_map(tmp_path):
    noisy = _pair(tmp_path, _noisy_labels())["label"]
    assert sorted(class_values([noisy])) == [0, 1, 2]
    half = np.round(_noisy_labels())
    half[4, 4, 4] = 1.5
    bad = _pair(tmp_path, half, "bad")["label"]
    with pytest.raises(DatasetError, match=rf"^{bad}: a label map holds whole class numbers, but 1 voxel"):
        class_values([noisy, bad])
    # every such map is named, not the first alone (the writer stopped there, one fix and rerun per map)
    half[5, 5, 5] = -2.0
    worse = _pair(tmp_path, np.round(half) - 3.0, "worse")["label"]
    with pytest.raises(DatasetError) as e:
        class_values([bad, noisy, worse])
    lines = str(e.value).splitlines()
    assert lines[0] == "2 label maps cannot be used:" and len(lines) == 3, lines
    assert lines[1].startswith(f"  {bad}: a label map holds whole class numbers, but 1 voxel")
    assert lines[2].startswith(f"  {worse}: a label map holds whole class numbers >= 0, this one holds -5")


def test_pre_training_loads_its_labels_rounded(tmp_path):
    """The pre-training bundle's own loader, as its config builds it: it read the label map as it was (no
    ``label_keys``), and its ``uint8`` cast made every ``0.99999994`` voxel background (fine-tuning's loader is
    ``medgmae.finetune.transforms._load_and_resample``, given its label keys)."""
    from monai.bundle import ConfigParser

    from tests.bundle_helpers import BUNDLES

    case = _pair(tmp_path, _noisy_labels())
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / "medgmae_pretrain" / "configs" / "train.json"))
    parser.update({"keys": ["image", "label"]})
    loaded = parser.get_parsed_content("train#load")(case)
    assert np.array_equal(loaded["label"].numpy()[0], np.round(_noisy_labels()))
    assert np.array_equal(loaded["image"].numpy()[0], read_volume(case["image"]).array)
