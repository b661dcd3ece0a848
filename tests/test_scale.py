"""``--scale image|level|shared``: the run's ranges from manifests, in show and in the report."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from fpncli.cli import cli
from fpncli.io.guard import OptionError
from fpncli.viz import show_draw
from fpncli.viz.scale import drawn_range, extraction_root, recorded_range, run_ranges


def _manifest(levels: dict, reduce="channel", channel=0) -> dict:
    return {"heatmap": {"reduce": reduce, "channel": channel}, "levels": levels}


A = _manifest({"p2": {"range": [-1.0, 2.0], "min": -9.0, "max": 9.0},
               "p3": {"range": [0.0, 5.0], "min": -1.0, "max": 6.0}})  # fmt: skip
B = _manifest({"p2": {"range": [-3.0, 1.0], "min": -4.0, "max": 4.0},
               "p3": {"min": -2.0, "max": 3.0, "range": None}})  # fmt: skip


def test_recorded_and_drawn_range_known_answers():
    """The range recorded for the map asked for only; an end of the run's range that the
    image's recorded range set is the drawn map's own, the other the run's."""
    assert recorded_range(A, "p2") == (-1.0, 2.0)
    assert recorded_range(A, "p2", channel=7) is None  # another map than the one recorded
    assert recorded_range(A, "p2", reduce="mean") is None
    assert recorded_range(B, "p3") is None and recorded_range(None, "p2") is None
    assert drawn_range((-3.0, 2.0), (-1.0, 2.0), (-1.1, 2.1)) == (-3.0, 2.1)
    assert drawn_range((-3.0, 2.0), None, (-1.1, 2.1)) == (-3.0, 2.0)
    assert drawn_range((1.0, 1.0), (1.0, 1.0), (0.9, 0.9)) == (0.9, 0.9)


def test_run_ranges_known_answers():
    assert run_ranges([A, B], "image") is None
    assert run_ranges([A, B], "level") == {"p2": (-3.0, 2.0), "p3": (-2.0, 5.0)}
    assert run_ranges([A, B], "shared") == {"p2": (-3.0, 5.0), "p3": (-3.0, 5.0)}
    # another map than the one drawn at extraction: the recorded min/max over all channels
    assert run_ranges([A, B], "level", channel=7) == {"p2": (-9.0, 9.0), "p3": (-2.0, 6.0)}
    nan = _manifest({"p2": {"range": [float("nan"), 1.0], "min": 0.0, "max": 1.0}})
    assert run_ranges([nan], "level") == {"p2": (0.0, 1.0)}
    # forged: a heatmap record that is no mapping reads as the defaults (channel 0 drawn); a
    # null channel, or a range past float's range, gives the level's min/max
    assert run_ranges([{**A, "heatmap": "x"}], "level")["p2"] == (-1.0, 2.0)
    forged = [{**A, "heatmap": {"channel": None}},
              _manifest({"p2": {"range": [10**400, 1], "min": -9.0, "max": 9.0}})]  # fmt: skip
    for manifest in forged:
        assert run_ranges([manifest], "level")["p2"] == (-9.0, 9.0)
    with pytest.raises(ValueError, match="unknown scale"):
        run_ranges([A], "global")
    with pytest.raises(ValueError, match="use --scale image") as caught:
        run_ranges([_manifest({})], "level")
    assert not isinstance(caught.value, OptionError)  # damaged statistics, not the option


def test_an_unbounded_map_is_an_option_error_and_names_the_option_once():
    """The l2 map of images drawn otherwise rules out ``--scale level``: an ``OptionError``,
    whose message does not begin by naming the option (click's line names it; its text, for a
    library caller, does so once)."""
    with pytest.raises(OptionError, match=r"^--scale: 2 image\(s\) record no range") as caught:
        run_ranges([A, B], "level", reduce="l2")
    assert caught.value.option == "--scale"
    assert caught.value.message.startswith("2 image(s) record no range")


def test_run_ranges_of_l2_and_pca_maps_need_their_own_recorded_range():
    # a channel, the channels' mean and max lie within the recorded min/max over all channels
    assert run_ranges([A, B], "level", reduce="mean")["p2"] == (-9.0, 9.0)
    assert run_ranges([A, B], "level", reduce="max")["p3"] == (-2.0, 6.0)
    # an l2 norm or a pca projection does not: an image drawn otherwise has no range for it
    for reduce in ("l2", "pca"):
        with pytest.raises(ValueError, match=rf"2 image\(s\) record no range for their {reduce} "
                           rf"map.*--reduce {reduce}, or use --scale image"):  # fmt: skip
            run_ranges([A, B], "level", reduce=reduce)
    l2 = _manifest({"p2": {"range": [5.0, 40.0], "min": -1.0, "max": 1.0}}, reduce="l2")
    assert run_ranges([l2], "level", reduce="l2") == {"p2": (5.0, 40.0)}
    with pytest.raises(ValueError, match="1 image"):
        run_ranges([l2, A], "shared", reduce="l2")
    # reduce=None (the report): each image's own drawn map, whatever the others drew
    assert run_ranges([A, l2], "level", reduce=None)["p2"] == (-1.0, 40.0)
    no_range = _manifest({"p2": {"min": -1.0, "max": 1.0}}, reduce="pca")
    with pytest.raises(ValueError, match="their pca map"):
        run_ranges([A, no_range], "level", reduce=None)


def test_show_and_report_scale_an_l2_image_on_its_own_kind_of_range(tmp_path, monkeypatch):
    """show refuses an l2 map on ranges recorded for channel 0 (it drew one colour: the l2 norm
    lies far above the channels' max); the report of a run whose images were drawn with
    different reductions scales each on ranges of its own kind."""
    import numpy as np
    from PIL import Image

    monkeypatch.setenv("FPNCLI_HOME", str(tmp_path / "home"))
    out = tmp_path / "out"
    common = ["-o", str(out), "--weights", "random", "--min-size", "64", "--max-size", "96"]
    runner = CliRunner()
    folder = _two_images(tmp_path / "in")
    result = runner.invoke(cli, ["extract", str(folder / "a.png"), *common])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["extract", str(folder / "b.png"), *common, "--reduce", "l2"])
    assert result.exit_code == 0, result.output
    shown = runner.invoke(cli, ["show", str(out / "a"), "--level", "p3", "--reduce", "l2",
                                "--scale", "level", "--save", str(tmp_path / "a.png")])  # fmt: skip
    assert shown.exit_code == 2 and "record no range for their l2 map" in shown.output
    assert shown.output.startswith("Error: Invalid value for '--scale': 1 image(s) record no ")
    report = runner.invoke(cli, ["report", str(out), "--scale", "level"])
    assert report.exit_code == 0, report.output
    for thumb in (out / "report" / "thumbs").glob("*_p3.png"):  # each on a range that fits it
        assert len(np.unique(np.asarray(Image.open(thumb)).reshape(-1, 3), axis=0)) > 4, thumb


def _recorded(root, level):
    ranges = [json.loads(p.read_text())["levels"][level]["range"] for p in
              sorted(root.glob("*/manifest.json"))]  # fmt: skip
    return min(r[0] for r in ranges), max(r[1] for r in ranges)


def test_show_scale_level_and_shared(sample_extraction, tmp_path, drawn_heatmaps):
    assert extraction_root(sample_extraction / "chelsea") == sample_extraction.resolve()
    drawn = drawn_heatmaps(show_draw)
    runner = CliRunner()
    for name in ("chelsea", "coffee"):
        args = ["show", str(sample_extraction / name), "--level", "p3", "--scale", "level",
                "--save", str(tmp_path / f"{name}.png")]  # fmt: skip
        result = runner.invoke(cli, args, catch_exceptions=False)
        assert result.exit_code == 0 and "colour scale level: ranges from the 3 image(s)" in (
            result.output
        )
    seen = [kwargs["vrange"] for _, kwargs in drawn]
    assert seen[0] == seen[1] == pytest.approx(_recorded(sample_extraction, "p3"))
    args = ["show", str(sample_extraction / "rocket"), "--level", "p5", "--scale", "shared",
            "--save", str(tmp_path / "r.png")]  # fmt: skip
    assert runner.invoke(cli, args, catch_exceptions=False).exit_code == 0
    every = [_recorded(sample_extraction, n) for n in ("p2", "p3", "p4", "p5", "p6")]
    assert drawn[2][1]["vrange"] == pytest.approx(
        (min(r[0] for r in every), max(r[1] for r in every))
    )
    image = runner.invoke(cli, ["show", str(tmp_path / "chelsea.png"), "--scale", "level"])
    assert image.exit_code == 2 and "must be an extraction folder" in image.output
    assert image.output.startswith("Error: Invalid value for '--scale': --scale level takes")


@pytest.mark.parametrize("scale", ["level", "shared"])
def test_show_scale_of_no_extraction_says_what_the_target_is(sample_extraction, tmp_path, scale):
    """A missing target, a folder holding no extraction and a batch output folder are refused
    as without --scale (exit 1, saying what is wrong), not as --scale's usage error."""
    (tmp_path / "plain").mkdir()
    runner = CliRunner()
    for target, message in [
        (tmp_path / "nonexist", "no such folder, .npy or image"),
        (tmp_path / "plain", "holds no complete extraction"),
        (sample_extraction, "is a batch output folder with 3 extraction(s)"),
    ]:
        for extra in ([], ["--scale", scale]):
            result = runner.invoke(cli, ["show", str(target), "--level", "p3", *extra])
            assert result.exit_code == 1, result.output
            assert message in result.output and "--scale" not in result.output, result.output


def test_show_scale_of_damaged_statistics_is_no_usage_error(sample_extraction, tmp_path):
    """Manifests whose statistics are null (damaged, forged) give no range: a runtime failure,
    exit 1, not a refusal of --scale's value."""
    import shutil

    folder = tmp_path / "out" / "chelsea"
    shutil.copytree(sample_extraction / "chelsea", folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    for meta in manifest["levels"].values():
        meta.update(range=None, min=None, max=None)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(cli, ["show", str(folder), "--scale", "level"])
    assert result.exit_code == 1, result.output
    assert result.output.splitlines() == [
        "Error: no recorded statistics in these manifests: use --scale image"
    ]


def test_show_scale_leaves_out_the_manifests_show_and_report_refuse(
    sample_extraction, tmp_path, drawn_heatmaps
):
    """--scale level took its range from every manifest of the run as it stood: one forged to
    +-1e308 drew the image shown in one flat colour, while show and report refuse that
    manifest as malformed. Such a manifest (and one that cannot be read) is left out, and
    the note says how many; the image shown, malformed, is refused as without --scale."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(sample_extraction, out)
    path = out / "coffee" / "manifest.json"
    manifest = json.loads(path.read_text())
    for meta in manifest["levels"].values():
        meta.update(min=-1e308, max=1e308, range=[-1e308, 1e308])
    path.write_text(json.dumps(manifest))
    (out / "rocket" / "manifest.json").write_text("{not json")
    drawn = drawn_heatmaps(show_draw)
    args = ["show", str(out / "chelsea"), "--level", "p3", "--scale", "level", "--save",
            str(tmp_path / "c.png")]  # fmt: skip
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == (
        "colour scale level: ranges from the 1 image(s) (2 left out: malformed or unreadable "
        f"manifests) under {out.resolve()}"
    )
    own = json.loads((out / "chelsea" / "manifest.json").read_text())["levels"]["p3"]["range"]
    assert [kwargs["vrange"] for _, kwargs in drawn] == [pytest.approx(tuple(own))]
    args[1] = str(out / "coffee")
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and result.output.startswith(f"Error: {path} is malformed: ")


def test_show_scale_of_an_image_in_shards(sample_shards, tmp_path, drawn_heatmaps):
    """``show OUT --key K --scale level``: the run's ranges from the shards' manifests (it was
    refused as if OUT were an image to extract on the fly)."""
    from fpncli.io.catalog import open_extractions

    drawn = drawn_heatmaps(show_draw)
    found = open_extractions(str(sample_shards))
    recorded = [found.manifest(k)["levels"]["p3"]["range"] for k in found.keys()]
    args = ["show", str(sample_shards), "--key", found.keys()[0], "--level", "p3", "--scale",
            "level", "--save", str(tmp_path / "k.png")]  # fmt: skip
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"colour scale level: ranges from the {len(recorded)} image(s)" in result.output
    seen = [kwargs["vrange"] for _, kwargs in drawn]
    assert seen == [pytest.approx((min(r[0] for r in recorded), max(r[1] for r in recorded)))]


def test_report_scale(sample_extraction, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(sample_extraction, out)
    result = CliRunner().invoke(cli, ["report", str(out), "--scale", "shared"],
                                catch_exceptions=False)  # fmt: skip
    assert result.exit_code == 0
    text = (out / "report.html").read_text()
    assert "Colour scale: <b>shared</b>" in text
    every = [_recorded(out, n) for n in ("p2", "p3", "p4", "p5", "p6")]
    shared = f"{min(r[0] for r in every):.4g}..{max(r[1] for r in every):.4g}"
    assert text.count(shared) == 5  # every level on the one range


def _two_images(folder):
    import numpy as np
    from PIL import Image

    folder.mkdir()
    rng = np.random.RandomState(3)
    for i, name in enumerate(("a.png", "b.png")):
        pixels = rng.randint(0, 255, (48, 64, 3)).astype(np.uint8) // (1 + 3 * i)
        Image.fromarray(pixels).save(folder / name)
    return folder


def _p3_ranges(drawn) -> list[tuple]:
    """The colour ranges of the P3 heatmaps among ``drawn`` (``drawn_heatmaps``), in order."""
    return [tuple(kwargs["vrange"]) for _, kwargs in drawn if kwargs["label"].startswith("p3 ")]


def test_extract_scale_shared_redraws_on_the_run_range(tmp_path, drawn_heatmaps):
    from fpncli.io.manifest import is_complete
    from fpncli.viz import visualize

    drawn = drawn_heatmaps(visualize)
    out = tmp_path / "out"
    args = ["extract", str(_two_images(tmp_path / "in")), "-o", str(out), "--weights", "random",
            "--min-size", "64", "--max-size", "96", "--workers", "1", "--overlay",
            "--scale", "shared"]  # fmt: skip
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "--scale shared: redrew 2 image(s)" in result.output
    manifests = [json.loads((out / n / "manifest.json").read_text()) for n in ("a", "b")]
    own = [m["levels"]["p3"]["range"] for m in manifests]  # each image's own range, kept
    assert own[0] != own[1]
    every = [r for m in manifests for meta in m["levels"].values() for r in meta["range"]]
    shared = [min(every), max(every)]
    for name, manifest in zip(("a", "b"), manifests):
        assert manifest["scale"]["mode"] == "shared"
        assert set(manifest["scale"]["levels"]) == {"p2", "p3", "p4", "p5", "p6"}
        assert all(r == shared for r in manifest["scale"]["levels"].values())
        assert is_complete(out / name, manifest["run_key"])  # redrawn sizes recorded
    # first pass: each image on its own range; second pass: both on the shared one
    seen = _p3_ranges(drawn)
    assert sorted(seen[:2]) == sorted(tuple(r) for r in own) and seen[2:] == [tuple(shared)] * 2
    # resume: nothing re-extracted, and nothing redrawn either: both folders already record the
    # shared range (every picture and manifest was rewritten, 346 KB for two images)
    files = sorted(p for p in out.rglob("*") if p.parent.name in ("a", "b"))
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}
    drawn.clear()
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0 and "skipped 2" in result.output
    assert "--scale shared: nothing redrawn: 2 image(s) already on the run's ranges" in (
        result.output
    )
    assert "redraw" not in result.output.splitlines()[-1] and "0 bytes written" in result.output
    assert "redraw" not in json.loads((out / "run.json").read_text())
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}
    assert _p3_ranges(drawn) == [] and after == before
    # a picture gone from one folder (or a scale not recorded): that folder alone is redrawn
    from fpncli.io.outputs import OutputOptions
    from fpncli.run.rescale import redraw_run

    options = OutputOptions(overlay=True, min_size=64, max_size=96)
    (out / "b" / "p3_overlay.png").unlink()
    summary = redraw_run([out / "a", out / "b"], "shared", options)
    assert (summary.redrawn, summary.kept) == (1, 1) and _p3_ranges(drawn) == [tuple(shared)]
    assert (out / "a" / "p3.png").stat().st_mtime_ns == before[out / "a" / "p3.png"][0]
    assert all(is_complete(out / n) for n in ("a", "b"))
    summary = redraw_run([out / "a", out / "b"], "level", options)  # another mode: both
    assert (summary.redrawn, summary.kept) == (2, 0)


def test_pca_maps_of_a_canvas_run_and_its_redraw_are_fitted_on_the_valid_cells(
    tmp_path, drawn_heatmaps
):
    """On a canvas most cells of a level are padding (p3: 8x11 of 16x16 here): the run and the
    --scale redraw fitted the pca over them too, so an image's map changed with the canvas. The
    run's maps (torch) and the redraw's (numpy, from the .npy) are now the pca of the valid
    cells."""
    import numpy as np

    from fpncli.viz import visualize
    from fpncli.viz.maps import reduce_channels

    drawn = drawn_heatmaps(visualize)
    out = tmp_path / "out"
    args = ["extract", str(_two_images(tmp_path / "in")), "-o", str(out), "--weights", "random",
            "--min-size", "64", "--max-size", "96", "--workers", "1", "--levels", "p3",
            "--reduce", "pca", "--canvas", "128x128", "--scale", "shared"]  # fmt: skip
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    want = []
    for name in ("a", "b"):
        meta = json.loads((out / name / "manifest.json").read_text())["levels"]["p3"]
        level = np.load(out / name / "p3.npy")
        assert (meta["valid_height"], meta["valid_width"], *level.shape[2:]) == (8, 11, 16, 16)
        want.append(reduce_channels(level[..., :8, :11], "pca"))
    maps = [map2d for map2d, kwargs in drawn if kwargs["label"].startswith("p3 ")]
    assert len(maps) == 4  # the run's two, then the redraw's two
    for map2d in maps[:2]:
        assert any(np.allclose(map2d, w, rtol=1e-5, atol=1e-5 * np.abs(w).max()) for w in want)
    for map2d in maps[2:]:
        assert any(np.array_equal(map2d, w) for w in want)


def test_the_redraw_counts_the_bytes_it_writes_in_the_log_and_the_last_line(tmp_path):
    """A resumed --scale run rewrote every picture and manifest, yet run.json and the last line
    said 0 bytes written: the redraw's bytes are logged beside the run's, once it is done."""
    from fpncli.cli.extract_report import _size
    from fpncli.io.run_log import read_run_log

    out = tmp_path / "out"
    args = ["extract", str(_two_images(tmp_path / "in")), "-o", str(out), "--weights", "random",
            "--min-size", "64", "--max-size", "96", "--workers", "1",
            "--levels", "p5,p6"]  # fmt: skip
    assert CliRunner().invoke(cli, args, catch_exceptions=False).exit_code == 0
    result = CliRunner().invoke(cli, [*args, "--scale", "level"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rewritten = [f for f in out.glob("*/*") if f.suffix != ".npy"]  # pictures and manifests
    assert len(rewritten) == 2 * 4  # p5.png, p6.png, overview.png, manifest.json each
    size = sum(f.stat().st_size for f in rewritten)
    log = json.loads((out / "run.json").read_text())
    assert (log["done"], log["skipped"], log["bytes_written"]) == (0, 2, 0)  # the run's own
    assert log["redraw"] == {"scale": "level", "images": 2, "bytes": size}
    assert read_run_log(out)["redraw"] == log["redraw"]
    assert result.stdout.rstrip().endswith(
        f"{_size(size)} written to {out} ({_size(size)} of it by the --scale level redraw)"
    )
    (out / "run.json").unlink()  # a sharded run's logs: each shard's redraw, summed
    for i, images in enumerate((1, 2)):
        part = {**log, "redraw": {"scale": "level", "images": images, "bytes": 10 * images}}
        (out / f"run-{i}-of-2.json").write_text(json.dumps(part))
    assert read_run_log(out)["redraw"] == {"scale": "level", "images": 3, "bytes": 30}
    (out / "run-1-of-2.json").write_text(json.dumps({**log, "redraw": {"images": -1}}))
    assert read_run_log(out)["redraw"] == {"scale": "level", "images": 1, "bytes": 10}  # forged


@pytest.mark.parametrize(
    "extra",
    [
        ["--scale", "bogus"],
        ["--scale", "level", "--no-npy"],
        ["--scale", "shared", "--format", "wds"],
        # nothing drawn: it said "redrew 2 image(s)" and wrote a scale into their manifests
        ["--scale", "shared", "--no-heatmaps", "--no-overview"],
        ["--scale", "level", "--no-heatmaps", "--no-overview", "--no-npy"],
    ],
)
def test_extract_bad_scale_fails_before_any_work(tmp_path, monkeypatch, extra):
    import importlib

    extract = importlib.import_module("fpncli.cli.extract")
    monkeypatch.setattr(extract, "_load_model", lambda *a, **k: pytest.fail("model loaded"))
    out = tmp_path / "out"
    args = ["extract", str(_two_images(tmp_path / "in")), "-o", str(out), "--weights", "random"]
    result = CliRunner().invoke(cli, args + extra)
    assert result.exit_code == 2 and "--scale" in result.output
    assert "Traceback" not in result.output and not out.exists()
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_a_run_scale_for_no_picture_is_refused_by_the_library_too(tmp_path):
    from fpncli.io.outputs import OutputOptions
    from fpncli.run.rescale import check_scale, redraw_run

    none_drawn = OutputOptions(save_heatmaps=False, save_overview=False)
    check_scale("image", none_drawn)  # the default: nothing to redraw, nothing refused
    for scale in ("level", "shared"):
        with pytest.raises(ValueError, match=f"--scale {scale} sets the colour range of the pic"):
            check_scale(scale, none_drawn)
        with pytest.raises(ValueError, match="--no-heatmaps with --no-overview draws none"):
            redraw_run([tmp_path], scale, none_drawn)


def test_extract_resume_with_scale_image_puts_back_own_ranges(tmp_path, drawn_heatmaps):
    from fpncli.io.manifest import is_complete
    from fpncli.viz import visualize

    drawn = drawn_heatmaps(visualize)
    out = tmp_path / "out"
    args = ["extract", str(_two_images(tmp_path / "in")), "-o", str(out), "--weights", "random",
            "--min-size", "64", "--max-size", "96", "--workers", "1",
            "--levels", "p3,p4"]  # fmt: skip
    runner = CliRunner()
    assert runner.invoke(cli, [*args, "--scale", "level"], catch_exceptions=False).exit_code == 0
    assert all("scale" in json.loads((out / n / "manifest.json").read_text()) for n in "ab")
    drawn.clear()
    result = runner.invoke(cli, args, catch_exceptions=False)  # default --scale image, resumed
    assert result.exit_code == 0 and "skipped 2" in result.output
    manifests = [json.loads((out / n / "manifest.json").read_text()) for n in "ab"]
    assert all("scale" not in m for m in manifests)
    assert sorted(_p3_ranges(drawn)) == sorted(tuple(m["levels"]["p3"]["range"]) for m in manifests)
    assert all(is_complete(out / n, m["run_key"]) for n, m in zip("ab", manifests))


def _one_cell_p6(tmp_path, *extra: str) -> list[str]:
    """extract's arguments for an 80x80 photo at --min-size 64 (a one-cell P6), mean maps of
    P5 and P6, into ``tmp_path / "out"``."""
    import numpy as np
    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    pixels = np.random.RandomState(4).randint(0, 255, (80, 80, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(folder / "a.png")
    return ["extract", str(folder), "-o", str(tmp_path / "out"), "--weights", "random",
            "--min-size", "64", "--max-size", "128", "--workers", "1", "--reduce", "mean",
            "--levels", "p5,p6", *extra]  # fmt: skip


def _run_reduction_one_ulp_up(monkeypatch):
    """The run's reduction (torch's, whose maps the manifests' ranges come from) made one ulp
    above numpy's of the .npy; returns what puts it back."""
    import torch

    from fpncli.run.device import transfer

    reduce_maps = transfer.reduce_maps
    up = torch.tensor(float("inf"))
    monkeypatch.setattr(transfer, "reduce_maps", lambda *a: torch.nextafter(reduce_maps(*a), up))
    return lambda: monkeypatch.setattr(transfer, "reduce_maps", reduce_maps)


def _p6_labels(monkeypatch) -> list:
    """The range labels every one-cell (P6) picture is drawn with, from now on."""
    import numpy as np

    from fpncli.viz import overview, visualize

    labels, real = [], visualize.range_labels

    def spy(values, vrange):
        drawn = real(values, vrange)
        if np.asarray(values).shape == (1, 1):
            labels.append(drawn)
        return drawn

    for module in (visualize, overview):  # the heatmaps and overlays, and the overview
        monkeypatch.setattr(module, "range_labels", spy)
    return labels


def test_a_resumed_image_scale_run_draws_each_map_on_the_range_of_the_map_drawn(
    tmp_path, monkeypatch, drawn_heatmaps
):
    """The redraw back to own ranges reduces the .npy again, with numpy's mean, which may
    differ from the run's torch mean by a rounding (here made sure of: the run's is one ulp
    up): each picture's range is that of the map it draws, so a one-cell P6 (an 80x80 photo at
    --min-size 64) reads "min .. max" as in a plain run, not "<= v (clipped)" on the range
    the run recorded."""
    from fpncli.viz import visualize

    args = _one_cell_p6(tmp_path)
    runner = CliRunner()
    put_back = _run_reduction_one_ulp_up(monkeypatch)
    assert runner.invoke(cli, [*args, "--scale", "level"], catch_exceptions=False).exit_code == 0
    put_back()
    drawn = drawn_heatmaps(visualize)
    result = runner.invoke(cli, args, catch_exceptions=False)  # default --scale image, resumed
    assert result.exit_code == 0 and "redrew 1 image(s) on their own ranges" in result.output
    assert [(kw["label"].split()[0], m.shape) for m, kw in drawn] == [
        ("p5", (2, 2)),
        ("p6", (1, 1)),
    ]
    p6, kwargs = drawn[1]
    assert tuple(kwargs["vrange"]) == (float(p6.min()), float(p6.max()))  # the one cell, twice


@pytest.mark.parametrize("scale", ["level", "shared"])
def test_the_image_that_sets_an_end_of_the_run_range_is_not_labelled_clipped(
    tmp_path, monkeypatch, scale
):
    """--scale level|shared takes the run's range from the manifests (the run's torch
    reduction) and redraws the map reduced from the .npy by numpy, which may differ by a
    rounding (here made sure of: the run's is one ulp up): the one-cell P6 that sets the run's
    P6 range (level) or its top (shared) reads 'min v' / 'max v', as it reaches them, not
    '<= v (clipped)' or a bare 'v' one ulp away, in its heatmap and in the overview."""
    args = _one_cell_p6(tmp_path, "--scale", scale)
    _run_reduction_one_ulp_up(monkeypatch)
    labels = _p6_labels(monkeypatch)  # the first pass, then the redraw
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0 and "redrew 1 image(s) on the run's ranges" in result.output
    assert len(labels) == 4, labels  # heatmap and overview, in each pass
    for left, right, data in labels:
        assert "clipped" not in data and right.startswith("max "), labels
        assert left.startswith("min ") or (scale == "shared" and not left.startswith("<=")), labels


def test_show_draws_the_image_that_sets_an_end_of_the_run_range_reaching_it(tmp_path, monkeypatch):
    """show --scale level|shared, as extract's redraw: the map reduced by numpy from the .npy
    is one ulp below the range its manifest records (the run's reduction, made one ulp up
    here), and the one-cell P6 that sets the run's range reads 'min v' / 'max v', not
    '<= v (clipped)' or a bare 'v'."""
    args, out = _one_cell_p6(tmp_path), tmp_path / "out"
    put_back = _run_reduction_one_ulp_up(monkeypatch)
    assert CliRunner().invoke(cli, args, catch_exceptions=False).exit_code == 0
    put_back()
    labels = _p6_labels(monkeypatch)
    for scale, level in (("level", "p6"), ("level", "all"), ("shared", "p6")):
        labels.clear()
        show = ["show", str(out / "a"), "--level", level, "--reduce", "mean", "--scale", scale,
                "--save", str(tmp_path / "s.png")]  # fmt: skip
        assert CliRunner().invoke(cli, show, catch_exceptions=False).exit_code == 0
        ((left, right, data),) = labels
        assert "clipped" not in data and right.startswith("max "), labels
        assert left.startswith("min ") if scale == "level" else not left.startswith("<=")


@pytest.mark.parametrize("extracted, shown", [("minmax", (1.0, 99.0)), ("1,99", (0.0, 100.0))])
def test_show_with_another_clip_draws_every_image_on_the_run_range(tmp_path, extracted, shown):
    """The end of the run's range an image set is taken from its own map only for a rounding:
    with a --clip other than the extraction's, its own range is another one altogether, and
    every image (the one that set an end too) is drawn on the run's range."""
    import numpy as np
    from PIL import Image

    from fpncli.viz import show
    from fpncli.viz.show_draw import level_panels
    from fpncli.viz.sources import from_folder

    folder = tmp_path / "in"
    folder.mkdir()
    for i, name in enumerate("abc"):
        pixels = np.random.RandomState(i).randint(0, 255, (40 + 8 * i, 48, 3)).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{name}.png")
    out = tmp_path / "out"
    args = ["extract", str(folder), "-o", str(out), "--weights", "random", "--no-resize",
            "--workers", "1", "--levels", "p5,p6", "--clip", extracted]  # fmt: skip
    assert CliRunner().invoke(cli, args, catch_exceptions=False).exit_code == 0
    fixed = show._run_ranges(str(out / "a"), "level", "channel", 0, lambda text: None)
    for name in "abc":
        source = from_folder(out / name, ["p5", "p6"])
        panels = level_panels(source, "all", reduce="channel", channel=0, clip=shown, fixed=fixed)
        assert {p["name"]: p["range"] for p in panels} == fixed, name


@pytest.mark.parametrize(
    "forge",
    [
        lambda m, _: m["preprocess"].update(scale_y=None),  # not a number
        lambda m, _: m["levels"]["p3"].update(heatmap="../../escaped.png"),  # outside the folder
        lambda m, tmp: m.update(overview=str(tmp / "escaped.png")),  # an absolute path
    ],
)
def test_redraw_reports_a_manifest_forged_after_the_run_and_writes_nothing(tmp_path, forge):
    """A manifest changed between the run and its redraw: that folder is reported in one line,
    none of its files (nor any outside it) is touched, and the other folder is redrawn."""
    from fpncli.io.outputs import OutputOptions
    from fpncli.run.rescale import redraw_run

    out = tmp_path / "out"
    args = ["extract", str(_two_images(tmp_path / "in")), "-o", str(out), "--weights", "random",
            "--min-size", "64", "--max-size", "96", "--workers", "1"]  # fmt: skip
    assert CliRunner().invoke(cli, args, catch_exceptions=False).exit_code == 0
    forged = json.loads((out / "a" / "manifest.json").read_text())
    forge(forged, tmp_path)
    (out / "a" / "manifest.json").write_text(json.dumps(forged))
    before = {p: p.read_bytes() for p in (out / "a").iterdir()}
    options = OutputOptions(min_size=64, max_size=96)
    summary = redraw_run([out / "a", out / "b"], "shared", options)
    assert summary.redrawn == 1 and [f for f, _ in summary.failed] == [str(out / "a")]
    assert "\n" not in summary.failed[0][1] and summary.failed[0][1]
    assert {p: p.read_bytes() for p in (out / "a").iterdir()} == before
    assert not list(tmp_path.rglob("escaped.png"))
    assert json.loads((out / "b" / "manifest.json").read_text())["scale"]["mode"] == "shared"


def test_ctrl_c_during_the_redraw_says_how_to_finish_it(tmp_path, monkeypatch):
    from fpncli.run import rescale

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(rescale, "redraw_run", interrupted)
    out = tmp_path / "out"
    args = ["extract", str(_two_images(tmp_path / "in")), "-o", str(out), "--weights", "random",
            "--min-size", "64", "--max-size", "96", "--workers", "1"]  # fmt: skip
    result = CliRunner().invoke(cli, [*args, "--scale", "level"])
    assert result.exit_code == 130
    assert "interrupted during the --scale level redraw; finish it with: fpncli extract" in (
        result.output
    )
    assert (out / "run.json").is_file()  # written before the redraw


def test_the_run_ranges_pass_holds_one_manifest_at_a_time(sample_extraction, tmp_path, monkeypatch):
    """--scale level|shared reads every manifest of the run for its ranges before redrawing:
    one at a time (a list of them grew by 13 KB per image, 1.3 GB for 100,000 images)."""
    import tracemalloc

    from fpncli.io.outputs import OutputOptions
    from fpncli.run import rescale

    text = (sample_extraction / "chelsea" / "manifest.json").read_text()
    folders = []
    for i in range(300):
        folder = tmp_path / f"{i:03d}"
        folder.mkdir()
        (folder / "manifest.json").write_text(text)
        folders.append(folder)
    monkeypatch.setattr(rescale, "_redraw", lambda *args: 0)  # the ranges pass alone
    rescale.redraw_run(folders[:2], "level", OutputOptions())  # imports: not in the figure
    tracemalloc.start()
    try:
        summary = rescale.redraw_run(folders, "level", OutputOptions())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert summary.redrawn == 300 and set(summary.ranges) == {"p2", "p3", "p4", "p5", "p6"}
    assert peak < 1_000_000, peak  # 300 manifests held at once: about 4 MB


def test_extract_scale_never_redraws_through_a_symlinked_folder(tmp_path):
    """``OUT/sub -> ../victim`` made after a run: ``--scale level`` rewrote the victim's
    pictures and manifest (redraw_run wrote ``folder / file`` unchecked). The image fails when
    written, and the redraw leaves the folder as it is and says so."""
    from fpncli.io.markers import mark_output_root
    from fpncli.io.outputs import OutputOptions
    from fpncli.run.rescale import redraw_run

    photos = _two_images(tmp_path / "in")
    (photos / "sub").mkdir()
    (photos / "a.png").rename(photos / "sub" / "a.png")
    base = ["--weights", "random", "--min-size", "64", "--max-size", "96"]
    runner = CliRunner()
    victim, out = tmp_path / "victim", tmp_path / "out"
    assert (
        runner.invoke(cli, ["extract", str(photos / "sub"), "-o", str(victim), *base]).exit_code
        == 0
    )
    assert runner.invoke(cli, ["extract", str(photos), "-o", str(out), *base]).exit_code == 0
    for f in (out / "sub" / "a").iterdir():
        f.unlink()
    (out / "sub" / "a").rmdir()
    (out / "sub").rmdir()
    (out / "sub").symlink_to("../victim")
    before = {f.name: f.read_bytes() for f in (victim / "a").iterdir()}
    result = runner.invoke(cli, ["extract", str(photos), "-o", str(out), *base, "--scale", "level"])
    assert result.exit_code == 1, result.output
    assert f"{out / 'sub'} is a symlink to ../victim" in result.output
    assert {f.name: f.read_bytes() for f in (victim / "a").iterdir()} == before
    # the library's redraw, given the folder behind the link, leaves it too
    mark_output_root(out)
    options = OutputOptions(min_size=64, max_size=96)
    summary = redraw_run([out / "sub" / "a", out / "b"], "level", options, root=out)
    # (b, which the run redrew on the same ranges, is left as it is)
    assert (summary.redrawn, summary.kept) == (0, 1)
    assert summary.failed[0][0] == str(out / "sub" / "a")
    assert "is a symlink to ../victim" in summary.failed[0][1]
    assert {f.name: f.read_bytes() for f in (victim / "a").iterdir()} == before


@pytest.mark.parametrize("drawn", [[], ["--no-heatmaps", "--no-overview"], ["--no-npy"]])
def test_a_resumed_image_scale_run_redraws_only_where_an_earlier_run_drew_on_its_ranges(
    tmp_path, monkeypatch, drawn
):
    """A rerun of a finished --scale image run (the default) read every folder's manifest
    twice more after the run, to find none an earlier --scale level|shared run had redrawn:
    a quarter of a large rerun's time, even with nothing drawn. Now a folder is read once, and
    the redraw runs only over those that record a run's scale; with nothing drawn or no .npy
    (none of their folders can hold one) nothing is read. Where it must, it still runs."""
    from fpncli.run import rescale

    out = tmp_path / "out"
    args = ["extract", str(_two_images(tmp_path / "in")), "-o", str(out), "--weights", "random",
            "--min-size", "64", "--max-size", "96", "--workers", "1", "--levels", "p3",
            *drawn]  # fmt: skip
    runner = CliRunner()
    assert runner.invoke(cli, args, catch_exceptions=False).exit_code == 0
    real, calls = rescale.redraw_run, []

    def no_pass(folders, scale, *a, **kw):
        calls.append((scale, list(folders)))
        raise AssertionError("the redraw pass ran")

    monkeypatch.setattr(rescale, "redraw_run", no_pass)
    result = runner.invoke(cli, args, catch_exceptions=False)  # resumed: both skipped
    assert result.exit_code == 0 and "skipped 2" in result.output and calls == []
    if drawn:
        return
    monkeypatch.setattr(rescale, "redraw_run", real)  # an earlier run on the run's ranges
    assert runner.invoke(cli, [*args, "--scale", "level"], catch_exceptions=False).exit_code == 0

    def spy(folders, scale, *a, **kw):
        calls.append((scale, list(folders)))
        return real(folders, scale, *a, **kw)

    monkeypatch.setattr(rescale, "redraw_run", spy)
    result = runner.invoke(cli, args, catch_exceptions=False)
    assert "redrew 2 image(s) on their own ranges" in result.output
    assert calls == [("image", [out / "a", out / "b"])]
