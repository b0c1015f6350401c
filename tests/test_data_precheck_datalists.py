"""Datalists at the pre-check: paths that miss, splits, modalities, training/validation overlaps, nnU-Net folders."""

from __future__ import annotations

import json
import logging

import nibabel as nib
import numpy as np
import pytest

from medgmae.data import DatasetError, check_datalist
from medgmae.mae_training import pretrain_split

from data_helpers import nifti_file, varied_volume as _varied


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
    caplog.clear()  # a validation image listed twice is scored twice: it weighs double in the best model's choice
    with caplog.at_level(logging.WARNING, logger="medgmae"):
        assert warn_if_lists_overlap([], [twice[0], twice[0], {"image": str(tmp_path / "c1.nii.gz")}], "dl.json") == 0
    assert (f"dl.json: 1 validation image is listed more than once ({tmp_path / 'c0.nii.gz'}): each listing is a case "
            "of its own, so these weigh more in the mean score that chooses the best model") in caplog.text
    assert "contradict" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medgmae"):
        pretrain_split(str(tmp_path / "sub"), tmp_path, val_fraction=0.0, validate=False)
    assert "also training images" not in caplog.text


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
