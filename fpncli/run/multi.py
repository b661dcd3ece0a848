"""Worker processes, one per entry of a device list (``--gpus all|N|I,J``, ``--processes N``;
by default several sharing one GPU for a large folder: ``auto_processes``): shards of one job
list, one summary.

Each worker is a spawned process that loads the weights onto its own device and runs
``pipeline.run_jobs`` on every N-th job (``select_shard(jobs, i, N)``); progress and the final
summaries come back through one pipe per worker and are merged. (Not one shared queue: a worker
killed while writing to it, by the OOM killer say, could leave the queue's lock held or half a
message in it, and the others would hang at exit or the parent would read garbage. A pipe of its
own only ever breaks its own worker's report.) The free-space check is done once, here, for the
whole run.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from ..io.guard import usable_cores
from ..io.jobs import Job
from ..io.latest import record_latest
from ..io.messages import one_line
from ..io.run_shard import select_shard
from .device import worker_threads
from .pipeline import record_last_folder, run_jobs
from .plan import Replaced, RunInputs, _complete, check_disk_space, plan_pending
from .steps import RunOptions, weights_meta
from .summary import (
    DISK_FULL,
    OPEN_FILES,
    Progress,
    RunSummary,
    WarningRelay,
    device_failed_message,
    say_relayed,
    stopped_message,
)

__all__ = ["run_on_devices", "auto_processes", "usable_cores"]

log = logging.getLogger(__name__)


def _worker(index: int, device: str, connection, inbox, go=None,
            interruptible: bool = True) -> None:  # fmt: skip
    """Worker ``index`` on ``device``: its task (its jobs, the weights, the seed, the options,
    the warm-up jobs and the run's inputs) comes through ``inbox``, its reports go through
    ``connection``; ``go`` ends a warm-up's wait; ``interruptible``: SIGINT, ignored while it
    started, raises KeyboardInterrupt from here on (reported in one line)."""
    lock = threading.Lock()  # progress comes from the writer threads: one message at a time
    # not inherited by anything this worker starts: the parent's EOF must mean this one is gone
    os.set_inheritable(connection.fileno(), False)
    _end_with_parent()

    def send(message: tuple) -> None:
        with lock:
            try:
                connection.send(message)
            except OSError:  # the parent's end is closed: it is gone, nobody reads the rest
                os._exit(1)

    # its warnings are said by the parent: one said once per run, once for all the workers
    logging.getLogger("fpncli").addHandler(WarningRelay(lambda r: send(("log", index, r))))
    if interruptible:  # started with SIGINT ignored (run_on_devices): from here, one line
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        jobs, weights, seed, options, warmup, run_inputs = inbox.recv()
        inbox.close()
        import torch

        from ..api import load_backbone, resolve_device

        dev = resolve_device(device)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)  # anything that says "the current device" means ours
        torch.set_num_threads(options.threads or 1)
        model = load_backbone(weights, device=dev, seed=seed, download=False)
        if warmup is not None:  # untimed, into folders of this worker's own
            own = [Job(j.path, j.folder.with_name(f"{j.folder.name}-{index}")) for j in warmup]
            run_jobs(own, model, replace(options, record_latest=False))
            send(("ready", index, None))
            go.wait()  # (for ever only while the parent lives: _end_with_parent)
        # the parent records the run's last folder as the latest extraction, once for the run
        summary = run_jobs(jobs, model, replace(options, record_latest=False),
                           progress=lambda p: send(("progress", index, p)),
                           run_inputs=run_inputs)  # fmt: skip
        send(("done", index, summary))
    except KeyboardInterrupt:  # SIGINT to this worker alone (a Ctrl-C at a terminal reaches
        # the parent too, which ends the workers itself): its shard is reported as not done
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # one report, however many more come
        send(("error", index, "interrupted (SIGINT)"))
    except Exception as e:  # reported to the parent, which ends the run with it
        send(("error", index, f"{type(e).__name__}: {one_line(str(e))}"))
    finally:
        connection.close()


def _hand_over(inbox, task: tuple) -> None:
    """Send a worker its task; one that has died meanwhile cannot read it, and its death is
    reported as it ends (the EOF of its own pipe), not here."""
    try:
        inbox.send(task)
    except OSError:  # (BrokenPipeError)
        pass
    finally:
        inbox.close()


def _ended(exitcode: int | None) -> str:
    """How a worker process ended, from its exit code: ``exit code 1``, ``killed by SIGKILL``
    (a negative code is the signal that killed it: -9 the OOM killer's, say)."""
    if exitcode is None:  # its pipe closed, yet it had not exited 5 s later
        return "its pipe closed, it had not exited"
    if exitcode >= 0:
        return f"exit code {exitcode}"
    try:
        return f"killed by {signal.Signals(-exitcode).name}"
    except ValueError:  # a number this platform has no name for
        return f"killed by signal {-exitcode}"


def _in_main_thread() -> bool:
    """Whether this is the main thread, the one that may set signal handlers."""
    return threading.current_thread() is threading.main_thread()


def _end_with_parent() -> None:
    """End this worker as soon as its parent is gone, however it ended (even SIGKILL, which
    the parent cannot act on): ``daemon=True`` only ends the workers at the parent's normal
    exit, and a worker left alone would run its whole shard for nobody. A thread waits on the
    parent's sentinel, which multiprocessing hands every child it starts (on POSIX a pipe whose
    other end only the parent holds, on Windows its process handle), and ends the process at
    once, without a traceback: a file being written is a temporary that the next run removes,
    and the image it was for is redone on resume."""
    parent = mp.parent_process()
    if parent is None:  # called in a process that multiprocessing did not start
        return

    def watch() -> None:
        parent.join()  # returns when the parent has ended
        os._exit(1)

    threading.Thread(target=watch, name="fpncli-parent-watch", daemon=True).start()


#: ``extract`` on one GPU without ``--gpus`` (``auto_processes``): worker processes sharing
#: it, one per this many cores, at most ``MAX_PROCESSES_PER_GPU``, each with this much GPU memory,
#: for a run of at least ``AUTO_MIN_IMAGES`` images. One process's Python threads (decoding,
#: feeding the GPU, drawing and encoding PNGs) take turns on its one interpreter lock: on an
#: H200 with 16 cores, 1080p JPEGs to heatmaps (bf16, batch 16) ran at 98 images/s in one
#: process, 138 in two, 191 in three and 224 in four (``scripts/gpu_check.sh``, 2026-11-27).
#: A worker's start (spawn, import, CUDA, weights) costs a few seconds, which 1,000 images at
#: the rate gained repay. Not when the run writes ``.npy``: its disk bounds it, and on an H100
#: with 16 cores the defaults (fp32, every output) ran at 11.7 images/s in three processes
#: against 13.0 in one (``scripts/gpu_check.sh``, 2026-11-26), where heatmaps alone ran at 129
#: against 69.
CORES_PER_PROCESS = 4
MAX_PROCESSES_PER_GPU = 4
GPU_GIB_PER_PROCESS = 16
AUTO_MIN_IMAGES = 1000


def auto_processes(device, images: int | None = None, *, npy: bool = False,
                   cores: int | None = None, gpu_gib: float | None = None) -> int:  # fmt: skip
    """How many worker processes share ``device`` when the user did not say (``--gpus``): one on
    a CPU, for a run that writes ``.npy`` (``npy``: bound by its disk), or for fewer than
    ``AUTO_MIN_IMAGES`` ``images`` (None: no minimum, for benchmarks, which leave the workers'
    start out of their time); else on CUDA, one per ``CORES_PER_PROCESS`` cores and
    ``GPU_GIB_PER_PROCESS`` of the GPU's memory, at most ``MAX_PROCESSES_PER_GPU``."""
    if device.type != "cuda" or npy or (images is not None and images < AUTO_MIN_IMAGES):
        return 1
    if gpu_gib is None:
        import torch

        gpu_gib = torch.cuda.get_device_properties(device).total_memory / 2**30
    cores = usable_cores() if cores is None else cores
    return max(1, min(MAX_PROCESSES_PER_GPU, cores // CORES_PER_PROCESS,
                      int(gpu_gib // GPU_GIB_PER_PROCESS)))  # fmt: skip


def worker_options(options: RunOptions, processes: int, cpu_count: int | None = None) -> RunOptions:
    """Each of ``processes`` workers gets its share of the cores for torch, decoding and
    writing, so N workers do not oversubscribe the machine, and of the free memory its CPU
    batches check against, so N batches started together fit together."""
    cores = cpu_count or usable_cores()
    share = worker_threads(cores, processes)
    return replace(
        options, force=True, threads=share, workers=max(1, min(options.workers, share)),
        writers=max(1, min(options.writers, share)),
        memory_share=options.memory_share / max(1, processes),
    )  # fmt: skip


def _merge(parts: list[RunSummary]) -> RunSummary:
    merged = RunSummary()
    for part in parts:
        merged.total += part.total
        merged.done += part.done
        merged.skipped += part.skipped
        merged.failed += part.failed
        merged.bytes_written += part.bytes_written
        merged.float16_images += part.float16_images
        merged.float16_levels += part.float16_levels
        merged.aborted = merged.aborted or part.aborted
        # the folder written last, whichever worker wrote it (a worker's skipped ones: the
        # run's last, see record_last_folder)
        written = part.last_written_at or 0.0
        if part.done and part.last_folder and written >= (merged.last_written_at or 0.0):
            merged.last_folder, merged.last_written_at = part.last_folder, written
        for stage, seconds in part.stage_seconds.items():
            merged.stage_seconds[stage] = merged.stage_seconds.get(stage, 0.0) + seconds
    failures = [p.device_failure for p in parts if p.device_failure]
    if merged.aborted and merged.aborted.startswith((DISK_FULL, OPEN_FILES)):
        merged.aborted = stopped_message(merged)  # counted over every worker
    elif failures:  # every failed device, counted over every worker
        merged.device_failure = "; ".join(failures)
        merged.aborted = device_failed_message(merged)
    return merged


def _record_newest(reports, options: RunOptions) -> None:
    """Record the folder the workers wrote last, by their last progress reports, as the
    latest extraction (``options.record_latest``): for a run stopped midway, as ``run_jobs``
    records one; none written, the record is left as it was."""
    written = [p for p in reports if p.done and p.last_folder is not None]
    if written and options.record_latest:
        record_latest(max(written, key=lambda p: p.last_written_at or 0.0).last_folder)


def run_on_devices(
    jobs: list[Job],
    model,
    options: RunOptions,
    devices: list[str],
    *,
    weights: str,
    seed: int = 0,
    progress: Callable[[Progress], None] | None = None,
    warmup: list[Job] | None = None,
    on_plan: Callable[[list[Job], Replaced], None] | None = None,
    run_inputs: RunInputs | None = None,
) -> RunSummary:
    """Run ``jobs`` split over ``devices`` (e.g. ``["cuda:0", "cuda:1"]``), one process each.

    ``model`` is a loaded backbone (on any device) used here only for its weights' identity, to
    find the pending jobs and check the disk once for the whole run.

    ``warmup`` (for benchmarks): every worker first runs these, untimed and unreported, into
    folders of its own (``<folder>-<worker>``), and the workers then start their shards
    together, once all are warm or ended (``RunSummary.released``): a timed span then holds
    neither a cold first batch (cuDNN's search, lazy kernel loading) nor one worker running
    alone while another still warms up.

    ``on_plan``: as ``run_jobs``'s, called with the pending jobs of the whole run (and what they
    replace). ``run_inputs``: as ``run_jobs``'s (``jobs`` are a ``--shard`` of a larger run).
    """
    inputs = run_inputs if run_inputs is not None else RunInputs(jobs)
    todo, replaced = plan_pending(jobs, options, weights_meta(model), inputs)
    if on_plan is not None:
        on_plan(todo, replaced)
    if not options.force:
        check_disk_space(todo, options.output, max_pixels=options.max_pixels)
    # each worker plans its shard as a part of this run: a folder that holds another shard's
    # file's outputs is redone there, as the plan above allowed. It is given the identities
    # that plan read, if it read any (none: no folder of the run holds another file's outputs)
    shared = RunInputs(identities=inputs.identities) if inputs.identities is not None else None
    options = worker_options(options, len(devices))
    context = mp.get_context("spawn")
    count = len(devices)
    pipes = [context.Pipe(duplex=False) for _ in devices]  # (receive end, send end) each
    go = context.Event() if warmup is not None else None
    shards = [select_shard(jobs, i, count) for i in range(count)]
    inboxes = [context.Pipe(duplex=False) for _ in devices]  # each worker's task, to it
    # a Ctrl-C at a terminal reaches the whole process group. The workers start with SIGINT
    # ignored (the parent ends them itself), else one still importing torch prints a traceback;
    # _worker then takes it back, to report it in one line. Their tasks are handed over once
    # they run: multiprocessing writes what it starts a process with into a pipe that the child
    # reads while it imports, and a large shard kept the start, and with it the time a Ctrl-C
    # here is lost, waiting for that. Where the parent ignores SIGINT, the workers do too.
    handler = signal.getsignal(signal.SIGINT)  # None: set outside Python, cannot be restored
    interruptible = handler is not signal.SIG_IGN
    ignoring = interruptible and handler is not None and _in_main_thread()
    workers = [
        context.Process(
            target=_worker,
            args=(i, device, pipes[i][1], inboxes[i][0], go, interruptible),
            daemon=True,
        )
        for i, device in enumerate(devices)
    ]
    receivers = {pipes[i][0]: i for i in range(count)}
    latest: dict[int, Progress] = {}
    summaries: dict[int, RunSummary] = {}
    errors: dict[int, str] = {}
    warm: set[int] = set()  # workers through their warm-up
    said: set[str] = set()  # the once-per-run warnings said
    released = None

    def failed(i: int, why: str) -> None:
        """Worker ``i`` ended without its summary: said now, not only when the run ends (or
        never, if a Ctrl-C ends it first), and kept for the run's end or its interrupted log."""
        errors[i] = why
        log.warning("%s; the other workers go on, its unfinished images are listed at the end", why)

    def closed(receiver) -> None:
        """The worker's pipe is done with: its death, unless it had reported its end."""
        i = receivers.pop(receiver)
        receiver.close()
        if i not in summaries and i not in errors:
            workers[i].join(timeout=5)
            failed(
                i,
                f"worker {i + 1} of {count}, on {devices[i]}, died ({_ended(workers[i].exitcode)})",
            )

    start = time.monotonic()
    try:
        if ignoring:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for worker in workers:
                worker.start()
        finally:
            if ignoring:
                signal.signal(signal.SIGINT, handler)
        for (_, sender), (receiver, _) in zip(pipes, inboxes, strict=True):
            sender.close()  # the worker's copy is the only one left: its death is an EOF here
            receiver.close()  # and of its task's: a send to a worker that died fails
        for i, (_, inbox) in enumerate(inboxes):  # each waits, if large, for the worker to read
            _hand_over(inbox, (shards[i], weights, seed, options, warmup, shared))
        while len(summaries) + len(errors) < count:
            for ready in mp_connection.wait(list(receivers), timeout=1.0):
                try:
                    kind, index, payload = ready.recv()
                except (EOFError, OSError, pickle.UnpicklingError, ValueError, TypeError):
                    closed(ready)  # closed, or cut off mid-message by a kill
                    continue
                if kind == "progress":
                    latest[index] = payload
                    if progress is not None:
                        values = latest.values()
                        # a worker yet to report counts its whole shard as to do (it says how
                        # many it skips with its first report): the total never starts short
                        left = sum(latest[i].todo if i in latest else len(shards[i])
                                   for i in range(count))  # fmt: skip
                        progress(Progress(
                            sum(p.done for p in values), sum(p.failed for p in values),
                            sum(p.skipped for p in values), left, time.monotonic() - start,
                            sum(p.bytes_written for p in values),
                        ))  # fmt: skip
                elif kind == "log":
                    say_relayed(payload, said)
                elif kind == "ready":
                    warm.add(index)
                elif kind == "done":
                    summaries[index] = payload
                else:
                    failed(index, f"worker {index + 1} of {count}, on {devices[index]}: {payload}")
            for ready, i in list(receivers.items()):  # exited without a word (never sent EOF?)
                if not workers[i].is_alive() and not ready.poll():
                    closed(ready)
            ended = set(summaries) | set(errors)
            if go is not None and released is None and len(warm | ended) == count:
                released = time.monotonic()  # all warm (or ended): go together
                go.set()
    except BaseException as e:  # Ctrl-C, SIGTERM (the CLI's) or a bug here: the workers end too
        if errors:  # the workers that had failed before: for the run's interrupted log
            with contextlib.suppress(AttributeError, TypeError):
                e.worker_errors = [errors[i] for i in sorted(errors)]
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
        for worker in workers:  # gone before the caller reports what was done
            if worker.pid is not None:  # (started)
                worker.join(timeout=10)
        _record_newest(latest.values(), options)
        raise
    for worker in workers:
        worker.join(timeout=30)
        if worker.is_alive():
            worker.terminate()
            worker.join()
    parts = [summaries[i] for i in sorted(summaries)]
    meta = weights_meta(model)
    for i in sorted(errors):  # a failed worker's shard, as its folders are on disk
        shard = shards[i]
        unfinished = [j for j in shard if not _complete(j, options, meta)]
        complete = len(shard) - len(unfinished)
        # of the complete ones, those it reported writing are done, the rest were complete
        # before (its reports, if it sent any, may have missed the last image it wrote)
        seen = latest.get(i)
        done = min(seen.done if seen else 0, complete)
        lost = RunSummary(total=len(shard), done=done, skipped=complete - done)
        lost.bytes_written = seen.bytes_written if seen else 0  # what it reported writing
        lost.failed = [(str(j.path), f"not extracted: {errors[i]}") for j in unfinished]
        parts.append(lost)
    merged = _merge(parts)
    if errors:
        reasons = [errors[i] for i in sorted(errors)] + ([merged.aborted] if merged.aborted else [])
        merged.aborted = "; ".join(reasons)
    merged.seconds = time.monotonic() - start
    merged.released = released
    record_last_folder(merged, jobs, todo, options)  # (none written: the run's last complete job)
    spans = [part.span for part in parts if part.span is not None]
    if spans:  # from the first worker's start to the last one's end (not their sum)
        merged.span = (min(start for start, _ in spans), max(end for _, end in spans))
    return merged
