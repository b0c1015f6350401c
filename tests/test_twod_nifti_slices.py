"""The 2D reader's NIfTI slices (medgmae.twod.nifti_slices) are what read_image shows (the size rule they were split
out for is tests/test_house_rules.py's)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest


def test_the_nifti_slice_reader_gives_the_slice_read_image_shows(tmp_path):
    from medgmae.twod.images import read_image_source
    from medgmae.twod.nifti_slices import nifti_grid, read_nifti_slice

    volume = np.arange(4 * 5 * 3, dtype=np.float32).reshape(4, 5, 3)
    affine = np.diag([-0.8, 0.8, 2.0, 1.0])  # x runs toward the patient's right: reoriented to RAS first
    nib.save(nib.Nifti1Image(volume, affine), str(tmp_path / "v.nii.gz"))
    plane, which = read_nifti_slice(tmp_path / "v.nii.gz", 2)
    image, source = read_image_source(tmp_path / "v.nii.gz", 2, window=(0.0, float(volume.max())))
    assert which == source["slice"] == {"axis": "axial", "index": 2, "count": 3}
    np.testing.assert_allclose(image, plane / volume.max())
    np.testing.assert_array_equal(plane[0], volume[::-1, :, 2][::-1, ::-1].T)  # RAS, then radiological
    shape, grid = nifti_grid(tmp_path / "v.nii.gz")
    assert shape == (4, 5, 3) and np.allclose(grid, affine)
    (tmp_path / "bad.nii").write_bytes(b"not a nifti file")
    with pytest.raises(ValueError, match=r"bad\.nii: not a readable NIfTI file"):
        read_nifti_slice(tmp_path / "bad.nii", None)
