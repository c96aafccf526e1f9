"""Hostile lengths and counts are refused before memory is spent; decoding neither leaks nor grows.

PROTOCOL.md §2: a receiver never allocates for a length it has not checked.
Every hostile input below claims far more than it carries (a 2 GiB string, a
map of 2**30 pairs, a million rows in 20 bytes, a 2 GiB frame) and must be
refused with the reference's ``ProtocolError`` while the peak of traced memory
stays under ``LIMIT``. tracemalloc traces ``PyMem_*``/``PyObject_*``
allocations, the Cython codec's included (``test_tracemalloc_sees_a_large_decode``
shows the bound can fail); a raw ``malloc`` it cannot see is caught by
``test_hostile_inputs_under_an_address_space_limit``, which replays the same
cases in a child process whose address space is capped.
"""
from __future__ import annotations

import gc
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional

import numpy  # noqa: F401  (decode_columns imports it on first use: not inside a measurement)
import pytest

import fastframe.codec
from fastframe import DataBatch, FrameDecoder, FrameReader, NewUsers, decode_frame, recv_msg
from fastframe.errors import ProtocolError
from fastframe.schema import DEFAULT_MAX_FRAME, TABLES, TABLES_BY_NAME
from wire import frame, protocol_error, sample_rows

try:
    import tracemalloc
except ImportError:  # PyPy has none
    tracemalloc = None  # type: ignore[assignment]

# PyPy has neither tracemalloc nor reference counts (its GC moves objects);
# there the address-space test below bounds the memory hostile inputs cost.
needs_tracemalloc = pytest.mark.skipif(
    tracemalloc is None, reason="no tracemalloc on this interpreter (PyPy)")
needs_refcounts = pytest.mark.skipif(
    not hasattr(sys, "getrefcount"), reason="no reference counts on this interpreter (PyPy)")

LIMIT = 1 << 20  # peak traced bytes allowed while refusing a hostile input
BIG = 2**31 - 1
USERS = TABLES_BY_NAME["users"]  # opcode 8: user_id, gender, birthdate, registered_at


def i32(n: int) -> bytes:
    return struct.pack("<i", n)


def string(raw: bytes) -> bytes:
    return i32(len(raw)) + raw


def table_header(n_rows: int = 1, batch_number: int = 0, status: int = 0) -> bytes:
    return struct.pack("<iqB", n_rows, batch_number, status)


def peak_traced(fn: Callable[[], Any]) -> int:
    """Peak bytes traced by tracemalloc while ``fn`` runs (allocations made before are not counted)."""
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


class FakeSocket:
    """``recv_into`` from ``data``, at most ``chunk`` bytes a call; reading past it fails the test.

    A real peer that sent only a hostile header would leave the receiver
    blocked here: a reader must refuse the header without asking for more.
    """

    def __init__(self, data: bytes, chunk: int = 1 << 30, hang: bool = True) -> None:
        self.data, self.pos, self.chunk, self.hang = bytes(data), 0, chunk, hang

    def recv_into(self, buf: Any, nbytes: int = 0) -> int:
        if self.pos == len(self.data) and self.hang:
            raise AssertionError("read past the hostile bytes: a real socket would block here")
        n = min(len(buf), self.chunk, len(self.data) - self.pos)
        buf[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n


# -- the hostile inputs ----------------------------------------------------------------------------
# (id, call(codec), expected message, expected opcode). Calls build their input
# before the traced region starts (the lambdas only close over ready bytes).

ROW_KEY_BIG = table_header() + i32(4) + i32(BIG) + b"user_id"
ROW_VALUE_BIG = table_header() + i32(4) + string(b"user_id") + i32(BIG) + b"x"
ROW_VALUE_NEGATIVE = table_header() + i32(4) + string(b"user_id") + i32(-1) + b"x"
ROW_PAIRS_HUGE = table_header() + i32(2**30) + b"x" * 8
MILLION_ROWS = table_header(n_rows=1_000_000) + b"x" * 7  # a 20-byte body
assert len(MILLION_ROWS) == 20
MAX_ROWS = table_header(n_rows=BIG) + b"x" * 7
EOF_HEADER = table_header(status=1)
DATABATCH_HEAD = bytes([1, 1, 1, 2]) + struct.pack("<Hq", 0, 0) + b"\x00" + struct.pack("<HH", 0, 0)


def _table_cases(name: str, body: bytes, message: str, opcode: int = USERS.opcode) -> list:
    cases = []
    for row_type in ("object", "dict", "tuple"):
        cases.append((f"{name}-{row_type}",
                      lambda c, rt=row_type: c.decode_table_body(opcode, body, rt), message, opcode))
    cases.append((f"{name}-projected",
                  lambda c: c.decode_table_body(opcode, body, "dict", None, True),
                  message.replace(f"expected {len(USERS.required_keys)} pairs",
                                  f"expected at most {len(USERS.required_keys)} pairs"), opcode))
    cases.append((f"{name}-project_databatch",
                  lambda c: c.project_databatch(opcode, body, [1], [4], {}, 0, 0), message, opcode))
    cases.append((f"{name}-decode_frame", lambda c: decode_frame(frame(opcode, body)), message,
                  opcode))
    return cases


HOSTILE = [
    # a string's i32 length: 2**31 - 1 (at offset 0 and at an offset where pos + n overflows i32), -1
    ("string-2GiB", lambda c: c.read_string(i32(BIG) + b"abc"),
     "truncated: need 2147483647 bytes at offset 4, have 3", None),
    ("string-2GiB-at-offset", lambda c: c.read_string(b"\x00" * 9 + i32(BIG) + b"abc", 9),
     "truncated: need 2147483647 bytes at offset 13, have 3", None),
    ("string-negative", lambda c: c.read_string(i32(-1) + b"abc"),
     "negative string length -1 at offset 0", None),
    ("string-min-i32", lambda c: c.read_string(i32(-2**31) + b"abc"),
     "negative string length -2147483648 at offset 0", None),
    *_table_cases("row-key-2GiB", ROW_KEY_BIG, "truncated: need 2147483647 bytes at offset 21, have 7"),
    *_table_cases("row-value-2GiB", ROW_VALUE_BIG,
                  "truncated: need 2147483647 bytes at offset 32, have 1"),
    *_table_cases("row-value-negative", ROW_VALUE_NEGATIVE, "negative string length -1 at offset 28"),
    ("eof-table-type-2GiB",
     lambda c: c.decode_eof_body(EOF_HEADER + i32(1) + string(b"table_type") + i32(BIG) + b"users"),
     "truncated: need 2147483647 bytes at offset 35, have 5", 9),
    # a string map claiming 2**30 pairs
    ("string-map-2**30-pairs", lambda c: c.read_string_map(i32(2**30) + string(b"a") + string(b"b")),
     "truncated: need 4 bytes at offset 14, have 0", None),
    *_table_cases("row-2**30-pairs", ROW_PAIRS_HUGE, "row 0: expected 4 pairs, got 1073741824"),
    ("eof-2**30-pairs", lambda c: c.decode_eof_body(EOF_HEADER + i32(2**30) + b"x" * 8),
     "EOF: expected 1 pair, got 1073741824", 9),
    # a million (and 2**31 - 1) rows in a 20-byte body
    *_table_cases("million-rows", MILLION_ROWS, "row count 1000000 exceeds what 7 body bytes can hold"),
    *_table_cases("max-rows", MAX_ROWS, "row count 2147483647 exceeds what 7 body bytes can hold"),
    ("million-rows-in-a-databatch",
     lambda c: decode_frame(frame(0, DATABATCH_HEAD + frame(8, MILLION_ROWS))),
     "row count 1000000 exceeds what 7 body bytes can hold", 8),
    ("million-rows-FrameDecoder", lambda c: FrameDecoder().feed(frame(8, MILLION_ROWS)),
     "row count 1000000 exceeds what 7 body bytes can hold", 8),
    ("u8-list-255-in-3-bytes", lambda c: c.decode_databatch_body(b"\xff\x01\x02"),
     "truncated: need 255 bytes at offset 1, have 2", 0),
    ("databatch-embedded-2GiB", lambda c: c.decode_databatch_body(DATABATCH_HEAD + struct.pack(
        "<Bi", 8, BIG) + b"x"), "embedded frame length 2147483647 does not match the 1 bytes left", 0),
    # a frame header claiming 2**31 - 1 bytes
    ("header-2GiB-read_frame_header", lambda c: c.read_frame_header(struct.pack("<Bi", 7, BIG)),
     f"frame length 2147483647 exceeds the limit of {DEFAULT_MAX_FRAME} bytes", 7),
    ("header-2GiB-decode_frame", lambda c: decode_frame(struct.pack("<Bi", 7, BIG) + b"x" * 15),
     f"frame length 2147483647 exceeds the limit of {DEFAULT_MAX_FRAME} bytes", 7),
    ("header-2GiB-decode_frame-no-limit",
     lambda c: decode_frame(struct.pack("<Bi", 7, BIG) + b"x" * 15, max_frame=BIG),
     "frame length 2147483647 does not match the 15 bytes given", 7),
    ("header-2GiB-FrameDecoder", lambda c: FrameDecoder().feed(struct.pack("<Bi", 7, BIG) + b"x"),
     f"frame length 2147483647 exceeds the limit of {DEFAULT_MAX_FRAME} bytes", 7),
    ("header-2GiB-recv_msg", lambda c: recv_msg(FakeSocket(struct.pack("<Bi", 4, BIG))),
     f"frame length 2147483647 exceeds the limit of {DEFAULT_MAX_FRAME} bytes", 4),
    ("header-2GiB-recv_msg-byte-by-byte",
     lambda c: recv_msg(FakeSocket(struct.pack("<Bi", 4, BIG), chunk=1)),
     f"frame length 2147483647 exceeds the limit of {DEFAULT_MAX_FRAME} bytes", 4),
    # read_from(sock, length): the original orchestrator's API, where the caller read the
    # header. It has no max_frame argument, so it must apply the default limit itself.
    ("read_from-2GiB-table", lambda c: NewUsers().read_from(FakeSocket(b""), BIG),
     f"frame length 2147483647 exceeds the limit of {DEFAULT_MAX_FRAME} bytes", 8),
    ("read_from-2GiB-databatch", lambda c: DataBatch().read_from(FakeSocket(b""), BIG),
     f"frame length 2147483647 exceeds the limit of {DEFAULT_MAX_FRAME} bytes", 0),
    ("header-2GiB-FrameReader",
     lambda c: FrameReader(FakeSocket(struct.pack("<Bi", 6, BIG)), buffer_size=16).read_frame(),
     f"frame length 2147483647 exceeds the limit of {DEFAULT_MAX_FRAME} bytes", 6),
    ("header-2GiB-FrameReader-byte-by-byte",
     lambda c: FrameReader(FakeSocket(struct.pack("<Bi", 6, BIG), chunk=1),
                           buffer_size=16).read_frame(),
     f"frame length 2147483647 exceeds the limit of {DEFAULT_MAX_FRAME} bytes", 6),
]
if hasattr(fastframe.codec.load("python"), "decode_columns"):
    HOSTILE += [
        ("million-rows-decode_columns", lambda c: c.decode_columns(frame(8, MILLION_ROWS)),
         "row count 1000000 exceeds what 7 body bytes can hold", 8),
        ("header-2GiB-decode_columns", lambda c: c.decode_columns(struct.pack("<Bi", 7, BIG)),
         "frame length 2147483647 does not match the 0 bytes given", 7),
    ]


def _needs(codec: Any, call_id: str) -> None:
    if "decode_columns" in call_id and not hasattr(codec, "decode_columns"):
        pytest.fail(f"{codec.__name__} has no decode_columns; the pure codec has")


@needs_tracemalloc
@pytest.mark.parametrize("call,message,opcode",
                         [pytest.param(*case[1:], id=case[0]) for case in HOSTILE])
def test_hostile_length_refused_before_allocating(codec, request, call, message, opcode):
    _needs(codec, request.node.callspec.id)

    def refuse():
        with protocol_error(message, opcode):
            call(codec)

    peak = peak_traced(refuse)
    assert peak < LIMIT, f"{peak} bytes traced while refusing it"


@needs_tracemalloc
def test_tracemalloc_sees_a_large_decode(codec):
    """The bound above can fail: decoding a 4,000-row batch peaks over ``LIMIT`` on either codec."""
    rows = sample_rows(USERS, 4000)
    body = codec.encode_table_frame(USERS.opcode, 0, 0, rows)[5:]
    peak = peak_traced(lambda: codec.decode_table_body(USERS.opcode, body, "dict"))
    assert peak > LIMIT, peak
    assert peak_traced(lambda: bytearray(2 * LIMIT)) > 2 * LIMIT


_CHILD = """
import resource, sys
sys.path[:0] = {paths!r}
import fastframe.codec, test_limits
codec = fastframe.codec.load({impl!r})
fastframe.codec.impl = codec
cases = [case for case in test_limits.HOSTILE
         if "decode_columns" not in case[0] or hasattr(codec, "decode_columns")]
vm = int([l for l in open("/proc/self/status") if l.startswith("VmSize:")][0].split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + {headroom}, resource.getrlimit(resource.RLIMIT_AS)[1]))
failed = []
for name, call, message, opcode in cases:
    try:
        call(codec)
        failed.append((name, "not refused"))
    except test_limits.ProtocolError as exc:
        if (exc.message, exc.opcode) != (message, opcode):
            failed.append((name, repr(exc)))
    except BaseException as exc:
        failed.append((name, repr(exc)))
print(len(cases), failed)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.skipif("asan" in os.environ.get("LD_PRELOAD", ""),
                    reason="AddressSanitizer reserves terabytes of address space")
@pytest.mark.parametrize("impl", [pytest.param("c", marks=pytest.mark.needs_extension), "python"])
def test_hostile_inputs_under_an_address_space_limit(impl):
    """The same cases with the address space capped at 256 MiB over what the child has mapped.

    tracemalloc does not see a plain ``malloc``; an allocation sized from a
    hostile length would fail here (``MemoryError`` or a crash) instead.
    """
    paths = [str(Path(__file__).resolve().parent),
             *[p for p in sys.path if p and Path(p, "fastframe").is_dir()]]
    script = _CHILD.format(paths=paths, impl=impl, headroom=256 << 20)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == f"{len(HOSTILE)} []", done.stdout


# -- readers agree however the bytes arrive ----------------------------------------------------------

def test_frame_reader_one_byte_at_a_time_equals_whole_frames(codec, conformance_dir):
    data = (conformance_dir / "sample_c2s.bin").read_bytes()

    def messages(chunk: int) -> list:
        reader = FrameReader(FakeSocket(data, chunk=chunk, hang=False))
        out = []
        while (msg := reader.read_message()) is not None:
            out.append(msg)
        return out

    whole = messages(len(data))
    assert len(whole) == 11
    assert messages(1) == whole
    peer, sock = socket.socketpair()
    with peer, sock:
        peer.sendall(data)
        peer.shutdown(socket.SHUT_WR)
        assert [recv_msg(sock) for _ in range(11)] == whole


# -- no leaks ----------------------------------------------------------------------------------------

def _leak_probe_inputs(codec: Any) -> List[tuple]:
    """Small bodies: valid ones, and one failing at each stage where partial results exist."""
    row = {"user_id": "u-1", "gender": "Café", "birthdate": "1990-01-01", "registered_at": ""}
    good = codec.encode_table_frame(USERS.opcode, 1, 0, [row, row])[5:]
    pairs = b"".join(string(k.encode()) + string(row[k].encode()) for k in USERS.required_keys)
    one_row = table_header(2) + i32(4) + pairs
    dup = table_header(1) + i32(4) + b"".join(
        string(k) + string(b"1") for k in (b"user_id", b"user_id", b"birthdate", b"registered_at"))
    return [
        (USERS.opcode, good, "object", False),
        (USERS.opcode, good, "dict", True),
        (USERS.opcode, good, "tuple", False),
        (USERS.opcode, one_row + i32(4) + pairs[:-3], "object", False),  # truncated 2nd row
        (USERS.opcode, one_row + i32(3) + pairs, "dict", False),  # wrong pair count
        (USERS.opcode, one_row + i32(4) + pairs.replace(b"gender", b"gendex"), "object",
         False),  # unknown key
        (USERS.opcode, dup, "dict", False),  # duplicate key
        (USERS.opcode, one_row + i32(4) + pairs.replace(b"u-1", b"u\xff1"), "object",
         False),  # invalid UTF-8 in a value
        (USERS.opcode, good + b"\x00", "tuple", False),  # a trailing byte
    ]


def _decode_quietly(codec: Any, case: tuple) -> Any:
    opcode, body, row_type, projected = case
    try:
        return codec.decode_table_body(opcode, body, row_type, None, projected)
    except fastframe.ProtocolError:
        return None


@needs_tracemalloc
def test_many_small_decodes_keep_memory_flat(codec):
    """100,000 decodes, valid and failing ones, leave the interpreter's memory where it was.

    Measured twice: live allocated blocks (``sys.getallocatedblocks``, cheap)
    over all 100,000, and traced bytes (tracemalloc, ten times slower per
    allocation) over the first 10,000. A leak of one object per decode shows
    in both; results that are kept show in both (so the bounds can fail).
    Blocks are pymalloc's: with PYTHONMALLOC=malloc (the ASan run) there are none.
    """
    cases = _leak_probe_inputs(codec)
    assert [_decode_quietly(codec, case) is None for case in cases] == [False] * 3 + [True] * 6
    schedule = [cases[i % 3] if i % 10 else cases[3 + (i // 10) % 6] for i in range(100_000)]
    for case in schedule[:1000]:  # warm caches, free lists and interned strings first
        _decode_quietly(codec, case)

    gc.collect()
    before = sys.getallocatedblocks()
    for case in schedule:
        _decode_quietly(codec, case)
    gc.collect()
    grown_blocks = sys.getallocatedblocks() - before
    kept = [_decode_quietly(codec, case) for case in schedule[1:10_000:10]]
    kept_blocks = sys.getallocatedblocks() - before - grown_blocks
    del kept

    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for case in schedule[:10_000]:
            _decode_quietly(codec, case)
        gc.collect()
        grown_bytes = tracemalloc.get_traced_memory()[0] - before
        kept = [_decode_quietly(codec, case) for case in schedule[1:10_000:10]]
        kept_bytes = tracemalloc.get_traced_memory()[0] - before - grown_bytes
        del kept
    finally:
        tracemalloc.stop()
    assert grown_bytes < 32 * 1024, f"{grown_bytes} more bytes traced after 10,000 decodes"
    assert kept_bytes > 200_000, kept_bytes
    if sys.getallocatedblocks():
        assert grown_blocks < 500, f"{grown_blocks} more blocks allocated after 100,000 decodes"
        assert kept_blocks > 5000, kept_blocks


@needs_refcounts
def test_key_references_are_not_leaked(codec):
    """The key strings rows share: the table's own objects, held while results live, released after.

    From Python 3.12 on, interned strings are immortal (PEP 683) and every key is
    one: its reference count never moves, so a leaked reference can neither be
    seen nor do harm. What still can go wrong there is a key built per row (a new
    object each time, to leak); so every key in the results must be the table's
    own object, on every version, and the reference counts are compared for the
    keys only the tables hold. That leaves out the identifiers the interpreter
    itself shares: "name" (hundreds of references before 3.11, where other code
    that runs meanwhile moves its count either way; a static string at ~10**9
    from 3.11 on, with "state").
    """
    table_keys = {id(k) for spec in TABLES for k in spec.required_keys}
    counted = [k for spec in TABLES for k in spec.required_keys if sys.getrefcount(k) < 200]
    cases = _leak_probe_inputs(codec)
    every_table = [(spec.opcode, codec.encode_table_frame(spec.opcode, 0, 0,
                                                          sample_rows(spec, 50))[5:],
                    row_type, projected)
                   for spec in TABLES for row_type in ("object", "dict", "tuple")
                   for projected in (False, True)]
    # Every path once before counting: a first call may fill a bounded cache
    # (the pure codec's key-order patterns), which is not a leak.
    for case in cases + every_table:
        _decode_quietly(codec, case)
    gc.collect()
    before = [sys.getrefcount(k) for k in counted]
    results = [_decode_quietly(codec, case) for _ in range(500) for case in cases]
    results += [_decode_quietly(codec, case) for case in every_table]
    assert None not in results[-len(every_table):]   # those are all valid
    returned = [k for result in results if result is not None for k in result[2]]
    returned += [k for result in results if result is not None
                 for row in result[3] if isinstance(row, dict) for k in row]
    assert len(returned) > 500 * 2 * 4, len(returned)
    assert all(id(k) in table_keys for k in returned), "a key that is not the table's own object"
    if "user_id" in counted:
        # 500 x (2 dict rows + a projected keys tuple) reference "user_id" at least
        assert sys.getrefcount(USERS.required_keys[0]) >= before[counted.index("user_id")] + 1000
    del results, returned
    gc.collect()
    after = [sys.getrefcount(k) for k in counted]
    assert after == before, [(k, b, a) for k, b, a in zip(counted, before, after) if a != b]


# Does decoding release the GIL (project_databatch on the C codec letting another thread run)?
# Not tested: any assertion on it is a timing assertion, flaky on a shared 2-core CI machine.
