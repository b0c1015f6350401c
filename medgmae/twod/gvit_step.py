"""One optimisation step of a GViT training phase, and what each phase trains.

The phases (:data:`PHASES`) and their order are those of :mod:`medgmae.twod.gvit_train`: ``"warmup"`` trains the
Gaussian encoder on the reconstruction loss, ``"classifier"`` the classifier on the frozen encoder's Gaussians, and
``"joint"`` both, the encoder following the guided gradient (:mod:`medgmae.twod.guidance`).
"""

from __future__ import annotations

import contextlib
from typing import Mapping

import torch
import torch.nn.functional as F
from ignite.engine import Engine
from monai.engines.utils import IterationEvents
from torch import nn

from medgmae.twod.guidance import ReconstructionLoss, check_gamma, guided_backward

__all__ = ["PHASES", "check_phase", "set_phase", "phase_parameters", "GViTIteration"]

#: the training phases, in their order
PHASES = ("warmup", "classifier", "joint")


def check_phase(phase: str) -> None:
    """Refuse a phase name that is not one of :data:`PHASES`.

    Args:
        phase: the phase name.

    Raises:
        ValueError: an unknown phase.
    """
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")


def set_phase(model: nn.Module, phase: str) -> None:
    """Freeze and unfreeze a :class:`~medgmae.twod.gvit.GViT` for a phase (``requires_grad`` and train/eval)."""
    check_phase(phase)
    enc, cls = phase in ("warmup", "joint"), phase in ("classifier", "joint")
    model.encoder.requires_grad_(enc).train(enc)
    model.classifier.requires_grad_(cls).train(cls)


def phase_parameters(model: nn.Module, phase: str) -> list[tuple[str, nn.Parameter]]:
    """The ``(name, parameter)`` pairs a phase trains (named in ``model``), the encoder's before the classifier's.

    Args:
        model: a :class:`~medgmae.twod.gvit.GViT`.
        phase: ``"warmup"`` (the encoder), ``"classifier"`` or ``"joint"`` (both).

    Returns:
        The pairs, for :func:`~medgmae.engine.decay_rule.decay_groups`.
    """
    check_phase(phase)
    mods = {"warmup": ["encoder"], "classifier": ["classifier"], "joint": ["encoder", "classifier"]}[phase]
    return [(f"{m}.{n}", p) for m in mods for n, p in getattr(model, m).named_parameters()]


class GViTIteration:
    """``iteration_update`` of a phase's :class:`~monai.engines.SupervisedTrainer`: one optimisation step.

    Args:
        phase: ``"warmup"``, ``"classifier"`` or ``"joint"``.
        rec_loss: reconstruction loss.
        gamma: guidance strength in ``[0, 0.1]`` (joint phase).
        guidance_interval: apply guidance every this many iterations (``gamma = 0`` in between).
        render_backend: backend of :meth:`medgmae.twod.gvit.Gaussians2D.render`.
        amp: bf16 autocast of the networks on CUDA, off on CPU (rendering and losses stay float32).

    Fires ``IterationEvents.FORWARD_COMPLETED``, ``LOSS_COMPLETED``, ``BACKWARD_COMPLETED`` (gradients ready:
    ``GradientClipHandler`` clips here) and ``MODEL_COMPLETED`` (after the optimiser step).

    Returns (per call):
        ``{"image", "label", "pred", "loss", "loss_rec", "loss_cls"}``; ``loss`` is the phase's objective
        (``L_rec``, ``L_cls`` or ``L_rec + L_cls``), ``pred`` the logits (None in the warm-up).
    """

    def __init__(
        self,
        phase: str,
        rec_loss: ReconstructionLoss | None = None,
        gamma: float = 0.1,
        guidance_interval: int = 1,
        render_backend: str = "auto",
        amp: bool = False,
    ) -> None:
        check_phase(phase)
        if guidance_interval < 1:
            raise ValueError(f"guidance_interval must be >= 1, got {guidance_interval}")
        self.phase, self.rec_loss = phase, rec_loss or ReconstructionLoss()
        self.gamma, self.guidance_interval = check_gamma(gamma), int(guidance_interval)
        self.render_backend, self.amp = render_backend, amp

    def _autocast(self, device: torch.device):
        if self.amp and device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def __call__(self, engine: Engine, batchdata: Mapping) -> dict:
        model, opt = engine.network, engine.optimizer
        x, y = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)[:2]
        y = y.long().view(-1)
        opt.zero_grad(set_to_none=True)
        logits = loss_rec = loss_cls = None
        with self._autocast(x.device):
            if self.phase == "classifier":
                with torch.no_grad():
                    g = model.encoder(x)
                logits = model.classifier(g)
            else:
                g = model.encoder(x)
                if self.phase == "joint":
                    logits = model.classifier(g)
        if logits is not None:
            loss_cls = F.cross_entropy(logits.float(), y)
        if self.phase != "classifier":
            rendered = model.encoder.decode(g.float()).render(x.shape[-2:], backend=self.render_backend)
            loss_rec = self.rec_loss(rendered, x)
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        if self.phase == "warmup":
            loss = loss_rec
            loss.backward()
        elif self.phase == "classifier":
            loss = loss_cls
            loss.backward()
        else:
            gamma = self.gamma if (engine.state.iteration - 1) % self.guidance_interval == 0 else 0.0
            guided_backward(loss_rec, loss_cls, g, model.classifier.parameters(), gamma)
            loss = loss_rec + loss_cls
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        opt.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        detach = lambda t: None if t is None else t.detach()  # noqa: E731
        return {"image": x, "label": y, "pred": detach(logits), "loss": loss.detach(),
                "loss_rec": detach(loss_rec), "loss_cls": detach(loss_cls)}  # fmt: skip
