"""The line a masked-autoencoder pre-training run logs when it starts: what actually runs.

``--device auto``, ``--amp`` and the renderer's ``auto`` are resolved here as the run resolves them, so the line
names the device, whether bf16 autocast is on, the renderer backend, the model and its parameter count, the
Gaussians, the mask, the global batch and the seed. A model without Gaussians (the voxel-MAE) has neither renderer nor K;
a 2D model's crops are whole images. The device, AMP and batch words are shared with fine-tuning's start line
(:mod:`medgmae.engine.run_words`).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from medgmae.engine import unwrap_model
from medgmae.engine.run_words import amp_words, device_words, global_batch_words, model_words, seed_words
from medgmae.networks.vit import visible_patch_count
from medgmae.render import resolve_backend

__all__ = ["run_settings_line", "renderer_in_use"]


def renderer_in_use(model: nn.Module, device: torch.device | str) -> str | None:
    """The renderer backend ``model`` draws its Gaussians with on ``device`` (``None`` for a model without any).

    A 3D model's ``auto`` is triton on CUDA and torch elsewhere (:func:`medgmae.render.resolve_backend`); a 2D
    model's is gsplat on CUDA when its extension loads, else torch
    (:func:`medgmae.twod.gsplat_backend.resolve_backend_2d`).
    """
    model = unwrap_model(model)
    backend = getattr(model, "render_backend", None)
    if backend is None:
        return None
    if getattr(model, "spatial_dims", 3) == 2:
        from medgmae.twod.gsplat_backend import resolve_backend_2d

        return resolve_backend_2d(backend, device)
    return resolve_backend(backend, device)


def _gaussian_words(model: nn.Module) -> str | None:
    k = getattr(model, "num_gaussians", None)
    if k is None:
        return None
    total = int(getattr(model, "total_gaussians", k))
    if total == k:
        return f"K={k} Gaussians"
    return f"K={k} Gaussians ({total} in all over {len(model.level_multipliers)} levels)"


def run_settings_line(
    network: nn.Module,
    device: torch.device | str,
    amp: bool,
    batch_size: int | None,
    crops_per_item: int = 1,
    processes: int = 1,
    items: int | None = None,
    augmented: bool = False,
    seed: int | None = None,
) -> str:
    """One line stating what a pre-training run runs.

    Args:
        network: the model (DDP-wrapped or not).
        device: the training device (the resolved ``--device``).
        amp: whether AMP was asked for.
        batch_size: items (volumes, images) per loader batch of one process; ``None`` leaves the batch out.
        crops_per_item: crops each loader item yields (the 3D bundle's ``num_samples``).
        processes: training processes (torchrun's world size).
        items: items one process draws in an epoch; fewer than ``batch_size`` are what each step holds
            (:func:`~medgmae.engine.run_words.global_batch_words`).
        augmented: the crops get the paper's augmentation (the 3D bundle's ``augment``,
            :mod:`medgmae.data.augmentation`).
        seed: the run's seed (``"seed N"`` ends the line); ``None`` leaves it out.

    Returns:
        ``"pre-training runs on cpu, AMP off, renderer torch, model medgmae tiny (N parameters), K=..., mask ratio
        0.75 (16 of 64 patches visible per crop), global batch ..., seed 0"``.
    """
    model = unwrap_model(network)
    parts = [f"pre-training runs on {device_words(device)}", amp_words(amp, device)]
    renderer = renderer_in_use(model, device)
    parts.append(f"renderer {renderer}" if renderer else "no renderer (voxel decoder)")
    parts.append(model_words(model))
    gaussians = _gaussian_words(model)
    if gaussians:
        parts.append(gaussians)
    dims = getattr(model, "spatial_dims", 3)
    n = int(model.encoder.num_patches)
    visible = visible_patch_count(n, model.mask_ratio)
    parts.append(f"mask ratio {model.mask_ratio:g} ({visible} of {n} patches visible per {'image' if dims == 2 else 'crop'})")
    if augmented:
        parts.append("crops augmented as in the paper (random flips, 90-degree turns, intensity scale and shift)")
    if batch_size is not None:
        parts.append(global_batch_words(processes, int(batch_size), int(crops_per_item), dims, items))
    if seed is not None:
        parts.append(seed_words(seed))
    return ", ".join(parts)
