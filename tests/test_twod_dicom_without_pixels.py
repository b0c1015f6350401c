"""DICOM files without pixel data (a DICOMDIR, a structured report) in the 2D readers' folders and as given files."""

import logging

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage

from medgmae.twod.classification_data import scan_image_folder
from medgmae.twod.data2d import image_channels, image_folder_items
from medgmae.twod.gvit_infer import inference_images
from medgmae.twod.images import read_image
from tests.data_helpers import pydicom_dataset

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def _dataset(sop_class: str):
    return pydicom_dataset(sop_class, sop_instance=sop_class != MEDIA_STORAGE_DIRECTORY)


def _write_slice(path, size: int = 6) -> None:
    ds = _dataset(CTImageStorage)
    ds.Modality, ds.Rows, ds.Columns = "CT", size, size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = (np.arange(size * size, dtype=np.uint16) * 10).tobytes()
    ds.save_as(path, enforce_file_format=True)


def _write_dicomdir(path) -> None:
    ds = _dataset(MEDIA_STORAGE_DIRECTORY)
    ds.FileSetID = "EXPORT"
    record = Dataset()
    record.DirectoryRecordType, record.ReferencedFileID = "IMAGE", ["IM0004"]
    ds.DirectoryRecordSequence = [record]
    ds.save_as(path, enforce_file_format=True)


def _write_text_report(path) -> None:
    ds = _dataset(BASIC_TEXT_SR)
    ds.Modality, ds.ValueType, ds.CompletionFlag = "SR", "CONTAINER", "COMPLETE"
    ds.save_as(path, enforce_file_format=True)


def _export_folder(folder):
    """A CD export: two slices (one named .dcm, one without an ending), a PNG, its DICOMDIR and a report."""
    folder.mkdir(parents=True, exist_ok=True)
    _write_slice(folder / "slice1.dcm")
    _write_slice(folder / "IM0004")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "img0.png")
    _write_dicomdir(folder / "DICOMDIR")
    _write_text_report(folder / "report.dcm")
    return folder


def test_dicom_files_without_pixel_data_are_skipped_and_named_by_every_folder_reader(tmp_path, caplog):
    """A DICOMDIR and a report are no images: every 2D folder reader leaves them out and names them, saying why
    (a DICOMDIR was counted among the images, then refused as unreadable, stopping the run)."""
    gmae = _export_folder(tmp_path / "gmae")
    note = "skipped 2 files that are not images: DICOMDIR (DICOM without pixel data), report.dcm (DICOM without pixel data)"
    with caplog.at_level(logging.INFO):
        items = image_folder_items(gmae)
    assert [p["image"].rsplit("/", 1)[1] for p in items] == ["IM0004", "img0.png", "slice1.dcm"]
    assert "3 image files -> 3 training images" in caplog.text and f"dataset_dir {gmae}: {note}" in caplog.text
    assert len(image_channels([p["image"] for p in items], str(gmae))) == 3
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert len(inference_images(None, gmae)) == 3
    assert f"--image_dir {gmae}: {note}" in caplog.text
    classes = tmp_path / "classes"
    _export_folder(classes / "a")
    _export_folder(classes / "b")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert len(scan_image_folder(classes)[0]) == 6
    assert "skipped 4 files that are not images: a/DICOMDIR (DICOM without pixel data), a/report.dcm" in caplog.text


def test_a_damaged_dicom_image_is_still_refused_by_name(tmp_path):
    """A DICOM image whose pixel data is cut short, whose header ends before it, or that is cut off inside its header
    (``head -c``: before its pixel module, only its image SOP class left to tell it from a DICOMDIR or a report) is
    still listed as an image and refused by name when read, as a truncated image (not skipped as a file without
    pixel data)."""
    _write_slice(tmp_path / "cut.dcm", size=64)
    data = (tmp_path / "cut.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[:-100])
    (tmp_path / "head.dcm").write_bytes(data[: data.index(b"\x28\x00\x02\x00")])  # cut before (0028,0002)
    ds = _dataset(CTImageStorage)
    ds.Rows, ds.Columns = 4, 4  # an image's header without its pixels
    ds.save_as(tmp_path / "IM0009", enforce_file_format=True)
    items = image_folder_items(tmp_path, log=False)
    assert len(items) == 3
    with pytest.raises(ValueError, match=r"3 unreadable images") as e:
        image_channels([p["image"] for p in items], str(tmp_path))
    assert "cut.dcm: not a readable DICOM image" in str(e.value)
    for name in ("head.dcm", "IM0009"):
        assert f"{name}: a truncated DICOM image (CT Image Storage): its header describes an image but the file ends " \
               "before its pixel data" in str(e.value)


@pytest.mark.parametrize("write", [_write_dicomdir, _write_text_report])
def test_a_dicom_file_without_pixel_data_given_as_an_image_says_what_it_is(tmp_path, write):
    write(tmp_path / "DICOMDIR")
    with pytest.raises(ValueError) as e:
        read_image(tmp_path / "DICOMDIR")
    assert f"{tmp_path / 'DICOMDIR'}: a DICOM file without pixel data (a directory record / report), not an image" in str(e.value)


def test_medgmae_2d_refuses_a_dicomdir_as_its_image(tmp_path, capsys):
    import torch

    from medgmae.twod.cli import main
    from medgmae.twod.gmae import GMAE2D

    torch.manual_seed(0)
    torch.save(GMAE2D(img_size=32, patch_size=8, in_channels=1, model_size="tiny", num_gaussians=48).model_checkpoint(),
               tmp_path / "model.pt")  # fmt: skip
    _write_dicomdir(tmp_path / "DICOMDIR")
    argv = ["layers", "--checkpoint", str(tmp_path / "model.pt"), "--image", str(tmp_path / "DICOMDIR"), "--out", str(tmp_path / "l")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "DICOMDIR: a DICOM file without pixel data (a directory record / report), not an image" in err
    assert "(Media Storage Directory Storage)" in err and not (tmp_path / "l").exists()
