"""Counted nouns for the toolkit's messages, ``"1 image"`` / ``"3 images"``: plain string functions that any module
may import at its top (no torch, no engine), re-exported by :mod:`medgmae.engine.run_words`; and class names as
people write them (:func:`label_text`)."""

from __future__ import annotations

import unicodedata

__all__ = ["label_text", "plural", "plural_noun"]


def plural(n: int, word: str) -> str:
    """``"1 crop"``, ``"2 crops"``, ``"2 processes"``, ``"3 batches"``."""
    return f"{n} {word if n == 1 else plural_noun(word)}"


def plural_noun(word: str) -> str:
    """The plural of a regular English noun: ``"crops"``, ``"processes"``, ``"batches"``, ``"boxes"``; a ``-ch``
    said ``k`` takes ``s`` (``"epochs"``)."""
    hard_ch = word.endswith("epoch")
    return word + ("es" if word.endswith(("s", "x", "ch", "sh")) and not hard_ch else "s")


def label_text(text: str) -> str:
    """A class name as written in a CSV or as a folder's name: stripped, in Unicode's composed form (NFC). macOS
    writes file names decomposed (NFD: ``a`` and a combining diaeresis for ``ä``), most editors compose them: the
    same name from two machines would otherwise be two classes that print alike."""
    return unicodedata.normalize("NFC", str(text).strip())
