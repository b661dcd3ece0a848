"""What ``fpncli show`` draws, found and loaded: an output folder (with ``manifest.json``), one
``p*.npy`` file (its folder's manifest used when there is one), a wds shard's key, an image
(extracted on the fly), or the most recent extraction; each as a ``Source`` with the geometry
its manifest records.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io.guard import OptionError
from ..io.manifest import MANIFEST, load_manifest, read_manifest
from ..io.messages import quote_name
from ..io.pillow_open import DEFAULT_MAX_PIXELS
from ..model.names import LEVELS, STAGES
from ..model.names import OUTPUT_STRIDES as STRIDES  # an extraction may hold bottom-up stages too
from ..weights.hub import LoggedProgress

__all__ = [
    "Source",
    "check_not_drawn",
    "first_level",
    "from_folder",
    "holds_no_maps",
    "latest",
    "latest_target",
    "resolve_source",
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


def latest() -> tuple[Path, list[str]]:
    from ..io.latest import latest_extraction, recent_extractions

    folder = latest_extraction()
    recorded = recent_extractions()
    notes = []
    if recorded and folder != recorded[0]:
        notes.append(
            f"note: the latest extraction {quote_name(str(recorded[0]))} is gone; showing "
            f"{quote_name(str(folder))}, the newest one that still exists"
        )
    return folder, notes


def _extractions_below(folder: Path, limit: int = 2000) -> list[Path]:
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


def _is_wds_output(folder: Path) -> bool:
    from ..io.shards import INDEX, INDEX_DIR

    return (folder / INDEX).is_file() or (folder / INDEX_DIR).is_dir()


def holds_no_maps(target: str) -> bool:
    """Whether ``target``, named as a folder or ``.npy`` TARGET, has no saved maps to read: it
    is not there, or it is a folder with no ``manifest.json`` (readable or not), no extraction
    below it and no ``--format wds`` index (a folder of photos). ``resolve_source`` refuses it
    saying so, which the CLI lets come before refusing an option as one that "changes nothing
    where saved maps are read": nothing is read there."""
    path = Path(target).expanduser()
    try:
        if not path.exists():
            return True
        if not path.is_dir():
            return False
        return not (
            os.path.lexists(path / MANIFEST) or _is_wds_output(path) or _extractions_below(path)
        )
    except OSError:  # a name over 255 bytes: resolve_source says so
        return True


def latest_target(key: str | None = None) -> tuple[str, list[str]]:
    """The latest extraction (``latest``) as the TARGET to show it as, and the notes to say:
    an image's folder, or the output of a ``--format wds`` run, a folder or URL, whose image
    ``key`` names, as for that TARGET. Without ``key`` such an output is a ValueError, one line
    naming it and how to pick an image; a ``key`` when the latest is an image's folder (or
    none is recorded), an ``OptionError``: --key needs TARGET."""
    from ..io.catalog import is_sharded

    try:
        folder, notes = latest()
    except (FileNotFoundError, ValueError):  # none recorded (or a damaged record)
        if key is None:
            raise
        folder = None  # --key: needs TARGET, as before any latest was read
    if folder is not None and is_sharded(folder):
        if key is None:
            raise ValueError(f"the latest extraction {_wds_output(str(folder))}")
        return str(folder), notes
    if key is not None:  # (the latest is no wds output, or there is none)
        raise OptionError("--key needs TARGET: the output folder (or URL) of a --format wds run")
    return str(folder), notes


def _wds_output(root: str) -> str:
    """``ROOT is a --format wds output: ...``: what to name to show one of its images."""
    from ..io.shards import INDEX

    return (
        f"{root} is a --format wds output: name an image in it with --key KEY (its keys are in "
        f"{root.rstrip('/')}/{INDEX}, and fpncli report {shlex.quote(root)} lists them)"
    )


def _not_an_extraction(folder: Path) -> Exception:
    if _is_wds_output(folder):
        return ValueError(_wds_output(str(folder)))
    below = _extractions_below(folder)
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


def _from_image(path: Path, weights: str, device: str, max_pixels: int,
                download_progress=LoggedProgress) -> Source:  # fmt: skip
    from ..api import extract, load_backbone, resolve_device
    from ..io.image_load import load_image
    from ..io.jobs import image_stem

    model = load_backbone(weights, device=resolve_device(device),
                          download_progress=download_progress)  # fmt: skip
    result = extract(load_image(path, max_pixels=max_pixels), model)
    prepared = result.prepared
    return Source(
        {k: v.numpy() for k, v in result.features.items()},
        result.image.rgb,
        (prepared.resized_height, prepared.resized_width),
        (prepared.scale_y, prepared.scale_x),
        model.weights_info.random,
        path.stem,
        Path(f"fpn_show_{image_stem(path)}"),  # a.jpg and a.png beside it: a_jpg, a_png
        photo=path.name,
        weights_name=model.weights_info.name,
    )


def _from_shard(root: str, key: str, levels: list[str], named: bool = True) -> Source:
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


def resolve_source(target: str | None, levels: list[str], weights: str, device: str,
             key: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
             level_named: bool = True, download_progress=LoggedProgress) -> Source:  # fmt: skip
    """What to draw. ``level_named``: the one level in ``levels`` was asked for (``--level``),
    not a default: a ``.npy`` whose name is no level's then holds that level.
    ``download_progress``: ``load_backbone``'s, for an image's weights. ``target`` None: the
    latest extraction, as that TARGET (``latest_target``: a wds output's image by ``key``)."""
    if target is None:
        target, notes = latest_target(key)
        source = resolve_source(target, levels, weights, device, key, max_pixels, level_named,
                                download_progress)  # fmt: skip
        source.notes[:0] = notes
        return source
    if key is not None:
        from ..io.catalog import is_sharded

        if not is_sharded(target):  # an index found nothing there: not "no image with key"
            folder = Path(target).expanduser()
            if not folder.is_dir():
                raise FileNotFoundError(f"no such folder: {target}")
            image = folder / key
            hint = (f": show that image with fpncli show {shlex.quote(str(image))}"
                    if os.path.lexists(image / MANIFEST) else
                    ": give the image's folder as TARGET, without --key")  # fmt: skip
            raise OptionError(
                f"{key!r}: --key names an image of a --format wds output (tar shards and "
                f"index.parquet); {target} is not one{hint}",
                "--key",
            )
        return _from_shard(target, key, levels, level_named or len(levels) > 1)
    path = Path(target).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no such folder, .npy or image: {target}")
    if path.is_dir():
        return from_folder(path, levels, named=level_named or len(levels) > 1)
    if path.suffix == ".npy":
        level = path.stem if path.stem in STRIDES else levels[0]
        from ..io.npy import read_npy

        array = read_npy(path)
        if array.ndim < 2 or array.size == 0:
            raise ValueError(f"{path}: holds a {array.shape} array, not a feature map")
        if array.ndim == 4 and array.shape[0] != 1:  # said of the file, not of "a batch"
            raise ValueError(
                f"{path}: holds a batch of {array.shape[0]} maps {array.shape}, not one image's "
                "(1, C, H, W): save one of them to show it"
            )
        # (even one that is not a file: said to be unreadable, not passed over)
        if os.path.lexists(path.parent / MANIFEST) and path.stem in STRIDES:
            # --level all asks for the levels; else the .npy's own level is read
            source = from_folder(
                path.parent, levels if len(levels) > 1 else [level], asked=len(levels) > 1
            )
            source.features[level] = array
            return source
        if path.stem in STRIDES:
            return Source({level: array}, None, None, None, False, path.stem, path.parent / "show")
        # loose.npy beside a.npy: a picture each, named after the file
        source = Source({level: array}, None, None, None, False, path.stem,
                         path.parent / f"show_{path.stem}",
                         level_known=level_named and len(levels) == 1)  # fmt: skip
        if not source.level_known:
            source.notes.append(
                f"note: the level of {quote_name(path.name)} is unknown (its name is not a "
                "level's, as p4.npy): drawn without a stride; give --level to name it"
            )
        return source
    check_not_drawn(path)  # before any weights are loaded or downloaded
    _check_image(path, max_pixels)
    return _from_image(path, weights, device, max_pixels, download_progress)


#: A level's picture extract writes in an image's folder (``p3.png``, ``p3_overlay.png``), or
#: show's (``show_p3.png``, ``show_p3_pca_overlay.png``, ``show_all.png``): group 1 is the level.
_LEVEL_PICTURE = re.compile(r"^(?:show_)?(p[2-6]|stem|res[2-5]|all)[_.]")


def check_not_drawn(path: Path) -> None:
    """Refuse an image TARGET that is one of fpncli's outputs (a level's heatmap or overlay, an
    overview, show's or the report's pictures), as ``extract`` refuses outputs as inputs
    (``io.inputs.output_root``): the network would run on a picture of maps. A ValueError, one
    line saying what to run instead: ``fpncli show FOLDER --level LEVEL`` for a picture in an
    image's folder (the level its name gives, ``all`` for the overview); for a picture of a
    report's (its pictures folder holds ``REPORT_MARKER``) or of diff's (``DIFF_MARKER``), which
    command drew it; else, which output folder it lies in."""
    from ..io.inputs import output_root
    from ..io.markers import DIFF_MARKER, REPORT_MARKER
    from ..io.pillow_open import pillow_extensions

    if path.suffix.lower() not in pillow_extensions():  # (not an image: _check_image says so)
        return
    root = output_root(path)
    if root is None:
        return
    folder = path.parent
    if (folder / MANIFEST).is_file():  # an image's folder: draw its extraction
        name = path.name.casefold()
        found = _LEVEL_PICTURE.match(name)
        level = "all" if name == "overview.png" else found[1] if found else None
        what = {None: "that extraction", "all": "all levels of that extraction"}.get(
            level, f"{level} of that extraction"
        )
        again = f" --level {level}" if level else ""
        raise ValueError(
            f"{quote_name(str(path))} is a picture fpncli drew, not a photo; to draw {what}: "
            f"fpncli show {shlex.quote(str(folder))}{again}"
        )
    # marked_root also stops at a report's pictures or diff's folder, which hold no extraction
    shown = quote_name(os.path.relpath(root))
    if (root / REPORT_MARKER).is_file():  # OUT/report/: a report's assets, in the folder it read
        above = os.path.relpath(root.parent)
        raise ValueError(
            f"{quote_name(str(path))} is a picture fpncli report drew for the report of "
            f"{quote_name(above)}, not a photo (extract skips it too; fpncli report "
            f"{shlex.quote(above)} rewrites it): show an extraction folder in {quote_name(above)} "
            "instead"
        )
    if (root / DIFF_MARKER).is_file():
        raise ValueError(
            f"{quote_name(str(path))} is a picture fpncli diff drew (in {shown}), not a photo "
            "(extract skips it too): show an extraction folder instead"
        )
    raise ValueError(
        f"{quote_name(str(path))} is a file of the fpncli output folder {shown}: not a photo "
        "(extract skips it too); name an extraction folder in it, or a photo outside it"
    )


def _check_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Refuse a TARGET that is not an image Pillow can open (a list, a text file...), a FIFO
    (never waited for) and a decompression bomb, as ``extract`` does
    (``pillow_open.open_image``)."""
    from PIL import Image, UnidentifiedImageError

    from ..io.pillow_open import open_image, pillow_extensions

    if path.suffix.lower() not in pillow_extensions():  # read when named, as extract does
        raise ValueError(
            f"{path} is not an image, an output folder or a p*.npy file; "
            "to extract a list of files, use fpncli extract --from-list"
        )
    try:
        with open_image(path, max_pixels):
            pass
    except Image.DecompressionBombError:
        raise ValueError(f"{path}: refused as a decompression bomb") from None
    except UnidentifiedImageError:  # its text names an open file object, not the path
        raise ValueError(f"{path} is not an image Pillow can read") from None
    except OSError as e:
        raise ValueError(f"{path} is not an image Pillow can read ({e})") from None
