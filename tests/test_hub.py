"""The weights cache: where it is, downloads (offline and online), digests, verification."""

from __future__ import annotations

import hashlib
import io
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest

import fpncli
from fpncli.weights import cache, hub
from fpncli.weights.cache import WeightsDownloadError, cache_dir, verify_cached
from fpncli.weights.hub import download, resolve_weights
from fpncli.weights.registry import REGISTRY


class _Response(io.BytesIO):
    def __init__(self, data: bytes):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}


def _serve(monkeypatch, data: bytes) -> list[str]:
    asked = []

    def urlopen(url, timeout=None):
        asked.append(url)
        return _Response(data)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return asked


def test_cache_dir_honours_fpncli_home(home):
    assert cache_dir() == home


def test_cache_dir_of_a_source_checkout_is_its_weights_folder(monkeypatch):
    """Without FPNCLI_HOME, a source checkout (setup.py beside weights/) caches in weights/."""
    monkeypatch.delenv("FPNCLI_HOME")
    checkout = Path(hub.__file__).resolve().parents[2]
    assert (checkout / "setup.py").is_file() and (checkout / "weights").is_dir()
    assert cache_dir() == checkout / "weights"


def test_resolve_errors(home, tmp_path):
    with pytest.raises(ValueError, match="unknown weights 'nope'.*faster_rcnn_R_50_FPN_3x"):
        resolve_weights("nope")
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        resolve_weights(str(tmp_path / "missing.pkl"))
    with pytest.raises(FileNotFoundError, match="fpncli weights download"):
        resolve_weights("faster_rcnn_R_50_FPN_1x", download_missing=False)
    for empty in ("", " "):  # was "not a regular file (a folder)": Path("") is "."
        with pytest.raises(ValueError, match=r"an empty value \(an unset shell variable\?\)"):
            fpncli.load_backbone(empty)


def test_offline_download_says_where_and_what_to_do(home, monkeypatch):
    def offline(url, timeout=None):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    spec = REGISTRY["faster_rcnn_R_50_FPN_3x"]
    with pytest.raises(WeightsDownloadError) as info:
        download(spec)
    message = str(info.value)
    assert spec.url in message and str(home / spec.file_name) in message
    assert message.endswith(f"download it by hand and put it at {home / spec.file_name}")
    assert "\n" not in message
    assert not list(home.iterdir())  # no temporary file left
    with pytest.raises(WeightsDownloadError) as info:  # where a --weights value was resolved
        resolve_weights(spec.name)
    assert str(info.value).endswith("or use --weights random ('random' in Python)")


def test_weights_download_offline_does_not_offer_an_option_it_has_not(home, monkeypatch):
    """``fpncli weights download`` has no --weights: its failure ended "or use --weights random"
    (extract, show and bench keep it: tests/test_cli.py)."""
    from click.testing import CliRunner

    from fpncli.cli import cli

    def offline(url, timeout=None):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    result = CliRunner().invoke(cli, ["weights", "download", "faster_rcnn_R_50_FPN_3x"])
    assert result.exit_code == 1 and "could not download" in result.output, result.output
    assert "by hand" in result.output and "--weights" not in result.output


def test_download_checks_then_renames_and_records(home, monkeypatch, checkpoint_bytes):
    spec = replace(REGISTRY["faster_rcnn_R_50_FPN_1x"], sha256=None)
    asked = _serve(monkeypatch, checkpoint_bytes)
    checked = []
    path = download(spec, check=lambda p, s: checked.append((p.name, s)))
    assert asked == [spec.url]
    assert checked and checked[0][0].startswith(".") and ".part" in checked[0][0]
    assert checked[0][1] == spec  # checked as that entry's checkpoint
    assert path == home / spec.file_name and path.read_bytes() == checkpoint_bytes
    digest = hashlib.sha256(checkpoint_bytes).hexdigest()
    assert cache.recorded_sha256(path) == digest
    assert [e.status for e in verify_cached([spec.name])] == ["ok"]
    path.write_bytes(checkpoint_bytes[:-1] + b"\x00")
    entry = verify_cached([spec.name])[0]
    assert entry.status == "mismatch" and "recorded" in entry.detail


def test_download_failing_its_check_leaves_nothing(home, monkeypatch):
    _serve(monkeypatch, b"not a checkpoint")
    spec = replace(REGISTRY["faster_rcnn_R_50_FPN_1x"], sha256=None)

    def check(path, spec):
        raise ValueError("does not load")

    with pytest.raises(WeightsDownloadError, match=r"does not load \(does not load\): not a "):
        download(spec, check=check)
    assert not list(home.iterdir())


def test_published_digest_mismatch_is_refused(home, monkeypatch, checkpoint_bytes):
    _serve(monkeypatch, checkpoint_bytes)
    spec = REGISTRY["faster_rcnn_R_50_FPN_3x"]  # has a published sha256 the bytes do not match
    with pytest.raises(WeightsDownloadError, match="does not match the published"):
        download(spec)
    assert not list(home.iterdir())
    with pytest.raises(WeightsDownloadError, match="does not start with the published 258fb6c6"):
        download(REGISTRY["torchvision_fasterrcnn_resnet50_fpn"])


def test_load_backbone_downloads_a_missing_name_once(home, monkeypatch, checkpoint_bytes):
    digest = hashlib.sha256(checkpoint_bytes).hexdigest()
    monkeypatch.setitem(
        REGISTRY, "faster_rcnn_R_50_FPN_3x",
        replace(REGISTRY["faster_rcnn_R_50_FPN_3x"], sha256=digest),
    )  # fmt: skip
    asked = _serve(monkeypatch, checkpoint_bytes)
    model = fpncli.load_backbone("faster_rcnn_R_50_FPN_3x")
    assert model.weights_info.name == "faster_rcnn_R_50_FPN_3x"
    assert model.weights_info.sha256 == digest and not model.weights_info.random
    fpncli.load_backbone("faster_rcnn_R_50_FPN_3x")
    assert len(asked) == 1  # cached the second time


def test_a_cached_file_that_changed_is_refused(home, monkeypatch, checkpoint_bytes):
    spec = replace(REGISTRY["faster_rcnn_R_50_FPN_1x"], sha256=None)
    monkeypatch.setitem(REGISTRY, spec.name, spec)
    _serve(monkeypatch, checkpoint_bytes)
    path = download(spec)
    cache.record_sha256(path, "0" * 64)  # as if the file had been replaced after download
    with pytest.raises(ValueError, match="changed since it was downloaded"):
        fpncli.load_backbone(spec.name)


def test_a_short_download_is_refused(home, monkeypatch, checkpoint_bytes):
    class Short(_Response):
        def __init__(self, data):
            super().__init__(data[: len(data) // 2])
            self.headers = {"Content-Length": str(len(data))}

    monkeypatch.setattr(
        urllib.request, "urlopen", lambda url, timeout=None: Short(checkpoint_bytes)
    )
    spec = replace(REGISTRY["faster_rcnn_R_50_FPN_1x"], sha256=None)
    with pytest.raises(WeightsDownloadError, match=r"was cut short \(\d+ of \d+ bytes\)"):
        download(spec)
    assert not list(home.iterdir())


def test_a_hand_placed_file_is_checked_against_the_published_digest(home, checkpoint_bytes):
    spec = REGISTRY["faster_rcnn_R_50_FPN_3x"]  # published sha256; the seeded bytes differ
    path = cache.cached_path(spec)
    home.mkdir()
    path.write_bytes(checkpoint_bytes)  # as the offline error says: put it there by hand
    with pytest.raises(ValueError, match="does not match the published") as info:
        fpncli.load_backbone(spec.name)
    message = str(info.value)
    assert str(path) in message and "delete it" in message and "\n" not in message
    assert cache.recorded_sha256(path) is None  # nothing recorded for a refused file


def test_a_hand_placed_file_that_matches_is_recorded_on_first_use(
    home, monkeypatch, checkpoint_bytes
):
    digest = hashlib.sha256(checkpoint_bytes).hexdigest()
    published = replace(REGISTRY["faster_rcnn_R_50_FPN_3x"], sha256=digest)
    unpublished = replace(REGISTRY["faster_rcnn_R_50_FPN_1x"], sha256=None)
    home.mkdir()
    for spec in (published, unpublished):
        monkeypatch.setitem(REGISTRY, spec.name, spec)
        cache.cached_path(spec).write_bytes(checkpoint_bytes)
        model = fpncli.load_backbone(spec.name)
        assert model.weights_info.name == spec.name and model.weights_info.sha256 == digest
        assert cache.recorded_sha256(cache.cached_path(spec)) == digest


@pytest.mark.parametrize("sidecar", [b"", b"\xff\xfe", b"z" * 64 + b"  model.pkl\n"])
def test_a_damaged_sidecar_counts_as_none_and_is_recorded_again(
    home, monkeypatch, checkpoint_bytes, sidecar
):
    digest = hashlib.sha256(checkpoint_bytes).hexdigest()
    spec = replace(REGISTRY["faster_rcnn_R_50_FPN_1x"], sha256=None)
    monkeypatch.setitem(REGISTRY, spec.name, spec)
    home.mkdir()
    path = cache.cached_path(spec)
    path.write_bytes(checkpoint_bytes)
    cache._sidecar(path).write_bytes(sidecar)
    assert cache.recorded_sha256(path) is None
    assert cache.cache_state(spec).status == "cached"
    model = fpncli.load_backbone(spec.name)  # as extract --weights NAME: loads, records again
    assert model.weights_info.sha256 == digest and cache.recorded_sha256(path) == digest


def test_a_folder_or_fifo_is_named_as_such_not_missing(tmp_path):
    import os

    fifo = tmp_path / "weights.pkl"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match=r"weights\.pkl: not a regular file \(a FIFO\)"):
        resolve_weights(str(fifo))  # never opened: no hang
    with pytest.raises(ValueError, match=r"not a regular file \(a folder\)"):
        resolve_weights(str(tmp_path))
    with pytest.raises(ValueError, match=r"/dev/zero: not a regular file \(a character device\)"):
        resolve_weights("/dev/zero")


def test_verify_checks_a_hand_placed_unpublished_file_before_recording_it(home, monkeypatch):
    """A file no published sha256 vouches for had its digest recorded whatever it held."""
    unpublished = replace(REGISTRY["faster_rcnn_R_50_FPN_1x"], sha256=None)
    published = replace(
        REGISTRY["faster_rcnn_R_50_FPN_3x"], sha256=hashlib.sha256(b"x").hexdigest()
    )
    home.mkdir()
    for spec in (unpublished, published):
        monkeypatch.setitem(REGISTRY, spec.name, spec)
        cache.cached_path(spec).write_bytes(b"x")
    checked = []

    def refuse(path, spec):
        checked.append(path.name)
        raise ValueError("not a checkpoint")

    entries = {e.name: e for e in verify_cached([unpublished.name, published.name], check=refuse)}
    assert entries[unpublished.name].status == "damaged"
    assert "does not load as a checkpoint (not a checkpoint)" in entries[unpublished.name].detail
    assert cache.recorded_sha256(cache.cached_path(unpublished)) is None
    assert entries[published.name].status == "unrecorded"  # the published digest vouches
    assert checked == [unpublished.file_name]
    entry = verify_cached([unpublished.name], check=lambda path, spec: None)[0]
    assert entry.status == "unrecorded" and cache.recorded_sha256(cache.cached_path(unpublished))
    assert verify_cached([unpublished.name], check=refuse)[0].status == "ok"  # recorded: as is
    cache.cached_path(unpublished).write_bytes(b"")
    entry = verify_cached([unpublished.name])[0]  # the size, as cache_state judges it
    assert entry.status == "damaged" and entry.detail.startswith("0 bytes")


def test_a_hand_placed_file_that_does_not_load_gets_no_digest_recorded(home, monkeypatch):
    spec = replace(REGISTRY["faster_rcnn_R_50_FPN_1x"], sha256=None)
    monkeypatch.setitem(REGISTRY, spec.name, spec)
    home.mkdir()
    path = cache.cached_path(spec)
    path.write_bytes(b"junk, not a checkpoint")
    with pytest.raises(ValueError, match="not a readable .pkl checkpoint") as info:
        fpncli.load_backbone(spec.name)
    assert cache.recorded_sha256(path) is None  # else weights verify would call it ok
    assert str(info.value).startswith(f"{path}: ")  # the cached file, and how to replace it
    assert str(info.value).endswith(f"; delete it and run 'fpncli weights download {spec.name}'")


def test_a_checkpoint_of_another_architecture_is_not_taken_for_the_entry(
    home, monkeypatch, checkpoint_bytes
):
    """An R-50 file where the R-101 entry (no published sha256) goes was checked with the
    architecture the file shows: download saved it and recorded its sha256, verify said ok, and
    extract then failed "missing keys ... (255 in all)", naming neither the file nor a fix."""
    from click.testing import CliRunner

    from fpncli.cli import cli

    name = "faster_rcnn_R_101_FPN_3x"  # no published sha256
    path = cache.cached_path(REGISTRY[name])
    _serve(monkeypatch, checkpoint_bytes)  # an R-50's
    runner = CliRunner()
    result = runner.invoke(cli, ["weights", "download", name])
    assert result.exit_code == 1, result.output
    assert (
        f"{name}: the download is not its checkpoint (an R-50 backbone, where {name} is an "
        "R-101: the file of another checkpoint); download it by hand" in result.output
    ), result.output
    assert not list(home.iterdir())  # no file, no sidecar, no temporary file

    path.write_bytes(checkpoint_bytes)  # placed by hand
    result = runner.invoke(cli, ["weights", "verify", name])
    assert result.exit_code == 1, result.output
    assert f"{name}: damaged not the {name} checkpoint ({path}: an R-50 backbone" in result.output
    assert f"rm {path} && fpncli weights download {name}" in result.output
    assert cache.recorded_sha256(path) is None

    cache.record_sha256(path, hashlib.sha256(checkpoint_bytes).hexdigest())  # an older fpncli's
    with pytest.raises(ValueError) as info:
        fpncli.load_backbone(name)
    assert str(info.value) == (
        f"{path}: an R-50 backbone, where {name} is an R-101: the file of another checkpoint; "
        f"delete it and run 'fpncli weights download {name}'"
    )


def test_a_torchvision_checkpoint_is_not_taken_for_a_detectron2_entry(home, monkeypatch, tmp_path):
    """A torchvision file under a Detectron2 name loaded silently with Detectron2's input (BGR,
    its pixel mean, stride_in_1x1=True): a wrong model."""
    from click.testing import CliRunner

    from fpncli.cli import cli
    from fpncli.weights.synthetic import seeded_state_dict, write_torchvision_pth

    write_torchvision_pth(tmp_path / "tv.pth", seeded_state_dict(0))
    data = (tmp_path / "tv.pth").read_bytes()
    name = "faster_rcnn_R_50_FPN_1x"  # no published sha256
    path = cache.cached_path(REGISTRY[name])
    says = (
        f"a checkpoint of format torchvision, where {name} is of format detectron2 (its channel "
        "order, pixel mean and strides would be wrong): the file of another checkpoint"
    )
    _serve(monkeypatch, data)
    result = CliRunner().invoke(cli, ["weights", "download", name])
    assert result.exit_code == 1 and f"not its checkpoint ({says})" in result.output, result.output
    assert not list(home.iterdir())

    path.write_bytes(data)
    cache.record_sha256(path, hashlib.sha256(data).hexdigest())  # as an older fpncli did
    with pytest.raises(ValueError) as info:
        fpncli.load_backbone(name)
    assert str(info.value) == (
        f"{path}: {says}; delete it and run 'fpncli weights download {name}'"
    )


def test_a_cached_file_over_4_gib_is_refused_before_it_is_hashed(home, monkeypatch):
    """weights verify and weights list hashed such a file (18 s for 5 GB) before judging it."""
    from click.testing import CliRunner

    from fpncli.cli import cli

    def no_hashing(path):
        raise AssertionError(f"{path} hashed")

    monkeypatch.setattr(cache, "sha256_file", no_hashing)
    name = "faster_rcnn_R_50_FPN_3x"  # a published sha256: it would be hashed to compare
    home.mkdir()
    path = cache.cached_path(REGISTRY[name])
    with open(path, "wb") as f:  # sparse: nothing written
        f.truncate((4 << 30) + 1)
    says = f"{(4 << 30) + 1} bytes, over 4 GiB, larger than any detection checkpoint"
    runner = CliRunner()
    result = runner.invoke(cli, ["weights", "verify", name])
    assert result.exit_code == 1 and f"{name}: damaged {says}\n" in result.output, result.output
    assert f"rm {path} && fpncli weights download {name}" in result.output
    result = runner.invoke(cli, ["weights", "list"])
    assert result.exit_code == 0, result.output
    assert f"damaged ({says}; delete it and run 'fpncli weights download {name}'): {path}" in (
        result.output
    )
    result = runner.invoke(cli, ["weights", "download", name])
    assert result.exit_code == 1 and f"{name}: damaged {says}\n" in result.output, result.output


def test_a_weights_cache_that_is_a_file_is_named_as_one(tmp_path, monkeypatch):
    """FPNCLI_HOME naming a file gave "cannot create the weights cache ...: [Errno 17] File
    exists", saying neither what is wrong nor what to do."""
    (tmp_path / "homefile").write_bytes(b"")
    for home in (tmp_path / "homefile", tmp_path / "homefile" / "below"):
        monkeypatch.setenv("FPNCLI_HOME", str(home))
        with pytest.raises(WeightsDownloadError) as info:  # as extract --weights NAME runs it
            resolve_weights("faster_rcnn_R_50_FPN_3x")
        assert str(info.value) == (
            f"cannot create the weights cache {home}: {tmp_path / 'homefile'} is a file, not a "
            "folder; move it away or set FPNCLI_HOME to a folder, or use --weights random "
            "('random' in Python)"
        )
    assert (tmp_path / "homefile").read_bytes() == b""


def test_a_damaged_sidecar_of_a_file_that_fails_its_checks_promises_no_record(
    home, monkeypatch, caplog
):
    """The warning said "its digest is recorded again" where the file then failed the published
    sha256 and nothing was recorded."""
    import logging

    spec = REGISTRY["faster_rcnn_R_50_FPN_3x"]  # a published sha256 these bytes do not have
    home.mkdir()
    path = cache.cached_path(spec)
    path.write_bytes(b"x")
    cache._sidecar(path).write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="fpncli.weights.cache"):
        (entry,) = verify_cached([spec.name])
    assert entry.status == "mismatch" and cache.recorded_sha256(path) is None
    warned = [r.getMessage() for r in caplog.records if "holds no sha256 digest" in r.getMessage()]
    assert warned and all(
        m.endswith("counts as placed by hand: its digest is recorded again once it passes its "
                   "checks") for m in warned
    ), warned  # fmt: skip


def test_a_cached_file_over_4_gib_is_a_damaged_cache_file_to_load_backbone(home, monkeypatch):
    """Loading such a file by its registry name said "refused: ... larger than any detection
    checkpoint; not a weights file?", with no fix, where every other refusal of a cached file
    names the download that replaces it; still before the file is hashed."""
    from fpncli import api

    def no_hashing(path):
        raise AssertionError(f"{path} hashed")

    monkeypatch.setattr(api, "sha256_file", no_hashing)
    name = "faster_rcnn_R_50_FPN_3x"
    home.mkdir()
    path = cache.cached_path(REGISTRY[name])
    with open(path, "wb") as f:  # sparse: nothing written
        f.truncate((4 << 30) + 1)
    with pytest.raises(ValueError) as refused:
        fpncli.load_backbone(name, download=False)
    assert str(refused.value) == (
        f"{path}: damaged: {(4 << 30) + 1} bytes, over 4 GiB, larger than any detection "
        f"checkpoint; delete it and run 'fpncli weights download {name}'"
    )


def test_an_fpncli_file_under_a_registry_name_is_refused_for_what_it_is(home):
    """An fpncli-format file recording the entry's own architecture and input, cached under
    a Detectron2 name, was refused because "its channel order, pixel mean and strides would be
    wrong", which they would not be: it is refused as another file than the published one."""
    from fpncli.model.fpn import build_resnet_fpn_backbone
    from fpncli.weights.layouts import save_fpncli_checkpoint
    from fpncli.weights.registry import DETECTRON2_INPUT

    name = "faster_rcnn_R_50_FPN_1x"
    home.mkdir()
    path = cache.cached_path(REGISTRY[name])
    arch = {"depth": 50, "stride_in_1x1": True}
    save_fpncli_checkpoint(path, build_resnet_fpn_backbone(**arch), arch, DETECTRON2_INPUT)
    with pytest.raises(ValueError) as refused:
        fpncli.load_backbone(name, download=False)
    assert str(refused.value) == (
        f"{path}: a checkpoint of format fpncli, where {name} is of format detectron2: the file "
        f"of another checkpoint; delete it and run 'fpncli weights download {name}'"
    )
