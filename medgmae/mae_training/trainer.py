"""The pre-training engine: MONAI's SupervisedTrainer with a masked-autoencoder iteration.

When it starts, rank 0 logs one line naming what runs (:func:`~medgmae.mae_training.run_line.run_settings_line`).
One iteration runs the model through the trainer's inferer (its ``forward`` returns the masked-voxel loss), under
bf16 autocast on CUDA when ``amp`` is on, back-propagates, clips the global gradient norm and steps the optimiser.
MONAI's iteration events fire as in the stock trainer, so MONAI and toolkit handlers attach unchanged.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import logging

import torch
import torch.nn as nn
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys

from medgmae.distributed import is_main_process, rank_world
from medgmae.engine.run_words import checked_seed, loader_items
from medgmae.engine.step_guards import GradientClipHandler
from medgmae.mae_training.run_line import run_settings_line
from medgmae.mae_training.validation import masked_psnr
from medgmae.networks.mae_base import MAEOutput

__all__ = ["MaskedAutoencoderTrainer"]

logger = logging.getLogger("medgmae.mae_training")


class MaskedAutoencoderTrainer(SupervisedTrainer):
    """SupervisedTrainer whose iteration trains a masked autoencoder on unlabelled crops.

    The batch's ``image`` goes through the network by ``inferer`` (a keyword argument of the base class; MONAI's
    ``SimpleInferer``, the network called directly, when not given), whose output
    (:class:`~medgmae.networks.MAEOutput`) carries the loss; ``loss_function`` is not used. Gradients are clipped to
    ``grad_clip`` (global norm) before the step, by :class:`~medgmae.engine.GradientClipHandler` attached at
    construction: a ``BACKWARD_COMPLETED`` handler added later sees clipped gradients.
    ``engine.state.output`` is ``{"loss": float tensor, "psnr_masked": float tensor}``.

    Args:
        device: training device.
        max_epochs: epochs to train.
        train_data_loader: loader of dicts with an ``image`` key ``(B, 1, D, H, W)``.
        network: MedGMAE, MedGMAE* or VoxelMAE (optionally DDP-wrapped).
        optimizer: the optimiser.
        grad_clip: maximum global gradient norm (``0`` disables clipping).
        amp: bf16 autocast for the network on CUDA (no effect on CPU; bf16 needs no loss scaling).
        train_handlers: ignite/MONAI handlers.
        image_key: batch key of the image.
        crops_per_item: crops each loader item yields (the 3D bundle's ``num_samples``), for the start line's
            global batch.
        augmented: the loader's crops get the paper's augmentation (the 3D bundle's ``augment``), for the start line.
        seed: the run's seed (the bundle's ``seed``), for the start line; ``None`` leaves it out.
        kwargs: further :class:`monai.engines.SupervisedTrainer` arguments.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        grad_clip: float = 1.0,
        amp: bool = False,
        train_handlers: Sequence | None = None,
        image_key: str = CommonKeys.IMAGE,
        crops_per_item: int = 1,
        augmented: bool = False,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        if grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0, got {grad_clip}")
        seed = None if seed is None else checked_seed(seed, "MaskedAutoencoderTrainer")
        device = torch.device(device)
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=_unused_loss,
            train_handlers=train_handlers,
            amp=False,  # bf16 autocast is handled in _iteration; no GradScaler
            decollate=False,
            **kwargs,
        )
        self.grad_clip = float(grad_clip)
        if self.grad_clip > 0:  # the toolkit's one clipping step, after BACKWARD_COMPLETED as in MONAI's trainers
            GradientClipHandler(self.grad_clip).attach(self)
        self.amp_asked, self.bf16 = bool(amp), bool(amp) and device.type == "cuda"
        self.image_key, self.crops_per_item, self.augmented = image_key, int(crops_per_item), bool(augmented)
        self.seed = seed
        self.add_event_handler(Events.STARTED, self._log_run_settings)

    def run_settings(self) -> str:
        """The start line: device, AMP, renderer, model, Gaussians, mask, global batch and seed of this run."""
        batch = getattr(self.data_loader, "batch_size", None)
        return run_settings_line(self.network, self.state.device, self.amp_asked, batch, self.crops_per_item,
                                 rank_world()[1], loader_items(self.data_loader), self.augmented, self.seed)  # fmt: skip

    def _log_run_settings(self, _: Any = None) -> None:
        if is_main_process():
            logger.info(self.run_settings())

    def _iteration(self, engine: "MaskedAutoencoderTrainer", batchdata: dict) -> dict:  # type: ignore[override]
        if batchdata is None or self.image_key not in batchdata:
            raise ValueError(f"training batch must be a dict with an '{self.image_key}' entry")
        x = batchdata[self.image_key]
        x = (x.as_tensor() if hasattr(x, "as_tensor") else x).to(engine.state.device, non_blocking=engine.non_blocking)
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=self.bf16):
            out: MAEOutput = engine.inferer(x, engine.network)
        engine.state.output = {CommonKeys.LOSS: out.loss}
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        out.loss.backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)  # GradientClipHandler clips here
        engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        with torch.no_grad():
            psnr = masked_psnr(out, x)
        engine.state.output = {CommonKeys.LOSS: out.loss.detach(), "psnr_masked": psnr}
        return engine.state.output


def _unused_loss(*_: Any) -> torch.Tensor:
    raise RuntimeError("MaskedAutoencoderTrainer takes the loss from the model output")
