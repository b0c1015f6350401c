"""The text of the pictures (:mod:`medgmae.engine.figures`): the font it is drawn in, and text that font can draw.

Labels are drawn with PIL's ``ImageDraw`` in :func:`figure_font`: DejaVu Sans where it is installed, else Pillow's
built-in font. A character the font lacks would be drawn as an empty box; :func:`drawable` writes it as its letter
without accents, else as ``?``.
"""

from __future__ import annotations

import functools
import importlib.util
import unicodedata
from pathlib import Path

from PIL import ImageFont

__all__ = ["FONT_SIZE", "drawable", "figure_font", "legible"]

#: The pixel size of the text in pictures (the height of Pillow's built-in font).
FONT_SIZE = 10


def _font_files() -> list[str]:
    """DejaVu Sans, where installed: by its bare name, which Pillow looks up among the system's font folders (e.g.
    Debian's ``fonts-dejavu-core``), then matplotlib's copy (found without importing matplotlib)."""
    files = ["DejaVuSans.ttf"]
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.origin:
        files.append(str(Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"))
    return files


@functools.lru_cache(maxsize=None)
def figure_font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """The font of every text drawn in pictures: DejaVu Sans at :data:`FONT_SIZE` pixels where it is installed
    (:func:`_font_files`; it has ``ß``, accented, Greek and Cyrillic letters), else Pillow's built-in font (Latin
    letters where Pillow has FreeType; ASCII alone in its bitmap font without it). Letters the font lacks are drawn
    as :func:`drawable` says."""
    for file in _font_files():
        try:
            return ImageFont.truetype(file, FONT_SIZE)
        except (OSError, ImportError):  # not installed there; ImportError: a Pillow built without FreeType
            continue
    return ImageFont.load_default()


@functools.lru_cache(maxsize=None)
def _has_glyph(char: str) -> bool:
    """Whether :func:`figure_font` draws ``char`` (else it draws the empty box of U+FFFF, which no font maps)."""
    font = figure_font()
    mask, box = font.getmask(char), font.getmask("\uffff")
    return mask.size != box.size or bytes(mask) != bytes(box)


def drawable(text: str) -> str:
    """``text`` with each character :func:`figure_font` lacks (it would be an empty box: DejaVu Sans has no CJK
    letters; Pillow's bitmap font, its built-in font without FreeType, has no ``ü``, ``é`` or ``ß``) replaced by its letter without
    accents (``ü`` -> ``u``), else by ``?``; so that a class name of any language reads in the pictures, a lacking
    letter as a clear ``?`` rather than a box."""
    out = []
    for char in str(text):
        base = "".join(c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c))
        out.append(char if char.isascii() or _has_glyph(char) else base if base and all(map(_has_glyph, base)) else "?")
    return "".join(out)


def legible(text: str) -> str:
    """``text`` with each space widened to three: Pillow's bitmap font's space is 2 pixels wide, no wider than the
    gaps between its letters, so that ``4 Gaussians`` read as ``4Gaussians`` (wider than needed in the other fonts);
    characters the font lacks :func:`drawable`."""
    return drawable(text).replace(" ", "   ")
