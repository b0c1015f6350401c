"""Shared training infrastructure for the toolkit's MONAI bundles (ignite handlers): checkpoint/resume and the
up-front resume check (``medgmae.engine.resume``), guards, progress, metric history and picture helpers
(``medgmae.engine.figures``). File I/O lives in :mod:`medgmae.files`."""

from medgmae.engine.checkpoint_handler import CheckpointHandler
from medgmae.engine.epoch_validation import ResumeEvents
from medgmae.engine.devices import resolve_device, unwrap_model
from medgmae.engine.step_guards import GradientClipHandler, NonFiniteLossHandler
from medgmae.engine.random_state import RandomStateTracker
from medgmae.engine.resume import check_resume_fits, latest_checkpoint
from medgmae.distributed import is_main_process
from medgmae.engine.console import EpochProgress, ValidationProgress, loss_value, quiet_known_warnings
from medgmae.engine.history import MetricHistory
from medgmae.engine.lr_scalar import LearningRateScalar

__all__ = [
    "CheckpointHandler",
    "check_resume_fits",
    "EpochProgress",
    "LearningRateScalar",
    "ValidationProgress",
    "MetricHistory",
    "is_main_process",
    "loss_value",
    "quiet_known_warnings",
    "GradientClipHandler",
    "NonFiniteLossHandler",
    "RandomStateTracker",
    "ResumeEvents",
    "latest_checkpoint",
    "resolve_device",
    "unwrap_model",
]
