"""Small picture helpers shared by the bundles' progress pictures (PIL and NumPy only, no plotting library).

Slices of a RAS-ordered ``(D, H, W)`` volume (:func:`mid_slices`, drawn by :func:`orthogonal_views` in the to-scale
figure of zero-shot inference and of ``medgmae-recon reconstruct``; :func:`ras_oriented` brings any volume with its
affine into that order) are shown radiologically, as CT viewers and the toolkit's 2D tools show
them: sagittal (anterior on the left), coronal and axial (the patient's right on the image's left) mid-slices,
superior / anterior up. Images are ``(H, W, 3)`` uint8 RGB arrays
until :func:`save_png` writes them (atomically) or :func:`add_image` puts them in TensorBoard.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from medgmae.engine.figure_text import drawable, figure_font, legible
from medgmae.files import atomic_write

__all__ = [
    "add_image",
    "colormap",
    "drawable",
    "epoch_ticks",
    "figure_font",
    "grey_rgb",
    "label_tile",
    "legible",
    "line_plot",
    "mid_slices",
    "orthogonal_views",
    "ras_oriented",
    "slice_point",
    "save_png",
    "tile_grid",
    "upscale",
    "value_ticks",
    "voxel_sizes",
    "with_orientation_letters",
]

#: anchors of a perceptually ordered dark-blue -> green -> yellow colour map (viridis-like)
_CMAP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64)
#: line colours of :func:`line_plot`
_LINE_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]


def colormap(values: np.ndarray) -> np.ndarray:
    """Map values in ``[0, 1]`` (clipped) to ``(..., 3)`` uint8 colours."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64)), 0.0, 1.0) * (len(_CMAP) - 1)
    i = np.minimum(v.astype(int), len(_CMAP) - 2)
    t = (v - i)[..., None]
    return np.round(_CMAP[i] * (1 - t) + _CMAP[i + 1] * t).astype(np.uint8)


def grey_rgb(img: np.ndarray, vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """A 2D array windowed to ``[vmin, vmax]`` as an ``(H, W, 3)`` uint8 grey image."""
    if img.ndim != 2:
        raise ValueError(f"grey_rgb needs a 2D array, got shape {img.shape}")
    g = np.clip((np.nan_to_num(img.astype(np.float64)) - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)
    return np.repeat(np.round(g * 255).astype(np.uint8)[..., None], 3, axis=-1)


def upscale(img: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement of an ``(H, W[, C])`` image by an integer factor."""
    return img if factor <= 1 else img.repeat(factor, axis=0).repeat(factor, axis=1)


def mid_slices(volume: np.ndarray, centre: Sequence[int] | None = None) -> list[np.ndarray]:
    """Sagittal, coronal and axial slices of a RAS-ordered ``(D, H, W)`` volume through ``centre`` (default: the
    middle), shown radiologically: superior / anterior up, anterior on the left of the sagittal slice, the
    patient's right on the left of the coronal and axial ones."""
    if volume.ndim != 3:
        raise ValueError(f"mid_slices needs a 3D volume, got shape {volume.shape}")
    c = [s // 2 for s in volume.shape] if centre is None else [min(max(int(i), 0), s - 1) for i, s in zip(centre, volume.shape)]
    return [np.fliplr(np.rot90(s)) for s in (volume[c[0], :, :], volume[:, c[1], :], volume[:, :, c[2]])]


def ras_oriented(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A volume reoriented to the closest RAS axis order (permutations and flips only, no resampling), with its
    voxel size along the new axes.

    Args:
        volume: 3D array in the index order of ``affine`` (a NIfTI's ``(I, J, K)``).
        affine: ``(4, 4)`` voxel-to-RAS-mm matrix.

    Returns:
        ``(array, spacing)``: the ``(D, H, W)`` array whose indices grow towards the patient's right, anterior and
        superior along ``D``, ``H`` and ``W`` (RAS), and the voxel size (mm) along each.
    """
    import nibabel as nib

    affine = np.asarray(affine, dtype=np.float64)
    ornt = nib.orientations.io_orientation(affine)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
    spacing = [0.0, 0.0, 0.0]
    for axis, (ras_axis, _) in enumerate(ornt):
        spacing[int(ras_axis)] = float(zooms[axis])
    return nib.orientations.apply_orientation(volume, ornt), (spacing[0], spacing[1], spacing[2])


def slice_point(view: int, point: Sequence[float], shape: Sequence[int]) -> tuple[float, float, float]:
    """Where a voxel-frame point ``(d, h, w)`` falls in :func:`mid_slices` view ``view``.

    Returns:
        ``(row, col, distance)``: pixel position in the rotated slice and the point's distance (voxels) from the
        slice plane.
    """
    d, h, w = (float(p) for p in point)
    D, H, W = (int(s) for s in shape)
    if view == 0:
        return W - 1 - w, H - 1 - h, abs(d - D // 2)
    if view == 1:
        return W - 1 - w, D - 1 - d, abs(h - H // 2)
    if view == 2:
        return H - 1 - h, D - 1 - d, abs(w - W // 2)
    raise ValueError(f"view must be 0, 1 or 2, got {view}")


def label_tile(img: np.ndarray, text: str, band: int = 14) -> np.ndarray:
    """An ``(H, W, 3)`` image with ``text`` written in a black band above it (its spaces :func:`legible`), widened
    with black on the right where the text is longer than the image is wide (a title is never cut off)."""
    font, text = figure_font(), legible(" ".join(str(text).splitlines()))  # one line (a file name may hold a line break)
    width = max(img.shape[1], math.ceil(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(text, font=font)) + 6)
    out = Image.new("RGB", (width, img.shape[0] + band), (0, 0, 0))
    out.paste(Image.fromarray(img), (0, band))
    ImageDraw.Draw(out).text((3, 1), text, fill=(255, 255, 255), font=font)
    return np.asarray(out)


def tile_grid(rows: Sequence[Sequence[np.ndarray]], pad: int = 2) -> np.ndarray:
    """Place rows of ``(h, w, 3)`` tiles in a grid (cells padded to the largest tile), black background."""
    if not rows or not all(rows):
        raise ValueError("tile_grid needs at least one non-empty row")
    ch = max(t.shape[0] for r in rows for t in r)
    cw = max(t.shape[1] for r in rows for t in r)
    ncol = max(len(r) for r in rows)
    out = np.zeros((len(rows) * (ch + pad) + pad, ncol * (cw + pad) + pad, 3), np.uint8)
    for i, r in enumerate(rows):
        for j, t in enumerate(r):
            y, x = pad + i * (ch + pad), pad + j * (cw + pad)
            out[y : y + t.shape[0], x : x + t.shape[1]] = t
    return out


_VIEWS = ("sagittal", "coronal", "axial")
#: The patient directions at the (left, right, top, bottom) edges of each :func:`mid_slices` view.
_EDGE_LETTERS = (("A", "P", "S", "I"), ("R", "L", "S", "I"), ("R", "L", "A", "P"))
#: The colour of the orientation letters (yellow, as viewers draw them; never a grey of the image).
LETTER_COLOUR = (255, 255, 0)


def voxel_sizes(spacing: Sequence[float]) -> str:
    """``"0.70 (R-L) x 0.90 (A-P) x 2.50 (I-S) mm"``: the voxel size along each axis of a RAS-ordered volume
    (:func:`ras_oriented`), each named by its patient axis (a size, not an orientation code)."""
    return " x ".join(f"{s:.2f} ({axis})" for s, axis in zip(spacing, ("R-L", "A-P", "I-S"))) + " mm"


def with_orientation_letters(img: np.ndarray, view: int) -> np.ndarray:
    """An ``(h, w, 3)`` :func:`mid_slices` view ``view`` (0 sagittal, 1 coronal, 2 axial) with the patient
    directions written at the middle of its edges, as 3D Slicer and PACS viewers mark them (``R`` on the left of an
    axial slice: the patient's right); a tile under 24 pixels on a side is returned as it is."""
    h, w = img.shape[:2]
    if min(h, w) < 24:
        return img
    out = Image.fromarray(np.ascontiguousarray(img[..., :3]))
    draw, font = ImageDraw.Draw(out), figure_font()
    draw.fontmode = "1"  # no anti-aliasing: the letters stay one colour, never a grey of the image
    left, right, top, bottom = _EDGE_LETTERS[view]
    for text, (x, y) in ((left, (2, h // 2 - 5)), (right, (w - 8, h // 2 - 5)), (top, (w // 2 - 3, 1)), (bottom, (w // 2 - 3, h - 12))):
        draw.text((x, y), text, fill=LETTER_COLOUR, font=font, stroke_width=1, stroke_fill=(0, 0, 0))  # legible on any map
    return np.asarray(out)


def orthogonal_views(
    views: Sequence[Sequence[np.ndarray]],
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    names: Sequence[str] | None = None,
    title: str = "",
    size: int = 256,
    coloured: Sequence[bool] | None = None,
) -> np.ndarray:
    """One labelled row per volume of its three :func:`mid_slices` views, drawn to scale: a millimetre is the same
    number of pixels along every axis, so an anisotropic scan is not squashed; each tile has its patient directions
    at its edges (:func:`with_orientation_letters`). Only the slices are needed, not the volumes they are cut from.

    Args:
        views: per volume, its ``(sagittal (W, H), coronal (W, D), axial (H, D))`` :func:`mid_slices` of a
            RAS-ordered ``(D, H, W)`` volume, all volumes of one shape, values in ``[0, 1]`` (clipped).
        spacing: voxel size (mm) along ``(D, H, W)`` (R-L, A-P, I-S).
        names: one label per row (default: ``volume 0``, ``volume 1``...).
        title: text above the figure.
        size: pixels of the longest side of the volume (mm) in the slices.
        coloured: per volume, draw it with :func:`colormap` (e.g. an error map) instead of grey.

    Returns:
        ``(H, W, 3)`` uint8 RGB image: tiles under 14-pixel labels, 2-pixel gaps, a 14-pixel title band.
    """
    names = list(names) if names is not None else [f"volume {i}" for i in range(len(views))]
    coloured = list(coloured) if coloured is not None else [False] * len(views)
    sp = tuple(float(s) for s in spacing)
    if not views or len(names) != len(views) or len(coloured) != len(views):
        raise ValueError(f"orthogonal_views needs the views of one volume or more and one name (and colour flag) each, "
                         f"got {len(views)}, {len(names)} and {len(coloured)}")  # fmt: skip
    if len(sp) != 3 or not all(np.isfinite(sp)) or min(sp) <= 0:
        raise ValueError(f"spacing must be three positive sizes in mm, got {spacing!r}")
    if int(size) < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size!r}")
    shapes = [tuple(s.shape for s in v) for v in views]
    if any(len(v) != 3 or any(s.ndim != 2 for s in v) for v in views) or len(set(shapes)) != 1:
        raise ValueError(f"views must be three 2D mid-slices per volume, of one shape, got {shapes}")
    (w, h), (_, d) = views[0][0].shape, views[0][1].shape  # the volume's (D, H, W) from its sagittal and coronal
    scale = size / max(n * s for n, s in zip((d, h, w), sp))  # pixels per mm
    pixel_mm = [(sp[2], sp[1]), (sp[2], sp[0]), (sp[1], sp[0])]  # (row, column) mm of sagittal, coronal, axial
    width = 6 * max(len(f"{n}: {v}") for n in names for v in _VIEWS) + 6  # room for the longest label
    rows = []
    for slices, name, colour in zip(views, names, coloured):
        draw = colormap if colour else grey_rgb
        rows.append([_labelled(with_orientation_letters(_to_scale(draw(view), mm, scale), i), f"{name}: {label}", width)
                     for i, (view, mm, label) in enumerate(zip(slices, pixel_mm, _VIEWS))])  # fmt: skip
    return label_tile(tile_grid(rows), title)


def _to_scale(img: np.ndarray, pixel_mm: tuple[float, float], scale: float) -> np.ndarray:
    """An ``(h, w, 3)`` image of pixels of ``pixel_mm = (row, column)`` mm resized to ``scale`` pixels per mm."""
    h, w = max(1, round(img.shape[0] * pixel_mm[0] * scale)), max(1, round(img.shape[1] * pixel_mm[1] * scale))
    resample = Image.NEAREST if h >= img.shape[0] and w >= img.shape[1] else Image.BILINEAR
    return np.asarray(Image.fromarray(img).resize((w, h), resample))


def _labelled(img: np.ndarray, text: str, width: int) -> np.ndarray:
    """:func:`label_tile` of ``img`` centred on a black canvas at least ``width`` wide."""
    pad = max(0, width - img.shape[1])
    return label_tile(np.pad(img, ((0, 0), (pad // 2, pad - pad // 2), (0, 0))), text)


def _ticks(lo: float, hi: float) -> tuple[float, float]:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return 0.0, 1.0
    if hi - lo < 1e-12:
        pad = abs(hi) * 0.05 or 1.0
        return lo - pad, hi + pad
    pad = (hi - lo) * 0.05
    return lo - pad, hi + pad


def _nice_step(span: float, count: int) -> float:
    """The smallest of 1, 2 or 5 times a power of ten that splits ``span`` into at most ``count - 1`` steps."""
    raw = span / max(1, count - 1)
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw * (1 - 1e-9))


def value_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round values (steps of 1, 2 or 5 times a power of ten) within ``[lo, hi]``: at most
    ``count``, or where that gives fewer than three, at most ``2 * count``."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return []
    for n in (count, 2 * count):
        step = _nice_step(hi - lo, n)
        first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
        ticks = [round(i * step, 12) for i in range(first, last + 1)]
        if len(ticks) >= 3:
            break
    return ticks


def epoch_ticks(lo: float, hi: float, count: int = 6) -> list[int]:
    """At most ``count`` whole epochs within ``[lo, hi]`` (every epoch when there are few), from epoch 1 (an axis
    padded below it holds no epoch 0)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi < lo:
        return []
    first, last = max(1, math.ceil(lo)), math.floor(hi)
    if last - first < count:
        return list(range(first, last + 1))
    step = max(1, round(_nice_step(hi - lo, count)))
    return list(range(max(step, math.ceil(lo / step) * step), last + 1, step))


def _tick_text(value: float, ticks: Sequence[float]) -> str:
    """``value`` with the decimals its ticks' spacing needs."""
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else abs(value)
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 0
    return f"{value:.{decimals}f}"


def _axes(draw: ImageDraw.ImageDraw, font: Any, box: tuple[int, int, int, int], ox: int,
          ranges: tuple[float, float, float, float]) -> None:  # fmt: skip
    """Grid lines and labels at whole epochs (x) and at a few round values (y), then the frame."""
    left, top, right, bottom = box
    x0, x1, y0, y1 = ranges
    ys = value_ticks(y0, y1)
    for val in ys:
        y = bottom - (val - y0) / (y1 - y0) * (bottom - top)
        draw.line([left, y, right, y], fill=_GRID)
        draw.text((ox + 4, y - 6), _tick_text(val, ys), fill=(0, 0, 0), font=font)
    for val in epoch_ticks(x0, x1):
        x = left + (val - x0) / (x1 - x0) * (right - left)
        draw.line([x, top, x, bottom], fill=_GRID)
        draw.text((x - 3 * len(str(val)), bottom + 4), str(val), fill=(0, 0, 0), font=font)
    draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))


#: the light grey of the plots' grid lines
_GRID = (220, 220, 220)


def line_plot(
    panels: Sequence[tuple[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]]], size: tuple[int, int] = (420, 300)
) -> np.ndarray:
    """Panels side by side, each a line plot of named ``(x, y)`` series with a legend, whole epochs marked on the
    x axis and a few round values on the y axis (:func:`epoch_ticks`, :func:`value_ticks`).

    Args:
        panels: ``(title, {series name: (x values, y values)})`` per panel; non-finite points are skipped.
        size: ``(width, height)`` of one panel in pixels.

    Returns:
        ``(height, width * len(panels), 3)`` uint8 RGB image on a white background.
    """
    if not panels:
        raise ValueError("line_plot needs at least one panel")
    w, h = size
    out = Image.new("RGB", (w * len(panels), h), (255, 255, 255))
    draw, font = ImageDraw.Draw(out), figure_font()
    for p, (title, series) in enumerate(panels):
        ox, left, right, top, bottom = p * w, p * w + 56, p * w + w - 12, 22, h - 30
        pts = {k: [(float(a), float(b)) for a, b in zip(*v) if math.isfinite(float(a)) and math.isfinite(float(b))]
               for k, v in series.items()}  # fmt: skip
        xs = [a for v in pts.values() for a, _ in v] or [0.0, 1.0]
        ys = [b for v in pts.values() for _, b in v] or [0.0, 1.0]
        (x0, x1), (y0, y1) = _ticks(min(xs), max(xs)), _ticks(min(ys), max(ys))
        _axes(draw, font, (left, top, right, bottom), ox, (x0, x1, y0, y1))
        draw.text((ox + 6, 4), title, fill=(0, 0, 0), font=font)
        draw.text(((left + right) // 2 - 14, bottom + 14), "epoch", fill=(0, 0, 0), font=font)

        def to_px(a: float, b: float) -> tuple[float, float]:
            return left + (a - x0) / (x1 - x0) * (right - left), bottom - (b - y0) / (y1 - y0) * (bottom - top)

        for i, (name, v) in enumerate(pts.items()):
            colour = _LINE_COLOURS[i % len(_LINE_COLOURS)]
            xy = [to_px(a, b) for a, b in v]
            if len(xy) > 1:
                draw.line(xy, fill=colour, width=2)
            for x, y in xy:
                draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
            draw.text((right - 110, top + 4 + 12 * i), f"- {name}", fill=colour, font=font)
    return np.asarray(out)


def save_png(img: np.ndarray, path: str | Path) -> Path:
    """Write an ``(H, W, 3)`` uint8 image as PNG, atomically."""
    with atomic_write(path) as tmp:
        Image.fromarray(np.ascontiguousarray(img)).save(tmp, format="PNG")
    return Path(path)


def add_image(writer: Any, tag: str, img: np.ndarray, step: int) -> None:
    """Put an ``(H, W, 3)`` uint8 image in TensorBoard (no-op without a writer)."""
    if writer is not None:
        writer.add_image(tag, np.ascontiguousarray(img), global_step=int(step), dataformats="HWC")
        writer.flush()
