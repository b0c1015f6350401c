"""Reading DICOM: series and multi-frame files in the world frame; slices that differ, gaps, tilts and modalities."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import medgmae.data.reader as reader_mod
from medgmae.data import DatasetError, check_datalist, read_volume

from data_helpers import SHAPE, SPACING, ORIGIN, rotation, sitk_image, write_dicom_series, truncate_file


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


def test_a_non_ct_series_is_read_with_a_warning(tmp_path, caplog):
    img = sitk_image(4)
    folder = write_dicom_series(img, tmp_path / "mr")
    for k in range(img.GetDepth()):
        _rewrite_slice(folder, k, {"0008|0060": "MR"})
    with caplog.at_level("WARNING", logger="medgmae.data.reader"):
        read_volume(folder)
    assert "a DICOM series of modality MR, read as CT in HU" in caplog.text


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
