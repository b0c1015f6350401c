"""What the 2D datasets say about the folders they are given."""

import logging
import re

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medgmae.twod.classification_data import scan_image_folder
from medgmae.twod.data2d import image_folder_items


def test_image_folder_logs_files_and_volume_slices(tmp_path, caplog):
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 5), np.float32), np.eye(4)), str(tmp_path / "vol.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 1), np.float32), np.eye(4)), str(tmp_path / "one.nii.gz"))
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    with caplog.at_level(logging.INFO, logger="medgmae.twod"):
        assert len(image_folder_items(tmp_path)) == 3
    assert "3 image files -> 3 training images" in caplog.text
    assert "1 of them a 3D NIfTI volume, contributing its middle axial slice" in caplog.text


def test_an_image_folder_is_searched_through_its_linked_sub_folders_each_once(tmp_path, caplog):
    """Images in linked sub-folders are training images (``rglob`` passed over linked folders: the 2D bundles found
    none in a folder of links); a loop back to the folder and a second link to one folder add nothing."""
    store = tmp_path / "store" / "set 1"
    (store / "sub").mkdir(parents=True)
    for name in ("a.png", "B.PNG", "sub/c.png"):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(store / name, format="PNG")
    root = tmp_path / "data"
    root.mkdir()
    (root / "set1").symlink_to(store, target_is_directory=True)
    (root / "set1 again").symlink_to(store, target_is_directory=True)
    (root / "loop").symlink_to(root, target_is_directory=True)
    with caplog.at_level(logging.INFO, logger="medgmae.twod"):
        items = image_folder_items(root)
    assert [it["image"] for it in items] == [str(root / "set1" / name) for name in ("B.PNG", "a.png", "sub/c.png")]
    assert "3 image files -> 3 training images" in caplog.text


def test_image_folder_logs_multi_frame_dicom(tmp_path, caplog):
    """A multi-frame DICOM contributes its middle frame, and the log says so (a one-frame file is not counted); a
    DICOM file named ``.ima`` (Siemens' export) is found as the 3D reader finds it, and one without an ending (a
    scanner's ``IM0001``, read by its preamble) too, not logged as a file that is not an image."""
    from pydicom.uid import MultiFrameGrayscaleWordSecondaryCaptureImageStorage

    from tests.data_helpers import pydicom_dataset

    for name, frames in (("cine.dcm", 3), ("one.dcm", 1), ("slice.IMA", 1), ("IM0001", 1)):
        ds = pydicom_dataset(MultiFrameGrayscaleWordSecondaryCaptureImageStorage)
        ds.Rows, ds.Columns, ds.NumberOfFrames = 4, 4, frames
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.zeros((frames, 4, 4), np.uint16).tobytes()
        ds.save_as(tmp_path / name, enforce_file_format=True)
    with caplog.at_level(logging.INFO, logger="medgmae.twod"):
        assert len(image_folder_items(tmp_path)) == 4  # a scanner's file without an ending is found by its preamble
    assert "4 image files -> 4 training images (one per file; 1 of them a multi-frame DICOM file, contributing its " \
           "middle frame)" in caplog.text and "not images" not in caplog.text


def test_class_folder_without_sub_folders_says_so(tmp_path):
    for i in range(7):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / f"{i}.png")
    with pytest.raises(ValueError, match="holds 7 images but no class sub-folders"):
        scan_image_folder(tmp_path)
    with pytest.raises(ValueError, match="is empty"):
        scan_image_folder((tmp_path / "empty").mkdir() or tmp_path / "empty")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("x")  # not empty: says what it holds
    with pytest.raises(ValueError, match=r"holds no class sub-folders and no images \(1 other file\)"):
        scan_image_folder(tmp_path / "notes")


def test_an_empty_image_file_is_named_as_one(tmp_path):
    from medgmae.twod.images import read_image

    (tmp_path / "zero.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"zero\.png: not a readable image \(an empty file, 0 bytes\)"):
        read_image(tmp_path / "zero.png")


def test_an_image_given_as_the_classification_dataset_is_named_as_one(tmp_path):
    """A PNG given as the GViT dataset is named as an image (it was read as a CSV: a UTF-8 decoding error)."""
    from medgmae.twod.classification_data import load_classification_data

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"x\.png is an image: give the dataset's folder"):
        load_classification_data(tmp_path / "x.png")


def test_a_gzip_file_named_nii_is_refused_with_the_3d_readers_advice(tmp_path):
    """2D images are opened by the one NIfTI opener (medgmae.data.reader.load_nifti) and get its checks."""
    from medgmae.twod.images import read_image

    nib.save(nib.Nifti1Image(np.zeros((8, 8, 1), np.float32), np.eye(4)), str(tmp_path / "x.nii.gz"))
    (tmp_path / "x.nii.gz").rename(tmp_path / "x.nii")
    with pytest.raises(ValueError, match=r"x\.nii: the file is gzip-compressed but named \.nii: rename it to \.nii\.gz"):
        read_image(tmp_path / "x.nii")


def test_files_that_are_not_images_are_named_in_one_line(tmp_path, caplog):
    """A training folder's README.txt and labels.csv, and those of a class-folder dataset, are left out with one
    logged line naming them (they were left out without a word); hidden files are not counted."""
    from medgmae.twod.gvit_infer import inference_images

    gmae = tmp_path / "gmae"
    (gmae / "sub").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(gmae / "a.png")
    (gmae / "README.txt").write_text("about")
    (gmae / "sub" / "labels.csv").write_text("a,1")
    (gmae / ".DS_Store").write_bytes(b"\0")
    with caplog.at_level(logging.INFO):
        assert len(image_folder_items(gmae)) == 1
    assert f"dataset_dir {gmae}: skipped 2 files that are not images: README.txt, sub/labels.csv" in caplog.text
    classes = tmp_path / "classes"
    for name in ("disc", "bar"):
        (classes / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(classes / name / f"{i}.png")
    (classes / "README.txt").write_text("about")
    (classes / "bar" / "notes.md").write_text("notes")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert len(scan_image_folder(classes)[0]) == 4
    assert f"dataset folder {classes}: skipped 2 files that are not images: README.txt, bar/notes.md" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert len(inference_images(None, classes)) == 4
    assert f"--image_dir {classes}: skipped 2 files that are not images: README.txt, bar/notes.md" in caplog.text
    for i in range(5):
        (gmae / f"n{i}.txt").write_text("")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        image_folder_items(gmae)
    assert "skipped 7 files that are not images: README.txt, n0.txt, n1.txt, n2.txt, n3.txt, ...\n" in caplog.text


def test_a_folder_of_images_alone_logs_no_skipped_files(tmp_path, caplog):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    with caplog.at_level(logging.INFO):
        image_folder_items(tmp_path)
    assert "skipped" not in caplog.text


def test_a_folder_without_images_names_the_files_it_skipped(tmp_path):
    """A folder of a README.txt (and a hidden .DS_Store) says what it skipped in its "holds no images" error, in
    every 2D folder reader (it said only "holds no images")."""
    from medgmae.twod.gvit_infer import inference_images

    (tmp_path / "README.txt").write_text("about")
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    skipped = re.escape("; skipped 1 file that is not an image: README.txt")
    with pytest.raises(ValueError, match=rf"dataset_dir {tmp_path} holds no images \(.*\){skipped}$"):
        image_folder_items(tmp_path)
    with pytest.raises(ValueError, match=rf"--image_dir {tmp_path} holds no images \(.*\){skipped}$"):
        inference_images(None, tmp_path)
    classes = tmp_path / "classes"
    for name in ("bar", "disc"):
        (classes / name).mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(classes / "disc" / "0.png")
    (classes / "bar" / "notes.md").write_text("notes")
    with pytest.raises(ValueError, match=r"class folder .*bar holds no images \(.*\); skipped 1 file that is "
                                         r"not an image: bar/notes\.md$"):  # fmt: skip
        scan_image_folder(classes)


def test_a_folder_with_several_unreadable_images_names_them_all(tmp_path):
    """The 2D GMAE dataset's cache stops at the first bad file; the error then names every unreadable image of the
    folder (read again only on that failure), as the 3D pre-check does."""
    from medgmae.twod.data2d import gmae2d_dataset

    for i in range(3):
        Image.fromarray(np.full((16, 16), 40 * i, np.uint8)).save(tmp_path / f"ok{i}.png")
    (tmp_path / "cut.png").write_bytes(b"\x89PNG\r\n garbage")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ValueError) as err:
        gmae2d_dataset(tmp_path, image_size=(16, 16), log=False)
    msg = str(err.value)
    assert msg.startswith(f"2 unreadable images in dataset_dir {tmp_path}") and "cut.png" in msg and "empty.png" in msg
    assert "ok0.png" not in msg
    assert len(gmae2d_dataset(tmp_path, image_size=(16, 16), log=False, cache=False)) == 5  # read lazily: no check
    assert "; fix or remove them:" in msg
    (tmp_path / "empty.png").unlink()
    with pytest.raises(ValueError, match=r"1 unreadable image in dataset_dir .*; fix or remove it:"):
        gmae2d_dataset(tmp_path, image_size=(16, 16), log=False)


def test_a_data_folder_named_by_a_number_is_a_folder(tmp_path, monkeypatch):
    """MONAI's command line reads ``--dataset_dir 2024`` as the number 2024: the 2D training folder and GViT's class
    folders of that name are read as folders (both stopped on "expected str, bytes or os.PathLike object, not int")."""
    from medgmae.twod.classification_data import resolve_classification_data
    from medgmae.twod.data2d import gmae2d_dataset

    for rel in ("2024/a.png", "2024/b.png", "2025/x/0.png", "2025/x/1.png", "2025/y/0.png", "2025/y/1.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((12, 12), 100, np.uint8)).save(tmp_path / rel)
    monkeypatch.chdir(tmp_path)
    assert len(gmae2d_dataset(2024, image_size=(16, 16), log=False)) == 2
    data = resolve_classification_data(2025, tmp_path / "unused", image_size=16, val_fraction=0.5)
    assert data.class_names == ["x", "y"] and len(data.train) + len(data.val) == 4
    assert data.settings["dataset_dir"] == str(tmp_path / "2025")


def test_a_broken_link_in_an_image_folder_is_named_not_passed_over(tmp_path):
    """A link whose target is gone (a data set linked from storage that is not mounted) is named as an image that is
    not found, with its target, when a 2D training folder is read: it was left out of the listing without a word,
    and training ran on the other images."""
    from medgmae.twod.data2d import gmae2d_dataset, image_folder_items

    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.full((12, 12), 100, np.uint8)).save(folder / "a.png")
    (folder / "b.png").symlink_to(tmp_path / "unmounted" / "b.png")
    assert [p["image"] for p in image_folder_items(folder, log=False)] == [str(folder / "a.png"), str(folder / "b.png")]
    with pytest.raises(ValueError, match=r"image not found: .*b\.png \(a link to .*unmounted/b\.png, which does not exist\)"):
        gmae2d_dataset(folder, image_size=(16, 16), log=False)


def test_a_2d_gmae_folder_mixing_grey_and_colour_images_is_warned_of(tmp_path, caplog):
    """Two grey PNGs (8- and 16-bit), an RGB and an RGBA one: one warning counting 2 grey and 2 colour images and
    naming the channels every image is converted to; a folder of one kind: none."""
    from medgmae.twod.data2d import gmae2d_dataset

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8)).save(tmp_path / "g1.png")
    Image.fromarray(rng.integers(0, 65535, (12, 12)).astype(np.uint16)).save(tmp_path / "g2.png")
    Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(tmp_path / "c1.png")
    Image.fromarray(rng.integers(0, 255, (12, 12, 4), dtype=np.uint8)).save(tmp_path / "c2.png")
    with caplog.at_level(logging.WARNING):
        assert len(gmae2d_dataset(tmp_path, image_size=(8, 8), in_channels=3)) == 4
    said = [r.getMessage() for r in caplog.records if "mixes grey and colour" in r.getMessage()]
    assert said == [f"dataset_dir {tmp_path} mixes grey and colour images (2 grey, 2 colour): every image is "
                    "converted to 3 channels (--in_channels 3)"]
    caplog.clear()
    for name in ("c1.png", "c2.png"):
        (tmp_path / name).unlink()
    with caplog.at_level(logging.WARNING):
        gmae2d_dataset(tmp_path, image_size=(8, 8), in_channels=1)
    assert not [r for r in caplog.records if "mixes grey and colour" in r.getMessage()]
