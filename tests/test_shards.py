"""``--format wds`` on the local engine: tar shards, the Parquet index, resume, a hard kill,
``memory://`` output, ``show --key``; and that a shard reads with tarfile + np.load alone."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from fpncli.cli import cli

pq = pytest.importorskip("pyarrow.parquet", reason="--format wds needs pyarrow (fpncli[wds])")
pytest.importorskip("fsspec", reason="--format wds needs fsspec (fpncli[wds])")

SMALL = ["--weights", "random", "--min-size", "64", "--max-size", "96", "--workers", "1"]


def _images(folder: Path, count: int, bad: bool = False) -> Path:
    rng = np.random.RandomState(0)
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        size = (48, 40) if i % 2 else (40, 56)
        name = folder / ("sub" if i == 0 else "") / f"img.{i}.png"  # a dot in the stem, a subfolder
        Image.fromarray(rng.randint(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(name)
    if bad:
        (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return folder


def _run(args, **kwargs):
    return CliRunner().invoke(cli, ["extract", *args, *SMALL], **kwargs)


def _tar_members(out: Path) -> dict[str, dict[str, bytes]]:
    """shard name -> {member name: bytes}, read with tarfile alone."""
    shards = {}
    for tar_path in sorted(out.glob("shard-*.tar")):
        with tarfile.open(tar_path) as tar:
            shards[tar_path.name] = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    return shards


def _one_image_shards(tmp_path_factory, *options: str) -> Path:
    base = tmp_path_factory.mktemp("one-image-shards")
    out = base / "out"
    result = _run([str(_images(base / "in", 1)), "-o", str(out), "--format", "wds", *options])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def one_image_shards(tmp_path_factory):
    """``_images(IN, 1)`` (the image ``sub/img%2E0``) extracted once to a tar shard with the
    default outputs, as ``OUT`` (its inputs in ``OUT/../in``): for tests that read it or damage
    a copy of it, each of which extracted it anew before. Tests must not modify it."""
    return _one_image_shards(tmp_path_factory)


@pytest.fixture(scope="module")
def one_bare_record(tmp_path_factory):
    """As ``one_image_shards``, without heatmaps and overview: a record of ``.npy`` members and
    its manifest alone. Tests must not modify it."""
    return _one_image_shards(tmp_path_factory, "--no-heatmaps", "--no-overview")


def test_wds_shards_and_index_match_folder_mode(tmp_path):
    inputs = _images(tmp_path / "in", 4, bad=True)
    files, wds = tmp_path / "files", tmp_path / "wds"
    assert _run([str(inputs), "-o", str(files)]).exit_code == 1  # the broken file
    result = _run([str(inputs), "-o", str(wds), "--format", "wds", "--shard-size", "700KB"])
    assert result.exit_code == 1
    assert "broken.jpg" in result.output and "done 4" in result.output

    index = pq.read_table(wds / "index.parquet").to_pylist()
    keys = ["broken", "img%2E1", "img%2E2", "img%2E3", "sub/img%2E0"]  # dots written %2E
    assert sorted(r["key"] for r in index) == keys
    failed = [r for r in index if r["status"] == "failed"]
    assert [r["key"] for r in failed] == ["broken"] and "unreadable image" in failed[0]["error"]
    shards = _tar_members(wds)
    assert len(shards) >= 2  # the size target split them
    seen = []
    for row in (r for r in index if r["status"] == "ok"):
        members = shards[row["shard"]]
        own = sorted(n for n in members if n.startswith(row["key"] + "."))
        assert sorted(row["members"]) == own
        manifest = json.loads(members[f"{row['key']}.json"])
        folder = files / row["key"].replace("%2E", ".")
        assert manifest["levels"] == json.loads((folder / "manifest.json").read_text())["levels"]
        for level in ("p2", "p3", "p4", "p5", "p6"):
            array = np.load(io.BytesIO(members[f"{row['key']}.{level}.npy"]))
            np.testing.assert_array_equal(array, np.load(folder / f"{level}.npy"))
            assert row[f"{level}_shape"] == list(array.shape)
            assert row[f"{level}_max"] == pytest.approx(manifest["levels"][level]["max"])
        assert row["dtype"] == "float32" and row["source"].endswith(".png")
        seen.append(row["key"])
    assert len(seen) == len(set(seen)) == 4
    assert not list(wds.glob("*.partial*"))
    # readable with tarfile and numpy alone: neither fpncli nor ray importable
    code = (
        "import sys, tarfile, io, json; sys.modules['fpncli'] = sys.modules['ray'] = None\n"
        "import numpy as np\n"
        f"tar = tarfile.open({str(wds / index[1]['shard'])!r})\n"
        f"key = {index[1]['key']!r}\n"
        "a = np.load(io.BytesIO(tar.extractfile(key + '.p3.npy').read()))\n"
        "m = json.loads(tar.extractfile(key + '.json').read())\n"
        "assert list(a.shape) == m['levels']['p3']['shape'], (a.shape, m)\n"
        "print(a.dtype, a.shape)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, env={"PATH": os.environ["PATH"]})  # fmt: skip
    assert done.returncode == 0 and done.stdout.startswith("float32 (1, 256"), done.stderr


def test_wds_resume_skips_ok_keys_and_retries_failures(tmp_path):
    inputs = _images(tmp_path / "in", 3, bad=True)
    out = tmp_path / "out"
    _run([str(inputs), "-o", str(out), "--format", "wds"])
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tar")}
    result = _run([str(inputs), "-o", str(out), "--format", "wds"])
    assert "done 0, skipped 3" in result.output and result.exit_code == 1  # broken retried
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tar")} == before
    assert len(pq.read_table(out / "index.parquet")) == 4  # one row per input
    other = _run([str(inputs), "-o", str(out), "--format", "wds", "--dtype", "float16"])
    assert other.exit_code == 1 and "other weights or options" in other.output
    redo = _run([str(inputs), "-o", str(out), "--format", "wds", "--dtype", "float16",
                 "--overwrite"])  # fmt: skip
    assert "done 3" in redo.output and not set(p.name for p in out.glob("shard-*")) & set(before)


def test_wds_killed_run_resumes_with_each_key_in_one_shard(tmp_path):
    """A hard kill (os._exit, as SIGKILL) mid-shard, then the same command: complete, no key
    in two shards, the shards committed before the kill untouched."""
    inputs = _images(tmp_path / "in", 5)
    out = tmp_path / "out"
    args = ["extract", str(inputs), "-o", str(out), "--format", "wds", "--shard-size", "1B"]
    env = {**os.environ, "FPNCLI_TEST_CRASH_AFTER": "3", "PYTHONPATH": os.getcwd()}
    killed = subprocess.run([sys.executable, "-m", "fpncli", *args, *SMALL, "--batch-size", "2"],
                            env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert killed.returncode == 75, killed.stderr
    committed = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tar")}
    assert 1 <= len(committed) <= 3 and not (out / "index.parquet").exists()
    # a shard renamed but not yet indexed when the kill came: it must not survive as a duplicate
    orphan = sorted(committed)[0]
    (out / "_index" / f"part-{orphan[:-4]}.parquet").unlink()
    result = CliRunner().invoke(cli, args[:-2] + SMALL, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    keys = [n.split(".")[0] for m in _tar_members(out).values() for n in m if n.endswith(".json")]
    assert sorted(keys) == ["img%2E1", "img%2E2", "img%2E3", "img%2E4", "sub/img%2E0"]
    index = pq.read_table(out / "index.parquet").to_pylist()
    assert sorted(r["key"] for r in index if r["status"] == "ok") == sorted(keys)
    for name, mtime in committed.items():
        if name != orphan:
            assert (out / name).stat().st_mtime_ns == mtime  # not rewritten


def test_wds_index_says_which_levels_each_record_holds(tmp_path):
    """``--levels stem,res3,p4``: the index has a ``levels`` column and shape/stat columns for the
    bottom-up stages too (null where absent); ``show --key --level all`` draws what is there; an
    index part written before these columns existed still reads."""
    import fsspec

    from fpncli.io.shard_index import read_index

    inputs, out = _images(tmp_path / "in", 2), tmp_path / "out"
    args = [str(inputs), "-o", str(out), "--format", "wds", "--levels", "stem,res3,p4"]
    result = _run([*args, "--no-heatmaps", "--no-overview"])
    assert result.exit_code == 0, result.output
    members = {n: b for m in _tar_members(out).values() for n, b in m.items()}
    for row in pq.read_table(out / "index.parquet").to_pylist():
        assert row["levels"] == ["stem", "res3", "p4"]
        manifest = json.loads(members[f"{row['key']}.json"])
        for level in row["levels"]:
            array = np.load(io.BytesIO(members[f"{row['key']}.{level}.npy"]))
            assert row[f"{level}_shape"] == list(array.shape)
            assert row[f"{level}_max"] == pytest.approx(manifest["levels"][level]["max"])
        assert row["stem_shape"][1] == 64 and row["res3_shape"][1] == 512
        assert row["p2_shape"] is None and row["res5_min"] is None
    saved = tmp_path / "all.png"
    shown = CliRunner().invoke(cli, ["show", str(out), "--key", "img%2E1", "--level", "all",
                                     "--save", str(saved)])  # fmt: skip
    assert shown.exit_code == 0, shown.output
    assert Image.open(saved).size[0] > 0
    part = next((out / "_index").glob("part-*.parquet"))
    old = pq.read_table(part)
    old = old.drop_columns(["levels"] + [c for c in old.column_names if c.startswith("stem_")])
    pq.write_table(old, part)  # as an earlier fpncli wrote it
    rows = read_index(fsspec.filesystem("file"), str(out)).to_pylist()
    assert len(rows) == 2 and [r["levels"] is None for r in rows].count(True) == old.num_rows


def test_wds_to_memory_url_and_show_key(tmp_path, monkeypatch):
    import fsspec

    inputs = _images(tmp_path / "in", 2)
    url = "memory://fpncli-test/out"
    result = _run([str(inputs), "-o", url, "--format", "wds", "--no-heatmaps", "--no-overview"])
    assert result.exit_code == 0, result.output
    fs = fsspec.filesystem("memory")
    assert len(fs.glob("/fpncli-test/out/shard-*.tar")) == 1
    with fs.open("/fpncli-test/out/index.parquet", "rb") as f:
        assert pq.read_table(f).column("status").to_pylist() == ["ok", "ok"]
    monkeypatch.chdir(tmp_path)
    shown = CliRunner().invoke(cli, ["show", url, "--key", "img%2E1", "--level", "p3"])
    assert shown.exit_code == 0, shown.output
    assert Image.open(tmp_path / "fpn_show_img%2E1_p3.png").size[0] > 0
    missing = CliRunner().invoke(cli, ["show", url, "--key", "nope"])
    assert missing.exit_code == 1 and "no image with key 'nope'" in missing.output
    lacking = CliRunner().invoke(cli, ["show", url, "--key", "img%2E1", "--level", "res5"])
    assert lacking.exit_code == 2, lacking.output  # a --level it lacks: a usage error
    assert lacking.output.startswith("Error: Invalid value for '--level': img%2E1 in shard-")
    assert "has no res5 tensor (it has p2, p3, p4, p5, p6) (see 'cli show --help')" in (
        lacking.output
    )


def test_show_key_of_a_record_without_the_default_level_shows_its_first_level(tmp_path):
    """``show OUT --key K`` with no --level, of a record extracted without p2, was a usage error
    about --level (which was not given): it now draws the first level the record saved, and
    says so."""
    inputs = _images(tmp_path / "in", 2)
    url = "memory://fpncli-test/p3-only"
    result = _run([str(inputs), "-o", url, "--format", "wds", "--levels", "p3", "--no-heatmaps",
                   "--no-overview"])  # fmt: skip
    assert result.exit_code == 0, result.output
    save = tmp_path / "shown.png"
    shown = CliRunner().invoke(cli, ["show", url, "--key", "img%2E1", "--save", str(save)])
    assert shown.exit_code == 0 and save.is_file(), shown.output
    assert ("note: img%2E1 has no p2 tensor: showing p3, the first level it saved (--level "
            "picks another)\n") in shown.output  # fmt: skip
    given = CliRunner().invoke(cli, ["show", url, "--key", "img%2E1", "--level", "p2"])
    assert given.exit_code == 2 and "(it has p3) (see 'cli show --help')" in given.output


def test_files_format_refuses_a_url_and_bad_shard_size(tmp_path):
    result = _run([str(tmp_path), "-o", "s3://bucket/out"])
    assert result.exit_code == 2 and "needs --format wds" in result.output
    result = _run([str(tmp_path), "--format", "wds", "--shard-size", "lots"])
    assert result.exit_code == 2 and "1GB" in result.output


def test_wds_without_pyarrow_says_how_to_install(tmp_path, monkeypatch):
    inputs = _images(tmp_path / "in", 1)
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow -> ImportError
    result = _run([str(inputs), "-o", str(tmp_path / "o"), "--format", "wds"])
    assert result.exit_code == 1
    assert "pip install 'fpncli[wds]'" in result.output and "Traceback" not in result.output


def _show_forged_record(bare_record, tmp_path, monkeypatch, suffix: str, forge) -> str:
    """Copy one image's shard (``one_bare_record``) to ``tmp_path/out``, rewrite the shard with
    its ``suffix`` member replaced by ``forge(bytes)``, and return what ``show --key`` prints
    (it must fail in one line)."""
    out = tmp_path / "out"
    shutil.copytree(bare_record, out)
    ((shard_name, members),) = _tar_members(out).items()
    with tarfile.open(out / shard_name, "w") as tar:  # the same members, one forged
        for name, data in members.items():
            data = forge(data) if name.endswith(suffix) else data
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    key = next(n for n in members if n.endswith(suffix))[: -len(suffix)]
    monkeypatch.chdir(tmp_path)
    shown = CliRunner().invoke(cli, ["show", str(out), "--key", key, "--level", "p3"])
    assert shown.exit_code == 1, shown.output
    assert "Traceback" not in shown.output and len(shown.output.strip().splitlines()) == 1
    return shown.output.replace(f"{key}.json in {out}/{shard_name}", "RECORD")


def test_show_key_refuses_a_forged_npy_member_before_allocating(one_bare_record, tmp_path,
                                                                 monkeypatch):  # fmt: skip
    """A shard member whose header declares far more than it holds is one error line, not a
    huge allocation or a traceback."""
    forged = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        forged, {"descr": "<f4", "fortran_order": False, "shape": (1, 256, 100000, 100000)}
    )
    forged.write(b"\0" * 64)
    output = _show_forged_record(
        one_bare_record, tmp_path, monkeypatch, ".p3.npy", lambda _: forged.getvalue()
    )
    assert "truncated or forged" in output


@pytest.mark.parametrize("edit", [lambda m: m.pop("preprocess"),
                                  lambda m: m["preprocess"].update(scale_x=None)])  # fmt: skip
def test_show_key_names_a_malformed_record_manifest_in_one_line(one_bare_record, tmp_path,
                                                                 monkeypatch, edit):  # fmt: skip
    """A record whose manifest lacks its preprocessing (or has a null scale) is one line naming
    the record, as for a folder (a KeyError's bare "'preprocess'" or a TypeError's traceback
    before)."""

    def forge(data: bytes) -> bytes:
        manifest = json.loads(data)
        edit(manifest)
        return json.dumps(manifest).encode()

    assert "RECORD is malformed" in _show_forged_record(
        one_bare_record, tmp_path, monkeypatch, ".json", forge
    )


@pytest.mark.parametrize("name", ["zz.npy", "../c.p3.npy"])
def test_show_key_names_a_member_the_record_lacks_in_one_line(one_bare_record, tmp_path,
                                                               monkeypatch, name):  # fmt: skip
    """A record whose manifest names a .npy the shard does not hold was "Error: 'zz.npy'" (a
    KeyError's text); report and diff already said the level's .npy is missing."""

    def forge(data: bytes) -> bytes:
        manifest = json.loads(data)
        manifest["levels"]["p3"]["file"] = name
        return json.dumps(manifest).encode()

    output = _show_forged_record(one_bare_record, tmp_path, monkeypatch, ".json", forge)
    assert f".{name} is missing: the record names a member the shard does not hold" in output


def test_find_member_reads_one_key_without_reading_the_shard(tmp_path, monkeypatch):
    """``show --key`` on a big shard: the other images' bytes are seeked over, and the scan
    stops after the key's members, instead of reading the whole tar."""
    import fsspec

    from fpncli.io.shard_index import find_member

    inputs = _images(tmp_path / "in", 3)
    out = tmp_path / "out"
    result = _run([str(inputs), "-o", str(out), "--format", "wds", "--no-heatmaps",
                   "--no-overview"])  # fmt: skip
    assert result.exit_code == 0, result.output
    from fpncli.io import shard_index

    fs = fsspec.filesystem("file")
    (shard_path,) = out.glob("shard-*.tar")
    members = _tar_members(out)[shard_path.name]
    keys = pq.read_table(out / "index.parquet").column("key").to_pylist()
    assert len(keys) == 3
    read = []
    real_open = shard_index.open_shard

    class Counted:  # the shard's file, its reads counted (a local one is not fs.open's)
        def __init__(self, f):
            self.f = f

        def read(self, *args):
            data = self.f.read(*args)
            read.append(len(data))
            return data

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def counting_open(fs, path):
        f, size = real_open(fs, path)
        return Counted(f), size

    monkeypatch.setattr(shard_index, "open_shard", counting_open)  # find_member's
    for key in keys:
        expected = {n[len(key) + 1 :]: b for n, b in members.items() if n.startswith(f"{key}.")}
        read.clear()
        shard, found = find_member(fs, str(out), key)
        assert shard == shard_path.name and found == expected and "p2.npy" in found
        others = sum(len(b) for b in members.values()) - sum(len(b) for b in expected.values())
        # its own members and the headers on the way: not the other images' data
        assert sum(read) >= sum(len(b) for b in expected.values())  # (read through the spy)
        assert sum(read) < sum(len(b) for b in expected.values()) + others / 2, (key, sum(read))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mincore and /proc are Linux's")
def test_a_local_shard_leaves_the_page_cache_as_it_is_written(tmp_path, monkeypatch):
    """As folder mode's large files: each image's members (31 MB here) are flushed and dropped
    from the page cache, so a run of big shards does not fill it."""
    from pagecache import fs_type, resident_pages

    if fs_type(tmp_path) in ("tmpfs", "ramfs", ""):
        pytest.skip("the page cache is this file system's storage")
    inputs = _images(tmp_path / "in", 2)
    for drop, out in (("0", tmp_path / "kept"), ("1", tmp_path / "dropped")):
        monkeypatch.setenv("FPNCLI_DROP_CACHE", drop)
        args = [str(inputs), "-o", str(out), "--format", "wds", "--no-heatmaps", "--no-overview",
                *SMALL, "--min-size", "640", "--max-size", "800"]  # fmt: skip
        result = CliRunner().invoke(cli, ["extract", *args])
        assert result.exit_code == 0, result.output
    (kept,) = (tmp_path / "kept").glob("shard-*.tar")
    (dropped,) = (tmp_path / "dropped").glob("shard-*.tar")
    resident, pages = resident_pages(kept)
    assert pages > 2 * (8 << 20) // 4096
    if resident <= pages // 2:  # written pages stay cached, unless memory pressure took them
        pytest.skip("the page cache dropped the reference shard itself: nothing to compare")
    assert resident_pages(dropped)[0] < pages // 10
    assert _tar_members(tmp_path / "dropped")[dropped.name].keys() == (
        _tar_members(tmp_path / "kept")[kept.name].keys()
    )


def test_show_on_a_wds_folder_without_key_says_to_pass_one(one_bare_record):
    shown = CliRunner().invoke(cli, ["show", str(one_bare_record), "--level", "p3"])
    assert shown.exit_code == 1 and "is a --format wds output: name an image in it with --key" in (
        shown.output
    )


def _dotted_inputs(tmp_path: Path) -> Path:
    """``a.png`` and ``b.v1.png``, a name with a dot in its stem."""
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.png", "b.v1.png"):
        Image.fromarray(np.full((40, 56, 3), 90, np.uint8)).save(src / name)
    return src


def test_diff_matches_dotted_names_between_folder_and_wds_outputs(tmp_path):
    """``b.v1.png`` is the folder ``b.v1`` but the wds key ``b%2Ev1``: diff pairs them."""
    src = _dotted_inputs(tmp_path)
    files, wds = tmp_path / "files", tmp_path / "wds"
    assert _run([str(src), "-o", str(files), "--no-overview"]).exit_code == 0
    assert _run([str(src), "-o", str(wds), "--format", "wds", "--no-overview"]).exit_code == 0
    result = CliRunner().invoke(cli, ["diff", str(wds), str(files), "-o", str(tmp_path / "d"),
                                      "--no-pictures"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "2 of 2 images compared: all 2 compared agree" in result.output


def test_an_object_store_without_its_backend_is_one_line_before_loading(tmp_path):
    url = "nosuchstore://bucket/out"  # fsspec knows no such protocol (as s3:// without s3fs)
    result = _run([str(_images(tmp_path / "in", 1)), "-o", url, "--format", "wds"])
    assert result.exit_code == 1 and "cannot open nosuchstore://bucket/out" in result.output
    assert "Traceback" not in result.output and "--weights random" not in result.output
    for args in (["diff", url, str(tmp_path)], ["show", url, "--key", "k"]):
        other = CliRunner().invoke(cli, args)
        assert other.exit_code == 1 and "cannot open nosuchstore://bucket/out" in other.output


def test_wds_resume_redoes_the_images_of_a_deleted_or_truncated_shard(tmp_path):
    inputs = _images(tmp_path / "in", 3)
    out = tmp_path / "out"
    args = [str(inputs), "-o", str(out), "--format", "wds", "--shard-size", "1B"]  # one each
    assert _run(args).exit_code == 0
    shards = sorted(out.glob("shard-*.tar"))
    assert len(shards) == 3
    shards[0].unlink()
    with open(shards[1], "r+b") as f:
        f.truncate(shards[1].stat().st_size // 3)
    result = _run(args)
    assert result.exit_code == 0, result.output
    assert "done 2, skipped 1" in result.output
    table = pq.read_table(out / "index.parquet").to_pylist()
    assert sorted(r["status"] for r in table) == ["ok"] * 3
    assert all((out / r["shard"]).is_file() for r in table)
    report = CliRunner().invoke(cli, ["report", str(out)])
    assert report.exit_code == 0, report.output


def test_a_shard_deleted_by_hand_says_a_plain_rerun_redoes_its_images(tmp_path):
    """show and report on a root whose shard was deleted advise a plain rerun of the same
    extract command, which redoes that shard's images alone, not --overwrite (every image)."""
    inputs = _images(tmp_path / "in", 3)
    out = tmp_path / "out"
    args = [str(inputs), "-o", str(out), "--format", "wds", "--shard-size", "1B"]  # one each
    assert _run(args).exit_code == 0
    row = pq.read_table(out / "index.parquet").to_pylist()[0]
    (out / row["shard"]).unlink()
    advice = (
        f"{row['shard']}, which the index of {out} names for {row['key']!r}, is gone: restore "
        "it, or rerun the same extract command (without --overwrite) to redo its images"
    )
    save = str(tmp_path / "s.png")
    for command in (["show", str(out), "--key", row["key"], "--save", save], ["report", str(out)]):
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 1 and advice in result.output, result.output
        assert "Traceback" not in result.output
    again = _run(args)
    assert again.exit_code == 0 and "done 1, skipped 2" in again.output, again.output
    shown = CliRunner().invoke(cli, ["show", str(out), "--key", row["key"], "--save", save])
    assert shown.exit_code == 0 and Path(save).is_file(), shown.output


def test_wds_resume_redoes_a_shard_cut_by_less_than_its_tar_headers(tmp_path, monkeypatch):
    """A shard cut inside its second-to-last member still held more than its members' data
    (tar headers and padding are about 1 KB a member): the rerun skipped its image ("already
    complete") and show --key failed on it for ever. Its committed size is checked exactly."""
    inputs = _images(tmp_path / "in", 3)
    out = tmp_path / "out"
    args = [str(inputs), "-o", str(out), "--format", "wds", "--shard-size", "1B"]  # one each
    assert _run(args).exit_code == 0
    row = pq.read_table(out / "index.parquet").to_pylist()[0]
    shard = out / row["shard"]
    with tarfile.open(shard) as tar:
        last_but_one = tar.getmembers()[-2]
    cut = last_but_one.offset_data + last_but_one.size - 100
    assert cut >= row["bytes"]  # what the old check compared: it passed
    os.truncate(shard, cut)
    result = _run(args)
    assert result.exit_code == 0, result.output
    assert "done 1, skipped 2" in result.output
    monkeypatch.chdir(tmp_path)
    shown = CliRunner().invoke(cli, ["show", str(out), "--key", row["key"], "--level", "p3"])
    assert shown.exit_code == 0, shown.output
    again = _run(args)
    assert "done 0, skipped 3" in again.output, again.output


def test_an_interrupted_wds_run_indexes_what_it_committed(tmp_path, monkeypatch, caplog):
    """Ctrl-C after a shard was committed: index.parquet was left as the run before wrote it,
    and show --key said "no image with key" of an image the ledger (report, diff) had. The
    interrupted run rewrites it; show reads the ledger for a key a stale index lacks (a kill)."""
    import fpncli.run.wds

    inputs = _images(tmp_path / "in", 3)
    out = tmp_path / "out"
    args = ["-o", str(out), "--format", "wds", "--shard-size", "1B"]  # a shard per image
    assert _run([str(inputs / "img.1.png"), *args]).exit_code == 0
    stale = (out / "index.parquet").read_bytes()
    real = fpncli.run.wds.run_jobs

    def interrupted(todo, *a, **kw):  # one image written and committed, then Ctrl-C
        real(todo[:1], *a, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(fpncli.run.wds, "run_jobs", interrupted)
    result = _run([str(inputs), *args])
    assert result.exit_code == 130, result.output
    monkeypatch.undo()
    ledger = {r["key"] for r in pq.read_table(out / "_index").to_pylist()}
    assert len(ledger) == 2
    index = pq.read_table(out / "index.parquet").to_pylist()
    assert {r["key"] for r in index if r["status"] == "ok"} == ledger
    (new,) = ledger - {"img%2E1"}
    monkeypatch.chdir(tmp_path)
    for index_bytes in (None, stale):  # as rewritten; as a killed run leaves it
        if index_bytes is not None:
            (out / "index.parquet").write_bytes(index_bytes)
        shown = CliRunner().invoke(cli, ["show", str(out), "--key", new, "--level", "p3"])
        assert shown.exit_code == 0, shown.output
    missing = CliRunner().invoke(cli, ["show", str(out), "--key", "nope"])
    assert missing.exit_code == 1 and "no image with key 'nope'" in missing.output

    def unwritable(*a, **kw):
        raise OSError(28, "No space left on device")

    # best effort: an index that cannot be written is a warning, Ctrl-C still exits 130
    monkeypatch.setattr(fpncli.run.wds, "run_jobs", interrupted)
    monkeypatch.setattr(fpncli.run.wds, "consolidate_index", unwritable)
    with caplog.at_level(logging.WARNING):
        again = _run([str(inputs), *args])
    assert again.exit_code == 130, again.output
    assert "could not rewrite" in caplog.text and "No space left" in caplog.text


def test_an_index_that_cannot_be_rewritten_leaves_the_runs_report_and_log(tmp_path, monkeypatch,
                                                                          caplog):  # fmt: skip
    """index.parquet refused at the end (OUT made read-only mid-run: EACCES on its temporary;
    OUT removed) is a warning: the run's failures, summary and run.json still come, and the
    exit code says an image failed. It was only "Error: [Errno 13] ...", the results unsaid."""
    import fpncli.run.wds

    inputs = _images(tmp_path / "in", 3, bad=True)
    out = tmp_path / "out"

    def refused(fs, root):
        raise PermissionError(13, "Permission denied", f"{root}/index.parquet.partial1234")

    monkeypatch.setattr(fpncli.run.wds, "consolidate_index", refused)
    with caplog.at_level(logging.WARNING):
        result = _run([str(inputs), "-o", str(out), "--format", "wds"])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "Error:" not in result.output
    assert "failed: " in result.output and "broken.jpg" in result.output
    assert "done 3, skipped 0 (already complete), failed 1 of 4" in result.output
    assert "could not rewrite" in caplog.text and "the next run rewrites it" in caplog.text
    log = json.loads((out / "run.json").read_text())
    assert (log["total"], log["done"], len(log["failed"]), log["aborted"]) == (4, 3, 1, None)
    monkeypatch.undo()
    again = _run([str(inputs), "-o", str(out), "--format", "wds"])
    assert "done 0, skipped 3" in again.output, again.output
    assert {r["key"] for r in pq.read_table(out / "index.parquet").to_pylist()} >= {"img%2E1"}


def test_images_of_uncommitted_shards_are_said_left_to_a_rerun(tmp_path, monkeypatch):
    """A shard whose commit fails mid-run (OUT made read-only or removed) is dropped: its images
    are neither done nor failed, and the run says so (stopped early, exit code 1, run.json),
    instead of a summary that does not add up; the rerun redoes them."""
    import fpncli.io.shard_writer as shard_writer

    inputs = _images(tmp_path / "in", 4)
    out = tmp_path / "out"
    args = [str(inputs), "-o", str(out), "--format", "wds", "--shard-size", "2MB"]
    real, calls = shard_writer.write_parquet, []

    def first_refused(fs, path, rows):
        calls.append(path)
        if len(calls) == 1:
            raise PermissionError(13, "Permission denied", f"{path}.partial1234")
        return real(fs, path, rows)

    monkeypatch.setattr(shard_writer, "write_parquet", first_refused)
    result = _run(args)
    assert result.exit_code == 1, result.output
    log = json.loads((out / "run.json").read_text())
    left = log["total"] - log["done"] - len(log["failed"])
    assert left >= 1 and log["total"] == 4, result.output
    said = f"{left} image(s) were written into shards that could not be committed: rerun the same"
    assert f"stopped early: {said}" in result.output and log["aborted"].startswith(said)
    monkeypatch.undo()
    again = _run(args)
    assert again.exit_code == 0 and f"done {4 - log['done']}, skipped {log['done']}" in (
        again.output
    ), again.output


def test_a_garbage_index_part_is_named_in_one_line(one_image_shards, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(one_image_shards, out)
    (part,) = out.glob("_index/part-*.parquet")
    part.write_bytes(b"not parquet at all")
    inputs = one_image_shards.parent / "in"
    for args in (["extract", str(inputs), "-o", str(out), "--format", "wds", *SMALL],
                 ["report", str(out)]):  # fmt: skip
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1 and f"{part.name} is not a readable Parquet index part" in (
            result.output
        ), result.output
        assert "Traceback" not in result.output


def test_a_garbage_consolidated_index_is_read_past_through_the_ledger(tmp_path, caplog):
    """show reads a key through the ledger when index.parquet is damaged, as report does, with
    a warning naming index.parquet (no shard of its own: the next run rebuilds it); with no
    ledger left to read, show and report refuse in one line saying so."""
    inputs = _images(tmp_path / "in", 2)
    out = tmp_path / "out"
    args = [str(inputs), "-o", str(out), "--format", "wds", "--shard-size", "1B"]  # one each
    assert _run(args).exit_code == 0
    key = pq.read_table(out / "index.parquet").column("key")[1].as_py()
    (out / "index.parquet").write_bytes(b"not parquet at all")
    save = str(tmp_path / "s.png")
    show = ["show", str(out), "--key", key, "--save", save]
    with caplog.at_level(logging.WARNING, logger="fpncli"):
        result = CliRunner().invoke(cli, show)
    assert result.exit_code == 0 and Path(save).is_file(), result.output
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        m.startswith(f"{out}/index.parquet is not a readable Parquet index (")
        and m.endswith(": the next run of the extract command rebuilds it from the _index "
                       "ledger (or delete it); reading the _index ledger instead")
        for m in said
    ), said  # fmt: skip
    assert CliRunner().invoke(cli, ["report", str(out)]).exit_code == 0
    again = _run(args)  # index.parquet rebuilt, nothing redone
    assert again.exit_code == 0 and "done 0, skipped 2" in again.output, again.output
    assert pq.read_table(out / "index.parquet").num_rows == 2
    (out / "index.parquet").write_bytes(b"not parquet at all")
    shutil.rmtree(out / "_index")
    for command in (show, ["report", str(out)]):
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert f"{out}/index.parquet is not a readable Parquet index (" in result.output
        assert ": restore it, or extract the images again (there is no _index ledger to " in (
            result.output
        )
        assert "index part" not in result.output and "its shard" not in result.output


@pytest.mark.parametrize("errno_, words", [(24, "Too many open files"),
                                           (13, "Permission denied")])  # fmt: skip
def test_an_index_part_that_cannot_be_read_is_not_called_damaged(tmp_path, monkeypatch, errno_,
                                                                  words):  # fmt: skip
    """A healthy index part that cannot be opened (``ulimit -n`` reached, no read permission)
    is "could not read", not "not a readable Parquet index part: delete it", which would lose
    its shard's rows; the next run, the cause gone, resumes from it."""
    import fpncli.io.shard_index as shard_index

    inputs = _images(tmp_path / "in", 2)
    out = tmp_path / "out"
    assert _run([str(inputs), "-o", str(out), "--format", "wds"]).exit_code == 0
    (part,) = out.glob("_index/part-*.parquet")
    real = shard_index.open_file

    def refused(fs, path, what):
        raise OSError(errno_, os.strerror(errno_), path)

    monkeypatch.setattr(shard_index, "open_file", refused)
    for args in (["extract", str(inputs), "-o", str(out), "--format", "wds", *SMALL],
                 ["report", str(out)]):  # fmt: skip
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1, result.output
        said = f"Error: could not read {part}: {words}"
        if errno_ == 24:  # what to do about it, with the command's own options
            said += ": raise the limit on open files (ulimit -n 4096, say)"
            said += ", or give fewer --workers/--writers" if args[0] == "extract" else ""
        assert result.output.splitlines()[-1] == said
    monkeypatch.setattr(shard_index, "open_file", real)
    again = _run([str(inputs), "-o", str(out), "--format", "wds"])
    assert again.exit_code == 0 and "done 0, skipped 2" in again.output, again.output


def test_an_index_part_with_a_damaged_page_is_still_called_damaged(tmp_path):
    """pyarrow says a damaged page with an OSError of its own (no errno): bad content, so the
    advice to delete the part stays."""
    import fsspec
    import pyarrow as pa

    from fpncli.io.shard_index import read_index

    (tmp_path / "_index").mkdir()
    part = tmp_path / "_index" / "part-shard-0123abcd.parquet"
    pq.write_table(pa.table({"key": [f"k{i}" for i in range(100)], "status": ["ok"] * 100}), part)
    data = part.read_bytes()
    part.write_bytes(data[:20] + b"\xff" * 60 + data[80:])  # the footer intact, a page not
    with pytest.raises(ValueError, match=r"part-shard-0123abcd.parquet is not a readable .*: "
                                         r"delete it and rerun"):  # fmt: skip
        read_index(fsspec.filesystem("file"), str(tmp_path))


#: reads OUT's index with one file descriptor free: pyarrow imports pyarrow.dataset on its first
#: read_table, which then needs a second one while the part is open
READ_WITH_ONE_FREE_FD = """
import os, resource, sys
import fsspec
from fpncli.io.shard_index import read_index

fs = fsspec.filesystem("file")
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
taken = []
try:
    while True:
        taken.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    os.close(taken.pop())
print(len(read_index(fs, sys.argv[1])))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="sets RLIMIT_NOFILE")
def test_reading_the_index_needs_no_import_while_a_part_is_open(tmp_path):
    """pyarrow's read_table imports pyarrow.dataset on its first call: under a tight ``ulimit
    -n`` that import failed while the part was open, and the healthy part was called damaged.
    read_index imports it first."""
    import fpncli

    inputs = _images(tmp_path / "in", 2)
    out = tmp_path / "out"
    assert _run([str(inputs), "-o", str(out), "--format", "wds"]).exit_code == 0
    root = Path(fpncli.__file__).resolve().parents[1]  # this checkout
    env = dict(os.environ, PYTHONPATH=str(root))
    done = subprocess.run([sys.executable, "-c", READ_WITH_ONE_FREE_FD, str(out)], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2"


def _forge_index(out: Path, edit, consolidated: bool = True) -> None:
    """Rewrite every index part (and ``index.parquet``) with ``edit(rows)`` applied."""
    import pyarrow as pa

    paths = sorted(out.glob("_index/part-*.parquet"))
    for path in paths + ([out / "index.parquet"] if consolidated else []):
        table = pq.read_table(path)
        rows = table.to_pylist()
        edit(rows)
        pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)


def test_wds_resume_never_removes_a_file_an_index_row_names_outside_out(tmp_path, caplog):
    """A forged ledger row whose shard is ``../victim.txt`` and longer than that file: the row
    is ignored with a warning and its image redone (the resume deleted the file as a truncated
    shard before)."""
    inputs = _images(tmp_path / "in", 2)
    out, victim = tmp_path / "out", tmp_path / "victim.txt"
    args = [str(inputs), "-o", str(out), "--format", "wds"]
    assert _run(args).exit_code == 0
    victim.write_text("keep me")
    _forge_index(out, lambda rows: rows[0].update(shard="../victim.txt", bytes=10**12))
    with caplog.at_level(logging.WARNING):
        result = _run(args)
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "keep me"
    assert "'../victim.txt' is not a shard name" in caplog.text
    assert "done 1, skipped 1" in result.output


def test_wds_resume_never_removes_another_tools_shard_an_index_row_names(tmp_path, caplog):
    """A forged ledger row whose shard is ``shard-000000.tar``, another tool's shard beside
    fpncli's in OUT, longer than that file: fpncli names shards ``shard-<16 hex>.tar``, so the
    row is ignored with a warning and its image redone (any hex digits passed for a shard's
    name, and the resume deleted that file as a truncated shard of its own)."""
    inputs = _images(tmp_path / "in", 2)
    out = tmp_path / "out"
    args = [str(inputs), "-o", str(out), "--format", "wds"]
    assert _run(args).exit_code == 0
    theirs = _foreign_shard(out / "shard-000000.tar")
    _forge_index(out, lambda rows: rows[0].update(shard="shard-000000.tar", bytes=10**12))
    with caplog.at_level(logging.WARNING):
        result = _run(args)
    assert result.exit_code == 0, result.output
    assert (out / "shard-000000.tar").read_bytes() == theirs
    assert "'shard-000000.tar' is not a shard name" in caplog.text
    assert "done 1, skipped 1" in result.output


def test_a_forged_index_part_is_kept_and_named_once_per_run(tmp_path, caplog):
    """A part with a forged row stays on disk (fpncli deletes only files it wrote), and each
    run or report names it in one warning that says to delete it (a run warned twice, planning
    and consolidating, and did not say what to do); once deleted, its shard's images are
    redone and the warning is gone."""
    inputs = _images(tmp_path / "in", 2)
    out = tmp_path / "out"
    args = [str(inputs), "-o", str(out), "--format", "wds"]
    assert _run(args).exit_code == 0
    _forge_index(out, lambda rows: rows[0].update(shard="../victim.txt"), consolidated=False)
    (part,) = out.glob("_index/part-*.parquet")
    for command in (["extract", *args, *SMALL], ["extract", *args, *SMALL], ["report", str(out)]):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            result = CliRunner().invoke(cli, command)
        assert result.exit_code == 0, result.output
        warned = [r.getMessage() for r in caplog.records if "ignoring" in r.getMessage()]
        assert len(warned) == 1 and f"{part}: ignoring 1 of its rows" in warned[0], warned
        assert "delete this one to stop this warning" in warned[0]
        assert part.is_file()
    part.unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        result = _run(args)
    assert result.exit_code == 0 and "done 1, skipped 1" in result.output, result.output
    assert "ignoring" not in caplog.text
    assert len(pq.read_table(out / "index.parquet")) == 2


def test_read_index_leaves_out_rows_fpncli_cannot_have_written(tmp_path, caplog):
    """Null or path-like keys, statuses other than ok/failed, shards that are not a shard's
    name as fpncli gives it, and a part without the index's columns: left out, one warning per
    part."""
    import fsspec
    import pyarrow as pa

    from fpncli.io.shard_index import read_index

    good = {"key": "sub/a", "status": "ok", "shard": "shard-0123456789abcdef.tar", "bytes": 1}
    forged = [{"key": None}, {"key": ""}, {"key": "../escaped/a"}, {"key": "/etc/a"},
              {"key": "sub//a"}, {"key": "sub/./a"}, {"key": "a\0b"}, {"status": None},
              {"status": "done"}, {"shard": None}, {"shard": "../victim.txt"},
              {"shard": "/tmp/shard-01.tar"}, {"shard": "sub/shard-01.tar"},
              {"status": "failed", "shard": "../x"},
              {"shard": "shard-000000.tar"}]  # another tool's: fpncli's are 16 hex  # fmt: skip
    rows = [good, dict(good, key="b", status="failed", shard=None)]
    rows += [dict(good, **edit) for edit in forged]
    (tmp_path / "_index").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "_index" / "part-shard-0123abcd.parquet")
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "_index" / "part-shard-4567.parquet")
    with caplog.at_level(logging.WARNING):
        kept = read_index(fsspec.filesystem("file"), str(tmp_path)).to_pylist()
    assert [(r["key"], r["status"]) for r in kept] == [("sub/a", "ok"), ("b", "failed")]
    assert "ignoring 15 of its rows" in caplog.text and "ignoring 2 of its rows" in caplog.text


def test_an_index_column_of_another_type_is_one_line_naming_the_part(tmp_path):
    import fsspec
    import pyarrow as pa

    from fpncli.io.shard_index import read_index

    (tmp_path / "_index").mkdir()
    part = tmp_path / "_index" / "part-shard-0123abcd.parquet"
    pq.write_table(pa.table({"key": [["a"]], "status": ["ok"]}), part)
    with pytest.raises(ValueError, match=r"part-shard-0123abcd.parquet is not a readable Parquet"):
        read_index(fsspec.filesystem("file"), str(tmp_path))


@pytest.mark.parametrize("column", ["key", "status"])
def test_a_null_key_or_status_in_the_index_is_left_out_of_report_diff_and_resume(tmp_path, column):
    """A null key (or status) in every index part and index.parquet: report and diff read the
    other images, the resume redoes that image, and later runs go on (a TypeError from sorting
    None with str before, at every run); a part with none of the index's columns reads as no
    rows (report failed on a null path)."""
    import pyarrow as pa

    inputs = _images(tmp_path / "in", 3)
    out = tmp_path / "out"
    args = [str(inputs), "-o", str(out), "--format", "wds"]
    assert _run(args).exit_code == 0
    _forge_index(out, lambda rows: rows[1].update({column: None}))
    report = CliRunner().invoke(cli, ["report", str(out)])
    assert report.exit_code == 0, report.output
    assert "2 of 2 images were extracted" in (out / "report.html").read_text()
    diff = CliRunner().invoke(cli, ["diff", str(out), str(out), "-o", str(tmp_path / "d")])
    assert diff.exit_code == 0 and "2 of 2 images compared" in diff.output, diff.output
    again = _run(args)
    assert again.exit_code == 0 and "done 1, skipped 2" in again.output, again.output
    assert _run(args).exit_code == 0
    assert len(pq.read_table(out / "index.parquet")) == 3
    pq.write_table(pa.table({"x": [1, 2]}), sorted(out.glob("_index/part-*.parquet"))[0])
    report = CliRunner().invoke(cli, ["report", str(out)])
    assert report.exit_code == 0, report.output


def test_diff_never_writes_outside_its_folder_for_a_key_with_dot_dot(tmp_path):
    """A shard and index rewritten so that a key is ``../escaped/img%2E1``: that row is left
    out (diff wrote ``escaped/img%2E1/diff.png`` beside ``-o`` before)."""
    inputs = _images(tmp_path / "in", 3)
    out = tmp_path / "out"
    assert _run([str(inputs), "-o", str(out), "--format", "wds", "--no-overview"]).exit_code == 0
    ((shard_name, members),) = _tar_members(out).items()
    with tarfile.open(out / shard_name, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"../escaped/{name}" if name.startswith("img%2E1.") else name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

    def escape(rows):
        for row in rows:
            if row["key"] == "img%2E1":
                row["key"] = "../escaped/img%2E1"

    _forge_index(out, escape)
    result = CliRunner().invoke(cli, ["diff", str(out), str(out), "-o", str(tmp_path / "d")])
    assert result.exit_code == 0 and "2 of 2 images compared" in result.output, result.output
    assert not (tmp_path / "escaped").exists()


@pytest.mark.parametrize(
    "forge",
    [
        lambda data: b"garbage\n",
        lambda data: bytes(100) + data[100:],
        lambda data: data[: len(data) // 2],
    ],  # fmt: skip
    ids=["garbage", "zeroed-header", "truncated"],
)
def test_show_key_names_a_shard_that_is_not_a_readable_tar(one_image_shards, tmp_path,
                                                           monkeypatch, forge):  # fmt: skip
    """A shard overwritten with garbage, with a zeroed first header or cut in half: one line
    naming it (tarfile.ReadError's traceback before)."""
    out = tmp_path / "out"
    shutil.copytree(one_image_shards, out)
    (shard,) = out.glob("shard-*.tar")
    shard.write_bytes(forge(shard.read_bytes()))
    monkeypatch.chdir(tmp_path)
    shown = CliRunner().invoke(cli, ["show", str(out), "--key", "sub/img%2E0", "--save", "s.png"])
    assert shown.exit_code == 1 and "Traceback" not in shown.output, shown.output
    (line,) = shown.output.strip().splitlines()
    assert line.startswith(f"Error: {shard} is not a readable tar shard ("), line
    assert not (tmp_path / "s.png").exists()


def _unblocked(fifo: Path, run, wait_s: float = 10.0):
    """``run()`` in a thread; if it is still running after ``wait_s`` (blocked opening
    ``fifo``), the FIFO is opened for writing and closed again until it ends, so that a reader
    that waits on it fails the test instead of hanging the suite. Returns ``(run()'s result,
    whether it had to be unblocked)``."""
    import threading
    import time

    done: list = []
    thread = threading.Thread(target=lambda: done.append(run()), daemon=True)
    thread.start()
    thread.join(wait_s)
    blocked = thread.is_alive()
    deadline = time.monotonic() + 60
    while thread.is_alive() and time.monotonic() < deadline:
        try:  # a writer lets each blocked open() return; closing it gives it end of file
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # ENXIO: no reader waiting just now
            pass
        thread.join(0.05)
    assert not thread.is_alive(), f"still blocked on {fifo} after it was unblocked"
    return done[0], blocked


def test_a_fifo_in_place_of_a_shard_is_refused_not_waited_on(sample_shards, tmp_path, monkeypatch):
    """A FIFO where a tar shard should be blocked ``show --key``, ``diff`` and ``report``
    forever in open() (the report's threads past Ctrl-C too): it is not a regular file, and
    its image is refused (show) or listed with the reason (diff, report), the others read."""
    from fpncli.io.catalog import open_extractions

    out = tmp_path / "out"
    shutil.copytree(sample_shards, out)
    found = open_extractions(out)
    key = found.keys()[0]
    fifo = out / found.shard(key)
    fifo.unlink()
    os.mkfifo(fifo)
    monkeypatch.chdir(tmp_path)
    says = f"{fifo}: not a regular file (a FIFO)"
    runs = [
        (["show", str(out), "--key", key, "--save", "s.png"], f"Error: {says}"),
        (["diff", str(sample_shards), str(out), "-o", "d"], f"not compared: {key}: cannot be read"),
        (["report", str(out)], f"Error: outputs of {key} cannot be read, left out: {says}"),
    ]
    for args, line in runs:
        result, blocked = _unblocked(fifo, lambda args=args: CliRunner().invoke(cli, args))
        assert not blocked, f"{args[0]} waited on the FIFO"
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert any(ln.startswith(line) and says in ln for ln in result.output.splitlines()), (
            result.output
        )
    assert (
        "2 of 3 images compared: all 2 compared agree"
        in CliRunner().invoke(cli, ["diff", str(sample_shards), str(out), "-o", "d"]).output
    )
    assert "<h2>Images 1-2 of 2</h2>" in (out / "report.html").read_text()


def test_a_fifo_in_place_of_an_index_part_is_refused_not_waited_on(sample_shards, tmp_path):
    """As a shard: a FIFO named as an ``_index`` part blocked report (and show --key, diff and
    extract's resume) in open(); it is not a readable index part, said in one line."""
    out = tmp_path / "out"
    shutil.copytree(sample_shards, out)
    (out / "index.parquet").unlink()  # the ledger is read then
    part = sorted((out / "_index").glob("part-*.parquet"))[0]
    part.unlink()
    os.mkfifo(part)
    runs = [["report", str(out)], ["show", str(out), "--key", "chelsea"]]
    for args in runs:
        result, blocked = _unblocked(part, lambda args=args: CliRunner().invoke(cli, args))
        assert not blocked, f"{args[0]} waited on the FIFO"
        assert result.exit_code == 1, result.output
        (line,) = result.output.splitlines()
        assert line == (
            f"Error: {part} is not a readable Parquet index part (not a regular file (a FIFO)): "
            "delete it and rerun the extraction (the images of its shard are then redone)"
        ), line


def test_a_member_declaring_more_than_its_shard_holds_is_refused_before_it_is_read(
    one_image_shards, tmp_path, monkeypatch
):
    """A member header forged to declare 10**12 bytes made ``show --key`` allocate them (a
    MemoryError traceback): one line naming the shard and the member; report and diff list
    the image."""
    out = tmp_path / "out"
    shutil.copytree(one_image_shards, out)
    (shard,) = out.glob("shard-*.tar")
    key = "sub/img%2E0"
    with tarfile.open(shard) as tar:
        offset = tar.getmember(f"{key}.p3.npy").offset
    with open(shard, "r+b") as f:  # the size field in base-256, the checksum made right
        f.seek(offset)
        header = bytearray(f.read(512))
        header[124:136] = bytes([0x80]) + (10**12).to_bytes(11, "big")
        header[148:156] = b" " * 8
        header[148:156] = b"%06o\0 " % sum(header)
        f.seek(offset)
        f.write(header)
    monkeypatch.chdir(tmp_path)
    shown = CliRunner().invoke(cli, ["show", str(out), "--key", key, "--level", "p3"])
    assert shown.exit_code == 1 and not isinstance(shown.exception, MemoryError), shown.output
    (line,) = shown.output.strip().splitlines()
    says = f"Error: {shard} is not a readable tar shard (its member {key}.p3.npy declares "
    assert line.startswith(f"{says}1000000000000 bytes at offset "), line
    assert "past its end" in line and "truncated or forged" in line, line
    report = CliRunner().invoke(cli, ["report", str(out)])
    assert report.exit_code == 1 and f"outputs of {key} cannot be read" in report.output
    assert (out / "report.html").is_file()


def test_a_record_manifest_nested_too_deep_is_one_line(one_bare_record, tmp_path, monkeypatch):
    """``[[[[...`` as a record's manifest: Python's JSON parser hits its recursion limit (a
    RecursionError, which is no ValueError); show --key and the catalog say "not JSON"."""
    from fpncli.io.catalog import open_extractions

    output = _show_forged_record(
        one_bare_record, tmp_path, monkeypatch, ".json", lambda _: b"[" * 100_000
    )
    assert output.startswith("Error: ") and output.endswith(
        ".tar is not JSON: re-extract this image\n"
    )
    found = open_extractions(tmp_path / "out")
    (key,) = found.keys()
    with pytest.raises(ValueError, match="is not JSON"):
        found.manifest(key)


def _foreign_shard(path: Path) -> bytes:
    """A WebDataset shard as other tools write it (``shard-000000.tar``), made with tarfile."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("sample0.cls")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"7"))
    return path.read_bytes()


@pytest.mark.parametrize("overwrite", [False, True])
def test_wds_refuses_a_folder_of_someone_elses_shards_and_leaves_it_as_it_was(tmp_path, overwrite):
    """A folder with another tool's ``shard-000000.tar`` or ``index.parquet`` is not fpncli's:
    refused in one line, even with --overwrite, before -o is marked; nothing in it is removed
    (the shard was removed as an interrupted run's before)."""
    inputs = _images(tmp_path / "in", 1)
    dataset, tables = tmp_path / "dataset", tmp_path / "tables"
    shard = _foreign_shard(dataset / "shard-000000.tar")
    tables.mkdir()
    (tables / "index.parquet").write_bytes(b"someone's index")
    for out, name in ((dataset, "shard-000000.tar"), (tables, "index.parquet")):
        before = sorted(p.name for p in out.iterdir())
        args = [str(inputs), "-o", str(out), "--format", "wds"]
        result = _run(args + ["--overwrite"] * overwrite)
        assert result.exit_code == 1, result.output
        assert f"holds {name}, which fpncli did not write" in result.output
        assert "give another -o" in result.output and "Traceback" not in result.output
        assert sorted(p.name for p in out.iterdir()) == before  # no marker, no lock file
    assert (dataset / "shard-000000.tar").read_bytes() == shard
    assert (tables / "index.parquet").read_bytes() == b"someone's index"


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("overwrite", [False, True])
def test_one_output_folder_holds_one_format_either_way(sample_extraction, sample_shards, tmp_path,
                                                       overwrite):  # fmt: skip
    """Shards written beside image folders (or image folders beside shards) were accepted, and
    ``report`` then read one kind only: a run of the other format is refused in one line naming
    the folder and what it holds, --overwrite or not (it redoes only its own format), before
    anything is written; a folder with only the wds marker, or someone else's shard, holds no
    fpncli output of the other format."""
    files, wds = tmp_path / "files", tmp_path / "wds"
    shutil.copytree(sample_extraction, files)
    shutil.copytree(sample_shards, wds)
    before = {files: _tree(files), wds: _tree(wds)}
    photo = str(Path(__file__).resolve().parent.parent / "samples" / "coffee.png")
    cases = [
        (str(files), ["--format", "wds"], f"{files} holds image folders of a --format files "
         "extraction (chelsea/manifest.json)"),
        (f"file://{files}", ["--format", "wds"], f"{files} holds image folders"),
        (str(wds), [], f"{wds} holds a --format wds output (index.parquet)"),
    ]  # fmt: skip
    for out, fmt, message in cases:
        result = _run([photo, "-o", out, *fmt, *["--overwrite"] * overwrite])
        assert result.exit_code == 1, result.output
        assert message in result.output and "give another -o" in result.output, result.output
        assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert {files: _tree(files), wds: _tree(wds)} == before
    from fpncli.io.formats import image_folder, wds_output

    assert (wds_output(wds), image_folder(wds)) == ("index.parquet", None)
    assert (wds_output(files), image_folder(files)) == (None, files / "chelsea")
    theirs, marked = tmp_path / "theirs", tmp_path / "marked"
    _foreign_shard(theirs / "shard-000000.tar")
    assert wds_output(theirs) is None  # not fpncli's: no wds output to refuse a run over
    marked.mkdir()
    (marked / ".fpncli-wds").write_text("marked")
    assert wds_output(marked) is None  # a marked root with nothing in it holds no extraction
    _foreign_shard(marked / "shard-000000.tar")
    assert wds_output(marked) is None  # nor with another tool's shard: not a name fpncli gives
    (marked / "shard-0123456789ab-00ff.tar.partial").write_bytes(b"a live run's")
    assert wds_output(marked) == "shard-0123456789ab-00ff.tar.partial"


PHOTO = str(Path(__file__).resolve().parent.parent / "samples" / "coffee.png")


@pytest.mark.parametrize("first", ["files", "wds"])
def test_a_run_of_the_other_format_that_ended_while_weights_loaded_is_seen(tmp_path, monkeypatch,
                                                                          first):  # fmt: skip
    """-o is checked again once the weights are loaded, as the run takes -o's format lock: a
    run of the other format that passed the first check and then ran whole while this one's
    weights loaded is found by its outputs, and this run is refused in one line."""
    extract_cli = sys.modules["fpncli.cli.extract"]  # (fpncli.cli.extract is the command)
    out = tmp_path / "out"
    out.mkdir()  # empty: both runs' first checks find nothing
    second = "wds" if first == "files" else "files"
    runs, real = [], extract_cli._load_model

    def load_model(*args, **kwargs):  # the second run's; the first runs whole meanwhile
        if not runs:
            runs.append(None)  # (the first run's own load goes straight through)
            runs[0] = _run([PHOTO, "-o", str(out), "--format", first])
        return real(*args, **kwargs)

    monkeypatch.setattr(extract_cli, "_load_model", load_model)
    result = _run([PHOTO, "-o", str(out), "--format", second])
    assert runs[0].exit_code == 0, runs[0].output
    assert result.exit_code == 1, result.output
    (error,) = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert f"Error: {out} holds " in error and "an output folder holds one format" in error
    assert "give another -o" in error and "Traceback" not in result.output
    from fpncli.io.formats import image_folder, wds_output

    held = (image_folder(out) is not None, wds_output(out) is not None)
    assert held == ((True, False) if first == "files" else (False, True))


@pytest.mark.parametrize("held", ["files", "wds", "files-url"])
def test_a_live_run_of_the_other_format_refuses_a_run_until_it_ends(tmp_path, held):
    """Two runs of different formats into one empty -o started at once both found nothing of
    the other's, and both wrote. A run holds -o's format lock for its whole life: the lock held
    here stands for a live run that has written nothing yet, and a run of the other format is
    refused in one line, writing nothing (a ``file://`` -o is locked at its path, ``-url``);
    once the holder has ended, nothing of it is in the way."""
    from fpncli.io.formats import FormatLock, image_folder, wds_output

    held, url = held.removesuffix("-url"), held.endswith("-url")
    other = "wds" if held == "files" else "files"
    out = tmp_path / "out"
    target = out.as_uri() if url else str(out)
    with FormatLock(out, held):  # (made -o)
        refused = _run([PHOTO, "-o", target, "--format", other])
        assert (image_folder(out), wds_output(out)) == (None, None)  # nothing written
    assert refused.exit_code == 1, refused.output
    assert refused.output.splitlines()[-1] == (
        f"Error: {out} is being written by a --format {held} run now; an output folder holds "
        "one format (a report reads one), --overwrite or not: give another -o, or rerun when "
        "that run has ended"
    )
    after = _run([PHOTO, "-o", target, "--format", other])
    assert after.exit_code == 0, after.output


@pytest.mark.parametrize("out_format", ["files", "wds"])
def test_a_run_holds_its_format_lock_while_it_writes_and_not_after(tmp_path, monkeypatch,
                                                                   out_format):  # fmt: skip
    """A run holds -o's lock for its format while its engine runs (here: a run of the other
    format, looking in the middle of it, is refused), and drops it when it ends."""
    import fpncli.run.pipeline
    import fpncli.run.wds
    from fpncli.io.formats import run_lock_held

    module, name = (fpncli.run.pipeline, "run_jobs") if out_format == "files" else (
        fpncli.run.wds, "run_sharded")  # fmt: skip
    real, seen = getattr(module, name), []

    def engine(*args, **kwargs):
        seen.append(run_lock_held(out, out_format))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, engine)
    out = tmp_path / "out"
    result = _run([PHOTO, "-o", str(out), "--format", out_format])
    assert result.exit_code == 0, result.output
    assert seen == [True] and not run_lock_held(out, out_format)


@pytest.mark.parametrize("end", ["finished", "interrupted"])
def test_a_run_that_ended_leaves_nothing_in_the_way_of_the_other_format(tmp_path, monkeypatch,
                                                                        end):  # fmt: skip
    """A marker naming -o's format outlived its run: once a --format files run had finished,
    or was stopped (Ctrl-C) before its first output, and its outputs were removed, a --format
    wds run into that -o was refused. The run's lock goes with it: the wds run goes on."""
    import fpncli.run.pipeline

    out = tmp_path / "out"
    if end == "interrupted":
        monkeypatch.setattr(fpncli.run.pipeline, "run_jobs", _interrupt)
    first = _run([PHOTO, "-o", str(out)])
    assert first.exit_code == (0 if end == "finished" else 130), first.output
    monkeypatch.undo()
    for entry in out.iterdir():  # rm -rf out/*: its dotfiles stay
        if not entry.name.startswith("."):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    second = _run([PHOTO, "-o", str(out), "--format", "wds"])
    assert second.exit_code == 0, second.output
    assert (out / "index.parquet").is_file()


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_a_format_lock_is_shared_by_one_format_and_refuses_the_other(tmp_path):
    """``FormatLock``: runs of one format (``--shard 0/2`` and ``1/2``) hold it together, one of
    the other format is refused while one holds it."""
    from fpncli.io.formats import FormatLock, run_lock_held

    out = tmp_path / "new" / "out"
    with FormatLock(out, "wds"), FormatLock(out, "wds"):  # (made -o)
        assert run_lock_held(out, "wds") and not run_lock_held(out, "files")
        with pytest.raises(ValueError, match=r"being written by a --format wds run now; .* when"):
            FormatLock(out, "files").__enter__()
    assert not run_lock_held(out, "wds")
    with FormatLock(out, "files"):
        pass


def test_a_format_lock_where_flock_is_refused_warns_once_and_goes_on(tmp_path, monkeypatch,
                                                                     caplog):  # fmt: skip
    """Where ``flock`` is refused (ENOLCK on some network filesystems) the run goes on unlocked
    with one warning, and the files still decide: the other format's outputs are refused."""
    import errno
    import fcntl

    from fpncli.io import formats

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    out = tmp_path / "out"
    monkeypatch.setattr(fcntl, "flock", no_locks)
    with caplog.at_level(logging.WARNING), formats.FormatLock(out, "files"):
        pass
    (said,) = [r.getMessage() for r in caplog.records]
    assert said.startswith(f"cannot lock {out / '.fpncli-files.run'} (") and "unlocked" in said
    (out / "index.parquet").write_bytes(b"a --format wds output")
    with pytest.raises(ValueError, match="holds a --format wds output"):
        formats.FormatLock(out, "files").__enter__()


def test_a_run_refused_before_any_image_removes_its_folder_unless_another_run_holds_it(tmp_path):
    """A run that made -o and was refused before any image removes it, its lock file with it
    (``_remove_if_unused``), but not while another run that has written nothing yet holds a
    lock there: that run writes into it."""
    from fpncli.cli.extract_report import _remove_if_unused
    from fpncli.io.formats import FormatLock
    from fpncli.io.markers import mark_output_root

    out = tmp_path / "out"
    mark_output_root(out)
    mine, other = FormatLock(out, "files"), FormatLock(out, "files")
    with mine, other:
        _remove_if_unused(out, mine)
        assert (out / ".fpncli-files.run").is_file() and mine.fd is None
    _remove_if_unused(out, mine)
    assert not out.exists()


def test_a_format_lock_file_that_is_a_symlink_is_never_followed(tmp_path):
    """A lock file that is a symlink (``OUT/.fpncli-files.run -> ../precious.txt``, or one to no
    file) is neither written nor made through: the run is refused in one line that says to
    remove it, the file it points at is as it was and no file is made where it points."""
    out = tmp_path / "out"
    out.mkdir()
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    before = precious.stat()
    (out / ".fpncli-files.run").symlink_to("../precious.txt")
    (out / ".fpncli-wds.run").symlink_to("../made.txt")  # dangling
    for out_format, name in (("files", ".fpncli-files.run"), ("wds", ".fpncli-wds.run")):
        result = _run([PHOTO, "-o", str(out), "--format", out_format])
        assert result.exit_code == 1, result.output
        assert result.output.splitlines()[-1] == (
            f"Error: {out / name} is a symlink, not the empty file fpncli locks there while a "
            "run writes: remove it (a run makes it again)"
        )
    assert precious.read_text() == "keep me" and precious.stat().st_mtime_ns == before.st_mtime_ns
    assert not (tmp_path / "made.txt").exists()


@pytest.mark.parametrize("kind", ["a folder", "a FIFO"])
def test_a_format_lock_file_that_is_not_a_file_refuses_in_one_line(tmp_path, kind):
    """A lock file that is a folder or a FIFO (never waited on), this run's or the other
    format's, is named in one line that says what it is and to remove it."""
    from fpncli.io.formats import FormatLock

    for mine, out_format in ((True, "files"), (False, "wds")):
        out = tmp_path / f"{mine}"
        out.mkdir()
        path = out / ".fpncli-files.run"
        path.mkdir() if kind == "a folder" else os.mkfifo(path)
        said = (
            f"{path} is {kind}, not the empty file fpncli locks there while a run writes: "
            "remove it (a run makes it again)"
        )
        with pytest.raises(ValueError) as refused:
            FormatLock(out, out_format).__enter__()
        assert str(refused.value) == said


def test_a_read_only_format_lock_file_lets_runs_of_its_format_go_on(tmp_path, monkeypatch):
    """A run of the same format needed to open the lock file for writing: another user's
    (``0444`` here; an immutable file alike) refused it. It is opened for reading, which
    ``flock`` takes as well: the run goes on, and still refuses the other format meanwhile."""
    import errno

    from fpncli.io.formats import FormatLock

    out = tmp_path / "out"
    out.mkdir()
    lock = out / ".fpncli-files.run"
    lock.touch()
    lock.chmod(0o444)
    if os.geteuid() == 0:  # root opens it for writing anyway: refuse it as the kernel would
        real = os.open

        def os_open(path, flags, *args, **kwargs):
            if Path(path).name == lock.name and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", os_open)
    with FormatLock(out, "files"):  # another run of that format, live
        result = _run([PHOTO, "-o", str(out)])
        assert result.exit_code == 0, result.output
        with pytest.raises(ValueError, match="being written by a --format files run now"):
            FormatLock(out, "wds").__enter__()
    assert (out / "coffee" / "manifest.json").is_file() and lock.stat().st_size == 0


def test_wds_never_overwrites_an_object_stores_foreign_index(tmp_path):
    """The same on an object store (``memory://``): the run is refused, and the index writer
    itself refuses a root that is not fpncli's."""
    import fsspec

    from fpncli.io.shard_index import consolidate_index

    fs = fsspec.filesystem("memory")
    fs.pipe("/foreign-wds/out/index.parquet", b"someone's index")
    url = "memory://foreign-wds/out"
    result = _run([str(_images(tmp_path / "in", 1)), "-o", url, "--format", "wds"])
    assert result.exit_code == 1 and "holds index.parquet, which fpncli did not write" in (
        result.output
    ), result.output
    with pytest.raises(ValueError, match="not an fpncli output to index"):
        consolidate_index(fs, "/foreign-wds/out")
    assert fs.cat("/foreign-wds/out/index.parquet") == b"someone's index"


def test_an_earlier_versions_root_resumes_and_only_fpncli_files_are_cleaned(tmp_path):
    """A root an earlier version wrote (its ledger, no marker) resumes: a shard without its
    index part and an old-style partial shard are removed and redone, and the root is marked;
    a file fpncli does not name so (``shard-000000.tar``) is left, also by --overwrite."""
    inputs = _images(tmp_path / "in", 2)
    out = tmp_path / "out"
    args = [str(inputs), "-o", str(out), "--format", "wds", "--shard-size", "1B"]  # one each
    assert _run(args).exit_code == 0
    (out / ".fpncli-wds").unlink(missing_ok=True)  # (this version marks its roots)
    orphan = sorted(out.glob("shard-*.tar"))[0]
    (out / "_index" / f"part-{orphan.stem}.parquet").unlink()  # killed before its index part
    old_partial = out / "shard-0123456789abcdef.tar.partial"  # as earlier versions named them
    old_partial.write_bytes(b"half a shard")
    kept = _foreign_shard(out / "shard-000000.tar")
    result = _run(args)
    assert result.exit_code == 0, result.output
    assert "done 1, skipped 1" in result.output
    assert (out / "shard-000000.tar").read_bytes() == kept
    assert not old_partial.exists() and (out / ".fpncli-wds").is_file()
    assert (out / "_index" / f"part-{orphan.stem}.parquet").is_file()  # redone: same digest
    index = pq.read_table(out / "index.parquet").to_pylist()
    assert [r["status"] for r in index] == ["ok", "ok"]
    again = _run(args + ["--overwrite"])
    assert again.exit_code == 0 and "done 2" in again.output, again.output
    assert (out / "shard-000000.tar").read_bytes() == kept
    assert len(list(out.glob("shard-*.tar"))) == 3  # two of fpncli's, and the one it left


def test_wds_keys_are_distinct_for_distinct_paths_and_hold_no_dots():
    """``a.b`` and ``a_b`` were both ``a_b`` (told apart by ``_2`` only within one run):
    ``.``, ``%`` and ``\\`` are escaped, a byte that is not UTF-8 is ``\\xNN``."""
    from fpncli.io.shards import wds_key

    bad = b"x\xff".decode("utf-8", "surrogateescape")
    paths = ["a.b", "a_b", "a%2Eb", "a%b", "sub/img.0", "sub.d/a", ".png", bad, "x\\xff"]
    keys = [wds_key(p) for p in paths]
    assert keys == ["a%2Eb", "a_b", "a%252Eb", "a%25b", "sub/img%2E0", "sub%2Ed/a", "%2Epng",
                    "x\\xff", "x%5Cxff"]  # fmt: skip
    assert len(set(keys)) == len(keys) and not any("." in k for k in keys)


def test_wds_shard_runs_give_a_dotted_and_an_underscored_name_their_own_keys(tmp_path):
    """``a.b.png`` and ``a_b.png`` split by --shard 0/2 and 1/2 into one OUT: both extracted
    (the second run skipped ``a_b.png`` as done, under the same key ``a_b``, before); show
    --key with the path (``a.b``) names the key to give."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.b.png", "a_b.png"):
        Image.fromarray(np.full((40, 48, 3), 90, np.uint8)).save(photos / name)
    out = tmp_path / "out"
    args = [str(photos), "-o", str(out), "--format", "wds", "--no-overview", "--no-heatmaps"]
    for shard in ("0/2", "1/2"):
        result = _run(args + ["--shard", shard])
        assert result.exit_code == 0 and "done 1," in result.output, result.output
    index = pq.read_table(out / "index.parquet").to_pylist()
    sources = {r["key"]: Path(r["source"]).name for r in index if r["status"] == "ok"}
    assert sources == {"a%2Eb": "a.b.png", "a_b": "a_b.png"}
    shown = CliRunner().invoke(cli, ["show", str(out), "--key", "a.b"])
    assert shown.exit_code == 1 and "did you mean 'a%2Eb'" in shown.output, shown.output


def test_wds_refuses_a_key_the_index_holds_for_another_file(tmp_path):
    """``p2/a.png`` and then ``other/a.png`` into one OUT (both key ``a``): the second run is
    refused in one line (it skipped ``other/a.png`` as done before, never extracting it); the
    index still has ``a`` for ``p2/a.png``, whose own rerun skips it."""
    for folder in ("p2", "other"):
        (tmp_path / folder).mkdir()
        Image.fromarray(np.full((40, 48, 3), 90, np.uint8)).save(tmp_path / folder / "a.png")
    out = tmp_path / "out"
    args = ["-o", str(out), "--format", "wds", "--no-overview", "--no-heatmaps"]
    assert _run([str(tmp_path / "p2" / "a.png"), *args]).exit_code == 0
    result = _run([str(tmp_path / "other" / "a.png"), *args])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "1 of these images would take keys that" in result.output
    assert f"'a' is {tmp_path}/p2/a.png, not {tmp_path}/other/a.png" in result.output
    index = pq.read_table(out / "index.parquet").to_pylist()
    assert [(r["key"], r["source"]) for r in index] == [("a", f"{tmp_path}/p2/a.png")]
    again = _run([str(tmp_path / "p2" / "a.png"), *args])
    assert again.exit_code == 0 and "already complete" in again.output, again.output


def _rename_keys(out: Path, rename) -> None:
    """Rewrite every shard's members and every index row with ``rename(key)`` for each key."""
    for shard, members in _tar_members(out).items():
        with tarfile.open(out / shard, "w", format=tarfile.PAX_FORMAT) as tar:
            for name, data in members.items():
                key, suffix = name.split(".", 1)
                info = tarfile.TarInfo(f"{rename(key)}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))

    def edit(rows):
        for row in rows:
            row["key"] = rename(row["key"])
            row["members"] = [f"{rename(row['key'])}.{m.split('.', 1)[1]}" for m in row["members"]]

    _forge_index(out, edit)


def test_an_earlier_versions_keys_resume_show_and_diff(tmp_path):
    """An output of an earlier version (dots became ``_``: ``b_v1``): its images are skipped on
    resume under their old keys (never put in the shards a second time as ``b%2Ev1``), and
    diff pairs them with a folder output's ``b.v1``."""
    src = _dotted_inputs(tmp_path)
    files, wds = tmp_path / "files", tmp_path / "wds"
    assert _run([str(src), "-o", str(files), "--no-overview"]).exit_code == 0
    args = [str(src), "-o", str(wds), "--format", "wds", "--no-overview"]
    assert _run(args).exit_code == 0
    _rename_keys(wds, lambda key: key.replace("%2E", "_"))
    (wds / ".fpncli-wds").unlink()
    result = _run(args)
    assert result.exit_code == 0 and "already complete" in result.output, result.output
    index = pq.read_table(wds / "index.parquet").to_pylist()
    assert sorted(r["key"] for r in index) == ["a", "b_v1"]
    assert len(list(wds.glob("shard-*.tar"))) == 1
    diff = CliRunner().invoke(cli, ["diff", str(files), str(wds), "-o", str(tmp_path / "d"),
                                    "--no-pictures"])  # fmt: skip
    assert diff.exit_code == 0 and "2 of 2 images compared" in diff.output, diff.output


def test_a_full_disk_mid_shard_counts_only_the_images_in_committed_shards(tmp_path, monkeypatch):
    """The shard being written is dropped when a write fails (before the run hears of it): its
    images were counted done ("5 of 36 done" with 3 in the index), and a rerun redid them."""
    import errno

    from fpncli.io import shard_index, shards

    inputs = _images(tmp_path / "in", 6)
    out = tmp_path / "out"
    real, calls = tarfile.TarFile.addfile, []

    def filling(self, info, fileobj=None):
        calls.append(info.name)
        if sum(n.endswith(".json") for n in calls) > 3:  # the 4th image: the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, info, fileobj)

    monkeypatch.setattr(tarfile.TarFile, "addfile", filling)
    result = _run([str(inputs), "-o", str(out), "--format", "wds", "--shard-size", "1MB",
                   "--writers", "1"])  # fmt: skip
    assert result.exit_code == 1 and "disk full" in result.output, result.output
    fs, root = shards.open_root(str(out))
    kept = [r for r in shard_index.read_index(fs, root).to_pylist() if r["status"] == "ok"]
    assert f"disk full: {len(kept)} of 6 done" in result.output, (len(kept), result.output)
    log = json.loads((out / "run.json").read_text())
    assert log["done"] == len(kept) and log["bytes_written"] == sum(r["bytes"] for r in kept)
    monkeypatch.setattr(tarfile.TarFile, "addfile", real)
    rerun = _run([str(inputs), "-o", str(out), "--format", "wds"])
    assert rerun.exit_code == 0 and f"skipped {len(kept)}" in rerun.output, rerun.output


def _check_counts_of_a_full_disk(result, out: Path, total: int) -> list[dict]:
    """The summary and run.json of a run stopped by a full disk count exactly the images that
    the ledger has ``ok``; no half-written file is left; returns those rows."""
    from fpncli.io import shard_index, shards

    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "Errno" not in result.output, result.output
    fs, root = shards.open_root(str(out))
    kept = [r for r in shard_index.read_index(fs, root).to_pylist() if r["status"] == "ok"]
    assert f"disk full: {len(kept)} of {total} done, rerun" in result.output, result.output
    log = json.loads((out / "run.json").read_text())
    assert log["done"] == len(kept) and log["bytes_written"] == sum(r["bytes"] for r in kept)
    assert {r["shard"] for r in kept} == {p.name for p in out.glob("shard-*")}
    assert not list(out.rglob("*.partial*")), sorted(out.rglob("*"))
    return kept


def _full_disk_at_call(monkeypatch, owner, name: str, call: int, *, ran: bool = False) -> None:
    """``owner.name`` raises ENOSPC at its ``call``-th call (counting from 1) and after; with
    ``ran``, having run (as a close whose last flush fails)."""
    import errno

    real, calls = getattr(owner, name), []

    def filling(*args, **kwargs):
        calls.append(name)
        if len(calls) < call:
            return real(*args, **kwargs)
        if ran:
            real(*args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(owner, name, filling)


def test_a_full_disk_as_a_shard_is_closed_counts_the_committed_images(tmp_path, monkeypatch):
    """A full disk at a shard's commit (its tar's end): the image just added was counted
    dropped, though the run never counted it written ("0 of 12 done ... -49 bytes written",
    though the first shard was committed)."""
    inputs = _images(tmp_path / "in", 4)
    out = tmp_path / "out"
    _full_disk_at_call(monkeypatch, tarfile.TarFile, "close", 2, ran=True)  # the 2nd shard
    result = _run([str(inputs), "-o", str(out), "--format", "wds", "--shard-size", "1",
                   "--writers", "1"])  # fmt: skip
    assert len(_check_counts_of_a_full_disk(result, out, 4)) == 1


@pytest.mark.parametrize(
    ("count", "size", "call", "committed"),
    [(3, ["--shard-size", "1"], 2, 1), (2, [], 1, 0)],  # mid-run (the 2nd image's), at the end
)
def test_a_full_disk_as_an_index_part_is_written_stops_the_run_cleanly(
    tmp_path, monkeypatch, count, size, call, committed
):
    """A full disk writing a shard's index part (mid-run, or at the end of the run) ended the
    run with a bare "[Errno 28]": no summary, no run.json, a *.partial file left; the shard
    without its part is removed, its images not counted done."""
    import pyarrow.parquet as pq

    inputs = _images(tmp_path / "in", count)
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        _full_disk_at_call(m, pq, "write_table", call)
        result = _run([str(inputs), "-o", str(out), "--format", "wds", *size, "--writers", "1"])
    assert len(_check_counts_of_a_full_disk(result, out, count)) == committed


def test_a_full_disk_as_index_parquet_is_written_stops_the_run_cleanly(tmp_path, monkeypatch):
    """Every shard committed, then no room for index.parquet: a bare "[Errno 28]" before; now
    the summary says so, and the rerun (nothing left to extract) writes the index."""
    import pyarrow.parquet as pq

    inputs = _images(tmp_path / "in", 2)
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        _full_disk_at_call(m, pq, "write_table", 3)  # the 2 parts, then index.parquet
        result = _run([str(inputs), "-o", str(out), "--format", "wds", "--shard-size", "1",
                       "--writers", "1"])  # fmt: skip
    assert len(_check_counts_of_a_full_disk(result, out, 2)) == 2
    assert not (out / "index.parquet").exists()
    rerun = _run([str(inputs), "-o", str(out), "--format", "wds"])
    assert rerun.exit_code == 0 and "skipped 2" in rerun.output, rerun.output
    assert pq.read_table(out / "index.parquet").num_rows == 2


def test_an_index_part_removed_while_the_index_is_read_is_left_out(tmp_path, monkeypatch):
    """report beside extract --overwrite: a part listed, then removed before it was opened,
    failed the whole report with 'not a readable Parquet index part: delete it'."""
    from fpncli.io import shard_index, shards

    out = tmp_path / "out"
    assert (
        _run([str(_images(tmp_path / "in", 2)), "-o", str(out), "--format", "wds"]).exit_code == 0
    )
    fs, root = shards.open_root(str(out))
    rows = shard_index.read_index(fs, root).num_rows
    real = fs.glob
    monkeypatch.setattr(
        fs, "glob", lambda pattern: [*real(pattern), f"{root}/_index/part-gone.parquet"]
    )
    assert shard_index.read_index(fs, root).num_rows == rows


def test_the_same_files_through_a_symlinked_folder_resume(tmp_path):
    """wds refused them as 'keys ... held for other files' (the index recorded unresolved
    paths), where a folder output skips them (its resume key has the real path)."""
    inputs = _images(tmp_path / "in", 2)
    link = tmp_path / "link"
    link.symlink_to(inputs, target_is_directory=True)
    out = tmp_path / "out"
    assert _run([str(inputs), "-o", str(out), "--format", "wds"]).exit_code == 0
    again = _run([str(link), "-o", str(out), "--format", "wds"])
    assert again.exit_code == 0 and "skipped 2" in again.output, again.output


def test_a_symlinked_subfolder_gets_keys_under_the_links_name_and_resumes(tmp_path):
    """A symlinked folder inside the input (skipped before) is read, its keys the link's path
    (``data/train -> elsewhere`` gives ``train/...``), and the rerun skips its images."""
    data = tmp_path / "data"
    _images(tmp_path / "elsewhere", 2)
    data.mkdir()
    (data / "train").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    out = tmp_path / "out"
    first = _run([str(data), "-o", str(out), "--format", "wds"])
    assert first.exit_code == 0 and "of 2" in first.output, first.output
    keys = sorted(r["key"] for r in pq.read_table(out / "index.parquet").to_pylist())
    assert keys == ["train/img%2E1", "train/sub/img%2E0"]
    again = _run([str(data), "-o", str(out), "--format", "wds"])
    assert again.exit_code == 0 and "skipped 2" in again.output, again.output


def test_a_killed_runs_temporaries_at_the_top_of_out_are_removed_by_the_next(tmp_path):
    """SIGKILL while the run log, index.parquet or the claims file was being written left
    '.run.json.fpncli-tmp.PID.TOKEN', 'index.parquet.partialXXXX' and '_claims/.TOKEN.tmp',
    which no later run removed."""
    import time

    inputs = _images(tmp_path / "in", 2)
    out = tmp_path / "out"
    assert _run([str(inputs), "-o", str(out), "--format", "wds"]).exit_code == 0
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    leftovers = [
        out / f".run.json.fpncli-tmp.{dead}.0a1b2c3d",
        out / "index.parquet.partial1a2b3c4d",
        out / "_claims" / ".deadbeef0000.tmp",
    ]
    for path in leftovers:
        path.write_bytes(b"half")
        os.utime(path, (time.time() - 3600,) * 2)
    assert _run([str(inputs), "-o", str(out), "--format", "wds"]).exit_code == 0
    assert [p for p in leftovers if p.exists()] == []
    assert _run([str(inputs), "-o", str(tmp_path / "files")]).exit_code == 0  # folder format
    stale = tmp_path / "files" / f".run.json.fpncli-tmp.{dead}.0a1b2c3d"
    stale.write_bytes(b"half")
    assert _run([str(inputs), "-o", str(tmp_path / "files")]).exit_code == 0
    assert not stale.exists()


def test_a_url_output_is_named_as_given_in_the_summary(tmp_path):
    """file:///tmp/x was said to be 'written to file:/tmp/x' (a Path folds the '//')."""
    folder = _images(tmp_path / "in", 2)
    url = f"file://{tmp_path / 'out'}"
    result = _run([str(folder), "-o", url, "--format", "wds"])
    assert result.exit_code == 0, result.output
    assert result.stdout.rstrip().endswith(f"written to {url}"), result.stdout


def test_wds_overwrite_of_some_images_refuses_to_remove_the_others(tmp_path):
    """--overwrite (--no-resume) of a wds output removes every shard: given some of its images
    only, it is refused in one line, and the others' shards and index stay; given them all, it
    redoes the output."""
    inputs = _images(tmp_path / "in", 3)
    out = tmp_path / "out"
    assert _run([str(inputs), "-o", str(out), "--format", "wds"]).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.glob("shard-*.tar")}
    index = pq.read_table(out / "index.parquet").to_pylist()
    for flag in ("--overwrite", "--no-resume"):
        result = _run([str(inputs / "img.1.png"), "-o", str(out), "--format", "wds", flag])
        assert result.exit_code == 1, result.output
        (line,) = [x for x in result.output.splitlines() if "other images than these" in x]
        assert "2 other images" in line and "img.2" in line and "Traceback" not in result.output
        assert {p.name: p.read_bytes() for p in out.glob("shard-*.tar")} == before
        assert pq.read_table(out / "index.parquet").to_pylist() == index
    again = _run([str(inputs), "-o", str(out), "--format", "wds", "--overwrite"])
    assert again.exit_code == 0 and "done 3" in again.output, again.output


def test_wds_overwrite_refuses_to_replace_another_files_image_under_its_key(tmp_path):
    """extract r1 r2 (r1/q.png is q, r2/q.png q_2), then r2 --overwrite: r2's q would replace
    r1's, still there: refused. Photos moved since are redone under their keys (their files are
    gone), and a damaged ledger part is read past through index.parquet, still refused."""
    rng = np.random.RandomState(1)
    for name in ("r1", "r2"):
        (tmp_path / name).mkdir()
        pixels = rng.randint(0, 255, (40, 56, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / name / "q.png")
    out = tmp_path / "out"
    wds = ["-o", str(out), "--format", "wds"]
    assert _run([str(tmp_path / "r1"), str(tmp_path / "r2"), *wds]).exit_code == 0
    shards = {p.name: p.read_bytes() for p in out.glob("shard-*.tar")}
    refused = _run([str(tmp_path / "r2"), *wds, "--overwrite"])
    assert refused.exit_code == 1 and "1 other images than these ('q'" in refused.output
    assert {p.name: p.read_bytes() for p in out.glob("shard-*.tar")} == shards
    for part in (out / "_index").glob("part-*.parquet"):
        part.write_bytes(b"garbage")
    damaged = _run([str(tmp_path / "r2"), *wds, "--overwrite"])
    assert damaged.exit_code == 1 and "other images than these" in damaged.output
    (out / "index.parquet").write_bytes(b"garbage")
    unreadable = _run([str(tmp_path / "r2"), *wds, "--overwrite"])
    assert unreadable.exit_code == 1 and "cannot be read" in unreadable.output
    assert {p.name: p.read_bytes() for p in out.glob("shard-*.tar")} == shards
    moved = tmp_path / "out2"
    wds2 = ["-o", str(moved), "--format", "wds"]
    assert _run([str(tmp_path / "r1"), str(tmp_path / "r2"), *wds2]).exit_code == 0
    (tmp_path / "r1").rename(tmp_path / "s1")
    (tmp_path / "r2").rename(tmp_path / "s2")
    again = _run([str(tmp_path / "s1"), str(tmp_path / "s2"), *wds2, "--overwrite"])
    assert again.exit_code == 0 and "done 2" in again.output, again.output
