"""``--engine ray``: the same decoding, model and writers, scheduled by Ray Data.

Ray is imported only when a run starts (``ray_start``). The dataset is the list of images
still to do; CPU tasks decode them with fpncli's own decoder (a bad file becomes a failed row,
never an exception), and a pool of actors (``ray_actor``; ``ActorPoolStrategy``, ``num_gpus``
each) loads the weights once, runs fpncli's pipeline on each call's images and writes the
outputs itself: a folder per image (``files``) or exactly one tar shard per call (``wds``). Only
a small row per image (path, status, error, shard, bytes) travels back; feature maps never enter
the object store. Resume is fpncli's own: the driver drops what the index (or the folders) mark
done.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..api import check_precision
from ..io.guard import OptionError, is_disk_full
from ..io.jobs import Job
from ..io.manifest import MANIFEST, manifest_files
from ..io.shard_index import consolidate_index, read_index
from ..model.fpn import FPN
from .folder_sink import _manifest_stamp
from .pipeline import record_last_folder
from .plan import Replaced, RunInputs, _state, estimate_run_bytes, plan_pending
from .ray_actor import WARNINGS, Extractor, Stopped, decode_rows
from .ray_start import RayStartError, connect, import_ray
from .steps import RunOptions, weights_meta
from .summary import (
    DISK_FULL,
    INTERRUPTED,
    OPEN_FILES,
    Progress,
    RunSummary,
    say_relayed,
    stopped_message,
)
from .wds import plan_sharded, record_output

__all__ = ["RayOptions", "RayStartError", "run_ray"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayOptions:
    """How to run on Ray (the per-image options are the ``RunOptions``)."""

    weights: str = "random"
    seed: int = 0
    device: str = "auto"  # of the actors: auto (CUDA when the actor has one), cpu, cuda
    out_format: str = "files"  # or "wds"
    shard_bytes: int = 1_000_000_000
    address: str | None = None  # None: a local Ray started for the run (or the running one)
    gpu_workers: int | None = None  # None: every GPU of the cluster (or 1 CPU actor)
    gpus_per_worker: float = 1.0
    decode_batch: int = 4  # images per decode task
    #: --batch-size was not given: an actor on a CPU runs images one at a time (the default on
    #: a CPU, as the local engine's), one on a GPU the ``RunOptions``' batch size
    default_batch: bool = False
    crash_after: int | None = None  # crash tests: an actor fails after this many images
    #: keep Ray's own log lines off the terminal (``connect``): the CLI's choice unless -v; a
    #: library caller gets Ray as Ray sets itself up
    quiet: bool = False


def _pool(ray, options: RayOptions) -> tuple[int, float]:
    """``(actors, GPUs per actor)``; instead of Ray's endless wait for GPUs, an ``OptionError``
    naming the option that asks for more GPUs than the cluster has."""
    gpus = float(ray.cluster_resources().get("GPU", 0))
    wants_gpu = options.device.startswith("cuda") or (options.device == "auto" and gpus > 0)
    if not wants_gpu:
        return options.gpu_workers or 1, 0.0
    per = options.gpus_per_worker
    if not gpus:
        raise OptionError(
            "the Ray cluster has no GPU for the actors: add GPU nodes, or run with --device cpu",
            "--device",
        )
    if gpus < per:
        raise OptionError(
            f"{per:g} GPUs per worker, but the Ray cluster has {gpus:g} GPUs: ask for at most "
            f"{gpus:g}, or run with --device cpu",
            "--gpus-per-worker",
        )
    most = int(gpus // per)
    size = options.gpu_workers or most
    if size > most:
        raise OptionError(
            f"{size} workers x {per:g} GPUs each need {size * per:g} GPUs; the Ray cluster has "
            f"{gpus:g}: ask for at most {most} workers",
            "--gpu-workers",
        )
    return size, per


def _check_nodes(ray, out: str) -> None:
    """A local output folder on a multi-node cluster would scatter the outputs over the nodes."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) > 1 and "://" not in out:
        raise ValueError(
            f"the Ray cluster has {len(nodes)} nodes: a local -o {out} would scatter the outputs "
            "over them; write to object storage (s3://..., gs://...) or to a filesystem every "
            "node mounts, given as file:///shared/path"
        )


def run_ray(
    jobs: list[Job],
    out: str,
    model: FPN,
    options: RunOptions,
    ray_options: RayOptions,
    *,
    progress: Callable[[Progress], None] | None = None,
    on_plan: Callable[[list[Job], Replaced], None] | None = None,
    run_inputs: RunInputs | None = None,
) -> RunSummary:
    """Extract ``jobs`` on Ray Data into ``out`` (a folder, or an fsspec URL for ``wds``).
    ``on_plan``: as ``run_jobs``'s, called with the jobs left to do (and what they replace);
    ``run_inputs``: as ``run_jobs``'s (``jobs`` are a ``--shard`` of a larger run).

    ``model`` (on the driver, usually the CPU) only gives the weights' identity for resume; the
    actors load their own copy. Raises ValueError for a request the cluster cannot run
    (several nodes with a local ``out``; an ``OptionError`` for more GPUs than it has), or a
    ``memory://`` ``out`` (before Ray starts), ``RayStartError`` (a RuntimeError) when Ray cannot
    be started or reached, and RuntimeError when the Ray job fails, its ``summary`` what the
    run did until then (with ``--format wds``, every image the actors committed).
    """
    if out.startswith("memory://"):  # before Ray starts
        raise ValueError("memory:// lives in one process: use it with --engine local only")
    ray = import_ray()
    ray_log = logging.getLogger("ray")
    level = ray_log.level  # ray.init sets it (logging_level): given back after the run
    started = False
    try:  # (also when ray.init fails, having set it)
        started = connect(ray, ray_options.address, ray_options.quiet)
        with contextlib.ExitStack() as stack:  # the wds claim, held until the end
            return _run(ray, jobs, out, model, options, ray_options, progress, stack, on_plan,
                        run_inputs, ray.shutdown if started else None)  # fmt: skip
    finally:
        if started:
            ray.shutdown()
        ray_log.setLevel(level)


def _run(ray, jobs, out, model, options, ray_options, progress, stack, on_plan=None,
         run_inputs=None, stop=None) -> RunSummary:  # fmt: skip
    """``run_ray``'s run, once Ray is there; ``stop``: how an interrupted run stops its actors
    before it counts what they wrote (``ray.shutdown``, where the run started Ray: Ray Data's
    own stop, which kills actors with calls queued, has Ray print a "submit failed" line per
    call on the terminal; None: that stop)."""
    from ray.data import ActorPoolStrategy, DataContext

    size, gpus = _pool(ray, ray_options)
    if not gpus:  # CPU actors: fp16/bf16 refused here as the local engine does, not per actor
        check_precision(options.precision, torch.device("cpu"))
    _check_nodes(ray, out)
    weights = weights_meta(model)
    summary = RunSummary(total=len(jobs))
    todo_keys: set[str] = set()  # wds: the keys of the images this run extracts
    config = {
        "weights": ray_options.weights, "seed": ray_options.seed, "device": ray_options.device,
        "options": replace(options, workers=1), "format": ray_options.out_format,
        "crash_after": ray_options.crash_after, "actors": size,
        "default_batch": ray_options.default_batch,
    }  # fmt: skip
    if ray_options.out_format == "wds":
        plan = plan_sharded(jobs, out, options, weights)
        stack.callback(plan.release)
        todo, summary.skipped = plan.todo, plan.skipped
        todo_keys.update(plan.keys[str(j.path)] for j in todo)
        replaced = Replaced()  # none: images of other settings are refused (prepare_root)
        summary.left_to_others = plan.left_to_others
        config.update(fs=plan.fs, root=plan.root, settings=plan.settings, token=plan.claim.token,
                      keys={str(Path(k).absolute()): v for k, v in plan.keys.items()})  # fmt: skip
        need = estimate_run_bytes(todo, options.output, max_pixels=options.max_pixels)
        per_image = max(1, need // max(1, len(todo)))
        rows_per_call = max(1, min(ray_options.shard_bytes // per_image, 10_000))
    else:
        inputs = run_inputs if run_inputs is not None else RunInputs(jobs)
        todo, replaced = plan_pending(jobs, options, weights, inputs)
        summary.skipped = len(jobs) - len(todo)
        # the actors' writes check each folder again (another run may write it meanwhile), a
        # file of this run no other file: the identities the plan read, if it read any
        config["identities"] = inputs.identities
        rows_per_call = options.batch_size * 4
    folders = {} if ray_options.out_format == "wds" else {str(j.path): j.folder for j in todo}
    # --overwrite: each folder's manifest as planned, so that one complete before the run and
    # untouched by it is not counted as this run's after an interrupt (``_count_unreturned``)
    before = {path: _manifest_stamp(folder) for path, folder in folders.items()
              } if options.overwrite else {}  # fmt: skip

    def finished() -> RunSummary:
        """The summary of a run that ended (stopped or not), its output recorded as the latest
        extraction, as the local engine records it: a wds run's, else its last folder."""
        if ray_options.out_format == "wds":
            record_output(summary, out, options)
        else:
            record_last_folder(summary, jobs, todo, options)
        return summary

    def record_written() -> None:
        """For a run that fails or is interrupted midway: the last folder it wrote, if any,
        recorded as the latest extraction, as ``run_jobs`` records it."""
        if ray_options.out_format != "wds" and summary.last_folder is not None:
            record_last_folder(summary, jobs, todo, options)

    if on_plan is not None:
        on_plan(todo, replaced)
    if not todo:
        return finished()
    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.wait_for_min_actors_s = 600  # after the GPU check above, only slow starts wait
    context.raise_original_map_exception = True  # the actor's own error, not "UDF failed"
    # the actors work with absolute paths; the given ones name the failures as locally
    rows = [{"path": str(j.path.absolute()), "folder": str(j.folder.absolute()),
             "given": str(j.path), "given_folder": str(j.folder)} for j in todo]  # fmt: skip
    dataset = ray.data.from_items(rows).map_batches(
        decode_rows,
        batch_size=ray_options.decode_batch,
        fn_kwargs={"options": options, "input_format": model.weights_info.input},
        num_cpus=1,
        batch_format="numpy",
    )
    dataset = dataset.map_batches(
        Extractor,
        fn_constructor_kwargs={"config": config},
        compute=ActorPoolStrategy(size=size),
        num_gpus=gpus,
        num_cpus=0 if gpus else 1,
        batch_size=rows_per_call,
        batch_format="numpy",
    )
    start = time.monotonic()
    ray_log = logging.getLogger("ray.data")
    level = ray_log.level
    if not log.isEnabledFor(logging.INFO):  # Ray Data logs every plan, and errors with tracebacks
        ray_log.setLevel(logging.CRITICAL)
    failure = None
    stopped: Stopped | None = None  # a full disk or a failed device: the run's summary says so
    interrupted: KeyboardInterrupt | None = None  # Ctrl-C (or the CLI's SIGTERM, SIGHUP)
    said: set[str] = set()  # the once-per-run warnings said
    returned: set[str] = set()  # the images whose rows came back (their paths as given)
    batches = iter(dataset.iter_batches(batch_size=None, batch_format="numpy"))
    try:
        for batch in batches:
            _count(batch, summary, said, folders, returned)
            if progress is not None:
                elapsed = time.monotonic() - start
                progress(Progress(summary.done, len(summary.failed), summary.skipped, len(todo),
                                  elapsed, summary.bytes_written))  # fmt: skip
    except KeyboardInterrupt as e:
        interrupted = e
        (stop or batches.close)()  # the actors stop now, before what they wrote is counted
    except Exception as e:  # an actor's error (a bug, a crash test) or Ray's own
        log.debug("the Ray job failed", exc_info=True)
        failure = _failure(e, said)
        stopped = _stopped(e)
        if stopped is not None:
            failure = None
            summary.done += stopped.done
            summary.bytes_written += stopped.bytes_written
    except BaseException:  # Ctrl-C, SIGTERM (the CLI's)
        record_written()
        raise
    finally:
        ray_log.setLevel(level)
        summary.seconds = time.monotonic() - start
        if ray_options.out_format == "wds":
            try:
                consolidate_index(config["fs"], config["root"])
            except OSError as e:  # the next run rewrites it (the ledger has every shard)
                if not is_disk_full(e):
                    raise
                if stopped is None and failure is None:
                    stopped = Stopped(None, 0, 0)
    if interrupted is not None:  # counted over the run, as the local engine's summary: the calls
        # that had not returned have written images too (their folders, their shards)
        if ray_options.out_format == "wds":
            _count_committed(summary, config["fs"], config["root"], todo_keys)
        else:
            _count_unreturned(summary, todo, returned, before, options, weights)
        summary.aborted = INTERRUPTED
        interrupted.summary = summary  # (as the local engine's: the CLI's summary and run.json)
        record_written()
        raise interrupted
    if failure is not None or stopped is not None:
        # Raised out here, with no traceback holding the executor, so that its actors (and the
        # GPUs they hold) are released now rather than whenever the error is collected.
        del dataset
        gc.collect()
    if failure is not None:  # with what the run did, for its log (``RunSummary``, as Ctrl-C's)
        if ray_options.out_format == "wds":  # the ledger has what the actors committed: also
            _count_committed(summary, config["fs"], config["root"], todo_keys)  # unreturned
        summary.aborted = f"the Ray job failed: {failure}"
        record_written()
        error = RuntimeError(f"{summary.aborted}; rerun to resume")
        error.summary = summary
        raise error
    if stopped is not None:  # counted over the run, as the local engine's summary
        if ray_options.out_format == "wds":  # every actor's committed shards, in the ledger
            _count_committed(summary, config["fs"], config["root"], todo_keys)
        summary.device_failure = stopped.device_failure
        summary.aborted = OPEN_FILES if stopped.open_files else DISK_FULL
        summary.aborted = stopped_message(summary)  # (a failed device's first)
        return finished()
    log.info("Ray: %d images in %.1f s on %d actors", summary.done, summary.seconds, size)
    return finished()


def _count(batch: dict, summary: RunSummary, said: set[str],
           folders: dict[str, Path] | None = None,
           returned: set[str] | None = None) -> None:  # fmt: skip
    """Add an actor's returned rows to the summary, and say the warnings they bring
    (``said``: the once-per-run ones this run has said); ``folders`` (an input path as given
    -> its folder, ``--format files``) gives ``summary.last_folder``, the last one completed;
    ``returned`` gets the rows' paths (as given)."""
    folders = folders or {}
    for text in batch["log"]:
        for relayed in json.loads(text) if text else ():
            say_relayed(tuple(relayed), said)
    for path, status, error, size, overflowed in zip(
        batch["path"], batch["status"], batch["error"], batch["bytes"], batch["float16_levels"]
    ):
        if returned is not None:
            returned.add(str(path))
        if status == "ok":
            summary.done += 1
            summary.bytes_written += int(size)
            summary.add_float16_overflow(int(overflowed))
        elif status == "skipped":  # another run completed it meanwhile
            summary.skipped += 1
        else:
            summary.failed.append((str(path), str(error)))
            continue
        summary.last_folder = folders.get(str(path), summary.last_folder)  # complete either way


def _stopped(error: BaseException) -> Stopped | None:
    """A copy of the actor's ``Stopped`` that ``error`` is (Ray raises a subclass of it), or
    wraps: a copy, without the traceback that holds the executor (and its actors, see _run)."""
    seen = []
    while error is not None and not any(error is e for e in seen):
        if isinstance(error, Stopped):
            return Stopped(error.device_failure, error.done, error.bytes_written,
                            error.open_files)  # fmt: skip
        seen.append(error)
        error = getattr(error, "cause", None) or error.__cause__ or error.__context__
    return None


def _count_committed(summary: RunSummary, fs, root: str, keys: set[str]) -> None:
    """Count as done the images of ``keys`` (this run's) that the ledger has ``ok``: what the
    actors committed, also those whose calls had not returned when the run stopped."""
    ok = {}
    for row in read_index(fs, root, warn=False).to_pylist():
        if row["status"] == "ok" and row["key"] in keys:
            ok[row["key"]] = row["bytes"] or 0
    summary.done, summary.bytes_written = len(ok), sum(ok.values())


def _count_unreturned(summary: RunSummary, todo: list[Job], returned: set[str],
                      before: dict[str, tuple | None], options: RunOptions,
                      weights: dict) -> None:  # fmt: skip
    """Count as done the images of ``todo`` (``--format files``) whose rows had not come back
    (``returned``: the paths as given of those that had) but whose folder is complete: an
    actor wrote it before the run was stopped, in a call that had not returned. Their bytes are
    the files their manifests list, and the manifest. ``before``: with ``--overwrite``, each
    folder's manifest as planned (``_manifest_stamp``); one unchanged since is not this run's."""
    for job in todo:
        path = str(job.path)
        if path in returned or (path in before and _manifest_stamp(job.folder) == before[path]):
            continue
        complete, manifest, _ = _state(job, options, weights)
        if not complete:
            continue
        try:
            size = os.stat(job.folder / MANIFEST).st_size
        except OSError:  # removed since (another run's --overwrite): not counted
            continue
        summary.done += 1
        summary.bytes_written += size + sum(n or 0 for n in manifest_files(manifest).values())


def _failure(error: BaseException, said: set[str]) -> str:
    """Say the warnings an actor's error brings (``_relayed``), and return its reason."""
    for relayed in getattr(error, WARNINGS, None) or ():
        say_relayed(tuple(relayed), said)
    return _ray_reason(error)


def _ray_reason(error: BaseException) -> str:
    """One line for a Ray error: the innermost ``SomeError: message`` line of the remote
    traceback Ray puts in its message, else the first line."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    raised = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception)\b[^ ]*: ", ln)]
    return (raised[-1] if raised else lines[0] if lines else type(error).__name__)[:300]
