"""Helpers shared by the commands: one-line errors, option parsing, progress, model loading."""

from __future__ import annotations

import functools
import sys
import time
import traceback

import click

LEVEL_NAMES = ("p2", "p3", "p4", "p5", "p6")
DEFAULT_WEIGHTS = (
    "faster_rcnn_R_50_FPN_3x"  # = fpncli.weights.registry.DEFAULT_WEIGHTS (no torch import)
)


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


CLIP_HELP = (
    "Colour range as LO,HI percentiles of each map's values (minmax: the full range); values "
    "beyond it take the end colours. Default 1,99: min-max lets a few extreme cells flatten "
    "the rest."
)


def _clip_callback(ctx, param, value: str | None):
    from ..viz.visualize import parse_clip

    try:
        return parse_clip(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


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
    from ..api import load_backbone
    from ..run.device import select_device

    dev = select_device(device)  # cuda/auto: the GPU of LOCAL_RANK or SLURM_LOCALID
    model = load_backbone(weights, device=dev, seed=seed)
    if model.weights_info.random:
        click.echo(
            f"note: --weights random: a seeded (seed {seed}), untrained network; its feature maps "
            "show the architecture, not what a trained detector sees",
            err=True,
        )
    return model, dev
