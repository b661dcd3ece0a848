"""What a run will do, decided before it starts: which jobs are pending (their folders not yet
complete with the same input, weights and settings), and whether their estimated output fits on
the disk."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

from ..io.canvas import canvas_for
from ..io.inputs import Job
from ..io.outputs import OutputOptions, estimate_bytes_per_image, is_complete
from ..io.preprocess import open_image, resized_shape
from .steps import RunOptions, job_run_key

__all__ = [
    "InsufficientDiskError",
    "estimate_run_bytes",
    "pending_jobs",
    "check_disk_space",
]


class InsufficientDiskError(RuntimeError):
    """The output disk has less free space than the run is estimated to write."""


def estimate_run_bytes(jobs: list[Job], options: OutputOptions, sample: int = 32) -> int:
    """Estimate the bytes a run will write from the header sizes of a spread-out sample."""
    if not jobs:
        return 0
    step = max(1, len(jobs) // sample)
    sizes = []
    for job in jobs[::step][:sample]:
        try:  # a header read; whatever goes wrong here is reported when the image is loaded
            with open_image(job.path, max_pixels=2**62) as im:  # no bomb warning: a header
                width, height = im.size
        except Exception:
            continue
        if options.resize:
            height, width = resized_shape(height, width, options.min_size, options.max_size)
        padded = (math.ceil(height / 32) * 32, math.ceil(width / 32) * 32)
        if options.canvas is not None:
            try:
                padded = canvas_for(height, width, options.canvas, min_size=options.min_size,
                                    max_size=options.max_size)  # fmt: skip
            except ValueError:  # reported when the image is decoded
                continue
        sizes.append(estimate_bytes_per_image(*padded, options))
    per_image = max(sizes) if sizes else estimate_bytes_per_image(800, 1344, options)
    return per_image * len(jobs)


def _free_bytes(folder: Path) -> int:
    probe = folder.absolute()
    while not probe.exists():
        probe = probe.parent
    return shutil.disk_usage(probe).free


def _complete(job: Job, options: RunOptions, weights: dict) -> bool:
    key = job_run_key(job, options, weights)
    return key is not None and is_complete(job.folder, key)


def pending_jobs(jobs: list[Job], options: RunOptions, weights: dict) -> list[Job]:
    """The jobs whose folder is not complete with the same input, weights and settings."""
    return [j for j in jobs if options.overwrite or not _complete(j, options, weights)]


def check_disk_space(todo: list[Job], output: OutputOptions) -> None:
    """Raise InsufficientDiskError when the estimated output exceeds the free space."""
    if not todo:
        return
    common = Path(os.path.commonpath([str(j.folder.absolute()) for j in todo[:1000]]))
    need, free = estimate_run_bytes(todo, output), _free_bytes(common)
    if need > free:
        raise InsufficientDiskError(
            f"this run would write about {need / 1e9:.2f} GB ({len(todo)} images) but only "
            f"{free / 1e9:.2f} GB are free under {common}; free space, write fewer levels "
            "(--levels, --dtype float16, --no-npy), or pass --force"
        )
