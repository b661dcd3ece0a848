"""``.npy`` bytes for the model's tensors, without numpy's slow channels-last copy.

The backbone runs channels-last, so a level arrives as a ``(N, C, H, W)`` view whose channels
are the fastest axis. ``np.save`` first makes it C-contiguous with a strided copy that touches a
new 62 MB array per P2 (page faults included); here the copy goes in blocks of rows (each block
of the ``(H*W, C)`` source fits in cache) into a buffer that each writing thread keeps. The file
is byte-for-byte what ``np.save`` writes.
"""

from __future__ import annotations

import io
import threading
from typing import BinaryIO

import numpy as np
from numpy.lib import format as npformat

__all__ = ["npy_header", "write_npy", "npy_bytes"]

_ROWS = 256  # source rows per block: 256 x 256 channels x 4 bytes = 256 KiB, in L2
_local = threading.local()


def npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    """The header ``np.save`` writes for a C-ordered array of ``shape`` and ``dtype``."""
    buffer = io.BytesIO()
    header = {"descr": npformat.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": tuple(int(n) for n in shape)}  # fmt: skip
    try:
        npformat.write_array_header_1_0(buffer, header)
    except ValueError:  # a header over 64 KiB (never for our shapes): version 2.0, as np.save
        buffer = io.BytesIO()
        npformat.write_array_header_2_0(buffer, header)
    return buffer.getvalue()


def _is_channels_last(array: np.ndarray) -> bool:
    return (
        array.ndim == 4
        and not array.flags.c_contiguous
        and array.transpose(0, 2, 3, 1).flags.c_contiguous
    )


def _scratch(nbytes: int) -> np.ndarray:
    """This thread's reusable buffer of at least ``nbytes``."""
    buffer = getattr(_local, "buffer", None)
    if buffer is None or buffer.nbytes < nbytes:
        buffer = _local.buffer = np.empty(nbytes, dtype=np.uint8)
    return buffer


def c_order(array: np.ndarray) -> np.ndarray:
    """``array`` as a C-contiguous array: itself when it already is, a blocked copy into this
    thread's buffer when it is channels-last (valid until this thread's next call), else numpy's
    own copy."""
    if array.flags.c_contiguous:
        return array
    if not _is_channels_last(array):
        return np.ascontiguousarray(array)
    n, c, h, w = array.shape
    out = _scratch(array.nbytes)[: array.nbytes].view(array.dtype).reshape(n, c, h * w)
    for i in range(n):
        source = array[i].transpose(1, 2, 0).reshape(h * w, c)  # a view: C-contiguous
        target = out[i]
        for row in range(0, h * w, _ROWS):
            target[:, row : row + _ROWS] = source[row : row + _ROWS].T
    return out.reshape(n, c, h, w)


def write_npy(f: BinaryIO, array: np.ndarray) -> None:
    """Write ``array`` to ``f`` exactly as ``np.save(f, array, allow_pickle=False)`` does."""
    if array.dtype.hasobject:
        raise ValueError("object arrays cannot be saved without pickle")
    data = c_order(array)
    f.write(npy_header(array.shape, array.dtype))
    if data.size:
        f.write(memoryview(data.reshape(-1)).cast("B"))


def npy_bytes(array: np.ndarray) -> bytes:
    """The ``.npy`` file of ``array`` as bytes."""
    buffer = io.BytesIO()
    write_npy(buffer, array)
    return buffer.getvalue()
