"""Turning command-line inputs into jobs: files, folders, globs and lists; output folders.

The order is deterministic and output folders never collide, so a re-run of the same command
(resume) and every shard of a split run (``--shard I/N``, torchrun's ``RANK``/``WORLD_SIZE``) see
the same list.
"""

from __future__ import annotations

import glob
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "IMAGE_EXTENSIONS",
    "Job",
    "discover_inputs",
    "plan_jobs",
    "select_shard",
    "shard_from_env",
]

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
     ".ppm", ".pgm", ".pbm", ".pnm"}
)  # fmt: skip


@dataclass(frozen=True)
class Job:
    """One image to extract: where it is read from and the folder its outputs go to."""

    path: Path
    folder: Path


def _walk_images(folder: Path, exclude: Path | None) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        if exclude is not None:  # never read our own outputs back as inputs
            dirnames[:] = [d for d in dirnames if Path(dirpath, d).resolve() != exclude]
        dirnames.sort()
        for name in sorted(filenames):
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS and not name.startswith("."):
                found.append(Path(dirpath) / name)
    return found


def _glob_base(pattern: str) -> Path:
    parts = []
    for part in Path(pattern).parts:
        if glob.has_magic(part):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def discover_inputs(
    inputs: Iterable[str],
    from_list: Iterable[str] | None = None,
    *,
    exclude: Path | None = None,
) -> list[tuple[Path, Path]]:
    """Expand files, folders (recursively), globs and list entries into ``(image, root)`` pairs.

    The order is deterministic: arguments in the order given, each folder walked in sorted order;
    an image met twice is kept once; folders are walked without entering ``exclude`` (the
    output folder, when it lies inside an input folder). ``root`` is what the output tree
    mirrors: the folder for a folder input, the glob's fixed prefix for a glob, the parent for
    a file, and the common folder of all entries for a list.

    Raises:
        FileNotFoundError: an argument that is neither a file, a folder nor a matching glob.
    """
    exclude = exclude.resolve() if exclude is not None else None
    pairs: list[tuple[Path, Path]] = []
    for raw in inputs:
        path = Path(raw).expanduser()
        if path.is_dir():
            pairs += [(p, path) for p in _walk_images(path, exclude)]
        elif path.is_file():
            pairs.append((path, path.parent))
        elif glob.has_magic(raw):
            base = _glob_base(raw)
            matches = sorted(glob.glob(raw, recursive=True))
            if not matches:
                raise FileNotFoundError(f"no file matches {raw}")
            for match in map(Path, matches):
                if match.is_dir():
                    pairs += [(p, base) for p in _walk_images(match, exclude)]
                elif match.suffix.lower() in IMAGE_EXTENSIONS:
                    pairs.append((match, base))
        else:
            raise FileNotFoundError(f"no such file or folder: {raw}")
    if from_list is not None:
        entries = [Path(line.strip()) for line in from_list if line.strip()]
        entries = [e for e in entries if not str(e).startswith("#")]
        if entries:
            root = Path(os.path.commonpath([str(e.absolute().parent) for e in entries]))
            pairs += [(e, root) for e in entries]
    seen = set()
    unique = []
    for image, root in pairs:
        key = os.path.abspath(image)
        if key not in seen:
            seen.add(key)
            unique.append((image, root))
    return unique


def plan_jobs(pairs: list[tuple[Path, Path]], out_dir: Path) -> list[Job]:
    """Give every image its own output folder, mirroring its path below its root.

    ``root/sub/a.jpg`` goes to ``out_dir/sub/a``. Where two images would share a folder, those
    in the same source folder with the same stem (``a.jpg`` and ``a.png``) use ``a_jpg`` and
    ``a_png``; any remaining clash (the same relative path under two roots) gets ``_2``, ``_3``
    in input order.
    """
    rels = []
    for image, root in pairs:
        try:
            rel = image.absolute().relative_to(root.absolute())
        except ValueError:
            rel = Path(image.name)
        rels.append(rel)
    stems = Counter(
        (os.path.abspath(img.parent), rel.parent / rel.stem) for (img, _), rel in zip(pairs, rels)
    )
    jobs, used = [], set()
    for (image, _), rel in zip(pairs, rels):
        key = rel.parent / rel.stem
        if stems[(os.path.abspath(image.parent), key)] > 1:
            key = rel.parent / f"{rel.stem}_{rel.suffix.lstrip('.').lower()}"
        candidate, n = key, 1
        while candidate in used:
            n += 1
            candidate = key.parent / f"{key.name}_{n}"
        used.add(candidate)
        jobs.append(Job(image, out_dir / candidate))
    return jobs


def select_shard(jobs: list, index: int, count: int) -> list:
    """Every ``count``-th job starting at ``index``: a deterministic split of the input list."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard must be I/N with 0 <= I < N, got {index}/{count}")
    return jobs[index::count]


def shard_from_env() -> tuple[int, int] | None:
    """``(RANK, WORLD_SIZE)`` when torchrun (or the user) set them, else None."""
    rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if rank is None or world is None:
        return None
    return int(rank), int(world)
