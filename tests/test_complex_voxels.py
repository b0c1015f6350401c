"""Volumes and label maps of complex values (a NIfTI of complex64, an NRRD of complex floats) are refused in one line
naming the file wherever they are read: medgmae-recon's --volume and --fbp, the pre-training pre-check, the
fine-tuning label maps, the 3D reader and the 2D tool's NIfTI reader. They were read as their real part, with only
NumPy's ComplexWarning (naming a nibabel source line, not the file)."""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medgmae.data import DatasetError, read_volume
from medgmae.data.reader import volume_grid
from medgmae.finetune.data import check_cases
from medgmae.mae_training import pretrain_split
from recon.cli import main

from data_helpers import nifti_file
from finetune_helpers import make_case
from recon_cli_helpers import expect_refusal, few_gaussians_args

pytestmark = pytest.mark.usefixtures("one_thread")


def _refusal(path, dtype: str = "complex64") -> str:
    """The line naming ``path`` and its complex data type, written independently of the reader's code."""
    return f"{path}: complex-valued voxels ({dtype}): a CT volume must hold real values"


def _complex_nifti(path, like: str, dtype=np.complex64) -> str:
    """A NIfTI of ``dtype`` on the voxel grid of the NIfTI ``like``: its values plus an imaginary part of one."""
    img = nib.load(like)
    return nifti_file(Path(path), (img.get_fdata() + 1j).astype(dtype), img.affine)


def test_recon_simulate_and_reconstruct_refuse_a_complex_volume(small_parallel_scan, tmp_path, capsys):
    """``simulate --volume`` and ``reconstruct --fbp`` of a complex NIfTI: exit 2 with the one line, nothing
    written, no ComplexWarning."""
    scan, ct = small_parallel_scan
    volume = _complex_nifti(tmp_path / "complex.nii.gz", str(ct))
    out = tmp_path / "sim"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the ComplexWarning of the cast to float would fail here
        err = expect_refusal(capsys, ["simulate", "--volume", volume, "--geometry", "parallel", "--views", "8",
                                      "--out", str(out), "--device", "cpu"], _refusal(volume))  # fmt: skip
    assert len(err.strip().splitlines()) == 1 and not out.exists(), err
    fbp = _complex_nifti(tmp_path / "fbp.nii.gz", str(scan / "fbp.nii.gz"), np.complex128)
    rec = tmp_path / "rec"
    expect_refusal(capsys, few_gaussians_args(scan, rec, "--fbp", fbp), _refusal(fbp, "complex128"))
    assert not rec.exists()
    rgb = tmp_path / "rgb.nii.gz"  # a structured (RGB24) NIfTI: refused as before, in the words of every format
    fields = np.zeros((16, 16, 12), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(fields, nib.load(str(ct)).affine), str(rgb))
    expect_refusal(capsys, ["simulate", "--volume", str(rgb), "--geometry", "parallel", "--views", "8", "--out",
                            str(out), "--device", "cpu"], f"{rgb}: expected one value per voxel, got 3 components")
    assert not out.exists()


def test_the_pretraining_precheck_lists_a_complex_volume_among_the_problems(tmp_path):
    folder = tmp_path / "vols"
    rng = np.random.default_rng(0)
    for i in range(3):
        nifti_file(folder / f"good_{i}.nii.gz", rng.normal(0, 100, (16, 16, 12)).astype(np.float32))
    bad = nifti_file(folder / "complex.nii.gz", (rng.normal(0, 100, (16, 16, 12)) + 1j).astype(np.complex64))
    nan = np.zeros((16, 16, 12), np.float32)
    nan[1, 2, 3] = np.nan
    nifti_file(folder / "nan.nii.gz", nan)
    with pytest.raises(DatasetError) as err:
        pretrain_split(str(folder), tmp_path / "work", precheck_workers=0)
    msg = str(err.value)
    assert msg.startswith("2 problems in") and "good_" not in msg, msg
    assert f"  - {_refusal(bad)}" in msg.splitlines(), msg


def test_a_complex_label_map_is_refused_when_fine_tuning_cases_are_checked(tmp_path):
    cases = [make_case(tmp_path, f"c{i}") for i in range(2)]
    label = cases[1]["label"]
    _complex_nifti(label, label)
    with pytest.raises(DatasetError) as err:
        check_cases(cases, num_classes=3)
    msg = str(err.value)
    assert msg.startswith("1 problem in") and f"  - {_refusal(label)}" in msg.splitlines(), msg


def test_the_readers_refuse_complex_nifti_and_nrrd_from_the_header(tmp_path, monkeypatch):
    """The 3D reader (and the header-only grid reader) refuses a complex NIfTI and a complex NRRD, and the 2D tool's
    NIfTI reader a complex NIfTI, in the same words; a NIfTI's voxels are not read for it."""
    from medgmae.twod.images import read_image

    values = (np.arange(4 * 5 * 6).reshape(6, 5, 4) + 2j).astype(np.complex64)
    nrrd = tmp_path / "complex.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(values), str(nrrd))
    nii = nifti_file(tmp_path / "complex.nii", values.astype(np.complex128))
    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "__array__", lambda *a, **k: pytest.fail("the voxels were read"))
    for path, dtype in ((nrrd, "complex64"), (nii, "complex128")):
        for read in (read_volume, volume_grid):
            with pytest.raises(ValueError) as err:
                read(path)
            assert str(err.value) == _refusal(path, dtype)
    with pytest.raises(ValueError) as err:
        read_image(nii)
    assert str(err.value) == _refusal(nii, "complex128")
