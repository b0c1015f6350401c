"""The data pre-check: every unusable file named in one message (truncated, blank, off-grid), label values."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from medgmae.data import DatasetError, check_datalist, read_volume
from medgmae.mae_training import pretrain_split

from data_helpers import nifti_file, truncate_file, varied_volume as _varied


def test_precheck_names_every_unusable_file_in_one_message(tmp_path):
    folder = tmp_path / "vols"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        nifti_file(folder / f"good_{i}.nii.gz", rng.normal(0, 100, (16, 16, 12)).astype(np.float32))
    truncate_file(Path(nifti_file(folder / "cut.nii.gz", rng.normal(0, 100, (32, 32, 24)).astype(np.float32))))
    nifti_file(folder / "flat.nii.gz", np.zeros((16, 16), np.float32))
    nifti_file(folder / "movie.nii.gz", np.zeros((8, 8, 8, 3), np.float32))
    nifti_file(folder / "slice.nii.gz", rng.normal(0, 100, (16, 16, 1)).astype(np.float32))  # a 2D slice as most tools save it
    nifti_file(folder / "line.nii.gz", rng.normal(0, 100, (1, 1, 50)).astype(np.float32))
    nan = np.zeros((8, 8, 8), np.float32)
    nan[1, 2, 3] = np.nan
    nifti_file(folder / "nan.nii.gz", nan)
    (tmp_path / "cache").mkdir()  # a folder there already: the files that passed are remembered
    for workers in (0, 2):
        with pytest.raises(DatasetError) as err:
            pretrain_split(str(folder), tmp_path, precheck_workers=workers, ledger_dir=tmp_path / "cache")
        msg = str(err.value)
        assert msg.startswith("6 problems in") and "good_" not in msg
        lines = msg.splitlines()[1:]
        for name, problem in (("cut.nii.gz", "cannot read the volume"), ("flat.nii.gz", "single 3D volume"),
                              ("movie.nii.gz", "single 3D volume"), ("nan.nii.gz", "NaN"),
                              ("slice.nii.gz", "a single slice or line (shape (16, 16, 1)), not a 3D volume"),
                              ("line.nii.gz", "a single slice or line")):  # fmt: skip
            assert any(name in line and problem in line for line in lines), (name, msg)
    ledger = json.loads((tmp_path / "cache" / "precheck.json").read_text(encoding="utf-8"))  # only the files that passed
    assert sorted(Path(fp[0][0]).name for fp in ledger["records"][0]["passed"]) == [f"good_{i}.nii.gz" for i in range(4)]
    # a case listed twice (in training and validation) is one problem, named once
    cases = [{"image": str(folder / "nan.nii.gz")}, {"image": str(folder / "good_0.nii.gz")}, {"image": str(folder / "nan.nii.gz")}]
    with pytest.raises(DatasetError, match=r"^1 problem in") as err:
        check_datalist(cases)
    assert str(err.value).count("nan.nii.gz") == 1


def test_gzip_truncation_is_what_the_check_sees(tmp_path):
    """The truncated file of the pre-check test fails in gzip itself (the failure users met inside a dataset)."""
    path = Path(nifti_file(tmp_path / "cut.nii.gz", np.random.default_rng(0).normal(0, 1, (32, 32, 24)).astype(np.float32)))
    truncate_file(path)
    with pytest.raises(EOFError):
        gzip.decompress(path.read_bytes())
    with pytest.raises(ValueError, match="cut.nii.gz: cannot read the volume"):
        read_volume(path)


def test_a_label_with_negative_values_is_named_without_a_class_count():
    """Without num_classes (pre-training's labels) a label holding negative values (an HU image listed as the label)
    is named as such, not with an empty class range."""
    from medgmae.data.precheck import _label_problems

    hu = np.array([-1000.0, 0.0, 700.0])
    assert _label_problems(hu, "lab.nii.gz", None) == [
        "lab.nii.gz: label values in [-1000, 700] include negative ones: a label map holds class indices from 0 (is "
        "this an image listed as the label?)"]
    assert _label_problems(hu, "lab.nii.gz", 3) == ["lab.nii.gz: label values in [-1000, 700] are outside the class range [0, 2]"]
    assert _label_problems(np.array([0.0, 5.0]), "lab.nii.gz", None) == []


def test_a_binary_mask_saved_as_0_255_is_named_as_such_apart_from_maps_needing_more_classes():
    """A 0/255 mask is a binary mask in another scale, not a map needing 256 classes: its own line says to divide it
    by 255, and the maps of other ranges in the same run are grouped with the count they need (3, not 256), each
    file with its own range."""
    from medgmae.data.precheck import _grouped_range_problems, _label_problems

    problems = [line for path, label in (("mask.nii.gz", [0.0, 255.0]), ("two.nii.gz", [0.0, 2.0]),
                                         ("one.nii.gz", [0.0, 1.0, 2.0, 1.0]), ("many.nii.gz", [0.0, 7.0, 255.0]))
                for line in _label_problems(np.array(label), path, 2)]  # fmt: skip
    lines, needed = _grouped_range_problems(problems)
    assert needed == 256  # many.nii.gz holds 0, 7 and 255: class indices up to 255
    assert lines[0] == ("3 label maps hold class values outside the class range [0, 1] (2 classes): two.nii.gz (0-2), "
                        "one.nii.gz (0-2), many.nii.gz (0-255); labels 0-255 found: they need 256 classes "
                        "(--num_classes 256, with as many names in the datalist's 'labels' map when it has one)")  # fmt: skip
    assert lines[1:] == ["mask.nii.gz: label values in [0, 255] are outside the class range [0, 1]: only 0 and 255: a "
                         "binary mask saved as 0/255? divide it by 255"]  # fmt: skip
    lines, needed = _grouped_range_problems(problems[:3])
    assert needed == 3 and "two.nii.gz, one.nii.gz; labels 0-2 found: they need 3 classes" in lines[0]


@pytest.mark.parametrize("value", [-1000.0, 0.0, -3024.0])
def test_a_blank_image_is_refused_by_the_pre_check_naming_it(tmp_path, value):
    """An image whose voxels all hold one value passed the pre-check; fine-tuning then stopped mid-run with MONAI's
    "No sampling location available" naming no file (its label-guided crops find no place), after writing a
    checkpoint, and pre-training trained on it. Its label map, all background, is no problem of its own."""
    from medgmae.finetune.data import check_cases

    rng = np.random.default_rng(0)
    good = {"image": nifti_file(tmp_path / "good.nii.gz", rng.normal(0, 300, (12, 12, 8)).astype(np.float32)),
            "label": nifti_file(tmp_path / "good_label.nii.gz", (rng.random((12, 12, 8)) > 0.5).astype(np.uint8))}
    blank = {"image": nifti_file(tmp_path / "blank.nii.gz", np.full((12, 12, 8), value, np.int16)),
             "label": nifti_file(tmp_path / "blank_label.nii.gz", np.zeros((12, 12, 8), np.uint8))}
    with pytest.raises(DatasetError, match=r"^1 problem in") as err:
        check_cases([good, blank], num_classes=2)
    assert f"blank.nii.gz: every voxel is {value:g}, an empty or blanked volume" in str(err.value)
    assert "label" not in str(err.value).split("\n", 1)[1]
    with pytest.raises(DatasetError, match="blank.nii.gz: every voxel is"):  # pre-training's check, no labels
        check_datalist([{"image": good["image"]}, {"image": blank["image"]}])
    assert check_cases([good], num_classes=2) == [good]


def test_the_resampling_advice_is_given_once_for_several_label_maps_off_their_grids(tmp_path):
    """Each off-grid label map's line repeated the same resampling advice; with two or more it is said once after
    them (one off-grid map keeps it on its line)."""
    items = []
    for i in range(3):
        image = nifti_file(tmp_path / f"img{i}.nii.gz", _varied((10, 8, 6), -100.0))
        shape = (10, 8, 7) if i < 2 else (10, 8, 6)  # the first two on another grid
        label = nifti_file(tmp_path / f"lab{i}.nii.gz", (np.arange(np.prod(shape)) % 2).reshape(shape).astype(np.uint8))
        items.append({"image": str(image), "label": str(label)})
    with pytest.raises(DatasetError) as e:
        check_datalist(items, label_key="label", num_classes=2, source="d.json")
    text = str(e.value)
    assert text.count("resample the label map") == 1 and text.count("is not on the voxel grid") == 2
    # a line of advice after the list, not one more problem in it
    assert text.splitlines()[-1].startswith("for the label maps off their image's grid: resample the label map")
    assert text.count("\n  - ") == 2 and len(e.value.problems) == 2 and "resample" not in " ".join(e.value.problems)
    from medgmae.finetune.classes import refuse_unnamed_classes  # the error's lines, as other messages quote them

    with pytest.raises(DatasetError) as e:
        refuse_unnamed_classes("d.json", items)
    assert str(e.value).count("resample the label map") == 1
    with pytest.raises(DatasetError) as e:  # one: the advice stays on its line
        check_datalist(items[1:], label_key="label", num_classes=2, source="d.json")
    assert len(str(e.value).splitlines()) == 2 and "is not on the voxel grid" in str(e.value).splitlines()[1]
    assert str(e.value).count("resample the label map") == 1
