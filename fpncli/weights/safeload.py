"""Opening weights files without trusting them: data in, never code, never unbounded memory.

- ``.pkl`` (Detectron2): ``pickled.safe_unpickle``, an unpickler that rebuilds numpy arrays and
  plain containers from the data the file stores, and nothing else.
- ``.pth`` (zip): the zip's declared sizes are checked first (a zip bomb is refused before it is
  inflated), then ``torch.load(..., weights_only=True)``.
- A legacy (non-zip) ``torch.save`` file is "unsupported format", not a confusing type error.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

import torch

from ..io.guard import check_regular_file, open_regular
from .cache import MAX_CHECKPOINT_BYTES, too_large
from .pickled import UnsafeCheckpointError, safe_unpickle

__all__ = [
    "UnsafeCheckpointError",
    "MAX_CHECKPOINT_BYTES",
    "check_file_size",
    "safe_unpickle",
    "is_zip",
    "check_zip_sizes",
    "torch_load_safe",
]


def is_zip(path: Path) -> bool:
    """Whether ``path`` is a whole zip archive (``torch.save``'s format); one that begins as a
    zip but lacks its end (a truncated download) is refused as damaged, where reading it as a
    pickle would take its first byte for an opcode and refuse it as an unsafe file.

    Raises:
        ValueError: ``path`` begins as a zip archive but is not a whole one.
    """
    if zipfile.is_zipfile(path):
        return True
    with open_regular(path, "weights file") as f:
        if f.read(4) == b"PK\x03\x04":
            raise ValueError(
                f"{path}: not a readable .pth checkpoint: a zip archive (torch.save) without "
                "its end; a truncated or damaged file?"
            )
    return False


def check_zip_sizes(path: Path) -> int:
    """Refuse a zip ``.pth`` whose members declare more than a backbone checkpoint can hold, or
    far more than the file's own size (``torch.save`` stores tensors uncompressed, so a zip bomb
    of deflated zeros shows up in its declared sizes before ``torch.load`` inflates it).

    Returns the bytes its members declare (uncompressed).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable .pth checkpoint ({e})") from None
    size = path.stat().st_size
    if declared > MAX_CHECKPOINT_BYTES or declared > 4 * size + (1 << 20):
        raise ValueError(
            f"{path}: refused: its zip members declare {declared / 1e9:.2f} GB uncompressed in a "
            f"{size / 1e6:.1f} MB file (a zip bomb?); a backbone checkpoint stores its tensors "
            "uncompressed"
        )
    return declared


def torch_load_safe(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"{path}: refused: the file asks for more than tensors and plain containers "
            f"(torch.load weights_only=True said: {_refusal_line(str(e))[:200]})"
        ) from None
    except (RuntimeError, EOFError, ValueError) as e:
        raise ValueError(f"{path}: not a readable .pth checkpoint ({str(e)[:200]})") from None


#: The paragraphs of advice torch.load wraps a weights_only refusal in (torch 2.6 to 2.13).
_TORCH_ADVICE = ("Weights only load failed", "Re-running `torch.load`", "Check the documentation",
                 "Please file an issue", "(1) ", "(2) ")  # fmt: skip


def _refusal_line(message: str) -> str:
    """The line of torch.load's weights_only refusal that says what was refused ("Unsupported
    global: GLOBAL os.system was not an allowed global ...", "Trying to load unsupported GLOBAL
    posix.system whose module posix is blocked."), without the advice around it."""
    if (found := re.search(r"WeightsUnpickler error:\s*(\S.*)", message)) is not None:
        said = found[1]
    else:
        lines = [line.strip() for line in message.splitlines() if line.strip()]
        said = next((line for line in lines if not line.startswith(_TORCH_ADVICE)), None)
        if said is None:  # "Weights only load failed. <what>" (torch's hints to import a module)
            said = lines[0].removeprefix("Weights only load failed.") if lines else ""
    return said.split(" Please use `torch.serialization", 1)[0].strip()  # how to allow it


def check_file_size(path: Path) -> int:
    """The size of the weights file ``path``, refused when larger than any detection checkpoint
    (``MAX_CHECKPOINT_BYTES``): checked before the file is read or hashed.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a regular file, or too large.
    """
    size = check_regular_file(path, "weights file").st_size
    if (why := too_large(size)) is not None:  # (in bytes: 4 GiB + 1 byte is "4.3 GB" too)
        raise ValueError(f"{path}: refused: {why}; not a weights file?")
    return size
