"""Consuming what the orchestrator publishes: the durable queue of one query.

For workers in Python::

    with Consumer(url, query_id=1, prefetch=8) as consumer:
        for message in consumer.messages(until_idle=5.0):
            with message:                   # acked when the block ends without an error,
                handle(message.batch)       # rejected back into the queue when it raises
    # or: message.ack() / message.requeue() explicitly

    async with AsyncConsumer(url, query_id=1) as consumer:
        async for message in consumer.messages(until_idle=5.0):
            handle(message.batch)
            await message.ack()

Each ``Message`` has the ``frame`` (the DataBatch frame's bytes) and
``batch`` (it decoded: a ``fastframe.messages.DataBatch``). Up to ``prefetch``
messages are delivered ahead of the one in hand; a message that is neither
acked nor requeued returns to the queue when the consumer closes (the broker
redelivers unacknowledged messages), so a worker that dies loses nothing.

A message whose body is not a valid DataBatch frame is rejected without
requeue: the broker dead-letters it into the topology's ``<exchange>.dead``
queue (see ``fastframe.sinks.rabbitmq``), it is logged, and the consumer
goes on with the next one. The consumer declares the topology itself, with
the same queue type as the sink (``queue_type``), so it may start first.

One ``Consumer`` is used from one thread. ``AsyncConsumer`` runs the same
blocking consumer on a thread of its own, one call at a time.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from typing import Any, AsyncIterator, Callable, Iterator, List, Optional, TypeVar

import pika
import pika.exceptions

from .errors import ProtocolError
from .messages import DataBatch, decode_frame
from .sinks import SinkError
from .sinks.rabbitmq import QUERY_IDS, Topology, connection_parameters, split_url

__all__ = ["AsyncConsumer", "AsyncMessage", "Consumer", "ConsumerError", "Message"]

log: logging.Logger = logging.getLogger("fastframe.consumer")
# How often a waiting consumer looks at the clock and at stop(): the longest a
# SIGTERM between messages waits.
_POLL = 0.2
_T = TypeVar("_T")


class ConsumerError(SinkError):
    """The broker cannot be reached, refused the topology, or the connection was lost."""


class Message:
    """One delivered DataBatch frame; settle it once with ``ack()`` or ``requeue()``.

    As a context manager it acks when the block succeeds and requeues when it raises.
    """

    __slots__ = ("frame", "batch", "delivery_tag", "redelivered", "_consumer", "settled")

    def __init__(self, consumer: "Consumer", delivery_tag: int, redelivered: bool,
                 frame: bytes, batch: DataBatch) -> None:
        self.frame: bytes = frame
        self.batch: DataBatch = batch
        self.delivery_tag: int = delivery_tag
        self.redelivered: bool = redelivered
        self._consumer = consumer
        self.settled: bool = False

    def ack(self) -> None:
        """Tell the broker the message is handled: it leaves the queue."""
        self._settle(requeue=None)

    def requeue(self) -> None:
        """Give the message back to the queue, for this or another consumer."""
        self._settle(requeue=True)

    def _settle(self, requeue: Optional[bool]) -> None:
        if self.settled:
            raise ConsumerError(f"message {self.delivery_tag} was already acked or requeued")
        self._consumer._settle(self.delivery_tag, requeue)
        self.settled = True

    def __enter__(self) -> "Message":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if not self.settled:
            if exc_type is None:
                self.ack()
            else:
                self.requeue()


class Consumer:
    """Consumes the durable queue of query ``query_id`` (see the module doc).

    Connects and declares the topology at construction: ``ConsumerError`` if
    the broker cannot be reached or refuses it. ``exchange`` and
    ``queue_type`` default to the URL's options, then to the sink's defaults.
    """

    def __init__(self, url: str, query_id: int, *, prefetch: int = 8,
                 exchange: Optional[str] = None, queue_type: Optional[str] = None) -> None:
        if query_id not in QUERY_IDS:
            raise ValueError(f"no queue for query {query_id}: the queries are {list(QUERY_IDS)}")
        if prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, not {prefetch}")
        _, options = split_url(url)
        self.topology: Topology = Topology(exchange or options.get("exchange") or "fastframe",
                                           queue_type or options.get("queue_type") or "classic")
        self.queue: str = self.topology.queue(query_id)
        self.prefetch = prefetch
        self.rejected: int = 0
        self._stopping = False
        self._consumer_tag: Optional[str] = None
        self._inbox: List[Message] = []
        self._connection: Any = None
        try:
            self._connection = pika.BlockingConnection(connection_parameters(url))
            self._channel = self._connection.channel()
            self.topology.declare(self._channel)
            self._channel.basic_qos(prefetch_count=prefetch)
        except SinkError as exc:
            self.close()
            raise ConsumerError(str(exc)) from None
        except (pika.exceptions.AMQPError, OSError) as exc:
            self.close()
            raise ConsumerError(f"cannot consume {self.queue!r}: {exc!r}") from None

    def messages(self, until_idle: Optional[float] = None) -> Iterator[Message]:
        """Yield each valid message as it arrives.

        Ends once no message came for ``until_idle`` seconds (never, without
        it) or after ``stop()``. Malformed messages are dead-lettered, not yielded.
        """
        for arrived in self.batches(until_idle):
            for message in arrived:
                yield message
                if self._stopping:
                    return

    def batches(self, until_idle: Optional[float] = None) -> Iterator[List[Message]]:
        """Yield the valid messages as they arrive, in lists of those that arrived
        together (at most ``prefetch``), for a worker that stores a group at once.

        Ends as ``messages()`` does; after ``stop()``, once the list in hand is
        handled.
        """
        if self._consumer_tag is None:
            self._consumer_tag = self._channel.basic_consume(self.queue, self._on_message)
        idle_since = time.monotonic()
        try:
            while not self._stopping:
                self._inbox = []
                # Returns as soon as deliveries are dispatched, else after _POLL.
                self._connection.process_data_events(time_limit=_POLL)
                if self._inbox:
                    idle_since = time.monotonic()
                    yield self._inbox
                elif until_idle is not None and time.monotonic() - idle_since >= until_idle:
                    return
        except (pika.exceptions.AMQPError, OSError) as exc:
            raise ConsumerError(f"consuming {self.queue!r}: {exc!r}") from None

    def _on_message(self, _channel: Any, method: Any, _properties: Any, body: bytes) -> None:
        try:
            batch = decode_frame(body, max_frame=len(body))
            if not isinstance(batch, DataBatch):
                raise ProtocolError(f"a {type(batch).__name__} frame, not a DataBatch",
                                    batch.opcode)
        except ProtocolError as exc:
            self.rejected += 1
            log.warning("action: consume | result: rejected | queue: %s | delivery_tag: %d | "
                        "bytes: %d | error: %s | dead_letter_queue: %s", self.queue,
                        method.delivery_tag, len(body), exc, self.topology.dead_letter_queue)
            self._channel.basic_reject(method.delivery_tag, requeue=False)
            return
        self._inbox.append(Message(self, method.delivery_tag, bool(method.redelivered),
                                   body, batch))

    def _settle(self, delivery_tag: int, requeue: Optional[bool]) -> None:
        try:
            if requeue is None:
                self._channel.basic_ack(delivery_tag)
            else:
                self._channel.basic_reject(delivery_tag, requeue=requeue)
        except (pika.exceptions.AMQPError, OSError) as exc:
            raise ConsumerError(f"settling message {delivery_tag} of {self.queue!r}: {exc!r}"
                                ) from None

    def stop(self) -> None:
        """Make ``messages()`` end after the message in hand (``batches()``: the list in
        hand); safe from a signal handler."""
        self._stopping = True

    def close(self) -> None:
        """Close the connection: unsettled messages go back to the queue. Idempotent."""
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                if connection.is_open:
                    connection.close()
            except (pika.exceptions.AMQPError, OSError):
                pass

    def __enter__(self) -> "Consumer":
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.close()


class AsyncMessage:
    """A ``Message`` for asyncio: ``await ack()`` / ``await requeue()``, ``async with``."""

    def __init__(self, owner: "AsyncConsumer", message: Message) -> None:
        self._owner = owner
        self._message = message
        self.frame: bytes = message.frame
        self.batch: DataBatch = message.batch
        self.delivery_tag: int = message.delivery_tag
        self.redelivered: bool = message.redelivered

    async def ack(self) -> None:
        await self._owner._call(self._message.ack)

    async def requeue(self) -> None:
        await self._owner._call(self._message.requeue)

    async def __aenter__(self) -> "AsyncMessage":
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if not self._message.settled:
            await (self.ack() if exc_type is None else self.requeue())


class AsyncConsumer:
    """``Consumer`` for asyncio: the same arguments; use with ``async with``."""

    def __init__(self, url: str, query_id: int, **options: Any) -> None:
        self._args = (url, query_id)
        self._options = options
        # pika's BlockingConnection is not thread-safe: every call on one thread.
        self._thread = concurrent.futures.ThreadPoolExecutor(1, "fastframe-consumer")
        self._consumer: Optional[Consumer] = None

    async def _call(self, fn: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn)

    async def __aenter__(self) -> "AsyncConsumer":
        self._consumer = await self._call(lambda: Consumer(*self._args, **self._options))
        return self

    async def __aexit__(self, *_exc: Any) -> None:
        await self.close()

    async def messages(self, until_idle: Optional[float] = None) -> AsyncIterator[AsyncMessage]:
        """As ``Consumer.messages``: each valid message, as it arrives."""
        consumer = self._consumer
        if consumer is None:
            raise ConsumerError("use AsyncConsumer with 'async with'")
        stream = consumer.messages(until_idle)
        while True:
            message = await self._call(lambda: next(stream, None))
            if message is None:
                return
            yield AsyncMessage(self, message)

    def stop(self) -> None:
        """Make ``messages()`` end after the message in hand."""
        if self._consumer is not None:
            self._consumer.stop()

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await self._call(consumer.close)
        self._thread.shutdown(wait=True)
