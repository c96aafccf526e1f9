"""Property tests: round trips on each implementation, and C against Python.

Parity means: for the same input, both implementations return equal results of
the same types, or raise the same exception type with the same message and the
same ``opcode``. Random mutations of valid frames must only ever give a result
or a ``ProtocolError``.
"""
from __future__ import annotations

import struct

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fastframe._codec_py as reference
from fastframe.errors import ProtocolError
from fastframe.schema import TABLES, TABLES_BY_OPCODE
from wire import table_body

settings.register_profile(
    "fastframe-parity",
    max_examples=60,
    deadline=None,  # timing varies on shared CI machines; no flaky deadline failures
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large, HealthCheck.large_base_example],
)
PARITY = settings.get_profile("fastframe-parity")
FEW = settings(PARITY, max_examples=20)    # examples with up to 200 rows
MANY = settings(PARITY, max_examples=250)  # small, cheap examples
MUTATIONS = settings(PARITY, max_examples=600)

I32_EXTREMES = [-1, 0, 1, 7, 13, 255, 65536, 1_000_000, 2**31 - 1, -2**31]

# -- strategies -------------------------------------------------------------------------

_chars = st.characters(exclude_categories=("Cs",))  # surrogate-free: any str that is UTF-8
texts = st.text(_chars, max_size=12)
long_texts = st.one_of(texts, texts, texts, st.text(_chars, max_size=120))
# Values the pure codec's one-pass row scan takes (no control characters, under
# 256 bytes), and ones just past its length limit, so mutations probe its checks.
scan_texts = st.text(st.characters(min_codepoint=0x20, exclude_categories=("Cs",)), max_size=12)
scan_limit_texts = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E),
                           min_size=254, max_size=257)
tables = st.sampled_from(TABLES)
batch_numbers = st.integers(-2**63, 2**63 - 1)
statuses = st.integers(0, 2)
u8s = st.integers(0, 255)
u16s = st.integers(0, 65535)
buffer_kinds = st.sampled_from([bytes, bytearray, memoryview])


def rows_of(spec, values=texts, max_rows=200):
    """Full rows as dicts in spec key order (so ``r.values()`` is a valid sequence row)."""
    row = st.fixed_dictionaries({k: values for k in spec.required_keys}).map(
        lambda r: {k: r[k] for k in spec.required_keys})
    # the count first: plain st.lists rarely gets near max_rows
    return st.integers(0, max_rows).flatmap(lambda n: st.lists(row, min_size=n, max_size=n))


@st.composite
def batches(draw, max_rows=200, values=long_texts):
    spec = draw(tables)
    return spec, draw(batch_numbers), draw(statuses), draw(rows_of(spec, values, max_rows))


@st.composite
def column_subsets(draw, spec, min_size=0):
    order = draw(st.permutations(spec.required_keys))
    return tuple(order[:draw(st.integers(min_size, len(order)))])


FRAME_KINDS = ["table", "shuffled", "scannable", "projection", "eof", "finished", "ack",
               "databatch-eof", "databatch-finished"]


@st.composite
def valid_frames(draw, kinds=FRAME_KINDS):
    """One small valid frame of a kind a peer sends, built with the reference codec."""
    kind = draw(st.sampled_from(kinds))
    if kind == "ack":
        return struct.pack("<Bi", draw(st.integers(1, 2)), 0)
    if kind.endswith("finished"):
        data = reference.encode_finished_frame(draw(st.integers(-2**31, 2**31 - 1)))
    elif kind.endswith("eof"):
        data = reference.encode_eof_frame(draw(batch_numbers), draw(tables).name)
    elif kind == "scannable":  # rows sharing one key order, values the one-pass scan takes
        spec, batch, status, rows = draw(batches(max_rows=5, values=scan_texts))
        order = draw(st.permutations(spec.required_keys))
        if rows and draw(st.booleans()):
            rows[draw(st.integers(0, len(rows) - 1))][order[0]] = draw(scan_limit_texts)
        body = table_body(reference, [[(k, r[k]) for k in order] for r in rows],
                          batch_number=batch, status=status)
        return struct.pack("<Bi", spec.opcode, len(body)) + body
    else:
        spec, batch, status, rows = draw(batches(max_rows=4, values=texts))
        if kind == "table":
            return reference.encode_table_frame(spec.opcode, batch, status, rows)
        if kind == "shuffled":
            pairs = [draw(st.permutations(list(r.items()))) for r in rows]
            body = table_body(reference, pairs, batch_number=batch, status=status)
            return struct.pack("<Bi", spec.opcode, len(body)) + body
        body = reference.encode_table_frame(spec.opcode, batch, status, rows)[5:]
        return reference.project_databatch(
            spec.opcode, body, draw(st.lists(u8s, max_size=3)), list(spec.query_ids),
            draw(st.dictionaries(u8s, u8s, max_size=2)), draw(u16s), draw(u16s),
            columns=draw(column_subsets(spec)))
    if kind.startswith("databatch"):
        return reference.encode_databatch_frame([1], [2], 0, draw(batch_numbers), {}, 0, 0, data)
    return data


positions = st.integers(0, 1 << 20)
mutations = st.one_of(
    st.tuples(st.just("flip"), positions, st.integers(0, 7)),
    st.tuples(st.just("set"), positions, u8s),
    st.tuples(st.just("insert"), positions, st.binary(min_size=1, max_size=4)),
    st.tuples(st.just("delete"), positions, st.integers(1, 8)),
    st.tuples(st.just("truncate"), positions),
    st.tuples(st.just("i32"), positions, st.sampled_from(I32_EXTREMES)),
    # the length fields of a table frame: frame length, nRows, row 0's nPairs, its first key
    st.tuples(st.just("i32"), st.sampled_from([1, 5, 18, 22]), st.sampled_from(I32_EXTREMES)),
)


def mutate(data: bytes, steps) -> bytes:
    buf = bytearray(data)
    for step in steps:
        op, pos = step[0], step[1] % (len(buf) + 1)
        if op == "flip" and pos < len(buf):
            buf[pos] ^= 1 << step[2]
        elif op == "set" and pos < len(buf):
            buf[pos] = step[2]
        elif op == "insert":
            buf[pos:pos] = step[2]
        elif op == "delete":
            del buf[pos:pos + step[2]]
        elif op == "truncate":
            del buf[pos:]
        elif op == "i32" and len(buf) >= 4:
            struct.pack_into("<i", buf, min(pos, len(buf) - 4), step[2])
    return bytes(buf)


# -- comparing outcomes -------------------------------------------------------------------

def normalize(value):
    """A comparable form that keeps types: row classes, dict key order, exact scalar types."""
    if isinstance(value, dict):
        return ("dict", [(normalize(k), normalize(v)) for k, v in value.items()])
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [normalize(v) for v in value])
    return (type(value).__name__, value)


def outcome(fn, *args, **kwargs):
    try:
        return ("ok", normalize(fn(*args, **kwargs)))
    except Exception as exc:  # noqa: BLE001 - the exception is the outcome being compared
        return ("raise", type(exc), str(exc), getattr(exc, "opcode", None))


def decode_body(codec, opcode, body, projected):
    """The outcome of every decoder that applies to ``opcode``."""
    if opcode in (1, 2):
        return [outcome(codec.decode_ack_body, opcode, body)]
    if opcode == 3:
        return [outcome(codec.decode_finished_body, body)]
    if opcode == 9:
        return [outcome(codec.decode_eof_body, body)]
    if opcode == 0:
        header = outcome(codec.decode_databatch_body, body)
        if header[0] != "ok":
            return [header]
        fields = header[1][1]
        inner_opcode, inner_offset = fields[7][1], fields[8][1]
        return [header] + decode_body(codec, inner_opcode, body[inner_offset:], True)
    columns = tuple(reversed(TABLES_BY_OPCODE[opcode].required_keys[:3]))
    decode = codec.decode_table_body
    return [outcome(decode, opcode, body, "dict", projected=projected),
            outcome(decode, opcode, body, "object", projected=projected),
            outcome(decode, opcode, body, "tuple", columns, projected)]


def decode_all(codec, data, kind):
    """Outcomes of reading ``data`` as a frame header, and of its body decoders."""
    buf = kind(data)
    results = [outcome(codec.read_frame_header, buf, 0, 4096)]
    if len(data) >= 5 and data[0] <= 9:
        # the body decoders get the whole rest, whatever the (maybe mutated) length says
        results += decode_body(codec, data[0], buf[5:], False)
        if data[0] in TABLES_BY_OPCODE:
            results += decode_body(codec, data[0], buf[5:], True)
    return results


# -- round trips on each implementation -----------------------------------------------------

@FEW
@given(batch=batches())
def test_round_trip(codec, batch):
    spec, number, status, rows = batch
    data = codec.encode_table_frame(spec.opcode, number, status, rows)
    assert codec.read_frame_header(data) == (spec.opcode, len(data) - 5)
    body = data[5:]
    assert codec.decode_table_body(spec.opcode, body, "dict") == (
        number, status, spec.required_keys, rows)
    objects = [spec.row_class(**r) for r in rows]
    sequences = [list(r.values()) for r in rows]
    assert codec.decode_table_body(spec.opcode, body, "object")[3] == objects
    assert codec.decode_table_body(spec.opcode, body, "tuple")[3] == list(map(tuple, sequences))
    # the same bytes from row objects and from sequences
    assert codec.encode_table_frame(spec.opcode, number, status, objects) == data
    assert codec.encode_table_frame(spec.opcode, number, status, sequences) == data


@PARITY
@given(data=st.data())
def test_projected_round_trip(codec, data):
    spec, number, status, rows = data.draw(batches(max_rows=40))
    columns = data.draw(column_subsets(spec))
    projected = [{c: r[c] for c in columns} for r in rows]
    frame = codec.encode_table_frame(spec.opcode, number, status, projected, columns)
    assert codec.decode_table_body(spec.opcode, frame[5:], "dict", projected=True) == (
        number, status, columns if rows else (), projected)
    full = codec.encode_table_frame(spec.opcode, number, status, rows)
    out = codec.project_databatch(spec.opcode, full[5:], [1], list(spec.query_ids), {}, 0, 0,
                                  columns=columns)
    offset = codec.decode_databatch_body(out[5:])[8]
    assert out[5 + offset:] == frame[5:]


@PARITY
@given(data=st.data())
def test_key_order_is_free(codec, data):
    spec, number, status, rows = data.draw(batches(max_rows=30, values=texts))
    pairs = [data.draw(st.permutations(list(r.items()))) for r in rows]
    body = table_body(codec, pairs, batch_number=number, status=status)
    assert codec.decode_table_body(spec.opcode, body, "dict") == (
        number, status, spec.required_keys, rows)
    if rows:
        keys = codec.decode_table_body(spec.opcode, body, "dict", projected=True)[2]
        assert keys == tuple(k for k, _ in pairs[0])


@MANY
@given(base=valid_frames(["table", "shuffled"]), steps=st.lists(mutations, max_size=3))
def test_full_batches_are_projections(codec, base, steps):
    """Whatever a full-batch decode accepts, a projected decode accepts with the same rows."""
    opcode, body = base[0], mutate(base, steps)[5:]
    try:
        full = codec.decode_table_body(opcode, body, "object")
    except ProtocolError:
        return
    assert codec.decode_table_body(opcode, body, "object", projected=True)[3] == full[3]


@MANY
@given(base=valid_frames(["table", "shuffled"]), steps=st.lists(mutations, max_size=3),
       data=st.data())
def test_project_databatch_is_decode_then_encode(codec, base, steps, data):
    """project_databatch accepts what decode_table_body accepts, and re-encodes those rows."""
    opcode, body = base[0], mutate(base, steps)[5:]
    columns = data.draw(column_subsets(TABLES_BY_OPCODE[opcode]))
    decoded = outcome(codec.decode_table_body, opcode, body, "dict")
    projected = outcome(codec.project_databatch, opcode, body, [1], [2], {}, 0, 0,
                        columns=columns)
    if decoded[0] != "ok":
        assert projected == decoded
        return
    number, status, _, rows = codec.decode_table_body(opcode, body, "dict")
    inner = codec.encode_table_frame(opcode, number, status,
                                     [{c: r[c] for c in columns} for r in rows], columns)
    expected = codec.encode_databatch_frame([1], [2], 0, number, {}, 0, 0, inner)
    assert projected == ("ok", normalize(expected))


# -- C against Python ---------------------------------------------------------------------

@FEW
@given(batch=batches(), data=st.data())
def test_encoders_agree_and_decode_each_other(both_codecs, batch, data):
    spec, number, status, rows = batch
    c, py = both_codecs["c"], both_codecs["python"]
    by_c = c.encode_table_frame(spec.opcode, number, status, rows)
    assert by_c == py.encode_table_frame(spec.opcode, number, status, rows)
    picks = data.draw(column_subsets(spec))
    by_py = py.encode_table_frame(spec.opcode, number, status, rows)
    for frame, decoder in ((by_c, py), (by_py, c)):  # C encodes, Python decodes, and back
        body = frame[5:]
        assert decoder.decode_table_body(spec.opcode, body, "dict") == (
            number, status, spec.required_keys, rows)
        assert decoder.decode_table_body(spec.opcode, body, "object")[3] == [
            spec.row_class(**r) for r in rows]
        assert decoder.decode_table_body(spec.opcode, body, "tuple", picks)[3] == [
            tuple(r[k] for k in picks) for r in rows]
    # the same types and dict key order from both decoders, not just equal values
    for row_type in ("dict", "object", "tuple"):
        assert outcome(c.decode_table_body, spec.opcode, by_c[5:], row_type) == outcome(
            py.decode_table_body, spec.opcode, by_c[5:], row_type)
    args = (spec.opcode, by_c[5:], [1], list(spec.query_ids), {}, 0, 0)
    projected = py.project_databatch(*args, columns=picks)
    assert c.project_databatch(*args, columns=picks) == projected
    for decoder in (c, py):
        inner = projected[5 + decoder.decode_databatch_body(projected[5:])[8]:]
        assert decoder.decode_table_body(spec.opcode, inner, "dict", projected=True) == (
            number, status, picks if rows else (), [{k: r[k] for k in picks} for r in rows])


@MANY
@given(number=batch_numbers, table=tables, agency=st.integers(-2**31, 2**31 - 1),
       ids=st.lists(u8s, max_size=255), meta=st.dictionaries(u8s, u8s),
       reserved=u16s, total=u16s, shard=u16s)
def test_control_encoders_agree(both_codecs, number, table, agency, ids, meta, reserved, total,
                                shard):
    c, py = both_codecs["c"], both_codecs["python"]
    eof = py.encode_eof_frame(number, table.name)
    assert c.encode_eof_frame(number, table.name) == eof
    assert c.decode_eof_body(eof[5:]) == py.decode_eof_body(eof[5:]) == (number, table.name)
    finished = py.encode_finished_frame(agency)
    assert c.encode_finished_frame(agency) == finished
    assert c.decode_finished_body(finished[5:]) == agency
    header = (ids, ids[::-1], reserved, number, meta, total, shard)
    assert c.encode_databatch_header(*header) == py.encode_databatch_header(*header)
    for embedded in (eof, finished):
        frame = py.encode_databatch_frame(*header, embedded)
        assert c.encode_databatch_frame(*header, embedded) == frame
        assert outcome(c.decode_databatch_body, frame[5:]) == outcome(
            py.decode_databatch_body, frame[5:])


@MUTATIONS
@given(base=valid_frames(), steps=st.lists(mutations, min_size=1, max_size=4), kind=buffer_kinds)
def test_mutated_frames_decode_the_same(both_codecs, base, steps, kind):
    data = mutate(base, steps)
    expected = decode_all(both_codecs["python"], data, kind)
    for result in expected:
        assert result[0] == "ok" or result[1] is ProtocolError, result
    assert decode_all(both_codecs["c"], data, kind) == expected


def value_length_offsets(body: bytes):
    """The offset of every value's length prefix in a valid table body."""
    offsets, pos = [], 13
    for _ in range(struct.unpack_from("<i", body)[0]):
        n_pairs = struct.unpack_from("<i", body, pos)[0]
        pos += 4
        for _ in range(n_pairs):
            pos += 4 + struct.unpack_from("<i", body, pos)[0]  # the key
            offsets.append(pos)
            pos += 4 + struct.unpack_from("<i", body, pos)[0]
    return offsets


@MUTATIONS
@given(base=valid_frames(kinds=["scannable"]), data=st.data())
def test_traded_value_lengths_decode_the_same(both_codecs, base, data):
    # Two values' length prefixes trade a few bytes: every byte stays in place and
    # the lengths still add up, so only a per-value check can tell.
    body = bytearray(base[5:])
    offsets = value_length_offsets(body)
    assume(len(offsets) >= 2)
    a, b = data.draw(st.lists(st.sampled_from(offsets), min_size=2, max_size=2, unique=True))
    delta = data.draw(st.integers(1, 8))
    struct.pack_into("<i", body, a, struct.unpack_from("<i", body, a)[0] + delta)
    struct.pack_into("<i", body, b, struct.unpack_from("<i", body, b)[0] - delta)
    for projected in (False, True):
        expected = decode_body(both_codecs["python"], base[0], bytes(body), projected)
        assert decode_body(both_codecs["c"], base[0], bytes(body), projected) == expected


@MANY
@given(base=valid_frames(), kind=buffer_kinds)
def test_valid_frames_decode_the_same(both_codecs, base, kind):
    expected = decode_all(both_codecs["python"], base, kind)
    assert expected[0][0] == expected[1][0] == "ok", expected
    assert decode_all(both_codecs["c"], base, kind) == expected


READERS = ["read_u8", "read_u16", "read_i32", "read_i64", "read_string", "read_string_map",
           "read_u8_list", "read_u8_dict", "read_frame_header"]


@MANY
@given(reader=st.sampled_from(READERS), data=st.binary(max_size=40), offset=st.integers(-2, 45),
       kind=buffer_kinds)
def test_readers_agree_on_any_bytes(both_codecs, reader, data, offset, kind):
    expected = outcome(getattr(both_codecs["python"], reader), kind(data), offset)
    assert outcome(getattr(both_codecs["c"], reader), kind(data), offset) == expected


ANY_VALUE = st.one_of(st.integers(), st.integers(-2**70, 2**70), st.none(), st.text(max_size=3),
                      st.floats(allow_nan=False), st.binary(max_size=3))
WRITER_CALLS = st.one_of(
    st.tuples(st.sampled_from(["write_u8", "write_u16", "write_i32", "write_i64", "write_string"]),
              ANY_VALUE),
    st.tuples(st.just("write_bytes"), st.binary(max_size=5)),
)


@MANY
@given(calls=st.lists(WRITER_CALLS, max_size=6))
def test_writers_agree(both_codecs, calls):
    c, py = both_codecs["c"].Writer(), both_codecs["python"].Writer()
    for method, value in calls:
        assert outcome(getattr(c, method), value) == outcome(getattr(py, method), value)
        assert c.getvalue() == py.getvalue()
        assert len(c) == len(py)


ROW_VALUES = st.one_of(texts, st.none(), st.integers(0, 9), st.binary(max_size=2))


@st.composite
def doubtful_rows(draw, spec):
    """Rows that may be invalid in every way encode_table_frame checks."""
    keys = list(spec.required_keys)
    shape = draw(st.sampled_from(["dict", "object", "list", "junk"]))
    if shape == "dict":
        chosen = draw(st.lists(st.sampled_from(keys + ["bogus", "table_type"]), unique=True,
                               min_size=len(keys) - 1, max_size=len(keys) + 1))
        return {k: draw(ROW_VALUES) for k in chosen}
    if shape == "object":
        return spec.row_class(*[draw(ROW_VALUES) for _ in keys])
    if shape == "list":
        return [draw(ROW_VALUES) for _ in range(draw(st.integers(len(keys) - 1, len(keys) + 1)))]
    return draw(st.one_of(st.none(), st.integers(), st.text(max_size=3),
                          st.sets(st.integers(), max_size=2)))


@MANY
@given(data=st.data())
def test_encoder_errors_agree(both_codecs, data):
    spec = data.draw(tables)
    opcode = data.draw(st.one_of(st.just(spec.opcode), st.integers(-1, 12)))
    status = data.draw(st.one_of(statuses, st.integers(-1, 4), st.none()))
    number = data.draw(st.one_of(batch_numbers, st.just(2**63), st.text(max_size=1)))
    rows = data.draw(st.lists(doubtful_rows(spec), max_size=3))
    columns = data.draw(st.one_of(
        st.none(), column_subsets(spec, 1),
        st.lists(st.sampled_from(list(spec.required_keys) + ["bogus"]), max_size=3)))
    args = (opcode, number, status, rows, columns)
    expected = outcome(both_codecs["python"].encode_table_frame, *args)
    assert outcome(both_codecs["c"].encode_table_frame, *args) == expected
