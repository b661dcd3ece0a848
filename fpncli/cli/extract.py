"""``fpncli extract``: images, folders and globs -> per-image folders of P2-P6."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import click

from ..io.guard import quote_name
from .common import (
    CLIP_HELP,
    DEFAULT_WEIGHTS,
    RunProgress,
    _check_weights,
    _clip_callback,
    _cmap_callback,
    _env_shard,
    _friendly,
    _levels_callback,
    _load_model,
    _shard_callback,
    verbose_option,
)


class _ExtractCommand(click.Command):
    """Keeps the command line as given, so an interrupted run can print how to resume it."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["fpncli.argv"] = list(args)
        return super().parse_args(ctx, args)


def _processes_callback(ctx, param, value: str) -> int | None:
    """``--processes``: auto (None) or a count of at least 1."""
    if value == "auto":
        return None
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise click.BadParameter(f"expected auto or a number of at least 1, got {value!r}")
    return count


@click.command(cls=_ExtractCommand)
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
    help="fp16/bf16 use autocast. On a CPU, fp16 is refused and bf16 needs AVX512-BF16 or "
    "AMX (recent Xeons: about 3x faster than fp32, about 1% relative error).",
)
@click.option(
    "--levels",
    default="p2,p3,p4,p5,p6",
    show_default=True,
    callback=_levels_callback,
    help="Levels to save: a comma list of p2..p6 (or all) and the bottom-up stem, res2..res5.",
)
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
@click.option(
    "--channel",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Channel to draw (with --reduce channel); P2-P6 have 256 (0..255).",
)
@click.option(
    "--reduce",
    type=click.Choice(["channel", "mean", "max", "l2", "pca"]),
    default="channel",
    show_default=True,
    help="How to turn 256 channels into a map.",
)
@click.option(
    "--cmap",
    default="viridis",
    show_default=True,
    callback=_cmap_callback,
    help="Matplotlib colormap.",
)
@click.option("--clip", default="1,99", show_default=True, callback=_clip_callback, help=CLIP_HELP)
@click.option(
    "--min-size", type=click.IntRange(min=1), default=800, show_default=True, help="Shortest edge."
)
@click.option(
    "--max-size",
    type=click.IntRange(min=1),
    default=1333,
    show_default=True,
    help="Longest edge cap.",
)
@click.option("--no-resize", is_flag=True, help="Keep the image size (still padded to 32).")
@click.option(
    "--canvas",
    default=None,
    help="Pad every resized image to a fixed canvas, as Detectron2 pads a batch: WxH, width "
    "first as image sizes are given (multiples of 32), or auto (1344x800 for landscape, "
    "800x1344 for portrait with the default sizes). Fixed shapes, mixed sizes per batch; "
    "features near the right/bottom edge then match Detectron2's batched inference, not its "
    "single-image inference. Default: none.",
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=None, help="Default: 1 on CPU, 8 on CUDA."
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Decoding threads (default: CPU count, max 8).",
)
@click.option(
    "--writers",
    type=click.IntRange(min=1),
    default=None,
    help="Writing threads (default: CPU count, max 8).",
)
@click.option(
    "--compile",
    "compile_model",
    is_flag=True,
    help="torch.compile the backbone (slow start, faster steady state; batches padded).",
)
@click.option(
    "--from-list",
    "from_list",
    # any bytes a file name may hold: what is not UTF-8 is kept as os.fsdecode would
    type=click.File("r", encoding="utf-8", errors="surrogateescape"),
    default=None,
    help="Read more input paths from FILE, one per line ('-' for stdin).",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Redo images whose outputs are complete (the same as --no-resume).",
)
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
    callback=_shard_callback,
    help="Process only shard I of N (I/N, I from 0); default from RANK/WORLD_SIZE (torchrun) "
    "or SLURM_PROCID/SLURM_NTASKS when set.",
)
@click.option("--gpus", default=None,
              help="One worker process per GPU: all; N (the first N GPUs: 2 is GPUs 0 and 1); "
              "or a list of GPU indices, one process per entry (0,1; 0,0 is two processes on "
              "GPU 0; a trailing comma makes one index a list: 1, is GPU 1 alone).")  # fmt: skip
@click.option("--processes", default="auto", show_default=True, callback=_processes_callback,
              help="Worker processes per GPU (one process's Python threads cannot keep a fast "
              "GPU busy). auto: with CUDA and 1,000 images or more, one per 5 cores and 16 GB "
              "of GPU memory, at most 3 (never under torchrun or SLURM, or with --shard); "
              "else 1, this process. With --gpus, each GPU listed gets this many.")  # fmt: skip
@click.option(
    "--max-pixels",
    type=click.IntRange(min=1),
    default=None,
    help="Refuse images with more pixels than this (default 89,478,485, as Pillow).",
)
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True,
              help="Seed for --weights random.")  # fmt: skip
@click.option(
    "--format",
    "out_format",
    type=click.Choice(["files", "wds"]),
    default="files",
    show_default=True,
    help="files: a folder per image; wds: WebDataset tar shards plus OUT/index.parquet.",
)
@click.option(
    "--shard-size",
    default="1GB",
    show_default=True,
    help="Target size of a --format wds shard (e.g. 1GB, 256MB).",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="ray: Ray Data (CPU decode tasks, a GPU actor pool); needs fpncli[ray].",
)
@click.option(
    "--ray-address", default=None, help="Ray cluster to join (default: RAY_ADDRESS, else local)."
)
@click.option("--gpu-workers", default=None, help="Ray GPU actors: N or auto (default auto).")
@click.option("--gpus-per-worker", type=float, default=None, help="GPUs per Ray actor (default 1).")
@click.option(
    "--scale",
    type=click.Choice(["image", "level", "shared"]),
    default="image",
    show_default=True,
    help="Colour range of the pictures: each map's own; or, redrawn once the run is done, one "
    "per level for the run's images, or one for all.",
)
@verbose_option
@_friendly
def extract(inputs, out_dir, weights, device, precision, levels, dtype, no_npy, no_heatmaps,
            no_overview, overlay, channel, reduce, cmap, clip, min_size, max_size, no_resize,
            canvas, batch_size, workers, writers, compile_model, from_list, overwrite, resume,
            force, shard, gpus, processes, max_pixels, seed, out_format, shard_size, engine,
            ray_address, gpu_workers, gpus_per_worker, scale) -> None:  # fmt: skip
    """Extract P2-P6 for images, folders (recursive) and globs into OUT/<image>/."""
    if not inputs and from_list is None:
        raise click.UsageError("give at least one image, folder or glob (or --from-list)")
    engine_options = _check_engine_options(
        out_dir, out_format, shard_size, engine, ray_address, gpu_workers, gpus_per_worker, gpus
    )
    from ..io.guard import mark_output_root
    from ..io.outputs import OutputOptions, check_channel
    from ..io.preprocess import DEFAULT_MAX_PIXELS
    from ..run.pipeline import (
        RunOptions,
        discover_inputs,
        plan_jobs,
        run_jobs,
        select_shard,
    )

    # Every option is checked before any folder is made, weights loaded or downloaded.
    source = click.get_current_context().get_parameter_source("resume")
    if overwrite and resume and source == click.core.ParameterSource.COMMANDLINE:
        raise click.UsageError(
            "--overwrite redoes complete images and --resume skips them: give one"
        )
    if min_size > max_size:
        raise click.BadParameter(
            f"--min-size {min_size} is larger than --max-size {max_size}", param_hint="--min-size"
        )
    _check_weights(weights)
    from_env = None if shard else _env_shard()
    shard_spec = shard or (from_env and from_env[:2])
    # With Ray the driver only reads the weights' identity (on its CPU); the actors pick devices.
    actor_device = device
    if engine == "ray":
        device = "cpu"
    dev = _checked_device(device, precision if engine == "local" else "fp32")
    devices = _gpu_devices(gpus, device)
    if processes is not None and processes > 1:
        if engine != "local" or out_format != "files":
            raise click.UsageError("--processes is for --engine local writing folders")
        if dev.type != "cuda":
            raise click.UsageError("--processes above 1 needs CUDA (a CPU run uses every core)")
    if not (no_heatmaps and no_overview and not overlay):
        try:
            check_channel(channel, reduce, levels)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--channel") from None
    checked_canvas = _checked_canvas(
        canvas, min_size, max_size, not no_resize, max_pixels or DEFAULT_MAX_PIXELS
    )
    try:
        output = OutputOptions(
            levels=levels, dtype=dtype, save_npy=not no_npy,
            save_heatmaps=not no_heatmaps, save_overview=not no_overview, overlay=overlay,
            channel=channel, reduce=reduce, cmap=cmap, clip=clip, min_size=min_size,
            max_size=max_size, resize=not no_resize, canvas=checked_canvas,
        )  # fmt: skip
    except ValueError as e:  # e.g. --channel beyond a drawn level's channels
        raise click.UsageError(str(e)) from None
    _check_scale(scale, output, out_format)
    _check_installed(engine, out_format, out_dir)
    url = "://" in out_dir  # an object store (or file://): --format wds, written through fsspec
    out = Path(out_dir)
    passed_over: set[Path] = set()
    unreadable: list = []
    pairs = discover_inputs(inputs, from_list, exclude=None if url else out, skipped=passed_over,
                            unreadable=unreadable)  # fmt: skip
    if passed_over:
        click.echo(_skipped_note(passed_over), err=True)
    for folder, reason in unreadable:
        click.echo(f"note: cannot read the folder {quote_name(str(folder))} ({reason}): its "
                   "images are left out (reported as failed)", err=True)  # fmt: skip
    if not pairs:
        passed_out = {os.path.realpath(r) for r in passed_over}
        if not url and os.path.realpath(out) in passed_out:  # -o is the input folder, say
            raise click.ClickException(
                f"no images found in the given inputs outside the output folder "
                f"{quote_name(str(out))} (outputs are never read back as inputs: give another -o)"
            )
        raise click.ClickException("no images found in the given inputs")
    # wds: job folders are relative to OUT (they become the sample keys)
    jobs = plan_jobs(pairs, Path("") if out_format == "wds" else out)
    made = not url and not out.exists()
    if not url:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise click.ClickException(f"cannot create output folder {out}: {e.strerror}") from None
        if not os.access(out, os.W_OK):
            raise click.ClickException(f"output folder {out} is not writable")
        mark_output_root(out)
    if shard_spec is not None:
        every = len(jobs)
        jobs = select_shard(jobs, *shard_spec)
        if from_env:
            click.echo(
                f"note: shard {shard_spec[0]}/{shard_spec[1]} from {from_env[2]}: this process "
                f"takes {len(jobs)} of the {every} images (--shard 0/1 takes all)",
                err=True,
            )
    devices = _worker_devices(
        devices,
        processes,
        dev,
        len(jobs),
        auto=engine == "local" and out_format == "files" and not shard_spec,
    )
    try:
        model, dev = _load_model(weights, "cpu" if len(devices) > 1 else device, seed)
    except BaseException:  # e.g. offline: leave no empty output folder behind
        if made:
            _remove_if_unused(out)
        raise
    if engine == "ray" and actor_device != "cpu":
        dev = _torch_device("cuda")  # for the default batch size of GPU actors
    click.echo(_volume_note(jobs, output), err=True)  # once the weights are there, before the run
    if devices:
        dev = _torch_device(devices[0])
    options = RunOptions(
        output=output,
        precision=precision,
        batch_size=batch_size or (8 if dev.type == "cuda" else 1),
        workers=workers or min(8, os.cpu_count() or 1),
        writers=writers or min(8, os.cpu_count() or 1),
        compile=compile_model,
        overwrite=overwrite or not resume,
        force=force,
        max_pixels=max_pixels or DEFAULT_MAX_PIXELS,
    )
    bar = RunProgress()
    try:
        if engine == "ray":
            from ..run.ray_engine import RayOptions, run_ray

            ray_options = RayOptions(
                weights=weights, seed=seed, device=actor_device,
                out_format=out_format, shard_bytes=engine_options["shard_bytes"],
                address=engine_options["address"], gpu_workers=engine_options["gpu_workers"],
                gpus_per_worker=engine_options["gpus_per_worker"], crash_after=_crash_after(),
            )  # fmt: skip
            summary = run_ray(jobs, out_dir, model, options, ray_options, progress=bar)
        elif out_format == "wds":
            from ..run.wds import run_sharded

            summary = run_sharded(
                jobs, out_dir, model, options, shard_bytes=engine_options["shard_bytes"],
                progress=bar, crash_after=_crash_after(),
            )  # fmt: skip
        elif len(devices) > 1:
            from ..run.multi import run_on_devices

            summary = run_on_devices(
                jobs, model, options, devices, weights=weights, seed=seed, progress=bar
            )
        else:
            summary = run_jobs(jobs, model, options, progress=bar)
    except KeyboardInterrupt:
        bar.close()
        _report_interrupt(bar.last, len(jobs))
        sys.exit(130)
    bar.close()
    summary.failed += [
        (str(folder), f"cannot read this folder: {why}") for folder, why in unreadable
    ]
    if not url:
        _rescale(scale, jobs, summary, output, out_format)
        _write_run_log(summary, out, weights, precision, shard_spec)
    _report(summary, Path(out_dir), len(jobs))
    if summary.failed or summary.aborted:
        sys.exit(1)


def _remove_if_unused(out: Path) -> None:
    """Remove the output folder this run made, if it holds nothing but its marker."""
    from ..io.guard import OUTPUT_MARKER

    try:
        (out / OUTPUT_MARKER).unlink(missing_ok=True)
        out.rmdir()  # only when empty
    except OSError:
        pass


def _check_installed(engine: str, out_format: str, out_dir: str) -> None:
    """What the options need installed, checked once every option is known to be valid."""
    from ..io.shards import require_wds

    if engine == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise click.ClickException(
                "--engine ray needs Ray: pip install 'fpncli[ray]'"
            ) from None
    if engine == "ray" or out_format == "wds":
        try:  # shards and the Ray engine go through fsspec and pyarrow; s3:// needs s3fs
            require_wds(out_dir if "://" in out_dir else None)
        except ValueError as e:
            raise click.ClickException(str(e)) from None


def _checked_canvas(canvas: str | None, min_size: int, max_size: int, resize: bool,
                    max_pixels: int) -> str | None:  # fmt: skip
    """``--canvas`` in its canonical form, checked against the other options."""
    from ..io.canvas import check_canvas, parse_canvas

    try:
        canvas = parse_canvas(canvas)
        check_canvas(canvas, min_size=min_size, max_size=max_size, resize=resize,
                     max_pixels=max_pixels)  # fmt: skip
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--canvas") from None
    return canvas


def _check_scale(scale: str, output, out_format: str) -> None:
    from ..run.rescale import check_scale

    if scale != "image" and out_format == "wds":
        raise click.BadParameter(
            f"--scale {scale} redraws picture files: not with --format wds (use --scale image)",
            param_hint="--scale",
        )
    try:
        check_scale(scale, output)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--scale") from None


def _rescale(scale: str, jobs, summary, output, out_format: str) -> None:
    """``--scale level|shared``: redraw the pictures of this run's complete folders on the run's
    ranges (not after a run stopped early: the rerun that finishes it redraws them). With
    ``image``, folders an earlier level/shared run redrew go back to their own ranges."""
    if out_format == "wds" or (scale == "image" and not summary.skipped):
        return  # no folders; or none this run did not write itself
    if summary.aborted and scale != "image":
        click.echo(f"--scale {scale}: pictures left on per-image ranges (the run stopped early)",
                   err=True)  # fmt: skip
        return
    from ..io.outputs import is_complete
    from ..run.rescale import redraw_run

    failed = {path for path, _ in summary.failed}
    folders = [j.folder for j in jobs if str(j.path) not in failed and is_complete(j.folder)]
    if not folders or summary.aborted:
        return
    try:
        result = redraw_run(folders, scale, output)
    except ValueError as e:
        click.echo(f"--scale {scale}: pictures left on per-image ranges: {e}", err=True)
        return
    for folder, reason in result.failed:
        click.echo(f"--scale {scale}: not redrawn: {quote_name(folder)}: {quote_name(reason)}",
                   err=True)  # fmt: skip
    if result.redrawn:
        where = "their own ranges" if scale == "image" else "the run's ranges"
        click.echo(f"--scale {scale}: redrew {result.redrawn} image(s) on {where}", err=True)


def _resume_command() -> str:
    """The command that finishes an interrupted run: the same one, without what redoes work."""
    ctx = click.get_current_context()
    args = [a for a in ctx.meta.get("fpncli.argv", []) if a not in ("--overwrite", "--no-resume")]
    return shlex.join(["fpncli", "extract", *args])


def _report_interrupt(last, total: int) -> None:
    """Ctrl-C: what was done, what is left, and the command that resumes."""
    if last is None:
        done = failed = 0
        left, skipped = total, 0
    else:
        done, failed, skipped = last.done, last.failed, last.skipped
        left = last.todo - done - failed
    click.echo(
        f"interrupted: {done} image(s) written by this run, {failed} failed, {skipped} were "
        f"already complete; {left} of {total} left (the images in progress were not saved).",
        err=True,
    )
    click.echo(f"resume with: {_resume_command()}", err=True)


def _checked_device(device: str, precision: str):
    """The torch device, with the precision checked for it (fp16/bf16 on a CPU)."""
    from ..api import check_precision, resolve_device

    try:
        dev = resolve_device(device)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--device") from None
    try:
        check_precision(precision, dev)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--precision") from None
    return dev


def _check_engine_options(out_dir, out_format, shard_size, engine, ray_address, gpu_workers,
                          gpus_per_worker, gpus) -> dict:  # fmt: skip
    """Validate --format/--engine and the Ray options before anything is loaded."""
    from ..io.shards import parse_size

    try:
        shard_bytes = parse_size(shard_size)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--shard-size") from None
    if "://" in out_dir and out_format != "wds":
        raise click.UsageError(f"{out_dir} is an object-store URL: it needs --format wds")
    if engine == "local":
        for name, value in (("--ray-address", ray_address), ("--gpu-workers", gpu_workers),
                            ("--gpus-per-worker", gpus_per_worker)):  # fmt: skip
            if value is not None:
                raise click.UsageError(f"{name} is an option of --engine ray")
        if gpus is not None and out_format == "wds":
            raise click.UsageError("--gpus writes folders: with --format wds use --engine ray")
        return {"shard_bytes": shard_bytes}
    if gpus is not None:
        raise click.UsageError("--gpus is for --engine local; Ray uses --gpu-workers")
    workers = None
    if gpu_workers not in (None, "auto"):
        try:
            workers = int(gpu_workers)
        except ValueError:
            workers = 0
        if workers < 1:
            raise click.BadParameter(
                f"expected auto or a number >= 1, got {gpu_workers!r}", param_hint="--gpu-workers"
            )
    fraction = 1.0 if gpus_per_worker is None else gpus_per_worker
    if not (0 < fraction <= 1 or float(fraction).is_integer()):
        raise click.BadParameter(
            f"expected a fraction in (0, 1] or a whole number, got {fraction}",
            param_hint="--gpus-per-worker",
        )
    return {
        "shard_bytes": shard_bytes, "address": ray_address or os.environ.get("RAY_ADDRESS"),
        "gpu_workers": workers, "gpus_per_worker": fraction,
    }  # fmt: skip


def _crash_after() -> int | None:
    """Crash tests only: ``FPNCLI_TEST_CRASH_AFTER=K`` stops a sharded run hard after K images."""
    value = os.environ.get("FPNCLI_TEST_CRASH_AFTER")
    return int(value) if value else None


def _torch_device(name: str):
    import torch

    return torch.device(name)


def _worker_devices(devices: list[str], processes: int | None, dev, images: int, auto: bool,
                    env=None) -> list[str]:  # fmt: skip
    """The devices of the worker processes, one entry each (none: this process runs it; one:
    this process runs it on that device).

    ``--processes N`` repeats each ``--gpus`` entry (or the run's device) N times. ``auto``
    keeps ``--gpus`` as given; without it, and where ``auto`` allows (the local engine writing
    folders), a CUDA run of many images gets ``run.multi.auto_processes`` workers on its GPU
    (with a note saying so), but not under a launcher (torchrun, SLURM, ``--shard``), which
    made its processes itself."""
    from ..run.multi import auto_processes

    if processes is not None:
        listed = devices or ([str(dev)] if processes > 1 else [])
        return [d for d in listed for _ in range(processes)]
    if devices or not auto:
        return devices
    environ = os.environ if env is None else env
    launched = any(name in environ for name in ("LOCAL_RANK", "SLURM_LOCALID", "RANK"))
    count = 1 if launched else auto_processes(dev, images)
    if count < 2:
        return []
    click.echo(f"note: {count} worker processes share {dev} (--processes 1 runs one)", err=True)
    return [str(dev)] * count


def _gpu_devices(gpus: str | None, device: str, count: int | None = None) -> list[str]:
    """``--gpus all|N|I,J,...`` -> ``["cuda:0", ...]``; empty without ``--gpus``. A list names
    the GPUs, one worker process per entry: ``0,0`` runs two on GPU 0 (for when one process's
    Python threads cannot keep a GPU busy: ``fpncli bench`` then reads ``bound host``)."""
    if gpus is None:
        return []
    import torch

    if device not in ("auto", "cuda") or (count is None and not torch.cuda.is_available()):
        raise click.UsageError("--gpus needs CUDA (and --device auto or cuda)")
    available = torch.cuda.device_count() if count is None else count
    if gpus == "all":
        return [f"cuda:{i}" for i in range(available)]
    try:  # "1," is the list of GPU 1 alone ("1" is one GPU: GPU 0)
        numbers = [int(part) for part in gpus.removesuffix(",").split(",")]
    except ValueError:
        raise click.BadParameter(
            f"expected all, a number or a list of GPU indices such as 0,0,1, got {gpus!r}"
        ) from None
    if "," not in gpus:
        if not 1 <= numbers[0] <= available:
            raise click.BadParameter(f"{numbers[0]} GPUs asked for, {available} available")
        return [f"cuda:{i}" for i in range(numbers[0])]
    wrong = sorted({i for i in numbers if not 0 <= i < available})
    if wrong:
        raise click.BadParameter(
            f"no GPU {', '.join(map(str, wrong))} here: {available} available (0..{available - 1})"
        )
    return [f"cuda:{i}" for i in numbers]


def _write_run_log(summary, out: Path, weights: str, precision: str, shard) -> None:
    """``OUT/run.json`` (``run-I-of-N.json`` for a shard): what this run did, failures with
    reasons (read by ``fpncli report``)."""
    import time

    from ..io.extraction import write_run_log

    write_run_log(out, {
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "weights": weights,
        "precision": precision, "total": summary.total, "done": summary.done,
        "skipped": summary.skipped, "seconds": round(summary.seconds, 3),
        "bytes_written": summary.bytes_written, "aborted": summary.aborted,
        "failed": [{"path": str(path), "reason": reason} for path, reason in summary.failed],
        "shard": list(shard) if shard else None,
    }, shard)  # fmt: skip


def _skipped_note(roots: set[Path]) -> str:
    shown = sorted(quote_name(os.path.relpath(r)) for r in roots)
    more = f" and {len(shown) - 5} more" if len(shown) > 5 else ""
    return f"note: not reading outputs back as inputs: skipped {', '.join(shown[:5])}{more}"


def _size(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:.1f} GB" if n_bytes >= 1e9 else f"{n_bytes / 1e6:.0f} MB"


def _volume_note(jobs, output) -> str:
    """How much the run will write, said before it starts, with the options that cut it."""
    from dataclasses import replace

    from ..run.pipeline import estimate_run_bytes

    def per_image(options) -> float:
        return estimate_run_bytes(jobs, options) / max(1, len(jobs))

    text = f"output: about {_size(per_image(output))} per image"
    if len(jobs) > 1:
        text += f", {_size(per_image(output) * len(jobs))} for {len(jobs)} images"
    tips = []
    if output.save_npy and output.dtype == "float32":
        tips.append(f"--dtype float16: {_size(per_image(replace(output, dtype='float16')))}")
    if output.save_npy and "p2" in output.levels and len(output.levels) > 1:
        rest = tuple(name for name in output.levels if name != "p2")
        tips.append(f"--levels {','.join(rest)}: {_size(per_image(replace(output, levels=rest)))}")
    return text + (f" (per image with {'; with '.join(tips)})" if tips else "")


def _without_path(reason: str, path: str) -> str:
    """The reason, without the path the library put in it: the line names the path once."""
    for prefix in (f"{path}: ", f"{path} "):
        if reason.startswith(prefix):
            return reason[len(prefix) :]
    for suffix in (f": {path}", f" {path}"):
        if reason.endswith(suffix):
            return reason[: -len(suffix)]
    return reason.replace(path, "the file")


def _report(summary, out_dir: Path, total: int) -> None:
    for path, reason in summary.failed:  # quoted: a newline in a name must not forge a line
        reason = _without_path(reason, str(path))
        click.echo(f"failed: {quote_name(str(path))}: {quote_name(reason)}", err=True)
    if summary.aborted:
        click.echo(f"stopped early: {summary.aborted}", err=True)
    if total == 1 and summary.done == 1 and summary.last_folder is not None:
        click.echo(f"wrote {quote_name(str(summary.last_folder))}")
        return
    others = summary.left_to_others
    if total == 1 and summary.skipped == 1 and not others:
        click.echo("already complete with these settings (use --overwrite to redo)")
        return
    why = "already complete"
    if others:
        why = f"{summary.skipped - others} already complete, {others} left to another live run"
    gb = summary.bytes_written / 1e9
    click.echo(
        f"done {summary.done}, skipped {summary.skipped} ({why}), failed "
        f"{len(summary.failed)} of {summary.total} in {summary.seconds:.1f} s "
        f"({summary.images_per_s:.2f} images/s), {gb:.3f} GB written to {out_dir}"
    )
