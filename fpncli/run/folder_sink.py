"""Where the local engine puts each image with ``--format files``: ``FolderSink`` writes it into its
own folder (``steps.write_result``) and says, just before the image is decoded and again just
before its batch goes to the model, whether another run has completed that folder meanwhile. The
sharded writer (``run.wds.ShardSink``) is the other sink."""

from __future__ import annotations

import os
from pathlib import Path

from ..io.jobs import Job
from ..io.manifest import MANIFEST, is_complete
from ..io.markers import linked_folder
from .plan import RunInputs, _complete
from .steps import Decoded, RunOptions, job_run_key, write_result

__all__ = ["FolderSink"]


class FolderSink:
    """Where the runner puts each image: its own folder (``--format files``). The sharded writer
    (``run.wds.ShardSink``) is the other sink: the same calls, a tar shard instead.

    ``run_inputs``: the input files of the run (``plan.RunInputs``; by default none). A folder
    that holds the complete outputs of another file, one not among them, is not replaced when
    the image is written (``write_result``): another run into the same ``-o`` wrote it since the
    plan, which refuses those it finds."""

    def write(self, item: Decoded, levels: dict, options: RunOptions, weights: dict,
              device: str) -> int | None:  # fmt: skip
        return write_result(item, levels, options, weights, device, self.run_inputs)

    def __init__(self, run_inputs: RunInputs | None = None) -> None:
        self.run_inputs = run_inputs if run_inputs is not None else RunInputs()
        self._seen: dict[tuple[str, str], tuple[str | None, tuple | None]] = {}

    def fail(self, path: Path, reason: str) -> None:
        """Nothing to record: a failed image simply has no complete folder."""

    def complete(self, job: Job, options: RunOptions, weights: dict) -> bool:
        """Whether another run has completed ``job``'s folder since the run was planned; asked
        just before the image is decoded (its run key, a manifest read and a stat per listed
        file), so that a concurrent run's work is not computed twice."""
        if options.overwrite or linked_folder(job.folder, options.root) is not None:
            return False  # through a link: another folder's manifest (it fails when written)
        key = job_run_key(job, options, weights)
        if key is not None and is_complete(job.folder, key):
            return True
        self._seen[(str(job.path), str(job.folder))] = (key, _manifest_stamp(job.folder))
        return False

    def completed_since(self, job: Job, options: RunOptions, weights: dict) -> bool:
        """``complete`` again, just before the image's batch goes to the model: one ``stat`` of
        the manifest, read only when it changed since ``complete`` saw it (the full check when
        ``complete`` was not asked, as for images decoded elsewhere)."""
        if options.overwrite or linked_folder(job.folder, options.root) is not None:
            return False
        seen = self._seen.pop((str(job.path), str(job.folder)), None)
        if seen is None:
            return _complete(job, options, weights)
        key, stamp = seen
        if _manifest_stamp(job.folder) == stamp:
            return False
        return key is not None and is_complete(job.folder, key)


def _manifest_stamp(folder: Path) -> tuple | None:
    """What changes when a manifest is (re)written (it is replaced, never edited in place)."""
    try:
        st = os.stat(Path(folder) / MANIFEST)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size
