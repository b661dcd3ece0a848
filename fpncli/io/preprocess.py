"""Preparing an image exactly as Detectron2's DefaultPredictor does.

1. Read with Pillow, apply the EXIF orientation, make it 8-bit RGB (``image_load.load_image``).
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

import math
import operator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..weights.registry import InputFormat
from .canvas import canvas_for
from .option_names import CLI_NAMES, OptionNames
from .pillow_open import DEFAULT_MAX_PIXELS, check_max_pixels, pixel_count

__all__ = [
    "Prepared",
    "rgb_to_bgr",
    "to_color_order",
    "resized_shape",
    "check_sizes",
    "check_resized_size",
    "resize_shortest_edge",
    "normalize_and_pad",
    "resize_for_model",
    "prepare",
]


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


def check_sizes(min_size: int, max_size: int, names: OptionNames = CLI_NAMES) -> tuple[int, int]:
    """The resize's ``min_size`` and ``max_size`` checked, as ``int``: whole numbers (a numpy
    integer too) with ``0 < min_size <= max_size``; the messages name them as ``names`` says.

    Raises:
        TypeError: either is not a whole number (a str, a float, None, a bool).
        ValueError: ``min_size`` is 0 or less, or over ``max_size``.
    """
    sizes = []
    for name, value in ((names.min_size, min_size), (names.max_size, max_size)):
        if isinstance(value, bool) or not hasattr(type(value), "__index__"):
            raise TypeError(f"{name} must be a whole number of pixels, got {type(value).__name__}")
        sizes.append(operator.index(value))
    if sizes[0] <= 0 or sizes[1] < sizes[0]:
        raise ValueError(f"need 0 < min_size <= max_size, got {sizes[0]} and {sizes[1]}")
    return sizes[0], sizes[1]


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
    if resize:
        min_size, max_size = check_sizes(min_size, max_size, names)
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
