"""Reading volumes: every format (NIfTI, NRRD, MHA, DICOM) in one world frame; files that are not what they claim."""

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

from medgmae.data import DatasetError, LoadVolumed, read_volume
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


def test_a_detached_nrrd_header_reads_like_the_nifti(tmp_path):
    img = sitk_image(5)
    sitk.WriteImage(img, str(tmp_path / "ct.nhdr"))
    sitk.WriteImage(img, str(tmp_path / "ct.nii.gz"))
    a, b = read_volume(tmp_path / "ct.nhdr"), read_volume(tmp_path / "ct.nii.gz")
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-5)


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
