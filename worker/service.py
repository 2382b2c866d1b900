"""The worker: consume step messages, record started, run, record the outcome, ack.

The order is the delivery guarantee: the message is acked only after the
outcome is appended (and, for a final outcome, the run's activation confirmed
by the broker), so a crash at any point leaves either an unacked message
(redelivered) or a log that says what is missing (found by the reconciler).
A bad message never stops the worker: it goes to the dead-letter queue with
its reason.

Every delivery of a step message is an attempt: a redelivery (the previous
holder died or was stopped mid-step) runs as the next attempt number, so a
step that kills its worker cannot loop forever; past the policy's attempts it
is recorded as failed with ``WorkerLostError``.

A message is held unacked for at most ``ack_after`` seconds, well under
RabbitMQ's ``consumer_timeout`` (30 minutes by default), past which the server
would close the channel and redeliver everything on it, each redelivery
another attempt. A message whose steps are still running then is acked early
("released"): from then on the log (step_started names this worker) and this
worker's presence mark cover them, as they cover steps run in-process, and the
reconciler gives a new attempt to a started step whose worker is gone (and
re-sends a released step that never started). A message still waiting for a
free slot then is handed back to the tail of its queue (a copy, then an ack:
not a redelivery, so not an attempt).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import structlog
from ledgerflow.broker import Activation, Broker, Consumer, Delivery, StepBatch, StepMessage
from ledgerflow.broker.messages import encode_message
from ledgerflow.eventlog import presence
from ledgerflow.eventlog.blobs import BlobCache, resolve
from ledgerflow.eventlog.errors import (
    BrokerError,
    ConfigurationError,
    EventLogError,
    InvalidArgumentError,
    RunClosedError,
    RunNotFoundError,
    SerializationError,
    StepMismatchError,
    UnknownStepError,
    WorkerLostError,
)
from ledgerflow.eventlog.events import EventType, NewEvent
from ledgerflow.eventlog.integrity import call_fingerprint
from ledgerflow.eventlog.kinds import RunStatus
from ledgerflow.eventlog.names import (
    DEFAULT_STEP_QUEUE,
    MAX_PRIORITY,
    lane,
    lane_base,
    lane_priority,
)
from ledgerflow.eventlog.outputs import OutputStreams
from ledgerflow.eventlog.rates import Rates
from ledgerflow.eventlog.records import StepCreated, StepStarted
from ledgerflow.eventlog.retrying import retrying
from ledgerflow.eventlog.slots import Slots
from ledgerflow.eventlog.store import EventLog, Presence, RunIndex, TimerIndex
from ledgerflow.eventlog.timers import Timer, TimerKind

from ledgerflow.ops.observer import Observer, Observers, StepAttempt
from ledgerflow.ops.standard import standard_observers

from . import attempt as attempts
from . import outcome
from .attempt import AttemptResult
from .batching import Coalesced, GroupCommit
from .concurrency import Held, SlotLeases, send_promoted
from .context import StepContext, bind_step_context, reset_step_context
from .limits import Beats, run_limited
from .priority import PrioritySlots
from .registry import StepDef, StepRegistry, steps
from .resources import WorkerResources
from .retry import RetryPolicy

log = structlog.get_logger("ledgerflow.worker")

DEFAULT_CONCURRENCY = 16
DEFAULT_GRACE = 30.0
DEFAULT_ACK_AFTER = 600.0
"""Seconds a step message is held unacked before it is released or handed back.

A third of RabbitMQ's default ``consumer_timeout`` (30 min): lower it with the
server's timeout, never raise it to meet it."""
MIN_ACK_AFTER = 1.0
"""Below this, a busy worker would hand its waiting messages back to the queue
over and over (a publish and an ack each time) without ever running them."""
CANCEL_POLL = 0.5
PRESENCE_TTL_MS = presence.TTL_MS
"""How long a worker's presence mark outlives its last renewal (renewed every third).

The reconciler gives a started step whose worker's mark is gone a new attempt:
this is what recovers steps run in-process (eager dispatch), which have no
unacked message for RabbitMQ to redeliver when their process dies. The mark
also lists the runs this worker holds attempts of (``eventlog.presence``)."""


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


RequestReplay = Callable[[str], Awaitable[None]]
"""Ask a scheduler to replay a run now (or once more, if it is replaying it already)."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Call:
    """One step invocation, resolved and decoded, whichever way it arrived."""

    message: StepMessage
    definition: StepDef
    args: list[object]
    kwargs: dict[str, object]


@dataclasses.dataclass(slots=True)
class _Hold:
    """What one delivery's steps are covered by, and how many of them have a slot.

    ``covered`` is False once no unacked message stands behind the steps (the
    message was released early, or they were handed over in-process): a step
    cut off by shutdown then goes back to the queue explicitly, since no
    redelivery will bring it back.
    """

    covered: bool = True
    started: int = 0  # steps that got a slot: from then on they run to their end


class WorkerStore(EventLog, RunIndex, TimerIndex, Presence, OutputStreams, Slots, Rates, Protocol):
    """What a worker uses: it appends outcomes, reads run states, marks itself alive and
    lets steps write output streams."""


class Worker:
    """Runs steps from one or more step queues, and steps handed over in-process.

    ``concurrency`` bounds the steps running at once, whatever their source: a
    message of one step, a message of a batch of steps, or the scheduler of the
    same process running what it just scheduled (eager dispatch).

    ``observers`` watch each attempt (metrics, log fields, fault points); by
    default the standard ones (``ledgerflow.ops.standard``).
    """

    def __init__(
        self,
        store: WorkerStore,
        broker: Broker,
        *,
        queues: Sequence[str] | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        registry: StepRegistry = steps,
        retry: RetryPolicy | None = None,
        grace: float = DEFAULT_GRACE,
        ack_after: float = DEFAULT_ACK_AFTER,
        observers: Sequence[Observer] | None = None,
    ) -> None:
        if not MIN_ACK_AFTER <= ack_after < float("inf"):
            raise ConfigurationError(
                f"ack_after must be at least {MIN_ACK_AFTER:g} s and finite, got {ack_after}"
            )
        self.store = store
        # Offloaded arguments, fetched when a step is about to run (eventlog.blobs).
        self._blobs = BlobCache(store.blob_store)
        self.broker = broker
        self.registry = registry
        self.queues = list(queues) if queues else (registry.queues() or [DEFAULT_STEP_QUEUE])
        self.concurrency = concurrency
        self.retry = retry
        self.grace = grace
        self.ack_after = ack_after
        self.observers = Observers(standard_observers() if observers is None else observers)
        self.identity = worker_identity()
        self._consumers: list[Consumer] = []
        self._running: Counter[str] = Counter()
        # Runs with an attempt here between its step_started and its outcome's append.
        self._holding: Counter[str] = Counter()
        self._resources = WorkerResources()  # worker-scoped: opened on first use
        self._cancelled: set[str] = set()
        self._watch: asyncio.Task[None] | None = None
        self._presence: asyncio.Task[None] | None = None
        self._slots = PrioritySlots(concurrency)
        self._leases = SlotLeases(store)
        self._accepted = 0  # steps taken (from any source) and not yet finished
        self._writes = GroupCommit(store)
        self._activations = Coalesced(self._publish_activation)
        self._replay_here: RequestReplay | None = None
        self._local: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self.store.mark_alive(self.identity, PRESENCE_TTL_MS, set(self._holding))
        self._presence = asyncio.create_task(self._keep_alive(), name="presence")
        self._watch = asyncio.create_task(self._watch_cancellations(), name="cancel-watch")
        for queue in self.queues:
            for priority in range(MAX_PRIORITY + 1):
                full = await self.broker.declare_step_queue(lane(queue, priority))
                # The plain lane's prefetch is the concurrency: its deliveries start at once
                # unless a higher lane's wait for the same slots (worker/priority.py). A
                # higher lane holds twice that, so its next step is here when a slot frees
                # (not one round trip behind, while a plain one takes the slot). A delivery
                # that waits too long is handed back as a copy, never redelivered.
                prefetch = self.concurrency * (2 if priority else 1)
                consumer = await self.broker.consume(full, self.handle_delivery, prefetch=prefetch)
                self._consumers.append(consumer)
        log.info(
            "worker started",
            queues=self.queues,
            concurrency=self.concurrency,
            ack_after=self.ack_after,
        )

    async def stop(self, grace: float | None = None) -> None:
        """Stop consuming; let running steps finish within the grace period; hand back the rest."""
        consumers, self._consumers = self._consumers, []
        timeout = self.grace if grace is None else grace
        await asyncio.gather(
            *(c.cancel(timeout=timeout) for c in consumers), self._drain_local(timeout)
        )
        for task in (self._watch, self._presence):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._watch = self._presence = None
        try:
            await self._resources.close()
        except Exception as exc:  # the process is stopping; say which cleanup failed
            log.warning(
                "closing the worker's resources failed", error=f"{type(exc).__name__}: {exc}"
            )
        try:
            await self.store.mark_gone(self.identity)
        except Exception as exc:  # the mark expires by itself; say why it lingers
            log.warning("could not clear the presence mark", error=f"{type(exc).__name__}: {exc}")

    async def _keep_alive(self) -> None:
        """Renew the presence mark; a missed renewal is retried at the next beat."""
        while True:
            await asyncio.sleep(presence.RENEW_EVERY_S)
            try:
                await self.store.mark_alive(self.identity, PRESENCE_TTL_MS, set(self._holding))
            except Exception as exc:
                log.warning("presence renewal failed", error=f"{type(exc).__name__}: {exc}")
            try:
                await self._leases.renew()
            except Exception as exc:
                log.warning("concurrency slot renewal failed", error=f"{type(exc).__name__}: {exc}")

    # --- eager dispatch: steps handed over by the scheduler of this process ----------

    def attach_scheduler(self, request_replay: RequestReplay) -> None:
        """Send this process's step outcomes straight to its scheduler, not through RabbitMQ."""
        self._replay_here = request_replay

    def local_capacity(self, queue: str) -> int:
        """How many more steps of ``queue`` this worker would run right now."""
        if lane_base(queue) not in self.queues or not self._consumers:
            return 0
        return max(0, self.concurrency - self._accepted)

    def run_local(self, messages: Sequence[StepMessage]) -> None:
        """Run steps whose step_created is already in the log, here and now.

        Each is recorded started, run and recorded finished exactly as if it had
        come through the queue; if this process dies meanwhile, the log shows a
        step created or started with no outcome, which the reconciler re-enqueues.
        """
        if not messages:
            return
        self._accepted += len(messages)
        task = asyncio.get_running_loop().create_task(self._run_local(list(messages)))
        self._local.add(task)
        task.add_done_callback(self._local.discard)

    async def _run_local(self, messages: list[StepMessage]) -> None:
        try:
            calls = [self._prepare(m) for m in messages]
        except (UnknownStepError, SerializationError) as exc:
            self._accepted -= len(messages)
            # The scheduler resolved these very names and encoded these very arguments.
            log.error("local dispatch refused; left to the queue", error=str(exc))
            await retrying("publish steps", lambda: self.broker.publish_steps(messages))
            return
        hold = _Hold(covered=False)
        results = await asyncio.gather(
            *(self._run_in_slot(call, call.message.attempt, hold, local=True) for call in calls)
        )
        for call, result in zip(calls, results, strict=True):
            if result.refused:  # no message to park: the reconciler finds the step unstarted
                log.error(
                    "in-process step refused",
                    **_log_fields(call.message, call.message.attempt),
                    reason=result.reason,
                )

    async def _drain_local(self, timeout: float) -> None:
        """Wait for in-process and released steps; those that overstay go to the queue.

        Looks again after each wait: a consumer still draining may release a
        message meanwhile, and its steps must be waited for too.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0)
        while pending := {t for t in self._local if not t.done()}:
            _, late = await asyncio.wait(pending, timeout=max(0.0, deadline - loop.time()))
            if late:
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)
                return

    # --- steps from the queue --------------------------------------------------------

    async def _watch_cancellations(self) -> None:
        """Poll the runs with steps running here, so a step can see its run was cancelled.

        One pipelined read per interval for all of them; a missed poll only delays
        the flag, since the run's log already refuses the step's outcome.
        """
        while True:
            await asyncio.sleep(CANCEL_POLL)
            running = list(self._running)
            if not running:
                self._cancelled.clear()
                continue
            try:
                states = await self.store.run_states(running)
            except Exception as exc:
                log.warning("cancellation poll failed", error=f"{type(exc).__name__}: {exc}")
                continue
            self._cancelled = {
                r for r, s in states.items() if s in (RunStatus.CANCELLED, RunStatus.FAILED)
            }

    async def handle_delivery(self, delivery: Delivery) -> None:
        """Run the steps of one step message, then ack it (or release, hand back, park it)."""
        batch = await self.broker.receive(
            delivery, StepBatch, wrong_kind="a step queue received a non-step message"
        )
        if batch is None:
            return
        calls = []
        for message in batch.steps:
            try:
                calls.append(self._prepare(message))
            except UnknownStepError as exc:
                await self._dead_letter(delivery, str(exc))
                return
            except SerializationError as exc:
                await self._dead_letter(
                    delivery, f"undecodable arguments of step {message.step_id}: {exc}"
                )
                return
        # Every delivery is an attempt: a redelivery is the next one.
        extra = delivery.deliveries_before
        hold = _Hold()
        work = asyncio.ensure_future(
            asyncio.gather(
                *(self._run_in_slot(call, call.message.attempt + extra, hold) for call in calls)
            )
        )
        try:
            done, _ = await asyncio.wait(
                {work}, timeout=max(0.0, self.ack_after - delivery.held_for())
            )
        except asyncio.CancelledError:
            if hold.started == 0 and not delivery.settled:
                # Cut off (a shutdown) before any of its steps got a slot: back to its
                # queue as a copy, so the wait costs no attempt (a redelivery would).
                await self._give_back(delivery, work)
            else:
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
            raise
        if not done:
            if hold.started:
                await self._release(delivery, work, hold, len(calls))
            else:
                await self._give_back(delivery, work)
            return
        results = work.result()
        refused = [(c.message, r.reason) for c, r in zip(calls, results, strict=True) if r.refused]
        if refused:
            await self._dead_letter_refused(delivery, len(calls), refused)
            return
        await delivery.ack()

    async def _release(
        self,
        delivery: Delivery,
        work: asyncio.Future[list[AttemptResult]],
        hold: _Hold,
        steps: int,
    ) -> None:
        """Ack a message whose steps run past the hold limit; they go on without it.

        Returning frees the consumer's slot together with RabbitMQ's prefetch
        slot, so the next delivery is not held unseen behind a long step.
        """
        hold.covered = False
        fields: dict[str, object] = {
            "queue": delivery.queue,
            "message_id": delivery.message_id,
            "steps": steps,
        }
        try:
            await delivery.ack()
        except BrokerError as exc:
            log.warning(
                "could not release a step message; RabbitMQ will deliver it again",
                **fields,
                error=str(exc),
            )
        else:
            log.info(
                "step message released before its steps finished; the log covers them",
                **fields,
                started=hold.started,
                held_s=round(delivery.held_for(), 3),
            )
        task = asyncio.get_running_loop().create_task(self._finish_released(work, fields))
        self._local.add(task)
        task.add_done_callback(self._local.discard)

    async def _finish_released(
        self, work: asyncio.Future[list[AttemptResult]], fields: dict[str, object]
    ) -> None:
        try:
            results = await work
        except asyncio.CancelledError:
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
            raise
        except Exception as exc:
            # What would have been a redelivery: the log shows the step started here
            # with no outcome, which the reconciler retries after twice its time limit.
            log.error(
                "a step of a released message failed unexpectedly",
                **fields,
                error=f"{type(exc).__name__}: {exc}",
            )
            return
        for result in results:
            if result.refused:
                # Too late to dead-letter the message; its step_created is still there, so
                # the reconciler sends the step again ("step never started").
                log.error(
                    "a step of a released message did not start", **fields, reason=result.reason
                )

    async def _give_back(
        self, delivery: Delivery, work: asyncio.Future[list[AttemptResult]]
    ) -> None:
        """A message that waited the whole hold limit for a slot goes to its queue's tail.

        None of its steps started (nothing was recorded), so cancelling them is
        safe; the copy is not a redelivery, so the wait costs no attempt.
        """
        work.cancel()
        await asyncio.gather(work, return_exceptions=True)
        fields = {"queue": delivery.queue, "message_id": delivery.message_id}
        try:
            await self.broker.hand_back(delivery)
        except Exception as exc:
            log.warning(
                "could not hand back a waiting step message; returning it instead",
                **fields,
                error=f"{type(exc).__name__}: {exc}",
            )
            if not delivery.settled:
                with contextlib.suppress(BrokerError):
                    await delivery.nack(requeue=True)
            return
        log.info("step message waited for a free slot too long; handed back", **fields)

    async def _dead_letter_refused(
        self, delivery: Delivery, total: int, refused: list[tuple[StepMessage, str]]
    ) -> None:
        """Park the steps this worker refused to run; the others of the batch ran and count.

        The dead-letter copy holds only the refused steps (with their reasons), so a
        requeue from the dead queue retries exactly those, and the honest steps of a
        batch with one forged step are not held back.
        """
        reasons = [reason for _, reason in refused]
        reason = "; ".join(reasons[:3]) + (
            f" (and {len(reasons) - 3} more)" if len(reasons) > 3 else ""
        )
        if len(refused) == total:
            await self._dead_letter(delivery, reason)
            return
        steps = tuple(message for message, _ in refused)
        body = encode_message(steps[0] if len(steps) == 1 else StepBatch(steps))
        log.warning(
            "steps dead-lettered; the rest of their batch ran",
            queue=delivery.queue,
            refused=len(steps),
            of=total,
            reason=reason,
        )
        await self.broker.dead_letter(delivery, reason, body=body)

    def _prepare(self, message: StepMessage) -> _Call:
        """Resolve the step and decode its arguments: UnknownStepError or SerializationError."""
        definition = self.registry.get(message.step_name)
        args, kwargs = StepDef.decode_args(message.args, max_size=definition.max_payload)
        return _Call(message, definition, args, kwargs)

    async def _run_in_slot(
        self, call: _Call, attempt: int, hold: _Hold, *, local: bool = False
    ) -> AttemptResult:
        """Wait for a free concurrency slot, then make one attempt of one step in it.

        A step with ``lf.Concurrency`` first takes its key's slot, or is parked
        (``worker/concurrency.py``) and its delivery counts as done.
        """
        if not local:  # run_local counted its steps when it accepted them
            self._accepted += 1
        held: Held | None = None
        try:
            if call.definition.rate_limit is not None:
                try:
                    wait_ms = await self._take_turn(call, attempt)
                except InvalidArgumentError as exc:
                    return attempts.refused(f"step {call.message.step_id}: {exc}")
                if wait_ms > 0:
                    self.observers.after_step_held_back(call.message.step_name, "rate")
                    return attempts.PARKED
            if call.definition.concurrency is not None:
                try:
                    held = await self._take_limit(call, attempt)
                except InvalidArgumentError as exc:
                    return attempts.refused(f"step {call.message.step_id}: {exc}")
                if held is None:
                    self.observers.after_step_held_back(call.message.step_name, "concurrency")
                    return attempts.PARKED
            try:
                await self._slots.acquire(lane_priority(call.message.queue))
            except asyncio.CancelledError:
                if not hold.covered:  # released before it started: no redelivery brings it
                    await self._hand_back(call.message, attempt, attempt)
                raise
            run_id = call.message.run_id
            self._holding[run_id] += 1
            try:
                hold.started += 1
                return await self._attempt(call, attempt, hold)
            finally:
                self._slots.release()
                self._holding[run_id] -= 1
                if self._holding[run_id] <= 0:
                    del self._holding[run_id]
        finally:
            self._accepted -= 1
            if held is not None:
                await self._free_limit(held)

    async def _take_turn(self, call: _Call, attempt: int) -> int:
        """0 if the step may start now under its rate limit; else it was put off (a timer
        sends it again at its reserved turn) and this is how long it waits, in ms."""
        limit = call.definition.rate_limit
        assert limit is not None and limit.name is not None
        message = call.message
        key = limit.key_of(call.definition.signature, call.args, call.kwargs)
        member = f"{message.run_id}|{message.step_id}|{attempt}"
        wait_ms = await self.store.take_rate(
            limit.name, key, member, limit.interval_ms, limit.burst
        )
        if wait_ms > 0:
            timer = Timer(TimerKind.THROTTLE, message.run_id, message.step_id, attempt)
            await retrying(
                "arm a rate-limit timer", lambda: self.store.add_timer(timer, delay_ms=wait_ms)
            )
            log.debug(
                "step waits for its rate limit",
                **_log_fields(message, attempt),
                limit=limit.name,
                key=key,
                wait_ms=wait_ms,
            )
        return wait_ms

    async def _take_limit(self, call: _Call, attempt: int) -> Held | None:
        """The step's concurrency slot, taken; None if it was parked to wait for one."""
        limit = call.definition.concurrency
        assert limit is not None and limit.name is not None
        message = call.message
        held = Held(
            limit=limit.name,
            key=limit.key_of(call.definition.signature, call.args, call.kwargs),
            member=f"{message.run_id}|{message.step_id}",
            capacity=limit.limit,
        )
        parked = encode_message(dataclasses.replace(message, attempt=attempt))
        granted, promoted = await self._leases.acquire(held, parked)
        # No await between taking the slot and returning it to the caller, who releases
        # it: a cancellation here would leave it held (and renewed) for good.
        self._publish_promoted(promoted)
        if not granted:
            log.info(
                "step waits for a concurrency slot",
                **_log_fields(message, attempt),
                limit=held.limit,
                key=held.key,
            )
            return None
        return held

    async def _free_limit(self, held: Held) -> None:
        """Give the slot back and send on the waiters it lets in; a failure is logged, and
        the slot's lease then frees it (the reconciler's sweep promotes the waiters)."""
        try:
            self._publish_promoted(await self._leases.release(held))
        except Exception as exc:
            log.warning(
                "could not free a concurrency slot; its lease will",
                limit=held.limit,
                member=held.member,
                error=f"{type(exc).__name__}: {exc}",
            )

    def _publish_promoted(self, promoted: list[bytes]) -> None:
        """Send the waiters let in on their way, in the background (a failure is logged:
        their steps are created and unstarted, which the reconciler sends again)."""
        if not promoted:
            return

        async def send() -> None:
            try:
                await send_promoted(self.broker, promoted)
            except Exception as exc:
                log.warning(
                    "could not send steps let into concurrency slots; the reconciler will",
                    steps=len(promoted),
                    error=f"{type(exc).__name__}: {exc}",
                )

        task = asyncio.get_running_loop().create_task(send())
        self._local.add(task)
        task.add_done_callback(self._local.discard)

    async def _attempt(self, call: _Call, attempt: int, hold: _Hold) -> AttemptResult:
        """Record the step started, call its function, record the outcome; say how it ended."""
        message, definition = call.message, call.definition
        bound = log.bind(**_log_fields(message, attempt))
        policy = self.registry.retry_policy_for(definition.name, self.retry)
        started = self._started(message, definition, attempt)
        if attempt > policy.max_attempts:
            lost = WorkerLostError(
                f"step {definition.name!r} was delivered {attempt - message.attempt + 1} times "
                f"without an outcome (its workers died or were stopped); {policy.max_attempts} "
                "attempts allowed"
            )
            try:
                # step_started goes first: a forged message cannot fail a step this way.
                await self._record(
                    message, [started, outcome.failed(message.step_id, attempt, lost)], bound
                )
            except EventLogError as exc:
                return attempts.refused(await self._refusal_reason(message, exc, bound))
            return attempts.RECORDED
        try:
            (result,) = await self._writes.append(message.run_id, [started])
        except RunClosedError:
            bound.info("run already ended; step skipped")
            return attempts.SKIPPED
        except RunNotFoundError:
            # A late message for a run removed by retention (it had ended): nothing to run.
            bound.info("run no longer exists (removed); step skipped")
            return attempts.SKIPPED
        except EventLogError as exc:
            return attempts.refused(await self._refusal_reason(message, exc, bound))
        if result.duplicate:
            # Already has an outcome, or this attempt is stale: never run it again.
            bound.info("step already recorded; skipped")
            await self._request_replay(message.run_id)
            return attempts.SKIPPED
        self.observers.after_step_recorded(message.step_name, EventType.STEP_STARTED, None)
        began = time.monotonic()
        try:
            event = await self._call_step_function(call, attempt, policy)
        except asyncio.CancelledError:
            if not hold.covered:  # a covered step goes back by itself: its message is unacked
                await self._hand_back(message, attempt + 1, attempt)
            raise
        await self._record(message, [event], bound, time.monotonic() - began)
        return attempts.RECORDED

    async def _refusal_reason(
        self,
        message: StepMessage,
        exc: EventLogError,
        bound: structlog.typing.FilteringBoundLogger,
    ) -> str:
        """Why a step was not started, as its dead-letter reason (a forgery says what differs)."""
        if not isinstance(exc, StepMismatchError):
            return f"cannot start step {message.step_id}: {exc}"
        try:
            difference = await self._difference(message)
        except Exception as read_error:  # the reason stays the store's own
            difference = f"{exc.difference} (the step_created could not be read: {read_error})"
        reason = (
            f"forged step message: run {message.run_id!r} step {message.step_id!r} "
            f"does not match its step_created: {difference}; not run"
        )
        bound.warning("step message refused", reason=reason)
        return reason

    async def _difference(self, message: StepMessage) -> str:
        """Name, arguments or both: read from the step_created the message claims to be."""
        entity = await self.store.entity(message.run_id, message.step_id)
        created = (
            await self.store.read_event(message.run_id, entity.created_id)
            if entity.created_id
            else None
        )
        record = created.record if created is not None else None
        logged_step = record if isinstance(record, StepCreated) else StepCreated()
        name, args = logged_step.name, logged_step.args
        differs = []
        if name != message.step_name:
            differs.append(f"step name {_cut(message.step_name)!r}, the log's {_cut(name)!r}")
        if args is None or args != message.args:
            logged = len(args) if args is not None else 0
            differs.append(
                f"arguments ({len(message.args)} bytes) differ from the log's ({logged} bytes)"
            )
        return "; ".join(differs) or "its call fingerprint differs from the log's"

    async def _hand_back(self, message: StepMessage, next_attempt: int, attempt: int) -> None:
        """A step no message covers, cut off by shutdown, goes to the queue as ``next_attempt``.

        The next attempt if it had started, the same one if it had not.
        """
        try:
            await self.broker.publish_step(dataclasses.replace(message, attempt=next_attempt))
        except Exception as exc:
            # The log still shows it started here; the reconciler retries it once this
            # worker's presence mark has expired.
            log.warning(
                "could not hand a step back; the reconciler will",
                **_log_fields(message, attempt),
                error=f"{type(exc).__name__}: {exc}",
            )

    def _started(self, message: StepMessage, definition: StepDef, attempt: int) -> NewEvent:
        timer = None
        timeout_ms = 0
        if definition.heartbeat_timeout is not None:
            timeout_ms = int(definition.heartbeat_timeout * 1000)
            timer = Timer(TimerKind.HEARTBEAT, message.run_id, message.step_id, attempt, timeout_ms)
        # The limits let the reconciler tell a stuck step from a slow one.
        started = StepStarted(
            worker=self.identity,
            timeout=definition.timeout,
            heartbeat_timeout=definition.heartbeat_timeout,
        )
        return NewEvent.of(
            EventType.STEP_STARTED,
            message.step_id,
            started.as_data(),
            attempt=attempt,
            # The append refuses it unless the step_created recorded this very call.
            fingerprint=call_fingerprint(message.step_name, message.args),
            timer=timer,
            delay_ms=timeout_ms,
        )

    async def _record(
        self,
        message: StepMessage,
        events: list[NewEvent],
        bound: structlog.typing.FilteringBoundLogger,
        duration: float | None = None,
    ) -> None:
        try:
            results = await self._writes.append(message.run_id, events)
        except RunClosedError:
            bound.info("run ended while the step ran; outcome dropped")
            return
        except RunNotFoundError:
            bound.info("run ended and was removed while the step ran; outcome dropped")
            return
        for event, result in zip(events, results, strict=False):
            if result.appended:
                self.observers.after_step_recorded(message.step_name, event.type, duration)
        final = events[-1].type
        if final is not EventType.STEP_RETRYING and not self.observers.drop_activation(
            message.run_id
        ):
            await self._request_replay(message.run_id)
        bound.debug("step recorded", outcome=final.value)

    async def _call_step_function(self, call: _Call, attempt: int, policy: RetryPolicy) -> NewEvent:
        """Call the step's function under its limits; its outcome as the event to record."""
        message, definition = call.message, call.definition
        beats = Beats()
        recorder = _HeartbeatRecorder(self.store, message, attempt, definition.heartbeat_timeout)

        def on_heartbeat() -> None:
            beats.beat()
            recorder.maybe_record()

        run_id = message.run_id
        ctx = StepContext(
            run_id=run_id,
            step_id=message.step_id,
            step_name=message.step_name,
            attempt=attempt,
            on_heartbeat=on_heartbeat,
            cancel_requested=lambda: run_id in self._cancelled,
            outputs=self.store,
        )
        token = bind_step_context(ctx)
        step = _step_attempt(message, attempt)
        self.observers.before_step_call(step)
        self._running[run_id] += 1
        try:
            args, kwargs = await self._values(call)
            value = await run_limited(
                self._call_with_resources(definition, args, kwargs),
                timeout=definition.timeout,
                heartbeat_timeout=definition.heartbeat_timeout,
                beats=beats,
                step_name=definition.name,
            )
        except Exception as exc:
            return outcome.failure_event(message.run_id, message.step_id, attempt, exc, policy)
        finally:
            reset_step_context(token)
            self.observers.after_step_call(step)
            self._running[run_id] -= 1
            if self._running[run_id] <= 0:
                del self._running[run_id]
            await recorder.close()
        return outcome.completed(
            message.step_id,
            attempt,
            value,
            step_name=message.step_name,
            max_size=definition.max_payload,
        )

    async def _call_with_resources(
        self, definition: StepDef, args: list[Any], kwargs: dict[str, Any]
    ) -> Any:
        """The step's call inside its resources: attempt-scoped ones close when it ends."""
        if not definition.resources:  # most steps: no context to enter on the hot path
            return await definition.call_function(args, kwargs)
        async with self._resources.provide(definition.resources) as provided:
            return await definition.call_function(args, {**kwargs, **provided})

    async def _values(self, call: _Call) -> tuple[list[Any], dict[str, Any]]:
        """The call's arguments with offloaded ones fetched and verified (BlobError if not).

        Fetched only now, after step_started is recorded: a message of a run that ended
        or was removed never costs a fetch.
        """
        fetch = self._blobs.fetcher(call.message.run_id)
        args: list[Any] = await resolve(call.args, fetch, depth=1)
        kwargs: dict[str, Any] = await resolve(call.kwargs, fetch, depth=1)
        return args, kwargs

    async def _request_replay(self, run_id: str) -> None:
        """Tell a scheduler the run moved: this process's own if it has one, else RabbitMQ's."""
        if self._replay_here is not None:
            try:
                await self._replay_here(run_id)
                return
            except Exception as exc:
                log.warning(
                    "local activation failed; publishing it",
                    run_id=run_id,
                    error=f"{type(exc).__name__}: {exc}",
                )
        await self._activations(run_id)

    async def _publish_activation(self, run_id: str) -> None:
        activation = Activation(run_id=run_id, reason="step")
        await retrying("publish activation", lambda: self.broker.publish_activation(activation))

    async def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        log.warning("message dead-lettered", queue=delivery.queue, reason=reason)
        await self.broker.dead_letter(delivery, reason)


def _cut(text: str, limit: int = 100) -> str:
    """A name from a message of unknown origin, short enough for a header and a log line."""
    return text if len(text) <= limit else f"{text[:limit]}..."


def _step_attempt(message: StepMessage, attempt: int) -> StepAttempt:
    return StepAttempt(
        run_id=message.run_id,
        workflow=message.workflow,
        step=message.step_name,
        corr=message.step_id,
        attempt=attempt,
    )


def _log_fields(message: StepMessage, attempt: int) -> dict[str, object]:
    """What every log line about a step attempt carries (the pid is added by the renderer)."""
    return _step_attempt(message, attempt).log_fields()


class _HeartbeatRecorder:
    """Writes a running step's heartbeats to Redis at most every third of its timeout."""

    def __init__(
        self, store: Presence, message: StepMessage, attempt: int, timeout: float | None
    ) -> None:
        self._store = store
        self._message = message
        self._attempt = attempt
        self._every = (timeout / 3.0) if timeout else None
        self._last = time.monotonic()
        self._task: asyncio.Task[bool] | None = None

    def maybe_record(self) -> None:
        if self._every is None or (self._task is not None and not self._task.done()):
            return
        now = time.monotonic()
        if now - self._last < self._every:
            return
        self._last = now
        self._task = asyncio.get_running_loop().create_task(
            self._store.heartbeat(self._message.run_id, self._message.step_id, self._attempt)
        )

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = None
