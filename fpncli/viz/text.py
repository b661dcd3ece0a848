"""Text on pictures, wrapped to a width: printable ASCII in OpenCV's Hershey font, any other
text in DejaVu Sans (matplotlib's own font file, drawn with its FreeType wrapper).

Every picture's text goes through ``put_text`` (``safe_text``: a lone surrogate crashes OpenCV).
"""

from __future__ import annotations

import functools
import math
import threading
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from ..io.messages import utf8_text

__all__ = [
    "TEXT_COLOUR",
    "NOTE_COLOUR",
    "FONT",
    "MISSING_GLYPH",
    "safe_text",
    "put_text",
    "put_centered",
    "text_size",
    "wrap_text",
    "put_lines",
]


TEXT_COLOUR = (20, 20, 20)
NOTE_COLOUR = (192, 0, 0)  # the red line of random weights
FONT = cv2.FONT_HERSHEY_SIMPLEX
#: drawn for a character DejaVu Sans has no glyph for (CJK, Hangul, a control character, a
#: lone surrogate): one per character, so that none is dropped unseen
MISSING_GLYPH = "\ufffd"

#: Hershey Simplex's capital height in pixels per unit of ``scale`` (``H`` at 0.6: 12-13 rows)
#: and DejaVu Sans' in ems: a name in DejaVu stands as tall as the ASCII text beside it
_HERSHEY_CAP = 21.0
_DEJAVU_CAP = 0.729
#: One FT2Font per weight, shared: FreeType faces are not thread-safe, and writer threads draw
_FONT_LOCK = threading.Lock()


@functools.lru_cache(maxsize=2)
def _font(bold: bool):
    """DejaVu Sans (bold for a thickness over 1, as OpenCV thickens its strokes): the file
    matplotlib ships, so no font is installed or looked up (``font_manager`` is not used)."""
    from matplotlib import ft2font, get_data_path

    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    return ft2font.FT2Font(str(Path(get_data_path()) / "fonts" / "ttf" / name))


def _has_glyph(char: str) -> bool:
    with _FONT_LOCK:
        return _font(False).get_char_index(ord(char)) != 0


@functools.lru_cache(maxsize=4096)
def _drawable_char(char: str) -> str:
    """One character as DejaVu Sans draws it: itself where the font has it; else its
    compatibility form (NFKD: ``Ａ`` -> ``A``) where the font has all of that; else one
    ``MISSING_GLYPH``. A control or format character (``\\t``, U+200B), a line or paragraph
    separator and a lone surrogate ``utf8_text`` left are ``MISSING_GLYPH`` too: nothing to see
    would be drawn."""
    category = unicodedata.category(char)
    if category.startswith("C") or category in ("Zl", "Zp"):
        return MISSING_GLYPH
    if _has_glyph(char):
        return char
    compatible = unicodedata.normalize("NFKD", char)
    if compatible != char and all(_has_glyph(c) for c in compatible):
        return compatible
    return MISSING_GLYPH


def safe_text(text: str) -> str:
    """``text`` as ``put_text`` draws it. Printable ASCII is kept as it is (OpenCV's Hershey
    font draws it). Any other text is composed (NFC: a macOS name's decomposed ``ö``) and drawn
    in DejaVu Sans, every character it has as itself (``Æble_ø_ß.jpg``), each other one as
    ``_drawable_char`` says: never dropped. A file name's byte that is not UTF-8 (a lone
    surrogate, from Python's ``surrogateescape``, which crashes ``cv2.putText``) is written
    ``\\xNN``, as the report and wds keys write it (``messages.utf8_text``)."""
    text = str(text)
    if text.isascii() and text.isprintable():  # the usual case, without a loop in Python
        return text
    text = unicodedata.normalize("NFC", utf8_text(text))
    if text.isascii() and text.isprintable():  # (only bytes that are not UTF-8 were odd)
        return text
    return "".join(map(_drawable_char, text))


def _font_size(scale: float) -> float:
    return _HERSHEY_CAP * scale / _DEJAVU_CAP


def _laid_out(text: str, scale: float, thickness: int):
    """DejaVu Sans (bold for a thickness over 1) with ``text`` laid out at ``scale``'s size.
    The caller holds ``_FONT_LOCK`` while it uses the font."""
    font = _font(thickness > 1)
    font.set_size(_font_size(scale), 72)  # 72 dpi: a point is a pixel
    font.set_text(text, 0.0)
    return font


@functools.lru_cache(maxsize=4096)
def _advance(text: str, scale: float, thickness: int) -> int:
    """The width in pixels DejaVu Sans lays ``text`` (``safe_text``'s, not ASCII) out in."""
    with _FONT_LOCK:
        font = _laid_out(text, scale, thickness)
        return math.ceil(font.get_width_height()[0] / 64)


@functools.lru_cache(maxsize=1024)
def _rendered(text: str, scale: float, thickness: int) -> tuple[np.ndarray, int, int]:
    """``text`` (``safe_text``'s, not ASCII) in DejaVu Sans: its coverage ``(h, w)`` uint8
    (0..255), and the column and row of its top-left corner relative to the origin ``put_text``
    takes (the start of the baseline), placed as matplotlib's Agg backend places it."""
    with _FONT_LOCK:
        font = _laid_out(text, scale, thickness)
        font.draw_glyphs_to_bitmap(antialiased=True)
        coverage = np.array(font.get_image(), dtype=np.uint8)  # a copy: the font's is reused
        descent = font.get_descent() / 64
        left = font.get_bitmap_offset()[0] / 64
    coverage.flags.writeable = False
    top = round(descent) + 1 - coverage.shape[0]
    return coverage, round(left), top


def _put_rendered(canvas: np.ndarray, text: str, origin: tuple[int, int], scale: float,
                  colour, thickness: int) -> None:  # fmt: skip
    """Blend ``text`` in DejaVu Sans into ``canvas`` as ``cv2.putText`` blends its anti-aliased
    strokes: per pixel, ``colour`` over what is there by the glyphs' coverage. ``colour`` may
    be one number on a one-channel canvas (a palette picture's ink index over its white index:
    the blend falls on the shades between them, as OpenCV's does)."""
    coverage, left, top = _rendered(text, scale, thickness)
    x, y = origin[0] + left, origin[1] + top
    x0, y0 = max(0, x), max(0, y)
    x1 = min(canvas.shape[1], x + coverage.shape[1])
    y1 = min(canvas.shape[0], y + coverage.shape[0])
    if x0 >= x1 or y0 >= y1:
        return
    alpha = coverage[y0 - y : y1 - y, x0 - x : x1 - x].astype(np.float32) / 255.0
    region = canvas[y0:y1, x0:x1]
    values = np.atleast_1d(np.asarray(colour, np.float32))
    if region.ndim == 2:
        ink = values[0]
    else:  # as OpenCV pads a short colour with zeros
        ink = np.zeros(region.shape[2], np.float32)
        ink[: min(len(values), len(ink))] = values[: len(ink)]
        alpha = alpha[..., None]
    region[...] = np.rint(region * (1.0 - alpha) + ink * alpha).astype(canvas.dtype)


def put_text(canvas: np.ndarray, text: str, origin: tuple[int, int], scale: float,
             colour=TEXT_COLOUR, thickness: int = 1) -> None:  # fmt: skip
    """``cv2.putText`` of ``safe_text(text)``, or DejaVu Sans where that is not ASCII: every
    picture's text goes through here."""
    text = safe_text(text)
    if not text.isascii():
        _put_rendered(canvas, text, origin, scale, colour, thickness)
        return
    cv2.putText(canvas, text, origin, FONT, scale, colour, thickness, cv2.LINE_AA)


def text_size(text: str, scale: float, thickness: int = 1) -> int:
    """The width in pixels ``put_text`` draws ``text`` at."""
    text = safe_text(text)
    if not text.isascii():
        return _advance(text, scale, thickness)
    (width, _), _ = cv2.getTextSize(text, FONT, scale, thickness)
    return width


@functools.lru_cache(maxsize=1024)
def wrap_text(text: str, width: int, scale: float, thickness: int = 1) -> tuple[str, ...]:
    """``text`` broken into lines that ``put_text`` draws within ``width`` pixels: at spaces,
    and inside a word only where that word alone is wider (a long file name). A banner drawn
    on one line is cut off at the canvas edge of a narrow figure; wrapped, it is read whole.
    Remembered: a run draws the same labels on every image (a dozen of OpenCV's text
    measurements each)."""
    lines: list[str] = []
    line = ""
    for word in safe_text(text).split(" "):
        candidate = f"{line} {word}" if line else word
        if text_size(candidate, scale, thickness) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
        line = ""
        for char in word:  # a word wider than the width: as many characters as fit per line
            if line and text_size(line + char, scale, thickness) > width:
                lines.append(line)
                line = ""
            line += char
    if line or not lines:
        lines.append(line)
    return tuple(lines)


def put_lines(canvas: np.ndarray, lines: Sequence[str], x: int, baseline: int, step: int,
              scale: float, colour=TEXT_COLOUR, thickness: int = 1,
              centre: bool = False) -> int:  # fmt: skip
    """Draw ``lines`` from ``baseline`` down, ``step`` pixels apart, left-aligned at ``x`` (or
    centred on ``x``); returns the last baseline."""
    for k, line in enumerate(lines):
        y = baseline + k * step
        if centre:
            put_centered(canvas, line, x, y, scale, colour, thickness)
        else:
            put_text(canvas, line, (x, y), scale, colour, thickness)
    return baseline + (len(lines) - 1) * step


def put_centered(canvas: np.ndarray, text: str, centre_x: int, baseline: int, scale: float,
              colour=TEXT_COLOUR, thickness: int = 1) -> None:  # fmt: skip
    width = text_size(text, scale, thickness)
    put_text(canvas, text, (max(0, centre_x - width // 2), baseline), scale, colour, thickness)
