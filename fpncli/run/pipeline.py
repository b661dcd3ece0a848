"""Batch extraction: inputs -> decode workers -> batches -> device -> background writers.

The steps themselves (decode one image, run one batch, write one image) are in ``steps``; the
device machinery (streams, pinned buffers, on-device reductions) in ``device``; what is pending
and whether it fits on the disk in ``plan``; the summary and progress types in ``summary``; the
runner that runs the batches on the device and hands them to the writers in ``runner``; the
folder sink (``--format files``) in ``folder_sink``. This module plans a run, decodes ahead and
groups the images into batches for the runner (and re-exports what callers of a run need).

Every stage is joined to the next by a bounded window, so memory depends on the batch size and
the number of workers, never on the number of images. Images are batched only with images of the
same padded shape, so each image's features are exactly those Detectron2's DefaultPredictor
computes for it alone (a bigger canvas would change the cells near the bottom/right border). With
``OutputOptions.canvas`` the padded shape is the canvas (``io.canvas``): images of different sizes
share batches, and their features are those of Detectron2's batched inference.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from ..api import check_precision
from ..io.guard import is_out_of_open_files
from ..io.inputs import IMAGE_EXTENSIONS, discover_inputs
from ..io.jobs import Job, plan_jobs
from ..io.latest import record_latest
from ..io.messages import error_text
from ..io.run_shard import select_shard, shard_from_env
from ..model.fpn import FPN
from .device import model_for_run, run_settings
from .folder_sink import FolderSink
from .plan import (
    InsufficientDiskError,
    Replaced,
    RunInputs,
    check_disk_space,
    estimate_run_bytes,
    estimate_run_volume,
    pending_jobs,
    plan_pending,
)
from .runner import Runner, _reason, background
from .steps import (
    Decoded,
    DeviceState,
    RunOptions,
    decode,
    infer_batch,
    weights_meta,
    write_result,
)
from .summary import (
    INTERRUPTED,
    Progress,
    RunSummary,
    device_failed_message,
    disk_full_message,
    open_files_message,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "Job",
    "RunOptions",
    "RunSummary",
    "Progress",
    "InsufficientDiskError",
    "check_disk_space",
    "disk_full_message",
    "pending_jobs",
    "plan_pending",
    "Replaced",
    "RunInputs",
    "weights_meta",
    "discover_inputs",
    "plan_jobs",
    "select_shard",
    "shard_from_env",
    "estimate_run_bytes",
    "estimate_run_volume",
    "run_jobs",
    "Decoded",
    "decode",
    "DeviceState",
    "infer_batch",
    "write_result",
    "run_decoded",
    "record_last_folder",
]


def run_jobs(
    jobs: list[Job],
    model: FPN,
    options: RunOptions,
    *,
    progress: Callable[[Progress], None] | None = None,
    sink=None,
    on_plan: Callable[[list[Job], Replaced], None] | None = None,
    run_inputs: RunInputs | None = None,
) -> RunSummary:
    """Extract every job's image into its folder; complete folders are skipped unless overwrite.

    The last folder written, else (none written) the last one skipped as complete, is recorded
    as the latest extraction (``fpncli show`` with no target) and is ``summary.last_folder``;
    a run that stops midway (Ctrl-C, an error) records the last folder it wrote, if any.
    With a ``sink`` (``run.wds``), every job is run and its outputs go to ``sink.write`` (the
    caller resumed and checked the disk), and no folder is recorded: the caller records its
    output as the latest extraction (``run.wds.record_output``).
    ``on_plan`` is called once with the jobs the run will do (the pending ones) and what they
    replace (``plan.Replaced``: complete folders made with other settings), before the disk
    check and the run: the CLI states the output volume of those, not of every job, and says
    what is replaced. ``run_inputs``: the input files of the whole run when ``jobs`` are a
    part of it (``--shard``; a worker's shard), for ``plan_pending``'s other-files check.

    Bad images are reported in ``summary.failed`` and skipped; a full disk stops the run cleanly
    (``summary.aborted``). Raises InsufficientDiskError before starting when the estimated output
    does not fit on the disk (unless ``options.force``).
    """
    device = next(model.parameters()).device
    check_precision(options.precision, device)
    summary = RunSummary(total=len(jobs))
    inputs = run_inputs if run_inputs is not None else RunInputs(jobs)
    if sink is None:
        todo, replaced = plan_pending(jobs, options, weights_meta(model), inputs)
    else:
        todo, replaced = list(jobs), Replaced()
    summary.skipped = len(jobs) - len(todo)
    if on_plan is not None:
        on_plan(todo, replaced)
    if not options.force and sink is None:
        check_disk_space(todo, options.output, max_pixels=options.max_pixels)
    input_format = model.weights_info.input
    # the writers check each folder again, locked: another run may write it meanwhile
    writer = sink if sink is not None else FolderSink(inputs)
    try:
        _run(model, options, summary, len(todo), progress, writer,
             lambda runner: _feed(runner, todo, options, input_format))  # fmt: skip
    except BaseException:  # Ctrl-C, SIGTERM or an error midway: what it wrote is the latest
        if sink is None and summary.last_folder is not None:  # (none written: left as it was)
            record_last_folder(summary, jobs, todo, options)
        raise
    if sink is None:  # (a sink's caller records its output: run.wds)
        record_last_folder(summary, jobs, todo, options)
    return summary


def record_last_folder(summary: RunSummary, jobs: list[Job], todo: list[Job],
                       options: RunOptions) -> None:  # fmt: skip
    """Record the run's last folder as the latest extraction (``options.record_latest``): the
    last one written (``summary.last_folder``), else the last of ``jobs`` skipped as already
    complete (not in ``todo``), which becomes ``summary.last_folder``. Shared by the engines
    that write ``--format files`` folders (this one, ``multi``'s, Ray's)."""
    if summary.last_folder is None:  # none written: the last job skipped as already complete
        pending = {id(job) for job in todo}  # (this command named it: a bare `fpncli show`)
        skipped = next((job for job in reversed(jobs) if id(job) not in pending), None)
        summary.last_folder = skipped.folder if skipped is not None else None
    if summary.last_folder is not None and options.record_latest:
        record_latest(summary.last_folder)


def run_decoded(items: list[Decoded], model: FPN, options: RunOptions, *, sink=None) -> RunSummary:
    """Run images decoded elsewhere (``steps.decode``; the Ray engine's actors) through the same
    batching by padded shape, device steps and writers as ``run_jobs``; waits for the writes."""
    check_precision(options.precision, next(model.parameters()).device)
    summary = RunSummary(total=len(items))
    buckets: dict[tuple[int, int], list[Decoded]] = {}
    for item in items:
        shape = (item.prepared.padded_height, item.prepared.padded_width)
        buckets.setdefault(shape, []).append(item)

    def feed(runner: Runner) -> None:
        for same in buckets.values():
            if not runner.abort.is_set():
                runner.run_batch(same)

    _run(model, options, summary, len(items), None, sink, feed)
    return summary


def _run(model: FPN, options: RunOptions, summary: RunSummary, todo: int, progress, sink,
         feed: Callable[[Runner], None]) -> None:  # fmt: skip
    """Run ``feed(runner)`` with the run's settings and model; then wait for the writers."""
    device = next(model.parameters()).device
    start = time.monotonic()
    fixed_shapes = options.pad_batches if options.pad_batches is not None else True
    benchmark = device.type == "cuda" and (options.compile or fixed_shapes)
    with run_settings(device, benchmark=benchmark, threads=options.threads,
                      compile=options.compile):  # fmt: skip
        run_model = model_for_run(model, options.precision, compile=options.compile)
        try:
            runner = Runner(run_model, options, summary, todo, progress, sink)
            runner.weights_meta = weights_meta(model)
            try:
                feed(runner)
            finally:
                runner.close()
        except BaseException as e:  # what was done so far, for the run's log: after Ctrl-C, or
            # an error that ends the run midway (a writer thread that cannot start)
            summary.seconds = time.monotonic() - start
            summary.aborted = INTERRUPTED if isinstance(e, KeyboardInterrupt) else error_text(e)
            e.summary = summary
            raise
    summary.span = (start, time.monotonic())
    summary.seconds = summary.span[1] - start
    if runner.disk_was_full:
        summary.aborted = disk_full_message(summary)
    elif runner.broken is not None:
        summary.device_failure = f"{device} failed ({runner.broken})"
        summary.aborted = device_failed_message(summary)
    elif runner.out_of_files:
        summary.aborted = open_files_message(summary)


def _feed(runner: Runner, todo: list[Job], options: RunOptions, input_format) -> None:
    """Decode ahead in a thread pool, group same-shape images into batches, run them."""
    window = options.workers * 2 + options.batch_size * 2
    buckets: dict[tuple[int, int], list[Decoded]] = {}
    buffered = 0
    pending: deque[tuple[Job, Future]] = deque()
    jobs_iter = iter(todo)
    with ThreadPoolExecutor(options.workers, thread_name_prefix="fpncli-decode",
                            initializer=background(runner.device)) as decoder:  # fmt: skip
        while not runner.abort.is_set():
            while len(pending) < window and (job := next(jobs_iter, None)) is not None:
                pending.append((job, decoder.submit(runner.decode, job, input_format)))
            if not pending:
                break
            job, future = pending.popleft()
            try:
                item = future.result()
            except Exception as e:  # noqa: BLE001 - any error reading one file fails that file only
                if is_out_of_open_files(e):  # the run's limit, not the file's: all would fail
                    runner.files_ran_out()
                    continue
                runner.fail(job.path, _reason(e))
                continue
            if item is None:  # another run completed it meanwhile: counted as skipped
                continue
            shape = (item.prepared.padded_height, item.prepared.padded_width)
            bucket = buckets.setdefault(shape, [])
            bucket.append(item)
            buffered += 1
            if len(bucket) >= runner.state.batch_size:
                buffered -= len(bucket)
                runner.run_batch(buckets.pop(shape))
            elif buffered >= 4 * options.batch_size:  # many shapes: flush the fullest
                fullest = max(buckets, key=lambda s: len(buckets[s]))
                buffered -= len(buckets[fullest])
                runner.run_batch(buckets.pop(fullest))
        for shape in list(buckets):
            if runner.abort.is_set():
                break
            runner.run_batch(buckets.pop(shape))
        for _, future in pending:
            future.cancel()
