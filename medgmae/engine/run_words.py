"""Words the training bundles' start-of-run lines share: the device, whether AMP runs, the global batch and the
seed.

Pre-training (:mod:`medgmae.mae_training.run_line`), fine-tuning (:mod:`medgmae.finetune.run_line`) and GViT
training (:mod:`medgmae.twod.gvit_run_line`) resolve ``--device auto`` and ``--amp`` as their runs do and state the
result with these.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from medgmae.words import plural, plural_noun  # re-exported: the start lines count with them

__all__ = ["device_words", "amp_words", "plural", "global_batch_words", "seed_words", "checked_seed", "loader_items", "parameter_counts", "model_words", "plural_noun"]


def device_words(device: torch.device | str) -> str:
    """``cpu``, or ``cuda:N (GPU name)`` with ``N`` the current CUDA device when ``device`` names none."""
    device = torch.device(device)
    if device.type != "cuda":
        return str(device)
    index = torch.cuda.current_device() if device.index is None else device.index
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def amp_words(amp: bool, device: torch.device | str, precision: str = "bf16") -> str:
    """Whether autocast runs: on CUDA as asked; asked for elsewhere, it has no effect and the words say so.

    Args:
        amp: whether AMP was asked for.
        device: the training device.
        precision: the autocast dtype on CUDA (pre-training's ``bf16``, MONAI's trainers' ``fp16``).

    Returns:
        ``"AMP off"``, ``"AMP on (bf16)"`` or ``"AMP off (amp true has no effect on the CPU)"``.
    """
    device = torch.device(device)
    if not amp:
        return "AMP off"
    if device.type == "cuda":
        return f"AMP on ({precision})"
    where = "the CPU" if device.type == "cpu" else device.type
    return f"AMP off (amp true has no effect on {where})"


def global_batch_words(
    processes: int, batch_size: int, crops_per_item: int, spatial_dims: int = 3, items: int | None = None
) -> str:
    """``global batch N crops per step (P processes x B volumes x C crops)``; a 2D run's items are images.

    Args:
        processes: training processes.
        batch_size: the loader's ``batch_size``.
        crops_per_item: crops each item yields.
        spatial_dims: 2 for images (whole, one crop each), 3 for volumes.
        items: the items one process draws in an epoch (:func:`loader_items`), ``None`` where unknown. Where fewer
            than ``batch_size``, each step holds those items alone (the loader keeps its last, short batch; only a
            distributed sampler repeats an item, to give every process as many), and the words count them and say why: ``global batch 2 images per step (1 process x
            2; batch_size 16, but the dataset holds 2 images)``.
    """
    image = spatial_dims == 2 and crops_per_item == 1
    short = items is not None and 0 < items < batch_size
    per_process = items if short else batch_size
    total = processes * per_process * crops_per_item
    note = ""
    if short:
        where = "the dataset holds" if processes == 1 else "each process draws"
        note = f"; batch_size {batch_size}, but {where} {plural(per_process, 'image' if image else 'volume')}"
    if image:
        return f"global batch {plural(total, 'image')} per step ({plural(processes, 'process')} x {per_process}{note})"
    parts = f"{plural(processes, 'process')} x {plural(per_process, 'volume')} x {plural(crops_per_item, 'crop')}"
    return f"global batch {plural(total, 'crop')} per step ({parts}{note})"


def checked_seed(seed: int, owner: str = "") -> int:
    """``seed`` itself, checked where a start line's owner takes it (a bad seed is refused when the run is built,
    not when its line is logged).

    Args:
        seed: the bundle's ``seed``.
        owner: who takes it, to begin the message (``"MaskedAutoencoderTrainer"``); ``""``: nobody named.

    Raises:
        TypeError: ``seed`` is not a whole number (a bool is not).
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"{owner + ': ' if owner else ''}seed must be a whole number, got {seed!r}")
    return seed


def seed_words(seed: int) -> str:
    """``"seed N"``: the seed of the run's determinism, stated so that a log says how to repeat the run (a default
    seed is given on no command line).

    Args:
        seed: the bundle's ``seed``.

    Raises:
        TypeError: ``seed`` is not a whole number (:func:`checked_seed`).
    """
    return f"seed {checked_seed(seed)}"


def loader_items(loader: Any) -> int | None:
    """The items (volumes, images) one process draws from ``loader`` in an epoch: the length of its sampler (a
    distributed sampler's share of the dataset, its padding included); ``None`` for a loader without a sized
    sampler (an iterable dataset)."""
    try:
        return int(len(loader.sampler))
    except (AttributeError, TypeError):
        return None


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """``(parameters, trainable parameters)`` of ``model``, as the start lines state them."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def model_words(model: nn.Module, trainable_words: bool = True) -> str:
    """``"model medgmae tiny (N parameters)"``; the kind and size are the model's ``kind`` and ``model_size``
    attributes (its class name without them).

    Args:
        model: the (unwrapped) model.
        trainable_words: add ``", M trainable"`` inside the brackets where some parameters are frozen (GViT, whose
            phases change what is frozen, leaves it out).
    """
    count, trainable = parameter_counts(model)
    extra = f", {trainable:,} trainable" if trainable_words and trainable != count else ""
    name = f"{getattr(model, 'kind', type(model).__name__)} {getattr(model, 'model_size', '')}".rstrip()
    return f"model {name} ({count:,} parameters{extra})"
