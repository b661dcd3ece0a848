"""``fpncli bench``'s option values: each comma list or size parsed and checked as it is read
(click callbacks), the ``--json`` file tried before any row is measured, and which options only
the end-to-end or only the model rows read (refused when those rows are skipped). The command
itself lives in ``bench``."""

from __future__ import annotations

from pathlib import Path

import click

from .common import _file_target

PRECISIONS = ("fp32", "fp16", "bf16")
OUTPUT_PRESETS = ("npy", "npy16", "heatmaps", "all")  # = run.bench.OUTPUT_PRESETS (no torch)
#: the options only the end-to-end rows read, and those only the model rows read
END_TO_END_OPTIONS = ("images", "outputs", "source_size", "workers", "writers", "processes")
MODEL_OPTIONS = ("iters", "warmup")


def _given(names: tuple[str, ...]) -> list[str]:
    """The options among ``names`` (parameter names) given on the command line, as written."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    return [f"--{name.replace('_', '-')}" for name in names
            if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE]  # fmt: skip


def _refuse_unread(given: list[str], rows: str, skipped_by: str) -> None:
    """A usage error for options given for rows that ``skipped_by`` leaves out (else ignored)."""
    if given:
        one = len(given) == 1
        raise click.UsageError(
            f"{', '.join(given)} {'is' if one else 'are'} for the {rows} rows, which "
            f"{skipped_by} skips: drop {'it' if one else 'them'} or {skipped_by}"
        )


def _items(value: str) -> list[str]:
    return [v.strip().lower() for v in value.split(",") if v.strip()]


def _positive_ints(ctx, param, value: str) -> list[int]:
    try:
        numbers = [int(v) for v in _items(value)]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not numbers or min(numbers) < 1:
        raise click.BadParameter(f"expected whole numbers of at least 1, got {value!r}")
    return numbers


def _sizes(ctx, param, value: str) -> list[tuple[int, int]]:
    try:
        sizes = [tuple(int(n) for n in v.split("x")) for v in _items(value)]
    except ValueError:
        sizes = []
    if not sizes or any(len(s) != 2 or min(s) < 32 for s in sizes):
        raise click.BadParameter(f"expected sizes like 800x1216 (each side >= 32), got {value!r}")
    from ..io.pillow_open import DEFAULT_MAX_PIXELS

    # a JPEG side is at most 65535; past --max-pixels' default an image would be refused anyway
    # (and 100000x100000 was built in memory until the OS killed the process)
    too_big = [s for s in sizes if max(s) > 65_500 or s[0] * s[1] > DEFAULT_MAX_PIXELS]
    if too_big:
        h, w = too_big[0]
        raise click.BadParameter(
            f"{h}x{w} is over {DEFAULT_MAX_PIXELS / 1e6:.0f} MP or a 65500-pixel side: too large"
        )
    return sizes


def _seconds(ctx, param, value: float) -> float:
    if not 0 <= value <= 3600:  # also refuses nan and inf, which would never end a row
        raise click.BadParameter(f"{value} is not a number of seconds from 0 to 3600")
    return value


def _choices(allowed: tuple[str, ...]):
    def callback(ctx, param, value: str) -> list[str]:
        chosen = _items(value)
        unknown = [v for v in chosen if v not in allowed]
        if unknown or not chosen:
            raise click.BadParameter(
                f"unknown {', '.join(unknown) or '(none)'}: use {', '.join(allowed)} (comma list)"
            )
        return list(dict.fromkeys(chosen))

    return callback


def _json_path(ctx, param, value: str | None) -> str | None:
    """``--json FILE``: a new name or an earlier bench's JSON (``_bench_json``), through a
    symlink to its target, not one of fpncli's outputs, and not named as a picture or a
    ``.npy`` (a later extract would read it as input). Any other file, a photo, a ``.npy``,
    was replaced by the rows."""
    if value is None or value == "-":
        return value
    from ..io.pillow_open import pillow_extensions

    target = _file_target(value)  # (an output of fpncli's, a folder, a FIFO: said first)
    suffix = Path(value).suffix.lower()
    if suffix in pillow_extensions() or suffix == ".npy":
        raise click.BadParameter(f"{value}: the rows are JSON; name it .json")
    if target.exists() and not _bench_json(target):
        raise click.BadParameter(
            f"{value} is a file fpncli bench did not write: writing there would replace it; "
            "give another name (or remove it first)"
        )
    if not target.parent.is_dir():
        raise click.BadParameter(
            f"folder {target.parent} does not exist: create it or pick another path"
        )
    # the file is written (as FILE.partial, then renamed) after every row: find out now that
    # it can be, not after the first row was measured
    partial = Path(f"{target}.partial")
    existed = partial.exists()  # left by an interrupted run: the next save rewrites it anyway
    try:
        with open(partial, "a"):
            pass
        if not existed:
            partial.unlink()
    except OSError as e:
        raise click.BadParameter(
            f"cannot write {value}: {e.strerror or e}: pick a writable folder"
        ) from None
    return str(target)


def _bench_json(path: Path) -> bool:
    """Whether ``path`` holds a JSON file bench wrote (an object with its ``rows``)."""
    from ..io.guard import read_json_file

    try:
        data = read_json_file(path, 64 << 20)
    except (OSError, ValueError):  # not JSON, not readable
        return False
    return isinstance(data, dict) and isinstance(data.get("rows"), list)


def _source_size(ctx, param, value: str | None) -> tuple[int, int] | None:
    if not value:
        return None
    sizes = _sizes(ctx, param, value)
    if len(sizes) > 1:  # the end-to-end rows' JPEGs are one size; a list is per --sizes
        raise click.BadParameter(
            f"one size HxW, got {len(sizes)} ({value}): run bench once per source size"
        )
    return sizes[0]
