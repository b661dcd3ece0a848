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
    r1's, q_2 r2's) and as ``r2 r1`` (the other way round), each run into a folder output; and
    the second into a wds output where pyarrow is installed."""
    root = tmp_path_factory.mktemp("swapped")
    _noise(root / "r1" / "q.png", 1)
    _noise(root / "r2" / "q.png", 2)
    _extract(root / "r1", root / "r2", "-o", root / "RF1")
    _extract(root / "r2", root / "r1", "-o", root / "RF2")
    try:
        import pyarrow.parquet  # noqa: F401

        _extract(root / "r2", root / "r1", "-o", root / "RW2", "--format", "wds")
    except ImportError:
        pass
    return root


def test_images_of_the_same_photo_under_other_keys_are_paired_by_their_recorded_input(
    swapped_runs, tmp_path
):
    """``extract r1 r2`` then ``extract r2 r1``: each run's q is the other's q_2. diff paired by
    key only, and both images "DO NOT agree" (two different photos compared), exit 1. Each is
    now compared with the image made from the same file, a note saying so, in diff.json too."""
    root = swapped_runs
    sides = [root / "RF2"] + [root / "RW2"] * (root / "RW2").is_dir()
    for b in sides:
        d = tmp_path / b.name
        code, lines = _diff(root / "RF1", b, "-o", d)
        assert code == 0, lines
        assert lines[-1].startswith("2 of 2 images compared: all 2 compared agree"), lines
        r1, r2 = (os.path.realpath(root / r / "q.png") for r in ("r1", "r2"))
        for key, mine, theirs, their_key in (("q", r1, r2, "q_2"), ("q_2", r2, r1, "q")):
            assert (f"note: {key}: compared with B's {their_key}, made from the same input, "
                    f"{mine} (B's {key} was made from {theirs})") in lines  # fmt: skip
        images = {i["key"]: i for i in json.loads((d / "diff.json").read_text())["images"]}
        assert images["q"]["note"].startswith("compared with B's q_2, made from the same input")
        rows = list(csv.reader((d / "diff.csv").open()))
        assert ["q", "", "", "", "", "", images["q"]["note"]] in rows
    # B's q_2 gone: A's q (r1's photo) is only in A, B's q being r2's
    only_q = tmp_path / "only_q"
    shutil.copytree(root / "RF2", only_q)
    shutil.rmtree(only_q / "q_2")
    code, lines = _diff(root / "RF1", only_q, "-o", tmp_path / "d")
    assert code == 1 and "not compared: q: only in A" in lines
    assert (f"note: q: B's q was made from another input, {r2}, and compared with the image of A "
            "made from it") in lines  # fmt: skip
    assert lines[-1].startswith("1 of 2 images compared: all 1 compared agree"), lines


def test_paths_recorded_elsewhere_leave_key_pairing_and_two_files_here_are_noted(
    swapped_runs, tmp_path
):
    """The runs made on two machines (B's recorded paths are no file here): pairing by key
    stays, without a note, as nothing is known. Two images paired by key whose recorded inputs
    are two different files here are compared with a note naming both."""
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
    assert f"note: q_2: made from different files: {r2} in A, {r1} in B" in lines


def test_an_image_folder_is_compared_only_with_its_own_image_of_the_other_root(
    swapped_runs, tmp_path
):
    """``diff A/a Z``, Z holding one other image z: a was compared with z (any image, where Z held
    one), "DO NOT agree". It is paired by recorded input, else by key (or the one key ending in
    its name), else with none: only in A, and the note says how to compare it with another."""
    root = swapped_runs
    other = tmp_path / "other"  # one image, q_2 (r2's photo), the folder A/q is r1's
    shutil.copytree(root / "RF1", other)
    shutil.rmtree(other / "q")
    for args, side in (((root / "RF1" / "q", other), "B"), ((other, root / "RF1" / "q"), "A")):
        code, lines = _diff(*args, "-o", tmp_path / "d")
        assert code == 1 and "0 of 1 images compared: none compared" in lines[-1], lines
        assert f"not compared: q: only in {'AB'[side == 'A']}" in lines
        assert (f"note: q: {side} holds no image q nor one made from its input: to compare it "
                f"with another image, give that image's folder as {side}") in lines  # fmt: skip
    r1 = os.path.realpath(root / "r1" / "q.png")
    code, lines = _diff(root / "RF1" / "q", root / "RF2", "-o", tmp_path / "d")
    assert code == 0 and f"note: q: compared with B's q_2, made from the same input, {r1}" in lines
    nested = tmp_path / "nested"  # by key: the one image whose key ends in the folder's name
    shutil.copytree(root / "RF1" / "q_2", nested / "sub" / "q_2")
    code, lines = _diff(root / "RF1" / "q_2", nested, "-o", tmp_path / "d")
    assert code == 0 and lines[-1].startswith("1 of 1 images compared: all 1"), lines
