"""``fpncli show``: draw a level of an extraction (the latest by default)."""

from __future__ import annotations

import click

from .common import CLIP_HELP, DEFAULT_WEIGHTS, _clip_callback, _friendly


@click.command()
@click.argument("target", required=False)
@click.option("--level", default=None, help="p2..p6 or all (default p2, or a .npy TARGET's level).")
@click.option("--channel", type=int, default=0, show_default=True)
@click.option(
    "--reduce",
    type=click.Choice(["channel", "mean", "max", "l2", "pca"]),
    default="channel",
    show_default=True,
)
@click.option("--cmap", default="viridis", show_default=True)
@click.option("--clip", default="1,99", show_default=True, callback=_clip_callback, help=CLIP_HELP)
@click.option("--overlay", is_flag=True, help="Lay the heatmap over the original photo.")
@click.option("--save", type=click.Path(dir_okay=False), default=None, help="Write a PNG here.")
@click.option(
    "--weights",
    default=DEFAULT_WEIGHTS,
    show_default=True,
    help="For an image TARGET, extracted on the fly.",
)
@click.option("--device", default="auto", show_default=True)
@click.option("--top", type=int, default=None,
              help="A grid of the K channels with the largest mean activation.")  # fmt: skip
@click.option("--channels", default=None, help="A grid of these channels, e.g. 0,5,17.")
@_friendly
def show(target, level, channel, reduce, cmap, clip, overlay, save, weights, device, top,
         channels) -> None:  # fmt: skip
    """Show a level of an extraction (TARGET: folder, .npy or image; default: the latest)."""
    from ..viz.show import show as show_target

    show_target(
        target, level=level.lower() if level else None, channel=channel, reduce=reduce,
        cmap=cmap, clip=clip, overlay=overlay, save=save, weights=weights, device=device,
        notify=click.echo, top=top, channels=channels,
    )  # fmt: skip
