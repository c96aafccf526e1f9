"""The file sink: whole frames back to back, torn tails, rollback on write failures."""
from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Callable, Dict, List

import pytest

import fastframe.sinks.file as file_module
from fastframe import codec
from fastframe.errors import ProtocolError
from fastframe.sinks import SinkError, open_sink
from fastframe.sinks.file import FileSink, read_frames


def databatch(n: int, rows: int = 3, width: int = 10) -> bytes:
    """DataBatch frame ``n``: a stores batch of ``rows`` rows, values ``width`` long."""
    table = codec.encode_table_frame(
        5, n, 0, [{"store_id": str(i), "store_name": "é" * width} for i in range(rows)],
        ("store_id", "store_name"))
    return codec.encode_databatch_frame([5], [3], 0, n, {}, 1, 0, table)


FRAMES = [databatch(1), databatch(2, rows=0), databatch(3, rows=2000, width=40), databatch(4)]


def all_frames(path: Path) -> List[bytes]:
    return list(read_frames(path))


class FakeOs:
    """``os`` for ``fastframe.sinks.file``, with some functions replaced."""

    def __init__(self, **replaced: Callable) -> None:
        self.__dict__.update(replaced)

    def __getattr__(self, name: str):
        return getattr(os, name)


@pytest.fixture
def fake_os(monkeypatch):
    """``fake_os(write=..., fsync=...)`` installs a ``FakeOs`` in the sink module."""
    def install(**replaced: Callable) -> FakeOs:
        fake = FakeOs(**replaced)
        monkeypatch.setattr(file_module, "os", fake)
        return fake
    return install


def fill(path: Path, frames: List[bytes], **options) -> None:
    sink = FileSink(path, **options)
    for frame in frames:
        sink.write(frame, [3])
    sink.close()


@pytest.mark.parametrize("fsync", ["always", "never"])
def test_frames_read_back_in_order(tmp_path, fsync):
    path = tmp_path / "sink.bin"
    sink = FileSink(path, fsync=fsync)
    sink.write(FRAMES[0], [3])
    sink.write(FRAMES[1], [3])
    sink.flush()
    assert all_frames(path) == FRAMES[:2]
    sink.write(FRAMES[2], [3])
    sink.flush()
    sink.close()
    fill(path, FRAMES[3:], fsync=fsync)  # a second sink appends
    assert all_frames(path) == FRAMES
    assert path.stat().st_size == sum(map(len, FRAMES))


def test_empty_file_has_no_frames(tmp_path):
    path = tmp_path / "sink.bin"
    FileSink(path).close()
    assert path.exists() and all_frames(path) == []


TORN = [
    pytest.param(lambda f: f[:1], id="1-header-byte"),
    pytest.param(lambda f: f[:4], id="4-header-bytes"),
    pytest.param(lambda f: f[:5], id="header-only"),
    pytest.param(lambda f: f[:len(f) // 2], id="half-body"),
    pytest.param(lambda f: f[:-1], id="one-byte-short"),
]


@pytest.mark.parametrize("cut", TORN)
def test_torn_last_frame_is_reported_after_the_whole_ones(tmp_path, cut):
    path = tmp_path / "sink.bin"
    path.write_bytes(b"".join(FRAMES[:3]) + cut(FRAMES[3]))
    got = []
    offset = sum(map(len, FRAMES[:3]))
    with pytest.raises(ProtocolError, match=f"torn frame at offset {offset}"):
        for frame in read_frames(path):
            got.append(frame)
    assert got == FRAMES[:3]


@pytest.mark.parametrize("cut", TORN)
def test_opening_a_torn_file_cuts_the_tail(tmp_path, caplog, cut):
    path = tmp_path / "sink.bin"
    tail = cut(FRAMES[3])
    path.write_bytes(b"".join(FRAMES[:3]) + tail)
    caplog.set_level(logging.WARNING, logger="fastframe.sinks.file")
    sink = FileSink(path)
    assert path.stat().st_size == sum(map(len, FRAMES[:3]))
    (record,) = [r for r in caplog.records if r.name == "fastframe.sinks.file"]
    assert record.levelno == logging.WARNING
    assert "torn_tail_cut" in record.getMessage()
    assert f"cut_bytes: {len(tail)}" in record.getMessage()
    sink.write(FRAMES[0], [3])
    sink.close()
    assert all_frames(path) == FRAMES[:3] + [FRAMES[0]]


@pytest.mark.parametrize("text", [
    pytest.param(b"these are somebody's notes, not frames\n" * 10, id="text"),
    pytest.param(b"\xff\0\0\0\0" + b"".join(FRAMES), id="garbage-first"),
    pytest.param(b"".join(FRAMES[:3]) + b"\xff\0\0\0\0", id="garbage-after-frames"),
])
def test_a_file_that_is_not_a_sink_is_refused_and_left_alone(tmp_path, text):
    # Only a torn frame (what a crash leaves) is ever cut; anything else may
    # be somebody's data or corruption to look at, so it is not touched.
    path = tmp_path / "notes.txt"
    path.write_bytes(text)
    with pytest.raises(SinkError, match="is not a fastframe sink file"):
        FileSink(path)
    assert path.read_bytes() == text
    with pytest.raises(ProtocolError, match="not a frame at offset") as info:
        all_frames(path)
    assert not isinstance(info.value, file_module.TornFrameError)


def test_opening_a_whole_file_cuts_nothing(tmp_path, caplog):
    path = tmp_path / "sink.bin"
    fill(path, FRAMES)
    caplog.set_level(logging.WARNING, logger="fastframe.sinks.file")
    FileSink(path).close()
    assert all_frames(path) == FRAMES and not caplog.records


def _failing_write(calls: Dict[str, int], fail_at_call: int = 0, budget: int = -1):
    """``os.write`` raising ENOSPC at call ``fail_at_call`` or once ``budget`` bytes are out."""
    def write(fd, data):
        calls["n"] += 1
        if calls["n"] == fail_at_call or budget == 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        if budget > 0:
            left = budget - calls["bytes"]
            if left <= 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            data = data[:left]
        written = os.write(fd, data)
        calls["bytes"] += written
        return written
    return write


@pytest.mark.parametrize("failure", [
    pytest.param(dict(budget=10), id="after-10-bytes"),
    pytest.param(dict(budget=len(FRAMES[2]) - 1), id="one-byte-short"),
    pytest.param(dict(fail_at_call=1), id="first-call"),
    pytest.param(dict(fail_at_call=2), id="second-call"),
])
def test_write_failure_rolls_back_to_the_last_flush(tmp_path, fake_os, failure):
    path = tmp_path / "sink.bin"
    sink = FileSink(path, fsync="never")
    sink.write(FRAMES[0], [3])
    sink.flush()
    durable = path.read_bytes()
    calls = {"n": 0, "bytes": 0}
    fake_os(write=_failing_write(calls, **failure))
    with pytest.raises(SinkError, match=str(path)) as info:
        sink.write(FRAMES[1], [3])  # unflushed: rolled back too
        sink.write(FRAMES[2], [3])
    assert info.value.__cause__.errno == errno.ENOSPC
    assert path.read_bytes() == durable
    # The sink stays usable: the next frames go right after the last flush.
    fake_os()
    sink.write(FRAMES[3], [3])
    sink.close()
    assert all_frames(path) == [FRAMES[0], FRAMES[3]]


def test_short_writes_are_completed(tmp_path, fake_os):
    path = tmp_path / "sink.bin"
    fake_os(write=lambda fd, data: os.write(fd, data[:7]))
    fill(path, FRAMES)
    assert all_frames(path) == FRAMES


def test_flush_failure_rolls_back_to_the_last_flush(tmp_path, fake_os):
    path = tmp_path / "sink.bin"
    sink = FileSink(path, fsync="always")
    sink.write(FRAMES[0], [3])
    sink.flush()

    def fsync(fd):
        raise OSError(errno.EIO, "I/O error")

    fake_os(fsync=fsync)
    sink.write(FRAMES[1], [3])
    with pytest.raises(SinkError, match="cannot flush"):
        sink.flush()
    assert all_frames(path) == [FRAMES[0]]
    fake_os()
    sink.write(FRAMES[2], [3])
    sink.close()
    assert all_frames(path) == [FRAMES[0], FRAMES[2]]


@pytest.mark.parametrize("policy, expected", [("always", 3), ("never", 0)])
def test_fsync_policy(tmp_path, fake_os, policy, expected):
    synced = []
    fake_os(fsync=lambda fd: synced.append(fd))
    sink = FileSink(tmp_path / "sink.bin", fsync=policy)
    sink.write(FRAMES[0], [3])
    sink.flush()
    sink.write(FRAMES[1], [3])
    sink.flush()
    sink.close()  # flushes once more
    assert len(synced) == expected


@pytest.mark.parametrize("policy", ["sometimes", "", "ALWAYS", None])
def test_invalid_fsync_policy(tmp_path, policy):
    with pytest.raises(ValueError, match="fsync"):
        FileSink(tmp_path / "sink.bin", fsync=policy)
    with pytest.raises(ValueError, match="fsync"):
        open_sink(f"file:{tmp_path / 'sink.bin'}", fsync=policy)
    assert not (tmp_path / "sink.bin").exists()


def test_close_is_idempotent(tmp_path):
    path = tmp_path / "sink.bin"
    sink = FileSink(path)
    sink.write(FRAMES[0], [3])
    sink.close()
    sink.close()
    assert all_frames(path) == [FRAMES[0]]


def test_open_sink_file_url(tmp_path):
    path = tmp_path / "out.bin"
    sink = open_sink(f"file:{path}", fsync="never")
    assert isinstance(sink, FileSink) and sink.path == str(path)
    sink.write(FRAMES[0], [3])
    sink.close()
    assert all_frames(path) == [FRAMES[0]]


@pytest.mark.parametrize("url", ["bogus", "", "/tmp/x.bin", "File:x", "rabbit://h"])
def test_open_sink_unknown_kind(url):
    with pytest.raises(ValueError, match="unknown sink"):
        open_sink(url)
