"""The .npy writer: byte-for-byte what np.save writes, for every layout the pipeline hands it."""

import io

import numpy as np
import pytest
import torch

from fpncli.io.npy import c_order, npy_bytes


def _saved(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(1, 256, 13, 21), (2, 8, 300, 7), (1, 3, 1, 1), (1, 5, 0, 4)])
def test_channels_last_levels_equal_np_save(shape, dtype):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    level = x.contiguous(memory_format=torch.channels_last).numpy()
    assert np.array_equal(c_order(level), x.numpy())
    assert npy_bytes(level) == _saved(x.numpy())
    assert np.array_equal(np.load(io.BytesIO(npy_bytes(level))), x.numpy())


def test_one_image_of_a_channels_last_batch():
    x = torch.randn(3, 16, 40, 50).contiguous(memory_format=torch.channels_last)
    one = x[1:2].numpy()  # what a batch's result hands the writer for image 1
    assert npy_bytes(one) == _saved(np.ascontiguousarray(one))


@pytest.mark.parametrize(
    "array",
    [
        np.arange(24, dtype=np.float32).reshape(2, 3, 4),  # C-contiguous
        np.asfortranarray(np.arange(24, dtype=np.float32).reshape(2, 3, 4)),  # Fortran
        np.arange(48, dtype=np.float16).reshape(1, 4, 3, 4)[:, ::2],  # strided
    ],
)
def test_other_layouts_equal_np_save(array):
    assert npy_bytes(array) == _saved(np.ascontiguousarray(array))


def test_the_thread_buffer_is_reused_and_results_stay_right():
    big = torch.randn(1, 32, 60, 70).contiguous(memory_format=torch.channels_last)
    small = torch.randn(1, 32, 10, 11).contiguous(memory_format=torch.channels_last)
    first = c_order(big.numpy())
    base = first.base
    assert np.array_equal(first, big.numpy())
    second = c_order(small.numpy())
    assert np.array_equal(second, small.numpy())
    assert second.base is not None and np.shares_memory(second, base)  # no new allocation


def test_object_arrays_are_refused():
    with pytest.raises(ValueError):
        npy_bytes(np.array([object()], dtype=object))
