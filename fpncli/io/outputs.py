"""What an image's output folder holds, and what its files show.

The names fpncli writes there (``is_output_name``), the options that shape them
(``OutputOptions``, ``check_channel``) and the files they ask for (``expected_files``); the cells
of a level that cover the image (``valid_size``) and each level's contents (``LevelResult``,
``level_results``); the pictures of a level and the words they carry (``render_level_pictures``,
``overview_title``, ``picture_title``, ``RANDOM_NOTE``); and an upper estimate of the bytes one
image takes (``estimate_bytes_per_image``). ``io.image_writer`` writes them into the folder; the
manifest's reading lives in ``io.manifest``, the run key in ``io.run_keys``.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..model.names import LEVELS, OUTPUT_CHANNELS, OUTPUT_STRIDES, OUTPUTS
from .canvas import check_canvas, parse_canvas
from .guard import OptionError
from .manifest import MANIFEST
from .preprocess import Prepared

__all__ = [
    "OutputOptions",
    "LevelResult",
    "level_results",
    "expected_files",
    "valid_size",
    "estimate_bytes_per_image",
    "is_output_name",
]

log = logging.getLogger(__name__)
_NAMES = r"(p[2-6]|stem|res[2-5])"
OUTPUT_NAME = re.compile(rf"^({_NAMES}\.npy|{_NAMES}\.png|{_NAMES}_overlay\.png|overview\.png)$")


def is_output_name(name: str) -> bool:
    """Whether an image's folder may hold a file fpncli writes under ``name`` (any case: on a
    case-insensitive file system ``P2.NPY`` is ``p2.npy``)."""
    folded = name.casefold()
    return folded == MANIFEST or bool(OUTPUT_NAME.match(folded))


@dataclass(frozen=True)
class OutputOptions:
    """What to write for each image (the ``extract`` options that shape the outputs)."""

    levels: tuple[str, ...] = LEVELS
    dtype: str = "float32"  # of the .npy files: "float32" or "float16"
    save_npy: bool = True
    save_heatmaps: bool = True
    save_overview: bool = True
    overlay: bool = False
    channel: int = 0
    reduce: str = "channel"
    cmap: str = "viridis"
    clip: tuple[float, float] = (1.0, 99.0)  # colour range percentiles (viz DEFAULT_CLIP)
    min_size: int = 800
    max_size: int = 1333
    resize: bool = True
    canvas: str | None = None  # None: each image padded to a multiple of 32; "auto" or "WxH"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [lv for lv in self.levels if lv not in OUTPUTS]
        if unknown or not self.levels:
            raise ValueError(
                f"unknown level(s) {', '.join(unknown) or '(none)'}: use p2..p6 or stem, res2..res5"
            )
        if self.dtype not in ("float32", "float16"):
            raise ValueError(f"dtype must be float32 or float16, got {self.dtype!r}")
        lo, hi = self.clip
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(f"clip must be percentiles 0 <= LO < HI <= 100, got {self.clip}")
        if _needs_maps(self):
            check_channel(self.channel, self.reduce, self.levels)
        object.__setattr__(self, "canvas", parse_canvas(self.canvas))  # canonical: auto or WxH
        check_canvas(self.canvas, min_size=self.min_size, max_size=self.max_size,
                     resize=self.resize)  # fmt: skip


def check_channel(channel: int, reduce: str, levels: tuple[str, ...]) -> None:
    """With ``reduce="channel"``, ``channel`` must exist in every level drawn: an
    ``OptionError`` (``--channel``) if not, naming the level with the fewest channels."""
    if reduce != "channel":
        return
    fewest = min(levels, key=OUTPUT_CHANNELS.__getitem__)
    if not 0 <= channel < OUTPUT_CHANNELS[fewest]:
        raise OptionError(
            f"channel {channel} is out of range: {fewest} has {OUTPUT_CHANNELS[fewest]} "
            f"channels (0..{OUTPUT_CHANNELS[fewest] - 1})",
            "--channel",
        )


def valid_size(resized_height: int, resized_width: int, stride: int) -> tuple[int, int]:
    """Cells of a level with ``stride`` that cover image pixels rather than padding."""
    return math.ceil(resized_height / stride), math.ceil(resized_width / stride)


def expected_files(options: OutputOptions) -> set[str]:
    """The names of the files ``write_image_outputs`` writes with these options."""
    names = set()
    for name in options.levels:
        if options.save_npy:
            names.add(f"{name}.npy")
        if options.save_heatmaps:
            names.add(f"{name}.png")
        if options.overlay:
            names.add(f"{name}_overlay.png")
    if options.save_overview:
        names.add("overview.png")
    return names


@dataclass
class LevelResult:
    """One level of one image, ready to be written (computed on the device by the pipeline, or
    from numpy arrays by ``level_results``).

    Attributes:
        shape: ``(1, 256, Hp/S, Wp/S)``, the whole padded level.
        array: that level in the output dtype, or None when no ``.npy`` is written.
        map2d: the heatmap's ``(valid_h, valid_w)`` float32 map, or None when none is drawn.
        min, max, mean: of the finite values of the valid region (float32 values, the mean
            accumulated in float64); None when no value is finite.
        nonfinite: how many values of the valid region are NaN or infinite.
        order_stats: what the heatmap's colour range needs of ``map2d``, when the device
            picked it out with the map (``fpncli.run.device.reductions.order_stats``); None: the
            writer takes ``value_range`` of the map.
    """

    shape: tuple[int, ...]
    array: np.ndarray | None
    map2d: np.ndarray | None
    min: float | None
    max: float | None
    mean: float | None
    nonfinite: int = 0
    order_stats: tuple[float, ...] | None = None


def level_results(
    features: dict[str, np.ndarray], prepared: Prepared, options: OutputOptions
) -> dict[str, LevelResult]:
    """``LevelResult`` for each of ``options.levels`` from numpy features ``(1, 256, h, w)``."""
    from ..viz.maps import reduce_channels

    out = {}
    for name in options.levels:
        array = features[name]
        if options.dtype == "float16" and array.dtype != np.float16:
            array = array.astype(np.float16)
        elif options.dtype == "float32" and array.dtype != np.float32:
            array = array.astype(np.float32)
        valid_h, valid_w = valid_size(
            prepared.resized_height, prepared.resized_width, OUTPUT_STRIDES[name]
        )
        valid = array[..., :valid_h, :valid_w].astype(np.float32, copy=False)
        finite = np.isfinite(valid)
        nonfinite = int(valid.size - np.count_nonzero(finite))
        if nonfinite:
            valid = valid[finite]
        map2d = None
        if _needs_maps(options):
            # reduced from the valid cells only: a pca fitted over the padding too would change
            # with it (--canvas), though the map drawn is of the valid region
            map2d = reduce_channels(array[..., :valid_h, :valid_w], options.reduce, options.channel)
        out[name] = LevelResult(
            tuple(array.shape), array if options.save_npy else None, map2d,
            float(valid.min()) if valid.size else None,
            float(valid.max()) if valid.size else None,
            float(valid.mean(dtype=np.float64)) if valid.size else None,
            nonfinite,
        )  # fmt: skip
    return out


RANDOM_NOTE = "RANDOM, UNTRAINED WEIGHTS - not a trained network"


def render_level_pictures(
    map2d: np.ndarray,
    *,
    name: str,
    stride: int,
    shape: tuple[int, ...],
    rgb: np.ndarray | None,
    scale_y: float,
    scale_x: float,
    vrange: tuple[float, float],
    options: OutputOptions,
    note: str,
) -> dict[str, bytes]:
    """The PNGs of one level that ``options`` asks for: ``{"heatmap": ..., "overlay": ...}``,
    drawn on ``vrange`` and labelled with level, stride, shape and reduction. Used by the run
    and by ``extract --scale``'s redraw, so both draw the same pictures."""
    from ..viz.png import encode_png
    from ..viz.visualize import heatmap_png, overlay_image

    label = f"{name}  stride {stride}  {tuple(shape)}  {_reduce_label(options)}"
    pictures = {}
    if options.save_heatmaps:
        pictures["heatmap"] = heatmap_png(map2d, cmap=options.cmap, label=label, vrange=vrange,
                                          note=note)  # fmt: skip
    if options.overlay:
        over = overlay_image(
            rgb, map2d, stride=stride, scale_y=scale_y, scale_x=scale_x, cmap=options.cmap,
            vrange=vrange, label=f"{label}  {options.cmap}", note=note,
        )  # fmt: skip
        pictures["overlay"] = encode_png(over)
    return pictures


def overview_title(image_path: str | None, weights: dict, options: OutputOptions) -> str:
    """The overview's title line: the photo's name, the weights and the drawn reduction."""
    photo = Path(image_path or "").name or "image"
    return picture_title(photo, str(weights.get("name")), _reduce_label(options))


def picture_title(photo: str, *details: str) -> str:
    """``chelsea.png  (random, channel 0)``: a picture's title, the photo's name and then what
    was drawn (empty details left out). The overview's, and ``show``'s, so that they read the
    same."""
    return f"{photo}  ({', '.join(d for d in details if d)})"


def _needs_maps(options: OutputOptions) -> bool:
    return options.save_heatmaps or options.save_overview or options.overlay


def _reduce_label(options: OutputOptions) -> str:
    return f"channel {options.channel}" if options.reduce == "channel" else options.reduce


def estimate_bytes_per_image(
    padded_height: int,
    padded_width: int,
    options: OutputOptions,
    *,
    resized: tuple[int, int] | None = None,
    original: tuple[int, int] | None = None,
    photo: str = "image",
) -> int:
    """Upper estimate of the bytes ``write_image_outputs`` writes for one image of this size,
    noise included (a PNG of noise does not compress).

    Args:
        padded_height, padded_width: the model input (the ``.npy`` levels cover it).
        resized: ``(height, width)`` of the image as resized, whose cells the heatmaps draw
            (default: the padded size).
        original: ``(height, width)`` of the photo (EXIF applied), at which the overlays and
            the overview's input are drawn (default: ``resized``).
        photo: the photo's file name, in the overview's title.
    """
    from ..viz.overview import overview_png_bound
    from ..viz.png import png_size_bound
    from ..viz.visualize import heatmap_png_bound, overlay_shape

    resized = resized or (padded_height, padded_width)
    original = original or resized
    itemsize = 2 if options.dtype == "float16" else 4
    # The pictures' sizes as drawn, with the red line of random weights (a header only grows
    # with it): overlays at the size a PNG of noise takes, heatmaps and the overview's level
    # panels at most what their cells can cost (deflate matches a cell's repeated pixels).
    note = RANDOM_NOTE
    total = 0
    for name in options.levels:
        stride = OUTPUT_STRIDES[name]
        shape = (1, OUTPUT_CHANNELS[name], math.ceil(padded_height / stride),
                 math.ceil(padded_width / stride))  # fmt: skip
        if options.save_npy:
            total += OUTPUT_CHANNELS[name] * shape[2] * shape[3] * itemsize + 128
        label = f"{name}  stride {stride}  {shape}  {_reduce_label(options)}"
        if options.save_heatmaps:
            cells = valid_size(*resized, stride)
            total += heatmap_png_bound(*cells, label=label, note=note)
        if options.overlay:
            drawn = overlay_shape(*original, label=f"{label}  {options.cmap}", note=note)
            total += png_size_bound(*drawn)
    if options.save_overview:
        # The weights' name is not known here: a long one (a checkpoint's path) wraps the title
        # onto more lines (counted as text): 40 characters of the widest letter stand in for it.
        title = picture_title(photo, "W" * 40, _reduce_label(options))
        cells = [valid_size(*resized, OUTPUT_STRIDES[name]) for name in options.levels]
        total += overview_png_bound(*original, cells, title=title, note=note)
    return total + 8_000
