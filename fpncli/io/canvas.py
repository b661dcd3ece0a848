"""Fixed canvases (``extract --canvas auto|WxH``): pad every resized image to one of a few fixed
sizes, as Detectron2 pads the images of a batch to a common size.

Detectron2's batched inference (``detectron2/structures/image_list.py: ImageList.from_tensors``
with ``size_divisibility=32``) pads each normalized image with zeros, right and bottom, to the
largest height and width of the batch rounded up to 32. A canvas does that with a size fixed in
advance, so that every batch has one of a few shapes (what ``cudnn.benchmark`` and
``torch.compile`` need to pay off) while images of different sizes share batches.

An image's features on a canvas are those of Detectron2's batched inference for a batch whose
largest image fills the canvas: inside the image but near its right and bottom edge they differ
from single-image inference (``DefaultPredictor``), because the convolutions there see more zero
padding further out. Without a canvas each image is padded to its own size rounded up to 32:
exactly single-image inference.

Canvases are written ``WxH`` (width x height, as image sizes are usually given); inside the code
sizes are ``(height, width)`` like every array shape.
"""

from __future__ import annotations

import math
import re

from .option_names import CLI_NAMES, OptionNames
from .pillow_open import pixel_count

__all__ = [
    "CANVAS_DIVISIBILITY",
    "parse_canvas",
    "auto_canvases",
    "canvas_sizes",
    "check_canvas",
    "canvas_for",
]

#: Detectron2's ``size_divisibility`` for an FPN backbone (its largest stride): canvas sides must
#: be multiples of it.
CANVAS_DIVISIBILITY = 32
_WXH = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")


def _round_up(n: int, d: int = CANVAS_DIVISIBILITY) -> int:
    return math.ceil(n / d) * d


def parse_canvas(value: str | None) -> str | None:
    """Check a canvas setting and return its canonical form: None, ``"auto"`` or ``"WxH"``.

    Raises:
        ValueError: not ``auto`` nor ``WxH`` with W and H positive multiples of 32.
    """
    if value is None:
        return None
    text = str(value).strip()
    if text.lower() == "auto":
        return "auto"
    match = _WXH.match(text)
    if match is None:
        raise ValueError(f"canvas {value!r}: use auto or WxH (width x height), e.g. 1344x800")
    width, height = int(match[1]), int(match[2])
    d = CANVAS_DIVISIBILITY
    if width < 1 or height < 1 or width % d or height % d:
        suggest = f"{max(d, _round_up(width))}x{max(d, _round_up(height))}"
        raise ValueError(
            f"canvas {width}x{height}: width and height must be positive multiples of {d} "
            f"(e.g. {suggest})"
        )
    return f"{width}x{height}"


def _fixed(canvas: str) -> tuple[int, int]:
    """``"WxH"`` (canonical) -> ``(height, width)``."""
    width, height = (int(n) for n in canvas.split("x"))
    return height, width


def auto_canvases(min_size: int, max_size: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The two canvases ``auto`` picks from, as ``(height, width)``: landscape (and square)
    images go on ``(min_size, max_size)`` rounded up to 32, portrait ones on its transpose.

    Resized as Detectron2 does (``ResizeShortestEdge``), an image's short side is at most
    ``min_size`` and its long side at most ``max_size``, so every image fits one of them. With
    the default 800/1333: 1344x800 and 800x1344 (WxH).
    """
    short, long = _round_up(min_size), _round_up(max_size)
    return (short, long), (long, short)


def canvas_sizes(
    canvas: str | None, *, min_size: int, max_size: int
) -> tuple[tuple[int, int], ...]:
    """Every ``(height, width)`` a canvas setting can pad to (none without a canvas)."""
    if canvas is None:
        return ()
    if canvas == "auto":
        return auto_canvases(min_size, max_size)
    return (_fixed(canvas),)


def check_canvas(
    canvas: str | None, *, min_size: int, max_size: int, resize: bool,
    max_pixels: int | None = None, names: OptionNames = CLI_NAMES,
) -> None:  # fmt: skip
    """The checks that need no image: ``auto`` needs the resize (its canvases come from
    ``min_size``/``max_size``); a fixed canvas must be able to hold at least one resized image;
    no canvas may have more than ``max_pixels`` pixels. Raises ValueError saying what to do,
    the limit named as ``names`` says (the CLI's ``--max-pixels``).

    Resized as Detectron2 does, an image's short side is ``min_size`` (its long side then at
    most ``max_size``), or its long side is ``max_size`` (its short side then smaller than
    ``min_size``). So a canvas holds some resized image exactly when both its sides are at least
    ``min_size``, or one side is at least ``max_size``."""
    if canvas is None:
        return
    if canvas == "auto" and not resize:
        raise ValueError(
            f"canvas auto picks a canvas from the resize's {names.sizes}: without the resize "
            "give a fixed canvas WxH"
        )
    if canvas != "auto" and resize:
        sides = _fixed(canvas)
        if min(sides) < min_size and max(sides) < max_size:
            short, long = _round_up(min_size), _round_up(max_size)
            raise ValueError(
                f"canvas {canvas} holds no image resized to a shortest edge of {min_size} and a "
                f"longest edge of at most {max_size}: make both sides at least {short} (e.g. "
                f"{max(short, sides[1])}x{max(short, sides[0])}), or one side at least {long}, "
                "or use auto"
            )
    for height, width in canvas_sizes(canvas, min_size=min_size, max_size=max_size):
        if max_pixels is not None and height * width > max_pixels:
            raise ValueError(
                f"the canvas {width}x{height} is {pixel_count(height * width)}, over the "
                f"{pixel_count(max_pixels)} limit: use a smaller canvas or raise "
                f"{names.max_pixels}"
            )


def canvas_for(
    height: int,
    width: int,
    canvas: str,
    *,
    min_size: int,
    max_size: int,
    resize: bool = True,
    names: OptionNames = CLI_NAMES,
) -> tuple[int, int]:
    """The ``(height, width)`` canvas a resized ``height x width`` image (not resized:
    ``resize`` False) is padded to.

    Raises:
        ValueError: the image is larger than the canvas (a fixed one; or ``auto`` without the
            resize), the message naming the options as ``names`` says (the auto canvas only
            with the resize: it is refused without).
    """
    if canvas == "auto":
        landscape, portrait = auto_canvases(min_size, max_size)
        chosen = landscape if height <= width else portrait
        what = f"the auto canvas {chosen[1]}x{chosen[0]}"
    else:
        chosen = _fixed(canvas)
        what = f"the canvas {canvas}"
    if height > chosen[0] or width > chosen[1]:
        size = f"resized to {width}x{height}" if resize else f"at {width}x{height} (not resized)"
        auto = f", or {names.canvas_auto}" if resize else ""
        raise ValueError(
            f"{size}, the image does not fit {what}: give a canvas of at least "
            f"{_round_up(width)}x{_round_up(height)}{auto}"
        )
    return chosen
