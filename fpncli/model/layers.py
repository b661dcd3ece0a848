"""Building blocks: a convolution that owns its norm, and FrozenBatchNorm2d.

Mirrors ``detectron2/layers/wrappers.py`` (``Conv2d`` with a ``norm`` child) and
``detectron2/layers/batch_norm.py`` (``FrozenBatchNorm2d``), so parameter names match
Detectron2 checkpoints (``conv1.weight``, ``conv1.norm.running_mean``, ...).
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.nn import functional as F

from .. import ONCE
from .cpu_kernels import conv_forward

log = logging.getLogger(__name__)

__all__ = [
    "Conv2d",
    "FrozenBatchNorm2d",
    "add_relu_",
    "conv_relu",
    "conv_add_relu",
    "fold_frozen_batchnorm",
]


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d whose statistics and affine parameters are fixed buffers.

    ``y = x * w / sqrt(var + eps) + (b - mean * w / sqrt(var + eps))``, eps 1e-5, as in
    Detectron2. All four tensors are buffers, as in Detectron2, so they load from checkpoints but
    never train.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        # in place: ``ones - eps`` on the meta device (build_backbone's check) imports
        # torch._dynamo (1.3 s), which sets TORCHINDUCTOR_CACHE_DIR in os.environ and adds a
        # warnings filter in the caller's process
        self.register_buffer("running_var", torch.ones(num_features).sub_(eps))

    def scale_and_shift(
        self, dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-channel ``(scale, shift)`` this layer applies, in ``dtype``, shape ``(C,)``."""
        weight, bias, mean, var = (
            t.to(dtype) for t in (self.weight, self.bias, self.running_mean, self.running_var)
        )
        scale = weight * (var + self.eps).rsqrt()
        return scale, bias - mean * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Detectron2 takes this path at inference too (no grad): one fused kernel.
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` with an optional ``norm`` module applied after the convolution.

    The activation is applied by the caller (as Detectron2's blocks do with ``F.relu_``).
    ``kernel`` names a fast CPU kernel (``cpu_kernels.use_cpu_kernels`` sets it); it is used
    where it applies and ``F.conv2d`` elsewhere.
    """

    kernel: str | None = None
    #: run ReLU (and a residual sum) in cuDNN's fused kernel (``cuda_kernels.use_cudnn_fusion``);
    #: also while ``torch.compile`` traces when ``fused_when_compiled`` (a module attribute, not
    #: the environment, is what traced code may read)
    fused: bool = False
    fused_when_compiled: bool = False

    def __init__(self, *args, norm: nn.Module | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fast = conv_forward(self, x) if self.kernel is not None else None
        x = fast if fast is not None else F.conv2d(
            x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups
        )  # fmt: skip
        if self.norm is not None:
            x = self.norm(x)
        return x


def add_relu_(out: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``relu(out + other)`` into ``out``: one pass on the CPU (PyTorch's fused ``_add_relu_``,
    the same floats as the two steps), the two in-place steps elsewhere, when compiling, and for
    any dtype but float32 (the fused op has no bf16 kernel: CPU autocast runs bf16)."""
    if (
        out.device.type == "cpu"
        and out.dtype == other.dtype == torch.float32
        and not torch.compiler.is_compiling()
        and not (torch.is_grad_enabled() and (out.requires_grad or other.requires_grad))
    ):
        return torch.ops.aten._add_relu_(out, other)
    out += other
    return F.relu_(out)


def _fuses(conv: Conv2d, x: torch.Tensor) -> bool:
    return (
        conv.fused
        and x.is_cuda
        and x.dtype == conv.weight.dtype
        and not (torch.is_grad_enabled() and x.requires_grad)
        and (not torch.compiler.is_compiling() or conv.fused_when_compiled)
    )


def conv_relu(conv: Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``relu(conv(x))``: one cuDNN kernel where ``conv.fused`` applies, else two steps."""
    if _fuses(conv, x):
        out = _fused(conv, x, torch.cudnn_convolution_relu,
                     x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation,
                     conv.groups)  # fmt: skip
        if out is not None:
            return out
    return F.relu_(conv(x))


def conv_add_relu(conv: Conv2d, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``relu(conv(x) + other)``: one cuDNN kernel where ``conv.fused`` applies."""
    if _fuses(conv, x) and other.dtype == x.dtype:
        out = _fused(conv, x, torch.cudnn_convolution_add_relu,
                     x, conv.weight, other, 1.0, conv.bias, conv.stride, conv.padding,
                     conv.dilation, conv.groups)  # fmt: skip
        if out is not None:
            return out
    return add_relu_(conv(x), other)


#: what cuDNN says both when it has no fused engine for an input and when the engine's
#: workspace did not fit in the free memory (``run.device.is_out_of_memory`` counts it as the
#: latter)
_NO_ENGINE = "unable to find an engine"


def _fused(conv: Conv2d, x: torch.Tensor, op, *args) -> torch.Tensor | None:
    """``op(*args)``, cuDNN's fused kernel for ``conv``; None where ``conv`` falls back to the
    plain ops (``_unfuse``). "Unable to find an engine" may only mean that the workspace did not
    fit: the caching allocator's free blocks are given back and ``op`` is tried once more. If
    that runs, it was memory and the fusion stays; if it fails again, the refusal is taken as
    real and the convolution is unfused (also when what is short is memory that live tensors
    hold: the two look the same here, and one retry keeps it simple). Out of memory, either
    time, goes to the caller, re-raised here with a bare ``raise``: an exception raised from a
    frame that holds it in a local makes a reference cycle (exception, traceback, frame), and
    the failed batch's activations would stay allocated through the caller's smaller retry,
    until the cyclic garbage collector happened to run."""
    try:
        return op(*args)
    except RuntimeError as e:
        if _out_of_memory(e):
            raise
        if _NO_ENGINE not in str(e):
            _unfuse(conv, x, e)
            return None
    # freed here, not with ``run.device.free_cached_memory``: the model imports nothing of the run
    torch.cuda.empty_cache()
    try:
        return op(*args)
    except RuntimeError as e:
        if _out_of_memory(e):
            raise
        _unfuse(conv, x, e)
    return None


def _out_of_memory(error: RuntimeError) -> bool:
    """Out of memory is not a refusal of the fused kernel: a smaller batch may fit."""
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error)


def _unfuse(conv: Conv2d, x: torch.Tensor, error: RuntimeError) -> None:
    """cuDNN refused the fused kernel for this input: this convolution runs the plain ops from
    now on."""
    conv.fused = False
    text = str(error)
    reason = text.splitlines()[0] if text else type(error).__name__
    log.warning("cuDNN's fused kernel failed on a %s input (%s); plain ops for this layer",
                tuple(x.shape), reason,
                extra={ONCE: f"cudnn unfused {tuple(x.shape)} {reason}"})  # fmt: skip


@torch.no_grad()
def fold_frozen_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every ``Conv2d.norm`` that is a FrozenBatchNorm2d into its convolution, in place.

    The convolution's weight becomes ``w * scale`` and its bias ``b * scale + shift`` (computed in
    float64, then rounded once), and ``norm`` becomes ``None``. For inference only: the result
    no longer has Detectron2's parameter names, so load checkpoints before folding.

    Returns:
        The same module, for chaining.
    """
    for conv in module.modules():
        if isinstance(conv, Conv2d) and isinstance(conv.norm, FrozenBatchNorm2d):
            scale, shift = conv.norm.scale_and_shift(torch.float64)
            weight = conv.weight.double() * scale.view(-1, 1, 1, 1)
            bias = shift if conv.bias is None else conv.bias.double() * scale + shift
            conv.weight.copy_(weight.to(conv.weight.dtype))
            conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)
            conv.norm = None
    return module
