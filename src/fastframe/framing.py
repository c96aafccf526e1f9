"""Reading whole frames from a byte stream: blocking sockets and sans-IO.

``FrameReader`` fills one reusable buffer with ``recv_into`` — one call per
chunk the kernel has, never one per field — and hands out each frame's body
as a ``memoryview`` into that buffer. ``FrameDecoder`` does the same for bytes
fed to it (non-blocking and asyncio code). Both check every header against
``max_frame`` before reserving room for the body.
"""
from __future__ import annotations

import socket
import time
from typing import Any, Iterator, List, Optional, Tuple

from . import codec
from .schema import DEFAULT_MAX_FRAME, FRAME_HEADER_SIZE

__all__ = ["FrameReader", "FrameDecoder", "Frame"]

Frame = Tuple[int, memoryview]


class _Buffer:
    """A byte buffer with a read window ``[start, end)`` that grows only when a frame needs it."""

    __slots__ = ("data", "view", "start", "end", "max_frame", "wanted")

    def __init__(self, size: int, max_frame: int) -> None:
        if max_frame < 0:
            raise ValueError(f"max_frame must be >= 0, not {max_frame}")
        self.data = bytearray(max(size, FRAME_HEADER_SIZE))
        self.view = memoryview(self.data)
        self.start = self.end = 0
        self.max_frame = max_frame
        self.wanted = FRAME_HEADER_SIZE  # bytes from ``start`` the next frame needs

    def make_room(self, needed: int) -> None:
        """Ensure ``needed`` bytes fit from ``start``: slide the window down, or grow."""
        if self.start + needed <= len(self.data):
            return
        pending = self.end - self.start
        if needed <= len(self.data):
            self.view[:pending] = self.view[self.start:self.end]
        else:
            # A new buffer rather than a resize: views handed out may still be alive.
            grown = bytearray(max(needed, 2 * len(self.data)))
            grown[:pending] = self.view[self.start:self.end]
            self.data = grown
            self.view = memoryview(grown)
        self.start, self.end = 0, pending

    def next_frame(self) -> Optional[Frame]:
        """The next whole frame in the window, or ``None`` with ``wanted`` set
        and room made for the frame."""
        pending = self.end - self.start
        if pending < FRAME_HEADER_SIZE:
            self.wanted = FRAME_HEADER_SIZE
            self.make_room(FRAME_HEADER_SIZE)
            return None
        opcode, length = codec.impl.read_frame_header(self.view, self.start, self.max_frame)
        total = FRAME_HEADER_SIZE + length
        if pending < total:
            self.wanted = total
            self.make_room(total)
            return None
        body = self.view[self.start + FRAME_HEADER_SIZE:self.start + total]
        self.start += total
        return opcode, body


class FrameReader:
    """Whole frames from a blocking socket.

    ``read_frame()`` returns ``(opcode, body)``, ``body`` being a memoryview
    valid until the next call; ``None`` when the peer closed between frames.
    A header that cannot be delimited raises ``ProtocolError`` (the stream is
    then unusable), a close inside a frame raises ``EOFError``.
    """

    def __init__(self, sock: Any, max_frame: int = DEFAULT_MAX_FRAME,
                 buffer_size: int = 256 * 1024, *, idle_timeout: Optional[float] = None,
                 frame_timeout: Optional[float] = None) -> None:
        self._sock = sock
        self._buf = _Buffer(buffer_size, max_frame)
        self._idle_timeout = idle_timeout
        self._frame_timeout = frame_timeout

    @property
    def max_frame(self) -> int:
        return self._buf.max_frame

    def _set_timeout(self, deadline: Optional[float]) -> None:
        """Between frames wait ``idle_timeout``; inside one, no longer than its deadline."""
        timeout = self._idle_timeout
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout(f"frame not complete within {self._frame_timeout}s "
                                     f"({self._buf.end - self._buf.start} bytes pending)")
            timeout = remaining if timeout is None else min(timeout, remaining)
        self._sock.settimeout(timeout)

    def read_frame(self) -> Optional[Frame]:
        """The next frame, or ``None`` at a clean close; see the class docstring.

        With ``idle_timeout`` or ``frame_timeout`` set, waiting longer than
        ``idle_timeout`` for bytes, or ``frame_timeout`` for a frame once it
        has started, raises ``socket.timeout``: a peer that trickles bytes
        cannot hold the reader forever.
        """
        buf = self._buf
        timed = self._idle_timeout is not None or self._frame_timeout is not None
        deadline = None
        while True:
            frame = buf.next_frame()
            if frame is not None:
                if deadline is not None:  # leave the socket as between frames
                    self._sock.settimeout(self._idle_timeout)
                return frame
            if timed:
                if deadline is None and buf.end > buf.start and self._frame_timeout is not None:
                    deadline = time.monotonic() + self._frame_timeout
                self._set_timeout(deadline)
            try:
                received = self._sock.recv_into(buf.view[buf.end:])
            except socket.timeout:
                if not timed:
                    raise  # the caller's own socket timeout
                if deadline is not None and time.monotonic() >= deadline:
                    raise socket.timeout(f"frame not complete within {self._frame_timeout}s "
                                         f"({buf.end - buf.start} bytes pending)") from None
                raise socket.timeout(f"no bytes for {self._idle_timeout}s") from None
            if received == 0:
                if buf.end == buf.start:
                    return None
                raise EOFError(f"peer closed mid-frame ({buf.end - buf.start} bytes pending)")
            buf.end += received

    def read_message(self, row_type: str = "object") -> Optional[Any]:
        """The next frame decoded to a message object (``fastframe.messages``)."""
        from .messages import decode_message

        frame = self.read_frame()
        if frame is None:
            return None
        return decode_message(frame[0], frame[1], row_type=row_type)

    def __iter__(self) -> Iterator[Frame]:
        while True:
            frame = self.read_frame()
            if frame is None:
                return
            yield frame


class FrameDecoder:
    """Incremental decoder for bytes that arrive in pieces.

    ``feed(data)`` buffers ``data`` and returns every message now complete.
    A frame whose body is invalid raises ``ProtocolError`` once it has been
    consumed; a header that cannot be delimited raises on every call from
    then on (the stream is unusable). Either way the messages completed
    before the error are not lost: the next ``feed`` returns them, and only
    them (``feed(b"")`` will do); decoding resumes on the call after. ``frames()``
    yields raw ``(opcode, body bytes)`` instead, for callers that do not decode.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME, row_type: str = "object") -> None:
        self._buf = _Buffer(64 * 1024, max_frame)
        self._row_type = row_type
        self._ready: List[Any] = []

    @property
    def pending(self) -> int:
        """Bytes buffered that do not yet make a whole frame."""
        return self._buf.end - self._buf.start

    def _append(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        buf = self._buf
        buf.make_room(buf.end - buf.start + len(view))
        buf.view[buf.end:buf.end + len(view)] = view
        buf.end += len(view)

    def frames(self, data: Any = b"") -> Iterator[Tuple[int, bytes]]:
        """Buffer ``data`` now; iterate for each complete frame as ``(opcode, body)``."""
        self._append(data)
        return self._complete_frames()

    def _complete_frames(self) -> Iterator[Tuple[int, bytes]]:
        while True:
            frame = self._buf.next_frame()
            if frame is None:
                return
            yield frame[0], bytes(frame[1])

    def feed(self, data: Any) -> List[Any]:
        from .messages import decode_message

        if self._ready:  # completed before an error: theirs is this call
            self._append(data)
            ready, self._ready = self._ready, []
            return ready
        ready: List[Any] = []
        try:
            for opcode, body in self.frames(data):
                ready.append(decode_message(opcode, body, row_type=self._row_type))
        except Exception:
            self._ready = ready
            raise
        return ready
