"""The line a UNETR fine-tuning run logs when it starts: what actually runs.

:class:`FinetuneRunLine` (a train handler of the bundle) logs, on rank 0 and once, the device (``--device auto``
resolved), whether AMP runs (MONAI's fp16 autocast on CUDA; none on the CPU), the network with its parameter and
trainable counts, where the encoder comes from and whether it is frozen, the learning rates of the layer-wise decay's
parameter groups, the global batch and the seed. A frozen encoder without ``--pretrained`` is warned about: it stays at its
random initialisation and only the decoder trains. The device, AMP and batch words are pre-training's
(:mod:`medgmae.engine.run_words`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from ignite.engine import Engine, Events

from medgmae.distributed import is_main_process, rank_world
from medgmae.engine import unwrap_model
from medgmae.engine.resume import latest_checkpoint
from medgmae.engine.run_words import (amp_words, checked_seed, device_words, global_batch_words, loader_items,
                                      parameter_counts, plural, seed_words)
from medgmae.finetune.weights import layer_id

__all__ = ["FinetuneRunLine", "finetune_run_line", "learning_rate_words", "FROZEN_SCRATCH_WARNING"]

logger = logging.getLogger(__name__)

#: the warning for ``--freeze_encoder true`` without ``--pretrained``
FROZEN_SCRATCH_WARNING = (
    "--freeze_encoder true without --pretrained freezes a randomly initialised encoder: only the decoder trains; "
    "give --pretrained /path/to/encoder.pt, or leave freeze_encoder false to train the encoder from scratch"
)


def rate_words(lr: float) -> str:
    """``3e-4``, ``1.27e-4``; rates of 0.01 and above as plain decimals."""
    if lr >= 0.01 or lr == 0:
        return f"{lr:g}"
    mantissa, exponent = f"{lr:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _depth_name(depth: int, num_layers: int) -> str:
    if depth == 0:
        return "patch embedding"
    return "decoder" if depth > num_layers else f"block {depth}"


def learning_rate_words(network: nn.Module, optimizer: torch.optim.Optimizer) -> str:
    """The base learning rates of ``optimizer``'s parameter groups, named by their layer-wise-decay depth.

    A group's rate is its scheduler's ``initial_lr`` (the rate the warm-up and cosine scale), else its ``lr``.

    Args:
        network: the UNETR (DDP-wrapped or not) whose parameters the groups hold.
        optimizer: the optimiser built from :func:`medgmae.finetune.param_groups`.

    Returns:
        ``"learning rate 3e-4 (4 parameter groups)"`` or
        ``"learning rates 1.27e-4 (patch embedding) ... 3e-4 (decoder), 4 rates in 8 parameter groups"``.
    """
    model = unwrap_model(network)
    names = {id(p): name for name, p in model.named_parameters()}
    num_layers = len(model.vit.blocks) if hasattr(model, "vit") else 0
    rates: dict[int, float] = {}
    for group in optimizer.param_groups:
        name = next((names[id(p)] for p in group["params"] if id(p) in names), "")
        rates.setdefault(layer_id(name, num_layers), float(group.get("initial_lr", group["lr"])))
    groups = plural(len(optimizer.param_groups), "parameter group")
    if len(set(rates.values())) <= 1:
        return f"learning rate {rate_words(next(iter(rates.values()), 0.0))} ({groups})"
    first, last = min(rates), max(rates)
    return (
        f"learning rates {rate_words(rates[first])} ({_depth_name(first, num_layers)}) ... "
        f"{rate_words(rates[last])} ({_depth_name(last, num_layers)}), {len(set(rates.values()))} rates in {groups}"
    )


def _encoder_words(model: nn.Module, pretrained: str | Path, resumed: str | Path | None = None) -> str:
    """Where the encoder's weights come from (a resumed checkpoint's, else ``pretrained``'s) and whether it trains."""
    frozen = not any(p.requires_grad for p in model.vit.parameters())
    if resumed is not None:
        return f"encoder continued from {resumed}, {'frozen' if frozen else 'fine-tuned'}"
    if str(pretrained or "").strip():
        return f"encoder loaded from {pretrained}, {'frozen' if frozen else 'fine-tuned'}"
    return "encoder randomly initialised, frozen" if frozen else "encoder trained from scratch"


def finetune_run_line(
    network: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device | str,
    amp: bool,
    pretrained: str | Path = "",
    batch_size: int = 1,
    crops_per_item: int = 1,
    processes: int = 1,
    items: int | None = None,
    seed: int | None = None,
    resumed: str | Path | None = None,
) -> str:
    """One line stating what a fine-tuning run runs.

    Args:
        network: the UNETR (DDP-wrapped or not).
        optimizer: its optimiser (the layer-wise decay's parameter groups).
        device: the training device (the resolved ``--device``).
        amp: whether AMP was asked for.
        pretrained: the ``encoder.pt`` the encoder was loaded from, ``""`` for none.
        batch_size: volumes per loader batch of one process.
        crops_per_item: crops each volume yields (``num_samples``).
        processes: training processes (torchrun's world size).
        items: the volumes one process draws in an epoch (:func:`~medgmae.engine.run_words.loader_items`): fewer
            than ``batch_size`` make each step hold those alone, and the global batch says so.
        seed: the run's seed (``"seed N"`` ends the line); ``None`` leaves it out.
        resumed: the checkpoint a resume continues (its weights, not ``pretrained``'s, are the encoder's); ``None``
            for a fresh start.

    Returns:
        ``"fine-tuning runs on cpu, AMP off, network UNETR (feature size 16, N parameters, M trainable), encoder
        loaded from .../encoder.pt, fine-tuned, learning rates ..., global batch ..., seed 0"``.
    """
    model = unwrap_model(network)
    count, trainable = parameter_counts(model)
    size = getattr(model, "feature_size", None)
    size_words = f"feature size {size}, " if size is not None else ""
    parts = [
        f"fine-tuning runs on {device_words(device)}",
        amp_words(amp, device, precision="fp16"),
        f"network UNETR ({size_words}{count:,} parameters, {trainable:,} trainable)",
        _encoder_words(model, pretrained, resumed),
        learning_rate_words(model, optimizer),
        global_batch_words(processes, int(batch_size), int(crops_per_item), items=items),
    ]
    if seed is not None:
        parts.append(seed_words(seed))
    return ", ".join(parts)


class FinetuneRunLine:
    """Log :func:`finetune_run_line` when training starts (rank 0, once), after :data:`FROZEN_SCRATCH_WARNING` when
    the encoder is frozen without ``pretrained``.

    Args:
        pretrained: the bundle's ``pretrained`` (``""`` for training from scratch).
        crops_per_item: the bundle's ``num_samples``.
        seed: the bundle's ``seed``, stated at the line's end; ``None`` leaves it out.
        resume_dir: the run folder when the run resumes (``--resume true``): the line names its newest epoch
            checkpoint, read here before training writes another, as the encoder's source; ``None``: a fresh start.
    """

    def __init__(self, pretrained: str | Path = "", crops_per_item: int = 1, seed: int | None = None,
                 resume_dir: str | Path | None = None) -> None:  # fmt: skip
        seed = None if seed is None else checked_seed(seed, "FinetuneRunLine")
        self.pretrained, self.crops_per_item, self.seed = str(pretrained or "").strip(), int(crops_per_item), seed
        self.resumed = latest_checkpoint(resume_dir) if resume_dir is not None else None

    def attach(self, engine: Engine) -> None:
        """Log at ``STARTED``."""
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Any) -> None:
        if not is_main_process():
            return
        model = unwrap_model(engine.network)
        if not self.pretrained and not any(p.requires_grad for p in model.vit.parameters()):
            logger.warning(FROZEN_SCRATCH_WARNING)
        batch = getattr(engine.data_loader, "batch_size", None) or 1
        logger.info(finetune_run_line(model, engine.optimizer, engine.state.device, bool(getattr(engine, "amp", False)),
                                      self.pretrained, batch, self.crops_per_item, rank_world()[1],
                                      loader_items(engine.data_loader), self.seed, self.resumed))  # fmt: skip
