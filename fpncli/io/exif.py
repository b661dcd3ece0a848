"""An image's EXIF orientation, read as Detectron2 (``_apply_exif_orientation``) and Pillow's
``ImageOps.exif_transpose`` read it, and the image turned upright by it (or only its size, from the
header, for the disk estimate and the report's thumbnails).
"""

from __future__ import annotations

from PIL import Image, ImageOps

__all__ = ["exif_orientation", "header_orientation", "upright_size", "turn_upright"]

EXIF_ORIENTATION = 0x0112


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
