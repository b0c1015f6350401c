"""Counts and sizes given to the Python API as whole numbers.

A size or count may come as a Python int, a NumPy integer (``np.int64(96)``, from an array's shape), an integer
0-d tensor, or a whole float (``96.0``, from a config or an arithmetic); each is taken as its int. A fraction
(``4.5``), a bool, NaN or a string is refused, not truncated: :func:`whole_number` raises a ``TypeError``, the
functions that take an argument's name (:func:`positive_count`, :func:`positive_sizes`, ...) a ``ValueError`` naming
it. torch is not imported here (a tensor is only told apart once something else has imported torch).
"""

from __future__ import annotations

import math
import numbers
import sys
from typing import Any, Sequence

import numpy as np

__all__ = ["whole_number", "whole_sizes", "positive_count", "nonnegative_count", "positive_sizes"]


def _scalar_tensor(value: Any) -> bool:
    """Whether ``value`` is a 0-d torch tensor (never when torch has not been imported: then none exists)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor) and value.dim() == 0


def whole_number(value: Any) -> int:
    """``value`` as an int when it is a whole number (``96``, ``np.int64(96)``, ``96.0``, a 0-d tensor of one).

    Args:
        value: the number.

    Returns:
        The int.

    Raises:
        TypeError: anything else (a fraction, a bool, NaN or infinity, a string, a sequence).
    """
    if _scalar_tensor(value) and not value.is_complex():
        value = value.item()
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"a bool is not a whole number: {value!r}")
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    raise TypeError(f"not a whole number: {value!r}")


def whole_sizes(sizes: Sequence[int], what: str) -> tuple[int, ...]:
    """``sizes`` as ints (each a :func:`whole_number`); a fraction (``4.5``) or a bool is refused, not truncated.

    Args:
        sizes: the sizes.
        what: the error message's start, such as ``"shape must be three positive ints (D, H, W)"``.

    Returns:
        The sizes as a tuple of ints.

    Raises:
        ValueError: ``"<what>, got <sizes>"`` for anything that is not a sequence of whole numbers.
    """
    try:
        if isinstance(sizes, (str, bytes)):
            raise TypeError
        return tuple(whole_number(s) for s in sizes)
    except TypeError as e:
        raise ValueError(f"{what}, got {sizes!r}") from e


def positive_count(value: Any, name: str) -> int:
    """``value`` as an int >= 1 (see :func:`whole_number`).

    Args:
        value: the count.
        name: the argument's name, for the message.

    Returns:
        The count.

    Raises:
        ValueError: ``"<name> must be a positive whole number, got <value>"``.
    """
    return _count_from(value, name, 1, "a positive whole number")


def nonnegative_count(value: Any, name: str) -> int:
    """``value`` as an int >= 0 (see :func:`whole_number`), such as a number of iterations.

    Args:
        value: the count.
        name: the argument's name, for the message.

    Returns:
        The count.

    Raises:
        ValueError: ``"<name> must be a whole number >= 0, got <value>"``.
    """
    return _count_from(value, name, 0, "a whole number >= 0")


def _count_from(value: Any, name: str, low: int, words: str) -> int:
    """``value`` as an int >= ``low``, else ``ValueError("<name> must be <words>, got <value>")``."""
    try:
        count = whole_number(value)
    except TypeError:
        count = low - 1
    if count < low:
        raise ValueError(f"{name} must be {words}, got {value!r}")
    return count


def positive_sizes(value: Any, dims: int, name: str, scalar: bool = True) -> tuple[int, ...]:
    """``value`` as ``dims`` ints >= 1: a sequence of ``dims`` whole numbers, or (``scalar=True``, MONAI's
    convention for a size) one whole number for every axis.

    Args:
        value: the size(s).
        dims: how many axes.
        name: the argument's name, for the message.
        scalar: whether one number stands for every axis.

    Returns:
        A ``dims``-tuple of ints.

    Raises:
        ValueError: ``"<name> must be ..., got <value>"`` for a fraction, a bool, zero or a negative size, or the
            wrong number of sizes.
    """
    expected = f"{dims} positive whole numbers" + (" or one for every axis" if scalar else "")
    one = isinstance(value, (numbers.Number, np.generic)) or _scalar_tensor(value)
    try:
        sizes = whole_sizes((value,) * dims if scalar and one else value, name)
    except ValueError:
        sizes = ()
    if len(sizes) != dims or min(sizes) < 1:
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return sizes
