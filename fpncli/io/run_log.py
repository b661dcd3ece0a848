"""The run log (``run.json``; ``run-I-of-N.json`` for shard I of N) that says what an ``fpncli
extract`` run into a folder did: counts and failures with their reasons, written atomically at
the run's end and read back (the shards' logs merged) by ``fpncli report``.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from .guard import read_json_file

__all__ = ["RUN_LOG", "SHARD_RUN_LOG", "run_log_name", "read_run_log", "write_run_log"]


RUN_LOG = "run.json"
#: The run log of shard I of N (``run_log_name``).
SHARD_RUN_LOG = re.compile(r"^run-(\d+)-of-(\d+)\.json$")


def run_log_name(shard: tuple[int, int] | None = None) -> str:
    """``run.json``; a run of shard I of N (N > 1) writes ``run-I-of-N.json`` instead, so that
    the shards of one job (a SLURM array, torchrun ranks) writing into one folder keep theirs."""
    return RUN_LOG if shard is None or shard[1] <= 1 else f"run-{shard[0]}-of-{shard[1]}.json"


_MAX_RUN_LOG_BYTES = 256 << 20  # over a million failures with their reasons


def _read_json(path: Path) -> dict | None:
    """A run log, its fields of the types they are written with: a forged field is dropped (a
    count reads as 0, a failure that is not a mapping is left out), and so is ``shards``,
    which no run writes (``read_run_log`` sets it when it merges the logs of a sharded run)."""
    try:
        data = read_json_file(path, _MAX_RUN_LOG_BYTES)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    for key in ("total", "done", "skipped", "bytes_written", "seconds"):
        value = data.get(key)
        if value is not None and not _finite_count(value, integer=key != "seconds"):
            del data[key]
    data.pop("shards", None)
    redraw = data.get("redraw")  # what --scale's redraw rewrote: its counts, as the run's
    if redraw is not None and not (
        isinstance(redraw, dict)
        and all(_finite_count(redraw.get(key), integer=True) for key in ("images", "bytes"))
    ):
        del data["redraw"]
    failed = data.get("failed")
    data["failed"] = [f for f in failed if isinstance(f, dict)] if isinstance(failed, list) else []
    return data


def _finite_count(value, integer: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        return False
    try:
        return math.isfinite(float(value)) and value >= 0
    except OverflowError:  # an integer past float's range
        return False


def read_run_log(root: str | Path) -> dict | None:
    """What the last ``fpncli extract`` into ``root`` did (its ``run.json``), if any.

    When the last run was sharded (``run-I-of-N.json``), the logs of its shards are merged:
    counts summed (those of ``--scale``'s ``redraw`` too), failures joined, ``shards`` saying
    how many of the N logged. "Last" is by the files' times: the newer of ``run.json`` and the
    newest shard log's set of N."""
    root = Path(root)
    logs: dict[int | None, list[tuple[float, Path]]] = {}
    try:
        entries = list(os.scandir(root))
    except OSError:
        return None
    for entry in entries:
        match = SHARD_RUN_LOG.match(entry.name)
        if entry.name != RUN_LOG and match is None:
            continue
        try:
            mtime = entry.stat().st_mtime
        except OSError:
            continue
        logs.setdefault(None if match is None else int(match[2]), []).append((mtime, Path(entry)))
    if not logs:
        return None
    newest = max(logs, key=lambda n: max(t for t, _ in logs[n]))
    if newest is None:
        return _read_json(root / RUN_LOG)
    parts = [d for _, path in sorted(logs[newest]) if (d := _read_json(path)) is not None]
    if not parts:
        return None
    merged = dict(parts[-1])
    for key in ("total", "done", "skipped", "bytes_written"):
        merged[key] = sum(int(d.get(key) or 0) for d in parts)
    merged["seconds"] = max(float(d.get("seconds") or 0) for d in parts)
    merged["failed"] = [f for d in parts for f in d.get("failed") or []]
    merged["aborted"] = next((d["aborted"] for d in parts if d.get("aborted")), None)
    redraws = [d["redraw"] for d in parts if d.get("redraw")]
    merged.pop("redraw", None)
    if redraws:  # each shard redrew its own images
        merged["redraw"] = {**redraws[-1], **{key: sum(int(r[key]) for r in redraws)
                                              for key in ("images", "bytes")}}  # fmt: skip
    merged["shards"] = f"{len(parts)} of {newest}"
    return merged


def write_run_log(root: str | Path, summary: dict, shard: tuple[int, int] | None = None) -> None:
    """Record what this ``extract`` run into ``root`` did (counts, failures with reasons),
    atomically, for ``fpncli report``: ``run.json``, or ``run-I-of-N.json`` for shard I of N. A
    read-only folder only logs a warning."""
    from .atomic import TMP_MARK, atomic_write_bytes, stale_temporary

    name = run_log_name(shard)
    try:
        with os.scandir(root) as entries:  # a killed run's temporary logs (only dead runs')
            for entry in entries:
                if entry.name.startswith(".run") and TMP_MARK in entry.name and (
                    stale_temporary(entry.name) and entry.is_file(follow_symlinks=False)
                ):  # fmt: skip
                    os.unlink(entry.path)
        atomic_write_bytes(Path(root) / name, json.dumps(summary, indent=2).encode())
    except OSError as e:
        import logging

        logging.getLogger(__name__).warning("could not write %s/%s: %s", root, name, e)
