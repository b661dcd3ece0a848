"""Drawing receptive fields on the photo: one panel per level (numpy and OpenCV only).

Each panel is the original photo with the effective receptive field laid over it as heat (the
smallest area that holds 90% of the gradient magnitude, brighter where it is denser), a red
square of the side the caption gives (90% of the gradient lies within it), the theoretical
receptive field as a yellow box (clipped to the photo; its full size is in the caption), the
cell itself as a white box and the pixel asked for as a cyan cross. A legend under the panels
says so.
"""

from __future__ import annotations

import cv2
import numpy as np

from .text import put_lines, put_text, text_size, wrap_text
from .visualize import colorize

__all__ = ["field_sizes", "field_captions", "field_summary", "erf_mass_levels",
           "receptive_field_image"]  # fmt: skip


def _to_original(box, scale_y: float, scale_x: float, height: int, width: int):
    """An inclusive (top, bottom, left, right) box in resized pixels -> original pixels, clipped."""
    top, bottom, left, right = box
    t = int(np.clip(np.floor(top / scale_y), 0, height - 1))
    b = int(np.clip(np.ceil((bottom + 1) / scale_y) - 1, 0, height - 1))
    lft = int(np.clip(np.floor(left / scale_x), 0, width - 1))
    r = int(np.clip(np.ceil((right + 1) / scale_x) - 1, 0, width - 1))
    return t, b, lft, r


def field_sizes(field, scale_y: float, scale_x: float) -> dict[str, int]:
    """A field's sizes in the photo's pixels (``trf_w``, ``trf_h``, ``erf_side``) and in the
    network input's (``net_trf_w``, ``net_trf_h``, ``net_erf_side``: the photo resized by
    ``scale``), where they are measured."""
    trf_h, trf_w = field.trf_size
    erf_side = field.erf_extent(0.9)
    return {
        "trf_w": round(trf_w / scale_x), "trf_h": round(trf_h / scale_y),
        "erf_side": round(erf_side / ((scale_x + scale_y) / 2)),
        "net_trf_w": trf_w, "net_trf_h": trf_h, "net_erf_side": erf_side,
    }  # fmt: skip


def field_captions(field, scale_y: float, scale_x: float) -> list[str]:
    """A panel's captions. The fields are measured in the network input's pixels; the picture
    is the photo, so their sizes are given in the photo's pixels."""
    row, col = field.cell
    size = field_sizes(field, scale_y, scale_x)
    return [
        f"{field.level}  stride {field.stride}  cell (row {row}, col {col})",
        f"theoretical RF {size['trf_w']}x{size['trf_h']} photo px (yellow)",
        f"effective RF: 90% within {size['erf_side']} photo px (red)",
    ]


def field_summary(field, scale_y: float, scale_x: float) -> str:
    """The line ``fpncli show --receptive-field`` prints per level: the picture's photo pixels,
    then the network input's pixels (the photo resized by ``scale``), each unit named."""
    row, col = field.cell
    size = field_sizes(field, scale_y, scale_x)
    return (
        f"{field.level}: cell (row {row}, col {col}), theoretical RF {size['trf_w']}x"
        f"{size['trf_h']} photo px ({size['net_trf_w']}x{size['net_trf_h']} network px), "
        f"effective RF 90% within {size['erf_side']} photo px ({size['net_erf_side']} network px)"
    )


def erf_mass_levels(erf: np.ndarray, mass: float = 0.9) -> np.ndarray:
    """For each pixel of a non-negative map, ``1 - f / mass`` clipped to [0, 1], where ``f`` is
    the fraction of the map's total held by the pixels at least as high (0 outside the
    smallest area that holds ``mass`` of it, 1 at the peak). An ERF is a few sharp peaks over
    a wide low floor (on a random network the 99th percentile is about 5% of the peak):
    coloured by value it shows as a few dots, coloured by held mass as the area it covers."""
    values = np.asarray(erf, dtype=np.float64)
    flat = np.clip(values.ravel(), 0.0, None)
    total = flat.sum()
    if total <= 0:
        return np.zeros(values.shape, np.float32)
    order = np.argsort(-flat, kind="stable")
    held = np.empty_like(flat)
    held[order] = np.cumsum(flat[order]) / total
    return np.clip(1.0 - held / mass, 0.0, 1.0).reshape(values.shape).astype(np.float32)


#: The ERF is smoothed over this many network pixels (a Gaussian's sigma, two P2 cells) before
#: it is drawn: the raw gradient of strided convolutions is a grid of single-pixel peaks.
ERF_SMOOTHING_PX = 8.0
#: A panel's widest and narrowest side, in pixels (a 4000x1 photo, a 1x4000 one).
MAX_PANEL_WIDTH, MIN_PANEL_SIDE = 2400, 16
_RED = (255, 60, 60)
_LEGEND = (
    ("cross", (0, 255, 255), "the pixel --at"),
    ("box", (255, 255, 255), "its cell"),
    ("box", (255, 230, 0), "theoretical RF (clipped to the photo)"),
    ("heat", None, "effective RF: the area holding 90% of |d cell / d input| (smoothed), "
                   "brighter = more"),
    ("box", _RED, "square holding 90% of it (its side is the caption's)"),
)  # fmt: skip


def _legend(width: int, cmap: str) -> np.ndarray:
    """A strip explaining the marks: a swatch on the dimmed photo's dark grey, then the text,
    items wrapped onto as many lines as ``width`` needs."""
    scale, line_h, swatch, margin = 0.45, 24, 22, 10
    room = max(1, width - 2 * margin - swatch - 6 - 18)  # an item's text on a line of its own
    placed, x, row = [], margin, 0
    for kind, colour, text in _LEGEND:
        lines = wrap_text(text, room, scale)  # a one-level picture is narrower than one item
        item_w = swatch + 6 + max(text_size(line, scale) for line in lines) + 18
        if x > margin and x + item_w > width - margin:
            x, row = margin, row + 1
        placed.append((kind, colour, lines, x, row))
        x += item_w
        if len(lines) > 1:  # the next item starts under its last line
            x, row = width, row + len(lines) - 1
    strip = np.full((line_h * (row + 1) + 8, width, 3), 255, np.uint8)
    for kind, colour, lines, x, row in placed:
        top = 4 + row * line_h
        strip[top : top + 16, x : x + swatch] = (60, 60, 60)
        if kind == "cross":
            cv2.drawMarker(strip, (x + swatch // 2, top + 8), colour, cv2.MARKER_CROSS, 12, 1)
        elif kind == "box":
            cv2.rectangle(strip, (x + 4, top + 3), (x + swatch - 5, top + 12), colour, 1)
        else:
            ramp = colorize(np.linspace(0.0, 1.0, swatch)[None, :], cmap, 0.0, 1.0)
            strip[top : top + 16, x : x + swatch] = ramp
        put_lines(strip, lines, x + swatch + 6, top + 13, line_h, scale)
    return strip


def receptive_field_image(
    image_rgb: np.ndarray,
    fields: list,
    *,
    resized: tuple[int, int],
    scale: tuple[float, float],
    at: tuple[float, float],
    title: str = "",
    note: str = "",
    panel_height: int = 320,
    cmap: str = "inferno",
) -> np.ndarray:
    """Panels side by side (``fields``: ``ReceptiveField`` per level). Returns uint8 RGB.

    Args:
        resized: (height, width) of the resized image (the ERF maps cover the padded input).
        scale: (scale_y, scale_x) from original to resized pixels.
        at: the (x, y) original pixel asked for, marked with a cross.
    """
    height, width = image_rgb.shape[:2]
    scale_y, scale_x = scale
    # a 4000x1 photo at 320 pixels high was a 1,280,000-pixel-wide panel (PNG encoding failed):
    # the panel is lowered to fit MAX_PANEL_WIDTH, and stretched where even MIN_PANEL_SIDE is
    # too wide for its aspect; a 1x4000 photo gets MIN_PANEL_SIDE pixels of width
    panel_height = max(MIN_PANEL_SIDE, min(panel_height, MAX_PANEL_WIDTH * height // width))
    panel_w = min(MAX_PANEL_WIDTH, max(MIN_PANEL_SIDE, round(panel_height * width / height)))
    zoom_y, zoom_x = panel_height / height, panel_w / width

    def on_panel(box):  # photo pixels (inclusive) -> the panel's, so a 1x1 photo keeps its marks
        t, b, lft, r = _to_original(box, scale_y, scale_x, height, width)
        return (int(lft * zoom_x), int(t * zoom_y),
                max(int(lft * zoom_x), int(np.ceil((r + 1) * zoom_x)) - 1),
                max(int(t * zoom_y), int(np.ceil((b + 1) * zoom_y)) - 1))  # fmt: skip

    # the marks are drawn on the panel: drawn on a 1x1 or 2x2 photo, the cell's white box was
    # every pixel of it, and the panel came out white
    line = max(1, round(max(panel_height, panel_w) / 300))
    panels = []
    sigma = max(1.0, ERF_SMOOTHING_PX / ((scale_x + scale_y) / 2))  # in photo pixels
    for field in fields:
        erf = field.erf[: resized[0], : resized[1]]
        erf = cv2.resize(erf, (width, height), interpolation=cv2.INTER_AREA)
        level = erf_mass_levels(cv2.GaussianBlur(erf, (0, 0), sigma))
        heat = colorize(level, cmap, 0.0, 1.0).astype(np.float32)
        alpha = np.where(level > 0, 0.4 + 0.5 * level, 0.0)[..., None]
        picture = (1 - alpha) * image_rgb.astype(np.float32) * 0.6 + alpha * heat
        picture = np.clip(picture, 0, 255).astype(np.uint8)
        panel = cv2.resize(picture, (panel_w, panel_height), interpolation=cv2.INTER_AREA)
        x0, y0, x1, y1 = on_panel(field.trf)
        cv2.rectangle(panel, (x0, y0), (x1, y1), (255, 230, 0), line)
        row, col = field.cell
        x0, y0, x1, y1 = on_panel(field.erf_square(0.9))  # within the yellow box
        cv2.rectangle(panel, (x0, y0), (x1, y1), _RED, line)
        cx, cy = int((int(at[0]) + 0.5) * zoom_x), int((int(at[1]) + 0.5) * zoom_y)
        cv2.drawMarker(panel, (cx, cy), (0, 255, 255), cv2.MARKER_CROSS, 6 * line, line)
        cell = (row * field.stride, (row + 1) * field.stride - 1, col * field.stride,
                (col + 1) * field.stride - 1)  # fmt: skip
        x0, y0, x1, y1 = on_panel(cell)
        cv2.rectangle(panel, (x0, y0), (x1, y1), (255, 255, 255), line)  # over the cross
        captions = field_captions(field, scale_y, scale_x)
        caption_h = 20 * len(captions) + 6
        block = np.full((caption_h + panel_height, max(panel_w, 300), 3), 255, np.uint8)
        for k, text in enumerate(captions):
            put_text(block, text, (4, 16 + 20 * k), 0.45)
        block[caption_h:, :panel_w] = panel
        panels.append(block)
    gap, margin = 10, 10
    total_w = sum(p.shape[1] for p in panels) + gap * (len(panels) - 1) + 2 * margin
    title_lines = wrap_text(title, total_w - 2 * margin, 0.6) if title else []
    note_lines = wrap_text(note, total_w - 2 * margin, 0.6, 2) if note else []
    header = (28 + 24 * (len(title_lines) - 1) if title else 0) + 26 * len(note_lines) + 6
    legend = _legend(total_w, cmap)
    body_h = header + max(p.shape[0] for p in panels) + 4
    total_h = body_h + legend.shape[0] + margin
    canvas = np.full((total_h, total_w, 3), 255, np.uint8)
    canvas[body_h : body_h + legend.shape[0]] = legend
    y = 0
    if title:
        y = put_lines(canvas, title_lines, margin, 22, 24, 0.6)
    if note:
        put_lines(canvas, note_lines, margin, y + 26, 26, 0.6, (192, 0, 0), 2)
    x = margin
    for panel in panels:
        canvas[header : header + panel.shape[0], x : x + panel.shape[1]] = panel
        x += panel.shape[1] + gap
    return canvas
