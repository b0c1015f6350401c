"""The data pre-check and datalists: every unusable file named in one message, the check ledger, datalists whose
paths miss, splits, modalities, overlaps between training and validation, label values, nnU-Net folders."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import medgmae.data.precheck as precheck_mod
from medgmae.data import DatasetError, check_datalist, read_volume
from medgmae.mae_training import pretrain_split

from data_helpers import nifti_file, truncate_file


def _varied(shape: tuple, value: float) -> np.ndarray:
    """A float32 volume of ``shape`` around ``value`` that is not constant (the pre-check refuses a blank one)."""
    return (value + np.arange(int(np.prod(shape))) % 5).reshape(shape).astype(np.float32)


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


def test_precheck_ledger_reads_each_file_once(tmp_path, monkeypatch):
    items = [{"image": nifti_file(tmp_path / f"v{i}.nii.gz", _varied((8, 8, 8), i))} for i in range(3)]
    reads = []
    real = precheck_mod.read_volume
    monkeypatch.setattr(precheck_mod, "read_volume", lambda p, **k: reads.append(Path(p).name) or real(p, **k))
    check_datalist(items, ledger_dir=tmp_path / "cache")
    assert sorted(reads) == ["v0.nii.gz", "v1.nii.gz", "v2.nii.gz"]
    reads.clear()
    check_datalist(items, ledger_dir=tmp_path / "cache")
    assert reads == []  # checked before, unchanged
    nifti_file(tmp_path / "v1.nii.gz", _varied((8, 8, 9), 7))  # edited: new size
    check_datalist(items, ledger_dir=tmp_path / "cache")
    assert reads == ["v1.nii.gz"]
    reads.clear()
    check_datalist(items, label_key="label", num_classes=2, ledger_dir=tmp_path / "cache")  # other settings: all again
    assert len(reads) == 3


def test_checks_of_other_settings_sharing_a_cache_keep_their_records(tmp_path, monkeypatch):
    """A fine-tuning run (labels checked) and a pre-training run (images only) sharing one ``--cache_dir``: each
    keeps its own record of the files that passed, so neither reads its files again the next time (one record
    replaced the other's, and each start read every file again); a ledger of the earlier one-record form is read
    as that record."""
    import json

    cases = [{"image": nifti_file(tmp_path / f"v{i}.nii.gz", _varied((8, 8, 8), i)),
              "label": nifti_file(tmp_path / f"l{i}.nii.gz", np.zeros((8, 8, 8), np.uint8))} for i in range(2)]  # fmt: skip
    images = [{"image": c["image"]} for c in cases]
    reads = []
    real = precheck_mod.read_volume
    monkeypatch.setattr(precheck_mod, "read_volume", lambda p, **k: reads.append(Path(p).name) or real(p, **k))
    labelled = dict(label_key="label", num_classes=2, ledger_dir=tmp_path / "cache")
    check_datalist(cases, **labelled)
    check_datalist(images, ledger_dir=tmp_path / "cache")
    assert len(reads) == 6  # 2 images and 2 label maps, then the 2 images under the other settings
    reads.clear()
    check_datalist(cases, **labelled)
    check_datalist(images, ledger_dir=tmp_path / "cache")
    assert reads == []
    path = tmp_path / "cache" / "precheck.json"
    records = json.loads(path.read_text(encoding="utf-8"))["records"]
    assert len(records) == 2
    path.write_text(json.dumps(records[1]), encoding="utf-8")  # the earlier form: one record, the images-only one
    check_datalist(images, ledger_dir=tmp_path / "cache")
    assert reads == []
    # ledgers of other shapes are no records (the files are read again), never a crash of the pre-check
    odd = [{"records": None}, {"records": 5}, [1, 2], {"records": [{"settings": records[0]["settings"], "passed": [["p"]]},
           {"settings": None, "passed": []}, {**records[1], "passed": [5, [[1, 2, 3]], *records[1]["passed"]]}]}]  # fmt: skip
    for ledger in odd:
        path.write_text(json.dumps(ledger), encoding="utf-8")
        reads.clear()
        check_datalist(images, ledger_dir=tmp_path / "cache")
        assert len(reads) == (0 if isinstance(ledger, dict) and isinstance(ledger["records"], list) else 2), ledger
    # a rewrite keeps other settings' records of this version that hold passes, the latest four, and no older
    # version's (other "checks"): those never match again
    other = [{"settings": {**records[0]["settings"], "num_classes": n}, "passed": records[0]["passed"]} for n in range(3, 9)]
    older = {"settings": {**records[0]["settings"], "checks": 1}, "passed": records[0]["passed"]}
    path.write_text(json.dumps({"records": [older, *other]}), encoding="utf-8")
    nifti_file(tmp_path / "v0.nii.gz", _varied((8, 8, 9), 3))  # edited: read again, the ledger rewritten
    check_datalist(images, ledger_dir=tmp_path / "cache")
    kept = json.loads(path.read_text(encoding="utf-8"))["records"]
    assert [r["settings"].get("num_classes") for r in kept] == [5, 6, 7, 8, None]


def test_runs_sharing_a_cache_keep_each_others_passes(tmp_path, monkeypatch):
    """Two runs on different data sharing one ``--cache_dir`` (one ledger): each run's check keeps what the other's
    passed, so neither reads its files again the next time (the ledger held the last run's files alone, and the
    other run's next start read all of its files again)."""
    a = [{"image": nifti_file(tmp_path / f"a{i}.nii.gz", _varied((8, 8, 8), i))} for i in range(2)]
    b = [{"image": nifti_file(tmp_path / f"b{i}.nii.gz", _varied((8, 8, 8), i))} for i in range(2)]
    reads = []
    real = precheck_mod.read_volume
    monkeypatch.setattr(precheck_mod, "read_volume", lambda p, **k: reads.append(Path(p).name) or real(p, **k))
    check_datalist(a, ledger_dir=tmp_path / "cache")
    check_datalist(b, ledger_dir=tmp_path / "cache")
    assert sorted(reads) == ["a0.nii.gz", "a1.nii.gz", "b0.nii.gz", "b1.nii.gz"]
    reads.clear()
    check_datalist(a, ledger_dir=tmp_path / "cache")
    check_datalist(b, ledger_dir=tmp_path / "cache")
    assert reads == []
    nifti_file(tmp_path / "a1.nii.gz", _varied((8, 8, 9), 7))  # edited: read again, b's passes kept
    check_datalist(a + b[:1], ledger_dir=tmp_path / "cache")
    check_datalist(b, ledger_dir=tmp_path / "cache")
    assert reads == ["a1.nii.gz"]
    # an entry per file, whatever the edits: those of a file since changed or removed are not kept
    import json
    import os

    for i in range(4):
        nifti_file(tmp_path / "a0.nii.gz", _varied((8, 8, 8 + i), i))
        os.utime(tmp_path / "a0.nii.gz", ns=(10**18 + i, 10**18 + i))
        check_datalist(a, ledger_dir=tmp_path / "cache")
    (tmp_path / "b1.nii.gz").unlink()  # dropped at the next rewrite (a run that read a file)
    nifti_file(tmp_path / "a1.nii.gz", _varied((8, 8, 8), 5))
    os.utime(tmp_path / "a1.nii.gz", ns=(10**18 + 9, 10**18 + 9))
    check_datalist(a, ledger_dir=tmp_path / "cache")
    ledger = json.loads((tmp_path / "cache" / "precheck.json").read_text(encoding="utf-8"))["records"][0]["passed"]
    assert sorted(Path(f[0]).name for fp in ledger for f in fp) == ["a0.nii.gz", "a1.nii.gz", "b0.nii.gz"]


def test_precheck_ledger_keeps_the_passing_files_when_one_fails(tmp_path, monkeypatch):
    """One bad file among several: the error names it, the files that passed are remembered all the same (written
    atomically, no temporary file left), and the run after fixing it reads only that file and any other that
    changed; a file that fails is never remembered."""
    items = [{"image": nifti_file(tmp_path / f"v{i}.nii.gz", _varied((8, 8, 8), i))} for i in range(5)]
    nan = np.zeros((8, 8, 8), np.float32)
    nan[1, 2, 3] = np.nan
    nifti_file(tmp_path / "v3.nii.gz", nan)
    reads = []
    real = precheck_mod.read_volume
    monkeypatch.setattr(precheck_mod, "read_volume", lambda p, **k: reads.append(Path(p).name) or real(p, **k))
    with pytest.raises(DatasetError):  # a first run's folder: not created by a failure (no output folder left)
        check_datalist(items, ledger_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()
    reads.clear()
    (tmp_path / "cache").mkdir()  # a folder there already (a resumed run's, or the user's --cache_dir)
    for _ in range(2):  # still bad the second time: only it is read again
        with pytest.raises(DatasetError, match=r"^1 problem in.*\n.*v3\.nii\.gz.*NaN"):
            check_datalist(items, ledger_dir=tmp_path / "cache")
    assert reads == ["v0.nii.gz", "v1.nii.gz", "v2.nii.gz", "v3.nii.gz", "v4.nii.gz", "v3.nii.gz"]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["precheck.json"]
    reads.clear()
    nifti_file(tmp_path / "v3.nii.gz", _varied((8, 8, 8), 3))  # fixed
    nifti_file(tmp_path / "v0.nii.gz", _varied((8, 8, 9), 7))  # and another edited: new size
    check_datalist(items, ledger_dir=tmp_path / "cache")
    assert sorted(reads) == ["v0.nii.gz", "v3.nii.gz"]
    reads.clear()
    check_datalist(items, ledger_dir=tmp_path / "cache")
    assert reads == []


def test_gzip_truncation_is_what_the_check_sees(tmp_path):
    """The truncated file of the pre-check test fails in gzip itself (the failure users met inside a dataset)."""
    path = Path(nifti_file(tmp_path / "cut.nii.gz", np.random.default_rng(0).normal(0, 1, (32, 32, 24)).astype(np.float32)))
    truncate_file(path)
    with pytest.raises(EOFError):
        gzip.decompress(path.read_bytes())
    with pytest.raises(ValueError, match="cut.nii.gz: cannot read the volume"):
        read_volume(path)


def test_a_datalist_whose_images_all_miss_says_where_its_paths_point(tmp_path):
    """Every listed image missing is the mark of relative paths resolved against the wrong folder: the error then
    says where they pointed and how they resolve; one missing image among present ones gets no such hint."""
    from medgmae.data.datalist import read_datalist

    (tmp_path / "dataset.json").write_text(json.dumps({"training": [{"image": f"imagesTr/c{i}.nii.gz"} for i in range(3)]}))
    items = read_datalist(tmp_path / "dataset.json", "training", data_dir=tmp_path / "elsewhere", required=True)
    with pytest.raises(DatasetError) as error:
        check_datalist(items)
    assert f"None of the 3 images exist: their paths resolve under {tmp_path / 'elsewhere' / 'imagesTr'}" in str(error.value)
    assert "A datalist's relative paths resolve against --dataset_dir" in str(error.value)
    with pytest.raises(DatasetError) as error:  # files given as such (segmentation's input_files): no datalist advice
        check_datalist(items, source="input_files")
    assert "None of the 3 images exist" in str(error.value) and "datalist's relative paths" not in str(error.value)
    present = tmp_path / "present.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(present))
    with pytest.raises(DatasetError) as error:
        check_datalist([{"image": str(present)}, items[0]])
    assert "None of the" not in str(error.value) and "c0.nii.gz" in str(error.value)


def test_volume_stem_cuts_only_the_ending():
    """Output names keep every dot of a file's name but its ending: DICOM files named by UID stay apart."""
    from medgmae.data.reader import volume_stem
    from medgmae.twod.images import IMAGE_SUFFIXES

    assert volume_stem("/d/ct.nii.gz") == "ct" and volume_stem("/d/CT.NII.GZ") == "CT" and volume_stem("/d/dicom") == "dicom"
    assert volume_stem("/d/1.2.840.113619.5.dcm", IMAGE_SUFFIXES) == "1.2.840.113619.5"
    assert volume_stem("/d/a.b.png", IMAGE_SUFFIXES) == "a.b" and volume_stem("/d/slice.nii", IMAGE_SUFFIXES) == "slice"


@pytest.mark.parametrize(
    "val_fraction, expected",
    [(0.0, "4 training and 4 validation volumes from {src} (validation: the training volumes)"),
     (0.5, "2 training and 2 validation volumes from {src} (validation: 2 held out at random (val_fraction 0.5): {held})")],
)  # fmt: skip
def test_pretrain_split_logs_the_split_it_made(tmp_path, caplog, val_fraction, expected):
    import logging

    folder = tmp_path / "vols"
    folder.mkdir()
    for k in range(4):
        (folder / f"ct{k}.nii.gz").write_bytes(b"")  # named only: the split is made before the files are read
    with caplog.at_level(logging.INFO, logger="medgmae.mae_training"):
        split = pretrain_split(str(folder), tmp_path, val_fraction=val_fraction, validate=False)
    assert len(split["training"]) == int(expected[0])
    held = ", ".join(str(it["image"]) for it in split["validation"])  # the held-out volumes, named
    assert expected.format(src=folder, held=held) in caplog.text


def test_a_datalist_declaring_another_modality_than_ct_is_warned_about_once(tmp_path, caplog):
    """Decathlon datalists state their modality; every image goes through the HU window, so one of MRI (or a
    multi-channel CT + MRI list) is named in one warning per file, while CT in any of its usual spellings passes."""
    from medgmae.data import read_datalist

    def datalist(name, modality):
        path = tmp_path / name
        path.write_text(json.dumps({"modality": modality, "training": [{"image": "a.nii.gz"}],
                                    "validation": [{"image": "b.nii.gz"}]}))  # fmt: skip
        return path

    with caplog.at_level(logging.WARNING, logger="medgmae"):
        for name, modality in [("ct.json", {"0": "CT"}), ("ct2.json", "computed tomography"), ("none.json", None),
                               ("cta.json", {"0": "CTA"}), ("nc.json", {"0": "Non-contrast CT"})]:
            read_datalist(datalist(name, modality))
        assert "declares the modality" not in caplog.text
        mri = datalist("mri.json", {"0": "MRI", "1": "CT"})
        read_datalist(mri, "training")
        read_datalist(mri, "validation")
    assert caplog.text.count(f"datalist {mri} declares the modality 'MRI': ") == 1
    v2 = tmp_path / "nnunet.json"  # nnU-Net v2 names the channels, not the modality
    v2.write_text(json.dumps({"channel_names": {"0": "T2"}, "training": [{"image": "a.nii.gz"}]}))
    with caplog.at_level(logging.WARNING, logger="medgmae"):
        read_datalist(v2)
    assert f"datalist {v2} declares the modality 'T2'" in caplog.text


def test_a_volume_given_where_a_datalist_is_read_is_named_as_a_volume(tmp_path):
    """``--dataset_dir /data/case.nii.gz``: not "is not valid JSON: 'utf-8' codec can't decode byte 0x8b"."""
    from medgmae.data import read_datalist, resolve_datalist

    path = nifti_file(tmp_path / "case.nii.gz", _varied((8, 8, 8), 0))
    with pytest.raises(DatasetError, match=f"{path} is a volume, not a datalist: give the folder"):
        read_datalist(path)
    with pytest.raises(DatasetError, match="is a volume, not a datalist"):
        resolve_datalist(str(path), tmp_path)


def test_validation_images_that_are_also_training_images_are_warned_about(tmp_path, caplog):
    """A case listed in both lists (also through another spelling of its path) makes validation score what the model
    trains on: pre-training names it; val_fraction 0, which validates on the training volumes on purpose, does not."""
    rng = np.random.default_rng(0)
    for i in range(3):
        nifti_file(tmp_path / f"c{i}.nii.gz", rng.normal(0, 100, (8, 8, 8)).astype(np.float32))
    (tmp_path / "sub").mkdir()
    nifti_file(tmp_path / "sub" / "s0.nii.gz", rng.normal(0, 100, (8, 8, 8)).astype(np.float32))
    dl = tmp_path / "dataset.json"
    dl.write_text(json.dumps({"training": [{"image": "c0.nii.gz"}, {"image": "c1.nii.gz"}],
                              "validation": [{"image": "sub/../c1.nii.gz"}, {"image": "c2.nii.gz"}]}))  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="medgmae"):
        pretrain_split(str(dl), tmp_path, validate=False)
    assert f"{dl}: 1 of the 2 validation images is also a training image ({tmp_path / 'sub/../c1.nii.gz'})" in caplog.text
    assert "listed more than once" not in caplog.text
    # one training image listed twice, with two labels: it weighs double, and its labels contradict each other
    from medgmae.data.datalist import warn_if_lists_overlap

    caplog.clear()
    twice = [{"image": str(tmp_path / "c0.nii.gz"), "label": "a.nii.gz"}, {"image": str(tmp_path / "sub/../c0.nii.gz"), "label": "b.nii.gz"}]
    with caplog.at_level(logging.WARNING, logger="medgmae"):
        assert warn_if_lists_overlap(twice, [], "dl.json") == 0
    assert f"dl.json: 1 training image is listed more than once ({tmp_path / 'c0.nii.gz'})" in caplog.text
    assert "the labels contradict each other" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medgmae"):
        pretrain_split(str(tmp_path / "sub"), tmp_path, val_fraction=0.0, validate=False)
    assert "also training images" not in caplog.text


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


def test_an_nnunet_raw_folder_is_named_with_the_command_writing_its_datalist(tmp_path):
    """nnU-Net v2's dataset.json lists no cases: pre-training on its folder says what the file is and gives the
    medgmae-datalist command that writes a Decathlon datalist of it, and the --datalist to give then."""
    folder = tmp_path / "Dataset003_Liver"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "file_ending": ".nii.gz",
                                                     "labels": {"background": 0, "liver": 1}, "numTraining": 2}))
    for given in ({"dataset_dir": str(folder)}, {"dataset_dir": "", "datalist": str(folder / "dataset.json")}):
        with pytest.raises(DatasetError) as e:
            pretrain_split(work_dir=tmp_path / "run", validate=False, **given)
        message = str(e.value)
        assert f"{folder / 'dataset.json'} is nnU-Net's dataset.json" in message
        assert f"medgmae-datalist {folder} --out {folder / 'dataset_decathlon.json'}" in message
        assert "--datalist" in message and "is missing" not in message


@pytest.mark.parametrize("prefix", ["/home/someone/Task09/", "C:\\Users\\someone\\Task09\\"])
def test_a_datalist_of_absolute_paths_from_another_machine_is_named_as_such(tmp_path, prefix):
    """A datalist listing absolute paths of another machine (POSIX or Windows) was told that "a datalist's relative
    paths resolve against --dataset_dir": the message now says its paths are absolute, and which listed file the
    datalist's folder holds."""
    from medgmae.data.datalist import read_datalist

    (tmp_path / "imagesTr").mkdir()
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(tmp_path / "imagesTr" / "c0.nii.gz"))
    sep = "\\" if prefix.startswith("C:") else "/"
    listed = [f"{prefix}imagesTr{sep}c{i}.nii.gz" for i in range(2)]
    datalist = tmp_path / "dataset.json"
    datalist.write_text(json.dumps({"training": [{"image": p} for p in listed]}))
    with pytest.raises(DatasetError) as error:
        check_datalist(read_datalist(datalist), source=str(datalist))
    message = str(error.value)
    assert "the datalist lists absolute paths, none of which exist here (written on another machine?)" in message
    assert f"(its folder holds {tmp_path / 'imagesTr' / 'c0.nii.gz'}, listed as {listed[0]})" in message
    assert "relative paths resolve against --dataset_dir" not in message


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
    assert text.splitlines()[-1].startswith("  - label maps off their image's grid: resample the label map")
    from medgmae.finetune.classes import refuse_unnamed_classes  # the error's lines, as other messages quote them

    with pytest.raises(DatasetError) as e:
        refuse_unnamed_classes("d.json", items)
    assert str(e.value).count("resample the label map") == 1
    with pytest.raises(DatasetError) as e:  # one: the advice stays on its line
        check_datalist(items[1:], label_key="label", num_classes=2, source="d.json")
    assert len(str(e.value).splitlines()) == 2 and "is not on the voxel grid" in str(e.value).splitlines()[1]
    assert str(e.value).count("resample the label map") == 1
