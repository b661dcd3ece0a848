"""Which device a run uses and how the process is set for it: device selection (``--device``,
``LOCAL_RANK``, SLURM), the device context and thread binding, the run's torch and OpenCV
settings (restored afterwards), the model converted to the run's precision, and telling an
out-of-memory or a lost device from other errors.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping
from contextlib import contextmanager, nullcontext

import torch

from ...io.run_shard import env_int
from ...model import cuda_kernels
from ...model.cpu_kernels import use_cpu_kernels, uses_cpu_kernels
from ...shared import Record, SharedSetting
from ..hostmem import keep_large_blocks

log = logging.getLogger(__name__)

__all__ = [
    "local_rank_from_env",
    "select_device",
    "device_context",
    "bind_thread",
    "run_settings",
    "worker_threads",
    "model_for_run",
    "is_out_of_memory",
    "device_broken",
    "free_cached_memory",
]


def _local_rank(env: Mapping[str, str] | None) -> tuple[int | None, str]:
    # only the GPU variables: RANK/WORLD_SIZE choose a shard, and are checked where one is
    # chosen (cli.common._env_shard), so that --shard overrides them and bench ignores them
    local = env_int("LOCAL_RANK", env)
    if local is not None:
        return local, "LOCAL_RANK"
    return env_int("SLURM_LOCALID", env), "SLURM_LOCALID"


def local_rank_from_env(env: Mapping[str, str] | None = None) -> int | None:
    """The process's GPU index on its node: torchrun's ``LOCAL_RANK``, else SLURM's
    ``SLURM_LOCALID``, else None. Garbage in either is a one-line ValueError before a run
    starts."""
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
    overlapping runs ends: ``_PROCESS_SETTINGS``): the current CUDA device, ``cudnn.benchmark``
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
            keep_large_blocks(), _PROCESS_SETTINGS.held():  # fmt: skip
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = benchmark
        if threads is not None:
            torch.set_num_threads(threads)
        yield


def _save_and_set_process(record: Record) -> None:
    """What a run sets process-wide (OpenCV's threads: ``OPENCV_THREADS``), after passing
    ``record`` what puts back all it saved first, with what ``run_settings`` may change too
    (torch's CPU threads, ``cudnn.benchmark``)."""
    import cv2

    saved = (torch.get_num_threads(), torch.backends.cudnn.benchmark, cv2.getNumThreads())

    def restore() -> None:
        threads, benchmark, cv_threads = saved
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = benchmark
        cv2.setNumThreads(cv_threads)

    record(restore)
    cv2.setNumThreads(OPENCV_THREADS)


#: The process-wide settings a run changes (torch's CPU threads, ``cudnn.benchmark``, OpenCV's
#: threads: ``OPENCV_THREADS`` while any run is on), saved when the first of overlapping runs
#: (threads of one process) starts and given back when the last one ends: the first to end does
#: not change them under the other, nor leave them as it had them.
_PROCESS_SETTINGS = SharedSetting(_save_and_set_process)


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
