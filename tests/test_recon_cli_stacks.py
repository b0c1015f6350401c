"""``medgmae-recon``'s projection stacks in files: MetaImage, NIfTI and multi-page TIFF read as the .npy's array,
a detector offset read from a MetaImage header, and the stacks refused naming the file (another pixel pitch, a
flipped header, raw counts, NaN, a stack saved the wrong way round)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from recon.cli import main
from recon.geometry import CTGeometry

from recon_cli_helpers import ct, reconstruct_args, simulated  # noqa: F401 - ct and simulated are fixtures

pytestmark = pytest.mark.usefixtures("one_thread")


def test_projection_stacks_in_image_formats(simulated, tmp_path, capsys):
    """A projection stack as MetaImage (RTK's layout: x = column, y = row, z = view) or NIfTI reads as the same
    (views, rows, cols) array as the .npy, and reconstruct runs on it; a MetaImage or NIfTI header stating another
    detector pitch is refused; a MetaImage's origin off -(n - 1) / 2 * spacing (RTK's offset detector) is read as the
    detector offset (refused where it leaves the volume unseen or contradicts geometry.json's); other files are
    refused by name."""
    import SimpleITK as sitk

    from recon.geometry import CTGeometry
    from recon.scan_files import load_projections

    proj = np.load(simulated / "projections.npy")
    proj[0, 0, :3] = [1.0, 2.0, 3.0]  # an asymmetric marker: first view, first row, first columns
    geom = CTGeometry.load(simulated / "geometry.json")
    (row_mm, col_mm), (rows, cols) = geom.det_spacing, geom.det_shape
    img = _write_stacks(proj, geom, tmp_path)
    for name in ("p.mha", "p.nii.gz"):
        np.testing.assert_array_equal(load_projections(tmp_path / name), proj)
    out = tmp_path / "rec"
    args = reconstruct_args(simulated, out, "--projections", str(tmp_path / "p.mha"), "--iterations", "1", "--num-gaussians", "50")
    assert main(args) == 0 and (out / "recon.nii.gz").is_file()
    img.SetSpacing((3 * col_mm, row_mm, 1.0))
    sitk.WriteImage(img, str(tmp_path / "pitch.mha"))
    img.SetSpacing((col_mm, row_mm, 1.0))
    img.SetOrigin((-(cols - 1) / 2 * col_mm + 3 * col_mm, -(rows - 1) / 2 * row_mm, 0.0))  # shifted 3 columns
    sitk.WriteImage(img, str(tmp_path / "offset.mha"))
    img.SetOrigin((0.0, -(rows - 1) / 2 * row_mm, 0.0))  # ITK's default origin: shifted by half the detector
    sitk.WriteImage(img, str(tmp_path / "far.mha"))
    img.SetOrigin((-(cols - 1) / 2 * col_mm, -(rows - 1) / 2 * row_mm, 0.0))
    assert main(reconstruct_args(simulated, tmp_path / "rec_nii", "--projections", str(tmp_path / "p.nii.gz"),
                                  "--iterations", "1", "--num-gaussians", "50")) == 0  # fmt: skip
    capsys.readouterr()
    _check_a_detector_offset_in_the_header(simulated, geom, tmp_path, capsys)
    _check_refused_stacks(simulated, geom, img, proj, tmp_path, capsys)


def _write_stacks(proj: np.ndarray, geom: CTGeometry, tmp_path):
    """``proj`` written as p.mha (RTK's layout and centred detector), p.nii.gz and pitch.nii.gz (another pixel
    pitch); returns p.mha's SimpleITK image."""
    import SimpleITK as sitk

    (row_mm, col_mm), (rows, cols) = geom.det_spacing, geom.det_shape
    img = sitk.GetImageFromArray(proj)  # numpy (z, y, x) = (views, rows, cols)
    img.SetSpacing((col_mm, row_mm, 1.0))
    img.SetOrigin((-(cols - 1) / 2 * col_mm, -(rows - 1) / 2 * row_mm, 0.0))  # RTK's centred detector
    sitk.WriteImage(img, str(tmp_path / "p.mha"))
    # a NIfTI stack's frame is ignored, its pixel size (pixdim: the columns' norms) is the detector's pitch
    affine = np.array([[0.0, row_mm, 0, 5], [-col_mm, 0, 0, 2], [0, 0, 1.5, -3], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(proj.transpose(2, 1, 0), affine), str(tmp_path / "p.nii.gz"))
    nib.save(nib.Nifti1Image(proj.transpose(2, 1, 0), np.diag([2 * col_mm, row_mm, 1, 1])), str(tmp_path / "pitch.nii.gz"))
    return img


def _check_a_detector_offset_in_the_header(simulated, geom: CTGeometry, tmp_path, capsys) -> None:
    """offset.mha, its origin 3 columns off RTK's centred detector: read as a detector offset, refused where
    geometry.json states another one."""
    col_mm = geom.det_spacing[1]
    fbp_out = tmp_path / "offset_fbp.nii.gz"
    assert main(["fbp", "--projections", str(tmp_path / "offset.mha"), "--geometry", str(simulated / "geometry.json"),
                 "--out", str(fbp_out), "--device", "cpu"]) == 0 and fbp_out.is_file()  # fmt: skip
    assert f"the header's origin puts the detector centre (u, v) = ({3 * col_mm:.6g}, 0) mm off the central ray: " \
           "reconstructing with that detector offset" in capsys.readouterr().out
    shifted = tmp_path / "shifted.json"
    CTGeometry.from_dict({**geom.to_dict(), "det_offset": (col_mm, 0.0)}).save(shifted)
    assert main(["fbp", "--projections", str(tmp_path / "offset.mha"), "--geometry", str(shifted), "--out",
                 str(tmp_path / "no.nii.gz"), "--device", "cpu"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert f"but the geometry has det_offset ({col_mm!r}, 0.0) mm: make them agree (geometry {shifted})" in err, err


def _check_refused_stacks(simulated, geom: CTGeometry, img, proj: np.ndarray, tmp_path, capsys) -> None:
    """Stacks refused by name, nothing written (``img``: p.mha's image, its spacing and origin RTK's)."""
    import SimpleITK as sitk

    (row_mm, col_mm), (rows, cols) = geom.det_spacing, geom.det_shape
    # refused by name, nothing written: another pixel pitch, an origin far off the central ray, a flipped header
    # direction (columns stored reversed), and, as in .npy, raw integer counts and a NaN (with the view of the first)
    img.SetOrigin((-(cols - 1) / 2 * col_mm, -(rows - 1) / 2 * row_mm, 0.0))
    img.SetDirection((-1.0, 0, 0, 0, 1, 0, 0, 0, 1))
    sitk.WriteImage(img, str(tmp_path / "flipped.mha"))
    counts = sitk.GetImageFromArray((10000 * np.exp(-proj)).astype(np.uint16))
    sitk.WriteImage(counts, str(tmp_path / "counts.mha"))
    nan = proj.copy()
    nan[2, 1, 3] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(nan), str(tmp_path / "nan.mha"))
    for name, message in (("pitch.mha", "the header's detector pixel spacing (col, row)"),
                          ("pitch.nii.gz", "the header's detector pixel spacing (col, row)"),
                          ("far.mha", "mm off the central ray, and with that detector offset: the detector covers"),
                          ("flipped.mha", "the header's direction (-1 0 0; 0 1 0; 0 0 1) is not the identity"),
                          ("counts.mha", "hold integers up to 10000, raw detector counts"),
                          ("nan.mha", "contain 1 NaN or Inf value in 1 of")):  # fmt: skip
        capsys.readouterr()
        out = tmp_path / f"rec_{name}"
        assert main(reconstruct_args(simulated, out, "--projections", str(tmp_path / name))) == 2
        err = capsys.readouterr().err
        assert name in err and message in err and not out.exists(), err
    assert "(the first: view 2, row 1, column 3)" in err
    (tmp_path / "p.txt").write_text("1 2 3")
    capsys.readouterr()
    assert main(reconstruct_args(simulated, tmp_path / "bad", "--projections", str(tmp_path / "p.txt"))) == 2
    assert "p.txt" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_projection_stacks_as_multi_page_tiff(simulated, tmp_path, capsys):
    """A multi-page TIFF (page = view, page row = detector row, page column = detector column, as tifffile writes
    a (views, rows, cols) array) reads as the .npy's array through the same reader, on a detector of more columns
    than rows with a marker in one corner (a transposition would fail), and fbp of it is the .npy's FBP; a TIFF of
    raw integer counts is refused as the other formats' are; a TIFF is no volume (simulate --volume)."""
    import tifffile

    from recon.scan_files import load_projections

    proj = np.load(simulated / "projections.npy")
    proj[0, 0, :3] = [1.0, 2.0, 3.0]  # first view, first row, first columns
    assert proj.shape[1] != proj.shape[2]
    tifffile.imwrite(tmp_path / "p.tif", proj)
    tifffile.imwrite(tmp_path / "counts.tiff", (10000 * np.exp(-proj)).astype(np.uint16))
    np.save(tmp_path / "p.npy", proj)
    np.testing.assert_array_equal(load_projections(tmp_path / "p.tif"), proj)
    geom = str(simulated / "geometry.json")
    for name in ("p.tif", "p.npy"):
        assert main(["fbp", "--projections", str(tmp_path / name), "--geometry", geom, "--out", str(tmp_path / f"{name}.nii.gz")]) == 0
    np.testing.assert_array_equal(nib.load(str(tmp_path / "p.tif.nii.gz")).get_fdata(), nib.load(str(tmp_path / "p.npy.nii.gz")).get_fdata())
    capsys.readouterr()
    assert main(["fbp", "--projections", str(tmp_path / "counts.tiff"), "--geometry", geom, "--out", str(tmp_path / "c.nii.gz")]) == 2
    assert "counts.tiff hold integers up to 10000, raw detector counts" in capsys.readouterr().err
    assert main(["simulate", "--volume", str(tmp_path / "p.tif"), "--geometry", "parallel", "--views", "4", "--out", str(tmp_path / "s")]) == 2
    assert "p.tif: not a volume file" in capsys.readouterr().err and not (tmp_path / "c.nii.gz").exists()


def test_projection_shape_and_nan_errors_say_where(simulated, tmp_path, capsys):
    """A NIfTI stack saved as (views, rows, cols) along (x, y, z) is named with the image's own shape and the layout
    to save; NaN projections are named with their count and the first one's view, row and column."""
    proj = np.load(simulated / "projections.npy")
    geometry = str(simulated / "geometry.json")
    nib.save(nib.Nifti1Image(proj, np.eye(4)), str(tmp_path / "views_first.nii.gz"))  # x = view: the wrong way round
    assert main(["fbp", "--projections", str(tmp_path / "views_first.nii.gz"), "--geometry", geometry, "--out", str(tmp_path / "o.nii.gz")]) == 2
    err = capsys.readouterr().err
    assert f"(the image's {proj.shape} voxels read as (views, rows, cols))" in err, err
    assert "save it with x the column, y the row and z the view" in err and not (tmp_path / "o.nii.gz").exists()
    bad = proj.copy()
    bad[3, 1, 2], bad[5, 0, 0] = np.nan, np.inf
    np.save(tmp_path / "nan.npy", bad)
    assert main(["fbp", "--projections", str(tmp_path / "nan.npy"), "--geometry", geometry, "--out", str(tmp_path / "o.nii.gz")]) == 2
    assert "contain 2 NaN or Inf values in 2 of 10 views (the first: view 3, row 1, column 2)" in capsys.readouterr().err


def test_a_folder_of_one_tiff_per_view_is_refused_with_the_line_that_stacks_it(simulated, tmp_path, capsys, monkeypatch):
    """Micro-CT scanners export one TIFF per view: given the folder as --projections (or --flat), the refusal names
    its TIFF files, first and last, and the tifffile line that writes them as one multi-page TIFF; that line, run as
    printed for a folder whose name holds a quote and ``[1]``, stacks the files in name order, which read back as the
    scan's (views, rows, cols) array."""
    import glob

    import tifffile

    from recon.scan_files import load_projections

    proj = np.load(simulated / "projections.npy")
    views = tmp_path / "bob's views [1]"  # a quote and a glob class in the name: the printed line takes them literally
    views.mkdir()
    for i, view in enumerate(proj):
        tifffile.imwrite(views / f"proj_{i:04d}.{'TIF' if i % 2 else 'tif'}", view)  # a Windows export's .TIF too
    (views / "notes.txt").write_text("scanner log")
    (tmp_path / "bob's views 1").mkdir()  # what '[1]' matches as a glob class: another scan's views
    tifffile.imwrite(tmp_path / "bob's views 1" / "proj_0000.tif", proj[0] + 1)
    geometry = str(simulated / "geometry.json")
    for flags in (["--projections", str(views)], ["--projections", str(simulated / "projections.npy"), "--flat", str(views)]):
        assert main(["fbp", *flags, "--geometry", geometry, "--out", str(tmp_path / "o.nii.gz")]) == 2
        err = capsys.readouterr().err
        assert f"{views} is a folder, not a file" in err, err
        assert f"it holds {len(proj)} TIFF files (proj_0000.tif ... proj_{len(proj) - 1:04d}.TIF)" in err, err
        assert "zero-padded: 0009 before 0010" in err and not (tmp_path / "o.nii.gz").exists()
    line = err[err.index("tifffile.imwrite('stack.tif'"):err.index(", once their names")]  # the line as printed, run
    monkeypatch.chdir(tmp_path)
    exec(line, {"tifffile": tifffile, "numpy": np, "glob": glob})
    np.testing.assert_array_equal(load_projections(tmp_path / "stack.tif"), proj)
    for i, f in enumerate(sorted(views.glob("proj_*"), key=lambda f: int(f.stem[5:]))):  # unpadded numbers: 1, 2, ..., 10
        f.rename(views / f"p{i + 1}.tif")
    assert main(["fbp", "--projections", str(views), "--geometry", geometry, "--out", str(tmp_path / "o.nii.gz")]) == 2
    err = capsys.readouterr().err
    assert f"(p1.tif ... p{len(proj)}.tif)" in err and "they do not (p10.tif sorts before p2.tif); zero-pad" in err, err
    from_zero = tmp_path / "from_zero"  # numbered from 0: alphabetical and numeric order agree on q0 and q1, part at q10 / q2
    from_zero.mkdir()
    for i in range(12):
        tifffile.imwrite(from_zero / f"q{i}.tif", proj[0])
    assert main(["fbp", "--projections", str(from_zero), "--geometry", geometry, "--out", str(tmp_path / "o.nii.gz")]) == 2
    err = capsys.readouterr().err
    assert "(q0.tif ... q11.tif)" in err and "they do not (q10.tif sorts before q2.tif); zero-pad" in err, err


def test_a_stack_saved_views_last_is_refused_with_the_transpose_that_fixes_it(simulated, tmp_path, capsys):
    """A .npy or multi-page TIFF saved (rows, cols, views) is refused with the transpose that gives (views, rows,
    cols), and that transpose of the file's array is the scan; a TIFF is named by its own page order, not as an
    ITK image's reversed (x, y, z) voxels. A shape that fits no order of the geometry's gets no transpose."""
    import tifffile

    proj = np.load(simulated / "projections.npy")  # (10, 12, 16): every axis a different size
    views_last = np.ascontiguousarray(proj.transpose(1, 2, 0))
    np.save(tmp_path / "last.npy", views_last)
    tifffile.imwrite(tmp_path / "last.tif", views_last, photometric="minisblack")
    np.save(tmp_path / "short.npy", views_last[:, :, :-1])
    geometry = str(simulated / "geometry.json")
    for name in ("last.npy", "last.tif"):
        assert main(["fbp", "--projections", str(tmp_path / name), "--geometry", geometry, "--out", str(tmp_path / "o.nii.gz")]) == 2
        err = capsys.readouterr().err
        assert f"have shape {views_last.shape} but the geometry expects (views, rows, cols) = {proj.shape}" in err, err
        assert "numpy.transpose(stack, (2, 0, 1)) gives (views, rows, cols)" in err and "voxels read as" not in err, err
        assert not (tmp_path / "o.nii.gz").exists()
    np.testing.assert_array_equal(np.transpose(views_last, (2, 0, 1)), proj)
    assert main(["fbp", "--projections", str(tmp_path / "short.npy"), "--geometry", geometry, "--out", str(tmp_path / "o.nii.gz")]) == 2
    assert "numpy.transpose" not in capsys.readouterr().err


def test_a_stack_shape_is_read_from_its_header(simulated, tmp_path, monkeypatch):
    """``geometry --projections`` learns the stack's views and detector from the file's header, as the full reader
    would read them (.npy, multi-page TIFF, one planar TIFF page, NIfTI, MetaImage), without reading the pixels (a
    stack of tens of gigabytes read whole to learn three numbers); a .npy shorter than its header says is named as
    truncated."""
    import SimpleITK as sitk
    import tifffile

    import recon.scan_files as scan_files
    from recon.geometry_command import stack_detector

    proj = np.load(simulated / "projections.npy")
    assert len(set(proj.shape)) == 3
    np.save(tmp_path / "p.npy", proj)
    tifffile.imwrite(tmp_path / "p.tif", proj)
    tifffile.imwrite(tmp_path / "planar.tiff", proj[:3], photometric="rgb", planarconfig="separate")  # one page, 3 samples
    nib.save(nib.Nifti1Image(proj.transpose(2, 1, 0), np.diag([0.5, 0.7, 1.0, 1.0])), str(tmp_path / "p.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(proj), str(tmp_path / "p.mha"))
    names = ["p.npy", "p.tif", "planar.tiff", "p.nii.gz", "p.mha"]
    expected = {n: scan_files.read_detector_images(tmp_path / n)[0].shape for n in names}
    assert expected["planar.tiff"] == (3, *proj.shape[1:]) and {expected[n] for n in names if n != "planar.tiff"} == {proj.shape}

    def no_pixels(*args, **kwargs):
        raise AssertionError("the pixels were read")

    monkeypatch.setattr(scan_files, "read_detector_images", no_pixels)
    monkeypatch.setattr(np, "load", no_pixels)
    monkeypatch.setattr(tifffile, "imread", no_pixels)
    for name in names:
        views, detector, _ = stack_detector(str(tmp_path / name), (1.0, 1.0))
        assert (views, *detector) == expected[name], name
    (tmp_path / "short.npy").write_bytes((tmp_path / "p.npy").read_bytes()[:-4])
    with pytest.raises(ValueError, match=r"projections .*short.npy: the file is truncated \(\d+ bytes, its header's "
                                         rf"\({proj.shape[0]}, {proj.shape[1]}, {proj.shape[2]}\) array of float32 needs \d+\)"):
        stack_detector(str(tmp_path / "short.npy"), None)
