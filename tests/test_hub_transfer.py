"""Downloads that go wrong: a server that misbehaves, a download that is stopped or killed, a
cache that is shared, read-only or has something else where the checkpoint goes.

The servers are raw sockets on 127.0.0.1 in a thread (no network): each connection gets the
bytes a handler writes, however malformed.
"""

from __future__ import annotations

import errno
import fcntl
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

import fpncli
from fpncli import api
from fpncli.cli import cli
from fpncli.weights import cache, fetch, hub
from fpncli.weights.cache import WeightsDownloadError, verify_cached
from fpncli.weights.hub import download, resolve_weights
from fpncli.weights.registry import REGISTRY

NAME = "faster_rcnn_R_50_FPN_1x"


@pytest.fixture
def serve(monkeypatch):
    """``serve(handler)`` -> a URL on 127.0.0.1 whose every request gets what ``handler(conn)``
    sends (the request read first); the server stops with the test."""
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)  # never through a proxy
    stop, threads = threading.Event(), []

    def start(handler) -> str:
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(0.1)

        def loop():
            with listener:
                while not stop.is_set():
                    try:
                        conn, _ = listener.accept()
                    except TimeoutError:
                        continue
                    with conn:
                        conn.recv(65536)
                        try:
                            handler(conn)
                        except OSError:  # the client hung up
                            pass

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        threads.append(thread)
        return f"http://127.0.0.1:{listener.getsockname()[1]}/model_final.pkl"

    yield start
    stop.set()
    for thread in threads:
        thread.join(5)


def _spec(url: str, **changes):
    return replace(REGISTRY[NAME], url=url, sha256=None, **changes)


def _entries(home: Path) -> list[str]:
    return sorted(os.listdir(home)) if home.exists() else []


class _Body(io.BytesIO):
    """A response (as urlopen returns) that sends ``data`` whole, its size announced."""

    def __init__(self, data: bytes, *, announced: bool = True):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))} if announced else {}


def _send(data: bytes):
    return lambda conn: conn.sendall(data)


_OK = b"HTTP/1.1 200 OK\r\n"


@pytest.mark.parametrize(
    "response, reason",
    [
        (
            _OK + b"Transfer-Encoding: chunked\r\n\r\n64\r\n" + b"x" * 50,
            "the connection closed in the middle of the body, after 50 bytes: cut short",
        ),
        (b"SSH-2.0-OpenSSH_8.9\r\n\r\n", "not an HTTP response: SSH-2.0-OpenSSH_8.9"),
        (_OK + b"X: " + b"a" * 70000 + b"\r\n\r\n", "a malformed HTTP response: got more than"),
        (_OK + b"X: a\r\n" * 200 + b"\r\n", "a malformed HTTP response: got more than 100 headers"),
    ],
    ids=["chunked-cut-short", "not-http", "header-line-too-long", "too-many-headers"],
)
def test_a_malformed_response_is_one_line_naming_the_address(home, serve, response, reason):
    """http.client's errors (IncompleteRead, BadStatusLine, LineTooLong, "got more than 100
    headers") are no URLError or OSError: they came out as a traceback, leaving the .part file."""
    spec = _spec(serve(_send(response)))
    with pytest.raises(WeightsDownloadError) as info:
        download(spec, progress=None)
    message = str(info.value)
    assert message.startswith(f"could not download {NAME} from {spec.url} ({reason}")
    assert message.endswith(f"download it by hand and put it at {home / spec.file_name}")
    assert "\n" not in message and _entries(home) == []


def test_a_content_length_that_is_no_number_is_ignored(home, serve, checkpoint_bytes):
    """``Content-Length: abc`` was "invalid literal for int() with base 10: 'abc'", leaving a
    0-byte .part: http.client reads such a body to its end, and so does the download."""
    url = serve(_send(_OK + b"Content-Length: abc\r\nConnection: close\r\n\r\n" + checkpoint_bytes))
    path = download(_spec(url), progress=None)
    assert path.read_bytes() == checkpoint_bytes
    assert _entries(home) == [path.name, path.name + ".sha256"]


@pytest.mark.parametrize("size_bytes", [None, 1000])
def test_a_body_larger_than_a_checkpoint_is_refused_before_it_is_written(home, serve, size_bytes):
    """Content-Length above the registry's size (or any checkpoint's) is refused up front."""
    announced = 5 << 30 if size_bytes is None else size_bytes + 1
    header = f"Content-Length: {announced}\r\n\r\n".encode()
    spec = _spec(serve(_send(_OK + header + b"\0" * 4096)), size_bytes=size_bytes)
    with pytest.raises(WeightsDownloadError, match=f"it announces {announced} bytes, more than"):
        download(spec, progress=None)
    assert _entries(home) == []


def test_an_endless_body_is_cut_off_at_the_cap(home, serve, monkeypatch):
    """Endless zeros without Content-Length filled the disk (3 GB in 15 s)."""
    from fpncli.weights.safeload import MAX_CHECKPOINT_BYTES

    assert fetch.MAX_DOWNLOAD_BYTES == MAX_CHECKPOINT_BYTES  # fetch's copy (no torch import)
    monkeypatch.setattr(fetch, "MAX_DOWNLOAD_BYTES", 1 << 20)
    zeros = b"\0" * 65536

    def endless(conn):
        conn.sendall(_OK + b"Connection: close\r\n\r\n")
        while True:
            conn.sendall(zeros)

    spec = _spec(serve(endless))
    with pytest.raises(WeightsDownloadError, match=r"it sent more than 1048576 bytes.*: stopped"):
        download(spec, progress=None)
    assert _entries(home) == []
    sized = replace(spec, size_bytes=100_000)  # the registry's size is the cap where it has one
    with pytest.raises(WeightsDownloadError, match="more than the 100000 bytes expected"):
        download(sized, progress=None)


def test_a_stalled_transfer_is_given_up(home, serve, monkeypatch):
    """A byte every few seconds never tripped the 30 s timeout (it is per read): the download
    waited for ever. (The window and rate are shrunk here; 60 s and 256 KiB by default.)"""
    monkeypatch.setattr(fetch, "_STALL_WINDOW_S", 0.3)
    monkeypatch.setattr(fetch, "_STALL_BYTES", 1024)

    def drip(conn):
        conn.sendall(_OK + b"Content-Length: 100000\r\n\r\n")
        end = time.monotonic() + 5  # bounded, should the download never give up
        while time.monotonic() < end:
            conn.sendall(b"x")
            time.sleep(0.02)

    start = time.monotonic()
    with pytest.raises(WeightsDownloadError, match=r"\(stalled: \d+ bytes in the last 0 s, "):
        download(_spec(serve(drip)), progress=None)
    assert time.monotonic() - start < 4 and _entries(home) == []


class _Stopped(io.BytesIO):
    """A response that is interrupted (Ctrl-C) after its first chunk."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}
        self.reads = 0

    def read(self, size=-1):
        self.reads += 1
        if self.reads > 1:
            raise KeyboardInterrupt
        return super().read(min(size, 1000))

    read1 = read


def test_ctrl_c_during_a_download_leaves_no_temporary_file(home, monkeypatch):
    """KeyboardInterrupt is no Exception: the .part file stayed in the cache for good."""
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: _Stopped(b"x" * 5000))
    with pytest.raises(KeyboardInterrupt):
        download(_spec("https://example.invalid/model_final.pkl"), progress=None)
    assert _entries(home) == []


def test_sigterm_during_weights_download_removes_its_temporary_file(home, serve):
    """``kill`` ended ``fpncli weights download`` at once, leaving its .part file for good: it
    now stops as on Ctrl-C (exit 130, "interrupted"), removing it."""

    def drip(conn):
        conn.sendall(_OK + b"Content-Length: 100000\r\n\r\n")
        end = time.monotonic() + 30
        while time.monotonic() < end:
            conn.sendall(b"x" * 100)
            time.sleep(0.05)

    url = serve(drip)
    script = (
        "import sys, dataclasses\n"
        "from fpncli.weights.registry import REGISTRY\n"
        f"REGISTRY[{NAME!r}] = dataclasses.replace(REGISTRY[{NAME!r}], url={url!r})\n"
        "from fpncli.cli import main\n"
        f"sys.argv = ['fpncli', 'weights', 'download', {NAME!r}]\n"
        "main()\n"
    )
    root = Path(fpncli.__file__).resolve().parents[1]  # this checkout's fpncli first
    child = subprocess.Popen(
        [sys.executable, "-c", script], cwd=root, env=dict(os.environ, FPNCLI_HOME=str(home)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not any(".part" in name for name in _entries(home)):
            assert time.monotonic() < deadline and child.poll() is None, "no download started"
            time.sleep(0.05)
        child.send_signal(signal.SIGTERM)
        output = child.communicate(timeout=60)[0].decode()
    finally:
        child.kill()
    assert child.returncode == 130 and "interrupted" in output, output
    assert _entries(home) == []


def _part(home: Path, name: str, *, age_s: float = 0.0) -> Path:
    path = home / name
    path.write_bytes(b"half a download")
    if age_s:
        then = time.time() - age_s
        os.utime(path, (then, then))
    return path


def test_killed_downloads_parts_are_removed_a_live_one_is_not(home, monkeypatch, checkpoint_bytes):
    """A killed download's temporary file stayed for good: the next download removes those no
    process holds locked (a live download holds its own), of this and of earlier versions."""
    home.mkdir()
    spec = _spec("https://example.invalid/model_final.pkl")
    stem, suffix = Path(spec.file_name).stem, Path(spec.file_name).suffix
    dead = [
        _part(home, f".{stem}.0badc0de.part{suffix}"),
        _part(home, f".{spec.file_name}.part999999", age_s=2 * 3600),  # an earlier version's
    ]
    live = _part(home, f".{stem}.1badc0de.part{suffix}")
    other = _part(home, f".{REGISTRY['faster_rcnn_R_101_FPN_3x'].file_name}.part999999")
    monkeypatch.setattr(
        urllib.request, "urlopen", lambda url, timeout=None: _Body(checkpoint_bytes)
    )
    with open(live, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a download in progress (another process's, say)
        path = download(spec, progress=None)
        assert path.read_bytes() == checkpoint_bytes
    assert not any(p.exists() for p in dead)
    assert live.read_bytes() == other.read_bytes() == b"half a download"  # not theirs to remove


def test_where_flock_is_refused_only_old_parts_are_removed(home, monkeypatch, checkpoint_bytes):
    """Some network filesystems refuse flock (ENOLCK): a part untouched for an hour is a dead
    download's (a live one writes at least 256 KiB a minute); a recent one is left alone."""
    home.mkdir()
    spec = _spec("https://example.invalid/model_final.pkl")
    stem, suffix = Path(spec.file_name).stem, Path(spec.file_name).suffix
    old = _part(home, f".{stem}.0badc0de.part{suffix}", age_s=2 * 3600)
    recent = _part(home, f".{stem}.1badc0de.part{suffix}", age_s=600)

    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    monkeypatch.setattr(
        urllib.request, "urlopen", lambda url, timeout=None: _Body(checkpoint_bytes)
    )
    assert download(spec, progress=None).read_bytes() == checkpoint_bytes  # unlocked, as it can
    assert not old.exists() and recent.exists()


def test_an_earlier_versions_live_download_is_left_alone(home, monkeypatch, checkpoint_bytes):
    """Earlier versions named their temporary file ``.NAME.part<pid>`` and never locked it: the
    sweep took the lock it could get for a dead download's, deleting a live download of an
    earlier fpncli sharing the cache (its rename then failed). Such a file is judged by its age
    alone; an old one goes (test_killed_downloads_parts_are_removed_a_live_one_is_not)."""
    home.mkdir()
    spec = _spec("https://example.invalid/model_final.pkl")
    theirs = _part(home, f".{spec.file_name}.part{os.getpid()}")  # being written, unlocked
    monkeypatch.setattr(
        urllib.request, "urlopen", lambda url, timeout=None: _Body(checkpoint_bytes)
    )
    assert download(spec, progress=None).read_bytes() == checkpoint_bytes
    assert theirs.read_bytes() == b"half a download"


def test_a_folder_where_the_checkpoint_goes_is_refused_before_downloading(
    home, monkeypatch, checkpoint_bytes
):
    """The whole file was downloaded, then "[Errno 21] Is a directory", the .part left behind;
    ``weights verify`` and ``weights list`` said only "not cached"."""
    spec = _spec("https://example.invalid/model_final.pkl")
    monkeypatch.setitem(REGISTRY, NAME, spec)
    (home / spec.file_name).mkdir(parents=True)
    asked = []

    def urlopen(url, timeout=None):
        asked.append(url)
        return _Body(checkpoint_bytes)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    with pytest.raises(WeightsDownloadError) as info:
        download(spec, progress=None)
    assert str(info.value) == (
        f"cannot download {NAME}: {home / spec.file_name}: not a regular file (a folder), where "
        "the checkpoint goes; move it away and run the command again"
    )
    assert asked == [] and _entries(home) == [spec.file_name]
    verify = CliRunner().invoke(cli, ["weights", "verify", NAME])
    assert verify.exit_code == 1
    assert f"{NAME}: not cached (a folder is in its place: move it away)" in verify.output
    assert verify.output.endswith(  # was "run fpncli weights download NAME", which refuses
        "1 checkpoint(s) not usable (1 not cached): move away what is in place of the "
        f"checkpoint(s) ({home / spec.file_name}), then run fpncli weights download {NAME}\n"
    ), verify.output
    listing = CliRunner().invoke(cli, ["weights", "list"]).output
    assert f"not cached (a folder is in its place: move it away): {home / spec.file_name}" in (
        listing
    )


def _read_only(monkeypatch, folder: Path) -> None:
    """Files cannot be made in ``folder``, as on a read-only filesystem (root writes anywhere)."""
    real_open = os.open

    def open_(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and Path(path).parent == folder:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)


def test_verify_in_a_read_only_cache_reports_each_file(home, monkeypatch, checkpoint_bytes):
    """A read-only cache: ``weights verify`` failed at the first digest it could not record,
    "[Errno 30] Read-only file system: '...pkl.sha256.tmp…'", with no line per checkpoint."""
    home.mkdir()
    spec = _spec("https://example.invalid/model_final.pkl")
    monkeypatch.setitem(REGISTRY, NAME, spec)
    (home / spec.file_name).write_bytes(checkpoint_bytes)
    _read_only(monkeypatch, home)
    (entry,) = verify_cached([NAME])
    assert entry.status == "unrecorded" and "(not recorded: Read-only file system)" in entry.detail
    result = CliRunner().invoke(cli, ["weights", "verify", NAME])
    assert result.exit_code == 0, result.output
    assert f"{NAME}: unrecorded sha256 " in result.output and "not recorded" in result.output
    assert _entries(home) == [spec.file_name]


def test_a_download_into_a_read_only_cache_says_so(home, monkeypatch):
    """It gave the raw EROFS of the cleanup's unlink, not the download's error."""
    home.mkdir()
    spec = _spec("https://example.invalid/model_final.pkl")
    monkeypatch.setitem(REGISTRY, NAME, spec)
    _read_only(monkeypatch, home)
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: _Body(b"x"))
    with pytest.raises(WeightsDownloadError) as info:
        download(spec, progress=None)
    assert str(info.value) == (
        f"cannot write in the weights cache {home} (Read-only file system): set FPNCLI_HOME to "
        "a writable folder"
    )
    with pytest.raises(WeightsDownloadError, match=r"folder, or use --weights random \("):
        resolve_weights(NAME)
    assert _entries(home) == []


def test_a_digest_is_recorded_past_another_containers_temporary_file(home):
    """The sidecar's temporary name was ``NAME.sha256.tmp<pid>``: two containers sharing a cache
    (PID 1 in each) wrote the same file. It is now made exclusively, under a name no other
    process can have."""
    home.mkdir()
    path = home / REGISTRY[NAME].file_name
    path.write_bytes(b"a checkpoint")
    theirs = _part(home, f"{path.name}.sha256.tmp{os.getpid()}")
    cache.record_sha256(path, "0" * 64)
    assert cache.recorded_sha256(path) == "0" * 64
    assert theirs.read_bytes() == b"half a download"
    assert _entries(home) == [path.name, path.name + ".sha256", theirs.name]


def test_a_download_that_does_not_load_names_the_checkpoint(home, monkeypatch):
    """It named the deleted temporary file ("/…/.NAME.part22915: not a readable .part22915
    checkpoint"), never that it may have been cut short, and an extract run lost the
    "--weights random" hint. (The name says which checkpoint; its address, a long one with a
    long cache path, took the line past its 500 characters: test_every_download_failure_...)"""
    spec = _spec("https://example.invalid/model_final.pkl")
    monkeypatch.setitem(REGISTRY, NAME, spec)
    monkeypatch.setattr(
        urllib.request,
        "urlopen",
        lambda url, timeout=None: _Body(b"\x80\x02half a pickle", announced=False),
    )
    with pytest.raises(WeightsDownloadError) as info:
        fpncli.load_backbone(NAME)  # as extract --weights NAME: a strict load checks it
    message = str(info.value)
    assert message.startswith(f"{NAME}: the download does not load (not a readable .pkl")
    assert "cut short, or not a checkpoint; try again, or download it by hand" in message
    assert message.endswith("or use --weights random ('random' in Python)")
    assert ".part" not in message and str(home) + "/." not in message
    assert _entries(home) == []


def test_a_size_mismatch_is_worded_by_its_direction(home, monkeypatch, checkpoint_bytes):
    """Said "got N bytes, expected M (an interrupted download?)" when N > M too."""

    class Longer(io.BytesIO):
        headers = {"Content-Length": "1000"}  # more than that comes (a mock: http.client stops)

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: Longer(b"x" * 1500))
    spec = _spec("https://example.invalid/model_final.pkl")
    with pytest.raises(WeightsDownloadError) as info:
        download(spec, progress=None)
    assert str(info.value).startswith(
        f"{NAME}: the server sent 1500 bytes, more than the 1000 expected: not the published "
        "checkpoint; download it by hand"
    )
    assert "cut short" not in str(info.value) and "interrupted" not in str(info.value)


class _Headers(io.BytesIO):
    """A response sending ``data`` that announces ``announced`` bytes."""

    def __init__(self, data: bytes, announced: int):
        super().__init__(data)
        self.headers = {"Content-Length": str(announced)}


def _cannot_rename(src, dst):
    raise PermissionError(errno.EACCES, "Permission denied")


def _does_not_load(path, spec):
    raise ValueError(f"{path}: not a readable .pkl checkpoint: " + "a long reason " * 30)


def _unreachable(url, timeout=None):
    raise urllib.error.URLError(OSError(errno.EHOSTUNREACH, "No route to host " * 30))


_X101 = REGISTRY["faster_rcnn_X_101_32x8d_FPN_3x"]  # the longest address and file name


@pytest.mark.parametrize(
    "changes, response, begins",
    [
        ({}, _Body(b"", announced=False), "the server sent nothing; try again"),
        ({}, _Headers(b"x" * 1000, 5000), "the download was cut short (1000 of 5000 bytes)"),
        ({"sha256": None}, _Headers(b"x" * 1500, 1000), "the server sent 1500 bytes, more "),
        ({}, _Body(b"x" * 1000), "the sha256 of the download does not match the published one"),
        ({"sha256": None, "sha256_prefix": "0123abcd"}, _Body(b"x" * 1000),
         "the sha256 of the download does not start with the published 0123abcd"),
        ({"sha256": None}, _Body(b"x" * 1000),
         "the download does not load (not a readable .pkl checkpoint: a long reason a long"),
        ({"size_bytes": 1000}, _Body(b"x" * 5000), f"could not download {_X101.name} from "),
        ({}, _unreachable, f"could not download {_X101.name} from {_X101.url} ([Errno 113] No "),
        ({"sha256": None}, _Body(b"x" * 1000), "cannot rename the download of"),
    ],
    ids=["nothing", "cut-short", "more", "digest", "prefix", "load", "announces", "unreachable",
         "rename"],
)  # fmt: skip
def test_every_download_failure_keeps_what_to_do_within_one_line(
    tmp_path, monkeypatch, changes, response, begins
):
    """With the X101 checkpoint (the longest address) and a long cache path, a download that did
    not load ran past one_line's 500 characters, cutting off "--weights random" (the address, the
    reason and the cache path all in one line): every failure line keeps what to do whole."""
    home = tmp_path / "shared" / "a-research-group" / "fpncli-weights-cache"  # ~100 characters
    monkeypatch.setenv("FPNCLI_HOME", str(home))
    spec = replace(_X101, **changes)
    urlopen = response if callable(response) else lambda url, timeout=None: response
    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    if begins.startswith("cannot rename"):
        monkeypatch.setattr(hub.os, "replace", _cannot_rename)
    check = _does_not_load if begins.startswith("the download does not load") else None
    with pytest.raises(WeightsDownloadError) as info:
        download(spec, progress=None, check=check, alternative=hub._RANDOM_INSTEAD)
    message = str(info.value)
    assert len(str(home)) > 90 and begins in message, message
    assert len(message) <= 500 and "\n" not in message, message
    assert message.endswith(
        f"download it by hand and put it at {home / spec.file_name}, or use --weights random "
        "('random' in Python)"
    )
    assert _entries(home) == []


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_the_library_logs_a_downloads_progress_and_the_cli_draws_it(
    home, monkeypatch, checkpoint_bytes, caplog
):
    """``download`` (and ``load_backbone`` of a registry name through it) wrote its progress on
    stderr, which a notebook could not turn off (the library logs, never prints): it is logged
    now (INFO, the ``fpncli`` logger), ``progress=None`` says nothing, and the CLI passes its
    display, as it was: a bar on a terminal, a line when it starts and one per tenth elsewhere.
    (``download(progress=False)`` had drawn the bar all the same.)"""
    from fpncli.cli.download_bar import DownloadBar

    spec = _spec("https://example.invalid/model_final.pkl")
    monkeypatch.setattr(
        urllib.request, "urlopen", lambda url, timeout=None: _Body(checkpoint_bytes)
    )
    size = f"{len(checkpoint_bytes) / 1e6:.1f} MB"
    last = f"downloading {NAME}: {size[:-3]}/{size}, "

    def progress_lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.getMessage().endswith("MB/s")]

    for stream in (_Terminal(), io.StringIO()):
        monkeypatch.setattr(sys, "stderr", stream)
        for call in (lambda: download(spec), lambda: fpncli.load_backbone(NAME)):
            (home / spec.file_name).unlink(missing_ok=True)
            caplog.clear()
            with caplog.at_level("INFO", logger="fpncli"):
                call()
            assert stream.getvalue() == ""
            lines = progress_lines()
            assert len(lines) == 10 and lines[-1].startswith(last), lines
        caplog.clear()
        with caplog.at_level("INFO", logger="fpncli"):
            download(spec, progress=None)
        assert stream.getvalue() == "" and progress_lines() == []
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    download(spec, progress=DownloadBar)
    assert terminal.getvalue().startswith(f"\rdownloading {NAME} ")
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    download(spec, progress=DownloadBar)
    lines = log.getvalue().splitlines()
    assert lines[0] == f"downloading {NAME} from {spec.url} ({size})", lines
    assert lines[-1].startswith(last)
    assert "\r" not in log.getvalue()


def test_every_command_that_loads_weights_draws_the_download_on_stderr(
    home, monkeypatch, checkpoint_bytes, tmp_path
):
    """The CLI's download display is its own, passed to the library (which logs by default):
    ``weights download`` and every command that loads ``--weights NAME`` pass it, and a
    download says on stderr what it did before (a line when it starts, one per tenth)."""
    from PIL import Image

    from fpncli.cli.download_bar import DownloadBar

    photo = tmp_path / "cat.png"
    Image.new("RGB", (48, 40)).save(photo)
    passed = []

    def loading(weights, **kwargs):
        passed.append(kwargs.get("download_progress"))
        raise ValueError("stop here")

    monkeypatch.setattr(api, "load_backbone", loading)
    runner = CliRunner()
    for args in (["extract", str(photo), "-o", str(tmp_path / "out")],
                 ["show", str(photo), "--save", str(tmp_path / "a.png")],
                 ["show", str(photo), "--receptive-field", "--at", "3,4"],
                 ["bench", "--sizes", "64x64", "--iters", "1", "--device", "cpu"]):  # fmt: skip
        result = runner.invoke(cli, [*args, "--weights", NAME])
        assert result.exit_code == 1 and "stop here" in result.output, (args, result.output)
    assert passed == [DownloadBar] * 4
    monkeypatch.setattr(
        urllib.request, "urlopen", lambda url, timeout=None: _Body(checkpoint_bytes)
    )
    result = runner.invoke(cli, ["weights", "download", NAME], catch_exceptions=False)
    size = f"{len(checkpoint_bytes) / 1e6:.1f} MB"
    lines = result.stderr.splitlines()
    assert result.exit_code == 0 and len(lines) == 11, result.stderr
    assert lines[0] == f"downloading {NAME} from {REGISTRY[NAME].url} ({size})"
    assert lines[-1].startswith(f"downloading {NAME}: {size[:-3]}/{size}, ")
