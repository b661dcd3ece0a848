"""``fpncli report OUT``: one static HTML page for a whole extraction.

``OUT/report.html`` holds the summary (images done and failed, weights, precision, device, bytes,
versions; a red banner for random weights), per-level statistics and histograms across the
folder, and the first page of the grid (one row per image: the input, then each level).
Further pages are ``OUT/report/page_NNNN.html``; thumbnails and the histogram figure lie in
``OUT/report/``. No server, no network, no JavaScript; every link is relative, so the folder can
be copied or zipped as it is.
"""

from __future__ import annotations

import collections
import functools
import html
import itertools
import logging
import math
import os
import re
import secrets
import shlex
import shutil
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ..io.atomic import TMP_MARK, atomic_write_bytes, stale_temporary
from ..io.catalog import Extractions, Failure, open_extractions
from ..io.extraction import LoadedExtraction, read_run_log, replaced_size
from ..io.formats import warn_image_folders_left_out
from ..io.guard import folder_lock, usable_cores
from ..io.markers import REPORT_MARKER
from ..io.messages import error_text, utf8_text
from .maps import REDUCTIONS, reduce_channels
from .png import encode_png
from .report_html import (
    GENERATOR,
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
from .scale import run_ranges
from .stats import LevelStats, accumulate, sample_level
from .visualize import colour_bar

__all__ = ["write_report", "REPORT", "REPORT_ASSETS"]

log = logging.getLogger(__name__)
REPORT = "report.html"
REPORT_ASSETS = "report"
# what a report writes into its asset folder: an unmarked folder holding only these is an earlier
# version's report (cleared as before); anything else is not the report's to clear
_REPORT_FILES = re.compile(r"^(thumbs|histograms\.png|page_\d+\.html)$")
_THUMB_FILES = re.compile(r"^\d{6}_\w+\.png$")  # thumbs/: 000012_input.png, 000012_p2.png
# how an earlier version's page began (before GENERATOR): its title is "fpncli report: OUT"
_EARLIER_PAGE = (
    b'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>fpncli report:'
)


def _input_thumbnail(path: Path | None, height: int, manifest: dict) -> np.ndarray | None:
    """The photo at ``height`` pixels, decoded at reduced size where the format allows (JPEG);
    None when it is gone, unreadable, or not of the size the ``manifest`` records (replaced
    since, it is not the photo of these maps: ``extraction.replaced_size``)."""
    if path is None or not path.is_file():
        return None
    from ..io.exif import exif_orientation, turn_upright, upright_size
    from ..io.image_load import to_rgb8
    from ..io.pillow_open import open_image

    # open_image: a regular file only, no bomb, Pillow's warnings kept off stderr; a malformed
    # file costs the thumbnail, not the report
    try:
        with open_image(path) as im:
            orientation = exif_orientation(im, [])  # as extract read it (a PNG is decoded)
            width, height_now = upright_size(im, orientation)
            extracted = replaced_size(manifest, width, height_now)
            if extracted is not None:
                log.warning("report: %s is %dx%d, the extracted photo was %dx%d: replaced "
                            "since, not shown", path, width, height_now, *extracted)  # fmt: skip
                return None
            im.draft("RGB", (height * 4, height))  # JPEG: decode at 1/2..1/8 scale, fast
            im = turn_upright(im, orientation)
            rgb = to_rgb8(im, [])  # 16-bit and float images scaled as extract scales them
            im = rgb if isinstance(rgb, Image.Image) else Image.fromarray(rgb)
            im.thumbnail((height * 8, height))
            return np.asarray(im)
    except Exception as e:
        log.warning("report: cannot read %s for a thumbnail: %s", path, e)
        return None


def _level_thumbnail(map2d: np.ndarray, height: int, cmap: str, rng) -> np.ndarray:
    """The map coloured on ``rng`` (default: its own finite min..max), cells kept crisp."""
    values = np.asarray(map2d, dtype=np.float32)
    if values.size == 0:  # nothing to draw: a blank (grey) square, not a cv2 error
        return np.full((height, height, 3), 200, np.uint8)
    if rng is None:
        finite = values[np.isfinite(values)]
        rng = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    lo, hi = rng
    if hi > lo:
        # a range as wide as float32's (a run's, from forged statistics) overflows in float32:
        # to inf, which is then the last colour, not a RuntimeWarning printed by the report
        with np.errstate(over="ignore", invalid="ignore"):
            index = (values - lo) * (255.0 / (hi - lo))
        index = np.nan_to_num(index, nan=0.0, posinf=255, neginf=0)
        index = np.clip(index + 0.5, 0, 255).astype(np.uint8)
    else:
        index = np.full(values.shape, 128, np.uint8)
    colours = colour_bar(cmap, 256)[0][index]
    h, w = colours.shape[:2]
    width = max(1, round(height * w / max(1, h)))
    return cv2.resize(colours, (width, height), interpolation=cv2.INTER_NEAREST)


def _recorded_range(meta: dict) -> tuple[float, float] | None:
    pair = meta.get("range")
    if isinstance(pair, (list, tuple)) and len(pair) == 2:
        try:
            lo, hi = float(pair[0]), float(pair[1])
        except (TypeError, ValueError, OverflowError):
            return None
        if math.isfinite(lo) and math.isfinite(hi):
            return lo, hi
    return None


def _heatmap_settings(ex: LoadedExtraction) -> tuple[str, int, str]:
    """The manifest's ``heatmap`` reduce, channel and cmap, which the thumbnails are drawn
    with; ValueError for a reduction or colormap this version does not know, or a channel
    past a level's count (checked before any thumbnail of the image is drawn)."""
    heat = ex.manifest.get("heatmap") or {}
    reduce, channel = heat.get("reduce", "channel"), int(heat.get("channel", 0))
    cmap = heat.get("cmap", "viridis")
    if reduce not in REDUCTIONS:
        raise ValueError(f"heatmap.reduce of manifest.json: unknown reduction {reduce!r} (one of "
                         f"{', '.join(REDUCTIONS)}): extract this image again")  # fmt: skip
    try:
        colour_bar(cmap, 256)
    except ValueError as e:
        raise ValueError(f"heatmap.cmap of manifest.json: {e}: extract this image again") from None
    for name, array in ex.levels.items():
        if reduce == "channel" and channel >= array.shape[1]:
            raise ValueError(f"heatmap.channel of manifest.json: {channel}, but {name} has "
                             f"{array.shape[1]} channels: extract this image again")  # fmt: skip
    return reduce, channel, cmap


def _process(index: int, key: str, found: Extractions, thumbs: Path, href: str, height: int,
             ranges: dict | None) -> tuple[Row, dict, dict, int] | Failure:  # fmt: skip
    """Thumbnails of one image, written into ``thumbs`` and linked as ``href/NAME``; returns
    its grid row, per level (sample, valid shape), its manifest and its bytes, or a ``Failure``
    (key, why) when its outputs cannot be read (a malformed manifest, a truncated ``.npy``, a
    damaged shard, heatmap settings that cannot be drawn). Only this image's arrays are in
    memory (or mapped) meanwhile."""
    try:
        ex, size = found.load(key), found.size(key)
        reduce, channel, cmap = _heatmap_settings(ex)
    except (ValueError, OSError) as e:  # this image's outputs only: listed, the others go on
        return Failure(key, error_text(e))
    unloaded = ex.unloaded()
    if unloaded:  # not "not saved": the manifest says it was
        return Failure(key, "; ".join(f"{n}: its .npy is missing or unreadable" for n in unloaded))
    stem = f"{index:06d}"
    row = Row(key, {}, {}, None, None, "")
    picture = _input_thumbnail(ex.input_path, height, ex.manifest)
    if picture is not None:
        atomic_write_bytes(thumbs / f"{stem}_input.png", encode_png(picture))
        row.input_thumb = f"{href}/{stem}_input.png"
    inp = ex.manifest.get("input") or {}
    row.size = f"{inp.get('width')}x{inp.get('height')}"
    row.overview = found.link(key, ex.manifest.get("overview"))
    samples = {}
    for name, meta in ex.manifest.get("levels", {}).items():
        for kind in ("heatmap", "overlay", "file"):
            link = found.link(key, meta.get(kind))
            if link:
                row.links[name] = link
                break
        if name not in ex.levels:
            row.levels[name] = None
            continue
        valid = ex.valid(name)
        samples[name] = (sample_level(valid), valid.shape)
        map2d = reduce_channels(valid, reduce, channel)
        # --scale image: the level's recorded colour range (its heatmap's --clip percentiles,
        # so thumbnail and heatmap look alike), else the map's own min..max
        rng = ranges.get(name) if ranges else _recorded_range(meta)
        thumb = _level_thumbnail(map2d, height, cmap, rng)
        atomic_write_bytes(thumbs / f"{stem}_{name}.png", encode_png(thumb))
        row.levels[name] = f"{href}/{stem}_{name}.png"
    return row, samples, ex.manifest, size


def _process_item(item: tuple[int, str], **kwargs) -> tuple[Row, dict, dict, int] | Failure:
    return _process(item[0], item[1], kwargs["found"], kwargs["thumbs"], kwargs["href"],
                    kwargs["height"], kwargs["ranges"])  # fmt: skip


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


def _holds_only(folder: Path, names: re.Pattern, subfolder: str | None = None) -> bool:
    """Whether every entry of ``folder`` is a file whose name ``names`` matches, or a temporary
    file of ``atomic_write_bytes``; only ``subfolder`` may be a folder (a real one)."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return False
    for entry in entries:
        is_dir = entry.is_dir(follow_symlinks=False)
        if entry.name == subfolder:
            if not is_dir:
                return False
        elif is_dir or not (
            names.match(entry.name) or (entry.name.startswith(".") and TMP_MARK in entry.name)
        ):
            return False
    return True


def _is_report_folder(folder: Path) -> bool:
    """Whether ``folder`` is a report's asset folder: marked by one, or (an earlier version's)
    holding nothing but what a report writes, ``thumbs/`` included (a user's folder of pictures
    called ``report/thumbs`` is not). An image's output folder never is."""
    if (folder / REPORT_MARKER).is_file():
        return True
    return _holds_only(folder, _REPORT_FILES, "thumbs") and (
        not os.path.lexists(folder / "thumbs") or _holds_only(folder / "thumbs", _THUMB_FILES)
    )


def _is_report_page(path: Path) -> bool:
    """Whether ``path`` is a regular file that a report wrote (its head holds ``GENERATOR``, or
    it begins as an earlier version's page did): only such a page may be written over."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(4096)  # the marker is in the first few hundred bytes
    except OSError:
        return False
    if head.startswith(_EARLIER_PAGE):
        return True
    return head.startswith(b"<!DOCTYPE html>") and GENERATOR.encode() in head.split(b"</head>")[0]


def _report_place(root: Path) -> tuple[str, str]:
    """The first page's name and the asset folder's: ``report.html`` and ``report/``, unless
    something a report did not make (an image's output folder, say, of an input called
    ``report.jpg`` extracted by an earlier version, or a page of the user's own: one that is not
    a report's, ``_is_report_page``) holds either name: then ``report_2.html`` and
    ``report_2/``, and so on. Nothing a report did not make is written over or deleted."""
    for n in range(1, 1000):
        suffix = "" if n == 1 else f"_{n}"
        page, assets = root / f"{REPORT_ASSETS}{suffix}.html", root / f"{REPORT_ASSETS}{suffix}"
        page_free = not os.path.lexists(page) or _is_report_page(page)
        assets_free = not os.path.lexists(assets) or (
            assets.is_dir() and not assets.is_symlink() and _is_report_folder(assets)
        )
        if page_free and assets_free:
            if n > 1:
                log.warning("report: %s/%s or %s/%s is not a report's (an image's outputs?): "
                            "writing %s and %s/ instead", root, REPORT, root, REPORT_ASSETS,
                            page.name, assets.name)  # fmt: skip
            return page.name, assets.name
    raise ValueError(f"{root}: report.html, report/ and 998 alternatives are all taken")


def _build_folder(root: Path, assets_name: str) -> Path:
    """A new, marked, hidden folder in ``root`` for a report's assets (held locked): built there
    in full, then swapped in for ``assets_name`` (``_swap_in``), so that a report that fails
    midway leaves the previous one whole. Earlier builds that a killed report left behind are
    removed first."""
    prefix = f".{assets_name}{TMP_MARK}"
    for entry in os.scandir(root):
        if not (entry.name.startswith(prefix) and stale_temporary(entry.name)):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)
    # not tempfile.mkdtemp: its mode 0700 would make the report unreadable to a web server
    build = root / f"{prefix}.{os.getpid()}.{secrets.token_hex(4)}"
    build.mkdir()
    (build / REPORT_MARKER).write_text("fpncli report assets: rewritten by each fpncli report\n")
    (build / "thumbs").mkdir()
    return build


def _swap_in(build: Path, assets: Path, first: Path, first_page: bytes) -> None:
    """Make ``build`` the asset folder ``assets`` and write the first page that links into it;
    the previous asset folder is deleted only once both are in place (put back if the page
    cannot be written)."""
    if os.path.lexists(first) and not _is_report_page(first):  # made meanwhile by something else
        raise ValueError(f"{first} is not a report's page: move it away")
    old = None
    if os.path.lexists(assets):
        if not _is_report_folder(assets):  # made meanwhile by something else
            raise ValueError(
                f"{assets} is not a report's folder (it holds other files): move it away"
            )
        old = build.with_name(f"{build.name}.old")
        os.rename(assets, old)
    os.rename(build, assets)
    try:
        atomic_write_bytes(first, first_page)
    except BaseException:
        os.rename(assets, build)  # the caller removes it
        if old is not None:
            os.rename(old, assets)
        raise
    if old is not None:
        shutil.rmtree(old)


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
        those are never written over; see ``_report_place``).

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
    root = Path(root)
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
        first, assets_name = _report_place(root)
        build = _build_folder(root, assets_name)
        try:
            unreadable, first_page = _write_pages(
                root, found, keys, run, build, assets_name, first, page_size=page_size,
                thumb_height=thumb_height, workers=workers, scale=scale, left_out=left_out,
            )  # fmt: skip
            _swap_in(build, root / assets_name, root / first, first_page)
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
        manifests = _readable_manifests(found, keys, unreadable)  # one at a time
        first_one = next(manifests, None)
        if first_one is not None:  # else every image is listed as unreadable
            # each image is drawn with its own recorded reduction: its own drawn map's range
            ranges = run_ranges(itertools.chain([first_one], manifests), scale, reduce=None)
    stats: dict[str, LevelStats] = {}
    no_tensor: collections.Counter = collections.Counter()  # level -> images without its .npy
    tally = Tally()
    rows: list[Row] = []
    levels: set[str] = set()
    listed = {f.path for f in unreadable}
    threads = workers or min(8, usable_cores())
    with ThreadPoolExecutor(threads) as pool:
        work = functools.partial(_process_item, found=found, thumbs=build / "thumbs",
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
            body = [f"<h1>{html.escape(title)}</h1>", summary, scale_note_html(scale, ranges)]
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


def _readable_manifests(found: Extractions, keys: list[str], unreadable: list[Failure]):
    """The manifests of ``keys`` that can be read; the others go to ``unreadable``."""
    for key in keys:
        try:
            yield found.manifest(key)
        except (ValueError, OSError) as e:
            unreadable.append(Failure(key, error_text(e)))
