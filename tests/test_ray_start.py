"""Joining a Ray cluster (``run.ray_start``): an address nobody answers at, or one Ray cannot
read, is refused in seconds with one line naming it; Ray's own retries took minutes (14 for a
refused port, with Ray 2.60). No test here starts Ray, and none waits on the network."""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import time

import pytest
from click.testing import CliRunner
from PIL import Image

from fpncli.cli import cli
from fpncli.run import ray_start
from fpncli.run.ray_start import RayStartError, check_address, connect, probe_address

REFUSED = (
    "connection refused: check that a Ray head runs there (ray start --head) and the port "
    "(its GCS port, 6379 by default; with ray://, Ray Client's, 10001)"
)


@pytest.fixture
def closed_port():
    """A local port that refuses connections: bound (no one else gets it), never listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def silent_port():
    """A local port that never answers: its one-connection queue is full, so the kernel drops
    the next connection's SYN, as a firewall or an address no host has does."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            yield port


@pytest.fixture
def unknown_host(monkeypatch):
    """``nosuch.invalid`` fails to resolve as an unknown name does, without asking a DNS server."""
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if host == "nosuch.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return "nosuch.invalid"


@pytest.mark.parametrize("address, target", [
    ("10.0.0.1:6379", ("10.0.0.1", 6379)), ("localhost:6379", ("localhost", 6379)),
    ("[::1]:6379", ("::1", 6379)), ("ray://head:10001", ("head", 10001)),
    ("ray://head:10001/", ("head", 10001)), ("auto", None), ("local", None),
    ("anyscale://prod", None),
])  # fmt: skip
def test_check_address_reads_the_forms_ray_joins(address, target):
    assert check_address(address) == target


@pytest.mark.parametrize("address, reason", [
    ("10.0.0.1", "expected HOST:PORT (the head's GCS port, 6379 by default), ray://HOST:PORT "
                 "(Ray Client), auto or local"),
    ("ray://head", "expected HOST:PORT"), ("::1:6379", "an IPv6 host goes in brackets"),
    ("[::1]", "expected [IPv6]:PORT"), ("[::1]6379", "expected [IPv6]:PORT"),
    (":6379", "no host before the port"), ("head:", "the port must be a number from 1 to 65535"),
    ("head:abc", "from 1 to 65535"), ("head:0", "from 1 to 65535"),
    ("head:70000", "from 1 to 65535"),
])  # fmt: skip
def test_check_address_refuses_what_ray_cannot_join(address, reason):
    with pytest.raises(ValueError, match=re.escape(reason)):
        check_address(address)


def test_probe_says_in_seconds_why_nobody_answers(closed_port, silent_port, unknown_host):
    with pytest.raises(ValueError, match=f"^{re.escape(REFUSED)}$"):
        probe_address(f"127.0.0.1:{closed_port}")
    with pytest.raises(ValueError, match=f"^{re.escape(REFUSED)}$"):  # Ray Client's address
        probe_address(f"ray://127.0.0.1:{closed_port}")
    with pytest.raises(
        ValueError,
        match=rf"^no answer within 0\.5 s: check the address, that the head is up and that no "
        rf"firewall blocks port {silent_port}$",
    ):
        probe_address(f"127.0.0.1:{silent_port}", timeout_s=0.5)
    with pytest.raises(
        ValueError,
        match=r"^unknown host nosuch\.invalid: check its spelling, or give the head's IP address$",
    ):
        probe_address(f"{unknown_host}:6379")
    with socket.socket() as server:  # a port that answers passes
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert probe_address(f"127.0.0.1:{server.getsockname()[1]}") is None


def test_probe_reads_an_ipv6_host_in_brackets():
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    with socket.socket(socket.AF_INET6) as sock:
        try:
            sock.bind(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback here")
        port = sock.getsockname()[1]
        with pytest.raises(ValueError, match="^connection refused"):
            probe_address(f"[::1]:{port}")
        sock.listen()
        assert probe_address(f"[::1]:{port}") is None


def test_probe_of_auto_checks_the_cluster_ray_would_join(closed_port, monkeypatch):
    """``auto`` joins the last ``ray start`` of this machine, whose address Ray keeps after a
    head that ended without ``ray stop``: that address is probed. Where Ray finds no cluster, it
    says so itself, at once."""
    services = pytest.importorskip("ray._private.services")
    stale = f"127.0.0.1:{closed_port}"
    monkeypatch.setattr(services, "canonicalize_bootstrap_address", lambda address: stale)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    said = f"Ray finds {stale} for it (the last ray start here): {REFUSED}"
    with pytest.raises(ValueError, match=f"^{re.escape(said)}$"):
        probe_address("auto")

    def no_cluster(address):
        raise ConnectionError("Could not find any running Ray instance.")

    monkeypatch.setattr(services, "canonicalize_bootstrap_address", no_cluster)
    assert probe_address("auto") is None


class _NoRay:
    """A Ray that must not be started."""

    def __init__(self) -> None:
        self.calls = []

    def is_initialized(self) -> bool:
        return False

    def init(self, **kwargs) -> None:
        self.calls.append(kwargs)

    def shutdown(self) -> None:
        pass


def test_connect_refuses_an_address_nobody_answers_at_before_ray_tries(closed_port, monkeypatch):
    """``ray.init`` retried the refused port for 14 minutes; now the probe says so before it
    is called. Nothing was started, so the process can exit normally (the failed starts of
    earlier tests in this process set aside)."""
    monkeypatch.setattr(ray_start, "_failed_starts", [])
    ray = _NoRay()
    with pytest.raises(RayStartError, match=f"^cannot reach Ray at 127.0.0.1:{closed_port}: "):
        connect(ray, f"127.0.0.1:{closed_port}", quiet=True)
    assert ray.calls == [] and not ray_start.exit_may_hang()


def _extract(*args, env=None):
    return CliRunner().invoke(
        cli, ["extract", *map(str, args), "--engine", "ray", "--weights", "random"], env=env
    )


def test_extract_refuses_a_ray_address_nobody_answers_at_in_one_line(
    closed_port, unknown_host, tmp_path, monkeypatch
):
    """``--ray-address`` or ``RAY_ADDRESS`` where nothing listens, or whose host is unknown:
    one line naming it and what to check, exit 1, nothing written, Ray never tried (it waited
    for minutes)."""
    ray = pytest.importorskip("ray", reason="the Ray engine needs fpncli[ray]")
    pytest.importorskip("ray.data", reason="the Ray engine needs fpncli[ray]")
    tried = []

    def init(**kwargs):
        tried.append(kwargs)
        raise RuntimeError("Failed to connect to Ray cluster")  # after minutes

    monkeypatch.setattr(ray, "init", init)
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    refused = f"127.0.0.1:{closed_port}"
    cases = [
        (["--ray-address", refused], None, f"{refused} (--ray-address): {REFUSED}"),
        ([], {"RAY_ADDRESS": refused}, f"{refused} (RAY_ADDRESS): {REFUSED}"),
        (["--ray-address", f"ray://{refused}"], None,
         f"ray://{refused} (--ray-address): {REFUSED}"),
        (["--ray-address", "nosuch.invalid:6379"], None,
         "nosuch.invalid:6379 (--ray-address): unknown host nosuch.invalid: check its spelling, "
         "or give the head's IP address"),
    ]  # fmt: skip
    for args, env, said in cases:
        result = _extract(tmp_path / "a.png", "-o", out, *args, env=env)
        assert result.exit_code == 1, result.output
        assert result.output.splitlines() == [f"Error: cannot reach Ray at {said}"]
        assert not out.exists()
    assert tried == []


def test_extract_refuses_a_ray_address_it_cannot_read_as_a_usage_error(tmp_path):
    """A malformed address is a usage error before anything loads (Ray was started for it)."""
    result = _extract(tmp_path, "--ray-address", "10.0.0.1")
    assert result.exit_code == 2, result.output
    assert result.output.splitlines() == [
        "Error: Invalid value for '--ray-address': expected HOST:PORT (the head's GCS port, 6379 "
        "by default), ray://HOST:PORT (Ray Client), auto or local, got '10.0.0.1' (see 'cli "
        "extract --help')"
    ]
    result = _extract(tmp_path, env={"RAY_ADDRESS": "::1:6379"})
    assert result.exit_code == 2, result.output
    assert "Error: RAY_ADDRESS=::1:6379: an IPv6 host goes in brackets, as in [::1]:6379" in (
        result.output
    )


def test_a_failed_join_says_each_of_rays_retry_lines_once(monkeypatch, caplog):
    """A port that answers but is not a Ray head: ``ray.init`` fails after its 20 retries, each
    writing the same line (other times); said once with its count, not 20 lines before the
    error's. Lines that are not the core's (a traceback) are kept as they came."""
    import logging

    monkeypatch.delenv("RAY_BACKEND_LOG_LEVEL", raising=False)
    monkeypatch.delenv("RAY_LOG_TO_STDERR", raising=False)
    retry = "gcs_client.cc:210: Failed to get cluster ID from GCS server: RpcError: 404"
    wrote = [f"[2026-11-28 03:25:{i:02},135 W 27740 27740] {retry}" for i in range(20)]
    wrote += ["Traceback (most recent call last):", "  ...", "  ..."]

    class FailingRay(_NoRay):
        def init(self, **kwargs) -> None:
            logging.getLogger("ray").setLevel(kwargs["logging_level"])  # as ray.init does
            os.write(2, "\n".join(wrote).encode())
            raise ConnectionError("Failed to connect to Ray cluster")

    monkeypatch.setattr(logging.getLogger("ray"), "level", logging.NOTSET)
    caplog.set_level(logging.DEBUG, logger="fpncli")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        with pytest.raises(RayStartError, match=f"^cannot start or reach Ray \\({address}\\)"):
            connect(FailingRay(), address, quiet=True)
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert said == [("WARNING", "Ray's start wrote:\n" + "\n".join([
        f"[2026-11-28 03:25:00,135 W 27740 27740] {retry} (20 times)",
        "Traceback (most recent call last):", "  ...", "  ...",
    ]))]  # fmt: skip


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name == "nt", reason="POSIX signals")
def test_ray_start_leaves_sigterm_to_the_callers_handler(monkeypatch):
    """``extract`` turns SIGTERM into Ctrl-C; ``ray.init`` set its own handler (``sys.exit``:
    exit code 15, no summary) and its C++ core then one that aborts (exit code 134). While Ray
    starts, its setter sets nothing; after, the caller's handler is set again, over the core's
    (here SIG_DFL stands in for it). Ray is not started: ``ray.init`` is a stand-in that does
    what the real one does to SIGTERM."""
    ray = pytest.importorskip("ray")
    utils = pytest.importorskip("ray._private.utils")
    setter = ray._private.utils.set_sigterm_handler
    sent = []

    def init(**kwargs):
        utils.set_sigterm_handler(lambda signum, frame: sys.exit(signum))
        if not sent:  # the first start: SIGTERM while Ray starts
            sent.append(signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # (the handler runs before)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the core's own, set from C++

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            connect(ray, None)
        assert time.monotonic() - start < 4
        assert signal.getsignal(signal.SIGTERM) is interrupt
        assert connect(ray, None) is True
        assert signal.getsignal(signal.SIGTERM) is interrupt
        assert utils.set_sigterm_handler is setter
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    finally:
        signal.signal(signal.SIGTERM, previous)
