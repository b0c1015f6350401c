"""Reading folders of volumes: searched in depth and through links, files left out counted, loose DICOM, scans given."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medgmae.data import read_volume

from data_helpers import sitk_image, write_dicom_series


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
