"""The steps of a run that any engine reuses unchanged: decode one image, run one batch on the
device (results come back to the host asynchronously), write one image's results.

``pipeline.run_jobs`` schedules them with threads on one device; another engine (Ray, a
notebook loop) can call the same functions:

>>> state = DeviceState.create(device, options)
>>> items = [decode(job, options, model.weights_info.input) for job in jobs]
>>> result = infer_batch(model, items, options, state)
>>> result.wait()
>>> for i, item in enumerate(items):
...     write_result(item, result.image(i), options, weights_meta(model), str(device))
"""

from __future__ import annotations

import os
import time
from collections.abc import Container
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..api import run_backbone
from ..io.canvas import check_canvas
from ..io.image_load import LoadedImage, load_image
from ..io.image_writer import write_image_outputs
from ..io.jobs import Job
from ..io.outputs import LevelResult, OutputOptions
from ..io.pillow_open import DEFAULT_MAX_PIXELS
from ..io.preprocess import Prepared, resize_for_model, resized_shape
from ..io.run_keys import run_key
from ..model.fpn import FPN, STAGES
from ..model.normalize import normalize_batch
from ..model.resize import pillow_bilinear
from ..weights.registry import InputFormat
from .device import BatchResult, InputStager, PinnedPool, StageClock, results_to_host

__all__ = [
    "RunOptions",
    "weights_meta",
    "job_run_key",
    "Decoded",
    "decode",
    "needs_image",
    "resizes_on_device",
    "DeviceState",
    "infer_batch",
    "write_result",
]


@dataclass(frozen=True)
class RunOptions:
    """How to run a batch (the output options are in ``output``)."""

    output: OutputOptions = field(default_factory=OutputOptions)
    precision: str = "fp32"
    batch_size: int = 1
    workers: int = 2  # decoding threads
    writers: int = 2  # writing threads
    overwrite: bool = False
    force: bool = False  # go on even when the disk estimate exceeds the free space
    max_pixels: int = DEFAULT_MAX_PIXELS
    queue_mb: int = 2048  # results waiting for the writers, at most (one batch always fits)
    compile: bool = False  # torch.compile the model (once per model and precision)
    pad_batches: bool | None = None  # pad partial batches to batch_size; None: on CUDA only
    threads: int | None = None  # torch's CPU threads during the run (None: leave as is)
    #: the share of the machine's free memory a CPU batch may count on (``hostmem``): 1/N in
    #: each of N worker processes, whose batches start together
    memory_share: float = 1.0
    record_latest: bool = True  # remember the last folder for ``fpncli show`` (not for bench)
    #: resize on the model's device (Pillow's bilinear, exactly) instead of in the decoding
    #: threads; None: on CUDA (the CPU's threads are better spent decoding there)
    resize_on_device: bool | None = None
    #: the run's output root (-o) of ``--format files``: a symlinked folder below it is never
    #: written through, one at or above it is the user's choice (None: the topmost marked root)
    root: Path | None = None

    def __post_init__(self) -> None:
        for name in ("batch_size", "workers", "writers", "queue_mb"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 < self.memory_share <= 1.0:
            raise ValueError(f"memory_share must be in (0, 1], got {self.memory_share}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")
        out = self.output
        check_canvas(out.canvas, min_size=out.min_size, max_size=out.max_size,
                     resize=out.resize, max_pixels=self.max_pixels)  # fmt: skip


def weights_meta(model: FPN) -> dict:
    info = model.weights_info
    return {
        "name": info.name, "sha256": info.sha256, "format": info.format,
        "random": info.random, "seed": info.seed,
    }  # fmt: skip


def job_run_key(job: Job, options: RunOptions, weights: dict,
                stat: os.stat_result | None = None) -> str | None:  # fmt: skip
    try:
        return run_key(job.path, options.output, weights, options.precision, stat)
    except OSError:
        return None


def _stat(path: str | os.PathLike) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _same_file(a: os.stat_result | None, b: os.stat_result | None) -> bool:
    return a is not None and b is not None and (a.st_dev, a.st_ino, a.st_size, a.st_mtime_ns) == (
        b.st_dev, b.st_ino, b.st_size, b.st_mtime_ns)  # fmt: skip


@dataclass
class Decoded:
    """An image decoded and resized by a worker: what the device needs and what the writer
    needs. ``pixels`` is ``(h, w, 3)`` uint8 **RGB** (colour order and normalization happen on
    the device)."""

    job: Job
    image: LoadedImage
    prepared: Prepared
    pixels: np.ndarray | None
    decode_s: float = 0.0
    #: the input file as it was while it was read (None: it changed meanwhile, or is gone), for
    #: the run key: a file replaced during the run must not pass for the one decoded
    source_stat: os.stat_result | None = None


#: An image is resized on the device (``decode(..., resize_on_device=True)``) when it has at most
#: this many times the pixels of its resized self (a 1080p frame: 2x; a 12 MP photo, 12x, is
#: resized by the decoding thread): its upload and its place in the decode window cost at most
#: this factor more than the resized pixels' would.
DEVICE_RESIZE_MAX_RATIO = 4


def decode(job: Job, options: RunOptions, input_format: InputFormat, *,
           resize_on_device: bool = False) -> Decoded:  # fmt: skip
    """Read and resize one image (thread-safe; raises OSError/ValueError for bad files).

    ``resize_on_device``: leave the resize to ``infer_batch`` (on the model's device, equal to
    Pillow's) for an image of at most ``DEVICE_RESIZE_MAX_RATIO`` times the resized pixels; its
    ``pixels`` are then at the image's own size."""
    start = time.perf_counter()
    before = _stat(job.path)
    image = load_image(job.path, max_pixels=options.max_pixels)
    out = options.output
    defer = False
    if resize_on_device and out.resize:
        new_h, new_w = resized_shape(image.height, image.width, out.min_size, out.max_size)
        defer = image.height * image.width <= DEVICE_RESIZE_MAX_RATIO * new_h * new_w
    pixels, prepared = resize_for_model(
        image.rgb_view() if defer else image.pixels, input_format, min_size=out.min_size,
        max_size=out.max_size, resize=out.resize, max_pixels=options.max_pixels,
        canvas=out.canvas, defer_resize=defer,
    )  # fmt: skip
    if not needs_image(out):  # the writer draws no input: the full-size pixels can go now
        image.drop_pixels()
    after = _stat(job.path)  # the pixels are decoded: the file may change from here on
    stat = after if _same_file(before, after) else None
    return Decoded(job, image, prepared, pixels, time.perf_counter() - start, stat)


def resizes_on_device(options: RunOptions, device: torch.device) -> bool:
    """Whether a run on ``device`` resizes there (``options.resize_on_device``; None: on CUDA)."""
    chosen = options.resize_on_device
    return device.type == "cuda" if chosen is None else chosen


def needs_image(output: OutputOptions) -> bool:
    """Whether the writer draws the input image (the overview, overlays)."""
    return output.save_overview or output.overlay


@dataclass
class DeviceState:
    """The reusable device machinery of one run: the upload ring, the pinned pool for results,
    the copy stream, and the current (possibly reduced) batch size."""

    device: torch.device
    stager: InputStager
    pool: object | None
    copy_stream: object | None
    batch_size: int
    pad_batches: bool

    @classmethod
    def create(cls, device: torch.device, options: RunOptions) -> DeviceState:
        cuda = device.type == "cuda"
        pad = options.pad_batches if options.pad_batches is not None else cuda
        return cls(
            device, InputStager(device), PinnedPool(options.queue_mb << 20) if cuda else None,
            torch.cuda.Stream(device=device) if cuda else None, options.batch_size, pad,
        )  # fmt: skip


def infer_batch(
    model: FPN, items: list[Decoded], options: RunOptions, state: DeviceState
) -> BatchResult:
    """Upload, normalize, run and reduce one batch on the model's device; the results land on
    the host asynchronously (``BatchResult.wait``). The bottom-up stages the output's levels
    name (``--levels stem,res2..``) are asked of this call, never set on the model that other
    runs share. Raises what the model raises (e.g. CUDA out of memory)."""
    clock = StageClock(state.device)
    pixels = state.stager.stage([it.pixels for it in items], clock)  # marks the start
    clock.mark("h2d")
    fmt = items[0].prepared
    pad_to = (max(it.prepared.padded_height for it in items),
              max(it.prepared.padded_width for it in items))  # fmt: skip
    sizes = [(it.prepared.resized_height, it.prepared.resized_width) for it in items]
    sources = [tuple(it.pixels.shape[:2]) for it in items]
    if sources != sizes:  # some left at their own size for the device (``decode``)
        pixels = _resized(pixels, sources, sizes)
    # a partial batch padded with zero images keeps the shapes fixed; padded where it is made,
    # channels-last as the rest (a torch.cat would cost a copy, and one more to channels-last)
    pad = state.pad_batches and len(items) < state.batch_size
    batch = normalize_batch(
        pixels, sizes,
        color_order=fmt.color_order, pixel_mean=fmt.pixel_mean, pixel_std=fmt.pixel_std,
        pad_to=pad_to, rows=state.batch_size if pad else None,
    )  # fmt: skip
    clock.mark("preprocess")
    with torch.inference_mode():  # the levels are only reduced and copied
        stages = tuple(name for name in options.output.levels if name in STAGES)
        features = run_backbone(model, batch, precision=options.precision, keep_bottom_up=stages)
    clock.mark("model")
    return results_to_host(
        features, sizes, options.output, pool=state.pool, copy_stream=state.copy_stream,
        clock=clock,
    )  # fmt: skip


def _resized(pixels: torch.Tensor, sources: list[tuple[int, int]],
             sizes: list[tuple[int, int]]) -> torch.Tensor:  # fmt: skip
    """The staged ``(B, H, W, 3)`` uint8 batch with each image (its own ``sources`` size in the
    top-left corner) resized to its ``sizes`` entry as Pillow does, on the batch's device; the
    images of one source and target size together (a folder of video frames: the whole batch)."""
    if len(set(zip(sources, sizes))) == 1 and tuple(pixels.shape[1:3]) == tuple(sources[0]):
        return pillow_bilinear(pixels, *sizes[0])
    out = pixels.new_zeros((len(sizes), max(h for h, _ in sizes), max(w for _, w in sizes), 3))
    groups: dict[tuple, list[int]] = {}
    for i, pair in enumerate(zip(sources, sizes)):
        groups.setdefault(pair, []).append(i)
    for ((h, w), (height, width)), members in groups.items():  # no index tensor: no upload
        resized = pillow_bilinear(torch.stack([pixels[i, :h, :w] for i in members]), height, width)
        for j, i in enumerate(members):
            out[i, :height, :width] = resized[j]
    return out


def write_result(
    item: Decoded,
    levels: dict[str, LevelResult],
    options: RunOptions,
    weights: dict,
    device: str,
    run_inputs: Container[str] = frozenset(),
) -> int | None:
    """Write one image's outputs into its folder (manifest last, folder locked); returns the
    bytes written, or None when another run completed the folder meanwhile (unless
    ``options.overwrite``).

    Unless ``options.overwrite``, a folder that holds the complete outputs of another input file
    than the item's, one not in ``run_inputs`` (the run's: ``plan.RunInputs``; by default none),
    is not replaced: ValueError (``write_image_outputs``), the image fails. The plan refuses
    such folders before the run; this is for those another run into the same ``-o`` wrote
    since."""
    return write_image_outputs(
        item.job.folder, levels=levels, image=item.image, prepared=item.prepared,
        options=options.output, weights=weights, device=device, precision=options.precision,
        # the file as decoded: one replaced since gets a key its folder will not match, and
        # one that changed while it was read gets none: either way a resume redoes it
        run_key=job_run_key(item.job, options, weights, item.source_stat)
        if item.source_stat is not None else None,
        skip_if_complete=not options.overwrite, root=options.root,
        run_inputs=None if options.overwrite else run_inputs,
    )  # fmt: skip
