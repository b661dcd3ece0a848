"""``fpncli report OUT``: a static HTML page for a whole extraction."""

from __future__ import annotations

import click

from .common import _friendly, _not_empty, verbose_option


@click.command()
@click.argument("out", type=click.Path(file_okay=False), default="fpn_out", required=False,
                callback=_not_empty("a folder, or . for this one"))  # fmt: skip
@click.option("--page-size", type=click.IntRange(1), default=100, show_default=True,
              help="Images per page.")  # fmt: skip
@click.option("--thumb-height", type=click.IntRange(8, 1024), default=64, show_default=True,
              help="In pixels.")  # fmt: skip
@click.option(
    "--scale",
    type=click.Choice(["image", "level", "shared"]),
    default="image",
    show_default=True,
    help="Thumbnail colours: each map's own range, one per level, or one for all levels.",
)
@click.option("--open", "open_browser", is_flag=True, help="Open the report in a browser.")
@verbose_option
@_friendly
def report(out, page_size, thumb_height, scale, open_browser) -> None:
    """Write OUT/report.html (OUT: default fpn_out): summary, per-level statistics and
    histograms, a paged image grid. Images whose outputs cannot be read are listed there,
    left out of the rest, and make the exit code 1."""
    from ..io.messages import quote_name
    from ..viz.report import write_report

    unreadable: list[tuple[str, str]] = []
    path = write_report(out, page_size=page_size, thumb_height=thumb_height, scale=scale,
                        on_unreadable=lambda key, why: unreadable.append((key, why)))  # fmt: skip
    click.echo(f"wrote {quote_name(str(path))}")
    if open_browser:
        import webbrowser

        if not webbrowser.open(path.resolve().as_uri()):
            click.echo("no browser found: open the file above by hand", err=True)
    if unreadable:  # the report covers the others; the exit code says it is not all
        key, why = unreadable[0]
        more = (
            f" (and {len(unreadable) - 1} more, listed in the report)"
            if len(unreadable) > 1
            else ""
        )
        raise click.ClickException(f"outputs of {key} cannot be read, left out: {why}{more}")
