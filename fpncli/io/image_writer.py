"""Writing one image's outputs: ``p*.npy``, ``p*.png``, ``overview.png``, ``manifest.json``.

``write_image_outputs`` writes an image's levels (``outputs.LevelResult``) into its folder;
``write_image_members`` hands the same files, one by one, to the sharded writer. What the folder
holds, and the options that shape it, are ``io.outputs``'s.

Every file is written atomically: to a hidden temporary name in the same folder, then renamed.
The manifest is written last, lists every file with its size, and its presence (with
``"complete": true`` and every listed file present at its size) is what marks a folder complete.
Re-extracting first removes the old manifest and the old outputs the new one will not list, so a
run killed half-way through never leaves a folder that looks complete with a mix of old and new
files. A folder is written under an advisory lock (``guard.folder_lock``), so two runs into the
same ``-o`` take turns, and neither replaces the complete outputs of another input file that the
other wrote there (``run_inputs``); temporary names carry the writer's pid and run token, and
only this run's or dead runs' leftovers are removed. (Atomic against killed processes and full
disks; only large files are flushed before their rename, see ``atomic.drop_from_cache``, so a
power cut can still lose what the OS had not flushed.) The manifest's reading lives in
``io.manifest``, the run key in ``io.run_keys``, the atomic writes in ``io.atomic``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Container
from pathlib import Path

import numpy as np

from .. import __version__
from ..model.names import OUTPUT_STRIDES
from .atomic import TMP_MARK, atomic_write_bytes, stale_temporary
from .guard import folder_lock
from .image_load import LoadedImage
from .manifest import MANIFEST, folder_state
from .markers import linked_folder
from .outputs import (
    OUTPUT_NAME,
    RANDOM_NOTE,
    LevelResult,
    OutputOptions,
    expected_files,
    level_results,
    overview_title,
    render_level_pictures,
    valid_size,
)
from .preprocess import Prepared
from .recorded_input import other_input, other_input_text

__all__ = [
    "write_image_outputs",
    "write_image_members",
]


def _begin(folder: Path, keep: set[str]) -> None:
    """Drop the old manifest, old outputs the new manifest will not list, and temporaries of this
    or dead runs. Called with the folder's lock held, so no live fpncli run is writing here."""
    (folder / MANIFEST).unlink(missing_ok=True)
    for entry in os.scandir(folder):
        if TMP_MARK in entry.name and entry.name.startswith("."):
            if stale_temporary(entry.name):
                Path(entry.path).unlink(missing_ok=True)
        elif OUTPUT_NAME.match(entry.name) and entry.name not in keep and entry.is_file():
            Path(entry.path).unlink(missing_ok=True)


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
    run_inputs: Container[str] | None = None,
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
            is refused (``markers.linked_folder``; None: below the topmost marked output root).
        run_inputs: the input files of the run (``run.plan.RunInputs``: ``path in run_inputs``).
            With them, a folder whose complete manifest records another input file
            (``recorded_input.other_input``), one not in ``run_inputs``, is checked for once
            locked and never replaced: another run into the same ``-o`` wrote it after this
            run's plan had found it free (``run.plan.plan_pending`` refuses what it finds
            then). None: no such check (``--overwrite``; a caller's own folder).

    Raises:
        ValueError: (one line) ``folder`` is reached through a symlink below ``root``, or holds
            the complete outputs of another input file (``run_inputs``); nothing of it is
            replaced.
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
        if skip_if_complete or run_inputs is not None:  # one read of the manifest for both
            complete, manifest = folder_state(folder, run_key)
            if skip_if_complete and run_key is not None and complete:
                return None
            if run_inputs is not None and manifest is not None:
                _keep_other_input(folder, manifest, image.path, run_inputs)
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


def _keep_other_input(folder: Path, manifest: dict, path: str,
                      run_inputs: Container[str]) -> None:  # fmt: skip
    """Refuse (ValueError) to replace ``folder``'s complete outputs of another input file than
    ``path``, one not in ``run_inputs`` (``write_image_outputs``)."""
    made_from = other_input(manifest, path)
    if made_from is not None and made_from not in run_inputs:
        raise ValueError(
            f"{other_input_text(folder, made_from, path)} (another run into the same -o wrote "
            "them): they are kept, and this image is not extracted; extract it with another -o"
        )


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
