"""Decoding time grows linearly with the rows, on every interpreter and buffer shape.

On PyPy a slice of a ``memoryview.cast()`` is read one byte at a time whenever
it is read whole (``struct.unpack_from``, ``bytes()``): a DataBatch's embedded
body sliced that way made each field read copy the rest of the frame, and
decoding took quadratic time (``fastframe._buffers.byte_view``). Each case
compares two sizes measured in the same test, eight times as many rows in the
larger: linear time takes about 8 times as long, quadratic about 64 times.
"""
from __future__ import annotations

import time

import pytest

from fastframe.messages import decode_frame
from fastframe.schema import TABLES_BY_NAME
from wire import databatch_body, frame, sample_rows, table_body

TRANSACTIONS = TABLES_BY_NAME["transactions"]
SMALL, LARGE = 300, 2400
# Well above linear (8), well below quadratic (64): room for a busy machine.
MAX_RATIO = 24


def best_time(decode, payload) -> float:
    """The fastest of several decodes (the first ones warm PyPy's JIT up)."""
    times = []
    for _ in range(7):
        start = time.perf_counter()
        decode(payload)
        times.append(time.perf_counter() - start)
    return min(times)


def databatch_frame(codec, n_rows: int) -> bytes:
    embedded = frame(TRANSACTIONS.opcode, table_body(codec, sample_rows(TRANSACTIONS, n_rows)))
    return frame(0, databatch_body(codec, embedded))


def test_databatch_decode_time_is_linear_in_rows(codec):
    def decode(data):
        assert len(decode_frame(data).batch_msg.rows) in (SMALL, LARGE)
    small = best_time(decode, databatch_frame(codec, SMALL))
    large = best_time(decode, databatch_frame(codec, LARGE))
    assert large < MAX_RATIO * small, f"{LARGE} rows took {large / small:.1f} times {SMALL} rows"


def test_table_body_in_a_cast_slice_decodes_in_linear_time(codec):
    # A caller's own view of the body, sliced from a cast view: the shape that
    # PyPy reads byte by byte.
    def decode(body):
        rows = codec.decode_table_body(TRANSACTIONS.opcode, body, projected=True)[3]
        assert len(rows) in (SMALL, LARGE)

    def cast_slice(n_rows):
        body = table_body(codec, sample_rows(TRANSACTIONS, n_rows))
        return memoryview(frame(TRANSACTIONS.opcode, body)).cast("B")[5:]
    small = best_time(decode, cast_slice(SMALL))
    large = best_time(decode, cast_slice(LARGE))
    assert large < MAX_RATIO * small, f"{LARGE} rows took {large / small:.1f} times {SMALL} rows"
