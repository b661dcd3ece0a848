"""The library's front door: build or load the backbone, turn images into ``{"p2": ..., ...}``.

>>> import fpncli
>>> model = fpncli.load_backbone("random")            # or a registry name, or a file path
>>> features = fpncli.extract_features("samples/chelsea.png", model)
>>> features["p2"].shape
torch.Size([1, 256, 200, 304])

It also holds the device and precision checks and contexts that the CLI's runs use too
(``resolve_device``, ``check_precision``, ``autocast_context``, ``fp32_strict``); TF32's save and
restore behind ``fp32_strict`` is ``model.tf32``'s.
"""

from __future__ import annotations

import functools
import logging
import operator
import os
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .io.canvas import check_canvas, parse_canvas
from .io.image_load import LoadedImage, convert_pillow_image, load_image
from .io.option_names import API_NAMES
from .io.pillow_open import DEFAULT_MAX_PIXELS, check_max_pixels
from .io.preprocess import Prepared, check_sizes, resize_for_model
from .model.cpu_kernels import available as cpu_kernel_support
from .model.cpu_kernels import use_cpu_kernels
from .model.fpn import FPN, check_stages
from .model.layers import fold_frozen_batchnorm
from .model.normalize import normalize_batch
from .model.tf32 import TF32_OFF
from .weights.arch import build_backbone, load_state_dict_strict, new_backbone, random_state_dict
from .weights.cache import check_cached, record_first_use, sha256_file, too_large
from .weights.checkpoint import check_registry_file, read_checkpoint, read_registry_checkpoint
from .weights.hub import LoggedProgress, resolve_weights
from .weights.registry import DEFAULT_WEIGHTS, DETECTRON2_INPUT, InputFormat

__all__ = [
    "WeightsInfo",
    "Extraction",
    "load_backbone",
    "resolve_device",
    "check_precision",
    "fp32_strict",
    "autocast_context",
    "model_input",
    "run_backbone",
    "extract",
    "extract_features",
]

log = logging.getLogger(__name__)
PRECISIONS = ("fp32", "fp16", "bf16")
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class WeightsInfo:
    """What the loaded weights are, for manifests and titles."""

    name: str  # registry name, file path, or "random"
    path: str | None
    sha256: str | None
    format: str  # "detectron2", "torchvision", "fpncli" or "random"
    input: InputFormat
    arch: dict
    random: bool
    seed: int | None = None


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu``, ``cuda``, ``cuda:N`` (a name or a
    ``torch.device``) checked against this machine: any other device is a ValueError, a value
    that is neither a TypeError."""
    dev = _parse_device(device)
    if device == "auto":
        return dev
    device = device if isinstance(device, str) else str(device)  # named as a str would be
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but CUDA is not available here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{device!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise ValueError(f"unsupported device {device!r}: use auto, cpu, cuda or cuda:N")
    return dev


def _parse_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``, ``auto`` resolved as ``resolve_device`` does, without
    checking that this machine has it.

    Raises:
        TypeError: neither a str nor a ``torch.device``.
        ValueError: a name torch knows no device by.
    """
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise TypeError(
            f"device must be a str or a torch.device (auto, cpu, cuda or cuda:N), got "
            f"{type(device).__name__}"
        )
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from None


@functools.lru_cache(maxsize=1)
def _cpu_has_fast_bf16() -> bool:
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in ("AVX512", "AVX512_BF16", "AMX"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def check_precision(precision: str, device: str | torch.device) -> None:
    """Refuse precisions that would be wrong or very slow on ``device`` (a name, ``auto`` too,
    or a ``torch.device``), saying why."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    device = _parse_device(device)
    if device.type == "cpu" and precision == "fp16":
        other = "fp32 (or bf16, fast on this CPU)" if _cpu_has_fast_bf16() else "fp32"
        raise ValueError(f"fp16 on the CPU is slower than fp32: use {other}")
    if device.type == "cpu" and precision == "bf16" and not _cpu_has_fast_bf16():
        raise ValueError(
            "this CPU has no fast bf16 (no AVX512-BF16/AMX); bf16 would run several times "
            "slower than fp32: use fp32"
        )
    if device.type == "cuda" and precision == "bf16":
        major, minor = torch.cuda.get_device_capability(device)
        if major < 8:  # cuDNN has no bf16 convolutions there: every batch would fail
            raise ValueError(
                f"this GPU (compute capability {major}.{minor}) has no bf16 (it needs 8.0, Ampere "
                "or newer): use --precision fp16 or fp32"
            )


@contextmanager
def fp32_strict():
    """True fp32 on CUDA for the duration: TF32 off for cuDNN convolutions and matmuls, and the
    user's settings restored afterwards (the library never changes global torch state for
    good). These settings are process-wide: the first of overlapping holders (threads running
    models at once) saves them and turns TF32 off, and the last to leave restores them, so one
    leaving never turns TF32 back on under another, nor leaves the user's settings off."""
    with TF32_OFF.held():
        yield


def autocast_context(device: str | torch.device, precision: str):
    """Autocast on ``device`` (a name, ``auto`` too, or a ``torch.device``) for fp16/bf16; for
    fp32, autocast off and on CUDA TF32 off too (inside the context only), so fp32 is true fp32
    as Detectron2's parity needs, also inside a caller's ``torch.autocast`` (which is in force
    again after it). An unknown precision raises ValueError."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    device = _parse_device(device)
    if precision == "fp32":
        return _true_fp32(device)
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


@contextmanager
def _true_fp32(device: torch.device):
    with torch.autocast(device.type, enabled=False):
        with fp32_strict() if device.type == "cuda" else nullcontext():
            yield


def load_backbone(
    weights: str | os.PathLike = DEFAULT_WEIGHTS,
    *,
    device: str | torch.device = "cpu",
    fold_bn: bool = True,
    channels_last: bool | None = None,
    cpu_kernels: bool | None = None,
    seed: int = 0,
    download: bool = True,
    download_progress: Callable[[str, str, int | None], LoggedProgress] | None = LoggedProgress,
) -> FPN:
    """Build the backbone and load weights into it, strictly, ready for inference.

    Args:
        weights: a registry name (downloaded once if missing), a checkpoint path, or "random"
            for a seeded untrained network; a ``Path`` is always a file (``Path("random")`` is
            no untrained network).
        device: where to put it ("cpu", "cuda", "cuda:N", "auto", or a ``torch.device``), checked
            by ``resolve_device``.
        fold_bn: fold FrozenBN into the convolutions (same outputs within float rounding, faster).
        channels_last: use the channels-last memory format (faster oneDNN and cuDNN
            convolutions); None: unless the CPU kernels are used (they want NCHW).
        cpu_kernels: on the CPU, run the 3x3 convolutions with NNPACK's Winograd kernels and
            the 1x1 ones as one GEMM each (``model/cpu_kernels.py``: about 1.25x faster in
            float32, same error against float64); None: where NNPACK works and the model is
            NCHW, folded and on the CPU.
        seed: the seed for ``weights="random"``, a whole number from 0 to 2**32 - 1 (else a
            TypeError or ValueError naming it).
        download: allow downloading a missing registry checkpoint.
        download_progress: what shows a download's progress (``weights.hub.download``'s
            ``progress``): by default INFO lines of the ``fpncli`` logger
            (``logging.basicConfig(level=logging.INFO)`` shows them); None: nothing.

    Returns:
        An ``FPN`` in eval mode with ``weights_info`` (a ``WeightsInfo``) set.
    """
    # before anything is read or downloaded; "auto" is no torch device, "cuda:N" is checked
    # against the GPUs
    device = resolve_device(device)
    seed = _check_seed(seed)
    if weights == "random":
        arch, input_format = {"depth": 50, "stride_in_1x1": True}, DETECTRON2_INPUT
        model = new_backbone(arch)
        load_state_dict_strict(model, random_state_dict(model, seed))
        info = WeightsInfo("random", None, None, "random", input_format, arch, True, seed)
    else:
        # a downloaded file must load strictly into its registry entry's architecture
        path, spec = resolve_weights(weights, download_missing=download, check=check_registry_file,
                                     progress=download_progress)  # fmt: skip
        if spec is not None:  # the registry's file: as downloaded, or the published one
            # a 10 GB file is refused before it is hashed: damaged, as weights verify calls it
            if (why := too_large(path.stat().st_size)) is not None:
                raise _cached_file_error(ValueError(f"damaged: {why}"), path, spec.name)
            digest = sha256_file(path)
            check_cached(spec, path, digest)
            arch = dict(spec.arch)
            try:
                ckpt = read_registry_checkpoint(path, spec)
                model = build_backbone(arch, ckpt.state_dict)
            except ValueError as e:  # the cached file is what is wrong: it must be replaced
                raise _cached_file_error(e, path, spec.name) from None
        else:  # a file of the user's: refused (size first) before hashing it if no checkpoint
            ckpt = read_checkpoint(path)
            digest = sha256_file(path)  # for the manifest
            arch = ckpt.arch
            model = build_backbone(arch, ckpt.state_dict)
        input_format = spec.input if spec is not None else ckpt.input
        if spec is not None:  # placed by hand and now loaded: its digest recorded
            record_first_use(path, digest)
        log.info("loaded %s (%s, %d non-backbone keys skipped)", path, ckpt.format, ckpt.skipped)
        info = WeightsInfo(
            spec.name if spec else str(path), str(path), digest, ckpt.format, input_format, arch,
            False,
        )  # fmt: skip
    if fold_bn:
        fold_frozen_batchnorm(model)
    model = model.eval().requires_grad_(False).to(device)
    on_cpu = next(model.parameters()).device.type == "cpu"
    if cpu_kernels is None:
        cpu_kernels = on_cpu and fold_bn and not channels_last and cpu_kernel_support()
    elif cpu_kernels and not cpu_kernel_support():
        raise RuntimeError("the fast CPU kernels need NNPACK, which does not initialize here")
    if channels_last is None:
        channels_last = not cpu_kernels
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    use_cpu_kernels(model, cpu_kernels)
    model.weights_info = info
    return model


def _check_seed(seed: int) -> int:
    """``seed`` checked: a whole number (a numpy integer too) that numpy takes, as an ``int``
    (numpy's own errors name no argument: "Cannot cast scalar from dtype('<U1')")."""
    if isinstance(seed, bool) or not hasattr(type(seed), "__index__"):
        raise TypeError(f"seed must be a whole number, got {type(seed).__name__}")
    seed = operator.index(seed)
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be between 0 and 2**32 - 1, got {seed}")
    return seed


def _check_model(model: object) -> None:
    """Refuse what is no model (a weights name where the model goes: ``"random"``)."""
    if not isinstance(model, torch.nn.Module):
        load = (f": load it first, model = fpncli.load_backbone({str(model)!r})"
                if isinstance(model, (str, os.PathLike)) else "")  # fmt: skip
        raise TypeError(
            f"model must be a backbone from fpncli.load_backbone, got {type(model).__name__}{load}"
        )


def _cached_file_error(error: ValueError, path: Path, name: str) -> ValueError:
    """A cached registry file that does not load, as one line that names the file (a strict
    load's message does not) and says what replaces it; of ``error``'s type."""
    text = str(error)
    if not text.startswith(f"{path}:"):
        text = f"{path}: {text}"
    return type(error)(f"{text}; delete it and run 'fpncli weights download {name}'")


def run_backbone(
    model: FPN, batch: torch.Tensor, *, precision: str = "fp32",
    keep_bottom_up: tuple[str, ...] | None = None,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """Run ``model`` on a ``(B, 3, H, W)`` float32 batch (already normalized and padded), with
    the bottom-up outputs named in ``keep_bottom_up`` (``FPN.forward``: ``stem``, ``res2`` ...
    ``res5``, or one as a string; None: the model's own) beside P2-P6.

    Returns the levels on the model's device, in float32 for fp32 and in the autocast dtype (or
    the model's own dtype, for a model converted to fp16/bf16) otherwise, whatever
    ``torch.autocast`` the caller is in: ordinary tensors
    without autograd history (run under ``torch.no_grad``), which may be changed in place and
    fed to a module being trained (a probe on the features). Called inside
    ``torch.inference_mode`` (the pipeline, which only reduces and copies them), they are
    inference tensors, which allow neither outside it. (On a CPU, 1 thread, the forward pass
    took the same CPU time in both modes, within 0.5%, from 64x96 to 800x1216 inputs, where
    copying inference tensors' levels out would add 33 ms at 800x1216.)

    Raises:
        ValueError: an unknown ``precision``, or one ``check_precision`` refuses on the model's
            device (fp16 on a CPU, ...), as ``extract`` does; a batch neither float32 nor of
            the model's own dtype (a converted model takes both); a name in ``keep_bottom_up``
            that is no stage.
    """
    _check_model(model)
    if keep_bottom_up is not None:  # before anything runs
        keep_bottom_up = check_stages(keep_bottom_up)
    param = next(model.parameters())
    device = param.device
    check_precision(precision, device)
    if batch.dtype not in (torch.float32, param.dtype):  # (else torch's "Input type (double)
        # and bias type (float) should be the same", naming no argument)
        own = f" (or {param.dtype}, the model's)" if param.dtype != torch.float32 else ""
        raise ValueError(
            f"run_backbone takes a float32 batch{own}, normalized and padded as "
            f"fpncli.api.model_input makes it, got {batch.dtype}"
        )
    channels_last = param.is_contiguous(memory_format=torch.channels_last)
    batch = batch.to(device, non_blocking=True)
    context = autocast_context(device, precision)
    if param.dtype != torch.float32:  # converted (once to the run's precision, or by the user):
        batch = batch.to(param.dtype)  # it runs in its own dtype, whatever a caller's autocast
        context = torch.autocast(device.type, enabled=False)
    if channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), context:
        return model(batch, keep_bottom_up=keep_bottom_up)


def model_input(
    pixels: np.ndarray | list[np.ndarray], input_format: InputFormat, device: torch.device,
    *, pad_to: tuple[int, int] | None = None,
) -> torch.Tensor:  # fmt: skip
    """Resized uint8 RGB ``(H, W, 3)`` image(s) -> the normalized, padded float32 batch on
    ``device`` (colour order, normalization and padding run in torch, on the device).

    Raises:
        ValueError: no image, or one that is not an ``(H, W, 3)`` uint8 numpy array (a float
            0..1 image would come out black and int16 values wrap).
    """
    images = [pixels] if isinstance(pixels, np.ndarray) else list(pixels)
    if not images:
        raise ValueError("model_input needs at least one image, got none")
    for p in images:
        if not isinstance(p, np.ndarray):
            raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got {type(p).__name__}")
        if p.dtype != np.uint8 or p.ndim != 3 or p.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got {p.dtype} {p.shape}")
    sizes = [(int(p.shape[0]), int(p.shape[1])) for p in images]
    height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
    staged = np.zeros((len(images), height, width, 3), dtype=np.uint8)
    for i, p in enumerate(images):
        staged[i, : p.shape[0], : p.shape[1]] = p
    return normalize_batch(
        torch.from_numpy(staged).to(device), sizes, color_order=input_format.color_order,
        pixel_mean=input_format.pixel_mean, pixel_std=input_format.pixel_std, pad_to=pad_to,
    )  # fmt: skip


@dataclass
class Extraction:
    """One image through the backbone: the features and how the input was prepared."""

    features: dict[str, torch.Tensor]  # "p2".. -> (1, 256, Hp/S, Wp/S) float32, CPU
    image: LoadedImage
    prepared: Prepared


def extract(
    image: str | os.PathLike | np.ndarray | Image.Image | LoadedImage,
    model: FPN,
    *,
    min_size: int = 800,
    max_size: int = 1333,
    resize: bool = True,
    precision: str = "fp32",
    canvas: str | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Extraction:
    """Read (if a path), prepare and run one image; features come back as CPU float32.

    A path (``~`` expanded) is read with ``load_image`` (EXIF orientation applied). An
    ``np.ndarray`` must be ``(H, W, 3)`` uint8 **RGB** (as from Pillow; flip OpenCV's BGR). A
    Pillow image of any mode is made 8-bit RGB as ``load_image`` does, but taken as it is, as an
    array is: its EXIF orientation is not applied (``ImageOps.exif_transpose`` it first, or pass
    its path). The ``image.rgb`` that comes back is a copy of an array or a Pillow image given,
    which the caller may change afterwards.
    ``canvas`` (``"auto"`` or ``"WxH"``, see ``fpncli.io.canvas``) pads the image to that canvas
    instead of its own size rounded up to 32, as Detectron2's batched inference pads it.
    ``max_pixels`` (``fpncli extract --max-pixels``) refuses a file with more pixels before
    decoding it (a decompression bomb), and any image whose resized, padded size has more;
    None: no limit (Pillow's own bomb check off too, while the file is read).

    Raises:
        ValueError: ``precision`` fp16 on a CPU, or bf16 on a CPU without AVX512-BF16/AMX (the
            same check, and message, as ``fpncli extract --precision``); an image that cannot be
            read, is not ``(H, W, 3)`` uint8 RGB or is over ``max_pixels``; ``max_pixels`` under
            1; not ``0 < min_size <= max_size``.
        TypeError: ``image`` is none of the types above; ``model`` is no model (a weights name:
            load it with ``load_backbone`` first); ``max_pixels`` is neither a whole number nor
            None; ``min_size`` or ``max_size`` is not a whole number.
    """
    # before any image is read
    _check_model(model)
    max_pixels = check_max_pixels(max_pixels, API_NAMES)
    if resize:
        min_size, max_size = check_sizes(min_size, max_size, API_NAMES)
    if isinstance(image, (str, os.PathLike)):  # "~/x.png" is the user's, as for the weights
        image = load_image(Path(image).expanduser(), max_pixels=max_pixels, names=API_NAMES)
    elif isinstance(image, np.ndarray):
        image = LoadedImage(np.array(image, order="C"))  # a copy, as from a Pillow image
    elif isinstance(image, Image.Image):
        image = convert_pillow_image(image)
    elif not isinstance(image, LoadedImage):
        raise TypeError(
            "image must be a file path, an (H, W, 3) uint8 RGB numpy array, a Pillow image or a "
            f"LoadedImage, got {type(image).__name__}"
        )
    # The same refusal as the CLI's: fp16/bf16 on a CPU without fast support would be several
    # times slower than fp32, silently.
    check_precision(precision, next(model.parameters()).device)
    input_format = model.weights_info.input if hasattr(model, "weights_info") else DETECTRON2_INPUT
    canvas = parse_canvas(canvas)
    check_canvas(canvas, min_size=min_size, max_size=max_size, resize=resize,
                 max_pixels=max_pixels, names=API_NAMES)  # fmt: skip
    pixels, prepared = resize_for_model(
        image.rgb, input_format, min_size=min_size, max_size=max_size, resize=resize,
        canvas=canvas, max_pixels=max_pixels, names=API_NAMES,
    )  # fmt: skip
    pad_to = (prepared.padded_height, prepared.padded_width)
    batch = model_input(pixels, input_format, next(model.parameters()).device, pad_to=pad_to)
    features = run_backbone(model, batch, precision=precision)
    features = {k: v.float().cpu().contiguous() for k, v in features.items()}
    return Extraction(features, image, prepared)


def extract_features(
    image: str | os.PathLike | np.ndarray | Image.Image | LoadedImage, model: FPN, **kwargs
) -> dict[str, torch.Tensor]:
    """``{"p2": (1, 256, H/4, W/4), ..., "p6": ...}`` float32 CPU tensors for one image.

    ``image`` and the keyword arguments are those of ``extract`` (``min_size``, ``max_size``,
    ``resize``, ``precision``, ``canvas``, ``max_pixels``).
    """
    return extract(image, model, **kwargs).features
