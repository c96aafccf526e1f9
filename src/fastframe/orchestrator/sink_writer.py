"""The sink writer: the one thread that touches the sink, committing in groups.

Sinks are blocking libraries (``os.write`` + ``fsync``, pika), so they live
on a thread of their own rather than on the event loop. The writer takes
every batch waiting, writes them, flushes once (group commit) and only then
reports the group stored; the orchestrator sends BATCH_RECV_SUCCESS on that
report and never before.
"""
from __future__ import annotations

import collections
import logging
import threading
from typing import Callable, Deque, FrozenSet, List, Optional, Sequence

from ..sinks import Sink, SinkError

__all__ = ["SinkWriter", "Done"]

log: logging.Logger = logging.getLogger("fastframe.orchestrator")

Done = Callable[[bool], None]
"""Told ``True`` once a batch is durable in the sink, ``False`` if it is not."""


class _Ticket:
    __slots__ = ("frame", "query_ids", "done")

    def __init__(self, frame: bytes, query_ids: Sequence[int], done: Done) -> None:
        self.frame = frame
        self.query_ids = query_ids
        self.done = done


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
        self._thread = threading.Thread(target=self._run, name="fastframe-sink", daemon=True)
        self._thread.start()

    def submit(self, frame: bytes, query_ids: Sequence[int], done: Done) -> None:
        """Queue ``frame`` for the sink; ``done(stored)`` is called once it is settled.

        Frames are written in the order submitted, so one connection's
        batches reach the sink in the order they arrived.
        """
        with self._ready:
            self._queue.append(_Ticket(frame, query_ids, done))
            self._ready.notify()

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
            # SinkError is the contract; anything else is a bug in the sink, and
            # must not end this thread: every connection waits on it.
            log.error("action: sink_write | result: fail | batches: %d | error: %s",
                      len(tickets) if failed is None else len(failed), error,
                      exc_info=not isinstance(error, SinkError))
        outcomes = [failed is not None and i not in failed for i in range(len(tickets))]
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
        with self._ready:
            self._queue.append(None)
            self._ready.notify()
        self._thread.join()
        self._sink.close()
