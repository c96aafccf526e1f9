"""The agency client: streams a data folder to the orchestrator (PROTOCOL.md §7, §9).

Tables go in spec order, each table's CSV files in sorted order, as batches
of at most ``max_batch_bytes`` (1 MiB, headers included) and ``batch_rows``
rows; batch numbers run on across a table's files, the last batch of each
file has status EOF, an EOF frame carrying the last batch number closes each
table once all its batches are ACKed (the next table starts without waiting
for the EOF's own ACK) and FINISHED closes the stream. A file is read whole and its records
go straight from CSV bytes to frames (``codec.encode_csv_batch``, strict
RFC 4180), one call per batch. Up to ``window`` batches are in flight
before their ACKs are read; a BATCH_RECV_FAIL resends that batch (bounded,
with backoff); a broken connection is re-opened and every unACKed batch is
sent again, so delivery is at-least-once. FINISHED counts as delivered only
once the orchestrator answers it with BATCH_RECV_SUCCESS (``finished_ack``).
"""
from __future__ import annotations

import collections
import csv
import logging
import os
import socket
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Deque, Dict, Iterator, List, Optional, Sequence, Tuple

from . import codec
from .errors import CsvError, ProtocolError
from .schema import (
    FRAME_HEADER_SIZE, MAX_BATCH_FRAME, TABLE_HEADER_SIZE, TABLES, BatchStatus, Opcodes,
    TableSpec,
)

__all__ = ["Client", "ClientError", "Cancelled", "SendSummary", "CSV_COLUMNS", "read_table_csv"]

_MAX_BACKOFF = 5.0  # seconds; retries back off exponentially up to this

# Connection retries are reported here (WARNING), so a caller can show what it waits for.
log: logging.Logger = logging.getLogger("fastframe.client")

# CSV header name -> wire key, where they differ (§9); other headers map to themselves.
CSV_COLUMNS: Dict[str, Dict[str, str]] = {
    "menu_items": {"item_id": "product_id", "item_name": "name"},
}


class ClientError(Exception):
    """The client cannot go on: bad input data, or the server keeps failing a batch."""


class Cancelled(Exception):
    """Sending stopped on a signal; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"cancelled by signal {signum}")
        self.signum = signum


def read_table_csv(path: Path, spec: TableSpec) -> Iterator[Tuple[int, List[str]]]:
    """Yield ``(line number, values in spec.required_keys order)`` for each CSV row.

    Columns are found by header name; a missing required column, a malformed
    line or a row with the wrong number of fields is a ``ClientError`` naming
    the file and the line the row starts on.
    """
    # utf-8-sig: a header written with a byte-order mark still names its first column.
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, strict=True)
        line = 1
        try:
            header = next(reader, None)
            if header is None:
                raise ClientError(f"{path}: empty file, expected a header line")
            picks = _header_picks(path, header, spec)
            width = len(header)
            line = reader.line_num + 1
            for row in reader:
                if len(row) != width:
                    if not row:
                        line = reader.line_num + 1
                        continue  # a blank line
                    raise ClientError(f"{path}:{line}: expected {width} fields, got {len(row)}")
                yield line, [row[i] for i in picks]
                line = reader.line_num + 1
        except csv.Error as exc:
            raise ClientError(f"{path}:{line}: malformed CSV: {exc}") from exc
        except UnicodeDecodeError as exc:
            # Text is decoded in blocks, so the reader's line is not the bad one.
            raise ClientError(f"{path}:{_first_non_utf8_line(path)}: not UTF-8: "
                              f"{exc.reason}") from exc


def _header_picks(path: Path, header: Sequence[str], spec: TableSpec) -> List[int]:
    """The header position of each of ``spec.required_keys``, found by name (§9)."""
    renames = CSV_COLUMNS.get(spec.name, {})
    position = {renames.get(name, name): i for i, name in enumerate(header)}
    missing = [k for k in spec.required_keys if k not in position]
    if missing:
        csv_names = {key: name for name, key in renames.items()}
        raise ClientError(f"{path}: missing required column(s) "
                          f"{', '.join(csv_names.get(k, k) for k in missing)}")
    return [position[k] for k in spec.required_keys]


def _csv_layout(path: Path, data: bytes, spec: TableSpec) -> Tuple[List[int], int, int]:
    """``(picks, width, offset)`` of a CSV file's bytes: its header line, parsed.

    The header is the first line (no quoted line breaks), decoded as
    ``utf-8-sig`` and split by ``csv.reader``, so quoted names work; the
    records start at ``offset``, on line 2.
    """
    if not data:
        raise ClientError(f"{path}: empty file, expected a header line")
    end = data.find(b"\n")
    if end < 0:
        end = len(data)
    try:
        text = data[:end].decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ClientError(f"{path}:1: not UTF-8: {exc.reason}") from exc
    if text.endswith("\r"):
        text = text[:-1]
    try:
        header = next(csv.reader([text], strict=True), [])
    except csv.Error as exc:
        raise ClientError(f"{path}:1: malformed CSV: {exc}") from exc
    return _header_picks(path, header, spec), len(header), min(end + 1, len(data))


# The encoder's grammar errors; the others (field count, UTF-8, size) say what they are.
_MALFORMED = frozenset(("quote inside an unquoted field",
                        "unexpected character after a closing quote",
                        "unterminated quoted field"))


def _csv_error(path: Path, exc: CsvError) -> ClientError:
    detail = f"malformed CSV: {exc.message}" if exc.message in _MALFORMED else exc.message
    return ClientError(f"{path}:{exc.line}: {detail}")


def _first_non_utf8_line(path: Path) -> int:
    """The number of the first line of ``path`` that is not valid UTF-8 (0 if none)."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return 0


@dataclass
class _Batch:
    table: TableSpec
    path: Optional[Path]
    number: int
    frame: bytes
    rows: int
    attempts: int = 1


class _Batcher:
    """Cuts one table's files into batches within the row and byte limits.

    Each batch is one ``encode_csv_batch`` call on the file's bytes: greedy
    (a batch ends when the next record would break a limit), never spanning
    two files, the last one of a file with status EOF (a file with no
    records gives one empty EOF batch).
    """

    def __init__(self, spec: TableSpec, max_rows: int, max_bytes: int,
                 stop: Callable[[], bool]) -> None:
        self.spec = spec
        self.stop = stop
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.number = 0
        self.path: Optional[Path] = None
        self._in_progress: Optional[_Batch] = None

    def batches(self, folder: Path) -> Iterator[_Batch]:
        opcode = self.spec.opcode
        for path in sorted(p for p in folder.iterdir() if p.suffix == ".csv" and p.is_file()):
            self.path = path
            data = path.read_bytes()
            picks, width, offset = _csv_layout(path, data, self.spec)
            encode = codec.impl.encode_csv_batch
            line = 2
            while True:
                try:
                    frame, offset, rows, line = encode(
                        opcode, data, offset, line, picks, width, self.number + 1,
                        self.max_rows, self.max_bytes)
                except CsvError as exc:
                    raise _csv_error(path, exc) from exc
                self.number += 1
                if self.stop():
                    # The batch in progress is the one to go out marked CANCEL.
                    status_at = FRAME_HEADER_SIZE + 12  # [i32 nRows][i64 batch][u8 status]
                    frame = frame[:status_at] + bytes([BatchStatus.CANCEL]) + frame[status_at + 1:]
                    self._in_progress = _Batch(self.spec, path, self.number, frame, rows)
                    return
                yield _Batch(self.spec, path, self.number, frame, rows)
                if offset >= len(data):
                    break

    def cancel_batch(self) -> _Batch:
        """The batch in progress when sending stopped, with status CANCEL.

        Empty, numbered next, when the stop came with every row already sent.
        """
        if self._in_progress is not None:
            batch, self._in_progress = self._in_progress, None
            return batch
        self.number += 1
        frame = codec.impl.encode_table_frame(self.spec.opcode, self.number,
                                              BatchStatus.CANCEL, [])
        return _Batch(self.spec, self.path, self.number, frame, 0)


@dataclass
class SendSummary:
    rows: Dict[str, int] = field(default_factory=dict)
    batches: Dict[str, int] = field(default_factory=dict)
    bytes_sent: int = 0
    retries: int = 0
    reconnects: int = 0
    seconds: float = 0.0


Progress = Callable[[str, int, int], None]


class Client:
    """Sends data folders to an orchestrator at ``address`` as agency ``agency_id``.

    ``finished_ack`` (default on): success only once the orchestrator answers
    FINISHED with BATCH_RECV_SUCCESS (fastframe's extension of PROTOCOL.md
    §7); off, for a server that never answers FINISHED (the original, or
    ``serve --compat``), a close after FINISHED counts as success.
    """

    def __init__(self, address: Tuple[str, int], agency_id: int, *, batch_rows: int = 50_000,
                 max_batch_bytes: int = MAX_BATCH_FRAME, window: int = 8, max_retries: int = 3,
                 connect_attempts: int = 10, backoff: float = 0.1, timeout: float = 60.0,
                 progress: Optional[Progress] = None, finished_ack: bool = True,
                 ssl_context: Optional[ssl.SSLContext] = None) -> None:
        # A batch of no rows (a header-only file, a CANCEL batch) must fit too.
        empty = FRAME_HEADER_SIZE + TABLE_HEADER_SIZE
        if not empty <= max_batch_bytes <= MAX_BATCH_FRAME:
            raise ValueError(f"max_batch_bytes must be in {empty}..{MAX_BATCH_FRAME}")
        if batch_rows < 1 or window < 1 or max_retries < 0 or connect_attempts < 1:
            raise ValueError("batch_rows, window and connect_attempts must be >= 1, "
                             "max_retries >= 0")
        self.address = address
        self.agency_id = agency_id
        self.batch_rows = batch_rows
        self.max_batch_bytes = max_batch_bytes
        self.window = window
        self.max_retries = max_retries
        self.connect_attempts = connect_attempts
        self.backoff = backoff
        self.timeout = timeout
        self.progress = progress
        self.finished_ack = finished_ack
        self.ssl_context = ssl_context   # TLS to the orchestrator (orchestrator.tls.client_context)
        self._sock: Optional[socket.socket] = None
        self._in_flight: Deque[_Batch] = collections.deque()
        self._cancel_signal: Optional[int] = None
        self._lost_in_a_row = 0
        self.summary: SendSummary = SendSummary()

    def cancel(self, signum: int) -> None:
        """Ask ``send_folder`` to stop after the current batch (safe from a signal handler)."""
        self._cancel_signal = signum

    # -- connection ----------------------------------------------------------

    def _connect(self) -> None:
        delay = self.backoff
        host, port = self.address
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        for attempt in range(1, self.connect_attempts + 1):
            sock = None
            try:
                sock = socket.create_connection(self.address, timeout=self.timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.ssl_context is not None:
                    sock = self.ssl_context.wrap_socket(sock, server_hostname=self.address[0])
            except OSError as exc:
                if sock is not None:
                    sock.close()
                if isinstance(exc, ssl.SSLCertVerificationError):  # no retry will change it
                    raise ClientError(f"TLS with {self.address[0]}:{self.address[1]}: "
                                      f"{exc.verify_message}") from exc
                if attempt == self.connect_attempts:
                    raise ClientError(f"cannot connect to {where} "
                                      f"after {attempt} attempts: {exc}") from exc
                reason = exc.strerror.lower() if exc.strerror else str(exc) or type(exc).__name__
                log.warning("waiting for %s: %s (attempt %d of %d, next in %.1f s)", where,
                            reason, attempt, self.connect_attempts, delay)
                time.sleep(delay)
                if self._cancel_signal is not None:  # no CANCEL batch can go out: stop here
                    raise Cancelled(self._cancel_signal)
                delay = min(delay * 2, _MAX_BACKOFF)
                continue
            self._sock = sock
            return

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _reconnect(self, cause: Exception) -> None:
        """Open a new connection and send every unACKed batch again, in order."""
        while True:
            self.summary.reconnects += 1
            self._lost_in_a_row += 1  # reset by every ACK: the budget is per outage
            if self._lost_in_a_row > self.connect_attempts:
                raise ClientError(f"connection lost {self._lost_in_a_row} times in a row; "
                                  f"last: {cause}")
            log.warning("connection lost (%s); reconnecting, %d unACKed batches to resend",
                        cause, len(self._in_flight))
            self._close()
            self._connect()
            try:
                for batch in self._in_flight:
                    self._open_socket().sendall(batch.frame)
                return
            except OSError as exc:  # the new connection broke too: open another
                cause = exc

    def _open_socket(self) -> socket.socket:
        """The connection ``_connect`` opened; every send and receive follows one."""
        assert self._sock is not None, "used before _connect"
        return self._sock

    def _send_frame(self, frame: bytes) -> None:
        while True:
            try:
                self._open_socket().sendall(frame)
                return
            except OSError as exc:
                self._reconnect(exc)
                if self._in_flight and self._in_flight[-1].frame is frame:
                    return  # the reconnect resent it with the rest of the window

    # -- ACKs ----------------------------------------------------------------

    def _recv_ack(self) -> int:
        header = bytearray()
        while len(header) < FRAME_HEADER_SIZE:
            chunk = self._open_socket().recv(FRAME_HEADER_SIZE - len(header))
            if not chunk:
                raise EOFError("orchestrator closed the connection")
            header += chunk
        opcode, length = codec.impl.read_frame_header(header, 0, 0)
        if opcode not in (Opcodes.BATCH_RECV_SUCCESS, Opcodes.BATCH_RECV_FAIL):
            raise ProtocolError(f"expected an ACK, got opcode {opcode}", opcode)
        return opcode

    def _read_ack(self) -> None:
        while True:
            try:
                opcode = self._recv_ack()
                break
            except (OSError, EOFError) as exc:
                self._reconnect(exc)
            except ProtocolError as exc:
                raise ClientError(f"unexpected answer from the orchestrator: {exc}") from exc
        batch = self._in_flight.popleft()
        self._lost_in_a_row = 0
        if opcode == Opcodes.BATCH_RECV_SUCCESS:
            name = batch.table.name
            self.summary.rows[name] = self.summary.rows.get(name, 0) + batch.rows
            if batch.path is not None:  # a table batch, not an EOF frame
                self.summary.batches[name] = self.summary.batches.get(name, 0) + 1
            self.summary.bytes_sent += len(batch.frame)
            if self.progress is not None:
                self.progress(name, batch.rows, len(batch.frame))
            return
        if batch.attempts > self.max_retries:
            where = f", file {batch.path}" if batch.path else ""
            raise ClientError(f"table {batch.table.name}{where}, batch {batch.number}: "
                              f"rejected by the orchestrator {batch.attempts} times")
        time.sleep(min(self.backoff * 2 ** (batch.attempts - 1), _MAX_BACKOFF))
        batch.attempts += 1
        self.summary.retries += 1
        self._submit(batch)

    def _submit(self, batch: _Batch) -> None:
        self._in_flight.append(batch)
        self._send_frame(batch.frame)
        while len(self._in_flight) >= self.window:
            self._read_ack()

    def _drain(self) -> None:
        while self._in_flight:
            self._read_ack()

    # -- the stream --------------------------------------------------------

    def send_folder(self, folder: "os.PathLike[str] | str") -> SendSummary:
        """Send every table folder under ``folder``, then FINISHED; return the summary.

        Raises ``ClientError`` (bad data, batch rejected too often, server gone)
        or ``Cancelled`` after sending the batch in progress with status CANCEL.
        """
        root = Path(folder)
        if not root.is_dir():
            raise ClientError(f"{root}: not a directory")
        self.summary = SendSummary()
        self._in_flight.clear()
        started = time.perf_counter()
        self._connect()
        try:
            last = None
            for spec in TABLES:
                if (root / spec.name).is_dir():
                    last = self._send_table(spec, root / spec.name)
            if self._cancel_signal is not None and last is not None:
                self._cancel(last)
            self._finish()
        finally:
            self._close()
            self.summary.seconds = time.perf_counter() - started
        return self.summary

    def _send_table(self, spec: TableSpec, folder: Path) -> _Batcher:
        batcher = _Batcher(spec, self.batch_rows, self.max_batch_bytes,
                           lambda: self._cancel_signal is not None)
        for batch in batcher.batches(folder):
            self._submit(batch)
            if self._cancel_signal is not None:
                break
        if self._cancel_signal is not None:
            self._cancel(batcher)
        # Every batch of the table is stored before its EOF goes downstream.
        self._drain()
        if self._cancel_signal is not None:
            self._cancel(batcher)
        # The EOF's own ACK is read with the next table's: only this table's
        # batches must be stored before it, not it before the next table.
        eof = codec.impl.encode_eof_frame(batcher.number, spec.name)
        self._submit(_Batch(spec, None, batcher.number, eof, 0))
        return batcher

    def _cancel(self, batcher: _Batcher) -> None:
        """Send the rows in progress (maybe none) as a CANCEL batch; raise ``Cancelled``."""
        signum = self._cancel_signal
        assert signum is not None, "called once a signal was recorded"
        self._submit(batcher.cancel_batch())
        try:
            self._drain()
        except (ClientError, OSError, EOFError, ProtocolError):
            pass  # cancelling anyway; the signal is what is reported
        raise Cancelled(signum)

    def _finish(self) -> None:
        """Send FINISHED; return once the orchestrator has said it is stored.

        An extension of PROTOCOL.md §7: the orchestrator answers FINISHED with
        BATCH_RECV_SUCCESS once its sink has stored it, or BATCH_RECV_FAIL,
        then closes. FAIL is retried like a rejected batch (``max_retries``,
        with backoff). A connection that closes, breaks or times out with no
        answer leaves the outcome unknown, so FINISHED goes again on a new
        connection, up to ``connect_attempts`` times in a row with backoff; a
        duplicate is byte-identical. With ``finished_ack=False`` (a server
        that never answers FINISHED, as the original) a clean close counts as
        stored, which cannot be told from a server that died before storing.
        """
        self._drain()   # the last table's EOF
        frame = codec.impl.encode_finished_frame(self.agency_id)
        rejected = unanswered = 0
        while True:
            self._send_frame(frame)
            answer, silence = self._finished_answer()
            if answer == Opcodes.BATCH_RECV_SUCCESS:
                return
            if answer == Opcodes.BATCH_RECV_FAIL:
                rejected += 1
                if rejected > self.max_retries:
                    raise ClientError(f"FINISHED of agency {self.agency_id}: rejected by the "
                                      f"orchestrator {rejected} times")
                self.summary.retries += 1
                delay = min(self.backoff * 2 ** (rejected - 1), _MAX_BACKOFF)
                log.warning("FINISHED rejected by the orchestrator; sending it again in %.1f s",
                            delay)
            else:
                unanswered += 1
                if unanswered >= self.connect_attempts:
                    raise ClientError(f"FINISHED of agency {self.agency_id}: outcome unknown, "
                                      f"{unanswered} connections ended without an answer; "
                                      f"last: {silence}")
                self.summary.reconnects += 1
                delay = min(self.backoff * 2 ** (unanswered - 1), _MAX_BACKOFF)
                log.warning("FINISHED not answered (%s): outcome unknown, sending it again in "
                            "%.1f s (attempt %d of %d)", silence, delay, unanswered + 1,
                            self.connect_attempts)
            time.sleep(delay)
            self._close()
            self._connect()

    def _finished_answer(self) -> Tuple[Optional[int], str]:
        """``(ACK opcode, "")`` for FINISHED, or ``(None, why there was none)``.

        A clean close with no answer is SUCCESS when ``finished_ack`` is off.
        """
        sock = self._open_socket()
        try:
            if not isinstance(sock, ssl.SSLSocket):  # there it would end TLS, not our half
                sock.shutdown(socket.SHUT_WR)  # nothing more from us
            return self._recv_ack(), ""
        except EOFError as exc:
            if not self.finished_ack:
                return Opcodes.BATCH_RECV_SUCCESS, ""
            return None, f"{exc} without answering FINISHED"
        except OSError as exc:  # a reset, or silence past the timeout
            return None, f"{type(exc).__name__}: {exc}"
        except ProtocolError as exc:
            raise ClientError(f"unexpected answer to FINISHED: {exc}") from exc
