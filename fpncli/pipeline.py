"""Batch extraction: inputs -> decode workers -> batches -> backbone -> background writers.

Every stage is joined to the next by a bounded window, so memory depends on the batch size and
the number of workers, never on the number of images. Images are batched only with images of the
same padded shape, so each image's features are exactly those Detectron2's DefaultPredictor
computes for it alone (a bigger canvas would change the cells near the bottom/right border).
"""

from __future__ import annotations

import errno
import glob
import logging
import math
import os
import shutil
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .api import check_precision, run_backbone
from .fpn import FPN
from .outputs import (
    OutputOptions,
    estimate_bytes_per_image,
    is_complete,
    record_latest,
    run_key,
    write_image_outputs,
)
from .preprocess import (
    DEFAULT_MAX_PIXELS,
    LoadedImage,
    Prepared,
    load_image,
    prepare,
    resized_shape,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "Job",
    "RunOptions",
    "RunSummary",
    "Progress",
    "InsufficientDiskError",
    "discover_inputs",
    "plan_jobs",
    "select_shard",
    "shard_from_env",
    "estimate_run_bytes",
    "run_jobs",
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
     ".ppm", ".pgm", ".pbm", ".pnm"}
)  # fmt: skip


class InsufficientDiskError(RuntimeError):
    """The output disk has less free space than the run is estimated to write."""


@dataclass(frozen=True)
class Job:
    """One image to extract: where it is read from and the folder its outputs go to."""

    path: Path
    folder: Path


def _walk_images(folder: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS and not name.startswith("."):
                found.append(Path(dirpath) / name)
    return found


def _glob_base(pattern: str) -> Path:
    parts = []
    for part in Path(pattern).parts:
        if glob.has_magic(part):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def discover_inputs(
    inputs: Iterable[str], from_list: Iterable[str] | None = None
) -> list[tuple[Path, Path]]:
    """Expand files, folders (recursively), globs and list entries into ``(image, root)`` pairs.

    The order is deterministic: arguments in the order given, each folder walked in sorted order;
    an image met twice is kept once. ``root`` is what the output tree mirrors: the folder for a
    folder input, the glob's fixed prefix for a glob, the parent for a file, and the common
    folder of all entries for a list.

    Raises:
        FileNotFoundError: an argument that is neither a file, a folder nor a matching glob.
    """
    pairs: list[tuple[Path, Path]] = []
    for raw in inputs:
        path = Path(raw).expanduser()
        if path.is_dir():
            pairs += [(p, path) for p in _walk_images(path)]
        elif path.is_file():
            pairs.append((path, path.parent))
        elif glob.has_magic(raw):
            base = _glob_base(raw)
            matches = sorted(glob.glob(raw, recursive=True))
            if not matches:
                raise FileNotFoundError(f"no file matches {raw}")
            for match in map(Path, matches):
                if match.is_dir():
                    pairs += [(p, base) for p in _walk_images(match)]
                elif match.suffix.lower() in IMAGE_EXTENSIONS:
                    pairs.append((match, base))
        else:
            raise FileNotFoundError(f"no such file or folder: {raw}")
    if from_list is not None:
        entries = [Path(line.strip()) for line in from_list if line.strip()]
        entries = [e for e in entries if not str(e).startswith("#")]
        if entries:
            root = Path(os.path.commonpath([str(e.absolute().parent) for e in entries]))
            pairs += [(e, root) for e in entries]
    seen = set()
    unique = []
    for image, root in pairs:
        key = os.path.abspath(image)
        if key not in seen:
            seen.add(key)
            unique.append((image, root))
    return unique


def plan_jobs(pairs: list[tuple[Path, Path]], out_dir: Path) -> list[Job]:
    """Give every image its own output folder, mirroring its path below its root.

    ``root/sub/a.jpg`` goes to ``out_dir/sub/a``. Where two images would share a folder, those
    in the same source folder with the same stem (``a.jpg`` and ``a.png``) use ``a_jpg`` and
    ``a_png``; any remaining clash (the same relative path under two roots) gets ``_2``, ``_3``
    in input order.
    """
    rels = []
    for image, root in pairs:
        try:
            rel = image.absolute().relative_to(root.absolute())
        except ValueError:
            rel = Path(image.name)
        rels.append(rel)
    stems = Counter(
        (os.path.abspath(img.parent), rel.parent / rel.stem) for (img, _), rel in zip(pairs, rels)
    )
    jobs, used = [], set()
    for (image, _), rel in zip(pairs, rels):
        key = rel.parent / rel.stem
        if stems[(os.path.abspath(image.parent), key)] > 1:
            key = rel.parent / f"{rel.stem}_{rel.suffix.lstrip('.').lower()}"
        candidate, n = key, 1
        while candidate in used:
            n += 1
            candidate = key.parent / f"{key.name}_{n}"
        used.add(candidate)
        jobs.append(Job(image, out_dir / candidate))
    return jobs


def select_shard(jobs: list, index: int, count: int) -> list:
    """Every ``count``-th job starting at ``index``: a deterministic split of the input list."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard must be I/N with 0 <= I < N, got {index}/{count}")
    return jobs[index::count]


def shard_from_env() -> tuple[int, int] | None:
    """``(RANK, WORLD_SIZE)`` when torchrun (or the user) set them, else None."""
    rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if rank is None or world is None:
        return None
    return int(rank), int(world)


def estimate_run_bytes(jobs: list[Job], options: OutputOptions, sample: int = 32) -> int:
    """Estimate the bytes a run will write from the header sizes of a spread-out sample."""
    if not jobs:
        return 0
    step = max(1, len(jobs) // sample)
    sizes = []
    for job in jobs[::step][:sample]:
        try:
            from PIL import Image

            with Image.open(job.path) as im:
                width, height = im.size
        except (OSError, ValueError):
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


def _weights_meta(model: FPN) -> dict:
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
        image.rgb, input_format, min_size=out.min_size, max_size=out.max_size, resize=out.resize
    )
    return _Item(job, image, prepared)


def _reason(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


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
        self.write_slots = threading.BoundedSemaphore(max(2, 2 * options.writers))
        self.writer = ThreadPoolExecutor(options.writers, thread_name_prefix="fpncli-write")
        self.start = time.monotonic()
        self.weights_meta = _weights_meta(model)

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
            )
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                self.abort.set()
                with self.lock:
                    self.summary.aborted = f"disk full while writing {item.job.folder}"
            self.fail(item.job.path, f"could not write {item.job.folder}: {_reason(e)}")
            return
        except Exception as e:  # a bug must not pass silently, nor stop the other images
            log.debug("writing %s failed", item.job.folder, exc_info=True)
            self.fail(item.job.path, f"internal error while writing: {type(e).__name__}: {e}")
            return
        with self.lock:
            self.summary.done += 1
            self.summary.bytes_written += written
            self.summary.last_folder = item.job.folder
        self.report()

    def close(self) -> None:
        self.writer.shutdown(wait=True)


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
    weights = _weights_meta(model)
    todo = [j for j in jobs if options.overwrite or not _complete(j, options, weights)]
    summary.skipped = len(jobs) - len(todo)
    if todo and not options.force:
        common = Path(os.path.commonpath([str(j.folder.absolute()) for j in todo[:1000]]))
        need, free = estimate_run_bytes(todo, options.output), _free_bytes(common)
        if need > free:
            raise InsufficientDiskError(
                f"this run would write about {need / 1e9:.2f} GB ({len(todo)} images) but only "
                f"{free / 1e9:.2f} GB are free under {common}; free space, write fewer levels "
                "(--levels, --dtype float16, --no-npy), or pass --force"
            )
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
                except (OSError, ValueError) as e:
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
    if summary.last_folder is not None:
        record_latest(summary.last_folder)
    return summary
