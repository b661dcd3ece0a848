"""Faster float32 convolutions on the CPU: Winograd (NNPACK) for 3x3, one GEMM for 1x1.

oneDNN runs the backbone's convolutions near this CPU's fp32 peak, so the remaining gain is in
doing less arithmetic. 58% of the backbone's 260 GFLOP (800x1216) is in its twenty 3x3, stride-1
convolutions; NNPACK, which PyTorch ships, computes those with Winograd F(6x6, 3x3) transforms,
2.7x faster than oneDNN for P2's output convolution. NNPACK wants NCHW, so a model using these
kernels stays NCHW throughout and its 1x1 convolutions become one matrix product each
(``weight (K, C) @ input (C, H*W)``, the bias added by the GEMM). Measured on an AMD EPYC, 2
cores, 800x1216: the backbone forward drops from 1.64 s (oneDNN, channels-last) to about 1.3 s;
the levels differ from a float64 reference by ~5e-6 of their range, as oneDNN's do (~3e-6).

PyTorch only picks NNPACK by itself for batches of 16 or more, so the op is called directly
(``torch._nnpack_spatial_convolution``); where it does not exist or does not initialize (a CPU
without AVX2 or NEON), nothing changes. The kernels apply only where they compute what
``F.conv2d`` computes: float32 CPU tensors, no autocast, no autograd; otherwise the module falls
back to ``F.conv2d``. ``FPNCLI_CPU_KERNELS=0`` turns them off (e.g. to compare).

NNPACK's thread pool is sized by ``torch.get_num_threads()`` at its first use in the process.
"""

from __future__ import annotations

import functools
import logging
import os
import platform

import torch
from torch import nn

from .. import ONCE

__all__ = ["available", "use_cpu_kernels", "uses_cpu_kernels", "conv_forward"]

WINOGRAD, GEMM = "winograd", "gemm"
log = logging.getLogger(__name__)


@functools.cache
def _nnpack_ready() -> bool:
    if platform.machine().lower() in ("x86_64", "amd64") and not str(
        torch.backends.cpu.get_cpu_capability()
    ).startswith("AVX"):  # NNPACK's x86 kernels need AVX2 (else it logs a warning and fails)
        return False
    try:
        return bool(torch._nnpack_available())  # initializes NNPACK (needed before the first call)
    except (AttributeError, RuntimeError):
        return False


def available() -> bool:
    """Whether the kernels can run here (NNPACK initializes) and are not switched off by
    ``FPNCLI_CPU_KERNELS=0``."""
    return os.environ.get("FPNCLI_CPU_KERNELS", "1") != "0" and _nnpack_ready()


def _kernel_for(conv: nn.Conv2d) -> str | None:
    if conv.groups != 1 or tuple(conv.dilation) != (1, 1) or conv.padding_mode != "zeros":
        return None
    if (
        tuple(conv.kernel_size) == (3, 3)
        and tuple(conv.stride) == (1, 1)
        and tuple(conv.padding) == (1, 1)
    ):
        return WINOGRAD
    if tuple(conv.kernel_size) == (1, 1) and tuple(conv.padding) == (0, 0):
        return GEMM
    return None


def use_cpu_kernels(model: nn.Module, on: bool = True) -> nn.Module:
    """Give every ``fpncli`` convolution of ``model`` its fast CPU kernel (or remove them with
    ``on=False``), in place. The model should be NCHW-contiguous (``load_backbone`` does this).

    Returns:
        The same module, for chaining.
    """
    from .layers import Conv2d
    from .resnet import BasicStem

    for module in model.modules():
        if isinstance(module, Conv2d):
            module.kernel = _kernel_for(module) if on else None
        elif isinstance(module, BasicStem):
            module.pool_channels_last = on
    return model


def uses_cpu_kernels(model: nn.Module) -> bool:
    """Whether any convolution of ``model`` has a fast CPU kernel."""
    return any(getattr(m, "kernel", None) for m in model.modules())


def _applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.dim() == 4
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()  # NNPACK has no fake-tensor kernel to trace
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and available()
    )


def _winograd(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    x = x.contiguous()
    # batch 1 is NNPACK's inference path; a larger batch would take its training-time path
    outs = [
        torch._nnpack_spatial_convolution(x[i : i + 1], conv.weight, conv.bias, [1, 1], [1, 1])
        for i in range(x.shape[0])
    ]
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def _gemm(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    stride = tuple(conv.stride)
    if stride != (1, 1):
        x = x[:, :, :: stride[0], :: stride[1]]
    x = x.contiguous()
    batch, channels, height, width = x.shape
    weight = conv.weight.view(conv.weight.shape[0], channels)
    flat = x.view(batch, channels, height * width)
    if batch == 1:
        out = (
            torch.mm(weight, flat[0])
            if conv.bias is None
            else torch.addmm(conv.bias.view(-1, 1), weight, flat[0])
        )
    else:
        out = torch.matmul(weight, flat)
        if conv.bias is not None:
            out += conv.bias.view(1, -1, 1)
    return out.view(batch, -1, height, width)


#: NNPACK transforms the weights on every call (PyTorch asks it to), which costs more than the
#: Winograd saving below about 1.5 pixels per input channel; measured crossovers (EPYC, 2 cores):
#: 64 channels at 8x8, 256 at 25x25, 512 at 25x25 (and a 25x38 res5 at 800x1216 gains 20%).
MIN_PIXELS_PER_CHANNEL = 1.5
#: Input shapes ``(C, H, W)`` NNPACK refused once: oneDNN runs them from then on.
_FAILED: set[tuple[int, ...]] = set()


def conv_forward(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor | None:
    """``conv``'s output through its fast kernel, or None where the kernel does not apply."""
    if not _applies(x, conv.weight):
        return None
    if conv.kernel == GEMM:
        return _gemm(conv, x)
    shape = tuple(x.shape[1:])
    if shape[1] * shape[2] < MIN_PIXELS_PER_CHANNEL * shape[0] or shape in _FAILED:
        return None
    try:
        return _winograd(conv, x)
    except RuntimeError as e:  # NNPACK refused (e.g. its workspace): oneDNN computes the same
        _FAILED.add(shape)
        log.warning("NNPACK failed on a %s input (%s); using oneDNN for that shape", shape, e,
                    extra={ONCE: f"nnpack {shape}"})  # fmt: skip
        return None
