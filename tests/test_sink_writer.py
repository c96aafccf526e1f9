"""The orchestrator's SinkWriter and the contracts of sinks/__init__.py: a flush
that names the writes it failed fails exactly those batches; a PipelinedSink is
sent each frame as it comes and its settled frames are reported in order."""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator, List, Optional, Sequence, Set, Tuple

from fastframe.orchestrator import SinkWriter
from fastframe.sinks import SinkError

JOIN_TIMEOUT = 10.0


class PartialSink:
    """Fails, at each flush, the writes of the round whose frame is in ``bad``;
    ``fail_all`` makes the flush fail the whole round (``failed=None``)."""

    def __init__(self, bad: Set[bytes], fail_all: bool = False,
                 refuse: Optional[bytes] = None) -> None:
        self.bad = bad
        self.fail_all = fail_all
        self.refuse = refuse
        self.round: List[bytes] = []
        self.rounds: List[List[bytes]] = []
        self.stored: List[bytes] = []
        self.refused_rounds: List[List[bytes]] = []
        self._refused = False

    def write(self, frame: bytes, query_ids: Sequence[int]) -> None:
        if frame == self.refuse:
            self._refused = True
            raise SinkError("refused")
        self.round.append(frame)

    def flush(self) -> None:
        written, self.round = self.round, []
        self.rounds.append(written)
        if self._refused:   # rolled back, as FileSink does
            self._refused = False
            self.refused_rounds.append(written)
            raise SinkError("a write was refused")
        if self.fail_all:
            raise SinkError("all of it")
        failed = {i for i, f in enumerate(written) if f in self.bad}
        self.stored += [f for i, f in enumerate(written) if i not in failed]
        if failed:
            raise SinkError("some of it", failed=failed)

    def close(self) -> None:
        pass


def store_together(writer: SinkWriter, frames: Sequence[bytes]) -> List[Tuple[bytes, bool]]:
    """Store ``frames`` from one thread each, released at once, so they form one group."""
    results: List[Tuple[bytes, bool]] = []
    start = threading.Barrier(len(frames))
    lock = threading.Lock()

    def one(frame: bytes) -> None:
        start.wait(JOIN_TIMEOUT)
        ok = writer.store(frame, (1,))
        with lock:
            results.append((frame, ok))

    threads = [threading.Thread(target=one, args=(f,)) for f in frames]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_TIMEOUT)
    assert not any(t.is_alive() for t in threads)
    return results


def test_a_flush_naming_some_writes_fails_exactly_those_batches():
    frames = [b"frame-%d" % i for i in range(6)]
    sink = PartialSink(bad={frames[1], frames[4]})
    writer = SinkWriter(sink)
    try:
        results = dict(store_together(writer, frames))
    finally:
        writer.close()
    assert results == {f: f not in sink.bad for f in frames}
    assert sorted(sink.stored) == sorted(f for f in frames if f not in sink.bad)
    assert writer.frames_written == 4


def test_a_flush_failing_the_whole_round_fails_every_batch_of_it():
    frames = [b"frame-%d" % i for i in range(4)]
    writer = SinkWriter(PartialSink(bad=set(), fail_all=True))
    try:
        results = store_together(writer, frames)
    finally:
        writer.close()
    assert sorted(results) == [(f, False) for f in frames]
    assert writer.frames_written == 0


def test_a_refused_write_fails_its_whole_round_and_only_that_round():
    frames = [b"frame-%d" % i for i in range(6)]
    sink = PartialSink(bad=set(), refuse=frames[3])
    writer = SinkWriter(sink)
    try:
        results = dict(store_together(writer, frames))
    finally:
        writer.close()
    assert len(sink.refused_rounds) == 1
    assert not results[frames[3]]
    for frame in sink.refused_rounds[0]:
        assert not results[frame]
    for frame in sink.stored:
        assert results[frame]
    assert sum(results.values()) == len(sink.stored) == writer.frames_written


# -- a PipelinedSink: sent as submitted, reported as settled, in order --------------------

class HeldSink:
    """A ``PipelinedSink`` whose frames settle only when the test releases them.

    ``settle`` ignores its timeout and waits for a release or ``wake()``, so a
    writer that did not wake it on submit would hang (and fail the test)."""

    def __init__(self, refuse: Optional[bytes] = None, broken_settles: int = 0) -> None:
        self.refuse = refuse
        self.broken_settles = broken_settles
        self.sent: List[bytes] = []
        self._released: List[Tuple[int, Optional[str]]] = []
        self._woken = False
        self._changed = threading.Condition()

    def send(self, frame: bytes, query_ids: Sequence[int]) -> int:
        if frame == self.refuse:
            raise SinkError("refused")
        with self._changed:
            self.sent.append(frame)
            self._changed.notify_all()
            return len(self.sent) - 1

    def settle(self, timeout: float) -> List[Tuple[int, Optional[str]]]:
        with self._changed:
            self._changed.wait_for(lambda: self._released or self._woken)
            if self.broken_settles:
                self.broken_settles -= 1
                raise RuntimeError("a bug in the sink")
            released, self._released, self._woken = self._released, [], False
            return released

    def wake(self) -> None:
        with self._changed:
            self._woken = True
            self._changed.notify_all()

    def release(self, frame: bytes, reason: Optional[str] = None) -> None:
        with self._changed:
            self._released.append((self.sent.index(frame), reason))
            self._changed.notify_all()

    def wait_sent(self, count: int) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.sent) >= count, JOIN_TIMEOUT), \
                f"only {self.sent} sent"

    def write(self, frame: bytes, query_ids: Sequence[int]) -> None:
        raise AssertionError("a PipelinedSink is used through send/settle")

    flush = write   # type: ignore[assignment]

    def close(self) -> None:
        pass


class Reports:
    """``done`` callbacks that record (frame, ok) in the order they are called."""

    def __init__(self) -> None:
        self.calls: List[Tuple[bytes, bool]] = []
        self._changed = threading.Condition()

    def done(self, frame: bytes):
        def report(ok: bool) -> None:
            with self._changed:
                self.calls.append((frame, ok))
                self._changed.notify_all()
        return report

    def wait(self, count: int) -> List[Tuple[bytes, bool]]:
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.calls) >= count, JOIN_TIMEOUT), \
                f"only {self.calls} reported"
            return list(self.calls)


@contextlib.contextmanager
def pipelined_writer(refuse: Optional[bytes] = None, broken_settles: int = 0
                     ) -> Iterator[Tuple[HeldSink, Reports, SinkWriter]]:
    """A ``SinkWriter`` on a ``HeldSink(refuse, broken_settles)``, a ``Reports`` for
    its callbacks; the writer is closed on the way out."""
    sink, reports = HeldSink(refuse, broken_settles), Reports()
    writer = SinkWriter(sink)
    try:
        yield sink, reports, writer
    finally:
        writer.close()


def test_a_pipelined_sink_gets_the_next_frames_before_the_first_is_settled():
    with pipelined_writer() as (sink, reports, writer):
        writer.submit(b"a", (1,), reports.done(b"a"))
        sink.wait_sent(1)
        writer.submit(b"b", (1,), reports.done(b"b"))
        writer.submit(b"c", (1,), reports.done(b"c"))
        sink.wait_sent(3)   # while "a" is still unconfirmed
        assert reports.calls == []
        for frame in (b"a", b"b", b"c"):
            sink.release(frame)
        assert reports.wait(3) == [(b"a", True), (b"b", True), (b"c", True)]
    assert writer.frames_written == 3


def test_pipelined_reports_come_in_submission_order_whatever_the_settle_order():
    frames = [b"frame-%d" % i for i in range(4)]
    with pipelined_writer() as (sink, reports, writer):
        for frame in frames:
            writer.submit(frame, (1,), reports.done(frame))
        sink.wait_sent(4)
        sink.release(frames[3])
        sink.release(frames[1], "nacked")
        sink.release(frames[2])
        sink.release(frames[0])
        assert reports.wait(4) == [(frames[0], True), (frames[1], False),
                                   (frames[2], True), (frames[3], True)]
    assert writer.frames_written == 3


def test_a_pipelined_send_refused_fails_only_its_own_batch():
    with pipelined_writer(refuse=b"bad") as (sink, reports, writer):
        for frame in (b"a", b"bad", b"c"):
            writer.submit(frame, (1,), reports.done(frame))
        sink.wait_sent(2)
        sink.release(b"a")
        sink.release(b"c")
        assert reports.wait(3) == [(b"a", True), (b"bad", False), (b"c", True)]


def test_a_pipelined_sink_whose_settle_raises_fails_what_it_holds_and_the_writer_goes_on():
    with pipelined_writer(broken_settles=1) as (sink, reports, writer):
        writer.submit(b"a", (1,), reports.done(b"a"))
        sink.wait_sent(1)
        sink.release(b"a")   # wakes the settle that raises
        assert reports.wait(1) == [(b"a", False)]
        writer.submit(b"b", (1,), reports.done(b"b"))
        sink.wait_sent(2)
        sink.release(b"a")   # the broken sink settles "a" late: ignored
        sink.release(b"b")
        assert reports.wait(2) == [(b"a", False), (b"b", True)]
    assert writer.frames_written == 1


def test_closing_a_pipelined_writer_waits_for_what_is_outstanding():
    with pipelined_writer() as (sink, reports, writer):
        writer.submit(b"a", (1,), reports.done(b"a"))
        sink.wait_sent(1)
        closing = threading.Thread(target=writer.close)
        closing.start()
        sink.release(b"a")
        closing.join(JOIN_TIMEOUT)
        assert not closing.is_alive()
        assert reports.calls == [(b"a", True)]
