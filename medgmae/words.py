"""Counted nouns for the toolkit's messages, ``"1 image"`` / ``"3 images"``: plain string functions that any module
may import at its top (no torch, no engine), re-exported by :mod:`medgmae.engine.run_words`; sizes in bytes as
people read them (:func:`byte_size`: ``"24.6 MB"``, ``"1.50 GiB"``); and class names as people write them
(:func:`label_text`)."""

from __future__ import annotations

import math
import numbers
import unicodedata

__all__ = ["byte_size", "label_text", "plural", "plural_noun"]

#: The units of :func:`byte_size` above bytes: powers of 1000 (SI), and of 1024 (IEC) with ``binary``.
_DECIMAL_UNITS = ("kB", "MB", "GB", "TB", "PB")
_BINARY_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def plural(n: int, word: str) -> str:
    """``"1 crop"``, ``"2 crops"``, ``"2 processes"``, ``"3 batches"``."""
    return f"{n} {word if n == 1 else plural_noun(word)}"


def plural_noun(word: str) -> str:
    """The plural of a regular English noun: ``"crops"``, ``"processes"``, ``"batches"``, ``"boxes"``; a ``-ch``
    said ``k`` takes ``s`` (``"epochs"``)."""
    hard_ch = word.endswith("epoch")
    return word + ("es" if word.endswith(("s", "x", "ch", "sh")) and not hard_ch else "s")


def _decimals(value: float) -> int:
    """Decimals that show ``value`` to three significant digits (``9.87``, ``98.7``, ``987``)."""
    return 2 if value < 9.995 else 1 if value < 99.95 else 0


def byte_size(count: float, binary: bool = False) -> str:
    """A number of bytes in the first unit that shows it below 1,000, to three significant digits: ``"1 byte"``,
    ``"512 bytes"``, ``"23.1 kB"``, ``"98.3 MB"``, ``"102 MB"``, ``"1.97 GB"`` (``"0.98 KiB"`` for 1,000 bytes);
    thousands separated beyond the largest unit (``"1,200 PB"``).

    Decimal units (kB, MB, GB: powers of 1000) for files and disk room, as the toolkit's documents give file sizes;
    ``binary`` units (KiB, MiB, GiB: powers of 1024) for memory, which machines, containers and the toolkit's own
    budgets count in powers of two (a 16 GiB machine, a 1.50 GiB budget). The two are never mixed in one message.

    Args:
        count: the number of bytes (0 or more; a float such as an estimate is taken as it is).
        binary: powers of 1024 instead of 1000.

    Returns:
        The size and its unit.

    Raises:
        ValueError: ``count`` is not a finite number of 0 or more (a bool included).
    """
    if isinstance(count, bool) or not isinstance(count, numbers.Real) or not 0 <= float(count) < math.inf:
        raise ValueError(f"a byte count must be a finite number of 0 or more, got {count!r}")
    base, units = (1024, _BINARY_UNITS) if binary else (1000, _DECIMAL_UNITS)
    whole = math.floor(float(count) + 0.5)  # half up: round() gives 0.5 and 2.5 bytes to the even 0 and 2
    if whole < 1000:
        return plural(whole, "byte")
    value, unit = float(count) / base, 0
    while unit < len(units) - 1 and round(value, _decimals(value)) >= 1000:
        value, unit = value / base, unit + 1
    return f"{value:,.{_decimals(value)}f} {units[unit]}"


def label_text(text: str) -> str:
    """A class name as written in a CSV or as a folder's name: stripped, in Unicode's composed form (NFC). macOS
    writes file names decomposed (NFD: ``a`` and a combining diaeresis for ``ä``), most editors compose them: the
    same name from two machines would otherwise be two classes that print alike."""
    return unicodedata.normalize("NFC", str(text).strip())
