"""Pillow's bilinear resize in torch (``fpncli.model.resize``): every pixel equal to Pillow's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fpncli.model.resize import (
    VERTICAL_FIRST_RULE,
    bilinear_weights,
    pillow_bilinear,
    vertical_first,
)


def _pillow(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).resize((width, height), Image.BILINEAR))


@pytest.mark.parametrize(
    "source, size",
    [((1080, 1920), (756, 1344)), ((480, 640), (800, 1067)), ((427, 640), (800, 1199)),
     ((500, 1500), (444, 1333)), ((801, 1280), (800, 1280)), ((7, 5), (800, 571)),
     ((1, 1), (3, 3)), ((13, 999), (5, 377)), ((64, 64), (64, 96)), ((96, 64), (64, 64)),
     ((1500, 10), (1333, 9)), ((4000, 3), (3, 2)), ((2, 3), (1000, 999))],
)  # fmt: skip
def test_equals_pillow_on_detectron2s_sizes_and_odd_ones(source, size):
    pixels = np.random.default_rng(sum(source)).integers(0, 256, (*source, 3), dtype=np.uint8)
    got = pillow_bilinear(torch.from_numpy(pixels), *size)
    np.testing.assert_array_equal(got.numpy(), _pillow(pixels, *size))


def test_equals_pillow_on_random_sizes_both_ways():
    """Shrinking (the filter widened: antialiasing) and enlarging, each axis on its own, and in
    both pass orders (Pillow 13 shrinks a much shorter height first)."""
    rng = np.random.default_rng(0)
    orders = set()
    for _ in range(150):
        h, w, oh, ow = (int(v) for v in rng.integers(1, 160, 4))
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        got = pillow_bilinear(torch.from_numpy(pixels), oh, ow).numpy()
        np.testing.assert_array_equal(got, _pillow(pixels, oh, ow), err_msg=f"{(h, w, oh, ow)}")
        orders.add(vertical_first(h, w, oh, ow))
    assert False in orders and (True in orders or VERTICAL_FIRST_RULE != "13")
    assert not vertical_first(1080, 1920, 756, 1344)  # a 1080p frame: horizontal first


def test_each_pillow_versions_pass_order():
    """Up to 12.1 always horizontal first; 12.2-12.3 vertically first an image over 100 times
    taller than wide that shrinks; 13 when the height shrinks by over twice the width's pixels."""
    tall, frame, squat = (1500, 10, 1333, 9), (1080, 1920, 756, 1344), (900, 120, 300, 110)
    assert [vertical_first(*tall, rule=r) for r in (None, "12.2", "13")] == [False, True, True]
    assert [vertical_first(*frame, rule=r) for r in (None, "12.2", "13")] == [False] * 3
    assert [vertical_first(*squat, rule=r) for r in (None, "12.2", "13")] == [False, False, True]


def _precompute_coeffs(in_size: int, out_size: int):
    """Pillow's ``precompute_coeffs`` and ``normalize_coeffs_8bpc`` for BILINEAR, transcribed
    loop for loop (``bilinear_weights`` does the same for all windows at once)."""
    scale = float(np.float32(in_size)) / out_size
    filterscale = max(scale, 1.0)
    support = filterscale
    ksize = int(np.ceil(support)) * 2 + 1
    starts, weights = np.zeros(out_size, np.int64), np.zeros((out_size, ksize), np.int64)
    for xx in range(out_size):
        center = 0.0 + (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        k = [max(0.0, 1.0 - abs((x + xmin - center + 0.5) * (1.0 / filterscale)))
             for x in range(xmax)]  # fmt: skip
        ww = 0.0
        for w in k:
            ww += w
        for x, w in enumerate(k):
            w = w / ww if ww != 0.0 else w
            weights[xx, x] = int(0.5 + w * (1 << 22)) if w >= 0 else int(-0.5 + w * (1 << 22))
        starts[xx] = xmin
    return starts, weights


def test_the_weights_equal_pillows_loop():
    rng = np.random.default_rng(1)
    pairs = [(1920, 1344), (1080, 756), (4000, 3), (2, 1000), (1, 1), (65000, 3), (3, 65000)]
    pairs += [tuple(int(v) for v in rng.integers(1, 3000, 2)) for _ in range(150)]
    for in_size, out_size in pairs:
        starts, weights = bilinear_weights(in_size, out_size)
        expected_starts, expected = _precompute_coeffs(in_size, out_size)
        np.testing.assert_array_equal(starts, expected_starts, err_msg=f"{in_size, out_size}")
        np.testing.assert_array_equal(weights, expected, err_msg=f"{in_size, out_size}")


def test_extreme_values_round_and_clip_as_pillow():
    """All-255 and checkerboard images: the rounding and the clip to 0..255 of each pass."""
    board = (np.indices((37, 53)).sum(0) % 2 * 255).astype(np.uint8)
    for pixels in (np.full((37, 53, 3), 255, np.uint8), np.stack([board] * 3, axis=2)):
        for size in ((20, 31), (80, 101), (37, 20)):
            got = pillow_bilinear(torch.from_numpy(pixels), *size).numpy()
            np.testing.assert_array_equal(got, _pillow(pixels, *size))


def test_weights_sum_to_one_in_fixed_point_and_are_cached():
    starts, weights = bilinear_weights(1920, 1344)
    assert weights.shape == (1344, 5) and starts[0] == 0 and starts[-1] <= 1920
    assert np.all(np.abs(weights.sum(1) - (1 << 22)) <= weights.shape[1])
    assert bilinear_weights(1920, 1344)[1] is weights
    with pytest.raises(ValueError, match="cannot resize"):
        bilinear_weights(0, 3)
    with pytest.raises(ValueError, match=r"expected \(H, W, C\) uint8"):
        pillow_bilinear(torch.zeros(4, 4, 3), 2, 2)


def test_a_staged_batch_is_resized_image_by_image_or_whole():
    """``steps._resized``: a batch of one source size is resized in one go; mixed sizes (each in
    the top-left corner of the staged batch) by groups; either way each image as Pillow does."""
    from fpncli.run.steps import _resized

    rng = np.random.default_rng(3)
    same = rng.integers(0, 256, (3, 45, 60, 3), dtype=np.uint8)
    got = _resized(torch.from_numpy(same), [(45, 60)] * 3, [(30, 40)] * 3).numpy()
    for i in range(3):
        np.testing.assert_array_equal(got[i], _pillow(same[i], 30, 40))
    staged = np.zeros((3, 50, 60, 3), np.uint8)
    sources, sizes = [(45, 60), (50, 58), (45, 60)], [(30, 40), (32, 37), (30, 40)]
    for i, (h, w) in enumerate(sources):
        staged[i, :h, :w] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    got = _resized(torch.from_numpy(staged), sources, sizes).numpy()
    assert got.shape == (3, 32, 40, 3)
    for i, ((h, w), (oh, ow)) in enumerate(zip(sources, sizes)):
        np.testing.assert_array_equal(got[i, :oh, :ow], _pillow(staged[i, :h, :w].copy(), oh, ow))
        assert not got[i, oh:].any() and not got[i, :, ow:].any()


def test_the_cuda_arithmetic_gathering_uint8_equals_pillow_too():
    """On CUDA the gathered pixels stay uint8 and the multiply-add casts them; the same
    arithmetic, run here on the CPU, gives Pillow's pixels."""
    from fpncli.model.resize import _pass

    rng = np.random.default_rng(5)
    for h, w, oh, ow in [(1080, 1920, 756, 1344), (45, 200, 90, 33), (150, 40, 20, 41)]:
        pixels = torch.from_numpy(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        first, second = (
            ((-3, oh), (-2, ow)) if vertical_first(h, w, oh, ow) else ((-2, ow), (-3, oh))
        )
        got = _pass(_pass(pixels, *first, widen_first=False), *second, widen_first=False)
        np.testing.assert_array_equal(got.numpy(), _pillow(pixels.numpy(), oh, ow))
