"""Devices: resolving a ``--device`` setting, moving a loaded checkpoint's tensors, and the model inside DDP."""

from __future__ import annotations

import re
from typing import Any

import torch
from medgmae.words import plural

__all__ = ["resolve_device", "usable_device", "unwrap_model", "to_device"]


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Raises:
        ValueError: an unknown or empty name (an unset shell variable in ``--device "$DEV"`` is not taken as
            ``auto``), or CUDA asked for on a machine without it.
    """
    name = str(name).strip().lower()
    if not name:
        raise ValueError("the device is empty: use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if re.fullmatch(r"cuda(:\d+)?", name):
        if not torch.cuda.is_available():
            raise ValueError(f"device '{name}' was requested but CUDA is not available on this machine; use 'cpu' or 'auto'")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device '{name}' does not exist: {plural(torch.cuda.device_count(), 'CUDA device')} found")
        return dev
    raise ValueError(f"unknown device '{name}': use 'auto', 'cpu', 'cuda' or 'cuda:N'")


def usable_device(device: str | int | torch.device) -> torch.device:
    """``device`` as a ``torch.device`` (an int is a CUDA index, as torch takes it; ``"auto"`` is
    :func:`resolve_device`'s), checked where it is CUDA with :func:`resolve_device`'s check and words (a
    ``ValueError`` on a machine without CUDA, or for an index past its GPUs) instead of torch's bare
    ``AssertionError`` at the first tensor moved; other kinds are torch's to judge. The Python API's device arguments
    (a projector's, a ``.ply``'s, a batch of Gaussians') go through here."""
    if isinstance(device, str) and device.strip().lower() == "auto":
        return resolve_device("auto")
    index = isinstance(device, int) and not isinstance(device, bool)  # torch.device(0) asks for an accelerator
    device = torch.device("cuda", device) if index else torch.device(device)
    return resolve_device(device) if device.type == "cuda" else device


def unwrap_model(network: torch.nn.Module) -> torch.nn.Module:
    """The model inside ``DistributedDataParallel`` / ``DataParallel`` wrappers (``network`` itself if unwrapped)."""
    while isinstance(network, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        network = network.module
    return network


def to_device(obj: Any, device: Any) -> Any:
    """``obj`` with every tensor in it (within dicts and lists) moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_device(v, device) for v in obj]
    return obj
