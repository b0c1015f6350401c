"""The one same-voxel-grid check (:mod:`medgmae.data.grid`) against offsets computed here voxel by voxel."""

import itertools

import numpy as np
import pytest

from medgmae.data.grid import GRID_TOLERANCE, grid_offset_mm, grid_tolerance_mm, same_grid_problem


def brute_force_offset(shape, a, b) -> float:
    """Largest distance between ``a @ v`` and ``b @ v`` over every voxel index ``v`` of ``shape``."""
    idx = np.array([[*v, 1.0] for v in itertools.product(*[range(n) for n in shape])])
    return float(np.linalg.norm(idx @ (np.asarray(a) - np.asarray(b))[:3].T, axis=1).max())


def rotated_anisotropic() -> np.ndarray:
    """Voxels of 0.7 x 0.9 x 2.5 mm, axes rotated by 30 degrees about z then 20 about x, origin off the centre."""
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    rz = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    rx = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    a = np.eye(4)
    a[:3, :3] = rx @ rz @ np.diag([0.7, 0.9, 2.5])
    a[:3, 3] = [-120.3, 45.2, 310.7]
    return a


def test_identity_shifted_below_and_above_the_tolerance():
    shape, ident = (10, 10, 10), np.eye(4)
    assert grid_tolerance_mm(ident, ident) == pytest.approx(GRID_TOLERANCE * 1.0)  # 1 mm voxels: 0.01 mm
    below, above = ident.copy(), ident.copy()
    below[:3, 3] = [0.004, 0.0, 0.0]
    above[:3, 3] = [0.03, 0.0, 0.0]
    assert same_grid_problem("a", shape, below, "b", shape, ident) is None
    assert "voxels up to 0.03 mm apart (tolerance 0.01 mm)" in same_grid_problem("a", shape, above, "b", shape, ident)
    # the distance, not each entry: 0.006 mm along every axis is 0.0104 mm away
    diagonal = ident.copy()
    diagonal[:3, 3] = 0.006
    assert grid_offset_mm(shape, diagonal, ident) == pytest.approx(0.006 * np.sqrt(3))
    assert same_grid_problem("a", shape, diagonal, "b", shape, ident) is not None


def test_rotated_anisotropic_grid():
    shape, a = (6, 7, 5), rotated_anisotropic()
    tol = grid_tolerance_mm(a, a)
    assert tol == pytest.approx(GRID_TOLERANCE * 0.7)  # the smallest voxel size
    # the same affine as NIfTI stores it (float32) is the same grid
    assert same_grid_problem("a", shape, a.astype(np.float32), "b", shape, a) is None
    # a perturbation of every entry (spacing, direction and origin) scaled to half / twice the tolerance
    d = np.zeros((4, 4))
    d[:3] = np.random.default_rng(0).normal(size=(3, 4))
    unit = brute_force_offset(shape, a + d, a)
    assert grid_offset_mm(shape, a + d, a) == pytest.approx(unit)  # the corners give the maximum over every voxel
    assert same_grid_problem("a", shape, a + 0.5 * tol / unit * d, "b", shape, a) is None
    problem = same_grid_problem("a", shape, a + 2 * tol / unit * d, "b", shape, a)
    assert problem is not None and f"{2 * tol:.4g} mm apart" in problem
    # a rotation of the whole grid by 0.1 degree about its origin voxel moves the far voxels by ~0.01 mm (the tolerance is 0.007 mm)
    c, s = np.cos(np.radians(0.1)), np.sin(np.radians(0.1))
    turned = a.copy()
    turned[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ a[:3, :3]
    expected = brute_force_offset(shape, turned, a)
    assert tol < expected < 0.05 and grid_offset_mm(shape, turned, a) == pytest.approx(expected)
    assert f"{expected:.4g} mm apart" in same_grid_problem("a", shape, turned, "b", shape, a)


def test_a_flipped_axis_is_another_grid_even_over_the_same_box():
    shape, a = (8, 6, 4), np.diag([1.5, 1.5, 2.0, 1.0])
    flipped = a.copy()
    flipped[0, 0], flipped[0, 3] = -1.5, 7 * 1.5  # the same voxel centres, in reverse order along i
    assert brute_force_offset(shape, flipped, a) == pytest.approx(10.5)  # voxel 0 and voxel 7 swap places
    problem = same_grid_problem("label l.nii.gz", shape, flipped, "image i.nii.gz", shape, a)
    assert problem == ("label l.nii.gz is not on the voxel grid of image i.nii.gz: the "
                       "same voxels stored in another axis order or direction (reorient it to the orientation of image i.nii.gz)")  # fmt: skip
    # a consumer that reorients both (the training pipelines' Orientationd) takes them as one grid
    assert same_grid_problem("label l.nii.gz", shape, flipped, "image i.nii.gz", shape, a, reoriented=True) is None


@pytest.mark.parametrize("seed", range(6))
def test_reoriented_grids_are_the_same_set_of_voxel_centres(seed):
    """Axes permuted and flipped (a label stored LPS beside an RAS image, or transposed): the same voxel centres,
    checked point by point; one voxel's shift is still refused, with the offset."""
    rng = np.random.default_rng(seed)
    shape, a = (7, 5, 4), rotated_anisotropic()
    perm, flips = rng.permutation(3), rng.integers(0, 2, 3).astype(bool)
    if not flips.any() and (perm == np.arange(3)).all():
        flips[0] = True
    m = np.zeros((4, 4))  # other index (i', j', k') -> this grid's index
    m[3, 3] = 1
    other_shape = tuple(shape[p] for p in perm)
    for new_axis, old_axis in enumerate(perm):
        m[old_axis, new_axis] = -1.0 if flips[new_axis] else 1.0
        m[old_axis, 3] = shape[old_axis] - 1 if flips[new_axis] else 0.0
    b = a @ m
    centres = lambda sh, aff: {tuple(np.round(aff[:3] @ [*v, 1.0], 6)) for v in itertools.product(*map(range, sh))}  # noqa: E731
    assert centres(other_shape, b) == centres(shape, a)  # the premise: the same voxel centres
    assert same_grid_problem("label", other_shape, b, "image", shape, a, reoriented=True) is None
    assert "the same voxels stored in another axis order" in same_grid_problem("label", other_shape, b, "image", shape, a)
    shifted = b.copy()
    shifted[:3, 3] += a[:3, 0]  # one voxel along the image's first axis
    problem = same_grid_problem("label", other_shape, shifted, "image", shape, a, reoriented=True)
    assert problem is not None and "mm apart" in problem


def test_different_shapes():
    a = np.diag([1.5, 1.5, 2.0, 1.0])
    problem = same_grid_problem("a", (8, 6, 4), a, "b", (8, 6, 5), a)
    assert problem == "a is not on the voxel grid of b: shape 8 x 6 x 4 vs 8 x 6 x 5 (the shapes differ; the affines agree)"
    assert same_grid_problem("a", (24, 20), a, "b", (24, 20, 1), a) is None  # a 2D image is one slice
    # without an affine only the shapes count
    assert same_grid_problem("p.png", (20, 24), None, "i.png", (20, 24), None) is None
    assert same_grid_problem("p.png", (20, 24), None, "i.png", (24, 20), a) == (
        "p.png is not on the voxel grid of i.png: shape 20 x 24 vs 24 x 20 (no affine to compare)"
    )


def test_a_non_finite_affine_is_never_the_same_grid():
    a = np.eye(4)
    bad = a.copy()
    bad[0, 3] = np.nan
    assert same_grid_problem("a", (4, 4, 4), bad, "b", (4, 4, 4), a) is not None
    with pytest.raises(ValueError, match="1 to 3 axes"):
        same_grid_problem("a", (4, 4, 4, 2), a, "b", (4, 4, 4), a)


def test_a_label_on_another_grid_is_told_the_resampling_that_fixes_it(tmp_path):
    """The refusal ends with how to fix it, and that fix (SimpleITK's nearest-neighbour resampling onto the image)
    gives a label map the same check passes, its classes kept."""
    import SimpleITK as sitk

    from medgmae.data import read_volume
    from medgmae.data.grid import label_grid_problem

    image = sitk.Image(16, 12, 8, sitk.sitkInt16)
    image.SetSpacing((1.5, 1.5, 2.0))
    label = sitk.Cast(sitk.GetImageFromArray(np.random.default_rng(0).integers(0, 3, (10, 14, 18))), sitk.sitkUInt8)
    label.SetSpacing((1.2, 1.3, 1.6))
    label.SetOrigin((-3.0, 2.0, 1.0))
    sitk.WriteImage(image, str(tmp_path / "img.nii.gz"))
    sitk.WriteImage(label, str(tmp_path / "lab.nii.gz"))
    sitk.WriteImage(sitk.Resample(label, image, sitk.Transform(), sitk.sitkNearestNeighbor), str(tmp_path / "fixed.nii.gz"))
    img, lab, fixed = (read_volume(tmp_path / f"{n}.nii.gz") for n in ("img", "lab", "fixed"))
    problem = label_grid_problem(lab.path, lab.array.shape, lab.affine, img.path, img.array.shape, img.affine)
    assert problem.startswith(f"label {lab.path} is not on the voxel grid of image {img.path}: shape 18 x 14 x 10 vs "
                              "16 x 12 x 8, voxels up to ")  # fmt: skip
    assert problem.endswith(" mm); resample the label map onto the image's grid with nearest-neighbour interpolation "
                            "(e.g. 3D Slicer's Resample Scalar/Vector/DWI Volume, or SimpleITK.Resample with "
                            "sitkNearestNeighbor)")  # fmt: skip
    assert label_grid_problem(fixed.path, fixed.array.shape, fixed.affine, img.path, img.array.shape, img.affine) is None
    assert set(np.unique(fixed.array)) <= {0.0, 1.0, 2.0}
