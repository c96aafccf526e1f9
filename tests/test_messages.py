"""The orchestrator-facing message classes, ``recv_msg``, ``decode_frame`` (PROTOCOL.md §2–§7).

Every test runs on both codecs (the ``codec`` fixture installs the one under
test as ``fastframe.codec.impl``). Expected values come from the real
conformance captures and from a small struct-based parser in this file, never
from the codec under test.
"""
from __future__ import annotations

import json
import random
import socket
import struct
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

import fastframe
from fastframe.messages import decode_frame
from fastframe.schema import DEFAULT_MAX_FRAME, MAX_BATCH_FRAME, TABLES, TABLES_BY_NAME
from wire import databatch_body, eof_body, frame, sample_rows, shuffled, split_frames, table_body
from fastframe import (  # the public import line an orchestrator uses
    recv_msg, ProtocolError, Opcodes, BatchStatus, DataBatch, NewMenuItems, NewStores,
    NewTransactionItems, NewTransactions, NewUsers, EOFMessage, Finished, BatchRecvSuccess,
    BatchRecvFail, RawMenuItems, RawStore, RawTransactionItem, RawTransaction, RawUser,
    TableMessage,
)

GOLDEN_DIRS = ("golden_sample", "golden")
SAMPLE_FRAME_COUNT = 11  # frames in sample_c2s.bin (the ids below count on it; checked)
TIMEOUT = 5.0

TABLE_CLASSES = {
    "menu_items": (NewMenuItems, RawMenuItems),
    "stores": (NewStores, RawStore),
    "transaction_items": (NewTransactionItems, RawTransactionItem),
    "transactions": (NewTransactions, RawTransaction),
    "users": (NewUsers, RawUser),
}
TABLE_NAMES = list(TABLE_CLASSES)
FINISHED_7 = b"\x03\x04\x00\x00\x00\x07\x00\x00\x00"


# -- an independent parser (struct only) --------------------------------------

def whole_frames(data: bytes) -> List[bytes]:
    return [frame(opcode, body) for opcode, body in split_frames(data)]


def _string(buf: bytes, pos: int) -> Tuple[str, int]:
    (n,) = struct.unpack_from("<i", buf, pos)
    return buf[pos + 4:pos + 4 + n].decode("utf-8"), pos + 4 + n


def parse_table_body(body: bytes) -> Tuple[int, int, List[List[Tuple[str, str]]]]:
    """A table body -> ``(batch_number, status, rows as lists of (key, value) pairs)``."""
    n_rows, batch_number, status = struct.unpack_from("<iqB", body, 0)
    pos, rows = 13, []
    for _ in range(n_rows):
        (n_pairs,) = struct.unpack_from("<i", body, pos)
        pos += 4
        pairs = []
        for _ in range(n_pairs):
            key, pos = _string(body, pos)
            value, pos = _string(body, pos)
            pairs.append((key, value))
        rows.append(pairs)
    assert pos == len(body)
    return batch_number, status, rows


def parse_databatch_body(body: bytes) -> Dict[str, Any]:
    """A DataBatch body -> its header fields and ``embedded`` (the inner frame, whole)."""
    pos = 0
    out: Dict[str, Any] = {}
    for name in ("table_ids", "query_ids"):
        n = body[pos]
        out[name] = list(body[pos + 1:pos + 1 + n])
        pos += 1 + n
    out["reserved_u16"], out["batch_number"] = struct.unpack_from("<Hq", body, pos)
    pos += 10
    n = body[pos]
    out["meta"] = {body[pos + 1 + 2 * i]: body[pos + 2 + 2 * i] for i in range(n)}
    pos += 1 + 2 * n
    out["total_shards"], out["shard_num"] = struct.unpack_from("<HH", body, pos)
    out["embedded"] = body[pos + 4:]
    return out


def string(value: str) -> bytes:
    raw = value.encode()
    return struct.pack("<i", len(raw)) + raw


def expected_eof_frame(batch_number: int, table_type: str) -> bytes:
    body = (struct.pack("<iqBi", 1, batch_number, 1, 1) + string("table_type")
            + string(table_type))
    return frame(Opcodes.EOF, body)


# -- the conformance data, through fixtures --------------------------------------
#
# Never read at import: a parameter built from the data is a function of
# ``request.getfixturevalue``, called when its test runs.

@pytest.fixture(scope="module")
def sample_frames(sample_c2s) -> List[bytes]:
    frames = whole_frames(sample_c2s)
    assert len(frames) == SAMPLE_FRAME_COUNT
    return frames


@pytest.fixture(scope="module")
def sample_eof(sample_frames) -> Dict[str, bytes]:
    """The capture's EOF frames by table."""
    return {parse_table_body(f[5:])[2][0][0][1]: f for f in sample_frames if f[0] == 9}


@pytest.fixture(scope="module")
def golden(conformance_dir) -> Callable[[str, str], Tuple[Dict[str, Any], bytes, bytes]]:
    def load(dirname: str, table: str) -> Tuple[Dict[str, Any], bytes, bytes]:
        """``(manifest vector, input frame, databatch frame)`` for one table of one golden set."""
        base = conformance_dir / dirname
        manifest = json.loads((base / "manifest.json").read_text())
        vector = next(v for v in manifest["vectors"] if v["table"] == table)
        return (vector, (base / vector["input_file"]).read_bytes(),
                (base / vector["databatch_file"]).read_bytes())
    return load


def expected_rows(table: str, input_frame: bytes, keep: Optional[List[str]] = None) -> list:
    """The input frame's rows as row objects; keys outside ``keep`` read as ``None``."""
    row_class = TABLE_CLASSES[table][1]
    rows = []
    for pairs in parse_table_body(input_frame[5:])[2]:
        values = dict(pairs)
        rows.append(row_class(**{k: values[k] if keep is None or k in keep else None
                                 for k in row_class._fields}))
    return rows


# -- sockets -----------------------------------------------------------------

class Link:
    """A socketpair: the test writes on ``peer`` and reads (with a timeout) on ``sock``."""

    def __init__(self) -> None:
        self.peer, self.sock = socket.socketpair()
        self.peer.settimeout(TIMEOUT)
        self.sock.settimeout(TIMEOUT)
        self._threads: List[threading.Thread] = []

    def send(self, data: bytes, close: bool = False) -> None:
        """Send ``data`` from a thread (big frames overflow the socket buffer), then maybe close."""
        def run() -> None:
            self.peer.sendall(data)
            if close:
                self.peer.shutdown(socket.SHUT_WR)
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self._threads.append(thread)

    def close_peer(self) -> None:
        self.join()
        self.peer.shutdown(socket.SHUT_WR)

    def recv_exactly(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            assert chunk, "peer closed early"
            out += chunk
        return out

    def join(self) -> None:
        for thread in self._threads:
            thread.join(TIMEOUT)
            assert not thread.is_alive(), "sender thread hung"

    def close(self) -> None:
        self.join()
        self.peer.close()
        self.sock.close()


@pytest.fixture
def link():
    pair = Link()
    yield pair
    pair.close()


def recv_all(link: Link, data: bytes) -> list:
    """Every message in ``data`` through ``recv_msg``, up to the clean close."""
    link.send(data, close=True)
    messages = []
    while True:
        try:
            messages.append(recv_msg(link.sock))
        except EOFError:
            return messages


def round_trip(link: Link, data: bytes) -> Any:
    link.send(data)
    return recv_msg(link.sock)


# -- the public API ----------------------------------------------------------

def test_public_import_line(codec):
    namespace: Dict[str, Any] = {}
    exec("from fastframe import recv_msg, ProtocolError, Opcodes, BatchStatus, DataBatch, "
         "NewMenuItems, NewStores, NewTransactionItems, NewTransactions, NewUsers, EOFMessage, "
         "Finished, BatchRecvSuccess, BatchRecvFail, RawMenuItems, RawStore, "
         "RawTransactionItem, RawTransaction, RawUser, TableMessage", namespace)
    namespace.pop("__builtins__")
    assert len(namespace) == 20
    for name, obj in namespace.items():
        assert name in fastframe.__all__
        assert getattr(fastframe, name) is obj
    assert [int(o) for o in Opcodes] == list(range(10))
    assert (BatchStatus.CONTINUE, BatchStatus.EOF, BatchStatus.CANCEL) == (0, 1, 2)
    assert issubclass(ProtocolError, Exception)
    for cls, row_class in TABLE_CLASSES.values():
        assert issubclass(cls, TableMessage)
    assert issubclass(EOFMessage, TableMessage)
    assert fastframe.codec.impl is codec


# -- recv_msg: every message kind ---------------------------------------------

def test_recv_msg_sample_capture_in_a_loop(codec, link, sample_c2s, sample_frames):
    messages = recv_all(link, sample_c2s)
    kinds = [type(m) for m in messages]
    assert kinds == [NewMenuItems, EOFMessage, NewStores, EOFMessage, NewTransactionItems,
                     EOFMessage, NewTransactions, EOFMessage, NewUsers, EOFMessage, Finished]
    tables = messages[0:10:2]
    eofs = messages[1:10:2]
    for name, msg, eof, raw in zip(TABLE_NAMES, tables, eofs, sample_frames[0:10:2]):
        assert msg.rows == expected_rows(name, raw)
        assert msg.amount == len(msg.rows) == struct.unpack_from("<i", raw, 5)[0]
        assert (msg.batch_number, msg.batch_status) == (1, BatchStatus.EOF)
        assert eof.get_table_type() == name
        assert (eof.rows, eof.amount, eof.batch_status, eof.batch_number) == (
            [], 1, BatchStatus.EOF, 0)
    assert [m.amount for m in tables] == [8, 10, 3, 3, 3]
    assert tables[0].rows[0] == RawMenuItems("1", "Espresso", "coffee", "6.0", "False", "", "")
    assert tables[4].rows[0].birthdate == "2003-01-06"
    assert messages[10].agency_id == 1


@pytest.mark.parametrize("dirname", GOLDEN_DIRS)
@pytest.mark.parametrize("table", TABLE_NAMES)
def test_recv_msg_table_batch(codec, link, golden, dirname, table):
    vector, input_frame, _ = golden(dirname, table)
    msg = round_trip(link, input_frame + FINISHED_7)
    cls, row_class = TABLE_CLASSES[table]
    assert type(msg) is cls
    assert msg.opcode == vector["opcode"]
    assert all(type(row) is row_class for row in msg.rows)
    assert msg.rows == expected_rows(table, input_frame)
    assert msg.amount == vector["n_rows"]
    assert (msg.batch_number, msg.batch_status) == (vector["batch_number"], vector["status"])
    assert msg.columns == row_class._fields
    assert recv_msg(link.sock) == Finished(7)  # the whole frame was consumed


@pytest.mark.parametrize("table", TABLE_NAMES)
def test_recv_msg_eof(codec, link, sample_eof, table):
    msg = round_trip(link, sample_eof[table])
    assert type(msg) is EOFMessage
    assert msg.get_table_type() == msg.table_type == table
    assert (msg.rows, msg.amount, msg.batch_status, msg.batch_number) == ([], 1, BatchStatus.EOF, 0)
    assert msg.opcode == Opcodes.EOF


@pytest.mark.parametrize("agency_id", [0, 1, 7, -1, 2**31 - 1, -2**31])
def test_recv_msg_finished(codec, link, agency_id):
    msg = round_trip(link, frame(3, struct.pack("<i", agency_id)))
    assert type(msg) is Finished
    assert msg.agency_id == agency_id
    assert msg.opcode == Opcodes.FINISHED


def test_recv_msg_acks_from_the_capture(codec, link, sample_s2c):
    messages = recv_all(link, sample_s2c)
    assert len(messages) == 10
    assert all(type(m) is BatchRecvSuccess for m in messages)


@pytest.mark.parametrize("opcode,cls", [(1, BatchRecvSuccess), (2, BatchRecvFail)])
def test_recv_msg_ack(codec, link, opcode, cls):
    msg = round_trip(link, bytes([opcode, 0, 0, 0, 0]))
    assert type(msg) is cls
    assert msg.opcode == opcode
    assert msg == cls()


@pytest.mark.parametrize("dirname", GOLDEN_DIRS)
@pytest.mark.parametrize("table", TABLE_NAMES)
def test_recv_msg_databatch_with_projected_body(codec, link, golden, dirname, table):
    vector, input_frame, data = golden(dirname, table)
    msg = round_trip(link, data + FINISHED_7)
    assert type(msg) is DataBatch
    header = parse_databatch_body(data[5:])
    for name in ("table_ids", "query_ids", "reserved_u16", "meta", "total_shards", "shard_num",
                 "batch_number"):
        assert getattr(msg, name) == vector[name] == header[name], name
    assert msg.batch_bytes == header["embedded"]
    inner = msg.batch_msg
    assert type(inner) is TABLE_CLASSES[table][0]
    assert inner.columns == tuple(vector["filtered_keys"])
    assert inner.rows == expected_rows(table, input_frame, keep=vector["filtered_keys"])
    assert inner.amount == vector["n_rows"]
    assert (inner.batch_number, inner.batch_status) == (vector["batch_number"], vector["status"])
    first = {k: v for k, v in inner.rows[0]._asdict().items() if v is not None}
    assert first == vector["first_filtered_row"]
    assert recv_msg(link.sock) == Finished(7)
    # Rebuilt from its fields, it is the original orchestrator's bytes again.
    rebuilt = DataBatch(table_ids=msg.table_ids, query_ids=msg.query_ids, meta=msg.meta,
                        total_shards=msg.total_shards, shard_num=msg.shard_num,
                        reserved_u16=msg.reserved_u16, batch_bytes=msg.batch_bytes)
    assert rebuilt.to_bytes() == data
    assert inner.to_bytes() == header["embedded"]


@pytest.mark.parametrize("inner,expected", [
    pytest.param(FINISHED_7, Finished(7), id="finished"),
    pytest.param(expected_eof_frame(12, "users"), EOFMessage(12, "users"), id="eof"),
])
def test_recv_msg_databatch_embedding_control_messages(codec, link, inner, expected):
    batch_number = 0 if inner[0] == 3 else 12
    data = frame(0, bytes([1, 1, 1, 2]) + struct.pack("<Hq", 0, batch_number) + b"\x00"
                 + struct.pack("<HH", 0, 0) + inner)
    msg = round_trip(link, data)
    assert type(msg) is DataBatch
    assert (msg.table_ids, msg.query_ids, msg.batch_number) == ([1], [2], batch_number)
    assert msg.batch_bytes == inner
    assert type(msg.batch_msg) is type(expected)
    assert msg.batch_msg == expected


# -- recv_msg: closes and protocol errors ---------------------------------------

def test_recv_msg_clean_close_before_a_header(codec, link):
    link.close_peer()
    with pytest.raises(EOFError):
        recv_msg(link.sock)


def test_recv_msg_clean_close_after_the_last_frame(codec, link):
    assert recv_all(link, FINISHED_7 * 3) == [Finished(7)] * 3


@pytest.mark.parametrize("cut", [1, 3, 4, 5, 6, 12, 1211])
def test_recv_msg_close_inside_a_frame(codec, link, sample_frames, cut):
    data = sample_frames[0]  # 1212 bytes
    link.send(data[:cut], close=True)
    with pytest.raises(EOFError):
        recv_msg(link.sock)


@pytest.mark.parametrize("opcode", [10, 11, 127, 255])
def test_recv_msg_unknown_opcode(codec, link, opcode):
    link.send(struct.pack("<Bi", opcode, 0))
    with pytest.raises(ProtocolError) as info:
        recv_msg(link.sock)
    assert info.value.opcode == opcode


@pytest.mark.parametrize("length", [-1, -5, -2**31])
def test_recv_msg_negative_length(codec, link, length):
    link.send(struct.pack("<Bi", 4, length))
    with pytest.raises(ProtocolError) as info:
        recv_msg(link.sock)
    assert info.value.opcode == 4


@pytest.mark.parametrize("opcode,length,max_frame", [
    (4, 2**31 - 1, None), (0, 2**31 - 1, None), (7, DEFAULT_MAX_FRAME + 1, None),
    (3, 101, 100), (9, 1, 0),
])
def test_recv_msg_refuses_an_oversized_frame_from_its_header(codec, link, opcode, length,
                                                             max_frame):
    # Only the header is sent and the peer stays open: waiting for the body would time out.
    link.sock.settimeout(2.0)
    link.send(struct.pack("<Bi", opcode, length))
    kwargs = {} if max_frame is None else {"max_frame": max_frame}
    started = time.monotonic()
    with pytest.raises(ProtocolError) as info:
        recv_msg(link.sock, **kwargs)
    assert info.value.opcode == opcode
    assert time.monotonic() - started < 1.0


def test_recv_msg_accepts_a_frame_of_exactly_max_frame(codec, link):
    link.send(FINISHED_7)
    assert recv_msg(link.sock, max_frame=4) == Finished(7)


def test_recv_msg_full_size_client_batch(codec, link):
    # One row padded so the frame is exactly the 1 MiB a client may send (§4).
    row = {k: "v" for k in TABLES_BY_NAME["users"].required_keys}
    small = NewUsers(rows=[RawUser(**row)]).to_bytes()
    row["gender"] = "g" * (MAX_BATCH_FRAME - len(small) + 1)
    msg = NewUsers(rows=[RawUser(**row)], batch_number=3)
    data = msg.to_bytes()
    assert len(data) == MAX_BATCH_FRAME
    assert round_trip(link, data + FINISHED_7) == msg
    assert recv_msg(link.sock) == Finished(7)


def _bad_key(codec):
    spec = TABLES_BY_NAME["stores"]
    row = sample_rows(spec, 1)[0]
    pairs = list(row.items())
    pairs[3] = ("zip_code", pairs[3][1])
    return frame(spec.opcode, table_body(codec, [row, pairs], batch_number=4))


def _table(codec, name, **kwargs):
    spec = TABLES_BY_NAME[name]
    return frame(spec.opcode, table_body(codec, sample_rows(spec, 2), **kwargs))


def _with_trailing_byte(codec):
    spec = TABLES_BY_NAME["users"]
    return frame(spec.opcode, table_body(codec, sample_rows(spec, 2)) + b"\x00")


def _missing_key(codec):
    spec = TABLES_BY_NAME["menu_items"]
    row = sample_rows(spec, 1)[0]
    del row["price"]
    return frame(spec.opcode, table_body(codec, [row]))


def _duplicate_key(codec):
    spec = TABLES_BY_NAME["users"]
    pairs = list(sample_rows(spec, 1)[0].items())
    pairs[1] = ("user_id", "again")
    return frame(spec.opcode, table_body(codec, [pairs]))


def _bad_utf8(codec):
    spec = TABLES_BY_NAME["users"]
    pairs = list(sample_rows(spec, 1)[0].items())
    pairs[2] = (pairs[2][0], b"\xff\xfe")
    return frame(spec.opcode, table_body(codec, [pairs]))


def _nested_databatch(codec):
    inner = frame(0, databatch_body(codec, FINISHED_7))
    return frame(0, databatch_body(codec, inner))


def _databatch_bad_inner_length(codec):
    return frame(0, databatch_body(codec, FINISHED_7 + b"\x00"))


def _databatch_bad_inner_body(codec):
    return frame(0, databatch_body(codec, frame(9, eof_body(codec, "vouchers"))))


# (frame builder, the opcodes the error may carry)
DELIMITABLE_BAD_FRAMES = [
    pytest.param(_bad_key, {5}, id="unknown-key"),
    pytest.param(_missing_key, {4}, id="missing-key"),
    pytest.param(_duplicate_key, {8}, id="duplicate-key"),
    pytest.param(_bad_utf8, {8}, id="invalid-utf8"),
    pytest.param(lambda c: _table(c, "transactions", status=3), {7}, id="bad-status"),
    pytest.param(lambda c: _table(c, "stores", n_rows=3), {5}, id="rows-missing"),
    pytest.param(lambda c: _table(c, "stores", n_rows=-1), {5}, id="negative-rows"),
    pytest.param(_with_trailing_byte, {8}, id="trailing-byte"),
    pytest.param(lambda c: frame(9, eof_body(c, "vouchers")), {9}, id="eof-unknown-table"),
    pytest.param(lambda c: frame(9, eof_body(c, status=0)), {9}, id="eof-status-continue"),
    pytest.param(lambda c: frame(9, eof_body(c, key="table")), {9}, id="eof-bad-key"),
    pytest.param(lambda c: frame(3, b"\x01\x00\x00\x00\x00"), {3}, id="finished-5-bytes"),
    pytest.param(lambda c: frame(3, b""), {3}, id="finished-empty"),
    pytest.param(lambda c: frame(1, b"\x00"), {1}, id="ack-with-body"),
    pytest.param(lambda c: frame(2, b"abc"), {2}, id="fail-ack-with-body"),
    pytest.param(_nested_databatch, {0}, id="nested-databatch"),
    pytest.param(_databatch_bad_inner_length, {0}, id="databatch-inner-length"),
    pytest.param(lambda c: frame(0, b"\x01"), {0}, id="databatch-truncated-header"),
    pytest.param(_databatch_bad_inner_body, {0, 9}, id="databatch-invalid-inner-body"),
]


@pytest.mark.parametrize("build,opcodes", DELIMITABLE_BAD_FRAMES)
def test_recv_msg_stays_aligned_after_an_invalid_frame(codec, link, build, opcodes):
    following = expected_eof_frame(5, "stores")
    link.send(build(codec) + FINISHED_7 + following)
    with pytest.raises(ProtocolError) as info:
        recv_msg(link.sock)
    assert info.value.opcode in opcodes
    assert recv_msg(link.sock) == Finished(7)
    assert recv_msg(link.sock) == EOFMessage(5, "stores")


# -- encoding ------------------------------------------------------------------

@pytest.mark.parametrize("status", list(BatchStatus))
@pytest.mark.parametrize("table", TABLE_NAMES)
def test_table_message_to_bytes_round_trip(codec, link, table, status):
    cls, row_class = TABLE_CLASSES[table]
    rows = [row_class(**r) for r in sample_rows(TABLES_BY_NAME[table], 6, seed=int(status))]
    msg = cls(rows=rows, batch_number=2**40 + 3, batch_status=status)
    assert msg.amount == 6
    data = msg.to_bytes()
    assert (data[0], struct.unpack_from("<i", data, 1)[0]) == (cls.table.opcode, len(data) - 5)
    batch_number, wire_status, wire_rows = parse_table_body(data[5:])
    assert (batch_number, wire_status) == (2**40 + 3, status)
    assert [dict(pairs) for pairs in wire_rows] == [r._asdict() for r in rows]
    assert round_trip(link, data) == msg


@pytest.mark.parametrize("table", TABLE_NAMES)
def test_table_message_from_mappings_and_empty(codec, link, table):
    cls, row_class = TABLE_CLASSES[table]
    dicts = sample_rows(TABLES_BY_NAME[table], 3, seed=9)
    received = round_trip(link, cls(rows=dicts, batch_number=8).to_bytes())
    assert received.rows == [row_class(**d) for d in dicts]
    assert received.batch_number == 8
    empty = cls(batch_status=BatchStatus.CANCEL)
    assert (empty.rows, empty.amount) == ([], 0)
    received = round_trip(link, empty.to_bytes())
    assert received == empty and received.batch_status == BatchStatus.CANCEL


@pytest.mark.parametrize("table", TABLE_NAMES)
def test_table_message_write_to(codec, link, table):
    cls, row_class = TABLE_CLASSES[table]
    msg = cls(rows=[row_class(**r) for r in sample_rows(TABLES_BY_NAME[table], 4)],
              batch_number=11, batch_status=BatchStatus.EOF)
    data = msg.to_bytes()
    msg.write_to(link.peer)
    assert link.recv_exactly(len(data)) == data
    msg.write_to(link.peer)
    assert recv_msg(link.sock) == msg


@pytest.mark.parametrize("batch_number", [pytest.param(0, id="0"), 1, 12, -1, 2**63 - 1,
                                          -2**63])
@pytest.mark.parametrize("table", TABLE_NAMES)
def test_eof_message_create_to_bytes(codec, link, request, table, batch_number):
    msg = EOFMessage.create_eof_message(batch_number, table)
    assert type(msg) is EOFMessage
    assert (msg.get_table_type(), msg.batch_number, msg.rows, msg.amount, msg.batch_status) == (
        table, batch_number, [], 1, BatchStatus.EOF)
    data = msg.to_bytes()
    assert data == expected_eof_frame(batch_number, table)
    if batch_number == 0:
        assert data == request.getfixturevalue("sample_eof")[table]  # what the Go client sends
    received = round_trip(link, data)
    assert received == msg
    assert received.get_table_type() == table


@pytest.mark.parametrize("agency_id", [7, 1, 0, -1, 2**31 - 1])
def test_finished_to_bytes(codec, link, agency_id):
    msg = Finished(agency_id)
    assert msg.agency_id == agency_id
    data = msg.to_bytes()
    assert data == b"\x03\x04\x00\x00\x00" + struct.pack("<i", agency_id)
    assert round_trip(link, data) == msg


def test_finished_matches_the_capture(codec, sample_frames):
    assert Finished(7).to_bytes() == FINISHED_7
    assert Finished(1).to_bytes() == sample_frames[-1]


@pytest.mark.parametrize("cls,wire", [(BatchRecvSuccess, b"\x01\x00\x00\x00\x00"),
                                      (BatchRecvFail, b"\x02\x00\x00\x00\x00")])
def test_ack_write_to(codec, link, cls, wire):
    assert cls().to_bytes() == wire
    cls().write_to(link.peer)
    assert link.recv_exactly(5) == wire
    cls().write_to(link.peer)
    assert type(recv_msg(link.sock)) is cls


def test_acks_match_the_capture(codec, sample_s2c):
    assert BatchRecvSuccess().to_bytes() * 10 == sample_s2c


def _embedded_cases():
    cases = []
    for spec in TABLES:
        cases.append(pytest.param(spec.opcode, spec.name, None, id=f"{spec.name}-full"))
        cases.append(pytest.param(spec.opcode, spec.name, spec.kept_columns,
                                  id=f"{spec.name}-projected"))
    cases.append(pytest.param(9, "transactions", None, id="eof"))
    cases.append(pytest.param(3, None, None, id="finished"))
    return cases


def _embedded_body(codec, opcode: int, table: Optional[str], columns) -> bytes:
    if opcode == 3:
        return struct.pack("<i", 42)
    if opcode == 9:
        return eof_body(codec, table, batch_number=31)
    rows = sample_rows(TABLES_BY_NAME[table], 4, seed=3)
    if columns is not None:
        rows = [{k: r[k] for k in columns} for r in rows]
    return table_body(codec, rows, batch_number=77, status=BatchStatus.EOF)


@pytest.mark.parametrize("opcode,table,columns", _embedded_cases())
def test_databatch_round_trip(codec, link, opcode, table, columns):
    body = _embedded_body(codec, opcode, table, columns)
    embedded = DataBatch.make_embedded(opcode, body)
    assert embedded == frame(opcode, body)
    msg = DataBatch(table_ids=[1], query_ids=[2], batch_bytes=embedded)
    data = msg.to_bytes()
    assert (data[0], struct.unpack_from("<i", data, 1)[0]) == (0, len(data) - 5)
    expected_number = {3: 0, 9: 31}.get(opcode, 77)
    assert msg.batch_number == expected_number
    assert parse_databatch_body(data[5:]) == {
        "table_ids": [1], "query_ids": [2], "reserved_u16": 0, "batch_number": expected_number,
        "meta": {}, "total_shards": 0, "shard_num": 0, "embedded": embedded}
    received = round_trip(link, data)
    assert received == msg
    inner = received.batch_msg
    assert inner == msg.batch_msg
    if opcode == 3:
        assert inner == Finished(42)
    elif opcode == 9:
        assert inner == EOFMessage(31, table)
    else:
        assert type(inner) is TABLE_CLASSES[table][0]
        keep = columns or TABLES_BY_NAME[table].required_keys
        assert inner.columns == tuple(keep)
        assert inner.rows == expected_rows(table, embedded, keep=list(keep))
        assert (inner.batch_number, inner.batch_status) == (77, BatchStatus.EOF)
    msg.write_to(link.peer)
    assert link.recv_exactly(len(data)) == data


def test_databatch_every_header_field_round_trips(codec, link):
    embedded = expected_eof_frame(-9, "stores")
    msg = DataBatch(table_ids=list(range(255)), query_ids=[0, 255], meta={0: 255, 255: 0, 7: 8},
                    total_shards=65535, shard_num=65534, reserved_u16=65535,
                    batch_bytes=embedded, batch_number=2**63 - 1)
    data = msg.to_bytes()
    assert parse_databatch_body(data[5:]) == {
        "table_ids": list(range(255)), "query_ids": [0, 255], "reserved_u16": 65535,
        "batch_number": 2**63 - 1, "meta": {0: 255, 255: 0, 7: 8}, "total_shards": 65535,
        "shard_num": 65534, "embedded": embedded}
    received = round_trip(link, data)
    assert received == msg
    assert received.batch_msg == EOFMessage(-9, "stores")


def test_databatch_defaults(codec):
    msg = DataBatch(batch_bytes=FINISHED_7)
    assert (msg.table_ids, msg.query_ids, msg.meta, msg.reserved_u16, msg.total_shards,
            msg.shard_num, msg.batch_number) == ([], [], {}, 0, 0, 0, 0)
    assert msg.to_bytes() == frame(0, b"\x00\x00" + bytes(10) + b"\x00" + bytes(4) + FINISHED_7)


@pytest.mark.parametrize("embedded,explicit,expected", [
    pytest.param(lambda c: frame(6, table_body(c, [], batch_number=12345)), None, 12345,
                 id="table-default"),
    pytest.param(lambda c: frame(6, table_body(c, [], batch_number=-2)), None, -2,
                 id="table-negative-default"),
    pytest.param(lambda c: expected_eof_frame(2**62, "users"), None, 2**62, id="eof-default"),
    pytest.param(lambda c: FINISHED_7, None, 0, id="finished-default"),
    pytest.param(lambda c: frame(6, table_body(c, [], batch_number=12345)), 9, 9,
                 id="table-explicit"),
    pytest.param(lambda c: FINISHED_7, 5, 5, id="finished-explicit"),
])
def test_databatch_batch_number_defaults_to_the_embedded_one(codec, embedded, explicit,
                                                             expected):
    kwargs = {} if explicit is None else {"batch_number": explicit}
    msg = DataBatch(table_ids=[1], query_ids=[2], batch_bytes=embedded(codec), **kwargs)
    assert msg.batch_number == expected
    assert parse_databatch_body(msg.to_bytes()[5:])["batch_number"] == expected


_GOOD_EMBEDDED = frame(5, struct.pack("<iqB", 0, 1, 0))

INVALID_DATABATCH_ARGS = [
    pytest.param({"table_ids": [0] * 256}, id="256-table-ids"),
    pytest.param({"query_ids": list(range(256))}, id="256-query-ids"),
    pytest.param({"meta": {i: i for i in range(256)}}, id="256-meta-entries"),
    pytest.param({"table_ids": [256]}, id="table-id-256"),
    pytest.param({"table_ids": [1, -1]}, id="table-id-negative"),
    pytest.param({"query_ids": [300]}, id="query-id-300"),
    pytest.param({"query_ids": [-1]}, id="query-id-negative"),
    pytest.param({"meta": {256: 1}}, id="meta-key-256"),
    pytest.param({"meta": {1: 256}}, id="meta-value-256"),
    pytest.param({"meta": {-1: 0}}, id="meta-key-negative"),
    pytest.param({"reserved_u16": 65536}, id="reserved-65536"),
    pytest.param({"reserved_u16": -1}, id="reserved-negative"),
    pytest.param({"total_shards": 65536}, id="total-shards-65536"),
    pytest.param({"total_shards": -1}, id="total-shards-negative"),
    pytest.param({"shard_num": 65536}, id="shard-num-65536"),
    pytest.param({"shard_num": -1}, id="shard-num-negative"),
    pytest.param({"batch_bytes": _GOOD_EMBEDDED + b"\x00"}, id="embedded-extra-byte"),
    pytest.param({"batch_bytes": _GOOD_EMBEDDED[:-1]}, id="embedded-short"),
    pytest.param({"batch_bytes": b"\x05\x00\x00"}, id="embedded-truncated-header"),
    pytest.param({"batch_bytes": b""}, id="embedded-empty"),
    pytest.param({"batch_bytes": b"\x03\xff\xff\xff\xff"}, id="embedded-negative-length"),
    pytest.param({"batch_bytes": FINISHED_7 + FINISHED_7}, id="embedded-two-frames"),
    pytest.param({"batch_bytes": frame(0, bytes(17) + FINISHED_7)}, id="embedded-databatch"),
]


@pytest.mark.parametrize("kwargs", INVALID_DATABATCH_ARGS)
def test_databatch_construction_value_errors(codec, kwargs):
    args = {"table_ids": [1], "query_ids": [2], "batch_bytes": _GOOD_EMBEDDED, **kwargs}
    with pytest.raises(ValueError):
        DataBatch(**args)


def test_databatch_limits_are_inclusive(codec, link):
    msg = DataBatch(table_ids=[255] * 255, query_ids=list(range(255)),
                    meta={i: 255 - i for i in range(255)}, reserved_u16=65535,
                    total_shards=65535, shard_num=65535, batch_bytes=_GOOD_EMBEDDED)
    assert round_trip(link, msg.to_bytes()) == msg


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_databatch_batch_bytes_any_buffer(codec, link, kind):
    msg = DataBatch(table_ids=[1], query_ids=[2], batch_bytes=kind(FINISHED_7))
    assert type(msg.batch_bytes) is bytes and msg.batch_bytes == FINISHED_7
    assert round_trip(link, msg.to_bytes()) == msg


@pytest.mark.parametrize("table", TABLE_NAMES)
def test_projected_table_frame_is_valid_only_inside_a_databatch(codec, link, table):
    cls, row_class = TABLE_CLASSES[table]
    spec = TABLES_BY_NAME[table]
    rows = [row_class(**r) for r in sample_rows(spec, 3)]
    data = cls(rows=rows, batch_number=4, columns=spec.kept_columns).to_bytes()
    assert [k for k, _ in parse_table_body(data[5:])[2][0]] == list(spec.kept_columns)
    link.send(data + FINISHED_7)
    with pytest.raises(ProtocolError) as info:  # §4: a client batch carries every key
        recv_msg(link.sock)
    assert info.value.opcode == spec.opcode
    assert recv_msg(link.sock) == Finished(7)
    inner = round_trip(link, DataBatch(batch_bytes=data).to_bytes()).batch_msg
    assert (inner.columns, inner.batch_number) == (spec.kept_columns, 4)
    assert inner.rows == [row_class(**{k: getattr(r, k) if k in spec.kept_columns else None
                                       for k in row_class._fields}) for r in rows]


def test_databatch_without_batch_bytes(codec, link):
    msg = DataBatch(table_ids=[1], query_ids=[2])
    assert msg.batch_bytes is None and msg.batch_msg is None
    with pytest.raises(ValueError):
        msg.to_bytes()
    with pytest.raises(ValueError):
        msg.write_to(link.peer)


@pytest.mark.parametrize("embedded", [
    pytest.param(b"\x01\x00\x00\x00\x00", id="ack-success"),
    pytest.param(b"\x02\x00\x00\x00\x00", id="ack-fail"),
    pytest.param(b"\x0a\x00\x00\x00\x00", id="opcode-10"),
    pytest.param(b"\xc8\x01\x00\x00\x00\x00", id="opcode-200"),
])
def test_databatch_never_builds_bytes_it_cannot_read(codec, embedded):
    # §6: the embedded frame is a table batch, an EOF or a FINISHED. Whatever
    # DataBatch accepts at construction must decode; anything else is a ValueError.
    try:
        msg = DataBatch(table_ids=[1], query_ids=[2], batch_bytes=embedded)
    except ValueError:
        return
    data = msg.to_bytes()
    decoded = decode_frame(data)  # raises ProtocolError if DataBatch built an unreadable frame
    assert decoded.batch_bytes == embedded


# -- the TableMessage base constructor and construction errors ---------------------

class Custom:
    def __init__(self, **kwargs: str) -> None:
        self.kwargs = kwargs


@pytest.mark.parametrize("table", TABLE_NAMES)
def test_table_message_base_constructor(codec, link, golden, table):
    spec = TABLES_BY_NAME[table]
    msg = TableMessage(spec.opcode, spec.required_keys, Custom)
    assert isinstance(msg, TableMessage)
    assert (msg.rows, msg.amount, msg.batch_number, msg.batch_status) == (
        [], 0, 0, BatchStatus.CONTINUE)
    assert msg.opcode == spec.opcode
    _, input_frame, _ = golden("golden_sample", table)
    link.send(input_frame)
    opcode, length = struct.unpack("<Bi", link.recv_exactly(5))
    msg.read_from(link.sock, length)
    assert all(type(row) is Custom for row in msg.rows)
    assert [row.kwargs for row in msg.rows] == [
        dict(pairs) for pairs in parse_table_body(input_frame[5:])[2]]
    assert msg.amount == len(msg.rows) > 0


@pytest.mark.parametrize("table", TABLE_NAMES)
def test_table_subclass_with_a_custom_row_factory(codec, link, golden, table):
    cls, _ = TABLE_CLASSES[table]
    calls: List[Dict[str, str]] = []

    def factory(**kwargs: str) -> Tuple[str, int]:
        calls.append(kwargs)
        return ("row", len(calls))

    msg = cls(row_factory=factory)
    _, input_frame, _ = golden("golden_sample", table)
    link.send(input_frame)
    _, length = struct.unpack("<Bi", link.recv_exactly(5))
    msg.read_from(link.sock, length)
    expected = [dict(pairs) for pairs in parse_table_body(input_frame[5:])[2]]
    assert calls == expected
    assert msg.rows == [("row", i + 1) for i in range(len(expected))]
    assert msg.amount == len(expected)


@pytest.mark.parametrize("make", [
    pytest.param(lambda: NewMenuItems(batch_status=3), id="status-3"),
    pytest.param(lambda: NewStores(batch_status=-1), id="status-negative"),
    pytest.param(lambda: NewUsers(batch_status=255), id="status-255"),
    pytest.param(lambda: TableMessage(10, (), None), id="base-opcode-10"),
    pytest.param(lambda: TableMessage(3, (), None), id="base-opcode-finished"),
    pytest.param(lambda: TableMessage(9, ("table_type",), None), id="base-opcode-eof"),
    pytest.param(lambda: TableMessage(), id="base-no-opcode"),
    pytest.param(lambda: NewStores(Opcodes.NEW_MENU_ITEMS), id="wrong-opcode"),
    pytest.param(lambda: NewUsers(7, RawTransaction._fields, RawTransaction), id="wrong-opcode-2"),
    pytest.param(lambda: NewUsers(8, ("user_id", "gender")), id="wrong-required-keys"),
    pytest.param(lambda: TableMessage(4, RawStore._fields, RawStore), id="base-wrong-keys"),
    pytest.param(lambda: EOFMessage(0, "vouchers"), id="eof-unknown-table"),
    pytest.param(lambda: EOFMessage(0, "Users"), id="eof-table-case"),
    pytest.param(lambda: EOFMessage.create_eof_message(3, "payment_methods"), id="create-eof"),
])
def test_invalid_construction_raises_value_error(codec, make):
    with pytest.raises(ValueError):
        make()


# -- read_from: the caller reads the header, the class reads the body --------------

def _read_from_cases():
    cases = []
    for table in TABLE_NAMES:
        cases.append(pytest.param(
            TABLE_CLASSES[table][0], lambda get, t=table: get("golden")("golden_sample", t)[1],
            id=table))
        cases.append(pytest.param(
            DataBatch, lambda get, t=table: get("golden")("golden_sample", t)[2],
            id=f"databatch-{table}"))
    cases += [
        pytest.param(EOFMessage, lambda get: get("sample_eof")["transactions"], id="eof"),
        pytest.param(Finished, lambda get: FINISHED_7, id="finished"),
        pytest.param(BatchRecvSuccess, lambda get: b"\x01\x00\x00\x00\x00", id="ack-success"),
        pytest.param(BatchRecvFail, lambda get: b"\x02\x00\x00\x00\x00", id="ack-fail"),
    ]
    return cases


@pytest.mark.parametrize("cls,data", _read_from_cases())
def test_read_from(codec, link, request, cls, data):
    data = data(request.getfixturevalue)
    link.send(data + expected_eof_frame(3, "users"))
    opcode, length = struct.unpack("<Bi", link.recv_exactly(5))
    msg = cls()
    assert msg.read_from(link.sock, length) is None
    assert msg.opcode == opcode
    assert msg == decode_frame(data)
    assert recv_msg(link.sock) == EOFMessage(3, "users")


@pytest.mark.parametrize("cls,body,opcodes", [
    pytest.param(NewStores, lambda c: table_body(c, [{"store_id": "1"}]), {5}, id="table"),
    pytest.param(EOFMessage, lambda c: eof_body(c, n_rows=2), {9}, id="eof"),
    pytest.param(Finished, lambda c: b"\x00\x00", {3}, id="finished"),
    pytest.param(BatchRecvFail, lambda c: b"\x00", {2}, id="ack"),
    pytest.param(DataBatch, lambda c: databatch_body(c, FINISHED_7[:-1]), {0}, id="databatch"),
])
def test_read_from_invalid_body(codec, link, cls, body, opcodes):
    body = body(codec)
    link.send(body + FINISHED_7)
    with pytest.raises(ProtocolError) as info:
        cls().read_from(link.sock, len(body))
    assert info.value.opcode in opcodes
    assert recv_msg(link.sock) == Finished(7)


@pytest.mark.parametrize("cls", [NewUsers, EOFMessage, Finished, BatchRecvSuccess, DataBatch])
def test_read_from_negative_length(codec, link, cls):
    with pytest.raises(ProtocolError):
        cls().read_from(link.sock, -1)


@pytest.mark.parametrize("cls,data", [
    pytest.param(NewMenuItems, lambda get: get("sample_frames")[0], id="table"),
    pytest.param(EOFMessage, lambda get: get("sample_frames")[1], id="eof"),
    pytest.param(Finished, lambda get: FINISHED_7, id="finished"),
    pytest.param(DataBatch, lambda get: get("golden")("golden_sample", "users")[2],
                 id="databatch"),
])
def test_read_from_peer_closes_mid_body(codec, link, request, cls, data):
    data = data(request.getfixturevalue)
    link.send(data[:-1], close=True)
    _, length = struct.unpack("<Bi", link.recv_exactly(5))
    with pytest.raises(EOFError):
        cls().read_from(link.sock, length)


# -- decode_frame ----------------------------------------------------------------

def _all_frames():
    frames = [pytest.param(lambda get, i=i: get("sample_frames")[i], id=f"sample-{i}")
              for i in range(SAMPLE_FRAME_COUNT)]
    frames += [pytest.param(lambda get, t=t: get("golden")("golden_sample", t)[2],
                            id=f"databatch-{t}")
               for t in TABLE_NAMES]
    frames += [pytest.param(lambda get: b"\x02\x00\x00\x00\x00", id="ack-fail")]
    return frames


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
@pytest.mark.parametrize("data", _all_frames())
def test_decode_frame_equals_recv_msg(codec, link, request, data, kind):
    data = data(request.getfixturevalue)
    decoded = decode_frame(kind(data))
    assert decoded == round_trip(link, data)
    assert decoded.opcode == data[0]


@pytest.mark.parametrize("mangle", [
    pytest.param(lambda f: f + b"\x00", id="one-byte-extra"),
    pytest.param(lambda f: f + FINISHED_7, id="two-frames"),
    pytest.param(lambda f: f[:-1], id="one-byte-short"),
    pytest.param(lambda f: f[:5], id="header-only"),
])
@pytest.mark.parametrize("data", [
    pytest.param(lambda get: get("sample_frames")[2], id="stores"),
    pytest.param(lambda get: FINISHED_7, id="finished"),
])
def test_decode_frame_length_mismatch(codec, request, data, mangle):
    data = data(request.getfixturevalue)
    with pytest.raises(ProtocolError) as info:
        decode_frame(mangle(data))
    assert info.value.opcode == data[0]


@pytest.mark.parametrize("data", [b"\x0a\x00\x00\x00\x00", b"\x04\xff\xff\xff\xff"],
                         ids=["unknown-opcode", "negative-length"])
def test_decode_frame_bad_header(codec, data):
    with pytest.raises(ProtocolError) as info:
        decode_frame(data)
    assert info.value.opcode == data[0]


def test_decode_frame_truncated_header(codec):
    with pytest.raises(ProtocolError):
        decode_frame(b"\x03\x04\x00")


def test_decode_frame_max_frame(codec, sample_frames):
    data = sample_frames[0]
    assert decode_frame(data, max_frame=len(data) - 5).amount == 8
    with pytest.raises(ProtocolError):
        decode_frame(data, max_frame=len(data) - 6)


@pytest.mark.parametrize("row_type,check", [
    ("dict", lambda row: type(row) is dict and row["name"] == "Espresso"),
    ("tuple", lambda row: type(row) is tuple and row[:2] == ("1", "Espresso")),
    ("object", lambda row: type(row) is RawMenuItems and row.name == "Espresso"),
])
def test_recv_msg_and_decode_frame_row_type(codec, link, sample_frames, row_type, check):
    assert check(decode_frame(sample_frames[0], row_type=row_type).rows[0])
    link.send(sample_frames[0])
    assert check(recv_msg(link.sock, row_type=row_type).rows[0])


def test_shuffled_key_order_decodes_the_same(codec, link):
    spec = TABLES_BY_NAME["transactions"]
    rows = sample_rows(spec, 20, seed=5)
    rng = random.Random(1)
    data = frame(spec.opcode, table_body(codec, [shuffled(r, rng) for r in rows]))
    assert round_trip(link, data).rows == [RawTransaction(**r) for r in rows]
