"""``fpncli extract``'s inputs and output folder: the images found, with notes on what was
left out, and ``-o`` made ready, with a note on folders a renaming left behind."""

from __future__ import annotations

import os
from pathlib import Path

import click

from ..io.messages import quote_name
from .extract_report import (
    _commented_note,
    _hidden_left_out,
    _hidden_note,
    _inside,
    _leftover_note,
    _once,
    _skipped_note,
)


def find_inputs(inputs, from_list, out: Path, url: bool) -> tuple[list, list]:
    """The run's (image, root) pairs and the folders that cannot be read, once the notes on
    what was passed over are printed; a ``ClickException`` when no image is found."""
    from ..run.pipeline import discover_inputs

    passed_over: set[Path] = set()
    unreadable: list = []
    repeated: list = []
    hidden: list = []
    commented: list = []
    pairs = discover_inputs(inputs, from_list, exclude=None if url else out, skipped=passed_over,
                            unreadable=unreadable, repeated=repeated, hidden=hidden,
                            commented=commented)  # fmt: skip
    unreadable, repeated = _once(unreadable), _once(repeated)
    if commented:  # "#1.jpg" (ls > list.txt): a comment, as any # line
        click.echo(_commented_note(getattr(from_list, "name", "the list"), commented), err=True)
    files_inside = _inside(inputs, passed_over)
    if passed_over:
        click.echo(_skipped_note(passed_over, files_inside), err=True)
    for folder, reason in unreadable:  # failures of the run; with no image, of no run
        click.echo(f"note: cannot read the folder {quote_name(str(folder))} ({reason}): its "
                   f"images are left out{' (reported as failed)' if pairs else ''}",
                   err=True)  # fmt: skip
    hidden = _hidden_left_out(hidden, pairs)
    if hidden:
        click.echo(_hidden_note(hidden), err=True)
    for folder, read_as in repeated:  # symlinks: a cycle, or the same folder twice
        click.echo(f"note: not following {quote_name(str(folder))}: it leads to the folder "
                   f"{quote_name(str(read_as))}, which the run comes to under that name",
                   err=True)  # fmt: skip
    if not pairs:
        passed_out = {os.path.realpath(r) for r in passed_over}
        inside_out = [raw for raw, root in files_inside.items()
                      if os.path.realpath(root) == os.path.realpath(out)]  # fmt: skip
        if not url and inside_out:  # -o is the folder of the files named
            raise click.ClickException(
                f"{quote_name(inside_out[0])}"
                f"{f' and {len(inside_out) - 1} more' if len(inside_out) > 1 else ''} "
                f"{'lie' if len(inside_out) > 1 else 'lies'} in the output folder "
                f"{quote_name(str(out))}, and outputs are never read back as inputs: give "
                "another -o"
            )
        if not url and os.path.realpath(out) in passed_out:  # -o is the input folder, say
            raise click.ClickException(
                f"no images found in the given inputs outside the output folder "
                f"{quote_name(str(out))} (outputs are never read back as inputs: give another -o)"
            )
        if unreadable:  # the notes above name them
            raise click.ClickException(
                f"no images found in the given inputs; {len(unreadable)} folder(s) in them "
                "cannot be read: give read permission to them, or other inputs"
            )
        raise click.ClickException("no images found in the given inputs")
    return pairs, unreadable


def prepare_output(out: Path, url: bool, out_format: str, jobs) -> bool:
    """Makes and marks the output folder (not an object store's), once it is known to be no
    folder of the user's photos (``_check_not_photos``); True if the run made it."""
    from ..io.markers import check_no_dangling_link, mark_output_root

    made = not url and not out.exists()
    if not url:
        try:
            check_no_dangling_link(out)
        except ValueError as e:
            raise click.ClickException(str(e)) from None
        _check_not_photos(out)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise click.ClickException(f"cannot create output folder {out}: {e.strerror}") from None
        if not os.access(out, os.W_OK):
            raise click.ClickException(f"output folder {out} is not writable")
        try:
            mark_output_root(out)
        except ValueError as e:
            raise click.ClickException(str(e)) from None
        if out_format == "files":  # folders of the run's inputs left by a renaming: said
            from ..run.leftovers import renamed_leftovers

            leftovers = renamed_leftovers(jobs)  # (the whole run's jobs, before --shard)
            if leftovers:
                click.echo(_leftover_note(leftovers), err=True)
    return made


def _check_not_photos(out: Path) -> None:
    """Refuse ``-o`` where it is a folder of photos (``inputs.first_photo``: at its top) that
    is no fpncli output yet (no ``OUTPUT_MARKER``), before it is marked: once marked, a later
    extract would skip its photos as outputs, and show refuse them. A usage error, as diff's
    ``-o`` refuses a folder holding files diff did not write. A new or empty folder, an earlier
    output, or one holding no photo (other files, folders) is taken."""
    from ..io.inputs import first_photo
    from ..io.markers import OUTPUT_MARKER

    if os.path.isfile(out / OUTPUT_MARKER):
        return
    photo = first_photo(out)
    if photo is not None:
        raise click.UsageError(
            f"the output folder {quote_name(str(out))} holds photos ({quote_name(photo.name)}) "
            "and is no fpncli output: marked as one, its photos would be skipped by later runs; "
            "give a new or empty output folder (-o), or move the photos out"
        )
