"""decode_columns: a table frame (or a DataBatch embedding one) as numpy columns."""
from __future__ import annotations

import math
import random
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastframe.errors import ProtocolError
from fastframe.schema import TABLES_BY_NAME
from wire import databatch_body, frame, sample_rows, shuffled, table_body

ITEMS = TABLES_BY_NAME["transaction_items"]
ITEM_ROWS = [
    {"transaction_id": f"t{i}", "item_id": str(i % 8 + 1), "quantity": str(i % 3 + 1),
     "unit_price": "9.5", "subtotal": f"{(i % 3 + 1) * 9.5}", "created_at": "2024-01-01 07:00:00"}
    for i in range(50)
]


def items_frame(codec, rows=ITEM_ROWS, order_seed=None) -> bytes:
    if order_seed is None:
        return codec.encode_table_frame(ITEMS.opcode, 3, 0, rows)
    rng = random.Random(order_seed)
    return frame(ITEMS.opcode, table_body(codec, [shuffled(r, rng) for r in rows],
                                          batch_number=3))


@pytest.mark.parametrize("order_seed", [None, 1], ids=["spec-order", "shuffled-keys"])
def test_every_column_as_str_objects_by_default(codec, order_seed):
    columns = codec.decode_columns(items_frame(codec, order_seed=order_seed))
    assert list(columns) == list(ITEMS.required_keys)
    for key, array in columns.items():
        assert array.dtype == object and array.shape == (len(ITEM_ROWS),)
        assert array.tolist() == [row[key] for row in ITEM_ROWS]


def test_numeric_columns_are_parsed(codec):
    columns = codec.decode_columns(items_frame(codec), ["quantity", "subtotal", "item_id"],
                                   {"quantity": "int64", "subtotal": np.float64})
    assert list(columns) == ["quantity", "subtotal", "item_id"]
    assert columns["quantity"].dtype == np.int64
    assert columns["quantity"].tolist() == [int(r["quantity"]) for r in ITEM_ROWS]
    assert columns["subtotal"].dtype == np.float64
    assert columns["subtotal"].tolist() == [float(r["subtotal"]) for r in ITEM_ROWS]
    assert columns["item_id"].dtype == object


@pytest.mark.parametrize("text, dtype, value", [
    ("-12", "int64", -12), ("+7", "int64", 7), ("9223372036854775807", "int64", 2**63 - 1),
    ("-9223372036854775808", "int64", -2**63), ("1e3", "float64", 1000.0),
    (".5", "float64", 0.5), ("5.", "float64", 5.0), ("-0.25E-2", "float64", -0.0025),
    ("", "float64", math.nan),
])
def test_number_grammar(codec, text, dtype, value):
    rows = [dict(ITEM_ROWS[0], quantity=text)]
    (array,) = codec.decode_columns(items_frame(codec, rows), ["quantity"],
                                    {"quantity": dtype}).values()
    got = array.tolist()[0]
    assert (math.isnan(got) if isinstance(value, float) and math.isnan(value) else got == value)


# Plain decimals either side of the C codec's short cut (at most 19 digits whose
# value fits in 2**53, at most 22 after the point) and forms it leaves to the full
# parser: every one must read as Python's float() does, to the last bit.
DECIMAL_EDGES = ["0", "-0", "-0.0", "+0.5", "5.", "0.1", "0.3", "18.0", "1.7976931348623157",
                 "9007199254740992", "9007199254740993", "9007199254740992.5",
                 "1234567890123456789", "12345678901234567890", "0.0000000000000000000001",
                 "0.00000000000000000000001", "123.4567890123456789012", "00000000000000000001.5",
                 "3.14159265358979323846264338327950288", "2.2250738585072014e-308", "1e22",
                 "1e23", "-.5E+3"]


@pytest.mark.parametrize("text", DECIMAL_EDGES)
def test_decimals_read_as_python_floats(codec, text):
    rows = [dict(ITEM_ROWS[0], quantity=text)]
    (array,) = codec.decode_columns(items_frame(codec, rows), ["quantity"],
                                    {"quantity": "float64"}).values()
    assert array[0].hex() == float(text).hex()


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.from_regex(r"[+-]?[0-9]{1,24}(\.[0-9]{0,26})?", fullmatch=True),
                      min_size=1, max_size=20))
def test_random_decimals_read_as_python_floats(codec, texts):
    rows = [dict(ITEM_ROWS[0], quantity=text) for text in texts]
    (array,) = codec.decode_columns(items_frame(codec, rows), ["quantity"],
                                    {"quantity": "float64"}).values()
    assert [x.hex() for x in array.tolist()] == [float(t).hex() for t in texts]


@pytest.mark.parametrize("text, dtype", [
    ("", "int64"), ("1.5", "int64"), ("9223372036854775808", "int64"), (" 1", "int64"),
    ("1_000", "float64"), ("inf", "float64"), ("nan", "float64"), ("0x10", "float64"),
    ("1e", "float64"), ("١٢", "int64"),
])
def test_text_outside_the_grammar_is_a_value_error(codec, text, dtype):
    rows = [ITEM_ROWS[0], dict(ITEM_ROWS[1], quantity=text)]
    message = f"column 'quantity', row 1: cannot parse {text!r} as {dtype}"
    with pytest.raises(ValueError, match=re.escape(message)):
        codec.decode_columns(items_frame(codec, rows), None, {"quantity": dtype})


def test_projected_batch_inside_a_databatch(codec):
    kept = ["transaction_id", "quantity"]
    inner = codec.encode_table_frame(ITEMS.opcode, 3, 1, [[r[k] for k in kept]
                                                          for r in ITEM_ROWS], kept)
    wrapped = frame(0, databatch_body(codec, inner))
    columns = codec.decode_columns(wrapped, dtypes={"quantity": "int64"})
    assert list(columns) == kept
    assert columns["quantity"].tolist() == [int(r["quantity"]) for r in ITEM_ROWS]
    with pytest.raises(ValueError, match=re.escape("column 'subtotal' is not in the batch")):
        codec.decode_columns(wrapped, ["subtotal"])


def test_zero_rows_give_empty_columns(codec):
    columns = codec.decode_columns(codec.encode_table_frame(ITEMS.opcode, 1, 1, []),
                                   dtypes={"subtotal": "float64"})
    assert all(len(a) == 0 for a in columns.values())
    assert columns["subtotal"].dtype == np.float64


@pytest.mark.parametrize("args, exc, message", [
    ((None, {"quantity": "int32"}), ValueError,
     "dtype of column 'quantity' must be float64, int64 or object"),
    ((["quantity"], {"subtotal": "float64"}), ValueError,
     "dtype given for column 'subtotal', which is not decoded"),
    ((["bogus"], None), ValueError, "column 'bogus' is not in the batch"),
])
def test_argument_errors(codec, args, exc, message):
    with pytest.raises(exc, match=re.escape(message)):
        codec.decode_columns(items_frame(codec), *args)


@pytest.mark.parametrize("data, message", [
    (lambda c: c.encode_eof_frame(1, "users"), "decode_columns needs a table batch, got opcode 9"),
    (lambda c: c.encode_table_frame(ITEMS.opcode, 1, 1, ITEM_ROWS[:2])[:-1],
     "does not match the"),
    (lambda c: frame(ITEMS.opcode, table_body(c, [[("transaction_id", "x")]])),
     "row 0: expected 6 pairs, got 1"),
])
def test_malformed_frames_are_protocol_errors(codec, data, message):
    with pytest.raises(ProtocolError, match=re.escape(message)):
        codec.decode_columns(data(codec))


def test_both_codecs_give_the_same_columns(both_codecs):
    spec = TABLES_BY_NAME["transactions"]
    rows = sample_rows(spec, 300, seed=5)
    data = both_codecs["python"].encode_table_frame(spec.opcode, 1, 0, rows)
    results = [both_codecs[name].decode_columns(data) for name in ("c", "python")]
    assert [list(r) for r in results] == [list(spec.required_keys)] * 2
    for key in spec.required_keys:
        assert results[0][key].tolist() == results[1][key].tolist() == [r[key] for r in rows]
