"""Pictures of feature maps: heatmaps, the Figure-3 overview, overlays on the photo.

numpy, OpenCV and matplotlib's colormaps only: no torch, no pyplot. Everything is drawn with
numpy and OpenCV (milliseconds per picture), because the batch pipeline writes six per image.
"""

from __future__ import annotations

import functools
import math
import struct
import zlib
from collections.abc import Sequence
from typing import NamedTuple

import cv2
import matplotlib
import numpy as np

try:  # isal (a dependency on x86-64 and 64-bit Arm): Intel ISA-L's deflate, several times faster
    from isal import isal_zlib as _deflate
except ImportError:  # pragma: no cover - depends on the install
    _deflate = zlib

__all__ = [
    "REDUCTIONS",
    "DEFAULT_CLIP",
    "parse_clip",
    "value_range",
    "range_from_order_stats",
    "reduce_channels",
    "pca_sign",
    "valid_region",
    "colorize",
    "upscale_cells",
    "colour_bar",
    "heatmap_image",
    "heatmap_indexed",
    "heatmap_palette",
    "heatmap_png",
    "heatmap_png_bound",
    "colour_indices",
    "encode_png",
    "png_size_bound",
    "png_deflate",
    "overview_image",
    "overview_png",
    "overview_png_bound",
    "overlay_image",
    "overlay_shape",
    "cell_index",
    "safe_text",
    "put_text",
    "text_size",
    "wrap_text",
    "put_lines",
]

REDUCTIONS = ("channel", "mean", "max", "l2", "pca")
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def reduce_channels(feature: np.ndarray, reduce: str = "channel", channel: int = 0) -> np.ndarray:
    """Turn a ``(C, H, W)`` (or ``(1, C, H, W)``) feature map into one ``(H, W)`` float32 map.

    ``channel`` picks one channel; ``mean`` / ``max`` reduce over channels; ``l2`` is the norm
    over channels; ``pca`` projects every position on the first principal component of the
    channels (centred). PCA's sign is arbitrary; it is fixed so the map correlates positively
    with the ``mean`` map of the same channels (``pca_sign``), which makes levels comparable:
    the same structure is bright on every level.
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
        bad = samples.size - int(np.isfinite(samples).sum())
        if bad:  # LAPACK's "Eigenvalues did not converge" would not say why
            raise ValueError(f"--reduce pca needs finite values, and this level holds {bad} NaN or "
                             "infinite ones: use --reduce channel, mean, max or l2")  # fmt: skip
        samples -= samples.mean(axis=1, keepdims=True)
        covariance = samples @ samples.T / max(h * w - 1, 1)
        _, vectors = np.linalg.eigh(covariance)
        component = vectors[:, -1] * pca_sign(vectors[:, -1])
        return (component @ samples).reshape(h, w).astype(np.float32)
    raise ValueError(f"unknown reduction {reduce!r}: use one of {', '.join(REDUCTIONS)}")


#: Below this ``|sum of loadings|`` (of a unit component) the mean map carries no sign.
PCA_SIGN_TOLERANCE = 1e-6


def pca_sign(component: np.ndarray) -> float:
    """+1 or -1: the sign that makes a first principal component's map correlate positively
    with the channel-mean map. With centred samples ``X`` (C x N) and component ``v``,
    ``cov(v X, mean_c X) = v . (X X^T 1) / (C N) = lambda (v . 1) / C``: the sign of the sum of
    the loadings. Where that sum is about 0 (the mean map is independent of the component) the
    largest loading is made positive. ``fpncli.run.device`` computes the same in torch.
    """
    total = float(np.sum(component))
    if abs(total) > PCA_SIGN_TOLERANCE * math.sqrt(component.size):
        return 1.0 if total > 0 else -1.0
    return 1.0 if component[np.argmax(np.abs(component))] >= 0 else -1.0


def valid_region(map2d: np.ndarray, valid_height: int, valid_width: int) -> np.ndarray:
    """The cells that come from image pixels, without the padded ones."""
    return map2d[..., :valid_height, :valid_width]


#: Percentiles of a map's finite values that span the colour scale unless ``--clip`` says
#: otherwise. Min-max scaling lets a handful of extreme cells set the scale (trained P2 maps
#: then look flat with a few hot pixels); 1-99 saturates at most 1% of the cells at each end
#: and keeps the rest of the colour range for the other 98%.
DEFAULT_CLIP = (1.0, 99.0)


def parse_clip(text: str | tuple[float, float] | None) -> tuple[float, float]:
    """``"LO,HI"`` percentiles (``0 <= LO < HI <= 100``) -> ``(LO, HI)``; ``"minmax"`` or
    ``"none"`` -> ``(0.0, 100.0)``; None -> ``DEFAULT_CLIP``.

    Raises:
        ValueError: anything else, saying what is expected.
    """
    if text is None:
        return DEFAULT_CLIP
    if isinstance(text, str):
        if text.strip().lower() in ("minmax", "none", "off"):
            return (0.0, 100.0)
        parts = text.split(",")
        try:
            lo, hi = (float(v) for v in parts)
        except ValueError:
            raise ValueError(
                f"expected LO,HI percentiles such as 1,99 (or minmax), got {text!r}"
            ) from None
    else:
        lo, hi = (float(v) for v in text)
    if not 0.0 <= lo < hi <= 100.0:
        raise ValueError(f"need percentiles 0 <= LO < HI <= 100, got {lo:g},{hi:g}")
    return (lo, hi)


def _finite(values: np.ndarray) -> tuple[np.ndarray, bool]:
    """A map's finite values, flat, in float64, and whether that array is a copy of our own
    (which the caller may reorder). The usual all-finite map gets no masked copy (1.3 ms of the
    five heatmaps of an image)."""
    array = np.asarray(values)
    own = array.dtype != np.float64
    array = array.astype(np.float64, copy=False)
    finite_mask = np.isfinite(array)
    if not finite_mask.all():
        array, own = array[finite_mask], True
    return array.ravel(), own


def _places(n: int, qs: tuple[float, ...]) -> list[tuple[int, int, float]]:
    """For each percentile ``q`` of ``n`` sorted values, numpy's "linear" method: the ranks
    below and above it and the weight of the upper one. ``fpncli.run.device.order_stats``
    computes the same ranks in torch."""
    places = []
    for q in qs:
        virtual = (n - 1) * (q / 100.0)
        below = min(max(math.floor(virtual), 0), n - 1)
        places.append((below, min(below + 1, n - 1), virtual - below))
    return places


def _lerp(a: float, b: float, t: float) -> float:
    """numpy's ``_lerp``: from ``a`` (t = 0) to ``b`` (t = 1), exact at both ends."""
    diff = b - a
    return b - diff * (1 - t) if t >= 0.5 else a + diff * t


def _percentiles(values: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """``np.percentile(values, qs)`` (method "linear"), bit for bit, reordering ``values`` (flat
    float64, finite, non-empty) in place: one ``partition`` for the order statistics needed,
    then numpy's own interpolation (``_lerp``). np.percentile's Python layers held the lock for
    a fifth of its time (0.3 of the 1.5 ms of an image's five heatmaps); the partition alone
    lets go of it (0.03 of 0.9 ms)."""
    places = _places(values.size, qs)
    values.partition(sorted({i for below, above, _ in places for i in (below, above)}))
    return [_lerp(float(values[below]), float(values[above]), t) for below, above, t in places]


def _clip_percentiles(clip: tuple[float, float] | None) -> tuple[float, float]:
    return (0.0, 100.0) if clip is None else parse_clip(clip)


def value_range(
    values: np.ndarray, clip: tuple[float, float] | None = DEFAULT_CLIP
) -> tuple[float, float]:
    """The ``(vmin, vmax)`` a map is coloured with: the ``clip`` percentiles of its finite values.

    ``clip`` ``(0, 100)`` or None is the plain min-max. A map with no finite value gives
    ``(0.0, 0.0)``; a constant one ``(v, v)`` (``colorize`` then uses the middle colour); one
    whose percentiles coincide (a few non-zero cells) falls back to min-max. Every
    picture (heatmap, overlay, overview, ``show``) takes its range from here, and the manifest
    records it, so one range means the same everywhere.
    """
    finite, own = _finite(values)
    if finite.size == 0:
        return (0.0, 0.0)
    lo, hi = _clip_percentiles(clip)
    if lo <= 0.0 and hi >= 100.0:
        return (float(finite.min()), float(finite.max()))
    vmin, vmax = _percentiles(finite if own else finite.copy(), (lo, hi))
    if vmax <= vmin:  # mostly one value (a sparse map): the percentiles would hide the rest
        return (float(finite.min()), float(finite.max()))
    return (float(vmin), float(vmax))


def range_from_order_stats(
    stats: tuple[float, ...], clip: tuple[float, float] | None = DEFAULT_CLIP
) -> tuple[float, float]:
    """``value_range`` of a map from the order statistics of its finite values that the device
    picked out (``fpncli.run.device.order_stats``: the count, the min, the max, and the values
    at the ranks below and above each of the ``clip`` percentiles), without the map: the very
    same numbers, as the ranks are numpy's and the interpolation is done here."""
    n, smallest, largest, below_lo, above_lo, below_hi, above_hi = (float(v) for v in stats)
    n = int(n)
    if n == 0:
        return (0.0, 0.0)
    lo, hi = _clip_percentiles(clip)
    if lo <= 0.0 and hi >= 100.0:
        return (smallest, largest)
    (_, _, t_lo), (_, _, t_hi) = _places(n, (lo, hi))
    vmin, vmax = _lerp(below_lo, above_lo, t_lo), _lerp(below_hi, above_hi, t_hi)
    if vmax <= vmin:
        return (smallest, largest)
    return (vmin, vmax)


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
TEXT_COLOUR = (20, 20, 20)
NOTE_COLOUR = (192, 0, 0)  # the red line of random weights
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
        cv2.putText(band, safe_text(text), origin, _FONT, scale, ink, 1, cv2.LINE_AA)


def safe_text(text: str) -> str:
    """``text`` as OpenCV can draw it: its Hershey fonts have ASCII only, and a lone surrogate
    (a non-UTF-8 byte of a file name, kept by Python's ``surrogateescape``) crashes
    ``cv2.putText``/``getTextSize`` (a segfault), so every other character becomes ``?``."""
    text = str(text)
    if text.isascii() and text.isprintable():  # the usual case, without a loop in Python
        return text
    return "".join(c if " " <= c <= "~" else "?" for c in text)


def put_text(canvas: np.ndarray, text: str, origin: tuple[int, int], scale: float,
             colour=TEXT_COLOUR, thickness: int = 1) -> None:  # fmt: skip
    """``cv2.putText`` of ``safe_text(text)``: every picture's text goes through here."""
    cv2.putText(canvas, safe_text(text), origin, _FONT, scale, colour, thickness, cv2.LINE_AA)


def text_size(text: str, scale: float, thickness: int = 1) -> int:
    """The width in pixels ``put_text`` draws ``text`` at."""
    (width, _), _ = cv2.getTextSize(safe_text(text), _FONT, scale, thickness)
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
            _centered(canvas, line, x, y, scale, colour, thickness)
        else:
            put_text(canvas, line, (x, y), scale, colour, thickness)
    return baseline + (len(lines) - 1) * step


def _text(canvas: np.ndarray, text: str, origin: tuple[int, int], scale: float = 0.45) -> None:
    put_text(canvas, text, origin, scale)


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _range_labels(values: np.ndarray, vrange: tuple[float, float]) -> tuple[str, str, str]:
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
        finite, _ = _finite(values)  # (else every value is finite: no copy, no mask)
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
    left, right, data = _range_labels(values, (lo, hi))
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


def encode_png(picture: np.ndarray, *, palette: np.ndarray | None = None) -> bytes:
    """``(H, W, 3)`` uint8 RGB -> PNG bytes (lossless; 8-bit RGB, no interlace); or, with a
    ``(N, 3)`` uint8 ``palette`` (N <= 256), ``(H, W)`` uint8 indices into it -> an 8-bit palette
    PNG. Written here rather than by OpenCV so that the deflate can be ISA-L's
    (``png_deflate``); zlib's and ISA-L's compress calls both release Python's lock, as OpenCV's
    did."""
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


def _cells_bound(cells: tuple[int, int], drawn: tuple[int, int]) -> int:
    """At most the bytes of a ``drawn`` ``(h, w)`` block drawn by nearest neighbour from a map
    of ``cells`` ``(rows, cols)``: where the map is shown smaller, its pixels are the bound."""
    (rows, cols), (h, w) = cells, drawn
    raw = h * (1 + 3 * w)
    per_cell = _CELL_BYTES_2X2 if (h, w) == (2 * rows, 2 * cols) else _CELL_BYTES
    return min(raw, per_cell * min(rows, h) * min(cols, w) + 8 * h)


def _rest_bound(height: int, width: int, area: int) -> int:
    """At most the bytes of ``area`` pixels of text and colour bars in a picture of ``(height,
    width)``, and of its rows' repeats and white (counted once, here, for all its rows)."""
    raw = height * (1 + 3 * width)
    drawn = int(_TEXT_BYTES_PER_PIXEL * area) + height * (8 + 3 * width // 64)
    return min(raw, drawn) + raw // 500 + 1024 + len(_PNG_SIGNATURE) + 3 * 12 + 13


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
    rgb = _cells_bound((map_height, map_width), drawn) + _rest_bound(
        layout.height, layout.width, text
    )
    return rgb + 12 + 3 * 256  # the PLTE chunk


def _centered(canvas: np.ndarray, text: str, centre_x: int, baseline: int, scale: float,
              colour=TEXT_COLOUR, thickness: int = 1) -> None:  # fmt: skip
    width = text_size(text, scale, thickness)
    put_text(canvas, text, (max(0, centre_x - width // 2), baseline), scale, colour, thickness)


#: The overview's widest canvas, in pixels: wider pictures are scaled down to it (a panorama
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
    cells (``_cells_bound``), the captions, bars and white between them as text."""
    aspect = [width / max(1, height)] * (1 + len(level_cells))
    layout = _overview_layout(height, width, aspect, title, note, panel_height, max_width)
    (photo_w, photo_h), panels = layout.panel_sizes[0], layout.panel_sizes[1:]
    total = photo_h * (1 + 3 * photo_w)
    for cells, (w, h) in zip(level_cells, panels):
        total += _cells_bound(cells, (h, w))
    # the header, and each panel's caption, colour bar and range (white beside them: repeats)
    text = layout.header * layout.width
    text += sum((layout.cell_h - layout.panel_height) * w for w in layout.cell_w)
    return total + _rest_bound(layout.height, layout.width, text)


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
        labels = _range_labels(level["map"], (lo, hi))
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
        _centered(canvas, line1, centre, y + 18, 0.5)
        _centered(canvas, line2, centre, y + 38, 0.45)
        top, left = y + caption_h, x + (cw - panel.shape[1]) // 2
        canvas[top : top + panel_height, left : left + panel.shape[1]] = panel
        cv2.rectangle(canvas, (left - 1, top - 1), (left + panel.shape[1], top + panel_height),
                      (90, 90, 90), 1)  # fmt: skip
        if labels is not None:
            bar_top = top + panel_height + 4
            canvas[bar_top : bar_top + bar_h, x : x + cw] = colour_bar(cmap, cw)
            base = bar_top + bar_h + 14
            _text(canvas, labels[0], (x, base), 0.4)
            text_w = text_size(labels[1], 0.4)
            _text(canvas, labels[1], (max(x, x + cw - text_w), base), 0.4)
        if stacked:
            y += cell_h + gap
        else:
            x += cw + gap
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
    left, right, _ = _range_labels(values, vrange)
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
