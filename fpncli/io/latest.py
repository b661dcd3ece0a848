"""The latest extractions, remembered for ``fpncli show`` with no target (in
``$FPNCLI_HOME``, else ``$XDG_STATE_HOME/fpncli``, else ``~/.cache/fpncli``: ``latest.json``).

Each is an image's output folder (``--format files``: the last one a run wrote) or the output of
a ``--format wds`` run: its folder, or its URL (an object store), kept as a ``str``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from .atomic import atomic_write_bytes
from .guard import read_json_file
from .manifest import is_complete
from .messages import error_text

__all__ = ["recent_extractions", "record_latest", "latest_extraction"]

log = logging.getLogger(__name__)


def _state_files() -> list[Path]:
    """Where ``latest.json`` is written, then where an earlier version wrote it, if elsewhere.

    ``$XDG_STATE_HOME`` is shared by all applications, each in its own subfolder (the XDG base
    directory spec), so fpncli's is ``$XDG_STATE_HOME/fpncli/latest.json``. Earlier versions
    wrote ``$XDG_STATE_HOME/latest.json``: it is read while the new file does not exist yet (so
    ``fpncli show`` finds the extraction made before an upgrade), never written or removed;
    what it names is checked as any record is (only a complete extraction is shown)."""
    if home := os.environ.get("FPNCLI_HOME"):  # ~ expanded, as the weights cache expands it
        return [Path(home).expanduser() / "latest.json"]
    if state := os.environ.get("XDG_STATE_HOME"):
        state = Path(state).expanduser()
        return [state / "fpncli" / "latest.json", state / "latest.json"]
    return [Path.home() / ".cache" / "fpncli" / "latest.json"]


def _state_file() -> Path:
    return _state_files()[0]


_HISTORY = 20  # recent extractions remembered, so a deleted latest falls back to an older one
_MAX_STATE_BYTES = 1 << 20


def recent_extractions() -> list[Path | str]:
    """The outputs recorded by ``record_latest``, newest first (they may since have gone);
    none when nothing is recorded or the record is damaged (``record_latest`` then writes a
    new one; ``latest_extraction`` says it is damaged)."""
    try:
        return _recorded()
    except ValueError:
        return []


def _recorded() -> list[Path | str]:
    """``recent_extractions``; fpncli's own ``latest.json`` that is there but damaged (not
    valid JSON or UTF-8, truncated, not a record: a list, no ``folder``, not a regular file) is
    a one-line ValueError naming it. The file an earlier version wrote, in a folder that all
    applications share (``_state_files``), may be another application's: one that is not such
    a record counts as nothing recorded."""

    def damaged(path: Path, why: str) -> ValueError:
        return ValueError(f"{path} is damaged ({why}): name a TARGET or extract again")

    own, *earlier = _state_files()
    for path in (own, *earlier):
        try:
            state = _read_record(path)
        except FileNotFoundError:  # none recorded here: an earlier version's place, if any
            continue
        except ValueError as e:
            if path != own:  # not fpncli's, or not a record of it: nothing recorded
                return []
            raise damaged(path, str(e)) from None
        break
    else:
        return []
    history = state.get("history")
    folders = [state.get("folder"), *(history if isinstance(history, list) else ())]
    seen, recent = set(), []
    for folder in folders:
        if isinstance(folder, str) and folder and folder not in seen:
            seen.add(folder)
            recent.append(folder if _is_url(folder) else Path(folder))
    return recent


def _is_url(output: Path | str) -> bool:
    """Whether ``output`` is a URL (a ``--format wds`` output in an object store), which a
    ``Path`` would mangle (``s3://b/x`` is ``s3:/b/x``)."""
    return isinstance(output, str) and "://" in output


def _read_record(path: Path) -> dict:
    """The record in ``path``: FileNotFoundError when there is none; ValueError saying why it
    is no record (not a regular file, unreadable, not JSON or UTF-8, not a dict with a
    ``folder``)."""
    try:
        state = read_json_file(path, _MAX_STATE_BYTES)
    except FileNotFoundError:
        raise
    except ValueError as e:  # not JSON (nor UTF-8); not a regular file (open_regular's)
        why = error_text(e)
        raise ValueError(why.removeprefix(f"{path}: ") if why.startswith(f"{path}: ") else (
            f"not valid JSON: {why}")) from None  # fmt: skip
    except OSError as e:
        raise ValueError(e.strerror or error_text(e)) from None
    if not isinstance(state, dict):
        raise ValueError(f"it holds a {type(state).__name__}, not a record")
    if not (isinstance(state.get("folder"), str) and state["folder"]):
        raise ValueError("it records no 'folder'")
    return state


def record_latest(folder: Path | str) -> None:
    """Remember ``folder`` as the most recent extraction (for ``fpncli show`` with no target),
    keeping the previous ones so a latest that was deleted falls back to the newest left:
    an image's output folder, or a ``--format wds`` output (a folder, or a URL kept as it is)."""
    state = _state_file()
    if str(folder).startswith("file://"):  # a local folder: file://W is W of this folder
        folder = str(folder)[len("file://") :]
    newest = folder if _is_url(folder) else str(Path(folder).resolve())
    history = [str(p) for p in recent_extractions() if str(p) != newest][: _HISTORY - 1]
    try:
        state.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps({"folder": newest, "history": history}).encode()
        atomic_write_bytes(state, data)
    except OSError as e:  # a read-only home must not fail an extraction
        log.warning("could not record the latest extraction in %s: %s", state, e)


def latest_extraction() -> Path | str:
    """The most recently completed output folder that still exists (complete), or the ``--format
    wds`` output that still holds an index (a URL, which is not looked up: reading it says
    what it holds); the recorded latest may have been deleted, then the newest one left is
    returned. FileNotFoundError when there is none; ValueError (one line naming it) when
    ``latest.json`` is damaged."""
    from .catalog import is_sharded

    recent = _recorded()
    if not recent:
        raise FileNotFoundError(
            "no previous extraction recorded: run 'fpncli extract IMAGE' first, or name a TARGET"
        )
    for folder in recent:
        if _is_url(folder) or is_complete(folder) or is_sharded(folder):
            if folder != recent[0]:
                log.warning("the latest extraction %s is gone; showing %s", recent[0], folder)
            return folder
    earlier = (f"so are the {len(recent) - 1} before it" if len(recent) > 1
               else "no earlier extraction is recorded")  # fmt: skip
    raise FileNotFoundError(
        f"the latest extraction {recent[0]} is gone or incomplete, and {earlier}: name a TARGET"
    )
