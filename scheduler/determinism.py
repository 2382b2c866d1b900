"""Replay-safe stand-ins for the clock and randomness inside workflow code.

Inside a workflow they return values derived from the log (the time of the
event being replayed, a sequence seeded by the run id), so replay sees the same
values the first execution saw. Outside a workflow they are the real thing.
"""

from __future__ import annotations

import datetime as dt
import random as _random
import uuid as _uuid

from .context import current_instance


def now() -> dt.datetime:
    """The workflow's current time (UTC): the timestamp of the event being processed."""
    instance = current_instance.get()
    return instance.now() if instance is not None else dt.datetime.now(dt.UTC)


def uuid4() -> _uuid.UUID:
    instance = current_instance.get()
    return instance.uuid4() if instance is not None else _uuid.uuid4()


def random() -> float:
    instance = current_instance.get()
    return instance.random() if instance is not None else _random.random()
