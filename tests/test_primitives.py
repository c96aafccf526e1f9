"""Primitives (PROTOCOL.md §1), the Writer, and frame headers (§2, §3)."""
from __future__ import annotations

import array
import re
import struct
import sys

import pytest

from fastframe.errors import ProtocolError
from fastframe.schema import DEFAULT_MAX_FRAME
from wire import BUFFER_TYPES, error, protocol_error

I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1
I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1

# (reader, wire bytes, value)
FIXED = [
    ("read_u8", b"\x00", 0),
    ("read_u8", b"\x7f", 127),
    ("read_u8", b"\xff", 255),
    ("read_u16", b"\x01\x00", 1),
    ("read_u16", b"\x01\x02", 0x0201),
    ("read_u16", b"\xff\xff", 0xFFFF),
    ("read_i32", b"\x01\x00\x00\x00", 1),
    ("read_i32", b"\x04\x03\x02\x01", 0x01020304),
    ("read_i32", b"\xff\xff\xff\xff", -1),
    ("read_i32", b"\xfe\xff\xff\xff", -2),
    ("read_i32", b"\x00\x00\x00\x80", I32_MIN),
    ("read_i32", b"\xff\xff\xff\x7f", I32_MAX),
    ("read_i64", b"\x01" + b"\x00" * 7, 1),
    ("read_i64", bytes(range(1, 9)), 0x0807060504030201),
    ("read_i64", b"\xff" * 8, -1),
    ("read_i64", b"\x00" * 7 + b"\x80", I64_MIN),
    ("read_i64", b"\xff" * 7 + b"\x7f", I64_MAX),
]
SIZES = {"read_u8": 1, "read_u16": 2, "read_i32": 4, "read_i64": 8}
ALL_READERS = ["read_u8", "read_u16", "read_i32", "read_i64", "read_string", "read_string_map",
               "read_u8_list", "read_u8_dict", "read_frame_header"]


def placed(data: bytes, kind, before: int = 3) -> tuple:
    """``data`` after ``before`` filler bytes and before 2 more, as ``kind``; -> (buf, offset)."""
    raw = b"\xaa" * before + data + b"\xbb\xbb"
    if kind is memoryview:
        # A view that starts inside a larger buffer: offsets are relative to the view.
        return memoryview(b"\xcc\xcc" + raw)[2:], before
    return kind(raw), before


def string(value: str) -> bytes:
    raw = value.encode()
    return struct.pack("<i", len(raw)) + raw


# -- fixed-size integers ------------------------------------------------------

@pytest.mark.parametrize("kind", BUFFER_TYPES)
@pytest.mark.parametrize("reader,data,value", FIXED)
def test_fixed_width_little_endian(codec, reader, data, value, kind):
    buf, offset = placed(data, kind)
    assert getattr(codec, reader)(buf, offset) == (value, offset + len(data))


@pytest.mark.parametrize("reader,data,value", FIXED)
def test_fixed_width_offset_defaults_to_zero(codec, reader, data, value):
    assert getattr(codec, reader)(data) == (value, len(data))


@pytest.mark.parametrize("reader", SIZES)
def test_fixed_width_truncated(codec, reader):
    size = SIZES[reader]
    buf = b"\x00" * (2 + size - 1)
    with protocol_error(f"truncated: need {size} bytes at offset 2, have {size - 1}"):
        getattr(codec, reader)(buf, 2)


@pytest.mark.parametrize("reader", SIZES)
def test_fixed_width_offset_past_the_end(codec, reader):
    with protocol_error(f"truncated: need {SIZES[reader]} bytes at offset 10, have 0"):
        getattr(codec, reader)(b"\x00\x00\x00", 10)


NEED = dict(SIZES, read_string=4, read_string_map=4, read_u8_list=1, read_u8_dict=1,
            read_frame_header=5)


@pytest.mark.parametrize("offset", [2**31, 2**62, sys.maxsize - 2, sys.maxsize, 2**64])
@pytest.mark.parametrize("reader", ALL_READERS)
def test_huge_offset_is_a_truncation(codec, reader, offset):
    # no overflow in the bounds arithmetic: past the end is past the end
    with protocol_error(f"truncated: need {NEED[reader]} bytes at offset {offset}, have 0"):
        getattr(codec, reader)(b"\x01" * 16, offset)


@pytest.mark.parametrize("reader", ALL_READERS)
def test_negative_offset_is_a_value_error(codec, reader):
    with error(ValueError, "offset must be >= 0, not -1"):
        getattr(codec, reader)(b"\x00" * 16, -1)


# -- strings ------------------------------------------------------------------

@pytest.mark.parametrize("kind", BUFFER_TYPES)
@pytest.mark.parametrize("value", ["", "hello", "Café", "São Paulo ☕ 日本語 😀", "a\x00b",
                                   "x" * 5000])
def test_read_string(codec, value, kind):
    data = string(value)
    buf, offset = placed(data, kind)
    result, end = codec.read_string(buf, offset)
    assert (result, end) == (value, offset + len(data))
    assert type(result) is str


@pytest.mark.parametrize("length", [-1, -5, I32_MIN])
def test_read_string_negative_length(codec, length):
    buf = b"\x00\x00" + struct.pack("<i", length) + b"abcdef"
    with protocol_error(f"negative string length {length} at offset 2"):
        codec.read_string(buf, 2)


@pytest.mark.parametrize("data,message", [
    (b"", "truncated: need 4 bytes at offset 0, have 0"),
    (b"\x01\x00", "truncated: need 4 bytes at offset 0, have 2"),
    (b"\x0a\x00\x00\x00abc", "truncated: need 10 bytes at offset 4, have 3"),
    (b"\x01\x00\x00\x00", "truncated: need 1 bytes at offset 4, have 0"),
    # An absurd length is a truncation, found without allocating it.
    (b"\xff\xff\xff\x7fabc", f"truncated: need {I32_MAX} bytes at offset 4, have 3"),
])
def test_read_string_truncated(codec, data, message):
    with protocol_error(message):
        codec.read_string(data)


def test_read_string_truncated_offsets_are_relative_to_the_buffer(codec):
    buf = memoryview(b"\xee" * 7 + b"\x05\x00\x00\x00ab")[3:]
    with protocol_error("truncated: need 5 bytes at offset 8, have 2"):
        codec.read_string(buf, 4)


@pytest.mark.parametrize("raw", [
    b"\xff",                  # never valid
    b"\xc3\x28",              # bad continuation byte
    b"caf\xc3",               # sequence cut at the end
    b"\xc0\x80",              # overlong NUL
    b"\xe0\x80\xaf",          # overlong '/'
    b"\xed\xa0\x80",          # UTF-16 surrogate
    b"\xf4\x90\x80\x80",      # above U+10FFFF
    b"\x80abc",               # lone continuation byte
], ids=["ff", "bad-continuation", "cut", "overlong-nul", "overlong-3", "surrogate",
        "above-max", "lone-continuation"])
def test_read_string_invalid_utf8(codec, raw):
    buf = b"\x00" * 3 + struct.pack("<i", len(raw)) + raw
    with protocol_error("invalid UTF-8 in string at offset 3"):
        codec.read_string(buf, 3)


# -- string maps ----------------------------------------------------------------

def string_map(pairs) -> bytes:
    return struct.pack("<i", len(pairs)) + b"".join(string(k) + string(v) for k, v in pairs)


@pytest.mark.parametrize("kind", BUFFER_TYPES)
@pytest.mark.parametrize("pairs", [
    [],
    [("a", "1")],
    [("zeta", ""), ("alpha", "Café"), ("", "empty key"), ("mid", "x" * 300)],
], ids=["empty", "one", "four"])
def test_read_string_map(codec, pairs, kind):
    data = string_map(pairs)
    buf, offset = placed(data, kind)
    result, end = codec.read_string_map(buf, offset)
    assert end == offset + len(data)
    assert list(result.items()) == pairs  # wire order is kept
    assert type(result) is dict


@pytest.mark.parametrize("count", [-1, I32_MIN])
def test_read_string_map_negative_pair_count(codec, count):
    with protocol_error(f"negative pair count {count} at offset 1"):
        codec.read_string_map(b"\x00" + struct.pack("<i", count), 1)


def test_read_string_map_duplicate_key(codec):
    data = b"\x00\x00" + string_map([("a", "1"), ("b", "2"), ("a", "3")])
    with protocol_error("duplicate key 'a' in string map at offset 2"):
        codec.read_string_map(data, 2)


def test_read_string_map_invalid_utf8_in_key(codec):
    data = struct.pack("<i", 2) + string("k") + string("v") + b"\x01\x00\x00\x00\xff" + string("v")
    with protocol_error("invalid UTF-8 in string at offset 14"):
        codec.read_string_map(data)


def test_read_string_map_invalid_utf8_in_value(codec):
    data = struct.pack("<i", 1) + string("key") + b"\x02\x00\x00\x00\xc3\x28"
    with protocol_error("invalid UTF-8 in string at offset 11"):
        codec.read_string_map(data)


@pytest.mark.parametrize("data,message", [
    (b"\x01\x00", "truncated: need 4 bytes at offset 0, have 2"),
    (struct.pack("<i", 2) + string("a") + string("b"),
     "truncated: need 4 bytes at offset 14, have 0"),
    (struct.pack("<i", 1) + string("a") + b"\x03\x00\x00\x00x",
     "truncated: need 3 bytes at offset 13, have 1"),
    (struct.pack("<i", I32_MAX), "truncated: need 4 bytes at offset 4, have 0"),
    (struct.pack("<i", 1) + string("a") + struct.pack("<i", -3),
     "negative string length -3 at offset 9"),
])
def test_read_string_map_truncated(codec, data, message):
    with protocol_error(message):
        codec.read_string_map(data)


# -- u8 lists and dicts ---------------------------------------------------------

@pytest.mark.parametrize("kind", BUFFER_TYPES)
@pytest.mark.parametrize("values", [[], [1], [0, 255, 7, 7], list(range(255))],
                         ids=["empty", "one", "repeats", "max"])
def test_read_u8_list(codec, values, kind):
    data = bytes([len(values)] + values)
    buf, offset = placed(data, kind)
    assert codec.read_u8_list(buf, offset) == (values, offset + len(data))


@pytest.mark.parametrize("data,message", [
    (b"", "truncated: need 1 bytes at offset 0, have 0"),
    (b"\x03\x01", "truncated: need 3 bytes at offset 1, have 1"),
    (b"\xff", "truncated: need 255 bytes at offset 1, have 0"),
])
def test_read_u8_list_truncated(codec, data, message):
    with protocol_error(message):
        codec.read_u8_list(data)


@pytest.mark.parametrize("kind", BUFFER_TYPES)
@pytest.mark.parametrize("pairs", [[], [(1, 2)], [(9, 0), (3, 255), (0, 9)]],
                         ids=["empty", "one", "three"])
def test_read_u8_dict(codec, pairs, kind):
    data = bytes([len(pairs)] + [b for pair in pairs for b in pair])
    buf, offset = placed(data, kind)
    result, end = codec.read_u8_dict(buf, offset)
    assert end == offset + len(data)
    assert list(result.items()) == pairs


@pytest.mark.parametrize("data,message", [
    (b"", "truncated: need 1 bytes at offset 0, have 0"),
    (b"\x02\x01\x02\x03", "truncated: need 4 bytes at offset 1, have 3"),
    (b"\x01\x01", "truncated: need 2 bytes at offset 1, have 1"),
])
def test_read_u8_dict_truncated(codec, data, message):
    with protocol_error(message):
        codec.read_u8_dict(data)


def test_read_u8_dict_duplicate_key(codec):
    with protocol_error("duplicate key 1 in u8 dict at offset 2"):
        codec.read_u8_dict(b"\x00\x00\x03\x01\x02\x05\x06\x01\x03", 2)


# -- Writer -----------------------------------------------------------------------

@pytest.mark.parametrize("method,fmt,values", [
    ("write_u8", "<B", [0, 1, 127, 255]),
    ("write_u16", "<H", [0, 1, 0x0201, 0xFFFF]),
    ("write_i32", "<i", [0, 1, -1, I32_MIN, I32_MAX, 0x01020304]),
    ("write_i64", "<q", [0, 1, -1, I64_MIN, I64_MAX, 0x0102030405060708]),
])
def test_writer_integers(codec, method, fmt, values):
    w = codec.Writer()
    for v in values:
        getattr(w, method)(v)
    expected = b"".join(struct.pack(fmt, v) for v in values)
    assert w.getvalue() == expected
    assert len(w) == len(expected)
    reader = "read_" + method[len("write_"):]
    pos, out = 0, []
    while pos < len(expected):
        v, pos = getattr(codec, reader)(w.getvalue(), pos)
        out.append(v)
    assert out == values


@pytest.mark.parametrize("method,name,low,high", [
    ("write_u8", "u8", 0, 255),
    ("write_u16", "u16", 0, 0xFFFF),
    ("write_i32", "i32", I32_MIN, I32_MAX),
    ("write_i64", "i64", I64_MIN, I64_MAX),
])
@pytest.mark.parametrize("side", ["below", "above"])
def test_writer_integer_out_of_range(codec, method, name, low, high, side):
    value = low - 1 if side == "below" else high + 1
    w = codec.Writer()
    with error(ValueError, f"{name} out of range [{low}, {high}]: {value}"):
        getattr(w, method)(value)
    # far out of range too (does not fit any C integer type)
    with error(ValueError, f"{name} out of range [{low}, {high}]: {value * 2**70}"):
        getattr(w, method)(value * 2**70)
    assert w.getvalue() == b""


@pytest.mark.parametrize("method,name", [
    ("write_u8", "u8"), ("write_u16", "u16"), ("write_i32", "i32"), ("write_i64", "i64"),
])
@pytest.mark.parametrize("value,type_name", [("1", "str"), (1.0, "float"), (None, "NoneType"),
                                             (b"\x01", "bytes")])
def test_writer_integer_wrong_type(codec, method, name, value, type_name):
    with error(TypeError, f"{name} must be int, not {type_name}"):
        getattr(codec.Writer(), method)(value)


@pytest.mark.parametrize("value", ["", "hello", "Café ☕ 😀", "a\x00b", "x" * 100_000])
def test_writer_string(codec, value):
    w = codec.Writer()
    w.write_string(value)
    assert w.getvalue() == string(value)
    assert codec.read_string(w.getvalue()) == (value, len(w))


@pytest.mark.parametrize("value,type_name", [(b"abc", "bytes"), (1, "int"), (None, "NoneType")])
def test_writer_string_wrong_type(codec, value, type_name):
    with error(TypeError, f"string must be str, not {type_name}"):
        codec.Writer().write_string(value)


@pytest.mark.parametrize("kind", BUFFER_TYPES)
def test_writer_bytes(codec, kind):
    w = codec.Writer()
    w.write_u8(7)
    w.write_bytes(kind(b"\x00raw\xff"))
    w.write_bytes(kind(b""))
    assert w.getvalue() == b"\x07\x00raw\xff"
    assert type(w.getvalue()) is bytes


@pytest.mark.parametrize("kind", BUFFER_TYPES)
def test_writer_bytes_empty_on_a_fresh_writer(codec, kind):
    w = codec.Writer()
    w.write_bytes(kind(b""))
    assert w.getvalue() == b"" and len(w) == 0
    w.write_bytes(kind(b"ab"))
    assert w.getvalue() == b"ab"


@pytest.mark.parametrize("value,type_name", [("abc", "str"), (1, "int"), (None, "NoneType")])
def test_writer_bytes_wrong_type(codec, value, type_name):
    w = codec.Writer()
    with pytest.raises(TypeError):
        w.write_bytes(value)
    assert w.getvalue() == b""


def test_writer_grows_to_megabytes(codec):
    w = codec.Writer()
    chunk = bytes(range(256)) * 16
    for i in range(600):
        w.write_i32(i)
        w.write_bytes(chunk)
    assert len(w) == 600 * (4 + len(chunk))
    value = w.getvalue()
    assert value[-len(chunk) - 4:] == struct.pack("<i", 599) + chunk
    assert value[:8] == b"\x00\x00\x00\x00" + chunk[:4]


def test_writer_getvalue_is_a_snapshot(codec):
    w = codec.Writer()
    w.write_u8(1)
    first = w.getvalue()
    w.write_u8(2)
    assert first == b"\x01"
    assert w.getvalue() == b"\x01\x02"


@pytest.mark.parametrize("pairs", [[], [("k", "v")], [("b", ""), ("a", "Café"), ("", "x")]],
                         ids=["empty", "one", "three"])
def test_writer_string_map(codec, pairs):
    w = codec.Writer()
    w.write_string_map(dict(pairs))
    assert w.getvalue() == string_map(pairs)
    result, end = codec.read_string_map(w.getvalue())
    assert list(result.items()) == pairs and end == len(w)


@pytest.mark.parametrize("mapping,message", [
    ({"k": 1}, "string must be str, not int"),
    ({1: "v"}, "string must be str, not int"),
    ({"k": None}, "string must be str, not NoneType"),
])
def test_writer_string_map_wrong_type(codec, mapping, message):
    with error(TypeError, message):
        codec.Writer().write_string_map(mapping)


@pytest.mark.parametrize("values", [[], [0], [1, 3, 4], [255] * 255])
def test_writer_u8_list(codec, values):
    w = codec.Writer()
    w.write_u8_list(values)
    assert w.getvalue() == bytes([len(values)] + values)
    assert codec.read_u8_list(w.getvalue()) == (values, len(w))


def test_writer_u8_list_accepts_a_tuple(codec):
    w = codec.Writer()
    w.write_u8_list((1, 2))
    assert w.getvalue() == b"\x02\x01\x02"


@pytest.mark.parametrize("values,exc,message", [
    ([0] * 256, ValueError, "u8 list too long: 256 items, at most 255"),
    ([1, 256], ValueError, "u8 list item out of range [0, 255]: 256"),
    ([-1], ValueError, "u8 list item out of range [0, 255]: -1"),
    ([1, "2"], TypeError, "u8 list item must be int, not str"),
    ([None], TypeError, "u8 list item must be int, not NoneType"),
])
def test_writer_u8_list_invalid(codec, values, exc, message):
    with error(exc, message):
        codec.Writer().write_u8_list(values)


@pytest.mark.parametrize("mapping", [
    {}, {1: 2}, {9: 0, 3: 255, 0: 9}, {i: 255 - i for i in range(255)},
], ids=["empty", "one", "three", "max"])
def test_writer_u8_dict(codec, mapping):
    w = codec.Writer()
    w.write_u8_dict(mapping)
    assert w.getvalue() == bytes([len(mapping)] + [b for kv in mapping.items() for b in kv])
    result, end = codec.read_u8_dict(w.getvalue())
    assert list(result.items()) == list(mapping.items()) and end == len(w)


@pytest.mark.parametrize("mapping,exc,message", [
    ({i: 0 for i in range(256)}, ValueError, "u8 dict too long: 256 items, at most 255"),
    ({256: 1}, ValueError, "u8 dict key out of range [0, 255]: 256"),
    ({-1: 1}, ValueError, "u8 dict key out of range [0, 255]: -1"),
    ({1: 256}, ValueError, "u8 dict value out of range [0, 255]: 256"),
    ({1: -1}, ValueError, "u8 dict value out of range [0, 255]: -1"),
    ({"1": 1}, TypeError, "u8 dict key must be int, not str"),
    ({1: 1.5}, TypeError, "u8 dict value must be int, not float"),
])
def test_writer_u8_dict_invalid(codec, mapping, exc, message):
    with error(exc, message):
        codec.Writer().write_u8_dict(mapping)


def test_writer_mixed_sequence_reads_back(codec):
    w = codec.Writer()
    w.write_u8(200)
    w.write_u16(513)
    w.write_i32(-7)
    w.write_i64(I64_MIN)
    w.write_string("Café")
    w.write_string_map({"k": "v"})
    w.write_u8_list([4, 5])
    w.write_u8_dict({6: 7})
    buf = w.getvalue()
    pos = 0
    out = []
    for reader in ["read_u8", "read_u16", "read_i32", "read_i64", "read_string",
                   "read_string_map", "read_u8_list", "read_u8_dict"]:
        value, pos = getattr(codec, reader)(buf, pos)
        out.append(value)
    assert out == [200, 513, -7, I64_MIN, "Café", {"k": "v"}, [4, 5], {6: 7}]
    assert pos == len(buf)


# -- frame headers ------------------------------------------------------------------

@pytest.mark.parametrize("kind", BUFFER_TYPES)
@pytest.mark.parametrize("opcode", range(10))
def test_read_frame_header(codec, opcode, kind):
    buf, offset = placed(struct.pack("<Bi", opcode, 1234), kind)
    assert codec.read_frame_header(buf, offset) == (opcode, 1234)


@pytest.mark.parametrize("length", [0, 1, DEFAULT_MAX_FRAME])
def test_read_frame_header_needs_only_the_five_header_bytes(codec, length):
    assert codec.read_frame_header(struct.pack("<Bi", 4, length)) == (4, length)


@pytest.mark.parametrize("opcode", [10, 11, 127, 255])
def test_read_frame_header_unknown_opcode(codec, opcode):
    with protocol_error(f"unknown opcode {opcode}", opcode):
        codec.read_frame_header(struct.pack("<Bi", opcode, 0))


def test_read_frame_header_unknown_opcode_wins_over_a_bad_length(codec):
    with protocol_error("unknown opcode 200", 200):
        codec.read_frame_header(struct.pack("<Bi", 200, -1))


@pytest.mark.parametrize("opcode", [0, 1, 4, 9])
@pytest.mark.parametrize("length", [-1, -1000, I32_MIN])
def test_read_frame_header_negative_length(codec, opcode, length):
    with protocol_error(f"negative frame length {length}", opcode):
        codec.read_frame_header(struct.pack("<Bi", opcode, length))


@pytest.mark.parametrize("opcode", [0, 3, 7])
@pytest.mark.parametrize("length,max_length", [
    (DEFAULT_MAX_FRAME + 1, None),
    (I32_MAX, None),
    (101, 100),
    (1, 0),
    (I32_MAX, I32_MAX - 1),
])
def test_read_frame_header_over_the_limit(codec, opcode, length, max_length):
    # Only the 5 header bytes exist: the error comes before any body is read.
    header = struct.pack("<Bi", opcode, length)
    limit = DEFAULT_MAX_FRAME if max_length is None else max_length
    with protocol_error(f"frame length {length} exceeds the limit of {limit} bytes", opcode):
        if max_length is None:
            codec.read_frame_header(header)
        else:
            codec.read_frame_header(header, 0, max_length)


def test_read_frame_header_at_the_limit(codec):
    header = b"\x00" * 4 + struct.pack("<Bi", 5, 100)
    assert codec.read_frame_header(header, 4, 100) == (5, 100)
    assert codec.read_frame_header(header, 4, max_length=100) == (5, 100)


@pytest.mark.parametrize("data,offset,message", [
    (b"", 0, "truncated: need 5 bytes at offset 0, have 0"),
    (b"\x04\x00\x00\x00", 0, "truncated: need 5 bytes at offset 0, have 4"),
    (b"\x00\x00\x04\x00\x00\x00\x00", 3, "truncated: need 5 bytes at offset 3, have 4"),
    (b"\x04", 9, "truncated: need 5 bytes at offset 9, have 0"),
])
def test_read_frame_header_truncated(codec, data, offset, message):
    with protocol_error(message, None):
        codec.read_frame_header(data, offset)


@pytest.mark.parametrize("kind", BUFFER_TYPES)
@pytest.mark.parametrize("opcode,body", [(0, b""), (4, b"abc"), (255, b"\x00" * 300)])
def test_encode_frame(codec, opcode, body, kind):
    out = codec.encode_frame(opcode, kind(body))
    assert type(out) is bytes
    assert out == struct.pack("<Bi", opcode, len(body)) + body


@pytest.mark.parametrize("opcode,exc,message", [
    (256, ValueError, "opcode out of range [0, 255]: 256"),
    (-1, ValueError, "opcode out of range [0, 255]: -1"),
    ("4", TypeError, "opcode must be int, not str"),
])
def test_encode_frame_invalid_opcode(codec, opcode, exc, message):
    with error(exc, message):
        codec.encode_frame(opcode, b"")


@pytest.mark.parametrize("make", [
    pytest.param(lambda raw: memoryview(raw).cast("i"), id="memoryview-i32-items"),
    pytest.param(lambda raw: array.array("i", raw), id="array-i32-items"),
])
def test_a_buffer_is_read_as_its_bytes_whatever_its_item_size(codec, make):
    # Offsets and lengths count bytes, not items: a view of 4-byte items holding
    # the frame header bytes [u8 7][i32 3] + padding reads the same as the bytes.
    raw = bytes([7, 3, 0, 0, 0, 0, 0, 0])
    buf = make(raw)
    assert codec.read_i32(buf, 1) == (3, 5)
    assert codec.read_frame_header(buf, 0) == (7, 3)
    assert codec.read_u8_list(make(bytes([2, 9, 8, 0])), 0) == ([9, 8], 3)
    with pytest.raises(ProtocolError, match=re.escape("truncated: need 8 bytes at offset 4, have 4")):
        codec.read_i64(buf, 4)
