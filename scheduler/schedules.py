"""Schedules: declared in code with ``lf.schedule``, or managed in Redis by the CLI.

A schedule starts a run of a workflow at each tick of a cron expression (in an
IANA time zone) or of an interval; ``scheduler/schedule_loop.py`` fires the ticks,
``scheduler/recurrence.py`` says when they fall.

Code and Redis: a schedule declared in code (``lf.schedule`` at import of the app
module) is owned by the code. Each scheduler that starts with the app writes the
code's definitions into Redis (``sync_declared``): the code wins over whatever the
stored one says, a CLI-added schedule of the same name included, and code-declared
schedules the code no longer declares are deleted. Only the definition is the
code's: where a schedule stands (paused, its next tick, its counters) survives a
deploy, so ``ledgerflow schedules pause`` holds across restarts; a changed
recurrence moves the next tick to the first one after now. Schedules added with
``ledgerflow schedules add`` live only in Redis and are never touched by a sync.
"""

from __future__ import annotations

import datetime as dt
import math
from abc import abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from ledgerflow.eventlog.errors import (
    ConfigurationError,
    InvalidArgumentError,
    ScheduleNotFoundError,
)
from ledgerflow.eventlog.names import SCHEDULE_NAME_CHARS, SCHEDULE_NAME_RE
from ledgerflow.eventlog.schedules import (
    MAX_EVERY_S,
    Missed,
    Overlap,
    PutOutcome,
    PutResult,
    Schedule,
    ScheduleSpec,
    ScheduleStore,
    Source,
    encode_call,
)

from .recurrence import Recurrence
from .registry import WorkflowDef, WorkflowFunction, WorkflowRegistry, workflows

log = structlog.get_logger("ledgerflow.schedules")


class ScheduleRegistry:
    """The schedules this process's code declares, by name."""

    def __init__(self) -> None:
        self._items: dict[str, ScheduleSpec] = {}

    def add(self, spec: ScheduleSpec) -> None:
        existing = self._items.get(spec.name)
        if existing is not None and existing != spec:
            raise ConfigurationError(
                f"two different schedules are declared as {spec.name!r}: pass name= to one"
            )
        self._items[spec.name] = spec

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[ScheduleSpec]:
        return iter(list(self._items.values()))

    def __len__(self) -> int:
        return len(self._items)

    def names(self) -> list[str]:
        return sorted(self._items)


schedules = ScheduleRegistry()
"""What ``lf.schedule`` declares; schedulers started from the CLI (and ``lf.embedded``) sync it."""


def schedule(
    workflow: WorkflowFunction[..., Any] | str,
    *,
    cron: str | None = None,
    every: dt.timedelta | float | None = None,
    timezone: str | None = None,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    name: str | None = None,
    catch_up: int = 0,
    overlap: str = "skip",
) -> ScheduleSpec:
    """Start a run of ``workflow`` at each tick: ``cron`` in ``timezone``, or ``every``.

    Declared at import of the app module, like ``@lf.workflow``; schedulers write it
    into Redis when they start (the module docstring says how code and Redis
    agree). ``name`` defaults to the workflow's name. ``catch_up``: after downtime,
    how many missed ticks to fire (the newest, at most 100; 0, the default, fires
    none but a tick at most a minute late). ``overlap``: ``"skip"`` (the default)
    records a tick as skipped while the previous tick's run is still going,
    ``"allow"`` starts it anyway. Anything wrong is a ConfigurationError, at import.
    """
    try:
        spec = build_spec(
            name,
            workflow,
            cron=cron,
            every=every,
            timezone=timezone,
            args=args,
            kwargs=kwargs,
            missed=Missed(catch_up),
            overlap=overlap,
            source=Source.CODE,
        )
    except (InvalidArgumentError, TypeError) as exc:
        raise ConfigurationError(f"lf.schedule: {exc}") from None
    schedules.add(spec)
    return spec


def build_spec(
    name: str | None,
    workflow: WorkflowFunction[..., Any] | str,
    *,
    cron: str | None = None,
    every: dt.timedelta | float | None = None,
    timezone: str | None = None,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    missed: Missed | None = None,
    overlap: str = "skip",
    source: Source = Source.CLI,
    registry: WorkflowRegistry = workflows,
) -> ScheduleSpec:
    """A checked definition: the name, the arguments against the workflow's signature
    (when this process knows the workflow), a cron expression that parses and fires in
    a time zone that exists, or an interval of whole seconds. InvalidArgumentError
    (TypeError for arguments that do not fit the workflow) names what is wrong."""
    definition: WorkflowDef | None
    if isinstance(workflow, WorkflowFunction):
        definition = workflow.definition
    elif isinstance(workflow, str):
        definition = registry.find(workflow)
    else:
        raise InvalidArgumentError(
            f"schedule: workflow must be an @lf.workflow function or its name, not "
            f"{type(workflow).__name__}"
        )
    workflow_name = definition.name if definition is not None else str(workflow)
    chosen = name if name is not None else workflow_name
    if name is None and not SCHEDULE_NAME_RE.match(chosen):
        raise InvalidArgumentError(
            f"the workflow's name {chosen!r} is not a schedule name ({SCHEDULE_NAME_CHARS}, "
            "at most 64): pass name="
        )
    call_kwargs = dict(kwargs or {})
    if not isinstance(args, (list, tuple)):
        raise InvalidArgumentError(f"schedule {chosen!r}: args must be a list")
    if definition is not None:
        definition.check_args(tuple(args), call_kwargs)
    if cron is not None and not isinstance(cron, str):
        raise InvalidArgumentError(f"schedule {chosen!r}: cron must be a string")
    if (cron is None) == (every is None):
        raise InvalidArgumentError(
            f"schedule {chosen!r}: give either cron= or every=, not both or neither"
        )
    if every is not None and timezone is not None:
        raise InvalidArgumentError(
            f"schedule {chosen!r}: a time zone applies to cron expressions, not to every="
        )
    if overlap not in (Overlap.SKIP.value, Overlap.ALLOW.value):
        raise InvalidArgumentError(
            f"schedule {chosen!r}: overlap must be 'skip' or 'allow', not {overlap!r}"
        )
    spec = ScheduleSpec(
        name=chosen,
        workflow=workflow_name,
        call=encode_call(chosen, args, call_kwargs),
        cron=cron.strip() if isinstance(cron, str) else "",
        timezone=timezone if timezone is not None else "UTC",
        every_s=_whole_seconds(every, chosen) if every is not None else 0,
        missed=missed or Missed(),
        overlap=Overlap(overlap),
        source=source,
    )
    Recurrence.of(spec)  # the cron parses and fires, the zone exists
    return spec


def _whole_seconds(every: dt.timedelta | float, name: str) -> int:
    seconds = every.total_seconds() if isinstance(every, dt.timedelta) else every
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not math.isfinite(seconds)
        or seconds != int(seconds)
        or not 1 <= seconds <= MAX_EVERY_S
    ):
        raise InvalidArgumentError(
            f"schedule {name!r}: every= must be whole seconds from 1 s to "
            f"{MAX_EVERY_S // 86_400} days, not {every!r}"
        )
    return int(seconds)


class ScheduleAdmin(ScheduleStore, Protocol):
    """What managing schedules needs: the store's schedules and its clock."""

    @abstractmethod
    async def now_ms(self) -> int: ...


async def add_schedule(
    store: ScheduleAdmin, spec: ScheduleSpec, *, replace: bool = False
) -> PutResult:
    """Store ``spec``, first due at its first tick after now (``ScheduleExistsError`` if
    the name is taken, unless ``replace``)."""
    now = await store.now_ms()
    return await store.put_schedule(spec, next_ms=Recurrence.of(spec).after(now), replace=replace)


async def find_schedule(store: ScheduleAdmin, name: str) -> Schedule:
    """The stored schedule ``name``; ScheduleNotFoundError if none, InvalidArgumentError if
    what is stored under it is not a readable schedule."""
    found = await store.read_schedules([name])
    if not found:
        raise ScheduleNotFoundError(f"no schedule is named {name!r}")
    stored = found[0]
    if not isinstance(stored, Schedule):
        raise InvalidArgumentError(f"schedule {name!r} cannot be read: {stored.error}")
    return stored


async def set_paused(store: ScheduleAdmin, name: str, *, paused: bool) -> bool:
    """Pause, or resume at the first tick after now (ticks while paused are not caught up).

    False if it already was; ScheduleNotFoundError if there is no such schedule.
    """
    next_ms = 0
    if not paused:
        stored = await find_schedule(store, name)
        next_ms = Recurrence.of(stored.spec).after(await store.now_ms())
    return await store.pause_schedule(name, paused=paused, next_ms=next_ms)


async def remove_schedule(store: ScheduleAdmin, name: str, *, force: bool = False) -> None:
    """Delete a schedule (never the runs it started). One declared in code is refused
    without ``force``: the next scheduler to start would write it back."""
    found = await store.read_schedules([name])
    if not found:
        raise ScheduleNotFoundError(f"no schedule is named {name!r}")
    stored = found[0]
    if isinstance(stored, Schedule) and stored.spec.source is Source.CODE and not force:
        raise InvalidArgumentError(
            f"schedule {name!r} is declared in code (lf.schedule): the next scheduler to start "
            "writes it back; remove it from the code, pause it, or delete it with --force"
        )
    if not await store.delete_schedule(name):
        raise ScheduleNotFoundError(f"no schedule is named {name!r}")


@dataclass(frozen=True, slots=True)
class SyncReport:
    written: dict[str, PutOutcome]
    deleted: list[str]


async def sync_declared(store: ScheduleAdmin, declared: ScheduleRegistry) -> SyncReport:
    """Write the code's schedules into Redis; delete code-declared ones the code dropped."""
    now = await store.now_ms()
    written: dict[str, PutOutcome] = {}
    for spec in declared:
        result = await store.put_schedule(
            spec, next_ms=Recurrence.of(spec).after(now), replace=True
        )
        written[spec.name] = result.outcome
        if result.previous_source is Source.CLI:
            log.warning(
                "schedule declared in code replaces the one added by the CLI",
                schedule=spec.name,
            )
        elif result.outcome is not PutOutcome.UNCHANGED:
            log.info("schedule written from code", schedule=spec.name, outcome=result.outcome)
    deleted = []
    for stored in await store.read_schedules():
        if (
            isinstance(stored, Schedule)
            and stored.spec.source is Source.CODE
            and stored.name not in declared
            and await store.delete_schedule(stored.name)
        ):
            deleted.append(stored.name)
            log.warning("schedule no longer declared in code: deleted", schedule=stored.name)
    return SyncReport(written, deleted)
