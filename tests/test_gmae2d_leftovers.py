"""Leftovers of the 2D family: the start lines' global batch of a dataset smaller than a batch, counts of one written
as plurals ("1 distinct images"), the scale of a 16-bit RGB DICOM, and the letters the pictures' text can draw."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from medgmae.engine.run_words import global_batch_words, loader_items
from medgmae.mae_training import MaskedAutoencoderTrainer
from medgmae.twod.gmae import GMAE2D
from medgmae.twod.gvit import GViT
from medgmae.twod.gvit_run_line import gvit_run_line


def _pictures(folder, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(folder / f"{i}.png")


def test_the_2d_start_line_counts_the_images_a_step_really_holds(tmp_path):
    """Two images with batch_size 16: the loader keeps its short batch (drop_last false, nothing repeated), so each
    step trains on those 2 images, which the line now says instead of "global batch 16 images per step"."""
    from medgmae.twod.data2d import gmae2d_dataset

    _pictures(tmp_path / "two", 2)
    ds = gmae2d_dataset(tmp_path / "two", (16, 16), 1, cache=False, log=False)
    loader = DataLoader(ds, batch_size=16, shuffle=True, drop_last=False)  # as bundles/gmae2d_pretrain builds it
    assert [len(batch["image"]) for batch in loader] == [2] and loader_items(loader) == 2
    model = GMAE2D(img_size=16, patch_size=8, model_size="tiny", num_gaussians=4)
    trainer = MaskedAutoencoderTrainer("cpu", 1, loader, model, torch.optim.SGD(model.parameters(), lr=0.01))
    assert trainer.run_settings().endswith(
        "global batch 2 images per step (1 process x 2; batch_size 16, but the dataset holds 2 images)"
    )
    assert global_batch_words(1, 16, 1, 2, items=40) == "global batch 16 images per step (1 process x 16)"
    assert global_batch_words(2, 4, 3, items=1) == (
        "global batch 6 crops per step (2 processes x 1 volume x 3 crops; batch_size 4, but each process draws 1 volume)"
    )


def test_the_gvit_start_line_counts_the_images_a_step_really_holds():
    model = GViT(1, 16, 2, num_gaussians=6, patch_size=4)
    line = gvit_run_line(model, "cpu", False, "torch", {"warmup": 1}, batch_size=32, items=3)
    assert line.endswith("global batch 3 images per step (1 process x 3; batch_size 32, but the dataset holds 3 images)")
    assert gvit_run_line(model, "cpu", False, "torch", {"warmup": 1}, 32).endswith("global batch 32 images per step (1 process x 32)")


def test_a_folder_of_one_image_is_counted_in_the_singular(tmp_path, caplog):
    """"--val_images 4: dataset_dir ... holds 1 distinct images, so validation uses those 1" and "1 image files -> 1
    training images": one image is one image."""
    from medgmae.twod.data2d import image_folder_items
    from medgmae.twod.gmae_validation import gmae2d_validation_dataset

    _pictures(tmp_path / "one", 1)
    with caplog.at_level(logging.INFO, logger="medgmae.twod"):
        image_folder_items(tmp_path / "one")
        assert len(gmae2d_validation_dataset(str(tmp_path / "one"), (16, 16), 1, 1, 4, 0)) == 1
    assert f"dataset_dir {tmp_path / 'one'}: 1 image file -> 1 training image (one per file)" in caplog.text
    assert f"--val_images 4: dataset_dir {tmp_path / 'one'} holds 1 distinct image, so validation uses it" in caplog.text
    _pictures(tmp_path / "two", 2)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="medgmae.twod"):
        gmae2d_validation_dataset(str(tmp_path / "two"), (16, 16), 1, 1, 4, 0)
    assert "holds 2 distinct images, so validation uses those 2" in caplog.text


def test_one_volume_or_frame_stack_among_the_files_is_named_in_the_singular(tmp_path):
    import nibabel as nib

    from medgmae.twod.data2d import several_slices_notes

    for name in ("a", "b"):
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 3), np.float32), np.eye(4)), str(tmp_path / f"{name}.nii.gz"))
    assert several_slices_notes([tmp_path / "a.nii.gz"]) == ["1 of them a 3D NIfTI volume, contributing its middle axial slice"]
    assert several_slices_notes([tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"]) == [
        "2 of them 3D NIfTI volumes, each contributing its middle axial slice"
    ]


def test_gvit_and_2d_tool_counts_of_one_are_singular(tmp_path, caplog):
    from types import SimpleNamespace

    import pytest

    from medgmae.twod.classification_split import apply_recorded_split
    from medgmae.twod.zero_shot_command import _check_layers
    from medgmae.twod.gvit_summary import _summary_lines
    from medgmae.twod.pngs import save_png_grid

    s = {"accuracy": 1.0, "num_images": 1, "per_class_accuracy": {"a": 1.0}, "split": "", "dataset": "",
         "training": None, "files": dict.fromkeys(("model", "metrics", "confusion_matrix", "explanations"), "x"),
         "next": {}}  # fmt: skip
    lines = _summary_lines(s, {}, [tmp_path / "one.png"], "evaluation", 8)
    assert lines[0].startswith("GViT evaluation finished: accuracy 1.0000 on 1 image (a 1.000)")
    assert "explanations 1 PNG in x (image" in " ".join(lines[-1].split())
    with pytest.raises(ValueError, match="--num-layers 2 exceeds the model's 1 Gaussian$"):
        _check_layers(2, SimpleNamespace(num_gaussians=1))
    with pytest.raises(ValueError, match="^1 label for 2 images$"):
        save_png_grid(np.zeros((2, 1, 4, 4), np.float32), ["only"], tmp_path / "grid.png")
    items = {name: {"image": str(tmp_path / f"{name}.png"), "label": 0} for name in ("a", "b", "c")}
    with caplog.at_level(logging.WARNING, logger="medgmae.gvit"):
        apply_recorded_split([items["a"], items["c"]], [items["b"]], {"train": ["a.png"], "val": ["b.png"]}, tmp_path)
    assert "(1 image added, 0 missing)" in caplog.text and "(1 training, 1 validation image here)" in caplog.text


def _write_rgb_dicom(path, rgb: np.ndarray, bits_stored: int) -> None:
    """An uncompressed RGB DICOM of ``(H, W, 3)`` samples, 8- or 16-bit as ``rgb``'s type, ``bits_stored`` of them
    used."""
    from pydicom.uid import SecondaryCaptureImageStorage

    from tests.data_helpers import pydicom_dataset

    ds = pydicom_dataset(SecondaryCaptureImageStorage)
    ds.Modality = "OT"
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated = 8 * rgb.dtype.itemsize
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, 0
    ds.PixelData = rgb.tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_a_16_bit_rgb_dicom_is_scaled_by_its_bit_depth(tmp_path):
    """A 16-bit RGB DICOM was divided by 255: every sample above 255 read as 1 (white). Its samples are divided by
    the largest value of their bit depth (2 ** BitsStored - 1), as a 16-bit picture file is by 65535; an 8-bit
    one reads as before."""
    from medgmae.twod.images import read_image, read_image_source

    wide = np.zeros((4, 5, 3), np.uint16)
    wide[0, 0], wide[1, 2], wide[3, 4] = (65535, 32768, 0), (1000, 4095, 255), (13107, 26214, 39321)
    _write_rgb_dicom(tmp_path / "rgb16.dcm", wide, 16)
    image, source = read_image_source(tmp_path / "rgb16.dcm")
    assert image.shape == (3, 4, 5) and source["window"] is None
    np.testing.assert_allclose(image, wide.transpose(2, 0, 1) / 65535.0, atol=1e-6)
    _write_rgb_dicom(tmp_path / "rgb12.dcm", np.minimum(wide, 4095), 12)  # 12 of 16 bits used: 4095 is white
    np.testing.assert_allclose(read_image(tmp_path / "rgb12.dcm"), np.minimum(wide, 4095).transpose(2, 0, 1) / 4095.0, atol=1e-6)
    narrow = (np.arange(60).reshape(4, 5, 3) * 4).astype(np.uint8)
    _write_rgb_dicom(tmp_path / "rgb8.dcm", narrow, 8)
    np.testing.assert_allclose(read_image(tmp_path / "rgb8.dcm"), narrow.transpose(2, 0, 1) / 255.0, atol=1e-6)


def test_pictures_draw_the_letters_their_font_has_and_a_clear_mark_for_the_rest(monkeypatch):
    """Labels ('Straße', Greek, Cyrillic) were drawn in Pillow's built-in font, which lacks ß: it read 'Stra?e'.
    Where DejaVu Sans is installed (the system's fonts, or matplotlib's copy) the pictures use it and draw those
    letters; a letter it lacks (CJK) is still '?', never an empty box. Without it, the built-in font."""
    from PIL import ImageFont

    from medgmae.engine import figure_text
    from medgmae.engine.figures import drawable, figure_font, label_tile

    monkeypatch.setattr(figure_text, "_font_files", lambda: ["no-such-font.ttf"])
    assert figure_text.figure_font.__wrapped__().getname() == ImageFont.load_default().getname()
    monkeypatch.undo()
    font = figure_font()
    if "DejaVu" not in font.getname()[0]:
        import pytest

        pytest.skip("DejaVu Sans is not installed here (neither among the system's fonts nor matplotlib's)")
    assert drawable("Straße Ωμέγα Жук é") == "Straße Ωμέγα Жук é"
    assert drawable("肝臓 ß") == "?? ß"
    tile = np.zeros((16, 200, 3), np.uint8)
    assert not np.array_equal(label_tile(tile, "Straße"), label_tile(tile, "Stra?e"))
    np.testing.assert_array_equal(label_tile(tile, "肝 x"), label_tile(tile, "? x"))


def test_a_pillow_without_freetype_falls_back_to_its_bitmap_font(monkeypatch):
    """Pillow built without FreeType raises ImportError (not OSError) from ``truetype``: the pictures still draw,
    in the built-in font, where ``figure_font`` raised it."""
    from PIL import ImageFont

    from medgmae.engine import figure_text

    def no_freetype(*args, **kwargs):
        raise ImportError("The _imagingft C module is not installed")

    monkeypatch.setattr(ImageFont, "truetype", no_freetype)
    monkeypatch.setattr(ImageFont, "load_default", lambda *a, **k: "built-in")
    figure_text.figure_font.cache_clear()
    try:
        assert figure_text.figure_font() == "built-in"
    finally:
        figure_text.figure_font.cache_clear()


def _write_grey_dicom(path, values: np.ndarray, photometric: str, window=(2000.0, 2000.0)) -> None:
    """An uncompressed 16-bit grey DICOM of stored ``values`` (rescale slope 1, intercept 0), with a window
    (centre, width)."""
    from pydicom.uid import DigitalXRayImageStorageForPresentation

    from tests.data_helpers import pydicom_dataset

    ds = pydicom_dataset(DigitalXRayImageStorageForPresentation)
    ds.Modality = "DX"
    ds.Rows, ds.Columns = values.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = values.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


@pytest.mark.parametrize("window", [None, (0.0, 4095.0), (1000.0, 3000.0)])
def test_a_monochrome1_x_ray_is_windowed_in_its_own_units_then_inverted(tmp_path, window):
    """MONOCHROME1 (high values shown dark) was negated before the window: a window given in the file's units (or
    recorded by a checkpoint) fell outside the negated values and the image read all black. Oracle: the same values
    stored as MONOCHROME2 under the same window, inverted; the window used is reported in the file's units."""
    from medgmae.twod.images import read_image_source

    values = (np.arange(48).reshape(6, 8) * 85).astype(np.uint16)  # 0 .. 3995
    _write_grey_dicom(tmp_path / "m1.dcm", values, "MONOCHROME1")
    _write_grey_dicom(tmp_path / "m2.dcm", values, "MONOCHROME2")
    m1, used1 = read_image_source(tmp_path / "m1.dcm", window=window)
    m2, used2 = read_image_source(tmp_path / "m2.dcm", window=window)
    assert m1.max() > 0.5 and m1.min() < 0.5  # not a black (or white) image
    np.testing.assert_allclose(m1, 1.0 - m2, atol=1e-6)
    assert used1["window"] == used2["window"] == (list(window) if window else [1000.0, 3000.0])


def test_a_colour_dicom_is_not_windowed_and_a_palette_one_reads_through_its_colour_table(tmp_path):
    """A CT window (given, or recorded by a checkpoint) applied to an RGB DICOM's 0..1 samples flattened it to 0.5
    grey; a PALETTE COLOR frame (ultrasound) was read as its table indices. Oracle: the samples divided by their
    bit depth; the table looked up by hand."""
    from pydicom.uid import UltrasoundImageStorage

    from medgmae.twod.images import read_image_source
    from tests.data_helpers import pydicom_dataset

    rgb = (np.arange(60).reshape(4, 5, 3) * 4).astype(np.uint8)
    _write_rgb_dicom(tmp_path / "rgb8.dcm", rgb, 8)
    image, used = read_image_source(tmp_path / "rgb8.dcm", window=(-1000.0, 1000.0))
    np.testing.assert_allclose(image, rgb.transpose(2, 0, 1) / 255.0, atol=1e-6)
    assert used["window"] is None and used["window_source"] == "not windowed: a colour frame"
    indices = np.array([[0, 1, 2, 3], [3, 2, 1, 0], [255, 128, 7, 0]], np.uint8)
    table = np.stack([65535 - np.arange(256) * 257, np.arange(256) * 257, np.full(256, 1000)], axis=1).astype(np.uint16)
    ds = pydicom_dataset(UltrasoundImageStorage)
    ds.Modality = "US"
    ds.Rows, ds.Columns = indices.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "PALETTE COLOR"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    for i, colour in enumerate(("Red", "Green", "Blue")):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", table[:, i].tobytes())
    ds.PixelData = indices.tobytes()
    ds.save_as(tmp_path / "us.dcm", enforce_file_format=True)
    image, used = read_image_source(tmp_path / "us.dcm", window=(-1000.0, 1000.0))
    np.testing.assert_allclose(image, table[indices].transpose(2, 0, 1) / 65535.0, atol=1e-6)
    assert image.shape == (3, 3, 4) and used["window"] is None


def test_a_palette_png_of_greys_reads_as_one_grey_channel_and_a_coloured_one_as_rgb(tmp_path):
    """A grey picture saved with a palette (PIL mode P, as many tools save 8-bit PNGs) was read as RGB: a
    classification dataset of grey images was said to mix grey and colour, and a first such image made a 3-channel
    model. Oracle: the palette looked up by hand."""
    from medgmae.twod.images import read_image

    indices = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    greys = [0, 0, 0, 128, 128, 128, 255, 255, 255]
    colours = [255, 0, 0, 0, 255, 0, 0, 0, 255]
    for name, palette in (("grey.png", greys), ("colour.png", colours)):
        im = Image.fromarray(indices, mode="P")
        im.putpalette(palette + [0] * (768 - len(palette)))
        im.save(tmp_path / name)
    table = lambda p: np.asarray(p, np.float32).reshape(3, 3)[indices].transpose(2, 0, 1) / 255.0  # noqa: E731
    np.testing.assert_allclose(read_image(tmp_path / "grey.png"), table(greys)[:1], atol=1e-6)
    np.testing.assert_allclose(read_image(tmp_path / "colour.png"), table(colours), atol=1e-6)


def test_an_rgb_dicom_mask_and_an_rgb_nifti_image_of_the_2d_readers(tmp_path):
    """An RGB DICOM given as a mask (any channel non-zero is foreground) keeps its (H, W) shape; an RGB NIfTI is
    refused in the 3D reader's words (it was numpy's DTypePromotionError)."""
    import nibabel as nib

    from medgmae.twod.images import read_image, read_mask

    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[1, 2, 0], rgb[3, 4, 2] = 200, 9
    _write_rgb_dicom(tmp_path / "mask.dcm", rgb, 8)
    expected = np.zeros((4, 5), bool)
    expected[1, 2] = expected[3, 4] = True
    np.testing.assert_array_equal(read_mask(tmp_path / "mask.dcm"), expected)
    structured = np.zeros((4, 5, 1), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(structured, np.eye(4)), str(tmp_path / "rgb.nii.gz"))
    with pytest.raises(ValueError, match=r"rgb\.nii\.gz: expected one value per voxel, got 3 components"):
        read_image(tmp_path / "rgb.nii.gz")


def test_a_scan_given_as_the_reference_mask_is_refused(tmp_path):
    """A CT slice given as --reference was read as a mask whose every non-zero pixel is foreground, and segment
    reported an IoU equal to the foreground fraction; a scan (hundreds of values) is refused, a mask of a few
    labels read."""
    import nibabel as nib

    from medgmae.twod.images import read_reference

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (20, 24), dtype=np.uint8)).save(tmp_path / "img.png")
    nib.save(nib.Nifti1Image(rng.normal(0, 300, (20, 24, 1)).astype(np.float32), np.eye(4)), str(tmp_path / "ct.nii.gz"))
    with pytest.raises(ValueError, match=r"ct\.nii\.gz holds \d+ distinct values: an image, not a mask"):
        read_reference(tmp_path / "ct.nii.gz", tmp_path / "img.png", (20, 24))
    Image.fromarray(rng.integers(0, 255, (20, 24), dtype=np.uint8)).save(tmp_path / "scan.png")  # an 8-bit picture of one
    with pytest.raises(ValueError, match=r"scan\.png holds \d+ distinct values: an image, not a mask"):
        read_reference(tmp_path / "scan.png", tmp_path / "img.png", (20, 24))
    labels = np.zeros((20, 24), np.uint8)
    labels[2:6, 3:9], labels[10:12, 1:4] = 1, 3
    Image.fromarray(labels).save(tmp_path / "mask.png")
    np.testing.assert_array_equal(read_reference(tmp_path / "mask.png", tmp_path / "img.png", (20, 24)), labels > 0)
