"""``fpncli bench``: the row every measurement fills, and the end-to-end rows.

A row's shared measurements: its peak memory (host RSS; GPU memory, reset per row) and a failed
row's reason on one line (a row that fails says why; the others still run). End-to-end rows run
the real pipeline over a temporary folder of JPEGs and split the time per image into stages
(decode, h2d, preprocess, model, reductions, d2h, write) and name the bound. The model-only rows
are ``bench_model``'s.
"""

from __future__ import annotations

import math
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..io.messages import one_line
from ..io.outputs import OutputOptions
from ..io.preprocess import resized_shape
from ..model.fpn import FPN
from .device import model_for_run
from .multi import run_on_devices, usable_cores, worker_options
from .pipeline import Job, RunOptions, run_jobs
from .rates import (
    DECODE_RATE_RUNS,
    decode_rate,
    decode_rates_in_processes,
    disk_write_speed,
    make_images,
)
from .samplers import CpuSampler, GpuSampler, nvidia_smi_command

__all__ = [
    "BenchRow",
    "bench_end_to_end",
    "OUTPUT_PRESETS",
    "STAGES",
]

STAGES = ("decode", "h2d", "preprocess", "model", "reductions", "d2h", "write", "host")


@dataclass
class BenchRow:
    """One measured configuration (``error`` set when it could not run)."""

    kind: str  # "model" or "end-to-end"
    device: str
    height: int
    width: int
    batch_size: int
    precision: str
    #: model rows: "eager" / "compile" / "onednn" / "unfused" (``--unfused``) / "cudnn-off" /
    #: "comp-plain" (``FPNCLI_CUDNN_FUSION=0`` / ``=eager``); end-to-end: the preset
    variant: str
    images: int = 0
    seconds: float = 0.0
    images_per_s: float = 0.0
    median_batch_s: float | None = None
    peak_rss_mb: float = 0.0
    peak_gpu_mb: float | None = None
    fraction_of_bf16_peak: float | None = None
    max_rel_error_vs_fp32: float | None = None
    warmup_s: float | None = None  # the untimed first calls (torch.compile, cuDNN's search)
    stage_ms_per_image: dict[str, float] = field(default_factory=dict)
    bound: str | None = None
    bytes_per_image: float | None = None
    disk_mb_per_s: float | None = None
    ratios: dict[str, float] = field(default_factory=dict)
    note: str | None = None  # what a measured row lacks, and why (printed under the row)
    error: str | None = None


def row_error(error: BaseException) -> str:
    """A failed row's reason: the error's type and its whole message on one line (a compile
    error's first line alone, ``backend='inductor' raised:``, said nothing)."""
    text = one_line(str(error), limit=400)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reset_peak(device: torch.device) -> int:
    """Reset the allocator's peak; returns the bytes allocated now (the baseline)."""
    if device.type != "cuda":
        return 0
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def nbytes(*items) -> int:
    """Bytes of tensors and of modules' parameters and buffers."""
    total = 0
    for item in items:
        if isinstance(item, torch.nn.Module):
            tensors = [*item.parameters(), *item.buffers()]
        else:
            tensors = [item]
        total += sum(t.numel() * t.element_size() for t in tensors)
    return total


def peak_gpu_mb(device: torch.device, baseline: int = 0, own: int = 0) -> float | None:
    """A row's peak GPU memory: the allocator's peak since the reset less what was allocated
    then (other rows' model copies, the fp32 reference), plus ``own``, the bytes allocated
    before the reset that the row uses (its weights, its input)."""
    if device.type != "cuda":
        return None
    return (torch.cuda.max_memory_allocated(device) - baseline + own) / 2**20


OUTPUT_PRESETS = {
    "npy": {"save_heatmaps": False, "save_overview": False},
    "npy16": {"save_heatmaps": False, "save_overview": False, "dtype": "float16"},
    "heatmaps": {"save_npy": False, "save_overview": False},
    "all": {},
}


def _bound(stages: dict[str, float], workers: int, writers: int, processes: int = 1) -> str:
    """The stage that limits throughput: decode and write run in pools, the rest in series;
    ``host`` when the thread that stages and launches the batches took 20% longer than the
    device stages (on a GPU: the GPU waited for it; on the CPU the two are the same work).
    With several processes sharing the device, their feeding threads run side by side."""
    device = sum(stages.get(s, 0.0) for s in ("h2d", "preprocess", "model", "reductions", "d2h"))
    costs = {
        "decode": stages.get("decode", 0.0) / workers,
        "device": device,
        "write": stages.get("write", 0.0) / writers,
    }
    bound = max(costs, key=costs.get)
    if bound == "device" and stages.get("host", 0.0) / processes > 1.2 * device:
        return "host"
    return bound


def bench_end_to_end(
    model: FPN,
    *,
    height: int,
    width: int,
    images: int,
    batch_size: int,
    precision: str,
    outputs: str = "npy",
    workers: int = 2,
    writers: int = 2,
    compile: bool = False,
    source_size: tuple[int, int] | None = None,
    work_dir: Path | None = None,
    measure_disk: bool = True,
    threads: int | None = None,
    seconds: float = 0.0,
    processes: int | None = None,
    weights: str = "random",
    decode_processes: int | None = None,
) -> BenchRow:
    """Run the real pipeline over ``images`` JPEGs and time it (wall clock), with the per-stage
    split. The JPEGs are ``source_size`` (e.g. 1080x1920) resized by Detectron2's rule to fit
    ``height x width``, or exactly ``height x width`` (then the resize keeps that size). The row
    records the padded size the model ran at (``padded_size``: 1080x1920 to fit 256x384 runs at
    224x384), with a note where that is not ``height x width``.

    Time-based: when ``images`` took less than ``seconds``, the row is run again with as many
    images as its rate says fill ``seconds`` (the inputs repeat; the outputs of the first run
    are removed first, and the count is capped at half the free disk), and that run is the
    row's. At most 64 distinct JPEGs are made (encoding 1080p JPEGs is slow).

    ``processes``: the run goes to that many worker processes sharing the device (as
    ``extract --processes 2``), each loading ``weights``; the rate is over the time from the first
    worker's start of its run to the last one's end (process starts, model loads and each
    worker's warm-up left out: the workers start together once all are warm), and the variant
    reads e.g. ``heatmapsx2``. The GPU memory column is left empty (the workers'
    memory is not this process's).

    The decode rate with all cores (``of_min_model_decode``'s) is measured after the run with
    that many threads in this process (``decode_img_s``) and, with ``decode_processes``, in
    that many processes of one thread each (``decode_procs_img_s``); the higher of the two is
    the cores' rate. By default the processes measure on CUDA for rows without ``.npy`` (the
    heatmaps rows, whose ratio this is), one per core; not on the CPU."""
    device = next(model.parameters()).device
    variant = outputs if processes is None else f"{outputs}x{processes}"
    src_h, src_w = source_size or (height, width)
    ran_h, ran_w = padded_size(src_h, src_w, height, width)
    row = BenchRow("end-to-end", str(device), ran_h, ran_w, batch_size, precision, variant)
    if (ran_h, ran_w) != (height, width):  # a model row of height x width is not its size
        resized = f"{src_h}x{src_w} JPEGs resized to fit {height}x{width}, " if source_size else ""
        row.note = (
            f"ran at {ran_h}x{ran_w} ({resized}padded to multiples of 32): no of_model, only a "
            f"model row of {ran_h}x{ran_w} compares with it"
        )
    root = Path(tempfile.mkdtemp(prefix="fpncli-bench-", dir=work_dir))
    try:
        (root / "in").mkdir()
        distinct = min(images, 64)
        paths = make_images(root / "in", distinct + 2, src_h, src_w)
        sizes = {"min_size": min(height, width), "max_size": max(height, width)}
        output = replace(OutputOptions(), **sizes, **OUTPUT_PRESETS[outputs])
        options = RunOptions(
            output=output, precision=precision, batch_size=batch_size, workers=workers,
            writers=writers, overwrite=True, force=True, compile=compile, threads=threads,
            record_latest=False,  # scratch: not for `fpncli show`
        )  # fmt: skip

        # one full batch (two images in turn): the pinned upload slots reach their full size
        warm = [Job(paths[i % 2], root / "warm" / f"{i:03d}") for i in range(batch_size)]

        def timed(count: int):
            """``count`` images (the inputs in turn) into a fresh output folder: the run's
            summary, and how busy the machine's CPUs (``cpu_busy``, where ``/proc/stat`` is) and
            the GPU (``gpu_busy``, where ``nvidia-smi`` is) were meanwhile."""
            shutil.rmtree(root / "out", ignore_errors=True)
            jobs = [Job(paths[2 + i % distinct], root / "out" / f"{i:06d}") for i in range(count)]
            sampler, summary = CpuSampler(), None
            gpu_sampler = GpuSampler(nvidia_smi_command(device))
            start = time.monotonic()
            try:
                if processes is None:
                    summary = run_jobs(jobs, model, options)
                else:
                    summary = run_on_devices(
                        jobs, model, options, [str(device)] * processes, weights=weights,
                        warmup=warm,
                    )  # fmt: skip
                    if summary.span is not None:  # the workers' runs, not their start-up
                        summary.seconds = summary.span[1] - summary.span[0]
            finally:  # (also when the run raises: the samplers' threads end with it)
                span = summary.span if summary is not None else None
                gpu_span = span or (start, time.monotonic())
                load = {"cpu_busy": sampler.stop(span), "gpu_busy": gpu_sampler.stop(gpu_span)}
            if summary.aborted:
                raise RuntimeError(summary.aborted)
            if summary.failed:
                raise RuntimeError(f"{len(summary.failed)} images failed: {summary.failed[0][1]}")
            return summary, {k: v for k, v in load.items() if v is not None}

        if processes is None:
            run_jobs(warm, model, options)  # warm-up: start-up costs are not timed
        baseline = reset_peak(device)
        summary, load = timed(images)
        more = _images_for(summary, seconds, shutil.disk_usage(root).free)
        if more > images:
            baseline = reset_peak(device)
            summary, load = timed(more)
        row.images, row.seconds = summary.done, summary.seconds
        row.images_per_s = summary.images_per_s
        row.stage_ms_per_image = {
            s: 1e3 * summary.stage_seconds.get(s, 0.0) / max(1, summary.done) for s in STAGES
        }
        if processes is None:
            row.bound = _bound(summary.stage_seconds, workers, writers)
            added = nbytes(model_for_run(model, precision, compile=compile))
            row.peak_gpu_mb = peak_gpu_mb(device, baseline, added)
        else:  # each worker's share of the threads (worker_options), side by side
            share = worker_options(options, processes)
            row.bound = _bound(summary.stage_seconds, share.workers * processes,
                               share.writers * processes, processes=processes)  # fmt: skip
        row.bytes_per_image = summary.bytes_written / max(1, summary.done)
        row.ratios.update(load)
        # the better of two runs: a capacity (on one H100 machine single runs gave 136-243
        # images/s across the rows of one call; noise only slows a run down)
        fmt = model.weights_info.input
        decoded = max(decode_rate(paths[2:], options, fmt, usable_cores(), device)
                      for _ in range(DECODE_RATE_RUNS))  # fmt: skip
        row.ratios["decode_img_s"] = decoded
        if decode_processes is None and device.type == "cuda" and not output.save_npy:
            decode_processes = usable_cores()  # (a few seconds: the processes' start)
        if decode_processes:  # the cores' rate, where one process's threads share its lock
            row.ratios["decode_procs_img_s"] = max(decode_rates_in_processes(
                paths[2:], options, fmt, decode_processes, device))  # fmt: skip
        if measure_disk and output.save_npy:
            try:  # the row was measured: a disk too full to time (a small TMPDIR) leaves it be
                row.disk_mb_per_s = disk_write_speed(root)
            except OSError as e:
                probe = f"disk-speed probe could not run ({row_error(e)}): no of_disk_rate"
                row.note = f"{row.note}; {probe}" if row.note else probe
            else:
                disk_rate = row.disk_mb_per_s * 1e6 / row.bytes_per_image
                row.ratios["of_disk_rate"] = row.images_per_s / disk_rate
    except Exception as e:  # noqa: BLE001 - a failing row reports why; the others still run
        row.error = row_error(e)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    row.peak_rss_mb = peak_rss_mb()
    return row


def padded_size(src_h: int, src_w: int, height: int, width: int) -> tuple[int, int]:
    """The padded ``(H, W)`` the model sees for a ``src_h x src_w`` image resized by Detectron2's
    rule to fit ``height x width`` (as an end-to-end row's run resizes it), then padded to
    multiples of 32: 1080x1920 to fit 256x384 is 216x384, padded 224x384."""
    new_h, new_w = resized_shape(src_h, src_w, min(height, width), max(height, width))
    return math.ceil(new_h / 32) * 32, math.ceil(new_w / 32) * 32


def _images_for(summary, seconds: float, free_bytes: int) -> int:
    """How many images fill ``seconds`` at the rate of ``summary``'s run (20% over), capped so
    that their outputs take at most half of ``free_bytes``; 0 when the run already lasted."""
    if summary.done == 0 or summary.seconds >= seconds:
        return 0
    count = math.ceil(summary.images_per_s * seconds * 1.2)
    per_image = summary.bytes_written / summary.done
    if per_image > 0:
        count = min(count, int(free_bytes / 2 / per_image))
    return count
