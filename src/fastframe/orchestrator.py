"""The orchestrator: many agencies in, validated DataBatch frames out to a sink.

Threads, not asyncio: every connection gets a thread that blocks on its
socket, and the per-batch work (validate, project, wrap) is one call into the
codec, which the Cython build runs without the GIL — so two cores project
two batches at once, and blocking sinks (pika, fsync) need no executor. One
sink-writer thread owns the sink: it takes every batch waiting from all
connections, writes them, flushes once (group commit) and only then lets
their connections send BATCH_RECV_SUCCESS.

Per connection (PROTOCOL.md §7–§8): a table batch is validated and projected
to its §8 columns inside a DataBatch; EOF and FINISHED are wrapped whole.
A well-framed but invalid batch gets BATCH_RECV_FAIL and the connection goes
on; a frame that cannot be delimited closes that connection only.
"""
from __future__ import annotations

import collections
import itertools
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Deque, Dict, FrozenSet, List, Optional, Sequence, Tuple

from . import codec
from .errors import ProtocolError
from .framing import BufferPool, FrameReader
from .schema import (
    ALL_QUERY_IDS, DEFAULT_MAX_FRAME, TABLES, TABLES_BY_NAME, TABLES_BY_OPCODE, Opcodes,
)
from .sinks import Sink, SinkError

__all__ = ["Orchestrator", "HeaderPolicy", "SinkWriter"]

log = logging.getLogger("fastframe.orchestrator")

_SUCCESS = bytes([Opcodes.BATCH_RECV_SUCCESS, 0, 0, 0, 0])
_FAIL = bytes([Opcodes.BATCH_RECV_FAIL, 0, 0, 0, 0])
_ALL_TABLE_IDS = tuple(t.opcode for t in TABLES)
# How often a waiting accept() looks at the stop flag: shutting the listener
# down wakes accept() on Linux only (macOS and Windows answer ENOTCONN).
_ACCEPT_POLL = 0.5
# Each connection's own read buffer; a bigger frame borrows one from the pool.
_CONNECTION_BUFFER = 64 * 1024


@dataclass(frozen=True)
class HeaderPolicy:
    """The DataBatch header values the orchestrator writes.

    fastframe's own: ``table_ids`` = the opcode of the table the batch belongs
    to (every table's for FINISHED), ``query_ids`` = the queries that read it
    (§8; all four for FINISHED), ``meta`` = {}, one shard (``total_shards=1,
    shard_num=0``). ``compat=True`` writes the original orchestrator's values
    (``table_ids=[1]``, ``meta={}``, ``total_shards=0``, ``shard_num=0``), so
    its output can be compared byte for byte.
    """

    compat: bool = False

    def table_ids(self, table_opcode: Optional[int]) -> Sequence[int]:
        if self.compat:
            return (1,)
        return _ALL_TABLE_IDS if table_opcode is None else (table_opcode,)

    @property
    def shards(self) -> Tuple[int, int]:
        return (0, 0) if self.compat else (1, 0)


class _Ticket:
    """One batch waiting for the sink; ``wait()`` tells whether it is stored."""

    __slots__ = ("frame", "query_ids", "_done", "ok")

    def __init__(self, frame: bytes, query_ids: Sequence[int]) -> None:
        self.frame = frame
        self.query_ids = query_ids
        self._done = threading.Event()
        self.ok = False

    def settle(self, ok: bool) -> None:
        self.ok = ok
        self._done.set()

    def wait(self) -> bool:
        self._done.wait()
        return self.ok


class SinkWriter:
    """The one thread that touches the sink, committing batches in groups."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self._queue: Deque[Optional[_Ticket]] = collections.deque()
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="fastframe-sink", daemon=True)
        self._thread.start()
        self.frames_written = 0
        self.bytes_written = 0

    def store(self, frame: bytes, query_ids: Sequence[int]) -> bool:
        """Hand ``frame`` to the sink; ``True`` once it is durable, ``False`` if it failed."""
        ticket = _Ticket(frame, query_ids)
        with self._ready:
            self._queue.append(ticket)
            self._ready.notify()
        return ticket.wait()

    def _take_all(self) -> List[Optional[_Ticket]]:
        with self._ready:
            while not self._queue:
                self._ready.wait()
            group = list(self._queue)
            self._queue.clear()
        return group

    def _run(self) -> None:
        while True:
            group = self._take_all()
            tickets = [t for t in group if t is not None]
            if tickets:
                self._commit(tickets)
            if len(tickets) < len(group):
                return

    def _commit(self, tickets: List[_Ticket]) -> None:
        # One round of the sink contract (sinks/__init__.py): write the group, flush
        # once; a failed write fails the whole round, a failed flush the writes its
        # SinkError.failed names (all of them when it names none).
        failed: Optional[FrozenSet[int]] = frozenset()
        error: Optional[Exception] = None
        try:
            for t in tickets:
                self._sink.write(t.frame, t.query_ids)
        except Exception as exc:
            failed, error = None, exc
        try:
            self._sink.flush()
        except SinkError as exc:
            if failed is not None:
                failed, error = exc.failed, exc
        except Exception as exc:
            failed, error = None, error or exc
        if error is not None:
            # SinkError is the contract; anything else is a bug in the sink, and
            # must not end this thread: every connection waits on it.
            log.error("action: sink_write | result: fail | batches: %d | error: %s",
                      len(tickets) if failed is None else len(failed), error,
                      exc_info=not isinstance(error, SinkError))
        for i, t in enumerate(tickets):
            ok = failed is not None and i not in failed
            if ok:
                self.frames_written += 1
                self.bytes_written += len(t.frame)
            t.settle(ok)

    def close(self) -> None:
        """Store what is queued, stop the thread, close the sink."""
        with self._ready:
            self._queue.append(None)
            self._ready.notify()
        self._thread.join()
        self._sink.close()


@dataclass
class ConnectionStats:
    batches: int = 0
    failed: int = 0
    rows: int = 0
    bytes_in: int = 0


@dataclass
class _Counters:
    connections: int = 0
    batches: int = 0
    failed: int = 0
    rows: Dict[str, int] = field(default_factory=dict)
    bytes_in: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class Orchestrator:
    """A threaded TCP server: ``serve_forever()`` until ``shutdown()``.

    ``sink`` receives every DataBatch frame; ``host`` defaults to loopback
    (binding elsewhere is an explicit choice); ``port=0`` picks a free port
    (see ``address``). ``idle_timeout`` closes a connection that sends nothing
    for that many seconds, ``frame_timeout`` one that takes longer than that
    to deliver a frame it has started (a peer trickling bytes).
    ``max_in_flight`` batches at most are being projected or stored at once
    (a group commit holds up to that many); other connections wait with
    their frame read. A frame bigger than a connection's own 64 KiB buffer
    is read into one of ``max_in_flight + 2`` frame-sized buffers shared by
    all connections, so memory stays flat however many connect.
    """

    def __init__(self, sink: Sink, host: str = "127.0.0.1", port: int = 12345, *,
                 max_frame: int = DEFAULT_MAX_FRAME, compat: bool = False,
                 idle_timeout: Optional[float] = 60.0, frame_timeout: Optional[float] = 30.0,
                 max_in_flight: int = 8, backlog: int = 128) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, not {max_in_flight}")
        self.headers = HeaderPolicy(compat)
        self._slots = threading.BoundedSemaphore(max_in_flight)
        # No deadlock: a thread takes a pool buffer only while reading, holding
        # no slot, and one holding a slot waits for nothing but the sink; two
        # more than the slots let the next frames be read while these are stored.
        self._buffers = BufferPool(max_in_flight + 2, max_frame)
        self.max_frame = max_frame
        self.idle_timeout = idle_timeout
        self.frame_timeout = frame_timeout
        self._writer = SinkWriter(sink)
        self._listener = socket.create_server((host, port), backlog=backlog)
        self.address: Tuple[str, int] = self._listener.getsockname()[:2]
        self._stopping = threading.Event()
        self._connections: Dict[int, socket.socket] = {}
        self._threads: List[threading.Thread] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.counters = _Counters()
        self._grace = 10.0
        self._serving = False
        self._stopped = threading.Event()

    # -- lifecycle ---------------------------------------------------------

    def serve_forever(self) -> None:
        log.info("action: listen | result: success | address: %s:%d", *self.address)
        self._serving = True
        self._listener.settimeout(_ACCEPT_POLL)
        try:
            while not self._stopping.is_set():
                try:
                    sock, peer = self._listener.accept()
                except socket.timeout:
                    continue
                except OSError as exc:
                    if self._stopping.is_set():
                        break
                    # Out of descriptors and the like: the clients connected go on.
                    log.error("action: accept | result: fail | error: %s", exc)
                    time.sleep(_ACCEPT_POLL)
                    continue
                self._start_connection(sock, peer)
        finally:
            self._listener.close()
            self._finish()

    def request_shutdown(self, grace: float = 10.0) -> None:
        """Stop accepting and make ``serve_forever`` wind down; returns at once.

        Safe from a signal handler. Connections stop reading new frames; a
        frame already received is still processed and answered; connection
        threads get ``grace`` seconds; then the sink is flushed and closed.
        """
        self._grace = grace
        self._stopping.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def shutdown(self, grace: float = 10.0) -> None:
        """``request_shutdown`` and wait until ``serve_forever`` has finished."""
        self.request_shutdown(grace)
        if not self._serving:  # never served: nothing will wind down but this call
            self._serving = True
            self._listener.close()
            self._finish()
        self._stopped.wait()

    def _finish(self) -> None:
        with self._lock:
            live = list(self._connections.values())
        for sock in live:
            try:
                sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass
        deadline = time.monotonic() + self._grace   # for all of them, not each
        for t in list(self._threads):
            t.join(max(0.0, deadline - time.monotonic()))
        self._writer.close()
        c = self.counters
        log.info("action: shutdown | result: success | connections: %d | batches: %d | "
                 "failed: %d | bytes_in: %d | rows: %s", c.connections, c.batches, c.failed,
                 c.bytes_in, c.rows)
        self._stopped.set()

    def _start_connection(self, sock: socket.socket, peer) -> None:
        conn_id = next(self._ids)
        with self._lock:
            self._connections[conn_id] = sock
            self._threads = [t for t in self._threads if t.is_alive()]
            thread = threading.Thread(target=self._serve_connection, args=(conn_id, sock, peer),
                                      name=f"fastframe-conn-{conn_id}", daemon=True)
            self._threads.append(thread)
        with self.counters.lock:
            self.counters.connections += 1
        thread.start()

    # -- one connection ----------------------------------------------------

    def _serve_connection(self, conn_id: int, sock: socket.socket, peer) -> None:
        where = f"{peer[0]}:{peer[1]}"
        log.info("action: accept | result: success | conn: %d | peer: %s", conn_id, where)
        reader = FrameReader(sock, self.max_frame, _CONNECTION_BUFFER,
                             idle_timeout=self.idle_timeout, frame_timeout=self.frame_timeout,
                             buffer_pool=self._buffers)
        stats = ConnectionStats()
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while not self._stopping.is_set():
                frame = reader.read_frame()
                if frame is None:
                    log.info("action: close | result: success | conn: %d | reason: peer_closed"
                             " | batches: %d | rows: %d", conn_id, stats.batches, stats.rows)
                    break
                opcode, body = frame
                stats.bytes_in += 5 + len(body)
                if not self._handle(conn_id, sock, opcode, body, stats):
                    break
        except ProtocolError as exc:
            log.warning("action: receive | result: fail | conn: %d | opcode: %s | error: %s",
                        conn_id, exc.opcode, exc)
        except EOFError as exc:
            log.warning("action: receive | result: fail | conn: %d | error: %s", conn_id, exc)
        except socket.timeout as exc:
            log.warning("action: receive | result: fail | conn: %d | error: timeout: %s",
                        conn_id, exc)
        except OSError as exc:
            log.warning("action: receive | result: fail | conn: %d | error: %s", conn_id, exc)
        finally:
            reader.close()
            with self._lock:
                self._connections.pop(conn_id, None)
            sock.close()
            with self.counters.lock:
                self.counters.batches += stats.batches
                self.counters.failed += stats.failed
                self.counters.bytes_in += stats.bytes_in

    def _handle(self, conn_id: int, sock: socket.socket, opcode: int, body: memoryview,
                stats: ConnectionStats) -> bool:
        """Process one frame; ``False`` when the connection is done (FINISHED)."""
        # The slot bounds how many projected batches exist at once, whatever
        # the number of connections: memory stays flat as agencies are added.
        with self._slots:
            try:
                frame, query_ids, what = self._wrap(opcode, body)
            except ProtocolError as exc:
                log.warning("action: validate | result: fail | conn: %d | opcode: %d | "
                            "error: %s", conn_id, opcode, exc)
                stats.failed += 1
                sock.sendall(_FAIL)
                return True
            stored = self._writer.store(frame, query_ids)
            del frame
        if opcode == Opcodes.FINISHED:
            log.info("action: finished | result: %s | conn: %d | %s",
                     "success" if stored else "fail", conn_id, what)
            # fastframe answers FINISHED (an extension of PROTOCOL.md §7), so a
            # close cannot pass for stored; compat keeps the original's silence,
            # except for a FAIL, the one way to say it was not stored.
            if not stored or not self.headers.compat:
                sock.sendall(_SUCCESS if stored else _FAIL)
            return False
        if stored:
            stats.batches += 1
            if opcode in TABLES_BY_OPCODE:
                n_rows = int.from_bytes(body[:4], "little")
                stats.rows += n_rows
                table = TABLES_BY_OPCODE[opcode].name
                with self.counters.lock:
                    self.counters.rows[table] = self.counters.rows.get(table, 0) + n_rows
        else:
            stats.failed += 1
        log.debug("action: batch | result: %s | conn: %d | %s",
                  "success" if stored else "fail", conn_id, what)
        sock.sendall(_SUCCESS if stored else _FAIL)
        return True

    def _wrap(self, opcode: int, body: memoryview) -> Tuple[bytes, Sequence[int], str]:
        """The DataBatch frame for one client frame, its query ids, and a log fragment."""
        impl = codec.impl
        headers = self.headers
        total_shards, shard_num = headers.shards
        spec = TABLES_BY_OPCODE.get(opcode)
        if spec is not None:
            frame = impl.project_databatch(opcode, body, headers.table_ids(opcode),
                                           spec.query_ids, {}, total_shards, shard_num)
            return frame, spec.query_ids, f"table: {spec.name}"
        if opcode == Opcodes.EOF:
            batch_number, table_type = impl.decode_eof_body(body)
            spec = TABLES_BY_NAME[table_type]
            query_ids, table_ids = spec.query_ids, headers.table_ids(spec.opcode)
            what = f"eof: {table_type}"
        elif opcode == Opcodes.FINISHED:
            batch_number, query_ids = 0, ALL_QUERY_IDS
            table_ids = headers.table_ids(None)
            what = f"agency_id: {impl.decode_finished_body(body)}"
        else:
            raise ProtocolError(f"a client may not send opcode {opcode}", opcode)
        frame = impl.encode_databatch_frame(table_ids, query_ids, 0, batch_number, {},
                                            total_shards, shard_num,
                                            impl.encode_frame(opcode, body))
        return frame, query_ids, what
