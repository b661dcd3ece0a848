"""Hostile conditions (issue 8): concurrent runs, stale files, full disks, special files,
bombs, forged manifests. Small images and a seeded random R-50."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from pagecache import fs_type, resident_pages
from PIL import Image

import fpncli
from fpncli.io import atomic, image_writer
from fpncli.io.guard import is_disk_full
from fpncli.io.manifest import is_complete
from fpncli.io.outputs import OutputOptions
from fpncli.run import pipeline, runner, steps
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
    real, writing = image_writer.atomic_write_bytes, threading.Event()

    def slow(path, data):  # the first run is slow to write its files
        writing.set()
        time.sleep(0.2)
        return real(path, data)

    monkeypatch.setattr(image_writer, "atomic_write_bytes", slow)
    results = {}
    first = threading.Thread(target=lambda: results.setdefault(1, run_jobs([job], model, options)))
    first.start()
    assert writing.wait(60)
    second = run_jobs([job], model, options)  # started while the first holds the folder
    first.join()
    assert results[1].done == 1 and results[1].failed == []
    assert second.failed == [] and (second.done, second.skipped) == (0, 1)
    assert is_complete(job.folder)


def _race(tmp_path, model, monkeypatch):
    """Two images to run, a complete extraction of the first made elsewhere (``finish()`` copies
    it into the run's folder, as if another run finished it), and the jobs the model sees."""
    a, b = _image(tmp_path / "a.png", value=1), _image(tmp_path / "b.png", value=2)
    options = RunOptions(output=SMALL, workers=1, writers=1)
    assert run_jobs([Job(a, tmp_path / "ref" / "a")], model, options).done == 1
    jobs = [Job(a, tmp_path / "out" / "a"), Job(b, tmp_path / "out" / "b")]
    seen, real_infer = [], runner.infer_batch

    def infer(model, items, *args, **kwargs):
        seen.extend(it.job.path.name for it in items)
        return real_infer(model, items, *args, **kwargs)

    monkeypatch.setattr(runner, "infer_batch", infer)

    def finish():
        shutil.copytree(tmp_path / "ref" / "a", jobs[0].folder)

    return jobs, options, seen, finish


def test_an_image_another_run_completes_before_decoding_is_skipped_not_computed(
    tmp_path, model, monkeypatch
):
    jobs, options, seen, finish = _race(tmp_path, model, monkeypatch)
    real_plan, real_decode, decoded = pipeline.plan_pending, steps.decode, []

    def plan(*args):  # listed as to do, then the other run completes it
        planned = real_plan(*args)
        finish()
        return planned

    def decode(job, *args, **kwargs):
        decoded.append(job.path.name)
        return real_decode(job, *args, **kwargs)

    monkeypatch.setattr(pipeline, "plan_pending", plan)
    monkeypatch.setattr(runner, "decode", decode)
    summary = run_jobs(jobs, model, options)
    assert (summary.done, summary.skipped, summary.failed) == (1, 1, [])
    assert decoded == ["b.png"] and seen == ["b.png"]
    assert all(is_complete(j.folder) for j in jobs)


def test_an_image_another_run_completes_while_decoded_never_reaches_the_model(
    tmp_path, model, monkeypatch
):
    jobs, options, seen, finish = _race(tmp_path, model, monkeypatch)
    real_decode = steps.decode

    def decode(job, *args, **kwargs):  # the other run completes it while this one decodes it
        item = real_decode(job, *args, **kwargs)
        if job.path.name == "a.png":
            finish()
        return item

    monkeypatch.setattr(runner, "decode", decode)
    summary = run_jobs(jobs, model, options)
    assert (summary.done, summary.skipped, summary.failed) == (1, 1, [])
    assert seen == ["b.png"]
    assert all(is_complete(j.folder) for j in jobs)


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


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_run_never_replaces_another_files_outputs_written_since_its_plan(
    tmp_path, model, monkeypatch
):
    """Two runs into one -o, each with its own ``a.png`` (``x/a.png``, ``y/a.png``): both
    planned ``out/a`` free, and the second to write it replaced the first's outputs, both
    saying done (exit 0), one extraction gone. The folder is checked again once locked: the
    other file's complete outputs are kept, byte for byte, and the image fails with a line
    naming the folder, that file and what to do. A file of the same run, the same file through
    a hard link, and ``overwrite`` still replace them, as the plan does."""
    x, y = _image(tmp_path / "x" / "a.png"), _image(tmp_path / "y" / "a.png", value=1)
    theirs, folder = tmp_path / "theirs" / "a", tmp_path / "out" / "a"
    options = RunOptions(output=SMALL)
    assert run_jobs([Job(y, theirs)], model, options).done == 1  # the other run's outputs
    real = pipeline.plan_pending

    def other_run_meanwhile(jobs, *args):
        planned = real(jobs, *args)  # folder free: planned
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(theirs, folder)  # the other run writes it before this one does
        return planned

    monkeypatch.setattr(pipeline, "plan_pending", other_run_meanwhile)
    summary = run_jobs([Job(x, folder)], model, options)
    assert (summary.done, summary.skipped) == (0, 0)
    assert summary.failed == [(str(x), (
        f"{folder} holds the outputs of another file, {os.path.realpath(y)}, not of {x} (another "
        "run into the same -o wrote them): they are kept, and this image is not extracted; "
        "extract it with another -o"
    ))]  # fmt: skip
    assert _files(folder) == _files(theirs)
    linked = tmp_path / "linked.png"
    os.link(y, linked)  # the same file as the folder's, through another path: its own outputs
    for job, opts, inputs in [
        (Job(x, folder), options, pipeline.RunInputs([Job(x, folder), Job(y, tmp_path / "b")])),
        (Job(linked, folder), options, None),
        (Job(x, folder), replace(options, overwrite=True), None),
    ]:
        shutil.rmtree(folder)  # free when planned, the other file's when written
        summary = run_jobs([job], model, opts, run_inputs=inputs)
        assert (summary.done, summary.failed) == (1, []), job
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["input"]["real_path"] == os.path.realpath(job.path)


#: ``fpncli extract ARGS`` that, once it has planned its run, waits until ``PLANNED`` runs have
#: (each leaves a file in ``$FPNCLI_BARRIER``): runs started together then all write folders
#: they each planned free
PLAN_THEN_WAIT = """
import os, sys, time
from pathlib import Path

import fpncli.run.pipeline as pipeline
from fpncli.cli import cli

real = pipeline.plan_pending


def plan_then_wait(jobs, *args):
    planned = real(jobs, *args)
    barrier = Path(os.environ["FPNCLI_BARRIER"])
    (barrier / str(os.getpid())).touch()
    deadline = time.monotonic() + 120
    while len(list(barrier.iterdir())) < int(os.environ["PLANNED"]) and time.monotonic() < deadline:
        time.sleep(0.02)
    return planned


pipeline.plan_pending = plan_then_wait
cli.main(sys.argv[1:], prog_name="fpncli")
"""


def test_two_cli_runs_of_files_of_one_name_into_one_o_lose_nothing(tmp_path):
    """The reviewer's race for real: two ``extract`` processes, ``x/`` and ``y/`` of 3 photos
    of the same names, into one -o, both planned before either writes. Each folder holds the
    outputs of the run that wrote it first; the other run fails that image (exit 1) instead of
    replacing them and saying done (both said done 3 with exit 0, one run's outputs gone)."""
    for name in ("x", "y"):
        for i in range(3):
            _image(tmp_path / name / f"i{i}.png", value=i + 10 * (name == "y"))
    out, barrier = tmp_path / "out", tmp_path / "barrier"
    barrier.mkdir()
    script = tmp_path / "plan_then_wait.py"
    script.write_text(PLAN_THEN_WAIT)
    root = Path(fpncli.__file__).resolve().parents[1]
    env = dict(os.environ, FPNCLI_HOME=str(tmp_path / "home"), FPNCLI_BARRIER=str(barrier),
               PLANNED="2", PYTHONPATH=str(root))  # fmt: skip
    procs = {
        name: subprocess.Popen(
            [
                sys.executable,
                str(script),
                *_cli(str(tmp_path / name), "-o", str(out))[3:],
                "--no-heatmaps",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for name in ("x", "y")
    }
    outputs = {name: p.communicate(timeout=300) for name, p in procs.items()}
    results = {name: (procs[name].returncode, *outputs[name]) for name in procs}
    held = {name: 0 for name in procs}
    for i in range(3):
        real = json.loads((out / f"i{i}" / "manifest.json").read_text())["input"]["real_path"]
        held[Path(real).parent.name] += 1
    for name, (rc, stdout, stderr) in results.items():
        done = held[name]
        assert f"done {done}, skipped 0 (already complete), failed {3 - done} of 3" in stdout, (
            stdout + stderr
        )
        assert rc == (1 if done < 3 else 0), stderr
        if done < 3:
            assert "(another run into the same -o wrote them): they are kept" in stderr
    assert sum(held.values()) == 3
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
    real_save, computed = atomic.write_npy, []
    real_backbone = steps.run_backbone
    full = threading.Event()

    def short_save(f, array):
        if Path(f.name).parent.name == "1" or full.is_set():
            full.set()  # what ndarray.tofile raises on a full disk: an OSError with no errno
            raise OSError(f"{array.size} requested and {array.size // 3} written")
        return real_save(f, array)

    def counting(model, batch, precision, **kwargs):
        computed.append(batch.shape[0])
        if len(computed) >= 3:  # a starved writer thread still fails image 1 before batch 4
            full.wait(30)
        return real_backbone(model, batch, precision=precision, **kwargs)

    monkeypatch.setattr(atomic, "write_npy", short_save)
    monkeypatch.setattr(steps, "run_backbone", counting)
    summary = run_jobs(jobs, model, RunOptions(output=SMALL, writers=1, workers=1))
    assert summary.aborted == "disk full: 1 of 8 done, rerun the same command after freeing space"
    assert summary.failed == [] and summary.done == 1
    assert len(computed) < 8  # it stopped at once instead of computing every remaining image
    assert not list((tmp_path / "out").rglob(".*fpncli-tmp*"))
    monkeypatch.setattr(atomic, "write_npy", real_save)
    again = run_jobs(jobs, model, RunOptions(output=SMALL))
    assert (again.done, again.skipped, again.failed) == (7, 1, [])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mincore and /proc are Linux's")
def test_a_large_output_is_flushed_and_leaves_the_page_cache(tmp_path, monkeypatch):
    if fs_type(tmp_path) in ("tmpfs", "ramfs", ""):
        pytest.skip("the page cache is this file system's storage")
    array = np.random.RandomState(0).rand(3, 1024, 1024).astype(np.float32)  # 12 MiB
    monkeypatch.setenv("FPNCLI_DROP_CACHE", "0")
    kept = tmp_path / "kept.npy"
    atomic.atomic_write_bytes(kept, array)
    resident, pages = resident_pages(kept)
    if resident <= pages // 2:  # written pages stay cached, unless memory pressure took them
        pytest.skip("the page cache dropped the reference file itself: nothing to compare")
    monkeypatch.delenv("FPNCLI_DROP_CACHE")
    dropped = tmp_path / "dropped.npy"
    assert atomic.atomic_write_bytes(dropped, array) == kept.stat().st_size
    assert resident_pages(dropped)[0] < pages // 10
    np.testing.assert_array_equal(np.load(dropped), array)
    small = tmp_path / "small.npy"  # below DROP_BYTES: left to the OS, no flush per heatmap
    atomic.atomic_write_bytes(small, array[0, :256])
    assert resident_pages(small)[0] == resident_pages(small)[1]


def _raises(code: int):
    def fdatasync(fd):
        raise OSError(code, os.strerror(code))

    return fdatasync


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no page-cache drop here (macOS)")
def test_a_full_disk_found_when_flushing_removes_the_temporary(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "fdatasync", _raises(errno.ENOSPC))
    target = tmp_path / "p2.npy"
    with pytest.raises(OSError) as raised:
        atomic.atomic_write_bytes(target, np.zeros((3, 1024, 1024), np.float32))
    assert is_disk_full(raised.value)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(os, "fdatasync", _raises(errno.EINVAL))  # a file system without it
    atomic.atomic_write_bytes(target, np.zeros((3, 1024, 1024), np.float32))
    assert target.stat().st_size > 12 << 20


# 4, 5. A bomb among the inputs; special files ----------------------------------------------


def _png_bomb(path: Path, width=60_000, height=60_000) -> Path:
    """A valid PNG header declaring ``width`` x ``height`` (a few hundred bytes on disk)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    row = b"\0" + b"\0" * 3 * width
    idat = zlib.compress(row * 4, 9)  # a few rows: the decoder never gets that far
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat)
                     + chunk(b"IEND", b""))  # fmt: skip
    return path


def test_a_decompression_bomb_and_a_fifo_fail_alone(tmp_path, model):
    src = tmp_path / "in"
    good = [_image(src / f"g{i}.png", value=i) for i in range(2)]
    _png_bomb(src / "bomb.png")
    os.mkfifo(src / "pipe.jpg")
    (src / "loop.jpg").symlink_to(src / "loop.jpg")
    jobs = pipeline.plan_jobs(pipeline.discover_inputs([str(src)]), tmp_path / "out")
    summary = run_jobs(jobs, model, RunOptions(output=SMALL))  # sizing must not die on the bomb
    failed = {Path(p).name: reason for p, reason in summary.failed}
    assert set(failed) == {"bomb.png", "pipe.jpg", "loop.jpg"}
    assert "decompression bomb" in failed["bomb.png"]
    assert "not a regular file (a FIFO)" in failed["pipe.jpg"]
    assert "symlink loop" in failed["loop.jpg"]
    assert summary.done == 2 and all(is_complete(tmp_path / "out" / p.stem) for p in good)


def test_estimate_survives_any_error_while_sizing(tmp_path, monkeypatch):
    from PIL import Image as PILImage

    job = Job(_image(tmp_path / "a.png"), tmp_path / "out" / "a")

    def exploding(*args, **kwargs):
        raise PILImage.DecompressionBombError("too big")

    monkeypatch.setattr(PILImage, "open", exploding)
    assert pipeline.estimate_run_bytes([job], SMALL) > 0


def test_a_fifo_named_explicitly_or_listed_is_reported_not_waited_for(tmp_path, model):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    good = _image(tmp_path / "a.png")
    pairs = pipeline.discover_inputs([str(fifo)], [str(good)])
    jobs = pipeline.plan_jobs(pairs, tmp_path / "out")
    summary = run_jobs(jobs, model, RunOptions(output=SMALL))
    assert [(Path(p).name, "not a regular file (a FIFO)" in r) for p, r in summary.failed] == [
        ("pipe.png", True)
    ]
    assert summary.done == 1


# 7. Sizes refused before they are allocated ----------------------------------------------


def test_a_resized_size_over_max_pixels_is_refused_before_resizing(tmp_path, model):
    job = Job(_image(tmp_path / "a.png"), tmp_path / "out" / "a")
    options = RunOptions(output=replace(SMALL, min_size=20_000, max_size=100_000), force=True)
    summary = run_jobs([job], model, options)
    assert summary.done == 0
    [(path, reason)] = summary.failed
    assert "over the 89 MP limit" in reason and "--max-pixels" in reason


def test_a_pkl_declaring_a_huge_array_is_refused_by_its_shape(tmp_path):
    import pickle

    from fpncli.weights.checkpoint import read_checkpoint

    class Huge:
        def __reduce__(self):
            from numpy._core.multiarray import _reconstruct

            return (_reconstruct, (np.ndarray, (10**7, 10**7), b"b"))

    path = tmp_path / "huge.pkl"
    path.write_bytes(pickle.dumps({"model": {"backbone.bottom_up.x": Huge()}}, protocol=2))
    with pytest.raises(ValueError, match=r"shape \(10000000, 10000000\) is larger than the file"):
        read_checkpoint(path)


def test_show_refuses_an_npy_whose_header_claims_more_than_it_holds(tmp_path):
    from fpncli.io.npy import read_npy

    path = tmp_path / "p2.npy"
    with open(path, "wb") as f:
        header = {"descr": "<f4", "fortran_order": False, "shape": (1, 256, 10**6, 10**6)}
        np.lib.format.write_array_header_1_0(f, header)
        f.write(bytes(64))
    with pytest.raises(ValueError, match="truncated or forged"):
        read_npy(path)
    result = subprocess.run(
        [sys.executable, "-m", "fpncli", "show", str(path), "--save", str(tmp_path / "x.png")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "truncated or forged" in result.stderr


# 8. Zip bombs and old-format .pth --------------------------------------------------------


def test_a_pth_zip_bomb_is_refused_from_its_declared_sizes(tmp_path, monkeypatch):
    import zipfile

    from fpncli.weights import checkpoint

    path = tmp_path / "bomb.pth"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        with archive.open("archive/data/0", "w", force_zip64=True) as member:
            chunk = bytes(16 << 20)
            for _ in range(8):  # 128 MiB of zeros, about 130 kB on disk
                member.write(chunk)
    assert path.stat().st_size < 1 << 20

    def never(*args, **kwargs):
        raise AssertionError("torch.load must not be reached")

    monkeypatch.setattr(checkpoint.torch, "load", never)
    with pytest.raises(ValueError, match="zip bomb"):
        checkpoint.read_checkpoint(path)


def test_an_old_format_pth_is_unsupported_not_an_int(tmp_path):
    import torch

    from fpncli.weights.checkpoint import read_checkpoint

    path = tmp_path / "old.pth"
    torch.save({"model": {}}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match="unsupported format: a legacy"):
        read_checkpoint(path)


# 9. Outputs are never read back as inputs ------------------------------------------------


def _run_cli(*args, cwd=None, home=None):
    from click.testing import CliRunner

    from fpncli.cli import cli as main

    runner = CliRunner()
    argv = ["extract", *args, "--weights", "random", "--min-size", "64", "--max-size", "96",
            "--no-heatmaps", "--workers", "1"]  # fmt: skip
    old = os.getcwd()
    os.chdir(cwd or old)
    try:
        return runner.invoke(main, argv)
    finally:
        os.chdir(old)


def test_outputs_are_not_read_back_as_inputs_however_named(tmp_path):
    photos = tmp_path / "imgs"
    for i in range(3):
        _image(photos / f"{i}.png", value=i)
    first = _run_cli(str(photos), "-o", str(photos / "out"))
    assert first.exit_code == 0, first.output
    assert (photos / "out" / ".fpncli-output").is_file()
    again = _run_cli(str(photos / "**" / "*.png"), "-o", str(photos / "out"))  # a glob over -o
    assert again.exit_code == 0 and "skipped 3 (already complete)" in again.output, again.output
    assert "done 0" in again.output
    # the earlier output folder under another name, and ".": still 3 images
    other = _run_cli(".", "-o", "second", cwd=photos)
    assert other.exit_code == 0 and "done 3" in other.output and "of 3" in other.output
    assert "not reading outputs back as inputs: skipped out" in other.output
    same = _run_cli(str(photos), "-o", str(photos))  # -o equal to the input folder
    assert same.exit_code == 1 and "no images found" in same.output
    assert not (photos / ".fpncli-output").exists()
    # an output folder of an older version (no marker) is recognised by its manifests
    (photos / "out" / ".fpncli-output").unlink()
    legacy = _run_cli(str(photos), "-o", str(tmp_path / "third"))
    assert legacy.exit_code == 0 and "of 3" in legacy.output, legacy.output


@pytest.mark.parametrize("kind", ["folder", "fifo", "dangling symlink"])
def test_a_marker_name_taken_by_something_not_a_file_is_refused_before_any_output(tmp_path, kind):
    """``OUT/.fpncli-output`` as a folder (or a FIFO, a dangling link) made -o look unmarked
    without a word: the run wrote its pictures there, and a later extract of a folder above
    read them back as photos. The run is refused, in one line, before anything is written."""
    _image(tmp_path / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    marker = out / ".fpncli-output"
    {"folder": marker.mkdir, "fifo": lambda: os.mkfifo(marker),
     "dangling symlink": lambda: marker.symlink_to("nowhere")}[kind]()  # fmt: skip
    result = _run_cli(str(tmp_path / "a.png"), "-o", str(out))
    assert result.exit_code == 1, result.output
    said = {"folder": "a folder", "fifo": "a FIFO", "dangling symlink": "a symlink"}[kind]
    assert result.output.strip().splitlines()[-1] == (
        f"Error: {marker} is {said}, not the marker file fpncli writes there: move it away, "
        "or give another folder"
    )
    assert sorted(p.name for p in out.iterdir()) == [".fpncli-output"]


def test_a_marker_written_by_another_process_meanwhile_counts(tmp_path, monkeypatch):
    """Two runs marking one new -o at once (--shard, torchrun ranks): the marker another process
    wrote between the check and the look was refused as "a special file", failing the run."""
    from pathlib import Path as RealPath

    from fpncli.io.markers import mark_output_root

    out = tmp_path / "out"
    real_is_file = RealPath.is_file

    def is_file(self):
        if self.name == ".fpncli-output" and not self.exists():
            self.write_text("the other process's marker\n")  # written just after the check
            return False
        return real_is_file(self)

    monkeypatch.setattr(RealPath, "is_file", is_file)
    mark_output_root(out)
    assert (out / ".fpncli-output").read_text() == "the other process's marker\n"


def test_symlinked_folders_are_followed_but_never_into_outputs(tmp_path):
    """Symlinked folders are followed (they were skipped without a word), a second link to the
    same folder is read once with a note, and a link into this run's -o, one of its subfolders
    or another run's output reads no output back; the rerun resumes every image."""
    photos, elsewhere, out = tmp_path / "imgs", tmp_path / "elsewhere", tmp_path / "out"
    _image(photos / "a.png")
    _image(elsewhere / "b.png", value=1)
    (photos / "ext").symlink_to(elsewhere)
    (photos / "ext2").symlink_to(elsewhere)
    first = _run_cli(str(photos), "-o", str(out))
    assert first.exit_code == 0 and "done 2," in first.output, first.output
    assert "of 2" in first.output
    assert (out / "ext" / "b" / "manifest.json").is_file()
    assert (f"note: not following {photos / 'ext2'}: it leads to the folder {photos / 'ext'}, "
            "which the run comes to under that name\n") in first.output  # fmt: skip
    (photos / "o").symlink_to(out)
    (photos / "o_ext").symlink_to(out / "ext")
    again = _run_cli(str(photos), "-o", str(out))
    assert again.exit_code == 0, again.output
    assert "done 0," in again.output and "skipped 2 (already complete)" in again.output
    assert "not reading outputs back as inputs: skipped" in again.output
    other = _run_cli(str(photos), "-o", str(tmp_path / "second"))  # out: another run's output
    assert other.exit_code == 0 and "done 2," in other.output and "of 2" in other.output


def test_a_folder_given_twice_says_its_notes_once(tmp_path):
    """``extract d1 d1`` walks d1 twice: the note on a symlink loop inside was said twice (the
    hidden folders' once, as ``_hidden_left_out`` de-duplicates them)."""
    _image(tmp_path / "d1" / "a.png")
    (tmp_path / "d1" / "sub").mkdir()
    (tmp_path / "d1" / "sub" / "loop").symlink_to("..")
    result = _run_cli("d1", "d1", str(tmp_path / "d1"), "-o", "out", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if "not following" in line]
    assert notes == [
        "note: not following d1/sub/loop: it leads to the folder d1, which the run comes to "
        "under that name"
    ]
    assert result.output.endswith("wrote out/a\n")  # one image


# 10. show stays inside the extraction folder ----------------------------------------------


@pytest.fixture(scope="module")
def extraction(tmp_path_factory, model):
    root = tmp_path_factory.mktemp("show")
    jobs = [Job(_image(root / f"{n}.png", value=i), root / "out" / n) for i, n in enumerate("ab")]
    assert run_jobs(jobs, model, RunOptions(output=SMALL)).done == 2
    return root / "out"


@pytest.fixture(scope="module")
def _module_home():
    return os.environ.get("FPNCLI_HOME")


def test_module_fixtures_run_with_an_isolated_home(_module_home, tmp_path_factory):
    """A module fixture's run (``extraction`` above) records the latest extraction: never in the
    user's own ``latest.json``, which ``fpncli show`` opens after the README's test command."""
    base = tmp_path_factory.getbasetemp().resolve()
    assert _module_home and Path(_module_home).resolve().is_relative_to(base)


def _forge(folder: Path, edit) -> Path:
    import shutil

    copy = folder.parent / f"forged_{len(list(folder.parent.iterdir()))}"
    shutil.copytree(folder, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    edit(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m["levels"]["p2"].update(file="../../../../etc/passwd"), "outside the folder"),
        (lambda m: m["levels"]["p2"].update(file="/etc/passwd"), "outside the folder"),
        (lambda m: m.update(levels=["p2"]), "'levels' is a list"),
        (lambda m: m.pop("levels"), "'levels' is missing"),
        (lambda m: m.pop("preprocess"), "is malformed"),
        (lambda m: m["preprocess"].update(resized_width=0), "'preprocess.resized_width' is"),
        (lambda m: m["preprocess"].update(scale_x=10**400), "'preprocess.scale_x' is an int"),
        (lambda m: m["levels"]["p2"].update(mean=10**400), "not a finite float32 number"),
        (lambda m: m["levels"]["p2"].update(max=1e308), "not a finite float32 number"),
        (lambda m: m["levels"]["p2"].update(nonfinite=10**400), "non-negative integer"),
        (lambda m: m["levels"]["p2"].update(stride=10**400), "positive integer"),
    ],
)
def test_show_refuses_forged_or_malformed_manifests(extraction, tmp_path, edit, message):
    from fpncli.viz.show import show

    forged = _forge(extraction / "a", edit)
    with pytest.raises(ValueError, match=message):
        show(str(forged), save=str(tmp_path / "x.png"))
    assert not (tmp_path / "x.png").exists()


def test_show_refuses_another_images_tensor_and_a_fifo(extraction, tmp_path):
    from fpncli.viz.show import show

    other = str((extraction / "b" / "p2.npy").resolve())
    forged = _forge(extraction / "a", lambda m: m["levels"]["p2"].update(file=other))
    with pytest.raises(ValueError, match="outside the folder"):
        show(str(forged), save=str(tmp_path / "x.png"))
    piped = _forge(extraction / "a", lambda m: None)
    (piped / "p2.npy").unlink()
    os.mkfifo(piped / "p2.npy")
    with pytest.raises(ValueError, match="not a regular file"):
        show(str(piped), save=str(tmp_path / "x.png"))


# 11. NaN in the manifest; names that would forge report lines -----------------------------


def test_nan_features_give_valid_json_with_null_and_a_count(tmp_path, model, monkeypatch):
    real = steps.run_backbone

    def poisoned(model, batch, precision, **kwargs):
        features = {
            k: v.clone() for k, v in real(model, batch, precision=precision, **kwargs).items()
        }
        features["p3"][0, 0, 0, 0] = float("nan")
        features["p3"][0, 1, 0, 0] = float("inf")
        features["p4"][:] = float("nan")
        return features

    monkeypatch.setattr(steps, "run_backbone", poisoned)
    job = Job(_image(tmp_path / "a.png"), tmp_path / "out" / "a")
    assert run_jobs([job], model, RunOptions(output=SMALL)).done == 1
    text = (job.folder / "manifest.json").read_text()
    manifest = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))
    p3, p4 = manifest["levels"]["p3"], manifest["levels"]["p4"]
    assert p3["nonfinite"] == 2 and np.isfinite([p3["min"], p3["max"], p3["mean"]]).all()
    assert p4["nonfinite"] == p4["valid_height"] * p4["valid_width"] * 256
    assert (p4["min"], p4["max"], p4["mean"]) == (None, None, None)
    assert manifest["levels"]["p2"]["nonfinite"] == 0
    from fpncli.viz.report import write_report

    assert write_report(tmp_path / "out", workers=1).is_file()  # null statistics are read back


def test_a_newline_in_a_name_does_not_forge_a_report_line(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "x.jpg\nfailed: forged.jpg: evil.jpg").write_bytes(b"not an image")
    result = _run_cli(str(src), "-o", str(tmp_path / "out"))
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.startswith("failed:")]
    assert len(lines) == 1 and "\\nfailed: forged.jpg" in lines[0], result.output


# 12. show --save creates only the file ----------------------------------------------------


def test_show_save_into_a_missing_folder_creates_nothing(extraction, tmp_path):
    from fpncli.viz.show import show

    target = tmp_path / "nonexistent" / "x.png"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        show(str(extraction / "a"), save=str(target))
    assert not target.parent.exists()
    saved = show(str(extraction / "a"), save=str(tmp_path / "x.png")).saved
    assert saved == tmp_path / "x.png" and saved.stat().st_size > 0


def test_device_workers_disk_full_line_counts_every_worker():
    from fpncli.run.multi import _merge
    from fpncli.run.pipeline import RunSummary, disk_full_message

    a = RunSummary(total=10, done=4, skipped=1)
    a.aborted = disk_full_message(a)
    b = RunSummary(total=10, done=3)
    assert _merge([a, b]).aborted == (
        "disk full: 8 of 20 done, rerun the same command after freeing space"
    )


def test_device_workers_too_many_open_files_line_counts_every_worker():
    from fpncli.run.multi import _merge
    from fpncli.run.summary import RunSummary, open_files_message

    a = RunSummary(total=10, done=2)
    b = RunSummary(total=10, done=5, skipped=1)
    b.aborted = open_files_message(b)
    assert _merge([a, b]).aborted == (
        "too many open files: 8 of 20 done, rerun the same command with a higher limit "
        "(ulimit -n 4096, say) or fewer --workers/--writers"
    )


def test_device_workers_failure_line_names_every_failed_device_and_counts_every_worker():
    from fpncli.run.multi import _merge
    from fpncli.run.pipeline import RunSummary, device_failed_message

    parts = []
    for device, done in (("cuda:0", 4), ("cuda:1", 2), ("cuda:2", 5)):
        part = RunSummary(total=10, done=done)
        if device != "cuda:2":
            part.device_failure = f"{device} failed (RuntimeError: CUDA error: boom)"
            part.aborted = device_failed_message(part)
        parts.append(part)
    assert _merge(parts).aborted == (
        "cuda:0 failed (RuntimeError: CUDA error: boom); cuda:1 failed (RuntimeError: CUDA error: "
        "boom): 11 of 30 done, rerun the same command to resume"
    )


def test_report_survives_a_bomb_or_fifo_as_the_recorded_input(extraction, tmp_path):
    import shutil

    from fpncli.viz.report import write_report

    for name, make in (("bomb", lambda p: _png_bomb(p)), ("fifo", os.mkfifo)):
        root = tmp_path / name
        shutil.copytree(extraction / "a", root / "a")
        source = tmp_path / f"{name}.png"
        make(source)
        manifest = json.loads((root / "a" / "manifest.json").read_text())
        manifest["input"]["path"] = str(source)
        (root / "a" / "manifest.json").write_text(json.dumps(manifest))
        assert write_report(root, workers=1).is_file()


def test_a_pkl_with_persistent_ids_is_refused_as_unsafe(tmp_path):
    from fpncli.weights.checkpoint import UnsafeCheckpointError, read_checkpoint

    path = tmp_path / "pid.pkl"
    path.write_bytes(b"\x80\x02X\x03\x00\x00\x00abcQ.")  # BINPERSID of a string
    with pytest.raises(UnsafeCheckpointError, match=r"pid\.pkl: refusing a pickle with persistent"):
        read_checkpoint(path)


def test_an_unreadable_subfolder_is_reported_and_the_rest_extracted(tmp_path):
    """A folder the user may not read (chmod 000: tests may run as root, who reads it anyway,
    so the permission error is run with those capabilities dropped when setpriv can) costs its
    own images, reported as failed and counted in the total (it was not: "failed 1 of 1"), not
    the run; given alone, no run starts and the note does not say it is reported as failed; an
    empty input path is an error, not '.'."""
    import shutil as sh

    src = tmp_path / "in"
    (src / "locked").mkdir(parents=True)
    Image.fromarray(np.full((40, 56, 3), 90, np.uint8)).save(src / "a.png")
    Image.fromarray(np.full((40, 56, 3), 90, np.uint8)).save(src / "locked" / "b.png")
    os.chmod(src / "locked", 0)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "fpncli", "extract", str(src), "-o", str(out), "--weights",
           "random", "--min-size", "32", "--max-size", "64", "--workers", "1"]  # fmt: skip
    if os.geteuid() == 0:
        if sh.which("setpriv") is None:
            pytest.skip("root without setpriv: permissions do not apply")
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all",
               *cmd]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(fpncli.__file__).parent.parent)}
    alone = [arg if arg != str(src) else str(src / "locked") for arg in cmd]
    alone[alone.index(str(out))] = str(tmp_path / "out2")
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        only = subprocess.run(alone, capture_output=True, text=True, env=env, timeout=300)
    finally:
        os.chmod(src / "locked", 0o755)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"failed: {src / 'locked'}: cannot read this folder: Permission denied" in result.stderr
    assert "(Permission denied): its images are left out (reported as failed)" in result.stderr
    assert "done 1, skipped 0 (already complete), failed 1 of 2 in" in result.stdout
    assert is_complete(out / "a")
    run = json.loads((out / "run.json").read_text())
    assert [f["path"] for f in run["failed"]] == [str(src / "locked")]
    assert (run["total"], run["done"], run["skipped"]) == (2, 1, 0)
    assert only.returncode == 1 and "Traceback" not in only.stderr
    assert only.stderr.splitlines() == [
        f"note: cannot read the folder {src / 'locked'} (Permission denied): its images are "
        "left out",
        "Error: no images found in the given inputs; 1 folder(s) in them cannot be read: give "
        "read permission to them, or other inputs",
    ]
    assert not (tmp_path / "out2").exists()
    empty = subprocess.run([sys.executable, "-m", "fpncli", "extract", "", "--weights", "random"],
                           capture_output=True, text=True, env=env, cwd=tmp_path)  # fmt: skip
    assert empty.returncode != 0 and "an empty input path" in empty.stderr
    assert not (tmp_path / "fpn_out").exists()


def test_an_unreadable_subfolder_of_a_folder_given_twice_fails_once(tmp_path):
    """``extract src src`` with ``src/locked`` unreadable said its note and its failure twice,
    and counted it twice: "failed 2 of 3" for one image and one folder."""
    import shutil as sh

    src = tmp_path / "in"
    (src / "locked").mkdir(parents=True)
    _image(src / "a.png")
    _image(src / "locked" / "b.png")
    cmd = _cli(str(src), str(src), "-o", str(tmp_path / "out"), "--no-heatmaps", "--no-npy")
    if os.geteuid() == 0:  # (as test_an_unreadable_subfolder_is_reported_and_the_rest_extracted)
        if sh.which("setpriv") is None:
            pytest.skip("root without setpriv: permissions do not apply")
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all",
               *cmd]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(fpncli.__file__).parent.parent)}
    os.chmod(src / "locked", 0)
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    finally:
        os.chmod(src / "locked", 0o755)
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("note: cannot read the folder") == 1, result.stderr
    assert result.stderr.count("failed: ") == 1, result.stderr
    assert "done 1, skipped 0 (already complete), failed 1 of 2 in" in result.stdout


def test_an_output_path_too_long_fails_its_image_not_the_run(tmp_path, monkeypatch):
    """An input 3,900 bytes deep in a folder, with a 200-character -o: its output folder's path
    is over the 4,096 bytes a path may have, and the disk-space check's look-up of it raised
    ENAMETOOLONG ("Error: [Errno 36] File name too long", the run stopped, exit 1). The free
    space is that of the nearest folder that can be looked up, and the image fails alone."""
    monkeypatch.chdir(tmp_path)
    deep = Path(*["d" * 250] * 15, "d" * 100)  # 3,865 bytes
    _image("in" / deep / "a.png")
    out = "o" * 200
    assert len(os.fsencode(os.path.abspath(Path(out, deep, "a")))) > 4096
    result = _extract("in", "-o", out)
    assert result.exit_code == 1, result.output
    assert not any(line.startswith("Error") for line in result.output.splitlines())
    (failed,) = [line for line in result.output.splitlines() if line.startswith("failed: ")]
    assert failed.startswith(f"failed: {Path('in', deep, 'a.png')}: could not write ")
    assert "File name too long" in failed
    assert "done 0, skipped 0 (already complete), failed 1 of 1" in result.output
    assert json.loads(Path(out, "run.json").read_text())["total"] == 1


def test_a_from_list_file_may_name_files_whose_names_are_not_utf8(tmp_path):
    from click.testing import CliRunner

    from fpncli.cli import cli

    name = os.fsdecode(b"n\xffx.png")  # a byte no UTF-8 decoder accepts
    Image.fromarray(np.full((40, 56, 3), 90, np.uint8)).save(tmp_path / name)
    listing = tmp_path / "list.txt"
    listing.write_bytes(os.fsencode(str(tmp_path / name)) + b"\n")
    out = tmp_path / "out"
    args = ["extract", "--from-list", str(listing), "-o", str(out), "--weights", "random",
            "--min-size", "32", "--max-size", "64", "--no-heatmaps", "--no-overview"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert is_complete(out / os.fsdecode(b"n\xffx"))
    nan = CliRunner().invoke(cli, ["diff", str(out), str(out), "--tol", "nan"])
    assert nan.exit_code == 2 and "--tol" in nan.output


def test_show_save_and_bench_json_never_replace_a_device_fifo_or_symlink(tmp_path, monkeypatch):
    """As root an atomic write to /dev/null would replace the device node with a file."""
    from click.testing import CliRunner

    from fpncli.cli import cli

    monkeypatch.chdir(tmp_path)
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "link.png").symlink_to("target.png")
    runner = CliRunner()
    src = _image(tmp_path / "a.png")
    small = ["--weights", "random", "--min-size", "32", "--max-size", "64"]
    assert runner.invoke(cli, ["extract", str(src), "-o", "o", *small]).exit_code == 0
    for args in (["show", "o/a", "--save"], ["bench", "--device", "cpu", "--json"]):
        refused = runner.invoke(cli, [*args, "fifo"])
        assert refused.exit_code == 2 and "fifo is a FIFO, not a file" in refused.output
        folder = runner.invoke(cli, [*args, "."])  # click's own check
        assert folder.exit_code == 2 and "is a directory" in folder.output
    assert (tmp_path / "fifo").is_fifo()
    shown = runner.invoke(cli, ["show", "o/a", "--save", "link.png"])
    assert shown.exit_code == 0, shown.output
    assert (tmp_path / "link.png").is_symlink() and (tmp_path / "target.png").is_file()


# 13. Files an earlier run (or its user) left, forged: one line, the rest goes on ----------


def test_a_manifest_nested_too_deep_is_incomplete_and_the_run_goes_on(tmp_path, model):
    jobs = [Job(_image(tmp_path / f"{n}.png", value=i), tmp_path / "out" / n) for i, n in
            enumerate("ab")]  # fmt: skip
    assert run_jobs(jobs, model, RunOptions(output=SMALL)).done == 2
    (tmp_path / "out" / "a" / "manifest.json").write_text("[" * 100_000)
    assert not is_complete(tmp_path / "out" / "a")
    summary = run_jobs(jobs, model, RunOptions(output=SMALL))
    assert (summary.done, summary.skipped, summary.failed) == (1, 1, [])
    assert is_complete(tmp_path / "out" / "a")


def test_a_forged_latest_record_is_ignored_and_a_fifo_one_never_waited_for(tmp_path, monkeypatch):
    from fpncli.io.latest import recent_extractions

    monkeypatch.setenv("FPNCLI_HOME", str(tmp_path))
    (tmp_path / "latest.json").write_text('{"folder": "/nowhere", "history": 5}')
    assert recent_extractions() == [Path("/nowhere")]
    (tmp_path / "latest.json").write_text('{"folder": "/nowhere", "history": ' + "[" * 10**5)
    assert recent_extractions() == []
    (tmp_path / "latest.json").unlink()
    os.mkfifo(tmp_path / "latest.json")
    seen = []
    reader = threading.Thread(target=lambda: seen.append(recent_extractions()), daemon=True)
    reader.start()
    reader.join(10)
    assert seen == [[]]


def test_show_scale_level_with_no_target_uses_the_latest_run(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from fpncli.cli import cli

    monkeypatch.setenv("FPNCLI_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    _image(tmp_path / "in" / "a.png")
    _image(tmp_path / "in" / "b.png", value=1)
    small = ["--weights", "random", "--min-size", "32", "--max-size", "64"]
    runner = CliRunner()
    assert runner.invoke(cli, ["extract", "in", "-o", "o", *small]).exit_code == 0
    result = runner.invoke(cli, ["show", "--scale", "level", "--save", "x.png"])
    assert result.exit_code == 0, result.output
    assert "ranges from the 2 image(s)" in result.output and (tmp_path / "x.png").is_file()


def test_forged_run_logs_are_read_as_far_as_they_hold(extraction, tmp_path):
    import shutil

    from fpncli.io.run_log import read_run_log
    from fpncli.viz.report import write_report

    root = tmp_path / "out"
    for name in "ab":  # (the module's other tests leave forged copies beside them)
        shutil.copytree(extraction / name, root / name)
    (root / "run.json").write_text('{"failed": 5, "done": "x", "seconds": 1e999, "total": 3}')
    log = read_run_log(root)
    assert log["failed"] == [] and "done" not in log and "seconds" not in log
    assert log["total"] == 3
    assert write_report(root, workers=1).is_file()
    (root / "run.json").unlink()
    (root / "run-0-of-2.json").write_text('{"total": [1], "done": 1e400, "failed": [7, {}]}')
    (root / "run-1-of-2.json").write_text('{"total": ' + str(10**400) + ', "done": 2}')
    log = read_run_log(root)
    assert (log["total"], log["done"], log["failed"], log["shards"]) == (0, 2, [{}], "2 of 2")
    assert write_report(root, workers=1).is_file()


@pytest.mark.parametrize(
    "header, data, message",
    [
        ({"descr": [("x", "<f4"), ("y", "<f4")], "shape": (1, 2, 2, 2)}, 64, "not a float level"),
        ({"descr": "<i4", "shape": (1, 2, 2, 2)}, 32, "not a float level"),
        ({"descr": "<c8", "shape": (1, 2, 2, 2)}, 64, "not a float level"),
        ({"descr": "<f4", "shape": (1, 4, -2, 2)}, 64, "negative size"),
    ],
)
def test_an_npy_that_is_no_float_level_is_refused_by_its_header(tmp_path, header, data, message):
    from fpncli.io.npy import read_npy

    path = tmp_path / "p2.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"fortran_order": False, **header})
        f.write(bytes(data))
    for mmap in (False, True):
        with pytest.raises(ValueError, match=message):
            read_npy(path, mmap=mmap)


def test_show_refuses_an_empty_npy_in_one_line(tmp_path):
    np.save(tmp_path / "z.npy", np.zeros((1, 4, 0, 4), np.float32))
    result = subprocess.run(
        [sys.executable, "-m", "fpncli", "show", str(tmp_path / "z.npy"), "--save",
         str(tmp_path / "x.png")], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "not a feature map" in result.stderr and not (tmp_path / "x.png").exists()


def test_a_recorded_photo_replaced_by_a_non_image_is_left_out_of_show_and_diff(
    extraction, tmp_path, caplog
):
    from fpncli.viz.diff import diff_extractions
    from fpncli.viz.show import show

    text = tmp_path / "photo.png"
    text.write_text("no longer a photo")
    forged = _forge(extraction / "a", lambda m: m["input"].update(path=str(text)))
    assert show(str(forged), save=str(tmp_path / "x.png")).saved == tmp_path / "x.png"
    assert "the input photo cannot be read" in caplog.text
    caplog.clear()
    diff_extractions(forged, forged, out=tmp_path / "d")
    assert list((tmp_path / "d").rglob("diff.png"))
    assert "the input photo cannot be read" in caplog.text


def test_an_image_folder_that_is_a_symlink_is_not_written_through(tmp_path, model):
    """OUT/a linking to another folder: its p2.npy was replaced and its other output-named
    files removed (``_begin``). The image fails alone; the other folder is untouched."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "p2.npy").write_text("precious")
    (elsewhere / "p9.png").write_text("also precious")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a").symlink_to(elsewhere)
    jobs = [Job(_image(tmp_path / f"{n}.png", value=i), tmp_path / "out" / n) for i, n in
            enumerate("ab")]  # fmt: skip
    summary = run_jobs(jobs, model, RunOptions(output=SMALL))
    assert summary.done == 1 and [p for p, _ in summary.failed] == [str(jobs[0].path)]
    assert "is a symlink" in summary.failed[0][1]
    assert sorted(p.name for p in elsewhere.iterdir()) == ["p2.npy", "p9.png"]
    assert (elsewhere / "p2.npy").read_text() == "precious" and is_complete(tmp_path / "out" / "b")


def test_a_symlinked_folder_between_out_and_the_image_folder_is_not_written_through(
    tmp_path, model
):
    """Only the image folder itself was checked: ``OUT/sub -> other`` (inside OUT) made two
    images share one folder (both reported done, one's outputs lost, a rerun redoing it
    forever), and ``OUT/sub -> ../victim`` had fpncli write into ``victim/a`` and remove the
    user's output-named files there. The image fails, naming the link; nothing is written or
    removed through it. A link above OUT, or OUT given as a link, is the user's choice."""
    from fpncli.io.markers import mark_output_root

    real = tmp_path / "disk" / "out"
    mark_output_root(real)
    (tmp_path / "link").symlink_to(tmp_path / "disk")  # above OUT: fine
    out = tmp_path / "link" / "out"
    (real / "other").mkdir()
    (real / "sub").symlink_to("other")
    victim = tmp_path / "victim"
    (victim / "a").mkdir(parents=True)
    (victim / "a" / "p2.png").write_text("precious")
    (real / "deep").mkdir()
    (real / "deep" / "sub").symlink_to(victim)
    jobs = [Job(_image(tmp_path / f"{n}.png", value=i), out / n) for i, n in
            enumerate(["sub/a", "other/a", "deep/sub/a", "plain/a"])]  # fmt: skip
    options = RunOptions(output=replace(SMALL, save_npy=False))
    for _ in range(2):  # a rerun fails them again, and redoes nothing else
        summary = run_jobs(jobs, model, options)
        assert sorted(p for p, _ in summary.failed) == sorted(str(j.path) for j in jobs[::2])
        reasons = dict(summary.failed)
        assert f"{out / 'sub'} is a symlink to other" in reasons[str(jobs[0].path)]
        assert f"{out / 'deep' / 'sub'} is a symlink" in reasons[str(jobs[2].path)]
        assert "remove the link or use another -o" in reasons[str(jobs[2].path)]
    assert summary.skipped == 2 and summary.done == 0
    assert sorted(p.name for p in (real / "other").iterdir()) == ["a"]
    assert json.loads((real / "other" / "a" / "manifest.json").read_text())["input"]["path"] == (
        str(jobs[1].path)
    )
    assert sorted(p.name for p in (victim / "a").iterdir()) == ["p2.png"]
    assert (victim / "a" / "p2.png").read_text() == "precious"
    assert is_complete(out / "plain" / "a")


def test_the_output_root_given_as_a_symlink_is_written(tmp_path, model):
    from fpncli.io.markers import mark_output_root

    mark_output_root(tmp_path / "real")
    (tmp_path / "out").symlink_to(tmp_path / "real")
    job = Job(_image(tmp_path / "a.png"), tmp_path / "out" / "sub" / "a")
    assert run_jobs([job], model, RunOptions(output=SMALL)).done == 1
    assert is_complete(tmp_path / "real" / "sub" / "a")


def _extract(*args: str):
    from click.testing import CliRunner

    from fpncli.cli import cli

    return CliRunner().invoke(cli, ["extract", *args, "--weights", "random", "--min-size", "64",
                                    "--max-size", "96", "--no-npy", "--no-overview"])  # fmt: skip


def test_out_given_as_a_symlink_inside_an_earlier_output_root_is_written(tmp_path):
    """``-o runs`` made ``runs`` an output root; ``-o runs/big`` with ``runs/big -> ../disk2``
    was refused ("runs/big is a symlink"): the links checked are those below this run's -o,
    not below the topmost marked folder."""
    photos = _image(tmp_path / "in" / "a.png").parent
    runs = tmp_path / "runs"
    assert _extract(str(photos), "-o", str(runs)).exit_code == 0
    (tmp_path / "disk2").mkdir()
    (runs / "big").symlink_to("../disk2")
    result = _extract(str(photos), "-o", str(runs / "big"))
    assert result.exit_code == 0, result.output
    assert is_complete(tmp_path / "disk2" / "a")


def test_a_rerun_past_a_symlinked_folder_fails_that_image_again_not_the_run(tmp_path):
    """Once ``OUT/sub -> other`` was reported, every rerun was refused whole ("holds the outputs
    of another file", read through the link, with --overwrite as advice): the folder behind a
    link is pending, unread, and its image fails with the link's own line (no catch-all
    prefix), the other images skipped as complete."""
    _image(tmp_path / "in" / "sub" / "a.png", value=1)
    _image(tmp_path / "in" / "other" / "a.png", value=2)
    out = tmp_path / "out"
    (out / "other").mkdir(parents=True)
    (out / "sub").symlink_to("other")
    for run in range(2):
        result = _extract(str(tmp_path / "in"), "-o", str(out))
        assert result.exit_code == 1, result.output
        failed = [line for line in result.output.splitlines() if line.startswith("failed:")]
        assert failed == [
            f"failed: {tmp_path / 'in' / 'sub' / 'a.png'}: {out / 'sub'} is a symlink to other "
            f"(on the way to {out / 'sub' / 'a'}): fpncli writes an image's outputs only into a "
            "folder of its own under -o, never through a link; remove the link or use another -o"
        ]
        assert f"done {1 - run}, skipped {run}" in result.output
    manifest = json.loads((out / "other" / "a" / "manifest.json").read_text())
    assert manifest["input"]["path"] == str(tmp_path / "in" / "other" / "a.png")


def test_report_and_diff_pictures_written_among_photos_are_never_read_back(
    sample_extraction, tmp_path
):
    """``report PHOTOS`` (the photo folder given instead of its output folder below it) wrote its
    thumbnails and histograms into ``PHOTOS/report/``, and ``diff ... -o PHOTOS/dd`` its
    ``diff.png`` pictures: the next ``extract PHOTOS`` took all of them as photos. A report's
    folder and diff's output folder are marked now, and never walked; a folder the user had
    (``PHOTOS/mine``) is not diff's to write into, so their photos in it are still found, and
    only the folder diff wrote is marked, not the parents made for it (``PHOTOS/later/cmp``:
    photos put in ``PHOTOS/later`` afterwards are found)."""
    from fpncli.viz.diff import diff_extractions
    from fpncli.viz.report import write_report

    photos = tmp_path / "photos"
    shutil.copytree(sample_extraction, photos / "out")  # the extraction below the photos
    for name in ("a.png", "mine/b.png"):
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photos / name)
    write_report(photos)
    diff_extractions(photos / "out", photos / "out", out=photos / "dd")
    diff_extractions(photos / "out", photos / "out", out=photos / "later" / "cmp")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photos / "later" / "c.png")
    with pytest.raises(ValueError, match="holds files diff did not write"):
        diff_extractions(photos / "out", photos / "out", out=photos / "mine")
    assert list((photos / "report").rglob("*.png")) and list((photos / "dd").rglob("*.png"))
    assert not list((photos / "mine").glob("*/diff.png"))
    found = sorted(p.relative_to(photos).as_posix() for p, _ in pipeline.discover_inputs([photos]))
    assert found == ["a.png", "later/c.png", "mine/b.png"]
    # named one by one too (a glob, a list): refused as outputs, as an extraction's files are
    drawn = next((photos / "report").rglob("*.png"))
    assert pipeline.discover_inputs([str(drawn)]) == []
