"""The orchestrator's listener and lifecycle: one event loop in the calling thread.

``serve_forever()`` runs an asyncio loop (uvloop when installed) that
accepts connections (``connection.Connection``, one protocol object each, no
thread), a small executor for projecting large batches (sized to the cores:
the Cython codec projects without the GIL) and the sink writer thread.
``request_shutdown()`` stops accepting; the frames already received are
answered within ``grace`` seconds, then the sink is flushed and closed.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Set, Tuple

from ..schema import DEFAULT_MAX_FRAME
from ..sinks import Sink
from .admission import (
    ByteBudget, ConnectionLimit, FrameSlots, LogThrottle, default_max_connections,
    descriptor_room,
)
from .connection import Connection
from .deadlines import Deadlines
from .heap import Heap
from .downstream import HeaderPolicy
from .sink_writer import SinkWriter

__all__ = ["Orchestrator", "Counters", "EVENT_LOOPS", "event_loop_choice", "new_event_loop"]

log: logging.Logger = logging.getLogger("fastframe.orchestrator")


EVENT_LOOPS = ("asyncio", "uvloop")


def event_loop_choice() -> str:
    """The loop ``FASTFRAME_EVENT_LOOP`` asks for: uvloop when unset and installed.

    ``asyncio`` picks asyncio's even with uvloop installed; ``uvloop`` requires
    it (``ValueError`` when it is not installed, or for any other value).
    """
    wanted = os.environ.get("FASTFRAME_EVENT_LOOP", "")
    if wanted not in ("",) + EVENT_LOOPS:
        raise ValueError(f"FASTFRAME_EVENT_LOOP={wanted!r}: expected one of {EVENT_LOOPS}")
    if wanted == "asyncio":
        return wanted
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if wanted == "uvloop":
            raise ValueError("FASTFRAME_EVENT_LOOP=uvloop, but uvloop is not installed "
                             "(pip install 'fastframe[uvloop]')") from None
        return "asyncio"
    return "uvloop"


def new_event_loop(choice: str = "") -> asyncio.AbstractEventLoop:
    """A new loop of ``choice`` (default: ``event_loop_choice()``)."""
    if (choice or event_loop_choice()) == "uvloop":
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        return loop
    return asyncio.new_event_loop()


# How long after the last connection closes the heap is trimmed (see heap.py).
_TRIM_DELAY = 0.1


def _cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


@dataclass
class Counters:
    """What the orchestrator has done so far (read from any thread, written by the loop)."""

    connections: int = 0        # admitted
    refused: int = 0            # over max_connections, or arriving during shutdown
    batches: int = 0            # stored and answered SUCCESS (table batches and EOFs)
    failed: int = 0             # answered FAIL
    rows: Dict[str, int] = field(default_factory=dict)
    bytes_in: int = 0
    deadlines: int = 0          # connections closed at a deadline
    resource_failures: int = 0  # connections ended for want of memory, threads ...
    loop_errors: int = 0        # reported by the event loop (EMFILE at accept ...)


class Orchestrator:
    """A TCP (or TLS) server: ``serve_forever()`` until ``request_shutdown()``.

    ``sink`` receives every DataBatch frame; ``host`` defaults to loopback
    (binding elsewhere is an explicit choice); ``port=0`` picks a free port
    (see ``address``, bound at construction). Limits:

    * ``max_connections`` open at once (default ``min(4096, fd limit - 64)``);
      a newcomer beyond it is accepted and closed at once;
    * ``max_buffer_bytes`` of frame buffers across all connections (64 MiB);
    * ``frame_slots`` frames over 16 KiB in memory at once, from header to
      answer (default ``2 × cores + 4``): enough to keep every core and the
      sink busy, so a saturated server leaves the rest in the kernel's
      socket buffers; a frame whose body stalls gives its slot up;
    * deadlines: ``header_timeout`` for the first frame header (and the TLS
      handshake), ``frame_timeout`` for each frame from its header to its
      last byte, waits for buffer budget included, ``idle_timeout`` between
      frames (``None`` disables one);
    * ``max_invalid`` invalid frames in a row close the connection.

    Under glibc, constructing one sets the process's malloc policy (one arena,
    frame-sized blocks on the heap; see ``heap.py``) unless ``MALLOC_*`` or
    ``GLIBC_TUNABLES`` is set: it is meant to own its process.

    ``compat=True`` writes the original orchestrator's DataBatch headers and
    leaves a stored FINISHED unanswered, as the original did. ``ssl_context``
    (``tls.server_context``) makes it TLS; with client certificates the
    certificate names the agency.
    """

    def __init__(self, sink: Sink, host: str = "127.0.0.1", port: int = 12345, *,
                 max_frame: int = DEFAULT_MAX_FRAME, compat: bool = False,
                 max_connections: Optional[int] = None, max_buffer_bytes: int = 64 * 2**20,
                 header_timeout: Optional[float] = 10.0, idle_timeout: Optional[float] = 60.0,
                 frame_timeout: Optional[float] = 30.0, max_invalid: int = 100,
                 frame_slots: Optional[int] = None, ssl_context: Optional[ssl.SSLContext] = None, backlog: int = 1024) -> None:
        if max_frame < 0:
            raise ValueError(f"max_frame must be >= 0, not {max_frame}")
        if max_buffer_bytes < max_frame:
            raise ValueError(f"max_buffer_bytes ({max_buffer_bytes}) must hold one frame of "
                             f"max_frame ({max_frame}) bytes")
        if max_invalid < 1:
            raise ValueError(f"max_invalid must be >= 1, not {max_invalid}")
        if frame_slots is not None and frame_slots < 1:
            raise ValueError(f"frame_slots must be >= 1, not {frame_slots}")
        for name, value in (("header_timeout", header_timeout), ("idle_timeout", idle_timeout),
                            ("frame_timeout", frame_timeout)):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0 seconds, not {value}")
        self.event_loop: str = event_loop_choice()   # before binding: a bad choice binds nothing
        self.headers: HeaderPolicy = HeaderPolicy(compat)
        self.max_frame = max_frame
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.frame_timeout = frame_timeout
        self.max_invalid = max_invalid
        self.frame_slots: int = 2 * _cores() + 4 if frame_slots is None else frame_slots
        self.ssl_context = ssl_context
        self.limit: ConnectionLimit = ConnectionLimit(
            default_max_connections() if max_connections is None else max_connections)
        self.budget: ByteBudget = ByteBudget(max_buffer_bytes)
        self.counters: Counters = Counters()
        self.live: Set[Connection] = set()
        self.stopping: bool = False
        self._loop_errors = LogThrottle()
        self._backlog = backlog
        # The family the host names (an IPv6 literal such as ::1, or IPv4).
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                    flags=socket.AI_PASSIVE)[0][0]
        self._listener = socket.create_server((host, port), family=family, backlog=backlog)
        self.address: Tuple[str, int] = self._listener.getsockname()[:2]
        self._heap = Heap()
        self._heap.keep_frames_on_heap()   # before any thread of ours allocates
        self.writer: SinkWriter = SinkWriter(sink)
        self._loop: Optional[asyncio.AbstractEventLoop] = None   # serve_forever's
        self.executor: ThreadPoolExecutor = ThreadPoolExecutor(
            max_workers=_cores(), thread_name_prefix="fastframe-project")
        self._ids = 0
        self._grace = 10.0
        self._shutdown_requested = False
        self._wake: Optional[asyncio.Event] = None
        self.deadlines: Deadlines   # made with the loop, in _serve
        self.slots: FrameSlots      # likewise
        self._all_closed: Optional[asyncio.Event] = None
        self._trim_pending = False
        self._state = "new"   # new -> serving -> stopped
        self._state_lock = threading.Lock()
        self._stopped = threading.Event()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running event loop (only while ``serve_forever`` runs)."""
        assert self._loop is not None, "serve_forever is not running"
        return self._loop

    def next_connection_id(self) -> int:
        self._ids += 1
        return self._ids

    # -- lifecycle ---------------------------------------------------------

    def serve_forever(self) -> None:
        """Serve in the calling thread until ``request_shutdown``; then wind down."""
        with self._state_lock:
            if self._state == "stopped":
                return
            if self._state == "serving":
                raise RuntimeError("serve_forever is already running")
            self._state = "serving"
            self._loop = loop = new_event_loop(self.event_loop)
        try:
            loop.set_exception_handler(self._loop_error)
            self.writer.deliver = loop.call_soon_threadsafe
            loop.run_until_complete(self._serve())
        finally:
            self.executor.shutdown(wait=True)
            self.writer.close()
            loop.close()
            self._log_totals()
            self._stopped.set()

    def request_shutdown(self, grace: float = 10.0) -> None:
        """Stop accepting and make ``serve_forever`` wind down; returns at once.

        Safe from a signal handler and from any thread. Connections read no
        new frames; those already received are still processed and answered
        within ``grace`` seconds; then the sink is flushed and closed.
        """
        self._grace = grace
        self._shutdown_requested = True
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._wake_up)
            except RuntimeError:   # the loop has already closed
                pass

    def shutdown(self, grace: float = 10.0) -> None:
        """``request_shutdown`` and wait until ``serve_forever`` has finished."""
        self.request_shutdown(grace)
        with self._state_lock:
            never_served = self._state == "new"
            if never_served:
                self._state = "stopped"
        if never_served:
            self._listener.close()
            self.executor.shutdown(wait=True)
            self.writer.close()
            self._log_totals()
            self._stopped.set()
        self._stopped.wait()

    def _wake_up(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._all_closed = asyncio.Event()
        self.deadlines = Deadlines(loop)
        self.slots = FrameSlots(loop, self.frame_slots)
        extra: Dict[str, Any] = {}
        if self.ssl_context is not None:
            extra = {"ssl": self.ssl_context, "ssl_handshake_timeout": self.header_timeout}
        server = await loop.create_server(lambda: Connection(self), sock=self._listener,
                                          backlog=self._backlog, **extra)
        room = descriptor_room()
        if room is not None and self.limit.maximum > room:
            # Said before the listen line, which tells callers the server is up.
            # Past the fd limit accept() fails: asyncio logs it and retries a second
            # later, uvloop (libuv) closes the newcomers without a word.
            log.warning("action: listen | result: warning | max_connections: %d | "
                        "descriptor_room: %d | error: connections beyond the descriptor limit "
                        "are dropped at accept; raise the limit (ulimit -n) or lower "
                        "--max-connections", self.limit.maximum, room)
        log.info("action: listen | result: success | address: %s:%d | tls: %s | "
                 "max_connections: %d | max_buffer_bytes: %d | loop: %s", self.address[0],
                 self.address[1], "on" if self.ssl_context is not None else "off",
                 self.limit.maximum, self.budget.limit, self.event_loop)
        if not self._shutdown_requested:
            await self._wake.wait()
        self.stopping = True
        server.close()
        for conn in list(self.live):
            conn.begin_shutdown()
        if self.live:
            try:
                await asyncio.wait_for(self._all_closed.wait(), self._grace)
            except asyncio.TimeoutError:
                log.warning("action: shutdown | result: grace_expired | connections_cut: %d",
                            len(self.live))
                for conn in list(self.live):
                    conn.close_reason = "shutdown_grace_expired"
                    if conn.transport is not None:
                        conn.transport.abort()
        await asyncio.sleep(0)   # let the aborted connections say goodbye

    def connection_closed(self) -> None:
        """Called by a connection as it goes; wakes the shutdown waiting for the last.

        When the last one goes, the heap is trimmed shortly after (unless a
        connection came back in the meantime): memory a crowd of connections
        held goes back to the OS, not only to the allocator.
        """
        if self.live:
            return
        if self.stopping:
            if self._all_closed is not None:
                self._all_closed.set()
        elif self._heap.trims and not self._trim_pending:
            self._trim_pending = True
            self.loop.call_later(_TRIM_DELAY, self._trim_when_idle)

    def _trim_when_idle(self) -> None:
        self._trim_pending = False
        if not self.live:
            self._heap.trim()

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: Dict[str, Any]) -> None:
        # One line, no traceback, at most one a second: EMFILE at accept comes once
        # per connection in the backlog, a peer resetting mid-handshake ... The loop
        # has already dealt with it (asyncio retries accept a second later).
        exc = context.get("exception")
        message = str(context.get("message"))
        if self.stopping and isinstance(exc, ValueError) and "._start_serving(" in message:
            # That retry, come due after the listener closed: nothing left to accept.
            log.debug("accept retry after the listener closed: %s", exc)
            return
        self.counters.loop_errors += 1
        unlogged = self._loop_errors.due()
        if unlogged is None:
            return
        log.error("action: event_loop | result: fail | error: %s%s | unlogged_since_last_line: %d",
                  message, f": {type(exc).__name__}: {exc}" if exc is not None else "", unlogged)
        if exc is not None:
            log.debug("event loop error detail", exc_info=exc)

    def _log_totals(self) -> None:
        c = self.counters
        log.info("action: shutdown | result: success | connections: %d | refused: %d | "
                 "batches: %d | failed: %d | bytes_in: %d | deadlines: %d | "
                 "resource_failures: %d | loop_errors: %d | rows: %s", c.connections,
                 c.refused, c.batches, c.failed, c.bytes_in, c.deadlines, c.resource_failures,
                 c.loop_errors, c.rows)
