"""``fpncli bench``'s rows side by side: the ratios between rows, the kernel hints, and the
table and JSON it prints.
"""

from __future__ import annotations

from dataclasses import asdict

from .bench import STAGES, BenchRow

__all__ = ["add_ratios", "add_ratios_across", "format_table", "kernel_hint", "rows_as_dicts"]


def add_ratios(row: BenchRow, model_row: BenchRow | None) -> None:
    """An end-to-end row's ratios to the model-only row measured with it (``model_row``: the same
    size, batch and precision, in the same pass, before it): ``of_model`` (its rate / the model
    row's) and ``of_min_model_decode`` (/ min(model-only, decode with all cores)). Each row is
    paired once, when it is made, so the table and the JSON give the same numbers (paired by shape
    over all rows, a later row of a repeated size changed an earlier row's ratios in the JSON).
    None, a failed model row, or one of another size (an end-to-end row whose ``--source-size``
    was resized to another padded size): no ratios."""
    if row.kind != "end-to-end" or row.error is not None or model_row is None:
        return
    if model_row.error is not None or not model_row.images_per_s:
        return
    shape = (model_row.height, model_row.width, model_row.batch_size, model_row.precision)
    if (row.height, row.width, row.batch_size, row.precision) != shape:
        return
    rate = model_row.images_per_s
    row.ratios["of_model"] = row.images_per_s / rate
    decoded = max(row.ratios.get("decode_img_s", 0.0), row.ratios.get("decode_procs_img_s", 0.0))
    if decoded:
        row.ratios["of_min_model_decode"] = row.images_per_s / min(rate, decoded)


def add_ratios_across(rows: list[BenchRow]) -> None:
    """Rows read back from several runs (``scripts/gpu_check.sh`` joins its steps' JSON): each
    end-to-end row without ``of_model`` (an ``--e2e-only`` run's) is paired with the nearest eager
    model row before it in ``rows`` of the same device, size, batch and precision. Rows paired
    when they were made keep their ratios."""
    for i, row in enumerate(rows):
        if row.kind != "end-to-end" or "of_model" in row.ratios:
            continue
        shape = (row.device, row.height, row.width, row.batch_size, row.precision)
        model_row = next((r for r in reversed(rows[:i]) if r.kind == "model"
                          and r.variant == "eager" and r.error is None
                          and (r.device, r.height, r.width, r.batch_size, r.precision) == shape),
                         None)  # fmt: skip
        add_ratios(row, model_row)


def kernel_hint(onednn: BenchRow | None, ours: BenchRow | None) -> str | None:
    """A line when oneDNN (the ``onednn`` row, ``--unfused``) beat the default NNPACK/GEMM kernels
    (``ours``: fpncli's row measured with it, in the same pass) by more than 5%: on such a CPU
    (an AVX-512 Xeon, say) ``FPNCLI_CPU_KERNELS=0`` is the faster setting. None otherwise, or
    when either row is missing or failed."""
    if onednn is None or ours is None or not onednn.median_batch_s or not ours.median_batch_s:
        return None
    if onednn.median_batch_s >= 0.95 * ours.median_batch_s:
        return None
    return (
        f"note: at {onednn.height}x{onednn.width} batch {onednn.batch_size} oneDNN took "
        f"{onednn.median_batch_s * 1e3:.0f} ms against {ours.median_batch_s * 1e3:.0f} ms "
        "with fpncli's CPU kernels: on this CPU, FPNCLI_CPU_KERNELS=0 is faster"
    )


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
