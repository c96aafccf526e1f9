"""RabbitMQ sink: each DataBatch frame into the durable queue of each of its queries.

Topology, declared (idempotently) on every connection::

    exchange  "fastframe"            direct, durable
    queues    "fastframe.query.N"    durable, bound with routing key "query.N"
                                     for N = 1..4 (the query ids of PROTOCOL.md §8)

Queue names start with the exchange name, so a sink made with
``exchange="x"`` has the queues ``x.query.1`` … ``x.query.4`` of its own.

``write(frame, query_ids)`` publishes the frame once per query id, persistent
(delivery_mode 2) and mandatory, on a channel in publisher-confirm mode: each
publish returns only when the broker has confirmed it, i.e. stored it in its
durable queue. ``flush()`` therefore has nothing to wait for; it raises
``SinkError`` when a write since the previous flush failed.

A connection lost while idle (broker restart, missed heartbeats) is reopened
by the next write at once; a broker that cannot be reached gets
``connect_attempts`` tries, ``retry_delay`` seconds apart and doubling, then
the write raises ``SinkError``, and the next write starts over. A copy the
broker returns (no queue bound) or nacks fails the write at once. Copies
confirmed before a failure stay in their queues, and a copy whose confirm was
lost with the connection is published again: delivery is at-least-once.

Other connection settings (``heartbeat``, ``socket_timeout``, …) go in the
URL's query string, as pika's ``URLParameters`` reads them.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any, Sequence
from urllib.parse import urlsplit

import pika
import pika.exceptions

from . import SinkError

__all__ = ["QUERY_IDS", "RabbitMQSink", "queue_name", "read_queue", "routing_key"]

QUERY_IDS = (1, 2, 3, 4)
DEFAULT_EXCHANGE = "fastframe"
# pika waits forever on a broker that blocks publishers (disk or memory
# alarm); after this many seconds the connection is dropped and the write fails.
BLOCKED_CONNECTION_TIMEOUT = 30.0

_PERSISTENT = pika.BasicProperties(
    delivery_mode=pika.DeliveryMode.Persistent,
    content_type="application/octet-stream",
)

log: logging.Logger = logging.getLogger(__name__)


def routing_key(query_id: int) -> str:
    return f"query.{query_id}"


def queue_name(query_id: int, exchange: str = DEFAULT_EXCHANGE) -> str:
    """The durable queue that holds query ``query_id``'s frames."""
    return f"{exchange}.{routing_key(query_id)}"


def _connection_parameters(url: str) -> pika.URLParameters:
    parameters = pika.URLParameters(url)
    if "blocked_connection_timeout" not in urlsplit(url).query:
        parameters.blocked_connection_timeout = BLOCKED_CONNECTION_TIMEOUT
    return parameters


def _close_quietly(connection: pika.BlockingConnection) -> None:
    try:
        if connection.is_open:
            connection.close()
    except (pika.exceptions.AMQPError, OSError):
        pass


class RabbitMQSink:
    """Publishes DataBatch frames to per-query durable queues (see the module doc).

    Connects at construction, so a wrong URL or an unreachable broker raises
    ``SinkError`` here rather than at the first batch.
    """

    def __init__(
        self,
        url: str,
        *,
        exchange: str = DEFAULT_EXCHANGE,
        connect_attempts: int = 3,
        retry_delay: float = 0.25,
    ) -> None:
        if not exchange:
            raise ValueError("exchange must be a name: the default exchange cannot be declared")
        if connect_attempts < 1:
            raise ValueError(f"connect_attempts must be at least 1, not {connect_attempts}")
        self._parameters = _connection_parameters(url)
        self._where = f"amqp://{self._parameters.host}:{self._parameters.port}"
        self._exchange = exchange
        self._connect_attempts = connect_attempts
        self._retry_delay = retry_delay
        self._connection: pika.BlockingConnection | None = None
        self._channel = None
        self._write_failed = False
        self._closed = False
        self._publish(b"", ())

    def write(self, frame: bytes, query_ids: Sequence[int]) -> None:
        """Publish ``frame`` to the queue of each query id, confirmed by the broker."""
        try:
            if self._closed:
                raise SinkError("write on a closed RabbitMQ sink")
            queries = list(dict.fromkeys(query_ids))
            if not queries:
                raise SinkError("a frame without query ids would reach no queue")
            unknown = [q for q in queries if q not in QUERY_IDS]
            if unknown:
                raise SinkError(f"no queue for query ids {unknown}: the queries are {list(QUERY_IDS)}")
            self._publish(frame, queries)
        except SinkError:
            self._write_failed = True
            raise

    def flush(self) -> None:
        """Raise ``SinkError`` if a write since the last flush failed.

        Every successful write is already confirmed, so there is nothing to wait for.
        """
        if self._write_failed:
            self._write_failed = False
            raise SinkError("a write since the last flush failed: not every frame was confirmed by the broker")

    def close(self) -> None:
        """Close the connection; later writes raise ``SinkError``. Idempotent."""
        self._closed = True
        self._drop_connection()

    def _publish(self, frame: bytes, query_ids: Sequence[int]) -> None:
        """Publish one copy per query id, reconnecting as the module doc says.

        With no query ids it only makes sure there is a connection.
        """
        pending = deque(query_ids)
        may_be_stale = self._channel is not None
        failures = 0
        while True:
            try:
                channel = self._channel or self._connect()
                while pending:
                    channel.basic_publish(
                        self._exchange, routing_key(pending[0]), frame, _PERSISTENT, mandatory=True
                    )
                    pending.popleft()
                return
            except pika.exceptions.UnroutableError as exc:
                # Someone removed the queue or its binding; the next write's
                # connection declares them again.
                self._drop_connection()
                raise SinkError(
                    f"{self._where} returned the frame for query {pending[0]}: no queue bound to "
                    f"{routing_key(pending[0])!r} on exchange {self._exchange!r}"
                ) from exc
            except pika.exceptions.NackError as exc:
                self._drop_connection()
                raise SinkError(f"{self._where} refused (nacked) the frame for query {pending[0]}") from exc
            except (pika.exceptions.AMQPError, OSError) as exc:
                self._drop_connection()
                if may_be_stale:
                    may_be_stale = False
                    log.warning("RabbitMQ connection to %s lost (%r); reconnecting", self._where, exc)
                    continue
                failures += 1
                if failures >= self._connect_attempts:
                    raise SinkError(
                        f"RabbitMQ at {self._where} unavailable after {failures} attempts: {exc!r}"
                    ) from exc
                delay = self._retry_delay * 2 ** (failures - 1)
                log.warning("RabbitMQ at %s: %r; retrying in %.2f s", self._where, exc, delay)
                time.sleep(delay)

    def _connect(self) -> Any:
        connection = pika.BlockingConnection(self._parameters)
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            channel.exchange_declare(self._exchange, exchange_type="direct", durable=True)
            for query_id in QUERY_IDS:
                queue = queue_name(query_id, self._exchange)
                channel.queue_declare(queue, durable=True)
                channel.queue_bind(queue, self._exchange, routing_key(query_id))
        except BaseException:
            _close_quietly(connection)
            raise
        self._connection, self._channel = connection, channel
        return channel

    def _drop_connection(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            _close_quietly(connection)


def read_queue(
    url: str, query_id: int, *, exchange: str = DEFAULT_EXCHANGE, timeout: float = 0.0
) -> list[bytes]:
    """Take the frames in query ``query_id``'s queue, oldest first, and ack them.

    Reads until the queue has stayed empty for ``timeout`` seconds (0: until it
    is empty). The frames are acked together at the end, so a failure part-way
    leaves them all in the queue. Raises ``SinkError`` when the broker cannot
    be reached or the queue does not exist.
    """
    queue = queue_name(query_id, exchange)
    frames: list[bytes] = []
    try:
        connection = pika.BlockingConnection(_connection_parameters(url))
    except pika.exceptions.AMQPError as exc:
        raise SinkError(f"cannot read {queue!r}: {exc!r}") from exc
    try:
        channel = connection.channel()
        last_tag = None
        quiet_until = time.monotonic() + timeout
        while True:
            method, _properties, body = channel.basic_get(queue)
            if method is not None:
                frames.append(body)
                last_tag = method.delivery_tag
                quiet_until = time.monotonic() + timeout
            elif time.monotonic() >= quiet_until:
                break
            else:
                connection.sleep(min(0.05, timeout))
        if last_tag is not None:
            channel.basic_ack(last_tag, multiple=True)
        channel.close()
    except pika.exceptions.AMQPError as exc:
        raise SinkError(f"cannot read {queue!r}: {exc!r}") from exc
    finally:
        _close_quietly(connection)
    return frames
