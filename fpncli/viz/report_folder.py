"""Where ``fpncli report`` writes, and how a new report replaces the previous one.

A report's first page is ``ROOT/report.html`` and its assets ``ROOT/report/`` unless something
a report did not make holds either name (``report_place``: then ``report_2.html``, ...). The
assets are built in a hidden folder (``build_folder``) and swapped in with the first page
(``swap_in``), so a report that fails midway leaves the previous one whole; nothing a report
did not make is written over or deleted (``is_report_page``, ``is_report_folder``).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
from pathlib import Path

from ..io.atomic import TMP_MARK, atomic_write_bytes, stale_temporary
from ..io.markers import REPORT_MARKER
from .report_html import GENERATOR

__all__ = [
    "REPORT", "REPORT_ASSETS", "is_report_folder", "is_report_page", "report_place",
    "build_folder", "swap_in",
]  # fmt: skip

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


def is_report_folder(folder: Path) -> bool:
    """Whether ``folder`` is a report's asset folder: marked by one, or (an earlier version's)
    holding nothing but what a report writes, ``thumbs/`` included (a user's folder of pictures
    called ``report/thumbs`` is not). An image's output folder never is."""
    if (folder / REPORT_MARKER).is_file():
        return True
    return _holds_only(folder, _REPORT_FILES, "thumbs") and (
        not os.path.lexists(folder / "thumbs") or _holds_only(folder / "thumbs", _THUMB_FILES)
    )


def is_report_page(path: Path) -> bool:
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


def report_place(root: Path) -> tuple[str, str]:
    """The first page's name and the asset folder's: ``report.html`` and ``report/``, unless
    something a report did not make (an image's output folder, say, of an input called
    ``report.jpg`` extracted by an earlier version, or a page of the user's own: one that is not
    a report's, ``is_report_page``) holds either name: then ``report_2.html`` and
    ``report_2/``, and so on. Nothing a report did not make is written over or deleted."""
    for n in range(1, 1000):
        suffix = "" if n == 1 else f"_{n}"
        page, assets = root / f"{REPORT_ASSETS}{suffix}.html", root / f"{REPORT_ASSETS}{suffix}"
        page_free = not os.path.lexists(page) or is_report_page(page)
        assets_free = not os.path.lexists(assets) or (
            assets.is_dir() and not assets.is_symlink() and is_report_folder(assets)
        )
        if page_free and assets_free:
            if n > 1:
                log.warning("report: %s/%s or %s/%s is not a report's (an image's outputs?): "
                            "writing %s and %s/ instead", root, REPORT, root, REPORT_ASSETS,
                            page.name, assets.name)  # fmt: skip
            return page.name, assets.name
    raise ValueError(f"{root}: report.html, report/ and 998 alternatives are all taken")


def build_folder(root: Path, assets_name: str) -> Path:
    """A new, marked, hidden folder in ``root`` for a report's assets (held locked): built there
    in full, then swapped in for ``assets_name`` (``swap_in``), so that a report that fails
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


def swap_in(build: Path, assets: Path, first: Path, first_page: bytes) -> None:
    """Make ``build`` the asset folder ``assets`` and write the first page that links into it;
    the previous asset folder is deleted only once both are in place (put back if the page
    cannot be written)."""
    if os.path.lexists(first) and not is_report_page(first):  # made meanwhile by something else
        raise ValueError(f"{first} is not a report's page: move it away")
    old = None
    if os.path.lexists(assets):
        if not is_report_folder(assets):  # made meanwhile by something else
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
