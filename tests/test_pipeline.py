"""Batch pipeline: discovery order, tree mirroring, collisions, sharding, bad files, resume,
disk estimate and a full disk. Small images and a seeded random R-50."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fpncli
from fpncli.io import outputs
from fpncli.io.outputs import OutputOptions, is_complete
from fpncli.run import pipeline
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


def test_from_list_uses_common_root(tmp_path):
    a, b = tmp_path / "x" / "1" / "a.jpg", tmp_path / "x" / "2" / "b.jpg"
    pairs = discover_inputs([], ["# comment", str(a), "", str(b)])
    assert [p for p, _ in pairs] == [a, b]
    jobs = plan_jobs(pairs, tmp_path / "out")
    assert [j.folder for j in jobs] == [tmp_path / "out" / "1" / "a", tmp_path / "out" / "2" / "b"]


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
    monkeypatch.setattr(pipeline, "_free_bytes", lambda folder: 1000)
    with pytest.raises(InsufficientDiskError, match=r"would write about .* GB .* only"):
        run_jobs(jobs, model, RunOptions(output=SMALL))
    assert not (tmp_path / "out").exists()
    assert run_jobs(jobs, model, RunOptions(output=SMALL, force=True)).done == 1


def test_disk_full_mid_run_stops_cleanly(tmp_path, model, monkeypatch):
    paths = [_image(tmp_path / "in" / f"{i}.png", value=i) for i in range(4)]
    jobs = [Job(p, tmp_path / "out" / p.stem) for p in paths]
    real = outputs.atomic_write_bytes

    def filling(path, data):
        if path.parent.name == "1" and path.name == "p4.npy":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(outputs, "atomic_write_bytes", filling)
    summary = run_jobs(jobs, model, RunOptions(output=SMALL, writers=1))
    assert summary.aborted == "disk full: 1 of 4 done, rerun the same command after freeing space"
    assert summary.failed == []  # a full disk stops the run; it is not the image's fault
    assert is_complete(tmp_path / "out" / "0")
    broken = tmp_path / "out" / "1"
    assert not (broken / "manifest.json").exists()
    assert sorted(p.name for p in broken.iterdir()) == []  # this attempt's files removed


def test_killed_run_resumes_without_redoing(tmp_path):
    src = tmp_path / "in"
    for i in range(6):
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
    assert 1 <= len(finished) < 6
    for folder in out.iterdir():
        if (folder / "manifest.json").exists():
            for level in ("p2", "p3", "p4", "p5", "p6"):
                np.load(folder / f"{level}.npy")  # complete folders hold whole files
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"skipped {len(finished)}" in result.stdout
    for name, mtime in finished.items():
        assert (out / name / "manifest.json").stat().st_mtime_ns == mtime  # not redone
    assert all(is_complete(out / str(i)) for i in range(6))
    assert not list(out.rglob(".*fpncli-tmp*"))


def test_cuda_out_of_memory_splits_the_batch(tmp_path, model, monkeypatch):
    paths = [_image(tmp_path / "in" / f"{i}.png", value=i) for i in range(4)]
    jobs = [Job(p, tmp_path / "out" / p.stem) for p in paths]
    real = pipeline.run_backbone
    sizes = []

    def small_gpu(model, batch, precision):
        sizes.append(batch.shape[0])
        if batch.shape[0] > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, batch, precision=precision)

    monkeypatch.setattr(pipeline, "run_backbone", small_gpu)
    summary = run_jobs(jobs, model, RunOptions(output=SMALL, batch_size=4))
    assert summary.done == 4 and not summary.failed
    assert sizes == [4, 2, 1, 1, 2, 1, 1]


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
    again = run_on_devices(jobs, model, RunOptions(output=SMALL), ["cpu", "cpu"], weights="random")
    assert (again.done, again.skipped) == (0, 4)
