"""``.npy`` files both ways: written from the model's tensors without numpy's slow
channels-last copy, and read back safely (``read_npy``, ``npy_from_bytes``).

The backbone runs channels-last, so a level arrives as a ``(N, C, H, W)`` view whose channels
are the fastest axis. ``np.save`` first makes it C-contiguous with a strided copy that touches a
new 62 MB array per P2 (page faults included); here the copy goes in blocks of rows (each block
of the ``(H*W, C)`` source fits in cache) into a buffer that each writing thread keeps. The file
is byte-for-byte what ``np.save`` writes.

Reading refuses what ``np.load`` would take on trust: pickled objects, anything but a float
array, and a header that declares more data than the file or bytes hold (before anything is
allocated); a FIFO is never waited on.
"""

from __future__ import annotations

import io
import math
import os
import threading
from pathlib import Path
from typing import BinaryIO

import numpy as np
from numpy.lib import format as npformat

from .guard import open_regular

__all__ = ["npy_header", "write_npy", "npy_bytes", "read_npy", "npy_from_bytes"]

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


def read_npy(path: str | Path, *, mmap: bool = False) -> np.ndarray:
    """Read a ``.npy`` file safely: a regular file only (never blocks on a FIFO), no pickled
    objects, and a header whose declared size the file really holds (a forged header claiming
    ``(1, 256, 10**6, 10**6)`` is refused before anything is allocated).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a regular file, not a ``.npy``, or a header the file does not back.
    """
    with open_regular(path, ".npy file") as f:
        shape, fortran, dtype = _checked_header(f, os.fstat(f.fileno()).st_size, str(path), "file")
        order, offset = ("F" if fortran else "C"), f.tell()
        if not mmap:  # the data after the header already read (numpy's loaders parse it again)
            return np.fromfile(f, dtype=dtype, count=math.prod(shape)).reshape(shape, order=order)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order=order)


def npy_from_bytes(data: bytes, name: str = ".npy member") -> np.ndarray:
    """A ``.npy`` held in memory (a tar member) as a read-only array over ``data``, with the
    checks ``read_npy`` makes: no pickled objects, and a header the bytes really back.

    Raises:
        ValueError: not a ``.npy``, or a header declaring more than the bytes hold.
    """
    import io

    f = io.BytesIO(data)
    shape, fortran, dtype = _checked_header(f, len(data), name, "member")
    array = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=f.tell())
    return array.reshape(shape, order="F" if fortran else "C")


#: numpy parses a header with ``ast.literal_eval``, which CPython 3.11 does not make safe to run
#: in several threads at once (the report's and diff's threads read levels together): seen here
#: as "SystemError: AST constructor recursion depth mismatch" (python/cpython#106905).
_HEADER_LOCK = threading.Lock()


def _checked_header(f, size: int, name: str, holder: str) -> tuple[tuple, bool, np.dtype]:
    """Read the ``.npy`` header of ``f`` (``size`` bytes in all), leaving ``f`` at the data;
    refuse pickled objects, anything but a float array (a level is float16/32/64: a structured,
    complex or integer array is not one), negative sizes and a header declaring more data
    than ``size`` holds, before anything is allocated."""
    try:
        with _HEADER_LOCK:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    except (ValueError, OSError, SyntaxError, TypeError) as e:
        raise ValueError(f"{name}: not a readable .npy file ({e})") from None
    if dtype.hasobject:
        raise ValueError(f"{name}: holds Python objects, not numbers: refused")
    if dtype.kind != "f":  # a structured or sub-array dtype is kind "V"
        raise ValueError(f"{name}: holds a {dtype} array, not a float level: re-extract")
    if any(n < 0 for n in shape):
        raise ValueError(f"{name}: its header declares a negative size {shape}: forged")
    declared, held = math.prod(shape) * dtype.itemsize, size - f.tell()
    if declared > held:
        raise ValueError(
            f"{name}: its header declares a {shape} {dtype} array ({declared / 1e9:.3g} GB) "
            f"but the {holder} holds {held} bytes of data: truncated or forged"
        )
    return shape, fortran, dtype
