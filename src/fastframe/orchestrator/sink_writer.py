"""The sink writer: the one thread that touches the sink.

Sinks are blocking libraries (``os.write`` + ``fsync``, pika), so they live
on a thread of their own rather than on the event loop. For a plain sink the
writer takes every batch waiting, writes them, flushes once (group commit)
and only then reports the group stored. A ``PipelinedSink`` (RabbitMQ) is
not waited on group by group: each batch is sent as soon as it is submitted,
while earlier ones await their confirms, and reported once it is settled.
Either way the reports come in submission order, and the orchestrator sends
BATCH_RECV_SUCCESS on a report and never before.
"""
from __future__ import annotations

import collections
import logging
import threading
from typing import Callable, Deque, Dict, FrozenSet, List, Optional, Sequence

from ..sinks import PipelinedSink, Sink, SinkError

__all__ = ["SinkWriter", "Done"]

log: logging.Logger = logging.getLogger("fastframe.orchestrator")

Done = Callable[[bool], None]
"""Told ``True`` once a batch is durable in the sink, ``False`` if it is not."""


# How long a pipelined writer waits in settle() before looking again; submit()
# wakes it sooner, so this only bounds how stale a missed wake-up can make it.
_SETTLE_WAIT = 1.0


class _Ticket:
    __slots__ = ("frame", "query_ids", "done", "ok")

    def __init__(self, frame: bytes, query_ids: Sequence[int], done: Done) -> None:
        self.frame = frame
        self.query_ids = query_ids
        self.done = done
        self.ok: Optional[bool] = None   # pipelined: set once the sink settled it


def _run_now(report: Callable[[], None]) -> None:
    report()


class SinkWriter:
    """Owns ``sink`` from its own thread; ``submit`` hands it batches in order.

    ``deliver`` runs each group's report: by default in the writer thread;
    the orchestrator passes ``loop.call_soon_threadsafe`` so that the
    ``done`` callbacks of a whole group run on the event loop, in one go.
    """

    def __init__(self, sink: Sink,
                 deliver: Callable[[Callable[[], None]], object] = _run_now) -> None:
        self._sink = sink
        self.deliver = deliver
        self._queue: Deque[Optional[_Ticket]] = collections.deque()
        self._ready = threading.Condition()
        self.frames_written: int = 0
        self.bytes_written: int = 0
        self._closed = False
        self._settling = False   # the writer may be waiting in the sink's settle()
        pipelined = isinstance(sink, PipelinedSink)
        self._thread = threading.Thread(target=self._run_pipelined if pipelined else self._run,
                                        name="fastframe-sink", daemon=True)
        self._thread.start()

    def submit(self, frame: bytes, query_ids: Sequence[int], done: Done) -> None:
        """Queue ``frame`` for the sink; ``done(stored)`` is called once it is settled.

        Frames are written in the order submitted, so one connection's
        batches reach the sink in the order they arrived.
        """
        self._put(_Ticket(frame, query_ids, done))

    def _put(self, item: Optional[_Ticket]) -> None:
        with self._ready:
            self._queue.append(item)
            self._ready.notify()
            wake = self._settling
        if wake:
            self._sink.wake()   # type: ignore[attr-defined]  # only set for a PipelinedSink

    def store(self, frame: bytes, query_ids: Sequence[int]) -> bool:
        """``submit`` and wait: ``True`` once durable, ``False`` if the sink failed.

        Only for callers on other threads than the one ``deliver`` runs on.
        """
        settled = threading.Event()
        outcome: List[bool] = []

        def done(ok: bool) -> None:
            outcome.append(ok)
            settled.set()

        self.submit(frame, query_ids, done)
        settled.wait()
        return outcome[0]

    def _take_all(self) -> List[Optional[_Ticket]]:
        with self._ready:
            while not self._queue:
                self._ready.wait()
            group = list(self._queue)
            self._queue.clear()
        return group

    def _run(self) -> None:
        while True:
            group = self._take_all()
            tickets = [t for t in group if t is not None]
            if tickets:
                self._commit(tickets)
            if len(tickets) < len(group):
                return

    def _run_pipelined(self) -> None:
        sink = self._sink
        assert isinstance(sink, PipelinedSink)
        unsettled: Dict[int, _Ticket] = {}   # by the sink's number
        unreported: Deque[_Ticket] = collections.deque()   # in submission order
        closing = False
        while not closing or unsettled:
            with self._ready:
                while not self._queue and not unsettled and not closing:
                    self._ready.wait()
                group = list(self._queue)
                self._queue.clear()
                self._settling = True
            for t in group:
                if t is None:
                    closing = True
                    continue
                unreported.append(t)
                try:
                    unsettled[sink.send(t.frame, t.query_ids)] = t
                except Exception as exc:
                    t.ok = False
                    self._log_failure(1, exc)
            if unsettled:
                self._settle(sink, unsettled)
            with self._ready:
                self._settling = False
            done: List[_Ticket] = []
            while unreported and unreported[0].ok is not None:
                done.append(unreported.popleft())
            if done:
                self._report(done, [t.ok is True for t in done])

    def _settle(self, sink: PipelinedSink, unsettled: Dict[int, _Ticket]) -> None:
        """Wait for the sink to settle some of ``unsettled``; mark and drop those."""
        try:
            settled = sink.settle(_SETTLE_WAIT)
        except Exception as exc:   # a bug in the sink: what it holds fails
            self._log_failure(len(unsettled), exc)
            for held in unsettled.values():
                held.ok = False
            unsettled.clear()
            return
        reasons: List[str] = []
        for number, reason in settled:
            t = unsettled.get(number)
            if t is None:   # failed already, when a settle() raised
                continue
            del unsettled[number]
            t.ok = reason is None
            if reason is not None:
                reasons.append(reason)
        if reasons:
            self._log_failure(len(reasons), SinkError("; ".join(sorted(set(reasons)))))

    def _log_failure(self, batches: int, error: Exception) -> None:
        # SinkError is the contract; anything else is a bug in the sink, and
        # must not end this thread: every connection waits on it.
        log.error("action: sink_write | result: fail | batches: %d | error: %s",
                  batches, error, exc_info=not isinstance(error, SinkError))

    def _commit(self, tickets: List[_Ticket]) -> None:
        # One round of the sink contract (sinks/__init__.py): write the group,
        # flush once; a failed write fails the whole round, a failed flush the
        # writes its SinkError.failed names (all of them when it names none).
        failed: Optional[FrozenSet[int]] = frozenset()
        error: Optional[Exception] = None
        try:
            for t in tickets:
                self._sink.write(t.frame, t.query_ids)
        except Exception as exc:
            failed, error = None, exc
        try:
            self._sink.flush()
        except SinkError as exc:
            if failed is not None:
                failed, error = exc.failed, exc
        except Exception as exc:
            failed, error = None, error or exc
        if error is not None:
            self._log_failure(len(tickets) if failed is None else len(failed), error)
        self._report(tickets, [failed is not None and i not in failed for i in range(len(tickets))])

    def _report(self, tickets: List[_Ticket], outcomes: List[bool]) -> None:
        for ok, t in zip(outcomes, tickets):
            if ok:
                self.frames_written += 1
                self.bytes_written += len(t.frame)
        dones = [t.done for t in tickets]

        def report() -> None:
            for done, ok in zip(dones, outcomes):
                done(ok)

        try:
            self.deliver(report)
        except Exception as exc:  # the loop is gone: nobody is waiting for the answers
            log.error("action: sink_report | result: fail | error: %s", exc)

    def close(self) -> None:
        """Store what is queued, stop the thread, close the sink (once)."""
        if self._closed:
            return
        self._closed = True
        self._put(None)
        self._thread.join()
        self._sink.close()
