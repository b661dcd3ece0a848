"""The backbone's output names, strides and channels, without torch (``fpncli show``, ``report``
and ``diff`` read extractions without loading it)."""

from __future__ import annotations

__all__ = [
    "LEVELS", "LEVEL_STRIDES", "STAGES", "STAGE_STRIDES", "OUTPUTS", "OUTPUT_STRIDES",
    "OUTPUT_CHANNELS",
]  # fmt: skip

LEVELS: tuple[str, ...] = ("p2", "p3", "p4", "p5", "p6")
LEVEL_STRIDES: dict[str, int] = {name: 2 ** int(name[1:]) for name in LEVELS}
#: The bottom-up (ResNet) outputs, named, strided and (for R-50/101/152 and X-101) shaped as
#: Detectron2's ``ResNet.output_shape()`` reports them: stem 64 channels at stride 4 (after the
#: max-pool), res2 256/4, res3 512/8, res4 1024/16, res5 2048/32.
STAGES: tuple[str, ...] = ("stem", "res2", "res3", "res4", "res5")
STAGE_STRIDES: dict[str, int] = {"stem": 4, "res2": 4, "res3": 8, "res4": 16, "res5": 32}
#: Everything ``--levels`` can name, bottom-up first, then the pyramid.
OUTPUTS: tuple[str, ...] = STAGES + LEVELS
OUTPUT_STRIDES: dict[str, int] = {**STAGE_STRIDES, **LEVEL_STRIDES}
OUTPUT_CHANNELS: dict[str, int] = {
    "stem": 64, "res2": 256, "res3": 512, "res4": 1024, "res5": 2048,
    **dict.fromkeys(LEVELS, 256),
}  # fmt: skip
