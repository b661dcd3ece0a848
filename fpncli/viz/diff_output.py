"""The output folder of ``fpncli diff`` and its tables.

Which folders diff may write into (``check_out_folder``, ``check_table_targets``), where each
image's |A - B| picture goes below it (``picture_folders``: never over a table), and the tables
themselves, ``diff.json`` and ``diff.csv`` (``write_tables``, which removes an earlier diff's
pictures not drawn again). The pictures are drawn by ``diff``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import stat
from pathlib import Path, PurePosixPath

from ..io.atomic import TMP_MARK, atomic_write_bytes
from ..io.guard import read_json_file
from ..io.jobs import fitted_name
from ..io.markers import DIFF_MARKER, check_no_dangling_link, linked_folder, make_marked_folder
from ..io.messages import error_text, kind, utf8_text
from .diff_result import DiffResult

__all__ = ["check_out_folder", "check_table_targets", "picture_folders", "write_tables"]

log = logging.getLogger(__name__)

_TABLES = ("diff.json", "diff.csv")  # written into the output folder beside the pictures


def picture_folders(keys: list[str]) -> dict[str, str]:
    """Each key -> the folder of its picture below the diff output folder: the key itself, but
    an image called like a table (``diff.csv``, any case) moves to ``_diff.csv``, with as many
    ``_`` more as it takes to be no other key's folder (beside an image called ``_diff.csv``,
    ``diff.csv``'s goes to ``__diff.csv``); a part of it over 255 bytes is cut short with a
    hash of the whole part (``jobs.fitted_name``). Chosen for all keys at once, in sorted
    order, so a key's folder never depends on the order the images are compared in."""
    tops = {k.partition("/")[0] for k in keys}
    taken = {t.casefold() for t in tops} | set(_TABLES)  # casefold: a case-insensitive disk
    moved = {}
    for top in sorted(t for t in tops if t.casefold() in _TABLES):
        new = f"_{top}"
        while new.casefold() in taken:
            new = f"_{new}"
        taken.add(new.casefold())
        moved[top] = new
    folders = {}
    for k in keys:
        top, sep, rest = k.partition("/")
        folder = f"{moved[top]}{sep}{rest}" if top in moved else k
        # a wds key spells each dot %2E: a 243-byte photo name made a 500-byte folder name
        # (ENAMETOOLONG); each part over NAME_MAX is cut short with a hash, as extract's are
        folders[k] = "/".join(fitted_name(part) for part in folder.split("/"))
    return folders


def check_out_folder(out: str | Path) -> None:
    """Refuse an output folder diff may not write into: one whose tables cannot be written
    (``check_table_targets``), or one that is there, not empty and not diff's: neither marked
    by diff (``DIFF_MARKER``) nor an earlier version's output (``_earlier_output``). Its pictures
    would go among files that are not diff's: a user's own ``KEY/diff.png`` written over, and
    the pictures taken for photos by a later extract of that folder. Called before anything is
    compared, so nothing is written.

    Raises:
        ValueError: one line naming the folder and what to do.
    """
    check_no_dangling_link(Path(out))
    check_table_targets(out)
    try:
        names = os.listdir(out)
    except OSError:  # not there yet (made), or said when it is written (a file, no permission)
        return
    if names and DIFF_MARKER not in names and not _earlier_output(Path(out)):
        raise ValueError(
            f"{out} holds files diff did not write: give a new or empty output folder (-o), "
            "or one diff wrote before"
        )


def _earlier_output(out: Path) -> bool:
    """Whether ``out`` (not marked) is an earlier version's diff output: its ``diff.json`` is
    diff's table, and everything else is ``diff.csv`` or a picture folder holding only
    ``diff.png`` files (any deeper, for keys with a ``/``) or a write's temporary files. A user's
    own ``diff.json`` beside their photos is not."""
    try:
        table = read_json_file(out / _TABLES[0], 1 << 30)
        if not (isinstance(table, dict) and {"a", "b", "tol", "images"} <= table.keys()):
            return False
        for entry in os.scandir(out):
            if entry.name in _TABLES or TMP_MARK in entry.name:
                continue
            if not entry.is_dir(follow_symlinks=False):
                return False
            for _, _, files in os.walk(entry.path):
                if any(f != "diff.png" and TMP_MARK not in f for f in files):
                    return False
    except (OSError, ValueError):
        return False
    return True


def check_table_targets(out: str | Path) -> None:
    """Refuse an output folder whose ``diff.json`` or ``diff.csv`` is there and is not a regular
    file (a folder, such as an extraction of an image ``diff.json.png`` written there; a
    symlink; a FIFO): the tables could not replace it. Called before anything is compared, so
    nothing is written (the pictures were, and then the tables failed on a temporary file's
    rename).

    Raises:
        ValueError: one line naming the path and what to do.
    """
    for name in _TABLES:
        path = Path(out) / name
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            continue
        except NotADirectoryError:  # out is a file: said when the folder is made
            return
        if not stat.S_ISREG(mode):
            raise ValueError(
                f"{path} is {kind(mode)}, not a file: the diff tables cannot be written there; "
                "give another output folder (-o)"
            )


def write_tables(result: DiffResult, out: str | Path) -> None:
    """``OUT/diff.json`` (everything) and ``OUT/diff.csv`` (one row per image and level, and one
    with no level saying why for an image not compared or whose picture was not written, or a
    doubt about the pair: ``ImageDiff.note``). The pictures an earlier diff into ``OUT`` listed
    in its ``diff.json`` and this one did not draw again are removed (``_remove_pictures``).

    ``diff.json`` is strict JSON (RFC 8259): a measure that is not a finite number (NaN where
    A or B holds one, ``max_rel`` infinite where A is zero and B is not) is written as the
    string ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``, which ``float()`` reads back; the CSV
    writes ``nan``, ``inf``."""
    out = Path(out)
    check_table_targets(out)
    make_marked_folder(out, DIFF_MARKER)  # (--no-pictures: the CLI checked check_out_folder)
    earlier = _earlier_pictures(out)  # before its diff.json, which lists them, is replaced
    json_name, csv_name = _TABLES
    data = json.dumps(_strict(result.to_json()), indent=2, allow_nan=False)
    atomic_write_bytes(out / json_name, data.encode())
    atomic_write_bytes(out / csv_name, utf8_text(_csv(result)).encode())
    _remove_pictures(out, earlier - {image.picture for image in result.images})


def _earlier_pictures(out: Path) -> set[str]:
    """The pictures the diff that wrote ``out`` before listed in its ``diff.json`` (paths below
    ``out``); none where there is no such table or it cannot be read."""
    try:
        table = read_json_file(out / _TABLES[0], 1 << 30)
    except (OSError, ValueError):
        return set()
    images = table.get("images") if isinstance(table, dict) else None
    if not isinstance(images, list):
        return set()
    pictures = (image.get("picture") for image in images if isinstance(image, dict))
    return {picture for picture in pictures if isinstance(picture, str)}


def _remove_pictures(out: Path, pictures: set[str]) -> None:
    """Remove the earlier diff's pictures this one did not write again (an image no longer
    compared, or with --no-pictures), so that none is left beside a ``diff.json`` that does not
    list it; and the picture folders that leaves empty. Only what diff writes: a regular file
    ``diff.png`` below ``out``, never through a symlinked folder."""
    for name in sorted(pictures):
        parts = PurePosixPath(name).parts
        if len(parts) < 2 or parts[-1] != "diff.png" or name.startswith("/") or ".." in parts:
            continue  # not a picture path diff writes: a forged table's
        path = out.joinpath(*parts)
        try:
            if linked_folder(path.parent, out) is not None:
                continue  # never removed through a symlinked folder
            if not stat.S_ISREG(os.lstat(path).st_mode):
                continue
            path.unlink()
        except (FileNotFoundError, ValueError):  # ValueError: a forged name no file has (a
            continue  # null byte, a lone surrogate): not a picture diff wrote
        except OSError as e:  # said: a picture left beside tables that no longer list it
            log.warning("earlier diff picture %s not removed: %s", path, error_text(e))
            continue
        for folder in path.parents:  # its picture folders, now empty (a key's, sub/a's)
            if folder == out or not folder.is_relative_to(out):
                break
            try:
                folder.rmdir()
            except OSError:  # not empty: another picture, or files of the user's
                break


def _strict(value):
    """``value`` with every float that JSON cannot hold (NaN, infinities) as a string."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def _csv(result: DiffResult) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["image", "level", "max_rel", "mean_rel", "cosine", "max_abs", "note"])
    for image in result.images:
        if image.note:  # a doubt about the pair, or why none: said as diff.json does
            writer.writerow([image.key, "", "", "", "", "", image.note])
        if image.skipped:
            writer.writerow([image.key, "", "", "", "", "", image.skipped])
        if image.picture_error:  # compared, but its picture is missing: said as diff.json does
            writer.writerow([image.key, "", "", "", "", "", image.picture_error])
        for d in image.levels:
            note = "" if d.max_rel <= result.tol else f"above tol {result.tol:g}"
            writer.writerow([image.key, d.level, f"{d.max_rel:.6g}", f"{d.mean_rel:.6g}",
                             f"{d.cosine:.8f}", f"{d.max_abs:.6g}", note])  # fmt: skip
    return buffer.getvalue()
