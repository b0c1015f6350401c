"""NIfTI files written and read: headers ITK reads back, sheared affines and their qform, misnamed .nii / .nii.gz."""

from pathlib import Path

import pytest


def _oblique_affine() -> "np.ndarray":
    """A rotated, anisotropic, translated voxel-to-RAS matrix (spacing 0.7, 1.1, 2.5 mm)."""
    import numpy as np

    c, s = np.cos(0.3), np.sin(0.3)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.7, 1.1, 2.5])
    affine[:3, 3] = [-12.0, 30.5, 7.25]
    return affine


@pytest.mark.parametrize("name", ["vol.nii.gz", "vol.nii"])
def test_save_nifti_atomic_header_read_back_by_itk(tmp_path, name):
    """The written file places the volume where the affine says, in mm, for ITK (a peer reader) as for nibabel."""
    import nibabel as nib
    import numpy as np
    import SimpleITK as sitk

    from medgmae.files import save_nifti_atomic

    affine, data = _oblique_affine(), np.arange(5 * 4 * 3, dtype=np.float64).reshape(5, 4, 3)
    path = save_nifti_atomic(data, affine, tmp_path / name, np.int16)
    img = nib.load(str(path))
    assert img.header.get_xyzt_units()[0] == "mm"
    assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
    np.testing.assert_allclose(img.get_qform(), affine, atol=1e-5)
    assert img.get_data_dtype() == np.int16
    np.testing.assert_array_equal(np.asarray(img.dataobj), data.astype(np.int16))
    itk = sitk.ReadImage(str(path))  # ITK works in LPS: x and y of RAS change sign
    lps = np.diag([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(itk.GetSpacing(), [0.7, 1.1, 2.5], atol=1e-5)
    np.testing.assert_allclose(itk.GetOrigin(), lps @ affine[:3, 3], atol=1e-4)
    direction = np.asarray(itk.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(direction, lps @ affine[:3, :3] / [0.7, 1.1, 2.5], atol=1e-5)
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_a_sheared_affine_is_written_as_the_sform_alone_not_beside_its_nearest_qform(tmp_path):
    """A sheared affine (a gantry-tilted scan's) has no exact qform: the sform holds it (code 1, nibabel reads it
    back) and the qform is left unknown (code 0), not nibabel's nearest rotation, which here places the far corner
    ~76 mm off and which ITK would read in the sform's stead. ITK then refuses the file rather than place it there.
    An orthogonal affine written beside it keeps both forms, code 1, equal."""
    import nibabel as nib
    import numpy as np
    import SimpleITK as sitk

    from medgmae.files import save_nifti_atomic

    tilt = np.tan(np.radians(20.0))  # each slice 0.625 mm on and shifted along y: a 20 degree gantry tilt
    sheared = np.array([[-0.7, 0, 0, 180], [0, -0.7, 0.625 * tilt, 200], [0, 0, 0.625, -300], [0, 0, 0, 1.0]])
    shape = (512, 512, 300)
    path = save_nifti_atomic(np.zeros(shape, np.uint8), sheared, tmp_path / "tilt.nii.gz")
    img = nib.load(str(path))
    assert int(img.header["qform_code"]) == 0 and int(img.header["sform_code"]) == 1
    np.testing.assert_allclose(img.get_sform(), sheared, atol=1e-5)
    np.testing.assert_allclose(img.affine, sheared, atol=1e-5)
    nearest = nib.Nifti1Header()  # what a qform could state: nibabel's nearest rotation, independently of the writer
    nearest.set_qform(sheared, code=1)
    corner = np.array([511, 511, 299, 1.0])
    assert np.linalg.norm((sheared - nearest.get_qform()) @ corner) > 70.0  # the misplacement that is not written
    with pytest.raises(RuntimeError, match="orthonormal"):  # refused, not read in the nearest frame
        sitk.ReadImage(str(path))
    ortho = save_nifti_atomic(np.zeros((5, 4, 3), np.float32), _oblique_affine(), tmp_path / "ortho.nii.gz")
    img = nib.load(str(ortho))
    assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
    np.testing.assert_allclose(img.get_qform(), img.get_sform(), atol=1e-5)
    np.testing.assert_allclose(img.get_sform(), _oblique_affine(), atol=1e-5)
    np.testing.assert_allclose(sitk.ReadImage(str(ortho)).GetSpacing(), [0.7, 1.1, 2.5], atol=1e-5)


def test_a_shear_along_the_slices_of_a_thin_grid_drops_the_qform(tmp_path):
    """A shear carried by the slice axis alone (y shifted 2e-5 mm per slice over 400 slices of a 2x2 grid) shows
    only at the far slices: nibabel's nearest qform, computed here in float64 at the grid's 8 corners, misplaces
    one of them by more than the 1 um tolerance, so the qform is left unknown (code 0). Corners of the first two
    axes alone (slice 0) stay within it."""
    import itertools

    import nibabel as nib
    import numpy as np

    from medgmae.files import FRAME_TOLERANCE_MM, save_nifti_atomic

    shape, sheared = (2, 2, 400), np.eye(4)
    sheared[1, 2] = 2e-5
    nearest = nib.Nifti1Header()
    nearest.set_qform(sheared, code=1)
    error = sheared - nearest.get_qform().astype(np.float64)
    offsets = {c: np.linalg.norm(error[:3] @ [*c, 1.0]) for c in itertools.product(*((0, n - 1) for n in shape))}
    assert max(offsets.values()) > FRAME_TOLERANCE_MM >= max(v for c, v in offsets.items() if c[2] == 0)
    img = nib.load(str(save_nifti_atomic(np.zeros(shape, np.float32), sheared, tmp_path / "thin.nii.gz")))
    assert int(img.header["qform_code"]) == 0 and int(img.header["sform_code"]) == 1


def test_the_frames_of_a_sheared_affine_are_warned_about_in_an_input_not_in_the_toolkits_own_output(tmp_path, caplog):
    """A sheared sform has no exact qform. A user's file stating one and a qform (the nearest frame) is warned about
    once, with advice that can work (resample; "make the two agree" cannot); a file the toolkit wrote from it is
    read without a warning (each later command warned again about the toolkit's own outputs), while a file whose
    qform is merely another frame still gets the old advice."""
    import nibabel as nib
    import numpy as np

    from medgmae.data import read_volume
    from medgmae.files import SHEARED_SFORM_NOTE, save_nifti_atomic

    sheared = _oblique_affine()
    sheared[:3, 2] += [0.0, 2.5 * np.tan(np.radians(20.0)), 0.0]
    user = nib.Nifti1Image(np.zeros((5, 4, 3), np.float32), sheared)
    user.set_qform(sheared, code=1)  # both frames stated, as scanners' converters write them: the qform the nearest
    nib.save(user, str(tmp_path / "input.nii.gz"))
    shifted = nib.Nifti1Image(np.zeros((5, 4, 3), np.float32), _oblique_affine())
    shifted.set_qform(_oblique_affine() + _shift(9.0), code=1)  # another frame, 9 mm off
    nib.save(shifted, str(tmp_path / "shifted.nii.gz"))
    save_nifti_atomic(np.zeros((5, 4, 3), np.float32), sheared, tmp_path / "output.nii.gz")
    with caplog.at_level("WARNING", logger="medgmae.data.reader"):
        for name in ("input", "output", "shifted"):
            np.testing.assert_allclose(read_volume(tmp_path / f"{name}.nii.gz").affine, _oblique_affine() if name == "shifted" else sheared, atol=1e-5)
    said = {r.getMessage().split(":")[0]: r.getMessage() for r in caplog.records}
    assert sorted(said) == [str(tmp_path / "input.nii.gz"), str(tmp_path / "shifted.nii.gz")], said
    # its volumes overlay in a viewer (they state the same qform): what is off is a world position computed from it
    assert "its sform is sheared (e.g. a gantry-tilted scan not resampled) and its qform is the nearest unsheared frame" in said[str(tmp_path / "input.nii.gz")]
    assert "will not overlay" not in said[str(tmp_path / "input.nii.gz")]
    assert "(Gaussian centres, PLY files) follow the sform" in said[str(tmp_path / "input.nii.gz")]
    assert "img.set_qform(img.get_sform())" in said[str(tmp_path / "shifted.nii.gz")]
    assert "state the sform only (qform code 0)" in said[str(tmp_path / "input.nii.gz")]
    # an earlier release's output (the nearest qform beside the sform, marked): read without a warning too
    earlier = nib.Nifti1Image(np.zeros((5, 4, 3), np.float32), sheared)
    earlier.set_qform(sheared, code=1)
    earlier.set_sform(sheared, code=1)
    earlier.header["descrip"] = SHEARED_SFORM_NOTE
    nib.save(earlier, str(tmp_path / "earlier.nii.gz"))
    caplog.clear()
    with caplog.at_level("WARNING", logger="medgmae.data.reader"):
        read_volume(tmp_path / "earlier.nii.gz")
    assert not caplog.records, caplog.text
    # that file edited with its header kept (the mark with it), the sform moved: warned about again
    edited = nib.load(str(tmp_path / "earlier.nii.gz"))
    edited.set_sform(sheared + _shift(20.0), code=1)
    nib.save(edited, str(tmp_path / "edited.nii.gz"))
    assert edited.header["descrip"].tobytes().startswith(b"sform sheared")
    with caplog.at_level("WARNING", logger="medgmae.data.reader"):
        read_volume(tmp_path / "edited.nii.gz")
    assert "edited.nii.gz: its qform and sform place voxels up to" in caplog.text
    assert "the sform is sheared (e.g. a gantry-tilted scan not resampled), which no qform can state: resample" in caplog.text
    # a singular sform (no frame a qform can state) beside a qform: opened with the warning, not an error
    flat = nib.Nifti1Image(np.zeros((5, 4, 3), np.float32), np.eye(4))
    flat.set_qform(np.eye(4), code=1)
    flat.set_sform(np.diag([1.0, 1.0, 0.0, 1.0]), code=1)
    nib.save(flat, str(tmp_path / "flat.nii.gz"))
    from medgmae.data.reader import load_nifti  # the 2D and stack readers open it too (the 3D one refuses it later)

    with caplog.at_level("WARNING", logger="medgmae.data.reader"):
        assert load_nifti(tmp_path / "flat.nii.gz").shape == (5, 4, 3)
    assert "flat.nii.gz: its qform and sform place voxels up to" in caplog.text


def _shift(mm: float):
    """A 4 x 4 matrix adding ``mm`` to an affine's x translation."""
    import numpy as np

    out = np.zeros((4, 4))
    out[0, 3] = mm
    return out


def test_a_gzip_file_named_nii_is_named_so(tmp_path):
    """A .nii.gz renamed .nii is refused with the rename to make (nibabel could not tell its type)."""
    import gzip
    import shutil

    import numpy as np

    from medgmae.data import read_volume
    from medgmae.files import save_nifti_atomic

    save_nifti_atomic(np.zeros((5, 4, 3), np.float32), np.eye(4), tmp_path / "ct.nii")
    with open(tmp_path / "ct.nii", "rb") as f, gzip.open(tmp_path / "renamed.nii", "wb") as g:
        shutil.copyfileobj(f, g)
    with pytest.raises(ValueError, match=r"renamed\.nii: the file is gzip-compressed but named \.nii: rename it to \.nii\.gz"):
        read_volume(tmp_path / "renamed.nii")
    assert read_volume(tmp_path / "ct.nii").array.shape == (5, 4, 3)


@pytest.mark.parametrize("nifti2", [False, True])
def test_a_plain_nifti_named_nii_gz_is_read_as_the_file_it_is(tmp_path, nifti2, monkeypatch):
    """A .nii renamed .nii.gz (not gzip-compressed; ITK and 3D Slicer read it) is read as the same volume, by the 3D
    reader, its header-only grid and the 2D reader: nibabel refused it ("is not a gzip file")."""
    import nibabel as nib
    import numpy as np

    from medgmae.data import read_volume
    from medgmae.data.reader import volume_grid
    from medgmae.twod.images import read_image

    array = np.arange(5 * 4 * 3, dtype=np.float32).reshape(5, 4, 3)
    affine = np.diag([0.7, 0.8, 2.5, 1.0])
    affine[:3, 3] = [10.0, -20.0, 30.0]
    klass = nib.Nifti2Image if nifti2 else nib.Nifti1Image
    nib.save(klass(array, affine), str(tmp_path / "ct.nii"))
    (tmp_path / "ct.nii").rename(tmp_path / "ct.nii.gz")
    assert (tmp_path / "ct.nii.gz").read_bytes()[:2] != b"\x1f\x8b"  # not gzip: as a misnamed file is
    volume = read_volume(tmp_path / "ct.nii.gz")
    np.testing.assert_array_equal(volume.array, array)
    np.testing.assert_allclose(volume.affine, affine)
    import io
    from pathlib import Path

    import medgmae.data.nifti_header as reader_module  # where load_nifti opens the file

    reads = []

    class Counting(io.BufferedReader):
        def read(self, *n):
            out = super().read(*n)
            reads.append(len(out))
            return out

    monkeypatch.setattr(reader_module, "open", lambda p, mode="r": Counting(io.FileIO(p, "rb")), raising=False)
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail(f"{self} read whole"))
    shape, grid = volume_grid(tmp_path / "ct.nii.gz")  # the header alone: no voxel read (it read the whole file)
    monkeypatch.undo()
    assert shape == (5, 4, 3) and 0 < sum(reads) < 600, reads
    np.testing.assert_allclose(grid, affine)
    nib.save(klass(array[:, :, :1], affine), str(tmp_path / "slice.nii"))
    (tmp_path / "slice.nii").rename(tmp_path / "slice.NII.GZ")
    assert read_image(tmp_path / "slice.NII.GZ").shape[0] == 1  # one channel: the NIfTI slice, read


def test_a_plain_nifti_named_nii_gz_leaves_no_file_open_and_its_proxies_outlive_the_image(tmp_path, monkeypatch):
    """The file a misnamed plain NIfTI is read from is closed as soon as it is opened (its bytes memory-mapped, as
    nibabel maps a plain ``.nii``), yet the image reads its voxels lazily (the image in millimetres made from a file
    stating metres included), and a proxy derived from it (``dataobj.reshape``) reads them after the image is freed:
    the stream the image read through was closed with the image, and such a proxy failed ("seek of closed file")."""
    import gc

    import nibabel as nib
    import numpy as np

    import medgmae.data.nifti_header as reader_module
    from medgmae.data import read_volume
    from medgmae.data.nifti_header import load_nifti

    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    metres = nib.Nifti1Image(array, np.diag([0.001, 0.001, 0.002, 1.0]))
    metres.header.set_xyzt_units("meter")
    nib.save(metres, str(tmp_path / "ct.nii"))
    (tmp_path / "ct.nii").rename(tmp_path / "ct.nii.gz")
    opened = []
    monkeypatch.setattr(reader_module, "open", lambda *a, **k: opened.append(open(*a, **k)) or opened[-1], raising=False)
    image = load_nifti(tmp_path / "ct.nii.gz")
    assert image.header.get_zooms() == (1.0, 1.0, 2.0) and all(stream.closed for stream in opened)
    np.testing.assert_array_equal(np.asarray(image.dataobj), array)  # read lazily, through the map
    reshaped = image.dataobj.reshape((4, 3, 2))
    del image
    gc.collect()
    np.testing.assert_array_equal(np.asarray(reshaped), array.reshape((4, 3, 2), order="F"))
    np.testing.assert_array_equal(read_volume(tmp_path / "ct.nii.gz").array, array)
    assert load_nifti(tmp_path / "ct.nii.gz").shape == (2, 3, 4)  # the header alone
    assert len(opened) >= 5 and all(stream.closed for stream in opened)  # the gzip checks' own included


def test_save_nifti_atomic_refuses_a_bad_affine_and_writes_nothing(tmp_path):
    import numpy as np

    from medgmae.files import save_nifti_atomic

    bad = np.eye(4)
    bad[0, 0] = np.nan
    for affine in (np.eye(3), bad):
        with pytest.raises(ValueError, match="vol.nii.gz"):
            save_nifti_atomic(np.zeros((2, 2, 2)), affine, tmp_path / "vol.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_a_misnamed_plain_nifti_that_cannot_be_mapped_is_read_whole(tmp_path, monkeypatch):
    """A file system that maps no file (``mmap`` raising): the misnamed ``.nii.gz`` is read as the plain NIfTI it is."""
    import mmap

    import nibabel as nib
    import numpy as np

    from medgmae.data import read_volume

    array = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    nib.save(nib.Nifti1Image(array, np.diag([0.5, 0.6, 2.0, 1.0])), str(tmp_path / "ct.nii"))
    (tmp_path / "ct.nii").rename(tmp_path / "ct.nii.gz")

    def refused(*args, **kwargs):
        raise OSError(19, "No such device")

    monkeypatch.setattr(mmap, "mmap", refused)
    np.testing.assert_array_equal(read_volume(tmp_path / "ct.nii.gz").array, array)
