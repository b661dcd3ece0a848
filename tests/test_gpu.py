"""CUDA paths; skipped cleanly where there is no GPU (CI never has one).

``scripts/gpu_check.sh`` runs these on a GPU machine. The pipeline on ``cuda:0`` (and ``cuda:1``
when present, with GPU 0 left current, so a stream or event made on the wrong device shows) must
give the CPU's outputs within 1e-4 relative in fp32; bf16/fp16 within 5e-2 of the fp32 maximum
(measured on the CPU with converted copies, 160x256: bf16 1.2e-2, fp16 1.6e-3). The stream and
buffer tests hold the device busy (``torch.cuda._sleep``) so that a copy read before it landed,
or a pinned buffer refilled before its copy ran, shows as wrong values.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from heatmaps import assert_same_heatmap

import fpncli
from fpncli.io.manifest import read_manifest
from fpncli.io.outputs import OutputOptions
from fpncli.run.device.transfer import InputStager, PinnedPool, results_to_host
from fpncli.run.pipeline import Job, RunOptions, run_jobs
from fpncli.viz.maps import range_from_order_stats, value_range

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

DEVICES = ["cuda:0", pytest.param("cuda:1", marks=pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason="needs two GPUs"))]  # fmt: skip
OUTPUT = OutputOptions(min_size=160, max_size=256, save_overview=False, reduce="l2")


@pytest.fixture(scope="module")
def cpu_model():
    return fpncli.load_backbone("random", device="cpu")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("gpu-in")
    rng = np.random.RandomState(0)
    for i in range(6):
        size = (200, 150) if i % 3 else (150, 220)  # two padded shapes
        Image.fromarray(rng.randint(0, 255, (*size, 3), dtype=np.uint8)).save(root / f"{i}.png")
    return root


def _jobs(folder, out):
    return [Job(p, out / p.stem) for p in sorted(folder.glob("*.png"))]


@pytest.fixture(scope="module")
def cpu_outputs(cpu_model, folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("cpu-out")
    summary = run_jobs(_jobs(folder, out), cpu_model, RunOptions(output=OUTPUT, batch_size=4))
    assert summary.done == 6
    return out


def _compare(ref_dir, out_dir, tol):
    for ref_folder in sorted(p for p in ref_dir.iterdir() if p.is_dir()):
        folder = out_dir / ref_folder.name
        ref_manifest, manifest = read_manifest(ref_folder), read_manifest(folder)
        assert manifest is not None, folder
        for level in OUTPUT.levels:
            a, b = np.load(ref_folder / f"{level}.npy"), np.load(folder / f"{level}.npy")
            scale = np.abs(a).max()
            assert np.abs(a - b).max() <= tol * scale, (folder, level)
            for stat in ("min", "max", "mean"):
                got, want = manifest["levels"][level][stat], ref_manifest["levels"][level][stat]
                assert abs(got - want) <= tol * scale, (folder, level, stat)
            _compare_heatmaps(ref_folder, folder, ref_manifest, manifest, level, tol)


def _compare_heatmaps(ref_folder, folder, ref_manifest, manifest, level, tol):
    """The heatmap (reduced on the device) is the CPU's: its colour range within ``tol`` of the
    range's scale and, in fp32, the same picture but for a few cells that a rounding moves one
    colour step (``heatmaps.assert_same_heatmap``: counted in cells, as one cell of a small map
    is 0.35% of its pixels, which failed a share-of-pixels test on an H200)."""
    from PIL import Image

    want, got = ref_manifest["levels"][level]["range"], manifest["levels"][level]["range"]
    span = max(abs(v) for v in want) or 1.0
    assert all(abs(g - w) <= tol * span for g, w in zip(got, want)), (folder, level, got, want)
    a, b = ref_folder / f"{level}.png", folder / f"{level}.png"
    assert Image.open(a).size == Image.open(b).size, (folder, level)
    if tol <= 1e-4:
        meta = ref_manifest["levels"][level]  # the map drawn: the level's valid region
        assert_same_heatmap(a, b, (meta["valid_height"], meta["valid_width"]), cmap=OUTPUT.cmap)


@pytest.mark.parametrize("device", DEVICES)
def test_pipeline_fp32_on_cuda_equals_cpu(device, folder, cpu_outputs, tmp_path):
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    model = fpncli.load_backbone("random", device=device)
    summary = run_jobs(_jobs(folder, tmp_path), model, RunOptions(output=OUTPUT, batch_size=4))
    assert summary.done == 6 and not summary.failed
    _compare(cpu_outputs, tmp_path, 1e-4)
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == flags
    assert json.loads((tmp_path / "0" / "manifest.json").read_text())["device"] == device


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_pipeline_low_precision_within_bound(precision, folder, cpu_outputs, tmp_path):
    model = fpncli.load_backbone("random", device="cuda:0")
    options = RunOptions(output=OUTPUT, batch_size=4, precision=precision)
    assert run_jobs(_jobs(folder, tmp_path), model, options).done == 6
    _compare(cpu_outputs, tmp_path, 5e-2)


def test_run_backbone_fp32_matches_cpu(cpu_model):
    gpu = fpncli.load_backbone("random", device="cuda")
    x = torch.randn(1, 3, 256, 384, generator=torch.Generator().manual_seed(0))
    a = fpncli.api.run_backbone(cpu_model, x)
    b = fpncli.api.run_backbone(gpu, x)
    for k in a:
        assert (a[k] - b[k].cpu()).abs().max() <= 1e-4 * a[k].abs().max(), k


def test_two_gpu_workers(folder, cpu_model, tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    from fpncli.run.multi import run_on_devices

    summary = run_on_devices(
        _jobs(folder, tmp_path), cpu_model, RunOptions(output=OUTPUT, batch_size=2),
        ["cuda:0", "cuda:1"], weights="random",
    )  # fmt: skip
    assert (summary.done, summary.failed, summary.aborted) == (6, [], None)
    devices = {read_manifest(p)["device"] for p in tmp_path.iterdir() if p.is_dir()}
    assert devices == {"cuda:0", "cuda:1"}


def _busy(device, ms=200):
    """Keep ``device``'s current stream busy for about ``ms`` (work queued after it waits)."""
    with torch.cuda.device(device):
        torch.cuda._sleep(int(ms * 1e6))  # cycles: ~1 ms per 1e6 at 1-2 GHz


@pytest.mark.parametrize("device", DEVICES)
def test_results_to_host_on_cuda_equals_the_cpu(device):
    gen = torch.Generator().manual_seed(0)
    features = {f"p{k}": torch.randn(4, 16, 64 >> k, 96 >> k, generator=gen) for k in range(2, 7)}
    pool, dev = PinnedPool(1 << 30), torch.device(device)
    copy_stream = torch.cuda.Stream(device=dev)
    for resized in ([(60, 90), (60, 90), (60, 90)], [(60, 90), (33, 96), (64, 17)]):
        options = OutputOptions(levels=("p2", "p3", "p6"), dtype="float16", reduce="l2")
        ref = results_to_host(features, resized, options)
        on_device = {k: v.to(dev) for k, v in features.items()}
        torch.cuda.synchronize(dev)
        buffers = set()
        for _ in range(2):  # the second batch reuses the first one's pinned buffer
            with torch.cuda.device(0):  # GPU 0 current: everything must follow the tensors
                _busy(dev)
                result = results_to_host(on_device, resized, options, pool=pool,
                                         copy_stream=copy_stream)  # fmt: skip
            buffers.add(result._buffer.data_ptr())
            result.wait()
            for i in range(len(resized)):
                ours, want = result.image(i), ref.image(i)
                for name in options.levels:
                    assert np.array_equal(ours[name].array, want[name].array), (i, name)
                    assert (ours[name].min, ours[name].max) == (want[name].min, want[name].max)
                    assert ours[name].mean == pytest.approx(want[name].mean, rel=1e-6, abs=1e-6)
                    np.testing.assert_allclose(ours[name].map2d, want[name].map2d, rtol=1e-5)
                    # picked out on the device: the range the writer would sort for on the host
                    assert want[name].order_stats is None
                    assert range_from_order_stats(ours[name].order_stats, options.clip) == (
                        value_range(ours[name].map2d, options.clip)), (i, name)  # fmt: skip
            assert [result.done_with_one() for _ in resized][-1]
        assert len(buffers) == 1


def test_results_to_host_without_a_pool_copies_into_pinned_memory():
    """A direct call (no pool) gets a pinned buffer too: into pageable memory the
    "non_blocking" copies back are synchronous."""
    gen = torch.Generator().manual_seed(0)
    features = {f"p{k}": torch.randn(2, 8, 64 >> k, 96 >> k, generator=gen) for k in range(2, 7)}
    on_device = {k: v.to("cuda:0") for k, v in features.items()}
    options = OutputOptions(levels=("p2", "p6"), reduce="l2")
    result = results_to_host(on_device, [(60, 90)] * 2, options)
    result.wait()
    assert result._buffer.is_pinned() and result._pool is None
    assert all(t.is_pinned() for t in [*result.arrays.values(), *result.maps.values()])
    assert np.array_equal(result.arrays["p2"].numpy(), features["p2"].numpy())


@pytest.mark.parametrize("device", DEVICES)
def test_the_upload_ring_refills_a_slot_only_after_its_copy(device):
    dev = torch.device(device)
    stager = InputStager(dev, slots=2)
    rng = np.random.RandomState(0)
    batches = [[rng.randint(0, 256, (40, 56, 3), dtype=np.uint8) for _ in range(2)]
               for _ in range(5)]  # fmt: skip
    with torch.cuda.device(0):  # GPU 0 current: the stager must follow its own device
        _busy(dev)  # every copy waits behind this: a slot refilled too early shows
        uploaded = [stager.stage(b) for b in batches]
    torch.cuda.synchronize(dev)
    for batch, pixels in zip(batches, uploaded):
        assert pixels.device == dev
        assert np.array_equal(pixels.cpu().numpy(), np.stack(batch))


@pytest.mark.parametrize("resize_on_device", [False, True])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_batch_is_queued_without_waiting_for_the_device(precision, resize_on_device, folder,
                                                          tmp_path):  # fmt: skip
    """From the upload to the copy back, nothing makes the host wait for the GPU (a sync would
    hold the feeding thread until the forward pass ends, so the next batch could not be
    prepared meanwhile): CUDA's sync debug mode turns any such call into an error."""
    from fpncli.run.device import model_for_run
    from fpncli.run.steps import DeviceState, decode, infer_batch

    device = torch.device("cuda", torch.cuda.device_count() - 1)
    model = model_for_run(fpncli.load_backbone("random", device=device), precision)
    options = RunOptions(output=OutputOptions(min_size=160, max_size=256, reduce="l2"),
                         batch_size=3, precision=precision)  # fmt: skip
    state = DeviceState.create(device, options)
    items = [decode(job, options, model.weights_info.input, resize_on_device=resize_on_device)
             for job in _jobs(folder, tmp_path)]  # fmt: skip
    batches = [[items[1], items[2], items[4]], [items[0], items[1]]]  # one size; two sizes
    with torch.cuda.device(device):
        first = [infer_batch(model, b, options, state) for b in batches]  # warm-up: cuDNN init
        for r in first:
            r.wait()
        torch.cuda.set_sync_debug_mode("error")
        try:
            again = [infer_batch(model, b, options, state) for b in batches]
        finally:
            torch.cuda.set_sync_debug_mode("default")
    for a, b, batch in zip(first, again, batches):
        b.wait()
        for i in range(len(batch)):
            for name, level in b.image(i).items():
                assert np.array_equal(level.array, a.image(i)[name].array), (i, name)
                assert np.array_equal(level.map2d, a.image(i)[name].map2d), (i, name)


def test_a_bench_rows_peak_memory_is_its_own():
    """Reset per row: what other rows left allocated (model copies, references) is not in it."""
    from fpncli.run.bench import nbytes
    from fpncli.run.bench_model import bench_model

    model = fpncli.load_backbone("random", device="cuda:0")
    kwargs = {"height": 128, "width": 192, "batch_size": 1, "precision": "fp32", "seconds": 0,
              "iters": 1, "warmup": 1}  # fmt: skip
    alone = bench_model(model, **kwargs)
    ballast = torch.empty(1 << 30, dtype=torch.uint8, device="cuda:0")  # 1 GiB of another row
    crowded = bench_model(model, **kwargs)
    del ballast
    assert alone.error is None and crowded.error is None
    assert abs(crowded.peak_gpu_mb - alone.peak_gpu_mb) < 64
    own = (nbytes(model) + 4 * 3 * 128 * 192) / 2**20  # weights and input, added by the row
    assert alone.peak_gpu_mb - own > 0.5  # and the activations: the peak was measured


def test_two_workers_on_one_gpu(folder, cpu_model, tmp_path):
    """The --gpus machinery (spawned workers, each setting its device) on a one-GPU machine."""
    from fpncli.run.multi import run_on_devices

    summary = run_on_devices(
        _jobs(folder, tmp_path), cpu_model, RunOptions(output=OUTPUT, batch_size=2),
        ["cuda:0", "cuda:0"], weights="random",
    )  # fmt: skip
    assert (summary.done, summary.failed, summary.aborted) == (6, [], None)
    assert {read_manifest(p)["device"] for p in tmp_path.iterdir() if p.is_dir()} == {"cuda:0"}


def test_extract_shares_the_gpu_between_worker_processes_by_default(folder, tmp_path):
    """``extract`` without ``--gpus`` on a large folder of heatmaps (no ``.npy``, whose disk
    bounds a run): ``auto_processes`` workers share the GPU (the folder is small here: the
    minimum is lowered), their outputs are those of one process (``--processes 1``), and the
    parent, which only lists the jobs and reads the weights' identity, makes no CUDA context of
    its own (hundreds of MB on the GPU). In a fresh process, so that nothing else touched the
    GPU."""
    args = ["extract", str(folder), "--weights", "random", "--min-size", "160", "--max-size",
            "256", "--no-overview", "--no-npy", "--batch-size", "2"]  # fmt: skip
    code = f"""
import torch
import fpncli.run.multi
from click.testing import CliRunner
from fpncli.cli import cli
fpncli.run.multi.AUTO_MIN_IMAGES = 4
fpncli.run.multi.usable_cores = lambda: 10
result = CliRunner().invoke(cli, {[*args, "-o", str(tmp_path / "auto")]!r})
print(result.output)
print("exit", result.exit_code, "context", torch._C._cuda_hasPrimaryContext(0))
"""
    root = str(Path(fpncli.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "2 worker processes share cuda:0" in done.stdout, done.stdout
    assert "exit 0 context False" in done.stdout, done.stdout
    from click.testing import CliRunner

    from fpncli.cli import cli

    alone = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "one"), "--processes", "1"])
    assert alone.exit_code == 0 and "worker processes" not in alone.output, alone.output
    for name in sorted(p.stem for p in folder.glob("*.png")):
        auto, one = read_manifest(tmp_path / "auto" / name), read_manifest(tmp_path / "one" / name)
        assert not list((tmp_path / "auto" / name).glob("*.npy"))
        for level in ("p2", "p6"):
            scale = max(abs(one["levels"][level][s]) for s in ("min", "max"))
            for stat in ("min", "max", "mean"):
                got, want = auto["levels"][level][stat], one["levels"][level][stat]
                assert abs(got - want) <= 1e-5 * scale, (name, level, stat)
            _compare_heatmaps(tmp_path / "one" / name, tmp_path / "auto" / name, one, auto,
                              level, 1e-5)  # fmt: skip


def test_a_run_on_cuda1_makes_no_context_on_gpu0(folder, tmp_path):
    """Writers wait on cuda:1's events: a thread without cuda:1 current would make a context (and
    spend hundreds of MB) on GPU 0. In a fresh process, so that nothing else touched GPU 0."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    code = f"""
import torch, fpncli
from pathlib import Path
from fpncli.run.pipeline import Job, RunOptions, run_jobs
from fpncli.io.outputs import OutputOptions
model = fpncli.load_backbone("random", device="cuda:1")
jobs = [Job(p, Path({str(tmp_path)!r}) / p.stem) for p in sorted(Path({str(folder)!r}).glob("*"))]
options = RunOptions(output=OutputOptions(min_size=160, max_size=256), batch_size=2, writers=3)
assert run_jobs(jobs, model, options).done == 6
print("context on GPU 0:", torch._C._cuda_hasPrimaryContext(0))
"""
    root = str(Path(fpncli.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "context on GPU 0: False" in done.stdout


def test_out_of_memory_splits_under_a_memory_cap(tmp_path):
    from PIL import Image

    rng = np.random.RandomState(1)
    src = tmp_path / "in"
    src.mkdir()
    for i in range(8):
        Image.fromarray(rng.randint(0, 255, (600, 800, 3), dtype=np.uint8)).save(src / f"{i}.png")
    output = OutputOptions(save_npy=False, save_overview=False)
    model = fpncli.load_backbone("random", device="cuda:0")
    jobs = [Job(p, tmp_path / "out" / p.stem) for p in sorted(src.glob("*.png"))]
    # without batch padding, cudnn.benchmark is off: its search's workspaces would make the
    # peak of a batch of one many times what the batch itself needs, and the cap too loose
    fixed = {"output": output, "overwrite": True, "pad_batches": False}
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(0)
    base = torch.cuda.memory_allocated(0)
    run_jobs(jobs[:1], model, RunOptions(batch_size=1, **fixed))
    one = torch.cuda.max_memory_allocated(0) - base
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.empty_cache()
    # room for a batch of one twice (the cap counts reserved memory, a little above allocated):
    # batch 8 needs about eight
    torch.cuda.set_per_process_memory_fraction((base + 2 * one) / total, 0)
    try:
        summary = run_jobs(jobs, model, RunOptions(batch_size=8, **fixed))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
        torch.cuda.empty_cache()
    assert summary.done == 8 and not summary.failed, summary.failed
    assert 1 <= summary.batch_size < 8


def test_canvas_on_cuda_equals_cpu(folder, cpu_model, tmp_path):
    """--canvas auto on the GPU (padded partial batches, cudnn.benchmark): the CPU's outputs."""
    _canvas_outputs_equal(folder, cpu_model, fpncli.load_backbone("random", device="cuda:0"),
                          tmp_path)  # fmt: skip


def _canvas_outputs_equal(folder, cpu_model, model, tmp_path):
    from dataclasses import replace

    output = replace(OUTPUT, canvas="auto")
    for name, net in (("cpu", cpu_model), ("dev", model)):
        summary = run_jobs(_jobs(folder, tmp_path / name), net,
                           RunOptions(output=output, batch_size=4))  # fmt: skip
        assert summary.done == 6 and not summary.failed, summary.failed
    _compare(tmp_path / "cpu", tmp_path / "dev", 1e-4)
    for folder_out in (tmp_path / "dev").iterdir():
        pre = read_manifest(folder_out)["preprocess"]
        assert pre["canvas"] == "auto"
        assert (pre["padded_height"], pre["padded_width"]) in ((160, 256), (256, 160))


@pytest.mark.parametrize("device", DEVICES)
def test_pillow_bilinear_on_the_gpu_equals_pillow(device):
    """The pipeline resizes on the device by default on CUDA: every pixel as Pillow's, for the
    1080p frame, COCO-like upscales and a height shrunk first (Pillow 13's order)."""
    from PIL import Image

    from fpncli.model.resize import pillow_bilinear

    rng = np.random.default_rng(0)
    for (h, w), (oh, ow) in [((1080, 1920), (756, 1344)), ((480, 640), (800, 1067)),
                             ((900, 120), (300, 110)), ((37, 53), (80, 101))]:  # fmt: skip
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        expected = np.asarray(Image.fromarray(pixels).resize((ow, oh), Image.BILINEAR))
        got = pillow_bilinear(torch.from_numpy(pixels).to(device), oh, ow)
        assert got.device == torch.device(device)
        np.testing.assert_array_equal(got.cpu().numpy(), expected)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cudnn_fused_epilogues_equal_the_plain_ones(precision):
    """The converted model runs conv+bias+ReLU(+sum) in cuDNN's fused kernels; the same model
    with them off gives the same levels within the precision's rounding."""
    from fpncli.model import cuda_kernels
    from fpncli.run.device import model_for_run

    model = fpncli.load_backbone("random", device="cuda:0")
    fused = model_for_run(model, precision)
    assert cuda_kernels.uses_cudnn_fusion(fused), "the fused kernels did not pass their check"
    batch = torch.randn(2, 3, 256, 320, generator=torch.Generator().manual_seed(0)).cuda()
    batch = batch.to(next(fused.parameters()).dtype).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        # the fused ReLU convolution passes cuDNN its uninitialised output as a zero-weighted
        # addend: the cached memory it is carved from holds NaN here, as a run's leaves it
        # (order_stats' +inf, nan_outside's NaN); the levels must not depend on it
        torch.full((256 << 20,), float("nan"), device="cuda:0")  # 1 GB, freed to the cache
        got = fused(batch)
        assert all(bool(torch.isfinite(v).all()) for v in got.values())
        cuda_kernels.use_cudnn_fusion(fused, on=False)
        try:
            want = fused(batch)
        finally:
            cuda_kernels.use_cudnn_fusion(fused)
    for name in want:
        scale = want[name].float().abs().max()
        error = ((got[name].float() - want[name].float()).abs().max() / scale).item()
        assert error < 3e-2, (name, error)


def test_a_model_compiled_over_the_fused_ops_equals_the_eager_one(monkeypatch):
    """By default torch.compile traces cuDNN's fused ops (which have no meta kernel of their
    own); the compiled model must give the eager fused model's levels."""
    from fpncli.model.layers import Conv2d
    from fpncli.run.device import model_for_run

    monkeypatch.delenv("FPNCLI_CUDNN_FUSION", raising=False)
    torch._dynamo.reset()
    model = fpncli.load_backbone("random", device="cuda:0")
    eager = model_for_run(model, "bf16")
    assert any(isinstance(m, Conv2d) and m.fused_when_compiled for m in eager.modules())
    compiled = model_for_run(model, "bf16", compile=True)
    batch = torch.randn(2, 3, 256, 320, generator=torch.Generator().manual_seed(0)).cuda()
    batch = batch.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        want = eager(batch)
        got = compiled(batch)
    for name in want:
        assert got[name].shape == want[name].shape
        scale = want[name].float().abs().max()
        error = ((got[name].float() - want[name].float()).abs().max() / scale).item()
        assert error < 3e-2, (name, error)
    torch._dynamo.reset()
