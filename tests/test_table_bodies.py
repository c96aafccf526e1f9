"""Table batch bodies (PROTOCOL.md §4), projections (§8), EOF (§5), FINISHED and ACK bodies."""
from __future__ import annotations

import gc
import random
import re
import struct
import sys

import pytest

from fastframe.errors import ProtocolError
from fastframe.schema import TABLES_BY_NAME, TABLES_BY_OPCODE, BatchStatus, Opcodes
from wire import (
    BUFFER_TYPES, TABLE_PARAMS, eof_body, error, frame, protocol_error, sample_rows, shuffled,
    table_body,
)

MENU = TABLES_BY_NAME["menu_items"]
USERS = TABLES_BY_NAME["users"]
ROW_TYPES = ["object", "dict", "tuple"]
TRUNCATION = re.compile(r"truncated: need \d+ bytes at offset \d+, have \d+"
                        r"|row count \d+ exceeds what \d+ body bytes can hold")


def as_given(spec, rows, shape):
    """The rows in one of the shapes ``encode_table_frame`` accepts."""
    if shape == "dict":
        return rows
    if shape == "object":
        return [spec.row_class(**r) for r in rows]
    if shape == "list":
        return [list(r.values()) for r in rows]
    return [tuple(r.values()) for r in rows]


def expected_rows(spec, rows, row_type, columns=None):
    if row_type == "object":
        return [spec.row_class(**r) for r in rows]
    if row_type == "dict":
        return rows
    return [tuple(r[k] for k in (columns or spec.required_keys)) for r in rows]


def check_row_types(spec, decoded, row_type):
    wanted = {"object": spec.row_class, "dict": dict, "tuple": tuple}[row_type]
    assert all(type(row) is wanted for row in decoded)


# -- round trips ---------------------------------------------------------------------

@pytest.mark.parametrize("shape", ["dict", "object", "list", "tuple"])
@pytest.mark.parametrize("row_type", ROW_TYPES)
@pytest.mark.parametrize("spec", TABLE_PARAMS)
def test_round_trip(codec, spec, row_type, shape):
    rows = sample_rows(spec, 25)
    data = codec.encode_table_frame(spec.opcode, 42, 1, as_given(spec, rows, shape))
    assert type(data) is bytes
    opcode, length = codec.read_frame_header(data)
    assert (opcode, length) == (spec.opcode, len(data) - 5)
    batch, status, keys, decoded = codec.decode_table_body(opcode, data[5:], row_type)
    assert (batch, status, keys) == (42, 1, spec.required_keys)
    assert decoded == expected_rows(spec, rows, row_type)
    check_row_types(spec, decoded, row_type)


@pytest.mark.parametrize("spec", TABLE_PARAMS)
def test_encoded_bytes_are_exact(codec, spec):
    rows = sample_rows(spec, 4)
    expected = frame(spec.opcode, table_body(codec, rows, batch_number=-3, status=2))
    assert codec.encode_table_frame(spec.opcode, -3, 2, rows) == expected
    assert codec.encode_table_frame(spec.opcode, -3, 2, as_given(spec, rows, "object")) == expected


@pytest.mark.parametrize("kind", BUFFER_TYPES)
@pytest.mark.parametrize("row_type", ROW_TYPES)
def test_decode_accepts_any_buffer(codec, kind, row_type):
    rows = sample_rows(MENU, 3)
    data = codec.encode_table_frame(MENU.opcode, 1, 0, rows)
    body = memoryview(data)[5:] if kind is memoryview else kind(data[5:])
    decoded = codec.decode_table_body(MENU.opcode, body, row_type)[3]
    assert decoded == expected_rows(MENU, rows, row_type)


@pytest.mark.parametrize("status", [0, 1, 2])
@pytest.mark.parametrize("batch", [0, 1, -1, 2**63 - 1, -2**63])
def test_header_fields_round_trip(codec, batch, status):
    data = codec.encode_table_frame(USERS.opcode, batch, status, sample_rows(USERS, 1))
    decoded = codec.decode_table_body(USERS.opcode, data[5:])
    assert decoded[:3] == (batch, status, USERS.required_keys)


@pytest.mark.parametrize("projected", [False, True])
@pytest.mark.parametrize("spec", TABLE_PARAMS)
def test_zero_rows(codec, spec, projected):
    data = codec.encode_table_frame(spec.opcode, 5, 1, [])
    assert len(data) == 5 + 13
    keys = () if projected else spec.required_keys
    decoded = codec.decode_table_body(spec.opcode, data[5:], "dict", projected=projected)
    assert decoded == (5, 1, keys, [])


@pytest.mark.parametrize("columns", [
    ("available_to", "product_id", "price"),
    tuple(reversed(MENU.required_keys)),
    ("name",),
    (),
], ids=["three", "reversed", "one", "none"])
def test_tuple_rows_follow_columns(codec, columns):
    rows = sample_rows(MENU, 6)
    data = codec.encode_table_frame(MENU.opcode, 0, 0, rows)
    _, _, keys, decoded = codec.decode_table_body(MENU.opcode, data[5:], "tuple", columns)
    assert keys == MENU.required_keys
    assert decoded == [tuple(r[c] for c in columns) for r in rows]


@pytest.mark.parametrize("row_type", ROW_TYPES)
@pytest.mark.parametrize("spec", TABLE_PARAMS)
def test_key_order_inside_rows_is_free(codec, spec, row_type):
    rows = sample_rows(spec, 30, seed=1)
    rng = random.Random(spec.name)
    body = table_body(codec, [shuffled(r, rng) for r in rows], batch_number=9, status=0)
    assert codec.decode_table_body(spec.opcode, body, row_type) == (
        9, 0, spec.required_keys, expected_rows(spec, rows, row_type))


@pytest.mark.parametrize("projected", [False, True])
def test_dict_rows_follow_the_keys_order(codec, projected):
    # dict rows list their keys in ``keys`` order, whatever order each row had on the wire
    rows = sample_rows(MENU, 10)
    rng = random.Random(5)
    pairs = [shuffled(r, rng) for r in rows]
    _, _, keys, decoded = codec.decode_table_body(MENU.opcode, table_body(codec, pairs), "dict",
                                                  projected=projected)
    assert keys == (tuple(k for k, _ in pairs[0]) if projected else MENU.required_keys)
    assert [list(row) for row in decoded] == [list(keys)] * len(rows)


@pytest.mark.parametrize("projected", [False, True])
@pytest.mark.parametrize("spec", TABLE_PARAMS)
def test_dict_keys_are_the_interned_spec_keys(codec, spec, projected):
    rows = sample_rows(spec, 5)
    rng = random.Random(7)
    body = table_body(codec, [shuffled(r, rng) for r in rows])
    _, _, keys, decoded = codec.decode_table_body(spec.opcode, body, "dict", projected=projected)
    canonical = {id(k) for k in spec.required_keys}
    assert {id(k) for k in keys} == canonical
    # the very same objects in every row, not just equal strings
    for row in decoded:
        assert sorted(row) == sorted(spec.required_keys)
        assert {id(k) for k in row} == canonical


def test_object_rows_have_attribute_access(codec):
    row = sample_rows(USERS, 1)[0]
    data = codec.encode_table_frame(USERS.opcode, 0, 0, [row])
    (user,) = codec.decode_table_body(USERS.opcode, data[5:])[3]
    assert user.user_id == row["user_id"] and user.registered_at == row["registered_at"]
    assert user._asdict() == row


# -- either side of the pure codec's one-pass row scan -------------------------------------
# The pure codec reads a batch whose rows share row 0's key order and whose
# values are short (< 256 bytes) and free of control characters in one regex
# pass, and any other batch value by value; the C codec reads all alike.
# These batches sit on both sides of that line.

TRANSACTIONS = TABLES_BY_NAME["transactions"]
EDGE_VALUES = ["", "plain", "a" * 255, "a" * 256, "é" * 127, "é" * 128, "line\nbreak", "tab\t",
               "\x00", "\x1f", "\x7f", "\u0085", "😀 Café", "store_id", "\x08\x00\x00\x00store_id"]


def plain_rows(spec, n):
    return [{k: f"{k}-{r}" for k in spec.required_keys} for r in range(n)]


@pytest.mark.parametrize("row_type", ROW_TYPES)
@pytest.mark.parametrize("value", EDGE_VALUES, ids=[ascii(v)[:20] for v in EDGE_VALUES])
def test_values_either_side_of_the_one_pass_scan(codec, value, row_type):
    rows = plain_rows(TRANSACTIONS, 5)
    rows[3]["user_id"] = value
    body = table_body(codec, rows, batch_number=7)
    assert codec.decode_table_body(TRANSACTIONS.opcode, body, row_type) == (
        7, 0, TRANSACTIONS.required_keys, expected_rows(TRANSACTIONS, rows, row_type))


@pytest.mark.parametrize("row_type", ROW_TYPES)
def test_header_bytes_outside_ascii(codec, row_type):
    rows = plain_rows(TRANSACTIONS, 0xBF)  # the row count's low byte is not ASCII
    body = table_body(codec, rows, batch_number=-1)
    assert codec.decode_table_body(TRANSACTIONS.opcode, body, row_type)[::3] == (
        -1, expected_rows(TRANSACTIONS, rows, row_type))


@pytest.mark.parametrize("row_type", ROW_TYPES)
@pytest.mark.parametrize("spec", TABLE_PARAMS)
def test_rows_sharing_an_order_other_than_the_spec(codec, spec, row_type):
    rows = plain_rows(spec, 12)
    order = list(reversed(spec.required_keys))
    pairs = [[(k, r[k]) for k in order] for r in rows]
    expected = (0, 0, spec.required_keys, expected_rows(spec, rows, row_type))
    assert codec.decode_table_body(spec.opcode, table_body(codec, pairs), row_type) == expected
    pairs[5] = list(rows[5].items())  # one row back in spec order
    assert codec.decode_table_body(spec.opcode, table_body(codec, pairs), row_type) == expected


# -- decode errors ----------------------------------------------------------------------

def patch_i32(body, offset, value):
    """``body`` with the i32 at ``offset`` overwritten: a length field gone wrong."""
    out = bytearray(body)
    struct.pack_into("<i", out, offset, value)
    return bytes(out)


def pairs_replacing(row, old_key, new_key):
    """The row's pairs with ``old_key`` written as ``new_key``, in the same place."""
    return [(new_key if k == old_key else k, v) for k, v in row.items()]


ROW = {"product_id": "1", "name": "Espresso", "category": "coffee", "price": "6.0",
       "is_seasonal": "False", "available_from": "", "available_to": ""}
ROW_SIZE = 4 + sum(8 + len(k) + len(v) for k, v in ROW.items())  # ASCII: one byte a char

SAME = object()  # the projected decode fails with the same message
DECODES = object()  # the projected decode accepts the body


def case(case_id, build, message, projected=SAME):
    """A malformed menu_items body: its error as a full batch and as a projection."""
    return pytest.param(build, message, message if projected is SAME else projected, id=case_id)


# Every error carries opcode 4.
DECODE_ERRORS = [
    case("empty", lambda c: b"", "truncated: need 13 bytes at offset 0, have 0"),
    case("short-header", lambda c: table_body(c, [])[:12],
         "truncated: need 13 bytes at offset 0, have 12"),
    case("negative-rows", lambda c: table_body(c, [], n_rows=-1), "negative row count -1"),
    case("min-rows", lambda c: table_body(c, [ROW], n_rows=-2**31), f"negative row count {-2**31}"),
    case("million-rows", lambda c: table_body(c, [ROW], n_rows=1_000_000),
         f"row count 1000000 exceeds what {ROW_SIZE} body bytes can hold"),
    case("max-rows-empty", lambda c: table_body(c, [], n_rows=2**31 - 1),
         "row count 2147483647 exceeds what 0 body bytes can hold"),
    case("rows-one-over", lambda c: table_body(c, [[]], n_rows=2, pair_counts={0: 7}),
         "row count 2 exceeds what 4 body bytes can hold"),
    case("status-3", lambda c: table_body(c, [ROW], status=3), "invalid batch status 3"),
    case("status-255", lambda c: table_body(c, [ROW], status=255), "invalid batch status 255"),
    case("too-few-pairs", lambda c: table_body(c, [list(ROW.items())[:-1]]),
         "row 0: expected 7 pairs, got 6", DECODES),
    case("too-many-pairs", lambda c: table_body(c, [list(ROW.items()) + [("x", "y")]]),
         "row 0: expected 7 pairs, got 8",
         "row 0: expected at most 7 pairs, got 8"),
    case("negative-pairs", lambda c: table_body(c, [ROW], pair_counts={0: -1}),
         "row 0: expected 7 pairs, got -1",
         "row 0: expected at most 7 pairs, got -1"),
    case("empty-row", lambda c: table_body(c, [[]]), "row 0: expected 7 pairs, got 0", DECODES),
    case("second-row-pairs", lambda c: table_body(c, [ROW, list(ROW.items())[1:]]),
         "row 1: expected 7 pairs, got 6"),
    case("duplicate-key", lambda c: table_body(c, [pairs_replacing(ROW, "price", "name")]),
         "row 0: duplicate key 'name'"),
    case("duplicate-key-row-2",
         lambda c: table_body(c, [ROW, ROW, pairs_replacing(ROW, "available_to", "product_id")]),
         "row 2: duplicate key 'product_id'"),
    case("unknown-key", lambda c: table_body(c, [pairs_replacing(ROW, "price", "bogus")]),
         "row 0: unknown key 'bogus'"),
    case("key-other-table", lambda c: table_body(c, [pairs_replacing(ROW, "price", "store_id")]),
         "row 0: unknown key 'store_id'"),
    case("key-wrong-case", lambda c: table_body(c, [pairs_replacing(ROW, "name", "Name")]),
         "row 0: unknown key 'Name'"),
    case("key-prefix", lambda c: table_body(c, [pairs_replacing(ROW, "name", "nam")]),
         "row 0: unknown key 'nam'"),
    case("key-with-nul", lambda c: table_body(c, [pairs_replacing(ROW, "name", "name\x00")]),
         "row 0: unknown key 'name\\x00'"),
    case("key-longer", lambda c: table_body(c, [pairs_replacing(ROW, "name", "names")]),
         "row 0: unknown key 'names'"),
    case("empty-key", lambda c: table_body(c, [pairs_replacing(ROW, "name", "")]),
         "row 0: unknown key ''"),
    case("non-ascii-key", lambda c: table_body(c, [pairs_replacing(ROW, "name", "nämé")]),
         "row 0: unknown key 'nämé'"),
    case("bad-utf8-key", lambda c: table_body(c, [[(b"\xff", "x")] + list(ROW.items())[1:]]),
         "invalid UTF-8 in string at offset 17"),
    case("bad-utf8-value",
         lambda c: table_body(c, [[("product_id", b"\xc3\x28")] + list(ROW.items())[1:]]),
         "invalid UTF-8 in string at offset 31"),
    case("bad-utf8-value-row-1",
         lambda c: table_body(c, [ROW, [("product_id", b"ok\xed\xa0\x80")]
                                  + list(ROW.items())[1:]]),
         f"invalid UTF-8 in string at offset {13 + ROW_SIZE + 18}"),
    case("negative-key-length", lambda c: table_body(c, [ROW])[:17] + struct.pack("<i", -1),
         "negative string length -1 at offset 17"),
    case("key-length-high-byte", lambda c: patch_i32(table_body(c, [ROW]), 17, 10 | 0x100),
         f"truncated: need 266 bytes at offset 21, have {ROW_SIZE - 8}"),
    case("key-length-other-byte", lambda c: patch_i32(table_body(c, [ROW] * 4), 17, 10 | 0x10000),
         f"truncated: need {10 | 0x10000} bytes at offset 21, have {4 * ROW_SIZE - 8}"),
    case("negative-value-length", lambda c: patch_i32(table_body(c, [ROW]), 31, -1),
         "negative string length -1 at offset 31"),
    case("value-past-the-end", lambda c: patch_i32(table_body(c, [ROW, ROW]), 31, 10_000),
         f"truncated: need 10000 bytes at offset 35, have {2 * ROW_SIZE - 22}"),
    # length prefixes that disagree with their values while every byte stays in place
    case("last-value-length-over", lambda c: patch_i32(table_body(c, [ROW]), 9 + ROW_SIZE, 1),
         f"truncated: need 1 bytes at offset {13 + ROW_SIZE}, have 0"),
    case("last-value-length-under",
         lambda c: patch_i32(table_body(c, [{**ROW, "available_to": "x"}]), 9 + ROW_SIZE, 0),
         "1 trailing bytes after 1 rows"),
    # (in row 2: rows 0 and 1 are read one by one to choose how to read the rest)
    case("lengths-trade-a-byte",  # row 2: "coffee" claims 7 bytes, "6.0" 2; same total
         lambda c: patch_i32(patch_i32(table_body(c, [ROW] * 3), 2 * ROW_SIZE + 68, 7),
                             2 * ROW_SIZE + 87, 2),
         f"truncated: need {0x70 << 24} bytes at offset {2 * ROW_SIZE + 83}, "
         f"have {ROW_SIZE - 70}"),
    case("long-value-short-length",  # row 2: 300 bytes of "c" that claim to be 6
         lambda c: patch_i32(table_body(c, [ROW, ROW, {**ROW, "category": "c" * 300}]),
                             2 * ROW_SIZE + 68, 6),
         f"truncated: need {0x63636363} bytes at offset {2 * ROW_SIZE + 82}, "
         f"have {ROW_SIZE + 225}"),
    case("trailing-byte", lambda c: table_body(c, [ROW]) + b"\x00",
         "1 trailing bytes after 1 rows"),
    case("trailing-after-zero-rows", lambda c: table_body(c, []) + b"abcd",
         "4 trailing bytes after 0 rows"),
    case("trailing-row", lambda c: table_body(c, [ROW, ROW], n_rows=1),
         f"{ROW_SIZE} trailing bytes after 1 rows"),
]


@pytest.mark.parametrize("build,message,projected_message", DECODE_ERRORS)
def test_decode_error(codec, build, message, projected_message):
    body = build(codec)
    for row_type in ROW_TYPES:
        with protocol_error(message, MENU.opcode):
            codec.decode_table_body(MENU.opcode, body, row_type)
        if projected_message is DECODES:
            codec.decode_table_body(MENU.opcode, body, row_type, projected=True)
            continue
        with protocol_error(projected_message, MENU.opcode):
            codec.decode_table_body(MENU.opcode, body, row_type, projected=True)


@pytest.mark.parametrize("spec", TABLE_PARAMS)
def test_every_prefix_of_a_body_is_an_error(codec, spec):
    rows = sample_rows(spec, 2, seed=3)
    rows[1][spec.required_keys[0]] = "Café ☕"
    body = table_body(codec, [shuffled(r, random.Random(1)) for r in rows], batch_number=1)
    assert codec.decode_table_body(spec.opcode, body)[3] == expected_rows(spec, rows, "object")
    for cut in range(len(body)):
        for projected in (False, True):
            with pytest.raises(ProtocolError) as info:
                codec.decode_table_body(spec.opcode, body[:cut], "dict", projected=projected)
            assert info.value.opcode == spec.opcode
            assert TRUNCATION.fullmatch(str(info.value)), (cut, str(info.value))


@pytest.mark.parametrize("spec", TABLE_PARAMS)
def test_missing_key_for_every_table(codec, spec):
    row = sample_rows(spec, 1)[0]
    for key in spec.required_keys:
        pairs = [(k, v) for k, v in row.items() if k != key]
        n = len(spec.required_keys)
        with protocol_error(f"row 0: expected {n} pairs, got {n - 1}", spec.opcode):
            codec.decode_table_body(spec.opcode, table_body(codec, [pairs]))
        # the count is right but a key repeats in the missing key's place
        other = spec.required_keys[0] if key != spec.required_keys[0] else spec.required_keys[1]
        pairs.append((other, "again"))
        with protocol_error(f"row 0: duplicate key {other!r}", spec.opcode):
            codec.decode_table_body(spec.opcode, table_body(codec, [pairs]))


def test_ok_body_right_after_an_error_still_decodes(codec):
    # no state leaks from a failed decode into the next one
    with pytest.raises(ProtocolError):
        codec.decode_table_body(MENU.opcode,
                                table_body(codec, [pairs_replacing(ROW, "name", "bogus")]))
    assert codec.decode_table_body(MENU.opcode, table_body(codec, [ROW]), "dict")[3] == [ROW]


# -- decode argument errors -----------------------------------------------------------------

@pytest.mark.parametrize("opcode", [0, 1, 3, 9, 10, -1, "4", None])
def test_decode_not_a_table_opcode(codec, opcode):
    with error(ValueError, f"not a table opcode: {opcode!r}"):
        codec.decode_table_body(opcode, table_body(codec, [ROW]))


@pytest.mark.parametrize("row_type", ["list", "", "Object", None])
def test_decode_bad_row_type(codec, row_type):
    with error(ValueError, f"row_type must be 'object', 'dict' or 'tuple', not {row_type!r}"):
        codec.decode_table_body(MENU.opcode, table_body(codec, [ROW]), row_type)


def test_decode_arguments_are_checked_before_the_body(codec):
    with error(ValueError, "row_type must be 'object', 'dict' or 'tuple', not 'list'"):
        codec.decode_table_body(MENU.opcode, b"garbage", "list")
    with error(ValueError, "unknown column 'bogus' for table menu_items"):
        codec.decode_table_body(MENU.opcode, b"garbage", "tuple", ["bogus"])


@pytest.mark.parametrize("columns,message", [
    (["name", "bogus"], "unknown column 'bogus' for table menu_items"),
    (["store_id"], "unknown column 'store_id' for table menu_items"),
    ([1], "unknown column 1 for table menu_items"),
    (["name", "price", "name"], "duplicate column 'name'"),
])
def test_decode_bad_columns(codec, columns, message):
    with error(ValueError, message):
        codec.decode_table_body(MENU.opcode, table_body(codec, [ROW]), "tuple", columns)


# -- encode errors -----------------------------------------------------------------------

@pytest.mark.parametrize("opcode", [0, 1, 2, 3, 9, 10, 255, "4", 4.0])
def test_encode_not_a_table_opcode(codec, opcode):
    with error(ValueError, f"not a table opcode: {opcode!r}"):
        codec.encode_table_frame(opcode, 0, 0, [ROW])


@pytest.mark.parametrize("columns,message", [
    (["name", "bogus"], "unknown column 'bogus' for table menu_items"),
    (["table_type"], "unknown column 'table_type' for table menu_items"),
    ([None], "unknown column None for table menu_items"),
    (["price", "price"], "duplicate column 'price'"),
])
def test_encode_bad_columns(codec, columns, message):
    with error(ValueError, message):
        codec.encode_table_frame(MENU.opcode, 0, 0, [ROW], columns)


@pytest.mark.parametrize("status,message", [
    (3, "invalid batch status 3"),
    (-1, "invalid batch status -1"),
    (255, "invalid batch status 255"),
    ("1", "invalid batch status '1'"),
    (None, "invalid batch status None"),
])
def test_encode_bad_status(codec, status, message):
    with error(ValueError, message):
        codec.encode_table_frame(MENU.opcode, 0, status, [ROW])


@pytest.mark.parametrize("batch,exc,message", [
    (2**63, ValueError, f"batch_number out of range [{-2**63}, {2**63 - 1}]: {2**63}"),
    (-2**63 - 1, ValueError, f"batch_number out of range [{-2**63}, {2**63 - 1}]: {-2**63 - 1}"),
    ("1", TypeError, "batch_number must be int, not str"),
    (1.0, TypeError, "batch_number must be int, not float"),
])
def test_encode_bad_batch_number(codec, batch, exc, message):
    with error(exc, message):
        codec.encode_table_frame(MENU.opcode, batch, 0, [ROW])


def _without(row, key):
    return {k: v for k, v in row.items() if k != key}


ENCODE_ROW_ERRORS = [
    ("dict-missing-key", [ROW, _without(ROW, "price")], ValueError,
     f"row 1: expected keys {list(MENU.required_keys)}, got {list(_without(ROW, 'price'))}"),
    ("dict-extra-key", [dict(ROW, extra="x")], ValueError,
     f"row 0: expected keys {list(MENU.required_keys)}, got {list(dict(ROW, extra='x'))}"),
    ("dict-wrong-key", [dict(_without(ROW, "price"), cost="1")], ValueError,
     "row 0: missing key 'price'"),
    ("list-short", [list(ROW.values())[:-1]], ValueError, "row 0: expected 7 values, got 6"),
    ("tuple-long", [tuple(ROW.values()) + ("x",)], ValueError, "row 0: expected 7 values, got 8"),
    ("other-row-class", [USERS.row_class("1", "f", "2000-01-01", "x")], ValueError,
     "row 0: expected 7 values, got 4"),
    ("int-value", [dict(ROW, price=6)], TypeError, "row 0: value of 'price' must be str, not int"),
    ("bytes-value", [dict(ROW, name=b"x")], TypeError,
     "row 0: value of 'name' must be str, not bytes"),
    ("none-in-object", [MENU.row_class(**dict(ROW, category=None))], TypeError,
     "row 0: value of 'category' must be str, not NoneType"),
    ("none-in-list", [ROW, [None] + list(ROW.values())[1:]], TypeError,
     "row 1: value of 'product_id' must be str, not NoneType"),
    ("int-row", [7], TypeError, "row 0: expected a mapping, a RawMenuItems or a sequence, not int"),
    ("str-row", [ROW, "product_id"], TypeError,
     "row 1: expected a mapping, a RawMenuItems or a sequence, not str"),
    ("set-row", [set(ROW)], TypeError,
     "row 0: expected a mapping, a RawMenuItems or a sequence, not set"),
    ("none-row", [None], TypeError,
     "row 0: expected a mapping, a RawMenuItems or a sequence, not NoneType"),
]


@pytest.mark.parametrize("rows,exc,message",
                         [pytest.param(r, e, m, id=i) for i, r, e, m in ENCODE_ROW_ERRORS])
def test_encode_bad_rows(codec, rows, exc, message):
    with error(exc, message):
        codec.encode_table_frame(MENU.opcode, 0, 0, rows)


def test_encode_dict_rows_against_a_column_subset(codec):
    columns = ["price", "name"]
    expected = frame(MENU.opcode, table_body(codec, [[("price", "p"), ("name", "n")]]))
    assert codec.encode_table_frame(MENU.opcode, 0, 0, [{"name": "n", "price": "p"}],
                                    columns) == expected
    full = dict(ROW)
    with error(ValueError, f"row 0: expected keys {columns}, got {list(full)}"):
        codec.encode_table_frame(MENU.opcode, 0, 0, [full], columns)


def test_encode_row_objects_against_a_column_subset(codec):
    row = MENU.row_class(**ROW)
    columns = ("price", "product_id")
    expected = frame(MENU.opcode,
                     table_body(codec, [[("price", "6.0"), ("product_id", "1")]], status=1))
    assert codec.encode_table_frame(MENU.opcode, 0, 1, [row], columns) == expected


def test_encode_dict_keys_order_does_not_matter(codec):
    rng = random.Random(3)
    reordered = dict(shuffled(ROW, rng))
    assert list(reordered) != list(ROW)
    assert codec.encode_table_frame(MENU.opcode, 0, 0, [reordered]) == codec.encode_table_frame(
        MENU.opcode, 0, 0, [ROW])


# -- projected bodies ----------------------------------------------------------------------

@pytest.mark.parametrize("spec", TABLE_PARAMS)
def test_projected_round_trip(codec, spec):
    rows = sample_rows(spec, 12)
    kept = spec.kept_columns
    projected_rows = [{k: r[k] for k in kept} for r in rows]
    data = codec.encode_table_frame(spec.opcode, 3, 0, projected_rows, kept)
    # row objects and sequences project to the same bytes
    objects = [spec.row_class(**r) for r in rows]
    assert codec.encode_table_frame(spec.opcode, 3, 0, objects, kept) == data
    assert codec.encode_table_frame(spec.opcode, 3, 0, [list(r.values()) for r in projected_rows],
                                    kept) == data
    body = data[5:]
    decoded = codec.decode_table_body(spec.opcode, body, "dict", projected=True)
    assert decoded == (3, 0, kept, projected_rows)
    _, _, _, objects = codec.decode_table_body(spec.opcode, body, "object", projected=True)
    assert objects == [spec.row_class(**{k: r.get(k) for k in spec.required_keys})
                       for r in projected_rows]
    assert all(type(o) is spec.row_class for o in objects)
    _, _, _, full = codec.decode_table_body(spec.opcode, body, "tuple", projected=True)
    assert full == [tuple(r.get(k) for k in spec.required_keys) for r in projected_rows]
    _, _, _, picked = codec.decode_table_body(spec.opcode, body, "tuple", tuple(reversed(kept)),
                                              True)
    assert picked == [tuple(r[k] for k in reversed(kept)) for r in projected_rows]
    # a projection is not a full batch
    n = len(spec.required_keys)
    with protocol_error(f"row 0: expected {n} pairs, got {len(kept)}", spec.opcode):
        codec.decode_table_body(spec.opcode, body)


def test_projected_keys_follow_the_first_row(codec):
    body = table_body(codec, [
        [("price", "1"), ("name", "a")],
        [("name", "b"), ("price", "2")],
        [("price", "3"), ("name", "c")],
    ])
    batch, status, keys, rows = codec.decode_table_body(MENU.opcode, body, "dict", projected=True)
    assert keys == ("price", "name")
    assert [list(row.items()) for row in rows] == [
        [("price", "1"), ("name", "a")], [("price", "2"), ("name", "b")],
        [("price", "3"), ("name", "c")]]
    _, _, _, objects = codec.decode_table_body(MENU.opcode, body, "object", projected=True)
    assert objects[1] == MENU.row_class(None, "b", None, "2", None, None, None)


def test_projected_full_key_set_in_any_order(codec):
    rows = sample_rows(MENU, 4)
    rng = random.Random(11)
    pairs = [shuffled(r, rng) for r in rows]
    keys = codec.decode_table_body(MENU.opcode, table_body(codec, pairs), projected=True)[2]
    assert keys == tuple(k for k, _ in pairs[0])
    assert codec.decode_table_body(MENU.opcode, table_body(codec, pairs), projected=True)[3] == [
        MENU.row_class(**r) for r in rows]


@pytest.mark.parametrize("row_type", ROW_TYPES)
def test_projected_rows_without_pairs(codec, row_type):
    body = table_body(codec, [[], []])
    _, _, keys, rows = codec.decode_table_body(USERS.opcode, body, row_type, projected=True)
    assert keys == ()
    assert rows == {"object": [USERS.row_class(None, None, None, None)] * 2, "dict": [{}, {}],
                    "tuple": [(None,) * 4] * 2}[row_type]


PROJECTED_ERRORS = [
    ("fewer-keys-later", [[("name", "a"), ("price", "1")], [("name", "b")]], None,
     "row 1: expected 2 pairs, got 1"),
    ("more-keys-later", [[("name", "a")], [("name", "b"), ("price", "1")]], None,
     "row 1: expected 1 pairs, got 2"),
    ("key-outside-columns",
     [[("name", "a"), ("price", "1")], [("name", "b"), ("category", "c")]], None,
     "row 1: key 'category' not in the batch's columns"),
    ("unknown-key-first-row", [[("name", "a"), ("bogus", "1")]], None,
     "row 0: unknown key 'bogus'"),
    ("unknown-key-later", [[("name", "a")], [("bogus", "1")]], None, "row 1: unknown key 'bogus'"),
    ("duplicate-first-row", [[("name", "a"), ("name", "b")]], None, "row 0: duplicate key 'name'"),
    ("duplicate-later", [[("name", "a"), ("price", "1")], [("price", "2"), ("price", "3")]], None,
     "row 1: duplicate key 'price'"),
    ("too-many-pairs", [[("name", "a")] * 8], {0: 8}, "row 0: expected at most 7 pairs, got 8"),
    ("negative-pairs", [[]], {0: -1}, "row 0: expected at most 7 pairs, got -1"),
    ("min-pairs", [[]], {0: -2**31}, f"row 0: expected at most 7 pairs, got {-2**31}"),
]


@pytest.mark.parametrize("rows,counts,message",
                         [pytest.param(r, c, m, id=i) for i, r, c, m in PROJECTED_ERRORS])
def test_projected_decode_error(codec, rows, counts, message):
    body = table_body(codec, rows, pair_counts=counts)
    for row_type in ROW_TYPES:
        with protocol_error(message, MENU.opcode):
            codec.decode_table_body(MENU.opcode, body, row_type, projected=True)


# -- EOF bodies ---------------------------------------------------------------------------

@pytest.mark.parametrize("batch", [0, 7, -1, 2**63 - 1, -2**63])
@pytest.mark.parametrize("table", list(TABLES_BY_NAME))
def test_eof_round_trip(codec, table, batch):
    data = codec.encode_eof_frame(batch, table)
    assert type(data) is bytes
    assert data == frame(9, eof_body(codec, table, batch_number=batch))
    opcode, length = codec.read_frame_header(data)
    assert (opcode, length) == (9, len(data) - 5)
    assert codec.decode_eof_body(data[5:]) == (batch, table)
    assert codec.decode_eof_body(memoryview(data)[5:]) == (batch, table)


@pytest.mark.parametrize("table", [s.name for s in TABLES_BY_OPCODE.values()])
def test_eof_body_is_a_one_row_table_body(codec, table):
    # [i32 1][i64 0][u8 1][i32 1]["table_type"][table]
    key, value = b"table_type", table.encode()
    expected = (struct.pack("<iqBi", 1, 0, 1, 1) + struct.pack("<i", len(key)) + key
                + struct.pack("<i", len(value)) + value)
    assert codec.encode_eof_frame(0, table)[5:] == expected


@pytest.mark.parametrize("table_type,batch,exc,message", [
    ("bogus", 0, ValueError, "unknown table type 'bogus'"),
    ("MENU_ITEMS", 0, ValueError, "unknown table type 'MENU_ITEMS'"),
    ("", 0, ValueError, "unknown table type ''"),
    ("users", 2**63, ValueError, f"batch_number out of range [{-2**63}, {2**63 - 1}]: {2**63}"),
    ("users", "0", TypeError, "batch_number must be int, not str"),
])
def test_encode_eof_invalid(codec, table_type, batch, exc, message):
    with error(exc, message):
        codec.encode_eof_frame(batch, table_type)


def _eof_pairs(codec, pairs, n_pairs=None):
    counts = None if n_pairs is None else {0: n_pairs}
    return table_body(codec, [pairs], status=1, pair_counts=counts)


EOF_ERRORS = [
    ("empty", lambda c: b"", "truncated: need 13 bytes at offset 0, have 0"),
    ("short-header", lambda c: eof_body(c)[:12], "truncated: need 13 bytes at offset 0, have 12"),
    ("negative-rows", lambda c: eof_body(c, n_rows=-1), "negative row count -1"),
    ("zero-rows", lambda c: eof_body(c, n_rows=0), "EOF: expected 1 row, got 0"),
    ("two-rows", lambda c: eof_body(c, n_rows=2), "EOF: expected 1 row, got 2"),
    ("status-continue", lambda c: eof_body(c, status=0), "EOF: expected status 1 (EOF), got 0"),
    ("status-cancel", lambda c: eof_body(c, status=2), "EOF: expected status 1 (EOF), got 2"),
    ("status-3", lambda c: eof_body(c, status=3), "invalid batch status 3"),
    ("rows-before-status", lambda c: eof_body(c, n_rows=2, status=0), "EOF: expected 1 row, got 2"),
    ("no-pair-count", lambda c: eof_body(c)[:13], "truncated: need 4 bytes at offset 13, have 0"),
    ("zero-pairs", lambda c: _eof_pairs(c, []), "EOF: expected 1 pair, got 0"),
    ("two-pairs", lambda c: _eof_pairs(c, [("table_type", "users"), ("x", "y")]),
     "EOF: expected 1 pair, got 2"),
    ("negative-pairs", lambda c: _eof_pairs(c, [("table_type", "users")], -1),
     "EOF: expected 1 pair, got -1"),
    ("wrong-key", lambda c: eof_body(c, key="table"),
     "EOF: expected key 'table_type', got 'table'"),
    ("required-key-instead", lambda c: eof_body(c, key="user_id"),
     "EOF: expected key 'table_type', got 'user_id'"),
    ("bad-utf8-key", lambda c: eof_body(c, key=b"table_typ\xff"),
     "invalid UTF-8 in string at offset 17"),
    ("negative-key-length", lambda c: eof_body(c)[:17] + struct.pack("<i", -1),
     "negative string length -1 at offset 17"),
    ("unknown-table", lambda c: eof_body(c, "bogus"), "EOF: unknown table type 'bogus'"),
    ("empty-table", lambda c: eof_body(c, ""), "EOF: unknown table type ''"),
    ("skipped-folder", lambda c: eof_body(c, "vouchers"), "EOF: unknown table type 'vouchers'"),
    ("upper-case-table", lambda c: eof_body(c, "USERS"), "EOF: unknown table type 'USERS'"),
    ("bad-utf8-table", lambda c: eof_body(c, b"users\xc3"), "invalid UTF-8 in string at offset 31"),
    ("trailing", lambda c: eof_body(c, "users") + b"\x00\x00", "2 trailing bytes after 1 rows"),
]


@pytest.mark.parametrize("build,message", [pytest.param(b, m, id=i) for i, b, m in EOF_ERRORS])
def test_eof_decode_error(codec, build, message):
    with protocol_error(message, 9):
        codec.decode_eof_body(build(codec))


def test_eof_every_prefix_is_an_error(codec):
    body = eof_body(codec, "transaction_items", batch_number=3)
    assert codec.decode_eof_body(body) == (3, "transaction_items")
    for cut in range(len(body)):
        with pytest.raises(ProtocolError) as info:
            codec.decode_eof_body(body[:cut])
        assert info.value.opcode == 9
        assert str(info.value).startswith("truncated: need "), (cut, str(info.value))


# -- FINISHED and ACK bodies ------------------------------------------------------------------

@pytest.mark.parametrize("agency", [0, 1, -1, 2**31 - 1, -2**31])
def test_finished_round_trip(codec, agency):
    data = codec.encode_finished_frame(agency)
    assert data == b"\x03\x04\x00\x00\x00" + struct.pack("<i", agency)
    assert codec.read_frame_header(data) == (3, 4)
    assert codec.decode_finished_body(data[5:]) == agency
    assert codec.decode_finished_body(bytearray(data[5:])) == agency


@pytest.mark.parametrize("agency,exc,message", [
    (2**31, ValueError, f"agency_id out of range [{-2**31}, {2**31 - 1}]: {2**31}"),
    (-2**31 - 1, ValueError, f"agency_id out of range [{-2**31}, {2**31 - 1}]: {-2**31 - 1}"),
    ("1", TypeError, "agency_id must be int, not str"),
])
def test_encode_finished_invalid(codec, agency, exc, message):
    with error(exc, message):
        codec.encode_finished_frame(agency)


@pytest.mark.parametrize("size", [0, 3, 5, 8, 100])
def test_finished_body_must_be_four_bytes(codec, size):
    with protocol_error(f"FINISHED body must be 4 bytes, got {size}", 3):
        codec.decode_finished_body(b"\x01" * size)


@pytest.mark.parametrize("kind", BUFFER_TYPES)
@pytest.mark.parametrize("opcode", [1, 2])
def test_ack_empty_body(codec, opcode, kind):
    assert codec.decode_ack_body(opcode, kind(b"")) is None


@pytest.mark.parametrize("size", [1, 4, 1000])
@pytest.mark.parametrize("opcode,name", [(1, "BATCH_RECV_SUCCESS"), (2, "BATCH_RECV_FAIL")])
def test_ack_body_must_be_empty(codec, opcode, name, size):
    with protocol_error(f"{name} body must be empty, got {size} bytes", opcode):
        codec.decode_ack_body(opcode, b"\x00" * size)


@pytest.mark.parametrize("opcode", [0, 3, 4, 9, 10, "1"])
def test_ack_not_an_ack_opcode(codec, opcode):
    with error(ValueError, f"not an ACK opcode: {opcode!r}"):
        codec.decode_ack_body(opcode, b"")


# -- opcodes as enum members, resource hygiene ---------------------------------------------

def test_opcodes_may_be_enum_members(codec):
    row = sample_rows(USERS, 1)[0]
    data = codec.encode_table_frame(Opcodes.NEW_USERS, 1, BatchStatus.CANCEL, [row])
    assert data == codec.encode_table_frame(8, 1, 2, [row])
    assert codec.decode_table_body(Opcodes.NEW_USERS, data[5:], "dict") == (
        1, 2, USERS.required_keys, [row])
    assert codec.encode_frame(Opcodes.EOF, b"") == b"\x09\x00\x00\x00\x00"
    assert codec.decode_ack_body(Opcodes.BATCH_RECV_FAIL, b"") is None
    with protocol_error("BATCH_RECV_FAIL body must be empty, got 1 bytes", 2) as info:
        codec.decode_ack_body(Opcodes.BATCH_RECV_FAIL, b"\x00")
    assert type(info.value.opcode) is int


def _decoders(codec):
    """Every body decoder, each taking one buffer."""
    return {
        "table": lambda b: codec.decode_table_body(MENU.opcode, b, "dict"),
        "table-projected": lambda b: codec.decode_table_body(MENU.opcode, b, "tuple", None, True),
        "project": lambda b: codec.project_databatch(MENU.opcode, b, [1], [2], {}, 0, 0),
        "eof": codec.decode_eof_body,
        "finished": codec.decode_finished_body,
        "ack": lambda b: codec.decode_ack_body(1, b),
        "databatch": codec.decode_databatch_body,
        "string-map": lambda b: codec.read_string_map(b, 13),
        "frame-header": codec.read_frame_header,
        "u8-dict": codec.read_u8_dict,
        "check-embedded": codec.check_embedded,
        "encode-frame": lambda b: codec.encode_frame(4, b),
        "writer": lambda b: codec.Writer().write_bytes(b),
    }


@pytest.mark.parametrize("valid", [True, False], ids=["valid", "truncated"])
def test_buffers_are_released(codec, valid):
    """No call keeps a buffer export: the bytearray can be resized afterwards."""
    body = codec.encode_table_frame(MENU.opcode, 1, 0, sample_rows(MENU, 3))[5:]
    if not valid:
        body = body[:-3]
    for name, decode in _decoders(codec).items():
        for view in (False, True):
            data = bytearray(body)
            buf = memoryview(data) if view else data
            try:
                decode(buf)
            except (ProtocolError, ValueError):
                pass
            if view:
                buf.release()
            data.append(0)  # BufferError if an export leaked
            del data[:]


@pytest.mark.skipif(not hasattr(sys, "getrefcount"),
                    reason="no reference counts on this interpreter (PyPy)")
@pytest.mark.parametrize("projected", [False, True])
@pytest.mark.parametrize("valid", [True, False], ids=["valid", "bad-last-row"])
def test_no_reference_leaks(codec, valid, projected):
    rows = sample_rows(MENU, 40)
    last = list(rows[-1].items())[:-1] if not valid else rows[-1]
    body = table_body(codec, rows[:-1] + [last])
    key = MENU.required_keys[0]
    calls = [lambda: codec.decode_table_body(MENU.opcode, body, row_type, projected=projected)
             for row_type in ROW_TYPES]
    calls.append(lambda: codec.project_databatch(MENU.opcode, body, [1], [2], {}, 0, 0))
    for call in calls:
        for _ in range(3):  # warm up any caches
            try:
                call()
            except ProtocolError:
                pass
        gc.collect()
        before = sys.getrefcount(key), sys.getrefcount(body)
        for _ in range(50):
            try:
                call()
            except ProtocolError:
                pass
        gc.collect()
        assert (sys.getrefcount(key), sys.getrefcount(body)) == before
