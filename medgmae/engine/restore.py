"""Restoring a checkpoint's saved states: the records first (all refusals named at once), then the training state,
a learning-rate scheduler's progress on this run's plan, and the trainer's gradient scaler under amp."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from medgmae.bundle_errors import InputRefusal
from medgmae.distributed import rank_world
from medgmae.engine.decay_rule import regroup_saved_state
from medgmae.engine.step_guards import active_scaler
from medgmae.settings_diff import settings_differences

logger = logging.getLogger(__name__)

__all__ = ["TRAINING_STATE", "ResumeRefused", "records_first", "refusal", "restore_states", "load_scheduler_keeping_its_plan",
           "scaler_state", "restore_scaler"]


class ResumeRefused(InputRefusal):
    """A resume that cannot continue the saved run as asked: another epoch length, a ``max_epochs`` it has reached,
    other settings or other data, a checkpoint of another kind of run; the message names the checkpoint, what differs
    and what to do. A bundle stopped by one prints the message alone (:class:`~medgmae.bundle_errors.InputRefusal`)."""


def refusal(message: str, causes: list[BaseException]) -> ValueError:
    """One error for several refusals of a resume: a :class:`ResumeRefused` when every cause is one, else a plain
    ``ValueError`` (a record that failed otherwise may be the toolkit's fault: its traceback stays)."""
    kind = ResumeRefused if causes and all(isinstance(e, ResumeRefused) for e in causes) else ValueError
    return kind(message)

# What a learning-rate scheduler's state_dict holds of its progress; every other entry (t_total, warmup_steps, ...)
# is how it was built, which this run's settings decide.
_SCHEDULER_PROGRESS = {"base_lrs", "last_epoch", "_step_count", "_is_initial", "_get_lr_called_within_step",
                       "_last_lr", "lr_lambdas", "verbose"}  # fmt: skip

#: What a checkpoint restores as training state; every other object (a settings or data record, the metric
#: history) is a record, restored first.
TRAINING_STATE = (torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler)


def records_first(objects: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """``objects`` as ``(name, object)`` pairs, the records (anything but :data:`TRAINING_STATE`) first: a
    configuration record refusing a changed setting then names the setting before a weight tensor fails on its
    changed shape (the order :func:`restore_states` takes)."""
    return sorted(objects.items(), key=lambda item: isinstance(item[1], TRAINING_STATE))


def restore_states(path: Path, objects: Iterable[tuple[str, Any]], saved: Mapping[str, Any]) -> None:
    """``load_state_dict`` each ``(name, object)`` from ``saved[name]``, in the given order.

    The records (objects other than :data:`TRAINING_STATE`) that refuse their saved state are all named in one
    error (other settings and other data at once), before any training state is restored. An optimiser saved with
    every parameter in one group (the earlier release) is put onto this run's weight-decay groups
    (:func:`~medgmae.engine.decay_rule.regroup_saved_state`, over the networks among ``objects``).

    Args:
        path: the checkpoint, as the message names it.
        objects: ``(name, object)`` pairs (records first, so that a changed setting is named before a weight fails).
        saved: the checkpoint's saved states by name.

    Raises:
        ValueError: naming the checkpoint, each refusing object and what it refused.
    """
    objects = list(objects)
    modules = [obj for _, obj in objects if isinstance(obj, torch.nn.Module)]
    refused: list[tuple[str, Exception]] = []
    replanned = []  # schedulers on another plan: their rates are set once the optimisers are restored too
    for name, obj in objects:
        record = not isinstance(obj, TRAINING_STATE)
        if refused and not record:
            break
        try:
            if isinstance(obj, torch.optim.lr_scheduler.LRScheduler):
                replanned += [obj] if load_scheduler_keeping_its_plan(path, name, obj, saved[name]) else []
            elif isinstance(obj, torch.optim.Optimizer):
                obj.load_state_dict(regroup_saved_state(obj, modules, saved[name], f"checkpoint {path} ('{name}')"))
            else:
                obj.load_state_dict(saved[name])
        except (ValueError, RuntimeError, KeyError) as e:
            if not record:
                raise ValueError(f"cannot resume from checkpoint {path} ('{name}'): {e}") from e
            refused.append((name, e))
    if refused:  # the records' refusals: other settings or data than the saved run's
        raise refusal(f"cannot resume from checkpoint {path} " + "; ".join(f"('{n}'): {e}" for n, e in refused),
                      [e for _, e in refused]) from refused[0][1]
    for scheduler in replanned:
        _rates_of_the_plan(scheduler)


def scaler_state(engine: Any) -> dict | None:
    """What a checkpoint saves of ``engine``'s gradient scaler: its ``state_dict`` (scale, growth tracker, ...) under
    amp (:func:`~medgmae.engine.step_guards.active_scaler`), ``None`` for a run without one.

    Args:
        engine: the trainer.

    Returns:
        The scaler's state, or ``None``.
    """
    scaler = active_scaler(engine)
    return None if scaler is None else scaler.state_dict()


def restore_scaler(path: Path, engine: Any, checkpoint: Mapping[str, Any]) -> str:
    """Restore ``engine``'s gradient scaler from ``checkpoint["scaler"]`` (:func:`scaler_state`), or warn (rank 0)
    how the resume differs from an uninterrupted run when the checkpoint and this run differ in amp.

    Under amp a step is taken only when the scaled gradients are finite, and the scale grows after a number of such
    steps: a scaler started afresh (scale 65536, no steps counted) skips or takes other steps than the saved run's
    would. A change of amp on resume (``--amp``, or CUDA now available or not) is allowed, as a change of the number
    of loader workers is, with a warning that the resume is not exact.

    Args:
        path: the checkpoint, as the warning names it.
        engine: the trainer, its scaler made (the run has started).
        checkpoint: the checkpoint's content; one written before checkpoints held the scaler lacks the entry.

    Returns:
        The warning (``""`` when the scaler was restored, or neither run has one).
    """
    scaler, saved = active_scaler(engine), checkpoint.get("scaler")
    if scaler is not None and isinstance(saved, Mapping):
        scaler.load_state_dict(saved)
        return ""
    if scaler is not None:
        fresh = f"its gradient scaler starts afresh at scale {scaler.get_scale():g}"
        note = (f"checkpoint {path} holds no gradient scaler state (it was written before checkpoints held it): {fresh}, "
                "so the resumed run can skip or take other steps than the uninterrupted run" if "scaler" not in checkpoint
                else f"checkpoint {path} was saved by a run without amp (--amp false, or not on CUDA) and this run has "
                f"amp: the resume is not exact (float16 autocast from here on, and {fresh})")  # fmt: skip
    elif isinstance(saved, Mapping):
        note = (f"checkpoint {path} was saved by a run with amp (float16 autocast on CUDA, its gradient scaler at scale "
                f"{saved.get('scale')}) and this run has none (--amp false, or not on CUDA): the resume is not exact "
                "(full precision from here on); resume with --amp true on CUDA to continue it exactly")  # fmt: skip
    else:
        return ""
    if rank_world()[0] == 0:
        logger.warning(note)
    return note


def _rates_of_the_plan(scheduler: Any) -> None:
    """Set the optimiser's learning rates to those of ``scheduler``'s plan at its restored step: the restored
    optimiser holds the saved plan's rates, which the first resumed iteration would otherwise use (the scheduler
    only sets its own after that step). For schedulers of rate factors (``LambdaLR``, ``WarmupCosineSchedule``)."""
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if lambdas is None:
        return
    rates = [base * f(scheduler.last_epoch) for f, base in zip(lambdas, scheduler.base_lrs)]
    for group, rate in zip(scheduler.optimizer.param_groups, rates):
        group["lr"] = rate
    scheduler._last_lr = rates


def load_scheduler_keeping_its_plan(path: Path, name: str, scheduler: Any, state: Mapping) -> list[str]:
    """Restore a scheduler's progress (its step count) but keep the plan this run built it with.

    ``load_state_dict`` of PyTorch's schedulers also restores how they were built: a
    :class:`monai.optimizers.WarmupCosineSchedule` would keep the saved ``t_total``, so a run resumed with a
    larger ``--max_epochs`` followed the finished cosine past its end, the learning rate rising back to its peak.
    Here the new plan wins (the rate follows this run's schedule from the saved step on) and a warning names
    what changed; with the same settings the scheduler is restored exactly. ``WarmupCosineSchedule`` caps
    ``warmup_steps`` at ``t_total``: when the saved run's warm-up was cut so, a longer plan holds more of the warm-up
    asked for, and the warning says that the warm-up now ends later and, from a saved step inside the new warm-up,
    the rate there (it warms up again to the base rate) rather than naming a ``warmup_steps`` the user never changed.

    Args:
        path: the checkpoint, as the warning names it.
        name: the scheduler's name among the checkpoint's objects.
        scheduler: the scheduler this run built.
        state: its saved ``state_dict``.

    Returns:
        The differences (``"t_total: saved 40, now 80"``), empty when the plan is unchanged.
    """
    plan = {k: v for k, v in vars(scheduler).items() if k in state and k not in _SCHEDULER_PROGRESS}
    scheduler.load_state_dict(state)
    _one_rate_per_group(scheduler)
    saved = {k: state[k] for k in plan}
    vars(scheduler).update(plan)
    warmup = _capped_warmup(scheduler, saved, plan, state.get("last_epoch"))
    shown = [k for k in plan if not (warmup and k == "warmup_steps")]
    changed = settings_differences({k: saved[k] for k in shown}, {k: plan[k] for k in shown}) + ([warmup] if warmup else [])
    if changed and rank_world()[0] == 0:
        logger.warning("checkpoint %s: '%s' continues on this run's schedule (%s): the learning rate follows the new "
                       "schedule from the saved step on", path, name, "; ".join(changed))  # fmt: skip
    return changed


def _one_rate_per_group(scheduler: Any) -> None:
    """Give each of the optimiser's groups the rates of a scheduler saved over one group (the earlier release's
    optimiser, :func:`~medgmae.engine.decay_rule.regroup_saved_state`): its one ``base_lrs`` / ``_last_lr`` entry
    for every group, as the saved group's rate is each group's now (the scheduler sets a group without a rate never)."""
    groups = len(getattr(getattr(scheduler, "optimizer", None), "param_groups", ()))
    for key in ("base_lrs", "_last_lr"):
        rates = getattr(scheduler, key, None)
        if isinstance(rates, list) and len(rates) == 1 < groups:
            setattr(scheduler, key, rates * groups)


def _capped_warmup(scheduler: Any, saved: Mapping, plan: Mapping, step: Any) -> str:
    """The line for a warm-up that is longer only because the saved plan had capped it at its shorter ``t_total``
    (``""`` for any other plan): where the warm-up ends now, why, and from a saved ``step`` inside the new warm-up
    the rate there under both plans (``scheduler``, which holds ``plan``, has an ``lr_lambda``)."""
    old, new = saved.get("warmup_steps"), plan.get("warmup_steps")
    if not (isinstance(old, int) and isinstance(new, int) and new > old == saved.get("t_total") != plan.get("t_total")):
        return ""
    line = (f"the warm-up ends at step {new} instead of {old}: the saved run's warm-up was capped at its t_total of "
            f"{old} ({type(scheduler).__name__} caps warmup_steps at t_total) and this run's longer plan holds {new} "
            "warm-up steps")  # fmt: skip
    rate = getattr(scheduler, "lr_lambda", None)
    if callable(rate) and isinstance(step, int) and step < new:
        now = rate(step)
        vars(scheduler).update(saved)
        before = rate(step)
        vars(scheduler).update(plan)
        line += f"; at the saved step {step} the rate is {now:.3g} x the base rate (saved plan: {before:.3g}) and warms up to it by step {new}"
    return line
