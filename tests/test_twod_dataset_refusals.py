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
