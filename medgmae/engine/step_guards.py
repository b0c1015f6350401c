"""Ignite handlers that guard a training step: a non-finite loss stops the run, gradients are clipped; and
:func:`diverged_error`, which names a step's failure on a model that diverged as divergence, and
:func:`active_scaler`, the gradient scaler a trainer's step goes through.

Both handlers attach to MONAI trainers (``monai.engines.SupervisedTrainer`` and the toolkit's subclasses of it); the
checkpoint handler in :mod:`medgmae.engine.checkpoint_handler` turns the error raised here into the run's last line.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from ignite.engine import Engine, Events

__all__ = ["NonFiniteLossHandler", "GradientClipHandler", "active_scaler", "diverged_error", "non_finite_weights"]


class NonFiniteLossHandler:
    """Stop training with a clear error when the loss becomes NaN or infinite.

    Args:
        loss_key: key of the loss in ``engine.state.output`` (MONAI trainers use ``"loss"``).
        settings: the run's settings that can make its loss diverge, name -> value (e.g. ``{"learning_rate": 5e-4,
            "scale_cap": 1.0}``), named with their values in the error; none by default.
    """

    def __init__(self, loss_key: str = "loss", settings: Mapping[str, object] | None = None) -> None:
        self.loss_key = loss_key
        self.settings = dict(settings or {})

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        out = engine.state.output
        if isinstance(out, (list, tuple)) and out and isinstance(out[0], Mapping):
            out = out[0]  # decollated batch: every item carries the batch loss
        loss = out.get(self.loss_key) if isinstance(out, Mapping) else out
        if loss is None:
            return
        value = float(loss.detach().float().mean()) if torch.is_tensor(loss) else float(loss)
        if not math.isfinite(value):
            named = ", ".join(f"--{k} {v}" for k, v in self.settings.items())
            causes = f" (the settings that can cause it: {named})" if named else ""
            raise FloatingPointError(
                f"non-finite loss ({value}) at epoch {engine.state.epoch}, iteration {engine.state.iteration}: "
                "training stopped. Check the input data for NaN or infinite values, lower the learning rate or disable amp"
                f"{causes}, then resume from the last epoch checkpoint."
            )


class GradientClipHandler:
    """Clip the global gradient norm after ``backward`` and before the optimiser step (MONAI trainers).

    Attach to a ``monai.engines.SupervisedTrainer``; it hooks ``IterationEvents.BACKWARD_COMPLETED`` and unscales
    the gradients first when the trainer uses a ``GradScaler``.

    Args:
        max_norm: maximum total gradient norm.
    """

    def __init__(self, max_norm: float = 1.0) -> None:
        if not max_norm > 0:
            raise ValueError(f"max_norm must be positive, got {max_norm}")
        self.max_norm = float(max_norm)

    def attach(self, engine: Engine) -> None:
        from monai.engines.utils import IterationEvents

        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        scaler = active_scaler(engine)
        if scaler is not None:
            scaler.unscale_(engine.optimizer)
        torch.nn.utils.clip_grad_norm_(engine.network.parameters(), self.max_norm)


def active_scaler(engine: Any) -> Any:
    """The gradient scaler ``engine``'s training step scales the loss with, or ``None``.

    A MONAI trainer run with ``amp=True`` makes a ``GradScaler`` as ``engine.scaler`` when it starts (``run``); it is
    disabled where CUDA is not available, and then scales nothing, as without amp.

    Args:
        engine: the trainer (any object: one without ``amp`` or ``scaler`` has no scaler).

    Returns:
        ``engine.scaler`` when ``engine.amp`` is on and the scaler is enabled, else ``None``.
    """
    scaler = getattr(engine, "scaler", None)
    if not getattr(engine, "amp", False) or scaler is None or not scaler.is_enabled():
        return None
    return scaler


def diverged_error(objects: Mapping[str, Any], engine: Engine, error: BaseException) -> FloatingPointError | None:
    """The error to raise instead of ``error``, a training step's failure, when the run diverged, else ``None``.

    The run diverged when a network among ``objects`` holds NaN or infinite weights (an optimiser step of a finite
    loss made them so), or when they gave a renderer NaN or infinite Gaussians
    (:class:`~medgmae.render.NonFiniteGaussiansError`; the data readers refuse non-finite inputs).

    Args:
        objects: the run's checkpointed objects, name -> object (its networks are checked).
        engine: the trainer, its state at the failing step.
        error: what the step raised.

    Returns:
        A ``FloatingPointError`` naming what diverged, where, and what to change; ``None`` when nothing did.
    """
    from medgmae.render import NonFiniteGaussiansError

    what = non_finite_weights(objects)
    if what is None and isinstance(error, NonFiniteGaussiansError):
        what = "its Gaussians became NaN or infinite"
    if what is None:
        return None
    return FloatingPointError(
        f"training diverged: {what} by epoch {engine.state.epoch}, iteration {engine.state.iteration}, where the "
        f"step then failed ({type(error).__name__}: {error}). Lower the learning rate, keep grad_clip on or disable "
        "amp, then resume from the last epoch checkpoint")  # fmt: skip


def non_finite_weights(objects: Mapping[str, Any]) -> str | None:
    """Which network among ``objects`` (name -> object) holds NaN or infinite weights, as
    ``"the weights of 'network' became NaN or infinite (1.bias first)"``; ``None`` when every weight is finite."""
    for name, obj in objects.items():
        if isinstance(obj, torch.nn.Module):
            bad = next((n for n, w in obj.named_parameters() if not bool(torch.isfinite(w).all())), None)
            if bad is not None:
                return f"the weights of '{name}' became NaN or infinite ({bad} first)"
    return None
