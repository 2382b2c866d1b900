"""Replay a run's log through its workflow code to decide what happens next.

Each step call gets a correlation id from its position in one sequence per run
(s1, s2, ...). Creation events in the log are indexed first; outcome events are
then delivered one at a time, in log order, running the workflow to quiescence
after each. That makes the result independent of how the log was batched, so
an instance fed incrementally (sticky cache) and one replayed from scratch
always reach the same state and issue the same commands.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import hashlib
import random as _random
import secrets
import uuid as _uuid
from collections import deque
from collections.abc import Awaitable, Coroutine, Generator, Iterable
from dataclasses import dataclass, field
from typing import Any

from ledgerflow.eventlog import codec
from ledgerflow.eventlog.blobs import Blob
from ledgerflow.eventlog.errors import (
    ChildWorkflowError,
    ExitCalledError,
    HookConflictError,
    HookDisposedError,
    InvalidArgumentError,
    ReplayDivergenceError,
    RunCancelled,
    StepFailedError,
    WaitTimeout,
    WorkflowTimeoutError,
)
from ledgerflow.eventlog.events import Event, EventType, NewEvent, id_order
from ledgerflow.eventlog.integrity import call_fingerprint
from ledgerflow.eventlog.names import MAX_RUN_ID, WEBHOOK_TOKEN_PREFIX, check_hook_token, lane
from ledgerflow.eventlog.records import (
    CHILD_PREFIX,
    ChildSpec,
    HookCreated,
    HookReceived,
    ParentRef,
    RunStarted,
    StepCompleted,
    StepCreated,
    StepFailed,
)
from ledgerflow.eventlog.store import START
from ledgerflow.worker.dispatch import current_dispatcher
from ledgerflow.worker.registry import StepDef

from .context import current_instance
from .continuation import ContinueAsNew, continuation_run_id
from .later import recorded_timeout_ms, wait_until_ms
from .loop import DeterministicLoop
from .registry import WorkflowDef

_CREATIONS = frozenset({EventType.STEP_CREATED, EventType.WAIT_CREATED, EventType.HOOK_CREATED})


@dataclass(frozen=True, slots=True)
class StepCommand:
    """A step the workflow asked for that the log does not record yet."""

    corr: str
    step: StepDef
    args: bytes
    blobs: tuple[Blob, ...] = ()  # arguments stored out of line (eventlog.blobs)
    priority: int = 0  # the run's; the step's own may raise it

    def record(self) -> StepCreated:
        """The step_created this ask is recorded as (and its messages are built from)."""
        return StepCreated(
            name=self.step.name,
            queue=lane(self.step.queue, max(self.priority, self.step.priority)),
            args=self.args,
            call_fingerprint=call_fingerprint(self.step.name, self.args),
        )


@dataclass(frozen=True, slots=True)
class WaitCommand:
    """A durable sleep: wait_created with its due time (workflow clock + delay)."""

    corr: str
    due_ms: int
    purpose: str = ""  # "start" or "deadline" for ledgerflow's own waits (records.WaitCreated)


@dataclass(frozen=True, slots=True)
class HookCommand:
    corr: str
    token: str
    metadata: Any


@dataclass(frozen=True, slots=True)
class DisposeHookCommand:
    """The workflow disposed a live hook (``hook.dispose()``, the end of ``async with hook``)."""

    corr: str


@dataclass(frozen=True, slots=True)
class ChildCommand:
    """A child run, recorded in the parent's log as a step (``records.StepCreated.child``)."""

    corr: str
    workflow: str
    args: list[Any]
    kwargs: dict[str, Any]
    child_run_id: str
    priority: int = 0  # the parent's: a child run inherits it

    def record(self) -> StepCreated:
        """The step_created that stands for this child in its parent's log."""
        spec = ChildSpec(self.workflow, self.child_run_id, self.args, self.kwargs)
        return StepCreated(name=CHILD_PREFIX + self.workflow, queue="", child=spec)


Command = StepCommand | WaitCommand | HookCommand | DisposeHookCommand | ChildCommand


@dataclass(frozen=True, slots=True)
class Ask:
    """What the code asked for at a position: a step (by name), a child, a sleep or a hook."""

    kind: EventType
    name: str = ""
    child: bool = False

    def matches(self, event: Event) -> bool:
        """Is ``event`` (the creation the log holds there) what was asked for?"""
        if event.type is not self.kind:
            return False
        record = event.record
        if not isinstance(record, StepCreated):
            return True
        if self.child:
            return record.child is not None and record.child.workflow == self.name
        return record.child is None and record.name == self.name

    def describe(self) -> str:
        if self.kind is EventType.STEP_CREATED:
            return f"child workflow {self.name!r}" if self.child else f"step {self.name!r}"
        return "a sleep" if self.kind is EventType.WAIT_CREATED else "a hook"


def child_run_id(parent_run_id: str, corr: str) -> str:
    """Deterministic, so starting a child twice (a replay, a crash) starts it once.

    ``<parent>.<corr>`` while that fits the run-id rule; a deeply nested child of a
    long id gets a digest of its parent's id in its place, so it never outgrows it.
    """
    natural = f"{parent_run_id}.{corr}"
    if len(natural) <= MAX_RUN_ID:
        return natural
    return f"{hashlib.sha256(parent_run_id.encode()).hexdigest()[:32]}.{corr}"


class Hook:
    """A durable hook: ``await hook`` for the next payload, ``async for`` for all of them.

    Payloads arrive as hook_received events and are handed out in log order, so
    replay sees exactly the deliveries the first execution saw.
    """

    def __init__(self, instance: WorkflowInstance, corr: str, token: str, metadata: Any) -> None:
        self._instance = instance
        self.corr = corr
        self.token = token
        self.metadata = metadata
        self._buffer: deque[Any] = deque()
        self._waiters: deque[asyncio.Future[Any]] = deque()
        self._taken_by: str | None = None
        self._disposed = False

    def _deliver(self, payload: Any) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(payload)
                return
        self._buffer.append(payload)

    def _conflicted(self, owner_run: str) -> None:
        """The log says this hook's token was taken: every wait on it, now or later, raises."""
        self._taken_by = owner_run
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(self._conflict())

    def _conflict(self) -> HookConflictError:
        owner = self._taken_by or ""
        return HookConflictError(
            f"hook token {self.token!r} is already used by a live hook of run {owner!r}; "
            "this hook was recorded as conflicted and will never receive anything",
            token=self.token,
            owner_run=owner,
            corr=self.corr,
        )

    def dispose(self) -> None:
        """Take the hook out of service now: its token is freed, later deliveries refused.

        Payloads it received before are still handed out; awaiting it once they are
        taken raises lf.HookDisposedError. The run's end disposes every hook anyway.
        """
        if self._disposed:
            return
        self._disposed = True
        self._instance.dispose_hook(self.corr)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(self._gone())

    def _gone(self) -> HookDisposedError:
        return HookDisposedError(f"hook {self.token!r} was disposed; it receives nothing more")

    async def __aenter__(self) -> Hook:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.dispose()

    async def next(self) -> Any:
        if self._buffer:
            return self._buffer.popleft()
        if self._taken_by is not None:
            raise self._conflict()
        if self._disposed:
            raise self._gone()
        waiter: asyncio.Future[Any] = self._instance.loop.create_future()
        self._waiters.append(waiter)
        return await waiter

    def __await__(self) -> Generator[Any, None, Any]:
        return self.next().__await__()

    def __aiter__(self) -> Hook:
        return self

    async def __anext__(self) -> Any:
        return await self.next()

    def __repr__(self) -> str:
        return f"Hook(token={self.token!r})"


class Webhook(Hook):
    """A hook the outside world resumes over HTTP: its token is random, ``path`` its address.

    POST (or PUT, PATCH) to ``path`` on a mounted ``ledgerflow.fastapi`` router, or on
    ``ledgerflow webhooks serve``, delivers ``{"method", "headers", "query", "json",
    "body"}`` (credentials headers left out).
    """

    @property
    def path(self) -> str:
        return f"/webhooks/{self.token}"

    def __repr__(self) -> str:
        return f"Webhook(path={self.path!r})"


@dataclass(frozen=True, slots=True)
class Completed:
    result: Any

    def recorded_as(self, workflow: str) -> NewEvent:
        """The run_completed that records this result, large values out of line: the one
        way both the scheduler and a replay test encode it (a result the log cannot hold
        raises SerializationError, and the run ends failed instead)."""
        return NewEvent.of(
            EventType.RUN_COMPLETED,
            data={"result": self.result},
            what=f"result of workflow {workflow!r}",
            offload=(("result",),),
        )


@dataclass(frozen=True, slots=True)
class Failed:
    error: BaseException


@dataclass(frozen=True, slots=True)
class Continued:
    """The workflow called ``lf.continue_as_new``: this run ends, ``run_id`` goes on."""

    run_id: str
    args: list[Any]
    kwargs: dict[str, Any]
    # Hook payloads this run received and never took (filled in once its hooks are
    # disposed, so none can arrive after): the successor's hooks hand them out first.
    carried: dict[str, list[Any]] = field(default_factory=dict)


Outcome = Completed | Failed | Continued


@dataclass(frozen=True, slots=True)
class Decision:
    commands: list[Command]
    outcome: Outcome | None


class WorkflowInstance:
    """One live workflow: its private loop, its task, and what the log told it so far."""

    def __init__(
        self,
        run_id: str,
        definition: WorkflowDef,
        args: list[Any],
        kwargs: dict[str, Any],
        *,
        parent: ParentRef | None = None,
        carried: dict[str, list[Any]] | None = None,
        start_at_ms: int | None = None,
        priority: int = 0,
    ) -> None:
        self.run_id = run_id
        self.priority = priority
        self._start_at_ms = start_at_ms
        self._parent = parent
        # Hook payloads a predecessor received and never took (lf.continue_as_new).
        self._carried = {token: list(payloads) for token, payloads in (carried or {}).items()}
        self.definition = definition
        self.args = args
        self.kwargs = kwargs
        self.cursor = START
        self.events_seen = 0
        self.divergence: ReplayDivergenceError | None = None
        self._now_ms = 0
        # typeshed marks the I/O half of AbstractEventLoop abstract; it raises here.
        self.loop = DeterministicLoop(clock=lambda: self._now_ms / 1000.0)  # type: ignore[abstract]
        self._seq = 0
        self._uuid_seq = 0
        self._random = _random.Random(run_id)
        self._recorded: dict[str, Event] = {}
        # corr -> (creation event type, name) of what this instance asked for there
        self._issued: dict[str, Ask] = {}
        self._hooks: dict[str, Hook] = {}
        # Hooks the log holds as created and not yet disposed (ordered, like a set).
        self._live_hooks: dict[str, None] = {}
        self._disposed_hooks: set[str] = set()  # by the log, or asked for by the code
        self._hook_conflicts: dict[str, str] = {}  # corr -> run holding its token
        self._children_started: set[str] = set()
        # Kept incrementally so an activation costs O(new events), not O(whole log):
        self._unissued: set[str] = set()  # recorded creations the code has not reached
        self._pending_children: dict[str, Event] = {}  # recorded children not yet started
        self._futures: dict[str, asyncio.Future[Any]] = {}
        self._early: dict[str, Event] = {}
        self._new: list[Command] = []
        self._task: asyncio.Task[Any] | None = None

    # --- feeding the log ------------------------------------------------------------------

    def feed(self, events: Iterable[Event]) -> None:
        # Events at or before the cursor were fed already (two activations of one run
        # that read the same tail): feeding is then a no-op, never a second delivery.
        floor = id_order(self.cursor)
        batch = [e for e in events if id_order(e.id) > floor]
        for event in batch:
            if event.type in _CREATIONS:
                self._recorded[event.corr] = event
                if event.corr not in self._issued:
                    self._unissued.add(event.corr)
                record = event.record
                if (
                    isinstance(record, StepCreated)
                    and record.child is not None
                    and event.corr not in self._children_started
                ):
                    self._pending_children[event.corr] = event
                self._check_issued(event)
            if event.type is EventType.HOOK_CREATED:
                self._live_hooks[event.corr] = None
            elif event.type is EventType.HOOK_DISPOSED:
                self._live_hooks.pop(event.corr, None)
                self._disposed_hooks.add(event.corr)
        for event in batch:
            self._now_ms = event.ts
            if self.divergence is None:
                self._deliver(event)
            self.cursor = event.id
            self.events_seen += 1
        self._check_unissued()

    def _deliver(self, event: Event) -> None:
        if event.type is EventType.RUN_STARTED:
            if self._task is None:
                record = event.record
                self._start(record.timeout_ms if isinstance(record, RunStarted) else None)
        elif event.type in (
            EventType.STEP_COMPLETED,
            EventType.STEP_FAILED,
            EventType.WAIT_COMPLETED,
        ):
            future = self._futures.get(event.corr)
            if future is None:
                self._early[event.corr] = event
                return
            self._settle(future, event)
        elif isinstance(event.record, HookReceived):
            hook = self._hooks.get(event.corr)
            if hook is None:
                return
            hook._deliver(event.record.payload)
        elif isinstance(event.record, HookCreated):
            # Its outcome, in log order as every outcome: live, or conflicted.
            owner = event.record.conflict
            if owner is None:
                return
            self._hook_conflicts[event.corr] = owner
            hook = self._hooks.get(event.corr)
            if hook is None:
                return
            hook._conflicted(owner)
        elif event.type is EventType.STEP_STARTED:
            # Only children are remembered: a set of every started step would grow
            # with the run (flat memory over hundreds of thousands of steps).
            if self._pending_children.pop(event.corr, None) is not None:
                self._children_started.add(event.corr)
            return
        else:
            return
        self.loop.run_ready()

    def _start(self, timeout_ms: int | None) -> None:
        context = contextvars.copy_context()
        context.run(current_dispatcher.set, self)
        context.run(current_instance.set, self)
        coro = _exit_as_failure(self._run_in_time(timeout_ms), self.definition.name)
        self._task = self.loop.create_task(coro, context=context)

    async def _run_in_time(self, timeout_ms: int | None) -> Any:
        """The workflow's code, after its recorded start time and within its recorded timeout.

        Both are durable waits taken before (and beside) the code's own, decided from
        the log alone (``scheduler/later.py``): a replay takes the same positions.
        """
        delay = wait_until_ms(self._now_ms, self._start_at_ms)
        if delay:
            await self._wait_future(delay, purpose="start")
        limit = recorded_timeout_ms(timeout_ms)
        if limit is None:
            return await self.definition.fn(*self.args, **self.kwargs)
        deadline = self._wait_future(limit, purpose="deadline")
        body = asyncio.ensure_future(self.definition.fn(*self.args, **self.kwargs))
        await asyncio.wait({body, deadline}, return_when=asyncio.FIRST_COMPLETED)
        if body.done():
            return body.result()
        body.cancel()
        raise WorkflowTimeoutError(
            f"run {self.run_id!r} of workflow {self.definition.name!r} did not finish "
            f"within its timeout of {limit / 1000:g} s"
        )

    def _settle(self, future: asyncio.Future[Any], event: Event) -> None:
        try:
            self._resolve(future, event)
        finally:
            self._forget(event.corr)

    def _forget(self, corr: str) -> None:
        """Drop what a settled position kept: positions only grow, so none is asked for again.

        This keeps a cached instance's memory proportional to what is in flight,
        not to the length of the run (a 200,000-step run stays flat).
        """
        self._recorded.pop(corr, None)
        self._issued.pop(corr, None)
        self._futures.pop(corr, None)

    def _resolve(self, future: asyncio.Future[Any], event: Event) -> None:
        if future.done():
            return
        record = event.record
        if isinstance(record, StepCompleted):
            future.set_result(record.result)
            return
        if not isinstance(record, StepFailed):  # wait_completed
            future.set_result(None)
            return
        error = record.error
        created = self._recorded.get(event.corr)
        step = created.record if created is not None else None
        name = step.name if isinstance(step, StepCreated) else event.corr
        if isinstance(step, StepCreated) and step.child is not None:
            if error.is_cancellation:
                future.set_exception(RunCancelled(error.message))
            else:
                future.set_exception(ChildWorkflowError(error.type, error.message, error.traceback))
            return
        future.set_exception(
            StepFailedError(
                name,
                error.type,
                error.message,
                error.traceback,
                attempts=record.attempt or 1,
            )
        )

    def _check_issued(self, event: Event) -> None:
        """A creation recorded after this instance asked for that position must match the ask.

        Without this a cached instance would take another step's result (sticky
        cache and full replay would disagree).
        """
        asked = self._issued.get(event.corr)
        if asked is None or self.divergence is not None:
            return
        if not asked.matches(event):
            self.divergence = ReplayDivergenceError(
                self.run_id, event.corr, _describe(event), asked.describe()
            )

    def _check_unissued(self) -> None:
        if self.divergence is not None or self._task is None:
            return
        missing = sorted(self._unissued, key=lambda c: int(c[1:]))
        if missing:
            event = self._recorded[missing[0]]
            self.divergence = ReplayDivergenceError(
                self.run_id,
                missing[0],
                _describe(event),
                "nothing there (the call was removed or the code took another path)",
            )

    # --- what the workflow asks for (the Dispatcher protocol) ---------------------------

    def call_step(
        self, step: StepDef, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Coroutine[Any, Any, Any]:
        return self._call_step(step, args, kwargs)

    async def _call_step(self, step: StepDef, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        blob, blobs = step.encode_call(args, kwargs)
        corr = self._claim(Ask(EventType.STEP_CREATED, step.name))
        if corr not in self._recorded:
            self._new.append(
                StepCommand(corr=corr, step=step, args=blob, blobs=blobs, priority=self.priority)
            )
        return await self._outcome_of(corr)

    async def call_child(
        self, definition: WorkflowDef, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        definition.check_args(args, kwargs)
        corr = self._claim(Ask(EventType.STEP_CREATED, definition.name, child=True))
        if corr not in self._recorded:
            self._new.append(
                ChildCommand(
                    corr=corr,
                    workflow=definition.name,
                    args=list(args),
                    kwargs=dict(kwargs),
                    child_run_id=child_run_id(self.run_id, corr),
                    priority=self.priority,
                )
            )
        return await self._outcome_of(corr)

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        await self._wait_future(int(seconds * 1000))

    async def sleep_until(self, epoch_ms: int) -> None:
        """A durable wait due exactly at ``epoch_ms`` (now, if that has passed)."""
        delay = wait_until_ms(self._now_ms, epoch_ms)
        if delay <= 0:
            await asyncio.sleep(0)
            return
        await self._wait_future(delay)

    def _wait_future(self, delay_ms: int, *, purpose: str = "") -> asyncio.Future[Any]:
        """A durable timer as a future: resolved when its wait_completed is replayed."""
        corr = self._claim(Ask(EventType.WAIT_CREATED))
        if corr not in self._recorded:
            self._new.append(
                WaitCommand(corr=corr, due_ms=self._now_ms + delay_ms, purpose=purpose)
            )
        return self._future_for(corr)

    def create_hook(self, token: str | None, metadata: Any, *, webhook: bool = False) -> Hook:
        corr = self._claim(Ask(EventType.HOOK_CREATED))
        recorded = self._recorded.get(corr)
        if recorded is not None and isinstance(recorded.record, HookCreated):
            token = recorded.record.token or token or ""
        elif webhook:
            # Unguessable, so chosen at random once; replays read it back from the log.
            token = WEBHOOK_TOKEN_PREFIX + secrets.token_urlsafe(24)
        elif token is not None:
            # Checked only for a new hook: a recorded one replays as it was recorded.
            check_hook_token(token)
            if token.startswith(WEBHOOK_TOKEN_PREFIX):
                raise InvalidArgumentError(
                    f"hook token {token[:40]!r}: tokens starting {WEBHOOK_TOKEN_PREFIX!r} are "
                    "lf.create_webhook()'s"
                )
        token = token or hashlib.sha256(f"{self.run_id}:{corr}".encode()).hexdigest()[:32]
        hook = (Webhook if webhook else Hook)(self, corr, token, metadata)
        for payload in self._carried.pop(token, []):
            hook._deliver(payload)  # the predecessor's, first: in the order it received them
        self._hooks[corr] = hook
        if corr in self._hook_conflicts:
            hook._conflicted(self._hook_conflicts[corr])
        if recorded is None:
            codec.encode(metadata, what="hook metadata")
            self._new.append(HookCommand(corr=corr, token=token, metadata=metadata))
        return hook

    async def wait_for(self, awaitable: Awaitable[Any], timeout: float) -> Any:
        """Whichever the log records first wins: the awaited thing, or a durable timer."""
        timer = self._wait_future(max(0, int(timeout * 1000)))
        task = asyncio.ensure_future(awaitable)
        await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        raise WaitTimeout(f"nothing arrived within {timeout:g} s (a durable timeout)")

    def dispose_hook(self, corr: str) -> None:
        """Ask for a hook's disposal, unless the log (or an earlier ask) already has it.

        The hook stays among ``live_hooks`` until the log holds its disposal: a decision
        that also ends the run records none of its commands, and the run's end must
        then dispose of it with the others.
        """
        if corr in self._disposed_hooks:
            return
        self._disposed_hooks.add(corr)
        self._new.append(DisposeHookCommand(corr=corr))

    def live_hooks(self) -> list[str]:
        """Hooks the log holds as created and not disposed: what a run's end disposes.

        A hook asked for in the very decision that ends the run was never recorded,
        so there is nothing to dispose (disposing it would be an illegal transition).
        """
        return list(self._live_hooks)

    def untaken_payloads(self) -> dict[str, list[Any]]:
        """Per token, hook payloads recorded that the code never took (and carried ones unused).

        What a continuation carries over to its successor, so a payload that
        arrived while this run was deciding to continue is not lost.
        """
        untaken: dict[str, list[Any]] = {}
        for token, payloads in self._carried.items():
            untaken.setdefault(token, []).extend(payloads)
        for hook in self._hooks.values():
            if hook._buffer:
                untaken.setdefault(hook.token, []).extend(hook._buffer)
        return untaken

    def unstarted_children(self) -> list[ChildCommand]:
        """Children recorded in the log whose start may not have happened (a crash)."""
        pending = []
        for corr, event in self._pending_children.items():
            record = event.record
            if not isinstance(record, StepCreated) or record.child is None:
                continue
            if corr not in self._children_started:
                pending.append(
                    ChildCommand(
                        corr=corr,
                        workflow=record.child.workflow,
                        args=list(record.child.args),
                        kwargs=dict(record.child.kwargs),
                        child_run_id=record.child.run_id,
                        priority=self.priority,
                    )
                )
        return pending

    @property
    def parent(self) -> ParentRef | None:
        return self._parent

    def _claim(self, ask: Ask) -> str:
        """Take the next position, checking it against what the log recorded there."""
        corr = self._next_corr()
        event = self._recorded.get(corr)
        if event is not None and not ask.matches(event):
            self.divergence = ReplayDivergenceError(
                self.run_id, corr, _describe(event), ask.describe()
            )
            raise self.divergence
        self._issued[corr] = ask
        self._unissued.discard(corr)
        return corr

    def _future_for(self, corr: str) -> asyncio.Future[Any]:
        future = self.loop.create_future()
        self._futures[corr] = future
        early = self._early.pop(corr, None)
        if early is not None:
            self._settle(future, early)
        return future

    async def _outcome_of(self, corr: str) -> Any:
        return await self._future_for(corr)

    def _next_corr(self) -> str:
        self._seq += 1
        return f"s{self._seq}"

    # --- determinism helpers ------------------------------------------------------------

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self._now_ms / 1000.0, tz=dt.UTC)

    def uuid4(self) -> _uuid.UUID:
        self._uuid_seq += 1
        digest = hashlib.sha256(f"{self.run_id}:{self._uuid_seq}".encode()).digest()
        return _uuid.UUID(bytes=digest[:16], version=4)

    def random(self) -> float:
        return self._random.random()

    # --- the verdict ----------------------------------------------------------------------

    def decide(self) -> Decision:
        commands, self._new = self._new, []
        outcome = self._outcome()
        if outcome is not None:
            # Steps the workflow started but never awaited would only run after the
            # run ended (and be refused): a finished run schedules nothing more.
            commands = []
        return Decision(commands=commands, outcome=outcome)

    def _outcome(self) -> Outcome | None:
        if self.divergence is not None:
            return Failed(self.divergence)
        if self._task is None or not self._task.done():
            return None
        if self._task.cancelled():
            return Failed(asyncio.CancelledError("the workflow task was cancelled"))
        exc = self._task.exception()
        if isinstance(exc, ContinueAsNew):
            return Continued(continuation_run_id(self.run_id), exc.call_args, exc.call_kwargs)
        if exc is not None:
            return Failed(exc)
        return Completed(self._task.result())

    def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            self.loop.run_ready()
        self.loop.close()


async def _exit_as_failure(coro: Coroutine[Any, Any, Any], workflow: str) -> Any:
    """The workflow's outcome, with sys.exit() in its code an ordinary failure."""
    try:
        return await coro
    except SystemExit as exc:
        raise ExitCalledError(f"workflow {workflow!r}", exc.code) from None


def _describe(event: Event) -> str:
    """What the log holds at a position, in the words ``Ask.describe`` uses."""
    record = event.record
    if isinstance(record, StepCreated):
        if record.child is not None:
            return Ask(event.type, record.child.workflow, child=True).describe()
        return Ask(event.type, record.name).describe()
    return {EventType.WAIT_CREATED: "a sleep", EventType.HOOK_CREATED: "a hook"}.get(
        event.type, event.type.value
    )
