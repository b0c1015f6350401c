"""The test slice and the interior mask that the FBP tests share."""

import numpy as np


def ellipses_slice(n=65):
    """An ``n`` x ``n`` slice: two ellipses (1.0 and 0.5) over a disc of radius 26 (0.2), centred at ``(n - 1) / 2``."""
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    img = (((yy + 6) ** 2 / 90 + (xx - 8) ** 2 / 30) < 1) * 1.0 + (((yy - 9) ** 2 / 40 + (xx + 9) ** 2 / 70) < 1) * 0.5
    img += ((yy**2 + xx**2) < 26**2) * 0.2
    return img


def interior_disc(n, r):
    """The pixels of an ``n`` x ``n`` image within ``r`` of its centre ``(n - 1) / 2``."""
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    return yy**2 + xx**2 < r**2
