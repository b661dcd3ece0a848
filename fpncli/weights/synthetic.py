"""Seeded checkpoints written in each real format, for tests, parity checks and offline trials.

The torchvision names are produced here by their own rule (fpncli/Detectron2 name ->
torchvision name), independently of ``layouts._rename_torchvision`` (the reverse direction),
so that each checks the other.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from ..model.fpn import build_resnet_fpn_backbone
from .arch import random_state_dict

__all__ = [
    "seeded_state_dict",
    "torchvision_name",
    "write_detectron2_pkl",
    "write_detectron2_pth",
    "write_torchvision_pth",
]

# Detection-head entries a real checkpoint carries next to the backbone (shapes shortened).
_DETECTRON2_HEADS = {
    "proposal_generator.rpn_head.conv.weight": (256, 256, 3, 3),
    "proposal_generator.rpn_head.objectness_logits.weight": (3, 256, 1, 1),
    "roi_heads.box_head.fc1.weight": (1024, 64),
    "roi_heads.box_predictor.cls_score.weight": (81, 1024),
    "roi_heads.box_predictor.bbox_pred.bias": (320,),
}
_TORCHVISION_HEADS = {
    "rpn.head.conv.0.0.weight": (256, 256, 3, 3),
    "rpn.head.cls_logits.weight": (3, 256, 1, 1),
    "roi_heads.box_head.fc6.weight": (1024, 64),
    "roi_heads.box_predictor.cls_score.weight": (91, 1024),
}


def seeded_state_dict(seed: int = 0, **arch) -> dict[str, torch.Tensor]:
    """``random_state_dict`` of the backbone ``build_resnet_fpn_backbone(**arch)``."""
    return random_state_dict(build_resnet_fpn_backbone(**arch), seed)


def _heads(shapes: dict, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.RandomState(seed + 1)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


def write_detectron2_pkl(path: Path, state: dict[str, torch.Tensor], *, protocol: int = 2) -> None:
    """A Detectron2 model-zoo ``.pkl``: ``{"model": {"backbone.*": ndarray, heads...},
    "__author__": ...}``, pickled like the published files."""
    model = {f"backbone.{k}": v.numpy() for k, v in state.items()}
    model.update(_heads(_DETECTRON2_HEADS, 0))
    with open(path, "wb") as f:
        pickle.dump({"model": model, "__author__": "Detectron2 Model Zoo"}, f, protocol=protocol)


def write_detectron2_pth(path: Path, state: dict[str, torch.Tensor]) -> None:
    """A Detectron2 ``DetectionCheckpointer`` ``.pth``: ``{"model": tensors, "iteration": n}``."""
    model = {f"backbone.{k}": v.clone() for k, v in state.items()}
    model.update({k: torch.from_numpy(v) for k, v in _heads(_DETECTRON2_HEADS, 0).items()})
    torch.save({"model": model, "iteration": 89999}, path)


def torchvision_name(name: str, *, legacy_fpn: bool = False) -> str:
    """fpncli/Detectron2 backbone name -> torchvision ``fasterrcnn_resnet50_fpn`` name.

    ``legacy_fpn`` gives the pre-0.13 FPN names (``inner_blocks.0.weight`` rather than
    ``inner_blocks.0.0.weight``).
    """
    parts = name.split(".")
    if name == "bottom_up.stem.conv1.weight":
        return "backbone.body.conv1.weight"
    if name.startswith("bottom_up.stem.conv1.norm."):
        return f"backbone.body.bn1.{parts[-1]}"
    if name.startswith("bottom_up.res"):
        layer, block, conv = int(parts[1][3:]) - 1, parts[2], parts[3]
        is_norm = parts[4] == "norm"
        if conv == "shortcut":
            return f"backbone.body.layer{layer}.{block}.downsample.{int(is_norm)}.{parts[-1]}"
        kind = "bn" if is_norm else "conv"
        return f"backbone.body.layer{layer}.{block}.{kind}{conv[-1]}.{parts[-1]}"
    if name.startswith(("fpn_lateral", "fpn_output")):
        blocks = "inner_blocks" if name.startswith("fpn_lateral") else "layer_blocks"
        index = int(parts[0][-1]) - 2
        inner = "" if legacy_fpn else ".0"
        return f"backbone.fpn.{blocks}.{index}{inner}.{parts[1]}"
    raise ValueError(f"no torchvision name for {name}")


def write_torchvision_pth(
    path: Path, state: dict[str, torch.Tensor], *, legacy_fpn: bool = False
) -> dict[str, torch.Tensor]:
    """A torchvision Faster R-CNN state dict (backbone plus heads); returns what was saved."""
    saved = {torchvision_name(k, legacy_fpn=legacy_fpn): v.clone() for k, v in state.items()}
    saved.update({k: torch.from_numpy(v) for k, v in _heads(_TORCHVISION_HEADS, 0).items()})
    torch.save(saved, path)
    return saved
