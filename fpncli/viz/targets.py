"""What a TARGET of ``fpncli show`` names, resolved to a ``Source``: an output folder, one
``p*.npy`` file (its folder's manifest used when there is one), a wds shard's key, an image
(extracted on the fly), or the most recent extraction (``latest``, ``latest_target``); and
whether a TARGET holds no saved maps at all.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from ..io.guard import OptionError
from ..io.manifest import MANIFEST
from ..io.messages import quote_name
from ..io.pillow_open import DEFAULT_MAX_PIXELS
from ..model.names import OUTPUT_STRIDES as STRIDES  # an extraction may hold bottom-up stages too
from ..weights.hub import LoggedProgress
from .photo_source import check_image, check_not_drawn, from_image
from .sources import (
    Source,
    extractions_below,
    from_folder,
    from_shard,
    is_wds_output,
    wds_output,
)

__all__ = ["holds_no_maps", "latest", "latest_target", "resolve_source"]


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
            os.path.lexists(path / MANIFEST) or is_wds_output(path) or extractions_below(path)
        )
    except OSError:  # a name over 255 bytes: resolve_source says so
        return True


def latest_target(key: str | None = None) -> tuple[str, list[str]]:
    """The latest extraction (``latest``) as the TARGET to show it as, and the notes to say:
    an image's folder, or the output of a ``--format wds`` run, a folder or URL, whose image
    ``key`` names, as for that TARGET. Without ``key`` such an output is a ValueError, one line
    naming it and how to pick an image; a ``key`` when the latest is an image's folder (or
    none is recorded), an ``OptionError``: --key needs TARGET. A latest that is gone is named
    with ``key`` too (it may have been the wds output ``key`` was meant for): a
    FileNotFoundError where no extraction is left, as without ``key``."""
    from ..io.catalog import is_sharded
    from ..io.latest import recent_extractions

    try:
        folder, notes = latest()
    except (FileNotFoundError, ValueError) as e:  # none recorded, all gone, a damaged record
        if key is None:
            raise
        if isinstance(e, FileNotFoundError) and recent_extractions():  # recorded, but gone
            raise FileNotFoundError(f"{e}; with --key, TARGET is {_KEY_TARGET}") from None
        folder, notes = None, []  # --key: needs TARGET, as before any latest was read
    if folder is not None and is_sharded(folder):
        if key is None:
            raise ValueError(f"the latest extraction {wds_output(str(folder))}")
        return str(folder), notes
    if key is not None:  # (the latest is no wds output, or there is none)
        gone = ""
        if notes:  # the latest is gone: the one left is an image's folder, not the wds output
            gone = (f" (the latest extraction {quote_name(str(recent_extractions()[0]))} is "
                    f"gone; the newest one left, {quote_name(str(folder))}, is an image's "
                    "folder)")  # fmt: skip
        raise OptionError(f"--key needs TARGET: {_KEY_TARGET}{gone}")
    return str(folder), notes


#: what ``--key`` takes as TARGET
_KEY_TARGET = "the output folder (or URL) of a --format wds run"


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
        return from_shard(target, key, levels, level_named or len(levels) > 1)
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
    check_image(path, max_pixels)
    return from_image(path, weights, device, max_pixels, download_progress)
