"""What a run did and reports as it goes: the summary, the progress reports, and the one line
a run that stopped early ends with."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .. import ONCE

__all__ = ["RunSummary", "Progress", "DISK_FULL", "OPEN_FILES", "disk_full_message",
           "device_failed_message", "ONCE", "WarningRelay", "say_relayed", "float16_overflow",
           "stopped_message", "open_files_message"]  # fmt: skip


@dataclass
class RunSummary:
    """What a run did. ``stage_seconds`` sums each stage's time: decode and write in
    thread-seconds over their pools, the device stages (h2d, preprocess, model, reductions, d2h)
    as the device spent them, and ``host``, the feeding thread's time to stage and launch the
    batches (on a GPU, more host than device time means the GPU waits for this thread)."""

    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    bytes_written: int = 0
    aborted: str | None = None  # why the run stopped early (disk full, a failed GPU), if it did
    device_failure: str | None = None  # "cuda:1 failed (reason)" when that stopped it
    last_folder: Path | None = None  # the last folder written, else the last complete one
    #: when ``last_folder`` was written (``time.time``): ``--gpus``/``--processes`` record the
    #: folder their workers wrote last
    last_written_at: float | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)
    batch_size: int = 0  # the batch size in use at the end (smaller after CUDA out of memory)
    left_to_others: int = 0  # of ``skipped``: claimed by another live run (``--format wds``)
    #: (start, end) of the run on the monotonic clock (system-wide on Linux); for ``--gpus``,
    #: from the first worker's start of its run to the last one's end (process starts and
    #: model loads left out)
    span: tuple[float, float] | None = None
    #: ``run_on_devices`` with a warm-up: when the warm workers were let go together (monotonic)
    released: float | None = None
    #: ``--dtype float16``: the images written with values it cannot hold (past +-65504: inf),
    #: and their levels (``float16_overflow``)
    float16_images: int = 0
    float16_levels: int = 0

    @property
    def images_per_s(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def add_float16_overflow(self, levels: int) -> None:
        """Count an image written whose ``levels`` (``float16_overflow``'s) overflowed."""
        self.float16_images += bool(levels)
        self.float16_levels += levels


def float16_overflow(levels: dict, dtype: str) -> int:
    """How many of an image's levels (name -> ``LevelResult``), written with ``dtype``, hold
    non-finite values when that dtype is float16 (0 otherwise): values past its range (+-65504)
    became inf there. A NaN of the network itself counts too (float32 would not mend that one;
    it is rare)."""
    if dtype != "float16":
        return 0
    return sum(1 for level in levels.values() if level.nonfinite)


@dataclass(frozen=True)
class Progress:
    """A progress report: sent after every image that finishes (written or failed)."""

    done: int
    failed: int
    skipped: int
    todo: int  # images this run has to process (excluding skipped)
    elapsed_s: float
    bytes_written: int = 0  # by this run so far (an interrupted run's log records it)
    #: the folder this run completed last (``RunSummary.last_folder``) and when: a
    #: ``--gpus``/``--processes`` run stopped midway records its workers' newest as the latest
    last_folder: Path | None = None
    last_written_at: float | None = None


#: ``RunSummary.aborted`` of a run stopped by Ctrl-C, or by SIGTERM or SIGHUP in the CLI (its log
#: says so; ``report`` shows it)
INTERRUPTED = "interrupted (Ctrl-C, SIGTERM or SIGHUP); the images in progress were not saved"


#: how ``disk_full_message`` begins
DISK_FULL = "disk full"


def disk_full_message(summary: RunSummary) -> str:
    """The one line a run stopped by a full disk ends with."""
    return (
        f"{DISK_FULL}: {summary.done + summary.skipped} of {summary.total} done, rerun the same "
        "command after freeing space"
    )


#: how ``open_files_message`` begins
OPEN_FILES = "too many open files"


def open_files_message(summary: RunSummary) -> str:
    """The one line a run stopped by too many open files (``guard.is_out_of_open_files``) ends
    with: the images not done are left for the rerun."""
    return (
        f"{OPEN_FILES}: {summary.done + summary.skipped} of {summary.total} done, rerun the same "
        "command with a higher limit (ulimit -n 4096, say) or fewer --workers/--writers"
    )


def stopped_message(summary: RunSummary) -> str | None:
    """The one line of a run stopped early (``summary.aborted``), counted again over ``summary``
    as it is now, for a caller that recounts it (over every job of a resumed ``--format wds``
    run): a failed device's, a full disk's and too many open files' lines; any other reason as
    it is."""
    aborted = summary.aborted or ""
    if summary.device_failure is not None:
        return device_failed_message(summary)
    if aborted.startswith(DISK_FULL):
        return disk_full_message(summary)
    if aborted.startswith(OPEN_FILES):
        return open_files_message(summary)
    return summary.aborted


def device_failed_message(summary: RunSummary) -> str:
    """The one line a run stopped by an unusable device ends with."""
    return (
        f"{summary.device_failure}: {summary.done + summary.skipped} of {summary.total} done, "
        "rerun the same command to resume"
    )


class WarningRelay(logging.Handler):
    """On a worker process's ``fpncli`` logger: its warnings go to ``send`` as ``(once key,
    logger name, level, message)``, for the process that started the worker to say
    (``say_relayed``), instead of to the worker's stderr."""

    def __init__(self, send: Callable[[tuple], None]) -> None:
        super().__init__(logging.WARNING)
        self.send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.send((getattr(record, ONCE, None), record.name, record.levelno,
                       record.getMessage()))  # fmt: skip
        except Exception:  # noqa: BLE001 - as logging's own handlers: a bad record is reported
            self.handleError(record)


def say_relayed(relayed: tuple, said: set[str]) -> None:
    """Log a worker's warning (from ``WarningRelay``) here; one said once per run only if its
    key is not in ``said``, the keys this run has said."""
    key, name, level, message = relayed
    if key is not None:
        if key in said:
            return
        said.add(key)
    logging.getLogger(name).log(level, "%s", message)
