"""Shared training infrastructure for the toolkit's MONAI bundles: atomic I/O, checkpoint/resume, guards."""

from medgmae.engine.handlers import (
    CheckpointHandler,
    GradientClipHandler,
    NonFiniteLossHandler,
    RandomStateTracker,
    latest_checkpoint,
    resolve_device,
)
from medgmae.engine.io import atomic_write, load_torch_file, save_json_atomic, save_torch_atomic

__all__ = [
    "atomic_write",
    "save_torch_atomic",
    "save_json_atomic",
    "load_torch_file",
    "CheckpointHandler",
    "GradientClipHandler",
    "NonFiniteLossHandler",
    "RandomStateTracker",
    "latest_checkpoint",
    "resolve_device",
]
