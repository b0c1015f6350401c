"""The line a GViT training run logs when it starts: what actually runs.

``--device auto``, ``--amp`` and the renderer's ``auto`` are resolved here as the run resolves them, so the line
names the device, whether bf16 autocast is on, the renderer backend, the model and its parameter count, the
Gaussians, each phase's epochs and the global batch. The device, AMP and batch words are the pre-training and
fine-tuning start lines' (:mod:`medgmae.engine.run_words`); GViT trains in one process.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn

from medgmae.engine.run_words import amp_words, device_words, global_batch_words, model_words, plural

__all__ = ["gvit_run_line"]


def gvit_run_line(
    model: nn.Module,
    device: torch.device | str,
    amp: bool,
    render_backend: str,
    epochs: Mapping[str, int],
    batch_size: int | None,
    items: int | None = None,
) -> str:
    """One line stating what a GViT training run runs.

    Args:
        model: the :class:`~medgmae.twod.gvit.GViT`.
        device: the training device (the resolved ``--device``).
        amp: whether AMP was asked for.
        render_backend: the ``render_backend`` setting (``auto`` is resolved for ``device``).
        epochs: each phase's epochs, in phase order.
        batch_size: images per loader batch; ``None`` leaves the batch out.
        items: training images in an epoch; fewer than ``batch_size`` are what each step holds
            (:func:`~medgmae.engine.run_words.global_batch_words`).

    Returns:
        ``"GViT training runs on cpu, AMP off, renderer torch, model gvit tiny (N parameters), K=64 Gaussians,
        32x32 images of 1 channel, epochs warmup 10 / classifier 10 / joint 10, global batch 32 images per step (1 process x
        32)"``; a phase with 0 epochs reads ``classifier 0 (skipped)``.
    """
    from medgmae.twod.gsplat_backend import resolve_backend_2d

    parts = [f"GViT training runs on {device_words(device)}", amp_words(amp, device),
             f"renderer {resolve_backend_2d(render_backend, device)}"]  # fmt: skip
    parts.append(model_words(model, trainable_words=False))
    k = getattr(getattr(model, "encoder", None), "num_gaussians", None)
    if k is not None:
        parts.append(f"K={k} Gaussians")
    size = getattr(model, "img_size", None)
    if size is not None:
        parts.append(f"{size[0]}x{size[1]} images of {plural(getattr(model, 'in_channels', 1), 'channel')}")
    phases = " / ".join(f"{p} {int(n)}" + ("" if int(n) else " (skipped)") for p, n in epochs.items())
    parts.append(f"epochs {phases}")
    if batch_size is not None:
        parts.append(global_batch_words(1, int(batch_size), 1, spatial_dims=2, items=items))
    return ", ".join(parts)
