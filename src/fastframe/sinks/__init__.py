"""Where the orchestrator hands its DataBatch frames: the sink interface.

A sink is used from one thread only (the orchestrator's sink writer), so
implementations need no locking. The writes between two ``flush()`` calls
form a *round*; they are numbered 0, 1, 2, … in call order. The contract
that makes ACKs safe:

* ``write(frame, query_ids)`` hands over one whole DataBatch frame; the
  sink may keep a reference to ``frame`` until the round's flush returns.
  It raises ``SinkError`` when it cannot take the frame; then no write of
  the round may be ACKed (the sink may have rolled back to its last flush),
  and the caller ends the round with ``flush()``, whatever that reports.
* ``flush()`` returns only when every write of the round is durable (file:
  written, and fsynced per the policy; RabbitMQ: every copy confirmed by the
  broker). Otherwise it raises ``SinkError`` whose ``failed`` attribute says
  which writes may not be ACKed: ``None`` for all of them, or a frozenset of
  their round indices, in which case every other write of the round *is*
  durable and may be ACKed. Either way the round is over: the next write is
  number 0 of a new round.
* ``close()`` flushes what it can and releases the resource.

A sink that only ever raises a plain ``SinkError(message)`` keeps the old,
all-or-nothing meaning (``failed is None``).

A sink whose writes become durable somewhere else (a broker's confirms) may
also be a ``PipelinedSink``: then the orchestrator does not wait for one
group's flush before handing over the next frames, it sends each frame as it
comes and is told, frame by frame, when each is durable:

* ``send(frame, query_ids)`` hands over one frame and returns its number
  (0, 1, 2, … across the sink's life); ``SinkError`` when it cannot take it,
  and then that frame alone is not stored.
* ``settle(timeout)`` waits up to ``timeout`` seconds for sent frames to be
  settled and returns those settled since the last call, as ``(number,
  None)`` for a durable frame and ``(number, reason)`` for one that is not.
  It returns early, possibly with nothing, when ``wake()`` is called. Every
  sent frame is settled within a bound of the sink's own (RabbitMQ: its
  confirm timeout, plus reconnecting).
* ``wake()`` is the one method another thread may call.

A sink is used through one interface only: ``write``/``flush`` rounds or
``send``/``settle``.

``open_sink(url)`` builds a sink from the command line's ``--sink`` value:
``file:PATH`` (the default kind) or ``amqp://USER:PASS@HOST:PORT/VHOST``.
"""
from __future__ import annotations

from typing import AbstractSet, Any, FrozenSet, List, Optional, Protocol, Sequence, Tuple, runtime_checkable

__all__ = ["QUEUE_TYPES", "PipelinedSink", "Sink", "SinkError", "open_sink"]

# The RabbitMQ queue types the amqp sink and the consumer can declare.
QUEUE_TYPES = ("classic", "quorum")


class SinkError(Exception):
    """The sink could not take or make durable what it was handed.

    ``failed``: the round indices of the writes that are not durable, or
    ``None`` when none of the round's writes is (see the module doc).
    """

    def __init__(self, message: str, failed: Optional[AbstractSet[int]] = None) -> None:
        super().__init__(message)
        self.failed: Optional[FrozenSet[int]] = None if failed is None else frozenset(failed)


class Sink(Protocol):
    def write(self, frame: bytes, query_ids: Sequence[int]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class PipelinedSink(Sink, Protocol):
    def send(self, frame: bytes, query_ids: Sequence[int]) -> int: ...

    def settle(self, timeout: float) -> List[Tuple[int, Optional[str]]]: ...

    def wake(self) -> None: ...


def open_sink(url: str, **options: Any) -> Sink:
    """``file:PATH`` -> ``FileSink``; ``amqp://…`` -> ``RabbitMQSink``."""
    if url.startswith(("amqp://", "amqps://")):
        from .rabbitmq import RabbitMQSink

        return RabbitMQSink(url, **options)
    if url.startswith("file:"):
        from .file import FileSink

        return FileSink(url[len("file:"):], **options)
    raise ValueError(f"unknown sink {url!r}: expected file:PATH or amqp://USER:PASS@HOST:PORT/VHOST")
