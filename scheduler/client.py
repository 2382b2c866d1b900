"""The client producer services use: start runs, wait for results, read logs."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from ledgerflow.broker import Activation, Broker
from ledgerflow.eventlog import records
from ledgerflow.eventlog.blobs import BlobRef, fetch_run_blobs, fetch_value
from ledgerflow.eventlog.errors import (
    BrokerError,
    HistoryLimitError,
    HookNotFoundError,
    IllegalTransitionError,
    ResultTimeoutError,
    RunCancelled,
    RunNotFoundError,
    SerializationError,
    ServiceUnavailableError,
    WorkflowFailedError,
    WorkflowTimeoutError,
    error_type_name,
)
from ledgerflow.eventlog.events import RUN_TERMINAL, Event, EventType, NewEvent, run_created
from ledgerflow.eventlog.fold import RunState, fold
from ledgerflow.eventlog.integrity import MAX_KEY
from ledgerflow.eventlog.kinds import RUN_TERMINAL_STATES
from ledgerflow.eventlog.names import check_hook_token, check_priority, check_run_id
from ledgerflow.eventlog.outputs import Chunk
from ledgerflow.eventlog.records import ErrorInfo, RunCreated
from ledgerflow.eventlog.settings import Settings
from ledgerflow.eventlog.store import START
from ledgerflow.worker.backend import connect

from .cancellation import cancel_run
from .chains import MAX_HOPS
from .history import History
from .later import start_time_ms
from .outputs import StreamSource, follow
from .registry import WorkflowFunction, WorkflowRegistry, workflows

log = structlog.get_logger("ledgerflow.client")

TIMED_OUT = error_type_name(WorkflowTimeoutError)
"""The recorded error type of a run failed at its timeout."""

WAIT_SLICE = 5.0
DEFAULT_PUBLISH_DEADLINE = 10.0
"""How long a producer call retries an activation whose cause is already recorded.

Shorter than the minute daemons keep retrying: a producer is usually serving a
request, and what it recorded is safe without the activation (the reconciler
sends it), so it should not wait long, and must never fail, for a broker outage."""
FIRST_RETRY = 0.1
MAX_RETRY = 2.0

# What a broker outage looks like from a publish: refused, unconfirmed, unreachable, too slow.
_OUTAGE = (BrokerError, ServiceUnavailableError, OSError, TimeoutError)


class RunHandle:
    """A started run: its id, and a way to wait for how it ended."""

    def __init__(self, client: Client, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    async def result(self, timeout: float | None = None) -> Any:
        return await self.client.result(self.run_id, timeout=timeout)

    async def events(self) -> list[Event]:
        return await self.client.events(self.run_id)

    async def state(self) -> RunState:
        return await self.client.state(self.run_id)

    def __repr__(self) -> str:
        return f"RunHandle({self.run_id!r})"


class Client:
    def __init__(
        self,
        store: StreamSource,
        broker: Broker,
        *,
        registry: WorkflowRegistry = workflows,
        publish_deadline: float = DEFAULT_PUBLISH_DEADLINE,
    ) -> None:
        self.store = store
        self.broker = broker
        self.registry = registry
        if not math.isfinite(publish_deadline) or publish_deadline < 0:
            raise ValueError(
                f"publish_deadline must be a finite number >= 0, got {publish_deadline}"
            )
        self.publish_deadline = publish_deadline

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        amqp_url: str | None = None,
        redis_url: str | None = None,
        *,
        namespace: str | None = None,
        publish_deadline: float = DEFAULT_PUBLISH_DEADLINE,
    ) -> AsyncIterator[Client]:
        """Connect to RabbitMQ and Redis (URLs from the environment unless given)."""
        async with connect(Settings.from_env(amqp_url, redis_url, namespace)) as backends:
            yield cls(backends.store, backends.broker, publish_deadline=publish_deadline)

    async def start(
        self,
        workflow: WorkflowFunction[Any, Any] | str,
        *args: Any,
        run_id: str | None = None,
        start_at: dt.datetime | None = None,
        delay: dt.timedelta | float | None = None,
        priority: int = 0,
        **kwargs: Any,
    ) -> RunHandle:
        """Record run_created and activate the run; idempotent for a given ``run_id``.

        ``start_at`` (an aware datetime) or ``delay`` (a timedelta or seconds) defers
        the run's code: it starts with a durable wait until then (recorded in its
        log, so it survives every restart); a time in the past starts it at once.
        ``priority`` (0-3): the run's steps are dispatched before lower ones' under load
        (its child runs inherit it; a step's own ``priority`` may raise it).
        ``run_id``, ``start_at``, ``delay`` and ``priority`` are this call's own, never
        the workflow's keyword arguments.

        Starting again with the same run_id (a producer retrying after a timeout)
        records nothing new and returns the same run. A run id is 1-200 letters,
        digits, ``_ . - :`` (lf.InvalidArgumentError otherwise).

        Once run_created is recorded this returns the handle whatever RabbitMQ
        does: the activation is retried for up to ``publish_deadline`` seconds
        and then left to the reconciler (a run created and never started), so a
        producer never sees an error for a run that exists and starts a second.
        """
        name = workflow.name if isinstance(workflow, WorkflowFunction) else workflow
        definition = None
        if isinstance(workflow, WorkflowFunction):
            definition = workflow.definition
        elif name in self.registry:
            definition = self.registry.get(name)
        if definition is not None:
            definition.check_args(args, kwargs)
        run_id = uuid.uuid4().hex if run_id is None else check_run_id(run_id)
        record = RunCreated(
            workflow=name,
            args=list(args),
            kwargs=kwargs,
            retention_ms=definition.retention_ms if definition is not None else None,
            start_at_ms=start_time_ms(start_at, delay),
            priority=check_priority(priority),
        )
        created = run_created(record, what=f"arguments of workflow {name!r}", offload_args=True)
        await self.store.append(run_id, [created])
        # Published even for a duplicate: the first producer may have died before it.
        await self._publish_activation(Activation(run_id=run_id, reason="start"), "run_created")
        return RunHandle(self, run_id)

    async def cancel(self, run_id: str, reason: str = "") -> None:
        """Cancel a run: run_cancelled is recorded, its hooks disposed, its children cancelled.

        Steps not yet started never start; running steps see
        ``lf.step_context().cancelled``. A run that continued as new is cancelled
        where its chain now runs (its last run). Cancelling a cancelled run does nothing;
        cancelling a completed or failed one raises RunClosedError.

        A broker outage after run_cancelled is recorded does not raise: telling
        a parent run is retried for up to ``publish_deadline`` seconds, then left
        to the reconciler (the parent's log holds an outcome not acted on).
        """

        async def publish(activation: Activation) -> bool:
            return await self._publish_activation(activation, "step_failed")

        await cancel_run(self.store, self.broker, run_id, reason, publish=publish)

    async def resume_hook(self, token: str, payload: Any = None) -> str:
        """Deliver ``payload`` to the live hook with this token; returns its run id.

        Once hook_received is recorded this returns the run id whatever RabbitMQ
        does (the activation is retried, then left to the reconciler). A token
        outside the rule raises lf.InvalidArgumentError saying what is allowed,
        unless a live hook created before the rule existed holds it (it stays
        resumable: looking a token up writes nothing).
        """
        owner = await self.store.hook_owner(token) if _may_be_indexed(token) else None
        if owner is None:
            check_hook_token(token)
            raise HookNotFoundError(f"no live hook has token {token!r}")
        run_id, corr = owner
        received = NewEvent.of(
            EventType.HOOK_RECEIVED,
            corr,
            {"payload": payload},
            what="hook payload",
            offload=(("payload",),),
        )
        try:
            await self.store.append(run_id, [received])
        except IllegalTransitionError as exc:
            await self.store.forget_hook(token, run_id, corr)
            raise HookNotFoundError(
                f"the hook with token {token!r} was disposed (run {run_id!r} ended)"
            ) from exc
        await self._publish_activation(Activation(run_id=run_id, reason="hook"), "hook_received")
        return run_id

    async def _publish_activation(self, activation: Activation, recorded: str) -> bool:
        """Publish an activation for something already recorded; False if left to the reconciler."""
        return await publish_recorded(self.broker, activation, recorded, self.publish_deadline)

    def get_handle(self, run_id: str) -> RunHandle:
        return RunHandle(self, run_id)

    async def events(self, run_id: str) -> list[Event]:
        """The run's log; SerializationError naming the run and event if one cannot be decoded."""
        with _naming_run(run_id):
            return await self.store.read(run_id)

    async def history(self, run_id: str) -> History:
        """The run's log with every value it stored out of line: a self-contained history.

        What ``runs export`` writes and ``lf.testing.replay`` reads back; each blob is
        verified against its digest as it is fetched (BlobError if one is damaged).
        """
        with _naming_run(run_id):
            events = await self.store.read(run_id)
            stored = await fetch_run_blobs(self.store.blob_store, run_id)
        return History(events, run_id=run_id, blobs=stored)

    def stream(self, run_id: str, name: str, *, start: int = 0) -> AsyncIterator[Chunk]:
        """The chunks of the run's output stream ``name`` from position ``start``, live.

        ``async for chunk in client.stream(run_id, "tokens"): print(chunk.value)``.
        Ends when the stream's writer closes it or the run ends; resume an
        interrupted read with ``start=chunk.index + 1``. A chunk with
        ``restarted`` begins a retried attempt of ``chunk.step``: drop what that
        step's earlier attempts showed (``scheduler/outputs.py``).
        """
        return follow(self.store, run_id, name, start)

    async def exists(self, run_id: str) -> bool:
        """Whether the run exists (it was created and has not been removed)."""
        return await self.store.exists(check_run_id(run_id))

    async def streams(self, run_id: str) -> list[str]:
        """The names of the run's output streams."""
        return await self.store.output_names(check_run_id(run_id))

    async def state(self, run_id: str) -> RunState:
        with _naming_run(run_id):
            return fold(run_id, await self.store.read(run_id))

    async def result(self, run_id: str, timeout: float | None = None) -> Any:
        """Wait for the run's end with blocking stream reads (XREAD BLOCK), never a sleep loop.

        A run that continued as new (``lf.continue_as_new``) is followed to the end
        of its chain: the result is the last run's, within the same ``timeout``.
        Only each run's end must be decodable: a result that cannot be decoded
        raises SerializationError naming the run and the event.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        current = run_id
        for _ in range(MAX_HOPS + 1):
            with _naming_run(current):
                end = await self._wait_end(current, deadline, timeout)
            record = end.record
            if not isinstance(record, records.RunCompleted) or record.continued_as is None:
                result = _outcome(current, end)
                if isinstance(result, BlobRef):
                    return await fetch_value(self.store.blob_store, current, result)
                return result
            current = record.continued_as
        raise HistoryLimitError(
            f"run {run_id!r} continued as new more than {MAX_HOPS} times in one wait "
            f"(last {current!r}); wait on a later run of the chain"
        )

    async def _wait_end(self, run_id: str, deadline: float | None, timeout: float | None) -> Event:
        """The run's terminal event, waited for until ``deadline`` (monotonic).

        A finished run (every link of a chain but the last) costs two small reads,
        not a read of its whole log.
        """
        state, last = await self.store.run_tail(run_id)
        if state in RUN_TERMINAL_STATES and last:
            end = await self.store.read_event(run_id, last)
            if end is not None and end.type in RUN_TERMINAL:
                return end
        try:
            events = await self.store.read(run_id)
        except SerializationError:
            # Another event cannot be decoded (the scheduler fails such a run): look
            # for the end alone, decoding nothing else on the way.
            events, cursor = [], START
        else:
            if not events:
                raise RunNotFoundError(run_id)
            cursor = events[-1].id
        while True:
            for event in events:
                if event.type in RUN_TERMINAL:
                    return event
            remaining = WAIT_SLICE if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise ResultTimeoutError(f"run {run_id!r} did not finish within {timeout} s")
            # Only the end is decoded: a 10,000-step run's results are not this waiter's.
            seen = cursor
            cursor, events = await self.store.wait_for(
                run_id, cursor, min(remaining, WAIT_SLICE), RUN_TERMINAL
            )
            if cursor == seen and not (await self.store.run_tail(run_id))[0]:
                # Nothing new, and no run any more: it ended and retention removed it.
                raise RunNotFoundError(run_id)


async def publish_recorded(
    broker: Broker, activation: Activation, recorded: str, deadline_s: float
) -> bool:
    """Publish an activation for something already recorded; False if left to the reconciler.

    Retried with backoff for ``deadline_s`` seconds in all (each try is cut at the
    deadline too, including the broker's wait for a reconnect); then a warning says
    what was not sent. The reconciler finds the recorded event with nothing acting
    on it and sends the activation itself. A producer (and a schedule's tick) thus
    never fails, nor retries into a second run, over a broker outage.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    delay = FIRST_RETRY
    tries = 0
    while True:
        tries += 1
        try:
            async with asyncio.timeout_at(deadline):
                await broker.publish_activation(activation)
            return True
        except _OUTAGE as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        await asyncio.sleep(min(delay, remaining))
        delay = min(delay * 2, MAX_RETRY)
    log.warning(
        "activation not published; the reconciler will send it",
        run_id=activation.run_id,
        reason=activation.reason,
        recorded=recorded,
        tries=tries,
        deadline_s=deadline_s,
        error=error,
    )
    return False


@contextlib.contextmanager
def _naming_run(run_id: str) -> Iterator[None]:
    """A decoding error names the event; from the client it names the run too."""
    try:
        yield
    except SerializationError as exc:
        raise type(exc)(f"run {run_id!r}: {exc}") from exc


def _may_be_indexed(token: object) -> bool:
    """Worth a lookup: a string no longer than any token the index ever held."""
    return isinstance(token, str) and 0 < len(token) <= MAX_KEY


def _outcome(run_id: str, event: Event) -> Any:
    record = event.record
    if isinstance(record, records.RunCompleted):
        return record.result
    if isinstance(record, records.RunCancelled):
        raise RunCancelled(f"run {run_id!r} was cancelled: {record.reason}")
    error = record.error if isinstance(record, records.RunFailed) else ErrorInfo.from_data(None)
    if error.type == TIMED_OUT:
        raise WorkflowTimeoutError(error.message, error.traceback)
    raise WorkflowFailedError(error.type, error.message, error.traceback)
