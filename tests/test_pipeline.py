"""Batch pipeline: discovery order, tree mirroring, collisions, sharding, bad files, resume,
disk estimate and a full disk. Small images and a seeded random R-50."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import replace
from pathlib import Path
from unittest.mock import ANY

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import fpncli
from fpncli.cli import cli
from fpncli.io import image_writer
from fpncli.io.manifest import is_complete, read_manifest
from fpncli.io.outputs import OutputOptions
from fpncli.model.names import LEVELS
from fpncli.run import pipeline, plan, runner, steps
from fpncli.run.pipeline import (
    InsufficientDiskError,
    Job,
    RunOptions,
    discover_inputs,
    plan_jobs,
    run_jobs,
    select_shard,
    shard_from_env,
)

SMALL = OutputOptions(min_size=64, max_size=96, save_heatmaps=False, save_overview=False)


@pytest.fixture(scope="module")
def model():
    return fpncli.load_backbone("random")


def _image(path: Path, size=(48, 40), value=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(value)
    Image.fromarray(rng.randint(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def test_discover_order_recursion_extensions_and_dedupe(tmp_path):
    root = tmp_path / "photos"
    for rel in ["b.jpg", "a.PNG", "sub/c.JpEg", "sub/deeper/d.webp", "notes.txt", ".hidden.jpg"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    pairs = discover_inputs([str(root), str(root / "b.jpg")])
    assert [p.relative_to(root).as_posix() for p, _ in pairs] == [
        "a.PNG", "b.jpg", "sub/c.JpEg", "sub/deeper/d.webp",
    ]  # fmt: skip
    assert all(r == root for _, r in pairs)
    globbed = discover_inputs([str(root / "**" / "*.webp")])
    assert [p.name for p, _ in globbed] == ["d.webp"]
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        discover_inputs([str(tmp_path / "missing")])


def test_hidden_folders_and_image_files_are_left_out_of_a_walk_and_said(tmp_path):
    """Below a folder input, names starting with "." are left out, folders as files (a hidden
    folder's images were taken, a hidden file's not: .ipynb_checkpoints/ holds copies), and
    each is handed back to be noted; named as an input, a hidden file is taken."""
    root = tmp_path / "photos"
    for rel in ["a.jpg", ".b.jpg", ".sub/c.jpg", ".ipynb_checkpoints/a.jpg", "x/.y/d.jpg",
                "x/e.jpg", ".notes.txt"]:  # fmt: skip
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    hidden = []
    pairs = discover_inputs([str(root)], hidden=hidden)
    assert [p.relative_to(root).as_posix() for p, _ in pairs] == ["a.jpg", "x/e.jpg"]
    assert sorted((p.relative_to(root).as_posix(), folder) for p, folder in hidden) == [
        (".b.jpg", False), (".ipynb_checkpoints", True), (".sub", True), ("x/.y", True),
    ]  # fmt: skip
    named = discover_inputs([str(root / ".b.jpg"), str(root / ".sub")])
    assert [p.relative_to(root).as_posix() for p, _ in named] == [".b.jpg", ".sub/c.jpg"]


def test_a_link_to_a_hidden_folder_is_walked_under_its_own_name(tmp_path):
    """The walk passes over hidden folders, so a visible link into one is not "a folder the run
    comes to under that name" (its images were lost, with a note saying they were read): it is
    walked under the link's name, wherever the hidden folder lies."""
    root = tmp_path / "in"
    for rel in [".photos/p.jpg", "a/.h/inner/q.jpg", "z.jpg"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    (root / "photos").symlink_to(".photos")
    (root / "b").symlink_to("a/.h/inner")  # (met before a/.h, which the walk passes over)
    hidden, repeated = [], []
    pairs = discover_inputs([str(root)], hidden=hidden, repeated=repeated)
    assert [p.relative_to(root).as_posix() for p, _ in pairs] == [
        "z.jpg",
        "b/q.jpg",
        "photos/p.jpg",
    ]
    assert repeated == []
    assert sorted(p.relative_to(root).as_posix() for p, _ in hidden) == [".photos", "a/.h"]


def test_the_hidden_note_counts_each_entry_once_and_leaves_out_what_was_taken(tmp_path):
    """Walked twice (in and in/sub), an entry was counted twice; named as an input, as the note
    advises, it was still listed; the run's own output folder, hidden, was listed as left out
    (outputs are passed over as outputs, with their own note)."""
    from click.testing import CliRunner
    from PIL import Image

    from fpncli.cli import cli

    root = tmp_path / "in"
    for rel in ["a.png", ".x.png", ".hid/h.png", "sub/s.png", "sub/.ipynb_checkpoints/s.png"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32)).save(root / rel)
    base = ["extract", "--weights", "random", "--min-size", "32", "--max-size", "64",
            "--no-overview", "--no-npy"]  # fmt: skip

    def note(*args) -> str:
        result = CliRunner().invoke(cli, [*base, *map(str, args)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return next(
            (ln for ln in result.stderr.splitlines() if ln.startswith("note: left out")), ""
        )

    twice = note(root, root / "sub", root, "-o", tmp_path / "o1")
    assert twice.startswith("note: left out 1 hidden image file and 2 hidden folders ("), twice
    named = note(root, root / ".hid", root / ".x.png", "-o", tmp_path / "o2")
    assert named.startswith("note: left out 1 hidden folder (names starting with '.': "), named
    assert str(root / "sub" / ".ipynb_checkpoints") in named
    for _ in range(2):  # the second run meets the first's output folder, in/.out
        own = note(root, "-o", root / ".out")
        assert ".out" not in own and own.startswith("note: left out 1 hidden image file and 2 ")


def test_extract_says_which_hidden_entries_it_left_out(tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from fpncli.cli import cli

    root = tmp_path / "in"
    for rel in ["a.png", ".b.png", ".sub/c.png"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32)).save(root / rel)
    args = ["extract", str(root), "-o", str(tmp_path / "out"), "--weights", "random",
            "--min-size", "32", "--max-size", "64", "--no-overview", "--no-npy"]  # fmt: skip
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    note = next(ln for ln in result.stderr.splitlines() if ln.startswith("note: left out"))
    assert note.startswith("note: left out 1 hidden image file and 1 hidden folder (names start")
    assert str(root / ".sub") in note and str(root / ".b.png") in note
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir()) == ["a"]


def test_symlinked_subfolders_are_followed_under_the_links_name(tmp_path):
    """``data/train -> /mnt/x/train`` was listed and never walked: its images were left out
    without a word (torchvision's ImageFolder follows such links)."""
    data, mounted = tmp_path / "data", tmp_path / "mnt" / "x"
    for rel in ["train/cls/a.png", "val/b.png"]:
        (mounted / rel).parent.mkdir(parents=True, exist_ok=True)
        (mounted / rel).write_bytes(b"x")
    (data / "real").mkdir(parents=True)
    (data / "real" / "c.png").write_bytes(b"x")
    (data / "train").symlink_to(mounted / "train")
    (data / "val").symlink_to(Path("..", "mnt", "x", "val"))  # relative, as ln -s makes them
    pairs = discover_inputs([str(data)])
    assert pairs == [(data / rel, data) for rel in ["real/c.png", "train/cls/a.png", "val/b.png"]]
    jobs = plan_jobs(pairs, tmp_path / "out")
    assert [j.folder.relative_to(tmp_path / "out").as_posix() for j in jobs] == [
        "real/c", "train/cls/a", "val/b",
    ]  # fmt: skip


def test_symlink_cycles_and_repeated_folders_are_read_once_each(tmp_path):
    """Following links, every real folder is read once: a link to an ancestor (a cycle) or to a
    folder inside the input is left to that folder's own path, and a second link to a folder
    read already is passed over; each is reported with the name its images are read as."""
    data, mounted = tmp_path / "data", tmp_path / "mnt" / "x"
    for rel in ["train/a.png", "val/b.png"]:
        (mounted / rel).parent.mkdir(parents=True, exist_ok=True)
        (mounted / rel).write_bytes(b"x")
    (mounted / "val" / "loop").symlink_to(mounted)  # a cycle outside the input
    (data / "z" / "sub").mkdir(parents=True)
    (data / "z" / "sub" / "c.png").write_bytes(b"x")
    (data / "z" / "sub" / "up").symlink_to(data)  # a cycle: a link to an ancestor
    (data / "a_short").symlink_to(data / "z" / "sub")  # before z in sorted order
    (data / "all").symlink_to(mounted)
    (data / "train").symlink_to(mounted / "train")  # read already, under all/train
    repeated: list = []
    pairs = discover_inputs([str(data)], repeated=repeated)
    assert [p.relative_to(data).as_posix() for p, _ in pairs] == [
        "all/train/a.png", "all/val/b.png", "z/sub/c.png",
    ]  # fmt: skip
    assert [(a.relative_to(data).as_posix(), b.relative_to(data).as_posix())
            for a, b in repeated] == [
        ("a_short", "z/sub"), ("all/val/loop", "all"), ("train", "all/train"), ("z/sub/up", "."),
    ]  # fmt: skip
    assert discover_inputs([str(data)]) == pairs  # the same without a list to report to


def test_a_quoted_glob_with_a_tilde_is_expanded_as_a_quoted_folder_is(tmp_path, monkeypatch):
    """'~/photos' found the home folder's photos, '~/photos/*.jpg' "no file matches"."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    photos = tmp_path / "home" / "photos"
    for rel in ["a.jpg", "sub/b.jpg"]:
        _image(photos / rel)
    assert discover_inputs(["~/photos/*.jpg"]) == [(photos / "a.jpg", photos)]
    assert discover_inputs(["~/photos/**/*.jpg"]) == discover_inputs(["~/photos"])


def test_from_list_uses_common_root(tmp_path):
    a, b = tmp_path / "x" / "1" / "a.jpg", tmp_path / "x" / "2" / "b.jpg"
    pairs = discover_inputs([], ["# comment", str(a), "", str(b)])
    assert [p for p, _ in pairs] == [a, b]
    jobs = plan_jobs(pairs, tmp_path / "out")
    assert [j.folder for j in jobs] == [tmp_path / "out" / "1" / "a", tmp_path / "out" / "2" / "b"]


def test_from_list_keeps_spaces_a_name_has_and_drops_stray_ones(tmp_path, monkeypatch):
    """Every line was stripped: files " lead.jpg" and "trail.jpg " were "no such image file",
    though they worked as arguments. A name is now the line less its ending, or the stripped text
    where no file has the name with its spaces (a hand-written list's stray spaces)."""
    monkeypatch.chdir(tmp_path)
    for name in [" lead.jpg", "trail.jpg ", "plain.jpg"]:
        Path(name).write_bytes(b"x")  # what is read is not looked at here
    lines = ["\ufefftrail.jpg \r\n", " lead.jpg\n", "  plain.jpg \t\r\n", "   \n",
             "  # a comment\n", " gone.jpg "]  # fmt: skip
    pairs = discover_inputs([], lines)
    assert [str(p) for p, _ in pairs] == ["trail.jpg ", " lead.jpg", "plain.jpg", "gone.jpg"]


def test_plan_folds_dot_dot_so_every_folder_is_in_out_and_none_is_shared(tmp_path, monkeypatch):
    """A ".." in a listed name or a glob led out of OUT (``../data/a.jpg`` went to
    ``OUT/../data/a``) and hid a clash (``b/a.jpg`` and ``x/../b/a.png`` both went to ``OUT/b/a``,
    the second overwriting the first)."""
    work = tmp_path / "work"
    for rel in ["data/a.jpg", "work/b.jpg", "work/b/a.jpg", "work/b/a.png", "work/p/sub/c.jpg"]:
        _image(tmp_path / rel)
    (work / "x").mkdir()
    monkeypatch.chdir(work)

    def folders(inputs, listed=None):
        return [j.folder.as_posix() for j in plan_jobs(discover_inputs(inputs, listed), Path("o"))]

    assert folders([], ["../data/a.jpg", "b.jpg"]) == ["o/data/a", "o/work/b"]
    assert folders([], ["b/a.jpg", "x/../b/a.png"]) == ["o/a_jpg", "o/a_png"]
    assert folders(["x/../b/a.jpg", "b/a.png"]) == ["o/a_jpg", "o/a_png"]
    assert folders(["p/*/../../b.jpg"]) == ["o/b"]  # a glob's match above its fixed prefix
    assert folders(["../work/p"]) == folders(["x/../p/*/c.jpg"]) == ["o/sub/c"]


def test_plan_mirrors_tree_and_never_collides(tmp_path):
    root, other = tmp_path / "r", tmp_path / "o"
    pairs = [
        (root / "sub" / "a.jpg", root),
        (root / "sub" / "a.png", root),
        (root / "b.jpg", root),
        (other / "b.jpg", other),
    ]
    folders = [
        j.folder.relative_to(tmp_path / "out").as_posix()
        for j in plan_jobs(pairs, tmp_path / "out")
    ]
    assert folders == ["sub/a_jpg", "sub/a_png", "b", "b_2"]
    assert len(set(folders)) == len(folders)


def test_plan_leaves_fpncli_own_top_level_names_alone(tmp_path):
    from fpncli.io import markers, shardlock, shards
    from fpncli.io.jobs import RESERVED_NAMES, RUN_LOCKS
    from fpncli.io.run_log import RUN_LOG
    from fpncli.viz.report_folder import REPORT, REPORT_ASSETS

    assert {REPORT, REPORT_ASSETS, RUN_LOG, shards.INDEX, shards.INDEX_DIR} <= RESERVED_NAMES
    assert {shardlock.CLAIMS_DIR, shardlock.LOCK_FILE, markers.OUTPUT_MARKER} <= RESERVED_NAMES
    assert shards.WDS_MARKER in RESERVED_NAMES  # a folder named so would make OUT look wds
    assert set(RUN_LOCKS.values()) <= RESERVED_NAMES and ".fpncli-format" in RESERVED_NAMES
    root = tmp_path / "r"
    names = ["report.jpg", "Report.html.png", "run.json.jpg", "run-1-of-2.json.jpg",
             "index.parquet.jpg", "_index.jpg", "_claims.jpg", "cat.jpg",
             "sub/report.jpg"]  # fmt: skip
    folders = [
        j.folder.relative_to(tmp_path / "out").as_posix()
        for j in plan_jobs([(root / n, root) for n in names], tmp_path / "out")
    ]
    assert folders == ["report_2", "Report.html_2", "run.json_2", "run-1-of-2.json_2",
                       "index.parquet_2", "_index_2", "_claims_2", "cat", "sub/report"]  # fmt: skip


def test_plan_keeps_a_nested_image_off_its_parent_images_file_names(tmp_path):
    """With ``a.jpg`` beside ``a/``, the folder of ``a/p2.npy.jpg`` would be ``a``'s P2 file (the
    second image failed with "File exists", or the first, in the other order): names fpncli writes
    in an image's folder count as taken there, in any case; elsewhere they are free."""
    root = tmp_path / "r"
    names = ["a.jpg", "a/p2.npy.jpg", "a/Manifest.JSON.png", "a/p6_overlay.png.jpg",
             "a/cat.jpg", "b/p2.npy.jpg", "p3.png.jpg"]  # fmt: skip
    folders = [
        j.folder.relative_to(tmp_path / "out").as_posix()
        for j in plan_jobs([(root / n, root) for n in names], tmp_path / "out")
    ]
    assert folders == ["a", "a/p2.npy_2", "a/Manifest.JSON_2", "a/p6_overlay.png_2", "a/cat",
                       "b/p2.npy", "p3.png"]  # fmt: skip


def test_plan_keeps_nested_images_off_the_file_names_of_renamed_folders(tmp_path):
    """With ``x.png`` and ``x.jpg`` (``x_png`` and ``x_jpg``), ``x_png/p2.npy.png`` was given
    ``x_png/p2.npy``, ``x.png``'s P2 file ("File exists"): the check knew only the names before
    renaming. Folders are checked against the final names, a level at a time, in any input
    order; a name before renaming still counts, so earlier outputs keep their names."""
    root = tmp_path / "r"
    names = ["x.png", "x.jpg", "x_png/p2.npy.png", "x_png/Manifest.json.png", "x_png/cat.png",
             "x_png/p2.npy_2/overview.png.jpg", "x/p3.npy.png"]  # fmt: skip
    expected = ["x_png", "x_jpg", "x_png/p2.npy_2", "x_png/Manifest.json_2", "x_png/cat",
                "x_png/p2.npy_2/overview.png_2", "x/p3.npy_2"]  # fmt: skip
    for order in (names, names[::-1]):
        jobs = plan_jobs([(root / n, root) for n in order], tmp_path / "out")
        folders = {j.path.relative_to(root).as_posix(): j.folder for j in jobs}
        assert [folders[n].relative_to(tmp_path / "out").as_posix() for n in names] == expected


def test_plan_keeps_images_named_dots_inside_their_own_folders(tmp_path):
    """``...png`` (its stem ``..``) was given ``OUT/..``: its outputs were written beside OUT,
    and ``..png``'s (stem ``.``) into OUT itself."""
    root = tmp_path / "r"
    names = ["...png", "..png", "sub/...JPG", "sub/..png", "._png.png"]
    jobs = plan_jobs([(root / n, root) for n in names], tmp_path / "out")
    folders = [j.folder.relative_to(tmp_path / "out").as_posix() for j in jobs]
    assert folders == [".._png", "._png", "sub/.._jpg", "sub/._png", "._png_2"]


def test_plan_cuts_names_over_255_bytes_short_with_a_hash(tmp_path):
    """A 251-byte stem saved as .png and .PNG was given ``<stem>_png`` (255 bytes) and
    ``<stem>_png_2`` (257: "File name too long"): a name over 255 bytes is cut at a character
    (UTF-8 stays valid, a name's bytes that are not UTF-8 stay its own), with a hash of the
    whole name, so that names differing past the cut still differ; so is a plain stem with its
    ``_1000`` (the 1000th image of one relative path)."""
    root = tmp_path / "r"
    files = [f"{stem}{ext}" for stem, ext in [
        ("X" * 251, ".png"), ("\u00e9" * 125, ".png"), ("\u20ac" * 83, ".jpeg"),
        (os.fsdecode(b"\xff" * 250), ".jpe")] for ext in (ext, ext.upper())]  # fmt: skip
    pairs = [(root / name, root) for name in files]
    pairs += [(tmp_path / f"o{i}" / f"{'X' * 251}.png", tmp_path / f"o{i}") for i in range(1000)]
    folders = [j.folder.relative_to(tmp_path / "out") for j in plan_jobs(pairs, tmp_path / "out")]
    names = [folder.name for folder in folders]
    assert max(len(os.fsencode(name)) for name in names) == 255
    assert len({name.casefold() for name in names}) == len(names)
    assert names[:8:2] == ["X" * 251 + "_png", "\u00e9" * 125 + "_png", "\u20ac" * 83 + "_jpeg",
                           os.fsdecode(b"\xff" * 250) + "_jpe"]  # fit: as before  # fmt: skip

    def digest(name: str) -> str:  # of the whole name: part of the folder's name, kept
        return hashlib.sha256(os.fsencode(name)).hexdigest()[:8]

    assert names[1] == "X" * 244 + f"~{digest('X' * 251 + '_png')}_2"
    assert names[3].startswith("\u00e9" * 122 + "~") and len(os.fsencode(names[3])) == 255
    assert names[5].startswith("\u20ac" * 81 + "~") and len(os.fsencode(names[5])) == 254
    assert os.fsencode(names[7]).startswith(b"\xff" * 244 + b"~")
    assert names[8:11] == ["X" * 251, "X" * 251 + "_2", "X" * 251 + "_3"]
    assert names[-2] == "X" * 251 + "_999" and names[-1] == "X" * 241 + f"~{digest('X' * 251)}_1000"
    for folder in folders[:8] + folders[-2:]:
        (tmp_path / "out" / folder).mkdir(parents=True)  # the file system takes each


def test_image_called_report_survives_report_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("FPNCLI_HOME", str(tmp_path / "home"))
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    samples = Path(__file__).resolve().parent.parent / "samples"
    shutil.copy(samples / "rocket.jpg", src / "report.jpg")
    shutil.copy(samples / "chelsea.png", src / "report.html.png")
    args = ["extract", str(src), "-o", str(out), "--weights", "random", "--min-size", "64",
            "--max-size", "128", "--workers", "1"]  # fmt: skip
    runner = CliRunner()
    first = runner.invoke(cli, args, catch_exceptions=False)
    assert first.exit_code == 0, first.output
    assert (out / "report_2" / "manifest.json").is_file()
    assert (out / "report.html_2" / "manifest.json").is_file()
    report = runner.invoke(cli, ["report", str(out)], catch_exceptions=False)
    assert report.exit_code == 0 and (out / "report.html").is_file(), report.output
    again = runner.invoke(cli, args, catch_exceptions=False)
    assert again.exit_code == 0 and "skipped 2 (already complete)" in again.output, again.output


def test_shards_partition_the_list(monkeypatch):
    items = list(range(10))
    shards = [select_shard(items, i, 3) for i in range(3)]
    assert sorted(sum(shards, [])) == items
    assert shards[1] == [1, 4, 7]
    with pytest.raises(ValueError, match="shard"):
        select_shard(items, 3, 3)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert shard_from_env() == (2, 4)


def test_run_bad_files_are_reported_and_others_complete(tmp_path, model):
    src = tmp_path / "in"
    good = [_image(src / f"g{i}.png", value=i) for i in range(3)]
    (src / "empty.jpg").write_bytes(b"")
    (src / "text.jpg").write_text("not an image")
    full = tmp_path / "full.jpg"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(full, quality=95)
    (src / "truncated.jpg").write_bytes(full.read_bytes()[:300])
    _image(src / "big.png", size=(400, 300))
    jobs = plan_jobs(discover_inputs([str(src)]), tmp_path / "out")
    summary = run_jobs(jobs, model, RunOptions(output=SMALL, max_pixels=100_000))
    failed = {Path(p).name: reason for p, reason in summary.failed}
    assert set(failed) == {"empty.jpg", "text.jpg", "truncated.jpg", "big.png"}
    assert "over the" in failed["big.png"] and "limit" in failed["big.png"]
    assert summary.done == 3 and summary.skipped == 0
    for path in good:
        assert is_complete(tmp_path / "out" / path.stem)
    for name in ("empty", "text", "truncated", "big"):
        assert not (tmp_path / "out" / name / "manifest.json").exists()


def test_resume_skips_complete_and_settings_change_redoes(tmp_path, model):
    paths = [_image(tmp_path / "in" / f"{i}.png", value=i) for i in range(2)]
    jobs = [Job(p, tmp_path / "out" / p.stem) for p in paths]
    options = RunOptions(output=SMALL)
    assert run_jobs(jobs, model, options).done == 2
    again = run_jobs(jobs, model, options)
    assert (again.done, again.skipped) == (0, 2)
    changed = run_jobs(jobs, model, replace(options, output=replace(SMALL, levels=("p3",))))
    assert changed.done == 2
    manifest = json.loads((tmp_path / "out" / "0" / "manifest.json").read_text())
    assert list(manifest["levels"]) == ["p3"]
    assert run_jobs(jobs, model, replace(options, overwrite=True)).done == 2


def test_options_that_change_nothing_do_not_redo_a_folder(tmp_path, model):
    """``channel`` with another reduction than ``channel``, and ``min_size``/``max_size``
    without the resize, change no output: a rerun with other values of them skips the folder
    (it was redone, a wds output refused). Folders written before, with those options at their
    defaults, keep their run key (the digest earlier versions wrote), so they resume too."""
    from dataclasses import asdict

    path = _image(tmp_path / "in" / "a.png")
    job = Job(path, tmp_path / "out" / "a")
    weights = steps.weights_meta(model)

    def earlier_key(output: OutputOptions) -> str:  # as the key was made before (no canvas)
        chosen = {k: v for k, v in asdict(output).items() if k != "canvas"}
        stat = path.stat()
        material = {
            "input": [os.path.realpath(path), stat.st_size, stat.st_mtime_ns],
            "weights": [weights["name"], weights["sha256"], weights["seed"]],
            "precision": "fp32", "options": chosen,
        }  # fmt: skip
        return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]

    drawn = replace(SMALL, levels=("p5", "p6"), save_heatmaps=True, reduce="l2")
    kept = replace(drawn, resize=False, min_size=800, max_size=1333)
    for output, other in ((drawn, replace(drawn, channel=3)),
                          (kept, replace(kept, min_size=32, max_size=48))):  # fmt: skip
        assert run_jobs([job], model, RunOptions(output=output)).done == 1
        assert json.loads((job.folder / "manifest.json").read_text())["run_key"] == earlier_key(
            output
        )
        again = run_jobs([job], model, RunOptions(output=other))
        assert (again.done, again.skipped) == (0, 1), other


def test_the_plan_says_which_complete_folders_other_settings_replace(tmp_path, model):
    """A rerun with other settings redoes complete folders (their run key differs), and did so
    without a word: ``on_plan`` is told how many, and which settings differ, from the manifests
    resume reads; a crashed folder (no manifest), a changed input file, a resumed folder and
    ``overwrite`` replace nothing worth saying."""
    paths = [_image(tmp_path / "in" / f"{i}.png", value=i) for i in range(4)]
    jobs = [Job(p, tmp_path / "out" / p.stem) for p in paths]
    options = RunOptions(output=SMALL)
    seen = []

    def on_plan(todo, replaced):
        seen.append(([j.path.stem for j in todo], replaced))

    run_jobs(jobs[:3], model, options, on_plan=on_plan)
    assert seen.pop() == (["0", "1", "2"], plan.Replaced())  # new folders: nothing replaced
    run_jobs(jobs, model, options, on_plan=on_plan)
    assert seen.pop() == (["3"], plan.Replaced())  # resumed
    (tmp_path / "out" / "0" / "manifest.json").unlink()  # as a run killed writing it leaves it
    stat = paths[1].stat()
    os.utime(paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the input changed
    todo, replaced = plan.plan_pending(jobs, options, steps.weights_meta(model))
    assert ([j.path.stem for j in todo], replaced) == (["0", "1"], plan.Replaced())
    other = replace(options, output=replace(SMALL, canvas="auto", levels=("p3", "p4")))
    todo, replaced = plan.plan_pending(jobs, other, steps.weights_meta(model))
    assert [j.path.stem for j in todo] == ["0", "1", "2", "3"]
    assert replaced == plan.Replaced(3, ("--levels", "--canvas"))  # all but the crashed one
    seeded = plan.plan_pending(jobs[2:], options, {**steps.weights_meta(model), "seed": 5})[1]
    assert seeded == plan.Replaced(2, ("--seed",))
    drawn = replace(options, output=replace(SMALL, overlay=True, reduce="l2"))
    assert plan.plan_pending(jobs[2:], drawn, steps.weights_meta(model))[1] == plan.Replaced(
        2, ("--overlay", "--reduce")
    )
    assert plan.plan_pending(jobs, replace(other, overwrite=True), {})[1] == plan.Replaced()
    run_jobs(jobs, model, other, on_plan=on_plan)
    assert seen.pop()[1] == plan.Replaced(3, ("--levels", "--canvas"))
    assert run_jobs(jobs, model, other, on_plan=on_plan).skipped == 4
    assert seen.pop() == ([], plan.Replaced())


def test_the_plan_refuses_folders_that_hold_another_files_outputs(tmp_path, model):
    """A folder whose complete manifest records another input file (two inputs with one
    relative path, in two runs) was redone as if its photo had changed, the other file's outputs
    lost: the plan refuses it, naming the folder and that file. The same file changed, or
    reached through a hard link, a recorded file that is gone (moved), a manifest an earlier
    version wrote without ``real_path``, and ``overwrite`` are redone."""
    old, new = _image(tmp_path / "2024" / "a.png"), _image(tmp_path / "2025" / "a.png", value=1)
    options = RunOptions(output=SMALL)
    assert run_jobs([Job(old, tmp_path / "out" / "a")], model, options).done == 1
    weights = steps.weights_meta(model)
    with pytest.raises(plan.OtherFilesError) as refused:
        plan.plan_pending([Job(new, tmp_path / "out" / "a")], options, weights)
    assert str(refused.value) == (
        f"{tmp_path / 'out' / 'a'} holds the outputs of another file, {old}, not of {new}: give "
        "another -o, or --overwrite to redo the whole run"
    )
    stat = old.stat()
    os.utime(old, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the photo edited
    assert plan.plan_pending([Job(old, tmp_path / "out" / "a")], options, weights)[0]
    overwrite = replace(options, overwrite=True)
    assert plan.plan_pending([Job(new, tmp_path / "out" / "a")], overwrite, weights)[0]
    linked = tmp_path / "linked.png"
    os.link(old, linked)  # one file, another path (as a bind mount shows it)
    assert plan.plan_pending([Job(linked, tmp_path / "out" / "a")], options, weights)[0]
    moved = tmp_path / "moved" / "a.png"
    moved.parent.mkdir()
    os.replace(old, moved)  # the recorded file is gone: nothing left to lose
    assert plan.plan_pending([Job(moved, tmp_path / "out" / "a")], options, weights)[0]
    assert plan.plan_pending([Job(new, tmp_path / "out" / "a")], options, weights)[0]
    path = tmp_path / "out" / "a" / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["input"]["real_path"]  # as an earlier version wrote it
    path.write_text(json.dumps(manifest))
    todo, replaced = plan.plan_pending([Job(new, tmp_path / "out" / "a")], options, weights)
    assert len(todo) == 1 and replaced == plan.Replaced()


def test_the_plan_redoes_folders_that_hold_the_outputs_of_another_input_of_the_run(tmp_path, model):
    """A folder holding the outputs of a file that is an input of this same run was refused as
    another file's (``extract A B`` then ``extract B A``; ``a.jpg`` added beside ``a.png``),
    though that file's outputs are redone in its own folder, nothing lost: it is redone, also
    in a shard of the run (``--shard``: given the whole run's ``RunInputs``) and in worker
    processes, which plan their shards. A file of the run reached through another path counts;
    a file of none of its jobs is still refused."""
    from fpncli.run.multi import run_on_devices

    a, b = _image(tmp_path / "A" / "a.png"), _image(tmp_path / "B" / "a.png", value=1)
    out, options, weights = tmp_path / "out", RunOptions(output=SMALL), steps.weights_meta(model)
    assert run_jobs([Job(a, out / "a"), Job(b, out / "a_2")], model, options).done == 2
    swapped = [Job(b, out / "a"), Job(a, out / "a_2")]  # the roots given the other way round
    assert plan.plan_pending(swapped, options, weights) == (swapped, plan.Replaced())
    with pytest.raises(plan.OtherFilesError):  # the shard alone: a's job is not in it
        plan.plan_pending(swapped[:1], options, weights)
    whole = plan.RunInputs(swapped)
    assert plan.plan_pending(swapped[:1], options, weights, whole)[0] == swapped[:1]
    linked = tmp_path / "linked.png"
    os.link(a, linked)
    through_link = plan.RunInputs([Job(linked, out / "linked")])
    assert plan.plan_pending(swapped[:1], options, weights, through_link)[0] == swapped[:1]
    elsewhere = plan.RunInputs([Job(tmp_path / "gone.png", out / "gone"), *swapped[:1]])
    with pytest.raises(plan.OtherFilesError):
        plan.plan_pending(swapped[:1], options, weights, elsewhere)
    # two workers, one job each: each one's folder holds the other one's file's outputs
    summary = run_on_devices(swapped, model, replace(options, workers=1), ["cpu", "cpu"],
                             weights="random")  # fmt: skip
    assert (summary.done, summary.failed) == (2, []), summary.failed
    for job in swapped:
        real = json.loads((job.folder / "manifest.json").read_text())["input"]["real_path"]
        assert real == os.path.realpath(job.path)


def test_a_16_bit_rgb_pngs_note_is_in_its_manifest(tmp_path, model):
    """Pillow reads a 16-bit RGB PNG as 8 bits: the manifest's input notes say so."""
    import cv2

    path = tmp_path / "in" / "deep.png"
    path.parent.mkdir()
    assert cv2.imwrite(str(path), np.full((40, 48, 3), 40000, np.uint16))
    assert run_jobs([Job(path, tmp_path / "out" / "deep")], model, RunOptions(output=SMALL)).done
    manifest = json.loads((tmp_path / "out" / "deep" / "manifest.json").read_text())
    assert manifest["input"]["notes"] == [
        "16-bit RGB read as 8 bits (each value's high byte, as Pillow and Detectron2 do)"
    ]


def test_batches_group_same_shapes_and_match_single_runs(tmp_path, model):
    paths = [
        _image(tmp_path / "in" / f"{i}.png", size=(48 + 20 * (i % 2), 40), value=i)
        for i in range(5)
    ]
    jobs = [Job(p, tmp_path / "batched" / p.stem) for p in paths]
    run_jobs(jobs, model, RunOptions(output=SMALL, batch_size=4))
    single = fpncli.extract(paths[3], model, min_size=64, max_size=96).features["p3"].numpy()
    batched = np.load(tmp_path / "batched" / "3" / "p3.npy")
    assert batched.shape == single.shape
    assert np.abs(batched - single).max() <= 1e-5 * np.abs(single).max()  # float rounding only


def test_disk_estimate_refuses_unless_forced(tmp_path, model, monkeypatch):
    jobs = [Job(_image(tmp_path / "in" / "a.png"), tmp_path / "out" / "a")]
    monkeypatch.setattr(plan, "_free_bytes", lambda folder: 1000)
    with pytest.raises(InsufficientDiskError, match=r"would write about .* GB .* only"):
        run_jobs(jobs, model, RunOptions(output=SMALL))
    assert not (tmp_path / "out").exists()
    assert run_jobs(jobs, model, RunOptions(output=SMALL, force=True)).done == 1


NOISY_CASES = {
    # overlays are drawn at the photo's size, not the model's: 5 of 1200x900 were counted as
    # 5 of 128x96 (a 12 MP photo's 84 MB as 8 MB, and the run stopped on a full disk)
    "overlay": (1200, 900, None, dict(save_npy=False, overlay=True)),
    # turned by its EXIF orientation: drawn 600x1000, read from the header as 1000x600
    "overlay, EXIF-turned": (1000, 600, 6, dict(save_npy=False, overlay=True)),
    # --no-resize: each heatmap counted as 200 KB whatever its size
    "no-resize": (640, 480, None, dict(resize=False, save_npy=False, overlay=True)),
    "no-resize, float16": (416, 320, None, dict(resize=False, dtype="float16")),
    "panorama": (1600, 200, None, dict(save_npy=False, overlay=True, reduce="l2")),
}


@pytest.mark.parametrize("case", NOISY_CASES)
def test_the_disk_estimate_is_an_upper_one_for_photos_of_noise(tmp_path, model, case):
    """A PNG of noise barely compresses: the estimate counts every picture at the size it is
    drawn (overlays at the photo's own size), so even noise never writes more than estimated."""
    width, height, orientation, changes = NOISY_CASES[case]
    path = tmp_path / "in" / "noise.png"
    path.parent.mkdir()
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, exif=exif)
    output = replace(SMALL, save_heatmaps=True, save_overview=True, **changes)
    job = Job(path, tmp_path / "out" / "noise")
    estimate = plan.estimate_run_bytes([job], output)
    summary = run_jobs([job], model, RunOptions(output=output))
    assert summary.done == 1
    written = sum(f.stat().st_size for f in job.folder.iterdir())
    assert written == summary.bytes_written
    assert written <= estimate, (case, estimate, written)
    if case == "overlay":  # overlays of noise, the bulk: counted near their size, not far above
        assert estimate <= 2 * written, (estimate, written)


SAMPLES = Path(__file__).resolve().parent.parent / "samples"


@pytest.mark.parametrize("photo", ["noise", "chelsea.png", "rocket.jpg"])
def test_the_no_npy_disk_estimate_stays_near_what_is_written(tmp_path, model, photo):
    """Heatmaps and the overview's level panels are cells blown up, which deflate matches: each
    is counted at what its cells can cost, not as a PNG of noise its size (9 photos with
    --no-npy were estimated at 5.9 MB each, 0.8 MB written, and refused on a disk they fit)."""
    path = tmp_path / "in" / (photo if photo != "noise" else "noise.png")
    path.parent.mkdir()
    if photo == "noise":
        pixels = np.random.default_rng(0).integers(0, 256, (427, 640, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path)
    else:
        shutil.copy(SAMPLES / photo, path)
    output = replace(SMALL, save_npy=False, save_heatmaps=True, save_overview=True)
    job = Job(path, tmp_path / "out" / "photo")
    estimate = plan.estimate_run_bytes([job], output)
    assert run_jobs([job], model, RunOptions(output=output)).done == 1
    written = sum(f.stat().st_size for f in job.folder.iterdir())
    assert written <= estimate <= 3 * written, (estimate, written)


def test_the_disk_estimate_of_images_of_no_readable_size_follows_the_resize(tmp_path):
    """With no header read (each sampled image unreadable) the estimate was an 800x1344 input's
    whatever --min-size/--max-size: 93 MB an image announced for a run at 64/96. It is now the
    largest image the resize makes (min_size x max_size, the larger way round), as one read."""
    unreadable = tmp_path / "bad.png"
    unreadable.write_text("not a picture")
    cases = {
        "small": (SMALL, (96, 64)),
        "drawn": (replace(SMALL, save_heatmaps=True, save_overview=True), (96, 64)),
        "canvas": (replace(SMALL, canvas="128x128"), (96, 64)),
        "default": (OutputOptions(), (1333, 800)),
        "no-resize": (replace(SMALL, resize=False), (1333, 800)),
    }
    for case, (options, (width, height)) in cases.items():
        sized = []
        for name, size in (("wide.png", (width, height)), ("tall.png", (height, width))):
            Image.new("RGB", size).save(tmp_path / name)
            sized.append(Job(tmp_path / name, tmp_path / "out" / "a"))
        read = plan.estimate_run_bytes(sized, options) // 2  # the larger of the two, per image
        guessed = plan.estimate_run_bytes([Job(unreadable, tmp_path / "out" / "a")], options)
        assert guessed == read, case


def test_the_disk_estimate_reads_the_size_of_a_photo_with_a_damaged_exif_block(tmp_path):
    """getexif's error on an EXIF block Pillow cannot parse dropped the photo from the sample
    (extract reads it, unturned): its overlays, drawn at its own size, were not counted."""
    output = replace(SMALL, save_npy=False, overlay=True)
    pixels = np.zeros((200, 300, 3), np.uint8)
    Image.fromarray(pixels).save(tmp_path / "exif.png", exif=b"\xff" * 40)
    Image.fromarray(pixels).save(tmp_path / "short.png", exif=b"II*\x00")  # struct.error
    for name in ("exif.png", "short.png"):
        damaged = plan.estimate_run_bytes([Job(tmp_path / name, tmp_path / "out" / "a")], output)
        assert damaged == plan._image_bytes(200, 300, output, name) > 0, name  # unturned


def test_the_disk_estimate_counts_no_bytes_for_images_the_run_refuses(tmp_path, model,
                                                                      monkeypatch):  # fmt: skip
    """An image the run will refuse writes nothing: one a fixed canvas cannot hold (it was
    estimated at 800x1344, 93 MB for a 96x64 photo), or one over --max-pixels as it is or once
    resized (three tiny photos with --min-size 100000 were refused for 2565 GB of disk, though
    every one then failed)."""
    photo = _image(tmp_path / "in" / "a.jpg", size=(96, 64))  # (a PNG's EXIF may come late)
    job = Job(photo, tmp_path / "out" / "a")
    drawn = replace(SMALL, save_heatmaps=True)
    fits = plan.estimate_run_bytes([job], replace(drawn, canvas="96x64"))
    assert fits > 0
    assert plan.estimate_run_bytes([job], replace(drawn, canvas="64x96")) == 0
    huge = replace(drawn, min_size=100_000, max_size=100_000)
    assert plan.estimate_run_bytes([job], huge) == 0  # 10,000 MP once resized
    assert plan.estimate_run_bytes([job], drawn, max_pixels=96 * 64 - 1) == 0  # before it
    assert plan.estimate_run_bytes([job], drawn, max_pixels=None) > 0
    monkeypatch.setattr(plan, "_free_bytes", lambda folder: 1000)
    summary = run_jobs([job], model, RunOptions(output=huge))  # not refused for the disk
    assert summary.done == 0 and "over the 89 MP limit" in summary.failed[0][1]
    args = ["extract", str(photo), "-o", str(tmp_path / "cli"), "--weights", "random",
            "--min-size", "100000", "--max-size", "100000"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and "over the 89 MP limit" in result.stderr, result.output
    assert "output: about" not in result.stderr  # no estimate of what no image will write


def test_the_disk_estimate_counts_the_refused_share_of_the_images_as_nothing(tmp_path):
    """The largest sampled image's estimate was counted for every image, refused ones too: one
    photo a 96x64 canvas holds and three it cannot were announced as 4 images' worth, though
    one is written. The largest stays the margin per image, for the sample's share the run
    writes, and the note says how many it will refuse (JPEGs: their orientation is read)."""
    from fpncli.cli.extract_report import _size

    wide = _image(tmp_path / "in" / "wide.jpg", size=(96, 64))
    tall = [_image(tmp_path / "in" / f"tall{i}.jpg", size=(64, 96)) for i in range(3)]
    jobs = [Job(p, tmp_path / "out" / p.stem) for p in (wide, *tall)]
    drawn = replace(SMALL, save_heatmaps=True, save_npy=False, canvas="96x64")  # as run below
    one = plan.estimate_run_bytes(jobs[:1], drawn)
    assert one > 0 and plan.estimate_run_bytes(jobs, drawn) == one
    assert plan.estimate_run_volume(jobs, drawn) == (one, 1.0)
    # a sample of a longer list (the 1st and 5th of 8): its share, 1 of 2, of the 8 images
    assert plan.estimate_run_volume(jobs[:1] * 4 + jobs[1:2] * 4, drawn, sample=2) == (one, 4.0)
    args = ["extract", *map(str, (wide, *tall)), "-o", str(tmp_path / "cli"), "--weights",
            "random", "--min-size", "64", "--max-size", "96", "--canvas", "96x64",
            "--no-overview", "--no-npy"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and "does not fit the canvas" in result.stderr, result.output
    note = f"output: about {_size(one)} per image, {_size(one)} for 4 images, about 3 of which"
    assert f"{note} the run will refuse\n" in result.stderr


def test_the_disk_estimate_decodes_no_png_for_its_exif(tmp_path, monkeypatch):
    """The header read never decodes a PNG: one whose eXIf chunk comes before its pixels is
    read turned without decoding them (a 20000 x 20000 PNG of 388 KB had been decoded for its
    orientation, 788 MB, before extract refused it as a bomb), one without reads as stored."""
    from PIL import PngImagePlugin

    output = replace(SMALL, save_npy=False, overlay=True)
    pixels = np.zeros((200, 300, 3), np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # a quarter turn: 200x300 as it is drawn
    Image.fromarray(pixels).save(tmp_path / "turned.png", exif=exif)
    Image.fromarray(pixels).save(tmp_path / "plain.png")
    Image.fromarray(pixels.transpose(1, 0, 2)).save(tmp_path / "upright.png")

    def estimate(name: str) -> int:
        return plan.estimate_run_bytes([Job(tmp_path / name, tmp_path / "out" / "a")], output)

    upright, plain = (
        plan._image_bytes(*shape, output, "a.png") for shape in ((300, 200), (200, 300))
    )
    assert upright != plain  # the test tells the two sizes apart
    loads = []
    real_load = PngImagePlugin.PngImageFile.load
    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load",
                        lambda im: loads.append(im.size) or real_load(im))  # fmt: skip
    assert "exif" in Image.open(tmp_path / "turned.png").info  # found before the pixels
    assert estimate("turned.png") == upright
    assert estimate("plain.png") == max(upright, plain)  # its EXIF may follow the pixels
    assert loads == []


def test_the_disk_estimate_counts_a_png_whose_exif_follows_its_pixels(tmp_path, model):
    """A PNG whose eXIf chunk comes after its pixels reads unturned from its header: with a
    fixed canvas that holds it only turned it counted 0 bytes, though the run writes it. Now a
    PNG whose header tells no orientation counts the larger of both ways round (0 only where a
    canvas holds neither)."""
    exif = Image.Exif()
    exif[0x0112] = 6  # a quarter turn: 64x96 as it is drawn
    data = exif.tobytes()
    data = data[6:] if data.startswith(b"Exif\x00\x00") else data
    chunk = struct.pack(">I", len(data)) + b"eXIf" + data
    chunk += struct.pack(">I", zlib.crc32(b"eXIf" + data) & 0xFFFFFFFF)
    _image(tmp_path / "stored.png", size=(96, 64))
    png = (tmp_path / "stored.png").read_bytes()
    end = png.rindex(b"IEND") - 4
    (tmp_path / "late.png").write_bytes(png[:end] + chunk + png[end:])
    late = Image.open(tmp_path / "late.png")
    assert "exif" not in late.info and late.size == (96, 64)  # the header read sees none
    job = Job(tmp_path / "late.png", tmp_path / "out" / "late")
    drawn = replace(SMALL, save_heatmaps=True, resize=False)
    estimate = plan.estimate_run_bytes([job], replace(drawn, canvas="64x96"))
    assert estimate == plan._image_bytes(96, 64, replace(drawn, canvas="64x96"), "late.png") > 0
    summary = run_jobs([job], model, RunOptions(output=replace(drawn, canvas="64x96")))
    assert summary.done == 1  # the run does write it
    assert plan.estimate_run_bytes([job], replace(drawn, canvas="32x32")) == 0  # neither fits


def test_the_disk_refusal_suggests_only_what_the_run_has_not_done(tmp_path, model, monkeypatch):
    jobs = [Job(_image(tmp_path / "in" / "a.png"), tmp_path / "out" / "a")]
    monkeypatch.setattr(plan, "_free_bytes", lambda folder: 1000)
    output = replace(SMALL, save_npy=False, save_heatmaps=True, levels=("p3",))
    with pytest.raises(InsufficientDiskError) as refused:
        run_jobs(jobs, model, RunOptions(output=output))
    assert str(refused.value).endswith("free space, write less (--no-heatmaps), or pass --force")
    with pytest.raises(InsufficientDiskError, match=r"\(--levels, --dtype float16, --no-npy\)"):
        run_jobs(jobs, model, RunOptions(output=SMALL))


def _overflowing_state() -> dict:
    """A seeded checkpoint whose FPN outputs reach past float16's range (+-65504)."""
    from fpncli.weights.synthetic import seeded_state_dict

    state = seeded_state_dict(3)
    for name in state:
        if "fpn_output" in name and name.endswith("weight"):
            state[name] = state[name] * 200
    return state


def test_float16_overflow_is_counted_and_said_once_per_run(tmp_path):
    """--dtype float16 turned values past its range into inf with a word only in each
    manifest's nonfinite counts: the run's summary counts the images and levels, and extract
    says it once, with the way out."""
    from fpncli.run.multi import _merge
    from fpncli.run.summary import RunSummary
    from fpncli.weights.synthetic import write_detectron2_pth

    weights = tmp_path / "big.pth"
    write_detectron2_pth(weights, _overflowing_state())
    big = fpncli.load_backbone(str(weights))
    paths = [_image(tmp_path / "in" / f"{i}.png", value=i) for i in range(2)]
    output = replace(SMALL, dtype="float16", levels=("p5", "p6"))
    jobs = [Job(p, tmp_path / "f16" / p.stem) for p in paths]
    summary = run_jobs(jobs, big, RunOptions(output=output))
    nonfinite = [m["nonfinite"] for j in jobs for m in read_manifest(j.folder)["levels"].values()]
    assert summary.done == 2 and sum(nonfinite) > 0
    assert (summary.float16_images, summary.float16_levels) == (2, sum(map(bool, nonfinite)))
    kept = run_jobs(jobs, big, RunOptions(output=replace(output, dtype="float32")))
    assert kept.done == 2 and (kept.float16_images, kept.float16_levels) == (0, 0)
    assert all(
        m["nonfinite"] == 0 for j in jobs for m in read_manifest(j.folder)["levels"].values()
    )
    parts = [
        RunSummary(float16_images=1, float16_levels=2),
        RunSummary(float16_images=2, float16_levels=3),
    ]
    merged = _merge(parts)  # --gpus/--processes: every worker's images
    assert (merged.float16_images, merged.float16_levels) == (3, 5)
    args = ["extract", str(tmp_path / "in"), "-o", str(tmp_path / "cli"), "--weights",
            str(weights), "--min-size", "64", "--max-size", "96", "--levels", "p5,p6"]  # fmt: skip
    result = CliRunner().invoke(cli, [*args, "--dtype", "float16"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    warned = [ln for ln in result.stderr.splitlines() if ln.startswith("warning:")]
    assert warned == [
        f"warning: --dtype float16 overflowed in 2 image(s) ({summary.float16_levels} level(s) "
        "in all): values past its range (+-65504) became inf (each level's 'nonfinite' in the "
        "manifest counts them); --dtype float32 keeps them"
    ]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)  # float32: nothing to say
    assert result.exit_code == 0 and "warning:" not in result.stderr, result.output


def test_disk_full_mid_run_stops_cleanly(tmp_path, model, monkeypatch):
    paths = [_image(tmp_path / "in" / f"{i}.png", value=i) for i in range(4)]
    jobs = [Job(p, tmp_path / "out" / p.stem) for p in paths]
    real = image_writer.atomic_write_bytes

    def filling(path, data):
        if path.parent.name == "1" and path.name == "p4.npy":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(image_writer, "atomic_write_bytes", filling)
    summary = run_jobs(jobs, model, RunOptions(output=SMALL, writers=1))
    assert summary.aborted == "disk full: 1 of 4 done, rerun the same command after freeing space"
    assert summary.failed == []  # a full disk stops the run; it is not the image's fault
    assert is_complete(tmp_path / "out" / "0")
    broken = tmp_path / "out" / "1"
    assert not (broken / "manifest.json").exists()
    assert sorted(p.name for p in broken.iterdir()) == []  # this attempt's files removed


@pytest.mark.parametrize("where", ["decode", "write"])
def test_too_many_open_files_stops_the_run_once_as_a_full_disk_does(tmp_path, model, monkeypatch,
                                                                    where):  # fmt: skip
    """EMFILE (``ulimit -n`` reached; ENFILE, the system's) failed the images one by one, each
    "unreadable image (Too many open files)" or "could not write": the limit is the run's, not
    an image's, so the run stops once saying what to raise or lower, and leaves the images not
    done for the rerun (none is counted failed)."""
    from fpncli.io import image_load, pillow_open

    paths = [_image(tmp_path / "in" / f"{i}.png", value=i) for i in range(4)]
    jobs = [Job(p, tmp_path / "out" / p.stem) for p in paths]
    emfile = OSError(errno.EMFILE, "Too many open files")
    if where == "decode":
        real_open = pillow_open.open_regular

        def opening(path, what):
            if Path(path).name == "2.png":
                raise OSError(errno.EMFILE, "Too many open files", str(path))
            return real_open(path, what)

        monkeypatch.setattr(pillow_open, "open_regular", opening)
        with pytest.raises(OSError) as refused:  # said as what it is, not "unreadable image"
            image_load.load_image(paths[2])
        assert refused.value.errno == errno.EMFILE
    else:
        real_write = image_writer.atomic_write_bytes

        def writing(path, data):
            if path.parent.name == "1" and path.name == "p4.npy":
                raise emfile
            return real_write(path, data)

        monkeypatch.setattr(image_writer, "atomic_write_bytes", writing)
    summary = run_jobs(jobs, model, RunOptions(output=SMALL, workers=1, writers=1))
    assert summary.failed == []
    stopped = [p.stem for p in paths if not is_complete(tmp_path / "out" / p.stem)]
    assert stopped and stopped[0] == ("2" if where == "decode" else "1"), stopped
    assert summary.done == 4 - len(stopped)
    assert summary.aborted == (
        f"too many open files: {summary.done} of 4 done, rerun the same command with a higher "
        "limit (ulimit -n 4096, say) or fewer --workers/--writers"
    )


def test_killed_run_resumes_without_redoing(tmp_path):
    """SIGKILL after the first complete folder; 30 images (~60 ms each here) so that a test
    process starved for a while still kills the run before it ends."""
    src = tmp_path / "in"
    for i in range(30):
        _image(src / f"{i}.png", value=i)
    out = tmp_path / "out"
    env = dict(os.environ, FPNCLI_HOME=str(tmp_path / "home"))
    cmd = [sys.executable, "-m", "fpncli", "extract", str(src), "-o", str(out), "--weights",
           "random", "--min-size", "64", "--max-size", "96", "--no-overview", "--no-heatmaps",
           "--workers", "1"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(out.glob("*/manifest.json")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("*/manifest.json")}
    assert 1 <= len(finished) < 30
    for folder in out.iterdir():
        if (folder / "manifest.json").exists():
            for level in ("p2", "p3", "p4", "p5", "p6"):
                np.load(folder / f"{level}.npy")  # complete folders hold whole files
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"skipped {len(finished)}" in result.stdout
    for name, mtime in finished.items():
        assert (out / name / "manifest.json").stat().st_mtime_ns == mtime  # not redone
    assert all(is_complete(out / str(i)) for i in range(30))
    assert not list(out.rglob(".*fpncli-tmp*"))


def test_out_of_memory_retries_smaller_outside_except_and_remembers(tmp_path, model, monkeypatch):
    paths = [_image(tmp_path / "in" / f"{i}.png", value=i) for i in range(6)]
    paths.append(_image(tmp_path / "in" / "huge.png", size=(40, 48), value=9))  # portrait
    jobs = [Job(p, tmp_path / "out" / p.stem) for p in paths]
    real = steps.run_backbone
    calls = []

    def small_gpu(model, batch, precision, **kwargs):
        calls.append((batch.shape[0], sys.exc_info()[0]))
        if batch.shape[0] > 1 or batch.shape[-2] > 64:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, batch, precision=precision, **kwargs)

    monkeypatch.setattr(steps, "run_backbone", small_gpu)
    summary = run_jobs(jobs, model, RunOptions(output=SMALL, batch_size=4, workers=1))
    assert summary.done == 6 and summary.batch_size == 1
    assert summary.failed == [(str(paths[-1]), ANY)]
    assert "out of memory even for a batch of one" in summary.failed[0][1]
    # 4 fails -> 2 fails -> 1, 1, then the batch size stays 1: no more tries at 2 or 4
    assert [n for n, _ in calls] == [4, 2, 1, 1, 1, 1, 1, 1, 1]
    assert all(exc is None for _, exc in calls)  # never retried inside an except block
    assert not (tmp_path / "out" / "huge" / "manifest.json").exists()


def test_a_cpu_image_too_large_for_the_memory_fails_alone_before_the_model_runs(
    tmp_path, model, monkeypatch
):
    """On the CPU, out of memory is the OOM killer ending the process (no message, no run.json,
    every rerun dying at the same image): a 54 MP model input was run all the same. The memory
    is read before the batch (here: what two 64x64 inputs need)."""
    from fpncli.run.hostmem import cpu_batch_bytes

    small = _image(tmp_path / "in" / "small.png", size=(48, 40))  # padded to 64x64
    large = _image(tmp_path / "in" / "large.png", size=(400, 300), value=1)  # to 416x320
    jobs = [Job(p, tmp_path / "out" / p.stem) for p in (small, large)]
    one = cpu_batch_bytes(1, 64, 64, "fp32")
    monkeypatch.setattr(runner, "available_bytes", lambda share: 2 * one + 1)
    calls = []
    real = steps.run_backbone
    monkeypatch.setattr(steps, "run_backbone", lambda m, batch, precision, **kw: calls.append(
        tuple(batch.shape)) or real(m, batch, precision=precision, **kw))  # fmt: skip
    options = RunOptions(output=replace(SMALL, resize=False), workers=1)
    summary = run_jobs(jobs, model, options)
    assert summary.done == 1 and [p for p, _ in summary.failed] == [str(large)]
    need = cpu_batch_bytes(1, 320, 416, "fp32")
    assert summary.failed[0][1] == (
        f"needs about {need / 1e6:.0f} MB of memory on the CPU for its 416x320 model input, but "
        f"{(2 * one + 1) / 1e6:.0f} MB is available: drop --no-resize"
    )
    assert [shape[-2:] for shape in calls] == [(64, 64)]  # the large one never ran
    assert not (tmp_path / "out" / "large").exists()


def test_a_cpu_batch_too_large_for_the_memory_is_split(tmp_path, model, monkeypatch, caplog):
    from fpncli.run.hostmem import cpu_batch_bytes

    paths = [_image(tmp_path / "in" / f"{i}.png", value=i) for i in range(5)]
    jobs = [Job(p, tmp_path / "out" / p.stem) for p in paths]
    monkeypatch.setattr(runner, "available_bytes",
                        lambda share: 2 * cpu_batch_bytes(1, 64, 96, "fp32") + 1)  # fmt: skip
    rows = []
    real = steps.run_backbone
    monkeypatch.setattr(steps, "run_backbone", lambda m, batch, precision, **kw: rows.append(
        batch.shape[0]) or real(m, batch, precision=precision, **kw))  # fmt: skip
    summary = run_jobs(jobs, model, RunOptions(output=SMALL, batch_size=4, workers=1))
    assert summary.done == 5 and not summary.failed and summary.batch_size == 2
    assert rows == [2, 2, 1], rows
    assert "not enough memory for a batch of 4 at 96x64 on the CPU" in caplog.text
    batched = np.load(tmp_path / "out" / "3" / "p3.npy")
    single = fpncli.extract(paths[3], model, min_size=64, max_size=96).features["p3"].numpy()
    assert np.abs(batched - single).max() <= 1e-5 * np.abs(single).max()


def test_the_cpu_memory_check_is_skipped_where_the_memory_cannot_be_read(tmp_path, model,
                                                                         monkeypatch):  # fmt: skip
    monkeypatch.setattr(runner, "available_bytes", lambda share: None)
    job = Job(_image(tmp_path / "a.png"), tmp_path / "out" / "a")
    assert run_jobs([job], model, RunOptions(output=SMALL, batch_size=2)).done == 1


def test_available_memory_is_read_from_meminfo_and_the_heap(tmp_path, monkeypatch):
    from fpncli.run import hostmem

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  8000000 kB\nMemFree:  100 kB\nMemAvailable:  2000000 kB\n"
                       "SwapTotal: 1000 kB\nSwapFree:  500 kB\n")  # fmt: skip
    monkeypatch.setattr(hostmem, "_heap_free", lambda: 7)
    assert hostmem.available_bytes(str(meminfo)) == (2000000 + 500) * 1024 + 7
    meminfo.write_text("MemTotal:  8000000 kB\nMemFree:  100 kB\n")  # before Linux 3.14
    assert hostmem.available_bytes(str(meminfo)) is None
    assert hostmem.available_bytes(str(tmp_path / "missing")) is None
    assert hostmem._heap_free() == 7
    monkeypatch.undo()
    assert hostmem._heap_free() >= 0 and hostmem.available_bytes() is not None  # Linux here


def test_ulimit_v_bounds_the_available_memory(tmp_path, monkeypatch):
    """Under ``ulimit -v`` an allocation past the limit fails however much the machine has: the
    limit less the address space mapped now bounds the figure (a batch that would pass it is
    refused with a line saying what it needs, not failed in torch's allocator)."""
    import resource

    from fpncli.run import hostmem

    gib = 1 << 30
    monkeypatch.setattr(hostmem, "_heap_free", lambda: 7)
    meminfo, status = tmp_path / "meminfo", tmp_path / "status"
    meminfo.write_text(f"MemAvailable: {20 * gib // 1024} kB\nSwapFree: 0 kB\n")
    status.write_text(f"Name:\tpython\nVmPeak:\t9 kB\nVmSize:\t{gib // 1024} kB\n")
    none = str(tmp_path / "no-cgroup")
    limit = [resource.RLIM_INFINITY]
    monkeypatch.setattr(resource, "getrlimit", lambda which: (limit[0], resource.RLIM_INFINITY))
    assert hostmem.address_space_headroom(str(status)) is None
    assert hostmem.available_bytes(str(meminfo), cgroups=none, status=str(status)) == 20 * gib + 7
    limit[0] = 3 * gib  # ulimit -v: 3 GiB, 1 GiB of it mapped
    assert hostmem.address_space_headroom(str(status)) == 2 * gib
    assert hostmem.available_bytes(str(meminfo), cgroups=none, status=str(status)) == 2 * gib + 7
    # each process has its own limit: a worker's share of the machine is not also a share of it
    assert hostmem.available_bytes(str(meminfo), cgroups=none, status=str(status),
                                   share=0.5) == 2 * gib + 7  # fmt: skip
    assert hostmem.available_bytes(str(meminfo), cgroups=none, status=str(status),
                                   share=0.05) == gib + 7  # 5% of 20 GiB: 1 GiB  # fmt: skip
    limit[0] = gib // 2  # mapped past a lowered limit: nothing, not a negative figure
    assert hostmem.address_space_headroom(str(status)) == 0
    assert hostmem.address_space_headroom(str(tmp_path / "missing")) is None


def _cgroup_tree(tmp_path, files: dict[str, str], cgroup: str):
    for rel, text in files.items():
        (tmp_path / "fs" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "fs" / rel).write_text(text)
    (tmp_path / "cgroup").write_text(cgroup)
    return str(tmp_path / "cgroup"), str(tmp_path / "fs")


def test_a_memory_cgroup_limit_bounds_the_available_memory(tmp_path, monkeypatch):
    """In a container or a SLURM job the OOM killer acts at the cgroup's limit, which the host's
    MemAvailable does not show: the least headroom over the cgroup and those above it counts,
    its page cache (dropped before a kill) and its allowed swap included."""
    from fpncli.run import hostmem

    gib = 1 << 30
    monkeypatch.setattr(hostmem, "_heap_free", lambda: 7)
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemAvailable: {20 * gib // 1024} kB\nSwapFree: {gib // 1024} kB\n")
    # cgroup v2: 6 GiB on the job's slice, none on the step; 5 GiB used, 1 GiB of it file cache
    cgroups, root = _cgroup_tree(tmp_path, {
        "job/memory.max": str(6 * gib), "job/memory.current": str(5 * gib),
        "job/memory.stat": f"anon 1\ninactive_file {gib // 2}\nactive_file {gib // 2}\n",
        "job/step/memory.max": "max", "job/step/memory.current": str(5 * gib),
        "job/step/memory.swap.max": "0", "job/memory.swap.max": "0",
    }, "0::/job/step\n")  # fmt: skip
    assert hostmem.cgroup_headroom(cgroups, root) == 2 * gib
    got = hostmem.available_bytes(str(meminfo), cgroups=cgroups, root=root)
    assert got == 2 * gib + 7
    assert hostmem.available_bytes(str(meminfo), cgroups=cgroups, root=root, share=0.5) == \
        gib + 7  # fmt: skip
    # swap the cgroup may use ("max": the host's) counts, as SwapFree does without a cgroup
    (tmp_path / "fs" / "job/memory.swap.max").write_text("max")
    assert hostmem.cgroup_headroom(cgroups, root, host_swap=gib) == 3 * gib
    # cgroup v1 in a container: the host's path, the container's own cgroup at the root
    cgroups, root = _cgroup_tree(tmp_path / "v1", {
        "memory/memory.limit_in_bytes": str(4 * gib), "memory/memory.usage_in_bytes": str(gib),
        "memory/memory.stat": "cache 5\ntotal_inactive_file 1024\n",
    }, "4:memory:/docker/0123abcd\n1:cpu:/\n")  # fmt: skip
    assert hostmem.cgroup_headroom(cgroups, root) == 3 * gib + 1024
    # no limit (v1 reads 2**63 rounded to a page), garbage, nothing to read: the host's figure
    (tmp_path / "v1/fs/memory/memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert hostmem.cgroup_headroom(cgroups, root) is None
    (tmp_path / "v1/fs/memory/memory.limit_in_bytes").write_text("lots\n")
    assert hostmem.cgroup_headroom(cgroups, root) is None
    assert hostmem.cgroup_headroom(str(tmp_path / "none"), root) is None
    assert hostmem.available_bytes(str(meminfo), cgroups=cgroups, root=root) == 21 * gib + 7
    # over its limit already (usage past a lowered limit): nothing, not a negative figure
    (tmp_path / "v1/fs/memory/memory.limit_in_bytes").write_text(str(gib // 2))
    assert hostmem.cgroup_headroom(cgroups, root) == 0
    assert hostmem.available_bytes(str(meminfo), cgroups=cgroups, root=root) == 7
    # a cgroup path past the file system's name limit: no figure, not an error that ends a run
    (tmp_path / "long").write_text("0::/" + "x" * 300 + "\n")
    assert hostmem.cgroup_headroom(str(tmp_path / "long"), root) is None
    # a folder whose files cannot be read (a name past PATH_MAX, one not ours) leaves the limits
    # of those above it
    cgroups, root = _cgroup_tree(tmp_path / "deep", {
        "job/memory.max": str(gib), "job/memory.current": str(gib // 2),
        "job/step/memory.max": str(gib), "job/step/memory.current": "0",
    }, "0::/job/step\n")  # fmt: skip
    real = hostmem._headroom

    def unreadable_step(folder, *args):
        if folder.name == "step":
            raise OSError(36, "File name too long")
        return real(folder, *args)

    monkeypatch.setattr(hostmem, "_headroom", unreadable_step)
    assert hostmem.cgroup_headroom(cgroups, root) == gib // 2


@pytest.mark.parametrize("count", [1, 3])
def test_out_of_memory_halves_the_rows_that_ran_when_batches_are_padded(
    tmp_path, model, monkeypatch, count
):
    """On CUDA a partial batch is padded to the batch size: a device that fits 2 rows failed a
    lone image ("even for a batch of one") after 4 rows ran, and cut 3 images (4 rows) to a
    batch size of 1."""
    paths = [_image(tmp_path / "in" / f"{i}.png", value=i) for i in range(count)]
    jobs = [Job(p, tmp_path / "out" / p.stem) for p in paths]
    real = steps.run_backbone
    rows = []

    def two_rows_fit(model, batch, precision, **kwargs):
        rows.append(batch.shape[0])
        if batch.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, batch, precision=precision, **kwargs)

    monkeypatch.setattr(steps, "run_backbone", two_rows_fit)
    options = RunOptions(output=SMALL, batch_size=4, workers=1, pad_batches=True)
    summary = run_jobs(jobs, model, options)
    assert summary.done == count and not summary.failed and summary.batch_size == 2
    assert rows == [4, 2] + [2] * (count > 2)


def test_a_model_error_fails_its_batch_and_the_run_goes_on(tmp_path, model, monkeypatch):
    paths = [_image(tmp_path / "in" / f"{i}.png", value=i) for i in range(4)]
    jobs = [Job(p, tmp_path / "out" / p.stem) for p in paths]
    real = steps.run_backbone
    count = []

    def flaky(model, batch, precision, **kwargs):
        count.append(1)
        if len(count) == 1:
            raise RuntimeError("cudaErrorIllegalAddress (simulated)")
        return real(model, batch, precision=precision, **kwargs)

    monkeypatch.setattr(steps, "run_backbone", flaky)
    summary = run_jobs(jobs, model, RunOptions(output=SMALL, batch_size=2, workers=1))
    assert summary.done == 2 and len(summary.failed) == 2
    assert all("the model failed: RuntimeError" in reason for _, reason in summary.failed)


def test_an_unusable_device_stops_the_run_with_one_message(tmp_path, model, monkeypatch):
    """After a sticky CUDA error every later call fails: the run stops (not 100k failures), the
    batch that hit it is failed, the summary says how far it got, and a rerun resumes."""
    paths = [_image(tmp_path / "in" / f"{i}.png", value=i) for i in range(6)]
    jobs = [Job(p, tmp_path / "out" / p.stem) for p in paths]
    real = steps.run_backbone
    calls, broken = [], []

    def dying(model, batch, precision, **kwargs):
        calls.append(batch.shape[0])
        if len(calls) == 2:
            broken.append(True)
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(model, batch, precision=precision, **kwargs)

    real_write = runner.Runner._write
    failed = threading.Event()

    def late_write(self, *args):  # the first batch's writes start only after the second failed
        failed.wait(30)
        return real_write(self, *args)

    def broken_device(device):
        failed.set()
        return bool(broken)

    monkeypatch.setattr(steps, "run_backbone", dying)
    monkeypatch.setattr(runner.Runner, "_write", late_write)
    monkeypatch.setattr(runner, "device_broken", broken_device)
    emptied = []
    monkeypatch.setattr(runner, "free_cached_memory", emptied.append)
    summary = run_jobs(jobs, model, RunOptions(output=SMALL, batch_size=2, workers=1))
    assert calls == [2, 2]  # nothing more ran after the failure
    assert summary.done == 2 and len(summary.failed) == 2
    assert all("illegal memory access" in reason for _, reason in summary.failed)
    assert summary.aborted == (
        "cpu failed (RuntimeError: CUDA error: an illegal memory access was encountered): "
        "2 of 6 done, rerun the same command to resume"
    )
    assert emptied == []  # no empty_cache on a dead context (it raises there)
    monkeypatch.setattr(runner.Runner, "_write", real_write)
    monkeypatch.setattr(steps, "run_backbone", real)
    monkeypatch.setattr(runner, "device_broken", lambda device: False)
    again = run_jobs(jobs, model, RunOptions(output=SMALL, batch_size=2, workers=1))
    assert (again.done, again.skipped, again.failed, again.aborted) == (4, 2, [], None)


def test_progress_reports_arrive_in_order(tmp_path, model):
    """Two writers: one that read the counts must not deliver them after a newer report (the
    Ctrl-C message is made from the last report). The first report is slow to deliver: the
    other writer's reports wait for it."""
    paths = [_image(tmp_path / "in" / f"{i}.png", value=i) for i in range(4)]
    jobs = [Job(p, tmp_path / "out" / p.stem) for p in paths]
    delivered = []

    def slow_first(progress):
        if not delivered:
            delivered.append(None)
            time.sleep(0.5)
        delivered.append(progress.done + progress.failed + progress.skipped)

    summary = run_jobs(jobs, model, RunOptions(output=SMALL, batch_size=4, writers=2),
                       progress=slow_first)  # fmt: skip
    counts = delivered[1:]
    assert summary.done == 4 and counts == sorted(counts) and counts[-1] == 4


def test_a_copy_back_error_fails_that_image_only(tmp_path, model, monkeypatch):
    from fpncli.run.device.transfer import BatchResult

    paths = [_image(tmp_path / "in" / f"{i}.png", value=i) for i in range(5)]
    jobs = [Job(p, tmp_path / "out" / p.stem) for p in paths]
    real = BatchResult.image

    def broken(self, index):
        if index == 1:
            raise RuntimeError("CUDA error: an illegal memory access (simulated)")
        return real(self, index)

    monkeypatch.setattr(BatchResult, "image", broken)
    summary = run_jobs(jobs, model, RunOptions(output=SMALL, batch_size=2, workers=1))
    assert summary.done + len(summary.failed) == 5  # every image ends done or failed
    assert sorted(Path(p).name for p, _ in summary.failed) == ["1.png", "3.png"]
    assert all("copying back or writing" in reason for _, reason in summary.failed)
    for name in ("1", "3"):
        assert not (tmp_path / "out" / name / "manifest.json").exists()


def test_a_pca_level_holding_inf_fails_its_image_alone(tmp_path, model, monkeypatch):
    """One inf in one image's p3 (a float16 overflow) made that image's p3 pca heatmap all NaN,
    drawn blank, and the image counted done (and on few channels LAPACK failed to converge on
    the batch's one eigh call: every image failed as "the model failed"). The image now fails
    with the numpy reference's refusal, naming the level (the summary's failures are run.json's);
    the other images of its batch are written as a run without the inf writes them."""
    paths = [_image(tmp_path / "in" / f"{i}.png", value=i) for i in range(3)]
    output = replace(SMALL, levels=("p3", "p4"), dtype="float16", reduce="pca",
                     save_heatmaps=True)  # fmt: skip
    options = RunOptions(output=output, batch_size=3, workers=1)
    clean = run_jobs([Job(p, tmp_path / "clean" / p.stem) for p in paths], model, options)
    assert clean.done == 3 and not clean.failed
    real, rows = steps.run_backbone, []

    def overflowing(model, batch, precision, **kwargs):
        features = real(model, batch, precision=precision, **kwargs)
        rows.append(batch.shape[0])
        features["p3"][1, 0, 0, 0] = 1e6  # past float16's +-65504: inf in the .npy dtype
        return features

    monkeypatch.setattr(steps, "run_backbone", overflowing)
    out = tmp_path / "inf"
    summary = run_jobs([Job(p, out / p.stem) for p in paths], model, options)
    assert rows == [3] and summary.done == 2
    assert summary.failed == [(str(paths[1]), "p3: --reduce pca needs finite values, and this "
                               "level holds 1 NaN or infinite ones: use --reduce channel, mean, "
                               "max or l2")]  # fmt: skip
    assert not (out / "1" / "manifest.json").exists()
    for name in ("0", "2"):
        ours, want = read_manifest(out / name), read_manifest(tmp_path / "clean" / name)
        for level in ("p3", "p4"):
            assert ours["levels"][level]["range"] == want["levels"][level]["range"]
            for file in (f"{level}.png", f"{level}.npy"):
                assert (out / name / file).read_bytes() == (
                    tmp_path / "clean" / name / file).read_bytes(), (name, file)  # fmt: skip


def test_padded_partial_batches_give_the_same_outputs(tmp_path, model):
    paths = [_image(tmp_path / "in" / f"{i}.png", value=i) for i in range(3)]
    out = {}
    for pad in (False, True):
        jobs = [Job(p, tmp_path / f"out{pad}" / p.stem) for p in paths]
        options = RunOptions(output=SMALL, batch_size=4, pad_batches=pad)
        assert run_jobs(jobs, model, options).done == 3
        out[pad] = [np.load(tmp_path / f"out{pad}" / p.stem / "p3.npy") for p in paths]
    for a, b in zip(out[False], out[True]):
        assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max()


def test_a_padded_partial_batch_reaches_the_model_channels_last(tmp_path, model, monkeypatch):
    """The zero images that pad a partial batch are in the batch as it is made: a torch.cat
    onto it gave a contiguous batch, which cost the device one more copy before the model."""
    paths = [_image(tmp_path / "in" / f"{i}.png", value=i) for i in range(3)]
    jobs = [Job(p, tmp_path / "out" / p.stem) for p in paths]
    real, seen = steps.run_backbone, []

    def record(model, batch, precision, **kwargs):
        seen.append((batch.shape[0], batch.is_contiguous(memory_format=torch.channels_last),
                     bool(batch[2:].eq(0).all())))  # fmt: skip
        return real(model, batch, precision=precision, **kwargs)

    monkeypatch.setattr(steps, "run_backbone", record)
    options = RunOptions(output=SMALL, batch_size=2, workers=1, pad_batches=True)
    assert run_jobs(jobs, model, options).done == 3
    assert seen == [(2, True, True), (2, True, True)]  # a full batch, then 1 image and 1 zero


def test_compile_without_a_canvas_says_once_that_each_image_size_compiles_again(
    tmp_path, model, monkeypatch, caplog
):
    """The model is compiled for static shapes: each new padded size compiles it again (tens of
    seconds on a GPU), and past torch's recompile limit new sizes run eager with only a line in
    torch's log. The run says so once, at its second size, with the option that fixes it. The
    compile is stood in for (a real one takes minutes on two cores)."""
    compiled = []

    class Compiled(torch.nn.Module):  # as torch.compile's OptimizedModule holds the model
        def __init__(self, model):
            super().__init__()
            self._orig_mod = model

        def forward(self, x, **kwargs):
            return self._orig_mod(x, **kwargs)

        def __getattr__(self, name):  # the model's attributes, as OptimizedModule gives them
            try:
                return super().__getattr__(name)
            except AttributeError:
                return getattr(self._orig_mod, name)

    def compile_anew(m, precision, compile):  # a new process's compile, for each run
        compiled.append(compile)
        return Compiled(m)

    monkeypatch.setattr(pipeline, "model_for_run", compile_anew)
    # padded to (WxH) 96x64 twice, then 64x96, 64x64, 96x64; without the resize all to 64x64
    # but the last, to 96x64
    sizes = [(48, 40), (48, 40), (40, 56), (50, 50), (70, 40)]
    paths = [_image(tmp_path / "in" / f"{i}.png", size) for i, size in enumerate(sizes)]

    def warned(paths, **output):
        jobs = [Job(p, tmp_path / "out" / p.stem) for p in paths]
        options = RunOptions(output=replace(SMALL, **output), batch_size=1, workers=1,
                             compile=True, overwrite=True)  # fmt: skip
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert run_jobs(jobs, model, options).done == len(paths)
        return [r.getMessage() for r in caplog.records if "--compile" in r.getMessage()]

    assert warned(paths[:2]) == warned([paths[0], paths[4]]) == []  # one size: one compile
    assert warned(paths) == [
        "--compile without --canvas compiles the model again for every padded image size (width "
        "x height 64x96 now, after 96x64; tens of seconds each on a GPU, and sizes past torch's "
        "recompile limit run uncompiled): add --canvas auto to pad every image to one of two sizes"
    ]
    assert warned(paths, canvas="auto") == []
    assert len(warned([paths[0], paths[4]], resize=False)) == 1
    assert "add --canvas WxH, a size that holds every image" in caplog.text
    assert compiled == [True] * 5
    # one process's runs reuse its compiled model (a Ray actor's calls, a notebook): a size that
    # is new to the process is said once, also when each run sees one size
    same = Compiled(model)
    monkeypatch.setattr(pipeline, "model_for_run", lambda m, precision, compile: same)
    assert warned(paths[:2]) == []
    assert len(warned(paths[2:3])) == 1
    assert warned(paths) == []


def test_a_run_changes_no_global_torch_setting(tmp_path, model):
    before = (
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision(),
        torch.get_num_threads(),
    )  # fmt: skip
    jobs = [Job(_image(tmp_path / "in" / "a.png"), tmp_path / "out" / "a")]
    assert run_jobs(jobs, model, RunOptions(output=SMALL, threads=1)).done == 1
    after = (
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision(),
        torch.get_num_threads(),
    )  # fmt: skip
    assert after == before


def test_an_fp32_run_inside_a_callers_autocast_writes_fp32_features(tmp_path, model):
    """run_jobs inside a notebook's ``torch.autocast`` wrote bf16-rounded features into .npy
    files whose manifest said fp32."""
    photo = _image(tmp_path / "in" / "a.png")
    options = RunOptions(output=SMALL)
    assert run_jobs([Job(photo, tmp_path / "out" / "a")], model, options).done == 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert run_jobs([Job(photo, tmp_path / "out" / "b")], model, options).done == 1
    a, b = (fpncli.load_extraction(tmp_path / "out" / name) for name in "ab")
    assert b.manifest["precision"] == "fp32"
    for name in a.levels:
        np.testing.assert_array_equal(b.levels[name], a.levels[name], err_msg=name)


def test_a_run_leaves_the_models_bottom_up_outputs_as_they_were(tmp_path, model, monkeypatch):
    """--levels res4 is the run's: the caller's model returns what it did before, after the
    run and after a Ctrl-C in it (not res4 beside P2-P6 in every later extract_features)."""
    monkeypatch.setattr(model, "keep_bottom_up", ("res2",))
    photo = _image(tmp_path / "in" / "a.png")
    options = RunOptions(output=replace(SMALL, levels=("res4", "p3")))
    assert run_jobs([Job(photo, tmp_path / "out" / "a")], model, options).done == 1
    assert fpncli.load_extraction(tmp_path / "out" / "a").levels["res4"].shape[1] == 1024
    assert model.keep_bottom_up == ("res2",)

    def interrupted(model, batch, precision, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(steps, "run_backbone", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_jobs([Job(photo, tmp_path / "out" / "b")], model, options)
    assert model.keep_bottom_up == ("res2",)
    features = fpncli.extract_features(photo, model, min_size=64, max_size=96)
    assert list(features) == ["res2", "p2", "p3", "p4", "p5", "p6"]


def test_runs_sharing_a_model_each_get_their_bottom_up_stages(tmp_path, model, monkeypatch):
    """Two threads' runs on one model, one with --levels p3,res4 and one with p2, the second
    starting while the first runs its batch: each run set the model's keep_bottom_up, so the
    first's image failed ("KeyError: 'res4'") and the model kept ('res4',) for good (every later
    extract_features returned res4 beside P2-P6)."""
    first = Job(_image(tmp_path / "in" / "a.png", size=(48, 40)), tmp_path / "out" / "a")
    second = Job(_image(tmp_path / "in" / "b.png", size=(40, 48)), tmp_path / "out" / "b")
    first_in, second_in = threading.Event(), threading.Event()
    real = steps.run_backbone

    def ordered(model, batch, precision, **kwargs):  # padded 96 wide: the first run's image
        if batch.shape[-1] == 96:
            first_in.set()
            second_in.wait(30)  # the second run has started meanwhile
        else:
            first_in.wait(30)
            second_in.set()
        return real(model, batch, precision=precision, **kwargs)

    monkeypatch.setattr(steps, "run_backbone", ordered)
    summaries = {}

    def run(job: Job, levels: tuple[str, ...]) -> None:
        options = RunOptions(output=replace(SMALL, levels=levels), workers=1)
        summaries[job.folder.name] = run_jobs([job], model, options)

    threads = [threading.Thread(target=run, args=(first, ("p3", "res4"))),
               threading.Thread(target=run, args=(second, ("p2",)))]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert [(summaries[n].done, summaries[n].failed) for n in "ab"] == [(1, [])] * 2
    assert sorted(fpncli.load_extraction(first.folder).levels) == ["p3", "res4"]
    assert list(fpncli.load_extraction(second.folder).levels) == ["p2"]
    assert model.keep_bottom_up == ()
    features = fpncli.extract_features(first.path, model, min_size=64, max_size=96)
    assert list(features) == ["p2", "p3", "p4", "p5", "p6"]


def test_images_decoded_elsewhere_get_the_bottom_up_stages_asked_for(tmp_path, model):
    """The Ray engine's actors run ``run_decoded``: --levels stem is theirs too (every image
    failed with KeyError: 'stem'), and the caller's model is left as it was."""
    photo = _image(tmp_path / "in" / "a.png")
    options = RunOptions(output=replace(SMALL, levels=("stem", "p6")))
    item = steps.decode(Job(photo, tmp_path / "out" / "a"), options, model.weights_info.input)
    summary = pipeline.run_decoded([item], model, options)
    assert (summary.done, summary.failed) == (1, [])
    assert fpncli.load_extraction(tmp_path / "out" / "a").levels["stem"].shape[1] == 64
    assert model.keep_bottom_up == ()


def test_heatmaps_computed_on_the_device_match_numpy(tmp_path, model):
    from fpncli.io.manifest import read_manifest
    from fpncli.viz.maps import reduce_channels

    path = _image(tmp_path / "in" / "a.png", size=(50, 37))
    options = replace(SMALL, save_heatmaps=True, reduce="pca", levels=("p3", "p5"))
    assert run_jobs([Job(path, tmp_path / "out")], model, RunOptions(output=options)).done == 1
    manifest = read_manifest(tmp_path / "out")
    p3 = np.load(tmp_path / "out" / "p3.npy")
    meta = manifest["levels"]["p3"]
    valid = p3[..., : meta["valid_height"], : meta["valid_width"]]
    assert (meta["min"], meta["max"]) == (float(valid.min()), float(valid.max()))
    mean = float(valid.mean(dtype=np.float64))
    assert meta["mean"] == pytest.approx(mean, rel=1e-6, abs=1e-7 * float(np.abs(valid).max()))
    assert reduce_channels(p3, "pca").shape == p3.shape[2:]
    assert (tmp_path / "out" / "p5.png").exists() and not (tmp_path / "out" / "p2.npy").exists()


def test_writer_threads_take_the_model_device(tmp_path, model, monkeypatch):
    """CUDA's current device is per thread: each writer sets the model's device, or waiting on a
    cuda:1 event would make a context on GPU 0 (tests/test_gpu.py checks that on two GPUs)."""
    import threading

    calls = []
    monkeypatch.setattr(
        runner, "bind_thread", lambda d: calls.append((threading.current_thread().name, d))
    )
    paths = [_image(tmp_path / "in" / f"{i}.png", value=i) for i in range(3)]
    jobs = [Job(p, tmp_path / "out" / p.stem) for p in paths]
    assert run_jobs(jobs, model, RunOptions(output=SMALL, writers=2)).done == 3
    names = [name for name, _ in calls]
    assert any(n.startswith("fpncli-write") for n in names)
    assert all(n.startswith(("fpncli-write", "fpncli-decode")) for n in names)
    assert {d for _, d in calls} == {torch.device("cpu")}


def test_a_bf16_folder_run_on_a_cpu_that_allows_it(tmp_path, model, monkeypatch):
    """The whole CPU pipeline in bf16, as on an AVX512-BF16/AMX CPU (where check_precision lets
    it through; this machine's answer is replaced): every image done, near the fp32 levels."""
    import fpncli.api

    monkeypatch.setattr(fpncli.api, "_cpu_has_fast_bf16", lambda: True)
    paths = [_image(tmp_path / "in" / f"{i}.png", value=i) for i in range(3)]
    for precision in ("fp32", "bf16"):
        jobs = [Job(p, tmp_path / precision / p.stem) for p in paths]
        options = RunOptions(output=replace(SMALL, save_heatmaps=True), precision=precision,
                             batch_size=2, record_latest=False)  # fmt: skip
        summary = run_jobs(jobs, model, options)
        assert (summary.done, summary.failed) == (3, []), summary.failed
    for p in paths:
        for level in ("p2", "p4", "p6"):
            ref = np.load(tmp_path / "fp32" / p.stem / f"{level}.npy")
            got = np.load(tmp_path / "bf16" / p.stem / f"{level}.npy")
            assert got.dtype == np.float32
            assert np.abs(got - ref).max() <= 5e-2 * np.abs(ref).max(), (p.stem, level)


def test_two_device_workers_share_the_list(tmp_path, model):
    from fpncli.run.multi import run_on_devices

    paths = [_image(tmp_path / "in" / f"{i}.png", value=i) for i in range(4)]
    jobs = [Job(p, tmp_path / "out" / p.stem) for p in paths]
    events = []
    summary = run_on_devices(
        jobs, model, RunOptions(output=SMALL, workers=1), ["cpu", "cpu"], weights="random",
        progress=events.append,
    )  # fmt: skip
    assert (summary.total, summary.done, summary.failed) == (4, 4, [])
    assert all(is_complete(j.folder) for j in jobs)
    assert events and events[-1].done == 4
    # the total to do is the whole list from the first report on (a worker yet to report counts
    # its shard), not one worker's half
    assert {e.todo for e in events} == {4}
    # from the first worker's start of its run to the last one's end: within the whole run's
    # time, which also counts starting the processes and loading the model twice
    assert 0 < summary.span[1] - summary.span[0] < summary.seconds
    again = run_on_devices(jobs, model, RunOptions(output=SMALL), ["cpu", "cpu"], weights="random")
    assert (again.done, again.skipped) == (0, 4)


def test_warm_workers_start_their_shards_together(tmp_path, model):
    """A benchmark's warm-up (``warmup=``): each worker runs it into folders of its own, untimed
    and uncounted, and no worker starts its shard before every worker is warm."""
    from fpncli.run.multi import run_on_devices

    paths = [_image(tmp_path / "in" / f"{i}.png", value=i) for i in range(5)]
    jobs = [Job(p, tmp_path / "out" / p.stem) for p in paths[1:]]
    warm = [Job(paths[0], tmp_path / "warm" / "w")]
    summary = run_on_devices(
        jobs, model, RunOptions(output=SMALL, workers=1), ["cpu", "cpu"], weights="random",
        warmup=warm,
    )  # fmt: skip
    assert (summary.total, summary.done, summary.failed) == (4, 4, [])
    assert all(is_complete(j.folder) for j in jobs)
    assert is_complete(tmp_path / "warm" / "w-0") and is_complete(tmp_path / "warm" / "w-1")
    assert not (tmp_path / "warm" / "w").exists()
    # the earliest start of a shard comes after the last warm-up ended
    assert summary.released is not None and summary.span[0] >= summary.released


def test_a_worker_that_fails_before_warming_up_does_not_hold_the_others(tmp_path, model):
    from fpncli.run.multi import run_on_devices

    paths = [_image(tmp_path / "in" / f"{i}.png", value=i) for i in range(3)]
    jobs = [Job(p, tmp_path / "out" / p.stem) for p in paths[1:]]
    summary = run_on_devices(
        jobs, model, RunOptions(output=SMALL, workers=1), ["cpu", "cuda:7"], weights="random",
        warmup=[Job(paths[0], tmp_path / "warm" / "w")],
    )  # fmt: skip
    assert summary.done == 1 and is_complete(tmp_path / "out" / "1")
    assert summary.aborted and "cuda:7" in summary.aborted
    assert summary.released is not None


def test_a_failed_worker_ends_the_run_with_a_merged_summary(tmp_path, model):
    from fpncli.run.multi import run_on_devices, worker_options

    paths = [_image(tmp_path / "in" / f"{i}.png", value=i) for i in range(4)]
    jobs = [Job(p, tmp_path / "out" / p.stem) for p in paths]
    summary = run_on_devices(
        jobs, model, RunOptions(output=SMALL, workers=1), ["cpu", "cuda:7"], weights="random"
    )
    assert summary.total == 4 and summary.done == 2
    assert sorted(Path(p).name for p, _ in summary.failed) == ["1.png", "3.png"]
    assert summary.aborted and "cuda:7" in summary.aborted
    assert is_complete(tmp_path / "out" / "0") and is_complete(tmp_path / "out" / "2")
    shared = worker_options(RunOptions(workers=8, writers=8), 4, cpu_count=16)
    assert (shared.threads, shared.workers, shared.writers) == (4, 4, 4)
    assert shared.memory_share == 0.25  # four CPU batches started together fit together


def test_each_worker_process_checks_its_share_of_the_free_memory(tmp_path, model, monkeypatch):
    """Two CPU workers read the same free memory before their first batches: each counts half,
    so the two batches cannot together take twice what there is."""
    from fpncli.run.hostmem import cpu_batch_bytes

    shares = []
    one = cpu_batch_bytes(1, 64, 96, "fp32")
    monkeypatch.setattr(runner, "available_bytes",
                        lambda share: shares.append(share) or int(3 * one * share))  # fmt: skip
    paths = [_image(tmp_path / "in" / f"{i}.png", value=i) for i in range(2)]
    jobs = [Job(p, tmp_path / "out" / p.stem) for p in paths]
    options = RunOptions(output=SMALL, batch_size=2, workers=1, memory_share=0.5)
    summary = run_jobs(jobs, model, options)
    assert summary.done == 2 and summary.batch_size == 1 and shares[0] == 0.5
    with pytest.raises(ValueError, match="memory_share"):
        RunOptions(memory_share=0.0)


def test_workers_killed_mid_run_end_it_with_every_image_accounted_for(tmp_path, model):
    """SIGKILL (the OOM killer) to the workers while they report: the run ends, no hang, and
    each image is complete or failed with the reason."""
    import multiprocessing
    import signal

    from fpncli.run.multi import run_on_devices

    paths = [_image(tmp_path / "in" / f"{i}.png", value=i) for i in range(16)]
    jobs = [Job(p, tmp_path / "out" / p.stem) for p in paths]
    killed = []

    def kill_all(progress):
        if not killed:
            for child in multiprocessing.active_children():
                os.kill(child.pid, signal.SIGKILL)
                killed.append(child.pid)

    summary = run_on_devices(
        jobs, model, RunOptions(output=SMALL, workers=1), ["cpu", "cpu"], weights="random",
        progress=kill_all,
    )  # fmt: skip
    assert len(killed) == 2
    for worker in ("worker 1 of 2, on cpu, died", "worker 2 of 2, on cpu, died"):
        assert f"{worker} (killed by SIGKILL)" in summary.aborted, summary.aborted
    failed = {Path(p).stem for p, _ in summary.failed}
    complete = {j.path.stem for j in jobs if is_complete(j.folder)}
    assert failed | complete == {p.stem for p in paths} and not failed & complete
    assert summary.total == 16 and len(failed) >= 1
    assert summary.done + summary.skipped == len(complete)  # each image counted once


@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")), reason="no C++ compiler")
def test_a_compiled_cpu_run_writes_what_the_eager_run_writes(tmp_path):
    """--compile on the CPU (inductor with frozen weights) gives the eager model's levels."""
    model = fpncli.load_backbone("random")  # its own: the compiled variant is cached on it
    path = _image(tmp_path / "in" / "a.png", size=(64, 48))
    for name, compile in (("eager", False), ("compiled", True)):
        options = RunOptions(output=SMALL, compile=compile, record_latest=False)
        assert run_jobs([Job(path, tmp_path / name / "a")], model, options).done == 1
    for level in ("p2", "p3", "p4", "p5", "p6"):
        eager = np.load(tmp_path / "eager" / "a" / f"{level}.npy")
        compiled = np.load(tmp_path / "compiled" / "a" / f"{level}.npy")
        np.testing.assert_allclose(compiled, eager, rtol=1e-5, atol=1e-5 * np.abs(eager).max())


def test_decoding_keeps_the_full_size_pixels_only_for_outputs_that_draw_them(tmp_path, model):
    """Heatmaps and ``.npy`` need only the resized pixels: the decoded image's own are dropped
    at once (a folder of big photos holds a window of them); the overview keeps them."""
    from fpncli.run.steps import decode

    job = Job(_image(tmp_path / "in" / "a.png", size=(120, 90)), tmp_path / "out" / "a")
    fmt = model.weights_info.input
    plain = decode(job, RunOptions(output=replace(SMALL, save_heatmaps=True)), fmt)
    assert plain.pixels.shape == (64, 85, 3) and (plain.image.width, plain.image.height) == (
        120,
        90,
    )
    with pytest.raises(ValueError, match="not kept"):
        _ = plain.image.rgb
    drawn = decode(job, RunOptions(output=replace(SMALL, save_overview=True)), fmt)
    np.testing.assert_array_equal(drawn.image.rgb, np.asarray(Image.open(job.path)))
    summary = run_jobs([job], model, RunOptions(output=replace(SMALL, save_heatmaps=True)))
    assert summary.done == 1 and summary.failed == []


def test_resizing_on_the_device_gives_the_same_outputs(tmp_path, model):
    """``resize_on_device`` (the default on CUDA): decoding threads hand over the images at their
    own size and the batch is resized on the model's device, as Pillow does; the outputs equal
    those of the threads' Pillow resize bit for bit. A much larger image (over
    DEVICE_RESIZE_MAX_RATIO times its resized pixels) is still resized by its thread."""
    from fpncli.run.steps import DEVICE_RESIZE_MAX_RATIO, decode

    sizes = [(120, 90), (121, 91), (119, 90), (400, 300), (60, 40)]  # (width, height)
    paths = [_image(tmp_path / "in" / f"{i}.png", size=s, value=i) for i, s in enumerate(sizes)]
    output = replace(SMALL, save_heatmaps=True)
    fmt = model.weights_info.input
    deferred = [decode(Job(p, tmp_path), RunOptions(output=output), fmt, resize_on_device=True)
                for p in paths]  # fmt: skip
    kept = [d.pixels.shape[:2] == (d.image.height, d.image.width) for d in deferred]
    resized = [d.prepared.resized_height * d.prepared.resized_width for d in deferred]
    big = [d.image.height * d.image.width > DEVICE_RESIZE_MAX_RATIO * n
           for d, n in zip(deferred, resized)]  # fmt: skip
    assert big == [False, False, False, True, False] and kept == [not b for b in big]
    # the kept ones are Pillow's own memory (io.pillow_view), not a copy made holding the lock
    assert [not d.pixels.flags.c_contiguous for d in deferred] == kept
    outs = {}
    for on_device in (False, True):
        out = tmp_path / f"out{on_device}"
        jobs = [Job(p, out / p.stem) for p in paths]
        options = RunOptions(output=output, batch_size=4, resize_on_device=on_device)
        summary = run_jobs(jobs, model, options)
        assert (summary.done, summary.failed) == (5, [])
        outs[on_device] = out
    for p in paths:
        for level in LEVELS:  # every level's array, then its heatmap (the arrays say why not)
            a, b = outs[False] / p.stem / f"{level}.npy", outs[True] / p.stem / f"{level}.npy"
            np.testing.assert_array_equal(np.load(a), np.load(b), err_msg=f"{p.name} {level}")
        for level in LEVELS:
            a, b = outs[False] / p.stem / f"{level}.png", outs[True] / p.stem / f"{level}.png"
            if a.read_bytes() != b.read_bytes():
                pa, pb = np.asarray(Image.open(a)), np.asarray(Image.open(b))
                where = np.argwhere(pa != pb)
                raise AssertionError(f"{p.name} {level}.png: {len(where)} pixels differ, the "
                                     f"first at {where[:3].tolist()}")  # fmt: skip


@pytest.mark.parametrize("when", ["after decoding", "while decoding"])
def test_an_input_replaced_during_the_run_is_redone_by_the_next(tmp_path, model, monkeypatch, when):
    """The run key was taken from the file when the outputs were written: an input replaced
    after it was decoded got the new file's key on the old file's features, and every resume
    skipped it for good. Now the key is the file as decoded; one that changed while it was
    read gets none."""
    paths = [_image(tmp_path / "in" / f"{i}.png", value=i) for i in range(2)]
    jobs = [Job(p, tmp_path / "out" / p.stem) for p in paths]
    real_decode, real_load = steps.decode, steps.load_image

    def replace(path):
        new = tmp_path / "new.png"
        _image(new, size=(64, 40), value=7)
        os.replace(new, path)

    def decode(job, *args, **kwargs):
        item = real_decode(job, *args, **kwargs)
        if job.path == paths[1] and when == "after decoding":
            replace(job.path)
        return item

    def load(path, **kwargs):
        image = real_load(path, **kwargs)
        if Path(path) == paths[1] and when == "while decoding":
            replace(path)
        return image

    monkeypatch.setattr("fpncli.run.runner.decode", decode)
    monkeypatch.setattr(steps, "load_image", load)
    assert run_jobs(jobs, model, RunOptions(output=SMALL, workers=1)).done == 2
    monkeypatch.setattr("fpncli.run.runner.decode", real_decode)
    monkeypatch.setattr(steps, "load_image", real_load)
    again = run_jobs(jobs, model, RunOptions(output=SMALL, workers=1))
    assert (again.done, again.skipped) == (1, 1)
    manifest = json.loads((tmp_path / "out" / "1" / "manifest.json").read_text())
    assert (manifest["input"]["width"], manifest["input"]["height"]) == (64, 40)


def test_an_interrupted_run_records_the_last_folder_it_wrote_as_the_latest(
    tmp_path, model, monkeypatch
):
    """A Ctrl-C (or SIGTERM) midway left latest.json as it was: a bare ``fpncli show`` said no
    extraction was recorded, or drew an older, unrelated one. Now the last folder the run wrote
    is the latest; one stopped before writing any leaves the record as it was."""
    from fpncli.io.latest import latest_extraction, record_latest

    older = tmp_path / "older"
    run_jobs([Job(_image(tmp_path / "in" / "z.png"), older)], model, RunOptions(output=SMALL))
    record_latest(older)
    jobs = [Job(_image(tmp_path / "in" / f"{i}.png", value=i), tmp_path / "out" / str(i))
            for i in range(4)]  # fmt: skip
    real, calls = steps.load_image, []

    def interrupt_third(path, **kwargs):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(path, **kwargs)

    monkeypatch.setattr(steps, "load_image", interrupt_third)
    options = RunOptions(output=SMALL, workers=1, batch_size=1)
    with pytest.raises(KeyboardInterrupt) as stopped:
        run_jobs(jobs, model, options)
    summary = stopped.value.summary
    assert summary.done == 2 and summary.last_folder == jobs[1].folder
    assert is_complete(jobs[1].folder)
    assert latest_extraction() == jobs[1].folder

    calls[:] = [None, None]  # interrupted on its first image: nothing written, record kept
    with pytest.raises(KeyboardInterrupt):
        run_jobs([Job(jobs[3].path, tmp_path / "other")], model, options)
    assert latest_extraction() == jobs[1].folder
