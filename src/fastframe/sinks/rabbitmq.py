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

Publishing is pipelined: the sink is a ``PipelinedSink`` (sinks/__init__.py).
``send(frame, query_ids)`` publishes the frame *once*, persistent
(delivery_mode 2) and mandatory, with the routing key of its set of queries
(``query.1.3.4`` for a transactions batch), so the exchange puts it in each
of those queues and a classic queue's message store keeps its body once; it
returns without waiting. ``settle()`` reports each frame once the broker
confirmed it, which it does once every queue the message was routed to has
it; the orchestrator sends the next frames meanwhile, so the broker never
waits for a group's last confirm before it gets more work. The confirms
(``Basic.Ack``/``Basic.Nack``, ``multiple`` included) are matched to the
frames by delivery tag, returns by the ``message_id`` each message carries
(``<connection id>.<delivery tag>``: it names the publish, it is not a key
to deduplicate on), so a nacked or returned message fails exactly its own
frame. A message is returned only when it reaches no queue at all; the sink
then declares the topology again before it publishes more. (A binding
removed by hand from one of several queues goes unnoticed.) ``write`` and
``flush`` rounds are ``send`` and a ``settle`` of the round's frames, with
the round contract's errors.

The connection is pika's ``SelectConnection`` (callbacks), and its I/O loop
is run by the sink's own calls, on the caller's thread: ``send`` sends what
the socket takes at once, ``settle`` runs the loop until a confirm is in,
and ``wake()``, from another thread, interrupts it. That keeps the
one-thread contract of ``Sink`` with no thread or lock of its own.
``BlockingConnection`` cannot do this: with confirms on, its
``basic_publish`` waits for each confirm in turn.

A lost connection (broker restart, missed heartbeats) is opened again at
once and the frames not yet confirmed are published again (delivery is
at-least-once); a broker that cannot be reached gets ``connect_attempts``
tries, ``retry_delay`` seconds apart and doubling, then every outstanding
frame fails, and the next frame starts over. A frame the broker does not
confirm within ``confirm_timeout`` seconds (a resource alarm blocking
publishers, say) fails too, and the connection is replaced.

Options: ``exchange`` and ``queue_type`` as keyword arguments or in the URL's
query string (``amqp://…/%2F?queue_type=quorum&exchange=x``); pika's own
connection settings (``heartbeat``, ``socket_timeout``, …) go in the query
string too, as ``URLParameters`` reads them.
"""
from __future__ import annotations

import collections
import itertools
import logging
import struct
import time
import uuid
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Sequence, Tuple
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pika
import pika.adapters.select_connection
import pika.exceptions
import pika.frame
import pika.spec

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


_BODY_FRAME_HEAD = struct.Struct(">BHI")   # AMQP frame header: type, channel, size
_FRAME_END = bytes([pika.spec.FRAME_END])


class _PublishingConnection(pika.SelectConnection):   # type: ignore[misc]  # pika is untyped
    """pika's ``SelectConnection``, framing a message body with one copy, not three.

    pika cuts a body into frames by slicing it (a copy) and marshals each frame
    by concatenation (two more): for 1 MiB frames that was most of the sink's
    CPU time. Here each body frame is one join over a view of the body. The
    bytes sent are pika's own (``test_sink_rabbitmq`` compares them).
    """

    def _send_message(self, channel_number: int, method_frame: Any,
                      content: Tuple[Any, bytes]) -> None:
        properties, body = content
        frames = [pika.frame.Method(channel_number, method_frame).marshal(),
                  pika.frame.Header(channel_number, len(body), properties).marshal()]
        view, step = memoryview(body), self._body_max_length
        for start in range(0, len(body), step):
            chunk = view[start:start + step]
            frames.append(b"".join((_BODY_FRAME_HEAD.pack(pika.spec.FRAME_BODY, channel_number,
                                                          len(chunk)), chunk, _FRAME_END)))
        self._output_marshaled_frames(frames)


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
        self._connection = _PublishingConnection(
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
        channel.confirm_delivery(self._confirmed, callback=lambda _frame: self.declare())

    def declare(self) -> None:
        """Declare the topology, without waiting (again: after a frame came back unrouted)."""
        topology, channel = self._topology, self._channel
        steps: List[Callable[..., None]] = []
        for name, kind in topology.exchanges():
            steps.append(partial(channel.exchange_declare, name, exchange_type=kind, durable=True))
        for name, arguments in topology.queues():
            steps.append(partial(channel.queue_declare, name, durable=True, arguments=arguments))
        for queue, exchange, key in topology.bindings():
            steps.append(partial(channel.queue_bind, queue, exchange, key))
        # pika sends a channel's synchronous methods one after the other: issue them all.
        self._pending_declarations += len(steps)
        for step in steps:
            step(callback=self._declared)

    def _declared(self, _frame: Any) -> None:
        self._pending_declarations -= 1
        if self._pending_declarations == 0:
            self._ready = True

    @property
    def declaring(self) -> bool:
        """Declarations are in progress: a publish now could overtake them."""
        return self._pending_declarations > 0

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

    def wake(self) -> None:
        """From any thread: make a ``run()`` in progress check ``done()`` now."""
        try:
            self._connection.ioloop.add_callback_threadsafe(lambda: None)
        except Exception:   # closed under us by the owner's thread: nothing to wake
            pass

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

    A ``PipelinedSink``: the orchestrator sends frames as they come and is told,
    confirm by confirm, which are stored; ``write``/``flush`` rounds work too.
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
        # Every frame sent and not yet settled, oldest first, by number: its frame and
        # routing key (kept to publish again after a lost connection) and the time by
        # which the broker must have confirmed it. Then those not yet published, those
        # published and not yet confirmed (delivery tag -> number), why the broker
        # returned a frame (its confirm follows), and what settle() has to report.
        self._outstanding: Dict[int, Tuple[bytes, str, float]] = {}
        self._next_number = 0
        self._unsent: Deque[int] = collections.deque()
        self._unconfirmed: Dict[int, int] = {}
        self._returned_why: Dict[int, str] = {}
        self._settled: List[Tuple[int, Optional[str]]] = []
        self._lost = False   # the last connection was lost, not refused
        self._woken = False
        # The write/flush round: its writes' numbers, and whether one was refused.
        self._round: List[int] = []
        self._refused_write = False
        self._ensure_link()

    @property
    def exchange(self) -> str:
        return self.topology.exchange

    # -- PipelinedSink -------------------------------------------------------------

    def send(self, frame: bytes, query_ids: Sequence[int]) -> int:
        """Publish ``frame`` once, routed to the queue of each query id; returns its
        number, reported by ``settle()`` once the broker confirms or refuses it."""
        if self._closed:
            raise SinkError("write on a closed RabbitMQ sink")
        queries = list(dict.fromkeys(query_ids))
        if not queries:
            raise SinkError("a frame without query ids would reach no queue")
        unknown = [q for q in queries if q not in QUERY_IDS]
        if unknown:
            raise SinkError(f"no queue for query ids {unknown}: the queries are {list(QUERY_IDS)}")
        number = self._next_number
        self._next_number += 1
        self._outstanding[number] = (frame, routing_key_for(queries),
                                     time.monotonic() + self._confirm_timeout)
        self._unsent.append(number)
        link = self._link
        if link is not None:
            self._publish_unsent(link)
            link.run(lambda: link.lost is not None, 0.0)   # send what the socket takes now
            if link.lost is not None:
                self._link_lost(link)
        return number

    def settle(self, timeout: float) -> List[Tuple[int, Optional[str]]]:
        """The frames settled since the last call; waits up to ``timeout`` seconds for
        one while frames are outstanding, less when ``wake()`` is called."""
        deadline = time.monotonic() + timeout
        while not self._settled and not self._woken and self._outstanding:
            now = time.monotonic()
            self._expire(now)
            if self._settled or now >= deadline:   # report an expiry now, not after a wait
                break
            if self._link is None:
                try:
                    # A lost connection may only have been stale (broker restarted
                    # while we were idle): one more try for that.
                    self._ensure_link(free_first_try=self._lost)
                except SinkError as exc:
                    self._fail_outstanding(str(exc))
                    break
                self._lost = False
            link = self._link
            assert link is not None
            self._publish_unsent(link)
            if link.lost is None:
                oldest = next(iter(self._outstanding.values()), None)
                until = deadline if oldest is None else min(deadline, oldest[2])
                link.run(lambda: bool(self._settled) or self._woken or link.lost is not None
                         or bool(self._unsent) and not link.declaring, until)
            if link.lost is not None:
                self._link_lost(link)
        self._woken = False
        settled, self._settled = self._settled, []
        return settled

    def wake(self) -> None:
        """Make a ``settle()`` in progress on another thread return now."""
        self._woken = True
        link = self._link
        if link is not None:
            link.wake()

    # -- Sink: write/flush rounds on top of send/settle ----------------------------

    def write(self, frame: bytes, query_ids: Sequence[int]) -> None:
        """Publish ``frame`` to the queue of each query id; confirmed by ``flush()``."""
        try:
            self._round.append(self.send(frame, query_ids))
        except SinkError:
            self._refused_write = True
            raise

    def flush(self) -> None:
        """Wait until the broker confirmed every write of the round; see the module doc."""
        index_of = {number: index for index, number in enumerate(self._round)}
        refused = self._refused_write
        self._round, self._refused_write = [], False
        failed: Dict[int, str] = {}
        pending = set(index_of)
        while pending:
            for number, reason in self.settle(self._confirm_timeout):
                pending.discard(number)
                if reason is not None and number in index_of:
                    failed[index_of[number]] = reason
        if refused:
            raise SinkError("a write of this round was refused: none of it may be ACKed")
        if failed:
            reasons = sorted(set(failed.values()))
            raise SinkError(f"{len(failed)} of {len(index_of)} frames not stored: "
                            + "; ".join(reasons), failed=set(failed))

    def close(self) -> None:
        """Close the connection; later writes raise ``SinkError``. Idempotent."""
        self._closed = True
        self._drop_link()

    # -- the broker's answers and lost connections -------------------------------------

    def _publish_unsent(self, link: _Link) -> None:
        if link.declaring:
            return
        exchange = self.topology.exchange
        try:
            while self._unsent:
                number = self._unsent[0]
                frame, key, _deadline = self._outstanding[number]
                self._unconfirmed[link.publish(exchange, key, frame)] = number
                self._unsent.popleft()
        except (pika.exceptions.AMQPError, OSError) as exc:
            link.lost = link.lost or repr(exc)

    def _settle_one(self, number: int, reason: Optional[str]) -> None:
        self._outstanding.pop(number, None)
        self._settled.append((number, reason))

    def _confirmed(self, tag: int, multiple: bool, ok: bool) -> None:
        # Tags were put in increasing order: a multiple confirm takes a prefix.
        tags = [t for t in itertools.takewhile(lambda t: t <= tag, self._unconfirmed)] \
            if multiple else [tag] if tag in self._unconfirmed else []
        for t in tags:
            number = self._unconfirmed.pop(t)
            reason = self._returned_why.pop(number, None)
            if reason is None and not ok:
                reason = (f"{self._where} refused (nacked) a frame with routing key "
                          f"{self._outstanding[number][1]!r}")
            self._settle_one(number, reason)

    def _returned(self, tag: int, reply: str) -> None:
        number = self._unconfirmed.get(tag)
        if number is not None:
            self._returned_why[number] = (
                f"{self._where} returned a frame ({reply}): no queue bound to "
                f"{self._outstanding[number][1]!r} on exchange {self.exchange!r}")
            # A binding is missing: declare the topology again for the next frames.
            link = self._link
            if link is not None and not link.declaring:
                link.declare()

    def _expire(self, now: float) -> None:
        """Fail the frames the broker did not confirm in time, and drop the connection
        (a broker that blocks publishers); the younger ones are published again."""
        expired = list(itertools.takewhile(lambda n: self._outstanding[n][2] <= now,
                                           self._outstanding))
        if not expired:
            return
        reason = f"no confirm from {self._where} within {self._confirm_timeout:g} s"
        for number in expired:
            self._settle_one(number, reason)
        self._unsent = collections.deque(n for n in self._unsent if n in self._outstanding)
        if self._link is not None:
            self._link_lost(self._link, log_it=False)

    def _link_lost(self, link: _Link, log_it: bool = True) -> None:
        """Publish again, on the next connection, the frames whose confirms went with
        this one."""
        if link is not self._link:
            return
        if log_it:
            log.warning("RabbitMQ connection to %s lost (%s)", self._where, link.lost)
        self._lost = True
        self._returned_why.clear()
        resend = sorted(n for n in self._unconfirmed.values() if n in self._outstanding)
        self._unconfirmed.clear()
        self._unsent.extendleft(reversed(resend))
        self._drop_link()

    def _fail_outstanding(self, reason: str) -> None:
        for number in list(self._outstanding):
            self._settle_one(number, reason)
        self._unconfirmed.clear()
        self._unsent.clear()
        self._returned_why.clear()

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
