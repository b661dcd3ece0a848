"""Pillow's bilinear resize of uint8 images, bit for bit, in torch (on the model's device).

Detectron2 resizes with ``PIL.Image.resize(size, Image.BILINEAR)``; on a GPU the pipeline does
the same on the device (``fpncli.run.steps``), so the CPU keeps only the JPEG decoding (a third of
its work per 1080p image). What Pillow computes (``src/libImaging/Resample.c``, the 8-bit path,
unchanged since Pillow 4 and without ``reducing_gap``, which Detectron2 does not set):

- per output column (then row), a window of input pixels and bilinear ("triangle") weights, the
  filter widened by the scale when shrinking (antialiasing): ``precompute_coeffs``;
- the weights normalized to sum to 1, then to fixed point with 22 fractional bits, rounded half
  away from zero: ``normalize_coeffs_8bpc``;
- two passes, each sum rounded (``+ 2**21``), shifted and clipped to 0..255 (a uint8 image in
  between); a pass whose size does not change is skipped. The horizontal pass comes first,
  except: Pillow 12.2 and 12.3 shrink an image over 100 times taller than wide vertically first
  (``Image.resize``, python-pillow/Pillow#9524); from Pillow 13 on, an image whose height shrinks
  by more than twice as many pixels as its width (``ImagingResampleInner``, #9549). The order
  changes some pixels by one, so it follows the Pillow installed, as Detectron2's own resize does.

The integer sums are exact in int32 on any device, so the result equals Pillow's exactly (the
tests compare every pixel over many sizes). The weights are computed once per size pair, in
double precision as Pillow does.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

__all__ = ["pillow_bilinear", "bilinear_weights", "vertical_first"]

_BITS = 22  # PRECISION_BITS = 32 - 8 - 2


def _pillow_version() -> tuple[int, int]:
    import PIL

    major, minor = (int("".join(c for c in part if c.isdigit()) or 0)
                    for part in PIL.__version__.split(".")[:2])  # fmt: skip
    return major, minor


#: Which of Pillow's rules for the vertical pass first applies: "13" (the height shrinks by
#: more than twice the width's pixels), "12.2" (over 100 times taller than wide, shrunk), or
#: None (always horizontal first: Pillow up to 12.1).
VERTICAL_FIRST_RULE = (
    "13" if _pillow_version() >= (13, 0) else "12.2" if _pillow_version() >= (12, 2) else None
)


def vertical_first(in_h: int, in_w: int, out_h: int, out_w: int,
                   rule: str | None = VERTICAL_FIRST_RULE) -> bool:  # fmt: skip
    """Whether Pillow (the installed one, or ``rule``) resizes ``in_h x in_w`` to
    ``out_h x out_w`` vertically first."""
    if rule == "13":  # ImagingResampleInner's horizontal_first, negated
        return 0 < in_h - out_h and in_h - out_h > (in_w - out_w) * 2
    if rule == "12.2":  # Image.resize: two single-axis calls, the height's first
        return in_h > in_w * 100 and out_h < in_h
    return False


@functools.lru_cache(maxsize=1024)
def bilinear_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's window starts ``(out_size,)`` and fixed-point weights ``(out_size, ksize)``
    (zero past each window's end) for resizing ``in_size`` pixels to ``out_size``: the same
    double-precision operations as ``precompute_coeffs``, in the same order, for all windows at
    once (tests compare with a plain transcription)."""
    if in_size < 1 or out_size < 1:
        raise ValueError(f"cannot resize {in_size} pixels to {out_size}")
    scale = float(np.float32(in_size)) / out_size  # (double)(in1 - in0) / outSize, floats
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale  # the bilinear filter's support is 1
    ksize = int(math.ceil(support)) * 2 + 1
    inverse = 1.0 / filterscale
    center = (np.arange(out_size) + 0.5) * scale  # in0 + (xx + 0.5) * scale, in0 = 0
    starts = np.maximum((center - support + 0.5).astype(np.int64), 0)  # (int): truncation
    counts = np.minimum((center + support + 0.5).astype(np.int64), in_size) - starts
    x = np.arange(ksize)[None, :]
    weights = np.maximum(0.0, 1.0 - np.abs((x + starts[:, None] - center[:, None] + 0.5) * inverse))
    weights[x >= counts[:, None]] = 0.0
    total = np.zeros(out_size)
    for k in range(ksize):  # summed in C's order (the zeros past a window add nothing)
        total += weights[:, k]
    nonzero = total != 0.0
    weights[nonzero] /= total[nonzero, None]
    # (int)(0.5 + w * (1 << PRECISION_BITS)): the weights are >= 0, truncation is floor
    return starts, (0.5 + weights * (1 << _BITS)).astype(np.int64)


@functools.lru_cache(maxsize=256)
def _device_weights(in_size: int, out_size: int, device: torch.device):
    """``bilinear_weights`` as int64 window starts and int32 weights on ``device`` (copied there
    once: a copy from pageable memory per call would wait for the device)."""
    starts, weights = bilinear_weights(in_size, out_size)
    tables = (torch.from_numpy(starts), torch.from_numpy(weights.astype(np.int32)))
    if device.type == "cuda":  # from pinned memory: no wait for the batches queued before
        return tuple(t.pin_memory().to(device, non_blocking=True) for t in tables)
    return tables


def _pass(pixels: torch.Tensor, dim: int, out_size: int, widen_first: bool | None = None
          ) -> torch.Tensor:  # fmt: skip
    """One of Pillow's two passes along ``dim`` (-3: rows, -2: columns) of ``(..., H, W, C)``
    uint8. ``widen_first``: make the pixels int32 before gathering them (None: off CUDA)."""
    in_size = pixels.shape[dim]
    if in_size == out_size:
        return pixels
    index, taps = _device_weights(in_size, out_size, pixels.device)
    shape = [1] * pixels.ndim
    shape[dim] = out_size
    out_shape = list(pixels.shape)
    out_shape[dim] = out_size
    # the rounding term first, then each tap: pixels gathered times int32 weights, added into one
    # int32 sum. On CUDA the gathered pixels stay uint8 (a quarter of the memory traffic; the
    # kernel casts as it reads); the CPU's kernels are vectorized only for one dtype, so there
    # each tap's pixels are widened first (a tap at a time: no int32 copy of the whole batch).
    if widen_first is None:
        widen_first = pixels.device.type != "cuda"
    total = torch.full(out_shape, 1 << (_BITS - 1), dtype=torch.int32, device=pixels.device)
    for t in range(taps.shape[1]):
        at = (index + t).clamp_(max=in_size - 1)  # past a window's end the weight is 0
        gathered = pixels.index_select(dim, at)
        if widen_first:
            total.add_(gathered.to(torch.int32).mul_(taps[:, t].view(shape)))
        else:
            total.addcmul_(gathered, taps[:, t].view(shape))
    return (total >> _BITS).clamp_(0, 255).to(torch.uint8)


def pillow_bilinear(pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(..., H, W, C)`` uint8 -> ``(..., height, width, C)`` uint8, each image equal to
    ``PIL.Image.fromarray(image).resize((width, height), Image.BILINEAR)``."""
    if pixels.dtype != torch.uint8 or pixels.ndim < 3:
        raise ValueError(f"expected (H, W, C) uint8, got {pixels.dtype} {tuple(pixels.shape)}")
    if vertical_first(pixels.shape[-3], pixels.shape[-2], height, width):
        return _pass(_pass(pixels, -3, height), -2, width)
    return _pass(_pass(pixels, -2, width), -3, height)
