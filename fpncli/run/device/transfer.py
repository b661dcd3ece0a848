"""Moving a batch between the host and the model's device: the pinned input ring, the byte
budget of results waiting for the writers, stage timing, and ``results_to_host``, which casts,
reduces and measures on the device (``reductions``) and copies back, on a copy stream into
reused pinned buffers, only what will be written.

On the CPU the same functions run with plain tensors (no copies, no events); only the stream,
event and pinned-memory branches are CUDA-only. Every CUDA object is made for the model's
device (never "the current device").
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ...io.outputs import LevelResult, OutputOptions, valid_size
from ...io.pillow_view import copy_rgb
from ...model.fpn import OUTPUT_STRIDES
from ...viz.maps import pca_refusal
from .reductions import (
    finite_stats,
    finite_stats_batch,
    nan_outside,
    order_stats,
    pca_maps,
    reduce_maps,
)

__all__ = ["ByteBudget", "PinnedPool", "InputStager", "StageClock", "BatchResult",
           "results_to_host"]  # fmt: skip


class ByteBudget:
    """Bytes of results waiting for the writers: ``acquire`` blocks (no spinning) while adding
    ``n`` would pass the limit, except when nothing is held (one item always fits)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._cond = threading.Condition()

    def acquire(self, n: int, abort: threading.Event | None = None) -> None:
        with self._cond:
            while self.used and self.used + n > self.limit:
                if abort is not None and abort.is_set():
                    break
                self._cond.wait(timeout=0.5)
            self.used += n

    def release(self, n: int) -> None:
        with self._cond:
            self.used -= n
            self._cond.notify_all()


class PinnedPool:
    """Reusable page-locked host buffers (allocating pinned memory is slow; reuse it)."""

    def __init__(self, keep_bytes: int) -> None:
        self.keep_bytes = keep_bytes
        self.free: list[torch.Tensor] = []
        self.lock = threading.Lock()

    def take(self, nbytes: int) -> torch.Tensor:
        with self.lock:
            fits = [b for b in self.free if nbytes <= b.numel() <= 2 * nbytes + (1 << 20)]
            if fits:
                buffer = min(fits, key=lambda b: b.numel())
                self.free.remove(buffer)
                return buffer
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)

    def give(self, buffer: torch.Tensor) -> None:
        with self.lock:
            self.free.append(buffer)
            while sum(b.numel() for b in self.free) > self.keep_bytes:
                self.free.pop(0)


class InputStager:
    """Uploads a batch of uint8 HWC images: through a small ring of pinned buffers on CUDA
    (allocated once, reused; a slot is refilled only after its copy has landed), straight from
    numpy on the CPU. Returns ``(B, H, W, 3)`` uint8 on the device.

    ``clock`` gets its ``start`` mark once the host side is done (the slot free and filled),
    right before the upload: the device stages then time the device, and an idle GPU's wait
    for this thread shows as ``host`` time, not as ``h2d``."""

    def __init__(self, device: torch.device, slots: int = 3) -> None:
        self.device = device
        self.slots: list[torch.Tensor | None] = [None] * slots
        self.events = [None] * slots
        self.next = 0

    def stage(self, images: Sequence[np.ndarray], clock: StageClock | None = None) -> torch.Tensor:
        height = max(int(im.shape[0]) for im in images)
        width = max(int(im.shape[1]) for im in images)
        shape = (len(images), height, width, 3)
        if self.device.type != "cuda":
            uniform = all(im.shape[:2] == (height, width) for im in images)
            staged = np.empty(shape, np.uint8) if uniform else np.zeros(shape, np.uint8)
            for i, im in enumerate(images):
                copy_rgb(staged[i, : im.shape[0], : im.shape[1]], im)
            if clock is not None:
                clock.mark("start")
            return torch.from_numpy(staged)
        k, self.next = self.next, (self.next + 1) % len(self.slots)
        if self.events[k] is not None:
            self.events[k].synchronize()  # the previous upload from this slot has landed
        need = int(np.prod(shape))
        if self.slots[k] is None or self.slots[k].numel() < need:
            self.slots[k] = torch.empty(need, dtype=torch.uint8, pin_memory=True)
        host = self.slots[k][:need].view(shape)
        view = host.numpy()
        for i, im in enumerate(images):
            copy_rgb(view[i, : im.shape[0], : im.shape[1]], im)
        if clock is not None:
            clock.mark("start")
        pixels = host.to(self.device, non_blocking=True)
        event = torch.cuda.Event(blocking=True)  # waited on by sleeping, not spinning
        event.record(torch.cuda.current_stream(self.device))
        self.events[k] = event
        return pixels


class StageClock:
    """Times the device stages of a batch: CUDA events on the device (read once the batch's
    copies have landed), wall time on the CPU (where every stage is synchronous)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self.marks: list[tuple[str, object]] = []

    def mark(self, name: str, stream=None) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record(stream or torch.cuda.current_stream(self.device))
            self.marks.append((name, event))
        else:
            self.marks.append((name, time.perf_counter()))

    def seconds(self) -> dict[str, float]:
        """``{stage: seconds}`` between consecutive marks (the first mark is the start)."""
        out: dict[str, float] = {}
        for (_, a), (name, b) in zip(self.marks, self.marks[1:]):
            out[name] = out.get(name, 0.0) + (a.elapsed_time(b) / 1e3 if self.cuda else b - a)
        return out


def _number(value) -> float | None:
    return float(value) if np.isfinite(value) else None


@dataclass
class BatchResult:
    """What comes back to the host for a batch: the requested levels in the output dtype, the
    heatmap maps (each image's valid region is cut from them) and per-level statistics. On
    CUDA it lands in one pinned buffer through a copy stream; ``wait`` blocks (without spinning)
    until it has."""

    count: int
    shapes: dict[str, tuple[int, ...]]
    arrays: dict[str, torch.Tensor]  # level -> (B, 256, h, w), output dtype, host
    maps: dict[str, torch.Tensor]  # level -> (B, h, w) float32, host (padding included)
    stats: torch.Tensor  # (B, levels, 4) float64: min, max, mean, nonfinite of the valid region
    orders: torch.Tensor | None  # (B, levels, 7) float64: ``order_stats`` of each map, or None
    levels: tuple[str, ...]
    nbytes: int
    valid: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # level -> per image
    #: ``--reduce pca``: a level whose valid cells are not all finite has no map (``pca_maps``)
    pca: bool = False
    ready: object = None  # a CUDA event, or None on the CPU
    clock: StageClock | None = None
    _buffer: torch.Tensor | None = None
    _pool: PinnedPool | None = None
    _remaining: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def wait(self) -> None:
        if self.ready is not None:
            self.ready.synchronize()

    def image(self, index: int) -> dict[str, LevelResult]:
        """One image's results as numpy (call ``wait`` first).

        Raises:
            ValueError: a ``pca`` map is asked of a level that holds NaN or infinite values
                (``maps.reduce_channels``'s refusal, naming the level): the image fails alone.
        """
        out = {}
        stats = self.stats[index].numpy()
        orders = self.orders[index].tolist() if self.orders is not None else None
        for j, name in enumerate(self.levels):
            array = self.arrays.get(name)
            map2d = self.maps.get(name)
            if self.pca and map2d is not None and stats[j, 3]:  # its map is NaN (``pca_maps``)
                raise ValueError(f"{name}: {pca_refusal(int(stats[j, 3]))}")
            if map2d is not None:  # the image's valid region, its own copy (a few KB)
                vh, vw = self.valid[name][index]
                map2d = np.ascontiguousarray(map2d.numpy()[index, :vh, :vw])
            out[name] = LevelResult(
                shape=(1, *self.shapes[name][1:]),
                array=array[index : index + 1].numpy() if array is not None else None,
                map2d=map2d,
                min=_number(stats[j, 0]), max=_number(stats[j, 1]), mean=_number(stats[j, 2]),
                nonfinite=int(stats[j, 3]),
                order_stats=tuple(orders[j]) if orders is not None else None,
            )  # fmt: skip
        return out

    def done_with_one(self) -> bool:
        """Called once per image when it is written or failed; True for the last one, when the
        pinned buffer goes back to the pool."""
        with self._lock:
            self._remaining -= 1
            last = self._remaining == 0
        if last and self._buffer is not None and self._pool is not None:
            self._pool.give(self._buffer)
            self._buffer = None
        return last


def _aligned(nbytes: int) -> int:
    return (nbytes + 63) // 64 * 64


def _pack(sources: Mapping, buffer: torch.Tensor) -> dict:
    """Views of the 1-D uint8 ``buffer``, one per source in order, each with the source's dtype
    and shape and starting on a 64-byte boundary (``_packed_bytes(sources)`` bytes in all)."""
    views, offset = {}, 0
    for key, src in sources.items():
        size = src.numel() * src.element_size()
        views[key] = buffer[offset : offset + size].view(src.dtype).view(src.shape)
        offset += _aligned(size)
    return views


def _packed_bytes(sources: Mapping) -> int:
    return sum(_aligned(t.numel() * t.element_size()) for t in sources.values())


def _level_dtype(options: OutputOptions) -> torch.dtype:
    return torch.float16 if options.dtype == "float16" else torch.float32


def results_to_host(
    features: dict[str, torch.Tensor],
    resized: Sequence[tuple[int, int]],
    options: OutputOptions,
    *,
    pool: PinnedPool | None = None,
    copy_stream=None,
    clock: StageClock | None = None,
    order: bool | None = None,
) -> BatchResult:
    """Cast, reduce and measure on the device; copy back only what will be written.

    Args:
        features: level -> ``(B', 256, h, w)`` on the device (``B' >= len(resized)``: a padded
            batch's extra rows are ignored).
        resized: each image's resized ``(height, width)`` (its valid region).
        options: which levels, the ``.npy`` dtype, whether maps are needed and how to reduce.
        order: whether to pick out each map's ``order_stats`` too, for its colour range. By
            default on CUDA; on the CPU the writer threads sort the maps, off the thread that
            runs the model.
        pool: where a CUDA batch's pinned host buffer comes from (and goes back to, once its
            images are written); None: a new pinned buffer for this batch.
    """
    count = len(resized)
    dtype = _level_dtype(options)
    needs_maps = options.save_heatmaps or options.save_overview or options.overlay
    if order is None:
        order = features[options.levels[0]].is_cuda
    arrays, maps, valid, stats, orders = {}, {}, {}, [], []
    pca = needs_maps and options.reduce == "pca"
    cast: dict[str, torch.Tensor] = {}  # with pca, every level cast at once, each let go in turn
    for name in options.levels:
        valid[name] = [valid_size(h, w, OUTPUT_STRIDES[name]) for h, w in resized]
    if pca:  # every level's covariances in one eigh call: on CUDA one host sync, not five
        cast = {name: features[name][:count].to(dtype) for name in options.levels}
        # each image's component fitted on its valid cells, as the numpy writer's
        fitted = pca_maps(list(cast.values()), [valid[name] for name in cast])
        pca_by_level = dict(zip(options.levels, fitted))
    for name in options.levels:
        level = cast.pop(name) if pca else features[name][:count].to(dtype)
        # one set of kernels for the whole batch: launches cost on a fast GPU
        whole = level.is_cuda and all(size == resized[0] for size in resized)
        if whole:
            vh, vw = valid[name][0]
            stats.extend(finite_stats_batch(level[:, :, :vh, :vw]).unbind(0))
        else:
            stats.extend(finite_stats(level[i, :, :vh, :vw])
                         for i, (vh, vw) in enumerate(valid[name]))  # fmt: skip
        if needs_maps:
            # the batch's maps of a level in one piece (one copy back, not one per image: each
            # op lets go of Python's lock, and a busy writer can keep it a while); each image's
            # valid region is cut on the host. On the CPU a copy: a ``channel`` map is a view of
            # the features, which must not live on with it.
            reduced = (pca_by_level[name] if pca
                       else reduce_maps(level, options.reduce, options.channel))  # fmt: skip
            maps[name] = reduced.contiguous() if reduced.is_cuda else reduced.clone()
            if order:
                regions = reduced[:, :vh, :vw] if whole else nan_outside(reduced, valid[name])
                orders.append(order_stats(regions, options.clip))
        if options.save_npy:  # the CPU writer makes it C-contiguous itself, off this thread
            arrays[name] = level.contiguous() if level.is_cuda else level
    stats_t = torch.stack(stats).view(len(options.levels), count, 4).transpose(0, 1).contiguous()
    orders_t = torch.stack(orders, dim=1) if orders else None  # (B, levels, 7)
    shapes = {name: tuple(features[name][:count].shape) for name in options.levels}
    if clock is not None:
        clock.mark("reductions")
    sources = {**{("a", k): v for k, v in arrays.items()},
               **{("m", k): v for k, v in maps.items()}, ("s",): stats_t}  # fmt: skip
    if orders_t is not None:
        sources[("o",)] = orders_t
    nbytes = _packed_bytes(sources)
    result = BatchResult(count, shapes, arrays, maps, stats_t, orders_t, tuple(options.levels),
                         nbytes, valid=valid, pca=pca, clock=clock, _remaining=count)  # fmt: skip
    device = stats_t.device
    if device.type != "cuda":
        if clock is not None:
            clock.mark("d2h")
        return result
    compute = torch.cuda.current_stream(device)
    stream = copy_stream or compute
    stream.wait_stream(compute)
    # pinned also without a pool (a direct call): a copy into pageable memory is synchronous
    buffer = (pool.take(nbytes) if pool is not None
              else torch.empty(nbytes, dtype=torch.uint8, pin_memory=True))  # fmt: skip
    host = _pack(sources, buffer)
    with torch.cuda.stream(stream):
        for key, src in sources.items():
            src.record_stream(stream)  # the allocator must not reuse it before the copy ran
            host[key].copy_(src, non_blocking=True)
    if clock is not None:
        clock.mark("d2h", stream)  # before the ready event: complete once ``wait`` returns
    event = torch.cuda.Event(blocking=True)
    event.record(stream)
    result.arrays = {k[1]: v for k, v in host.items() if k[0] == "a"}
    result.maps = {k[1]: v for k, v in host.items() if k[0] == "m"}
    result.stats = host[("s",)]
    result.orders = host.get(("o",))
    result.ready, result._buffer, result._pool = event, buffer, pool
    return result
