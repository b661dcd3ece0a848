"""The CLI's display of a checkpoint's download (``weights.hub.download``'s ``progress``; the
library logs it instead): a one-line bar on a terminal; elsewhere (a log file, a pipe, a batch
job) a line when it starts and one per tenth, so a slow download is seen to move."""

from __future__ import annotations

import sys
import time

__all__ = ["DownloadBar"]


class DownloadBar:
    """Download progress on stderr, made by ``download`` with the label, the address and the
    size (None: unknown), then told the bytes received so far, then closed."""

    def __init__(self, label: str, url: str, total: int | None) -> None:
        self.label, self.total, self.start = label, total, time.monotonic()
        self.terminal = sys.stderr.isatty()
        self._next_line = max(1, total // 10) if total else 0  # a log's lines: each tenth
        if not self.terminal:
            size = f" ({total / 1e6:.1f} MB)" if total else ""
            sys.stderr.write(f"{label} from {url}{size}\n")
            sys.stderr.flush()

    def __call__(self, done: int) -> None:
        rate = done / max(time.monotonic() - self.start, 1e-6) / 1e6
        if not self.terminal:
            if self.total and done >= self._next_line:
                step = max(1, self.total // 10)
                self._next_line = (done // step + 1) * step
                sys.stderr.write(
                    f"{self.label}: {done / 1e6:.1f}/{self.total / 1e6:.1f} MB, {rate:.1f} MB/s\n"
                )
                sys.stderr.flush()
            return
        if self.total:
            width = 30
            filled = min(width, int(width * done / self.total))
            bar = "#" * filled + "-" * (width - filled)
            text = (
                f"\r{self.label} [{bar}] {done / 1e6:.1f}/{self.total / 1e6:.1f} MB {rate:.1f} MB/s"
            )
        else:
            text = f"\r{self.label} {done / 1e6:.1f} MB {rate:.1f} MB/s"
        sys.stderr.write(text)
        sys.stderr.flush()

    def close(self) -> None:
        if self.terminal:
            sys.stderr.write("\n")
