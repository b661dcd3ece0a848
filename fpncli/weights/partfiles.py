"""A download's temporary files in the cache (``.STEM.XXXXXXXX.part.SUFFIX``): a new one,
locked while it is written, and the removal of those killed downloads left.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import stat
import time
from pathlib import Path

from .cache import exclusive_file

log = logging.getLogger(__name__)
#: Where flock is refused (some network filesystems) a temporary file cannot say whether its
#: writer is alive: one untouched this long is a dead one's (a live download writes at least
#: ``fetch._STALL_BYTES`` a minute, or gives up).
_STALE_PART_AGE_S = 3600.0


def new_part(final: Path) -> tuple[int, Path]:
    """A new temporary file for a download of ``final`` (``.STEM.XXXXXXXX.part.SUFFIX``: its
    suffix kept, as a checkpoint's error names it), locked (``flock``) while its descriptor is
    open: ``remove_stale_parts`` tells a live download's from a dead one's by the lock."""
    while True:
        fd, path = exclusive_file(final.with_name(f".{final.stem}."), f".part{final.suffix}")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a sweep took it for a dead download's, between open and lock
            os.close(fd)
            continue
        except OSError as e:  # e.g. ENOLCK on some network filesystems: its age will tell
            log.debug("cannot lock %s (%s): downloading into it unlocked", path, e)
            return fd, path
        try:
            if os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                return fd, path
        except FileNotFoundError:  # a sweep removed it between the open and the lock
            pass
        os.close(fd)


def remove_stale_parts(final: Path) -> None:
    """Remove the temporary files killed downloads of ``final`` left: ``new_part``'s that no
    process holds locked or, where ``flock`` is refused, untouched for ``_STALE_PART_AGE_S``;
    and ``.NAME.partPID`` of earlier versions, which never locked theirs, untouched that long
    (an unlocked one may be a live download of an earlier fpncli sharing the cache). A live
    download's is left alone."""
    prefix, suffix = f".{final.stem}.", f".part{final.suffix}"
    earlier = re.compile(re.escape(f".{final.name}.part") + r"\d+")
    try:
        names = [e.name for e in os.scandir(final.parent)]
    except OSError:
        return
    for name in names:
        unlocked = earlier.fullmatch(name) is not None  # its lock says nothing: only its age
        if not (unlocked or (name.startswith(prefix) and name.endswith(suffix))):
            continue
        path = final.with_name(name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:  # gone, a symlink, another user's: not this to judge
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                continue
            stale = time.time() - st.st_mtime >= _STALE_PART_AGE_S
            if not unlocked:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    stale = True  # no process holds it
                except BlockingIOError:
                    continue  # a live download's
                except OSError:  # flock refused: its age tells
                    pass
            if not stale:
                continue
            if os.stat(path, follow_symlinks=False).st_ino == st.st_ino:
                path.unlink()
                log.info("removed %s, left by a download that did not finish", path)
        except OSError as e:  # a read-only cache: left there, harmless
            log.debug("cannot remove %s: %s", path, e)
        finally:
            os.close(fd)
