"""``--engine ray``: the same decoding, model and writers, scheduled by Ray Data.

The only module that imports Ray (lazily, inside functions). The dataset is the list of images
still to do; CPU tasks decode them with fpncli's own decoder (a bad file becomes a failed row,
never an exception), and a pool of actors (``ActorPoolStrategy``, ``num_gpus`` each) loads the
weights once, runs fpncli's pipeline on each call's images and writes the outputs itself: a
folder per image (``files``) or exactly one tar shard per call (``wds``). Only a small row per
image (path, status, error, shard, bytes) travels back; feature maps never enter the object
store. Resume is fpncli's own: the driver drops what the index (or the folders) mark done.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import pickle
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..api import check_precision
from ..io.guard import OptionError, is_disk_full, one_line, quote_name
from ..io.inputs import Job
from ..io.shard_index import consolidate_index, read_index
from ..io.shard_writer import ShardWriter
from ..model.fpn import FPN
from .pipeline import FolderSink, _reason, run_decoded
from .plan import Replaced, RunInputs, estimate_run_bytes, plan_pending
from .steps import RunOptions, decode, weights_meta
from .summary import (
    OPEN_FILES,
    Progress,
    RunSummary,
    WarningRelay,
    float16_overflow,
    say_relayed,
    stopped_message,
)
from .wds import ShardSink, plan_sharded

__all__ = ["RayOptions", "RayStartError", "exit_may_hang", "run_ray"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayOptions:
    """How to run on Ray (the per-image options are the ``RunOptions``)."""

    weights: str = "random"
    seed: int = 0
    device: str = "auto"  # of the actors: auto (CUDA when the actor has one), cpu, cuda
    out_format: str = "files"  # or "wds"
    shard_bytes: int = 1_000_000_000
    address: str | None = None  # None: a local Ray started for the run (or the running one)
    gpu_workers: int | None = None  # None: every GPU of the cluster (or 1 CPU actor)
    gpus_per_worker: float = 1.0
    decode_batch: int = 4  # images per decode task
    #: --batch-size was not given: an actor on a CPU runs images one at a time (the default on
    #: a CPU, as the local engine's), one on a GPU the ``RunOptions``' batch size
    default_batch: bool = False
    crash_after: int | None = None  # crash tests: an actor fails after this many images
    #: keep Ray's own log lines off the terminal (``_connect``): the CLI's choice unless -v; a
    #: library caller gets Ray as Ray sets itself up
    quiet: bool = False


class RayStartError(RuntimeError):
    """Ray could not be started or reached: nothing was planned or written. After a local start
    that failed this way the process may not exit by itself: the garbage collector's cleanup of
    Ray's GCS client waits in ``grpc_shutdown`` on threads that never started, and
    ``ray.shutdown`` does not release it (the CLI ends the process at once after its line:
    ``exit_may_hang``)."""


#: the Ray starts that failed in this process (``RayStartError``)
_failed_starts: list[str] = []


def exit_may_hang() -> bool:
    """Whether this process's normal exit may hang: a Ray start failed in it."""
    return bool(_failed_starts)


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise RuntimeError("--engine ray needs Ray: pip install 'fpncli[ray]'") from None
    return ray


@contextlib.contextmanager
def _core_logs_fatal_only():
    """The C++ core of the Ray processes started in the block logs fatal errors only (the
    driver's core otherwise prints Ray Data's routine ERROR notices on the terminal).

    The core reads RAY_BACKEND_LOG_LEVEL as it starts, so the variable is set for the block
    only, and never over the user's own. As it reads the variable the driver's core announces
    it on stderr: what the block writes there goes to the DEBUG log instead (the WARNING one
    when the block raises: Ray's own account of why it did not start). Nothing changes
    when the user asked for Ray's logs on stderr (RAY_LOG_TO_STDERR=1: the processes started
    here would write them to the captured stderr)."""
    if "RAY_BACKEND_LOG_LEVEL" in os.environ or os.environ.get("RAY_LOG_TO_STDERR") == "1":
        yield
        return
    sys.stderr.flush()
    with tempfile.TemporaryFile() as captured:
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        os.environ["RAY_BACKEND_LOG_LEVEL"] = "fatal"
        level = logging.DEBUG
        try:
            yield
        except BaseException:  # what Ray wrote as it failed to start is often the real cause
            level = logging.WARNING
            raise
        finally:
            os.environ.pop("RAY_BACKEND_LOG_LEVEL", None)
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode(errors="replace").strip()
            if text:
                log.log(level, "Ray's start wrote:\n%s", text)


def _connect(ray, address: str | None, quiet: bool = False) -> bool:
    """Join the cluster at ``address`` (or the running one); else start a local Ray.
    Returns True when this call started Ray (and so must shut it down). Sets the ``ray``
    logger's level (``ray.init``'s ``logging_level``): the caller gives it back.

    ``quiet`` (the CLI, unless -v) keeps Ray's own chatter off the terminal: the
    driver's ``ray`` logger shows errors only (not the token-authentication notice), the
    workers' output is not streamed to the driver (an actor's failures and fpncli's warnings
    still come back with its rows, or as the job's error), and the C++ core logs fatal errors
    only (in the processes of a local Ray started here, and in the driver: a joined cluster's
    processes are left as they are). A Ray the caller already runs is used as it is."""
    if ray.is_initialized():
        return False
    start = time.monotonic()
    if quiet:
        chatter = {"logging_level": logging.ERROR, "log_to_driver": False}
        core = _core_logs_fatal_only()
    else:
        chatter, core = {"logging_level": logging.WARNING}, contextlib.nullcontext()
    try:
        with core:
            if address:
                ray.init(address=address, **chatter)
            else:
                ray.init(include_dashboard=False, **chatter)
    except Exception as e:  # a local node that times out starting raises a bare Exception
        _shutdown_after_failed_start(ray)
        where = address or "local"
        _failed_starts.append(where)
        raise RayStartError(f"cannot start or reach Ray ({where}): {_reason(e)}") from None
    log.info("Ray started in %.1f s", time.monotonic() - start)
    return True


def _shutdown_after_failed_start(ray) -> None:
    """Stop what a failed ``ray.init`` had started (a GCS, a raylet, their threads): left
    running, the process hung at exit after saying why Ray did not start. Best effort: its own
    error is logged, and the start's error is the one said."""
    try:
        ray.shutdown()
    except Exception as e:
        log.debug("ray.shutdown after a failed start: %s", _reason(e))


def _pool(ray, options: RayOptions) -> tuple[int, float]:
    """``(actors, GPUs per actor)``; instead of Ray's endless wait for GPUs, an ``OptionError``
    naming the option that asks for more GPUs than the cluster has."""
    gpus = float(ray.cluster_resources().get("GPU", 0))
    wants_gpu = options.device.startswith("cuda") or (options.device == "auto" and gpus > 0)
    if not wants_gpu:
        return options.gpu_workers or 1, 0.0
    per = options.gpus_per_worker
    if not gpus:
        raise OptionError(
            "the Ray cluster has no GPU for the actors: add GPU nodes, or run with --device cpu",
            "--device",
        )
    if gpus < per:
        raise OptionError(
            f"{per:g} GPUs per worker, but the Ray cluster has {gpus:g} GPUs: ask for at most "
            f"{gpus:g}, or run with --device cpu",
            "--gpus-per-worker",
        )
    most = int(gpus // per)
    size = options.gpu_workers or most
    if size > most:
        raise OptionError(
            f"{size} workers x {per:g} GPUs each need {size * per:g} GPUs; the Ray cluster has "
            f"{gpus:g}: ask for at most {most} workers",
            "--gpu-workers",
        )
    return size, per


def _check_nodes(ray, out: str) -> None:
    """A local output folder on a multi-node cluster would scatter the outputs over the nodes."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) > 1 and "://" not in out:
        raise ValueError(
            f"the Ray cluster has {len(nodes)} nodes: a local -o {out} would scatter the outputs "
            "over them; write to object storage (s3://..., gs://...) or to a filesystem every "
            "node mounts, given as file:///shared/path"
        )


def _decode_rows(batch: dict, options: RunOptions, input_format) -> dict:
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
_WARNINGS = "fpncli_warnings"


@contextlib.contextmanager
def _relayed(into: list):
    """The block's fpncli warnings go to ``into`` (``WarningRelay``) for the driver to say, as
    what an actor prints may reach no one (``_connect``); an error raised in the block takes
    them along (``_WARNINGS``: Ray gives the driver the actor's error with its attributes)."""
    relay, logger = WarningRelay(into.append), logging.getLogger("fpncli")
    logger.addHandler(relay)
    try:
        yield
    except Exception as e:
        if into:
            with contextlib.suppress(AttributeError, TypeError):  # (an error without __dict__)
                setattr(e, _WARNINGS, list(into))
        raise
    finally:
        logger.removeHandler(relay)


class _Stopped(Exception):
    """An actor's call stopped by a full disk (``device_failure`` None), too many open files
    (``open_files``) or a failed device: the driver stops the run and counts it (a call's own
    counts say nothing of the run's). ``done`` and ``bytes_written``: the images the call wrote
    before it stopped and kept (a folder per image; a shard's are dropped with it)."""

    def __init__(self, device_failure: str | None, done: int, bytes_written: int,
                 open_files: bool = False) -> None:  # fmt: skip
        why = device_failure or (OPEN_FILES if open_files else "disk full")
        super().__init__(why, device_failure, done, bytes_written, open_files)
        self.device_failure, self.done, self.bytes_written = device_failure, done, bytes_written
        self.open_files = open_files

    def __reduce__(self):  # pickled to the driver by Ray: rebuilt from the same arguments
        return type(self), (self.device_failure, self.done, self.bytes_written, self.open_files)


class _Extractor:
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
        self.folder_sink = FolderSink()

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
            writer = ShardWriter(config["fs"], config["root"], target_bytes=2**62,
                                 settings=config["settings"], token=config["token"])  # fmt: skip
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
            raise _Stopped(None if failure is None else as_given(failure), done, size,
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


def run_ray(
    jobs: list[Job],
    out: str,
    model: FPN,
    options: RunOptions,
    ray_options: RayOptions,
    *,
    progress: Callable[[Progress], None] | None = None,
    on_plan: Callable[[list[Job], Replaced], None] | None = None,
    run_inputs: RunInputs | None = None,
) -> RunSummary:
    """Extract ``jobs`` on Ray Data into ``out`` (a folder, or an fsspec URL for ``wds``).
    ``on_plan``: as ``run_jobs``'s, called with the jobs left to do (and what they replace);
    ``run_inputs``: as ``run_jobs``'s (``jobs`` are a ``--shard`` of a larger run).

    ``model`` (on the driver, usually the CPU) only gives the weights' identity for resume; the
    actors load their own copy. Raises ValueError for a request the cluster cannot run
    (several nodes with a local ``out``; an ``OptionError`` for more GPUs than it has), or a
    ``memory://`` ``out`` (before Ray starts), ``RayStartError`` (a RuntimeError) when Ray cannot
    be started or reached, and RuntimeError when the Ray job fails, its ``summary`` what the
    run did until then (with ``--format wds``, every image the actors committed).
    """
    if out.startswith("memory://"):  # before Ray starts
        raise ValueError("memory:// lives in one process: use it with --engine local only")
    ray = _import_ray()
    ray_log = logging.getLogger("ray")
    level = ray_log.level  # ray.init sets it (logging_level): given back after the run
    started = False
    try:  # (also when ray.init fails, having set it)
        started = _connect(ray, ray_options.address, ray_options.quiet)
        with contextlib.ExitStack() as stack:  # the wds claim, held until the end
            return _run(ray, jobs, out, model, options, ray_options, progress, stack, on_plan,
                        run_inputs)  # fmt: skip
    finally:
        if started:
            ray.shutdown()
        ray_log.setLevel(level)


def _run(ray, jobs, out, model, options, ray_options, progress, stack, on_plan=None,
         run_inputs=None) -> RunSummary:  # fmt: skip
    from ray.data import ActorPoolStrategy, DataContext

    size, gpus = _pool(ray, ray_options)
    if not gpus:  # CPU actors: fp16/bf16 refused here as the local engine does, not per actor
        check_precision(options.precision, torch.device("cpu"))
    _check_nodes(ray, out)
    weights = weights_meta(model)
    summary = RunSummary(total=len(jobs))
    todo_keys: set[str] = set()  # wds: the keys of the images this run extracts
    config = {
        "weights": ray_options.weights, "seed": ray_options.seed, "device": ray_options.device,
        "options": replace(options, workers=1), "format": ray_options.out_format,
        "crash_after": ray_options.crash_after, "actors": size,
        "default_batch": ray_options.default_batch,
    }  # fmt: skip
    if ray_options.out_format == "wds":
        plan = plan_sharded(jobs, out, options, weights)
        stack.callback(plan.release)
        todo, summary.skipped = plan.todo, plan.skipped
        todo_keys.update(plan.keys[str(j.path)] for j in todo)
        replaced = Replaced()  # none: images of other settings are refused (prepare_root)
        summary.left_to_others = plan.left_to_others
        config.update(fs=plan.fs, root=plan.root, settings=plan.settings, token=plan.claim.token,
                      keys={str(Path(k).absolute()): v for k, v in plan.keys.items()})  # fmt: skip
        need = estimate_run_bytes(todo, options.output, max_pixels=options.max_pixels)
        per_image = max(1, need // max(1, len(todo)))
        rows_per_call = max(1, min(ray_options.shard_bytes // per_image, 10_000))
    else:
        todo, replaced = plan_pending(jobs, options, weights, run_inputs)
        summary.skipped = len(jobs) - len(todo)
        rows_per_call = options.batch_size * 4
    if on_plan is not None:
        on_plan(todo, replaced)
    if not todo:
        return summary
    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.wait_for_min_actors_s = 600  # after the GPU check above, only slow starts wait
    context.raise_original_map_exception = True  # the actor's own error, not "UDF failed"
    # the actors work with absolute paths; the given ones name the failures as locally
    rows = [{"path": str(j.path.absolute()), "folder": str(j.folder.absolute()),
             "given": str(j.path), "given_folder": str(j.folder)} for j in todo]  # fmt: skip
    dataset = ray.data.from_items(rows).map_batches(
        _decode_rows,
        batch_size=ray_options.decode_batch,
        fn_kwargs={"options": options, "input_format": model.weights_info.input},
        num_cpus=1,
        batch_format="numpy",
    )
    dataset = dataset.map_batches(
        _Extractor,
        fn_constructor_kwargs={"config": config},
        compute=ActorPoolStrategy(size=size),
        num_gpus=gpus,
        num_cpus=0 if gpus else 1,
        batch_size=rows_per_call,
        batch_format="numpy",
    )
    start = time.monotonic()
    ray_log = logging.getLogger("ray.data")
    level = ray_log.level
    if not log.isEnabledFor(logging.INFO):  # Ray Data logs every plan, and errors with tracebacks
        ray_log.setLevel(logging.CRITICAL)
    failure = None
    stopped: _Stopped | None = None  # a full disk or a failed device: the run's summary says so
    said: set[str] = set()  # the once-per-run warnings said
    try:
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            _count(batch, summary, said)
            if progress is not None:
                elapsed = time.monotonic() - start
                progress(Progress(summary.done, len(summary.failed), summary.skipped, len(todo),
                                  elapsed))  # fmt: skip
    except Exception as e:  # an actor's error (a bug, a crash test) or Ray's own
        log.debug("the Ray job failed", exc_info=True)
        failure = _failure(e, said)
        stopped = _stopped(e)
        if stopped is not None:
            failure = None
            summary.done += stopped.done
            summary.bytes_written += stopped.bytes_written
    finally:
        ray_log.setLevel(level)
        summary.seconds = time.monotonic() - start
        if ray_options.out_format == "wds":
            try:
                consolidate_index(config["fs"], config["root"])
            except OSError as e:  # the next run rewrites it (the ledger has every shard)
                if not is_disk_full(e):
                    raise
                if stopped is None and failure is None:
                    stopped = _Stopped(None, 0, 0)
    if failure is not None or stopped is not None:
        # Raised out here, with no traceback holding the executor, so that its actors (and the
        # GPUs they hold) are released now rather than whenever the error is collected.
        del dataset
        gc.collect()
    if failure is not None:  # with what the run did, for its log (``RunSummary``, as Ctrl-C's)
        if ray_options.out_format == "wds":  # the ledger has what the actors committed: also
            _count_committed(summary, config["fs"], config["root"], todo_keys)  # unreturned
        summary.aborted = f"the Ray job failed: {failure}"
        error = RuntimeError(f"{summary.aborted}; rerun to resume")
        error.summary = summary
        raise error
    if stopped is not None:  # counted over the run, as the local engine's summary
        if ray_options.out_format == "wds":  # every actor's committed shards, in the ledger
            _count_committed(summary, config["fs"], config["root"], todo_keys)
        summary.device_failure = stopped.device_failure
        summary.aborted = OPEN_FILES if stopped.open_files else "disk full"
        summary.aborted = stopped_message(summary)  # (a failed device's first)
        return summary
    log.info("Ray: %d images in %.1f s on %d actors", summary.done, summary.seconds, size)
    return summary


def _count(batch: dict, summary: RunSummary, said: set[str]) -> None:
    """Add an actor's returned rows to the summary, and say the warnings they bring
    (``said``: the once-per-run ones this run has said)."""
    for text in batch["log"]:
        for relayed in json.loads(text) if text else ():
            say_relayed(tuple(relayed), said)
    for path, status, error, size, overflowed in zip(
        batch["path"], batch["status"], batch["error"], batch["bytes"], batch["float16_levels"]
    ):
        if status == "ok":
            summary.done += 1
            summary.bytes_written += int(size)
            summary.add_float16_overflow(int(overflowed))
        elif status == "skipped":  # another run completed it meanwhile
            summary.skipped += 1
        else:
            summary.failed.append((str(path), str(error)))


def _stopped(error: BaseException) -> _Stopped | None:
    """A copy of the actor's ``_Stopped`` that ``error`` is (Ray raises a subclass of it), or
    wraps: a copy, without the traceback that holds the executor (and its actors, see _run)."""
    seen = []
    while error is not None and not any(error is e for e in seen):
        if isinstance(error, _Stopped):
            return _Stopped(error.device_failure, error.done, error.bytes_written,
                            error.open_files)  # fmt: skip
        seen.append(error)
        error = getattr(error, "cause", None) or error.__cause__ or error.__context__
    return None


def _count_committed(summary: RunSummary, fs, root: str, keys: set[str]) -> None:
    """Count as done the images of ``keys`` (this run's) that the ledger has ``ok``: what the
    actors committed, also those whose calls had not returned when the run stopped."""
    ok = {}
    for row in read_index(fs, root, warn=False).to_pylist():
        if row["status"] == "ok" and row["key"] in keys:
            ok[row["key"]] = row["bytes"] or 0
    summary.done, summary.bytes_written = len(ok), sum(ok.values())


def _failure(error: BaseException, said: set[str]) -> str:
    """Say the warnings an actor's error brings (``_relayed``), and return its reason."""
    for relayed in getattr(error, _WARNINGS, None) or ():
        say_relayed(tuple(relayed), said)
    return _ray_reason(error)


def _ray_reason(error: BaseException) -> str:
    """One line for a Ray error: the innermost ``SomeError: message`` line of the remote
    traceback Ray puts in its message, else the first line."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    raised = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception)\b[^ ]*: ", ln)]
    return (raised[-1] if raised else lines[0] if lines else type(error).__name__)[:300]
