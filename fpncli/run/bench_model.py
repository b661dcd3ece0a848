"""``fpncli bench``'s model-only rows: the backbone timed on a ready batch already on the
device, for a fixed time after warm-up (steady state, not a fixed count), with the max relative
error against fp32 on the same batch; on a GPU, the fraction of the card's dense bf16 peak (by
card name).
"""

from __future__ import annotations

import re
import statistics
import time

import torch

from ..api import check_precision, run_backbone
from ..model import cuda_kernels
from ..model.fpn import FPN
from .bench import BenchRow, nbytes, peak_gpu_mb, peak_rss_mb, reset_peak, row_error
from .device import model_for_run, run_settings

__all__ = [
    "bench_model",
    "bf16_peak_tflops",
    "fp32_reference",
    "GMAC_800x1280",
]

#: Multiply-accumulates of the R-50-FPN backbone for one 800x1280 image (DESIGN.md).
GMAC_800x1280 = 137.0
#: Dense bf16 tensor peak, TFLOP/s, by card name fragment, most specific first (datasheets).
BF16_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200 NVL", 835.0),
    ("H200", 989.4), ("GH200", 989.4), ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.1),
    ("L40", 181.0), ("A10G", 70.0), ("A10", 125.0), ("L4", 121.0), ("RTX 4090", 165.2),
)  # fmt: skip


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bf16_peak_tflops(name: str) -> float | None:
    """The dense bf16 peak of a card from its name (``torch.cuda.get_device_name``): a model
    named by whole words (``A100-SXM4-80GB`` is an A100, an ``RTX A1000`` or a ``GB200`` is
    none of these); None for a laptop's card, whose peak is not the desktop card's."""
    words = re.split(r"[\s\-_]+", name.upper())
    if "LAPTOP" in words:
        return None
    for model, peak in BF16_PEAK_TFLOPS:
        key = model.upper().split()
        if any(words[i : i + len(key)] == key for i in range(len(words))):
            return peak
    return None


def _fraction_of_peak(device: torch.device, height: int, width: int, ips: float) -> float | None:
    if device.type != "cuda":
        return None
    peak = bf16_peak_tflops(torch.cuda.get_device_name(device))
    if peak is None:
        return None
    flops = 2 * GMAC_800x1280 * 1e9 * (height * width) / (800 * 1280)
    return flops * ips / (peak * 1e12)


def _max_rel_error(ref: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> float:
    worst = 0.0
    for name, a in ref.items():
        b = out[name].float()
        worst = max(worst, ((b - a).abs().max() / a.abs().max().clamp(min=1e-30)).item())
    return worst


def bench_model(
    model: FPN,
    *,
    height: int,
    width: int,
    batch_size: int,
    precision: str,
    compile: bool = False,
    seconds: float = 3.0,
    iters: int = 3,
    warmup: int = 2,
    reference: dict[str, torch.Tensor] | None = None,
    variant: str | None = None,
) -> BenchRow:
    """Time the backbone on a random ``(B, 3, H, W)`` batch already on the device: ``warmup``
    untimed calls, then calls until ``seconds`` have passed (at least ``iters``). The run
    precision is applied as ``run_jobs`` applies it (converted model on CUDA, autocast else).

    ``reference``: fp32 outputs of the same batch; the row then carries the max relative error.
    """
    device = next(model.parameters()).device
    if variant is None:
        variant = "compile" if compile else "eager"
        if device.type == "cuda" and precision != "fp32":  # FPNCLI_CUDNN_FUSION's A/B rows
            if not compile and not cuda_kernels.enabled():
                variant = "cudnn-off"  # the plain epilogues
            elif compile and cuda_kernels.enabled() and not cuda_kernels.under_compile():
                variant = "comp-plain"  # compiled over the plain ops (FPNCLI_CUDNN_FUSION=eager)
    row = BenchRow("model", str(device), height, width, batch_size, precision, variant)
    try:
        check_precision(precision, device)
        generator = torch.Generator().manual_seed(0)
        batch = torch.randn(batch_size, 3, height, width, generator=generator).to(device)
        if compile:  # compiled from scratch: no row depends on an earlier one, and dynamo's
            torch._dynamo.reset()  # recompile limit never turns a later row silently eager
        with run_settings(device, benchmark=device.type == "cuda", compile=compile):
            run_model = model_for_run(model, precision, compile=compile)

            def forward():  # as a run calls the model (steps.infer_batch)
                with torch.inference_mode():
                    return run_backbone(run_model, batch, precision=precision)

            start = time.perf_counter()
            for _ in range(warmup):
                out = forward()
            _sync(device)
            row.warmup_s = time.perf_counter() - start
            # the peak from here on: the steady state, not cuDNN's search for this shape (its
            # workspace can take most of the free memory once) nor the compile
            out = None
            baseline = reset_peak(device)
            times, out = _timed_calls(forward, device, iters, seconds)
        row.images, row.seconds = batch_size * len(times), sum(times)
        row.median_batch_s = statistics.median(times)
        row.images_per_s = batch_size / row.median_batch_s
        row.peak_gpu_mb = peak_gpu_mb(device, baseline, nbytes(run_model, batch))
        row.fraction_of_bf16_peak = _fraction_of_peak(device, height, width, row.images_per_s)
        if reference is not None:
            row.max_rel_error_vs_fp32 = _max_rel_error(reference, out)
    except Exception as e:  # noqa: BLE001 - a failing row reports why; the others still run
        row.error = row_error(e)
    row.peak_rss_mb = peak_rss_mb()
    return row


def _timed_calls(call, device: torch.device, iters: int, seconds: float) -> tuple[list, object]:
    """Seconds per ``call()`` and the last call's result: at least ``iters`` calls and
    ``seconds`` in all. On CUDA each call
    is timed by events on the device's stream, with no host sync in between (a sync per call
    would leave the GPU idle while the next call's kernels are launched: batch-1 rows would read
    low); on the CPU, by the wall clock."""
    times: list[float] = []
    result = None
    start = time.perf_counter()
    if device.type != "cuda":
        while len(times) < iters or time.perf_counter() - start < seconds:
            t0 = time.perf_counter()
            result = call()
            times.append(time.perf_counter() - t0)
        return times, result
    stream = torch.cuda.current_stream(device)
    events = []
    while len(events) < iters or time.perf_counter() - start < seconds:
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record(stream)
        result = call()
        end.record(stream)
        events.append((begin, end))
        if len(events) % 8 == 0:  # the host may run ahead of the GPU by a few calls, not all
            events[-8][1].synchronize()
    torch.cuda.synchronize(device)
    return [begin.elapsed_time(end) / 1e3 for begin, end in events], result


def fp32_reference(model: FPN, height: int, width: int, batch_size: int) -> dict:
    """fp32 outputs of the batch ``bench_model`` uses (for its error column)."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    batch = torch.randn(batch_size, 3, height, width, generator=generator).to(device)
    with run_settings(device):
        return {k: v.float() for k, v in run_backbone(model, batch, precision="fp32").items()}
