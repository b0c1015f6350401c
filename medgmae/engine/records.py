"""Settings a resumed run must share with the run that wrote its checkpoint.

:class:`SettingsRecord` is a ``state_dict``-able object for :class:`~medgmae.engine.CheckpointHandler`'s
``objects``: saved with every checkpoint, and on resume it refuses a checkpoint written with other settings,
naming each one that differs (the handler restores such records before any weights, so a changed setting is
named rather than a tensor shape; a setting that changes no shape would otherwise resume silently).
"""

from __future__ import annotations

import json
from typing import Any, Mapping

__all__ = ["SettingsRecord"]


def _flat(settings: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{"model": {"k": 1}}`` -> ``{"model.k": 1}`` (values compared as JSON, so tuples equal lists)."""
    out: dict[str, Any] = {}
    for k, v in settings.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.loads(json.dumps(v, default=str))
    return out


class SettingsRecord:
    """The settings of a run (nested plain data), checked against a checkpoint's on resume.

    Args:
        settings: e.g. ``{"model": model.config(), "data": {...}}``.
        what: how the error message names the run (``"GViT training"``).
    """

    def __init__(self, settings: Mapping, what: str = "the run") -> None:
        if not isinstance(settings, Mapping):
            raise ValueError(f"settings must be a mapping, got {type(settings).__name__}")
        self.settings, self.what = dict(settings), what

    def state_dict(self) -> dict:
        return {"settings": json.loads(json.dumps(self.settings, default=str))}

    def load_state_dict(self, state: Mapping) -> None:
        """Accept a checkpoint written with these settings.

        Raises:
            ValueError: naming each differing setting (saved and current value).
        """
        saved, mine = _flat(state.get("settings") or {}), _flat(self.settings)
        diff = [f"{k}: saved {saved.get(k)!r}, current {mine.get(k)!r}" for k in sorted(set(saved) | set(mine))
                if saved.get(k) != mine.get(k)]  # fmt: skip
        if diff:
            raise ValueError(
                f"the checkpoint was written by {self.what} with other settings (" + "; ".join(diff) + "). Resume with "
                "the saved settings or train into a new output_dir"
            )
