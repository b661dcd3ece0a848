"""Many channels of one level at once: ``fpncli show TARGET --top K`` or ``--channels 0,5,17``.

numpy and OpenCV only. All tiles share one colour range (``show`` passes the ``--clip``
percentiles of the shown channels; by default the minimum and maximum over them), so two tiles
with the same colour have the same value; the range is on the colour bar, whose ends read as
every picture's do (``range_labels``: ``<= v`` / ``>= v`` where tiles go beyond them), with the
data's own minimum and maximum under it.
"""

from __future__ import annotations

import math

import numpy as np

from ..io.guard import OptionError
from .text import put_lines, put_text, text_size, wrap_text
from .visualize import colorize, colour_bar, range_labels, upscale_cells

__all__ = ["top_channels", "parse_channels", "channel_grid"]


def top_channels(feature: np.ndarray, k: int) -> list[int]:
    """The ``k`` channels of a ``(C, h, w)`` / ``(1, C, h, w)`` map with the largest mean, largest
    first (ties: the lower channel first)."""
    array = feature[0] if feature.ndim == 4 else feature
    if k < 1:
        raise ValueError(f"--top needs K >= 1, got {k}")
    means = np.asarray(array, dtype=np.float32).mean(axis=(1, 2), dtype=np.float64)
    order = np.lexsort((np.arange(means.size), -means))
    return [int(c) for c in order[: min(k, means.size)]]


def parse_channels(text: str, channels: int) -> list[int]:
    """``"0,5,17"`` -> ``[0, 5, 17]``, each checked against the map's channel count; an
    ``OptionError`` (``--channels``) otherwise."""
    try:
        picked = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise OptionError(
            f"expected channel numbers separated by commas (0,5,17), got {text!r}", "--channels"
        ) from None
    if not picked:
        raise OptionError("give at least one channel number", "--channels")
    bad = [c for c in picked if not 0 <= c < channels]
    if bad:
        raise OptionError(
            f"channel(s) {bad} out of range: this map has {channels} (0..{channels - 1})",
            "--channels",
        )
    return picked


def _text(canvas, text, origin, scale=0.4, colour=(20, 20, 20), thickness=1) -> None:
    put_text(canvas, text, origin, scale, colour, thickness)


def channel_grid(
    feature: np.ndarray,
    channels: list[int],
    *,
    title: str = "",
    note: str = "",
    cmap: str = "viridis",
    tile_side: int = 128,
    vrange: tuple[float, float] | None = None,
) -> np.ndarray:
    """A grid of the listed channels of a ``(C, h, w)`` / ``(1, C, h, w)`` map (valid region),
    each tile labelled with its channel number and mean, one colour range for all (``vrange``,
    default the shown channels' finite minimum and maximum), labelled by ``range_labels``.

    Returns ``(H, W, 3)`` uint8 RGB.
    """
    array = feature[0] if feature.ndim == 4 else feature
    maps = np.stack([np.asarray(array[c], dtype=np.float32) for c in channels])
    finite = maps[np.isfinite(maps)]
    if vrange is None:
        vrange = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    h, w = maps.shape[1:]
    factor = max(1, math.ceil(tile_side / max(1, max(h, w))))
    tile_h, tile_w = h * factor, w * factor
    cols = max(1, math.ceil(math.sqrt(len(channels))))
    rows = math.ceil(len(channels) / cols)
    label_h, gap, margin = 18, 8, 10
    width = max(margin * 2 + cols * tile_w + (cols - 1) * gap, 360)
    title_lines = wrap_text(title, width - 2 * margin, 0.55) if title else []
    note_lines = wrap_text(note, width - 2 * margin, 0.55, 2) if note else []
    header = (26 + 22 * (len(title_lines) - 1) if title else 0) + 24 * len(note_lines) + 4
    bar_top = header + rows * (label_h + tile_h + gap) + 4
    canvas = np.full((bar_top + 12 + 44, width, 3), 255, np.uint8)
    y = 0
    if title:
        y = put_lines(canvas, title_lines, margin, 20, 22, 0.55)
    if note:
        put_lines(canvas, note_lines, margin, y + 24, 24, 0.55, (192, 0, 0), 2)
    for i, (channel, values) in enumerate(zip(channels, maps)):
        r, c = divmod(i, cols)
        x0 = margin + c * (tile_w + gap)
        y0 = header + r * (label_h + tile_h + gap)
        _text(canvas, f"ch {channel}  mean {values.mean():.3g}", (x0, y0 + 13), 0.38)
        tile = upscale_cells(colorize(values, cmap, *vrange), factor)
        canvas[y0 + label_h : y0 + label_h + tile_h, x0 : x0 + tile_w] = tile
    bar_w = width - 2 * margin
    canvas[bar_top : bar_top + 12, margin : margin + bar_w] = colour_bar(cmap, bar_w)
    # The ends say whether tiles are saturated beyond them (the --clip percentiles cut the
    # extremes off), as every other picture's bar does; the data line gives the extremes.
    left, right, data = range_labels(maps, vrange)
    _text(canvas, left, (margin, bar_top + 28))
    text_w = text_size(right, 0.4)
    _text(canvas, right, (max(margin, margin + bar_w - text_w), bar_top + 28))
    _text(canvas, data, (margin, bar_top + 46))
    return canvas
