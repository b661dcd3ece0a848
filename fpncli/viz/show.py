"""The library side of ``fpncli show``: check its options against the TARGET (the level asked
for and the one drawn, ``--scale``'s run ranges), have the TARGET resolved (``viz.targets``) and
drawn (``viz.show_draw``), then open a window or save a PNG.

TARGET is an output folder (with ``manifest.json``), one ``p*.npy`` file (its folder's manifest
is used when there is one), an image (extracted on the fly, nothing written but the picture), or
None for the most recent extraction.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io.atomic import atomic_write_bytes, folder_not_writable, not_writable
from ..io.guard import OptionError
from ..io.manifest import MANIFEST, load_manifest
from ..io.markers import SHOW_PICTURE_TEXT
from ..io.messages import quote_name
from ..io.pillow_open import DEFAULT_MAX_PIXELS
from ..model.names import LEVELS, STAGE_STRIDES
from ..model.names import OUTPUT_STRIDES as STRIDES  # an extraction may hold bottom-up stages too
from ..weights.hub import LoggedProgress
from .maps import DEFAULT_CLIP, parse_clip
from .names import picture_suffix
from .png import encode_png
from .show_draw import channels_picture, check_overlay, level_panels, render, window_options
from .sources import Source
from .targets import latest_target, resolve_source
from .window import open_window

__all__ = ["ShowResult", "show", "level_figure_for", "P6_NOTE", "SAVE_ELSEWHERE", "save_picture"]

log = logging.getLogger(__name__)
#: what to do where show's picture cannot be written in its folder
SAVE_ELSEWHERE = "pass --save FILE.png in a folder you can write"


def save_picture(out: Path, picture) -> None:
    """Write one of show's pictures (its own or ``--receptive-field``'s) to ``out``, marked as
    show's (``SHOW_PICTURE_TEXT``: never read back as a photo); a folder that cannot be written
    in is one line naming it and what to do."""
    try:
        atomic_write_bytes(out, encode_png(picture, text=SHOW_PICTURE_TEXT))
    except OSError as e:
        if not not_writable(e):
            raise
        raise folder_not_writable(out.parent, f"save {quote_name(out.name)}",
                                  SAVE_ELSEWHERE) from None  # fmt: skip


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


def _run_ranges(target: str, scale: str, reduce: str, channel: int, say,
                key: str | None = None):  # fmt: skip
    """The run's colour ranges for ``--scale level|shared`` (None for ``image``, and for a
    target that is no extraction, which ``resolve_source`` refuses); with ``key``, over the
    images of the ``--format wds`` output ``target``. An image whose manifest cannot be read or is
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
    if key is not None:
        found, where = open_extractions(target), f"in {quote_name(target)}"
    else:
        path = Path(target).expanduser()
        folder = path if path.is_dir() else path.parent
        manifest = load_manifest(folder)  # (one that cannot be read says why)
        if manifest is None:
            if not path.is_file():  # no such target, a folder holding no extraction (a batch
                return None  # output, an empty one): resolve_source refuses it, saying which
            raise OptionError(
                f"--scale {scale} takes its range from the run's manifests: TARGET must be an "
                "extraction folder (or a .npy in one), not an image extracted on the fly",
                "--scale",
            )
        check_manifest(manifest, f"{folder}/{MANIFEST}")  # the image drawn: refused, not left out
        root = extraction_root(folder)
        found, where = open_extractions(root), f"under {quote_name(str(root))}"
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


def _level_asked(target: str | None, level: str | None) -> tuple[str, bool]:
    """The level to draw (``level`` None: p2, or the level a ``.npy`` target is named after;
    an extraction without p2 gives its first level, ``_level_drawn``) and whether it was asked
    for by name (not a default, not ``all``)."""
    if level is not None:
        return level, level != "all"
    stem = Path(target).stem if target else ""
    return (stem if target and target.endswith(".npy") and stem in STRIDES else "p2"), False


def _level_drawn(source: Source, level: str, level_named: bool) -> str:
    """``level``, or, where it is the default (p2) and the extraction saved none, the level
    ``resolve_source`` read in its place (``sources.first_level``)."""
    if level_named or level == "all" or level in source.features:
        return level
    return next(iter(source.features))


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
    source = resolve_source(target, levels, weights, device, max_pixels=max_pixels,
                      level_named=level_named)  # fmt: skip
    level = _level_drawn(source, level, level_named)
    if overlay:
        check_overlay(source)
    panels = level_panels(source, level, reduce=reduce, channel=channel, clip=parse_clip(clip))
    options = window_options(source, cmap=cmap, overlay=overlay, reduce=reduce, channel=channel)
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
    download_progress=LoggedProgress,
) -> ShowResult:
    """Draw one level (or ``all``) of an extraction; open a window or write a PNG.

    ``level`` None means p2 (or, in an extraction without p2, the first level it saved: p2..p6,
    then the bottom-up stages), or the level of a ``.npy`` target. With no display (or with
    ``save``) the picture is written atomically as a PNG and ``ShowResult.saved`` says where
    (by default in the extraction's folder, named for what is drawn: ``viz.names``).
    Messages are collected in ``ShowResult.messages`` and also passed to ``notify`` as soon as
    they are known (before a window blocks). ``top`` K (or ``channels``, a list or "0,5,17")
    draws a grid of that level's K channels with the largest mean (or the listed ones) instead.
    ``scale`` ``level`` or ``shared`` colours with the run's ranges (``viz.scale``), not the map's.
    With ``key``, ``target`` is the output of a ``--format wds`` run and the image with that
    sample key is shown; ``target`` None is the latest extraction, an image's folder or such an
    output (``targets.latest_target``: without ``key``, a ValueError naming it). An image
    TARGET with more than ``max_pixels`` is refused (as ``extract --max-pixels``); its weights'
    download shows its progress with ``download_progress`` (``load_backbone``'s).

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
    latest_notes: list[str] = []
    if target is None:  # the latest extraction, shown as that TARGET is (a wds output: by key)
        target, latest_notes = latest_target(key)
    pending: list[str] = []  # checked before an image TARGET would be extracted
    fixed = _run_ranges(target, scale, reduce, channel, pending.append, key)
    levels = list(LEVELS) if level == "all" else [level]
    source = resolve_source(target, levels, weights, device, key, max_pixels, level_named,
                            download_progress)  # fmt: skip
    source.notes[:0] = latest_notes
    level = _level_drawn(source, level, level_named)
    named_level = level if source.level_known or level == "all" else None
    if level != "all" and level not in source.features:
        raise OptionError(f"this target holds {', '.join(source.features)}, not {level}",
                          "--level")  # fmt: skip
    result = ShowResult()
    if top is not None or channels is not None:
        picture, picked = channels_picture(source, level, top, channels, cmap, parse_clip(clip))
        if top is not None and len(picked) < top:  # drawn as --top with the channels it has
            pending.append(f"note: {level} has {len(picked)} channels: --top {top} draws all "
                           f"{len(picked)}, the same as --top {len(picked)}")  # fmt: skip
            top = len(picked)
        suffix = picture_suffix(named_level, top=top,
                                channels=None if top is not None else picked)  # fmt: skip
    else:
        picture = render(source, level, reduce=reduce, channel=channel, cmap=cmap,
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
    if level == "p6" or (level == "all" and "p6" in source.features):  # only where P6 is drawn
        say(P6_NOTE)
    if source.random:
        say("note: these maps come from random, untrained weights")
    wants_window = _display_available() if display is None else display
    if save is None and not wants_window:
        say("no display (no DISPLAY or WAYLAND_DISPLAY): writing a PNG instead")
    if save is None and wants_window:
        title = f"fpncli {source.name} {level}"
        if top is None and channels is None:  # the values themselves, not a picture of them
            panels = level_panels(source, level, reduce=reduce, channel=channel,
                             clip=parse_clip(clip), fixed=fixed)  # fmt: skip
            options = window_options(source, cmap=cmap, overlay=overlay, reduce=reduce,
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
    save_picture(out, picture)
    result.saved = out
    say(f"saved {quote_name(str(out))}")  # as extract says "wrote": a non-UTF-8 byte as \udcNN
    log.info("show: %s", json.dumps({"target": target, "level": level, "saved": str(out)}))
    return result
