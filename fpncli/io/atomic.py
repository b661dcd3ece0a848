"""Atomic file writes: a hidden temporary name in the same folder, then a rename; large files
are flushed and dropped from the page cache first (``drop_from_cache``).

Temporary names carry the writer's pid and run token (``.NAME.fpncli-tmp.PID.TOKEN``), so that
only this run's or dead runs' leftovers are ever removed (``stale_temporary``).
"""

from __future__ import annotations

import errno
import os
import re
import secrets
from pathlib import Path

import numpy as np

from .guard import is_disk_full, pid_alive
from .npy import write_npy

__all__ = [
    "DROP_BYTES", "TMP_MARK", "atomic_write_bytes", "drop_from_cache", "stale_temporary",
    "not_writable", "folder_not_writable",
]  # fmt: skip

TMP_MARK = ".fpncli-tmp"
_RUN_TOKEN = secrets.token_hex(4)  # tells this run's temporaries from an earlier one's (pid reuse)
_TMP_PID = re.compile(re.escape(TMP_MARK) + r"\.?(\d+)")

#: What a write into a folder that cannot be written fails with: no permission (EACCES; EPERM,
#: as a sticky folder's rename of another's file), a read-only file system (EROFS).
_NOT_WRITABLE = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})

#: Files at least this large (a P2 ``.npy`` from 1 MB upwards) leave the page cache once written.
DROP_BYTES = 8 << 20


def drop_from_cache(f) -> None:
    """Flush the open file ``f`` to disk and drop its pages from the page cache (used for large
    output files, and for a shard after each image's members).

    Left alone, each image's ``.npy`` (83 MB at 800x1216) stays in the page cache as dirty pages:
    every image takes fresh pages from the kernel and a long run fills the cache with outputs
    nobody is reading, evicting everything else (the input images included). Taking fresh pages
    is also the costly part of a buffered write: on a 2-core AMD EPYC VM the writer spent 150-180
    ms of kernel time per image (the model's threads paid for it), 38 ms with this; the
    folder/model-only ratio went from 0.89-0.91 to 0.94-0.96. The run is bound by the disk's rate
    once the cache is full anyway, and a disk-full error from delayed allocation surfaces here,
    before the rename. Where ``posix_fadvise`` is missing (macOS, Windows), or with
    ``FPNCLI_DROP_CACHE=0``, nothing is done.
    """
    if not hasattr(os, "posix_fadvise") or os.environ.get("FPNCLI_DROP_CACHE", "1") == "0":
        return
    try:
        fd = f.fileno()
    except (AttributeError, OSError, ValueError):  # not a local file (an object store, memory)
        return
    f.flush()
    try:
        os.fdatasync(fd)
    except OSError as e:  # a file system without fdatasync: leave the file to the OS
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise  # ENOSPC, EDQUOT, EIO: this write failed
        return
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:  # only advice
        pass


def atomic_write_bytes(path: Path, data: bytes | np.ndarray) -> int:
    """Write ``data`` (bytes, or an array saved as ``.npy``) to ``path`` through a temporary file
    in the same folder, then rename; returns the size written."""
    tmp = path.with_name(f".{path.name}{TMP_MARK}.{os.getpid()}.{_RUN_TOKEN}")
    try:
        with open(tmp, "wb") as f:
            if isinstance(data, np.ndarray):
                write_npy(f, data)
            else:
                f.write(data)
            size = f.tell()
            if size >= DROP_BYTES:
                drop_from_cache(f)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if is_disk_full(e) and e.errno is None:  # numpy's short write: say what it is
            raise OSError(errno.ENOSPC, f"No space left on device ({e})", str(path)) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return size


def not_writable(error: BaseException) -> bool:
    """Whether ``error``, raised by a write, says its folder cannot be written."""
    return isinstance(error, OSError) and error.errno in _NOT_WRITABLE


def folder_not_writable(folder: Path, what: str, advice: str) -> PermissionError:
    """The one-line error for ``what`` (``"save x.png"``) failed because ``folder`` cannot be
    written (``not_writable``), with ``advice`` on what to do: it names the folder, not the
    temporary file the write made first (``.x.png.fpncli-tmp.PID.TOKEN``)."""
    from .messages import quote_name

    folder = Path(folder)
    where = ("the current folder" if folder == Path(".")
             else f"the folder {quote_name(str(folder))}")  # fmt: skip
    return PermissionError(f"cannot {what}: {where} is not writable; {advice}")


def stale_temporary(name: str) -> bool:
    """Whether a temporary file was left by this process or by one that is no longer alive."""
    match = _TMP_PID.search(name)
    if match is None:
        return True
    pid = int(match[1])
    return pid == os.getpid() or not pid_alive(pid)
