"""Picture files PIL reads short of what they hold: a float64 TIFF is named as such (PIL cannot open it), and
transparent pixels, read as their stored colour, and 16-bit colour PNGs, read at 8 bits, are noted once per file."""

import logging

import numpy as np
import pytest
from PIL import Image

from medgmae.twod.images import read_image

tifffile = pytest.importorskip("tifffile")


def test_a_float64_tiff_is_named_and_asked_for_as_float32(tmp_path):
    """PIL cannot identify a float64 TIFF; the message says so in one line, not 'cannot identify image file'."""
    values = np.linspace(0, 1, 64).reshape(8, 8)
    tifffile.imwrite(tmp_path / "f64.tif", values)
    with pytest.raises(ValueError) as e:
        read_image(tmp_path / "f64.tif")
    assert str(e.value) == f"{tmp_path / 'f64.tif'}: a float64 TIFF, which PIL cannot read: save it as float32"
    tifffile.imwrite(tmp_path / "f32.tif", values.astype(np.float32))  # as the message asks: read, values kept
    np.testing.assert_allclose(read_image(tmp_path / "f32.tif")[0], values, atol=1e-6)


def test_an_unreadable_tiff_of_another_cause_keeps_its_message(tmp_path):
    (tmp_path / "junk.tif").write_bytes(b"II*\x00" + b"\x00" * 12)
    with pytest.raises(ValueError, match=r"junk\.tif: not a readable image \(UnidentifiedImageError"):
        read_image(tmp_path / "junk.tif")


def test_transparent_pixels_read_as_their_stored_colour_and_are_noted_once_per_file(tmp_path, caplog):
    """An RGBA picture whose transparent half stores black reads black there (kept), with one logged line for the
    file however often it is read; an RGBA picture with every pixel opaque is not noted; an LA one is."""
    rgba = np.zeros((4, 6, 4), dtype=np.uint8)
    rgba[..., :3] = np.arange(4 * 6 * 3).reshape(4, 6, 3)
    rgba[..., 3] = 255
    rgba[:, 3:, 3] = 0  # the right half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cut.png")
    Image.fromarray(np.where(rgba[..., 3:] == 0, 255, rgba), "RGBA").save(tmp_path / "opaque.png")
    la = np.stack([np.full((4, 6), 200, np.uint8), np.full((4, 6), 10, np.uint8)], -1)
    Image.fromarray(la, "LA").save(tmp_path / "grey.png")
    with caplog.at_level(logging.INFO, logger="medgmae.twod"):
        for _ in range(3):
            arr = read_image(tmp_path / "cut.png")
        read_image(tmp_path / "opaque.png")
        grey = read_image(tmp_path / "grey.png")
    np.testing.assert_allclose(arr, rgba[..., :3].transpose(2, 0, 1) / 255.0, atol=1e-6)  # stored colour, alpha dropped
    np.testing.assert_allclose(grey, np.full((1, 4, 6), 200 / 255.0), atol=1e-6)
    lines = [r.getMessage() for r in caplog.records if "transparent pixels" in r.getMessage()]
    assert lines == [
        f"{tmp_path / 'cut.png'} has transparent pixels: they are read as the colour stored under them, not composited "
        "onto a background (alpha is dropped)",
        f"{tmp_path / 'grey.png'} has transparent pixels: they are read as the colour stored under them, not "
        "composited onto a background (alpha is dropped)",
    ]


def test_a_picture_has_only_slice_0(tmp_path):
    """A PNG holds one slice: slice 0 (or none given) reads it, another index is refused, as for a 2D NIfTI."""
    from medgmae.twod.images import read_mask

    path = tmp_path / "one.png"
    Image.fromarray(np.full((4, 5), 255, dtype=np.uint8)).save(path)
    assert np.array_equal(read_image(path, slice_index=0), read_image(path))
    assert read_mask(path, slice_index=0).all()
    for read in (read_image, read_mask):
        with pytest.raises(ValueError, match=r"one\.png: slice 5 is outside the image's 1 slice"):
            read(path, slice_index=5)


def test_16bit_colour_pngs_are_warned_of_once_per_file(tmp_path, caplog):
    """A 16-bit RGB or grey+alpha PNG (written by SimpleITK) is read at 8 bits: one warning per file however often it
    is read, naming the file and its type; the values stay within one 8-bit step of the stored ones over 65535. A
    16-bit grey PNG (read in full) and an 8-bit RGB one draw no warning."""
    sitk = pytest.importorskip("SimpleITK")
    rgb = (np.arange(4 * 6 * 3).reshape(4, 6, 3) * 900 + 7).astype(np.uint16)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "rgb16.png"))
    la = np.stack([rgb[..., 0], np.full((4, 6), 65535, np.uint16)], -1)
    sitk.WriteImage(sitk.GetImageFromArray(la, isVector=True), str(tmp_path / "la16.png"))
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey16.png")
    Image.fromarray((rgb >> 8).astype(np.uint8), "RGB").save(tmp_path / "rgb8.png")
    with caplog.at_level(logging.WARNING, logger="medgmae.twod"):
        for _ in range(3):
            got = read_image(tmp_path / "rgb16.png")
        read_image(tmp_path / "la16.png")
        grey = read_image(tmp_path / "grey16.png")
        read_image(tmp_path / "rgb8.png")
    assert np.abs(got - rgb.transpose(2, 0, 1) / 65535.0).max() <= 1 / 255 + 1e-6
    np.testing.assert_allclose(grey[0], rgb[..., 0] / 65535.0, atol=1e-6)  # 16-bit grey: every bit kept
    lines = [r.getMessage() for r in caplog.records if "read at 8 bits" in r.getMessage()]
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"{tmp_path / 'rgb16.png'} is a 16-bit RGB PNG, which is read at 8 bits"), lines
    assert lines[1].startswith(f"{tmp_path / 'la16.png'} is a 16-bit grey+alpha PNG"), lines
