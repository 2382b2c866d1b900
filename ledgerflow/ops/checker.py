"""Check a recorded run log against the transition model, after the fact.

The store refuses illegal appends and answers repeated terminals with
"duplicate", so a log it wrote should never contain either. This checker walks
a log event by event through the very same decision function the stores use
(:func:`eventlog.transitions.plan_batch`, fed the state the log itself implies)
and reports every place where the log says something the store should have
refused. The chaos suite runs it over every run's stream: if a crash, a
redelivery or two racing writers ever slipped an event past the store's
checks, this is where it shows.

Repeated ``step_started`` (at-least-once delivery) and repeated
``hook_received`` are legal and pass.
"""

from __future__ import annotations

from collections.abc import Sequence

from ledgerflow.eventlog.errors import IllegalTransitionError, RunClosedError, RunNotFoundError
from ledgerflow.eventlog.events import RUN_TERMINAL, Event, EventType, NewEvent
from ledgerflow.eventlog.kinds import RUN_TERMINAL_STATES
from ledgerflow.eventlog.records import RunCreated
from ledgerflow.eventlog.statushash import ABSENT_ENTITY, EntityState
from ledgerflow.eventlog.transitions import ABSENT, entity_label, plan_batch

_STEP_TERMINAL = frozenset({EventType.STEP_COMPLETED, EventType.STEP_FAILED})
_TERMINAL_STATES = {"step": frozenset({"completed", "failed"}), "wait": frozenset({"completed"})}


def _as_new(event: Event) -> NewEvent:
    """The append that would have produced ``event``: what plan_batch judges."""
    record = event.record
    return NewEvent(
        type=event.type,
        corr=event.corr,
        payload=b"",
        attempt=event.attempt,
        workflow=(record.workflow or "") if isinstance(record, RunCreated) else "",
    )


def check_log(events: Sequence[Event], run_id: str = "run") -> list[str]:
    """Every problem in one run's log, in log order; an empty list means the log is clean.

    Reported: a log that does not start with run_created; an illegal
    transition (naming the event id, the entity and both states); a second
    terminal for a step, a wait or the run (an append the store should have
    answered "duplicate"); any other event the store would have refused as a
    duplicate (a stale attempt, a repeated run_created); any event after the
    run's terminal event; a hook still live when the run ended.
    """
    if not events:
        return ["the log is empty: no run_created"]
    problems: list[str] = []
    first = events[0]
    if first.type is not EventType.RUN_CREATED:
        problems.append(
            f"the log does not start with run_created: event {first.id} is {first.type.value}"
        )
    run_state = ABSENT
    run_end: Event | None = None
    # corr -> (kind, state, attempt), exactly what the store's status hash holds
    entities: dict[str, EntityState] = {}
    last_terminal: dict[str, Event] = {}
    unchecked = 0

    def entity_state(corr: str) -> EntityState:
        return entities.get(corr, ABSENT_ENTITY)

    for event in events:
        kind = event.type.kind
        label = entity_label(kind, event.corr)
        if run_end is not None:
            if event.type in RUN_TERMINAL:
                problems.append(
                    f"event {event.id}: a second terminal for the run: {event.type.value} "
                    f"after {run_end.type.value} (event {run_end.id})"
                )
            else:
                problems.append(
                    f"event {event.id}: {event.type.value} for {label} after the run ended "
                    f"with {run_end.type.value} (event {run_end.id})"
                )
            continue
        try:
            (verdict,) = plan_batch(run_id, [_as_new(event)], run_state, entity_state)
        except RunNotFoundError:
            unchecked += 1
            continue
        except RunClosedError as exc:  # pragma: no cover - run_end catches these first
            problems.append(f"event {event.id}: {event.type.value} after the run ended ({exc})")
            continue
        except IllegalTransitionError as exc:
            problems.append(
                f"event {event.id}: illegal transition: {exc.entity} is {exc.current!r}, "
                f"cannot record {exc.event_type!r}"
            )
            continue
        if not verdict.write:
            problems.append(
                _refused(event, label, run_state, entity_state(event.corr), last_terminal)
            )
            continue
        if kind == "run":
            run_state = verdict.to
            if run_state in RUN_TERMINAL_STATES:
                run_end = event
                live = sorted(
                    corr
                    for corr, (k, state, _) in entities.items()
                    if k == "hook" and state != "disposed"
                )
                if live:
                    problems.append(
                        f"event {event.id}: the run ended with live hooks: {', '.join(live)}"
                    )
            continue
        _, _, attempt = entity_state(event.corr)
        entities[event.corr] = EntityState(kind, verdict.to, verdict.attempt or attempt)
        if verdict.to in _TERMINAL_STATES.get(kind, ()):
            last_terminal[event.corr] = event
    if unchecked:
        problems.append(f"{unchecked} event(s) could not be checked: no run_created precedes them")
    return problems


def _refused(
    event: Event,
    label: str,
    run_state: str,
    state: EntityState,
    last_terminal: dict[str, Event],
) -> str:
    """Describe an event the store would have answered "duplicate" (never written)."""
    _, current, attempt = state
    earlier = last_terminal.get(event.corr)
    if event.type is EventType.RUN_CREATED or event.type is EventType.RUN_STARTED:
        return (
            f"event {event.id}: a repeated {event.type.value} while the run is {run_state!r} "
            "(the store answers duplicate)"
        )
    if earlier is not None and (
        event.type in _STEP_TERMINAL or event.type is EventType.WAIT_COMPLETED
    ):
        return (
            f"event {event.id}: a second terminal for {label}: {event.type.value} after "
            f"{earlier.type.value} (event {earlier.id})"
        )
    if event.attempt is not None and current in ("started", "retrying"):
        return (
            f"event {event.id}: a stale {event.type.value} for {label}: attempt "
            f"{event.attempt}, but attempt {attempt} is already recorded ({current!r})"
        )
    return (
        f"event {event.id}: {event.type.value} for {label} while it is "
        f"{(current or 'absent')!r}: the store answers duplicate, so it should not be in the log"
    )
