"""The Parquet index of a wds output root (``shards`` describes the layout): the rows each
shard's ``_index`` part holds, reading them back as the resume ledger, consolidating
``index.parquet``, and finding an image's members through it. Claiming and preparing a root
before a run is ``shard_root``'s.
"""

from __future__ import annotations

import logging
import tarfile
import time
import uuid

from ..model.names import OUTPUTS
from .messages import utf8_text
from .shardlock import wds_lock
from .shards import (
    INDEX,
    INDEX_DIR,
    PARTIAL,
    WDS_MARKER,
    check_member,
    is_shard_name,
    open_file,
    open_shard,
    shard_gone,
    wds_key,
)

__all__ = ["DamagedIndexError", "consolidate_index", "failed_row", "find_member", "find_shard",
           "has_ledger", "ok_row", "read_index", "read_members", "write_parquet"]  # fmt: skip

log = logging.getLogger(__name__)


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


def ok_row(key: str, source: str, manifest: dict, members: list[str], size: int,
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


def write_parquet(fs, path: str, rows: list[dict]) -> None:
    import pyarrow.parquet as pq

    tmp = f"{path}{PARTIAL}{uuid.uuid4().hex[:8]}"
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


class DamagedIndexError(ValueError):
    """``index.parquet`` is not a Parquet index (garbage, a damaged page, a column of another
    type). It holds no rows of its own: every run rebuilds it from the ledger, which a reader
    may read instead (``has_ledger``); the message says what to do either way."""

    def __init__(self, path: str, why: str, ledger: bool) -> None:
        advice = (
            f"the next run of the extract command rebuilds it from the {INDEX_DIR} ledger "
            "(or delete it)"
            if ledger
            else f"restore it, or extract the images again (there is no {INDEX_DIR} ledger "
            "to rebuild it from)"
        )
        super().__init__(f"{path} is not a readable Parquet index ({why}): {advice}")
        self.ledger = ledger


def has_ledger(fs, root: str) -> bool:
    """Whether ``root`` holds an index part of the ledger (``INDEX_DIR``)."""
    return bool(fs.glob(f"{root}/{INDEX_DIR}/part-*.parquet"))


def read_index(fs, root: str, *, ledger: bool = True, warn: bool = True):
    """The index rows as a pyarrow Table: every part of the ledger (``ledger``), or the
    consolidated ``index.parquet``. Empty when there is none. A row that fpncli cannot have
    written (a null key or status, a key or shard that is not a relative name) is left out with
    a warning (``warn``; else a debug message, for a second read in one run), so no reader or
    cleanup ever opens, writes or removes a file outside ``root``.

    Raises:
        ValueError: a part that is not a Parquet index (garbage, a damaged page, a column of
            another type): the message says to delete it. ``DamagedIndexError`` for such an
            ``index.parquet``.
        OSError: a part that could not be read (too many open files, permission denied, an
            I/O error): the message says why; the part is left as it is, perhaps healthy.
    """
    import pyarrow as pa
    import pyarrow.dataset  # noqa: F401 - read_table imports it on its first call: not in the
    import pyarrow.parquet as pq  # loop below, where too many open files would fail the import

    paths = (
        sorted(fs.glob(f"{root}/{INDEX_DIR}/part-*.parquet"))
        if ledger
        else [p for p in [f"{root}/{INDEX}"] if fs.exists(p)]
    )
    schema = _schema()
    tables = []
    for path in paths:
        try:
            f, _ = open_file(fs, path, "Parquet index part")  # a FIFO: refused, not waited on
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
            if isinstance(e, OSError) and e.errno is not None:  # the system's, not the part's
                error = OSError(f"could not read {path}: {e.strerror or why}")
                error.errno = e.errno  # (as is_disk_full and the CLI's hints read it)
                raise error from None
            # pyarrow's errors, and its errno-less OSError for a damaged page: the content
            if ledger:
                raise ValueError(
                    f"{path} is not a readable Parquet index part ({why}): "
                    "delete it and rerun the extraction (the images of its shard are then redone)"
                ) from None
            raise DamagedIndexError(path, why, has_ledger(fs, root)) from None
        tables.append(_valid_rows(table, path, warn))
    return pa.concat_tables(tables) if tables else schema.empty_table()


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
        write_parquet(fs, f"{root}/{INDEX}", sorted(best.values(), key=lambda r: r["key"]))
    return len(best)


def find_member(fs, root: str, key: str) -> tuple[str, dict[str, bytes]]:
    """``(shard, {suffix: bytes})`` of ``key``'s members (``p2.npy``, ``json``, ...), found
    through the index (``find_shard``).

    Raises:
        FileNotFoundError: no such key, or the key failed (the message says why); its shard
            is gone.
        ValueError: the shard is not a regular file (``open_shard``), not a readable tar
            (garbage, a bad header, truncated), or a member of the key declares more bytes
            than the shard holds (``check_member``).
    """
    shard = find_shard(fs, root, key)
    return shard, read_members(fs, root, shard, key)


def find_shard(fs, root: str, key: str, *, warn: bool = True) -> str:
    """The shard that holds ``key``'s members, found through ``index.parquet``, else (a key it
    lacks or has failed, or an ``index.parquet`` that is damaged: with a warning) through the
    ledger; no shard is read. ``warn`` False: the index's warnings as debug messages, for a
    look that a read of the key follows (which warns).

    Raises:
        FileNotFoundError: no such key, or the key failed (the message says why).
        ValueError, OSError: an index that cannot be read (``read_index``).
    """
    consolidated = fs.exists(f"{root}/{INDEX}")
    try:
        table = read_index(fs, root, ledger=not consolidated, warn=warn).to_pylist()
    except DamagedIndexError as e:
        if not e.ledger:
            raise
        # index.parquet only restates the ledger (report reads the ledger alone): read that
        log.log(logging.WARNING if warn else logging.DEBUG,
                "%s; reading the %s ledger instead", e, INDEX_DIR)  # fmt: skip
        table, consolidated = read_index(fs, root, warn=warn).to_pylist(), False
    rows = [r for r in table if r["key"] == key]
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok and consolidated:
        # index.parquet is rewritten at a run's end: the ledger has what a run still going (or
        # one killed) committed since, as report and diff read it
        table = read_index(fs, root, warn=warn).to_pylist()
        rows = sorted((r for r in table if r["key"] == key), key=lambda r: r["written_at"] or 0.0)
        ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        why = f" (it failed: {rows[-1]['error']})" if rows else ""
        escaped = wds_key(key)  # an output path given as the key (a.b for a%2Eb)
        if not rows and escaped != key and any(r["key"] == escaped for r in table):
            why = f" (did you mean {escaped!r}, the key of that path?)"
        raise FileNotFoundError(f"no image with key {key!r} in {root}{why}")
    return ok[0]["shard"]


def read_members(fs, root: str, shard: str, key: str) -> dict[str, bytes]:
    """``{suffix: bytes}`` of ``key``'s members in ``shard`` (``find_member``'s errors)."""
    prefix, found = f"{key}.", {}
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
    return found
