"""What ``fpncli show`` draws from a ``Source``: per level its valid-region map, colour range
and label (the panels), the picture of one level, of all of them or of a level over the photo,
a grid of a level's channels, and the options of the window that shows the values themselves.
"""

from __future__ import annotations

import numpy as np

from ..io.guard import OptionError
from ..io.outputs import RANDOM_NOTE, picture_title, valid_size
from ..model.names import LEVELS
from ..model.names import OUTPUT_STRIDES as STRIDES  # an extraction may hold bottom-up stages too
from .maps import reduce_channels, value_range
from .overview import overview_image
from .scale import range_to_draw
from .sources import Source
from .visualize import heatmap_image, overlay_image

__all__ = ["channels_picture", "check_overlay", "level_panels", "render", "window_options"]


def _level_text(source: Source, name: str) -> str:
    """A level's label, ``p3  stride 8``, or ``level unknown`` where nothing says which it is."""
    return f"{name}  stride {STRIDES[name]}" if source.level_known else "level unknown"


def _title(source: Source, *details: str) -> str:
    """The title extract's overview has (``outputs.picture_title``), so show's pictures of a
    folder read the same."""
    return picture_title(source.photo or source.name, source.weights_name, *details)


def _level_map(source: Source, name: str, reduce: str, channel: int) -> np.ndarray:
    feature = source.features[name]
    if reduce == "channel" and feature.ndim in (3, 4) and not channel < feature.shape[-3]:
        raise OptionError(f"channel {channel} out of range: this map has {feature.shape[-3]}",
                          "--channel")  # fmt: skip
    if source.resized is not None:  # the valid cells only: a pca fit must not see the padding
        valid_h, valid_w = valid_size(*source.resized, STRIDES[name])
        feature = feature[..., :valid_h, :valid_w]
    return reduce_channels(feature, reduce, channel)


def level_panels(source: Source, level: str, *, reduce: str, channel: int,
            clip: tuple[float, float], fixed: dict | None = None) -> list[dict]:  # fmt: skip
    """What to draw: per level its valid-region map, stride, colour range and label; ``fixed``
    (level -> range, from ``--scale level|shared``) replaces the map's own range (an end that
    this image's recorded range set: the end of the map drawn, ``viz.scale.drawn_range``)."""
    fixed = fixed or {}
    names = [n for n in LEVELS if n in source.features] if level == "all" else [level]
    how = f"channel {channel}" if reduce == "channel" else reduce
    panels = []
    for name in names:
        values = _level_map(source, name, reduce, channel)
        shape = tuple(source.features[name].shape)
        vrange = range_to_draw(
            values,
            name,
            clip=clip,
            run=fixed.get(name),
            manifest=source.manifest,
            reduce=reduce,
            channel=channel,
        )
        panels.append({
            "name": name, "map": values, "stride": STRIDES[name], "shape": shape,
            "range": vrange,
            "label": f"{_level_text(source, name)}  {how}",
        })  # fmt: skip
    return panels


def render(source: Source, level: str, *, reduce: str, channel: int, cmap: str,
            overlay: bool, clip: tuple[float, float],
            fixed: dict | None = None) -> np.ndarray:  # fmt: skip
    panels = level_panels(source, level, reduce=reduce, channel=channel, clip=clip, fixed=fixed)
    names = [p["name"] for p in panels]
    maps = {p["name"]: p["map"] for p in panels}
    ranges = {p["name"]: p["range"] for p in panels}
    how = f"channel {channel}" if reduce == "channel" else reduce
    note = RANDOM_NOTE if source.random else ""
    if overlay:
        check_overlay(source)
        pictures = [
            overlay_image(source.image_rgb, maps[name], stride=STRIDES[name],
                          scale_y=source.scale[0], scale_x=source.scale[1], cmap=cmap,
                          vrange=ranges[name], note=note,
                          label=f"{_level_text(source, name)}  {how}  {cmap}")
            for name in names
        ]  # fmt: skip
        return np.concatenate(pictures, axis=1)
    if level == "all":
        panels = [
            {"name": n, "map": maps[n], "stride": STRIDES[n], "shape": source.features[n].shape,
             "range": ranges[n], "caption": _level_text(source, n)}
            for n in names
        ]  # fmt: skip
        image = source.image_rgb
        if image is None:
            image = np.full((64, 96, 3), 255, np.uint8)
        return overview_image(image, panels, title=_title(source, how), note=note, cmap=cmap,
                              span_input=source.image_rgb is not None)  # fmt: skip
    shape = tuple(source.features[level].shape)
    label = f"{_level_text(source, level)}  {shape}  {how}"
    return heatmap_image(maps[level], cmap=cmap, label=label, vrange=ranges[level], note=note)


def check_overlay(source: Source) -> None:
    if source.image_rgb is None or source.scale is None:
        raise ValueError(
            "--overlay needs the extracted photo: it is gone, replaced since, or not recorded "
            "(a .npy outside its extraction folder)"
        )


def channels_picture(source: Source, level: str, top: int | None,
                      channels: str | list[int] | None, cmap: str,
                      clip: tuple[float, float]) -> tuple[np.ndarray, list[int]]:  # fmt: skip
    """A grid of the level's top-``top`` channels by mean (or the listed ones), valid region,
    one colour range (the ``clip`` percentiles of the shown channels) for all tiles; and the
    channels drawn (``top`` of them, or all the level has when it has fewer)."""
    from .channels import channel_grid, parse_channels, top_channels

    feature = source.features[level]
    feature = feature[0] if feature.ndim == 4 else feature
    if source.resized is not None:
        valid_h, valid_w = valid_size(*source.resized, STRIDES[level])
        feature = feature[:, :valid_h, :valid_w]
    if top is not None:
        picked = top_channels(feature, top)
        how = f"top {len(picked)} channels by mean activation"
    else:
        text = channels if isinstance(channels, str) else ",".join(str(c) for c in channels)
        picked = parse_channels(text, feature.shape[0])
        how = f"channels {','.join(str(c) for c in picked)}"
    vrange = value_range(np.stack([feature[c] for c in picked]), clip)
    title = f"{source.name}  {_level_text(source, level)}  {how}"
    note = RANDOM_NOTE if source.random else ""
    grid = channel_grid(feature, picked, title=title, note=note, cmap=cmap, vrange=vrange)
    return grid, picked


def window_options(source: Source, *, cmap: str, overlay: bool, reduce: str,
                    channel: int) -> dict:  # fmt: skip
    """``level_figure`` arguments for a source: its photo, its scale, the title line."""
    how = f"channel {channel}" if reduce == "channel" else reduce
    return {
        "image_rgb": source.image_rgb,
        "scale": source.scale if source.resized is not None else None,
        "cmap": cmap,
        "title": _title(source, how, cmap),
        "note": RANDOM_NOTE if source.random else "",
        "overlay": overlay,
    }
