"""The 2D package keeps the house rule on sizes (modules under 400 lines, functions under 60), and the NIfTI slice
reader that left medgmae.twod.images for it (medgmae.twod.nifti_slices) reads what read_image shows."""

from __future__ import annotations

import ast
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

TWOD = Path(__file__).resolve().parents[1] / "medgmae" / "twod"


def _functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_every_2d_module_is_under_400_lines_and_each_function_under_60():
    long_modules, long_functions = [], []
    for path in sorted(TWOD.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) >= 400:
            long_modules.append(f"{path.name}: {len(text.splitlines())} lines")
        for fn in _functions(ast.parse(text)):
            length = fn.end_lineno - fn.lineno + 1
            if length >= 60:
                long_functions.append(f"{path.name}:{fn.name}: {length} lines")
    assert not long_modules and not long_functions, (long_modules, long_functions)


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
