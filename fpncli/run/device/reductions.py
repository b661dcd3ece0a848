"""The reductions a run does where the features are: each level's heatmap map (``channel``,
``mean``, ``max``, ``l2``, ``pca``), its colour range's order statistics, and the per-level
min/max/mean. On CUDA they run on the device, so only the 2-D maps and the numbers come back;
on the CPU the same torch code runs. ``fpncli.viz.maps`` is the numpy reference they equal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ...viz.maps import PCA_SIGN_TOLERANCE, pca_refusal  # pca_sign's, in torch as in numpy

__all__ = ["reduce_map", "reduce_maps", "order_stats", "finite_stats", "finite_stats_batch",
           "nan_outside", "pca_maps"]  # fmt: skip

_INF, _NAN = float("inf"), float("nan")


def reduce_map(level: torch.Tensor, reduce: str, channel: int = 0) -> torch.Tensor:
    """``(C, H, W)`` -> ``(H, W)`` float32, as ``fpncli.viz.maps.reduce_channels`` (numpy)
    computes it, but in torch where the tensor is.

    Raises:
        ValueError: ``pca`` of a level that holds NaN or infinite values (no component fits it),
            with ``reduce_channels``' message; ``pca_maps`` would give an all-NaN map.
    """
    if reduce == "pca":  # one image, so one host sync to say why (the batch path has none)
        nonfinite = level.numel() - int(torch.isfinite(level).sum())
        if nonfinite:
            raise ValueError(pca_refusal(nonfinite))
    return reduce_maps(level[None], reduce, channel)[0]


def reduce_maps(levels: torch.Tensor, reduce: str, channel: int = 0,
                valid: Sequence[tuple[int, int]] | None = None) -> torch.Tensor:  # fmt: skip
    """``(B, C, H, W)`` -> ``(B, H, W)`` float32: ``reduce_map`` of each image, with one set of
    kernels for the batch (and, for ``pca``, one eigendecomposition call). ``valid``: each
    image's ``(valid_h, valid_w)`` cells, which alone its ``pca`` component is fitted on
    (``pca_maps``; None: all); the other reductions are per cell."""
    if reduce == "channel":
        if not 0 <= channel < levels.shape[1]:
            raise ValueError(f"channel {channel} out of range: this map has {levels.shape[1]}")
        return levels[:, channel].float()
    # without a float64 (or float32) copy of the whole batch: a batch of P2s is GBs
    if reduce == "mean":
        return levels.mean(dim=1, dtype=torch.float32)
    if reduce == "max":
        return levels.amax(dim=1).float()
    if reduce == "l2":
        return torch.stack([level.double().square().sum(dim=0).sqrt().float() for level in levels])
    if reduce == "pca":
        return pca_maps([levels], None if valid is None else [valid])[0]
    raise ValueError(f"unknown reduction {reduce!r}")


def order_stats(maps: torch.Tensor, clip: tuple[float, float]) -> torch.Tensor:
    """What a heatmap's colour range (``maps.value_range``) needs of each ``(B, h, w)`` map,
    picked out where the maps are: ``(B, 7)`` float64 of the finite values' count, min, max, and
    the values at the ranks below and above each ``clip`` percentile (numpy's "linear" ranks,
    as ``maps._places`` computes them). ``maps.range_from_order_stats`` turns a row
    into the range, so the writer does not sort the map on the host (on CUDA: a sort of the
    batch's maps, against a millisecond of the writer's CPU per image)."""
    flat = maps.reshape(maps.shape[0], -1)
    finite = torch.isfinite(flat)
    count = finite.sum(dim=1)
    ordered = torch.where(finite, flat, _INF).sort(dim=1).values  # the finite ones first
    last = (count - 1).clamp(min=0)
    ranks = [torch.zeros_like(count), last]
    for q in clip:
        virtual = (count - 1).double() * (q / 100.0)
        below = torch.minimum(virtual.floor().long().clamp(min=0), last)
        ranks += [below, torch.minimum(below + 1, last)]
    picked = ordered.gather(1, torch.stack(ranks, dim=1)).double()
    return torch.cat([count.double().unsqueeze(1), picked], dim=1)


def nan_outside(maps: torch.Tensor, valid: Sequence[tuple[int, int]]) -> torch.Tensor:
    """A copy of the ``(B, h, w)`` maps with the cells outside each image's ``(valid_h,
    valid_w)`` region NaN, which ``order_stats`` leaves out as it does any non-finite value:
    one sort for a batch of differing sizes (two fills per image, where a sort per image took
    a dozen launches)."""
    out = maps.clone()
    for i, (vh, vw) in enumerate(valid):
        out[i, vh:] = _NAN
        out[i, :vh, vw:] = _NAN
    return out


def pca_maps(
    batches: Sequence[torch.Tensor], valid: Sequence[Sequence[tuple[int, int]]] | None = None
) -> list[torch.Tensor]:
    """The ``pca`` maps of ``(B, C, H, W)`` batches (a batch's levels), each ``(B, H, W)``
    float32: each image's projection on the first principal component of its channels (centred,
    in float64), oriented as ``maps.pca_sign`` orients it: the map correlates positively
    with the channel-mean map (the loadings sum to more than 0; where that sum is about 0, the
    largest loading positive).

    ``valid[k][i]``: the ``(valid_h, valid_w)`` cells of image ``i`` of batch ``k`` that cover
    the image (None: all cells). The means and the component are those of these cells alone,
    as ``maps.reduce_channels`` of the ``valid_region`` (the padding must not move them: the
    map would change with ``--canvas``); every cell is projected, the padding's to be cut.

    The covariances are made one image at a time (a batch of P2s in float64 would take GBs) and
    those of every batch with the same channel count (every FPN level has 256) are decomposed in
    one ``eigh`` call: on CUDA that is the one host sync of a batch's levels (eigh checks its
    result), where a call per level took five. On the CPU the maps are those of a call per
    level bit for bit (LAPACK decomposes each matrix on its own).

    An image whose cells (valid ones) hold a NaN or an infinity (a float16 overflow) has no
    component: its map is all NaN, and no eigh sees its covariances (LAPACK may fail to
    converge on them, which would fail the whole call). ``maps.reduce_channels`` refuses such
    a level; a run fails the image from its statistics' count (``BatchResult.image``). Found
    on the device, with no host sync: a covariance is finite exactly when its cells are (in
    float64, float32 values' products and their sums cannot overflow).
    """
    centred = [_covariances(levels, None if valid is None else valid[k])
               for k, levels in enumerate(batches)]  # each: (means, (B, C, C))  # fmt: skip
    finite = [cov.isfinite().flatten(1).all(dim=1) for _, cov in centred]  # (B,) each
    by_channels: dict[int, list[int]] = {}  # channel count -> the batches that have it
    for i, levels in enumerate(batches):
        by_channels.setdefault(levels.shape[1], []).append(i)
    components: list[torch.Tensor] = [None] * len(batches)
    for members in by_channels.values():
        # a non-finite image's covariances as zeros (a diagonal matrix: nothing to iterate on)
        group = [torch.where(finite[i][:, None, None], centred[i][1], 0.0) for i in members]
        _, vectors = torch.linalg.eigh(torch.cat(group) if len(group) > 1 else group[0])
        largest = vectors[..., -1].split([len(batches[i]) for i in members])  # (B, C) each
        for i, part in zip(members, largest):
            components[i] = torch.where(finite[i][:, None], _oriented(part), _NAN)
    return [_projected(levels, means, comps)
            for levels, (means, _), comps in zip(batches, centred, components)]  # fmt: skip


def _covariances(levels: torch.Tensor, valid: Sequence[tuple[int, int]] | None = None
                 ) -> tuple[list[torch.Tensor], torch.Tensor]:  # fmt: skip
    """Each image's channel means (``(C, 1)`` float64 each) and the ``(B, C, C)`` float64
    covariances of its channels over its valid cells (``valid[i]``, ``(valid_h, valid_w)``;
    None: all its cells)."""
    c = levels.shape[1]
    means, covariances = [], []
    for i, level in enumerate(levels):
        cells = level if valid is None else level[:, : valid[i][0], : valid[i][1]]
        n = cells.shape[1] * cells.shape[2]
        samples = cells.reshape(c, n).double()
        mean = samples.mean(dim=1, keepdim=True)
        samples = samples - mean
        means.append(mean)
        covariances.append(samples @ samples.T / max(n - 1, 1))
    return means, torch.stack(covariances)


def _oriented(components: torch.Tensor) -> torch.Tensor:
    """The ``(B, C)`` principal components, each signed as ``pca_maps`` says. The sign of
    cov(map, mean map) is the sign of the loadings' sum; no host sync (torch.where)."""
    total = components.sum(dim=1, keepdim=True)
    largest = components.gather(1, components.abs().argmax(dim=1, keepdim=True))
    tied = total.abs() <= PCA_SIGN_TOLERANCE * math.sqrt(components.shape[1])
    return components * torch.where(torch.where(tied, largest, total) < 0, -1.0, 1.0)


def _projected(levels: torch.Tensor, means: list[torch.Tensor],
               components: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """``(B, H, W)`` float32: each image's centred channels projected on its component."""
    b, c, h, w = levels.shape
    return torch.stack([
        (component @ (level.reshape(c, h * w).double() - mean)).reshape(h, w).float()
        for level, mean, component in zip(levels, means, components)
    ])  # fmt: skip


def finite_stats(valid: torch.Tensor) -> torch.Tensor:
    """``[min, max, mean, nonfinite]`` (float64) of the finite values; NaN for min/max/mean when
    no value is finite. On CUDA without a host sync (masked passes: cheap at HBM bandwidth); on
    the CPU, where every op is synchronous anyway, plain min, max and sum passes (the sum over
    channels in float32, then in float64: about 1e-7 relative, at a tenth of a float64 pass's
    cost), with the masked passes only when that sum shows a NaN or infinity."""
    if valid.device.type == "cpu":
        low, high = torch.aminmax(valid)  # one pass for both
        total = valid.sum(dim=0, dtype=torch.float32).double().sum()
        if torch.isfinite(total):
            mean = total / max(1, valid.numel())
            return torch.stack([low.double(), high.double(), mean, total.new_zeros(())])
    # Python scalars, not torch.tensor(..., device=cuda): that is a synchronous copy, which
    # would make the GPU-feeding thread wait for the whole batch's forward pass
    finite = torch.isfinite(valid)
    count = finite.sum()
    low = torch.where(finite, valid, _INF).amin().double()
    high = torch.where(finite, valid, -_INF).amax().double()
    total = torch.where(finite, valid, 0.0).sum(dtype=torch.float64)
    none = count == 0
    return torch.stack([
        torch.where(none, _NAN, low), torch.where(none, _NAN, high),
        torch.where(none, _NAN, total / count.clamp(min=1)), (valid.numel() - count).double(),
    ])  # fmt: skip


def finite_stats_batch(valid: torch.Tensor) -> torch.Tensor:
    """``finite_stats`` of each image of a ``(B, C, h, w)`` batch at once: ``(B, 4)``."""
    flat = valid.reshape(valid.shape[0], -1)
    finite = torch.isfinite(flat)
    count = finite.sum(dim=1)
    low = torch.where(finite, flat, _INF).amin(dim=1).double()
    high = torch.where(finite, flat, -_INF).amax(dim=1).double()
    total = torch.where(finite, flat, 0.0).sum(dim=1, dtype=torch.float64)
    none = count == 0
    return torch.stack([
        torch.where(none, _NAN, low), torch.where(none, _NAN, high),
        torch.where(none, _NAN, total / count.clamp(min=1)), (flat.shape[1] - count).double(),
    ], dim=1)  # fmt: skip
