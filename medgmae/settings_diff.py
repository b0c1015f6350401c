"""The one comparison of settings saved with a run (a training checkpoint, a reconstruction state) against the
settings of the run that resumes it, worded the same wherever a resume is refused.

Each differing setting is one line, ``"num_gaussians: saved 2048, now 1024"``; a setting that only one side holds
reads ``saved (not recorded)`` or ``now (not set)``, except a setting the saved record lacks whose current value
is ``None``: settings added to the toolkit later default to ``None``, the behaviour before them, so a run saved
before one existed resumes. Nested mappings are compared key by key (``"model.seed"``),
lists element by element, floats within a relative tolerance (a value that went through float32 or JSON is the
same setting), booleans never equal to numbers. Light on purpose: no torch, ignite or MONAI imports, so the
reconstruction CLI can use it.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any, Mapping

__all__ = ["settings_differences", "NOT_RECORDED", "NOT_SET"]

#: How a line shows a setting that the saved record does not hold.
NOT_RECORDED = "(not recorded)"
#: How a line shows a setting that the current run does not have.
NOT_SET = "(not set)"


def _plain(value: Any) -> Any:
    """``value`` as plain data: mappings as dicts, tuples as lists, numpy-like scalars as int / float, paths and other
    objects as their text."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if getattr(value, "shape", None) == () and hasattr(value, "item"):  # a numpy scalar or 0-d tensor
        return _plain(value.item())
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return os.fspath(value) if isinstance(value, os.PathLike) else str(value)


def _equal(a: Any, b: Any, rel_tol: float) -> bool:
    """Whether two plain values are the same setting (floats within ``rel_tol``)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if isinstance(a, int) and isinstance(b, int):
            return a == b
        return a == b or math.isclose(a, b, rel_tol=rel_tol, abs_tol=0.0)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y, rel_tol) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k], rel_tol) for k in a)
    return type(a) is type(b) and a == b


def _walk(saved: dict, current: dict, prefix: str, labels: Mapping[str, str], rel_tol: float, out: list[str]) -> None:
    """Append a line to ``out`` for each differing key: the current run's keys in their order, then the keys only
    the saved record holds, sorted."""
    keys = list(current) + sorted(k for k in saved if k not in current)
    for k in keys:
        name = prefix + k
        if k in saved and k in current:
            old, new = saved[k], current[k]
            if isinstance(old, dict) and isinstance(new, dict):
                _walk(old, new, name + ".", labels, rel_tol, out)
                continue
            if _equal(old, new, rel_tol):
                continue
        elif k not in saved and current[k] is None:  # a setting added since, at its default: the old behaviour
            continue
        old_text = repr(saved[k]) if k in saved else NOT_RECORDED
        new_text = repr(current[k]) if k in current else NOT_SET
        out.append(f"{labels.get(name, name)}: saved {old_text}, now {new_text}")


def settings_differences(
    saved: Mapping, current: Mapping, labels: Mapping[str, str] | None = None, rel_tol: float = 1e-6
) -> list[str]:
    """The settings that differ between a saved record and the current run, one line each.

    Args:
        saved: the settings the checkpoint or state recorded (nested plain data).
        current: the current run's settings, in the order its lines should follow.
        labels: how a line names a setting, by its dotted key (``{"init.num_gaussians": "--num-gaussians"}``);
            keys not in it are named by the dotted key itself.
        rel_tol: relative tolerance within which two floats (or a float and an int) are the same setting.

    Returns:
        ``"<name>: saved <value>, now <value>"`` per differing setting (values as Python literals, ``(not
        recorded)`` / ``(not set)`` for a side that lacks it): the current run's keys first, depth first in their
        order, then keys only the saved record holds, sorted. Empty when the settings agree.

    Raises:
        ValueError: ``saved`` or ``current`` is not a mapping.
    """
    for what, value in (("saved", saved), ("current", current)):
        if not isinstance(value, Mapping):
            raise ValueError(f"{what} settings must be a mapping, got {type(value).__name__}")
    out: list[str] = []
    _walk(_plain(saved), _plain(current), "", labels or {}, rel_tol, out)
    return out
