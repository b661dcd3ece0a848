"""An extraction folder's manifest: reading it, checking the fields fpncli reads back, the files
it lists, and whether the folder is complete. The run key it records is ``run_keys``'."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from .guard import parse_json, read_capped
from .messages import error_text

__all__ = [
    "MANIFEST", "read_manifest", "load_manifest", "check_manifest", "manifest_files",
    "is_complete", "folder_state", "MISSING", "is_int",
]  # fmt: skip

MANIFEST = "manifest.json"
_MAX_MANIFEST_BYTES = 16 << 20


def read_manifest(folder: Path) -> dict | None:
    """The folder's manifest if it is a complete one, else None (none there, or one that
    cannot be read: ``load_manifest`` says why). Resuming and discovery use it: a folder whose
    manifest cannot be read is simply not complete, and is redone."""
    try:
        return load_manifest(folder)
    except ValueError:
        return None


def load_manifest(folder: Path) -> dict | None:
    """The folder's complete manifest, or None when it has no ``manifest.json``.

    Raises:
        ValueError: (one line, naming the file and what is wrong) a ``manifest.json`` that is
            there but cannot be read: not a regular file (a folder, a FIFO, a dangling symlink),
            unreadable, empty, over 16 MB, not valid JSON, not a mapping, or not marked
            complete. What its fields hold is ``check_manifest``'s to check.
    """
    path = Path(folder) / MANIFEST
    try:
        data, size = read_capped(path, _MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        if not os.path.lexists(path):
            return None  # no manifest (the folder may not exist either)
        raise ValueError(
            f"{path} cannot be read: a symlink to a missing file; re-extract"
        ) from None
    except ValueError as e:  # open_regular: a folder, FIFO, device or socket; a symlink loop
        why = error_text(e).removeprefix(f"{path}: ")
        raise ValueError(f"{path} cannot be read: {why}; remove it, then re-extract") from None
    except OSError as e:
        raise ValueError(f"{path} cannot be read: {e.strerror or error_text(e)}") from None
    if size > _MAX_MANIFEST_BYTES:
        raise ValueError(
            f"{path} is {size} bytes, over the {_MAX_MANIFEST_BYTES >> 20} MB a manifest may be: "
            "not an fpncli manifest; re-extract"
        )
    if not data.strip():
        raise ValueError(f"{path} is empty; re-extract")
    try:
        manifest = parse_json(data)
    except ValueError as e:  # UnicodeDecodeError (not text) included
        raise ValueError(f"{path} is not valid JSON: {error_text(e)}; re-extract") from None
    if not isinstance(manifest, dict):
        raise ValueError(
            f"{path} is not an fpncli manifest: it holds {_kind_of(manifest)}, not a mapping; "
            "re-extract"
        )
    if not manifest.get("complete"):  # fpncli writes it last, always true
        raise ValueError(
            f"{path} is malformed: 'complete' is {_kind_of(manifest.get('complete', MISSING))}, "
            "not true; re-extract"
        )
    return manifest


#: A field a manifest does not have, as ``dict.get``'s default.
MISSING = object()

#: What a level may be called: an identifier, as every name fpncli writes is (``p2``..``p6``,
#: ``stem``, ``res2``..``res5``). The name becomes part of file names (the report's thumbnails)
#: and of HTML: one with ``/``, quotes or markup is not fpncli's.
_LEVEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")

_FLOAT32_MAX = 3.4028234663852886e38
_MOST = 1 << 53  # no size or count fpncli writes comes near; past it, floats lose integers


#: The largest resize scale (resized / original pixels) a manifest may record. A scale S
#: makes an image of at least S x S pixels (an input side is at least one pixel): 1e5 is 1e10
#: pixels, far past any --max-pixels a run could hold (the default is under 1e8, so under a
#: scale of 1e4), and --no-resize records 1. A forged 1e300 overflowed the overlay's cast of
#: pixel to cell (show --overlay drew garbage).
_MAX_SCALE = 1e5


def _valid_values(meta: dict) -> int:
    """How many values a level's valid region holds: ``valid_height`` x ``valid_width`` (both
    checked first) x the channels of its ``shape`` (``[1, C, H, W]``); 0 when its shape does
    not say (every manifest that records ``nonfinite`` records the shape)."""
    shape = meta.get("shape")
    if not (isinstance(shape, list) and len(shape) == 4 and is_int(shape[1], 1)):
        return 0
    return meta["valid_height"] * meta["valid_width"] * shape[1]


def is_int(value, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and least <= value < _MOST


def _is_number(value, least: float = -math.inf) -> bool:
    """A finite int or float (not a bool, not an integer past float's range) >= ``least``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value)) and value >= least
    except OverflowError:
        return False


def _kind_of(value) -> str:
    if value is MISSING:
        return "missing"
    if value is None:
        return "null"
    kind = type(value).__name__
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} ({value!r:.40})"


def check_manifest(manifest: dict, name: str) -> dict:
    """``manifest`` when every field fpncli reads back has the type it is written with; else a
    one-line ValueError naming ``name`` (the manifest's file) and the field. Optional fields may
    be missing (and strings null, as ``overview`` or a level's ``file`` when not saved); the
    ``levels`` mapping and each level's ``stride`` and valid size must be there. A level's name
    is an identifier (``p2``, ``res3``, ``stem``: letters, digits and ``_``, at most 64).
    """

    def bad(field: str, value, wanted: str) -> ValueError:
        return ValueError(
            f"{name} is malformed: '{field}' is {_kind_of(value)}, not {wanted}; re-extract"
        )

    def mapping(field: str, value, required: bool = False) -> dict:
        """A mapping field: missing is fine unless required; present, a mapping (not null)."""
        if value is MISSING and not required:
            return {}
        if not isinstance(value, dict):
            raise bad(field, value, "a mapping")
        return value

    def text(field: str, value) -> None:
        if value is not None and not isinstance(value, str):
            raise bad(field, value, "a string")

    for level, meta in mapping("levels", manifest.get("levels", MISSING), required=True).items():
        if not _LEVEL_NAME.fullmatch(level):
            raise ValueError(
                f"{name} is malformed: the level name {level!r:.60} is not a level's (an "
                "identifier such as p2, res3 or stem); re-extract"
            )
        meta = mapping(f"levels.{level}", meta, required=True)
        for key in ("file", "heatmap", "overlay"):
            text(f"levels.{level}.{key}", meta.get(key))
        for key in ("stride", "valid_height", "valid_width"):
            if not is_int(meta.get(key, MISSING), 1):
                raise bad(f"levels.{level}.{key}", meta.get(key, MISSING), "a positive integer")
        for key in ("min", "max", "mean"):
            value = meta.get(key)
            # statistics of a float16/32 level: inside float32's range (a forged 1e308 would
            # overflow the report's histogram span)
            if value is not None and not (_is_number(value) and abs(value) <= _FLOAT32_MAX):
                raise bad(f"levels.{level}.{key}", value, "a finite float32 number")
        # min and max are written together (null together: no finite value), min <= max: one
        # over the other failed the whole report (numpy's histogram span) and show's scale
        low, high = meta.get("min"), meta.get("max")
        if (low is None) != (high is None):
            raise ValueError(f"{name} is malformed: 'levels.{level}.min' is {_kind_of(low)} and "
                             f"'levels.{level}.max' {_kind_of(high)}: both numbers or both null; "
                             "re-extract")  # fmt: skip
        if low is not None and low > high:
            raise ValueError(f"{name} is malformed: 'levels.{level}.min' {low!r:.40} is over "
                             f"'levels.{level}.max' {high!r:.40}; re-extract")  # fmt: skip
        vrange = meta.get("range")
        # the colour range of the drawn map: two float32 numbers (a forged [-1e308, 1e308]
        # overflowed the report's colouring), low <= high (equal for a constant map)
        if vrange is not None and not (
            isinstance(vrange, list) and len(vrange) == 2
            and all(_is_number(v) and abs(v) <= _FLOAT32_MAX for v in vrange)
            and vrange[0] <= vrange[1]
        ):  # fmt: skip
            raise bad(f"levels.{level}.range", vrange, "two finite float32 numbers, low <= high")
        nonfinite = meta.get("nonfinite")
        if nonfinite is not None and not is_int(nonfinite, 0):
            raise bad(f"levels.{level}.nonfinite", nonfinite, "a non-negative integer")
        # a count of the level's valid values (its shape is written beside it): one past them
        # took more values out of the report's count than the level holds, its mean with it
        if nonfinite and nonfinite > _valid_values(meta):
            raise bad(f"levels.{level}.nonfinite", nonfinite,
                      "at most the level's valid values (valid_height x valid_width x the "
                      "channels of its shape)")  # fmt: skip
    inp = mapping("input", manifest.get("input", MISSING))
    text("input.path", inp.get("path"))
    for key in ("width", "height"):
        if inp.get(key) is not None and not is_int(inp[key], 1):
            raise bad(f"input.{key}", inp[key], "a positive integer")
    pre = mapping("preprocess", manifest.get("preprocess", MISSING))
    # min_size, max_size and resize: what show --receptive-field resizes the photo with again
    for key in ("resized_height", "resized_width", "min_size", "max_size"):
        if key in pre and not is_int(pre[key], 1):
            raise bad(f"preprocess.{key}", pre[key], "a positive integer")
    for key in ("scale_y", "scale_x"):
        if key in pre and not (_is_number(pre[key], least=1e-12) and pre[key] <= _MAX_SCALE):
            raise bad(f"preprocess.{key}", pre[key], f"a positive number up to {_MAX_SCALE:g}")
    if "resize" in pre and not isinstance(pre["resize"], bool):
        raise bad("preprocess.resize", pre["resize"], "true or false")
    if pre.get("resize", True) and pre.get("min_size", 0) > pre.get("max_size", _MOST):
        raise ValueError(f"{name} is malformed: 'preprocess.min_size' {pre['min_size']} is over "
                         f"'preprocess.max_size' {pre['max_size']}; re-extract")  # fmt: skip
    weights = mapping("weights", manifest.get("weights", MISSING))
    for key in ("name", "sha256", "path"):
        text(f"weights.{key}", weights.get(key))
    # what show --receptive-field runs the network again with (the run's --seed range)
    if weights.get("random") is not None and not isinstance(weights["random"], bool):
        raise bad("weights.random", weights["random"], "true or false")
    if weights.get("seed") is not None and not (
        is_int(weights["seed"], 0) and weights["seed"] < 2**32
    ):
        raise bad("weights.seed", weights["seed"], "an integer in 0..2**32-1")
    heat = mapping("heatmap", manifest.get("heatmap", MISSING))
    for key in ("reduce", "cmap"):
        text(f"heatmap.{key}", heat.get(key))
    if "channel" in heat and not is_int(heat["channel"], 0):
        raise bad("heatmap.channel", heat["channel"], "a non-negative integer")
    text("overview", manifest.get("overview"))
    return manifest


def manifest_files(manifest: dict) -> dict[str, int | None]:
    """The files a manifest lists: name -> size in bytes (None where an older manifest did not
    record it). Names are plain file names inside the extraction folder."""
    files = manifest.get("files")
    if isinstance(files, dict):
        return {str(k): v if isinstance(v, int) else None for k, v in files.items()}
    listed: dict[str, int | None] = {}
    levels = manifest.get("levels")
    for meta in levels.values() if isinstance(levels, dict) else ():
        if isinstance(meta, dict):
            for key in ("file", "heatmap", "overlay"):
                if isinstance(meta.get(key), str):
                    listed[meta[key]] = None
    if isinstance(manifest.get("overview"), str):
        listed[manifest["overview"]] = None
    return listed


def is_file_name(name) -> bool:
    """Whether ``name`` (as a manifest lists it) names a file in the folder itself: a string
    with no path separator, not empty, ``.`` or ``..``."""
    return isinstance(name, str) and not ("/" in name or "\\" in name or name in ("", ".", ".."))


def is_complete(folder: Path, run_key: str | None = None) -> bool:
    """True when ``folder`` holds a complete extraction (and, given ``run_key``, the same one):
    a complete manifest whose every listed file is present with the recorded size."""
    return folder_state(folder, run_key)[0]


def folder_state(folder: Path, run_key: str | None = None) -> tuple[bool, dict | None]:
    """``(is_complete(folder, run_key), the complete manifest read for it or None)``, from one
    read of the manifest: a caller that finds the folder not complete can tell from the manifest
    (its ``run_key`` another, see ``changed_settings``) that it holds another extraction."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None or (run_key is not None and manifest.get("run_key") != run_key):
        return False, manifest
    for name, size in manifest_files(manifest).items():
        if not is_file_name(name):
            return False, manifest
        try:
            st = (folder / name).stat()
        except OSError:
            return False, manifest
        if size is not None and st.st_size != size:
            return False, manifest
    return True, manifest
