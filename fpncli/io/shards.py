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
import io
import json
import logging
import os
import re
import tarfile
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import PurePosixPath

import numpy as np

from ..model.names import OUTPUTS
from .atomic import DROP_BYTES, drop_from_cache
from .guard import quote_name, utf8_text
from .manifest import options_for_key
from .npy import npy_bytes
from .outputs import MANIFEST, OutputOptions, write_image_members
from .shardlock import CLAIMS_DIR, TOKEN_HEX, run_token, wds_lock

__all__ = [
    "INDEX",
    "INDEX_DIR",
    "ShardWriter",
    "WDS_MARKER",
    "check_root",
    "claim_root",
    "consolidate_index",
    "failed_row",
    "find_member",
    "open_root",
    "open_shard",
    "shard_gone",
    "parse_size",
    "prepare_root",
    "read_index",
    "require_wds",
    "settings_key",
    "wds_key",
]

log = logging.getLogger(__name__)
INDEX = "index.parquet"
INDEX_DIR = "_index"
WDS_MARKER = ".fpncli-wds"
_PARTIAL = ".partial"
# How ShardWriter names the shards it leaves in OUT (_shard_name, _partial_name) and the patterns
# that know them, in one place: a committed shard by its digest (_digest), a partial one by its
# run's token (shardlock.run_token) and a random part (an earlier version's: the random part
# alone), which the pattern takes at any length.
_DIGEST_HEX = 16


def _hex(digits: int | None = None) -> str:
    """A pattern of ``digits`` lowercase hex digits (None: one or more)."""
    return "[0-9a-f]" + (f"{{{digits}}}" if digits else "+")


_SHARD_NAME = re.compile(rf"shard-{_hex(_DIGEST_HEX)}\.tar")
_PARTIAL_NAME = re.compile(rf"shard-(?:({_hex(TOKEN_HEX)})-)?{_hex()}\.tar\.partial")
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
    UTF-8 become ``\\xNN`` (``guard.utf8_text``: tar member names and the index hold UTF-8),
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
    material = {
        "weights": [weights.get("name"), weights.get("sha256"), weights.get("seed")],
        "precision": precision,
        "options": options_for_key(options),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


def _schema():
    import pyarrow as pa

    fields = [
        ("key", pa.string()), ("source", pa.string()), ("status", pa.string()),
        ("error", pa.string()), ("shard", pa.string()), ("members", pa.list_(pa.string())),
        ("levels", pa.list_(pa.string())), ("dtype", pa.string()), ("settings", pa.string()),
        ("bytes", pa.int64()), ("written_at", pa.float64()), ("shard_bytes", pa.int64()),
    ]  # fmt: skip
    for level in OUTPUTS:  # stem, res2..res5 (with --levels), p2..p6; null where not written
        fields += [
            (f"{level}_shape", pa.list_(pa.int64())),
            (f"{level}_min", pa.float64()),
            (f"{level}_max", pa.float64()),
            (f"{level}_mean", pa.float64()),
        ]
    return pa.schema(fields)


def failed_row(key: str, source: str, reason: str, settings: str) -> dict:
    """The index row of an input that could not be extracted."""
    return {"key": key, "source": utf8_text(source), "status": "failed",
            "error": utf8_text(reason), "settings": settings,
            "written_at": time.time()}  # fmt: skip


def _ok_row(key: str, source: str, manifest: dict, members: list[str], size: int,
            settings: str) -> dict:  # fmt: skip
    row = {"key": key, "source": utf8_text(source), "status": "ok", "members": members,
           "bytes": size, "levels": list(manifest["levels"]), "settings": settings,
           "written_at": time.time()}  # fmt: skip
    for level, meta in manifest["levels"].items():
        row["dtype"] = meta["dtype"]
        row[f"{level}_shape"] = list(meta["shape"])
        for stat in ("min", "max", "mean"):
            row[f"{level}_{stat}"] = meta[stat]
    return row


def _table(rows: list[dict]):
    import pyarrow as pa

    schema = _schema()
    return pa.Table.from_pylist([{n: r.get(n) for n in schema.names} for r in rows], schema)


def _write_parquet(fs, path: str, rows: list[dict]) -> None:
    import pyarrow.parquet as pq

    tmp = f"{path}{_PARTIAL}{uuid.uuid4().hex[:8]}"
    try:
        with fs.open(tmp, "wb") as f:
            pq.write_table(_table(rows), f)
        fs.mv(tmp, path)
    except BaseException:  # a full disk, Ctrl-C: no half-written part left behind
        try:
            fs.rm(tmp)
        except OSError as e:
            log.debug("cleaning up %s: %s", tmp, e)
        raise


def _digest(keys: Iterable[str]) -> str:
    text = "\n".join(sorted(keys))  # surrogatepass: any str hashes, whatever it holds
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:_DIGEST_HEX]


def _shard_name(digest: str) -> str:
    """A committed shard's name: ``shard-<digest>.tar``."""
    return f"shard-{digest}.tar"


def _partial_name(token: str) -> str:
    """A new partial shard's name: ``shard-<run token>-<random>.tar.partial``."""
    return f"shard-{token}-{uuid.uuid4().hex[:16]}.tar{_PARTIAL}"


def _to_bytes(data: bytes | np.ndarray) -> bytes:
    if isinstance(data, np.ndarray):
        return npy_bytes(data)
    return bytes(data)


class ShardWriter:
    """Pack images into tar shards of about ``target_bytes`` under ``root``; thread-safe.

    ``write_image`` renders one image (the same files as folder mode) and appends its members to
    the open shard, which is committed (renamed, then its index part written) once it reaches
    ``target_bytes``, at ``close``, or at every ``commit``. ``fail`` records a failed input; its
    row goes into the next index part. ``abort`` drops the open shard (never renamed).
    """

    def __init__(self, fs, root: str, *, target_bytes: int, settings: str,
                 crash_after: int | None = None, token: str | None = None) -> None:  # fmt: skip
        self.fs, self.root = fs, root
        self.token = token or run_token()  # the run's: names its partial shards
        self.target_bytes = target_bytes
        self.settings = settings
        self.crash_after = crash_after  # crash tests: os._exit after this many images
        self.added = 0
        self.lock = threading.Lock()
        self.rows: list[dict] = []  # rows of the open shard, and failures since the last commit
        self.keys: list[str] = []
        self.dropped = 0  # images written into shards that were then dropped (_abort)
        self.dropped_bytes = 0  # and the bytes the run counted written for them
        self.tar: tarfile.TarFile | None = None
        self.file = None
        self.tmp: str | None = None
        self.shards: list[str] = []  # committed shard names, in order
        self.parts = 0  # index parts written (a shard's, or failures alone)
        fs.makedirs(f"{root}/{INDEX_DIR}", exist_ok=True)

    def write_image(self, key: str, source: str, **render) -> int:
        """Render one image (``render``: the keyword arguments of ``write_image_members``) and
        add it to the open shard; returns the bytes added."""
        members: list[tuple[str, bytes]] = []

        def collect(name: str, data) -> int:
            blob = _to_bytes(data)
            members.append((f"{key}.{'json' if name == MANIFEST else name}", blob))
            return len(blob)

        size = write_image_members(collect, **render)
        manifest = json.loads(members[-1][1])
        with self.lock:
            if self.crash_after is not None and self.added >= self.crash_after:
                log.warning("crash test: exiting hard after %d images", self.added)
                os._exit(75)  # as SIGKILL would: no cleanup, a partial shard left behind
            if self.tar is None:
                self._open()
            now = int(time.time())
            try:
                for name, blob in members:
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime, info.mode = len(blob), now, 0o644
                    self.tar.addfile(info, io.BytesIO(blob))
                if size >= DROP_BYTES:  # a local shard: out of the page cache, as folder files
                    drop_from_cache(self.file)
            except BaseException:  # the tar may hold half a member: drop the whole shard
                self._abort()
                raise
            self.keys.append(key)
            self.rows.append(
                _ok_row(key, source, manifest, [n for n, _ in members], size, self.settings)
            )
            self.added += 1
            if self.file.tell() >= self.target_bytes:
                try:
                    self._commit()  # drops the shard if it fails (a full disk at its end)
                except BaseException:
                    # this image is dropped with it, but the caller, hearing the error, never
                    # counted it written: it is not counted dropped either
                    self.dropped -= 1
                    self.dropped_bytes -= size
                    raise
        return size

    def fail(self, key: str, source: str, reason: str) -> None:
        with self.lock:
            self.rows.append(failed_row(key, source, reason, self.settings))

    def commit(self) -> None:
        """Commit the open shard (if any) and the failures recorded so far."""
        with self.lock:
            self._commit()

    close = commit

    def abort(self) -> None:
        """Drop the open shard (its images will be redone by the next run)."""
        with self.lock:
            self._abort()

    def _abort(self) -> None:
        if self.tar is not None:
            log.warning("dropping the unfinished shard %s (%d images)", self.tmp, len(self.keys))
            for closing in (self.tar.close, self.file.close, lambda: self.fs.rm(self.tmp)):
                try:
                    closing()
                except OSError as e:
                    log.debug("cleaning up %s: %s", self.tmp, e)
        self.tar = self.file = self.tmp = None
        self.dropped_bytes += sum(r["bytes"] or 0 for r in self.rows if r["status"] == "ok")
        self.rows = [r for r in self.rows if r["status"] != "ok"]
        self.dropped += len(self.keys)
        self.keys = []

    def _open(self) -> None:
        self.tmp = f"{self.root}/{_partial_name(self.token)}"
        self.file = self.fs.open(self.tmp, "wb")
        self.tar = tarfile.open(fileobj=self.file, mode="w|", format=tarfile.PAX_FORMAT)

    def _commit(self) -> None:
        """Commit the open shard and the rows since the last commit; if that fails (a full disk
        as the tar's end or the index part is written), the shard is dropped (``_abort``: its
        images counted in ``dropped``) and the error raised."""
        try:
            self._commit_or_raise()
        except BaseException:
            self._abort()
            raise

    def _commit_or_raise(self) -> None:
        shard = None
        if self.tar is not None:
            self.tar.close()
            size = self.file.tell()  # the whole tar, end blocks included: resume checks it
            self.file.close()
            shard = _shard_name(_digest([self.settings, *self.keys]))
            for row in self.rows:
                if row["status"] == "ok":
                    row["shard"], row["shard_bytes"] = shard, size
        if self.tar is not None or self.rows:
            part = shard[:-4] if shard else f"failed-{_digest(r['key'] for r in self.rows)}"
            path = f"{self.root}/{INDEX_DIR}/part-{part}.parquet"
            # OUT's lock: no other run plans (and cleans up) between the rename and the part
            with wds_lock(self.fs, self.root):
                if shard is not None:
                    self.fs.mv(self.tmp, f"{self.root}/{shard}")
                try:
                    if self.rows:
                        _write_parquet(self.fs, path, self.rows)
                        self.parts += 1
                except BaseException:  # a shard without its index part is no shard: removed
                    if shard is not None:
                        try:
                            self.fs.rm(f"{self.root}/{shard}")
                        except OSError as e:  # the next run's cleanup removes it
                            log.debug("removing %s: %s", shard, e)
                    raise
                if shard is not None:
                    self.shards.append(shard)
        self.tar = self.file = self.tmp = None
        self.rows, self.keys = [], []


def is_shard_name(name) -> bool:
    """Whether ``name`` is a shard's name as ``ShardWriter`` gives it (``shard-<16 hex>.tar``;
    not another tool's ``shard-000000.tar``)."""
    return isinstance(name, str) and bool(_SHARD_NAME.fullmatch(name))


def is_own_shard(name: str) -> bool:
    """Whether ``name`` is a shard's name as ``ShardWriter`` gives it, committed or partial."""
    return is_shard_name(name) or bool(_PARTIAL_NAME.fullmatch(name))


def partial_token(name: str) -> str | None:
    """The run token in a partial shard's name, or None (an earlier version's, or not one)."""
    match = _PARTIAL_NAME.fullmatch(name)
    return match[1] if match else None


def _forged(key, status, shard) -> str | None:
    """Why an index row cannot be one fpncli wrote (None when it can be): its key must be a
    relative path (as ``wds_key`` makes: no ``..``, ``.`` or empty part, not absolute), its
    status ``ok`` or ``failed``, and its shard a name ``ShardWriter`` gives (``is_shard_name``,
    in OUT itself), never a path nor another tool's shard beside fpncli's."""
    if not isinstance(key, str) or not key:
        return "a row without a key"
    if key.startswith("/") or "\0" in key or {"", ".", ".."} & set(key.split("/")):
        return f"the key {key!r} is not a relative path"
    if status not in ("ok", "failed"):
        return f"the status of {key!r} is {status!r}"
    if (status == "ok" or shard is not None) and not is_shard_name(shard):
        return f"the shard {shard!r} is not a shard name"
    return None


def _valid_rows(table, path: str, warn: bool):
    """``table`` without the rows ``_forged`` refuses, each part's dropped rows in one warning
    (``warn``; else a debug message) that says to delete the part: fpncli leaves it on disk, as
    every file it cannot prove it wrote (a part with forged rows was at least edited by someone
    else, and may be theirs), so the warning is repeated by every run and report until then."""
    import pyarrow as pa

    columns = [table.column(n).to_pylist() for n in ("key", "status", "shard")]
    why = [_forged(*row) for row in zip(*columns)]
    bad = [w for w in why if w is not None]
    if not bad:
        return table
    log.log(logging.WARNING if warn else logging.DEBUG,
            "%s: ignoring %d of its rows, which fpncli did not write (%s): an image only they "
            "record counts as not extracted; fpncli leaves a file it did not write: delete "
            "this one to stop this warning (its shard's images are then redone), or start the "
            "output afresh with --overwrite",
            path, len(bad), bad[0])  # fmt: skip
    return table.filter(pa.array([w is None for w in why]))


def read_index(fs, root: str, *, ledger: bool = True, warn: bool = True):
    """The index rows as a pyarrow Table: every part of the ledger (``ledger``), or the
    consolidated ``index.parquet``. Empty when there is none. A row that fpncli cannot have
    written (a null key or status, a key or shard that is not a relative name) is left out with
    a warning (``warn``; else a debug message, for a second read in one run), so no reader or
    cleanup ever opens, writes or removes a file outside ``root``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = (
        sorted(fs.glob(f"{root}/{INDEX_DIR}/part-*.parquet"))
        if ledger
        else [p for p in [f"{root}/{INDEX}"] if fs.exists(p)]
    )
    schema = _schema()
    tables = []
    for path in paths:
        try:
            f, _ = _open_file(fs, path, "Parquet index part")  # a FIFO: refused, not waited on
            with f:
                table = pq.read_table(f)
            for column in schema:  # a part written before a column existed: null there
                if column.name not in table.column_names:
                    table = table.append_column(column, pa.nulls(len(table), column.type))
            table = table.select(schema.names).cast(schema)  # a column of another type fails
        except FileNotFoundError:  # removed since it was listed (--overwrite, a lost shard's part)
            continue
        except (pa.ArrowException, OSError, ValueError) as e:
            why = " ".join(str(e).split()).removeprefix(f"{path}: ")
            raise ValueError(
                f"{path} is not a readable Parquet index part ({why}): "
                "delete it and rerun the extraction (the images of its shard are then redone)"
            ) from None
        tables.append(_valid_rows(table, path, warn))
    return pa.concat_tables(tables) if tables else schema.empty_table()


def check_root(fs, root: str) -> None:
    """Check that fpncli may write ``root``: it is fpncli's (it holds ``WDS_MARKER``, or the
    ``_index`` ledger, which earlier versions, writing no marker, made at the start of every
    run: their outputs still resume), or holds nothing fpncli would take for its own (a
    ``shard-*.tar``, an ``index.parquet``, a ``_claims`` folder): fpncli never deletes, overwrites
    or indexes files it did not write, such as a WebDataset's ``shard-000000.tar``.

    Raises:
        ValueError: ``root`` is not fpncli's and holds such files; write to another output.
    """
    if fs.exists(f"{root}/{WDS_MARKER}") or fs.isdir(f"{root}/{INDEX_DIR}"):
        return
    names = [f"{root}/{INDEX}", f"{root}/{CLAIMS_DIR}"]
    found = sorted(fs.glob(f"{root}/shard-*.tar*")) + [p for p in names if fs.exists(p)]
    if found:
        first = PurePosixPath(found[0]).name
        more = f" and {len(found) - 1} more" if len(found) > 1 else ""
        raise ValueError(
            f"{root} holds {first}{more}, which fpncli did not write (it has no {WDS_MARKER}) "
            "and never deletes or overwrites: give another -o"
        )


def claim_root(fs, root: str) -> None:
    """``check_root``, then mark ``root`` (``WDS_MARKER``) as fpncli's, to clean up and write.
    Call it holding ``wds_lock``, before anything else touches ``root``. Raises as
    ``check_root``."""
    check_root(fs, root)
    marker = f"{root}/{WDS_MARKER}"
    if not fs.exists(marker):  # a new root, or one an earlier version wrote
        fs.makedirs(root, exist_ok=True)
        with fs.open(marker, "wb") as f:
            f.write(b"fpncli --format wds output: fpncli cleans up its shards and index here\n")


def _own_shards(fs, root: str) -> list[str]:
    """The shards in ``root`` named as ``ShardWriter`` names them (committed or partial)."""
    paths = fs.glob(f"{root}/shard-*.tar*")
    return [p for p in paths if is_own_shard(PurePosixPath(p).name)]


def prepare_root(fs, root: str, sources: dict[str, str], settings: str, *, overwrite: bool,
                 live_tokens: frozenset[str] = frozenset()) -> set[str]:  # fmt: skip
    """Make ``root`` ready for a run over ``sources`` (key -> the input file's absolute path);
    return the keys already done (to skip).

    Removes partial shards and shards whose index part is missing (a killed run's), so they
    are redone into one shard each; the partial shards of the live runs ``live_tokens`` are
    kept. ``overwrite`` removes every shard and the index first. Only the files named as
    fpncli names them go: call it after ``claim_root``, holding ``wds_lock``.

    An input file the index has ``ok`` is done, under its key there (which an earlier version
    may have given it: ``a.b.jpg`` was ``a_b``): an image is never in the shards twice. A key
    the index has ``ok`` for another file is refused, neither skipped (that image would never
    be extracted) nor redone (shards are only appended to: the key would be in two of them).

    Raises:
        ValueError: ``root`` holds images made with other weights or options (that would mix
            two extractions in one index), or other files under these keys (``p2/a.jpg`` and
            then ``other/a.jpg`` are both ``a``); use another output or ``--overwrite``.
    """
    if overwrite:
        ledger = fs.glob(f"{root}/{INDEX_DIR}/part-*")
        for path in _own_shards(fs, root) + ledger:
            fs.rm(path)
        if fs.exists(f"{root}/{INDEX}"):
            fs.rm(f"{root}/{INDEX}")
        return set()
    parts = {PurePosixPath(p).name[5:-8] for p in fs.glob(f"{root}/{INDEX_DIR}/part-*.parquet")}
    # (index.parquet's temporary: consolidate_index writes it holding the lock held here)
    partials = fs.glob(f"{root}/{INDEX_DIR}/*{_PARTIAL}*") + fs.glob(f"{root}/{INDEX}{_PARTIAL}*")
    for path in _own_shards(fs, root) + partials:
        name = PurePosixPath(path).name
        if partial_token(name) in live_tokens:
            continue  # another live run's open shard
        if _PARTIAL in name or name[:-4] not in parts:
            log.info("removing %s (left by an interrupted run)", path)
            fs.rm(path)
    columns = ["key", "source", "status", "settings", "shard", "bytes", "shard_bytes"]
    rows = read_index(fs, root).select(columns).to_pylist()
    lost = _drop_lost_shards(fs, root, rows)  # the ledger read once, its lost shards' rows left
    ok = [r for r in rows if r["status"] == "ok" and r["shard"] not in lost]
    by_key = {r["key"]: r for r in ok}
    by_source = {r["source"]: r for r in reversed(ok) if r["source"] is not None}
    done, other, clashes = set(), 0, []
    for key, source in sources.items():
        source = utf8_text(source)  # as the index holds it
        row = by_source.get(source) or by_key.get(key)
        if row is not None and row["source"] not in (None, source):
            clashes.append((key, row["source"], source))
        elif row is not None and row["settings"] != settings:
            other += 1
        elif row is not None:
            done.add(key)
    if other:
        raise ValueError(
            f"{other} of these images are already in {root} with other weights or options: "
            "write to another output, or pass --overwrite to replace its shards"
        )
    if clashes:
        key, held, source = clashes[0]
        raise ValueError(
            f"{len(clashes)} of these images would take keys that {root} holds for other files "
            f"({key!r} is {quote_name(held)}, not {quote_name(source)}): write to another "
            "output, give the images under distinct paths, or pass --overwrite to replace its "
            "shards"
        )
    return done


def _drop_lost_shards(fs, root: str, rows: list[dict]) -> set[str]:
    """A shard that is gone, or not the size it was committed with (deleted or truncated after
    its run), loses its index part (and what is left of it), so that the next run redoes its
    images instead of skipping them. ``rows``: the ledger's rows (``status``, ``shard``,
    ``bytes``, ``shard_bytes``). A part written before ``shard_bytes`` was recorded is checked
    as well as it can be: its shard must hold at least its members' data (``bytes``), which a
    shard cut by less than its tar headers passes. Returns the shards so dropped."""
    lost = set()
    listed: dict[str, int] = {}
    committed: dict[str, int] = {}
    for row in rows:
        if row["status"] == "ok" and row["shard"]:
            listed[row["shard"]] = listed.get(row["shard"], 0) + (row["bytes"] or 0)
            if row.get("shard_bytes") is not None:
                committed[row["shard"]] = row["shard_bytes"]
    for shard, members in sorted(listed.items()):
        path = f"{root}/{shard}"
        size = fs.size(path) if fs.exists(path) else None
        exact = committed.get(shard)
        if size is not None and (size == exact if exact is not None else size >= members):
            continue
        if size is None:
            what = "is gone"
        elif exact is not None:
            what = f"holds {size} bytes, not the {exact} it was committed with"
        else:
            what = f"holds {size} bytes, less than its {members}"
        log.warning("%s %s: its images will be redone", path, what)
        lost.add(shard)
        if size is not None:
            fs.rm(path)
        part = f"{root}/{INDEX_DIR}/part-{shard[:-4]}.parquet"
        if fs.exists(part):
            fs.rm(part)
    return lost


def consolidate_index(fs, root: str) -> int:
    """Write ``index.parquet``: one row per key (its ``ok`` row, else its latest failure).
    Returns the number of rows. Forged rows are left out without a warning: call it at the end
    of a run whose ``prepare_root`` read the ledger (and warned) first.

    Raises:
        ValueError: ``root`` is not fpncli's (``claim_root``): its ``index.parquet`` is left.
    """
    with wds_lock(fs, root):  # the ledger as of now, and one writer of index.parquet at a time
        if not fs.exists(f"{root}/{WDS_MARKER}"):
            raise ValueError(f"{root} has no {WDS_MARKER}: it is not an fpncli output to index")
        # quietly: the run that consolidates has warned of a forged part when it planned
        rows = read_index(fs, root, warn=False).to_pylist()
        best: dict[str, dict] = {}
        for row in sorted(rows, key=lambda r: r["written_at"] or 0.0):
            if best.get(row["key"], {}).get("status") != "ok":
                best[row["key"]] = row
        _write_parquet(fs, f"{root}/{INDEX}", sorted(best.values(), key=lambda r: r["key"]))
    return len(best)


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
    return _open_file(fs, path, "tar shard")


def _open_file(fs, path: str, what: str) -> tuple:
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
    """The error for a shard that the index of ``root`` names for ``key`` but that is gone."""
    return FileNotFoundError(
        f"{shard}, which the index of {root} names for {key!r}, is gone: restore it, or rerun "
        "the extract command with --overwrite"
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


def find_member(fs, root: str, key: str) -> tuple[str, dict[str, bytes]]:
    """``(shard, {suffix: bytes})`` of ``key``'s members (``p2.npy``, ``json``, ...), found
    through ``index.parquet``, else (a key it lacks or has failed) through the ledger.

    Raises:
        FileNotFoundError: no such key, or the key failed (the message says why); its shard
            is gone.
        ValueError: the shard is not a regular file (``open_shard``), not a readable tar
            (garbage, a bad header, truncated), or a member of the key declares more bytes
            than the shard holds (``check_member``).
    """
    consolidated = fs.exists(f"{root}/{INDEX}")
    table = read_index(fs, root, ledger=not consolidated).to_pylist()
    rows = [r for r in table if r["key"] == key]
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok and consolidated:
        # index.parquet is rewritten at a run's end: the ledger has what a run still going (or
        # one killed) committed since, as report and diff read it
        table = read_index(fs, root).to_pylist()
        rows = sorted((r for r in table if r["key"] == key), key=lambda r: r["written_at"] or 0.0)
        ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        why = f" (it failed: {rows[-1]['error']})" if rows else ""
        escaped = wds_key(key)  # an output path given as the key (a.b for a%2Eb)
        if not rows and escaped != key and any(r["key"] == escaped for r in table):
            why = f" (did you mean {escaped!r}, the key of that path?)"
        raise FileNotFoundError(f"no image with key {key!r} in {root}{why}")
    shard, prefix = ok[0]["shard"], f"{key}."
    found = {}
    try:
        f, shard_size = open_shard(fs, f"{root}/{shard}")
    except FileNotFoundError:
        raise shard_gone(shard, root, key) from None
    with f:
        # seekable (local files, fsspec's buffered files): tarfile skips other members' data by
        # seeking, reading only their 512-byte headers; a key's members are written together,
        # so the scan stops at the first member after them
        try:
            with tarfile.open(fileobj=f, mode="r:" if f.seekable() else "r|") as tar:
                for info in tar:
                    if info.name.startswith(prefix) and "/" not in info.name[len(prefix) :]:
                        where = f"{root}/{shard}"
                        check_member(where, info.name, info.offset_data, info.size, shard_size)
                        found[info.name[len(prefix) :]] = tar.extractfile(info).read()
                    elif found:
                        break
        except tarfile.TarError as e:
            raise ValueError(f"{root}/{shard} is not a readable tar shard ({e})") from None
    if not found:
        raise FileNotFoundError(f"{shard} in {root} does not hold {key!r}: the index is stale")
    return shard, found
