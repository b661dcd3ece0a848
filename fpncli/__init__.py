"""fpncli: Detectron2's ResNet-FPN backbone (P2-P6) as a feature-map extractor and visualizer.

The library works without the CLI::

    import fpncli
    model = fpncli.load_backbone("faster_rcnn_R_50_FPN_3x")   # or a path, or "random"
    features = fpncli.extract_features("street.jpg", model)   # {"p2": tensor, ..., "p6": tensor}
"""

__version__ = "0.1.0"

from .api import WeightsInfo, extract, extract_features, load_backbone  # noqa: E402
from .fpn import FPN, LEVEL_STRIDES, LEVELS, build_resnet_fpn_backbone  # noqa: E402
from .weights import DEFAULT_WEIGHTS, REGISTRY  # noqa: E402

__all__ = [
    "__version__",
    "FPN",
    "LEVELS",
    "LEVEL_STRIDES",
    "DEFAULT_WEIGHTS",
    "REGISTRY",
    "WeightsInfo",
    "build_resnet_fpn_backbone",
    "extract",
    "extract_features",
    "load_backbone",
]
