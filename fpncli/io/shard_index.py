"""The Parquet index of a wds output root (``shards`` describes the layout): the rows each
shard's ``_index`` part holds, reading them back as the resume ledger, claiming, preparing and
cleaning up a root before a run, consolidating ``index.parquet``, and finding an image's
members through it.
"""

from __future__ import annotations

import logging
import tarfile
import time
import uuid
from collections.abc import Callable
from pathlib import PurePosixPath

from ..model.names import OUTPUTS
from .guard import parse_json
from .messages import quote_name, utf8_text
from .shardlock import CLAIMS_DIR, wds_lock
from .shards import (
    INDEX,
    INDEX_DIR,
    PARTIAL,
    WDS_MARKER,
    check_member,
    is_own_shard,
    is_shard_name,
    open_file,
    open_shard,
    partial_token,
    shard_gone,
    wds_key,
)

__all__ = ["DamagedIndexError", "check_root", "claim_root", "consolidate_index", "failed_row",
           "find_member", "find_shard", "has_ledger", "ok_row", "prepare_root", "read_index",
           "write_parquet"]  # fmt: skip

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


def prepare_root(
    fs, root: str, sources: dict[str, str], settings: str, *, overwrite: bool,
    live_tokens: frozenset[str] = frozenset(),
    legacy_settings: Callable[[dict], str | None] | None = None,
) -> set[str]:  # fmt: skip
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

    ``legacy_settings``: the settings digest an earlier version gave the extraction an image's
    ``KEY.json`` records, were it made with this run's options (``legacy_settings_key``). Rows
    of another digest are this run's where it gives that digest for one of their images (read
    once per digest, only for those that differ): those versions hashed options that change
    nothing (``--channel`` with ``--reduce mean``) as given.

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
    partials = fs.glob(f"{root}/{INDEX_DIR}/*{PARTIAL}*") + fs.glob(f"{root}/{INDEX}{PARTIAL}*")
    for path in _own_shards(fs, root) + partials:
        name = PurePosixPath(path).name
        if partial_token(name) in live_tokens:
            continue  # another live run's open shard
        if PARTIAL in name or name[:-4] not in parts:
            log.info("removing %s (left by an interrupted run)", path)
            fs.rm(path)
    columns = ["key", "source", "status", "settings", "shard", "bytes", "shard_bytes"]
    rows = read_index(fs, root).select(columns).to_pylist()
    lost = _drop_lost_shards(fs, root, rows)  # the ledger read once, its lost shards' rows left
    ok = [r for r in rows if r["status"] == "ok" and r["shard"] not in lost]
    by_key = {r["key"]: r for r in ok}
    by_source = {r["source"]: r for r in reversed(ok) if r["source"] is not None}
    done, other, clashes = set(), 0, []
    same = {settings: True}  # settings digest -> this run's (an earlier version's key of it)

    def is_same(row: dict) -> bool:
        digest = row["settings"]
        if digest not in same:
            same[digest] = legacy_settings is not None and _legacy_same(
                fs, root, row, legacy_settings
            )
        return same[digest]

    for key, source in sources.items():
        source = utf8_text(source)  # as the index holds it
        row = by_source.get(source) or by_key.get(key)
        if row is not None and row["source"] not in (None, source):
            clashes.append((key, row["source"], source))
        elif row is not None and not is_same(row):
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


def _legacy_same(fs, root: str, row: dict, legacy_settings: Callable[[dict], str | None]) -> bool:
    """Whether ``row``'s settings digest is the one ``legacy_settings`` gives the manifest
    (``KEY.json``) of its image; False where that cannot be read (the rows are then another
    extraction's, as without ``legacy_settings``)."""
    try:
        manifest = parse_json(_members(fs, root, row["shard"], row["key"])["json"])
    except (OSError, ValueError, KeyError, UnicodeDecodeError):
        return False
    return isinstance(manifest, dict) and legacy_settings(manifest) == row["settings"]


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
    return shard, _members(fs, root, shard, key)


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


def _members(fs, root: str, shard: str, key: str) -> dict[str, bytes]:
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
