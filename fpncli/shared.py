"""A process-wide setting shared by overlapping holders (threads running models or runs at once):
made when the first of them enters and undone when the last one leaves, so that one leaving
never undoes it under another, nor leaves it in place."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["SharedSetting"]

#: What ``SharedSetting``'s ``apply`` is given: it passes what undoes the setting (puts back the
#: state it found, whatever part of the setting was made) before it changes anything.
Record = Callable[[Callable[[], None]], None]


class SharedSetting:
    """``apply(record)`` makes the setting, having first passed ``record`` what undoes it (the
    state it found put back: right whichever of its changes were made, and the same done twice).

    ``held()`` is the context manager: the first holder to enter calls ``apply``, the last to
    leave calls what it recorded; the holders are kept under a lock. Every change (a holder
    counted, the setting applied) is made inside the ``try`` whose ``finally`` undoes it and is
    recorded before it is made, so that whatever stops a holder at any point (a Ctrl-C: a
    KeyboardInterrupt lands between any two statements) leaves neither the setting made nor a
    holder counted that keeps it for the rest of the process."""

    def __init__(self, apply: Callable[[Record], None]) -> None:
        self._apply = apply
        self._lock = threading.Lock()
        self._holders: list[object] = []  # one object per holder in, told apart by identity
        self._undo: Callable[[], None] | None = None  # set while the setting is (partly) made

    @contextmanager
    def held(self) -> Iterator[None]:
        holder = object()
        try:
            with self._lock:
                if self._undo is None:
                    try:
                        self._apply(self._record)
                    except BaseException:  # undone before another holder can find it half made
                        self._leave(holder)
                        raise
                self._holders.append(holder)
            yield
        finally:
            try:
                with self._lock:
                    self._leave(holder)
            except BaseException:  # interrupted while undoing: the rest undone before it is raised
                with self._lock:
                    self._leave(holder)
                raise

    def _record(self, undo: Callable[[], None]) -> None:
        self._undo = undo

    def _leave(self, holder: object) -> None:
        """``holder`` gone (the lock held), if it was counted; the setting undone once no holder
        is left. Done again, it changes nothing: the undo is forgotten once it has run, or has
        failed with an error (the next holder applies the setting afresh), not when an interrupt
        stopped it (the retry runs it)."""
        if holder in self._holders:
            self._holders.remove(holder)
        if not self._holders and self._undo is not None:
            try:
                self._undo()
            except Exception:
                self._undo = None
                raise
            self._undo = None
