"""DataBatch envelopes (PROTOCOL.md §6) and the orchestrator's projection (§8)."""
from __future__ import annotations

import random
import struct

import pytest

from fastframe.errors import ProtocolError
from fastframe.schema import TABLES_BY_NAME
from wire import (
    BUFFER_TYPES, TABLE_PARAMS, databatch_body, eof_body, error, frame, protocol_error, sample_rows,
    shuffled, table_body,
)

MENU = TABLES_BY_NAME["menu_items"]
TRANSACTIONS = TABLES_BY_NAME["transactions"]
I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1
NOT_FRAMED = "embedded bytes are not one well-framed message ([u8][i32 n][n bytes])"

# Header arguments in encode_databatch_header's order, valid.
HEADER = dict(table_ids=[1], query_ids=[1, 3, 4], reserved=0, batch_number=7, meta={},
              total_shards=0, shard_num=0)


def header_args(**changes):
    args = dict(HEADER, **changes)
    return [args[name] for name in HEADER]


def header_bytes(table_ids, query_ids, reserved, batch_number, meta, total_shards, shard_num):
    """The DataBatch header built with struct, independent of the codec's Writer."""
    return (bytes([len(table_ids), *table_ids, len(query_ids), *query_ids])
            + struct.pack("<Hq", reserved, batch_number)
            + bytes([len(meta), *(b for kv in meta.items() for b in kv)])
            + struct.pack("<HH", total_shards, shard_num))


# -- encoding -------------------------------------------------------------------------

HEADER_VALUES = [
    pytest.param(HEADER, id="typical"),
    pytest.param(dict(table_ids=[], query_ids=[], reserved=0, batch_number=0, meta={},
                      total_shards=0, shard_num=0), id="empty"),
    pytest.param(dict(table_ids=list(range(255)), query_ids=[255] * 255, reserved=65535,
                      batch_number=I64_MAX, meta={i: 255 - i for i in range(255)},
                      total_shards=65535, shard_num=65535), id="maximal"),
    pytest.param(dict(table_ids=[0], query_ids=[2], reserved=513, batch_number=I64_MIN,
                      meta={7: 1, 2: 0}, total_shards=4, shard_num=3), id="mixed"),
]


@pytest.mark.parametrize("values", HEADER_VALUES)
def test_encode_databatch_header(codec, values):
    out = codec.encode_databatch_header(*header_args(**values))
    assert type(out) is bytes
    assert out == header_bytes(*header_args(**values))


@pytest.mark.parametrize("values", HEADER_VALUES)
@pytest.mark.parametrize("inner", ["table", "projection", "eof", "finished"])
def test_databatch_round_trip(codec, values, inner):
    rows = sample_rows(MENU, 5)
    embedded = {
        "table": lambda: codec.encode_table_frame(MENU.opcode, 3, 1, rows),
        "projection": lambda: codec.encode_table_frame(MENU.opcode, 3, 0, [
            {"price": r["price"]} for r in rows], ["price"]),
        "eof": lambda: codec.encode_eof_frame(0, "stores"),
        "finished": lambda: codec.encode_finished_frame(12),
    }[inner]()
    args = header_args(**values)
    data = codec.encode_databatch_frame(*args, embedded)
    assert type(data) is bytes
    assert data == frame(0, header_bytes(*args) + embedded)
    assert codec.read_frame_header(data) == (0, len(data) - 5)
    decoded = codec.decode_databatch_body(data[5:])
    offset = len(header_bytes(*args)) + 5
    assert decoded == (*args, embedded[0], offset)
    assert data[5:][offset:] == embedded[5:]
    body = data[5 + offset:]
    if inner == "table":
        assert codec.decode_table_body(MENU.opcode, body, "dict", projected=True)[3] == rows
    elif inner == "projection":
        assert codec.decode_table_body(MENU.opcode, body, "dict", projected=True) == (
            3, 0, ("price",), [{"price": r["price"]} for r in rows])
    elif inner == "eof":
        assert codec.decode_eof_body(body) == (0, "stores")
    else:
        assert codec.decode_finished_body(body) == 12


@pytest.mark.parametrize("kind", BUFFER_TYPES)
def test_databatch_accepts_any_buffer(codec, kind):
    embedded = codec.encode_finished_frame(5)
    data = codec.encode_databatch_frame(*header_args(), kind(embedded))
    assert data == frame(0, header_bytes(*header_args()) + embedded)
    body = memoryview(data)[5:] if kind is memoryview else kind(data[5:])
    assert codec.decode_databatch_body(body)[7:] == (3, len(body) - 4)
    codec.check_embedded(kind(embedded))


HEADER_ERRORS = [
    ("table_ids", [0] * 256, ValueError, "u8 list too long: 256 items, at most 255"),
    ("table_ids", [1, 256], ValueError, "u8 list item out of range [0, 255]: 256"),
    ("table_ids", [-1], ValueError, "u8 list item out of range [0, 255]: -1"),
    ("table_ids", ["1"], TypeError, "u8 list item must be int, not str"),
    ("query_ids", list(range(256)), ValueError, "u8 list too long: 256 items, at most 255"),
    ("query_ids", [256], ValueError, "u8 list item out of range [0, 255]: 256"),
    ("query_ids", [None], TypeError, "u8 list item must be int, not NoneType"),
    ("reserved", 65536, ValueError, "u16 out of range [0, 65535]: 65536"),
    ("reserved", -1, ValueError, "u16 out of range [0, 65535]: -1"),
    ("reserved", "0", TypeError, "u16 must be int, not str"),
    ("batch_number", I64_MAX + 1, ValueError,
     f"i64 out of range [{I64_MIN}, {I64_MAX}]: {I64_MAX + 1}"),
    ("batch_number", 1.5, TypeError, "i64 must be int, not float"),
    ("meta", {i: 0 for i in range(256)}, ValueError, "u8 dict too long: 256 items, at most 255"),
    ("meta", {256: 1}, ValueError, "u8 dict key out of range [0, 255]: 256"),
    ("meta", {1: 256}, ValueError, "u8 dict value out of range [0, 255]: 256"),
    ("meta", {1: -1}, ValueError, "u8 dict value out of range [0, 255]: -1"),
    ("meta", {"1": 1}, TypeError, "u8 dict key must be int, not str"),
    ("total_shards", 65536, ValueError, "u16 out of range [0, 65535]: 65536"),
    ("total_shards", -1, ValueError, "u16 out of range [0, 65535]: -1"),
    ("shard_num", 65536, ValueError, "u16 out of range [0, 65535]: 65536"),
    ("shard_num", None, TypeError, "u16 must be int, not NoneType"),
]
HEADER_ERROR_PARAMS = [pytest.param(f, v, e, m, id=f"{f}-{i}")
                       for i, (f, v, e, m) in enumerate(HEADER_ERRORS)]


@pytest.mark.parametrize("field,value,exc,message", HEADER_ERROR_PARAMS)
def test_header_errors(codec, field, value, exc, message):
    args = header_args(**{field: value})
    with error(exc, message):
        codec.encode_databatch_header(*args)
    with error(exc, message):
        codec.encode_databatch_frame(*args, codec.encode_finished_frame(1))
    # the header is checked before the embedded bytes
    with error(exc, message):
        codec.encode_databatch_frame(*args, b"not a frame")


@pytest.mark.parametrize("field,value,exc,message",
                         [p for p in HEADER_ERROR_PARAMS if p.values[0] != "batch_number"])
def test_project_databatch_header_errors(codec, field, value, exc, message):
    args = dict(table_ids=[1], query_ids=[2], meta={}, total_shards=0, shard_num=0, reserved=0)
    args[field] = value
    body = codec.encode_table_frame(MENU.opcode, 0, 0, sample_rows(MENU, 1))[5:]
    with error(exc, message):
        codec.project_databatch(MENU.opcode, body, **args)
    # checked before the body, too
    with error(exc, message):
        codec.project_databatch(MENU.opcode, b"\xff\xff\xff\xff", **args)


EMBEDDED_ERRORS = [
    ("empty", b"", NOT_FRAMED),
    ("four-bytes", b"\x03\x00\x00\x00", NOT_FRAMED),
    ("length-short", b"\x03\x04\x00\x00\x00\x01\x00\x00", NOT_FRAMED),
    ("length-long", b"\x03\x04\x00\x00\x00\x01\x00\x00\x00\x00", NOT_FRAMED),
    ("negative-length", b"\x03\xff\xff\xff\xff", NOT_FRAMED),
    ("two-frames", b"\x03\x04\x00\x00\x00\x01\x00\x00\x00" * 2, NOT_FRAMED),
    ("nested-databatch", b"\x00\x00\x00\x00\x00", "a DataBatch cannot embed a DataBatch"),
    ("ack", b"\x01\x00\x00\x00\x00", "a DataBatch cannot embed opcode 1"),
    ("fail-ack", b"\x02\x00\x00\x00\x00", "a DataBatch cannot embed opcode 2"),
    ("unknown-opcode", b"\x0a\x00\x00\x00\x00", "a DataBatch cannot embed opcode 10"),
    ("opcode-255", b"\xff\x01\x00\x00\x00\x00", "a DataBatch cannot embed opcode 255"),
    ("framing-first", b"\x01\x01\x00\x00\x00", NOT_FRAMED),
]


@pytest.mark.parametrize("embedded,message",
                         [pytest.param(b, m, id=i) for i, b, m in EMBEDDED_ERRORS])
def test_embedded_errors(codec, embedded, message):
    with error(ValueError, message):
        codec.check_embedded(embedded)
    with error(ValueError, message):
        codec.encode_databatch_frame(*header_args(), embedded)


def test_embedded_real_databatch_is_rejected(codec):
    inner = codec.encode_databatch_frame(*header_args(), codec.encode_finished_frame(1))
    with error(ValueError, "a DataBatch cannot embed a DataBatch"):
        codec.check_embedded(inner)
    with error(ValueError, "a DataBatch cannot embed a DataBatch"):
        codec.encode_databatch_frame(*header_args(), inner)


@pytest.mark.parametrize("opcode", range(3, 10))
@pytest.mark.parametrize("body", [b"", b"\x01\x00\x00\x00", b"\xff" * 40],
                         ids=["empty", "four", "junk"])
def test_check_embedded_accepts_any_well_framed_message_a_databatch_carries(codec, opcode, body):
    # construction checks the framing and the opcode; the body is the embedder's business
    assert codec.check_embedded(frame(opcode, body)) is None
    out = codec.encode_databatch_frame([1], [2], 0, 0, {}, 0, 0, frame(opcode, body))
    assert codec.decode_databatch_body(out[5:])[7:] == (opcode, len(out) - 5 - len(body))


# -- decoding errors ---------------------------------------------------------------------

def _finished(codec):
    return codec.encode_finished_frame(1)


DECODE_ERRORS = [
    ("empty", lambda c: b"", "truncated: need 1 bytes at offset 0, have 0"),
    ("table-ids-cut", lambda c: b"\x03\x01", "truncated: need 3 bytes at offset 1, have 1"),
    ("query-ids-cut", lambda c: b"\x01\x01\x02\x01", "truncated: need 2 bytes at offset 3, have 1"),
    ("reserved-cut", lambda c: b"\x00\x00\x01", "truncated: need 2 bytes at offset 2, have 1"),
    ("batch-cut", lambda c: b"\x00\x00\x00\x00" + b"\x00" * 7,
     "truncated: need 8 bytes at offset 4, have 7"),
    ("meta-cut", lambda c: b"\x00\x00\x00\x00" + b"\x00" * 8 + b"\x02\x01\x01",
     "truncated: need 4 bytes at offset 13, have 2"),
    ("meta-duplicate", lambda c: databatch_body(c, b"")[:14] + b"\x02\x05\x01\x05\x02",
     "duplicate key 5 in u8 dict at offset 14"),
    ("shards-cut", lambda c: databatch_body(c, b"")[:-1],
     "truncated: need 2 bytes at offset 17, have 1"),
    ("no-embedded", lambda c: databatch_body(c, b""),
     "truncated: need 5 bytes at offset 19, have 0"),
    ("embedded-header-cut", lambda c: databatch_body(c, _finished(c)[:4]),
     "truncated: need 5 bytes at offset 19, have 4"),
    ("nested", lambda c: databatch_body(c, frame(0, databatch_body(c, _finished(c)))),
     "nested DataBatch"),
    ("nested-empty", lambda c: databatch_body(c, b"\x00\x00\x00\x00\x00"), "nested DataBatch"),
    ("embedded-ack", lambda c: databatch_body(c, frame(1, b"")), "DataBatch cannot embed opcode 1"),
    ("embedded-fail-ack", lambda c: databatch_body(c, frame(2, b"")),
     "DataBatch cannot embed opcode 2"),
    ("embedded-unknown", lambda c: databatch_body(c, frame(10, b"")), "unknown opcode 10"),
    ("embedded-255", lambda c: databatch_body(c, frame(255, b"")), "unknown opcode 255"),
    ("embedded-short", lambda c: databatch_body(c, _finished(c)[:-1]),
     "embedded frame length 4 does not match the 3 bytes left"),
    ("embedded-long", lambda c: databatch_body(c, _finished(c) + b"\x00"),
     "embedded frame length 4 does not match the 5 bytes left"),
    ("embedded-negative", lambda c: databatch_body(c, b"\x03\xff\xff\xff\xff\x00\x00\x00\x00"),
     "embedded frame length -1 does not match the 4 bytes left"),
    ("embedded-huge", lambda c: databatch_body(c, b"\x04\xff\xff\xff\x7f"),
     "embedded frame length 2147483647 does not match the 0 bytes left"),
    ("two-embedded", lambda c: databatch_body(c, _finished(c) * 2),
     "embedded frame length 4 does not match the 13 bytes left"),
]


@pytest.mark.parametrize("build,message", [pytest.param(b, m, id=i) for i, b, m in DECODE_ERRORS])
def test_decode_errors(codec, build, message):
    with protocol_error(message, 0):
        codec.decode_databatch_body(build(codec))


def test_every_prefix_of_a_databatch_body_is_an_error(codec):
    embedded = codec.encode_table_frame(MENU.opcode, 1, 0, sample_rows(MENU, 2))
    body = databatch_body(codec, embedded, table_ids=[1, 2], query_ids=[4], meta={1: 2, 3: 4})
    assert codec.decode_databatch_body(body)[-2:] == (MENU.opcode, len(body) - len(embedded) + 5)
    for cut in range(len(body)):
        with pytest.raises(ProtocolError) as info:
            codec.decode_databatch_body(body[:cut])
        assert info.value.opcode == 0
        assert str(info.value).startswith(("truncated: need ", "embedded frame length ")), cut


def test_decode_does_not_check_the_embedded_body(codec):
    # the embedded body is decoded by its own decoder, later (PROTOCOL.md §6)
    body = databatch_body(codec, frame(MENU.opcode, b"junk"))
    decoded = codec.decode_databatch_body(body)
    assert decoded[7] == MENU.opcode and body[decoded[8]:] == b"junk"
    with protocol_error("truncated: need 13 bytes at offset 0, have 4", MENU.opcode):
        codec.decode_table_body(MENU.opcode, body[decoded[8]:], projected=True)


# -- project_databatch -------------------------------------------------------------------------

@pytest.mark.parametrize("status", [0, 1, 2])
@pytest.mark.parametrize("spec", TABLE_PARAMS)
def test_project_databatch(codec, spec, status):
    rows = sample_rows(spec, 20, seed=2)
    rng = random.Random(spec.name)
    body = table_body(codec, [shuffled(r, rng) for r in rows], batch_number=77, status=status)
    out = codec.project_databatch(spec.opcode, body, [1], list(spec.query_ids), {3: 4}, 2, 1)
    assert type(out) is bytes
    kept = spec.kept_columns
    projected = [{k: r[k] for k in kept} for r in rows]
    # byte for byte: the batch's own number in the header, the §8 columns in §8 order
    assert out == codec.encode_databatch_frame(
        [1], list(spec.query_ids), 0, 77, {3: 4}, 2, 1,
        codec.encode_table_frame(spec.opcode, 77, status, projected, kept))
    assert codec.read_frame_header(out) == (0, len(out) - 5)
    decoded = codec.decode_databatch_body(out[5:])
    assert decoded[:8] == ([1], list(spec.query_ids), 0, 77, {3: 4}, 2, 1, spec.opcode)
    inner = out[5:][decoded[8]:]
    decoded_rows = codec.decode_table_body(spec.opcode, inner, "dict", projected=True)
    assert decoded_rows == (77, status, kept, projected)
    assert codec.decode_table_body(spec.opcode, inner, "object", projected=True)[3] == [
        spec.row_class(**{k: r.get(k) for k in spec.required_keys}) for r in projected]


@pytest.mark.parametrize("columns", [
    ("created_at", "transaction_id"),
    TRANSACTIONS.required_keys,
    ("final_amount",),
], ids=["reordered", "all", "one"])
def test_project_databatch_custom_columns(codec, columns):
    rows = sample_rows(TRANSACTIONS, 6)
    body = codec.encode_table_frame(TRANSACTIONS.opcode, 5, 1, rows)[5:]
    out = codec.project_databatch(TRANSACTIONS.opcode, body, [9], [1], {}, 0, 0, reserved=300,
                                  columns=columns)
    decoded = codec.decode_databatch_body(out[5:])
    assert decoded[:8] == ([9], [1], 300, 5, {}, 0, 0, TRANSACTIONS.opcode)
    keys, projected = codec.decode_table_body(TRANSACTIONS.opcode, out[5 + decoded[8]:], "dict",
                                              projected=True)[2:]
    assert keys == tuple(columns)
    assert projected == [{c: r[c] for c in columns} for r in rows]
    assert [list(r) for r in projected] == [list(columns)] * len(rows)


def test_project_databatch_zero_rows(codec):
    body = codec.encode_table_frame(MENU.opcode, 2, 0, [])[5:]
    out = codec.project_databatch(MENU.opcode, body, [1], [2], {}, 0, 0)
    decoded = codec.decode_databatch_body(out[5:])
    inner = out[5 + decoded[8]:]
    assert codec.decode_table_body(MENU.opcode, inner, projected=True) == (2, 0, (), [])


@pytest.mark.parametrize("kind", BUFFER_TYPES)
def test_project_databatch_accepts_any_buffer(codec, kind):
    data = codec.encode_table_frame(MENU.opcode, 2, 0, sample_rows(MENU, 3))
    body = memoryview(data)[5:] if kind is memoryview else kind(data[5:])
    expected = codec.project_databatch(MENU.opcode, data[5:], [1], [2], {}, 0, 0)
    assert codec.project_databatch(MENU.opcode, body, [1], [2], {}, 0, 0) == expected


ROW = dict(sample_rows(MENU, 1)[0], product_id="p1")


def _replace_key(row, old, new):
    return [(new if k == old else k, v) for k, v in row.items()]


def _patch_i32(body: bytes, offset: int, value: int) -> bytes:
    out = bytearray(body)
    struct.pack_into("<i", out, offset, value)
    return bytes(out)


INVALID_BODIES = [
    ("negative-rows", lambda c: table_body(c, [], n_rows=-1)),
    ("million-rows", lambda c: table_body(c, [ROW], n_rows=1_000_000)),
    ("status", lambda c: table_body(c, [ROW], status=9)),
    ("projection", lambda c: table_body(c, [[("name", "x")]])),
    ("unknown-key", lambda c: table_body(c, [_replace_key(ROW, "name", "bogus")])),
    ("bad-utf8", lambda c: table_body(c, [[(k, b"\xff" if k == "price" else v)
                                          for k, v in ROW.items()]])),
    ("trailing", lambda c: table_body(c, [ROW]) + b"\x00"),
    ("truncated", lambda c: table_body(c, [ROW])[:-1]),
    ("empty", lambda c: b""),
    ("missing-key", lambda c: table_body(c, [ROW, list(ROW.items())[:-1]])),
    ("duplicate-key", lambda c: table_body(c, [_replace_key(ROW, "price", "name")])),
    ("key-length-high-byte", lambda c: _patch_i32(table_body(c, [ROW] * 3), 17, 10 | 0x100)),
    ("negative-value-length", lambda c: _patch_i32(table_body(c, [ROW]), 31, -1)),
    ("value-past-the-end", lambda c: _patch_i32(table_body(c, [ROW]), 31, 10_000)),
]


@pytest.mark.parametrize("build", [pytest.param(b, id=i) for i, b in INVALID_BODIES])
def test_project_databatch_validates_like_decode_table_body(codec, build):
    body = build(codec)
    with pytest.raises(ProtocolError) as expected:
        codec.decode_table_body(MENU.opcode, body)
    with protocol_error(str(expected.value), MENU.opcode):
        codec.project_databatch(MENU.opcode, body, [1], [2], {}, 0, 0)


@pytest.mark.parametrize("opcode,columns,message", [
    (9, None, "not a table opcode: 9"),
    (0, None, "not a table opcode: 0"),
    (4, ["bogus"], "unknown column 'bogus' for table menu_items"),
    (4, ["name", "name"], "duplicate column 'name'"),
])
def test_project_databatch_argument_errors(codec, opcode, columns, message):
    body = codec.encode_table_frame(MENU.opcode, 0, 0, [ROW])[5:]
    with error(ValueError, message):
        codec.project_databatch(opcode, body, [1], [2], {}, 0, 0, columns=columns)


def test_project_databatch_embedded_frame_sizes(codec):
    rows = sample_rows(MENU, 4)
    body = codec.encode_table_frame(MENU.opcode, 1, 1, rows)[5:]
    out = codec.project_databatch(MENU.opcode, body, [1], [2], {}, 0, 0)
    head = header_bytes([1], [2], 0, 1, {}, 0, 0)
    assert out[5:5 + len(head)] == head
    opcode, length = struct.unpack_from("<Bi", out, 5 + len(head))
    assert opcode == MENU.opcode and length == len(out) - 5 - len(head) - 5
    assert struct.unpack_from("<i", out, 1)[0] == len(out) - 5
    # EOF and FINISHED frames are forwarded by wrapping them, not through project_databatch
    eof = codec.encode_eof_frame(0, "menu_items")
    wrapped = codec.encode_databatch_frame([1], [2], 0, 0, {}, 0, 0, eof)
    decoded = codec.decode_databatch_body(wrapped[5:])
    assert codec.decode_eof_body(wrapped[5 + decoded[8]:]) == (0, "menu_items")
    assert eof_body(codec, "menu_items") == eof[5:]
