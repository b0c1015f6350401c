"""Validation with pictures for 2D GMAE pre-training (the ``gmae2d_pretrain`` bundle).

The 3D pre-training handlers do the scoring: :class:`~medgmae.mae_training.validation.MaskedValidationHandler` (masked
PSNR / SSIM on fixed images with fixed masks, ``best_model.pt``; :class:`GMAE2DValidationHandler` logs them as images) and
:class:`~medgmae.mae_training.summary.PretrainSummary` (curves and closing summary). This module adds the 2D parts:
the fixed validation images (:func:`gmae2d_validation_dataset`), the picture of each (:func:`gmae2d_figure`:
input, masked input, rendering and the depth layers of the Gaussians, nearest first) written every few epochs by
:class:`GMAE2DPictureHandler`, and the follow-up commands of :class:`GMAE2DSummary`.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from torch.utils.data import Subset

from medgmae.engine import is_main_process
from medgmae.engine.figures import add_image, label_tile, save_png, tile_grid, upscale
from medgmae.words import plural
from medgmae.files import absolute_path
from medgmae.mae_training.summary import PretrainSummary
from medgmae.mae_training.validation import MaskedValidationHandler
from medgmae.whole_numbers import positive_count

__all__ = ["GMAE2DPictureHandler", "GMAE2DSummary", "GMAE2DValidationHandler", "gmae2d_figure", "gmae2d_validation_dataset",
           "picture_layers_check"]

logger = logging.getLogger("medgmae.twod")


def gmae2d_validation_dataset(
    dataset_dir: str = "", image_size=(64, 64), in_channels: int = 1, num_phantoms: int = 8, num_images: int = 4,
    seed: int = 0, window=None,
):  # fmt: skip
    """The fixed validation images of 2D GMAE pre-training (no random flips).

    Args:
        dataset_dir: the training image folder; ``""`` for phantom slices.
        image_size: ``(H, W)``.
        in_channels: 1 or 3.
        num_phantoms: phantom volumes used for training (seeds ``seed .. seed + num_phantoms - 1``); validation
            slices come from the held-out volume ``seed + num_phantoms``.
        num_images: validation images (an image folder gives its first ``num_images`` images: they are not held out);
            where there are fewer (a smaller folder, fewer distinct slices of the held-out phantom), those there
            are, with a one-line notice.
        seed: the training phantom seed.
        window: intensity window of NIfTI/DICOM files and phantom slices, as in training
            (:func:`~medgmae.twod.data2d.gmae2d_dataset`).

    Returns:
        A dataset of ``{"image": (C, H, W)}`` items.
    """
    from medgmae.twod.data2d import gmae2d_dataset

    if int(num_images) < 1:
        raise ValueError(f"val_images must be >= 1, got {num_images}")
    if dataset_dir:
        ds = gmae2d_dataset(dataset_dir, image_size, in_channels, flip=False, cache=False, log=False, window=window)
        ds, where = Subset(ds, range(min(int(num_images), len(ds)))), f"dataset_dir {dataset_dir} holds"
    else:
        ds = gmae2d_dataset("", image_size, in_channels, num_phantom_cases=1, slices_per_case=int(num_images),
                            seed=int(seed) + int(num_phantoms), flip=False, cache=False, log=False, window=window)  # fmt: skip
        where = "the held-out phantom has"
    if len(ds) < int(num_images):
        logger.warning("--val_images %d: %s %s, so validation uses %s", int(num_images), where,
                       plural(len(ds), "distinct image"), "it" if len(ds) == 1 else f"those {len(ds)}")  # fmt: skip
    return ds


def _rgb(img: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` in ``[0, 1]`` (C = 1 or 3) -> ``(H, W, 3)`` uint8."""
    img = np.clip(np.nan_to_num(img.astype(np.float64)), 0.0, 1.0)
    img = np.repeat(img, 3, 0) if img.shape[0] == 1 else img[:3]
    return np.round(img.transpose(1, 2, 0) * 255).astype(np.uint8)


def gmae2d_figure(
    image: np.ndarray, pred: np.ndarray, mask: np.ndarray, layers: np.ndarray, min_tile: int = 96
) -> list[np.ndarray]:
    """One row of labelled tiles: input, masked input (hidden patches grey), rendering, and each depth layer.

    Args:
        image: ``(C, H, W)`` in ``[0, 1]``.
        pred: ``(C, H, W)`` rendering.
        mask: ``(1, H, W)``, 1 where the patch was hidden from the encoder.
        layers: ``(L, C, H, W)`` renderings of the depth layers, nearest first.
        min_tile: tiles are enlarged by an integer factor to at least this many pixels.

    Returns:
        ``3 + L`` tiles ``(f H + 14, f W, 3)``.
    """
    f = max(1, math.ceil(min_tile / max(image.shape[1:])))
    masked = np.where(mask > 0, 0.25 * image + 0.75 * 0.5, image)
    named = [("input", image), ("masked", masked), ("rendering", pred)]
    named += [(f"layer {i + 1}" + (" (near)" if i == 0 else ""), layer) for i, layer in enumerate(layers)]
    return [label_tile(upscale(_rgb(a), f), name) for name, a in named]


def picture_layers_check(num_gaussians: Any) -> Any:
    """The bundle's check of ``picture_layers`` (``checked_settings``): a positive integer of at most K, the
    ``num_gaussians`` setting (a layer holds one Gaussian or more; a bad ``num_gaussians`` is left to its own check).

    Returns:
        ``check(picture_layers)``, raising ``ValueError`` naming the value and the bound.
    """
    from medgmae.setting_kinds import kind_problem

    def check(value: Any) -> None:
        if problem := kind_problem(value, "positive_int"):
            raise ValueError(problem)
        if kind_problem(num_gaussians, "positive_int") is None and int(value) > int(num_gaussians):
            raise ValueError(f"expected at most --num_gaussians {int(num_gaussians)} (each depth layer holds one "
                             f"Gaussian or more), got {value!r}")  # fmt: skip

    return check


class GMAE2DPictureHandler:
    """Every ``interval`` epochs (and at the last), :func:`gmae2d_figure` rows of the first validation images.

    Writes ``output_dir/pictures/epoch_NNNN.png`` and TensorBoard ``val/reconstruction``; main process only. The
    images and masks are the validator's fixed ones.

    Args:
        validator: the run's :class:`~medgmae.mae_training.validation.MaskedValidationHandler`.
        output_dir: run folder.
        interval: epochs between pictures.
        num_layers: depth layers shown (the Gaussians sorted by depth, cut in equal groups).
        num_images: rows (validation images) in the picture.
        summary_writer: TensorBoard ``SummaryWriter`` (optional).
    """

    def __init__(
        self, validator: Any, output_dir: str | Path, interval: int = 5, num_layers: int = 4, num_images: int = 4,
        summary_writer: Any = None,
    ) -> None:  # fmt: skip
        self.interval = positive_count(interval, "picture_interval")
        self.num_layers, self.num_images = positive_count(num_layers, "num_layers"), positive_count(num_images, "num_images")
        self.validator, self.folder, self.writer = validator, Path(output_dir) / "pictures", summary_writer

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=self._due), self)

    def _due(self, engine: Engine, epoch: int) -> bool:
        return epoch % self.interval == 0 or epoch == engine.state.max_epochs

    @torch.no_grad()
    def figure(self, epoch: int) -> np.ndarray:
        """The picture with the current weights: one row per validation image."""
        from medgmae.twod.layering import render_layers

        model = self.validator.model
        rows = []
        for i in range(min(self.num_images, len(self.validator.crops()))):
            x, out = self.validator.masked_output(i)
            num_layers = min(self.num_layers, model.num_gaussians)
            layers, _ = render_layers(out.gaussians, num_layers, x.shape[-2:], model.render_backend)
            arrays = [t[0].float().cpu().numpy() for t in (x, out.pred, out.mask, layers)]
            rows.append(gmae2d_figure(*arrays))
        return label_tile(tile_grid(rows), f"epoch {epoch}: fixed validation images and masks")

    def __call__(self, engine: Engine) -> None:
        if not is_main_process():
            return
        img = self.figure(engine.state.epoch)
        path = save_png(img, self.folder / f"epoch_{engine.state.epoch:04d}.png")
        add_image(self.writer, "val/reconstruction", img, engine.state.iteration)  # on the scalars' axis
        logger.info("epoch %d: wrote %s", engine.state.epoch, path)


class GMAE2DValidationHandler(MaskedValidationHandler):
    """:class:`~medgmae.mae_training.validation.MaskedValidationHandler` whose log line counts whole images (the 2D
    validation inputs), not crops."""

    item_name = "images"


class GMAE2DSummary(PretrainSummary):
    """:class:`~medgmae.mae_training.summary.PretrainSummary` for 2D GMAE: the follow-up commands are ``medgmae-2d``'s
    zero-shot tools on this run's ``model.pt``.

    Args:
        output_dir: the run folder.
        history: the run's :class:`~medgmae.engine.MetricHistory`.
        example_image: an image for the commands; when empty, the first image of ``example_dataset``: its file, or,
            for a generated phantom slice, the slice written to ``output_dir/example_slice.png``.
        example_dataset: the validation dataset (:func:`gmae2d_validation_dataset`); None: ``slice.png`` stands in.
        kwargs: further :class:`~medgmae.mae_training.summary.PretrainSummary` arguments.
    """

    def __init__(
        self, output_dir: str | Path, history: Any, example_image: str = "", example_dataset: Any = None, **kwargs: Any
    ) -> None:
        super().__init__(output_dir, history, model_kind="gmae2d", example_image=example_image, **kwargs)
        self.example_dataset = example_dataset
        self.title = "2D GMAE pre-training finished"
        self.model_note = "last epoch: zero-shot layers, figure-ground, edges"
        self.encoder_note = "the 2D ViT encoder's weights alone, to initialise your own 2D model; no bundle here uses it"

    def _example(self) -> str:
        """The image the commands name (see the class's ``example_image``), written first if it is a phantom's."""
        ds = self.example_dataset
        if self.example_image or ds is None or len(ds) == 0:
            return self.example_image or "slice.png"
        raw = getattr(ds.dataset if isinstance(ds, Subset) else ds, "data", None)  # a Subset's first index is 0
        first = raw[0].get("image") if raw else None
        if isinstance(first, (str, os.PathLike)):
            return str(absolute_path(first))  # as the other paths of summary.json
        from medgmae.twod.pngs import save_png as save_image_png  # (C, H, W) in [0, 1], as medgmae-2d reads it back

        return str(save_image_png(ds[0]["image"], self.out / "example_slice.png"))

    def commands(self) -> dict[str, str]:
        model, image = shlex.quote(str(self.out / "model.pt")), shlex.quote(self._example())
        out = {tool: shlex.quote(str(self.out / tool)) for tool in ("layers", "segment", "edges")}
        return {f"zero-shot {t}": f"medgmae-2d {t} --checkpoint {model} --image {image} --out {o}" for t, o in out.items()}
