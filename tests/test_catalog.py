"""``io.catalog``: an output root read the same way whatever its format, and ``report`` and
``diff`` on ``--format wds`` outputs (tar shards read through the index, never extracted)."""

from __future__ import annotations

import io
import re
import shutil
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from fpncli.cli import cli
from fpncli.io import catalog
from fpncli.io.catalog import iter_extractions, open_extractions
from fpncli.io.npy import npy_from_bytes
from fpncli.viz.diff import diff_extractions
from fpncli.viz.report import write_report
from fpncli.viz.stats import LevelStats, accumulate


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def test_npy_from_bytes_round_trip_and_refusals():
    a = np.asfortranarray(np.arange(24, dtype=np.float16).reshape(2, 3, 4))
    b = npy_from_bytes(_npy(a))
    assert b.dtype == np.float16 and np.array_equal(a, b) and not b.flags.writeable
    forged = _npy(np.zeros((1, 2), np.float32)).replace(b"(1, 2)", b"(9, 9)")
    with pytest.raises(ValueError, match="truncated or forged"):
        npy_from_bytes(forged, "x.p2.npy")
    with pytest.raises(ValueError, match="not a readable .npy"):
        npy_from_bytes(b"not an npy at all")
    objects = io.BytesIO()
    np.save(objects, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="Python objects"):
        npy_from_bytes(objects.getvalue())


def test_level_stats_memory_is_bounded_and_std_exact():
    rng = np.random.RandomState(0)
    samples = [rng.randn(75).astype(np.float32) * (1 + i % 3) for i in range(200)]
    for s in samples:
        s[::7] = 0.0
    stats = LevelStats("p2", keep_values=1000)
    for s in samples:
        accumulate(stats, None, {"min": float(s.min()), "max": float(s.max()),
                                 "mean": float(s.mean())}, s, s.shape)  # fmt: skip
    values = np.concatenate(samples).astype(np.float64)
    assert sum(x.size for x in stats.samples) == stats.kept <= 1000 and stats.keep_every == 16
    assert len(stats.samples) < 64  # joined: not one array per image
    assert stats.std == pytest.approx(values.std(), rel=1e-9)  # running sums: every value
    assert stats.zero_fraction == pytest.approx(np.mean(values == 0), rel=1e-12)
    assert stats.exact and stats.mean == pytest.approx(values.mean(), rel=1e-6)
    counts, edges = stats.histogram(bins=10)
    assert 900 <= counts.sum() <= 1000 and edges[0] == values.min()


def test_folder_roots_and_single_folders(sample_extraction, tmp_path):
    found = open_extractions(sample_extraction)
    assert found.format == "files" and found.keys() == ["chelsea", "coffee", "rocket"]
    assert found.link("coffee", "overview.png") == "coffee/overview.png"
    assert [ex.key for ex in iter_extractions(sample_extraction)] == found.keys()
    one = open_extractions(sample_extraction / "rocket")
    assert one.single and one.keys() == ["rocket"] and one.link("rocket", "p2.png") == "p2.png"
    with pytest.raises(FileNotFoundError, match="no such folder"):
        open_extractions(sample_extraction / "nope")
    out = tmp_path / "out"  # an image called _index, in folder mode, is not a shard index
    shutil.copytree(sample_extraction / "chelsea", out / "_index")
    assert open_extractions(out).format == "files" and open_extractions(out).keys() == ["_index"]


def test_shard_root_reads_like_the_folder_root(sample_extraction, sample_shards, monkeypatch):
    monkeypatch.setattr(catalog, "_TABLES", 1)  # member tables of one shard at a time
    shards, folders = open_extractions(sample_shards), open_extractions(sample_extraction)
    assert shards.format == "wds" and len(shards.shards()) == 3
    assert sorted(shards.keys()) == folders.keys()
    [failure] = shards.failures()
    assert failure.path.endswith("broken.jpg") and failure.reason
    assert [ex.key for ex in iter_extractions(sample_shards)] == shards.keys()
    seen = []
    for ex in shards:
        seen.append(ex.key)
        ref = folders.load(ex.key)
        assert ex.shard.startswith("shard-") and set(ex.levels) == set(ref.levels) == {
            "p2", "p3", "p4", "p5", "p6"}  # fmt: skip
        for name in ref.levels:
            assert np.array_equal(ex.levels[name], ref.levels[name])
            assert not ex.levels[name].flags.writeable
            assert ex.valid(name).shape == ref.valid(name).shape
        assert ex.manifest["levels"]["p3"]["min"] == ref.manifest["levels"]["p3"]["min"]
        assert ex.image is not None and ex.image.shape == ref.image.shape  # the source photo
        assert shards.link(ex.key, "overview.png") is None  # inside a tar: no file to link
        assert 0 < shards.size(ex.key) and len(shards._tables) == 1
    assert seen == shards.keys()
    with pytest.raises(FileNotFoundError, match="no image with key 'broken'"):
        shards.load("broken")


def test_shard_root_without_pyarrow_says_how_to_install(sample_shards, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow -> ImportError
    result = CliRunner().invoke(cli, ["report", str(sample_shards)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "--format wds" in result.output and "pip install 'fpncli[wds]'" in result.output


def _stats_table(page: str) -> str:
    return re.search(r"Levels across the folder</h2>\n(<table>.*?</table>)", page, re.S)[1]


def test_report_of_shards(sample_extraction, sample_shards, tmp_path):
    from test_report import _links

    out = tmp_path / "wds"
    shutil.copytree(sample_shards, out)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    result = CliRunner().invoke(cli, ["report", str(out), "--page-size", "2", "--scale", "level"],
                                catch_exceptions=False)  # fmt: skip
    assert result.exit_code == 0, result.output
    page, page2 = out / "report.html", out / "report" / "page_0002.html"
    for html_page in (page, page2):
        parser = _links(html_page)
        assert parser.imgs >= 6
        for ref in parser.refs:
            assert not re.match(r"^[a-z]+:", ref), f"{html_page.name}: non-relative link {ref}"
            assert (html_page.parent / ref).resolve().is_file(), f"{ref} does not resolve"
    text = page.read_text()
    assert "RANDOM, UNTRAINED WEIGHTS" in text and "3 WebDataset tar shards" in text
    assert "broken.jpg" in text and "images failed (index)</th><td>1<" in text
    assert "Images 1-2 of 3" in text and "Images 3-3 of 3" in page2.read_text()
    assert "--key KEY" in text and "Colour scale: <b>level</b>" in text
    thumbs = sorted((out / "report" / "thumbs").iterdir())
    assert len(thumbs) == 3 * 6 and all(Image.open(t).size[1] == 64 for t in thumbs)
    # nothing of the shards was extracted: only the report's own files are new
    after = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert {p.parts[0] for p in set(after) - set(before)} == {"report", "report.html"}
    # the same numbers as the report of the same images written as folders
    folders = tmp_path / "files"
    shutil.copytree(sample_extraction, folders)
    write_report(folders, scale="level")
    assert _stats_table(text) == _stats_table((folders / "report.html").read_text())
    next(out.glob("shard-*.tar")).unlink()  # an index naming a shard that is gone
    gone = CliRunner().invoke(cli, ["report", str(out)])
    assert gone.exit_code == 1 and "Traceback" not in gone.output
    assert re.search(r"shard-\w+\.tar, which the index of .* names for '\w+', is gone", gone.output)


def test_diff_between_formats(sample_extraction, sample_shards, tmp_path):
    same = diff_extractions(sample_shards, sample_extraction, tol=0.0, out=tmp_path / "d")
    assert [i.key for i in same.images] == ["chelsea", "coffee", "rocket"]
    assert len(same.compared) == 3 and same.agree
    assert all(d.max_rel == 0.0 for i in same.images for d in i.levels)
    assert Image.open(tmp_path / "d" / "coffee" / "diff.png").size[0] > 300
    b = tmp_path / "b"
    shutil.copytree(sample_extraction, b)
    np.save(b / "rocket" / "p4.npy", np.load(b / "rocket" / "p4.npy") * np.float32(1.01))
    shutil.rmtree(b / "chelsea")
    runner = CliRunner()
    args = ["diff", str(sample_shards), str(b), "-o", str(tmp_path / "d2"), "--tol", "1e-3"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert "differs: rocket: p4 max_rel 0.01 > 0.001" in result.output
    assert "not compared: chelsea: only in A" in result.output
    assert (
        "2 of 3 images compared: 1 of the 2 compared DO NOT agree within tol 0.001; 1 not "
        "compared" in result.output
    )
    args = ["diff", str(sample_shards), str(sample_shards), "-o", str(tmp_path / "d3")]
    both = runner.invoke(cli, [*args, "--no-pictures"], catch_exceptions=False)
    assert both.exit_code == 0 and "3 of 3 images compared: all 3 compared agree" in both.output
    import fsspec  # the shards on an object store (fsspec's memory filesystem)

    fsspec.filesystem("memory").put(str(sample_shards), "/fpncli-diff/out", recursive=True)
    remote = diff_extractions("memory://fpncli-diff/out", sample_extraction, tol=0.0)
    assert len(remote.compared) == 3 and remote.agree
    one = diff_extractions(sample_shards, sample_extraction / "coffee")
    assert [(i.key, len(i.levels)) for i in one.images] == [("coffee", 5)]


def test_an_images_bytes_are_its_manifests_files_not_strangers_beside_them(
    sample_extraction, tmp_path
):
    """The report's bytes counted every file in an image folder: a picture ``show`` wrote there
    later made the summary twice the run's ``bytes_written``. An image's size is the files its
    manifest lists, and the manifest."""
    import json

    out = tmp_path / "out"
    shutil.copytree(sample_extraction, out)
    folder = sorted(p.parent for p in out.glob("*/manifest.json"))[0]
    manifest = json.loads((folder / "manifest.json").read_text())
    own = sum((folder / name).stat().st_size for name in manifest["files"])
    own += (folder / "manifest.json").stat().st_size
    (folder / "show_all.png").write_bytes(b"\x89PNG" + bytes(50_000))  # show's, written later
    (folder / "notes.txt").write_text("mine")
    found = open_extractions(out)
    assert found.size(folder.relative_to(out).as_posix()) == own
    assert open_extractions(folder).size(folder.name) == own  # an image folder named alone
