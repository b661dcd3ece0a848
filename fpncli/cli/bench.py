"""``fpncli bench``: model-only and end-to-end throughput on this machine, and where time goes.
The command's options are read and checked by ``bench_options``."""

from __future__ import annotations

import os
from pathlib import Path

import click

from .bench_options import (
    END_TO_END_OPTIONS,
    MODEL_OPTIONS,
    OUTPUT_PRESETS,
    PRECISIONS,
    _choices,
    _given,
    _json_path,
    _positive_ints,
    _refuse_unread,
    _seconds,
    _sizes,
    _source_size,
)
from .common import _check_weights, _friendly, verbose_option


@click.command()
@click.option(
    "--weights",
    default="random",
    show_default=True,
    help="Weights to time (speed does not depend on them).",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option(
    "--sizes",
    default="800x1216",
    show_default=True,
    callback=_sizes,
    help="Comma list of padded sizes, HxW: height first, as tensor shapes (800x1216 is "
    "landscape; extract --canvas is WxH, as image sizes).",
)
@click.option(
    "--batch-sizes", default="1", show_default=True, callback=_positive_ints, help="Comma list."
)
@click.option(
    "--precisions",
    default="fp32",
    show_default=True,
    callback=_choices(PRECISIONS),
    help="Comma list of fp32, fp16, bf16. A precision this device cannot run well is reported "
    "and skipped (not an error); the other rows still run (none left: a usage error). On CPUs "
    "with AMX (recent Xeons) bf16 is about 3x faster than fp32, at about 1% relative error "
    "(see README).",
)
@click.option(
    "--iters",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Timed iterations per model row, at least (see --seconds).",
)
@click.option(
    "--seconds",
    type=float,
    callback=_seconds,
    default=3.0,
    show_default=True,
    help="Time each row for this long (steady state), after the warm-up: an end-to-end row whose "
    "--images take less is run again with as many images as fill it.",
)
@click.option(
    "--compile", "compile_rows", is_flag=True, help="Also time torch.compile'd model rows."
)
@click.option(
    "--warmup", type=click.IntRange(min=0), default=2, show_default=True, help="Untimed runs."
)
@click.option(
    "--model-only",
    is_flag=True,
    help="Skip the end-to-end rows (so not with their options: --images, --outputs, "
    "--source-size, --workers, --writers, --processes).",
)
@click.option(
    "--compile-only",
    is_flag=True,
    help="Only the torch.compile'd model rows (no eager or end-to-end rows: so not with "
    "--unfused nor the end-to-end rows' options).",
)
@click.option(
    "--e2e-only",
    is_flag=True,
    help="Skip the model-only rows (so not with --compile or --unfused, which add model rows, "
    "nor --iters or --warmup, which time them).",
)
@click.option(
    "--images", type=click.IntRange(min=2), default=16, show_default=True, help="End-to-end images."
)
@click.option(
    "--outputs",
    default="npy",
    show_default=True,
    callback=_choices(OUTPUT_PRESETS),
    help="End-to-end output presets: npy, npy16, heatmaps, all (comma list).",
)
@click.option(
    "--source-size",
    default=None,
    callback=_source_size,
    help="One HxW, height first, of the end-to-end JPEGs (e.g. 1080x1920, a landscape 1080p "
    "frame), resized to fit each size; default: the size. The row gives the padded size the "
    "model ran at (1080x1920 to fit 800x1216: 704x1216), compared only with a model row of it.",
)
@click.option(
    "--workers", type=click.IntRange(min=1), default=2, show_default=True, help="Decoding threads."
)
@click.option(
    "--writers", type=click.IntRange(min=1), default=2, show_default=True, help="Writing threads."
)
@click.option(
    "--processes",
    default="auto",
    show_default=True,
    callback=lambda ctx, param, value: (
        None if value == "auto" else _positive_ints(ctx, param, value)
    ),
    help="Comma list, e.g. 1,2,3: run each end-to-end row in that many worker processes sharing "
    "the device (as extract --processes), to see whether one process's Python threads limit it. "
    "auto: as extract does for a large folder (on CUDA and without .npy, one per 4 cores and "
    "16 GB, at most 4); 1 runs in this process.",
)
@click.option(
    "--unfused",
    is_flag=True,
    help="Also time the model without BN folding and channels-last, and on the CPU without the "
    "NNPACK/GEMM kernels (oneDNN channels-last, row 'onednn').",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False),
    default=None,
    callback=_json_path,
    help="Also write the rows as JSON here ('-' for stdout, the table then on stderr): a new "
    "file, or an earlier bench's JSON (no other file is replaced); it is rewritten after every "
    "row, so an interrupted run keeps the rows it measured.",
)
@verbose_option
@_friendly
def bench(weights, device, sizes, batch_sizes, precisions, iters, seconds, compile_rows, warmup,
          model_only, compile_only, e2e_only, images, source_size, outputs, workers, writers,
          processes, unfused, json_path) -> None:  # fmt: skip
    """Throughput and where the time goes: model-only and end-to-end rows, a table and JSON.

    End-to-end rows split each image's time into decode, h2d, preprocess, model, reductions,
    d2h and write, plus host (the feeding thread's time to stage and launch a batch), name the
    bound (host: a GPU waiting for that thread), and compare with the model-only row measured
    just before them (same size, batch and precision; with --source-size, only where the padded
    size the row ran at is that size), the decode rate with all cores and the disk's write
    rate. Each row stands alone: it is printed as soon as it is measured, and a row that cannot
    run prints why while the others go on (the exit code is then 1).
    """
    import json

    import torch

    from ..api import check_precision, load_backbone
    from ..io.messages import error_text
    from ..model.cpu_kernels import uses_cpu_kernels
    from ..run.bench import OUTPUT_PRESETS as PRESET_OPTIONS
    from ..run.bench import bench_end_to_end
    from ..run.bench_model import bench_model, fp32_reference
    from ..run.bench_table import add_ratios, format_table, kernel_hint, rows_as_dicts
    from ..run.device import select_device
    from ..run.multi import auto_processes
    from ..viz.png import png_deflate
    from .download_bar import DownloadBar

    _check_weights(weights)
    odd = [f"{h}x{w}" for h, w in sizes if h % 32 or w % 32]
    if odd and not e2e_only:  # end-to-end rows resize to fit a size; model rows take it as is
        raise click.BadParameter(
            f"{', '.join(odd)}: the model-only rows' sizes are padded sizes, multiples of 32 "
            "(the backbone's largest stride); use --e2e-only for a resize target",
            param_hint="'--sizes'",
        )
    if e2e_only and (compile_only or model_only):
        other = "--compile-only" if compile_only else "--model-only"
        raise click.UsageError(f"{other} and --e2e-only leave no rows to run")
    if e2e_only and (compile_rows or unfused):  # they add model rows only: else ignored
        other = "--compile" if compile_rows else "--unfused"
        raise click.UsageError(
            f"{other} adds model-only rows, which --e2e-only skips: drop one of the two"
        )
    if compile_only and unfused:  # its rows are eager ones: the extra models loaded, unused
        raise click.UsageError(
            "--unfused adds eager model rows, which --compile-only skips: drop one of the two"
        )
    if e2e_only:  # options given for rows not run would be ignored silently
        _refuse_unread(_given(MODEL_OPTIONS), "model-only", "--e2e-only")
    if compile_only or model_only:
        other = "--compile-only" if compile_only else "--model-only"
        _refuse_unread(_given(END_TO_END_OPTIONS), "end-to-end", other)
    if compile_only:
        compile_rows, model_only = True, True
    try:
        dev = select_device(device)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--device'") from None
    skipped: list[dict] = []
    runnable = []
    for precision in precisions:
        try:
            check_precision(precision, dev)
            runnable.append(precision)
        except ValueError as e:  # known before any timing: said below, the rest run
            skipped.append({"precision": precision, "reason": str(e)})
    if not runnable:  # nothing to time: one line, before the weights are loaded
        reasons = "; ".join(f"{e['precision']}: {e['reason']}" for e in skipped)
        raise click.BadParameter(f"none runs well on {dev} ({reasons})",
                                 param_hint="'--precisions'")  # fmt: skip
    for entry in skipped:
        click.echo(f"skipped {entry['precision']}: {entry['reason']}", err=True)
    unsuited = len(skipped)  # precisions this device cannot run well: said, not failures
    # only the first can download the checkpoint: the others load it from the cache
    variants = [("fpncli", load_backbone(weights, device=dev, download_progress=DownloadBar))]
    if unfused:
        if uses_cpu_kernels(variants[0][1]):
            variants.append(("onednn", load_backbone(weights, device=dev, cpu_kernels=False)))
        plain = load_backbone(weights, device=dev, fold_bn=False, channels_last=False)
        variants.append(("unfused", plain))
    # with --json - the JSON alone goes to stdout (for a pipe into jq), the table to stderr
    table_err = json_path == "-"
    click.echo(format_table([]), err=table_err)
    rows, hints = [], []
    info = {"device": str(dev), "torch": torch.__version__, "png_deflate": png_deflate()}
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)

    def save(complete: bool) -> None:
        """The JSON file, rewritten whole (write, then rename) after every row."""
        if not json_path or (json_path == "-" and not complete):
            return
        data = {**info, "rows": rows_as_dicts(rows), "skipped": skipped, "complete": complete}
        text = json.dumps(data, indent=2)
        if json_path == "-":
            click.echo(text)
            return
        partial = Path(f"{json_path}.partial")
        partial.write_text(text)
        os.replace(partial, json_path)

    def skip(what: str, error: BaseException) -> None:
        reason = error_text(error)
        click.echo(f"skipped {what}: {reason}", err=True)
        skipped.append({"row": what, "reason": reason})
        save(False)

    def measure(what: str, run, model_row=None, **kwargs):
        """The row ``run`` measures, printed and saved (None when it could not run); an
        end-to-end row gets its ratios to ``model_row``, fpncli's model row of its pass."""
        try:
            row = run(**kwargs)
            if row.error:
                raise RuntimeError(row.error)
        except (ValueError, RuntimeError, OSError) as e:
            skip(what, e)
            return None
        add_ratios(row, model_row)
        rows.append(row)
        click.echo(format_table([row]).splitlines()[-1], err=table_err)
        if row.note:
            click.echo(f"note: {what}: {row.note}", err=table_err)
        save(False)
        return row

    def run_rows() -> None:
        for height, width in sizes:
            for batch in batch_sizes:
                shape = {"height": height, "width": width, "batch_size": batch}
                where = f"{height}x{width} batch {batch}"
                reference = None
                if not e2e_only and (compile_rows or any(p != "fp32" for p in runnable)):
                    try:  # the error column only: without it, the rows still run
                        reference = fp32_reference(variants[0][1], height, width, batch)
                    except Exception as e:  # noqa: BLE001 - e.g. fp32 out of GPU memory
                        skip(f"fp32 reference {where} (no error column)", e)
                for precision in runnable:
                    timing = {"precision": precision, "iters": iters, "seconds": seconds,
                              "warmup": warmup, **shape}  # fmt: skip
                    measured = {}  # this pass's model rows, by label: what its rows compare to
                    for label, model in variants if not (e2e_only or compile_only) else []:
                        measured[label] = measure(
                            f"model {label} {where} {precision}", bench_model, model=model,
                            variant=None if label == "fpncli" else label,
                            reference=reference if label != "unfused" else None, **timing,
                        )  # fmt: skip
                    hint = kernel_hint(measured.get("onednn"), measured.get("fpncli"))
                    if hint:
                        hints.append(hint)
                    if compile_rows and not e2e_only:
                        measure(
                            f"model compile {where} {precision}", bench_model,
                            model=variants[0][1], compile=True, reference=reference, **timing,
                        )  # fmt: skip
                    if model_only:
                        continue
                    for preset in outputs:
                        npy = PRESET_OPTIONS[preset].get("save_npy", True)
                        for count in processes or [auto_processes(dev, npy=npy)]:
                            count = None if count == 1 else count  # in this process
                            label = preset if count is None else f"{preset} x{count} processes"
                            measure(
                                f"end-to-end {label} {where} {precision}", bench_end_to_end,
                                model=variants[0][1], images=images, precision=precision,
                                outputs=preset, workers=workers, writers=writers,
                                source_size=source_size, seconds=seconds, processes=count,
                                weights=weights, model_row=measured.get("fpncli"), **shape,
                            )  # fmt: skip

    try:
        with torch.no_grad():
            run_rows()
    finally:  # Ctrl-C or a time limit (SIGINT): the rows measured so far are kept
        save(complete=False)
    for hint in hints:
        click.echo(hint, err=table_err)
    if dev.type == "cuda" and any(r.variant in ("npy", "all") for r in rows):
        click.echo("note: with every level saved as .npy, the disk and the device-to-host copy, "
                   "not the GPU, bound end-to-end throughput", err=table_err)  # fmt: skip
    save(complete=True)
    if len(skipped) > unsuited:
        raise click.ClickException(
            f"{len(skipped) - unsuited} configuration(s) could not run (see above)"
        )
