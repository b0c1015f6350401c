"""Picture files PIL reads short of what they hold: a float64 TIFF is named as such (PIL cannot open it), and
transparent pixels, read as their stored colour, are noted once per file."""

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
