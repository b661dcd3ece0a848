"""The HTML of ``fpncli report``'s pages: the summary table, the per-level statistics, the
colour-scale note and the grid of thumbnails, each field of a manifest or run log escaped (it is
data), each link percent-encoded from the file's bytes.
"""

from __future__ import annotations

import collections
import html
import math
import os
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from ..io.catalog import Extractions, Failure
from ..io.formats import left_out_text
from .stats import LevelStats

__all__ = [
    "GENERATOR",
    "Row",
    "Tally",
    "grid_html",
    "nav_html",
    "order",
    "page_html",
    "scale_note_html",
    "stats_html",
    "summary_html",
]

_LEVEL_ORDER = ("stem", "res2", "res3", "res4", "res5", "p2", "p3", "p4", "p5", "p6")


@dataclass
class Row:
    key: str  # the image folder relative to OUT
    # each level of the manifest -> its thumbnail relative to OUT; None: saved without a tensor
    levels: dict[str, str | None]
    links: dict[str, str]  # level -> full-size picture relative to OUT
    input_thumb: str | None
    overview: str | None
    size: str


def order(names) -> list[str]:
    return sorted(names, key=lambda n: (_LEVEL_ORDER.index(n) if n in _LEVEL_ORDER else 99, n))


def _fmt(value: float) -> str:
    return f"{value:.4g}"


_CSS = """
body{font-family:sans-serif;margin:1.2em;color:#222}
table{border-collapse:collapse;margin:.6em 0}
td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px;vertical-align:middle}
th{background:#f0f0f0}
.grid td{text-align:center}
.grid img{display:block;margin:auto}
.banner{background:#c00;color:#fff;font-weight:bold;padding:.7em 1em;margin:.5em 0}
.nav a,.nav b{margin-right:.5em}
.muted{color:#777}
.hist{max-width:100%;height:auto}
"""


# in the head of every page a report writes: what tells its page from a user's report.html,
# which it must not write over
GENERATOR = '<meta name="generator" content="fpncli report">'


def page_html(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">{GENERATOR}'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n"
        f"<body>\n{body}\n</body></html>\n"
    )


def _href(path: str) -> str:
    """A path relative to OUT as a link: its bytes on disk percent-encoded, so a name with
    spaces, ``#`` or bytes that are not UTF-8 still leads to the real file."""
    return html.escape(urllib.parse.quote(os.fsencode(path)))


def nav_html(page: int, pages: int, prefix: str, first: str, assets: str) -> str:
    """Links to every page; ``prefix`` leads from the page's folder to OUT, where the first
    page is ``first`` and the others lie in ``assets``."""
    if pages <= 1:
        return ""
    links = []
    for p in range(1, pages + 1):
        href = f"{prefix}{first}" if p == 1 else f"{prefix}{assets}/page_{p:04d}.html"
        links.append(f"<b>{p}</b>" if p == page else f'<a href="{href}">{p}</a>')
    return f'<p class="nav">Pages: {" ".join(links)}</p>'


def grid_html(rows: list[Row], levels: list[str], prefix: str, first: int,
          thumb_height: int = 64) -> str:  # fmt: skip
    head = "".join(f"<th>{html.escape(n)}</th>" for n in levels)
    out = [f'<table class="grid"><tr><th>#</th><th>image</th><th>input</th>{head}</tr>']
    for i, row in enumerate(rows, start=first):
        name = html.escape(row.key)
        if row.overview:
            name = f'<a href="{prefix}{_href(row.overview)}">{name}</a>'
        size = html.escape(row.size)
        cells = [f"<td>{i}</td><td>{name}<br><span class=muted>{size}</span></td>"]
        if row.input_thumb:
            cells.append(f'<td><img src="{prefix}{_href(row.input_thumb)}" alt="input"></td>')
        else:
            cells.append('<td class="muted">photo gone or replaced</td>')
        for name in levels:
            thumb, link = row.levels.get(name), row.links.get(name)
            if thumb is None and name in row.levels:  # saved without .npy (--no-npy)
                picture = ""
                if link:  # its heatmap or overlay itself, at the thumbnails' height
                    alt = html.escape(link.rpartition("/")[2])
                    img = f'<img src="{prefix}{_href(link)}" alt="{alt}" height="{thumb_height}">'
                    picture = f'<a href="{prefix}{_href(link)}">{img}</a>'
                cells.append(f'<td class="muted">{picture}no tensor</td>')
                continue
            if thumb is None:
                cells.append('<td class="muted">not saved</td>')
                continue
            # a manifest's level name, escaped: check_manifest refuses one that is not an
            # identifier, and the page must not depend on it
            img = f'<img src="{prefix}{_href(thumb)}" alt="{html.escape(name)}">'
            cells.append(f'<td><a href="{prefix}{_href(link)}">{img}</a></td>' if link
                         else f"<td>{img}</td>")  # fmt: skip
        out.append(f"<tr>{''.join(cells)}</tr>")
    out.append("</table>")
    return "\n".join(out)


def _count(counts: collections.Counter) -> str:
    """The values counted, as plain text (the summary escapes it), with their counts if several."""
    if not counts:
        return "-"
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{k} ({n} images)" for k, n in sorted(counts.items()))


@dataclass
class Tally:
    """The summary's counts, one manifest at a time (no manifest is kept)."""

    images: int = 0
    random: int = 0
    bytes: int = 0
    counts: dict[str, collections.Counter] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter)
    )

    def add(self, manifest: dict, size: int) -> None:
        weights = manifest.get("weights") or {}
        self.images += 1
        self.random += bool(weights.get("random"))
        self.bytes += size
        sha = weights.get("sha256") or "-"
        self.counts["weights"][f"{weights.get('name')} (sha256 {sha})"] += 1
        for what in ("precision", "device", "fpncli_version"):
            self.counts[what][str(manifest.get(what))] += 1


def summary_html(root: Path, found: Extractions, tally: Tally, run: dict | None,
             unreadable: list[Failure], left_out: int = 0) -> str:  # fmt: skip
    parts = []
    if tally.random:
        parts.append(
            f'<div class="banner">RANDOM, UNTRAINED WEIGHTS: {tally.random} of {tally.images} '
            "images were extracted with --weights random; these maps show the architecture, not "
            "what a trained detector sees.</div>"
        )
    failed = found.failures()
    if found.format == "wds":
        n = len(found.shards())
        layout = f"{n} WebDataset tar shard{'s' * (n != 1)} and index.parquet (--format wds)"
        failed_row = ("images failed (index)", str(len(failed)))
    else:
        layout = "one folder per image" if not found.single else "one image folder"
        count = str(len(failed)) if run else "unknown (no run.json)"
        shards = f", shards: {run['shards']} logged" if run and run.get("shards") else ""
        failed_row = (f"images failed (last run{shards})", count)
    # plain text, escaped below, labels too: a run log's or a manifest's field is data, and
    # a row that forgot to escape one put its markup (a <script>) into the page
    rows = [
        ("folder", str(root)),
        ("layout", layout),
        ("images done", str(tally.images)),
        failed_row,
        *([("outputs unreadable", f"{len(unreadable)} (listed below)")] if unreadable else []),
        *([("left out", left_out_text(left_out))] if left_out else []),
        ("weights", _count(tally.counts["weights"])),
        ("precision", _count(tally.counts["precision"])),
        ("device", _count(tally.counts["device"])),
        ("bytes", f"{tally.bytes:,} ({tally.bytes / 1e6:.1f} MB)"),
        ("fpncli version", _count(tally.counts["fpncli_version"])),
        ("report by", f"fpncli {__version__}"),
    ]
    if run and run.get("aborted"):
        rows.append(("stopped early", str(run["aborted"])))
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                    for k, v in rows)  # fmt: skip
    parts.append(f"<h2>Summary</h2><table>{table}</table>")
    if failed:
        parts.append(f"<h3>Failed</h3>{_reasons('input', failed)}")
    if unreadable:
        parts.append(
            "<h3>Outputs that cannot be read</h3><p>Left out of the grid and the statistics: "
            "extract these images again (or remove their outputs).</p>"
            + _reasons("image", sorted(unreadable, key=lambda f: f.path))
        )
    return "\n".join(parts)


def _reasons(what: str, failures: list[Failure]) -> str:
    rows = "".join(f"<tr><td>{html.escape(f.path)}</td><td>{html.escape(f.reason)}</td></tr>"
                   for f in failures)  # fmt: skip
    return f"<table><tr><th>{what}</th><th>reason</th></tr>{rows}</table>"


_NO_VALUE = "\u2013"  # an en dash: a statistic of no finite value


def _finite(value: float, spec: str = "{:.4g}") -> str:
    """A statistic as the table shows it; an en dash where there is no finite value to give (a
    level whose every value is NaN or infinite read "inf -inf nan nan nan%")."""
    return spec.format(value) if math.isfinite(value) else _NO_VALUE


def _no_tensor_counts(no_tensor: dict[str, int] | None) -> str:
    """``p2 3, p4 1``: each level's images with the level but no tensor (``--no-npy``), in
    level order, escaped; ``""`` where there are none."""
    missing = {n: k for n, k in (no_tensor or {}).items() if k}
    return ", ".join(f"{html.escape(n)} {missing[n]}" for n in order(missing))


def stats_html(stats: dict[str, LevelStats], no_tensor: dict[str, int] | None = None) -> str:
    """The levels' statistics over the images whose tensor (``.npy``) was read; ``no_tensor``:
    level -> images whose manifest lists the level without one (``--no-npy``), said below."""
    head = "<tr><th>level</th><th>images with tensors</th><th>min</th><th>max</th><th>mean</th>"
    head += "<th>std</th><th>zeros</th></tr>"
    rows, dashed = [], False
    for name in order(stats):
        s = stats[name]
        cells = [_finite(s.min), _finite(s.max), _finite(s.mean), _finite(s.std),
                 _finite(100 * s.zero_fraction, "{:.3g}%")]  # fmt: skip
        dashed = dashed or _NO_VALUE in cells
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{s.images}</td>"
                    + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")  # fmt: skip
    exact = all(s.exact for s in stats.values())
    note = (
        "All values of the valid regions (padding excluded)."
        if exact
        else "min, max and mean over every value of the valid regions (padding excluded); std and "
        "the fraction of zeros from an evenly spaced sample of each image (up to 8 channels)."
    )
    if dashed:
        note += f" {_NO_VALUE}: no finite value (every value NaN or infinite)."
    if counts := _no_tensor_counts(no_tensor):
        note += (
            " Not counted: images whose manifest has the level but no tensor file (e.g. "
            f"extracted with --no-npy): {counts}."
        )
    return f"<table>{head}{''.join(rows)}</table><p class=muted>{note}</p>"


def scale_note_html(scale: str, ranges: dict | None,
                    no_tensor: collections.Counter | None = None) -> str:  # fmt: skip
    """The colour scale the thumbnails follow. ``no_tensor`` (level -> images with the level but
    no tensor, ``--no-npy``): those cells show the heatmap extract drew, on its own range, so
    under ``--scale level|shared`` the note says they do not follow the scale."""
    if ranges is None:
        return (
            "<p>Colour scale: <b>image</b> (each thumbnail on its own range, as its heatmap "
            "was drawn: the --clip percentiles of its map).</p>"
        )
    items = ", ".join(f"{html.escape(n)} {_fmt(lo)}..{_fmt(hi)}" for n, (lo, hi) in
                      ((n, ranges[n]) for n in order(ranges)))  # fmt: skip
    note = f"<p>Colour scale: <b>{html.escape(scale)}</b> (from the manifests): {items}."
    if counts := _no_tensor_counts(no_tensor):
        note += (
            " Only the thumbnails drawn from tensors follow it: the cells marked no tensor "
            f"(images extracted with --no-npy: {counts}) show the heatmap as it was drawn, on "
            "its own range."
        )
    return note + "</p>"
