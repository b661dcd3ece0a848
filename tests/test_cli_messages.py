"""Messages that must not mislead: weights, show's targets, failed files, output folders."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from fpncli.cli import cli

SMALL = ["--weights", "random", "--min-size", "64", "--max-size", "96"]


@pytest.fixture
def runner(tmp_path, monkeypatch):
    monkeypatch.setenv("FPNCLI_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    return CliRunner()


def test_weights_download_random_does_not_contradict_itself(runner):
    result = runner.invoke(cli, ["weights", "download", "random"])
    assert result.exit_code == 0, result.output
    assert "nothing to download" in result.output and "unknown" not in result.output


def test_a_damaged_cached_file_is_not_listed_as_cached(runner, tmp_path):
    from fpncli.weights.hub import cached_path, record_sha256
    from fpncli.weights.registry import REGISTRY

    published = cached_path(REGISTRY["faster_rcnn_R_50_FPN_3x"])  # has a published sha256
    published.write_bytes(b"half a download")
    recorded = cached_path(REGISTRY["faster_rcnn_R_101_FPN_3x"])  # digest recorded at download
    recorded.write_bytes(b"changed since")
    record_sha256(recorded, "0" * 64)
    empty = cached_path(REGISTRY["faster_rcnn_R_50_FPN_1x"])
    empty.write_bytes(b"")
    listing = runner.invoke(cli, ["weights", "list"], catch_exceptions=False).output
    for path in (published, recorded, empty):
        line = next(ln for ln in listing.splitlines() if str(path) in ln)
        assert "damaged" in line and ", cached" not in line, line
        assert "weights download" in line
    verify = runner.invoke(cli, ["weights", "verify", "faster_rcnn_R_50_FPN_3x"])
    assert verify.exit_code == 1 and "mismatch" in verify.output


def test_weights_verify_fails_for_a_named_checkpoint_that_is_missing(runner):
    result = runner.invoke(cli, ["weights", "verify", "faster_rcnn_R_50_FPN_1x"])
    assert result.exit_code == 1 and "not cached" in result.output
    assert "weights download" in result.output
    everything = runner.invoke(cli, ["weights", "verify"])  # nothing cached, nothing wrong
    assert everything.exit_code == 0 and "not cached" in everything.output


def test_a_damaged_pth_is_not_called_a_pkl(tmp_path):
    from fpncli.weights.checkpoint import read_checkpoint

    path = tmp_path / "model.pth"
    path.write_bytes(b"\x80\x02not really")
    with pytest.raises(ValueError, match=r"\.pth") as error:
        read_checkpoint(path)
    assert ".pkl checkpoint" not in str(error.value)
