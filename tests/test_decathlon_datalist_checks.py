"""``medgmae-datalist``'s checks: unlabelled images, unusable files and flags, label maps off their grids, outputs."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from medgmae.data.decathlon import main

from data_helpers import decathlon_case as _case, read_only_folder


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
