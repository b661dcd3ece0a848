"""One run on one device: ``Runner`` runs the batches the pipeline feeds it (halving the batch
after CUDA out of memory, sizing it to the free memory on the CPU), hands the results to writer
threads under a byte budget, counts what was done, skipped and failed, and stops the run at a full
disk, too many open files or a failed device. ``background`` initializes its threads."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from ..io.guard import is_disk_full, is_out_of_open_files
from ..io.jobs import Job
from ..io.messages import one_line
from ..model.fpn import FPN
from .device import (
    BatchResult,
    ByteBudget,
    bind_thread,
    device_broken,
    free_cached_memory,
    is_out_of_memory,
)
from .folder_sink import FolderSink
from .hostmem import available_bytes, cpu_batch_bytes
from .steps import (
    Decoded,
    DeviceState,
    RunOptions,
    decode,
    infer_batch,
    needs_image,
    resizes_on_device,
    weights_meta,
)
from .summary import ONCE, Progress, RunSummary, float16_overflow

__all__ = ["Runner", "background"]

log = logging.getLogger(__name__)


def _reason(error: BaseException) -> str:
    text = str(error).strip()
    if isinstance(error, MemoryError):
        text = f"out of memory ({text})" if text else "out of memory"
    elif not isinstance(error, (OSError, ValueError)):
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return one_line(text or type(error).__name__)


def _memory(n_bytes: int) -> str:
    return f"{n_bytes / 1e9:.1f} GB" if n_bytes >= 1e9 else f"{n_bytes / 1e6:.0f} MB"


class Runner:
    def __init__(self, model: FPN, options: RunOptions, summary: RunSummary, todo: int, progress,
                 sink=None):  # fmt: skip
        self.sink = sink or FolderSink()
        self.model = model
        self.options = options
        self.summary = summary
        self.todo = todo
        self.progress = progress
        self.device = next(model.parameters()).device
        self.state = DeviceState.create(self.device, options)
        self.resize_on_device = resizes_on_device(options, self.device)
        self.lock = threading.Lock()
        self.report_lock = threading.Lock()
        self.abort = threading.Event()
        self.disk_was_full = False
        self.out_of_files = False  # stopped by too many open files
        self.broken: str | None = None  # why the device became unusable
        self.budget = ByteBudget(options.queue_mb << 20)
        self.writer = ThreadPoolExecutor(options.writers, thread_name_prefix="fpncli-write",
                                         initializer=background(self.device))  # fmt: skip
        self.start = time.monotonic()
        self.weights_meta = weights_meta(model)
        self.recheck = getattr(self.sink, "complete", None)
        self.recheck_batch = getattr(self.sink, "completed_since", None)
        #: the padded sizes a compiled model without a canvas has run (``note_size``), kept on
        #: the compiled model, which a process's later runs reuse (a Ray actor's calls, a
        #: notebook's runs): each size compiles once in a process, and is said once
        self.compiled_sizes: list[tuple[int, int]] | None = (
            model.__dict__.setdefault("_fpncli_compiled_sizes", [])
            if options.compile and options.output.canvas is None else None
        )  # fmt: skip

    def report(self) -> None:
        if self.progress is None:
            return
        # the counts read and delivered in one step: a writer that read them before another
        # writer counted its image cannot deliver the older count after the newer one
        with self.report_lock:
            s = self.summary
            self.progress(Progress(s.done, len(s.failed), s.skipped, self.todo,
                                   time.monotonic() - self.start, s.bytes_written,
                                   s.last_folder, s.last_written_at))  # fmt: skip

    def add_seconds(self, stages: dict[str, float]) -> None:
        with self.lock:
            totals = self.summary.stage_seconds
            for name, seconds in stages.items():
                totals[name] = totals.get(name, 0.0) + seconds

    def fail(self, path: Path, reason: str) -> None:
        with self.lock:
            self.summary.failed.append((str(path), reason))
        self.sink.fail(path, reason)
        log.info("failed: %s: %s", path, reason)
        self.report()

    def skip(self, job: Job) -> None:
        """Count an image another run completed meanwhile as skipped (neither done nor failed)."""
        log.info("skipped: %s (completed by another run meanwhile)", job.path)
        with self.lock:
            self.summary.skipped += 1
        self.report()

    def decode(self, job: Job, input_format) -> Decoded | None:
        """``steps.decode``, or None (and the job counted as skipped) when the sink says that
        another run has completed the job since it was listed."""
        if self.recheck is not None and self.recheck(job, self.options, self.weights_meta):
            self.skip(job)
            return None
        return decode(job, self.options, input_format, resize_on_device=self.resize_on_device)

    def drop_complete(self, items: list[Decoded]) -> list[Decoded]:
        """``items`` less those another run has completed since they were decoded (skipped)."""
        if self.recheck_batch is None:
            return items
        keep = []
        for it in items:
            if self.recheck_batch(it.job, self.options, self.weights_meta):
                self.skip(it.job)
            else:
                keep.append(it)
        return keep

    def run_batch(self, items: list[Decoded]) -> None:
        """Run ``items`` in chunks of the current batch size; on CUDA out of memory, halve the
        batch size for the rest of the run and retry, outside the ``except`` block so that the
        failed attempt's memory is freed first. One image that does not fit fails alone. On the
        CPU a batch is sized before it runs (``fits_in_memory``): there, running out of memory
        is Linux's OOM killer ending the process, not an exception."""
        self.add_seconds({"decode": sum(it.decode_s for it in items)})
        chunks = [items]
        while chunks:
            chunk = chunks.pop(0)
            size = self.state.batch_size
            if len(chunk) > size:
                chunks[:0] = [chunk[i : i + size] for i in range(0, len(chunk), size)]
                continue
            chunk = self.drop_complete(chunk)  # the last cheap moment before the model runs
            if not chunk or not self.fits_in_memory(chunk, chunks):
                continue
            self.note_size(chunk[0])
            result, error = None, None
            start = time.perf_counter()
            try:
                result = infer_batch(self.model, chunk, self.options, self.state)
            except Exception as e:  # noqa: BLE001 - every image must end done or failed
                error = (is_out_of_memory(e), _reason(e))
                log.debug("batch of %d failed", len(chunk), exc_info=True)
            # this thread's time to stage and launch the batch (on the CPU: to compute it)
            self.add_seconds({"host": time.perf_counter() - start})
            if result is not None:
                self.submit(chunk, result)
                continue
            out_of_memory, reason = error
            if device_broken(self.device):  # e.g. an illegal address: nothing more can run
                for it in chunk:
                    self.fail(it.job.path, f"{self.device} failed: {reason}")
                self.device_failed(reason)
                return
            if out_of_memory:
                free_cached_memory(self.device)
            # the rows that ran: a partial batch is padded to the batch size (steps.infer_batch)
            rows = max(len(chunk), self.state.batch_size) if self.state.pad_batches else len(chunk)
            if out_of_memory and rows > 1:
                self.state.batch_size = max(1, rows // 2)
                log.warning("out of memory on a batch of %d: batch size %d from now on",
                            rows, self.state.batch_size)  # fmt: skip
                chunks.insert(0, chunk)
                continue
            if out_of_memory:
                reason = f"out of memory even for a batch of one ({reason})"
            else:
                reason = f"the model failed: {reason}"
            for it in chunk:
                self.fail(it.job.path, reason)

    def fits_in_memory(self, chunk: list[Decoded], chunks: list[list[Decoded]]) -> bool:
        """On the CPU, whether ``chunk``'s forward fits in the memory the machine can give now
        (``hostmem``; always where that cannot be read). If not, a batch of several is put back
        on ``chunks`` under the batch size that fits, kept for the rest of the run, and an
        image that does not fit alone fails, saying what it needs."""
        if self.device.type != "cpu":
            return True  # CUDA: out of memory is an exception, and halves the batch (run_batch)
        available = available_bytes(share=self.options.memory_share)
        if available is None:
            return True
        rows = max(len(chunk), self.state.batch_size) if self.state.pad_batches else len(chunk)
        height, width = chunk[0].prepared.padded_height, chunk[0].prepared.padded_width
        one = cpu_batch_bytes(1, height, width, self.options.precision)
        fit = available // one
        if fit >= rows:
            return True
        if fit >= 1:
            self.state.batch_size = int(fit)
            log.warning("not enough memory for a batch of %d at %dx%d on the CPU (about %s, %s "
                        "available): batch size %d from now on", rows, width, height,
                        _memory(rows * one), _memory(available), fit)  # fmt: skip
            chunks.insert(0, chunk)
            return False
        output = self.options.output
        fix = "lower --max-size/--min-size" if output.resize else "drop --no-resize"
        if output.canvas not in (None, "auto"):  # every image is padded to it
            fix += " or give a smaller --canvas"
        reason = (
            f"needs about {_memory(one)} of memory on the CPU for its {width}x{height} model "
            f"input, but {_memory(available)} is available: {fix}"
        )
        for it in chunk:
            self.fail(it.job.path, reason)
        return False

    def note_size(self, item: Decoded) -> None:
        """Warn once, at a compiled run's second padded size without a canvas: the model is
        compiled for static shapes, so every new size compiles it again (tens of seconds on a
        GPU) until torch's recompile limit, past which new sizes run uncompiled with only a line
        in torch's log. A folder of one size never sees the warning."""
        sizes = self.compiled_sizes
        size = (item.prepared.padded_height, item.prepared.padded_width)
        if sizes is None or len(sizes) > 1 or size in sizes:
            return
        sizes.append(size)
        if len(sizes) == 2:
            (h0, w0), (h1, w1) = sizes
            fix = ("add --canvas auto to pad every image to one of two sizes"
                   if self.options.output.resize
                   else "add --canvas WxH, a size that holds every image")  # fmt: skip
            log.warning(
                "--compile without --canvas compiles the model again for every padded image size "
                "(width x height %dx%d now, after %dx%d; tens of seconds each on a GPU, and sizes "
                "past torch's recompile limit run uncompiled): %s", w1, h1, w0, h0, fix,
                extra={ONCE: "compile"},  # every worker of a run would say it
            )  # fmt: skip

    def submit(self, items: list[Decoded], result: BatchResult) -> None:
        keep = sum(it.image.nbytes for it in items if needs_image(self.options.output))
        nbytes = result.nbytes + keep
        self.budget.acquire(nbytes, self.abort)
        for it in items:
            it.pixels = None  # uploaded; the writer needs only the image and the results
        state = {"remaining": len(items)}
        for i, it in enumerate(items):
            self.writer.submit(self.write, it, result, i, nbytes, state)

    def write(self, item: Decoded, result: BatchResult, index: int, nbytes: int, state) -> None:
        try:
            self._write(item, result, index)
        finally:
            if result.done_with_one():
                self.budget.release(nbytes)
                if result.clock is not None:
                    try:
                        self.add_seconds(result.clock.seconds())
                    except RuntimeError:  # events of a failed batch never completed
                        pass

    def _write(self, item: Decoded, result: BatchResult, index: int) -> None:
        path = item.job.path
        # a full disk drops the writes not yet begun (the summary says so; a rerun does them);
        # after a failed device the batches already computed are still written: their copies
        # back either landed, or ``wait`` raises and the image is failed
        if self.disk_was_full:
            return
        start = time.perf_counter()
        try:
            result.wait()  # blocks until the copies have landed
            levels = result.image(index)
            written = self.sink.write(
                item, levels, self.options, self.weights_meta, str(self.device)
            )
        except OSError as e:
            if is_disk_full(e):
                self.disk_full()
                return
            if is_out_of_open_files(e):
                self.files_ran_out()
                return
            self.fail(path, f"could not write {item.job.folder}: {_reason(e)}")
            return
        except ValueError as e:  # the sink's refusal (a folder reached through a link), or no
            # pca map for a level holding NaN or infinity (``BatchResult.image``): its line
            self.fail(path, _reason(e))
            return
        except Exception as e:  # noqa: BLE001 - a bug must not pass silently nor stop the run
            log.debug("writing %s failed", item.job.folder, exc_info=True)
            self.fail(path, f"error while copying back or writing: {_reason(e)}")
            return
        self.add_seconds({"write": time.perf_counter() - start})
        with self.lock:
            if written is None:  # another run completed it meanwhile
                self.summary.skipped += 1
            else:
                self.summary.done += 1
                self.summary.bytes_written += written
                self.summary.add_float16_overflow(
                    float16_overflow(levels, self.options.output.dtype)
                )
            self.summary.last_folder = item.job.folder  # complete either way
            self.summary.last_written_at = time.time()
        self.report()

    def disk_full(self) -> None:
        """Stop at the first full-disk write: one message, the image is not counted as failed."""
        if not self.abort.is_set():
            log.info("disk full: stopping")
        self.disk_was_full = True
        self.abort.set()

    def files_ran_out(self) -> None:
        """Stop at the first "too many open files", as at a full disk: one message for the run
        (the limit is the run's, not a file's), the image neither done nor failed but left for
        the rerun; the writes already queued still go."""
        if not self.abort.is_set():
            log.info("too many open files: stopping")
        self.out_of_files = True
        self.abort.set()

    def device_failed(self, reason: str) -> None:
        """Stop the run: the device is unusable (``summary.aborted`` says so)."""
        log.info("%s failed: stopping", self.device)
        self.broken = reason
        self.abort.set()

    def close(self) -> None:
        self.writer.shutdown(wait=True)
        self.summary.batch_size = self.state.batch_size


def background(device: torch.device):
    """The decode and write threads' initializer: on CUDA they take the model's device as their
    current one (writers wait on its events: a thread without it would make a context on GPU 0,
    hundreds of MB per process). Lowering their priority on the CPU was measured and gained
    nothing (folder/model-only 0.948 both ways), so they run at the model's priority."""

    def init() -> None:
        bind_thread(device)

    return init
