"""A process-wide setting shared by overlapping holders (threads running models or runs at once):
made when the first of them enters and undone when the last one leaves, so that one leaving
never undoes it under another, nor leaves it in place."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["SharedSetting"]


class SharedSetting:
    """``apply()`` makes the setting and returns what undoes it (the state it found put back).

    ``held()`` is the context manager: the first holder to enter calls ``apply``, the last to
    leave calls what it returned; the holders are counted under a lock."""

    def __init__(self, apply: Callable[[], Callable[[], None]]) -> None:
        self._apply = apply
        self._lock = threading.Lock()
        self._holders = 0
        self._undo: Callable[[], None] | None = None

    @contextmanager
    def held(self) -> Iterator[None]:
        with self._lock:
            if self._holders == 0:
                self._undo = self._apply()
            self._holders += 1
        try:
            yield
        finally:
            with self._lock:
                self._holders -= 1
                if self._holders == 0:
                    undo, self._undo = self._undo, None
                    undo()
