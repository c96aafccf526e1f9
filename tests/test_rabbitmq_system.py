"""RabbitMQ end to end against a real broker (``.ci/rabbitmq.sh``): the consumer API,
``fastframe consume``, ``serve --queue-type``, two orchestrators on one broker."""
from __future__ import annotations

import asyncio
import collections
import csv
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import pika
import pytest

from fastframe import codec
from fastframe.client import Client
from fastframe.consumer import AsyncConsumer, Consumer, ConsumerError
from fastframe.datagen import generate
from fastframe.messages import DataBatch, Finished
from fastframe.orchestrator import Orchestrator
from fastframe.schema import TABLES
from fastframe.sinks.file import read_frames
from fastframe.sinks.rabbitmq import QUERY_IDS, RabbitMQSink, Topology, queue_name, read_queue
from helpers_system import free_port, needs_sigterm, running
from rabbitmq_broker import amqp_exchange, rabbitmq_url  # noqa: F401, F811 (fixtures)
from test_cli import fastframe_command, subprocess_env
from test_orchestrator import MENU, as_multisets, decode, expected_rows, numbered_batch, stored_rows

pytestmark = pytest.mark.rabbitmq

TIMEOUT = 60.0


def url_for(rabbitmq_url: str, exchange: str, **options: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in dict(options, exchange=exchange).items())
    return f"{rabbitmq_url}?{query}"


@pytest.fixture(scope="module")
def frames() -> List[bytes]:
    """Five DataBatch frames for query 1, told apart by their batch numbers."""
    return [codec.impl.encode_databatch_frame([MENU.opcode], [1], 0, n, {}, 1, 0,
                                              numbered_batch(n)) for n in range(1, 6)]


def publish(rabbitmq_url: str, exchange: str, frames: List[bytes], query_ids=(1,)) -> None:
    sink = RabbitMQSink(rabbitmq_url, exchange=exchange)
    try:
        for frame in frames:
            sink.write(frame, query_ids)
        sink.flush()
    finally:
        sink.close()


def publish_raw(rabbitmq_url: str, queue: str, body: bytes) -> None:
    """A message straight into ``queue`` (the default exchange), as a broken producer would."""
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))
    finally:
        connection.close()


def dead_letters(rabbitmq_url: str, exchange: str) -> List[bytes]:
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    out = []
    try:
        channel = connection.channel()
        while True:
            method, _props, body = channel.basic_get(Topology(exchange).dead_letter_queue,
                                                     auto_ack=True)
            if method is None:
                return out
            out.append(body)
    finally:
        connection.close()


# -- the consumer API -----------------------------------------------------------------

def test_consumer_yields_each_frame_in_order_and_dead_letters_malformed_ones(
        rabbitmq_url, amqp_exchange, frames, caplog):
    publish(rabbitmq_url, amqp_exchange, frames[:2])
    garbage = [b"not a frame", frames[0][:-3], b"\x07\x00\x00\x00\x00"]
    for body in garbage:
        publish_raw(rabbitmq_url, queue_name(1, amqp_exchange), body)
    publish(rabbitmq_url, amqp_exchange, frames[2:])

    with Consumer(rabbitmq_url, 1, exchange=amqp_exchange, prefetch=3) as consumer:
        got = []
        for message in consumer.messages(until_idle=0.5):
            with message:
                assert isinstance(message.batch, DataBatch)
                got.append(message.frame)
        assert consumer.rejected == len(garbage)
    assert got == frames
    assert sorted(dead_letters(rabbitmq_url, amqp_exchange)) == sorted(garbage)
    assert read_queue(rabbitmq_url, 1, exchange=amqp_exchange) == []
    assert len([r for r in caplog.records if "result: rejected" in r.getMessage()]) == 3


def test_an_unsettled_or_failed_message_goes_back_to_the_queue(rabbitmq_url, amqp_exchange,
                                                                 frames):
    publish(rabbitmq_url, amqp_exchange, frames[:3])
    with Consumer(rabbitmq_url, 1, exchange=amqp_exchange, prefetch=1) as consumer:
        stream = consumer.messages(until_idle=2.0)
        first = next(stream)
        with pytest.raises(RuntimeError):
            with first:
                raise RuntimeError("the worker failed")
        again = next(stream)
        assert again.frame == frames[0] and again.redelivered
        again.ack()
        with pytest.raises(ConsumerError, match="already"):
            again.ack()
        second = next(stream)
        assert second.frame == frames[1]   # taken, never settled
    with Consumer(rabbitmq_url, 1, exchange=amqp_exchange) as consumer:
        rest = [m for m in consumer.messages(until_idle=0.5) if m.ack() is None]
    assert [m.frame for m in rest] == frames[1:3]
    assert rest[0].redelivered


def test_async_consumer(rabbitmq_url, amqp_exchange, frames):
    publish(rabbitmq_url, amqp_exchange, frames)

    async def consume() -> List[bytes]:
        got = []
        async with AsyncConsumer(rabbitmq_url, 1, exchange=amqp_exchange) as consumer:
            async for message in consumer.messages(until_idle=0.5):
                async with message:
                    got.append(message.frame)
        return got

    assert asyncio.run(asyncio.wait_for(consume(), TIMEOUT)) == frames
    assert read_queue(rabbitmq_url, 1, exchange=amqp_exchange) == []


def test_consumer_of_an_unreachable_broker_or_unknown_query_is_refused(rabbitmq_url):
    with pytest.raises(ValueError, match="query 5"):
        Consumer(rabbitmq_url, 5)
    port = free_port()
    with pytest.raises(ConsumerError):
        Consumer(f"amqp://guest:guest@127.0.0.1:{port}/%2F", 1)


# -- fastframe consume ----------------------------------------------------------------------

def run_cli(*args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(fastframe_command(*args), env=subprocess_env(), capture_output=True,
                          text=True, timeout=timeout)


def test_consume_drains_a_queue_into_a_sink_file_until_idle(rabbitmq_url, amqp_exchange,
                                                            frames, tmp_path):
    publish(rabbitmq_url, amqp_exchange, frames, query_ids=(1, 3))
    out = tmp_path / "q3.bin"
    done = run_cli("consume", url_for(rabbitmq_url, amqp_exchange), "--query", "3",
                   "--out", f"file:{out}", "--until-idle", "0.5", "--prefetch", "2")
    assert done.returncode == 0, done.stderr
    assert f"consumed {len(frames)} messages" in done.stdout
    assert list(read_frames(out)) == frames
    assert read_queue(rabbitmq_url, 3, exchange=amqp_exchange) == []
    assert read_queue(rabbitmq_url, 1, exchange=amqp_exchange) == frames, "other queues untouched"
    inspected = run_cli("inspect", str(out), "--json")
    assert inspected.returncode == 0 and len(inspected.stdout.splitlines()) == len(frames)


@needs_sigterm
def test_consume_stops_on_sigterm_with_every_message_either_stored_or_queued(
        rabbitmq_url, amqp_exchange, tmp_path):
    # Enough messages, each fsynced before its ack, that SIGTERM comes mid-stream.
    frames = [codec.impl.encode_databatch_frame([MENU.opcode], [1], 0, n, {}, 1, 0,
                                                numbered_batch(n)) for n in range(1, 401)]
    out = tmp_path / "q1.bin"
    proc = subprocess.Popen(
        fastframe_command("consume", url_for(rabbitmq_url, amqp_exchange), "--query", "1",
                          "--out", f"file:{out}", "--prefetch", "4"),
        env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        publish(rabbitmq_url, amqp_exchange, frames)
        deadline = time.monotonic() + TIMEOUT
        while not (out.exists() and out.stat().st_size) and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    stored = list(read_frames(out))
    assert stored and stored == frames[:len(stored)]
    assert stored + read_queue(rabbitmq_url, 1, exchange=amqp_exchange) == frames


def test_consume_usage_and_runtime_errors_are_one_line(rabbitmq_url, tmp_path):
    bad_out = run_cli("consume", rabbitmq_url, "--query", "1", "--out", str(tmp_path / "x"))
    assert bad_out.returncode == 2 and "file:PATH" in bad_out.stderr
    down = run_cli("consume", f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F", "--query", "1",
                   "--out", f"file:{tmp_path / 'x'}", "--until-idle", "0.1")
    assert down.returncode == 1, down.stderr
    assert "Traceback" not in down.stderr
    assert [line for line in down.stderr.splitlines() if line.startswith("fastframe consume:")]


# -- serve --queue-type ---------------------------------------------------------------------

def test_serve_with_another_queue_type_than_the_existing_queues_exits_with_one_line(
        rabbitmq_url, amqp_exchange):
    RabbitMQSink(rabbitmq_url, exchange=amqp_exchange).close()   # classic queues
    started = time.monotonic()
    done = run_cli("serve", "--port", str(free_port()), "--queue-type", "quorum",
                   "--sink", url_for(rabbitmq_url, amqp_exchange))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("fastframe serve:")]
    assert len(lines) == 1 and queue_name(1, amqp_exchange) in lines[0], done.stderr
    assert "x-queue-type" in lines[0]
    assert time.monotonic() - started < TIMEOUT / 2


# -- several orchestrators, one broker ---------------------------------------------------------

def wait_listening(server: subprocess.Popen, port: int) -> None:
    """Return once ``fastframe serve`` accepts connections on ``port``; fail if it exits."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"fastframe serve on port {port} exited: {server.communicate()[1]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"fastframe serve on port {port} never listened")


@needs_sigterm
def test_two_orchestrators_on_one_broker_queue_every_row_of_two_agencies(
        rabbitmq_url, amqp_exchange, tmp_path):
    agencies = {21: 5, 22: 6}   # agency id -> data seed
    folders = {}
    for agency, seed in agencies.items():
        folders[agency] = tmp_path / f"agency{agency}"
        generate(folders[agency], transactions=600, seed=seed)
    ports = [free_port()]
    while len(ports) < 2:
        ports += [p for p in [free_port()] if p not in ports]
    servers = [subprocess.Popen(
        fastframe_command("serve", "--port", str(port), "--queue-type", "quorum",
                          "--sink", url_for(rabbitmq_url, amqp_exchange), "--log-level", "warning"),
        env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for port in ports]
    try:
        for server, port in zip(servers, ports):
            wait_listening(server, port)
        for (agency, folder), port in zip(folders.items(), ports):
            Client(("127.0.0.1", port), agency, batch_rows=200,
                   timeout=TIMEOUT).send_folder(folder)
        for server in servers:
            server.send_signal(signal.SIGTERM)
        for server in servers:
            _out, err = server.communicate(timeout=TIMEOUT)
            assert server.returncode == 0, err
    finally:
        for server in servers:
            if server.poll() is None:
                server.kill()
                server.wait()

    queues = {q: decode(read_queue(rabbitmq_url, q, exchange=amqp_exchange)) for q in QUERY_IDS}
    expected: Dict[str, collections.Counter] = {spec.name: collections.Counter() for spec in TABLES}
    for folder in folders.values():
        for table, rows in as_multisets(expected_rows(folder)).items():
            expected[table].update(rows)
    for spec in TABLES:
        for q in spec.query_ids:
            got = as_multisets(stored_rows(queues[q]))[spec.name]
            assert got == expected[spec.name], f"{spec.name} in query {q}"
    for q in QUERY_IDS:
        finished = [db.batch_msg for db in queues[q] if isinstance(db.batch_msg, Finished)]
        assert sorted(f.agency_id for f in finished) == sorted(agencies)


# -- the example worker ---------------------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def query1_by_csv(folder: Path) -> List[Tuple[str, str, str]]:
    """Query 1 over the CSV files with the csv module: (transaction_id, final_amount with
    two decimals, created_at) of 2024 and 2025, 06:00:00..23:00:00, final_amount >= 75."""
    out = []
    for path in sorted((folder / "transactions").glob("*.csv")):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                created = row["created_at"]
                if (created[:4] in ("2024", "2025") and "06:00:00" <= created[11:19] <= "23:00:00"
                        and float(row["final_amount"]) >= 75):
                    out.append((row["transaction_id"], f"{float(row['final_amount']):.2f}",
                                created))
    return sorted(out, key=lambda r: (r[2], r[0]))


def test_example_query1_worker_answers_as_the_csv_files_do(rabbitmq_url, amqp_exchange,
                                                              tmp_path):
    # The example computes with Polars on Arrow batches (no wheels on PyPy).
    pytest.importorskip("polars", reason="the example worker needs Polars")
    pytest.importorskip("pyarrow", reason="the example worker reads Arrow batches")
    folder = tmp_path / "data"
    generate(folder, transactions=4000, seed=31)
    expected = query1_by_csv(folder)
    assert len(expected) > 10, "the data set must exercise the query"
    server = Orchestrator(RabbitMQSink(rabbitmq_url, exchange=amqp_exchange), "127.0.0.1", 0)
    with running(server):
        Client(server.address, 7, batch_rows=500, timeout=TIMEOUT).send_folder(folder)

    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "query1_worker.py"), url_for(rabbitmq_url, amqp_exchange),
         "--until-idle", "1", "--rows", "8"],
        env=subprocess_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"count: {len(expected)}"
    assert [tuple(line.split("  ")) for line in lines[1:]] == expected[:8]
    assert read_queue(rabbitmq_url, 1, exchange=amqp_exchange) == [], "every batch acked"
