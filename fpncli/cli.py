"""The ``fpncli`` command line: thin click wrappers around the library.

Heavy imports (torch, the model) happen inside the commands so ``fpncli --help`` is instant.
Library errors become one line on stderr and a non-zero exit; ``-v`` adds the traceback.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
import traceback
from pathlib import Path

import click

from . import __version__

LEVEL_NAMES = ("p2", "p3", "p4", "p5", "p6")
DEFAULT_WEIGHTS = "faster_rcnn_R_50_FPN_3x"  # = fpncli.weights.DEFAULT_WEIGHTS (no torch import)


def _friendly(command):
    """Turn library errors into one clear line and exit code 1 (traceback with -v)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except click.exceptions.Exit:
            raise
        except click.ClickException:
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except (ValueError, OSError, RuntimeError, LookupError) as e:
            ctx = click.get_current_context(silent=True)
            if ctx is not None and ctx.find_root().params.get("verbose"):
                traceback.print_exc()
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise click.ClickException(message) from None

    return wrapper


def _parse_levels(value: str) -> tuple[str, ...]:
    levels = tuple(v.strip().lower() for v in value.split(",") if v.strip())
    unknown = [lv for lv in levels if lv not in LEVEL_NAMES]
    if unknown or not levels:
        raise click.BadParameter(f"unknown level(s) {', '.join(unknown) or '(none)'}; use p2..p6")
    return tuple(lv for lv in LEVEL_NAMES if lv in levels)


def _parse_shard(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        index, count = (int(v) for v in value.split("/"))
    except ValueError:
        raise click.BadParameter(f"expected I/N (e.g. 0/4), got {value!r}") from None
    if count < 1 or not 0 <= index < count:
        raise click.BadParameter(f"need 0 <= I < N, got {value}")
    return index, count


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging; tracebacks on errors.")
@click.version_option(__version__, prog_name="fpncli")
def cli(verbose: int) -> None:
    """Extract and visualize Detectron2's ResNet-FPN feature maps (P2-P6)."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


class _ProgressLine:
    """``[####----] 120/1000 12.3 img/s ETA 1m11s`` on stderr, redrawn in place (terminals only)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.last = 0.0

    def __call__(self, p) -> None:
        now = time.monotonic()
        finished = p.done + p.failed
        if not self.enabled or (now - self.last < 0.2 and finished < p.todo):
            return
        self.last = now
        rate = p.done / p.elapsed_s if p.elapsed_s > 0 else 0.0
        remaining = (p.todo - finished) / rate if rate > 0 else float("nan")
        eta = (
            "?" if remaining != remaining else f"{int(remaining // 60)}m{int(remaining % 60):02d}s"
        )
        width = 28
        filled = int(width * finished / max(p.todo, 1))
        bar = "#" * filled + "-" * (width - filled)
        text = f"\r[{bar}] {finished}/{p.todo} {rate:.2f} img/s ETA {eta}"
        if p.failed:
            text += f" ({p.failed} failed)"
        click.echo(text, err=True, nl=False)

    def close(self) -> None:
        if self.enabled:
            click.echo("", err=True)


def _load_model(weights: str, device: str, seed: int):
    from .api import load_backbone, resolve_device

    dev = resolve_device(device)
    model = load_backbone(weights, device=dev, seed=seed)
    if model.weights_info.random:
        click.echo(
            f"note: --weights random: a seeded (seed {seed}), untrained network; its feature maps "
            "show the architecture, not what a trained detector sees",
            err=True,
        )
    return model, dev


@cli.command()
@click.argument("inputs", nargs=-1)
@click.option(
    "-o",
    "--out",
    "out_dir",
    default="fpn_out",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Output folder.",
)
@click.option(
    "--weights",
    default=DEFAULT_WEIGHTS,
    show_default=True,
    help="Registry name, checkpoint path, or 'random'.",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "bf16"]),
    default="fp32",
    show_default=True,
    help="fp16/bf16 use autocast on CUDA.",
)
@click.option("--levels", default="p2,p3,p4,p5,p6", show_default=True, help="Levels to save.")
@click.option(
    "--dtype",
    type=click.Choice(["float32", "float16"]),
    default="float32",
    show_default=True,
    help="dtype of the .npy files.",
)
@click.option("--no-npy", is_flag=True, help="Do not save the .npy tensors.")
@click.option("--no-heatmaps", is_flag=True, help="Do not save per-level heatmap PNGs.")
@click.option("--no-overview", is_flag=True, help="Do not save overview.png.")
@click.option("--overlay", is_flag=True, help="Also save each heatmap laid over the photo.")
@click.option("--channel", type=int, default=0, show_default=True, help="Channel to draw.")
@click.option(
    "--reduce",
    type=click.Choice(["channel", "mean", "max", "l2", "pca"]),
    default="channel",
    show_default=True,
    help="How to turn 256 channels into a map.",
)
@click.option("--cmap", default="viridis", show_default=True, help="Matplotlib colormap.")
@click.option("--min-size", type=int, default=800, show_default=True, help="Shortest edge.")
@click.option("--max-size", type=int, default=1333, show_default=True, help="Longest edge cap.")
@click.option("--no-resize", is_flag=True, help="Keep the image size (still padded to 32).")
@click.option("--batch-size", type=int, default=None, help="Default: 1 on CPU, 8 on CUDA.")
@click.option(
    "--workers", type=int, default=None, help="Decoding threads (default: CPU count, max 8)."
)
@click.option(
    "--from-list",
    "from_list",
    type=click.File("r"),
    default=None,
    help="Read more input paths from FILE, one per line ('-' for stdin).",
)
@click.option("--overwrite", is_flag=True, help="Redo images whose outputs are complete.")
@click.option(
    "--resume/--no-resume",
    default=True,
    show_default=True,
    help="Skip images whose folder is complete (same input and settings).",
)
@click.option("--force", is_flag=True, help="Run even if the disk estimate exceeds free space.")
@click.option(
    "--shard",
    default=None,
    help="Process only shard I of N (I/N); default from RANK/WORLD_SIZE when set.",
)
@click.option("--gpus", default=None, help="all or N: one worker process per GPU (with CUDA).")
@click.option("--max-pixels", type=int, default=None, help="Refuse images larger than this.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for --weights random.")
@_friendly
def extract(inputs, out_dir, weights, device, precision, levels, dtype, no_npy, no_heatmaps,
            no_overview, overlay, channel, reduce, cmap, min_size, max_size, no_resize,
            batch_size, workers, from_list, overwrite, resume, force, shard, gpus, max_pixels,
            seed) -> None:  # fmt: skip
    """Extract P2-P6 for images, folders (recursive) and globs into OUT/<image>/."""
    if not inputs and from_list is None:
        raise click.UsageError("give at least one image, folder or glob (or --from-list)")
    from .outputs import OutputOptions
    from .pipeline import (
        RunOptions,
        discover_inputs,
        plan_jobs,
        run_jobs,
        select_shard,
        shard_from_env,
    )
    from .preprocess import DEFAULT_MAX_PIXELS

    output = OutputOptions(
        levels=_parse_levels(levels), dtype=dtype, save_npy=not no_npy,
        save_heatmaps=not no_heatmaps, save_overview=not no_overview, overlay=overlay,
        channel=channel, reduce=reduce, cmap=cmap, min_size=min_size, max_size=max_size,
        resize=not no_resize,
    )  # fmt: skip
    if not 0 <= channel < 256:
        raise click.BadParameter(
            f"channel must be in 0..255, got {channel}", param_hint="--channel"
        )
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise click.ClickException(f"cannot create output folder {out}: {e.strerror}") from None
    if not os.access(out, os.W_OK):
        raise click.ClickException(f"output folder {out} is not writable")
    pairs = discover_inputs(inputs, from_list, exclude=out)
    if not pairs:
        raise click.ClickException("no images found in the given inputs")
    jobs = plan_jobs(pairs, Path(out_dir))
    shard_spec = _parse_shard(shard) or shard_from_env()
    if shard_spec is not None:
        jobs = select_shard(jobs, *shard_spec)
    devices = _gpu_devices(gpus, device)
    model, dev = _load_model(weights, "cpu" if len(devices) > 1 else device, seed)
    if devices:
        dev = _torch_device(devices[0])
    options = RunOptions(
        output=output,
        precision=precision,
        batch_size=batch_size or (8 if dev.type == "cuda" else 1),
        workers=workers or min(8, os.cpu_count() or 1),
        overwrite=overwrite or not resume,
        force=force,
        max_pixels=max_pixels or DEFAULT_MAX_PIXELS,
    )
    bar = _ProgressLine(enabled=sys.stderr.isatty() and len(jobs) > 1)
    if len(devices) > 1:
        from .multi import run_on_devices

        summary = run_on_devices(
            jobs, model, options, devices, weights=weights, seed=seed, progress=bar
        )
    else:
        summary = run_jobs(jobs, model, options, progress=bar)
    bar.close()
    _report(summary, Path(out_dir), len(jobs))
    if summary.failed or summary.aborted:
        sys.exit(1)


def _torch_device(name: str):
    import torch

    return torch.device(name)


def _gpu_devices(gpus: str | None, device: str) -> list[str]:
    """``--gpus all|N`` -> ``["cuda:0", ...]``; empty without ``--gpus``."""
    if gpus is None:
        return []
    import torch

    if device not in ("auto", "cuda") or not torch.cuda.is_available():
        raise click.UsageError("--gpus needs CUDA (and --device auto or cuda)")
    available = torch.cuda.device_count()
    if gpus == "all":
        count = available
    else:
        try:
            count = int(gpus)
        except ValueError:
            raise click.BadParameter(f"expected all or a number, got {gpus!r}") from None
        if not 1 <= count <= available:
            raise click.BadParameter(f"{count} GPUs asked for, {available} available")
    return [f"cuda:{i}" for i in range(count)]


def _report(summary, out_dir: Path, total: int) -> None:
    for path, reason in summary.failed:
        click.echo(f"failed: {path}: {reason}", err=True)
    if summary.aborted:
        click.echo(f"stopped early: {summary.aborted}", err=True)
    if total == 1 and summary.done == 1:
        click.echo(f"wrote {summary.last_folder}")
        return
    if total == 1 and summary.skipped == 1:
        click.echo("already complete with these settings (use --overwrite to redo)")
        return
    gb = summary.bytes_written / 1e9
    click.echo(
        f"done {summary.done}, skipped {summary.skipped} (already complete), failed "
        f"{len(summary.failed)} of {summary.total} in {summary.seconds:.1f} s "
        f"({summary.images_per_s:.2f} images/s), {gb:.3f} GB written to {out_dir}"
    )


@cli.command()
@click.argument("target", required=False)
@click.option("--level", default=None, help="p2..p6 or all (default p2, or a .npy TARGET's level).")
@click.option("--channel", type=int, default=0, show_default=True)
@click.option(
    "--reduce",
    type=click.Choice(["channel", "mean", "max", "l2", "pca"]),
    default="channel",
    show_default=True,
)
@click.option("--cmap", default="viridis", show_default=True)
@click.option("--overlay", is_flag=True, help="Lay the heatmap over the original photo.")
@click.option("--save", type=click.Path(dir_okay=False), default=None, help="Write a PNG here.")
@click.option(
    "--weights",
    default=DEFAULT_WEIGHTS,
    show_default=True,
    help="For an image TARGET, extracted on the fly.",
)
@click.option("--device", default="auto", show_default=True)
@_friendly
def show(target, level, channel, reduce, cmap, overlay, save, weights, device) -> None:
    """Show a level of an extraction (TARGET: folder, .npy or image; default: the latest)."""
    from .show import show as show_target

    show_target(
        target, level=level.lower() if level else None, channel=channel, reduce=reduce,
        cmap=cmap, overlay=overlay, save=save, weights=weights, device=device, notify=click.echo,
    )  # fmt: skip


@cli.group()
def weights() -> None:
    """The registry of named checkpoints and the local cache."""


@weights.command("list")
def weights_list() -> None:
    """List named checkpoints, their addresses and cache state."""
    from .hub import cached_path
    from .weights import DEFAULT_WEIGHTS as default
    from .weights import REGISTRY

    for spec in REGISTRY.values():
        path = cached_path(spec)
        state = "cached" if path.is_file() else "not cached"
        mark = " (default)" if spec.name == default else ""
        click.echo(f"{spec.name}{mark}: {spec.description}")
        click.echo(f"    {spec.url}")
        click.echo(
            f"    {spec.input.color_order}, stride_in_1x1={spec.arch.get('stride_in_1x1')}, "
            f"{state}: {path}"
        )
    click.echo("random: a seeded, untrained network (offline; for trying the tool)")


@weights.command("download")
@click.argument("names", nargs=-1, required=True)
@_friendly
def weights_download(names) -> None:
    """Download named checkpoints into the cache (checked, then renamed into place)."""
    from .checkpoint import load_state_dict_strict, read_checkpoint
    from .fpn import build_resnet_fpn_backbone
    from .hub import cached_path, download
    from .weights import get_spec

    def check(path: Path) -> None:
        ckpt = read_checkpoint(path)
        load_state_dict_strict(build_resnet_fpn_backbone(**ckpt.arch), ckpt.state_dict)

    for name in names:
        spec = get_spec(name)
        if cached_path(spec).is_file():
            click.echo(f"{name}: already cached at {cached_path(spec)}")
            continue
        path = download(spec, check=check)
        click.echo(f"{name}: saved {path}")


@weights.command("verify")
@click.argument("names", nargs=-1)
@_friendly
def weights_verify(names) -> None:
    """Re-hash cached checkpoints against the recorded and published sha256."""
    from .hub import verify_cached
    from .weights import get_spec

    for name in names:
        get_spec(name)
    bad = 0
    for entry in verify_cached(list(names) or None):
        click.echo(f"{entry.name}: {entry.status} {entry.detail}".rstrip())
        bad += entry.status == "mismatch"
    if bad:
        raise click.ClickException(f"{bad} cached checkpoint(s) do not match their digest")


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


@cli.command()
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

    from .api import load_backbone, resolve_device
    from .bench import bench_end_to_end, bench_model, format_table, rows_as_dicts

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


def main() -> None:
    """Console entry point (``fpncli`` and ``python -m fpncli``)."""
    cli(prog_name="fpncli")
