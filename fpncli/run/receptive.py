"""Receptive fields of one cell per level: theoretical (from the layers) and effective (gradient).

The walk-through's point that one P6 cell sees far more of the image than one P2 cell, measured:

- the theoretical receptive field (TRF) of a cell is the box of input pixels that can influence
  it at all, computed from every convolution's kernel, stride, padding and dilation, the max-pool,
  the residual sums (union of the branches), the FPN's nearest 2x upsampling and P6's
  subsampling. Through the top-down path a P2 cell's TRF already spans res5's, so TRFs are large
  everywhere; what differs is
- the effective receptive field (ERF, Luo et al. 2016): ``|d value(cell) / d input|`` summed over
  the colour channels and normalized to a maximum of 1, for the actual weights and image.

Intervals are per axis, in the padded network input's pixels (resized image coordinates).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..io.guard import OptionError
from ..io.pillow_open import DEFAULT_MAX_PIXELS
from ..weights.hub import LoggedProgress

log = logging.getLogger(__name__)

__all__ = [
    "Interval", "trf_functions", "theoretical_rf", "effective_rf", "ReceptiveField",
    "receptive_fields", "draw_receptive_fields",
]  # fmt: skip

#: cell index along one axis -> inclusive (first, last) input pixel it can see
Interval = Callable[[int], tuple[int, int]]


def _cached(f: Interval) -> Interval:
    return functools.lru_cache(maxsize=None)(f)


def identity() -> Interval:
    return lambda i: (i, i)


def conv(prev: Interval, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1):
    """A convolution (or pooling) window on top of ``prev``."""

    def f(i: int) -> tuple[int, int]:
        first = stride * i - padding
        return prev(first)[0], prev(first + dilation * (kernel - 1))[1]

    return _cached(f)


def union(*branches: Interval) -> Interval:
    """A sum of branches (residual, lateral + top-down): it sees what any branch sees."""

    def f(i: int) -> tuple[int, int]:
        spans = [b(i) for b in branches]
        return min(s[0] for s in spans), max(s[1] for s in spans)

    return _cached(f)


def upsample2(prev: Interval) -> Interval:
    """Nearest 2x upsampling: output cell i is input cell i // 2."""
    return _cached(lambda i: prev(i // 2))


def _conv_of(prev: Interval, module: nn.Module) -> Interval:
    return conv(prev, module.kernel_size[0], module.stride[0], module.padding[0],
                module.dilation[0])  # fmt: skip


def trf_functions(model) -> dict[str, Interval]:
    """For an ``FPN``: output name (stem, res2..res5, p2..p6) -> its interval function, read
    from the model's own layers (so R-101, ResNeXt and dilated res5 are right too)."""
    bottom_up = model.bottom_up
    f = _conv_of(identity(), bottom_up.stem.conv1)
    f = conv(f, 3, 2, 1)  # BasicStem's max-pool
    out = {"stem": f}
    for name in bottom_up.stage_names:
        for block in getattr(bottom_up, name):
            main = _conv_of(_conv_of(_conv_of(f, block.conv1), block.conv2), block.conv3)
            short = f if block.shortcut is None else _conv_of(f, block.shortcut)
            f = union(main, short)
        out[name] = f
    prev = None
    for name, level in zip(reversed(model.in_features), reversed(model._levels)):
        lateral = _conv_of(out[name], getattr(model, f"fpn_lateral{level}"))
        prev = lateral if prev is None else union(lateral, upsample2(prev))
        out[f"p{level}"] = _conv_of(prev, getattr(model, f"fpn_output{level}"))
    last = model._levels[-1]
    out[f"p{last + 1}"] = conv(out[f"p{last}"], 1, 2, 0)  # LastLevelMaxPool: kernel 1, stride 2
    return out


def theoretical_rf(interval: Interval, row: int, col: int) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` input pixels (inclusive, may lie outside the image) that
    cell ``(row, col)`` can see."""
    top, bottom = interval(row)
    left, right = interval(col)
    return top, bottom, left, right


_REDUCE = ("channel", "mean", "max", "l2")


def _cell_value(level: torch.Tensor, row: int, col: int, reduce: str, channel: int):
    vector = level[0, :, row, col].float()
    if reduce == "channel":
        return vector[channel]
    if reduce == "mean":
        return vector.mean()
    if reduce == "max":
        return vector.max()
    if reduce == "l2":
        return vector.norm()
    raise ValueError(f"--receptive-field takes --reduce {', '.join(_REDUCE)}, not {reduce!r}")


def effective_rf(
    model: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    batch: torch.Tensor,
    cells: dict[str, tuple[int, int]],
    *,
    reduce: str = "channel",
    channel: int = 0,
) -> dict[str, np.ndarray]:
    """ERF maps: level -> ``(H, W)`` float32 in [0, 1] over ``batch``'s (1, 3, H, W) pixels.

    ``model(batch)`` must return ``{name: (1, C, h, w)}``; ``cells[name]`` is the (row, col) of
    the cell. One forward pass, one backward pass per level, in float32 (also inside a caller's
    ``torch.autocast``).
    """
    from ..api import autocast_context

    x = batch.detach().clone().float().requires_grad_(True)
    with torch.enable_grad():
        with autocast_context(x.device, "fp32"):
            outputs = model(x)
        maps = {}
        names = list(cells)
        for k, name in enumerate(names):
            row, col = cells[name]
            value = _cell_value(outputs[name], row, col, reduce, channel)
            (grad,) = torch.autograd.grad(value, x, retain_graph=k < len(names) - 1)
            magnitude = grad[0].abs().sum(dim=0).cpu().numpy().astype(np.float32)
            peak = float(magnitude.max())
            maps[name] = magnitude / peak if peak > 0 else magnitude
    return maps


@dataclass
class ReceptiveField:
    """One level's cell and its fields, in the resized image's pixels."""

    level: str
    stride: int
    cell: tuple[int, int]  # (row, col)
    trf: tuple[int, int, int, int]  # (top, bottom, left, right), inclusive, unclipped
    erf: np.ndarray  # (H, W) in [0, 1] over the padded input
    scale: tuple[float, float] = (1.0, 1.0)  # (scale_y, scale_x): photo -> network pixels

    @property
    def trf_size(self) -> tuple[int, int]:
        """(height, width) of the theoretical field in input pixels."""
        top, bottom, left, right = self.trf
        return bottom - top + 1, right - left + 1

    @property
    def centre(self) -> tuple[float, float]:
        """``(y, x)`` of the theoretical field's centre, where input pixel k spans [k, k + 1):
        what the ERF's square is centred on. Not the cell's own centre ``(cell + 0.5) * stride``:
        the stem's cell i sees pixels 4i - 5..4i + 5 (centre 4i + 0.5, not 4i + 2), and P6's
        cell i what P5's cell 2i sees."""
        top, bottom, left, right = self.trf
        return (top + bottom + 1) / 2, (left + right + 1) / 2

    def erf_extent(self, mass: float = 0.9) -> int:
        """The side of the smallest square around the theoretical field's centre (``centre``)
        that holds ``mass`` of the ERF's total (a size to compare across levels). Only the
        ERF within the theoretical box counts (outside it the gradient is zero, up to the
        rounding of some convolution algorithms), so the square lies within that box: its side
        is at most the box's longer side."""
        h, w = self.erf.shape
        cy, cx = self.centre
        top, bottom, left, right = self.trf
        ys, xs = np.mgrid[0:h, 0:w]
        # the distance from the centre to each pixel's far edge (Chebyshev)
        radius = np.maximum(np.abs(ys + 0.5 - cy), np.abs(xs + 0.5 - cx)).ravel() + 0.5
        inside = ((ys >= top) & (ys <= bottom) & (xs >= left) & (xs <= right)).ravel()
        weights = np.where(inside, self.erf.ravel().astype(np.float64), 0.0)
        total = weights.sum()
        if total <= 0:
            return 0
        order = np.argsort(radius, kind="stable")
        reached = np.searchsorted(np.cumsum(weights[order]), mass * total)
        return int(np.ceil(2 * radius[order][min(reached, order.size - 1)]))

    def erf_square(self, mass: float = 0.9) -> tuple[float, float, float, float]:
        """The square ``erf_extent`` measures, as an inclusive ``(top, bottom, left, right)``
        box in input pixels (within ``trf``, unclipped to the image)."""
        half = self.erf_extent(mass) / 2
        cy, cx = self.centre
        return cy - half, cy + half - 1, cx - half, cx + half - 1


def receptive_fields(
    image_path,
    model,
    at: tuple[float, float],
    levels: list[str],
    *,
    min_size: int = 800,
    max_size: int = 1333,
    resize: bool = True,
    reduce: str = "channel",
    channel: int = 0,
):
    """The theoretical and effective receptive field, per level, of the cell at original-image
    pixel ``at = (x, y)``; ``image_path`` may be a ``LoadedImage``.

    Returns ``(LoadedImage, Prepared, [ReceptiveField, ...])``."""
    from ..io.image_load import load_image
    from ..io.preprocess import prepare
    from ..model.names import OUTPUT_STRIDES, STAGES

    image = load_image(image_path) if isinstance(image_path, (str, Path)) else image_path
    x, y = at
    _check_inside(at, image.width, image.height)
    prepared = prepare(image.rgb, model.weights_info.input, min_size=min_size,
                       max_size=max_size, resize=resize)  # fmt: skip
    functions = trf_functions(model)
    unknown = [n for n in levels if n not in functions]
    if unknown:
        raise ValueError(f"unknown level(s) {', '.join(unknown)}: use p2..p6, stem, res2..res5")
    cells = {}
    for name in levels:
        stride = OUTPUT_STRIDES[name]
        rows = -(-prepared.resized_height // stride)
        cols = -(-prepared.resized_width // stride)
        cells[name] = (min(int(y * prepared.scale_y // stride), rows - 1),
                       min(int(x * prepared.scale_x // stride), cols - 1))  # fmt: skip
    batch = torch.from_numpy(prepared.tensor)[None].to(next(model.parameters()).device)
    # the stages asked for, for this call only (the model may be shared with other threads)
    forward = functools.partial(model, keep_bottom_up=tuple(n for n in levels if n in STAGES))
    erf = effective_rf(forward, batch, cells, reduce=reduce, channel=channel)
    fields = [
        ReceptiveField(name, OUTPUT_STRIDES[name], cells[name],
                       theoretical_rf(functions[name], *cells[name]), erf[name],
                       (prepared.scale_y, prepared.scale_x))
        for name in levels
    ]  # fmt: skip
    return image, prepared, fields


def _check_inside(at: tuple[float, float], width: int, height: int) -> None:
    if not (0 <= at[0] < width and 0 <= at[1] < height):
        raise OptionError(
            f"{at[0]:g},{at[1]:g} lies outside the image ({width}x{height} pixels): "
            "give X,Y in the original image's pixels",
            "--at",
        )


def _parse_at(text: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise OptionError(
            f"expected X,Y in the original image's pixels, got {text!r}", "--at"
        ) from None
    return x, y


def _latest() -> Path:
    """The latest extraction's folder; a ValueError where it is a ``--format wds`` output,
    whose images are no folders with a photo to rerun (as ``--key`` is refused)."""
    from ..io.catalog import is_sharded
    from ..io.latest import latest_extraction

    latest = latest_extraction()
    if is_sharded(latest):
        raise ValueError(
            f"the latest extraction {latest} is a --format wds output: --receptive-field takes "
            "an extraction folder or an image, not an image of a shard; name one as TARGET"
        )
    return latest


def draw_receptive_fields(
    target: str | None,
    at: str,
    *,
    levels: list[str] | None = None,
    weights: str = "faster_rcnn_R_50_FPN_3x",
    device: str = "cpu",
    reduce: str = "channel",
    channel: int = 0,
    save: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: Callable[[str], None] | None = None,
    download_progress=LoggedProgress,
) -> tuple[Path, list[ReceptiveField]]:
    """``fpncli show TARGET --receptive-field --at X,Y``: write the picture; return its path and
    the fields. TARGET is an extraction folder (its photo, weights and resize are reused), an
    image (with ``weights``), or None for the latest extraction. Without ``save`` the picture is
    ``show_LEVELS[_REDUCTION]_rf_atX,Y.png`` in the folder, or ``fpn_show_NAME_...`` in the
    current folder for an image (``viz.names``); LEVELS is ``all`` or ``levels`` joined by
    commas. A photo over ``max_pixels`` is refused, as ``extract --max-pixels`` refuses it.
    ``progress`` is told (one line) before the slow part, the forward and backward passes;
    ``download_progress`` is ``load_backbone``'s, for the weights."""
    from ..api import load_backbone, resolve_device
    from ..io.atomic import folder_not_writable
    from ..io.manifest import MANIFEST, check_manifest, load_manifest
    from ..io.messages import quote_name
    from ..io.outputs import check_channel
    from ..model.names import OUTPUT_CHANNELS
    from ..viz.names import picture_suffix
    from ..viz.receptive import receptive_field_image
    from ..viz.show import SAVE_ELSEWHERE, save_picture

    point = _parse_at(at)
    # named as show names its pictures, with the levels and the cell's point (viz.names)
    suffix = picture_suffix(",".join(levels) if levels else "all", reduce=reduce,
                            channel=channel, at=point)  # fmt: skip
    levels = levels or ["p2", "p3", "p4", "p5", "p6"]
    if reduce not in _REDUCE:  # (else refused after the forward pass)
        raise OptionError(f"--receptive-field takes {', '.join(_REDUCE)}, not {reduce!r}",
                          "--reduce")  # fmt: skip
    known = tuple(name for name in levels if name in OUTPUT_CHANNELS)  # (others: refused below)
    if known:  # (else torch's IndexError, after the forward pass)
        check_channel(channel, reduce, known)
    path = _latest() if target is None else Path(target).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no such folder or image: {target}")
    settings: dict = {}
    seed = 0
    if path.is_dir():
        manifest = load_manifest(path)  # ValueError: one there that cannot be read
        if manifest is None:
            raise FileNotFoundError(f"{path} holds no extraction (manifest.json missing)")
        # every field read here of the type it is written with (a hand-edited one: one line)
        check_manifest(manifest, f"{path}/{MANIFEST}")
        image_path = manifest.get("input", {}).get("path")
        if not image_path or not Path(image_path).is_file():
            raise FileNotFoundError(f"the photo of {path} ({image_path or 'unknown'}) is gone")
        recorded = manifest.get("weights", {})
        weights = (
            "random" if recorded.get("random") else recorded.get("path") or recorded.get("name")
        )
        if not weights:
            raise ValueError(f"{path}/{MANIFEST} names no weights (weights.name or .path): "
                             "give an image and --weights instead, or re-extract")  # fmt: skip
        seed = recorded.get("seed") or 0
        pre = manifest.get("preprocess", {})
        settings = {k: pre[k] for k in ("min_size", "max_size", "resize") if k in pre}
        default_out = path / f"show{suffix}.png"
    else:
        from ..io.jobs import image_stem
        from ..viz.photo_source import PHOTO_SIZE, check_not_drawn

        check_not_drawn(path)  # a heatmap fpncli drew is no photo (as show refuses it)
        image_path = str(path)
        settings = dict(zip(("min_size", "max_size"), PHOTO_SIZE))  # as show extracts it
        default_out = Path(f"fpn_show_{image_stem(path)}{suffix}.png")
    from ..io.image_load import load_image

    out = Path(save) if save else default_out
    # said before tens of seconds of work (a folder not there: said when written, as show's)
    if out.parent.is_dir() and not os.access(out.parent, os.W_OK | os.X_OK):
        raise folder_not_writable(out.parent, f"save {quote_name(out.name)}", SAVE_ELSEWHERE)
    image = load_image(image_path, max_pixels=max_pixels)
    _check_inside(point, image.width, image.height)  # before the model is built
    if progress is not None:  # tens of seconds on a CPU, with nothing else to show meanwhile
        progress(
            f"computing the receptive fields of {', '.join(levels)}: one forward pass and a "
            "backward pass per level (tens of seconds on a CPU) ..."
        )
    # Unfolded FrozenBN and no channels-last: the gradient is the same, the graph is simpler.
    model = load_backbone(weights, device=resolve_device(device), seed=seed, fold_bn=False,
                          channels_last=False, download_progress=download_progress)  # fmt: skip
    image, prepared, fields = receptive_fields(image, model, point, levels, reduce=reduce,
                                               channel=channel, **settings)  # fmt: skip
    how = f"channel {channel}" if reduce == "channel" else reduce
    picture = receptive_field_image(
        image.rgb, fields, resized=(prepared.resized_height, prepared.resized_width),
        scale=(prepared.scale_y, prepared.scale_x), at=point,
        title=f"{Path(image_path).name}: receptive fields of the cell at x={point[0]:g}, "
              f"y={point[1]:g} ({how}; ERF = |d cell / d input|, normalized; sizes in the "
              f"photo's pixels, the network sees it x{prepared.scale_x:.2f})",
        note="RANDOM, UNTRAINED WEIGHTS - not a trained network" if model.weights_info.random
        else "",
    )  # fmt: skip
    save_picture(out, picture)
    return out, fields
