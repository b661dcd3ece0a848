"""Everything device-specific in a run: which device, streams and events, pinned host buffers,
the byte budget of results waiting for the writers, and the reductions done where the features
are.

On the CPU the same functions run with plain tensors (no copies, no events), so every CPU test
exercises the code a GPU run uses; only the stream, event and pinned-memory branches are
CUDA-only. Every CUDA object is made for the model's device (never "the current device").
"""

from __future__ import annotations

import copy
import logging
import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch

from ..io.inputs import env_int, shard_from_env
from ..io.outputs import LevelResult, OutputOptions, valid_size
from ..io.pillow_view import copy_rgb
from ..model import cuda_kernels
from ..model.cpu_kernels import use_cpu_kernels, uses_cpu_kernels
from ..model.fpn import OUTPUT_STRIDES
from ..viz.maps import PCA_SIGN_TOLERANCE  # pca_sign's, in torch as in numpy
from .hostmem import keep_large_blocks

log = logging.getLogger(__name__)

__all__ = [
    "local_rank_from_env",
    "select_device",
    "device_context",
    "bind_thread",
    "run_settings",
    "worker_threads",
    "ByteBudget",
    "PinnedPool",
    "model_for_run",
    "InputStager",
    "StageClock",
    "reduce_map",
    "reduce_maps",
    "order_stats",
    "BatchResult",
    "results_to_host",
    "is_out_of_memory",
    "device_broken",
    "free_cached_memory",
]


def _local_rank(env: Mapping[str, str] | None) -> tuple[int | None, str]:
    shard_from_env(env)
    local = env_int("LOCAL_RANK", env)
    if local is not None:
        return local, "LOCAL_RANK"
    return env_int("SLURM_LOCALID", env), "SLURM_LOCALID"


def local_rank_from_env(env: Mapping[str, str] | None = None) -> int | None:
    """The process's GPU index on its node: torchrun's ``LOCAL_RANK``, else SLURM's
    ``SLURM_LOCALID``, else None. ``RANK``/``WORLD_SIZE`` are checked too, so garbage in any of
    them is a one-line ValueError before a run starts."""
    return _local_rank(env)[0]


def select_device(
    requested: str = "auto",
    *,
    env: Mapping[str, str] | None = None,
    cuda_count: int | None = None,
) -> torch.device:
    """The device a run uses: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``.

    ``auto`` and ``cuda`` pick GPU ``LOCAL_RANK`` (torchrun) or ``SLURM_LOCALID`` when set, so
    every process on a node gets its own GPU; an explicit ``cuda:N`` wins. A process that the
    launcher bound to one GPU (``CUDA_VISIBLE_DEVICES`` leaves it one, as SLURM's
    ``--gpus-per-task=1`` does) uses that GPU whatever its local rank.
    """
    count = torch.cuda.device_count() if cuda_count is None else cuda_count
    local, source = _local_rank(env)
    if requested == "auto":
        requested = "cuda" if count > 0 else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ValueError(f"unknown device {requested!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise ValueError(f"unsupported device {requested!r}: use auto, cpu, cuda or cuda:N")
    if count == 0:
        raise ValueError(f"device {requested!r} asked for, but CUDA is not available here")
    bound = count == 1 and (os.environ if env is None else env).get("CUDA_VISIBLE_DEVICES")
    if device.index is None and bound:
        return torch.device("cuda", 0)
    index = device.index if device.index is not None else (local or 0)
    if index >= count:
        where = f"cuda:{index}" if device.index is not None else f"{source} {index}"
        raise ValueError(f"{where}: only {count} CUDA device(s) here")
    return torch.device("cuda", index)


def device_context(device: torch.device):
    """Make ``device`` the current CUDA device for the duration (nothing on the CPU)."""
    return torch.cuda.device(device) if device.type == "cuda" else nullcontext()


def bind_thread(device: torch.device) -> None:
    """Make ``device`` the calling thread's current CUDA device (a thread pool's initializer;
    nothing on the CPU). CUDA's current device is per thread: a thread that never set it makes
    a context on GPU 0 the first time it calls CUDA (a writer waiting on an event), which costs
    every process of a ``--gpus`` or ``cuda:N`` run hundreds of MB there."""
    if device.type == "cuda":
        torch.cuda.set_device(device)


#: OpenCV's threads during a run (``run_settings``): the calling thread only
OPENCV_THREADS = 1


@contextmanager
def run_settings(
    device: torch.device, *, benchmark: bool = False, threads: int | None = None,
    compile: bool = False,
):  # fmt: skip
    """Settings for one run, restored afterwards (those of the whole process once the last of
    overlapping runs ends: ``_process_settings``): the current CUDA device, ``cudnn.benchmark``
    (fixed shapes make cuDNN's search pay off), the CPU thread count, and for a compiled model
    on the CPU inductor's ``freezing``; and, for every run, freed large blocks kept in the heap
    (``hostmem.keep_large_blocks``: no page faults on every new activation) and OpenCV in the
    calling thread only (``cv2.setNumThreads(1)``).

    OpenCV's own pool (a thread per core) spins after each call it splits: copying a 1080p
    frame's pixels into the upload buffer (``copy_rgb``, a GPU run's one OpenCV call per image)
    cost the process 0.6-0.7 ms of CPU without the pool, 1.2-1.3 with 2 threads, 3.2-3.6 with
    4 and 4.8 with 8, for 0.4-0.8 ms of wall time each way (``scripts/opencv_pool_cost.py``, AMD
    EPYC, 2 cores). On a 16-core GPU host the threads Python did not start took 9.5 CPU ms an
    image (``scripts/e2e_profile.py``), near the 10.6 ms of decoding it. A run's parallelism is its
    decoding and writing threads.

    Freezing makes the weights constants, so oneDNN prepacks them once and the ReLUs and
    residual sums fuse into the convolutions: the R50-FPN forward at 800x1216 went from 1.75 s
    eager to 1.53 s compiled with it and 1.65 s without (identical outputs; AMD EPYC, 2 cores).
    It is set around the run, not passed to ``torch.compile(options=...)``, where it has no
    effect: the compilation happens at the first forward of each shape, inside the run.
    """
    with device_context(device), _freezing(compile and device.type == "cpu"), \
            keep_large_blocks(), _process_settings():  # fmt: skip
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = benchmark
        if threads is not None:
            torch.set_num_threads(threads)
        yield


_settings_lock = threading.Lock()
_settings_runs = 0  # runs inside _process_settings now
_settings_saved: tuple = ()  # the settings from before the first of them


@contextmanager
def _process_settings():
    """The process-wide settings a run changes (torch's CPU threads, ``cudnn.benchmark``,
    OpenCV's threads: ``OPENCV_THREADS`` while any run is on), saved when the first of
    overlapping runs (threads of one process) starts and given back when the last one ends:
    the first to end does not change them under the other, nor leave them as it had them."""
    global _settings_runs, _settings_saved
    import cv2

    with _settings_lock:
        if _settings_runs == 0:
            _settings_saved = (
                torch.get_num_threads(), torch.backends.cudnn.benchmark, cv2.getNumThreads(),
            )  # fmt: skip
            cv2.setNumThreads(OPENCV_THREADS)
        _settings_runs += 1
    try:
        yield
    finally:
        with _settings_lock:
            _settings_runs -= 1
            if _settings_runs == 0:
                threads, benchmark, cv_threads = _settings_saved
                torch.set_num_threads(threads)
                torch.backends.cudnn.benchmark = benchmark
                cv2.setNumThreads(cv_threads)


def _freezing(on: bool):
    if not on:
        return nullcontext()
    from torch._inductor import config  # imported only when compiling

    return config.patch(freezing=True)


def worker_threads(cpu_count: int, processes: int) -> int:
    """CPU threads for each of ``processes`` workers sharing ``cpu_count`` cores (at least 1)."""
    return max(1, cpu_count // max(1, processes))


_RUN_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def model_for_run(
    model: torch.nn.Module, precision: str, *, compile: bool = False, convert: bool | None = None
):
    """The model as a run uses it, made once per model, precision and ``compile`` and cached on
    the model: fp16/bf16 runs use a copy converted to that dtype (no autocast re-cast of the
    weights on every forward; ``convert`` None: on CUDA only, where autocast would re-cast);
    ``compile`` wraps it in ``torch.compile`` (static shapes: batches are padded to a fixed
    size), the compiled variant sharing the converted copy's weights. A converted copy on CUDA
    runs its convolution epilogues in cuDNN's fused kernels (``model/cuda_kernels.py``). A
    model with the CPU kernels (``model/cpu_kernels.py``, fp32 eager only) runs compiled or
    fp16/bf16 from one channels-last copy without them. The model passed in is never changed."""
    device = next(model.parameters()).device
    if convert is None:
        convert = device.type == "cuda"
    convert = convert and precision in _RUN_DTYPES
    if uses_cpu_kernels(model) and (compile or precision != "fp32"):
        # the CPU kernels are for fp32 eager runs; the others start from one channels-last copy
        # without them (what oneDNN runs fastest), made once
        cache = _variants(model)
        if "plain" not in cache:
            plain = use_cpu_kernels(_bare_copy(model), on=False)
            cache["plain"] = plain.to(memory_format=torch.channels_last)
        return model_for_run(cache["plain"], precision, compile=compile, convert=convert)
    if not convert and not compile:
        return model
    cache = _variants(model)
    key = (precision if convert else "fp32", compile)
    if key not in cache:
        if compile:
            eager = model_for_run(model, precision, convert=convert)
            cache[key] = torch.compile(eager, dynamic=False)
        else:
            dtype = _RUN_DTYPES[precision]
            converted = _bare_copy(model).to(dtype)
            if cuda_kernels.enabled() and cuda_kernels.fusion_works(device, dtype):
                cuda_kernels.use_cudnn_fusion(converted, compiled=cuda_kernels.under_compile())
            cache[key] = converted
    return cache[key]


def _variants(model: torch.nn.Module) -> dict:
    return model.__dict__.setdefault("_fpncli_run_variants", {})


def _bare_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``model`` without its cache of run variants: a compiled module in it
    cannot be deep-copied, and copies of the others would only hold memory."""
    cache = _variants(model)
    variant = copy.deepcopy(model, memo={id(cache): {}})
    del variant.__dict__["_fpncli_run_variants"]
    return variant


_OOM_TEXT = (
    "CUDA out of memory",  # the caching allocator (torch.OutOfMemoryError)
    "CUDA error: out of memory",  # a cudaMalloc outside it (cuDNN/cuBLAS workspaces, Triton)
    "CUDNN_STATUS",  # cuDNN engine failures that a smaller batch may avoid
    "cuDNN error",
    "unable to find an engine",  # cuDNN v8/v9: no plan ran (often its workspace did not fit)
    "cuDNN Frontend error",
    "CUBLAS_STATUS_ALLOC_FAILED",  # a cuBLAS handle or workspace that did not fit
)


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA out of memory, or a cuDNN/cuBLAS failure that a smaller batch may avoid."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(t in text for t in _OOM_TEXT)


def device_broken(device: torch.device) -> bool:
    """Whether ``device`` can run nothing more: after a sticky CUDA error (an illegal address, a
    device-side assert) every later CUDA call fails, so a run stops instead of failing the rest
    of the folder image by image. Never for the CPU."""
    if device.type != "cuda":
        return False
    try:
        torch.cuda.synchronize(device)
    except RuntimeError:
        return True
    return False


def free_cached_memory(device: torch.device) -> None:
    """Give the caching allocator's free blocks back before a smaller retry (CUDA only)."""
    if device.type == "cuda":
        try:
            torch.cuda.empty_cache()
        except RuntimeError as e:  # the context is gone: the retry will say so
            log.debug("empty_cache failed: %s", e)


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


def reduce_map(level: torch.Tensor, reduce: str, channel: int = 0) -> torch.Tensor:
    """``(C, H, W)`` -> ``(H, W)`` float32, as ``fpncli.viz.maps.reduce_channels`` (numpy)
    computes it, but in torch where the tensor is."""
    return reduce_maps(level[None], reduce, channel)[0]


def reduce_maps(levels: torch.Tensor, reduce: str, channel: int = 0) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, H, W)`` float32: ``reduce_map`` of each image, with one set of
    kernels for the batch (and, for ``pca``, one eigendecomposition call)."""
    if reduce == "channel":
        if not 0 <= channel < levels.shape[1]:
            raise ValueError(f"channel {channel} out of range: this map has {levels.shape[1]}")
        return levels[:, channel].float()
    # without a float64 (or float32) copy of the whole batch: a batch of P2s is GBs
    if reduce == "mean":
        return levels.mean(dim=1, dtype=torch.float32)
    if reduce == "max":
        return levels.amax(dim=1).float()
    if reduce == "l2":
        return torch.stack([level.double().square().sum(dim=0).sqrt().float() for level in levels])
    if reduce == "pca":
        return _pca_maps([levels])[0]
    raise ValueError(f"unknown reduction {reduce!r}")


def order_stats(maps: torch.Tensor, clip: tuple[float, float]) -> torch.Tensor:
    """What a heatmap's colour range (``maps.value_range``) needs of each ``(B, h, w)`` map,
    picked out where the maps are: ``(B, 7)`` float64 of the finite values' count, min, max, and
    the values at the ranks below and above each ``clip`` percentile (numpy's "linear" ranks,
    as ``maps._places`` computes them). ``maps.range_from_order_stats`` turns a row
    into the range, so the writer does not sort the map on the host (on CUDA: a sort of the
    batch's maps, against a millisecond of the writer's CPU per image)."""
    flat = maps.reshape(maps.shape[0], -1)
    finite = torch.isfinite(flat)
    count = finite.sum(dim=1)
    ordered = torch.where(finite, flat, _INF).sort(dim=1).values  # the finite ones first
    last = (count - 1).clamp(min=0)
    ranks = [torch.zeros_like(count), last]
    for q in clip:
        virtual = (count - 1).double() * (q / 100.0)
        below = torch.minimum(virtual.floor().long().clamp(min=0), last)
        ranks += [below, torch.minimum(below + 1, last)]
    picked = ordered.gather(1, torch.stack(ranks, dim=1)).double()
    return torch.cat([count.double().unsqueeze(1), picked], dim=1)


def _nan_outside(maps: torch.Tensor, valid: Sequence[tuple[int, int]]) -> torch.Tensor:
    """A copy of the ``(B, h, w)`` maps with the cells outside each image's ``(valid_h,
    valid_w)`` region NaN, which ``order_stats`` leaves out as it does any non-finite value:
    one sort for a batch of differing sizes (two fills per image, where a sort per image took
    a dozen launches)."""
    out = maps.clone()
    for i, (vh, vw) in enumerate(valid):
        out[i, vh:] = _NAN
        out[i, :vh, vw:] = _NAN
    return out


def _pca_maps(batches: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The ``pca`` maps of ``(B, C, H, W)`` batches (a batch's levels), each ``(B, H, W)``
    float32: each image's projection on the first principal component of its channels (centred,
    in float64), oriented as ``maps.pca_sign`` orients it: the map correlates positively
    with the channel-mean map (the loadings sum to more than 0; where that sum is about 0, the
    largest loading positive).

    The covariances are made one image at a time (a batch of P2s in float64 would take GBs) and
    those of every batch with the same channel count (every FPN level has 256) are decomposed in
    one ``eigh`` call: on CUDA that is the one host sync of a batch's levels (eigh checks its
    result), where a call per level took five. On the CPU the maps are those of a call per
    level bit for bit (LAPACK decomposes each matrix on its own).
    """
    centred = [_covariances(levels) for levels in batches]  # each: (means, (B, C, C))
    by_channels: dict[int, list[int]] = {}  # channel count -> the batches that have it
    for i, levels in enumerate(batches):
        by_channels.setdefault(levels.shape[1], []).append(i)
    components: list[torch.Tensor] = [None] * len(batches)
    for members in by_channels.values():
        group = [centred[i][1] for i in members]
        _, vectors = torch.linalg.eigh(torch.cat(group) if len(group) > 1 else group[0])
        largest = vectors[..., -1].split([len(batches[i]) for i in members])  # (B, C) each
        for i, part in zip(members, largest):
            components[i] = _oriented(part)
    return [_projected(levels, means, comps)
            for levels, (means, _), comps in zip(batches, centred, components)]  # fmt: skip


def _covariances(levels: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Each image's channel means (``(C, 1)`` float64 each) and the ``(B, C, C)`` float64
    covariances of its channels over its cells."""
    b, c, h, w = levels.shape
    n = max(h * w - 1, 1)
    means, covariances = [], []
    for level in levels:
        samples = level.reshape(c, h * w).double()
        mean = samples.mean(dim=1, keepdim=True)
        samples = samples - mean
        means.append(mean)
        covariances.append(samples @ samples.T / n)
    return means, torch.stack(covariances)


def _oriented(components: torch.Tensor) -> torch.Tensor:
    """The ``(B, C)`` principal components, each signed as ``_pca_maps`` says. The sign of
    cov(map, mean map) is the sign of the loadings' sum; no host sync (torch.where)."""
    total = components.sum(dim=1, keepdim=True)
    largest = components.gather(1, components.abs().argmax(dim=1, keepdim=True))
    tied = total.abs() <= PCA_SIGN_TOLERANCE * math.sqrt(components.shape[1])
    return components * torch.where(torch.where(tied, largest, total) < 0, -1.0, 1.0)


def _projected(levels: torch.Tensor, means: list[torch.Tensor],
               components: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """``(B, H, W)`` float32: each image's centred channels projected on its component."""
    b, c, h, w = levels.shape
    return torch.stack([
        (component @ (level.reshape(c, h * w).double() - mean)).reshape(h, w).float()
        for level, mean, component in zip(levels, means, components)
    ])  # fmt: skip


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
        """One image's results as numpy (call ``wait`` first)."""
        out = {}
        stats = self.stats[index].numpy()
        orders = self.orders[index].tolist() if self.orders is not None else None
        for j, name in enumerate(self.levels):
            array = self.arrays.get(name)
            map2d = self.maps.get(name)
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


_INF, _NAN = float("inf"), float("nan")


def _finite_stats(valid: torch.Tensor) -> torch.Tensor:
    """``[min, max, mean, nonfinite]`` (float64) of the finite values; NaN for min/max/mean when
    no value is finite. On CUDA without a host sync (masked passes: cheap at HBM bandwidth); on
    the CPU, where every op is synchronous anyway, plain min, max and sum passes (the sum over
    channels in float32, then in float64: about 1e-7 relative, at a tenth of a float64 pass's
    cost), with the masked passes only when that sum shows a NaN or infinity."""
    if valid.device.type == "cpu":
        low, high = torch.aminmax(valid)  # one pass for both
        total = valid.sum(dim=0, dtype=torch.float32).double().sum()
        if torch.isfinite(total):
            mean = total / max(1, valid.numel())
            return torch.stack([low.double(), high.double(), mean, total.new_zeros(())])
    # Python scalars, not torch.tensor(..., device=cuda): that is a synchronous copy, which
    # would make the GPU-feeding thread wait for the whole batch's forward pass
    finite = torch.isfinite(valid)
    count = finite.sum()
    low = torch.where(finite, valid, _INF).amin().double()
    high = torch.where(finite, valid, -_INF).amax().double()
    total = torch.where(finite, valid, 0.0).sum(dtype=torch.float64)
    none = count == 0
    return torch.stack([
        torch.where(none, _NAN, low), torch.where(none, _NAN, high),
        torch.where(none, _NAN, total / count.clamp(min=1)), (valid.numel() - count).double(),
    ])  # fmt: skip


def _finite_stats_batch(valid: torch.Tensor) -> torch.Tensor:
    """``_finite_stats`` of each image of a ``(B, C, h, w)`` batch at once: ``(B, 4)``."""
    flat = valid.reshape(valid.shape[0], -1)
    finite = torch.isfinite(flat)
    count = finite.sum(dim=1)
    low = torch.where(finite, flat, _INF).amin(dim=1).double()
    high = torch.where(finite, flat, -_INF).amax(dim=1).double()
    total = torch.where(finite, flat, 0.0).sum(dim=1, dtype=torch.float64)
    none = count == 0
    return torch.stack([
        torch.where(none, _NAN, low), torch.where(none, _NAN, high),
        torch.where(none, _NAN, total / count.clamp(min=1)), (flat.shape[1] - count).double(),
    ], dim=1)  # fmt: skip


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
    if pca:  # every level's covariances in one eigh call: on CUDA one host sync, not five
        cast = {name: features[name][:count].to(dtype) for name in options.levels}
        pca_maps = dict(zip(options.levels, _pca_maps(list(cast.values()))))
    for name in options.levels:
        level = cast.pop(name) if pca else features[name][:count].to(dtype)
        valid[name] = [valid_size(h, w, OUTPUT_STRIDES[name]) for h, w in resized]
        # one set of kernels for the whole batch: launches cost on a fast GPU
        whole = level.is_cuda and all(size == resized[0] for size in resized)
        if whole:
            vh, vw = valid[name][0]
            stats.extend(_finite_stats_batch(level[:, :, :vh, :vw]).unbind(0))
        else:
            stats.extend(_finite_stats(level[i, :, :vh, :vw])
                         for i, (vh, vw) in enumerate(valid[name]))  # fmt: skip
        if needs_maps:
            # the batch's maps of a level in one piece (one copy back, not one per image: each
            # op lets go of Python's lock, and a busy writer can keep it a while); each image's
            # valid region is cut on the host. On the CPU a copy: a ``channel`` map is a view of
            # the features, which must not live on with it.
            reduced = (pca_maps[name] if pca
                       else reduce_maps(level, options.reduce, options.channel))  # fmt: skip
            maps[name] = reduced.contiguous() if reduced.is_cuda else reduced.clone()
            if order:
                regions = reduced[:, :vh, :vw] if whole else _nan_outside(reduced, valid[name])
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
                         nbytes, valid=valid, clock=clock, _remaining=count)  # fmt: skip
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
