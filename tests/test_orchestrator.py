"""The orchestrator over real loopback sockets (PROTOCOL.md §6–§8).

Every test runs an ``Orchestrator`` in-process: ``serve_forever()`` in a
thread on 127.0.0.1, port 0, stopped with ``request_shutdown()`` and a
bounded join. Clients are raw sockets (``Wire``), to see each ACK as it comes,
or ``fastframe.client.Client``. Sinks are the real ``FileSink`` or
``MemorySink``, a fake with the sink contract that can fail, stall or be slow
on command. Every socket has a timeout and every thread is joined with one,
so a hang fails the test instead of stalling the suite.

The helpers above the tests are used by ``test_end_to_end.py`` too.
"""
from __future__ import annotations

import collections
import errno
import logging
import random
import select
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import pytest

from fastframe import codec
from fastframe.client import Client, read_table_csv
from fastframe.datagen import generate
from fastframe.messages import DataBatch, EOFMessage, Finished, decode_frame
from fastframe.orchestrator import Orchestrator
from fastframe.schema import (
    ALL_QUERY_IDS, FRAME_HEADER_SIZE, TABLES, TABLES_BY_NAME, BatchStatus, Opcodes, TableSpec,
)
from fastframe.sinks import SinkError
from fastframe.sinks.file import FileSink, read_frames
from wire import eof_body, frame, sample_rows, shuffled, table_body

SOCKET_TIMEOUT = 20.0    # any single socket operation
JOIN_TIMEOUT = 60.0      # any thread, the orchestrator's included
SUCCESS = bytes([Opcodes.BATCH_RECV_SUCCESS, 0, 0, 0, 0])
FAIL = bytes([Opcodes.BATCH_RECV_FAIL, 0, 0, 0, 0])
MENU = TABLES_BY_NAME["menu_items"]
ALL_TABLE_OPCODES = [spec.opcode for spec in TABLES]
SAMPLE_TABLES = [spec.name for spec in TABLES]   # the order of the sample capture


# -- sinks ------------------------------------------------------------------------------

class MemorySink:
    """A ``Sink`` that keeps frames in memory, with ``FileSink``'s contract.

    ``write`` stages a frame, ``flush`` makes everything staged durable
    (``durable``); a failing write or flush drops what was staged since the
    last flush, as ``FileSink`` truncates its file back. On command it fails
    (``fail``, ``recover``), sleeps in every flush (``flush_delay``) or blocks
    each flush until ``gate`` is set. ``group_sizes`` has the number of frames each
    successful flush made durable; ``events`` the calls, in order.
    """

    def __init__(self, flush_delay: float = 0.0, gate: Optional[threading.Event] = None) -> None:
        self.flush_delay = flush_delay
        self.gate = gate
        self.durable: List[bytes] = []
        self.group_sizes: List[int] = []
        self.events: List[str] = []
        self.failures = 0
        self.closed = False
        self.staged_at_close = 0
        self._staged: List[bytes] = []
        self._fail_in: Optional[str] = None
        self._fail_every = 1
        self._error: type = SinkError
        self._calls = collections.Counter()
        self._lock = threading.Lock()

    # commands, from the test thread

    def fail(self, where: str, every: int = 1, error: type = SinkError) -> None:
        """Make every ``every``-th call of ``where`` ("write" or "flush") from now
        on raise ``error``, until ``recover()``."""
        assert where in ("write", "flush")
        with self._lock:
            self._fail_in, self._fail_every, self._error = where, every, error
            self._calls[where] = 0

    def recover(self) -> None:
        with self._lock:
            self._fail_in = None

    def snapshot(self) -> List[bytes]:
        with self._lock:
            return list(self.durable)

    # the Sink interface, from the orchestrator's sink writer

    def _check(self, where: str) -> None:
        with self._lock:
            self.events.append(where)
            self._calls[where] += 1
            failing = self._fail_in == where and self._calls[where] % self._fail_every == 0
            if failing:
                self.failures += 1
                self._staged.clear()
        if failing:
            raise self._error(f"{where} failed on command")

    def write(self, frame: bytes, query_ids: Sequence[int] = ()) -> None:
        assert not self.closed, "write after close"
        self._check("write")
        with self._lock:
            self._staged.append(bytes(frame))

    def flush(self) -> None:
        if self.flush_delay:
            time.sleep(self.flush_delay)
        if self.gate is not None and not self.gate.wait(JOIN_TIMEOUT):
            raise SinkError("the test never opened the gate")
        self._check("flush")
        with self._lock:
            if self._staged:
                self.group_sizes.append(len(self._staged))
            self.durable.extend(self._staged)
            self._staged.clear()

    def close(self) -> None:
        with self._lock:
            self.events.append("close")
            self.staged_at_close = len(self._staged)
            self.closed = True


# -- the server -------------------------------------------------------------------------

class Server:
    """An ``Orchestrator`` on 127.0.0.1:0 serving in a thread until ``stop()``."""

    def __init__(self, sink, **options) -> None:
        self.sink = sink
        self.orchestrator = Orchestrator(sink, "127.0.0.1", 0, **options)
        self.address = self.orchestrator.address
        self.thread = threading.Thread(target=self.orchestrator.serve_forever,
                                       name="test-orchestrator", daemon=True)
        self.thread.start()

    def stop(self, grace: float = 10.0) -> None:
        """``request_shutdown`` and wait (bounded) until ``serve_forever`` returned."""
        self.orchestrator.request_shutdown(grace)
        self.thread.join(JOIN_TIMEOUT)
        assert not self.thread.is_alive(), "serve_forever did not return after request_shutdown"


@pytest.fixture
def start_server():
    """``start_server(sink, **options)`` -> a running ``Server``; all stopped at teardown."""
    servers: List[Server] = []

    def start(sink=None, **options) -> Server:
        server = Server(MemorySink() if sink is None else sink, **options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        gate = getattr(server.sink, "gate", None)
        if gate is not None:
            gate.set()   # a stalled sink must not keep the orchestrator from stopping
        server.stop()


class Workers:
    """Callables, each run in its own thread from construction on."""

    def __init__(self, targets: Iterable[Callable[[], object]]) -> None:
        self.results: List[object] = []
        self.errors: List[BaseException] = []
        self.threads = []
        for i, target in enumerate(targets):
            self.results.append(None)
            thread = threading.Thread(target=self._run, args=(i, target), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _run(self, i: int, target: Callable[[], object]) -> None:
        try:
            self.results[i] = target()
        except BaseException as exc:  # re-raised in the test's thread by join()
            self.errors.append(exc)

    def join(self) -> List[object]:
        """Wait (bounded) for every thread; re-raise the first error; return the results."""
        for t in self.threads:
            t.join(JOIN_TIMEOUT)
        assert not any(t.is_alive() for t in self.threads), "a client thread did not finish"
        if self.errors:
            raise self.errors[0]
        return self.results


def run_threads(targets: Iterable[Callable[[], object]]) -> List[object]:
    """Run each callable in its own thread; return their results, re-raising the first error."""
    return Workers(targets).join()


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until true; fail after ``JOIN_TIMEOUT`` (never a timing assertion)."""
    deadline = time.monotonic() + JOIN_TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


# -- a raw client -----------------------------------------------------------------------

class Wire:
    """A raw client connection: bytes out, ACK frames in, every call bounded."""

    def __init__(self, address: Tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=SOCKET_TIMEOUT)

    def __enter__(self) -> "Wire":
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise EOFError(f"orchestrator closed the connection after {len(data)} of {n} bytes")
            data += chunk
        return data

    def ack(self) -> bytes:
        """The next 5-byte ACK frame, checked to be one."""
        ack = self.recv_exactly(5)
        assert ack in (SUCCESS, FAIL), f"not an ACK frame: {ack!r}"
        return ack

    def acks(self, n: int) -> List[bytes]:
        return [self.ack() for _ in range(n)]

    def read_until_closed(self) -> bytes:
        """Everything the orchestrator sends until it closes (a reset counts as closed)."""
        data = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError as exc:  # reset, or gone before we asked
                if exc.errno not in (errno.ECONNRESET, errno.ENOTCONN):
                    raise
                return data
            if not chunk:
                return data
            data += chunk


# -- frames -----------------------------------------------------------------------------

def batch_frame(spec: TableSpec, rows: Sequence[Dict[str, str]], batch_number: int = 1,
                status: int = BatchStatus.CONTINUE, seed: int = 0) -> bytes:
    """A valid client table frame, each row's pairs in a random order as Go writes them."""
    rng = random.Random(seed)
    body = table_body(codec.impl, [shuffled(row, rng) for row in rows],
                      batch_number=batch_number, status=status)
    return frame(spec.opcode, body)


def eof_frame(table: str, batch_number: int = 0) -> bytes:
    return codec.impl.encode_eof_frame(batch_number, table)


def finished_frame(agency_id: int) -> bytes:
    return codec.impl.encode_finished_frame(agency_id)


def projected(spec: TableSpec, rows: Sequence[Dict[str, str]], batch_number: int,
              status: int) -> bytes:
    """The embedded frame the orchestrator must produce: §8 columns, in §8 order."""
    return codec.impl.encode_table_frame(
        spec.opcode, batch_number, status, [[row[k] for k in spec.kept_columns] for row in rows],
        spec.kept_columns)


def decode(frames: Iterable[bytes]) -> List[DataBatch]:
    out = []
    for data in frames:
        msg = decode_frame(bytes(data), max_frame=len(data))
        assert isinstance(msg, DataBatch)
        out.append(msg)
    return out


def numbered_batch(number: int) -> bytes:
    """A one-row menu_items batch whose batch number identifies it in the sink."""
    return batch_frame(MENU, sample_rows(MENU, 1, seed=number), batch_number=number)


def batch_numbers(frames: Iterable[bytes]) -> List[int]:
    return [db.batch_number for db in decode(frames)]


def split_frames(data: bytes) -> List[bytes]:
    """The whole frames of a capture, in order."""
    frames, pos = [], 0
    while pos < len(data):
        (length,) = struct.unpack_from("<i", data, pos + 1)
        frames.append(data[pos:pos + 5 + length])
        pos += 5 + length
    return frames


# -- what a data folder should turn into ------------------------------------------------

Rows = Dict[str, collections.Counter]


def csv_files(folder: Path, spec: TableSpec) -> List[Path]:
    """The CSV files the client sends for ``spec``, in the order it sends them."""
    table_dir = folder / spec.name
    if not table_dir.is_dir():
        return []
    return sorted(p for p in table_dir.iterdir() if p.suffix == ".csv" and p.is_file())


def expected_rows(folder: Path) -> Dict[str, List[Tuple[str, ...]]]:
    """Per table, every CSV row as its §8 projection (kept columns, §8 order), in send order."""
    out = {}
    for spec in TABLES:
        picks = [spec.required_keys.index(k) for k in spec.kept_columns]
        out[spec.name] = [tuple(values[i] for i in picks)
                          for path in csv_files(folder, spec)
                          for _, values in read_table_csv(path, spec)]
    return out


def stored_rows(batches: Iterable[DataBatch]) -> Dict[str, List[Tuple[str, ...]]]:
    """Per table, the rows of every table batch in the sink, in sink order.

    Each embedded batch must carry exactly the §8 columns in §8 order; a row's
    values are read by key name, so a value under the wrong key shows.
    """
    out: Dict[str, List[Tuple[str, ...]]] = {spec.name: [] for spec in TABLES}
    for db in batches:
        msg = db.batch_msg
        if isinstance(msg, (EOFMessage, Finished)):
            continue
        spec = msg.table
        if msg.rows:   # an empty batch (a CSV file with no rows) has no columns to show
            assert msg.columns == spec.kept_columns, f"{spec.name}: columns {msg.columns}"
        for row in msg.rows:
            assert all(getattr(row, k) is None for k in spec.required_keys
                       if k not in spec.kept_columns)
            out[spec.name].append(tuple(getattr(row, k) for k in spec.kept_columns))
    return out


def as_multisets(rows: Dict[str, List[Tuple[str, ...]]]) -> Rows:
    return {table: collections.Counter(values) for table, values in rows.items()}


def assert_header(db: DataBatch, table: Optional[TableSpec], compat: bool) -> None:
    """The DataBatch header values of HeaderPolicy (``table=None``: FINISHED)."""
    if compat:
        assert db.table_ids == [1]
        assert (db.total_shards, db.shard_num) == (0, 0)
    else:
        assert db.table_ids == ([table.opcode] if table else ALL_TABLE_OPCODES)
        assert (db.total_shards, db.shard_num) == (1, 0)
    assert db.query_ids == list(table.query_ids if table else ALL_QUERY_IDS)
    assert db.meta == {}
    assert db.reserved_u16 == 0


@pytest.fixture(scope="module")
def small_datasets(tmp_path_factory) -> List[Path]:
    """Three small generated data sets (different seeds): 24 monthly files per table."""
    root = tmp_path_factory.mktemp("datasets")
    folders = []
    for seed in (1, 2, 3):
        folder = root / f"seed{seed}"
        generate(folder, transactions=120, seed=seed)
        folders.append(folder)
    return folders


# == conformance: the original system's bytes ===========================================

@pytest.mark.parametrize("chunk", [None, 1, 777], ids=["whole", "1-byte", "777-byte"])
def test_sample_capture_replay(start_server, conformance_dir, tmp_path, chunk):
    sink = FileSink(tmp_path / "sink.bin", fsync="never")
    server = start_server(sink, compat=True)
    c2s = (conformance_dir / "sample_c2s.bin").read_bytes()
    step = chunk or len(c2s)
    with Wire(server.address) as client:
        for start in range(0, len(c2s), step):
            client.send(c2s[start:start + step])
        answered = client.read_until_closed()
    assert answered == (conformance_dir / "sample_s2c.bin").read_bytes()
    server.stop()

    frames = list(read_frames(tmp_path / "sink.bin"))
    assert len(frames) == 11
    golden = conformance_dir / "golden_sample"
    c2s_frames = split_frames(c2s)
    batches = decode(frames)
    for i, table in enumerate(SAMPLE_TABLES):
        spec = TABLES_BY_NAME[table]
        assert bytes(frames[2 * i]) == (golden / f"databatch_{table}.bin").read_bytes(), table
        eof = batches[2 * i + 1]
        assert isinstance(eof.batch_msg, EOFMessage)
        assert eof.batch_msg.table_type == table
        assert eof.batch_bytes == c2s_frames[2 * i + 1]   # forwarded whole
        assert eof.batch_number == 0                       # what the Go client sends
        assert_header(eof, spec, compat=True)
    finished = batches[10]
    assert finished.batch_msg == Finished(1)
    assert finished.batch_bytes == c2s_frames[10]
    assert finished.batch_number == 0
    assert_header(finished, None, compat=True)


@pytest.mark.parametrize("vector_set", ["golden", "golden_sample"])
@pytest.mark.parametrize("table", SAMPLE_TABLES)
def test_golden_input_becomes_golden_databatch(start_server, conformance_dir, tmp_path,
                                               vector_set, table):
    sink = FileSink(tmp_path / "sink.bin", fsync="never")
    server = start_server(sink, compat=True)
    folder = conformance_dir / vector_set
    with Wire(server.address) as client:
        client.send((folder / f"input_{table}.bin").read_bytes())
        assert client.ack() == SUCCESS
    server.stop()
    assert [bytes(f) for f in read_frames(tmp_path / "sink.bin")] == [
        (folder / f"databatch_{table}.bin").read_bytes()]


# == what goes downstream, fastframe's own header values ================================

@pytest.mark.parametrize("spec", TABLES, ids=lambda s: s.name)
def test_table_eof_and_finished_are_forwarded_with_their_headers(start_server, spec):
    server = start_server()
    rows = sample_rows(spec, 25, seed=spec.opcode)
    with Wire(server.address) as client:
        client.send(batch_frame(spec, rows[:20], batch_number=6, status=BatchStatus.CONTINUE)
                    + batch_frame(spec, rows[20:], batch_number=7, status=BatchStatus.EOF)
                    + eof_frame(spec.name, batch_number=7))
        assert client.acks(3) == [SUCCESS] * 3
        client.send(finished_frame(4242))
        assert client.read_until_closed() == SUCCESS   # FINISHED: stored, ACKed, closed
    server.stop()

    first, second, eof, finished = decode(server.sink.durable)
    for db, part, number, status in ((first, rows[:20], 6, BatchStatus.CONTINUE),
                                     (second, rows[20:], 7, BatchStatus.EOF)):
        assert_header(db, spec, compat=False)
        assert db.batch_number == number
        assert db.batch_bytes == projected(spec, part, number, status)
    assert_header(eof, spec, compat=False)
    assert eof.batch_number == 7
    assert eof.batch_msg == EOFMessage(7, spec.name)
    assert_header(finished, None, compat=False)
    assert finished.batch_msg == Finished(4242)


def test_answers_go_out_at_once_on_either_event_loop(start_server):
    # Without TCP_NODELAY on the accepted socket, an answer the client waits for
    # (the last of a window, FINISHED's) sat out the client's delayed ACK: asyncio's
    # own loop does not set it on these sockets, uvloop does (the suite runs both).
    server = start_server()
    with socket.create_connection(server.address, timeout=JOIN_TIMEOUT):
        deadline = time.monotonic() + JOIN_TIMEOUT
        while not server.orchestrator.live and time.monotonic() < deadline:
            time.sleep(0.01)
        (conn,) = list(server.orchestrator.live)
        accepted = conn.transport.get_extra_info("socket")
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_acks_come_back_in_order_for_a_pipelined_stream(start_server):
    server = start_server()
    good = [numbered_batch(n) for n in range(1, 6)]
    bad = frame(MENU.opcode, b"\x00" * 3)   # a truncated table header
    with Wire(server.address) as client:
        client.send(b"".join(g + bad for g in good))
        assert client.acks(10) == [SUCCESS, FAIL] * 5
    server.stop()
    assert batch_numbers(server.sink.durable) == [1, 2, 3, 4, 5]


# == well framed but invalid: BATCH_RECV_FAIL, the connection goes on ==================

_PAIRS = list(sample_rows(MENU, 1, seed=3)[0].items())   # one valid menu_items row


def _menu(impl, rows, **fields) -> bytes:
    return frame(MENU.opcode, table_body(impl, rows, **fields))


# name -> the frame, built with the codec in use. Each is well framed: its
# length delimits it, so only the batch is refused, not the connection.
INVALID = {
    "unknown key": lambda impl: _menu(impl, [_PAIRS[:-1] + [("bogus", "x")]]),
    "key of another table": lambda impl: _menu(impl, [_PAIRS[:-1] + [("store_id", "1")]]),
    "duplicate key": lambda impl: _menu(impl, [_PAIRS[:-1] + [_PAIRS[0]]]),
    "missing key": lambda impl: _menu(impl, [_PAIRS[:-1]]),
    "extra key": lambda impl: _menu(impl, [_PAIRS + [("bogus", "x")]]),
    "pair count over the pairs": lambda impl: _menu(impl, [_PAIRS], pair_counts={0: 8}),
    "negative pair count": lambda impl: _menu(impl, [_PAIRS], pair_counts={0: -1}),
    "bad UTF-8 value": lambda impl: _menu(impl, [_PAIRS[:-1] + [(_PAIRS[-1][0], b"\xff\xfe")]]),
    "bad UTF-8 key": lambda impl: _menu(impl, [_PAIRS[:-1] + [(b"\xc3", "x")]]),
    "trailing bytes": lambda impl: frame(MENU.opcode, table_body(impl, [_PAIRS]) + b"\x00"),
    "rows missing": lambda impl: _menu(impl, [_PAIRS], n_rows=2),
    "negative row count": lambda impl: _menu(impl, [], n_rows=-1),
    "invalid status": lambda impl: _menu(impl, [_PAIRS], status=3),
    "empty table body": lambda impl: frame(MENU.opcode, b""),
    "EOF of an unknown table": lambda impl: frame(Opcodes.EOF, eof_body(impl, "vouchers")),
    "EOF with status CONTINUE": lambda impl: frame(Opcodes.EOF, eof_body(impl, status=0)),
    "EOF with two rows": lambda impl: frame(Opcodes.EOF, eof_body(impl, n_rows=2)),
    "EOF with another key": lambda impl: frame(Opcodes.EOF, eof_body(impl, key="table")),
    "FINISHED of 3 bytes": lambda impl: frame(Opcodes.FINISHED, b"\x01\x00\x00"),
    "FINISHED of 8 bytes": lambda impl: frame(Opcodes.FINISHED, b"\x01" + b"\x00" * 7),
    "DataBatch from a client": lambda impl: DataBatch(
        table_ids=[4], query_ids=[2], batch_bytes=numbered_batch(9)).to_bytes(),
    "BATCH_RECV_SUCCESS from a client": lambda impl: SUCCESS,
    "BATCH_RECV_FAIL from a client": lambda impl: FAIL,
    "ACK with a body": lambda impl: frame(Opcodes.BATCH_RECV_SUCCESS, b"\x00"),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_batch_is_failed_and_the_connection_goes_on(start_server, case):
    server = start_server()
    invalid = INVALID[case](codec.impl)
    with Wire(server.address) as client:
        client.send(invalid + numbered_batch(42))
        assert client.acks(2) == [FAIL, SUCCESS]
        client.send(invalid)
        assert client.ack() == FAIL
        client.send(finished_frame(3))
        assert client.read_until_closed() == SUCCESS
    server.stop()
    assert server.sink.events.count("write") == 2   # nothing written for the invalid ones
    stored = decode(server.sink.durable)
    assert [db.batch_number for db in stored] == [42, 0]
    assert stored[1].batch_msg == Finished(3)


# == frames that cannot be delimited: that connection only ==============================

SMALL_MAX_FRAME = 4096
UNDELIMITABLE = {
    "unknown opcode 77": struct.pack("<Bi", 77, 10),
    "opcode 255": struct.pack("<Bi", 255, 0),
    "negative length": struct.pack("<Bi", MENU.opcode, -1),
    "most negative length": struct.pack("<Bi", Opcodes.EOF, -(1 << 31)),
    "length over max_frame": struct.pack("<Bi", MENU.opcode, SMALL_MAX_FRAME + 1),
    "largest length": struct.pack("<Bi", MENU.opcode, (1 << 31) - 1),
}


@pytest.mark.parametrize("header", list(UNDELIMITABLE.values()), ids=list(UNDELIMITABLE))
def test_undelimitable_frame_closes_only_that_connection(start_server, tmp_path, header):
    sink = FileSink(tmp_path / "sink.bin", fsync="never")
    server = start_server(sink, max_frame=SMALL_MAX_FRAME)
    with Wire(server.address) as bystander, Wire(server.address) as victim:
        bystander.send(numbered_batch(1))
        assert bystander.ack() == SUCCESS
        victim.send(numbered_batch(2))
        assert victim.ack() == SUCCESS
        victim.send(header)
        assert victim.read_until_closed() == b""   # no ACK, just closed
        bystander.send(numbered_batch(3))
        assert bystander.ack() == SUCCESS
    with Wire(server.address) as newcomer:
        newcomer.send(numbered_batch(4))
        assert newcomer.ack() == SUCCESS
    server.stop()
    assert batch_numbers(read_frames(tmp_path / "sink.bin")) == [1, 2, 3, 4]


def test_frame_of_exactly_max_frame_is_read(start_server):
    batch = numbered_batch(5)
    server = start_server(max_frame=len(batch) - 5)
    with Wire(server.address) as client:
        client.send(batch)
        assert client.ack() == SUCCESS
        client.send(frame(MENU.opcode, batch[5:] + b"\x00")[:5])   # one byte over the limit
        assert client.read_until_closed() == b""
    server.stop()
    assert batch_numbers(server.sink.durable) == [5]


@pytest.mark.parametrize("cut", [1, 4, 5, 6, -1],
                         ids=["1-byte", "4-bytes", "header", "header+1", "all-but-1"])
def test_peer_closing_mid_frame_leaves_no_partial_batch(start_server, tmp_path, cut):
    sink = FileSink(tmp_path / "sink.bin", fsync="never")
    server = start_server(sink)
    with Wire(server.address) as bystander:
        bystander.send(numbered_batch(1))
        assert bystander.ack() == SUCCESS
        with Wire(server.address) as quitter:
            quitter.send(numbered_batch(2))
            assert quitter.ack() == SUCCESS
            quitter.send(numbered_batch(3)[:cut])
        bystander.send(numbered_batch(4))
        assert bystander.ack() == SUCCESS
    server.stop()   # every connection thread has ended: the sink is final
    assert batch_numbers(read_frames(tmp_path / "sink.bin")) == [1, 2, 4]


def test_idle_connection_is_closed_and_others_go_on(start_server, caplog):
    caplog.set_level(logging.INFO, logger="fastframe.orchestrator")
    server = start_server(idle_timeout=0.2)
    with Wire(server.address) as idle:
        idle.send(numbered_batch(1))   # past its first header: the idle deadline applies
        assert idle.ack() == SUCCESS
        assert idle.read_until_closed() == b""
    with Wire(server.address) as client:
        client.send(numbered_batch(2))
        assert client.ack() == SUCCESS
    server.stop()
    assert batch_numbers(server.sink.durable) == [1, 2]
    lines = log_lines(caplog, "action: deadline")
    assert len(lines) == 1 and "| deadline: idle |" in lines[0], lines


def test_trickling_client_is_cut_at_the_frame_deadline(start_server, caplog):
    # One byte every 50 ms never trips a 1 s idle timeout; the frame deadline does.
    caplog.set_level(logging.INFO, logger="fastframe.orchestrator")
    server = start_server(idle_timeout=1.0, frame_timeout=0.3)
    data = numbered_batch(1)
    sent = 0
    with Wire(server.address) as slow:
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            for sent in range(1, len(data) + 1):
                slow.send(data[sent - 1:sent])
                time.sleep(0.05)
                readable, _, _ = select.select([slow.sock], [], [], 0)
                if readable and slow.sock.recv(1, socket.MSG_PEEK) == b"":
                    raise ConnectionResetError("closed by the orchestrator")
        assert sent < len(data)
    with Wire(server.address) as client:
        client.send(numbered_batch(2))
        assert client.ack() == SUCCESS
    server.stop()
    assert batch_numbers(server.sink.durable) == [2]
    lines = log_lines(caplog, "action: deadline")
    assert len(lines) == 1 and "| deadline: frame |" in lines[0], lines


def test_finished_the_sink_failed_is_answered_with_fail(start_server):
    sink = MemorySink()
    server = start_server(sink)
    sink.fail("flush")
    with Wire(server.address) as client:
        client.send(codec.encode_finished_frame(7))
        assert client.read_until_closed() == FAIL
    sink.recover()
    with Wire(server.address) as client:
        client.send(codec.encode_finished_frame(7))
        assert client.read_until_closed() == SUCCESS
    server.stop()
    assert [decode_frame(f).batch_msg for f in sink.durable] == [Finished(7)]


def test_client_resends_finished_the_sink_failed(start_server, tmp_path):
    # An empty table folder: the client sends its EOF (flush 1), then FINISHED
    # (flush 2, failed), then FINISHED again on a new connection (flush 3).
    sink = MemorySink()
    server = start_server(sink)
    (tmp_path / "stores").mkdir()
    sink.fail("flush", every=2)
    summary = Client(server.address, 9, backoff=0.01).send_folder(tmp_path)
    server.stop()
    assert summary.retries == 1 and sink.failures == 1
    inner = [decode_frame(f).batch_msg for f in sink.durable]
    assert inner == [EOFMessage(0, "stores"), Finished(9)]


def test_shutdown_of_a_server_that_never_served_returns(tmp_path):
    sink = MemorySink()
    server = Orchestrator(sink, "127.0.0.1", 0)
    stopper = threading.Thread(target=server.shutdown, daemon=True)
    stopper.start()
    stopper.join(JOIN_TIMEOUT)
    assert not stopper.is_alive() and sink.closed
    with pytest.raises(OSError):
        socket.create_connection(server.address, timeout=1).close()


# == many clients at once ==============================================================

N_CLIENTS = 32


def _garbage_client(address: Tuple[str, int], data: bytes) -> bytes:
    """Send ``data``, half-close, return whatever the orchestrator answered until it closed."""
    with Wire(address) as client:
        try:
            client.send(data)
            client.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            # Closed on us while we were still sending (a reset makes the
            # half-close fail with ENOTCONN): also fine.
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                raise
            return b""
        return client.read_until_closed()


def _quitter(address: Tuple[str, int]) -> bytes:
    with Wire(address) as client:
        client.send(numbered_batch(-1)[:40])
    return b""


def test_concurrent_clients_with_garbage_and_quitters(start_server, small_datasets, tmp_path):
    sink = FileSink(tmp_path / "sink.bin", fsync="never")
    server = start_server(sink)
    rng = random.Random(7)
    garbage = [rng.randbytes(5000) for _ in range(3)]
    valid_header = struct.pack("<Bi", MENU.opcode, 600)
    garbage += [valid_header + rng.randbytes(600) + rng.randbytes(300) for _ in range(3)]
    folders = [small_datasets[i % len(small_datasets)] for i in range(N_CLIENTS)]
    agency_ids = [1000 + i for i in range(N_CLIENTS)]

    def send(agency_id: int, folder: Path):
        client = Client(server.address, agency_id, batch_rows=40, window=4,
                        timeout=SOCKET_TIMEOUT, backoff=0.01)
        return lambda: client.send_folder(folder)

    jobs: List[Callable[[], object]] = [send(a, f) for a, f in zip(agency_ids, folders)]
    jobs += [lambda g=g: _garbage_client(server.address, g) for g in garbage]
    jobs += [lambda: _quitter(server.address) for _ in range(3)]
    results = run_threads(jobs)
    server.stop()

    summaries, answers = results[:N_CLIENTS], results[N_CLIENTS:]
    assert all(s.retries == 0 and s.reconnects == 0 for s in summaries)
    for answer in answers:   # garbage may be failed, never stored
        assert answer == FAIL * (len(answer) // 5)

    batches = decode(read_frames(tmp_path / "sink.bin"))
    expected: Rows = {spec.name: collections.Counter() for spec in TABLES}
    for folder in folders:
        for table, rows in expected_rows(folder).items():
            expected[table].update(rows)
    assert as_multisets(stored_rows(batches)) == expected
    finished = sorted(db.batch_msg.agency_id for db in batches
                      if isinstance(db.batch_msg, Finished))
    assert finished == agency_ids
    eofs = collections.Counter(db.batch_msg.table_type for db in batches
                               if isinstance(db.batch_msg, EOFMessage))
    assert eofs == {spec.name: N_CLIENTS for spec in TABLES}


# == the sink failing ==================================================================

# A sink should raise SinkError; anything else is a bug in the sink, which must
# not stall the orchestrator either.
@pytest.mark.parametrize("error", [SinkError, RuntimeError])
@pytest.mark.parametrize("where", ["write", "flush"])
def test_failing_sink_fails_the_batch_and_the_server_goes_on(start_server, where, error):
    sink = MemorySink()
    server = start_server(sink)
    sink.fail(where, error=error)
    with Wire(server.address) as client:
        client.send(numbered_batch(1) + numbered_batch(2) + eof_frame("menu_items"))
        assert client.acks(3) == [FAIL] * 3
        assert sink.snapshot() == []
        sink.recover()
        client.send(numbered_batch(3))
        assert client.ack() == SUCCESS
    with Wire(server.address) as client:
        client.send(numbered_batch(4))
        assert client.ack() == SUCCESS
    server.stop()
    assert batch_numbers(sink.durable) == [3, 4]


@pytest.mark.parametrize("where, every", [("write", 7), ("flush", 3)])
def test_every_batch_acked_success_is_in_the_sink(start_server, where, every):
    sink = MemorySink()
    sink.fail(where, every=every)
    server = start_server(sink)
    per_client = 30

    def client(first: int):
        acked = {}
        with Wire(server.address) as wire:
            numbers = range(first, first + per_client)
            wire.send(b"".join(numbered_batch(n) for n in numbers))
            for n in numbers:
                acked[n] = wire.ack()
        return acked

    results = run_threads([lambda f=f: client(f) for f in range(1000, 7000, 1000)])
    server.stop()
    acked = {n: ack for r in results for n, ack in r.items()}
    succeeded = {n for n, ack in acked.items() if ack == SUCCESS}
    assert succeeded and len(succeeded) < len(acked)   # both outcomes were exercised
    stored = batch_numbers(sink.durable)
    assert sorted(stored) == sorted(succeeded)   # all that got SUCCESS, nothing that got FAIL


def test_client_completes_once_the_sink_recovers(start_server, small_datasets):
    sink = MemorySink()
    sink.fail("write")
    server = start_server(sink)
    client = Client(server.address, 77, batch_rows=40, window=4, max_retries=30, backoff=0.005,
                    timeout=SOCKET_TIMEOUT)
    data = small_datasets[0]

    def recover_after_failures():
        wait_for(lambda: sink.failures >= 3, "the sink to reject a few batches")
        sink.recover()

    summary, _ = run_threads([lambda: client.send_folder(data), recover_after_failures])
    server.stop()
    assert summary.retries >= 3
    batches = decode(sink.durable)
    # Exactly once; a retried batch goes out after the others in flight, so in any order.
    assert as_multisets(stored_rows(batches)) == as_multisets(expected_rows(data))
    assert [db.batch_msg for db in batches if isinstance(db.batch_msg, Finished)] == [Finished(77)]


# == group commit and ACK-after-sink ===================================================

def test_group_commit_flushes_less_often_than_batches(start_server):
    sink = MemorySink(flush_delay=0.05)
    server = start_server(sink)
    clients, per_client = 8, 10

    def client(first: int):
        with Wire(server.address) as wire:
            wire.send(b"".join(numbered_batch(first + i) for i in range(per_client)))
            return wire.acks(per_client)

    results = run_threads([lambda c=c: client(100 * c) for c in range(clients)])
    flushes = sink.events.count("flush")
    server.stop()
    assert all(ack == SUCCESS for acks in results for ack in acks)
    total = clients * per_client
    assert len(sink.durable) == total
    assert sum(sink.group_sizes) == total
    assert flushes < total
    assert max(sink.group_sizes) > 1


def test_ack_is_sent_only_after_the_sink_flushed(start_server):
    gate = threading.Event()
    sink = MemorySink(gate=gate)
    server = start_server(sink)
    with Wire(server.address) as client:
        client.send(numbered_batch(1))
        wait_for(lambda: "write" in sink.events, "the batch to reach the sink")
        client.sock.settimeout(0.3)
        with pytest.raises(socket.timeout):
            client.sock.recv(5)   # written, not flushed: no ACK yet
        assert sink.snapshot() == []
        gate.set()
        client.sock.settimeout(SOCKET_TIMEOUT)
        assert client.ack() == SUCCESS
        assert batch_numbers(sink.snapshot()) == [1]


# == shutdown ==========================================================================

def test_shutdown_while_clients_are_mid_stream(start_server):
    sink = MemorySink()
    server = start_server(sink)
    acked: List[int] = []

    def streaming_client():
        with Wire(server.address) as wire:
            try:
                for n in range(1, 100_000):
                    wire.send(numbered_batch(n))
                    if wire.ack() == SUCCESS:
                        acked.append(n)
            except (EOFError, ConnectionError):
                return   # the orchestrator went away mid-stream, as asked
        raise AssertionError("the orchestrator never closed the connection")

    # Connected before the shutdown is asked for, so none of them races the listener closing.
    mid_frame = Wire(server.address)
    mid_frame.send(numbered_batch(0)[:30])

    def mid_frame_client():
        with mid_frame:
            return mid_frame.read_until_closed()

    idle = Wire(server.address)
    clients = Workers([streaming_client, mid_frame_client])
    wait_for(lambda: len(acked) >= 5, "the stream to get going")
    server.orchestrator.request_shutdown()
    server.thread.join(JOIN_TIMEOUT)
    assert not server.thread.is_alive(), "serve_forever did not return"
    assert clients.join()[1] == b""
    with idle:
        assert idle.read_until_closed() == b""

    assert sink.closed and sink.events[-2:] == ["flush", "close"]
    assert sink.staged_at_close == 0   # everything written was flushed before close
    stored = batch_numbers(sink.durable)
    assert set(acked) <= set(stored)
    assert stored == sorted(stored)
    run_threads([server.orchestrator.shutdown])   # a second shutdown is harmless
    with pytest.raises(OSError):
        socket.create_connection(server.address, timeout=SOCKET_TIMEOUT).close()


def test_shutdown_where_the_listener_cannot_be_shut_down(start_server, monkeypatch):
    """macOS and Windows refuse shutdown() on a listening socket (ENOTCONN) and
    leave accept() blocked; serve_forever must notice request_shutdown anyway."""
    real_shutdown = socket.socket.shutdown

    def shutdown(sock, how):
        try:
            sock.getpeername()
        except OSError:   # not connected: the listener
            raise OSError(errno.ENOTCONN, "Socket is not connected") from None
        return real_shutdown(sock, how)

    monkeypatch.setattr(socket.socket, "shutdown", shutdown)
    server = start_server()
    with Wire(server.address) as client:
        client.send(numbered_batch(1))
        assert client.ack() == SUCCESS
    server.stop()
    assert server.sink.closed
    assert batch_numbers(server.sink.durable) == [1]


# == admission, deadlines and bad input (issue 9) ======================================

def sized_batch(number: int, approx_bytes: int) -> bytes:
    """A valid menu_items batch of about ``approx_bytes``, numbered ``number``."""
    row = dict(sample_rows(MENU, 1, seed=number)[0], name="n" * 1000)
    frame_ = batch_frame(MENU, [row] * max(1, approx_bytes // 1100), batch_number=number)
    return frame_


def closed_by_server(wire: Wire) -> bool:
    """``True`` once the orchestrator has closed ``wire`` (EOF or reset), within the timeout."""
    try:
        return wire.sock.recv(1) == b""
    except ConnectionResetError:
        return True


def log_lines(caplog, text: str, conn: Optional[int] = None) -> List[str]:
    lines = [r.getMessage() for r in caplog.records if text in r.getMessage()]
    if conn is not None:
        lines = [line for line in lines if f"| conn: {conn} |" in line + " |"]
    return lines


def test_first_header_deadline_closes_a_silent_connection(start_server, caplog):
    caplog.set_level(logging.INFO, logger="fastframe.orchestrator")
    server = start_server(header_timeout=0.3, idle_timeout=30.0)
    with Wire(server.address) as silent, Wire(server.address) as talker:
        talker.send(numbered_batch(1))
        assert talker.ack() == SUCCESS
        assert closed_by_server(silent)
        talker.send(numbered_batch(2))   # past the header deadline: idle_timeout applies now
        assert talker.ack() == SUCCESS
    server.stop()
    lines = log_lines(caplog, "action: deadline")
    assert len(lines) == 1 and "| deadline: first_header |" in lines[0]


def test_a_header_alone_holds_no_buffer_budget(start_server):
    # The budget holds exactly one largest frame; headers claiming that much hold none of it.
    big = sized_batch(7, 150_000)
    server = start_server(max_frame=len(big), max_buffer_bytes=len(big), frame_timeout=30.0)
    claims = [Wire(server.address) for _ in range(5)]
    try:
        for wire in claims:
            wire.send(struct.pack("<Bi", MENU.opcode, len(big) - 5))
        with Wire(server.address) as client:
            client.send(big)
            assert client.ack() == SUCCESS
            assert server.orchestrator.budget.held == 0
    finally:
        for wire in claims:
            wire.sock.close()
    server.stop()
    assert batch_numbers(server.sink.durable) == [7]


def test_small_frames_pass_a_large_one_waiting_for_budget(start_server):
    large = sized_batch(2, 150_000)
    server = start_server(max_frame=len(large), max_buffer_bytes=len(large), frame_timeout=30.0)
    budget = server.orchestrator.budget
    with Wire(server.address) as holder, Wire(server.address) as waiter:
        holder.send(large[:100_000])   # holds a buffer grown past what is left for the other
        wait_for(lambda: budget.held > len(large) - 64 * 1024, "the holder's buffer to grow")
        waiter.send(large[:30_000])
        wait_for(lambda: budget.waiting == 1, "the large frame to wait for budget")
        with Wire(server.address) as small:
            small.send(numbered_batch(3))
            assert small.ack() == SUCCESS
        assert budget.waiting == 1
        holder.sock.close()   # its budget goes back: the waiting frame goes on
        waiter.send(large[30_000:])
        assert waiter.ack() == SUCCESS
    server.stop()
    assert batch_numbers(server.sink.durable) == [3, 2]


def test_a_frame_waiting_for_budget_is_cut_at_its_frame_deadline(start_server, caplog):
    caplog.set_level(logging.INFO, logger="fastframe.orchestrator")
    large = sized_batch(2, 150_000)
    server = start_server(max_frame=len(large), max_buffer_bytes=len(large),
                          frame_timeout=1.0)
    budget = server.orchestrator.budget
    with Wire(server.address) as holder, Wire(server.address) as waiter:
        holder.send(large[:100_000])
        wait_for(lambda: budget.held > len(large) - 64 * 1024, "the holder's buffer to grow")
        waiter.send(large[:30_000])
        wait_for(lambda: budget.waiting == 1, "the frame to wait for budget")
        assert closed_by_server(waiter)
        assert closed_by_server(holder)
    wait_for(lambda: budget.held == 0 and budget.waiting == 0, "the budget to come back")
    server.stop()
    lines = log_lines(caplog, "action: deadline")
    assert len(lines) == 2 and all("| deadline: frame |" in line for line in lines), lines


def test_large_frames_beyond_the_frame_slots_wait_before_their_body(start_server):
    gate = threading.Event()   # the sink holds the first answer, and with it the only slot
    server = start_server(MemorySink(gate=gate), frame_slots=1)
    orchestrator = server.orchestrator
    first, second = sized_batch(1, 150_000), sized_batch(2, 150_000)
    with Wire(server.address) as one, Wire(server.address) as two, \
            Wire(server.address) as small:
        one.send(first)
        wait_for(lambda: orchestrator.counters.bytes_in == len(first), "the first frame")
        two.send(second)
        wait_for(lambda: orchestrator.slots.waiting == 1, "the second to wait for a slot")
        assert orchestrator.budget.held == len(first) - FRAME_HEADER_SIZE   # no buffer for it
        small.send(numbered_batch(3))   # a small frame needs no slot
        wait_for(lambda: orchestrator.counters.bytes_in == len(first) + len(numbered_batch(3)),
                 "the small frame to be read")
        gate.set()
        assert one.ack() == SUCCESS and two.ack() == SUCCESS and small.ack() == SUCCESS
    wait_for(lambda: orchestrator.slots.held == 0, "every slot back")
    server.stop()
    assert sorted(batch_numbers(server.sink.durable)) == [1, 2, 3]


@pytest.mark.parametrize("sent", [1000, 100_000], ids=["reservation-lapses", "slot-lost"])
def test_a_frame_whose_body_stalls_gives_its_place_up(start_server, sent):
    # Else one peer that stops mid-frame would hold the only slot until its
    # frame deadline (30 s here, past the healthy client's socket timeout).
    # 1,000 bytes never turn the reservation into a slot; 100,000 do, and the
    # slot goes at the next tick that sees no more.
    server = start_server(frame_slots=1, frame_timeout=30.0)
    orchestrator = server.orchestrator
    stalled, healthy = sized_batch(1, 150_000), sized_batch(2, 150_000)
    with Wire(server.address) as staller, Wire(server.address) as client:
        staller.send(stalled[:sent])
        wait_for(lambda: orchestrator.budget.held > 0, "the stalled frame's buffer")
        client.send(healthy)
        assert client.ack() == SUCCESS
        staller.send(stalled[sent:])   # it finishes after all, without a slot
        assert staller.ack() == SUCCESS
    wait_for(lambda: orchestrator.slots.held == 0, "every slot back")
    server.stop()
    assert batch_numbers(server.sink.durable) == [2, 1]


def test_max_connections_refuses_newcomers_at_once(start_server, caplog):
    caplog.set_level(logging.INFO, logger="fastframe.orchestrator")
    server = start_server(max_connections=3)
    admitted = [Wire(server.address) for _ in range(3)]
    for n, wire in enumerate(admitted):
        wire.send(numbered_batch(n))
        assert wire.ack() == SUCCESS
    for _ in range(20):
        with Wire(server.address) as refused:
            assert closed_by_server(refused)
    admitted.pop().sock.close()
    wait_for(lambda: server.orchestrator.limit.open == 2, "a slot to free")
    with Wire(server.address) as newcomer:
        newcomer.send(numbered_batch(9))
        assert newcomer.ack() == SUCCESS
    for wire in admitted:
        wire.sock.close()
    server.stop()
    assert server.orchestrator.counters.refused == 20
    # Rate-limited: a line a second at most, each counting the refusals since the last.
    lines = log_lines(caplog, "result: refused | reason: max_connections")
    assert 1 <= len(lines) <= 3
    assert sum(int(line.rsplit("refused_since_last_line: ", 1)[1]) for line in lines) <= 20


def test_max_invalid_frames_in_a_row_close_the_connection(start_server, caplog):
    caplog.set_level(logging.INFO, logger="fastframe.orchestrator")
    server = start_server(max_invalid=10)
    bad = INVALID["unknown key"](codec.impl)
    with Wire(server.address) as client:
        # A valid frame resets the count: 9 invalid, 1 valid, 9 invalid, 1 valid.
        client.send((bad * 9 + numbered_batch(1)) + (bad * 9 + numbered_batch(2)))
        assert client.acks(20) == ([FAIL] * 9 + [SUCCESS]) * 2
        # Exactly 10: frames left unread at the close could make the kernel reset
        # the connection and drop answers already on their way.
        client.send(bad * 10)
        assert client.read_until_closed() == FAIL * 10   # the 10th in a row closes it
    server.stop()
    assert batch_numbers(server.sink.durable) == [1, 2]
    assert log_lines(caplog, "10 invalid frames in a row (max_invalid)")


def test_invalid_frame_warnings_are_rate_limited_per_connection(start_server, caplog):
    caplog.set_level(logging.INFO, logger="fastframe.orchestrator")
    server = start_server(max_invalid=1000)
    bad = INVALID["unknown key"](codec.impl)
    with Wire(server.address) as client:
        client.send(bad * 300)
        assert client.acks(300) == [FAIL] * 300
    server.stop()
    assert len(log_lines(caplog, "action: validate | result: fail")) == 5
    closing = log_lines(caplog, "action: close")
    assert len(closing) == 1 and "| invalid: 300 | invalid_not_logged: 295" in closing[0]


@pytest.mark.parametrize("agency_id", [-1, -5, -(1 << 31)])
def test_finished_for_a_negative_agency_is_failed_and_not_stored(start_server, agency_id):
    server = start_server()
    with Wire(server.address) as client:
        client.send(finished_frame(agency_id))
        assert client.ack() == FAIL
        client.send(numbered_batch(1) + finished_frame(5))
        assert client.read_until_closed() == SUCCESS * 2
    server.stop()
    inner = [decode_frame(f).batch_msg for f in server.sink.durable]
    assert inner[1:] == [Finished(5)]


def test_executor_refusing_work_costs_that_connection_only(start_server, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="fastframe.orchestrator")
    # Only the Cython codec's projections go to the executor: it releases the GIL.
    monkeypatch.setattr(codec, "impl", pytest.importorskip(
        "fastframe._codec_c", reason="the executor serves the Cython codec, not built here"))
    server = start_server()
    large = sized_batch(4, 100_000)   # projected on the executor, not the loop

    def refuse(*args, **kwargs):
        raise RuntimeError("can't start new thread")

    with monkeypatch.context() as patch:
        patch.setattr(server.orchestrator.executor, "submit", refuse)
        with Wire(server.address) as victim, Wire(server.address) as bystander:
            victim.send(numbered_batch(1) + large)
            assert victim.read_until_closed() == SUCCESS + FAIL
            bystander.send(numbered_batch(2))
            assert bystander.ack() == SUCCESS
    with Wire(server.address) as client:
        client.send(large)
        assert client.ack() == SUCCESS
    server.stop()
    assert batch_numbers(server.sink.durable) == [1, 2, 4]
    assert log_lines(caplog, "error: resource: the executor refused the frame")
    assert server.orchestrator.counters.resource_failures == 1


def test_no_memory_for_a_frame_buffer_costs_that_connection_only(start_server, monkeypatch,
                                                                  caplog):
    caplog.set_level(logging.INFO, logger="fastframe.orchestrator")
    import fastframe.orchestrator.connection as connection_module

    server = start_server()
    large = sized_batch(4, 200_000)

    def scarce(size=0):
        if isinstance(size, int) and size > 100_000:
            raise MemoryError()
        return bytearray(size)

    monkeypatch.setattr(connection_module, "bytearray", scarce, raising=False)
    with Wire(server.address) as victim, Wire(server.address) as bystander:
        victim.send(numbered_batch(1))
        assert victim.ack() == SUCCESS
        try:
            victim.send(large)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert victim.read_until_closed() == b""
        bystander.send(numbered_batch(2))
        assert bystander.ack() == SUCCESS
    monkeypatch.undo()
    wait_for(lambda: server.orchestrator.budget.held == 0, "the budget to come back")
    server.stop()
    assert batch_numbers(server.sink.durable) == [1, 2]
    assert log_lines(caplog, "error: resource: MemoryError")
