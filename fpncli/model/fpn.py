"""Feature Pyramid Network on a ResNet, as in ``detectron2/modeling/backbone/fpn.py``.

``build_resnet_fpn_backbone()`` with no arguments is Base-RCNN-FPN's ResNet-50 backbone: outputs
``p2``..``p6``, 256 channels each, strides 4, 8, 16, 32, 64.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .layers import Conv2d
from .names import (
    LEVEL_STRIDES,
    LEVELS,
    OUTPUT_CHANNELS,
    OUTPUT_STRIDES,
    OUTPUTS,
    STAGE_STRIDES,
    STAGES,
)
from .resnet import ResNet

__all__ = [
    "FPN", "LastLevelMaxPool", "build_resnet_fpn_backbone", "check_stages", "LEVELS",
    "LEVEL_STRIDES", "STAGES", "STAGE_STRIDES", "OUTPUTS", "OUTPUT_STRIDES", "OUTPUT_CHANNELS",
]  # fmt: skip


def check_stages(keep_bottom_up: str | tuple[str, ...]) -> tuple[str, ...]:
    """``keep_bottom_up`` as a tuple of bottom-up stage names (``STAGES``): a bare string is the
    one stage it names (``"res4"``; it was matched as a substring, so ``"res2res3"`` kept two).

    Raises:
        ValueError: a name that is no stage (names are lower case: ``"Res4"`` is none); it was
            ignored, so a typo returned the pyramid alone.
        TypeError: neither a string nor an iterable of them.
    """
    if isinstance(keep_bottom_up, str):
        return check_stages((keep_bottom_up,))
    try:
        names = tuple(keep_bottom_up)
    except TypeError:
        raise TypeError(
            f"keep_bottom_up must be stage names (a tuple of {', '.join(STAGES)}), got "
            f"{type(keep_bottom_up).__name__}"
        ) from None
    unknown = [name for name in names if not isinstance(name, str) or name not in STAGES]
    if unknown:
        raise ValueError(
            f"unknown bottom-up stage{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(repr, unknown))} in keep_bottom_up: use any of {', '.join(STAGES)}"
        )
    return names


class LastLevelMaxPool(nn.Module):
    """P6 from P5: ``max_pool2d(kernel_size=1, stride=2)``, i.e. a stride-2 subsample of P5."""

    in_feature = "p5"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, kernel_size=1, stride=2, padding=0)


def _add_upsampled(lateral: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
    """``lateral + F.interpolate(coarse, scale_factor=2, mode="nearest")``, added in place into
    ``lateral`` through a broadcast view (the same floats, without the upsampled copy)."""
    b, c, h, w = lateral.shape
    if (h, w) != (2 * coarse.shape[-2], 2 * coarse.shape[-1]) or lateral.requires_grad:
        return lateral + F.interpolate(coarse, scale_factor=2.0, mode="nearest")
    lateral.view(b, c, h // 2, 2, w // 2, 2).add_(coarse[:, :, :, None, :, None])
    return lateral


class FPN(nn.Module):
    """ResNet ``bottom_up`` plus lateral/output convs, nearest 2x top-down, sum fusion.

    Parameter names follow Detectron2: ``bottom_up.*``, ``fpn_lateral{2..5}``,
    ``fpn_output{2..5}``, so a Detectron2 checkpoint loads after stripping ``backbone.``.
    """

    #: Inputs must have height and width divisible by this (the coarsest bottom-up stride).
    size_divisibility = 32
    #: Bottom-up outputs (names from ``STAGES``) that ``forward`` returns beside P2-P6 when its
    #: call names none; set it to see what the FPN adds. A run (``fpncli extract --levels
    #: stem,res2,...``) passes its own to each call and leaves this as it is.
    keep_bottom_up: tuple[str, ...] = ()

    def __init__(self, bottom_up: ResNet, out_channels: int = 256) -> None:
        super().__init__()
        self.bottom_up = bottom_up
        self.in_features = bottom_up.stage_names
        self._levels = []
        strides = [stride for _, stride in bottom_up.output_shape().values()]
        if any(b != 2 * a for a, b in zip(strides, strides[1:])):  # as Detectron2's FPN asserts
            raise ValueError(
                f"an FPN needs stages whose strides double (4, 8, 16, 32), not {strides} (a "
                "dilated res5 keeps res4's stride)"
            )
        for channels, stride in bottom_up.output_shape().values():
            level = int(math.log2(stride))
            self.add_module(f"fpn_lateral{level}", Conv2d(channels, out_channels, 1))
            self.add_module(f"fpn_output{level}", Conv2d(out_channels, out_channels, 3, padding=1))
            self._levels.append(level)
        self.top_block = LastLevelMaxPool()
        self.out_channels = out_channels
        self.strides = {f"p{level}": 2**level for level in self._levels}
        self.strides[f"p{self._levels[-1] + 1}"] = 2 ** (self._levels[-1] + 1)

    @property
    def out_features(self) -> list[str]:
        """Output names, finest first: ``["p2", "p3", "p4", "p5", "p6"]``."""
        return list(self.strides)

    def forward(
        self, x: torch.Tensor, keep_bottom_up: tuple[str, ...] | None = None
    ) -> dict[str, torch.Tensor]:
        """Compute the pyramid.

        Args:
            x: ``(B, 3, H, W)`` float tensor, already normalized with the weights' pixel mean/std
                and channel order; H and W divisible by 32.
            keep_bottom_up: the bottom-up outputs to return too, for this call (names from
                ``STAGES``, or one as a string); None: the model's ``keep_bottom_up``. Threads
                sharing the model each pass their own.

        Returns:
            ``{"p2": (B, 256, H/4, W/4), ..., "p6": (B, 256, ceil(H/64), ceil(W/64))}``, after
            the bottom-up outputs named in ``keep_bottom_up`` (``"res4": (B, 1024, H/16, W/16)``).

        Raises:
            ValueError: ``x`` of another shape; a name in ``keep_bottom_up`` that is no stage
                (``check_stages``).
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a (B, 3, H, W) tensor, got shape {tuple(x.shape)}")
        if x.shape[-2] % self.size_divisibility or x.shape[-1] % self.size_divisibility:
            raise ValueError(
                f"height and width must be multiples of {self.size_divisibility}, got "
                f"{tuple(x.shape[-2:])}; pad the input (fpncli.api.model_input or "
                "fpncli.io.preprocess.prepare does)"
            )
        keep_bottom_up = check_stages(
            self.keep_bottom_up if keep_bottom_up is None else keep_bottom_up
        )
        bottom_up = self.bottom_up(x, with_stem="stem" in keep_bottom_up)
        results = []
        prev = None
        for name, level in zip(reversed(self.in_features), reversed(self._levels)):
            lateral = getattr(self, f"fpn_lateral{level}")(bottom_up[name])
            if prev is None:
                prev = lateral
            else:
                prev = _add_upsampled(lateral, prev)
            results.insert(0, getattr(self, f"fpn_output{level}")(prev))
        results.append(self.top_block(results[-1]))
        outputs = {name: bottom_up[name] for name in STAGES if name in keep_bottom_up}
        outputs.update(zip(self.out_features, results))
        return outputs


def build_resnet_fpn_backbone(
    *,
    depth: int = 50,
    num_groups: int = 1,
    width_per_group: int = 64,
    stride_in_1x1: bool = True,
    res5_dilation: int = 1,
    out_channels: int = 256,
) -> FPN:
    """Build the ResNet-FPN backbone; the defaults are Detectron2's Base-RCNN-FPN R-50.

    Args:
        depth: 50, 101 or 152.
        num_groups: ResNeXt cardinality (32 for X-101-32x8d).
        width_per_group: bottleneck width per group (8 for X-101-32x8d).
        stride_in_1x1: True for Detectron2/MSRA weights, False for torchvision and ResNeXt weights.
        res5_dilation: 1 (a dilated res5, 2, keeps stride 16, which an FPN refuses).
        out_channels: FPN channels.

    Returns:
        An ``FPN`` module in eval mode, with untrained (default-initialized) weights.
    """
    bottom_up = ResNet(
        depth,
        num_groups=num_groups,
        width_per_group=width_per_group,
        stride_in_1x1=stride_in_1x1,
        res5_dilation=res5_dilation,
    )
    return FPN(bottom_up, out_channels=out_channels).eval()
