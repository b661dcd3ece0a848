"""The markers fpncli writes in the folders it makes, and the folders they mark: what fpncli
writes is never read back as input.

- ``OUTPUT_MARKER`` marks every output root (``mark_output_root``), ``REPORT_MARKER`` a report's
  pictures and ``DIFF_MARKER`` a folder diff made for its pictures (``make_marked_folder``);
  discovery never enters a marked folder (``is_marked``, ``marked_root``: the nearest one above).
- ``SHOW_PICTURE_TEXT`` is the PNG text chunk in every picture ``show`` draws; a picture it left
  in the current folder (``fpn_show_NAME_LEVEL.png``) is told by its name and that chunk
  (``is_show_picture``), so that no folder walk reads a file it would not otherwise.
- ``linked_folder`` finds a symlink below the output root, where an image's outputs would be
  written outside it; ``check_no_dangling_link`` refuses an ``-o`` that is a link to nowhere.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from .messages import kind, quote_name

__all__ = [
    "OUTPUT_MARKER",
    "REPORT_MARKER",
    "DIFF_MARKER",
    "SHOW_PICTURE_PREFIX",
    "SHOW_PICTURE_TEXT",
    "drawn_by_show",
    "is_show_picture",
    "mark_output_root",
    "make_marked_folder",
    "check_no_dangling_link",
    "is_marked",
    "marked_root",
    "linked_folder",
]

OUTPUT_MARKER = ".fpncli-output"
REPORT_MARKER = ".fpncli-report"  # in a report's asset folder: a report made it, may clear it
DIFF_MARKER = ".fpncli-diff"  # in a folder diff made for its pictures
#: what fpncli writes is never read back as input: folders holding any of these are passed over
_MARKERS = (OUTPUT_MARKER, REPORT_MARKER, DIFF_MARKER)
#: the name of a picture show draws of a photo (or of a wds key) in the current folder
SHOW_PICTURE_PREFIX = "fpn_show_"
#: the PNG ``tEXt`` chunk (keyword, text) that ``show`` writes right after the header
SHOW_PICTURE_TEXT = ("Software", "fpncli show")
_SHOW_CHUNK = b"tEXt" + "\0".join(SHOW_PICTURE_TEXT).encode("latin-1")
_PNG_HEAD = 8 + 25  # the signature and the IHDR chunk: then show's tEXt chunk (its length first)


def mark_output_root(folder: Path) -> None:
    """Create ``folder`` and its marker file, so later discovery never takes files from it."""
    make_marked_folder(folder, OUTPUT_MARKER)


def make_marked_folder(folder: Path, marker: str) -> None:
    """Create ``folder`` (and its parents) and write ``marker`` in it, so that discovery never
    reads what is written below it as input. Only ``folder`` is marked: the parents made for
    it are the user's, and so is whatever they put beside it later.

    Raises:
        ValueError: something not a file holds the marker's name (a folder, a FIFO, a dangling
            symlink): the folder would look unmarked, and what fpncli writes in it would be read
            back as input by a later extract.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / marker
    if path.is_file():
        return
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        path.write_text("made by fpncli: its files are never read back as inputs\n")
        return
    if stat.S_ISREG(mode):  # another process (a --shard, a torchrun rank) wrote it meanwhile
        return
    raise ValueError(
        f"{quote_name(str(path))} is {kind(mode)}, not the marker file fpncli writes there: "
        "move it away, or give another folder"
    )


def drawn_by_show(path: str | Path) -> bool:
    """Whether ``path`` is a regular file holding a PNG that ``show`` drew (its text chunk
    ``SHOW_PICTURE_TEXT`` right after the header); False for anything else, or a file that
    cannot be read. Reads its first 61 bytes, never waits on a FIFO."""
    from .guard import open_regular  # (guard imports this module)

    try:
        with open_regular(path) as f:
            head = f.read(_PNG_HEAD + 4 + len(_SHOW_CHUNK))
    except (OSError, ValueError):
        return False
    return head[:8] == b"\x89PNG\r\n\x1a\n" and head[_PNG_HEAD + 4 :] == _SHOW_CHUNK


def is_show_picture(path: str | Path) -> bool:
    """Whether ``path`` is a picture ``show`` left in the current folder (``fpn_show_*.png``,
    drawn by show: ``drawn_by_show``), which discovery never takes for a photo. Only such names
    are read: a folder of photos costs nothing more to walk."""
    name = os.path.basename(path)
    return (
        name.startswith(SHOW_PICTURE_PREFIX)
        and name.lower().endswith(".png")
        and drawn_by_show(path)
    )


def check_no_dangling_link(out: Path) -> None:
    """Refuse the output folder ``out`` where it, or the nearest of its parents that is there,
    is a symlink that leads nowhere (to a missing folder, or a loop): making the folder failed
    with "[Errno 17] File exists", naming no link (diff's and extract's ``-o``). The missing
    folder is not made through the link.

    Raises:
        ValueError: one line naming the link and where it leads.
    """
    for path in (out, *out.parents):
        if not os.path.islink(path):
            if os.path.lexists(path):  # there, not a link: making the folder below it is fine
                return
            continue
        try:
            os.stat(path)
            return  # (a link to a folder is written through; to a file: said when made)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise ValueError(
                    f"{path} is a symbolic link that loops (to {os.readlink(path)}): give "
                    "another output folder (-o)"
                ) from None
            if e.errno not in (errno.ENOENT, errno.ENOTDIR):
                return  # (no permission to look: said when the folder is made)
            raise ValueError(
                f"{path} is a symbolic link to a missing folder ({os.readlink(path)}): make that "
                "folder, or give another output folder (-o)"
            ) from None


def is_marked(folder: Path) -> bool:
    """Whether ``folder`` holds a marker of something fpncli wrote (an output root, a report's
    pictures, diff's), which discovery never enters."""
    return any((Path(folder) / marker).is_file() for marker in _MARKERS)


def marked_root(path: Path, stop: Path | None = None, cache: dict | None = None) -> Path | None:
    """The nearest folder at or above ``path`` (resolved) holding an output marker (``is_marked``:
    an output root's, a report's or diff's), or None.

    ``cache`` (folder -> answer) avoids re-checking the same folders for many files. A folder
    that cannot be looked into (a name over 255 bytes: ``Path.is_dir`` raises ENAMETOOLONG) holds
    no marker found; the file is reported when it is read.
    """

    def is_file(path: Path) -> bool:
        try:
            return path.is_file()
        except OSError:
            return False

    cache = {} if cache is None else cache
    folder = Path(os.path.realpath(path))
    try:
        if not folder.is_dir():
            folder = folder.parent
    except OSError:
        folder = folder.parent
    seen = []
    answer = None
    while True:
        if folder in cache:
            answer = cache[folder]
            break
        seen.append(folder)
        if any(is_file(folder / marker) for marker in _MARKERS):
            answer = folder
            break
        if folder.parent == folder:
            break
        folder = folder.parent
    for f in seen:
        cache[f] = answer
    return answer


def linked_folder(folder: Path, root: Path | None = None) -> Path | None:
    """The first symlink on the way from the output root down to ``folder`` (``folder``
    included), found by ``lstat``, never followed; None when there is none.

    The root is the run's ``-o``, ``root``, where ``folder`` is below it by their paths as named;
    else (a library caller) the topmost folder above ``folder`` that holds an output marker.
    Links above the root, or the root itself being one, are the user's choice of -o (one inside
    an earlier run's -o too). Below it, a link (``OUT/sub -> ../victim``) would have an image's
    outputs written, and old ones removed, in a folder that is not the image's own. Without a
    root, only ``folder`` itself is checked. A component not made yet ends the walk: it is made
    a folder.
    """
    folder = Path(os.path.abspath(folder))
    chain = [*reversed(folder.parents), folder]
    start = len(chain) - 1
    top = Path(os.path.abspath(root)) if root is not None else None
    if top is not None and top in chain[:-1]:
        start = chain.index(top) + 1
    else:
        for i, above in enumerate(chain[:-1]):
            try:
                if stat.S_ISREG(os.stat(above / OUTPUT_MARKER).st_mode):
                    start = i + 1
                    break
            except OSError:  # no marker, or a folder that cannot be looked into
                continue
    for component in chain[start:]:
        try:
            mode = os.lstat(component).st_mode
        except OSError:  # not there yet (made as a folder), or reported when it is written
            return None
        if stat.S_ISLNK(mode):
            return component
    return None
