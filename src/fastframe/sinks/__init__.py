"""Where the orchestrator hands its DataBatch frames: the sink interface.

A sink is used from one thread only (the orchestrator's sink writer), so
implementations need no locking. The contract that makes ACKs safe:

* ``write(frame, query_ids)`` hands over one whole DataBatch frame;
* ``flush()`` returns only when every frame written so far is durable
  (file: written, and fsynced per the policy; RabbitMQ: confirmed by the
  broker). It raises ``SinkError`` when it cannot promise that, and then
  none of the frames since the last successful flush may be ACKed;
* ``close()`` flushes what it can and releases the resource.

``open_sink(url)`` builds a sink from the command line's ``--sink`` value:
``file:PATH`` (the default kind) or ``amqp://USER:PASS@HOST:PORT/VHOST``.
"""
from __future__ import annotations

from typing import Any, Protocol, Sequence

__all__ = ["Sink", "SinkError", "open_sink"]


class SinkError(Exception):
    """The sink could not take or make durable what it was handed."""


class Sink(Protocol):
    def write(self, frame: bytes, query_ids: Sequence[int]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def open_sink(url: str, **options: Any) -> Sink:
    """``file:PATH`` -> ``FileSink``; ``amqp://…`` -> ``RabbitMQSink``."""
    if url.startswith(("amqp://", "amqps://")):
        from .rabbitmq import RabbitMQSink

        return RabbitMQSink(url, **options)
    if url.startswith("file:"):
        from .file import FileSink

        return FileSink(url[len("file:"):], **options)
    raise ValueError(f"unknown sink {url!r}: expected file:PATH or amqp://USER:PASS@HOST:PORT/VHOST")
