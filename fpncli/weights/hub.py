"""Named checkpoints: downloading them once into the cache (``cache``), and turning a
``--weights`` value into a file (``resolve_weights``).

A download goes to a new
temporary file in that folder (``.STEM.XXXXXXXX.part.SUFFIX``, locked while it is written), is
checked (size, digest, strict load), and only then renamed, so a half-downloaded file never looks
like a checkpoint; one a killed download left is removed by the next download. Its sha256 is kept
next to it (``NAME.sha256``) and re-checked by ``cache.verify_cached``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import logging
import os
import re
import stat
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from ..io.guard import check_regular_file
from ..io.messages import ONE_LINE_LIMIT, error_text, one_line
from .cache import (
    MAX_CHECKPOINT_BYTES,
    WeightsDownloadError,
    WrongCheckpointError,
    cached_path,
    exclusive_file,
    record_sha256,
)
from .registry import REGISTRY, WeightsSpec

__all__ = ["LoggedProgress", "download", "resolve_weights"]

log = logging.getLogger(__name__)
_CHUNK = 1 << 20
#: ``cache.MAX_CHECKPOINT_BYTES``: no detector checkpoint is near it. A server that announces
#: more (with no size in the registry) is refused before anything is written, and one that sends
#: more (an endless body) is cut off there: the disk is never filled.
MAX_DOWNLOAD_BYTES = MAX_CHECKPOINT_BYTES
#: A download that brings fewer than _STALL_BYTES in _STALL_WINDOW_S seconds is given up. The
#: socket timeout is per read, so a server dripping a byte every few seconds would otherwise hold
#: it for ever. 256 KiB a minute (4 KiB/s) is far below any real link, however slow (the 166 MB
#: default checkpoint would take 11 hours at that rate), and far above a drip.
_STALL_WINDOW_S = 60.0
_STALL_BYTES = 256 << 10
#: Where flock is refused (some network filesystems) a temporary file cannot say whether its
#: writer is alive: one untouched this long is a dead one's (a live download writes at least
#: _STALL_BYTES a minute, or gives up).
_STALE_PART_AGE_S = 3600.0


class LoggedProgress:
    """A download's progress as INFO lines of the ``fpncli`` logger, one per tenth of its size
    (the library's default; ``logging.basicConfig(level=logging.INFO)`` shows them), so a slow
    download is seen to move. ``download``'s ``progress`` takes this or another class called as
    it is: with the label, the address and the size (None: unknown), then with the bytes
    received so far, then ``close()`` (the CLI's draws a bar on a terminal: ``cli.download_bar``).
    """

    def __init__(self, label: str, url: str, total: int | None) -> None:
        self.label, self.total, self.start = label, total, time.monotonic()
        self._next_line = max(1, total // 10) if total else 0

    def __call__(self, done: int) -> None:
        if self.total and done >= self._next_line:
            step = max(1, self.total // 10)
            self._next_line = (done // step + 1) * step
            rate = done / max(time.monotonic() - self.start, 1e-6) / 1e6
            log.info("%s: %.1f/%.1f MB, %.1f MB/s", self.label, done / 1e6, self.total / 1e6, rate)

    def close(self) -> None:
        pass


def download(
    spec: WeightsSpec,
    *,
    progress: Callable[[str, str, int | None], LoggedProgress] | None = LoggedProgress,
    check: Callable[[Path, WeightsSpec], None] | None = None,
    timeout_s: float = 30.0,
    alternative: str | None = None,
) -> Path:
    """Download ``spec`` into the cache, check it, then rename it into place.

    The body goes to a new temporary file in the cache, removed whatever ends the download
    (an error, Ctrl-C); what a killed download left is removed first (a concurrent download's
    is left alone). A server that announces or sends more than the registry's size (or
    ``MAX_DOWNLOAD_BYTES``) is cut off, and so is one that stalls (fewer than 256 KiB a minute).

    Args:
        spec: the registry entry.
        progress: what shows the progress (``LoggedProgress``: INFO lines of the ``fpncli``
            logger; the CLI passes its display on stderr); None: nothing.
        check: called with the temporary file and ``spec`` before the rename (fpncli passes
            ``checkpoint.check_registry_file``: a strict load into ``spec``'s architecture).
        timeout_s: socket timeout (of each read).
        alternative: what else the caller can do when the address fails, said after putting
            the file by hand (``resolve_weights``: use the random weights; ``fpncli weights
            download`` has no such option).

    Returns:
        The final path in the cache.

    Raises:
        WeightsDownloadError: one line: the address or the transfer failed (the message names
            it and where to put the file by hand), the file failed a check, the cache cannot
            be written, or something that is not a file is where the checkpoint goes.
    """
    final = cached_path(spec)
    hint = f"download it by hand and put it at {final}" + (
        f", or {alternative}" if alternative else ""
    )
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        instead = f", or {alternative}" if alternative else ""
        if (blocker := _not_a_folder(final.parent)) is not None:  # "[Errno 17] File exists"
            raise WeightsDownloadError(
                f"cannot create the weights cache {final.parent}: {blocker} is "
                f"{'a file, not a folder' if blocker.is_file() else 'not a folder'}; move it "
                f"away or set FPNCLI_HOME to a folder{instead}"
            ) from None
        raise WeightsDownloadError(
            f"cannot create the weights cache {final.parent} ({e.strerror or e}): set "
            f"FPNCLI_HOME to a writable folder{instead}"
        ) from None
    try:  # a folder there: refused now, not once the whole file has come
        check_regular_file(final, "file")
    except FileNotFoundError:
        pass  # not there (or a dangling symlink, which the rename replaces)
    except (ValueError, OSError) as e:
        raise WeightsDownloadError(
            f"cannot download {spec.name}: {error_text(e)}, where the checkpoint goes; move it "
            "away and run the command again"
        ) from None
    _remove_stale_parts(final)
    try:
        fd, tmp = _new_part(final)
    except OSError as e:
        raise WeightsDownloadError(
            f"cannot write in the weights cache {final.parent} ({e.strerror or e}): set "
            "FPNCLI_HOME to a writable folder" + (f", or {alternative}" if alternative else "")
        ) from None
    log.info("downloading %s from %s", spec.name, spec.url)
    try:
        with open(fd, "wb", closefd=False) as f:
            done, digest, length = _fetch(spec, f, progress, timeout_s, hint)
        _check_download(spec, tmp, done, digest, spec.size_bytes or length, check, hint)
        try:
            os.replace(tmp, final)
        except OSError as e:
            raise WeightsDownloadError(  # (the hint names the path)
                f"cannot rename the download of {spec.name} into place ({e.strerror or e}); {hint}"
            ) from None
    except BaseException:  # Ctrl-C and SIGTERM (as fpncli turns it) too: nothing left behind
        with contextlib.suppress(OSError):  # a read-only cache: the error says why, not this
            tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)  # the lock with it
    try:
        record_sha256(final, digest)
    except OSError as e:  # checked against the published digest (if any) on first use instead
        log.warning("cannot record the sha256 of %s: %s", final, e)
    log.info("saved %s (%d bytes, sha256 %s)", final, done, digest)
    return final


def _fetch(
    spec: WeightsSpec, f, progress, timeout_s: float, hint: str
) -> tuple[int, str, int | None]:
    """Copy ``spec.url``'s body into ``f``: ``(bytes, sha256, announced size or None)``."""
    limit = spec.size_bytes or MAX_DOWNLOAD_BYTES
    most = (
        f"the {limit} bytes expected"
        if spec.size_bytes
        else f"{limit} bytes, the most fpncli takes for a checkpoint"
    )

    def failed(reason: str) -> WeightsDownloadError:
        return WeightsDownloadError(
            _fit(f"could not download {spec.name} from {spec.url} (", reason, f"); {hint}")
        )

    digest, done, bar = hashlib.sha256(), 0, None
    try:
        with urllib.request.urlopen(spec.url, timeout=timeout_s) as response:
            length = _content_length(response.headers)
            if length is not None and length > limit:
                raise failed(f"it announces {length} bytes, more than {most}")
            total = length or spec.size_bytes
            if progress:
                bar = progress(f"downloading {spec.name}", spec.url, total)
            window_start, window_done = time.monotonic(), 0
            # read1: what has arrived (one read of the socket), so the stall check below runs
            # however slowly it comes (read() waits for a whole chunk)
            while chunk := response.read1(_CHUNK):
                done += len(chunk)
                if done > limit:
                    raise failed(f"it sent more than {most}: stopped there")
                f.write(chunk)
                digest.update(chunk)
                if bar is not None:
                    bar(done)
                now = time.monotonic()
                if now - window_start >= _STALL_WINDOW_S:
                    if done - window_done < _STALL_BYTES:
                        raise failed(
                            f"stalled: {done - window_done} bytes in the last "
                            f"{now - window_start:.0f} s, {done} in all"
                        )
                    window_start, window_done = now, done
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise failed(_failure_reason(e, done)) from None
    finally:
        if bar is not None:
            bar.close()
    return done, digest.hexdigest(), length


def _content_length(headers) -> int | None:
    """The body size a response announces; None where there is none, or it is no number (then
    the body is read to its end, and the size and load checks judge it)."""
    try:
        length = int(headers.get("Content-Length") or "")
    except ValueError:
        return None
    return length if length > 0 else None


def _failure_reason(error: BaseException, done: int) -> str:
    """Why a transfer failed, for the one-line error."""
    if isinstance(error, http.client.IncompleteRead):
        got = done + len(error.partial)
        return f"the connection closed in the middle of the body, after {got} bytes: cut short"
    if isinstance(error, http.client.RemoteDisconnected):  # (a BadStatusLine too)
        return error_text(error)
    if isinstance(error, http.client.BadStatusLine):
        return f"not an HTTP response: {error_text(error)}"
    if isinstance(error, http.client.HTTPException):
        return f"a malformed HTTP response: {error_text(error)}"
    reason = getattr(error, "reason", error)  # URLError's (an OSError, or text)
    return error_text(reason) if isinstance(reason, BaseException) else str(reason)


def _not_a_folder(folder: Path) -> Path | None:
    """The file (anything but a folder) that stands where ``folder`` or one of the folders
    above it goes, if any."""
    for path in (folder, *folder.parents):
        if os.path.lexists(path):
            return None if path.is_dir() else path
    return None


def _check_download(
    spec: WeightsSpec,
    tmp: Path,
    done: int,
    digest: str,
    expected: int | None,
    check: Callable[[Path, WeightsSpec], None] | None,
    hint: str,
) -> None:
    """Refuse a downloaded file of the wrong size or digest, or that ``check`` refuses, in one
    line naming the checkpoint (never the temporary file, deleted by then, nor its address: the
    name says which, ``fpncli weights list`` where from, and a long address with a long cache
    path took the line past one_line's 500 characters, cutting off what to do)."""
    again = f"try again, or {hint}"
    if done == 0:
        raise WeightsDownloadError(f"{spec.name}: the server sent nothing; {again}")
    if expected and done < expected:
        raise WeightsDownloadError(
            f"{spec.name}: the download was cut short ({done} of {expected} bytes); {again}"
        )
    if expected and done > expected:
        raise WeightsDownloadError(
            f"{spec.name}: the server sent {done} bytes, more than the {expected} expected: not "
            f"the published checkpoint; {hint}"
        )
    wrong = None  # (the digests cut short, as the whole line must fit)
    if spec.sha256 and digest != spec.sha256:
        wrong = f"does not match the published one ({digest[:16]}... is not {spec.sha256[:16]}...)"
    elif spec.sha256_prefix and not digest.startswith(spec.sha256_prefix):
        wrong = f"does not start with the published {spec.sha256_prefix} ({digest[:16]}...)"
    if wrong:
        raise WeightsDownloadError(
            f"{spec.name}: the sha256 of the download {wrong}: damaged on the way, or not the "
            f"published file; {again}"
        )
    if check is None:
        return
    try:
        check(tmp, spec)
    except (ValueError, RuntimeError, OSError) as e:
        reason = error_text(e).replace(f"{tmp}: ", "").replace(str(tmp), "it")
        if isinstance(e, WrongCheckpointError):  # the address serves another file: no retry
            raise WeightsDownloadError(
                _fit(f"{spec.name}: the download is not its checkpoint (", reason, f"); {hint}")
            ) from None
        cause = "not a checkpoint" if expected else "cut short, or not a checkpoint"
        raise WeightsDownloadError(
            _fit(f"{spec.name}: the download does not load (", reason, f"): {cause}; {again}")
        ) from None


def _fit(before: str, reason: str, after: str) -> str:
    """``before + reason + after`` in one line within one_line's 500 characters: the reason (an
    error's or a server's words, of any length) cut short to fit, never what to do after it."""
    room = ONE_LINE_LIMIT - len(before) - len(after)
    return before + one_line(reason, max(room, 40)) + after


def _new_part(final: Path) -> tuple[int, Path]:
    """A new temporary file for a download of ``final`` (``.STEM.XXXXXXXX.part.SUFFIX``: its
    suffix kept, as a checkpoint's error names it), locked (``flock``) while its descriptor is
    open: ``_remove_stale_parts`` tells a live download's from a dead one's by the lock."""
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


def _remove_stale_parts(final: Path) -> None:
    """Remove the temporary files killed downloads of ``final`` left: ``_new_part``'s that no
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


def resolve_weights(
    weights: str | os.PathLike,
    *,
    download_missing: bool = True,
    check: Callable[[Path, WeightsSpec], None] | None = None,
    progress: Callable[[str, str, int | None], LoggedProgress] | None = LoggedProgress,
) -> tuple[Path, WeightsSpec | None]:
    """Turn a ``--weights`` value (a registry name or a file path) into a local file.

    A registry name that is not cached is downloaded (unless ``download_missing`` is False),
    its progress shown by ``progress`` (``download``'s: logged by default). A
    ``Path`` (any ``os.PathLike``) is always a file, never a registry name: ``Path("random")``
    is a file named random.

    Raises:
        FileNotFoundError: a path that does not exist, or a name not cached with downloads off.
        ValueError: neither a file nor a registry name, or a folder, FIFO or device.
        WeightsDownloadError: the download failed.
    """
    named = isinstance(weights, str)  # else a Path: a file, whatever its name
    weights = os.fspath(weights)
    if named and not weights.strip():  # Path("") would be the current folder
        raise ValueError(f"weights: {_EMPTY_WEIGHTS}")
    spec = REGISTRY.get(weights) if named else None
    if spec is None:
        path = Path(weights).expanduser()
        if path.is_file():
            return path, None
        if os.path.lexists(path):  # a folder, FIFO, device or dangling symlink: say which
            check_regular_file(path, "weights file")
        if not named or path.suffix in (".pkl", ".pth", ".pt") or os.sep in weights:
            raise FileNotFoundError(f"weights file not found: {weights}")
        known = ", ".join(REGISTRY)
        raise ValueError(f"unknown weights {weights!r}: not a file, nor one of {known}, random")
    path = cached_path(spec)
    if path.is_file():
        return path, spec
    if not download_missing:
        raise FileNotFoundError(
            f"{spec.name} is not cached at {path}; run 'fpncli weights download {spec.name}'"
        )
    return download(spec, progress=progress, check=check, alternative=_RANDOM_INSTEAD), spec


#: What a run that takes a ``--weights`` value (or the API's ``weights=``) can do offline.
_RANDOM_INSTEAD = "use --weights random ('random' in Python)"
#: An empty ``--weights`` value (or ``weights=""``), as ``-o ''`` is refused.
_EMPTY_WEIGHTS = (
    "an empty value (an unset shell variable?): name a checkpoint file, a registry name (see "
    "'fpncli weights list') or random"
)
