"""Pictures of what pre-training learned: the reconstruction of one fixed validation crop, every few epochs.

One PNG per picture epoch (``pictures/epoch_NNNN.png``, the same image in TensorBoard as ``val/reconstruction``):
rows of the three orthogonal mid-slices (sagittal, coronal, axial) of the masked input (the patches hidden from the
encoder greyed out), the Gaussian rendering (the voxel-MAE baseline's reconstruction), the target, and, for
Gaussian models, the Gaussian centres near each slice drawn over the target and coloured by intensity.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
from ignite.engine import Engine, Events
from PIL import Image, ImageDraw

from medgmae.engine import is_main_process
from medgmae.engine.figures import (
    add_image,
    colormap,
    grey_rgb,
    label_tile,
    mid_slices,
    save_png,
    slice_point,
    tile_grid,
    upscale,
    with_orientation_letters,
)
from medgmae.whole_numbers import positive_count

__all__ = ["ValidationPictureHandler", "picture_title", "reconstruction_figure", "tile_factor"]

logger = logging.getLogger("medgmae.mae_training")

_VIEWS = ("sag", "cor", "ax")
#: the blue-grey shown over masked patches (RGB), and how much of the image shows through
_GREY, _SHOW_THROUGH = np.array([120.0, 120.0, 150.0]), 0.25


def tile_factor(shape: tuple[int, ...], min_tile: int = 160) -> int:
    """The integer enlargement that makes a slice of a volume of ``shape`` at least ``min_tile`` pixels wide."""
    return max(1, math.ceil(min_tile / max(shape)))


def picture_title(epoch: int, psnr: float, num_crops: int) -> str:
    """The picture's title: the masked PSNR of the crop shown (the first validation crop), which is not the
    validation PSNR logged when several crops are validated (that one is their mean)."""
    of = f" of {num_crops}" if num_crops > 1 else ""
    return f"epoch {epoch}: validation crop 1{of}: masked PSNR {psnr:.2f} dB"


def _masked_rgb(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A slice in grey with its masked voxels greyed out (blue-grey, the image faintly showing through)."""
    rgb = grey_rgb(img).astype(np.float64)
    m = mask > 0
    rgb[m] = _SHOW_THROUGH * rgb[m] + (1 - _SHOW_THROUGH) * _GREY
    return np.round(rgb).astype(np.uint8)


def _centres_tile(target: np.ndarray, view: int, centres: np.ndarray, values: np.ndarray, factor: int) -> np.ndarray:
    """Target slice with the centres within a slab around the slice as dots coloured by normalised intensity."""
    img = Image.fromarray(upscale(grey_rgb(mid_slices(target)[view]), factor))
    draw = ImageDraw.Draw(img)
    slab = max(1.5, max(target.shape) / 16)
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    colours = colormap((values - lo) / max(hi - lo, 1e-12))
    for (d, h, w), colour in zip(centres, colours):
        row, col, dist = slice_point(view, (d, h, w), target.shape)
        if dist <= slab:
            y, x, r = (row + 0.5) * factor, (col + 0.5) * factor, max(2, factor // 2)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(c) for c in colour), outline=(0, 0, 0))
    return np.asarray(img)


def reconstruction_figure(
    target: np.ndarray,
    pred: np.ndarray,
    mask: np.ndarray,
    centres: np.ndarray | None = None,
    intensities: np.ndarray | None = None,
    title: str = "",
    letters: bool = True,
) -> np.ndarray:
    """The picture of one crop: mid-slices of masked input, reconstruction, target (and Gaussian centres).

    Args:
        target: ``(D, H, W)`` crop in ``[0, 1]``.
        pred: ``(D, H, W)`` reconstruction (Gaussian rendering), shown clipped to ``[0, 1]``.
        mask: ``(D, H, W)`` 1 where the voxel's patch was hidden from the encoder.
        centres: ``(K, 3)`` Gaussian centres in voxel coordinates ``(d, h, w)`` of the crop (``None``: no row).
        intensities: ``(K,)`` their intensities (colour).
        title: text above the picture.
        letters: mark each tile's edges with the patient directions
            (:func:`~medgmae.engine.figures.with_orientation_letters`); only for a crop in RAS order.

    Returns:
        ``(H, W, 3)`` uint8 RGB: 3 columns of ``f * size`` pixel tiles (``f = tile_factor``), each under a 14-pixel
        label, 2-pixel gaps, 3 or 4 rows, and a 14-pixel title band.
    """
    if not target.shape == pred.shape == mask.shape or target.ndim != 3:
        raise ValueError(f"target, pred and mask must be 3D of one shape, got {target.shape}, {pred.shape}, {mask.shape}")
    f = tile_factor(target.shape)
    mark = with_orientation_letters if letters else (lambda tile, view: tile)  # noqa: E731
    rows = [[label_tile(mark(upscale(_masked_rgb(s, m), f), i), f"masked input: {_VIEWS[i]}")
             for i, (s, m) in enumerate(zip(mid_slices(target), mid_slices(mask)))]]  # fmt: skip
    for name, vol in (("rendering" if centres is not None else "reconstruction", pred), ("target", target)):
        rows.append([label_tile(mark(upscale(grey_rgb(s), f), i), f"{name}: {_VIEWS[i]}") for i, s in enumerate(mid_slices(vol))])
    if centres is not None:
        values = np.zeros(len(centres)) if intensities is None else np.asarray(intensities, dtype=np.float64)
        tiles = [mark(_centres_tile(target, i, np.asarray(centres), values, f), i) for i in range(3)]
        rows.append([label_tile(t, f"centres: {v}") for t, v in zip(tiles, _VIEWS)])
    return label_tile(tile_grid(rows), title)


class ValidationPictureHandler:
    """Every ``interval`` epochs (and at the last), a :func:`reconstruction_figure` of the first validation crop.

    Writes ``output_dir/pictures/epoch_NNNN.png`` and the same image to TensorBoard (``val/reconstruction``); main
    process only. The crop and its mask are the validator's fixed ones, so pictures of different epochs compare.

    Args:
        validator: the :class:`~medgmae.mae_training.validation.MaskedValidationHandler` of the run.
        output_dir: run folder (pictures go to its ``pictures`` sub-folder).
        interval: epochs between pictures.
        summary_writer: TensorBoard ``SummaryWriter`` (optional).
        orientation: the crops' axis codes (the run's ``PreprocessingSpec.orientation``): the tiles carry the
            patient directions at their edges when it is ``"RAS"``, the order the slices are drawn for (another
            order is drawn as it is, unmarked).
    """

    def __init__(
        self, validator: Any, output_dir: str | Path, interval: int = 5, summary_writer: Any = None, orientation: str = "RAS"
    ) -> None:
        interval = positive_count(interval, "picture_interval")
        self.letters = str(orientation).upper() == "RAS"
        self.validator, self.folder = validator, Path(output_dir) / "pictures"
        self.interval, self.writer = interval, summary_writer
        self.written: list[Path] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=self._due), self)

    def _due(self, engine: Engine, epoch: int) -> bool:
        return epoch % self.interval == 0 or epoch == engine.state.max_epochs

    def figure(self, epoch: int) -> np.ndarray:
        """The picture of the fixed crop with the current weights, titled with that crop's own masked PSNR."""
        from medgmae.mae_training.validation import masked_psnr_per_sample

        x, out = self.validator.masked_output(0)
        psnr = float(masked_psnr_per_sample(out.pred, x, out.mask)[0])
        centres = intensities = None
        if out.gaussians is not None:
            g = out.gaussians.to_voxel(tuple(x.shape[2:]))
            centres, intensities = g.means[0].float().cpu().numpy(), g.intensities[0].float().cpu().numpy()
        title = picture_title(epoch, psnr, len(self.validator.crops()))
        arrays = [t[0, 0].float().cpu().numpy() for t in (x, out.pred, out.mask)]
        return reconstruction_figure(*arrays, centres=centres, intensities=intensities, title=title, letters=self.letters)

    def __call__(self, engine: Engine) -> None:
        if not is_main_process():
            return
        epoch = engine.state.epoch
        img = self.figure(epoch)
        path = save_png(img, self.folder / f"epoch_{epoch:04d}.png")
        add_image(self.writer, "val/reconstruction", img, engine.state.iteration)  # on the scalars' axis
        self.written.append(path)
        logger.info("epoch %d: wrote %s", epoch, path)
