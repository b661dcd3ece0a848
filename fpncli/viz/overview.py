"""The Figure-3 overview: the input photo, then each level, side by side.

Drawn with numpy and OpenCV (tens of milliseconds: the batch pipeline writes one per image).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import cv2
import numpy as np

from .maps import DEFAULT_CLIP, value_range
from .png import cells_bound, encode_png, rest_bound
from .text import NOTE_COLOUR, put_centered, put_lines, put_text, text_size, wrap_text
from .visualize import colorize, colour_bar, range_labels

__all__ = ["OVERVIEW_MAX_WIDTH", "overview_image", "overview_png", "overview_png_bound"]


#: made a 25,000-pixel-wide overview), so its fixed-size text stays legible when viewed whole.
OVERVIEW_MAX_WIDTH = 2400


_OVERVIEW_MARGIN, _OVERVIEW_GAP, _OVERVIEW_CAPTION_H = 14, 12, 44
_OVERVIEW_CAPTION_W = 150  # room for "p2  stride 4" and "(1, 256, 200, 304)" at the font size


class _OverviewLayout(NamedTuple):
    stacked: bool
    panel_height: int
    panel_sizes: list[tuple[int, int]]  # (width, height) of the input's and each level's
    cell_w: list[int]
    cell_h: int
    title_lines: tuple[str, ...]
    note_lines: tuple[str, ...]
    header: int
    width: int
    height: int


def _overview_layout(height: int, width: int, aspect: list[float], title: str, note: str,
                     panel_height: int, max_width: int) -> _OverviewLayout:  # fmt: skip
    """Where ``overview_image`` puts its panels: ``aspect`` is the input's and each level's."""
    stacked = width > 2.5 * height
    margin, gap, caption_h = _OVERVIEW_MARGIN, _OVERVIEW_GAP, _OVERVIEW_CAPTION_H
    bar_h, range_h, caption_w = 8, 20, _OVERVIEW_CAPTION_W
    if stacked:
        panel_height = min(panel_height, math.floor((max_width - 2 * margin) / max(aspect)))
    else:
        room = max_width - 2 * margin - gap * (len(aspect) - 1)
        while (
            panel_height > 48
            and sum(max(caption_w, round(panel_height * a)) for a in aspect) > room
        ):
            panel_height = int(panel_height * 0.9)
    panel_height = max(16, panel_height)
    widest = max_width - 2 * margin  # a 60000x1 photo: its panels squeezed to this width
    sizes = [(min(widest, max(1, round(panel_height * a))), panel_height) for a in aspect]
    cell_w = [max(caption_w, w) for w, _ in sizes]
    cell_h = caption_h + panel_height + bar_h + range_h + 4
    if stacked:
        total_w = max(cell_w) + 2 * margin
    else:
        total_w = sum(cell_w) + gap * (len(sizes) - 1) + 2 * margin
    total_w = max(total_w, 420)
    title_lines = wrap_text(title, total_w - 2 * margin, 0.6) if title else ()
    note_lines = wrap_text(note, total_w - 2 * margin, 0.65, 2) if note else ()
    header = (30 + 24 * (len(title_lines) - 1) if title else 0) + 28 * len(note_lines) + 6
    if stacked:
        total_h = header + len(sizes) * (cell_h + gap) + margin
    else:
        total_h = header + cell_h + margin
    return _OverviewLayout(stacked, panel_height, sizes, cell_w, cell_h, title_lines,
                           note_lines, header, total_w, total_h)  # fmt: skip


def overview_png_bound(height: int, width: int, level_cells: Sequence[tuple[int, int]], *,
                       title: str = "", note: str = "", panel_height: int = 256,
                       max_width: int = OVERVIEW_MAX_WIDTH) -> int:  # fmt: skip
    """At most the bytes ``encode_png`` makes of ``overview_image``'s picture of an ``(height,
    width)`` photo with level panels spanning it (``span_input``), one of ``(rows, cols)``
    cells each in ``level_cells``: the photo's panel counted as noise, each level's at most its
    cells (``cells_bound``), the captions, bars and white between them as text."""
    aspect = [width / max(1, height)] * (1 + len(level_cells))
    layout = _overview_layout(height, width, aspect, title, note, panel_height, max_width)
    (photo_w, photo_h), panels = layout.panel_sizes[0], layout.panel_sizes[1:]
    total = photo_h * (1 + 3 * photo_w)
    for cells, (w, h) in zip(level_cells, panels):
        total += cells_bound(cells, (h, w))
    # the header, and each panel's caption, colour bar and range (white beside them: repeats)
    text = layout.header * layout.width
    text += sum((layout.cell_h - layout.panel_height) * w for w in layout.cell_w)
    return total + rest_bound(layout.height, layout.width, text)


def overview_image(
    image_rgb: np.ndarray,
    levels: list[dict],
    *,
    title: str = "",
    note: str = "",
    cmap: str = "viridis",
    panel_height: int = 256,
    clip: tuple[float, float] | None = DEFAULT_CLIP,
    max_width: int = OVERVIEW_MAX_WIDTH,
    span_input: bool = True,
) -> np.ndarray:
    """The Figure-3 overview: the input, then each level, side by side (one panel per row for
    pictures more than 2.5 times wider than high), at most ``max_width`` pixels wide.

    Drawn with numpy and OpenCV (tens of milliseconds, the batch pipeline writes one per image);
    level cells stay crisp (nearest-neighbour), each level coloured on its own range, which a
    colour bar under the panel states (``<=``/``>=``: values beyond the end exist; ``min``/
    ``max``: the map's own extreme; a bare number: the map stays inside it). Every level
    panel has the input panel's size (``span_input``): its valid cells cover the image, so the
    levels line up with the photo and with each other. Drawn at their own aspect they would not
    where the last cell row or column is mostly padding: a 2000x20 image has P5 1x42 cells
    (aspect 42) and P2 4x334 (aspect 84), so P5 came out half as wide as P2 and P6 a quarter.
    ``span_input=False`` (no photo: ``image_rgb`` is a placeholder) draws each map at its aspect.

    Args:
        image_rgb: ``(H, W, 3)`` uint8, the input photo.
        levels: ``{"name", "map" (valid-region (h, w) array), "stride", "shape"}`` per panel,
            optionally ``"range": (vmin, vmax)`` (default ``value_range(map, clip)``) and
            ``"caption"`` (default ``"{name}  stride {stride}"``).
        title: a line at the top.
        note: shown in red under the title (fpncli says here when the weights are random).
        cmap: the colormap of the levels.

    Returns:
        ``(H', W', 3)`` uint8 RGB.
    """
    height, width = image_rgb.shape[:2]
    aspect = [width / max(1, height)]
    if span_input:
        aspect += [aspect[0]] * len(levels)
    else:
        aspect += [lv["map"].shape[1] / max(1, lv["map"].shape[0]) for lv in levels]
    layout = _overview_layout(height, width, aspect, title, note, panel_height, max_width)
    stacked, panel_height, cell_w = layout.stacked, layout.panel_height, layout.cell_w
    total_w, cell_h = layout.width, layout.cell_h
    margin, gap, caption_h, bar_h = _OVERVIEW_MARGIN, _OVERVIEW_GAP, _OVERVIEW_CAPTION_H, 8
    panels = [cv2.resize(image_rgb, layout.panel_sizes[0], interpolation=cv2.INTER_AREA)]
    captions = [(f"input {width}x{height}", "", None)]
    for level, size in zip(levels, layout.panel_sizes[1:]):
        lo, hi = level.get("range") or value_range(level["map"], clip)
        colours = colorize(level["map"], cmap, lo, hi)
        panels.append(cv2.resize(colours, size, interpolation=cv2.INTER_NEAREST))
        labels = range_labels(level["map"], (lo, hi))
        caption = level.get("caption") or f"{level['name']}  stride {level['stride']}"
        captions.append((caption, str(tuple(level["shape"])), labels))
    title_lines, note_lines, header = layout.title_lines, layout.note_lines, layout.header
    canvas = np.full((layout.height, total_w, 3), 255, np.uint8)
    baseline = 0
    if title:
        baseline = put_lines(canvas, title_lines, total_w // 2, 24, 24, 0.6, centre=True)
    if note:
        put_lines(canvas, note_lines, total_w // 2, baseline + 28, 28, 0.65, NOTE_COLOUR, 2,
                  centre=True)  # fmt: skip
    x, y = margin, header
    for panel, cw, (line1, line2, labels) in zip(panels, cell_w, captions):
        centre = x + cw // 2
        put_centered(canvas, line1, centre, y + 18, 0.5)
        put_centered(canvas, line2, centre, y + 38, 0.45)
        top, left = y + caption_h, x + (cw - panel.shape[1]) // 2
        canvas[top : top + panel_height, left : left + panel.shape[1]] = panel
        cv2.rectangle(canvas, (left - 1, top - 1), (left + panel.shape[1], top + panel_height),
                      (90, 90, 90), 1)  # fmt: skip
        if labels is not None:
            bar_top = top + panel_height + 4
            canvas[bar_top : bar_top + bar_h, x : x + cw] = colour_bar(cmap, cw)
            base = bar_top + bar_h + 14
            put_text(canvas, labels[0], (x, base), 0.4)
            text_w = text_size(labels[1], 0.4)
            put_text(canvas, labels[1], (max(x, x + cw - text_w), base), 0.4)
        if stacked:
            y += cell_h + gap
        else:
            x += cw + gap
    return canvas


def overview_png(image_rgb: np.ndarray, levels: list[dict], **kwargs) -> bytes:
    """``overview_image`` encoded as PNG bytes (same arguments)."""
    return encode_png(overview_image(image_rgb, levels, **kwargs))
