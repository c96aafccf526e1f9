"""RabbitMQSink against a real broker (``.ci/rabbitmq.sh``): routing, persistence,
confirms, and what a broker restart does to writes and to stored frames."""
from __future__ import annotations

import json
import socket
import threading
import time
from typing import List

import pika
import pika.exceptions
import pika.spec
import pytest

from fastframe.sinks import SinkError, open_sink
from fastframe.sinks.rabbitmq import (
    QUERY_IDS, RabbitMQSink, _PublishingConnection, Topology, TopologyError, queue_name, read_queue, routing_key,
)
from rabbitmq_broker import (  # noqa: F401, F811 (fixtures)
    amqp_exchange,
    broker_crash_restart,
    broker_start,
    broker_stop,
    rabbitmq_url,
    rabbitmqctl,
)

pytestmark = pytest.mark.rabbitmq


@pytest.fixture(scope="module")
def golden_frames(conformance_dir):
    """(table, DataBatch bytes, query_ids) of the original orchestrator, in manifest order."""
    sample = conformance_dir / "golden_sample"
    manifest = json.loads((sample / "manifest.json").read_text())
    return [
        (v["table"], (sample / v["databatch_file"]).read_bytes(), v["query_ids"])
        for v in manifest["vectors"]
    ]


@pytest.fixture
def frame(golden_frames):
    """The transactions DataBatch: the one that goes to three queries."""
    return next(data for table, data, _ in golden_frames if table == "transactions")


@pytest.fixture
def sink(rabbitmq_url, amqp_exchange):
    sink = RabbitMQSink(rabbitmq_url, exchange=amqp_exchange, retry_delay=0.05)
    yield sink
    sink.close()


def read_all(url, exchange):
    return {q: read_queue(url, q, exchange=exchange) for q in QUERY_IDS}


def test_each_frame_goes_to_the_queue_of_each_of_its_queries_in_order(
    sink, rabbitmq_url, amqp_exchange, golden_frames
):
    for _table, data, query_ids in golden_frames:
        sink.write(data, query_ids)
    sink.flush()

    expected = {q: [data for _, data, ids in golden_frames if q in ids] for q in QUERY_IDS}
    assert read_all(rabbitmq_url, amqp_exchange) == expected
    assert [len(expected[q]) for q in QUERY_IDS] == [1, 2, 2, 2]
    assert read_all(rabbitmq_url, amqp_exchange) == {q: [] for q in QUERY_IDS}, "read_queue acks"


def test_transactions_frame_is_published_once_per_query(sink, rabbitmq_url, amqp_exchange, frame):
    sink.write(frame, [1, 3, 4])
    sink.write(frame, [4, 4])
    sink.flush()

    assert read_all(rabbitmq_url, amqp_exchange) == {1: [frame], 2: [], 3: [frame], 4: [frame, frame]}


def test_messages_are_persistent_and_exchange_and_queues_durable(sink, rabbitmq_url, amqp_exchange, frame):
    sink.write(frame, [3])
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    try:
        channel = connection.channel()
        method, properties, body = channel.basic_get(queue_name(3, amqp_exchange), auto_ack=True)
        assert body == frame
        assert method.routing_key == routing_key(3) == "query.3"
        assert properties.delivery_mode == 2
        assert properties.message_id
        # Declaring with the same arguments is a no-op; with durable=False the
        # broker refuses (406 PRECONDITION_FAILED), which proves they are durable.
        channel.exchange_declare(amqp_exchange, exchange_type="direct", durable=True)
        channel.queue_declare(queue_name(3, amqp_exchange), durable=True,
                              arguments=Topology(amqp_exchange).queue_arguments())
        with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="durable"):
            channel.queue_declare(queue_name(3, amqp_exchange), durable=False)
        channel = connection.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="durable"):
            channel.exchange_declare(amqp_exchange, exchange_type="direct", durable=False)
    finally:
        connection.close()


@pytest.mark.parametrize("query_ids", [[], [5], [1, 0]], ids=["none", "unknown", "one-unknown"])
def test_frames_for_no_known_query_are_refused_and_flush_reports_it(
    sink, rabbitmq_url, amqp_exchange, frame, query_ids
):
    with pytest.raises(SinkError, match="query ids"):
        sink.write(frame, query_ids)
    with pytest.raises(SinkError):
        sink.flush()
    sink.flush()  # the failure was reported once; nothing is pending
    assert read_all(rabbitmq_url, amqp_exchange) == {q: [] for q in QUERY_IDS}


def test_a_returned_frame_fails_the_write_and_the_next_write_restores_the_binding(
    sink, rabbitmq_url, amqp_exchange, frame
):
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    connection.channel().queue_unbind(queue_name(2, amqp_exchange), amqp_exchange, routing_key(2))
    connection.close()

    sink.write(frame, [2])
    with pytest.raises(SinkError, match="returned") as failure:
        sink.flush()
    assert failure.value.failed == {0}
    sink.write(frame, [2])
    sink.flush()
    assert read_queue(rabbitmq_url, 2, exchange=amqp_exchange) == [frame]


def test_a_nacked_frame_fails_the_write(sink, rabbitmq_url, amqp_exchange, frame):
    queue = queue_name(1, amqp_exchange)
    policy = f"{amqp_exchange}-full"
    rabbitmqctl(
        "set_policy", "--apply-to", "queues", policy, f"^{queue}$",
        '{"max-length": 1, "overflow": "reject-publish"}',
    )
    try:
        sink.write(frame, [1])
        sink.flush()
        sink.write(frame, [1])
        with pytest.raises(SinkError, match="nacked") as failure:
            sink.flush()
        assert failure.value.failed == {0}
    finally:
        rabbitmqctl("clear_policy", policy)
    assert read_queue(rabbitmq_url, 1, exchange=amqp_exchange) == [frame]


def test_broker_restart_fails_writes_while_down_keeps_confirmed_frames_and_the_sink_recovers(
    sink, rabbitmq_url, amqp_exchange, golden_frames
):
    before, during, after_restart, after_outage = (data for _, data, _ in golden_frames[:4])
    sink.write(before, [1, 3])
    sink.flush()

    # A restart between two writes: the sink's connection is gone, the next
    # write reconnects at once and succeeds.
    broker_stop()
    broker_start()
    sink.write(after_restart, [1])
    sink.flush()

    broker_stop()
    try:
        started = time.monotonic()
        sink.write(during, [1, 3])
        with pytest.raises(SinkError, match="unavailable") as failure:
            sink.flush()
        assert failure.value.failed == {0}
        assert time.monotonic() - started < 5, "a down broker must fail the flush quickly"
    finally:
        broker_start()

    sink.write(after_outage, [1])
    sink.flush()
    assert read_queue(rabbitmq_url, 1, exchange=amqp_exchange) == [before, after_restart, after_outage]
    assert read_queue(rabbitmq_url, 3, exchange=amqp_exchange) == [before]


def test_confirmed_frames_survive_a_broker_crash_and_the_sink_reconnects(
    sink, rabbitmq_url, amqp_exchange, golden_frames
):
    for _table, data, query_ids in golden_frames:
        sink.write(data, query_ids)
    sink.flush()

    broker_crash_restart()
    sink.write(golden_frames[0][1], [1])
    sink.flush()

    transactions = golden_frames[3][1]
    assert read_queue(rabbitmq_url, 1, exchange=amqp_exchange) == [transactions, golden_frames[0][1]]
    assert read_queue(rabbitmq_url, 4, exchange=amqp_exchange) == [transactions, golden_frames[4][1]]


def test_close_is_idempotent_and_ends_writing(rabbitmq_url, amqp_exchange, frame):
    sink = open_sink(rabbitmq_url, exchange=amqp_exchange)
    assert isinstance(sink, RabbitMQSink)
    sink.write(frame, [4])
    sink.close()
    sink.close()
    with pytest.raises(SinkError, match="closed"):
        sink.write(frame, [4])
    assert read_queue(rabbitmq_url, 4, exchange=amqp_exchange) == [frame]


def test_read_queue_of_a_missing_queue_raises(rabbitmq_url, amqp_exchange):
    with pytest.raises(SinkError, match="NOT_FOUND"):
        read_queue(rabbitmq_url, 1, exchange=amqp_exchange)


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_broker_fails_the_constructor_after_bounded_attempts():
    url = f"amqp://guest:guest@127.0.0.1:{_unused_port()}/%2F"
    started = time.monotonic()
    with pytest.raises(SinkError, match="after 3 attempts"):
        RabbitMQSink(url, connect_attempts=3, retry_delay=0.05)
    assert time.monotonic() - started < 5


# -- queue types -------------------------------------------------------------------------

def _declare_error(url, queue, arguments) -> str:
    """The broker's reply to declaring ``queue`` with ``arguments`` ("" if it accepts)."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        connection.channel().queue_declare(queue, durable=True, arguments=arguments)
        return ""
    except pika.exceptions.ChannelClosedByBroker as exc:
        return f"{exc.reply_code} {exc.reply_text}"
    finally:
        connection.close()


@pytest.mark.parametrize("how", ["keyword", "url"])
def test_quorum_queues_are_declared_quorum_and_take_frames(rabbitmq_url, amqp_exchange, frame, how):
    if how == "keyword":
        sink = RabbitMQSink(rabbitmq_url, exchange=amqp_exchange, queue_type="quorum")
    else:
        sink = RabbitMQSink(f"{rabbitmq_url}?queue_type=quorum&exchange={amqp_exchange}")
    try:
        assert sink.exchange == amqp_exchange
        sink.write(frame, [1, 3, 4])
        sink.flush()
    finally:
        sink.close()
    topology = Topology(amqp_exchange, "quorum")
    for queue, arguments in topology.queues():
        assert _declare_error(rabbitmq_url, queue, arguments) == "", "same arguments: accepted"
        refused = _declare_error(rabbitmq_url, queue, dict(arguments, **{"x-queue-type": "classic"}))
        assert "PRECONDITION_FAILED" in refused and "x-queue-type" in refused
    assert read_all(rabbitmq_url, amqp_exchange) == {1: [frame], 2: [], 3: [frame], 4: [frame]}


def test_a_queue_declared_with_other_arguments_is_a_one_line_error_naming_it(
    rabbitmq_url, amqp_exchange
):
    # What fastframe 0.1 declared: a classic queue without dead-lettering.
    assert _declare_error(rabbitmq_url, queue_name(2, amqp_exchange), None) == ""
    started = time.monotonic()
    with pytest.raises(TopologyError) as refused:
        RabbitMQSink(rabbitmq_url, exchange=amqp_exchange, retry_delay=0.05)
    message = str(refused.value)
    assert queue_name(2, amqp_exchange) in message and "PRECONDITION_FAILED" in message
    assert "\n" not in message
    assert time.monotonic() - started < 5, "a refused topology is not retried"


def test_an_unknown_queue_type_is_refused_before_connecting(rabbitmq_url):
    with pytest.raises(ValueError, match="queue_type"):
        RabbitMQSink(rabbitmq_url, queue_type="stream")


# -- pipelined rounds: a failure is the failed write's only -------------------------------

def test_a_returned_frame_fails_only_its_own_write_of_the_round(
    sink, rabbitmq_url, amqp_exchange, golden_frames
):
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    connection.channel().queue_unbind(queue_name(2, amqp_exchange), amqp_exchange, routing_key(2))
    connection.close()
    first, lost, last = (data for _, data, _ in golden_frames[:3])

    sink.write(first, [1])
    sink.write(lost, [2])
    sink.write(last, [1, 3])
    with pytest.raises(SinkError, match="returned") as failure:
        sink.flush()
    assert failure.value.failed == {1}
    assert read_queue(rabbitmq_url, 1, exchange=amqp_exchange) == [first, last]
    assert read_queue(rabbitmq_url, 3, exchange=amqp_exchange) == [last]


def test_a_nacked_frame_fails_only_its_own_write_of_the_round(
    sink, rabbitmq_url, amqp_exchange, golden_frames
):
    queue = queue_name(1, amqp_exchange)
    policy = f"{amqp_exchange}-full"
    rabbitmqctl(
        "set_policy", "--apply-to", "queues", policy, f"^{queue}$",
        '{"max-length": 1, "overflow": "reject-publish"}',
    )
    first, refused, other = (data for _, data, _ in golden_frames[:3])
    try:
        sink.write(first, [1])
        sink.write(refused, [1])
        sink.write(other, [3])
        with pytest.raises(SinkError, match="nacked") as failure:
            sink.flush()
        assert failure.value.failed == {1}
    finally:
        rabbitmqctl("clear_policy", policy)
    assert read_queue(rabbitmq_url, 1, exchange=amqp_exchange) == [first]
    assert read_queue(rabbitmq_url, 3, exchange=amqp_exchange) == [other]


def test_a_connection_dropped_for_missed_heartbeats_while_idle_is_replaced(
    rabbitmq_url, amqp_exchange, frame, caplog
):
    # Nothing runs the sink's connection between rounds, so with a 1 s heartbeat
    # the broker drops it; the next round must notice, reconnect and publish.
    sink = RabbitMQSink(f"{rabbitmq_url}?heartbeat=1", exchange=amqp_exchange, retry_delay=0.05)
    try:
        sink.write(frame, [2])
        sink.flush()
        time.sleep(4)
        sink.write(frame, [2])
        sink.flush()
    finally:
        sink.close()
    assert read_queue(rabbitmq_url, 2, exchange=amqp_exchange) == [frame, frame]
    assert [r for r in caplog.records if "connection to" in r.getMessage() and "lost" in r.getMessage()]


# -- the PipelinedSink interface: publish now, settle as the broker confirms -------------------

def test_sent_frames_are_published_before_any_confirm_is_awaited(
    sink, rabbitmq_url, amqp_exchange, golden_frames
):
    frames = [data for _, data, _ in golden_frames]
    numbers = [sink.send(data, [2]) for data in frames]
    # No settle() yet: the frames are already on their way, and queued.
    queued: List[bytes] = []
    deadline = time.monotonic() + 10.0
    while len(queued) < len(frames) and time.monotonic() < deadline:
        queued += read_queue(rabbitmq_url, 2, exchange=amqp_exchange, timeout=0.05)
    assert queued == frames
    settled = []
    while len(settled) < len(numbers):
        settled += sink.settle(10.0)
    assert sorted(settled) == [(n, None) for n in numbers]
    assert sink.settle(10.0) == []   # nothing outstanding: at once


def test_wake_ends_a_settle_waiting_on_a_broker_that_blocks_publishers(
    sink, rabbitmq_url, amqp_exchange, frame
):
    rabbitmqctl("set_vm_memory_high_watermark", "0")   # a memory alarm: publishers blocked
    try:
        number = sink.send(frame, [2])
        waker = threading.Timer(0.5, sink.wake)
        waker.start()
        started = time.monotonic()
        assert sink.settle(60.0) == []
        assert time.monotonic() - started < 30, "wake() did not end the settle"
        waker.join()
    finally:
        rabbitmqctl("set_vm_memory_high_watermark", "0.4")
    settled = []
    while not settled:
        settled = sink.settle(10.0)
    assert settled == [(number, None)]
    assert read_queue(rabbitmq_url, 2, exchange=amqp_exchange) == [frame]


@pytest.mark.parametrize("size", [0, 1, 131_064, 131_065, 1 << 20])
def test_a_message_is_framed_byte_for_byte_as_pika_frames_it(size):
    # The sink frames bodies itself, with one copy (rabbitmq._PublishingConnection);
    # what goes on the wire must stay pika's own framing.
    def framed(cls):
        connection = object.__new__(cls)
        connection._body_max_length = 131_072 - 8
        out = []
        connection._output_marshaled_frames = lambda frames: out.extend(bytes(f) for f in frames)
        method = pika.spec.Basic.Publish(exchange="x", routing_key="query.1.3.4", mandatory=True)
        properties = pika.BasicProperties(delivery_mode=2, message_id="abc.1")
        cls._send_message(connection, 1, method, (properties, bytes(range(256)) * (size // 256)
                                                  + bytes(size % 256)))
        return out

    assert framed(_PublishingConnection) == framed(pika.SelectConnection)


def test_a_frame_not_confirmed_in_time_fails_alone_and_the_sink_goes_on(
    rabbitmq_url, amqp_exchange, frame
):
    sink = RabbitMQSink(rabbitmq_url, exchange=amqp_exchange, retry_delay=0.05,
                        confirm_timeout=1.0)
    try:
        rabbitmqctl("set_vm_memory_high_watermark", "0")   # publishers blocked: no confirm
        try:
            number = sink.send(frame, [2])
            started = time.monotonic()
            settled = sink.settle(60.0)
            # Reported once expired (1 s) and the blocked connection dropped (its close
            # waits 2 s for an answer), not held until the settle's own timeout.
            assert time.monotonic() - started < 6
            ((settled_number, reason),) = settled
            assert settled_number == number
            assert reason.startswith("no confirm from amqp://") and reason.endswith("within 1 s")
        finally:
            rabbitmqctl("set_vm_memory_high_watermark", "0.4")
        after = sink.send(frame, [2])
        settled = []
        while not settled:
            settled = sink.settle(10.0)
        assert settled == [(after, None)]
    finally:
        sink.close()
