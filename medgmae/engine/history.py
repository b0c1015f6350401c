"""The metric history of a training run: per-epoch series and the best value, saved inside the checkpoints.

:class:`MetricHistory` is a ``state_dict``-able object for :class:`~medgmae.engine.CheckpointHandler`'s
``objects``: its state holds only lists, numbers and strings (``torch.load(..., weights_only=True)`` reads it), so a
resumed run keeps its curves and its best model.
"""

from __future__ import annotations

import math
from typing import Mapping

__all__ = ["MetricHistory"]


class MetricHistory:
    """Per-epoch values of named metrics, and the best epoch of one of them.

    Args:
        best_metric: the metric whose best value :meth:`update_best` tracks (e.g. ``"val_psnr"``).
        mode: ``"max"`` (higher is better) or ``"min"``.
    """

    def __init__(self, best_metric: str = "val_psnr", mode: str = "max") -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.best_metric, self.mode = str(best_metric), mode
        self.series: dict[str, dict[str, list]] = {}
        self.best_value: float = -math.inf if mode == "max" else math.inf
        self.best_epoch: int = -1

    def record(self, name: str, epoch: int, value: float) -> None:
        """Record ``value`` of ``name`` at ``epoch`` (replacing an earlier value of the same epoch)."""
        s = self.series.setdefault(str(name), {"epoch": [], "value": []})
        if s["epoch"] and s["epoch"][-1] == int(epoch):
            s["value"][-1] = float(value)
            return
        s["epoch"].append(int(epoch))
        s["value"].append(float(value))

    def get(self, name: str) -> tuple[list[int], list[float]]:
        """``(epochs, values)`` of ``name`` (empty lists when never recorded)."""
        s = self.series.get(name, {"epoch": [], "value": []})
        return list(s["epoch"]), list(s["value"])

    def latest(self, name: str) -> float | None:
        """The last recorded value of ``name``, or None."""
        values = self.series.get(name, {}).get("value", [])
        return values[-1] if values else None

    def update_best(self, epoch: int, value: float) -> bool:
        """Record ``value`` of the best metric at ``epoch``; True when it beats the best so far (NaN never does)."""
        value = float(value)
        better = value > self.best_value if self.mode == "max" else value < self.best_value
        if math.isfinite(value) and better:
            self.best_value, self.best_epoch = value, int(epoch)
            return True
        return False

    def forget_best(self) -> None:
        """Forget the best value and epoch (the series stay): the next finite value of :meth:`update_best` is the
        best (a run whose best epoch's model file was lost keeps the best of the epochs whose weights it has)."""
        self.best_value, self.best_epoch = (-math.inf if self.mode == "max" else math.inf), -1

    @property
    def has_best(self) -> bool:
        return self.best_epoch >= 0

    def state_dict(self) -> dict:
        return {
            "best_metric": self.best_metric,
            "mode": self.mode,
            "best_value": float(self.best_value),
            "best_epoch": int(self.best_epoch),
            "series": {k: {"epoch": list(v["epoch"]), "value": list(v["value"])} for k, v in self.series.items()},
        }

    def load_state_dict(self, state: Mapping) -> None:
        if state.get("best_metric") != self.best_metric:
            raise ValueError(
                f"checkpoint tracks the best '{state.get('best_metric')}', this run tracks '{self.best_metric}'"
            )
        self.mode = str(state.get("mode", self.mode))
        self.best_value, self.best_epoch = float(state["best_value"]), int(state["best_epoch"])
        self.series = {str(k): {"epoch": [int(e) for e in v["epoch"]], "value": [float(x) for x in v["value"]]}
                       for k, v in state.get("series", {}).items()}  # fmt: skip
