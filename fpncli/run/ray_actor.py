"""The Ray side of ``--engine ray``: the CPU tasks that decode (``decode_rows``) and the actor
that runs the model on their images and writes the outputs itself (``Extractor``), returning a
small row per image. Ray ships these to its workers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
import re
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..io.jobs import Job
from ..io.messages import one_line, quote_name
from ..io.shard_writer import ShardWriter
from .folder_sink import FolderSink
from .pipeline import run_decoded
from .plan import RunInputs
from .runner import _reason
from .steps import RunOptions, decode
from .summary import DISK_FULL, OPEN_FILES, WarningRelay, float16_overflow
from .wds import ShardSink

__all__ = ["decode_rows", "Extractor", "Stopped", "WARNINGS"]


def decode_rows(batch: dict, options: RunOptions, input_format) -> dict:
    """CPU task: fpncli's decoder on each row; a file that fails becomes an error string."""
    items, errors = [], []
    for path, folder in zip(batch["path"], batch["folder"]):
        try:
            item = decode(Job(Path(path), Path(folder)), options, input_format)
            items.append(pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL))
            errors.append("")
        except Exception as e:  # noqa: BLE001 - as the local engine: one bad file fails alone
            items.append(b"")
            errors.append(_reason(e))
    return {**batch, "item": np.array(items, dtype=object), "error": np.array(errors, dtype=object)}


#: how a path may be written in a failure's text: as is, and as each escape that the text may
#: have gone through writes it
_PATH_FORMS = (str, lambda path: one_line(path, limit=sys.maxsize), lambda path: repr(path)[1:-1],
               quote_name)  # fmt: skip


def _as_given(pairs: dict[str, str]) -> Callable[[str], str]:
    """A function that writes each absolute path of ``pairs`` in a text as the user gave it.

    The actors read and write by absolute paths (a worker's current folder need not be the
    driver's), but a failure names its image and folder as the local engine does: as given.
    A text may hold a path escaped: a newline written ``\\n`` (``one_line``), an OSError's
    ``repr`` of its file name, ``quote_name``'s quoted form; each form of the absolute path
    becomes the same form of the given one. The forms are made at the first failure's text
    (a call whose images all succeed makes none)."""
    pairs = {absolute: given for absolute, given in pairs.items() if absolute != given}
    if not pairs:
        return lambda text: text
    made: list = []  # [(forms, pattern)], once a text needs them

    def as_given(text: str) -> str:
        if not text:
            return text
        if not made:
            forms = {}
            for absolute, given in pairs.items():
                for form in _PATH_FORMS:
                    forms.setdefault(form(absolute), form(given))
            # the longest first: an image's folder may be a prefix of its path (in/a of in/a.png)
            alternatives = sorted(forms, key=len, reverse=True)
            made.append((forms, re.compile("|".join(map(re.escape, alternatives)))))
        forms, pattern = made[0]
        return pattern.sub(lambda m: forms[m.group(0)], text)

    return as_given


class _Bytes:
    """A sink wrapper that remembers the bytes written per image and the levels that overflowed
    a float16 ``.npy`` (for the returned rows), and records each failure's reason with the paths
    as the user gave them."""

    def __init__(self, inner, as_given: Callable[[str], str]) -> None:
        self.inner, self.sizes, self.skipped, self.overflow = inner, {}, set(), {}
        self.as_given = as_given
        if hasattr(inner, "completed_since"):  # folders: re-checked before the model
            self.completed_since = self._completed_since

    def write(self, item, levels, options, *args) -> int | None:
        size = self.inner.write(item, levels, options, *args)
        self.sizes[str(item.job.path)] = size or 0
        if size is None:  # another run completed it meanwhile
            self.skipped.add(str(item.job.path))
        else:
            self.overflow[str(item.job.path)] = float16_overflow(levels, options.output.dtype)
        return size

    def _completed_since(self, job, *args) -> bool:
        done = self.inner.completed_since(job, *args)
        if done:
            self.skipped.add(str(job.path))
        return done

    def fail(self, path, reason: str) -> None:
        self.inner.fail(path, self.as_given(reason))


#: the attribute of an actor's error that holds the fpncli warnings said before it
WARNINGS = "fpncli_warnings"


@contextlib.contextmanager
def _relayed(into: list):
    """The block's fpncli warnings go to ``into`` (``WarningRelay``) for the driver to say, as
    what an actor prints may reach no one (``connect``); an error raised in the block takes
    them along (``WARNINGS``: Ray gives the driver the actor's error with its attributes)."""
    relay, logger = WarningRelay(into.append), logging.getLogger("fpncli")
    logger.addHandler(relay)
    try:
        yield
    except Exception as e:
        if into:
            with contextlib.suppress(AttributeError, TypeError):  # (an error without __dict__)
                setattr(e, WARNINGS, list(into))
        raise
    finally:
        logger.removeHandler(relay)


class Stopped(Exception):
    """An actor's call stopped by a full disk (``device_failure`` None), too many open files
    (``open_files``) or a failed device: the driver stops the run and counts it (a call's own
    counts say nothing of the run's). ``done`` and ``bytes_written``: the images the call wrote
    before it stopped and kept (a folder per image; a shard's are dropped with it)."""

    def __init__(self, device_failure: str | None, done: int, bytes_written: int,
                 open_files: bool = False) -> None:  # fmt: skip
        why = device_failure or (OPEN_FILES if open_files else DISK_FULL)
        super().__init__(why, device_failure, done, bytes_written, open_files)
        self.device_failure, self.done, self.bytes_written = device_failure, done, bytes_written
        self.open_files = open_files

    def __reduce__(self):  # pickled to the driver by Ray: rebuilt from the same arguments
        return type(self), (self.device_failure, self.done, self.bytes_written, self.open_files)


class Extractor:
    """The actor: weights loaded once; each call runs its images and writes them itself."""

    def __init__(self, config: dict) -> None:
        from ..api import load_backbone, resolve_device
        from .multi import usable_cores

        self.config = config
        self.relayed: list[tuple] = []  # loading's warnings (the weights' cache): the first call's
        with _relayed(self.relayed):
            device = resolve_device(config["device"])
            self.model = load_backbone(config["weights"], device=device, seed=config["seed"])
        self.options: RunOptions = config["options"]
        if device.type == "cpu":  # Ray gives a worker one OpenMP thread: use the node's cores
            threads = max(1, usable_cores() // config["actors"])  # (and memory: its share)
            share = self.options.memory_share / max(1, config["actors"])
            self.options = replace(self.options, threads=threads, memory_share=share)
            if config.get("default_batch"):  # --batch-size's default on a CPU
                self.options = replace(self.options, batch_size=1)
        self.done = 0
        # the run's input files as the driver's plan read them (none read: none of another
        # file's outputs were there), for the writes' check of each folder (``FolderSink``)
        self.folder_sink = FolderSink(RunInputs(identities=config.get("identities")))

    def __call__(self, batch: dict) -> dict:
        # the call's fpncli warnings (the first call's also those of loading) go back with its
        # rows (the first row's "log"), or with its error, for the driver to say
        relayed, self.relayed = self.relayed, []
        with _relayed(relayed):
            rows = self._run(batch)
        logs = [json.dumps(relayed) if relayed else ""] + [""] * (len(rows["path"]) - 1)
        return {**rows, "log": np.array(logs, dtype=object)}

    def _run(self, batch: dict) -> dict:
        config = self.config
        paths = [str(p) for p in batch["path"]]
        given = [str(p) for p in batch["given"]]
        as_given = _as_given(
            {**dict(zip(map(str, batch["folder"]), map(str, batch["given_folder"]))),
             **dict(zip(paths, given))}
        )  # fmt: skip
        writer = None
        if config["format"] == "wds":
            # the claim is the driver's: a killed driver's keys may be a new run's, not ours
            writer = ShardWriter(config["fs"], config["root"], target_bytes=2**62,
                                 settings=config["settings"], token=config["token"],
                                 owner_must_live=True)  # fmt: skip
            sink = _Bytes(ShardSink(writer, config["keys"]), as_given)
        else:
            sink = _Bytes(self.folder_sink, as_given)
        failed = {}
        items = []
        for path, blob, error in zip(paths, batch["item"], batch["error"]):
            if error:
                failed[path] = error
                sink.fail(Path(path), error)
            else:
                items.append(pickle.loads(blob))
        summary = run_decoded(items, self.model, self.options, sink=sink)
        if summary.aborted:  # a full disk, a failed GPU: nothing of this call is committed
            done, size = summary.done, summary.bytes_written
            if writer is not None:
                writer.abort()
                done, size = done - writer.dropped, size - writer.dropped_bytes
            failure = summary.device_failure
            raise Stopped(None if failure is None else as_given(failure), done, size,
                           open_files=summary.aborted.startswith(OPEN_FILES))  # fmt: skip
        failed.update(dict(summary.failed))
        self.done += summary.done
        crash = config["crash_after"]
        if crash is not None and self.done >= crash:  # crash tests: die before the commit
            if writer is not None:  # its shard is dropped now, not by a later run's clean-up
                writer.abort()
            raise RuntimeError(f"injected failure after {self.done} images (crash test)")
        shard = None
        if writer is not None:
            writer.commit()
            shard = writer.shards[-1] if writer.shards else None
        return {
            "path": np.array(given, dtype=object),  # as the user gave it, for the run's log
            "status": np.array([_status(p, failed, sink.skipped) for p in paths], dtype=object),
            "error": np.array([as_given(failed.get(p, "")) for p in paths], dtype=object),
            "shard": np.array([shard if p not in failed else "" for p in paths], dtype=object),
            "bytes": np.array([sink.sizes.get(p, 0) for p in paths], dtype=np.int64),
            "float16_levels": np.array([sink.overflow.get(p, 0) for p in paths], dtype=np.int64),
        }


def _status(path: str, failed: dict, skipped: set) -> str:
    return "failed" if path in failed else "skipped" if path in skipped else "ok"
