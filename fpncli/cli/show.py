"""``fpncli show``: draw a level of an extraction (the latest by default)."""

from __future__ import annotations

import click

from .common import (
    CLIP_HELP,
    DEFAULT_WEIGHTS,
    LEVEL_NAMES,
    _check_weights,
    _clip_callback,
    _cmap_callback,
    _friendly,
    verbose_option,
)


def _level_callback(ctx, param, value: str | None) -> str | None:
    if value is None:
        return None
    level = value.strip().lower()
    if level != "all" and level not in LEVEL_NAMES:
        raise click.BadParameter(f"unknown level {value!r}: use p2..p6 or all")
    return level


@click.command()
@click.argument("target", required=False)
@click.option(
    "--level",
    default=None,
    callback=_level_callback,
    help="p2..p6 or all (default p2, or a .npy TARGET's level).",
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
    help="How to turn 256 channels into a map.",
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
    help="Write a PNG here instead of opening a window.",
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
    help="For an image TARGET: auto, cpu, cuda or cuda:N.",
)
@click.option(
    "--top",
    type=click.IntRange(min=1),
    default=None,
    help="A grid of the K channels with the largest mean activation.",
)
@click.option("--channels", default=None, help="A grid of these channels, e.g. 0,5,17.")
@verbose_option
@_friendly
def show(target, level, channel, reduce, cmap, clip, overlay, save, weights, device, top,
         channels) -> None:  # fmt: skip
    """Show a level of an extraction (TARGET: folder, .npy or image; default: the latest).

    With a display, a window draws the values themselves (hover for value and position);
    without one, or with --save, a PNG is written and its path printed.
    """
    from ..viz.show import show as show_target

    _check_weights(weights)
    show_target(
        target, level=level, channel=channel, reduce=reduce, cmap=cmap, clip=clip,
        overlay=overlay, save=save, weights=weights, device=device, notify=click.echo, top=top,
        channels=channels,
    )  # fmt: skip
