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
from typing import (
    TYPE_CHECKING, Any, Generic, Iterator, List, Literal, Optional, Tuple, overload,
)

from . import codec
from .errors import ProtocolError
from .messages import (
    AnyMessage, DictRowsMessage, Message, TupleRowsMessage, decode_message,
)
from .rows import RowType
from .schema import DEFAULT_MAX_FRAME, FRAME_HEADER_SIZE

if TYPE_CHECKING:
    from typing_extensions import Buffer, TypeVar

    _M = TypeVar("_M", default=Message)
else:
    from typing import TypeVar

    _M = TypeVar("_M")

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

    @overload
    def read_message(self, row_type: Literal["object"] = ...) -> Optional[Message]: ...
    @overload
    def read_message(self, row_type: Literal["dict"]) -> Optional[DictRowsMessage]: ...
    @overload
    def read_message(self, row_type: Literal["tuple"]) -> Optional[TupleRowsMessage]: ...
    @overload
    def read_message(self, row_type: RowType = ...) -> Optional[AnyMessage]: ...
    def read_message(self, row_type: RowType = "object") -> Optional[AnyMessage]:
        """The next frame decoded to a message object (``fastframe.messages``)."""
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


class FrameDecoder(Generic[_M]):
    """Incremental decoder for bytes that arrive in pieces (sans-IO: asyncio, selectors).

    ``feed(data)`` buffers ``data`` and returns, in stream order, every
    message now complete. A malformed frame raises ``ProtocolError`` in its
    place in the stream: a ``feed`` that completes messages before it returns
    them and the next ``feed`` (``feed(b"")`` will do) raises it; the ``feed``
    after that returns every message complete by then, at once. So a caller
    that answers each message in turn (an ACK, a FAIL for the error) answers
    in stream order.

    ``ProtocolError.fatal`` says what the error left: ``False`` when the bad
    frame was delimited and has been consumed whole (decoding goes on after
    it); ``True`` when its header cannot be delimited (unknown opcode, a
    negative length or one over ``max_frame``), so the stream is unusable and
    every later ``feed`` raises it again. ``frames()`` yields raw ``(opcode,
    body bytes)`` instead, for callers that do not decode.
    """

    @overload
    def __init__(self: "FrameDecoder[Message]", max_frame: int = ...,
                 row_type: Literal["object"] = ...) -> None: ...
    @overload
    def __init__(self: "FrameDecoder[DictRowsMessage]", max_frame: int,
                 row_type: Literal["dict"]) -> None: ...
    @overload
    def __init__(self: "FrameDecoder[DictRowsMessage]", max_frame: int = ..., *,
                 row_type: Literal["dict"]) -> None: ...
    @overload
    def __init__(self: "FrameDecoder[TupleRowsMessage]", max_frame: int,
                 row_type: Literal["tuple"]) -> None: ...
    @overload
    def __init__(self: "FrameDecoder[TupleRowsMessage]", max_frame: int = ..., *,
                 row_type: Literal["tuple"]) -> None: ...
    @overload
    def __init__(self: "FrameDecoder[AnyMessage]", max_frame: int = ...,
                 row_type: RowType = ...) -> None: ...
    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME, row_type: RowType = "object") -> None:
        self._buf = _Buffer(64 * 1024, max_frame)
        self._row_type: RowType = row_type
        self._error: Optional[ProtocolError] = None  # met after messages a feed returned

    @property
    def pending(self) -> int:
        """Bytes buffered that do not yet make a whole frame."""
        return self._buf.end - self._buf.start

    def _append(self, data: "Buffer") -> None:
        view = memoryview(data).cast("B")
        buf = self._buf
        buf.make_room(buf.end - buf.start + len(view))
        buf.view[buf.end:buf.end + len(view)] = view
        buf.end += len(view)

    def frames(self, data: "Buffer" = b"") -> Iterator[Tuple[int, bytes]]:
        """Buffer ``data`` now; iterate for each complete frame as ``(opcode, body)``."""
        self._append(data)
        return self._complete_frames()

    def _complete_frames(self) -> Iterator[Tuple[int, bytes]]:
        while True:
            frame = self._buf.next_frame()
            if frame is None:
                return
            yield frame[0], bytes(frame[1])

    def feed(self, data: "Buffer") -> List[_M]:
        """Buffer ``data``; return the messages now complete, in order (see the class doc)."""
        self._append(data)
        error, self._error = self._error, None
        if error is not None:
            raise error
        ready: List[Any] = []  # of _M: the row type chose the overload at construction
        try:
            for opcode, body in self._complete_frames():
                ready.append(decode_message(opcode, body, self._row_type))
        except ProtocolError as exc:
            if not ready:
                raise
            self._error = exc  # after the messages before it, on the next call
        return ready
