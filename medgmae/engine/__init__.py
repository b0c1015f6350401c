"""Shared training infrastructure for the toolkit's MONAI bundles: atomic I/O, checkpoint/resume, guards,
progress, metric history and picture helpers (``medgmae.engine.figures``)."""

from medgmae.engine.handlers import (
    CheckpointHandler,
    GradientClipHandler,
    NonFiniteLossHandler,
    RandomStateTracker,
    latest_checkpoint,
    resolve_device,
)
from medgmae.engine.console import EpochProgress, is_main_process, loss_value, quiet_known_warnings
from medgmae.engine.history import MetricHistory
from medgmae.engine.io import atomic_write, load_torch_file, save_json_atomic, save_torch_atomic

__all__ = [
    "atomic_write",
    "save_torch_atomic",
    "save_json_atomic",
    "load_torch_file",
    "CheckpointHandler",
    "EpochProgress",
    "MetricHistory",
    "is_main_process",
    "loss_value",
    "quiet_known_warnings",
    "GradientClipHandler",
    "NonFiniteLossHandler",
    "RandomStateTracker",
    "latest_checkpoint",
    "resolve_device",
]
