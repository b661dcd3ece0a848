"""``--engine ray`` on a local Ray with a fake GPU (``num_gpus=1``: the actor pool schedules as
on a GPU node while torch runs on the CPU). One Ray for this file; tiny images."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from fpncli.cli import cli

ray = pytest.importorskip("ray", reason="the Ray engine needs fpncli[ray]")
pq = pytest.importorskip("pyarrow.parquet", reason="the Ray engine needs fpncli[ray]")

pytestmark = pytest.mark.ray
SMALL = ["--weights", "random", "--min-size", "64", "--max-size", "96", "--no-overview"]
LEVELS = ("p2", "p3", "p4", "p5", "p6")


@pytest.fixture(scope="module")  # shut down after this file: its idle processes use CPU
def ray_cluster():
    ray.init(num_cpus=4, num_gpus=1, object_store_memory=128 * 2**20, include_dashboard=False,
             logging_level="WARNING")  # fmt: skip
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray-in")
    rng = np.random.RandomState(1)
    for i, size in enumerate([(48, 40), (40, 56), (48, 40)]):
        pixels = rng.randint(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"im{i}.png")
    (folder / "empty.png").write_bytes(b"")
    return folder


def _extract(*args):
    return CliRunner().invoke(cli, ["extract", *map(str, args), *SMALL])


def _given(jobs) -> dict[str, list[str]]:
    """The actor's columns naming each job's image and folder as the user gave them."""
    return {"given": [str(j.path) for j in jobs], "given_folder": [str(j.folder) for j in jobs]}


def _shards(out: Path) -> dict[str, dict[str, bytes]]:
    found = {}
    for path in sorted(out.glob("shard-*.tar")):
        with tarfile.open(path) as tar:
            found[path.name] = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    return found


def test_ray_engine_equals_local_in_both_formats(ray_cluster, inputs, tmp_path):
    """Tensors and manifests of the Ray path equal the local engine's (files and wds, the
    latter through a file:// URL); the empty file is a failed row; every shard matches its
    index rows. Equal to float32 rounding, not bit for bit: Ray gives an actor one OpenMP
    thread, and oneDNN sums a convolution in another order with another thread count."""
    from fpncli.io.latest import latest_extraction

    local = tmp_path / "local"
    assert _extract(inputs, "-o", local).exit_code == 1  # empty.png fails
    # batch size 1 everywhere: a batched convolution may round differently from a single one
    files = _extract(inputs, "-o", tmp_path / "rf", "--engine", "ray", "--batch-size", "1")
    assert files.exit_code == 1, files.output
    assert "empty.png" in files.output and "done 3" in files.output
    # the latest extraction (for a bare `fpncli show`): the last folder written, as the local
    # engine records it (the actors' order), not the local run's before it
    assert latest_extraction() in [(tmp_path / "rf" / f"im{i}").resolve() for i in range(3)]
    url = f"file://{tmp_path}/rw"
    wds = _extract(inputs, "-o", url, "--engine", "ray", "--format", "wds", "--batch-size", "1")
    assert wds.exit_code == 1 and "done 3" in wds.output, wds.output
    # as the local engine records a wds output: a file:// URL as the folder it names
    assert str(latest_extraction()) == str((tmp_path / "rw").resolve())

    index = pq.read_table(tmp_path / "rw" / "index.parquet").to_pylist()
    assert {r["key"]: r["status"] for r in index} == {
        "empty": "failed", "im0": "ok", "im1": "ok", "im2": "ok"
    }  # fmt: skip
    shards = _shards(tmp_path / "rw")
    in_shards = sorted(n[:-5] for members in shards.values() for n in members if n.endswith("json"))
    assert in_shards == ["im0", "im1", "im2"]  # each key in exactly one shard
    for row in (r for r in index if r["status"] == "ok"):
        members = shards[row["shard"]]
        assert sorted(row["members"]) == sorted(n for n in members if n.startswith(row["key"]))
        want = json.loads((local / row["key"] / "manifest.json").read_text())
        folder = tmp_path / "rf" / row["key"]
        for manifest in (json.loads(members[f"{row['key']}.json"]),
                         json.loads((folder / "manifest.json").read_text())):  # fmt: skip
            assert manifest["preprocess"] == want["preprocess"]
            for level, meta in json.loads(json.dumps(want["levels"])).items():
                got = manifest["levels"][level]
                for stat in ("min", "max", "mean", "range"):  # float sums: approximately
                    if stat in meta:
                        assert got.pop(stat) == pytest.approx(meta.pop(stat), rel=1e-5, abs=1e-4)
                assert got == meta
        for level in LEVELS:
            expected = np.load(local / row["key"] / f"{level}.npy")
            tolerance = {"rtol": 1e-5, "atol": 1e-5 * float(np.abs(expected).max())}
            np.testing.assert_allclose(np.load(folder / f"{level}.npy"), expected, **tolerance)
            array = np.load(io.BytesIO(members[f"{row['key']}.{level}.npy"]))
            np.testing.assert_allclose(array, expected, **tolerance)
            assert row[f"{level}_shape"] == list(expected.shape)


def test_ray_failures_name_inputs_as_given(ray_cluster, inputs, tmp_path, monkeypatch):
    """A failed image is named in run.json, in the summary and in the wds index as the local
    engine names it, relative paths relative (the actors read it by its absolute path)."""
    import shutil

    monkeypatch.chdir(tmp_path)
    Path("in").mkdir()
    for name in ("im0.png", "empty.png"):
        shutil.copy(inputs / name, Path("in") / name)
    shutil.copy(inputs / "empty.png", Path("in") / "odd\nname.png")  # its reason escapes it
    assert _extract("in", "-o", "local").exit_code == 1
    want = json.loads(Path("local/run.json").read_text())["failed"]
    assert [f["path"] for f in want] == ["in/empty.png", "in/odd\nname.png"]  # as given
    assert want[1]["reason"].startswith("in/odd\\nname.png: ")
    for fmt in ("files", "wds"):
        result = _extract("in", "-o", f"ray-{fmt}", "--engine", "ray", "--format", fmt)
        assert result.exit_code == 1 and "failed: in/empty.png: " in result.output, result.output
        assert str(tmp_path) not in result.output
        assert json.loads(Path(f"ray-{fmt}/run.json").read_text())["failed"] == want
    index = pq.read_table("ray-wds/index.parquet").to_pylist()
    failed = sorted(r["error"] for r in index if r["status"] == "failed")
    assert failed == [f["reason"] for f in want]


def test_ray_as_given_rewrites_escaped_paths():
    """A path in a failure's text escaped (by one_line, an OSError's repr, quote_name) is
    written as given all the same, in the same escaped form."""
    from fpncli.run.ray_actor import _as_given

    bad = "/w/in/e\udcffe.png"  # a name's byte that is not UTF-8
    as_given = _as_given({"/w/in/a\nb.png": "in/a\nb.png", "/w/in/c\x01d.png": "in/c\x01d.png",
                          bad: "in/e\udcffe.png", "/w/out/c\x01d": "out/c\x01d"})  # fmt: skip
    cases = {
        "/w/in/a\\nb.png: empty file (0 bytes)": "in/a\\nb.png: empty file (0 bytes)",
        "[Errno 2] No such file or directory: '/w/in/a\\nb.png'":
            "[Errno 2] No such file or directory: 'in/a\\nb.png'",
        'cannot read "/w/in/c\\x01d.png" (gone)': 'cannot read "in/c\\x01d.png" (gone)',
        "[Errno 5] I/O error: '/w/in/c\\x01d.png'": "[Errno 5] I/O error: 'in/c\\x01d.png'",
        'cannot read "/w/in/e\\udcffe.png"': 'cannot read "in/e\\udcffe.png"',
        "/w/in/c\x01d.png: cannot write /w/out/c\x01d": "in/c\x01d.png: cannot write out/c\x01d",
        "cannot write '/w/out/c\\x01d/p2.npy'": "cannot write 'out/c\\x01d/p2.npy'",
    }  # fmt: skip
    for text, expected in cases.items():
        assert as_given(text) == expected


def test_ray_failed_run_reruns_to_completion(ray_cluster, inputs, tmp_path, monkeypatch):
    """An actor fails after k images (before committing its shard); the same command then
    completes, keeps the shards already committed, and puts no key in two shards."""
    out = tmp_path / "out"
    args = [inputs, "-o", out, "--engine", "ray", "--format", "wds", "--shard-size", "1B"]
    args += ["--batch-size", "2"]
    monkeypatch.setenv("FPNCLI_TEST_CRASH_AFTER", "2")
    first = _extract(*args)
    assert first.exit_code == 1 and "the Ray job failed" in first.output, first.output
    assert "injected failure" in first.output and "Traceback" not in first.output
    log = json.loads((out / "run.json").read_text())  # this run's, as a local run's would be
    assert "the Ray job failed" in log["aborted"] and log["total"] == 4, log
    # what the actors committed before it failed (it said 0 done, 0 bytes, 0 s: the progress
    # reports that had come back)
    committed = [n for members in _shards(out).values() for n in members if n.endswith(".json")]
    assert log["done"] == len(committed) >= 1, log
    assert log["bytes_written"] > 0 and log["seconds"] > 0, log
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tar")}
    assert 1 <= len(kept) <= 2
    monkeypatch.delenv("FPNCLI_TEST_CRASH_AFTER")
    second = _extract(*args)
    assert second.exit_code == 1 and "empty.png" in second.output, second.output
    assert f"skipped {len(kept)}" in second.output
    names = [n for members in _shards(out).values() for n in members if n.endswith(".json")]
    assert sorted(names) == ["im0.json", "im1.json", "im2.json"]
    for name, mtime in kept.items():
        assert (out / name).stat().st_mtime_ns == mtime
    assert not list(out.glob("*.partial*"))


class _FaultyExtractor:
    """Made an ``Extractor`` subclass in the test (Ray ships it by value): from the actor's
    3rd image on, its ``fault`` strikes: writes into tar shards fail with ENOSPC (``disk``, a
    disk that fills) or EMFILE (``files``, ``ulimit -n`` reached), or the device fails
    (``device``)."""

    images, fault = 0, "disk"

    def _run(self, batch: dict) -> dict:
        import errno
        from unittest import mock

        from fpncli.run import runner

        type(self).images += sum(1 for error in batch["error"] if not error)
        if type(self).images <= 2:
            return super()._run(batch)

        def full(*args, **kwargs):
            if self.fault == "files":
                raise OSError(errno.EMFILE, "Too many open files")
            raise OSError(errno.ENOSPC, "No space left on device")

        def lost(*args, **kwargs):
            raise RuntimeError("injected device loss")

        with contextlib.ExitStack() as stack:  # this call only: the worker may be reused
            if self.fault in ("disk", "files"):
                stack.enter_context(mock.patch.object(tarfile.TarFile, "addfile", full))
            else:
                stack.enter_context(mock.patch.object(runner, "infer_batch", lost))
                stack.enter_context(mock.patch.object(runner, "device_broken", lambda d: True))
            return super()._run(batch)


@pytest.mark.parametrize(
    ("fault", "stopped"),
    [
        ("disk", "disk full: 2 of 4 done, rerun the same command after freeing space"),
        ("device", "failed (RuntimeError: injected device loss): 2 of 4 done, rerun the same "
         "command to resume"),
        ("files", "too many open files: 2 of 4 done, rerun the same command with a higher limit "
         "(ulimit -n 4096, say) or fewer --workers/--writers"),
    ],
    ids=["disk", "device", "files"],
)  # fmt: skip
def test_ray_full_disk_or_failed_device_stops_the_run_counted_over_the_run(
    ray_cluster, inputs, tmp_path, monkeypatch, fault, stopped
):
    """An actor's full disk (or failed device): the run stops as a local run does, counted
    over the run ("Error: the Ray job failed: OSError: disk full: 0 of 1 done", one call's
    counts, and run.json's "done": 0, though 2 images were committed)."""
    from ray import cloudpickle

    from fpncli.run import ray_engine

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    faulty = type("Faulty", (_FaultyExtractor, ray_engine.Extractor), {"fault": fault})
    monkeypatch.setattr(ray_engine, "Extractor", faulty)
    out = tmp_path / "out"
    args = [inputs, "-o", out, "--engine", "ray", "--format", "wds", "--shard-size", "1B"]
    try:
        first = _extract(*args)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert first.exit_code == 1 and f"{stopped}\n" in first.output, first.output
    assert "Ray job failed" not in first.output and "Traceback" not in first.output
    log = json.loads((out / "run.json").read_text())
    assert log["done"] == 2 and log["aborted"].endswith(stopped), log
    assert len(list(out.glob("shard-*.tar"))) == 2 and not list(out.glob("*.partial*"))
    monkeypatch.undo()
    second = _extract(*args)
    assert "skipped 2" in second.output and "done 1" in second.output, second.output


def test_ray_progress_reports_carry_the_bytes_written(ray_cluster, inputs, tmp_path):
    """Each progress report of a Ray run says the bytes written so far, as a local run's do
    (a Ctrl-C'd run's log has them from its last report); the last one says the run's."""
    import fpncli
    from fpncli.io.jobs import Job
    from fpncli.io.outputs import OutputOptions
    from fpncli.run.ray_engine import RayOptions, run_ray
    from fpncli.run.steps import RunOptions

    out = tmp_path / "out"
    jobs = [Job(p, out / p.stem) for p in sorted(inputs.glob("im*.png"))]
    output = OutputOptions(min_size=64, max_size=96, save_heatmaps=False, save_overview=False)
    reports = []
    summary = run_ray(jobs, str(out), fpncli.load_backbone("random"),
                      RunOptions(output=output, batch_size=1), RayOptions(device="cpu"),
                      progress=reports.append)  # fmt: skip
    assert summary.done == 3 and summary.bytes_written > 0
    assert reports[-1].done == 3 and reports[-1].bytes_written == summary.bytes_written


def test_ray_missing_gpus_fail_fast(ray_cluster, inputs, tmp_path):
    """More GPUs than the cluster has: a usage error naming the option (exit 2), at once."""
    start = time.monotonic()
    result = _extract(inputs, "-o", tmp_path / "o", "--engine", "ray", "--gpu-workers", "2")
    assert result.exit_code == 2, result.output
    assert (
        "Invalid value for '--gpu-workers': 2 workers x 1 GPUs each need 2 GPUs; the Ray "
        "cluster has 1: ask for at most 1 workers" in result.output
    )
    result = _extract(inputs, "-o", tmp_path / "o", "--engine", "ray", "--gpus-per-worker", "2")
    assert result.exit_code == 2, result.output
    assert (
        "Invalid value for '--gpus-per-worker': 2 GPUs per worker, but the Ray cluster "
        "has 1 GPUs" in result.output
    )
    assert time.monotonic() - start < 60  # not Ray's endless wait for resources


def test_ray_multi_node_refuses_a_local_output(ray_cluster, inputs, tmp_path, monkeypatch):
    nodes = [{"Alive": True, "NodeID": "a"}, {"Alive": True, "NodeID": "b"}]
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    result = _extract(inputs, "-o", tmp_path / "o", "--engine", "ray")
    assert result.exit_code == 1 and "would scatter the outputs" in result.output


def test_ray_actor_skips_a_folder_another_run_completed_before_the_model(
    inputs, tmp_path, monkeypatch
):
    """The actor's call, without Ray: an image whose folder another run completed after it was
    decoded is returned as skipped (counted so), and never goes through the model."""
    import pickle
    import shutil

    from fpncli.io.outputs import OutputOptions
    from fpncli.run import runner
    from fpncli.run.pipeline import Job, RunOptions, RunSummary, decode, run_jobs
    from fpncli.run.ray_actor import Extractor
    from fpncli.run.ray_engine import _count

    output = OutputOptions(min_size=64, max_size=96, save_heatmaps=False, save_overview=False)
    options = RunOptions(output=output, workers=1, writers=1)
    actor = Extractor({"weights": "random", "seed": 0, "device": "cpu", "options": options,
                        "format": "files", "crash_after": None, "actors": 1})  # fmt: skip
    a, b = inputs / "im0.png", inputs / "im1.png"
    jobs = [Job(a, tmp_path / "out" / "a"), Job(b, tmp_path / "out" / "b")]
    fmt = actor.model.weights_info.input
    items = [pickle.dumps(decode(j, options, fmt)) for j in jobs]
    assert run_jobs([Job(a, tmp_path / "ref")], actor.model, options).done == 1
    shutil.copytree(tmp_path / "ref", jobs[0].folder)  # another run finished it meanwhile
    seen, real = [], runner.infer_batch
    monkeypatch.setattr(
        runner, "infer_batch", lambda m, its, *rest: seen.extend(its) or real(m, its, *rest)
    )
    rows = actor({"path": [str(a), str(b)], "item": items, "error": ["", ""],
                  "folder": [str(j.folder) for j in jobs], **_given(jobs)})  # fmt: skip
    assert list(rows["status"]) == ["skipped", "ok"]
    assert [it.job.path for it in seen] == [b]
    summary = RunSummary(total=2)
    _count(rows, summary, set())
    assert (summary.done, summary.skipped, summary.failed) == (1, 1, [])


def test_ray_actor_never_replaces_another_files_outputs_written_since_the_plan(inputs, tmp_path):
    """The actor's call, without Ray: a folder another run filled with another file's
    complete outputs after the driver planned it free is kept, byte for byte, and its image's
    row fails with the line naming that file; where the file is one of the run's (the
    identities the driver's plan read, in the actor's config), it is redone."""
    import pickle
    import shutil

    from fpncli.io.outputs import OutputOptions
    from fpncli.run.pipeline import Job, RunOptions, RunSummary, decode, run_jobs
    from fpncli.run.plan import RunInputs
    from fpncli.run.ray_actor import Extractor
    from fpncli.run.ray_engine import _count

    output = OutputOptions(min_size=64, max_size=96, save_heatmaps=False, save_overview=False)
    options = RunOptions(output=output, workers=1, writers=1)
    config = {"weights": "random", "seed": 0, "device": "cpu", "options": options,
              "format": "files", "crash_after": None, "actors": 1}  # fmt: skip
    a, b, other = inputs / "im0.png", inputs / "im1.png", inputs / "im2.png"
    jobs = [Job(a, tmp_path / "out" / "a"), Job(b, tmp_path / "out" / "b")]
    batch = {"path": [str(a), str(b)], "error": ["", ""],
             "folder": [str(j.folder) for j in jobs], **_given(jobs)}  # fmt: skip
    actor = Extractor(config)
    items = [pickle.dumps(decode(j, options, actor.model.weights_info.input)) for j in jobs]
    assert run_jobs([Job(other, tmp_path / "theirs")], actor.model, options).done == 1
    kept = {p.name: p.read_bytes() for p in (tmp_path / "theirs").iterdir()}
    shutil.copytree(tmp_path / "theirs", jobs[0].folder)  # another run wrote it meanwhile
    rows = actor({**batch, "item": items})
    assert list(rows["status"]) == ["failed", "ok"]
    assert rows["error"][0] == (
        f"{jobs[0].folder} holds the outputs of another file, {os.path.realpath(other)}, not of "
        f"{a} (another run into the same -o wrote them): they are kept, and this image is not "
        "extracted; extract it with another -o"
    )
    assert {p.name: p.read_bytes() for p in jobs[0].folder.iterdir()} == kept
    summary = RunSummary(total=2)
    _count(rows, summary, set())
    assert (summary.done, len(summary.failed)) == (1, 1)
    whole = RunInputs([Job(other, tmp_path / "c"), *jobs])  # as the driver's plan read them
    assert other in whole  # (read: the identities)
    actor = Extractor({**config, "identities": whole.identities})
    assert list(actor({**batch, "item": items})["status"]) == ["ok", "skipped"]
    manifest = json.loads((jobs[0].folder / "manifest.json").read_text())
    assert manifest["input"]["real_path"] == os.path.realpath(a)


def test_ray_actor_rows_count_the_levels_that_overflowed_float16(inputs, tmp_path):
    """The actor's call, without Ray: each image's levels that overflowed a float16 .npy come
    back with its row, and the driver's summary adds them up (extract then says it once)."""
    import pickle

    from fpncli.io.outputs import OutputOptions
    from fpncli.run.pipeline import Job, RunOptions, RunSummary, decode
    from fpncli.run.ray_actor import Extractor
    from fpncli.run.ray_engine import _count
    from fpncli.weights.synthetic import seeded_state_dict, write_detectron2_pth

    state = seeded_state_dict(3)
    for name in state:  # FPN outputs past float16's range (+-65504)
        if "fpn_output" in name and name.endswith("weight"):
            state[name] = state[name] * 200
    write_detectron2_pth(tmp_path / "big.pth", state)
    output = OutputOptions(min_size=64, max_size=96, save_heatmaps=False, save_overview=False,
                           levels=("p5", "p6"), dtype="float16")  # fmt: skip
    options = RunOptions(output=output, workers=1, writers=1)
    actor = Extractor({"weights": str(tmp_path / "big.pth"), "seed": 0, "device": "cpu",
                        "options": options, "format": "files", "crash_after": None,
                        "actors": 1})  # fmt: skip
    jobs = [Job(inputs / f"im{i}.png", tmp_path / "out" / f"im{i}") for i in range(2)]
    items = [pickle.dumps(decode(j, options, actor.model.weights_info.input)) for j in jobs]
    rows = actor({"path": [str(j.path) for j in jobs], "item": items, "error": ["", ""],
                  "folder": [str(j.folder) for j in jobs], **_given(jobs)})  # fmt: skip
    assert list(rows["status"]) == ["ok", "ok"] and list(rows["float16_levels"]) == [2, 2]
    summary = RunSummary(total=2)
    _count(rows, summary, set())
    assert (summary.done, summary.float16_images, summary.float16_levels) == (2, 2, 4)


def test_ray_actor_warnings_go_back_with_its_rows_and_are_said_once(
    inputs, tmp_path, monkeypatch, caplog
):
    """The actor's call, without Ray: its fpncli warnings (what it prints does not reach the
    terminal) come back with its rows, and the driver says each, a once-per-run one once over
    all the calls (of one actor or several)."""
    import logging
    import pickle

    from fpncli.io.outputs import OutputOptions
    from fpncli.run import runner
    from fpncli.run.pipeline import Job, RunOptions, RunSummary, decode
    from fpncli.run.ray_actor import Extractor
    from fpncli.run.ray_engine import _count
    from fpncli.run.summary import ONCE

    output = OutputOptions(min_size=64, max_size=96, save_heatmaps=False, save_overview=False)
    options = RunOptions(output=output, workers=1, writers=1)
    actor = Extractor({"weights": "random", "seed": 0, "device": "cpu", "options": options,
                        "format": "files", "crash_after": None, "actors": 1})  # fmt: skip
    real = runner.infer_batch

    def warn(model, items, *rest):
        runner.log.warning("a warning about %s", items[0].job.path.name)
        runner.log.warning("a warning of the run", extra={ONCE: "test"})
        return real(model, items, *rest)

    monkeypatch.setattr(runner, "infer_batch", warn)
    handlers = list(logging.getLogger("fpncli").handlers)
    summary, said, told = RunSummary(total=2), set(), []
    caplog.set_level(logging.WARNING)
    for name in ("im0.png", "im1.png"):
        job = Job(inputs / name, tmp_path / "out" / name)
        item = pickle.dumps(decode(job, options, actor.model.weights_info.input))
        rows = actor({"path": [str(job.path)], "item": [item], "error": [""],
                      "folder": [str(job.folder)], **_given([job])})  # fmt: skip
        assert list(rows["status"]) == ["ok"] and rows["log"][0]
        caplog.clear()  # the actor's own records (in this process, caplog sees them too)
        _count(rows, summary, said)
        told += [(r.name, r.levelname, r.getMessage()) for r in caplog.records]
    assert told == [
        ("fpncli.run.runner", "WARNING", "a warning about im0.png"),
        ("fpncli.run.runner", "WARNING", "a warning of the run"),
        ("fpncli.run.runner", "WARNING", "a warning about im1.png"),
    ]
    assert summary.done == 2
    assert logging.getLogger("fpncli").handlers == handlers  # the call's relay removed


def test_ray_actor_warnings_of_loading_and_of_a_failed_call_reach_the_driver(
    inputs, tmp_path, monkeypatch, caplog
):
    """The actor, without Ray: the warnings said while it loads the weights (the weights'
    cache) come back with its first call's rows; those of a call that fails, with its error,
    which the driver says before the failure."""
    import logging
    import pickle

    import fpncli.api
    from fpncli.io.outputs import OutputOptions
    from fpncli.run import runner
    from fpncli.run.pipeline import Job, RunOptions, RunSummary, decode
    from fpncli.run.ray_actor import Extractor
    from fpncli.run.ray_engine import _count, _failure

    real_load, real_infer = fpncli.api.load_backbone, runner.infer_batch

    def load(*args, **kwargs):
        logging.getLogger("fpncli.weights.hub").warning("a warning of loading")
        return real_load(*args, **kwargs)

    def infer(model, items, *rest):
        runner.log.warning("a warning about %s", items[0].job.path.name)
        return real_infer(model, items, *rest)

    monkeypatch.setattr(fpncli.api, "load_backbone", load)
    monkeypatch.setattr(runner, "infer_batch", infer)
    output = OutputOptions(min_size=64, max_size=96, save_heatmaps=False, save_overview=False)
    options = RunOptions(output=output, workers=1, writers=1)
    actor = Extractor({"weights": "random", "seed": 0, "device": "cpu", "options": options,
                        "format": "files", "crash_after": 2, "actors": 1})  # fmt: skip
    summary, said, told = RunSummary(total=2), set(), []
    caplog.set_level(logging.WARNING)
    for name in ("im0.png", "im1.png"):  # the second call fails: the crash test's failure
        job = Job(inputs / name, tmp_path / "out" / name)
        item = pickle.dumps(decode(job, options, actor.model.weights_info.input))
        batch = {"path": [str(job.path)], "item": [item], "error": [""],
                 "folder": [str(job.folder)], **_given([job])}  # fmt: skip
        try:
            rows = actor(batch)
        except RuntimeError as e:
            caplog.clear()  # the actor's own records (in this process, caplog sees them too)
            assert "injected failure after 2 images" in _failure(e, said)
        else:
            caplog.clear()
            _count(rows, summary, said)
        told += [(r.name, r.getMessage()) for r in caplog.records]
    assert told == [
        ("fpncli.weights.hub", "a warning of loading"),
        ("fpncli.run.runner", "a warning about im0.png"),
        ("fpncli.run.runner", "a warning about im1.png"),
    ]


def test_ray_cpu_actor_takes_the_cpu_default_batch_size(inputs, tmp_path, monkeypatch):
    """The actor's call, without Ray: without --batch-size, an actor on the CPU runs one image
    at a time, as the local engine does there (a batch rounds differently from single images),
    though the driver, not knowing where the actors run, resolved the GPU default; a batch size
    given is kept."""
    import pickle

    from fpncli.io.outputs import OutputOptions
    from fpncli.run import runner
    from fpncli.run.pipeline import Job, RunOptions, decode
    from fpncli.run.ray_actor import Extractor

    output = OutputOptions(min_size=64, max_size=96, save_heatmaps=False, save_overview=False)
    options = RunOptions(output=output, batch_size=8, workers=1, writers=1)
    a, c = inputs / "im0.png", inputs / "im2.png"  # the same size: one bucket
    sizes, real = [], runner.infer_batch
    monkeypatch.setattr(
        runner, "infer_batch", lambda m, its, *rest: sizes.append(len(its)) or real(m, its, *rest)
    )
    for default_batch, expected in ((True, [1, 1]), (False, [2])):
        actor = Extractor({"weights": "random", "seed": 0, "device": "cpu", "options": options,
                            "format": "files", "crash_after": None, "actors": 1,
                            "default_batch": default_batch})  # fmt: skip
        out = tmp_path / str(default_batch)
        jobs = [Job(a, out / "a"), Job(c, out / "c")]
        items = [pickle.dumps(decode(j, options, actor.model.weights_info.input)) for j in jobs]
        sizes.clear()
        rows = actor({"path": [str(a), str(c)], "item": items, "error": ["", ""],
                      "folder": [str(j.folder) for j in jobs], **_given(jobs)})  # fmt: skip
        assert list(rows["status"]) == ["ok", "ok"]
        assert sizes == expected


#: the start of a line Ray's loggers write: Python's ("2026-01-02 03:04:05,678\tWARNING x.py:85
#: -- ..."), the C++ core's ("[2026-01-02 03:04:05,678 E 123 123] core_worker.cc:2465: ...") and
#: a worker's or the raylet's, streamed to the driver ("(MapWorker pid=123) ...", "(raylet) ...")
RAY_LINE = re.compile(r"^(\d{4}-\d\d-\d\d [\d:,]+\s|\[\d{4}-\d\d-\d\d [\d:,]+ [A-Z] \d+|\(\w+[ )])")


def test_ray_engine_keeps_rays_own_logs_off_the_terminal(tmp_path):
    """A run that starts its own Ray prints fpncli's lines only: none of Ray's log lines (the
    token-authentication notice, the core's notices about Ray Data's actors); a failed image is
    still named in the summary and in run.json."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(inputs / "im0.png")
    (inputs / "empty.png").write_bytes(b"")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_BACKEND_LOG_LEVEL")}
    command = [sys.executable, "-m", "fpncli", "extract", str(inputs), "-o", str(tmp_path / "out"),
               "--engine", "ray", *SMALL]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert f"failed: {inputs / 'empty.png'}: empty file" in output and "done 1," in output, output
    failed = json.loads((tmp_path / "out" / "run.json").read_text())["failed"]
    assert [f["path"] for f in failed] == [str(inputs / "empty.png")]
    lines = output.splitlines()
    assert not [ln for ln in lines if RAY_LINE.match(ln)], output
    assert "core_worker.cc" not in output and "authentication_token" not in output, output


def test_ray_core_log_level_is_set_for_the_start_only(monkeypatch, capfd):
    """RAY_BACKEND_LOG_LEVEL is set while Ray starts and removed after (a user's own value is
    left alone, as is everything when the user asked for Ray's logs on stderr), and what the
    start writes on stderr (the core's announcement of the variable) stays off the terminal."""
    from fpncli.run.ray_start import _core_logs_fatal_only

    monkeypatch.delenv("RAY_BACKEND_LOG_LEVEL", raising=False)
    monkeypatch.setenv("RAY_LOG_TO_STDERR", "1")
    with _core_logs_fatal_only():
        assert "RAY_BACKEND_LOG_LEVEL" not in os.environ
        os.write(2, b"kept\n")
    assert capfd.readouterr().err == "kept\n"
    monkeypatch.delenv("RAY_LOG_TO_STDERR")
    with _core_logs_fatal_only():
        assert os.environ["RAY_BACKEND_LOG_LEVEL"] == "fatal"
        os.write(2, b"[2026-01-02 03:04:05,678 I 1 1] logging.cc:303: Set ray log level\n")
    assert "RAY_BACKEND_LOG_LEVEL" not in os.environ
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"
    monkeypatch.setenv("RAY_BACKEND_LOG_LEVEL", "debug")
    with _core_logs_fatal_only():
        assert os.environ["RAY_BACKEND_LOG_LEVEL"] == "debug"
    assert os.environ["RAY_BACKEND_LOG_LEVEL"] == "debug"


class _FakeRay:
    """A Ray that records how ``ray.init`` was called (and what the environment was then), and
    that writes ``wrote`` on fd 2 and raises ``fails`` from it when given."""

    def __init__(self, wrote: bytes = b"", fails: Exception | None = None) -> None:
        self.calls, self.wrote, self.fails, self.shutdowns = [], wrote, fails, 0

    def is_initialized(self) -> bool:
        return False

    def shutdown(self) -> None:
        self.shutdowns += 1

    def init(self, **kwargs) -> None:
        import logging

        self.calls.append({**kwargs, "env": os.environ.get("RAY_BACKEND_LOG_LEVEL")})
        logging.getLogger("ray").setLevel(kwargs["logging_level"])  # as ray.init does
        os.write(2, self.wrote)
        if self.fails is not None:
            raise self.fails


def test_ray_is_quieted_only_when_asked(monkeypatch, capfd):
    """A library caller's Ray starts as Ray sets itself up (its logs at WARNING, the workers'
    output streamed, nothing captured); RayOptions.quiet, which the CLI sets unless -v, keeps
    Ray's chatter off the terminal."""
    import logging

    from fpncli.run.ray_engine import RayOptions
    from fpncli.run.ray_start import connect

    monkeypatch.delenv("RAY_BACKEND_LOG_LEVEL", raising=False)
    monkeypatch.delenv("RAY_LOG_TO_STDERR", raising=False)
    assert RayOptions().quiet is False
    ray = _FakeRay(wrote=b"Ray's notice\n")
    assert connect(ray, None) is True
    assert ray.calls == [
        {"include_dashboard": False, "logging_level": logging.WARNING, "env": None}
    ]
    assert capfd.readouterr().err == "Ray's notice\n"  # fd 2 left alone
    assert connect(ray, None, quiet=True) is True
    assert ray.calls[1] == {"include_dashboard": False, "logging_level": logging.ERROR,
                            "log_to_driver": False, "env": "fatal"}  # fmt: skip
    assert capfd.readouterr().err == ""


def test_a_failed_ray_start_gives_the_ray_logger_back_and_says_what_ray_wrote(monkeypatch, caplog):
    """ray.init that raises: the ``ray`` logger's level it set is given back, and what Ray wrote
    on stderr while failing (often the real cause) is said at WARNING, not kept for DEBUG."""
    import logging

    from fpncli.run import ray_engine
    from fpncli.run.ray_engine import RayOptions, run_ray
    from fpncli.run.steps import RunOptions

    monkeypatch.delenv("RAY_BACKEND_LOG_LEVEL", raising=False)
    monkeypatch.delenv("RAY_LOG_TO_STDERR", raising=False)
    ray_log = logging.getLogger("ray")
    monkeypatch.setattr(ray_log, "level", logging.NOTSET)
    fake = _FakeRay(wrote=b"raylet: port 6379 taken\n", fails=RuntimeError("no raylet"))
    monkeypatch.setattr(ray_engine, "import_ray", lambda: fake)
    caplog.set_level(logging.DEBUG, logger="fpncli")
    for quiet in (False, True):
        with pytest.raises(
            RuntimeError, match=r"cannot start or reach Ray \(local\): RuntimeError: no raylet"
        ):
            run_ray([], "out", None, RunOptions(), RayOptions(quiet=quiet))
        assert ray_log.level == logging.NOTSET
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert said == [("WARNING", "Ray's start wrote:\nraylet: port 6379 taken")]  # (quiet only)


def test_a_local_ray_that_times_out_starting_is_one_line_and_the_process_ends(inputs, tmp_path):
    """ray.init raises a bare Exception when its node times out starting (under ``ulimit -v``,
    say): that was a traceback. Now the one line, exit code 1, and ray.shutdown is called for
    what the failed start left running. The process then hung at exit: the interpreter's cleanup
    of Ray's GCS client waits on gRPC threads that never started. The console entry point now
    ends the process at once after the line; a thread that never ends stands in for Ray's
    client here (the normal exit waits for it)."""
    script = (
        "import sys, threading, ray\n"
        "from fpncli.cli import main\n"
        "def init(**kwargs):\n"
        "    threading.Thread(target=threading.Event().wait).start()  # the exit waits on it\n"
        "    raise Exception('The current node timed out during startup')\n"
        "ray.init = init\n"
        "ray.shutdown = lambda: print('shut down', file=sys.stderr)\n"
        "sys.argv = ['fpncli', *sys.argv[1:]]\n"
        "main()\n"
    )
    args = ["extract", str(inputs / "im0.png"), "-o", str(tmp_path / "o"), "--engine", "ray",
            "--device", "cpu", "--gpu-workers", "2", *SMALL]  # fmt: skip
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).parents[1])  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "shut down" in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error")]
    assert errors == [
        "Error: cannot start or reach Ray (local): Exception: The current node timed out during "
        "startup"
    ], done.stderr
    assert not (tmp_path / "o").exists()


#: ``fpncli.cli`` imported once, then for each exit code (argv: a JSON list of their code), a
#: child forked from that state, its stdout and stderr on pipes, marks a failed Ray start and
#: calls ``_end_now_if_exit_hangs``: as a fresh process each, without importing fpncli again
#: (where there is no fork, one case, in a process of its own). One JSON line a case:
#: ``[exit code, stderr, stdout]``.
ENDED_AT_ONCE = """
import json, os, sys
codes = json.loads(sys.argv[1])
if not hasattr(os, "fork"):
    from fpncli.run import ray_start
    ray_start._failed_starts.append('local')
    from fpncli.cli import _end_now_if_exit_hangs
    _end_now_if_exit_hangs(eval(codes[0]))
    print('not ended')
    sys.exit()
import fpncli.cli
from fpncli.run import ray_start
for code in codes:
    sys.stdout.flush(), sys.stderr.flush()
    (out_r, out_w), (err_r, err_w) = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(out_r), os.close(err_r)
        os.dup2(out_w, 1), os.dup2(err_w, 2)
        ray_start._failed_starts.append('local')
        from fpncli.cli import _end_now_if_exit_hangs
        _end_now_if_exit_hangs(eval(code))
        print('not ended')
        sys.stdout.flush()
        os._exit(0)
    os.close(out_w), os.close(err_w)
    with os.fdopen(out_r, "rb") as out, os.fdopen(err_r, "rb") as err:
        said_out, said_err = out.read().decode(), err.read().decode()
    status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    print(json.dumps([status, said_err, said_out]), file=sys.__stdout__, flush=True)
"""
ENDINGS = {"None": (0, ""), "3": (3, ""), "'bye'": (1, "bye\n")}


@pytest.fixture(scope="module")
def ended_at_once() -> dict[str, tuple]:
    """How each of ``ENDINGS`` ended its process: ``(exit code, stderr, stdout)``."""
    codes = list(ENDINGS)
    if not hasattr(os, "fork"):  # a process each
        ended = []
        for code in codes:
            done = subprocess.run([sys.executable, "-c", ENDED_AT_ONCE, json.dumps([code])],
                                  capture_output=True, text=True, timeout=120,
                                  cwd=Path(__file__).parents[1])  # fmt: skip
            ended.append((done.returncode, done.stderr, done.stdout))
        return dict(zip(codes, ended, strict=True))
    done = subprocess.run([sys.executable, "-c", ENDED_AT_ONCE, json.dumps(codes)],
                          capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parents[1])  # fmt: skip
    assert done.returncode == 0, done.stderr
    ended = [tuple(json.loads(line)) for line in done.stdout.splitlines()]
    return dict(zip(codes, ended, strict=True))


@pytest.mark.parametrize("code", ENDINGS)
def test_the_process_ended_at_once_exits_as_the_interpreter_would(ended_at_once, code):
    """After a failed Ray start the console entry point ends the process itself: with the exit
    code and the message ``SystemExit(code)`` would give (a message was dropped, None was 1)."""
    returncode, said = ENDINGS[code]
    assert ended_at_once[code] == (returncode, said, "")


def test_the_cli_quiets_ray_unless_verbose(inputs, tmp_path, monkeypatch):
    """extract --engine ray passes RayOptions.quiet: True, or False with -v."""
    import logging

    from fpncli.run import ray_engine
    from fpncli.run.summary import RunSummary

    seen = []

    def fake_run_ray(jobs, out, model, options, ray_options, **kwargs):
        seen.append(ray_options.quiet)
        return RunSummary(total=len(jobs), done=len(jobs))

    monkeypatch.setattr(ray_engine, "run_ray", fake_run_ray)
    monkeypatch.setattr(logging.getLogger(), "level", logging.getLogger().level)  # -v sets it
    for verbose in ([], ["-v"]):
        result = _extract(inputs / "im0.png", "-o", tmp_path / "o", "--engine", "ray", *verbose)
        assert result.exit_code == 0, result.output
    assert seen == [True, False]


def test_ray_run_stopped_midway_records_the_last_folder_it_wrote(ray_cluster, inputs, tmp_path):
    """A Ctrl-C or SIGTERM to a Ray run left latest.json as it was (an older, unrelated output,
    or none): only a run that ended normally recorded its last folder. Now the last folder
    the actors returned is recorded, as a local run's is."""
    import fpncli
    from fpncli.io.jobs import Job
    from fpncli.io.latest import recent_extractions, record_latest
    from fpncli.io.outputs import OutputOptions
    from fpncli.run.ray_engine import RayOptions, run_ray
    from fpncli.run.steps import RunOptions

    older = tmp_path / "older"
    older.mkdir()
    record_latest(older)
    out = tmp_path / "out"
    jobs = [Job(p, out / p.stem) for p in sorted(inputs.glob("im*.png"))]
    output = OutputOptions(min_size=64, max_size=96, save_heatmaps=False, save_overview=False)

    def interrupt(report):  # Ctrl-C once images have come back
        if report.done:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_ray(jobs, str(out), fpncli.load_backbone("random"),
                RunOptions(output=output, batch_size=1), RayOptions(device="cpu"),
                progress=interrupt)  # fmt: skip
    latest = recent_extractions()[0]
    assert latest in {job.folder.resolve() for job in jobs}
    assert (latest / "manifest.json").is_file()


def test_sigterm_ends_a_ray_run_as_ctrl_c_does(tmp_path):
    """SIGTERM (``kill``, a batch scheduler's stop) to a Ray run once some images are written:
    exit code 130, the interrupted summary, the resume command and run.json, as after Ctrl-C.
    Ray's C++ core had put its failure-signal handler over extract's: "*** SIGTERM received
    ... ***", a stack, SIGABRT (exit code 134), no summary, no run.json."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.RandomState(2)
    for i in range(32):
        Image.fromarray(rng.randint(0, 255, (40, 48, 3), np.uint8)).save(inputs / f"im{i:02d}.png")
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_BACKEND_LOG_LEVEL")}
    command = [sys.executable, "-m", "fpncli", "extract", str(inputs), "-o", str(out),
               "--engine", "ray", "--device", "cpu", "--no-heatmaps", *SMALL]  # fmt: skip
    proc = subprocess.Popen(command, env=env, cwd=Path(__file__).parents[1],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if list(out.glob("*/manifest.json")):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = (s.decode() for s in proc.communicate(timeout=120))
    assert proc.returncode == 130, stderr
    assert "SIGTERM received" not in stderr and "Traceback" not in stderr, stderr
    said = re.search(r"^interrupted: (\d+) image\(s\) written by this run, 0 failed, 0 were "
                     r"already complete; (\d+) of 32 left", stderr, re.M)  # fmt: skip
    assert said is not None and "resume with: fpncli extract" in stderr, stderr
    log = json.loads((out / "run.json").read_text())
    assert log["aborted"].startswith("interrupted (Ctrl-C, SIGTERM or SIGHUP)"), log
    assert log["total"] == 32 and log["done"] == int(said[1]) < 32, log


class _StalledExtractor:
    """Made an ``Extractor`` subclass in the test (Ray ships it by value): its second call
    writes its images, then says so (``marker``) and waits: its rows, and those of the calls
    before it in the same Ray task, have not come back (a task's rows come back when it ends)."""

    calls, marker = 0, ""

    def _run(self, batch: dict) -> dict:
        rows = super()._run(batch)
        type(self).calls += 1
        if type(self).calls == 2:
            Path(self.marker).touch()
            time.sleep(300)
        return rows


@pytest.mark.parametrize("out_format", ["files", "wds"])
def test_an_interrupted_ray_run_counts_what_its_actors_wrote(
    ray_cluster, tmp_path, monkeypatch, out_format
):
    """Ctrl-C (or SIGTERM, SIGHUP) once actors have written images whose rows have not come
    back: the summary and run.json count those images too, with their bytes, as the local
    engine counts every image it wrote. They counted the rows that had come back
    ("interrupted: 8 image(s) written" with 14 complete folders on disk)."""
    import importlib
    import threading

    from ray import cloudpickle

    from fpncli.cli.common import RunProgress
    from fpncli.run import ray_engine

    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.RandomState(3)
    for i in range(12):
        Image.fromarray(rng.randint(0, 255, (40, 48, 3), np.uint8)).save(inputs / f"im{i}.png")
    out, marker = tmp_path / "out", tmp_path / "stalled"
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    stalled = type("Stalled", (_StalledExtractor, ray_engine.Extractor), {"marker": str(marker)})
    monkeypatch.setattr(ray_engine, "Extractor", stalled)
    came_back = [0]  # the images done as the progress reports said

    class Counting(RunProgress):
        def __call__(self, p) -> None:
            super().__call__(p)
            came_back.append(p.done)

    extract_command = importlib.import_module("fpncli.cli.extract")  # (the package's name is
    monkeypatch.setattr(extract_command, "RunProgress", Counting)  # the command's)

    def ctrl_c() -> None:  # once the stalled call has written its images
        deadline = time.monotonic() + 240
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    args = [inputs, "-o", out, "--engine", "ray", "--device", "cpu", "--format", out_format,
            "--no-heatmaps"] + (["--shard-size", "1B"] if out_format == "wds" else [])  # fmt: skip
    sender = threading.Thread(target=ctrl_c)
    sender.start()
    try:
        result = _extract(*args)
    finally:
        sender.join()
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert result.exit_code == 130 and marker.exists(), result.output
    if out_format == "wds":
        members = [m for ms in _shards(out).values() for m in ms if m.endswith(".json")]
    else:
        members = list(out.glob("*/manifest.json"))
        written = sum(f.stat().st_size for m in members for f in m.parent.iterdir())
    assert came_back[-1] < len(members) < 12, (came_back, members)
    said = (f"interrupted: {len(members)} image(s) written by this run, 0 failed, 0 were already "
            f"complete; {12 - len(members)} of 12 left")  # fmt: skip
    assert said in result.output, result.output
    log = json.loads((out / "run.json").read_text())
    assert log["aborted"].startswith("interrupted (Ctrl-C, SIGTERM or SIGHUP)"), log
    assert log["done"] == len(members), log
    if out_format == "files":  # (a shard's bytes: its members', and the tar's own)
        assert log["bytes_written"] == written, log


def test_an_interrupted_overwrite_counts_only_the_folders_it_rewrote(inputs, tmp_path):
    """With --overwrite every folder is to do, complete ones too: after an interrupt, a folder
    complete before the run and untouched by it is not counted as written by it; one an actor
    rewrote is, with its bytes."""
    import fpncli
    from fpncli.io.jobs import Job
    from fpncli.io.outputs import OutputOptions
    from fpncli.run.folder_sink import _manifest_stamp
    from fpncli.run.pipeline import run_jobs
    from fpncli.run.ray_engine import _count_unreturned
    from fpncli.run.steps import RunOptions, weights_meta
    from fpncli.run.summary import RunSummary

    out = tmp_path / "out"
    jobs = [Job(p, out / p.stem) for p in sorted(inputs.glob("im*.png"))]
    output = OutputOptions(min_size=64, max_size=96, save_heatmaps=False, save_overview=False)
    options = RunOptions(output=output, batch_size=1, overwrite=True, record_latest=False)
    model = fpncli.load_backbone("random")
    assert run_jobs(jobs, model, options).done == 3
    before = {str(j.path): _manifest_stamp(j.folder) for j in jobs}  # as the run plans
    time.sleep(0.01)  # (a rewritten manifest's time differs on a coarse clock too)
    rewritten = run_jobs(jobs[1:2], model, options)  # as an actor whose row did not come back
    summary = RunSummary(total=3)
    _count_unreturned(summary, jobs, set(), before, options, weights_meta(model))
    assert (summary.done, summary.bytes_written) == (1, rewritten.bytes_written)
    summary = RunSummary(total=3)  # without --overwrite, every complete folder was this run's
    _count_unreturned(summary, jobs, {str(jobs[0].path)}, {}, options, weights_meta(model))
    assert summary.done == 2
