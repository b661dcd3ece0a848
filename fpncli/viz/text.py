"""Text on pictures: OpenCV's Hershey font, ASCII only (accents dropped), wrapped to a width.

Every picture's text goes through ``put_text`` (``safe_text``: a lone surrogate crashes OpenCV).
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Sequence

import cv2
import numpy as np

__all__ = [
    "TEXT_COLOUR",
    "NOTE_COLOUR",
    "FONT",
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


@functools.lru_cache(maxsize=4096)
def _ascii_char(char: str) -> str:
    """One character as printable ASCII: its compatibility decomposition (NFKD) without its
    combining marks where that is all printable ASCII (``ö`` -> ``o``, ``ﬁ`` -> ``fi``, a
    macOS name's lone combining accent -> nothing), else ``?`` (one per character: a CJK
    character, a Hangul syllable, a control character, a lone surrogate)."""
    kept = "".join(c for c in unicodedata.normalize("NFKD", char)
                   if not unicodedata.category(c).startswith("M"))  # fmt: skip
    return kept if all(" " <= c <= "~" for c in kept) else "?"


def safe_text(text: str) -> str:
    """``text`` as OpenCV can draw it: its Hershey fonts have ASCII only, and a lone surrogate
    (a non-UTF-8 byte of a file name, kept by Python's ``surrogateescape``) crashes
    ``cv2.putText``/``getTextSize`` (a segfault). Accented Latin loses its accents
    (``phötö 1.png`` -> ``photo 1.png``); every other character becomes ``?``."""
    text = str(text)
    if text.isascii() and text.isprintable():  # the usual case, without a loop in Python
        return text
    return "".join(c if " " <= c <= "~" else _ascii_char(c) for c in text)


def put_text(canvas: np.ndarray, text: str, origin: tuple[int, int], scale: float,
             colour=TEXT_COLOUR, thickness: int = 1) -> None:  # fmt: skip
    """``cv2.putText`` of ``safe_text(text)``: every picture's text goes through here."""
    cv2.putText(canvas, safe_text(text), origin, FONT, scale, colour, thickness, cv2.LINE_AA)


def text_size(text: str, scale: float, thickness: int = 1) -> int:
    """The width in pixels ``put_text`` draws ``text`` at."""
    (width, _), _ = cv2.getTextSize(safe_text(text), FONT, scale, thickness)
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
