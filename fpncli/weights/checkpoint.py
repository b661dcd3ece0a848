"""Reading checkpoint files safely: a backbone's weights as float32 tensors, checked.

Weights files are data, never code: Detectron2 ``.pkl`` files go through an unpickler that can
rebuild numpy arrays and plain containers and nothing else (``pickled``), and ``.pth`` files
through ``torch.load(..., weights_only=True)`` (``safeload``). Either way a file that asks for
anything else (say ``os.system`` through ``__reduce__``) is refused before any of it runs.

``layouts`` tells a file's layout (Detectron2, torchvision or fpncli's own) and names its
backbone entries as Detectron2 does; ``arch`` checks them against the architecture and loads them
strictly. Here each entry must be a dense real-valued array with all its elements stored before
anything is converted, its values finite and its BatchNorm variances not negative.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..io.messages import quote_name
from .arch import arch_name, build_backbone, check_arch, check_matches, expected_shapes, infer_arch
from .cache import WrongCheckpointError
from .layouts import (
    FPNCLI_FORMAT_VERSION,
    backbone_entries,
    detect_format,
    fpncli_input,
    without_module_prefix,
)
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
    "safe_unpickle",
]


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
        inp = fpncli_input(path, obj["input"])
        fmt, arch, skipped = "fpncli", obj["arch"], 0
    else:
        model = _check_model_entry(path, obj.get("model", obj.get("state_dict", obj)))
        model = without_module_prefix(model)
        try:  # which file, as every other refusal here says
            fmt = detect_format(model)
            entries, skipped = backbone_entries(model, fmt)
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
        check_matches(expected_shapes(arch), entries)
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
            f"{path}: an {arch_name(ckpt.arch)} backbone, where {spec.name} is an "
            f"{arch_name({**defaults, **spec.arch})}: the file of another checkpoint"
        )
    try:
        check_matches(expected_shapes(dict(spec.arch)), ckpt.state_dict)
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
