"""Unpickling a Detectron2 ``.pkl`` without trusting it: data in, never code, never unbounded
memory.

An unpickler that rebuilds numpy arrays and plain containers and nothing else, each array from
its data in the file: the arrays and byte strings it builds may hold at most twice the file's
size in all (a byte string pickled at protocol 2 is built from its text, then copied into its
array), and one that would go past that is refused before it is allocated, whether declared by a
shape or shared by many arrays through the pickle's memo; a pickle of more than a million
opcodes (a checkpoint has a few dozen an array, and each can build a small object no byte count
sees) is refused before anything is built. ``safeload`` opens the other formats.
"""

from __future__ import annotations

import collections
import functools
import importlib
import math
import os
import pickle
import pickletools
import re
from pathlib import Path

import numpy as np

from ..io.guard import open_regular

__all__ = ["UnsafeCheckpointError", "safe_unpickle"]

_LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # the first pickle of a pre-zip torch.save file


#: The most opcodes a .pkl may hold. A Detectron2 checkpoint has a few dozen an array (about
#: 17,000 in all for the X101-32x8d one, the largest, at protocol 2), but every opcode can build
#: an object of up to a few hundred bytes that no byte budget sees (an empty dict, set or array:
#: 4 M empty arrays in 20 MB took 2.3 GB, 20 M empty dicts 1.9 GB); this many take at most a
#: few hundred MB, and are 60 times the X101 file's.
_MAX_OPCODES = 1 << 20
#: An argument's length prefix (bytes, signed) by pickletools' argument kind.
_LENGTH_PREFIX = {
    pickletools.TAKEN_FROM_ARGUMENT1: (1, False),
    pickletools.TAKEN_FROM_ARGUMENT4: (4, True),
    pickletools.TAKEN_FROM_ARGUMENT4U: (4, False),
    pickletools.TAKEN_FROM_ARGUMENT8U: (8, False),
}


class UnsafeCheckpointError(ValueError):
    """A weights file asked to run code or build objects other than arrays and containers."""


# (module, name) pairs a numpy-array pickle legitimately needs; everything else is refused.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # how Python 3 pickles bytes at protocol 2
    ("__builtin__", "bytes"),  # ... and empty bytes (a zero-element array's data): bytes()
    ("builtins", "bytes"),
}


class _Budget:
    """The bytes a file's arrays and byte strings may still take, charged before each is built."""

    def __init__(self, file_size: int) -> None:
        self.file_size = file_size
        self.left = 2 * file_size

    def take(self, nbytes: int, what: str) -> None:
        if nbytes > self.left:
            more = (
                "is larger than the file" if nbytes > self.file_size else
                "would take the data built from the file past twice its size (one object in the "
                "pickle's memo used again and again?)"
            )  # fmt: skip
            raise UnsafeCheckpointError(
                f"{what} {more}: refused (the arrays of a weights file hold the data it stores)"
            )
        self.left -= nbytes


def _array_bytes(shape: object, dtype: np.dtype, what: str) -> int:
    """``prod(shape) * itemsize``, without allocating; a shape that is not a tuple of sizes is
    refused."""
    dims = shape if isinstance(shape, tuple) else (shape,)
    if not all(type(d) is int and d >= 0 for d in dims):
        raise UnsafeCheckpointError(f"{what} declares the shape {shape!r:.60}: not an array's")
    return math.prod(dims) * dtype.itemsize


#: A numpy type code as numpy pickles a dtype (``dtype("f4", False, True)``) and _reconstruct
#: (``b"b"``): a string of fields ("u1,u1,...") would build a dtype of thousands on every call.
_TYPE_CODE = re.compile(r"[<>|=]?[A-Za-z?][A-Za-z0-9]{0,15}")


def _plain_dtype(dtype: np.dtype, where: str = "") -> np.dtype:
    """``dtype``, refused unless its elements are plain values: objects would be pointers read
    from the file, and fields or a subarray declare elements its itemsize need not hold (a 208
    byte file's dtype of 16 bytes declared 200 M objects: 1.5 GB)."""
    why = (
        "objects" if dtype.hasobject or dtype.kind == "O" else
        "fields" if dtype.fields is not None else
        "a subarray" if dtype.subdtype is not None else None
    )  # fmt: skip
    if why is not None:
        raise UnsafeCheckpointError(
            f"refusing {dtype!r:.60}{where}: it holds {why}; a weights file holds arrays of plain "
            "numbers"
        )
    return dtype


def _dtype_of(given: object, where: str) -> np.dtype:
    """The dtype ``given`` to an array or a scalar: one the pickle made (``_PickledDtype``), or a
    type code (as numpy's ``_reconstruct(ndarray, (0,), b"b")``)."""
    if isinstance(given, _PickledDtype):
        return given.take()
    code = given.decode("latin-1") if type(given) is bytes else given
    if type(code) is not str or not _TYPE_CODE.fullmatch(code):
        raise UnsafeCheckpointError(
            f"refusing the dtype {given!r:.40}{where}: not a numpy type code"
        )
    return _plain_dtype(np.dtype(code), where)


class _PickledDtype:
    """What ``numpy.dtype(code, align, copy)`` unpickles as, until an array or scalar takes it.
    A pickle sets a dtype's layout (subarray, fields, itemsize, flags) by its state after making
    it, and could set it again once an array has it (an array of 32 bytes then read 16 KB, or
    objects at addresses from the file); numpy's dtype cannot be subclassed, so it is kept
    here, refused when its state makes it anything but plain, and given to arrays only once
    nothing can change it."""

    __slots__ = ("_dtype", "_taken")

    def __init__(self, code: object, align: object = False, copy: object = False) -> None:
        flags_ok = all(type(f) in (bool, int) and f in (0, 1) for f in (align, copy))
        if type(code) is not str or not _TYPE_CODE.fullmatch(code) or not flags_ok:
            raise UnsafeCheckpointError(
                f"refusing numpy.dtype{(code, align, copy)!r:.60}: numpy pickles a dtype as "
                "dtype(type code, False, True)"
            )
        self._dtype = _plain_dtype(np.dtype(code, bool(align), True))  # copy: its own
        self._taken = False

    def __setstate__(self, state) -> None:
        if self._taken:
            raise UnsafeCheckpointError(
                "refusing to change a numpy dtype an array or scalar already has: numpy pickles "
                "a dtype's state once, as it is made"
            )
        # (version, byte order, subarray, names, fields, itemsize, alignment, flags[, metadata])
        if type(state) is tuple and len(state) > 4 and any(x is not None for x in state[2:5]):
            raise UnsafeCheckpointError(
                "refusing a numpy dtype whose state gives it a subarray or fields: a weights "
                "file holds arrays of plain numbers"
            )
        self._dtype.__setstate__(state)
        _plain_dtype(self._dtype)

    def take(self) -> np.dtype:
        self._taken = True
        return self._dtype


class _PickledArray(np.ndarray):
    """What a pickled array is rebuilt as: numpy's ``__setstate__`` (which copies the data when it
    is text, as protocol 2 stores it, or short) charged to the file's budget first, so one string
    shared by many arrays through the pickle's memo cannot be copied once per array."""

    def __setstate__(self, state) -> None:
        # numpy's own form; numpy takes a list too, which went to it uncharged
        if type(state) is not tuple or len(state) not in (4, 5):
            given = type(state).__name__ + (f" of {len(state)}" if type(state) is tuple else "")
            raise UnsafeCheckpointError(
                f"refusing an array state given as a {given}: numpy pickles an array's as a tuple "
                "((version,) shape, dtype, is_fortran, data)"
            )
        shape = state[-4]
        dtype = _dtype_of(state[-3], f" of an array of shape {shape!r:.60}")
        what = f"an array of shape {shape!r:.60} ({dtype!s:.20})"
        self._budget.take(_array_bytes(shape, dtype, what), what)
        super().__setstate__((*state[:-3], dtype, *state[-2:]))


def _no_state(state) -> None:
    """The ``__setstate__`` of what stands for a global: a pickle's BUILD on it is refused."""
    raise UnsafeCheckpointError(
        "refusing to give a function a state: a pickle of arrays gives states to the arrays and "
        "dtypes it makes"
    )


class _NdarrayName:
    """What ``numpy.ndarray`` unpickles as: numpy's own pickles name it only as the type given to
    ``_reconstruct`` (which then sets the shape from the data); called, ``ndarray(shape, dtype)``
    would allocate whatever shape a few bytes declare."""

    def __new__(cls, *args, **kwargs):
        raise UnsafeCheckpointError(
            "refusing to call numpy.ndarray: a weights file's arrays are rebuilt from the data "
            "it stores (numpy's _reconstruct), never allocated by a declared shape"
        )

    __setstate__ = staticmethod(_no_state)  # BUILD on the class would set its attributes


class _Global:
    """What a global the pickle names stands for: ``call`` (numpy's function behind its checks),
    which the pickle cannot change. A pickle can give any object it holds a state (BUILD): a
    functools.partial's is what it calls (the checked _codecs.encode became OrderedDict over a
    list in the memo: 2.2 GB from 0.7 MB), a function's its attributes."""

    __slots__ = ("_call",)

    def __init__(self, call) -> None:
        self._call = call

    def __call__(self, *args, **kwargs):
        return self._call(*args, **kwargs)

    __setstate__ = staticmethod(_no_state)


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, file, *, file_size: int, **kwargs) -> None:
        super().__init__(file, **kwargs)
        self.budget = _Budget(file_size)

    def find_class(self, module: str, name: str):
        if (module, name) not in _SAFE_GLOBALS:
            raise UnsafeCheckpointError(
                f"refusing to load {module}.{name}: a weights file may only contain numpy arrays "
                "and plain containers"
            )
        if (module, name) == ("numpy", "ndarray"):
            return _NdarrayName
        return _Global(self._checked(module, name))

    def _checked(self, module: str, name: str):
        """The function behind the global ``module.name``, with its checks."""
        if name == "bytes":
            return _empty_bytes
        if name == "dtype":
            return _PickledDtype
        if name == "OrderedDict":
            return functools.partial(_ordered_dict_checked, self.budget)
        if module.startswith("numpy.core") and hasattr(np, "_core"):
            module = "numpy._core" + module[len("numpy.core") :]  # numpy 2 moved numpy.core
        found = getattr(importlib.import_module(module), name)
        checked = {"_reconstruct": _reconstruct_checked, "scalar": _scalar_checked,
                   "_frombuffer": _frombuffer_checked, "encode": _encode_checked}  # fmt: skip
        return functools.partial(checked[name], found, self.budget)

    def persistent_load(self, pid):
        raise UnsafeCheckpointError("refusing a pickle with persistent ids: not a .pkl of arrays")


def _reconstruct_checked(reconstruct, budget: _Budget, subtype, shape, dtype):
    """``numpy.core.multiarray._reconstruct`` as numpy's pickles call it (``subtype`` is
    ``numpy.ndarray``), refusing a shape the file cannot hold: it allocates ``shape`` before
    ``__setstate__`` gives it the data."""
    if subtype is not _NdarrayName:
        raise UnsafeCheckpointError(
            f"refusing numpy's _reconstruct of {getattr(subtype, '__name__', subtype)!s:.40}: "
            "numpy's pickles rebuild a numpy.ndarray"
        )
    what = f"an array declared with shape {shape!r:.60}"
    dtype = _dtype_of(dtype, f" of {what}")
    budget.take(_array_bytes(shape, dtype, what), what)
    array = reconstruct(_PickledArray, shape, dtype)
    array._budget = budget
    return array


def _scalar_checked(scalar, budget: _Budget, dtype, data=None):
    """``numpy.core.multiarray.scalar`` as numpy pickles a number (``scalar(dtype("f8"), its
    bytes)``, as a checkpoint's iteration or learning rate may be): a bool, int or float only,
    made from its own bytes, each charged (a dtype of 1 MB called on one string in the memo
    again and again took 2.2 GB from 1 MB)."""
    dtype = _dtype_of(dtype, " of a numpy scalar")
    if dtype.kind not in "biuf" or dtype.itemsize > 16 or type(data) not in (bytes, str) \
            or len(data) != dtype.itemsize:  # fmt: skip
        raise UnsafeCheckpointError(
            f"refusing a numpy scalar of dtype {dtype!s:.40} from a {type(data).__name__}: a "
            "checkpoint's numbers are bools, integers and floats, pickled as their bytes"
        )
    budget.take(dtype.itemsize, f"a numpy scalar ({dtype})")
    return scalar(dtype, data)


def _frombuffer_checked(frombuffer, budget: _Budget, buf, dtype, shape, order, *axis_order):
    """numpy's ``_frombuffer`` as its protocol-5 pickles call it (a view of bytes the file
    stores), its dtype checked as an array's, and a _PickledArray: a state given to it later is
    charged (numpy's ndarray took one uncharged, copying one string in the memo into each)."""
    dtype = _dtype_of(dtype, f" of an array of shape {shape!r:.60}")
    array = frombuffer(buf, dtype, shape, order, *axis_order).view(_PickledArray)
    array._budget = budget
    return array


#: What CPython takes for an OrderedDict's item (its entry, index and link: about 105 bytes).
_ITEM_BYTES = 128


def _ordered_dict_checked(budget: _Budget, items=()) -> collections.OrderedDict:
    """``collections.OrderedDict`` as pickles call it: with no items (Python 3's, which then
    sets them one by one) or their list (Python 2's), each item charged (one list in the memo
    made into 300 dicts took 2.2 GB from 0.7 MB)."""
    if type(items) not in (list, tuple):
        raise UnsafeCheckpointError(
            f"refusing an OrderedDict of a {type(items).__name__}: a pickle gives it a list of "
            "items, or none"
        )
    budget.take(len(items) * _ITEM_BYTES, f"an OrderedDict of {len(items)} items")
    return collections.OrderedDict(items)


def _encode_checked(encode, budget: _Budget, text, encoding="utf-8", errors="strict") -> bytes:
    """``_codecs.encode`` as Python's protocol-2 pickles call it for bytes: ``(str, "latin1")``,
    each call charged (one string in the pickle's memo could be encoded again and again)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafeCheckpointError(
            f"refusing _codecs.encode of a {type(text).__name__} to {encoding!r:.20}: a pickle "
            "stores bytes as latin-1 text"
        )
    budget.take(len(text), f"a byte string of {len(text)} bytes")
    return encode(text, encoding, errors)


def _check_opcodes(f, size: int) -> None:
    """Read the pickle in ``f`` (of ``size`` bytes) opcode by opcode, building nothing (its data
    skipped), and refuse one of more than ``_MAX_OPCODES`` opcodes, or that stores an object in
    its memo at an index past the objects stored so far (the unpickler sizes its memo by the
    index: 9 bytes could ask for 32 GB; picklers number them in turn). ``f`` is left where it
    began.

    Raises:
        UnsafeCheckpointError: too many opcodes, or a memo index out of turn.
        pickle.UnpicklingError, ValueError: not a pickle (cut short, an unknown opcode, a data
            length past the file's end).
    """
    start, stored = f.tell(), 0
    for _ in range(_MAX_OPCODES):
        code = f.read(1)
        op = pickletools.code2op.get(code.decode("latin-1")) if code else None
        if op is None:
            raise pickle.UnpicklingError(
                f"invalid load key, {code.decode('latin-1')!r}" if code else "pickle data was "
                "truncated"
            )  # fmt: skip
        if op.arg is not None and op.arg.n in _LENGTH_PREFIX:  # data: skipped
            width, signed = _LENGTH_PREFIX[op.arg.n]
            prefix = f.read(width)
            length = int.from_bytes(prefix, "little", signed=signed)
            if len(prefix) < width or not 0 <= length <= size - f.tell():
                raise pickle.UnpicklingError(f"{op.name} data past the end: truncated")
            f.seek(length, os.SEEK_CUR)
            continue
        arg = op.arg.reader(f) if op.arg is not None else None  # a few bytes, or a line
        if op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            if arg > stored:
                raise UnsafeCheckpointError(
                    f"refusing a pickle memo index {arg} past the {stored} objects stored: "
                    "picklers number them in turn (the unpickler would size its memo by it)"
                )
            stored += 1
        elif op.name == "MEMOIZE":
            stored += 1
        elif op.name == "FRAME" and arg > size - f.tell():  # read whole, allocated first
            raise pickle.UnpicklingError("a frame past the end: truncated")
        elif op.name == "STOP":
            f.seek(start)
            return
    raise UnsafeCheckpointError(
        f"refusing a pickle of more than {_MAX_OPCODES} opcodes: a checkpoint has a few dozen "
        "an array (millions of small objects take far more memory than the file)"
    )


def _empty_bytes(*args, **kwargs) -> bytes:
    """``bytes`` as Python's protocol-2 pickles call it: with no arguments, for empty bytes (any
    other is ``_codecs.encode``); ``bytes(n)`` would allocate whatever size a few bytes say."""
    if args or kwargs:
        raise UnsafeCheckpointError(
            "refusing bytes() called with arguments: a pickle calls it with none, for empty bytes"
        )
    return b""


def safe_unpickle(path: Path) -> object:
    """Unpickle ``path`` allowing only numpy arrays, scalars and plain containers, the arrays and
    byte strings together no larger than twice the file (arrays come back as an ``ndarray``
    subclass; ``np.asarray`` gives a plain view)."""
    with open_regular(path, "weights file") as f:
        size = os.fstat(f.fileno()).st_size
        try:
            _check_opcodes(f, size)
            obj = _SafeUnpickler(f, file_size=size, encoding="latin1").load()
        except UnsafeCheckpointError as e:  # the file named, as every other refusal does
            raise UnsafeCheckpointError(f"{path}: {e}") from None
        except MemoryError:
            raise ValueError(f"{path}: declares more data than fits in memory: refused") from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
                IndexError, KeyError, OverflowError) as e:  # fmt: skip
            kind = ".pkl" if Path(path).suffix == ".pkl" else Path(path).suffix or "weights"
            what = "a zip archive (torch.save) nor a pickle of arrays"
            raise ValueError(
                f"{path}: not a readable {kind} checkpoint: neither {what} ({e}); a truncated "
                "or damaged file?"
            ) from None
    if type(obj) is int and obj == _LEGACY_TORCH_MAGIC:
        raise ValueError(
            f"{path}: unsupported format: a legacy (non-zip, before torch 1.6) torch.save file; "
            "re-save it with a current torch (torch.save(torch.load(f, weights_only=True), f))"
        )
    return obj
