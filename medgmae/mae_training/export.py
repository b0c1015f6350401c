"""Writing the pre-trained weights: ``encoder.pt`` (for fine-tuning) and ``model.pt`` (for zero-shot use)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn as nn
from ignite.engine import Engine, Events

from medgmae.engine import ResumeEvents, is_main_process, unwrap_model
from medgmae.files import atomic_write
from medgmae.whole_numbers import positive_count

__all__ = ["save_pretrained", "ModelExportHandler", "ENCODER_FILE", "MODEL_FILE"]

ENCODER_FILE = "encoder.pt"
MODEL_FILE = "model.pt"

logger = logging.getLogger("medgmae.mae_training")


def save_pretrained(network: nn.Module, output_dir: str | Path) -> tuple[Path, Path]:
    """Write ``encoder.pt`` and ``model.pt`` atomically into ``output_dir``.

    Both are :func:`medgmae.checkpoint.make_checkpoint` payloads carrying the model's pre-processing (the
    contract every consumer reads: orientation, spacing, HU window, input and patch size):
    ``encoder.pt``: ``{"kind": "medgmae-encoder", "config", "preprocessing", "state_dict", "extra": {"source": <model
    kind>}}``; ``model.pt``: ``{"kind": <model kind>, "config", "preprocessing", "state_dict", "extra"}``, the model
    kind being ``"medgmae"``, ``"medgmae-star"`` or ``"voxel-mae"``; both with the training run's seed and loader
    workers as ``extra["run"]`` where the model has them (``run_settings``, set by :func:`~medgmae.mae_training.build_model`).

    Args:
        network: MedGMAE / VoxelMAE, optionally wrapped in DDP.
        output_dir: destination folder (created if needed).

    Returns:
        The two paths.
    """
    model = unwrap_model(network)
    out = Path(output_dir)
    enc, full = out / ENCODER_FILE, out / MODEL_FILE
    # both written to temporary files before either is renamed: an interruption while saving (the slow part) leaves
    # the earlier pair as it was, not a new encoder.pt beside an old or missing model.pt
    with atomic_write(enc) as enc_tmp, atomic_write(full) as full_tmp:
        torch.save(model.encoder_checkpoint(), enc_tmp)
        torch.save(model.model_checkpoint(), full_tmp)
    return enc, full


class ModelExportHandler:
    """Ignite handler writing ``encoder.pt`` and ``model.pt`` at the end of every ``interval``-th epoch and of the
    last, as the checkpoint handler saves its checkpoints, and when training completes (the completion writes them
    unless this epoch's end already did: a resumed run that had only its closing steps left trains no epoch), or
    only when training completes; on the main process only under DDP. An epoch a resume validates (its run stopped
    while validating it) is written once its checkpoint is saved
    (:attr:`~medgmae.engine.ResumeEvents.PENDING_EPOCH_SAVED`), as at the end of an uninterrupted epoch.

    Args:
        output_dir: destination folder.
        network: the trained network.
        every_epoch: also write at epoch ends (not only at the end).
        interval: epochs between those writes (the bundle's ``checkpoint_interval``: the files are of the epoch of
            the newest checkpoint).
    """

    def __init__(self, output_dir: str | Path, network: nn.Module, every_epoch: bool = True, interval: int = 1) -> None:
        self.output_dir, self.network, self.every_epoch = Path(output_dir), network, bool(every_epoch)
        self.interval = positive_count(interval, "checkpoint_interval")
        self._written_at: int | None = None  # the iteration of the last write

    def _due(self, engine: Engine, epoch: int) -> bool:
        return epoch % self.interval == 0 or epoch == engine.state.max_epochs

    def attach(self, engine: Engine) -> None:
        if self.every_epoch:
            engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=self._due), self)
            engine.register_events(*ResumeEvents)  # the epoch a resume validated: written as at its end
            engine.add_event_handler(ResumeEvents.PENDING_EPOCH_SAVED, self)
        engine.add_event_handler(Events.COMPLETED, self._on_completed)

    def _on_completed(self, engine: Engine) -> None:
        if self._written_at != engine.state.iteration:
            self(engine)

    def __call__(self, engine: Engine) -> None:
        if not is_main_process():
            return
        enc, full = save_pretrained(self.network, self.output_dir)
        self._written_at = engine.state.iteration
        logger.info("epoch %d: wrote %s and %s", engine.state.epoch, enc, full)
