"""Pictures of feature maps: heatmaps, the Figure-3 overview, overlays on the photo.

numpy, OpenCV and matplotlib's colormaps only: no torch, no pyplot. Everything is drawn with
numpy and OpenCV (milliseconds per picture), because the batch pipeline writes six per image.
"""

from __future__ import annotations

import math

import cv2
import matplotlib
import numpy as np

__all__ = [
    "REDUCTIONS",
    "reduce_channels",
    "valid_region",
    "colorize",
    "heatmap_image",
    "encode_png",
    "overview_image",
    "overview_png",
    "overlay_image",
    "cell_index",
]

REDUCTIONS = ("channel", "mean", "max", "l2", "pca")
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def reduce_channels(feature: np.ndarray, reduce: str = "channel", channel: int = 0) -> np.ndarray:
    """Turn a ``(C, H, W)`` (or ``(1, C, H, W)``) feature map into one ``(H, W)`` float32 map.

    ``channel`` picks one channel; ``mean`` / ``max`` reduce over channels; ``l2`` is the norm
    over channels; ``pca`` projects every position on the first principal component of the
    channels (centred), its sign fixed so the largest loading is positive.
    """
    array = np.asarray(feature)
    if array.ndim == 4:
        if array.shape[0] != 1:
            raise ValueError(f"expected one image, got a batch of {array.shape[0]}")
        array = array[0]
    if array.ndim != 3:
        raise ValueError(f"expected a (C, H, W) feature map, got shape {array.shape}")
    if reduce == "channel":
        if not 0 <= channel < array.shape[0]:
            raise ValueError(f"channel {channel} out of range: this map has {array.shape[0]}")
        return array[channel].astype(np.float32)
    x = array.astype(np.float32)
    if reduce == "mean":
        return x.mean(axis=0)
    if reduce == "max":
        return x.max(axis=0)
    if reduce == "l2":
        return np.sqrt(np.square(x, dtype=np.float64).sum(axis=0)).astype(np.float32)
    if reduce == "pca":
        c, h, w = x.shape
        samples = x.reshape(c, h * w).astype(np.float64)
        samples -= samples.mean(axis=1, keepdims=True)
        covariance = samples @ samples.T / max(h * w - 1, 1)
        _, vectors = np.linalg.eigh(covariance)
        component = vectors[:, -1]
        if component[np.argmax(np.abs(component))] < 0:
            component = -component
        return (component @ samples).reshape(h, w).astype(np.float32)
    raise ValueError(f"unknown reduction {reduce!r}: use one of {', '.join(REDUCTIONS)}")


def valid_region(map2d: np.ndarray, valid_height: int, valid_width: int) -> np.ndarray:
    """The cells that come from image pixels, without the padded ones."""
    return map2d[..., :valid_height, :valid_width]


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
    colormap = _colormap(cmap)
    values = np.asarray(map2d, dtype=np.float64)
    finite = values[np.isfinite(values)]
    lo = vmin if vmin is not None else (float(finite.min()) if finite.size else 0.0)
    hi = vmax if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    if hi > lo:
        normed = (np.nan_to_num(values, nan=lo, posinf=hi, neginf=lo) - lo) / (hi - lo)
    else:
        normed = np.full(values.shape, 0.5)
    return colormap(np.clip(normed, 0.0, 1.0), bytes=True)[..., :3]


def _text(canvas: np.ndarray, text: str, origin: tuple[int, int], scale: float = 0.45) -> None:
    cv2.putText(canvas, text, origin, _FONT, scale, (20, 20, 20), 1, cv2.LINE_AA)


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def heatmap_image(
    map2d: np.ndarray, *, cmap: str = "viridis", label: str = "", min_side: int = 256
) -> np.ndarray:
    """One level as a picture: the map (cells upscaled by a whole factor, crisp), a title line,
    and a colour bar with the minimum and maximum values. Returns ``(H', W', 3)`` uint8 RGB."""
    values = np.asarray(map2d, dtype=np.float32)
    h, w = values.shape
    factor = max(1, math.ceil(min_side / max(1, min(h, w))))
    picture = np.repeat(np.repeat(colorize(values, cmap), factor, axis=0), factor, axis=1)
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    width = max(picture.shape[1], 420)
    title_h, gap, bar_h, values_h = 24, 6, 12, 20
    canvas = np.full((title_h + picture.shape[0] + gap + bar_h + values_h, width, 3), 255, np.uint8)
    _text(canvas, label, (4, 17))
    top = title_h
    canvas[top : top + picture.shape[0], : picture.shape[1]] = picture
    bar_top = top + picture.shape[0] + gap
    ramp = colorize(np.linspace(0.0, 1.0, picture.shape[1])[None, :], cmap, 0.0, 1.0)
    canvas[bar_top : bar_top + bar_h, : picture.shape[1]] = ramp
    _text(canvas, f"min {_fmt(lo)}", (2, bar_top + bar_h + 15), 0.4)
    right = f"max {_fmt(hi)}"
    (text_w, _), _ = cv2.getTextSize(right, _FONT, 0.4, 1)
    _text(canvas, right, (max(0, picture.shape[1] - text_w - 2), bar_top + bar_h + 15), 0.4)
    return canvas


def encode_png(rgb: np.ndarray) -> bytes:
    """``(H, W, 3)`` uint8 RGB -> PNG bytes."""
    ok, data = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise ValueError("PNG encoding failed")
    return data.tobytes()


def _centered(canvas: np.ndarray, text: str, centre_x: int, baseline: int, scale: float,
              colour=(20, 20, 20), thickness: int = 1) -> None:  # fmt: skip
    (width, _), _ = cv2.getTextSize(text, _FONT, scale, thickness)
    origin = (max(0, centre_x - width // 2), baseline)
    cv2.putText(canvas, text, origin, _FONT, scale, colour, thickness, cv2.LINE_AA)


def overview_image(
    image_rgb: np.ndarray,
    levels: list[dict],
    *,
    title: str = "",
    note: str = "",
    cmap: str = "viridis",
    panel_height: int = 256,
) -> np.ndarray:
    """The Figure-3 overview: the input, then each level, side by side, one row.

    Drawn with numpy and OpenCV (tens of milliseconds, the batch pipeline writes one per image);
    level cells stay crisp (nearest-neighbour), each level coloured on its own range.

    Args:
        image_rgb: ``(H, W, 3)`` uint8, the input photo.
        levels: ``{"name", "map" (valid-region (h, w) array), "stride", "shape"}`` per panel.
        title: a line at the top.
        note: shown in red under the title (fpncli says here when the weights are random).
        cmap: the colormap of the levels.

    Returns:
        ``(H', W', 3)`` uint8 RGB.
    """
    height, width = image_rgb.shape[:2]
    panel_w = max(1, round(panel_height * width / max(1, height)))
    panels = [cv2.resize(image_rgb, (panel_w, panel_height), interpolation=cv2.INTER_AREA)]
    captions = [(f"input {width}x{height}", "")]
    for level in levels:
        colours = colorize(level["map"], cmap)
        level_w = max(1, round(panel_height * colours.shape[1] / max(1, colours.shape[0])))
        panels.append(cv2.resize(colours, (level_w, panel_height), interpolation=cv2.INTER_NEAREST))
        captions.append((f"{level['name']}  stride {level['stride']}", str(tuple(level["shape"]))))
    margin, gap, caption_h = 14, 12, 44
    header = (30 if title else 0) + (28 if note else 0) + 6
    total_w = sum(p.shape[1] for p in panels) + gap * (len(panels) - 1) + 2 * margin
    canvas = np.full((header + caption_h + panel_height + margin, total_w, 3), 255, np.uint8)
    baseline = 0
    if title:
        baseline += 24
        _centered(canvas, title, total_w // 2, baseline, 0.6)
    if note:
        baseline += 28
        _centered(canvas, note, total_w // 2, baseline, 0.65, colour=(192, 0, 0), thickness=2)
    x = margin
    top = header + caption_h
    for panel, (line1, line2) in zip(panels, captions):
        centre = x + panel.shape[1] // 2
        _centered(canvas, line1, centre, header + 18, 0.5)
        _centered(canvas, line2, centre, header + 38, 0.45)
        canvas[top : top + panel_height, x : x + panel.shape[1]] = panel
        cv2.rectangle(canvas, (x - 1, top - 1), (x + panel.shape[1], top + panel_height),
                      (90, 90, 90), 1)  # fmt: skip
        x += panel.shape[1] + gap
    return canvas


def overview_png(image_rgb: np.ndarray, levels: list[dict], **kwargs) -> bytes:
    """``overview_image`` encoded as PNG bytes (same arguments)."""
    return encode_png(overview_image(image_rgb, levels, **kwargs))


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
) -> np.ndarray:
    """A level's valid-region map laid over the original (EXIF-applied) photo, cell-exact.

    Returns ``(H, W, 3)`` uint8 RGB: ``(1 - alpha) * photo + alpha * heat``.
    """
    h, w = image_rgb.shape[:2]
    colours = colorize(map2d, cmap)
    rows = cell_index(h, scale_y, stride, map2d.shape[0])
    cols = cell_index(w, scale_x, stride, map2d.shape[1])
    heat = colours[rows[:, None], cols[None, :]]
    blended = (1.0 - alpha) * image_rgb.astype(np.float32) + alpha * heat.astype(np.float32)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)
