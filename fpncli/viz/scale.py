"""Colour scales across a run: ``--scale image|level|shared``.

- ``image``: every map on its own range (the ``--clip`` percentiles of that map): the default,
  best contrast, but two pictures' colours cannot be compared.
- ``level``: one range per level for all images of the run.
- ``shared``: one range for all levels of all images of the run, so two pictures with the same
  colour mean the same value.

The run's ranges come from the manifests, without reading any tensor: each level's recorded
colour ``range`` (the ``--clip`` percentiles of the drawn map) when the map asked for is the one
that was drawn at extraction (same ``reduce`` and ``channel``), else the level's ``min``/``max``
over all channels, which bound a channel, the channels' mean and their max (``BOUNDED``), but
not their ``l2`` norm or a ``pca`` projection: for those an image must record the map's own
range. A level's run range spans its images' ranges.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

from ..io.guard import OptionError

__all__ = [
    "BOUNDED",
    "SCALES",
    "drawn_range",
    "extraction_root",
    "range_to_draw",
    "recorded_range",
    "run_ranges",
]

SCALES = ("image", "level", "shared")
#: The reductions whose maps lie within the tensor's min..max over all channels.
BOUNDED = ("channel", "mean", "max")


def _finite_pair(value) -> tuple[float, float] | None:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer past float's range
        return None
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) and hi >= lo else None


def _heatmap(manifest: dict) -> dict:
    heat = manifest.get("heatmap")
    return heat if isinstance(heat, dict) else {}  # a forged one: the min/max, not the range


def _drawn(heat: dict, reduce: str, channel: int) -> bool:
    """Whether the map recorded by a manifest's ``heatmap`` is the ``reduce``/``channel`` one."""
    return heat.get("reduce", "channel") == reduce and (
        reduce != "channel" or heat.get("channel", 0) == channel
    )


def recorded_range(
    manifest: dict | None,
    level: str,
    *,
    reduce: str = "channel",
    channel: int = 0,
    clip: tuple[float, float] | None = None,
) -> tuple[float, float] | None:
    """The colour range ``manifest`` records for ``level``'s map, when that map is the one
    asked for (``reduce``, ``channel``, and with ``clip`` the same percentiles); else None (no
    manifest, another map or clip, no range)."""
    if not isinstance(manifest, dict):
        return None
    heat = _heatmap(manifest)
    if not _drawn(heat, reduce, channel) or (
        clip is not None and heat.get("clip_percentiles") != list(clip)
    ):
        return None
    levels = manifest.get("levels")
    meta = levels.get(level) if isinstance(levels, dict) else None
    return _finite_pair(meta.get("range")) if isinstance(meta, dict) else None


def run_ranges(
    manifests: Iterable[dict], scale: str, *, reduce: str | None = "channel", channel: int = 0
) -> dict[str, tuple[float, float]] | None:
    """level -> (vmin, vmax) for ``scale`` over the manifests of a run; None for ``image``.
    ``reduce`` and ``channel`` name the map to be drawn; ``reduce=None``: each image's own
    drawn map, as recorded in its manifest (the report draws each image so).

    Raises:
        ValueError: an unknown scale; no level with a usable range in any manifest (damaged
            or forged statistics); or, an ``OptionError`` (``--scale``), an image that records
            no range for an ``l2`` or ``pca`` map asked for (extracted with another reduction:
            its min/max do not bound that map).
    """
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}: use one of {', '.join(SCALES)}")
    if scale == "image":
        return None
    ranges: dict[str, tuple[float, float]] = {}
    unbounded = 0  # images whose l2/pca map has no recorded range
    for manifest in manifests:
        heat = _heatmap(manifest)
        wanted = heat.get("reduce", "channel") if reduce is None else reduce
        drawn = reduce is None or _drawn(heat, reduce, channel)
        levels = manifest.get("levels")
        missing = False
        for name, meta in levels.items() if isinstance(levels, dict) else ():
            if not isinstance(meta, dict):
                continue
            pair = _finite_pair(meta.get("range")) if drawn else None
            if pair is None and wanted in BOUNDED:
                pair = _finite_pair((meta.get("min"), meta.get("max")))
            if pair is None:
                missing = missing or wanted not in BOUNDED
                continue
            old = ranges.get(name)
            ranges[name] = pair if old is None else (min(old[0], pair[0]), max(old[1], pair[1]))
        unbounded += missing
    if unbounded:  # the data are sound: --scale is what they rule out
        raise OptionError(
            f"{unbounded} image(s) record no range for their {wanted} map (extracted with "
            f"another reduction, whose min/max do not bound it): extract them with --reduce "
            f"{wanted}, or use --scale image",
            "--scale",
        )
    if not ranges:
        raise ValueError("no recorded statistics in these manifests: use --scale image")
    if scale == "shared":
        lo = min(r[0] for r in ranges.values())
        hi = max(r[1] for r in ranges.values())
        return dict.fromkeys(ranges, (lo, hi))
    return ranges


def drawn_range(
    run: tuple[float, float], recorded, own: tuple[float, float]
) -> tuple[float, float]:
    """A level's run range ``run`` as one image's map of it is drawn with: each end that the
    image's ``recorded`` range set (its manifest's ``range`` of this very map, from the run's
    reduction: torch's, on the device) is taken from ``own``, the range of the map drawn
    (``value_range`` of numpy's reduction of the ``.npy``). The two reductions may differ by a
    rounding, and the image that set an end would be labelled clipped beyond it (or not to
    reach it) by an ulp; every other image is drawn on the run's range as it is."""
    pair = _finite_pair(recorded)
    if pair is None:
        return run
    lo = own[0] if pair[0] == run[0] else run[0]
    hi = own[1] if pair[1] == run[1] else run[1]
    return (lo, hi) if lo <= hi else run


def range_to_draw(
    values,
    level: str,
    *,
    clip: tuple[float, float],
    run: tuple[float, float] | None,
    manifest: dict | None,
    reduce: str,
    channel: int,
) -> tuple[float, float]:
    """The colour range of one image's map ``values`` of ``level``: its own ``clip`` range, or,
    with a run range ``run`` (``--scale level|shared``), that one, with each end that this
    image's recorded range (same map, same ``clip``) set taken from its own (``drawn_range``)."""
    from .maps import value_range  # numpy: only where a picture is drawn

    own = value_range(values, clip)
    if run is None:
        return own
    recorded = recorded_range(manifest, level, reduce=reduce, channel=channel, clip=clip)
    return drawn_range(run, recorded, own)


def extraction_root(folder: Path) -> Path:
    """The output folder of the run that wrote image folder ``folder``: the nearest folder above
    it holding the run's ``run.json`` or output marker, else its parent."""
    folder = Path(folder).resolve()
    for parent in folder.parents:
        if (parent / "run.json").is_file() or (parent / ".fpncli-output").is_file():
            return parent
    return folder.parent
