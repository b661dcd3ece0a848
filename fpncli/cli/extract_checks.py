"""``fpncli extract``'s options checked and resolved before any work: devices and worker
processes, engines and formats, canvas, scale, what must be installed. Each problem is a one-line
usage error, raised before a folder is made or weights are loaded."""

from __future__ import annotations

import os
from pathlib import Path

import click


def _auto_or_count(value: str, param_hint: str | None = None) -> int | None:
    """``auto`` (None) or a count of at least 1; anything else is a one-line usage error."""
    if value == "auto":
        return None
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise click.BadParameter(
            f"expected auto or a number of at least 1, got {value!r}", param_hint=param_hint
        )
    return count


def _check_inputs_not_levels(inputs, levels: tuple[str, ...]) -> None:
    """Refuse an input that does not exist and reads as level names (``--levels p2 p3`` makes
    ``p3`` an input), saying that ``--levels`` takes one comma-separated list."""
    from ..model.names import OUTPUTS

    names = {*OUTPUTS, "all"}
    for raw in inputs:
        parts = [n.strip().lower() for n in raw.split(",")]
        if not raw.strip() or os.path.lexists(os.path.expanduser(raw)) or not set(parts) <= names:
            continue
        given = click.get_current_context().get_parameter_source("levels")
        wanted = [*(levels if given == click.core.ParameterSource.COMMANDLINE else ()), *parts]
        raise click.ClickException(
            f"no such file or folder: {raw} (a level? --levels takes one comma-separated list, "
            f"e.g. --levels {','.join(dict.fromkeys(n for n in wanted if n))})"
        )


def _processes_callback(ctx, param, value: str) -> int | None:
    """``--processes``: auto (None) or a count of at least 1."""
    return _auto_or_count(value)


def _checked_device(device: str, precision: str):
    """The torch device, with the precision checked for it (fp16/bf16 on a CPU). A GPU is named
    with its index (``cuda:N``: ``LOCAL_RANK``'s, as ``_load_model`` picks it): worker processes
    get this device, and ``torch.cuda.set_device`` refuses a bare ``cuda``."""
    from ..api import check_precision, resolve_device
    from ..run.device import local_rank_from_env, select_device

    try:  # a launcher's garbage (LOCAL_RANK=abc) is refused whichever device, before loading
        local_rank_from_env()
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    try:
        dev = resolve_device(device)
        if dev.type == "cuda":
            dev = select_device(device)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--device'") from None
    try:
        check_precision(precision, dev)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--precision'") from None
    return dev


def _check_engine_options(out_dir, out_format, shard_size, engine, ray_address, gpu_workers,
                          gpus_per_worker, gpus) -> dict:  # fmt: skip
    """Validate --format/--engine and the Ray options before anything is loaded."""
    from ..io.shards import parse_size

    try:
        shard_bytes = parse_size(shard_size)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--shard-size'") from None
    if "://" in out_dir and out_format != "wds":
        raise click.UsageError(f"{out_dir} is an object-store URL: it needs --format wds")
    given = click.get_current_context().get_parameter_source("shard_size")
    if out_format != "wds" and given not in (None, click.core.ParameterSource.DEFAULT):
        raise click.UsageError(
            "--shard-size is an option of --format wds (files: a folder per image)"
        )
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
    if out_dir.startswith("memory://"):  # (refused by run_ray too, but after Ray started)
        raise click.UsageError("memory:// lives in one process: use it with --engine local only")
    workers = None if gpu_workers is None else _auto_or_count(gpu_workers, "'--gpu-workers'")
    fraction = 1.0 if gpus_per_worker is None else gpus_per_worker
    if not (fraction > 0 and (fraction <= 1 or float(fraction).is_integer())):  # 0, -1: no
        raise click.BadParameter(
            f"expected a fraction in (0, 1] or a whole number, got {fraction}",
            param_hint="'--gpus-per-worker'",
        )
    address, source = ray_address, "--ray-address"
    if not address:  # (an empty RAY_ADDRESS is unset, as Ray reads it)
        address, source = os.environ.get("RAY_ADDRESS") or None, "RAY_ADDRESS"
    if address:
        _check_ray_address(address, source)
    return {
        "shard_bytes": shard_bytes, "address": address, "address_source": source,
        "gpu_workers": workers, "gpus_per_worker": fraction,
    }  # fmt: skip


def _check_ray_address(address: str, source: str) -> None:
    """The form of ``--ray-address`` (or of ``RAY_ADDRESS``, ``source``): a usage error."""
    from ..run.ray_start import check_address

    try:
        check_address(address)
    except ValueError as e:
        if source == "RAY_ADDRESS":
            raise click.UsageError(f"RAY_ADDRESS={address}: {e}") from None
        raise click.BadParameter(f"{e}, got {address!r}", param_hint="'--ray-address'") from None


def _probe_ray_address(engine_options: dict) -> None:
    """Refuse a Ray address where no cluster answers (``run.ray_start.probe_address``) in
    seconds, once Ray is known to be installed; Ray's own retries take minutes."""
    from ..run.ray_start import probe_address

    address = engine_options["address"]
    if not address:
        return
    try:
        probe_address(address)
    except ValueError as e:
        raise click.ClickException(
            f"cannot reach Ray at {address} ({engine_options['address_source']}): {e}"
        ) from None


def _checked_canvas(canvas: str | None, min_size: int, max_size: int, resize: bool,
                    max_pixels: int) -> str | None:  # fmt: skip
    """``--canvas`` in its canonical form, checked against the other options."""
    from ..io.canvas import check_canvas, parse_canvas

    try:
        canvas = parse_canvas(canvas)
        check_canvas(canvas, min_size=min_size, max_size=max_size, resize=resize,
                     max_pixels=max_pixels)  # fmt: skip
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--canvas'") from None
    return canvas


def _check_options_used(weights: str, reduce: str, resize: bool) -> None:
    """Refuse an option given on the command line that would change nothing (taken silently,
    it reads as if it did): ``--channel`` without ``--reduce channel``, ``--min-size`` or
    ``--max-size`` with ``--no-resize``, ``--seed`` without ``--weights random``. Their
    defaults, not given, are not refused."""
    ctx = click.get_current_context()
    unused = [
        ("channel", reduce != "channel", "--channel is an option of --reduce channel (--reduce "
         f"{reduce} draws from every channel)"),
        ("min_size", not resize,
         "--min-size is an option of the resize (--no-resize keeps each image's size)"),
        ("max_size", not resize,
         "--max-size is an option of the resize (--no-resize keeps each image's size)"),
        ("seed", weights != "random",
         "--seed is an option of --weights random (other weights are not drawn at random)"),
    ]  # fmt: skip
    for name, ignored, message in unused:
        if ignored and ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE:
            raise click.UsageError(message)


def _check_scale(scale: str, output, out_format: str) -> None:
    from ..run.rescale import check_scale

    if scale != "image" and out_format == "wds":
        raise click.BadParameter(
            f"--scale {scale} redraws picture files: not with --format wds (use --scale image)",
            param_hint="'--scale'",
        )
    try:
        check_scale(scale, output)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--scale'") from None


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


def _local_root(out_dir: str) -> Path | None:
    """-o as a local folder (a ``file://`` URL's path), or None for an object store."""
    from ..io.formats import local_root

    return local_root(out_dir)


def _check_one_format(out_dir: str, out_format: str) -> None:
    """Refuse -o when it holds the other format's outputs (``io.formats.check_one_format``):
    image folders beside shards, or shards beside image folders. A local folder, or a
    ``file://`` URL for ``--format wds``; an object store holds no image folders."""
    from ..io.formats import check_one_format

    root = _local_root(out_dir)
    if root is None:
        return
    try:
        check_one_format(root, out_format)
    except ValueError as e:
        raise click.ClickException(str(e)) from None


def _lock_format(out_dir: str, out_format: str):
    """Hold -o's ``io.formats.FormatLock`` for ``out_format`` until the command ends (its click
    context closes: done, failed or interrupted), so that a run of the other format is refused
    while this one writes, though it has written nothing yet; entering it checks -o again
    (``_check_one_format``). The lock, or None for an object store (nothing to lock)."""
    from ..io.formats import FormatLock

    root = _local_root(out_dir)
    if root is None:
        return None
    try:
        return click.get_current_context().with_resource(FormatLock(root, out_format))
    except ValueError as e:
        raise click.ClickException(str(e)) from None


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
            f"expected all, a number or a list of GPU indices such as 0,0,1, got {gpus!r}",
            param_hint="'--gpus'",
        ) from None
    if "," not in gpus:
        if not 1 <= numbers[0] <= available:
            raise click.BadParameter(
                f"{numbers[0]} GPUs asked for, {available} available", param_hint="'--gpus'"
            )
        return [f"cuda:{i}" for i in range(numbers[0])]
    wrong = sorted({i for i in numbers if not 0 <= i < available})
    if wrong:
        raise click.BadParameter(
            f"no GPU {', '.join(map(str, wrong))} here: {available} available (0..{available - 1})",
            param_hint="'--gpus'",
        )
    return [f"cuda:{i}" for i in numbers]


def _worker_devices(devices: list[str], processes: int | None, dev, images: int, auto: bool,
                    env=None, *, npy: bool = False) -> list[str]:  # fmt: skip
    """The devices of the worker processes, one entry each (none: this process runs it; one:
    this process runs it on that device).

    ``--processes N`` repeats each ``--gpus`` entry (or the run's device) N times. ``auto``
    keeps ``--gpus`` as given; without it, and where ``auto`` allows (the local engine writing
    folders), a CUDA run of many images that writes no ``.npy`` (``npy``) gets
    ``run.multi.auto_processes`` workers on its GPU (with a note saying so), but not under a
    launcher (torchrun, SLURM, ``--shard``), which made its processes itself."""
    from ..run.multi import auto_processes

    if processes is not None:
        listed = devices or ([str(dev)] if processes > 1 else [])
        return [d for d in listed for _ in range(processes)]
    if devices or not auto:
        return devices
    environ = os.environ if env is None else env
    launched = any(name in environ for name in ("LOCAL_RANK", "SLURM_LOCALID", "RANK"))
    count = 1 if launched else auto_processes(dev, images, npy=npy)
    if count < 2:
        return []
    click.echo(f"note: {count} worker processes share {dev} (--processes 1 runs one)", err=True)
    return [str(dev)] * count


def _torch_device(name: str):
    import torch

    return torch.device(name)


def _crash_after() -> int | None:
    """Crash tests only: ``FPNCLI_TEST_CRASH_AFTER=K`` stops a sharded run hard after K images."""
    value = os.environ.get("FPNCLI_TEST_CRASH_AFTER")
    return int(value) if value else None
