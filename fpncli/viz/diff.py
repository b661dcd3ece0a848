"""Two extractions of the same images compared per image and level (``fpncli diff A B``).

Images are paired (``diff_pairs``: by key, the image folder's path below its root), checked for the
same geometry, and compared level by level on the valid region only (``diff_result.compare_arrays``
says what is measured); each image's |A - B| picture is drawn into the output folder, whose checks
and tables are ``diff_output``'s.

A is the reference. Images whose geometry differs (input size, resize, valid level shapes) are
reported, not compared; images found on one side only are listed. The padded size may differ (an
``extract --canvas`` output against a single-image one). Numpy and OpenCV only.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ..io.atomic import atomic_write_bytes
from ..io.catalog import open_extractions
from ..io.extraction import LoadedExtraction
from ..io.formats import warn_image_folders_left_out
from ..io.guard import is_disk_full
from ..io.markers import DIFF_MARKER, linked_folder, make_marked_folder
from ..io.messages import error_text
from ..io.outputs import RANDOM_NOTE
from .diff_output import check_out_folder, picture_folders, write_tables
from .diff_pairs import pair_images
from .diff_result import DiffResult, ImageDiff, compare_arrays, level_order, worst_level
from .overview import overview_png

__all__ = ["diff_extractions", "short_names"]

log = logging.getLogger(__name__)


def _geometry(ex: LoadedExtraction) -> dict:
    """The sizes that must agree. Not the padded size: only valid regions are compared, so an
    ``extract --canvas`` output compares with a single-image one (the difference near the right
    and bottom edge is what the canvas changes)."""
    pre = ex.manifest.get("preprocess", {})
    inp = ex.manifest.get("input", {})
    return {
        "input": (inp.get("width"), inp.get("height")),
        "resized": (pre.get("resized_width"), pre.get("resized_height")),
    }


def _geometry_mismatch(a: LoadedExtraction, b: LoadedExtraction, levels: list[str]) -> str | None:
    ga, gb = _geometry(a), _geometry(b)
    for what in ga:
        if ga[what] != gb[what]:
            return f"geometry differs: {what} size {ga[what]} in A, {gb[what]} in B"
    for name in levels:
        sa, sb = a.valid(name).shape, b.valid(name).shape
        if sa != sb:
            return f"geometry differs: {name} valid shape {sa} in A, {sb} in B"
    return None


def short_names(a: str | Path, b: str | Path) -> tuple[str, str]:
    """Names for roots ``a`` and ``b`` in a picture's title: their last path components, as
    many as it takes to tell them apart (at most three): ``out``, ``out2``; ``out/chelsea``,
    ``out2/chelsea``. A URL is split at its slashes as a path is."""
    parts_a = [p for p in str(a).rstrip("/").split("/") if p]
    parts_b = [p for p in str(b).rstrip("/").split("/") if p]
    for count in (1, 2, 3):
        name_a, name_b = "/".join(parts_a[-count:]), "/".join(parts_b[-count:])
        if name_a != name_b:
            break
    return name_a or str(a), name_b or str(b)


def _random_note(a: LoadedExtraction, b: LoadedExtraction) -> str:
    """The red line of a diff picture where A or B (named) was made with random weights, as every
    picture made with them carries; "" where neither was."""
    sides = [side for side, ex in (("A", a), ("B", b)) if ex.random_weights]
    return f"{RANDOM_NOTE} ({' and '.join(sides)})" if sides else ""


def _compare_one(key, found_a, key_a, found_b, key_b, levels, out, cmap,
                 names, folder) -> ImageDiff:  # fmt: skip
    """One image compared; its picture, when ``out`` is given, at ``out/folder/diff.png``
    (``folder``: ``picture_folders``' for ``key``)."""
    result = ImageDiff(key)
    if key_a is None or key_b is None:
        result.skipped = f"only in {'B' if key_a is None else 'A'}"
        return result
    loaded = []
    for side, found, side_key in (("A", found_a, key_a), ("B", found_b, key_b)):
        try:
            loaded.append(found.load(side_key))
        except (ValueError, OSError) as e:  # this image only: reported, the others compared
            result.skipped = f"cannot be read in {side}: {error_text(e)}"
            return result
    a, b = loaded
    unloaded = [f"{name}: its .npy is missing or unreadable in {side}"
                for side, ex in (("A", a), ("B", b)) for name in ex.unloaded()
                if levels is None or name in levels]  # fmt: skip
    if unloaded:  # never a pass with a level silently left out
        result.skipped = "; ".join(unloaded)
        return result
    if levels is not None:  # a level asked for by name is compared, or the image fails
        absent = [f"{name}: not saved (as .npy) in {side}" for name in levels
                  for side, ex in (("A", a), ("B", b)) if name not in ex.levels]  # fmt: skip
        if absent:
            result.skipped = "; ".join(absent)
            return result
    else:  # every level in both, and the others named (the CLI says which were left out)
        result.one_side = {name: side for side, ex, other in (("A", a, b), ("B", b, a))
                           for name in ex.levels if name not in other.levels}  # fmt: skip
    common = [n for n in a.levels if n in b.levels and (levels is None or n in levels)]
    if not common:
        result.skipped = "no level saved (as .npy) in both"
        return result
    mismatch = _geometry_mismatch(a, b, common)
    if mismatch:
        result.skipped = mismatch
        return result
    panels = []
    for name in sorted(common, key=level_order):
        va, vb = a.valid(name), b.valid(name)
        result.levels.append(compare_arrays(va, vb, name))
        if out is not None:
            with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: NaN, said above
                absdiff = np.abs(va[0].astype(np.float32) - vb[0].astype(np.float32)).max(axis=0)
            panel = {"name": f"|A-B| {name}", "map": absdiff, "stride": a.stride(name),
                     "shape": tuple(a.levels[name].shape)}  # fmt: skip
            if not absdiff.any():  # identical: the colour of 0, not a constant map's middle
                panel["range"] = (0.0, 1.0)
            panels.append(panel)
    if out is not None:
        image = a.image if a.image is not None else np.full((64, 96, 3), 255, np.uint8)
        worst = worst_level(result.levels).max_rel
        title = (f"{key}: max over channels of |A - B|, A = {names[0]}, B = {names[1]}, "
                 f"worst max_rel {worst:.3g}")  # fmt: skip
        png = overview_png(image, panels, cmap=cmap, title=title, note=_random_note(a, b),
                           span_input=a.image is not None)  # fmt: skip
        target = out / folder / "diff.png"
        link = linked_folder(target.parent, out)  # OUT/c -> ../elsewhere: this picture only
        if link is not None:
            result.picture_error = (
                f"{folder}/diff.png not written: {Path(os.path.relpath(link, out)).as_posix()} "
                "in the output folder is a symlink, never written through"
            )
            return result
        if not target.resolve().is_relative_to(out.resolve()):  # a key with ..
            raise ValueError(
                f"the diff picture of {key!r} would be written outside {out} "
                f"({target.resolve()}): not written"
            )
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(target, png)
        except OSError as e:  # this picture only (keys x and x/diff.png): said, the rest written
            if is_disk_full(e):  # no other picture or table would fit either
                raise
            result.picture_error = f"{folder}/diff.png not written: {error_text(e)}"
            return result
        result.picture = f"{folder}/diff.png"
    return result


def diff_extractions(
    a: str | Path,
    b: str | Path,
    *,
    tol: float = 1e-4,
    levels: list[str] | None = None,
    out: str | Path | None = None,
    cmap: str = "magma",
) -> DiffResult:
    """Compare two extractions (two image folders, or two output roots of the same inputs),
    image by image (by key: the image's path below its root). Either root may be a folder of
    image folders or the output of a ``--format wds`` run (tar shards; a folder or a URL); one
    image at a time is read. An image missing on one side, or whose outputs cannot be read
    there (a malformed manifest, a truncated ``.npy``, a damaged shard), is reported with the
    reason (``ImageDiff.skipped``) and the others are still compared.

    Args:
        a: the reference extraction.
        b: the one compared with it.
        tol: the largest ``max_rel`` that counts as agreement.
        levels: restrict to these levels, each of which must be saved (as ``.npy``) on both
            sides, or the image is not compared (``skipped`` says which side lacks it). Default:
            every level saved in both; those saved on one side only are named in
            ``ImageDiff.one_side``.
        out: where to write ``diff.json``, ``diff.csv`` and one ``KEY/diff.png`` per image (the
            per-level max over channels of |A - B|; ``_diff.csv/diff.png`` for an image called
            ``diff.csv``, ``__diff.csv/diff.png`` if an image is called ``_diff.csv`` too);
            None writes nothing. A picture that cannot be written (an image's
            key is a folder of another's picture path: ``x`` and ``x/diff.png``; a folder in ``out``
            that is a symlink, never written through) is said in ``ImageDiff.picture_error``;
            that image is still compared, the others drawn.

    Raises:
        FileNotFoundError: a root that does not exist or holds no extraction.
        ValueError: a picture that would land outside ``out`` (a key with ``..``); nothing
            is written there. An ``out`` diff may not write into (``check_out_folder``: not
            diff's, or its ``diff.json`` or ``diff.csv`` not a regular file): nothing is
            compared nor written.
    """
    # a quoted '~/feats' is the home folder's, as every path fpncli takes (a URL as it is)
    a, b = (root if "://" in str(root) else os.path.expanduser(root) for root in (a, b))
    for root in (a, b):
        if "://" not in str(root) and not Path(root).is_dir():
            raise FileNotFoundError(f"no such extraction folder: {root}")
    found_a, found_b = open_extractions(a), open_extractions(b)
    for root, found in ((a, found_a), (b, found_b)):
        if not found.keys():  # e.g. a folder of photos given instead of their extraction
            raise FileNotFoundError(
                f"{root} holds no complete extraction (manifest.json, or index.parquet)"
            )
        # an output written before extract refused to mix formats: its image folders are not read
        warn_image_folders_left_out(root, found.format)
    out_dir = Path(out).expanduser() if out is not None else None
    if out_dir is not None:  # before any picture is written
        check_out_folder(out_dir)
        make_marked_folder(out_dir, DIFF_MARKER)  # a later extract never reads its pictures
    pairs = pair_images(found_a, found_b)
    names = short_names(a, b)
    folders = picture_folders([p.key for p in pairs])  # an image called diff.csv: not there
    images = []
    for key, key_a, key_b, note in pairs:
        image = _compare_one(key, found_a, key_a, found_b, key_b, levels, out_dir, cmap, names,
                             folders[key])  # fmt: skip
        image.note = note
        images.append(image)
    images.sort(key=lambda i: i.key)
    result = DiffResult(str(a), str(b), tol, images)
    if out_dir is not None:
        write_tables(result, out_dir)
    log.info("diff %s %s: %d images, %d compared", a, b, len(images), len(result.compared))
    return result
