"""GViT inference: new, unlabelled images classified by a trained model, written to ``predictions.csv``.

:func:`classify_images` reads the trained ``model.pt`` (its class names, image size, channels and intensity
``window``, as training recorded them), reads every image with the toolkit's 2D reader
(:func:`medgmae.twod.images.read_image`, then :func:`~medgmae.twod.images.to_model_input`, as training and
evaluation read theirs) before it classifies any, and writes ``predictions.csv`` atomically: one row per image,
``image,predicted_class,probability_<class>...`` (softmax probabilities, in the model's class order). Each
prediction is logged. The ``gvit_classification`` bundle's ``configs/inference.json`` calls it.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from medgmae.files import atomic_write
from medgmae.twod.data2d import image_files
from medgmae.twod.images import IMAGE_SUFFIXES, read_image, to_model_input
from medgmae.twod.windows import recorded_window

__all__ = ["inference_images", "load_inference_model", "classify_images"]

logger = logging.getLogger("medgmae.gvit")


def inference_images(images: str | Sequence[str] | None, image_dir: str | Path | None) -> list[Path]:
    """The images to classify: ``images`` (one path or a list) and every image file under ``image_dir`` (sorted,
    recursive), in that order, each once.

    Args:
        images: image files (``None`` or ``""``: none).
        image_dir: a folder of images (``None`` or ``""``: none).

    Returns:
        The image paths.

    Raises:
        ValueError: neither gives an image, ``image_dir`` is not a folder or holds no image, or a listed image is
            not a file (each named).
    """
    listed = [images] if isinstance(images, (str, Path)) else list(images or [])
    paths = [Path(str(p)).expanduser() for p in listed if str(p).strip()]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"--images: not found or not a file: {', '.join(missing)}")
    if image_dir is not None and str(image_dir).strip():
        folder = Path(str(image_dir)).expanduser()
        if not folder.is_dir():
            raise ValueError(f"--image_dir {folder}: not found or not a folder")
        found = image_files(folder)
        if not found:
            raise ValueError(f"--image_dir {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        paths += found
    if not paths:
        raise ValueError("no images to classify: give --images \"['a.png', 'b.dcm']\" and/or --image_dir FOLDER")
    seen: set[Path] = set()
    unique = []
    for p in paths:  # each file once, named as the user gave it (the CSV's image column)
        if p.resolve() not in seen:
            seen.add(p.resolve())
            unique.append(p)
    return unique


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


def _read_all(paths: Sequence[Path], model: torch.nn.Module, window) -> torch.Tensor:
    """Every image as the model's input ``(N, C, H, W)``; one error naming each image that cannot be read."""
    inputs, problems = [], []
    for path in paths:
        try:
            inputs.append(to_model_input(read_image(path, window=window), model.in_channels, model.img_size)[0])
        except (ValueError, OSError) as e:
            problems.append(f"{path}: {e}")
    if problems:
        raise ValueError(f"{len(problems)} image(s) cannot be read, nothing was written:\n  " + "\n  ".join(problems))
    return torch.stack(inputs)


@torch.no_grad()
def classify_images(
    model_path: str | Path,
    images: str | Sequence[str] | None,
    image_dir: str | Path | None,
    output_dir: str | Path,
    device: str = "auto",
    batch_size: int = 32,
) -> Path:
    """Classify images with a trained GViT and write ``output_dir/predictions.csv``.

    Args:
        model_path: the run's ``model.pt``.
        images: image files (see :func:`inference_images`).
        image_dir: a folder of images.
        output_dir: where ``predictions.csv`` is written.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        batch_size: images per forward pass.

    Returns:
        The path of ``predictions.csv``.

    Raises:
        FileNotFoundError, ValueError: a missing or wrong model file, no images, unreadable images (named).
    """
    from medgmae.engine import resolve_device

    paths = inference_images(images, image_dir)
    dev = resolve_device(device)
    model = load_inference_model(model_path, dev)
    x = _read_all(paths, model, recorded_window(getattr(model, "data_settings", None), model_path))
    probs = torch.cat([torch.softmax(model(x[i : i + batch_size].to(dev)).float(), -1).cpu()
                       for i in range(0, len(x), batch_size)]).numpy()  # fmt: skip
    names, out = model.class_names, Path(output_dir) / "predictions.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "predicted_class", *(f"probability_{n}" for n in names)])
        for path, p in zip(paths, probs):
            best = int(np.argmax(p))
            writer.writerow([str(path), names[best], *(f"{v:.6f}" for v in p)])
            logger.info("%s: %s (probability %.3f)", path, names[best], p[best])
    logger.info("%d image(s) classified by %s: %s", len(paths), model_path, out)
    return out
