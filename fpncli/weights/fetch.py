"""A download's transfer: reading a checkpoint's address into a file within the size cap and
the stall limit, a failure said in one line, and the checks of the bytes received (size, digest,
the caller's strict load) before ``hub.download`` renames them into place.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from ..io.messages import ONE_LINE_LIMIT, error_text, one_line
from .cache import MAX_CHECKPOINT_BYTES, WeightsDownloadError, WrongCheckpointError
from .registry import WeightsSpec

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


def fetch(
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


def check_download(
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
