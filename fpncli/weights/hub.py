"""Named checkpoints: downloading them once into the cache (``cache``), and turning a
``--weights`` value into a file (``resolve_weights``).

A download goes to a new
temporary file in that folder (``partfiles``: ``.STEM.XXXXXXXX.part.SUFFIX``, locked while it is
written), is read from its address and checked (``fetch``: size, digest, strict load), and only
then renamed here, so a half-downloaded file never looks like a checkpoint; one a killed download
left is removed by the next download. Its sha256 is kept next to it (``NAME.sha256``) and
re-checked by ``cache.verify_cached``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from ..io.guard import check_regular_file
from ..io.messages import error_text
from .cache import WeightsDownloadError, cached_path, record_sha256
from .fetch import check_download, fetch
from .partfiles import new_part, remove_stale_parts
from .registry import REGISTRY, WeightsSpec

__all__ = ["LoggedProgress", "download", "resolve_weights"]

log = logging.getLogger(__name__)


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
    remove_stale_parts(final)
    try:
        fd, tmp = new_part(final)
    except OSError as e:
        raise WeightsDownloadError(
            f"cannot write in the weights cache {final.parent} ({e.strerror or e}): set "
            "FPNCLI_HOME to a writable folder" + (f", or {alternative}" if alternative else "")
        ) from None
    log.info("downloading %s from %s", spec.name, spec.url)
    try:
        with open(fd, "wb", closefd=False) as f:
            done, digest, length = fetch(spec, f, progress, timeout_s, hint)
        check_download(spec, tmp, done, digest, spec.size_bytes or length, check, hint)
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


def _not_a_folder(folder: Path) -> Path | None:
    """The file (anything but a folder) that stands where ``folder`` or one of the folders
    above it goes, if any."""
    for path in (folder, *folder.parents):
        if os.path.lexists(path):
            return None if path.is_dir() else path
    return None


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
