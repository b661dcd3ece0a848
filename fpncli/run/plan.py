"""What a run will do, decided before it starts: which jobs are pending (their folders not yet
complete with the same input, weights and settings), which of those replace a complete
extraction made with other settings, and whether their estimated output fits on the disk."""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..io.canvas import canvas_for
from ..io.exif import header_orientation, upright_size
from ..io.jobs import Job
from ..io.manifest import folder_state
from ..io.markers import linked_folder
from ..io.outputs import OutputOptions, estimate_bytes_per_image
from ..io.pillow_open import DEFAULT_MAX_PIXELS, open_image
from ..io.preprocess import check_resized_size, resized_shape
from ..io.recorded_input import other_input, other_input_text
from ..io.run_keys import changed_settings, legacy_run_key
from .steps import RunOptions, job_run_key

__all__ = [
    "InsufficientDiskError",
    "OtherFilesError",
    "Replaced",
    "RunInputs",
    "estimate_run_bytes",
    "estimate_run_volume",
    "pending_jobs",
    "plan_pending",
    "check_disk_space",
]


class InsufficientDiskError(RuntimeError):
    """The output disk has less free space than the run is estimated to write."""


class OtherFilesError(ValueError):
    """Folders of this run hold the complete outputs of other input files (``photos/2024``
    and then ``photos/2025`` into one ``-o``, both with ``IMG_0001.png``)."""


def estimate_run_bytes(jobs: list[Job], options: OutputOptions, sample: int = 32, *,
                       max_pixels: int | None = DEFAULT_MAX_PIXELS) -> int:  # fmt: skip
    """Estimate the bytes a run will write from the header sizes of a spread-out sample: the
    largest sampled image's upper estimate (``estimate_bytes_per_image``) for every image the
    run will write, as many of ``jobs`` as the sample's share it does not refuse
    (``estimate_run_volume``)."""
    per_image, images = estimate_run_volume(jobs, options, sample, max_pixels=max_pixels)
    return math.ceil(per_image * images)


def estimate_run_volume(
    jobs: list[Job],
    options: OutputOptions,
    sample: int = 32,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> tuple[int, float]:
    """``(bytes per image, images)``: the upper estimate of one image the run writes (the
    largest of a spread-out sample's, from their header sizes) and how many of ``jobs`` it
    will write (all of them scaled by the share of the sample it does not refuse).

    A sampled image the run will refuse counts nothing: over ``max_pixels`` (the run's
    ``--max-pixels``, None: no limit) as it is or once resized, resized to nothing, or too
    large for a fixed canvas. One whose orientation the header does not tell (a PNG whose EXIF
    may follow its pixels, ``header_orientation``) counts the larger of both ways round
    (refused only if both are). Where no sampled image's header can be read, every image counts
    as the largest the options let through (``_unsized_image_bytes``)."""
    if not jobs:
        return 0, 0.0
    step = max(1, len(jobs) // sample)
    sizes = []
    for job in jobs[::step][:sample]:
        try:  # a header read; whatever goes wrong here is reported when the image is loaded
            with open_image(job.path, max_pixels=2**62) as im:  # no bomb warning: a header
                orientation = header_orientation(im)
                turns = (1, 6) if orientation is None else (orientation,)
                shapes = {upright_size(im, turn) for turn in turns}
        except Exception:
            continue
        photo = os.path.basename(job.path)
        sizes.append(max(_image_bytes(h, w, options, photo, max_pixels) for w, h in shapes))
    if not sizes:
        return _unsized_image_bytes(options), float(len(jobs))
    # the largest is the margin for each image; a refused one (0) writes nothing, so the run
    # writes as many images as the sample's share it lets through
    written = sum(1 for size in sizes if size)
    return max(sizes), len(jobs) * written / len(sizes)


def _unsized_image_bytes(options: OutputOptions) -> int:
    """The estimate for an image whose header gave no size: one the resize makes the largest it
    makes, ``min_size`` x ``max_size`` (either way round), or 800x1333 without the resize (a
    photo of the default size); a fixed canvas that holds neither is what every image is padded
    to."""
    side = (options.min_size, options.max_size) if options.resize else (800, 1333)
    sizes = [_image_bytes(*shape, options, "image") for shape in (side, side[::-1])]
    if any(sizes):  # (0: a canvas it does not fit)
        return max(sizes)
    canvas = canvas_for(1, 1, options.canvas, min_size=options.min_size,
                        max_size=options.max_size)  # fmt: skip
    return estimate_bytes_per_image(*canvas, options)


def _image_bytes(height: int, width: int, options: OutputOptions, photo: str,
                 max_pixels: int | None = None) -> int:  # fmt: skip
    """``estimate_bytes_per_image`` of a photo of ``height`` x ``width``; 0 for one the run
    refuses (``load_image`` and ``prepare_image``'s checks): over ``max_pixels`` before or
    after the resize, resized to nothing, or larger than a fixed canvas."""
    if max_pixels is not None and height * width > max_pixels:
        return 0
    try:
        check_resized_size(height, width, options.min_size, options.max_size, options.resize,
                           max_pixels)  # fmt: skip
    except ValueError:
        return 0
    resized = (height, width)
    if options.resize:
        resized = resized_shape(height, width, options.min_size, options.max_size)
    if min(resized) < 1:
        return 0
    padded = (math.ceil(resized[0] / 32) * 32, math.ceil(resized[1] / 32) * 32)
    if options.canvas is not None:
        try:
            padded = canvas_for(*resized, options.canvas, min_size=options.min_size,
                                max_size=options.max_size)  # fmt: skip
        except ValueError:
            return 0
    return estimate_bytes_per_image(*padded, options, resized=resized, original=(height, width),
                                    photo=photo)  # fmt: skip


def _free_bytes(folder: Path) -> int:
    """The free space of the disk ``folder`` is (to be) made on: of the nearest folder at or
    above it that can be looked up; not yet made, or a path too long to look up (ENAMETOOLONG:
    that image fails on its own when written, not the whole run here)."""
    probe = folder.absolute()
    while True:
        try:
            return shutil.disk_usage(probe).free
        except OSError:
            if probe == probe.parent:  # not even "/"
                raise
            probe = probe.parent


def _state(job: Job, options: RunOptions, weights: dict) -> tuple[bool, dict | None, str | None]:
    """Whether ``job``'s folder is complete with the same input, weights and settings; the
    complete manifest read for it (``folder_state``); and the job's run key (None: no input).

    A folder reached through a symlinked folder below the run's -o (``linked_folder``) is
    pending, its manifest unread: what is there is another folder's, and the image fails when it
    is written, with a line naming the link (not a refusal of the whole run, nor "complete")."""
    key = job_run_key(job, options, weights)
    if key is None:
        return False, None, None
    if linked_folder(job.folder, options.root) is not None:
        return False, None, key
    complete, manifest = folder_state(job.folder, key)
    if not complete and manifest is not None and manifest.get("run_key") not in (None, key):
        # made by a version that hashed the options that change nothing as given (--channel
        # with --reduce mean): the same extraction, its own key the one to match
        try:
            legacy = legacy_run_key(job.path, options.output, weights, options.precision,
                                    manifest)  # fmt: skip
        except OSError:
            legacy = None
        if legacy is not None and legacy == manifest.get("run_key"):
            complete, manifest = folder_state(job.folder, legacy)
    return complete, manifest, key


def _complete(job: Job, options: RunOptions, weights: dict) -> bool:
    return _state(job, options, weights)[0]


def pending_jobs(jobs: list[Job], options: RunOptions, weights: dict) -> list[Job]:
    """The jobs whose folder is not complete with the same input, weights and settings."""
    return plan_pending(jobs, options, weights)[0]


@dataclass(frozen=True)
class Replaced:
    """The pending jobs whose folder holds a complete extraction made with other settings (it
    is redone, and so replaced): how many, and which settings differ (as extract's options)."""

    count: int = 0
    settings: tuple[str, ...] = ()


class RunInputs:
    """The input files of a whole run: every job's (``jobs``, before ``--shard`` or a worker's
    shard took a part), or their identities as another process read them (``identities``).
    ``path in inputs`` compares identities (``st_dev``, ``st_ino``: the same file through
    another path, as a hard link or bind mount gives it), read at the first ask, so a run that
    meets no other file's outputs stats none of its inputs for it."""

    def __init__(self, jobs: Iterable[Job] = (), identities: frozenset | None = None) -> None:
        self._jobs, self.identities = jobs, identities

    def __contains__(self, path: str | Path) -> bool:
        if self.identities is None:
            self.identities = frozenset(_identity(job.path) for job in self._jobs) - {None}
        found = _identity(path)
        return found is not None and found in self.identities


def _identity(path: str | Path) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except (OSError, ValueError):  # not there (or a path no file can have): no file of the run
        return None
    return stat.st_dev, stat.st_ino


def plan_pending(jobs: list[Job], options: RunOptions, weights: dict,
                 run_inputs: RunInputs | None = None) -> tuple[list[Job], Replaced]:  # fmt: skip
    """``pending_jobs``, and what they replace: the folders whose complete manifest records
    other weights, precision or output options (``changed_settings``), told from the manifest
    resume reads anyway. A folder without a complete manifest (a killed run's), or whose input
    file alone changed (the same file, edited), replaces nothing worth saying. With
    ``overwrite``, every job, and no manifest read (redoing everything is what was asked).

    ``run_inputs``: the input files of the whole run ``jobs`` are part of (default: ``jobs``'
    own). A folder holding the outputs of one of them is redone, not refused: that file's
    outputs are redone in its own folder by this run (the roots given in another order, a
    sibling ``a.jpg`` beside ``a.png`` that renamed both folders), so nothing is lost.

    Raises:
        OtherFilesError: a folder's complete manifest records another input file (its
            ``real_path``; a manifest without one, an earlier version's, counts as this job's
            file), one not in ``run_inputs``: it is never replaced silently, as ``--format
            wds`` never gives a key to a second file.
    """
    if options.overwrite:
        return list(jobs), Replaced()
    if run_inputs is None:
        run_inputs = RunInputs(jobs)
    todo, count, settings, others = [], 0, {}, []
    for job in jobs:
        complete, manifest, key = _state(job, options, weights)
        if complete:
            continue
        todo.append(job)
        if manifest is not None and manifest.get("run_key") != key:
            made_from = other_input(manifest, job.path)
            if made_from is not None and made_from not in run_inputs:
                others.append((job, made_from))
                continue
            changed = changed_settings(manifest, options.output, weights, options.precision)
            count += bool(changed)
            settings.update(dict.fromkeys(changed))
    if others:
        (job, made_from), more = others[0], len(others) - 1
        also = f" (and {more} more folders of this run hold other files' outputs)" if more else ""
        raise OtherFilesError(
            f"{other_input_text(job.folder, made_from, job.path)}{also}: give another -o, or "
            "--overwrite to redo the whole run"
        )
    return todo, Replaced(count, tuple(settings))


def check_disk_space(todo: list[Job], output: OutputOptions, *,
                     max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:  # fmt: skip
    """Raise InsufficientDiskError when the estimated output (``estimate_run_bytes``, with the
    run's ``max_pixels``) exceeds the free space."""
    if not todo:
        return
    common = Path(os.path.commonpath([str(j.folder.absolute()) for j in todo[:1000]]))
    need, free = estimate_run_bytes(todo, output, max_pixels=max_pixels), _free_bytes(common)
    if need > free:
        raise InsufficientDiskError(
            f"this run would write about {need / 1e9:.2f} GB ({len(todo)} images) but only "
            f"{free / 1e9:.2f} GB are free under {common}; free space, "
            f"{_smaller_run(output)}pass --force"
        )


def _smaller_run(output: OutputOptions) -> str:
    """The options that would make this run write less, as advice ("" where none would): only
    those it has not used already (a run with --no-npy is not told to pass it)."""
    cuts = [f"--no-{kind}" for kind, on in (("heatmaps", output.save_heatmaps),
                                            ("overview", output.save_overview)) if on]  # fmt: skip
    if len(output.levels) > 1:
        cuts.insert(0, "--levels")
    if output.overlay:
        cuts.append("no --overlay")
    if output.save_npy:
        cuts += ["--dtype float16"] if output.dtype == "float32" else []
        cuts.append("--no-npy")
    return f"write less ({', '.join(cuts)}), or " if cuts else "or "
