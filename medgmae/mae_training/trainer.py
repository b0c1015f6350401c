"""The pre-training engine: MONAI's SupervisedTrainer with a masked-autoencoder iteration.

One iteration runs the model (its ``forward`` returns the masked-voxel loss), under bf16 autocast on CUDA when
``amp`` is on, back-propagates, clips the global gradient norm and steps the optimiser. MONAI's iteration events
fire as in the stock trainer, so MONAI and toolkit handlers attach unchanged.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn as nn
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys

from medgmae.networks.medgmae import MAEOutput, MedGMAE
from medgmae.networks.voxel_mae import VoxelMAE
from medgmae.preprocessing import PreprocessingSpec

__all__ = ["as_bool", "MaskedAutoencoderTrainer", "build_model", "unwrap_model", "ModelConfigRecord", "masked_psnr", "MODEL_KINDS"]

#: ``model`` names accepted by :func:`build_model`.
MODEL_KINDS = ("medgmae", "medgmae-star", "voxel-mae")


def build_model(
    kind: str = "medgmae",
    model_size: str = "tiny",
    img_size: Sequence[int] | int = 96,
    patch_size: Sequence[int] | int = 12,
    num_gaussians: int = 512,
    mask_ratio: float = 0.75,
    loss_on_all_voxels: bool = False,
    preprocessing: PreprocessingSpec | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a pre-training model by name (what the bundle configs instantiate).

    Args:
        kind: ``"medgmae"``, ``"medgmae-star"`` (multi-level) or ``"voxel-mae"``.
        model_size: ViT preset.
        img_size: crop size.
        patch_size: patch edge(s).
        num_gaussians: K (ignored by the voxel-MAE).
        mask_ratio: training mask ratio.
        loss_on_all_voxels: MSE on every voxel instead of the masked ones.
        preprocessing: the data pre-processing the model is trained with, recorded in its checkpoints; its
            ``input_size`` and ``patch_size`` must match ``img_size`` and ``patch_size``.
        kwargs: further :class:`~medgmae.networks.MedGMAE` arguments (``scale_cap``, ``level_multipliers``...).

    Returns:
        The model.
    """
    if kind not in MODEL_KINDS:
        raise ValueError(f"model kind must be one of {MODEL_KINDS}, got {kind!r}")
    common = dict(img_size=img_size, patch_size=patch_size, model_size=model_size, mask_ratio=mask_ratio,
                  loss_on_all_voxels=loss_on_all_voxels)  # fmt: skip
    if kind == "voxel-mae":
        model = VoxelMAE(**common)  # the Gaussian-only arguments do not apply
    else:
        model = MedGMAE(**common, num_gaussians=num_gaussians, multi_level=kind == "medgmae-star", **kwargs)
    if preprocessing is not None:
        if tuple(preprocessing.input_size) != model.img_size or tuple(preprocessing.patch_size) != model.patch_size:
            raise ValueError(
                f"the pre-processing's input_size {preprocessing.input_size} / patch_size {preprocessing.patch_size} "
                f"differ from the model's img_size {model.img_size} / patch_size {model.patch_size}"
            )
        model.preprocessing = preprocessing
    return model


def unwrap_model(network: nn.Module) -> nn.Module:
    """The model inside ``DistributedDataParallel`` / ``DataParallel`` wrappers."""
    while isinstance(network, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        network = network.module
    return network


class ModelConfigRecord:
    """``state_dict``-able record of a model's kind, config and pre-processing, stored in training checkpoints as
    ``"config"`` (``{"kind", "config", "preprocessing"}``, the model-file fields of :mod:`medgmae.checkpoint`) so
    that :meth:`MedGMAE.from_checkpoint` can rebuild the model from a training checkpoint alone."""

    def __init__(self, network: nn.Module) -> None:
        self.network = unwrap_model(network)

    def state_dict(self) -> dict:
        spec = getattr(self.network, "preprocessing", None)
        return {"kind": self.network.kind, "config": self.network.config(), "preprocessing": spec.to_dict() if spec else None}

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        diff = {k: (state.get(k), v) for k, v in mine.items() if state.get(k) != v}
        if diff:
            raise ValueError(f"checkpoint was written by a different model configuration (saved, current): {diff}")


def masked_psnr(out: MAEOutput, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR (dB) over the masked voxels of a batch: ``10 log10(range^2 / masked MSE)``."""
    w = out.mask.expand_as(target).float()
    mse = ((out.pred.float() - target.float()).square() * w).sum() / w.sum().clamp_min(1.0)
    return 10.0 * torch.log10(data_range**2 / mse.clamp_min(1e-12))


class MaskedAutoencoderTrainer(SupervisedTrainer):
    """SupervisedTrainer whose iteration trains a masked autoencoder on unlabelled crops.

    The batch's ``image`` goes through the network, whose output (:class:`~medgmae.networks.MAEOutput`) carries
    the loss; ``loss_function`` is not used. Gradients are clipped to ``grad_clip`` (global norm) before the step.
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
        **kwargs: Any,
    ) -> None:
        if grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0, got {grad_clip}")
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
        self.bf16 = bool(amp) and device.type == "cuda"
        self.image_key = image_key

    def _iteration(self, engine: "MaskedAutoencoderTrainer", batchdata: dict) -> dict:  # type: ignore[override]
        if batchdata is None or self.image_key not in batchdata:
            raise ValueError(f"training batch must be a dict with an '{self.image_key}' entry")
        x = batchdata[self.image_key]
        x = (x.as_tensor() if hasattr(x, "as_tensor") else x).to(engine.state.device, non_blocking=engine.non_blocking)
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=self.bf16):
            out: MAEOutput = engine.network(x)
        engine.state.output = {CommonKeys.LOSS: out.loss}
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        out.loss.backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(engine.network.parameters(), self.grad_clip)
        engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        with torch.no_grad():
            psnr = masked_psnr(out, x)
        engine.state.output = {CommonKeys.LOSS: out.loss.detach(), "psnr_masked": psnr}
        return engine.state.output


def _unused_loss(*_: Any) -> torch.Tensor:
    raise RuntimeError("MaskedAutoencoderTrainer takes the loss from the model output")


def as_bool(value: Any, name: str = "flag") -> bool:
    """A command-line flag as a bool: accepts bools, 0/1 and true/false/yes/no/on/off (any case).

    Raises:
        ValueError: anything else, naming the flag.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}")
