"""Dependency-light pictures (PIL only): the convergence plot (loss on a log scale and, when available, PSNR per
iteration) and the orthogonal mid-slices of the reference, FBP, reconstruction and error (drawn by
:func:`medgmae.engine.figures.orthogonal_slices`, as the toolkit's other slice pictures)."""

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


def draw_slices(volumes: dict, path, affine, reference=None) -> tuple[int, int]:
    """Write a PNG of the sagittal, coronal and axial mid-slices of each volume (one row each), drawn to scale and
    shown radiologically like every slice picture of the toolkit (:func:`medgmae.engine.figures.orthogonal_slices`
    on the volumes reoriented to RAS).

    With a ``reference``, it comes first, every volume shares its grey window ``[min, max]``, and the last row is
    the error ``|last volume - reference|`` (colour map, its own range ``[0, max]``); without one, the window is
    the first volume's 1st-99th percentile range.

    Args:
        volumes: ``{title: (z, y, x) array}`` in display order (e.g. FBP, reconstruction).
        path: output PNG (written atomically).
        affine: ``(4, 4)`` voxel-to-world affine of the volumes in the NIfTI's ``(x, y, z)`` index order
            (``CTGeometry.default_affine()``: that of ``recon.nii.gz``).
        reference: optional ``(z, y, x)`` ground truth.

    Returns:
        ``(width, height)`` of the image.
    """
    import numpy as np

    from medgmae.engine.figures import orthogonal_slices, ras_oriented, save_png

    if not volumes:
        raise ValueError("draw_slices needs at least one volume")
    cols = [(t, np.asarray(v, dtype=np.float64)) for t, v in volumes.items()]
    shape = cols[0][1].shape
    if len(shape) != 3 or any(v.shape != shape for _, v in cols):
        raise ValueError(f"volumes must share one (z, y, x) shape, got {[v.shape for _, v in cols]}")
    if reference is not None:
        ref = np.asarray(reference, dtype=np.float64)
        if ref.shape != shape:
            raise ValueError(f"reference shape {ref.shape} does not match the volumes {shape}")
        lo, hi = float(ref.min()), float(ref.max())
        err = np.abs(cols[-1][1] - ref)
        panels = [("reference", ref, lo, hi, False)] + [(t, v, lo, hi, False) for t, v in cols]
        panels.append((f"|{cols[-1][0]} - reference|", err, 0.0, float(err.max()), True))
    else:
        lo, hi = (float(q) for q in np.percentile(cols[0][1], [1, 99]))
        panels = [(t, v, lo, hi, False) for t, v in cols]
    ras = [ras_oriented((v.transpose(2, 1, 0) - a) / max(b - a, 1e-12), affine) for _, v, a, b, _ in panels]
    spacing = ras[0][1]
    title = f"{' x '.join(f'{s:.2f}' for s in spacing)} mm (R-L x A-P x I-S); grey window [{lo:.4g}, {hi:.4g}] /mm"
    img = orthogonal_slices([v for v, _ in ras], spacing, [p[0] for p in panels], title, coloured=[p[4] for p in panels])
    save_png(img, path)
    return img.shape[1], img.shape[0]
