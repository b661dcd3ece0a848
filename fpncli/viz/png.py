"""PNG encoding (8-bit RGB or palette, filter "none", ISA-L's or zlib's deflate) and bounds
on the bytes it makes, which the disk-space check counts before a run writes anything.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

try:  # isal (a dependency on x86-64 and 64-bit Arm): Intel ISA-L's deflate, several times faster
    from isal import isal_zlib as _deflate
except ImportError:  # pragma: no cover - depends on the install
    _deflate = zlib

__all__ = ["encode_png", "png_deflate", "png_size_bound", "cells_bound", "rest_bound"]


#: PNG's row filter "none" and deflate's fastest level: our pictures are flat colours and cells
#: repeated whole-factor, which deflate matches as they are (PNG's filters only scramble the
#: repeats: a P2 heatmap at 800x1344 took 10.5 ms and 474 KB with OpenCV's defaults, 4.0 ms and
#: 130 KB so). Where isal is installed (setup.py), Intel ISA-L deflates instead of zlib: the
#: five heatmaps of a 1080p image in 2.2 ms instead of 9.1, in 12% more bytes (AMD EPYC).
_DEFLATE_LEVEL = 1
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_deflate() -> str:
    """Which deflate ``encode_png`` uses: ``"isal"`` (where installed) or ``"zlib"``."""
    return "zlib" if _deflate is zlib else "isal"


def _png_chunk(kind: bytes, data: bytes) -> tuple[bytes, ...]:
    crc = zlib.crc32(data, zlib.crc32(kind))
    return struct.pack(">I", len(data)), kind, data, struct.pack(">I", crc)


def encode_png(picture: np.ndarray, *, palette: np.ndarray | None = None,
               text: tuple[str, str] | None = None) -> bytes:  # fmt: skip
    """``(H, W, 3)`` uint8 RGB -> PNG bytes (lossless; 8-bit RGB, no interlace); or, with a
    ``(N, 3)`` uint8 ``palette`` (N <= 256), ``(H, W)`` uint8 indices into it -> an 8-bit palette
    PNG. ``text`` ``(keyword, text)``, Latin-1: a ``tEXt`` chunk right after the header (show's
    pictures carry ``io.markers.SHOW_PICTURE_TEXT``, so that they are never taken for photos).
    Written here rather than by OpenCV so that the deflate can be ISA-L's (``png_deflate``);
    zlib's and ISA-L's compress calls both release Python's lock, as OpenCV's did."""
    picture = np.asarray(picture)
    channels = 3 if palette is None else 1
    want = "(H, W, 3)" if channels == 3 else "(H, W)"
    shape_ok = picture.ndim == 3 and picture.shape[2] == 3 if channels == 3 else picture.ndim == 2
    if picture.dtype != np.uint8 or not shape_ok or 0 in picture.shape:
        raise ValueError(f"PNG encoding needs a non-empty {want} uint8 picture, not "
                         f"{picture.dtype} {picture.shape}")  # fmt: skip
    height, width = picture.shape[:2]
    rows = np.empty((height, 1 + channels * width), np.uint8)
    rows[:, 0] = 0  # each row's filter byte: none
    rows[:, 1:] = picture.reshape(height, channels * width)
    chunks = []
    if palette is not None:
        palette = np.asarray(palette)
        if (palette.dtype != np.uint8 or palette.ndim != 2 or palette.shape[1] != 3
                or not 0 < len(palette) <= 256):  # fmt: skip
            raise ValueError(f"a PNG palette is (N, 3) uint8, N <= 256, not {palette.dtype} "
                             f"{palette.shape}")  # fmt: skip
        if int(picture.max()) >= len(palette):  # a PNG decoder's error, or black
            raise ValueError(f"palette index {int(picture.max())} past the palette's "
                             f"{len(palette)} colours")  # fmt: skip
        chunks = _png_chunk(b"PLTE", palette.tobytes())
    header = struct.pack(">IIBBBBB", width, height, 8, 2 if palette is None else 3, 0, 0, 0)
    if text is not None:
        keyword, value = text
        chunks = (*_png_chunk(b"tEXt", f"{keyword}\0{value}".encode("latin-1")), *chunks)
    return b"".join((
        _PNG_SIGNATURE, *_png_chunk(b"IHDR", header), *chunks,
        *_png_chunk(b"IDAT", _deflate.compress(rows, _DEFLATE_LEVEL)), *_png_chunk(b"IEND", b""),
    ))  # fmt: skip


def png_size_bound(height: int, width: int) -> int:
    """At most the bytes ``encode_png`` makes of any ``(height, width, 3)`` picture (one of
    noise does not compress: each row's filter byte and pixels, stored, plus deflate's block
    headers, which zlib's and ISA-L's fastest levels keep under 0.1% and a few bytes)."""
    raw = height * (1 + 3 * width)
    return raw + raw // 500 + 1024 + len(_PNG_SIGNATURE) + 3 * 12 + 13


#: Bytes ``encode_png`` spends, at most, on each cell of a map drawn as blocks of 2x2 pixels or
#: more (its first row's literals and the matches of its repeats; ISA-L's fastest level, the
#: costlier, measured 2.2 for noise at factor 2, 4.7 at 3, less above), and on each pixel of
#: text on white (about 0.2 measured); the matches that repeat a row above (258 bytes at most
#: each) take about 3 bytes per 258 of the row, counted as 1 per 64.
_CELL_BYTES_2X2, _CELL_BYTES, _TEXT_BYTES_PER_PIXEL = 3, 6, 0.35


def cells_bound(cells: tuple[int, int], drawn: tuple[int, int]) -> int:
    """At most the bytes of a ``drawn`` ``(h, w)`` block drawn by nearest neighbour from a map
    of ``cells`` ``(rows, cols)``: where the map is shown smaller, its pixels are the bound."""
    (rows, cols), (h, w) = cells, drawn
    raw = h * (1 + 3 * w)
    per_cell = _CELL_BYTES_2X2 if (h, w) == (2 * rows, 2 * cols) else _CELL_BYTES
    return min(raw, per_cell * min(rows, h) * min(cols, w) + 8 * h)


def rest_bound(height: int, width: int, area: int) -> int:
    """At most the bytes of ``area`` pixels of text and colour bars in a picture of ``(height,
    width)``, and of its rows' repeats and white (counted once, here, for all its rows)."""
    raw = height * (1 + 3 * width)
    drawn = int(_TEXT_BYTES_PER_PIXEL * area) + height * (8 + 3 * width // 64)
    return min(raw, drawn) + raw // 500 + 1024 + len(_PNG_SIGNATURE) + 3 * 12 + 13
