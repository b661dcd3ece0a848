"""Text for messages: an error on one line, a file name quoted when it holds control characters or
bytes that are not UTF-8, a name made valid UTF-8, and what kind of file a mode is.

- ``error_text`` / ``one_line``: an error's message on one line, at most ``ONE_LINE_LIMIT``
  characters (a newline in a quoted file name must not cut the reason off).
- ``quote_name`` quotes a name with escapes where it could forge a second report line;
  ``utf8_text`` writes it as valid UTF-8 for HTML, Parquet strings and tar member names.
- ``kind`` names a file's type from its mode ("a FIFO", "a folder"), for refusals.
"""

from __future__ import annotations

import stat
import unicodedata

__all__ = [
    "kind",
    "error_text",
    "ONE_LINE_LIMIT",
    "one_line",
    "quote_name",
    "utf8_text",
]


def kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
        (stat.S_ISLNK, "a symlink"),  # (an lstat's)
    ):  # fmt: skip
        if test(mode):
            return name
    return "a special file"


def error_text(error: BaseException) -> str:
    """An error's message on one line (``one_line``), or its type's name where it has none."""
    return one_line(str(error)) or type(error).__name__


#: The longest error line ``one_line`` gives (by default).
ONE_LINE_LIMIT = 500


def one_line(text: str, limit: int = ONE_LINE_LIMIT) -> str:
    """An error message as one line: its lines joined with a literal ``\\n`` (a newline in a
    file name it quotes must not cut the reason off after the name), at most ``limit``
    characters."""
    line = "\\n".join(part.rstrip() for part in text.strip().splitlines())
    return line if len(line) <= limit else line[: limit - 1] + "\u2026"


def quote_name(text: str) -> str:
    """``text`` as is, or quoted with escapes when it holds control characters (a newline in a
    file name must not forge a second report line) or bytes that are not UTF-8 (which no
    UTF-8 terminal or log could take: ``os.fsdecode`` keeps them as lone surrogates)."""
    odd = ("Cc", "Cf", "Zl", "Zp", "Cs")
    if not any(unicodedata.category(c) in odd for c in text):
        return text
    escaped = "".join(
        c if unicodedata.category(c) not in odd else c.encode(
            "unicode_escape").decode("ascii")
        for c in text.replace("\\", "\\\\")
    )  # fmt: skip
    return f'"{escaped}"'


def utf8_text(text: str) -> str:
    """``text`` as valid UTF-8 text, for what must be UTF-8 (HTML, Parquet strings, tar member
    names): a file name's bytes that are not UTF-8, which Python holds as lone surrogates
    (``surrogateescape``), are written ``\\xNN``, the name's own bytes. Any other lone
    surrogate (from a forged manifest) makes every surrogate ``\\udNNN``."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")
