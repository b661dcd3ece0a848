"""What ``fpncli diff`` finds: the measures of one level, the records of an image and a folder.

For every image present in both extractions and every level saved in both, on the valid region
only (padded cells are not image), ``compare_arrays`` measures:

- ``max_rel``  = max|A - B| / max|A|      (the project's parity measure, as ``scripts/parity.py``)
- ``mean_rel`` = mean|A - B| / mean|A|
- ``cosine``   = <A, B> / (|A| |B|) over the whole (C, h, w) tensor flattened
- ``max_abs``  = max|A - B|

A is the reference. ``LevelDiff`` holds one level's measures, ``ImageDiff`` one image's levels
(or why it was not compared), ``DiffResult`` every image and the per-level table. Numpy only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = [
    "LevelDiff", "ImageDiff", "DiffResult", "compare_arrays", "worst_level", "level_order",
]  # fmt: skip


@dataclass(frozen=True)
class LevelDiff:
    """One level of one image: A (reference) against B."""

    level: str
    max_rel: float
    mean_rel: float
    cosine: float
    max_abs: float


@dataclass
class ImageDiff:
    """One image: its levels compared, or why it was not."""

    key: str  # the image folder relative to the roots
    levels: list[LevelDiff] = field(default_factory=list)
    skipped: str | None = None  # why not compared (geometry, one side lacks or cannot read it)
    picture: str | None = None  # the |A - B| picture, relative to the diff output folder
    # without --levels, the levels saved (as .npy) on one side only, not compared: name -> side
    one_side: dict[str, str] = field(default_factory=dict)
    # why its picture could not be written (compared all the same): another image's picture
    # or folder where it goes (keys x and x/diff.png), a folder that cannot be written or is
    # a symlink (never written through)
    picture_error: str | None = None
    # a doubt about the pair (its recorded inputs are two different files), or why an image
    # folder against a root has none (the root holds no image of its key): ``diff_pairs``
    note: str | None = None

    def agrees(self, tol: float) -> bool:
        return self.skipped is None and all(d.max_rel <= tol for d in self.levels)


def worst_level(levels: list[LevelDiff]) -> LevelDiff:
    """The level that differs most: one whose ``max_rel`` is NaN (a NaN in A or B: nothing
    agrees there) before any number, else the largest ``max_rel``. ``max`` alone compares NaN
    as neither larger nor smaller, so it named whichever level came first."""
    return max(levels, key=lambda d: (math.isnan(d.max_rel), 0.0 if math.isnan(d.max_rel)
                                      else d.max_rel))  # fmt: skip


def _highest(values: list[float]) -> float:
    """The largest of ``values``, NaN if any is (as ``worst_level``)."""
    return math.nan if any(math.isnan(v) for v in values) else max(values)


def _lowest(values: list[float]) -> float:
    """The smallest of ``values``, NaN if any is (the worst cosine)."""
    return math.nan if any(math.isnan(v) for v in values) else min(values)


@dataclass
class DiffResult:
    """Every image of the two roots; ``agree`` says whether all compared within ``tol``."""

    a: str
    b: str
    tol: float
    images: list[ImageDiff]

    @property
    def compared(self) -> list[ImageDiff]:
        return [i for i in self.images if i.skipped is None]

    @property
    def agree(self) -> bool:
        return bool(self.images) and all(i.agrees(self.tol) for i in self.images)

    def one_side(self) -> dict[str, list[str]]:
        """Side ("A" or "B") -> the levels saved there only, in some image (a run
        without ``levels``: they were left out of the comparison)."""
        sides: dict[str, set[str]] = {}
        for image in self.images:
            for name, side in image.one_side.items():
                sides.setdefault(side, set()).add(name)
        return {side: sorted(names, key=level_order) for side, names in sorted(sides.items())}

    def level_table(self) -> list[dict]:
        """Per level across the folder: worst max_rel, mean of mean_rel, lowest cosine."""
        rows = []
        names = sorted({d.level for i in self.compared for d in i.levels}, key=level_order)
        for name in names:
            diffs = [d for i in self.compared for d in i.levels if d.level == name]
            rows.append({
                "level": name, "images": len(diffs),
                "max_rel": _highest([d.max_rel for d in diffs]),
                "mean_rel": float(np.mean([d.mean_rel for d in diffs])),
                "min_cosine": _lowest([d.cosine for d in diffs]),
                "max_abs": _highest([d.max_abs for d in diffs]),
                "within_tol": sum(d.max_rel <= self.tol for d in diffs),
            })  # fmt: skip
        return rows

    def to_json(self) -> dict:
        return {
            "a": self.a, "b": self.b, "tol": self.tol, "agree": self.agree,
            "levels": self.level_table(), "images": [asdict(i) for i in self.images],
        }  # fmt: skip


def level_order(name: str) -> tuple[int, str]:
    order = ("stem", "res2", "res3", "res4", "res5", "p2", "p3", "p4", "p5", "p6")
    return (order.index(name) if name in order else len(order), name)


def _ratio(num: float, den: float) -> float:
    """``num / den`` (NaN for inf / inf); NaN where either is NaN (a NaN in A, the reference,
    is no infinite difference); 0 for 0 / 0, infinity for more than 0 / 0."""
    if math.isnan(num) or math.isnan(den):
        return math.nan
    if den > 0:
        return num / den
    return 0.0 if num == 0 else math.inf


def compare_arrays(a: np.ndarray, b: np.ndarray, level: str = "") -> LevelDiff:
    """Compare two equally shaped arrays (any float dtype; computed in float64). Where both
    hold the same NaN or infinity (what ``--dtype float16`` stores past 65504) they agree, and
    the rest is compared; a NaN or an infinity in one only gives NaN measures where they are
    undefined, without numpy's warnings (inf - inf, inf / inf)."""
    if a.shape != b.shape:
        raise ValueError(f"{level or 'arrays'}: shapes differ, {a.shape} against {b.shape}")
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    with np.errstate(invalid="ignore"):
        both = ~np.isfinite(x) & ((x == y) | (np.isnan(x) & np.isnan(y)))
    if both.any():  # the same non-finite value on both sides: agreed, and left out
        x, y = x[~both], y[~both]
    if x.size == 0:
        return LevelDiff(level, 0.0, 0.0, 1.0, 0.0)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        abs_diff = np.abs(x - y)
        abs_x = np.abs(x)
        norms = float(np.linalg.norm(x) * np.linalg.norm(y))
        if not math.isfinite(norms):  # a NaN or an infinity in A or B: no angle to measure
            cosine = math.nan  # (not 0, "orthogonal")
        elif norms > 0:
            cosine = float(np.dot(x, y) / norms)
        else:  # both zero: identical; one zero: undefined, call it 0
            cosine = 1.0 if not abs_diff.any() else 0.0
        max_abs = float(abs_diff.max())
        max_rel = _ratio(max_abs, float(abs_x.max()))
        mean_rel = _ratio(float(abs_diff.mean()), float(abs_x.mean()))
    return LevelDiff(level, max_rel, mean_rel, cosine, max_abs)
