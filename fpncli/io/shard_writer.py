"""Writing wds shards (``shards`` describes the layout): ``ShardWriter`` packs each image's
members into a tar under a temporary name, renames it when complete and then writes its index
part, so the index never names a partial shard.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
import threading
import time

import numpy as np

from .atomic import DROP_BYTES, drop_from_cache
from .image_writer import write_image_members
from .manifest import MANIFEST
from .npy import npy_bytes
from .shard_index import failed_row, ok_row, write_parquet
from .shardlock import CLAIMS_DIR, claim_is_live, run_token, wds_lock
from .shards import INDEX_DIR, partial_name, shard_digest, shard_name

__all__ = ["ShardWriter"]

log = logging.getLogger(__name__)


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

    ``owner_must_live``: the writer works for the run of ``token`` from another process (a Ray
    actor): each commit first checks, under OUT's lock, that the run still holds its claims
    file (``claim_is_live``); if it does not, the run is gone and a new run may have taken its
    keys, so the shard is dropped and a RuntimeError raised. The run's own process needs no
    check: it holds the claim for as long as it lives.
    """

    def __init__(self, fs, root: str, *, target_bytes: int, settings: str,
                 crash_after: int | None = None, token: str | None = None,
                 owner_must_live: bool = False) -> None:  # fmt: skip
        self.fs, self.root = fs, root
        self.token = token or run_token()  # the run's: names its partial shards
        self.owner_must_live = owner_must_live
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
                ok_row(key, source, manifest, [n for n, _ in members], size, self.settings)
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
        self.tmp = f"{self.root}/{partial_name(self.token)}"
        self.file = self.fs.open(self.tmp, "wb")
        self.tar = tarfile.open(fileobj=self.file, mode="w|", format=tarfile.PAX_FORMAT)

    def _commit(self) -> None:
        """Commit the open shard and the rows since the last commit; if that fails (a full disk
        as the tar's end or the index part is written, the writer's run gone), the shard is
        dropped (``_abort``: its images counted in ``dropped``) and the error raised."""
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
            shard = shard_name(shard_digest([self.settings, *self.keys]))
            for row in self.rows:
                if row["status"] == "ok":
                    row["shard"], row["shard_bytes"] = shard, size
        if self.tar is not None or self.rows:
            part = shard[:-4] if shard else f"failed-{shard_digest(r['key'] for r in self.rows)}"
            path = f"{self.root}/{INDEX_DIR}/part-{part}.parquet"
            # OUT's lock: no other run plans (and cleans up) between the rename and the part
            with wds_lock(self.fs, self.root):
                if self.owner_must_live and not claim_is_live(self.fs, self.root, self.token):
                    # its keys may be a new run's now: committing them would put them in two
                    raise RuntimeError(
                        f"the fpncli run that started this writer is gone (its claims file "
                        f"{CLAIMS_DIR}/{self.token}.json is no longer held): its images are not "
                        f"committed but left to the next run"
                    )
                if shard is not None:
                    self.fs.mv(self.tmp, f"{self.root}/{shard}")
                try:
                    if self.rows:
                        write_parquet(self.fs, path, self.rows)
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
