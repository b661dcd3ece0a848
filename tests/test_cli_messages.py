"""Messages that must not mislead: weights, show's targets, failed files, output folders."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from fpncli.cli import cli
from fpncli.io.messages import quote_name

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


def test_an_unknown_weights_name_is_a_usage_error_before_any_download(runner, monkeypatch):
    """``weights download|verify NAME`` with an unknown NAME was exit 1, where ``--weights
    nope`` is exit 2, and download fetched the names before it first: now exit 2, in click's
    words, before anything is downloaded or said."""
    from fpncli.weights import hub

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded")

    monkeypatch.setattr(hub, "download", no_download)
    for command, metavar in (("download", "NAMES..."), ("verify", "[NAMES]...")):
        args = ["weights", command, "random", "faster_rcnn_R_50_FPN_1x", "nope"]
        result = runner.invoke(cli, args)
        assert result.exit_code == 2, result.output
        (line,) = result.output.splitlines()
        assert line.startswith(f"Error: Invalid value for '{metavar}': unknown weights name "
                               "'nope'; known names: "), line  # fmt: skip
        assert line.endswith(f" (see 'cli weights {command} --help')"), line


def test_a_damaged_cached_file_is_not_listed_as_cached(runner, tmp_path):
    from fpncli.weights.cache import cached_path, record_sha256
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


@pytest.mark.parametrize("sidecar", [b"", b"\xff\xfe", b"not-a-digest  model.pkl\n", b"0" * 63])
def test_a_damaged_sha256_sidecar_counts_as_none_not_a_traceback(runner, sidecar, monkeypatch):
    """A sidecar without a 64-hex digest is ignored (the file is re-hashed, the digest recorded
    again); list, verify and extract --weights NAME went down on it (IndexError, UnicodeError)."""
    import importlib

    from fpncli.weights.cache import _sidecar, cached_path, recorded_sha256, sha256_file
    from fpncli.weights.registry import REGISTRY

    # the file stands for a checkpoint that loads (a strict load of a real one takes seconds;
    # a file that does not load is test_weights_verify_and_download_refuse_a_damaged_file's)
    commands = importlib.import_module("fpncli.cli.weights")  # the module, not its click group
    monkeypatch.setattr(commands, "_strict_load", lambda path, spec: None)

    path = cached_path(REGISTRY["faster_rcnn_R_50_FPN_1x"])  # no published digest
    path.write_bytes(b"x\n")
    _sidecar(path).write_bytes(sidecar)
    listing = runner.invoke(cli, ["weights", "list"])
    assert listing.exit_code == 0 and "Traceback" not in listing.output, listing.output
    assert f"cached: {path}" in listing.output and "torchvision_fasterrcnn" in listing.output
    verify = runner.invoke(cli, ["weights", "verify", "faster_rcnn_R_50_FPN_1x"])
    assert verify.exit_code == 0 and "now recorded" in verify.output, verify.output
    assert recorded_sha256(path) == sha256_file(path)


@pytest.mark.parametrize("content", [b"", b"junk, not a checkpoint\n"])
def test_weights_verify_and_download_refuse_a_damaged_file(runner, monkeypatch, content):
    """An empty or junk file put by hand where a checkpoint without a published sha256 goes:
    verify said "unrecorded sha256 ... now recorded", then "ok"; download "already cached"."""
    import urllib.request

    from fpncli.weights.cache import cached_path, recorded_sha256
    from fpncli.weights.registry import REGISTRY

    name = "faster_rcnn_R_101_FPN_3x"  # no published sha256
    path = cached_path(REGISTRY[name])
    path.write_bytes(content)
    says = "0 bytes, an empty file" if not content else "does not load as a checkpoint"
    for _ in range(2):  # nothing recorded the first time: the same the second
        verify = runner.invoke(cli, ["weights", "verify", name])
        assert verify.exit_code == 1, verify.output
        assert f"{name}: damaged " in verify.stdout and says in verify.stdout, verify.output
        error = verify.stderr.strip().splitlines()
        assert len(error) == 1 and "1 damaged" in error[0] and f"rm {path}" in error[0], error
        assert recorded_sha256(path) is None
    asked = []
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: asked.append(url))
    download = runner.invoke(cli, ["weights", "download", name])
    assert download.exit_code == 1 and "already cached" not in download.output, download.output
    assert says in download.output and f"rm {path}" in download.output and not asked
    assert path.read_bytes() == content and recorded_sha256(path) is None  # the user's to delete
    listing = runner.invoke(cli, ["weights", "list"]).output
    if not content:
        assert "damaged" in next(ln for ln in listing.splitlines() if str(path) in ln)


def test_weights_list_shows_every_entry_when_one_cannot_be_read(runner, monkeypatch):
    from fpncli.weights import cache
    from fpncli.weights.registry import REGISTRY

    unreadable = cache.cached_path(REGISTRY["faster_rcnn_R_50_FPN_3x"])
    unreadable.write_bytes(b"x")

    def sha256_file(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(cache, "sha256_file", sha256_file)
    listing = runner.invoke(cli, ["weights", "list"])
    assert listing.exit_code == 0, listing.output
    assert f"unreadable (Permission denied): {unreadable}" in listing.output
    assert "torchvision_fasterrcnn" in listing.output and "random:" in listing.output


def test_weights_verify_fails_for_a_named_checkpoint_that_is_missing(runner):
    result = runner.invoke(cli, ["weights", "verify", "faster_rcnn_R_50_FPN_1x"])
    assert result.exit_code == 1 and "not cached" in result.output
    assert "run fpncli weights download faster_rcnn_R_50_FPN_1x" in result.output
    everything = runner.invoke(cli, ["weights", "verify"])  # nothing cached, nothing wrong
    assert everything.exit_code == 0 and "not cached" in everything.output


def test_weights_verify_names_a_damaged_file_once_and_the_commands_that_fix_it(runner):
    """The line named the checkpoint twice ("X: mismatch X: sha256 ..."), and the error said
    "run 'fpncli weights download NAME' for each", which keeps the damaged file as it is."""
    import shlex

    from fpncli.weights.cache import cached_path
    from fpncli.weights.registry import REGISTRY

    name = "faster_rcnn_R_50_FPN_3x"
    damaged = cached_path(REGISTRY[name])
    damaged.write_bytes(b"half a download")
    result = runner.invoke(cli, ["weights", "verify", name, "faster_rcnn_R_101_FPN_3x", name])
    assert result.exit_code == 1  # a name given twice is checked, and removed, once
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith(f"{name}:"))
    assert line.count(name) == 1 and "does not match the published" in line, line
    assert line.startswith(f"{name}: damaged: "), line  # as weights list says it ("mismatch")
    error = result.stderr.strip().splitlines()
    assert len(error) == 1 and "NAME" not in error[0], error
    assert "1 damaged" in error[0] and "1 not cached" in error[0], error
    commands = error[0].split("download again: ", 1)[1]
    assert shlex.split(commands) == ["rm", str(damaged), "&&", "fpncli", "weights", "download",
                                     name, "faster_rcnn_R_101_FPN_3x"]  # fmt: skip


def test_a_damaged_pth_is_not_called_a_pkl(tmp_path):
    from fpncli.weights.checkpoint import read_checkpoint

    path = tmp_path / "model.pth"
    path.write_bytes(b"\x80\x02not really")
    with pytest.raises(ValueError, match=r"\.pth") as error:
        read_checkpoint(path)
    assert ".pkl checkpoint" not in str(error.value)


def test_a_failed_file_is_named_once_with_its_reason(runner, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(folder / "good.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    result = runner.invoke(cli, ["extract", str(folder), "-o", str(tmp_path / "out"), *SMALL,
                                 "--no-heatmaps", "--no-overview"])  # fmt: skip
    assert result.exit_code == 1
    line = next(ln for ln in result.stderr.splitlines() if ln.startswith("failed:"))
    assert line.count("broken.jpg") == 1, line
    assert "not an image" in line or "unreadable" in line


def test_names_that_differ_only_in_case_never_share_a_folder(tmp_path):
    from fpncli.io.jobs import plan_jobs

    root = tmp_path / "in"
    pairs = [(root / "A.PNG", root), (root / "a.jpg", root), (root / "Sub" / "x.png", root),
             (root / "sub" / "x.png", root)]  # fmt: skip
    folders = [
        str(job.folder.relative_to(tmp_path / "out")) for job in plan_jobs(pairs, tmp_path / "out")
    ]
    assert len({f.casefold() for f in folders}) == 4, folders
    assert folders[:2] == ["A_png", "a_jpg"]


def test_the_run_states_its_output_volume_before_it_starts(runner, tmp_path):
    photo = tmp_path / "p.png"
    Image.fromarray(np.zeros((300, 451, 3), np.uint8)).save(photo)
    args = ["extract", str(photo), "-o", str(tmp_path / "out"), *SMALL, "--no-heatmaps",
            "--no-overview"]  # fmt: skip
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    line = next(ln for ln in result.stderr.splitlines() if ln.startswith("output: about"))
    assert "--dtype float16" in line and "--levels p3,p4,p5,p6" in line
    # in a unit that shows the sizes: it said "about 1 MB per image (... float16: 0 MB ..."
    assert "about 533 KB per image" in line and "float16: 271 KB" in line, line
    assert result.output.index("output: about") < result.output.index("wrote ")


def test_the_volume_note_counts_only_the_images_the_run_will_do(runner, tmp_path):
    """A rerun states the output of the images left, and nothing when none is left (it said
    "for 3 images" over a finished folder); so does a shard whose images are all done."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a", "b", "c"):
        Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(folder / f"{name}.png")
    args = ["extract", str(folder), "-o", str(tmp_path / "out"), *SMALL, "--no-heatmaps",
            "--no-overview", "--workers", "1"]  # fmt: skip
    first = runner.invoke(cli, args)
    assert first.exit_code == 0 and "for 3 images" in first.stderr, first.output
    again = runner.invoke(cli, args)
    assert again.exit_code == 0 and "skipped 3" in again.stdout, again.output
    assert "output:" not in again.stderr, again.stderr
    shard = runner.invoke(cli, [*args, "--shard", "0/3"])
    assert shard.exit_code == 0 and "output:" not in shard.stderr, shard.output
    shutil.rmtree(tmp_path / "out" / "b")
    rest = runner.invoke(cli, args)
    line = next(ln for ln in rest.stderr.splitlines() if ln.startswith("output: about"))
    assert "for the 1 of 3 images left to do" in line, line
    assert rest.output.index("output: about") < rest.output.index("done 1, skipped 2")


def test_a_statistics_only_run_says_what_it_keeps_and_replaces(runner, tmp_path):
    """--no-npy --no-heatmaps --no-overview writes only manifests: the note says so, and that
    an earlier extraction's files in those folders go (it said "about 0 MB per image")."""
    photo = tmp_path / "p.png"
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(photo)
    args = ["extract", str(photo), "-o", str(tmp_path / "out"), *SMALL]
    assert runner.invoke(cli, args).exit_code == 0
    result = runner.invoke(cli, [*args, "--no-npy", "--no-heatmaps", "--no-overview"])
    assert result.exit_code == 0, result.output
    assert "output: statistics only" in result.stderr and "are replaced" in result.stderr
    assert sorted(p.name for p in (tmp_path / "out" / "p").iterdir()) == ["manifest.json"]
    overlays = runner.invoke(cli, [*args, "--no-npy", "--no-heatmaps", "--no-overview",
                                   "--overlay"])  # fmt: skip
    assert overlays.exit_code == 0, overlays.output
    assert "statistics only" not in overlays.stderr and "output: about" in overlays.stderr
    assert (tmp_path / "out" / "p" / "p2_overlay.png").is_file()


def test_dtype_float16_without_npy_says_it_only_changes_the_maps(runner, tmp_path):
    """--dtype sets the .npy files' dtype: with --no-npy it was taken silently, though the maps
    and statistics are then computed from the levels cast to float16."""
    photo = tmp_path / "p.png"
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(photo)
    note = ("note: with --no-npy, --dtype float16 only changes the maps and statistics: they "
            "are computed from the levels cast to float16")  # fmt: skip
    args = ["extract", str(photo), *SMALL, "--dtype", "float16"]
    without = runner.invoke(cli, [*args, "-o", str(tmp_path / "out"), "--no-npy"])
    assert without.exit_code == 0, without.output
    assert without.stderr.splitlines().count(note) == 1, without.stderr
    assert without.stderr.index(note) < without.stderr.index("output: about")  # before the run
    kept = runner.invoke(cli, [*args, "-o", str(tmp_path / "npy")])  # the .npy in float16
    assert kept.exit_code == 0, kept.output
    assert "--no-npy" not in kept.stderr and (tmp_path / "npy" / "p" / "p2.npy").is_file()
    # no maps drawn (--no-heatmaps --no-overview): only the statistics
    bare = runner.invoke(
        cli, [*args, "-o", str(tmp_path / "bare"), "--no-npy", "--no-heatmaps", "--no-overview"]
    )
    assert bare.exit_code == 0, bare.output
    assert (
        bare.stderr.splitlines().count(
            "note: with --no-npy, --dtype float16 only changes the statistics: they are computed "
            "from the levels cast to float16"
        )
        == 1
    ), bare.stderr


def _one_line_error(result) -> str:
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit), result.exception
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


@pytest.mark.parametrize(
    "args, stray, example",
    [
        (["--levels", "p2", "p3"], "p3", "--levels p2,p3"),
        (["P4"], "P4", "--levels p4"),
        (["--levels", "res5", "stem,res4"], "stem,res4", "--levels res5,stem,res4"),
    ],
)
def test_a_missing_input_that_reads_as_levels_says_levels_is_one_list(runner, tmp_path, args,
                                                                      stray, example):  # fmt: skip
    """``--levels p2 p3`` made p3 an input: "no such file or folder: p3" and nothing more."""
    photo = tmp_path / "p.png"
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(photo)
    out = tmp_path / "out"
    result = runner.invoke(cli, ["extract", str(photo), "-o", str(out), *SMALL, *args])
    line = _one_line_error(result)
    assert result.exit_code == 1 and f"no such file or folder: {stray} (" in line, line
    assert "comma-separated" in line and line.endswith(f"e.g. {example})"), line
    assert not out.exists()
    typo = runner.invoke(cli, ["extract", str(tmp_path / "p3.png"), *SMALL])
    assert _one_line_error(typo).endswith("no such file or folder: " + str(tmp_path / "p3.png"))


def test_a_file_named_inside_the_output_folder_is_named_in_the_note_and_error(runner, tmp_path):
    """``-o samples samples/chelsea.png`` said "skipped samples" and "no images found in the
    given inputs outside the output folder": naming a folder when a file was given."""
    folder = tmp_path / "samples"
    folder.mkdir()
    photo = folder / "chelsea.png"
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(photo)
    result = runner.invoke(cli, ["extract", "-o", str(folder), str(photo), *SMALL])
    assert result.exit_code == 1, result.output
    note, error = result.stderr.strip().splitlines()
    assert note.endswith(f"skipped {photo} (in the output folder {os.path.relpath(folder)})")
    assert error == (f"Error: {photo} lies in the output folder {folder}, and outputs are never "
                     "read back as inputs: give another -o")  # fmt: skip
    assert sorted(p.name for p in folder.iterdir()) == ["chelsea.png"]
    whole = runner.invoke(cli, ["extract", "-o", str(folder), str(folder), *SMALL])
    assert whole.exit_code == 1 and "no images found in the given inputs outside" in whole.output


def test_weights_that_are_a_folder_fifo_or_device_are_named_as_such(runner, tmp_path):
    import os

    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(image)
    fifo = tmp_path / "fifo.pkl"
    os.mkfifo(fifo)
    for weights, kind in ((tmp_path, "a folder"), (fifo, "a FIFO"), ("/dev/zero", "a character")):
        result = runner.invoke(cli, ["extract", str(image), "-o", str(tmp_path / "out"),
                                     "--weights", str(weights)])  # fmt: skip
        line = _one_line_error(result)
        assert f"not a regular file ({kind}" in line and "not found" not in line, line


def test_a_malformed_weights_file_is_one_line_not_a_traceback(runner, tmp_path):
    import pickle

    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(image)
    inp = {"color_order": "BGR", "pixel_mean": [1, 2, 3], "pixel_std": [1, 1, 1]}
    cases = {
        "bogus.pkl": ({"fpncli_format": 1, "model": {}, "input": inp,
                       "arch": {"depth": 50, "bogus": 1}}, "unknown architecture key 'bogus'"),
        "list.pkl": ({"fpncli_format": 1, "model": [1], "input": inp, "arch": {"depth": 50}},
                     "'model' entry is a list"),
        "ints.pkl": ({"model": {1: 2}}, "non-string keys"),
        "alone.pkl": ({"fpncli_format": 1}, "needs 'model', 'arch' and 'input' entries"),
        "wide.pkl": ({"fpncli_format": 1, "model": {}, "input": inp,
                      "arch": {"depth": 50, "width_per_group": 512}}, "1x512"),
    }  # fmt: skip
    for name, (obj, message) in cases.items():
        (tmp_path / name).write_bytes(pickle.dumps(obj))
        result = runner.invoke(cli, ["extract", str(image), "-o", str(tmp_path / "out"),
                                     "--weights", str(tmp_path / name)])  # fmt: skip
        line = _one_line_error(result)
        assert name in line and message in line, line


def test_a_negative_batchnorm_variance_is_one_line_not_nan_features(runner, tmp_path):
    from fpncli.weights.synthetic import seeded_state_dict, write_detectron2_pkl

    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((64, 96, 3), np.uint8)).save(image)
    state = seeded_state_dict()
    state["bottom_up.stem.conv1.norm.running_var"].fill_(-1.0)
    weights = tmp_path / "w.pkl"
    write_detectron2_pkl(weights, state)
    args = ["extract", str(image), "-o", str(tmp_path / "out"), "--weights", str(weights)]
    result = runner.invoke(cli, [*args, "--min-size", "64", "--max-size", "96"])
    line = _one_line_error(result)
    assert "w.pkl: bottom_up.stem.conv1.norm.running_var holds negative values" in line, line
    assert not (tmp_path / "out").exists()


def test_show_takes_max_pixels_as_its_refusal_says(runner, tmp_path):
    """show's refusal of a large image says to raise --max-pixels: show has that option too
    (for an image TARGET and for --receptive-field), as extract has."""
    image = tmp_path / "photo.png"
    Image.new("RGB", (120, 90)).save(image)
    saved = tmp_path / "p6.png"
    for extra in ([], ["--receptive-field", "--at", "10,10"]):
        args = ["show", str(image), "--weights", "random", *extra]
        refused = runner.invoke(cli, [*args, "--max-pixels", "1000", "--save", str(saved)])
        assert refused.exit_code == 1, refused.output
        lines = refused.output.strip().splitlines()
        assert len(lines) == 1 and "over the 1,000 pixels limit" in lines[0], refused.output
        assert "--max-pixels" in lines[0] and not saved.exists()
    shown = runner.invoke(
        cli,
        [
            "show",
            str(image),
            "--weights",
            "random",
            "--level",
            "p6",
            "--max-pixels",
            "20000",
            "--save",
            str(saved),
        ],  # fmt: skip
    )
    assert shown.exit_code == 0, shown.output
    assert saved.is_file()


def test_show_save_and_bench_json_never_write_over_an_extractions_files(tmp_path, monkeypatch):
    """--save p2.npy (or manifest.json, run.json) would have replaced the extraction's own
    file with a PNG; a photo's name (.jpg) would have been overwritten with PNG bytes."""
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save("a.png")
    small = ["--weights", "random", "--min-size", "32", "--max-size", "64"]
    runner = CliRunner()
    assert runner.invoke(cli, ["extract", "a.png", "-o", "out", *small]).exit_code == 0
    before = {p: p.read_bytes() for p in Path("out").rglob("*") if p.is_file()}
    for target in ("out/a/p2.npy", "out/a/manifest.json", "out/a/P3.PNG", "out/run.json"):
        result = runner.invoke(cli, ["show", "out/a", "--save", target])
        assert result.exit_code == 2 and "writing there would damage it" in result.output
    bench = runner.invoke(cli, ["bench", "--json", "out/a/manifest.json"])
    assert bench.exit_code == 2 and "a file of the extraction" in bench.output
    photo = runner.invoke(cli, ["show", "out/a", "--save", "a.jpg"])
    assert photo.exit_code == 2 and "name it .png" in photo.output
    assert {p: p.read_bytes() for p in Path("out").rglob("*") if p.is_file()} == before
    assert runner.invoke(cli, ["show", "out/a", "--save", "out/a/mine.png"]).exit_code == 0


def test_show_save_and_bench_json_replace_only_what_they_wrote(tmp_path, monkeypatch):
    """show --save loose.npy (a user's own array) was overwritten with a PNG, exit 0, and so was
    --save chelsea.png, the very photo drawn; bench --json samples/chelsea.png replaced the
    photo with JSON. --save now takes a FILE.png that is new or a picture show drew, --json a
    new file or an earlier bench's JSON, not named as a picture or a .npy: else one line, exit 2,
    and the file is left as it was."""
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save("a.png")
    np.save("loose.npy", np.arange(3.0))
    Path("notes").write_text("mine\n")
    small = ["--weights", "random", "--min-size", "32", "--max-size", "64"]
    runner = CliRunner()
    assert runner.invoke(cli, ["extract", "a.png", "-o", "out", *small]).exit_code == 0
    mine = {p: p.read_bytes() for p in map(Path, ("a.png", "loose.npy", "notes"))}
    show = ["show", "out/a", "--level", "p6", "--save"]
    bench = ["bench", "--sizes", "64x64", "--model-only", "--weights", "random", "--seconds",
             "0", "--iters", "1", "--warmup", "0", "--device", "cpu", "--json"]  # fmt: skip
    refusals = {
        (*show, "loose.npy"): "loose.npy: the picture is a PNG; name it .png",
        (*show, "notes"): "notes: the picture is a PNG; name it .png",
        (*show, "a.png"): "a.png is a file fpncli show did not draw: writing there would replace "
        "it; give another name (or remove it first)",
        (*bench, "a.png"): "a.png: the rows are JSON; name it .json",
        (*bench, "loose.npy"): "loose.npy: the rows are JSON; name it .json",
        (*bench, "notes"): "notes is a file fpncli bench did not write: writing there would "
        "replace it; give another name (or remove it first)",
    }
    for args, message in refusals.items():
        result = runner.invoke(cli, list(args))
        assert result.exit_code == 2, result.output
        assert result.output.splitlines()[-1].startswith(
            f"Error: Invalid value for '{args[-2]}': {message} (see"
        )
    assert {p: p.read_bytes() for p in mine} == mine
    # what they wrote themselves is replaced: a picture show drew, an earlier bench's rows
    for _ in range(2):
        drawn = runner.invoke(cli, ["show", "out/a", "--level", "p6", "--save", "p6.png"])
        assert drawn.exit_code == 0, drawn.output
        measured = runner.invoke(cli, [*bench, "rows.json"])
        assert measured.exit_code == 0, measured.output
    assert json.loads(Path("rows.json").read_text())["rows"]


@pytest.mark.parametrize("out_format", ["files", "wds"])
def test_extract_refuses_an_output_folder_of_photos(tmp_path, monkeypatch, out_format):
    """extract rocket.jpg -o myphotos marked the user's folder of photos as fpncli output
    (.fpncli-output): a later extract myphotos skipped it, and show refused its photos as
    outputs. A folder that is no fpncli output yet and holds photos at its top is refused (one
    line, exit 2, naming a photo), as diff's -o refuses a folder of yours; a new or empty folder,
    one holding no photo at its top (other files, a subfolder's photos, a hidden one, a picture
    show drew), and an earlier output are taken."""
    from fpncli.io.markers import SHOW_PICTURE_TEXT
    from fpncli.viz.png import encode_png

    if out_format == "wds":
        pytest.importorskip("pyarrow.parquet", reason="--format wds needs pyarrow (fpncli[wds])")
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save("rocket.jpg")
    Path("myphotos").mkdir()
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save("myphotos/chelsea.png")
    args = ["extract", "rocket.jpg", *SMALL, "--format", out_format, "-o"]
    result = CliRunner().invoke(cli, [*args, "myphotos"])
    assert result.exit_code == 2, result.output
    assert result.output.splitlines()[-1].startswith(
        "Error: the output folder myphotos holds photos (chelsea.png) and is no fpncli output: "
        "marked as one, its photos would be skipped by later runs; give a new or empty output "
        "folder (-o), or move the photos out"
    )
    assert os.listdir("myphotos") == ["chelsea.png"]
    kept = {"empty": [], "notes": ["notes.txt", ".hidden.png", "sub/deeper.png"]}
    for folder, names in kept.items():
        Path(folder).mkdir()
        for name in names:
            Path(folder, name).parent.mkdir(exist_ok=True)
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(Path(folder, name), "png")
        if names:  # a picture show drew
            picture = encode_png(np.zeros((8, 8, 3), np.uint8), text=SHOW_PICTURE_TEXT)
            Path(folder, "fpn_show_a_p2.png").write_bytes(picture)
        for _ in range(2):  # the second: into an earlier output
            done = CliRunner().invoke(cli, [*args, folder])
            assert done.exit_code == 0, done.output
        assert (Path(folder) / ".fpncli-output").is_file()
    again = CliRunner().invoke(cli, ["extract", "myphotos", *SMALL, "-o", "new"])
    assert again.exit_code == 0, again.output  # the photos still read as such


def test_a_tilde_in_an_output_folder_or_a_list_is_the_home_folder(tmp_path, monkeypatch):
    """README: a ~ in a quoted folder is the home folder; extract's and diff's -o '~/feats'
    made ./~/feats, report '~/feats' wrote its page into ./~/feats, and --from-list '~/l.txt'
    and diff's '~/feats' (A, B) were not found."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(), work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save("a.png")
    (home / "l.txt").write_text(f"{work / 'a.png'}\n")
    runner = CliRunner()
    for args in (["a.png", "-o", "~/feats"], ["--from-list", "~/l.txt", "-o", "~/listed"]):
        result = runner.invoke(cli, ["extract", *args, *SMALL])
        assert result.exit_code == 0, result.output
    assert (home / "feats" / "a" / "manifest.json").is_file()
    assert (home / "listed" / "a" / "manifest.json").is_file()
    compared = runner.invoke(cli, ["diff", "~/feats", "~/listed", "-o", "~/d"])
    assert compared.exit_code == 0, compared.output
    assert (home / "d" / "diff.csv").is_file()
    reported = runner.invoke(cli, ["report", "~/feats"])
    assert reported.exit_code == 0, reported.output
    assert (home / "feats" / "report.html").is_file()
    assert sorted(os.listdir(work)) == ["a.png"]  # no folder called ~


@pytest.mark.parametrize("command", ["extract", "diff"])
def test_an_empty_output_folder_is_refused(tmp_path, monkeypatch, command):
    """-o "" (an unset shell variable) made the current folder an output folder for good."""
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save("a.png")
    args = (
        ["extract", "a.png", "--weights", "random"] if command == "extract" else ["diff", ".", "."]
    )
    result = CliRunner().invoke(cli, [*args, "-o", ""])
    assert result.exit_code == 2 and "an empty output folder" in result.output
    assert sorted(os.listdir(tmp_path)) == ["a.png"]


@pytest.mark.parametrize(
    "args, name, what",
    [
        (["show", ""], "'[TARGET]'",
         "a folder, .npy or image, or leave TARGET out for the latest extraction"),
        (["show", " "], "'[TARGET]'",
         "a folder, .npy or image, or leave TARGET out for the latest extraction"),
        (["report", ""], "'[OUT]'", "a folder, or . for this one"),
        (["diff", "", "out"], "'A'", "an extraction folder (or URL), or . for this one"),
        (["diff", "out", ""], "'B'", "an extraction folder (or URL), or . for this one"),
    ],
)  # fmt: skip
def test_an_empty_path_argument_is_refused_as_empty(tmp_path, monkeypatch, args, name, what):
    """show "", report "" and diff "" B (an unset shell variable) took "" as the current folder,
    where extract refuses an empty input and -o "": the same usage error, nothing written."""
    monkeypatch.chdir(tmp_path)
    extracted = CliRunner().invoke(cli, ["extract", "", "--weights", "random"])
    assert extracted.exit_code == 1 and "an empty input path (an unset shell" in extracted.output
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert result.output.splitlines() == [
        f"Error: Invalid value for {name}: an empty path (an unset shell variable?): name "
        f"{what} (see 'cli {args[0]} --help')"
    ]
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("command", [["extract", "a.png"], ["show", "a.png"], ["bench"]])
def test_an_empty_weights_value_is_refused_as_empty(tmp_path, monkeypatch, command):
    """--weights "" (an unset shell variable) said "'.': not a regular file (a folder)"."""
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save("a.png")
    result = CliRunner().invoke(cli, [*command, "--weights", ""])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--weights': an empty value (an unset shell variable?)" in (
        result.output
    )
    assert "folder" not in result.output and sorted(os.listdir(tmp_path)) == ["a.png"]


def test_from_list_skips_a_bom_and_names_the_line_of_a_nul_byte(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save("a.png")
    Path("bom.txt").write_bytes(b"\xef\xbb\xbfa.png\n")
    Path("bin.txt").write_bytes(b"a.png\n\x00\x01bin\n")
    small = ["--weights", "random", "--min-size", "32", "--max-size", "64", "-o", "out"]
    bom = CliRunner().invoke(cli, ["extract", "--from-list", "bom.txt", *small])
    assert bom.exit_code == 0 and Path("out/a/manifest.json").is_file(), bom.output
    binary = CliRunner().invoke(cli, ["extract", "--from-list", "bin.txt", *small])
    assert binary.exit_code == 1 and "bin.txt, line 2: a NUL byte" in binary.output


LISTED_NAMES = "a.png\r\nb.png\r\n"


@pytest.mark.parametrize(
    "listed",
    [*(LISTED_NAMES.encode(codec) for codec in ("utf-16", "utf-16-le", "utf-16-be")),
     b"\xfe\xff" + LISTED_NAMES.encode("utf-16-be"), b"\xff\xfe", b"\xff\xfe\n\x00"],
)  # fmt: skip
def test_a_utf16_list_is_refused_saying_it_is_utf16(tmp_path, monkeypatch, listed):
    """A --from-list saved as UTF-16 (Windows Notepad, PowerShell's >) was refused for "a NUL
    byte, in no file name (binary?)": now the line says it looks like UTF-16 and must be UTF-8,
    with a BOM (also a BOM alone, or before a blank line) or without one (the NUL pattern)."""
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save("a.png")
    Path("list.txt").write_bytes(listed)
    result = CliRunner().invoke(cli, ["extract", "--from-list", "list.txt", "-o", "out", *SMALL])
    assert result.exit_code == 1 and result.output == (
        "Error: list.txt looks like UTF-16 text (as Windows Notepad or PowerShell's > may write "
        "it): the list must be UTF-8; save it as UTF-8 (PowerShell: | Out-File -Encoding utf8)\n"
    )
    assert sorted(os.listdir(tmp_path)) == ["a.png", "list.txt"]


def test_a_name_too_long_fails_alone_when_listed_and_in_one_line_when_given(tmp_path, monkeypatch):
    """A listed name over 255 bytes stopped the whole run ("[Errno 36] File name too long", nothing
    extracted): Path.is_dir raises ENAMETOOLONG, met while looking for output markers."""
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save("a.png")
    long = "y" * 300 + ".jpg"
    Path("list.txt").write_text(f"a.png\n{long}\n")
    small = ["--weights", "random", "--min-size", "32", "--max-size", "64", "--no-overview"]
    listed = CliRunner().invoke(cli, ["extract", "--from-list", "list.txt", "-o", "out", *small])
    assert listed.exit_code == 1 and Path("out/a/manifest.json").is_file(), listed.output
    assert f"failed: {long}: unreadable image (File name too long)\n" in listed.output
    given = CliRunner().invoke(cli, ["extract", "a.png", long, "-o", "out2", *small])
    assert given.exit_code == 1 and not Path("out2").exists()
    assert given.output == (
        f"Error: cannot use the input {long[:80]}\u2026 (304 characters): File name too long\n"
    )


def test_from_list_given_twice_is_refused_not_the_first_list_dropped(tmp_path, monkeypatch):
    """Click keeps the last of an option given twice: ``--from-list la.txt --from-list lb.txt``
    extracted lb's images alone, exit 0. A run takes one list: a usage error, nothing made."""
    monkeypatch.chdir(tmp_path)
    for name in "ab":
        Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(f"{name}.png")
        Path(f"l{name}.txt").write_text(f"{name}.png\n")
    args = ["extract", "-o", "out", "--from-list", "la.txt", "--from-list", "lb.txt", *SMALL]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert result.output.splitlines() == [
        "Error: Invalid value for '--from-list': given 2 times, and a run takes one list: join "
        "them into one (cat a.txt b.txt | fpncli extract --from-list - ...), or run once per "
        "list (see 'cli extract --help')"
    ]
    assert not Path("out").exists()


def test_a_listed_hash_name_that_is_a_file_is_a_comment_with_a_note(tmp_path, monkeypatch):
    """``ls > list.txt`` lists ``#1.png`` as a line starting with ``#``: it was dropped as a
    comment without a word. It is still a comment, and one note (for the list, counting such
    lines) says how to write it; written ``./#1.png``, it is extracted."""
    monkeypatch.chdir(tmp_path)
    for name in ["#1.png", "2.png", "#3.png"]:
        Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(name)
    Path("list.txt").write_text("#1.png\n2.png\n#3.png\n# #2.png, a comment\n#\n")
    small = [*SMALL, "--no-overview", "--no-heatmaps"]
    result = CliRunner().invoke(cli, ["extract", "--from-list", "list.txt", "-o", "out", *small])
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if "comment" in line]
    assert notes == [
        "note: list.txt, line 1: #1.png is a comment, but a file of that name exists (2 such # "
        "lines in all): write it as ./#1.png to extract it"
    ]
    assert sorted(os.listdir("out")) == sorted(["2", "run.json", ".fpncli-output",
                                                ".fpncli-files.run"])  # fmt: skip
    Path("fixed.txt").write_text("./#1.png\n2.png\n")
    fixed = CliRunner().invoke(cli, ["extract", "--from-list", "fixed.txt", "-o", "out", *small])
    assert fixed.exit_code == 0 and "comment" not in fixed.output, fixed.output
    assert "done 1, skipped 1 (already complete)" in fixed.output
    assert Path("out/#1/manifest.json").is_file()


def test_a_missing_listed_file_does_not_move_the_others_folders(tmp_path, monkeypatch):
    """A list's outputs mirror the common folder of its entries, and that counted the missing
    ones: a typo ``q/a.png`` put ``L/p/q/a.png`` into ``out/L/p/q/a``, and once the typo was
    fixed the rerun wrote everything again into ``out/a``. The root is now that of the files
    that exist; the missing one is still reported, in the summary and the run log."""
    monkeypatch.chdir(tmp_path)
    for name in "ab":
        Path("L/p/q").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(f"L/p/q/{name}.png")
    Path("list.txt").write_text("L/p/q/a.png\nq/a.png\nL/p/q/b.png\n")
    small = ["-o", "out", *SMALL, "--no-overview", "--no-heatmaps"]
    typo = CliRunner().invoke(cli, ["extract", "--from-list", "list.txt", *small])
    assert typo.exit_code == 1, typo.output
    assert "failed: q/a.png: no such image file\n" in typo.output
    assert Path("out/a/manifest.json").is_file() and Path("out/b/manifest.json").is_file()
    assert not Path("out/L").exists()
    failed = json.loads(Path("out/run.json").read_text())["failed"]
    assert failed == [{"path": "q/a.png", "reason": "no such image file: q/a.png"}]
    Path("list.txt").write_text("L/p/q/a.png\nL/p/q/b.png\n")
    fixed = CliRunner().invoke(cli, ["extract", "--from-list", "list.txt", *small])
    assert fixed.exit_code == 0 and "done 0, skipped 2 (already complete)" in fixed.output


def test_a_listed_folder_or_fifo_does_not_move_the_others_folders(tmp_path, monkeypatch):
    """The common folder of a list counted every entry that exists: a listed folder or FIFO,
    which fails as no regular file, put ``imgs/a.png`` into ``out/imgs/a``, and once the list
    was fixed the rerun wrote ``out/a`` beside it (a report then counted two). Only entries
    that are regular files count; a symlink to one counts where the link lies."""
    monkeypatch.chdir(tmp_path)
    for folder in ("imgs", "imgs2/sub", "pipes", "links"):
        Path(folder).mkdir(parents=True)
    for name in "ab":
        Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(f"imgs/{name}.png")
    os.mkfifo("pipes/p.png")
    os.symlink("../imgs/b.png", "links/b.png")
    small = [*SMALL, "--no-overview", "--no-heatmaps"]
    for other, reason in (("imgs2/sub", "a folder"), ("pipes/p.png", "a FIFO")):
        out = f"out_{other.split('/')[0]}"
        Path("list.txt").write_text(f"imgs/a.png\n{other}\n")
        args = ["extract", "--from-list", "list.txt", "-o", out, *small]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1, result.output
        assert f"failed: {other}: not a regular file ({reason})\n" in result.output
        assert Path(out, "a", "manifest.json").is_file() and not Path(out, "imgs").exists()
        Path("list.txt").write_text("imgs/a.png\n")  # fixed: the same folder, complete
        fixed = CliRunner().invoke(cli, args)
        assert fixed.exit_code == 0 and f"{out}/a is already complete" in fixed.output
        assert sorted(os.listdir(out)) == [".fpncli-files.run", ".fpncli-output", "a",
                                           "run.json"]  # fmt: skip
    Path("list.txt").write_text("imgs/a.png\nlinks/b.png\n")
    linked = CliRunner().invoke(cli, ["extract", "--from-list", "list.txt", "-o", "out_links",
                                      *small])  # fmt: skip
    assert linked.exit_code == 0, linked.output
    assert Path("out_links/imgs/a/manifest.json").is_file()
    assert Path("out_links/links/b/manifest.json").is_file()


def test_show_of_an_empty_image_file_names_the_file_not_a_file_object(tmp_path):
    (tmp_path / "zero.png").write_bytes(b"")
    result = CliRunner().invoke(cli, ["show", str(tmp_path / "zero.png"), "--weights", "random"])
    assert result.exit_code == 1 and "zero.png: empty file (0 bytes)\n" in result.output
    assert "BufferedReader" not in result.output


def test_receptive_field_with_key_says_the_combination_is_not_supported(tmp_path):
    args = ["show", str(tmp_path), "--key", "a", "--receptive-field", "--at", "1,1"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and "not --key of a shard" in result.output


def test_sizes_are_said_in_the_unit_that_shows_them():
    from fpncli.cli.extract_report import _size

    assert [_size(n) for n in (0, 830, 4_210, 533_000, 83_000_000, 8_300_000_000)] == [
        "0 bytes", "830 bytes", "4.2 KB", "533 KB", "83 MB", "8.3 GB",
    ]  # fmt: skip


def test_an_image_too_large_for_the_cpu_memory_fails_with_one_line(runner, tmp_path,
                                                                  monkeypatch):  # fmt: skip
    """It was run, and Linux's OOM killer ended the process: no message, no run.json."""
    monkeypatch.setattr("fpncli.run.runner.available_bytes", lambda share: 3_000_000)
    photo = tmp_path / "p.png"
    Image.fromarray(np.zeros((300, 400, 3), np.uint8)).save(photo)
    args = ["extract", str(photo), "-o", str(tmp_path / "out"), "--weights", "random",
            "--no-resize"]  # fmt: skip
    result = runner.invoke(cli, args)
    assert result.exit_code == 1, result.output
    failed = [ln for ln in result.stderr.splitlines() if ln.startswith("failed:")]
    assert failed == [
        f"failed: {photo}: needs about 80 MB of memory on the CPU for its 416x320 model input, "
        "but 3 MB is available: drop --no-resize"
    ], result.stderr
    assert (tmp_path / "out" / "run.json").is_file()
    result = runner.invoke(cli, [*args[:-1], "--min-size", "300", "--max-size", "400"])
    assert result.exit_code == 1, result.output
    assert "for its 416x320 model input, but 3 MB is available: lower --max-size/--min-size\n" in (
        result.stderr
    )


def _fail_loading_the_model(monkeypatch, error: BaseException) -> None:
    import fpncli.api

    def load_backbone(*args, **kwargs):
        raise error

    monkeypatch.setattr(fpncli.api, "load_backbone", load_backbone)


def test_memory_running_out_is_one_line_saying_what_to_do(runner, tmp_path, monkeypatch):
    """A MemoryError (numpy's, building the model under ``ulimit -v``) is one line saying what
    ran out and what to do, exit 1, no output folder left; it was a traceback."""
    try:
        np.empty(2**62, np.uint8)  # numpy's own _ArrayMemoryError, nothing allocated
    except MemoryError as e:
        error = e
    _fail_loading_the_model(monkeypatch, error)
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(image)
    out = tmp_path / "out"
    result = runner.invoke(cli, ["extract", str(image), "-o", str(out), *SMALL])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and not out.exists()
    (line,) = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert line.startswith("Error: out of memory (Unable to allocate "), line
    assert line.endswith(": raise the memory limit (ulimit -v, or the job's memory request), "
                         "or lower --max-size/--batch-size"), line  # fmt: skip


@pytest.mark.parametrize(
    "reason, said",
    [("libxcb-shape.so.0: failed to map segment from shared object",
      "Error: out of memory loading the module cv2 (libxcb-shape.so.0: failed to map segment "
      "from shared object): raise the memory limit (ulimit -v, or the job's memory request)"),
     ("libGL.so.1: cannot open shared object file: No such file or directory",
      "Error: could not import the module cv2 (libGL.so.1: cannot open shared object file: No "
      "such file or directory): reinstall it, or fpncli's dependencies")],
    ids=["no-memory", "broken-install"],
)  # fmt: skip
def test_a_dependency_that_fails_to_import_is_one_line(runner, tmp_path, monkeypatch, reason,
                                                       said):  # fmt: skip
    """A lazily imported module that fails to load (cv2 at about 1 GB of ``ulimit -v``: its
    libraries cannot be mapped) is one line naming it, exit 1; it was a traceback."""
    _fail_loading_the_model(monkeypatch, ImportError(reason, name="cv2"))
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(image)
    result = runner.invoke(cli, ["extract", str(image), "-o", str(tmp_path / "out"), *SMALL])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.output.splitlines()[-1] == said


def test_a_file_name_that_is_not_utf8_is_printed_alike_by_extract_show_and_report(
    runner, tmp_path, monkeypatch
):
    """b'caf\\xe9.png': extract printed its folder as "caf\\udce9" (quote_name), show its
    picture with the raw byte (U+FFFD on a UTF-8 terminal), report its page likewise: now all
    three print the escaped, quoted form."""
    monkeypatch.chdir(tmp_path)
    name = os.fsdecode(b"caf\xe9")
    Image.fromarray(np.full((40, 60, 3), 90, np.uint8)).save(f"{name}.png")
    out = os.fsdecode(b"out\xe9")
    extracted = runner.invoke(cli, ["extract", f"{name}.png", "-o", out, *SMALL],
                              catch_exceptions=False)  # fmt: skip
    shown = runner.invoke(cli, ["show", f"{name}.png", "--level", "p4", "--weights", "random"],
                          catch_exceptions=False)  # fmt: skip
    reported = runner.invoke(cli, ["report", out], catch_exceptions=False)
    for result in (extracted, shown, reported):
        assert result.exit_code == 0, result.output
        assert "\ufffd" not in result.output and "\\udce9" in result.output, result.output
    assert '\nwrote "out\\udce9/caf\\udce9"\n' in extracted.output
    assert '\nsaved "fpn_show_caf\\udce9_p4.png"\n' in shown.output
    assert reported.output.startswith('wrote "out\\udce9/report.html"\n')


def test_shows_notes_quote_a_file_name_that_is_not_utf8(runner, tmp_path, monkeypatch):
    """show's lines that name a folder or file (the --scale range's root, the level shown in
    place of p2, a .npy of unknown level, the latest extraction gone) printed the name as it
    is: its byte that is not UTF-8 crashed click's output ("surrogates not allowed", exit 1)
    and was U+FFFD on a terminal. Now each is quoted as show's "saved" line is (quote_name)."""
    from fpncli.io.latest import record_latest

    monkeypatch.chdir(tmp_path)
    name, out = os.fsdecode(b"caf\xe9"), os.fsdecode(b"out\xe9")
    Image.fromarray(np.full((64, 96, 3), 90, np.uint8)).save(f"{name}.png")
    args = ["extract", f"{name}.png", "-o", out, "--levels", "p3,p4", *SMALL]
    assert runner.invoke(cli, args, catch_exceptions=False).exit_code == 0
    folder, quoted = f"{out}/{name}", '"out\\udce9/caf\\udce9"'
    scaled = runner.invoke(cli, ["show", folder, "--scale", "level"], catch_exceptions=False)
    assert scaled.exit_code == 0, scaled.output
    assert f"note: {quoted} has no p2: showing p3," in scaled.output
    root = quote_name(str(tmp_path / out))
    assert f"colour scale level: ranges from the 1 image(s) under {root}\n" in scaled.output
    np.save(f"{name}.npy", np.ones((1, 2, 4, 6), np.float32))
    loose = runner.invoke(cli, ["show", f"{name}.npy"], catch_exceptions=False)
    assert loose.exit_code == 0, loose.output
    assert 'note: the level of "caf\\udce9.npy" is unknown' in loose.output
    gone = Path(out) / os.fsdecode(b"gone\xe9")  # recorded after it, then deleted
    shutil.copytree(folder, gone)
    record_latest(gone.absolute())
    shutil.rmtree(gone)
    latest = runner.invoke(cli, ["show", "--level", "p4"], catch_exceptions=False)
    assert latest.exit_code == 0, latest.output
    was, now = quote_name(str(gone.absolute())), quote_name(os.path.abspath(folder))
    said = f"note: the latest extraction {was} is gone; showing {now}, the newest one that still"
    assert said in latest.output
    for result in (scaled, loose, latest):
        assert "\ufffd" not in result.output and "surrogates" not in result.output


def test_the_receptive_field_saved_line_quotes_a_name_that_is_not_utf8(
    runner, tmp_path, monkeypatch
):
    """show --receptive-field's "saved" line names its picture quoted (quote_name), as show's
    own: a byte that is not UTF-8 as \\udcNN, for a photo's picture in the current folder and
    for an extraction folder's."""
    monkeypatch.chdir(tmp_path)
    name, out = os.fsdecode(b"caf\xe9"), os.fsdecode(b"out\xe9")
    Image.fromarray(np.full((64, 96, 3), 90, np.uint8)).save(f"{name}.png")
    field = ["--receptive-field", "--at", "3,4", "--level", "p6"]
    photo = runner.invoke(cli, ["show", f"{name}.png", *field, "--weights", "random"],
                          catch_exceptions=False)  # fmt: skip
    assert photo.exit_code == 0, photo.output
    assert photo.output.endswith('\nsaved "fpn_show_caf\\udce9_p6_rf_at3,4.png"\n')
    assert (tmp_path / f"fpn_show_{name}_p6_rf_at3,4.png").is_file()
    args = ["extract", f"{name}.png", "-o", out, "--levels", "p6", *SMALL]
    assert runner.invoke(cli, args, catch_exceptions=False).exit_code == 0
    extraction = runner.invoke(cli, ["show", f"{out}/{name}", *field], catch_exceptions=False)
    assert extraction.exit_code == 0, extraction.output
    said = '\nsaved "out\\udce9/caf\\udce9/show_p6_rf_at3,4.png"\n'
    assert extraction.output.endswith(said)


@pytest.mark.parametrize("out_format", ["files", "wds"])
def test_an_extract_output_folder_that_is_a_dangling_symlink_is_named(
    tmp_path, dangling_outputs, out_format
):
    """``extract -o X``, X a symlink to a folder that is not there (or a loop of links), said
    "cannot create output folder X: File exists", naming no link. Now one line names the link
    and where it leads, as diff's -o does, and nothing is made through the link."""
    if out_format == "wds":
        pytest.importorskip("pyarrow.parquet", reason="--format wds needs pyarrow (fpncli[wds])")
    Image.new("RGB", (64, 48), (120, 30, 200)).save(tmp_path / "a.png")
    before = sorted(os.listdir(tmp_path))
    for out, line in dangling_outputs:
        args = ["extract", str(tmp_path / "a.png"), "-o", str(out), *SMALL]
        result = CliRunner().invoke(cli, [*args, "--format", out_format])
        assert result.exit_code == 1, result.output
        assert result.output.splitlines()[-1] == line, result.output
    assert sorted(os.listdir(tmp_path)) == before


def test_a_listed_file_met_twice_does_not_move_the_others_folders(tmp_path, monkeypatch):
    """A list naming imgs/a.png and a link to it elsewhere (links/a.png): the link is kept
    once (as imgs/a.png: it extracts nothing) yet moved the common folder, and so every image's
    folder (out/imgs/a, not out/a; the rerun without it wrote out/a beside). Only the entries
    kept count, also against the files named on the command line."""
    from fpncli.io.inputs import discover_inputs

    monkeypatch.chdir(tmp_path)
    for folder in ("imgs", "links"):
        Path(folder).mkdir()
    for name in "ab":
        Path(f"imgs/{name}.png").write_bytes(b"x")
    os.symlink("../imgs/a.png", "links/a.png")
    listed = discover_inputs([], ["imgs/a.png", "imgs/b.png", "links/a.png"])
    assert [(str(i), r) for i, r in listed] == [(f"imgs/{n}.png", (tmp_path / "imgs").resolve())
                                                for n in "ab"]  # fmt: skip
    named = discover_inputs(["links/a.png"], ["imgs/a.png", "imgs/b.png"])
    assert named[1:] == [(Path("imgs/b.png"), (tmp_path / "imgs").resolve())]


def test_a_listed_file_that_is_not_there_renames_no_other_images_folder(tmp_path, monkeypatch):
    """A typo in a list (d1/a.jpg, no such file, beside d1/a.png) named a.png's folder a_png,
    as a.jpg and a.png share a stem; once the list was fixed the rerun wrote out/a beside it (a
    report then counted both). Only the images that are there count for that rule."""
    monkeypatch.chdir(tmp_path)
    Path("d1").mkdir()
    for name in "ab":
        Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(f"d1/{name}.png")
    small = [*SMALL, "--no-overview", "--no-heatmaps"]
    args = ["extract", "--from-list", "list.txt", "-o", "out", *small]
    Path("list.txt").write_text("d1/a.png\nd1/b.png\nd1/a.jpg\n")
    typo = CliRunner().invoke(cli, args)
    assert typo.exit_code == 1 and "d1/a.jpg" in typo.output, typo.output
    assert Path("out/a/manifest.json").is_file() and not Path("out/a_png").exists()
    Path("list.txt").write_text("d1/a.png\nd1/b.png\n")
    fixed = CliRunner().invoke(cli, args)
    assert fixed.exit_code == 0 and "done 0" in fixed.output, fixed.output
    assert sorted(p.name for p in Path("out").iterdir() if not p.name.startswith(".")) == [
        "a", "b", "run.json"]  # fmt: skip
