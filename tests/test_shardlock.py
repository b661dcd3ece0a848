"""Several ``--format wds`` runs into one OUT (``io.shardlock``): keys claimed per run, only
dead runs' leftovers cleaned up, commits under OUT's lock. Tiny images, a seeded random R-50."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fpncli
from fpncli.io.inputs import discover_inputs
from fpncli.io.jobs import plan_jobs
from fpncli.io.outputs import OutputOptions
from fpncli.run.pipeline import RunOptions, weights_meta

pq = pytest.importorskip("pyarrow.parquet", reason="--format wds needs pyarrow (fpncli[wds])")
pytest.importorskip("fsspec", reason="--format wds needs fsspec (fpncli[wds])")

from fpncli.io import shard_writer  # noqa: E402 - needs pyarrow
from fpncli.io.shardlock import (  # noqa: E402
    CLAIMS_DIR,
    LOCK_FILE,
    RunClaim,
    claim_is_live,
    wds_lock,
)
from fpncli.io.shards import INDEX_DIR  # noqa: E402
from fpncli.run.wds import plan_sharded, run_sharded  # noqa: E402

OPTIONS = RunOptions(
    output=OutputOptions(min_size=64, max_size=96, save_heatmaps=False, save_overview=False),
    workers=1, writers=1,
)  # fmt: skip


@pytest.fixture(scope="module")
def model():
    return fpncli.load_backbone("random")


def _jobs(folder: Path, count: int):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(0)
    for i in range(count):
        pixels = rng.randint(0, 255, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"im{i}.png")
    return plan_jobs(discover_inputs([str(folder)]), Path(""))


def _keys_per_shard(out: Path) -> list[str]:
    keys = []
    for path in sorted(out.glob("shard-*.tar")):
        with tarfile.open(path) as tar:
            keys += [m.name[:-5] for m in tar.getmembers() if m.name.endswith(".json")]
    return keys


def test_two_wds_runs_at_once_share_the_keys_and_keep_each_others_shards(
    tmp_path, model, monkeypatch, caplog
):
    """The first run is held with one image in its open (partial) shard while a second run over
    more images plans, runs and ends: the second leaves the first's keys and partial shard alone
    and does only the rest; then the first ends. Each key is in exactly one shard."""
    jobs, out = _jobs(tmp_path / "in", 4), tmp_path / "out"
    held, go = threading.Event(), threading.Event()
    real = shard_writer.ShardWriter.write_image

    def write_image(self, *args, **kwargs):  # the first call is the first run's (on its writer)
        size = real(self, *args, **kwargs)
        if not held.is_set():
            held.set()
            assert go.wait(120)
        return size

    monkeypatch.setattr(shard_writer.ShardWriter, "write_image", write_image)
    results = {}

    def first():
        results[1] = run_sharded(jobs[:3], str(out), model, OPTIONS, shard_bytes=10**9)

    first_thread = threading.Thread(target=first)
    first_thread.start()
    assert held.wait(120)
    partial = list(out.glob("shard-*.tar.partial"))
    assert len(partial) == 1
    with caplog.at_level(logging.WARNING):
        second = run_sharded(jobs, str(out), model, OPTIONS, shard_bytes=10**9)
    assert (second.done, second.skipped, second.failed, second.left_to_others) == (1, 3, [], 3)
    assert f"3 of these images are being extracted by another fpncli run (pid {os.getpid()})" in (
        caplog.text
    )
    assert partial[0].exists()  # the live run's open shard was not taken for a dead one's
    go.set()
    first_thread.join(120)
    assert (results[1].done, results[1].failed) == (3, [])
    keys = _keys_per_shard(out)
    assert sorted(keys) == ["im0", "im1", "im2", "im3"]  # each key once
    index = pq.read_table(out / "index.parquet").to_pylist()
    assert sorted(r["key"] for r in index if r["status"] == "ok") == sorted(keys)
    assert not list(out.glob("*.partial")) and not list((out / CLAIMS_DIR).iterdir())


def test_the_summary_line_says_which_skipped_images_were_left_to_another_run(capsys):
    from fpncli.cli.extract_report import _report
    from fpncli.io.jobs import Job
    from fpncli.run.pipeline import RunSummary

    jobs = [Job(Path(f"in/{i}.png"), Path(f"out/{i}")) for i in range(5)]
    _report(RunSummary(total=5, done=1, skipped=4, left_to_others=3), Path("out"), jobs)
    assert "skipped 4 (1 already complete, 3 left to another live run)" in capsys.readouterr().out
    _report(RunSummary(total=1, skipped=1, left_to_others=1), Path("out"), jobs[:1])
    assert "1 left to another live run" in capsys.readouterr().out


def test_a_dead_runs_claim_lock_file_and_partial_shard_do_not_block(tmp_path, model):
    """A run that died holding its claim (a process that exits without releasing it) leaves
    its claims file, the lock file and a partial shard: the next run takes every key."""
    jobs, out = _jobs(tmp_path / "in", 2), tmp_path / "out"
    plan = plan_sharded(jobs, str(out), OPTIONS, weights_meta(model))
    keys, token = sorted(plan.keys.values()), plan.claim.token
    plan.release()
    code = (
        "import fsspec, sys\nfrom fpncli.io.shardlock import RunClaim\n"
        f"claim = RunClaim(fsspec.filesystem('file'), {str(out)!r}); claim.token = {token!r}\n"
        f"claim.claim({keys!r}, {plan.settings!r})\nprint(claim.path, flush=True)\n"
    )  # exits holding the claim: the lock goes with the process
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    dead = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert dead.returncode == 0, dead.stderr
    claims = Path(dead.stdout.strip())
    assert claims.exists() and json.loads(claims.read_text())["keys"] == keys
    (out / f"shard-{token}-0123abcd.tar.partial").write_bytes(b"half a shard")
    assert (out / LOCK_FILE).exists()
    summary = run_sharded(jobs, str(out), model, OPTIONS, shard_bytes=10**9)
    assert (summary.done, summary.skipped, summary.failed) == (2, 0, [])
    assert not claims.exists() and not list(out.glob("*.partial"))
    assert sorted(_keys_per_shard(out)) == keys


def test_a_live_run_refuses_overwrite_and_other_settings(tmp_path, model, caplog):
    jobs, out = _jobs(tmp_path / "in", 2), tmp_path / "out"
    weights = weights_meta(model)
    plan = plan_sharded(jobs, str(out), OPTIONS, weights)  # a live run holding both keys
    try:
        with pytest.raises(ValueError, match=rf"pid {os.getpid()}\).*--overwrite would delete"):
            plan_sharded(jobs, str(out), RunOptions(output=OPTIONS.output, overwrite=True), weights)
        with pytest.raises(ValueError, match="with other weights or options"):
            plan_sharded(jobs, str(out), RunOptions(output=OPTIONS.output, precision="bf16"),
                         weights)  # fmt: skip
        with caplog.at_level(logging.WARNING):
            again = plan_sharded(jobs, str(out), OPTIONS, weights)
        assert (again.todo, again.skipped) == ([], 2) and "left to it" in caplog.text
        again.release()
    finally:
        plan.release()
    after = plan_sharded(jobs, str(out), OPTIONS, weights)  # released: the keys are free
    assert len(after.todo) == 2
    after.release()


def test_a_live_runs_key_for_another_file_is_refused_not_left_to_it(tmp_path, model, caplog):
    """``p2/im0.png`` and ``other/im0.png`` are both ``im0``: a run planning while another held
    ``im0`` for its own file left its image to that run, which never extracts it, and said it
    was being extracted; it is refused, as the same run is once the other has written the key.
    A live run's key for the same file is still left to it."""
    out, weights = tmp_path / "out", weights_meta(model)
    first = plan_sharded(_jobs(tmp_path / "p2", 1), str(out), OPTIONS, weights)
    try:
        with pytest.raises(ValueError) as refused:
            plan_sharded(_jobs(tmp_path / "other", 1), str(out), OPTIONS, weights)
        message = str(refused.value)
        assert message.startswith("1 of these images would take keys that another fpncli run "
                                  f"(pid {os.getpid()}) is writing into {out} for other files "
                                  f"('im0' is {tmp_path / 'p2' / 'im0.png'}, not ")  # fmt: skip
        assert "give the images under distinct paths" in message
        with caplog.at_level(logging.WARNING):
            same = plan_sharded(_jobs(tmp_path / "p2", 1), str(out), OPTIONS, weights)
        assert (same.todo, same.skipped, same.left_to_others) == ([], 1, 1)
        assert "left to it" in caplog.text
        same.release()
    finally:
        first.release()


def test_an_earlier_versions_claims_file_without_sources_is_taken_at_its_word(tmp_path, model,
                                                                              caplog):  # fmt: skip
    """A live run of an earlier version records its keys without their input files
    (``sources``): its keys are left to it as before, never refused as claimed for other files,
    and the planning run says so."""
    import fcntl

    jobs, out = _jobs(tmp_path / "in", 2), tmp_path / "out"
    plan = plan_sharded(jobs, str(out), OPTIONS, weights_meta(model))
    keys, settings = sorted(plan.keys.values()), plan.settings
    plan.release()
    (out / CLAIMS_DIR).mkdir(exist_ok=True)
    old = out / CLAIMS_DIR / "0123456789ab.json"
    old.write_text(json.dumps({"pid": 4242, "settings": settings, "keys": keys[:1]}))
    fd = os.open(old, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as its run holds it (another open file: it conflicts)
    try:
        with caplog.at_level(logging.WARNING):
            again = plan_sharded(jobs, str(out), OPTIONS, weights_meta(model))
        assert (again.skipped, again.left_to_others) == (1, 1)
        assert sorted(again.keys[str(j.path)] for j in again.todo) == keys[1:]
        assert "(pid 4242)" in caplog.text and "left to it" in caplog.text
        again.release()
    finally:
        os.close(fd)


def test_an_object_store_output_warns_that_runs_are_not_coordinated(tmp_path, caplog):
    import fsspec

    fs = fsspec.filesystem("memory")
    with caplog.at_level(logging.WARNING):
        claim = RunClaim(fs, "/fpncli-lock-test/out")
    assert "cannot be locked" in caplog.text
    with wds_lock(fs, "/fpncli-lock-test/out"):  # no lock file on an object store
        claim.claim(["a"], "s")
        assert claim.live_runs() == [] and not fs.exists("/fpncli-lock-test/out/" + LOCK_FILE)
    claim.release()


def test_a_full_disk_in_a_wds_run_counts_only_committed_images(tmp_path, model, monkeypatch):
    """The open shard is dropped when the run stops: its images are not counted as done, and the
    line counts over the whole job list (a resume redoes them)."""
    jobs, out = _jobs(tmp_path / "in", 5), tmp_path / "out"
    real, calls = shard_writer.ShardWriter.write_image, []

    def write_image(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise OSError(28, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(shard_writer.ShardWriter, "write_image", write_image)
    summary = run_sharded(jobs, str(out), model, OPTIONS, shard_bytes=10**9)
    # three images were in the open shard when the disk filled: dropped, none done
    assert summary.done == 0 and not list(out.glob("shard-*.tar"))
    assert summary.aborted == "disk full: 0 of 5 done, rerun the same command after freeing space"
    monkeypatch.setattr(shard_writer.ShardWriter, "write_image", real)
    again = run_sharded(jobs, str(out), model, OPTIONS, shard_bytes=10**9)
    assert (again.done, again.aborted) == (5, None)


def test_a_fifo_or_folder_among_the_claims_is_skipped_not_waited_on(tmp_path, caplog):
    """A FIFO named like a claims file, or like a killed run's claims temporary a minute old,
    blocked the planning run's open forever (holding OUT's lock); a folder so named failed its
    removal. All are left alone with a warning."""
    import fsspec

    claims = tmp_path / CLAIMS_DIR
    claims.mkdir()
    os.mkfifo(claims / "stale.json")
    os.mkfifo(claims / ".dead.tmp")
    os.utime(claims / ".dead.tmp", (1e9, 1e9))  # long past: a killed run's
    (claims / "folder.json").mkdir()
    found = []

    def read():
        found.append(RunClaim(fsspec.filesystem("file"), str(tmp_path)).live_runs())

    with caplog.at_level(logging.WARNING):
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(30)
    if reader.is_alive():  # the old open blocks until a writer comes: let it go, then fail
        for fifo in ("stale.json", ".dead.tmp"):
            with contextlib.suppress(OSError):  # ENXIO: not the one waited on
                os.close(os.open(claims / fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(30)
        pytest.fail("reading the claims waited on a FIFO")
    assert found == [[]]
    assert "stale.json: not a regular file (a FIFO)" in caplog.text
    assert f"ignoring {claims / '.dead.tmp'}: a FIFO, not a claims file" in caplog.text
    assert "folder.json: not a regular file (a folder)" in caplog.text
    assert (claims / "stale.json").exists() and (claims / "folder.json").is_dir()
    assert (claims / ".dead.tmp").exists()


@pytest.mark.parametrize("kind", ["a symlink", "a dangling symlink", "a FIFO"])
def test_the_wds_lock_file_is_never_followed_nor_waited_on(tmp_path, kind):
    """``OUT/.fpncli-wds.lock`` that is a symlink (to a file outside OUT, or to none) was
    opened through it: the file pointed at was locked, or made empty outside OUT. Now the run
    is refused in one line that says to remove it, and nothing is made or changed outside OUT;
    a FIFO so named is refused as well, never waited on."""
    import fsspec

    out = tmp_path / "out"
    out.mkdir()
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    before = precious.stat()
    lock = out / LOCK_FILE
    if kind == "a FIFO":
        os.mkfifo(lock)
    else:
        lock.symlink_to("../precious.txt" if kind == "a symlink" else "../made.txt")
    with pytest.raises(ValueError) as refused:
        with wds_lock(fsspec.filesystem("file"), str(out)):
            pass
    said = kind if kind == "a FIFO" else "a symlink"
    assert str(refused.value) == (
        f"{lock} is {said}, not the empty file fpncli locks there while a run writes: remove it "
        "(a run makes it again)"
    )
    assert precious.read_text() == "keep me" and precious.stat().st_mtime_ns == before.st_mtime_ns
    assert not (tmp_path / "made.txt").exists()


def test_a_live_claims_file_with_a_forged_body_claims_nothing(tmp_path, caplog):
    """A claims file held by a live run whose body is not fpncli's (nested too deep, keys of
    another type) is a live run claiming nothing, with a warning: never a traceback."""
    import fcntl

    import fsspec

    claims = tmp_path / CLAIMS_DIR
    claims.mkdir()
    held = []
    for name, body in (("deep", "[" * 100_000), ("keys", '{"pid": 1, "keys": 5}')):
        (claims / f"{name}.json").write_text(body)
        fd = os.open(claims / f"{name}.json", os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)  # as its run holds it (another open file: it conflicts)
        held.append(fd)
    try:
        with caplog.at_level(logging.WARNING):
            runs = RunClaim(fsspec.filesystem("file"), str(tmp_path)).live_runs()
    finally:
        for fd in held:
            os.close(fd)
    assert sorted(r.token for r in runs) == ["deep", "keys"]
    assert all(r.keys == set() for r in runs)
    assert caplog.text.count("held by a live run but unreadable") == 2


def test_a_claim_is_live_only_while_its_run_holds_the_claims_file(tmp_path):
    """``claim_is_live`` judges as a planning run does: held is live; left unlocked (its run
    killed) or missing is gone, and the file is left for the planner to remove; an object
    store has no locks, so its runs are taken as live, as before."""
    import fsspec

    fs, root = fsspec.filesystem("file"), str(tmp_path)
    claim = RunClaim(fs, root)
    claim.claim(["a"], "s")
    assert claim_is_live(fs, root, claim.token)
    os.close(claim.fd)  # the run killed: its claims file stays, unlocked
    claim.fd = None
    assert not claim_is_live(fs, root, claim.token) and claim.path.exists()
    claim.release()
    assert not claim_is_live(fs, root, claim.token)
    assert claim_is_live(fsspec.filesystem("memory"), "/fpncli-lock-test/live", claim.token)


def test_a_ray_actor_commits_only_while_its_run_holds_the_claim(tmp_path):
    """A Ray actor writes and commits its shard in another process than its run's (the
    driver's) claim: after the driver was killed it committed still, and a new run that had
    planned meanwhile (the dead claim removed, its keys free) extracted the same keys, a key
    then in two shards. The actor's commit goes through while the run holds its claim; once
    the run is gone it raises, committing nothing and leaving no partial shard, and the next
    run redoes that image alone. The actor's call, without Ray."""
    import pickle

    from fpncli.run.ray_actor import Extractor
    from fpncli.run.steps import decode

    jobs, out = _jobs(tmp_path / "in", 2), tmp_path / "out"
    options = RunOptions(output=OPTIONS.output, workers=1, writers=1, batch_size=1)
    actor = Extractor({"weights": "random", "seed": 0, "device": "cpu", "options": options,
                       "format": "wds", "crash_after": None, "actors": 1})  # fmt: skip
    weights = weights_meta(actor.model)
    plan = plan_sharded(jobs, str(out), options, weights)
    keys = {str(Path(k).absolute()): v for k, v in plan.keys.items()}  # as ray_engine gives
    actor.config.update(fs=plan.fs, root=plan.root, settings=plan.settings,
                        token=plan.claim.token, keys=keys)  # fmt: skip

    def call(job):
        item = pickle.dumps(decode(job, options, actor.model.weights_info.input))
        path = str(job.path.absolute())
        return actor({"path": [path], "item": [item], "error": [""], "folder": [str(job.folder)],
                      "given": [path], "given_folder": [str(job.folder)]})  # fmt: skip

    try:
        rows = call(jobs[0])  # the run holds its claim: committed
        assert list(rows["status"]) == ["ok"] and rows["shard"][0]
        shards, parts = list(out.glob("shard-*.tar")), sorted((out / INDEX_DIR).iterdir())
        assert [p.name for p in shards] == [rows["shard"][0]] and len(parts) == 1
        os.close(plan.claim.fd)  # the driver killed: its claims file stays, unlocked
        plan.claim.fd = None
        with pytest.raises(RuntimeError) as gone:
            call(jobs[1])
        assert str(gone.value) == (
            f"the fpncli run that started this writer is gone (its claims file "
            f"{CLAIMS_DIR}/{plan.claim.token}.json is no longer held): its images are not "
            "committed but left to the next run"
        )
        assert list(out.glob("shard-*.tar")) == shards and not list(out.glob("*.partial"))
        assert sorted((out / INDEX_DIR).iterdir()) == parts
        again = plan_sharded(jobs, str(out), options, weights)  # removes the dead claims file
        assert [j.path for j in again.todo] == [jobs[1].path] and not plan.claim.path.exists()
        again.release()
    finally:
        plan.release()
