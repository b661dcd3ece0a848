"""Defences every engine shares: open only regular files, one writer per output folder, know a
full disk when one is met, and never read outputs back as inputs.

- ``open_regular`` opens without blocking and checks the opened file is a regular one, so a FIFO,
  a device or a socket named like an image is refused instead of hanging the run.
- ``folder_lock`` is an advisory ``fcntl.flock`` on the output folder itself, held while one
  image's files are written: two runs into the same ``-o`` take turns per image.
- ``is_disk_full`` also recognises numpy's short write (``ndarray.tofile`` raises an ``OSError``
  without an errno: "N requested and M written").
- ``OUTPUT_MARKER`` marks every output root, ``REPORT_MARKER`` a report's pictures and
  ``DIFF_MARKER`` a folder diff made for its pictures; discovery never enters a marked folder.
- ``usable_cores`` counts the cores a container or job gives this process, not the machine's.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import stat
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "OUTPUT_MARKER",
    "REPORT_MARKER",
    "DIFF_MARKER",
    "make_marked_folder",
    "check_no_dangling_link",
    "FolderBusyError",
    "OptionError",
    "check_regular_file",
    "open_regular",
    "open_lock_file",
    "is_disk_full",
    "is_out_of_open_files",
    "folder_lock",
    "pid_alive",
    "mark_output_root",
    "is_marked",
    "marked_root",
    "linked_folder",
    "quote_name",
    "file_target",
    "utf8_text",
    "usable_cores",
    "parse_json",
    "read_capped",
    "read_json_file",
    "one_line",
    "ONE_LINE_LIMIT",
    "error_text",
]

log = logging.getLogger(__name__)
OUTPUT_MARKER = ".fpncli-output"
REPORT_MARKER = ".fpncli-report"  # in a report's asset folder: a report made it, may clear it
DIFF_MARKER = ".fpncli-diff"  # in a folder diff made for its pictures
#: what fpncli writes is never read back as input: folders holding any of these are passed over
_MARKERS = (OUTPUT_MARKER, REPORT_MARKER, DIFF_MARKER)
_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")
#: "Too many open files": this process's limit (``ulimit -n``), or the system's
_OPEN_FILES_ERRNOS = {errno.EMFILE, errno.ENFILE}


class FolderBusyError(OSError):
    """Another live run held an output folder's lock for longer than we waited."""


class OptionError(ValueError):
    """An option's value that the data or the other options rule out (``--channel 300`` of a
    map with 256 channels, ``--at`` outside the photo): to the library a ValueError, to the CLI
    a usage error (exit 2) about ``option`` (None: about a combination of options), as click
    reports a value it refuses itself.

    Its text names the option, for a library caller ("--at: 9999,1 lies outside the image"),
    unless ``message`` begins with it; ``message`` is the text without it, which the CLI puts
    after click's "Invalid value for '--at':"."""

    def __init__(self, message: str, option: str | None = None) -> None:
        named = option is None or message.startswith(option)
        super().__init__(message if named else f"{option}: {message}")
        self.message, self.option = message, option


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
        (stat.S_ISLNK, "a symlink"),  # (an lstat's)
    ):  # fmt: skip
        if test(mode):
            return name
    return "a special file"


def file_target(path: str | Path) -> Path:
    """Where to write a file the user named (``show --save``, ``bench --json``): through a
    symlink to what it points at (an atomic rename would replace the link itself), and only a
    regular file or a new name, never over a device, FIFO, socket or folder (as root, an atomic
    write to ``/dev/null`` would replace the device node), nor over a file fpncli wrote: one of
    an extraction folder's files (beside its ``manifest.json``) or what a run writes at the top
    of its output folder (run logs, the report, the index, shards).

    Raises:
        ValueError: one line, when ``path`` is not a regular file nor a new name, or is one of
            fpncli's outputs.
    """
    target = Path(os.path.realpath(Path(path).expanduser()))
    owner = _fpncli_file(target)
    if owner:
        raise ValueError(f"{path} is {owner}: writing there would damage it; give another name")
    try:
        st = os.stat(target)
    except FileNotFoundError:
        return target
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path} is {_kind(st.st_mode)}, not a file: give a file name to write")
    return target


def _fpncli_file(target: Path) -> str | None:
    """What ``target`` belongs to when it is a file an fpncli run wrote (or will write), else
    None."""
    from .extraction import RUN_LOG
    from .inputs import is_reserved_name
    from .manifest import MANIFEST
    from .outputs import is_output_name
    from .shards import is_shard_name

    name, parent = target.name, target.parent
    if is_output_name(name) and (parent / MANIFEST).is_file():
        return f"a file of the extraction in {parent}"
    marked = (parent / OUTPUT_MARKER).is_file() or (parent / RUN_LOG).is_file()
    if marked and (is_reserved_name(Path(name)) or is_shard_name(name)):
        return f"a file of the run in {parent}"
    return None


def _a(what: str) -> str:
    return f"an {what}" if what[:1] in "aeiou" else f"a {what}"


def check_regular_file(path: str | Path, what: str = "file") -> os.stat_result:
    """``os.stat`` of ``path`` (symlinks followed) when it is a regular file.

    Raises:
        FileNotFoundError: no such file (or a dangling symlink).
        ValueError: a symlink loop, or not a regular file (a folder, FIFO, device or socket).
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"no such {what}: {path}") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ValueError(f"{path}: a symlink loop, not {_a(what)}") from None
        raise
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path}: not a regular file ({_kind(st.st_mode)})")
    return st


def open_regular(path: str | Path, what: str = "file"):
    """Open ``path`` for binary reading only if it is a regular file (never blocks on a FIFO).

    The file is opened with ``O_NONBLOCK`` and checked with ``fstat`` on the opened descriptor,
    so there is no window between the check and the open. Raises as ``check_regular_file``.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise FileNotFoundError(f"no such {what}: {path}") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ValueError(f"{path}: a symlink loop, not {_a(what)}") from None
        if e.errno in (errno.ENXIO, errno.EISDIR):  # a socket, or a folder
            check_regular_file(path, what)
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ValueError(f"{path}: not a regular file ({_kind(mode)})")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def parse_json(data: str | bytes):
    """``json.loads(data)``, with a document nested too deep for Python's parser (``[[[[...``,
    a RecursionError) a ValueError like any other malformed JSON."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply to read") from None


def is_disk_full(error: BaseException) -> bool:
    """True for "no space left" / "quota exceeded", and for numpy's errno-less short write."""
    if not isinstance(error, OSError):
        return False
    if error.errno in _DISK_FULL_ERRNOS:
        return True
    return error.errno is None and bool(_SHORT_WRITE.search(str(error)))


def is_out_of_open_files(error: BaseException) -> bool:
    """True for "too many open files" (EMFILE: this process's limit, ``ulimit -n``; ENFILE: the
    system's): a limit of the run, as a full disk is, not a fault of the file opened."""
    return isinstance(error, OSError) and error.errno in _OPEN_FILES_ERRNOS


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def folder_lock(folder: Path, timeout_s: float = 300.0, poll_s: float = 0.05) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``folder`` (created if needed) for the ``with`` body.

    Another run holding it is waited for (it holds it only while one image is written); a lock
    held past ``timeout_s`` raises FolderBusyError. The lock goes with the process: a killed
    run never leaves a folder locked. On a filesystem without ``flock`` it proceeds unlocked.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_CLOEXEC)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise FolderBusyError(
                        errno.EBUSY,
                        f"another fpncli run has been writing {folder} for over "
                        f"{timeout_s:.0f} s; rerun when it is done",
                    ) from None
                time.sleep(poll_s)
            except OSError as e:  # e.g. ENOLCK on some network filesystems
                log.warning("cannot lock %s (%s): writing it unlocked", folder, e)
                break
        yield
    finally:
        os.close(fd)  # releases the lock


def open_lock_file(path: Path, *, create: bool) -> int:
    """A descriptor (close-on-exec) of the lock file ``path``, made if ``create``: never through
    a symlink (a link to a file outside OUT is neither written nor made), never of anything but
    a regular file (``O_NONBLOCK``: a FIFO is never waited on). One that cannot be opened for
    writing (another user's, read-only, immutable) is opened for reading: ``flock`` takes it so.

    Raises:
        FileNotFoundError: not ``create``, and no such file.
        ValueError: one line: a symlink or not a regular file (remove it), or it cannot be opened.
    """
    # O_CLOEXEC: no child the run starts (a spawned --gpus worker, Ray's processes) keeps the
    # lock past the run: flock's lock is the open file's, which a child would share
    flags = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        try:
            fd = os.open(path, flags | os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EROFS, errno.EPERM):
                raise
            try:
                fd = os.open(path, flags | os.O_RDONLY)
            except FileNotFoundError:
                raise e from None  # not there, and it cannot be made: say why
    except FileNotFoundError:
        if not create:
            raise
        raise ValueError(f"cannot create the lock file {path}: its folder is gone") from None
    except OSError as e:
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            mode = stat.S_IFREG
        if stat.S_ISLNK(mode):  # ELOOP
            raise _not_a_lock_file(path, "a symlink") from None
        if not stat.S_ISREG(mode):  # a folder (EISDIR), a socket (ENXIO)
            raise _not_a_lock_file(path, _kind(mode)) from None
        raise ValueError(f"cannot open the lock file {path} ({e.strerror})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):  # a FIFO or a device opens
        os.close(fd)
        raise _not_a_lock_file(path, _kind(mode))
    return fd


def _not_a_lock_file(path: Path, kind: str) -> ValueError:
    return ValueError(
        f"{path} is {kind}, not the empty file fpncli locks there while a run writes: remove it "
        "(a run makes it again)"
    )


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
        f"{quote_name(str(path))} is {_kind(mode)}, not the marker file fpncli writes there: "
        "move it away, or give another folder"
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


def read_capped(path: str | Path, max_bytes: int) -> tuple[bytes, int]:
    """At most ``max_bytes`` of the regular file ``path`` (``open_regular``: never waits on a
    FIFO), and the size it had when opened. Raises OSError, or ValueError (not a regular file)."""
    with open_regular(path) as f:
        # no more than the file holds (+1: one that grew is cut, and fails to parse): read(n)
        # allocates n bytes first, 16 MB for each 3 KB manifest
        size = os.fstat(f.fileno()).st_size
        return f.read(min(max_bytes, size + 1)), size


def read_json_file(path: str | Path, max_bytes: int):
    """The JSON document in ``path``, a regular file, of which at most ``max_bytes`` are read
    (``read_capped``: a longer one fails to parse). Raises OSError or ValueError
    (``parse_json``'s, nesting too deep included)."""
    return parse_json(read_capped(path, max_bytes)[0])


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: a container's or a job's share, where
    ``os.cpu_count`` gives the whole machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def error_text(error: BaseException) -> str:
    """An error's message on one line (``one_line``), or its type's name where it has none."""
    return one_line(str(error)) or type(error).__name__


#: The longest error line ``one_line`` gives (by default).
ONE_LINE_LIMIT = 500


def one_line(text: str, limit: int = ONE_LINE_LIMIT) -> str:
    """An error message as one line: its lines joined with a literal ``\\n`` (a newline in a
    file name it quotes must not cut the reason off after the name), at most ``limit``
    characters."""
    line = "\\n".join(part.rstrip() for part in text.strip().splitlines())
    return line if len(line) <= limit else line[: limit - 1] + "\u2026"


def quote_name(text: str) -> str:
    """``text`` as is, or quoted with escapes when it holds control characters (a newline in a
    file name must not forge a second report line) or bytes that are not UTF-8 (which no
    UTF-8 terminal or log could take: ``os.fsdecode`` keeps them as lone surrogates)."""
    odd = ("Cc", "Cf", "Zl", "Zp", "Cs")
    if not any(unicodedata.category(c) in odd for c in text):
        return text
    escaped = "".join(
        c if unicodedata.category(c) not in odd else c.encode(
            "unicode_escape").decode("ascii")
        for c in text.replace("\\", "\\\\")
    )  # fmt: skip
    return f'"{escaped}"'


def utf8_text(text: str) -> str:
    """``text`` as valid UTF-8 text, for what must be UTF-8 (HTML, Parquet strings, tar member
    names): a file name's bytes that are not UTF-8, which Python holds as lone surrogates
    (``surrogateescape``), are written ``\\xNN``, the name's own bytes. Any other lone
    surrogate (from a forged manifest) makes every surrogate ``\\udNNN``."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")
