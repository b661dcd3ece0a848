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
    setting either API over the other leaves a mixed state that makes cuBLAS calls raise.

    Every setting is left at true fp32 (``ieee``), oneDNN's too: a state where one matmul
    backend allows TF32 and another does not is "mixed", and torch's legacy readers then raise
    (``torch.get_float32_matmul_precision()``, which inductor calls, after the user's
    ``set_float32_matmul_precision("high")``; ``cudnn.allow_tf32`` after
    ``torch.backends.fp32_precision = "tf32"``)."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    try:
        saved = (matmul.allow_tf32, cudnn.allow_tf32, torch.get_float32_matmul_precision())
    except RuntimeError:  # the user set TF32 with the fp32_precision settings
        # cuDNN's legacy flag is a value of its own, which its reader compares with the conv
        # and RNN settings: where it could be read, it is set too (setting it writes those two)
        try:
            cudnn_flag = cudnn.allow_tf32
        except RuntimeError:
            cudnn_flag = None
        saved_precision = [(s, s.fp32_precision) for s in _precision_settings()]

        def restore_precision() -> None:
            if cudnn_flag is not None:
                cudnn.allow_tf32 = cudnn_flag
            for setting, value in saved_precision:
                setting.fp32_precision = value

        record(restore_precision)
        if cudnn_flag is not None:
            cudnn.allow_tf32 = False
        for setting, _ in saved_precision:
            setting.fp32_precision = "ieee"
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
    torch.set_float32_matmul_precision("highest")  # every matmul backend's: cuBLAS and oneDNN
    matmul.allow_tf32 = False
    cudnn.allow_tf32 = False


TF32_OFF = SharedSetting(_tf32_off)  # fp32_strict's holders share one save and restore


def _precision_settings() -> list:
    """torch >= 2.9's leaf ``fp32_precision`` settings (each backend's matmul, convolution and
    RNN: those the legacy TF32 flags write, and those they read)."""
    b = torch.backends
    found = [b.cuda.matmul, *(getattr(getattr(b, backend), op, None)
                              for backend in ("cudnn", "mkldnn") for op in ("conv", "rnn")),
             getattr(b.mkldnn, "matmul", None)]  # fmt: skip
    return [s for s in found if s is not None and hasattr(s, "fp32_precision")]
