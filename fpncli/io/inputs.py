"""Turning command-line inputs into the list of images to extract: files, folders, globs and
lists (``discover_inputs``), output folders among them left out (``output_root``).

The order is deterministic, so a re-run of the same command (resume) and every shard of a split
run (``io.run_shard``) see the same list; ``io.jobs`` names each image's output folder.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path

from .guard import open_regular
from .markers import is_marked, is_show_picture, marked_root
from .pillow_open import pillow_extensions

__all__ = ["IMAGE_EXTENSIONS", "discover_inputs", "first_photo", "output_root"]

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
    """Tells files under an output root (marked, an old image folder, or the current ``-o``),
    and the pictures show left in a folder (``markers.is_show_picture``)."""

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
        """The output root ``path`` lies in, or ``path`` itself (resolved) for a picture show
        drew (recorded as skipped), or None."""
        real = Path(os.path.realpath(path))
        root = None
        if self.exclude is not None and (real == self.exclude or self.exclude in real.parents):
            root = self.exclude
        else:
            root = marked_root(real, cache=self.cache)
        if root is None and self._image_folder(real.parent):
            root = real.parent
        if root is None and is_show_picture(real):
            root = real
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
        ``hidden`` as ``(path, is a folder)``; show's pictures (``markers.is_show_picture``)
        are passed over and added to ``skipped``."""
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
                    elif is_show_picture(here / name):  # (only fpn_show_*.png are read)
                        self.skipped.add(real_here / name)
                    else:
                        found.append(here / name)
        return found


def output_root(path: str | Path) -> Path | None:
    """The output root the file ``path`` lies in, as ``discover_inputs`` tells it (a folder at
    or above it holding the output marker, or its own folder holding an fpncli
    ``manifest.json``), resolved, or the file itself where it is a picture show left in a
    folder (``markers.is_show_picture``); None for a file that is no output (an input)."""
    return _OutputFilter(None, None).root_of(Path(path))


def first_photo(folder: Path) -> Path | None:
    """A photo at the top of ``folder`` that a walk of it would take (an image file whose name
    does not start with ``.``, not a picture show drew: ``markers.is_show_picture``), the first
    one listed; None where there is none, or the folder cannot be listed. Subfolders are not
    entered: an earlier version's output holds image folders, not photos."""
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                    continue
                try:
                    if entry.is_file() and not is_show_picture(entry.path):
                        return Path(entry.path)
                except OSError:  # (a name over 255 bytes, a link that cannot be followed)
                    continue
    except OSError:  # not there, not a folder, no permission: said when it is made
        return None
    return None


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
    holding an fpncli ``manifest.json``, nor a picture show left in a folder
    (``markers.is_show_picture``); the output roots (and show's pictures) so passed over are
    added to ``skipped``. Special files (FIFOs, devices,
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
        # check_regular_file), while a symlink to a file counts as the file it reads; nor a
        # file met before (kept once, below: its second entry extracts nothing)
        met = {os.path.realpath(image) for image, _ in pairs}
        found = []
        for entry in entries:
            real = os.path.realpath(entry)
            if real not in met and os.path.isfile(entry):
                met.add(real)
                found.append(entry)
        found = found or entries
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
