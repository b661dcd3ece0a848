"""``fpncli bench``'s rows side by side: the ratios between rows, the kernel hints, and the
table and JSON it prints.
"""

from __future__ import annotations

from dataclasses import asdict

from .bench import STAGES, BenchRow

__all__ = ["add_ratios", "format_table", "kernel_hints", "rows_as_dicts"]


def add_ratios(rows: list[BenchRow]) -> None:
    """End-to-end rows get ``of_model`` (their rate / the model-only eager rate of the same size,
    batch and precision) and ``of_min_model_decode`` (/ min(model-only, decode with all cores))."""
    model_rates = {
        (r.height, r.width, r.batch_size, r.precision, r.variant): r.images_per_s
        for r in rows
        if r.kind == "model" and r.error is None
    }
    for r in rows:
        if r.kind != "end-to-end" or r.error is not None:
            continue
        variant = "eager"
        rate = model_rates.get((r.height, r.width, r.batch_size, r.precision, variant))
        if rate:
            r.ratios["of_model"] = r.images_per_s / rate
            decoded = max(r.ratios.get("decode_img_s", 0.0),
                          r.ratios.get("decode_procs_img_s", 0.0))  # fmt: skip
            if decoded:
                r.ratios["of_min_model_decode"] = r.images_per_s / min(rate, decoded)


def kernel_hints(rows: list[BenchRow]) -> list[str]:
    """A line for each CPU shape where oneDNN (row ``onednn``, ``--unfused``) beat the default
    NNPACK/GEMM kernels (the ``eager`` row) by more than 5%: on such a CPU (an AVX-512 Xeon,
    say) ``FPNCLI_CPU_KERNELS=0`` is the faster setting."""
    hints = []
    for row in rows:
        if row.kind != "model" or row.variant != "onednn" or not row.median_batch_s:
            continue
        same = (row.device, row.height, row.width, row.batch_size, row.precision)
        ours = next((r for r in rows if r.kind == "model" and r.variant == "eager"
                     and (r.device, r.height, r.width, r.batch_size, r.precision) == same
                     and r.median_batch_s), None)  # fmt: skip
        if ours is not None and row.median_batch_s < 0.95 * ours.median_batch_s:
            hints.append(
                f"note: at {row.height}x{row.width} batch {row.batch_size} oneDNN took "
                f"{row.median_batch_s * 1e3:.0f} ms against {ours.median_batch_s * 1e3:.0f} ms "
                "with fpncli's CPU kernels: on this CPU, FPNCLI_CPU_KERNELS=0 is faster"
            )
    return hints


def _fmt(value, spec: str, none: str = "-") -> str:
    return none if value is None else format(value, spec)


def format_table(rows: list[BenchRow]) -> str:
    """A plain-text table of the rows; a failed row shows its reason."""
    stage_head = "".join(f"{s[:6]:>7}" for s in STAGES)
    header = (
        f"{'kind':<6}{'device':<8}{'size':>10}{'bs':>4}{'prec':>6}{'variant':>15}{'img/s':>9}"
        f"{'ms/bat':>8}{'%bf16':>7}{'GPU MB':>8}{'relerr':>9}  | ms/img:{stage_head}  "
        f"{'bound':<7}{'ratios'}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        head = (
            f"{('e2e' if r.kind == 'end-to-end' else r.kind):<6}{r.device:<8}"
            f"{f'{r.height}x{r.width}':>10}{r.batch_size:>4}{r.precision:>6}{r.variant:>15}"
        )
        if r.error:
            lines.append(f"{head}  FAILED: {r.error}")
            continue
        stages = "".join(
            f"{_fmt(r.stage_ms_per_image.get(s), '.1f'):>7}" if r.stage_ms_per_image else f"{'':>7}"
            for s in STAGES
        )
        ratios = " ".join(f"{k}={v:.2f}" for k, v in r.ratios.items())
        lines.append(
            f"{head}{r.images_per_s:>9.2f}"
            f"{_fmt(r.median_batch_s and r.median_batch_s * 1e3, '.1f'):>8}"
            f"{_fmt(r.fraction_of_bf16_peak and 100 * r.fraction_of_bf16_peak, '.1f'):>7}"
            f"{_fmt(r.peak_gpu_mb, '.0f'):>8}{_fmt(r.max_rel_error_vs_fp32, '.1e'):>9}"
            f"  |        {stages}  {r.bound or '-':<7}{ratios}"
        )
    return "\n".join(lines)


def rows_as_dicts(rows: list[BenchRow]) -> list[dict]:
    return [asdict(r) for r in rows]
