"""Pictures of feature maps: colours, a level's heatmap, a level laid over the photo.

numpy, OpenCV and matplotlib's colormaps only: no torch, no pyplot. Everything is drawn with
numpy and OpenCV (milliseconds per picture), because the batch pipeline writes six per image.
The numbers behind a picture (a level's map, its colour range) are ``maps``'s, the text
``text``'s, the encoding ``png``'s; the overview of all levels is ``overview``'s.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import cv2
import matplotlib
import numpy as np

from .maps import DEFAULT_CLIP, finite_values, value_range
from .png import cells_bound, encode_png, rest_bound
from .text import NOTE_COLOUR, TEXT_COLOUR, put_text, text_size, wrap_text

__all__ = [
    "colorize",
    "colour_indices",
    "colour_bar",
    "upscale_cells",
    "heatmap_image",
    "heatmap_indexed",
    "heatmap_palette",
    "heatmap_png",
    "heatmap_png_bound",
    "range_labels",
    "overlay_image",
    "overlay_shape",
    "cell_index",
]


def _colormap(cmap: str):
    try:
        return matplotlib.colormaps[cmap]
    except KeyError:
        raise ValueError(f"unknown colormap {cmap!r} (see matplotlib's colormap names)") from None


def colorize(
    map2d: np.ndarray, cmap: str = "viridis", vmin: float | None = None, vmax: float | None = None
) -> np.ndarray:
    """``(H, W)`` values -> ``(H, W, 3)`` uint8 RGB through a matplotlib colormap.

    The range defaults to the map's finite min and max; a constant map gets the middle colour;
    NaN and infinities are clipped into the range.
    """
    lut = _lut(cmap)
    return np.take(lut, colour_indices(map2d, len(lut), vmin, vmax), axis=0)


def colour_indices(
    map2d: np.ndarray, colours: int, vmin: float | None = None, vmax: float | None = None
) -> np.ndarray:
    """Which of ``colours`` equal bins of ``[vmin, vmax]`` each value falls in (``colorize``'s
    colour indices; uint8 for at most 256 colours, else intp)."""
    values = np.asarray(map2d, dtype=np.float64)
    if vmin is None or vmax is None:
        finite = values[np.isfinite(values)]
        lo = vmin if vmin is not None else (float(finite.min()) if finite.size else 0.0)
        hi = vmax if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    else:
        lo, hi = vmin, vmax
    if hi > lo:  # (x - lo) / (hi - lo), clipped to [0, 1], in one float64 buffer
        normed = np.subtract(values, lo)
        np.divide(normed, hi - lo, out=normed)
        np.fmax(normed, 0.0, out=normed)  # NaN and -inf -> 0 (fmax ignores NaN)
        np.fmin(normed, 1.0, out=normed)  # +inf -> 1
    else:
        normed = np.full(values.shape, 0.5)
    # matplotlib's float -> colour index (Colormap.__call__), without its masked-array overhead:
    # floor(x * N), and x == 1 takes the last colour
    normed *= colours
    np.fmin(normed, colours - 1, out=normed)
    return normed.astype(np.uint8 if colours <= 256 else np.intp)


@functools.lru_cache(maxsize=64)
def colour_bar(cmap: str, width: int) -> np.ndarray:
    """The ``(1, width, 3)`` colour ramp, in all of ``cmap``'s colours, under an overview's
    panel, an overlay or a report's thumbnail (drawn for every level of every image: made once
    per colormap and width; a heatmap's is ``_bar_indices`` in its palette)."""
    lut = _lut(cmap)
    ramp = np.take(lut, _bar_indices(len(lut), width), axis=0)
    ramp.flags.writeable = False
    return ramp


def upscale_cells(picture: np.ndarray, factor: int) -> np.ndarray:
    """Each pixel as a ``factor`` x ``factor`` block: ``np.repeat`` on both axes, done by
    OpenCV's bit-exact nearest neighbour (the same pixels for whole factors, 5x faster)."""
    if factor == 1:
        return picture
    h, w = picture.shape[:2]
    if hasattr(cv2, "INTER_NEAREST_EXACT"):
        return cv2.resize(picture, (w * factor, h * factor), interpolation=cv2.INTER_NEAREST_EXACT)
    return np.repeat(np.repeat(picture, factor, axis=0), factor, axis=1)


@functools.lru_cache(maxsize=32)
def _lut(cmap: str) -> np.ndarray:
    """The colormap's ``(N, 3)`` uint8 table, as matplotlib's ``bytes=True`` gives it."""
    colormap = _colormap(cmap)
    lut = colormap(np.arange(colormap.N), bytes=True)[:, :3]
    lut.flags.writeable = False
    return lut


#: A heatmap is drawn as an 8-bit palette picture: a third of RGB's bytes to blow up and to
#: deflate (an image's five heatmaps at 768x1344: 2.0 ms instead of 5.1 and a quarter fewer
#: bytes, on an AMD EPYC). Its map and colour bar take ``HEATMAP_COLOURS`` colours of the
#: colormap (all of them where it has no more, as tab10's 10; else that many of its colours,
#: evenly spaced from its first to its last: a 256-colour map's every 8th or so is left out),
#: its text ``TEXT_SHADES`` shades from white to the text's colour (OpenCV's anti-aliasing,
#: rounded).
TEXT_SHADES = 16
HEATMAP_COLOURS = 256 - 2 * TEXT_SHADES
#: each text colour's first index (white, its ink's 0 shade; the last, ``+ TEXT_SHADES - 1``,
#: its full colour): OpenCV's anti-aliased text drawn in that last index on a band of the first
#: blends the indices as it would the colours, straight into the shade
_INK = {TEXT_COLOUR: HEATMAP_COLOURS, NOTE_COLOUR: HEATMAP_COLOURS + TEXT_SHADES}
_WHITE = _INK[TEXT_COLOUR]


@functools.lru_cache(maxsize=32)
def heatmap_palette(cmap: str) -> tuple[np.ndarray, int]:
    """The ``(256, 3)`` uint8 palette of a heatmap in ``cmap``, and how many of its first
    entries are the colormap's colours (then the shades of ``TEXT_COLOUR`` and ``NOTE_COLOUR``)."""
    lut = _lut(cmap)
    if len(lut) > HEATMAP_COLOURS:  # (the ends kept: NaN, -inf, +inf and the bar's ends)
        lut = lut[np.rint(np.linspace(0, len(lut) - 1, HEATMAP_COLOURS)).astype(np.intp)]
    palette = np.zeros((256, 3), np.uint8)
    palette[: len(lut)] = lut
    ink = np.linspace(0.0, 1.0, TEXT_SHADES)[:, None]  # 0: white
    for colour, first in _INK.items():
        palette[first : first + TEXT_SHADES] = np.rint(255 + ink * (np.array(colour) - 255.0))
    palette.flags.writeable = False
    return palette, len(lut)


@functools.lru_cache(maxsize=64)
def _bar_indices(colours: int, width: int) -> np.ndarray:
    """A colour bar ``width`` pixels wide as indices into ``colours`` colours (a heatmap's, in
    its palette; ``colour_bar``'s, in the colormap's)."""
    bar = colour_indices(np.linspace(0.0, 1.0, width)[None, :], colours, 0.0, 1.0)
    bar.flags.writeable = False
    return bar


def _put_shades(band: np.ndarray, texts: Sequence[tuple[str, tuple[int, int], float]],
                colour: tuple[int, int, int]) -> None:  # fmt: skip
    """Draw ``texts`` (text, origin, scale) into ``band``, rows of a palette picture that are
    white in ``colour``'s ramp (its first index), in ``colour``'s shades."""
    ink = _INK[colour] + TEXT_SHADES - 1
    for text, origin, scale in texts:
        put_text(band, text, origin, scale, ink)


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def range_labels(values: np.ndarray, vrange: tuple[float, float]) -> tuple[str, str, str]:
    """Texts for the two ends of a colour bar and a line on the data's own min and max.

    An end reads ``<= v`` / ``>= v`` when values beyond it exist (they are saturated), ``min v``
    / ``max v`` when it is the map's own minimum / maximum, and a bare ``v`` when the map does
    not reach it (a run's range, ``--scale level|shared``, wider than this map's values). The
    data line counts the cells that are NaN or infinite (coloured as the range's ends, as
    ``colorize`` does), and says so when no value is finite."""
    lo, hi = vrange
    values = np.asarray(values)
    data_lo, data_hi = (float(values.min()), float(values.max())) if values.size else (lo, hi)
    odd = ""
    if not (math.isfinite(data_lo) and math.isfinite(data_hi)):  # NaN or inf among them
        finite, _ = finite_values(values)  # (else every value is finite: no copy, no mask)
        odd = f"{values.size - finite.size} NaN/inf"
        if finite.size == 0:
            return _fmt(lo), _fmt(hi), f"no finite value ({odd})"
        data_lo, data_hi = float(finite.min()), float(finite.max())
    left = f"<= {_fmt(lo)}" if data_lo < lo else f"min {_fmt(lo)}" if data_lo == lo else _fmt(lo)
    right = f">= {_fmt(hi)}" if data_hi > hi else f"max {_fmt(hi)}" if data_hi == hi else _fmt(hi)
    notes = ["clipped"] * (data_lo < lo or data_hi > hi) + [odd] * bool(odd)
    data = f"data {_fmt(data_lo)} .. {_fmt(data_hi)}"
    return left, right, data + (f" ({', '.join(notes)})" if notes else "")


#: The longest side, in pixels, cells are upscaled to: a 1x15000 map (a 60000x1 image with
#: --no-resize) is upscaled no more, where ``min_side`` alone would make it 256x3,840,000.
MAX_UPSCALED_SIDE = 4096


def _upscale_factor(h: int, w: int, min_side: int) -> int:
    """The whole factor that brings the short side to ``min_side``, as long as the long side
    stays within ``MAX_UPSCALED_SIDE`` (1: never scaled down)."""
    wanted = math.ceil(min_side / max(1, min(h, w)))
    return max(1, min(wanted, MAX_UPSCALED_SIDE // max(1, h, w)))


def heatmap_image(map2d: np.ndarray, **kwargs) -> np.ndarray:
    """One level's picture (``heatmap_indexed``'s arguments) as ``(H', W', 3)`` uint8 RGB: the
    palette picture ``heatmap_png`` writes, in its colours."""
    indices, palette = heatmap_indexed(map2d, **kwargs)
    return np.take(palette, indices, axis=0)


def heatmap_png(map2d: np.ndarray, **kwargs) -> bytes:
    """One level's picture (``heatmap_indexed``'s arguments) as an 8-bit palette PNG."""
    indices, palette = heatmap_indexed(map2d, **kwargs)
    return encode_png(indices, palette=palette)


def heatmap_indexed(
    map2d: np.ndarray,
    *,
    cmap: str = "viridis",
    label: str = "",
    min_side: int = 256,
    vrange: tuple[float, float] | None = None,
    clip: tuple[float, float] | None = DEFAULT_CLIP,
    note: str = "",
) -> tuple[np.ndarray, np.ndarray]:
    """One level as a picture: a title line (and ``note`` in red, e.g. random weights), the map
    (cells upscaled by a whole factor, crisp), and a colour bar labelled with its range.

    The colours span ``vrange``, by default ``value_range(map2d, clip)``; a bar end marked
    ``<=``/``>=`` means values beyond it exist and share its colour. Returns ``(H', W')`` uint8
    indices into ``heatmap_palette(cmap)``, and that palette.
    """
    values = np.asarray(map2d, dtype=np.float32)
    h, w = values.shape
    lo, hi = vrange if vrange is not None else value_range(values, clip)
    palette, colours = heatmap_palette(cmap)
    layout = _heatmap_layout(h, w, label, note, min_side)
    factor, width, top, gap, bar_h = layout.factor, layout.width, layout.top, 6, 12
    pic_h, pic_w = h * factor, w * factor
    canvas = np.full((layout.height, width), _WHITE, np.uint8)
    title_h = layout.title_h  # the title's lines, then the note's (on its own white) below
    labels = [(line, (4, 17 + 18 * k), 0.45) for k, line in enumerate(layout.label_lines)]
    _put_shades(canvas[:title_h], labels, TEXT_COLOUR)
    canvas[title_h:top] = _INK[NOTE_COLOUR]
    notes = [(line, (4, 15 + 20 * k), 0.5) for k, line in enumerate(layout.note_lines)]
    _put_shades(canvas[title_h:top], notes, NOTE_COLOUR)
    # the cells blown up straight into the canvas (a row of blocks, repeated down: a third of
    # OpenCV's nearest neighbour's time on one byte a pixel), as ``upscale_cells`` would
    cells = canvas[top : top + pic_h, :pic_w].reshape(h, factor, pic_w)  # a view: rows split
    cells[...] = np.repeat(colour_indices(values, colours, lo, hi), factor, axis=1)[:, None, :]
    bar_top = top + pic_h + gap
    bar_w = max(pic_w, min(width, 420))
    canvas[bar_top : bar_top + bar_h, :bar_w] = _bar_indices(colours, bar_w)
    left, right, data = range_labels(values, (lo, hi))
    right_x = max(0, bar_w - text_size(right, 0.4) - 2)
    _put_shades(canvas[bar_top + bar_h :], [(left, (2, 15), 0.4), (right, (right_x, 15), 0.4),
                                           (data, (2, 33), 0.4)], TEXT_COLOUR)  # fmt: skip
    return canvas, palette


class _HeatmapLayout(NamedTuple):
    factor: int
    width: int
    height: int
    label_lines: tuple[str, ...]
    note_lines: tuple[str, ...]
    title_h: int
    top: int  # the map's first row


def _heatmap_layout(h: int, w: int, label: str, note: str, min_side: int) -> _HeatmapLayout:
    factor = _upscale_factor(h, w, min_side)
    width = max(w * factor, 420)
    label_lines = wrap_text(label, width - 8, 0.45)
    note_lines = wrap_text(note, width - 8, 0.5) if note else ()
    title_h = 24 + 18 * (len(label_lines) - 1)
    note_h = 22 + 20 * (len(note_lines) - 1) if note else 0
    top = title_h + note_h
    gap, bar_h, values_h = 6, 12, 38
    height = top + h * factor + gap + bar_h + values_h
    return _HeatmapLayout(factor, width, height, label_lines, note_lines, title_h, top)


def heatmap_png_bound(map_height: int, map_width: int, *, label: str = "", note: str = "",
                      min_side: int = 256) -> int:  # fmt: skip
    """At most the bytes ``heatmap_png`` makes of any ``(map_height, map_width)`` map, noise
    included: its cells blown up by a whole factor (deflate matches the repeated pixels and
    rows) under a white band of text, far less than ``png_size_bound`` of its size (a 27x40
    map's 392x420 picture: 20 KB, not 490 KB). Counted as RGB, plus the palette: a palette
    picture's byte a pixel deflates to less than RGB's three (a noise map's P2 at 768x1344:
    119 KB against 128 KB; 5.7 KB against 10.8 KB for its P5)."""
    layout = _heatmap_layout(map_height, map_width, label, note, min_side)
    drawn = (map_height * layout.factor, map_width * layout.factor)
    text = (layout.height - drawn[0]) * layout.width  # the bands above and below the map
    rgb = cells_bound((map_height, map_width), drawn) + rest_bound(
        layout.height, layout.width, text
    )
    return rgb + 12 + 3 * 256  # the PLTE chunk


def cell_index(size: int, scale: float, stride: int, cells: int) -> np.ndarray:
    """For each of ``size`` original pixels along one axis, the feature cell it falls in.

    Original pixel ``r`` lies at resized coordinate ``r * scale``; cell ``i`` of a level with
    ``stride`` covers resized pixels ``[i * stride, (i + 1) * stride)``.
    """
    index = np.floor(np.arange(size) * scale / stride).astype(np.int64)
    return np.clip(index, 0, cells - 1)


def overlay_image(
    image_rgb: np.ndarray,
    map2d: np.ndarray,
    *,
    stride: int,
    scale_y: float,
    scale_x: float,
    cmap: str = "jet",
    alpha: float = 0.5,
    vrange: tuple[float, float] | None = None,
    clip: tuple[float, float] | None = DEFAULT_CLIP,
    label: str = "",
    note: str = "",
) -> np.ndarray:
    """A level's valid-region map laid over the original (EXIF-applied) photo, cell-exact.

    Colours span ``vrange`` (default ``value_range(map2d, clip)``). Returns ``(H, W, 3)`` uint8
    RGB, ``(1 - alpha) * photo + alpha * heat``; with a ``label`` (and ``note``, in red) a white
    strip above it says what is drawn, with a colour bar of the range.
    """
    h, w = image_rgb.shape[:2]
    lo, hi = vrange if vrange is not None else value_range(map2d, clip)
    colours = colorize(map2d, cmap, lo, hi)
    rows = cell_index(h, scale_y, stride, map2d.shape[0])
    cols = cell_index(w, scale_x, stride, map2d.shape[1])
    heat = colours[rows[:, None], cols[None, :]]
    blended = (1.0 - alpha) * image_rgb.astype(np.float32) + alpha * heat.astype(np.float32)
    picture = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    if not label and not note:
        return picture
    return _with_header(picture, label, note, cmap, map2d, (lo, hi))


def _header_layout(h: int, w: int, label: str, note: str) -> tuple:
    """``_with_header``'s text scale, line height, thickness, rows of text, bar height and
    header height for an ``(h, w)`` picture."""
    scale = max(0.45, min(w / 1400, h / 200))
    line = int(round(26 * scale / 0.45 * 0.75))
    thickness = max(1, int(round(scale)))
    room = max(w, 420) - 8
    rows = [(text, TEXT_COLOUR) for text in wrap_text(label, room, scale, thickness)]
    if note:
        rows += [(text, NOTE_COLOUR) for text in wrap_text(note, room, scale, thickness)]
    bar_h = max(8, line // 2)
    header = line * len(rows) + bar_h + line + 6
    return scale, line, thickness, rows, bar_h, header


def overlay_shape(height: int, width: int, *, label: str = "", note: str = "") -> tuple[int, int]:
    """The ``(H', W')`` of the picture ``overlay_image`` draws over an ``(height, width)``
    photo with this label and note (the photo's own size, a header strip added), undrawn."""
    if not label and not note:
        return height, width
    return _header_layout(height, width, label, note)[-1] + height, max(width, 420)


def _with_header(picture: np.ndarray, label: str, note: str, cmap: str, values: np.ndarray,
                 vrange: tuple[float, float]) -> np.ndarray:  # fmt: skip
    """``picture`` under a white strip: ``label``, ``note`` in red, a colour bar with its range.
    The text grows with the picture so it stays legible when the picture is viewed whole, and
    with its height too (a 60000x1 picture gets no 6000-pixel header)."""
    h, w = picture.shape[:2]
    scale, line, thickness, rows, bar_h, header = _header_layout(h, w, label, note)
    left, right, _ = range_labels(values, vrange)
    canvas = np.full((header + h, max(w, 420), 3), 255, np.uint8)
    y = 0
    for text, colour in rows:
        y += line
        put_text(canvas, text, (4, y - line // 4), scale, colour, thickness)
    bar_w = max(200, min(w - 8, int(w * 0.6)))
    canvas[y + 4 : y + 4 + bar_h, 4 : 4 + bar_w] = colour_bar(cmap, bar_w)
    base = y + 4 + bar_h + line - line // 4
    put_text(canvas, left, (4, base), scale * 0.9, thickness=thickness)
    text_w = text_size(right, scale * 0.9, thickness)
    put_text(canvas, right, (max(4, 4 + bar_w - text_w), base), scale * 0.9, thickness=thickness)
    canvas[header:, :w] = picture
    return canvas
