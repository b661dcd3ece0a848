"""``fpncli bench``: model-only and end-to-end throughput and latency on this machine.

Model-only times the backbone on a ready batch (median of timed iterations after warm-up).
End-to-end runs the real pipeline (decode, preprocess, backbone, write) over a temporary folder
of JPEGs and reports images/s, the bytes written and, for comparison, the disk's sequential write
speed measured in the same run. Peak host RSS and GPU memory are reported with every row.
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..api import autocast_context, check_precision
from ..io.outputs import OutputOptions
from ..model.fpn import FPN
from .pipeline import Job, RunOptions, run_jobs

__all__ = ["BenchRow", "bench_model", "bench_end_to_end", "disk_write_speed", "GMAC_800x1280"]

#: Multiply-accumulates of the R-50-FPN backbone for one 800x1280 image (DESIGN.md).
GMAC_800x1280 = 137.0
#: Dense bf16 peak, TFLOP/s, by GPU name fragment (vendor datasheets, SXM parts).
BF16_PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.1, "A10": 125.0}


@dataclass
class BenchRow:
    """One measured configuration."""

    kind: str  # "model" or "end-to-end"
    device: str
    height: int
    width: int
    batch_size: int
    precision: str
    outputs: str
    images: int
    median_batch_s: float | None
    images_per_s: float
    peak_rss_mb: float
    peak_gpu_mb: float | None
    bytes_written: int | None = None
    disk_mb_per_s: float | None = None
    fraction_of_bf16_peak: float | None = None


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _peak_gpu_mb(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)


def bench_model(
    model: FPN,
    *,
    height: int,
    width: int,
    batch_size: int,
    precision: str,
    iters: int = 5,
    warmup: int = 2,
) -> BenchRow:
    """Median latency of the backbone on a random ``(B, 3, H, W)`` batch already on the device."""
    device = next(model.parameters()).device
    check_precision(precision, device)
    channels_last = next(model.parameters()).is_contiguous(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(0)
    batch = torch.randn(batch_size, 3, height, width, generator=generator).to(device)
    if channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    times = []
    with torch.inference_mode(), autocast_context(device, precision):
        for i in range(warmup + iters):
            _sync(device)
            start = time.perf_counter()
            model(batch)
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    median = statistics.median(times)
    ips = batch_size / median
    peak = _peak_tflops(device)
    fraction = None
    if peak is not None:
        flops = 2 * GMAC_800x1280 * 1e9 * (height * width) / (800 * 1280)
        fraction = flops * ips / (peak * 1e12)
    return BenchRow(
        "model", str(device), height, width, batch_size, precision, "-", batch_size * iters,
        median, ips, _peak_rss_mb(), _peak_gpu_mb(device), fraction_of_bf16_peak=fraction,
    )  # fmt: skip


def disk_write_speed(folder: Path, size_mb: int = 512) -> float:
    """Sequential write speed of ``folder``'s disk in MB/s (8 MiB writes, then fsync)."""
    path = Path(folder) / f".fpncli-disk-probe-{os.getpid()}"
    chunk = os.urandom(8 << 20)
    try:
        start = time.perf_counter()
        with open(path, "wb") as f:
            for _ in range(max(1, size_mb // 8)):
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        seconds = time.perf_counter() - start
    finally:
        path.unlink(missing_ok=True)
    return max(1, size_mb // 8) * 8 * (1 << 20) / 1e6 / seconds


def _make_images(folder: Path, count: int, height: int, width: int) -> list[Path]:
    from PIL import Image

    rng = np.random.RandomState(0)
    sample = Path(__file__).resolve().parent.parent / "samples" / "coffee.png"
    if sample.is_file():
        base = Image.open(sample).convert("RGB").resize((width, height), Image.BILINEAR)
    else:
        base = Image.fromarray(rng.randint(0, 255, (height, width, 3), dtype=np.uint8))
    paths = []
    for i in range(count):
        path = folder / f"img{i:05d}.jpg"
        base.rotate(0 if i % 2 == 0 else 180).save(path, quality=90)
        paths.append(path)
    return paths


OUTPUT_PRESETS = {
    "npy": {"save_heatmaps": False, "save_overview": False},
    "npy16": {"save_heatmaps": False, "save_overview": False, "dtype": "float16"},
    "heatmaps": {"save_npy": False, "save_overview": False},
    "all": {},
}


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
    work_dir: Path | None = None,
    measure_disk: bool = True,
) -> BenchRow:
    """Run the real pipeline over ``images`` JPEGs of ``height x width`` (the resize keeps that
    size) and time it, wall clock."""
    device = next(model.parameters()).device
    root = Path(tempfile.mkdtemp(prefix="fpncli-bench-", dir=work_dir))
    try:
        (root / "in").mkdir()
        paths = _make_images(root / "in", images, height, width)
        # min/max size equal to the image's own edges: the Detectron2 resize keeps the size.
        sizes = {"min_size": min(height, width), "max_size": max(height, width)}
        output = replace(OutputOptions(), **sizes, **OUTPUT_PRESETS[outputs])
        options = RunOptions(
            output=output, precision=precision, batch_size=batch_size, workers=workers,
            overwrite=True, force=True, record_latest=False,  # scratch: not for `fpncli show`
        )  # fmt: skip
        jobs = [Job(p, root / "out" / p.stem) for p in paths]
        # Warm-up on two images so start-up costs are not timed.
        run_jobs(jobs[:2], model, replace(options, overwrite=True))
        _sync(device)
        start = time.perf_counter()
        summary = run_jobs(jobs, model, options)
        _sync(device)
        seconds = time.perf_counter() - start
        if summary.failed:
            raise RuntimeError(f"bench images failed: {summary.failed[:3]}")
        disk = disk_write_speed(root) if measure_disk and output.save_npy else None
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return BenchRow(
        "end-to-end", str(device), height, width, batch_size, precision, outputs, images,
        None, images / seconds, _peak_rss_mb(), _peak_gpu_mb(device),
        bytes_written=summary.bytes_written, disk_mb_per_s=disk,
    )  # fmt: skip


def format_table(rows: list[BenchRow]) -> str:
    """A plain-text table of the rows."""
    header = (
        f"{'kind':<11}{'device':<8}{'size':>10}{'batch':>6}{'prec':>6}{'outputs':>9}"
        f"{'img/s':>9}{'ms/batch':>10}{'MB/s out':>10}{'disk MB/s':>10}{'RSS MB':>8}{'GPU MB':>8}"
        f"{'%peak':>7}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        ms = f"{r.median_batch_s * 1e3:.1f}" if r.median_batch_s else "-"
        out_rate = "-"
        if r.bytes_written is not None and r.images_per_s:
            out_rate = f"{r.bytes_written / r.images * r.images_per_s / 1e6:.0f}"
        disk = f"{r.disk_mb_per_s:.0f}" if r.disk_mb_per_s else "-"
        gpu = f"{r.peak_gpu_mb:.0f}" if r.peak_gpu_mb is not None else "-"
        peak = f"{100 * r.fraction_of_bf16_peak:.1f}" if r.fraction_of_bf16_peak else "-"
        lines.append(
            f"{r.kind:<11}{r.device:<8}{f'{r.height}x{r.width}':>10}{r.batch_size:>6}"
            f"{r.precision:>6}{r.outputs:>9}{r.images_per_s:>9.2f}{ms:>10}{out_rate:>10}"
            f"{disk:>10}{r.peak_rss_mb:>8.0f}{gpu:>8}{peak:>7}"
        )
    return "\n".join(lines)


def rows_as_dicts(rows: list[BenchRow]) -> list[dict]:
    return [asdict(r) for r in rows]
