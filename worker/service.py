"""The worker: consume step messages, record started, run, record the outcome, ack.

The order is the delivery guarantee: the message is acked only after the
outcome is appended and the run's activation is confirmed by the broker, so a
crash at any point leaves either an unacked message (redelivered) or a log that
says what is missing (found by the reconciler). A bad message never stops the
worker: it goes to the dead-letter queue with its reason.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Sequence

import structlog

from broker import Activation, Broker, Consumer, Delivery, StepMessage, decode_message
from eventlog.errors import (
    EventLogError,
    MalformedMessageError,
    RunClosedError,
    SerializationError,
    UnknownStepError,
)
from eventlog.events import EventType, NewEvent
from eventlog.store import EventStore

from . import outcome
from .context import StepContext, bind_step_context, reset_step_context
from .registry import StepDef, StepRegistry, steps

log = structlog.get_logger("ledgerflow.worker")

DEFAULT_CONCURRENCY = 16


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Worker:
    """Runs steps from one or more step queues with bounded concurrency."""

    def __init__(
        self,
        store: EventStore,
        broker: Broker,
        *,
        queues: Sequence[str] | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        registry: StepRegistry = steps,
    ) -> None:
        self.store = store
        self.broker = broker
        self.registry = registry
        self.queues = list(queues) if queues else (registry.queues() or ["default"])
        self.concurrency = concurrency
        self.identity = worker_identity()
        self._consumers: list[Consumer] = []
        self._inflight: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        for queue in self.queues:
            full = await self.broker.declare_step_queue(queue)
            consumer = await self.broker.consume(full, self.handle, prefetch=self.concurrency)
            self._consumers.append(consumer)
        log.info("worker started", queues=self.queues, concurrency=self.concurrency)

    async def stop(self) -> None:
        for consumer in self._consumers:
            await consumer.cancel()
        self._consumers.clear()

    async def handle(self, delivery: Delivery) -> None:
        try:
            message = decode_message(delivery.body)
        except MalformedMessageError as exc:
            await self._dead_letter(delivery, f"malformed message: {exc}")
            return
        if not isinstance(message, StepMessage):
            await self._dead_letter(delivery, "a step queue received a non-step message")
            return
        try:
            definition = self.registry.get(message.step_name)
        except UnknownStepError as exc:
            await self._dead_letter(delivery, str(exc))
            return
        await self._run(delivery, message, definition)

    async def _run(self, delivery: Delivery, message: StepMessage, definition: StepDef) -> None:
        bound = log.bind(
            run_id=message.run_id,
            step=message.step_name,
            corr=message.step_id,
            attempt=message.attempt,
        )
        try:
            args, kwargs = StepDef.decode_args(message.args)
        except SerializationError as exc:
            await self._dead_letter(delivery, f"undecodable step arguments: {exc}")
            return
        started = NewEvent.of(
            EventType.STEP_STARTED,
            message.step_id,
            {"worker": self.identity},
            attempt=message.attempt,
        )
        try:
            (result,) = await self.store.append(message.run_id, [started])
        except RunClosedError:
            bound.info("run already ended; step skipped")
            await delivery.ack()
            return
        except EventLogError as exc:
            await self._dead_letter(delivery, f"cannot start step: {exc}")
            return
        if result.duplicate:
            # Already has an outcome, or this attempt is stale: never run it again.
            bound.info("step already recorded; skipped")
            await self._activate(message.run_id)
            await delivery.ack()
            return
        event = await self._execute(message, definition, args, kwargs)
        try:
            await self.store.append(message.run_id, [event])
        except RunClosedError:
            bound.info("run ended while the step ran; outcome dropped")
            await delivery.ack()
            return
        await self._activate(message.run_id)
        await delivery.ack()
        bound.debug("step recorded", outcome=event.type.value)

    async def _execute(
        self,
        message: StepMessage,
        definition: StepDef,
        args: list[object],
        kwargs: dict[str, object],
    ) -> NewEvent:
        ctx = StepContext(
            run_id=message.run_id,
            step_id=message.step_id,
            step_name=message.step_name,
            attempt=message.attempt,
        )
        token = bind_step_context(ctx)
        try:
            if definition.timeout is not None:
                value = await asyncio.wait_for(definition.invoke(args, kwargs), definition.timeout)
            else:
                value = await definition.invoke(args, kwargs)
        except Exception as exc:
            return outcome.failed(message.step_id, message.attempt, exc)
        finally:
            reset_step_context(token)
        return outcome.completed(
            message.step_id,
            message.attempt,
            value,
            step_name=message.step_name,
            max_size=definition.max_payload,
        )

    async def _activate(self, run_id: str) -> None:
        await self.broker.publish_activation(Activation(run_id=run_id, reason="step"))

    async def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        log.warning("message dead-lettered", queue=delivery.queue, reason=reason)
        await self.broker.dead_letter(delivery, reason)
