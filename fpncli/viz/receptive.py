"""Drawing receptive fields on the photo: one panel per level (numpy and OpenCV only).

Each panel is the original photo with the effective receptive field laid over it (the normalized
gradient magnitude, as heat), the theoretical receptive field as a yellow box (clipped to the
photo; its full size is in the caption) and the cell itself as a white box.
"""

from __future__ import annotations

import cv2
import numpy as np

from .visualize import colorize, put_lines, put_text, wrap_text

__all__ = ["field_captions", "receptive_field_image"]


def _to_original(box, scale_y: float, scale_x: float, height: int, width: int):
    """An inclusive (top, bottom, left, right) box in resized pixels -> original pixels, clipped."""
    top, bottom, left, right = box
    t = int(np.clip(np.floor(top / scale_y), 0, height - 1))
    b = int(np.clip(np.ceil((bottom + 1) / scale_y) - 1, 0, height - 1))
    lft = int(np.clip(np.floor(left / scale_x), 0, width - 1))
    r = int(np.clip(np.ceil((right + 1) / scale_x) - 1, 0, width - 1))
    return t, b, lft, r


def field_captions(field, scale_y: float, scale_x: float) -> list[str]:
    """A panel's captions. The fields are measured in the network input's pixels; the picture
    is the photo, so their sizes are given in the photo's pixels."""
    row, col = field.cell
    trf_h, trf_w = field.trf_size
    trf_w, trf_h = round(trf_w / scale_x), round(trf_h / scale_y)
    erf_side = round(field.erf_extent(0.9) / ((scale_x + scale_y) / 2))
    return [
        f"{field.level}  stride {field.stride}  cell (row {row}, col {col})",
        f"theoretical RF {trf_w}x{trf_h} photo px (yellow)",
        f"effective RF: 90% within {erf_side} photo px",
    ]


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
    panels = []
    for field in fields:
        erf = field.erf[: resized[0], : resized[1]]
        erf = cv2.resize(erf, (width, height), interpolation=cv2.INTER_AREA)
        peak = float(erf.max())
        erf = erf / peak if peak > 0 else erf
        heat = colorize(erf, cmap, 0.0, 1.0).astype(np.float32)
        alpha = np.clip(erf, 0.0, 1.0)[..., None] ** 0.5 * 0.85
        picture = (1 - alpha) * image_rgb.astype(np.float32) * 0.6 + alpha * heat
        picture = np.clip(picture, 0, 255).astype(np.uint8)
        t, b, lft, r = _to_original(field.trf, scale_y, scale_x, height, width)
        line = max(1, round(max(height, width) / 300))
        cv2.rectangle(picture, (lft, t), (r, b), (255, 230, 0), line)
        row, col = field.cell
        cell = (row * field.stride, (row + 1) * field.stride - 1, col * field.stride,
                (col + 1) * field.stride - 1)  # fmt: skip
        t, b, lft, r = _to_original(cell, scale_y, scale_x, height, width)
        cv2.rectangle(picture, (lft, t), (r, b), (255, 255, 255), line)
        cx, cy = int(at[0]), int(at[1])
        cv2.drawMarker(picture, (cx, cy), (0, 255, 255), cv2.MARKER_CROSS, 6 * line, line)
        panel_w = max(1, round(panel_height * width / height))
        panel = cv2.resize(picture, (panel_w, panel_height), interpolation=cv2.INTER_AREA)
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
    total_h = header + max(p.shape[0] for p in panels) + margin
    canvas = np.full((total_h, total_w, 3), 255, np.uint8)
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
