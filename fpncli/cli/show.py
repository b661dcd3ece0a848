"""``fpncli show``: draw a level of an extraction (the latest by default)."""

from __future__ import annotations

from pathlib import Path

import click

from .common import (
    CLIP_HELP,
    DEFAULT_WEIGHTS,
    OUTPUT_NAMES,
    _check_weights,
    _clip_callback,
    _cmap_callback,
    _file_target,
    _friendly,
    _not_empty,
    verbose_option,
)


def _level_callback(ctx, param, value: str | None) -> str | None:
    if value is None:
        return None
    level = value.strip().lower()
    names = [v.strip() for v in level.split(",")]  # a list: --receptive-field only
    if level != "all" and any(n not in OUTPUT_NAMES for n in names):
        raise click.BadParameter(
            f"unknown level {value!r}: use p2..p6, all, or a bottom-up stage (stem, res2..res5)"
        )
    return level


def _save_target(ctx, param, value: str | None) -> str | None:
    """``--save``: a new name or a picture show drew before (``markers.drawn_by_show``),
    through a symlink to its target, not one of fpncli's outputs. A PNG is written, so the name
    must end in .png, and no other file is replaced: a photo (``photo.jpg``, or the
    ``chelsea.png`` being drawn), a ``loose.npy`` was overwritten with PNG bytes."""
    if value is None:
        return None
    from ..io.markers import drawn_by_show

    target = _file_target(value)  # (an output of fpncli's, a folder, a FIFO: said first)
    if Path(value).suffix.lower() != ".png":
        raise click.BadParameter(f"{value}: the picture is a PNG; name it .png")
    if target.exists() and not drawn_by_show(target):
        raise click.BadParameter(
            f"{value} is a file fpncli show did not draw: writing there would replace it; give "
            "another name (or remove it first)"
        )
    return str(target)


def _is_photo(target: str | None, key: str | None) -> bool:
    """Whether show runs the network on TARGET (an image, or a name resolve_source refuses),
    rather than reading saved maps (the latest extraction, a folder, a .npy, a wds key)."""
    if target is None or key is not None:
        return False
    path = Path(target).expanduser()
    try:
        return not path.is_dir() and path.suffix != ".npy"  # (as resolve_source tells them)
    except OSError:  # a name over 255 bytes: resolve_source says so
        return True


def _check_options_used(target: str | None, key: str | None, reduce: str, top: int | None,
                        channels: str | None, receptive_field: bool) -> None:  # fmt: skip
    """Refuse an option given on the command line that would change nothing (taken silently,
    it reads as if it did), as extract does: ``--channel`` but with ``--reduce channel``'s one
    map, ``--reduce`` with a grid (``--top``/``--channels``), and ``--weights``, ``--device`` or
    ``--max-pixels`` where no network runs (saved maps are read). ``--receptive-field`` reruns
    the network on an extraction's photo, with its recorded weights: there only ``--weights``
    is for an image TARGET."""
    ctx = click.get_current_context()
    grid = "--top" if top is not None else "--channels" if channels is not None else None
    photo = _is_photo(target, key)
    read = "an extraction's saved maps are read, not computed"
    if key is not None:  # --key names an image, but of saved maps: not an image TARGET
        read = "--key names an image of a saved extraction: its saved maps are read, not computed"
    if receptive_field:
        read = "--receptive-field reruns an extraction with the weights it was made with"
    unused = [
        ("channel", reduce != "channel", "--channel is an option of --reduce channel (--reduce "
         f"{reduce} draws from every channel)"),
        ("channel", grid, f"--channel is an option of --reduce channel, not of {grid} (a grid "
         "of the channels it names)"),
        ("reduce", grid, f"--reduce is not an option of {grid}: its grid draws each channel "
         "as it is"),
        ("weights", not photo, f"--weights is an option of an image TARGET ({read})"),
        ("device", not photo and not receptive_field,
         f"--device is an option of an image TARGET ({read})"),
        ("max_pixels", not photo and not receptive_field,
         f"--max-pixels is an option of an image TARGET ({read})"),
    ]  # fmt: skip
    for name, ignored, message in unused:
        if ignored and ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE:
            if name in _NETWORK_OPTIONS and _reads_nothing(target, key):
                continue  # (resolve_source says what is wrong with TARGET instead)
            raise click.UsageError(message)


#: show's options of the network run on an image TARGET
_NETWORK_OPTIONS = ("weights", "device", "max_pixels")


def _reads_nothing(target: str | None, key: str | None) -> bool:
    """Whether TARGET, a folder or .npy, holds no saved maps (a folder of photos, a name that is
    not there), no TARGET finds no latest extraction (none recorded, all gone, a damaged
    record), or ``--key`` names no image of a wds output (no TARGET where the latest
    extraction is no wds output, one that is not a wds output, or a local one whose index has
    no such image or cannot be read): refusing --weights there because "saved maps are read"
    would mislead, and the user would learn the real problem only on the next try. A URL's
    index is not read for this (a key it lacks is said on the next try): no option's refusal
    waits on the network."""
    if key is not None:
        from ..io.catalog import is_sharded

        if target is None:  # the latest extraction, where it is a wds output: as that TARGET
            target = _latest_wds(key)
        if target is None or not is_sharded(target):
            return True
        return "://" not in target and not _holds_key(target, key)
    if target is None:  # the latest, if one is found (else resolve_source says why)
        from ..viz.targets import latest

        try:
            latest()
        except (FileNotFoundError, ValueError):  # (a damaged record too)
            return True
        return False
    from ..viz.targets import holds_no_maps

    return holds_no_maps(target)


def _latest_wds(key: str) -> str | None:
    """The latest extraction's output where it is a wds output, whose image ``key`` then
    names (``targets.latest_target``); None where it is none (resolve_source says so)."""
    from ..viz.targets import latest_target

    try:
        return latest_target(key)[0]
    except (OSError, ValueError):  # (--key needs TARGET: the latest is an image's folder)
        return None


def _holds_key(target: str, key: str) -> bool:
    """Whether the local wds output ``target`` has an image with ``key`` (its index read, no
    shard); False where the index cannot be read (``resolve_source`` says why)."""
    from ..io.shard_index import find_shard
    from ..io.shards import open_root

    try:
        fs, root = open_root(target)
        find_shard(fs, root, key, warn=False)  # (its warnings: said once, when it is read)
    except (OSError, ValueError):  # no such key, one that failed, no pyarrow, a damaged index
        return False
    return True


@click.command()
@click.argument(
    "target",
    required=False,
    callback=_not_empty("a folder, .npy or image, or leave TARGET out for the latest extraction"),
)
@click.option(
    "--level",
    default=None,
    callback=_level_callback,
    help="p2..p6, stem, res2..res5 or all (default p2, else the first level saved, or a .npy "
    "TARGET's level).",
)
@click.option(
    "--channel",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Channel to draw (with --reduce channel).",
)
@click.option(
    "--reduce",
    type=click.Choice(["channel", "mean", "max", "l2", "pca"]),
    default="channel",
    show_default=True,
    help="How to turn 256 channels into a map (pca: signed to correlate with mean).",
)
@click.option(
    "--cmap", default="viridis", show_default=True, callback=_cmap_callback, help="Colormap."
)
@click.option("--clip", default="1,99", show_default=True, callback=_clip_callback, help=CLIP_HELP)
@click.option("--overlay", is_flag=True, help="Lay the heatmap over the original photo.")
@click.option(
    "--save",
    type=click.Path(dir_okay=False),
    default=None,
    callback=_save_target,
    help="Write a PNG here instead of opening a window: a new FILE.png, or a picture show "
    "drew (no other file is replaced).",
)
@click.option(
    "--weights",
    default=DEFAULT_WEIGHTS,
    show_default=True,
    help="For an image TARGET, extracted on the fly.",
)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="For an image TARGET (or --receptive-field): auto, cpu, cuda or cuda:N.",
)
@click.option(
    "--top",
    type=click.IntRange(min=1),
    default=None,
    help="A grid of the K channels with the largest mean activation.",
)
@click.option("--channels", default=None, help="A grid of these channels, e.g. 0,5,17.")
@click.option(
    "--receptive-field",
    is_flag=True,
    help="Draw each level's theoretical and effective receptive field of the cell --at.",
)
@click.option("--at", default=None, help="X,Y in the original image's pixels (--receptive-field).")
@click.option(
    "--scale",
    type=click.Choice(["image", "level", "shared"]),
    default="image",
    show_default=True,
    help="Colour range: each map's own, one per level for the run, or one for all.",
)
@click.option("--key", default=None, help="An image of a --format wds output (TARGET), by key.")
@click.option(
    "--max-pixels",
    type=click.IntRange(min=1),
    default=None,
    help="An image TARGET's (or --receptive-field's photo): refuse more pixels than this "
    "(default 89,478,485, as Pillow).",
)
@verbose_option
@_friendly
def show(target, level, channel, reduce, cmap, clip, overlay, save, weights, device, top,
         channels, receptive_field, at, scale, key, max_pixels) -> None:  # fmt: skip
    """Show a level of an extraction (TARGET: folder, .npy or image; default: the latest).

    With a display, a window draws the values themselves (hover for value and position);
    without one, or with --save, a PNG is written and its path printed.
    """
    from ..io.pillow_open import DEFAULT_MAX_PIXELS
    from .download_bar import DownloadBar

    _check_options_used(target, key, reduce, top, channels, receptive_field)
    max_pixels = max_pixels or DEFAULT_MAX_PIXELS
    if receptive_field or at is not None:
        if not (receptive_field and at):
            raise click.UsageError("--receptive-field and --at X,Y go together")
        if key is not None:  # it reruns the network on the photo: a folder's or an image's
            raise click.UsageError(
                "--receptive-field takes an image or an extraction folder, not --key of a shard"
            )
        ctx = click.get_current_context()
        for name in ("top", "channels", "overlay", "scale", "cmap", "clip"):  # it draws none
            if ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT):
                raise click.UsageError(
                    f"--{name} does not apply to --receptive-field (it draws the fields of one "
                    "cell over the photo): leave it out"
                )
        from ..io.messages import quote_name
        from ..run.receptive import draw_receptive_fields
        from ..viz.receptive import field_summary

        levels = None if level in (None, "all") else [v.strip() for v in level.lower().split(",")]
        out, fields = draw_receptive_fields(
            target, at, levels=levels, weights=weights, device=device, reduce=reduce,
            channel=channel, save=save, max_pixels=max_pixels,
            progress=lambda line: click.echo(line, err=True), download_progress=DownloadBar,
        )  # fmt: skip
        for f in fields:  # the picture's photo pixels, then the network's (the resized photo)
            click.echo(field_summary(f, *f.scale))
        click.echo(f"saved {quote_name(str(out))}")
        return
    from ..viz.show import show as show_target

    if level is not None and "," in level:  # a usage error, as the callback's: exit 2
        ctx = click.get_current_context()
        raise click.BadParameter(
            f"{level!r}: one level at a time (a comma list is for --receptive-field): use "
            "p2..p6, all, or a bottom-up stage (stem, res2..res5)",
            ctx=ctx, param=next(p for p in ctx.command.params if p.name == "level"),
        )  # fmt: skip
    _check_weights(weights)
    show_target(
        target, level=level, channel=channel, reduce=reduce, cmap=cmap, clip=clip,
        overlay=overlay, save=save, weights=weights, device=device, notify=click.echo, top=top,
        channels=channels, scale=scale, key=key, max_pixels=max_pixels,
        download_progress=DownloadBar,
    )  # fmt: skip
