"""Dependency-light pictures (PIL only): the convergence plot (loss on a log scale and, when available, the held-out
error and PSNR, at each evaluation of the history) and the orthogonal mid-slices of the reference, FBP,
reconstruction and error (drawn by :func:`medgmae.engine.figures.orthogonal_views`, as the toolkit's other slice
pictures)."""

from __future__ import annotations

import math

__all__ = ["draw_curve", "draw_slices"]


#: Margins of a panel (pixels): the value labels sit left of the plotted area, the title above it and the
#: iteration labels below it, so that no marker covers a label.
_LEFT, _TOP, _BOTTOM, _RIGHT = 64, 18, 18, 10


def _series_box(draw, box, xs, ys, colour, label, log=False, level=None):
    """One panel: the series ``(xs, ys)`` (points with ``y`` missing, non-finite or, on a log scale, not positive
    are left out) in ``box = (x0, y0, x1, y1)``, its range written beside the plotted area; ``level``: a
    ``(value, name)`` drawn as a dashed grey line across the panel (within the range shown)."""
    x0, y0, x1, y1 = box
    draw.rectangle(box, outline=(0, 0, 0))
    draw.text((x0 + 4, y0 + 3), label, fill=colour)
    pts = [(x, math.log10(y) if log else y) for x, y in zip(xs, ys)
           if y is not None and math.isfinite(y) and (y > 0 or not log)]  # fmt: skip
    if not pts:
        return
    px0, py0, px1, py1 = x0 + _LEFT, y0 + _TOP, x1 - _RIGHT, y1 - _BOTTOM  # the plotted area
    xmin, xmax = min(xs), max(xs)
    ys_shown = [p[1] for p in pts] + ([level[0]] if level is not None and math.isfinite(level[0]) and not log else [])
    ymin, ymax = min(ys_shown), max(ys_shown)
    xmax, ymax = (xmax if xmax > xmin else xmin + 1), (ymax if ymax > ymin else ymin + 1e-6)
    scr = [(px0 + (x - xmin) / (xmax - xmin) * (px1 - px0), py1 - (y - ymin) / (ymax - ymin) * (py1 - py0)) for x, y in pts]
    if len(ys_shown) > len(pts):
        ly = py1 - (level[0] - ymin) / (ymax - ymin) * (py1 - py0)
        for dx in range(px0, px1, 8):
            draw.line([(dx, ly), (min(dx + 4, px1), ly)], fill=(120, 120, 120), width=1)
        draw.text((px0 + 4, ly - 11 if ly - 11 > py0 else ly + 2), level[1], fill=(80, 80, 80))
    if len(scr) > 1:
        draw.line(scr, fill=colour, width=2)
    for p in scr:
        draw.ellipse((p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2), fill=colour)
    grey = (80, 80, 80)
    lo, hi = (10**ymin, 10**ymax) if log else (ymin, ymax)
    draw.text((x0 + 4, py0 - 4), f"{hi:.3g}", fill=grey)
    draw.text((x0 + 4, py1 - 6), f"{lo:.3g}", fill=grey)
    draw.text((px0 - 2, py1 + 4), f"it {int(xmin)}", fill=grey)
    right = f"it {int(xmax)}"
    draw.text((px1 - 6 * len(right), py1 + 4), right, fill=grey)


def draw_curve(history: list, path, holdout_errors: list | None = None, fbp_psnr: float | None = None,
               start_psnr: float | None = None) -> None:
    """Write a PNG of ``history`` records (``iteration``, ``loss``, optional ``holdout_error`` and ``psnr``), one
    panel each, atomically. ``holdout_errors``: ``(iteration, error)`` pairs of another run (the held-out run
    before a refit) to draw in the held-out panel instead of the records'. ``fbp_psnr``: the FBP's PSNR, a dashed
    line in the PSNR panel (where the run passes FBP). ``start_psnr``: the initial Gaussians' PSNR, the PSNR
    panel's point at iteration 0."""
    from PIL import Image, ImageDraw

    from medgmae.files import atomic_write

    xs = [r["iteration"] for r in history]
    if holdout_errors is None and any("holdout_error" in r for r in history):
        holdout_errors = [(r["iteration"], r.get("holdout_error")) for r in history]
    panels = [(xs, [r.get("loss") for r in history], (200, 40, 40), "projection loss (log)", True, None)]
    if holdout_errors:
        panels.append(([i for i, _ in holdout_errors], [e for _, e in holdout_errors], (40, 140, 60), "held-out views: relative error (log)", True, None))
    if any("psnr" in r for r in history):
        level = None if fbp_psnr is None else (float(fbp_psnr), f"FBP {fbp_psnr:.2f} dB")
        start = [] if start_psnr is None else [(0, start_psnr)]
        points = start + [(r["iteration"], r.get("psnr")) for r in history]
        panels.append(([i for i, _ in points], [v for _, v in points], (30, 90, 200), "PSNR (dB)", False, level))
    img = Image.new("RGB", (640, 10 + 235 * len(panels)), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for i, (x, y, colour, label, log, level) in enumerate(panels):
        top = 10 + 235 * i
        _series_box(draw, (10, top, 630, top + 225), x, y, colour, label, log=log, level=level)
    with atomic_write(path) as tmp:
        img.save(tmp, format="PNG")


def draw_slices(volumes: dict, path, affine, reference=None) -> tuple[int, int]:
    """Write a PNG of the sagittal, coronal and axial mid-slices of each volume (one row each), drawn to scale and
    shown radiologically like every slice picture of the toolkit (:func:`medgmae.engine.figures.orthogonal_views`
    of the mid-slices of the volumes reoriented to RAS).

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

    from medgmae.engine.figures import mid_slices, orthogonal_views, ras_oriented, save_png, voxel_sizes

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
    title = f"voxels {voxel_sizes(spacing)}; grey window [{lo:.4g}, {hi:.4g}] /mm"
    img = orthogonal_views([mid_slices(v) for v, _ in ras], spacing, [p[0] for p in panels], title, coloured=[p[4] for p in panels])
    save_png(img, path)
    return img.shape[1], img.shape[0]
