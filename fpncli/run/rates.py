"""What a machine can do besides the model, for ``fpncli bench``'s end-to-end ratios: the
output disk's sequential write rate, and the rate at which the pipeline's decoder reads and
resizes images with all cores (threads in one process, or processes of one thread each); and
the JPEGs the end-to-end rows run over.
"""

from __future__ import annotations

import errno
import functools
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from .pipeline import Job, RunOptions
from .steps import decode, resizes_on_device

__all__ = ["DECODE_RATE_RUNS", "DISK_PROBE_MB", "decode_rate", "decode_rates_in_processes",
           "disk_probe_mb", "disk_write_speed", "make_images"]  # fmt: skip


#: The disk probe's size (MiB) where the folder's disk has room: a quarter of its free space else
DISK_PROBE_MB = 512


def disk_probe_mb(free_bytes: int, most_mb: int = DISK_PROBE_MB) -> int:
    """MiB the disk probe writes where ``free_bytes`` are free: ``most_mb``, or a quarter of the
    free space where that is less (a small disk keeps room for the run's outputs), in whole
    8 MiB writes; 0 where a quarter is under 8 MiB."""
    return min(most_mb, free_bytes // 4 // 2**20) // 8 * 8


def disk_write_speed(folder: Path, size_mb: int | None = None) -> float:
    """Sequential write speed of ``folder``'s disk in MB/s (8 MiB writes, then fsync) over
    ``size_mb`` MiB, by default ``disk_probe_mb`` of the disk's free space. OSError (ENOSPC)
    where that is under 8 MiB, or where the disk fills meanwhile; the probe's file is removed."""
    if size_mb is None:
        size_mb = disk_probe_mb(shutil.disk_usage(folder).free)
    writes = size_mb // 8
    if writes < 1:
        raise OSError(errno.ENOSPC, f"too little free space in {folder} to time its disk")
    path = Path(folder) / f".fpncli-disk-probe-{os.getpid()}"
    chunk = os.urandom(8 << 20)
    try:
        start = time.perf_counter()
        with open(path, "wb") as f:
            for _ in range(writes):
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        seconds = time.perf_counter() - start
    finally:
        path.unlink(missing_ok=True)
    return writes * 8 * (1 << 20) / 1e6 / seconds


def make_images(folder: Path, count: int, height: int, width: int) -> list[Path]:
    """``count`` JPEGs of ``height x width`` (a sample photo, or noise), quality 90."""
    from PIL import Image

    rng = np.random.RandomState(0)
    sample = Path(__file__).resolve().parent.parent.parent / "samples" / "coffee.png"
    if sample.is_file():
        base = Image.open(sample).convert("RGB").resize((width, height), Image.BILINEAR)
    else:
        base = Image.fromarray(rng.randint(0, 255, (height, width, 3), dtype=np.uint8))
    paths = []
    for i in range(count):  # two encodings, then copies: a 1080p JPEG takes ~30 ms to encode
        path = folder / f"img{i:05d}.jpg"
        if i < 2:
            base.rotate(180 * i).save(path, quality=90)
        else:
            shutil.copyfile(paths[i % 2], path)
        paths.append(path)
    return paths


#: ``bench_end_to_end`` measures the decode rate with all cores this many times and keeps the best
DECODE_RATE_RUNS = 2
#: Images each process decodes, at least, when the decode rate is measured in processes
DECODE_PER_PROCESS = 16


def decode_rate(paths: list[Path], options: RunOptions, input_format, workers: int,
                device: torch.device | None = None) -> float:  # fmt: skip
    """Images per second that ``workers`` threads decode and resize (the pipeline's decoder;
    for a CUDA ``device`` they leave the resize to it, as the pipeline does)."""
    work = _decoding(options, input_format, device)
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(work, [[path] for path in paths]))
    return len(paths) / (time.perf_counter() - start)


def decode_rates_in_processes(paths: list[Path], options: RunOptions, input_format,
                              processes: int, device: torch.device | None = None,
                              runs: int = DECODE_RATE_RUNS) -> list[float]:  # fmt: skip
    """Images per second that ``processes`` processes of one thread each decode, ``runs``
    times: what the cores can decode, where ``decode_rate``'s threads share one process's
    Python lock. The processes start and import first (not timed); each then decodes at
    least ``DECODE_PER_PROCESS`` images (``paths`` in turn)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    count = max(len(paths), DECODE_PER_PROCESS * processes)
    chunks = [[paths[j % len(paths)] for j in range(i, count, processes * 4)]
              for i in range(processes * 4)]  # fmt: skip
    context = multiprocessing.get_context("spawn")  # no forked torch state
    rates = []
    with ProcessPoolExecutor(processes, mp_context=context, initializer=_one_thread) as pool:
        started: set[int] = set()  # every process started and imported, before the clock
        for _ in range(50):
            started.update(pool.map(_hold, [0.2] * processes))
            if len(started) >= processes:
                break
        work = _decoding(options, input_format, device)
        for _ in range(runs):
            start = time.perf_counter()
            done = sum(pool.map(work, chunks))
            rates.append(done / (time.perf_counter() - start))
    return rates


def _one_thread() -> None:
    import cv2

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def _hold(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def _decoding(options: RunOptions, input_format, device: torch.device | None):
    """The pipeline's decoder over a list of paths (picklable, for processes too); for a CUDA
    ``device`` it leaves the resize to the device, as the pipeline does."""
    on_device = resizes_on_device(options, device or torch.device("cpu"))
    return functools.partial(_decode_chunk, options=options, input_format=input_format,
                             on_device=on_device)  # fmt: skip


def _decode_chunk(paths: list[Path], options: RunOptions, input_format, on_device: bool) -> int:
    for path in paths:
        decode(Job(path, path.parent), options, input_format, resize_on_device=on_device)
    return len(paths)
