"""Opening an image file with Pillow, safely: a regular file only, only the formats Pillow decodes
itself (none it renders by running another program), and never more pixels than the run allows,
checked from the header before anything is decoded (``open_image``). Pillow's process-wide bomb
limit is raised for the loads in progress that need it, and its warnings are kept off stderr in
the loading threads only (``_pillow_settings``); both are given back after.
"""

from __future__ import annotations

import contextlib
import functools
import operator
import os
import re
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

from PIL import Image, ImageFile

from .guard import open_regular
from .option_names import CLI_NAMES, OptionNames

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "check_max_pixels",
    "pixel_count",
    "pillow_extensions",
    "pillow_formats",
    "open_image",
]

#: Images with more pixels than this are refused before decoding (Pillow's own default limit).
DEFAULT_MAX_PIXELS = 89_478_485


def check_max_pixels(max_pixels: int | None, names: OptionNames = CLI_NAMES) -> int | None:
    """``max_pixels`` checked: a positive whole number (a numpy integer too) as an ``int``, or
    None, no limit (no image is refused for its size, before decoding or once resized, and
    Pillow's own bomb check is off while it loads). The messages name it as ``names`` says.

    Raises:
        TypeError: neither a whole number nor None (a float, a str, a bool).
        ValueError: 0 or less.
    """
    if max_pixels is None:
        return None
    if isinstance(max_pixels, bool) or not hasattr(type(max_pixels), "__index__"):
        raise TypeError(
            f"{names.max_pixels} must be a whole number of pixels, or None for no limit, got "
            f"{type(max_pixels).__name__}"
        )
    value = operator.index(max_pixels)
    if value < 1:
        raise ValueError(f"{names.max_pixels} must be at least 1 (None: no limit), got {value}")
    return value


def pixel_count(pixels: float) -> str:
    """A number of pixels for a message: ``89 MP``, ``1.5 MP``, ``60,000 pixels`` (not 0 MP)."""
    if pixels >= 10e6:
        return f"{pixels / 1e6:.0f} MP"
    if pixels >= 1e6:
        return f"{pixels / 1e6:.1f} MP"
    return f"{pixels:,.0f} pixels"


_limit_lock = threading.Lock()
_loads: list[_Load] = []  # the loads in progress (all threads), told apart by identity
_raised: list[int | None] = []  # while fpncli raised Pillow's limit: its value before, fpncli's
_added: list[list] = []  # the filter lists fpncli's warning filter went into (``_quiet``)
_loading = threading.local()  # .loads: the loads in progress in this thread


class _Load:
    """One load in progress and its ``max_pixels`` (None: no limit): an object of its own, so
    that its end takes out its entry and no other (two loads may share a value), and can tell
    whether its entry was made at all."""

    __slots__ = ("max_pixels",)

    def __init__(self, max_pixels: int | None) -> None:
        self.max_pixels = max_pixels


def _thread_loads() -> list[_Load]:
    """The loads in progress in this thread (``_loading.loads``, made on first use)."""
    loads = getattr(_loading, "loads", None)
    if loads is None:
        loads = _loading.loads = []
    return loads


class _InALoad(type):
    """``issubclass(category, _PillowLoadWarning)``, as the warning filters ask it: true only in
    a thread inside a load, for the categories it quiets."""

    def __subclasscheck__(cls, category: type) -> bool:
        return bool(getattr(_loading, "loads", None)) and issubclass(category, cls.quieted)


class _PillowLoadWarning(Warning, metaclass=_InALoad):
    """The category of fpncli's warning filter: Pillow's bomb warning (fpncli refuses such an
    image itself) and the UserWarnings its plugins raise about a file ("Corrupt EXIF data"),
    matched only in a thread inside a load, so that the same warnings of any other thread (a
    user's own Pillow code) are filtered as if the entry were not there."""

    quieted = (Image.DecompressionBombWarning, UserWarning)


#: fpncli's one warning filter entry, as ``warnings.filterwarnings`` makes one: Pillow's own
#: modules' warnings (they warn with the default stacklevel), in a thread inside a load
_QUIET = ("ignore", None, _PillowLoadWarning, re.compile(r"PIL\."), 0)


@contextlib.contextmanager
def _pillow_settings(max_pixels: int | None) -> Iterator[None]:
    """Pillow's process-wide settings while fpncli loads images: its bomb limit
    (``Image.MAX_IMAGE_PIXELS``, which it warns above and refuses at twice; it has no per-call
    limit, and checks it again while decoding some formats) raised to ``max_pixels`` (None: off)
    where it is lower, so ``--max-pixels`` can be raised past it (fpncli refuses more than
    ``max_pixels`` itself), and its bomb and EXIF warnings kept off stderr by one filter entry
    that matches only in the loading threads (``_PillowLoadWarning``). The first load in
    progress adds the entry and the last one takes it out again, and the limit is put back once
    no load needs it raised, if it still holds fpncli's value: a filter or a limit that anyone
    sets meanwhile, in any thread, stays.

    Every change is made inside the ``try`` whose ``finally`` undoes it, and is recorded before
    it is made, so that whatever stops the load at any point (an error, a Ctrl-C: a
    KeyboardInterrupt lands between any two statements) leaves neither Pillow's limit raised
    nor fpncli's filter entry nor this load counted for the loads after it; the undoing is
    idempotent, and is done again if a second interrupt lands inside it."""
    load = _Load(max_pixels)
    try:
        with _limit_lock:
            if not _loads:
                _quiet()
            _loads.append(load)
            _set_pillow_limit()
        _thread_loads().append(load)
        yield
    finally:
        try:
            _end(load)
        except BaseException:  # interrupted while undoing: the rest undone before it is raised
            _end(load)
            raise


def _end(load: _Load) -> None:
    """``load``'s settings gone, whichever of them were made; doing it again changes nothing."""
    with _limit_lock:
        _leave(load)
    thread_loads = _thread_loads()
    if load in thread_loads:
        thread_loads.remove(load)


def _quiet() -> None:
    """Put fpncli's filter entry first in the warning filters (``_limit_lock`` held); the list
    is recorded first, so that ``_leave`` finds the entry wherever this stops."""
    filters = warnings.filters
    _added.append(filters)
    filters.insert(0, _QUIET)


def _leave(load: _Load) -> None:
    """``load``'s settings gone (``_limit_lock`` held): Pillow's limit follows the loads left,
    and once none is left, the limit is given back and fpncli's filter entry taken out: of the
    lists it went into and of the process's list now (a user's ``catch_warnings`` may have
    copied it). ``load`` need not have been counted (its start was stopped before)."""
    if load in _loads:
        _loads.remove(load)
    if _loads:
        _set_pillow_limit()
        return
    _give_back_limit()
    for filters in {id(f): f for f in [*_added, warnings.filters]}.values():
        found = [i for i, entry in enumerate(filters) if entry is _QUIET]
        for i in reversed(found):
            del filters[i]
    _added.clear()


def _set_pillow_limit() -> None:
    """Pillow's limit raised to the largest ``max_pixels`` in progress (off for a load without
    one) where it is lower; never lowered. The value fpncli finds there, unless it is one that
    fpncli set, is the user's (set meanwhile, in any thread), and the one given back. A value
    is recorded as fpncli's before it is set, and the one it replaces is forgotten only after,
    so that the limit is given back wherever this stops."""
    holds_ours = bool(_raised) and Image.MAX_IMAGE_PIXELS in _raised[1:]
    before = _raised[0] if holds_ours else Image.MAX_IMAGE_PIXELS  # None: Pillow's check is off
    limits = [load.max_pixels for load in _loads]
    wanted = None if before is None or None in limits else max([before, *limits])
    if wanted == before:  # nothing to raise
        _give_back_limit()
        return
    if holds_ours:
        _raised.append(wanted)
    else:
        _raised[:] = [before, wanted]
    Image.MAX_IMAGE_PIXELS = wanted
    del _raised[1:-1]


def _give_back_limit() -> None:
    """Pillow's limit as it was before fpncli raised it, unless someone set it since."""
    if _raised and Image.MAX_IMAGE_PIXELS in _raised[1:]:
        Image.MAX_IMAGE_PIXELS = _raised[0]
    _raised.clear()


#: Pillow formats never opened: vector formats Pillow renders by running another program on the
#: file (EPS: Ghostscript; WMF: the system's renderer), whatever the file's name says.
_UNSAFE_FORMATS = frozenset({"EPS", "WMF"})


@functools.cache
def pillow_formats() -> tuple[str, ...]:
    """The Pillow formats fpncli opens: every decoder Pillow has but ``_UNSAFE_FORMATS``."""
    Image.init()
    return tuple(f for f in Image.OPEN if f not in _UNSAFE_FORMATS)


#: Pillow formats it names files of but does not decode: MPEG (it reads the header only); the
#: stubs (``ImageFile.StubImageFile``: BUFR, GRIB, HDF5) are told by their class.
_UNDECODED_FORMATS = frozenset({"MPEG"})


@functools.cache
def pillow_extensions() -> frozenset[str]:
    """The file extensions (``.jpg``, lower case) of the formats fpncli opens (``pillow_formats``)
    that Pillow decodes itself: what a folder walk takes, so that it takes whatever fpncli reads
    when the file is named (``.avif``, ``.tga``, ``.jp2``, ``.qoi``...), from Pillow's own
    table (``Image.registered_extensions``), without opening a file."""
    formats = {
        name for name in pillow_formats() if name not in _UNDECODED_FORMATS
        and not (isinstance(factory := Image.OPEN[name][0], type)
                 and issubclass(factory, ImageFile.StubImageFile))
    }  # fmt: skip
    return frozenset(ext for ext, name in Image.registered_extensions().items() if name in formats)


@contextlib.contextmanager
def open_image(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS, *,
               names: OptionNames = CLI_NAMES) -> Iterator[Image.Image]:  # fmt: skip
    """``Image.open`` of a regular file only (a FIFO is refused, not waited for), with Pillow's
    limit following ``max_pixels`` (``check_max_pixels``; None: no limit) and its warnings
    (bomb, EXIF) kept off stderr; more than ``max_pixels`` pixels is refused from the header
    (the message names the limit as ``names`` says); an empty file is said to be one (Pillow
    would call it not an image). Raises as ``load_image``, and ``Image.DecompressionBombError``
    / ``UnidentifiedImageError`` / ``OSError`` as Pillow does."""
    max_pixels = check_max_pixels(max_pixels, names)
    with _pillow_settings(max_pixels), open_regular(path, "image file") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise ValueError(f"{path}: empty file (0 bytes)")
        with Image.open(f, formats=pillow_formats()) as im:
            width, height = im.size
            if max_pixels is not None and width * height > max_pixels:
                raise ValueError(
                    f"{path}: {width}x{height} is {pixel_count(width * height)}, over the "
                    f"{pixel_count(max_pixels)} limit (a decompression bomb?); raise "
                    f"{names.max_pixels} if you trust this file"
                )
            yield im
