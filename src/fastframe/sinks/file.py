"""The embedded default sink: an append-only file of DataBatch frames.

The file is nothing but whole frames back to back, so ``fastframe inspect``
and ``read_frames`` read it with the codec. ``flush()`` pushes what was
written to the operating system (which survives the orchestrator being
killed) and, with ``fsync="always"``, to the disk (which survives the machine
losing power). A crash can leave a torn last frame: ``read_frames`` reports
it instead of misreading it, and a ``FileSink`` opened on such a file cuts
it off (logging what it cut) before appending.
"""
from __future__ import annotations

import logging
import mmap
import os
from typing import TYPE_CHECKING, Iterator, Optional, Sequence, Tuple

from .. import codec
from ..errors import ProtocolError
from ..schema import FRAME_HEADER_SIZE
from . import SinkError

__all__ = ["FileSink", "TornFrameError", "read_frames", "FSYNC_POLICIES"]

if TYPE_CHECKING:
    from typing_extensions import Buffer

log: logging.Logger = logging.getLogger("fastframe.sinks.file")
FSYNC_POLICIES = ("always", "never")
# A sink file holds frames of any size the orchestrator wrote; the header check
# only has to reject lengths that are not frames at all.
_MAX_STORED_FRAME = 0x7FFFFFFF


class TornFrameError(ProtocolError):
    """The file ends inside a frame: what a crash mid-write leaves behind."""


def _scan(data: "Buffer", size: int) -> Iterator[Tuple[int, int]]:
    """``(offset, end)`` of each whole frame.

    Raises ``TornFrameError`` when the file ends inside a frame and
    ``ProtocolError`` at bytes that are not a frame header at all.
    """
    offset = 0
    while offset < size:
        if size - offset < FRAME_HEADER_SIZE:
            raise TornFrameError(f"torn frame at offset {offset}: "
                                 f"{size - offset} of {FRAME_HEADER_SIZE} header bytes present")
        error: Optional[ProtocolError]
        try:
            opcode, length = codec.impl.read_frame_header(data, offset, _MAX_STORED_FRAME)
        except ProtocolError as exc:
            error = ProtocolError(f"not a frame at offset {offset}: {exc}", exc.opcode)
        else:
            error = None
        if error is not None:
            # Raised here, not in the except block: a chained exception would keep
            # the codec's frames alive, and with them views of ``data``, an mmap
            # that the caller must then close (BufferError).
            raise error
        end = offset + FRAME_HEADER_SIZE + length
        if end > size:
            raise TornFrameError(f"torn frame at offset {offset}: {size - offset} of "
                                 f"{end - offset} bytes present", opcode)
        yield offset, end
        offset = end


def read_frames(path: "os.PathLike[str] | str") -> Iterator[bytes]:
    """Yield each whole frame (header included) stored in ``path``.

    A torn frame raises ``TornFrameError`` (a ``ProtocolError``) and bytes
    that are not a frame raise ``ProtocolError``, naming the offset, after
    every whole frame before it has been yielded.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            for start, end in _scan(data, size):
                yield data[start:end]


class FileSink:
    """Appends DataBatch frames to ``path``; see the module docstring for durability.

    Frames go to the file with unbuffered writes (one copy, straight from the
    caller's bytes). A failed write or flush truncates the file back to where
    the last successful flush left it, so no partial frame stays behind and
    nothing after that point counts as stored.
    """

    def __init__(self, path: "os.PathLike[str] | str", fsync: str = "always") -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {FSYNC_POLICIES}, not {fsync!r}")
        self.path: str = os.fspath(path)
        self._fsync = fsync == "always"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._durable_end = self._cut_torn_tail()

    def _cut_torn_tail(self) -> int:
        size = os.fstat(self._fd).st_size
        good = 0
        if size:
            with open(self.path, "rb") as f, mmap.mmap(f.fileno(), 0,
                                                       access=mmap.ACCESS_READ) as data:
                try:
                    for _, good in _scan(data, size):
                        pass
                except TornFrameError as exc:
                    log.warning("action: open_sink | result: torn_tail_cut | path: %s | "
                                "cut_bytes: %d | reason: %s", self.path, size - good, exc)
                    os.ftruncate(self._fd, good)
                except ProtocolError as exc:
                    # Not a sink file (a wrong --sink path?): never cut it.
                    os.close(self._fd)
                    raise SinkError(f"{self.path} is not a fastframe sink file: {exc}") from None
        return good

    def write(self, frame: bytes, query_ids: Sequence[int] = ()) -> None:
        view = memoryview(frame)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as exc:
            self._rollback()
            raise SinkError(f"cannot write to {self.path}: {exc}") from exc

    def flush(self) -> None:
        try:
            if self._fsync:
                os.fsync(self._fd)
        except OSError as exc:
            self._rollback()
            raise SinkError(f"cannot flush {self.path}: {exc}") from exc
        self._durable_end = os.fstat(self._fd).st_size

    def _rollback(self) -> None:
        try:
            os.ftruncate(self._fd, self._durable_end)
        except OSError as exc:
            log.error("action: rollback_sink | result: fail | path: %s | error: %s", self.path, exc)

    def close(self) -> None:
        if self._fd < 0:
            return
        try:
            self.flush()
        finally:
            os.close(self._fd)
            self._fd = -1
