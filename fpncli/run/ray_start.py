"""Starting Ray for ``--engine ray``, or joining a running cluster (``connect``), with Ray's own
chatter kept off the terminal unless asked for, a start that fails said in one line
(``RayStartError``), and an address nobody answers at refused in seconds (``check_address``,
``probe_address``), not after Ray's minutes of retries.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import Counter

from .runner import _reason

__all__ = [
    "PROBE_TIMEOUT_S",
    "RayStartError",
    "check_address",
    "connect",
    "exit_may_hang",
    "import_ray",
    "probe_address",
]

log = logging.getLogger(__name__)


class RayStartError(RuntimeError):
    """Ray could not be started or reached: nothing was planned or written. After a local start
    that failed this way the process may not exit by itself: the garbage collector's cleanup of
    Ray's GCS client waits in ``grpc_shutdown`` on threads that never started, and
    ``ray.shutdown`` does not release it (the CLI ends the process at once after its line:
    ``exit_may_hang``)."""


#: how long ``probe_address`` waits for a host that does not answer. Ray itself retries a
#: cluster it cannot reach 20 times, each try waiting up to 30 s (``py_gcs_connect_timeout_s``):
#: minutes for a mistyped address (14 for a refused port, measured with Ray 2.60).
PROBE_TIMEOUT_S = 10.0

#: the start of a line of Ray's C++ core: "[2026-11-28 03:25:01,135 W 27740 27740] "
_CORE_PREFIX = re.compile(r"^\[[^\]]*\] ")

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
                log.log(level, "Ray's start wrote:\n%s", _said_once(text))


@contextlib.contextmanager
def _sigterm_kept(ray):
    """SIGTERM does in the block and after it what the caller's handler made it do before
    (``fpncli extract``'s: stop as Ctrl-C does, with the summary, ``run.json`` and exit code
    130). Left to Ray, ``ray.init`` sets its own Python handler (``sys.exit(15)``: no summary),
    and its C++ core then installs a failure-signal handler over it that ends the process with a
    stack trace and SIGABRT (exit code 134). So Ray's setter of its handler does nothing in the
    block, and the caller's handler is set again after it, over the core's. A handler Python
    cannot put back (None: not set from Python) is left to Ray, as is any outside the main
    thread (only it may set one)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = signal.getsignal(signal.SIGTERM)
    if handler is None:
        yield
        return
    utils = getattr(getattr(ray, "_private", None), "utils", None)  # (Ray 2.60's; a Ray
    setter = getattr(utils, "set_sigterm_handler", None)  # without it sets its own in init)
    if setter is not None:
        utils.set_sigterm_handler = lambda sigterm_handler: None
    try:
        yield
    finally:
        if setter is not None:
            utils.set_sigterm_handler = setter
        signal.signal(signal.SIGTERM, handler)


def _said_once(text: str) -> str:
    """Ray's lines with each line of its C++ core said once (where it first came), with how
    many times it came when more than once, the same words at other times: a join that fails
    writes a few lines per retry, 20 retries. Other lines (a traceback) are kept as they are."""
    lines = [(line, _CORE_PREFIX.sub("", line)) for line in text.splitlines()]
    counts = Counter(words for line, words in lines if words != line)
    kept, said = [], set()
    for line, words in lines:
        if words == line:
            kept.append(line)
        elif words not in said:
            said.add(words)
            kept.append(line if counts[words] == 1 else f"{line} ({counts[words]} times)")
    return "\n".join(kept)


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
    if address:
        try:
            probe_address(address)
        except ValueError as e:  # nothing was started: the exit does not hang
            raise RayStartError(f"cannot reach Ray at {address}: {e}") from None
    start = time.monotonic()
    if quiet:
        chatter = {"logging_level": logging.ERROR, "log_to_driver": False}
        core = _core_logs_fatal_only()
    else:
        chatter, core = {"logging_level": logging.WARNING}, contextlib.nullcontext()
    try:
        with core, _sigterm_kept(ray):
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


def check_address(address: str) -> tuple[str, int] | None:
    """The host and port to probe for a Ray ``address``, or None for the ones Ray resolves
    itself: ``auto``, ``local`` and URLs other than ``ray://`` (``anyscale://``, say).

    ``HOST:PORT`` joins the head's GCS, ``ray://HOST:PORT`` its Ray Client server; an IPv6 host
    goes in brackets (``[::1]:6379``), as in a URL. Raises ValueError with a one-line reason for
    any other form (the caller names the address): Ray says little more than "invalid address",
    or (``HOST:``, a port out of range) tries to connect for minutes."""
    if address in ("auto", "local"):
        return None
    hostport = address
    if "://" in address:
        scheme, _, hostport = address.partition("://")
        if scheme != "ray":
            return None
        hostport = hostport.removesuffix("/")
    if hostport.startswith("["):
        host, bracket, port = hostport[1:].partition("]")
        if not bracket or not port.startswith(":"):
            raise ValueError("expected [IPv6]:PORT")
        port = port[1:]
    else:
        host, colon, port = hostport.rpartition(":")
        if ":" in host:
            raise ValueError("an IPv6 host goes in brackets, as in [::1]:6379")
        if not colon:
            raise ValueError(
                "expected HOST:PORT (the head's GCS port, 6379 by default), ray://HOST:PORT "
                "(Ray Client), auto or local"
            )
    if not host:
        raise ValueError("no host before the port")
    if not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError("the port must be a number from 1 to 65535")
    return host, int(port)


def probe_address(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Refuse a Ray ``address`` where no cluster can answer, in about ``timeout_s`` at most:
    ValueError with a one-line reason and what to check (the caller names the address) when it
    is malformed (``check_address``), its host is not known, or nothing accepts a TCP
    connection at its host and port. ``auto`` is probed at the address Ray picks for it (the
    last ``ray start`` on this machine, which may have ended without ``ray stop``); the other
    forms Ray resolves itself are left to ``ray.init``, and so is a port that accepts the
    connection but is not Ray's (Ray says so in about 30 s)."""
    if address != "auto":
        target = check_address(address)
        if target is not None:
            _connect(*target, timeout_s)
        return
    target = _auto_target()
    if target is None:
        return
    try:
        _connect(*target, timeout_s)
    except ValueError as e:
        host, port = target
        found = "RAY_ADDRESS" if os.environ.get("RAY_ADDRESS") else "the last ray start here"
        raise ValueError(f"Ray finds {host}:{port} for it ({found}): {e}") from None


def _connect(host: str, port: int, timeout_s: float) -> None:
    """Open and close a TCP connection to ``host``:``port``, or raise ValueError saying why
    not and what to check."""
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except socket.gaierror:
        raise ValueError(
            f"unknown host {host}: check its spelling, or give the head's IP address"
        ) from None
    except TimeoutError:
        raise ValueError(
            f"no answer within {timeout_s:g} s: check the address, that the head is up and that "
            f"no firewall blocks port {port}"
        ) from None
    except ConnectionRefusedError:
        raise ValueError(
            "connection refused: check that a Ray head runs there (ray start --head) and the "
            "port (its GCS port, 6379 by default; with ray://, Ray Client's, 10001)"
        ) from None
    except OSError as e:  # e.g. no route to the host
        raise ValueError(f"{e.strerror or e}: check the address and the network") from None


def _auto_target() -> tuple[str, int] | None:
    """The host and port Ray joins for ``auto`` (``RAY_ADDRESS``, else the last ``ray start``
    on this machine, else a GCS running here), or None where Ray says at once itself why it
    cannot (no cluster found), or where its resolver (a private one) has changed."""
    try:
        import ray._private.services

        found = ray._private.services.canonicalize_bootstrap_address("auto")
        return None if found is None else check_address(found)
    except Exception as e:  # ConnectionError: no cluster here
        log.debug("Ray's address for auto: %s", _reason(e))
        return None
