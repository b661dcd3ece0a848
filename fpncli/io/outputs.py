"""Writing one image's outputs: ``p*.npy``, ``p*.png``, ``overview.png``, ``manifest.json``.

Every file is written atomically: to a hidden temporary name in the same folder, then renamed.
The manifest is written last, lists every file with its size, and its presence (with
``"complete": true`` and every listed file present at its size) is what marks a folder complete.
Re-extracting first removes the old manifest and the old outputs the new one will not list, so a
run killed half-way through never leaves a folder that looks complete with a mix of old and new
files. A folder is written under an advisory lock (``guard.folder_lock``), so two runs into the
same ``-o`` take turns; temporary names carry the writer's pid and run token, and only this
run's or dead runs' leftovers are removed. (Atomic against killed processes and full disks;
only large files are flushed before their rename, see ``atomic.drop_from_cache``, so a power cut can
still lose what the OS had not flushed.) The manifest's reading and the run key live in
``io.manifest``, the atomic writes in ``io.atomic``, the latest extractions in ``io.latest``;
their names are importable from here too.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..model.names import LEVELS, OUTPUT_CHANNELS, OUTPUT_STRIDES, OUTPUTS
from .atomic import TMP_MARK, atomic_write_bytes, stale_temporary
from .canvas import check_canvas, parse_canvas
from .guard import OptionError, folder_lock, linked_folder
from .image_load import LoadedImage
from .latest import latest_extraction, recent_extractions, record_latest
from .manifest import MANIFEST, is_complete, manifest_files, read_manifest, run_key
from .preprocess import Prepared

__all__ = [
    "OutputOptions",
    "LevelResult",
    "level_results",
    "MANIFEST",
    "atomic_write_bytes",
    "is_complete",
    "expected_files",
    "manifest_files",
    "run_key",
    "read_manifest",
    "valid_size",
    "write_image_outputs",
    "write_image_members",
    "record_latest",
    "latest_extraction",
    "recent_extractions",
    "estimate_bytes_per_image",
    "is_output_name",
]

log = logging.getLogger(__name__)
_NAMES = r"(p[2-6]|stem|res[2-5])"
_OUTPUT_NAME = re.compile(rf"^({_NAMES}\.npy|{_NAMES}\.png|{_NAMES}_overlay\.png|overview\.png)$")


def is_output_name(name: str) -> bool:
    """Whether an image's folder may hold a file fpncli writes under ``name`` (any case: on a
    case-insensitive file system ``P2.NPY`` is ``p2.npy``)."""
    folded = name.casefold()
    return folded == MANIFEST or bool(_OUTPUT_NAME.match(folded))


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


def _begin(folder: Path, keep: set[str]) -> None:
    """Drop the old manifest, old outputs the new manifest will not list, and temporaries of this
    or dead runs. Called with the folder's lock held, so no live fpncli run is writing here."""
    (folder / MANIFEST).unlink(missing_ok=True)
    for entry in os.scandir(folder):
        if TMP_MARK in entry.name and entry.name.startswith("."):
            if stale_temporary(entry.name):
                Path(entry.path).unlink(missing_ok=True)
        elif _OUTPUT_NAME.match(entry.name) and entry.name not in keep and entry.is_file():
            Path(entry.path).unlink(missing_ok=True)


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


def write_image_outputs(
    folder: Path,
    *,
    features: dict[str, np.ndarray] | None = None,
    levels: dict[str, LevelResult] | None = None,
    image: LoadedImage,
    prepared: Prepared,
    options: OutputOptions,
    weights: dict,
    device: str,
    precision: str,
    run_key: str | None = None,
    skip_if_complete: bool = False,
    root: Path | None = None,
) -> int | None:
    """Write everything for one image into ``folder``; the manifest last. Returns bytes written.

    The folder is locked while it is written (another run writing it is waited for). With
    ``skip_if_complete`` the folder is checked again once locked, and None is returned when it
    is already complete with ``run_key`` (another run finished it meanwhile).

    Args:
        features: level name -> ``(1, 256, Hp/S, Wp/S)`` array (float32 or float16), covering the
            padded input, for at least ``options.levels``; or instead
        levels: the ready ``LevelResult`` of each of ``options.levels`` (what the pipeline
            computes on the device).
        image: the image as read (its ``rgb`` is used for the overview and overlays).
        prepared: how it was prepared (its ``tensor`` is not used and may be None).
        weights: ``{"name", "sha256", "format", "random", "seed"}`` for the manifest.
        root: the run's ``-o``: a symlinked folder strictly below it, on the way to ``folder``,
            is refused (``guard.linked_folder``; None: below the topmost marked output root).
    """
    if levels is None:
        if features is None:
            raise ValueError("write_image_outputs needs features or levels")
        levels = level_results(features, prepared, options)
    folder = Path(folder)
    # Checked before the folder is made (through a linked parent, it would be made elsewhere):
    # written through a link, another folder's files would be replaced or removed (``_begin``)
    # and two images could share one folder.
    link = linked_folder(folder, root)
    if link is not None:
        where = "" if link == Path(os.path.abspath(folder)) else f" (on the way to {folder})"
        raise ValueError(
            f"{link} is a symlink to {os.readlink(link)}{where}: fpncli writes an image's "
            "outputs only into a folder of its own under -o, never through a link; remove the "
            "link or use another -o"
        )
    with folder_lock(folder):
        if skip_if_complete and run_key is not None and is_complete(folder, run_key):
            return None
        _begin(folder, expected_files(options))
        created: dict[str, int] = {}

        def write(path: Path, data: bytes) -> int:
            size = atomic_write_bytes(path, data)
            created[path.name] = size
            return size

        try:
            return _write_all(
                folder, write, levels, image, prepared, options, weights, device, precision,
                run_key, created,
            )  # fmt: skip
        except BaseException:
            # Leave no orphan files from this attempt: the folder is incomplete (no manifest).
            # The lock is held, so these names are this attempt's, not another run's.
            for name in created:
                (folder / name).unlink(missing_ok=True)
            raise


def _write_all(folder, write, levels, image, prepared, options, weights, device, precision,
               run_key, created) -> int:  # fmt: skip
    written = 0
    levels_meta = {}
    maps = {n: levels[n].map2d for n in options.levels if levels[n].map2d is not None}
    for name in options.levels:
        stride = OUTPUT_STRIDES[name]
        result = levels[name]
        valid_h, valid_w = valid_size(prepared.resized_height, prepared.resized_width, stride)
        meta = {
            "file": None,
            "heatmap": None,
            "shape": list(result.shape),
            "stride": stride,
            "dtype": options.dtype,
            "valid_height": valid_h,
            "valid_width": valid_w,
            # statistics of the finite values; JSON has no NaN, so none is null
            "min": result.min,
            "max": result.max,
            "mean": result.mean,
            "nonfinite": result.nonfinite,
        }
        if options.save_npy:
            written += write(folder / f"{name}.npy", result.array)
            meta["file"] = f"{name}.npy"
        if name in maps:
            from ..viz.maps import range_from_order_stats, value_range

            if result.order_stats is not None:  # picked out on the device: no sort here
                vrange = range_from_order_stats(result.order_stats, options.clip)
            else:
                vrange = value_range(maps[name], options.clip)
            meta["range"] = list(vrange)
            pictures = render_level_pictures(
                maps[name], name=name, stride=stride, shape=result.shape,
                rgb=image.rgb if options.overlay else None, scale_y=prepared.scale_y,
                scale_x=prepared.scale_x, vrange=vrange, options=options, note=_note(weights),
            )  # fmt: skip
            for kind, file in (("heatmap", f"{name}.png"), ("overlay", f"{name}_overlay.png")):
                if kind in pictures:
                    written += write(folder / file, pictures[kind])
                    meta[kind] = file
        levels_meta[name] = meta

    overview = None
    if options.save_overview:
        from ..viz.overview import overview_png

        panels = [
            {
                "name": n,
                "map": maps[n],
                "stride": OUTPUT_STRIDES[n],
                "shape": tuple(levels_meta[n]["shape"]),
                "range": tuple(levels_meta[n]["range"]),
            }
            for n in options.levels
        ]
        title = overview_title(image.path, weights, options)
        written += write(
            folder / "overview.png",
            overview_png(image.rgb, panels, title=title, note=_note(weights), cmap=options.cmap),
        )
        overview = "overview.png"

    import torch  # only for its version; already loaded by the caller

    manifest = {
        "fpncli_version": __version__,
        "torch_version": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "input": {
            # as the user named it (made absolute); the resume key uses the resolved path
            "path": os.path.abspath(image.path) if image.path else "",
            "real_path": os.path.realpath(image.path) if image.path else "",
            "width": image.width,
            "height": image.height,
            "exif_transposed": image.exif_transposed,
            "exif_orientation": image.exif_orientation,
            "notes": list(image.notes),
        },
        "preprocess": {
            "color_order": prepared.color_order,
            "resized_width": prepared.resized_width,
            "resized_height": prepared.resized_height,
            "scale": prepared.scale,
            "scale_x": prepared.scale_x,
            "scale_y": prepared.scale_y,
            "padded_width": prepared.padded_width,
            "padded_height": prepared.padded_height,
            # "auto" or "WxH": padded to that canvas (Detectron2's batched padding), not to
            # the image's own size rounded up to 32; null: single-image padding
            "canvas": options.canvas,
            "pixel_mean": list(prepared.pixel_mean),
            "pixel_std": list(prepared.pixel_std),
            "min_size": options.min_size,
            "max_size": options.max_size,
            "resize": options.resize,
        },
        "weights": dict(weights),
        "device": device,
        "precision": precision,
        "levels": levels_meta,
        "heatmap": {
            "reduce": options.reduce,
            "channel": options.channel,
            "cmap": options.cmap,
            "clip_percentiles": list(options.clip),  # each level's "range" is what they gave
        },
        "overview": overview,
        "run_key": run_key,
        "files": dict(created),
        "complete": True,
    }
    data = json.dumps(manifest, indent=2, allow_nan=False).encode()
    written += write(folder / MANIFEST, data)
    return written


RANDOM_NOTE = "RANDOM, UNTRAINED WEIGHTS - not a trained network"


def _note(weights: dict) -> str:
    """The red line every picture made with random weights carries."""
    return RANDOM_NOTE if weights.get("random") else ""


def write_image_members(
    write: Callable[[str, bytes | np.ndarray], int],
    *,
    features: dict[str, np.ndarray] | None = None,
    levels: dict[str, LevelResult] | None = None,
    image: LoadedImage,
    prepared: Prepared,
    options: OutputOptions,
    weights: dict,
    device: str,
    precision: str,
    run_key: str | None = None,
) -> int:
    """Render exactly what ``write_image_outputs`` writes, but hand each file to
    ``write(name, data)`` (``name`` is ``p2.npy``, ``p2.png``, ..., ``manifest.json`` last; ``data``
    is bytes, or an array to save as ``.npy``) instead of a folder: the sharded (WebDataset)
    writer packs them into a tar. Returns the bytes ``write`` reported."""
    if levels is None:
        if features is None:
            raise ValueError("write_image_members needs features or levels")
        levels = level_results(features, prepared, options)
    created: dict[str, int] = {}

    def member(path: Path, data) -> int:
        created[path.name] = size = write(path.name, data)
        return size

    return _write_all(
        Path(), member, levels, image, prepared, options, weights, device, precision, run_key,
        created,
    )  # fmt: skip


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
