"""UNETR fine-tuning data (datalists, label fractions, per-case checks) and the unetr_finetune bundle end to end."""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch

from medgmae.checkpoint import make_checkpoint
from medgmae.finetune.run_record import write_run_record
from medgmae.finetune.data import (
    DatasetError,
    check_cases,
    evaluation_cases,
    finetuned_spec,
    inference_cases,
    label_names,
    prepare_datalists,
    resolve_num_classes,
    select_label_fraction,
)
from medgmae.networks.vit import MaskedViTEncoder
from medgmae.preprocessing import PreprocessingSpec

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "unetr_finetune" / "configs"


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return str(path)


def make_case(root: Path, name: str, shape=(12, 12, 8), label_shape=None, label_affine=None, max_label=2, nan=False):
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    image = np.random.default_rng(0).normal(0, 50, shape).astype(np.float32)
    if nan:
        image[0, 0, 0] = np.nan
    label = np.zeros(label_shape or shape, np.uint8)
    label[2:6, 2:6, 2:5] = max_label
    return {
        "image": write_nifti(root / f"{name}_img.nii.gz", image, affine),
        "label": write_nifti(root / f"{name}_lab.nii.gz", label, affine if label_affine is None else label_affine),
    }


# ------------------------------------------------------------------ datalists and label fractions
def test_label_fraction_subsets_deterministic_nested(tmp_path):
    cases = [{"image": f"img{i}.nii.gz", "label": f"lab{i}.nii.gz"} for i in range(30)]
    sub_1 = select_label_fraction(cases, 0.01, seed=3)
    sub_10 = select_label_fraction(cases, 0.1, seed=3, output_dir=tmp_path)
    sub_100 = select_label_fraction(cases, 1.0, seed=3)
    assert len(sub_1) == 1 and len(sub_10) == 3 and sub_100 == cases
    assert all(c in sub_10 for c in sub_1)  # nested for a fixed seed
    assert select_label_fraction(cases, 0.1, seed=3) == sub_10  # deterministic
    assert any(select_label_fraction(cases, 0.1, seed=s) != sub_10 for s in range(4, 9))  # the seed matters
    record = json.loads((tmp_path / "training_cases.json").read_text())
    assert record["cases"] == sub_10 and record["label_fraction"] == 0.1 and record["num_total"] == 30
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="label_fraction"):
            select_label_fraction(cases, bad)
    # halves round up, as the fraction reads (not Python's round half to even: 2 of 25, 4 of 35)
    for n, fraction, expected in ((25, 0.1, 3), (35, 0.1, 4), (45, 0.1, 5), (50, 0.29, 15), (25, 0.02, 1), (7, 0.5, 4)):
        assert len(select_label_fraction(cases[:n] + cases[: max(0, n - 30)], fraction)) == expected, (n, fraction)


def test_a_label_fraction_rounded_far_from_itself_is_warned_about_and_recorded(tmp_path, caplog):
    """1 % of 4 cases is one case, a quarter of the labels: the run warns with the share it trains on and records it
    in training_cases.json; 10 % of 30 cases (3 cases, exactly 10 %) and 1 % of 150 (2 cases, 1.3 %) are not warned
    about."""
    import logging

    cases = [{"image": f"img{i}.nii.gz", "label": f"lab{i}.nii.gz"} for i in range(150)]
    with caplog.at_level(logging.INFO, logger="medgmae"):
        select_label_fraction(cases[:30], 0.1)
        select_label_fraction(cases, 0.01)
        assert "rounded to" not in caplog.text
        select_label_fraction(cases[:4], 0.01, output_dir=tmp_path)
    assert "label_fraction 0.01 of 4 training cases is 0.04 cases, rounded to 1: this run trains on 25 % " in caplog.text
    record = json.loads((tmp_path / "training_cases.json").read_text())
    assert record["label_fraction"] == 0.01 and record["effective_fraction"] == 0.25 and len(record["cases"]) == 1


@pytest.mark.parametrize("n_classes", [14, 16])  # BTCV, AMOS CT
def test_label_names_from_datalist(tmp_path, n_classes):
    labels = {str(i): ("background" if i == 0 else f"organ{i}") for i in range(n_classes)}
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"labels": labels, "training": [], "validation": []}))
    names = label_names(path)
    assert len(names) == n_classes and names[0] == "background" and names[-1] == f"organ{n_classes - 1}"
    assert resolve_num_classes(path, 0) == n_classes
    with pytest.raises(DatasetError, match=f"names {n_classes} labels"):
        label_names(path, num_classes=n_classes + 1)
    path.write_text(json.dumps({"training": []}))
    assert label_names(path, num_classes=5) == ["background", "class_1", "class_2", "class_3", "class_4"]
    with pytest.raises(DatasetError, match="set num_classes"):
        label_names(path)


def test_empty_or_missing_lists(tmp_path):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"labels": {"0": "bg", "1": "x"}, "training": [], "validation": []}))
    with pytest.raises(DatasetError, match="'training' list is empty"):
        prepare_datalists(str(tmp_path), str(path), tmp_path / "out")
    with pytest.raises(DatasetError, match="datalist not found"):
        prepare_datalists(str(tmp_path), str(tmp_path / "nope.json"), tmp_path / "out")


def test_a_decathlon_download_without_a_validation_list_is_given_the_split_command(tmp_path):
    """An original Medical Segmentation Decathlon dataset.json ('training' and 'test', no 'validation'): the refusal
    gives the medgmae-datalist command that writes a seeded split, and the --datalist to give then."""
    folder = tmp_path / "Task03_Liver"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (folder / sub).mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps({
        "labels": {"0": "background", "1": "liver", "2": "cancer"}, "modality": {"0": "CT"},
        "training": [{"image": "./imagesTr/liver_0.nii.gz", "label": "./labelsTr/liver_0.nii.gz"}],
        "test": ["./imagesTs/liver_132.nii.gz"]}))  # fmt: skip
    with pytest.raises(DatasetError, match=rf"the 'validation' list is missing .*`medgmae-datalist {folder} --out "
                                           rf"{folder / 'dataset_split.json'}` writes a seeded split .*give that file "
                                           r"as --datalist"):  # fmt: skip
        prepare_datalists(str(folder), "", tmp_path / "out")


# ------------------------------------------------------------------ per-case checks
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


def _two_case_datalist(root: Path) -> Path:
    cases = [make_case(root, f"c{i}") for i in range(3)]
    dl = root / "dl.json"
    dl.write_text(json.dumps({"labels": {"0": "bg", "1": "a", "2": "b"}, "training": cases[:2], "validation": cases[2:]}))
    return dl


def test_a_datalist_alone_is_the_data(tmp_path):
    """``--datalist`` without ``--dataset_dir``: the datalist's cases (relative to its folder), not phantoms."""
    dl = _two_case_datalist(tmp_path)
    out = prepare_datalists("", str(dl), tmp_path / "run")
    assert [c["image"] for c in out["training"]] == [str(tmp_path / "c0_img.nii.gz"), str(tmp_path / "c1_img.nii.gz")]
    assert not (tmp_path / "run" / "phantom").exists()


BTCV_CLASSES = ["background", "spleen", "right kidney", "left kidney", "gallbladder", "esophagus", "liver", "stomach",
                "aorta", "inferior vena cava", "portal and splenic veins", "pancreas", "right adrenal gland",
                "left adrenal gland"]  # fmt: skip


def test_the_classes_read_are_logged_at_the_start(tmp_path, caplog):
    """Fine-tuning says how many classes it read and their names before the data are checked: BTCV's 14 in full; of
    a long list the first 20, then how many more."""
    cases = [make_case(tmp_path, f"c{i}") for i in range(3)]
    dl = tmp_path / "btcv.json"
    for names, line in ((BTCV_CLASSES, "14 classes of {dl}: " + ", ".join(BTCV_CLASSES)),
                        (["background"] + [f"organ {i}" for i in range(1, 30)],
                         "30 classes of {dl}: background, organ 1, organ 2, " + ", ".join(f"organ {i}" for i in range(3, 20))
                         + " and 10 more")):  # fmt: skip
        dl.write_text(json.dumps({"labels": dict(enumerate(names)), "training": cases[:2], "validation": cases[2:]}))
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="medgmae"):
            prepare_datalists("", str(dl), tmp_path / "run")
        assert line.format(dl=dl) in caplog.messages


def test_label_maps_beyond_the_class_count_are_one_line_with_the_count_they_need(tmp_path):
    """``--num_classes 5`` with label maps up to 8: one line naming the first files and how many more, and the count
    they need (9), not a line per file; a datalist without a 'labels' map and no num_classes gets the count too."""
    cases = [make_case(tmp_path, f"c{i}", max_label=8 if i < 8 else 2) for i in range(10)]
    labels = sorted(c["label"] for c in cases[:8])
    with pytest.raises(DatasetError) as e:
        check_cases(cases, num_classes=5)
    ranged = [line for line in str(e.value).splitlines() if "outside the class range [0, 4]" in line]
    assert len(ranged) == 1 and str(e.value).startswith("1 problem(s)"), str(e.value)
    assert ranged[0].startswith("  - 8 label maps hold class values outside the class range [0, 4] (5 classes): ")
    assert ", ".join(labels[:3]) + " and 5 more; labels 0-8 found: they need 9 classes (--num_classes 9" in ranged[0]
    check_cases(cases, num_classes=9)  # the count named is enough
    dl = tmp_path / "dataset.json"
    dl.write_text(json.dumps({"training": cases[:9], "validation": cases[9:]}))
    with pytest.raises(DatasetError, match=re.escape(
            f"set num_classes: datalist {dl} has no 'labels' map; its label maps hold labels 0-8: --num_classes 9")) as unnamed:
        prepare_datalists("", str(dl), tmp_path / "run")
    assert unnamed.value.__cause__ is None and unnamed.value.__suppress_context__  # the one-class probe is not shown above it
    assert prepare_datalists("", str(dl), tmp_path / "run", num_classes=9)["num_classes"] == 9


def test_cases_without_labels_are_named_with_their_list(tmp_path):
    """An AMOS-style image without a label among the training or validation cases: each is named with the list it
    is in (the 'test' list is where such images go), before any file is opened."""
    dl = _two_case_datalist(tmp_path)
    cases = json.loads(dl.read_text())
    del cases["training"][1]["label"], cases["validation"][0]["label"]
    dl.write_text(json.dumps(cases))
    with pytest.raises(DatasetError) as e:
        prepare_datalists("", str(dl), tmp_path / "run")
    message = str(e.value)
    assert "2 case(s) list no 'label'" in message and "'test' list" in message, message
    assert f"{tmp_path / 'c1_img.nii.gz'} (in 'training')" in message and f"{tmp_path / 'c2_img.nii.gz'} (in 'validation')" in message


def test_cases_the_sampler_repeats_are_warned(tmp_path, monkeypatch, caplog):
    """Under torchrun the sampler pads each epoch to a multiple of the processes: 5 cases on 2 processes train one
    case twice, 2 cases on 5 processes one case three times and the other twice; rank 0 says so once, with torch's
    DistributedSampler's numbers; 5 cases on 5 processes, or any other rank, say nothing."""
    from torch.utils.data import DistributedSampler

    cases = [make_case(tmp_path, f"c{i}") for i in range(6)]
    for n, size, rank, warned in ((5, "2", "0", True), (2, "5", "0", True), (5, "5", "0", False), (5, "2", "1", False)):
        dl = tmp_path / f"dl{n}.json"
        dl.write_text(json.dumps({"labels": {"0": "bg", "1": "a", "2": "b"}, "training": cases[:n], "validation": cases[5:]}))
        monkeypatch.setenv("WORLD_SIZE", size)
        monkeypatch.setenv("RANK", rank)
        caplog.clear()
        with caplog.at_level("WARNING", logger="medgmae.finetune.data"):
            prepare_datalists("", str(dl), tmp_path / "run")
        said = [r.getMessage() for r in caplog.records if "processes" in r.getMessage()]
        drawn = [i for r in range(int(size)) for i in DistributedSampler(range(n), num_replicas=int(size), rank=r, shuffle=False)]
        per, extra = len(drawn) // int(size), len(drawn) - n
        twice = sum(drawn.count(i) > 1 for i in range(n))  # counted from torch's sampler, not from the rule
        assert said == ([f"{n} training cases for {size} processes: the distributed sampler gives every process {per}, "
                         f"padding each epoch with {extra} repeated draw{'s' if extra > 1 else ''}, so {twice} "
                         f"case{'s are' if twice > 1 else ' is'} trained more than once in that epoch; a multiple of "
                         f"{size} cases avoids it"] if warned else []), (n, size, rank, said)  # fmt: skip


def test_data_preparation_warnings_come_from_rank_0_alone(tmp_path, monkeypatch, caplog):
    """Every torchrun process prepares the same data; the warnings about it (a label_fraction rounded up to one
    case, a datalist declaring a non-CT modality) come from rank 0 only."""
    for rank, warned in (("0", True), ("1", False)):
        root = tmp_path / f"rank{rank}"  # a datalist of its own: the modality is warned about once per file
        root.mkdir()
        dl = _two_case_datalist(root)
        dl.write_text(json.dumps({**json.loads(dl.read_text()), "modality": {"0": "MRI"}}))
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", rank)
        caplog.clear()
        with caplog.at_level("WARNING", logger="medgmae"):
            prepare_datalists("", str(dl), root / "run", label_fraction=0.1)
        said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        rounded = [m for m in said if m.startswith("label_fraction 0.1 of 2 training cases is 0.2 cases, rounded to 1")]
        modality = [m for m in said if "declares the modality 'MRI'" in m]
        assert (len(rounded), len(modality)) == ((1, 1) if warned else (0, 0)), said


def test_resume_with_other_label_fraction_is_refused(tmp_path):
    dl, out = _two_case_datalist(tmp_path), tmp_path / "run"
    first = prepare_datalists(str(tmp_path), str(dl), out, label_fraction=0.5)
    write_run_record(out, first["record"])
    recorded = (out / "training_cases.json").read_text()
    # stopped before its first epoch checkpoint (e.g. a failure in epoch 1): nothing trained, nothing binds a resume
    assert len(prepare_datalists(str(tmp_path), str(dl), out, label_fraction=1.0, resume=True)["training"]) == 2
    (out / "checkpoint_epoch=1.pt").write_bytes(b"")  # only its name is read here
    with pytest.raises(DatasetError) as e:
        prepare_datalists(str(tmp_path), str(dl), out, label_fraction=1.0, resume=True)
    message = str(e.value)
    assert "1 of 2 training cases (label_fraction 0.5" in message and "2 of 2 training cases (label_fraction 1.0" in message
    assert "--label_fraction 0.5" in message and "--output_dir" in message
    assert (out / "training_cases.json").read_text() == recorded  # the record is kept
    again = prepare_datalists(str(tmp_path), str(dl), out, label_fraction=0.5, resume=True)
    assert again["training"] == first["training"]
    prepare_datalists(str(tmp_path), str(dl), out, label_fraction=1.0)  # a fresh start may change it


def test_a_moved_phantom_run_resumes_and_moved_data_are_named(tmp_path):
    """A phantom run folder moved or copied elsewhere resumes (its generated cases moved with it); a datalist whose
    cases moved is refused with the first differing case named, as the two choices otherwise read alike."""
    from medgmae.finetune.run_record import case_record, check_resume_matches

    def cases(root):
        return [{"image": f"{root}/phantom/imagesTr/case_{i}.nii.gz", "label": f"{root}/phantom/labelsTr/case_{i}.nii.gz"}
                for i in range(2)]  # fmt: skip

    out = tmp_path / "moved"
    write_run_record(out, case_record(1.0, 0, 2, cases("/old/run"), {"dataset_dir": "", "datalist": ""}))
    (out / "checkpoint_epoch=1.pt").write_bytes(b"")
    check_resume_matches(out, case_record(1.0, 0, 2, cases(str(out)), {"dataset_dir": "", "datalist": ""}))  # resumes
    data = {"dataset_dir": "/data/btcv", "datalist": "/data/btcv/dataset.json"}
    write_run_record(out, case_record(1.0, 0, 2, cases("/data/btcv"), data))
    with pytest.raises(DatasetError, match=r"\(cases differ; e.g. recorded /data/btcv/phantom/imagesTr/case_0.nii.gz, "
                                           r"now /mnt/btcv/phantom/imagesTr/case_0.nii.gz\)"):  # fmt: skip
        check_resume_matches(out, case_record(1.0, 0, 2, cases("/mnt/btcv"), data))


def test_a_run_on_a_relative_datalist_resumes_however_the_datalist_is_named(tmp_path, monkeypatch):
    """A run started on ``../data/ds/dataset_decathlon.json`` records its cases by absolute path and resumes with
    the datalist named absolutely or from another working folder; a record of the earlier relative form resumes from
    its working folder; other cases are still refused."""
    data, work, out = tmp_path / "data" / "ds", tmp_path / "work", tmp_path / "run"
    cases = [make_case(data / "imagesTr", f"c{i}") for i in range(3)]
    relative = [{k: os.path.relpath(v, data) for k, v in case.items()} for case in cases]
    dl = data / "dataset_decathlon.json"
    dl.write_text(json.dumps({"labels": {"0": "bg", "1": "a", "2": "b"}, "training": relative[:2],
                              "validation": relative[2:]}))  # fmt: skip
    work.mkdir()
    monkeypatch.chdir(work)
    write_run_record(out, prepare_datalists("", "../data/ds/dataset_decathlon.json", out)["record"])
    (out / "checkpoint_epoch=1.pt").write_bytes(b"")  # only its name is read here
    recorded = json.loads((out / "training_cases.json").read_text())
    assert [c["image"] for c in recorded["cases"]] == [cases[0]["image"], cases[1]["image"]]  # absolute
    prepare_datalists("", str(dl), out, resume=True)  # named absolutely
    monkeypatch.chdir(data)
    prepare_datalists("", "dataset_decathlon.json", out, resume=True)  # from another working folder
    monkeypatch.chdir(work)  # a record of relative cases, as written before, resumes from its working folder
    old = [{k: os.path.relpath(v, work) for k, v in case.items()} for case in recorded["cases"]]
    (out / "training_cases.json").write_text(json.dumps({**recorded, "cases": old}))
    prepare_datalists("", str(dl), out, resume=True)
    dl.write_text(json.dumps({"labels": {"0": "bg", "1": "a", "2": "b"}, "training": [relative[2], relative[1]],
                              "validation": relative[:1]}))  # fmt: skip
    with pytest.raises(DatasetError, match=r"cases differ; e\.g\. recorded /.*/data/ds/imagesTr/c0_img\.nii\.gz, "
                                           r"now /.*/data/ds/imagesTr/c2_img\.nii\.gz"):  # fmt: skip
        prepare_datalists("", str(dl), out, resume=True)


def test_resume_compares_the_label_fraction_as_a_number(tmp_path):
    """The recorded selection is compared as every resume compares settings (medgmae.settings_diff): a fraction
    written back from JSON or given as 1e-1 is the same setting, another fraction is named."""
    from medgmae.finetune.run_record import case_record, check_resume_matches

    cases = [{"image": "/d/a.nii.gz", "label": "/d/la.nii.gz"}]
    data = {"dataset_dir": "/d", "datalist": ""}
    write_run_record(tmp_path, case_record(0.1, 0, 10, cases, data))
    (tmp_path / "checkpoint_epoch=1.pt").write_bytes(b"")
    check_resume_matches(tmp_path, case_record(0.1 + 1e-12, 0, 10, cases, data))
    check_resume_matches(tmp_path, case_record(1e-1, 0, 10, cases, data))
    with pytest.raises(DatasetError, match=r"\(label_fraction differ\)"):
        check_resume_matches(tmp_path, case_record(0.2, 0, 10, cases, data))


def test_the_subset_seed_keeps_the_cases_across_training_seeds(tmp_path):
    """--subset_seed fixes the labelled subset (recorded as the record's seed) whatever --seed trains with, so a 10 %
    experiment repeats over training seeds on the same cases; without it --seed chooses, as before."""
    cases = [make_case(tmp_path, f"c{i}") for i in range(10)]
    dl = tmp_path / "dl.json"
    dl.write_text(json.dumps({"labels": {"0": "background", "1": "a", "2": "b"}, "training": cases,
                              "validation": cases[:1]}))  # fmt: skip
    picks = {s: prepare_datalists("", str(dl), tmp_path / f"r{s}", label_fraction=0.2, seed=s, subset_seed=7)
             for s in range(4)}  # fmt: skip
    assert all(p["training"] == picks[0]["training"] and p["record"]["seed"] == 7 for p in picks.values())
    own = [prepare_datalists("", str(dl), tmp_path / "own", label_fraction=0.2, seed=s)["training"] for s in range(4)]
    assert any(o != own[0] for o in own) and own[0] == select_label_fraction(cases, 0.2, 0)
    config = json.loads((CONFIGS / "train.json").read_text())
    assert config["subset_seed"] == "@seed" and "subset_seed=int(@subset_seed)" in config["data"]


def test_evaluation_defaults_to_the_recorded_data(tmp_path):
    dl, out = _two_case_datalist(tmp_path), tmp_path / "run"
    write_run_record(out, prepare_datalists(str(tmp_path), str(dl), out)["record"])
    record = json.loads((out / "training_cases.json").read_text())
    assert record["datalist"] == str(dl.resolve()) and record["dataset_dir"] == str(tmp_path.resolve())
    data = evaluation_cases("", "", out)
    assert data["datalist"] == str(dl.resolve()) and [c["image"] for c in data["cases"]] == [str(tmp_path / "c2_img.nii.gz")]


def _truncated_copy(src: str, dst: Path) -> str:
    data = Path(src).read_bytes()
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(data[: len(data) // 2])
    return str(dst)


def test_segmentation_inputs_are_all_checked_up_front(tmp_path):
    good = make_case(tmp_path, "good")["image"]
    nan = make_case(tmp_path, "nan", nan=True)["image"]
    trunc = _truncated_copy(good, tmp_path / "trunc.nii.gz")
    with pytest.raises(DatasetError) as e:
        inference_cases([good, trunc, nan, str(tmp_path / "missing.nii.gz")])
    message = str(e.value)
    assert "3 problem(s)" in message and all(name in message for name in ("trunc.nii.gz", "nan_img.nii.gz", "missing.nii.gz"))


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


# ------------------------------------------------------------------ bundle, end to end
def bundle_process(run_id: str, config: str, *overrides: str) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run`` of this bundle, whatever its exit status."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", str(CONFIGS / config),
           "--logging_file", str(CONFIGS / "logging.conf"), *overrides]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, encoding="utf-8", errors="replace", timeout=400)


def run_bundle(run_id: str, config: str, *overrides: str) -> subprocess.CompletedProcess:
    proc = bundle_process(run_id, config, *overrides)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


#: third-party notices the bundle filters or avoids (none may reach the console)
FILTERED = ("nvImageCodec", "torch.meshgrid", "Orientationd.__init__:labels")


def _check_progress_pictures_and_summary(out: Path, log: str) -> None:
    import math

    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from medgmae.finetune import val_transforms

    assert not any(text in log for text in FILTERED), [t for t in FILTERED if t in log]
    assert "epoch 1/1: train_loss" in log and "Iter: 1/" not in log  # one line per epoch, not per iteration
    assert "fine-tuning finished: 1 epoch; best validation mean Dice" in log and "| liver |" in log
    assert "per-class Dice of the last validation (1 case):" in log
    # the evaluator's key metric (MONAI's MeanDice) and the report's mean Dice are one number
    best = re.search(r"Got new best metric of val_mean_dice: (\S+)", log).group(1)
    assert re.search(r"mean Dice (\S+) over 1 case ", log).group(1) == f"{float(best):.5f}"
    assert torch.load(out / "best_model.pt", weights_only=True)["kind"] == "medgmae-unetr"
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    dice = [e.value for e in acc.Scalars("val_mean_dice")]
    # the start line, and train/lr per iteration: the decoder's base rate (3e-4) at the cosine's start
    assert re.search(r"fine-tuning runs on cpu, AMP off, network UNETR \(feature size 4, [\d,]+ parameters, [\d,]+ "
                     r"trainable\), encoder loaded from \S+encoder\.pt, fine-tuned, learning rate 3e-4 \(\d+ parameter "
                     r"groups\), global batch 1 crop per step \(1 process x 1 volume x 1 crop\)", log)
    assert [(e.step, round(e.value, 8)) for e in acc.Scalars("train/lr")][:1] == [(1, 3e-4)]
    assert len(dice) == 1 and math.isfinite(dice[0]) and "val/segmentation" in acc.Tags()["images"]
    # at the iteration that ends the epoch (train_loss's last), so that a resume's purge step covers it too
    assert [e.step for e in acc.Scalars("val_mean_dice")] == [acc.Scalars("train_loss")[-1].step]
    assert [e.step for e in acc.Images("val/segmentation")] == [acc.Scalars("train_loss")[-1].step]  # the same axis
    table = (out / "dice_per_class.md").read_text().splitlines()
    assert table[:2] == ["| class | Dice |", "| --- | --- |"] and len(table) == 2 + 17 + 1
    # two rows (prediction, label) of 3 slices of the pre-processed validation case, enlarged to >= 160 pixels
    case = json.loads((out / "phantom" / "dataset.json").read_text())["validation"][0]
    root = out / "phantom"
    spec = finetuned_spec(out / "best_model.pt")  # the run's pre-processing, recorded in its best model
    shape = val_transforms(spec)({k: str(root / v) for k, v in case.items()})["image"].shape[1:]
    f = -(-160 // max(shape))
    x, y, z = (f * n for n in shape)
    cell_h, cell_w = max(z, y) + 14, max(y, x)  # sagittal (z, y), coronal (z, x), axial (y, x)
    pic = np.asarray(Image.open(out / "segmentation.png").convert("RGB"))
    assert pic.shape == (14 + 2 * (cell_h + 2) + 2, 3 * (cell_w + 2) + 2, 3) and pic.astype(float).var() > 100.0


def test_bundle_train_resume_evaluate_infer(tmp_path):
    """The chain pre-training -> fine-tuning -> evaluation / inference with the pre-processing read from the
    checkpoints: encoder.pt records 2 mm voxels and a (-200, 300) HU window (not the bundle's defaults), and
    best_model.pt carries them on to evaluation and inference."""
    torch.manual_seed(0)
    enc = MaskedViTEncoder(img_size=24, patch_size=12, hidden_size=48, num_layers=2, num_heads=4, mlp_ratio=2.0)
    encoder_pt = tmp_path / "encoder.pt"
    spec = PreprocessingSpec(spacing=2.0, hu_window=(-200.0, 300.0), input_size=24, patch_size=12)
    torch.save(make_checkpoint("medgmae-encoder", enc.config(), enc.state_dict(), spec, {"source": "test"}), encoder_pt)
    out = tmp_path / "run"
    common = ["--output_dir", str(out), "--device", "cpu", "--feature_size", "4",  # roi_size: the encoder's 24^3
              "--phantom_shape", "[32, 32, 24]", "--phantom_cases", "3", "--num_samples", "1",
              "--pretrained", str(encoder_pt), "--label_fraction", "0.5", "--lr_schedule_epochs", "2"]
    proc = run_bundle("training", "train.json", *common, "--max_epochs", "1")
    n = len(enc.state_dict())
    assert f"loaded {n}/{n} pre-trained encoder tensors" in proc.stdout + proc.stderr
    chosen = json.loads((out / "training_cases.json").read_text())
    assert chosen["num_total"] == 2 and len(chosen["cases"]) == 1
    best = torch.load(out / "best_model.pt", weights_only=True)
    assert best["kind"] == "medgmae-unetr" and best["extra"]["epoch"] == 1 and 0.0 <= best["extra"]["metric"] <= 1.0
    assert best["preprocessing"] == spec.to_dict()  # read from encoder.pt, passed on
    assert "differs from" not in proc.stdout + proc.stderr
    # the encoder was fine-tuned from the pre-trained weights, the decoder was trained
    assert not torch.equal(best["state_dict"]["vit.blocks.0.attn.qkv.weight"], enc.state_dict()["blocks.0.attn.qkv.weight"])
    _check_progress_pictures_and_summary(out, proc.stdout + proc.stderr)
    # a fresh run in this folder replaces every output of this one (its data, record and checkpoints aside)
    config = json.loads((CONFIGS / "train.json").read_text())
    handler = next(h for h in config["train"]["handlers"] if isinstance(h, dict) and h["_target_"].endswith("CheckpointHandler"))
    replaced = {p for pattern in handler["earlier_outputs"] for p in out.glob(pattern)}
    written = {p for p in out.rglob("*") if p.is_file() and not p.name.startswith("checkpoint_")
               and p.relative_to(out).parts[0] not in ("cache", "phantom") and p.name != "training_cases.json"}  # fmt: skip
    assert written and written <= replaced, sorted(str(p.relative_to(out)) for p in written - replaced)

    proc = run_bundle("training", "train.json", *common, "--max_epochs", "2", "--resume", "true")
    assert "resumed from" in proc.stdout + proc.stderr and (out / "checkpoint_epoch=2.pt").is_file()
    ckpt = torch.load(out / "checkpoint_epoch=2.pt", weights_only=True)
    assert ckpt["engine"]["epoch"] == 2 and ckpt["engine"]["iteration"] == 2
    # the same 2 epochs uninterrupted, validating after each as the resumed run did: the same weights and best
    # model (the epoch checkpoint is written after the validation, whose data loader draws from the global RNG)
    straight = tmp_path / "straight"
    run_bundle("training", "train.json", *[str(straight) if a == str(out) else a for a in common], "--max_epochs", "2")
    again = torch.load(straight / "checkpoint_epoch=2.pt", weights_only=True)
    for name, weights in again["objects"]["network"].items():
        assert torch.equal(weights, ckpt["objects"]["network"][name]), name
    assert torch.load(straight / "best_model.pt", weights_only=True)["extra"] == torch.load(out / "best_model.pt", weights_only=True)["extra"]

    proc = run_bundle("evaluating", "evaluate.json", "--output_dir", str(out), "--device", "cpu")
    assert "Got new best metric" not in proc.stdout + proc.stderr  # a one-off evaluation has no "best"
    assert (f"pre-processing of {out / 'best_model.pt'}: orientation RAS, spacing [2.0, 2.0, 2.0] mm (recorded), "
            "HU window [-200.0, 300.0] (recorded), crop 24x24x24") in proc.stdout + proc.stderr  # fmt: skip
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert f"mean Dice {metrics['mean_dice']:.5f} over 1 case " in proc.stdout + proc.stderr
    assert "per-class Dice of the evaluation (1 case):\n| class | Dice |" in proc.stdout + proc.stderr
    assert metrics["num_cases"] == 1 and len(metrics["dice_per_class"]) == 17
    assert 0.0 <= metrics["mean_dice"] <= 1.0
    with open(out / "eval" / "per_case_dice.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["case"] == "case_0002"
    assert rows[0]["image"].endswith("case_0002.nii.gz")
    values = [float(v) for k, v in rows[0].items() if k not in ("case", "image", "predicted_but_absent") and v != ""]
    assert values and all(0.0 <= v <= 1.0 for v in values)

    # inference on an image in another orientation and spacing: the segmentation is in the input's space
    src = nib.load(out / "phantom" / "imagesTr" / "case_0002.nii.gz")
    data = np.asarray(src.dataobj)[::-1, :, ::2].astype(np.int16)  # L-to-R flipped, 4 mm slices
    affine = src.affine @ np.array([[-1, 0, 0, data.shape[0] - 1], [0, 1, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1.0]])
    moved = write_nifti(tmp_path / "input" / "moved.nii.gz", data, affine)
    run_bundle("inferring", "inference.json", "--output_dir", str(out), "--device", "cpu", "--input_files", f"['{moved}']")
    seg = nib.load(out / "segmentations" / "moved_seg.nii.gz")
    assert seg.shape == data.shape
    np.testing.assert_allclose(seg.affine, nib.load(moved).affine, atol=1e-5)
    assert np.asarray(seg.dataobj).max() < 18
    # the class names travel: best_model.pt records the datalist's, and the colour table beside the segmentations
    # (3D Slicer's "index name R G B A" lines) names every label value written
    labels = json.loads((out / "phantom" / "dataset.json").read_text())["labels"]
    names = [labels[str(i)] for i in range(len(labels))]
    assert torch.load(out / "best_model.pt", weights_only=True)["config"]["class_names"] == names
    rows = [line.split() for line in (out / "segmentations" / "labels.ctbl").read_text().splitlines()
            if line.strip() and not line.startswith("#")]  # fmt: skip
    assert {int(r[0]): r[1] for r in rows} == {i: n.replace(" ", "_") for i, n in enumerate(names)}
    assert all(len(r) == 6 and all(0 <= int(v) <= 255 for v in r[2:]) for r in rows)
    assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {int(r[0]) for r in rows}
    # the earlier model's evaluation and segmentations are replaced by a fresh run in this folder too
    made = {p for p in out.rglob("*") if p.is_file() and p.relative_to(out).parts[0] in ("eval", "segmentations")}
    assert len(made) == 4 and made <= {p for pattern in handler["earlier_outputs"] for p in out.glob(pattern)}


def test_a_run_stopped_while_validating_keeps_the_epochs_training(tmp_path, stop_while_validating):
    """SIGTERM while epoch 1 was validated (after the sliding-window evaluation) saved checkpoint_interrupted.pt and no
    epoch checkpoint, so the resume trained epoch 1 again. The epoch's training is now saved as
    checkpoint_epoch=1.pt, marked as not validated; the resume validates epoch 1, trains epoch 2 alone and ends as
    the uninterrupted run: weights, optimiser, scheduler, best value and best model (the validation's data loader
    draws from the global random generator: the marked checkpoint holds the generators as training left them)."""
    run, straight = tmp_path / "run", tmp_path / "straight"
    common = ["--device", "cpu", "--feature_size", "4", "--roi_size", "24", "--phantom_shape", "[32, 32, 24]",
              "--phantom_cases", "3", "--num_samples", "1", "--label_fraction", "0.5", "--lr_schedule_epochs", "2",
              "--max_epochs", "2"]  # fmt: skip
    run_bundle("training", "train.json", *common, "--output_dir", str(straight))
    stop = stop_while_validating(CONFIGS / "train.json", tmp_path, epoch=1)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", f"['{CONFIGS / 'train.json'}','{stop}']",
           "--logging_file", str(CONFIGS / "logging.conf"), *common, "--output_dir", str(run)]  # fmt: skip
    stopped = subprocess.run(cmd, cwd=REPO, capture_output=True, encoding="utf-8", errors="replace", timeout=400)
    assert stopped.returncode == -15, stopped.stderr[-3000:]
    assert stopped.stderr.rstrip().splitlines()[-1].startswith("terminated (SIGTERM) while validating epoch 1: its "
                                                               "training is saved in checkpoint_epoch=1.pt")  # fmt: skip
    assert not (run / "checkpoint_interrupted.pt").exists()
    saved = torch.load(run / "checkpoint_epoch=1.pt", weights_only=True)
    assert saved["engine"]["pending"] == "validation" and saved["objects"]["best"] == {"best": -float("inf"), "best_epoch": 0}
    resumed = run_bundle("training", "train.json", *common, "--output_dir", str(run), "--resume", "true")
    log = resumed.stdout + resumed.stderr
    assert "validating epoch 1 before training on" in log
    assert "epoch 1/2: train_loss" not in log and log.count("epoch 2/2: train_loss") == 1  # epoch 1 not trained again
    a, b = (torch.load(d / "checkpoint_epoch=2.pt", weights_only=True) for d in (run, straight))
    assert a["engine"] == b["engine"] and a["objects"]["best"] == b["objects"]["best"]
    assert a["objects"]["lr_scheduler"] == b["objects"]["lr_scheduler"]
    for name, weights in b["objects"]["network"].items():
        assert torch.equal(weights, a["objects"]["network"][name]), name
    oa, ob = a["objects"]["optimizer"]["state"], b["objects"]["optimizer"]["state"]
    assert oa.keys() == ob.keys() and all(torch.equal(oa[i]["exp_avg"], ob[i]["exp_avg"]) for i in oa)
    assert torch.equal(a["random_state"]["torch"], b["random_state"]["torch"])
    ba, bb = (torch.load(d / "best_model.pt", weights_only=True) for d in (run, straight))
    assert ba["extra"] == bb["extra"] and all(torch.equal(ba["state_dict"][k], bb["state_dict"][k]) for k in bb["state_dict"])


def test_resume_with_another_batch_size_writes_nothing(tmp_path, folder_state):
    """A resume refused because the batch size changed (2 training cases: 2 iterations per epoch at batch size 1,
    1 at batch size 2) stops before training_cases.json or a TensorBoard event file is written: the run folder is
    byte for byte as it was, and the error names both batch sizes and both epoch lengths."""
    out = tmp_path / "run"
    common = ["--output_dir", str(out), "--device", "cpu", "--roi_size", "[24, 24, 24]", "--feature_size", "4",
              "--phantom_shape", "[32, 32, 24]", "--phantom_cases", "3", "--num_samples", "1", "--progress_bar", "false"]
    run_bundle("training", "train.json", *common, "--max_epochs", "1", "--batch_size", "1")
    assert (out / "training_cases.json").is_file() and len(list((out / "tensorboard").iterdir())) == 1
    before = folder_state(out)
    proc = bundle_process("training", "train.json", *common, "--max_epochs", "2", "--batch_size", "2", "--resume", "true")
    assert proc.returncode != 0
    assert ("after 2 iterations (2 per epoch, batch size 1), but this run has 1 iterations per epoch (batch size 2): "
            "the batch size changed from 1 to 2") in proc.stderr and "--batch_size 1" in proc.stderr, proc.stderr[-3000:]
    assert folder_state(out) == before
    # another decoder width changes weight shapes: named (not a size mismatch of some tensor), nothing written
    changed = common[:]
    changed[changed.index("--feature_size") + 1] = "8"
    proc = bundle_process("training", "train.json", *changed, "--max_epochs", "2", "--batch_size", "1", "--resume", "true")
    summary = proc.stderr.split("\nerror: ")[-1]
    assert proc.returncode != 0 and "UNETR fine-tuning with other settings" in summary, proc.stderr[-3000:]
    assert "model.feature_size: saved 4, now 8" in summary and "size mismatch" not in proc.stderr
    assert folder_state(out) == before
    # another pre-processing (spacing, HU window) or optimiser setting changes no weight shape: named, nothing written
    proc = bundle_process("training", "train.json", *common, "--max_epochs", "2", "--batch_size", "1", "--resume", "true",
                          "--pixdim", "[2.0, 2.0, 2.0]", "--hu_range", "[-100, 200]", "--learning_rate", "0.01",
                          "--freeze_encoder", "true")
    summary = proc.stderr.split("\nerror: ")[-1]
    assert proc.returncode != 0 and "UNETR fine-tuning with other settings" in summary, proc.stderr[-3000:]
    for named in ("preprocessing.spacing: saved [1.5, 1.5, 2.0], now [2.0, 2.0, 2.0]", "preprocessing.hu_window",
                  "optimiser.learning_rate: saved 0.0003, now 0.01", "optimiser.freeze_encoder: saved False, now True"):
        assert named in summary, (named, summary)
    assert "parameter groups" not in proc.stderr and folder_state(out) == before
    # the best model is chosen on the validation cases: a datalist listing other ones is refused, nothing written
    datalist = out / "phantom" / "dataset.json"
    cases = json.loads(datalist.read_text())
    assert cases["validation"] and cases["validation"] != cases["training"][:1]
    datalist.write_text(json.dumps({**cases, "validation": cases["training"][:1]}))
    before = folder_state(out)
    proc = bundle_process("training", "train.json", *common, "--max_epochs", "2", "--batch_size", "1", "--resume", "true")
    summary = proc.stderr.split("\nerror: ")[-1]
    assert proc.returncode != 0 and "UNETR fine-tuning validated on other data" in summary, proc.stderr[-3000:]
    assert folder_state(out) == before


def test_resume_of_a_finished_run_is_refused_and_writes_nothing(tmp_path, folder_state):
    """A resume whose checkpoint has already trained --max_epochs epochs has nothing to train: it is refused before
    anything is built, instead of rewriting dice_per_class.md from an empty epoch ("0 cases"), checkpoint_final.pt
    and a new TensorBoard event file. A run stopped in its closing steps resumes to write them."""
    out = tmp_path / "run"
    common = ["--output_dir", str(out), "--device", "cpu", "--roi_size", "[24, 24, 24]", "--feature_size", "4",
              "--phantom_shape", "[32, 32, 24]", "--phantom_cases", "3", "--num_samples", "1", "--progress_bar", "false",
              "--max_epochs", "1"]
    run_bundle("training", "train.json", *common)
    assert (out / "dice_per_class.md").is_file() and (out / "checkpoint_final.pt").is_file()
    before = folder_state(out)
    proc = bundle_process("training", "train.json", *common, "--resume", "true")
    assert proc.returncode != 0
    assert (f"{out / 'checkpoint_epoch=1.pt'} has already trained 1 epoch = --max_epochs 1: nothing to resume; "
            "give a larger --max_epochs to train on") in proc.stderr, proc.stderr[-3000:]
    assert folder_state(out) == before
    # stopped in its closing steps (after checkpoint_epoch=1.pt, before checkpoint_final.pt, its last): a resume
    # trains nothing and writes them from the saved state and the last validation's metrics.json
    table = (out / "dice_per_class.md").read_text()
    (out / "dice_per_class.md").unlink()
    (out / "checkpoint_final.pt").unlink()
    closing = bundle_process("training", "train.json", *common, "--resume", "true")
    assert closing.returncode == 0, closing.stderr[-3000:]
    assert (out / "dice_per_class.md").read_text() == table and (out / "checkpoint_final.pt").is_file()


def test_printed_evaluate_command_runs_after_training_on_a_datalist(tmp_path):
    """The 'next: evaluate' command printed at the end of a run trained with dataset_dir / datalist evaluates on
    that data (it used to look for the run's phantom datalist); the run then segments inputs that share a file name
    into unique files, and refuses a truncated input before writing anything."""
    import shlex

    dl, out = _two_case_datalist(tmp_path / "data"), tmp_path / "run"
    proc = run_bundle("training", "train.json", "--dataset_dir", str(tmp_path / "data"), "--datalist", str(dl),
                      "--output_dir", str(out), "--device", "cpu", "--roi_size", "[24, 24, 24]", "--feature_size", "4",
                      "--num_samples", "1", "--max_epochs", "1", "--num_workers", "0", "--progress_bar", "false")
    line = next(x for x in (proc.stdout + proc.stderr).splitlines() if x.strip().startswith("evaluate: python"))
    cmd = shlex.split(line.split("evaluate: ", 1)[1])
    assert cmd[:5] == ["python", "-m", "monai.bundle", "run", "evaluating"] and "--datalist" in cmd
    done = subprocess.run([sys.executable, *cmd[1:], "--device", "cpu"], cwd=REPO, capture_output=True, encoding="utf-8",
                          errors="replace", timeout=400)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert metrics["num_cases"] == 1 and metrics["datalist"] == str(dl.resolve())
    run_bundle("evaluating", "evaluate.json", "--output_dir", str(out), "--device", "cpu")  # the record alone suffices
    assert json.loads((out / "eval" / "metrics.json").read_text())["datalist"] == str(dl.resolve())

    # segmentation: inputs with one file name get unique outputs; a truncated input stops before anything is written
    src = json.loads(dl.read_text())["validation"][0]["image"]
    same = []
    for patient in ("patA", "patB"):
        (tmp_path / patient).mkdir()
        same.append(str(shutil.copy(src, tmp_path / patient / "ct.nii.gz")))
    run_bundle("inferring", "inference.json", "--output_dir", str(out), "--device", "cpu", "--input_files", repr(same))
    assert sorted(p.name for p in (out / "segmentations").iterdir()) == ["labels.ctbl", "patA_ct_seg.nii.gz", "patB_ct_seg.nii.gz"]
    trunc = _truncated_copy(src, tmp_path / "trunc.nii.gz")
    cmd = [sys.executable, "-m", "monai.bundle", "run", "inferring", "--config_file", str(CONFIGS / "inference.json"),
           "--output_dir", str(out), "--device", "cpu", "--seg_dir", str(tmp_path / "seg2"), "--input_files", repr([src, trunc])]
    bad = subprocess.run(cmd, cwd=REPO, capture_output=True, encoding="utf-8", errors="replace", timeout=400)
    assert bad.returncode != 0 and "trunc.nii.gz" in bad.stderr and not (tmp_path / "seg2").exists()


# ------------------------------------------------------------------ metrics files
def test_segmentations_get_a_slicer_colour_table_of_the_class_names(tmp_path):
    """``labels.ctbl`` beside the segmentations: 3D Slicer's colour table (``index name R G B A``, spaces in names as
    ``_``, background transparent), written once; every label value of the NIfTI written is an index of it."""
    from monai.data import MetaTensor

    from medgmae.finetune import SaveSegmentationd

    names = ["background", "liver", "left kidney"]
    labels = np.zeros((6, 5, 4), np.float32)
    labels[1:3, 1:3, 1:3], labels[4, 4, 3] = 1, 2
    save = SaveSegmentationd(output_dir=tmp_path, label_names=names)
    for case in ("a", "b"):
        save({"pred": MetaTensor(torch.from_numpy(labels)[None], affine=torch.eye(4)), "name": case})
    rows = [line.split() for line in (tmp_path / "labels.ctbl").read_text().splitlines() if not line.startswith("#")]
    assert {int(r[0]): r[1] for r in rows} == {0: "background", 1: "liver", 2: "left_kidney"}
    assert [int(v) for v in rows[0][2:]] == [0, 0, 0, 0] and all(int(r[5]) == 255 for r in rows[1:])
    assert len({tuple(r[2:5]) for r in rows}) == 3  # one colour per class
    assert (tmp_path / "labels.ctbl").read_text().startswith("# Color table file")
    written = np.unique(np.asarray(nib.load(tmp_path / "b_seg.nii.gz").dataobj)).tolist()
    assert written == [0, 1, 2] and set(written) <= {int(r[0]) for r in rows}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_seg.nii.gz", "b_seg.nii.gz", "labels.ctbl"]


def test_segmentation_report_analytic_dice(tmp_path, caplog):
    from monai.data import MetaTensor

    from medgmae.finetune.evaluate import SegmentationReport, check_num_classes

    def onehot(labels):
        return torch.nn.functional.one_hot(torch.as_tensor(labels).long(), 3).permute(3, 0, 1, 2).float()

    ref, pred = np.zeros((10, 10, 10)), np.zeros((10, 10, 10))
    ref[2:6, 2:6, 2:6] = 1
    pred[3:7, 2:6, 2:6] = 1  # overlap 3x4x4 of two 64-voxel cubes: Dice 2*48/128
    pred[8:, 8:, 8:] = 2  # class 2 is absent from the reference: no Dice (NaN), not 0
    image = MetaTensor(torch.zeros(1, 10, 10, 10), meta={"filename_or_obj": "/data/case_0042.nii.gz"})
    report = SegmentationReport(tmp_path, ["background", "liver", "spleen"], extra={"checkpoint": "best_model.pt"})

    class State:  # what a SupervisedEvaluator hands its handlers after decollation
        output = [{"image": image, "pred": onehot(pred), "label": onehot(ref)}]

    class Engine:
        state = State()

    report._collect(Engine())
    with caplog.at_level("INFO"):
        metrics = report.write()
    assert f"mean Dice 0.75000 over 1 case -> {tmp_path}" in caplog.text  # 5 decimals, as each case's line
    assert metrics["mean_dice"] == pytest.approx(0.75) and metrics["dice_per_class"] == {"liver": pytest.approx(0.75), "spleen": None}
    assert json.loads((tmp_path / "metrics.json").read_text())["checkpoint"] == "best_model.pt"
    with open(tmp_path / "per_case_dice.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows == [{"case": "case_0042", "image": "/data/case_0042.nii.gz", "mean_dice": "0.750000", "liver": "0.750000",
                     "spleen": "", "predicted_but_absent": "spleen"}]  # fmt: skip
    # a second case whose reference is all background adds nothing to the mean: the log and metrics.json say so
    State.output = [{"image": image, "pred": onehot(pred), "label": onehot(np.zeros((10, 10, 10)))}]
    report._collect(Engine())
    with caplog.at_level("INFO"):
        metrics = report.write()
    assert f"mean Dice 0.75000 over 1 of 2 cases (1 with no labelled class in its reference, not counted) -> " in caplog.text
    assert metrics["num_cases"] == 2 and metrics["num_cases_scored"] == 1 and metrics["mean_dice"] == pytest.approx(0.75)
    # a third case lacking spleen in reference and prediction alike is no false positive
    State.output = [{"image": image, "pred": onehot(ref), "label": onehot(ref)}]
    report._collect(Engine())
    with caplog.at_level("INFO"):
        metrics = report.write()
    assert metrics["absent_class_predictions"] == {"liver": {"cases_absent": 1, "predicted_in": 1},
                                                   "spleen": {"cases_absent": 3, "predicted_in": 2}}  # fmt: skip
    assert ("false positives, in no Dice): liver in 1 of the 1 case lacking it, spleen in 2 of the 3 cases lacking "
            "it") in caplog.text
    with open(tmp_path / "per_case_dice.csv") as f:
        assert [r["predicted_but_absent"] for r in csv.DictReader(f)] == ["spleen", "liver;spleen", ""]
    with pytest.raises(ValueError, match="predicts 2 classes but the datalist has 3"):
        check_num_classes(SimpleNamespace(out_channels=2), 3)


def test_an_evaluation_ends_with_the_per_class_dice_table_training_prints(tmp_path, caplog):
    """``show_table`` (evaluate.json): after the mean Dice line the per-class table, the one function training's
    closing summary uses; the validation of every epoch prints none."""
    from monai.data import MetaTensor

    from medgmae.finetune.evaluate import SegmentationReport
    from medgmae.finetune.report import per_class_dice_text

    def onehot(labels):
        return torch.nn.functional.one_hot(torch.as_tensor(labels).long(), 3).permute(3, 0, 1, 2).float()

    ref, pred = np.zeros((10, 10, 10)), np.zeros((10, 10, 10))
    ref[2:6, 2:6, 2:6], ref[0:2, 0:2, 0:2] = 1, 2
    pred[2:6, 2:6, 2:4] = 1  # half the 64-voxel liver cube: Dice 2*32/96
    pred[0:2, 0:2, 0:2] = 2  # spleen exact: Dice 1
    image = MetaTensor(torch.zeros(1, 10, 10, 10), meta={"filename_or_obj": "/data/case_0042.nii.gz"})
    item = {"image": image, "pred": onehot(pred), "label": onehot(ref)}
    engine = SimpleNamespace(state=SimpleNamespace(output=[item]))
    for show, folder in ((True, "eval"), (False, "validation")):
        report = SegmentationReport(tmp_path / folder, ["background", "liver", "spleen"], show_table=show)
        report._collect(engine)
        caplog.clear()
        with caplog.at_level("INFO"):
            report.write()
        liver, mean = 2 * 32 / 96, (2 * 32 / 96 + 1.0) / 2
        expected = ["per-class Dice of the evaluation (1 case):", "| class | Dice |", "| --- | --- |",
                    f"| liver | {liver:.4f} |", "| spleen | 1.0000 |",
                    f"| **mean over cases** (each case's mean over the classes in its reference) | {mean:.4f} |"]  # fmt: skip
        assert ("\n".join(expected) in caplog.text) is show
    assert caplog.text.rstrip().endswith(str(tmp_path / "validation"))  # the validation's log ends with its mean line
    summary = per_class_dice_text({"dice_per_class": {"liver": liver}, "mean_dice": liver, "num_cases": 2}, "x")
    assert summary.splitlines()[0] == "per-class Dice of x (2 cases):"
    with pytest.raises(ValueError, match="show_table must be true or false"):
        SegmentationReport(tmp_path, ["background", "liver"], show_table="yes")


def test_cases_sharing_a_file_name_get_unique_names_in_the_csv(tmp_path):
    """Two folders' ct.nii.gz were both 'ct' in the CSV's case column: named as their segmentations are."""
    import csv

    from monai.data import MetaTensor

    from medgmae.finetune.evaluate import SegmentationReport

    onehot = torch.nn.functional.one_hot(torch.zeros(4, 4, 4).long(), 2).permute(3, 0, 1, 2).float()
    report = SegmentationReport(tmp_path, ["background", "liver"])
    for folder in ("siteA", "siteB", "siteC"):
        name = "ct.nii.gz" if folder != "siteC" else "other.nii.gz"
        image = MetaTensor(torch.zeros(1, 4, 4, 4), meta={"filename_or_obj": f"/data/{folder}/{name}"})

        class Engine:
            state = type("S", (), {"output": [{"image": image, "pred": onehot, "label": onehot}]})()

        report._collect(Engine())
    report.write()
    with open(tmp_path / "per_case_dice.csv") as f:
        assert [r["case"] for r in csv.DictReader(f)] == ["siteA_ct", "siteB_ct", "other"]


def test_segmentation_report_mean_is_monais_mean_dice(tmp_path):
    """The report's mean Dice is MONAI's (the validation key metric) to the last bit: the mean over cases of each
    case's mean over its classes present in the reference, in float32; not the mean of all case/class values."""
    from monai.metrics import DiceMetric

    from medgmae.finetune.evaluate import SegmentationReport

    rng = np.random.default_rng(7)
    onehot = lambda a: torch.nn.functional.one_hot(torch.as_tensor(a).long(), 4).permute(3, 0, 1, 2).float()  # noqa: E731
    refs = [rng.integers(0, 4, (9, 8, 7)) for _ in range(3)]
    refs[0][refs[0] == 3] = 0  # class 3 absent from one reference: NaN there, ignored
    preds = [np.where(rng.random(r.shape) < 0.6, r, rng.integers(0, 4, r.shape)) for r in refs]
    items = [{"pred": onehot(p), "label": onehot(r)} for p, r in zip(preds, refs)]
    report = SegmentationReport(tmp_path, ["background", "a", "b", "c"])
    report._collect(SimpleNamespace(state=SimpleNamespace(output=items)))
    monai_dice = DiceMetric(include_background=False, reduction="mean")  # what MeanDice computes
    for item in items:
        monai_dice(item["pred"][None], item["label"][None])
    assert report.write()["mean_dice"] == monai_dice.aggregate().item()


def test_summary_counts_one_validation_case_in_the_singular(tmp_path):
    from medgmae.finetune.report import FinetuneSummary

    report = SimpleNamespace(metrics={"mean_dice": 0.5, "dice_per_class": {"liver": 0.5}, "num_cases": 1},
                             output_dir=tmp_path / "validation")
    saver = SimpleNamespace(best=0.5, best_epoch=1, path=tmp_path / "best_model.pt")
    text, _ = FinetuneSummary(tmp_path, report, saver).text(1)
    assert "(1 case):" in text
    report.metrics["num_cases"] = 2
    assert "(2 cases):" in FinetuneSummary(tmp_path, report, saver).text(1)[0]


def test_summary_names_the_export_command_of_the_run(tmp_path):
    import shlex

    from monai.bundle import ConfigParser

    from medgmae.finetune.report import FinetuneSummary

    report = SimpleNamespace(metrics={"mean_dice": 0.5, "dice_per_class": {"liver": 0.5}, "num_cases": 1},
                             output_dir=tmp_path / "validation")
    saver = SimpleNamespace(best=0.5, best_epoch=1, path=tmp_path / "best_model.pt")
    text, _ = FinetuneSummary(tmp_path, report, saver).text(1)
    line = next(line for line in text.splitlines() if line.strip().startswith("export:"))
    args = shlex.split(line.split("export:", 1)[1])
    assert args[:5] == ["python", "-m", "monai.bundle", "run", "exporting"]
    config = REPO / args[args.index("--config_file") + 1]
    parser = ConfigParser()
    parser.read_config(str(config))
    parser["output_dir"] = args[args.index("--output_dir") + 1]
    # the command exports this run's best_model.pt to model.ts beside it
    assert Path(parser.get_parsed_content("checkpoint")) == tmp_path / "best_model.pt"
    assert Path(parser.get_parsed_content("export_path")) == tmp_path / "model.ts"
    assert "exporting" in parser.config


def test_spacing_override_warns_naming_both(tmp_path, caplog):
    from medgmae.finetune import finetune_spec

    enc = MaskedViTEncoder(img_size=24, patch_size=12, hidden_size=48, num_layers=1, num_heads=4, mlp_ratio=2.0)
    spec = PreprocessingSpec(spacing=2.0, input_size=24, patch_size=12)
    torch.save(make_checkpoint("medgmae-encoder", enc.config(), enc.state_dict(), spec), tmp_path / "encoder.pt")
    with caplog.at_level("WARNING"):
        got = finetune_spec(tmp_path / "encoder.pt", pixdim=[1.5, 1.5, 2.0], roi_size=24)
    assert got.spacing == (1.5, 1.5, 2.0) and got.hu_window == spec.hu_window
    assert "spacing [1.5, 1.5, 2.0] differs from the spacing [2.0, 2.0, 2.0]" in caplog.text and "encoder.pt" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert finetune_spec(tmp_path / "encoder.pt", roi_size=24).spacing == (2.0, 2.0, 2.0)
        assert finetune_spec("", roi_size=24, patch_size=12).spacing == (1.5, 1.5, 2.0)  # no encoder: BTCV recipe
    assert "differs" not in caplog.text


def test_multi_gpu_config_two_process_gloo(tmp_path):
    """train.json + multi_gpu_train.json on 2 CPU processes (gloo): sharded training, gradients all-reduced, rank 0
    alone writes checkpoints (with both ranks' random states), the best model and the logs."""
    out = tmp_path / "ddp"
    configs = f"['{CONFIGS / 'train.json'}','{CONFIGS / 'multi_gpu_train.json'}']"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "monai.bundle",
           "run", "training", "--config_file", configs, "--logging_file", str(CONFIGS / "logging.conf"),
           "--output_dir", str(out), "--device", "cpu", "--roi_size", "[24, 24, 24]", "--feature_size", "4",
           "--encoder", "{'patch_size': 12, 'hidden_size': 48, 'num_layers': 1, 'num_heads': 4, 'mlp_ratio': 2.0}",
           "--phantom_shape", "[32, 32, 24]", "--phantom_cases", "3", "--num_samples", "1", "--max_epochs", "1"]  # fmt: skip
    # run from tmp_path: this checkout's package first on the path (not another installed copy)
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, encoding="utf-8", errors="replace", timeout=400, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ckpt = torch.load(out / "checkpoint_epoch=1.pt", weights_only=True)
    assert ckpt["engine"] == {"epoch": 1, "iteration": 1, "max_epochs": 1}  # 2 training cases over 2 ranks
    assert len(ckpt["random_state_ranks"]) == 2
    assert not any(k.startswith("module.") for k in ckpt["objects"]["network"])
    best = torch.load(out / "best_model.pt", weights_only=True)
    assert best["extra"]["epoch"] == 1 and 0.0 <= best["extra"]["metric"] <= 1.0
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events and len({p.name.split(".")[-2] for p in events}) == 1  # written by one process: rank 0
    assert not list(out.glob("rank*"))


def _encoder_file(path: Path, img_size: int = 24) -> Path:
    enc = MaskedViTEncoder(img_size=img_size, patch_size=12, hidden_size=48, num_layers=1, num_heads=4, mlp_ratio=2.0)
    spec = PreprocessingSpec(spacing=2.0, input_size=img_size, patch_size=12)
    torch.save(make_checkpoint("medgmae-encoder", enc.config(), enc.state_dict(), spec), path)
    return path


def test_pretrained_check_names_the_file_and_the_problem(tmp_path):
    """The up-front check of ``--pretrained``: missing file, another kind of checkpoint, a ``roi_size`` other than
    the encoder's; ``""`` and a fitting encoder pass, and a bad ``roi_size`` is left to its own check."""
    from medgmae.finetune import pretrained_check

    encoder = _encoder_file(tmp_path / "encoder.pt")
    pretrained_check([24, 24, 24])(str(encoder))
    pretrained_check(24)("")
    pretrained_check("abc")(str(encoder))  # --roi_size's own check names it
    with pytest.raises(ValueError, match="not found|does not exist|missing"):
        pretrained_check(24)(str(tmp_path / "encoderr.pt"))
    other = tmp_path / "best_model.pt"
    torch.save(make_checkpoint("medgmae-unetr", {"num_classes": 2}, {}, PreprocessingSpec()), other)
    with pytest.raises(ValueError, match=r"best_model\.pt is .*fine-tuning needs the encoder\.pt"):
        pretrained_check(24)(str(other))
    with pytest.raises(ValueError, match=r"--roi_size \(48, 48, 48\) differs from the img_size \(24, 24, 24\)"):
        pretrained_check(48)(str(encoder))
    # the 2D GMAE's encoder.pt has the same kind: named as 2D, whatever --roi_size says
    flat = MaskedViTEncoder(img_size=24, patch_size=4, hidden_size=16, num_layers=1, num_heads=2, spatial_dims=2)
    torch.save(make_checkpoint("medgmae-encoder", flat.config(), flat.state_dict(), None, {"source": "gmae2d"}),
               tmp_path / "enc2d.pt")
    for roi in (24, [24, 24]):
        with pytest.raises(ValueError, match=r"enc2d\.pt is a 2D encoder \(spatial_dims 2, from gmae2d\); fine-tuning "
                                             r"needs the 3D encoder\.pt"):
            pretrained_check(roi)(str(tmp_path / "enc2d.pt"))


def test_a_wrong_pretrained_stops_the_bundle_before_the_data_are_read(tmp_path):
    """A wrong ``--pretrained`` is a bad setting: named by the settings check, before the pre-check reads every
    image, and nothing is written (it used to leave ``cache/precheck.json`` in a new output folder)."""
    dl = _two_case_datalist(tmp_path / "data")
    encoder = _encoder_file(tmp_path / "encoder.pt")
    for pretrained, roi, message in ((tmp_path / "encoderr.pt", "24", "encoderr.pt"),
                                     (encoder, "48", "--roi_size (48, 48, 48) differs from the img_size (24, 24, 24)")):  # fmt: skip
        out = tmp_path / f"out_{roi}"
        proc = bundle_process("training", "train.json", "--datalist", str(dl), "--pretrained", str(pretrained),
                              "--roi_size", roi, "--output_dir", str(out), "--device", "cpu", "--num_workers", "0")  # fmt: skip
        log = proc.stdout + proc.stderr
        assert proc.returncode != 0 and "bad setting(s), nothing was written" in log and message in log, log[-3000:]
        assert "--pretrained" in log.split("\nerror: ")[-1] and "pre-check" not in log
        assert not out.exists()


def test_a_data_error_of_a_first_run_leaves_no_output_folder(tmp_path):
    """A first run stopped by its data (a label value outside the class range) leaves no run folder behind (its
    output folder used to be created up front and left empty)."""
    cases = [make_case(tmp_path / "data", "c0"), make_case(tmp_path / "data", "c1", max_label=20)]
    dl = tmp_path / "data" / "dl.json"
    dl.write_text(json.dumps({"labels": {"0": "bg", "1": "a", "2": "b"}, "training": cases[:1], "validation": cases[1:]}))
    out = tmp_path / "run"
    proc = bundle_process("training", "train.json", "--datalist", str(dl), "--output_dir", str(out), "--device", "cpu",
                          "--num_workers", "0", "--roi_size", "[24, 24, 24]")  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "outside the class range" in log.split("\nerror: ")[-1], log[-3000:]
    assert not out.exists()


def test_the_spacing_and_window_used_are_logged(tmp_path, caplog):
    """One log line names the spacing and HU window a run uses and where they come from: with an encoder (and
    ``pixdim`` null) its recorded spacing, not the BTCV default the docs used to give."""
    from medgmae.finetune import finetune_spec

    encoder = _encoder_file(tmp_path / "encoder.pt")
    with caplog.at_level("INFO", logger="medgmae.finetune.data"):
        finetune_spec(encoder, roi_size=24)
        finetune_spec("", pixdim=[1.0, 1.0, 1.0], roi_size=24, patch_size=12)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("pre-processing:")]
    assert lines == [f"pre-processing: orientation RAS (recorded in {encoder}), spacing [2.0, 2.0, 2.0] mm (recorded in "
                     f"{encoder}), HU window [-175.0, 250.0] (recorded in {encoder}), crop 24x24x24",
                     "pre-processing: orientation RAS (default), spacing [1.0, 1.0, 1.0] mm (given), HU window "
                     "[-175.0, 250.0] (default), crop 24x24x24"]  # fmt: skip


def test_an_override_is_warned_about_naming_the_training_that_recorded_the_spec(caplog):
    """A spacing other than the recorded one: the warning names the pre-training (an encoder) or the fine-tuning (a
    fine-tuned model) whose data were prepared otherwise."""
    from medgmae.preprocessing import DEFAULT_SPEC, spec_with_overrides

    with caplog.at_level("WARNING", logger="medgmae.preprocessing"):
        spec_with_overrides(DEFAULT_SPEC, [1.0, 1.0, 1.0], source="enc.pt")
        spec_with_overrides(DEFAULT_SPEC, [1.0, 1.0, 1.0], source="best_model.pt", trained_by="fine-tuning")
    said = [r.getMessage() for r in caplog.records]
    assert said[0].startswith("spacing [1.0, 1.0, 1.0] differs from the spacing") and said[0].endswith("from its pre-training")
    assert "recorded in best_model.pt" in said[1] and said[1].endswith("from its fine-tuning"), said


def test_summary_segment_command_names_an_image_of_the_run(tmp_path):
    """The printed segment command works when pasted: it names the first validation image of the run's datalist
    (as training_cases.json records it), parsed by the inference config as one existing file."""
    import ast
    import shlex

    from medgmae.finetune.report import FinetuneSummary

    dl, out = _two_case_datalist(tmp_path), tmp_path / "run"
    write_run_record(out, prepare_datalists(str(tmp_path), str(dl), out)["record"])
    report = SimpleNamespace(metrics={"mean_dice": 0.5, "dice_per_class": {"liver": 0.5}, "num_cases": 1},
                             output_dir=out / "validation")
    saver = SimpleNamespace(best=0.5, best_epoch=1, path=out / "best_model.pt")
    line = next(v for k, v in FinetuneSummary(out, report, saver).next_commands().items() if k == "segment")
    args = shlex.split(line)
    files = ast.literal_eval(args[args.index("--input_files") + 1])
    assert files == [str(tmp_path / "c2_img.nii.gz")] and Path(files[0]).is_file()
    assert "--input_files \"['" + files[0] + "']\"" in line  # written as the README writes it, not as '['"'"'...'"'"']'
    from medgmae.finetune.report import _list_flag

    for path in ("plain/case 1.nii.gz", "it's.nii.gz", "a$HOME.nii.gz", 'say "x".nii.gz', "c!d.nii.gz", "e\\f.nii.gz",
                 "g`id`.nii.gz"):  # through bash itself: $ and backquotes expand in double quotes, ! interactively
        word = _list_flag([path])
        echoed = subprocess.run(["bash", "-ic", f"printf %s {word}"], capture_output=True, text=True, env={"HOME": "/h"})
        assert ast.literal_eval(echoed.stdout) == [path], (path, word, echoed.stdout, echoed.stderr)


def test_roi_size_defaults_to_the_pretrained_encoders_img_size(tmp_path):
    """The crop must be the encoder's img_size, so that is the default; without an encoder, or with a file that is
    not one (its own check names it), the BTCV recipe's 96^3."""
    from medgmae.finetune import default_roi_size, pretrained_check

    enc = MaskedViTEncoder(img_size=24, patch_size=12, hidden_size=48, num_layers=1, num_heads=4, mlp_ratio=2.0)
    spec = PreprocessingSpec(input_size=24, patch_size=12)
    torch.save(make_checkpoint("medgmae-encoder", enc.config(), enc.state_dict(), spec), tmp_path / "encoder.pt")
    assert default_roi_size(tmp_path / "encoder.pt") == [24, 24, 24]
    pretrained_check(default_roi_size(tmp_path / "encoder.pt"))(str(tmp_path / "encoder.pt"))  # passes
    (tmp_path / "junk.pt").write_bytes(b"junk")
    assert default_roi_size("") == default_roi_size(tmp_path / "junk.pt") == default_roi_size(tmp_path / "no.pt") == [96, 96, 96]
    with pytest.raises(ValueError, match="junk.pt"):
        pretrained_check(default_roi_size(tmp_path / "junk.pt"))(str(tmp_path / "junk.pt"))


def test_native_space_dice_is_dice_in_the_label_files_voxels(tmp_path):
    """``evaluate.json --native_space true`` scores the prediction brought back to the image's grid (as the
    segmentation writes it) against the label file's own voxels: per class it equals a NumPy Dice of the segmentation
    file against the label file, for an anisotropic, flipped image whose label is stored in another axis order (which
    is re-indexed, not interpolated); the default Dice, on the pre-processed grid, is a different number."""
    from medgmae.checkpoint import make_checkpoint as mk
    from medgmae.finetune import build_unetr
    from medgmae.finetune.best_model import FINETUNED_KIND

    out = tmp_path / "run"
    out.mkdir()
    torch.manual_seed(3)  # random weights: argmax regions of several classes, so that Dice is not trivially 0 or 1
    enc = {"patch_size": 12, "hidden_size": 48, "num_layers": 1, "num_heads": 4, "mlp_ratio": 2.0}
    net = build_unetr(4, 24, encoder=enc, feature_size=4)
    spec = PreprocessingSpec(spacing=2.0, input_size=24, patch_size=12)
    torch.save(mk(FINETUNED_KIND, net.config(), net.state_dict(), spec, extra={"epoch": 1}), out / "best_model.pt")
    rng = np.random.default_rng(0)
    img = rng.normal(0, 30, (30, 28, 14)).astype(np.float32)
    lab = np.zeros(img.shape, np.uint8)
    lab[4:20, 5:22, 2:9], lab[18:28, 3:12, 6:13], lab[8:14, 15:26, 9:13] = 1, 2, 3
    img += 60.0 * lab
    affine = np.array([[-1.2, 0, 0, 40], [0, 1.2, 0, -20], [0, 0, 3.0, 10], [0, 0, 0, 1]])
    image = write_nifti(tmp_path / "data" / "ct.nii.gz", img, affine)
    # the label stored with its axes reversed: voxel (k, j, i) of the file is voxel (i, j, k) of the image
    swap = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1.0]])
    label = write_nifti(tmp_path / "data" / "ct_label.nii.gz", lab.transpose(2, 1, 0), affine @ swap)
    datalist = tmp_path / "data" / "dataset.json"
    names = {"0": "background", "1": "a", "2": "b", "3": "c"}
    datalist.write_text(json.dumps({"labels": names, "training": [{"image": image, "label": label}],
                                    "validation": [{"image": image, "label": label}]}))  # fmt: skip
    common = ["--output_dir", str(out), "--device", "cpu", "--datalist", str(datalist)]
    run_bundle("evaluating", "evaluate.json", *common, "--native_space", "true")
    native = json.loads((out / "eval" / "metrics.json").read_text())
    run_bundle("inferring", "inference.json", "--output_dir", str(out), "--device", "cpu", "--input_files", f"['{image}']")
    seg = np.asarray(nib.load(out / "segmentations" / "ct_seg.nii.gz").dataobj)
    expected = {}
    for c, name in ((1, "a"), (2, "b"), (3, "c")):
        p, r = seg == c, lab == c
        expected[name] = 2.0 * (p & r).sum() / (p.sum() + r.sum())
    assert native["dice_space"] == "label files voxels"
    assert native["dice_per_class"] == pytest.approx(expected, abs=1e-6)
    assert 0.0 < max(expected.values()) < 1.0, expected  # a non-trivial prediction
    run_bundle("evaluating", "evaluate.json", *common)
    grid = json.loads((out / "eval" / "metrics.json").read_text())
    assert grid["dice_space"] == "pre-processed grid" and grid["dice_per_class"] != pytest.approx(expected, abs=1e-6)
    # metrics.json says which model and which pre-processing gave it: the recorded spec, or an override named
    assert grid["model"]["epoch"] == 1 and grid["model"]["size_bytes"] == (out / "best_model.pt").stat().st_size
    assert grid["preprocessing"]["spacing"] == [2.0, 2.0, 2.0] and grid["preprocessing_overrides"] == []
    run_bundle("evaluating", "evaluate.json", *common, "--pixdim", "3.0", "--eval_dir", str(out / "eval3"))
    coarse = json.loads((out / "eval3" / "metrics.json").read_text())
    assert coarse["preprocessing"]["spacing"] == [3.0, 3.0, 3.0] and coarse["preprocessing_overrides"] == ["pixdim"]


def test_a_pretraining_folder_given_as_pretrained_names_its_encoder(tmp_path):
    """--pretrained runs/medgmae_pretrain (the folder): the hint is its encoder.pt, not the model.pt that
    fine-tuning would then refuse."""
    from medgmae.finetune import read_encoder_file

    enc = MaskedViTEncoder(img_size=24, patch_size=12, hidden_size=48, num_layers=1, num_heads=4, mlp_ratio=2.0)
    run = tmp_path / "pretrain"
    run.mkdir()
    torch.save(make_checkpoint("medgmae-encoder", enc.config(), enc.state_dict(), PreprocessingSpec()), run / "encoder.pt")
    (run / "model.pt").write_bytes(b"a model file")
    with pytest.raises(ValueError, match=f"{run} is a folder; fine-tuning needs the encoder.pt of a pre-training run; "
                                         f"did you mean {run / 'encoder.pt'}\\?"):  # fmt: skip
        read_encoder_file(run)


def test_evaluating_on_a_datalist_with_fewer_classes_names_the_model_first(tmp_path):
    """A model of 4 classes evaluated on a datalist naming 2 (labels holding 0-3): the cause, the class counts, is
    the error, not every label file 'outside the class range'."""
    from medgmae.finetune import evaluation_cases

    cases = [make_case(tmp_path, "c0", max_label=3)]
    dl = tmp_path / "dl.json"
    dl.write_text(json.dumps({"labels": {"0": "background", "1": "liver"}, "validation": cases}))
    with pytest.raises(ValueError, match=r"run/best_model.pt predicts 4 classes but the datalist has 2") as e:
        evaluation_cases("", str(dl), tmp_path / "run", network=SimpleNamespace(out_channels=4),
                         checkpoint=tmp_path / "run" / "best_model.pt")
    assert "outside the class range" not in str(e.value)
    dl.write_text(json.dumps({"labels": {"0": "background", "1": "liver"}, "validation": [make_case(tmp_path, "c1", max_label=1)]}))
    assert evaluation_cases("", str(dl), tmp_path / "run", network=SimpleNamespace(out_channels=2))["num_classes"] == 2
    # a 'test' list of images only (a Decathlon layout's): evaluation has nothing to score against, and says so
    dl.write_text(json.dumps({"labels": {"0": "background", "1": "liver"}, "test": [{"image": cases[0]["image"]}]}))
    with pytest.raises(ValueError, match=r"the 'test' list of .*dl.json has no labels to score against .*\(run inferring --data_key test"):
        evaluation_cases("", str(dl), tmp_path / "run", key="test")


def test_a_folder_without_a_datalist_says_fine_tuning_needs_one(tmp_path):
    """A plain folder of images and labels, or the datalist given as --dataset_dir: the error says what to give."""
    from medgmae.finetune.data import evaluation_cases, prepare_datalists

    (tmp_path / "plain" / "imagesTr").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"plain holds no dataset.json: fine-tuning pairs each image with its label "
                                           r"through a Decathlon datalist .* give it as --datalist"):  # fmt: skip
        prepare_datalists(str(tmp_path / "plain"), "", tmp_path / "out")
    with pytest.raises(DatasetError, match=r"plain holds no dataset.json"):  # evaluation and inference alike
        evaluation_cases(str(tmp_path / "plain"), "", tmp_path / "out")
    (tmp_path / "plain" / "dataset_0.json").write_text("{}")
    with pytest.raises(DatasetError, match=r"--dataset_dir .*dataset_0.json is a file: give a datalist as --datalist"):
        prepare_datalists(str(tmp_path / "plain" / "dataset_0.json"), "", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_nnunet_raw_folder_is_named_with_the_command_writing_its_datalist(tmp_path):
    """nnU-Net v2's dataset.json (its 'labels' map names to values, no case lists): fine-tuning, evaluation and
    inference say what the file is and give the medgmae-datalist command and the --datalist to give then."""
    folder = tmp_path / "Dataset003_Liver"
    folder.mkdir()
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "file_ending": ".nii.gz",
                                                     "labels": {"background": 0, "liver": 1}, "numTraining": 2}))
    expected = (rf"{folder / 'dataset.json'} is nnU-Net's dataset.json .*`medgmae-datalist {folder} --out "
                rf"{folder / 'dataset_decathlon.json'}` writes a Decathlon datalist .*give that file as --datalist")
    with pytest.raises(DatasetError, match=expected):
        prepare_datalists(str(folder), "", tmp_path / "out")
    with pytest.raises(DatasetError, match=expected):
        evaluation_cases("", str(folder / "dataset.json"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_resume_with_other_phantom_settings_leaves_the_runs_phantoms_as_they_were(tmp_path):
    """A resume refused for another --seed first generated the run's phantom data again (other volumes under the
    checkpoint, which evaluation then scored without a word): refused before any phantom is written, naming the
    setting; the same settings resume."""
    from medgmae.data.datalist import DatasetError
    from medgmae.finetune.data import prepare_datalists

    out = tmp_path / "run"
    kw = dict(phantom_cases=4, phantom_shape=(32, 32, 24), phantom_spacing=(4.0, 4.0, 4.0))
    prepare_datalists("", "", out, seed=0, **kw)
    (out / "checkpoint_epoch=1.pt").write_bytes(b"")  # the run has a checkpoint to resume (only its name is read)
    before = {p: p.read_bytes() for p in sorted((out / "phantom").rglob("*")) if p.is_file()}
    with pytest.raises(DatasetError) as refused:
        prepare_datalists("", "", out, seed=1, resume=True, **kw)
    assert f"cannot resume {out}: its checkpoint trained on phantoms generated with other settings" in str(refused.value)
    assert "subset_seed (default: seed): saved 0, now 1" in str(refused.value), refused.value
    assert {p: p.read_bytes() for p in sorted((out / "phantom").rglob("*")) if p.is_file()} == before
    prepare_datalists("", "", out, seed=0, resume=True, **kw)  # the run's own settings resume
