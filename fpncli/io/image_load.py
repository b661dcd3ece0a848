"""Reading an image file as 8-bit RGB with its EXIF orientation applied, as Detectron2's
``read_image`` does (``load_image``), or taking an in-memory Pillow image the same way
(``convert_pillow_image``): a ``LoadedImage``. Opening the file safely is ``pillow_open``'s,
the orientation ``exif``'s.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .exif import exif_orientation, turn_upright
from .guard import is_out_of_open_files
from .option_names import CLI_NAMES, OptionNames
from .pillow_open import DEFAULT_MAX_PIXELS, check_max_pixels, open_image, pixel_count
from .pillow_view import rgb_view

__all__ = ["LoadedImage", "load_image", "convert_pillow_image", "to_rgb8"]


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
