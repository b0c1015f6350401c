"""2D GMAE's image reading (PNG, JPEG, DICOM frames, masks, integer scales) and its command line end to end (what the
2D datasets say about the folders they read: test_twod_data_messages.py)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from medgmae.twod import layering as L
from medgmae.twod.cli import main
from medgmae.twod.images import read_image, read_image_source, read_mask, to_model_input

from gmae2d_helpers import tiny_gmae2d


def _write_dicom(path, hu, rgb=False, iop=None, spacing=None):
    from pydicom.uid import CTImageStorage

    from tests.data_helpers import pydicom_dataset

    ds = pydicom_dataset(CTImageStorage)
    ds.Modality = "CT"
    ds.Rows, ds.Columns = hu.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.PixelData = (hu + 1024).astype(np.int16).tobytes()
    if iop is not None:
        ds.ImageOrientationPatient = [float(v) for v in iop]
    if spacing is not None:  # (between rows, between columns) in mm
        ds.PixelSpacing = [float(v) for v in spacing]
    ds.save_as(path, enforce_file_format=True)


@pytest.mark.parametrize("iop", [(1, 0, 0, 0, 1, 0), (-1, 0, 0, 0, 1, 0), (-1, 0, 0, 0, -1, 0), (0, 1, 0, 1, 0, 0),
                                 (1, 0, 0, 0, 0, -1), (0, -1, 0, 0, 0, 1)])  # fmt: skip
def test_a_dicom_frame_is_shown_as_the_same_slice_in_nifti(tmp_path, iop):
    """A DICOM frame and a NIfTI of the same pixels in the same place (its affine built from the frame's
    ImageOrientationPatient, LPS -> RAS) read as the same picture: the NIfTI path's radiological view (nibabel's
    reorientation) is the oracle, for axial, flipped, transposed, coronal and sagittal frames of anisotropic pixels."""
    hu = np.zeros((5, 7), np.float32) - 1000
    hu[0, :3], hu[1:4, 0] = 500, 200  # an asymmetric mark: no flip or transpose maps it onto itself
    _write_dicom(tmp_path / "f.dcm", hu, iop=iop, spacing=(0.7, 1.3))  # anisotropic pixels
    row, col = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    ras = np.diag([-1.0, -1.0, 1.0])
    affine = np.eye(4)  # the column index steps along the row direction by the column spacing, and vice versa
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = 1.3 * ras @ row, 0.7 * ras @ col, 2.5 * ras @ np.cross(row, col)
    affine[:3, 3] = [12.0, -7.0, 30.0]
    nib.save(nib.Nifti1Image(hu.T[:, :, None], affine), str(tmp_path / "f.nii.gz"))  # (i, j) = (column, row)
    window = (-1000.0, 600.0)
    np.testing.assert_array_equal(read_image(tmp_path / "f.dcm", window=window), read_image(tmp_path / "f.nii.gz", window=window))


def test_a_slice_beyond_a_single_frame_or_slice_is_refused(tmp_path):
    """``--slice 40`` of a single-frame DICOM or a one-slice NIfTI showed slice 0 without a word (a volume's
    slice out of range was refused): refused alike, slice 0 (or none given) read as before."""
    hu = np.zeros((5, 7), np.float32)
    _write_dicom(tmp_path / "f.dcm", hu)
    nib.save(nib.Nifti1Image(hu[:, :, None], np.eye(4)), str(tmp_path / "f.nii.gz"))
    for name, what in (("f.dcm", "frame 40 is outside the file's 1 frame"), ("f.nii.gz", "slice 40 is outside the image's 1 slice")):
        with pytest.raises(ValueError, match=what):
            read_image(tmp_path / name, slice_index=40)
        np.testing.assert_array_equal(read_image(tmp_path / name, slice_index=0), read_image(tmp_path / name))


def test_a_one_slice_reference_is_the_images_slice_whatever_the_index(tmp_path):
    """``--slice 2 --reference mask.dcm`` of a volume with a single-frame mask of that slice was read before the
    single-frame refusal; it still is (the mask has no other slice), and a multi-slice mask keeps to the index."""
    from medgmae.twod.images import read_reference

    vol = np.zeros((7, 5, 4), np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / "vol.nii.gz"))
    image = read_image(tmp_path / "vol.nii.gz", slice_index=2)
    mask = np.zeros((5, 7), np.float32)
    mask[1:3, 2:5] = 1  # rows x columns as the image shows them
    _write_dicom(tmp_path / "mask.dcm", mask - 1024)  # stored 0 / 1 under the CT's intercept
    got = read_reference(tmp_path / "mask.dcm", tmp_path / "vol.nii.gz", image.shape[-2:], slice_index=2)
    assert got.shape == image.shape[-2:] and got.sum() == 6
    with pytest.raises(ValueError, match="slice 9 is outside"):
        read_reference(tmp_path / "vol.nii.gz", tmp_path / "vol.nii.gz", image.shape[-2:], slice_index=9)
    labels = np.zeros((7, 5, 4), np.float32)
    labels[2:4, 1:3, 2], labels[0, 0, 0] = 1, np.nan  # a mask's stored NaN is background, as read_mask reads it
    nib.save(nib.Nifti1Image(labels, np.eye(4)), str(tmp_path / "labels.nii.gz"))
    assert read_reference(tmp_path / "labels.nii.gz", tmp_path / "vol.nii.gz", image.shape[-2:], slice_index=2).sum() == 4


def test_read_image_formats(tmp_path):
    rgb = (np.arange(5 * 7 * 3).reshape(5, 7, 3) * 2).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_allclose(read_image(tmp_path / "rgb.png"), rgb.transpose(2, 0, 1) / 255.0, atol=1e-6)
    grey16 = (np.arange(20).reshape(4, 5) * 3000).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "grey16.png")
    np.testing.assert_allclose(read_image(tmp_path / "grey16.png")[0], grey16 / 65535.0, atol=1e-6)
    Image.fromarray(rgb).save(tmp_path / "rgb.jpg", quality=100)
    assert read_image(tmp_path / "rgb.jpg").shape == (3, 5, 7)
    # NIfTI volume (RAS): slice k shown radiologically, windowed
    vol = np.zeros((6, 5, 3), np.float32)
    vol[5, 4, 1] = 100.0  # patient's far right, most anterior voxel of slice 1
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "vol.nii.gz")
    img = read_image(tmp_path / "vol.nii.gz", slice_index=1, window=(0, 100))
    assert img.shape == (1, 5, 6) and img[0, 0, 0] == 1.0 and img.sum() == 1.0
    # DICOM: rescale intercept then the file's window (-160, 240)
    hu = np.array([[-1000, -160, 40], [240, 500, 0]], np.float32)
    _write_dicom(tmp_path / "ct.dcm", hu)
    np.testing.assert_allclose(read_image(tmp_path / "ct.dcm")[0], np.clip((hu + 160) / 400, 0, 1), atol=1e-6)
    # which frame and window were used: the file's centre 40 / width 400, its only frame
    source = read_image_source(tmp_path / "ct.dcm")[1]
    assert source == {"slice": {"axis": "frame", "index": 0, "count": 1}, "window": [-160.0, 240.0],
                      "window_source": "dicom file", "stored_range": None}  # fmt: skip
    assert read_image_source(tmp_path / "rgb.png")[1] == {"slice": None, "window": None, "window_source": None,
                                                          "stored_range": None}  # fmt: skip


def test_read_mask_uses_the_stored_values_not_the_rescale(tmp_path):
    """A mask written with a CT's header (RescaleIntercept or scl_inter -1024) stores 0 on its background; after
    the rescale that is -1024, which must not read as foreground."""
    import pydicom

    mask = np.zeros((6, 8), np.float32)
    mask[1:4, 2:7] = 1
    mask[5, 0] = 2  # a second label
    _write_dicom(tmp_path / "mask.dcm", mask - 1024)  # stored values: the mask; RescaleIntercept -1024
    ds = pydicom.dcmread(tmp_path / "mask.dcm")
    assert float(ds.RescaleIntercept) == -1024 and np.array_equal(ds.pixel_array, mask)  # really such a file
    assert (read_image(tmp_path / "mask.dcm", window=(-2000, 0)) > 0).all()  # as an image: -1024 HU everywhere
    np.testing.assert_array_equal(read_mask(tmp_path / "mask.dcm"), mask > 0)
    vol = np.zeros((5, 4, 3), np.int16)
    vol[1:3, 0:2, 1] = 1
    img = nib.Nifti1Image(vol, np.eye(4))
    img.header.set_slope_inter(1.0, -1024.0)
    nib.save(img, tmp_path / "mask.nii.gz")
    assert nib.load(tmp_path / "mask.nii.gz").dataobj.inter == -1024  # the file keeps the intercept
    expected = vol[:, :, 1][::-1, ::-1].T > 0  # the middle slice, shown radiologically (RAS identity affine)
    np.testing.assert_array_equal(read_mask(tmp_path / "mask.nii.gz"), expected)
    assert expected.sum() == 4


def test_read_image_integer_scale_is_the_file_type_maximum(tmp_path):
    """8-bit files are divided by 255 and 16-bit files by 65535, whatever the image's own range: a dark 16-bit
    image is neither stretched to its maximum nor taken for 8-bit because its values stay below 256."""
    dark = np.array([[0, 1, 100], [255, 128, 7]], np.uint16)
    bright = np.array([[0, 1000, 30000], [65535, 12345, 257]], np.uint16)
    for name, values in (("dark", dark), ("bright", bright)):
        for ext in ("png", "tif"):
            Image.fromarray(values).save(tmp_path / f"{name}.{ext}")
            assert Image.open(tmp_path / f"{name}.{ext}").mode.startswith("I;16")  # really a 16-bit file
            np.testing.assert_array_equal(read_image(tmp_path / f"{name}.{ext}")[0], (values / 65535.0).astype(np.float32))
    # 32-bit integer images (PIL mode "I") are read on the same 16-bit scale
    Image.fromarray(dark.astype(np.int32)).save(tmp_path / "dark32.tif")
    assert Image.open(tmp_path / "dark32.tif").mode == "I"
    np.testing.assert_array_equal(read_image(tmp_path / "dark32.tif")[0], (dark / 65535.0).astype(np.float32))
    Image.fromarray(np.array([[0, 70000]], np.int32)).save(tmp_path / "wide.tif")
    with pytest.raises(ValueError, match=r"wide\.tif.*outside the 16-bit range"):
        read_image(tmp_path / "wide.tif")
    # the same stored values in an 8-bit file read on the 8-bit scale
    Image.fromarray(dark.astype(np.uint8)).save(tmp_path / "dark8.png")
    np.testing.assert_array_equal(read_image(tmp_path / "dark8.png")[0], (dark / 255.0).astype(np.float32))


def test_read_image_float_tiff_must_be_scaled_to_unit_range(tmp_path):
    """A float TIFF is read as already scaled: one in [0, 1] reads as stored; one holding HU (or 0..255) is refused,
    naming the file and its range, instead of being clipped to a picture of zeros and ones."""
    unit = np.array([[0.0, 0.25], [0.5, 1.0]], np.float32)
    Image.fromarray(unit).save(tmp_path / "unit.tif")
    assert Image.open(tmp_path / "unit.tif").mode == "F"  # really a float file
    np.testing.assert_array_equal(read_image(tmp_path / "unit.tif")[0], unit)
    Image.fromarray(np.array([[-1000.0, 0.0], [40.0, 1500.0]], np.float32)).save(tmp_path / "hu.tif")
    with pytest.raises(ValueError, match=r"hu\.tif.*values in \[-1000, 1500\], outside \[0, 1\]"):
        read_image(tmp_path / "hu.tif")


def test_read_image_refuses_a_multi_page_tiff(tmp_path):
    """A TIFF stack holds several images (z, channels, time): it is refused, naming the file and its page count,
    instead of being read as its first page; a one-page TIFF reads as stored."""
    pages = [Image.fromarray(np.full((4, 5), v, np.uint8)) for v in (10, 100, 200)]
    pages[0].save(tmp_path / "stack.tif", save_all=True, append_images=pages[1:])
    assert Image.open(tmp_path / "stack.tif").n_frames == 3  # really three pages
    with pytest.raises(ValueError, match=r"stack\.tif: 3 pages"):
        read_image(tmp_path / "stack.tif")
    pages[1].save(tmp_path / "one.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "one.tif")[0], np.full((4, 5), 100 / 255.0, np.float32))


def test_read_image_turns_a_photo_upright_by_its_exif_orientation(tmp_path):
    """A camera's JPEG stores its pixels as the sensor saw them and the way to turn them in its EXIF orientation tag;
    the image is read as viewers show it. Tag 6: turn 90 degrees clockwise, so the stored top-left corner shows at
    the top right and 40 x 60 stored pixels show as 60 x 40."""
    stored = np.zeros((40, 60), np.uint8)
    stored[:20, :20] = 255  # the stored top-left corner
    photo = Image.fromarray(stored)
    exif = photo.getexif()
    exif[0x0112] = 6
    photo.save(tmp_path / "photo.jpg", exif=exif, quality=95)
    image = read_image(tmp_path / "photo.jpg")[0]
    assert image.shape == (60, 40)
    assert image[:20, -20:].mean() > 0.9 and image[:20, :20].mean() < 0.1
    photo.save(tmp_path / "plain.jpg", quality=95)  # no tag: as stored
    assert read_image(tmp_path / "plain.jpg")[0][:20, :20].mean() > 0.9


def test_a_compressed_dicom_no_decoder_reads_is_named_with_its_compression(tmp_path):
    """A DICOM file whose pixel data are compressed (JPEG 2000 here) and that no installed decoder reads stops with a
    ValueError naming the file and its compression, as any unreadable image does (it raised pydicom's RuntimeError,
    naming neither, so that a training folder's pre-check stopped on it without saying which file it was)."""
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    _write_dicom(tmp_path / "plain.dcm", np.zeros((8, 8)))
    ds = pydicom.dcmread(tmp_path / "plain.dcm")
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([b"\x00" * 64])  # a fragment that is no JPEG 2000 stream
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "j2k.dcm")
    with pytest.raises(ValueError, match=r"j2k\.dcm: not a readable DICOM image \(pixel data compressed as JPEG 2000") as err:
        read_image(tmp_path / "j2k.dcm")
    assert "\n" not in str(err.value)  # one line


def test_read_image_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match="broken.png"):
        read_image(tmp_path / "broken.png")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="unsupported image type"):
        read_image(tmp_path / "notes.txt")
    nib.save(nib.Nifti1Image(np.full((4, 4), np.nan, np.float32), np.eye(4)), tmp_path / "nan.nii.gz")
    with pytest.raises(ValueError, match="nan.nii.gz.*NaN"):
        read_image(tmp_path / "nan.nii.gz")
    (tmp_path / "bad.dcm").write_bytes(b"\x00" * 200)
    with pytest.raises(ValueError, match="bad.dcm"):
        read_image(tmp_path / "bad.dcm")


def test_to_model_input_channels_and_size():
    rgb = np.random.default_rng(0).random((3, 40, 20), dtype=np.float32)
    grey = to_model_input(rgb, 1, (20, 10))
    assert grey.shape == (1, 1, 20, 10)
    luma = (rgb * np.array([0.299, 0.587, 0.114], np.float32)[:, None, None]).sum(0)
    np.testing.assert_allclose(grey[0, 0].numpy(), luma.reshape(20, 2, 10, 2).mean((1, 3)), atol=1e-5)
    assert to_model_input(rgb[:1], 3, (40, 20)).shape == (1, 3, 40, 20)


@pytest.fixture()
def cli_files(tmp_path):
    model = tiny_gmae2d(1, k=48)
    ckpt = tmp_path / "model.pt"
    torch.save(model.model_checkpoint(), ckpt)
    img = (np.random.default_rng(0).random((40, 40)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "img.png")
    mask = np.zeros((40, 40), np.uint8)
    mask[10:30, 5:25] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    return model, ckpt, tmp_path


def test_cli_layers_segment_edges_end_to_end(cli_files):
    model, ckpt, d = cli_files
    common = ["--checkpoint", str(ckpt), "--image", str(d / "img.png")]
    assert main(["layers", *common, "--out", str(d / "layers"), "--num-layers", "4", "--first-count", "12"]) == 0
    stack = np.asarray(Image.open(d / "layers" / "layer_stack.png"))
    assert stack.shape == (2 + 14 + 160 + 2, 2 + 4 * 162, 3)  # 4 tiles of the image's 40 x 40 enlarged x4, label bands, 2 px gaps
    partial = np.asarray(Image.open(d / "layers" / "partial_renders.png"))
    assert partial.shape[1] == 2 + 4 * 162  # input + K = 12, 24, 48
    layers = json.loads((d / "layers" / "layers.json").read_text(encoding="utf-8"))
    assert layers["partial_render_counts"] == [12, 24, 48]
    assert layers["software"]["packages"]["torch"] == torch.__version__  # what made it, as the training records say

    assert main(["segment", *common, "--out", str(d / "seg"), "--num-layers", "4", "--reference", str(d / "mask.png")]) == 0
    summary = json.loads((d / "seg" / "segment.json").read_text(encoding="utf-8"))
    fg = np.asarray(Image.open(d / "seg" / "foreground.png")) > 0
    ref = np.zeros((40, 40), bool)
    ref[10:30, 5:25] = True  # the mask on the image's own 40 x 40 grid, where the outputs are rendered
    expected_iou = (fg & ref).sum() / max((fg | ref).sum(), 1)
    assert summary["iou"] == pytest.approx(expected_iou, abs=1e-6)
    # the same computation through the API
    x = to_model_input(read_image(d / "img.png"), 1, (32, 32))
    g = model.eval().predict_gaussians(x)
    api_fg = L.figure_ground(L.layer_assignment(L.cumulative_renders(g, 4, (40, 40), "torch"), 0.05), 2)[0]
    assert np.array_equal(fg, api_fg.numpy())

    assert main(["edges", *common, "--out", str(d / "edges"), "--granularities", "2", "4"]) == 0
    assert sorted(p.name for p in (d / "edges").iterdir()) == ["edges.json", "edges_l2.png", "edges_l4.png"]


def test_cli_paths_with_an_unexpanded_tilde_are_the_home_folder(cli_files, tmp_path, monkeypatch):
    """Quoted ``"~/..."`` paths (the shell leaves them) are the home folder's, for every path flag (``--checkpoint``,
    ``--image``, ``--out``: argparse makes them ``Path`` objects): it had written into a folder called ``~`` here."""
    _, ckpt, d = cli_files
    home, elsewhere = tmp_path / "home", tmp_path / "cwd"
    home.mkdir(), elsewhere.mkdir()
    for f in (ckpt, d / "img.png"):
        (home / f.name).write_bytes(f.read_bytes())
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(elsewhere)
    assert main(["edges", "--checkpoint", "~/model.pt", "--image", "~/img.png", "--out", "~/edges", "--granularities", "2"]) == 0
    assert sorted(p.name for p in (home / "edges").iterdir()) == ["edges.json", "edges_l2.png"]
    assert list(elsewhere.iterdir()) == []


def test_cli_bad_inputs_exit_2_and_write_nothing(cli_files, capsys, tmp_path):
    _, ckpt, d = cli_files
    out = tmp_path / "never"
    cases = [
        ["segment", "--checkpoint", str(d / "nope.pt"), "--image", str(d / "img.png")],
        ["segment", "--checkpoint", str(ckpt), "--image", str(d / "missing.png")],
        ["segment", "--checkpoint", str(ckpt), "--image", str(d / "img.png"), "--num-layers", "500"],
        ["segment", "--checkpoint", str(ckpt), "--image", str(d / "img.png"), "--split", "9", "--num-layers", "4"],
        ["layers", "--checkpoint", str(d / "img.png"), "--image", str(d / "img.png")],
        ["edges", "--checkpoint", str(d / ("x" * 300 + ".pt")), "--image", str(d / "img.png")],  # too long to look up
        ["edges", "--checkpoint", str(ckpt), "--image", str(d / ("y" * 300 + ".png"))],
    ]
    for argv in cases:
        assert main([*argv, "--out", str(out)]) == 2, argv  # the long paths: OSError File name too long
        assert not out.exists()
    err = capsys.readouterr().err
    assert "nope.pt" in err and "missing.png" in err and "exceeds" in err
    for name, size in (("x" * 300 + ".pt", 303), ("y" * 300 + ".png", 304)):
        assert f"{d / name}: a name in it is {size} bytes long, longer than the 255 the file system takes" in err
    for argv in (["segment", "--checkpoint", str(ckpt)], ["explode"], ["edges", "--checkpoint", str(ckpt), "--image", "x.png",
                 "--out", str(out), "--granularities", "-3"]):  # fmt: skip
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
    torch.save({"kind": "gvit", "config": {}, "state_dict": {}}, d / "gvit.pt")
    assert main(["edges", "--checkpoint", str(d / "gvit.pt"), "--image", str(d / "img.png"), "--out", str(out)]) == 2
    assert "gvit" in capsys.readouterr().err


def test_cli_device_defaults_to_auto_and_help_shows_defaults(cli_files, monkeypatch, capsys):
    import medgmae.twod.zero_shot_command as cli

    _, ckpt, d = cli_files
    asked = []
    monkeypatch.setattr(cli, "resolve_device", lambda name: asked.append(name) or torch.device("cpu"))
    argv = ["--checkpoint", str(ckpt), "--image", str(d / "img.png"), "--out", str(d / "auto")]
    assert main(["edges", *argv, "--granularities", "2"]) == 0
    assert asked == ["auto"]  # the bundles' device setting: CUDA when available, else CPU
    for command, shown in (("layers", ("(default: 16, or the model's number of Gaussians when it has fewer)",
                                       "(default: 32, or the model's number of Gaussians when it has fewer)",
                                       "(default: auto)")),
                           ("segment", ("(default: 0.05)",)),
                           ("edges", ("(default: 4 8 16, those up to the model's number of Gaussians)",
                                      "(default: 0.05)"))):  # fmt: skip
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        assert all(s in text for s in shown), text


def test_closing_summary_does_not_promise_fine_tuning_of_the_2d_encoder(tmp_path):
    """No bundle fine-tunes a 2D encoder: the 2D summary says what encoder.pt is; the 3D one keeps fine-tuning."""
    from medgmae.engine import MetricHistory
    from medgmae.mae_training.summary import PretrainSummary
    from medgmae.twod.gmae_validation import GMAE2DSummary

    files = {n: str(tmp_path / n) for n in ("model.pt", "encoder.pt", "best_model.pt", "pictures", "curves", "tensorboard")}
    s = {"epochs": 1, "model_kind": "gmae2d", "best_val_psnr": None, "best_epoch": None, "last_val_ssim": None,
         "files": files, "next": {}}  # fmt: skip
    line = [ln for ln in GMAE2DSummary(tmp_path, MetricHistory()).text(s).splitlines() if "encoder.pt" in ln][0]
    assert "fine-tuning" not in line and "2D ViT encoder" in line
    line3d = [ln for ln in PretrainSummary(tmp_path, MetricHistory(), "medgmae").text(s).splitlines()
              if "encoder.pt" in ln][0]  # fmt: skip
    assert "fine-tuning" in line3d  # unetr_finetune reads the 3D encoder.pt
