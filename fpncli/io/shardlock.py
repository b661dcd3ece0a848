"""Several ``--format wds`` runs into one local OUT at once: each key extracted once, no shard or
index part lost, and every run makes progress on the keys nobody else has.

- ``OUT/.fpncli-wds.lock`` is an ``fcntl.flock`` taken only for short critical sections, never
  across compute: planning (the cleanup of dead runs' leftovers, reading the ledger, claiming
  keys), every commit (a shard's rename and its index part) and writing ``index.parquet``. So a
  run never sees another's shard between its rename and its index part.
- ``OUT/_claims/<token>.json`` is one file per live run, holding its pid, its settings and the
  keys it will extract (with each key's input file), and ``flock``-ed by that run for its whole
  life (the lock goes with the process, so a killed run leaves no lock). A planning run skips
  the keys a live run claims (and refuses those it claims for other files); a claims file
  whose lock can be taken is a dead run's: it is removed and its keys are free. A writer in
  another process than its run's (a Ray actor) commits only while ``claim_is_live``: an actor
  outliving its killed run would otherwise commit keys that a new run has taken since.
- A run's partial shards are named ``shard-<token>-<random>.tar.partial`` (``shards`` names
  them, with the token ``run_token`` gives): the cleanup removes only those whose run has no
  live claims file.

An object store (``s3://``, ``memory://``...) has no locks: runs into it are not coordinated
(a warning says so); run one at a time there.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import stat
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .guard import open_lock_file, open_regular, parse_json
from .messages import kind

__all__ = [
    "CLAIMS_DIR",
    "LOCK_FILE",
    "LiveRun",
    "RunClaim",
    "TOKEN_HEX",
    "claim_is_live",
    "is_local",
    "run_token",
    "wds_lock",
]

log = logging.getLogger(__name__)
LOCK_FILE = ".fpncli-wds.lock"
CLAIMS_DIR = "_claims"
TOKEN_HEX = 12  # the hex digits of a run's token


def is_local(fs) -> bool:
    """Whether an fsspec filesystem is this machine's (where ``flock`` works)."""
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


def run_token() -> str:
    """A new run's token (``TOKEN_HEX`` hex digits): its claims file's name and its partial
    shards' prefix."""
    return uuid.uuid4().hex[:TOKEN_HEX]


@contextlib.contextmanager
def wds_lock(fs, root: str) -> Iterator[None]:
    """Hold ``root``'s wds lock for the ``with`` body (blocking: every holder is brief).
    Without locks (an object store, or a filesystem refusing ``flock``) the body runs unlocked.

    Raises:
        ValueError: one line: the lock file is a symlink or not a regular file (never followed,
            never waited on), or cannot be opened.
    """
    if not is_local(fs):
        yield
        return
    Path(root).mkdir(parents=True, exist_ok=True)
    fd = open_lock_file(Path(root) / LOCK_FILE, create=True)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:  # e.g. ENOLCK on some network filesystems
            log.warning("cannot lock %s (%s): writing it unlocked", root, e)
        yield
    finally:
        os.close(fd)  # releases the lock


@dataclass
class LiveRun:
    """Another run working on the same OUT now."""

    token: str
    pid: int
    settings: str
    keys: set[str] = field(default_factory=set)
    sources: dict[str, str] = field(default_factory=dict)  # key -> input file, where recorded


class RunClaim:
    """This run's claims file. Call ``live_runs`` and ``claim`` inside ``wds_lock``; ``release``
    once the run's shards are committed (or dropped)."""

    def __init__(self, fs, root: str) -> None:
        self.fs, self.root = fs, root
        self.local = is_local(fs)
        self.token = run_token()
        self.fd: int | None = None
        self.path: Path | None = None
        if not self.local:
            log.warning(
                "%s is not a local folder: it cannot be locked, so another fpncli run writing "
                "into it at the same time would not be noticed; run one at a time there",
                root,
            )

    def live_runs(self) -> list[LiveRun]:
        """The other runs holding their claims files; dead runs' files are removed."""
        if not self.local:
            return []
        folder = Path(self.root) / CLAIMS_DIR
        runs = []
        for path in folder.glob(".*.tmp") if folder.is_dir() else []:
            _remove_if_unlocked(path)  # a claims file a run was killed before naming
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            if path == self.path:
                continue
            run = _read_live(path)
            if run is not None:
                runs.append(run)
        return runs

    def claim(self, keys: list[str], settings: str, sources: dict[str, str] | None = None) -> None:
        """Write and lock this run's claims file (the lock is held until ``release``);
        ``sources``: each key's input file, so that another run can tell its own file under the
        same key from another."""
        if not self.local:
            return
        folder = Path(self.root) / CLAIMS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{self.token}.tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # before it has its name: never seen unlocked
            body = {"pid": os.getpid(), "settings": settings, "keys": keys,
                    "sources": sources or {}}  # fmt: skip
            os.write(fd, json.dumps(body).encode())
            self.path = folder / f"{self.token}.json"
            os.replace(tmp, self.path)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        self.fd = fd

    def release(self) -> None:
        """Remove the claims file and drop its lock (idempotent)."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _live_run(path: Path, data: bytes) -> LiveRun:
    """The live run a locked claims file describes; a body that is not the one fpncli writes
    (cut short, forged) is a live run claiming nothing, with a warning."""
    try:
        body = parse_json(data or b"{}")
        keys, sources = body.get("keys", []), body.get("sources", {})  # (none: an earlier version)
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ValueError("'keys' is not a list of names")
        if not isinstance(sources, dict) or not all(isinstance(v, str) for v in sources.values()):
            raise ValueError("'sources' is not a table of file names")
        return LiveRun(path.stem, int(body.get("pid", 0)), str(body.get("settings")), set(keys),
                       sources)  # fmt: skip
    except (ValueError, TypeError, AttributeError, OverflowError) as e:
        log.warning("%s is held by a live run but unreadable (%s): taken as claiming nothing",
                    path, e)  # fmt: skip
        return LiveRun(path.stem, 0, "None", set())


def claim_is_live(fs, root: str, token: str) -> bool:
    """Whether the run of ``token`` still holds its claims file under ``root``, as a planning
    run would judge it (call inside ``wds_lock``, so none judges otherwise meanwhile). True
    where nothing can be locked (not a local folder); False for a missing claims file or
    anything but a regular file there. A dead run's file is left for the planner to remove.
    """
    if not is_local(fs):
        return True
    path = Path(root) / CLAIMS_DIR / f"{token}.json"
    try:
        f = open_regular(path, "claims file")
    except (FileNotFoundError, ValueError):  # (a FIFO, a folder: the planner skips it too)
        return False
    with f:  # closing it drops the lock taken here
        return _held(f.fileno(), path)


def _held(fd: int, path: Path) -> bool:
    """Whether another open file holds ``flock`` on the claims file ``path`` (open as ``fd``):
    its run is alive. Else ``fd`` now holds a shared lock on it, until it is closed."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:  # its run holds it: alive
        return True
    except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP):
            raise
        log.warning("cannot lock %s (%s): taking it for a dead run's", path, e)  # cannot tell
    return False


def _read_live(path: Path) -> LiveRun | None:
    """The run owning the claims file ``path`` if it is alive; else remove the file, None.
    Anything but a regular file (a FIFO, a folder) is left alone with a warning, never waited on.
    """
    try:
        f = open_regular(path, "claims file")
    except FileNotFoundError:
        return None
    except ValueError as e:  # a FIFO would block the open, and the run with OUT's lock held
        log.warning("ignoring %s", e)
        return None
    try:
        if _held(f.fileno(), path):
            return _live_run(path, f.read())
        log.info("removing %s (left by a run that is no longer alive)", path)
        path.unlink(missing_ok=True)
        return None
    except ValueError:  # a torn or foreign file that nobody holds... or one being read wrongly
        log.warning("ignoring the unreadable claims file %s", path)
        return None
    finally:
        f.close()


def _remove_if_unlocked(path: Path, min_age_s: float = 60.0) -> None:
    """Remove a claims file's temporary that no live run holds: its writer locks it before
    naming it, so an unlocked one a minute old was left by a run killed in between. Anything
    but a regular file there (a FIFO would block the open, with OUT's lock held) is left alone,
    with a warning."""
    try:
        st = path.lstat()
        if not stat.S_ISREG(st.st_mode):
            log.warning("ignoring %s: %s, not a claims file", path, kind(st.st_mode))
            return
        if time.time() - st.st_mtime < min_age_s:
            return
        # O_NONBLOCK, O_NOFOLLOW: what was swapped in since is never waited on nor followed
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return  # a live run's: it is about to name it
    finally:
        os.close(fd)
    path.unlink(missing_ok=True)
