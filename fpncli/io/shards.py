"""WebDataset tar shards plus a Parquet index (``--format wds``), on any fsspec filesystem.

Layout of an output root ``OUT`` (a folder, or an object-store URL such as ``s3://b/out``)::

    OUT/shard-<hash>.tar          plain members per image: KEY.p2.npy ... KEY.p2.png ... KEY.json
    OUT/_index/part-<hash>.parquet  the rows of that shard (and of the images that failed with it)
    OUT/index.parquet             one row per input (rewritten at the end of every run, even
                                  an interrupted one; show reads the ledger for a key it lacks)
    OUT/_claims/<token>.json      the keys a live run is extracting (``shardlock``; local OUT)
    OUT/.fpncli-wds               the marker: OUT is fpncli's, its shards and index may be cleaned

A shard is written under a temporary name and renamed when complete; its index part is written
after the rename, so the index never names a partial shard. A shard whose index part is missing
(a run killed between the two) is deleted before the next run, so a key is never in two shards.
Only in OUT that is fpncli's (``claim_root``), and only files named as fpncli names them: a
folder holding shards or an ``index.parquet`` of someone else is refused, never cleaned.
Several runs may write into one local OUT at once (``shardlock``: every commit holds OUT's lock,
every run claims its keys for its lifetime, and only dead runs' leftovers are cleaned up).
``<hash>`` is a digest of the shard's keys and settings: a retried shard overwrites itself. The
``_index`` parts are the resume ledger: an input file with an ``ok`` row is skipped by the next
run (``prepare_root``). A key is the image's output path, dots escaped (``wds_key``): one per path.

Each member is a plain file (``.npy`` from ``np.save``, PNG, JSON), so ``tarfile`` and
``np.load`` read a shard with neither fpncli nor Ray installed; ``KEY.json`` is the manifest
folder mode writes, and its ``levels[*].file`` names the member suffix (``KEY.`` + ``p2.npy``).
Member names and the index's strings are UTF-8: a file name's bytes that are not UTF-8 are
written there as ``\\xNN`` (``bad\\xff.png``); ``KEY.json`` has the exact path (JSON ``\\udcff``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
from collections.abc import Iterable
from pathlib import PurePosixPath

from .messages import utf8_text
from .outputs import OutputOptions
from .run_keys import legacy_options, options_for_key
from .shardlock import TOKEN_HEX

__all__ = [
    "INDEX",
    "INDEX_DIR",
    "PARTIAL",
    "WDS_MARKER",
    "check_member",
    "is_own_shard",
    "is_shard_name",
    "open_file",
    "open_root",
    "open_shard",
    "parse_size",
    "partial_name",
    "partial_token",
    "require_wds",
    "settings_key",
    "shard_digest",
    "shard_gone",
    "shard_name",
    "wds_key",
]

log = logging.getLogger(__name__)
INDEX = "index.parquet"
INDEX_DIR = "_index"
WDS_MARKER = ".fpncli-wds"
PARTIAL = ".partial"
# How ShardWriter names the shards it leaves in OUT (shard_name, partial_name) and the patterns
# that know them, in one place: a committed shard by its digest (shard_digest), a partial one by its
# run's token (shardlock.run_token) and a random part (an earlier version's: the random part
# alone), which the pattern takes at any length.
_DIGEST_HEX = 16


def _hex(digits: int | None = None) -> str:
    """A pattern of ``digits`` lowercase hex digits (None: one or more)."""
    return "[0-9a-f]" + (f"{{{digits}}}" if digits else "+")


SHARD_NAME = re.compile(rf"shard-{_hex(_DIGEST_HEX)}\.tar")
PARTIAL_NAME = re.compile(rf"shard-(?:({_hex(TOKEN_HEX)})-)?{_hex()}\.tar\.partial")
_KEY_ESCAPES = str.maketrans({"%": "%25", ".": "%2E", "\\": "%5C"})  # see wds_key
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}


def require_wds(url: str | None = None) -> None:
    """Raise a one-line ``ValueError`` saying how to install what ``--format wds`` needs, and
    what the object store of ``url`` (``s3://``, ``gs://``) needs (fsspec's backend for it)."""
    try:
        import fsspec
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError as e:
        raise ValueError(
            f"--format wds needs pyarrow and fsspec ({e.name} is missing): "
            "pip install 'fpncli[wds]'"
        ) from None
    if url is not None and "://" in str(url):
        protocol = str(url).split("://", 1)[0]
        try:
            fsspec.get_filesystem_class(protocol)
        except (ImportError, ValueError) as e:
            reason = " ".join(str(e).split()) or type(e).__name__
            raise ValueError(f"cannot open {url}: {reason}") from None


def parse_size(text: str | int) -> int:
    """``"1GB"``, ``"500MB"``, ``"64MiB"``, ``"1e9"``-free plain byte counts -> bytes."""
    if isinstance(text, int):
        return text
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(f"cannot read the size {text!r}: use e.g. 1GB, 500MB or 64MiB")
    number, unit = float(match.group(1)), (match.group(2) or "").lower()
    binary = "i" in unit
    factor = _UNITS[unit[:1] if unit[:1] in "kmgt" else ""]
    if binary:
        factor = 1024 ** {"k": 1, "m": 2, "g": 3, "t": 4}[unit[0]]
    size = int(number * factor)
    if size < 1:
        raise ValueError(f"the size must be at least one byte, got {text!r}")
    return size


def open_root(out: str):
    """``(fsspec filesystem, root path)`` for a folder or an object-store URL."""
    require_wds(out)
    import fsspec

    if "://" not in str(out):
        from pathlib import Path

        return fsspec.filesystem("file"), Path(out).absolute().as_posix()
    fs, root = fsspec.core.url_to_fs(str(out))
    return fs, root.rstrip("/")


def wds_key(relative: str | PurePosixPath) -> str:
    """A WebDataset sample key from an image's output path relative to OUT (``sub/a``).

    WebDataset readers split a member name at the first dot of its base name, so a key has no
    dots: ``.`` is written ``%2E``, and ``%`` and ``\\`` are escaped too (``%25``, ``%5C``),
    so that ``a.b`` (``a%2Eb``) and ``a_b`` keep their own keys. A name's bytes that are not
    UTF-8 become ``\\xNN`` (``messages.utf8_text``: tar member names and the index hold UTF-8),
    the only backslashes a key has. Distinct paths give distinct keys, in every run and every
    ``--shard``, so an image's key never depends on which other images a run has."""
    parts = [
        utf8_text(p.translate(_KEY_ESCAPES))
        for p in PurePosixPath(relative).parts
        if p not in ("", ".")
    ]
    return "/".join(parts) or "image"


def settings_key(options: OutputOptions, weights: dict, precision: str) -> str:
    """A digest of what shapes every image's outputs (weights, precision, output options)."""
    return _settings_digest(options_for_key(options), weights, precision)


def legacy_settings_key(options: OutputOptions, weights: dict, precision: str,
                        manifest: dict) -> str | None:  # fmt: skip
    """The ``settings_key`` an earlier version gave the extraction ``manifest`` (an image's
    ``KEY.json``) records if it was made with ``options`` (``run_keys.legacy_options``: those
    versions hashed ``--channel`` or ``--min-size`` as given where they change nothing); None
    where that is ``settings_key``'s."""
    chosen = legacy_options(options, manifest)
    return None if chosen is None else _settings_digest(chosen, weights, precision)


def _settings_digest(chosen: dict, weights: dict, precision: str) -> str:
    material = {
        "weights": [weights.get("name"), weights.get("sha256"), weights.get("seed")],
        "precision": precision,
        "options": chosen,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


def shard_digest(keys: Iterable[str]) -> str:
    text = "\n".join(sorted(keys))  # surrogatepass: any str hashes, whatever it holds
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:_DIGEST_HEX]


def shard_name(digest: str) -> str:
    """A committed shard's name: ``shard-<digest>.tar``."""
    return f"shard-{digest}.tar"


def partial_name(token: str) -> str:
    """A new partial shard's name: ``shard-<run token>-<random>.tar.partial``."""
    return f"shard-{token}-{uuid.uuid4().hex[:16]}.tar{PARTIAL}"


def is_shard_name(name) -> bool:
    """Whether ``name`` is a shard's name as ``ShardWriter`` gives it (``shard-<16 hex>.tar``;
    not another tool's ``shard-000000.tar``)."""
    return isinstance(name, str) and bool(SHARD_NAME.fullmatch(name))


def is_own_shard(name: str) -> bool:
    """Whether ``name`` is a shard's name as ``ShardWriter`` gives it, committed or partial."""
    return is_shard_name(name) or bool(PARTIAL_NAME.fullmatch(name))


def partial_token(name: str) -> str | None:
    """The run token in a partial shard's name, or None (an earlier version's, or not one)."""
    match = PARTIAL_NAME.fullmatch(name)
    return match[1] if match else None


def open_shard(fs, path: str) -> tuple:
    """``(binary file, size in bytes)`` of the tar shard at ``path`` on ``fs``, opened only if
    it is a regular file: a local one through ``guard.open_regular`` (``O_NONBLOCK`` and
    ``fstat`` on the descriptor: a FIFO in its place never blocks the reader, and a report's
    threads never sit in ``open`` past Ctrl-C), another filesystem's when ``fs.info`` says it
    is a file. The size (None where that filesystem does not say) bounds what its members may
    declare (``check_member``).

    Raises:
        FileNotFoundError: no such shard.
        ValueError: not a regular file (a folder, a FIFO, a device).
    """
    return open_file(fs, path, "tar shard")


def open_file(fs, path: str, what: str) -> tuple:
    """``open_shard`` for any file fpncli reads back from an output root (``what`` it is)."""
    from fsspec.implementations.local import LocalFileSystem

    if isinstance(fs, LocalFileSystem):
        from .guard import open_regular

        f = open_regular(path, what)
        return f, os.fstat(f.fileno()).st_size
    info = fs.info(path)  # FileNotFoundError: no such file
    if info.get("type") != "file":
        raise ValueError(f"{path}: not a regular file (a {info.get('type')}), not a {what}")
    size = info.get("size")
    return fs.open(path, "rb"), size if isinstance(size, int) else None


def shard_gone(shard: str, root: str, key: str) -> FileNotFoundError:
    """The error for a shard that the index of ``root`` names for ``key`` but that is gone. A
    plain rerun redoes the images of a gone shard alone (``_drop_lost_shards``); --overwrite
    would redo every image, so the advice does not name it."""
    return FileNotFoundError(
        f"{shard}, which the index of {root} names for {key!r}, is gone: restore it, or rerun "
        "the same extract command (without --overwrite) to redo its images"
    )


def check_member(shard: str, name: str, offset: int, size: int, shard_size: int | None) -> None:
    """Refuse a member whose header declares more data than the shard holds past its offset (a
    forged size of 10**12 bytes would otherwise be allocated and read): a one-line ValueError
    naming ``shard`` and the member ``name``."""
    if shard_size is not None and offset + size > shard_size:
        raise ValueError(
            f"{shard} is not a readable tar shard (its member {name} declares {size} bytes at "
            f"offset {offset}, past its end at {shard_size} bytes: truncated or forged)"
        )
