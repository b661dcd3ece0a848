"""The registry of named checkpoints: pure data, no I/O.

Each entry says where the file comes from and what the network and its input must look like for
those weights (architecture, channel order, pixel mean/std), the way torchvision's weight enums
declare their own preprocessing. Addresses are Detectron2's ``model_zoo/model_zoo.py`` and
torchvision's ``models/detection/faster_rcnn.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "InputFormat",
    "WeightsSpec",
    "DETECTRON2_INPUT",
    "TORCHVISION_INPUT",
    "REGISTRY",
    "DEFAULT_WEIGHTS",
    "get_spec",
]


@dataclass(frozen=True)
class InputFormat:
    """What the network expects as input.

    Pixels are 0-255 floats in ``color_order``; the network sees ``(x - pixel_mean) / pixel_std``
    per channel, in that same channel order.
    """

    color_order: str  # "BGR" or "RGB"
    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float]

    def __post_init__(self) -> None:
        if self.color_order not in ("BGR", "RGB"):
            raise ValueError(f"color_order must be 'BGR' or 'RGB', got {self.color_order!r}")


#: Detectron2's Base-RCNN-FPN: BGR, MSRA (Caffe2) means, std 1.
DETECTRON2_INPUT = InputFormat("BGR", (103.530, 116.280, 123.675), (1.0, 1.0, 1.0))
#: torchvision: RGB, ImageNet mean/std on a 0-1 scale (here written on the 0-255 scale).
TORCHVISION_INPUT = InputFormat(
    "RGB",
    (0.485 * 255, 0.456 * 255, 0.406 * 255),
    (0.229 * 255, 0.224 * 255, 0.225 * 255),
)
#: Detectron2's X-101-32x8d configs: BGR, the same means, torchvision-style std.
DETECTRON2_X101_INPUT = InputFormat("BGR", (103.530, 116.280, 123.675), (57.375, 57.120, 58.395))


@dataclass(frozen=True)
class WeightsSpec:
    """A named checkpoint: where to get it and how to use it."""

    name: str
    url: str
    file_name: str
    format: str  # "detectron2" (a .pkl or .pth) or "torchvision"
    input: InputFormat
    arch: dict = field(default_factory=dict)  # keyword arguments of build_resnet_fpn_backbone
    sha256: str | None = None  # full digest where published; else recorded on first download
    sha256_prefix: str | None = None  # torchvision's file-name hash prefix
    size_bytes: int | None = None
    description: str = ""


_D2 = "https://dl.fbaipublicfiles.com/detectron2/"


def _detectron2(name: str, config: str, suffix: str, **kwargs) -> WeightsSpec:
    return WeightsSpec(
        name=name,
        url=f"{_D2}{config}/{suffix}",
        file_name=f"{name}-{suffix.split('/')[-1]}",
        format="detectron2",
        **kwargs,
    )


REGISTRY: dict[str, WeightsSpec] = {
    spec.name: spec
    for spec in (
        _detectron2(
            "faster_rcnn_R_50_FPN_1x",
            "COCO-Detection/faster_rcnn_R_50_FPN_1x",
            "137257794/model_final_b275ba.pkl",
            input=DETECTRON2_INPUT,
            arch={"depth": 50, "stride_in_1x1": True},
            description="Detectron2 COCO Faster R-CNN R50-FPN, 1x schedule (37.9 box AP)",
        ),
        _detectron2(
            "faster_rcnn_R_50_FPN_3x",
            "COCO-Detection/faster_rcnn_R_50_FPN_3x",
            "137849458/model_final_280758.pkl",
            input=DETECTRON2_INPUT,
            arch={"depth": 50, "stride_in_1x1": True},
            # Digest as published in CompressAI-Vision's weight list (scripts/install.sh).
            sha256="3c25caca37baabbff3e22cc9eb0923db165a0c18b867871a3bf3570bac9b7ef0",
            description="Detectron2 COCO Faster R-CNN R50-FPN, 3x schedule (40.2 box AP)",
        ),
        _detectron2(
            "faster_rcnn_R_101_FPN_3x",
            "COCO-Detection/faster_rcnn_R_101_FPN_3x",
            "137851257/model_final_f6e8b1.pkl",
            input=DETECTRON2_INPUT,
            arch={"depth": 101, "stride_in_1x1": True},
            description="Detectron2 COCO Faster R-CNN R101-FPN, 3x schedule (42.0 box AP)",
        ),
        _detectron2(
            "faster_rcnn_X_101_32x8d_FPN_3x",
            "COCO-Detection/faster_rcnn_X_101_32x8d_FPN_3x",
            "139173657/model_final_68b088.pkl",
            input=DETECTRON2_X101_INPUT,
            arch={"depth": 101, "num_groups": 32, "width_per_group": 8, "stride_in_1x1": False},
            sha256="fe5ad56ff746aa55c5f453b01f8395134e9281d240dbeb473411d4a6b262c9dc",
            description="Detectron2 COCO Faster R-CNN X101-32x8d-FPN, 3x schedule (43.0 box AP)",
        ),
        _detectron2(
            "mask_rcnn_R_50_FPN_3x",
            "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x",
            "137849600/model_final_f10217.pkl",
            input=DETECTRON2_INPUT,
            arch={"depth": 50, "stride_in_1x1": True},
            sha256="9a737e290372f1f70994ebcbd89d8004dbb3ae30a605fd915a190fa4a782dd66",
            description="Detectron2 COCO Mask R-CNN R50-FPN, 3x schedule (its backbone)",
        ),
        WeightsSpec(
            name="torchvision_fasterrcnn_resnet50_fpn",
            url="https://download.pytorch.org/models/fasterrcnn_resnet50_fpn_coco-258fb6c6.pth",
            file_name="fasterrcnn_resnet50_fpn_coco-258fb6c6.pth",
            format="torchvision",
            input=TORCHVISION_INPUT,
            arch={"depth": 50, "stride_in_1x1": False},
            sha256_prefix="258fb6c6",
            description="torchvision COCO Faster R-CNN ResNet-50-FPN v1 (37.0 box AP)",
        ),
    )
}

DEFAULT_WEIGHTS = "faster_rcnn_R_50_FPN_3x"


def get_spec(name: str) -> WeightsSpec:
    """Look up a registry entry by name; raises ValueError listing the known names."""
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(REGISTRY)
        raise ValueError(f"unknown weights name {name!r}; known names: {known}, random") from None
