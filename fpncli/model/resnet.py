"""ResNet / ResNeXt bottom-up network, as in ``detectron2/modeling/backbone/resnet.py``.

Module names are Detectron2's (``stem.conv1``, ``res2.0.conv1``, ``res3.0.shortcut``, ...), so a
Detectron2 checkpoint loads by a prefix strip and a strict ``load_state_dict``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .layers import Conv2d, FrozenBatchNorm2d, conv_add_relu, conv_relu

__all__ = ["BasicStem", "BottleneckBlock", "ResNet", "BLOCKS_PER_STAGE"]

#: Number of bottleneck blocks in res2..res5 for each supported depth.
BLOCKS_PER_STAGE: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}


class BasicStem(nn.Module):
    """7x7 stride-2 conv + FrozenBN + ReLU, then 3x3 stride-2 max-pool: stride 4 overall."""

    def __init__(self, in_channels: int = 3, out_channels: int = 64) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = 4
        self.conv1 = Conv2d(
            in_channels, out_channels, 7, stride=2, padding=3, bias=False,
            norm=FrozenBatchNorm2d(out_channels),
        )  # fmt: skip

    #: Run the conv and max-pool channels-last and return NCHW (``use_cpu_kernels`` sets it for
    #: an NCHW model: PyTorch's NCHW max-pool on the CPU takes 33 ms here, channels-last 2 ms).
    pool_channels_last: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool_channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = conv_relu(self.conv1, x)
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        return x.contiguous() if self.pool_channels_last else x


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 -> 1x1 convolutions, each with FrozenBN, plus a shortcut; ReLU after the sum.

    ``stride_in_1x1=True`` puts the stride on the first 1x1 conv (Detectron2/MSRA weights);
    ``False`` puts it on the 3x3 conv (torchvision and Detectron2's ResNeXt weights).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int,
        stride: int = 1,
        num_groups: int = 1,
        stride_in_1x1: bool = True,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        if in_channels != out_channels:
            self.shortcut = Conv2d(
                in_channels, out_channels, 1, stride=stride, bias=False,
                norm=FrozenBatchNorm2d(out_channels),
            )  # fmt: skip
        else:
            self.shortcut = None
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = Conv2d(
            in_channels, bottleneck_channels, 1, stride=stride_1x1, bias=False,
            norm=FrozenBatchNorm2d(bottleneck_channels),
        )  # fmt: skip
        self.conv2 = Conv2d(
            bottleneck_channels, bottleneck_channels, 3, stride=stride_3x3, padding=dilation,
            bias=False, groups=num_groups, dilation=dilation,
            norm=FrozenBatchNorm2d(bottleneck_channels),
        )  # fmt: skip
        self.conv3 = Conv2d(
            bottleneck_channels, out_channels, 1, bias=False,
            norm=FrozenBatchNorm2d(out_channels),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = conv_relu(self.conv1, x)
        out = conv_relu(self.conv2, out)
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return conv_add_relu(self.conv3, out, shortcut)


class ResNet(nn.Module):
    """Stem plus stages ``res2``..``res5``; returns ``{"res2": ..., ..., "res5": ...}``.

    Strides are 4, 8, 16, 32; channels 256, 512, 1024, 2048 (with the default
    ``res2_out_channels=256``).
    """

    def __init__(
        self,
        depth: int = 50,
        *,
        num_groups: int = 1,
        width_per_group: int = 64,
        stride_in_1x1: bool = True,
        stem_out_channels: int = 64,
        res2_out_channels: int = 256,
        res5_dilation: int = 1,
    ) -> None:
        super().__init__()
        if depth not in BLOCKS_PER_STAGE:
            raise ValueError(f"ResNet depth must be one of {sorted(BLOCKS_PER_STAGE)}, got {depth}")
        if res5_dilation not in (1, 2):
            raise ValueError(f"res5_dilation must be 1 or 2, got {res5_dilation}")
        self.stem = BasicStem(3, stem_out_channels)
        self.stage_names = ("res2", "res3", "res4", "res5")
        self._out_feature_strides: dict[str, int] = {}
        self._out_feature_channels: dict[str, int] = {}

        in_channels = stem_out_channels
        out_channels = res2_out_channels
        bottleneck_channels = num_groups * width_per_group
        current_stride = self.stem.stride
        for index, (name, num_blocks) in enumerate(zip(self.stage_names, BLOCKS_PER_STAGE[depth])):
            dilation = res5_dilation if name == "res5" else 1
            first_stride = 1 if index == 0 or dilation == 2 else 2
            blocks = []
            for block_index in range(num_blocks):
                blocks.append(
                    BottleneckBlock(
                        in_channels,
                        out_channels,
                        bottleneck_channels=bottleneck_channels,
                        stride=first_stride if block_index == 0 else 1,
                        num_groups=num_groups,
                        stride_in_1x1=stride_in_1x1,
                        dilation=dilation,
                    )
                )
                in_channels = out_channels
            self.add_module(name, nn.Sequential(*blocks))
            current_stride *= first_stride
            self._out_feature_strides[name] = current_stride
            self._out_feature_channels[name] = out_channels
            out_channels *= 2
            bottleneck_channels *= 2

    def output_shape(self) -> dict[str, tuple[int, int]]:
        """``{stage name: (channels, stride)}`` of the four outputs."""
        return {
            name: (self._out_feature_channels[name], self._out_feature_strides[name])
            for name in self.stage_names
        }

    def forward(self, x: torch.Tensor, *, with_stem: bool = False) -> dict[str, torch.Tensor]:
        """Args: x: ``(B, 3, H, W)`` float, normalized. Returns ``{"res2": ..., "res5": ...}``,
        with ``"stem"`` (``(B, 64, H/4, W/4)``, after the max-pool) first when ``with_stem``."""
        x = self.stem(x)
        outputs = {"stem": x} if with_stem else {}
        for name in self.stage_names:
            x = getattr(self, name)(x)
            outputs[name] = x
        return outputs
