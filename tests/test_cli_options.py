"""Every option is checked before any work: no folder made, no weights loaded or downloaded."""

from __future__ import annotations

import importlib
import json
import os
import signal
from dataclasses import asdict

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from slow_decoding import SLOW_DECODING

import fpncli.api
from fpncli.cli import cli

SMALL = ["--weights", "random", "--min-size", "64", "--max-size", "96"]


@pytest.fixture
def runner(tmp_path, monkeypatch):
    monkeypatch.setenv("FPNCLI_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RANK", raising=False)
    for name in ("WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "LOCAL_RANK", "SLURM_LOCALID"):
        monkeypatch.delenv(name, raising=False)
    return CliRunner()


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a command gets as far as loading (or downloading) weights."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(fpncli.api, "load_backbone", refuse)


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "street.jpg"
    Image.fromarray(np.zeros((60, 90, 3), np.uint8)).save(path)
    return path


@pytest.mark.parametrize(
    "args, env, names",
    [
        (["--cmap", "bogus"], {}, "--cmap"),
        (["--levels", "p9"], {}, "--levels"),
        (["--channel", "300"], {}, "--channel"),
        (["--reduce", "x"], {}, "--reduce"),
        (["--shard", "4/4"], {}, "--shard"),
        (["--shard", "x"], {}, "--shard"),
        ([], {"RANK": "", "WORLD_SIZE": "4"}, "RANK"),
        ([], {"RANK": "0", "WORLD_SIZE": "four"}, "WORLD_SIZE"),
        ([], {"RANK": "4", "WORLD_SIZE": "4"}, "RANK"),
        ([], {"WORLD_SIZE": "4"}, "RANK"),
        ([], {"SLURM_PROCID": "x", "SLURM_NTASKS": "2"}, "SLURM_PROCID"),
        (["--batch-size", "0"], {}, "--batch-size"),
        (["--workers", "0"], {}, "--workers"),
        (["--min-size", "0"], {}, "--min-size"),
        (["--min-size", "900", "--max-size", "800"], {}, "--min-size"),
        (["--max-pixels", "-1"], {}, "--max-pixels"),
        (["--clip", "5"], {}, "--clip"),
        (["--device", "tpu"], {}, "--device"),
        (["--precision", "fp16", "--device", "cpu"], {}, "--precision"),
        (["--weights", "no-such-weights"], {}, "--weights"),
        (["--overwrite", "--resume"], {}, "--overwrite redoes complete images and --resume"),
        (["--seed", "-1"], {}, "--seed"),
        (["--levels", "stem", "--channel", "64"], {}, "stem has 64 channels"),
    ],
)
def test_extract_checks_every_option_first(runner, no_model, photo, tmp_path, monkeypatch, args,
                                           env, names):  # fmt: skip
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "out"
    base = ["extract", str(photo), "-o", str(out), "--weights", "random"]
    result = runner.invoke(cli, [*base, *args])
    assert result.exit_code != 0
    assert names in result.output, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.exists()  # no folder made


@pytest.mark.parametrize(
    "args, message",
    [
        (["--reduce", "l2", "--channel", "3"],
         "--channel is an option of --reduce channel (--reduce l2 draws from every channel)"),
        (["--no-resize", "--min-size", "64"], "--min-size is an option of the resize"),
        (["--max-size", "96", "--no-resize"], "--max-size is an option of the resize"),
        (["--no-resize", "--min-size", "900", "--max-size", "800"], "--min-size is an option"),
        (["--weights", "faster_rcnn_R_50_FPN_3x", "--seed", "3"],
         "--seed is an option of --weights random (other weights are not drawn at random)"),
    ],
)  # fmt: skip
def test_options_that_would_change_nothing_are_refused(runner, no_model, photo, tmp_path, args,
                                                       message):  # fmt: skip
    """Each was taken silently, yet a rerun with another value of it redid the folders (or
    refused a --format wds output); --seed with real weights was simply ignored."""
    out = tmp_path / "out"
    result = runner.invoke(cli, ["extract", str(photo), "-o", str(out), "--weights", "random",
                                 *args])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"Error: {message}"), result.output
    assert len(result.output.strip().splitlines()) == 1 and not out.exists()


def test_options_at_their_defaults_or_where_they_count_are_accepted(runner, photo, tmp_path):
    """Only what the user gave is refused: the defaults of --channel, --min-size, --max-size
    and --seed go with --reduce l2, --no-resize and any weights."""
    base = ["extract", str(photo), "--levels", "p6", "--no-npy", "--no-overview"]
    for args in (["--reduce", "l2", "--no-resize", "--weights", "random"],
                 [*SMALL, "--reduce", "channel", "--channel", "3", "--seed", "3"]):  # fmt: skip
        result = runner.invoke(cli, [*base, *args, "-o", str(tmp_path / args[1])])
        assert result.exit_code == 0, result.output


def _as_before_unused_options_were_refused(monkeypatch) -> None:
    """Extract as 6bdc2f7 did: ``--channel`` without ``--reduce channel`` and ``--min-size``
    with ``--no-resize`` taken, and hashed into the run keys as given."""
    import fpncli.io.run_keys as run_keys
    import fpncli.io.shards as shards

    extract = importlib.import_module("fpncli.cli.extract")  # the module, not the command

    def options_for_key(options):
        chosen = asdict(options)
        if not (chosen["save_heatmaps"] or chosen["save_overview"] or chosen["overlay"]):
            chosen.update({name: run_keys._defaults()[name] for name in run_keys._DRAWING})
        return chosen

    monkeypatch.setattr(extract, "_check_options_used", lambda *args: None)
    monkeypatch.setattr(run_keys, "options_for_key", options_for_key)
    monkeypatch.setattr(shards, "options_for_key", options_for_key)


@pytest.mark.parametrize("out_format", ["files", "wds"])
@pytest.mark.parametrize(
    "then, now",
    [(["--reduce", "mean", "--channel", "5", *SMALL], ["--reduce", "mean", *SMALL]),
     (["--no-resize", "--min-size", "700", "--weights", "random"],
      ["--no-resize", "--weights", "random"])],
)  # fmt: skip
def test_outputs_made_with_an_option_that_changes_nothing_resume(runner, photo, tmp_path,
                                                                 monkeypatch, out_format, then,
                                                                 now):  # fmt: skip
    """Outputs an earlier version made with ``--channel 5 --reduce mean`` (or ``--no-resize
    --min-size 700``), whose keys hold that value, resume with the command extract takes now:
    skipped, nothing rewritten. Folders were redone silently and wds refused ("other weights or
    options"), while the command that matched them is refused."""
    if out_format == "wds":
        pytest.importorskip("fsspec")
        pytest.importorskip("pyarrow")
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    for name in ("a.jpg", "b.jpg"):
        (photos / name).write_bytes(photo.read_bytes())
    base = ["extract", str(photos), "-o", str(out), "--levels", "p6", "--format", out_format]
    with monkeypatch.context() as m:
        _as_before_unused_options_were_refused(m)
        made = runner.invoke(cli, [*base, *then])
    assert made.exit_code == 0 and "done 2," in made.output, made.output
    outputs = [p for p in out.rglob("*") if p.suffix in (".npy", ".png", ".tar", ".json")]
    before = {p: p.stat().st_mtime_ns for p in outputs if p.name != "run.json"}
    resumed = runner.invoke(cli, [*base, *now])
    assert resumed.exit_code == 0, resumed.output
    assert "done 0, skipped 2" in resumed.output and "other settings" not in resumed.output
    assert {p: p.stat().st_mtime_ns for p in before} == before


@pytest.mark.parametrize("command", ["extract", "show", "bench"])
def test_a_usage_error_that_names_where_to_look_gets_no_second_pointer(runner, no_model, photo,
                                                                       command):  # fmt: skip
    """``--weights rando`` ended "(see 'fpncli weights list') (see 'fpncli extract --help')"."""
    args = [command, *([str(photo)] if command != "bench" else []), "--weights", "rando"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert result.output.count("(see '") == 1 and "(see 'fpncli weights list')" in result.output
    bad_cmap = runner.invoke(cli, ["extract", str(photo), "--cmap", "bogus"])
    assert bad_cmap.output.rstrip().endswith("extract --help')"), bad_cmap.output  # still there


def test_levels_all_is_accepted(runner, photo, tmp_path):
    out = tmp_path / "out"
    args = ["extract", str(photo), "-o", str(out), *SMALL, "--levels", "all", "--no-heatmaps",
            "--no-overview"]  # fmt: skip
    assert runner.invoke(cli, args, catch_exceptions=False).exit_code == 0
    assert sorted(p.name for p in (out / "street").glob("p*.npy")) == [
        f"p{k}.npy" for k in range(2, 7)
    ]


@pytest.mark.parametrize(
    "args, names",
    [
        (["--iters", "0"], "--iters"),
        (["--outputs", "bogus"], "--outputs"),
        (["--batch-sizes", "0"], "--batch-sizes"),
        (["--batch-sizes", "1,x"], "--batch-sizes"),
        (["--sizes", "800"], "--sizes"),
        (["--precisions", "fp8"], "--precisions"),
        (["--json", "no/such/folder/b.json"], "--json"),
        (["--weights", "nope"], "--weights"),
        (["--sizes", "100x100"], "'--sizes': 100x100: the model-only rows' sizes are padded"),
        (["--seconds", "inf"], "--seconds"),
        (["--seconds", "nan"], "--seconds"),
        (["--model-only", "--e2e-only"], "--model-only and --e2e-only leave no rows"),
        # options for model rows only, with --e2e-only, were ignored (the extra models loaded)
        (["--e2e-only", "--compile"], "--compile adds model-only rows, which --e2e-only skips"),
        (["--e2e-only", "--unfused"], "--unfused adds model-only rows, which --e2e-only skips"),
        (["--compile-only", "--unfused"], "--unfused adds eager model rows, which --compile-only"),
        (
            ["--e2e-only", "--iters", "5"],
            "--iters is for the model-only rows, which --e2e-only skips: drop it or --e2e-only",
        ),
        (["--e2e-only", "--warmup", "0"], "--warmup is for the model-only rows"),
        # and those for end-to-end rows only, with --model-only or --compile-only
        (
            ["--model-only", "--source-size", "1080x1920"],
            "--source-size is for the end-to-end rows, which --model-only skips",
        ),
        (["--compile-only", "--source-size", "1080x1920"], "which --compile-only skips"),
        (
            ["--model-only", "--images", "16", "--outputs", "npy"],
            "--images, --outputs are for the end-to-end rows",
        ),
        (
            ["--compile-only", "--workers", "2", "--writers", "2", "--processes", "1"],
            "--workers, --writers, --processes are for the end-to-end rows, which --compile-only "
            "skips: drop them or --compile-only",
        ),
        # the second size was dropped
        (["--source-size", "64x96,5000x5000"], "'--source-size': one size HxW, got 2"),
    ],
)
def test_bench_checks_every_option_first(runner, no_model, args, names):
    result = runner.invoke(cli, ["bench", *args])
    assert result.exit_code == 2
    assert names in result.output, result.output
    assert "Traceback" not in result.output


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_bench_refuses_a_json_file_it_cannot_write_before_measuring(runner, no_model, tmp_path):
    """``--json /proc/x.json`` failed only after the rows were measured, naming a '.partial'
    file the user never gave; a writable folder keeps no trace of the check."""
    result = runner.invoke(cli, ["bench", "--device", "cpu", "--json", "/proc/x.json"])
    assert result.exit_code == 2, result.output
    assert "'--json': cannot write /proc/x.json: " in result.output
    assert ".partial" not in result.output and "Traceback" not in result.output
    from fpncli.cli.bench_options import _json_path

    assert _json_path(None, None, str(tmp_path / "b.json")) == str(tmp_path / "b.json")
    assert list(tmp_path.iterdir()) == []


def test_show_checks_options_before_any_weights_download(runner, no_model, photo, tmp_path):
    cases = [(["--cmap", "bogus"], "--cmap"), (["--level", "p9"], "--level"),
             (["--channel", "-1"], "--channel"), (["--clip", "a,b"], "--clip")]  # fmt: skip
    for args, names in cases:
        result = runner.invoke(cli, ["show", str(photo), *args])
        assert result.exit_code == 2 and names in result.output, result.output
    listing = tmp_path / "files.txt"
    listing.write_text("a.jpg\n")
    result = runner.invoke(cli, ["show", str(listing)])
    assert result.exit_code == 1 and "not an image" in result.output, result.output
    fake = tmp_path / "fake.png"
    fake.write_text("not a picture")
    result = runner.invoke(cli, ["show", str(fake)])
    assert result.exit_code == 1 and "not an image" in result.output, result.output


def test_bench_rows_stand_alone(runner, monkeypatch, tmp_path):
    """bf16 where it cannot run well is reported and skipped; the fp32 rows still print."""
    monkeypatch.setattr(fpncli.api, "_cpu_has_fast_bf16", lambda: False)
    report = tmp_path / "b.json"
    args = ["bench", "--device", "cpu", "--sizes", "64x96", "--precisions", "fp32,bf16",
            "--model-only", "--iters", "1", "--warmup", "0", "--json", str(report)]  # fmt: skip
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output  # a precision the CPU cannot run well: not an error
    assert "skipped bf16: this CPU has no fast bf16" in result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("model")]
    assert len(lines) == 1 and "fp32" in lines[0] and "64x96" in lines[0]
    data = json.loads(report.read_text())
    assert [r["precision"] for r in data["rows"]] == ["fp32"]
    assert data["skipped"][0]["precision"] == "bf16"


def test_a_row_that_fails_mid_run_does_not_discard_the_others(runner, monkeypatch):
    import fpncli.run.bench_model as bench_module

    real = bench_module.bench_model

    def flaky(model, **kwargs):
        if kwargs["batch_size"] == 2:
            raise RuntimeError("out of memory (simulated)")
        return real(model, **kwargs)

    monkeypatch.setattr(bench_module, "bench_model", flaky)
    args = ["bench", "--device", "cpu", "--sizes", "64x96", "--batch-sizes", "1,2,3",
            "--model-only", "--iters", "1", "--warmup", "0"]  # fmt: skip
    result = runner.invoke(cli, args)
    assert result.exit_code == 1
    assert "skipped model fpncli 64x96 batch 2 fp32: out of memory (simulated)" in result.stderr
    batches = [line.split()[3] for line in result.stdout.splitlines() if line.startswith("model")]
    assert batches == ["1", "3"]


def _fake_rows(monkeypatch, calls, stop_at=None):
    """bench_model replaced by a recorder; ``stop_at``: the call that is interrupted (as the
    SIGINT of gpu_check.sh's time limit interrupts a row)."""
    import fpncli.run.bench_model as bench_module
    from fpncli.run.bench import BenchRow

    def fake(model, **kwargs):
        calls.append(kwargs)
        if len(calls) == stop_at:
            raise KeyboardInterrupt
        row = BenchRow("model", "cpu", kwargs["height"], kwargs["width"],
                       kwargs["batch_size"], kwargs["precision"],
                       "compile" if kwargs.get("compile") else "eager")  # fmt: skip
        row.images_per_s = 10.0
        return row

    monkeypatch.setattr(bench_module, "bench_model", fake)


def test_bench_json_keeps_the_rows_measured_before_an_interruption(runner, monkeypatch, tmp_path):
    calls = []
    _fake_rows(monkeypatch, calls, stop_at=3)
    report = tmp_path / "b.json"
    args = ["bench", "--device", "cpu", "--sizes", "64x96", "--batch-sizes", "1,2,3",
            "--model-only", "--json", str(report)]  # fmt: skip
    result = runner.invoke(cli, args)
    assert result.exit_code != 0 and len(calls) == 3
    data = json.loads(report.read_text())
    assert [r["batch_size"] for r in data["rows"]] == [1, 2] and data["complete"] is False
    assert not (tmp_path / "b.json.partial").exists()


def test_bench_rows_run_without_their_fp32_reference(runner, monkeypatch, tmp_path):
    import fpncli.run.bench_model as bench_module

    calls = []
    _fake_rows(monkeypatch, calls)

    def no_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 9 GiB")

    monkeypatch.setattr(bench_module, "fp32_reference", no_memory)
    report = tmp_path / "b.json"
    args = ["bench", "--device", "cpu", "--sizes", "64x96", "--batch-sizes", "1,2",
            "--compile-only", "--json", str(report)]  # fmt: skip
    result = runner.invoke(cli, args)
    assert result.exit_code == 1
    assert "skipped fp32 reference 64x96 batch 1 (no error column): CUDA out of memory" in (
        result.stderr
    )
    assert [(c["batch_size"], c.get("compile")) for c in calls] == [(1, True), (2, True)]
    assert all(c["reference"] is None for c in calls)
    data = json.loads(report.read_text())
    assert [r["variant"] for r in data["rows"]] == ["compile", "compile"] and data["complete"]


def test_api_refuses_slow_cpu_precisions_like_the_cli(monkeypatch):
    monkeypatch.setattr(fpncli.api, "_cpu_has_fast_bf16", lambda: False)
    model = fpncli.api.load_backbone("random")
    image = np.zeros((40, 60, 3), np.uint8)
    for precision in ("fp16", "bf16"):
        with pytest.raises(ValueError, match="fp32"):
            fpncli.api.extract(image, model, min_size=32, max_size=64, precision=precision)


def test_verbose_is_accepted_after_the_subcommand(runner, tmp_path):
    missing = str(tmp_path / "missing.jpg")
    quiet = runner.invoke(cli, ["extract", missing, "--weights", "random"])
    assert quiet.exit_code == 1 and "Traceback" not in quiet.output
    for args in (
        ["-v", "extract", missing],
        ["extract", missing, "-v"],
        ["extract", "-v", missing],
    ):
        loud = runner.invoke(cli, [*args, "--weights", "random"])
        assert loud.exit_code == 1 and "Traceback" in loud.output, args
    assert runner.invoke(cli, ["weights", "list", "-v"]).exit_code == 0


def test_every_option_of_every_command_has_help():
    import click

    commands = [cli] + list(cli.commands.values())
    commands += list(cli.commands["weights"].commands.values())
    for command in commands:
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"{command.name} {param.opts} has no help text"


def _five_photos_interrupted_on_the_fourth(tmp_path, monkeypatch):
    """A folder of five photos, and Ctrl-C (KeyboardInterrupt) when decoding the fourth; returns
    the folder and the real ``load_image`` (to put back)."""
    import fpncli.run.steps as pipeline  # where decoding reads the image

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(np.full((40, 60, 3), i * 40, np.uint8)).save(folder / f"im{i}.png")
    real = pipeline.load_image
    _interrupt_decoding_on(monkeypatch, real, 4)
    return folder, real


def _interrupt_decoding_on(monkeypatch, real, nth: int) -> None:
    """Ctrl-C (KeyboardInterrupt) when decoding reads its ``nth`` image; ``real`` reads the
    others."""
    import fpncli.run.steps as pipeline

    calls = []

    def interrupt(path, **kwargs):
        calls.append(path)
        if len(calls) == nth:
            raise KeyboardInterrupt
        return real(path, **kwargs)

    monkeypatch.setattr(pipeline, "load_image", interrupt)


def test_ctrl_c_says_what_was_done_what_is_left_and_how_to_resume(runner, tmp_path, monkeypatch):
    import shlex

    import fpncli.run.steps as pipeline

    folder, real = _five_photos_interrupted_on_the_fourth(tmp_path, monkeypatch)
    out = tmp_path / "out"
    args = ["extract", str(folder), "-o", str(out), *SMALL, "--workers", "1", "--no-heatmaps",
            "--no-overview", "--overwrite"]  # fmt: skip
    result = runner.invoke(cli, args)
    assert result.exit_code == 130
    assert "interrupted: 3 image(s) written by this run, 0 failed" in result.stderr
    assert "2 of 5 left" in result.stderr
    log = json.loads((out / "run.json").read_text())  # this run's, not a previous run's
    assert log["aborted"].startswith("interrupted (Ctrl-C, SIGTERM or SIGHUP)")
    assert (log["total"], log["done"], log["skipped"], log["failed"]) == (5, 3, 0, [])
    resume = result.stderr.split("resume with: ")[1].strip()
    assert "--overwrite" not in resume  # resuming must not redo the finished images
    words = shlex.split(resume)
    assert words[:2] == ["fpncli", "extract"]
    monkeypatch.setattr(pipeline, "load_image", real)
    again = runner.invoke(cli, words[1:], catch_exceptions=False)
    assert again.exit_code == 0 and "done 2, skipped 3" in again.output


@pytest.mark.parametrize("out_format", ["files", "wds"])
def test_an_error_midway_keeps_the_log_and_says_how_to_resume(runner, tmp_path, monkeypatch,
                                                               out_format):  # fmt: skip
    """An error that ends a local run midway ("can't start new thread": the writer pool starts
    its threads as work comes) left no run.json, no counts and no resume line, only the error:
    now, as after Ctrl-C, run.json records what was done (aborted: the error) and the resume
    command is printed; the error is the last line, exit code 1."""
    import shlex

    from fpncli.run.runner import Runner

    if out_format == "wds":
        pytest.importorskip("pyarrow", reason="--format wds needs pyarrow (fpncli[wds])")
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(np.full((40, 60, 3), i * 40, np.uint8)).save(folder / f"im{i}.png")
    out = tmp_path / "out"
    real, calls = Runner.submit, []

    def submit(self, items, result):  # the third batch's writer thread cannot start
        calls.append(items)
        if len(calls) == 3:
            raise RuntimeError("can't start new thread")
        return real(self, items, result)

    monkeypatch.setattr(Runner, "submit", submit)
    args = ["extract", str(folder), "-o", str(out), *SMALL, "--workers", "1", "--writers", "1",
            "--no-heatmaps", "--no-overview", "--format", out_format]  # fmt: skip
    if out_format == "wds":
        args += ["--shard-size", "1B"]  # a shard per image: the two written are committed
    result = runner.invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert lines[-1] == "Error: can't start new thread"
    assert lines[-3].startswith("stopped by an error: 2 image(s) written by this run, 0 failed")
    assert "3 of 5 left" in lines[-3]
    log = json.loads((out / "run.json").read_text())
    assert (log["total"], log["done"], log["failed"]) == (5, 2, [])
    assert log["aborted"] == "can't start new thread"
    words = shlex.split(lines[-2].removeprefix("resume with: "))
    assert words[:2] == ["fpncli", "extract"]
    monkeypatch.setattr(Runner, "submit", real)
    again = runner.invoke(cli, words[1:], catch_exceptions=False)
    assert again.exit_code == 0 and "done 3, skipped 2" in again.output, again.output


#: ``fpncli ARGS`` with decoding slowed to 0.2 s an image, so that a signal sent once the first
#: image is written lands with most of the run still to do
SLOW_CLI = SLOW_DECODING + (
    "from fpncli.cli import cli\ncli.main(sys.argv[1:], prog_name='fpncli')\n"
)


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP (Windows)")
@pytest.mark.parametrize("ignored", [False, True], ids=["hangup", "nohup"])
def test_sighup_ends_extract_as_ctrl_c_unless_it_is_ignored(tmp_path, ignored):
    """SIGHUP (the terminal closed, ssh dropped) ends ``extract`` as Ctrl-C does: run.json
    records the interrupted run, the resume command is printed, exit code 130. Under ``nohup``
    (SIGHUP ignored when the command starts) it stays ignored: the run goes on to the end."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(12):
        Image.fromarray(np.full((40, 60, 3), i * 20, np.uint8)).save(folder / f"im{i:02d}.png")
    out = tmp_path / "out"
    script = tmp_path / "slow_cli.py"
    script.write_text(SLOW_CLI)
    root = Path(fpncli.api.__file__).resolve().parents[1]  # this checkout, for the imports
    env = dict(os.environ, FPNCLI_HOME=str(tmp_path / "home"), PYTHONPATH=str(root))
    cmd = [sys.executable, str(script), "extract", str(folder), "-o", str(out), *SMALL,
           "--workers", "1", "--no-heatmaps", "--no-overview"]  # fmt: skip

    def nohup():
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # kept across exec, as nohup does

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=nohup if ignored else None)  # fmt: skip
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not list(out.glob("*/manifest.json")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGHUP)
    stdout, stderr = (s.decode() for s in proc.communicate(timeout=180))
    assert "Traceback" not in stderr
    log = json.loads((out / "run.json").read_text())
    if ignored:
        assert proc.returncode == 0, stderr
        assert log["aborted"] is None and log["done"] == 12
        return
    assert proc.returncode == 130, stderr
    assert "resume with: fpncli extract" in stderr
    assert log["aborted"].startswith("interrupted (Ctrl-C, SIGTERM or SIGHUP)")
    assert log["total"] == 12 and 1 <= log["done"] < 12


def test_help_states_the_real_defaults_and_the_cpu_precision_rules(runner):
    from fpncli.io.pillow_open import DEFAULT_MAX_PIXELS

    text = " ".join(runner.invoke(cli, ["extract", "--help"]).output.split())
    assert f"{DEFAULT_MAX_PIXELS:,}" in text
    assert "AMX" in text and "1% relative error" in text
    bench_help = " ".join(runner.invoke(cli, ["bench", "--help"]).output.split())
    assert "AMX" in bench_help and "skipped" in bench_help


def test_auto_processes_share_a_gpu_only_where_it_pays():
    """One process per 4 cores and 16 GB of GPU memory, at most 4, for 1,000 images or more on
    CUDA (an H200 with 16 cores: heatmaps at 98 images/s in one process, 191 in three, 224 in
    four); never on a CPU."""
    import torch

    from fpncli.run.multi import auto_processes

    gpu = torch.device("cuda", 0)
    assert auto_processes(gpu, 5000, cores=16, gpu_gib=80) == 4
    assert auto_processes(gpu, 5000, cores=64, gpu_gib=80) == 4  # at most 4
    assert auto_processes(gpu, 5000, cores=12, gpu_gib=80) == 3
    assert auto_processes(gpu, 5000, cores=8, gpu_gib=80) == 2
    assert auto_processes(gpu, 5000, cores=7, gpu_gib=80) == 1
    assert auto_processes(gpu, 5000, cores=16, gpu_gib=24) == 1  # not 2 models' memory
    assert auto_processes(gpu, 5000, cores=16, gpu_gib=40) == 2
    assert auto_processes(gpu, 999, cores=16, gpu_gib=80) == 1  # starting workers costs seconds
    assert auto_processes(gpu, None, cores=16, gpu_gib=80) == 4  # bench: start-up not timed
    # .npy written: the disk bounds the run (H100: every output 13.0 images/s in one, 11.7 in 3)
    assert auto_processes(gpu, 5000, npy=True, cores=16, gpu_gib=80) == 1
    assert auto_processes(torch.device("cpu"), 5000, cores=64, gpu_gib=80) == 1


def test_worker_devices_follow_processes_gpus_and_launchers(monkeypatch, capsys):
    """``--processes N`` repeats each ``--gpus`` entry (or the run's device); ``auto`` keeps
    ``--gpus``, and without it gives a large CUDA run ``auto_processes`` workers, with a note,
    except where auto is off (Ray, shards) or a launcher made the processes (torchrun, SLURM)."""
    import torch

    import fpncli.run.multi
    from fpncli.cli.extract_checks import _worker_devices

    monkeypatch.setattr(fpncli.run.multi, "usable_cores", lambda: 16)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda d: type("P", (), {"total_memory": 80 * 2**30}))  # fmt: skip
    gpu, cpu = torch.device("cuda", 1), torch.device("cpu")
    assert _worker_devices([], 2, gpu, 10, auto=True) == ["cuda:1", "cuda:1"]
    assert _worker_devices(["cuda:0", "cuda:1"], 2, gpu, 10, auto=True) == [
        "cuda:0", "cuda:0", "cuda:1", "cuda:1"]  # fmt: skip
    assert _worker_devices(["cuda:1"], 1, gpu, 5000, auto=True) == ["cuda:1"]  # --gpus 1,
    assert _worker_devices([], 1, gpu, 5000, auto=True, env={}) == []  # this process
    assert _worker_devices(["cuda:0"], None, gpu, 5000, auto=True, env={}) == ["cuda:0"]
    assert _worker_devices([], None, gpu, 5000, auto=True, env={}) == ["cuda:1"] * 4
    assert "4 worker processes share cuda:1 (--processes 1 runs one)" in capsys.readouterr().err
    assert _worker_devices([], None, gpu, 999, auto=True, env={}) == []
    assert _worker_devices([], None, gpu, 5000, auto=True, env={}, npy=True) == []
    assert _worker_devices([], 3, gpu, 5000, auto=True, env={}, npy=True) == ["cuda:1"] * 3
    assert _worker_devices([], None, gpu, 5000, auto=False, env={}) == []
    for launcher in ("LOCAL_RANK", "SLURM_LOCALID", "RANK"):
        assert _worker_devices([], None, gpu, 5000, auto=True, env={launcher: "0"}) == []
    assert _worker_devices([], None, cpu, 5000, auto=True, env={}) == []


def test_worker_processes_get_the_gpu_with_its_index(monkeypatch):
    """``--device auto`` or ``cuda`` on a GPU machine: the device that worker processes get is
    ``cuda:N`` (``LOCAL_RANK``'s, as a run in this process uses), never a bare ``cuda``, which
    each worker's ``torch.cuda.set_device`` would refuse before extracting anything."""
    import torch

    from fpncli.cli.extract_checks import _checked_device, _worker_devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for name in ("LOCAL_RANK", "SLURM_LOCALID", "RANK", "WORLD_SIZE", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    dev = _checked_device("auto", "fp32")
    assert dev == torch.device("cuda", 0)
    assert _worker_devices([], 2, dev, 10, auto=True) == ["cuda:0", "cuda:0"]
    assert _checked_device("cuda", "fp32") == torch.device("cuda", 0)
    assert _checked_device("cuda:1", "fp32") == torch.device("cuda", 1)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert _checked_device("auto", "fp32") == torch.device("cuda", 1)
    assert _checked_device("cuda:0", "fp32") == torch.device("cuda", 0)  # named: it wins


def test_one_listed_gpu_is_the_device_of_this_process(monkeypatch, tmp_path):
    """``--gpus 1,`` (GPU 1 alone: one entry, so no worker process) runs here on GPU 1, not on
    ``--device``'s GPU 0; ``--gpus 1`` (one GPU) is GPU 0."""
    import importlib

    import click
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    asked = []

    def load_model(weights, device, seed):
        asked.append(device)
        raise click.ClickException("stop here")

    monkeypatch.setattr(importlib.import_module("fpncli.cli.extract"), "_load_model", load_model)
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(tmp_path / "a.png")
    for gpus in ("1,", "1"):
        args = ["extract", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--weights",
                "random", "--gpus", gpus]  # fmt: skip
        assert "stop here" in CliRunner().invoke(cli, args).output
    assert asked == ["cuda:1", "cuda:0"]


def test_extract_runs_the_auto_workers_with_one_summary(monkeypatch, tmp_path):
    """The path a large CUDA folder takes by default, on the CPU (``auto_processes`` made to say
    2): the weights are loaded here on the CPU for their identity only, two spawned workers
    extract, and the run ends with one summary and one run log."""
    import fpncli.run.multi

    monkeypatch.setattr(fpncli.run.multi, "auto_processes", lambda device, images, npy: 2)
    for i in range(3):
        Image.fromarray(np.full((40, 48, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    out = tmp_path / "out"
    args = ["extract", str(tmp_path), "-o", str(out), "--weights", "random", "--levels", "p6",
            "--no-overview", "--min-size", "64", "--max-size", "96"]  # fmt: skip
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "2 worker processes share cpu" in result.output
    assert "done 3, skipped 0 (already complete), failed 0 of 3" in result.output
    log = json.loads((out / "run.json").read_text())
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["0", "1", "2"]
    assert log["done"] == 3 and log["failed"] == []


def test_processes_is_checked_before_anything_runs(tmp_path):
    """``--processes`` takes auto or a count; above 1 it needs CUDA and the local engine writing
    folders: a one-line usage error, and no output folder made."""
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(image)
    runner = CliRunner()
    for args, message in (
        (["--processes", "0"], "expected auto or a number of at least 1, got '0'"),
        (["--processes", "two"], "expected auto or a number of at least 1"),
        (["--processes", "2", "--device", "cpu"], "--processes above 1 needs CUDA"),
        (["--processes", "2", "--format", "wds"], "--processes is for --engine local writing"),
    ):
        out = tmp_path / "out"
        result = runner.invoke(cli, ["extract", str(image), "-o", str(out), "--weights",
                                     "random", *args])  # fmt: skip
        assert result.exit_code == 2, result.output
        assert message in result.output and not out.exists()
    result = runner.invoke(cli, ["extract", str(image), "-o", str(tmp_path / "one"), "--weights",
                                 "random", "--device", "cpu", "--processes", "1", "--levels",
                                 "p6"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "one" / "a" / "p6.npy").is_file()


def test_gpus_takes_a_count_or_a_list_with_repeats():
    """``--gpus``: all, N (the first N GPUs) or a list (one worker process per entry: 0,0 is two
    processes sharing GPU 0); anything else is a usage error naming what is there."""
    import click

    from fpncli.cli.extract_checks import _gpu_devices

    assert _gpu_devices(None, "auto", count=2) == []
    assert _gpu_devices("all", "auto", count=2) == ["cuda:0", "cuda:1"]
    assert _gpu_devices("2", "cuda", count=2) == ["cuda:0", "cuda:1"]
    assert _gpu_devices("1,1,0", "auto", count=2) == ["cuda:1", "cuda:1", "cuda:0"]
    assert _gpu_devices("0,0", "auto", count=1) == ["cuda:0", "cuda:0"]
    for gpus, message in [  # naming --gpus ("Invalid value: 3 GPUs asked for" before)
        ("3", "3 GPUs asked for, 2 available"),
        ("0,2,5", "no GPU 2, 5 here: 2 available (0..1)"),
        ("0,,1", "expected all, a number or a list of GPU indices such as 0,0,1, got '0,,1'"),
    ]:
        with pytest.raises(click.BadParameter) as refused:
            _gpu_devices(gpus, "auto", count=2)
        assert refused.value.format_message() == f"Invalid value for '--gpus': {message}"
    assert _gpu_devices("1,", "auto", count=2) == ["cuda:1"]  # GPU 1 alone
    with pytest.raises(click.UsageError, match="--gpus needs CUDA"):
        _gpu_devices("0,0", "cpu", count=2)


def test_ctrl_c_in_a_wds_run_counts_the_open_shards_images_as_left(runner, tmp_path, monkeypatch):
    """The open shard is dropped on Ctrl-C: its images were counted written before."""
    pytest.importorskip("pyarrow")
    folder, _ = _five_photos_interrupted_on_the_fourth(tmp_path, monkeypatch)
    args = ["extract", str(folder), "-o", str(tmp_path / "out"), *SMALL, "--workers", "1",
            "--no-heatmaps", "--no-overview", "--format", "wds"]  # fmt: skip
    result = runner.invoke(cli, args)
    assert result.exit_code == 130
    assert "interrupted: 0 image(s) written by this run, 0 failed" in result.stderr
    assert "5 of 5 left" in result.stderr and "nor the 3 in the unfinished shard" in result.stderr
    log = json.loads((tmp_path / "out" / "run.json").read_text())
    assert (log["done"], log["total"]) == (0, 5) and log["aborted"].startswith("interrupted")


def test_ctrl_c_in_a_resumed_wds_run_logs_the_whole_run(runner, tmp_path, monkeypatch):
    """run.json of a wds run interrupted after a resume counts every image and those already in
    the index (it had the inner run's total and skipped: 3 and 0 of 5 with 2 done)."""
    pytest.importorskip("pyarrow")

    folder, real = _five_photos_interrupted_on_the_fourth(tmp_path, monkeypatch)
    out = tmp_path / "out"
    common = ["-o", str(out), *SMALL, "--workers", "1", "--no-heatmaps", "--no-overview",
              "--format", "wds"]  # fmt: skip
    first = runner.invoke(cli, ["extract", str(folder / "im0.png"), str(folder / "im1.png"),
                                *common], catch_exceptions=False)  # fmt: skip
    assert first.exit_code == 0, first.output
    _interrupt_decoding_on(monkeypatch, real, 2)
    result = runner.invoke(cli, ["extract", str(folder), *common])
    assert result.exit_code == 130, result.output
    log = json.loads((out / "run.json").read_text())
    assert (log["total"], log["skipped"], log["done"]) == (5, 2, 0), log
    assert log["aborted"].startswith("interrupted")
    assert "0 failed, 2 were already complete; 3 of 5 left" in result.stderr, result.stderr


def test_default_threads_follow_the_cores_this_process_may_use(runner, tmp_path, monkeypatch):
    """In a container or a job given 2 of a node's 64 cores, ``os.cpu_count()`` says 64: the
    default decoding and writing threads follow the CPU affinity (``usable_cores``), as
    ``--processes`` workers' shares already did, not the node's core count."""
    import os

    import fpncli.run.pipeline

    seen = {}

    def capture(jobs, model, options, progress=None, on_plan=None, run_inputs=None):
        seen["options"] = options
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(fpncli.run.pipeline, "run_jobs", capture)
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(tmp_path / "a.png")
    args = ["extract", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), *SMALL]
    assert runner.invoke(cli, args).exit_code == 130
    assert (seen["options"].workers, seen["options"].writers) == (2, 2)
