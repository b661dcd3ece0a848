"""``fpncli report OUT``: one static HTML page for a whole extraction.

``OUT/report.html`` holds the summary (images done and failed, weights, precision, device, bytes,
versions; a red banner for random weights), per-level statistics and histograms across the
folder, and the first page of the grid (one row per image: the input, then each level).
Further pages are ``OUT/report/page_NNNN.html``; thumbnails and the histogram figure lie in
``OUT/report/``. No server, no network, no JavaScript; every link is relative, so the folder can
be copied or zipped as it is.

This module gathers the folder's images, statistics and pages; an image's thumbnails and row
are made in ``report_thumbs``, where the report goes and how it replaces the previous one is
``report_folder``'s, and the HTML is ``report_html``'s.
"""

from __future__ import annotations

import collections
import functools
import html
import itertools
import logging
import shlex
import shutil
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..io.atomic import atomic_write_bytes, folder_not_writable, not_writable
from ..io.catalog import Extractions, Failure, open_extractions
from ..io.formats import warn_image_folders_left_out
from ..io.guard import OptionError, folder_lock, usable_cores
from ..io.messages import error_text, utf8_text
from ..io.run_log import read_run_log
from .report_folder import build_folder, report_place, swap_in
from .report_html import (
    Row,
    Tally,
    grid_html,
    nav_html,
    order,
    page_html,
    scale_note_html,
    stats_html,
    summary_html,
)
from .report_thumbs import process_item
from .scale import run_ranges
from .stats import LevelStats, accumulate

__all__ = ["write_report"]

log = logging.getLogger(__name__)


def _bounded_map(pool: ThreadPoolExecutor, fn: Callable, items: Iterable, window: int) -> Iterator:
    """``pool.map`` with at most ``window`` items in flight, in order: a folder of any size
    holds only that many images' arrays at once."""
    pending: collections.deque = collections.deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _histogram_png(stats: dict[str, LevelStats], path: Path) -> None:
    """One panel per level: counts of the sampled values (log scale) over the level's range."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state
    from matplotlib.ticker import LogLocator, MaxNLocator, NullLocator

    names = order(stats)
    fig = Figure(figsize=(2.3 * max(1, len(names)), 2.3), dpi=100)
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.2, top=0.88, wspace=0.3)
    axes = fig.subplots(1, max(1, len(names)), squeeze=False)[0]
    for ax, name in zip(axes, names):
        counts, edges = stats[name].histogram()
        ax.stairs(counts, edges, fill=True, color="#3b6ea5")
        if counts.any():  # a level with no finite value has nothing to put on a log scale
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(numticks=4))
            ax.yaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.set_title(f"{name} ({stats[name].images} images)", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("activation", fontsize=8)
    fig.savefig(path, format="png")


def write_report(
    root: str | Path,
    *,
    page_size: int = 100,
    thumb_height: int = 64,
    workers: int | None = None,
    scale: str = "image",
    on_unreadable: Callable[[str, str], None] | None = None,
) -> Path:
    """Write ``ROOT/report.html`` (and ``ROOT/report/``) for the extraction under ``root``.

    An image whose outputs cannot be read (a malformed manifest, a truncated ``.npy``, a
    damaged tar shard) is left out of the grid and the statistics and listed on the first page
    with the reason; the report still covers the others, and ``on_unreadable(key, reason)`` is
    called for each such image (``fpncli report`` then exits 1).

    Args:
        root: an output folder of ``fpncli extract`` (or one image's folder).
        page_size: images per page of the grid.
        thumb_height: thumbnail height in pixels.
        workers: threads making thumbnails (default: CPU count, at most 8).
        scale: ``image`` colours each thumbnail on its own recorded range (the ``--clip``
            percentiles its heatmap was drawn on); ``level`` and ``shared`` on the run's ranges
            from the manifests (``viz.scale.run_ranges``), so colours compare across images
            (and, with ``shared``, across levels).

    Returns:
        The path of ``report.html`` (``report_2.html`` with ``report_2/`` where an image's
        folder, or anything else a report did not make, is called ``report`` or ``report.html``:
        those are never written over; see ``report_place``).

    Raises:
        FileNotFoundError: ``root`` does not exist or holds no complete extraction.
        ValueError: a bad ``page_size`` or ``thumb_height``.
        FolderBusyError: another report of ``root`` ran for over 5 minutes (reports of one
            folder take turns).
    """
    if page_size < 1 or thumb_height < 8:
        raise ValueError("page_size must be >= 1 and thumb_height >= 8")
    if "://" in str(root):
        raise ValueError(
            f"fpncli report writes report.html beside the extraction: give a local folder, not "
            f"{root} (copy its index and shards, or mount it)"
        )
    root = Path(root).expanduser()  # a quoted '~/feats' (report.html went into ./~/feats)
    found = open_extractions(root)
    keys = found.keys()
    run = read_run_log(root)
    # an output written before extract refused to mix formats: its image folders are not read
    left_out = warn_image_folders_left_out(root, found.format)
    if not keys and not run and not found.failures():
        raise FileNotFoundError(
            f"{root} holds no complete extraction (no manifest.json under it, no index.parquet)"
        )
    # one report at a time per folder: a second waits for the first rather than clearing the
    # folder the first is writing into, or taking the first's half-made folder for another's
    with folder_lock(root):
        first, assets_name = report_place(root)
        try:
            build = build_folder(root, assets_name)
        except OSError as e:  # the first write into root (its report goes beside the maps)
            if not not_writable(e):
                raise
            raise folder_not_writable(
                root,
                "write the report",
                "make it writable, or copy the extraction to a folder "
                "you can write and report that copy",
            ) from None
        try:
            unreadable, first_page = _write_pages(
                root, found, keys, run, build, assets_name, first, page_size=page_size,
                thumb_height=thumb_height, workers=workers, scale=scale, left_out=left_out,
            )  # fmt: skip
            swap_in(build, root / assets_name, root / first, first_page)
        except BaseException:
            shutil.rmtree(build, ignore_errors=True)
            raise
    for failure in unreadable:  # said once: to the caller, else in the log
        if on_unreadable is not None:
            on_unreadable(failure.path, failure.reason)
        else:
            log.warning("report: %s left out: %s", failure.path, failure.reason)
    log.info("report: %d images -> %s", len(keys), root / first)
    return root / first


def _write_pages(root: Path, found: Extractions, keys: list[str], run: dict | None,
                 build: Path, assets: str, first: str, *, page_size: int, thumb_height: int,
                 workers: int | None, scale: str,
                 left_out: int = 0) -> tuple[list[Failure], bytes]:  # fmt: skip
    """The thumbnails, histograms and pages of ``write_report``, written into ``build`` (which
    becomes ``root/assets``; ``first`` is the first page's name in ``root``); returns the
    images whose outputs could not be read (listed on the first page) and the first page."""
    unreadable: list[Failure] = []
    ranges = None
    if keys and scale != "image":  # a first pass over the manifests only (no tensor is read)
        tensors = []  # whether an image saved a tensor: only those are drawn on the scale
        manifests = _readable_manifests(found, keys, unreadable)  # one at a time
        first_one = next(manifests, None)
        if first_one is not None:  # else every image is listed as unreadable
            # each image is drawn with its own recorded reduction: its own drawn map's range
            ranges = run_ranges(_noting_tensors(itertools.chain([first_one], manifests), tensors),
                                scale, reduce=None)  # fmt: skip
            if not any(tensors):  # every cell is a heatmap drawn on its own range
                raise OptionError(
                    f"{scale!r} changes nothing here: no image holds tensors (extracted with "
                    "--no-npy), so every cell shows its heatmap as it was drawn, on its own "
                    "range; leave --scale out",
                    "--scale",
                )
    stats: dict[str, LevelStats] = {}
    no_tensor: collections.Counter = collections.Counter()  # level -> images without its .npy
    tally = Tally()
    rows: list[Row] = []
    levels: set[str] = set()
    listed = {f.path for f in unreadable}
    threads = workers or min(8, usable_cores())
    with ThreadPoolExecutor(threads) as pool:
        work = functools.partial(process_item, found=found, thumbs=build / "thumbs",
                                 href=f"{assets}/thumbs", height=thumb_height,
                                 ranges=ranges)  # fmt: skip
        for done in _bounded_map(pool, work, enumerate(keys), threads + 1):
            if isinstance(done, Failure):
                if done.path not in listed:  # (its manifest may have failed the first pass)
                    unreadable.append(done)
                continue
            row, samples, manifest, size = done
            tally.add(manifest, size)
            levels.update(manifest.get("levels", {}))
            for name, (sample, shape) in samples.items():
                meta = manifest["levels"][name]
                accumulate(stats.setdefault(name, LevelStats(name)), None, meta, sample, shape)
            no_tensor.update(set(manifest.get("levels", {})) - set(samples))
            rows.append(row)
    rows.sort(key=lambda r: r.key)  # shards are read in storage order; the grid is by key
    levels = order(levels)
    if stats:
        _histogram_png(stats, build / "histograms.png")
    pages = max(1, -(-len(rows) // page_size))
    shard_note = (
        "<p class=muted>The images lie in tar shards (--format wds), so the thumbnails link to "
        f"nothing larger: <code>fpncli show {html.escape(shlex.quote(str(root)))} --key KEY "
        "--level all</code> "
        "draws one.</p>"
        if found.format == "wds"
        else ""
    )
    for page in range(1, pages + 1):
        chunk = rows[(page - 1) * page_size : page * page_size]
        prefix = "" if page == 1 else "../"
        nav = nav_html(page, pages, prefix, first, assets)
        title = f"fpncli report: {root.resolve().name}"
        start = (page - 1) * page_size + 1
        # no image in the grid (every one failed or unreadable): not "Images 1-0 of 0"
        heading = f"Images {start}-{start + len(chunk) - 1} of {len(rows)}" if rows else "No images"
        grid = f"<h2>{heading}</h2>{shard_note}{nav}"
        grid += grid_html(chunk, levels, prefix, start, thumb_height) if chunk else ""
        if page == 1:
            summary = summary_html(root, found, tally, run, unreadable, left_out)
            body = [f"<h1>{html.escape(title)}</h1>", summary,
                    scale_note_html(scale, ranges, no_tensor)]  # fmt: skip
            if stats:
                hist = f'<img class="hist" src="{assets}/histograms.png" alt="histograms">'
                body += ["<h2>Levels across the folder</h2>", stats_html(stats, no_tensor), hist]
            body += [grid, nav]
            first_page = utf8_text(page_html(title, "\n".join(body))).encode()
        else:
            body = f'<h1>{html.escape(title)}</h1><p><a href="../{first}">summary</a></p>'
            body += grid + nav
            path = build / f"page_{page:04d}.html"
            atomic_write_bytes(path, utf8_text(page_html(f"{title} page {page}", body)).encode())
    log.info("report: %d images, %d pages", len(rows), pages)
    return unreadable, first_page


def _noting_tensors(manifests: Iterable[dict], tensors: list[bool]) -> Iterator[dict]:
    """``manifests``, appending to ``tensors`` for each whether it lists a level's tensor file."""
    for manifest in manifests:
        levels = manifest.get("levels") or {}
        tensors.append(any(isinstance(meta, dict) and meta.get("file") for meta in levels.values()))
        yield manifest


def _readable_manifests(found: Extractions, keys: list[str], unreadable: list[Failure]):
    """The manifests of ``keys`` that can be read; the others go to ``unreadable``."""
    for key in keys:
        try:
            yield found.manifest(key)
        except (ValueError, OSError) as e:
            unreadable.append(Failure(key, error_text(e)))
