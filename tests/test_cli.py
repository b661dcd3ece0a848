"""The command line through click's CliRunner: happy paths, option effects and one-line errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from fpncli.cli import cli

SMALL = ["--weights", "random", "--min-size", "64", "--max-size", "96"]


@pytest.fixture
def runner(tmp_path, monkeypatch):
    monkeypatch.setenv("FPNCLI_HOME", str(tmp_path / "home"))
    return CliRunner()


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "street.jpg"
    rng = np.random.RandomState(0)
    Image.fromarray(rng.randint(0, 255, (60, 90, 3), dtype=np.uint8)).save(path, quality=95)
    return path


def test_help_does_not_import_torch():
    code = "import sys, fpncli.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_extract_one_image_writes_the_documented_outputs(runner, photo, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(
        cli, ["extract", str(photo), "-o", str(out), *SMALL, "--no-overview", "--no-heatmaps"],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    folder = out / "street"
    assert f"wrote {folder}" in result.output
    assert "random" in result.stderr
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["input"]["width"] == 90 and manifest["input"]["height"] == 60
    assert manifest["input"]["exif_transposed"] is False
    pre = manifest["preprocess"]
    assert pre["color_order"] == "BGR"
    assert (pre["resized_height"], pre["resized_width"]) == (64, 96)
    assert (pre["padded_height"], pre["padded_width"]) == (64, 96)
    assert pre["pixel_mean"] == [103.53, 116.28, 123.675] and pre["pixel_std"] == [1.0, 1.0, 1.0]
    assert manifest["weights"]["name"] == "random" and manifest["weights"]["random"] is True
    assert manifest["device"] == "cpu" and manifest["precision"] == "fp32"
    assert manifest["fpncli_version"] and manifest["torch_version"]
    strides = {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
    for level, stride in strides.items():
        meta = manifest["levels"][level]
        array = np.load(folder / meta["file"])
        assert array.dtype == np.float32
        assert array.shape == (1, 256, -(-64 // stride), -(-96 // stride)) == tuple(meta["shape"])
        assert meta["stride"] == stride
        assert meta["min"] <= meta["mean"] <= meta["max"]
        assert meta["max"] == pytest.approx(float(array.max()), rel=1e-6)


def test_levels_dtype_and_no_npy(runner, photo, tmp_path):
    out = tmp_path / "out"
    args = ["extract", str(photo), "-o", str(out), *SMALL, "--levels", "p5,p3", "--dtype",
            "float16", "--no-overview", "--no-heatmaps"]  # fmt: skip
    assert runner.invoke(cli, args, catch_exceptions=False).exit_code == 0
    names = sorted(p.name for p in (out / "street").iterdir())
    assert names == ["manifest.json", "p3.npy", "p5.npy"]
    assert np.load(out / "street" / "p3.npy").dtype == np.float16
    args = ["extract", str(photo), "-o", str(tmp_path / "o2"), *SMALL, "--no-npy", "--no-overview",
            "--no-heatmaps"]  # fmt: skip
    assert runner.invoke(cli, args, catch_exceptions=False).exit_code == 0
    manifest = json.loads((tmp_path / "o2" / "street" / "manifest.json").read_text())
    assert manifest["levels"]["p2"]["file"] is None
    assert not list((tmp_path / "o2" / "street").glob("*.npy"))


def test_a_wds_rerun_of_one_image_names_the_image_and_its_key(runner, photo, tmp_path):
    pytest.importorskip("pyarrow.parquet", reason="--format wds needs pyarrow (fpncli[wds])")
    pytest.importorskip("fsspec", reason="--format wds needs fsspec (fpncli[wds])")
    args = ["extract", str(photo), "-o", str(tmp_path / "w"), *SMALL, "--no-overview",
            "--no-heatmaps", "--format", "wds"]  # fmt: skip
    runner.invoke(cli, args, catch_exceptions=False)
    again = runner.invoke(cli, args, catch_exceptions=False).output
    assert f"{photo} (key street) is already complete with these settings" in again, again


def test_rerun_redoes_a_folder_whose_manifest_is_not_json(runner, photo, tmp_path):
    """A manifest edited into something unreadable makes its folder not complete: the rerun
    redoes it, without --overwrite and without stopping (report, show and diff refuse it)."""
    args = ["extract", str(photo), "-o", str(tmp_path / "out"), *SMALL, "--no-overview",
            "--no-heatmaps"]  # fmt: skip
    runner.invoke(cli, args, catch_exceptions=False)
    manifest = tmp_path / "out" / "street" / "manifest.json"
    manifest.write_text("{bad")
    result = runner.invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0 and "wrote" in result.output, result.output
    assert json.loads(manifest.read_text())["complete"] is True


def test_rerun_skips_then_overwrite_redoes(runner, photo, tmp_path):
    args = ["extract", str(photo), "-o", str(tmp_path / "out"), *SMALL, "--no-overview",
            "--no-heatmaps"]  # fmt: skip
    runner.invoke(cli, args, catch_exceptions=False)
    # it says which folder: with --from-list and --shard, the command line does not
    done = f"{tmp_path / 'out' / 'street'} is already complete with these settings (use --over"
    assert done in runner.invoke(cli, args, catch_exceptions=False).output
    # nothing is drawn, so the drawing options cannot change the outputs: still complete
    drawing = ["--cmap", "magma", "--channel", "7", "--clip", "2,98"]
    again = runner.invoke(cli, [*args, *drawing], catch_exceptions=False).output
    assert "already complete" in again
    redone = runner.invoke(cli, [*args, *drawing, "--dtype", "float16"], catch_exceptions=False)
    assert "wrote" in redone.output  # an option that does change them
    result = runner.invoke(cli, [*args, "--overwrite"], catch_exceptions=False)
    assert "wrote" in result.output


def test_a_rerun_with_other_settings_says_it_replaces_their_outputs(runner, photo, tmp_path):
    """Extracting into the same -o with other options redoes the images (the run key holds the
    settings) and so deletes the earlier outputs: said once on stderr before the run, with the
    options that differ; a resumed run, and --overwrite (asked for), say nothing of it."""
    out = tmp_path / "out"
    base = ["extract", str(photo), "-o", str(out), *SMALL, "--no-overview", "--no-heatmaps"]
    note = f"in {out} have outputs made with other settings"
    first = runner.invoke(cli, [*base, "--overlay", "--reduce", "l2"], catch_exceptions=False)
    assert first.exit_code == 0 and note not in first.stderr
    assert (out / "street" / "p2_overlay.png").is_file()
    again = runner.invoke(cli, [*base, "--canvas", "auto"], catch_exceptions=False)
    assert again.exit_code == 0 and not (out / "street" / "p2_overlay.png").exists()
    lines = [line for line in again.stderr.splitlines() if note in line]
    assert lines == [
        f"note: 1 image(s) {note} (--overlay, --reduce, --canvas): they are replaced; use "
        "another -o to keep both"
    ]
    assert again.stderr.index(note) < again.stderr.index("output: about")  # before the run
    resumed = runner.invoke(cli, [*base, "--canvas", "auto"], catch_exceptions=False)
    assert "already complete" in resumed.output and note not in resumed.stderr
    overwritten = runner.invoke(cli, [*base, "--overwrite"], catch_exceptions=False)
    assert "wrote" in overwritten.output and note not in overwritten.stderr


def test_a_rerun_with_another_file_under_the_same_name_is_refused(runner, tmp_path):
    """``extract photos/2024 -o O`` then ``extract photos/2025 -o O``, both holding
    ``IMG_0001.png``: the second run replaced the 2024 outputs without a word (the run key
    differed in its input alone). It is refused in one line before any image, naming the folder
    and the file its outputs were made from; an edited photo (the same file) is still redone,
    and --overwrite replaces them, as asked."""
    rng = np.random.RandomState(0)
    for year in ("2024", "2025"):
        (tmp_path / year).mkdir()
        for name in ("IMG_0001.png", "IMG_0002.png"):
            pixels = rng.randint(0, 255, (40, 56, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / year / name)
    out = tmp_path / "out"
    base = ["-o", str(out), *SMALL, "--no-overview", "--no-heatmaps"]
    first = runner.invoke(cli, ["extract", str(tmp_path / "2024"), *base], catch_exceptions=False)
    assert first.exit_code == 0, first.output
    manifest = (out / "IMG_0001" / "manifest.json").read_bytes()
    second = runner.invoke(cli, ["extract", str(tmp_path / "2025"), *base])
    assert second.exit_code == 1 and "Traceback" not in second.output
    assert second.stderr.splitlines()[-1] == (
        f"Error: {out / 'IMG_0001'} holds the outputs of another file, "
        f"{tmp_path / '2024' / 'IMG_0001.png'}, not of {tmp_path / '2025' / 'IMG_0001.png'} (and "
        "1 more folders of this run hold other files' outputs): give another -o, or "
        "--overwrite to redo the whole run"
    )
    assert (out / "IMG_0001" / "manifest.json").read_bytes() == manifest  # untouched
    edited = tmp_path / "2024" / "IMG_0001.png"
    stat = edited.stat()
    os.utime(edited, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    again = runner.invoke(cli, ["extract", str(tmp_path / "2024"), *base], catch_exceptions=False)
    assert again.exit_code == 0 and "done 1, skipped 1" in again.output, again.output
    replaced = runner.invoke(cli, ["extract", str(tmp_path / "2025"), *base, "--overwrite"],
                             catch_exceptions=False)  # fmt: skip
    assert replaced.exit_code == 0 and "done 2" in replaced.output, replaced.output
    real = json.loads((out / "IMG_0001" / "manifest.json").read_text())["input"]["real_path"]
    assert real == str((tmp_path / "2025" / "IMG_0001.png").resolve())


def test_a_rerun_with_the_roots_reordered_or_a_sibling_added_is_not_refused(runner, tmp_path):
    """``extract A B -o O`` then ``extract B A -o O`` (or ``--shard 0/2`` of it, or the first
    command again after ``A/a.jpg`` appears beside ``A/a.png``): a folder then holds the outputs
    of another input of the same run, which was refused as another file's though that file's
    outputs are redone in its own folder. Each run now completes, every folder made from its
    own file."""
    for root, value in (("A", 0), ("B", 1)):
        (tmp_path / root).mkdir()
        Image.fromarray(np.full((40, 56, 3), 60 * value, np.uint8)).save(tmp_path / root / "a.png")
    out = tmp_path / "out"
    base = ["-o", str(out), *SMALL, "--no-overview", "--no-heatmaps"]
    roots = [str(tmp_path / "A"), str(tmp_path / "B")]

    def made_from(folder: str) -> str:
        return json.loads((out / folder / "manifest.json").read_text())["input"]["real_path"]

    def extract(*args: str) -> None:
        result = runner.invoke(cli, ["extract", *args, *base])
        assert result.exit_code == 0, result.output

    extract(*roots)
    extract(*roots[::-1], "--shard", "0/2")  # B/a.png into a, which holds A/a.png's outputs
    assert made_from("a") == str((tmp_path / "B" / "a.png").resolve())
    extract(*roots[::-1])
    assert made_from("a_2") == str((tmp_path / "A" / "a.png").resolve())
    Image.fromarray(np.zeros((40, 56, 3), np.uint8)).save(tmp_path / "A" / "a.jpg")
    extract(*roots)  # A's two go to a_png and a_jpg, B/a.png back to a
    assert made_from("a") == str((tmp_path / "B" / "a.png").resolve())
    assert made_from("a_png") == str((tmp_path / "A" / "a.png").resolve())


def test_a_folder_left_by_a_renamed_input_is_said_and_kept(runner, tmp_path):
    """``extract S`` with ``S/a.png`` and ``S/b.png`` writes ``a/`` and ``b/``; once ``a.jpg``
    and ``b.jpg`` are added beside them, ``a.png``'s outputs go to ``a_png/``, and ``a/``, no
    image's folder any more, stayed without a word: ``fpncli report`` counted 6 images for 4
    photos. The run names the first such folder (and how many more) in a note and leaves them
    as they are; one deleted, an incomplete one and one that holds another file's outputs are
    not named."""
    src, out = tmp_path / "S", tmp_path / "out"
    src.mkdir()
    (tmp_path / "other").mkdir()
    names = ("a.png", "b.png", "a.jpg", "b.jpg", "c.png", "c.jpg", "other/c.png")
    for i, name in enumerate(names):
        Image.fromarray(np.full((40, 56, 3), 30 * i, np.uint8)).save(tmp_path / name)
    base = ["-o", str(out), *SMALL, "--no-overview", "--no-heatmaps"]

    def extract(*names: str, folder=src) -> list[str]:
        for name in names:
            os.replace(tmp_path / name, src / name)
        result = runner.invoke(cli, ["extract", str(folder), *base], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return [ln for ln in result.stderr.splitlines() if "earlier outputs" in ln]

    assert extract("a.png", "b.png") == []
    kept = {name: (out / name / "manifest.json").read_bytes() for name in ("a", "b")}
    assert extract("a.jpg", "b.jpg") == [
        f"note: {out / 'a'} holds earlier outputs of {src / 'a.png'}, whose folder is now "
        f"{out / 'a_png'} (and 1 more such folders): the run leaves it as it is, and fpncli "
        "report counts it as an image of its own; delete it"
    ]
    assert {name: (out / name / "manifest.json").read_bytes() for name in kept} == kept
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [
        "a", "a_jpg", "a_png", "b", "b_jpg", "b_png",
    ]  # fmt: skip
    shutil.rmtree(out / "a")  # deleted, as the note said
    (out / "b" / "p2.npy").unlink()  # no longer complete
    assert extract() == []
    assert extract(folder=tmp_path / "other") == []  # out/c: other/c.png's outputs
    assert extract("c.png", "c.jpg") == []  # S/c.png to c_png/: c/ is not its file's


@pytest.mark.parametrize(
    "args, message",
    [
        (["extract", "missing.jpg", "--weights", "random"], "no such file or folder: missing.jpg"),
        (["extract", "{photo}", "--weights", "nope"], "unknown weights 'nope'"),
        (["extract", "{photo}", "--weights", "random", "--levels", "p7"], "unknown level"),
        (["extract", "{photo}", "--weights", "/no/such/w.pkl"], "weights file not found"),
        (["extract", "{photo}", "--weights", "random", "--device", "tpu"], "unknown device"),
        (["extract", "{photo}", "--weights", "random", "--precision", "fp16", "--device", "cpu"],
         "fp16 on the CPU"),
        (["show", "--level", "p9", "{photo}"], "level"),
        (["extract", "{photo}", "--weights", "random", "--levels", "stem", "--channel", "64"],
         "channel 64 is out of range: stem has 64 channels (0..63) (see 'cli extract --help')"),
        (["extract", "{photo}", "--batch-size", "0"], "Invalid value for '--batch-size'"),
        (["extrct", "{photo}"], "No such command 'extrct'. Did you mean 'extract'?"),
    ],
)  # fmt: skip
def test_errors_are_one_line_without_traceback(runner, photo, args, message):
    args = [a.replace("{photo}", str(photo)) for a in args]
    result = runner.invoke(cli, args)
    assert result.exit_code != 0
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output  # no click usage block
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_unwritable_output_folder(runner, photo, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = runner.invoke(cli, ["extract", str(photo), "-o", str(blocker / "out"), *SMALL])
    assert result.exit_code == 1
    assert "cannot create output folder" in result.output
    assert "Traceback" not in result.output


def test_bad_image_fails_cleanly_and_leaves_nothing(runner, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("this is text")
    out = tmp_path / "out"
    result = runner.invoke(cli, ["extract", str(bad), "-o", str(out), *SMALL])
    assert result.exit_code == 1
    assert "failed:" in result.output and "bad.jpg" in result.output
    assert not (out / "bad").exists()


def test_default_weights_offline_names_address_path_and_random(
    runner, photo, monkeypatch, tmp_path
):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(cli, ["extract", str(photo)])
    assert result.exit_code == 1
    assert not (tmp_path / "fpn_out").exists()  # no empty output folder left behind
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    line = lines[0]
    assert (
        "https://dl.fbaipublicfiles.com/detectron2/COCO-Detection/faster_rcnn_R_50_FPN_3x/" in line
    )
    assert "model_final_280758.pkl" in line
    assert "--weights random" in line
    assert "by hand" in line


def test_weights_list_and_verify(runner):
    result = runner.invoke(cli, ["weights", "list"], catch_exceptions=False)
    assert "faster_rcnn_R_50_FPN_3x (default)" in result.output
    assert "https://dl.fbaipublicfiles.com/detectron2/" in result.output
    assert "torchvision_fasterrcnn_resnet50_fpn" in result.output
    result = runner.invoke(cli, ["weights", "verify", "faster_rcnn_R_50_FPN_1x"])
    assert result.exit_code == 1 and "not cached" in result.output  # named, so it must be there
    result = runner.invoke(cli, ["weights", "verify", "nope"])
    assert result.exit_code == 2 and "unknown weights name" in result.output
    result = runner.invoke(cli, ["weights", "verify", "random"])
    assert result.exit_code == 0 and "random: nothing to verify" in result.output


def test_python_dash_m_works(photo, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "fpncli", "--version"], capture_output=True, text=True, check=True
    )
    assert "fpncli" in result.stdout


def test_ctrl_c_before_the_command_runs_exits_130(runner, photo, monkeypatch):
    """Ctrl-C while click parses the options (--cmap loads matplotlib, --clip is parsed) came
    outside the command's handler: click printed "Aborted!" and exited 1, not 130 as a Ctrl-C
    later does; and one while the command line loads was a traceback."""
    from fpncli.viz import maps

    def interrupt(value):
        raise KeyboardInterrupt

    monkeypatch.setattr(maps, "parse_clip", interrupt)
    for command in ("extract", "show"):
        result = runner.invoke(cli, [command, str(photo), "--weights", "random"])
        assert (result.exit_code, result.stderr) == (130, "interrupted\n"), result.output
    loading = """if True:
        import sys

        class Interrupt:  # Ctrl-C while fpncli.cli is imported
            def find_spec(self, name, path=None, target=None):
                if name == "fpncli.cli":
                    raise KeyboardInterrupt

        sys.meta_path.insert(0, Interrupt())
        from fpncli.__main__ import main

        main()
    """
    result = subprocess.run([sys.executable, "-c", loading], capture_output=True, text=True)
    assert (result.returncode, result.stderr) == (130, "interrupted\n")


def test_output_read_by_a_reader_that_stops_ends_quietly(tmp_path):
    """``fpncli weights list | head -1``: once the reader has closed the pipe, the command ends
    as a program killed by SIGPIPE does (exit code 141, nothing on stderr), not with "Error:
    [Errno 32] Broken pipe"; a broken pipe that is not standard output's stays an error."""
    import click

    from fpncli.cli.common import _friendly

    read, write = os.pipe()
    os.close(read)  # the reader is gone before the command writes
    try:
        result = subprocess.run([sys.executable, "-m", "fpncli", "weights", "list"], stdout=write,
                                stderr=subprocess.PIPE, text=True, timeout=60,
                                env={**os.environ, "FPNCLI_HOME": str(tmp_path)})  # fmt: skip
    finally:
        os.close(write)
    assert (result.returncode, result.stderr) == (141, "")

    @click.command()
    @_friendly
    def elsewhere():
        raise BrokenPipeError(32, "Broken pipe")  # e.g. a socket

    result = CliRunner().invoke(elsewhere, [])
    assert result.exit_code == 1 and result.output == "Error: [Errno 32] Broken pipe\n"


def test_overlay_of_an_exif_rotated_photo_is_drawn_upright(runner, tmp_path):
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:10, :10] = 255  # white top-left corner as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "phone.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=100)
    out = tmp_path / "out"
    args = ["extract", str(path), "-o", str(out), *SMALL, "--overlay", "--no-overview"]
    assert runner.invoke(cli, args, catch_exceptions=False).exit_code == 0
    manifest = json.loads((out / "phone" / "manifest.json").read_text())
    assert manifest["input"]["exif_transposed"] is True
    assert (manifest["input"]["width"], manifest["input"]["height"]) == (40, 60)
    assert (manifest["preprocess"]["resized_width"], manifest["preprocess"]["resized_height"]) == (
        64, 96,
    )  # fmt: skip
    for level in ("p2", "p4", "p6"):
        drawn = np.asarray(Image.open(out / "phone" / f"{level}_overlay.png").convert("RGB"))
        assert drawn.shape[0] > 60 and (drawn[-60:, 40:] == 255).all()  # upright 40x60 photo
        assert manifest["levels"][level]["overlay"] == f"{level}_overlay.png"
    heat = Image.open(out / "phone" / "p2.png")
    assert heat.size[0] >= 256


def test_folder_run_summary_and_from_list_on_stdin(runner, tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    for i, rel in enumerate(["a.png", "sub/b.png", "sub/b.jpg"]):
        Image.fromarray(np.full((30, 40, 3), 40 * i, np.uint8)).save(src / rel)
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "out"
    args = ["extract", str(src), "-o", str(out), *SMALL, "--no-overview", "--no-heatmaps"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 1
    assert "done 3, skipped 0 (already complete), failed 1 of 4" in result.output
    # a small run's volume in a unit that shows it (it said "0.000 GB written")
    assert re.search(r"images/s\), \d+(\.\d)? (KB|MB) written to ", result.output), result.output
    assert "failed: " in result.output and "broken.png" in result.output
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("manifest.json")) == [
        "a/manifest.json", "sub/b_jpg/manifest.json", "sub/b_png/manifest.json",
    ]  # fmt: skip
    listed = f"{src / 'a.png'}\n{src / 'sub' / 'b.png'}\n"
    result = runner.invoke(cli, ["extract", "--from-list", "-", "-o", str(tmp_path / "o2"), *SMALL,
                                 "--no-overview", "--no-heatmaps"], input=listed)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o2" / "a" / "manifest.json").is_file()
    assert (tmp_path / "o2" / "sub" / "b" / "manifest.json").is_file()


def test_progress_is_a_click_bar_on_a_terminal_and_ten_plain_lines_elsewhere():
    import io

    from fpncli.cli.common import RunProgress
    from fpncli.run.pipeline import Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    tty = Terminal()
    bar = RunProgress(stream=tty)
    for i in range(1, 41):
        bar(Progress(done=i - i // 10, failed=i // 10, skipped=0, todo=40, elapsed_s=i / 2))
    bar.close()
    text = tty.getvalue()
    assert "\r" in text and "40/40" in text and "extracting" in text and "img/s" in text
    assert "4 failed" in text
    log = io.StringIO()
    plain = RunProgress(stream=log)
    for i in range(1, 1001):
        plain(Progress(done=i, failed=0, skipped=0, todo=1000, elapsed_s=i / 10))
    lines = log.getvalue().splitlines()
    assert len(lines) == 11 and "\r" not in log.getvalue()  # the first, then one per tenth
    assert lines[1] == "100/1000 images, 10.00 img/s, ETA 1m30s"
    assert lines[-1].startswith("1000/1000 images")


def test_weights_download_then_verify(runner, tmp_path, monkeypatch):
    import io

    from fpncli.weights.synthetic import seeded_state_dict, write_detectron2_pkl

    path = tmp_path / "served.pkl"
    write_detectron2_pkl(path, seeded_state_dict(0))
    data = path.read_bytes()

    class Response(io.BytesIO):
        headers = {"Content-Length": str(len(data))}

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: Response(data))
    result = runner.invoke(cli, ["weights", "download", "faster_rcnn_R_50_FPN_1x"],
                           catch_exceptions=False)  # fmt: skip
    assert result.exit_code == 0 and "saved" in result.output
    again = runner.invoke(cli, ["weights", "download", "faster_rcnn_R_50_FPN_1x"])
    assert "already cached" in again.output
    verify = runner.invoke(cli, ["weights", "verify", "faster_rcnn_R_50_FPN_1x"])
    assert verify.exit_code == 0 and "faster_rcnn_R_50_FPN_1x: ok sha256" in verify.output
    bad = runner.invoke(cli, ["weights", "download", "faster_rcnn_R_50_FPN_3x"])
    assert bad.exit_code == 1 and "does not match the published" in bad.output


def test_output_folder_inside_the_input_folder_is_not_read_back(runner, tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(src / "a.png")
    args = ["extract", str(src), "-o", str(src / "feats"), *SMALL]
    assert runner.invoke(cli, args, catch_exceptions=False).exit_code == 0
    second = runner.invoke(cli, args, catch_exceptions=False)
    assert "done 0, skipped 1" in second.output or "already complete" in second.output
    assert sorted(p.parent.name for p in (src / "feats").rglob("manifest.json")) == ["a"]


def _red_pixels(path) -> int:
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int(((rgb[..., 0] > 150) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)).sum())


def test_clip_range_in_manifest_and_random_mark_on_every_picture(runner, photo, tmp_path):
    from fpncli.viz.maps import value_range

    out = tmp_path / "out"
    args = ["extract", str(photo), "-o", str(out), *SMALL, "--overlay", "--clip", "2,98"]
    assert runner.invoke(cli, args, catch_exceptions=False).exit_code == 0
    folder = out / "street"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["heatmap"]["clip_percentiles"] == [2.0, 98.0]
    for level, meta in manifest["levels"].items():
        valid = np.load(folder / meta["file"])[0, 0, : meta["valid_height"], : meta["valid_width"]]
        assert meta["range"] == pytest.approx(value_range(valid, (2, 98)))
        assert meta["range"][1] < meta["max"]  # clipped, and the manifest says to what
        for picture in (f"{level}.png", f"{level}_overlay.png"):
            assert _red_pixels(folder / picture) > 30, picture  # "RANDOM, UNTRAINED WEIGHTS"
    assert _red_pixels(folder / "overview.png") > 30
    bad = runner.invoke(cli, ["extract", str(photo), "-o", str(out), *SMALL, "--clip", "99,1"])
    assert bad.exit_code == 2 and "--clip" in bad.output and "percentiles" in bad.output


def test_a_run_refused_before_any_image_leaves_no_output_folder(runner, photo, monkeypatch,
                                                                 tmp_path):  # fmt: skip
    """An engine that refuses the run before writing anything (Ray's CPU actors refuse fp16,
    say, once Ray has started) leaves no empty output folder behind; removing one never takes
    the marker from a folder that holds anything else."""
    import click

    import fpncli.run.pipeline
    from fpncli.cli.extract_report import _remove_if_unused
    from fpncli.io.markers import OUTPUT_MARKER

    def refuse(*args, **kwargs):
        raise click.ClickException("refused here")

    monkeypatch.setattr(fpncli.run.pipeline, "run_jobs", refuse)
    out = tmp_path / "out"
    result = runner.invoke(cli, ["extract", str(photo), "-o", str(out), *SMALL])
    assert result.exit_code == 1 and "refused here" in result.output, result.output
    assert not out.exists()
    used = tmp_path / "used"
    used.mkdir()
    (used / OUTPUT_MARKER).write_text("{}")
    (used / "photo").mkdir()
    _remove_if_unused(used)
    assert (used / OUTPUT_MARKER).is_file() and (used / "photo").is_dir()
