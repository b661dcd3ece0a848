"""Run keys: the digest of everything that determines an image's outputs (input file, weights,
precision, output options), which says whether a complete folder holds the same extraction;
the keys earlier versions gave it, and the settings in which an extraction's manifest differs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import MISSING, asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING

from .manifest import MISSING as _MISSING  # a field the manifest lacks (MISSING: dataclasses')
from .manifest import is_int

if TYPE_CHECKING:
    from .outputs import OutputOptions

__all__ = ["run_key", "legacy_run_key", "options_for_key", "legacy_options", "changed_settings"]


def run_key(image_path: Path, options: OutputOptions, weights: dict, precision: str,
            stat: os.stat_result | None = None) -> str:  # fmt: skip
    """A digest of everything that determines an image's outputs: the input file (size and
    modification time: ``stat``, by default the file's now), the weights, the precision and
    the output options. A complete folder with the same key is skipped on resume; a different
    key means re-extract."""
    return _run_key(image_path, _options_json(options), weights, precision, stat)


def legacy_run_key(image_path: Path, options: OutputOptions, weights: dict, precision: str,
                   manifest: dict, stat: os.stat_result | None = None) -> str | None:  # fmt: skip
    """The run key an earlier version gave the extraction ``manifest`` records if it was made
    with ``options`` (``legacy_options``), None where that is the key ``run_key`` gives. Those
    versions hashed the options that change nothing as given: a folder they made with
    ``--channel 5 --reduce mean`` or ``--no-resize --min-size 700`` is the same extraction as
    this run's, and is skipped, not redone."""
    chosen = legacy_options(options, manifest)
    if chosen is None:
        return None
    return _run_key(image_path, _key_json(chosen), weights, precision, stat)


def _run_key(image_path: Path, options_json: str, weights: dict, precision: str,
             stat: os.stat_result | None) -> str:  # fmt: skip
    stat = Path(image_path).stat() if stat is None else stat
    # the JSON of {"input", "options", "precision", "weights"} with sorted keys, as earlier
    # versions wrote it (their folders still resume), with the options' part made once per
    # options object: asdict was 60% of the time of listing a million pending images
    parts = [
        ("input", json.dumps([os.path.realpath(image_path), stat.st_size, stat.st_mtime_ns])),
        ("options", options_json),
        ("precision", json.dumps(precision)),
        ("weights", json.dumps([weights.get("name"), weights.get("sha256"), weights.get("seed")])),
    ]
    material = "{" + ", ".join(f'"{name}": {value}' for name, value in parts) + "}"
    return hashlib.sha256(material.encode()).hexdigest()[:16]


#: How maps are drawn: what the outputs do not depend on when nothing is drawn.
_DRAWING = ("channel", "reduce", "cmap", "clip")


def options_for_key(options: OutputOptions) -> dict:
    """The output options as the run keys see them, those that change nothing at their
    defaults: the drawing options when nothing is drawn (no heatmaps, no overview, no overlay),
    ``channel`` unless ``reduce`` is ``channel``, and ``min_size``/``max_size`` without the
    resize. So changing ``--cmap`` on a ``.npy``-only folder, ``--channel`` with ``--reduce
    l2`` or ``--min-size`` with ``--no-resize`` does not redo it; and earlier folders, whose
    keys held those options as given (at their defaults unless the user changed them), still
    resume."""
    return _unused_at_defaults(asdict(options))


def _unused_at_defaults(chosen: dict) -> dict:
    """``chosen`` (output options by field name; a manifest's may be ``_MISSING``), with the
    options that change nothing at their defaults (``options_for_key``)."""
    defaults = _defaults()
    if not (chosen["save_heatmaps"] or chosen["save_overview"] or chosen["overlay"]):
        chosen.update({name: defaults[name] for name in _DRAWING})
    if isinstance(chosen["reduce"], str) and chosen["reduce"] != "channel":
        chosen["channel"] = defaults["channel"]
    if chosen["resize"] is False:
        chosen.update(min_size=defaults["min_size"], max_size=defaults["max_size"])
    return chosen


def legacy_options(options: OutputOptions, manifest: dict) -> dict | None:
    """The output options as versions before ``options_for_key`` put the options that change
    nothing at their defaults held them in their keys: ``options`` as given (the drawing options
    at their defaults when nothing is drawn, as those versions did), with ``channel`` and
    ``min_size``/``max_size`` where they change nothing at the values ``manifest`` records
    (``heatmap.channel``, ``preprocess.min_size``/``max_size``). None where that is
    ``options_for_key(options)`` (nothing recorded other than the defaults) or ``manifest``
    records no valid value for one of them. (``--seed`` needs none: other weights than random
    never recorded a seed.)"""

    def mapping(value) -> dict:
        return value if isinstance(value, dict) else {}

    chosen = asdict(options)
    if not (chosen["save_heatmaps"] or chosen["save_overview"] or chosen["overlay"]):
        chosen.update({name: _defaults()[name] for name in _DRAWING})
    recorded = {}
    if chosen["reduce"] != "channel":
        recorded["channel"] = mapping(manifest.get("heatmap")).get("channel")
    if not chosen["resize"]:
        pre = mapping(manifest.get("preprocess"))
        recorded.update(min_size=pre.get("min_size"), max_size=pre.get("max_size"))
    if not all(is_int(value, 0) for value in recorded.values()):
        return None
    chosen.update(recorded)
    return None if chosen == options_for_key(options) else chosen


@functools.cache
def _defaults() -> dict:
    """The defaults of ``OutputOptions``' fields, as their JSON holds them (tuples as lists)."""
    from .outputs import OutputOptions

    defaults = {f.name: f.default for f in fields(OutputOptions) if f.default is not MISSING}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items()}


#: extract's option for each output option a manifest records, as ``changed_settings`` names it
_FLAGS = {
    "levels": "--levels", "dtype": "--dtype", "save_npy": "--no-npy",
    "save_heatmaps": "--no-heatmaps", "save_overview": "--no-overview", "overlay": "--overlay",
    "reduce": "--reduce", "channel": "--channel", "cmap": "--cmap", "clip": "--clip",
    "min_size": "--min-size", "max_size": "--max-size", "resize": "--no-resize",
    "canvas": "--canvas",
}  # fmt: skip


def changed_settings(manifest: dict, options: OutputOptions, weights: dict,
                     precision: str) -> list[str]:  # fmt: skip
    """The settings, as extract's options name them (``--weights``, ``--canvas``, ...), in
    which the extraction ``manifest`` records differs from one with ``options``, ``weights``
    and ``precision``, compared as the run key compares them (``options_for_key``). Empty when
    none that the manifest records differs (its input file changed since, say), and for the
    fields an earlier version did not record. Reads only ``manifest``: for the folders whose
    run key differs, whose manifest resume has read."""

    def mapping(value) -> dict:
        return value if isinstance(value, dict) else {}

    levels = mapping(manifest.get("levels"))
    metas = [mapping(m) for m in levels.values()]
    pre, heat = mapping(manifest.get("preprocess")), mapping(manifest.get("heatmap"))
    then = {
        "levels": list(levels), "dtype": next((m.get("dtype") for m in metas), None),
        "save_npy": any(m.get("file") for m in metas),
        "save_heatmaps": any(m.get("heatmap") for m in metas),
        "save_overview": manifest.get("overview") is not None,
        "overlay": any(m.get("overlay") for m in metas),
        "reduce": heat.get("reduce", _MISSING), "channel": heat.get("channel", _MISSING),
        "cmap": heat.get("cmap", _MISSING), "clip": heat.get("clip_percentiles", _MISSING),
        **{k: pre.get(k, _MISSING) for k in ("min_size", "max_size", "resize")},
        "canvas": pre.get("canvas"),  # not recorded before canvases existed: none
    }  # fmt: skip
    then = _unused_at_defaults(then)
    now = json.loads(_options_json(options))  # as the run key holds them (no canvas: none)
    changed = []
    recorded = mapping(manifest.get("weights"))
    identity = ("name", "sha256", "seed")
    if [recorded.get(k) for k in identity] != [weights.get(k) for k in identity]:
        same_name = recorded.get("name") == weights.get("name") and weights.get("random")
        changed.append("--seed" if same_name else "--weights")
    if manifest.get("precision", precision) != precision:
        changed.append("--precision")
    for name, flag in _FLAGS.items():
        if then[name] is not _MISSING and then[name] != now.get(name):  # JSON's lists both
            changed.append(flag)
    return changed


def _options_json(options: OutputOptions) -> str:
    cached = options.__dict__.get("_run_key_json")
    if cached is None:
        cached = _key_json(options_for_key(options))
        object.__setattr__(options, "_run_key_json", cached)  # frozen: fields never change
    return cached


def _key_json(chosen: dict) -> str:
    if chosen["canvas"] is None:  # as before canvases existed: earlier runs still resume
        chosen = {k: v for k, v in chosen.items() if k != "canvas"}
    return json.dumps(chosen, sort_keys=True)
