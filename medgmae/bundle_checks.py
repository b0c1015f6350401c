"""Checks a bundle runs first, before it reads data or writes anything: its settings and its output folders.

``python -m monai.bundle run ... --max_epochs -3`` hands the config whatever the command line held; read where it is
used, a bad value fails late (after the data pre-check, with partial output written) and often without the key's
name (``invalid literal for int() with base 10: 'abc'``). Each bundle's ``initialize`` list therefore starts with
:func:`check_settings` and :func:`check_output_dirs`, which raise one :class:`BundleSettingError` naming every bad
key and its value. True/false keys are checked where they are read, with :func:`medgmae.cli_types.as_bool`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from medgmae import cli_types
from medgmae.files import output_dir_problem

__all__ = ["BundleSettingError", "check_settings", "check_output_dirs"]

#: The value kinds :func:`check_settings` knows, by name (each parses the value's text or raises).
KINDS: dict[str, Callable[[str], Any]] = {
    "positive_int": cli_types.positive_int,
    "nonneg_int": cli_types.nonneg_int,
    "positive_float": cli_types.positive_float,
    "nonneg_float": cli_types.nonneg_float,
    "fraction": cli_types.fraction,
    "unit_interval": cli_types.unit_interval,
    "proper_fraction": cli_types.proper_fraction,
}


class BundleSettingError(ValueError):
    """A bundle setting (a config key, usually given on the command line) that cannot be used."""


def _problem(value: Any, kind: str | Sequence[Any]) -> str | None:
    """Why ``value`` is not of ``kind`` (a name of :data:`KINDS`, optionally ending in ``s`` for "one value or a
    list of them", or a sequence of allowed values), ``None`` when it is."""
    if not isinstance(kind, str):
        return None if value in kind else f"expected one of {list(kind)}, got {value!r}"
    if kind == "bool":
        try:
            cli_types.as_bool(value)
        except ValueError:
            return f"expected true or false, got {value!r}"
        return None
    if kind.endswith("s") and kind[:-1] in KINDS:
        values = value if isinstance(value, (list, tuple)) else [value]
        return next((p for p in (_problem(v, kind[:-1]) for v in values) if p), None) if values else "expected a value, got []"
    if isinstance(value, bool):  # int(True) is 1: a flag is not a count
        return f"expected {kind.replace('_', ' ')}, got {value!r}"
    try:
        KINDS[kind](str(value).strip())
    except argparse.ArgumentTypeError as e:
        return str(e)
    return None


def check_settings(settings: Mapping[str, tuple[Any, str | Sequence[Any]]]) -> bool:
    """Check each setting against its kind; raise one error naming every bad key.

    Args:
        settings: ``{key: (value, kind)}``; kind is a name of :data:`KINDS` (``"positive_int"``...), the same name
            with an ``s`` (one value or a list of them, e.g. ``roi_size``), ``"bool"`` (what
            :func:`~medgmae.cli_types.as_bool` reads), or a list of the allowed values.

    Returns:
        ``True`` (so that the call can sit in a bundle's ``initialize`` list).

    Raises:
        BundleSettingError: one line per bad key, ``--key: expected ..., got ...``.
    """
    problems = [f"--{key}: {p}" for key, (value, kind) in settings.items() if (p := _problem(value, kind))]
    if problems:
        raise BundleSettingError("bad setting(s), nothing was written:\n  " + "\n  ".join(problems))
    return True


def check_output_dirs(**dirs: str | Path) -> bool:
    """Check that each output folder (by config key) exists as a writable folder or can be created; create nothing.

    Args:
        dirs: ``key=path``, e.g. ``output_dir=@output_dir``.

    Returns:
        ``True`` (so that the call can sit in a bundle's ``initialize`` list).

    Raises:
        BundleSettingError: one line per unusable folder, naming its key and path.
    """
    problems = [f"--{key} {str(path)!r}: {p}" for key, path in dirs.items() if (p := output_dir_problem(path))]
    if problems:
        raise BundleSettingError("unusable output folder(s), nothing was written:\n  " + "\n  ".join(problems))
    return True
