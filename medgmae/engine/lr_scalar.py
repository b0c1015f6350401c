"""The learning rate as a TensorBoard scalar, per iteration.

MONAI's ``TensorBoardStatsHandler`` writes ``engine.state`` attributes at epoch ends only, and its iteration writer
runs at ``ITERATION_COMPLETED``, after ``LrScheduleHandler`` has already stepped to the next iteration's rate.
:class:`LearningRateScalar` writes at ``ITERATION_STARTED`` instead: the rate the iteration's optimiser step uses.
"""

from __future__ import annotations

from typing import Any

import torch
from ignite.engine import Engine, Events

__all__ = ["LearningRateScalar"]


class LearningRateScalar:
    """Write the optimiser's learning rate (one parameter group's) to TensorBoard at every iteration.

    Args:
        summary_writer: a ``SummaryWriter``; ``None`` (a process other than rank 0) writes nothing.
        tag: the scalar's tag.
        optimizer: the optimiser whose rate is written (default: the engine's).
        group: the index of the parameter group whose rate is written (default the first; ``-1`` the last, e.g.
            fine-tuning's decoder group, which trains at the base rate under layer-wise decay).
    """

    def __init__(
        self,
        summary_writer: Any = None,
        tag: str = "train/lr",
        optimizer: torch.optim.Optimizer | None = None,
        group: int = 0,
    ) -> None:
        self.writer, self.tag, self.optimizer, self.group = summary_writer, tag, optimizer, int(group)

    def attach(self, engine: Engine) -> None:
        """Write at each iteration's start and flush at each epoch's end."""
        engine.add_event_handler(Events.ITERATION_STARTED, self)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._flush)

    def __call__(self, engine: Engine) -> None:
        if self.writer is None:
            return
        optimizer = self.optimizer if self.optimizer is not None else engine.optimizer
        self.writer.add_scalar(self.tag, float(optimizer.param_groups[self.group]["lr"]), engine.state.iteration)

    def _flush(self, _: Engine) -> None:
        if self.writer is not None:
            self.writer.flush()
