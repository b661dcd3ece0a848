"""``fpncli extract``: images, folders and globs -> per-image folders of P2-P6."""

from __future__ import annotations

import os
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
    _out_folder,
    _shard_callback,
    _sigterm_as_ctrl_c,
    _verbose,
    verbose_option,
)
from .extract_checks import (
    _check_engine_options,
    _check_inputs_not_levels,
    _check_installed,
    _check_one_format,
    _check_options_used,
    _check_scale,
    _checked_canvas,
    _checked_device,
    _crash_after,
    _gpu_devices,
    _lock_format,
    _processes_callback,
    _torch_device,
    _worker_devices,
)
from .extract_report import (
    _commented_note,
    _hidden_left_out,
    _hidden_note,
    _inside,
    _interrupted_progress,
    _leftover_note,
    _once,
    _remove_if_unused,
    _replaced_note,
    _report,
    _report_interrupt,
    _rescale,
    _resume_command,
    _skipped_note,
    _volume_note,
    _write_interrupted_log,
    _write_run_log,
)


class _ExtractCommand(click.Command):
    """Keeps the command line as given, so an interrupted run can print how to resume it."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["fpncli.argv"] = list(args)
        return super().parse_args(ctx, args)


@click.command(cls=_ExtractCommand)
@click.argument("inputs", nargs=-1)
@click.option(
    "-o",
    "--out",
    "out_dir",
    default="fpn_out",
    show_default=True,
    type=click.Path(file_okay=False),
    callback=_out_folder,
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
    help="fp16/bf16: on CUDA a copy of the model converted to that dtype, on a CPU autocast. "
    "On a CPU, fp16 is refused and bf16 needs AVX512-BF16 or AMX (recent Xeons: about 3x "
    "faster than fp32, about 1% relative error).",
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
    help="How to turn 256 channels into a map (pca: signed to correlate with mean).",
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
    help="Decoding threads (default: the cores this process may use, max 8).",
)
@click.option(
    "--writers",
    type=click.IntRange(min=1),
    default=None,
    help="Writing threads (default: the cores this process may use, max 8).",
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
    # collected only to refuse a second one: click keeps the last given, dropping the others
    multiple=True,
    help="Read more input paths from FILE, one per line ('-' for stdin); one list per run. Blank "
    "lines and lines starting with # are skipped; spaces at a name's ends are dropped unless a "
    "file has the name with them.",
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
              "GPU busy). auto: with CUDA, 1,000 images or more and no .npy (--no-npy: a run "
              "that writes .npy is bound by its disk), one per 4 cores and 16 GB of GPU "
              "memory, at most 4 (never under torchrun or SLURM, or with --shard); else 1, "
              "this process. With --gpus, each GPU listed gets this many.")  # fmt: skip
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
@_sigterm_as_ctrl_c
def extract(inputs, out_dir, weights, device, precision, levels, dtype, no_npy, no_heatmaps,
            no_overview, overlay, channel, reduce, cmap, clip, min_size, max_size, no_resize,
            canvas, batch_size, workers, writers, compile_model, from_list, overwrite, resume,
            force, shard, gpus, processes, max_pixels, seed, out_format, shard_size, engine,
            ray_address, gpu_workers, gpus_per_worker, scale) -> None:  # fmt: skip
    """Extract P2-P6 for images, folders (recursive) and globs into OUT/<image>/."""
    if len(from_list) > 1:  # each list's outputs mirror its own tree: one list, one -o
        raise click.BadParameter(
            f"given {len(from_list)} times, and a run takes one list: join them into one "
            "(cat a.txt b.txt | fpncli extract --from-list - ...), or run once per list",
            param_hint="'--from-list'",
        )
    from_list = from_list[0] if from_list else None
    if not inputs and from_list is None:
        raise click.UsageError("give at least one image, folder or glob (or --from-list)")
    engine_options = _check_engine_options(
        out_dir, out_format, shard_size, engine, ray_address, gpu_workers, gpus_per_worker, gpus
    )
    from ..io.guard import check_no_dangling_link, mark_output_root
    from ..io.outputs import OutputOptions, check_channel
    from ..io.pillow_open import DEFAULT_MAX_PIXELS
    from ..run.multi import usable_cores
    from ..run.pipeline import (
        RunInputs,
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
    if min_size > max_size and not no_resize:  # (given with --no-resize: refused below)
        raise click.BadParameter(
            f"--min-size {min_size} is larger than --max-size {max_size}", param_hint="'--min-size'"
        )
    _check_weights(weights)
    from_env = None if shard else _env_shard()
    shard_spec = shard or (from_env and from_env[:2])
    # With Ray the driver only reads the weights' identity (on its CPU); the actors pick devices.
    actor_device = device
    if engine == "ray":
        if device.startswith("cuda:"):  # Ray gives each actor its own GPU, seen as cuda:0
            raise click.BadParameter(
                "with --engine ray, Ray places the actors on GPUs: give auto, cpu or cuda",
                param_hint="'--device'",
            )
        device = "cpu"
    # Ray actors on --device cpu refuse what a local CPU run refuses (auto's may get GPUs)
    checked = engine == "local" or actor_device == "cpu"
    dev = _checked_device(device, precision if checked else "fp32")
    devices = _gpu_devices(gpus, device)
    if processes is not None and processes > 1:
        if engine != "local" or out_format != "files":
            raise click.UsageError("--processes is for --engine local writing folders")
        if dev.type != "cuda":
            raise click.UsageError("--processes above 1 needs CUDA (a CPU run uses every core)")
    if not (no_heatmaps and no_overview and not overlay):  # (an OptionError: --channel's)
        check_channel(channel, reduce, levels)
    checked_canvas = _checked_canvas(
        canvas, min_size, max_size, not no_resize, max_pixels or DEFAULT_MAX_PIXELS
    )
    _check_options_used(weights, reduce, not no_resize)
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
    if out_format == "wds":  # someone else's shards: refused before -o is marked or weights load
        from ..io.shard_index import check_root
        from ..io.shards import open_root

        check_root(*open_root(out_dir))
    _check_one_format(out_dir, out_format)  # before -o is marked: nothing is written
    url = "://" in out_dir  # an object store (or file://): --format wds, written through fsspec
    out = Path(out_dir)
    passed_over: set[Path] = set()
    unreadable: list = []
    repeated: list = []
    hidden: list = []
    commented: list = []
    _check_inputs_not_levels(inputs, levels)
    if dtype == "float16" and no_npy:  # the dtype of files not written: likely meant nothing
        drawn = not (no_heatmaps and no_overview and not overlay)  # else statistics only
        changed = "the maps and statistics" if drawn else "the statistics"
        click.echo(f"note: with --no-npy, --dtype float16 only changes {changed}: they are "
                   "computed from the levels cast to float16", err=True)  # fmt: skip
    pairs = discover_inputs(inputs, from_list, exclude=None if url else out, skipped=passed_over,
                            unreadable=unreadable, repeated=repeated, hidden=hidden,
                            commented=commented)  # fmt: skip
    unreadable, repeated = _once(unreadable), _once(repeated)
    if commented:  # "#1.jpg" (ls > list.txt): a comment, as any # line
        click.echo(_commented_note(getattr(from_list, "name", "the list"), commented), err=True)
    files_inside = _inside(inputs, passed_over)
    if passed_over:
        click.echo(_skipped_note(passed_over, files_inside), err=True)
    for folder, reason in unreadable:  # failures of the run; with no image, of no run
        click.echo(f"note: cannot read the folder {quote_name(str(folder))} ({reason}): its "
                   f"images are left out{' (reported as failed)' if pairs else ''}",
                   err=True)  # fmt: skip
    hidden = _hidden_left_out(hidden, pairs)
    if hidden:
        click.echo(_hidden_note(hidden), err=True)
    for folder, read_as in repeated:  # symlinks: a cycle, or the same folder twice
        click.echo(f"note: not following {quote_name(str(folder))}: it leads to the folder "
                   f"{quote_name(str(read_as))}, which the run comes to under that name",
                   err=True)  # fmt: skip
    if not pairs:
        passed_out = {os.path.realpath(r) for r in passed_over}
        inside_out = [raw for raw, root in files_inside.items()
                      if os.path.realpath(root) == os.path.realpath(out)]  # fmt: skip
        if not url and inside_out:  # -o is the folder of the files named
            raise click.ClickException(
                f"{quote_name(inside_out[0])}"
                f"{f' and {len(inside_out) - 1} more' if len(inside_out) > 1 else ''} "
                f"{'lie' if len(inside_out) > 1 else 'lies'} in the output folder "
                f"{quote_name(str(out))}, and outputs are never read back as inputs: give "
                "another -o"
            )
        if not url and os.path.realpath(out) in passed_out:  # -o is the input folder, say
            raise click.ClickException(
                f"no images found in the given inputs outside the output folder "
                f"{quote_name(str(out))} (outputs are never read back as inputs: give another -o)"
            )
        if unreadable:  # the notes above name them
            raise click.ClickException(
                f"no images found in the given inputs; {len(unreadable)} folder(s) in them "
                "cannot be read: give read permission to them, or other inputs"
            )
        raise click.ClickException("no images found in the given inputs")
    # wds: job folders are relative to OUT (they become the sample keys)
    jobs = plan_jobs(pairs, Path("") if out_format == "wds" else out)
    made = not url and not out.exists()
    if not url:
        try:
            check_no_dangling_link(out)
        except ValueError as e:
            raise click.ClickException(str(e)) from None
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise click.ClickException(f"cannot create output folder {out}: {e.strerror}") from None
        if not os.access(out, os.W_OK):
            raise click.ClickException(f"output folder {out} is not writable")
        try:
            mark_output_root(out)
        except ValueError as e:
            raise click.ClickException(str(e)) from None
        if out_format == "files":  # folders of the run's inputs left by a renaming: said
            from ..run.leftovers import renamed_leftovers

            leftovers = renamed_leftovers(jobs)  # (the whole run's jobs, before --shard)
            if leftovers:
                click.echo(_leftover_note(leftovers), err=True)
    run_inputs = None  # the whole run's files, where this process takes a shard of them
    if shard_spec is not None:
        every = len(jobs)
        run_inputs = RunInputs(jobs)  # a folder holding another shard's file's outputs is redone
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
        npy=output.save_npy,
    )
    try:
        # workers load their own; one listed GPU (--gpus 1,) is this process's device
        here = "cpu" if len(devices) > 1 else devices[0] if devices else device
        model, dev = _load_model(weights, here, seed)
    except BaseException:  # e.g. offline: leave no empty output folder behind
        if made:
            _remove_if_unused(out)
        raise
    # from here on, until the run ends, a run of the other format is refused, and this one is
    # if such a run, which passed the check above as this one did, is writing -o now
    lock = _lock_format(out_dir, out_format)
    if engine == "ray" and actor_device != "cpu":
        dev = _torch_device("cuda")  # for the default batch size of GPU actors (CPU ones: 1)

    planned = []  # set once the run has read what is left to do: it then writes its log

    def state_volume(todo, replaced) -> None:  # once the weights are there and resume is read
        planned.append(True)
        if replaced.count:
            click.echo(_replaced_note(replaced, out_dir), err=True)
        note = _volume_note(todo, output, len(jobs), options.max_pixels)
        if note is not None:
            click.echo(note, err=True)

    if devices:
        dev = _torch_device(devices[0])
    threads = min(8, usable_cores())  # the default decoding and writing threads, each
    options = RunOptions(
        output=output,
        precision=precision,
        batch_size=batch_size or (8 if dev.type == "cuda" else 1),
        workers=workers or threads,
        writers=writers or threads,
        compile=compile_model,
        overwrite=overwrite or not resume,
        force=force,
        max_pixels=max_pixels or DEFAULT_MAX_PIXELS,
        root=None if url else out,
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
                default_batch=batch_size is None, quiet=not _verbose(),
            )  # fmt: skip
            summary = run_ray(jobs, out_dir, model, options, ray_options, progress=bar,
                              on_plan=state_volume, run_inputs=run_inputs)  # fmt: skip
        elif out_format == "wds":
            from ..run.wds import run_sharded

            summary = run_sharded(
                jobs, out_dir, model, options, shard_bytes=engine_options["shard_bytes"],
                progress=bar, crash_after=_crash_after(), on_plan=state_volume,
            )  # fmt: skip
        elif len(devices) > 1:
            from ..run.multi import run_on_devices

            summary = run_on_devices(jobs, model, options, devices, weights=weights, seed=seed,
                                     progress=bar, on_plan=state_volume,
                                     run_inputs=run_inputs)  # fmt: skip
        else:
            summary = run_jobs(jobs, model, options, progress=bar, on_plan=state_volume,
                               run_inputs=run_inputs)  # fmt: skip
    except KeyboardInterrupt as e:
        bar.close()
        last = _interrupted_progress(e, bar.last)
        _report_interrupt(last, len(jobs), dropped=getattr(e, "dropped_images", 0))
        if not url:
            _write_interrupted_log(e, last, len(jobs), out, weights, precision, shard_spec,
                                   started=bar.started)  # fmt: skip
        sys.exit(130)
    except BaseException as e:  # refused before any image (e.g. Ray's CPU actors and fp16): no
        bar.close()  # empty output folder left behind
        if engine == "ray" and isinstance(e, RuntimeError) and planned and not url:
            # the Ray job failed midway: its log says how far it got, as a local run's does
            _write_interrupted_log(e, bar.last, len(jobs), out, weights, precision,
                                   shard_spec, aborted=str(e), started=bar.started)  # fmt: skip
        elif getattr(e, "summary", None) is not None:  # a local run that an error ended midway
            # (a writer thread that cannot start): as after Ctrl-C, then the error's own line
            last = _interrupted_progress(e, bar.last)
            _report_interrupt(last, len(jobs), dropped=getattr(e, "dropped_images", 0),
                              stopped="stopped by an error")  # fmt: skip
            if not url:
                _write_interrupted_log(e, last, len(jobs), out, weights, precision, shard_spec)
        if made:
            _remove_if_unused(out, lock)
        raise
    bar.close()
    summary.failed += [
        (str(folder), f"cannot read this folder: {why}") for folder, why in unreadable
    ]
    summary.total += len(unreadable)  # failed, so counted: done + skipped + failed = total
    redraw = None  # what --scale's redraw rewrote, as the run log records it
    if not url:  # the run's log first: it is what the run did, whatever the redraw meets
        _write_run_log(summary, out, weights, precision, shard_spec)
        try:
            redrawn = _rescale(scale, jobs, summary, output, out_format, root=out)
        except KeyboardInterrupt:  # the images are done; the rerun skips them and redraws
            click.echo(f"interrupted during the --scale {scale} redraw; finish it with: "
                       f"{_resume_command()}", err=True)  # fmt: skip
            sys.exit(130)
        if redrawn is not None and redrawn.redrawn:  # the log, again with what it rewrote
            redraw = {"scale": scale, "images": redrawn.redrawn, "bytes": redrawn.bytes_written}
            _write_run_log(summary, out, weights, precision, shard_spec, redraw)
    _report(summary, out_dir, jobs, wds=out_format == "wds", redraw=redraw)
    if summary.failed or summary.aborted:
        sys.exit(1)
