"""Statistics of a level across many images: exact min/max/mean, sampled std, zeros, histogram.

Reading every value of every level of a folder is too slow for a report (P2 of one 800x1344
image is 17 M values), so each image contributes a fixed, evenly spaced sample of its valid
region: ``sample_level`` takes whole channels (contiguous in the ``.npy``, cheap to read from a
memory map) with a spatial stride. A level small enough is taken whole, so small tests have exact
answers. min, max and mean come exactly from the manifests when they are recorded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["sample_level", "LevelStats", "accumulate", "KEEP_VALUES"]

#: About this many values are sampled per image and level.
SAMPLE_VALUES = 32_768


def sample_level(valid: np.ndarray, max_values: int = SAMPLE_VALUES) -> np.ndarray:
    """An evenly spaced sample of a ``(1, C, h, w)`` or ``(C, h, w)`` level as float32, flat.

    All values when there are at most ``max_values``; otherwise up to 8 evenly spaced channels,
    each subsampled with the same spatial stride in both directions.
    """
    array = valid[0] if valid.ndim == 4 else valid
    channels, height, width = array.shape
    if array.size <= max_values:
        return np.asarray(array, dtype=np.float32).ravel()
    picked = min(channels, 8)
    channel_index = np.linspace(0, channels - 1, picked).round().astype(int)
    per_channel = max(1, max_values // picked)
    stride = max(1, math.ceil(math.sqrt(height * width / per_channel)))
    parts = [np.asarray(array[c, ::stride, ::stride], dtype=np.float32).ravel() for c in
             channel_index]  # fmt: skip
    return np.concatenate(parts)


#: At most this many sampled values per level are kept for the histogram (8 MB): past it the
#: kept samples are thinned, so a folder of any size draws its histogram in bounded memory.
KEEP_VALUES = 1 << 21
#: The kept samples are joined into one array when there are this many: past the thinning an
#: image adds a few values, and an array (and a sum over the list) per image grew with the
#: folder (100,000 images: 17 MB of arrays per level, 5e9 steps of summing).
_JOIN_SAMPLES = 64


@dataclass
class LevelStats:
    """One level across a folder. ``min``/``max``/``mean`` are exact (over every value of every
    image, from the manifests); ``std`` and ``zero_fraction`` come from the samples (running sums
    over every sampled value); the histogram from at most ``KEEP_VALUES`` of them, evenly
    thinned. Memory does not grow with the number of images."""

    level: str
    images: int = 0
    values: int = 0  # values behind min/max/mean
    min: float = math.inf
    max: float = -math.inf
    sum: float = 0.0
    sampled_values: int = 0  # finite sampled values behind std and zero_fraction
    sampled_mean: float = 0.0
    sampled_m2: float = 0.0  # sum of squared deviations from sampled_mean (Chan et al.)
    sampled_zeros: int = 0
    samples: list[np.ndarray] = field(default_factory=list, repr=False)  # kept for the histogram
    keep_every: int = 1  # the kept samples hold every keep_every-th sampled value
    keep_values: int = KEEP_VALUES
    kept: int = 0  # values in ``samples``

    @property
    def mean(self) -> float:
        return self.sum / self.values if self.values else math.nan

    @property
    def sampled(self) -> np.ndarray:
        """The kept sample (every ``keep_every``-th sampled finite value)."""
        return np.concatenate(self.samples) if self.samples else np.zeros(0, np.float32)

    @property
    def std(self) -> float:
        if not self.sampled_values:
            return math.nan
        return math.sqrt(max(0.0, self.sampled_m2 / self.sampled_values))

    @property
    def zero_fraction(self) -> float:
        return self.sampled_zeros / self.sampled_values if self.sampled_values else math.nan

    @property
    def exact(self) -> bool:
        """Whether the samples were every value (then std and zeros are exact too)."""
        return self.sampled_values == self.values

    def add_sample(self, sample: np.ndarray) -> None:
        """Fold one image's sampled values (flat) into the running statistics."""
        data = np.asarray(sample, dtype=np.float32).ravel()
        data = data[np.isfinite(data)]
        n = int(data.size)
        if n:
            mean = float(data.mean(dtype=np.float64))
            m2 = float(np.square(data.astype(np.float64) - mean).sum())
            total = self.sampled_values + n
            delta = mean - self.sampled_mean
            self.sampled_m2 += m2 + delta * delta * self.sampled_values * n / total
            self.sampled_mean += delta * n / total
            self.sampled_values = total
            self.sampled_zeros += int(np.count_nonzero(data == 0))
        self.samples.append(data[:: self.keep_every].copy())
        self.kept += self.samples[-1].size
        if len(self.samples) >= _JOIN_SAMPLES:  # one array, not one (of a few values) per image
            self.samples = [np.concatenate(self.samples)]
        while self.kept > self.keep_values:
            self.keep_every *= 2
            self.samples = [s[::2].copy() for s in self.samples]
            self.kept = sum(s.size for s in self.samples)

    def histogram(self, bins: int = 60) -> tuple[np.ndarray, np.ndarray]:
        """Counts and edges (float64) of the kept sampled values on ``[min, max]``."""
        sampled = self.sampled
        lo, hi = (self.min, self.max) if self.values else (0.0, 1.0)
        if not hi > lo:
            lo, hi = lo - 0.5, hi + 0.5
        # a float64 range makes the edges and the binning float64, not the samples' float32: a
        # level at float32's ends (a manifest's min -3.4e38, max 3.4e38) overflowed float32 in
        # the span and in matplotlib's sum of the edges (numpy's RuntimeWarning)
        return np.histogram(sampled, bins=bins, range=(np.float64(lo), np.float64(hi)))


def accumulate(
    stats: LevelStats,
    valid: np.ndarray | None,
    meta: dict | None = None,
    sample: np.ndarray | None = None,
    shape: tuple[int, ...] | None = None,
) -> None:
    """Add one image's level (its valid region) to ``stats``.

    ``meta`` is the manifest's entry for the level; its ``min``, ``max`` and ``mean`` are used
    when present (no pass over the data), else they are computed. A ``sample`` already taken
    (with the valid region's ``shape``) may be given instead of ``valid``.
    """
    count = int(np.prod(valid.shape if valid is not None else shape))
    numbers = (int, float)
    if meta is not None and all(isinstance(meta.get(k), numbers) for k in ("min", "max", "mean")):
        # the manifest's statistics are over the finite values only
        lo, hi, mean = float(meta["min"]), float(meta["max"]), float(meta["mean"])
        count -= int(meta.get("nonfinite") or 0)
    elif valid is not None:
        data = np.asarray(valid, dtype=np.float32)
        data = data[np.isfinite(data)]
        count = int(data.size)
        lo, hi, mean = (
            (float(data.min()), float(data.max()), float(data.mean(dtype=np.float64)))
            if count
            else (math.inf, -math.inf, 0.0)
        )
    else:  # no finite value recorded and no data given
        count, lo, hi, mean = 0, math.inf, -math.inf, 0.0
    stats.images += 1
    stats.values += count
    stats.min = min(stats.min, lo)
    stats.max = max(stats.max, hi)
    stats.sum += mean * count
    stats.add_sample(sample if sample is not None else sample_level(valid))
