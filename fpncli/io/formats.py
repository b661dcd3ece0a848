"""Which format a local output root holds: image folders (``--format files``, each with its
``manifest.json``) or tar shards with a Parquet index (``--format wds``, see ``io.shards``).

One root holds one format: ``report`` and ``diff`` read a root as one or the other
(``catalog.is_sharded``), so the other kind there would be left out without a word.
``check_one_format`` refuses a run that would write the second format beside the first (either
way round; ``--overwrite`` too, which redoes only its own format's outputs), and
``warn_image_folders_left_out`` says what a reader (``report``, ``diff``) of a root that already
mixes them leaves out.

Two runs of different formats started at once into an empty root would both find nothing of the
other's: each local run holds a ``FormatLock`` for its whole life, which refuses a run while one
of the other format is writing into the root (the files go on deciding for finished runs). The
locks go with the runs, so a run that ended, failed or was killed leaves nothing in the way.
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import os
from pathlib import Path

from .guard import open_lock_file
from .jobs import RESERVED_NAMES, RUN_LOCKS
from .manifest import MANIFEST, read_manifest

__all__ = [
    "wds_output",
    "image_folder",
    "check_one_format",
    "FormatLock",
    "run_lock_held",
    "local_root",
    "image_folders_left_out",
    "left_out_text",
    "warn_image_folders_left_out",
]

log = logging.getLogger(__name__)


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


def check_one_format(root: Path, out_format: str) -> None:
    """Refuse to write ``out_format`` (``files`` or ``wds``) into the local ``root`` when it holds
    the other format's outputs.

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
        return
    folder = image_folder(root)
    if folder is not None:
        where = folder.relative_to(root).as_posix()
        example = MANIFEST if where == "." else f"{where}/{MANIFEST}"
        raise _one_format_error(
            root, f"holds image folders of a --format files extraction ({example})", "files"
        )


class FormatLock:
    """While held (a ``with`` block, or until ``release``), tell runs of the other format that a
    run of ``out_format`` is writing into the local ``root``: a shared ``flock`` on its
    ``RUN_LOCKS`` file, taken for a run's whole life, so that it goes with the run (ended,
    failed, killed) and nothing is left to go stale. Runs of one format (``--shard 0/2`` and
    ``1/2``) share it. Entering it (``root`` made if need be) refuses the run, holding nothing,
    when a run of the other format holds its own (``run_lock_held``), or else when ``root``
    holds the other format's outputs (``check_one_format``: finished runs).

    Two runs of different formats started at the same moment each hold their own lock while
    they look for the other's, so both may be refused; never do both go on. Where ``flock`` is
    refused (some network filesystems) a warning says so and the run goes on unlocked.

    Raises:
        ValueError: on entering, one line: a live run of the other format, the other format's
            outputs, or a lock file that is not a regular file (or cannot be opened).
    """

    def __init__(self, root: Path, out_format: str) -> None:
        self.root, self.out_format = Path(root), out_format
        self.fd: int | None = None

    def __enter__(self) -> FormatLock:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"cannot create output folder {self.root}: {e.strerror}") from None
        path = self.root / RUN_LOCKS[self.out_format]
        other = "wds" if self.out_format == "files" else "files"
        fd = open_lock_file(path, create=True)
        try:
            try:  # waits only while a run of the other format probes it (LOCK_NB: at once)
                fcntl.flock(fd, fcntl.LOCK_SH)
            except OSError as e:  # e.g. ENOLCK on some network filesystems
                log.warning("cannot lock %s (%s): going on unlocked", path, e)
            else:
                if run_lock_held(self.root, other):
                    raise _one_format_error(
                        self.root, f"is being written by a --format {other} run now", other,
                        then="give another -o, or rerun when that run has ended",
                    )  # fmt: skip
            check_one_format(self.root, self.out_format)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def run_lock_held(root: Path, out_format: str) -> bool:
    """Whether a live run of ``out_format`` holds its ``FormatLock`` in the local ``root``: its
    lock file cannot be locked exclusively (a probe released at once). No lock file: no such
    run has started (one that starts now finds the caller's own lock). Where ``flock`` is
    refused, False, with a warning.

    Raises:
        ValueError: the lock file is not a regular file, or cannot be opened.
    """
    path = Path(root) / RUN_LOCKS[out_format]
    try:
        fd = open_lock_file(path, create=False)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError as e:  # e.g. ENOLCK on some network filesystems
        log.warning("cannot lock %s (%s): taking it for no live run's", path, e)
    finally:
        os.close(fd)  # releases the probe
    return False


def _one_format_error(root: Path, holds: str, held_format: str,
                      then: str | None = None) -> ValueError:  # fmt: skip
    """The one-line refusal of a run into ``root``, which ``holds`` the other format's output;
    ``then``: what to do (by default, another -o or the format held)."""
    other = "--format wds" if held_format == "wds" else "leave out --format wds"
    return ValueError(
        f"{root} {holds}; an output folder holds one format (a report reads one), --overwrite "
        f"or not: {then or f'give another -o, or {other}'}"
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
    warning when there are any. An object store, and a root read as image folders, have none
    (a ``file://`` URL is looked into at its local path)."""
    local = local_root(str(root)) if read_as == "wds" else None
    if local is None:
        return 0
    count = image_folders_left_out(local)
    if count:
        log.warning("%s: left out: %s", root, left_out_text(count))
    return count


def local_root(root: str) -> Path | None:
    """``root`` (a folder or an fsspec URL) as a local folder: a ``file://`` URL's path
    (``shards.open_root``, then ``shardlock.is_local``), None for an object store."""
    if "://" not in root:
        return Path(root)
    from .shardlock import is_local
    from .shards import open_root

    fs, path = open_root(root)
    return Path(path) if is_local(fs) else None


def _in_reserved(relative: Path) -> bool:
    """Whether ``relative`` (to a root) lies in a folder fpncli writes at the top of a root."""
    return bool(relative.parts) and relative.parts[0].casefold() in RESERVED_NAMES
