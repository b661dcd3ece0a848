"""A wds output root before a run (``shards`` describes the layout): checking that it is
fpncli's and claiming it, removing what interrupted runs and lost shards left, and reading its
index (``shard_index``) for the images already done, to skip them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import PurePosixPath

from .guard import parse_json
from .messages import quote_name, utf8_text
from .shard_index import read_index, read_members
from .shardlock import CLAIMS_DIR
from .shards import INDEX, INDEX_DIR, PARTIAL, WDS_MARKER, is_own_shard, partial_token

__all__ = ["check_root", "claim_root", "prepare_root"]

log = logging.getLogger(__name__)


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
            then ``other/a.jpg`` are both ``a``); use another output or ``--overwrite``. With
            ``overwrite``: ``root`` holds images of other files than ``sources`` (removing
            every shard would lose them; ``_check_overwrite``).
    """
    if overwrite:
        _check_overwrite(fs, root, sources)
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


def _check_overwrite(fs, root: str, sources: dict[str, str]) -> None:
    """Refuse ``--overwrite`` where ``root`` holds images (``ok`` in its index) that are not
    among ``sources``' (``_is_theirs``): a wds output is only appended to, so ``--overwrite``
    removes every shard, and ``extract a.jpg -o OUT --overwrite`` would lose every other image
    of OUT (a folder output keeps the other images' folders). The ledger is read, else (a part
    damaged) ``index.parquet``; where neither can be read, what would be lost cannot be told:
    refused too."""
    try:
        try:
            table = read_index(fs, root, warn=False)
        except (ValueError, OSError):
            table = read_index(fs, root, ledger=False, warn=False)
    except (ValueError, OSError) as e:
        raise ValueError(
            f"--overwrite would remove all the shards of {root}, whose index cannot be read to "
            f"tell what they hold ({e}): remove them yourself to start it afresh"
        ) from None
    mine = {utf8_text(source) for source in sources.values()}
    others = {}
    for row in table.select(["key", "source", "status"]).to_pylist():
        if row["status"] == "ok" and _is_theirs(row, sources, mine):
            others[row["key"]] = row["source"]
    if others:
        key = min(others)
        source = others[key]
        made_from = f", made from {quote_name(source)}" if source else ""
        raise ValueError(
            f"{root} holds {len(others)} other images than these ({key!r}{made_from}"
            f"{', ...' if len(others) > 1 else ''}): --overwrite of a --format wds output "
            "removes all its shards, theirs too; give their files as well, write to another "
            "output, or remove its shards yourself"
        )


def _is_theirs(row: dict, sources: dict[str, str], mine: set[str]) -> bool:
    """Whether an index row is the image of another file than this run's: not one of its
    files, and under a key it does not give, or under one it gives another file that is still
    there (``extract r1 r2``, then ``extract r2 --overwrite``: r2's ``q`` is not r1's). A file
    gone since (the photos moved) is this run's to redo under its key, as a folder output's
    are; so is the same file through another path (a hard link)."""
    source = row["source"]
    if source in mine:
        return False
    if row["key"] not in sources:
        return True
    if source is None:  # an earlier version's row, without its file: the key's
        return False
    try:
        return not os.path.samefile(source, sources[row["key"]])
    except (OSError, ValueError):  # gone (or a path no file can have)
        return False


def _legacy_same(fs, root: str, row: dict, legacy_settings: Callable[[dict], str | None]) -> bool:
    """Whether ``row``'s settings digest is the one ``legacy_settings`` gives the manifest
    (``KEY.json``) of its image; False where that cannot be read (the rows are then another
    extraction's, as without ``legacy_settings``)."""
    try:
        manifest = parse_json(read_members(fs, root, row["shard"], row["key"])["json"])
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
