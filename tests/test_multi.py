"""Worker processes (``run.multi``): they end with their parent, and a run whose worker failed
accounts for every image of that worker's shard. Two CPU workers, tiny images."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest.mock import ANY

import numpy as np
import pytest
from PIL import Image
from slow_decoding import SLOW_DECODING

import fpncli
from fpncli.io.jobs import Job
from fpncli.io.manifest import is_complete
from fpncli.io.outputs import OutputOptions
from fpncli.run.pipeline import RunOptions, run_jobs

SMALL = OutputOptions(min_size=64, max_size=96, save_heatmaps=False, save_overview=False)
ROOT = Path(fpncli.__file__).resolve().parents[1]  # this checkout, for the scripts' imports


#: ``fpncli extract ARGS`` with two worker processes on the CPU (the CLI runs them on GPUs).
#: Ctrl-C raises KeyboardInterrupt in it, as when a terminal's shell starts it, also under a
#: test runner that ignores SIGINT (which its children would inherit)
CLI_ON_TWO_CPU_WORKERS = """
if __name__ == "__main__":
    import signal

    from fpncli.cli import cli

    signal.signal(signal.SIGINT, signal.default_int_handler)

    extract = sys.modules["fpncli.cli.extract"]  # (fpncli.cli.extract is the command)
    extract._worker_devices = lambda *args, **kwargs: ["cpu", "cpu"]
    cli.main(sys.argv[1:], prog_name="fpncli")
"""

#: ``run_on_devices`` over two CPU workers from the library, printing at its first report
LIBRARY_ON_TWO_CPU_WORKERS = """
if __name__ == "__main__":
    from pathlib import Path

    from fpncli.api import load_backbone
    from fpncli.io.jobs import Job
    from fpncli.io.outputs import OutputOptions
    from fpncli.run.multi import run_on_devices
    from fpncli.run.steps import RunOptions

    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    jobs = [Job(p, out / p.stem) for p in sorted(src.glob("*.png"))]
    output = OutputOptions(min_size=64, max_size=96, save_heatmaps=False, save_overview=False)
    run_on_devices(jobs, load_backbone("random"), RunOptions(output=output, workers=1),
                   ["cpu", "cpu"], weights="random", progress=lambda p: print("report", flush=True))
"""


def _images(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        rng = np.random.RandomState(i)
        paths.append(folder / f"{i:02d}.png")
        Image.fromarray(rng.randint(0, 255, (40, 48, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def _script(tmp_path: Path, text: str) -> tuple[list[str], dict]:
    """The command and environment that run ``text`` with slow decoding, on this checkout."""
    script = tmp_path / "run_workers.py"
    script.write_text(SLOW_DECODING + text)
    env = dict(os.environ, FPNCLI_HOME=str(tmp_path / "home"), PYTHONPATH=str(ROOT))
    return [sys.executable, str(script)], env


def _workers_of(pid: int) -> list[int]:
    """The worker processes (multiprocessing's spawned children) of process ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) != pid:
                continue
            if b"spawn_main" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue  # not a process, or one that just ended
    return found


def _running(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


linux_only = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")


@linux_only
def test_sigterm_to_extract_ends_its_workers_and_logs_the_run_as_ctrl_c_does(tmp_path):
    """SIGTERM (a scheduler's stop) to ``extract`` running worker processes: the workers end
    with it, run.json records the interrupted run (with the bytes the workers reported
    writing), exit code 130 and the resume command; the resumed run finishes the rest without
    redoing the complete images."""
    _images(tmp_path / "in", 24)
    out = tmp_path / "out"
    cmd, env = _script(tmp_path, CLI_ON_TWO_CPU_WORKERS)
    cmd += ["extract", str(tmp_path / "in"), "-o", str(out), "--weights", "random",
            "--min-size", "64", "--max-size", "96", "--no-heatmaps", "--no-overview",
            "--workers", "1"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not list(out.glob("*/manifest.json")):
        time.sleep(0.05)
    workers = _workers_of(proc.pid)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = (s.decode() for s in proc.communicate(timeout=120))
    assert len(workers) == 2, stderr
    assert proc.returncode == 130, stderr
    assert not [pid for pid in workers if _running(pid)]
    assert "Traceback" not in stderr
    assert "resume with: fpncli extract" in stderr
    complete = [p.name for p in out.iterdir() if is_complete(p)]
    assert 1 <= len(complete) < 24
    log = json.loads((out / "run.json").read_text())
    assert log["aborted"].startswith("interrupted (Ctrl-C, SIGTERM or SIGHUP)")
    assert log["total"] == 24 and 1 <= log["done"] <= len(complete)
    sizes = [_written(out / name) for name in complete]  # each image's files: what it wrote
    assert log["done"] * min(sizes) <= log["bytes_written"] <= log["done"] * max(sizes), log
    assert log["seconds"] > 0
    finished = {name: (out / name / "manifest.json").stat().st_mtime_ns for name in complete}
    # the resumed run decodes at full speed: no signal lands in it
    resume = tmp_path / "resume_workers.py"
    resume.write_text("import sys\n" + CLI_ON_TWO_CPU_WORKERS)  # (SLOW_DECODING imports it)
    again = subprocess.run([cmd[0], str(resume), *cmd[2:]], env=env, capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert f"done {24 - len(complete)}, skipped {len(complete)}" in again.stdout
    for name, mtime in finished.items():
        assert (out / name / "manifest.json").stat().st_mtime_ns == mtime  # not redone


def _written(folder: Path) -> int:
    """The bytes written for the image of a complete ``folder``: its files and manifest."""
    manifest = folder / "manifest.json"
    return sum(json.loads(manifest.read_text())["files"].values()) + manifest.stat().st_size


def _ignores_sigint(pid: int) -> bool:
    """Whether process ``pid`` ignores SIGINT (its SigIgn mask)."""
    for line in (Path("/proc") / str(pid) / "status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGINT - 1) & 1)
    raise AssertionError(f"no SigIgn line for process {pid}")


def _extract_on_two_workers(tmp_path: Path, images: int) -> tuple[list[str], dict, Path]:
    """The command that runs extract on ``images`` tiny images on two CPU workers, decoding
    slowly; its environment and output folder."""
    _images(tmp_path / "in", images)
    out = tmp_path / "out"
    cmd, env = _script(tmp_path, CLI_ON_TWO_CPU_WORKERS)
    cmd += ["extract", str(tmp_path / "in"), "-o", str(out), "--weights", "random",
            "--min-size", "64", "--max-size", "96", "--no-heatmaps", "--no-overview",
            "--workers", "1"]  # fmt: skip
    return cmd, env, out


@linux_only
def test_ctrl_c_while_the_workers_start_ends_the_run_without_their_tracebacks(tmp_path):
    """Ctrl-C at a terminal (SIGINT to the whole process group) while the workers still start
    (import torch): they ignore it until they run, the parent ends them, and the run ends with
    its own lines (what was done, the resume command) and exit code 130, not with the
    workers' tracebacks among them. Its log, with no progress reported, has the time the run
    took until then."""
    cmd, env, out = _extract_on_two_workers(tmp_path, 8)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip
    workers: list[int] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None and len(workers) < 2:
        workers = _workers_of(proc.pid)
    # the parent ignores it too while it starts them (milliseconds)
    while time.monotonic() < deadline and proc.poll() is None and _ignores_sigint(proc.pid):
        time.sleep(0.001)
    ignoring = [_ignores_sigint(pid) for pid in workers]
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = (s.decode() for s in proc.communicate(timeout=120))
    assert len(workers) == 2, stderr
    assert ignoring == [True, True]  # (they start running only after seconds of imports)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert stderr.splitlines()[-2].startswith("interrupted: 0 image(s) written by this run")
    assert stderr.splitlines()[-1].startswith("resume with: fpncli extract")
    assert not [pid for pid in workers if _running(pid)]
    log = json.loads((out / "run.json").read_text())
    assert log["aborted"].startswith("interrupted") and log["done"] == 0
    assert log["seconds"] > 0 and log["bytes_written"] == 0


@linux_only
def test_sigint_to_one_running_worker_fails_its_shard_in_one_line(tmp_path):
    """SIGINT to one worker (not its parent) once both run their shards: it stops, its shard's
    images not yet written are failed with one line saying so, no traceback; the other
    worker finishes its shard; exit code 1."""
    cmd, env, out = _extract_on_two_workers(tmp_path, 24)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while (
        time.monotonic() < deadline
        and proc.poll() is None
        and not (
            (out / "00" / "manifest.json").exists() and (out / "01" / "manifest.json").exists()
        )
    ):  # the first image of each worker's shard (every other image) is written
        time.sleep(0.05)
    workers = _workers_of(proc.pid)
    if len(workers) == 2:
        os.kill(workers[0], signal.SIGINT)
    stdout, stderr = (s.decode() for s in proc.communicate(timeout=180))
    assert len(workers) == 2, stderr
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    failed = [ln for ln in stderr.splitlines() if ln.startswith("failed: ")]
    assert failed and all(
        re.search(r": not extracted: worker [12] of 2, on cpu: interrupted \(SIGINT\)$", ln)
        for ln in failed
    ), failed
    shard = {int(ln.split("/")[-1][:2]) % 2 for ln in failed}
    assert len(shard) == 1  # one worker's images
    others = [p for p in sorted((tmp_path / "in").iterdir()) if int(p.stem) % 2 not in shard]
    assert all(is_complete(out / p.stem) for p in others)  # the other worker's shard is done
    assert re.search(r"stopped early: worker [12] of 2, on cpu: interrupted \(SIGINT\)", stderr)
    # said when it happened, not only at the end (a Ctrl-C then would have dropped it)
    assert "the other workers go on, its unfinished images are listed at the end" in stderr
    # run.json counts the bytes the interrupted worker wrote too (it counted only the others')
    log = json.loads((out / "run.json").read_text())
    disk = sum(f.stat().st_size for d in out.iterdir() if is_complete(d) for f in d.iterdir())
    assert abs(log["bytes_written"] - disk) <= 0.01 * disk, (log["bytes_written"], disk)


def test_workers_of_a_killed_parent_stop_by_themselves(tmp_path):
    """SIGKILL to a process running ``run_on_devices`` (no handler of its own can act): its
    workers notice and end at once, quietly, instead of running their shards for nobody (and
    failing to report each image with a BrokenPipeError traceback)."""
    _images(tmp_path / "in", 40)
    out = tmp_path / "out"
    cmd, env = _script(tmp_path, LIBRARY_ON_TWO_CPU_WORKERS)
    proc = subprocess.Popen(cmd + [str(tmp_path / "in"), str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    assert proc.stdout.readline() == b"report\n"  # the workers are running their shards
    proc.kill()
    # the workers hold the pipes' write ends: the end of the output is the end of the workers
    _, stderr = proc.communicate(timeout=120)
    complete = [p for p in out.iterdir() if is_complete(p)]
    assert 1 <= len(complete) < 40
    assert b"Traceback" not in stderr, stderr.decode()


def test_a_failed_workers_complete_images_are_counted_as_complete(tmp_path):
    """A resumed run whose second worker fails at its start (a GPU that cannot be used): the
    images of its shard complete from the earlier run count as skipped, the others as failed
    with its reason; every image is counted once."""
    from fpncli.run.multi import run_on_devices

    model = fpncli.load_backbone("random")
    jobs = [Job(p, tmp_path / "out" / p.stem) for p in _images(tmp_path / "in", 4)]
    options = RunOptions(output=SMALL, workers=1)
    assert run_jobs(jobs[:2], model, options).done == 2  # one image of each worker's shard
    summary = run_on_devices(jobs, model, options, ["cpu", "cuda:7"], weights="random")
    assert (summary.total, summary.done, summary.skipped) == (4, 1, 2)
    assert [(Path(p).name, why) for p, why in summary.failed] == [("03.png", ANY)]
    assert "cuda:7" in summary.failed[0][1] and "cuda:7" in summary.aborted


def test_the_run_records_its_last_folder_once_not_each_worker_its_own(tmp_path):
    """Each worker recorded its own shard's last folder as the latest extraction (``fpncli
    show`` with no target): whichever worker ended last won, and the record listed both. The
    parent records the run's, once, as one process does: the last folder written, else (all
    complete already) the run's last image's."""
    from fpncli.io.latest import recent_extractions
    from fpncli.run.multi import run_on_devices

    model = fpncli.load_backbone("random")
    jobs = [Job(p, tmp_path / "out" / p.stem) for p in _images(tmp_path / "in", 4)]
    options = RunOptions(output=SMALL, workers=1)
    reports = []  # (the workers' progress reports, merged here as the CLI's bar has them)
    summary = run_on_devices(jobs, model, options, ["cpu", "cpu"], weights="random",
                             progress=reports.append)  # fmt: skip
    assert summary.done == 4 and reports[-1].todo == 4
    # the folder written last, whichever worker wrote it
    written = max((tmp_path / "out").iterdir(), key=lambda f: (f / "manifest.json").stat().st_mtime)
    written = written.resolve()
    assert recent_extractions() == [written]
    again = run_on_devices(jobs[::-1], model, options, ["cpu", "cpu"], weights="random")
    assert (again.done, again.skipped) == (0, 4)
    assert recent_extractions() == [(tmp_path / "out" / "00").resolve(), written]


def test_the_workers_summaries_merged_keep_the_folder_written_last():
    """--gpus/--processes recorded the folder of the last worker (in device order) that wrote
    any, not the folder written last: with an odd number of images the first worker writes the
    last one, and show drew the one before it."""
    from fpncli.run.multi import _merge
    from fpncli.run.summary import RunSummary

    first = RunSummary(done=3, last_folder=Path("out/04"), last_written_at=20.0)
    second = RunSummary(done=2, last_folder=Path("out/03"), last_written_at=10.0)
    idle = RunSummary(skipped=1, last_folder=Path("out/00"), last_written_at=None)
    for parts in ([first, second, idle], [second, first, idle], [idle, second, first]):
        assert _merge(parts).last_folder == Path("out/04")


#: in each worker (the parent plans through ``multi``'s own name): once the worker has planned
#: its shard, another run into the same -o writes every folder of it, with the outputs of
#: another file (the folder ``$THEIRS``)
OTHER_RUN_AFTER_THE_PLAN = """
import os, shutil, sys
import fpncli.run.pipeline as pipeline

planned_by = pipeline.plan_pending


def plan_then_another_run(jobs, *args):
    planned = planned_by(jobs, *args)
    for job in jobs:
        shutil.copytree(os.environ["THEIRS"], job.folder)
    return planned


pipeline.plan_pending = plan_then_another_run
"""


def test_workers_never_replace_another_files_outputs_written_since_their_plan(tmp_path):
    """Worker processes write through the same locked check as one process: folders that
    another run filled with another file's complete outputs after the workers planned them
    free are kept, byte for byte, and their images fail (exit 1), not "done 4" over the
    other run's extraction."""
    other = _images(tmp_path / "other", 1)[0]
    theirs = tmp_path / "theirs"
    assert run_jobs([Job(other, theirs)], fpncli.load_backbone("random"),
                    RunOptions(output=SMALL, workers=1)).done == 1  # fmt: skip
    kept = {p.name: p.read_bytes() for p in theirs.iterdir()}
    _images(tmp_path / "in", 4)
    script = tmp_path / "run_workers.py"
    script.write_text(OTHER_RUN_AFTER_THE_PLAN + CLI_ON_TWO_CPU_WORKERS)
    env = dict(os.environ, FPNCLI_HOME=str(tmp_path / "home"), PYTHONPATH=str(ROOT),
               THEIRS=str(theirs))  # fmt: skip
    cmd = [sys.executable, str(script), "extract", str(tmp_path / "in"), "-o",
           str(tmp_path / "out"), "--weights", "random", "--min-size", "64", "--max-size", "96",
           "--no-heatmaps", "--no-overview", "--workers", "1"]  # fmt: skip
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    assert "done 0, skipped 0 (already complete), failed 4 of 4" in result.stdout, result.stderr
    failed = [ln for ln in result.stderr.splitlines() if ln.startswith("failed: ")]
    assert len(failed) == 4 and all(
        f"holds the outputs of another file, {os.path.realpath(other)}, not of the file (another "
        "run into the same -o wrote them): they are kept" in ln
        for ln in failed
    ), result.stderr
    for i in range(4):
        folder = tmp_path / "out" / f"{i:02d}"
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == kept


#: stands in for torch.compile, in the parent and in each worker (a real one takes minutes on
#: two cores): the run goes on as compiled, the model eager
NO_COMPILE = """
import sys
import fpncli.run.pipeline as pipeline

pipeline.model_for_run = lambda model, precision, compile: model
"""


def test_a_compile_warning_is_said_once_for_all_the_workers(tmp_path):
    """--compile without --canvas on two workers that each see two padded sizes: the warning
    that every size compiles the model again is said once for the run (by the parent, in the
    run's log format), not once per worker."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i, (width, height) in enumerate([(48, 40), (48, 40), (40, 56), (40, 56)]):  # 2 per shard
        Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(folder / f"{i:02d}.png")
    script = tmp_path / "run_workers.py"
    script.write_text(NO_COMPILE + CLI_ON_TWO_CPU_WORKERS)
    env = dict(os.environ, FPNCLI_HOME=str(tmp_path / "home"), PYTHONPATH=str(ROOT))
    cmd = [sys.executable, str(script), "extract", str(folder), "-o", str(tmp_path / "out"),
           "--weights", "random", "--min-size", "64", "--max-size", "96", "--no-heatmaps",
           "--no-overview", "--workers", "1", "--batch-size", "1", "--compile"]  # fmt: skip
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "done 4," in result.stdout, result.stdout
    warnings = [ln for ln in result.stderr.splitlines() if "--compile without --canvas" in ln]
    assert len(warnings) == 1, result.stderr
    assert warnings[0].startswith("WARNING fpncli.run.runner: --compile without --canvas")


def test_the_kernels_once_per_process_warnings_are_said_once_per_run(monkeypatch, caplog):
    """NNPACK's and cuDNN's refusals, which a process says once (per input shape, per layer,
    per device), are marked once per run: relayed from two workers, the run says each once."""
    import logging

    import torch

    from fpncli.model import cpu_kernels, cuda_kernels, layers
    from fpncli.run.summary import WarningRelay, say_relayed

    def refuse(*args, **kwargs):
        raise RuntimeError("refused here")

    relayed: list[tuple] = []
    relay, logger = WarningRelay(relayed.append), logging.getLogger("fpncli")
    logger.addHandler(relay)
    try:
        conv = layers.Conv2d(4, 4, kernel_size=3, padding=1)
        conv.kernel = cpu_kernels.WINOGRAD
        monkeypatch.setattr(cpu_kernels, "_FAILED", set())
        monkeypatch.setattr(cpu_kernels, "_winograd", refuse)
        with torch.no_grad():
            assert cpu_kernels.conv_forward(conv, torch.zeros(1, 4, 8, 8)) is None
        layers._unfuse(conv, torch.zeros(1, 4, 8, 8), RuntimeError("CUDNN_STATUS_NOT_SUPPORTED"))
        monkeypatch.setattr(torch.cuda, "device", refuse)
        assert not cuda_kernels.fusion_works.__wrapped__(torch.device("cuda"), torch.float16)
    finally:
        logger.removeHandler(relay)
    assert len(relayed) == 3
    caplog.clear()
    caplog.set_level(logging.WARNING)
    said: set[str] = set()
    for record in relayed * 2:  # two workers that said the same
        say_relayed(record, said)
    assert [r.getMessage() for r in caplog.records] == [
        "NNPACK failed on a (4, 8, 8) input (refused here); using oneDNN for that shape",
        "cuDNN's fused kernel failed on a (1, 4, 8, 8) input (CUDNN_STATUS_NOT_SUPPORTED); plain "
        "ops for this layer",
        "cuDNN's fused convolutions do not run here (refused here); not used",
    ]


def test_a_dead_workers_end_is_said_with_the_signal_that_killed_it():
    """A worker's exit code as its death is reported: a negative one by its signal's name,
    also for a number without one."""
    from fpncli.run.multi import _ended

    assert _ended(1) == "exit code 1"
    assert _ended(-9) == "killed by SIGKILL"
    assert _ended(-int(signal.SIGTERM)) == "killed by SIGTERM"
    assert _ended(-1000) == "killed by signal 1000"
    assert _ended(None) == "its pipe closed, it had not exited"


def test_a_run_stopped_midway_records_the_folder_its_workers_wrote_last(tmp_path):
    """A Ctrl-C or SIGTERM to a --gpus/--processes run left latest.json as it was (an older,
    unrelated output, or none): the parent recorded the run's last folder only when it ended
    normally. Now it records the newest its workers reported writing."""
    from fpncli.io.latest import recent_extractions, record_latest
    from fpncli.io.manifest import is_complete
    from fpncli.run.multi import run_on_devices

    older = tmp_path / "older"
    older.mkdir()
    record_latest(older)
    model = fpncli.load_backbone("random")
    jobs = [Job(p, tmp_path / "out" / p.stem) for p in _images(tmp_path / "in", 6)]

    def interrupt(report):  # the parent's Ctrl-C, once a worker has written an image
        if report.done:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_on_devices(jobs, model, RunOptions(output=SMALL, workers=1), ["cpu", "cpu"],
                       weights="random", progress=interrupt)  # fmt: skip
    latest = recent_extractions()[0]
    assert latest in {job.folder.resolve() for job in jobs} and is_complete(latest)
