"""``argparse`` value types shared by the command-line tools: each parses one option value or raises
:class:`argparse.ArgumentTypeError` naming it, which argparse turns into a usage error (exit status 2)."""

from __future__ import annotations

import argparse
import math
from typing import Callable, TypeVar

__all__ = ["nonneg_float", "nonneg_int", "positive_float", "positive_int"]

T = TypeVar("T", int, float)


def _parse(text: str, convert: Callable[[str], T], accept: Callable[[T], bool], expected: str) -> T:
    """``convert(text)`` if it parses and ``accept`` holds, else an ArgumentTypeError ``expected <expected>``."""
    try:
        value = convert(text)
    except ValueError:
        value = None
    if value is None or not accept(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _parse(text, int, lambda v: v >= 1, "a positive integer")


def nonneg_int(text: str) -> int:
    """An integer >= 0."""
    return _parse(text, int, lambda v: v >= 0, "a non-negative integer")


def positive_float(text: str) -> float:
    """A finite number > 0."""
    return _parse(text, float, lambda v: math.isfinite(v) and v > 0, "a positive number")


def nonneg_float(text: str) -> float:
    """A finite number >= 0."""
    return _parse(text, float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
