"""Reading volumes: every format (NIfTI, NRRD, MHA, DICOM series and multi-frame files) in one world frame, and
the refusals and warnings about series, frames, tilts and files that are not what they claim."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.transforms import Compose

import medgmae.data.reader as reader_mod
from medgmae.data import DatasetError, LoadVolumed, check_datalist, read_volume
from medgmae.finetune.data import check_cases
from medgmae.preprocessing import PreprocessingSpec
from medgmae.mae_training import pretrain_split

from data_helpers import SHAPE, SPACING, ORIGIN, rotation, sitk_image, write_dicom_series, truncate_file


@pytest.fixture()
def formats(tmp_path, monkeypatch):
    """The same image (and label) as NIfTI (written by SimpleITK), NRRD, MetaImage and a DICOM series."""
    monkeypatch.setitem(sys.modules, "itk", None)  # itk is no dependency: any use of it fails here
    img, lab = sitk_image(3), sitk_image(3, label=True)
    out = {}
    for ext in (".nii.gz", ".nrrd", ".mha"):
        out[ext] = {"image": str(tmp_path / f"ct{ext}"), "label": str(tmp_path / f"seg{ext}")}
        sitk.WriteImage(img, out[ext]["image"])
        sitk.WriteImage(lab, out[ext]["label"])
    out["dicom"] = {"image": str(write_dicom_series(img, tmp_path / "ct_series")), "label": out[".mha"]["label"]}
    return out


def test_every_format_reads_with_the_geometry_of_the_nifti(formats):
    ref = nib.load(formats[".nii.gz"]["image"])  # nibabel on ITK's NIfTI: the independent reference
    # the ITK geometry in RAS: diag(-1, -1, 1) @ [direction * spacing | origin]
    lps = np.eye(4)
    lps[:3, :3] = rotation(3) * np.asarray(SPACING)
    lps[:3, 3] = ORIGIN
    np.testing.assert_allclose(ref.affine, np.diag([-1, -1, 1, 1]) @ lps, atol=1e-4)
    for fmt, item in formats.items():
        vol = read_volume(item["image"])
        assert vol.array.shape == SHAPE, fmt
        np.testing.assert_array_equal(vol.array, np.asarray(ref.dataobj, np.float32), err_msg=fmt)
        np.testing.assert_allclose(vol.affine, ref.affine, atol=1e-4, err_msg=fmt)
        np.testing.assert_allclose(vol.spacing, SPACING, rtol=1e-5, err_msg=fmt)
        t = LoadVolumed("image")({"image": item["image"]})["image"]
        assert t.shape == (1, *SHAPE)
        np.testing.assert_allclose(t.affine.numpy(), ref.affine, atol=1e-4)


def test_a_nifti_with_two_frames_is_read_in_its_sform_with_a_warning(tmp_path, caplog):
    """qform and sform both set and 30 mm apart: the sform is used (nibabel's and MONAI's choice) and one warning
    names the file and the distance (ITK-based viewers show the qform); two agreeing forms give no warning."""
    sform = np.array([[-0.8, 0, 0, 40.0], [0, 0.8, 0, -20.0], [0, 0, 2.5, 5.0], [0, 0, 0, 1]])
    qform = sform.copy()
    qform[:3, 3] += [30.0, 0.0, 0.0]
    img = nib.Nifti1Image(np.zeros((6, 5, 4), np.int16), None)
    img.set_sform(sform, code=2)
    img.set_qform(qform, code=1)
    nib.save(img, tmp_path / "two.nii.gz")
    img.set_qform(sform, code=1)
    nib.save(img, tmp_path / "one.nii.gz")
    with caplog.at_level("WARNING", logger="medgmae.data.reader"):
        vol = read_volume(tmp_path / "two.nii.gz")
        read_volume(tmp_path / "two.nii.gz")  # read again (every epoch): not warned again
        np.testing.assert_allclose(read_volume(tmp_path / "one.nii.gz").affine, sform)
    np.testing.assert_allclose(vol.affine, sform)
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "two.nii.gz" in warned[0] and "up to 30 mm apart; the sform is used" in warned[0]


def test_a_folder_of_volumes_is_searched_in_depth_without_its_label_maps(tmp_path, caplog, capfd):
    """A Decathlon layout without dataset.json, a PACS tree (patient / study / series) and loose files with label
    maps beside them: every CT volume and series is found, in path order, no label map or mask, no GDCM noise."""
    from medgmae.data import folder_datalist

    img, lab = sitk_image(1), sitk_image(1, label=True)
    root = tmp_path / "data"
    for rel, image in (("imagesTr/case_01.nii.gz", img), ("labelsTr/case_01.nii.gz", lab), ("loose/ct_a.mha", img),
                       ("loose/ct_a_label.mha", lab), ("loose/ct_a-seg.nrrd", lab), ("loose/body_mask.nii.gz", lab),
                       ("loose/segmental_artery.nii.gz", img), ("imagesTs/case_09.nii.gz", img)):  # fmt: skip
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(root / rel))
    (root / "imagesTr" / "._case_01.nii.gz").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")  # skipped
    series = write_dicom_series(img, root / "PAT1" / "STUDY1" / "SERIES3")
    (root / "PAT1" / "notes.txt").write_text("not DICOM")
    with caplog.at_level("INFO", logger="medgmae.data"):
        found = [Path(it["image"]).relative_to(root).as_posix() for it in folder_datalist(root)]
    assert found == ["PAT1/STUDY1/SERIES3", "imagesTr/case_01.nii.gz", "loose/ct_a.mha", "loose/segmental_artery.nii.gz"]
    assert "left out label maps and masks by name: 1 file in labelsTr/, 3 files (e.g. body_mask.nii.gz)" in caplog.text
    # the Decathlon layout's test images are no pre-training data (a benchmark's test cases), said so
    assert "left out the test images of its Decathlon layout: 1 file in imagesTs/" in caplog.text
    assert "GDCM" not in capfd.readouterr().err
    assert [it["image"] for it in folder_datalist(series)] == [str(series)]  # a series folder given itself


def test_a_folder_of_volumes_is_searched_through_its_linked_sub_folders_each_once(tmp_path):
    """A dataset folder gathered as links to where its parts lie (a linked volume folder, a linked DICOM series):
    their volumes are found (os.walk passed over linked folders: pre-training found only the directly linked file);
    a link back to the folder itself and a second link to a folder already searched add nothing."""
    from medgmae.data import folder_datalist

    img = sitk_image(1)
    store = tmp_path / "store"
    for rel in ("site a/ct_1.nii.gz", "site a/ct_2.mha", "loose.nii.gz"):
        (store / rel).parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(img, str(store / rel))
    write_dicom_series(img, store / "PACS" / "SERIES1")
    root = tmp_path / "data"
    root.mkdir()
    (root / "siteA").symlink_to(store / "site a", target_is_directory=True)
    (root / "siteA again").symlink_to(store / "site a", target_is_directory=True)  # searched once, as siteA
    (root / "scanner").symlink_to(store / "PACS", target_is_directory=True)
    (root / "loop").symlink_to(root, target_is_directory=True)  # back to the folder itself
    (root / "one.nii.gz").symlink_to(store / "loose.nii.gz")
    found = [Path(it["image"]).relative_to(root).as_posix() for it in folder_datalist(root)]
    assert found == ["one.nii.gz", "scanner/SERIES1", "siteA/ct_1.nii.gz", "siteA/ct_2.mha"]
    assert read_volume(root / "scanner" / "SERIES1").array.shape == read_volume(root / "siteA" / "ct_1.nii.gz").array.shape
    # links named plainly to what is left out by name (test images, label maps) are left out as their targets are,
    # and a link to a folder above the dataset (which would take in its neighbours) is not followed
    task = tmp_path / "Task"
    for rel in ("imagesTr/case_1.nii.gz", "imagesTs/case_9.nii.gz", "labelsTr/case_1.nii.gz"):
        (task / rel).parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(img, str(task / rel))
    (task / "extra").symlink_to(task / "imagesTs", target_is_directory=True)
    (task / "more").symlink_to(task / "labelsTr", target_is_directory=True)
    (task / "up").symlink_to(tmp_path, target_is_directory=True)
    assert [Path(it["image"]).relative_to(task).as_posix() for it in folder_datalist(task)] == ["imagesTr/case_1.nii.gz"]


def test_files_a_folder_listing_leaves_out_are_counted_and_loose_dicom_is_warned_about(tmp_path, caplog):
    """Files that are no volume are left out, counted with an example; a DICOM series saved as loose files beside
    NIfTI files is not read, and the folder holding them is warned about (it was left out without a word)."""
    import shutil

    from medgmae.data import folder_datalist

    img = sitk_image(1)
    root = tmp_path / "data"
    root.mkdir()
    sitk.WriteImage(img, str(root / "ct_a.nii.gz"))
    for f in write_dicom_series(img, tmp_path / "series").iterdir():
        shutil.move(str(f), root / f.name)
    (root / "notes.txt").write_text("scan notes")
    pngs = root / "screenshots"
    pngs.mkdir()
    (pngs / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    with caplog.at_level("INFO", logger="medgmae.data"):
        found = folder_datalist(root)
    assert [Path(it["image"]).name for it in found] == ["ct_a.nii.gz"]
    slices = img.GetDepth()
    assert f"left out {slices + 2} files (e.g. " in caplog.text and "that are not volumes (readable: .nii" in caplog.text
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warned == [f"{root} holds DICOM files beside volume files: their series is not read (a DICOM series is "
                      "read from a folder of its own: move its files into one)"]  # fmt: skip
    caplog.clear()
    (root / "notes.txt").unlink()
    for f in root.glob("*.dcm"):
        f.unlink()
    with caplog.at_level("INFO", logger="medgmae.data"):
        folder_datalist(root)
    assert "left out 1 file (e.g. a.png) that is not a volume" in caplog.text and "WARNING" not in caplog.text


def _rewrite_slice(folder: Path, k: int, tags: dict, spacing=None) -> None:
    """Write slice ``k`` of a series written by :func:`write_dicom_series` again with other tags / pixel spacing."""
    path = next(folder.glob(f"*_slice_{k:03d}.dcm"))
    sl = sitk.ReadImage(str(path))
    if spacing is not None:
        sl.SetSpacing(spacing)
    for tag, value in tags.items():
        sl.SetMetaData(tag, value)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(path))
    writer.Execute(sl)


def test_dicom_slices_that_differ_from_their_series_are_named(tmp_path):
    """A localizer-like slice (another orientation) or one of another pixel spacing under the series' UID is refused
    naming that file and the attribute, not blamed on the slice spacing; a non-CT series is warned about."""
    img = sitk_image(2)
    other = write_dicom_series(img, tmp_path / "localizer")
    _rewrite_slice(other, 5, {"0020|0037": "1\\0\\0\\0\\0\\-1"})
    with pytest.raises(ValueError, match=r"slice series2_slice_005\.dcm has ImageOrientationPatient \[1, 0, 0, 0, 0, -1\] but the series' other"):
        read_volume(other)
    spaced = write_dicom_series(img, tmp_path / "spacing")
    _rewrite_slice(spaced, 4, {}, spacing=(0.9, 0.9, 1.0))
    with pytest.raises(ValueError, match=r"slice series2_slice_004\.dcm has PixelSpacing \[0\.9, 0\.9\] but the series' other slices \[1\.3, 0\.8\]"):
        read_volume(spaced)
    one = next(other.glob("*.dcm"))
    with pytest.raises(ValueError, match=rf"one DICOM slice, not a volume: give the folder holding its series \({other}\)"):
        read_volume(one)


def test_a_dicom_slice_of_another_size_is_named_before_itk_reads_the_pixels(tmp_path):
    """A slice two columns narrower than the rest: ITK's series reader fails on it with its own multi-line text
    naming no file; the slice headers are checked first, so the message names the slice and both sizes."""
    folder = write_dicom_series(sitk_image(3), tmp_path / "narrow")
    path = next(folder.glob("*_slice_005.dcm"))
    sl = sitk.ReadImage(str(path))
    narrow = sl[:-2, :, :]
    for key in sl.GetMetaDataKeys():
        narrow.SetMetaData(key, sl.GetMetaData(key))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(path))
    writer.Execute(narrow)
    with pytest.raises(ValueError) as error:
        read_volume(folder)
    message = str(error.value)
    assert message == (f"{folder}: slice series2_slice_005.dcm has Columns [{SHAPE[0] - 2}] but the series' other "
                       f"slices [{SHAPE[0]}] (a localizer or another image filed under the same series? move it out "
                       "of the folder)")  # fmt: skip


def test_an_rgb_nifti_is_refused_in_the_words_of_an_rgb_metaimage(tmp_path):
    """nibabel reads an RGB NIfTI as a structured dtype (one field per colour), whose cast to float failed in numpy's
    words (DTypePromotionError); it is refused as SimpleITK's reading of an RGB MetaImage is: 3 components."""
    rgb = np.random.default_rng(0).integers(0, 255, (*SHAPE, 3), dtype=np.uint8)
    fields = np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(np.ascontiguousarray(rgb).view(fields)[..., 0], np.eye(4)), tmp_path / "rgb.nii.gz")
    sitk.WriteImage(sitk.GetImageFromArray(rgb.transpose(2, 1, 0, 3), isVector=True), str(tmp_path / "rgb.mha"))
    for name in ("rgb.nii.gz", "rgb.mha"):
        with pytest.raises(ValueError) as error:
            read_volume(tmp_path / name)
        assert str(error.value) == f"{tmp_path / name}: expected one value per voxel, got 3 components"


def test_a_non_ct_series_is_read_with_a_warning(tmp_path, caplog):
    img = sitk_image(4)
    folder = write_dicom_series(img, tmp_path / "mr")
    for k in range(img.GetDepth()):
        _rewrite_slice(folder, k, {"0008|0060": "MR"})
    with caplog.at_level("WARNING", logger="medgmae.data.reader"):
        read_volume(folder)
    assert "a DICOM series of modality MR, read as CT in HU" in caplog.text


def test_a_detached_nrrd_header_reads_like_the_nifti(tmp_path):
    img = sitk_image(5)
    sitk.WriteImage(img, str(tmp_path / "ct.nhdr"))
    sitk.WriteImage(img, str(tmp_path / "ct.nii.gz"))
    a, b = read_volume(tmp_path / "ct.nhdr"), read_volume(tmp_path / "ct.nii.gz")
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-5)


def test_a_folder_of_several_dicom_series_is_refused_naming_each(tmp_path):
    folder = write_dicom_series(sitk_image(3), tmp_path / "exam", description="abdomen 1.0 B30f")
    scout = sitk.Image(SHAPE[0], SHAPE[1], 2, sitk.sitkInt16)
    write_dicom_series(scout, folder, series=7, description="topogram")
    with pytest.raises(ValueError) as error:
        read_volume(folder)
    message = str(error.value)
    assert str(folder) in message and "2 DICOM series" in message
    assert f"({SHAPE[2]} slices, 'abdomen 1.0 B30f')" in message and "(2 slices, 'topogram')" in message
    for f in folder.glob("series7_*"):  # one series left: read as before
        f.unlink()
    assert read_volume(folder).array.shape == SHAPE


def test_a_dicom_series_with_a_missing_slice_is_refused_naming_the_gap(tmp_path, capsys):
    """ITK would read 11 slices at the average step (2.5 * 12 / 11 mm), moving every inner slice; the positions
    written are 2.5 mm apart along the normal, so the gap between slices 4 and 6 is 5 mm."""
    from recon.cli import main as recon_main

    rounded = write_dicom_series(sitk_image(3), tmp_path / "rounded", decimals=2)  # DICOM rounding: still read
    np.testing.assert_allclose(read_volume(rounded).spacing, SPACING, atol=0.01)
    folder = write_dicom_series(sitk_image(3), tmp_path / "gap")
    (folder / "series2_slice_005.dcm").unlink()
    with pytest.raises(ValueError) as error:
        read_volume(folder)
    message = str(error.value)
    assert message.startswith(f"{folder}: the {SHAPE[2] - 1} slices")
    assert "usual step is 2.5 mm" in message and "series2_slice_004.dcm" in message and "series2_slice_006.dcm" in message
    assert message.endswith(" is 5 mm")
    with pytest.raises(DatasetError, match="not evenly spaced") as error:
        check_datalist([{"image": str(folder)}])
    assert str(folder) in str(error.value)
    out = tmp_path / "sim"
    assert recon_main(["simulate", "--volume", str(folder), "--geometry", "parallel", "--views", "4", "--out", str(out), "--device", "cpu"]) == 2
    assert f"{folder}: the {SHAPE[2] - 1} slices" in capsys.readouterr().err and not out.exists()


def test_a_repeated_dicom_slice_is_named_as_sharing_a_position(tmp_path):
    """A copy of slice 5 beside it (dup.dcm): GDCM orders a series with two slices at one position by file name, so
    the old message called the step from dup.dcm to the first slice uneven; the two files at one position are named."""
    import shutil

    folder = write_dicom_series(sitk_image(3), tmp_path / "repeated")
    shutil.copy(folder / "series2_slice_005.dcm", folder / "dup.dcm")
    position = float(np.asarray(sitk_image(3).TransformIndexToPhysicalPoint((0, 0, 5))) @ rotation(3)[:, 2])
    with pytest.raises(ValueError) as error:
        read_volume(folder)
    message = str(error.value)
    assert message == (f"{folder}: two slices of the DICOM series series2_slice_005.dcm and dup.dcm share position "
                       f"{position:.4g} mm (a repeated slice?): remove one of them from the folder")  # fmt: skip


def test_a_truncated_slice_left_out_of_its_series_is_named_with_the_gap(tmp_path):
    """GDCM leaves a slice file it cannot read out of the series without a word: the gap it leaves is refused as
    before, and the file in the folder that is not part of the series is named."""
    folder = write_dicom_series(sitk_image(3), tmp_path / "truncated")
    truncate_file(folder / "series2_slice_007.dcm")
    with pytest.raises(ValueError) as error:
        read_volume(folder)
    message = str(error.value)
    assert "series2_slice_006.dcm" in message and "series2_slice_008.dcm" in message and " is 5 mm; " in message
    assert message.endswith("; series2_slice_007.dcm in the folder is not part of the series: truncated or not DICOM?")


def test_a_three_slice_series_with_a_gap_names_both_steps(tmp_path):
    """Slices 0, 1 and 3 of a 2.5 mm series: two steps, 2.5 and 5 mm, neither the usual one (their median, 3.75 mm,
    is no step of the series); the message names each with its files instead of calling 2.5 mm the odd one."""
    folder = write_dicom_series(sitk_image(3), tmp_path / "three")
    for path in folder.iterdir():
        if path.name not in ("series2_slice_000.dcm", "series2_slice_001.dcm", "series2_slice_003.dcm"):
            path.unlink()
    with pytest.raises(ValueError) as error:
        read_volume(folder)
    message = str(error.value)
    assert message.startswith(f"{folder}: the 3 slices") and "usual step" not in message and "3.75" not in message
    assert "the smallest, series2_slice_000.dcm (position " in message and "series2_slice_001.dcm" in message
    assert message.split("the smallest, ")[1].split(", is ")[1].startswith("2.5 mm")
    assert "the largest, series2_slice_001.dcm (position " in message and "series2_slice_003.dcm" in message
    assert message.endswith("is 5 mm")


@pytest.mark.parametrize("ext", [".mha", ".nrrd"])
def test_a_truncated_image_file_is_one_line_naming_it(tmp_path, ext):
    """ITK's multi-line exception ("File cannot be read ... No such file or directory") becomes one line saying
    the data are incomplete (MetaIO's own note on stderr, with its byte counts, is left as it is: capturing a
    native library's stderr would mean taking over the process's file descriptor 2)."""
    path = tmp_path / f"ct{ext}"
    sitk.WriteImage(sitk_image(3), str(path))  # uncompressed
    truncate_file(path)
    with pytest.raises(ValueError) as error:
        read_volume(path)
    message = str(error.value)
    assert message.startswith(f"{path}: the header reads but the voxel data do not: the file is truncated") and "\n" not in message


def test_every_format_passes_the_fine_tuning_and_pre_training_checks(formats, tmp_path):
    cases = list(formats.values())
    assert check_cases(cases, num_classes=3) == cases
    with pytest.raises(DatasetError, match=r"outside the class range \[0, 1\]"):
        check_cases(cases[:1], num_classes=2)
    folder = tmp_path / "pretrain"
    folder.mkdir()
    for item in cases[1:3]:
        Path(item["image"]).rename(folder / Path(item["image"]).name)
    Path(formats["dicom"]["image"]).rename(folder / "ct_series")
    unnamed = write_dicom_series(sitk_image(3), folder / "export")  # slices named IM0000, ... as PACS exports do
    for k, f in enumerate(sorted(unnamed.iterdir())):
        f.rename(unnamed / f"IM{k:04d}")
    (folder / "notes").mkdir()  # a folder without a series is not a volume
    (folder / "notes" / "readme.txt").write_text("not DICOM")
    split = pretrain_split(str(folder), tmp_path, val_fraction=0.0)
    items = split["training"]
    assert sorted(Path(i["image"]).name for i in items) == ["ct.mha", "ct.nrrd", "ct_series", "export"]
    # the model input of each format is that of the NIfTI
    spec = PreprocessingSpec(spacing=2.0, input_size=8, patch_size=4)
    chain = Compose([LoadVolumed("image")] + spec.transforms(["image"]))
    ref = chain({"image": formats[".nii.gz"]["image"]})["image"]
    for item in items:
        out = chain(item)["image"]
        assert out.shape == ref.shape
        # float32 resampling of affines stored with each format's round-off: about 1e-5 of the [0, 1] range apart
        torch.testing.assert_close(out.as_tensor(), ref.as_tensor(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(out.affine.numpy(), ref.affine.numpy(), atol=1e-4)


def test_a_folder_without_a_dicom_series_is_refused_in_the_toolkits_words_only(tmp_path, capfd):
    """An empty folder or one of other files given as a DICOM series: one error naming the folder and what it holds,
    and no ITK console warning ("GDCMSeriesFileNames ... No Series were found") printed before it."""
    empty, other = tmp_path / "empty", tmp_path / "other"
    empty.mkdir()
    other.mkdir()
    (other / "notes.txt").write_text("not a slice")
    (other / "IM0001").write_bytes(b"\0" * 300)
    with pytest.raises(ValueError, match=f"{empty}: no DICOM series found in the folder \\(it holds no files\\)"):
        read_volume(empty)
    with pytest.raises(ValueError, match=f"{other}: .*\\(none of its 2 files is a DICOM slice\\)"):
        read_volume(other)
    assert "No Series were found" not in capfd.readouterr().err


def _expected_ras(direction: np.ndarray, spacing, origin) -> np.ndarray:
    """The RAS affine of an ITK (LPS) frame, written out: x and y negated."""
    a = np.eye(4)
    a[:3, :3] = np.asarray(direction) * np.asarray(spacing)
    a[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ a


def test_a_multi_frame_dicom_file_and_a_singleton_4d_metaimage_keep_their_frame(tmp_path):
    """A single multi-frame DICOM file (given as the file or as its folder, which ITK reads as an (X, Y, Z, 1)
    series) and a MetaImage of shape (X, Y, Z, 1) read with the spacing, origin and direction of their first three
    axes (they were read with an identity affine)."""
    arr = np.random.default_rng(0).integers(0, 3000, (5, 6, 7)).astype(np.uint16)  # (z, y, x)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.7, 0.8, 2.5))
    img.SetOrigin((-15.0, -20.0, -100.0))
    img.SetMetaData("0008|0060", "CT")
    (tmp_path / "mf").mkdir()
    sitk.WriteImage(img, str(tmp_path / "mf" / "ct3d.dcm"))
    expected = _expected_ras(np.eye(3), (0.7, 0.8, 2.5), (-15.0, -20.0, -100.0))
    assert reader_mod.volume_stem(tmp_path / "mf" / "ct3d.dcm") == "ct3d"  # its outputs' names
    for path in (tmp_path / "mf" / "ct3d.dcm", tmp_path / "mf"):
        vol = read_volume(path)
        np.testing.assert_allclose(vol.affine, expected, atol=1e-6, err_msg=str(path))
        np.testing.assert_array_equal(vol.array, arr.transpose(2, 1, 0).astype(np.float32))
    four = sitk.JoinSeries(sitk.GetImageFromArray(arr.astype(np.int16)))  # size (7, 6, 5, 1)
    rot = rotation(4)
    direction = np.eye(4)
    direction[:3, :3] = rot
    four.SetSpacing((0.7, 0.8, 2.5, 1.0))
    four.SetOrigin((3.0, -4.0, 5.0, 0.0))
    four.SetDirection(direction.flatten().tolist())
    sitk.WriteImage(four, str(tmp_path / "q.mha"))
    vol = read_volume(tmp_path / "q.mha")
    assert vol.array.shape == (7, 6, 5)
    np.testing.assert_allclose(vol.affine, _expected_ras(rot, (0.7, 0.8, 2.5), (3.0, -4.0, 5.0)), atol=1e-6)


def test_a_multi_frame_dicom_file_of_another_modality_is_warned_about(tmp_path, caplog):
    """An MR multi-frame file given as the file is named as not CT, as its folder (a series) is."""
    img = sitk.GetImageFromArray(np.random.default_rng(0).integers(0, 900, (5, 6, 7)).astype(np.uint16))
    img.SetMetaData("0008|0060", "MR")
    (tmp_path / "mr").mkdir()
    sitk.WriteImage(img, str(tmp_path / "mr" / "t1.dcm"))
    for path, what in ((tmp_path / "mr" / "t1.dcm", "file"), (tmp_path / "mr", "series")):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="medgmae.data"):
            read_volume(path)
        assert f"{path}: a DICOM {what} of modality MR, read as CT in HU" in caplog.text, (path, caplog.text)


def test_a_gantry_tilted_dicom_series_is_refused_naming_the_tilt(tmp_path):
    """Slices shifted within their planes by 2.5 mm x tan(20 degrees) each (a gantry tilt) would be stacked along
    the normal as if unshifted: refused, naming the shift and the angle; an oblique unsheared series still reads."""
    img = sitk_image(3)
    img.SetDirection(np.eye(3).flatten().tolist())
    folder = write_dicom_series(img, tmp_path / "tilt")
    shift = 2.5 * np.tan(np.radians(20.0))
    for k in range(img.GetDepth()):
        x, y, z = img.TransformIndexToPhysicalPoint((0, 0, k))
        _rewrite_slice(folder, k, {"0020|0032": f"{x:.6f}\\{y + k * shift:.6f}\\{z:.6f}"})
    with pytest.raises(ValueError) as error:
        read_volume(folder)
    assert str(error.value).startswith(f"{folder}: each slice of the DICOM series is shifted by {shift:.3g} mm within its plane")
    assert "(a 20.0 degree gantry tilt?)" in str(error.value)
    oblique = write_dicom_series(sitk_image(3), tmp_path / "oblique")
    np.testing.assert_allclose(read_volume(oblique).spacing, SPACING, atol=1e-4)


@pytest.mark.parametrize("ending, spelling", [(".mhd", None), (".nhdr", None), (".nhdr", "datafile:")])
def test_a_detached_header_without_its_data_file_names_it(tmp_path, ending, spelling):
    """A MetaImage .mhd or NRRD .nhdr (either spelling of its field) whose data file is missing is named so (it was
    called truncated or corrupt)."""
    img = sitk_image(1)
    sitk.WriteImage(img, str(tmp_path / f"ct{ending}"))
    if spelling:
        header = tmp_path / f"ct{ending}"
        header.write_text(header.read_text(encoding="utf-8").replace("data file:", spelling))
    written = [p for p in tmp_path.iterdir() if p.suffix != ending]
    assert len(written) == 1
    written[0].unlink()
    with pytest.raises(ValueError) as error:
        read_volume(tmp_path / f"ct{ending}")
    assert str(error.value) == (f"{tmp_path / f'ct{ending}'}: its header names the data file {written[0]}, which does not "
                                "exist (copy it beside the header)")


def test_a_small_tilt_of_thin_slices_is_refused_by_its_sum(tmp_path):
    """A 1.5 degree tilt at 0.625 mm steps shifts each slice by 0.016 mm (under one step's tolerance) and the last
    of 12 by 0.18 mm, over 0.2 % of the series' 6.9 mm: refused by the first-to-last shift, naming the angle."""
    img = sitk_image(3)
    img.SetDirection(np.eye(3).flatten().tolist())
    img.SetSpacing((0.8, 1.3, 0.625))
    folder = write_dicom_series(img, tmp_path / "thin")
    shift = 0.625 * np.tan(np.radians(1.5))
    for k in range(img.GetDepth()):
        x, y, z = img.TransformIndexToPhysicalPoint((0, 0, k))
        _rewrite_slice(folder, k, {"0020|0032": f"{x:.6f}\\{y + k * shift:.6f}\\{z:.6f}"})
    with pytest.raises(ValueError, match=r"\(a 1\.5 degree gantry tilt\?\)"):
        read_volume(folder)


@pytest.mark.parametrize("degrees, refused", [(0.5, True), (0.05, False)])
def test_a_long_series_of_thin_slices_is_held_to_its_total_tilt(tmp_path, degrees, refused):
    """60 slices 1 mm apart, each shifted tan(tilt) mm within its plane: at 0.5 degree the last is 0.51 mm off, over
    0.2 % of the 59 mm series, and refused though each step is under a step's tolerance; at 0.05 degree (0.05 mm,
    the size of DICOM's rounding) it reads, 1 mm apart."""
    arr = np.random.default_rng(0).integers(-1000, 1500, (60, 8, 6)).astype(np.int16)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.8, 1.3, 1.0))
    img.SetOrigin(ORIGIN)
    folder = write_dicom_series(img, tmp_path / "long")
    shift = np.tan(np.radians(degrees))
    for k in range(img.GetDepth()):
        x, y, z = img.TransformIndexToPhysicalPoint((0, 0, k))
        _rewrite_slice(folder, k, {"0020|0032": f"{x:.6f}\\{y + k * shift:.6f}\\{z:.6f}"})
    if refused:
        with pytest.raises(ValueError, match=r"\(a 0\.5 degree gantry tilt\?\)"):
            read_volume(folder)
    else:
        vol = read_volume(folder)
        assert vol.array.shape == (6, 8, 60)
        np.testing.assert_allclose(vol.spacing[2], 1.0, atol=1e-3)


def test_a_nifti_without_any_frame_is_warned_about_once(tmp_path, caplog):
    """Qform and sform codes both 0: nibabel's default frame (x flipped, centred) is not ITK's (identity LPS at 0),
    so outputs would not overlay the input in 3D Slicer; the reader says so, once per file, and not for a file with
    a frame."""
    img = nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), None)
    img.header.set_zooms((1.2, 1.5, 2.0))
    img.set_qform(None, code=0)
    img.set_sform(None, code=0)
    nib.save(img, str(tmp_path / "bare.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), np.diag([1.2, 1.5, 2.0, 1])), str(tmp_path / "ok.nii.gz"))
    with caplog.at_level(logging.WARNING, logger="medgmae"):
        for _ in range(2):
            read_volume(tmp_path / "bare.nii.gz")
        read_volume(tmp_path / "ok.nii.gz")
    said = [r.getMessage() for r in caplog.records if "states no orientation" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(f"{tmp_path / 'bare.nii.gz'} states no orientation (its qform and sform codes are 0)")


def test_an_empty_file_a_broken_link_and_a_macos_resource_file_are_named_as_such(tmp_path):
    """Each was named by the library's words only (``WrapStructError: Binary block is wrong size``, ``volume not
    found``), which say nothing of an unfinished copy, a link's missing target or macOS's ``._`` companion files."""
    empty = tmp_path / "ct.nii.gz"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"ct\.nii\.gz: the file is empty \(0 bytes"):
        read_volume(empty)
    link = tmp_path / "link.nii.gz"
    link.symlink_to(tmp_path / "moved" / "ct.nii.gz")
    with pytest.raises(FileNotFoundError, match=rf"volume not found: .*link\.nii\.gz \(a link to .*moved/ct\.nii\.gz, which does not exist\)"):
        read_volume(link)
    a, b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"  # a link loop through two links: "volume not found" said nothing
    a.symlink_to(b)
    b.symlink_to(a)
    with pytest.raises(FileNotFoundError, match=r"a\.nii\.gz: a symbolic link loop \(it points back to itself\)$"):
        read_volume(a)
    fork = tmp_path / "._ct.nii.gz"
    fork.write_bytes(b"\x00\x05\x16\x07" + bytes(4092))  # an AppleDouble header, as macOS copies leave beside a file
    with pytest.raises(ValueError, match=r"cannot read the volume .* macOS '\._' resource file's, not an image's"):
        read_volume(fork)


@pytest.mark.parametrize("unit, per_mm", [("meter", 1e-3), ("micron", 1e3)])
def test_a_nifti_in_metres_or_micrometres_is_read_in_mm_as_itk_reads_it(tmp_path, caplog, unit, per_mm):
    """nibabel (and so MONAI) take a NIfTI's numbers as they stand whatever its ``xyzt_units``; ITK, and 3D Slicer
    with it, scales them to mm. The toolkit read a file in metres as a file in mm (voxels 1000 times too small) and
    wrote its outputs in mm, 1000 times smaller than the input in a viewer and far from it. Oracle: SimpleITK."""
    import nibabel as nib
    import SimpleITK as sitk

    from medgmae.data.reader import volume_grid

    c, s = np.cos(0.4), np.sin(0.4)
    mm = np.eye(4)
    mm[:3, :3] = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ np.diag([0.7, 0.9, 2.5])
    mm[:3, 3] = [-30.0, 50.0, 100.0]
    stated = mm.copy()
    stated[:3] *= per_mm  # the same frame in the file's unit
    data = (np.arange(6 * 5 * 4).reshape(6, 5, 4) * 7 - 900).astype(np.int16)
    img = nib.Nifti1Image(data, stated)
    img.set_qform(stated, code=2)
    img.set_sform(stated, code=4)
    img.header.set_xyzt_units(unit, "sec")
    path = tmp_path / f"in_{unit}.nii.gz"
    nib.save(img, str(path))
    itk = sitk.ReadImage(str(path))
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    oracle = np.eye(4)
    oracle[:3, :3] = lps_to_ras @ np.asarray(itk.GetDirection()).reshape(3, 3) @ np.diag(itk.GetSpacing())
    oracle[:3, 3] = lps_to_ras @ np.asarray(itk.GetOrigin())
    with caplog.at_level("INFO", logger="medgmae.data.reader"):
        vol = read_volume(path)
    np.testing.assert_allclose(oracle, mm, atol=1e-6)  # the oracle is the frame in mm
    np.testing.assert_allclose(vol.affine, oracle, atol=1e-6)
    np.testing.assert_allclose(volume_grid(path)[1], oracle, atol=1e-6)  # the header-only reading too
    np.testing.assert_allclose(vol.spacing, (0.7, 0.9, 2.5), rtol=1e-6)
    np.testing.assert_array_equal(vol.array, data.astype(np.float32))
    assert f"in_{unit}.nii.gz states its voxel sizes in" in caplog.text
    assert "qform and sform" not in caplog.text  # the two frames, both scaled, still agree


def test_a_folder_of_volume_files_given_as_a_scan_says_to_give_the_files(tmp_path):
    """A folder of NIfTI files given where one scan is read (--input_files, --image) was named a folder without a
    DICOM series, which it is, with no word on what to give instead."""
    folder = tmp_path / "imagesTr"
    folder.mkdir()
    for i in range(3):
        nib.save(nib.Nifti1Image(np.arange(64, dtype=np.float32).reshape(4, 4, 4), np.eye(4)), str(folder / f"c{i}.nii.gz"))
    with pytest.raises(ValueError, match=r"no DICOM series found in the folder \(none of its 3 files is a DICOM slice\); it "
                                         r"holds 3 volume files: give them as files \(where patterns are taken, e\.g\. "
                                         r"'folder/\*\.nii\.gz'\)"):
        read_volume(folder)
