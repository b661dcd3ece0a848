"""Helpers shared by the commands: one-line errors, option parsing, progress, model loading."""

from __future__ import annotations

import functools
import logging
import os
import select
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

import click

LEVEL_NAMES = ("p2", "p3", "p4", "p5", "p6")
#: = fpncli.model.fpn.OUTPUTS (no torch import): the bottom-up stages, then the pyramid.
OUTPUT_NAMES = ("stem", "res2", "res3", "res4", "res5", *LEVEL_NAMES)
DEFAULT_WEIGHTS = (
    "faster_rcnn_R_50_FPN_3x"  # = fpncli.weights.registry.DEFAULT_WEIGHTS (no torch import)
)


def _set_verbosity(ctx, param, value: int) -> None:
    """``-v`` counts wherever it is given (``fpncli -v extract`` or ``fpncli extract -v``)."""
    verbose = ctx.meta.get("fpncli.verbose", 0) + (value or 0)
    ctx.meta["fpncli.verbose"] = verbose
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)


def verbose_option(command):
    """The ``-v/--verbose`` option, for the group and every command."""
    return click.option(
        "-v",
        "--verbose",
        count=True,
        expose_value=False,
        callback=_set_verbosity,
        help="More logging (-vv: debug); tracebacks on errors.",
    )(command)


def _verbose() -> int:
    ctx = click.get_current_context(silent=True)
    return ctx.meta.get("fpncli.verbose", 0) if ctx is not None else 0


def _friendly(command):
    """Turn library errors into one clear line and exit code 1 (traceback with -v), also memory
    running out and a dependency that fails to load; an ``OptionError`` (an option's value the
    data rules out) into a usage error, exit 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except click.exceptions.Exit:
            raise
        except click.ClickException:
            raise
        except KeyboardInterrupt:
            exit_interrupted()
        except BrokenPipeError as e:
            if not _stdout_closed():
                _fail(e)
            _quiet_exit()
        except (ValueError, OSError, RuntimeError, LookupError) as e:
            _fail(e, _out_of_open_files(e))
        except MemoryError as e:  # (numpy's "Unable to allocate ..." is one)
            _fail(e, _out_of_memory(e))
        except ImportError as e:  # a lazily imported dependency (cv2, torch) that fails to load
            _fail(e, _import_failed(e))

    return wrapper


#: What an ImportError of a shared library says when its mapping is refused: an address-space
#: limit (``ulimit -v``) or no memory left, not a broken install.
_NO_MEMORY_TO_LOAD = ("failed to map segment", "cannot allocate memory")


def _own_options(*names: str) -> list[str]:
    """Those of ``names`` that the running command has (``--batch-size`` is extract's)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return []
    has = {opt for p in ctx.command.params for opt in p.opts}
    return [name for name in names if name in has]


def _memory_hint(ask_less: bool = True) -> str:
    """What to do when memory runs out: raise the limit, or (``ask_less``) ask less of this
    command (its own options among the sizes and the batch size)."""
    limit = "raise the memory limit (ulimit -v, or the job's memory request)"
    options = _own_options("--max-size", "--batch-size") if ask_less else []
    return limit + (f", or lower {'/'.join(options)}" if options else "")


def _out_of_open_files(e: BaseException) -> str | None:
    """An error of too many open files (``ulimit -n`` reached) with what to do; else None."""
    from ..io.guard import is_out_of_open_files
    from ..io.messages import error_text

    if not is_out_of_open_files(e):
        return None
    options = _own_options("--workers", "--writers")
    fewer = f", or give fewer {'/'.join(options)}" if options else ""
    return f"{error_text(e)}: raise the limit on open files (ulimit -n 4096, say){fewer}"


def _out_of_memory(e: MemoryError) -> str:
    """A MemoryError (or numpy's ``_ArrayMemoryError``) as one line: what ran out, what to do."""
    from ..io.messages import one_line

    what = one_line(str(e))
    return f"out of memory{f' ({what})' if what else ''}: {_memory_hint()}"


def _import_failed(e: ImportError) -> str:
    """An ImportError as one line naming the module: a shared library that could not be mapped
    is memory running out; anything else, a broken install."""
    from ..io.messages import error_text

    reason = error_text(e)
    name = f"the module {e.name}" if e.name else "a module"
    if any(text in reason.lower() for text in _NO_MEMORY_TO_LOAD):
        return f"out of memory loading {name} ({reason}): {_memory_hint(ask_less=False)}"
    return f"could not import {name} ({reason}): reinstall it, or fpncli's dependencies"


def exit_interrupted():
    """End the command after Ctrl-C (or SIGTERM or SIGHUP, turned into it): ``interrupted`` and
    exit code 130, wherever it came (in a command, or while click parsed its options)."""
    click.echo("interrupted", err=True)
    sys.exit(130)


def _fail(e: Exception, text: str | None = None):
    """``e`` as one line (``text``, else its message) and exit code 1 (its traceback first with
    -v), or as a usage error, exit code 2, for an ``OptionError``; called in the ``except``
    block that caught it."""
    if _verbose():
        traceback.print_exc()
    from ..io.guard import OptionError
    from ..io.messages import error_text, one_line

    if isinstance(e, OptionError):  # as click's own "Invalid value for '--channel'"
        if e.option is None:
            raise click.UsageError(one_line(e.message)) from None
        hint = f"'{e.option}'"  # quoted, as click names an option whose value it refuses
        raise click.BadParameter(one_line(e.message), param_hint=hint) from None
    raise click.ClickException(text or error_text(e)) from None


def _stdout_closed() -> bool:
    """Whether what reads this process's output has gone (``fpncli weights list | head -1``
    once ``head`` has its line): a pipe whose reader closed it polls as an error."""
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poll.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), no file (a test's stdout)
        return False


def _quiet_exit():
    """End quietly, as a program killed by SIGPIPE does (exit code 141, as ``git log | head``
    gives under ``set -o pipefail``), rather than with "Error: [Errno 32] Broken pipe": the
    reader wanted no more. Standard output goes to /dev/null first, so that Python's final
    flush of what is left in its buffer finds no broken pipe either."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):
        pass
    sys.exit(141)


def _sigterm_as_ctrl_c(command):
    """SIGTERM (``kill``, a batch scheduler's stop or time limit) and SIGHUP (the terminal
    closed, an ssh connection dropped) end the command as Ctrl-C does: its worker processes are
    stopped, ``run.json`` records what was done, the resume command is printed and the exit
    code is 130. (By default either signal ends this process at once, leaving the previous
    run's log and any worker processes to end by themselves.) A SIGHUP ignored when the command
    starts (``nohup``) stays ignored: the run then goes on after the terminal closes."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            return command(*args, **kwargs)  # only the main thread may set a handler
        previous = {}
        try:
            previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, interrupt)
            hangup = getattr(signal, "SIGHUP", None)  # (Windows has none)
            if hangup is not None and signal.getsignal(hangup) is not signal.SIG_IGN:
                previous[hangup] = signal.signal(hangup, interrupt)
            return command(*args, **kwargs)
        finally:  # (None: a handler not set from Python, which Python cannot put back)
            for signum, handler in previous.items():
                signal.signal(signum, signal.SIG_DFL if handler is None else handler)

    return wrapper


def _parse_levels(value: str) -> tuple[str, ...]:
    """``"p3,res4,stem"`` -> ``("stem", "res4", "p3")``: bottom-up first, then the pyramid;
    ``all`` is p2..p6."""
    levels = tuple(v.strip().lower() for v in value.split(",") if v.strip())
    if "all" in levels:  # all = the pyramid; the bottom-up stages are named one by one
        levels = tuple(lv for lv in levels if lv != "all") + LEVEL_NAMES
    unknown = [lv for lv in levels if lv not in OUTPUT_NAMES]
    if unknown or not levels:
        raise click.BadParameter(
            f"unknown level(s) {', '.join(unknown) or '(none)'}; use p2..p6 (or all) or "
            "stem, res2..res5 (the bottom-up ResNet stages)"
        )
    return tuple(lv for lv in OUTPUT_NAMES if lv in levels)


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
    from ..viz.maps import parse_clip

    try:
        return parse_clip(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _levels_callback(ctx, param, value: str) -> tuple[str, ...]:
    return _parse_levels(value)


def _shard_callback(ctx, param, value: str | None) -> tuple[int, int] | None:
    return _parse_shard(value)


def _cmap_callback(ctx, param, value: str) -> str:
    import matplotlib  # no torch; checked here so a typo fails before any work

    if value not in matplotlib.colormaps:
        raise click.BadParameter(
            f"unknown colormap {value!r}; try viridis, magma, inferno, plasma, gray or jet"
        )
    return value


def _not_empty(what: str, empty: str = "an empty path"):
    """A callback refusing a path argument or option given empty (or blank), as an empty input
    is refused: an unset shell variable must not mean the current folder. ``what`` says what to
    name instead, ``empty`` what was given."""

    def callback(ctx, param, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise click.BadParameter(f"{empty} (an unset shell variable?): name {what}")
        return value

    return callback


#: ``-o``: an empty value must not make the current folder an output folder (outputs are never
#: read back as inputs, so its own images would be skipped from then on)
_out_not_empty = _not_empty("a folder, or . for this one", "an empty output folder")


def _out_folder(ctx, param, value: str | None) -> str | None:
    """``-o`` (extract's, diff's): not empty (``_out_not_empty``), and a ``~`` in it the home
    folder, as in every other path fpncli takes (a quoted ``-o '~/feats'`` made ``./~/feats``);
    a URL (``s3://...``) as it is."""
    value = _out_not_empty(ctx, param, value)
    if value is None or "://" in value:
        return value
    return os.path.expanduser(value)


class ListFile(click.File):
    """``click.File`` where a ``~`` in the name is the home folder (``--from-list '~/l.txt'``
    was looked for in a folder called ``~``), as in every other path fpncli takes."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value != "-":
            value = os.path.expanduser(value)
        return super().convert(value, param, ctx)


def _file_target(value: str) -> Path:
    """A file the user names for fpncli to write (``guard.file_target``: through a symlink,
    never over a device or FIFO), as a usage error when it cannot be."""
    from ..io.guard import file_target

    try:
        return file_target(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _env_shard() -> tuple[int, int, str] | None:
    """torchrun's ``RANK``/``WORLD_SIZE`` (or SLURM's) as ``(rank, world, names)``, checked
    before any work: the error names the variables."""
    from ..io.run_shard import shard_env

    try:
        return shard_env()
    except ValueError as e:
        raise click.UsageError(f"environment: {e} (or pass --shard I/N)") from None


def _check_weights(weights: str) -> None:
    """Refuse a ``--weights`` value that is neither random, a registry name nor a file (no
    torch import, no download)."""
    import os
    from pathlib import Path

    from ..io.guard import check_regular_file
    from ..weights.hub import _EMPTY_WEIGHTS
    from ..weights.registry import REGISTRY

    if not weights.strip():  # as -o '': Path("") is the current folder, "not a regular file"
        raise click.BadParameter(_EMPTY_WEIGHTS, param_hint="'--weights'")
    path = Path(weights).expanduser()
    if weights == "random" or weights in REGISTRY or path.is_file():
        return
    if os.path.lexists(path):  # a folder, FIFO, device (never opened) or dangling symlink
        try:
            check_regular_file(path, "weights file")
        except (OSError, ValueError) as e:
            raise click.BadParameter(str(e), param_hint="'--weights'") from None
    if Path(weights).suffix in (".pkl", ".pth", ".pt") or "/" in weights:
        raise click.BadParameter(f"weights file not found: {weights}", param_hint="'--weights'")
    raise click.BadParameter(
        f"unknown weights {weights!r}: not a file, nor one of {', '.join(REGISTRY)}, random "
        "(see 'fpncli weights list')",
        param_hint="'--weights'",
    )


def _duration(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


class RunProgress:
    """A run's progress on stderr: click's progress bar on a terminal; elsewhere (a log file, a
    pipe, a batch job) one plain line per tenth of the run, so logs stay short and readable.

    Called with ``fpncli.run.pipeline.Progress`` reports, from any thread; keeps the last one
    (``last``) so an interrupted run can say what was done, and when it was made (``started``,
    ``time.monotonic()``: the run's start), for a run interrupted before any report.
    """

    def __init__(self, *, stream=None, terminal: bool | None = None) -> None:
        self.started = time.monotonic()
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = self.stream.isatty() if terminal is None else terminal
        self.last = None
        self._bar = None
        self._shown = 0
        self._next_line = 0
        self._lock = threading.Lock()

    @staticmethod
    def _rate(p) -> str:
        if p is None:
            return ""
        rate = p.done / p.elapsed_s if p.elapsed_s > 0 else 0.0
        return f"{rate:.2f} img/s" + (f", {p.failed} failed" if p.failed else "")

    def __call__(self, p) -> None:
        with self._lock:
            self.last = p
            finished = p.done + p.failed
            if p.todo <= 1:
                return
            if self.terminal:
                if self._bar is None:
                    self._bar = click.progressbar(
                        length=p.todo, label="extracting", file=self.stream, show_pos=True,
                        show_eta=True, item_show_func=self._rate, width=28,
                    )  # fmt: skip
                    self._bar.is_hidden = False  # the stream is a terminal (checked above)
                self._bar.update(finished - self._shown, p)
                self._shown = finished
                return
            if finished >= self._next_line or finished == p.todo:
                step = max(1, p.todo // 10)
                self._next_line = (finished // step + 1) * step
                rate = p.done / p.elapsed_s if p.elapsed_s > 0 else 0.0
                eta = (p.todo - finished) / rate if rate > 0 else float("nan")
                line = f"{finished}/{p.todo} images, {self._rate(p)}, ETA {_duration(eta)}"
                click.echo(line, file=self.stream)

    def close(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.render_finish()
                self._bar = None


def _load_model(weights: str, device: str, seed: int):
    from ..api import load_backbone
    from ..run.device import select_device
    from .download_bar import DownloadBar

    dev = select_device(device)  # cuda/auto: the GPU of LOCAL_RANK or SLURM_LOCALID
    model = load_backbone(weights, device=dev, seed=seed, download_progress=DownloadBar)
    if model.weights_info.random:
        click.echo(
            f"note: --weights random: a seeded (seed {seed}), untrained network; its feature maps "
            "show the architecture, not what a trained detector sees",
            err=True,
        )
    return model, dev
