"""A dependency-light convergence plot (PIL only): loss (log scale) and, when available, PSNR per iteration."""

from __future__ import annotations

import math

__all__ = ["draw_curve"]


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


def draw_curve(history: list, path) -> None:
    """Write a PNG of ``history`` records (``iteration``, ``loss``, optional ``psnr``) atomically."""
    from PIL import Image, ImageDraw

    from recon.io import atomic_write

    img = Image.new("RGB", (640, 480), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    xs = [r["iteration"] for r in history]
    _series_box(draw, (10, 10, 630, 235), xs, [r.get("loss") for r in history], (200, 40, 40), "projection loss (log)", log=True)
    if any("psnr" in r for r in history):
        _series_box(draw, (10, 245, 630, 470), xs, [r.get("psnr") for r in history], (30, 90, 200), "PSNR (dB)")
    with atomic_write(path) as tmp:
        img.save(tmp, format="PNG")
