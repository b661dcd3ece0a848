"""The weights cache: where named checkpoints live and whether the files there are theirs.

The cache folder is ``$FPNCLI_HOME``, else ``weights/`` of a source checkout, else the user's
cache directory (``$XDG_CACHE_HOME/fpncli`` or ``~/.cache/fpncli``). A checkpoint's sha256 is
kept next to it (``NAME.sha256``) once it is downloaded (``hub.download``) and re-checked by
``verify_cached``. A file put in the cache by hand has none: its first use checks it against the
published sha256 (``check_cached``) and, once it has loaded, records it (``record_first_use``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..io.messages import error_text, kind
from .registry import REGISTRY, WeightsSpec

__all__ = [
    "WeightsDownloadError",
    "WrongCheckpointError",
    "CacheEntry",
    "too_large",
    "cache_dir",
    "cached_path",
    "cache_state",
    "check_cached",
    "record_first_use",
    "record_sha256",
    "recorded_sha256",
    "sha256_file",
    "verify_cached",
]

log = logging.getLogger(__name__)
_CHUNK = 1 << 20
#: No Detectron2 or torchvision detector checkpoint (heads and optimizer state included) is
#: anywhere near this: a larger file is refused before it is read or hashed (safeload's
#: ``check_file_size`` uses this limit too; this module imports no torch).
MAX_CHECKPOINT_BYTES = 4 << 30
_HEX64 = re.compile(r"[0-9a-f]{64}")


def too_large(size: int) -> str | None:
    """Why a file of ``size`` bytes is no detection checkpoint (over ``MAX_CHECKPOINT_BYTES``),
    for a message; None for one that may be."""
    if size <= MAX_CHECKPOINT_BYTES:
        return None
    return (
        f"{size} bytes, over {MAX_CHECKPOINT_BYTES >> 30} GiB, larger than any detection checkpoint"
    )


class WeightsDownloadError(RuntimeError):
    """A named checkpoint could not be downloaded or failed its checks."""


class WrongCheckpointError(ValueError):
    """A checkpoint that reads, but is not the registry entry's: another architecture (or
    format) than the one the entry builds. Trying again gets the same file: it must be
    replaced."""


def cache_dir() -> Path:
    """The folder named checkpoints are cached in (not created here)."""
    if env := os.environ.get("FPNCLI_HOME"):
        return Path(env).expanduser()
    checkout = Path(__file__).resolve().parents[2]  # fpncli/weights/cache.py -> the checkout
    if (checkout / "setup.py").is_file() and (checkout / "weights").is_dir():
        return checkout / "weights"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fpncli"


def cached_path(spec: WeightsSpec) -> Path:
    """Where ``spec``'s file is (or would be) in the cache."""
    return cache_dir() / spec.file_name


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def recorded_sha256(path: Path) -> str | None:
    """The digest recorded when ``path`` was downloaded or first used, if any.

    A sidecar that does not start with a 64-hex digest (empty, cut short, not text) or cannot be
    read is damaged: it counts as none (logged), so the file is checked against the published
    digest, if any, and its digest recorded again once it passes, as for a file placed by hand
    (one that fails gets none).
    """
    side = _sidecar(path)
    if not side.is_file():
        return None
    try:
        fields = side.read_bytes().split()
    except OSError as e:
        log.warning("cannot read %s (%s): ignored", side, e)
        return None
    digest = fields[0].decode("ascii", "replace").lower() if fields else ""
    if not _HEX64.fullmatch(digest):
        log.warning("%s holds no sha256 digest (damaged?): ignored; the checkpoint counts as "
                    "placed by hand: its digest is recorded again once it passes its checks",
                    side)  # fmt: skip
        return None
    return digest


def record_sha256(path: Path, digest: str) -> None:
    """Write ``path``'s sidecar (through an exclusive temporary file, then a rename).

    Raises:
        OSError: the cache cannot be written (read-only, full); nothing is left behind.
    """
    side = _sidecar(path)
    fd, tmp = exclusive_file(side.with_name(f".{side.name}."), ".tmp")
    try:
        with open(fd, "w", encoding="ascii") as f:
            f.write(f"{digest}  {path.name}\n")
        os.replace(tmp, side)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def exclusive_file(prefix: Path, suffix: str) -> tuple[int, Path]:
    """A new file ``PREFIX<random>SUFFIX``, made with ``O_EXCL`` (no other process, on this
    machine or in another container sharing the folder, where a pid is no name, can have
    it), readable by all as the umask allows (``mkstemp`` would make it the owner's only,
    and the cache may be shared); its descriptor and path."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    while True:
        path = prefix.with_name(f"{prefix.name}{secrets.token_hex(4)}{suffix}")
        try:
            return os.open(path, flags, 0o666), path
        except FileExistsError:
            continue


def _check_digest(spec: WeightsSpec, digest: str) -> None:
    if spec.sha256 and digest != spec.sha256:
        raise WeightsDownloadError(
            f"{spec.name}: sha256 {digest} does not match the published {spec.sha256}"
        )
    if spec.sha256_prefix and not digest.startswith(spec.sha256_prefix):
        raise WeightsDownloadError(
            f"{spec.name}: sha256 {digest} does not start with {spec.sha256_prefix}"
        )


def check_cached(spec: WeightsSpec, path: Path, digest: str) -> None:
    """Refuse ``spec``'s cached file ``path`` (of sha256 ``digest``) when it changed since it was
    downloaded or first used, or is not the published checkpoint (a file placed by hand has no
    recorded digest: the published one is all there is to check it against). Nothing is
    recorded here: ``record_first_use`` once the file has loaded.

    Raises:
        ValueError: one line naming the file and what to do.
    """
    fix = f"delete it and run 'fpncli weights download {spec.name}'"
    recorded = recorded_sha256(path)
    if recorded is not None and recorded != digest:
        raise ValueError(
            f"{path} changed since it was downloaded (sha256 {digest}, recorded {recorded}); {fix}"
        )
    try:
        _check_digest(spec, digest)
    except WeightsDownloadError:
        published = spec.sha256 or f"{spec.sha256_prefix}..."
        raise ValueError(
            f"{path} does not match the published {spec.name} checkpoint (sha256 {digest}, "
            f"published {published}): a damaged or different file; {fix}"
        ) from None


def record_first_use(path: Path, digest: str) -> None:
    """Record the sha256 of a cached file placed by hand (none recorded yet) once it has passed
    ``check_cached`` and loaded: later uses are checked against it. A junk file that failed to
    load must not get its digest recorded (``weights verify`` would then call it ok). A
    read-only cache: nothing recorded, checked again next time."""
    if recorded_sha256(path) is not None:
        return
    try:
        record_sha256(path, digest)
    except OSError as e:
        log.debug("cannot record the sha256 of %s: %s", path, e)


@dataclass(frozen=True)
class CacheEntry:
    """The state of one registry entry in the cache, as ``verify_cached`` found it."""

    name: str
    path: Path
    status: str  # cache_state's, or verify_cached's: "ok", "missing", "damaged", "mismatch",
    # "unrecorded"
    detail: str = ""


def cache_state(spec: WeightsSpec) -> CacheEntry:
    """Whether ``spec``'s cached file is usable: present, of the published size and, where a
    digest is known (published or recorded at download), with that sha256.

    Status ``"cached"``, ``"not cached"``, ``"damaged"`` or ``"unreadable"`` (``detail`` says why
    and what to do): one entry's error is its status, never raised.
    """
    path = cached_path(spec)
    if not path.is_file():
        return CacheEntry(spec.name, path, "not cached", _in_the_way(path))
    fix = f"delete it and run 'fpncli weights download {spec.name}'"
    try:
        wrong_size = _size_problem(spec, path.stat().st_size)
        if wrong_size:
            return CacheEntry(spec.name, path, "damaged", f"{wrong_size}; {fix}")
        recorded = recorded_sha256(path)
        digest = sha256_file(path) if spec.sha256 or spec.sha256_prefix or recorded else None
    except OSError as e:
        return CacheEntry(spec.name, path, "unreadable", str(e.strerror or e))
    if digest is not None:
        wrong = (
            (spec.sha256 and digest != spec.sha256)
            or (spec.sha256_prefix and not digest.startswith(spec.sha256_prefix))
            or (recorded and digest != recorded)
        )
        if wrong:
            detail = f"sha256 {digest[:16]}... is not the expected one; {fix}"
            return CacheEntry(spec.name, path, "damaged", detail)
    return CacheEntry(spec.name, path, "cached")


def _in_the_way(path: Path) -> str:
    """What stands where a checkpoint that is not cached goes, which a download refuses (a
    folder, a FIFO, a symlink loop), and what to do; "" where nothing does."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        return "a symlink loop is in its place: move it away" if e.errno == errno.ELOOP else ""
    return "" if stat.S_ISREG(mode) else f"{kind(mode)} is in its place: move it away"


def _size_problem(spec: WeightsSpec, size: int) -> str | None:
    """Why a cached file of ``size`` bytes cannot be ``spec``'s checkpoint, or None: judged
    before the file is hashed (hashing a file over ``MAX_CHECKPOINT_BYTES`` takes a while)."""
    if (why := too_large(size)) is not None:
        return why
    if size == 0 or (spec.size_bytes and size != spec.size_bytes):
        expected = f"expected {spec.size_bytes}" if spec.size_bytes else "an empty file"
        return f"{size} bytes, {expected} (a partial copy?)"
    return None


def verify_cached(
    names: list[str] | None = None,
    *,
    check: Callable[[Path, WeightsSpec], None] | None = None,
) -> list[CacheEntry]:
    """Re-hash cached checkpoints and compare with the recorded and published digests.

    Status ``"missing"``; ``"damaged"`` (the wrong size, as ``cache_state`` judges it, or, with
    ``check``, a file whose digest is neither published nor recorded that fails it);
    ``"mismatch"`` (a digest); else ``"unrecorded"`` (its digest is recorded now) or ``"ok"``.
    A damaged or mismatched file never gets its digest recorded.

    Args:
        names: registry names (default: all).
        check: called with a file no published sha256 vouches for and its registry entry
            before its digest is recorded, as ``download`` calls it before accepting a file
            (fpncli passes ``checkpoint.check_registry_file``: a strict load into the entry's
            architecture); raises ValueError, RuntimeError or OSError for a file that is not
            usable (``WrongCheckpointError`` for a checkpoint of another architecture).
    """
    entries = []
    for name in names or list(REGISTRY):
        spec = REGISTRY[name]
        path = cached_path(spec)
        if not path.is_file():
            in_the_way = _in_the_way(path)
            detail = f"({in_the_way})" if in_the_way else ""
            entries.append(CacheEntry(name, path, "missing", detail))
            continue
        wrong_size = _size_problem(spec, path.stat().st_size)
        if wrong_size:
            entries.append(CacheEntry(name, path, "damaged", wrong_size))
            continue
        digest = sha256_file(path)
        recorded = recorded_sha256(path)
        problems = []
        if recorded and recorded != digest:
            problems.append(f"sha256 {digest} != recorded {recorded}")
        try:
            _check_digest(spec, digest)
        except WeightsDownloadError as e:  # the entry's line names the checkpoint already
            problems.append(str(e).removeprefix(f"{name}: "))
        if problems:
            entries.append(CacheEntry(name, path, "mismatch", "; ".join(problems)))
            continue
        if recorded is None and spec.sha256 is None and check is not None:
            try:  # placed by hand, and nothing published to compare it with: it must load
                check(path, spec)
            except WrongCheckpointError as e:
                detail = f"not the {name} checkpoint ({error_text(e)})"
                entries.append(CacheEntry(name, path, "damaged", detail))
                continue
            except (ValueError, RuntimeError, OSError) as e:
                detail = f"does not load as a checkpoint ({error_text(e)})"
                entries.append(CacheEntry(name, path, "damaged", detail))
                continue
        if recorded is None:
            try:
                record_sha256(path, digest)
                detail = f"sha256 {digest} now recorded"
            except OSError as e:  # a read-only cache: the file is as good, its digest unkept
                detail = f"sha256 {digest} (not recorded: {e.strerror or e})"
            entries.append(CacheEntry(name, path, "unrecorded", detail))
        else:
            entries.append(CacheEntry(name, path, "ok", f"sha256 {digest}"))
    return entries
