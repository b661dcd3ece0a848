"""The ``fpncli`` command line: thin click wrappers around the library, one module per command.

Heavy imports (torch, the model) happen inside the commands so ``fpncli --help`` is instant.
Library errors become one line on stderr and a non-zero exit; ``-v`` adds the traceback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

import click

from .. import __version__
from .bench import bench
from .common import exit_interrupted, verbose_option
from .diff import diff
from .extract import extract
from .report import report
from .show import show
from .weights import weights


class _UsageLine(click.ClickException):
    """A usage error as one line: ``Error: <what> (see 'fpncli extract --help')``, exit 2."""

    exit_code = 2


@contextlib.contextmanager
def _usage_in_one_line():
    """A usage error raised inside becomes one line, with where to read the help."""
    try:
        yield
    except click.exceptions.NoArgsIsHelpError:  # `fpncli` alone: the help itself
        raise
    except click.UsageError as e:
        message = " ".join(e.format_message().split())
        if e.ctx is not None and "(see '" not in message:  # one pointer: the message's own
            message += f" (see '{e.ctx.command_path} --help')"
        raise _UsageLine(message) from None


@contextlib.contextmanager
def _ctrl_c_exits_130():
    """Ctrl-C inside ends the command as it does inside a command (``common._friendly``):
    ``interrupted`` and exit code 130. Click's main would print "Aborted!" and exit 1, and an
    interrupt comes there while the options are parsed (``--cmap`` loads matplotlib) or the
    command is looked up, before the command runs."""
    try:
        yield
    except KeyboardInterrupt:
        exit_interrupted()


class _Group(click.Group):
    """The command group, with usage errors (a bad option or value, an unknown command) as one
    line instead of click's usage block, and Ctrl-C as ``interrupted``, exit code 130, wherever
    it comes; ``fpncli`` alone still prints the help."""

    def make_context(self, info_name, args, parent=None, **extra):
        with _ctrl_c_exits_130(), _usage_in_one_line():
            return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx):
        with _ctrl_c_exits_130(), _usage_in_one_line():
            return super().invoke(ctx)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@verbose_option
@click.version_option(__version__, prog_name="fpncli")
def cli() -> None:
    """Extract and visualize Detectron2's ResNet-FPN feature maps (P2-P6)."""


cli.add_command(extract)
cli.add_command(show)
cli.add_command(weights)
cli.add_command(bench)
cli.add_command(diff)
cli.add_command(report)


def main() -> None:
    """Console entry point (``fpncli`` and ``python -m fpncli``)."""
    # OpenMP threads that sleep when idle instead of spinning: the decode and writer threads then
    # get the cores while the model waits (must be set before torch loads its OpenMP runtime).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        with _ctrl_c_exits_130():  # (and in the moments click's main spends outside the group)
            cli(prog_name="fpncli")
    except SystemExit as e:
        _end_now_if_exit_hangs(e.code)
        raise


def _end_now_if_exit_hangs(code) -> None:
    """End the process at once (``os._exit``, exit code ``code``) where its normal exit would
    hang: after a Ray start that failed (``ray_start.exit_may_hang``), the interpreter's
    cleanup waits forever on Ray's client. The error's line has been said, and nothing was
    planned or written, so only the streams and log handlers are flushed first. Only the
    console entry point does this: ``cli`` called in a process (tests, a script) returns."""
    start = sys.modules.get("fpncli.run.ray_start")  # (never imported: no Ray was started)
    if start is None or not start.exit_may_hang():
        return
    if code is not None and not isinstance(code, int):  # as the interpreter says it, exit 1
        with contextlib.suppress(Exception):
            print(code, file=sys.stderr)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)  # as SystemExit does
