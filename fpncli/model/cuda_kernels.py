"""cuDNN's fused convolution epilogues for CUDA runs in fp16/bf16: convolution, bias and ReLU
(and the bottleneck's residual sum) in one kernel.

In eager PyTorch a folded convolution followed by ReLU is three passes over its output (the
convolution, the bias added by ATen, the ReLU), and the last convolution of a bottleneck four
(plus the residual sum). Those passes are memory-bound, and on an H200 they were about 45% of
the bf16 forward: 800x1344, batch 16, 30.1 ms eager against 16.1 ms compiled (which fuses
them into one pass after each convolution). ``torch.cudnn_convolution_relu`` and
``torch.cudnn_convolution_add_relu`` ask cuDNN for one fused kernel instead (the ops PyTorch's
TorchScript freezing pass uses on CUDA).

The fused ops are used only where they compute what the plain path does: CUDA tensors of a
converted fp16/bf16 model, the batch norm folded (a bias, no ``norm``) and no autograd.
``torch.compile`` traces them too (they have no meta kernel: its fake tensors run the real
kernel for the shapes), where inductor would otherwise fuse each epilogue into a pass of its
own after a plain convolution: on an H100, bf16, batch 16, 800x1344, the compiled model ran
1014 images/s over the fused ops against 857 over the plain ones, with the same error against
fp32 (1.4e-2; ``scripts/gpu_check.sh``, one A/B run, 2026-11-26), and
``tests/test_gpu.py::test_a_model_compiled_over_the_fused_ops_equals_the_eager_one`` passed
there. ``fusion_works`` checks the ops once per device and dtype on a small input against the
plain ops; where they fail or differ, nothing changes. ``FPNCLI_CUDNN_FUSION=0`` turns them
off (e.g. to compare); ``FPNCLI_CUDNN_FUSION=eager`` keeps them out of compiled models (the
A/B above).
"""

from __future__ import annotations

import functools
import logging
import os

import torch
from torch import nn
from torch.nn import functional as F

from .. import ONCE

__all__ = ["enabled", "under_compile", "fusion_works", "use_cudnn_fusion", "uses_cudnn_fusion"]

log = logging.getLogger(__name__)


def _setting() -> str:
    return os.environ.get("FPNCLI_CUDNN_FUSION", "1").strip().lower()


def enabled() -> bool:
    """False when ``FPNCLI_CUDNN_FUSION=0`` turns the fused kernels off."""
    return _setting() != "0"


def under_compile() -> bool:
    """Whether ``torch.compile`` traces the fused ops: unless ``FPNCLI_CUDNN_FUSION`` is ``0``
    or ``eager``. (``compile``, which made it an opt-in before, is accepted as the default.)"""
    return _setting() not in ("0", "eager")


@functools.cache
def fusion_works(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether cuDNN's fused ops run on ``device`` in ``dtype`` and agree with the plain ops
    (a 1x1 and a strided 3x3 convolution, channels-last, as the backbone has them)."""
    if device.type != "cuda" or dtype not in (torch.float16, torch.bfloat16):
        return False
    try:
        with torch.inference_mode(), torch.cuda.device(device):
            gen = torch.Generator(device="cpu").manual_seed(0)
            x = torch.randn(2, 64, 32, 48, generator=gen).to(device, dtype)
            x = x.contiguous(memory_format=torch.channels_last)
            for k, stride in ((1, 1), (3, 2)):
                w = (torch.randn(64, 64, k, k, generator=gen) / (8 * k)).to(device, dtype)
                w = w.contiguous(memory_format=torch.channels_last)
                b = torch.randn(64, generator=gen).to(device, dtype)
                pad = k // 2
                plain = F.conv2d(x, w, b, stride, pad)
                # cudnn_convolution_relu hands cuDNN its new, uninitialised output as the
                # addend z, times 0: NaN left in that memory would come out as NaN (0 * NaN) or
                # as 0 (a ReLU that drops NaN). A freed block of NaN of the output's size is the
                # one the caching allocator gives the output next, so the check sees that case.
                poison = torch.full_like(plain, float("nan"))
                del poison
                fused = torch.cudnn_convolution_relu(x, w, b, (stride,) * 2, (pad,) * 2, (1, 1), 1)
                z = torch.randn(plain.shape, generator=gen).to(device, dtype)
                z = z.contiguous(memory_format=torch.channels_last)
                summed = torch.cudnn_convolution_add_relu(
                    x, w, z, 1.0, b, (stride,) * 2, (pad,) * 2, (1, 1), 1
                )
                for got, want in ((fused, F.relu(plain)), (summed, F.relu(plain + z))):
                    scale = want.float().abs().max().clamp(min=1e-6)
                    error = ((got.float() - want.float()).abs().max() / scale).item()
                    if got.shape != want.shape or not error < 2e-2:
                        log.warning("cuDNN's fused convolutions differ (%.2g): not used", error,
                                    extra={ONCE: "cudnn fusion differs"})  # fmt: skip
                        return False
        return True
    except RuntimeError as e:
        log.warning("cuDNN's fused convolutions do not run here (%s); not used",
                    str(e).splitlines()[0] if str(e) else type(e).__name__,
                    extra={ONCE: "cudnn fusion fails"})  # fmt: skip
        return False


def use_cudnn_fusion(model: nn.Module, on: bool = True, *, compiled: bool = False) -> nn.Module:
    """Mark every folded ``Conv2d`` of ``model`` (a bias, no ``norm``) to run its ReLU (and
    residual sum) fused, also under ``torch.compile`` when ``compiled``; or unmark them.
    Returns the model."""
    from .layers import Conv2d

    for conv in model.modules():
        if isinstance(conv, Conv2d):
            conv.fused = bool(on) and conv.norm is None and conv.bias is not None
            conv.fused_when_compiled = conv.fused and compiled
    return model


def uses_cudnn_fusion(model: nn.Module) -> bool:
    from .layers import Conv2d

    return any(isinstance(m, Conv2d) and m.fused for m in model.modules())
