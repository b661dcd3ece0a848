"""Batch extraction: inputs -> decode workers -> batches -> backbone -> background writers.

Every stage is joined to the next by a bounded window, so memory depends on the batch size and
the number of workers, never on the number of images. Images are batched only with images of the
same padded shape, so each image's features are exactly those Detectron2's DefaultPredictor
computes for it alone (a bigger canvas would change the cells near the bottom/right border).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..api import check_precision, run_backbone
from ..io.guard import is_disk_full, open_regular
from ..io.inputs import (
    IMAGE_EXTENSIONS,
    Job,
    discover_inputs,
    plan_jobs,
    select_shard,
    shard_from_env,
)
from ..io.outputs import (
    OutputOptions,
    estimate_bytes_per_image,
    is_complete,
    record_latest,
    run_key,
    write_image_outputs,
)
from ..io.preprocess import (
    DEFAULT_MAX_PIXELS,
    LoadedImage,
    Prepared,
    load_image,
    prepare,
    resized_shape,
)
from ..model.fpn import FPN

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
    "weights_meta",
    "discover_inputs",
    "plan_jobs",
    "select_shard",
    "shard_from_env",
    "estimate_run_bytes",
    "run_jobs",
]

log = logging.getLogger(__name__)


class InsufficientDiskError(RuntimeError):
    """The output disk has less free space than the run is estimated to write."""


def estimate_run_bytes(jobs: list[Job], options: OutputOptions, sample: int = 32) -> int:
    """Estimate the bytes a run will write from the header sizes of a spread-out sample."""
    if not jobs:
        return 0
    step = max(1, len(jobs) // sample)
    sizes = []
    for job in jobs[::step][:sample]:
        try:  # a header read; whatever goes wrong here is reported when the image is loaded
            with open_regular(job.path) as f, Image.open(f) as im:
                width, height = im.size
        except Exception:
            continue
        if options.resize:
            height, width = resized_shape(height, width, options.min_size, options.max_size)
        padded = (math.ceil(height / 32) * 32, math.ceil(width / 32) * 32)
        sizes.append(estimate_bytes_per_image(*padded, options))
    per_image = max(sizes) if sizes else estimate_bytes_per_image(800, 1344, options)
    return per_image * len(jobs)


def _free_bytes(folder: Path) -> int:
    probe = folder.absolute()
    while not probe.exists():
        probe = probe.parent
    return shutil.disk_usage(probe).free


@dataclass(frozen=True)
class RunOptions:
    """How to run a batch (the output options are in ``output``)."""

    output: OutputOptions = field(default_factory=OutputOptions)
    precision: str = "fp32"
    batch_size: int = 1
    workers: int = 2
    writers: int = 2
    overwrite: bool = False
    force: bool = False  # go on even when the disk estimate exceeds the free space
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        for name in ("batch_size", "workers", "writers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclass
class RunSummary:
    """What a run did."""

    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    bytes_written: int = 0
    aborted: str | None = None  # why the run stopped early (disk full), if it did
    last_folder: Path | None = None

    @property
    def images_per_s(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Progress:
    """A progress report: sent after every image that finishes (written or failed)."""

    done: int
    failed: int
    skipped: int
    todo: int  # images this run has to process (excluding skipped)
    elapsed_s: float


def weights_meta(model: FPN) -> dict:
    info = model.weights_info
    return {
        "name": info.name, "sha256": info.sha256, "format": info.format,
        "random": info.random, "seed": info.seed,
    }  # fmt: skip


def _key(job: Job, options: RunOptions, weights: dict) -> str | None:
    try:
        return run_key(job.path, options.output, weights, options.precision)
    except OSError:
        return None


def _complete(job: Job, options: RunOptions, weights: dict) -> bool:
    key = _key(job, options, weights)
    return key is not None and is_complete(job.folder, key)


@dataclass
class _Item:
    job: Job
    image: LoadedImage
    prepared: Prepared


def _decode(job: Job, options: RunOptions, input_format) -> _Item:
    image = load_image(job.path, max_pixels=options.max_pixels)
    out = options.output
    prepared = prepare(
        image.rgb, input_format, min_size=out.min_size, max_size=out.max_size, resize=out.resize,
        max_pixels=options.max_pixels,
    )  # fmt: skip
    return _Item(job, image, prepared)


def _reason(error: BaseException) -> str:
    text = str(error).strip()
    if isinstance(error, MemoryError):
        text = f"out of memory ({text})" if text else "out of memory"
    elif not isinstance(error, (OSError, ValueError)):
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return (text or type(error).__name__).splitlines()[0]


class _Runner:
    def __init__(self, model: FPN, options: RunOptions, summary: RunSummary, todo: int, progress):
        self.model = model
        self.options = options
        self.summary = summary
        self.todo = todo
        self.progress = progress
        self.device = next(model.parameters()).device
        self.lock = threading.Lock()
        self.abort = threading.Event()
        self.disk_was_full = False
        self.write_slots = threading.BoundedSemaphore(max(2, 2 * options.writers))
        self.writer = ThreadPoolExecutor(options.writers, thread_name_prefix="fpncli-write")
        self.start = time.monotonic()
        self.weights_meta = weights_meta(model)

    def report(self) -> None:
        if self.progress is not None:
            s = self.summary
            self.progress(
                Progress(s.done, len(s.failed), s.skipped, self.todo, time.monotonic() - self.start)
            )

    def fail(self, path: Path, reason: str) -> None:
        with self.lock:
            self.summary.failed.append((str(path), reason))
        log.info("failed: %s: %s", path, reason)
        self.report()

    def run_batch(self, items: list[_Item], batch: torch.Tensor | None = None) -> None:
        if batch is None:
            batch = torch.from_numpy(np.stack([it.prepared.tensor for it in items]))
            for it in items:
                it.prepared.tensor = None  # the batch holds the pixels now
            if self.device.type == "cuda":
                batch = batch.pin_memory()
        try:
            features = run_backbone(self.model, batch, precision=self.options.precision)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            if len(items) == 1:
                self.fail(items[0].job.path, "CUDA out of memory even for a batch of one")
                return
            half = len(items) // 2
            log.warning("CUDA out of memory on a batch of %d: splitting it", len(items))
            self.run_batch(items[:half], batch[:half])
            self.run_batch(items[half:], batch[half:])
            return
        out = self.options.output
        dtype = torch.float16 if out.dtype == "float16" else torch.float32
        host = {}
        for name in out.levels:
            level = features[name].to(dtype)
            if self.device.type == "cuda":
                buffer = torch.empty(level.shape, dtype=dtype, pin_memory=True)
                buffer.copy_(level, non_blocking=True)
                host[name] = buffer
            else:
                host[name] = level
        ready = None
        if self.device.type == "cuda":
            ready = torch.cuda.Event()
            ready.record()
        for i, it in enumerate(items):
            self.write_slots.acquire()
            future = self.writer.submit(self.write, it, host, i, ready)
            future.add_done_callback(lambda _f: self.write_slots.release())

    def write(self, item: _Item, host: dict, index: int, ready) -> None:
        if self.abort.is_set():
            return
        if ready is not None:
            ready.synchronize()
        features = {name: t[index : index + 1].numpy() for name, t in host.items()}
        try:
            written = write_image_outputs(
                item.job.folder,
                features=features,
                image=item.image,
                prepared=item.prepared,
                options=self.options.output,
                weights=self.weights_meta,
                device=str(self.device),
                precision=self.options.precision,
                run_key=_key(item.job, self.options, self.weights_meta),
                skip_if_complete=not self.options.overwrite,
            )
        except OSError as e:
            if is_disk_full(e):
                self.disk_full()
                return
            self.fail(item.job.path, f"could not write {item.job.folder}: {_reason(e)}")
            return
        except Exception as e:  # a bug must not pass silently, nor stop the other images
            log.debug("writing %s failed", item.job.folder, exc_info=True)
            self.fail(item.job.path, f"internal error while writing: {type(e).__name__}: {e}")
            return
        with self.lock:
            if written is None:  # another run completed it meanwhile
                self.summary.skipped += 1
            else:
                self.summary.done += 1
                self.summary.bytes_written += written
                self.summary.last_folder = item.job.folder
        self.report()

    def disk_full(self) -> None:
        """Stop at the first full-disk write: one message, the image is not counted as failed."""
        if not self.abort.is_set():
            log.info("disk full: stopping")
        self.disk_was_full = True
        self.abort.set()

    def close(self) -> None:
        self.writer.shutdown(wait=True)


def disk_full_message(summary: RunSummary) -> str:
    """The one line a run stopped by a full disk ends with."""
    return (
        f"disk full: {summary.done + summary.skipped} of {summary.total} done, rerun the same "
        "command after freeing space"
    )


def pending_jobs(jobs: list[Job], options: RunOptions, weights: dict) -> list[Job]:
    """The jobs whose folder is not complete with the same input, weights and settings."""
    return [j for j in jobs if options.overwrite or not _complete(j, options, weights)]


def check_disk_space(todo: list[Job], output: OutputOptions) -> None:
    """Raise InsufficientDiskError when the estimated output exceeds the free space."""
    if not todo:
        return
    common = Path(os.path.commonpath([str(j.folder.absolute()) for j in todo[:1000]]))
    need, free = estimate_run_bytes(todo, output), _free_bytes(common)
    if need > free:
        raise InsufficientDiskError(
            f"this run would write about {need / 1e9:.2f} GB ({len(todo)} images) but only "
            f"{free / 1e9:.2f} GB are free under {common}; free space, write fewer levels "
            "(--levels, --dtype float16, --no-npy), or pass --force"
        )


def run_jobs(
    jobs: list[Job],
    model: FPN,
    options: RunOptions,
    *,
    progress: Callable[[Progress], None] | None = None,
) -> RunSummary:
    """Extract every job's image into its folder; complete folders are skipped unless overwrite.

    Bad images are reported in ``summary.failed`` and skipped; a full disk stops the run cleanly
    (``summary.aborted``). Raises InsufficientDiskError before starting when the estimated output
    does not fit on the disk (unless ``options.force``).
    """
    check_precision(options.precision, next(model.parameters()).device)
    summary = RunSummary(total=len(jobs))
    todo = pending_jobs(jobs, options, weights_meta(model))
    summary.skipped = len(jobs) - len(todo)
    if not options.force:
        check_disk_space(todo, options.output)
    start = time.monotonic()
    runner = _Runner(model, options, summary, len(todo), progress)
    input_format = model.weights_info.input
    window = options.workers * 2 + options.batch_size * 2
    buckets: dict[tuple[int, int], list[_Item]] = {}
    buffered = 0
    pending: deque[tuple[Job, Future]] = deque()
    jobs_iter = iter(todo)
    try:
        with ThreadPoolExecutor(options.workers, thread_name_prefix="fpncli-decode") as decoder:
            while not runner.abort.is_set():
                while len(pending) < window and (job := next(jobs_iter, None)) is not None:
                    pending.append((job, decoder.submit(_decode, job, options, input_format)))
                if not pending:
                    break
                job, future = pending.popleft()
                try:
                    item = future.result()
                except Exception as e:  # any error reading one file fails that file only
                    runner.fail(job.path, _reason(e))
                    continue
                shape = item.prepared.tensor.shape[1:]
                bucket = buckets.setdefault(shape, [])
                bucket.append(item)
                buffered += 1
                if len(bucket) >= options.batch_size:
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
    finally:
        runner.close()
    summary.seconds = time.monotonic() - start
    if runner.disk_was_full:
        summary.aborted = disk_full_message(summary)
    if summary.last_folder is not None:
        record_latest(summary.last_folder)
    return summary
