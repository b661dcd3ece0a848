"""Reading back what ``fpncli extract`` wrote: one image's levels, manifest and input photo,
and the extraction folders under a root (the run log that says what a run did is
``io.run_log``'s).

>>> import fpncli
>>> ex = fpncli.load_extraction("fpn_out/chelsea")
>>> ex.levels["p2"].shape          # a read-only memory map of p2.npy
(1, 256, 200, 304)
>>> ex.valid("p2").shape           # without the padded cells
(1, 256, 200, 301)

Numpy and Pillow only (no torch), so it is cheap to call from a notebook, a report or a diff.
The ``.npy`` files are read safely by ``io.npy``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .manifest import MANIFEST, check_manifest, load_manifest, read_manifest
from .npy import read_npy

__all__ = [
    "LoadedExtraction",
    "load_extraction",
    "find_extractions",
    "find_manifests",
    "level_file",
    "manifest_levels",
    "check_level_array",
]


@dataclass
class LoadedExtraction:
    """One image's extraction as written on disk.

    Attributes:
        folder: the image's output folder.
        manifest: the parsed ``manifest.json``.
        levels: level name -> ``(1, C, H/S, W/S)`` array, memory-mapped read-only (float32 or
            float16 as saved), covering the padded input; only the levels whose ``.npy`` exists.
            From a tar shard: read-only arrays over the member's bytes.
        key: the image's path relative to its output root (``sub/a``), when read through
            ``io.catalog``.
        shard: the tar shard holding it (``--format wds`` outputs), else None.
    """

    folder: Path
    manifest: dict = field(repr=False)
    levels: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _image: np.ndarray | None = field(default=None, repr=False)
    _unreadable: bool = field(default=False, repr=False)  # no photo once: not looked for again
    key: str | None = None
    shard: str | None = None

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def random_weights(self) -> bool:
        return bool(self.manifest.get("weights", {}).get("random"))

    def stride(self, level: str) -> int:
        return int(self.manifest["levels"][level]["stride"])

    def valid(self, level: str) -> np.ndarray:
        """The level without the cells that cover only padding: ``(1, C, valid_h, valid_w)``."""
        meta = self.manifest["levels"][level]
        return self.levels[level][..., : meta["valid_height"], : meta["valid_width"]]

    def unloaded(self) -> list[str]:
        """The levels whose ``.npy`` the manifest lists but that were not loaded: the file is
        gone, or not a regular file (a folder, a FIFO). Never a level saved without one."""
        names = []
        for name, meta in self.manifest["levels"].items():
            if name not in self.levels and str(meta.get("file") or "").endswith(".npy"):
                names.append(name)
        return names

    @property
    def input_path(self) -> Path | None:
        path = self.manifest.get("input", {}).get("path")
        if not path:
            return None
        path = Path(path)
        return path if path.is_absolute() else self.folder / path

    @property
    def image(self) -> np.ndarray | None:
        """The input photo, ``(H, W, 3)`` uint8 RGB with EXIF orientation applied, read on first
        use; None when the file is gone or is no longer an image that can be read (a warning
        says why)."""
        if self._image is None and not self._unreadable:
            self._image = read_photo(self.input_path, self.manifest)
            self._unreadable = self._image is None
        return self._image


def read_photo(path: Path | None, manifest: dict | None = None) -> np.ndarray | None:
    """An extraction's input photo, ``(H, W, 3)`` uint8 RGB with EXIF orientation applied; None
    when none is recorded (``path`` None), or, with a warning saying why, when it is gone (moved
    or deleted), replaced since by a file that is no longer an image that can be read, or (given
    its ``manifest``) by an image of another size than the one extracted, whose maps would be
    stretched over it (only the overlays, the overview's first panel and the report's photo
    thumbnail need it)."""
    if path is None:  # none recorded (an array was extracted)
        return None
    from .image_load import load_image

    try:
        rgb = load_image(path).rgb
    except FileNotFoundError:  # README: "None, with a warning, once the photo is moved or deleted"
        logging.getLogger(__name__).warning("the input photo %s is gone (moved or deleted)", path)
        return None
    except (OSError, ValueError) as e:  # a folder or a FIFO there now, too
        logging.getLogger(__name__).warning("the input photo cannot be read: %s", e)
        return None
    extracted = replaced_size(manifest, rgb.shape[1], rgb.shape[0])
    if extracted is not None:
        logging.getLogger(__name__).warning(
            "the input photo %s is %dx%d, the extracted one was %dx%d: replaced since, so it is "
            "not drawn beside these maps", path, rgb.shape[1], rgb.shape[0], *extracted,
        )  # fmt: skip
        return None
    return rgb


def replaced_size(manifest: dict | None, width: int, height: int) -> tuple[int, int] | None:
    """The ``(width, height)`` the manifest's ``input`` records when a photo of ``width`` x
    ``height`` (EXIF orientation applied) differs from it: replaced since, it is not the photo
    of these maps. None when they agree, or the manifest records no size."""
    recorded = (manifest or {}).get("input")
    recorded = recorded if isinstance(recorded, dict) else {}
    size = (recorded.get("width"), recorded.get("height"))
    if all(isinstance(v, int) for v in size) and size != (width, height):
        return size
    return None


def manifest_levels(folder: Path, manifest: dict) -> dict:
    """The manifest's ``levels`` mapping; ValueError (one line) when it is missing or malformed."""
    levels = manifest.get("levels")
    if not isinstance(levels, dict):
        found = "missing" if levels is None else f"a {type(levels).__name__}, not a mapping"
        raise ValueError(f"{folder}/{MANIFEST} is malformed: 'levels' is {found}; re-extract")
    return levels


def level_file(folder: Path, name: str, meta: dict) -> Path | None:
    """The file a manifest level names, resolved, which must lie inside ``folder``."""
    return _level_file(folder, name, meta)


def _level_file(folder: Path, name: str, meta: dict) -> Path | None:
    if not isinstance(meta, dict):
        raise ValueError(f"{folder}/{MANIFEST} is malformed: level {name!r} is not a mapping")
    file = meta.get("file")
    if not file:
        return None
    if not isinstance(file, str):
        raise ValueError(f"{folder}/{MANIFEST} is malformed: {name} file is not a name")
    path = (folder / file).resolve()
    root = folder.resolve()
    if root != path and root not in path.parents:
        raise ValueError(f"{folder}/{MANIFEST}: {name} file {file!r} lies outside the folder")
    return path


def check_level_array(array: np.ndarray, meta: dict, name: str) -> np.ndarray:
    """``array`` when it is a non-empty ``(1, C, H, W)`` level covering the valid size its
    manifest entry ``meta`` records (see ``check_manifest``); else a one-line ValueError naming
    ``name`` (its file)."""
    valid = (meta["valid_height"], meta["valid_width"])
    if (array.ndim != 4 or array.shape[0] != 1 or array.size == 0
            or any(n < v for n, v in zip(array.shape[2:], valid))):  # fmt: skip
        raise ValueError(
            f"{name}: holds a {array.shape} array, not the (1, C, H, W) level covering the "
            f"{valid[0]}x{valid[1]} valid cells its manifest records; re-extract"
        )
    return array


def load_extraction(path: str | Path, *, mmap: bool = True) -> LoadedExtraction:
    """Load one image's extraction folder (or the folder of one of its ``.npy`` files).

    Args:
        path: an output folder holding ``manifest.json``, or a file inside it.
        mmap: memory-map the ``.npy`` files (read-only) instead of reading them.

    Raises:
        FileNotFoundError: no such folder, or no manifest in it (the output of a ``--format
            wds`` run: the message says how to load one of its images).
        ValueError: a manifest that cannot be read (``load_manifest``: not valid JSON, not a
            file, not marked complete) or is malformed (``check_manifest``), one naming files
            outside its folder, or a ``.npy`` that is unreadable or not the level its manifest
            records.
    """
    folder = Path(path).expanduser()
    if folder.is_file():
        folder = folder.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"no such extraction folder: {path}")
    manifest = load_manifest(folder)
    if manifest is None:
        from .catalog import is_sharded  # (the catalog reads folders through this module)

        if is_sharded(folder):  # as show says of one: its images are keys in tar shards
            raise FileNotFoundError(
                f"{folder} is a --format wds output, not one image's folder: load an image of "
                f"it with fpncli.io.catalog.open_extractions({str(folder)!r}).load(KEY), KEY "
                "one of its .keys()"
            )
        hint = " (it holds image folders: pass one of them)" if _has_children(folder) else ""
        raise FileNotFoundError(f"{folder} holds no extraction ({MANIFEST} missing){hint}")
    check_manifest(manifest, f"{folder}/{MANIFEST}")
    levels = {}
    for name, meta in manifest_levels(folder, manifest).items():
        file = _level_file(folder, name, meta)
        if file is not None and file.is_file():
            levels[name] = check_level_array(read_npy(file, mmap=mmap), meta, str(file))
    return LoadedExtraction(folder, manifest, levels)


def _has_children(folder: Path) -> bool:
    return any(True for _ in folder.glob(f"*/{MANIFEST}"))


def find_extractions(root: str | Path) -> list[Path]:
    """Every complete image folder under ``root`` (``root`` itself when it is one), sorted by
    path relative to ``root``."""
    return [p for p in find_manifests(root) if read_manifest(p) is not None]


def find_manifests(root: str | Path) -> list[Path]:
    """Every folder under ``root`` (``root`` itself included) holding something named
    ``manifest.json``, whether it can be read or not (``load_manifest`` says), sorted by path
    relative to ``root``: what a report or a diff lists, a damaged one with its reason."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no such folder: {root}")
    # os.walk, not rglob: rglob passes over a manifest.json that is a dangling symlink
    found = [Path(folder) for folder, dirs, files in os.walk(root)
             if MANIFEST in files or MANIFEST in dirs]  # fmt: skip
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())
