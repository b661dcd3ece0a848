"""Turning command-line inputs into jobs: files, folders, globs and lists; output folders.

The order is deterministic and output folders never collide, so a re-run of the same command
(resume) and every shard of a split run (``--shard I/N``, torchrun's ``RANK``/``WORLD_SIZE``) see
the same list.
"""

from __future__ import annotations

import bisect
import glob
import hashlib
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .guard import open_regular
from .markers import OUTPUT_MARKER, is_marked, marked_root
from .pillow_open import pillow_extensions
from .run_log import RUN_LOG, SHARD_RUN_LOG

__all__ = [
    "IMAGE_EXTENSIONS",
    "Job",
    "discover_inputs",
    "image_stem",
    "output_root",
    "plan_jobs",
    "select_shard",
    "shard_from_env",
    "env_int",
]

#: The photo formats a folder walk (or a glob) takes, those of them that this Pillow decodes
#: (``pillow_open.pillow_extensions``: AVIF only where Pillow was built with it). Not every
#: format fpncli reads when a file is named or listed: a folder of photos also holds icons,
#: cursors, game textures and data files whose extensions Pillow claims (``.ico``, ``.cur``,
#: ``.dds``, ``.fit``, ``.im``, ``.rgb``), which would be extracted or fail the run.
_PHOTO_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".bmp", ".gif", ".tif", ".tiff",
     ".webp", ".avif", ".avifs", ".jp2", ".j2k", ".jpx", ".jpf", ".j2c", ".jpc", ".qoi", ".tga",
     ".psd", ".ppm", ".pgm", ".pbm", ".pnm"}
)  # fmt: skip
IMAGE_EXTENSIONS = _PHOTO_EXTENSIONS & pillow_extensions()


@dataclass(frozen=True)
class Job:
    """One image to extract: where it is read from and the folder its outputs go to."""

    path: Path
    folder: Path


def _is_image_folder(folder: Path, filenames: list[str]) -> bool:
    """Whether ``folder`` is one image's output folder (an fpncli manifest.json), marker or not."""
    if "manifest.json" not in filenames:
        return False
    try:
        with open_regular(folder / "manifest.json") as f:
            return b'"fpncli_version"' in f.read(4096)
    except (OSError, ValueError):
        return False


class _OutputFilter:
    """Tells files under an output root (marked, an old image folder, or the current ``-o``)."""

    def __init__(
        self,
        exclude: Path | None,
        skipped: set[Path] | None,
        unreadable: list[tuple[Path, str]] | None = None,
        repeated: list[tuple[Path, Path]] | None = None,
        hidden: list[tuple[Path, bool]] | None = None,
    ) -> None:
        self.exclude = Path(os.path.realpath(exclude)) if exclude is not None else None
        self.skipped = skipped if skipped is not None else set()
        self.unreadable = unreadable if unreadable is not None else []
        self.repeated = repeated if repeated is not None else []
        self.hidden = hidden if hidden is not None else []
        self.cache: dict[Path, Path | None] = {}
        self.folders: dict[Path, bool] = {}

    def root_of(self, path: Path) -> Path | None:
        """The output root ``path`` lies in (recorded as skipped), or None."""
        real = Path(os.path.realpath(path))
        root = None
        if self.exclude is not None and (real == self.exclude or self.exclude in real.parents):
            root = self.exclude
        else:
            root = marked_root(real, cache=self.cache)
        if root is None and self._image_folder(real.parent):
            root = real.parent
        if root is not None:
            self.skipped.add(root)
        return root

    def _image_folder(self, folder: Path) -> bool:
        if folder not in self.folders:
            try:
                found = (folder / "manifest.json").is_file()
            except OSError:  # e.g. a name over 255 bytes: the file is reported when read
                found = False
            self.folders[folder] = found and _is_image_folder(folder, ["manifest.json"])
        return self.folders[folder]

    def walk(self, folder: Path) -> list[Path]:
        """The images below ``folder``, in sorted order, symlinked folders followed (as
        torchvision's ``ImageFolder`` does) under the link's name. Each real folder is read once:
        a link to a folder at or below one the walk is in (an ancestor: a cycle; or its own
        subfolder) is left to the real path, and a folder met again through another link is
        passed over; both are added to ``repeated`` as ``(path, the path it is read as)``.
        Hidden folders and image files (names starting with ``.``) are passed over and added to
        ``hidden`` as ``(path, is a folder)``."""
        if self.root_of(folder) is not None:
            return []
        found, top = [], Path(folder)
        reals: dict[Path, Path] = {}  # each folder walked -> its real path
        read_as: dict[Path, Path] = {}  # each real folder walked -> the path it was read as

        def cannot_read(error: OSError) -> None:  # a folder os.walk cannot list
            self.unreadable.append((Path(error.filename or folder), error.strerror or str(error)))

        def walked_as(parent: Path, real: Path) -> Path | None:
            """Where ``real`` lies below a folder the walk is in (``parent`` or one above it)."""
            while parent in reals:
                if real.is_relative_to(reals[parent]):
                    below = real.relative_to(reals[parent])
                    if any(part.startswith(".") for part in below.parts):
                        return None  # in a hidden folder, which the walk passes over
                    return parent / below
                if parent == top:
                    break
                parent = parent.parent
            return None

        for dirpath, dirnames, filenames in os.walk(folder, onerror=cannot_read, followlinks=True):
            here = Path(dirpath)
            real_here = Path(os.path.realpath(here))
            if real_here in read_as:  # a second link to a folder already read
                self.repeated.append((here, read_as[real_here]))
                dirnames[:] = []
                continue
            reals[here], read_as[real_here] = real_here, here
            kept = []
            for d in sorted(dirnames):  # never read outputs back as inputs
                sub = here / d
                real = Path(os.path.realpath(sub))
                try:
                    link = os.path.islink(sub)
                    # where a link leads: checked as a file named there is
                    if link and self.root_of(sub) is not None:
                        continue
                    if real == self.exclude or is_marked(sub):
                        self.skipped.add(real)
                        continue
                    if d.startswith("."):  # .ipynb_checkpoints, .thumbnails, .git: copies, caches
                        self.hidden.append((sub, True))
                        continue
                    inside = (read_as.get(real) or walked_as(here, real)) if link else None
                except OSError as e:  # e.g. a folder without permission to look inside
                    self.unreadable.append((sub, e.strerror or str(e)))
                    continue
                if inside is not None:  # a cycle, a shortcut, or a folder read already
                    self.repeated.append((sub, inside))
                else:
                    kept.append(d)
            dirnames[:] = kept
            if _is_image_folder(here, filenames):
                self.skipped.add(real_here)
                continue
            for name in sorted(filenames):
                if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                    # macOS's ._photo.jpg (AppleDouble metadata), editors' temporaries
                    if name.startswith("."):
                        self.hidden.append((here / name, False))
                    else:
                        found.append(here / name)
        return found


def output_root(path: str | Path) -> Path | None:
    """The output root the file ``path`` lies in, as ``discover_inputs`` tells it (a folder at
    or above it holding the output marker, or its own folder holding an fpncli
    ``manifest.json``), resolved; None for a file that is no output (an input)."""
    return _OutputFilter(None, None).root_of(Path(path))


def _glob_base(pattern: str) -> Path:
    parts = []
    for part in Path(pattern).parts:
        if glob.has_magic(part):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def _shortened(text: str, limit: int = 80) -> str:
    """``text``, or its start and length when longer than ``limit`` characters."""
    return text if len(text) <= limit else f"{text[:limit]}\u2026 ({len(text)} characters)"


#: UTF-16's byte order marks (FF FE, FE FF) as a list read as UTF-8 (surrogateescape) begins
_UTF16_BOMS = ("\udcff\udcfe", "\udcfe\udcff")


def _utf16_nuls(line: str) -> bool:
    """Whether a list's line has the NULs of UTF-16 text read as UTF-8 (the zero byte of each
    ASCII character): on one parity of places alone, in at least half of those places (a
    binary file's NULs fall anywhere)."""
    if "\0" not in line:
        return False
    places = (line[0::2].count("\0"), line[1::2].count("\0"))
    return any(not places[1 - p] and places[p] * 2 >= len(line[p::2]) > 0 for p in (0, 1))


def discover_inputs(
    inputs: Iterable[str],
    from_list: Iterable[str] | None = None,
    *,
    exclude: Path | None = None,
    skipped: set[Path] | None = None,
    unreadable: list[tuple[Path, str]] | None = None,
    repeated: list[tuple[Path, Path]] | None = None,
    hidden: list[tuple[Path, bool]] | None = None,
    commented: list[tuple[int, str]] | None = None,
) -> list[tuple[Path, Path]]:
    """Expand files, folders (recursively), globs and list entries into ``(image, root)`` pairs.

    The order is deterministic: arguments in the order given, each folder walked in sorted order;
    an image met twice is kept once. Outputs are never taken as inputs, however they are named:
    nothing under ``exclude`` (this run's output folder), under a folder holding an output
    marker (``markers.is_marked``: an output root's, a report's pictures', diff's), or in a folder
    holding an fpncli ``manifest.json``; the
    output roots so passed over are added to ``skipped``. Special files (FIFOs, devices,
    symlink loops) named explicitly are kept, to be reported when loaded. ``root`` is what the
    output tree mirrors: the folder for a folder input, the glob's fixed prefix for a glob, the
    parent for a file, and for a list the common folder of its entries that are regular files,
    symlinks followed (of all, where none is: a missing one, a folder, a FIFO or a device, each
    failed when loaded, moves no other's folder). A list entry is its
    line without the line ending (and the first line's BOM), or without the spaces at its ends
    where no file has the name with them; blank lines and lines starting with ``#`` are skipped,
    and a ``#`` line that is the name of a file (``#1.jpg``: ``ls > list.txt``) is added to
    ``commented`` as ``(line number, name)``.
    Folders below an input that cannot be read (no permission) are passed over and added to
    ``unreadable`` with the reason. Symlinked folders below a folder input are followed, their
    images named by the link's path, and every real folder is read once: a link that leads to
    a folder at or below one being walked (a cycle, or a shortcut inside the input) is left to
    that folder's own path, and a folder met again through another link is passed over; each
    such ``(path, the path its images are read as)`` is added to ``repeated``. Below a folder
    input, hidden folders and image files (names starting with ``.``: ``.ipynb_checkpoints``,
    ``.thumbnails``, macOS's ``._photo.jpg``) are passed over and added to ``hidden`` as
    ``(path, is a folder)``; named explicitly, or listed, they are taken.

    Raises:
        ValueError: a list that looks like UTF-16 (a BOM, or UTF-16's NULs: it must be UTF-8),
            or one with a NUL byte on a line.
        FileNotFoundError: an argument that is neither a file, a folder nor a matching glob,
            an empty one (an unset shell variable must not mean the current folder), or one
            that cannot be looked up (a name over 255 bytes). A listed entry that cannot be
            looked up is kept, to be reported when loaded, as a missing one is.
    """
    outputs = _OutputFilter(exclude, skipped, unreadable, repeated, hidden)
    pairs: list[tuple[Path, Path]] = []
    for raw in inputs:
        if not str(raw).strip():
            raise FileNotFoundError(
                "an empty input path (an unset shell variable?): name a file or folder, or . "
                "for the current folder"
            )
        path = Path(raw).expanduser()
        try:
            is_dir = path.is_dir()
            exists = is_dir or path.exists() or path.is_symlink()
        except OSError as e:  # Path.is_dir raises ENAMETOOLONG (a name over 255 bytes)
            raise FileNotFoundError(
                f"cannot use the input {_shortened(raw)}: {e.strerror}"
            ) from None
        if is_dir:
            pairs += [(p, path) for p in outputs.walk(path)]
        elif exists:  # a file, a special file or a symlink loop
            if outputs.root_of(path) is None:
                pairs.append((path, path.parent))
        elif glob.has_magic(raw):
            pattern = os.path.expanduser(raw)  # a quoted '~/photos/*.jpg', as a quoted '~/photos'
            base = _glob_base(pattern)
            matches = sorted(glob.glob(pattern, recursive=True))
            if not matches:
                raise FileNotFoundError(f"no file matches {raw}")
            for match in map(Path, matches):
                if match.is_dir():
                    pairs += [(p, base) for p in outputs.walk(match)]
                elif match.suffix.lower() in IMAGE_EXTENSIONS and outputs.root_of(match) is None:
                    pairs.append((match, base))
        else:
            raise FileNotFoundError(f"no such file or folder: {raw}")
    if from_list is not None:
        entries = []
        for number, line in enumerate(from_list, 1):
            text = line.removesuffix("\n").removesuffix("\r")
            if number == 1:
                text = text.removeprefix("\ufeff")  # a BOM
            if (number == 1 and text.startswith(_UTF16_BOMS)) or _utf16_nuls(text):
                name = getattr(from_list, "name", "the list")
                raise ValueError(f"{name} looks like UTF-16 text (as Windows Notepad or "
                                 "PowerShell's > may write it): the list must be UTF-8; save "
                                 "it as UTF-8 (PowerShell: | Out-File -Encoding utf8)")  # fmt: skip
            if "\0" in text:
                name = getattr(from_list, "name", "the list")
                raise ValueError(f"{name}, line {number}: a NUL byte, in no file name (binary?)")
            stripped = text.strip()
            if not stripped:
                continue
            # a name with spaces at its ends, where that file exists; else the stray spaces
            # of a hand-written list are dropped
            entry = text if text != stripped and os.path.lexists(text) else stripped
            if not stripped.startswith("#"):
                entries.append(Path(entry))
            elif commented is not None and os.path.isfile(entry):  # a comment, or "#1.jpg"?
                commented.append((number, entry))
        entries = [e for e in entries if outputs.root_of(e) is None]
        # a missing entry (a typo) must not move the root, and so every other image's folder;
        # nor one that fails as no regular file (a folder, a FIFO, a device: guard's
        # check_regular_file), while a symlink to a file counts as the file it reads
        found = [e for e in entries if os.path.isfile(e)] or entries
        if entries:  # normalised (x/.. folded), as plan_jobs compares paths to it
            root = Path(os.path.commonpath([os.path.dirname(os.path.abspath(e)) for e in found]))
            pairs += [(e, root) for e in entries]
    seen = set()
    unique = []
    for image, root in pairs:
        key = os.path.realpath(image)
        if key not in seen:
            seen.add(key)
            unique.append((image, root))
    return unique


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


def plan_jobs(pairs: list[tuple[Path, Path]], out_dir: Path) -> list[Job]:
    """Give every image its own output folder, mirroring its path below its root.

    ``root/sub/a.jpg`` goes to ``out_dir/sub/a``, paths compared with ``..`` folded (lexically,
    as ``os.path.abspath`` does), so every folder lies below ``out_dir``; an image that is not
    below its root goes to its name alone. Where two images would share a folder, those
    in the same source folder with the same stem (``a.jpg`` and ``a.png``) use ``a_jpg`` and
    ``a_png``; any remaining clash (the same relative path under two roots) gets ``_2``, ``_3``
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

    stems = Counter(
        (os.path.abspath(img.parent), fold(rel.parent / rel.stem))
        for (img, _), rel in zip(pairs, rels)
    )
    # the folders as named before any renaming, which earlier versions kept names off (their
    # folders keep their names), and the final ones (``used``)
    unrenamed = {folded for _, folded in stems}
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


def select_shard(jobs: list, index: int, count: int) -> list:
    """Every ``count``-th job starting at ``index``: a deterministic split of the input list."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard must be I/N with 0 <= I < N, got {index}/{count}")
    return jobs[index::count]


def env_int(name: str, env: Mapping[str, str] | None = None) -> int | None:
    """A non-negative integer environment variable, None when unset or empty; anything else is
    a ValueError with a one-line message."""
    raw = (os.environ if env is None else env).get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a whole number: fix or unset it") from None
    if value < 0:
        raise ValueError(f"{name}={raw!r} is negative: fix or unset it")
    return value


def shard_from_env(env: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """``(RANK, WORLD_SIZE)`` when torchrun (or the user) set them, else SLURM's
    ``(SLURM_PROCID, SLURM_NTASKS)``, else None. Garbage is a one-line ValueError."""
    found = shard_env(env)
    return None if found is None else found[:2]


def shard_env(env: Mapping[str, str] | None = None) -> tuple[int, int, str] | None:
    """``shard_from_env``'s ``(rank, world, names)``, ``names`` saying where they came from
    (``"RANK/WORLD_SIZE"`` or ``"SLURM_PROCID/SLURM_NTASKS"``)."""
    names = ("RANK", "WORLD_SIZE")
    rank, world = env_int(names[0], env), env_int(names[1], env)
    if rank is None and world is None:
        names = ("SLURM_PROCID", "SLURM_NTASKS")
        rank, world = env_int(names[0], env), env_int(names[1], env)
    if rank is None and world is None:
        return None
    if rank is None or world is None:
        raise ValueError(f"{names[0]} and {names[1]} must be set together (or neither)")
    if world < 1 or rank >= world:
        raise ValueError(
            f"need 0 <= {names[0]} < {names[1]}, got {names[0]}={rank} {names[1]}={world}"
        )
    return rank, world, "/".join(names)
