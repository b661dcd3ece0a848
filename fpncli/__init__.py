"""fpncli: Detectron2's ResNet-FPN backbone (P2-P6) as a feature-map extractor and visualizer.

The library works without the CLI::

    import fpncli
    model = fpncli.load_backbone("faster_rcnn_R_50_FPN_3x")   # or a path, or "random"
    features = fpncli.extract_features("street.jpg", model)   # {"p2": tensor, ..., "p6": tensor}
    saved = fpncli.load_extraction("fpn_out/street")          # what the CLI wrote, memory-mapped

Names are imported lazily so that ``fpncli --help`` does not import torch.
"""

import importlib

__version__ = "0.1.0"

#: the ``extra`` key of a warning said once per run (``log.warning(..., extra={ONCE: "compile"})``):
#: a run on several worker processes (``--gpus``, Ray actors) says it once, not once per worker
#: (``run.summary.say_relayed``); here, so that the model's modules need not import the run's
ONCE = "fpncli_once"

_LAZY = {
    "WeightsInfo": "api",
    "extract": "api",
    "extract_features": "api",
    "load_backbone": "api",
    "LoadedExtraction": "io.extraction",
    "load_extraction": "io.extraction",
    "FPN": "model.fpn",
    "LEVELS": "model.fpn",
    "LEVEL_STRIDES": "model.fpn",
    "build_resnet_fpn_backbone": "model.fpn",
    "DEFAULT_WEIGHTS": "weights.registry",
    "REGISTRY": "weights.registry",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fpncli' has no attribute {name!r}")


def __dir__() -> list[str]:  # tab completion sees the lazy names too
    return sorted(set(globals()) | set(__all__))
