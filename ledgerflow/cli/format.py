"""Output helpers the runbook commands share: tables, times, JSON, a progress bar.

Operators read these at 3 a.m. in a terminal, and scripts parse the ``--json``
form, so tables go to stdout, the progress bar only to a terminal's stderr
(never into a pipe or a test's captured output), and JSON is one document.

Run ids, step names, error messages and dead-letter reasons are stored data
that anyone able to start a run or publish a message chose. Every such value
goes through ``printable`` before it reaches a terminal, so an escape sequence
in it cannot clear the screen, rewrite an earlier line, retitle the window or
reorder text with a bidi override. (The ``--json`` forms need nothing more:
``json.dumps`` escapes every control and non-ASCII character.)
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from ledgerflow.eventlog.jsonview import view

_CELL_LIMIT = 48

# C0 and C1 controls (ESC, CR, BS, NEL, CSI ...), DEL, the invisible format
# characters that reorder or hide text (bidi embeddings, overrides and isolates,
# zero-width marks), line and paragraph separators, and lone surrogates (which
# would make ``print`` raise instead of print).
_UNPRINTABLE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ud800-\udfff]"
)
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns as wide as their widest cell (long cells cut with '...')."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, text in enumerate(row):
            widths[i] = max(widths[i], len(text))
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()
    out = [line, "-" * len(line)]
    for row in cells:
        out.append("  ".join(t.ljust(w) for t, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(out)


def _cell(value: Any) -> str:
    text = "" if value is None else printable(value)
    return text if len(text) <= _CELL_LIMIT else text[: _CELL_LIMIT - 3] + "..."


def printable(value: object) -> str:
    """``str(value)`` safe for a terminal, on one line: control characters shown escaped.

    ``\\x1b[2J`` prints as the six characters ``\\x1b[2J``, a newline as ``\\n``, a
    right-to-left override as ``\\u202e``. Printable text, other languages included,
    is left alone.
    """
    text = value if isinstance(value, str) else str(value)
    return _UNPRINTABLE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED_ESCAPES.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def iso(ms: int | None) -> str:
    """UTC, to the second: servers and operators may sit in different time zones."""
    if not ms:
        return ""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def iso_json(ms: int | None) -> str | None:
    if not ms:
        return None
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds")


def age(ms: int | None, now_ms: int) -> str:
    """How long ago, in the two largest units: '3d4h', '12m5s', '40s'."""
    if not ms:
        return ""
    seconds = max(0, (now_ms - ms) // 1000)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def json_default(value: Any) -> Any:
    """What json cannot encode by itself, as the one JSON view of event data shows it."""
    return view(value)


def dump(value: Any) -> None:
    print(json.dumps(value, default=json_default, indent=2))


class Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None) -> None:
        self.total = total
        self.label = label
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = total > 1 and self.stream.isatty()

    def advance(self, step: int = 1) -> None:
        self.done += step
        if not self.enabled:
            return
        width = 30
        filled = int(width * self.done / max(self.total, 1))
        bar = "#" * filled + "." * (width - filled)
        self.stream.write(f"\r{self.label} [{bar}] {self.done}/{self.total}")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
