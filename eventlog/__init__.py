"""The foundation: events, codec, names, errors, stores and the fold."""

from .codec import decode, encode, serializable
from .events import AppendResult, Event, EventType, NewEvent
from .fold import ErrorInfo, RunState, StepState, fold
from .memory_store import MemoryEventStore
from .names import Names
from .redis_store import RedisEventStore
from .store import (
    START,
    EventLog,
    EventStore,
    Maintenance,
    Presence,
    RunIndex,
    RunLog,
    TimerIndex,
)

__all__ = [
    "START",
    "AppendResult",
    "ErrorInfo",
    "Event",
    "EventLog",
    "EventStore",
    "EventType",
    "Maintenance",
    "MemoryEventStore",
    "Names",
    "NewEvent",
    "Presence",
    "RedisEventStore",
    "RunIndex",
    "RunLog",
    "RunState",
    "StepState",
    "TimerIndex",
    "decode",
    "encode",
    "fold",
    "serializable",
]
