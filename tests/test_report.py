"""``fpncli report``: statistics with known answers, the page's links, and a real browser."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from fpncli.cli import cli
from fpncli.viz.report import write_report
from fpncli.viz.stats import LevelStats, accumulate, sample_level


def test_level_stats_exact_on_small_maps():
    a = np.array([[[[0.0, 1.0], [2.0, 3.0]]]], np.float32)  # (1, 1, 2, 2)
    b = np.array([[[[0.0, 0.0], [-4.0, 10.0]]]], np.float32)
    stats = LevelStats("p2")
    accumulate(stats, a)
    accumulate(stats, b, {"min": -4.0, "max": 10.0, "mean": 1.5})
    values = np.concatenate([a.ravel(), b.ravel()])
    assert (stats.images, stats.values, stats.min, stats.max) == (2, 8, -4.0, 10.0)
    assert stats.mean == pytest.approx(values.mean())
    assert stats.std == pytest.approx(values.std())
    assert stats.zero_fraction == pytest.approx(3 / 8) and stats.exact
    counts, edges = stats.histogram(bins=14)
    assert counts.sum() == 8 and edges[0] == -4.0 and edges[-1] == 10.0


def test_a_level_with_no_finite_value_reads_as_a_dash_in_the_table():
    """Every value NaN or infinite (the manifest's min/max/mean null, nonfinite all of them):
    the level's row read "p5 1 inf -inf nan nan nan%"; now a dash, said below the table."""
    from fpncli.viz.report_html import stats_html

    bad = np.full((1, 2, 2, 2), np.nan, np.float32)
    ok = np.array([[[[0.0, 1.0], [2.0, 3.0]]]], np.float32)
    stats = {"p4": LevelStats("p4"), "p5": LevelStats("p5")}
    accumulate(stats["p4"], ok)
    accumulate(stats["p5"], bad, {"min": None, "max": None, "mean": None, "nonfinite": 8})
    table = stats_html(stats)
    rows = dict(re.findall(r"<tr><td>(p\d)</td>(.*?)</tr>", table))
    assert rows["p5"] == "<td>1</td>" + "<td>\u2013</td>" * 5, rows["p5"]
    assert rows["p4"] == "<td>1</td><td>0</td><td>3</td><td>1.5</td><td>1.118</td><td>25%</td>"
    assert "\u2013: no finite value (every value NaN or infinite)." in table
    assert "\u2013" not in stats_html({"p4": stats["p4"]})


def test_sample_level_is_bounded_and_spread():
    big = np.arange(256 * 64 * 96, dtype=np.float32).reshape(1, 256, 64, 96)
    sample = sample_level(big, max_values=4096)
    assert 2048 <= sample.size <= 4096
    channels = np.unique(sample // (64 * 96)).astype(int)
    assert channels[0] == 0 and channels[-1] == 255 and len(channels) == 8


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[str] = []
        self.imgs = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.imgs += 1
        for name in ("href", "src"):
            if attrs.get(name):
                self.refs.append(attrs[name])


def _links(page: Path) -> _Links:
    parser = _Links()
    parser.feed(page.read_text())
    return parser


@pytest.fixture
def report_dir(sample_extraction, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(sample_extraction, out)
    run = json.loads((out / "run.json").read_text())
    run["failed"] = [{"path": "/photos/broken.jpg", "reason": "not an image Pillow can read"}]
    (out / "run.json").write_text(json.dumps(run))
    return out


def test_report_every_link_resolves_and_pages(report_dir):
    stale = report_dir / "report" / "thumbs" / "999999_p2.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    path = write_report(report_dir, page_size=2)
    assert path == report_dir / "report.html" and not stale.exists()
    pages = [path, report_dir / "report" / "page_0002.html"]
    assert not (report_dir / "report" / "page_0003.html").exists()
    for page in pages:
        parser = _links(page)
        assert parser.imgs >= 6 and parser.refs
        for ref in parser.refs:
            assert not re.match(r"^[a-z]+:", ref), f"{page.name}: non-relative link {ref}"
            target = (page.parent / ref).resolve()
            assert target.is_file(), f"{page.name}: {ref} does not resolve"
            if ref.endswith(".png"):
                assert Image.open(target).size[0] > 0
    text = path.read_text()
    assert "RANDOM, UNTRAINED WEIGHTS" in text and 'class="banner"' in text
    assert "/photos/broken.jpg" in text and "not an image Pillow can read" in text
    assert "Images 1-2 of 3" in text and "Images 3-3 of 3" in pages[1].read_text()
    assert text.count("<tr><td>p") == 5  # one stats row per level
    assert 'href="chelsea/overview.png"' in text and 'href="coffee/p2.png"' in text
    assert 'href="../rocket/overview.png"' in pages[1].read_text()
    # thumbnails: input + 5 levels per image, each the right height
    thumbs = sorted((report_dir / "report" / "thumbs").iterdir())
    assert len(thumbs) == 3 * 6 and all(Image.open(t).size[1] == 64 for t in thumbs)


def test_report_cli_and_errors(report_dir, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["report", str(report_dir)], catch_exceptions=False)
    assert result.exit_code == 0 and "report.html" in result.output
    missing = runner.invoke(cli, ["report", str(tmp_path / "nope")])
    assert missing.exit_code == 1 and "no such folder" in missing.output
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = runner.invoke(cli, ["report", str(empty)])
    assert nothing.exit_code == 1 and "holds no complete extraction" in nothing.output
    bad = runner.invoke(cli, ["report", str(report_dir), "--page-size", "0"])
    assert bad.exit_code == 2 and "--page-size" in bad.output and "Traceback" not in bad.output
    for height in ("100000", "7"):  # 100000: cv2 'Insufficient memory' before
        huge = runner.invoke(cli, ["report", str(report_dir), "--thumb-height", height])
        assert huge.exit_code == 2 and "--thumb-height" in huge.output, huge.output
        assert "8<=x<=1024" in huge.output and "Traceback" not in huge.output


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


_CHECK = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const bad = imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src);
  document.body.setAttribute('data-images', imgs.length);
  document.body.setAttribute('data-broken', bad.length);
});
</script></body>"""


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (apt-get install "
                    "chromium): the report is not checked in a real browser")  # fmt: skip
@pytest.mark.parametrize("layout", ["files", "wds"])
def test_report_in_headless_chromium(layout, request, tmp_path):
    if layout == "files":
        report_dir = request.getfixturevalue("report_dir")
    else:  # a --format wds output: thumbnails made from the tar shards
        report_dir = tmp_path / "wds"
        shutil.copytree(request.getfixturevalue("sample_shards"), report_dir)
    write_report(report_dir, page_size=2)
    page = report_dir / "report.html"
    # A copy of the page beside it, with a script that records which images loaded.
    check = report_dir / "report_check.html"
    check.write_text(page.read_text().replace("</body>", _CHECK))
    flags = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--allow-file-access-from-files", "--virtual-time-budget=5000"]  # fmt: skip
    dom = subprocess.run([*flags, "--dump-dom", check.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout  # fmt: skip
    images = re.search(r'data-images="(\d+)"', dom)
    broken = re.search(r'data-broken="(\d+)"', dom)
    assert images and broken, dom[-500:]
    assert int(images.group(1)) == _links(page).imgs >= 1 + 2 * 6
    assert broken.group(1) == "0"
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, "--window-size=1000,1400", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)  # fmt: skip
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (1400, 1000)
    assert (pixels < 250).any(axis=2).mean() > 0.05  # not a blank page
    red = (pixels[..., 0] > 180) & (pixels[..., 1] < 40) & (pixels[..., 2] < 40)
    assert red.sum() > 1000  # the random-weights banner is drawn


def test_readme_folder_commands_parse():
    """The README's "Seeing a whole folder" block: every line parses with every option checked."""
    import shlex
    import warnings

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = re.search(r"## Seeing a whole folder\s+```bash\n(.*?)```", text, re.S)
    assert block
    lines = [line.split("  #")[0].split(" # ")[0].strip() for line in block[1].splitlines()]
    commands = {}
    for line in filter(None, lines):
        words = shlex.split(line)
        assert words[0] == "fpncli", line
        ctx = cli.make_context("fpncli", words[1:])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            name, *rest = [*ctx.protected_args, *ctx.args]
        command = cli.get_command(ctx, name)
        sub = command.make_context(name, rest, parent=ctx)
        commands.setdefault(name, []).append(sub.params)
    assert set(commands) == {"extract", "report", "diff", "show"}
    assert commands["extract"][0]["levels"][:5] == ("stem", "res2", "res3", "res4", "res5")


def test_shards_into_one_folder_keep_their_run_logs_and_report_merges_them(tmp_path):
    """Two shards of one job (a SLURM array, say) into one OUT: each writes run-I-of-N.json,
    and the report counts both shards' failures, not only the last one's."""
    from fpncli.io.run_log import read_run_log

    src = tmp_path / "in"
    src.mkdir()
    for k in range(8):  # a0 a1 good, a2 a3 bad, ...: each shard (k % 2) gets two of each
        if k % 4 < 2:
            Image.fromarray(np.full((40, 56, 3), 30 * k, np.uint8)).save(src / f"a{k}.png")
        else:
            (src / f"a{k}.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    small = ["--weights", "random", "--min-size", "32", "--max-size", "64", "--workers", "1",
             "--no-overview"]  # fmt: skip
    for shard in ("0/2", "1/2"):
        result = CliRunner().invoke(cli, ["extract", str(src), "-o", str(out), "--shard", shard,
                                          *small])  # fmt: skip
        assert result.exit_code == 1, result.output  # each shard has two bad files
    assert sorted(p.name for p in out.glob("run*.json")) == ["run-0-of-2.json", "run-1-of-2.json"]
    run = read_run_log(out)
    assert run["shards"] == "2 of 2" and run["total"] == 8 and run["done"] == 4
    assert sorted(Path(f["path"]).name for f in run["failed"]) == [
        "a2.png",
        "a3.png",
        "a6.png",
        "a7.png",
    ]
    result = CliRunner().invoke(cli, ["report", str(out)])
    assert result.exit_code == 0, result.output
    page = (out / "report.html").read_text()
    assert "images failed (last run, shards: 2 of 2 logged)</th><td>4<" in page
    # a later unsharded run is the last run again
    result = CliRunner().invoke(cli, ["extract", str(src / "a0.png"), "-o", str(out), *small])
    assert result.exit_code == 0, result.output
    assert read_run_log(out)["failed"] == [] and "shards" not in read_run_log(out)


def test_thumbnails_use_the_recorded_colour_range_like_the_heatmaps(sample_extraction, tmp_path):
    """--scale image: a level's thumbnail is coloured on the manifest's ``range`` (the heatmap's
    --clip percentiles), not on the map's own min..max."""
    root = tmp_path / "out"
    shutil.copytree(sample_extraction / "chelsea", root / "chelsea")
    write_report(root)
    own = np.asarray(Image.open(root / "report" / "thumbs" / "000000_p3.png"))
    assert len(np.unique(own.reshape(-1, 3), axis=0)) > 8
    manifest = json.loads((root / "chelsea" / "manifest.json").read_text())
    manifest["levels"]["p3"]["range"] = [1e9, 2e9]  # above every value: all the lowest colour
    (root / "chelsea" / "manifest.json").write_text(json.dumps(manifest))
    write_report(root)
    above = np.asarray(Image.open(root / "report" / "thumbs" / "000000_p3.png"))
    assert len(np.unique(above.reshape(-1, 3), axis=0)) == 1


def _corrupt(src: Path, dst: Path, field: str, value) -> Path:
    """A copy of ``src`` whose image ``chelsea`` has one manifest field set to ``value``, or
    (field ``p2.npy``) whose p2.npy is a valid but empty (1, 256, 0, 0) array (value None) or a
    batch of two (value ``"batch"``: the level twice)."""
    shutil.copytree(src, dst)
    folder = dst / "chelsea"
    manifest = json.loads((folder / "manifest.json").read_text())
    if field == "p2.npy":
        level = np.zeros((1, 256, 0, 0), np.float32)
        if value == "batch":
            level = np.concatenate([np.load(folder / "p2.npy")] * 2)
        np.save(folder / "p2.npy", level)
        manifest["files"]["p2.npy"] = (folder / "p2.npy").stat().st_size
    else:
        *parents, last = field.split(".")
        node = manifest
        for key in parents:
            node = node[key]
        node[last] = value
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return dst


@pytest.mark.parametrize(
    "field,value,reason",
    [
        ("levels.p2.valid_height", "a", "'levels.p2.valid_height' is a str ('a'), not a positive"),
        ("input.path", 5, "'input.path' is an int (5), not a string"),
        ("weights", "abc", "'weights' is a str ('abc'), not a mapping"),
        ("heatmap", None, "'heatmap' is null, not a mapping"),
        ("levels.p3", [], "'levels.p3' is a list ([]), not a mapping"),
        ("p2.npy", None, "holds a (1, 256, 0, 0) array"),
        ("p2.npy", "batch", "holds a (2, 256, 16, 24) array, not the (1, C, H, W) level"),
        (
            "levels.p3.range",
            [-1e308, 1e308],
            "'levels.p3.range' is a list ([-1e+308, 1e+308]), "
            "not two finite float32 numbers, low <= high",
        ),
        ("levels.p3.range", [2.0, 1.0], "'levels.p3.range' is a list ([2.0, 1.0]), not two"),
        ("levels.p3.range", [1.0], "'levels.p3.range' is a list ([1.0]), not two finite"),
        ("levels.p3.range", "0,1", "'levels.p3.range' is a str ('0,1'), not two finite"),
        (  # show --overlay cast it past int64, drawing garbage
            "preprocess.scale_x",
            1e300,
            "'preprocess.scale_x' is a float (1e+300), not a positive number up to 100000",
        ),
        (  # min over max: numpy's "max must be larger than min" failed the whole report
            "levels.p3.min",
            1e30,
            "'levels.p3.min' 1e+30 is over 'levels.p3.max' ",
        ),
        ("levels.p3.max", None, "and 'levels.p3.max' null: both numbers or both null"),
        (  # past the level's 8 x 12 x 256 valid values: it changed the report's statistics
            "levels.p3.nonfinite",
            24577,
            "'levels.p3.nonfinite' is an int (24577), not at most the level's valid values",
        ),
    ],
)
def test_malformed_manifest_or_level_is_one_line_in_report_diff_and_show(
    sample_extraction, tmp_path, field, value, reason
):
    """show refuses the image in one line; report and diff say so in one line each, exit 1,
    and still cover the other images (one bad image stopped both before)."""
    bad = _corrupt(sample_extraction, tmp_path / "bad", field, value)
    runner = CliRunner()
    diff = ["diff", str(sample_extraction), str(bad), "-o", str(tmp_path / "d")]
    for args, says in (
        (["report", str(bad)], "Error: outputs of chelsea cannot be read, left out: "),
        (diff, "not compared: chelsea: cannot be read in B: "),
        (["show", str(bad / "chelsea"), "--level", "all", "--save", str(tmp_path / "s.png")],
         "Error: "),
    ):  # fmt: skip
        result = runner.invoke(cli, args)
        assert result.exit_code == 1, (args, result.output)
        assert not isinstance(result.exception, (TypeError, AttributeError)), result.exception
        (line,) = [ln for ln in result.output.splitlines() if ln.startswith(says)]
        assert reason in line, (args, result.output)
        if field != "p2.npy":
            assert "chelsea/manifest.json is malformed" in line
    page = (bad / "report.html").read_text()
    assert "Outputs that cannot be read" in page and html.escape(reason) in page
    assert "000001_input.png" in page and "000000_input.png" not in page  # the others: a row each
    assert "2 of 3 images compared" in runner.invoke(cli, diff).output
    # --scale level reads every manifest first: the bad one is listed once, the rest drawn
    result = runner.invoke(cli, ["report", str(bad), "--scale", "level"])
    assert result.exit_code == 1 and result.output.count("cannot be read") == 1, result.output
    assert (bad / "report" / "thumbs" / "000001_p3.png").is_file()


def _replace_manifest(folder: Path, kind: str) -> None:
    """``folder``'s manifest.json replaced by something that cannot be read as one."""
    path = folder / "manifest.json"
    path.unlink()
    if kind == "folder":
        path.mkdir()
    elif kind == "dangling link":
        path.symlink_to(folder / "gone.json")
    else:
        path.write_bytes(kind.encode("latin-1"))


@pytest.mark.parametrize(
    "kind,reason",
    [
        ("{bad", "manifest.json is not valid JSON: Expecting property name"),
        ("", "manifest.json is empty; re-extract"),
        ("\x89PNG\xff\x00", "manifest.json is not valid JSON: 'utf-8' codec can't decode"),
        ("[1, 2]", "manifest.json is not an fpncli manifest: it holds a list ([1, 2]), not a"),
        ('{"levels": {}}', "manifest.json is malformed: 'complete' is missing, not true"),
        ("folder", "manifest.json cannot be read: not a regular file (a folder); remove it"),
        ("dangling link", "manifest.json cannot be read: a symlink to a missing file"),
    ],
)
def test_a_manifest_that_cannot_be_read_is_listed_by_report_diff_and_show(
    sample_extraction, tmp_path, kind, reason
):
    """A manifest.json that is not JSON (or not a file, or not a manifest) lists its image as
    unreadable, with why, as a malformed field does: report and diff exit 1, show refuses it
    in one line. Such an image vanished from report and diff (only in A), and show called its
    manifest missing."""
    bad = tmp_path / "bad"
    shutil.copytree(sample_extraction, bad)
    _replace_manifest(bad / "chelsea", kind)
    runner = CliRunner()
    diff = ["diff", str(sample_extraction), str(bad), "-o", str(tmp_path / "d")]
    one = ["diff", str(sample_extraction / "chelsea"), str(bad / "chelsea"), "-o",
           str(tmp_path / "d1")]  # fmt: skip
    for args, says in (
        (["report", str(bad)], "Error: outputs of chelsea cannot be read, left out: "),
        (["report", str(bad / "chelsea")], "Error: outputs of chelsea cannot be read, left out: "),
        (diff, "not compared: chelsea: cannot be read in B: "),
        (one, "not compared: chelsea: cannot be read in B: "),
        (["show", str(bad / "chelsea"), "--save", str(tmp_path / "s.png")], "Error: "),
        (["show", str(bad / "chelsea" / "p3.npy"), "--save", str(tmp_path / "s.png")], "Error: "),
        (["show", str(bad / "chelsea"), "--receptive-field", "--at", "5,5", "--save",
          str(tmp_path / "r.png")], "Error: "),
    ):  # fmt: skip
        result = runner.invoke(cli, args)
        assert result.exit_code == 1, (args, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit), args
        (line,) = [ln for ln in result.output.splitlines() if ln.startswith(says)]
        assert f"chelsea/{reason}" in line, (args, result.output)
    page = (bad / "report.html").read_text()
    assert "Outputs that cannot be read" in page and html.escape(reason) in page
    assert "000001_input.png" in page and "000000_input.png" not in page  # the others: a row each
    result = runner.invoke(cli, diff)
    assert "2 of 3 images compared" in result.output and "only in" not in result.output
    # --scale level reads every manifest first: the bad one is listed once, the rest drawn
    result = runner.invoke(cli, ["report", str(bad), "--scale", "level"])
    assert result.exit_code == 1, result.output
    assert result.output.count("chelsea cannot be read") == 1 and "more" not in result.output


def test_report_and_diff_go_on_past_a_damaged_shard(sample_shards, tmp_path):
    """--format wds, one image per shard: one shard cut in half loses its image only."""
    out = tmp_path / "out"
    shutil.copytree(sample_shards, out)
    shard = sorted(out.glob("shard-*.tar"))[0]
    shard.write_bytes(shard.read_bytes()[:700])
    unreadable = []
    page = write_report(out, on_unreadable=lambda key, why: unreadable.append((key, why)))
    ((key, why),) = unreadable
    assert "is not a readable tar shard" in why or "truncated" in why, why
    text = page.read_text()
    assert f"<td>{html.escape(key)}</td>" in text and "<h2>Images 1-2 of 2</h2>" in text
    result = CliRunner().invoke(
        cli, ["diff", str(sample_shards), str(out), "-o", str(tmp_path / "d")]
    )
    assert result.exit_code == 1, result.output
    assert f"not compared: {key}: cannot be read in B: " in result.output
    assert "2 of 3 images compared: all 2 compared agree" in result.output


def test_a_report_or_diff_of_shards_says_it_leaves_out_image_folders_beside_them(
    sample_extraction, sample_shards, tmp_path, caplog
):
    """An output that mixes the formats (written before extract refused that) was reported as
    its shards alone, the image folders left out without a word: one warning says so, and the
    page's summary too; a report of shards alone says nothing of it. ``diff`` read such an
    output the same way and said nothing at all: it warns as the report does, of a ``file://``
    URL of it too."""
    out = tmp_path / "out"
    shutil.copytree(sample_shards, out)
    alone = CliRunner().invoke(cli, ["report", str(out)])
    assert alone.exit_code == 0 and "left out" not in caplog.text, alone.output
    for name in ("chelsea", "coffee"):
        shutil.copytree(sample_extraction / name, out / "folders" / name)
    result = CliRunner().invoke(cli, ["report", str(out)])
    assert result.exit_code == 0, result.output
    (warning,) = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert warning.startswith(f"{out}: left out: 2 image folder(s) of a --format files ")
    text = (out / "report.html").read_text()
    assert "<th>left out</th><td>2 image folder(s) of a --format files extraction" in text
    assert "<h2>Images 1-3 of 3</h2>" in text  # the shards' three images, as before
    caplog.clear()
    diff = CliRunner().invoke(
        cli, ["diff", str(sample_shards), str(out), "-o", str(tmp_path / "d")]
    )
    assert diff.exit_code == 0 and "3 of 3 images compared" in diff.output, diff.output
    (said,) = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert said == warning  # B's, in the same words; A, shards alone, says nothing
    caplog.clear()  # B as a file:// URL: looked into at its path, as the folder is
    url = out.as_uri()
    diff = CliRunner().invoke(cli, ["diff", str(sample_shards), url, "-o", str(tmp_path / "d")])
    assert diff.exit_code == 0 and "3 of 3 images compared" in diff.output, diff.output
    (said,) = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert said == warning.replace(f"{out}: ", f"{url}: ", 1)


def test_a_thumbnail_on_a_range_as_wide_as_float32s_warns_nothing():
    """A run's range from statistics at float32's ends (``--scale level``): the map's distance
    from the low end overflowed float32, and numpy's RuntimeWarnings (with source lines) were
    printed by the report; the values are coloured all the same (the highest last)."""
    import warnings

    from fpncli.viz.report_thumbs import _level_thumbnail

    values = np.array([[-3.4e38, 0.0, 3.4e38]], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        thumb = _level_thumbnail(values, 8, "gray", (-3.4e38, 3.4e38))
    assert thumb.shape == (8, 24, 3)
    assert [int(thumb[0, x, 0]) for x in (0, 8, 16)] == [0, 128, 255]


def test_a_histogram_of_a_level_at_float32s_ends_warns_nothing(tmp_path):
    """A manifest's min -3.4e38 and max 3.4e38 (accepted: float32 numbers): the histogram's
    edges were float32, the samples' type, and matplotlib's sum of them overflowed, printing
    numpy's RuntimeWarning with its source line. The edges are float64, spanning the range."""
    import warnings

    from fpncli.viz.report import _histogram_png

    stats = LevelStats("p4")
    values = np.array([[[[-3.4e38, 0.0], [1.0, 3.4e38]]]], np.float32)
    accumulate(stats, values, {"min": -3.4e38, "max": 3.4e38, "mean": 0.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        counts, edges = stats.histogram(bins=4)
        _histogram_png({"p4": stats}, tmp_path / "h.png")
    assert edges.dtype == np.float64 and (edges[0], edges[-1]) == (-3.4e38, 3.4e38)
    assert counts.tolist() == [1, 0, 2, 1]
    assert Image.open(tmp_path / "h.png").size[0] > 0


def test_empty_map_thumbnail_is_blank_not_a_cv2_error():
    from fpncli.viz.report_thumbs import _level_thumbnail

    thumb = _level_thumbnail(np.zeros((0, 0), np.float32), 32, "viridis", None)
    assert thumb.shape == (32, 32, 3)


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _assert_links_resolve(page: Path) -> None:
    for ref in _links(page).refs:
        assert (page.parent / ref).resolve().is_file(), f"{page.name}: {ref} does not resolve"


def test_report_never_deletes_or_writes_over_image_folders_called_report(
    sample_extraction, tmp_path
):
    # inputs report.jpg and report.html.png extracted by a version that gave them these folders
    out = tmp_path / "out"
    shutil.copytree(sample_extraction, out)
    (out / "chelsea").rename(out / "report")
    (out / "coffee").rename(out / "report.html")
    images = _tree(out)
    for _ in range(2):  # the second run finds its own report_2/ and clears only that
        path = write_report(out, page_size=1)
        assert path == out / "report_2.html"
        assert {k: v for k, v in _tree(out).items() if k in images} == images
        for page in [path, *sorted((out / "report_2").glob("page_*.html"))]:
            _assert_links_resolve(page)
        assert (out / "report_2" / "page_0003.html").is_file()
    assert 'href="report/overview.png"' in path.read_text()  # the images are in the grid
    assert 'href="../report.html/overview.png"' in (out / "report_2/page_0002.html").read_text()
    assert (out / "report_2" / ".fpncli-report").is_file()


def test_report_clears_only_a_folder_it_made(report_dir):
    mine = write_report(report_dir)
    assert mine == report_dir / "report.html"
    notes = report_dir / "report" / "notes.txt"  # something of the user's put into report/
    (report_dir / "report" / ".fpncli-report").unlink()
    notes.write_text("mine")
    path = write_report(report_dir)
    assert path == report_dir / "report_2.html" and notes.read_text() == "mine"


def test_report_never_writes_over_a_users_own_report_html(report_dir, caplog):
    """A report.html the report did not write (no generator marker, not an earlier version's
    page) was taken for the report's and overwritten."""
    mine = report_dir / "report.html"
    notes = b"<!DOCTYPE html>\n<html><head><title>my notes</title></head>hand-written</html>\n"
    mine.write_bytes(notes)
    for _ in range(2):  # the second run rewrites its own report_2.html, still not mine
        caplog.clear()
        path = write_report(report_dir)
        assert path == report_dir / "report_2.html" and mine.read_bytes() == notes
        assert any("writing report_2.html" in r.getMessage() for r in caplog.records)
        _assert_links_resolve(path)
    assert not (report_dir / "report").exists()


def test_report_rewrites_its_own_page_and_an_earlier_versions(report_dir):
    for _ in range(2):
        assert write_report(report_dir) == report_dir / "report.html"
    assert (
        '<meta name="generator" content="fpncli report">'
        in (report_dir / "report.html").read_text()
    )
    # the page an earlier version wrote (no generator marker): still the report's to rewrite
    shutil.rmtree(report_dir / "report")
    earlier = '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>fpncli report: '
    (report_dir / "report.html").write_text(earlier + "out</title><style></style></head>\n</html>")
    assert write_report(report_dir) == report_dir / "report.html"
    assert "generator" in (report_dir / "report.html").read_text()


def test_a_users_page_made_while_the_report_is_built_is_not_written_over(report_dir, monkeypatch):
    import fpncli.viz.report as report

    write_report(report_dir, page_size=1)
    before = _tree(report_dir / "report")
    write_pages = report._write_pages

    def user_saves_a_page_meanwhile(*args, **kwargs):
        done = write_pages(*args, **kwargs)
        (report_dir / "report.html").write_text("mine")
        return done

    monkeypatch.setattr(report, "_write_pages", user_saves_a_page_meanwhile)
    with pytest.raises(ValueError, match="report.html is not a report's page: move it away"):
        write_report(report_dir, page_size=1)
    assert (report_dir / "report.html").read_text() == "mine"
    assert _tree(report_dir / "report") == before  # the previous report's assets, untouched
    assert [p.name for p in report_dir.iterdir() if ".fpncli-tmp" in p.name] == []


@pytest.mark.parametrize(
    "users", [["figure_for_paper.png", "notes.txt"], ["000001_p2.png", "sub/000002_p2.png"]]
)
def test_report_never_deletes_a_users_report_thumbs_folder(report_dir, users):
    """An unmarked report/ holding only thumbs/ was taken for an earlier version's report
    whatever thumbs/ held, and deleted whole."""
    thumbs = report_dir / "report" / "thumbs"
    for name in users:
        (thumbs / name).parent.mkdir(parents=True, exist_ok=True)
        (thumbs / name).write_bytes(name.encode())
    before = _tree(report_dir / "report")
    assert write_report(report_dir) == report_dir / "report_2.html"
    assert _tree(report_dir / "report") == before and not (report_dir / "report.html").exists()
    assert (report_dir / "report_2" / ".fpncli-report").is_file()


def test_a_report_without_images_says_so(report_dir):
    """Every image failed: the grid's heading said "Images 1-0 of 0"."""
    for folder in report_dir.iterdir():
        if folder.is_dir():
            shutil.rmtree(folder)
    page = write_report(report_dir).read_text()
    assert "<h2>No images</h2>" in page and "Images 1-" not in page
    assert 'class="grid"' not in page and "not an image Pillow can read" in page  # the failure


def test_concurrent_reports_of_one_folder_take_turns(report_dir):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:  # each used to clear the folder the others wrote into
        paths = list(pool.map(lambda _: write_report(report_dir, page_size=1), range(8)))
    assert paths == [report_dir / "report.html"] * 8
    for page in [paths[0], *sorted((report_dir / "report").glob("page_*.html"))]:
        _assert_links_resolve(page)


def test_a_16_bit_photos_thumbnail_is_scaled_as_extract_reads_it(tmp_path):
    """Pillow's convert("RGB") clips 16-bit values: a mid-grey photo's thumbnail was white."""
    import numpy as np
    from PIL import Image

    from fpncli.viz.report_thumbs import _input_thumbnail

    Image.fromarray(np.full((40, 60), 32896, np.uint16)).save(tmp_path / "grey16.png")
    thumb = _input_thumbnail(tmp_path / "grey16.png", 20, {"input": {"width": 60, "height": 40}})
    assert thumb.shape == (20, 30, 3) and int(thumb.max()) == 128


def test_a_photo_extract_reads_has_its_thumbnail_whatever_its_exif(tmp_path):
    """A PNG whose EXIF block Pillow cannot parse (extract reads it, unturned) lost its thumbnail
    to getexif's error; a TIFF with Orientation 6, whose size Pillow 11+ gives turned already,
    was turned again for the size check and called replaced since."""
    import numpy as np
    from PIL import Image, TiffImagePlugin

    from fpncli.io.image_load import load_image
    from fpncli.viz.report_thumbs import _input_thumbnail

    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:10, :10] = 255  # a white top-left corner marks the orientation
    Image.fromarray(pixels).save(tmp_path / "exif.png", exif=b"\xff" * 40)
    tags = TiffImagePlugin.ImageFileDirectory_v2()
    tags[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / "turned.tif", tiffinfo=tags)
    for name in ("exif.png", "turned.tif"):
        photo = load_image(tmp_path / name)
        size = {"width": photo.width, "height": photo.height}
        thumb = _input_thumbnail(tmp_path / name, 20, {"input": size})
        assert thumb is not None, name
        expected = np.asarray(Image.fromarray(photo.rgb).resize(thumb.shape[1::-1]))
        assert thumb.shape[:2] == (20, round(20 * photo.width / photo.height)), name
        assert np.abs(thumb.astype(int) - expected).max() <= 64, name  # same picture, same way up


def test_a_shard_folders_show_command_is_quoted_as_a_shell_takes_it(sample_shards, tmp_path):
    import html
    import shlex

    root = tmp_path / "my shards"
    shutil.copytree(sample_shards, root)
    write_report(root)
    page = html.unescape((root / "report.html").read_text())
    command = re.search(r"<code>(fpncli show .*?)</code>", page)
    assert command and shlex.split(command.group(1))[:3] == ["fpncli", "show", str(root)]


def test_the_level_table_says_it_counts_images_with_tensors(report_dir):
    """P2 said "2 images" for three images, one extracted with --no-npy (min/max in its
    manifest, no .npy): the column counts the images whose tensor was read, and says so."""
    folder = sorted(p.parent for p in report_dir.glob("*/manifest.json"))[0]
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["levels"]["p2"]["file"] = None  # as --no-npy writes it
    del manifest["files"]["p2.npy"]
    (folder / "p2.npy").unlink()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    page = (write_report(report_dir)).read_text()
    table = re.search(r"<h2>Levels across the folder</h2>\s*<table>(.*?)</table>(.*?)</p>", page,
                      re.S)  # fmt: skip
    assert table, page[:2000]
    assert "<th>images with tensors</th>" in table.group(1)
    counts = dict(re.findall(r"<tr><td>(\w+)</td><td>(\d+)</td>", table.group(1)))
    assert counts == {"p2": "2", "p3": "3", "p4": "3", "p5": "3", "p6": "3"}, counts
    assert "no tensor file (e.g. extracted with --no-npy): p2 1." in table.group(2)


def _drop_tensors(folder: Path, levels: list[str]) -> None:
    """``folder``'s ``levels`` made as ``--no-npy`` writes them: no ``file``, no ``.npy``."""
    manifest = json.loads((folder / "manifest.json").read_text())
    for name in levels:
        manifest["levels"][name]["file"] = None
        del manifest["files"][f"{name}.npy"]
        (folder / f"{name}.npy").unlink()
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_report_scale_says_which_cells_follow_it_and_needs_a_tensor(report_dir):
    """``--scale level|shared``: a ``--no-npy`` image's cells show its heatmap on its own range,
    and the page says so (it said every cell was on the run's range); where no image has a
    tensor the option changes nothing and is refused, as extract refuses such options."""
    folders = sorted(p.parent for p in report_dir.glob("*/manifest.json"))
    _drop_tensors(folders[0], ["p2"])
    page = write_report(report_dir, scale="level").read_text()
    note = re.search(r"<p>Colour scale: <b>level</b>(.*?)</p>", page, re.S)
    assert note and (
        "Only the thumbnails drawn from tensors follow it: the cells marked no tensor (images "
        "extracted with --no-npy: p2 1) show the heatmap as it was drawn, on its own range."
    ) in note.group(1)
    for folder in folders:
        _drop_tensors(folder, [n for n in ("p2", "p3", "p4", "p5", "p6")
                               if (folder / f"{n}.npy").exists()])  # fmt: skip
    before = (report_dir / "report.html").read_bytes()
    result = CliRunner().invoke(cli, ["report", str(report_dir), "--scale", "shared"])
    assert result.exit_code == 2, result.output
    assert (
        "Invalid value for '--scale': 'shared' changes nothing here: no image holds tensors "
        "(extracted with --no-npy)"
    ) in result.output
    assert (report_dir / "report.html").read_bytes() == before  # the last report is kept
    page = write_report(report_dir).read_text()  # --scale image: each cell on its own range
    assert "Colour scale: <b>image</b>" in page


def test_report_draws_thumbnails_with_the_cores_it_may_use(report_dir, monkeypatch):
    """Its default thread count follows the CPU affinity (a container's share), not the
    machine's ``os.cpu_count``."""
    import concurrent.futures

    import fpncli.viz.report as report_module

    sizes = []

    class Pool(concurrent.futures.ThreadPoolExecutor):
        def __init__(self, max_workers=None, *args, **kwargs):
            sizes.append(max_workers)
            super().__init__(max_workers, *args, **kwargs)

    monkeypatch.setattr(report_module, "ThreadPoolExecutor", Pool)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    write_report(report_dir)
    assert sizes == [2]


@pytest.mark.parametrize(
    "field,value,reason",
    [
        ("heatmap.cmap", "berlinx", "heatmap.cmap of manifest.json: unknown colormap 'berlinx'"),
        ("heatmap.reduce", "median", "heatmap.reduce of manifest.json: unknown reduction 'median'"),
        (
            "heatmap.channel",
            4096,
            "heatmap.channel of manifest.json: 4096, but p2 has 256 channels",
        ),
    ],
)
def test_heatmap_settings_that_cannot_be_drawn_list_that_image_only(
    sample_extraction, tmp_path, field, value, reason
):
    """An unknown colormap in one manifest stopped the whole report ("Error: unknown colormap
    'berlinx'", no image named) after the previous report's assets were deleted."""
    bad = tmp_path / "bad"
    shutil.copytree(sample_extraction, bad)
    write_report(bad)
    _corrupt(bad, tmp_path / "bad2", field, value)
    shutil.rmtree(bad)
    bad = (tmp_path / "bad2").rename(bad)
    result = CliRunner().invoke(cli, ["report", str(bad)])
    assert result.exit_code == 1, result.output
    (line,) = [ln for ln in result.output.splitlines() if ln.startswith("Error: ")]
    assert line.startswith("Error: outputs of chelsea cannot be read, left out: " + reason), line
    page = bad / "report.html"
    assert html.escape(reason) in page.read_text() and "Images 1-2 of 2" in page.read_text()
    _assert_links_resolve(page)
    assert not list((bad / "report" / "thumbs").glob("000000_*")), "chelsea's thumbnails drawn"


def test_a_report_that_fails_midway_leaves_the_previous_one_whole(report_dir, monkeypatch):
    import fpncli.viz.report as report_module
    import fpncli.viz.report_folder as report_folder

    write_report(report_dir, page_size=2)
    before = _tree(report_dir)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report_module, "_histogram_png", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_report(report_dir, page_size=2)
    assert _tree(report_dir) == before  # its pages and every asset they link to, and no more
    for page in (report_dir / "report.html", report_dir / "report" / "page_0002.html"):
        _assert_links_resolve(page)
    assert not [p.name for p in report_dir.iterdir() if ".fpncli-tmp" in p.name]
    # the first page, written last, fails: the previous assets are put back
    monkeypatch.undo()
    write_bytes = report_folder.atomic_write_bytes

    def first_page_fails(path, data):
        return full_disk() if path.name == "report.html" else write_bytes(path, data)

    monkeypatch.setattr(report_folder, "atomic_write_bytes", first_page_fails)
    with pytest.raises(OSError, match="No space left"):
        write_report(report_dir, page_size=2)
    assert _tree(report_dir) == before


@pytest.mark.parametrize("replace", ["missing", "folder"])
def test_a_listed_npy_that_is_gone_is_unreadable_not_not_saved(report_dir, replace):
    """A deleted p4.npy made the cell say "not saved" and the report exit 0."""
    npy = report_dir / "coffee" / "p4.npy"
    npy.unlink()
    if replace == "folder":
        npy.mkdir()
    result = CliRunner().invoke(cli, ["report", str(report_dir)])
    assert result.exit_code == 1, result.output
    says = "Error: outputs of coffee cannot be read, left out: p4: its .npy is missing or unread"
    assert says in result.output
    page = (report_dir / "report.html").read_text()
    assert "Outputs that cannot be read" in page and "not saved" not in page
    assert "Images 1-2 of 2" in page


def test_levels_saved_as_pictures_only_link_their_pictures(tmp_path, monkeypatch):
    """``extract --no-npy --overlay``: every level cell said "not saved" beside p2.png."""
    monkeypatch.setenv("FPNCLI_HOME", str(tmp_path / "home"))
    out = tmp_path / "out"
    samples = Path(__file__).resolve().parent.parent / "samples"
    args = ["extract", str(sorted(samples.glob("*.jpg"))[0]), "-o", str(out), "--no-npy"]
    args += ["--overlay", "--weights", "random", "--min-size", "64", "--max-size", "128"]
    assert CliRunner().invoke(cli, args, catch_exceptions=False).exit_code == 0
    result = CliRunner().invoke(cli, ["report", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    page = out / "report.html"
    text = page.read_text()
    assert "not saved" not in text and text.count("no tensor</td>") == 5
    (key,) = [p.parent.name for p in out.glob("*/manifest.json")]
    # the picture itself, at the thumbnails' height (it was its file name only)
    img = f'<img src="{key}/p2.png" alt="p2.png" height="64">'
    assert f'<a href="{key}/p2.png">{img}</a>no tensor' in text
    _assert_links_resolve(page)


@pytest.mark.parametrize("name", ["q/evil", '" onerror="alert(1)', "<b>p2", "p2 ", ""])
def test_a_level_name_that_is_not_an_identifier_lists_its_image_as_unreadable(
    sample_extraction, tmp_path, name
):
    """A manifest level called ``q/evil`` stopped the whole report (its thumbnail's name made a
    folder that is not there), and one called ``" onerror="alert(1)`` was written into the
    page's markup as it is. Such a manifest is malformed: report lists that image (and covers
    the others), diff does not compare it, show refuses it, each in one line."""
    bad = tmp_path / "bad"
    shutil.copytree(sample_extraction, bad)
    path = bad / "chelsea" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["levels"][name] = dict(manifest["levels"]["p6"])
    path.write_text(json.dumps(manifest))
    runner = CliRunner()
    diff = ["diff", str(sample_extraction), str(bad), "-o", str(tmp_path / "d")]
    for args, says in (
        (["report", str(bad)], "Error: outputs of chelsea cannot be read, left out: "),
        (diff, "not compared: chelsea: cannot be read in B: "),
        (["show", str(bad / "chelsea"), "--save", str(tmp_path / "s.png")], "Error: "),
    ):
        result = runner.invoke(cli, args)
        assert result.exit_code == 1, (args, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit), args
        (line,) = [ln for ln in result.output.splitlines() if ln.startswith(says)]
        assert f"chelsea/manifest.json is malformed: the level name {name!r}" in line, line
    page = (bad / "report.html").read_text()
    assert "Outputs that cannot be read" in page and "<h2>Images 1-2 of 2</h2>" in page
    assert "onerror" not in page.replace("onerror=&quot;", "")


def test_the_report_escapes_level_names_in_its_markup():
    """Defence in depth: a level name reaches the page escaped (the grid's header, its
    thumbnails' src and alt, the statistics table), whatever the manifest checks let through."""
    from fpncli.viz.report_html import Row, grid_html, stats_html

    name = '" onerror="alert(1)<b>'
    stats = LevelStats(name)
    accumulate(stats, np.ones((1, 1, 2, 2), np.float32))
    row = Row("a", {name: f"report/thumbs/000000_{name}.png"}, {}, None, None, "4x6")
    for markup in (stats_html({name: stats}), grid_html([row], [name], "", 1)):
        tags = _Tags()
        tags.feed(markup)
        assert name in tags.text and "b" not in tags.names, markup
        assert all(a in ("src", "alt", "href", "class", "height") for a in tags.attributes)
        for src in tags.values.get("src", []):  # the thumbnail, its name percent-encoded
            assert src.startswith("report/thumbs/000000_%22%20onerror%3D"), src


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.names, self.attributes, self.text = set(), set(), []
        self.values: dict[str, list[str]] = {}

    def handle_starttag(self, tag, attrs):
        self.names.add(tag)
        for key, value in attrs:
            self.attributes.add(key)
            self.values.setdefault(key, []).append(value)
            if key == "alt":
                self.text.append(value)

    def handle_data(self, data):
        self.text.append(data)


def test_a_forged_run_log_field_reaches_the_page_as_text(report_dir):
    """run.json is data: its ``shards`` (which no run writes; the merge of a sharded run's logs
    sets it) was put into the summary's markup as it stood, a ``<script>`` with it. The field
    is dropped when the log is read, and every label and value of the summary is escaped."""
    from fpncli.io.catalog import open_extractions
    from fpncli.io.run_log import read_run_log
    from fpncli.viz.report_html import Tally, summary_html

    script = "<script>alert(document.cookie)</script>"
    run = json.loads((report_dir / "run.json").read_text())
    run.update(shards=script, aborted=f"<b>{script}")
    (report_dir / "run.json").write_text(json.dumps(run))
    assert "shards" not in read_run_log(report_dir)
    result = CliRunner().invoke(cli, ["report", str(report_dir)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    page = (report_dir / "report.html").read_text()
    assert "<script" not in page and "images failed (last run)</th><td>1<" in page
    assert f"<th>stopped early</th><td>{html.escape(f'<b>{script}')}</td>" in page
    # and whatever reaches the summary, a label included, is text in it
    found, tally = open_extractions(report_dir), Tally()
    tally.add({"weights": {"name": script}, "precision": "<i>", "device": "&"}, 1)
    markup = summary_html(report_dir, found, tally, {**run, "shards": script}, [])
    tags = _Tags()
    tags.feed(markup)
    assert tags.names == {"h2", "h3", "table", "tr", "th", "td"}, tags.names
    label = html.escape(f"images failed (last run, shards: {script} logged)")
    assert f"<th>{label}</th>" in markup
    for value in (f"{script} (sha256 -)", "<i>", "&"):
        assert f"<td>{html.escape(value)}</td>" in markup, value


def _read_only_refuses(folder: Path) -> bool:
    """Whether a folder without write permission refuses this process a new file (not root's,
    who writes there anyway)."""
    probe = folder / "probe"
    probe.mkdir()
    probe.chmod(0o555)
    try:
        (probe / "x").write_text("")
        return False
    except PermissionError:
        return True
    finally:
        probe.chmod(0o755)
        shutil.rmtree(probe)


_READ_ONLY_REPORT = (
    "Error: cannot write the report: the folder rofeat is not writable; make it writable, or "
    "copy the extraction to a folder you can write and report that copy"
)


def test_a_report_in_a_folder_it_cannot_write_names_it(sample_extraction, tmp_path, monkeypatch):
    """report of an extraction in a read-only folder said "[Errno 13] Permission denied:
    'rofeat/.report.fpncli-tmp.26004.d2d788f2'": a temporary file, and nothing to do. One line
    names the folder and what to do instead (monkeypatched: tests may run as root)."""
    import errno

    import fpncli.viz.report as report_module

    def refused(root, assets_name):
        tmp = root / f".{assets_name}.fpncli-tmp.1.x"
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp))

    monkeypatch.chdir(tmp_path)
    shutil.copytree(sample_extraction, "rofeat")
    monkeypatch.setattr(report_module, "build_folder", refused)
    result = CliRunner().invoke(cli, ["report", "rofeat"])
    assert result.exit_code == 1, result.output
    assert result.output.splitlines() == [_READ_ONLY_REPORT]


def test_report_and_show_in_a_read_only_folder_name_it(sample_extraction, tmp_path, monkeypatch):
    """As test_a_report_in_a_folder_it_cannot_write_names_it, for real (where a read-only
    folder refuses this process: not root), report and show; --receptive-field says so before
    its tens of seconds of work."""
    if not _read_only_refuses(tmp_path):
        pytest.skip("this process writes into read-only folders (root)")
    monkeypatch.chdir(tmp_path)
    shutil.copytree(sample_extraction, "rofeat")
    runner = CliRunner()
    report = _READ_ONLY_REPORT
    folders = [Path(d) for d, _, _ in os.walk("rofeat")]
    for folder in folders:
        folder.chmod(0o555)
    try:
        result = runner.invoke(cli, ["report", "rofeat"])
        assert result.exit_code == 1 and result.output.splitlines() == [report], result.output
        saved = "is not writable; pass --save FILE.png in a folder you can write"
        for extra in ([], ["--receptive-field", "--at", "5,5"]):
            result = runner.invoke(cli, ["show", "rofeat/chelsea", *extra])
            assert result.exit_code == 1, result.output
            assert result.output.splitlines()[-1].endswith(f"the folder rofeat/chelsea {saved}"), (
                result.output
            )
            assert "computing the receptive fields" not in result.output
    finally:
        for folder in folders:
            folder.chmod(0o755)
