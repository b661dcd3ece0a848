"""Uint8 images -> the backbone's input batch, in torch on whatever device the pixels are on.

Detectron2 does this inside the model (``GeneralizedRCNN.preprocess_image``): the data loader
hands over uint8 images, and ``(x - pixel_mean) / pixel_std`` plus zero padding to a multiple of
32 (``ImageList.from_tensors``) run on the model's device. fpncli does the same, so the
host-to-device copy carries uint8 (a quarter of float32's bytes) and the CPU runs the very code
the GPU runs. The arithmetic is elementwise float32 subtract-then-divide, so the result is
bit-identical to the numpy version (``fpncli.io.preprocess.normalize_and_pad``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

__all__ = ["padded_size", "normalize_batch"]


def padded_size(height: int, width: int, size_divisibility: int = 32) -> tuple[int, int]:
    """``(height, width)`` rounded up to a multiple of ``size_divisibility``."""
    d = size_divisibility
    return math.ceil(height / d) * d, math.ceil(width / d) * d


@functools.lru_cache(maxsize=32)
def _constant(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """``(1, 3, 1, 1)`` float32 on ``device``, made once: ``torch.tensor(..., device=cuda)`` is a
    synchronous copy that would make the caller wait for all the work queued on the GPU."""
    return torch.tensor(values, dtype=torch.float32, device=device).view(1, 3, 1, 1)


def normalize_batch(
    pixels: torch.Tensor,
    sizes: Sequence[tuple[int, int]],
    *,
    color_order: str,
    pixel_mean: Sequence[float],
    pixel_std: Sequence[float],
    pad_to: tuple[int, int] | None = None,
    size_divisibility: int = 32,
    channels_last: bool = True,
    rows: int | None = None,
) -> torch.Tensor:
    """Turn a uint8 batch of RGB images into the normalized, zero-padded float32 model input.

    Args:
        pixels: ``(B, H, W, 3)`` uint8, **RGB**, 0-255; image ``i`` occupies
            ``pixels[i, :h_i, :w_i]`` (the rest is ignored).
        sizes: ``(h_i, w_i)`` of each image.
        color_order: "BGR" (Detectron2 weights: channels reversed) or "RGB" (torchvision).
        pixel_mean, pixel_std: per channel, in ``color_order``, on the 0-255 scale.
        pad_to: the padded ``(Hp, Wp)``; default: the largest image rounded up to
            ``size_divisibility``.
        channels_last: return the channels-last memory format (what the folded model uses).
        rows: the batch's rows (default ``B``): rows past ``B`` are zero images, e.g. a partial
            batch padded to the full size, in the same tensor (no copy, the same memory format).

    Returns:
        ``(rows, 3, Hp, Wp)`` float32 on ``pixels.device``: ``(x - mean) / std`` inside each
        image, exact zeros in the padding (as ``ImageList.from_tensors`` pads after normalizing).
    """
    if pixels.dtype != torch.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise ValueError(f"expected (B, H, W, 3) uint8 pixels, got {pixels.dtype} {pixels.shape}")
    if len(sizes) != pixels.shape[0]:
        raise ValueError(f"{len(sizes)} sizes for a batch of {pixels.shape[0]}")
    count = pixels.shape[0]
    if rows is not None and rows < count:
        raise ValueError(f"rows {rows} is fewer than the batch's {count} images")
    if color_order not in ("BGR", "RGB"):
        raise ValueError(f"unknown color order {color_order!r}")
    if pad_to is None:
        pad_to = padded_size(max(h for h, _ in sizes), max(w for _, w in sizes), size_divisibility)
    device = pixels.device
    mean = _constant(tuple(map(float, pixel_mean)), device)
    std = _constant(tuple(map(float, pixel_std)), device)
    chw = pixels.permute(0, 3, 1, 2)
    if color_order == "BGR":
        chw = chw.flip(1)
    height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
    if pad_to[0] < height or pad_to[1] < width:
        raise ValueError(f"pad_to {pad_to} is smaller than the largest image {(height, width)}")
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty(
        (count if rows is None else rows, 3, *pad_to), dtype=torch.float32, device=device,
        memory_format=memory_format,
    ).zero_()  # fmt: skip
    # in place, image by image region: the uint8 -> float32 copy, then subtract, then divide
    # (the same float32 operations as (x.float() - mean) / std, without the temporaries)
    if all(size == (height, width) for size in sizes):
        regions = [(slice(0, count), height, width)]
    else:
        regions = [(slice(i, i + 1), h, w) for i, (h, w) in enumerate(sizes)]
    for index, h, w in regions:
        region = out[index, :, :h, :w]
        region.copy_(chw[index, :, :h, :w])
        region.sub_(mean).div_(std)
    return out
