"""Starting Ray for ``--engine ray``, or joining a running cluster (``connect``), with Ray's own
chatter kept off the terminal unless asked for, and a start that fails said in one line
(``RayStartError``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time

from .runner import _reason

__all__ = ["RayStartError", "exit_may_hang", "import_ray", "connect"]

log = logging.getLogger(__name__)


class RayStartError(RuntimeError):
    """Ray could not be started or reached: nothing was planned or written. After a local start
    that failed this way the process may not exit by itself: the garbage collector's cleanup of
    Ray's GCS client waits in ``grpc_shutdown`` on threads that never started, and
    ``ray.shutdown`` does not release it (the CLI ends the process at once after its line:
    ``exit_may_hang``)."""


#: the Ray starts that failed in this process (``RayStartError``)
_failed_starts: list[str] = []


def exit_may_hang() -> bool:
    """Whether this process's normal exit may hang: a Ray start failed in it."""
    return bool(_failed_starts)


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise RuntimeError("--engine ray needs Ray: pip install 'fpncli[ray]'") from None
    return ray


@contextlib.contextmanager
def _core_logs_fatal_only():
    """The C++ core of the Ray processes started in the block logs fatal errors only (the
    driver's core otherwise prints Ray Data's routine ERROR notices on the terminal).

    The core reads RAY_BACKEND_LOG_LEVEL as it starts, so the variable is set for the block
    only, and never over the user's own. As it reads the variable the driver's core announces
    it on stderr: what the block writes there goes to the DEBUG log instead (the WARNING one
    when the block raises: Ray's own account of why it did not start). Nothing changes
    when the user asked for Ray's logs on stderr (RAY_LOG_TO_STDERR=1: the processes started
    here would write them to the captured stderr)."""
    if "RAY_BACKEND_LOG_LEVEL" in os.environ or os.environ.get("RAY_LOG_TO_STDERR") == "1":
        yield
        return
    sys.stderr.flush()
    with tempfile.TemporaryFile() as captured:
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        os.environ["RAY_BACKEND_LOG_LEVEL"] = "fatal"
        level = logging.DEBUG
        try:
            yield
        except BaseException:  # what Ray wrote as it failed to start is often the real cause
            level = logging.WARNING
            raise
        finally:
            os.environ.pop("RAY_BACKEND_LOG_LEVEL", None)
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode(errors="replace").strip()
            if text:
                log.log(level, "Ray's start wrote:\n%s", text)


def connect(ray, address: str | None, quiet: bool = False) -> bool:
    """Join the cluster at ``address`` (or the running one); else start a local Ray.
    Returns True when this call started Ray (and so must shut it down). Sets the ``ray``
    logger's level (``ray.init``'s ``logging_level``): the caller gives it back.

    ``quiet`` (the CLI, unless -v) keeps Ray's own chatter off the terminal: the
    driver's ``ray`` logger shows errors only (not the token-authentication notice), the
    workers' output is not streamed to the driver (an actor's failures and fpncli's warnings
    still come back with its rows, or as the job's error), and the C++ core logs fatal errors
    only (in the processes of a local Ray started here, and in the driver: a joined cluster's
    processes are left as they are). A Ray the caller already runs is used as it is."""
    if ray.is_initialized():
        return False
    start = time.monotonic()
    if quiet:
        chatter = {"logging_level": logging.ERROR, "log_to_driver": False}
        core = _core_logs_fatal_only()
    else:
        chatter, core = {"logging_level": logging.WARNING}, contextlib.nullcontext()
    try:
        with core:
            if address:
                ray.init(address=address, **chatter)
            else:
                ray.init(include_dashboard=False, **chatter)
    except Exception as e:  # a local node that times out starting raises a bare Exception
        _shutdown_after_failed_start(ray)
        where = address or "local"
        _failed_starts.append(where)
        raise RayStartError(f"cannot start or reach Ray ({where}): {_reason(e)}") from None
    log.info("Ray started in %.1f s", time.monotonic() - start)
    return True


def _shutdown_after_failed_start(ray) -> None:
    """Stop what a failed ``ray.init`` had started (a GCS, a raylet, their threads): left
    running, the process hung at exit after saying why Ray did not start. Best effort: its own
    error is logged, and the start's error is the one said."""
    try:
        ray.shutdown()
    except Exception as e:
        log.debug("ray.shutdown after a failed start: %s", _reason(e))
