"""Schedules as they are stored: the definition, where each stands, and the store's protocol.

A schedule starts a run of a workflow at each of its ticks (a cron expression in a
time zone, or every N seconds). Its definition and its state live in one Redis
hash (``Names.schedule``), and an unpaused schedule is in the due index
(``Names.schedule_due``, scored by its next tick); every key carries the
namespace's schedules tag, so each script touches one slot. The memory store keeps
the same fields with the same rules, and one conformance suite holds both to them.

Why the state sits beside the definition: a tick is fired exactly once by
claiming the schedule (its due score moves to the end of a lease, so no other
scheduler sees it), starting the tick's run under an id derived from the schedule
and the tick (``run_id_for``: a repeated start is a duplicate), and then advancing
the schedule with a compare-and-set on the tick it claimed (``advance_schedule``).
A claimer that dies between the start and the advance leaves the lease to run
out; the next claimer starts the same run id again (nothing new) and advances.

The time arithmetic (cron, time zones, missed ticks) is the scheduler's
(``scheduler/recurrence.py``); this module only checks shapes and bounds, since a
stored hash may have been written by anyone.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

from . import codec
from .errors import InvalidArgumentError, SerializationError
from .integrity import MAX_KEY
from .names import MAX_SCHEDULE_NAME, check_run_id, check_schedule_name

MAX_SCHEDULES: Final = 10_000
"""Schedules a namespace holds at most: listing reads them all, and they share one slot."""
MAX_CALL_BYTES: Final = 64 * 1024
"""A schedule's arguments, encoded: stored in its hash and copied into every tick's run."""
MAX_CATCH_UP: Final = 100
"""Missed ticks one catch-up fires at most (``catch_up:N``)."""
MAX_CRON: Final = 200
MAX_TIMEZONE: Final = 64
MIN_EVERY_S: Final = 1
MAX_EVERY_S: Final = 366 * 86_400
RUN_ID_PREFIX: Final = "sched"
TICK_FORMAT: Final = "%Y%m%dT%H%M%SZ"

_PRINTABLE = re.compile(r"^[\x20-\x7e]+\Z")
_TIMEZONE_RE = re.compile(r"^[A-Za-z0-9_+\-/]+\Z")
_TICK_RE = re.compile(r"^[0-9]{8}T[0-9]{6}Z\Z")


class Source(enum.StrEnum):
    """Who declared a schedule: code (``lf.schedule``, synced by schedulers) or the CLI."""

    CODE = "code"
    CLI = "cli"


class Overlap(enum.StrEnum):
    """What a tick does while the run of the previous tick is still going."""

    SKIP = "skip"  # record the tick as skipped (visible), start nothing
    ALLOW = "allow"  # start the tick's run anyway


class TickOutcome(enum.StrEnum):
    """What became of a tick (the schedule's last outcome, the metric's label)."""

    STARTED = "started"
    OVERLAP = "skipped_overlap"  # overlap=skip and the previous tick's run was still active
    MISSED = "missed"  # passed while no scheduler ran, and the missed-tick policy let it go
    CONFLICT = "conflict"  # the tick's run id was taken by a run of another workflow


@dataclass(frozen=True, slots=True)
class Missed:
    """The missed-tick policy: ``skip`` (``catch_up == 0``) or catch up at most N ticks.

    A tick is missed when a later one is due too (no scheduler ran for a while), or,
    under ``skip``, when it is more than ``scheduler.recurrence.GRACE_MS`` late.
    ``skip`` fires the newest due tick if it is within that grace and no other;
    ``catch_up:N`` fires the newest N due ticks, oldest of them first.
    """

    catch_up: int = 0

    def __post_init__(self) -> None:
        count = self.catch_up
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_CATCH_UP:
            raise InvalidArgumentError(
                f"invalid missed-tick policy: catch up 0 (skip) to {MAX_CATCH_UP} ticks, "
                f"not {self.catch_up!r}"
            )

    @property
    def text(self) -> str:
        return "skip" if self.catch_up == 0 else f"catch_up:{self.catch_up}"

    @classmethod
    def parse(cls, text: object) -> Missed:
        """``skip`` or ``catch_up:N`` (``catch-up:N`` too, as the CLI spells it)."""
        if isinstance(text, str):
            if text == "skip":
                return cls()
            kind, sep, count = text.partition(":")
            digits = count.isdigit() and len(count) <= 4
            if sep and kind in ("catch_up", "catch-up") and digits and int(count) >= 1:
                return cls(int(count))
        raise InvalidArgumentError(
            f"invalid missed-tick policy {_shown(text)}: use skip or catch-up:N "
            f"(N from 1 to {MAX_CATCH_UP})"
        )


@dataclass(frozen=True, slots=True)
class ScheduleSpec:
    """A schedule's definition: what it starts, when, and its policies.

    Exactly one of ``cron`` (with ``timezone``) and ``every_s`` is set. ``call`` is
    the workflow's arguments, ``[args, kwargs]`` encoded once (``encode_call``).
    """

    name: str
    workflow: str
    call: bytes
    cron: str = ""
    timezone: str = "UTC"
    every_s: int = 0
    missed: Missed = Missed()
    overlap: Overlap = Overlap.SKIP
    source: Source = Source.CLI

    def __post_init__(self) -> None:
        check_spec(self)
        # Plain strings of the enums' values are taken (and kept as the enums).
        object.__setattr__(self, "overlap", Overlap(self.overlap))
        object.__setattr__(self, "source", Source(self.source))

    @property
    def when(self) -> str:
        """The recurrence as people read it: ``0 3 * * * (Europe/Berlin)`` or ``every 30s``."""
        if self.every_s:
            return f"every {self.every_s}s"
        return f"{self.cron} ({self.timezone})"

    def fields(self) -> dict[str, str | bytes]:
        """The definition's fields of the schedule's hash (the state's are the stores')."""
        return {
            WORKFLOW: self.workflow,
            CALL: self.call,
            CRON: self.cron,
            TIMEZONE: self.timezone,
            EVERY: str(self.every_s),
            MISSED: self.missed.text,
            OVERLAP: self.overlap.value,
            SOURCE: self.source.value,
        }

    def arguments(self) -> tuple[list[Any], dict[str, Any]]:
        """The workflow's positional and keyword arguments, decoded."""
        return decode_call(self.call, self.name)


# The hash's fields. Definition (written by put_schedule):
WORKFLOW, CALL, CRON, TIMEZONE, EVERY = "workflow", "call", "cron", "tz", "every"
MISSED, OVERLAP, SOURCE = "missed", "overlap", "source"
RECURRENCE_FIELDS: Final = (CRON, TIMEZONE, EVERY)
"""A change to any of these moves the next tick (the others keep it)."""
# State (written by the scripts):
CREATED, UPDATED, PAUSED, NEXT, PLAN = "created", "updated", "paused", "next", "plan"
TICK, OUTCOME, RUN, ACTED = "tick", "outcome", "run", "acted"
RUNS, MISSED_COUNT, OVERLAP_COUNT, MISSED_TICK = "runs", "missed_n", "overlap_n", "missed_tick"


def check_spec(spec: ScheduleSpec) -> None:
    """The shapes and bounds of a definition, wherever it comes from (code, CLI, Redis)."""
    check_schedule_name(spec.name)
    workflow = spec.workflow
    if not isinstance(workflow, str) or not workflow or len(workflow.encode()) > MAX_KEY:
        raise InvalidArgumentError(
            f"schedule {spec.name!r}: invalid workflow name {_shown(workflow)} (1-{MAX_KEY} bytes)"
        )
    if not workflow.isprintable():
        raise InvalidArgumentError(
            f"schedule {spec.name!r}: workflow name {_shown(workflow)} holds characters "
            "that are not printable"
        )
    if not isinstance(spec.call, bytes) or len(spec.call) > MAX_CALL_BYTES:
        raise InvalidArgumentError(
            f"schedule {spec.name!r}: its arguments are over {MAX_CALL_BYTES} bytes encoded"
        )
    if bool(spec.cron) == bool(spec.every_s):
        raise InvalidArgumentError(
            f"schedule {spec.name!r}: give either a cron expression or an interval (every), "
            "not both or neither"
        )
    if spec.cron and (len(spec.cron) > MAX_CRON or not _PRINTABLE.match(spec.cron)):
        raise InvalidArgumentError(
            f"schedule {spec.name!r}: invalid cron expression {_shown(spec.cron)} "
            f"(at most {MAX_CRON} printable characters)"
        )
    check_timezone_name(spec.timezone)
    every = spec.every_s
    if not isinstance(every, int) or isinstance(every, bool):
        raise InvalidArgumentError(f"schedule {spec.name!r}: the interval is not whole seconds")
    if every and not MIN_EVERY_S <= every <= MAX_EVERY_S:
        raise InvalidArgumentError(
            f"schedule {spec.name!r}: the interval must be {MIN_EVERY_S} s to "
            f"{MAX_EVERY_S // 86_400} days, not {every} s"
        )
    if not isinstance(spec.missed, Missed):
        raise InvalidArgumentError(f"schedule {spec.name!r}: invalid missed-tick policy")
    if not isinstance(spec.overlap, str) or spec.overlap not in _OVERLAPS:
        raise InvalidArgumentError(
            f"schedule {spec.name!r}: invalid overlap policy {_shown(spec.overlap)}: "
            "use skip or allow"
        )
    if not isinstance(spec.source, str) or spec.source not in _SOURCES:
        raise InvalidArgumentError(f"schedule {spec.name!r}: invalid source {_shown(spec.source)}")


_OVERLAPS = frozenset(o.value for o in Overlap)
_SOURCES = frozenset(s.value for s in Source)


def check_timezone_name(name: object) -> str:
    """The shape of an IANA zone name (``Europe/Berlin``); whether it exists is zoneinfo's."""
    if (
        isinstance(name, str)
        and 0 < len(name) <= MAX_TIMEZONE
        and _TIMEZONE_RE.match(name)
        and not name.startswith("/")
        and ".." not in name
    ):
        return name
    raise InvalidArgumentError(
        f"invalid time zone {_shown(name)}: use an IANA name such as Europe/Berlin or UTC"
    )


def encode_call(name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> bytes:
    """A schedule's arguments as stored: ``[args, kwargs]``, at most ``MAX_CALL_BYTES``."""
    return codec.encode(
        [list(args), dict(kwargs)],
        what=f"arguments of schedule {name!r}",
        max_size=MAX_CALL_BYTES,
        envelope=2,
    )


def decode_call(call: bytes, name: str) -> tuple[list[Any], dict[str, Any]]:
    value = codec.decode(call, what=f"arguments of schedule {name!r}", max_size=MAX_CALL_BYTES)
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not isinstance(value[0], list)
        or not isinstance(value[1], dict)
        or not all(isinstance(k, str) for k in value[1])
    ):
        raise SerializationError(f"arguments of schedule {name!r} are not [args, kwargs]")
    return value[0], value[1]


def tick_text(tick_ms: int) -> str:
    """A tick as it appears in run ids: UTC, to the second (``20260329T010000Z``)."""
    return dt.datetime.fromtimestamp(tick_ms // 1000, dt.UTC).strftime(TICK_FORMAT)


def run_id_for(name: str, tick_ms: int) -> str:
    """The run a schedule's tick starts: ``sched:<name>:<tick>``, the same for every scheduler.

    Ticks are whole seconds (cron's finest field, and intervals of whole seconds), so
    the id names the tick exactly; starting it twice records nothing new.
    """
    return check_run_id(f"{RUN_ID_PREFIX}:{check_schedule_name(name)}:{tick_text(tick_ms)}")


def parse_run_id(run_id: str) -> tuple[str, int] | None:
    """(schedule name, tick ms) of a run id ``run_id_for`` made; None for any other id."""
    prefix, _, rest = run_id.partition(":")
    name, _, tick = rest.partition(":")
    if prefix != RUN_ID_PREFIX or not _TICK_RE.match(tick) or len(name) > MAX_SCHEDULE_NAME:
        return None
    try:
        check_schedule_name(name)
        when = dt.datetime.strptime(tick, TICK_FORMAT).replace(tzinfo=dt.UTC)
    except (InvalidArgumentError, ValueError):
        return None
    return name, int(when.timestamp()) * 1000


@dataclass(frozen=True, slots=True)
class Schedule:
    """A stored schedule: its definition and where it stands."""

    spec: ScheduleSpec
    paused: bool
    next_ms: int
    """The next tick to act on (it may be past: a scheduler will act on it)."""
    plan_ms: int = 0
    """Ticks up to this one are committed to fire (a catch-up); 0: none."""
    last_tick_ms: int | None = None
    last_outcome: TickOutcome | None = None
    last_run: str | None = None
    """The run id the schedule last started (the overlap check looks at it)."""
    acted_ms: int | None = None
    """When the last tick was acted on (the Redis clock): minus its tick, how late."""
    runs: int = 0
    missed: int = 0
    overlapped: int = 0
    missed_tick_ms: int | None = None
    """The newest tick the missed-tick policy let go, if any."""
    created_ms: int = 0
    updated_ms: int = 0

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A stored schedule that is not one (written around ledgerflow, or damaged)."""

    name: str
    error: str


@dataclass(frozen=True, slots=True)
class Advance:
    """What a claimer records when it has acted on a schedule (a compare-and-set on ``next``).

    With ``tick_ms``, the tick it acted on and what became of it; without, a
    commitment to a catch-up (``plan_ms``) and the ticks it let go (``missed``).
    """

    next_ms: int
    plan_ms: int = 0
    tick_ms: int | None = None
    outcome: TickOutcome | None = None
    run_id: str | None = None
    missed: int = 0
    missed_tick_ms: int | None = None

    def args(self) -> list[str]:
        """The advance script's arguments after the name and the expected tick."""
        return [
            str(self.next_ms),
            str(self.plan_ms),
            "" if self.tick_ms is None else str(self.tick_ms),
            "" if self.outcome is None else self.outcome.value,
            self.run_id or "",
            "1" if self.outcome is TickOutcome.STARTED else "0",
            str(self.missed),
            "1" if self.outcome is TickOutcome.OVERLAP else "0",
            "" if self.missed_tick_ms is None else str(self.missed_tick_ms),
        ]


class PutOutcome(enum.StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


@dataclass(frozen=True, slots=True)
class PutResult:
    outcome: PutOutcome
    previous_source: Source | None = None
    """Who had declared the schedule before this put (None: it is new)."""


@dataclass(frozen=True, slots=True)
class Claimed:
    """What one claim took: due schedules, now leased to the caller."""

    now_ms: int
    """The store's clock at the claim."""
    names: list[str]
    earliest_ms: int | None
    """The earliest due score left in the index after the claim (None: it is empty)."""


def decode_schedule(name: str, raw: Mapping[Any, Any]) -> Schedule | Unreadable:
    """A stored hash as a ``Schedule``, every field checked; ``Unreadable`` says what is wrong."""
    fields = {_text(k): v for k, v in raw.items()}
    try:
        spec = ScheduleSpec(
            name=name,
            workflow=_field(fields, WORKFLOW),
            call=_bytes(fields.get(CALL)),
            cron=_field(fields, CRON, ""),
            timezone=_field(fields, TIMEZONE),
            every_s=_int(fields, EVERY),
            missed=Missed.parse(_field(fields, MISSED)),
            overlap=_member(Overlap, _field(fields, OVERLAP), "overlap policy"),
            source=_member(Source, _field(fields, SOURCE), "source"),
        )
        last_run = _field(fields, RUN, "") or None
        if last_run is not None:
            check_run_id(last_run)
        outcome = _field(fields, OUTCOME, "")
        last_outcome = _member(TickOutcome, outcome, "outcome") if outcome else None
        return Schedule(
            spec=spec,
            paused=_field(fields, PAUSED, "0") == "1",
            next_ms=_int(fields, NEXT),
            plan_ms=_int(fields, PLAN, 0),
            last_tick_ms=_int(fields, TICK, 0) or None,
            last_outcome=last_outcome,
            last_run=last_run,
            acted_ms=_int(fields, ACTED, 0) or None,
            runs=_int(fields, RUNS, 0),
            missed=_int(fields, MISSED_COUNT, 0),
            overlapped=_int(fields, OVERLAP_COUNT, 0),
            missed_tick_ms=_int(fields, MISSED_TICK, 0) or None,
            created_ms=_int(fields, CREATED, 0),
            updated_ms=_int(fields, UPDATED, 0),
        )
    except (InvalidArgumentError, ValueError, UnicodeDecodeError) as exc:
        return Unreadable(name, str(exc))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


E = TypeVar("E", bound=enum.StrEnum)


def _member(kind: type[E], text: str, what: str) -> E:
    for member in kind:
        if member.value == text:
            return member
    raise InvalidArgumentError(f"invalid {what} {_shown(text)}")


def _bytes(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if not isinstance(value, bytes):
        raise ValueError("its arguments are missing")
    return value


def _field(fields: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = fields.get(key)
    if value is None:
        if default is None:
            raise ValueError(f"field {key!r} is missing")
        return default
    text = _text(value)
    if len(text) > MAX_KEY:
        raise ValueError(f"field {key!r} is over {MAX_KEY} characters")
    return text


def _int(fields: Mapping[str, Any], key: str, default: int | None = None) -> int:
    text = _field(fields, key, None if default is None else str(default))
    if not text.isdigit() or len(text) > 16:
        raise ValueError(f"field {key!r} is not a whole number: {text[:40]!r}")
    return int(text)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"


class ScheduleStore(Protocol):
    """Where schedules are kept: the event store of the namespace (Redis or memory)."""

    @abstractmethod
    async def put_schedule(
        self, spec: ScheduleSpec, *, next_ms: int, replace: bool = False
    ) -> PutResult:
        """Create a schedule (due at ``next_ms``), or with ``replace`` overwrite its definition.

        Replacing keeps where it stands (paused, counters) and its next tick, unless
        the recurrence changed: then it is due at ``next_ms``. Without ``replace`` an
        existing name raises ``ScheduleExistsError``; a namespace holding
        ``MAX_SCHEDULES`` refuses a new one (``InvalidArgumentError``).
        """

    @abstractmethod
    async def read_schedules(
        self, names: Sequence[str] | None = None
    ) -> list[Schedule | Unreadable]:
        """These schedules (those that exist), or with None every one; sorted by name."""

    @abstractmethod
    async def delete_schedule(self, name: str) -> bool:
        """Remove a schedule; False if there was none. Runs it started are not touched."""

    @abstractmethod
    async def pause_schedule(self, name: str, *, paused: bool, next_ms: int) -> bool:
        """Pause (out of the due index), or resume due at ``next_ms``; False if it already was.

        Raises ``ScheduleNotFoundError``.
        """

    @abstractmethod
    async def claim_schedules(self, limit: int, lease_ms: int) -> Claimed:
        """Due schedules, each leased to the caller for ``lease_ms`` (due again if it dies)."""

    @abstractmethod
    async def advance_schedule(self, name: str, expected_next: int, advance: Advance) -> bool:
        """Record ``advance`` if the schedule's next tick is still ``expected_next``.

        False if it moved (another claimer advanced it, or its recurrence changed) or
        the schedule is gone. A paused schedule is left out of the due index.
        """

    @abstractmethod
    async def drop_schedule_claim(self, name: str) -> None:
        """Take a claimed name that has no readable schedule out of the due index."""

    @abstractmethod
    async def schedule_lag(self) -> int:
        """How long (ms) the most overdue unpaused schedule has been due; 0 if none is."""
