"""The orchestrator's SinkWriter and the round contract of sinks/__init__.py: a
flush that names the writes it failed fails exactly those batches."""
from __future__ import annotations

import threading
from typing import List, Optional, Sequence, Set, Tuple

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
