"""The fast CPU kernels (NNPACK Winograd 3x3, GEMM 1x1), the fused steps, and the run's heap."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import fpncli
from fpncli.api import run_backbone
from fpncli.model import cpu_kernels
from fpncli.model.cpu_kernels import conv_forward, use_cpu_kernels, uses_cpu_kernels
from fpncli.model.fpn import _add_upsampled
from fpncli.model.layers import Conv2d, add_relu_
from fpncli.run import hostmem
from fpncli.run.device import model_for_run

needs_nnpack = pytest.mark.skipif(not cpu_kernels.available(), reason="NNPACK does not work here")


def _conv(cin, cout, k, stride=1, bias=True, seed=0):
    torch.manual_seed(seed)
    conv = Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=bias).requires_grad_(False)
    use_cpu_kernels(conv)
    return conv


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def _reference(conv, x):
    bias = None if conv.bias is None else conv.bias.double()
    return F.conv2d(x.double(), conv.weight.double(), bias, conv.stride, conv.padding)


@needs_nnpack
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize(
    "cin, cout, k, stride, bias",
    [(64, 64, 3, 1, True), (32, 48, 3, 1, False), (64, 256, 1, 1, True), (256, 128, 1, 2, False),
     (48, 96, 1, 2, True)],
)  # fmt: skip
def test_each_kernel_computes_the_convolution(batch, cin, cout, k, stride, bias):
    conv = _conv(cin, cout, k, stride, bias)
    assert conv.kernel == ("winograd" if k == 3 else "gemm")
    x = torch.randn(batch, cin, 40, 52)
    with torch.inference_mode():
        fast = conv_forward(conv, x)
        plain = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding)
    assert fast is not None and fast.shape == plain.shape and fast.is_contiguous()
    reference = _reference(conv, x)
    # one Winograd layer errs up to ~1e-5 of its range (oneDNN ~1e-6); through the whole
    # backbone both stay near 5e-6 (the next tests), far inside the 1e-4 contract
    assert _relative(fast, reference) < 3e-5
    assert _relative(plain, reference) < 1e-5
    assert torch.equal(conv(x), fast)  # the module uses it


@needs_nnpack
def test_kernels_step_aside_where_they_would_not_compute_what_conv2d_computes(monkeypatch):
    conv = _conv(16, 16, 3)
    x = torch.randn(1, 16, 32, 32)
    with torch.inference_mode():
        assert conv_forward(conv, x) is not None
        assert conv_forward(conv, x.double()) is None  # float32 only
        assert conv_forward(conv, x[:, :, :4, :4]) is None  # too small to pay for the transform
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert conv_forward(conv, x) is None  # autocast must cast as conv2d does
            assert conv(x).dtype == torch.bfloat16
        monkeypatch.setenv("FPNCLI_CPU_KERNELS", "0")
        assert conv_forward(conv, x) is None
    monkeypatch.delenv("FPNCLI_CPU_KERNELS")
    grad = x.clone().requires_grad_(True)
    assert conv_forward(conv, grad) is None  # NNPACK's op has no backward here
    conv(grad).sum().backward()
    assert grad.grad is not None
    for odd in (Conv2d(8, 8, 3, padding=1, groups=2), Conv2d(8, 8, 3, padding=2, dilation=2),
                Conv2d(8, 8, 3, stride=2, padding=1), Conv2d(8, 8, 7, padding=3)):  # fmt: skip
        assert use_cpu_kernels(odd).kernel is None


@needs_nnpack
def test_a_shape_nnpack_refuses_falls_back_to_conv2d(monkeypatch, caplog):
    conv = _conv(16, 16, 3)
    x = torch.randn(1, 16, 30, 31)
    calls = []

    def refuse(*args):
        calls.append(1)
        raise RuntimeError("NNPACK SpatialConvolution_updateOutput failed")

    monkeypatch.setattr(torch, "_nnpack_spatial_convolution", refuse)
    monkeypatch.setattr(cpu_kernels, "_FAILED", set())
    with torch.inference_mode():
        expected = F.conv2d(x, conv.weight, conv.bias, padding=1)
        assert torch.equal(conv(x), expected)
        assert torch.equal(conv(x), expected)
    assert len(calls) == 1  # remembered: not retried for that shape
    assert "NNPACK failed" in caplog.text


def test_the_fused_steps_give_the_same_floats():
    torch.manual_seed(0)
    out, other = torch.randn(2, 8, 6, 10), torch.randn(2, 8, 6, 10)
    expected = F.relu(out + other)
    assert torch.equal(add_relu_(out.clone(), other), expected)
    lateral, coarse = torch.randn(2, 8, 12, 20), torch.randn(2, 8, 6, 10)
    expected = lateral + F.interpolate(coarse, scale_factor=2.0, mode="nearest")
    assert torch.equal(_add_upsampled(lateral.clone(), coarse), expected)
    channels_last = lateral.contiguous(memory_format=torch.channels_last)
    assert torch.equal(_add_upsampled(channels_last, coarse.contiguous(
        memory_format=torch.channels_last)), expected)  # fmt: skip


@needs_nnpack
def test_load_backbone_picks_the_kernels_on_the_cpu(monkeypatch):
    fast = fpncli.load_backbone("random")
    assert uses_cpu_kernels(fast)
    assert fast.bottom_up.stem.pool_channels_last
    assert next(fast.parameters()).is_contiguous()  # NCHW, as NNPACK wants
    for plain in (fpncli.load_backbone("random", cpu_kernels=False),
                  fpncli.load_backbone("random", channels_last=True)):  # fmt: skip
        assert not uses_cpu_kernels(plain)
        assert next(plain.parameters()).is_contiguous(memory_format=torch.channels_last)
    assert not uses_cpu_kernels(fpncli.load_backbone("random", fold_bn=False))
    monkeypatch.setattr(cpu_kernels, "_nnpack_ready", lambda: False)
    assert not uses_cpu_kernels(fpncli.load_backbone("random"))
    with pytest.raises(RuntimeError, match="NNPACK"):
        fpncli.load_backbone("random", cpu_kernels=True)


@needs_nnpack
@pytest.mark.parametrize("batch", [1, 2])
def test_the_backbone_with_the_kernels_equals_the_plain_one(batch):
    fast = fpncli.load_backbone("random")
    plain = fpncli.load_backbone("random", cpu_kernels=False)
    reference = fpncli.load_backbone("random", cpu_kernels=False, channels_last=False).double()
    x = torch.randn(batch, 3, 256, 384, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = reference(x.double())
    got_fast, got_plain = run_backbone(fast, x), run_backbone(plain, x)
    for name, value in expected.items():
        assert got_fast[name].shape == value.shape
        assert _relative(got_fast[name], value) < 2e-5, name
        assert _relative(got_plain[name], value) < 2e-5, name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_the_fused_residual_step_takes_every_dtype(dtype):
    """``_add_relu_`` has no bf16 kernel: CPU autocast (bf16) reaches the residual add with it."""
    out, other = torch.randn(2, 8, 6, 10).to(dtype), torch.randn(2, 8, 6, 10).to(dtype)
    assert torch.equal(add_relu_(out.clone(), other), F.relu(out + other))


def test_the_backbone_runs_bf16_on_the_cpu(monkeypatch):
    """Where check_precision allows bf16 on the CPU (AVX512-BF16/AMX), every batch must run:
    autocast and the converted copy, with and without the CPU kernels (the check told the CPU
    has them, so this holds on any CPU)."""
    monkeypatch.setattr(fpncli.api, "_cpu_has_fast_bf16", lambda: True)
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    for kernels in (None, False):
        model = fpncli.load_backbone("random", cpu_kernels=kernels)
        reference = run_backbone(model, x)
        for run_model in (model_for_run(model, "bf16"), model_for_run(model, "bf16", convert=True)):
            out = run_backbone(run_model, x, precision="bf16")
            for name, value in reference.items():
                assert _relative(out[name].float(), value) < 5e-2, (kernels, name)


@needs_nnpack
def test_compiled_and_low_precision_runs_use_one_plain_copy():
    model = fpncli.load_backbone("random")
    bf16 = model_for_run(model, "bf16")  # autocast on the CPU: oneDNN's channels-last model
    assert bf16 is not model and not uses_cpu_kernels(bf16)
    assert next(bf16.parameters()).is_contiguous(memory_format=torch.channels_last)
    assert model_for_run(model, "fp16") is bf16  # one copy for all of them
    assert model_for_run(model, "fp32") is model
    assert uses_cpu_kernels(model)  # unchanged
    converted = model_for_run(model, "bf16", convert=True)
    assert next(converted.parameters()).dtype == torch.bfloat16 and not uses_cpu_kernels(converted)


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]  # fmt: skip


def _mmapped_bytes() -> int:
    libc = hostmem._glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        pytest.skip("needs glibc >= 2.33 (mallinfo2)")
    libc.mallinfo2.restype = _Mallinfo2
    return libc.mallinfo2().hblkhd


def test_a_run_keeps_large_blocks_in_the_heap():
    """In a fresh process (``_check_large_blocks``): in one that has run many tests, memory
    mapped just above the heap can stop it growing, and glibc then maps a block however high
    its threshold (the check failed so once in the whole suite and passes alone)."""
    if hostmem._glibc() is None or not hasattr(hostmem._glibc(), "mallinfo2"):
        pytest.skip("needs glibc >= 2.33 (mallinfo2)")
    here = Path(__file__).resolve().parent
    code = f"import sys; sys.path[:0] = [{str(here)!r}, {str(here.parent)!r}]; " \
        "import test_cpu_kernels; test_cpu_kernels._check_large_blocks()"  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "FPNCLI_MALLOC"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


def _check_large_blocks() -> None:
    # each check asks for a size no earlier free left in the heap, so only the thresholds decide
    mib = 1 << 20

    def mmapped_while_held(size: int) -> int:
        before = _mmapped_bytes()
        block = np.ones(size // 8)  # malloc'd by numpy, written so it is really there
        held = _mmapped_bytes() - before
        del block
        return held

    assert mmapped_while_held(300 * mib) >= 300 * mib  # glibc's default: mmapped
    with hostmem.keep_large_blocks():
        with hostmem.keep_large_blocks():  # nested (a bench row inside a run)
            assert mmapped_while_held(310 * mib) < 300 * mib
        assert mmapped_while_held(320 * mib) < 300 * mib  # still held by the outer block
        seen = []
        worker = threading.Thread(target=lambda: seen.append(mmapped_while_held(48 * mib)))
        worker.start()
        worker.join()
        assert seen[0] < 48 * mib  # another thread's arena (heaps up to 64 MiB) too
    assert mmapped_while_held(400 * mib) >= 400 * mib  # restored
    os.environ["FPNCLI_MALLOC"] = "0"  # (a process of its own)
    with hostmem.keep_large_blocks():
        assert mmapped_while_held(500 * mib) >= 500 * mib  # switched off
