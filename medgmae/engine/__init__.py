"""Shared training infrastructure for the toolkit's MONAI bundles (ignite handlers): checkpoint/resume and the
up-front resume check (``medgmae.engine.resume``), guards, progress, metric history and picture helpers
(``medgmae.engine.figures``). File I/O lives in :mod:`medgmae.files`.

The public names are imported from their modules on first use (:mod:`medgmae.lazy_names`), so that
``from medgmae.engine import resolve_device`` (``medgmae-2d``, ``medgmae-recon``) loads torch only, not ignite and
MONAI, which the handlers' modules import."""

from medgmae.lazy_names import lazy_names

__all__ = [
    "CheckpointHandler",
    "check_resume_fits",
    "decay_groups",
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
    "usable_device",
    "unwrap_model",
]

#: Each public name's module, imported on first use.
__getattr__ = lazy_names(__name__, {
    "CheckpointHandler": "medgmae.engine.checkpoint_handler",
    "ResumeEvents": "medgmae.engine.epoch_validation",
    "resolve_device": "medgmae.engine.devices",
    "usable_device": "medgmae.engine.devices",
    "unwrap_model": "medgmae.engine.devices",
    "GradientClipHandler": "medgmae.engine.step_guards",
    "NonFiniteLossHandler": "medgmae.engine.step_guards",
    "RandomStateTracker": "medgmae.engine.random_state",
    "check_resume_fits": "medgmae.engine.resume",
    "decay_groups": "medgmae.engine.decay_rule",
    "latest_checkpoint": "medgmae.engine.resume",
    "is_main_process": "medgmae.distributed",
    "EpochProgress": "medgmae.engine.console",
    "ValidationProgress": "medgmae.engine.console",
    "loss_value": "medgmae.engine.console",
    "quiet_known_warnings": "medgmae.engine.console",
    "MetricHistory": "medgmae.engine.history",
    "LearningRateScalar": "medgmae.engine.lr_scalar",
})  # fmt: skip
