"""Dependency-light pictures (PIL only): the convergence plot (loss on a log scale and, when available, PSNR per
iteration) and three orthogonal mid-slices of the reference, FBP, reconstruction and error."""

from __future__ import annotations

import math

__all__ = ["draw_curve", "draw_slices"]


def _series_box(draw, box, xs, ys, colour, label, log=False):
    x0, y0, x1, y1 = box
    draw.rectangle(box, outline=(0, 0, 0))
    vals = [math.log10(y) if log else y for y in ys if y is not None and (y > 0 or not log)]
    pts = [(x, math.log10(y) if log else y) for x, y in zip(xs, ys) if y is not None and (y > 0 or not log) and math.isfinite(y)]
    draw.text((x0 + 4, y0 + 2), label, fill=colour)
    if len(pts) < 1 or not vals:
        return
    xmin, xmax = min(xs), max(xs)
    ymin, ymax = min(p[1] for p in pts), max(p[1] for p in pts)
    xmax, ymax = (xmax if xmax > xmin else xmin + 1), (ymax if ymax > ymin else ymin + 1e-6)
    scr = [(x0 + 8 + (x - xmin) / (xmax - xmin) * (x1 - x0 - 16), y1 - 8 - (y - ymin) / (ymax - ymin) * (y1 - y0 - 24)) for x, y in pts]
    if len(scr) > 1:
        draw.line(scr, fill=colour, width=2)
    for p in scr:
        draw.ellipse((p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2), fill=colour)
    lo, hi = (10**ymin, 10**ymax) if log else (ymin, ymax)
    draw.text((x0 + 4, y1 - 14), f"{lo:.3g}", fill=(80, 80, 80))
    draw.text((x0 + 4, y0 + 14), f"{hi:.3g}", fill=(80, 80, 80))
    draw.text((x1 - 60, y1 - 14), f"it {int(xmax)}", fill=(80, 80, 80))


def draw_curve(history: list, path, holdout_errors: list | None = None) -> None:
    """Write a PNG of ``history`` records (``iteration``, ``loss``, optional ``holdout_error`` and ``psnr``), one
    panel each, atomically. ``holdout_errors``: ``(iteration, error)`` pairs of another run (the held-out run
    before a refit) to draw in the held-out panel instead of the records'."""
    from PIL import Image, ImageDraw

    from medgmae.files import atomic_write

    xs = [r["iteration"] for r in history]
    if holdout_errors is None and any("holdout_error" in r for r in history):
        holdout_errors = [(r["iteration"], r.get("holdout_error")) for r in history]
    panels = [(xs, [r.get("loss") for r in history], (200, 40, 40), "projection loss (log)", True)]
    if holdout_errors:
        panels.append(([i for i, _ in holdout_errors], [e for _, e in holdout_errors], (40, 140, 60), "held-out views: relative error (log)", True))
    if any("psnr" in r for r in history):
        panels.append((xs, [r.get("psnr") for r in history], (30, 90, 200), "PSNR (dB)", False))
    img = Image.new("RGB", (640, 10 + 235 * len(panels)), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for i, (x, y, colour, label, log) in enumerate(panels):
        top = 10 + 235 * i
        _series_box(draw, (10, top, 630, top + 225), x, y, colour, label, log=log)
    with atomic_write(path) as tmp:
        img.save(tmp, format="PNG")


_CELL = 160
_HEADER = 18


def _mid_slices(vol):
    """Axial, coronal and sagittal mid-slices of a ``(D, H, W)`` array (each 2D, rows top to bottom)."""
    import numpy as np

    d, h, w = vol.shape
    return [vol[d // 2], np.flipud(vol[:, h // 2, :]), np.flipud(vol[:, :, w // 2])]


def _to_cell(img2d, lo: float, hi: float, colour: bool, pixel_mm=(1.0, 1.0)):
    """A ``_CELL`` x ``_CELL`` RGB PIL image of a slice windowed to ``[lo, hi]``, drawn to scale (a pixel is
    ``pixel_mm = (row, column)`` mm) and letterboxed."""
    import numpy as np
    from PIL import Image

    x = np.clip((np.asarray(img2d, dtype=np.float64) - lo) / max(hi - lo, 1e-12), 0, 1)
    if colour:  # black -> red -> yellow -> white for the error maps
        rgb = np.stack([np.clip(3 * x, 0, 1), np.clip(3 * x - 1, 0, 1), np.clip(3 * x - 2, 0, 1)], -1)
    else:
        rgb = np.repeat(x[..., None], 3, -1)
    im = Image.fromarray((rgb * 255).round().astype(np.uint8))
    w_mm, h_mm = im.width * pixel_mm[1], im.height * pixel_mm[0]
    scale = _CELL / max(w_mm, h_mm)
    im = im.resize((max(1, round(w_mm * scale)), max(1, round(h_mm * scale))), Image.NEAREST)
    cell = Image.new("RGB", (_CELL, _CELL), (0, 0, 0))
    cell.paste(im, ((_CELL - im.width) // 2, (_CELL - im.height) // 2))
    return cell


def draw_slices(volumes: dict, path, reference=None, voxel_size=(1.0, 1.0, 1.0)) -> tuple[int, int]:
    """Write a PNG of three orthogonal mid-slices (rows: axial, coronal, sagittal) of each volume (columns).

    With a ``reference``, it comes first, every volume shares its grey window ``[min, max]``, and the last column
    is the error ``|last volume - reference|`` (black-red-yellow-white, its own range ``[0, max]``); without one,
    the window is the first volume's 1st-99th percentile range.

    Args:
        volumes: ``{title: (D, H, W) array}`` in display order (e.g. FBP, reconstruction).
        path: output PNG (written atomically).
        reference: optional ``(D, H, W)`` ground truth.
        voxel_size: ``(z, y, x)`` voxel size (mm): slices are drawn to scale.

    Returns:
        ``(width, height)`` of the image: ``(160 * columns, 18 + 3 * 160)``.
    """
    import numpy as np
    from PIL import Image, ImageDraw

    from medgmae.files import atomic_write

    if not volumes:
        raise ValueError("draw_slices needs at least one volume")
    cols = [(t, np.asarray(v, dtype=np.float64)) for t, v in volumes.items()]
    shape = cols[0][1].shape
    if len(shape) != 3 or any(v.shape != shape for _, v in cols):
        raise ValueError(f"volumes must share one (D, H, W) shape, got {[v.shape for _, v in cols]}")
    if reference is not None:
        ref = np.asarray(reference, dtype=np.float64)
        if ref.shape != shape:
            raise ValueError(f"reference shape {ref.shape} does not match the volumes {shape}")
        lo, hi = float(ref.min()), float(ref.max())
        err = np.abs(cols[-1][1] - ref)
        panels = [("reference", ref, False, lo, hi)] + [(t, v, False, lo, hi) for t, v in cols]
        panels.append((f"|{cols[-1][0]} - reference|", err, True, 0.0, float(err.max())))
    else:
        lo, hi = (float(q) for q in np.percentile(cols[0][1], [1, 99]))
        panels = [(t, v, False, lo, hi) for t, v in cols]
    size = (_CELL * len(panels), _HEADER + 3 * _CELL)
    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    sz, sy, sx = (float(v) for v in voxel_size)
    pixels = [(sy, sx), (sz, sx), (sz, sy)]  # axial, coronal, sagittal: (row, column) mm
    for c, (title, vol, colour, a, b) in enumerate(panels):
        draw.text((c * _CELL + 4, 3), title, fill=(0, 0, 0))
        for r, sl in enumerate(_mid_slices(vol)):
            img.paste(_to_cell(sl, a, b, colour, pixels[r]), (c * _CELL, _HEADER + r * _CELL))
    with atomic_write(path) as tmp:
        img.save(tmp, format="PNG")
    return size
