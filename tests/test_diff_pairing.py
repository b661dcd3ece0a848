"""``fpncli diff``: which image of A is compared with which image of B."""

from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from fpncli.cli import cli

_SMALL = ["--weights", "random", "--min-size", "64", "--max-size", "128", "--no-heatmaps",
          "--no-overview"]  # fmt: skip


def _noise(path, seed: int, size=(96, 64)) -> None:
    """A random-noise photo of ``size`` (width, height): two seeds, two different pyramids."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.RandomState(seed).randint(0, 256, (size[1], size[0], 3), np.uint8)
    Image.fromarray(pixels).save(path)


def _extract(*args) -> None:
    result = CliRunner().invoke(cli, ["extract", *map(str, args), *_SMALL], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def _diff(*args) -> tuple[int, list[str]]:
    result = CliRunner().invoke(cli, ["diff", *map(str, args), "--no-pictures"])
    assert "Traceback" not in result.output
    return result.exit_code, result.output.splitlines()


def test_a_folder_key_whose_earlier_wds_spelling_is_another_photos_key_stays_unpaired(tmp_path):
    """A folder output of a.b.png and a_b.png (two photos) against a wds output of a_b.png only:
    a.b fell back to the key an earlier version's shards gave it (a_b), though a_b was the key
    of the photo a_b.png, and was compared with that other photo. It is only in A now."""
    pytest.importorskip("pyarrow.parquet", reason="--format wds needs pyarrow (fpncli[wds])")
    _noise(tmp_path / "imgs3" / "a.b.png", 1)
    _noise(tmp_path / "imgs3" / "a_b.png", 2)
    shutil.copytree(tmp_path / "imgs3", tmp_path / "imgs4")
    (tmp_path / "imgs4" / "a.b.png").unlink()
    _extract(tmp_path / "imgs3", "-o", tmp_path / "F3")
    _extract(tmp_path / "imgs4", "-o", tmp_path / "W4", "--format", "wds")
    code, lines = _diff(tmp_path / "F3", tmp_path / "W4", "-o", tmp_path / "d")
    assert code == 1
    assert "not compared: a.b: only in A" in lines
    assert not any(line.startswith("differs: ") for line in lines), lines
    assert lines[-1].startswith("1 of 2 images compared: all 1 compared agree"), lines
    code, lines = _diff(tmp_path / "W4", tmp_path / "F3", "-o", tmp_path / "d")
    assert code == 1 and "not compared: a.b: only in B" in lines
    assert lines[-1].startswith("1 of 2 images compared: all 1 compared agree"), lines


@pytest.fixture(scope="module")
def swapped_runs(tmp_path_factory):
    """Two photos both called q.png (r1/ and r2/, different pixels), extracted as ``r1 r2`` (q is
    r1's, q_2 r2's) and as ``r2 r1`` (the other way round), each run into a folder output, and
    ``r1`` alone (R1: q is r1's); and the second into a wds output where pyarrow is installed."""
    root = tmp_path_factory.mktemp("swapped")
    _noise(root / "r1" / "q.png", 1)
    _noise(root / "r2" / "q.png", 2)
    _extract(root / "r1", root / "r2", "-o", root / "RF1")
    _extract(root / "r2", root / "r1", "-o", root / "RF2")
    _extract(root / "r1", "-o", root / "R1")
    try:
        import pyarrow.parquet  # noqa: F401

        _extract(root / "r2", root / "r1", "-o", root / "RW2", "--format", "wds")
    except ImportError:
        pass
    return root


def _other_files(key: str, path_a: str, path_b: str) -> str:
    return (f"note: {key}: made from different files: {path_a} in A, {path_b} in B; its "
            "differences may be the photos', not the extractions'")  # fmt: skip


def test_images_are_paired_by_key_and_a_pair_made_from_two_different_files_is_noted(
    swapped_runs, tmp_path
):
    """``extract r1 r2`` then ``extract r2 r1``: each run's q is the other's q_2. Images are
    paired by key (the recorded inputs never re-pair them: a path may name another photo by
    now); each pair "DOES NOT agree", exit 1, and a note says why: its recorded inputs are two
    different files here, on stderr, in diff.json and in a diff.csv row with no level."""
    root = swapped_runs
    r1, r2 = (os.path.realpath(root / r / "q.png") for r in ("r1", "r2"))
    sides = [root / "RF2"] + [root / "RW2"] * (root / "RW2").is_dir()
    for b in sides:
        d = tmp_path / b.name
        code, lines = _diff(root / "RF1", b, "-o", d)
        assert code == 1, lines
        assert lines[-1].startswith("2 of 2 images compared: 2 of the 2 compared DO NOT"), lines
        assert _other_files("q", r1, r2) in lines and _other_files("q_2", r2, r1) in lines
        differ = sorted(line.split(":")[1] for line in lines if line.startswith("differs: "))
        assert differ == [" q", " q_2"], lines
        images = {i["key"]: i for i in json.loads((d / "diff.json").read_text())["images"]}
        assert images["q"]["note"] == _other_files("q", r1, r2).split(": ", 2)[2]
        rows = list(csv.reader((d / "diff.csv").open()))
        assert ["q", "", "", "", "", "", images["q"]["note"]] in rows
    code, lines = _diff(root / "RF1", root / "RF1", "-o", tmp_path / "same")
    assert code == 0 and not [line for line in lines if line.startswith("note: ")], lines


def test_an_image_of_b_made_from_a_file_of_a_is_reported_once_under_its_key(swapped_runs, tmp_path):
    """``extract r1 -o A1``, ``extract r2 r1 -o B1`` (B1's q_2 is A1's q photo): A's q was
    compared with B's q_2 and B's q reported "only in B", the key q twice in diff.json and
    diff.csv. Now each key once: q compared with B's q (a note: two different files), q_2 only
    in B."""
    root = swapped_runs
    r1, r2 = (os.path.realpath(root / r / "q.png") for r in ("r1", "r2"))
    d = tmp_path / "d"
    code, lines = _diff(root / "R1", root / "RF2", "-o", d)
    assert code == 1 and "not compared: q_2: only in B" in lines
    assert _other_files("q", r1, r2) in lines
    assert lines[-1].startswith("1 of 2 images compared: 1 of the 1 compared DO NOT"), lines
    keys = [i["key"] for i in json.loads((d / "diff.json").read_text())["images"]]
    assert sorted(keys) == ["q", "q_2"]
    rows = list(csv.reader((d / "diff.csv").open()))
    assert ["q_2", "", "", "", "", "", "only in B"] in rows
    assert {row[0] for row in rows[1:] if row[1] == ""} == {"q", "q_2"}  # q: its note only


def test_a_path_that_names_another_photo_now_does_not_pair(tmp_path):
    """``extract d1 -o M1``; then d1/q.png moved to d2/, another photo put at d1/q.png, and
    ``extract d2 d1 -o M2`` (M2's q is M1's photo, q_2 the new one at the old path): M1's q
    was compared with M2's q_2, "made from the same input", and its real twin left out. It is
    compared with M2's q now, and agrees."""
    _noise(tmp_path / "d1" / "q.png", 1)
    _extract(tmp_path / "d1", "-o", tmp_path / "M1")
    (tmp_path / "d2").mkdir()
    os.replace(tmp_path / "d1" / "q.png", tmp_path / "d2" / "q.png")
    _noise(tmp_path / "d1" / "q.png", 2)
    _extract(tmp_path / "d2", tmp_path / "d1", "-o", tmp_path / "M2")
    code, lines = _diff(tmp_path / "M1", tmp_path / "M2", "-o", tmp_path / "d")
    assert code == 1 and "not compared: q_2: only in B" in lines
    assert not [line for line in lines if line.startswith("differs: ")], lines
    assert lines[-1].startswith("1 of 2 images compared: all 1 compared agree"), lines


@pytest.mark.parametrize("kind", ["broken", "fifo", "folder", "dangling"])
def test_an_image_whose_manifest_cannot_be_read_is_reported_with_its_reason(
    swapped_runs, tmp_path, kind
):
    """A's q/manifest.json not valid JSON (a FIFO, a folder, a dangling symlink): q was
    reported "only in A" (its recorded input unknown, B's q_2 made from its file was taken
    instead) and the read error lost. It is paired by key and not compared, with the reason."""
    root = swapped_runs
    a = tmp_path / "AJ"
    shutil.copytree(root / "RF1", a)
    manifest = a / "q" / "manifest.json"
    manifest.unlink()
    if kind == "broken":
        manifest.write_text("{broken")
    elif kind == "fifo":
        os.mkfifo(manifest)
    elif kind == "folder":
        manifest.mkdir()
    else:
        manifest.symlink_to(tmp_path / "nowhere.json")
    code, lines = _diff(a, root / "RF2", "-o", tmp_path / "d")
    assert code == 1
    unread = [line for line in lines if line.startswith("not compared: q: cannot be read in A: ")]
    assert len(unread) == 1 and "manifest.json" in unread[0], lines
    assert not [line for line in lines if "only in" in line], lines
    assert lines[-1].startswith("1 of 2 images compared"), lines
    if kind == "broken":
        assert "not valid JSON" in unread[0]


def test_paths_recorded_elsewhere_say_nothing_and_two_files_here_are_noted(swapped_runs, tmp_path):
    """The runs made on two machines (B's recorded paths are no file here): pairing by key, and
    no note, as nothing is known. Two image folders named are compared as given, with a note
    where their recorded inputs are two different files here."""
    root = swapped_runs
    moved = tmp_path / "moved"
    shutil.copytree(root / "RF2", moved)
    for manifest in moved.glob("*/manifest.json"):
        data = json.loads(manifest.read_text())
        data["input"]["real_path"] = "/elsewhere" + data["input"]["real_path"]
        manifest.write_text(json.dumps(data))
    code, lines = _diff(root / "RF1", moved, "-o", tmp_path / "d")
    assert code == 1 and not [line for line in lines if line.startswith("note: ")], lines
    differ = sorted(line.split(":")[1] for line in lines if line.startswith("differs: "))
    assert differ == [" q", " q_2"], lines
    r1, r2 = (os.path.realpath(root / r / "q.png") for r in ("r1", "r2"))
    code, lines = _diff(root / "RF1" / "q_2", root / "RF2" / "q_2", "-o", tmp_path / "d")
    assert code == 1  # two image folders named: compared as given, the doubt said
    assert _other_files("q_2", r2, r1) in lines
    code, lines = _diff(root / "RF1" / "q_2", root / "RF2" / "q", "-o", tmp_path / "d")
    assert code == 0 and not [line for line in lines if line.startswith("note: ")], lines


def test_an_image_folder_is_compared_only_with_its_own_image_of_the_other_root(
    swapped_runs, tmp_path
):
    """``diff A/a Z``, Z holding one other image z: a was compared with z (any image, where Z held
    one), "DO NOT agree". It is paired by key (or the one key ending in its name), else with
    none: only in A, and the note says how to compare it with another."""
    root = swapped_runs
    other = tmp_path / "other"  # one image, q_2 (r2's photo), the folder A/q is r1's
    shutil.copytree(root / "RF1", other)
    shutil.rmtree(other / "q")
    for args, side in (((root / "RF1" / "q", other), "B"), ((other, root / "RF1" / "q"), "A")):
        code, lines = _diff(*args, "-o", tmp_path / "d")
        assert code == 1 and "0 of 1 images compared: none compared" in lines[-1], lines
        assert f"not compared: q: only in {'AB'[side == 'A']}" in lines
        assert (f"note: q: {side} holds no image q: to compare it with another image, give that "
                f"image's folder as {side}") in lines  # fmt: skip
    r1, r2 = (os.path.realpath(root / r / "q.png") for r in ("r1", "r2"))
    code, lines = _diff(root / "RF1" / "q", root / "RF2", "-o", tmp_path / "d")
    assert code == 1 and _other_files("q", r1, r2) in lines  # by key, the doubt said
    assert lines[-1].startswith("1 of 1 images compared: 1 of the 1 compared DO NOT"), lines
    nested = tmp_path / "nested"  # by key: the one image whose key ends in the folder's name
    shutil.copytree(root / "RF1" / "q_2", nested / "sub" / "q_2")
    code, lines = _diff(root / "RF1" / "q_2", nested, "-o", tmp_path / "d")
    assert code == 0 and lines[-1].startswith("1 of 1 images compared: all 1"), lines
