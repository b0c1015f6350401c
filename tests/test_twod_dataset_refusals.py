"""The 2D bundles refuse a training folder that cannot be used as the 3D bundles do: one ``error: DatasetError:``
line naming the folder and the problem, with no traceback (a missing folder printed MONAI's wrapper traceback
ending in ``FileNotFoundError``)."""

from __future__ import annotations

import pytest

from tests.bundle_helpers import run_bundle


@pytest.mark.parametrize("config", ["gmae2d_pretrain/configs/train.json", "gvit_classification/configs/train.json"])
def test_a_missing_training_folder_is_refused_in_one_line(config, tmp_path):
    missing = tmp_path / "no_such_folder"
    proc = run_bundle("training", config, "--dataset_dir", str(missing), "--output_dir", str(tmp_path / "out"),
                      "--device", "cpu")  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" not in log, log[-3000:]
    last = log.strip().splitlines()[-1]
    assert last.startswith("error: DatasetError: ") and str(missing) in last, last


def test_an_empty_class_folder_is_a_dataset_refusal(tmp_path):
    from medgmae.data.datalist import DatasetError
    from medgmae.twod.classification_data import scan_image_folder

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(DatasetError, match="holds no|no images|no image"):
        scan_image_folder(tmp_path)


@pytest.mark.parametrize("val_classes", [["a"], ["a", "c"]])
def test_a_val_folder_without_every_training_class_names_both_class_sets(tmp_path, val_classes):
    """train/a, train/b with val/a only: the class sets are compared before val/ is read as a dataset of its own (which
    said "needs at least 2 classes, found only class ['a']"); a class val/ alone holds is named the same way."""
    import numpy as np
    from PIL import Image

    from medgmae.data.datalist import DatasetError
    from medgmae.twod.classification_data import load_classification_data

    for split, names in (("train", ["a", "b"]), ("val", val_classes)):
        for name in names:
            (tmp_path / split / name).mkdir(parents=True)
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / split / name / "x.png")
    with pytest.raises(DatasetError) as e:
        load_classification_data(tmp_path)
    assert f"dataset {tmp_path}: train/ has classes ['a', 'b'] but val/ has {val_classes}" in str(e.value)
    assert "val/ must hold every class of train/" in str(e.value)
