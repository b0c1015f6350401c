"""GViT inference: new, unlabelled images classified by a trained model, written to ``predictions.csv``.

:func:`classify_images` reads the trained ``model.pt`` (its class names, image size, channels and intensity
``window``, as training recorded them), reads every image with the toolkit's 2D reader
(:func:`medgmae.twod.images.read_image_source`, then :func:`~medgmae.twod.images.to_model_input`, as training and
evaluation read theirs) before it classifies any, and writes ``predictions.csv`` atomically: one row per image,
``image,slice,predicted_class,probability_<class>...,window`` (softmax probabilities, in the model's class order;
``window`` last, so that the columns of earlier releases keep their places).
NIfTI/DICOM inputs are read with the ``window`` given, else the one the model records, else each by its own DICOM
window or 0.5/99.5 percentiles (:func:`~medgmae.twod.windows.input_window`); the ``window`` column says which,
``-500..500 (given)``, and is empty for pictures, which are not windowed.
``slice`` says which slice of a file holding several was classified (``axial slice 24 of 48 (numbered from 0)``
for a 3D NIfTI volume, ``frame 3 of 7 (numbered from 0)`` for a multi-frame DICOM: the middle one, as training
reads them); it is empty for pictures and single slices. A 16-bit picture of 12-bit data (values within 0..4095,
nearly black once divided by 65535) is named in a warning, as training warns of such data. Each prediction is logged, with that slice, and the
closing line counts the volumes and multi-frame files. The ``gvit_classification`` bundle's
``configs/inference.json`` calls it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from medgmae.data.datalist import DatasetError
from medgmae.files import given_more_than_once
from medgmae.file_patterns import expand_input_patterns
from medgmae.twod.gvit_predictions import PREDICTIONS_CSV, write_predictions
from medgmae.twod.data2d import listed_files, no_images_message, several_slices_notes, skipped_files_note
from medgmae.twod.images import is_windowed, read_image_source, slice_text, to_model_input
from medgmae.twod.picture_range import warn_if_picture_range_narrow
from medgmae.twod.windows import input_window, recorded_window
from medgmae.words import plural

__all__ = ["inference_images", "load_inference_model", "classify_images"]

logger = logging.getLogger("medgmae.gvit")


def inference_images(images: str | int | Sequence[str | int] | None, image_dir: str | Path | None) -> list[Path]:
    """The images to classify: ``images`` (one path or a list) and every image file under ``image_dir`` (sorted,
    recursive; the files there that are not images are left out, in one logged line), in that order, each named as
    given. Whether each can be read is the reader's check
    (:func:`classify_images` names every missing or unreadable file in one error).

    Args:
        images: image files or file patterns (``'data/*/*.png'``, :func:`~medgmae.file_patterns.expand_input_patterns`;
            ``None`` or ``""``: none; a number is the file of that name).
        image_dir: a folder of images (``None`` or ``""``: none).

    Returns:
        The image paths.

    Raises:
        DatasetError: neither gives an image, a pattern matches no file, ``image_dir`` is not a folder or holds no image, or a file is given more
            than once (in ``images``, or in ``images`` and under ``image_dir``; named, as fine-tuning's
            segmentation refuses its inputs given twice: :func:`medgmae.files.given_more_than_once`).
    """
    # one path or a list; a bare number is a file name (a DICOM export's "1"), which the command line reads as an int
    listed = list(images) if isinstance(images, (list, tuple)) else [] if images is None else [images]
    paths = [Path(p) for p in expand_input_patterns([str(p) for p in listed if str(p).strip()], "--images")]
    folders = [str(p) for p in paths if p.is_dir()]
    if folders:  # a folder among the files: what --image_dir takes
        raise DatasetError(f"--images lists {plural(len(folders), 'folder')} ({', '.join(folders)}): give image files "
                           "there, and a folder of images as --image_dir FOLDER")  # fmt: skip
    if image_dir is not None and str(image_dir).strip():
        folder = Path(str(image_dir)).expanduser()
        if not folder.is_dir():
            said = "a file, not a folder: give it with --images" if folder.is_file() else "not found"
            raise DatasetError(f"--image_dir {folder}: {said}")
        found, others = listed_files(folder)
        if not found:
            raise DatasetError(no_images_message(f"--image_dir {folder}", others, folder))
        skipped = skipped_files_note(others, folder)
        if skipped:
            logger.info("--image_dir %s: %s", folder, skipped)
        paths += found
    if not paths:
        raise DatasetError("no images to classify: give --images \"['a.png', 'b.dcm']\" and/or --image_dir FOLDER")
    twice = given_more_than_once(paths)
    if twice:
        raise DatasetError(f"these images are given more than once (in --images, or in --images and under --image_dir; "
                         f"each is classified once per run): {', '.join(twice)}")  # fmt: skip
    return paths


def load_inference_model(model_path: str | Path, device: torch.device) -> torch.nn.Module:
    """The trained GViT of ``model_path`` on ``device``, in eval mode, with its ``class_names``.

    Raises:
        FileNotFoundError: no file at ``model_path``.
        ValueError: not a GViT ``model.pt`` (another kind, a training checkpoint: named by
            :func:`~medgmae.twod.gvit.load_gvit`).
    """
    from medgmae.twod.gvit import GViT

    if not Path(model_path).is_file():
        raise FileNotFoundError(f"model_path {model_path}: no such file (the model.pt of a GViT training run)")
    model = GViT.from_checkpoint(model_path, map_location="cpu").to(device).eval()
    names = getattr(model, "class_names", None)
    if not names or len(names) != model.num_classes:
        names = [f"class_{i}" for i in range(model.num_classes)]
        logger.warning("%s records no class names: the classes are called %s", model_path, ", ".join(names))
    model.class_names = list(names)
    return model


def _window_text(source: dict, origin: str) -> str:
    """The window an image was read with, as ``predictions.csv`` gives it: ``-500..500 (given)``, ``-980..42
    (percentiles 0.5/99.5)``; ``""`` for a picture (not windowed)."""
    if source["window"] is None:
        return ""
    which = origin if source["window_source"] == "given" else source["window_source"]
    return "{:g}..{:g} ({})".format(*source["window"], which)


def _read_all(paths: Sequence[Path], model: torch.nn.Module, window, origin: str) -> tuple[torch.Tensor, list[str], list[str]]:
    """Every image as the model's input ``(N, C, H, W)``, for each the slice or frame read of a file holding
    several (:func:`~medgmae.twod.images.slice_text`, ``""`` for the others) and the window it was read with
    (:func:`_window_text`, ``origin`` naming a window passed in); one error naming each image that is
    missing or cannot be read. A 16-bit picture using a narrow part of the 16-bit range (12-bit data) is warned
    about, file by file, as training warns of such a dataset, from the values read (each file is read once:
    :func:`~medgmae.twod.picture_range.warn_if_picture_range_narrow`)."""
    inputs, slices, windows, problems = [], [], [], []
    for path in paths:
        try:
            image, source = read_image_source(path, window=window)
            inputs.append(to_model_input(image, model.in_channels, model.img_size)[0])
        except (ValueError, OSError) as e:  # the reader's messages name the file
            problems.append(str(e) if str(path) in str(e) else f"{path}: {e}")
            continue
        warn_if_picture_range_narrow(source["stored_range"], str(path))  # 12-bit data in a 16-bit PNG
        several = source["slice"] is not None and source["slice"]["count"] > 1
        slices.append(slice_text(source["slice"]) if several else "")
        windows.append(_window_text(source, origin))
    if problems:
        raise DatasetError(f"{plural(len(problems), 'image')} cannot be read, nothing was written:\n  " + "\n  ".join(problems))
    return torch.stack(inputs), slices, windows


@torch.no_grad()
def classify_images(
    model_path: str | Path,
    images: str | Sequence[str] | None,
    image_dir: str | Path | None,
    output_dir: str | Path,
    device: str = "auto",
    batch_size: int = 32,
    window: Sequence[float] | str | None = None,
) -> Path:
    """Classify images with a trained GViT and write ``output_dir/predictions.csv``.

    Args:
        model_path: the run's ``model.pt``.
        images: image files (see :func:`inference_images`).
        image_dir: a folder of images.
        output_dir: where ``predictions.csv`` is written.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        batch_size: images per forward pass.
        window: ``[low, high]`` mapped to 0..1 for NIfTI/DICOM inputs (HU for CT); ``None``: the window the model
            records, else each image's own DICOM window or 0.5/99.5 percentiles. A given window that differs from
            the recorded one is used with a warning; pictures are not windowed (:func:`~medgmae.twod.windows.input_window`).

    Returns:
        The path of ``predictions.csv``.

    Raises:
        FileNotFoundError, ValueError: a missing or wrong model file, a ``window`` that is not ``[low, high]``.
        DatasetError: no images, an image given twice, missing or unreadable images (each named in one error).
    """
    from medgmae.engine import resolve_device

    paths = inference_images(images, image_dir)
    dev = resolve_device(device)
    model = load_inference_model(model_path, dev)
    recorded = recorded_window(getattr(model, "data_settings", None), model_path)
    used, origin = input_window(window, recorded, model_path, sum(map(is_windowed, paths)), "inference inputs",
                                getattr(model, "data_settings", None))  # fmt: skip
    x, slices, windows = _read_all(paths, model, used, origin)
    probs = torch.cat([torch.softmax(model(x[i : i + batch_size].to(dev)).float(), -1).cpu()
                       for i in range(0, len(x), batch_size)]).numpy()  # fmt: skip
    names = model.class_names
    out = write_predictions(Path(output_dir) / PREDICTIONS_CSV, paths, probs, names, before=[("slice", slices)],
                            after=[("window", windows)])  # fmt: skip
    for path, which, p in zip(paths, slices, probs):
        best = int(np.argmax(p))
        logger.info("%s%s: %s (probability %.3f)", path, f", {which}" if which else "", names[best], p[best])
    note = "".join(f"; {n}" for n in several_slices_notes(paths))
    logger.info("%s classified by %s: %s%s", plural(len(paths), "image"), model_path, out, note)
    return out
