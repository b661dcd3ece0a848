"""An extraction folder's manifest: reading it, the files it lists, whether the folder is
complete, and the run key that says whether it holds the same extraction."""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING

from .guard import read_json_file

if TYPE_CHECKING:
    from .outputs import OutputOptions

__all__ = [
    "MANIFEST", "read_manifest", "check_manifest", "manifest_files", "is_complete", "run_key",
]  # fmt: skip

MANIFEST = "manifest.json"
_MAX_MANIFEST_BYTES = 16 << 20


def read_manifest(folder: Path) -> dict | None:
    """The folder's manifest if it is a complete one, else None."""
    try:
        manifest = read_json_file(Path(folder) / MANIFEST, _MAX_MANIFEST_BYTES)
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("complete") else None


_MISSING = object()


_FLOAT32_MAX = 3.4028234663852886e38
_MOST = 1 << 53  # no size or count fpncli writes comes near; past it, floats lose integers


def _is_int(value, least: int) -> bool:
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
    if value is _MISSING:
        return "missing"
    if value is None:
        return "null"
    kind = type(value).__name__
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} ({value!r:.40})"


def check_manifest(manifest: dict, name: str) -> dict:
    """``manifest`` when every field fpncli reads back has the type it is written with; else a
    one-line ValueError naming ``name`` (the manifest's file) and the field. Optional fields may
    be missing (and strings null, as ``overview`` or a level's ``file`` when not saved); the
    ``levels`` mapping and each level's ``stride`` and valid size must be there.
    """

    def bad(field: str, value, wanted: str) -> ValueError:
        return ValueError(
            f"{name} is malformed: '{field}' is {_kind_of(value)}, not {wanted}; re-extract"
        )

    def mapping(field: str, value, required: bool = False) -> dict:
        """A mapping field: missing is fine unless required; present, a mapping (not null)."""
        if value is _MISSING and not required:
            return {}
        if not isinstance(value, dict):
            raise bad(field, value, "a mapping")
        return value

    def text(field: str, value) -> None:
        if value is not None and not isinstance(value, str):
            raise bad(field, value, "a string")

    for level, meta in mapping("levels", manifest.get("levels", _MISSING), required=True).items():
        meta = mapping(f"levels.{level}", meta, required=True)
        for key in ("file", "heatmap", "overlay"):
            text(f"levels.{level}.{key}", meta.get(key))
        for key in ("stride", "valid_height", "valid_width"):
            if not _is_int(meta.get(key, _MISSING), 1):
                raise bad(f"levels.{level}.{key}", meta.get(key, _MISSING), "a positive integer")
        for key in ("min", "max", "mean"):
            value = meta.get(key)
            # statistics of a float16/32 level: inside float32's range (a forged 1e308 would
            # overflow the report's histogram span)
            if value is not None and not (_is_number(value) and abs(value) <= _FLOAT32_MAX):
                raise bad(f"levels.{level}.{key}", value, "a finite float32 number")
        if meta.get("nonfinite") is not None and not _is_int(meta["nonfinite"], 0):
            raise bad(f"levels.{level}.nonfinite", meta["nonfinite"], "a non-negative integer")
    inp = mapping("input", manifest.get("input", _MISSING))
    text("input.path", inp.get("path"))
    for key in ("width", "height"):
        if inp.get(key) is not None and not _is_int(inp[key], 1):
            raise bad(f"input.{key}", inp[key], "a positive integer")
    pre = mapping("preprocess", manifest.get("preprocess", _MISSING))
    for key in ("resized_height", "resized_width"):
        if key in pre and not _is_int(pre[key], 1):
            raise bad(f"preprocess.{key}", pre[key], "a positive integer")
    for key in ("scale_y", "scale_x"):
        if key in pre and not _is_number(pre[key], least=1e-12):
            raise bad(f"preprocess.{key}", pre[key], "a positive number")
    weights = mapping("weights", manifest.get("weights", _MISSING))
    for key in ("name", "sha256"):
        text(f"weights.{key}", weights.get(key))
    heat = mapping("heatmap", manifest.get("heatmap", _MISSING))
    for key in ("reduce", "cmap"):
        text(f"heatmap.{key}", heat.get(key))
    if "channel" in heat and not _is_int(heat["channel"], 0):
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
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None or (run_key is not None and manifest.get("run_key") != run_key):
        return False
    for name, size in manifest_files(manifest).items():
        if not is_file_name(name):
            return False
        try:
            st = (folder / name).stat()
        except OSError:
            return False
        if size is not None and st.st_size != size:
            return False
    return True


def run_key(image_path: Path, options: OutputOptions, weights: dict, precision: str,
            stat: os.stat_result | None = None) -> str:  # fmt: skip
    """A digest of everything that determines an image's outputs: the input file (size and
    modification time: ``stat``, by default the file's now), the weights, the precision and
    the output options. A complete folder with the same key is skipped on resume; a different
    key means re-extract."""
    stat = Path(image_path).stat() if stat is None else stat
    # the JSON of {"input", "options", "precision", "weights"} with sorted keys, as earlier
    # versions wrote it (their folders still resume), with the options' part made once per
    # options object: asdict was 60% of the time of listing a million pending images
    parts = [
        ("input", json.dumps([os.path.realpath(image_path), stat.st_size, stat.st_mtime_ns])),
        ("options", _options_json(options)),
        ("precision", json.dumps(precision)),
        ("weights", json.dumps([weights.get("name"), weights.get("sha256"), weights.get("seed")])),
    ]
    material = "{" + ", ".join(f'"{name}": {value}' for name, value in parts) + "}"
    return hashlib.sha256(material.encode()).hexdigest()[:16]


#: How maps are drawn: what the outputs do not depend on when nothing is drawn.
_DRAWING = ("channel", "reduce", "cmap", "clip")


def options_for_key(options: OutputOptions) -> dict:
    """The output options as the run keys see them: when nothing is drawn (no heatmaps, no
    overview, no overlay), the drawing options at their defaults, so that changing ``--cmap``
    or ``--channel`` on a ``.npy``-only folder does not redo it (and earlier folders, written
    with the defaults, still resume)."""
    chosen = asdict(options)
    if not (options.save_heatmaps or options.save_overview or options.overlay):
        defaults = {f.name: f.default for f in fields(options) if f.name in _DRAWING}
        chosen.update({k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items()})
    return chosen


def _options_json(options: OutputOptions) -> str:
    cached = options.__dict__.get("_run_key_json")
    if cached is None:
        chosen = options_for_key(options)
        if chosen["canvas"] is None:  # as before canvases existed: earlier runs still resume
            del chosen["canvas"]
        cached = json.dumps(chosen, sort_keys=True)
        object.__setattr__(options, "_run_key_json", cached)  # frozen: fields never change
    return cached
