"""``--format wds`` on the local engine: the usual pipeline, with a shard writer as its sink.

Planning (keys, resume against the index, the settings check, the claim on the keys) is shared
with the Ray engine, which calls ``plan_sharded`` on its driver and gives each GPU actor a
``ShardWriter``. A run into a local OUT claims the keys it extracts for its lifetime, so a second
run at the same time leaves those to it and does the others (``io.shardlock``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..io.guard import is_disk_full
from ..io.jobs import Job
from ..io.latest import record_latest
from ..io.messages import quote_name
from ..io.shard_index import consolidate_index
from ..io.shard_root import claim_root, prepare_root
from ..io.shard_writer import ShardWriter
from ..io.shardlock import LiveRun, RunClaim, is_local, wds_lock
from ..io.shards import legacy_settings_key, open_root, settings_key, wds_key
from ..model.fpn import FPN
from .pipeline import run_jobs
from .plan import Replaced, check_disk_space
from .steps import Decoded, RunOptions, weights_meta
from .summary import DISK_FULL, Progress, RunSummary, stopped_message

__all__ = ["ShardPlan", "ShardSink", "job_key", "plan_sharded", "record_output", "run_sharded"]

log = logging.getLogger(__name__)


@dataclass
class ShardPlan:
    """What a sharded run has to do."""

    fs: object  # an fsspec filesystem
    root: str
    settings: str
    keys: dict[str, str]  # str(job.path) -> sample key
    todo: list[Job]
    skipped: int
    claim: RunClaim  # held until ``release``: the keys of ``todo`` are this run's
    left_to_others: int = 0  # of ``skipped``: keys another live run has claimed

    def release(self) -> None:
        """End the claim on ``todo`` (once its shards are committed or dropped)."""
        self.claim.release()


def job_key(job: Job) -> str:
    """A job's key in the shards: its folder (relative to OUT, from ``plan_jobs(pairs,
    Path(""))``) as ``wds_key`` escapes it."""
    return wds_key(PurePosixPath(job.folder.as_posix()))


def plan_sharded(jobs: list[Job], out: str, options: RunOptions, weights: dict) -> ShardPlan:
    """Give every job a sample key (its output path relative to OUT, see ``wds_key``), clean up
    after an interrupted run, drop the jobs whose input file is already ``ok`` in the index or
    whose key another live run has claimed (a warning names it), and claim the rest. Call
    ``release`` at the end.

    ``jobs`` must come from ``plan_jobs(pairs, Path(""))`` (folders relative to OUT).

    Raises:
        ValueError: OUT holds files fpncli did not write (``claim_root``), OUT holds (or a live
            run is writing) these images with other weights or options, OUT holds (or a live
            run is writing) other files under these keys (``prepare_root``, ``_taken``), or
            ``overwrite`` while another run is writing OUT.
    """
    fs, root = open_root(out)
    keys = {str(j.path): job_key(j) for j in jobs}
    assert len(set(keys.values())) == len(keys), "plan_jobs gives every job its own folder"
    sources = {keys[str(j.path)]: _source(j.path) for j in jobs}
    settings = settings_key(options.output, weights, options.precision)
    claim = RunClaim(fs, root)
    with wds_lock(fs, root):  # no other run commits, cleans up or claims meanwhile
        claim_root(fs, root)  # first: nothing in a root that is not fpncli's is removed
        live = claim.live_runs()
        if options.overwrite and live:
            raise ValueError(
                f"another fpncli run ({_pids(live)}) is writing {root}: --overwrite would delete "
                "its shards; rerun when it has ended"
            )
        done = prepare_root(
            fs, root, sources, settings, overwrite=options.overwrite,
            live_tokens=frozenset(r.token for r in live),
            legacy_settings=lambda manifest: legacy_settings_key(
                options.output, weights, options.precision, manifest),
        )  # fmt: skip
        wanted = {k: source for k, source in sources.items() if k not in done}
        taken = _taken(live, wanted, settings, root)
        skip = done | taken.keys()
        todo = [j for j in jobs if keys[str(j.path)] not in skip]
        mine = [keys[str(j.path)] for j in todo]
        claim.claim(mine, settings, {k: sources[k] for k in mine})
    if taken:
        log.warning(
            "%d of these images are being extracted by another fpncli run (%s) into %s: left to "
            "it (rerun afterwards to retry any that it fails)",
            len(taken), _pids([r for r in live if r.pid in set(taken.values())]), root,
        )  # fmt: skip
    return ShardPlan(fs, root, settings, keys, todo, len(jobs) - len(todo), claim, len(taken))


def _taken(live: list[LiveRun], wanted: dict[str, str], settings: str,
           root: str) -> dict[str, int]:  # fmt: skip
    """The keys of ``wanted`` (key -> input file) that a live run has claimed -> its pid.

    Raises:
        ValueError: a live run claims some of them with other weights or options, or for other
            files (``p2/a.jpg`` and ``other/a.jpg`` are both ``a``), as ``prepare_root``
            refuses such keys once that run has written them, instead of leaving this run's
            images to it.
    """
    taken: dict[str, int] = {}
    for run in live:
        mine = run.keys & wanted.keys()
        if mine and run.settings != settings:
            raise ValueError(
                f"another fpncli run ({_pids([run])}) is writing {len(mine)} of these images "
                f"into {root} with other weights or options: write to another output"
            )
        clashes = sorted(k for k in mine if run.sources.get(k, wanted[k]) != wanted[k])
        if clashes:
            key = clashes[0]
            raise ValueError(
                f"{len(clashes)} of these images would take keys that another fpncli run "
                f"({_pids([run])}) is writing into {root} for other files ({key!r} is "
                f"{quote_name(run.sources[key])}, not {quote_name(wanted[key])}): write to "
                "another output, or give the images under distinct paths"
            )
        taken.update(dict.fromkeys(mine - taken.keys(), run.pid))
    return taken


def _pids(runs: list[LiveRun]) -> str:
    pids = sorted({r.pid for r in runs})
    return ("pid " if len(pids) == 1 else "pids ") + ", ".join(map(str, pids))


class ShardSink:
    """The pipeline sink that sends each image to a ``ShardWriter`` under its sample key."""

    def __init__(self, writer: ShardWriter, keys: dict[str, str]) -> None:
        self.writer, self.keys = writer, keys

    def write(self, item: Decoded, levels: dict, options: RunOptions, weights: dict,
              device: str) -> int:  # fmt: skip
        """``steps.write_result``'s arguments; the image goes into the open shard."""
        return self.writer.write_image(
            self.keys[str(item.job.path)], _source(item.job.path), levels=levels,
            image=item.image, prepared=item.prepared, options=options.output, weights=weights,
            device=device, precision=options.precision,
        )  # fmt: skip

    def fail(self, path: Path, reason: str) -> None:
        self.writer.fail(self.keys[str(path)], _source(path), reason)


def _source(path: Path) -> str:
    """The input file as the index records it: its real path, so that the same file reached
    through a symlinked folder is the same source (as a folder output's resume key has it)."""
    return os.path.realpath(path)


def _check_disk(plan: ShardPlan, options: RunOptions) -> None:
    """The local engine's free-space check, on the shard folder (object stores: none)."""
    if options.force or not is_local(plan.fs):
        return
    jobs = [Job(j.path, Path(plan.root) / j.folder) for j in plan.todo]
    check_disk_space(jobs, options.output, max_pixels=options.max_pixels)


def _count_every_job(summary: RunSummary, jobs: list[Job], plan: ShardPlan) -> None:
    """The inner run counted only the jobs left to do: the summary counts every job, and those
    already in the index or taken by another live run as skipped."""
    summary.total = len(jobs)
    summary.skipped, summary.left_to_others = plan.skipped, plan.left_to_others


def record_output(summary: RunSummary, out: str, options: RunOptions) -> None:
    """Record ``out`` (a folder or URL) as the latest extraction (``fpncli show`` with no
    target: it then names an image by ``--key``), as a ``--format files`` run records its last
    folder: when this run committed an image, or found one in the index (``options.
    record_latest``). Shared by the local engine and Ray's."""
    already = summary.skipped - summary.left_to_others  # (the others: another run's to write)
    if options.record_latest and (summary.done > 0 or already > 0):
        record_latest(out)


def _consolidate_after_error(plan: ShardPlan) -> None:
    """``consolidate_index`` at the end of a run that raised, best effort: a failure here is a
    warning, never in the place of the run's own error (or Ctrl-C's exit code 130); the ledger
    still lists the committed shards, which ``show --key`` reads for a key the index lacks."""
    try:
        consolidate_index(plan.fs, plan.root)
    except Exception as e:  # whatever it is, the run's own error is the one to report
        _index_not_rewritten(plan, e)


def _index_not_rewritten(plan: ShardPlan, error: BaseException) -> None:
    log.warning("could not rewrite %s/index.parquet (%s): the next run rewrites it",
                plan.root, error)  # fmt: skip


def run_sharded(
    jobs: list[Job],
    out: str,
    model: FPN,
    options: RunOptions,
    *,
    shard_bytes: int,
    progress: Callable[[Progress], None] | None = None,
    crash_after: int | None = None,
    on_plan: Callable[[list[Job], Replaced], None] | None = None,
) -> RunSummary:
    """Extract ``jobs`` into WebDataset shards of about ``shard_bytes`` under ``out`` (a folder
    or an fsspec URL), resuming from its index; ``index.parquet`` is rewritten at the end, also
    of a run interrupted (Ctrl-C) or failed, to hold the shards it committed.
    ``on_plan``: as ``run_jobs``'s, called with the jobs not yet in the index nor taken, and
    an empty ``Replaced``: OUT holding these images with other settings is refused instead."""
    plan = plan_sharded(jobs, out, options, weights_meta(model))
    consolidating, writer = False, None
    try:
        if on_plan is not None:
            on_plan(plan.todo, Replaced())
        _check_disk(plan, options)
        writer = ShardWriter(
            plan.fs, plan.root, target_bytes=shard_bytes, settings=plan.settings,
            crash_after=crash_after, token=plan.claim.token,
        )  # fmt: skip
        try:
            sink = ShardSink(writer, plan.keys)
            summary = run_jobs(plan.todo, model, options, progress=progress, sink=sink)
        except BaseException as e:
            writer.abort()
            # Ctrl-C's report (or an error's, midway) counts them as not written
            e.dropped_images = writer.dropped
            if hasattr(e, "summary"):  # the run's log: over every job, as below
                _count_every_job(e.summary, jobs, plan)
            raise
        rows = None
        try:
            if summary.aborted:
                writer.abort()  # the open shard: its images are not done
            else:
                writer.close()  # a full disk here drops the open shard
            consolidating = True  # from here on an error is consolidate_index's own: not retried
            rows = consolidate_index(plan.fs, plan.root)
        except (OSError, ValueError) as e:  # (ValueError: consolidate_index's, OUT not fpncli's)
            if consolidating and not is_disk_full(e):  # OUT made read-only, or removed: the
                _index_not_rewritten(plan, e)  # run's results and log still say what it did
            elif not is_disk_full(e):  # the last commit failed, for the same reasons: its
                # shard's images are dropped (counted below), its failures still reported
                log.warning(
                    "could not commit the last shard or failures into %s (%s)", plan.root, e
                )
            else:
                # as a full disk mid-run: the run stops with its summary (the index is rewritten
                # by the next run; its ledger, the _index parts, has every committed shard)
                log.info("disk full while committing: stopping")
                if not summary.aborted:  # else a failed device: its message says more
                    summary.aborted = DISK_FULL
        # written, counted done, then dropped with their shard: by the abort above, a commit
        # that failed, or a write that failed (a full disk drops the open shard before the run
        # hears of it)
        summary.done -= writer.dropped
        summary.bytes_written -= writer.dropped_bytes
        if writer.dropped and not summary.aborted:  # commits that failed (OUT made read-only
            # or removed mid-run): their images are neither done nor failed, but left to a rerun
            summary.aborted = (
                f"{writer.dropped} image(s) were written into shards that could "
                "not be committed: rerun the same command to redo them"
            )
    finally:
        if not consolidating and writer is not None and writer.parts:
            _consolidate_after_error(plan)  # interrupted or failed, after committing some parts
        plan.release()
    _count_every_job(summary, jobs, plan)
    summary.last_folder = None
    record_output(summary, out, options)
    if summary.aborted:  # counted over the whole job list, without the dropped shard's images
        summary.aborted = stopped_message(summary)
    if rows is not None:
        log.info("%d shards written; index.parquet has %d rows", len(writer.shards), rows)
    return summary
