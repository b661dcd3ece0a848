"""Which format a local output root holds: image folders (``--format files``, each with its
``manifest.json``) or tar shards with a Parquet index (``--format wds``, see ``io.shards``).

One root holds one format: ``report`` and ``diff`` read a root as one or the other
(``catalog.is_sharded``), so the other kind there would be left out without a word.
``check_one_format`` refuses a run that would write the second format beside the first (either
way round; ``--overwrite`` too, which redoes only its own format's outputs), and
``warn_image_folders_left_out`` says what a reader (``report``, ``diff``) of a root that already
mixes them leaves out.

Two runs of different formats started at once into an empty root would both find nothing of the
other's: ``claim_format`` makes the first to claim the root name its format in
``FORMAT_MARKER``, which ``check_one_format`` reads as well as the files (a root written before
the marker has only its files to go by).
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import os
from pathlib import Path

from .guard import read_capped
from .inputs import FORMAT_MARKER, RESERVED_NAMES
from .manifest import MANIFEST, read_manifest

__all__ = [
    "FORMAT_MARKER",
    "wds_output",
    "image_folder",
    "claimed_format",
    "check_one_format",
    "claim_format",
    "image_folders_left_out",
    "left_out_text",
    "warn_image_folders_left_out",
]

log = logging.getLogger(__name__)
_FORMATS = ("files", "wds")


def wds_output(root: Path) -> str | None:
    """The first thing found in ``root`` that a ``--format wds`` run wrote, as a name relative
    to ``root``: its index, a part of its ledger (what makes ``report`` read ``root`` as shards),
    or, in a root marked as one (``.fpncli-wds``), a shard named as fpncli names them
    (``shards.is_own_shard``), committed or being written. None when it holds none: a root with
    only the marker holds no extraction, and someone else's ``shard-000000.tar`` is no fpncli
    output."""
    from .shards import is_own_shard

    root = Path(root)
    found = [root.glob("index.parquet"), root.glob("_index/part-*.parquet")]
    if (root / ".fpncli-wds").is_file():
        found.append(p for p in root.glob("shard-*.tar*") if is_own_shard(p.name))
    for path in itertools.chain.from_iterable(found):  # lazily: the first that is a file
        if path.is_file():
            return path.relative_to(root).as_posix()
    return None


def image_folder(root: Path) -> Path | None:
    """The first folder at or below ``root`` that holds a complete extraction (a complete
    ``manifest.json``), or None. Symlinks are not followed, and the folders fpncli writes at
    the top of a root (``_index``, ``_claims``, ``report``) are not looked into; the walk stops
    at the first one found, so a root of image folders answers at once."""
    root = Path(root)
    stack = [root]
    while stack:
        folder = stack.pop()
        if (folder / MANIFEST).is_file() and read_manifest(folder) is not None:
            return folder
        try:
            with os.scandir(folder) as entries:
                subfolders = [
                    Path(e.path) for e in entries
                    if e.is_dir(follow_symlinks=False)
                    and not (folder == root and _in_reserved(Path(e.name)))
                ]  # fmt: skip
        except OSError:  # unreadable: nothing found in it
            continue
        stack.extend(sorted(subfolders, reverse=True))  # depth first, in name order
    return None


def claimed_format(root: Path) -> str | None:
    """The format ``root``'s ``FORMAT_MARKER`` names (``files`` or ``wds``), or None: no marker
    (a root written before there was one), or an empty one (a run is claiming the root).

    Raises:
        ValueError: the marker is not a regular file (a FIFO, a folder).
    """
    try:
        text = read_capped(Path(root) / FORMAT_MARKER, 64)[0]
    except FileNotFoundError:
        return None
    name = text.decode("ascii", "replace").strip()
    return name if name in _FORMATS else None


def check_one_format(root: Path, out_format: str) -> None:
    """Refuse to write ``out_format`` (``files`` or ``wds``) into the local ``root`` when it is
    claimed for the other format (``claimed_format``) or holds the other format's outputs.

    Raises:
        ValueError: one line naming ``root`` and what it holds, saying to give another -o.
    """
    root = Path(root)
    if not root.is_dir():
        return
    if out_format == "files":
        held = wds_output(root)
        if held is not None:
            raise _one_format_error(root, f"holds a --format wds output ({held})", "wds")
    else:
        folder = image_folder(root)
        if folder is not None:
            where = folder.relative_to(root).as_posix()
            example = MANIFEST if where == "." else f"{where}/{MANIFEST}"
            raise _one_format_error(
                root, f"holds image folders of a --format files extraction ({example})", "files"
            )
    claimed = claimed_format(root)  # a run of the other format claimed it, and wrote nothing yet
    if claimed not in (None, out_format):
        raise _one_format_error(
            root,
            f"is claimed by a --format {claimed} run that has written nothing yet "
            f"({FORMAT_MARKER}: delete it if no such run is going on)",
            claimed,
        )


def claim_format(root: Path, out_format: str) -> None:
    """``check_one_format``, then claim ``root`` (made if need be) for ``out_format``: the first
    run to claim it writes ``FORMAT_MARKER`` naming its format (a refused run leaves it empty).
    The check and the write hold the marker's ``flock``, so of two runs of different formats
    started at once, the second to claim the root finds the first's marker and is refused,
    though the first has written no output yet. Where ``flock`` is refused (some network
    filesystems) it goes on unlocked.

    Raises:
        ValueError: as ``check_one_format``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    flags = os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(root / FORMAT_MARKER, flags, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:  # e.g. ENOLCK on some network filesystems
            log.warning("cannot lock %s (%s): claiming it unlocked", root / FORMAT_MARKER, e)
        check_one_format(root, out_format)  # no other run claims it meanwhile
        if claimed_format(root) is None:
            os.ftruncate(fd, 0)
            os.write(fd, f"{out_format}\n".encode())
    finally:
        os.close(fd)  # releases the lock


def _one_format_error(root: Path, holds: str, held_format: str) -> ValueError:
    """The one-line refusal of a run into ``root``, which ``holds`` the other format's output."""
    other = "--format wds" if held_format == "wds" else "leave out --format wds"
    return ValueError(
        f"{root} {holds}; an output folder holds one format (a report reads one), --overwrite "
        f"or not: give another -o, or {other}"
    )


def image_folders_left_out(root: Path) -> int:
    """How many complete image folders lie in ``root``, the local output of a ``--format wds``
    run, which a reader of it (reading its shards) leaves out: only an output written before
    ``check_one_format`` refused such a mix has any."""
    from .extraction import find_extractions

    root = Path(root)
    if image_folder(root) is None:  # the usual case, said without walking every folder
        return 0
    return sum(1 for p in find_extractions(root) if not _in_reserved(p.relative_to(root)))


def left_out_text(count: int) -> str:
    """What a reader of shards says of the ``count`` image folders beside them."""
    return (
        f"{count} image folder(s) of a --format files extraction, beside the --format wds "
        "shards read here: move them to a folder of their own to read them"
    )


def warn_image_folders_left_out(root: str | Path, read_as: str) -> int:
    """The image folders a reader of ``root`` (read as ``read_as``: ``files`` or ``wds``, as
    ``catalog.open_extractions`` found it) leaves out (``image_folders_left_out``), said in one
    warning when there are any. An object store, and a root read as image folders, have none."""
    if read_as != "wds" or "://" in str(root):
        return 0
    count = image_folders_left_out(Path(root))
    if count:
        log.warning("%s: left out: %s", root, left_out_text(count))
    return count


def _in_reserved(relative: Path) -> bool:
    """Whether ``relative`` (to a root) lies in a folder fpncli writes at the top of a root."""
    return bool(relative.parts) and relative.parts[0].casefold() in RESERVED_NAMES
