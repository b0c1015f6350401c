"""Settings a resumed run must share with the run that wrote its checkpoint.

:class:`SettingsRecord` is a ``state_dict``-able object for :class:`~medgmae.engine.CheckpointHandler`'s
``objects``: saved with every checkpoint, and on resume it refuses a checkpoint written with other settings,
naming each one that differs (the handler restores such records before any weights, so a changed setting is
named rather than a tensor shape; a setting that changes no shape would otherwise resume silently).
"""

from __future__ import annotations

import json
from typing import Mapping

from medgmae.settings_diff import settings_differences

__all__ = ["SettingsRecord"]


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
        """The settings as plain JSON data (tuples as lists), saved with the checkpoint."""
        return {"settings": json.loads(json.dumps(self.settings, default=str))}

    def load_state_dict(self, state: Mapping) -> None:
        """Accept a checkpoint written with these settings.

        Args:
            state: what :meth:`state_dict` returned when the checkpoint was written.

        Raises:
            ValueError: naming each differing setting (:func:`~medgmae.settings_diff.settings_differences`).
        """
        diff = settings_differences(state.get("settings") or {}, self.state_dict()["settings"])
        if diff:
            raise ValueError(
                f"the checkpoint was written by {self.what} with other settings (" + "; ".join(diff) + "). Resume with "
                "the saved settings or train into a new output_dir"
            )
