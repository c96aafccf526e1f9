"""``FrameReader`` (blocking sockets, ``recv_into``) and ``FrameDecoder`` (sans-IO), §2.

Both must give exactly what ``recv_msg`` gives for the same bytes, however the
bytes are cut into reads, refuse an oversized frame from its header before
reserving room for it, and tell a clean close from a close inside a frame.
"""
from __future__ import annotations

import random
import re
import socket
import struct
import threading
import time
from typing import Callable, Iterable, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastframe import (
    BatchRecvSuccess, EOFMessage, Finished, FrameDecoder, FrameReader, NewTransactionItems,
    NewUsers, ProtocolError, RawTransactionItem, RawUser, decode_frame, recv_msg,
)
from fastframe.schema import DEFAULT_MAX_FRAME, MAX_BATCH_FRAME
from wire import eof_body, frame, sample_rows, split_frames, table_body

FINISHED_7 = b"\x03\x04\x00\x00\x00\x07\x00\x00\x00"


# The capture (``sample_c2s``, conftest.py) comes through fixtures, read once
# and only by the tests that ask for it.
@pytest.fixture(scope="module")
def sample_split(sample_c2s) -> List[Tuple[int, bytes]]:
    return split_frames(sample_c2s)


@pytest.fixture(scope="module")
def sample_frames(sample_split) -> List[bytes]:
    frames = [frame(op, body) for op, body in sample_split]
    assert len(frames) == 11
    return frames


def recv_msg_all(data: bytes) -> list:
    """The reference: every message in ``data`` read with ``recv_msg`` from a real socket."""
    peer, sock = socket.socketpair()
    sock.settimeout(5)
    try:
        peer.sendall(data)
        peer.shutdown(socket.SHUT_WR)
        messages = []
        while True:
            try:
                messages.append(recv_msg(sock))
            except EOFError:
                return messages
    finally:
        peer.close()
        sock.close()


@pytest.fixture
def expected(codec, sample_c2s) -> list:
    messages = recv_msg_all(sample_c2s)
    assert len(messages) == 11
    return messages


# -- fake sockets ------------------------------------------------------------------

Chunker = Callable[[], int]


def whole() -> Chunker:
    return lambda: 1 << 62


def one_byte() -> Chunker:
    return lambda: 1


def random_chunks(seed: int, high: int = 700) -> Chunker:
    rng = random.Random(seed)
    return lambda: rng.randint(1, high)


def listed(sizes: Iterable[int]) -> Chunker:
    it = iter(sizes)
    return lambda: next(it, 1 << 62)


class FakeSocket:
    """``recv_into`` from ``data``, each call delivering at most the chunker's next size.

    At the end it returns 0 (a clean close) unless ``hang`` is set, in which
    case a further read is a test failure (a real socket would block).
    """

    def __init__(self, data: bytes, chunker: Optional[Chunker] = None, hang: bool = False):
        self.data = memoryview(bytes(data))
        self.pos = 0
        self.chunker = chunker or whole()
        self.hang = hang
        self.calls = 0
        self.asked: List[int] = []

    def recv_into(self, buf, nbytes: int = 0) -> int:
        self.calls += 1
        size = len(buf) if nbytes == 0 else min(nbytes, len(buf))
        self.asked.append(size)
        assert size > 0, "recv_into with no room: a real socket would return 0, like a close"
        left = len(self.data) - self.pos
        if left == 0 and self.hang:
            raise AssertionError("read past the data: a real socket would block here")
        n = min(size, left, self.chunker())
        buf[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n


CHUNKINGS = [
    pytest.param(whole, id="one-chunk"),
    pytest.param(one_byte, id="one-byte"),
    pytest.param(lambda: random_chunks(1), id="random-1"),
    pytest.param(lambda: random_chunks(2, 40), id="random-small"),
    pytest.param(lambda: random_chunks(3, 5000), id="random-large"),
]


def read_all_frames(reader: FrameReader) -> List[Tuple[int, bytes]]:
    frames = []
    while True:
        got = reader.read_frame()
        if got is None:
            return frames
        opcode, body = got
        assert isinstance(body, memoryview)
        frames.append((opcode, bytes(body)))


# -- FrameReader ---------------------------------------------------------------------

def test_reader_many_frames_in_one_recv(codec, sample_c2s, sample_split):
    sock = FakeSocket(sample_c2s)
    reader = FrameReader(sock)
    frames = []
    for _ in range(11):
        opcode, body = reader.read_frame()
        frames.append((opcode, bytes(body)))  # a body is valid until the next call
    assert frames == sample_split
    assert sock.calls == 1  # 11 frames, one recv_into: never one call per frame or field
    assert reader.read_frame() is None
    assert sock.calls == 2
    assert reader.read_frame() is None


@pytest.mark.parametrize("buffer_size", [16, 1024, 256 * 1024])
@pytest.mark.parametrize("chunker", CHUNKINGS)
def test_reader_frames_however_the_stream_is_cut(codec, sample_c2s, sample_split, chunker,
                                                  buffer_size):
    sock = FakeSocket(sample_c2s, chunker())
    frames = read_all_frames(FrameReader(sock, buffer_size=buffer_size))
    assert frames == sample_split


@pytest.mark.parametrize("buffer_size", [16, 256 * 1024])
@pytest.mark.parametrize("chunker", CHUNKINGS)
def test_reader_messages_equal_recv_msg(codec, sample_c2s, expected, chunker, buffer_size):
    reader = FrameReader(FakeSocket(sample_c2s, chunker()), buffer_size=buffer_size)
    messages = []
    while (msg := reader.read_message()) is not None:
        messages.append(msg)
    assert messages == expected


def test_reader_one_byte_at_a_time_calls(codec, sample_c2s, sample_split):
    sock = FakeSocket(sample_c2s, one_byte())
    assert read_all_frames(FrameReader(sock)) == sample_split
    assert sock.calls == len(sample_c2s) + 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reader_one_recv_into_per_chunk(codec, sample_c2s, sample_split, seed):
    rng = random.Random(seed)
    sizes = []
    while sum(sizes) < len(sample_c2s):
        sizes.append(rng.randint(1, 2000))
    sock = FakeSocket(sample_c2s, listed(sizes))
    assert read_all_frames(FrameReader(sock)) == sample_split
    assert sock.calls == len(sizes) + 1  # every chunk, then the close


def test_reader_iterates_frames(codec, sample_c2s, sample_split):
    reader = FrameReader(FakeSocket(sample_c2s, random_chunks(7)))
    assert [(op, bytes(body)) for op, body in reader] == sample_split


def test_reader_over_a_real_socket(codec, sample_c2s, sample_split, expected):
    peer, sock = socket.socketpair()
    sock.settimeout(5)
    try:
        peer.sendall(sample_c2s + sample_c2s)
        peer.shutdown(socket.SHUT_WR)
        reader = FrameReader(sock, buffer_size=64)
        assert [reader.read_message() for _ in range(11)] == expected
        assert read_all_frames(reader) == sample_split
        assert reader.read_frame() is None
    finally:
        peer.close()
        sock.close()


_ALPHABET = "abcdefghijklmnopqrstuvwxyz"


def _big_frames(codec) -> List[bytes]:
    """Three table frames of exactly 1 MiB (the client limit), each with other content."""
    frames = []
    for i, (cls, row_class) in enumerate([(NewUsers, RawUser), (NewTransactionItems,
                                                                  RawTransactionItem),
                                          (NewUsers, RawUser)]):
        row = {k: f"{k}{i}" for k in row_class._fields}
        pad = row_class._fields[1]
        small = cls(rows=[row_class(**row)]).to_bytes()
        n = MAX_BATCH_FRAME - len(small) + len(row[pad])
        row[pad] = (_ALPHABET * (n // 26 + 2))[i:i + n]
        data = cls(rows=[row_class(**row)], batch_number=i).to_bytes()
        assert len(data) == MAX_BATCH_FRAME
        frames.append(data)
    return frames


@pytest.mark.parametrize("chunker", [
    pytest.param(whole, id="one-chunk"),
    pytest.param(lambda: random_chunks(5, 100_000), id="random"),
])
def test_reader_frames_larger_than_its_buffer(codec, sample_frames, chunker):
    big = _big_frames(codec)
    stream = FINISHED_7 + big[0] + sample_frames[2] + big[1] + big[2] + FINISHED_7
    reader = FrameReader(FakeSocket(stream, chunker()), buffer_size=16)
    assert len(reader._buf.data) == 16
    assert read_all_frames(reader) == split_frames(stream)
    assert len(reader._buf.data) >= MAX_BATCH_FRAME  # it grew to hold a whole frame


def test_reader_big_frames_decode(codec):
    big = _big_frames(codec)
    reader = FrameReader(FakeSocket(b"".join(big), random_chunks(6, 300_000)), buffer_size=16)
    assert [reader.read_message() for _ in big] == [decode_frame(f) for f in big]
    assert reader.read_message() is None


def test_reader_clean_close_before_any_frame(codec):
    sock = FakeSocket(b"")
    reader = FrameReader(sock)
    assert reader.read_frame() is None
    assert reader.read_message() is None
    assert list(reader) == []


# A cut is counted from the end of the first frame, or if negative from the end
# of the capture: the data is a fixture, so its lengths are unknown here.
@pytest.mark.parametrize("cut", [
    pytest.param(1, id="inside-header"),
    pytest.param(4, id="header-less-one"),
    pytest.param(5, id="header-only"),
    pytest.param(40, id="inside-body"),
    pytest.param(-1, id="last-byte-missing"),
])
@pytest.mark.parametrize("chunker", [pytest.param(whole, id="one-chunk"),
                                     pytest.param(one_byte, id="one-byte")])
def test_reader_close_inside_a_frame(codec, sample_c2s, sample_frames, cut, chunker):
    cut = len(sample_c2s) + cut if cut < 0 else len(sample_frames[0]) + cut
    data = sample_c2s[:cut]
    complete = split_frames(b"".join(sample_frames[:_frames_before(sample_frames, cut)]))
    reader = FrameReader(FakeSocket(data, chunker()), buffer_size=32)
    for want in complete:
        opcode, body = reader.read_frame()
        assert (opcode, bytes(body)) == want
    with pytest.raises(EOFError):
        reader.read_frame()


def _frames_before(frames: List[bytes], cut: int) -> int:
    total, n = 0, 0
    for f in frames:
        if total + len(f) > cut:
            return n
        total += len(f)
        n += 1
    return n


BAD_HEADERS = [
    pytest.param(struct.pack("<Bi", 10, 0), None, id="opcode-10"),
    pytest.param(struct.pack("<Bi", 255, 4), None, id="opcode-255"),
    pytest.param(struct.pack("<Bi", 4, -1), None, id="negative-length"),
    pytest.param(struct.pack("<Bi", 7, -2**31), None, id="most-negative-length"),
    pytest.param(struct.pack("<Bi", 4, 2**31 - 1), None, id="length-2**31-1"),
    pytest.param(struct.pack("<Bi", 0, DEFAULT_MAX_FRAME + 1), None, id="over-default-max"),
    pytest.param(struct.pack("<Bi", 5, 2001), 2000, id="over-custom-max"),
]


@pytest.mark.parametrize("header,max_frame", BAD_HEADERS)
@pytest.mark.parametrize("chunker", [pytest.param(whole, id="one-chunk"),
                                     pytest.param(one_byte, id="one-byte")])
def test_reader_bad_header(codec, sample_split, sample_frames, header, max_frame, chunker):
    stream = sample_frames[0] + sample_frames[1] + header + bytes(64) + FINISHED_7
    kwargs = {} if max_frame is None else {"max_frame": max_frame}
    reader = FrameReader(FakeSocket(stream, chunker()), **kwargs)
    assert [(op, bytes(b)) for op, b in (reader.read_frame(), reader.read_frame())] == \
        sample_split[:2]
    with pytest.raises(ProtocolError) as info:
        reader.read_frame()
    assert info.value.opcode == header[0]
    with pytest.raises(ProtocolError):  # the stream cannot be resynchronised
        reader.read_frame()


@pytest.mark.parametrize("length,max_frame", [
    (2**31 - 1, DEFAULT_MAX_FRAME), (DEFAULT_MAX_FRAME + 1, DEFAULT_MAX_FRAME), (1001, 1000),
    (1, 0),
])
@pytest.mark.parametrize("chunker,calls", [pytest.param(whole, 1, id="one-chunk"),
                                           pytest.param(one_byte, 5, id="one-byte")])
def test_reader_refuses_an_oversized_frame_before_allocating(codec, length, max_frame, chunker,
                                                             calls):
    # Only the header exists: reading on for the body would hit the fake's "hang".
    sock = FakeSocket(struct.pack("<Bi", 4, length), chunker(), hang=True)
    reader = FrameReader(sock, max_frame=max_frame, buffer_size=16)
    assert reader.max_frame == max_frame
    with pytest.raises(ProtocolError) as info:
        reader.read_frame()
    assert info.value.opcode == 4
    assert sock.calls == calls
    assert len(reader._buf.data) == 16  # nothing was reserved for the body


def test_reader_accepts_a_frame_of_exactly_max_frame(codec, sample_split, sample_frames):
    data = sample_frames[4]
    reader = FrameReader(FakeSocket(data + FINISHED_7), max_frame=len(data) - 5)
    opcode, body = reader.read_frame()
    assert (opcode, bytes(body)) == sample_split[4]
    assert reader.read_message() == Finished(7)


def test_reader_memoryview_bodies(codec, sample_split, sample_frames):
    stream = b"\x01\x00\x00\x00\x00" + sample_frames[10] + sample_frames[0]
    reader = FrameReader(FakeSocket(stream))
    opcode, body = reader.read_frame()
    assert (opcode, type(body), len(body)) == (1, memoryview, 0)
    opcode, body = reader.read_frame()
    assert (opcode, body.tobytes()) == (3, b"\x01\x00\x00\x00")
    assert body.cast("B")[0] == 1
    opcode, body = reader.read_frame()
    assert body.nbytes == len(sample_split[0][1])
    assert body == sample_split[0][1]


@pytest.fixture
def socket_pair():
    peer, sock = socket.socketpair()
    yield peer, sock
    peer.close()
    sock.close()


def test_reader_timeouts_do_not_disturb_a_prompt_stream(codec, sample_c2s, expected,
                                                        socket_pair):
    peer, sock = socket_pair
    peer.sendall(sample_c2s)
    peer.shutdown(socket.SHUT_WR)
    reader = FrameReader(sock, buffer_size=64, idle_timeout=0.5, frame_timeout=0.5)
    assert [reader.read_message() for _ in range(11)] == expected
    assert reader.read_frame() is None


@pytest.mark.parametrize("sent", [b"", FINISHED_7 + FINISHED_7[:3]], ids=["nothing", "partial"])
def test_reader_idle_timeout(codec, socket_pair, sent):
    peer, sock = socket_pair
    peer.sendall(sent)
    reader = FrameReader(sock, idle_timeout=0.2)
    if sent:
        assert reader.read_message() == Finished(7)
    started = time.monotonic()
    with pytest.raises(socket.timeout):
        reader.read_frame()
    assert 0.15 <= time.monotonic() - started < 2.0


def test_reader_frame_timeout_against_a_trickling_peer(codec, sample_frames, socket_pair):
    peer, sock = socket_pair
    data = sample_frames[0]
    stop = threading.Event()

    def trickle() -> None:  # one byte every 20 ms: never idle, never done
        for i in range(len(data)):
            if stop.wait(0.02):
                return
            peer.sendall(data[i:i + 1])

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        reader = FrameReader(sock, idle_timeout=1.0, frame_timeout=0.3)
        started = time.monotonic()
        with pytest.raises(socket.timeout):
            reader.read_frame()
        assert 0.25 <= time.monotonic() - started < 2.0
    finally:
        stop.set()
        thread.join(5)


# -- FrameDecoder --------------------------------------------------------------------

def cuts_to_pieces(data: bytes, cuts: Iterable[int]) -> List[bytes]:
    bounds = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def random_pieces(data: bytes, seed: int, high: int = 300) -> List[bytes]:
    rng = random.Random(seed)
    pieces, pos = [], 0
    while pos < len(data):
        n = rng.randint(1, high)
        pieces.append(data[pos:pos + n])
        pos += n
    return pieces


def feed_all(decoder: FrameDecoder, pieces: Iterable) -> list:
    out = []
    for piece in pieces:
        out.extend(decoder.feed(piece))
    return out


FEEDS = [
    pytest.param(lambda d: [d], id="whole"),
    pytest.param(lambda d: [d[i:i + 1] for i in range(len(d))], id="byte-by-byte"),
    pytest.param(lambda d: random_pieces(d, 1), id="random-1"),
    pytest.param(lambda d: random_pieces(d, 2, 10), id="random-small"),
    pytest.param(lambda d: [memoryview(p) for p in random_pieces(d, 3)], id="memoryviews"),
    pytest.param(lambda d: [bytearray(p) for p in random_pieces(d, 4)], id="bytearrays"),
    pytest.param(lambda d: [b""] + [d[:7], b"", d[7:]] + [b""], id="empty-pieces"),
]


@pytest.mark.parametrize("split", FEEDS)
def test_decoder_feeds_equal_recv_msg(codec, sample_c2s, expected, split):
    decoder = FrameDecoder()
    assert feed_all(decoder, split(sample_c2s)) == expected
    assert decoder.pending == 0
    assert decoder.feed(b"") == []


def test_decoder_returns_each_message_as_soon_as_it_is_complete(codec, sample_frames, expected):
    decoder = FrameDecoder()
    for data, msg in zip(sample_frames, expected):
        assert decoder.feed(data[:-1]) == []
        assert decoder.pending == len(data) - 1
        assert decoder.feed(data[-1:]) == [msg]
        assert decoder.pending == 0


@pytest.mark.parametrize("split", FEEDS)
def test_decoder_frames_raw(codec, sample_c2s, sample_split, split):
    decoder = FrameDecoder()
    frames = []
    for piece in split(sample_c2s):
        frames.extend(decoder.frames(piece))
    assert frames == sample_split
    assert all(type(body) is bytes for _, body in frames)
    assert decoder.pending == 0


def test_decoder_pending(codec, sample_frames):
    decoder = FrameDecoder()
    assert decoder.pending == 0
    assert decoder.feed(sample_frames[0] + sample_frames[1][:3]) != []
    assert decoder.pending == 3
    assert decoder.feed(sample_frames[1][3:20]) == []
    assert decoder.pending == 20
    assert len(decoder.feed(sample_frames[1][20:] + sample_frames[2])) == 2
    assert decoder.pending == 0
    assert list(decoder.frames(FINISHED_7[:5])) == []
    assert decoder.pending == 5


def test_decoder_row_type(codec, sample_frames):
    rows = FrameDecoder(row_type="dict").feed(sample_frames[0])[0].rows
    assert rows[0] == {"product_id": "1", "name": "Espresso", "category": "coffee",
                       "price": "6.0", "is_seasonal": "False", "available_from": "",
                       "available_to": ""}


def _bad_table_key(codec) -> bytes:
    row = sample_rows(NewUsers.table, 1)[0]
    pairs = [("email" if k == "gender" else k, v) for k, v in row.items()]
    return frame(8, table_body(codec, [row, pairs]))


INVALID_FRAMES = [
    pytest.param(_bad_table_key, 8, id="table-bad-key"),
    pytest.param(lambda c: frame(8, table_body(c, sample_rows(NewUsers.table, 2), status=7)), 8,
                 id="table-bad-status"),
    pytest.param(lambda c: frame(9, eof_body(c, "vouchers")), 9, id="eof-unknown-table"),
    pytest.param(lambda c: frame(3, b"\x00" * 5), 3, id="finished-5-bytes"),
    pytest.param(lambda c: frame(1, b"\x00"), 1, id="ack-with-body"),
    pytest.param(lambda c: frame(0, b"\x00\x00"), 0, id="databatch-truncated"),
]


@pytest.mark.parametrize("build,opcode", INVALID_FRAMES)
def test_decoder_invalid_frame_in_the_middle(codec, sample_frames, expected, build, opcode):
    stream = b"".join(sample_frames[:3]) + build(codec) + b"".join(sample_frames[3:])
    decoder = FrameDecoder()
    assert decoder.feed(stream) == expected[:3]  # the three completed before it
    with pytest.raises(ProtocolError) as info:
        decoder.feed(b"")
    assert info.value.opcode == opcode
    assert info.value.fatal is False  # delimited and consumed: the stream goes on
    assert decoder.feed(b"") == expected[3:]  # every message after it, at once
    assert decoder.feed(b"") == []
    assert decoder.pending == 0


@pytest.mark.parametrize("build,opcode", INVALID_FRAMES)
def test_decoder_invalid_frame_first_raises_then_gives_the_rest_at_once(codec, sample_frames,
                                                                        expected, build, opcode):
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError) as info:
        decoder.feed(build(codec) + b"".join(sample_frames))
    assert (info.value.opcode, info.value.fatal) == (opcode, False)
    assert decoder.feed(b"") == expected


@pytest.mark.parametrize("build,opcode", INVALID_FRAMES)
def test_decoder_data_fed_with_the_held_error_is_kept(codec, sample_frames, expected, build,
                                                      opcode):
    decoder = FrameDecoder()
    assert decoder.feed(sample_frames[0] + build(codec)) == expected[:1]
    with pytest.raises(ProtocolError):
        decoder.feed(b"".join(sample_frames[1:]))  # raises the error, keeps these bytes
    assert decoder.feed(b"") == expected[1:]


@pytest.mark.parametrize("build,opcode", INVALID_FRAMES)
@pytest.mark.parametrize("seed", [0, 1])
def test_decoder_invalid_frame_raises_once_whatever_the_pieces(codec, sample_frames, expected,
                                                               build, opcode, seed):
    stream = b"".join(sample_frames[:5]) + build(codec) + b"".join(sample_frames[5:])
    decoder = FrameDecoder()
    got, errors = [], []
    for piece in random_pieces(stream, seed, 60) + [b""]:
        try:
            got.extend(decoder.feed(piece))
        except ProtocolError as exc:
            errors.append(exc.opcode)
    assert errors == [opcode]
    assert got == expected


def test_decoder_two_invalid_frames_back_to_back(codec, sample_frames, expected):
    bad = frame(3, b"") + frame(2, b"xy")
    decoder = FrameDecoder()
    stream = b"".join(sample_frames[:2]) + bad + b"".join(sample_frames[2:])
    assert decoder.feed(stream) == expected[:2]
    with pytest.raises(ProtocolError) as first:
        decoder.feed(b"")
    with pytest.raises(ProtocolError) as second:
        decoder.feed(b"")
    assert (first.value.opcode, second.value.opcode) == (3, 2)
    assert not first.value.fatal and not second.value.fatal
    assert decoder.feed(b"") == expected[2:]


@pytest.mark.parametrize("header", [
    pytest.param(struct.pack("<Bi", 12, 0), id="unknown-opcode"),
    pytest.param(struct.pack("<Bi", 6, -3), id="negative-length"),
    pytest.param(struct.pack("<Bi", 4, 2**31 - 1), id="over-max-frame"),
])
@pytest.mark.parametrize("whole_feed", [True, False], ids=["whole", "byte-by-byte"])
def test_decoder_undelimitable_header_raises_on_every_later_feed(codec, sample_frames, expected,
                                                                 header, whole_feed):
    head = b"".join(sample_frames[:2])
    stream = head + header + b"".join(sample_frames[2:])
    decoder = FrameDecoder()
    if whole_feed:
        # The two messages before the bad header are not lost with it.
        assert decoder.feed(stream) == expected[:2]
        with pytest.raises(ProtocolError) as info:
            decoder.feed(b"")
    else:
        assert feed_all(decoder, [head[i:i + 1] for i in range(len(head))]) == expected[:2]
        for i in range(len(head), len(head) + 4):
            assert decoder.feed(stream[i:i + 1]) == []
        with pytest.raises(ProtocolError) as info:
            decoder.feed(stream[len(head) + 4:])
    assert info.value.fatal is True
    for more in (b"", FINISHED_7, sample_frames[0]):
        with pytest.raises(ProtocolError) as info:
            decoder.feed(more)
        assert info.value.opcode == header[0]
        assert info.value.fatal is True
    with pytest.raises(ProtocolError):
        list(decoder.frames(b""))


@pytest.mark.parametrize("length,max_frame", [(2**31 - 1, DEFAULT_MAX_FRAME), (1001, 1000)])
def test_decoder_refuses_an_oversized_frame_before_allocating(codec, length, max_frame):
    decoder = FrameDecoder(max_frame=max_frame)
    size = len(decoder._buf.data)
    with pytest.raises(ProtocolError) as info:
        decoder.feed(struct.pack("<Bi", 7, length) + bytes(100))
    assert info.value.opcode == 7
    assert len(decoder._buf.data) == size


def test_decoder_max_frame_boundary(codec, sample_frames):
    data = sample_frames[1]
    assert FrameDecoder(max_frame=len(data) - 5).feed(data) == [EOFMessage(0, "menu_items")]
    with pytest.raises(ProtocolError):
        FrameDecoder(max_frame=len(data) - 6).feed(data)


@pytest.mark.parametrize("piece", [4096, 65536, 1 << 21])
def test_decoder_frames_larger_than_its_buffer(codec, piece):
    big = _big_frames(codec)
    stream = FINISHED_7 + big[0] + b"\x01\x00\x00\x00\x00" + big[1] + big[2]
    decoder = FrameDecoder()
    got = feed_all(decoder, [stream[i:i + piece] for i in range(0, len(stream), piece)])
    assert got == [Finished(7), decode_frame(big[0]), BatchRecvSuccess(), decode_frame(big[1]),
                   decode_frame(big[2])]
    assert decoder.pending == 0


# -- ProtocolError.fatal: is the stream still aligned? ----------------------------------

UNDELIMITABLE_HEADERS = [
    pytest.param(b"\x07\x00\x00", "truncated: need 5 bytes at offset 0, have 3", None,
                 id="short"),
    pytest.param(struct.pack("<Bi", 10, 0), "unknown opcode 10", 10, id="unknown-opcode"),
    pytest.param(struct.pack("<Bi", 255, 0), "unknown opcode 255", 255, id="opcode-255"),
    pytest.param(struct.pack("<Bi", 7, -1), "negative frame length -1", 7, id="negative"),
    pytest.param(struct.pack("<Bi", 7, 1001), "frame length 1001 exceeds the limit of 1000 bytes",
                 7, id="over-limit"),
]


@pytest.mark.parametrize("header,message,opcode", UNDELIMITABLE_HEADERS)
def test_header_errors_are_fatal(codec, header, message, opcode):
    with pytest.raises(ProtocolError) as info:
        codec.read_frame_header(header, 0, 1000)
    assert (info.value.message, info.value.opcode, info.value.fatal) == (message, opcode, True)


@pytest.mark.parametrize("build,opcode", INVALID_FRAMES)
def test_body_errors_are_not_fatal_whichever_reader(codec, build, opcode):
    data = build(codec)
    errors = []
    for read in (decode_frame, lambda d: FrameDecoder().feed(d),
                 lambda d: FrameReader(FakeSocket(d)).read_message(), recv_msg_all):
        with pytest.raises(ProtocolError) as info:
            read(data)
        errors.append((info.value.opcode, info.value.fatal))
    assert errors == [(opcode, False)] * 4


@pytest.mark.parametrize("header,message,opcode", UNDELIMITABLE_HEADERS[1:])
def test_header_errors_are_fatal_whichever_reader(codec, header, message, opcode):
    data = header + bytes(2000)
    for read in (lambda d: decode_frame(d, 1000), lambda d: FrameDecoder(1000).feed(d),
                 lambda d: FrameReader(FakeSocket(d), max_frame=1000).read_frame(),
                 lambda d: recv_msg(FakeSocket(d), 1000)):
        with pytest.raises(ProtocolError) as info:
            read(data)
        assert (info.value.message, info.value.fatal) == (message, True)


def test_decode_frame_length_mismatch_is_fatal(codec):
    with pytest.raises(ProtocolError) as info:
        decode_frame(FINISHED_7 + b"\x00")
    assert (info.value.opcode, info.value.fatal) == (3, True)


def test_read_from_length_checks_are_fatal(codec):
    for length in (-1, DEFAULT_MAX_FRAME + 1):
        with pytest.raises(ProtocolError) as info:
            Finished().read_from(FakeSocket(b""), length)
        assert (info.value.opcode, info.value.fatal) == (3, True)


@pytest.mark.parametrize("fatal", [True, False])
def test_fatal_survives_pickling_and_defaults_to_false(fatal):
    import pickle

    error = pickle.loads(pickle.dumps(ProtocolError("bad", 7, fatal)))
    assert (type(error), error.message, error.opcode, error.fatal) == (ProtocolError, "bad", 7, fatal)
    assert ProtocolError("bad").fatal is False


# -- property: any chunking gives the same messages ------------------------------------

_SETTINGS = settings(max_examples=60, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])


@_SETTINGS
@given(data=st.data())
def test_decoder_any_chunking_gives_recv_msg_messages(codec, sample_c2s, expected, data):
    # Drawn here, not in @given: the bound is the capture's length, known only to the test.
    cuts = data.draw(st.lists(st.integers(1, len(sample_c2s) - 1), max_size=30), label="cuts")
    decoder = FrameDecoder()
    assert feed_all(decoder, cuts_to_pieces(sample_c2s, cuts)) == expected
    assert decoder.pending == 0


@_SETTINGS
@given(sizes=st.lists(st.integers(1, 2000), max_size=30),
       buffer_size=st.sampled_from([5, 16, 300, 256 * 1024]))
def test_reader_any_chunking_gives_recv_msg_messages(codec, sample_c2s, expected, sizes,
                                                     buffer_size):
    reader = FrameReader(FakeSocket(sample_c2s, listed(sizes)), buffer_size=buffer_size)
    messages = []
    while (msg := reader.read_message()) is not None:
        messages.append(msg)
    assert messages == expected


@pytest.mark.parametrize("data, message", [
    pytest.param(b"", "no bytes for 0.2s", id="idle"),
    pytest.param(b"\x04\x10\x00", "frame not complete within 0.2s (3 bytes pending)",
                 id="frame-deadline"),
])
def test_reader_timeouts_say_which_one_fired(codec, data, message):
    a, b = socket.socketpair()
    with a, b:
        a.sendall(data)
        reader = FrameReader(b, idle_timeout=0.2 if not data else 5.0,
                             frame_timeout=0.2 if data else None)
        with pytest.raises(socket.timeout, match=re.escape(message)):
            reader.read_frame()


