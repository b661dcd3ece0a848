"""The real Detectron2 as an oracle: its backbone and DefaultPredictor preprocessing.

Shared by ``parity.py`` and ``bench_vs_detectron2.py``; needs Detectron2's source importable.
"""

from __future__ import annotations

from pathlib import Path

import torch

# Detectron2 config overrides per architecture (configs/COCO-Detection/*_FPN_3x.yaml).
ARCHS = {
    "r50": {"DEPTH": 50},
    "r101": {"DEPTH": 101},
    "x101": {"DEPTH": 101, "NUM_GROUPS": 32, "WIDTH_PER_GROUP": 8, "STRIDE_IN_1X1": False},
}


def require(script: str) -> None:
    """Exit with one line naming what is missing when Detectron2 (or a package it needs) does
    not import: before any setup, not a traceback from deep in it."""
    try:
        import detectron2.checkpoint  # noqa: F401 - the modules load_backbone and preprocess use
        import detectron2.config  # noqa: F401
        import detectron2.data.detection_utils  # noqa: F401
        import detectron2.modeling.backbone.fpn  # noqa: F401
    except ImportError as e:
        raise SystemExit(
            f"{script} needs Detectron2 importable ({e}): put its source on PYTHONPATH, "
            f"e.g. PYTHONPATH=/path/to/detectron2 python scripts/{script} ..."
        ) from None


def load_backbone(pkl: Path, arch: str = "r50"):
    """Detectron2's ``build_resnet_fpn_backbone`` (Base-RCNN-FPN with ``arch``), loaded from
    ``pkl`` by its own ``DetectionCheckpointer``. Returns ``(backbone, cfg)``."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone.fpn import build_resnet_fpn_backbone

    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    for key, value in ARCHS[arch].items():
        setattr(cfg.MODEL.RESNETS, key, value)
    if arch == "x101":
        cfg.MODEL.PIXEL_STD = [57.375, 57.120, 58.395]
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]

    class Detector(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = build_resnet_fpn_backbone(cfg, ShapeSpec(channels=3))

    detector = Detector().eval()
    DetectionCheckpointer(detector).load(str(pkl))
    return detector.backbone, cfg


def preprocess(path: Path, cfg, backbone, min_size: int, max_size: int) -> torch.Tensor:
    """DefaultPredictor's preprocessing: ``read_image`` (BGR), ``ResizeShortestEdge``,
    ``(x - mean) / std``, ``ImageList`` padding. Returns ``(1, 3, Hp, Wp)``."""
    from detectron2.data import transforms as T
    from detectron2.data.detection_utils import read_image
    from detectron2.structures import ImageList

    original = read_image(str(path), format="BGR")
    resize = T.ResizeShortestEdge([min_size, min_size], max_size)
    image = resize.get_transform(original).apply_image(original)
    x = torch.as_tensor(image.astype("float32").transpose(2, 0, 1))
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(-1, 1, 1)
    std = torch.tensor(cfg.MODEL.PIXEL_STD).view(-1, 1, 1)
    return ImageList.from_tensors([(x - mean) / std], backbone.size_divisibility).tensor
