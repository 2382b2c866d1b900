"""Bounding free text before it is recorded or sent.

Exception messages, cancel reasons and dead-letter reasons come from callers
and step code, so their size is theirs to choose: an 8 MB message recorded as
is would be copied into every event that quotes it. ``clip`` keeps the start
and the end (where the useful part of a message or a traceback usually is)
and says how much was cut, so a reader knows the text is not whole.
"""

from __future__ import annotations

from typing import Final

MAX_MESSAGE: Final = 4000
"""An exception message, a cancel reason: enough for any message meant for people."""

MAX_NAME: Final = 300
"""A type name: a module path and a qualified class name."""

MAX_REASON: Final = 1000
"""A dead-letter reason, sent in a message header (headers share one AMQP frame)."""


def clip(text: str, limit: int) -> str:
    """``text`` if it fits in ``limit`` characters, else its head and tail around a marker.

    The result never exceeds ``limit`` (for any limit of at least 80), and the
    marker says how many characters were cut so nobody mistakes it for the
    whole text.
    """
    if len(text) <= limit:
        return text
    marker = f"\n[... {{cut}} of {len(text)} characters cut ...]\n"
    room = max(0, limit - len(marker.format(cut=len(text))))
    head = room // 2
    tail = room - head
    cut = len(text) - head - tail
    return f"{text[:head]}{marker.format(cut=cut)}{text[len(text) - tail :] if tail else ''}"


def safe_str(value: object) -> str:
    """``str(value)``, or a placeholder when its ``__str__`` raises (user code may)."""
    try:
        return str(value)
    except Exception as exc:  # a broken __str__ must not lose the failure it describes
        return f"<unprintable {type(value).__name__}: str() raised {type(exc).__name__}>"
