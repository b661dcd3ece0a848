"""CUDA paths; skipped cleanly where there is no GPU (CI never has one).

``scripts/gpu_check.sh`` runs these on a GPU machine. The pipeline on ``cuda:0`` (and ``cuda:1``
when present, with GPU 0 left current, so a stream or event made on the wrong device shows) must
give the CPU's outputs within 1e-4 relative in fp32; bf16/fp16 within 5e-2 of the fp32 maximum.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import fpncli
from fpncli.io.outputs import OutputOptions, read_manifest
from fpncli.run.pipeline import Job, RunOptions, run_jobs

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
            assert (folder / f"{level}.png").stat().st_size > 0


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
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(0)
    base = torch.cuda.memory_allocated(0)
    run_jobs(jobs[:1], model, RunOptions(output=output, batch_size=1, overwrite=True))
    one = torch.cuda.max_memory_allocated(0) - base
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction((base + 3 * one) / total, 0)
    try:
        summary = run_jobs(jobs, model, RunOptions(output=output, batch_size=8, overwrite=True))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
        torch.cuda.empty_cache()
    assert summary.done == 8 and not summary.failed
    assert 1 <= summary.batch_size < 8
