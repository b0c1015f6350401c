"""A package's public names imported on first use (PEP 562), so that importing the package, or one of its light
modules, does not load torch or MONAI: ``from medgmae.data import read_datalist`` works as before, and
``python -m medgmae.data.decathlon --help`` no longer waits for MONAI. No imports here beyond the standard library.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable

__all__ = ["lazy_names"]


def lazy_names(package: str, homes: dict[str, str]) -> Callable[[str], Any]:
    """The module ``__getattr__`` of ``package``: each name of ``homes`` imported from its module when first asked
    for and then kept in the package, as an eager ``from home import name`` in its ``__init__`` would have done.

    Args:
        package: the package's ``__name__``.
        homes: each public name -> the module that defines it (e.g. ``{"read_volume": "medgmae.data.reader"}``).

    Returns:
        The function to assign to the package's ``__getattr__``; it raises ``AttributeError`` for any other name.
    """
    if not isinstance(package, str) or not package:
        raise TypeError(f"package must be a package name, got {package!r}")
    if not isinstance(homes, dict):
        raise TypeError(f"homes must be a dict of name -> module, got {type(homes).__name__}")

    def __getattr__(name: str) -> Any:
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(homes[name]), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
