"""A GViT run's settings: what ``model.pt``, ``metrics.json`` and ``summary.json`` record of how the model was
trained (:func:`training_settings`), what each phase's checkpoints record for a resume to match
(:func:`phase_settings`), and what the joint phase's start line says of the guidance (:func:`guidance_note`).

The settings a phase records are those it trained with: every phase its model, data and optimiser; the warm-up and
joint phases their reconstruction loss (``loss``); the joint phase its guidance (``guidance``). A resume with
another value of one of them is refused (:class:`~medgmae.engine.records.SettingsRecord`), and a run stopped before
its joint phase trained may still change the guidance.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from medgmae.twod.classification_split import without_split_files
from medgmae.twod.guidance import ReconstructionLoss
from medgmae.twod.phantom_task import recorded_default_task
from medgmae.words import plural

__all__ = ["training_settings", "phase_settings", "guidance_note", "phase_epochs_check", "classifier_freqs_check",
           "max_classifier_freqs"]


def training_settings(epochs: Mapping[str, int], optimiser: Mapping, rec_loss: ReconstructionLoss) -> dict:
    """How a model was trained, as plain data.

    Args:
        epochs: each phase's epochs.
        optimiser: the run's ``lr``, ``weight_decay``, ``gamma`` and ``guidance_interval``.
        rec_loss: the reconstruction loss.

    Returns:
        ``{"epochs", "lr", "weight_decay", "pixel_loss", "perceptual_weight", "gamma", "guidance_interval",
        "guidance"}``; ``guidance``: whether the encoder followed the classifier's gradient (a joint phase with
        ``gamma > 0``).
    """
    gamma = float(optimiser["gamma"])
    return {
        "epochs": {k: int(v) for k, v in epochs.items()}, "lr": float(optimiser["lr"]),
        "weight_decay": float(optimiser["weight_decay"]), "pixel_loss": rec_loss.pixel,
        "perceptual_weight": rec_loss.perceptual_weight, "gamma": gamma,
        "guidance_interval": int(optimiser["guidance_interval"]), "guidance": int(epochs.get("joint", 0)) > 0 and gamma > 0,
    }  # fmt: skip


def phase_settings(
    phase: str | None, model_config: Mapping, data_settings: Mapping | None, optimiser: Mapping,
    rec_loss: ReconstructionLoss,
) -> dict:  # fmt: skip
    """The settings a resumed phase must share with its checkpoint: the model, the data (not where the default
    phantom task lies, ``default_root``, inside the output folder: a run folder moved as a whole resumes; nor its
    files, checked apart; its ``window`` always, ``None`` when none was given, so that a resume with a window
    says the saved run had none, except for the default task, whose PNGs no window maps), the optimiser (a restored AdamW keeps its saved learning rate and weight decay), and the
    losses the phase trains on.

    Args:
        phase: ``"warmup"``, ``"classifier"`` or ``"joint"`` (None: no losses).
        model_config: the model's constructor arguments.
        data_settings: how the training data were chosen (None: none recorded).
        optimiser: the run's ``lr``, ``weight_decay``, ``gamma`` and ``guidance_interval``.
        rec_loss: the reconstruction loss.

    Returns:
        ``{"model", "data", "optimiser"}``, with ``"loss"`` (warm-up and joint phases) and ``"guidance"`` (joint).
    """
    data = {k: v for k, v in (without_split_files(data_settings) or {}).items() if k != "default_root"}
    data.setdefault("window", None)  # recorded only when given: without one, the record says None (no window)
    if recorded_default_task(data):  # its PNGs' fixed window is no setting a resume must match
        data.pop("window")
    out = {"model": dict(model_config), "data": data,
           "optimiser": {"lr": float(optimiser["lr"]), "weight_decay": float(optimiser["weight_decay"])}}  # fmt: skip
    if phase in ("warmup", "joint"):
        out["loss"] = {"pixel_loss": rec_loss.pixel, "perceptual_weight": rec_loss.perceptual_weight}
    if phase == "joint":
        out["guidance"] = {"gamma": float(optimiser["gamma"]), "guidance_interval": int(optimiser["guidance_interval"])}
    return out


def guidance_note(phase: str, gamma: float, guidance_interval: int) -> str:
    """What a phase's start line says of the guidance: in the joint phase, whether it is on and its gamma.

    Args:
        phase: the phase.
        gamma: guidance strength.
        guidance_interval: iterations per guidance step.

    Returns:
        ``""`` for the other phases, else e.g. ``", with guidance (gamma 0.1 every 1 iteration)"``.
    """
    if phase != "joint":
        return ""
    if gamma == 0:
        return ", without guidance (gamma 0: the encoder on the reconstruction loss alone)"

    return f", with guidance (gamma {gamma:g} every {plural(guidance_interval, 'iteration')})"


def phase_epochs_check(warmup: Any, classifier: Any, joint: Any) -> Callable[[Any], None]:
    """The bundle's check of ``max_epochs`` (``checked_settings``): a non-negative integer, and not one that leaves
    every phase at 0 epochs (the phases' own settings, which default to it, are given).

    Args:
        warmup: the ``warmup_epochs`` setting; ``classifier``, ``joint``: likewise (values that are not whole
            numbers are left to their own checks).

    Returns:
        ``check(max_epochs)``, raising ``ValueError`` naming the problem: with ``max_epochs`` 0 that it needs 1 or
        more (or a phase's own epochs); with every phase's own epochs 0, that one of them needs 1 or more.
    """
    from medgmae.setting_kinds import kind_problem
    from medgmae.twod.gvit_step import PHASES

    def check(value: Any) -> None:
        if problem := kind_problem(value, "nonneg_int"):
            raise ValueError(problem)
        phases = dict(zip(PHASES, (warmup, classifier, joint)))
        if not all(kind_problem(v, "nonneg_int") is None and int(v) == 0 for v in phases.values()):
            return
        shown = ", ".join(f"--{p}_epochs {int(v)}" for p, v in phases.items())
        if int(value) == 0:
            raise ValueError(f"every phase has 0 epochs ({shown}; each is --max_epochs unless given): nothing to "
                             "train; give --max_epochs 1 or more, or a phase's own epochs")  # fmt: skip
        raise ValueError(f"every phase's own epochs are 0 ({shown}): nothing to train, whatever --max_epochs; give "
                         "one of them 1 or more")  # fmt: skip

    return check


def max_classifier_freqs(image_size: int) -> int:
    """The most Fourier octaves of the centres an ``image_size``-pixel image takes: ``1 + floor(log2(image_size))``.

    Octave ``k`` (from 0) has the period ``2 / 2**k`` of the image plane's span of 2, ``image_size / 2**k`` pixels;
    with this many the finest is at least one pixel (6 for 32 pixels, the octaves of a run begun before
    ``classifier_freqs`` was a setting). Finer octaves alias between pixels, and from the 128th their frequency
    overflows float32 (the features are NaN).
    """
    return int(image_size).bit_length()


def classifier_freqs_check(image_size: Any) -> Callable[[Any], None]:
    """The bundle's check of ``classifier_freqs`` (``checked_settings``): a non-negative integer of at most
    :func:`max_classifier_freqs` for the ``image_size`` setting (a bad ``image_size`` is left to its own check).

    Returns:
        ``check(classifier_freqs)``, raising ``ValueError`` naming the value and the bound.
    """
    from medgmae.setting_kinds import kind_problem

    def check(value: Any) -> None:
        if problem := kind_problem(value, "nonneg_int"):
            raise ValueError(problem)
        if kind_problem(image_size, "positive_int") is not None:
            return
        bound = max_classifier_freqs(int(image_size))
        if int(value) > bound:
            raise ValueError(f"expected at most {bound} for --image_size {int(image_size)} (the finest octave's period, "
                             f"{int(image_size)}/2^(classifier_freqs-1) pixels, must be at least one pixel: finer ones "
                             f"alias between pixels), got {value!r}")  # fmt: skip

    return check
