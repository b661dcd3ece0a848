"""Writing one image's outputs: ``p*.npy``, ``p*.png``, ``overview.png``, ``manifest.json``.

Every file is written atomically: to a hidden temporary name in the same folder, then renamed.
The manifest is written last, lists every file with its size, and its presence (with
``"complete": true`` and every listed file present at its size) is what marks a folder complete.
Re-extracting first removes the old manifest and the old outputs the new one will not list, so a
run killed half-way through never leaves a folder that looks complete with a mix of old and new
files. A folder is written under an advisory lock (``guard.folder_lock``), so two runs into the
same ``-o`` take turns; temporary names carry the writer's pid and run token, and only this
run's or dead runs' leftovers are removed. (Atomic against killed processes and full disks;
only large files are flushed before their rename, see ``drop_from_cache``, so a power cut can
still lose what the OS had not flushed.)
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..model.fpn import LEVELS, OUTPUT_CHANNELS, OUTPUT_STRIDES, OUTPUTS
from .canvas import check_canvas, parse_canvas
from .guard import folder_lock, is_disk_full, open_regular, pid_alive
from .npy import write_npy
from .preprocess import LoadedImage, Prepared

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
]

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
_TMP_MARK = ".fpncli-tmp"
_MAX_MANIFEST_BYTES = 16 << 20
_RUN_TOKEN = secrets.token_hex(4)  # tells this run's temporaries from an earlier one's (pid reuse)
_TMP_PID = re.compile(re.escape(_TMP_MARK) + r"\.?(\d+)")
_NAMES = r"(p[2-6]|stem|res[2-5])"
_OUTPUT_NAME = re.compile(rf"^({_NAMES}\.npy|{_NAMES}\.png|{_NAMES}_overlay\.png|overview\.png)$")


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
        object.__setattr__(self, "canvas", parse_canvas(self.canvas))  # canonical: auto or WxH
        check_canvas(self.canvas, min_size=self.min_size, max_size=self.max_size,
                     resize=self.resize)  # fmt: skip


#: Files at least this large (a P2 ``.npy`` from 1 MB upwards) leave the page cache once written.
DROP_BYTES = 8 << 20


def drop_from_cache(f) -> None:
    """Flush the open file ``f`` to disk and drop its pages from the page cache (used for large
    output files, and for a shard after each image's members).

    Left alone, each image's ``.npy`` (83 MB at 800x1216) stays in the page cache as dirty pages:
    every image takes fresh pages from the kernel and a long run fills the cache with outputs
    nobody is reading, evicting everything else (the input images included). Taking fresh pages
    is also the costly part of a buffered write: on a 2-core AMD EPYC VM the writer spent 150-180
    ms of kernel time per image (the model's threads paid for it), 38 ms with this; the
    folder/model-only ratio went from 0.89-0.91 to 0.94-0.96. The run is bound by the disk's rate
    once the cache is full anyway, and a disk-full error from delayed allocation surfaces here,
    before the rename. Where ``posix_fadvise`` is missing (macOS, Windows), or with
    ``FPNCLI_DROP_CACHE=0``, nothing is done.
    """
    if not hasattr(os, "posix_fadvise") or os.environ.get("FPNCLI_DROP_CACHE", "1") == "0":
        return
    try:
        fd = f.fileno()
    except (AttributeError, OSError, ValueError):  # not a local file (an object store, memory)
        return
    f.flush()
    try:
        os.fdatasync(fd)
    except OSError as e:  # a file system without fdatasync: leave the file to the OS
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise  # ENOSPC, EDQUOT, EIO: this write failed
        return
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:  # only advice
        pass


def atomic_write_bytes(path: Path, data: bytes | np.ndarray) -> int:
    """Write ``data`` (bytes, or an array saved as ``.npy``) to ``path`` through a temporary file
    in the same folder, then rename; returns the size written."""
    tmp = path.with_name(f".{path.name}{_TMP_MARK}.{os.getpid()}.{_RUN_TOKEN}")
    try:
        with open(tmp, "wb") as f:
            if isinstance(data, np.ndarray):
                write_npy(f, data)
            else:
                f.write(data)
            size = f.tell()
            if size >= DROP_BYTES:
                drop_from_cache(f)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if is_disk_full(e) and e.errno is None:  # numpy's short write: say what it is
            raise OSError(errno.ENOSPC, f"No space left on device ({e})", str(path)) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return size


def read_manifest(folder: Path) -> dict | None:
    """The folder's manifest if it is a complete one, else None."""
    try:
        with open_regular(Path(folder) / MANIFEST) as f:  # never blocks on a FIFO
            manifest = json.loads(f.read(_MAX_MANIFEST_BYTES + 1)[:_MAX_MANIFEST_BYTES])
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("complete") else None


def manifest_files(manifest: dict) -> dict[str, int | None]:
    """The files a manifest lists: name -> size in bytes (None where an older manifest did not
    record it). Names are plain file names inside the extraction folder."""
    files = manifest.get("files")
    if isinstance(files, dict):
        return {str(k): v if isinstance(v, int) else None for k, v in files.items()}
    listed: dict[str, int | None] = {}
    levels = manifest.get("levels")
    for meta in levels.values() if isinstance(levels, dict) else ():
        if isinstance(meta, dict):
            for key in ("file", "heatmap", "overlay"):
                if isinstance(meta.get(key), str):
                    listed[meta[key]] = None
    if isinstance(manifest.get("overview"), str):
        listed[manifest["overview"]] = None
    return listed


def is_complete(folder: Path, run_key: str | None = None) -> bool:
    """True when ``folder`` holds a complete extraction (and, given ``run_key``, the same one):
    a complete manifest whose every listed file is present with the recorded size."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None or (run_key is not None and manifest.get("run_key") != run_key):
        return False
    for name, size in manifest_files(manifest).items():
        if "/" in name or "\\" in name or name in ("", ".", ".."):
            return False
        try:
            st = (folder / name).stat()
        except OSError:
            return False
        if size is not None and st.st_size != size:
            return False
    return True


def run_key(image_path: Path, options: OutputOptions, weights: dict, precision: str) -> str:
    """A digest of everything that determines an image's outputs: the input file (size and
    modification time), the weights, the precision and the output options. A complete folder
    with the same key is skipped on resume; a different key means re-extract."""
    stat = Path(image_path).stat()
    # the JSON of {"input", "options", "precision", "weights"} with sorted keys, as earlier
    # versions wrote it (their folders still resume), with the options' part made once per
    # options object: asdict was 60% of the time of listing a million pending images
    parts = [
        ("input", json.dumps([os.path.realpath(image_path), stat.st_size, stat.st_mtime_ns])),
        ("options", _options_json(options)),
        ("precision", json.dumps(precision)),
        ("weights", json.dumps([weights.get("name"), weights.get("sha256"), weights.get("seed")])),
    ]
    material = "{" + ", ".join(f'"{name}": {value}' for name, value in parts) + "}"
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def _options_json(options: OutputOptions) -> str:
    cached = options.__dict__.get("_run_key_json")
    if cached is None:
        chosen = asdict(options)
        if chosen["canvas"] is None:  # as before canvases existed: earlier runs still resume
            del chosen["canvas"]
        cached = json.dumps(chosen, sort_keys=True)
        object.__setattr__(options, "_run_key_json", cached)  # frozen: fields never change
    return cached


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


def _stale_temporary(name: str) -> bool:
    """Whether a temporary file was left by this process or by one that is no longer alive."""
    match = _TMP_PID.search(name)
    if match is None:
        return True
    pid = int(match[1])
    return pid == os.getpid() or not pid_alive(pid)


def _begin(folder: Path, keep: set[str]) -> None:
    """Drop the old manifest, old outputs the new manifest will not list, and temporaries of this
    or dead runs. Called with the folder's lock held, so no live fpncli run is writing here."""
    (folder / MANIFEST).unlink(missing_ok=True)
    for entry in os.scandir(folder):
        if _TMP_MARK in entry.name and entry.name.startswith("."):
            if _stale_temporary(entry.name):
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
    """

    shape: tuple[int, ...]
    array: np.ndarray | None
    map2d: np.ndarray | None
    min: float | None
    max: float | None
    mean: float | None
    nonfinite: int = 0


def level_results(
    features: dict[str, np.ndarray], prepared: Prepared, options: OutputOptions
) -> dict[str, LevelResult]:
    """``LevelResult`` for each of ``options.levels`` from numpy features ``(1, 256, h, w)``."""
    from ..viz.visualize import reduce_channels, valid_region

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
            reduced = reduce_channels(array, options.reduce, options.channel)
            map2d = valid_region(reduced, valid_h, valid_w)
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
    """
    if levels is None:
        if features is None:
            raise ValueError("write_image_outputs needs features or levels")
        levels = level_results(features, prepared, options)
    folder = Path(folder)
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
            from ..viz.visualize import value_range

            vrange = value_range(maps[name], options.clip)
            meta["range"] = list(vrange)
            pictures = render_level_pictures(
                maps[name], name=name, stride=stride, shape=result.shape, rgb=image.rgb,
                scale_y=prepared.scale_y, scale_x=prepared.scale_x, vrange=vrange,
                options=options, note=_note(weights),
            )  # fmt: skip
            for kind, file in (("heatmap", f"{name}.png"), ("overlay", f"{name}_overlay.png")):
                if kind in pictures:
                    written += write(folder / file, pictures[kind])
                    meta[kind] = file
        levels_meta[name] = meta

    overview = None
    if options.save_overview:
        from ..viz.visualize import overview_png

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
    from ..viz.visualize import encode_png, heatmap_image, overlay_image

    label = f"{name}  stride {stride}  {tuple(shape)}  {_reduce_label(options)}"
    pictures = {}
    if options.save_heatmaps:
        png = heatmap_image(map2d, cmap=options.cmap, label=label, vrange=vrange, note=note)
        pictures["heatmap"] = encode_png(png)
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
    return f"{photo}  ({weights.get('name')}, {_reduce_label(options)})"


def _needs_maps(options: OutputOptions) -> bool:
    return options.save_heatmaps or options.save_overview or options.overlay


def _reduce_label(options: OutputOptions) -> str:
    return f"channel {options.channel}" if options.reduce == "channel" else options.reduce


def estimate_bytes_per_image(padded_height: int, padded_width: int, options: OutputOptions) -> int:
    """Upper estimate of the bytes ``write_image_outputs`` writes for one image of this size."""
    itemsize = 2 if options.dtype == "float16" else 4
    total = 0
    for name in options.levels:
        stride = OUTPUT_STRIDES[name]
        cells = math.ceil(padded_height / stride) * math.ceil(padded_width / stride)
        if options.save_npy:
            total += OUTPUT_CHANNELS[name] * cells * itemsize + 128
        if options.save_heatmaps:
            total += 200_000
        if options.overlay:
            total += 3 * padded_height * padded_width // 2
    if options.save_overview:
        total += 600_000
    return total + 8_000


def _state_file() -> Path:
    base = os.environ.get("FPNCLI_HOME") or os.environ.get("XDG_STATE_HOME")
    root = Path(base) if base else Path.home() / ".cache" / "fpncli"
    return root / "latest.json"


_HISTORY = 20  # recent extractions remembered, so a deleted latest falls back to an older one


def recent_extractions() -> list[Path]:
    """The folders recorded by ``record_latest``, newest first (they may since have gone)."""
    try:
        state = json.loads(_state_file().read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(state, dict):
        return []
    folders = [state.get("folder")] + list(state.get("history") or [])
    seen, recent = set(), []
    for folder in folders:
        if isinstance(folder, str) and folder and folder not in seen:
            seen.add(folder)
            recent.append(Path(folder))
    return recent


def record_latest(folder: Path) -> None:
    """Remember ``folder`` as the most recent extraction (for ``fpncli show`` with no target),
    keeping the previous ones so a latest that was deleted falls back to the newest left."""
    state = _state_file()
    newest = str(Path(folder).resolve())
    history = [str(p) for p in recent_extractions() if str(p) != newest][: _HISTORY - 1]
    try:
        state.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps({"folder": newest, "history": history}).encode()
        atomic_write_bytes(state, data)
    except OSError as e:  # a read-only home must not fail an extraction
        log.warning("could not record the latest extraction in %s: %s", state, e)


def latest_extraction() -> Path:
    """The most recently completed output folder that still exists (complete); the recorded
    latest may have been deleted, then the newest one left is returned.
    FileNotFoundError when there is none."""
    recent = recent_extractions()
    if not recent:
        raise FileNotFoundError(
            "no previous extraction recorded: run 'fpncli extract IMAGE' first, or name a TARGET"
        )
    for folder in recent:
        if is_complete(folder):
            if folder != recent[0]:
                log.warning("the latest extraction %s is gone; showing %s", recent[0], folder)
            return folder
    raise FileNotFoundError(
        f"the latest extraction {recent[0]} is gone or incomplete, and so are the "
        f"{len(recent) - 1} before it: name a TARGET"
    )
