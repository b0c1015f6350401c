"""Writing 2D images as 8-bit PNG: one image (:func:`save_png`) or a labelled grid of them (:func:`save_png_grid`).

Images are ``(C, H, W)`` or ``(H, W)`` in ``[0, 1]`` (``C`` 1 or 3); every file is written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from medgmae.files import atomic_write
from medgmae.words import plural

__all__ = ["save_png", "save_png_grid"]


def _to_uint8(img: torch.Tensor | np.ndarray) -> np.ndarray:
    arr = torch.as_tensor(img).detach().float().cpu().clamp(0, 1).numpy()
    if arr.ndim == 2:
        arr = arr[None]
    arr = (arr * 255.0 + 0.5).astype(np.uint8)
    return arr[0] if arr.shape[0] == 1 else arr[:3].transpose(1, 2, 0)


def save_png(img: torch.Tensor | np.ndarray, path: str | os.PathLike) -> Path:
    """Save a ``(C, H, W)`` or ``(H, W)`` image in ``[0, 1]`` (bool masks: 0/255) as 8-bit PNG, atomically."""
    from PIL import Image

    arr = _to_uint8(img)
    with atomic_write(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
    return Path(path)


def save_png_grid(
    images: torch.Tensor | Sequence, labels: Sequence[str], path: str | os.PathLike, ncols: int | None = None,
    min_tile: int = 128,
) -> Path:
    """Tile ``N`` images ``(N, C, H, W)`` (``C`` 1 or 3, values in ``[0, 1]``) into one PNG, row-major, each
    enlarged by an integer factor to at least ``min_tile`` pixels and labelled above
    (:func:`medgmae.engine.figures.label_tile`); written atomically.

    Raises:
        ValueError: not a non-empty ``(N, C, H, W)`` stack, or not one label per image.
    """
    from medgmae.engine.figures import label_tile, tile_grid, upscale
    from medgmae.engine.figures import save_png as save_rgb_png

    x = torch.stack([torch.as_tensor(i) for i in images]) if not isinstance(images, torch.Tensor) else images
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or x.shape[0] == 0:
        raise ValueError(f"images must be a non-empty (N, C, H, W) stack, got {tuple(x.shape)}")
    if len(labels) != x.shape[0]:
        raise ValueError(f"{plural(len(labels), 'label')} for {plural(x.shape[0], 'image')}")
    factor = max(1, -(-int(min_tile) // max(x.shape[-2:])))
    tiles = []
    for img, text in zip(x, labels):
        rgb = _to_uint8(img)
        rgb = np.repeat(rgb[..., None], 3, axis=-1) if rgb.ndim == 2 else rgb
        tiles.append(label_tile(upscale(rgb, factor), str(text)))
    ncols = len(tiles) if ncols is None else max(1, min(int(ncols), len(tiles)))
    return save_rgb_png(tile_grid([tiles[i : i + ncols] for i in range(0, len(tiles), ncols)]), path)
