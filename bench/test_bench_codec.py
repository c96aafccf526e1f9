"""pytest-benchmark cases for both codecs on 1 MiB client batches.

Run from the repository, on the installed package: ``pip install '.[bench]' &&
python -m pytest bench -q --benchmark-only``.
Each case runs once per implementation (the ``codec`` fixture); cases that do
the same work share a group, so the summary puts C and pure side by side.
``extra_info`` records the wire bytes, rows and MB/s (of the wire frame,
10^6 bytes) of each case. ``bench/compare.py`` is the comparison with the
other serializers.
"""
from __future__ import annotations

import socket
import threading

import pytest

from fastframe.framing import FrameReader
from fastframe.schema import TABLES_BY_NAME

import workload  # bench/ is on sys.path (conftest.py)

TABLES = ("transactions", "transaction_items")
ROW_TYPES = ("object", "dict", "tuple")
READER_FRAMES = 16


def _record(benchmark, wire_bytes: int, rows: int) -> None:
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(wire_bytes=wire_bytes, rows=rows,
                                mb_per_s=round(wire_bytes / median / 1e6, 1),
                                rows_per_s=round(rows / median))


@pytest.mark.parametrize("row_type", ROW_TYPES)
@pytest.mark.parametrize("table", TABLES)
def test_decode(benchmark, codec, bench_workload, table, row_type):
    batch = bench_workload.batches[table]
    benchmark.group = f"decode {table} -> {row_type}"
    _, _, keys, rows = benchmark(codec.decode_table_body, batch.opcode, batch.body, row_type)
    assert len(rows) == batch.n_rows and keys == batch.spec.required_keys
    _record(benchmark, len(batch.frame), batch.n_rows)


@pytest.mark.parametrize("table", TABLES)
def test_decode_keys_in_map_order(benchmark, codec, bench_workload, table):
    """The Go client's shape: each row lists its keys in its own order."""
    batch = bench_workload.batches[table]
    frame = workload.map_order_frame(batch)
    benchmark.group = f"decode {table} -> dict, keys in map order"
    _, _, _, rows = benchmark(codec.decode_table_body, batch.opcode, frame[5:], "dict")
    assert rows == batch.rows
    _record(benchmark, len(frame), batch.n_rows)


# The numeric columns of each table, for the decode_columns case that parses them.
NUMERIC = {
    "transactions": {"original_amount": "float64", "discount_applied": "float64",
                     "final_amount": "float64"},
    "transaction_items": {"quantity": "int64", "unit_price": "float64", "subtotal": "float64"},
}


@pytest.mark.parametrize("numbers", [False, True], ids=["str", "numeric"])
@pytest.mark.parametrize("table", TABLES)
def test_decode_columns(benchmark, codec, bench_workload, table, numbers):
    batch = bench_workload.batches[table]
    dtypes = NUMERIC[table] if numbers else None
    benchmark.group = f"decode {table} -> columns{' (numbers parsed)' if numbers else ''}"
    columns = benchmark(codec.decode_columns, batch.frame, None, dtypes)
    assert list(columns) == list(batch.spec.required_keys)
    assert all(len(array) == batch.n_rows for array in columns.values())
    _record(benchmark, len(batch.frame), batch.n_rows)


@pytest.mark.parametrize("table", TABLES)
def test_encode_from_dicts(benchmark, codec, bench_workload, table):
    batch = bench_workload.batches[table]
    benchmark.group = f"encode {table} from dicts"
    frame = benchmark(codec.encode_table_frame, batch.opcode, 1, 0, batch.rows)
    assert frame == batch.frame
    _record(benchmark, len(batch.frame), batch.n_rows)


@pytest.mark.parametrize("table", TABLES)
def test_project_databatch(benchmark, codec, bench_workload, table):
    """The orchestrator's per-batch step (PROTOCOL.md §8): validate, keep the
    §8 columns, wrap in a DataBatch."""
    batch = bench_workload.batches[table]
    spec = TABLES_BY_NAME[table]
    benchmark.group = f"project {table}"
    out = benchmark(codec.project_databatch, batch.opcode, batch.body, (batch.opcode,),
                    spec.query_ids, {}, 1, 0)
    assert out[0] == 0 and len(out) < len(batch.frame)
    _record(benchmark, len(batch.frame), batch.n_rows)


def _read_all(frames, total_bytes: int) -> int:
    """A writer thread pushes ``frames`` through a socketpair; FrameReader reads them."""
    reader_sock, writer_sock = socket.socketpair()

    def push():
        with writer_sock:
            for frame in frames:
                writer_sock.sendall(frame)

    writer = threading.Thread(target=push)
    writer.start()
    got = 0
    with reader_sock:
        for _, body in FrameReader(reader_sock):
            got += 5 + len(body)
    writer.join()
    assert got == total_bytes
    return got


def test_frame_reader(benchmark, codec, bench_workload):
    frames = (bench_workload.replay * READER_FRAMES)[:READER_FRAMES]
    total = sum(map(len, frames))
    benchmark.group = f"FrameReader: {READER_FRAMES} x 1 MiB frames over a socketpair"
    benchmark(_read_all, frames, total)
    _record(benchmark, total, sum((bench_workload.replay_rows * READER_FRAMES)[:READER_FRAMES]))
