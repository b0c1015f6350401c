"""The 3D data layer: one reader for every format (geometry checked against nibabel reading the same image written
as NIfTI), the pre-check naming every unusable file, the disk cache keyed by the pre-processing."""

from __future__ import annotations

import gzip
import json
import logging
import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.transforms import Compose, RandSpatialCropd

import medgmae.data.precheck as precheck_mod
import medgmae.data.reader as reader_mod
from medgmae.data import DatasetError, LoadVolumed, check_datalist, read_volume, training_dataset
from medgmae.data.cache import DiskCacheDataset, item_hash
from medgmae.finetune.data import check_cases
from medgmae.preprocessing import PreprocessingSpec
from medgmae.mae_training import pretrain_split

SHAPE = (20, 16, 12)  # (x, y, z) index order
SPACING = (0.8, 1.3, 2.5)
ORIGIN = (-12.0, 30.5, 7.25)


def _rotation(seed: int) -> np.ndarray:
    """A proper rotation (det +1), far from the identity and from axis flips."""
    a, b, c = np.random.default_rng(seed).uniform(0.3, 1.2, 3)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _sitk_image(seed: int = 0, label: bool = False) -> sitk.Image:
    rng = np.random.default_rng(seed)
    zyx = SHAPE[::-1]
    arr = rng.integers(0, 3, zyx).astype(np.uint8) if label else rng.integers(-1000, 1500, zyx).astype(np.int16)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(SPACING)
    img.SetOrigin(ORIGIN)
    img.SetDirection(_rotation(seed).flatten().tolist())
    return img


def _write_dicom_series(img: sitk.Image, folder: Path, series: int = 2, description: str = "", decimals: int = 10) -> Path:
    """One CT slice per file, geometry in the patient position / orientation tags (SimpleITK's DICOM example);
    ``decimals``: those of the position tags (scanners often write two)."""
    folder.mkdir(parents=True, exist_ok=True)
    d = np.asarray(img.GetDirection()).reshape(3, 3)
    orientation = "\\".join(f"{v:.10f}" for v in (*d[:, 0], *d[:, 1]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(img.GetDepth()):
        sl = img[:, :, k]
        for tag, value in (("0008|0060", "CT"), ("0020|000d", "1.2.826.0.1.3680043.2.1125.1"),
                           ("0020|000e", f"1.2.826.0.1.3680043.2.1125.{series}"), ("0020|0037", orientation),
                           ("0008|103e", description),
                           ("0018|0050", str(img.GetSpacing()[2])), ("0020|0013", str(k)),
                           ("0008|0018", f"1.2.826.0.1.3680043.2.1125.3.{series}.{k}"),
                           ("0020|0032", "\\".join(f"{v:.{decimals}f}" for v in img.TransformIndexToPhysicalPoint((0, 0, k))))):  # fmt: skip
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"series{series}_slice_{k:03d}.dcm"))
        writer.Execute(sl)
    return folder


def _nifti(path: Path, array: np.ndarray, affine=None) -> str:
    nib.save(nib.Nifti1Image(array, np.diag([1.5, 1.5, 2.0, 1.0]) if affine is None else affine), str(path))
    return str(path)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture()
def formats(tmp_path, monkeypatch):
    """The same image (and label) as NIfTI (written by SimpleITK), NRRD, MetaImage and a DICOM series."""
    monkeypatch.setitem(sys.modules, "itk", None)  # itk is no dependency: any use of it fails here
    img, lab = _sitk_image(3), _sitk_image(3, label=True)
    out = {}
    for ext in (".nii.gz", ".nrrd", ".mha"):
        out[ext] = {"image": str(tmp_path / f"ct{ext}"), "label": str(tmp_path / f"seg{ext}")}
        sitk.WriteImage(img, out[ext]["image"])
        sitk.WriteImage(lab, out[ext]["label"])
    out["dicom"] = {"image": str(_write_dicom_series(img, tmp_path / "ct_series")), "label": out[".mha"]["label"]}
    return out


def test_every_format_reads_with_the_geometry_of_the_nifti(formats):
    ref = nib.load(formats[".nii.gz"]["image"])  # nibabel on ITK's NIfTI: the independent reference
    # the ITK geometry in RAS: diag(-1, -1, 1) @ [direction * spacing | origin]
    lps = np.eye(4)
    lps[:3, :3] = _rotation(3) * np.asarray(SPACING)
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

    img, lab = _sitk_image(1), _sitk_image(1, label=True)
    root = tmp_path / "data"
    for rel, image in (("imagesTr/case_01.nii.gz", img), ("labelsTr/case_01.nii.gz", lab), ("loose/ct_a.mha", img),
                       ("loose/ct_a_label.mha", lab), ("loose/ct_a-seg.nrrd", lab), ("loose/body_mask.nii.gz", lab),
                       ("loose/segmental_artery.nii.gz", img), ("imagesTs/case_09.nii.gz", img)):  # fmt: skip
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(root / rel))
    (root / "imagesTr" / "._case_01.nii.gz").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")  # skipped
    series = _write_dicom_series(img, root / "PAT1" / "STUDY1" / "SERIES3")
    (root / "PAT1" / "notes.txt").write_text("not DICOM")
    with caplog.at_level("INFO", logger="medgmae.data"):
        found = [Path(it["image"]).relative_to(root).as_posix() for it in folder_datalist(root)]
    assert found == ["PAT1/STUDY1/SERIES3", "imagesTr/case_01.nii.gz", "loose/ct_a.mha", "loose/segmental_artery.nii.gz"]
    assert "left out label maps and masks by name: 1 file in labelsTr/, 3 files (e.g. body_mask.nii.gz)" in caplog.text
    # the Decathlon layout's test images are no pre-training data (a benchmark's test cases), said so
    assert "left out the test images of its Decathlon layout: 1 file in imagesTs/" in caplog.text
    assert "GDCM" not in capfd.readouterr().err
    assert [it["image"] for it in folder_datalist(series)] == [str(series)]  # a series folder given itself


def _rewrite_slice(folder: Path, k: int, tags: dict, spacing=None) -> None:
    """Write slice ``k`` of a series written by :func:`_write_dicom_series` again with other tags / pixel spacing."""
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
    img = _sitk_image(2)
    other = _write_dicom_series(img, tmp_path / "localizer")
    _rewrite_slice(other, 5, {"0020|0037": "1\\0\\0\\0\\0\\-1"})
    with pytest.raises(ValueError, match=r"slice series2_slice_005\.dcm has ImageOrientationPatient \[1, 0, 0, 0, 0, -1\] but the series' other"):
        read_volume(other)
    spaced = _write_dicom_series(img, tmp_path / "spacing")
    _rewrite_slice(spaced, 4, {}, spacing=(0.9, 0.9, 1.0))
    with pytest.raises(ValueError, match=r"slice series2_slice_004\.dcm has PixelSpacing \[0\.9, 0\.9\] but the series' other slices \[1\.3, 0\.8\]"):
        read_volume(spaced)
    one = next(other.glob("*.dcm"))
    with pytest.raises(ValueError, match=rf"one DICOM slice, not a volume: give the folder holding its series \({other}\)"):
        read_volume(one)


def test_a_non_ct_series_is_read_with_a_warning(tmp_path, caplog):
    img = _sitk_image(4)
    folder = _write_dicom_series(img, tmp_path / "mr")
    for k in range(img.GetDepth()):
        _rewrite_slice(folder, k, {"0008|0060": "MR"})
    with caplog.at_level("WARNING", logger="medgmae.data.reader"):
        read_volume(folder)
    assert "a DICOM series of modality MR, read as CT in HU" in caplog.text


def test_a_detached_nrrd_header_reads_like_the_nifti(tmp_path):
    img = _sitk_image(5)
    sitk.WriteImage(img, str(tmp_path / "ct.nhdr"))
    sitk.WriteImage(img, str(tmp_path / "ct.nii.gz"))
    a, b = read_volume(tmp_path / "ct.nhdr"), read_volume(tmp_path / "ct.nii.gz")
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-5)


def test_a_folder_of_several_dicom_series_is_refused_naming_each(tmp_path):
    folder = _write_dicom_series(_sitk_image(3), tmp_path / "exam", description="abdomen 1.0 B30f")
    scout = sitk.Image(SHAPE[0], SHAPE[1], 2, sitk.sitkInt16)
    _write_dicom_series(scout, folder, series=7, description="topogram")
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

    rounded = _write_dicom_series(_sitk_image(3), tmp_path / "rounded", decimals=2)  # DICOM rounding: still read
    np.testing.assert_allclose(read_volume(rounded).spacing, SPACING, atol=0.01)
    folder = _write_dicom_series(_sitk_image(3), tmp_path / "gap")
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


def test_a_three_slice_series_with_a_gap_names_both_steps(tmp_path):
    """Slices 0, 1 and 3 of a 2.5 mm series: two steps, 2.5 and 5 mm, neither the usual one (their median, 3.75 mm,
    is no step of the series); the message names each with its files instead of calling 2.5 mm the odd one."""
    folder = _write_dicom_series(_sitk_image(3), tmp_path / "three")
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
    sitk.WriteImage(_sitk_image(3), str(path))  # uncompressed
    _truncate(path)
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
    unnamed = _write_dicom_series(_sitk_image(3), folder / "export")  # slices named IM0000, ... as PACS exports do
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


def test_precheck_names_every_unusable_file_in_one_message(tmp_path):
    folder = tmp_path / "vols"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        _nifti(folder / f"good_{i}.nii.gz", rng.normal(0, 100, (16, 16, 12)).astype(np.float32))
    _truncate(Path(_nifti(folder / "cut.nii.gz", rng.normal(0, 100, (32, 32, 24)).astype(np.float32))))
    _nifti(folder / "flat.nii.gz", np.zeros((16, 16), np.float32))
    _nifti(folder / "movie.nii.gz", np.zeros((8, 8, 8, 3), np.float32))
    _nifti(folder / "slice.nii.gz", rng.normal(0, 100, (16, 16, 1)).astype(np.float32))  # a 2D slice as most tools save it
    _nifti(folder / "line.nii.gz", rng.normal(0, 100, (1, 1, 50)).astype(np.float32))
    nan = np.zeros((8, 8, 8), np.float32)
    nan[1, 2, 3] = np.nan
    _nifti(folder / "nan.nii.gz", nan)
    (tmp_path / "cache").mkdir()  # a folder there already: the files that passed are remembered
    for workers in (0, 2):
        with pytest.raises(DatasetError) as err:
            pretrain_split(str(folder), tmp_path, precheck_workers=workers, ledger_dir=tmp_path / "cache")
        msg = str(err.value)
        assert msg.startswith("6 problem(s)") and "good_" not in msg
        lines = msg.splitlines()[1:]
        for name, problem in (("cut.nii.gz", "cannot read the volume"), ("flat.nii.gz", "single 3D volume"),
                              ("movie.nii.gz", "single 3D volume"), ("nan.nii.gz", "NaN"),
                              ("slice.nii.gz", "a single slice or line (shape (16, 16, 1)), not a 3D volume"),
                              ("line.nii.gz", "a single slice or line")):  # fmt: skip
            assert any(name in line and problem in line for line in lines), (name, msg)
    ledger = json.loads((tmp_path / "cache" / "precheck.json").read_text())  # only the files that passed
    assert sorted(Path(fp[0][0]).name for fp in ledger["passed"]) == [f"good_{i}.nii.gz" for i in range(4)]
    # a case listed twice (in training and validation) is one problem, named once
    cases = [{"image": str(folder / "nan.nii.gz")}, {"image": str(folder / "good_0.nii.gz")}, {"image": str(folder / "nan.nii.gz")}]
    with pytest.raises(DatasetError, match=r"^1 problem\(s\)") as err:
        check_datalist(cases)
    assert str(err.value).count("nan.nii.gz") == 1


def test_precheck_ledger_reads_each_file_once(tmp_path, monkeypatch):
    items = [{"image": _nifti(tmp_path / f"v{i}.nii.gz", np.full((8, 8, 8), i, np.float32))} for i in range(3)]
    reads = []
    real = precheck_mod.read_volume
    monkeypatch.setattr(precheck_mod, "read_volume", lambda p, **k: reads.append(Path(p).name) or real(p, **k))
    check_datalist(items, ledger_dir=tmp_path / "cache")
    assert sorted(reads) == ["v0.nii.gz", "v1.nii.gz", "v2.nii.gz"]
    reads.clear()
    check_datalist(items, ledger_dir=tmp_path / "cache")
    assert reads == []  # checked before, unchanged
    _nifti(tmp_path / "v1.nii.gz", np.full((8, 8, 9), 7, np.float32))  # edited: new size
    check_datalist(items, ledger_dir=tmp_path / "cache")
    assert reads == ["v1.nii.gz"]
    reads.clear()
    check_datalist(items, label_key="label", num_classes=2, ledger_dir=tmp_path / "cache")  # other settings: all again
    assert len(reads) == 3


def test_precheck_ledger_keeps_the_passing_files_when_one_fails(tmp_path, monkeypatch):
    """One bad file among several: the error names it, the files that passed are remembered all the same (written
    atomically, no temporary file left), and the run after fixing it reads only that file and any other that
    changed; a file that fails is never remembered."""
    items = [{"image": _nifti(tmp_path / f"v{i}.nii.gz", np.full((8, 8, 8), i, np.float32))} for i in range(5)]
    nan = np.zeros((8, 8, 8), np.float32)
    nan[1, 2, 3] = np.nan
    _nifti(tmp_path / "v3.nii.gz", nan)
    reads = []
    real = precheck_mod.read_volume
    monkeypatch.setattr(precheck_mod, "read_volume", lambda p, **k: reads.append(Path(p).name) or real(p, **k))
    with pytest.raises(DatasetError):  # a first run's folder: not created by a failure (no output folder left)
        check_datalist(items, ledger_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()
    reads.clear()
    (tmp_path / "cache").mkdir()  # a folder there already (a resumed run's, or the user's --cache_dir)
    for _ in range(2):  # still bad the second time: only it is read again
        with pytest.raises(DatasetError, match=r"^1 problem\(s\).*\n.*v3\.nii\.gz.*NaN"):
            check_datalist(items, ledger_dir=tmp_path / "cache")
    assert reads == ["v0.nii.gz", "v1.nii.gz", "v2.nii.gz", "v3.nii.gz", "v4.nii.gz", "v3.nii.gz"]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["precheck.json"]
    reads.clear()
    _nifti(tmp_path / "v3.nii.gz", np.full((8, 8, 8), 3, np.float32))  # fixed
    _nifti(tmp_path / "v0.nii.gz", np.full((8, 8, 9), 7, np.float32))  # and another edited: new size
    check_datalist(items, ledger_dir=tmp_path / "cache")
    assert sorted(reads) == ["v0.nii.gz", "v3.nii.gz"]
    reads.clear()
    check_datalist(items, ledger_dir=tmp_path / "cache")
    assert reads == []


def _chain(spec: PreprocessingSpec) -> Compose:
    return Compose([LoadVolumed("image")] + spec.transforms(["image"]) + [RandSpatialCropd("image", roi_size=4)])


def test_disk_cache_is_keyed_by_the_preprocessing(tmp_path, monkeypatch, caplog):
    items = [{"image": _nifti(tmp_path / f"v{i}.nii.gz", np.random.default_rng(i).normal(0, 200, (12, 10, 8)).astype(np.float32))}
             for i in range(3)]  # fmt: skip
    reads = []
    real = reader_mod.read_volume
    monkeypatch.setattr(reader_mod, "read_volume", lambda p, **k: reads.append(Path(p).name) or real(p, **k))
    spec = PreprocessingSpec(spacing=2.0, input_size=4, patch_size=2)

    def epoch(spec: PreprocessingSpec) -> tuple[DiskCacheDataset, list]:
        ds = training_dataset(items, _chain(spec), tmp_path / "cache", spec=spec.to_dict())
        return ds, [ds[i]["image"] for i in range(len(ds))]

    ds, first = epoch(spec)
    assert isinstance(ds, DiskCacheDataset) and len(reads) == 3
    files = sorted(Path(ds.cache_dir).glob("*.pt"))
    assert len(files) == 3 and not list(Path(ds.cache_dir).glob(".tmp-*"))
    # the cached arrays are the deterministic transforms' output, computed independently here
    direct = Compose([LoadVolumed("image")] + spec.transforms(["image"]))(items[0])["image"]
    cached = torch.load(Path(ds.cache_dir) / f"{item_hash(items[0]).decode()}.pt", weights_only=True)
    assert torch.equal(cached["image"], direct.as_tensor())
    reads.clear()
    ds2, _ = epoch(spec)
    assert reads == [] and ds2.cache_dir == ds.cache_dir  # same spec: the cache is reused, nothing decoded
    for changed in (PreprocessingSpec(spacing=3.0, input_size=4, patch_size=2),
                    PreprocessingSpec(spacing=2.0, hu_window=(-100, 300), input_size=4, patch_size=2)):  # fmt: skip
        reads.clear()
        ds3, _ = epoch(changed)
        assert ds3.cache_dir != ds.cache_dir and len(reads) == 3  # spacing / window changed: pre-processed again
    # a damaged cache file is pre-processed again, not a crash
    files[0].write_bytes(os.urandom(1000))  # random bytes: torch's refusal runs on for lines of advice
    reads.clear()
    with caplog.at_level(logging.WARNING, logger="medgmae"):
        ds4, again = epoch(spec)
    assert len(reads) == 1 and all(a.shape == (1, 4, 4, 4) for a in again)
    said = [r.getMessage() for r in caplog.records if "unreadable cache file" in r.getMessage()]
    assert len(said) == 1 and "\n" not in said[0] and said[0].endswith("pre-processing the item again"), said
    record = json.loads((Path(ds.cache_dir) / "preprocessing.json").read_text())
    assert record["spec"] == spec.to_dict()


def test_the_disk_cache_removes_what_killed_writers_left(tmp_path, dead_pid, caplog):
    """A process killed while writing a cache file leaves its temporary file in a folder other runs share: a run
    removes those of writers no longer running on its host and a minute old, and no other file."""
    import time

    from medgmae.temp_names import host_tag

    items = [{"image": _nifti(tmp_path / "v.nii.gz", np.random.default_rng(0).normal(0, 200, (12, 10, 8)).astype(np.float32))}]
    spec = PreprocessingSpec(spacing=2.0, input_size=4, patch_size=2)
    folder = Path(training_dataset(items, _chain(spec), tmp_path / "cache", spec=spec.to_dict()).cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    host, old = host_tag(), time.time() - 3600
    killed = folder / f".tmp-{host}.{dead_pid}-0123456789ab-{'a' * 32}.pt"
    kept = [folder / f".tmp-{host}.{os.getpid()}-0123456789ab-{'b' * 32}.pt", folder / f".tmp-{host}x.{dead_pid}-0123456789ab-{'c' * 32}.pt"]
    for path in [killed, *kept]:
        path.write_bytes(b"partial")
        os.utime(path, (old, old))
    with caplog.at_level(logging.INFO, logger="medgmae"):
        ds = training_dataset(items, _chain(spec), tmp_path / "cache", spec=spec.to_dict())
    assert not killed.exists() and all(p.exists() for p in kept)
    assert any("removed 1 cache file(s) that killed runs left" in r.getMessage() for r in caplog.records)
    assert ds[0]["image"].shape == (1, 4, 4, 4)


def test_ram_cache_is_an_option(tmp_path):
    from monai.data import CacheDataset

    items = [{"image": _nifti(tmp_path / "v.nii.gz", np.zeros((8, 8, 8), np.float32))}]
    spec = PreprocessingSpec(spacing=2.0, input_size=4, patch_size=2)
    assert isinstance(training_dataset(items, _chain(spec), tmp_path / "cache", cache_rate=1.0), CacheDataset)
    assert not (tmp_path / "cache").exists()
    with pytest.raises(ValueError, match="cache_rate"):
        training_dataset(items, _chain(spec), tmp_path / "cache", cache_rate=1.5)


def test_gzip_truncation_is_what_the_check_sees(tmp_path):
    """The truncated file of the pre-check test fails in gzip itself (the failure users met inside a dataset)."""
    path = Path(_nifti(tmp_path / "cut.nii.gz", np.random.default_rng(0).normal(0, 1, (32, 32, 24)).astype(np.float32)))
    _truncate(path)
    with pytest.raises(EOFError):
        gzip.decompress(path.read_bytes())
    with pytest.raises(ValueError, match="cut.nii.gz: cannot read the volume"):
        read_volume(path)


def _fill(args: tuple) -> list:
    items, cache_root, spec_dict = args
    spec = PreprocessingSpec(**spec_dict)
    ds = training_dataset(items, _chain(spec), cache_root, spec=spec.to_dict())
    return [tuple(ds[i]["image"].shape) for i in range(len(ds))] + [str(ds.cache_dir)]


def test_several_processes_fill_one_cache_at_once(tmp_path):
    """Four processes pre-process the same items into one cache at the same time (as DDP ranks or jobs sharing a
    cache do): every file is whole, no temporary file is left, and a later reader decodes nothing."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    items = [{"image": _nifti(tmp_path / f"v{i}.nii.gz", np.random.default_rng(i).normal(0, 200, (24, 20, 16)).astype(np.float32))}
             for i in range(6)]  # fmt: skip
    spec = PreprocessingSpec(spacing=1.5, input_size=4, patch_size=2)
    # spawned, not forked: a fork after earlier tests started thread pools (ITK's, OpenMP's) can deadlock the child
    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(_fill, [(items, tmp_path / "cache", spec.to_dict())] * 4))
    folders = {r[-1] for r in results}
    assert len(folders) == 1 and all(r[:-1] == [(1, 4, 4, 4)] * 6 for r in results)
    folder = Path(folders.pop())
    assert len(list(folder.glob("*.pt"))) == 6 and not list(folder.glob(".tmp-*"))
    for f in folder.glob("*.pt"):
        torch.load(f, weights_only=True)  # whole files


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


def test_a_volume_given_where_a_datalist_is_read_is_named_as_a_volume(tmp_path):
    """``--dataset_dir /data/case.nii.gz``: not "is not valid JSON: 'utf-8' codec can't decode byte 0x8b"."""
    from medgmae.data import read_datalist, resolve_datalist

    path = _nifti(tmp_path / "case.nii.gz", np.zeros((8, 8, 8), np.float32))
    with pytest.raises(DatasetError, match=f"{path} is a volume, not a datalist: give the folder"):
        read_datalist(path)
    with pytest.raises(DatasetError, match="is a volume, not a datalist"):
        resolve_datalist(str(path), tmp_path)


def test_validation_images_that_are_also_training_images_are_warned_about(tmp_path, caplog):
    """A case listed in both lists (also through another spelling of its path) makes validation score what the model
    trains on: pre-training names it; val_fraction 0, which validates on the training volumes on purpose, does not."""
    rng = np.random.default_rng(0)
    for i in range(3):
        _nifti(tmp_path / f"c{i}.nii.gz", rng.normal(0, 100, (8, 8, 8)).astype(np.float32))
    (tmp_path / "sub").mkdir()
    _nifti(tmp_path / "sub" / "s0.nii.gz", rng.normal(0, 100, (8, 8, 8)).astype(np.float32))
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
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medgmae"):
        pretrain_split(str(tmp_path / "sub"), tmp_path, val_fraction=0.0, validate=False)
    assert "also training images" not in caplog.text


def test_a_label_with_negative_values_is_named_without_a_class_count():
    """Without num_classes (pre-training's labels) a label holding negative values (an HU image listed as the label)
    is named as such, not with an empty class range."""
    from medgmae.data.precheck import _label_problems

    hu = np.array([-1000.0, 0.0, 700.0])
    assert _label_problems(hu, "lab.nii.gz", None) == [
        "lab.nii.gz: label values in [-1000, 700] include negative ones: a label map holds class indices from 0 (is "
        "this an image listed as the label?)"]
    assert _label_problems(hu, "lab.nii.gz", 3) == ["lab.nii.gz: label values in [-1000, 700] are outside the class range [0, 2]"]
    assert _label_problems(np.array([0.0, 5.0]), "lab.nii.gz", None) == []


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
    rot = _rotation(4)
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
    img = _sitk_image(3)
    img.SetDirection(np.eye(3).flatten().tolist())
    folder = _write_dicom_series(img, tmp_path / "tilt")
    shift = 2.5 * np.tan(np.radians(20.0))
    for k in range(img.GetDepth()):
        x, y, z = img.TransformIndexToPhysicalPoint((0, 0, k))
        _rewrite_slice(folder, k, {"0020|0032": f"{x:.6f}\\{y + k * shift:.6f}\\{z:.6f}"})
    with pytest.raises(ValueError) as error:
        read_volume(folder)
    assert str(error.value).startswith(f"{folder}: each slice of the DICOM series is shifted by {shift:.3g} mm within its plane")
    assert "(a 20.0 degree gantry tilt?)" in str(error.value)
    oblique = _write_dicom_series(_sitk_image(3), tmp_path / "oblique")
    np.testing.assert_allclose(read_volume(oblique).spacing, SPACING, atol=1e-4)


@pytest.mark.parametrize("ending, spelling", [(".mhd", None), (".nhdr", None), (".nhdr", "datafile:")])
def test_a_detached_header_without_its_data_file_names_it(tmp_path, ending, spelling):
    """A MetaImage .mhd or NRRD .nhdr (either spelling of its field) whose data file is missing is named so (it was
    called truncated or corrupt)."""
    img = _sitk_image(1)
    sitk.WriteImage(img, str(tmp_path / f"ct{ending}"))
    if spelling:
        header = tmp_path / f"ct{ending}"
        header.write_text(header.read_text().replace("data file:", spelling))
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
    img = _sitk_image(3)
    img.SetDirection(np.eye(3).flatten().tolist())
    img.SetSpacing((0.8, 1.3, 0.625))
    folder = _write_dicom_series(img, tmp_path / "thin")
    shift = 0.625 * np.tan(np.radians(1.5))
    for k in range(img.GetDepth()):
        x, y, z = img.TransformIndexToPhysicalPoint((0, 0, k))
        _rewrite_slice(folder, k, {"0020|0032": f"{x:.6f}\\{y + k * shift:.6f}\\{z:.6f}"})
    with pytest.raises(ValueError, match=r"\(a 1\.5 degree gantry tilt\?\)"):
        read_volume(folder)


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
