"""Checks a bundle runs first, before it reads data or writes anything: its settings and its output folders.

``python -m monai.bundle run ... --max_epochs -3`` hands the config whatever the command line held; read where it is
used, a bad value fails late (after the data pre-check, with partial output written) and often without the key's
name (``invalid literal for int() with base 10: 'abc'``). Each bundle's ``initialize`` list (3D and 2D alike)
therefore starts with :func:`check_settings` and :func:`check_output_dirs`, which raise one
:class:`BundleSettingError` naming every bad key and its value. True/false keys are checked here too and read where
they are used with :func:`medgmae.cli_types.as_bool`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from medgmae import cli_types
from medgmae.files import output_dir_problem

__all__ = ["BundleSettingError", "check_settings", "check_output_dirs", "MIN_IMAGE_SIZE"]

#: Smallest image edge the 2D trainings accept: their SSIM (GViT's loss, 2D GMAE's validation) uses an 11-pixel window.
MIN_IMAGE_SIZE = 11

#: The value kinds :func:`check_settings` knows, by name (each parses the value's text or raises).
KINDS: dict[str, Callable[[str], Any]] = {
    "int": cli_types.integer,
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


def _problem(value: Any, kind: str | Sequence[Any] | Callable[[Any], Any], settings: Mapping[str, tuple]) -> str | None:
    """Why ``value`` is not of ``kind`` (see :func:`check_settings`), ``None`` when it is; ``settings`` are all the
    settings checked together (an ``image_size`` is checked against the ``patch_size`` among them)."""
    if callable(kind):
        try:
            kind(value)
        except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
            return str(e)
        return None
    if not isinstance(kind, str):
        return None if value in kind else f"expected one of {list(kind)}, got {value!r}"
    if kind == "bool":
        try:
            cli_types.as_bool(value)
        except ValueError:
            return f"expected true or false, got {value!r}"
        return None
    if kind == "image_size":
        return _image_size_problem(value, settings)
    if kind.endswith("s") and kind[:-1] in KINDS:
        values = value if isinstance(value, (list, tuple)) else [value]
        if not values:
            return "expected a value, got []"
        return next((p for p in (_problem(v, kind[:-1], settings) for v in values) if p), None)
    if isinstance(value, bool):  # int(True) is 1: a flag is not a count
        return f"expected {kind.replace('_', ' ')}, got {value!r}"
    try:
        KINDS[kind](str(value).strip())
    except argparse.ArgumentTypeError as e:
        return str(e)
    return None


def _image_size_problem(value: Any, settings: Mapping[str, tuple]) -> str | None:
    """Why ``value`` is not a square 2D image edge: an integer of at least :data:`MIN_IMAGE_SIZE` and a multiple of
    the ``patch_size`` setting (when that one is a positive integer; otherwise its own line names it)."""
    if "patch_size" not in settings:
        raise ValueError("an image_size check needs the patch_size setting beside it")
    problem = _problem(value, "positive_int", settings)
    if problem:
        return problem
    size, text = int(str(value).strip()), str(value).strip()
    if size < MIN_IMAGE_SIZE:
        return f"expected at least {MIN_IMAGE_SIZE} (the SSIM uses an {MIN_IMAGE_SIZE}-pixel window), got {text!r}"
    patch = settings["patch_size"][0]
    if _problem(patch, "positive_int", settings) is None and size % int(str(patch).strip()):
        return f"expected a multiple of --patch_size {str(patch).strip()}, got {text!r}"
    return None


def check_settings(settings: Mapping[str, tuple[Any, str | Sequence[Any] | Callable[[Any], Any]]]) -> bool:
    """Check each setting against its kind; raise one error naming every bad key.

    Args:
        settings: ``{key: (value, kind)}``; kind is a name of :data:`KINDS` (``"positive_int"``, ``"int"``...),
            the same name with an ``s`` (one value or a list of them, e.g. ``roi_size``), ``"bool"`` (what
            :func:`~medgmae.cli_types.as_bool` reads), ``"image_size"`` (a square 2D image edge: an integer of at
            least :data:`MIN_IMAGE_SIZE` and a multiple of the ``patch_size`` setting, which must be among
            ``settings``), a list of the allowed values, or a callable that raises ``ValueError`` (naming the
            problem) for a bad value.

    Returns:
        ``True`` (so that the call can sit in a bundle's ``initialize`` list).

    Raises:
        BundleSettingError: one line per bad key, ``--key: expected ..., got ...``.
        ValueError: an ``image_size`` kind without a ``patch_size`` setting (a config error, not a bad value).
    """
    problems = [f"--{key}: {p}" for key, (value, kind) in settings.items() if (p := _problem(value, kind, settings))]
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
