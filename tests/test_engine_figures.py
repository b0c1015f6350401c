"""The engine's slice pictures: radiological orientation, edge letters, titles wider than the picture, refusals."""

from __future__ import annotations

import numpy as np
import pytest


def test_slice_pictures_are_shown_radiologically():
    """A marker at the patient's right, anterior and superior corner of a RAS-ordered volume appears at the top left
    of the sagittal (anterior on the left), coronal and axial (the patient's right on the left) slices, and
    slice_point puts a point where mid_slices shows it."""
    from medgmae.engine.figures import mid_slices, slice_point

    shape = (10, 12, 14)  # (R, A, S) voxel counts
    vol = np.zeros(shape)
    point = (9, 11, 13)  # the right-most, most anterior, most superior voxel
    vol[point] = 1.0
    centred = np.zeros(shape)
    centred[5, 6, 7] = 1.0  # through the default mid-slices
    for view, sl in enumerate(mid_slices(vol, centre=point)):
        assert np.argwhere(sl == 1.0).tolist() == [[0, 0]], view
    for view, sl in enumerate(mid_slices(centred)):
        row, col, dist = slice_point(view, (5, 6, 7), shape)
        assert dist == 0 and sl[int(row), int(col)] == 1.0, view


def test_orientation_letters_name_the_directions_at_each_edge_of_a_view():
    """Each view's edge letters are where mid_slices shows that direction: a slab at the patient's far right
    (R, the highest first index of a RAS volume), left, anterior... lies along the edge its letter marks; the letters
    are drawn in yellow at the edges' middles of a tile, and not on a tile too small to hold them."""
    from medgmae.engine.figures import _EDGE_LETTERS, LETTER_COLOUR, mid_slices, with_orientation_letters

    slabs = {"R": (-1, 0), "L": (0, 0), "A": (-1, 1), "P": (0, 1), "S": (-1, 2), "I": (0, 2)}  # (index, RAS axis)
    edges = {0: lambda sl: sl[:, 0], 1: lambda sl: sl[:, -1], 2: lambda sl: sl[0, :], 3: lambda sl: sl[-1, :]}
    for view, letters in enumerate(_EDGE_LETTERS):
        for edge, letter in enumerate(letters):
            vol = np.zeros((10, 12, 14))
            index, axis = slabs[letter]
            vol[(slice(None),) * axis + (index,)] = 1.0
            sl = mid_slices(vol)[view]
            assert edges[edge](sl).min() == 1.0 and sl.sum() == edges[edge](sl).sum(), (view, letter)
    tile = with_orientation_letters(np.zeros((64, 80, 3), np.uint8), 2)
    yellow = np.all(tile == LETTER_COLOUR, axis=-1)
    assert yellow[24:40, :8].any() and yellow[24:40, -8:].any() and yellow[:12, 32:48].any() and yellow[-12:, 32:48].any()
    assert not yellow[12:52, 12:68].any()  # the image itself is left alone
    assert not np.all(with_orientation_letters(np.zeros((20, 80, 3), np.uint8), 2) == LETTER_COLOUR, axis=-1).any()


def test_a_title_longer_than_its_picture_widens_it_instead_of_being_cut():
    """A zero-shot picture of a small scan (two 128-pixel tiles) under a 90-character title lost the title's end:
    the band, and the picture with it, is widened with black to hold the whole text; a short one changes nothing."""
    from PIL import Image, ImageDraw

    from medgmae.engine.figures import figure_font, label_tile

    title = "case_0000: voxels 0.70 (R-L) x 0.90 (A-P) x 2.50 (I-S) mm; grey window [-1000, 1000] HU"
    img = np.full((40, 128, 3), 90, np.uint8)
    out = label_tile(img, title)
    ink = np.argwhere(out[:14].max(axis=-1) > 0)  # the band's white pixels
    full = ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(title, font=figure_font())
    assert out.shape[1] > 128 and ink[:, 1].max() >= full - 6  # the text's last glyph is drawn
    assert np.array_equal(out[14:, :128], img) and not out[14:, 128:].any()  # the picture as it was, black beside
    assert label_tile(img, "short").shape == (54, 128, 3)


def test_each_figure_function_names_itself_in_its_refusals():
    """``orthogonal_views`` refused mismatched names in the words of ``orthogonal_slices`` (a wrapper since
    removed), a function its caller never called; it now names itself."""
    from medgmae.engine.figures import mid_slices, orthogonal_views

    vol = np.zeros((4, 5, 6), np.float32)
    with pytest.raises(ValueError, match=r"^orthogonal_views needs .* got 1, 2 and 1$"):
        orthogonal_views([mid_slices(vol)], names=["a", "b"])
    assert orthogonal_views([mid_slices(vol)], names=["a"]).ndim == 3
