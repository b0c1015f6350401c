"""Flag parsing shared by the command-line tools and the bundle configs.

The ``argparse`` value types each parse one option value or raise :class:`argparse.ArgumentTypeError` naming it,
which argparse turns into a usage error (exit status 2). :func:`as_bool` parses a true/false flag given to a bundle
(``--amp false``) or a handler argument, raising ``ValueError`` naming the flag.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from decimal import Decimal, InvalidOperation
from typing import Any, Callable, TypeVar

__all__ = ["INTEGER_NAMES", "as_bool", "as_given", "as_path_text", "count_or_all", "expand_home", "factor", "fraction", "integer", "is_integer_text",
           "nonneg_float", "nonneg_int", "positive_float", "positive_int", "proper_fraction", "unit_interval", "ToolParser",
           "REPEATABLE_ACTIONS"]

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


#: The integer types by name (``medgmae.setting_kinds.KINDS``), as their messages name them.
INTEGER_NAMES = {"int": "an integer", "positive_int": "a positive integer", "nonneg_int": "a non-negative integer",
                 "count_or_all": "a non-negative integer or -1 (all)"}


def whole_number_text(value: str | float) -> int | None:
    """The integer a float or a text in float notation stands for (``100.0``, ``"1e2"``: 100), else ``None`` (a
    command-line value's text; :func:`medgmae.whole_numbers.whole_number` checks Python values)."""
    try:
        return _int(str(value))
    except ValueError:
        return None


def is_integer_text(value: str | float) -> bool:
    """Whether ``value`` is the text of an integer (a float, or text in float notation such as ``1e2``, is not: the
    configs use a setting as given, and this module's argparse types, which read ``1e2`` as 100, do not run there)."""
    if isinstance(value, float):
        return False
    try:
        int(value.strip())
    except ValueError:
        return False
    return True


def _int(text: str) -> int:
    """``int(text)``, also for a whole number in float notation (``15e3``, ``100.0``: iteration counts are often
    written so); raises ``ValueError`` for any other text."""
    try:
        return int(text)
    except ValueError:
        try:
            value = Decimal(str(text).strip())  # exact: 12345678901234567e0 stays what it says
        except InvalidOperation:
            raise ValueError(f"{text!r} is not a number") from None
        if not (value.is_finite() and value == value.to_integral_value() and abs(value) < 2**63):
            raise ValueError(f"{text!r} is not a whole number of a usable size")
        return int(value)


def integer(text: str) -> int:
    """Any integer (e.g. a count where a negative value means "all"; ``1e4`` reads as 10000)."""
    return _parse(text, _int, lambda v: True, INTEGER_NAMES["int"])


def positive_int(text: str) -> int:
    """An integer >= 1 (``1e4`` reads as 10000)."""
    return _parse(text, _int, lambda v: v >= 1, INTEGER_NAMES["positive_int"])


def nonneg_int(text: str) -> int:
    """An integer >= 0 (``1e4`` reads as 10000)."""
    return _parse(text, _int, lambda v: v >= 0, INTEGER_NAMES["nonneg_int"])


def count_or_all(text: str) -> int:
    """An integer >= 0, or -1 for "all" (e.g. how many images to explain)."""
    return _parse(text, _int, lambda v: v >= -1, INTEGER_NAMES["count_or_all"])


def positive_float(text: str) -> float:
    """A finite number > 0."""
    return _parse(text, float, lambda v: math.isfinite(v) and v > 0, "a positive number")


def finite_float(text: str) -> float:
    """A finite number of any sign (e.g. an offset)."""
    return _parse(text, float, math.isfinite, "a finite number")


def nonneg_float(text: str) -> float:
    """A finite number >= 0."""
    return _parse(text, float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")


def fraction(text: str) -> float:
    """A number in ``(0, 1]`` (a share of the data, e.g. a label fraction); a number up to 100 read as a percentage
    is refused with the fraction it would be."""
    try:
        return factor(text)
    except argparse.ArgumentTypeError as e:
        given = str(text).strip()
        value = _number_or_none(given[:-1] if given.endswith("%") else given)  # "10%" is a percentage too
        if value is not None and (1.0 < value <= 100.0 or (given.endswith("%") and 0.0 < value <= 100.0)):
            raise argparse.ArgumentTypeError(f"{e} (a fraction, not a percentage: {value:g} % is {value / 100:g})") from None
        raise


def factor(text: str) -> float:
    """A number in ``(0, 1]`` that multiplies (e.g. a layer-wise learning-rate decay): :func:`fraction` without its
    reading of a larger number as a percentage."""
    return _parse(text, float, lambda v: 0.0 < v <= 1.0, "a number in (0, 1]")


def _number_or_none(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def unit_interval(text: str) -> float:
    """A number in ``[0, 1]`` (a rate, e.g. a cache rate)."""
    return _parse(text, float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")


def proper_fraction(text: str) -> float:
    """A number in ``[0, 1)`` (e.g. a mask ratio: something must stay visible)."""
    return _parse(text, float, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")


def as_bool(value: Any, name: str = "flag") -> bool:
    """A true/false flag as a bool: accepts bools, 0/1 and true/false/yes/no/on/off (any case, as text or not).

    Args:
        value: the flag's value.
        name: the flag's name, for the error message.

    Returns:
        The bool.

    Raises:
        ValueError: anything else, naming the flag.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}")


def as_path_text(value: Any, key: str | None = None) -> Any:
    """A path setting of a bundle as text: MONAI's command line reads ``--output_dir 2024`` as the number 2024, the
    folder ``2024``, ``--output_dir 2024_01`` as the number 202401 (Python's digit separator), and ``True`` or
    ``[a,b]`` as Python's values (a ``TypeError`` then); with ``key``, the folder is the text the command line gave
    for ``--key`` (``2024_01``, ``True``), else a number's text. Text gets back the ``#`` MONAI made ``::``
    (:func:`as_given`); paths and ``None`` (``--cache_dir None``: no disk cache) are returned as they are, as is any
    other value not typed on the command line.

    Args:
        value: the setting's value.
        key: the setting's name, whose ``--key`` text a value is read back from (the bundle configs give it).
    """
    if isinstance(value, str) and key is not None:
        return as_given(value, key)
    if value is None or isinstance(value, (str, os.PathLike)):
        return value
    if key is not None:
        from medgmae.bundle_command_line import command_line_flags  # the command line as typed

        given = command_line_flags().get(key)
        if isinstance(given, str) and given.strip():
            return given
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def as_given(value: Any, key: str) -> Any:
    """A bundle setting's text, or list of texts, with each ``#`` back that MONAI's config parser made ``::`` (it
    reads ``#`` in any text as its reference separator: ``--output_dir run#2`` reached the config as ``run::2``):
    the value as the command line, ``--args_file``, a run from Python or a config file gave it
    (:func:`medgmae.bundle_command_line.given_setting`) where it differs from ``value`` only so; else ``value``
    (a ``::`` that was given stays).

    Args:
        value: the setting's value as the config holds it (text, a list of texts, or anything else).
        key: the top-level setting's name, e.g. ``"input_files"``.

    Returns:
        ``value``, its texts as given.
    """
    texts = value if isinstance(value, (list, tuple)) else [value]
    if not any(isinstance(v, str) and "::" in v for v in texts):
        return value
    from medgmae.bundle_command_line import given_setting

    return _restored(value, given_setting(key))


def _restored(value: Any, given: Any) -> Any:
    """``value`` with the ``#`` of ``given`` back where MONAI made them ``::`` (lists entry by entry)."""
    if isinstance(value, str):
        given = os.fspath(given) if isinstance(given, os.PathLike) else given
        return given if isinstance(given, str) and given != value and given.replace("#", "::") == value else value
    if isinstance(value, (list, tuple)) and isinstance(given, (list, tuple)) and len(given) == len(value):
        return type(value)(_restored(v, g) for v, g in zip(value, given))
    return value


def expand_home(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with every text or path value (and such a value in a list) that starts with ``~`` expanded to the
    home folder, in place: the shell leaves ``"~/x"`` in quotes and ``--out=~/x`` as they are, and Python's ``Path``
    would then make a folder called ``~`` under the current one while nibabel wrote into the home folder.

    Args:
        args: parsed command-line arguments.

    Returns:
        The same namespace.
    """

    def home(v: Any) -> Any:
        if isinstance(v, (str, os.PathLike)) and str(v).startswith("~"):
            return type(v)(os.path.expanduser(v))  # a Path stays a Path
        return v

    for name, value in vars(args).items():
        setattr(args, name, [home(v) for v in value] if isinstance(value, list) else home(value))
    return args


#: Option actions meant to be given more than once (``action="append"``, ``"append_const"``, ``"extend"``, ``"count"``).
REPEATABLE_ACTIONS = (argparse._AppendAction, argparse._AppendConstAction, argparse._CountAction)


class ToolParser(argparse.ArgumentParser):
    """The argument parser of every command-line tool: no abbreviated options (argparse would take ``--num-c`` for
    ``--num-cases``, so that a typo or a flag of another tool picks a flag silently), an option given twice refused
    (``--iterations 3 --iterations 4``: argparse keeps the last without a word; options meant to repeat,
    :data:`REPEATABLE_ACTIONS`, excepted), and an unknown option after a subcommand reported with that subcommand's
    usage (argparse reports it with the top-level one) and the option it was likely meant to be (``--num_layers``,
    the bundles' spelling, for ``--num-layers``).

    Subparsers (``add_subparsers``) are of this class too. Exits with status 2 on a usage error, as argparse does.
    """

    #: the command line being parsed (for :meth:`error`: argparse names missing arguments before unknown ones)
    _argv: list[str] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self._given: set = set()

    def parse_known_args(self, args=None, namespace=None):  # noqa: D102 (argparse's)
        self._given = set()  # the options of this parse (a subcommand's parser parses its own part)
        return super().parse_known_args(args, namespace)

    def _get_values(self, action: argparse.Action, arg_strings: list[str]) -> Any:
        """argparse's conversion of one occurrence of ``action``'s arguments, refusing a second occurrence of an
        option that is not meant to repeat."""
        if action.option_strings and not isinstance(action, REPEATABLE_ACTIONS):
            if action in self._given:
                self.error(f"{'/'.join(action.option_strings)} given twice")
            self._given.add(action)
        return super()._get_values(action, arg_strings)

    def parse_args(self, args=None, namespace=None):  # noqa: D102 (argparse's)
        ToolParser._argv = list(sys.argv[1:] if args is None else args)
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            inner = self._innermost(parsed)
            inner.error(f"unrecognized arguments: {' '.join(extras)}{inner._suggestion(extras)}")
        return parsed

    def error(self, message: str):  # noqa: D102 (argparse's)
        if "arguments are required" in message:  # an unknown option is the likelier mistake (--vol for --volume)
            given = [a.split("=")[0] for a in ToolParser._argv if a.startswith("--")]
            unknown = [a for a in given if a not in self._option_string_actions]
            if unknown:
                message += f"; unrecognized arguments: {' '.join(unknown)}{self._suggestion(unknown)}"
        super().error(message)

    def _suggestion(self, unknown: list[str]) -> str:
        """`` (did you mean --num-layers?)`` for the unknown ``--`` options among ``unknown`` that are close to one of
        this parser's: spelt with ``_`` for ``-`` (``--num_layers``, as the bundles spell their keys), cut short or
        mistyped; ``""`` when none is."""
        import difflib

        options = sorted(o for o in self._option_string_actions if o.startswith("--"))
        pairs = []
        for flag in dict.fromkeys(a.split("=")[0] for a in unknown if a.startswith("--")):
            dashed = flag[:2] + flag[2:].replace("_", "-")
            close = [dashed] if dashed in options else difflib.get_close_matches(dashed, options, n=1)
            pairs += [(close[0], flag)] if close else []
        if not pairs:
            return ""
        if len(pairs) == 1:
            return f" (did you mean {pairs[0][0]}?)"
        return f" (did you mean {', '.join(f'{option} for {flag}' for option, flag in pairs)}?)"

    def _innermost(self, parsed: argparse.Namespace) -> argparse.ArgumentParser:
        """The (sub)parser of the subcommand ``parsed`` chose, this one without subcommands."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction) and getattr(parsed, action.dest, None) in action.choices:
                sub = action.choices[getattr(parsed, action.dest)]
                return sub._innermost(parsed) if isinstance(sub, ToolParser) else sub
        return self
