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
  between); a pass whose size does not change is skipped. The horizontal pass comes first, except
  from Pillow 13 on when the height shrinks by more than twice as many pixels as the width
  (``ImagingResampleInner``, python-pillow/Pillow#9549): the order changes some pixels by one, so
  it follows the Pillow installed, as Detectron2's own resize does.

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


def _pillow_major() -> int:
    import PIL

    return int(PIL.__version__.split(".")[0])


#: Pillow 13 runs the vertical pass first when the height shrinks much more than the width.
VERTICAL_FIRST_RULE = _pillow_major() >= 13


def vertical_first(in_h: int, in_w: int, out_h: int, out_w: int) -> bool:
    """Whether the installed Pillow resizes ``in_h x in_w`` to ``out_h x out_w`` vertically
    first (its ``horizontal_first`` test, negated)."""
    return VERTICAL_FIRST_RULE and 0 < in_h - out_h and in_h - out_h > (in_w - out_w) * 2


@functools.lru_cache(maxsize=256)
def bilinear_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's window starts ``(out_size,)`` and fixed-point weights ``(out_size, ksize)``
    (zero past each window's end) for resizing ``in_size`` pixels to ``out_size``."""
    if in_size < 1 or out_size < 1:
        raise ValueError(f"cannot resize {in_size} pixels to {out_size}")
    scale = float(np.float32(in_size)) / out_size  # (double)(in1 - in0) / outSize, floats
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale  # the bilinear filter's support is 1
    ksize = int(math.ceil(support)) * 2 + 1
    inverse = 1.0 / filterscale
    starts = np.zeros(out_size, np.int64)
    weights = np.zeros((out_size, ksize), np.int64)
    for xx in range(out_size):
        center = 0.0 + (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        count = min(int(center + support + 0.5), in_size) - xmin
        window = [max(0.0, 1.0 - abs((x + xmin - center + 0.5) * inverse)) for x in range(count)]
        total = 0.0
        for w in window:
            total += w
        for x, w in enumerate(window):
            w = w / total if total != 0.0 else w
            weights[xx, x] = int(-0.5 + w * (1 << _BITS)) if w < 0 else int(0.5 + w * (1 << _BITS))
        starts[xx] = xmin
    return starts, weights


@functools.lru_cache(maxsize=256)
def _device_weights(in_size: int, out_size: int, device: torch.device):
    """``bilinear_weights`` as int64 window starts and int32 weights on ``device`` (copied there
    once: a copy from pageable memory per call would wait for the device)."""
    starts, weights = bilinear_weights(in_size, out_size)
    return (torch.from_numpy(starts).to(device),
            torch.from_numpy(weights.astype(np.int32)).to(device))  # fmt: skip


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
    # kernel casts as it reads); the CPU's kernels are vectorized only for one dtype.
    if widen_first is None:
        widen_first = pixels.device.type != "cuda"
    source = pixels.to(torch.int32) if widen_first else pixels
    total = torch.full(out_shape, 1 << (_BITS - 1), dtype=torch.int32, device=pixels.device)
    for t in range(taps.shape[1]):
        at = (index + t).clamp_(max=in_size - 1)  # past a window's end the weight is 0
        total.addcmul_(source.index_select(dim, at), taps[:, t].view(shape))
    return (total >> _BITS).clamp_(0, 255).to(torch.uint8)


def pillow_bilinear(pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(..., H, W, C)`` uint8 -> ``(..., height, width, C)`` uint8, each image equal to
    ``PIL.Image.fromarray(image).resize((width, height), Image.BILINEAR)``."""
    if pixels.dtype != torch.uint8 or pixels.ndim < 3:
        raise ValueError(f"expected (H, W, C) uint8, got {pixels.dtype} {tuple(pixels.shape)}")
    if vertical_first(pixels.shape[-3], pixels.shape[-2], height, width):
        return _pass(_pass(pixels, -3, height), -2, width)
    return _pass(_pass(pixels, -2, width), -3, height)
