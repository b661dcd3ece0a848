"""``fpncli extract``: images, folders and globs -> per-image folders of P2-P6.

The command itself: its options checked in order, the inputs found and ``-o`` made ready
(``extract_plan``), the weights loaded, the run on its engine, then its log and report. Its
arguments and options are declared in ``extract_options``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from .common import (
    RunProgress,
    _check_weights,
    _env_shard,
    _friendly,
    _load_model,
    _sigterm_as_ctrl_c,
    _verbose,
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
    _probe_ray_address,
    _torch_device,
    _worker_devices,
)
from .extract_options import ExtractCommand, extract_options
from .extract_plan import find_inputs, prepare_output
from .extract_report import (
    _interrupted_progress,
    _remove_if_unused,
    _replaced_note,
    _report,
    _report_interrupt,
    _rescale,
    _resume_command,
    _volume_note,
    _write_interrupted_log,
    _write_run_log,
)


@click.command(cls=ExtractCommand)
@extract_options
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
    from ..io.outputs import OutputOptions, check_channel
    from ..io.pillow_open import DEFAULT_MAX_PIXELS
    from ..run.multi import usable_cores
    from ..run.pipeline import RunInputs, RunOptions, plan_jobs, run_jobs, select_shard

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
    if engine == "ray":  # after every other check: a host that does not answer takes seconds
        _probe_ray_address(engine_options)
    if out_format == "wds":  # someone else's shards: refused before -o is marked or weights load
        from ..io.shard_root import check_root
        from ..io.shards import open_root

        check_root(*open_root(out_dir))
    _check_one_format(out_dir, out_format)  # before -o is marked: nothing is written
    url = "://" in out_dir  # an object store (or file://): --format wds, written through fsspec
    out = Path(out_dir)
    _check_inputs_not_levels(inputs, levels)
    if dtype == "float16" and no_npy:  # the dtype of files not written: likely meant nothing
        drawn = not (no_heatmaps and no_overview and not overlay)  # else statistics only
        changed = "the maps and statistics" if drawn else "the statistics"
        click.echo(f"note: with --no-npy, --dtype float16 only changes {changed}: they are "
                   "computed from the levels cast to float16", err=True)  # fmt: skip
    pairs, unreadable = find_inputs(inputs, from_list, out, url)
    # wds: job folders are relative to OUT (they become the sample keys)
    # a listed file that is not there (a typo) renames no other image's folder
    jobs = plan_jobs(pairs, Path("") if out_format == "wds" else out, exists=os.path.isfile)
    made = prepare_output(out, url, out_format, jobs)
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
