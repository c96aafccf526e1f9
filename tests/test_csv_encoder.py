"""encode_csv_batch: CSV bytes straight to table frames, the client's fast path.

Every test runs on both codecs (the ``codec`` fixture); the differential test
holds each to the pure reference, record by record and error by error. The
grammar is strict RFC 4180 (``_codec_py._csv_record``); where it agrees with
the csv module, results are compared with ``csv.reader`` and the client's
``read_table_csv``.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import List, Sequence, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastframe._codec_py as reference
from fastframe.client import CSV_COLUMNS, Client, ClientError, _Batcher, read_table_csv
from fastframe.datagen import generate
from fastframe.errors import CsvError
from fastframe.schema import MAX_BATCH_FRAME, TABLES, TABLES_BY_NAME, BatchStatus

USERS = TABLES_BY_NAME["users"]  # user_id, gender, birthdate, registered_at
ALL = [0, 1, 2, 3]
EMPTY_FRAME = 5 + 13
# What a users row costs in a frame besides its values: pair count, keys, value lengths.
USERS_OVERHEAD = 4 + sum(8 + len(k) for k in USERS.required_keys)
CONTINUE, EOF = BatchStatus.CONTINUE, BatchStatus.EOF

Batch = Tuple[bytes, int, int, int]  # (frame, next_offset, rows, next_line)


def encode(codec, data, *, offset=0, line=1, picks=ALL, width=4, number=1, max_rows=1000,
           max_bytes=MAX_BATCH_FRAME, spec=USERS) -> Batch:
    return codec.encode_csv_batch(spec.opcode, data, offset, line, picks, width, number,
                                  max_rows, max_bytes)


def encode_all(codec, data, *, offset=0, line=1, number=1, **options) -> List[Batch]:
    """Every batch from ``offset`` to the end of ``data``, numbered from ``number``."""
    batches = []
    while True:
        batch = encode(codec, data, offset=offset, line=line, number=number, **options)
        batches.append(batch)
        frame, next_offset, rows, line = batch
        if next_offset >= len(memoryview(data)):
            return batches
        assert rows > 0 and next_offset > offset, "a batch that is not the last one takes rows"
        offset = next_offset
        number += 1


def decoded(frame: bytes, spec=USERS) -> Tuple[int, int, list]:
    """``(batch_number, status, rows as tuples)`` of a frame, by the reference decoder."""
    assert reference.read_frame_header(frame, 0, 1 << 30) == (spec.opcode, len(frame) - 5)
    number, status, _, rows = reference.decode_table_body(spec.opcode, frame[5:], "tuple")
    return number, status, rows


def rows_of(batches: Sequence[Batch], spec=USERS) -> list:
    return [row for batch in batches for row in decoded(batch[0], spec)[2]]


def csv_rows(data: bytes, picks=ALL) -> list:
    """The records as the csv module reads them (blank lines skipped)."""
    reader = csv.reader(io.StringIO(data.decode("utf-8"), newline=""), strict=True)
    return [tuple(row[p] for p in picks) for row in reader if row]


def row_size(row, spec=USERS) -> int:
    """What one row adds to a frame."""
    return len(reference.encode_table_frame(spec.opcode, 1, 0, [row])) - EMPTY_FRAME


def check_batches(batches: Sequence[Batch], data: bytes, max_rows: int, max_bytes: int,
                  spec=USERS, first_number=1) -> None:
    """Each frame well formed, within the limits, numbered on, EOF exactly on the last."""
    for k, (frame, offset, rows, line) in enumerate(batches):
        number, status, got = decoded(frame, spec)
        assert number == first_number + k and rows == len(got) <= max_rows
        assert len(frame) <= max_bytes
        assert status == (EOF if k == len(batches) - 1 else CONTINUE)
        assert (offset == len(data)) == (status == EOF)
        # Byte for byte what the general encoder makes of the same rows.
        assert frame == reference.encode_table_frame(spec.opcode, number, status, got)


# -- generated data, against the csv module ------------------------------------------------

@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("generated")
    generate(root, transactions=300, seed=11)
    return root


def layout(path: Path, spec) -> Tuple[int, List[int], int]:
    """``(offset, picks, width)`` of a generated file: its plain header line, by name."""
    data = path.read_bytes()
    end = data.index(b"\n") + 1
    header = data[:end].decode().rstrip("\r\n").split(",")
    renames = CSV_COLUMNS.get(spec.name, {})
    position = {renames.get(name, name): i for i, name in enumerate(header)}
    return end, [position[k] for k in spec.required_keys], len(header)


@pytest.mark.parametrize("max_rows, max_bytes", [(50_000, MAX_BATCH_FRAME), (7, 1000), (1, 400)])
def test_generated_data_reads_as_the_csv_module_reads_it(codec, generated, max_rows, max_bytes):
    files = 0
    for spec in TABLES:
        for path in sorted((generated / spec.name).glob("*.csv"))[:3]:
            files += 1
            data = path.read_bytes()
            offset, picks, width = layout(path, spec)
            batches = encode_all(codec, data, offset=offset, line=2, picks=picks, width=width,
                                 max_rows=max_rows, max_bytes=max_bytes, spec=spec, number=5)
            check_batches(batches, data, max_rows, max_bytes, spec, first_number=5)
            expected = list(read_table_csv(path, spec))
            assert rows_of(batches, spec) == [tuple(values) for _, values in expected]
            # next_line is the line the next batch's first record starts on.
            taken = 0
            for frame, _, rows, line in batches[:-1]:
                taken += rows
                assert line == expected[taken][0]
    assert files >= 9


def test_generated_data_has_quoted_and_non_ascii_fields(generated):
    """The data above does exercise quoting and UTF-8 (it would be a weak test otherwise)."""
    text = (generated / "stores" / "stores.csv").read_text("utf-8")
    assert '"' in text and not text.isascii()


# -- quoting and line ends ------------------------------------------------------------------

@pytest.mark.parametrize("data, rows, next_line, like_csv", [
    pytest.param(b'1,"a, b",x,y\n', [("1", "a, b", "x", "y")], 2, True, id="comma"),
    pytest.param(b'1,"say ""hi""",x,y\n', [("1", 'say "hi"', "x", "y")], 2, True,
                 id="doubled-quotes"),
    pytest.param(b'1,"""",x,""\n', [("1", '"', "x", "")], 2, True, id="only-quotes"),
    pytest.param(b'1,"""a"",""b""",x,y\n', [("1", '"a","b"', "x", "y")], 2, True,
                 id="quotes-at-both-ends"),
    pytest.param(b'1,"two\nlines",x,y\n2,b,c,d\n', [("1", "two\nlines", "x", "y"),
                                                   ("2", "b", "c", "d")], 4, True,
                 id="newline-in-quotes"),
    pytest.param(b'1,"a\r\nb\n\nc",x,y\r\n', [("1", "a\r\nb\n\nc", "x", "y")], 5, True,
                 id="crlf-in-quotes-kept"),
    pytest.param(b"1,a,b,c\r\n2,d,e,f\r\n", [("1", "a", "b", "c"), ("2", "d", "e", "f")], 3,
                 True, id="crlf"),
    pytest.param(b"1,a,b,c\n2,d,e,f", [("1", "a", "b", "c"), ("2", "d", "e", "f")], 3, True,
                 id="last-line-without-newline"),
    pytest.param(b"1,a,b,c\r", [("1", "a", "b", "c")], 2, True, id="cr-ending-the-data"),
    pytest.param(b'1,a,b,"c"\r', [("1", "a", "b", "c")], 2, True, id="quote-then-cr-at-end"),
    pytest.param(b'1,a,b,"c"\r\n2,"d",e,"f"', [("1", "a", "b", "c"), ("2", "d", "e", "f")], 3,
                 True, id="quoted-at-line-ends"),
    pytest.param(b"\n\r\n1,a,b,c\n\n\r\n", [("1", "a", "b", "c")], 6, True,
                 id="blank-lines-around"),
    pytest.param(b"1,a,b,c\n\n\r", [("1", "a", "b", "c")], 4, True, id="blank-cr-at-end"),
    pytest.param(b"1,,,\n", [("1", "", "", "")], 2, True, id="empty-fields"),
    pytest.param(b'"",,"",\n', [("", "", "", "")], 2, True, id="empty-quoted-fields"),
    pytest.param(b"1, a ,b , c\n", [("1", " a ", "b ", " c")], 2, True, id="spaces-kept"),
    pytest.param(b"1,a\rb,c,d\n", [("1", "a\rb", "c", "d")], 2, False,
                 id="cr-inside-a-field-is-data"),
    pytest.param(b"1,a,b,c\r\r\n", [("1", "a", "b", "c\r")], 2, False,
                 id="only-the-last-cr-ends-the-line"),
])
def test_quoting_and_line_ends(codec, data, rows, next_line, like_csv):
    (frame, offset, count, line), = encode_all(codec, data)
    assert decoded(frame) == (1, EOF, rows)
    assert (offset, count, line) == (len(data), len(rows), next_line)
    if like_csv:
        assert csv_rows(data) == rows


def test_lines_are_counted_across_quoted_newlines_and_blank_lines(codec):
    data = (b'1,"a\nb\nc",x,y\n'    # lines 1-3
            b"\n"                   # 4
            b"2,b,c,d\n"            # 5
            b'3,"x\r\ny",z,w\r\n'   # 6-7
            b"4,a,b,c")             # 8
    batches = encode_all(codec, data, max_rows=1)
    # Blank lines after a batch's last record belong to that batch.
    assert [(offset, line) for _, offset, _, line in batches] == [
        (data.index(b"2,b"), 5), (data.index(b"3,"), 6), (data.index(b"4,"), 8), (len(data), 9)]
    assert rows_of(batches) == csv_rows(data)
    with pytest.raises(CsvError) as info:
        encode_all(codec, data.replace(b"4,a,b,c", b"4,a,b"))
    assert (info.value.message, info.value.line) == ("expected 4 fields, got 3", 8)


def test_offset_and_line_continue_where_the_caller_says(codec):
    data = b"user_id,gender,birthdate,registered_at\n1,a,b,c\n2,d,e,f\n"
    frame, offset, rows, line = encode(codec, data, offset=data.index(b"1,"), line=2, number=9)
    assert decoded(frame) == (9, EOF, [("1", "a", "b", "c"), ("2", "d", "e", "f")])
    assert (offset, rows, line) == (len(data), 2, 4)


def test_non_ascii_values(codec):
    rows = [("1", "Café", "São Paulo", "日本語の店"), ("2", "☕", 'Crème "Brûlée", x', "𝄞"),
            ("3", "Bahnhofstraße", "", "é\né")]
    out = io.StringIO(newline="")
    csv.writer(out, lineterminator="\n").writerows(rows)
    data = out.getvalue().encode()
    (frame, *_), = encode_all(codec, data)
    assert frame == reference.encode_table_frame(USERS.opcode, 1, EOF, rows)
    # Limits count bytes, not characters.
    limit = EMPTY_FRAME + max(row_size(r) for r in rows)
    batches = encode_all(codec, data, max_bytes=limit)
    check_batches(batches, data, 1000, limit)
    assert rows_of(batches) == rows and len(batches) == 3


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_any_buffer(codec, kind):
    data = b'1,"a,b",c,d\n2,e,f,g\n'
    assert encode(codec, kind(data), max_rows=1) == encode(codec, data, max_rows=1)


def test_fields_not_picked_are_not_sent_nor_checked(codec):
    data = b"x\xff,1,a,b,c,\xc3\n"
    (frame, *_), = encode_all(codec, data, picks=[1, 3, 2, 4], width=6)
    assert decoded(frame)[2] == [("1", "b", "a", "c")]


def test_a_field_may_be_picked_twice(codec):
    (frame, *_), = encode_all(codec, b'"a""b",c\n', picks=[0, 0, 1, 0], width=2)
    assert decoded(frame)[2] == [('a"b', 'a"b', "c", 'a"b')]


# -- errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("data, message, line", [
    pytest.param(b"1,a,b\n", "expected 4 fields, got 3", 1, id="too-few"),
    pytest.param(b"1,a,b,c,d\n", "expected 4 fields, got 5", 1, id="too-many"),
    pytest.param(b"1,a,b,c,\n", "expected 4 fields, got 5", 1, id="trailing-comma"),
    pytest.param(b"1,a,b,c\n\n2,a,b\n", "expected 4 fields, got 3", 3, id="after-a-blank-line"),
    pytest.param(b"1\n", "expected 4 fields, got 1", 1, id="one-field"),
    pytest.param(b'1,a"b,c,d\n', "quote inside an unquoted field", 1, id="quote-inside"),
    pytest.param(b'1,a,b,c"\n', "quote inside an unquoted field", 1, id="quote-at-field-end"),
    pytest.param(b'1, "a",c,d\n', "quote inside an unquoted field", 1, id="space-then-quote"),
    pytest.param(b'1,"a"b,c,d\n', "unexpected character after a closing quote", 1,
                 id="text-after-quote"),
    pytest.param(b'1,"a" ,c,d\n', "unexpected character after a closing quote", 1,
                 id="space-after-quote"),
    pytest.param(b'1,a,b,"c"\r\r\n', "unexpected character after a closing quote", 1,
                 id="cr-cr-lf-after-quote"),
    pytest.param(b'1,a,b,"c"\rx\n', "unexpected character after a closing quote", 1,
                 id="bare-cr-after-quote"),
    pytest.param(b'1,"abc,d,e\n2,f,g,h\n', "unterminated quoted field", 1, id="unterminated"),
    pytest.param(b'1,a,b,"c""', "unterminated quoted field", 1, id="escaped-quote-at-end"),
    pytest.param(b'1,a,b,c\n\n2,"x\ny",z,w\n3,"open\n', "unterminated quoted field", 5,
                 id="unterminated-after-multiline"),
    pytest.param(b"1,\xff,b,c\n", "not UTF-8", 1, id="invalid-byte"),
    pytest.param(b'1,a,b,"c\xc3"\n', "not UTF-8", 1, id="truncated-before-quote"),
    pytest.param(b"1,a,b,\xc3\r\n", "not UTF-8", 1, id="truncated-before-crlf"),
    pytest.param(b"1,a,b,c\n2,\xed\xa0\x80,b,c\n", "not UTF-8", 2, id="surrogate"),
    pytest.param(b'1,"x\n\xc0\xaf",b,c\n', "not UTF-8", 1, id="overlong"),
    pytest.param(b"1,\xf4\x90\x80\x80,b,c\n", "not UTF-8", 1, id="above-U+10FFFF"),
])
def test_errors_name_the_record_line(codec, data, message, line):
    with pytest.raises(CsvError) as info:
        encode_all(codec, data)
    assert (info.value.message, info.value.line, str(info.value)) == (message, line, message)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("data, message", [
    pytest.param(b"1,\xff,b,c,d\n", "expected 4 fields, got 5", id="count-before-utf8"),
    pytest.param(b'1,a,b,c,d,"e\n', "unterminated quoted field", id="grammar-before-count"),
    pytest.param(b"1,\xff" + b"x" * 300 + b",b,c\n",
                 f"row of {USERS_OVERHEAD + 304} bytes does not fit a 300-byte batch",
                 id="size-before-utf8"),
    pytest.param(b'1,"a"x,b,c,d\n', "unexpected character after a closing quote",
                 id="first-error-in-the-record-wins"),
])
def test_order_of_checks(codec, data, message):
    with pytest.raises(CsvError) as info:
        encode_all(codec, data, max_bytes=300)
    assert info.value.message == message and info.value.line == 1


def test_a_record_left_for_the_next_batch_is_checked_there(codec):
    first = b"1,a,b,c\n"
    data = first + b"2,\xff" + b"x" * 50 + b",b,c\n"
    limit = EMPTY_FRAME + row_size(("1", "a", "b", "c")) + USERS_OVERHEAD + 40
    frame, offset, rows, line = encode(codec, data, line=7, max_bytes=limit)
    assert (decoded(frame)[1], offset, rows, line) == (CONTINUE, len(first), 1, 8)
    with pytest.raises(CsvError) as info:
        encode(codec, data, offset=offset, line=line, max_bytes=limit)
    assert (info.value.message, info.value.line) == ("not UTF-8", 8)


@pytest.mark.parametrize("excess", [0, 1])
def test_row_larger_than_a_batch(codec, excess):
    big = ("2", "g", "b", "x" * 100)
    size = row_size(big)
    data = b"1,a,b,c\n2,g,b," + b"x" * 100 + b"\n3,a,b,c\n"
    limit = EMPTY_FRAME + size - excess
    if excess:
        with pytest.raises(CsvError) as info:
            encode_all(codec, data, max_bytes=limit)
        assert (info.value.message, info.value.line) == (
            f"row of {size} bytes does not fit a {limit}-byte batch", 2)
    else:
        batches = encode_all(codec, data, max_bytes=limit)
        assert [decoded(b[0])[2] for b in batches] == [[("1", "a", "b", "c")], [big],
                                                       [("3", "a", "b", "c")]]
        assert len(batches[1][0]) == limit


@pytest.mark.parametrize("options, error, message", [
    (dict(picks=[0, 1, 2]), ValueError, "picks must give a field below 4 for each of 4 keys"),
    (dict(picks=[0, 1, 2, 4]), ValueError, "picks must give a field below 4 for each of 4 keys"),
    (dict(picks=[0, 1, 2, -1]), ValueError, "picks must give a field below 4 for each of 4 keys"),
    (dict(picks=[0, 1, 2, 3.0]), ValueError, "picks must give a field below 4 for each of 4 keys"),
    (dict(max_rows=0), ValueError, "max_rows must be >= 1, not 0"),
    (dict(max_bytes=17), ValueError, "max_bytes must be >= 18 (an empty batch frame), not 17"),
    (dict(offset=-1), ValueError, "offset must be >= 0, not -1"),
    (dict(number=1 << 63), ValueError,
     f"batch_number out of range [{-(1 << 63)}, {(1 << 63) - 1}]: {1 << 63}"),
    (dict(number="1"), TypeError, "batch_number must be int, not str"),
    (dict(offset=0.0), TypeError, "offset must be int, not float"),
    (dict(line=None), TypeError, "line must be int, not NoneType"),
    (dict(width=4.0), TypeError, "width must be int, not float"),
    (dict(max_rows=1.5), TypeError, "max_rows must be int, not float"),
    (dict(max_bytes="1"), TypeError, "max_bytes must be int, not str"),
    # Checked in this order: the types first, then picks, then the limits.
    (dict(picks=[9], max_rows=0, offset=-1), ValueError, "picks must give a field below 4"),
    (dict(max_rows=0, max_bytes=0, offset=-1), ValueError, "max_rows must be >= 1, not 0"),
    (dict(picks=[9], max_bytes="x"), TypeError, "max_bytes must be int"),
])
def test_bad_arguments(codec, options, error, message):
    with pytest.raises(error) as info:
        encode(codec, b"1,a,b,c\n", **options)
    assert str(info.value).startswith(message)


def test_bad_opcode_and_data(codec):
    with pytest.raises(ValueError, match="not a table opcode: 3"):
        codec.encode_csv_batch(3, b"", 0, 1, ALL, 4, 1, 10, 1000)
    with pytest.raises(TypeError) as info:
        encode(codec, "1,a,b,c\n")
    # The interpreter's own words for it (CPython's and PyPy's differ), on both codecs.
    with pytest.raises(TypeError) as expected:
        memoryview("1,a,b,c\n")  # type: ignore[arg-type]
    assert str(info.value) == str(expected.value)


def test_huge_numbers_saturate_without_changing_results(codec):
    data = b"1,a,b,c\n\n2,d,e,f\n"
    huge = 1 << 70
    frame, offset, rows, line = encode(codec, data, line=10 ** 30, max_rows=huge, max_bytes=huge)
    assert (decoded(frame)[2], offset, rows, line) == (
        [("1", "a", "b", "c"), ("2", "d", "e", "f")], len(data), 2, 10 ** 30 + 3)
    assert encode(codec, data, offset=huge, line=4) == (
        reference.encode_table_frame(USERS.opcode, 1, EOF, []), len(data), 0, 4)
    with pytest.raises(CsvError) as info:
        encode(codec, data, width=huge, picks=[0, 1, 2, huge - 1])
    assert info.value.message == f"expected {huge} fields, got 4"
    assert encode(codec, b"", width=huge, picks=[0, 1, 2, huge - 1])[1:] == (0, 0, 1)


# -- cutting batches ------------------------------------------------------------------------

ROWS = [(str(n), f"g{n}", f"2000-01-{n:02d}", "x" * (n % 4)) for n in range(1, 11)]
DATA = "".join(",".join(r) + "\n" for r in ROWS).encode()


@pytest.mark.parametrize("max_rows, sizes", [
    (1, [1] * 10), (3, [3, 3, 3, 1]), (5, [5, 5]), (10, [10]), (11, [10]), (1 << 40, [10]),
])
@pytest.mark.parametrize("tail", [b"", b"\n\r\n"], ids=["", "trailing-blank-lines"])
def test_cut_by_rows(codec, max_rows, sizes, tail):
    data = DATA + tail
    batches = encode_all(codec, data, max_rows=max_rows, number=3)
    check_batches(batches, data, max_rows, MAX_BATCH_FRAME, first_number=3)
    assert [b[2] for b in batches] == sizes, "a data set ending on a batch boundary: no empty EOF"
    assert rows_of(batches) == ROWS
    starts = [DATA.index(f"{n},g".encode()) for n in range(1, 11)] + [len(data)]
    taken = [sum(sizes[:k + 1]) for k in range(len(sizes))]
    assert [b[1] for b in batches] == [starts[n] if n < 10 else len(data) for n in taken]
    blank = tail.count(b"\n")
    assert [b[3] for b in batches] == [n + 1 if n < 10 else 11 + blank for n in taken]


def test_cut_by_bytes_is_greedy(codec):
    sizes = [row_size(r) for r in ROWS]
    full = EMPTY_FRAME + sum(sizes)
    for limit in list(range(EMPTY_FRAME + max(sizes), EMPTY_FRAME + 3 * max(sizes))) + [
            full - 1, full, full + 1]:
        batches = encode_all(codec, DATA, max_bytes=limit)
        check_batches(batches, DATA, 1000, limit)
        assert rows_of(batches) == ROWS
        taken = 0
        for frame, _, rows, _ in batches[:-1]:
            taken += rows
            assert len(frame) + sizes[taken] > limit, "cut early: the next row would fit"
        assert (len(batches) == 1) == (limit >= full)


def test_both_limits(codec):
    sizes = [row_size(r) for r in ROWS]
    reasons = set()
    for limit in range(EMPTY_FRAME + max(sizes), EMPTY_FRAME + 5 * max(sizes), 3):
        batches = encode_all(codec, DATA, max_rows=3, max_bytes=limit)
        check_batches(batches, DATA, 3, limit)
        assert rows_of(batches) == ROWS
        taken = 0
        for frame, _, rows, _ in batches[:-1]:
            taken += rows
            by_bytes = len(frame) + sizes[taken] > limit
            assert rows == 3 or by_bytes, "cut early"
            reasons.add("bytes" if by_bytes else "rows")
    assert reasons == {"rows", "bytes"}


@pytest.mark.parametrize("data, next_line", [(b"", 1), (b"\n", 2), (b"\r\n\n\r", 4)])
def test_no_records_is_one_empty_eof_batch(codec, data, next_line):
    assert encode(codec, data, number=4) == (
        reference.encode_table_frame(USERS.opcode, 4, EOF, []), len(data), 0, next_line)


def test_offset_at_or_past_the_end(codec):
    empty = reference.encode_table_frame(USERS.opcode, 1, EOF, [])
    assert encode(codec, DATA, offset=len(DATA), line=11) == (empty, len(DATA), 0, 11)
    assert encode(codec, DATA, offset=len(DATA) + 5, line=11) == (empty, len(DATA), 0, 11)


# -- the client's batches -------------------------------------------------------------------

def old_batches(folder: Path, spec, max_rows: int, max_bytes: int) -> List[bytes]:
    """The frames of the client before the fast path: csv module rows, cut greedily."""
    frames, number = [], 0
    for path in sorted(folder.glob("*.csv")):
        pending, size = [], EMPTY_FRAME
        for _, values in read_table_csv(path, spec):
            cost = row_size(values, spec)
            if pending and (len(pending) >= max_rows or size + cost > max_bytes):
                number += 1
                frames.append(reference.encode_table_frame(spec.opcode, number, CONTINUE,
                                                           pending))
                pending, size = [], EMPTY_FRAME
            pending.append(values)
            size += cost
        number += 1
        frames.append(reference.encode_table_frame(spec.opcode, number, EOF, pending))
    return frames


@pytest.mark.parametrize("max_rows, max_bytes", [(50_000, MAX_BATCH_FRAME), (7, 1000),
                                                 (40, 2500)])
def test_client_frames_are_those_of_the_csv_module_route(codec, generated, max_rows, max_bytes):
    for spec in TABLES:
        folder = generated / spec.name
        batcher = _Batcher(spec, max_rows, max_bytes, lambda: False)
        assert [b.frame for b in batcher.batches(folder)] == old_batches(
            folder, spec, max_rows, max_bytes)


def write(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "users" / "users_1.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def client_rows(tmp_path: Path) -> list:
    batcher = _Batcher(USERS, 2, MAX_BATCH_FRAME, lambda: False)
    return [row for b in batcher.batches(tmp_path / "users") for row in decoded(b.frame)[2]]


@pytest.mark.parametrize("header", [
    b"user_id,gender,birthdate,registered_at\n",
    b"\xef\xbb\xbfuser_id,gender,birthdate,registered_at\r\n",
    b'"user_id","gender",birthdate,"registered_at"\n',
    b"registered_at,birthdate,user_id,gender\n",
], ids=["plain", "bom-crlf", "quoted-names", "shuffled"])
def test_client_header_is_parsed_by_name(codec, tmp_path, header):
    names = header.lstrip(b"\xef\xbb\xbf").decode().strip().replace('"', "").split(",")
    values = {"user_id": "1", "gender": "f", "birthdate": "2000", "registered_at": "2024"}
    write(tmp_path, header + ",".join(values[n] for n in names).encode() + b"\n")
    assert client_rows(tmp_path) == [("1", "f", "2000", "2024")]


def test_client_header_only_file_is_one_empty_eof_batch(codec, tmp_path):
    write(tmp_path, b"user_id,gender,birthdate,registered_at")
    (batch,) = _Batcher(USERS, 2, 1000, lambda: False).batches(tmp_path / "users")
    assert decoded(batch.frame) == (1, EOF, []) and batch.rows == 0


@pytest.mark.parametrize("content, message", [
    (b"", "{path}: empty file, expected a header line"),
    (b"\n1,a,b,c\n", "{path}: missing required column(s) user_id, gender, birthdate, "
                     "registered_at"),
    (b"user_id,gender\n", "{path}: missing required column(s) birthdate, registered_at"),
    (b"user_id,g\xffender\n", "{path}:1: not UTF-8: invalid start byte"),
    (b'user_id,"gender,birthdate,registered_at\n', "{path}:1: malformed CSV: "),
    (b"user_id,gender,birthdate,registered_at\n1,a,b,c\n\n2,a,b\n",
     "{path}:4: expected 4 fields, got 3"),
    (b'user_id,gender,birthdate,registered_at\n1,"a\nb",c,d\n2,"x"y,b,c\n',
     "{path}:4: malformed CSV: unexpected character after a closing quote"),
    (b"user_id,gender,birthdate,registered_at\n1,a,b,c\n2,a\"b,c,d\n",
     "{path}:3: malformed CSV: quote inside an unquoted field"),
    (b'user_id,gender,birthdate,registered_at\n1,a,b,c\n2,"a,b,c,d\n',
     "{path}:3: malformed CSV: unterminated quoted field"),
    (b"user_id,gender,birthdate,registered_at\n1,a,b,c\n2,\xff,b,c\n", "{path}:3: not UTF-8"),
])
def test_client_errors_name_file_and_line(codec, tmp_path, content, message):
    path = write(tmp_path, content)
    with pytest.raises(ClientError) as info:
        client_rows(tmp_path)
    assert str(info.value).startswith(message.format(path=path))


def test_client_row_too_large(codec, tmp_path):
    path = write(tmp_path, b"user_id,gender,birthdate,registered_at\n1,a,b,c\n2,"
                 + b"x" * 2000 + b",b,c\n")
    with pytest.raises(ClientError) as info:
        list(_Batcher(USERS, 2, 1000, lambda: False).batches(tmp_path / "users"))
    assert str(info.value) == (f"{path}:3: row of {USERS_OVERHEAD + 2003} bytes does not fit "
                               f"a 1000-byte batch")


@pytest.mark.parametrize("limit", [0, EMPTY_FRAME - 1, MAX_BATCH_FRAME + 1])
def test_client_batch_limit_holds_an_empty_batch(limit):
    with pytest.raises(ValueError, match=f"max_batch_bytes must be in {EMPTY_FRAME}.."):
        Client(("127.0.0.1", 1), 1, max_batch_bytes=limit)


def test_client_stop_sends_the_batch_in_progress_as_cancel(codec, tmp_path):
    write(tmp_path, b"user_id,gender,birthdate,registered_at\n" + DATA)
    calls = []
    batcher = _Batcher(USERS, 3, MAX_BATCH_FRAME, lambda: len(calls) >= 2)
    for batch in batcher.batches(tmp_path / "users"):
        calls.append(batch.number)
    assert calls == [1, 2]
    cancel = batcher.cancel_batch()  # rows 7..9: the third batch, marked CANCEL
    assert (cancel.number, cancel.rows) == (3, 3)
    assert decoded(cancel.frame) == (3, BatchStatus.CANCEL, [tuple(r) for r in ROWS[6:9]])
    empty = batcher.cancel_batch()  # asked again: nothing is in progress any more
    assert decoded(empty.frame) == (4, BatchStatus.CANCEL, [])


# -- C against the reference ----------------------------------------------------------------

PIECES = [b"a", b"bc", b"7", b"\xc3\xa9", b"\xe2\x98\x95", b"\xff", b"\xc3", b"\xed\xa0\x80",
          b",", b",", b",", b'"', b'"', b'""', b"\r", b"\n", b"\n", b"\r\n", b" "]
raw_csv = st.lists(st.sampled_from(PIECES), max_size=80).map(b"".join)

_text = st.lists(st.sampled_from([b"a", b"\xc3\xa9", b",", b'"', b"\n", b"\r\n", b"\r", b" ",
                                  b"\xff"]), max_size=6).map(b"".join)
_plain = st.sampled_from([b"", b"1", b"abc", b"Caf\xc3\xa9", b"x y", b"a\rb", b"22",
                          b"\xe2\x98\x95"])
_quoted = _text.map(lambda t: b'"' + t.replace(b'"', b'""') + b'"')
_field = st.one_of(_plain, _quoted, _text, st.sampled_from([b"\xff", b"\xc3", b'a"b']))
_end = st.sampled_from([b"\n", b"\n", b"\n", b"\r\n", b"\n\n", b"\r\n\r\n", b"\r"])


@st.composite
def csv_cases(draw):
    """``(data, width)``: well-formed records of ``width`` fields, some flawed, or any bytes."""
    width = draw(st.integers(1, 5))
    kind = draw(st.sampled_from(["clean", "clean", "flawed", "bytes"]))
    if kind == "bytes":
        return draw(raw_csv), width
    if kind == "clean":
        record = st.lists(st.one_of(_plain, _quoted), min_size=width, max_size=width)
    else:
        count = st.one_of(st.just(width), st.just(width), st.just(width), st.integers(1, 6))
        record = count.flatmap(lambda n: st.lists(_field, min_size=n, max_size=n))
    records = draw(st.lists(st.tuples(record.map(b",".join), _end), min_size=1, max_size=16))
    return b"".join(r + e for r, e in records), width


def outcome(module, data, offset, line, picks, width, max_rows, max_bytes):
    """Every batch until the end, or the batches then the error."""
    out = []
    number = 1
    try:
        while True:
            batch = module.encode_csv_batch(USERS.opcode, data, offset, line, picks, width,
                                            number, max_rows, max_bytes)
            out.append(batch)
            frame, next_offset, rows, line = batch
            assert len(frame) <= max_bytes and rows <= max_rows
            if next_offset >= len(data):
                return out
            assert rows > 0 and next_offset > offset
            offset, number = next_offset, number + 1
    except CsvError as exc:
        out.append((type(exc), exc.message, exc.line))
        return out


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=csv_cases(), picks=st.data(), max_rows=st.integers(1, 4),
       max_bytes=st.one_of(st.integers(120, 600), st.integers(120, 600),
                         st.sampled_from([EMPTY_FRAME, 60, 89, 100])),
       offset=st.one_of(st.just(0), st.just(0), st.integers(0, 40)), line=st.integers(-2, 1000))
def test_same_as_the_reference(codec, case, picks, max_rows, max_bytes, offset, line):
    """Random CSV-ish bytes: the same batches, or the same batches then the same error."""
    data, width = case
    chosen = picks.draw(st.lists(st.integers(0, width - 1), min_size=4, max_size=4))
    offset = min(offset, len(data))
    args = (data, offset, line, chosen, width, max_rows, max_bytes)
    got = outcome(codec, *args)
    assert got == outcome(reference, *args)
    for batch in got:
        if isinstance(batch[0], bytes):
            decoded(batch[0])  # every frame is a valid table frame
