"""Reading checkpoint files safely and loading them strictly into the backbone.

Weights files are data, never code: Detectron2 ``.pkl`` files go through an unpickler that can
rebuild numpy arrays and plain containers and nothing else (``pickled``), and ``.pth`` files
through ``torch.load(..., weights_only=True)`` (``safeload``). Either way a file that asks for
anything else (say ``os.system`` through ``__reduce__``) is refused before any of it runs.

Supported layouts, all mapped onto Detectron2's own names (``bottom_up.res2.0.conv1.weight``,
``fpn_lateral2.bias``, ...):

- Detectron2 model zoo ``.pkl``: ``{"model": {"backbone.bottom_up.*": ndarray, ...}, ...}``
- Detectron2 ``.pth`` (DetectionCheckpointer): ``{"model": state_dict, ...}``
- torchvision Faster R-CNN state dicts: ``backbone.body.*``, ``backbone.fpn.inner_blocks.*``,
  ``backbone.fpn.layer_blocks.*``
- fpncli's own ``.pth``: ``{"fpncli_format": 1, "arch": {...}, "input": {...}, "model": ...}``
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..io.guard import quote_name
from ..model.fpn import FPN, build_resnet_fpn_backbone
from ..model.resnet import BLOCKS_PER_STAGE
from .cache import WrongCheckpointError
from .registry import (
    DETECTRON2_INPUT,
    DETECTRON2_X101_INPUT,
    TORCHVISION_INPUT,
    InputFormat,
    WeightsSpec,
)
from .safeload import (
    UnsafeCheckpointError,
    check_file_size,
    check_zip_sizes,
    is_zip,
    safe_unpickle,
    torch_load_safe,
)

__all__ = [
    "UnsafeCheckpointError",
    "Checkpoint",
    "read_checkpoint",
    "read_registry_checkpoint",
    "check_registry_file",
    "infer_arch",
    "check_arch",
    "build_backbone",
    "new_backbone",
    "load_state_dict_strict",
    "random_state_dict",
    "save_fpncli_checkpoint",
    "safe_unpickle",
]

FPNCLI_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read from disk, keyed with fpncli's (= Detectron2's backbone) names.

    Attributes:
        state_dict: ``bottom_up.*`` / ``fpn_*`` names to float32 CPU tensors.
        format: "detectron2", "torchvision" or "fpncli".
        arch: keyword arguments of ``build_resnet_fpn_backbone`` for these weights.
        input: the channel order and pixel mean/std the weights expect.
        skipped: how many non-backbone keys (detection heads, optimizer) were ignored.
    """

    state_dict: dict[str, torch.Tensor]
    format: str
    arch: dict
    input: InputFormat
    skipped: int


def _entry_bytes(name: str, value: object) -> int:
    """The bytes ``value`` holds (elements x element size), once it is known to be a dense,
    real-valued array whose elements are all stored: nothing is converted or allocated.

    Raises:
        ValueError: naming the entry, for anything else (sparse, meta and quantized tensors, a
            view with more elements than its storage holds, complex or bool values).
    """
    if isinstance(value, torch.Tensor):
        if value.layout != torch.strided:
            raise ValueError(
                f"checkpoint entry {name!r} is a sparse tensor ({value.layout}): a weights file "
                "holds dense tensors (re-save it with .to_dense())"
            )
        if value.is_meta:
            raise ValueError(
                f"checkpoint entry {name!r} is a meta tensor, which holds no data (saved from a "
                "model built on the meta device?)"
            )
        if value.is_quantized:
            raise ValueError(
                f"checkpoint entry {name!r} is a quantized tensor ({value.dtype}): fpncli loads "
                "float weights (re-save it with .dequantize())"
            )
        if value.is_complex() or value.dtype == torch.bool:  # .to(float32) would drop or invent
            raise ValueError(
                f"checkpoint entry {name!r} is not a real-valued array ({value.dtype})"
            )
        nbytes = value.numel() * value.element_size()
        # a view's elements must be in its storage: an expanded (stride 0) one is not, and
        # converting or checking it allocates all of them, where the file stored a few bytes
        stored = value.untyped_storage().nbytes() - value.storage_offset() * value.element_size()
        if nbytes > stored:
            raise ValueError(
                f"checkpoint entry {name!r} has {value.numel()} elements ({nbytes} bytes) in a "
                f"storage of {max(stored, 0)} bytes (an expanded or overlapping view): refused"
            )
        return nbytes
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "fiu":
            return value.nbytes
        raise ValueError(f"checkpoint entry {name!r} is not a real-valued array ({value.dtype})")
    raise ValueError(f"checkpoint entry {name!r} is not a numeric array ({type(value).__name__})")


def _to_tensor(value: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A float32 CPU tensor of an entry ``_entry_bytes`` accepted."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", torch.float32)
    return torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))


def _check_model_entry(path: Path, model: object) -> dict:
    """The ``model`` entry must be a state dict: a dict with string keys."""
    if not isinstance(model, dict):
        raise ValueError(f"{path}: its 'model' entry is a {type(model).__name__}, not a dict")
    odd = [k for k in model if not isinstance(k, str)]
    if odd:
        raise ValueError(
            f"{path}: its 'model' entry has non-string keys ({odd[0]!r:.40}, {len(odd)} in all): "
            "not a state dict"
        )
    return model


def _check_entries(entries: dict[str, object]) -> int:
    """The bytes all entries hold, each a dense real array with all its elements stored."""
    return sum(_entry_bytes(name, value) for name, value in entries.items())


def _check_finite(path: Path, state: dict[str, torch.Tensor]) -> None:
    for name, tensor in state.items():
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(
                f"{path}: {quote_name(name)} holds NaN or infinite values (a diverged or damaged "
                "checkpoint?): refused"
            )


def _check_running_var(path: Path, state: dict[str, torch.Tensor]) -> None:
    """A BatchNorm running variance is never negative: FrozenBatchNorm scales by
    ``weight / sqrt(running_var + eps)``, so a negative one gives NaN (or huge) features."""
    for name, tensor in state.items():  # fpncli's names, whatever the file's format
        if name.endswith(".running_var") and bool((tensor < 0).any()):
            raise ValueError(
                f"{path}: {quote_name(name)} holds negative values (down to "
                f"{float(tensor.min()):.3g}), not a BatchNorm variance (a damaged checkpoint?): "
                "refused"
            )


def _fpncli_input(path: Path, inp: object) -> InputFormat:
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


def _backbone_entries(model: dict, fmt: str) -> tuple[dict[str, object], int]:
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
        raise ValueError(f"unexpected backbone keys in {fmt} checkpoint: {_listing(unknown)}")
    return out, skipped


def _without_module_prefix(model: dict) -> dict:
    """``model`` without the ``module.`` that ``DistributedDataParallel`` puts before every key
    of a model it wraps, as Detectron2's checkpointer strips it (fvcore's
    ``_strip_prefix_if_present``): only when every key has it."""
    if model and all(isinstance(k, str) and k.startswith("module.") for k in model):
        return {k[len("module.") :]: v for k, v in model.items()}
    return model


def _listing(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _detect_format(model: dict) -> str:
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


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a weights file (any supported layout) safely, keeping only the backbone.

    Nothing in the file is converted or checked for values before its backbone entries are known
    to be dense real arrays with all their elements stored, with the names and shapes of the
    architecture, holding no more bytes than the file: a small file cannot make it allocate much.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the file asks to run code or build non-array objects.
        ValueError: not a supported checkpoint, or one that does not match its architecture.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights file not found: {path}")
    size = check_file_size(path)  # the bytes it stores: in a zip, what its members declare
    if is_zip(path):
        size = check_zip_sizes(path)
        obj = torch_load_safe(path)
    else:
        obj = safe_unpickle(path)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict, found {type(obj).__name__}")
    if obj.get("fpncli_format") is not None:
        if obj["fpncli_format"] != FPNCLI_FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported fpncli_format {obj['fpncli_format']!r:.40}")
        missing = [k for k in ("model", "arch", "input") if k not in obj]
        if missing:
            raise ValueError(
                f"{path}: an fpncli_format file needs 'model', 'arch' and 'input' entries; "
                f"{', '.join(repr(k) for k in missing)} missing"
            )
        entries = _check_model_entry(path, obj["model"])
        try:
            stored = _check_entries(entries)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        inp = _fpncli_input(path, obj["input"])
        fmt, arch, skipped = "fpncli", obj["arch"], 0
    else:
        model = _check_model_entry(path, obj.get("model", obj.get("state_dict", obj)))
        model = _without_module_prefix(model)
        try:  # which file, as every other refusal here says
            fmt = _detect_format(model)
            entries, skipped = _backbone_entries(model, fmt)
            stored = _check_entries(entries)
            arch = infer_arch(entries)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        if fmt == "torchvision":
            arch["stride_in_1x1"] = False
            inp = TORCHVISION_INPUT
        else:
            # Detectron2's MSRA R-50/101 put the stride in the 1x1 conv; its ResNeXt configs
            # (X-101-32x8d, from torch-style weights) set STRIDE_IN_1X1 False and a real pixel std.
            arch["stride_in_1x1"] = arch["num_groups"] == 1
            inp = DETECTRON2_INPUT if arch["num_groups"] == 1 else DETECTRON2_X101_INPUT
    try:
        arch = dict(check_arch(arch))
        _check_matches(_expected_shapes(arch), entries)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    if stored > size:  # each tensor's data is stored once: views of one another's are not
        raise ValueError(
            f"{path}: its backbone tensors hold {stored} bytes, more than the {size} bytes the "
            "file stores (tensors sharing their data?): refused"
        )
    state = {k: _to_tensor(v) for k, v in entries.items()}
    _check_finite(path, state)
    _check_running_var(path, state)
    return Checkpoint(state, fmt, arch, inp, skipped)


def read_registry_checkpoint(path: str | Path, spec: WeightsSpec) -> Checkpoint:
    """``read_checkpoint`` of the file of the registry entry ``spec`` (cached or just
    downloaded), refused where it is not that entry's: it must be of ``spec.format`` (a
    torchvision file loaded with a Detectron2 entry's BGR input and stride placement is a wrong
    model), and its backbone must have the names and shapes of ``spec.arch``, which it is built
    with (a file of another architecture cached under
    the name would fail only there, not saying which file). The digest vouches for an entry with
    a published sha256; this check is what the others have.

    Raises:
        FileNotFoundError, ValueError: as ``read_checkpoint``.
        WrongCheckpointError: a checkpoint of another format or architecture, naming the file
            and both.
    """
    ckpt = read_checkpoint(path)
    if ckpt.format != spec.format:  # loaded, it would get the entry's input, not its own
        wrong = (
            ""
            if (ckpt.input, ckpt.arch) == (spec.input, dict(spec.arch))
            else " (its channel order, pixel mean and strides would be wrong)"
        )  # (an fpncli file may record the entry's own: still not the published checkpoint)
        raise WrongCheckpointError(
            f"{path}: a checkpoint of format {ckpt.format}, where {spec.name} is of format "
            f"{spec.format}{wrong}: the file of another checkpoint"
        )
    # the depth and groups the shapes show (stride_in_1x1 does not show in them)
    shown = ("depth", "num_groups", "width_per_group")
    defaults = {"depth": 50, "num_groups": 1, "width_per_group": 64}
    if any(ckpt.arch[k] != spec.arch.get(k, defaults[k]) for k in shown):
        raise WrongCheckpointError(
            f"{path}: an {_arch_name(ckpt.arch)} backbone, where {spec.name} is an "
            f"{_arch_name({**defaults, **spec.arch})}: the file of another checkpoint"
        )
    try:
        _check_matches(_expected_shapes(dict(spec.arch)), ckpt.state_dict)
    except ValueError as e:
        raise WrongCheckpointError(f"{path}: {e}") from None
    return ckpt


def check_registry_file(path: Path, spec: WeightsSpec) -> None:
    """What a file must pass to be accepted as ``spec``'s checkpoint (a download before it is
    renamed into place, a file placed by hand before its sha256 is recorded): read safely as
    ``spec``'s (``read_registry_checkpoint``) and loaded strictly into ``spec.arch``'s backbone.

    Raises:
        ValueError, RuntimeError, OSError: naming what is wrong.
    """
    build_backbone(dict(spec.arch), read_registry_checkpoint(path, spec).state_dict)


def _arch_name(arch: dict) -> str:
    """``R-50``, ``R-101``, ``X-101 32x8d``: an architecture as Detectron2's configs name it."""
    depth, groups, width = arch["depth"], arch["num_groups"], arch["width_per_group"]
    if groups == 1 and width == 64:
        return f"R-{depth}"
    return f"{'X' if groups > 1 else 'R'}-{depth} {groups}x{width}d"


def _check_matches(expected: dict[str, torch.Size], state_dict: dict[str, torch.Tensor]) -> None:
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
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if misshaped:
        problems.append(f"mis-shaped keys: {_listing(misshaped)}")
    if problems:
        raise ValueError("checkpoint does not match the backbone: " + "; ".join(problems))


def load_state_dict_strict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load strictly; missing, unexpected and mis-shaped keys raise one ValueError listing them."""
    _check_matches({k: v.shape for k, v in model.state_dict().items()}, state_dict)
    model.load_state_dict(state_dict, strict=True)


def build_backbone(arch: dict, state_dict: dict[str, torch.Tensor]) -> FPN:
    """``build_resnet_fpn_backbone(**arch)`` with ``state_dict`` loaded strictly. The arch is
    checked and the state dict's names and shapes compared with it (on the meta device, where
    nothing is allocated) before the model is allocated: a small file cannot make it build a
    large model only to fail with "missing keys"."""
    _check_matches(_expected_shapes(arch), state_dict)
    model = new_backbone(arch)
    model.load_state_dict(state_dict, strict=True)
    return model


def _expected_shapes(arch: dict) -> dict[str, torch.Size]:
    """The names and shapes of ``build_resnet_fpn_backbone(**arch)``'s state dict, after
    ``check_arch``, from a model built on the meta device (where nothing is allocated)."""
    check_arch(arch)
    with torch.device("meta"):
        return {k: v.shape for k, v in build_resnet_fpn_backbone(**arch).state_dict().items()}


def new_backbone(arch: dict) -> FPN:
    """``build_resnet_fpn_backbone(**arch)`` for weights to be loaded into: its default init,
    which they overwrite, draws from a forked RNG, so the caller's torch RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        return build_resnet_fpn_backbone(**arch)


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
        _check_matches(_expected_shapes(arch), state)
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
