"""Defences every engine shares: open only regular files, one writer per output folder, know a
full disk when one is met, read JSON within a size cap, and never write over fpncli's outputs.

- ``open_regular`` opens without blocking and checks the opened file is a regular one, so a FIFO,
  a device or a socket named like an image is refused instead of hanging the run;
  ``check_regular_file`` checks a path, ``open_lock_file`` opens a lock file the same way.
- ``folder_lock`` is an advisory ``fcntl.flock`` on the output folder itself, held while one
  image's files are written: two runs into the same ``-o`` take turns per image.
- ``is_disk_full`` also recognises numpy's short write (``ndarray.tofile`` raises an ``OSError``
  without an errno: "N requested and M written"); ``is_out_of_open_files`` a run's file limit.
- ``file_target`` is where to write a file the user names, never over a device or an output.
- ``read_capped`` / ``read_json_file`` / ``parse_json`` read a file or JSON within a size cap.
- ``usable_cores`` counts the cores a container or job gives this process, not the machine's.
- ``OptionError`` and ``FolderBusyError``: an option's value ruled out, an output folder busy.

The output markers and marked roots live in ``markers``; error text and name quoting in
``messages``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import logging
import os
import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from .markers import OUTPUT_MARKER
from .messages import kind

__all__ = [
    "FolderBusyError",
    "OptionError",
    "check_regular_file",
    "open_regular",
    "open_lock_file",
    "is_disk_full",
    "is_out_of_open_files",
    "folder_lock",
    "pid_alive",
    "file_target",
    "usable_cores",
    "parse_json",
    "read_capped",
    "read_json_file",
]

log = logging.getLogger(__name__)
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
        raise ValueError(f"{path} is {kind(st.st_mode)}, not a file: give a file name to write")
    return target


def _fpncli_file(target: Path) -> str | None:
    """What ``target`` belongs to when it is a file an fpncli run wrote (or will write), else
    None."""
    from .jobs import is_reserved_name
    from .manifest import MANIFEST
    from .outputs import is_output_name
    from .run_log import RUN_LOG
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
        raise ValueError(f"{path}: not a regular file ({kind(st.st_mode)})")
    return st


def open_regular(path: str | Path, what: str = "file"):
    """Open ``path`` for binary reading only if it is a regular file (never blocks on a FIFO).

    The file is opened with ``O_NONBLOCK`` and checked with ``fstat`` on the opened descriptor,
    so there is no window between the check and the open. Raises as ``check_regular_file``.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        # map calls os.open and hands its descriptor to the io.FileIO that owns it, all in C:
        # Python raises a KeyboardInterrupt (a Ctrl-C) only between bytecodes, so none can land
        # between the two and leave the descriptor open, as one during the open() syscall did,
        # raised just after a Python-level os.open returned; nor can the descriptor be closed
        # twice (an fd number another thread may have been given meanwhile)
        raw = next(map(io.FileIO, map(os.open, [path], [flags])))
    except FileNotFoundError:
        raise FileNotFoundError(f"no such {what}: {path}") from None
    except OSError as e:
        if e.errno == errno.EISDIR and isinstance(e.filename, int):  # io.FileIO refused the
            os.close(e.filename)  # descriptor of a folder (os.open's, named by its number)
        if e.errno == errno.ELOOP:
            raise ValueError(f"{path}: a symlink loop, not {_a(what)}") from None
        if e.errno in (errno.ENXIO, errno.EISDIR):  # a socket, or a folder
            check_regular_file(path, what)
        raise
    try:
        fd = raw.fileno()
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ValueError(f"{path}: not a regular file ({kind(mode)})")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        f = io.BufferedReader(raw)
    except BaseException:  # the file object closes it: once, whichever holds it
        raw.close()
        raise
    return f


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
            raise _not_a_lock_file(path, kind(mode)) from None
        raise ValueError(f"cannot open the lock file {path} ({e.strerror})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):  # a FIFO or a device opens
        os.close(fd)
        raise _not_a_lock_file(path, kind(mode))
    return fd


def _not_a_lock_file(path: Path, kind: str) -> ValueError:
    return ValueError(
        f"{path} is {kind}, not the empty file fpncli locks there while a run writes: remove it "
        "(a run makes it again)"
    )


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
