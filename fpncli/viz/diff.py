"""Two extractions of the same images compared per image and level (``fpncli diff A B``).

For every image present in both and every level saved in both, on the valid region only (padded
cells are not image):

- ``max_rel``  = max|A - B| / max|A|      (the project's parity measure, as ``scripts/parity.py``)
- ``mean_rel`` = mean|A - B| / mean|A|
- ``cosine``   = <A, B> / (|A| |B|) over the whole (C, h, w) tensor flattened
- ``max_abs``  = max|A - B|

A is the reference. Images whose geometry differs (input size, resize, valid level shapes) are
reported, not compared; images found on one side only are listed. The padded size may differ (an
``extract --canvas`` output against a single-image one). Numpy and OpenCV only.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from ..io.atomic import TMP_MARK
from ..io.catalog import Extractions, open_extractions
from ..io.extraction import LoadedExtraction
from ..io.formats import warn_image_folders_left_out
from ..io.guard import (
    DIFF_MARKER,
    _kind,
    error_text,
    is_disk_full,
    linked_folder,
    make_marked_folder,
    read_json_file,
    utf8_text,
)
from ..io.inputs import fitted_name
from ..io.outputs import RANDOM_NOTE, atomic_write_bytes
from .overview import overview_png

__all__ = [
    "LevelDiff", "ImageDiff", "DiffResult", "compare_arrays", "diff_extractions", "write_tables",
    "short_names", "worst_level", "check_out_folder", "check_table_targets",
]  # fmt: skip

log = logging.getLogger(__name__)
_TABLES = ("diff.json", "diff.csv")  # written into the output folder beside the pictures


@dataclass(frozen=True)
class LevelDiff:
    """One level of one image: A (reference) against B."""

    level: str
    max_rel: float
    mean_rel: float
    cosine: float
    max_abs: float


@dataclass
class ImageDiff:
    """One image: its levels compared, or why it was not."""

    key: str  # the image folder relative to the roots
    levels: list[LevelDiff] = field(default_factory=list)
    skipped: str | None = None  # why not compared (geometry, one side lacks or cannot read it)
    picture: str | None = None  # the |A - B| picture, relative to the diff output folder
    # without --levels, the levels saved (as .npy) on one side only, not compared: name -> side
    one_side: dict[str, str] = field(default_factory=dict)
    # why its picture could not be written (compared all the same): another image's picture
    # or folder where it goes (keys x and x/diff.png), a folder that cannot be written or is
    # a symlink (never written through)
    picture_error: str | None = None

    def agrees(self, tol: float) -> bool:
        return self.skipped is None and all(d.max_rel <= tol for d in self.levels)


def worst_level(levels: list[LevelDiff]) -> LevelDiff:
    """The level that differs most: one whose ``max_rel`` is NaN (a NaN in A or B: nothing
    agrees there) before any number, else the largest ``max_rel``. ``max`` alone compares NaN
    as neither larger nor smaller, so it named whichever level came first."""
    return max(levels, key=lambda d: (math.isnan(d.max_rel), 0.0 if math.isnan(d.max_rel)
                                      else d.max_rel))  # fmt: skip


def _highest(values: list[float]) -> float:
    """The largest of ``values``, NaN if any is (as ``worst_level``)."""
    return math.nan if any(math.isnan(v) for v in values) else max(values)


def _lowest(values: list[float]) -> float:
    """The smallest of ``values``, NaN if any is (the worst cosine)."""
    return math.nan if any(math.isnan(v) for v in values) else min(values)


@dataclass
class DiffResult:
    """Every image of the two roots; ``agree`` says whether all compared within ``tol``."""

    a: str
    b: str
    tol: float
    images: list[ImageDiff]

    @property
    def compared(self) -> list[ImageDiff]:
        return [i for i in self.images if i.skipped is None]

    @property
    def agree(self) -> bool:
        return bool(self.images) and all(i.agrees(self.tol) for i in self.images)

    def one_side(self) -> dict[str, list[str]]:
        """Side ("A" or "B") -> the levels saved there only, in some image (a run
        without ``levels``: they were left out of the comparison)."""
        sides: dict[str, set[str]] = {}
        for image in self.images:
            for name, side in image.one_side.items():
                sides.setdefault(side, set()).add(name)
        return {side: sorted(names, key=_level_order) for side, names in sorted(sides.items())}

    def level_table(self) -> list[dict]:
        """Per level across the folder: worst max_rel, mean of mean_rel, lowest cosine."""
        rows = []
        names = sorted({d.level for i in self.compared for d in i.levels}, key=_level_order)
        for name in names:
            diffs = [d for i in self.compared for d in i.levels if d.level == name]
            rows.append({
                "level": name, "images": len(diffs),
                "max_rel": _highest([d.max_rel for d in diffs]),
                "mean_rel": float(np.mean([d.mean_rel for d in diffs])),
                "min_cosine": _lowest([d.cosine for d in diffs]),
                "max_abs": _highest([d.max_abs for d in diffs]),
                "within_tol": sum(d.max_rel <= self.tol for d in diffs),
            })  # fmt: skip
        return rows

    def to_json(self) -> dict:
        return {
            "a": self.a, "b": self.b, "tol": self.tol, "agree": self.agree,
            "levels": self.level_table(), "images": [asdict(i) for i in self.images],
        }  # fmt: skip


def _level_order(name: str) -> tuple[int, str]:
    order = ("stem", "res2", "res3", "res4", "res5", "p2", "p3", "p4", "p5", "p6")
    return (order.index(name) if name in order else len(order), name)


def _ratio(num: float, den: float) -> float:
    """``num / den`` (NaN for inf / inf); NaN where either is NaN (a NaN in A, the reference,
    is no infinite difference); 0 for 0 / 0, infinity for more than 0 / 0."""
    if math.isnan(num) or math.isnan(den):
        return math.nan
    if den > 0:
        return num / den
    return 0.0 if num == 0 else math.inf


def compare_arrays(a: np.ndarray, b: np.ndarray, level: str = "") -> LevelDiff:
    """Compare two equally shaped arrays (any float dtype; computed in float64). Where both
    hold the same NaN or infinity (what ``--dtype float16`` stores past 65504) they agree, and
    the rest is compared; a NaN or an infinity in one only gives NaN measures where they are
    undefined, without numpy's warnings (inf - inf, inf / inf)."""
    if a.shape != b.shape:
        raise ValueError(f"{level or 'arrays'}: shapes differ, {a.shape} against {b.shape}")
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    with np.errstate(invalid="ignore"):
        both = ~np.isfinite(x) & ((x == y) | (np.isnan(x) & np.isnan(y)))
    if both.any():  # the same non-finite value on both sides: agreed, and left out
        x, y = x[~both], y[~both]
    if x.size == 0:
        return LevelDiff(level, 0.0, 0.0, 1.0, 0.0)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        abs_diff = np.abs(x - y)
        abs_x = np.abs(x)
        norms = float(np.linalg.norm(x) * np.linalg.norm(y))
        if not math.isfinite(norms):  # a NaN or an infinity in A or B: no angle to measure
            cosine = math.nan  # (not 0, "orthogonal")
        elif norms > 0:
            cosine = float(np.dot(x, y) / norms)
        else:  # both zero: identical; one zero: undefined, call it 0
            cosine = 1.0 if not abs_diff.any() else 0.0
        max_abs = float(abs_diff.max())
        max_rel = _ratio(max_abs, float(abs_x.max()))
        mean_rel = _ratio(float(abs_diff.mean()), float(abs_x.mean()))
    return LevelDiff(level, max_rel, mean_rel, cosine, max_abs)


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


def _canonical(found: Extractions, other: Extractions) -> dict[str, str]:
    """Each image key of ``found`` -> the key it is matched by. A folder output against a
    ``--format wds`` one: the folder's keys as wds names them (``shards.wds_key``: ``b.v1`` is
    ``b%2Ev1`` in the shards), or as earlier versions did where ``other`` has that key instead
    (dots became ``_``: ``b_v1``)."""
    keys = found.keys()
    if found.format == other.format or found.format == "wds":
        return {k: k for k in keys}
    from ..io.shards import wds_key

    theirs = set(other.keys())

    def key(k: str) -> str:
        new = wds_key(k)
        old = "/".join(utf8_text(p).replace(".", "_") for p in PurePosixPath(k).parts)
        return old if new not in theirs and old in theirs else new

    return {k: key(k) for k in keys}


def _pair(found_a: Extractions, found_b: Extractions) -> list[tuple[str, str | None, str | None]]:
    """(key, key in A, key in B) for every image of either root, in an order that reads each
    side's shards one after the other (A's storage order, then B's): a shard's member table is
    built once, not once per image."""
    keys_a, keys_b = found_a.keys(), found_b.keys()
    if found_a.single or found_b.single:  # an image folder against one image of the other side
        single = keys_a[0] if found_a.single else keys_b[0]
        other = keys_b if found_a.single else keys_a
        match = other[0] if len(other) == 1 else (single if single in other else None)
        return [(single, single, match) if found_a.single else (single, match, single)]
    canon_a, canon_b = _canonical(found_a, found_b), _canonical(found_b, found_a)
    b_of = {canon_b[k]: k for k in keys_b}
    rank_b = {k: i for i, k in enumerate(keys_b)}
    matched_b = set()
    pairs = []
    for k in keys_a:
        kb = b_of.get(canon_a[k])
        matched_b.add(kb)
        pairs.append((k, k, kb))
    if found_a.format == "wds":  # A shard by shard, and within one B's shards one by one
        shard_a = {k: found_a.shard(k) for k in keys_a}
        pairs.sort(key=lambda p: (shard_a[p[0]], rank_b.get(p[2], -1)))
    elif found_b.format == "wds":
        pairs.sort(key=lambda p: rank_b.get(p[2], -1))
    pairs += [(k, None, k) for k in keys_b if k not in matched_b]
    return pairs


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


def _picture_folders(keys: list[str]) -> dict[str, str]:
    """Each key -> the folder of its picture below the diff output folder: the key itself, but
    an image called like a table (``diff.csv``, any case) moves to ``_diff.csv``, with as many
    ``_`` more as it takes to be no other key's folder (beside an image called ``_diff.csv``,
    ``diff.csv``'s goes to ``__diff.csv``); a part of it over 255 bytes is cut short with a
    hash of the whole part (``inputs.fitted_name``). Chosen for all keys at once, in sorted
    order, so a key's folder never depends on the order the images are compared in."""
    tops = {k.partition("/")[0] for k in keys}
    taken = {t.casefold() for t in tops} | set(_TABLES)  # casefold: a case-insensitive disk
    moved = {}
    for top in sorted(t for t in tops if t.casefold() in _TABLES):
        new = f"_{top}"
        while new.casefold() in taken:
            new = f"_{new}"
        taken.add(new.casefold())
        moved[top] = new
    folders = {}
    for k in keys:
        top, sep, rest = k.partition("/")
        folder = f"{moved[top]}{sep}{rest}" if top in moved else k
        # a wds key spells each dot %2E: a 243-byte photo name made a 500-byte folder name
        # (ENAMETOOLONG); each part over NAME_MAX is cut short with a hash, as extract's are
        folders[k] = "/".join(fitted_name(part) for part in folder.split("/"))
    return folders


def _random_note(a: LoadedExtraction, b: LoadedExtraction) -> str:
    """The red line of a diff picture where A or B (named) was made with random weights, as every
    picture made with them carries; "" where neither was."""
    sides = [side for side, ex in (("A", a), ("B", b)) if ex.random_weights]
    return f"{RANDOM_NOTE} ({' and '.join(sides)})" if sides else ""


def _compare_one(key, found_a, key_a, found_b, key_b, levels, out, cmap,
                 names, folder) -> ImageDiff:  # fmt: skip
    """One image compared; its picture, when ``out`` is given, at ``out/folder/diff.png``
    (``folder``: ``_picture_folders``' for ``key``)."""
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
    for name in sorted(common, key=_level_order):
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
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:  # before any picture is written
        check_out_folder(out_dir)
        make_marked_folder(out_dir, DIFF_MARKER)  # a later extract never reads its pictures
    pairs = _pair(found_a, found_b)
    names = short_names(a, b)
    folders = _picture_folders([k for k, _, _ in pairs])  # an image called diff.csv: not there
    images = [_compare_one(k, found_a, ka, found_b, kb, levels, out_dir, cmap, names, folders[k])
              for k, ka, kb in pairs]  # fmt: skip
    images.sort(key=lambda i: i.key)
    result = DiffResult(str(a), str(b), tol, images)
    if out_dir is not None:
        write_tables(result, out_dir)
    log.info("diff %s %s: %d images, %d compared", a, b, len(images), len(result.compared))
    return result


def check_out_folder(out: str | Path) -> None:
    """Refuse an output folder diff may not write into: one whose tables cannot be written
    (``check_table_targets``), or one that is there, not empty and not diff's: neither marked
    by diff (``DIFF_MARKER``) nor an earlier version's output (``_earlier_output``). Its pictures
    would go among files that are not diff's: a user's own ``KEY/diff.png`` written over, and
    the pictures taken for photos by a later extract of that folder. Called before anything is
    compared, so nothing is written.

    Raises:
        ValueError: one line naming the folder and what to do.
    """
    check_table_targets(out)
    try:
        names = os.listdir(out)
    except OSError:  # not there yet (made), or said when it is written (a file, no permission)
        return
    if names and DIFF_MARKER not in names and not _earlier_output(Path(out)):
        raise ValueError(
            f"{out} holds files diff did not write: give a new or empty output folder (-o), "
            "or one diff wrote before"
        )


def _earlier_output(out: Path) -> bool:
    """Whether ``out`` (not marked) is an earlier version's diff output: its ``diff.json`` is
    diff's table, and everything else is ``diff.csv`` or a picture folder holding only
    ``diff.png`` files (any deeper, for keys with a ``/``) or a write's temporary files. A user's
    own ``diff.json`` beside their photos is not."""
    try:
        table = read_json_file(out / _TABLES[0], 1 << 30)
        if not (isinstance(table, dict) and {"a", "b", "tol", "images"} <= table.keys()):
            return False
        for entry in os.scandir(out):
            if entry.name in _TABLES or TMP_MARK in entry.name:
                continue
            if not entry.is_dir(follow_symlinks=False):
                return False
            for _, _, files in os.walk(entry.path):
                if any(f != "diff.png" and TMP_MARK not in f for f in files):
                    return False
    except (OSError, ValueError):
        return False
    return True


def check_table_targets(out: str | Path) -> None:
    """Refuse an output folder whose ``diff.json`` or ``diff.csv`` is there and is not a regular
    file (a folder, such as an extraction of an image ``diff.json.png`` written there; a
    symlink; a FIFO): the tables could not replace it. Called before anything is compared, so
    nothing is written (the pictures were, and then the tables failed on a temporary file's
    rename).

    Raises:
        ValueError: one line naming the path and what to do.
    """
    for name in _TABLES:
        path = Path(out) / name
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            continue
        except NotADirectoryError:  # out is a file: said when the folder is made
            return
        if not stat.S_ISREG(mode):
            raise ValueError(
                f"{path} is {_kind(mode)}, not a file: the diff tables cannot be written there; "
                "give another output folder (-o)"
            )


def write_tables(result: DiffResult, out: str | Path) -> None:
    """``OUT/diff.json`` (everything) and ``OUT/diff.csv`` (one row per image and level, and one
    with no level saying why for an image not compared or whose picture was not written).

    ``diff.json`` is strict JSON (RFC 8259): a measure that is not a finite number (NaN where
    A or B holds one, ``max_rel`` infinite where A is zero and B is not) is written as the
    string ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``, which ``float()`` reads back; the CSV
    writes ``nan``, ``inf``."""
    out = Path(out)
    check_table_targets(out)
    make_marked_folder(out, DIFF_MARKER)  # (--no-pictures: the CLI checked check_out_folder)
    json_name, csv_name = _TABLES
    data = json.dumps(_strict(result.to_json()), indent=2, allow_nan=False)
    atomic_write_bytes(out / json_name, data.encode())
    atomic_write_bytes(out / csv_name, utf8_text(_csv(result)).encode())


def _strict(value):
    """``value`` with every float that JSON cannot hold (NaN, infinities) as a string."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def _csv(result: DiffResult) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["image", "level", "max_rel", "mean_rel", "cosine", "max_abs", "note"])
    for image in result.images:
        if image.skipped:
            writer.writerow([image.key, "", "", "", "", "", image.skipped])
        if image.picture_error:  # compared, but its picture is missing: said as diff.json does
            writer.writerow([image.key, "", "", "", "", "", image.picture_error])
        for d in image.levels:
            note = "" if d.max_rel <= result.tol else f"above tol {result.tol:g}"
            writer.writerow([image.key, d.level, f"{d.max_rel:.6g}", f"{d.mean_rel:.6g}",
                             f"{d.cosine:.8f}", f"{d.max_abs:.6g}", note])  # fmt: skip
    return buffer.getvalue()
