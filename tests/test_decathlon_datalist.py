"""``medgmae-datalist``: the Decathlon datalist of an ``imagesTr/`` + ``labelsTr/`` folder without one, checked by
fine-tuning's own datalist reader and pre-check (``prepare_datalists``)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medgmae.data.decathlon import main, split_cases

from data_helpers import decathlon_case as _case


def test_datalist_pairs_each_image_with_its_own_label_and_fine_tuning_reads_it(tmp_path, capsys):
    """nnU-Net names (``case_0000`` images, ``case`` labels) pair by case; each pair's image and label are the same
    case (the image's value names it, the label's largest class too); the split is seeded and disjoint; imagesTs
    is the test list; the class map covers the values found; fine-tuning's reader and pre-check take the file."""
    from medgmae.finetune.data import prepare_datalists

    values = {f"case_{i:03d}": 1 + i % 3 for i in range(7)}
    for name, v in values.items():
        _case(tmp_path, name, v)
    (tmp_path / "imagesTs").mkdir()
    nib.save(nib.Nifti1Image(np.zeros((12, 10, 8), np.float32), np.eye(4)), tmp_path / "imagesTs" / "case_100_0000.nii.gz")
    assert main([str(tmp_path), "--validation-fraction", "0.3", "--seed", "4", "--labels", "1=liver,2=spleen,3=kidney"]) == 0
    assert "fine-tune with --dataset_dir" in capsys.readouterr().out
    doc = json.loads((tmp_path / "dataset.json").read_text(encoding="utf-8"))
    assert doc["labels"] == {"0": "background", "1": "liver", "2": "spleen", "3": "kidney"}
    assert len(doc["validation"]) == 2 and len(doc["training"]) == 5 and doc["numTraining"] == 5 and doc["numTest"] == 1
    assert doc["test"] == [{"image": "imagesTs/case_100_0000.nii.gz"}]
    listed = doc["training"] + doc["validation"]
    assert not {p["image"] for p in doc["training"]} & {p["image"] for p in doc["validation"]}
    for item in listed:
        image = nib.load(tmp_path / item["image"]).get_fdata()
        label = nib.load(tmp_path / item["label"]).get_fdata()
        case = Path(item["label"]).name[: -len(".nii.gz")]
        assert image.max() == 100 * values[case] and label.max() == values[case], item
    assert sorted(Path(p["label"]).name for p in listed) == sorted(f"{n}.nii.gz" for n in values)
    data = prepare_datalists(str(tmp_path), "", tmp_path / "run", label_fraction=1.0, seed=0, precheck_workers=1)
    assert data["num_classes"] == 4 and len(data["training"]) == 5 and len(data["validation"]) == 2
    assert main([str(tmp_path), "--out", str(tmp_path / "other" / "list.json")]) == 0  # elsewhere, named as before
    assert json.loads((tmp_path / "other" / "list.json").read_text(encoding="utf-8"))["labels"] == {
        "0": "background", "1": "liver", "2": "spleen", "3": "kidney"}
    assert f"--datalist {tmp_path / 'other' / 'list.json'} --dataset_dir {tmp_path}" in capsys.readouterr().out
    items = [{"image": str(i)} for i in range(20)]
    draws = {tuple(p["image"] for p in split_cases(items, 0.25, seed)[1]) for seed in range(10)}
    assert split_cases(items, 0.25, 3) == split_cases(items, 0.25, 3) and len(draws) > 5  # seeded, and the seed counts


def test_amos_validation_folders_are_the_validation_list(tmp_path, capsys):
    """AMOS's layout (imagesVa/ and labelsVa/ beside imagesTr/ and labelsTr/): the validation list is the Va cases,
    each with its own label, every Tr case trains, the classes include those only Va maps hold; a
    --validation-fraction (which would draw another split) is refused, as is a Va image without its label map."""
    from medgmae.finetune.data import prepare_datalists

    for i in range(3):
        _case(tmp_path, f"amos_{i + 1:04d}", 2, channel=False)
    for i, v in enumerate((3, 1)):
        _case(tmp_path, f"amos_{i + 501:04d}", v, channel=False, split="Va")
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path), "--validation-fraction", "0.3"])
    assert e.value.code == 2 and "holds imagesVa/ and labelsVa/, its validation cases (AMOS's layout), so --validation-fraction draws none" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "dataset.json").read_text(encoding="utf-8"))
    assert [p["image"] for p in doc["training"]] == [f"imagesTr/amos_{i:04d}.nii.gz" for i in (1, 2, 3)]
    assert doc["validation"] == [{"image": f"imagesVa/amos_{i:04d}.nii.gz", "label": f"labelsVa/amos_{i:04d}.nii.gz"} for i in (501, 502)]
    assert list(doc["labels"]) == ["0", "1", "2", "3"] and "imagesVa/ paired with labelsVa/" in doc["description"]
    data = prepare_datalists(str(tmp_path), "", tmp_path / "run", label_fraction=1.0, seed=0, precheck_workers=1)
    assert data["num_classes"] == 4 and len(data["training"]) == 3 and len(data["validation"]) == 2
    (tmp_path / "labelsVa" / "amos_0502.nii.gz").unlink()
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path), "--out", str(tmp_path / "again.json")])
    assert e.value.code == 2 and not (tmp_path / "again.json").exists()
    assert "amos_0502.nii.gz: no label map of case amos_0502 in labelsVa/" in capsys.readouterr().err


def test_binary_masks_saved_as_0_255_are_named_as_such(tmp_path, capsys):
    """Label maps of only 0 and 255 were called an ignore or border value; they are 0/255 binary masks, as the
    pre-check says of them: divide by 255."""
    for name in ("a", "b"):
        _case(tmp_path, name, 1)
        lab = nib.load(tmp_path / "labelsTr" / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image((np.asarray(lab.dataobj) * 255).astype(np.uint8), lab.affine), tmp_path / "labelsTr" / f"{name}.nii.gz")
    with pytest.raises(SystemExit):
        main([str(tmp_path)])
    err = capsys.readouterr().err
    assert "holds the value 255, which would make 256 classes of which 2 appear in the label maps ([0, 255]); only 0 " \
           "and 255: binary masks saved as 0/255? divide them by 255" in err, err
    assert "ignore or border" not in err and not (tmp_path / "dataset.json").exists()


def test_an_ignore_value_is_refused_rather_than_made_hundreds_of_empty_classes(tmp_path, capsys):
    """Label maps of classes 1 and 2 with 255 on a border (an ignore value): 256 classes of which four values
    appear would make a 256-channel model; it is refused, naming the map that holds 255. Many classes genuinely
    numbered are not."""
    for name in ("a", "b"):
        _case(tmp_path, name, 2)
    lab = nib.load(tmp_path / "labelsTr" / "b.nii.gz")
    data = np.asarray(lab.dataobj).copy()
    data[-1] = 255
    nib.save(nib.Nifti1Image(data, lab.affine), tmp_path / "labelsTr" / "b.nii.gz")
    with pytest.raises(SystemExit):
        main([str(tmp_path)])
    err = capsys.readouterr().err
    assert f"{tmp_path / 'labelsTr' / 'b.nii.gz'}: holds the value 255, which would make 256 classes of which 4 appear in the label maps ([0, 1, 2, 255])" in err
    assert not (tmp_path / "dataset.json").exists()
    data[-1] = 0
    for row, v in enumerate(range(3, 40)):  # classes 0..39 all present: a model of 40 classes, as numbered
        data[row % data.shape[0], row % data.shape[1], -1] = v
    nib.save(nib.Nifti1Image(data, lab.affine), tmp_path / "labelsTr" / "b.nii.gz")
    assert main([str(tmp_path)]) == 0 and len(json.loads((tmp_path / "dataset.json").read_text(encoding="utf-8"))["labels"]) == 40


def test_decathlon_names_ending_in_four_digits_are_cases_and_unnamed_or_absent_classes_are_said(tmp_path, capsys):
    """``case_0001.nii.gz`` in imagesTr/ and labelsTr/ (the Decathlon's and this toolkit's phantom names, AMOS's
    ``amos_0001``) were taken for nnU-Net's channel 1 of case ``case`` and refused: a channel ending is taken off
    only where the label is named without it. Classes named in part keep ``class_<i>`` for the others; a value
    no map holds keeps its channel and is noted; the validation share is rounded half up."""
    for i in range(4):
        _case(tmp_path, f"case_{i:04d}", 2 if i < 2 else 3, channel=False)  # values 0, 1, 2, 3 ...
    for path in (tmp_path / "labelsTr").iterdir():  # ... with class 1 in no map: 1 becomes 4
        lab = nib.load(path)
        data = np.asarray(lab.dataobj).copy()
        data[data == 1] = 4
        nib.save(nib.Nifti1Image(data, lab.affine), path)
    assert main([str(tmp_path), "--labels", "2=liver", "--validation-fraction", "0.125"]) == 0
    out = capsys.readouterr().out
    assert "class value [1] is in no label map" in out
    doc = json.loads((tmp_path / "dataset.json").read_text(encoding="utf-8"))
    assert doc["labels"] == {"0": "background", "1": "class_1", "2": "liver", "3": "class_3", "4": "class_4"}
    assert len(doc["validation"]) == 1 and doc["numTraining"] == 3 and doc["numValidation"] == 1  # 0.5 rounds up
    for item in doc["training"] + doc["validation"]:
        assert Path(item["image"]).name == Path(item["label"]).name  # case_0001 with case_0001


def test_btcv_names_pair_by_their_number_and_an_ambiguous_number_is_refused(tmp_path, capsys):
    """BTCV's imagesTr/img0001 and labelsTr/label0001 differ by a prefix before the same number: each image pairs
    with the label map of its number (its value names the case), which the output says. Two images of one number
    (img0001 and img001) pair with no label map unambiguously, and are refused with a hint on how files pair."""
    values = {1: 1, 2: 2, 3: 3, 5: 1, 40: 2}
    for number, value in values.items():
        _case(tmp_path, f"img{number:04d}", value, channel=False)
        (tmp_path / "labelsTr" / f"img{number:04d}.nii.gz").rename(tmp_path / "labelsTr" / f"label{number:04d}.nii.gz")
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "paired img0001 with label0001, img0002 with label0002, img0003 with label0003 and 2 more by their number" in out
    doc = json.loads((tmp_path / "dataset.json").read_text(encoding="utf-8"))
    listed = doc["training"] + doc["validation"]
    assert sorted((p["image"], p["label"]) for p in listed) == [
        (f"imagesTr/img{n:04d}.nii.gz", f"labelsTr/label{n:04d}.nii.gz") for n in sorted(values)]
    for item in listed:
        value = values[int(Path(item["label"]).name[5:9])]
        assert nib.load(tmp_path / item["image"]).get_fdata().max() == 100 * value
        assert nib.load(tmp_path / item["label"]).get_fdata().max() == value
    assert "by case number" in doc["description"]
    (tmp_path / "dataset.json").unlink()
    (tmp_path / "imagesTr" / "img0040.nii.gz").rename(tmp_path / "imagesTr" / "img001.nii.gz")  # 1 twice, no 40
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "img001.nii.gz: no label map of case img001 in labelsTr/" in err
    assert "by the number ending them, e.g. img0001 with label0001" in err
    assert not (tmp_path / "dataset.json").exists()


def test_files_that_are_not_volumes_are_named_as_skipped(tmp_path, capsys):
    """A README.txt in imagesTr/ and notes in labelsTr/ and imagesTs/ are left out of the datalist and named in one
    note (the first five, then ...); a folder holding nothing but such files is refused naming them."""
    for name in ("a", "b"):
        _case(tmp_path, name, 1)
    (tmp_path / "imagesTs").mkdir()
    extra = ["imagesTr/README.txt", "imagesTr/list.csv", "imagesTr/notes.md", "labelsTr/README.txt",
             "labelsTr/x.json", "imagesTs/README.txt"]  # fmt: skip
    for name in extra:
        (tmp_path / name).write_text("not a volume")
    (tmp_path / "imagesTr" / "._a_0000.nii.gz").write_text("macOS resource file")  # hidden: left out silently
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert ("note: skipped 6 files that are not volumes: labelsTr/README.txt, labelsTr/x.json, imagesTr/README.txt, "
            "imagesTr/list.csv, imagesTr/notes.md, ...") in out
    doc = json.loads((tmp_path / "dataset.json").read_text(encoding="utf-8"))
    assert len(doc["training"] + doc["validation"]) == 2 and doc["test"] == []
    lone = tmp_path / "lone"
    for sub in ("imagesTr", "labelsTr"):
        (lone / sub).mkdir(parents=True)
    (lone / "imagesTr" / "README.txt").write_text("images to come")
    with pytest.raises(SystemExit):
        main([str(lone)])
    err = capsys.readouterr().err
    assert "imagesTr: no volumes (readable: .nii" in err and "skipped 1 file that is not a volume: imagesTr/README.txt" in err


@pytest.mark.parametrize("labels", [{"background": 0, "liver": 1, "tumor": 2},  # nnU-Net v2
                                    {"0": "background", "1": "liver", "2": "tumor"}])  # Medical Segmentation Decathlon
def test_class_names_come_from_the_folders_own_dataset_json_unless_given(tmp_path, capsys, labels):
    """The folder's dataset.json (nnU-Net's or the Decathlon's) names the classes when --labels is not given, and the
    output says where the names come from; --labels overrides them; a class no label map holds is left out, noted."""
    for name, value in (("a", 1), ("b", 2)):
        _case(tmp_path, name, value, channel=False)
    nnunet = {"channel_names": {"0": "CT"}, "file_ending": ".nii.gz", "numTraining": 2} if "background" in labels else {}
    (tmp_path / "dataset.json").write_text(json.dumps({**nnunet, "labels": labels, "training": []}))
    out = tmp_path / "dataset_decathlon.json"
    assert main([str(tmp_path), "--out", str(out)]) == 0
    assert json.loads(out.read_text(encoding="utf-8"))["labels"] == {"0": "background", "1": "liver", "2": "tumor"}
    assert f"classes 1 liver, 2 tumor (names from {tmp_path / 'dataset.json'})" in capsys.readouterr().out
    assert main([str(tmp_path), "--out", str(out), "--force", "--labels", "1=hepar,2=lesion"]) == 0
    assert json.loads(out.read_text(encoding="utf-8"))["labels"] == {"0": "background", "1": "hepar", "2": "lesion"}
    assert "names from" not in capsys.readouterr().out
    with_vessel = {**labels, **({"vessel": 3} if "background" in labels else {"3": "vessel"})}
    (tmp_path / "dataset.json").write_text(json.dumps({**nnunet, "labels": with_vessel, "training": []}))
    assert main([str(tmp_path), "--out", str(out), "--force"]) == 0
    assert json.loads(out.read_text(encoding="utf-8"))["labels"] == {"0": "background", "1": "liver", "2": "tumor"}
    assert "names class 3 vessel, which no label map holds: left out (the classes are 0..2)" in capsys.readouterr().out


def test_numbers_pair_by_their_value_not_by_the_names_sort_order(tmp_path, capsys):
    """Unpadded image numbers (img2, img7, img10) sort as text in another order (img10 < img2 < img7) than the
    padded label numbers (label0002, label0007, label0010): each image still pairs with the label map of its number."""
    values = {2: 1, 7: 2, 10: 3}
    for number, value in values.items():
        _case(tmp_path, f"img{number}", value, channel=False)
        (tmp_path / "labelsTr" / f"img{number}.nii.gz").rename(tmp_path / "labelsTr" / f"label{number:04d}.nii.gz")
    assert main([str(tmp_path)]) == 0
    capsys.readouterr()
    doc = json.loads((tmp_path / "dataset.json").read_text(encoding="utf-8"))
    assert sorted((p["image"], p["label"]) for p in doc["training"] + doc["validation"]) == [
        ("imagesTr/img10.nii.gz", "labelsTr/label0010.nii.gz"),
        ("imagesTr/img2.nii.gz", "labelsTr/label0002.nii.gz"),
        ("imagesTr/img7.nii.gz", "labelsTr/label0007.nii.gz"),
    ]


@pytest.mark.parametrize("given", ["0=liver", "1=liver,0=spleen", "00=liver"])
def test_naming_class_0_says_it_is_the_reserved_background(tmp_path, capsys, given):
    folder = tmp_path / "data"
    _case(folder, "a", 1)
    _case(folder, "b", 1)
    with pytest.raises(SystemExit) as e:
        main([str(folder), "--labels", given])
    assert e.value.code == 2
    assert "class 0 is the background, reserved" in capsys.readouterr().err
    assert not (folder / "dataset.json").exists()


def test_the_printed_fine_tuning_command_names_the_folder_absolute(tmp_path, capsys, monkeypatch):
    """A folder given relative to the current folder was printed as given: the fine-tuning bundle is run from the
    repository's folder, where the pasted path named nothing."""
    _case(tmp_path / "d", "a", 1), _case(tmp_path / "d", "b", 1)
    monkeypatch.chdir(tmp_path)
    assert main(["d", "--out", "task.json", "--validation-fraction", "0.5"]) == 0
    out = capsys.readouterr().out
    assert f"fine-tune with --datalist {tmp_path / 'task.json'} --dataset_dir {tmp_path / 'd'}" in out


def test_the_printed_commands_keep_a_folder_with_spaces_as_one_argument(tmp_path, capsys):
    """The follow-up ``--dataset_dir`` / ``--datalist`` of ``medgmae-datalist`` and the ``medgmae-datalist`` command
    a datalist without a validation list is told to run were printed unquoted: pasted, a folder with a space became
    two arguments."""
    import shlex

    from medgmae.data.datalist import _split_command

    folder = tmp_path / "my data ü" / "Task 09"
    for i in range(3):
        _case(folder, f"case_{i:03d}", 1)
    assert main([str(folder), "--out", str(folder / "split list.json")]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert shlex.split(line) == ["fine-tune", "with", "--datalist", str(folder / "split list.json"), "--dataset_dir", str(folder)]
    assert shlex.split(_split_command(folder, "d.json")) == ["medgmae-datalist", str(folder), "--out", str(folder / "d.json")]


def test_a_value_that_labels_leaves_unnamed_is_noted_with_its_file(tmp_path, capsys):
    """--labels names classes 1 and 2; a stray value 3 in one map (an annotation slip) silently became class_3, a
    class the model learns: a note names the value, the file holding it and the class it becomes."""
    for name, value in (("a", 1), ("b", 2), ("c", 3)):
        _case(tmp_path, name, value, channel=False)
    out = tmp_path / "dataset_decathlon.json"
    assert main([str(tmp_path), "--out", str(out), "--labels", "1=liver,2=spleen"]) == 0
    assert json.loads(out.read_text(encoding="utf-8"))["labels"] == {"0": "background", "1": "liver", "2": "spleen", "3": "class_3"}
    said = capsys.readouterr().out
    assert "note: --labels names no class for value 3 (in " in said and "c.nii.gz" in said.split("value 3 (in ")[1].split(")")[0]
    assert "class class_3 of the model; fix the label map if it is a slip, or name it in --labels" in said
    assert main([str(tmp_path), "--out", str(out), "--force", "--labels", "1=liver,2=spleen,3=kidney"]) == 0
    assert "names no class" not in capsys.readouterr().out
