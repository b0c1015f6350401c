"""A GViT's predictions, image by image: the class probabilities of a loader's images, and ``predictions.csv``, the
one table both inference (new, unlabelled images) and evaluation (each image beside its true class) write.

Columns: ``image`` (the file; empty for an image generated in memory, such as a phantom slice), the caller's columns
before the prediction (inference: ``slice``; evaluation: ``true_class``), ``predicted_class``, one
``probability_<class>`` per class (six decimals) and the caller's columns after it (inference: ``window``;
evaluation: ``correct``). The file is written atomically (:func:`medgmae.files.atomic_write`), UTF-8.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from medgmae.files import atomic_write

__all__ = ["PREDICTIONS_CSV", "predict_loader", "write_predictions"]

#: The table's file name.
PREDICTIONS_CSV = "predictions.csv"


@torch.no_grad()
def predict_loader(model: torch.nn.Module, loader, device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The labels, class probabilities and image files of ``loader``'s items under ``model`` (eval mode).

    Args:
        model: the classifier (``(B, C, H, W)`` images -> ``(B, classes)`` logits).
        loader: batches of ``{"image", "label"}`` and, where the items come from files, ``"path"``.
        device: where the model runs.

    Returns:
        ``(labels (N,), probabilities (N, classes) float32, paths)``, a path ``""`` for an item without a file.

    Raises:
        ValueError: the loader gives no item.
    """
    model.eval()
    labels, probs, paths = [], [], []
    for batch in loader:
        logits = model(batch["image"].to(device)).float()
        probs.append(torch.softmax(logits, -1).cpu())
        labels.append(torch.as_tensor(batch["label"]).view(-1).cpu())
        given = batch.get("path") if hasattr(batch, "get") else None
        paths += [p if isinstance(p, str) else "" for p in (given if given is not None else [None] * len(logits))]
    if not labels:
        raise ValueError("evaluation data is empty")
    return torch.cat(labels).numpy(), torch.cat(probs).numpy(), paths


def write_predictions(
    out: str | Path, images: Sequence[str], probs: np.ndarray, class_names: Sequence[str],
    before: Sequence[tuple[str, Sequence]] = (), after: Sequence[tuple[str, Sequence]] = (),
) -> Path:  # fmt: skip
    """Write ``predictions.csv`` (module docstring) atomically.

    Args:
        out: the file.
        images: each row's image file.
        probs: ``(N, classes)`` probabilities.
        class_names: the classes, in the model's order.
        before: ``(column, values)`` pairs written between the image and the predicted class.
        after: ``(column, values)`` pairs written after the probabilities.

    Returns:
        ``out`` as a path.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", *(c for c, _ in before), "predicted_class", *(f"probability_{n}" for n in class_names),
                         *(c for c, _ in after)])  # fmt: skip
        for i, (image, p) in enumerate(zip(images, probs)):
            writer.writerow([str(image), *(v[i] for _, v in before), class_names[int(np.argmax(p))],
                             *(f"{v:.6f}" for v in p), *(v[i] for _, v in after)])  # fmt: skip
    return out
