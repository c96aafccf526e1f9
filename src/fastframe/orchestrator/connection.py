"""One client connection: an ``asyncio.BufferedProtocol`` run as a state machine.

The transport receives straight into the buffer the current state owns:

=============  ==========================================  =============================
state          buffer handed to the transport              deadline (as logged)
=============  ==========================================  =============================
first_header   the connection's 5-byte header buffer       ``header_timeout``
                                                           (``first_header``)
idle           the same header buffer (between frames)     ``idle_timeout`` (``idle``)
queued         the scratch buffer; reading paused until    ``frame_timeout`` (``frame``:
               one of the server's ``FrameSlots`` is free  one per frame, from its
               (large frames only)                         header on, every wait included)
body           a 64-byte scratch buffer until body bytes   the same frame deadline
               arrive, then the frame's buffer: 64 KiB,
               doubled each time the bytes sent fill it,
               never past the length the header gave
budget         the scratch buffer; reading paused until    the same frame deadline
               the budget grants the next size
draining       none: no more frames are read; the answers  none, then ``idle_timeout``
               still owed go out, then the connection      (``answers_unread``) for the
               closes                                      peer to take them
=============  ==========================================  =============================

A frame buffer is allocated only once body bytes have arrived (a transport
may ask for a buffer it then has nothing for), and charged to the shared
``ByteBudget`` as it grows, so a peer that sent a header and nothing more
holds no buffer at all, and one that has sent ``n`` body bytes holds at
most ``max(64 KiB, 2n)``. A complete frame keeps its charge until it is
answered. At most ``_PIPELINE`` frames per connection are being processed or
stored at once; reading pauses at that depth (``pause_reading``) instead of
buffering more, and a paused read has no peer deadline: the wait is ours.
A frame whose body is over ``_INLINE_BODY`` bytes takes a place in the
server's ``FrameSlots`` at its header (or waits for one there) and keeps it
until it is answered, as long as its bytes come fast; smaller ones never
wait for one.
Deadlines live in ``server.deadlines`` (``deadlines.py``).

Per frame (PROTOCOL.md §7–§8): a valid table batch or EOF is wrapped
(``downstream.wrap_frame``; large bodies on the executor, as the Cython
codec projects without the GIL), handed to the sink writer in arrival
order, and answered BATCH_RECV_SUCCESS once the sink has stored it. A
well-framed invalid frame is answered BATCH_RECV_FAIL and the connection
goes on, up to ``max_invalid`` invalid frames in a row. FINISHED ends the
stream: answered BATCH_RECV_SUCCESS once stored (FAIL if not), with nothing
for a stored one under ``compat``, then the connection closes.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import socket
from concurrent.futures import Future
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple, cast

from .. import codec
from ..errors import ProtocolError
from ..schema import FRAME_HEADER_SIZE, TABLES_BY_OPCODE, Opcodes
from .admission import SLOT_MIN_BYTES
from .downstream import wrap_frame

if TYPE_CHECKING:
    from .server import Orchestrator

__all__ = ["Connection"]

log: logging.Logger = logging.getLogger("fastframe.orchestrator")

_SUCCESS = bytes([Opcodes.BATCH_RECV_SUCCESS, 0, 0, 0, 0])
_FAIL = bytes([Opcodes.BATCH_RECV_FAIL, 0, 0, 0, 0])
_FIRST_CHUNK = 64 * 1024      # a frame buffer's first size; it doubles from there
_PIPELINE = 8                 # frames per connection being processed or stored at once:
                              # the client's default window, so batches awaiting RabbitMQ's
                              # confirms still leave the next ones in process
_INLINE_BODY = 16 * 1024      # smaller bodies are wrapped on the loop, not the executor
_LOGGED_INVALID = 5           # invalid frames logged per connection; the rest are counted
_SCRATCH = 64                 # where a read lands while the budget is awaited

# A frame's place in server.slots (FrameSlots).
_NO_SLOT, _RESERVED, _SLOT = 0, 1, 2

# States (the table in the module docstring).
FIRST_HEADER, IDLE, QUEUED, BODY, BUDGET, DRAINING = (
    "first_header", "idle", "queued", "body", "budget", "draining")


class _Frame:
    """One complete frame, from its last byte until it is answered."""

    __slots__ = ("opcode", "body", "charge", "slot", "rows", "wrapped", "answer", "finished")

    def __init__(self, opcode: int, body: memoryview, charge: int, slot: bool, rows: int,
                 storable: bool) -> None:
        self.opcode = opcode
        self.body: Optional[memoryview] = body
        self.charge = charge                   # budget bytes held until answered
        self.slot = slot                       # a FrameSlots slot, held until answered
        self.rows = rows
        self.wrapped: Optional[Tuple[bytes, Sequence[int]]] = None
        self.answer: Optional[bytes] = None    # SUCCESS, FAIL, or b"" (no answer)
        self.finished = storable and opcode == Opcodes.FINISHED   # ends the stream


def _answer_at_once(transport: asyncio.Transport) -> None:
    """TCP_NODELAY on the accepted socket, so an answer never waits for the peer's
    delayed ACK (40 ms on Linux). uvloop sets it; asyncio's own loop sets it only
    where the socket's protocol number says TCP, which an accepted socket of a
    ``socket.create_server`` listener does not, and every table's last answer
    waited 40 ms."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:   # the peer is gone already: its first read will say so
            pass


class Connection(asyncio.BufferedProtocol):
    """The server side of one client connection (see the module docstring)."""

    # An idle connection is this object, its transport and 5 bytes: no dict.
    __slots__ = ("server", "id", "transport", "peer", "agency", "state", "_admitted", "_deadline",
                 "_deadline_what", "_deadline_seconds",
                 "_paused", "_header", "_filled", "_opcode", "_length",
                 "_body_view", "_capacity", "_scratch_view", "_scratch_filled", "_budget_wait",
                 "_slot_wait", "_slot",
                 "_in_flight", "_unsubmitted", "_close_when_answered", "close_reason",
                 "batches", "rows", "invalid", "_invalid_run", "_invalid_unlogged")

    def __init__(self, server: "Orchestrator") -> None:
        self.server: Orchestrator = server
        self.id: int = server.next_connection_id()
        self.transport: Optional[asyncio.Transport] = None
        self.peer: str = "?"
        self.agency: Optional[int] = None      # from the client certificate, with TLS
        self.state: str = FIRST_HEADER
        self._admitted = False
        self._deadline: Optional[int] = None   # its slot in server.deadlines
        self._deadline_what = ""
        self._deadline_seconds = 0.0
        self._paused: Tuple[str, ...] = ()     # why reading is paused
        # The header buffer, the one buffer every connection owns.
        self._header = bytearray(FRAME_HEADER_SIZE)
        self._filled = 0                       # bytes in the current buffer
        self._opcode = 0
        self._length = 0
        # The frame buffer of the frame being received (a view of its bytearray).
        self._body_view: Optional[memoryview] = None
        self._capacity = 0                     # its size, charged to the budget
        self._scratch_view: Optional[memoryview] = None   # made on first use
        self._scratch_filled = 0
        self._budget_wait: Optional[object] = None
        self._slot_wait = False                # waiting for a place in server.slots
        self._slot = _NO_SLOT                  # the place of the frame being received
        # Frames received and not yet answered, in arrival order; the ones not
        # yet handed to the sink writer, in the same order.
        self._in_flight: List[_Frame] = []      # at most _PIPELINE
        self._unsubmitted: List[_Frame] = []
        self._close_when_answered = False
        self.close_reason: str = "peer_closed"
        self.batches: int = 0
        self.rows: int = 0
        self.invalid: int = 0
        self._invalid_run = 0
        self._invalid_unlogged = 0

    # -- asyncio callbacks ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        server = self.server
        if server.stopping or not server.limit.admit(self.peer):
            server.counters.refused += 1
            transport.abort()
            return
        self._admitted = True
        _answer_at_once(transport)
        server.live.add(self)
        server.counters.connections += 1
        if server.ssl_context is not None and not self._take_agency(transport):
            return
        log.info("action: accept | result: success | conn: %d | peer: %s%s", self.id, self.peer,
                 "" if self.agency is None else f" | agency_id: {self.agency}")
        self._arm(FIRST_HEADER, server.header_timeout)

    def _take_agency(self, transport: asyncio.Transport) -> bool:
        """With client certificates, the agency the certificate names (CN ``agency-N``)."""
        from .tls import agency_of

        cert = transport.get_extra_info("peercert")
        if not cert:
            return True   # the context does not ask for client certificates
        self.agency = agency_of(cert)
        if self.agency is None:
            log.warning("action: accept | result: refused | conn: %d | peer: %s | reason: the "
                        "client certificate names no agency (CN agency-N)", self.id, self.peer)
            self.close_reason = "certificate_names_no_agency"
            transport.abort()
            return False
        return True

    def _scratch(self) -> memoryview:
        if self._scratch_view is None:
            self._scratch_view = memoryview(bytearray(_SCRATCH))
        return self._scratch_view

    def get_buffer(self, sizehint: int) -> memoryview:
        # Never allocates: a transport may ask for a buffer it then finds no bytes
        # for (uvloop reads until EAGAIN; asyncio's TLS asks before decrypting).
        state = self.state
        if state in (FIRST_HEADER, IDLE):
            return memoryview(self._header)[self._filled:]
        if state == BODY and self._filled < self._capacity:
            assert self._body_view is not None
            return self._body_view[self._filled:self._capacity]
        if state in (QUEUED, BODY, BUDGET):
            # No frame buffer yet, or waiting for room: the first few body
            # bytes land in the scratch buffer, and their arrival sizes one.
            return self._scratch()[self._scratch_filled:
                                   min(_SCRATCH, self._length - self._filled)]
        return self._scratch()   # DRAINING: whatever still arrives is dropped

    def buffer_updated(self, nbytes: int) -> None:
        state = self.state
        if state in (FIRST_HEADER, IDLE):
            self._filled += nbytes
            if self._filled == FRAME_HEADER_SIZE:
                self._header_done()
        elif state == BODY and self._filled < self._capacity:
            self._filled += nbytes
            if self._filled == self._length:
                self._frame_done()
            elif self._filled == self._capacity:
                if self._slot == _RESERVED and self._filled >= SLOT_MIN_BYTES:
                    self._slot = (_SLOT if self.server.slots.arrived(self, complete=False)
                                  else _NO_SLOT)
                self._grow()   # the peer sent what the buffer holds: it may double
        elif state in (QUEUED, BODY, BUDGET):
            self._scratch_filled += nbytes
            if state == BODY:
                self._grow()   # the first body bytes arrived: a buffer for them
        # DRAINING: bytes after FINISHED or an error are dropped.

    def eof_received(self) -> Optional[bool]:
        pending = self._pending_bytes()
        if pending:
            log.warning("action: receive | result: fail | conn: %d | error: peer closed "
                        "mid-frame (%d bytes pending)", self.id, pending)
            self.close_reason = "peer_closed_mid_frame"
        else:
            self.close_reason = "peer_closed"
        self._drain()
        # Keep the write side open for the answers still owed (not possible with TLS).
        return self.server.ssl_context is None

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._disarm()
        self._stop_waiting()
        self._drop_body()
        if not self._admitted:
            return
        server = self.server
        server.limit.release()
        server.live.discard(self)
        if exc is not None and self.close_reason in ("peer_closed", "answered"):
            self.close_reason = f"error: {exc}"
        unlogged = (f" | invalid_not_logged: {self._invalid_unlogged}"
                    if self._invalid_unlogged else "")
        log.info("action: close | result: success | conn: %d | reason: %s | batches: %d | "
                 "rows: %d | invalid: %d%s", self.id, self.close_reason, self.batches, self.rows,
                 self.invalid, unlogged)
        server.connection_closed()

    def pause_writing(self) -> None:
        # The peer does not read its answers: read no more frames from it.
        self._pause("writing")

    def resume_writing(self) -> None:
        self._resume("writing")

    # -- deadlines -----------------------------------------------------------

    def _arm(self, what: str, seconds: Optional[float]) -> None:
        """Start the deadline of the current wait, replacing the one before."""
        deadlines = self.server.deadlines
        deadlines.disarm(self, self._deadline)
        self._deadline = None
        if seconds is not None:
            self._deadline = deadlines.arm(self, seconds)
            self._deadline_what, self._deadline_seconds = what, seconds

    def _disarm(self) -> None:
        if self._deadline is not None:
            self.server.deadlines.disarm(self, self._deadline)
            self._deadline = None

    def deadline_passed(self) -> None:
        self._deadline = None
        what = self._deadline_what
        log.warning("action: deadline | result: closed | conn: %d | deadline: %s | seconds: %g | "
                    "pending_bytes: %d", self.id, what, self._deadline_seconds,
                    self._pending_bytes())
        self.server.counters.deadlines += 1
        self.close_reason = f"deadline: {what}"
        self._abort()

    # -- reading -------------------------------------------------------------

    def _pause(self, reason: str) -> None:
        if reason in self._paused:
            return
        if not self._paused and self.transport is not None:
            self.transport.pause_reading()
        self._paused += (reason,)

    def _resume(self, reason: str) -> None:
        if reason not in self._paused:
            return
        self._paused = tuple(r for r in self._paused if r != reason)
        if not self._paused and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def _header_done(self) -> None:
        server = self.server
        try:
            opcode, length = codec.impl.read_frame_header(self._header, 0, server.max_frame)
        except ProtocolError as exc:
            # The stream cannot be delimited any more: this connection ends.
            log.warning("action: receive | result: fail | conn: %d | opcode: %s | error: %s",
                        self.id, exc.opcode, exc)
            self.close_reason = "undelimitable_frame"
            self._drain()
            return
        self._opcode, self._length = opcode, length
        self._filled = 0
        self._arm("frame", server.frame_timeout)
        if length > _INLINE_BODY:
            if not server.slots.admit(self):
                self.state = QUEUED
                self._pause("slot")
                self._slot_wait = True
                return
            self._slot = _RESERVED
        self.state = BODY
        if length == 0:
            self._frame_done()

    def slot_granted(self) -> None:
        """A place is reserved for us: read the body (the frame deadline still runs)."""
        self._slot_wait = False
        self._slot = _RESERVED
        self.state = BODY
        self._resume("slot")
        if self._scratch_filled:
            self._grow()   # body bytes arrived while queued: a buffer for them

    def body_progress(self) -> int:
        """Body bytes received of the current frame (FrameSlots watches it)."""
        return self._filled + self._scratch_filled

    def slot_lost(self) -> None:
        """The body did not come fast enough to keep a place (already given back)."""
        self._slot = _NO_SLOT

    def _grow(self) -> None:
        """A bigger frame buffer: ``min(length, max(64 KiB, 2 × capacity))``, if budgeted.

        Without budget, reading pauses until ``_granted``, under the frame deadline.
        """
        size = self._next_capacity() - self._capacity
        if self.server.budget.take(size):
            self._granted()
            return
        self.state = BUDGET
        self._pause("budget")
        self._budget_wait = self.server.budget.wait(size, self._granted)

    def _next_capacity(self) -> int:
        return min(self._length, max(_FIRST_CHUNK, 2 * self._capacity))

    def _granted(self) -> None:
        """The budget for the next capacity is charged: resize, take the scratch bytes."""
        self._budget_wait = None
        if not self._resize(self._next_capacity()):
            return
        self.state = BODY
        if self._scratch_filled:
            end = self._filled + self._scratch_filled
            assert self._body_view is not None
            self._body_view[self._filled:end] = self._scratch()[:self._scratch_filled]
            self._filled, self._scratch_filled = end, 0
        self._resume("budget")
        if self._filled == self._length:
            self._frame_done()

    def _resize(self, new: int) -> bool:
        """The frame buffer at ``new`` bytes (already charged), its bytes kept."""
        try:
            grown = bytearray(new)
        except MemoryError:
            self.server.budget.release(new - self._capacity)
            self._resource_failure("MemoryError: no memory for a frame buffer")
            return False
        if self._body_view is not None:
            grown[:self._filled] = self._body_view[:self._filled]
        self._body_view = memoryview(grown)
        self._capacity = new
        return True

    def _stop_waiting(self) -> None:
        """Leave the budget's or the slots' queue, if waiting in one."""
        if self._budget_wait is not None:
            self.server.budget.cancel(self._budget_wait)
            self._budget_wait = None
        if self._slot_wait:
            self.server.slots.cancel(self)
            self._slot_wait = False

    def _drop_body(self) -> None:
        """Give up the frame being received, its charge and its place in the slots."""
        if self._slot != _NO_SLOT:
            self._slot = _NO_SLOT
            self.server.slots.drop(self)
        if self._capacity:
            self.server.budget.release(self._capacity)
        self._body_view = None
        self._capacity = self._scratch_filled = 0

    def _pending_bytes(self) -> int:
        """Bytes of the frame being received (header included), for log lines."""
        if self.state in (FIRST_HEADER, IDLE):
            return self._filled
        if self.state in (QUEUED, BODY, BUDGET):
            return FRAME_HEADER_SIZE + self._filled + self._scratch_filled
        return 0

    # -- frames --------------------------------------------------------------

    def _frame_done(self) -> None:
        server = self.server
        opcode, length = self._opcode, self._length
        body = self._body_view if self._body_view is not None else memoryview(b"")
        rows = (int.from_bytes(body[:4], "little")
                if opcode in TABLES_BY_OPCODE and length >= 4 else 0)
        refusal = self._finished_refusal(body) if opcode == Opcodes.FINISHED else None
        slot = self._slot == _SLOT
        if self._slot == _RESERVED:
            slot = server.slots.arrived(self, complete=True)
        elif slot:
            server.slots.received(self)
        entry = _Frame(opcode, body, self._capacity, slot, rows, refusal is None)
        # The buffer, its charge and its slot now belong to the frame.
        self._body_view = None
        self._capacity = self._filled = 0
        self._slot = _NO_SLOT
        server.counters.bytes_in += FRAME_HEADER_SIZE + length
        self._in_flight.append(entry)
        self._unsubmitted.append(entry)
        self.state = IDLE
        if entry.finished:
            self._drain()   # nothing after FINISHED is read
        elif len(self._in_flight) >= _PIPELINE:
            self._disarm()
            self._pause("pipeline")
        else:
            self._arm(IDLE, server.idle_timeout)
        self._process(entry, refusal)

    def _process(self, entry: _Frame, refusal: Optional[ProtocolError]) -> None:
        assert entry.body is not None
        if refusal is not None:
            self._invalid(entry, refusal)
            return
        # Only the Cython codec projects without the GIL: with the pure one a
        # thread would add hand-offs, not cores.
        if len(entry.body) <= _INLINE_BODY or codec.impl.__name__ != "fastframe._codec_c":
            try:
                wrapped = wrap_frame(self.server.headers, entry.opcode, entry.body)
            except ProtocolError as exc:
                self._invalid(entry, exc)
                return
            self._wrapped(entry, wrapped)
            return
        try:
            job = self.server.executor.submit(wrap_frame, self.server.headers, entry.opcode,
                                              entry.body)
        except RuntimeError as exc:   # shut down, or no thread could be started
            self._settle(entry, _FAIL)
            self._submit_in_order()
            self._resource_failure(f"the executor refused the frame: {exc}")
            return
        loop = self.server.loop
        job.add_done_callback(
            lambda done: loop.call_soon_threadsafe(self._executed, entry, done))

    def _finished_refusal(self, body: memoryview) -> Optional[ProtocolError]:
        """Why this FINISHED may not be stored, or ``None``."""
        try:
            agency = codec.impl.decode_finished_body(body)
        except ProtocolError as exc:
            return exc
        if agency < 0:
            return ProtocolError(f"FINISHED for a negative agency id {agency}",
                                 Opcodes.FINISHED)
        if self.agency is not None and agency != self.agency:
            return ProtocolError(f"FINISHED for agency {agency} from a connection whose "
                                 f"certificate names agency {self.agency}", Opcodes.FINISHED)
        return None

    def _executed(self, entry: _Frame, job: "Future[Tuple[bytes, Sequence[int], str]]") -> None:
        exc = job.exception()
        if exc is None:
            self._wrapped(entry, job.result())
        elif isinstance(exc, ProtocolError):
            self._invalid(entry, exc)
        else:   # MemoryError and the like: this connection pays for it
            self._settle(entry, _FAIL)
            self._submit_in_order()
            self._resource_failure(f"{type(exc).__name__}: {exc}")

    def _wrapped(self, entry: _Frame, wrapped: Tuple[bytes, Sequence[int], str]) -> None:
        frame, query_ids, what = wrapped
        entry.wrapped = (frame, query_ids)
        entry.body = None   # the client frame is no longer needed, only its charge
        self._invalid_run = 0
        if entry.finished:
            log.info("action: finished | result: received | conn: %d | %s", self.id, what)
        self._submit_in_order()

    def _submit_in_order(self) -> None:
        """Hand the sink writer every wrapped frame whose predecessors are handed over."""
        writer = self.server.writer
        while self._unsubmitted:
            entry = self._unsubmitted[0]
            if entry.answer is None and entry.wrapped is None:
                return   # still being wrapped: the ones after it wait
            del self._unsubmitted[0]
            if entry.wrapped is not None:
                frame, query_ids = entry.wrapped
                entry.wrapped = None
                writer.submit(frame, query_ids, functools.partial(self._stored, entry))

    def _stored(self, entry: _Frame, stored: bool) -> None:
        counters = self.server.counters
        if entry.finished:
            log.info("action: finished | result: %s | conn: %d",
                     "success" if stored else "fail", self.id)
            answer = _FAIL if not stored else (b"" if self.server.headers.compat else _SUCCESS)
            self.close_reason = "finished"
            self._settle(entry, answer)
            return
        if stored:
            self.batches += 1
            counters.batches += 1
            spec = TABLES_BY_OPCODE.get(entry.opcode)
            if spec is not None:
                self.rows += entry.rows
                counters.rows[spec.name] = counters.rows.get(spec.name, 0) + entry.rows
        else:
            counters.failed += 1
        self._settle(entry, _SUCCESS if stored else _FAIL)

    def _invalid(self, entry: _Frame, exc: ProtocolError) -> None:
        """A well-framed frame that cannot be stored: FAIL, and count it."""
        self.invalid += 1
        self._invalid_run += 1
        self.server.counters.failed += 1
        if self.invalid <= _LOGGED_INVALID:
            log.warning("action: validate | result: fail | conn: %d | opcode: %d | error: %s%s",
                        self.id, entry.opcode, exc,
                        " | (further invalid frames are counted, not logged)"
                        if self.invalid == _LOGGED_INVALID else "")
        else:
            self._invalid_unlogged += 1
        entry.body = None
        self._settle(entry, _FAIL)
        self._submit_in_order()
        if self._invalid_run >= self.server.max_invalid and self.state != DRAINING:
            log.warning("action: receive | result: fail | conn: %d | error: %d invalid frames "
                        "in a row (max_invalid)", self.id, self._invalid_run)
            self.close_reason = "max_invalid"
            self._drain()

    # -- answers -------------------------------------------------------------

    def _settle(self, entry: _Frame, answer: bytes) -> None:
        """``entry`` has its answer: release its charge, send every answer now due."""
        entry.answer = answer
        entry.body = None
        if entry.charge:
            self.server.budget.release(entry.charge)
            entry.charge = 0
        if entry.slot:
            entry.slot = False
            self.server.slots.release()
        out: List[bytes] = []
        finished = False
        while self._in_flight and self._in_flight[0].answer is not None:
            done = self._in_flight.pop(0)
            out.append(done.answer or b"")
            finished = finished or done.finished
        transport = self.transport
        if out and transport is not None and not transport.is_closing():
            transport.write(b"".join(out))
        if finished or (self._close_when_answered and not self._in_flight):
            self._close()
        elif len(self._in_flight) < _PIPELINE and "pipeline" in self._paused:
            self._arm(IDLE, self.server.idle_timeout)
            self._resume("pipeline")

    # -- the end -------------------------------------------------------------

    def _drain(self) -> None:
        """Read no more; close once every frame received is answered."""
        if self.state == DRAINING:
            return
        self.state = DRAINING
        self._disarm()
        self._stop_waiting()
        self._drop_body()
        self._pause("draining")
        self._close_when_answered = True
        if not self._in_flight:
            self._close()

    def begin_shutdown(self) -> None:
        """The server stops: answer the frames received, drop a partial one, close."""
        if self.state != DRAINING:
            self.close_reason = "shutdown"
        self._drain()

    def _close(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self._disarm()
        transport.close()
        if transport.get_write_buffer_size():
            # The peer must take its last answers within the idle deadline.
            self._arm("answers_unread", self.server.idle_timeout)

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _resource_failure(self, what: str) -> None:
        """Out of memory, threads or the like: this connection ends, the server goes on."""
        log.error("action: receive | result: fail | conn: %d | error: resource: %s", self.id, what)
        self.server.counters.resource_failures += 1
        self.close_reason = "resource_failure"
        self._drain()
