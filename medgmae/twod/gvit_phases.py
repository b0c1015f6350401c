"""GViT's per-phase handlers: what each phase's trainer gets from the bundle's ``train#handlers`` list.

An entry of that list is either a handler (attached to every phase's trainer, e.g. ``NonFiniteLossHandler``) or a
factory called with the phase's :class:`PhaseContext` (model, optimiser, scheduler, checkpoint folder, settings)
that returns the phase's own handler: :class:`PhaseCheckpoint` (the toolkit's ``CheckpointHandler``, one sub-folder
per phase), :class:`PhaseLrSchedule` (MONAI's ``LrScheduleHandler``), :class:`PhaseStats` (MONAI's
``StatsHandler``) and :class:`PhaseProgress` (the toolkit's ``EpochProgress``: a progress bar and one loss line per
epoch); :func:`default_phase_handlers` is that list and :func:`phase_handlers` resolves it for one phase.
The phases themselves are in :mod:`medgmae.twod.gvit_train`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from ignite.engine import Engine
from monai.handlers import LrScheduleHandler, StatsHandler
from torch import nn

from medgmae.engine import CheckpointHandler, EpochProgress, NonFiniteLossHandler
from medgmae.engine.records import CasesRecord, SettingsRecord
from medgmae.twod.gvit.classifier import LEGACY_CLASSIFIER_FREQS
from medgmae.twod.phantom_task import recorded_default_task
from medgmae.whole_numbers import nonnegative_count, positive_count

__all__ = ["PhaseContext", "PhaseCheckpoint", "PhaseLrSchedule", "PhaseStats", "PhaseProgress", "default_phase_handlers",
           "phase_handlers", "resume_records", "RESUME_FLAGS", "START_IN_RECORDS"]

#: The bundle flag (a key of ``gvit_classification/configs/train.json``) that gives each recorded setting, said with
#: its saved value in a resume's refusal (:func:`~medgmae.engine.records.resume_flags`). The model's channels and
#: classes have none: the data give them.
RESUME_FLAGS = {
    "model.img_size": ("image_size", "edge"), "model.num_gaussians": "num_gaussians", "model.model_size": "model_size",
    "model.patch_size": ("patch_size", "edge"), "model.mode": "encoder_mode", "model.scale_factor": "scale_factor",
    "model.classifier_freqs": "classifier_freqs", "data.dataset_dir": "dataset_dir", "data.num_phantoms": "num_phantoms",
    "data.seed": "seed", "data.val_fraction": "val_fraction", "data.image_size": "image_size", "data.window": "window",
    "data.augment": "augment", "optimiser.lr": "learning_rate", "optimiser.weight_decay": "weight_decay",
    "loss.pixel_loss": "pixel_loss", "loss.perceptual_weight": "perceptual_weight", "guidance.gamma": "gamma",
    "guidance.guidance_interval": "guidance_interval",
}  # fmt: skip


@dataclass
class PhaseContext:
    """What a phase's handler factories receive.

    Attributes:
        phase: ``"warmup"``, ``"classifier"`` or ``"joint"``.
        model: the :class:`~medgmae.twod.gvit.GViT`.
        optimizer: the phase's AdamW.
        lr_scheduler: the phase's warm-up + cosine schedule.
        checkpoint_dir: the phase's checkpoint folder (None: no checkpoints).
        settings: the run's model and data settings, checked on resume (None: not checked).
        cases: the training items (``{"image": path, "label": int}``), checked on resume (None: not checked).
        run_record: the run's :class:`~medgmae.engine.start_record.StartRecord` (its start and resumes), one for
            every phase (None: not recorded).
    """

    phase: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    checkpoint_dir: Path | None = None
    settings: Mapping | None = None
    cases: Sequence[Mapping] | None = None
    run_record: Any = None

    @property
    def objects(self) -> dict:
        """The phase's checkpointed objects: ``model``, ``optimizer``, ``lr_scheduler``, with ``settings`` and
        ``cases`` the records a resumed run must match (:func:`resume_records`) and with ``run_record`` that record
        (``"run"``)."""
        objects = {"model": self.model, "optimizer": self.optimizer, "lr_scheduler": self.lr_scheduler}
        run = {} if self.run_record is None else {"run": self.run_record}
        return {**objects, **resume_records(self.settings, self.cases), **run}


def resume_records(settings: Mapping | None, cases: Sequence[Mapping] | None) -> dict:
    """What a resumed GViT phase must match: ``"settings"``, the
    :class:`~medgmae.engine.records.SettingsRecord` of the run's ``{"model", "data"}`` settings, and ``"cases"``,
    the :class:`~medgmae.engine.records.CasesRecord` of its training images (path, size and class index); each
    only when given."""
    # a run begun before classifier_freqs was a setting: its record reads as the octaves it used (--classifier_freqs 6
    # resumes it); a checkpoint written before the data record held window always lacks it where no window was given,
    # and one written before augment was a setting trained on images as they are (augment false)
    before = {"model": {"classifier_freqs": LEGACY_CLASSIFIER_FREQS}, "data": {"window": None, "augment": False}}
    # a run begun before the phantom task's folder stopped being a setting recorded where it lay (data.default_root):
    # the task is compared by its cases and its other data settings, so that old value is dropped, not compared
    # and the default task's run recorded a window (None, or one given) that maps none of its PNGs (compared by cases)
    phantom = settings is not None and recorded_default_task(settings.get("data") or {})
    retired = {"data": ("default_root", "window") if phantom else ("default_root",)}
    records = {} if settings is None else {
        "settings": SettingsRecord(settings, "GViT training", saved_defaults=before, retired=retired, flags=RESUME_FLAGS)}
    if cases is not None:
        records["cases"] = CasesRecord(cases, keys=("image", "label"), what="GViT training", noun="image")
    return records



#: Where a phase checkpoint's settings record (:func:`resume_records`) holds the settings of the run's start
#: (:class:`~medgmae.engine.start_record.StartRecord`'s ``recorded_in``): the start of a checkpoint that recorded
#: none, written by an earlier release. The epochs are each session's own; the losses and the guidance are those of
#: the phases that train on them.
START_IN_RECORDS = {
    "data": "settings.settings.data", "training.lr": "settings.settings.optimiser.lr",
    "training.weight_decay": "settings.settings.optimiser.weight_decay",
    "training.pixel_loss": "settings.settings.loss.pixel_loss",
    "training.perceptual_weight": "settings.settings.loss.perceptual_weight",
    "training.gamma": "settings.settings.guidance.gamma",
    "training.guidance_interval": "settings.settings.guidance.guidance_interval",
}  # fmt: skip

class PhaseCheckpoint:
    """Handler factory: the toolkit's ``CheckpointHandler`` in the phase's checkpoint folder (none without one).

    Put it first in the list: MONAI's ``StatsHandler`` re-raises exceptions, so exception handlers attached after
    it (the interruption checkpoint) would never run.

    Args:
        resume: continue from the newest checkpoint of each phase (finished phases are not re-run).
        source: dataset whose random transforms are checkpointed.
        interval: epochs between a phase's checkpoints (the bundle's ``checkpoint_interval``); its last epoch always
            has one, from which a resume skips the finished phase.
    """

    def __init__(self, resume: bool = False, source: Any = None, interval: int = 1) -> None:
        if not isinstance(resume, bool):
            raise ValueError(f"resume must be a bool, got {resume!r}")
        self.resume, self.source = resume, source
        self.interval = positive_count(interval, "checkpoint_interval")

    def __call__(self, ctx: PhaseContext) -> CheckpointHandler | None:
        if ctx.checkpoint_dir is None:
            return None
        # a phase after one that has checkpoints: on resume, no checkpoint of its own is a phase not reached yet
        later = any(d != ctx.checkpoint_dir and any(d.glob("checkpoint_epoch=*.pt")) for d in ctx.checkpoint_dir.parent.glob("*/"))
        return CheckpointHandler(ctx.checkpoint_dir, ctx.objects, self.resume, self.source, save_interval=self.interval,
                                 finished_ok=True, later_stage=later)  # fmt: skip


class PhaseLrSchedule:
    """Handler factory: MONAI's ``LrScheduleHandler`` stepping the phase's scheduler every iteration."""

    def __call__(self, ctx: PhaseContext) -> LrScheduleHandler:
        return LrScheduleHandler(ctx.lr_scheduler, print_lr=False, epoch_level=False)


#: the joint phase's loss terms, label -> key of the iteration's output: its loss is their sum
JOINT_TERMS = {"rec": "loss_rec", "cls": "loss_cls"}


class PhaseStats:
    """Handler factory: MONAI's ``StatsHandler`` logging ``<phase>_loss`` every ``log_every`` iterations (none
    when 0: :class:`PhaseProgress` shows the progress); in the joint phase with its terms, ``joint_rec`` and
    ``joint_cls``.

    Args:
        log_every: iterations between loss log lines (>= 0; 0: no iteration lines).
    """

    def __init__(self, log_every: int = 0) -> None:
        self.log_every = nonnegative_count(log_every, "log_every")

    def _due(self, _engine: Engine, iteration: int) -> bool:
        return iteration % self.log_every == 0

    def __call__(self, ctx: PhaseContext) -> StatsHandler | None:
        if self.log_every == 0:
            return None
        if ctx.phase == "joint":
            def losses(out: Mapping) -> dict:
                return {"joint_loss": out["loss"], **{f"joint_{label}": out[key] for label, key in JOINT_TERMS.items()}}

            return StatsHandler(name=None, output_transform=losses, iteration_log=self._due)
        return StatsHandler(name=None, tag_name=f"{ctx.phase}_loss", output_transform=lambda out: out["loss"],
                            iteration_log=self._due)  # fmt: skip


class PhaseProgress:
    """Handler factory: the toolkit's :class:`~medgmae.engine.EpochProgress` for the phase: a progress bar on the
    terminal and one line per epoch, ``epoch 2/10: <phase>_loss 0.41234 (16 iterations, 3.1 s, 5.16 it/s)``, with
    the phase's mean loss over the epoch; in the joint phase with the means of its two terms, ``joint_loss 0.93468
    (rec 0.41234 + cls 0.52234; 16 iterations, ...)``.

    Args:
        progress_bar: show the bar (the epoch line is logged either way).
    """

    def __init__(self, progress_bar: bool = True) -> None:
        if not isinstance(progress_bar, bool):
            raise ValueError(f"progress_bar must be a bool, got {progress_bar!r}")
        self.progress_bar = progress_bar

    def __call__(self, ctx: PhaseContext) -> EpochProgress:
        terms = JOINT_TERMS if ctx.phase == "joint" else None
        return EpochProgress(loss_key="loss", progress_bar=self.progress_bar, name=f"{ctx.phase}_loss", terms=terms)


def default_phase_handlers(
    resume: bool = False, source: Any = None, log_every: int = 0, progress_bar: bool = True
) -> list:
    """The handlers of every phase, as the bundle's ``train#handlers`` lists them: checkpoints, the non-finite loss
    guard, the LR schedule, iteration loss lines (none by default) and the progress bar with a line per epoch."""
    return [PhaseCheckpoint(resume, source), NonFiniteLossHandler("loss"), PhaseLrSchedule(), PhaseStats(log_every),
            PhaseProgress(progress_bar)]  # fmt: skip


def phase_handlers(handlers: Sequence, ctx: PhaseContext) -> list:
    """Entries with ``attach`` are used as they are; others are factories called with ``ctx`` (None: skipped)."""
    out = []
    for h in handlers:
        if not hasattr(h, "attach"):
            if not callable(h):
                raise ValueError(f"a GViT handler must have attach() or be a factory of PhaseContext, got {h!r}")
            h = h(ctx)
        if h is not None:
            out.append(h)
    return out
