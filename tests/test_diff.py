"""``fpncli diff``: the measures on tensors with known answers, then two extractions compared."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from fpncli.cli import cli
from fpncli.viz.diff import diff_extractions, short_names
from fpncli.viz.diff_result import compare_arrays


def test_compare_known_answers():
    a = np.random.RandomState(0).randn(4, 5, 6).astype(np.float32)
    same = compare_arrays(a, a.copy())
    assert (same.max_rel, same.mean_rel, same.max_abs) == (0.0, 0.0, 0.0)
    assert same.cosine == pytest.approx(1.0)
    scaled = compare_arrays(a, a * 1.25)  # |A - B| = 0.25 |A| everywhere
    assert scaled.max_rel == pytest.approx(0.25) and scaled.mean_rel == pytest.approx(0.25)
    assert scaled.cosine == pytest.approx(1.0)
    assert scaled.max_abs == pytest.approx(0.25 * np.abs(a).max(), rel=1e-6)
    flipped = compare_arrays(a, -a)
    assert flipped.cosine == pytest.approx(-1.0) and flipped.max_rel == pytest.approx(2.0)
    x = np.array([1.0, 0.0, 0.0, 0.0])
    y = np.array([0.0, 2.0, 0.0, 0.0])
    orth = compare_arrays(x, y)
    assert orth.cosine == 0.0 and orth.max_rel == 2.0 and orth.mean_rel == pytest.approx(3.0)
    one_cell = np.zeros((2, 3, 3))
    other = one_cell.copy()
    other[1, 2, 2] = 0.5
    one_cell[0, 0, 0] = 4.0
    d = compare_arrays(one_cell, other)
    assert d.max_abs == 4.0 and d.max_rel == 1.0 and d.mean_rel == pytest.approx(4.5 / 4.0)
    assert compare_arrays(np.zeros(3), np.zeros(3)).cosine == 1.0
    assert compare_arrays(np.zeros(3), np.ones(3)).max_rel == float("inf")
    with pytest.raises(ValueError, match="shapes differ"):
        compare_arrays(np.zeros(3), np.zeros(4))


def test_a_nan_is_the_worst_difference_and_diff_json_stays_strict(sample_extraction, tmp_path):
    """B's p4 all NaN: "differs" named p2 (max_rel 0, below tol: max() passed over the NaN,
    which compares as neither larger nor smaller), and diff.json held bare NaN, which is not
    JSON. Now p4 is named, the level table says NaN, and diff.json is strict JSON with the
    non-finite measures as strings."""
    b = tmp_path / "b"
    shutil.copytree(sample_extraction, b)
    p4 = np.load(b / "coffee" / "p4.npy")
    p4[:] = np.nan
    np.save(b / "coffee" / "p4.npy", p4)
    d = tmp_path / "d"
    result = CliRunner().invoke(cli, ["diff", str(sample_extraction), str(b), "-o", str(d)])
    assert result.exit_code == 1, result.output
    (line,) = [ln for ln in result.output.splitlines() if ln.startswith("differs: ")]
    assert line == "differs: coffee: p4 max_rel nan (a NaN or an infinity in A or B)", line

    def refuse(constant):
        raise AssertionError(f"diff.json holds {constant}: not JSON")

    table = json.loads((d / "diff.json").read_text(), parse_constant=refuse)
    rows = {row["level"]: row for row in table["levels"]}
    assert rows["p4"]["max_rel"] == "NaN" and rows["p4"]["min_cosine"] == "NaN", rows["p4"]
    assert rows["p4"]["within_tol"] == 2 and rows["p3"]["max_rel"] == 0.0
    coffee = next(i for i in table["images"] if i["key"] == "coffee")
    p4_row = next(lv for lv in coffee["levels"] if lv["level"] == "p4")
    assert p4_row["max_rel"] == "NaN" and float(p4_row["max_rel"]) != float(p4_row["max_rel"])
    assert "coffee,p4,nan," in (d / "diff.csv").read_text()
    # the NaN in A, the reference: it was "max_rel inf > tol", "Infinity" in diff.json
    swapped = CliRunner().invoke(cli, ["diff", str(b), str(sample_extraction), "-o", str(d)])
    assert swapped.exit_code == 1, swapped.output
    assert "differs: coffee: p4 max_rel nan (a NaN or an infinity in A or B)" in swapped.output
    rows = {row["level"]: row for row in json.loads((d / "diff.json").read_text())["levels"]}
    assert rows["p4"]["max_rel"] == "NaN" and rows["p4"]["mean_rel"] == "NaN", rows["p4"]


def test_a_nan_or_an_infinity_gives_nan_measures_without_numpys_warnings(
    sample_extraction, tmp_path
):
    """A NaN in A (the reference) gave max_rel and mean_rel infinity (_ratio(nan, nan)), as if
    A were zero; an infinity (what --dtype float16 stores past 65504) in A or B printed numpy's
    RuntimeWarnings (inf - inf, a cosine of inf / inf). The undefined measures are NaN, and
    nothing is printed (warnings are errors here). The same NaN or infinity on both sides
    agrees: an output compared with itself differed where it held one."""
    a = np.random.RandomState(0).randn(2, 3, 4).astype(np.float32)
    nan_a = a.copy()
    nan_a[0, 0, 0] = np.nan
    inf_a = a.copy()
    inf_a[0, 0, 0] = np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = compare_arrays(nan_a, a)
        assert np.isnan([d.max_rel, d.mean_rel, d.cosine, d.max_abs]).all(), d
        for x, y in ((inf_a, a), (a, inf_a), (inf_a, np.zeros_like(a))):
            d = compare_arrays(x, y)
            assert np.isnan(d.cosine), d
        d = compare_arrays(inf_a, a)
        assert np.isnan(d.max_rel) and np.isnan(d.mean_rel) and d.max_abs == np.inf
        d = compare_arrays(a, inf_a)  # B infinitely far from a finite A
        assert d.max_rel == np.inf and d.mean_rel == np.inf
        for same in (inf_a, nan_a):  # agreed where both hold it; the rest compared
            d = compare_arrays(same, same)
            assert (d.max_rel, d.mean_rel, d.max_abs) == (0, 0, 0) and d.cosine == pytest.approx(1)
        moved = inf_a.copy()
        moved[1, 2, 3] += 1.0
        d = compare_arrays(inf_a, moved)
        assert d.max_abs == 1.0 and 0 < d.max_rel < 1 and 0.9 < d.cosine < 1, d
        b = tmp_path / "b"
        shutil.copytree(sample_extraction, b)
        p4 = np.load(b / "coffee" / "p4.npy")
        p4[0, 0, 0, 0] = np.inf
        np.save(b / "coffee" / "p4.npy", p4)
        results = []
        for roots in ([sample_extraction, b], [b, b]):
            args = ["diff", *map(str, roots), "-o", str(tmp_path / "d")]
            results.append(CliRunner().invoke(cli, args, catch_exceptions=False))
            assert "Warning" not in results[-1].output, results[-1].output
    differs, itself = results
    assert differs.exit_code == 1 and "p4 max_rel inf" in differs.output, differs.output
    assert itself.exit_code == 0, itself.output  # the infinity on both sides agrees


def test_worst_level_and_the_level_table_put_a_nan_first():
    from fpncli.viz.diff_result import DiffResult, ImageDiff, LevelDiff, worst_level

    nan = float("nan")
    fine, bad = LevelDiff("p2", 0.0, 0.0, 1.0, 0.0), LevelDiff("p4", nan, nan, nan, nan)
    big = LevelDiff("p3", 5.0, 1.0, 0.5, 2.0)
    for levels in ([fine, bad], [bad, fine], [fine, big, bad], [bad, big]):
        assert worst_level(levels) is bad
    assert worst_level([fine, big]) is big
    images = [ImageDiff("a", [LevelDiff("p4", 0.5, 0.1, 0.9, 1.0)]), ImageDiff("b", [bad])]
    (row,) = DiffResult("A", "B", 1e-4, images).level_table()
    assert np.isnan(row["max_rel"]) and np.isnan(row["min_cosine"]) and np.isnan(row["max_abs"])
    assert row["within_tol"] == 0


def _perturbed_copy(src, dst, level="p3", factor=1.01):
    shutil.copytree(src, dst)
    for folder in sorted(p.parent for p in dst.rglob("manifest.json")):
        array = np.load(folder / f"{level}.npy")
        np.save(folder / f"{level}.npy", array * np.float32(factor))
    return dst


def test_diff_pictures_name_a_and_b_by_their_shortest_distinct_names():
    assert short_names("/tmp/runs/fp32", "/tmp/runs/bf16/") == ("fp32", "bf16")
    assert short_names("out/chelsea", "out2/chelsea") == ("out/chelsea", "out2/chelsea")
    assert short_names("s3://bucket/a/feats", "feats") == ("a/feats", "feats")
    assert short_names("x/y/z/same", "w/y/z/same") == ("y/z/same", "y/z/same")  # three at most


def test_diff_scaled_level_known_answer(sample_extraction, tmp_path):
    b = _perturbed_copy(sample_extraction, tmp_path / "b", "p3", 1.01)
    result = diff_extractions(sample_extraction, b, tol=1e-3, out=tmp_path / "d")
    assert len(result.compared) == 3 and not result.agree
    for image in result.images:
        by_level = {d.level: d for d in image.levels}
        assert by_level["p3"].max_rel == pytest.approx(0.01, rel=1e-4)
        assert by_level["p3"].cosine == pytest.approx(1.0)
        assert all(by_level[n].max_rel == 0.0 for n in ("p2", "p4", "p5", "p6"))
        picture = Image.open(tmp_path / "d" / image.picture)
        assert picture.size[0] > 300
    table = {row["level"]: row for row in result.level_table()}
    assert table["p3"]["within_tol"] == 0 and table["p2"]["within_tol"] == 3
    rows = (tmp_path / "d" / "diff.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 * 5 and sum("above tol" in r for r in rows) == 3
    assert json.loads((tmp_path / "d" / "diff.json").read_text())["agree"] is False
    assert diff_extractions(sample_extraction, b, tol=0.02).agree


def test_diff_cli_exit_codes_geometry_and_missing(sample_extraction, tmp_path):
    runner = CliRunner()
    same = runner.invoke(cli, ["diff", str(sample_extraction), str(sample_extraction),
                               "-o", str(tmp_path / "same")], catch_exceptions=False)  # fmt: skip
    assert same.exit_code == 0, same.output
    assert "3 of 3 images compared: all 3 compared agree" in same.output
    b = _perturbed_copy(sample_extraction, tmp_path / "b", "p5", 1.5)
    manifest = json.loads((b / "coffee" / "manifest.json").read_text())
    manifest["preprocess"]["resized_width"] += 32
    (b / "coffee" / "manifest.json").write_text(json.dumps(manifest))
    (b / "rocket" / "manifest.json").unlink()
    args = ["diff", str(sample_extraction), str(b), "-o", str(tmp_path / "d"), "--tol", "0.1"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 1
    assert "not compared: coffee: geometry differs: resized size" in result.output
    assert "not compared: rocket: only in A" in result.output
    assert "differs: chelsea: p5 max_rel 0.5 > 0.1" in result.output
    # only p2 compared: chelsea agrees, the others are still not comparable
    only_p2 = runner.invoke(cli, [*args, "--levels", "p2", "--no-pictures"])
    assert "1 of 3 images compared: all 1 compared agree within tol 0.1; 2 not compared" in (
        only_p2.output
    )
    assert only_p2.exit_code == 1
    photos = tmp_path / "photos"  # not an extraction: said, not "only in B" for every image
    photos.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photos / "chelsea.png")
    wrong = runner.invoke(cli, ["diff", str(photos), str(sample_extraction)])
    assert wrong.exit_code == 1 and "photos holds no complete extraction" in wrong.output
    missing = runner.invoke(cli, ["diff", str(sample_extraction), str(tmp_path / "nope")])
    assert missing.exit_code != 0 and "no such extraction folder" in missing.output
    assert "Traceback" not in missing.output


def test_diff_single_folders(sample_extraction, tmp_path):
    b = _perturbed_copy(sample_extraction / "chelsea", tmp_path / "chelsea", "p2", 2.0)
    result = diff_extractions(sample_extraction / "chelsea", b)
    assert [i.key for i in result.images] == ["chelsea"]
    assert {d.level: d.max_rel for d in result.images[0].levels}["p2"] == pytest.approx(1.0)


@pytest.mark.parametrize("replace", ["missing", "folder", "fifo"])
def test_diff_fails_when_a_listed_npy_cannot_be_loaded(sample_extraction, tmp_path, replace):
    copy = tmp_path / "copy"
    shutil.copytree(sample_extraction, copy)
    npy = copy / "chelsea" / "p2.npy"
    npy.unlink()
    if replace == "folder":
        npy.mkdir()
    elif replace == "fifo":
        os.mkfifo(npy)
    runner = CliRunner()
    for extra in ([], ["--levels", "p2"]):
        args = ["diff", str(sample_extraction), str(copy), "-o", str(tmp_path / "d"), *extra]
        result = runner.invoke(cli, args)
        assert result.exit_code == 1, result.output
        assert "chelsea: p2: its .npy is missing or unreadable in B" in result.output
        assert "all 3 compared agree" not in result.output
    swapped = runner.invoke(cli, ["diff", str(copy), str(sample_extraction), "--no-pictures",
                                  "-o", str(tmp_path / "d2")])  # fmt: skip
    assert swapped.exit_code == 1 and "p2: its .npy is missing or unreadable in A" in swapped.output


def test_diff_of_images_called_like_its_tables(sample_extraction, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(sample_extraction, out)
    (out / "chelsea").rename(out / "diff.csv")  # inputs diff.csv.jpg and diff.json.png
    (out / "coffee").rename(out / "diff.json")
    result = CliRunner().invoke(cli, ["diff", str(out), str(out), "-o", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    tables = tmp_path / "d"
    assert "diff.csv,p2," in (tables / "diff.csv").read_text()
    assert json.loads((tables / "diff.json").read_text())["agree"]
    assert (tables / "_diff.csv" / "diff.png").is_file()
    assert (tables / "_diff.json" / "diff.png").is_file()


def test_an_image_called_like_a_table_never_takes_another_images_picture_folder(
    sample_extraction, tmp_path
):
    """Photos ``diff.csv.png`` and ``_diff.csv.png``: the first one's picture moved to
    ``_diff.csv/``, the second one's own folder, and one picture overwrote the other (exit 0,
    both rows naming ``_diff.csv/diff.png``). Now the moved folder is no other key's, and the
    folders do not depend on the order the images come in."""
    out = tmp_path / "out"
    shutil.copytree(sample_extraction, out)
    (out / "chelsea").rename(out / "diff.csv")
    (out / "coffee").rename(out / "_diff.csv")
    d = tmp_path / "d"
    result = CliRunner().invoke(cli, ["diff", str(out), str(out), "-o", str(d)],
                                catch_exceptions=False)  # fmt: skip
    assert result.exit_code == 0, result.output
    pictures = {i["key"]: i["picture"] for i in json.loads((d / "diff.json").read_text())["images"]}
    assert pictures == {"diff.csv": "__diff.csv/diff.png", "_diff.csv": "_diff.csv/diff.png",
                        "rocket": "rocket/diff.png"}  # fmt: skip
    written = sorted(p.relative_to(d).as_posix() for p in d.rglob("*.png"))
    assert written == sorted(pictures.values()), written  # three pictures, none overwritten
    from fpncli.viz.diff_output import picture_folders

    keys = ["diff.csv/sub", "__diff.csv", "DIFF.JSON", "_diff.csv", "diff.csv", "a/diff.csv"]
    expected = {"diff.csv/sub": "___diff.csv/sub", "diff.csv": "___diff.csv",
                "__diff.csv": "__diff.csv", "_diff.csv": "_diff.csv", "DIFF.JSON": "_DIFF.JSON",
                "a/diff.csv": "a/diff.csv"}  # fmt: skip
    assert picture_folders(keys) == expected and picture_folders(keys[::-1]) == expected


def test_a_long_wds_key_gets_a_picture_folder_that_fits_a_file_name(tmp_path):
    """A wds key spells each dot %2E: a photo named with 243 bytes of dots and letters made a
    picture folder of 480 bytes, "File name too long", exit 1 for two identical outputs (the
    folder output cut its name short, with a hash, and passed). Now each part of a picture
    folder over 255 bytes is cut short the same way."""
    pytest.importorskip("pyarrow.parquet", reason="--format wds needs pyarrow (fpncli[wds])")
    from fpncli.io.jobs import NAME_MAX_BYTES
    from fpncli.viz.diff_output import picture_folders

    photos = tmp_path / "in"
    photos.mkdir()
    name = "L." * 119 + "x"
    Image.new("RGB", (32, 32)).save(photos / f"{name}.png")
    out = tmp_path / "wds"
    args = ["extract", str(photos), "-o", str(out), "--format", "wds", "--weights", "random",
            "--min-size", "32", "--max-size", "64", "--no-heatmaps", "--no-overview"]  # fmt: skip
    assert CliRunner().invoke(cli, args, catch_exceptions=False).exit_code == 0
    d = tmp_path / "d"
    result = CliRunner().invoke(cli, ["diff", str(out), str(out), "-o", str(d)])
    assert result.exit_code == 0, result.output
    (image,) = json.loads((d / "diff.json").read_text())["images"]
    assert len(image["key"].encode()) > NAME_MAX_BYTES and (d / image["picture"]).is_file()
    folders = picture_folders(["a" * 300, "a" * 299 + "b", "s/" + "c" * 256])
    assert len(set(folders.values())) == 3  # cut short, still apart
    assert all(len(part.encode()) <= NAME_MAX_BYTES
               for f in folders.values() for part in f.split("/"))  # fmt: skip


@pytest.mark.parametrize("what", ["folder", "symlink", "fifo"])
@pytest.mark.parametrize("pictures", [True, False])
def test_an_output_folder_whose_table_is_not_a_file_is_refused_before_anything_is_written(
    sample_extraction, tmp_path, what, pictures
):
    """``diff OUT OUT -o OUT`` where OUT holds the extraction of a photo ``diff.json.png`` (a
    folder ``OUT/diff.json``): the pictures were written, then the table's rename failed with
    "[Errno 21] Is a directory: 'OUT/.diff.json.fpncli-tmp....'". Now a folder, a symlink or a
    FIFO where a table goes is one line naming it, before anything is compared or written."""
    out = tmp_path / "out"
    shutil.copytree(sample_extraction, out)
    name = "diff.json" if what != "fifo" else "diff.csv"
    if what == "folder":
        (out / "coffee").rename(out / name)
    elif what == "symlink":
        (out / name).symlink_to(tmp_path / "elsewhere.json")
    else:
        os.mkfifo(out / name)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    args = ["diff", str(out), str(out), "-o", str(out), *([] if pictures else ["--no-pictures"])]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    kind = {"folder": "a folder", "symlink": "a symlink", "fifo": "a FIFO"}[what]
    assert result.output == (
        f"Error: {out / name} is {kind}, not a file: the diff tables cannot be written there; "
        "give another output folder (-o)\n"
    ), result.output
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # nothing written
    assert not (tmp_path / "elsewhere.json").exists()


@pytest.mark.parametrize("pictures", [True, False])
def test_an_output_folder_that_is_a_dangling_symlink_is_one_line_naming_it(
    sample_extraction, tmp_path, dangling_outputs, pictures
):
    """``diff A B -o X``, X a symlink to a folder that is not there (or a loop of links): the
    folder could not be made, and the error was "[Errno 17] File exists: 'X'", as it was for
    ``-o X/sub``. Now one line names the link and what is wrong, before anything is compared,
    and nothing is written (the missing folder is not made through the link)."""
    before = sorted(os.listdir(tmp_path))
    for out, line in dangling_outputs:
        args = ["diff", str(sample_extraction), str(sample_extraction), "-o", str(out)]
        result = CliRunner().invoke(cli, [*args, *([] if pictures else ["--no-pictures"])])
        assert result.exit_code == 1, result.output
        assert result.output.splitlines() == [line], result.output
    assert sorted(os.listdir(tmp_path)) == before


def test_a_picture_where_another_images_folder_goes_is_named_and_the_tables_written(
    sample_extraction, tmp_path
):
    """Photos ``chelsea.png`` and ``chelsea/diff.png.png``: keys ``chelsea`` and
    ``chelsea/diff.png``, whose picture's folder is the first one's picture. The whole diff
    stopped ("[Errno 17] File exists"), no table written; now that picture is named with the
    reason, every image is compared, the tables are written and the exit code is 1."""
    out = tmp_path / "out"
    shutil.copytree(sample_extraction, out)
    (out / "coffee").rename(out / "chelsea" / "diff.png")
    d = tmp_path / "d"
    result = CliRunner().invoke(cli, ["diff", str(out), str(out), "-o", str(d)])
    assert result.exit_code == 1, result.output
    (line,) = [ln for ln in result.output.splitlines() if ln.startswith("no picture: ")]
    assert line.startswith(
        "no picture: chelsea/diff.png: chelsea/diff.png/diff.png not written: [Errno 17] File "
    ), line
    summary = "3 of 3 images compared: all 3 compared agree within tol 0.0001; 1 picture not"
    assert summary in result.output, result.output
    table = json.loads((d / "diff.json").read_text())
    images = {i["key"]: i for i in table["images"]}
    assert images["chelsea/diff.png"]["picture"] is None and images["chelsea/diff.png"]["levels"]
    assert "File exists" in images["chelsea/diff.png"]["picture_error"]
    assert images["chelsea"]["picture"] == "chelsea/diff.png" and images["rocket"]["picture"]
    assert (d / "chelsea" / "diff.png").is_file() and (d / "rocket" / "diff.png").is_file()
    assert "chelsea/diff.png,p2," in (d / "diff.csv").read_text()
    rows = list(csv.reader(io.StringIO((d / "diff.csv").read_text())))
    (note,) = [r for r in rows if r[0] == "chelsea/diff.png" and r[1] == ""]
    assert note[-1].startswith("chelsea/diff.png/diff.png not written: [Errno 17] File exists")


def test_diff_never_writes_a_picture_outside_its_folder(sample_extraction, tmp_path, monkeypatch):
    """A key ``../escaped/chelsea`` (which the wds index reader already refuses): a one-line
    ValueError, nothing written there (it was before)."""
    from fpncli.viz import diff

    escaped, out = tmp_path / "escaped", tmp_path / "d"
    real = diff.open_extractions

    def opened(root):
        found = real(root)
        found._folders = {("../escaped/" + k if k == "chelsea" else k): p
                          for k, p in found._folders.items()}  # fmt: skip
        return found

    monkeypatch.setattr(diff, "open_extractions", opened)
    with pytest.raises(ValueError, match=r"diff picture of '\.\./escaped/chelsea' .* outside"):
        diff.diff_extractions(sample_extraction, sample_extraction, out=out)
    assert not escaped.exists()


def test_a_symlinked_folder_of_the_output_is_that_pictures_error_and_the_rest_is_written(
    sample_extraction, tmp_path
):
    """``-o OUT`` with ``OUT/chelsea -> ../escaped/chelsea``: the whole diff stopped at that
    image (a ValueError), no tables, the images after it not compared. And ``OUT/rocket ->
    coffee`` was written through, rocket's picture over coffee's. Now each is that image's
    picture_error, nothing is written through a link, every image is compared and the tables
    are written; exit code 1."""
    escaped, out = tmp_path / "escaped", tmp_path / "d"
    (escaped / "chelsea").mkdir(parents=True)
    (out / "coffee").mkdir(parents=True)
    (out / ".fpncli-diff").write_text("")  # diff's own folder, links put into it since
    (out / "chelsea").symlink_to(escaped / "chelsea")
    (out / "rocket").symlink_to("coffee")
    args = ["diff", str(sample_extraction), str(sample_extraction), "-o", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    for key in ("chelsea", "rocket"):
        assert (f"no picture: {key}: {key}/diff.png not written: {key} in the output folder is a "
                "symlink, never written through") in result.output, result.output  # fmt: skip
    assert "3 of 3 images compared: all 3 compared agree within tol 0.0001; 2 pictures not" in (
        result.output
    )
    table = json.loads((out / "diff.json").read_text())
    images = {i["key"]: i for i in table["images"]}
    assert images["coffee"]["picture"] == "coffee/diff.png" and images["coffee"]["levels"]
    for key in ("chelsea", "rocket"):
        assert images[key]["picture"] is None and images[key]["levels"], images[key]
        assert "symlink" in images[key]["picture_error"]
    assert "rocket,p2," in (out / "diff.csv").read_text()
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == ["coffee/diff.png"], written  # not through rocket -> coffee
    assert not list((escaped / "chelsea").iterdir())


def test_diff_refuses_empty_levels_as_extract_does(sample_extraction, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from fpncli.cli import cli

    monkeypatch.chdir(tmp_path)  # the old code compared every level, writing ./fpn_diff
    root = str(sample_extraction)
    result = CliRunner().invoke(cli, ["diff", root, root, "--levels", "", "--no-pictures"])
    assert (
        result.exit_code == 2 and "--levels" in result.output and "unknown level" in result.output
    )


def test_diff_of_identical_extractions_draws_zero_in_the_colour_of_zero(sample_extraction,
                                                                          tmp_path):  # fmt: skip
    """An all-zero |A-B| was a constant map, drawn in the colormap's middle colour (magenta on
    magma): identical extractions looked like a uniform difference."""
    from fpncli.viz.visualize import colorize

    result = diff_extractions(sample_extraction / "chelsea", sample_extraction / "chelsea",
                              out=tmp_path / "d")  # fmt: skip
    assert result.agree
    picture = np.asarray(Image.open(tmp_path / "d" / result.images[0].picture).convert("RGB"))
    zero, middle = (tuple(colorize(np.array([[v]]), "magma", 0.0, 1.0)[0, 0]) for v in (0, 0.5))
    count = {c: int((picture == c).all(axis=2).sum()) for c in (zero, middle)}
    assert count[zero] > 10 * count[middle], count  # the bars hold both


def _without_levels(src, dst, drop):
    """A copy of ``src`` as an ``extract --levels`` run without ``drop`` would have left it."""
    shutil.copytree(src, dst)
    for path in dst.rglob("manifest.json"):
        manifest = json.loads(path.read_text())
        for name in drop:
            manifest["levels"].pop(name)
            for suffix in (".npy", ".png"):
                (path.parent / f"{name}{suffix}").unlink(missing_ok=True)
        path.write_text(json.dumps(manifest))
    return dst


def test_diff_fails_when_a_requested_level_is_saved_on_one_side_only(sample_extraction, tmp_path):
    """``--levels p2,p3`` against an extraction of p3 and p5 compared p3 only and passed."""
    b = _without_levels(sample_extraction, tmp_path / "b", ("p2", "p4", "p6"))
    runner = CliRunner()
    base = ["-o", str(tmp_path / "d"), "--no-pictures"]
    result = runner.invoke(
        cli, ["diff", str(sample_extraction), str(b), "--levels", "p2,p3", *base]
    )
    assert result.exit_code == 1, result.output
    assert "not compared: chelsea: p2: not saved (as .npy) in B" in result.output
    assert "0 of 3 images compared" in result.output
    swapped = runner.invoke(cli, ["diff", str(b), str(sample_extraction), "--levels", "p2", *base])
    assert swapped.exit_code == 1 and "p2: not saved (as .npy) in A" in swapped.output
    both = runner.invoke(cli, ["diff", str(sample_extraction), str(b), "--levels", "p3,p5", *base])
    assert both.exit_code == 0 and "all 3 compared agree" in both.output, both.output
    # no --levels: the levels in both compared, as the help says, and the others named
    default = runner.invoke(cli, ["diff", str(sample_extraction), str(b), *base])
    assert default.exit_code == 0 and "all 3 compared agree" in default.output
    assert "levels saved (as .npy) in A only, not compared: p2, p4, p6" in default.output
    result = diff_extractions(sample_extraction, b)
    assert result.images[0].one_side == {"p2": "A", "p4": "A", "p6": "A"}
    assert [d.level for d in result.images[0].levels] == ["p3", "p5"]


def test_a_diff_picture_says_in_red_which_side_has_random_weights(sample_extraction, tmp_path,
                                                                  monkeypatch):  # fmt: skip
    """The README: every picture made with random weights says so in red. diff's never did."""
    from fpncli.io.outputs import RANDOM_NOTE
    from fpncli.viz import diff as diff_module

    trained = tmp_path / "trained"
    shutil.copytree(sample_extraction / "chelsea", trained)
    manifest = json.loads((trained / "manifest.json").read_text())
    manifest["weights"]["random"] = False
    (trained / "manifest.json").write_text(json.dumps(manifest))
    notes = []
    real = diff_module.overview_png

    def spy(image, panels, **kwargs):
        notes.append(kwargs.get("note", ""))
        return real(image, panels, **kwargs)

    monkeypatch.setattr(diff_module, "overview_png", spy)
    random_ = sample_extraction / "chelsea"
    for a, b in [(random_, random_), (trained, random_), (random_, trained), (trained, trained)]:
        diff_extractions(a, b, out=tmp_path / "d")
    assert notes == [f"{RANDOM_NOTE} (A and B)", f"{RANDOM_NOTE} (B)", f"{RANDOM_NOTE} (A)", ""]
    diff_extractions(random_, random_, out=tmp_path / "r")  # drawn: red letters under the title
    picture = np.asarray(Image.open(tmp_path / "r" / "chelsea" / "diff.png").convert("RGB"))
    rgb = picture[:80].astype(int)
    assert ((rgb[..., 0] > 150) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)).sum() > 100


def test_diff_writes_only_into_a_folder_of_its_own(sample_extraction, tmp_path):
    """``-o`` into a folder of the user's (photos, their own ``chelsea/diff.png``): diff wrote its
    pictures among them, over their file of the same name, and a later extract took the pictures
    for photos. Such a folder is refused before anything is written; a new or empty folder, or
    one diff wrote before (marked, or an earlier version's with its diff.json), is diff's, and
    only that folder is marked, not the parents made for it."""
    mine = tmp_path / "mine"
    (mine / "chelsea").mkdir(parents=True)
    (mine / "chelsea" / "diff.png").write_bytes(b"the user's own")
    args = ["diff", str(sample_extraction), str(sample_extraction), "-o", str(mine)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert result.output == (
        f"Error: {mine} holds files diff did not write: give a new or empty output folder (-o), "
        "or one diff wrote before\n"
    )
    assert sorted(p.name for p in mine.rglob("*")) == ["chelsea", "diff.png"]
    assert (mine / "chelsea" / "diff.png").read_bytes() == b"the user's own"
    nested = tmp_path / "results" / "2024" / "cmp"
    for pictures in ([], ["--no-pictures"]):
        args = ["diff", str(sample_extraction), str(sample_extraction), "-o", str(nested)]
        result = CliRunner().invoke(cli, [*args, *pictures])
        assert result.exit_code == 0, result.output  # again: the folder is diff's now
        assert (nested / ".fpncli-diff").is_file()
        assert [p.name for p in (tmp_path / "results").rglob(".fpncli-diff")] == [".fpncli-diff"]
    (nested / ".fpncli-diff").unlink()  # an earlier version's output: its tables say so
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    # not a user's own diff.json beside their photos, nor an earlier output they added to
    (mine / "diff.json").write_text('{"my": "notes"}')
    (nested / ".fpncli-diff").unlink()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(nested / "chelsea" / "mine.png")
    for folder in (mine, nested):
        refused = CliRunner().invoke(cli, [*args[:3], "-o", str(folder)])
        assert refused.exit_code == 1 and "holds files diff did not write" in refused.output
    assert (mine / "diff.json").read_text() == '{"my": "notes"}'
    empty = tmp_path / "empty"
    empty.mkdir()
    assert CliRunner().invoke(cli, ["diff", *args[1:3], "-o", str(empty)]).exit_code == 0


def test_a_diff_into_an_earlier_diffs_folder_removes_the_pictures_it_does_not_draw_again(
    sample_extraction, tmp_path
):
    """``diff A A -o D``, then ``diff A B -o D`` with coffee no longer compared (its geometry
    differs in B), or ``--no-pictures``: the earlier D/KEY/diff.png pictures stayed beside a
    diff.json that listed none of them. They are removed now, and the folders left empty; only
    what the earlier diff.json lists as its pictures, never a file of the user's, nor a path of
    a forged table outside D or through a symlinked folder."""
    d = tmp_path / "d"
    runner = CliRunner()
    args = ["diff", str(sample_extraction), str(sample_extraction), "-o", str(d)]
    assert runner.invoke(cli, args).exit_code == 0
    drawn = sorted(p.parent.name for p in d.rglob("diff.png"))
    assert drawn == ["chelsea", "coffee", "rocket"]
    (d / "rocket" / "notes.txt").write_text("mine")
    b = tmp_path / "b"
    shutil.copytree(sample_extraction, b)
    manifest = json.loads((b / "coffee" / "manifest.json").read_text())
    manifest["preprocess"]["resized_width"] += 32
    (b / "coffee" / "manifest.json").write_text(json.dumps(manifest))
    result = runner.invoke(cli, ["diff", str(sample_extraction), str(b), "-o", str(d)])
    assert result.exit_code == 1 and "not compared: coffee: geometry differs" in result.output
    assert sorted(p.parent.name for p in d.rglob("diff.png")) == ["chelsea", "rocket"]
    assert not (d / "coffee").exists()
    listed = {i["picture"] for i in json.loads((d / "diff.json").read_text())["images"]}
    assert listed == {"chelsea/diff.png", "rocket/diff.png", None}
    again = runner.invoke(cli, [*args, "--no-pictures"])
    assert again.exit_code == 0, again.output
    assert not list(d.rglob("diff.png")) and not (d / "chelsea").exists()
    assert (d / "rocket" / "notes.txt").read_text() == "mine"  # the user's, and its folder
    assert {i["picture"] for i in json.loads((d / "diff.json").read_text())["images"]} == {None}
    # a forged table: pictures outside D, or through a link, are never removed
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "diff.png").write_bytes(b"not diff's")
    (d / "link").symlink_to(victim)
    forged = {
        "a": "x",
        "b": "y",
        "tol": 0.0,
        "images": [
            {"picture": p} for p in ("../victim/diff.png", f"{victim}/diff.png", "link/diff.png")
        ],
    }
    (d / "diff.json").write_text(json.dumps(forged))
    assert runner.invoke(cli, [*args, "--no-pictures"]).exit_code == 0
    assert (victim / "diff.png").read_bytes() == b"not diff's"


def test_a_forged_earlier_table_naming_no_possible_file_is_skipped(sample_extraction, tmp_path):
    """An earlier diff.json whose ``picture`` holds a null byte or a lone surrogate (no file has
    such a name): ``diff ... -o D`` wrote its tables, then ended in "Error: embedded null byte"
    while removing the earlier pictures. Such an entry is skipped; the earlier picture the
    table also names, one diff drew, is still removed."""
    d = tmp_path / "d"
    runner = CliRunner()
    args = ["diff", str(sample_extraction), str(sample_extraction), "-o", str(d)]
    for bad in ("a\u0000b/diff.png", "\ud800/diff.png"):
        assert runner.invoke(cli, args).exit_code == 0
        assert (d / "chelsea" / "diff.png").is_file()
        pictures = [{"picture": p} for p in ("chelsea/diff.png", bad)]
        forged = {"a": "x", "b": "y", "tol": 0.0, "images": pictures}
        (d / "diff.json").write_text(json.dumps(forged))
        result = runner.invoke(cli, [*args, "--no-pictures"])
        assert result.exit_code == 0, (bad, result.output)
        assert "Error" not in result.output and "Traceback" not in result.output
        assert not (d / "chelsea").exists()
