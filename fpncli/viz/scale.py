"""Colour scales across a run: ``--scale image|level|shared``.

- ``image``: every map on its own range (the ``--clip`` percentiles of that map): the default,
  best contrast, but two pictures' colours cannot be compared.
- ``level``: one range per level for all images of the run.
- ``shared``: one range for all levels of all images of the run, so two pictures with the same
  colour mean the same value.

The run's ranges come from the manifests, without reading any tensor: each level's recorded
colour ``range`` (the ``--clip`` percentiles of the drawn map) when the map asked for is the one
that was drawn at extraction (same ``reduce`` and ``channel``), else the level's ``min``/``max``
over all channels. A level's run range spans its images' ranges.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

__all__ = ["SCALES", "run_ranges", "extraction_root"]

SCALES = ("image", "level", "shared")


def _finite_pair(value) -> tuple[float, float] | None:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer past float's range
        return None
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) and hi >= lo else None


def run_ranges(
    manifests: Iterable[dict], scale: str, *, reduce: str = "channel", channel: int = 0
) -> dict[str, tuple[float, float]] | None:
    """level -> (vmin, vmax) for ``scale`` over the manifests of a run; None for ``image``.

    Raises:
        ValueError: an unknown scale, or no level with a usable range in any manifest.
    """
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}: use one of {', '.join(SCALES)}")
    if scale == "image":
        return None
    ranges: dict[str, tuple[float, float]] = {}
    for manifest in manifests:
        heat = manifest.get("heatmap")
        heat = heat if isinstance(heat, dict) else {}  # a forged one: the min/max, not the range
        drawn = heat.get("reduce", "channel") == reduce and (
            reduce != "channel" or heat.get("channel", 0) == channel
        )
        levels = manifest.get("levels")
        for name, meta in levels.items() if isinstance(levels, dict) else ():
            if not isinstance(meta, dict):
                continue
            pair = _finite_pair(meta.get("range")) if drawn else None
            pair = pair or _finite_pair((meta.get("min"), meta.get("max")))
            if pair is None:
                continue
            old = ranges.get(name)
            ranges[name] = pair if old is None else (min(old[0], pair[0]), max(old[1], pair[1]))
    if not ranges:
        raise ValueError("no recorded statistics in these manifests: use --scale image")
    if scale == "shared":
        lo = min(r[0] for r in ranges.values())
        hi = max(r[1] for r in ranges.values())
        return dict.fromkeys(ranges, (lo, hi))
    return ranges


def extraction_root(folder: Path) -> Path:
    """The output folder of the run that wrote image folder ``folder``: the nearest folder above
    it holding the run's ``run.json`` or output marker, else its parent."""
    folder = Path(folder).resolve()
    for parent in folder.parents:
        if (parent / "run.json").is_file() or (parent / ".fpncli-output").is_file():
            return parent
    return folder.parent
