"""TF32 off for true fp32 on CUDA, and put back afterwards through the API the user set it with
(the legacy ``allow_tf32`` flags or torch >= 2.9's ``fp32_precision`` settings).

``TF32_OFF`` is process-wide and shared by overlapping holders (``shared.SharedSetting``):
``api.fp32_strict`` holds it.
"""

from __future__ import annotations

import torch

from ..shared import Record, SharedSetting

__all__ = ["TF32_OFF"]


def _tf32_off(record: Record) -> None:
    """Turn TF32 off through the API the user set it with, having first passed ``record`` what
    puts it back (the state found, whichever flags were set when it runs): once torch >= 2.9's
    ``fp32_precision`` settings were used, reading the legacy ``allow_tf32`` flags raises, and
    setting either API over the other leaves a mixed state that makes cuBLAS calls raise."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    try:
        saved = (matmul.allow_tf32, cudnn.allow_tf32, torch.get_float32_matmul_precision())
    except RuntimeError:  # the user set TF32 with the fp32_precision settings
        saved_precision = (matmul.fp32_precision, cudnn.conv.fp32_precision)

        def restore_precision() -> None:
            matmul.fp32_precision, cudnn.conv.fp32_precision = saved_precision

        record(restore_precision)
        matmul.fp32_precision = cudnn.conv.fp32_precision = "ieee"
        return
    # setting the legacy flags also writes the fp32_precision settings underneath ("none", which
    # inherits, becomes "ieee"): those are put back too, or a later torch.backends.fp32_precision
    # = "tf32" would no longer reach the matmuls
    underneath = [(s, s.fp32_precision) for s in _precision_settings()]

    def restore() -> None:
        matmul.allow_tf32, cudnn.allow_tf32 = saved[:2]
        torch.set_float32_matmul_precision(saved[2])
        for setting, value in underneath:
            if setting.fp32_precision != value:
                setting.fp32_precision = value

    record(restore)
    matmul.allow_tf32 = False
    cudnn.allow_tf32 = False


TF32_OFF = SharedSetting(_tf32_off)  # fp32_strict's holders share one save and restore


def _precision_settings() -> list:
    """torch >= 2.9's ``fp32_precision`` settings that the legacy TF32 flags write."""
    b = torch.backends
    found = [b.cuda.matmul, getattr(b.cudnn, "conv", None), getattr(b.mkldnn, "matmul", None),
             getattr(b.mkldnn, "conv", None)]  # fmt: skip
    return [s for s in found if s is not None and hasattr(s, "fp32_precision")]
