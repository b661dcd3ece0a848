"""Opening an image file with Pillow, safely: a regular file only, only the formats Pillow decodes
itself (none it renders by running another program), and never more pixels than the run allows,
checked from the header before anything is decoded (``open_image``). Pillow's process-wide bomb
limit and warnings follow the loads in progress (``_pillow_settings``) and are given back after.
"""

from __future__ import annotations

import contextlib
import functools
import operator
import os
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
_limits: list[int | None] = []  # max_pixels of the loads in progress (threads; None: none)
_pillow_limit: list[int | None] = []  # Pillow's own limit, as it was before them
_quiet: list[warnings.catch_warnings] = []  # the warning filters, as they were before them


@contextlib.contextmanager
def _pillow_settings(max_pixels: int | None) -> Iterator[None]:
    """Pillow's process-wide settings while fpncli loads images: its bomb limit
    (``Image.MAX_IMAGE_PIXELS``, which it warns above and refuses at twice) raised to
    ``max_pixels`` (None: off), so ``--max-pixels`` can be raised past it (fpncli refuses more
    than ``max_pixels`` itself), and its bomb and EXIF warnings kept off stderr. The first load
    in progress sets them and the last one restores them, so nothing is changed for anyone else
    for good: a ``catch_warnings`` per load in decoding threads could leave another thread's
    "ignore" filters on for good (a thread entering while another is inside saves that one's
    filters). Whatever fails while they are set is undone before it is raised."""
    with _limit_lock:
        first = not _limits
        if first:
            _pillow_limit[:] = [Image.MAX_IMAGE_PIXELS]
            quiet = warnings.catch_warnings()
            quiet.__enter__()
            _quiet[:] = [quiet]
        _limits.append(max_pixels)
        try:
            if first:
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                warnings.simplefilter("ignore", UserWarning)  # e.g. "Corrupt EXIF data"
            _set_pillow_limit()
        except BaseException:  # this load never starts: as if it had not come
            _leave(max_pixels)
            raise
    try:
        yield
    finally:
        with _limit_lock:
            _leave(max_pixels)


def _leave(max_pixels: int | None) -> None:
    """One load's settings gone (``_limit_lock`` held): Pillow's limit follows those left, and
    the last one puts back the limit and the warning filters from before the first."""
    _limits.remove(max_pixels)
    if _limits:
        _set_pillow_limit()
    else:
        Image.MAX_IMAGE_PIXELS = _pillow_limit[0]
        _quiet.pop().__exit__(None, None, None)


def _set_pillow_limit() -> None:
    before = _pillow_limit[0]  # None: Pillow's check is off, fpncli's is enough
    off = before is None or None in _limits  # a load without a limit
    Image.MAX_IMAGE_PIXELS = None if off else max([before, *_limits])


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
