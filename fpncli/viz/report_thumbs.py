"""One image's row of ``fpncli report``: its thumbnails (the photo, and each level coloured as
its heatmap was) written into the report's ``thumbs/``, its grid row, and the sample of each
level the folder's statistics are made of (``process_item``).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ..io.atomic import atomic_write_bytes
from ..io.catalog import Extractions, Failure
from ..io.extraction import LoadedExtraction, replaced_size
from ..io.messages import error_text
from .maps import REDUCTIONS, reduce_channels
from .png import encode_png
from .report_html import Row
from .stats import sample_level
from .visualize import colour_bar

__all__ = ["process_item"]

log = logging.getLogger(__name__)


def _input_thumbnail(path: Path | None, height: int, manifest: dict) -> np.ndarray | None:
    """The photo at ``height`` pixels, decoded at reduced size where the format allows (JPEG);
    None when it is gone, unreadable, or not of the size the ``manifest`` records (replaced
    since, it is not the photo of these maps: ``extraction.replaced_size``)."""
    if path is None or not path.is_file():
        return None
    from ..io.exif import exif_orientation, turn_upright, upright_size
    from ..io.image_load import to_rgb8
    from ..io.pillow_open import open_image

    # open_image: a regular file only, no bomb, Pillow's warnings kept off stderr; a malformed
    # file costs the thumbnail, not the report
    try:
        with open_image(path) as im:
            orientation = exif_orientation(im, [])  # as extract read it (a PNG is decoded)
            width, height_now = upright_size(im, orientation)
            extracted = replaced_size(manifest, width, height_now)
            if extracted is not None:
                log.warning("report: %s is %dx%d, the extracted photo was %dx%d: replaced "
                            "since, not shown", path, width, height_now, *extracted)  # fmt: skip
                return None
            im.draft("RGB", (height * 4, height))  # JPEG: decode at 1/2..1/8 scale, fast
            im = turn_upright(im, orientation)
            rgb = to_rgb8(im, [])  # 16-bit and float images scaled as extract scales them
            im = rgb if isinstance(rgb, Image.Image) else Image.fromarray(rgb)
            im.thumbnail((height * 8, height))
            return np.asarray(im)
    except Exception as e:
        log.warning("report: cannot read %s for a thumbnail: %s", path, e)
        return None


def _level_thumbnail(map2d: np.ndarray, height: int, cmap: str, rng) -> np.ndarray:
    """The map coloured on ``rng`` (default: its own finite min..max), cells kept crisp."""
    values = np.asarray(map2d, dtype=np.float32)
    if values.size == 0:  # nothing to draw: a blank (grey) square, not a cv2 error
        return np.full((height, height, 3), 200, np.uint8)
    if rng is None:
        finite = values[np.isfinite(values)]
        rng = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    lo, hi = rng
    if hi > lo:
        # a range as wide as float32's (a run's, from forged statistics) overflows in float32:
        # to inf, which is then the last colour, not a RuntimeWarning printed by the report
        with np.errstate(over="ignore", invalid="ignore"):
            index = (values - lo) * (255.0 / (hi - lo))
        index = np.nan_to_num(index, nan=0.0, posinf=255, neginf=0)
        index = np.clip(index + 0.5, 0, 255).astype(np.uint8)
    else:
        index = np.full(values.shape, 128, np.uint8)
    colours = colour_bar(cmap, 256)[0][index]
    h, w = colours.shape[:2]
    width = max(1, round(height * w / max(1, h)))
    return cv2.resize(colours, (width, height), interpolation=cv2.INTER_NEAREST)


def _recorded_range(meta: dict) -> tuple[float, float] | None:
    pair = meta.get("range")
    if isinstance(pair, (list, tuple)) and len(pair) == 2:
        try:
            lo, hi = float(pair[0]), float(pair[1])
        except (TypeError, ValueError, OverflowError):
            return None
        if math.isfinite(lo) and math.isfinite(hi):
            return lo, hi
    return None


def _heatmap_settings(ex: LoadedExtraction) -> tuple[str, int, str]:
    """The manifest's ``heatmap`` reduce, channel and cmap, which the thumbnails are drawn
    with; ValueError for a reduction or colormap this version does not know, or a channel
    past a level's count (checked before any thumbnail of the image is drawn)."""
    heat = ex.manifest.get("heatmap") or {}
    reduce, channel = heat.get("reduce", "channel"), int(heat.get("channel", 0))
    cmap = heat.get("cmap", "viridis")
    if reduce not in REDUCTIONS:
        raise ValueError(f"heatmap.reduce of manifest.json: unknown reduction {reduce!r} (one of "
                         f"{', '.join(REDUCTIONS)}): extract this image again")  # fmt: skip
    try:
        colour_bar(cmap, 256)
    except ValueError as e:
        raise ValueError(f"heatmap.cmap of manifest.json: {e}: extract this image again") from None
    for name, array in ex.levels.items():
        if reduce == "channel" and channel >= array.shape[1]:
            raise ValueError(f"heatmap.channel of manifest.json: {channel}, but {name} has "
                             f"{array.shape[1]} channels: extract this image again")  # fmt: skip
    return reduce, channel, cmap


def _process(index: int, key: str, found: Extractions, thumbs: Path, href: str, height: int,
             ranges: dict | None) -> tuple[Row, dict, dict, int] | Failure:  # fmt: skip
    """Thumbnails of one image, written into ``thumbs`` and linked as ``href/NAME``; returns
    its grid row, per level (sample, valid shape), its manifest and its bytes, or a ``Failure``
    (key, why) when its outputs cannot be read (a malformed manifest, a truncated ``.npy``, a
    damaged shard, heatmap settings that cannot be drawn). Only this image's arrays are in
    memory (or mapped) meanwhile."""
    try:
        ex, size = found.load(key), found.size(key)
        reduce, channel, cmap = _heatmap_settings(ex)
    except (ValueError, OSError) as e:  # this image's outputs only: listed, the others go on
        return Failure(key, error_text(e))
    unloaded = ex.unloaded()
    if unloaded:  # not "not saved": the manifest says it was
        return Failure(key, "; ".join(f"{n}: its .npy is missing or unreadable" for n in unloaded))
    stem = f"{index:06d}"
    row = Row(key, {}, {}, None, None, "")
    picture = _input_thumbnail(ex.input_path, height, ex.manifest)
    if picture is not None:
        atomic_write_bytes(thumbs / f"{stem}_input.png", encode_png(picture))
        row.input_thumb = f"{href}/{stem}_input.png"
    inp = ex.manifest.get("input") or {}
    row.size = f"{inp.get('width')}x{inp.get('height')}"
    row.overview = found.link(key, ex.manifest.get("overview"))
    samples = {}
    for name, meta in ex.manifest.get("levels", {}).items():
        for kind in ("heatmap", "overlay", "file"):
            link = found.link(key, meta.get(kind))
            if link:
                row.links[name] = link
                break
        if name not in ex.levels:
            row.levels[name] = None
            continue
        valid = ex.valid(name)
        samples[name] = (sample_level(valid), valid.shape)
        map2d = reduce_channels(valid, reduce, channel)
        # --scale image: the level's recorded colour range (its heatmap's --clip percentiles,
        # so thumbnail and heatmap look alike), else the map's own min..max
        rng = ranges.get(name) if ranges else _recorded_range(meta)
        thumb = _level_thumbnail(map2d, height, cmap, rng)
        atomic_write_bytes(thumbs / f"{stem}_{name}.png", encode_png(thumb))
        row.levels[name] = f"{href}/{stem}_{name}.png"
    return row, samples, ex.manifest, size


def process_item(item: tuple[int, str], **kwargs) -> tuple[Row, dict, dict, int] | Failure:
    return _process(item[0], item[1], kwargs["found"], kwargs["thumbs"], kwargs["href"],
                    kwargs["height"], kwargs["ranges"])  # fmt: skip
