"""``fpncli diff A B``: two extractions of the same images compared per image and level."""

from __future__ import annotations

import math
import sys

import click

from .common import _friendly, _not_empty, _out_folder, _parse_levels, verbose_option


@click.command()
@click.argument("a", type=click.Path(file_okay=False), callback=_not_empty(
    "an extraction folder (or URL), or . for this one"))  # fmt: skip
@click.argument("b", type=click.Path(file_okay=False), callback=_not_empty(
    "an extraction folder (or URL), or . for this one"))  # fmt: skip
@click.option("--tol", type=float, default=1e-4, show_default=True,
              help="Largest max|A-B|/max|A| that counts as agreement.")  # fmt: skip
@click.option(
    "--levels",
    default=None,
    callback=lambda ctx, param, value: (
        None if value is None else list(_parse_levels(value))  # "" is refused, as extract's is
    ),
    help="Compare only these levels, each saved in both (default: all in both; those saved on "
    "one side only are named).",
)
@click.option("-o", "--out", "out_dir", default="fpn_diff", show_default=True,
              type=click.Path(file_okay=False), callback=_out_folder,
              help="Where diff.json, diff.csv and KEY/diff.png go.")  # fmt: skip
@click.option("--no-pictures", is_flag=True, help="Only the tables, no |A-B| pictures.")
@verbose_option
@_friendly
def diff(a, b, tol, levels, out_dir, no_pictures) -> None:
    """Compare extraction B against A (the reference); exit 0 only when all agree within --tol.

    Per image and level: max and mean relative difference (|A-B| over |A|) and the cosine
    similarity, on the valid region. Images whose geometry differs, found on one side only, or
    whose outputs cannot be read are reported, not compared (and make the exit code 1); so is a
    picture that cannot be written (its image still compared).
    """
    from ..viz.diff import diff_extractions
    from ..viz.diff_output import check_out_folder
    from ..viz.diff_result import worst_level

    if not tol >= 0:  # also nan, which every comparison would pass
        raise click.BadParameter("must be >= 0", param_hint="'--tol'")
    if no_pictures:  # the tables still go to OUT: refused there before anything is compared
        check_out_folder(out_dir)
    result = diff_extractions(
        a, b, tol=tol, levels=levels,
        out=None if no_pictures else out_dir,
    )  # fmt: skip
    if no_pictures:  # the tables still go to OUT
        from ..viz.diff_output import write_tables

        write_tables(result, out_dir)
    click.echo(f"{'level':<6} {'images':>6} {'max_rel':>10} {'mean_rel':>10} {'min_cos':>10}")
    for row in result.level_table():
        click.echo(f"{row['level']:<6} {row['images']:>6} {row['max_rel']:>10.3g} "
                   f"{row['mean_rel']:>10.3g} {row['min_cosine']:>10.6f}")  # fmt: skip
    for side, names in result.one_side().items():
        click.echo(f"levels saved (as .npy) in {side} only, not compared: {', '.join(names)}",
                   err=True)  # fmt: skip
    for image in result.images:
        if image.note:
            click.echo(f"note: {image.key}: {image.note}", err=True)
        if image.skipped:
            click.echo(f"not compared: {image.key}: {image.skipped}", err=True)
        elif not image.agrees(tol):
            worst = worst_level(image.levels)  # a NaN first: max() named whichever came first
            why = ("(a NaN or an infinity in A or B)" if math.isnan(worst.max_rel)
                   else f"> {tol:g}")  # fmt: skip
            click.echo(f"differs: {image.key}: {worst.level} max_rel {worst.max_rel:.3g} {why}",
                       err=True)  # fmt: skip
        if image.picture_error:
            click.echo(f"no picture: {image.key}: {image.picture_error}", err=True)
    compared = len(result.compared)
    differ = sum(not image.agrees(tol) for image in result.compared)
    if not compared:
        verdict = "none compared"
    elif differ:
        verdict = f"{differ} of the {compared} compared DO NOT agree within tol {tol:g}"
    else:
        verdict = f"all {compared} compared agree within tol {tol:g}"
    not_compared = len(result.images) - compared
    missing = f"; {not_compared} not compared (see above)" if not_compared else ""
    undrawn = sum(bool(image.picture_error) for image in result.images)
    if undrawn:
        missing += f"; {undrawn} picture{'s' * (undrawn != 1)} not written (see above)"
    click.echo(f"{compared} of {len(result.images)} images compared: {verdict}{missing}; tables "
               f"in {out_dir}/diff.csv")  # fmt: skip
    if not result.agree or undrawn:  # a picture asked for and not written fails the run too
        sys.exit(1)
