"""decode_arrow: a table frame (or a DataBatch embedding one) as Arrow utf8 columns.

Values are checked against ``decode_columns`` and the rows that built the
frame; errors against ``decode_columns``' errors for the same bytes; the Arrow
side through the consumers the batch is for (pyarrow, polars, DuckDB).
"""
from __future__ import annotations

import gc
import json
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastframe.errors import ProtocolError
from fastframe.schema import TABLES_BY_NAME, TABLES_BY_OPCODE
from wire import TABLE_PARAMS, databatch_body, frame, sample_rows, shuffled, table_body

pa = pytest.importorskip("pyarrow", reason="decode_arrow's results are read through pyarrow")
# Below the skip: where pyarrow has no wheel (PyPy) there is no tracemalloc either.
import tracemalloc  # noqa: E402

ITEMS = TABLES_BY_NAME["transaction_items"]
TRANSACTIONS = TABLES_BY_NAME["transactions"]
ITEM_ROWS = sample_rows(ITEMS, 60, seed=3)


def items_frame(codec, rows=ITEM_ROWS, order_seed=None) -> bytes:
    if order_seed is None:
        return codec.encode_table_frame(ITEMS.opcode, 3, 0, rows)
    rng = random.Random(order_seed)
    return frame(ITEMS.opcode, table_body(codec, [shuffled(r, rng) for r in rows],
                                          batch_number=3))


def projected_frame(codec, kept, rows=ITEM_ROWS) -> bytes:
    """A DataBatch frame embedding ``rows`` projected to ``kept``, in that order."""
    inner = codec.encode_table_frame(ITEMS.opcode, 3, 1, [[r[k] for k in kept] for r in rows],
                                     kept)
    return frame(0, databatch_body(codec, inner))


def as_lists(batch) -> dict:
    """``{column: [str, ...]}`` read through pyarrow's import of the PyCapsule interface."""
    return pa.record_batch(batch).to_pydict()


def from_columns(codec, data, columns=None) -> dict:
    return {k: v.tolist() for k, v in codec.decode_columns(data, columns).items()}


# -- values ------------------------------------------------------------------------------------

@pytest.mark.parametrize("order_seed", [None, 1], ids=["spec-order", "shuffled-keys"])
def test_every_column_in_the_tables_order(codec, order_seed):
    batch = codec.decode_arrow(items_frame(codec, order_seed=order_seed))
    assert batch.column_names == ITEMS.required_keys
    assert batch.num_rows == len(batch) == len(ITEM_ROWS)
    assert as_lists(batch) == {k: [r[k] for r in ITEM_ROWS] for k in ITEMS.required_keys}


@pytest.mark.parametrize("spec", TABLE_PARAMS)
def test_every_table_matches_decode_columns(codec, spec):
    # sample_rows mixes empty strings, NUL, long and non-ASCII values
    rows = sample_rows(spec, 200, seed=11)
    data = codec.encode_table_frame(spec.opcode, 1, 0, rows)
    batch = codec.decode_arrow(data)
    assert as_lists(batch) == from_columns(codec, data)
    assert as_lists(batch) == {k: [r[k] for r in rows] for k in spec.required_keys}


def test_non_ascii_and_empty_values(codec):
    values = ["", "Café", "日本語", "a\x00b", "☕ x2", "\U0001f600" * 70, "é" * 1000]
    rows = [dict(ITEM_ROWS[0], created_at=v, item_id="") for v in values]
    batch = codec.decode_arrow(items_frame(codec, rows))
    got = as_lists(batch)
    assert got["created_at"] == values
    assert got["item_id"] == [""] * len(values)


TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.tuples(TEXT, TEXT), max_size=40), order_seed=st.integers(0, 3))
def test_random_text_round_trips(codec, values, order_seed):
    # values of every length either side of the C codec's 16-byte copy blocks, up to the body's end
    rows = [dict(ITEM_ROWS[0], created_at=a, transaction_id=b) for a, b in values]
    data = items_frame(codec, rows, order_seed)
    assert as_lists(codec.decode_arrow(data)) == from_columns(codec, data)


def test_columns_select_and_order(codec):
    wanted = ["subtotal", "transaction_id", "quantity"]
    # any iterable of names, read once, as decode_columns takes it
    batch = codec.decode_arrow(items_frame(codec, order_seed=2), iter(wanted))
    assert batch.column_names == tuple(wanted)
    assert as_lists(batch) == from_columns(codec, items_frame(codec), wanted)
    assert list(as_lists(batch)) == wanted


def test_no_columns_keep_the_row_count(codec):
    batch = codec.decode_arrow(items_frame(codec), [])
    assert batch.column_names == ()
    assert batch.num_rows == len(ITEM_ROWS)
    assert pa.record_batch(batch).num_rows == len(ITEM_ROWS)


def test_projected_batch_inside_a_databatch(codec):
    kept = ["quantity", "transaction_id"]
    data = projected_frame(codec, kept)
    batch = codec.decode_arrow(data)
    assert batch.column_names == tuple(kept)
    assert as_lists(batch) == from_columns(codec, data)
    assert as_lists(codec.decode_arrow(data, ["transaction_id"])) == {
        "transaction_id": [r["transaction_id"] for r in ITEM_ROWS]}


def test_zero_rows(codec):
    full = codec.decode_arrow(codec.encode_table_frame(ITEMS.opcode, 1, 1, []))
    assert full.column_names == ITEMS.required_keys and len(full) == 0
    assert as_lists(full) == {k: [] for k in ITEMS.required_keys}
    # a projection of no rows says nothing about its columns: it has none
    empty = codec.decode_arrow(projected_frame(codec, ["quantity"], rows=[]))
    assert empty.column_names == () and len(empty) == 0
    assert pa.record_batch(empty).num_rows == 0


def test_both_codecs_give_the_same_batch(both_codecs):
    rows = sample_rows(TRANSACTIONS, 300, seed=5)
    data = both_codecs["python"].encode_table_frame(TRANSACTIONS.opcode, 1, 0, rows)
    batches = [pa.record_batch(both_codecs[name].decode_arrow(data)) for name in ("c", "python")]
    assert batches[0].schema == batches[1].schema
    assert batches[0].equals(batches[1])
    assert all(not field.nullable for field in batches[0].schema)
    assert batches[0].schema.types == [pa.string()] * len(TRANSACTIONS.required_keys)


def golden_frames(conformance_dir: Path):
    for set_name in ("golden_sample", "golden"):
        folder = conformance_dir / set_name
        for vector in json.loads((folder / "manifest.json").read_text())["vectors"]:
            for name in ("input_file", "databatch_file"):
                yield vector, (folder / vector[name]).read_bytes()


def test_conformance_frames_match_decode_columns(codec, conformance_dir):
    seen = 0
    for vector, data in golden_frames(conformance_dir):
        batch = codec.decode_arrow(data)
        assert len(batch) == vector["n_rows"]
        assert as_lists(batch) == from_columns(codec, data)
        seen += 1
    assert seen == 20


# -- errors --------------------------------------------------------------------------------------

def _row(**changes):
    return [(k, changes.get(k, v)) for k, v in ITEM_ROWS[0].items()]


BAD_FRAMES = {
    "not-a-table": lambda c: c.encode_eof_frame(1, "users"),
    "length-mismatch": lambda c: c.encode_table_frame(ITEMS.opcode, 1, 1, ITEM_ROWS[:2])[:-1],
    "truncated-value": lambda c: frame(ITEMS.opcode, table_body(c, [_row()])[:-2]),
    "too-few-pairs": lambda c: frame(ITEMS.opcode, table_body(c, [_row()[:1]])),
    "too-many-pairs": lambda c: frame(ITEMS.opcode, table_body(c, [_row()], pair_counts={0: 9})),
    "unknown-key": lambda c: frame(ITEMS.opcode, table_body(c, [_row()[:-1] + [("x", "1")]])),
    "duplicate-key": lambda c: frame(ITEMS.opcode, table_body(c, [_row()[:-1] + _row()[:1]])),
    "invalid-utf8": lambda c: frame(ITEMS.opcode, table_body(c, [_row(quantity=b"\xff")])),
    "surrogate": lambda c: frame(ITEMS.opcode, table_body(c, [_row(quantity=b"\xed\xa0\x80")])),
    "invalid-utf8-key": lambda c: frame(ITEMS.opcode,
                                        table_body(c, [_row()[:-1] + [(b"\xc3", "1")]])),
    "negative-rows": lambda c: frame(ITEMS.opcode, table_body(c, [], n_rows=-1)),
    "impossible-rows": lambda c: frame(ITEMS.opcode, table_body(c, [], n_rows=1000)),
    "bad-status": lambda c: frame(ITEMS.opcode, table_body(c, [_row()], status=7)),
    "trailing": lambda c: frame(ITEMS.opcode, table_body(c, [_row()]) + b"\0"),
    "negative-length": lambda c: frame(ITEMS.opcode,
                                       table_body(c, [_row()])[:21] + b"\xff\xff\xff\xff"),
    "projection-changes-keys": lambda c: frame(0, databatch_body(c, frame(ITEMS.opcode, table_body(
        c, [[("quantity", "1")], [("subtotal", "1")]])))),
    "nested-databatch": lambda c: frame(0, databatch_body(c, frame(0, b""))),
    "databatch-cut": lambda c: frame(0, databatch_body(c, items_frame(c))[:-1]),
}


@pytest.mark.parametrize("make", BAD_FRAMES.values(), ids=BAD_FRAMES.keys())
def test_malformed_frames_fail_as_in_decode_columns(codec, make):
    data = make(codec)
    with pytest.raises(ProtocolError) as expected:
        codec.decode_columns(data)
    with pytest.raises(ProtocolError) as got:
        codec.decode_arrow(data)
    message = expected.value.message.replace("decode_columns", "decode_arrow")
    assert (type(got.value), got.value.message, got.value.opcode) == (
        ProtocolError, message, expected.value.opcode)


def _outcome(decode, read, data):
    """``read(decode(data))``, or the error's message and opcode."""
    try:
        decoded = decode(data)
    except ProtocolError as exc:
        return exc.message.replace("decode_columns", "decode_arrow"), exc.opcode
    return read(decoded)


@pytest.mark.parametrize("flip, kinds", [(0x01, {"dict", "tuple"}), (0x80, {"tuple"})],
                         ids=["low-bit", "high-bit"])
def test_a_byte_changed_in_a_later_row_fails_or_decodes_as_in_decode_columns(codec, flip, kinds):
    # Rows after the first take a one-pass path in the C codec while they repeat
    # the previous row's key order; every byte of rows 1 to 3 changed in turn
    # must come out as decode_columns has it: the same values or the same error.
    rows = [{k: f"{k}-{i}" for k in ITEMS.required_keys} for i in range(6)]   # ASCII only
    data = items_frame(codec, rows)
    row_bytes = len(table_body(codec, rows[:1])) - 13
    first = 5 + 13 + row_bytes
    outcomes = set()
    for at in range(first, first + 3 * row_bytes):
        changed = bytearray(data)
        changed[at] ^= flip
        expected = _outcome(codec.decode_columns,
                            lambda got: {k: v.tolist() for k, v in got.items()}, bytes(changed))
        assert _outcome(codec.decode_arrow, as_lists, bytes(changed)) == expected, at
        outcomes.add(type(expected).__name__)
    assert outcomes == kinds   # a high bit is never valid UTF-8 on its own: errors only


@pytest.mark.parametrize("data, columns, message", [
    (items_frame, ["bogus"], "column 'bogus' is not in the batch; it has "
                             f"{list(ITEMS.required_keys)}"),
    (items_frame, [7], "column 7 is not in the batch"),
    (items_frame, ["quantity", "subtotal", "quantity"], "duplicate column 'quantity'"),
    (lambda c: projected_frame(c, ["quantity"]), ["subtotal"],
     "column 'subtotal' is not in the batch; it has ['quantity']"),
])
def test_column_errors(codec, data, columns, message):
    with pytest.raises(ValueError) as info:
        codec.decode_arrow(data(codec), columns)
    assert type(info.value) is ValueError and str(info.value).startswith(message)


def test_a_bad_body_fails_before_the_columns_are_checked(codec):
    with pytest.raises(ProtocolError, match="trailing bytes"):
        codec.decode_arrow(BAD_FRAMES["trailing"](codec), ["bogus"])


# -- consumers -------------------------------------------------------------------------------------

def test_pyarrow_shares_the_values_memory(codec):
    batch = codec.decode_arrow(items_frame(codec))
    first, second = pa.record_batch(batch), pa.record_batch(batch)
    for i in range(len(ITEMS.required_keys)):
        # offsets and bytes: the same memory in both imports, never a copy
        a, b = first.column(i).buffers()[1:], second.column(i).buffers()[1:]
        assert [x.address for x in a] == [y.address for y in b]
    assert batch.to_pyarrow().equals(first)


def read_stream(batch) -> pa.RecordBatchReader:
    return pa.RecordBatchReader._import_from_c_capsule(batch.__arrow_c_stream__())


def test_a_stream_gives_the_one_batch_once_sharing_its_memory(codec):
    batch = codec.decode_arrow(items_frame(codec))
    direct, reader = pa.record_batch(batch), read_stream(batch)
    assert reader.schema == direct.schema
    streamed = reader.read_next_batch()
    with pytest.raises(StopIteration):
        reader.read_next_batch()
    assert streamed.equals(direct)
    for i in range(len(ITEMS.required_keys)):
        a, b = streamed.column(i).buffers()[1:], direct.column(i).buffers()[1:]
        assert [x.address for x in a] == [y.address for y in b]
    assert read_stream(batch).read_all().to_batches() == [direct]   # a stream per call


def test_requested_schema_is_answered_with_the_batchs_own(codec):
    # the interface makes a requested schema best-effort; consumers check what they get
    batch = codec.decode_arrow(items_frame(codec), ["quantity"])
    requested = pa.schema([pa.field("quantity", pa.large_string())])
    own = pa.schema([pa.field("quantity", pa.string(), nullable=False)])
    schema, array = batch.__arrow_c_array__(requested.__arrow_c_schema__())
    got = pa.RecordBatch._import_from_c_capsule(schema, array)
    assert got.schema == own
    assert got.column(0).to_pylist() == [r["quantity"] for r in ITEM_ROWS]
    stream = batch.__arrow_c_stream__(requested.__arrow_c_schema__())
    assert pa.RecordBatchReader._import_from_c_capsule(stream).read_all().schema == own


def test_polars_reads_it(codec):
    pl = pytest.importorskip("polars", reason="polars is an optional consumer")
    batch = codec.decode_arrow(items_frame(codec))
    df = pl.DataFrame(batch)
    assert df.columns == list(ITEMS.required_keys)
    assert df.to_dict(as_series=False) == as_lists(batch)


def test_duckdb_reads_it(codec):
    # 1.5 reads the batch as a stream, 2.0 as an array: the test extra gets
    # 1.5 on Python 3.10 and 2.x on later ones
    duckdb = pytest.importorskip("duckdb", minversion="1.5",
                                 reason="DuckDB (1.5 or later; Python 3.10 on) is an "
                                        "optional consumer")
    batch = codec.decode_arrow(items_frame(codec))
    con = duckdb.connect()
    try:
        got = con.from_arrow(batch).fetchall()
        assert got == [tuple(r.values()) for r in ITEM_ROWS]
        con.register("items", batch)
        count, longest = con.execute(
            "select count(*), max(length(created_at)) from items").fetchone()
    finally:
        con.close()
    assert (count, longest) == (len(ITEM_ROWS), max(len(r["created_at"]) for r in ITEM_ROWS))


# -- memory ----------------------------------------------------------------------------------------

def _allocated() -> int:
    """Bytes held now by Python's allocators (traced) and pyarrow's memory pool."""
    gc.collect()
    return tracemalloc.get_traced_memory()[0] + pa.total_allocated_bytes()


@pytest.fixture
def traced():
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


BIG_ROWS = [dict(r, created_at="x" * 2000) for r in sample_rows(ITEMS, 500, seed=1)]
BIG = 500 * 2000    # the bytes of one column's values, which every check below must see


def test_unconsumed_capsules_release_their_arrays(codec, traced):
    data = items_frame(codec, BIG_ROWS)
    batch = codec.decode_arrow(data)
    base = _allocated()
    for _ in range(50):
        batch.__arrow_c_array__()
        batch.__arrow_c_schema__()
        batch.__arrow_c_stream__()
        capsules = batch.__arrow_c_array__()
        del capsules
        read_stream(batch).schema     # a stream whose batch nobody read
    assert _allocated() - base < BIG // 4
    del batch
    assert _allocated() - base < -BIG     # the batch's own values went with it


def test_a_batch_holds_about_its_values(codec, traced):
    # few bytes in most columns, most bytes in one: a batch keeps what it needs, not guesses
    data = items_frame(codec, BIG_ROWS)
    values = sum(len(v.encode()) for r in BIG_ROWS for v in r.values())
    offsets = 4 * (len(BIG_ROWS) + 1) * len(ITEMS.required_keys)
    base = _allocated()
    batch = codec.decode_arrow(data)
    held = _allocated() - base
    assert values <= held < 1.2 * (values + offsets) + 64 * 1024
    del batch


@pytest.mark.parametrize("consume", [pa.record_batch, lambda b: read_stream(b).read_next_batch()],
                         ids=["array", "stream"])
def test_a_consumer_keeps_the_values_until_it_releases_them(codec, traced, consume):
    data = items_frame(codec, BIG_ROWS)
    base = _allocated()
    batch = codec.decode_arrow(data)
    consumed = consume(batch)
    del batch
    held = _allocated() - base
    assert held > BIG
    assert consumed.column("created_at").to_pylist() == [r["created_at"] for r in BIG_ROWS]
    # released on another thread, as a consumer's worker may release it
    holder = [consumed]
    del consumed
    worker = threading.Thread(target=holder.clear)
    worker.start()
    worker.join(10)
    assert not worker.is_alive()
    assert _allocated() - base < BIG // 4


# -- without pyarrow -------------------------------------------------------------------------------

def test_fastframe_imports_without_pyarrow_and_the_c_codec_needs_none():
    script = (
        "import sys; sys.modules['pyarrow'] = None\n"
        "import fastframe, fastframe._codec_py as py, fastframe._codec_c as c\n"
        "data = c.encode_table_frame(6, 1, 0, [['t', '1', '2', '3', '4', 'x']])\n"
        "batch = c.decode_arrow(data)\n"
        "print(len(batch), batch.column_names[0])\n"
        "try:\n"
        "    py.decode_arrow(data)\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    # the source tree the tests run on, wherever the child starts
    path = os.pathsep.join(os.path.abspath(p) for p in sys.path if p)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, PYTHONPATH=path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"1 {TABLES_BY_OPCODE[6].required_keys[0]}",
        "decode_arrow in the pure-Python codec needs pyarrow: pip install fastframe[arrow]"]


def test_only_decode_arrow_makes_a_c_batch(both_codecs):
    # a bare instance would have no columns to export
    with pytest.raises(TypeError, match="ArrowBatch is made by decode_arrow"):
        both_codecs["c"].ArrowBatch()
