"""Reading an image and preparing it exactly as Detectron2's DefaultPredictor does.

1. Read with Pillow, apply the EXIF orientation, make it 8-bit RGB (``load_image``).
2. Put the channels in the order the weights expect: an explicit RGB -> BGR step for Detectron2
   weights, none for torchvision's (``to_color_order``).
3. Resize the shortest edge to 800 with the longest capped at 1333, with Pillow bilinear on uint8
   (``detectron2/data/transforms/transform.py: ResizeShortestEdge`` and ``ResizeTransform``).
4. ``(x - pixel_mean) / pixel_std`` in float32, then zero padding right/bottom to a multiple of 32
   (``detectron2/structures/image_list.py: ImageList.from_tensors``).

Numpy and Pillow only, so it runs in worker processes without torch. The pipeline stops after
step 3 (``resize_for_model``) and does 2 and 4 in torch on the model's device.
"""

from __future__ import annotations

import contextlib
import functools
import math
import operator
import os
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..weights.registry import InputFormat
from .canvas import canvas_for
from .guard import is_out_of_open_files, open_regular
from .option_names import API_NAMES, CLI_NAMES, OptionNames
from .pillow_view import rgb_view

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "check_max_pixels",
    "OptionNames",
    "CLI_NAMES",
    "API_NAMES",
    "LoadedImage",
    "open_image",
    "to_rgb8",
    "pixel_count",
    "Prepared",
    "load_image",
    "exif_orientation",
    "header_orientation",
    "turn_upright",
    "upright_size",
    "convert_pillow_image",
    "rgb_to_bgr",
    "to_color_order",
    "resized_shape",
    "check_resized_size",
    "resize_shortest_edge",
    "normalize_and_pad",
    "resize_for_model",
    "prepare",
]

#: Images with more pixels than this are refused before decoding (Pillow's own default limit).
DEFAULT_MAX_PIXELS = 89_478_485
EXIF_ORIENTATION = 0x0112


class LoadedImage:
    """An image as read from disk.

    Attributes:
        rgb: ``(H, W, 3)`` uint8, RGB, 0-255, EXIF orientation applied.
        path: where it came from ("" for an in-memory array).
        exif_transposed: whether an EXIF orientation other than 1 was applied.
        exif_orientation: the EXIF orientation tag (1 when absent).
        notes: what was done to make it 8-bit RGB (alpha dropped, 16-bit scaled, ...).

    ``load_image`` keeps the decoded Pillow image and makes ``rgb`` from it when first read:
    the pipeline resizes straight from Pillow (``pixels``), and an extraction that does not
    draw the input never makes the full-size array (a copy made holding Python's lock, ~1 ms
    per 2 MP, which one process's decoding threads would otherwise take turns at).
    """

    def __init__(self, rgb: np.ndarray | None = None, path: str = "", exif_transposed: bool = False,
                 exif_orientation: int = 1, notes: list[str] | None = None, *,
                 pil: Image.Image | None = None) -> None:  # fmt: skip
        if (rgb is None) == (pil is None):
            raise TypeError("LoadedImage needs rgb or pil, not both")
        self._rgb, self._pil = rgb, pil
        self._size = (int(rgb.shape[0]), int(rgb.shape[1])) if rgb is not None else pil.size[::-1]
        self.path = path
        self.exif_transposed = exif_transposed
        self.exif_orientation = exif_orientation
        self.notes = list(notes or [])

    @property
    def rgb(self) -> np.ndarray:
        rgb = self._rgb
        if rgb is None:
            pil = self._pil
            if pil is None:  # another thread converted it meanwhile, or the pixels were dropped
                if self._rgb is None:
                    raise ValueError(f"{self.path or 'image'}: its pixels were not kept")
                return self._rgb
            rgb = self._rgb = np.asarray(pil)
            self._pil = None
        return rgb

    def rgb_view(self) -> np.ndarray:
        """``rgb``'s pixels without its copy where Pillow lends them (``io.pillow_view``): a
        read-only ``(H, W, 3)`` view into the decoded image (strides ``(4W, 4, 1)``), which keeps
        that memory alive on its own; else ``rgb``."""
        pil = self._pil
        view = rgb_view(pil) if pil is not None else None
        return view if view is not None else self.rgb

    @property
    def pixels(self) -> np.ndarray | Image.Image:
        """The pixels as held: the Pillow RGB image until ``rgb`` is first read, then the array
        (``resize_for_model`` takes either)."""
        pil = self._pil
        return pil if pil is not None else self.rgb

    def drop_pixels(self) -> None:
        """Forget the pixels (the size, path and notes stay): for an image whose outputs do not
        draw it, once it has been resized."""
        self._rgb = self._pil = None

    @property
    def height(self) -> int:
        return self._size[0]

    @property
    def width(self) -> int:
        return self._size[1]

    @property
    def nbytes(self) -> int:
        """The size of ``rgb`` (whether or not it was made yet)."""
        return self._size[0] * self._size[1] * 3


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


def to_rgb8(im: Image.Image, notes: list[str]) -> np.ndarray | Image.Image:
    """Any Pillow mode -> ``(H, W, 3)`` uint8 RGB: an array for a scaled 16-bit, 32-bit or float
    image, else a Pillow RGB image. A 16-bit mode (``I;16*``) is always divided by 257 (0..65535
    to 0..255); 32-bit ``I`` and ``F``, whose range is unknown, are scaled by what they hold: by
    257 when over 255, to their maximum when over 65535. Those within 0..255 are converted by
    Pillow, as Detectron2's ``read_image`` converts them: each value clipped to 0..255 and its
    fraction dropped (0.6 is 0, 254.6 is 254), NaN and -inf 0, inf 255."""
    mode = im.mode
    if mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        values = np.asarray(im, dtype=np.float64)
        finite = np.isfinite(values)
        top = float(values[finite].max()) if finite.any() else 0.0
        if not mode.startswith("I;16") and top <= 255:  # no scale: Pillow's own conversion
            if not finite.all():
                notes.append(f"{int(values.size - finite.sum())} non-finite value(s) read as "
                             "Detectron2 reads them (NaN and -inf as 0, inf as 255)")  # fmt: skip
            if mode == "F" and 0 < top <= 1:
                notes.append("float image of values 0..1 read as 0..255 (all but 1.0 become 0), as "
                             "Detectron2 does")  # fmt: skip
            return im.convert("RGB")
        if not finite.all():  # a float image: NaN or inf would cast to garbage
            notes.append(f"{int(values.size - finite.sum())} non-finite value(s) set to 0")
            values = np.where(finite, values, 0.0)
        if mode.startswith("I;16"):  # declared 16 bits: always 0..65535, however dark the image
            values = values / 257.0
            notes.append(f"{mode} image scaled from 16 bits to 8 bits")
        elif top > 65535:  # 32-bit integers or floats: their own range, not 16 bits
            values = values * (255.0 / top)
            notes.append(f"{mode} image scaled from 0..{top:.6g} to 8 bits")
        else:  # "I" or "F" over 255, whose bit depth is unknown: guessed from the values
            values = values / 257.0  # 0..65535 -> 0..255
            notes.append(f"{mode} image scaled from 16 bits to 8 bits")
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # As Detectron2's read_image (PIL convert("RGB")): the alpha channel is dropped and the
        # colour stored under it is kept, not composited on a background.
        notes.append("alpha channel discarded (colour under it kept, as Detectron2 does)")
    elif mode not in ("RGB", "L", "1", "P"):
        notes.append(f"{mode} converted to RGB")
    try:
        return im if mode == "RGB" else im.convert("RGB")
    except (ValueError, OSError) as e:
        raise ValueError(f"cannot convert a {mode} image to RGB ({e})") from None


def _high_bytes_note(im: Image.Image) -> str | None:
    """The note for an image whose samples Pillow reduced to 8 bits as it opened it, or None.

    Pillow opens a 16-bit-per-channel RGB, RGBA or LA PNG (or TIFF) as mode ``RGB``/``RGBA``/
    ``LA``, each value's high byte kept (its raw mode, e.g. ``RGB;16B``, says so), and a 16-bit
    PPM (maxval over 255) as ``RGB``, each value scaled to 0..255 by its ``ppm`` decoder. Both
    are known only until ``load``, which clears ``tile`` (a PNG's ``getexif`` loads it).
    Detectron2 reads images with Pillow too, so those pixels are kept, for parity, and only the
    note is added."""
    if im.mode not in ("RGB", "RGBA", "LA") or not getattr(im, "tile", None):  # made, not read
        return None
    codec, args = im.tile[0][0], im.tile[0][3]  # (decoder, extents, offset, args) in every Pillow
    if codec == "ppm" and isinstance(args, tuple) and len(args) > 1:
        maxval = args[1]
        if isinstance(maxval, int) and maxval > 255:
            return (f"16-bit {im.mode} read as 8 bits (scaled from 0..{maxval}, as Pillow and "
                    "Detectron2 do)")  # fmt: skip
        return None
    rawmode = args[0] if isinstance(args, tuple) and args else args
    # 16 bits a sample (";16B", ";16L", ";16N"), not a 5-6-5 pixel's 16 bits (a BMP's "BGR;16")
    if not isinstance(rawmode, str) or not rawmode.endswith((";16B", ";16L", ";16N")):
        return None
    return f"16-bit {im.mode} read as 8 bits (each value's high byte, as Pillow and Detectron2 do)"


def _orientation(value, notes: list[str]) -> int:
    """The EXIF orientation to apply: 1..8, as Detectron2 (``_apply_exif_orientation``) and
    ``ImageOps.exif_transpose`` read the tag (a dict lookup: 6.0 is 6, "6" or 6.5 is none); any
    other value (text, 0, 9, 6.5) is 1, nothing applied, with a note (none for 0: "unset")."""
    try:
        if value in range(1, 9):
            return int(value)
    except (TypeError, ValueError, OverflowError):
        pass
    if value not in (None, 0):  # 0: "unset", as some cameras write it
        notes.append(f"EXIF orientation {str(value)[:20]!r} is not 1..8: ignored")
    return 1


def exif_orientation(im: Image.Image, notes: list[str], *, decode: bool = True) -> int:
    """The EXIF orientation to apply to the open image ``im`` (``_orientation``).

    An EXIF block Pillow cannot parse (SyntaxError: not a TIFF header; ValueError: a PNG's
    "Raw profile type exif" text that is not hex; struct.error: a truncated TIFF header; or
    whatever else its parser raises) gives 1, nothing applied, with a note: the pixels are
    fine, and Detectron2 reads such a file the same way (``_apply_exif_orientation`` catches
    whatever ``getexif`` raises). A PNG is decoded first, as its ``getexif`` would do to find
    an eXIf chunk after the pixels, so that a damaged image is still refused as one.
    ``decode=False`` (a header read, ``header_orientation``, which leaves out a PNG whose EXIF
    Pillow did not find before its pixels) never decodes: a 20000 x 20000 PNG's disk estimate
    had decoded its 400 MP for it."""
    if decode and im.format == "PNG":
        im.load()
    try:
        value = im.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # any parse error; the pixels are decoded (and refused) apart from it
        notes.append("EXIF unreadable: orientation not applied")
        return 1
    return _orientation(value, notes)


def header_orientation(im: Image.Image) -> int | None:
    """``exif_orientation(im, [], decode=False)``, None where a header read cannot know it: a PNG
    whose EXIF Pillow did not find before its pixels (an eXIf chunk may follow them, and the
    image be turned a quarter when decoded)."""
    if im.format == "PNG" and "exif" not in im.info:
        return None
    return exif_orientation(im, [], decode=False)


def upright_size(im: Image.Image, orientation: int) -> tuple[int, int]:
    """``(width, height)`` of the open image ``im`` once turned by its EXIF ``orientation``,
    read before decoding: swapped for a quarter turn (5 to 8), except for a TIFF whose size
    Pillow already gives turned (Pillow 11 and later; its ImageWidth and ImageLength tags keep
    the size as stored)."""
    width, height = im.size
    if orientation not in (5, 6, 7, 8):
        return width, height
    tags = getattr(im, "tag_v2", None) if im.format == "TIFF" else None
    if tags is not None and (tags.get(256), tags.get(257)) == (height, width):
        return width, height
    return height, width


def turn_upright(im: Image.Image, orientation: int) -> Image.Image:
    """The open image ``im`` decoded and turned by its EXIF ``orientation`` (``exif_orientation``;
    1: as it is). A TIFF is not turned here: Pillow turns it by its Orientation tag as it loads
    it (since Pillow 6.2), and before Pillow 10.1 ``getexif`` still gave the tag afterwards, so
    ``ImageOps.exif_transpose`` turned it a second time (as Detectron2's ``read_image`` does)."""
    im.load()
    if orientation == 1 or im.format == "TIFF":
        return im
    return ImageOps.exif_transpose(im)


def load_image(path: str | Path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               names: OptionNames = CLI_NAMES) -> LoadedImage:  # fmt: skip
    """Read an image file as 8-bit RGB with its EXIF orientation applied.

    Grayscale, palette, RGBA/LA (alpha dropped), CMYK and 16-bit images all become RGB; of a
    multi-frame file the first frame is used. A 16-bit RGB(A) file keeps the 8 bits Pillow
    reads it as (the high bytes, as Detectron2 gets them), with a note. The size is checked
    from the header before any pixel is decoded, so decompression bombs are refused without
    allocating them.

    Only a regular file is opened: a FIFO, device, socket or symlink loop is refused. A
    message about ``max_pixels`` (``check_max_pixels``; None: no limit) names it as ``names``
    says (the CLI's ``--max-pixels``).

    Raises:
        FileNotFoundError: no such file.
        OSError: too many open files (``guard.is_out_of_open_files``): this process's limit.
        ValueError: not an image, truncated, unsupported, over ``max_pixels``, or not a regular
            file; ``max_pixels`` under 1.
        TypeError: ``max_pixels`` is neither a whole number nor None.
    """
    max_pixels = check_max_pixels(max_pixels, names)  # its own error, not the file's
    path = Path(path)
    notes: list[str] = []
    try:
        with open_image(path, max_pixels, names=names) as im:
            high_bytes = _high_bytes_note(im)  # before exif_orientation, which loads a PNG
            frames = getattr(im, "n_frames", 1)
            if frames > 1:
                notes.append(f"first of {frames} frames used")
            orientation = exif_orientation(im, notes)
            notes += [high_bytes] if high_bytes else []
            rgb = to_rgb8(turn_upright(im, orientation), notes)
    except Image.DecompressionBombError:
        raise ValueError(
            f"{path}: refused as a decompression bomb (over twice the {pixel_count(max_pixels)} "
            f"limit); raise {names.max_pixels} if you trust this file"
        ) from None
    except UnidentifiedImageError:
        raise ValueError(f"{path}: not an image Pillow can read") from None
    except FileNotFoundError:
        raise
    except ValueError as e:  # fpncli's own name the file; a decoder's or Pillow's do not
        if str(e).startswith(str(path)):
            raise
        raise ValueError(f"{path}: unreadable image ({e})") from None
    except MemoryError:
        raise ValueError(f"{path}: out of memory while decoding it") from None
    except (OSError, SyntaxError, EOFError) as e:
        if is_out_of_open_files(e):  # the process's limit, not this file's fault: said as such
            raise
        # one naming the file (EACCES, ENAMETOOLONG) gives only its reason: the name once
        named = isinstance(e, OSError) and e.filename is not None and e.strerror
        raise ValueError(f"{path}: unreadable image ({e.strerror if named else e})") from None
    except Exception as e:  # a malformed file can make a decoder raise anything
        raise ValueError(f"{path}: unreadable image ({type(e).__name__}: {e})") from None
    if isinstance(rgb, Image.Image):
        if 0 in rgb.size:
            raise ValueError(f"{path}: decoded to an empty {rgb.size[0]}x{rgb.size[1]} image")
        pixels = {"pil": rgb}
    elif rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"{path}: decoded to an unusable array of shape {rgb.shape}")
    else:
        pixels = {"rgb": np.ascontiguousarray(rgb)}
    return LoadedImage(
        path=str(path),
        exif_transposed=orientation != 1,
        exif_orientation=orientation,
        notes=notes,
        **pixels,
    )


def convert_pillow_image(im: Image.Image) -> LoadedImage:
    """An in-memory Pillow image as 8-bit RGB, its mode converted as ``load_image`` converts a
    file's (alpha dropped, 16-bit scaled, ..., with the same notes), but taken as it is: its
    EXIF orientation is not applied (a note says so when it has one), as an array's is not;
    ``ImageOps.exif_transpose`` it first, or load its file. An EXIF block Pillow cannot parse
    is read as ``load_image`` reads a file's (``exif_orientation``: 1, with a note).

    Raises:
        ValueError: its pixels cannot be read (a truncated file opened lazily) or converted.
    """
    notes: list[str] = []
    try:
        high_bytes = _high_bytes_note(im)  # before exif_orientation, which loads a PNG
        orientation = exif_orientation(im, notes)  # a damaged EXIF block: 1, with its note
        if orientation != 1:
            notes.append(f"EXIF orientation {orientation} not applied (an in-memory image)")
        notes += [high_bytes] if high_bytes else []
        rgb = np.asarray(to_rgb8(im, notes))  # a copy: the caller's image may change later
    except (OSError, SyntaxError, EOFError) as e:
        raise ValueError(f"unreadable image ({e})") from None
    return LoadedImage(rgb, notes=notes)


def rgb_to_bgr(image: np.ndarray) -> np.ndarray:
    """Reverse the channel axis of an ``(H, W, 3)`` RGB array, giving BGR (a view)."""
    return image[:, :, ::-1]


def to_color_order(rgb: np.ndarray, color_order: str) -> np.ndarray:
    """Put an RGB ``(H, W, 3)`` array into the weights' channel order ("BGR" or "RGB")."""
    if color_order == "BGR":
        return rgb_to_bgr(rgb)
    if color_order == "RGB":
        return rgb
    raise ValueError(f"unknown color order {color_order!r}")


def resized_shape(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """``ResizeShortestEdge.get_output_shape``: ``(new_height, new_width)``."""
    size = float(min_size)
    scale = size / min(height, width)
    if height < width:
        new_h, new_w = size, scale * width
    else:
        new_h, new_w = scale * height, size
    if max(new_h, new_w) > max_size:
        scale = max_size * 1.0 / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def check_resized_size(height: int, width: int, min_size: int, max_size: int, resize: bool,
                       max_pixels: int | None, *,
                       names: OptionNames = CLI_NAMES) -> None:  # fmt: skip
    """Refuse (ValueError) an image whose resized, padded size would exceed ``max_pixels``
    (``check_max_pixels``; None: no limit), naming the options as ``names`` says: without the
    resize, only raising the limit helps (the sizes change nothing then)."""
    max_pixels = check_max_pixels(max_pixels, names)
    if max_pixels is None:
        return
    new_h, new_w = resized_shape(height, width, min_size, max_size) if resize else (height, width)
    padded = math.ceil(new_h / 32) * 32 * math.ceil(new_w / 32) * 32
    if padded > max_pixels:
        what = f"resized to {new_w}x{new_h}" if resize else f"at {new_w}x{new_h} (not resized)"
        fix = f"lower {names.sizes} or raise " if resize else "raise "
        raise ValueError(
            f"{what} it would be {pixel_count(padded)}, over the {pixel_count(max_pixels)} "
            f"limit: {fix}{names.max_pixels}"
        )


def resize_shortest_edge(
    image: np.ndarray | Image.Image, min_size: int = 800, max_size: int = 1333
) -> np.ndarray:
    """Resize a uint8 ``(H, W, 3)`` image (or a Pillow RGB image, the same pixels) as Detectron2
    does (Pillow bilinear)."""
    height, width = _height_width(image)
    new_h, new_w = resized_shape(height, width, min_size, max_size)
    if (new_h, new_w) == (height, width):
        return np.asarray(image)
    pil = image if isinstance(image, Image.Image) else Image.fromarray(np.ascontiguousarray(image))
    return np.asarray(pil.resize((new_w, new_h), Image.BILINEAR))


def _height_width(image: np.ndarray | Image.Image) -> tuple[int, int]:
    if isinstance(image, Image.Image):
        return image.size[1], image.size[0]
    return int(image.shape[0]), int(image.shape[1])


def normalize_and_pad(
    image: np.ndarray, input_format: InputFormat, size_divisibility: int = 32,
    pad_to: tuple[int, int] | None = None,
) -> np.ndarray:  # fmt: skip
    """``(H, W, 3)`` uint8 in model order -> ``(3, Hp, Wp)`` float32, normalized, zero-padded.

    ``Hp, Wp`` are H, W rounded up to ``size_divisibility``, or ``pad_to`` when given.
    """
    height, width = image.shape[:2]
    if pad_to is None:
        pad_to = (
            math.ceil(height / size_divisibility) * size_divisibility,
            math.ceil(width / size_divisibility) * size_divisibility,
        )
    mean = np.asarray(input_format.pixel_mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(input_format.pixel_std, dtype=np.float32).reshape(3, 1, 1)
    out = np.zeros((3, *pad_to), dtype=np.float32)
    chw = image.transpose(2, 0, 1).astype(np.float32)
    out[:, :height, :width] = (chw - mean) / std
    return out


@dataclass
class Prepared:
    """An image ready for the backbone, and how it got there.

    Attributes:
        tensor: ``(3, Hp, Wp)`` float32 in the weights' channel order, normalized, zero-padded.
        resized_height, resized_width: size after the resize (the valid region of ``tensor``).
        scale: the resize factor Detectron2 computed (resized / original, before rounding).
        scale_y, scale_x: the exact per-axis factors after rounding to whole pixels.
    """

    tensor: np.ndarray | None
    color_order: str
    resized_height: int
    resized_width: int
    scale: float
    scale_y: float
    scale_x: float
    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float]
    padded_height: int = 0  # taken from ``tensor`` (kept when the tensor is released)
    padded_width: int = 0

    def __post_init__(self) -> None:
        if self.tensor is not None:
            self.padded_height, self.padded_width = (int(n) for n in self.tensor.shape[1:])


def resize_for_model(
    rgb: np.ndarray | Image.Image,
    input_format: InputFormat,
    *,
    min_size: int = 800,
    max_size: int = 1333,
    resize: bool = True,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    size_divisibility: int = 32,
    canvas: str | None = None,
    defer_resize: bool = False,
    names: OptionNames = CLI_NAMES,
) -> tuple[np.ndarray, Prepared]:
    """Step 3 on an RGB uint8 ``(H, W, 3)`` image (or a Pillow RGB image, as
    ``LoadedImage.pixels`` holds it): the resized pixels, still uint8 **RGB**, and
    the ``Prepared`` record of how the model input will be made from them (``tensor`` is None:
    steps 2 and 4 run in torch on the model's device, ``fpncli.model.normalize``).

    The padded size is the resized size rounded up to ``size_divisibility``, or with ``canvas``
    (``"auto"`` or ``"WxH"``, see ``fpncli.io.canvas``) the canvas the image goes on; an image
    larger than a fixed canvas is refused (ValueError), and so is an empty image (a side of 0).
    A resized size over ``max_pixels`` is refused (ValueError) before anything is allocated,
    and so is an image whose short side the resize would make 0; the messages name the options
    as ``names`` says.

    ``defer_resize``: the pixels come back at their own size, the ``Prepared`` record as if
    resized (the pipeline then resizes on the model's device, ``fpncli.model.resize``, which
    equals Pillow's bilinear exactly).
    """
    if isinstance(rgb, Image.Image):
        if rgb.mode != "RGB":
            raise ValueError(f"expected a Pillow RGB image, got mode {rgb.mode}")
    elif rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got {rgb.dtype} {rgb.shape}")
    if resize and (min_size <= 0 or max_size < min_size):
        raise ValueError(f"need 0 < min_size <= max_size, got {min_size} and {max_size}")
    height, width = _height_width(rgb)
    if height == 0 or width == 0:  # no shortest edge to scale (a division by zero)
        raise ValueError(f"expected an image with pixels, got an empty {width}x{height} one")
    check_resized_size(height, width, min_size, max_size, resize, max_pixels, names=names)
    new_h, new_w = resized_shape(height, width, min_size, max_size) if resize else (height, width)
    if min(new_h, new_w) < 1:  # a 1x5000 image: its short side rounds to 0 under --max-size
        raise ValueError(
            f"a {width}x{height} image would be resized to {new_w}x{new_h}: its aspect ratio is "
            f"too extreme for {names.max_size} {max_size} (raise it, or {names.no_resize})"
        )
    d = size_divisibility
    padded = (math.ceil(new_h / d) * d, math.ceil(new_w / d) * d)
    if canvas is not None:  # refused before the resize when it does not fit
        padded = canvas_for(new_h, new_w, canvas, min_size=min_size, max_size=max_size,
                            resize=resize, names=names)  # fmt: skip
    if resize:
        image = np.asarray(rgb) if defer_resize else resize_shortest_edge(rgb, min_size, max_size)
        scale = min_size / min(height, width)
        if max(height, width) * scale > max_size:
            scale = max_size / max(height, width)
    else:
        image, scale = np.asarray(rgb), 1.0
    expected = (height, width) if defer_resize else (new_h, new_w)
    assert image.shape[:2] == expected, "resized_shape and the resize disagree"
    prepared = Prepared(
        tensor=None,
        color_order=input_format.color_order,
        resized_height=new_h,
        resized_width=new_w,
        scale=scale,
        scale_y=new_h / height,
        scale_x=new_w / width,
        pixel_mean=tuple(input_format.pixel_mean),
        pixel_std=tuple(input_format.pixel_std),
        padded_height=padded[0],
        padded_width=padded[1],
    )
    # deferred, the pixels go as they are to the upload, which copies them anyway (a view of
    # Pillow's memory, LoadedImage.rgb_view, is not made contiguous first)
    return (image if defer_resize else np.ascontiguousarray(image)), prepared


def prepare(
    rgb: np.ndarray,
    input_format: InputFormat,
    *,
    min_size: int = 800,
    max_size: int = 1333,
    resize: bool = True,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Prepared:
    """Run steps 2-4 on an RGB uint8 ``(H, W, 3)`` image in numpy (see the module docstring).

    The pipeline and ``fpncli.extract`` do steps 2 and 4 in torch instead (same values); this
    numpy version is the reference the tests and ``scripts/parity.py`` compare with. A resized
    size over ``max_pixels`` is refused (ValueError) before anything is allocated.
    """
    pixels, prepared = resize_for_model(
        rgb, input_format, min_size=min_size, max_size=max_size, resize=resize,
        max_pixels=max_pixels,
    )  # fmt: skip
    ordered = to_color_order(pixels, input_format.color_order)
    prepared.tensor = normalize_and_pad(ordered, input_format)
    return prepared
