"""Hostile conditions (issue 8): concurrent runs, stale files, full disks, special files,
bombs, forged manifests. Small images and a seeded random R-50."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fpncli
from fpncli.io import outputs
from fpncli.io.outputs import OutputOptions, is_complete
from fpncli.run import pipeline
from fpncli.run.pipeline import Job, RunOptions, run_jobs

SMALL = OutputOptions(min_size=64, max_size=96, save_heatmaps=False, save_overview=False)


@pytest.fixture(scope="module")
def model():
    return fpncli.load_backbone("random")


def _image(path: Path, size=(48, 40), value=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(value)
    Image.fromarray(rng.randint(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _cli(*args: str, env=None) -> list[str]:
    return [sys.executable, "-m", "fpncli", "extract", *args, "--weights", "random",
            "--min-size", "64", "--max-size", "96", "--no-overview", "--workers", "1"]  # fmt: skip


# 1. Two runs into the same -o -------------------------------------------------------------


def test_cleanup_keeps_a_live_runs_temporaries_and_removes_dead_ones(tmp_path, model):
    job = Job(_image(tmp_path / "a.png"), tmp_path / "out" / "a")
    job.folder.mkdir(parents=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout.strip()  # fmt: skip
        live_tmp = job.folder / f".p2.npy.fpncli-tmp.{sleeper.pid}.abcd1234"
        dead_tmp = job.folder / f".p3.npy.fpncli-tmp.{dead}.abcd1234"
        live_tmp.write_bytes(b"half-written by another run")
        dead_tmp.write_bytes(b"left by a killed run")
        assert run_jobs([job], model, RunOptions(output=SMALL)).done == 1
        assert live_tmp.exists()  # another live run's file is not ours to delete
        assert not dead_tmp.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_second_run_waits_for_the_lock_and_skips_what_the_first_finished(
    tmp_path, model, monkeypatch
):
    job = Job(_image(tmp_path / "a.png"), tmp_path / "out" / "a")
    options = RunOptions(output=SMALL)
    real, writing = outputs.atomic_write_bytes, threading.Event()

    def slow(path, data):  # the first run is slow to write its files
        writing.set()
        time.sleep(0.2)
        return real(path, data)

    monkeypatch.setattr(outputs, "atomic_write_bytes", slow)
    results = {}
    first = threading.Thread(target=lambda: results.setdefault(1, run_jobs([job], model, options)))
    first.start()
    assert writing.wait(60)
    second = run_jobs([job], model, options)  # started while the first holds the folder
    first.join()
    assert results[1].done == 1 and results[1].failed == []
    assert second.failed == [] and (second.done, second.skipped) == (0, 1)
    assert is_complete(job.folder)


def test_resume_redoes_a_folder_whose_listed_file_is_missing_or_resized(tmp_path, model):
    jobs = [Job(_image(tmp_path / f"{i}.png", value=i), tmp_path / "out" / str(i)) for i in (0, 1)]
    options = RunOptions(output=SMALL)
    assert run_jobs(jobs, model, options).done == 2
    manifest = json.loads((jobs[0].folder / "manifest.json").read_text())
    assert manifest["files"]["p2.npy"] == (jobs[0].folder / "p2.npy").stat().st_size
    (jobs[0].folder / "p2.npy").unlink()
    with open(jobs[1].folder / "p4.npy", "ab") as f:
        f.write(b"x")
    assert not is_complete(jobs[0].folder) and not is_complete(jobs[1].folder)
    again = run_jobs(jobs, model, options)
    assert (again.done, again.skipped) == (2, 0)
    assert all(is_complete(j.folder) for j in jobs)


def test_concurrent_cli_runs_over_overlapping_inputs(tmp_path):
    src = tmp_path / "in"
    for i in range(5):
        _image(src / f"{i}.png", value=i)
    out = tmp_path / "out"
    env = dict(os.environ, FPNCLI_HOME=str(tmp_path / "home"))
    inputs = [[str(src)], [str(src / f"{i}.png") for i in (4, 3, 2)]]
    procs = [
        subprocess.Popen(_cli(*args, "-o", str(out)), env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for args in inputs
    ]  # fmt: skip
    results = [(p.wait(300), *p.communicate()) for p in procs]
    for rc, stdout, stderr in results:
        assert rc == 0 and "failed 0" in stdout, stderr
    for i in range(5):
        assert is_complete(out / str(i))
        for level in ("p2", "p3", "p4", "p5", "p6"):
            assert np.load(out / str(i) / f"{level}.npy").shape[:2] == (1, 256)
    assert not list(out.rglob(".*fpncli-tmp*"))


# 2, 3. Redo with other settings; the resume key follows symlinks and ".." ----------------


def test_redo_with_other_settings_removes_files_the_new_manifest_does_not_list(tmp_path, model):
    job = Job(_image(tmp_path / "a.png"), tmp_path / "out" / "a")
    first = replace(SMALL, overlay=True)
    assert run_jobs([job], model, RunOptions(output=first)).done == 1
    assert (job.folder / "p2_overlay.png").exists()
    (job.folder / "notes.txt").write_text("the user's own file")
    assert run_jobs([job], model, RunOptions(output=replace(SMALL, levels=("p3",)))).done == 1
    names = sorted(p.name for p in job.folder.iterdir() if not p.name.startswith("."))
    assert names == ["manifest.json", "notes.txt", "p3.npy"]


def test_resume_key_uses_the_resolved_path(tmp_path, model):
    real = tmp_path / "imgs"
    _image(real / "a.png")
    (tmp_path / "link").symlink_to(real)
    options = RunOptions(output=SMALL)
    for named in (real, tmp_path / "imgs" / ".." / "imgs", tmp_path / "link"):
        pairs = pipeline.discover_inputs([str(named)])
        jobs = pipeline.plan_jobs(pairs, tmp_path / "out")
        summary = run_jobs(jobs, model, options)
        assert summary.done + summary.skipped == 1
        if named != real:
            assert summary.skipped == 1, named
    manifest = json.loads((tmp_path / "out" / "a" / "manifest.json").read_text())
    assert manifest["input"]["path"] == str(real / "a.png")  # as first named (absolute)


# 6. A full disk --------------------------------------------------------------------------


def test_a_short_npy_write_is_a_full_disk_and_stops_the_run(tmp_path, model, monkeypatch):
    jobs = [
        Job(_image(tmp_path / f"{i}.png", value=i), tmp_path / "out" / str(i)) for i in range(8)
    ]
    real_save, computed = np.save, []
    real_backbone = pipeline.run_backbone
    full = threading.Event()

    def short_save(f, array, allow_pickle=False):
        if Path(f.name).parent.name == "1" or full.is_set():
            full.set()  # what ndarray.tofile raises on a full disk: an OSError with no errno
            raise OSError(f"{array.size} requested and {array.size // 3} written")
        return real_save(f, array, allow_pickle=allow_pickle)

    def counting(model, batch, precision):
        computed.append(batch.shape[0])
        return real_backbone(model, batch, precision=precision)

    monkeypatch.setattr(outputs.np, "save", short_save)
    monkeypatch.setattr(pipeline, "run_backbone", counting)
    summary = run_jobs(jobs, model, RunOptions(output=SMALL, writers=1, workers=1))
    assert summary.aborted == "disk full: 1 of 8 done, rerun the same command after freeing space"
    assert summary.failed == [] and summary.done == 1
    assert len(computed) < 8  # it stopped at once instead of computing every remaining image
    assert not list((tmp_path / "out").rglob(".*fpncli-tmp*"))
    monkeypatch.setattr(outputs.np, "save", real_save)
    again = run_jobs(jobs, model, RunOptions(output=SMALL))
    assert (again.done, again.skipped, again.failed) == (7, 1, [])
