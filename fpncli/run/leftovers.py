"""The folders an earlier run wrote for an input of this run that now goes to another folder.

An input's folder is renamed when another input comes to share its name (``a.jpg`` added
beside ``a.png``: ``a.png``'s outputs go to ``a_png``, no longer to ``a``). The folder it had
is then no job's: no run redoes or removes it, and ``fpncli report`` counts it as an image of
its own. ``renamed_leftovers`` finds those folders, for the run to say so; it never deletes
one (the user may have reasons to keep it, and a run into the same ``-o`` that still names the
input alone writes it).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..io.jobs import Job, fitted_name
from ..io.manifest import folder_state
from ..io.recorded_input import same_input

__all__ = ["renamed_leftovers"]


def renamed_leftovers(jobs: list[Job]) -> list[tuple[Path, Job]]:
    """``(folder, job)`` for each folder that holds the complete outputs of ``job``'s own input
    file (``recorded_input.same_input``: also through a hard link) under a name ``job`` would
    have had but for a renaming (``io.jobs.plan_jobs``: ``a``, or ``a_png`` for ``a_png_2``),
    and that is no folder of ``jobs`` (the whole run's: a folder another job goes to is redone
    for it). Only the jobs whose folder was renamed are looked at, and only those two names
    beside their folder: no walk of the output tree. A symlink is never one."""
    renamed = [job for job in jobs if job.folder.name not in _names(job)[:1]]
    if not renamed:
        return []
    taken = {_fold(job.folder) for job in jobs}
    read: dict[str, tuple[bool, dict | None]] = {}  # a folder two jobs may have had: read once
    found: list[tuple[Path, Job]] = []
    for job in renamed:
        for name in _names(job):
            folder = job.folder.parent / name
            key = _fold(folder)
            if key in taken:
                continue
            if key not in read:
                read[key] = (False, None) if os.path.islink(folder) else folder_state(folder)
            complete, manifest = read[key]
            if complete and same_input(manifest, job.path):
                found.append((folder, job))
                taken.add(key)
    return found


def _names(job: Job) -> list[str]:
    """The names ``plan_jobs`` gives ``job``'s input before any ``_2``: its stem, then its stem
    with its extension (``a``, ``a_png``); none for the stems ``.`` and ``..``, which would be
    the folder above."""
    path = Path(job.path)
    if path.stem in (".", ".."):
        return []
    names = [fitted_name(path.stem)]
    if path.suffix:
        names.append(fitted_name(f"{path.stem}_{path.suffix.lstrip('.').lower()}"))
    return names


def _fold(folder: Path) -> str:
    """As ``plan_jobs`` compares folders: case-folded (one folder on a case-insensitive file
    system), made absolute."""
    return os.path.abspath(folder).casefold()
