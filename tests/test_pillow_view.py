"""``io.pillow_view``: a decoded image's pixels lent by Pillow, equal to its copy, kept alive."""

from __future__ import annotations

import gc

import numpy as np
import pytest
from PIL import Image

from fpncli.io.image_load import load_image
from fpncli.io.pillow_view import rgb_view


@pytest.mark.parametrize("size", [(1, 1), (3, 2), (121, 91), (640, 480)])
def test_the_view_is_the_pixels_without_a_copy_and_outlives_the_image(size):
    rng = np.random.default_rng(size[0])
    want = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(want)
    view = rgb_view(image)
    assert view is not None and view.shape == want.shape and view.dtype == np.uint8
    assert view.strides == (4 * size[0], 4, 1) and not view.flags.writeable
    np.testing.assert_array_equal(view, want)
    del image
    gc.collect()
    churn = [Image.new("RGB", size, (i, i, i)) for i in range(8)]  # the freed memory reused
    np.testing.assert_array_equal(view, want)
    assert len(churn) == 8


def test_a_decoded_jpeg_lends_what_np_asarray_copies(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (90, 130, 3), dtype=np.uint8)).save(tmp_path / "a.jpg")
    loaded = load_image(tmp_path / "a.jpg")
    lent = loaded.rgb_view()
    assert not lent.flags.c_contiguous  # lent, not copied
    np.testing.assert_array_equal(lent, loaded.rgb)
    loaded.drop_pixels()
    gc.collect()
    np.testing.assert_array_equal(lent, np.asarray(Image.open(tmp_path / "a.jpg").convert("RGB")))


def test_what_cannot_be_lent_gives_none_and_the_copy_instead(tmp_path):
    for mode in ("L", "RGBA", "CMYK", "I;16"):
        assert rgb_view(Image.new(mode, (4, 3))) is None, mode
    assert rgb_view(Image.new("RGB", (0, 5))) is None
    before = Image.core.get_block_size()
    Image.core.set_block_size(4096)  # rows in many blocks: nothing to lend in one piece
    try:
        scattered = Image.new("RGB", (64, 64), (1, 2, 3))
        assert rgb_view(scattered) is None
    finally:
        Image.core.set_block_size(before)
    rgb = np.full((3, 5, 3), 7, np.uint8)
    from fpncli.io.image_load import LoadedImage

    copied = LoadedImage(rgb=rgb).rgb_view()  # an array already: itself
    assert copied is rgb


def test_copy_rgb_puts_lent_pixels_where_they_go_as_numpy_would():
    from fpncli.io.pillow_view import copy_rgb

    rng = np.random.default_rng(3)
    want = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    lent = rgb_view(Image.fromarray(want))
    batch = np.zeros((2, 40, 64, 3), np.uint8)  # a padded slot: rows longer than the image
    copy_rgb(batch[1, :37, :53], lent)
    np.testing.assert_array_equal(batch[1, :37, :53], want)
    assert not batch[0].any() and not batch[1, 37:].any() and not batch[1, :, 53:].any()
    copy_rgb(batch[0, :37, :53], want)  # an ordinary array: numpy's assignment
    np.testing.assert_array_equal(batch[0, :37, :53], want)
    odd = np.zeros((37, 53, 4), np.uint8)[:, :, :3]  # 4-byte pixels, not Pillow's: numpy's too
    copy_rgb(batch[0, :37, :53], odd)
    assert not batch[0].any()


def test_the_stager_uploads_lent_pixels_as_their_copies(tmp_path):
    import torch

    from fpncli.run.device.transfer import InputStager

    rng = np.random.default_rng(4)
    arrays = [
        rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((30, 41), (30, 41), (22, 17))
    ]
    lent = [rgb_view(Image.fromarray(a)) for a in arrays]
    stager = InputStager(torch.device("cpu"))
    for images in (lent[:2], lent):  # one shape (stacked), two shapes (zero-padded)
        got = stager.stage(images).numpy()
        for i, a in enumerate(arrays[: len(images)]):
            np.testing.assert_array_equal(got[i, : a.shape[0], : a.shape[1]], a)
        if len(images) == 3:
            assert not got[2, 22:].any() and not got[2, :, 17:].any()
