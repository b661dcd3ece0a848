"""CUDA paths; skipped cleanly where there is no GPU (CI never has one)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fpncli
from fpncli.io.outputs import OutputOptions
from fpncli.run.pipeline import Job, RunOptions, run_jobs

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.fixture(scope="module")
def models():
    return fpncli.load_backbone("random", device="cpu"), fpncli.load_backbone(
        "random", device="cuda"
    )


def test_cuda_fp32_matches_cpu(models):
    cpu, gpu = models
    x = torch.randn(1, 3, 256, 384, generator=torch.Generator().manual_seed(0))
    a = fpncli.api.run_backbone(cpu, x)
    b = fpncli.api.run_backbone(gpu, x)
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    for k in a:
        assert (a[k] - b[k].cpu()).abs().max() <= 1e-4 * a[k].abs().max(), k


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_autocast_close_to_fp32(models, precision):
    _, gpu = models
    x = torch.randn(2, 3, 256, 384, generator=torch.Generator().manual_seed(0))
    ref = fpncli.api.run_backbone(gpu, x, precision="fp32")
    low = fpncli.api.run_backbone(gpu, x, precision=precision)
    for k in ref:
        rel = ((low[k].float() - ref[k]).abs().max() / ref[k].abs().max()).item()
        assert rel < 0.05, (k, rel)


def test_pipeline_on_cuda_with_batches(tmp_path, models):
    from PIL import Image

    _, gpu = models
    jobs = []
    for i in range(5):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((40, 60, 3), 30 * i, np.uint8)).save(path)
        jobs.append(Job(path, tmp_path / "out" / str(i)))
    output = OutputOptions(min_size=64, max_size=96, dtype="float16")
    summary = run_jobs(jobs, gpu, RunOptions(output=output, batch_size=4, precision="bf16"))
    assert summary.done == 5 and not summary.failed
    assert np.load(tmp_path / "out" / "3" / "p2.npy").dtype == np.float16
