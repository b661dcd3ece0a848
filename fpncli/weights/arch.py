"""The backbone an architecture describes, and loading weights into it strictly.

An architecture is the keyword arguments of ``build_resnet_fpn_backbone`` (``depth``,
``num_groups``, ``width_per_group``, ...): ``infer_arch`` reads it off a state dict's shapes,
``check_arch`` refuses one that should not be built and ``expected_shapes`` gives the names and
shapes of its state dict without allocating it. ``build_backbone`` and ``load_state_dict_strict``
load weights strictly, listing every missing, unexpected and mis-shaped key in one error;
``random_state_dict`` makes seeded, untrained weights.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from torch import nn

from ..model.fpn import FPN, build_resnet_fpn_backbone
from ..model.resnet import BLOCKS_PER_STAGE

__all__ = [
    "MAX_GROUPS",
    "MAX_WIDTH_PER_GROUP",
    "MAX_BOTTLENECK",
    "infer_arch",
    "check_arch",
    "arch_name",
    "expected_shapes",
    "check_matches",
    "load_state_dict_strict",
    "build_backbone",
    "new_backbone",
    "random_state_dict",
    "listing",
]


def listing(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def infer_arch(state_dict: dict[str, torch.Tensor | np.ndarray]) -> dict:
    """Depth and ResNeXt groups from the shapes of a backbone state dict, of tensors or numpy
    arrays (stride placement can't be seen in the shapes, so it is not returned)."""
    blocks = tuple(
        len({k.split(".")[2] for k in state_dict if k.startswith(f"bottom_up.res{s}.")})
        for s in (2, 3, 4, 5)
    )
    depths = [d for d, b in BLOCKS_PER_STAGE.items() if b == blocks]
    if not depths:
        raise ValueError(f"unsupported ResNet layout: {blocks} blocks in res2..res5")
    conv2 = state_dict.get("bottom_up.res2.0.conv2.weight")
    if conv2 is None:
        raise ValueError("missing bottom_up.res2.0.conv2.weight: not a ResNet-FPN backbone")
    shape = tuple(conv2.shape)
    # (out, in / groups, 3, 3): a zero-element array may declare any shape, so it is refused
    if len(shape) != 4 or math.prod(shape) == 0 or shape[0] % shape[1]:
        raise ValueError(
            f"bottom_up.res2.0.conv2.weight has shape {shape}: not a grouped 3x3 convolution's"
        )
    channels, per_group = shape[0], shape[1]
    num_groups = channels // per_group
    return {"depth": depths[0], "num_groups": num_groups, "width_per_group": channels // num_groups}


#: The keyword arguments of ``build_resnet_fpn_backbone`` a checkpoint may set. The bounds
#: cover Detectron2's model zoo (R-50/101/152 1x64, X-101/152 32x8d), torchvision's ResNeXt 64x4d
#: and wide ResNets (1x128) and no more: the bottleneck width (groups x width per group) stays at
#: most 256, so the largest backbone allowed (R-152, 1x128) holds about 1 GB of float32, where a
#: few-byte file could otherwise ask for any size.
MAX_GROUPS, MAX_WIDTH_PER_GROUP, MAX_BOTTLENECK = 64, 128, 256
_ARCH_KEYS = ("depth", "num_groups", "width_per_group", "stride_in_1x1", "res5_dilation",
              "out_channels")  # fmt: skip


def check_arch(arch: object) -> dict:
    """Refuse an architecture ``build_resnet_fpn_backbone`` should not build: unknown keys,
    unsupported depths, group widths beyond the bounds above, non-boolean flags.

    Returns ``arch`` (a dict); raises ValueError saying what is wrong.
    """
    if not isinstance(arch, dict):
        raise ValueError(f"architecture must be a dict, not a {type(arch).__name__}")
    unknown = [k for k in arch if k not in _ARCH_KEYS]
    if unknown:
        raise ValueError(
            f"unknown architecture key {unknown[0]!r:.40}; known: {', '.join(_ARCH_KEYS)}"
        )

    def integer(key: str, default: int) -> int:
        value = arch.get(key, default)
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            raise ValueError(f"architecture {key} must be an integer, got {value!r:.40}")
        return int(value)

    depth, groups = integer("depth", 50), integer("num_groups", 1)
    width = integer("width_per_group", 64)
    if depth not in BLOCKS_PER_STAGE:
        raise ValueError(
            f"architecture depth must be one of {sorted(BLOCKS_PER_STAGE)}, got {depth}"
        )
    if not (1 <= groups <= MAX_GROUPS and 1 <= width <= MAX_WIDTH_PER_GROUP
            and groups * width <= MAX_BOTTLENECK):  # fmt: skip
        raise ValueError(
            f"architecture {groups}x{width} (num_groups x width_per_group) is not supported: "
            f"at most {MAX_GROUPS} groups, {MAX_WIDTH_PER_GROUP} per group and "
            f"{MAX_BOTTLENECK} in all (R-50 is 1x64, X-101 32x8d)"
        )
    if integer("res5_dilation", 1) != 1:
        raise ValueError(
            f"architecture res5_dilation must be 1 with an FPN, got {arch['res5_dilation']} (a "
            "dilated res5 has res4's stride 16, which Detectron2's FPN refuses: its DC5 models "
            "have no FPN)"
        )
    if integer("out_channels", 256) != 256:  # every Detectron2 FPN; names.OUTPUT_CHANNELS
        raise ValueError(f"architecture out_channels must be 256, got {arch['out_channels']}")
    if not isinstance(arch.get("stride_in_1x1", True), bool):
        raise ValueError(
            f"architecture stride_in_1x1 must be true or false, got {arch['stride_in_1x1']!r:.40}"
        )
    return arch


def arch_name(arch: dict) -> str:
    """``R-50``, ``R-101``, ``X-101 32x8d``: an architecture as Detectron2's configs name it."""
    depth, groups, width = arch["depth"], arch["num_groups"], arch["width_per_group"]
    if groups == 1 and width == 64:
        return f"R-{depth}"
    return f"{'X' if groups > 1 else 'R'}-{depth} {groups}x{width}d"


def check_matches(expected: dict[str, torch.Size], state_dict: dict[str, torch.Tensor]) -> None:
    """Raise one ValueError listing missing, unexpected and mis-shaped keys, if any."""
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = [
        f"{k} {tuple(state_dict[k].shape)} != {tuple(v)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {listing(unexpected)}")
    if misshaped:
        problems.append(f"mis-shaped keys: {listing(misshaped)}")
    if problems:
        raise ValueError("checkpoint does not match the backbone: " + "; ".join(problems))


def load_state_dict_strict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load strictly; missing, unexpected and mis-shaped keys raise one ValueError listing them."""
    check_matches({k: v.shape for k, v in model.state_dict().items()}, state_dict)
    model.load_state_dict(state_dict, strict=True)


def build_backbone(arch: dict, state_dict: dict[str, torch.Tensor]) -> FPN:
    """``build_resnet_fpn_backbone(**arch)`` with ``state_dict`` loaded strictly. The arch is
    checked and the state dict's names and shapes compared with it (on the meta device, where
    nothing is allocated) before the model is allocated: a small file cannot make it build a
    large model only to fail with "missing keys"."""
    check_matches(expected_shapes(arch), state_dict)
    model = new_backbone(arch)
    model.load_state_dict(state_dict, strict=True)
    return model


def expected_shapes(arch: dict) -> dict[str, torch.Size]:
    """The names and shapes of ``build_resnet_fpn_backbone(**arch)``'s state dict, after
    ``check_arch``, from a model built on the meta device (where nothing is allocated)."""
    check_arch(arch)
    with torch.device("meta"):
        return {k: v.shape for k, v in build_resnet_fpn_backbone(**arch).state_dict().items()}


def new_backbone(arch: dict) -> FPN:
    """``build_resnet_fpn_backbone(**arch)`` for weights to be loaded into (strictly: every
    tensor): built on the meta device and given uninitialized CPU memory. Its default init, which
    the weights overwrite, is never drawn: a quarter of a second for ResNet-50, and the caller's
    torch RNG is left as it was."""
    with torch.device("meta"):
        model = build_resnet_fpn_backbone(**arch)
    # what ``to_empty`` does, but its ``empty_like`` of a meta tensor imports sympy, which adds
    # a warnings filter in the caller's process
    return model._apply(lambda t: torch.empty(t.shape, dtype=t.dtype))


def random_state_dict(model: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded, untrained weights for ``model``, from numpy's frozen legacy RandomState stream.

    Convolutions get He-uniform weights, FrozenBN statistics sit near identity, and the last BN of
    each bottleneck is damped so activations stay in a readable range through 50+ layers. The
    same seed and architecture give bit-identical weights on every machine and numpy version.
    """
    rng = np.random.RandomState(seed)
    out = {}
    for name, tensor in model.state_dict().items():
        shape = tuple(tensor.shape)

        def uniform(low: float, high: float, shape=shape) -> np.ndarray:
            return rng.uniform(low, high, size=shape).astype(np.float32)

        if name.endswith(".weight") and len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            gain = 1.0 if name.startswith("fpn_") else 2.0
            bound = float(np.sqrt(3.0 * gain / fan_in))
            value = uniform(-bound, bound)
        elif name.endswith("norm.weight"):
            value = uniform(0.1, 0.3) if ".conv3." in name else uniform(0.7, 1.2)
        elif name.endswith("norm.bias") or name.endswith("running_mean"):
            value = uniform(-0.1, 0.1)
        elif name.endswith("running_var"):
            value = uniform(0.5, 1.5)
        elif name.endswith(".bias"):
            value = uniform(-0.05, 0.05)
        else:
            raise AssertionError(f"no random init rule for {name}")
        out[name] = torch.from_numpy(value)
    return out
