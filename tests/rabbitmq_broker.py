"""The tests' handle on the RabbitMQ broker that ``.ci/rabbitmq.sh`` starts.

``FASTFRAME_AMQP_URL`` says where the broker is (the ``rabbitmq_url`` fixture).
``FASTFRAME_RABBITMQCTL``, with the ``RABBITMQ_*``/``ERL_EPMD_*`` variables
that ``rabbitmq_start`` exports, lets the tests take it down and up again:

* ``broker_stop()``/``broker_start()``: ``rabbitmqctl stop_app``/``start_app``.
  The node stays, every client connection is dropped and the AMQP port closes;
  non-durable queues and transient messages are gone afterwards. About 2 s.
* ``broker_crash_restart()``: SIGKILL the node and start it again on the same
  files (``rabbitmq_crash_restart``), so that only what it had on disk
  survives. About 5 s.

Use the fixtures from a test module with
``from rabbitmq_broker import rabbitmq_url, amqp_exchange``.
"""
from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pika
import pika.exceptions
import pytest

from fastframe.sinks.rabbitmq import Topology

NO_BROKER = "no RabbitMQ broker: set FASTFRAME_AMQP_URL or run .ci/run"
RABBITMQCTL_TIMEOUT = 60
RABBITMQ_SH = Path(__file__).resolve().parents[1] / ".ci" / "rabbitmq.sh"


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    """The broker's URL; skips without one, except that under CI=true it fails."""
    url = os.environ.get("FASTFRAME_AMQP_URL")
    if url:
        return url
    if os.environ.get("CI") == "true":
        pytest.fail(f"{NO_BROKER} (CI=true: the RabbitMQ tests must run, not skip)", pytrace=False)
    pytest.skip(NO_BROKER)


@pytest.fixture
def amqp_exchange(rabbitmq_url):
    """An exchange name of this test's own; its exchange and queues are deleted afterwards."""
    exchange = f"fastframe-test-{uuid.uuid4().hex[:12]}"
    yield exchange
    try:
        connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    except pika.exceptions.AMQPError:
        return  # the broker is down; it goes away with its temporary files
    try:
        channel = connection.channel()
        topology = Topology(exchange)
        for queue, _arguments in topology.queues():
            channel.queue_delete(queue)
        for name, _kind in topology.exchanges():
            channel.exchange_delete(name)
    finally:
        connection.close()


def _controlled_broker_ctl() -> str:
    """rabbitmqctl of the broker .ci/rabbitmq.sh started; skips (fails under CI) without one."""
    ctl = os.environ.get("FASTFRAME_RABBITMQCTL")
    if ctl:
        return ctl
    reason = "no control over the broker: FASTFRAME_RABBITMQCTL is exported by .ci/rabbitmq.sh"
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def _run(command: list[str], timeout: float) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{command} failed ({done.returncode}): {done.stderr or done.stdout}")
    return done.stdout


def rabbitmqctl(*args: str) -> str:
    """Run rabbitmqctl against the test broker and return its output."""
    return _run([_controlled_broker_ctl(), *args], RABBITMQCTL_TIMEOUT)


def broker_stop() -> None:
    """Stop the RabbitMQ application: connections dropped, port closed, node and disk kept."""
    rabbitmqctl("stop_app")


def broker_start() -> None:
    """Start the RabbitMQ application again; returns once it accepts connections."""
    rabbitmqctl("start_app")
    rabbitmqctl("await_startup")


def broker_crash_restart() -> None:
    """SIGKILL the node and start it again; returns once it accepts connections."""
    _controlled_broker_ctl()
    _run(["bash", "-c", 'source "$0" && rabbitmq_crash_restart', str(RABBITMQ_SH)], 2 * RABBITMQCTL_TIMEOUT)
