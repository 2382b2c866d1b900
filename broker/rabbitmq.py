"""The production broker: RabbitMQ quorum queues through aio-pika.

Channel layout, and why:

* one robust channel with publisher confirms and ``on_return_raises`` for all
  publishing, so a publish returns only once RabbitMQ has the message and an
  unroutable ``mandatory`` message raises instead of vanishing;
* one robust channel per consumer, so a consumer's prefetch is its own and
  closing it hands exactly its unacked messages back to the queue;
* one channel per queue used with ``get``, because a failing operation closes
  a channel and with it requeues every message it had not acked;
* short-lived channels for declarations and admin calls, because a refused
  declaration (PRECONDITION_FAILED, NOT_FOUND) closes the channel it ran on.

One RabbitMQ node or several: the URL may be a comma-separated list of a
cluster's nodes (``broker/urls.py``). The connection is aio-pika's robust
connection, which reconnects after a broker restart and re-subscribes the
consumers (it remembers queues declared through a robust channel), with one
change (``FailoverConnection``): each time the connection is lost or an attempt
fails, the next attempt goes to the next URL of the list, round the list. So a
node's death moves every channel of the process, publishing and consuming, to a
surviving node at once; only when every node fails does the process wait
``reconnect_interval`` between attempts.

A publish in flight when the connection drops is sent again on the restored
connection, and one RabbitMQ nacked is sent again on a new channel, until
``timeout`` runs out: the message may then arrive twice, which the event log
makes harmless (appends are idempotent, a step message is checked against the
log before it runs), while giving up would leave the caller to guess whether it
arrived. Declarations and look-ups cut off by a lost connection are made once
more after it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import aio_pika
import aiormq
import structlog
from aio_pika import RobustConnection
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from aio_pika.exceptions import MessageProcessError
from ledgerflow.eventlog.errors import (
    BrokerError,
    ConfigurationError,
    LedgerflowError,
    PublishError,
    ServiceUnavailableError,
)
from ledgerflow.eventlog.names import DEFAULT_STEP_QUEUE, Names
from ledgerflow.eventlog.urls import redact, redact_text
from yarl import URL

from .base import (
    DEFAULT_DELIVERY_LIMIT,
    Broker,
    Consumer,
    Delivery,
    Handler,
    HandlerRunner,
    HeldDeadLetters,
    Outgoing,
    QueueInfo,
)
from .topology import (
    check_quorum_size,
    declare_topology,
    declare_work_queue,
    work_queue_arguments,
)
from .urls import amqp_urls, shown

log = structlog.get_logger(__name__)


class _RaisedAnyway(logging.Filter):
    """Drop aiormq's "error when creating transport" line: it re-raises that error at once.

    Every caller reports the failure itself, once, with the URL redacted and a hint
    (a CLI user sees one line instead of two); a robust connection's own reconnect
    warnings are separate lines and stay.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("error when creating transport")


logging.getLogger("aiormq.connection").addFilter(_RaisedAnyway())

# Errors aio-pika/aiormq raise when the channel or connection under an operation is gone.
_CHANNEL_ERRORS = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
)
# The connection itself went away (not a refusal on the channel, such as NOT_FOUND).
_CONNECTION_LOST = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
)

T = TypeVar("T")


class RabbitDelivery(Delivery):
    """A delivery from a quorum queue; settles through the channel it arrived on."""

    def __init__(self, message: AbstractIncomingMessage, queue: str) -> None:
        headers: dict[str, Any] = dict(message.headers or {})
        super().__init__(
            body=message.body,
            headers=headers,
            queue=queue,
            redelivered=bool(message.redelivered),
            delivery_count=_delivery_count(headers),
            message_id=message.message_id,
            timestamp_ms=_ms(message.timestamp),
        )
        self._message = message

    async def _ack(self) -> None:
        try:
            await self._message.ack()
        except (*_CHANNEL_ERRORS, MessageProcessError) as exc:
            raise BrokerError(
                f"could not ack message {self.message_id!r} from {self.queue!r} ({exc!r}); "
                "its channel is gone, so RabbitMQ will deliver it again"
            ) from exc

    async def _nack(self, requeue: bool) -> None:
        try:
            await self._message.nack(requeue=requeue)
        except (*_CHANNEL_ERRORS, MessageProcessError) as exc:
            raise BrokerError(
                f"could not nack message {self.message_id!r} from {self.queue!r} ({exc!r}); "
                "its channel is gone, so RabbitMQ will deliver it again"
            ) from exc


def _ms(value: datetime.datetime | None) -> int | None:
    """An AMQP timestamp (whole seconds, decoded as an aware UTC datetime) in ms."""
    return None if value is None else int(value.timestamp() * 1000)


def _delivery_count(headers: dict[str, Any]) -> int:
    """Quorum queues count earlier deliveries in ``x-delivery-count``; absent the first time."""
    previous = headers.get("x-delivery-count", 0)
    return (previous if isinstance(previous, int) else 0) + 1


PUBLISH_RETRY_PAUSE = 0.1
"""Seconds before the n-th retry of an unconfirmed publish: n times this, at most 1 s."""


class _Unconfirmed(Exception):
    """A publish that was not confirmed for a reason a new attempt may fix."""

    def __init__(self, reason: str, *, nacked: bool = False) -> None:
        super().__init__(reason)
        self.nacked = nacked


REOPEN_WAIT = 30.0
"""How long a consumer channel the server closed may stay closed, with the connection
up, before the consumer subscribes again on a new channel itself."""
REOPEN_CHECK = 0.5


class RabbitConsumer(Consumer):
    """A subscription on its own channel; cancelling closes the channel.

    RabbitMQ closes a consumer's channel on its own for some errors, notably
    when a delivery stays unacked past ``consumer_timeout`` (PRECONDITION_FAILED,
    "delivery acknowledgement ... timed out"); every message the channel held
    is then redelivered. aio-pika's robust channel reopens and re-subscribes
    such a channel (observed with aio-pika 10.2 on RabbitMQ 3.10), but a failed
    reopen is not retried by anyone, which would silently stop this consumer.
    So each close is logged with the server's reason, and if the channel is
    still closed ``reopen_wait`` seconds later while the connection is up, the
    consumer subscribes again on a new channel.
    """

    def __init__(
        self,
        broker: RabbitBroker,
        queue_name: str,
        runner: HandlerRunner,
        prefetch: int,
        *,
        reopen_wait: float = REOPEN_WAIT,
    ) -> None:
        self._broker = broker
        self._queue_name = queue_name
        self._runner = runner
        self._prefetch = prefetch
        self._reopen_wait = reopen_wait
        self._channel: AbstractRobustChannel | None = None
        self._queue: AbstractQueue | None = None
        self._tag = ""
        self._cancelled = False
        self._watchdog: asyncio.Task[None] | None = None

    async def subscribe(self) -> None:
        """Open a channel, set its prefetch and consume the queue on it."""
        channel = await _open_channel(self._broker._require(), self._broker._timeout)
        try:
            await channel.set_qos(prefetch_count=self._prefetch)
            # Declared (passively) through the robust channel so that aio-pika
            # re-subscribes it after a reconnect.
            declared = await _passive(channel, self._queue_name)
            tag = await declared.consume(self._on_message, no_ack=False)
        except BaseException:
            with contextlib.suppress(*_CHANNEL_ERRORS):
                await channel.close()
            raise
        channel.close_callbacks.add(self._on_channel_closed)
        channel.reopen_callbacks.add(self._on_channel_reopened)
        self._channel, self._queue, self._tag = channel, declared, tag

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        # Hand off to a task we own: aiormq cancels its callback tasks when the
        # channel closes (a broker restart), which would cut a handler off
        # between two writes. Ours keep going and ride out the restart; their
        # late ack fails harmlessly and the redelivery finds the work done.
        self._runner.spawn(RabbitDelivery(message, self._queue_name))

    def _on_channel_closed(self, _: object, exc: BaseException | None) -> None:
        if self._cancelled:
            return
        log.warning(
            "consumer channel closed; it will be reopened",
            queue=self._queue_name,
            reason=_close_reason(exc),
        )
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.get_running_loop().create_task(self._ensure_consuming())

    def _on_channel_reopened(self, _: object) -> None:
        if not self._cancelled:
            log.info("consumer channel reopened; consuming again", queue=self._queue_name)

    async def _ensure_consuming(self) -> None:
        """Subscribe again if the robust channel has not come back by itself in time."""
        connection = self._broker._connection
        waited = 0.0
        while not self._cancelled and connection is not None and not connection.is_closed:
            channel = self._channel
            if channel is not None and not channel.is_closed:
                return
            if not connection.connected.is_set():
                waited = 0.0  # reconnecting: the connection restores its channels itself
            elif waited >= self._reopen_wait:
                await self._resubscribe()
                return
            await asyncio.sleep(REOPEN_CHECK)
            waited += REOPEN_CHECK

    async def _resubscribe(self) -> None:
        old = self._channel
        if old is not None:
            old.close_callbacks.discard(self._on_channel_closed)
            old.reopen_callbacks.discard(self._on_channel_reopened)
            with contextlib.suppress(*_CHANNEL_ERRORS, TimeoutError):
                await old.close()  # never restored later: it would consume a second time
        try:
            await self.subscribe()
        except Exception as exc:
            log.error(
                "consumer could not subscribe again; retrying",
                queue=self._queue_name,
                error=f"{type(exc).__name__}: {exc}",
            )
            self._channel = None
            self._watchdog = asyncio.get_running_loop().create_task(self._retry_subscribe())
            return
        log.warning(
            "consumer channel stayed closed; subscribed again on a new channel",
            queue=self._queue_name,
        )

    async def _retry_subscribe(self) -> None:
        await asyncio.sleep(self._reopen_wait)
        if not self._cancelled:
            await self._resubscribe()

    async def cancel(self, *, timeout: float = 10.0) -> None:
        if self._cancelled:
            return
        self._cancelled = True
        self._runner.stop()
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        if self._queue is not None:
            with contextlib.suppress(*_CHANNEL_ERRORS, TimeoutError):
                await self._queue.cancel(self._tag, timeout=timeout)
        await self._runner.drain(timeout)
        # Closing the channel hands every message still unacked back to the queue.
        if self._channel is not None:
            with contextlib.suppress(*_CHANNEL_ERRORS, TimeoutError):
                await self._channel.close()
        self._broker._forget(self)


def _close_reason(exc: BaseException | None) -> str:
    """What the server (or the network) said when a channel closed."""
    if exc is None:
        return "closed"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


DEFAULT_HEARTBEAT = 15


def with_default_heartbeat(url: str, seconds: int) -> str:
    """Add an AMQP heartbeat to a URL that names none.

    A frozen or partitioned worker keeps its TCP connection, and with it every
    message in its prefetch window, until heartbeats go missing; the usual 60 s
    default holds such messages for two minutes. ``?heartbeat=N`` in the URL wins.
    """
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    if "heartbeat" in query:
        return url
    query["heartbeat"] = str(seconds)
    return urlunsplit(parts._replace(query=urlencode(query)))


class FailoverConnection(RobustConnection):
    """aio-pika's robust connection over the nodes of a cluster, one at a time.

    Every loss of the connection and every failed attempt (aio-pika calls
    ``_on_connection_close`` for both, since 9.4) moves the URL to the next node of
    the list before the robust loop tries again. A dropped connection is retried
    at once, on the next node (aio-pika's loop rests ``reconnect_interval`` after
    each connect, so a connection lost sooner than that after it was made waits
    for the rest); a failed attempt after ``reconnect_interval``, so a cluster that
    is down entirely is tried once per node per interval, not in a tight loop. With
    one URL this is exactly aio-pika's robust connection.

    Channels, consumers and the publish channel are aio-pika's robust ones: they
    are restored on whichever node the connection reaches, and the quorum queues
    they use live on every node (``broker/topology.py``).
    """

    def __init__(self, urls: Sequence[str], start: int, **kwargs: Any) -> None:
        super().__init__(URL(urls[start]), **kwargs)
        self._urls = [URL(url) for url in urls]
        self._index = start
        self._was_connected = False

    @property
    def current_url(self) -> str:
        """The URL of the node this connection is on, or tries next (unredacted)."""
        return str(self._urls[self._index])

    async def _on_connected(self) -> None:
        await super()._on_connected()
        if self._was_connected:
            # Paired with the failover warning: where the process is now, and when.
            log.warning("rabbitmq.reconnected", node=redact(self.current_url))
        self._was_connected = True

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        # aio-pika's own handler first (its log line names the node that was lost); it
        # only wakes the reconnect loop, which cannot run before this returns.
        await super()._on_connection_close(closing)
        if len(self._urls) < 2 or self._close_called or self.is_closed:
            return
        lost = self.current_url
        self._index = (self._index + 1) % len(self._urls)
        self.url = self._urls[self._index]
        if self._was_connected:  # the first connect: RabbitBroker reports every URL itself
            log.warning(
                "rabbitmq.failover",
                lost=redact(lost),
                next=redact(self.current_url),
                reason=redact_text(_close_reason(_closing_error(closing)), [lost]),
            )


def _closing_error(closing: asyncio.Future[Any]) -> BaseException | None:
    if not closing.done() or closing.cancelled():
        return None
    return closing.exception()


class RabbitBroker(Broker):
    """RabbitMQ with quorum queues, publisher confirms, mandatory routing and manual acks.

    ``url`` is one node's URL, a comma-separated list of a cluster's nodes, or a
    sequence of them: connecting tries them in order, and the connection then
    fails over round the list (``FailoverConnection``).
    """

    def __init__(
        self,
        url: str | Sequence[str],
        names: Names,
        *,
        delivery_limit: int = DEFAULT_DELIVERY_LIMIT,
        quorum_size: int | None = None,
        reconnect_interval: float = 5.0,
        timeout: float = 30.0,
    ) -> None:
        # Reject a bad limit, replica count or URL before connecting.
        work_queue_arguments(names, delivery_limit)
        self.quorum_size = check_quorum_size(quorum_size)
        self.names = names
        self.delivery_limit = delivery_limit
        self._given = amqp_urls(url)
        self._urls = tuple(with_default_heartbeat(u, DEFAULT_HEARTBEAT) for u in self._given)
        self._reconnect_interval = reconnect_interval
        self._timeout = timeout
        self._connection: FailoverConnection | None = None
        self._publish_channel: AbstractRobustChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._get_channels: dict[str, tuple[AbstractChannel, AbstractQueue]] = {}
        self._declared: dict[str, str] = {}
        self._consumers: set[RabbitConsumer] = set()
        self._in_flight_ids: dict[str, asyncio.Event] = {}
        self._lock = asyncio.Lock()
        self._renew_lock = asyncio.Lock()

    @property
    def urls(self) -> tuple[str, ...]:
        """The nodes' URLs, in the order connecting tries them (unredacted: never log these)."""
        return self._urls

    @property
    def connected_url(self) -> str | None:
        """The URL of the node the connection is on now (or tries next); None if not connected."""
        return None if self._connection is None else self._connection.current_url

    # --- lifecycle -----------------------------------------------------------------

    async def connect(self) -> None:
        async with self._lock:
            if self._connection is not None and not self._connection.is_closed:
                return
            connection = await self._first_node()
            try:
                async with _temporary_channel(connection, self._timeout) as channel:
                    await declare_topology(
                        channel, self.names, self.delivery_limit, self.quorum_size
                    )
                publish_channel = await connection.channel(
                    publisher_confirms=True, on_return_raises=True
                )
                exchange = await publish_channel.get_exchange(self.names.exchange, ensure=False)
            except BaseException:
                await connection.close()
                raise
            self._connection = connection
            self._publish_channel = publish_channel
            self._exchange = exchange
            self._declared = {DEFAULT_STEP_QUEUE: self.names.step_queue()}

    async def _first_node(self) -> FailoverConnection:
        """A robust connection to the first node of the list that answers, tried in order.

        Every node failing is one error naming each (redacted) URL with its reason:
        a ConfigurationError if any node refused the login or the virtual host
        (users and permissions are cluster-wide: that is the deployment, not an
        outage), else a ServiceUnavailableError.
        """
        failures: list[_Failure] = []
        for index, url in enumerate(self._given):
            connection = FailoverConnection(
                self._urls,
                index,
                reconnect_interval=self._reconnect_interval,
                client_properties={"connection_name": f"ledgerflow:{self.names.namespace}"},
            )
            try:
                await connection.connect(timeout=self._timeout)
            except (OSError, aiormq.exceptions.AMQPError) as exc:
                await connection.close()
                failures.append(_connect_failure(url, exc))
                continue
            if failures:
                log.warning(
                    "rabbitmq.connected_to_later_node",
                    node=redact(url),
                    unreachable=shown([f.url for f in failures]),
                )
            return connection
        raise _all_failed(failures)

    async def close(self) -> None:
        for consumer in list(self._consumers):
            await consumer.cancel()
        connection, self._connection = self._connection, None
        self._exchange = self._publish_channel = None
        self._get_channels.clear()
        self._declared.clear()
        if connection is not None:
            await connection.close()

    def _forget(self, consumer: RabbitConsumer) -> None:
        self._consumers.discard(consumer)

    def _require(self) -> FailoverConnection:
        if self._connection is None or self._exchange is None:
            raise BrokerError("the RabbitMQ broker is not connected; call connect() first")
        return self._connection

    async def declare_step_queue(self, queue: str = DEFAULT_STEP_QUEUE) -> str:
        full = self._declared.get(queue)
        if full is not None:
            return full
        full = self.names.step_queue(queue)

        async def declare(channel: AbstractChannel) -> None:
            await declare_work_queue(
                channel, self.names, full, self.delivery_limit, self.quorum_size
            )

        await self._admin(f"declaring queue {full!r}", declare)
        self._declared[queue] = full
        return full

    async def _admin(self, what: str, call: Callable[[AbstractChannel], Awaitable[T]]) -> T:
        """An idempotent admin call on a channel of its own, once more if the connection drops.

        A declaration or a passive look-up that was under way when the node went away
        fails with the connection; once the connection is back (on another node) the
        same call is made again. A second loss is a BrokerError saying what failed.
        """
        for attempt in (1, 2):
            try:
                async with _temporary_channel(self._require(), self._timeout) as channel:
                    return await call(channel)
            except _CONNECTION_LOST as exc:
                if attempt == 2:
                    raise BrokerError(
                        f"{what} failed twice: the connection to RabbitMQ was lost ({exc!r})"
                    ) from exc
                log.warning("rabbitmq.admin_call_retried", what=what, error=repr(exc))
        raise AssertionError("unreachable")

    # --- publishing ----------------------------------------------------------------

    async def _publish_one(self, out: Outgoing) -> None:
        """Publish until RabbitMQ confirms it, across reconnects, for up to ``timeout`` seconds.

        A message RabbitMQ returns as unroutable fails at once: no node will route
        it. A publish whose channel or connection dropped before the confirm is sent
        again once the connection is back (on another node after a failover). A
        publish RabbitMQ nacked is sent again on a new channel (``_renew_publish_channel``).
        Either way it may arrive twice, which the event log makes harmless.
        """
        if self._exchange is None or self._publish_channel is None:
            raise BrokerError("the RabbitMQ broker is not connected; call connect() first")
        message_id = out.message_id or uuid.uuid4().hex
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        attempt = 0
        reasons: dict[str, None] = {}
        async with self._exclusive_id(message_id):
            while True:
                attempt += 1
                exchange, channel = self._exchange, self._publish_channel
                if exchange is None or channel is None:
                    raise BrokerError("the RabbitMQ broker was closed while publishing")
                try:
                    await self._publish_attempt(exchange, channel, out, message_id, deadline)
                    return
                except _Unconfirmed as failed:
                    reasons[str(failed)] = None
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        raise PublishError(
                            f"message {message_id!r} to {out.queue!r} was not confirmed within "
                            f"{self._timeout:g}s over {attempt} attempt(s) ({'; '.join(reasons)}); "
                            "it may or may not have arrived"
                        ) from failed.__cause__
                    log.warning(
                        "rabbitmq.publish_retried",
                        message_id=message_id,
                        queue=out.queue,
                        attempt=attempt,
                        error=str(failed),
                    )
                    if failed.nacked:
                        await self._renew_publish_channel(channel, remaining)
                    await asyncio.sleep(min(PUBLISH_RETRY_PAUSE * attempt, 1.0, remaining))

    async def _renew_publish_channel(self, failed: AbstractRobustChannel, timeout: float) -> None:
        """Publish on a new channel from now on, and close the one that nacked.

        Why: on RabbitMQ 3.10 (observed in tests/cluster/test_rabbitmq_failover.py), a channel
        whose first publish to a quorum queue came while the queue's leader was on a
        node that had just died may nack every later publish to that queue, for good,
        while a new channel on the same connection is confirmed at once. Closing the
        old channel fails whatever else was in flight on it; those publishes are sent
        again on the new one. Concurrent nacks renew once: only the publish that still
        sees the failed channel as current replaces it.
        """
        async with self._renew_lock:
            if self._publish_channel is not failed or self._connection is None:
                return
            try:
                channel = await _open_channel(
                    self._connection, timeout, publisher_confirms=True, on_return_raises=True
                )
                exchange = await channel.get_exchange(self.names.exchange, ensure=False)
            except (*_CHANNEL_ERRORS, BrokerError, TimeoutError) as exc:
                log.warning("rabbitmq.publish_channel_not_renewed", error=repr(exc))
                return
            self._publish_channel, self._exchange = channel, exchange
            log.warning("rabbitmq.publish_channel_renewed", reason="nacked")
        with contextlib.suppress(*_CHANNEL_ERRORS, TimeoutError):
            await failed.close()

    async def _publish_attempt(
        self,
        exchange: AbstractExchange,
        channel: AbstractRobustChannel,
        out: Outgoing,
        message_id: str,
        deadline: float,
    ) -> None:
        """One publish and its confirm; _Unconfirmed for what a retry may fix."""
        loop = asyncio.get_running_loop()
        try:
            # While the robust connection is reconnecting, wait for it rather than fail.
            await asyncio.wait_for(channel.ready(), max(deadline - loop.time(), 0.001))
        except TimeoutError as exc:
            raise PublishError(
                f"RabbitMQ did not come back within {self._timeout:g}s; "
                f"message {message_id!r} to {out.queue!r} was not published"
            ) from exc
        message = aio_pika.Message(
            out.body,
            headers=dict(out.headers) if out.headers else None,
            message_id=message_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            # Lets an operator tell how long a message has waited (`ledgerflow dlq`).
            timestamp=datetime.datetime.now(datetime.UTC),
        )
        try:
            result = await exchange.publish(
                message,
                routing_key=out.queue,
                mandatory=True,
                timeout=max(deadline - loop.time(), 0.001),
            )
        except aiormq.exceptions.PublishError as exc:
            raise PublishError(
                f"RabbitMQ returned message {message_id!r} as unroutable: no queue "
                f"{out.queue!r} is bound to exchange {self.names.exchange!r}"
            ) from exc
        except aiormq.exceptions.DeliveryError as exc:
            raise _Unconfirmed("RabbitMQ refused (nacked) it", nacked=True) from exc
        except (*_CHANNEL_ERRORS, TimeoutError) as exc:
            raise _Unconfirmed(f"no confirm: {exc!r}") from exc
        if not isinstance(result, aiormq.spec.Basic.Ack):
            raise _Unconfirmed(f"got {result!r} instead of a confirm")

    @contextlib.asynccontextmanager
    async def _exclusive_id(self, message_id: str) -> AsyncIterator[None]:
        """Never have two unconfirmed publishes with one message id on the channel.

        aiormq matches a returned (unroutable) message to its publish by message
        id; with two in flight under one id the return would fail the wrong one
        and the unroutable one would be reported as confirmed.
        """
        while (earlier := self._in_flight_ids.get(message_id)) is not None:
            await earlier.wait()
        done = asyncio.Event()
        self._in_flight_ids[message_id] = done
        try:
            yield
        finally:
            del self._in_flight_ids[message_id]
            done.set()

    # --- consuming -----------------------------------------------------------------

    async def consume(self, queue: str, handler: Handler, *, prefetch: int) -> Consumer:
        consumer = RabbitConsumer(self, queue, HandlerRunner(handler, prefetch, queue), prefetch)
        await consumer.subscribe()
        self._consumers.add(consumer)
        return consumer

    async def get(self, queue: str, *, timeout: float = 0.0) -> Delivery | None:
        declared = await self._get_queue(queue)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                message = await declared.get(no_ack=False, fail=False, timeout=self._timeout)
            except _CHANNEL_ERRORS as exc:
                self._get_channels.pop(queue, None)
                raise BrokerError(f"basic.get on {queue!r} failed: {exc!r}") from exc
            if message is not None:
                return RabbitDelivery(message, queue)
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            await asyncio.sleep(min(0.05, remaining))

    async def _get_queue(self, queue: str) -> AbstractQueue:
        known = self._get_channels.get(queue)
        if known is not None and not known[0].is_closed:
            return known[1]
        channel = await _open_channel(self._require(), self._timeout)
        try:
            declared = await _passive(channel, queue)
        except BaseException:
            with contextlib.suppress(*_CHANNEL_ERRORS):
                await channel.close()
            raise
        self._get_channels[queue] = (channel, declared)
        return declared

    async def queue_depth(self, queue: str) -> int:
        return (await self.queue_info(queue)).depth

    async def purge(self, queue: str) -> int:
        async def purge(channel: AbstractChannel) -> int:
            result = await (await _passive(channel, queue)).purge()
            return int(result.message_count or 0)

        return await self._admin(f"purging queue {queue!r}", purge)

    async def queue_info(self, queue: str) -> QueueInfo:
        async def look_up(channel: AbstractChannel) -> QueueInfo:
            result = (await _passive(channel, queue)).declaration_result
            return QueueInfo(queue, int(result.message_count or 0), int(result.consumer_count or 0))

        return await self._admin(f"looking up queue {queue!r}", look_up)

    def server_version(self) -> tuple[int, ...] | None:
        """RabbitMQ's version from the connection handshake; None while disconnected."""
        transport = self._require().transport
        if transport is None:
            return None
        raw = transport.connection.server_properties.get("version")
        text = raw.decode() if isinstance(raw, bytes) else str(raw or "")
        parts = [int(p) for p in text.split("-")[0].split(".") if p.isdigit()]
        return tuple(parts) or None

    @contextlib.asynccontextmanager
    async def _hold_dead_letters(self, limit: int) -> AsyncIterator[HeldDeadLetters]:
        """basic.get the whole dead queue on a channel of its own, hand out the first ``limit``.

        The whole queue, not just ``limit`` messages, because of where a
        returned message goes: on RabbitMQ 3.10 (observed, see
        tests/broker/test_dead_letters.py) a message nacked with requeue after a
        basic.get goes to the *tail* of a quorum queue, so giving back only a
        prefix would move it behind the rest, and every ``dlq list --limit`` or
        ``ledgerflow queues`` would rotate the dead queue. Taken whole and
        returned one by one in the order they came, the messages line up again
        in their order whether returns go to the head or the tail. Messages
        dead-lettered meanwhile are taken too (the loop runs until the queue is
        empty), so they stay behind the older ones. The cost is one get and one
        return per message in the queue; ``limit=0`` takes nothing and only
        counts.

        Returning a message counts as a delivery on a quorum queue before
        RabbitMQ 4.3 (``x-delivery-count`` goes up by one), which is harmless on
        the dead queue only while it has no delivery limit: it is declared
        without one, and before 4.0 that means none. RabbitMQ 4.0-4.2 give
        every quorum queue a default limit of 20 and, the dead queue having no
        dead-letter exchange, would drop a message listed 20 times; there this
        refuses rather than risk it.
        """
        version = self.server_version()
        if version is not None and (4, 0) <= version[:2] < (4, 3):
            raise BrokerError(
                f"RabbitMQ {'.'.join(map(str, version))} counts every return against the "
                "default delivery limit of 20, so reading the dead queue could drop messages; "
                "give it `x-delivery-limit: -1` with a policy first, or upgrade to 4.3+"
            )
        queue = self.names.dead_queue
        channel = await _open_channel(self._require(), self._timeout)
        held: list[Delivery] = []
        try:
            declared = await _passive(channel, queue)
            if limit == 0:
                ready = declared.declaration_result.message_count
                yield HeldDeadLetters([], depth=ready or 0)
                return
            while True:
                try:
                    message = await declared.get(no_ack=False, fail=False, timeout=self._timeout)
                except _CHANNEL_ERRORS as exc:
                    raise BrokerError(f"basic.get on {queue!r} failed: {exc!r}") from exc
                if message is None:
                    break
                held.append(RabbitDelivery(message, queue))
            yield HeldDeadLetters(held[:limit], depth=len(held))
        finally:
            try:
                for delivery in held:
                    if not delivery.settled:
                        await delivery.nack(requeue=True)
            finally:
                # Whatever a failed nack left unsettled, closing the channel returns.
                with contextlib.suppress(*_CHANNEL_ERRORS, TimeoutError):
                    await channel.close()


async def connect_first(
    url: str | Sequence[str], *, timeout: float = 10.0
) -> aio_pika.abc.AbstractConnection:
    """A plain (not robust) connection to the first node of ``url`` that answers.

    For tools that make a few calls and close (test fleets, namespace cleanup, the
    benchmark's report): they take the same URL list as the processes. Every node
    failing is one ServiceUnavailableError (ConfigurationError for a refused login
    or virtual host) naming each redacted URL.
    """
    urls = amqp_urls(url)
    failures: list[_Failure] = []
    for one in urls:
        try:
            return await aio_pika.connect(one, timeout=timeout)
        except (OSError, aiormq.exceptions.AMQPError) as exc:
            failures.append(_connect_failure(one, exc))
    raise _all_failed(failures)


async def _passive(channel: AbstractChannel, queue: str) -> AbstractQueue:
    """Look a queue up without creating it; a missing queue is a BrokerError."""
    try:
        return await channel.declare_queue(queue, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity as exc:
        raise BrokerError(f"queue {queue!r} does not exist; declare it first") from exc


async def _open_channel(
    connection: AbstractRobustConnection,
    timeout: float,
    *,
    publisher_confirms: bool = False,
    on_return_raises: bool = False,
) -> AbstractRobustChannel:
    """A new channel, once the connection is up: while it fails over, wait rather than fail.

    aio-pika refuses to open a channel on a robust connection between two nodes
    (RuntimeError "Connection was not opened"); waiting up to ``timeout`` for the
    reconnect turns a failover into a pause for declarations, gets and admin calls.
    """
    try:
        await asyncio.wait_for(connection.ready(), timeout)
        return await connection.channel(
            publisher_confirms=publisher_confirms, on_return_raises=on_return_raises
        )
    except (TimeoutError, RuntimeError) as exc:
        raise BrokerError(
            f"no RabbitMQ connection within {timeout:g}s to open a channel on ({exc!r})"
        ) from exc


@contextlib.asynccontextmanager
async def _temporary_channel(
    connection: AbstractRobustConnection, timeout: float
) -> AsyncIterator[AbstractChannel]:
    channel = await _open_channel(connection, timeout)
    try:
        yield channel
    finally:
        if not channel.is_closed:
            with contextlib.suppress(*_CHANNEL_ERRORS, TimeoutError):
                await channel.close()


@dataclass(frozen=True)
class _Failure:
    """Why connecting to one URL failed: the error for that URL alone, and a short reason."""

    url: str
    error: LedgerflowError
    reason: str


def _connect_failure(url: str, exc: BaseException) -> _Failure:
    """What a failed connect means: a login or vhost refused is configuration, not an outage.

    Both are permanent until someone fixes the URL or the server's users, so they are
    ConfigurationErrors (exit 2); anything else is "unreachable" (exit 3). The URL is
    always shown redacted, and so is any text of the error that quotes it.
    """
    where = redact(url)
    detail = redact_text(repr(exc), [url])
    if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError):
        reason = f"refused the login ({detail})"
        return _Failure(
            url,
            ConfigurationError(
                f"RabbitMQ at {where} {reason}: check the user and password in the AMQP URL"
            ),
            reason,
        )
    if isinstance(exc, aiormq.exceptions.InvalidFrameError) and "Connection.Close" in str(exc):
        # RabbitMQ answers Connection.Open on a vhost the user may not use with a close.
        vhost = unquote(urlsplit(url).path[1:]) or "/"
        reason = f"refused to open virtual host {vhost!r}"
        return _Failure(
            url,
            ConfigurationError(
                f"RabbitMQ at {where} {reason}: it does not exist "
                "or the user has no permissions on it (`rabbitmqctl list_vhosts`, "
                "`rabbitmqctl list_permissions -p VHOST`)"
            ),
            reason,
        )
    return _Failure(
        url,
        ServiceUnavailableError(
            f"cannot connect to RabbitMQ at {where}: {detail}. "
            "Start it (`rabbitmq-server -detached`, or `make services`) "
            "or point the AMQP URL at a running server."
        ),
        detail,
    )


def _all_failed(failures: Sequence[_Failure]) -> LedgerflowError:
    """One error for a list of nodes that all failed; a single node's error as it was.

    A refused login or virtual host on any node makes it a ConfigurationError: users
    and permissions are cluster-wide, so that is the deployment, not an outage.
    """
    if len(failures) == 1:
        return failures[0].error
    listed = "; ".join(f"{redact(f.url)} ({f.reason})" for f in failures)
    if any(isinstance(f.error, ConfigurationError) for f in failures):
        return ConfigurationError(
            f"no RabbitMQ node of the list accepted the connection: {listed}. "
            "Check the user, password and virtual host in the AMQP URLs."
        )
    return ServiceUnavailableError(
        f"cannot connect to any of the {len(failures)} RabbitMQ nodes: {listed}. "
        "Start them, or point the AMQP URL at running nodes."
    )
