"""The maps ``fpncli show`` draws, loaded as a ``Source`` with the geometry its manifest
records: an output folder's (with ``manifest.json``) and a ``--format wds`` shard's key; and what
to say of a folder that holds no extraction (a batch output, a wds output).
"""

from __future__ import annotations

import logging
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io.guard import OptionError
from ..io.manifest import MANIFEST, load_manifest, read_manifest
from ..io.messages import quote_name
from ..model.names import LEVELS, STAGES

__all__ = [
    "Source",
    "extractions_below",
    "first_level",
    "from_folder",
    "from_shard",
    "is_wds_output",
    "wds_output",
]

log = logging.getLogger(__name__)


@dataclass
class Source:
    """Everything needed to draw: per-level arrays plus the geometry from the manifest."""

    features: dict[str, np.ndarray]
    image_rgb: np.ndarray | None
    resized: tuple[int, int] | None  # (height, width) after the resize: the valid region
    scale: tuple[float, float] | None  # (scale_y, scale_x)
    random: bool
    name: str
    default_prefix: Path  # the default PNG is f"{default_prefix}{names.picture_suffix(...)}.png"
    notes: list[str] = field(default_factory=list)  # said before the picture
    photo: str = ""  # the photo's file name, for titles (as extract's overview names it)
    weights_name: str = ""  # the manifest's weights name ("random", a registry name, a path)
    manifest: dict | None = None  # an extraction's (its recorded colour ranges)
    #: False for a .npy whose level neither its name, a manifest nor --level gives: it is kept
    #: under a placeholder level name, labelled "level unknown" and not named by level
    level_known: bool = True


def _input_path(manifest: dict) -> Path | None:
    """The input photo's path a manifest records, None where it records none."""
    info = manifest.get("input")
    path = info.get("path") if isinstance(info, dict) else None
    return Path(path) if isinstance(path, str) and path else None


def _photo_and_weights(manifest: dict) -> tuple[str, str]:
    """The photo's file name and the weights' name a manifest records ("" where it does not)."""
    path, weights = _input_path(manifest), manifest.get("weights")
    name = weights.get("name") if isinstance(weights, dict) else None
    return (path.name if path else "", name if isinstance(name, str) else "")


def extractions_below(folder: Path, limit: int = 2000) -> list[Path]:
    """Complete extraction folders under ``folder`` (a batch output root), sorted."""
    found = []
    for count, (dirpath, dirnames, filenames) in enumerate(os.walk(folder)):
        dirnames.sort()
        if MANIFEST in filenames and read_manifest(Path(dirpath)) is not None:
            found.append(Path(dirpath))
            dirnames[:] = []
        if count >= limit:
            break
    return found


def is_wds_output(folder: Path) -> bool:
    from ..io.shards import INDEX, INDEX_DIR

    return (folder / INDEX).is_file() or (folder / INDEX_DIR).is_dir()


def wds_output(root: str) -> str:
    """``ROOT is a --format wds output: ...``: what to name to show one of its images."""
    from ..io.shards import INDEX

    return (
        f"{root} is a --format wds output: name an image in it with --key KEY (its keys are in "
        f"{root.rstrip('/')}/{INDEX}, and fpncli report {shlex.quote(root)} lists them)"
    )


def _not_an_extraction(folder: Path) -> Exception:
    if is_wds_output(folder):
        return ValueError(wds_output(str(folder)))
    below = extractions_below(folder)
    if not below:
        return FileNotFoundError(
            f"{folder} holds no complete extraction ({MANIFEST} missing): run fpncli extract "
            "on an image first, or name an output folder"
        )
    names = ", ".join(str(p.relative_to(folder)) for p in below[:5])
    more = f" and {len(below) - 5} more" if len(below) > 5 else ""
    return ValueError(
        f"{folder} is a batch output folder with {len(below)} extraction(s) ({names}{more}): "
        f"name one, e.g. fpncli show {shlex.quote(str(below[0]))}"
    )


def _load_input(manifest: dict) -> np.ndarray | None:
    from ..io.extraction import read_photo

    return read_photo(_input_path(manifest), manifest)


def from_folder(folder: Path, levels: list[str], asked: bool = True,
                 named: bool = True) -> Source:  # fmt: skip
    """``levels`` of the extraction in ``folder``; ``asked``: they are ``--level``'s (or its
    default), so one the folder lacks is an ``OptionError``, not the name of a ``.npy`` in it;
    ``named``: ``--level`` was given; else the one level is its default (p2), and a folder
    without it gives its ``first_level`` instead, with a note saying so."""
    manifest = load_manifest(folder)  # ValueError: one there that cannot be read
    if manifest is None:
        raise _not_an_extraction(folder)
    from ..io.extraction import check_level_array, level_file, manifest_levels
    from ..io.manifest import check_manifest
    from ..io.npy import read_npy

    check_manifest(manifest, f"{folder}/{MANIFEST}")

    features = {}
    saved_levels = manifest_levels(folder, manifest)
    notes = []
    if len(levels) > 1:  # --level all: the levels this extraction has
        levels = [name for name in levels if name in saved_levels] or levels
    elif not named and saved_levels and levels[0] not in saved_levels:  # (--levels p3,p4)
        first = first_level(saved_levels)
        notes.append(f"note: {quote_name(str(folder))} has no {levels[0]}: showing {first}, the "
                     "first level it saved (--level picks another)")  # fmt: skip
        levels = [first]
    for name in levels:
        meta = saved_levels.get(name)
        if meta is None:
            saved = ", ".join(map(str, saved_levels))
            message = f"{folder} has no {name} (it has {saved}); extract it with --levels"
            raise OptionError(message, "--level") if asked else ValueError(message)
        file = level_file(folder, name, meta)  # must lie inside the folder
        if file is None:
            heatmap, overlay = meta.get("heatmap"), meta.get("overlay")
            kept = (f"only its heatmap {heatmap}" if heatmap
                    else f"only its overlay {overlay}" if overlay  # --no-heatmaps --overlay
                    else "nor a heatmap (only statistics)")  # fmt: skip
            raise ValueError(
                f"{folder} was extracted with --no-npy: its {name} tensor was not saved, {kept}; "
                "re-extract without --no-npy to show it"
            )
        features[name] = check_level_array(read_npy(file), meta, str(file))
    resized, scale, random = _geometry(manifest, f"{folder}/{MANIFEST}")
    photo, weights_name = _photo_and_weights(manifest)
    return Source(features, _load_input(manifest), resized, scale, random, folder.name,
                   folder / "show", notes, photo=photo, weights_name=weights_name,
                   manifest=manifest)  # fmt: skip


def first_level(saved) -> str:
    """The level ``show`` draws when ``--level`` is not given and p2 was not saved: the first
    of ``saved`` (names) in the order p2..p6, then the bottom-up stages."""
    return next((name for name in (*LEVELS, *STAGES) if name in saved), next(iter(saved)))


def _geometry(manifest: dict, where: str) -> tuple[tuple[int, int], tuple[float, float], bool]:
    """A manifest's resized size, scale and random-weights flag; a one-line ValueError naming
    ``where`` when they are missing (``check_manifest``, called first, refuses values of the
    wrong type or range)."""
    try:
        pre = manifest["preprocess"]
        resized = (int(pre["resized_height"]), int(pre["resized_width"]))
        scale = (float(pre["scale_y"]), float(pre["scale_x"]))
        random = bool(manifest.get("weights", {}).get("random"))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"{where} is malformed ({type(e).__name__}: {e}); re-extract") from None
    return resized, scale, random


def from_shard(root: str, key: str, levels: list[str], named: bool = True) -> Source:
    """One image of a ``--format wds`` extraction, found through its index (``named``: as
    ``from_folder``'s)."""
    from ..io.extraction import check_level_array
    from ..io.guard import parse_json
    from ..io.manifest import check_manifest
    from ..io.npy import npy_from_bytes
    from ..io.shard_index import find_member
    from ..io.shards import open_root

    fs, path = open_root(root)
    shard, members = find_member(fs, path, key)
    try:
        manifest = parse_json(members["json"])
    except ValueError:
        raise ValueError(f"{key}.json in {shard} is not JSON: re-extract this image") from None
    check_manifest(manifest, f"{key}.json in {root}/{shard}")
    features = {}
    saved = [n for n, m in manifest["levels"].items() if m.get("file")]
    notes = []
    if len(levels) > 1:  # --level all: the levels this record has (as for a folder)
        levels = [n for n in levels if n in saved] or levels
    elif not named and saved and levels[0] not in saved:  # the default: as for a folder
        first = first_level(saved)
        notes.append(f"note: {quote_name(key)} has no {levels[0]} tensor: showing {first}, the "
                     "first level it saved (--level picks another)")  # fmt: skip
        levels = [first]
    for name in levels:
        meta = manifest["levels"].get(name)
        if meta is None or not meta.get("file"):
            message = f"{key} in {shard} has no {name} tensor (it has {', '.join(saved) or 'none'})"
            raise OptionError(message, "--level") if saved else ValueError(message)
        # the header is checked against the bytes before anything is allocated
        where = f"{shard}: {key}.{meta['file']}"
        if meta["file"] not in members:  # a damaged record (a forged name, a lost member)
            raise ValueError(f"{where} is missing: the record names a member the shard does "
                             "not hold; re-extract this image")  # fmt: skip
        array = npy_from_bytes(members[meta["file"]], where)
        features[name] = check_level_array(array, meta, where)
    resized, scale, random = _geometry(manifest, f"{key}.json in {root}/{shard}")
    photo, weights_name = _photo_and_weights(manifest)
    return Source(features, _load_input(manifest), resized, scale, random, key,
                   Path(f"fpn_show_{key.replace('/', '_')}"), notes, photo=photo,
                   weights_name=weights_name, manifest=manifest)  # fmt: skip
