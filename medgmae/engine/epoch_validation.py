"""An epoch's validation as :class:`~medgmae.engine.checkpoint_handler.CheckpointHandler` runs it: between the end of the
epoch's training and the epoch's checkpoint, so that a run stopped while validating keeps the epoch's training.

The checkpoint handler attaches the validation handlers itself (its ``validation`` argument), after a step that
takes the run's state as the epoch's training left it (weights, optimiser, scheduler, random states of every rank,
records such as the metric history), kept here (:meth:`EpochValidation.keep`, marked :data:`PENDING`) until the
epoch is validated. When Ctrl-C, SIGTERM or an error stops the run while it validates, that state is written as
the epoch's ``checkpoint_epoch=N.pt``, marked; a resume from it runs the epoch-end steps of the validation handlers
(:meth:`EpochValidation.run`) and writes the epoch's checkpoint as an uninterrupted run does, then trains on.
Nothing more is written per epoch: the state taken holds references to the weights and optimiser tensors, which
validation does not change, and copies of the small records.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

from ignite.engine import Engine, EventEnum, Events

from medgmae.engine.restore import TRAINING_STATE

__all__ = ["PENDING", "EpochValidation", "ResumeEvents"]

#: ``engine["pending"]`` of a checkpoint saved while its epoch was validated: the validation a resume runs first.
PENDING = "validation"


class ResumeEvents(EventEnum):
    """Events of a resumed run (registered on the trainer by the checkpoint handler, and by any handler attaching to
    them: registering twice is harmless).

    ``PENDING_EPOCH_SAVED``: a resume has validated the epoch a stop cut short and saved that epoch's checkpoint, at
    the trainer's start. An uninterrupted run's epoch-end steps that follow the checkpoint (the model export) do not
    run for that epoch otherwise; they attach to this event to catch up.
    """

    PENDING_EPOCH_SAVED = "pending_epoch_saved"


class _AttachRecorder:
    """The engine as a validation handler attaches to it: every registration goes to the engine, and those at epoch
    ends are kept as ``(event, handler, args, kwargs)`` to be run again on resume."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.epoch_end: list[tuple[Any, Any, tuple, dict]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def add_event_handler(self, event_name: Any, handler: Any, *args: Any, **kwargs: Any) -> Any:
        if event_name == Events.EPOCH_COMPLETED:  # also EPOCH_COMPLETED(every=...) and other filtered forms
            self.epoch_end.append((event_name, handler, args, kwargs))
        return self._engine.add_event_handler(event_name, handler, *args, **kwargs)


class EpochValidation:
    """The handlers that validate a training run at its epoch ends (ignite handlers with ``attach(engine)``, such as
    MONAI's ``ValidationHandler`` or :class:`~medgmae.mae_training.MaskedValidationHandler`).

    While an epoch is validated it also keeps the run's state as the epoch's training left it (:meth:`keep`), which
    the checkpoint handler saves should the run stop before the epoch is validated.

    Args:
        handlers: the handlers, in the order they run; ``None`` entries (a component switched off the MONAI way,
            ``--val#pictures#_disabled_ true``) are left out.

    Attributes:
        pending: the state kept for the epoch being validated, marked :data:`PENDING` (``None`` between validations).

    Raises:
        ValueError: an entry without ``attach``.
    """

    def __init__(self, handlers: Sequence[Any] = ()) -> None:
        handlers = [h for h in (handlers or ()) if h is not None]
        for h in handlers:
            if not callable(getattr(h, "attach", None)):
                raise ValueError(f"validation handler {type(h).__name__} has no attach(engine): give ignite handlers")
        self.handlers = handlers
        self._steps: list[tuple[Any, Any, tuple, dict]] = []
        self.pending: dict | None = None

    def attach(self, engine: Engine) -> None:
        """Attach the handlers to ``engine`` (their epoch-end steps are remembered for :meth:`run`).

        Args:
            engine: the trainer.
        """
        recorder = _AttachRecorder(engine)
        for h in self.handlers:
            h.attach(recorder)
        self._steps = recorder.epoch_end

    def run(self, engine: Engine) -> None:
        """Run the handlers' epoch-end steps for ``engine.state.epoch`` as ignite would at the epoch's end: each
        whose event filter (``every``, a handler's own interval) passes at that epoch, in the order attached.

        Args:
            engine: the trainer, its state at the end of the epoch to validate (each step takes the engine first).
        """
        for event, handler, args, kwargs in self._steps:
            due = getattr(event, "filter", None)
            if due is None or due(engine, engine.state.epoch):
                handler(engine, *args, **kwargs)

    def keep(self, payload: dict, objects: Mapping[str, Any]) -> None:
        """Keep ``payload``, the checkpoint of the epoch about to be validated, as :attr:`pending`, marked
        :data:`PENDING` in its ``engine`` record: references to the weights and optimiser tensors
        (:data:`~medgmae.engine.restore.TRAINING_STATE`), which validation leaves as they are, and copies of the
        records, which it updates.

        Args:
            payload: the checkpoint's content, its ``objects`` the state dicts of ``objects``.
            objects: the checkpointed objects by name.
        """
        payload["objects"] = {name: state if isinstance(objects[name], TRAINING_STATE) else copy.deepcopy(state)
                              for name, state in payload["objects"].items()}  # fmt: skip
        payload["engine"]["pending"] = PENDING
        self.pending = payload

    def take(self) -> dict | None:
        """The state :meth:`keep` kept, no longer kept (``None`` when the epoch was validated, or none was kept)."""
        pending, self.pending = self.pending, None
        return pending
