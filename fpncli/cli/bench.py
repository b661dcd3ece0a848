"""``fpncli bench``: model-only and end-to-end throughput on this machine."""

from __future__ import annotations

from pathlib import Path

import click

from .common import _friendly


def _int_list(value: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None


def _sizes(value: str) -> list[tuple[int, int]]:
    try:
        return [tuple(int(n) for n in v.lower().split("x")) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected sizes like 800x1216, got {value!r}") from None


@click.command()
@click.option(
    "--weights",
    default="random",
    show_default=True,
    help="Weights to time (speed does not depend on them).",
)
@click.option("--device", default="auto", show_default=True)
@click.option("--sizes", default="800x1216", show_default=True, help="HxW list, padded sizes.")
@click.option("--batch-sizes", default="1", show_default=True)
@click.option("--precisions", default="fp32", show_default=True, help="e.g. fp32,bf16")
@click.option("--iters", type=int, default=5, show_default=True, help="Timed iterations.")
@click.option("--warmup", type=int, default=2, show_default=True)
@click.option("--model-only", is_flag=True, help="Skip the end-to-end rows.")
@click.option("--images", type=int, default=16, show_default=True, help="End-to-end images.")
@click.option(
    "--outputs",
    default="npy",
    show_default=True,
    help="End-to-end output presets: npy, npy16, heatmaps, all (comma list).",
)
@click.option("--workers", type=int, default=2, show_default=True)
@click.option(
    "--unfused", is_flag=True, help="Also time the model without BN folding and channels-last."
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write the rows as JSON here ('-' for stdout).",
)
@_friendly
def bench(weights, device, sizes, batch_sizes, precisions, iters, warmup, model_only, images,
          outputs, workers, unfused, json_path) -> None:  # fmt: skip
    """Throughput and latency: model-only and end-to-end, as a table and JSON."""
    import json

    import torch

    from ..api import load_backbone, resolve_device
    from ..run.bench import bench_end_to_end, bench_model, format_table, rows_as_dicts

    dev = resolve_device(device)
    torch.set_grad_enabled(False)
    variants = [("fpncli", load_backbone(weights, device=dev))]
    if unfused:
        plain = load_backbone(weights, device=dev, fold_bn=False, channels_last=False)
        variants.append(("unfused", plain))
    rows = []
    for height, width in _sizes(sizes):
        for batch in _int_list(batch_sizes):
            for precision in [p.strip() for p in precisions.split(",") if p.strip()]:
                for label, model in variants:
                    row = bench_model(model, height=height, width=width, batch_size=batch,
                                      precision=precision, iters=iters, warmup=warmup)  # fmt: skip
                    row.outputs = label
                    rows.append(row)
                if model_only:
                    continue
                for preset in [o.strip() for o in outputs.split(",") if o.strip()]:
                    rows.append(bench_end_to_end(
                        variants[0][1], height=height, width=width, images=images,
                        batch_size=batch, precision=precision, outputs=preset, workers=workers,
                    ))  # fmt: skip
    click.echo(format_table(rows))
    if dev.type == "cuda" and any(r.outputs in ("npy", "all") for r in rows):
        click.echo("note: with every level saved as .npy, the disk and the device-to-host copy, "
                   "not the GPU, bound end-to-end throughput")  # fmt: skip
    if json_path:
        text = json.dumps({"device": str(dev), "rows": rows_as_dicts(rows)}, indent=2)
        if json_path == "-":
            click.echo(text)
        else:
            Path(json_path).write_text(text)
