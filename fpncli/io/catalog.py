"""The extractions of an output root, whatever its format: one iterator for report and diff.

An output root of ``fpncli extract`` is either a folder of image folders (``--format files``,
each with ``manifest.json``), one image folder itself, or WebDataset tar shards with a Parquet
index (``--format wds``, see ``io.shards``). ``open_extractions(root)`` tells them apart and
gives the same view of both:

>>> found = open_extractions("fpn_out")
>>> for ex in found:                  # one image at a time, in storage order
...     ex.key, ex.valid("p3").shape
>>> found.load("sub/a").manifest      # one image by key

Arrays are never all in memory: an image folder's ``.npy`` files are memory-mapped, and a
shard's members are read one image at a time by seeking to them (a table of member offsets is
kept for the few shards read last), never extracted to disk.
"""

from __future__ import annotations

import collections
import os
import stat
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .extraction import (
    LoadedExtraction,
    check_level_array,
    find_manifests,
    load_extraction,
    manifest_levels,
)
from .guard import parse_json
from .manifest import MANIFEST, check_manifest, is_file_name, load_manifest, manifest_files
from .npy import npy_from_bytes
from .recorded_input import recorded_input
from .run_log import read_run_log

__all__ = ["Extractions", "open_extractions", "iter_extractions", "is_sharded"]

_TABLES = 4  # shards whose member offsets are kept


def is_sharded(root: str | Path) -> bool:
    """Whether ``root`` is the output of a ``--format wds`` run (an index is there), or a URL."""
    if "://" in str(root):
        return True
    root = Path(root)
    # an image folder may be called _index in folder mode: it holds a manifest, not parts
    return (root / "index.parquet").is_file() or any((root / "_index").glob("part-*.parquet"))


def open_extractions(root: str | Path) -> Extractions:
    """The extractions under ``root``: a folder of image folders, one image folder, or the
    output of a ``--format wds`` run (a folder or an fsspec URL).

    Raises:
        FileNotFoundError: no such folder.
        ValueError: a shard output without pyarrow and fsspec installed (says how to install).
    """
    if is_sharded(root):
        return _Shards(str(root))
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"no such folder: {root}")
    return _Folders(path)


def iter_extractions(root: str | Path) -> Iterator[LoadedExtraction]:
    """Every extraction under ``root``, one at a time (see ``open_extractions``). An image
    whose outputs cannot be read (a manifest that is not valid JSON, a truncated ``.npy``)
    raises its ValueError there: to go on past it, ``load`` each of ``open_extractions(root)
    .keys()`` in a ``try``, as the report does."""
    return iter(open_extractions(root))


@dataclass(frozen=True)
class Failure:
    """An input that was not extracted: its path and why."""

    path: str
    reason: str


class Extractions:
    """What an output root holds. ``keys`` are the images' paths relative to the root
    (``sub/a``; the folder's own name for a single image folder), in storage order."""

    root: str
    format: str  # "files" or "wds"
    single: bool = False  # the root is one image folder

    def keys(self) -> list[str]:
        raise NotImplementedError

    def load(self, key: str) -> LoadedExtraction:
        """One image's levels, manifest and input photo. FileNotFoundError for an unknown key."""
        raise NotImplementedError

    def manifest(self, key: str) -> dict:
        """One image's manifest, without reading its tensors."""
        raise NotImplementedError

    def size(self, key: str) -> int:
        """The bytes one image's outputs take."""
        raise NotImplementedError

    def source(self, key: str) -> str | None:
        """The real path of the input file the image was made from, as its manifest records it
        (``input.real_path``); None where none is recorded (an earlier version's) or the
        manifest cannot be read (``load`` says why)."""
        try:
            return recorded_input(self.manifest(key))
        except (ValueError, OSError):
            return None

    def failures(self) -> list[Failure]:
        """Inputs that failed: the last run's (``run.json``) for folders, every key of the
        index without an ``ok`` row for shards."""
        raise NotImplementedError

    def link(self, key: str, name: str) -> str | None:
        """A file of the image (``overview.png``, ``p2.png``) as a path relative to the root,
        when it lies on disk as a file of its own (never inside a shard)."""
        return None

    def manifests(self) -> Iterator[tuple[str, dict]]:
        for key in self.keys():
            yield key, self.manifest(key)

    def __iter__(self) -> Iterator[LoadedExtraction]:
        for key in self.keys():
            yield self.load(key)

    def __len__(self) -> int:
        return len(self.keys())


class _Folders(Extractions):
    format = "files"

    def __init__(self, root: Path) -> None:
        self.root = str(root)
        self.path = root
        # every folder with a manifest.json, read or not: one that cannot be read is listed
        # (with why, by load and manifest), never silently left out
        self.single = os.path.lexists(root / MANIFEST)
        if self.single:
            self._folders = {root.resolve().name: root}
        else:
            found = find_manifests(root)
            self._folders = {p.relative_to(root).as_posix(): p for p in found}

    def keys(self) -> list[str]:
        return list(self._folders)

    def _folder(self, key: str) -> Path:
        try:
            return self._folders[key]
        except KeyError:
            raise FileNotFoundError(f"no image {key!r} in {self.root}") from None

    def load(self, key: str) -> LoadedExtraction:
        ex = load_extraction(self._folder(key))
        ex.key = key
        return ex

    def manifest(self, key: str) -> dict:
        manifest = load_manifest(self._folder(key))  # ValueError: one that cannot be read
        if manifest is None:
            raise FileNotFoundError(f"{self._folder(key)}/{MANIFEST} is gone")
        return check_manifest(manifest, f"{self._folder(key)}/{MANIFEST}")

    def size(self, key: str) -> int:
        """The bytes of the files the image's manifest lists, and of the manifest itself (as
        the run counted them): not of what else lies in its folder (the PNGs ``show`` writes
        there later, a user's notes), which counted as the extraction's own."""
        folder = self._folder(key)
        manifest = load_manifest(folder) or {}  # ValueError: one that cannot be read
        total = 0
        for name in {MANIFEST, *manifest_files(manifest)}:
            if not is_file_name(name):
                continue
            try:
                st = os.lstat(folder / name)
            except OSError:  # a listed file gone: the folder's state says so elsewhere
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
        return total

    def failures(self) -> list[Failure]:
        run = read_run_log(self.path) or {}
        return [Failure(str(f.get("path")), str(f.get("reason"))) for f in run.get("failed") or []
                if isinstance(f, dict)]  # fmt: skip

    def link(self, key: str, name: str) -> str | None:
        folder = self._folder(key)
        if not name or "/" in name or not (folder / name).is_file():
            return None
        rel = folder.relative_to(self.path).as_posix()
        return name if rel == "." else f"{rel}/{name}"


class _Shards(Extractions):
    format = "wds"

    def __init__(self, root: str) -> None:
        from .shard_index import has_ledger, read_index
        from .shards import open_root, require_wds

        try:
            require_wds()
        except ValueError:
            raise ValueError(
                f"{root} is the output of --format wds: reading it needs pyarrow and fsspec "
                "(pip install 'fpncli[wds]')"
            ) from None
        self.fs, self.path = open_root(root)  # says what an object store's URL needs
        self.root = root
        if not self.fs.exists(self.path):
            raise FileNotFoundError(f"no such folder: {root}")
        ledger = has_ledger(self.fs, self.path)  # else index.parquet (a copy without _index)
        columns = ["key", "source", "status", "error", "shard", "bytes", "written_at"]
        rows = read_index(self.fs, self.path, ledger=ledger).select(columns).to_pylist()
        # one row per key: its latest ok row, else its latest failure (as consolidate_index)
        best: dict[str, dict] = {}
        for order, row in sorted(enumerate(rows), key=lambda r: (r[1]["written_at"] or 0.0, r[0])):
            if row["status"] == "ok" or best.get(row["key"], {}).get("status") != "ok":
                best[row["key"]] = dict(row, order=order)
        ok = sorted((r for r in best.values() if r["status"] == "ok"), key=lambda r: r["order"])
        self._rows = {r["key"]: r for r in ok}  # storage order: shard by shard, as written
        self._failed = [Failure(r["source"] or r["key"], r["error"] or "failed")
                        for r in sorted(best.values(), key=lambda r: r["key"])
                        if r["status"] != "ok"]  # fmt: skip
        self._tables: collections.OrderedDict[str, dict] = collections.OrderedDict()
        self._lock = threading.Lock()

    def keys(self) -> list[str]:
        return list(self._rows)

    def shard(self, key: str) -> str:
        return self._row(key)["shard"]

    def _row(self, key: str) -> dict:
        try:
            return self._rows[key]
        except KeyError:
            raise FileNotFoundError(f"no image with key {key!r} in {self.root}") from None

    def _table(self, shard: str, f) -> dict[str, tuple[int, int]]:
        """member name -> (offset of its data, size), from one pass over the shard's headers
        (tarfile seeks over the data)."""
        with self._lock:
            table = self._tables.get(shard)
            if table is not None:
                self._tables.move_to_end(shard)
                return table
        try:
            with tarfile.open(fileobj=f, mode="r:") as tar:
                table = {i.name: (i.offset_data, i.size) for i in tar if i.isfile()}
        except tarfile.TarError as e:
            raise ValueError(f"{self.root}/{shard} is not a readable tar shard ({e})") from None
        with self._lock:
            self._tables[shard] = table
            while len(self._tables) > _TABLES:
                self._tables.popitem(last=False)
        return table

    def _members(self, key: str, suffixes) -> dict[str, bytes]:
        """The members ``KEY.<suffix>`` asked for that the shard holds: {suffix: bytes}."""
        from .shards import check_member, open_shard, shard_gone

        shard = self.shard(key)
        found = {}
        try:  # a regular file only: a FIFO in its place is refused, never waited on
            f, shard_size = open_shard(self.fs, f"{self.path}/{shard}")
        except FileNotFoundError:
            raise shard_gone(shard, self.root, key) from None
        with f:
            table = self._table(shard, f)
            for suffix in suffixes:
                place = table.get(f"{key}.{suffix}")
                if place is None:
                    continue
                # a forged header's size (10**12 bytes) is refused before it is allocated
                check_member(f"{self.root}/{shard}", f"{key}.{suffix}", *place, shard_size)
                f.seek(place[0])
                data = f.read(place[1])
                if len(data) != place[1]:
                    raise ValueError(f"{self.root}/{shard} is truncated ({key}.{suffix})")
                found[suffix] = data
        return found

    def manifest(self, key: str) -> dict:
        data = self._members(key, ["json"]).get("json")
        if data is None:
            raise FileNotFoundError(
                f"{self.shard(key)} in {self.root} does not hold {key!r}: the index is stale"
            )
        try:
            manifest = parse_json(data)
        except ValueError as e:
            raise ValueError(f"{key}.json in {self.shard(key)} is not JSON ({e})") from None
        if not isinstance(manifest, dict):
            raise ValueError(f"{key}.json in {self.shard(key)} is not a manifest")
        return check_manifest(manifest, f"{key}.json in {self.root}/{self.shard(key)}")

    def load(self, key: str) -> LoadedExtraction:
        manifest = self.manifest(key)
        where = f"{self.shard(key)}:{key}"
        files = {}
        for name, meta in manifest_levels(Path(where), manifest).items():
            file = meta.get("file") if isinstance(meta, dict) else None
            if isinstance(file, str) and file.endswith(".npy") and "/" not in file:
                files[name] = file
        blobs = self._members(key, sorted(set(files.values())))
        levels = {name: check_level_array(npy_from_bytes(blobs[file], f"{where}.{file}"),
                                          manifest["levels"][name], f"{where}.{file}")
                  for name, file in files.items() if file in blobs}  # fmt: skip
        folder = Path(self.path) / PurePosixPath(key) if "://" not in self.root else Path(key)
        return LoadedExtraction(folder, manifest, levels, key=key, shard=self.shard(key))

    def size(self, key: str) -> int:
        return int(self._row(key)["bytes"] or 0)

    def source(self, key: str) -> str | None:
        # the index's source column (the file's real path, as a manifest's input.real_path):
        # no shard is read
        return self._row(key)["source"] or None

    def failures(self) -> list[Failure]:
        return list(self._failed)

    def shards(self) -> list[str]:
        return sorted({r["shard"] for r in self._rows.values()})
