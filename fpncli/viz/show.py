"""The library side of ``fpncli show``: find what to show, draw it, open a window or save a PNG.

TARGET is an output folder (with ``manifest.json``), one ``p*.npy`` file (its folder's manifest
is used when there is one), an image (extracted on the fly, nothing written but the picture), or
None for the most recent extraction.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io.guard import OptionError
from ..io.manifest import load_manifest
from ..io.outputs import (
    MANIFEST,
    RANDOM_NOTE,
    atomic_write_bytes,
    picture_title,
    read_manifest,
    valid_size,
)
from ..io.preprocess import DEFAULT_MAX_PIXELS
from ..model.names import LEVELS, STAGE_STRIDES
from ..model.names import OUTPUT_STRIDES as STRIDES  # an extraction may hold bottom-up stages too
from .maps import DEFAULT_CLIP, parse_clip, reduce_channels, value_range
from .names import picture_suffix
from .overview import overview_image
from .png import encode_png
from .scale import range_to_draw
from .visualize import heatmap_image, overlay_image
from .window import open_window

__all__ = ["ShowResult", "show", "level_figure_for", "P6_NOTE"]

log = logging.getLogger(__name__)
P6_NOTE = (
    "note: P6 is not a separately learned map: it is a stride-2 subsample of P5 "
    "(LastLevelMaxPool: max_pool2d with kernel 1, stride 2)"
)


@dataclass
class ShowResult:
    """What ``show`` did: where it saved a picture, whether it opened a window, what to say."""

    saved: Path | None = None
    displayed: bool = False
    messages: list[str] = field(default_factory=list)


@dataclass
class _Source:
    """Everything needed to draw: per-level arrays plus the geometry from the manifest."""

    features: dict[str, np.ndarray]
    image_rgb: np.ndarray | None
    resized: tuple[int, int] | None  # (height, width) after the resize: the valid region
    scale: tuple[float, float] | None  # (scale_y, scale_x)
    random: bool
    name: str
    default_prefix: Path  # the default PNG is f"{default_prefix}{names.picture_suffix(...)}.png"
    notes: list[str] = field(default_factory=list)  # said before the picture
    photo: str = ""  # the photo's file name, for titles (as extract's overview names it)
    weights_name: str = ""  # the manifest's weights name ("random", a registry name, a path)
    manifest: dict | None = None  # an extraction's (its recorded colour ranges)
    #: False for a .npy whose level neither its name, a manifest nor --level gives: it is kept
    #: under a placeholder level name, labelled "level unknown" and not named by level
    level_known: bool = True


def _input_path(manifest: dict) -> Path | None:
    """The input photo's path a manifest records, None where it records none."""
    info = manifest.get("input")
    path = info.get("path") if isinstance(info, dict) else None
    return Path(path) if isinstance(path, str) and path else None


def _photo_and_weights(manifest: dict) -> tuple[str, str]:
    """The photo's file name and the weights' name a manifest records ("" where it does not)."""
    path, weights = _input_path(manifest), manifest.get("weights")
    name = weights.get("name") if isinstance(weights, dict) else None
    return (path.name if path else "", name if isinstance(name, str) else "")


def _level_text(source: _Source, name: str) -> str:
    """A level's label, ``p3  stride 8``, or ``level unknown`` where nothing says which it is."""
    return f"{name}  stride {STRIDES[name]}" if source.level_known else "level unknown"


def _title(source: _Source, *details: str) -> str:
    """The title extract's overview has (``outputs.picture_title``), so show's pictures of a
    folder read the same."""
    return picture_title(source.photo or source.name, source.weights_name, *details)


def _latest() -> tuple[Path, list[str]]:
    from ..io.outputs import latest_extraction, recent_extractions

    folder = latest_extraction()
    recorded = recent_extractions()
    notes = []
    if recorded and folder != recorded[0]:
        notes.append(
            f"note: the latest extraction {recorded[0]} is gone; showing {folder}, the newest "
            "one that still exists"
        )
    return folder, notes


def _extractions_below(folder: Path, limit: int = 2000) -> list[Path]:
    """Complete extraction folders under ``folder`` (a batch output root), sorted."""
    found = []
    for count, (dirpath, dirnames, filenames) in enumerate(os.walk(folder)):
        dirnames.sort()
        if MANIFEST in filenames and read_manifest(Path(dirpath)) is not None:
            found.append(Path(dirpath))
            dirnames[:] = []
        if count >= limit:
            break
    return found


def _not_an_extraction(folder: Path) -> Exception:
    from ..io.shards import INDEX, INDEX_DIR

    if (folder / INDEX).is_file() or (folder / INDEX_DIR).is_dir():
        return ValueError(
            f"{folder} is a --format wds output: name an image in it with --key KEY "
            f"(its keys are in {folder / INDEX}, and fpncli report "
            f"{shlex.quote(str(folder))} lists them)"
        )
    below = _extractions_below(folder)
    if not below:
        return FileNotFoundError(
            f"{folder} holds no complete extraction ({MANIFEST} missing): run fpncli extract "
            "on an image first, or name an output folder"
        )
    names = ", ".join(str(p.relative_to(folder)) for p in below[:5])
    more = f" and {len(below) - 5} more" if len(below) > 5 else ""
    return ValueError(
        f"{folder} is a batch output folder with {len(below)} extraction(s) ({names}{more}): "
        f"name one, e.g. fpncli show {shlex.quote(str(below[0]))}"
    )


def _load_input(manifest: dict) -> np.ndarray | None:
    from ..io.extraction import read_photo

    return read_photo(_input_path(manifest), manifest)


def _from_folder(folder: Path, levels: list[str], asked: bool = True,
                 named: bool = True) -> _Source:  # fmt: skip
    """``levels`` of the extraction in ``folder``; ``asked``: they are ``--level``'s (or its
    default), so one the folder lacks is an ``OptionError``, not the name of a ``.npy`` in it;
    ``named``: ``--level`` was given (else its default, and the error says to give it)."""
    manifest = load_manifest(folder)  # ValueError: one there that cannot be read
    if manifest is None:
        raise _not_an_extraction(folder)
    from ..io.extraction import check_level_array, level_file, manifest_levels, read_npy
    from ..io.manifest import check_manifest

    check_manifest(manifest, f"{folder}/{MANIFEST}")

    features = {}
    saved_levels = manifest_levels(folder, manifest)
    if len(levels) > 1:  # --level all: the levels this extraction has
        levels = [name for name in levels if name in saved_levels] or levels
    for name in levels:
        meta = saved_levels.get(name)
        if meta is None:
            saved = ", ".join(map(str, saved_levels))
            message = f"{folder} has no {name} (it has {saved}); extract it with --levels"
            if not named and saved_levels:  # the default level: show one it has
                message += f", or pass --level {next(iter(saved_levels))}"
            raise OptionError(message, "--level") if asked else ValueError(message)
        file = level_file(folder, name, meta)  # must lie inside the folder
        if file is None:
            heatmap, overlay = meta.get("heatmap"), meta.get("overlay")
            kept = (f"only its heatmap {heatmap}" if heatmap
                    else f"only its overlay {overlay}" if overlay  # --no-heatmaps --overlay
                    else "nor a heatmap (only statistics)")  # fmt: skip
            raise ValueError(
                f"{folder} was extracted with --no-npy: its {name} tensor was not saved, {kept}; "
                "re-extract without --no-npy to show it"
            )
        features[name] = check_level_array(read_npy(file), meta, str(file))
    resized, scale, random = _geometry(manifest, f"{folder}/{MANIFEST}")
    photo, weights_name = _photo_and_weights(manifest)
    return _Source(features, _load_input(manifest), resized, scale, random, folder.name,
                   folder / "show", photo=photo, weights_name=weights_name,
                   manifest=manifest)  # fmt: skip


def _geometry(manifest: dict, where: str) -> tuple[tuple[int, int], tuple[float, float], bool]:
    """A manifest's resized size, scale and random-weights flag; a one-line ValueError naming
    ``where`` when they are missing (``check_manifest``, called first, refuses values of the
    wrong type or range)."""
    try:
        pre = manifest["preprocess"]
        resized = (int(pre["resized_height"]), int(pre["resized_width"]))
        scale = (float(pre["scale_y"]), float(pre["scale_x"]))
        random = bool(manifest.get("weights", {}).get("random"))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"{where} is malformed ({type(e).__name__}: {e}); re-extract") from None
    return resized, scale, random


def _from_image(path: Path, weights: str, device: str, max_pixels: int) -> _Source:
    from ..api import extract, load_backbone, resolve_device
    from ..io.preprocess import load_image

    model = load_backbone(weights, device=resolve_device(device))
    result = extract(load_image(path, max_pixels=max_pixels), model)
    prepared = result.prepared
    return _Source(
        {k: v.numpy() for k, v in result.features.items()},
        result.image.rgb,
        (prepared.resized_height, prepared.resized_width),
        (prepared.scale_y, prepared.scale_x),
        model.weights_info.random,
        path.stem,
        Path(f"fpn_show_{path.stem}"),
        photo=path.name,
        weights_name=model.weights_info.name,
    )


def _from_shard(root: str, key: str, levels: list[str], named: bool = True) -> _Source:
    """One image of a ``--format wds`` extraction, found through its index (``named``: as
    ``_from_folder``'s)."""
    from ..io.extraction import check_level_array, npy_from_bytes
    from ..io.guard import parse_json
    from ..io.manifest import check_manifest
    from ..io.shard_index import find_member
    from ..io.shards import open_root

    fs, path = open_root(root)
    shard, members = find_member(fs, path, key)
    try:
        manifest = parse_json(members["json"])
    except ValueError:
        raise ValueError(f"{key}.json in {shard} is not JSON: re-extract this image") from None
    check_manifest(manifest, f"{key}.json in {root}/{shard}")
    features = {}
    if len(levels) > 1:  # --level all: the levels this record has (as for a folder)
        levels = [n for n in levels if (manifest["levels"].get(n) or {}).get("file")] or levels
    for name in levels:
        meta = manifest["levels"].get(name)
        if meta is None or not meta.get("file"):
            saved = ", ".join(n for n, m in manifest["levels"].items() if m.get("file"))
            message = f"{key} in {shard} has no {name} tensor (it has {saved or 'none'})"
            if not named and saved:  # the default level: show one it has
                message += f"; pass --level {saved.split(', ')[0]}"
            raise OptionError(message, "--level") if saved else ValueError(message)
        # the header is checked against the bytes before anything is allocated
        where = f"{shard}: {key}.{meta['file']}"
        if meta["file"] not in members:  # a damaged record (a forged name, a lost member)
            raise ValueError(f"{where} is missing: the record names a member the shard does "
                             "not hold; re-extract this image")  # fmt: skip
        array = npy_from_bytes(members[meta["file"]], where)
        features[name] = check_level_array(array, meta, where)
    resized, scale, random = _geometry(manifest, f"{key}.json in {root}/{shard}")
    photo, weights_name = _photo_and_weights(manifest)
    return _Source(features, _load_input(manifest), resized, scale, random, key,
                   Path(f"fpn_show_{key.replace('/', '_')}"), photo=photo,
                   weights_name=weights_name, manifest=manifest)  # fmt: skip


def _resolve(target: str | None, levels: list[str], weights: str, device: str,
             key: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
             level_named: bool = True) -> _Source:  # fmt: skip
    """What to draw. ``level_named``: the one level in ``levels`` was asked for (``--level``),
    not a default: a ``.npy`` whose name is no level's then holds that level."""
    if key is not None:
        if target is None:
            raise OptionError(
                "--key needs TARGET: the output folder (or URL) of a --format wds run"
            )
        from ..io.catalog import is_sharded

        if not is_sharded(target):  # an index found nothing there: not "no image with key"
            folder = Path(target).expanduser()
            if not folder.is_dir():
                raise FileNotFoundError(f"no such folder: {target}")
            image = folder / key
            hint = (f": show that image with fpncli show {shlex.quote(str(image))}"
                    if os.path.lexists(image / MANIFEST) else
                    ": give the image's folder as TARGET, without --key")  # fmt: skip
            raise OptionError(
                f"{key!r}: --key names an image of a --format wds output (tar shards and "
                f"index.parquet); {target} is not one{hint}",
                "--key",
            )
        return _from_shard(target, key, levels, level_named or len(levels) > 1)
    if target is None:
        folder, notes = _latest()
        source = _from_folder(folder, levels, named=level_named or len(levels) > 1)
        source.notes += notes
        return source
    path = Path(target).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no such folder, .npy or image: {target}")
    if path.is_dir():
        return _from_folder(path, levels, named=level_named or len(levels) > 1)
    if path.suffix == ".npy":
        level = path.stem if path.stem in STRIDES else levels[0]
        from ..io.extraction import read_npy

        array = read_npy(path)
        if array.ndim < 2 or array.size == 0:
            raise ValueError(f"{path}: holds a {array.shape} array, not a feature map")
        if array.ndim == 4 and array.shape[0] != 1:  # said of the file, not of "a batch"
            raise ValueError(
                f"{path}: holds a batch of {array.shape[0]} maps {array.shape}, not one image's "
                "(1, C, H, W): save one of them to show it"
            )
        # (even one that is not a file: said to be unreadable, not passed over)
        if os.path.lexists(path.parent / MANIFEST) and path.stem in STRIDES:
            # --level all asks for the levels; else the .npy's own level is read
            source = _from_folder(
                path.parent, levels if len(levels) > 1 else [level], asked=len(levels) > 1
            )
            source.features[level] = array
            return source
        if path.stem in STRIDES:
            return _Source({level: array}, None, None, None, False, path.stem, path.parent / "show")
        # loose.npy beside a.npy: a picture each, named after the file
        source = _Source({level: array}, None, None, None, False, path.stem,
                         path.parent / f"show_{path.stem}",
                         level_known=level_named and len(levels) == 1)  # fmt: skip
        if not source.level_known:
            source.notes.append(
                f"note: the level of {path.name} is unknown (its name is not a level's, as "
                "p4.npy): drawn without a stride; give --level to name it"
            )
        return source
    _check_image(path, max_pixels)  # before any weights are loaded or downloaded
    return _from_image(path, weights, device, max_pixels)


def _check_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Refuse a TARGET that is not an image Pillow can open (a list, a text file...), a FIFO
    (never waited for) and a decompression bomb, as ``extract`` does (``preprocess.open_image``)."""
    from PIL import Image, UnidentifiedImageError

    from ..io.inputs import IMAGE_EXTENSIONS
    from ..io.preprocess import open_image

    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise ValueError(
            f"{path} is not an image, an output folder or a p*.npy file; "
            "to extract a list of files, use fpncli extract --from-list"
        )
    try:
        with open_image(path, max_pixels):
            pass
    except Image.DecompressionBombError:
        raise ValueError(f"{path}: refused as a decompression bomb") from None
    except UnidentifiedImageError:  # its text names an open file object, not the path
        raise ValueError(f"{path} is not an image Pillow can read") from None
    except OSError as e:
        raise ValueError(f"{path} is not an image Pillow can read ({e})") from None


def _level_map(source: _Source, name: str, reduce: str, channel: int) -> np.ndarray:
    feature = source.features[name]
    if reduce == "channel" and feature.ndim in (3, 4) and not channel < feature.shape[-3]:
        raise OptionError(f"channel {channel} out of range: this map has {feature.shape[-3]}",
                          "--channel")  # fmt: skip
    reduced = reduce_channels(feature, reduce, channel)
    if source.resized is None:
        return reduced
    valid_h, valid_w = valid_size(*source.resized, STRIDES[name])
    return reduced[:valid_h, :valid_w]


def _panels(source: _Source, level: str, *, reduce: str, channel: int,
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


def _render(source: _Source, level: str, *, reduce: str, channel: int, cmap: str,
            overlay: bool, clip: tuple[float, float],
            fixed: dict | None = None) -> np.ndarray:  # fmt: skip
    panels = _panels(source, level, reduce=reduce, channel=channel, clip=clip, fixed=fixed)
    names = [p["name"] for p in panels]
    maps = {p["name"]: p["map"] for p in panels}
    ranges = {p["name"]: p["range"] for p in panels}
    how = f"channel {channel}" if reduce == "channel" else reduce
    note = RANDOM_NOTE if source.random else ""
    if overlay:
        _check_overlay(source)
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


def _check_overlay(source: _Source) -> None:
    if source.image_rgb is None or source.scale is None:
        raise ValueError(
            "--overlay needs the extracted photo: it is gone, replaced since, or not recorded "
            "(a .npy outside its extraction folder)"
        )


def _channels_picture(source: _Source, level: str, top: int | None,
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


def _run_ranges(target: str | None, scale: str, reduce: str, channel: int, say,
                key: str | None = None):  # fmt: skip
    """The run's colour ranges for ``--scale level|shared`` (None for ``image``, and for a
    target that is no extraction, which ``_resolve`` refuses); with ``key``, over the images of
    the ``--format wds`` output ``target``. An image whose manifest cannot be read or is
    malformed (``check_manifest``: show and report refuse it) is left out, and counted in the
    note ``say`` is given. An ``OptionError`` (``--scale``) for an image or a ``.npy`` outside
    an extraction folder: they belong to no run."""
    from ..io.catalog import open_extractions
    from ..io.manifest import check_manifest
    from .scale import SCALES, extraction_root, run_ranges

    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}: use one of {', '.join(SCALES)}")
    if scale == "image":
        return None
    if key is not None and target is not None:  # (no target: _resolve says --key needs one)
        found, where = open_extractions(target), f"in {target}"
    else:
        path = _latest()[0] if target is None else Path(target).expanduser()
        folder = path if path.is_dir() else path.parent
        manifest = load_manifest(folder)  # (one that cannot be read says why)
        if manifest is None:
            if not path.is_file():  # no such target, a folder holding no extraction (a batch
                return None  # output, an empty one): _resolve refuses it, saying which
            raise OptionError(
                f"--scale {scale} takes its range from the run's manifests: TARGET must be an "
                "extraction folder (or a .npy in one), not an image extracted on the fly",
                "--scale",
            )
        check_manifest(manifest, f"{folder}/{MANIFEST}")  # the image drawn: refused, not left out
        root = extraction_root(folder)
        found, where = open_extractions(root), f"under {root}"
    tally: dict[str, int] = {}
    # one manifest at a time, each read once: a large folder's are never all held
    ranges = run_ranges(_sound_manifests(found, tally), scale, reduce=reduce, channel=channel)
    say(f"colour scale {scale}: ranges from the {_ranges_from(tally)} {where}")
    return ranges


def _sound_manifests(found, tally: dict[str, int]):
    """The checked manifest of each image of ``found`` (an ``Extractions``: its ``manifest``
    runs ``check_manifest``), one at a time, counted in ``tally["used"]``; one that cannot be
    read, is gone or is malformed (ValueError, OSError) is left out, counted in
    ``tally["left out"]``."""
    tally.update({"used": 0, "left out": 0})
    for name in found.keys():
        try:
            manifest = found.manifest(name)
        except (ValueError, OSError):
            tally["left out"] += 1
            continue
        tally["used"] += 1
        yield manifest


def _ranges_from(tally: dict[str, int]) -> str:
    """``N image(s)``, and how many were left out and why, for the ``--scale`` note."""
    left_out = tally["left out"]
    why = f" ({left_out} left out: malformed or unreadable manifests)" if left_out else ""
    return f"{tally['used']} image(s){why}"


def _display_available() -> bool:
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _window_options(source: _Source, *, cmap: str, overlay: bool, reduce: str,
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


def _level_asked(target: str | None, level: str | None) -> tuple[str, bool]:
    """The level to draw (``level`` None: p2, or the level a ``.npy`` target is named after)
    and whether it was asked for by name (not a default, not ``all``)."""
    if level is not None:
        return level, level != "all"
    stem = Path(target).stem if target else ""
    return (stem if target and target.endswith(".npy") and stem in STRIDES else "p2"), False


def level_figure_for(target: str | None, *, level: str | None = None, channel: int = 0,
                     reduce: str = "channel", cmap: str = "viridis", overlay: bool = False,
                     clip=DEFAULT_CLIP, weights: str = "faster_rcnn_R_50_FPN_3x",
                     device: str = "auto", figure=None,
                     max_pixels: int = DEFAULT_MAX_PIXELS):  # fmt: skip
    """The figure ``show`` opens in a window, drawn into ``figure`` (or a new one): for
    notebooks, and to check the window's contents without a display. ``level`` None: as
    ``show``'s, p2 or the level a ``.npy`` target is named after."""
    from .window import level_figure

    level, level_named = _level_asked(target, level)
    levels = list(LEVELS) if level == "all" else [level]
    source = _resolve(target, levels, weights, device, max_pixels=max_pixels,
                      level_named=level_named)  # fmt: skip
    if overlay:
        _check_overlay(source)
    panels = _panels(source, level, reduce=reduce, channel=channel, clip=parse_clip(clip))
    options = _window_options(source, cmap=cmap, overlay=overlay, reduce=reduce, channel=channel)
    return level_figure(panels, figure=figure, **options)


def _open_window(picture: np.ndarray, title: str) -> bool:
    """Show ``picture`` in a matplotlib window; False when only a non-interactive backend works."""
    import matplotlib
    import matplotlib.pyplot as plt

    if matplotlib.get_backend().lower() in ("agg", "pdf", "svg", "ps", "cairo", "template"):
        return False
    height, width = picture.shape[:2]
    fig = plt.figure(title, figsize=(min(16, width / 100), min(10, height / 100)))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(picture)
    ax.set_axis_off()
    plt.show()
    return True


def show(
    target: str | None,
    *,
    level: str | None = None,
    channel: int = 0,
    reduce: str = "channel",
    cmap: str = "viridis",
    overlay: bool = False,
    clip: str | tuple[float, float] | None = DEFAULT_CLIP,
    save: str | None = None,
    display: bool | None = None,
    weights: str = "faster_rcnn_R_50_FPN_3x",
    device: str = "auto",
    notify: Callable[[str], None] | None = None,
    top: int | None = None,
    channels: str | list[int] | None = None,
    scale: str = "image",
    key: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ShowResult:
    """Draw one level (or ``all``) of an extraction; open a window or write a PNG.

    ``level`` None means p2, or the level of a ``.npy`` target. With no display (or with
    ``save``) the picture is written atomically as a PNG and ``ShowResult.saved`` says where
    (by default in the extraction's folder, named for what is drawn: ``viz.names``).
    Messages are collected in ``ShowResult.messages`` and also passed to ``notify`` as soon as
    they are known (before a window blocks). ``top`` K (or ``channels``, a list or "0,5,17")
    draws a grid of that level's K channels with the largest mean (or the listed ones) instead.
    ``scale`` ``level`` or ``shared`` colours with the run's ranges (``viz.scale``), not the map's.
    With ``key``, ``target`` is the output of a ``--format wds`` run and the image with that
    sample key is shown. An image TARGET with more than ``max_pixels`` is refused (as
    ``extract --max-pixels``).

    Raises:
        ValueError: an unknown level, a level that was not saved, a bad option (an
            ``OptionError`` where the target rules out an option's value, as ``--channel``).
        FileNotFoundError: no such target, or no complete extraction to show.
    """
    level, level_named = _level_asked(target, level)
    if level != "all" and level not in STRIDES:
        raise ValueError(
            f"unknown level {level!r}: use one of {', '.join(LEVELS)}, all, or a bottom-up stage "
            f"({', '.join(STAGE_STRIDES)})"
        )
    if top is not None or channels is not None:
        if top is not None and channels is not None:
            raise OptionError("--top and --channels both given: choose one")
        if level == "all" or overlay:
            raise OptionError("--top/--channels draw one level, without --overlay: pick --level")
    pending: list[str] = []  # checked before an image TARGET would be extracted
    fixed = _run_ranges(target, scale, reduce, channel, pending.append, key)
    levels = list(LEVELS) if level == "all" else [level]
    source = _resolve(target, levels, weights, device, key, max_pixels, level_named)
    named_level = level if source.level_known or level == "all" else None
    if level != "all" and level not in source.features:
        raise OptionError(f"this target holds {', '.join(source.features)}, not {level}",
                          "--level")  # fmt: skip
    result = ShowResult()
    if top is not None or channels is not None:
        picture, picked = _channels_picture(source, level, top, channels, cmap, parse_clip(clip))
        if top is not None and len(picked) < top:  # drawn as --top with the channels it has
            pending.append(f"note: {level} has {len(picked)} channels: --top {top} draws all "
                           f"{len(picked)}, the same as --top {len(picked)}")  # fmt: skip
            top = len(picked)
        suffix = picture_suffix(named_level, top=top,
                                channels=None if top is not None else picked)  # fmt: skip
    else:
        picture = _render(source, level, reduce=reduce, channel=channel, cmap=cmap,
                          overlay=overlay, clip=parse_clip(clip), fixed=fixed)  # fmt: skip
        suffix = picture_suffix(named_level, reduce=reduce, channel=channel, overlay=overlay)

    def say(message: str) -> None:
        result.messages.append(message)
        if notify is not None:
            notify(message)

    for message in pending:
        say(message)
    for note in source.notes:
        say(note)
    if level in ("p6", "all"):
        say(P6_NOTE)
    if source.random:
        say("note: these maps come from random, untrained weights")
    wants_window = _display_available() if display is None else display
    if save is None and not wants_window:
        say("no display (no DISPLAY or WAYLAND_DISPLAY): writing a PNG instead")
    if save is None and wants_window:
        title = f"fpncli {source.name} {level}"
        if top is None and channels is None:  # the values themselves, not a picture of them
            panels = _panels(source, level, reduce=reduce, channel=channel,
                             clip=parse_clip(clip), fixed=fixed)  # fmt: skip
            options = _window_options(source, cmap=cmap, overlay=overlay, reduce=reduce,
                                      channel=channel)  # fmt: skip
            result.displayed = open_window(title, panels, **options)
        else:
            result.displayed = _open_window(picture, title)
        if result.displayed:
            return result
        say("no interactive matplotlib backend: writing a PNG instead")
    out = Path(save) if save is not None else Path(f"{source.default_prefix}{suffix}.png")
    if not out.parent.is_dir():  # create the file only, never folders the user did not ask for
        raise FileNotFoundError(
            f"cannot save {out}: the folder {out.parent} does not exist (create it first)"
        )
    if out.is_dir():  # an image's output folder (photos x.png and x/show_p2.png.png): kept
        raise ValueError(
            f"cannot save {out}: a folder of that name is there (another image's output "
            "folder?): pass --save FILE.png to write the picture elsewhere"
        )
    atomic_write_bytes(out, encode_png(picture))
    result.saved = out
    say(f"saved {out}")
    log.info("show: %s", json.dumps({"target": target, "level": level, "saved": str(out)}))
    return result
