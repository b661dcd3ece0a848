"""The ``fpncli show`` window: the feature values themselves, drawn with matplotlib.

The PNGs are pictures for files and reports; the window draws the data: each level's valid
region with ``imshow`` on axes in the original image's pixels (so P6's 13x19 cells cover the
photo like P2's 200x304), a colour bar of the range used, and a status line that gives, under
the pointer, the position in image pixels, the cell and the value. ``--level all`` is one
subplot per level. Nothing here imports pyplot unless a window is really opened.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

__all__ = ["level_figure", "open_window", "interactive_backend", "figure_size"]

_NON_INTERACTIVE = ("agg", "pdf", "svg", "ps", "cairo", "template", "pgf")


def _extent(shape: tuple[int, int], stride: int, scale: tuple[float, float] | None):
    """``imshow`` extent of a ``(h, w)`` map: original-image pixels, or cells without a scale."""
    h, w = shape
    if scale is None:
        return (0.0, float(w), float(h), 0.0)
    return (0.0, w * stride / scale[1], h * stride / scale[0], 0.0)


def _coord_formatter(values: np.ndarray, stride: int, scale: tuple[float, float] | None):
    """Status-line text under the pointer: position, cell and value."""
    unit = "px" if scale is not None else "cell"

    def format_coord(x: float, y: float) -> str:
        if scale is None:
            row, col = math.floor(y), math.floor(x)
        else:  # original pixel -> resized pixel -> cell, as cell_index does
            row, col = math.floor(y * scale[0] / stride), math.floor(x * scale[1] / stride)
        where = f"x={x:.0f} y={y:.0f} {unit}"
        if 0 <= row < values.shape[0] and 0 <= col < values.shape[1]:
            return f"{where}  cell ({row}, {col})  value {float(values[row, col]):.5g}"
        return where

    return format_coord


def level_figure(
    panels: list[dict],
    *,
    image_rgb: np.ndarray | None = None,
    scale: tuple[float, float] | None = None,
    cmap: str = "viridis",
    title: str = "",
    note: str = "",
    overlay: bool = False,
    figure: Figure | None = None,
) -> Figure:
    """Draw levels as data: one subplot per panel, each with its colour bar.

    Args:
        panels: ``{"name", "map" (valid-region (h, w) values), "stride", "range": (lo, hi),
            "label"}`` per level.
        image_rgb: the original photo, ``(H, W, 3)`` uint8, drawn under the map with
            ``overlay``; its size also bounds the axes.
        scale: ``(scale_y, scale_x)`` of the resize, original -> network pixels; None draws in
            cells (a bare ``.npy`` without its manifest).
        title: the figure's title; ``note`` (random weights) is added in red.
        figure: draw into this figure (a new ``Figure`` otherwise; no pyplot needed).
    """
    fig = figure if figure is not None else Figure(figsize=figure_size(panels, image_rgb))
    count = len(panels)
    cols = 1 if count == 1 else 3 if count > 4 else 2
    rows = math.ceil(count / cols)
    for index, panel in enumerate(panels, start=1):
        ax = fig.add_subplot(rows, cols, index)
        values = np.asarray(panel["map"], dtype=np.float32)
        lo, hi = panel["range"]
        extent = _extent(values.shape, panel["stride"], scale)
        if overlay and image_rgb is not None and scale is not None:
            height, width = image_rgb.shape[:2]
            ax.imshow(image_rgb, extent=(0, width, height, 0), interpolation="antialiased")
        shown = ax.imshow(values, cmap=cmap, vmin=lo, vmax=hi, extent=extent,
                          interpolation="nearest", alpha=0.5 if overlay else 1.0)  # fmt: skip
        if image_rgb is not None and scale is not None:
            height, width = image_rgb.shape[:2]
            ax.set_xlim(0, width)
            ax.set_ylim(height, 0)
        finite = values[np.isfinite(values)]
        below = finite.size and finite.min() < lo
        above = finite.size and finite.max() > hi
        extend = "both" if below and above else "min" if below else "max" if above else "neither"
        fig.colorbar(shown, ax=ax, extend=extend, fraction=0.046, pad=0.02)
        ax.set_title(panel.get("label") or panel["name"], fontsize=10)
        ax.format_coord = _coord_formatter(values, panel["stride"], scale)
        ax.set_xlabel("image x (px)" if scale is not None else "cell")
    if count == 5 and image_rgb is not None and scale is not None:  # the free sixth slot
        ax = fig.add_subplot(rows, cols, 6)
        height, width = image_rgb.shape[:2]
        ax.imshow(image_rgb, extent=(0, width, height, 0))
        ax.set_title(f"input {width}x{height}", fontsize=10)
        ax.set_xlabel("image x (px)")
    heading = title + (f"\n{note}" if note else "")
    if heading:
        text = fig.suptitle(heading, fontsize=11)
        if note:
            text.set_color("#c00000")
    return fig


def figure_size(panels: list[dict], image_rgb: np.ndarray | None) -> tuple[float, float]:
    """A window that fits a laptop screen: about 10 inches wide for one level, 15 for all."""
    if image_rgb is not None:
        aspect = image_rgb.shape[0] / max(1, image_rgb.shape[1])
    else:
        aspect = panels[0]["map"].shape[0] / max(1, panels[0]["map"].shape[1])
    if len(panels) == 1:
        width = 9.0
        return width, min(9.0, max(3.0, width * aspect * 0.85 + 1.0))
    cols = 3 if len(panels) > 4 else 2
    rows = math.ceil(len(panels) / cols)
    width = 15.0
    return width, min(9.5, max(4.0, rows * (width / cols) * aspect * 0.9 + 1.0))


def interactive_backend() -> bool:
    """Whether matplotlib's backend can open a window."""
    import matplotlib

    return matplotlib.get_backend().lower() not in _NON_INTERACTIVE


def open_window(window_title: str, panels: list[dict], **kwargs) -> bool:
    """Open a window with ``level_figure(panels, **kwargs)``; False when matplotlib has no
    interactive backend here."""
    if not interactive_backend():
        return False
    import matplotlib.pyplot as plt

    fig = plt.figure(window_title, figsize=figure_size(panels, kwargs.get("image_rgb")))
    level_figure(panels, figure=fig, **kwargs)
    fig.tight_layout()
    plt.show()
    return True
