"""A feature level as one 2-D map, and the value range it is coloured with.

numpy only (no OpenCV, no matplotlib): the writer, ``show`` and the device code's checks use
these numbers without drawing anything. ``fpncli.run.device.reductions`` computes the same in torch
(``reduce_maps``, ``order_stats``), and its tests hold the two equal.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "REDUCTIONS",
    "DEFAULT_CLIP",
    "PCA_SIGN_TOLERANCE",
    "parse_clip",
    "pca_refusal",
    "value_range",
    "range_from_order_stats",
    "reduce_channels",
    "pca_sign",
    "valid_region",
    "finite_values",
]


REDUCTIONS = ("channel", "mean", "max", "l2", "pca")


def reduce_channels(feature: np.ndarray, reduce: str = "channel", channel: int = 0) -> np.ndarray:
    """Turn a ``(C, H, W)`` (or ``(1, C, H, W)``) feature map into one ``(H, W)`` float32 map.

    ``channel`` picks one channel; ``mean`` / ``max`` reduce over channels; ``l2`` is the norm
    over channels; ``pca`` projects every position on the first principal component of the
    channels (centred). PCA's sign is arbitrary; it is fixed so the map correlates positively
    with the ``mean`` map of the same channels (``pca_sign``), which makes levels comparable:
    the same structure is bright on every level. The component is fitted over every cell given:
    pass a padded level's ``valid_region``, or the padding would move it.
    """
    array = np.asarray(feature)
    if array.ndim == 4:
        if array.shape[0] != 1:
            raise ValueError(f"expected one image, got a batch of {array.shape[0]}")
        array = array[0]
    if array.ndim != 3:
        raise ValueError(f"expected a (C, H, W) feature map, got shape {array.shape}")
    if reduce == "channel":
        if not 0 <= channel < array.shape[0]:
            raise ValueError(f"channel {channel} out of range: this map has {array.shape[0]}")
        return array[channel].astype(np.float32)
    x = array.astype(np.float32)
    if reduce == "mean":
        return x.mean(axis=0)
    if reduce == "max":
        return x.max(axis=0)
    if reduce == "l2":
        return np.sqrt(np.square(x, dtype=np.float64).sum(axis=0)).astype(np.float32)
    if reduce == "pca":
        c, h, w = x.shape
        samples = x.reshape(c, h * w).astype(np.float64)
        bad = samples.size - int(np.isfinite(samples).sum())
        if bad:  # LAPACK's "Eigenvalues did not converge" would not say why
            raise ValueError(pca_refusal(bad))
        samples -= samples.mean(axis=1, keepdims=True)
        covariance = samples @ samples.T / max(h * w - 1, 1)
        _, vectors = np.linalg.eigh(covariance)
        component = vectors[:, -1] * pca_sign(vectors[:, -1])
        return (component @ samples).reshape(h, w).astype(np.float32)
    raise ValueError(f"unknown reduction {reduce!r}: use one of {', '.join(REDUCTIONS)}")


def pca_refusal(nonfinite: int) -> str:
    """Why a level holding ``nonfinite`` NaN or infinite values has no ``pca`` map (no component
    fits it): ``reduce_channels`` raises it, and a run fails the image with it
    (``fpncli.run.device.transfer.BatchResult.image``)."""
    return (f"--reduce pca needs finite values, and this level holds {nonfinite} NaN or infinite "
            "ones: use --reduce channel, mean, max or l2")  # fmt: skip


#: Below this ``|sum of loadings|`` (of a unit component) the mean map carries no sign.
PCA_SIGN_TOLERANCE = 1e-6


def pca_sign(component: np.ndarray) -> float:
    """+1 or -1: the sign that makes a first principal component's map correlate positively
    with the channel-mean map. With centred samples ``X`` (C x N) and component ``v``,
    ``cov(v X, mean_c X) = v . (X X^T 1) / (C N) = lambda (v . 1) / C``: the sign of the sum of
    the loadings. Where that sum is about 0 (the mean map is independent of the component) the
    largest loading is made positive. ``fpncli.run.device.reductions`` computes the same in torch.
    """
    total = float(np.sum(component))
    if abs(total) > PCA_SIGN_TOLERANCE * math.sqrt(component.size):
        return 1.0 if total > 0 else -1.0
    return 1.0 if component[np.argmax(np.abs(component))] >= 0 else -1.0


def valid_region(map2d: np.ndarray, valid_height: int, valid_width: int) -> np.ndarray:
    """The cells that come from image pixels, without the padded ones."""
    return map2d[..., :valid_height, :valid_width]


#: Percentiles of a map's finite values that span the colour scale unless ``--clip`` says
#: otherwise. Min-max scaling lets a handful of extreme cells set the scale (trained P2 maps
#: then look flat with a few hot pixels); 1-99 saturates at most 1% of the cells at each end
#: and keeps the rest of the colour range for the other 98%.
DEFAULT_CLIP = (1.0, 99.0)


def parse_clip(text: str | tuple[float, float] | None) -> tuple[float, float]:
    """``"LO,HI"`` percentiles (``0 <= LO < HI <= 100``) -> ``(LO, HI)``; ``"minmax"`` or
    ``"none"`` -> ``(0.0, 100.0)``; None -> ``DEFAULT_CLIP``.

    Raises:
        ValueError: anything else, saying what is expected.
    """
    if text is None:
        return DEFAULT_CLIP
    if isinstance(text, str):
        if text.strip().lower() in ("minmax", "none", "off"):
            return (0.0, 100.0)
        parts = text.split(",")
        try:
            lo, hi = (float(v) for v in parts)
        except ValueError:
            raise ValueError(
                f"expected LO,HI percentiles such as 1,99 (or minmax), got {text!r}"
            ) from None
    else:
        lo, hi = (float(v) for v in text)
    if not 0.0 <= lo < hi <= 100.0:
        raise ValueError(f"need percentiles 0 <= LO < HI <= 100, got {lo:g},{hi:g}")
    return (lo, hi)


def finite_values(values: np.ndarray) -> tuple[np.ndarray, bool]:
    """A map's finite values, flat, in float64, and whether that array is a copy of our own
    (which the caller may reorder). The usual all-finite map gets no masked copy (1.3 ms of the
    five heatmaps of an image)."""
    array = np.asarray(values)
    own = array.dtype != np.float64
    array = array.astype(np.float64, copy=False)
    finite_mask = np.isfinite(array)
    if not finite_mask.all():
        array, own = array[finite_mask], True
    return array.ravel(), own


def _places(n: int, qs: tuple[float, ...]) -> list[tuple[int, int, float]]:
    """For each percentile ``q`` of ``n`` sorted values, numpy's "linear" method: the ranks
    below and above it and the weight of the upper one. ``fpncli.run.device.reductions.order_stats``
    computes the same ranks in torch."""
    places = []
    for q in qs:
        virtual = (n - 1) * (q / 100.0)
        below = min(max(math.floor(virtual), 0), n - 1)
        places.append((below, min(below + 1, n - 1), virtual - below))
    return places


def _lerp(a: float, b: float, t: float) -> float:
    """numpy's ``_lerp``: from ``a`` (t = 0) to ``b`` (t = 1), exact at both ends."""
    diff = b - a
    return b - diff * (1 - t) if t >= 0.5 else a + diff * t


def _percentiles(values: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """``np.percentile(values, qs)`` (method "linear"), bit for bit, reordering ``values`` (flat
    float64, finite, non-empty) in place: one ``partition`` for the order statistics needed,
    then numpy's own interpolation (``_lerp``). np.percentile's Python layers held the lock for
    a fifth of its time (0.3 of the 1.5 ms of an image's five heatmaps); the partition alone
    lets go of it (0.03 of 0.9 ms)."""
    places = _places(values.size, qs)
    values.partition(sorted({i for below, above, _ in places for i in (below, above)}))
    return [_lerp(float(values[below]), float(values[above]), t) for below, above, t in places]


def _clip_percentiles(clip: tuple[float, float] | None) -> tuple[float, float]:
    return (0.0, 100.0) if clip is None else parse_clip(clip)


def value_range(
    values: np.ndarray, clip: tuple[float, float] | None = DEFAULT_CLIP
) -> tuple[float, float]:
    """The ``(vmin, vmax)`` a map is coloured with: the ``clip`` percentiles of its finite values.

    ``clip`` ``(0, 100)`` or None is the plain min-max. A map with no finite value gives
    ``(0.0, 0.0)``; a constant one ``(v, v)`` (``colorize`` then uses the middle colour); one
    whose percentiles coincide (a few non-zero cells) falls back to min-max. Every
    picture (heatmap, overlay, overview, ``show``) takes its range from here, and the manifest
    records it, so one range means the same everywhere.
    """
    finite, own = finite_values(values)
    if finite.size == 0:
        return (0.0, 0.0)
    lo, hi = _clip_percentiles(clip)
    if lo <= 0.0 and hi >= 100.0:
        return (float(finite.min()), float(finite.max()))
    vmin, vmax = _percentiles(finite if own else finite.copy(), (lo, hi))
    if vmax <= vmin:  # mostly one value (a sparse map): the percentiles would hide the rest
        return (float(finite.min()), float(finite.max()))
    return (float(vmin), float(vmax))


def range_from_order_stats(
    stats: tuple[float, ...], clip: tuple[float, float] | None = DEFAULT_CLIP
) -> tuple[float, float]:
    """``value_range`` of a map from the order statistics of its finite values that the device
    picked out (``fpncli.run.device.reductions.order_stats``: the count, the min, the max, and
    the values at the ranks below and above each of the ``clip`` percentiles), without the map:
    the very same numbers, as the ranks are numpy's and the interpolation is done here."""
    n, smallest, largest, below_lo, above_lo, below_hi, above_hi = (float(v) for v in stats)
    n = int(n)
    if n == 0:
        return (0.0, 0.0)
    lo, hi = _clip_percentiles(clip)
    if lo <= 0.0 and hi >= 100.0:
        return (smallest, largest)
    (_, _, t_lo), (_, _, t_hi) = _places(n, (lo, hi))
    vmin, vmax = _lerp(below_lo, above_lo, t_lo), _lerp(below_hi, above_hi, t_hi)
    if vmax <= vmin:
        return (smallest, largest)
    return (vmin, vmax)
