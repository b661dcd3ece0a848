"""``extract --scale level|shared``: redraw a finished run's pictures on the run's colour ranges.

During the run each image's heatmaps, overlays and overview are drawn on the image's own ranges
(what ``--scale image`` keeps; a resumed ``image`` run puts back the own ranges of folders an
earlier ``level|shared`` run redrew). Once the run's images are done, ``redraw_run`` computes the
run's ranges from their manifests (``viz.scale.run_ranges``, as ``show`` and ``report`` do),
redraws every picture of those folders from the saved ``.npy`` files and the input photo, and
rewrites each manifest last, with the new picture sizes and ``"scale": {"mode", "levels"}``.
Every file is replaced atomically under the folder's lock. A pass killed between a picture and
its manifest leaves a folder whose listed sizes no longer match: not complete, so resume
re-extracts it. A folder whose manifest already records this scale on these very ranges, its
pictures all there, is left as it is: a rerun of a finished run (every image skipped) rewrites
nothing.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..io.atomic import atomic_write_bytes
from ..io.extraction import load_extraction
from ..io.guard import folder_lock
from ..io.image_writer import _note
from ..io.manifest import MANIFEST, is_file_name, read_manifest
from ..io.markers import linked_folder
from ..io.outputs import OutputOptions, _needs_maps, overview_title, render_level_pictures
from ..viz.scale import SCALES, range_to_draw, run_ranges

__all__ = ["RedrawSummary", "check_scale", "redraw_run"]

log = logging.getLogger(__name__)


@dataclass
class RedrawSummary:
    """What the second pass did: the ranges used, folders redrawn, folders already drawn on
    those ranges (left as they are), the bytes it wrote (every picture and manifest it
    replaced), folders it could not."""

    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    redrawn: int = 0
    kept: int = 0
    bytes_written: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def check_scale(scale: str, options: OutputOptions) -> None:
    """ValueError unless ``scale`` can be applied to a run with ``options`` (checked up front)."""
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}: use one of {', '.join(SCALES)}")
    if scale != "image" and not _needs_maps(options):  # a range for pictures no run draws
        raise ValueError(
            f"--scale {scale} sets the colour range of the pictures, and --no-heatmaps with "
            "--no-overview draws none: use --scale image, or draw some (--overlay)"
        )
    if scale != "image" and not options.save_npy and _needs_maps(options):
        raise ValueError(
            f"--scale {scale} redraws the pictures from the saved .npy files: drop --no-npy "
            "or use --scale image"
        )


def redraw_run(folders: list[Path], scale: str, options: OutputOptions, *,
               root: Path | None = None) -> RedrawSummary:  # fmt: skip
    """Redraw the pictures of ``folders`` (complete extractions of one run, written with
    ``options``) on the run's ``scale`` ranges and record them in each manifest. With ``image``,
    only the folders whose manifest records another scale (a resumed run that an earlier
    ``--scale level|shared`` redrew) are redrawn, on their own ranges, and the record dropped.
    A folder whose manifest records ``scale`` on the ranges computed now, with every picture the
    redraw would replace present at its listed size, is counted in ``kept`` and not rewritten.

    A folder reached through a symlinked folder below ``root`` (the run's -o; None: below the
    topmost marked output root, ``markers.linked_folder``) is not redrawn, nor its statistics
    counted in the run's ranges: it is another folder's, as when the run wrote it.

    Raises:
        ValueError: a scale ``check_scale`` refuses for ``options`` (unknown; ``level`` or
            ``shared`` with nothing drawn, or drawn without the ``.npy`` files), or no recorded
            statistics in the folders' manifests.
    """
    check_scale(scale, options)
    summary = RedrawSummary()
    kept = []
    for folder in folders:
        link = linked_folder(Path(folder), root)
        if link is None:
            kept.append(folder)
        else:
            summary.failed.append((str(folder), f"{link} is a symlink to {os.readlink(link)}: "
                                   "never written through; remove the link"))  # fmt: skip
    folders = kept
    if scale == "image":  # only folders an earlier run redrew on its range: back to their own
        folders = [f for f in folders if "scale" in (read_manifest(f) or {})]
        ranges: dict[str, tuple[float, float]] = {}
    elif folders:
        # one manifest at a time: a list of a 100,000-image run's manifests held about 1.3 GB
        # (13 KB each, parsed)
        manifests = (m for m in map(read_manifest, folders) if m is not None)
        ranges = run_ranges(manifests, scale, reduce=options.reduce, channel=options.channel)
        summary.ranges = ranges
    for folder in folders:
        try:
            with folder_lock(folder):
                written = _redraw(Path(folder), scale, ranges, options)
            if written is None:
                summary.kept += 1
                continue
            summary.redrawn += 1
            summary.bytes_written += written
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            # a manifest changed since the run wrote it: that folder is reported, the rest go on
            log.warning("could not redraw %s on the run's scale: %s", folder, e)
            summary.failed.append((str(folder), str(e)))
    return summary


def _scale_record(scale: str, ranges: dict, names: list[str]) -> dict:
    """The manifest's ``scale`` entry for a folder of levels ``names`` drawn on ``ranges``."""
    return {"mode": scale, "levels": {n: list(ranges[n]) for n in names if n in ranges}}


def _drawn_on(folder: Path, manifest: dict | None, scale: str, ranges: dict,
              options: OutputOptions) -> bool:  # fmt: skip
    """Whether ``folder`` is already drawn on ``scale``'s ``ranges``: its manifest records that
    very scale (mode and ranges, as stored) and every picture the redraw would replace is
    present with the size the manifest lists (a missing or changed one is redrawn)."""
    if scale == "image" or not isinstance(manifest, dict):
        return False
    levels_meta = manifest.get("levels")
    files = manifest.get("files")
    if not isinstance(levels_meta, dict) or not isinstance(files, dict):
        return False
    names = [n for n in options.levels if n in levels_meta]
    if manifest.get("scale") != _scale_record(scale, ranges, names):
        return False
    kinds = [k for k, on in (("heatmap", options.save_heatmaps), ("overlay", options.overlay))
             if on]  # fmt: skip
    metas = [levels_meta[n] for n in names]
    if not all(isinstance(meta, dict) for meta in metas):
        return False
    pictures = [meta.get(kind) for meta in metas for kind in kinds]
    pictures.append(manifest.get("overview"))
    for file in filter(None, pictures):
        try:
            if not is_file_name(file) or (folder / file).stat().st_size != files.get(file):
                return False
        except OSError:
            return False
    return True


def _redraw(folder: Path, scale: str, ranges: dict, options: OutputOptions) -> int | None:
    """Redraw one folder's pictures and rewrite its manifest; the bytes written, or None where
    the folder is already drawn on these ranges (``_drawn_on``: nothing written)."""
    from ..viz.maps import reduce_channels, valid_region
    from ..viz.overview import overview_png

    # the manifest alone first: a folder already on these ranges is left without loading its
    # .npy files or photo (a rerun of a finished 100,000-image run redrew all of them)
    if _drawn_on(folder, read_manifest(folder), scale, ranges, options):
        return None
    extraction = load_extraction(folder)
    manifest = extraction.manifest
    files = dict(manifest.get("files") or {})
    weights = manifest.get("weights") or {}
    note = _note(weights)
    levels_meta = manifest["levels"]
    names = [n for n in options.levels if n in levels_meta]
    missing = [n for n in names if n not in extraction.levels]
    if missing:
        raise ValueError(f"no .npy for {', '.join(missing)} to redraw from")
    rgb = None
    if options.overlay or options.save_overview:
        rgb = extraction.image
        if rgb is None:
            raise ValueError(f"the input image {extraction.input_path} is gone")
    pre = manifest["preprocess"]
    scale_y, scale_x = float(pre["scale_y"]), float(pre["scale_x"])
    maps, vranges, pictures = {}, {}, {}
    for name in names:
        meta = levels_meta[name]
        # the valid cells reduced, as the run did: a pca fit must not see the padding
        valid = valid_region(extraction.levels[name], meta["valid_height"], meta["valid_width"])
        maps[name] = reduce_channels(valid, options.reduce, options.channel)
        # an image's own range is taken from the map drawn here, not from the manifest: this
        # reduction of the .npy (numpy's) may differ from the run's (torch's, on the device) by
        # a rounding, or by float16 (--dtype), and a map one ulp outside its recorded range
        # would be labelled clipped; so is an end of the run's range that this image set
        vranges[name] = range_to_draw(maps[name], name, clip=options.clip, run=ranges.get(name),
                                      manifest=manifest, reduce=options.reduce,
                                      channel=options.channel)  # fmt: skip
        drawn = render_level_pictures(
            maps[name], name=name, stride=int(meta["stride"]), shape=meta["shape"], rgb=rgb,
            scale_y=scale_y, scale_x=scale_x, options=options, note=note, vrange=vranges[name],
        )  # fmt: skip
        for kind, png in drawn.items():
            if meta.get(kind):
                pictures[meta[kind]] = png
    if manifest.get("overview"):
        panels = [
            {"name": n, "map": maps[n], "stride": int(levels_meta[n]["stride"]),
             "shape": tuple(levels_meta[n]["shape"]), "range": vranges[n]}
            for n in names
        ]  # fmt: skip
        title = overview_title(manifest.get("input", {}).get("path"), weights, options)
        pictures[manifest["overview"]] = overview_png(rgb, panels, title=title, note=note,
                                                      cmap=options.cmap)  # fmt: skip
    for file in pictures:  # every name checked before the first picture is replaced
        if not is_file_name(file):
            raise ValueError(f"{folder}/{MANIFEST} lists {file!r}, not a file name in the folder")
    for file, data in pictures.items():
        files[file] = atomic_write_bytes(folder / file, data)
    written = sum(files[file] for file in pictures)
    manifest["files"] = files
    if scale == "image":
        manifest.pop("scale", None)
    else:
        manifest["scale"] = _scale_record(scale, ranges, names)
    data = json.dumps(manifest, indent=2, allow_nan=False).encode()
    return written + atomic_write_bytes(folder / MANIFEST, data)  # last: it lists the new sizes
