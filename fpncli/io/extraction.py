"""Reading back what ``fpncli extract`` wrote: one image's levels, manifest and input photo.

>>> import fpncli
>>> ex = fpncli.load_extraction("fpn_out/chelsea")
>>> ex.levels["p2"].shape          # a read-only memory map of p2.npy
(1, 256, 200, 304)
>>> ex.valid("p2").shape           # without the padded cells
(1, 256, 200, 300)

Numpy and Pillow only (no torch), so it is cheap to call from a notebook, a report or a diff.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .outputs import MANIFEST, read_manifest

__all__ = ["LoadedExtraction", "load_extraction", "find_extractions"]


@dataclass
class LoadedExtraction:
    """One image's extraction as written on disk.

    Attributes:
        folder: the image's output folder.
        manifest: the parsed ``manifest.json``.
        levels: level name -> ``(1, C, H/S, W/S)`` array, memory-mapped read-only (float32 or
            float16 as saved), covering the padded input; only the levels whose ``.npy`` exists.
    """

    folder: Path
    manifest: dict = field(repr=False)
    levels: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _image: np.ndarray | None = field(default=None, repr=False)

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
        use; None when the file is gone."""
        if self._image is None:
            path = self.input_path
            if path is None or not path.is_file():
                return None
            from .preprocess import load_image

            self._image = load_image(path).rgb
        return self._image


def _level_file(folder: Path, name: str, meta: dict) -> Path | None:
    file = meta.get("file")
    if not file:
        return None
    path = (folder / file).resolve()
    root = folder.resolve()
    if root != path and root not in path.parents:
        raise ValueError(f"{folder}/{MANIFEST}: {name} file {file!r} lies outside the folder")
    return path


def load_extraction(path: str | Path, *, mmap: bool = True) -> LoadedExtraction:
    """Load one image's extraction folder (or the folder of one of its ``.npy`` files).

    Args:
        path: an output folder holding ``manifest.json``, or a file inside it.
        mmap: memory-map the ``.npy`` files (read-only) instead of reading them.

    Raises:
        FileNotFoundError: no such folder, or no complete manifest in it.
        ValueError: a manifest naming files outside its folder.
    """
    folder = Path(path).expanduser()
    if folder.is_file():
        folder = folder.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"no such extraction folder: {path}")
    manifest = read_manifest(folder)
    if manifest is None:
        hint = " (it holds image folders: pass one of them)" if _has_children(folder) else ""
        raise FileNotFoundError(
            f"{folder} holds no complete extraction ({MANIFEST} missing or incomplete){hint}"
        )
    levels = {}
    for name, meta in manifest.get("levels", {}).items():
        file = _level_file(folder, name, meta)
        if file is not None and file.is_file():
            levels[name] = np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)
    return LoadedExtraction(folder, manifest, levels)


def _has_children(folder: Path) -> bool:
    return any(True for _ in folder.glob(f"*/{MANIFEST}"))


def find_extractions(root: str | Path) -> list[Path]:
    """Every complete image folder under ``root`` (``root`` itself when it is one), sorted by
    path relative to ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no such folder: {root}")
    found = [p.parent for p in root.rglob(MANIFEST) if read_manifest(p.parent) is not None]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def read_run_log(root: str | Path) -> dict | None:
    """The ``run.json`` that ``fpncli extract`` leaves in its output folder, if any."""
    try:
        data = json.loads((Path(root) / "run.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_run_log(root: str | Path, summary: dict) -> None:
    """Record what the last ``extract`` run into ``root`` did (counts, failures with reasons),
    atomically, for ``fpncli report``. A read-only folder only logs a warning."""
    from .outputs import atomic_write_bytes

    try:
        atomic_write_bytes(Path(root) / "run.json", json.dumps(summary, indent=2).encode())
    except OSError as e:
        import logging

        logging.getLogger(__name__).warning("could not write %s/run.json: %s", root, e)
