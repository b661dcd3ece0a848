"""Each input image's output folder, named (``plan_jobs``): mirroring its path below its root,
never two images in one folder, never a name fpncli writes at the top of an output
(``RESERVED_NAMES``), never a name too long for the file system (``fitted_name``); and the name
``show`` gives a photo's picture by the same rule (``image_stem``).
"""

from __future__ import annotations

import bisect
import hashlib
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .markers import OUTPUT_MARKER
from .pillow_open import pillow_extensions
from .run_log import RUN_LOG, SHARD_RUN_LOG

__all__ = [
    "Job", "plan_jobs", "image_stem", "fitted_name", "NAME_MAX_BYTES", "RESERVED_NAMES",
    "RUN_LOCKS", "is_reserved_name",
]  # fmt: skip


@dataclass(frozen=True)
class Job:
    """One image to extract: where it is read from and the folder its outputs go to."""

    path: Path
    folder: Path


#: The lock file a live run of each format holds in its output folder (``io.formats.FormatLock``):
#: empty, it carries no state.
RUN_LOCKS = {"files": ".fpncli-files.run", "wds": ".fpncli-wds.run"}
#: What fpncli writes at the top of an output folder (``viz.report``'s page and asset folder,
#: ``io.extraction``'s run log, ``io.shards``' index and marker, ``io.shardlock``'s claims and
#: lock, the output marker, the runs' format locks): no image's folder takes these names, nor a
#: shard's run log's. ``.fpncli-format`` is the format marker a few earlier versions wrote: no
#: longer read, and still reserved, so that nothing takes one an output holds for an image's.
RESERVED_NAMES = frozenset({
    "report", "report.html", RUN_LOG, "index.parquet", "_index", "_claims",
    ".fpncli-wds.lock", ".fpncli-wds", OUTPUT_MARKER, *RUN_LOCKS.values(), ".fpncli-format",
})  # fmt: skip


def is_reserved_name(folder: Path) -> bool:
    """Whether ``folder`` (relative to OUT) is a name fpncli writes at the top of OUT."""
    name = str(folder).casefold()
    return "/" not in name and (name in RESERVED_NAMES or bool(SHARD_RUN_LOG.match(name)))


#: The longest file name, in bytes, that Linux file systems take (ext4, XFS, Btrfs and most others).
NAME_MAX_BYTES = 255


def fitted_name(name: str, suffix: str = "") -> str:
    """``name + suffix``, or where that is over ``NAME_MAX_BYTES`` bytes, ``name`` cut short (at
    a character: UTF-8 stays valid, a name's bytes that are not UTF-8 stay theirs) and followed
    by ``~`` and 8 hex digits of a hash of the whole ``name``, then ``suffix``: one file name
    that fits, and names that differ past the cut still differ."""
    whole = os.fsencode(name + suffix)
    if len(whole) <= NAME_MAX_BYTES:
        return name + suffix
    tail = f"~{hashlib.sha256(os.fsencode(name)).hexdigest()[:8]}{suffix}"
    room = NAME_MAX_BYTES - len(os.fsencode(tail))
    cut, used = 0, 0
    for char in name:
        size = len(os.fsencode(char))
        if used + size > room:
            break
        cut, used = cut + 1, used + size
    return name[:cut] + tail


def _suffixed_stem(path: Path) -> str:
    """``a.PNG`` -> ``a_png``: the name of an image whose stem another image shares."""
    return f"{path.stem}_{path.suffix.lstrip('.').lower()}"


#: What ``plan_jobs`` may add to an image's stem (``_jpg``, ``_2``, ``_jpg_2``), loosely: only an
#: image whose stem is another's with such an ending can take a name the other could get
_NAME_ENDING = re.compile(r"_[^_]+(?:_[0-9]+)?")


def _names_in_reach(names: set[str], name: str) -> set[str]:
    """``name`` and those of ``names`` (files of its folder) that ``plan_jobs`` names in reach
    of it: whose stems (case-folded) are its stem with a ``_NAME_ENDING`` or it theirs, and so
    on from each (``a.jpg``, ``a.png``, ``a_jpg.png``, ``a_jpg_2.tif``; not ``a_b_c.png``), and
    ``..png`` (the stem ``.``: it changes how others are named). Over these alone plan_jobs
    names ``name`` as over all ``names``: no other can take a name one of them could get. A
    folder of 100,000 photos (``IMG_0001.jpg``...) is thus not all named to draw one."""
    by_stem: dict[str, list[str]] = {}
    for other in names:
        by_stem.setdefault(Path(other).stem.casefold(), []).append(other)
    stems = sorted(by_stem)
    reached: set[str] = set()
    todo = [Path(name).stem.casefold(), "."]
    while todo:
        stem = todo.pop()
        if stem in reached:
            continue
        reached.add(stem)
        i = bisect.bisect_left(stems, stem + "_")  # longer: stem_X, stem_X_N
        while i < len(stems) and stems[i].startswith(stem + "_"):
            if _NAME_ENDING.fullmatch(stems[i], len(stem)):
                todo.append(stems[i])
            i += 1
        for cut in (1, 2):  # shorter: stem without its _X or its _X_N
            shorter = stem.rsplit("_", cut)[0]
            if shorter in by_stem and _NAME_ENDING.fullmatch(stem, len(shorter)):
                todo.append(shorter)
    return {other for stem in reached for other in by_stem.get(stem, ())} | {name}


def image_stem(path: Path) -> str:
    """The name of the image ``path`` drawn on its own (``show``'s ``fpn_show_NAME``): the name
    ``plan_jobs`` gives its output folder among the files of its folder that fpncli reads as
    images (an extension Pillow reads; hidden ones too: show draws a file it is given). That
    is its stem; where another of them has the same stem (case-folded), its stem and extension
    (``a_jpg``, ``a_png``), numbered in sorted order (the folder walk's) where those are the
    same too (``a.JPG`` and ``a.jpg``: ``a_jpg`` and ``a_jpg_2``) or another image's stem
    (``a_jpg.png`` beside them: ``a_jpg_3``). So no two images of a folder share a picture. In
    a folder that cannot be listed (its other images unseen), always its stem and extension:
    ``a.jpg`` and ``a.png`` there still get two pictures."""
    extensions = pillow_extensions()
    # every stem in reach begins as this one's does, up to its first "_" (and "..png")
    begins = (path.stem.casefold().split("_", 1)[0], "..")
    try:
        with os.scandir(path.parent) as entries:  # (the parent of "a.jpg" is ".")
            names = {e.name for e in entries if e.name.casefold().startswith(begins)
                     and Path(e.name).suffix.lower() in extensions and e.is_file()}  # fmt: skip
    except OSError:  # no permission to list the folder: the clashes cannot be seen
        return _suffixed_stem(path)
    # named as in a folder below OUT's top (_/), where no name is kept for fpncli's own files
    # (report.jpg is "report", not "report_2"): the picture goes to the current folder, no output
    below = Path("_")
    pairs = [(below / name, Path()) for name in sorted(_names_in_reach(names, path.name))]
    return next(job.folder.name for job in plan_jobs(pairs, Path()) if job.path.name == path.name)


def plan_jobs(pairs: list[tuple[Path, Path]], out_dir: Path, *,
              exists: Callable[[Path], bool] | None = None) -> list[Job]:  # fmt: skip
    """Give every image its own output folder, mirroring its path below its root.

    ``root/sub/a.jpg`` goes to ``out_dir/sub/a``, paths compared with ``..`` folded (lexically,
    as ``os.path.abspath`` does), so every folder lies below ``out_dir``; an image that is not
    below its root goes to its name alone. Where two images would share a folder, those
    in the same source folder with the same stem (``a.jpg`` and ``a.png``) use ``a_jpg`` and
    ``a_png`` (with ``exists``, only the images it finds count: a typo in a list renames no
    other); any remaining clash (the same relative path under two roots) gets ``_2``, ``_3``
    in input order. Names that differ only in case count as the same (``A.PNG`` and ``a.jpg``
    become ``A_png`` and ``a_jpg``), as they are on case-insensitive file systems. The names
    fpncli writes at the top of OUT (``RESERVED_NAMES``: ``report.jpg`` would be ``report``)
    count as taken: ``report_2``, and so do those it writes in an image's folder, for a folder
    below another image's (with ``a.jpg``, ``a/p2.npy.jpg`` goes to ``a/p2.npy_2``, not to the
    folder named as ``a``'s P2 file), that folder as it is finally named (with ``x.png`` and
    ``x.jpg``, ``x_png/p2.npy.png`` goes to ``x_png/p2.npy_2``; earlier versions named it
    ``x_png/p2.npy`` in a run that wrote no ``.npy``, a folder now left behind, the image redone
    into ``x_png/p2.npy_2``): folders are named shallowest first, so an image's folder is final
    before any below it is named. ``..png`` and ``...png`` go to ``._png`` and ``.._png`` (their
    stems would be OUT and its parent). A name over 255 bytes (a long stem with ``_png`` or
    ``_2`` added) is cut short with a hash of the whole name (``fitted_name``).
    """
    from .outputs import is_output_name

    rels = []
    for image, root in pairs:
        # Lexically normalised (os.path.abspath folds "x/.."): a ".." in an input's name must
        # neither lead out of OUT (../data/a.jpg to OUT/../data/a) nor hide that two images
        # share a folder (b/a.jpg and x/../b/a.png both in OUT/b/a).
        image_path = Path(os.path.abspath(image))
        try:
            rel = image_path.relative_to(os.path.abspath(root))
        except ValueError:  # not below its root (a glob's "*/../.."): its name alone
            rel = Path(image_path.name)
        rels.append(rel)

    # Folder names are compared case-folded: on a case-insensitive file system (macOS, Windows)
    # A.PNG and a.jpg would otherwise share one folder.
    def fold(path: Path) -> str:
        return str(path).casefold()

    shares = [(os.path.abspath(img.parent), fold(rel.parent / rel.stem))
              for (img, _), rel in zip(pairs, rels)]  # fmt: skip
    stems = Counter(shares)
    # the folders as named before any renaming, which earlier versions kept names off (their
    # folders keep their names), and the final ones (``used``)
    unrenamed = {folded for _, folded in stems}
    # an image that is no file (a typo in a --from-list, a listed folder: it fails) renames no
    # other: where a stem is shared, only the images ``exists`` finds count (a stat for those)
    shared = {share for share, count in stems.items() if count > 1}
    if exists is not None and shared:
        stems = Counter(share for (img, _), share in zip(pairs, shares)
                        if share not in shared or exists(img))  # fmt: skip
    used: set[str] = set()

    def taken(folder: Path) -> bool:
        parent = fold(folder.parent)
        return (fold(folder) in used or is_reserved_name(folder) or (
            is_output_name(folder.name) and (parent in used or parent in unrenamed)))  # fmt: skip

    # Shallowest first (a stable sort: input order within a depth): a folder's parent, a
    # level up, is then named for good when the folder is checked against its file names. The
    # names a folder is checked against lie at its own depth, so the order within a depth is
    # all that decides who gets "_2", as before.
    folders: list[Path] = [Path()] * len(pairs)
    # each name -> the number its last "_N" took: those below stay taken (``used`` only grows),
    # so the next image of that name starts there (a thousand a.jpg: not half a million tries)
    numbered: dict[Path, int] = {}
    for i in sorted(range(len(pairs)), key=lambda i: len(rels[i].parts)):
        image, rel = pairs[i][0], rels[i]
        name = rel.stem
        # "..png" and "...png" have the stems "." and "..": OUT itself and the folder above it
        dots = name in (".", "..")
        if dots or stems[(os.path.abspath(image.parent), fold(rel.parent / rel.stem))] > 1:
            name = _suffixed_stem(rel)
        key = rel.parent / name
        n = numbered.get(key, 1)
        candidate = rel.parent / fitted_name(name, f"_{n}" if n > 1 else "")
        while taken(candidate):
            n += 1
            candidate = rel.parent / fitted_name(name, f"_{n}")
        numbered[key] = n
        used.add(fold(candidate))
        folders[i] = candidate
    return [Job(image, out_dir / folder) for (image, _), folder in zip(pairs, folders)]
