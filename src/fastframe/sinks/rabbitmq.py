"""RabbitMQ sink: each DataBatch frame into the durable queue of each of its queries.

Topology (``Topology``), declared idempotently on every connection, by the
sink and by the consumer alike::

    exchange  "fastframe"          direct, durable
    queues    "fastframe.query.N"  durable, of the chosen type (classic or quorum),
                                   for N = 1..4 (the query ids of PROTOCOL.md §8),
                                   dead-lettering to "fastframe.dlx"; bound with the
                                   routing key of every set of queries containing N:
                                   "query.N", "query.1.N", …, "query.1.2.3.4"
    exchange  "fastframe.dlx"      fanout, durable
    queue     "fastframe.dead"     durable, same type: what consumers rejected

Names start with the exchange name, so a sink made with ``exchange="x"`` has
the queues ``x.query.1`` … ``x.query.4`` and ``x.dead`` of its own. A queue
that already exists with other arguments (another type, or declared by
fastframe 0.1 without dead-lettering) is a configuration error: a
``TopologyError`` naming the queue, never retried.

Publishing is pipelined. ``write(frame, query_ids)`` publishes the frame
*once*, persistent (delivery_mode 2) and mandatory, with the routing key of
its set of queries (``query.1.3.4`` for a transactions batch), so the
exchange puts it in each of those queues and a classic queue's message
store keeps its body once; it returns without waiting. ``flush()`` waits
until the broker has confirmed every write of the round; the broker confirms
a message once every queue it was routed to has it. The confirms
(``Basic.Ack``/``Basic.Nack``, ``multiple`` included) are matched to the
writes by delivery tag, returns by the ``message_id`` each message carries
(``<connection id>.<delivery tag>``: it names the publish, it is not a key
to deduplicate on), so a nacked or returned message fails exactly its own
write: ``flush()`` raises ``SinkError`` whose ``failed`` holds the round
indices of those writes, and the others may be ACKed. A message is returned
only when it reaches no queue at all: a binding removed by hand from one of
several queues goes unnoticed until the next connection declares it again.

The connection is pika's ``SelectConnection`` (callbacks), and its I/O loop
is run by the sink's own calls, on the caller's thread: ``write`` sends what
the socket takes at once, ``flush`` runs the loop until the confirms are in.
That keeps the one-thread contract of ``Sink`` with no thread or lock of its
own. ``BlockingConnection`` cannot do this: with confirms on, its
``basic_publish`` waits for each confirm in turn.

A connection lost during a round (broker restart, missed heartbeats) is
opened again at once and the copies not yet confirmed are published again
(delivery is at-least-once); a broker that cannot be reached gets
``connect_attempts`` tries, ``retry_delay`` seconds apart and doubling, then
``flush()`` fails the writes still unconfirmed, and the next round starts
over. A broker that does not confirm within ``confirm_timeout`` seconds (a
resource alarm blocking publishers, say) fails them too.

Options: ``exchange`` and ``queue_type`` as keyword arguments or in the URL's
query string (``amqp://…/%2F?queue_type=quorum&exchange=x``); pika's own
connection settings (``heartbeat``, ``socket_timeout``, …) go in the query
string too, as ``URLParameters`` reads them.
"""
from __future__ import annotations

import itertools
import logging
import time
import uuid
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pika
import pika.adapters.select_connection
import pika.exceptions

from . import QUEUE_TYPES, SinkError

__all__ = [
    "DEFAULT_EXCHANGE", "QUERY_IDS", "QUEUE_TYPES", "RabbitMQSink", "Topology", "TopologyError",
    "connection_parameters", "queue_name", "read_queue", "routing_key", "routing_key_for",
    "split_url",
]

QUERY_IDS = (1, 2, 3, 4)
DEFAULT_EXCHANGE = "fastframe"
# pika waits forever on a broker that blocks publishers (disk or memory
# alarm); after this many seconds the connection is dropped and the round fails.
BLOCKED_CONNECTION_TIMEOUT = 30.0
CONFIRM_TIMEOUT = 30.0
# Opening a connection and declaring the topology; beyond it the attempt failed.
SETUP_TIMEOUT = 15.0
# The options of ours a sink URL may carry; every other one is pika's.
_URL_OPTIONS = ("exchange", "queue_type")
_PRECONDITION_FAILED = 406

log: logging.Logger = logging.getLogger(__name__)


def routing_key(query_id: int) -> str:
    """The routing key of a frame for query ``query_id`` alone."""
    return f"query.{query_id}"


def routing_key_for(query_ids: Iterable[int]) -> str:
    """The routing key of a frame for several queries: ``query.1.3.4``.

    Each query's queue is bound with the key of every set of queries that
    contains it, so the exchange routes one publish to all of them.
    """
    return "query." + ".".join(str(q) for q in sorted(set(query_ids)))


def _query_sets_with(query_id: int) -> List[Tuple[int, ...]]:
    others = [q for q in QUERY_IDS if q != query_id]
    return [tuple(sorted((query_id,) + extra))
            for n in range(len(others) + 1) for extra in itertools.combinations(others, n)]


def queue_name(query_id: int, exchange: str = DEFAULT_EXCHANGE) -> str:
    """The durable queue that holds query ``query_id``'s frames."""
    return f"{exchange}.{routing_key(query_id)}"


class TopologyError(SinkError):
    """The broker refused the topology (a queue exists with other arguments): retrying
    cannot help, an operator has to."""


@dataclass(frozen=True)
class Topology:
    """The exchanges, queues and bindings of one fastframe exchange name (see the module doc)."""

    exchange: str = DEFAULT_EXCHANGE
    queue_type: str = "classic"

    def __post_init__(self) -> None:
        if not self.exchange:
            raise ValueError("exchange must be a name: the default exchange cannot be declared")
        if self.queue_type not in QUEUE_TYPES:
            raise ValueError(f"queue_type must be one of {QUEUE_TYPES}, not {self.queue_type!r}")

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.exchange}.dlx"

    @property
    def dead_letter_queue(self) -> str:
        """Where messages a consumer rejected (malformed frames) end up."""
        return f"{self.exchange}.dead"

    def queue(self, query_id: int) -> str:
        return queue_name(query_id, self.exchange)

    def queue_arguments(self, dead_letters: bool = True) -> Dict[str, str]:
        arguments = {"x-queue-type": self.queue_type}
        if dead_letters:
            arguments["x-dead-letter-exchange"] = self.dead_letter_exchange
        return arguments

    def exchanges(self) -> List[Tuple[str, str]]:
        """``(name, type)`` of each exchange, in declaration order."""
        return [(self.exchange, "direct"), (self.dead_letter_exchange, "fanout")]

    def queues(self) -> List[Tuple[str, Dict[str, str]]]:
        """``(name, arguments)`` of each queue."""
        return [(self.queue(q), self.queue_arguments()) for q in QUERY_IDS] + [
            (self.dead_letter_queue, self.queue_arguments(dead_letters=False))]

    def bindings(self) -> List[Tuple[str, str, str]]:
        """``(queue, exchange, routing key)`` of each binding."""
        return [(self.queue(q), self.exchange, routing_key_for(ids))
                for q in QUERY_IDS for ids in _query_sets_with(q)] + [
            (self.dead_letter_queue, self.dead_letter_exchange, "")]

    def declare(self, channel: Any) -> None:
        """Declare everything on a pika ``BlockingChannel``; ``TopologyError`` on a mismatch."""
        try:
            for name, kind in self.exchanges():
                channel.exchange_declare(name, exchange_type=kind, durable=True)
            for name, arguments in self.queues():
                channel.queue_declare(name, durable=True, arguments=arguments)
            for queue, exchange, key in self.bindings():
                channel.queue_bind(queue, exchange, key)
        except pika.exceptions.ChannelClosedByBroker as exc:
            raise topology_error(exc) from None


def topology_error(exc: Exception) -> SinkError:
    """A ``TopologyError`` for a declaration the broker refused as inequivalent, else a
    plain ``SinkError``; one line, naming what the broker named."""
    code = getattr(exc, "reply_code", None)
    text = getattr(exc, "reply_text", str(exc))
    if code == _PRECONDITION_FAILED:
        return TopologyError(
            f"RabbitMQ refused the topology: {text} (the queue or exchange exists with other "
            f"arguments: drain and delete it, or use another exchange name)")
    return SinkError(f"RabbitMQ refused the topology: {code} {text}")


def split_url(url: str) -> Tuple[str, Dict[str, str]]:
    """The URL without fastframe's own options, and those options (``exchange``,
    ``queue_type``) as found in its query string."""
    parts = urlsplit(url)
    ours: Dict[str, str] = {}
    theirs: List[Tuple[str, str]] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in _URL_OPTIONS:
            ours[key] = value
        else:
            theirs.append((key, value))
    return urlunsplit(parts._replace(query=urlencode(theirs))), ours


def connection_parameters(url: str) -> Any:
    """pika's ``URLParameters`` for ``url`` (without fastframe's options), with a
    default ``blocked_connection_timeout``."""
    bare, _ = split_url(url)
    try:
        parameters = pika.URLParameters(bare)
    except ValueError as exc:
        raise SinkError(f"bad RabbitMQ URL: {exc}") from None
    if "blocked_connection_timeout" not in urlsplit(bare).query:
        parameters.blocked_connection_timeout = BLOCKED_CONNECTION_TIMEOUT
    return parameters


def _root_cause(error: BaseException) -> str:
    """What pika's nested connection errors come down to: ``ConnectionRefusedError(111, …)``."""
    while True:
        nested = getattr(error, "exceptions", None) or (getattr(error, "exception", None),)
        inner = nested[-1]
        if not isinstance(inner, BaseException):
            break
        error = inner
    if isinstance(error, pika.exceptions.AMQPConnectionError) and error.args and isinstance(
            error.args[0], BaseException):
        return _root_cause(error.args[0])
    return repr(error)


def _close_quietly(connection: Any) -> None:
    try:
        if connection.is_open:
            connection.close()
    except (pika.exceptions.AMQPError, OSError):
        pass


class _Link:
    """One ``SelectConnection`` with one channel in confirm mode and the topology
    declared, its I/O loop run by ``run()`` on the caller's thread.

    ``on_confirm(tag, multiple, ok)`` and ``on_return(tag, reply)`` report the broker's
    answers; ``lost`` becomes the reason once the connection or channel is gone.
    """

    def __init__(self, parameters: Any, topology: Topology,
                 on_confirm: Callable[[int, bool, bool], None],
                 on_return: Callable[[int, str], None]) -> None:
        self.id = uuid.uuid4().hex[:16]
        self.lost: Optional[str] = None
        self.refused: Optional[SinkError] = None   # the topology was refused
        self.next_tag = 1
        self._topology = topology
        self._on_confirm = on_confirm
        self._on_return = on_return
        self._channel: Any = None
        self._ready = False
        self._pending_declarations = 0
        ioloop = pika.adapters.select_connection.IOLoop()
        ioloop.activate_poller()   # what ioloop.start() would do; run() polls it instead
        self._connection = pika.SelectConnection(
            parameters, custom_ioloop=ioloop, on_open_callback=self._connection_open,
            on_open_error_callback=self._connection_failed,
            on_close_callback=self._connection_closed)
        self.run(lambda: self._ready or self.lost is not None,
                 time.monotonic() + SETUP_TIMEOUT)
        if self.refused is not None:
            self.close()
            raise self.refused
        if not self._ready:
            reason = self.lost or f"no connection after {SETUP_TIMEOUT:.0f} s"
            self.close()
            raise ConnectionError(reason)

    # -- setup, in callbacks ---------------------------------------------------

    def _connection_open(self, connection: Any) -> None:
        connection.channel(on_open_callback=self._channel_open)

    def _connection_failed(self, _connection: Any, error: BaseException) -> None:
        self.lost = _root_cause(error)

    def _connection_closed(self, _connection: Any, reason: BaseException) -> None:
        self.lost = self.lost or repr(reason)

    def _channel_open(self, channel: Any) -> None:
        self._channel = channel
        channel.add_on_close_callback(self._channel_closed)
        channel.add_on_return_callback(self._returned)
        channel.confirm_delivery(self._confirmed, callback=lambda _frame: self._declare())

    def _declare(self) -> None:
        topology, channel = self._topology, self._channel
        steps: List[Callable[..., None]] = []
        for name, kind in topology.exchanges():
            steps.append(partial(channel.exchange_declare, name, exchange_type=kind, durable=True))
        for name, arguments in topology.queues():
            steps.append(partial(channel.queue_declare, name, durable=True, arguments=arguments))
        for queue, exchange, key in topology.bindings():
            steps.append(partial(channel.queue_bind, queue, exchange, key))
        # pika sends a channel's synchronous methods one after the other: issue them all.
        self._pending_declarations = len(steps)
        for step in steps:
            step(callback=self._declared)

    def _declared(self, _frame: Any) -> None:
        self._pending_declarations -= 1
        if self._pending_declarations == 0:
            self._ready = True

    def _channel_closed(self, _channel: Any, reason: BaseException) -> None:
        if not self._ready and isinstance(reason, pika.exceptions.ChannelClosedByBroker):
            self.refused = topology_error(reason)
        self.lost = self.lost or repr(reason)
        _close_quietly(self._connection)

    # -- the broker's answers ------------------------------------------------------

    def _confirmed(self, frame: Any) -> None:
        method = frame.method
        self._on_confirm(method.delivery_tag, bool(method.multiple),
                         isinstance(method, pika.spec.Basic.Ack))

    def _returned(self, _channel: Any, method: Any, properties: Any, _body: bytes) -> None:
        prefix, _, tag = (properties.message_id or "").partition(".")
        if prefix == self.id and tag.isdigit():
            self._on_return(int(tag), f"{method.reply_code} {method.reply_text}")

    # -- use ---------------------------------------------------------------------------

    def publish(self, exchange: str, key: str, frame: bytes) -> int:
        """Publish one persistent, mandatory message; returns its delivery tag."""
        tag = self.next_tag
        properties = pika.BasicProperties(
            delivery_mode=pika.DeliveryMode.Persistent,
            content_type="application/octet-stream", message_id=f"{self.id}.{tag}")
        self._channel.basic_publish(exchange, key, frame, properties, mandatory=True)
        self.next_tag += 1
        return tag

    def run(self, done: Callable[[], bool], deadline: float) -> None:
        """Run the I/O loop until ``done()`` or ``deadline``.

        With a deadline already past, one round of the loop without waiting.
        """
        ioloop = self._connection.ioloop
        while True:
            wait = max(0.0, deadline - time.monotonic())
            timer = ioloop.call_later(wait, lambda: None)   # bounds poll()'s wait
            try:
                ioloop.poll()
                ioloop.process_timeouts()
            finally:
                ioloop.remove_timeout(timer)
            if done() or time.monotonic() >= deadline:
                return

    def close(self) -> None:
        """Close the connection (waiting a little for the broker's answer) and the loop."""
        self.lost = self.lost or "closed by the sink"
        connection = self._connection
        try:
            if connection.is_open:
                connection.close()
            if connection.is_closing:
                self.run(lambda: not connection.is_closing, time.monotonic() + 2.0)
        except (pika.exceptions.AMQPError, OSError):
            pass
        connection.ioloop.close()


class RabbitMQSink:
    """Publishes DataBatch frames to per-query durable queues (see the module doc).

    Connects at construction, so a wrong URL, an unreachable broker or a
    refused topology raises ``SinkError`` here rather than at the first batch.
    """

    def __init__(
        self,
        url: str,
        *,
        exchange: Optional[str] = None,
        queue_type: Optional[str] = None,
        connect_attempts: int = 3,
        retry_delay: float = 0.25,
        confirm_timeout: float = CONFIRM_TIMEOUT,
    ) -> None:
        if connect_attempts < 1:
            raise ValueError(f"connect_attempts must be at least 1, not {connect_attempts}")
        _, url_options = split_url(url)
        self.topology: Topology = Topology(
            exchange or url_options.get("exchange") or DEFAULT_EXCHANGE,
            queue_type or url_options.get("queue_type") or "classic")
        self._parameters = connection_parameters(url)
        self._where = f"amqp://{self._parameters.host}:{self._parameters.port}"
        self._connect_attempts = connect_attempts
        self._retry_delay = retry_delay
        self._confirm_timeout = confirm_timeout
        self._link: Optional[_Link] = None
        self._closed = False
        # The round: each write's frame and routing key (kept to publish again after
        # a lost connection), the writes not yet published, those published and not
        # yet confirmed (delivery tag -> write index), and why each failed write failed.
        self._writes: List[Tuple[bytes, str]] = []
        self._unconfirmed: Dict[int, int] = {}
        self._unsent: List[int] = []
        self._failed: Dict[int, str] = {}
        self._refused_write = False
        self._lost_in_round = False
        self._redeclare = False
        self._ensure_link()

    @property
    def exchange(self) -> str:
        return self.topology.exchange

    def write(self, frame: bytes, query_ids: Sequence[int]) -> None:
        """Publish ``frame`` to the queue of each query id; confirmed by ``flush()``."""
        try:
            if self._closed:
                raise SinkError("write on a closed RabbitMQ sink")
            queries = list(dict.fromkeys(query_ids))
            if not queries:
                raise SinkError("a frame without query ids would reach no queue")
            unknown = [q for q in queries if q not in QUERY_IDS]
            if unknown:
                raise SinkError(f"no queue for query ids {unknown}: the queries are {list(QUERY_IDS)}")
        except SinkError:
            self._refused_write = True
            raise
        index = len(self._writes)
        self._writes.append((frame, routing_key_for(queries)))
        self._unsent.append(index)
        if self._link is not None:
            self._publish_unsent()
            link = self._link
            if link is not None:
                link.run(lambda: link.lost is not None, 0.0)   # send what the socket takes now
                if link.lost is not None:
                    self._link_lost(link)

    def flush(self) -> None:
        """Wait until the broker confirmed every write of the round; see the module doc."""
        try:
            if self._refused_write:
                raise SinkError("a write of this round was refused: none of it may be ACKed")
            deadline = time.monotonic() + self._confirm_timeout
            while self._unsent or self._unconfirmed:
                if time.monotonic() >= deadline:
                    self._fail_outstanding(f"no confirm from {self._where} within "
                                           f"{self._confirm_timeout:.0f} s")
                    self._drop_link()
                    break
                if self._link is None:
                    try:
                        # A connection lost in this round may only have been stale
                        # (broker restarted between rounds): one more try for that.
                        self._ensure_link(free_first_try=self._lost_in_round)
                    except SinkError as exc:
                        self._fail_outstanding(str(exc))
                        break
                    self._lost_in_round = False
                self._publish_unsent()
                link = self._link
                if link is not None:
                    link.run(lambda: not self._unconfirmed or link.lost is not None, deadline)
                    if link.lost is not None:
                        self._link_lost(link)
            if self._failed:
                reasons = sorted(set(self._failed.values()))
                raise SinkError(f"{len(self._failed)} of {len(self._writes)} frames not stored: "
                                + "; ".join(reasons), failed=set(self._failed))
        finally:
            self._end_round()

    def close(self) -> None:
        """Close the connection; later writes raise ``SinkError``. Idempotent."""
        self._closed = True
        self._drop_link()

    # -- the round -------------------------------------------------------------------

    def _end_round(self) -> None:
        self._writes.clear()
        self._unconfirmed.clear()
        self._unsent.clear()
        self._failed.clear()
        self._refused_write = False
        self._lost_in_round = False
        if self._redeclare:
            self._redeclare = False
            self._drop_link()

    def _publish_unsent(self) -> None:
        link = self._link
        if link is None:
            return
        exchange = self.topology.exchange
        try:
            while self._unsent:
                index = self._unsent[0]
                frame, key = self._writes[index]
                self._unconfirmed[link.publish(exchange, key, frame)] = index
                self._unsent.pop(0)
        except (pika.exceptions.AMQPError, OSError) as exc:
            link.lost = link.lost or repr(exc)
            self._link_lost(link)

    def _confirmed(self, tag: int, multiple: bool, ok: bool) -> None:
        if multiple:
            tags = [t for t in self._unconfirmed if t <= tag]
        else:
            tags = [tag] if tag in self._unconfirmed else []
        for t in tags:
            index = self._unconfirmed.pop(t)
            if not ok:
                self._failed.setdefault(index, f"{self._where} refused (nacked) a frame with "
                                               f"routing key {self._writes[index][1]!r}")

    def _returned(self, tag: int, reply: str) -> None:
        index = self._unconfirmed.get(tag)
        if index is not None:
            self._failed.setdefault(
                index, f"{self._where} returned a frame ({reply}): no queue bound to "
                       f"{self._writes[index][1]!r} on exchange {self.exchange!r}")
            # A binding is missing: the next round's connection declares it again.
            self._redeclare = True

    def _link_lost(self, link: _Link) -> None:
        """Publish again, on the next connection, the writes whose confirms went with
        this one."""
        if link is not self._link:
            return
        log.warning("RabbitMQ connection to %s lost (%s)", self._where, link.lost)
        self._lost_in_round = True
        resend = sorted(i for i in self._unconfirmed.values() if i not in self._failed)
        self._unconfirmed.clear()
        self._unsent[:0] = resend
        self._drop_link()

    def _fail_outstanding(self, reason: str) -> None:
        for index in list(self._unconfirmed.values()) + self._unsent:
            self._failed.setdefault(index, reason)
        self._unconfirmed.clear()
        self._unsent.clear()

    def _ensure_link(self, free_first_try: bool = False) -> None:
        """Connect, with ``connect_attempts`` tries (one more when the connection just
        lost may simply have been stale); ``SinkError`` when none succeeds."""
        if self._link is not None:
            return
        failures = 0
        while True:
            try:
                self._link = _Link(self._parameters, self.topology,
                                   self._confirmed, self._returned)
                return
            except TopologyError:
                raise
            except (pika.exceptions.AMQPError, OSError, ConnectionError) as exc:
                if free_first_try:
                    free_first_try = False
                    continue
                failures += 1
                if failures >= self._connect_attempts:
                    raise SinkError(f"RabbitMQ at {self._where} unavailable after {failures} "
                                    f"attempts: {exc}") from None
                delay = self._retry_delay * 2 ** (failures - 1)
                log.warning("RabbitMQ at %s: %s; retrying in %.2f s", self._where, exc, delay)
                time.sleep(delay)

    def _drop_link(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            link.close()


def read_queue(
    url: str, query_id: int, *, exchange: str = DEFAULT_EXCHANGE, timeout: float = 0.0
) -> List[bytes]:
    """Take the frames in query ``query_id``'s queue, oldest first, and ack them.

    Reads until the queue has stayed empty for ``timeout`` seconds (0: until it
    is empty). The frames are acked together at the end, so a failure part-way
    leaves them all in the queue. Raises ``SinkError`` when the broker cannot
    be reached or the queue does not exist.
    """
    queue = queue_name(query_id, exchange)
    frames: List[bytes] = []
    try:
        connection = pika.BlockingConnection(connection_parameters(url))
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
