"""Fine-tuning's per-case checks (shapes, geometry, NaN, missing files, file patterns) and segmentation inputs."""

from __future__ import annotations

import json
import logging
import os
import re

import numpy as np
import pytest

from medgmae.finetune.data import check_cases, prepare_datalists
from medgmae.data.datalist import DatasetError
from medgmae.finetune.segment_inputs import inference_cases

from finetune_helpers import make_case, truncated_copy


def test_good_case_passes(tmp_path):
    case = make_case(tmp_path, "good")
    assert check_cases([case], num_classes=3) == [case]


@pytest.mark.parametrize(
    "kwargs, message, culprit",
    [
        (dict(label_shape=(12, 12, 7)), r"label \S+_lab.nii.gz is not on the voxel grid of image \S+_img.nii.gz: "
         r"shape 12 x 12 x 7 vs 12 x 12 x 8 \(the shapes differ; the affines agree\)", "lab"),
        # 0.5 mm more per slice: voxel k = 7 is 3.5 mm off; the tolerance is 1e-2 of the 1.5 mm voxel
        (dict(label_affine=np.diag([1.5, 1.5, 2.5, 1.0])), r"grid of image \S+_img.nii.gz: voxels up to 3.5 mm apart "
         r"\(tolerance 0.015 mm\)", "lab"),
        (dict(max_label=3), r"outside the class range \[0, 2\]", "lab"),
        (dict(nan=True), "NaN", "img"),
    ],
)
def test_bad_case_errors_name_the_file(tmp_path, kwargs, message, culprit):
    case = make_case(tmp_path, "bad_case_07", **kwargs)
    with pytest.raises(DatasetError, match=message) as err:
        check_cases([make_case(tmp_path, "good"), case], num_classes=3)
    assert f"bad_case_07_{culprit}.nii.gz" in str(err.value) and "good_" not in str(err.value)


def test_missing_file_names_the_case(tmp_path):
    case = make_case(tmp_path, "case_11")
    os.remove(case["label"])
    with pytest.raises(DatasetError, match="label volume not found: .*case_11_lab.nii.gz"):
        check_cases([case], num_classes=3)
    with pytest.raises(DatasetError, match="nowhere.nii.gz"):
        inference_cases([str(tmp_path / "nowhere.nii.gz")])


def test_an_empty_input_files_list_is_refused_and_the_datalist_default_is_logged(tmp_path, caplog):
    """``--input_files "[]"`` (a shell pattern that matched nothing) must not segment the validation list instead;
    leaving input_files out (None) segments the datalist's list and says which."""
    import logging

    case = make_case(tmp_path, "case_01")
    dl = tmp_path / "dataset.json"
    dl.write_text(json.dumps({"training": [case], "validation": [case]}))
    for empty in ([], "", ()):
        with pytest.raises(DatasetError, match="input_files is empty"):
            inference_cases(empty, datalist=dl)
    for scalar in (5, 2.5, True):  # MONAI reads --input_files 5 as a number: it was "'int' object is not iterable"
        with pytest.raises(DatasetError, match=rf"input_files must be a path or a list of paths .*got {scalar!r}$"):
            inference_cases(scalar, datalist=dl)
    with caplog.at_level(logging.INFO, logger="medgmae"):
        cases = inference_cases(None, datalist=dl)
    assert [c["image"] for c in cases] == [case["image"]]
    assert f"no input_files: segmenting the 'validation' list of {dl} (1 images)" in caplog.text


def test_input_file_patterns_are_expanded_sorted_and_one_matching_nothing_is_refused(tmp_path):
    """``--input_files "['/data/*/ct.nii.gz']"`` (quoted: the shell left the pattern alone) segments every match,
    sorted, under the unique output names; ``**`` spans folders; a pattern matching nothing is named."""
    for name in ("b", "a", "c/deep"):
        (tmp_path / name).mkdir(parents=True)
        image = make_case(tmp_path / name, "x")["image"]
        os.rename(image, tmp_path / name / "ct.nii.gz")
    cases = inference_cases([str(tmp_path / "*" / "ct.nii.gz")])
    assert [c["image"] for c in cases] == [str(tmp_path / "a" / "ct.nii.gz"), str(tmp_path / "b" / "ct.nii.gz")]
    assert [c["name"] for c in cases] == ["a_ct", "b_ct"]
    deep = inference_cases(str(tmp_path / "**" / "ct.nii.gz"))
    assert [c["image"] for c in deep] == sorted(str(p) for p in tmp_path.rglob("ct.nii.gz"))
    assert len(deep) == 3
    missing = str(tmp_path / "nomatch*" / "ct.nii.gz")
    with pytest.raises(DatasetError, match=re.escape(f"no file matches '{missing}'")):
        inference_cases([str(tmp_path / "a" / "ct.nii.gz"), missing])
    with pytest.raises(DatasetError, match="given more than once"):
        inference_cases([str(tmp_path / "a" / "ct.nii.gz"), str(tmp_path / "?" / "ct.nii.gz")])


def test_prepare_datalists_checks_every_case(tmp_path):
    good = make_case(tmp_path, "good")
    bad = make_case(tmp_path, "outside", max_label=5)
    dl = tmp_path / "dataset.json"
    dl.write_text(json.dumps({"labels": {"0": "bg", "1": "a", "2": "b"}, "training": [good, bad], "validation": [good]}))
    with pytest.raises(DatasetError, match="outside_lab.nii.gz: label values in"):
        prepare_datalists(str(tmp_path), str(dl), tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written before the data passed
    out = prepare_datalists(str(tmp_path), str(dl), tmp_path / "out2", label_fraction=0.5, seed=1)
    assert out["num_classes"] == 3 and len(out["training"]) == 1
    # the record is returned; the bundle writes it once its checkpoint's resume check has passed
    assert out["record"]["cases"] == out["training"] and out["record"]["seed"] == 1 and out["record"]["num_total"] == 2
    assert not (tmp_path / "out2").exists()


def test_segmentation_inputs_are_all_checked_up_front(tmp_path):
    good = make_case(tmp_path, "good")["image"]
    nan = make_case(tmp_path, "nan", nan=True)["image"]
    trunc = truncated_copy(good, tmp_path / "trunc.nii.gz")
    with pytest.raises(DatasetError) as e:
        inference_cases([good, trunc, nan, str(tmp_path / "missing.nii.gz")])
    message = str(e.value)
    assert "3 problems" in message and all(name in message for name in ("trunc.nii.gz", "nan_img.nii.gz", "missing.nii.gz"))


def test_segmentation_names_are_unique_and_predictable(tmp_path):
    from medgmae.finetune.segment_inputs import unique_case_names

    a = make_case(tmp_path / "patA", "ct")["image"]
    b = make_case(tmp_path / "patB", "ct")["image"]
    c = make_case(tmp_path / "other", "liver")["image"]
    cases = inference_cases([a, b, c])
    assert [x["name"] for x in cases] == ["patA_ct_img", "patB_ct_img", "liver_img"]
    assert unique_case_names(["/d/x/a/ct.nii.gz", "/d/y/a/ct.nii", "/d/ct.nrrd"]) == ["x_a_ct", "y_a_ct", "d_ct"]
    # no folder tells these apart: one stem in one folder (endings), a_ct.nii.gz beside a/ct.nii.gz (numbered),
    # a number that an input's own name already has; every name unique, whatever the inputs
    assert unique_case_names(["/t/x/ct.nrrd", "/t/x/ct.mha", "/t/x/ct"]) == ["ct_nrrd", "ct_mha", "ct"]
    # both: the folders tell x from y, the endings x's two files apart
    assert unique_case_names(["/t/x/ct.nii.gz", "/t/y/ct.nii.gz", "/t/x/ct.nrrd"]) == ["x_ct_nii_gz", "y_ct", "x_ct_nrrd"]
    assert unique_case_names(["/t/p/a_ct.nii.gz", "/t/p/a/ct.nii.gz", "/t/q/ct.nii.gz"]) == ["t_p_a_ct", "t_p_a_ct_2", "q_ct"]
    tricky = ["/t/p/a_ct.nii.gz", "/t/p/a/ct.nii.gz", "/u/t_p_a_ct_2.nii.gz", "/t/x/ct.nii", "/t/x/ct.nii.gz"]
    assert len(set(unique_case_names(tricky))) == len(tricky)
    with pytest.raises(DatasetError, match="given more than once"):
        inference_cases([a, a])
    # links (an nnU-Net style dataset of links into the originals) are named as given, not as their targets
    (tmp_path / "links").mkdir()
    for name in ("c7.nii.gz", "c8.nii.gz"):
        os.symlink(a, tmp_path / "links" / name)
    cases = inference_cases([str(tmp_path / "links" / "c7.nii.gz"), str(tmp_path / "links" / "c8.nii.gz")])
    assert [x["name"] for x in cases] == ["c7", "c8"]
    assert cases[0]["image"] == str(tmp_path / "links" / "c7.nii.gz")

