"""Helpers for the system tests: a scripted fake orchestrator and CSV data sets.

``FakeServer`` plays the server side of PROTOCOL.md §7 on loopback, in threads,
as a test scripts it. A handler is called once per accepted connection, in
that connection's thread::

    def handler(conn):                       # conn: FakeConnection
        while True:
            got = conn.read()                # a Received; None once the peer closed
            if got is None:
                return                       # returning closes the connection
            conn.ack()                       # conn.ack(False): BATCH_RECV_FAIL
            if got.opcode == Opcodes.FINISHED:
                return

    with FakeServer(handler) as server:      # ack_all (the above) by default
        Client(server.address, 1).send_folder(folder)
    server.frames                            # every Received, in arrival order

``conn.read()`` reads exactly one frame and never more, so ``conn.idle(s)``
can tell whether the peer sent anything else meanwhile. Leaving the ``with``
block stops the server, joins its threads and re-raises the first exception
a handler raised, so ``assert`` inside a handler fails the test.

Data sets: ``write_dataset(root, {"users": [3, 2]})`` writes ``users/users_1.csv``
(rows 1-3) and ``users/users_2.csv`` (rows 4-5) with the real headers of §9
and returns the CSV rows per table in sending order; ``wire_row`` maps a CSV
row to the keys the client must send; ``csv_table_rows`` reads a whole folder
back independently of the client. ``running(orchestrator)`` serves a real
``Orchestrator`` in a thread for the length of a ``with`` block.
"""
from __future__ import annotations

import contextlib
import csv
import select
import socket
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import pytest

import fastframe.codec
from fastframe.messages import decode_message
from fastframe.schema import (
    DEFAULT_MAX_FRAME, FRAME_HEADER_SIZE, TABLES, TABLES_BY_OPCODE, Opcodes,
)

__all__ = [
    "Received", "FakeConnection", "FakeServer", "ack_all", "free_port", "CSV_HEADERS",
    "csv_row", "write_csv", "write_dataset", "wire_row", "csv_table_rows", "running",
]

# Every blocking step of a test has this bound, so a hung peer fails instead of hanging.
TIMEOUT = 20.0

# For tests that stop a fastframe process with SIGTERM and expect it to wind
# down: Windows has no such signal to deliver, only TerminateProcess.
needs_sigterm = pytest.mark.skipif(
    sys.platform == "win32",
    reason="Windows terminates the process instead of delivering SIGTERM to its handler")

# -- the fake orchestrator -------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """One frame the fake server read: ``conn`` is the connection's index (0, 1, …)."""

    conn: int
    opcode: int
    body: bytes

    @property
    def frame(self) -> bytes:
        """The frame as it was on the wire, header included."""
        return fastframe.codec.impl.encode_frame(self.opcode, self.body)

    @property
    def msg(self):
        """The decoded message (``NewUsers``, ``EOFMessage``, ``Finished`` …)."""
        return decode_message(self.opcode, self.body)

    @property
    def table(self) -> Optional[str]:
        """The table of a table batch or an EOF, else ``None``."""
        if self.opcode in TABLES_BY_OPCODE:
            return TABLES_BY_OPCODE[self.opcode].name
        return self.msg.table_type if self.opcode == Opcodes.EOF else None


def _recv_exactly(sock: socket.socket, n: int) -> Optional[bytes]:
    """``n`` bytes, or ``None`` if the peer closed (or reset) before the first one."""
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = sock.recv(n - len(buf))
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            if buf:
                raise EOFError(f"peer closed mid-frame ({len(buf)} of {n} bytes)")
            return None
        buf += chunk
    return bytes(buf)


class FakeConnection:
    """One accepted connection, handed to the handler."""

    def __init__(self, server: "FakeServer", index: int, sock: socket.socket) -> None:
        self.server = server
        self.index = index
        self.sock = sock

    def read(self) -> Optional[Received]:
        """The next frame (recorded in ``server.frames``); ``None`` when the peer closed."""
        header = _recv_exactly(self.sock, FRAME_HEADER_SIZE)
        if header is None:
            return None
        opcode, length = fastframe.codec.impl.read_frame_header(header, 0, DEFAULT_MAX_FRAME)
        body = _recv_exactly(self.sock, length) if length else b""
        if body is None:
            raise EOFError(f"peer closed after the header of a {length}-byte frame")
        got = Received(self.index, opcode, body)
        self.server._record(got)
        return got

    def ack(self, ok: bool = True) -> None:
        """Send BATCH_RECV_SUCCESS (``ok``) or BATCH_RECV_FAIL."""
        opcode = Opcodes.BATCH_RECV_SUCCESS if ok else Opcodes.BATCH_RECV_FAIL
        self.sock.sendall(fastframe.codec.impl.encode_frame(opcode, b""))

    def idle(self, seconds: float) -> bool:
        """``True`` if the peer sends nothing (and does not close) for ``seconds``."""
        readable, _, _ = select.select([self.sock], [], [], seconds)
        return not readable


def ack_all(conn: FakeConnection) -> None:
    """The default handler: ACK every frame; close after FINISHED, as fastframe's orchestrator."""
    while True:
        got = conn.read()
        if got is None:
            return
        conn.ack()
        if got.opcode == Opcodes.FINISHED:
            return


Handler = Callable[[FakeConnection], None]


class FakeServer:
    """A scripted orchestrator on 127.0.0.1 (see the module docstring).

    ``port=0`` picks a free port; ``address`` is where it listens. Use as a
    context manager; ``start()`` / ``stop()`` do the same by hand.
    """

    def __init__(self, handler: Handler = ack_all, port: int = 0) -> None:
        self.handler = handler
        self.port = port
        self.frames: List[Received] = []
        self.errors: List[BaseException] = []
        self.connections = 0
        self._changed = threading.Condition()
        self._threads: List[threading.Thread] = []
        self._socks: List[socket.socket] = []
        self._listener: Optional[socket.socket] = None

    @property
    def address(self) -> Tuple[str, int]:
        assert self._listener is not None, "FakeServer not started"
        return ("127.0.0.1", self.port)

    def start(self) -> "FakeServer":
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self.port = self._listener.getsockname()[1]
        self._spawn(self._accept_loop, "fake-accept")
        return self

    def __enter__(self) -> "FakeServer":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.stop(raise_errors=exc_type is None)

    def stop(self, raise_errors: bool = True) -> None:
        """Stop accepting, wait for the handlers, raise the first handler error.

        With ``raise_errors=False`` (the test already failed) the connections
        are cut first, so no handler keeps the test waiting.
        """
        if self._listener is None:
            return
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._threads[0].join(TIMEOUT)  # the accept loop: no connection starts after this
        if not raise_errors:
            for sock in self._socks:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(TIMEOUT)
        for sock in self._socks:
            sock.close()
        if raise_errors:
            if self.errors:
                raise self.errors[0]
            alive = [t.name for t in self._threads if t.is_alive()]
            assert not alive, f"fake server threads still running: {alive}"

    def wait_for(self, predicate: Callable[[List[Received]], bool],
                 timeout: float = TIMEOUT) -> None:
        """Block until ``predicate(frames)`` holds; ``AssertionError`` after ``timeout``."""
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self.frames), timeout):
                raise AssertionError(f"fake server: condition not met in {timeout}s; "
                                     f"{len(self.frames)} frames received")

    def _record(self, got: Received) -> None:
        with self._changed:
            self.frames.append(got)
            self._changed.notify_all()

    def _spawn(self, target, name: str, *args) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            sock.settimeout(TIMEOUT)
            self._socks.append(sock)
            index = self.connections
            self.connections += 1
            self._spawn(self._serve, f"fake-conn-{index}", FakeConnection(self, index, sock))

    def _serve(self, conn: FakeConnection) -> None:
        try:
            self.handler(conn)
        except BaseException as exc:  # reported by stop()
            self.errors.append(exc)
        finally:
            conn.sock.close()


def free_port() -> int:
    """A loopback port nothing listens on (bound once, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- CSV data sets ---------------------------------------------------------------------

# The real CSV headers (PROTOCOL.md §9), in file order.
CSV_HEADERS: Dict[str, Tuple[str, ...]] = {
    "menu_items": ("item_id", "item_name", "category", "price", "is_seasonal",
                   "available_from", "available_to"),
    "stores": ("store_id", "store_name", "street", "postal_code", "city", "state",
               "latitude", "longitude"),
    "transaction_items": ("transaction_id", "item_id", "quantity", "unit_price", "subtotal",
                          "created_at"),
    "transactions": ("transaction_id", "store_id", "payment_method_id", "voucher_id", "user_id",
                     "original_amount", "discount_applied", "final_amount", "created_at"),
    "users": ("user_id", "gender", "birthdate", "registered_at"),
}
# CSV header -> wire key where they differ; None: the column is not sent (§9).
_WIRE_NAMES: Dict[str, Dict[str, Optional[str]]] = {
    "menu_items": {"item_id": "product_id", "item_name": "name"},
    "transactions": {"voucher_id": None},
}

CsvRow = Dict[str, str]


def csv_row(table: str, n: int) -> CsvRow:
    """Row ``n`` of ``table``: every value names its column and row (``"user_id:7"``)."""
    return {column: f"{column}:{n}" for column in CSV_HEADERS[table]}


def wire_row(table: str, row: Mapping[str, str]) -> Dict[str, str]:
    """The pairs the client must send for one CSV row (renamed, voucher_id dropped)."""
    names = _WIRE_NAMES.get(table, {})
    out = {}
    for column, value in row.items():
        key = names.get(column, column)
        if key is not None:
            out[key] = value
    return out


def write_csv(path: Path, rows: Sequence[Mapping[str, str]], header: Sequence[str]) -> Path:
    """Write ``rows`` (dicts keyed by CSV column) under ``header``, in that column order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([row[c] for c in header] for row in rows)
    return path


def write_dataset(root: Path, files: Mapping[str, Sequence[int]],
                  headers: Optional[Mapping[str, Sequence[str]]] = None,
                  skipped: bool = True) -> Dict[str, List[CsvRow]]:
    """Write ``root/<table>/<table>_<k>.csv`` with ``files[table][k-1]`` rows each.

    Rows are ``csv_row(table, n)`` numbered on across a table's files; files
    are written in reverse order (the client must sort them); ``headers``
    overrides a table's column order; ``skipped`` adds ``payment_methods/``
    and ``vouchers/`` folders, which the client must not send. Returns each
    table's rows in the order the client must send them.
    """
    headers = headers or {}
    sent: Dict[str, List[CsvRow]] = {}
    for table, counts in files.items():
        numbered, n = [], 0
        for count in counts:
            numbered.append([csv_row(table, n + i + 1) for i in range(count)])
            n += count
        for k in reversed(range(len(counts))):
            write_csv(root / table / f"{table}_{k + 1}.csv", numbered[k],
                      headers.get(table, CSV_HEADERS[table]))
        sent[table] = [row for rows in numbered for row in rows]
    if skipped:
        write_csv(root / "payment_methods" / "payment_methods.csv",
                  [{"method_id": "1", "method_name": "cash", "category": "cash"}],
                  ("method_id", "method_name", "category"))
        write_csv(root / "vouchers" / "vouchers.csv", [{"voucher_id": "1", "code": "X"}],
                  ("voucher_id", "code"))
    return sent


def csv_table_rows(root: Path) -> Dict[str, List[List[Dict[str, str]]]]:
    """Each table's rows as the client must send them, per CSV file in sorted order.

    Read with ``csv.DictReader``, independently of the client; only the five
    table folders count.
    """
    tables = {}
    for spec in TABLES:
        folder = root / spec.name
        if not folder.is_dir():
            continue
        per_file = []
        for path in sorted(p for p in folder.iterdir() if p.suffix == ".csv"):
            with open(path, newline="", encoding="utf-8") as f:
                per_file.append([wire_row(spec.name, row) for row in csv.DictReader(f)])
        tables[spec.name] = per_file
    return tables


# -- a real orchestrator ---------------------------------------------------------------

@contextlib.contextmanager
def running(orchestrator) -> Iterator:
    """Serve ``orchestrator`` (a ``fastframe.orchestrator.Orchestrator``) in a thread."""
    thread = threading.Thread(target=orchestrator.serve_forever, name="orchestrator",
                              daemon=True)
    thread.start()
    try:
        yield orchestrator
    finally:
        orchestrator.shutdown(grace=TIMEOUT)
        thread.join(TIMEOUT)
        assert not thread.is_alive(), "the orchestrator did not shut down"
