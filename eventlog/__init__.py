"""The foundation: events, codec, names, errors, stores and the fold."""

from .codec import decode, encode, serializable
from .events import AppendResult, Event, EventType, NewEvent
from .fold import ErrorInfo, RunState, StepState, fold
from .memory_store import MemoryEventStore
from .names import Names
from .redis_store import RedisEventStore
from .store import START, EventStore

__all__ = [
    "START",
    "AppendResult",
    "ErrorInfo",
    "Event",
    "EventStore",
    "EventType",
    "MemoryEventStore",
    "Names",
    "NewEvent",
    "RedisEventStore",
    "RunState",
    "StepState",
    "decode",
    "encode",
    "fold",
    "serializable",
]
