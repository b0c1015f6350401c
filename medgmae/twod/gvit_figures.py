"""Pictures of a GViT evaluation: the confusion matrix and the explanation images.

* :func:`save_confusion_matrix_png`: the row-normalised confusion matrix as a heat map with counts;
* :func:`save_explanation_png`: an image, its Gaussians drawn as 2-sigma ellipses coloured by ``det(Sigma)`` (the
  paper's saliency proxy: small, yellow = class-relevant; large, purple = background), and their rendering;
* :func:`explanation_name`: its file name, from the image's file name and the true and predicted classes.

:func:`~medgmae.twod.gvit_eval.evaluate_gvit` writes them.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from medgmae.data.reader import volume_stem
from medgmae.engine.figures import colormap, drawable, figure_font, label_tile, save_png, tile_grid
from medgmae.files import atomic_write
from medgmae.temp_names import NAME_BYTES, fitted_name
from medgmae.twod.gvit import Gaussians2D
from medgmae.twod.images import IMAGE_SUFFIXES

__all__ = ["save_confusion_matrix_png", "ellipse_points", "explanation_name", "save_explanation_png", "ELLIPSES_CAPTION"]

#: The caption of an explanation's middle panel (its ellipses, 2 sigma, coloured by det(Sigma)); it fits a 256-pixel panel.
ELLIPSES_CAPTION = "2 sigma; det(Sigma): yellow small, purple large"


def save_confusion_matrix_png(cm: np.ndarray, class_names: Sequence[str], path: str | Path, cell: int = 48) -> Path:
    """Row-normalised confusion matrix as a heat map with counts; rows = true class."""
    cm = np.asarray(cm)
    class_names = [drawable(c) for c in class_names]  # letters the font lacks as their plain forms
    n = len(class_names)
    font = figure_font()
    label_w = 8 + 7 * max(len(str(c)) for c in class_names)
    top, title = 24, "true (rows) vs predicted (columns)"
    width = max(label_w + n * cell + 8, int(font.getlength(title)) + 8)  # the title whole, for two classes too
    img = Image.new("RGB", (width, top + label_w + n * cell + 8), "white")
    draw = ImageDraw.Draw(img)
    draw.text((4, 4), title, fill="black", font=font)
    rows = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    colors = colormap(rows.ravel()).reshape(n, n, 3)
    y0 = top + label_w
    for i in range(n):
        draw.text((4, y0 + i * cell + cell // 2 - 5), str(class_names[i]), fill="black", font=font)
        # column headers: the whole name turned 90 degrees (read bottom to top), ending just above its column
        label = _vertical_text(str(class_names[i]), font)
        img.paste(label, (label_w + i * cell + (cell - label.width) // 2, y0 - 4 - label.height), label)
        for j in range(n):
            x, y = label_w + j * cell, y0 + i * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=tuple(int(c) for c in colors[i, j]), outline="white")
            draw.text((x + 4, y + cell // 2 - 5), str(int(cm[i, j])), fill="white" if rows[i, j] < 0.6 else "black", font=font)
    with atomic_write(path) as tmp:
        img.save(tmp, format="PNG")
    return Path(path)


def ellipse_points(mean: Sequence[float], scales: Sequence[float], angle: float, image_size: Sequence[int],
                   nsigma: float = 2.0, n: int = 32) -> list[tuple[float, float]]:  # fmt: skip
    """Pixel-coordinate polygon of a Gaussian's ``nsigma`` ellipse (the renderer's frame: x right, y down)."""
    h, w = image_size
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    ca, sa = math.cos(angle), math.sin(angle)
    u = nsigma * scales[0] * np.cos(t)
    v = nsigma * scales[1] * np.sin(t)
    x = mean[0] + ca * u - sa * v
    y = mean[1] + sa * u + ca * v
    return list(zip(((x + 1) * w / 2).tolist(), ((y + 1) * h / 2).tolist()))


def _to_rgb(img: torch.Tensor, size: int) -> Image.Image:
    arr = img.detach().float().cpu().clamp(0, 1)
    arr = arr.expand(3, -1, -1) if arr.shape[0] == 1 else arr[:3]
    pil = Image.fromarray((arr.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8), mode="RGB")
    return pil.resize((size, size), Image.NEAREST)


def save_explanation_png(image: torch.Tensor, gaussians: Gaussians2D, path: str | Path, rendered: torch.Tensor | None = None,
                         title: str = "", size: int = 256) -> Path:  # fmt: skip
    """Image | 2-sigma ellipses coloured by ``log det(Sigma)`` over the image | rendering, side by side, each panel
    captioned in a band of its own (:func:`~medgmae.engine.figures.label_tile`): ``title`` over the image,
    :data:`ELLIPSES_CAPTION` over the ellipses, ``rendering`` over the rendering; written atomically.

    Args:
        image: ``(C, H, W)`` in ``[0, 1]``.
        gaussians: one image's Gaussians (batch size 1).
        path: PNG to write.
        rendered: optional ``(C, H, W)`` rendering of the Gaussians.
        title: the image panel's caption (``"image"`` when empty).
        size: panel edge in pixels.
    """
    means, scales = gaussians.means[0].detach().cpu(), gaussians.scales[0].detach().cpu()
    angles, opac = gaussians.angles[0].detach().cpu(), gaussians.opacities[0].detach().cpu()
    logdet = torch.log(gaussians.determinants()[0].detach().cpu().clamp_min(1e-30)).numpy()
    lo, hi = float(logdet.min()), float(logdet.max())
    colors = colormap(1.0 - (logdet - lo) / max(hi - lo, 1e-12))  # small det -> yellow
    panels = [_to_rgb(image, size)]
    over = _to_rgb(image, size).convert("RGBA")
    layer = Image.new("RGBA", over.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    for k in np.argsort(-logdet):  # large first, so that small (salient) ellipses stay visible on top
        pts = ellipse_points(means[k].tolist(), scales[k].tolist(), float(angles[k]), (size, size))
        col = tuple(int(c) for c in colors[k])
        draw.polygon(pts, outline=col + (int(100 + 155 * float(opac[k])),))
    panels.append(Image.alpha_composite(over, layer).convert("RGB"))
    if rendered is not None:
        panels.append(_to_rgb(rendered, size))
    captions = [title or "image", ELLIPSES_CAPTION, "rendering"]
    tiles = [label_tile(np.asarray(p), text) for p, text in zip(panels, captions)]  # each caption over its own panel
    return save_png(tile_grid([tiles]), path)


def _vertical_text(text: str, font) -> Image.Image:
    """``text`` in black on a transparent strip turned 90 degrees counter-clockwise (a column header)."""
    left, upper, right, lower = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), text, font=font)
    strip = Image.new("RGBA", (max(1, right) + 2, max(1, lower) + 2), (255, 255, 255, 0))
    ImageDraw.Draw(strip).text((1, 1), text, fill="black", font=font)
    return strip.rotate(90, expand=True)


def explanation_name(number: int, path: str | Path | None, true: str, predicted: str) -> str:
    """An explanation's file name, ``<number>_<source>_<true>_pred-<predicted>.png``, in the file system's 255 bytes.

    ``<source>`` is the image's file name without its ending, after its folders below its class folder, the nearest
    folder named as its class (``p1-IM0001`` for ``<class>/p1/IM0001.png``; none for an image in its class folder, or
    listed by a CSV outside one); no ``<source>_`` without a ``path``. Characters other than letters, digits, ``-``
    and ``_`` become ``_``. A name too long keeps the start of its source and 8 hex digits of its hash
    (:func:`~medgmae.temp_names.fitted_name`: distinct images stay apart), or, where the class names alone take
    over half of the 255 bytes, the start of the whole name and its hash.

    Args:
        number: the explanation's number (3 digits at least).
        path: the image file, or ``None``.
        true, predicted: the class names.

    Returns:
        The file name.
    """
    source = ""
    if path is not None:
        parents = Path(path).parent.parts
        below = next((parents[k + 1 :] for k in range(len(parents) - 1, -1, -1) if parents[k] == str(true)), ())
        source = "_" + _safe("-".join((*below, volume_stem(path, IMAGE_SUFFIXES))))
    head, end = f"{number:03d}{source}", f"_{_safe(true)}_pred-{_safe(predicted)}.png"
    return fitted_name(head, end) if len(os.fsencode(end)) <= NAME_BYTES // 2 else fitted_name(head + end[:-4], ".png")


def _safe(name: str) -> str:
    """``name`` with characters other than letters, digits, ``-`` and ``_`` as ``_``."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in str(name))
