"""``medgmae-datalist``: the Decathlon datalist of an ``imagesTr/`` + ``labelsTr/`` folder without one, checked by
fine-tuning's own datalist reader and pre-check (``prepare_datalists``)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medgmae.data.decathlon import main, split_cases
from data_helpers import read_only_folder


def _case(folder: Path, name: str, value: int, channel: bool = True, label: bool = True, shape=(12, 10, 8), split: str = "Tr") -> None:
    """An image whose largest intensity encodes its case (``value * 100``; one voxel lower, as the pre-check refuses a
    blank image) and a label map of classes 0..value, in ``images<split>/`` and ``labels<split>/``."""
    affine = np.diag([0.8, 0.9, 2.5, 1.0])
    (folder / f"images{split}").mkdir(parents=True, exist_ok=True)
    (folder / f"labels{split}").mkdir(parents=True, exist_ok=True)
    image = np.full(shape, value * 100.0, np.float32)
    image[0, 0, 0] -= 1.0
    nib.save(nib.Nifti1Image(image, affine), folder / f"images{split}" / f"{name}{'_0000' if channel else ''}.nii.gz")
    if label:
        lab = np.zeros(shape, np.uint8)
        for c in range(1, value + 1):
            lab[c, :, :] = c
        nib.save(nib.Nifti1Image(lab, affine), folder / f"labels{split}" / f"{name}.nii.gz")


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


def test_an_image_without_a_label_map_is_refused_with_what_to_do_with_it(tmp_path, capsys):
    """An image of imagesTr/ without its label map: the refusal names it and says where unlabelled images go
    (imagesTs/, the test list), which moved there the folder then writes its datalist, the image as a test case."""
    _case(tmp_path, "a", 1)
    _case(tmp_path, "b", 1)
    _case(tmp_path, "c", 1, label=False)
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "c_0000.nii.gz: no label map of case c in labelsTr/" in err  # the case, not the file
    assert "images without a label map: add their maps to labelsTr/, or move the images to imagesTs/ (the test list" in err
    (tmp_path / "imagesTs").mkdir()
    (tmp_path / "imagesTr" / "c_0000.nii.gz").rename(tmp_path / "imagesTs" / "c_0000.nii.gz")
    assert main([str(tmp_path)]) == 0
    assert json.loads((tmp_path / "dataset.json").read_text(encoding="utf-8"))["test"] == [{"image": "imagesTs/c_0000.nii.gz"}]


@pytest.mark.parametrize(
    "make, flags, message",
    [
        (lambda d: [_case(d, "a", 1), _case(d, "b", 1, label=False)], [], "b_0000.nii.gz: no label map of case b"),
        (lambda d: [_case(d, "a", 1), _case(d, "b", 1), (d / "imagesTr" / "b_0000.nii.gz").rename(d / "imagesTr" / "b_0001.nii.gz")],
         [], "channel 0001 of case b"),
        (lambda d: [_case(d, "a", 1), _case(d, "b", 1)], ["--labels", "1=liver,4=kidney"], "[4], which no label map holds"),
        (lambda d: [_case(d, "a", 2), _case(d, "b", 1)], ["--labels", "1=spleen,2=spleen"], "two classes are named 'spleen'"),
        (lambda d: [_case(d, "a", 2), _case(d, "b", 1)], ["--labels", "1=spleen,1=liver"], "class 1 is named twice"),
        (lambda d: [_case(d, "a", 1), _case(d, "b", 1)], ["--seed", "-1"], "expected a non-negative integer"),
        (lambda d: [_case(d, "a", 1), _case(d, "b", 1)], ["--out", "{d}/" + "x" * 300 + ".json"], "File name too long"),
        (lambda d: [_case(d, "a", 1), _case(d, "b", 1), (d / "dataset.json").write_text(json.dumps(
            {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1}, "file_ending": ".nii.gz"}))],
         ["--force"], "is nnU-Net's dataset.json"),  # nnU-Net v2's own file: never replaced
        (lambda d: [_case(d, "a", 1), _case(d, "b", 1)], ["--out", "{d}/labelsTr/a.nii.gz", "--force"], "a datalist is a .json file"),
        (lambda d: [_case(d, "a", 1), _case(d, "b", 1)], ["--out", "{d}/imagesTr/list.json"], "inside a folder of scans"),
        (lambda d: [_case(d, "a", 1), _case(d, "b", 1)], ["--out", "{d}/labelsTr", "--force"], "is a folder: give the .json file"),
        (lambda d: [_case(d, "a", 1), _case(d, "b", 1)], ["--out", "{d}/imagesTr/a_0000.nii.gz/x.json"], "is a file, not a folder"),
        (lambda d: [_case(d, "a", 1)], [], "1 labelled case: fine-tuning needs at least two"),
        (lambda d: d.mkdir(parents=True, exist_ok=True), [], "no imagesTr/ and no labelsTr/"),
        (lambda d: [_case(d, "a", 1), _case(d, "b", 1), (d / "dataset.json").write_text("{}")], [], "exists: give --force"),
        (lambda d: [_case(d, "a", 1), _case(d, "b", 1)], ["--validation-fraction", "1.5"], "between 0 and 1"),
        (lambda d: [_case(d, "a", 1), _case(d, "b", 1)], ["--labels", "liver"], "class=name pairs"),
    ],
)
def test_datalist_refuses_what_fine_tuning_could_not_use_naming_the_file(tmp_path, capsys, make, flags, message):
    """An image without a label map (named), another channel than nnU-Net's ``_0000``, class names that do not match
    the values in the maps, a single case, a folder of another layout, an existing datalist, nonsense flags: exit
    status 2, the problem named, and no ``dataset.json`` written (an existing one left as it was)."""
    folder = tmp_path / "data"
    make(folder)
    flags = [f.format(d=folder) for f in flags]
    files = lambda: {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}  # noqa: E731
    before = files()
    with pytest.raises(SystemExit) as e:
        main([str(folder), *flags])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert files() == before  # nothing written, no scan replaced


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


@pytest.mark.parametrize("ending", [".nii.gz", ".mha"])
def test_a_label_map_off_its_images_grid_is_refused_naming_both(tmp_path, capsys, ending):
    """A label map shifted 30 mm from its image (or of another shape) was written into the datalist: fine-tuning's
    pre-check refused it only later. Refused here in the pre-check's words, nothing written."""
    import SimpleITK as sitk

    folder = tmp_path / "data"
    _case(folder, "a", 1)
    _case(folder, "b", 1)
    image = folder / "imagesTr" / f"b_0000{ending}"
    (folder / "imagesTr" / "b_0000.nii.gz").unlink()
    img = sitk.GetImageFromArray(np.zeros((8, 10, 12), np.float32))  # (z, y, x): x y z = 12 10 8, as the label
    img.SetSpacing((0.8, 0.9, 2.5))
    img.SetOrigin((0.0, 0.0, 30.0))  # 30 mm along z (LPS and RAS agree on z)
    img.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))  # RAS axes, as the label's diagonal affine
    sitk.WriteImage(img, str(image))
    label = folder / "labelsTr" / "b.nii.gz"
    with pytest.raises(SystemExit) as e:
        main([str(folder)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"label {label} is not on the voxel grid of image {image}: voxels up to 30 mm apart" in err
    assert not (folder / "dataset.json").exists()


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


def test_volume_grid_reads_the_grid_read_volume_reads(tmp_path):
    """The header-only grid is the one the reader's full read gives (NIfTI, MetaImage, NRRD)."""
    import SimpleITK as sitk

    from medgmae.data.reader import read_volume, volume_grid

    img = sitk.GetImageFromArray(np.zeros((5, 6, 7), np.float32))
    img.SetSpacing((0.7, 0.8, 3.0))
    img.SetOrigin((10.0, -20.0, 5.0))
    img.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))
    for ending in (".mha", ".nrrd", ".nii.gz"):
        path = tmp_path / f"v{ending}"
        sitk.WriteImage(img, str(path))
        shape, affine = volume_grid(path)
        vol = read_volume(path)
        assert shape == vol.array.shape == (7, 6, 5)
        np.testing.assert_allclose(affine, vol.affine, atol=1e-5)


@pytest.mark.parametrize("qform_code", [1, 0])
def test_volume_grid_of_a_nifti_is_its_sform_as_nibabel_reads_it(tmp_path, qform_code):
    """A NIfTI whose qform (code 1, or a code-0 leftover) places it 5 mm off its sform (code 2): the header-only
    grid is nibabel's ``img.affine`` (the sform) and the one :func:`read_volume` reads, not the qform."""
    from medgmae.data.reader import read_volume, volume_grid

    c, s = np.cos(0.5), np.sin(0.5)
    qform = np.array([[c * 0.8, -s * 0.9, 0, 10], [s * 0.8, c * 0.9, 0, -20], [0, 0, 2.5, 5], [0, 0, 0, 1.0]])
    sform = qform.copy()
    sform[0, 3] += 5.0
    img = nib.Nifti1Image(np.arange(7 * 6 * 5, dtype=np.float32).reshape(7, 6, 5), None)
    img.set_qform(qform, code=qform_code)
    img.set_sform(sform, code=2)
    path = tmp_path / "v.nii.gz"
    nib.save(img, path)
    reference = nib.load(path).affine
    np.testing.assert_allclose(reference, sform, atol=1e-5)
    shape, affine = volume_grid(path)
    assert shape == (7, 6, 5)
    np.testing.assert_allclose(affine, reference, atol=1e-6)
    np.testing.assert_allclose(read_volume(path).affine, reference, atol=1e-6)


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


def _refuse_reading(*args, **kwargs):
    raise AssertionError("a label map was read before the output was checked")


def test_an_out_that_cannot_be_written_is_refused_before_any_label_map_is_read(tmp_path, capsys, monkeypatch):
    """``--out`` in a folder where no file can be created (``/proc/self``, refused to every user, root included):
    exit status 2 naming ``--out``, before the label maps of a large dataset are read (not, after them, a
    temporary file's name)."""
    import medgmae.data.decathlon as decathlon

    folder = tmp_path / "data"
    _case(folder, "a", 1), _case(folder, "b", 1)
    monkeypatch.setattr(decathlon, "read_volume", _refuse_reading)
    monkeypatch.setattr(decathlon, "volume_grid", _refuse_reading)
    with pytest.raises(SystemExit) as e:
        main([str(folder), "--out", "/proc/self/dataset.json"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--out /proc/self/dataset.json: " in err and ".tmp-" not in err


def test_a_read_only_dataset_folder_is_refused_up_front_saying_how_to_write_the_datalist_elsewhere(tmp_path, capsys, monkeypatch):
    """A dataset on a read-only mount (simulated: creating a file in it fails with EROFS, as root ignores permission
    bits) and no ``--out``: the default ``FOLDER/dataset.json`` is refused before anything is read, and the message
    says to give ``--out`` elsewhere and fine-tune with ``--datalist`` that file and ``--dataset_dir`` the folder."""
    import medgmae.data.decathlon as decathlon

    folder = tmp_path / "data"
    _case(folder, "a", 1), _case(folder, "b", 1)
    read_only_folder(monkeypatch, folder)
    monkeypatch.setattr(decathlon, "read_volume", _refuse_reading)
    monkeypatch.setattr(decathlon, "volume_grid", _refuse_reading)
    with pytest.raises(SystemExit) as e:
        main([str(folder)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and not (folder / "dataset.json").exists()
    assert f"cannot write the default {folder / 'dataset.json'}: cannot create files in {folder} (Read-only file system)" in err
    assert f"give --out a .json file in a folder you can write, then fine-tune with --datalist that file --dataset_dir {folder}" in err


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


def test_every_label_off_its_images_grid_is_named_in_one_error_without_the_usage(tmp_path, capsys):
    """Two label maps shifted off their images' grids: both named in one error (the first alone was, one per run),
    the fix said once; a data error is one 'medgmae-datalist: error:' block, without argparse's usage (kept for a
    flag error), exit status 2."""
    for name in ("a", "b", "c"):
        _case(tmp_path, name, 1)
    shifted = np.diag([0.8, 0.9, 2.5, 1.0])
    shifted[2, 3] = 30.0
    for name in ("a", "c"):
        lab = nib.load(tmp_path / "labelsTr" / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(np.asarray(lab.dataobj), shifted), tmp_path / "labelsTr" / f"{name}.nii.gz")
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and not (tmp_path / "dataset.json").exists()
    lines = err.splitlines()
    assert lines[0] == "medgmae-datalist: error: 2 label maps are not on their images' voxel grids:"
    for i, name in enumerate(("a", "c"), 1):
        assert lines[i] == (f"  label {tmp_path / 'labelsTr' / name}.nii.gz is not on the voxel grid of image "
                            f"{tmp_path / 'imagesTr' / name}_0000.nii.gz: voxels up to 30 mm apart (tolerance 0.008 mm)")  # fmt: skip
    assert lines[3:] == ["resample the label map onto the image's grid with nearest-neighbour interpolation (e.g. 3D "
                         "Slicer's Resample Scalar/Vector/DWI Volume, or SimpleITK.Resample with sitkNearestNeighbor)"]  # fmt: skip
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path), "--validation-fraction", "2"])
    assert e.value.code == 2 and capsys.readouterr().err.startswith("usage: medgmae-datalist")  # a flag error: usage


def test_a_file_given_as_the_folder_is_named_as_the_folder_not_as_out(tmp_path, capsys):
    """``medgmae-datalist notes.txt``: the default datalist would go under a file; the refusal names the folder
    given, not ``--out`` (never given)."""
    notes = tmp_path / "notes.txt"
    notes.write_text("not a folder")
    with pytest.raises(SystemExit) as e:
        main([str(notes)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--out" not in err
    assert err == f"medgmae-datalist: error: {notes} is a file, not a folder: give the folder holding imagesTr/ and labelsTr/\n"
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--out", str(notes / "x.json")])
    assert f"--out {notes / 'x.json'}: {notes} is a file, not a folder" in capsys.readouterr().err


def test_a_datalist_that_cannot_be_written_leaves_no_folder_made_for_it(tmp_path, capsys, monkeypatch):
    """``--out`` below new folders on a full disk: refused naming the file (exit 2), and the folders made for it were
    left behind, empty; an existing folder stays, and with room the new folder holds the datalist."""
    import errno

    import medgmae.files

    _case(tmp_path / "d", "a", 1), _case(tmp_path / "d", "b", 1)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    write = medgmae.files.json.dump
    monkeypatch.setattr(medgmae.files.json, "dump", full)  # the disk fills as the file is written
    out = tmp_path / "new" / "a" / "task.json"
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "d"), "--out", str(out), "--validation-fraction", "0.5"])
    assert e.value.code == 2 and "No space left on device" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    monkeypatch.setattr(medgmae.files.json, "dump", write)
    assert main([str(tmp_path / "d"), "--out", str(out), "--validation-fraction", "0.5"]) == 0
    assert [p.name for p in out.parent.iterdir()] == ["task.json"]
