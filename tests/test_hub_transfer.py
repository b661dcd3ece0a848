"""Downloads that go wrong: a server that misbehaves, a download that is stopped or killed, a
cache that is shared, read-only or has something else where the checkpoint goes."""

from __future__ import annotations

import errno
import os
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from fpncli.cli import cli
from fpncli.weights import hub
from fpncli.weights.hub import verify_cached
from fpncli.weights.registry import REGISTRY
from fpncli.weights.synthetic import seeded_state_dict, write_detectron2_pkl

NAME = "faster_rcnn_R_50_FPN_1x"


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FPNCLI_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "seeded.pkl"
    write_detectron2_pkl(path, seeded_state_dict(0))
    return path.read_bytes()


def _spec(url: str, **changes):
    return replace(REGISTRY[NAME], url=url, sha256=None, **changes)


def _entries(home: Path) -> list[str]:
    return sorted(os.listdir(home)) if home.exists() else []


def _part(home: Path, name: str) -> Path:
    path = home / name
    path.write_bytes(b"half a download")
    return path


def test_a_folder_where_the_checkpoint_goes_is_named(home, monkeypatch):
    """``weights verify`` and ``weights list`` said only "not cached"."""
    spec = _spec("https://example.invalid/model_final.pkl")
    monkeypatch.setitem(REGISTRY, NAME, spec)
    (home / spec.file_name).mkdir(parents=True)
    verify = CliRunner().invoke(cli, ["weights", "verify", NAME])
    assert verify.exit_code == 1
    assert f"{NAME}: not cached (a folder is in its place: move it away)" in verify.output
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


def test_a_digest_is_recorded_past_another_containers_temporary_file(home):
    """The sidecar's temporary name was ``NAME.sha256.tmp<pid>``: two containers sharing a cache
    (PID 1 in each) wrote the same file. It is now made exclusively, under a name no other
    process can have."""
    home.mkdir()
    path = home / REGISTRY[NAME].file_name
    path.write_bytes(b"a checkpoint")
    theirs = _part(home, f"{path.name}.sha256.tmp{os.getpid()}")
    hub.record_sha256(path, "0" * 64)
    assert hub.recorded_sha256(path) == "0" * 64
    assert theirs.read_bytes() == b"half a download"
    assert _entries(home) == [path.name, path.name + ".sha256", theirs.name]
