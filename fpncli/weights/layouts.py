"""The layouts of weights files fpncli reads, and the one it writes.

Supported layouts, all mapped onto Detectron2's own names (``bottom_up.res2.0.conv1.weight``,
``fpn_lateral2.bias``, ...):

- Detectron2 model zoo ``.pkl``: ``{"model": {"backbone.bottom_up.*": ndarray, ...}, ...}``
- Detectron2 ``.pth`` (DetectionCheckpointer): ``{"model": state_dict, ...}``
- torchvision Faster R-CNN state dicts: ``backbone.body.*``, ``backbone.fpn.inner_blocks.*``,
  ``backbone.fpn.layer_blocks.*``
- fpncli's own ``.pth`` (``save_fpncli_checkpoint``):
  ``{"fpncli_format": 1, "arch": {...}, "input": {...}, "model": ...}``

``detect_format`` tells a state dict's layout and ``backbone_entries`` keeps its backbone entries
under Detectron2's names; reading the file safely and checking its values is ``checkpoint``'s.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from ..io.messages import quote_name
from .arch import check_matches, expected_shapes, listing
from .registry import InputFormat

__all__ = [
    "FPNCLI_FORMAT_VERSION",
    "fpncli_input",
    "backbone_entries",
    "without_module_prefix",
    "detect_format",
    "save_fpncli_checkpoint",
]


FPNCLI_FORMAT_VERSION = 1


def fpncli_input(path: Path, inp: object) -> InputFormat:
    """The ``input`` entry of an fpncli file: a channel order and 3 finite means and stds."""
    if not isinstance(inp, dict) or not {"color_order", "pixel_mean", "pixel_std"} <= set(inp):
        raise ValueError(
            f"{path}: its 'input' entry must be a dict with color_order, pixel_mean and pixel_std"
        )
    values = {}
    for key in ("pixel_mean", "pixel_std"):
        v = inp[key]
        if not (
            isinstance(v, (list, tuple)) and len(v) == 3
            and all(isinstance(x, numbers.Real) and not isinstance(x, bool) for x in v)
            and all(math.isfinite(x) for x in v)
        ):  # fmt: skip
            raise ValueError(f"{path}: input {key} must be 3 finite numbers, got {v!r:.80}")
        values[key] = tuple(float(x) for x in v)
    if min(values["pixel_std"]) <= 0:
        raise ValueError(f"{path}: input pixel_std must be positive, got {values['pixel_std']}")
    try:
        return InputFormat(inp["color_order"], values["pixel_mean"], values["pixel_std"])
    except ValueError as e:
        raise ValueError(f"{path}: input {e}") from None


def _rename_torchvision(key: str) -> str | None:
    """Map a torchvision backbone key (without ``backbone.``) to Detectron2's name."""
    if m := re.match(r"^body\.conv1\.(.*)$", key):
        return f"bottom_up.stem.conv1.{m[1]}"
    if m := re.match(r"^body\.bn1\.(.*)$", key):
        return f"bottom_up.stem.conv1.norm.{m[1]}"
    if m := re.match(r"^body\.layer(\d)\.(\d+)\.(conv|bn)(\d)\.(.*)$", key):
        stage, block, kind, index, rest = m.groups()
        norm = ".norm" if kind == "bn" else ""
        return f"bottom_up.res{int(stage) + 1}.{block}.conv{index}{norm}.{rest}"
    if m := re.match(r"^body\.layer(\d)\.(\d+)\.downsample\.([01])\.(.*)$", key):
        stage, block, index, rest = m.groups()
        norm = ".norm" if index == "1" else ""
        return f"bottom_up.res{int(stage) + 1}.{block}.shortcut{norm}.{rest}"
    if m := re.match(r"^fpn\.(inner|layer)_blocks\.(\d)\.(?:0\.)?(weight|bias)$", key):
        kind, index, rest = m.groups()
        prefix = "fpn_lateral" if kind == "inner" else "fpn_output"
        return f"{prefix}{int(index) + 2}.{rest}"
    return None


#: The trained P6 (and P7) of RetinaNet-style FPNs: Detectron2's ``LastLevelP6P7`` /
#: ``LastLevelP6`` (``top_block``), torchvision's ``LastLevelP6P7`` (``fpn.extra_blocks``).
_P6_CONV = re.compile(r"(?:^|\.)(?:top_block|fpn\.extra_blocks)\.")


def backbone_entries(model: dict, fmt: str) -> tuple[dict[str, object], int]:
    """Select the backbone entries of a full-detector state dict and rename them; two keys that
    rename to one name (``backbone.X`` and ``X``, or torchvision's legacy and current FPN names)
    are refused, naming both: which of them was meant cannot be told. Only keys outside the
    backbone (the heads: ``proposal_generator.*``, ``roi_heads.*``, ...) are skipped: a
    ``backbone.*`` key this backbone has no place for is refused (a trained P6 dropped would
    leave a different model)."""
    out: dict[str, object] = {}
    origin: dict[str, str] = {}
    skipped = 0
    unknown = []
    for key, value in model.items():
        if key.endswith("num_batches_tracked"):  # a BatchNorm counter: FrozenBN has none
            continue
        if fmt == "torchvision":
            if not key.startswith("backbone."):
                skipped += 1
                continue
            new = _rename_torchvision(key[len("backbone.") :])
            if new is None:
                unknown.append(key)
                continue
        else:
            new = key[len("backbone.") :] if key.startswith("backbone.") else key
            if not (new.startswith("bottom_up.") or new.startswith("fpn_")):
                if key.startswith("backbone.") or _P6_CONV.match(new):  # (a bare backbone's too)
                    unknown.append(key)
                else:
                    skipped += 1
                continue
        if new in out:
            raise ValueError(
                f"checkpoint keys {origin[new]!r:.100} and {key!r:.100} both name the backbone's "
                f"{new}: refused (which of them is meant?)"
            )
        out[new] = value
        origin[new] = key
    if p6 := next((k for k in unknown if _P6_CONV.search(k)), None):
        raise ValueError(
            f"{quote_name(p6)}: a P6 made by a convolution (RetinaNet's LastLevelP6P7?) is not "
            f"the max-pool P6 this backbone has ({len(unknown)} backbone key(s) it has no place "
            "for): refused"
        )
    if unknown:
        raise ValueError(f"unexpected backbone keys in {fmt} checkpoint: {listing(unknown)}")
    return out, skipped


def without_module_prefix(model: dict) -> dict:
    """``model`` without the ``module.`` that ``DistributedDataParallel`` puts before every key
    of a model it wraps, as Detectron2's checkpointer strips it (fvcore's
    ``_strip_prefix_if_present``): only when every key has it."""
    if model and all(isinstance(k, str) and k.startswith("module.") for k in model):
        return {k[len("module.") :]: v for k, v in model.items()}
    return model


def detect_format(model: dict) -> str:
    keys = list(model)
    if any(k.startswith("backbone.body.") for k in keys):
        return "torchvision"
    if any(k.startswith(("backbone.bottom_up.", "bottom_up.")) for k in keys):
        return "detectron2"
    if any(re.match(r"^res\d_\d+_branch", k) or k.startswith("conv1_w") for k in keys):
        raise ValueError(
            "this looks like a Caffe2-style ImageNet backbone (res2_0_branch2a_w, ...): fpncli "
            "loads detection checkpoints with an FPN (Detectron2 model zoo or torchvision)"
        )
    raise ValueError(
        "no ResNet-FPN backbone found: expected keys like 'backbone.bottom_up.stem.conv1.weight' "
        "(Detectron2) or 'backbone.body.conv1.weight' (torchvision)"
    )


def save_fpncli_checkpoint(
    path: str | Path, model: nn.Module, arch: dict, input_format: InputFormat
) -> None:
    """Write fpncli's own ``.pth``: the backbone state dict plus the arch and input it needs.

    Raises:
        ValueError: ``model``'s state dict is not that of ``build_resnet_fpn_backbone(**arch)``
            (e.g. ``load_backbone``'s, whose BatchNorms are folded into the convolutions for
            inference: the file would not load).
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    try:
        check_matches(expected_shapes(arch), state)
    except ValueError as e:
        raise ValueError(
            f"not saved: {e} (a model from load_backbone has its BatchNorms folded into its "
            "convolutions: save the state dict of read_checkpoint, or of a model built with "
            "build_resnet_fpn_backbone)"
        ) from None
    torch.save(
        {
            "fpncli_format": FPNCLI_FORMAT_VERSION,
            "arch": dict(arch),
            "input": asdict(input_format),
            "model": state,
        },
        path,
    )
