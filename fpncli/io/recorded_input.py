"""The input file an extraction folder's manifest records, told apart from a job's own file.

A folder of ``-o`` holds the outputs of one input file, whose real path its manifest records
(``input.real_path``). The plan (``run.plan.plan_pending``) refuses a run whose folders hold
the complete outputs of other files, the writer (``io.image_writer``) checks it again with the
folder locked (another run into the same ``-o`` may have written it since), and the plan names
the folders an input of the run left behind when its folder was renamed (``run.leftovers``,
with ``same_input``): all tell "the same file" the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

from .messages import quote_name

__all__ = ["recorded_input", "other_input", "same_input", "other_input_text"]


def recorded_input(manifest: dict) -> str | None:
    """The real path of the input file ``manifest`` records; None where it records none (an
    earlier version's manifest, or a forged one)."""
    recorded = manifest.get("input")
    real = recorded.get("real_path") if isinstance(recorded, dict) else None
    return real if isinstance(real, str) and real else None


def _compared(manifest: dict, path: str | Path) -> tuple[str | None, bool | None]:
    """The real path ``manifest`` records, and whether it is ``path``'s own file (its real
    path, or the same file through another path: ``os.path.samefile``): None where none is
    recorded, or it is gone (or a path no file can have)."""
    real = recorded_input(manifest)
    if real is None:
        return None, None
    try:
        return real, real == os.path.realpath(path) or os.path.samefile(real, path)
    except (OSError, ValueError):
        return real, None


def other_input(manifest: dict, path: str | Path) -> str | None:
    """The input file ``manifest`` records (its real path) where it is another file than
    ``path`` that is still there, else None: the same file (which may have changed since; or
    reached by another path, as a hard link or a bind mount gives it), none recorded, or none
    there any more (the photos moved, or the run was made in a container that mounted them
    elsewhere: its outputs are redone)."""
    real, same = _compared(manifest, path)
    return real if same is False else None


def same_input(manifest: dict, path: str | Path) -> bool:
    """Whether ``manifest`` records ``path``'s own file (its real path, or the same file
    through another path: ``os.path.samefile``), which may have changed since."""
    return _compared(manifest, path)[1] is True


def other_input_text(folder: str | Path, made_from: str, path: str | Path) -> str:
    """``OUT/a holds the outputs of another file, X, not of Y``: the words of a refusal."""
    return (
        f"{quote_name(str(folder))} holds the outputs of another file, {quote_name(made_from)}, "
        f"not of {quote_name(str(path))}"
    )
