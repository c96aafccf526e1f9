"""Exceptions shared by both codec implementations.

Defined once, in Python, so the Cython and the pure-Python codec raise the very
same types (``except fastframe.ProtocolError`` works whichever one is loaded).
"""
from __future__ import annotations

from typing import Optional, Tuple

__all__ = ["ProtocolError", "CsvError"]


class ProtocolError(Exception):
    """Malformed bytes on the wire.

    ``opcode`` is the frame's opcode when it was known at the point of failure,
    else ``None``. ``fatal`` says whether the stream is lost: ``True`` when the
    frame could not be delimited (a bad header: unknown opcode, negative length,
    over the limit), so nothing after it can be read; ``False`` when a
    delimited frame's body was invalid and has been consumed whole, so the
    stream stays aligned on the next frame.
    """

    def __init__(self, message: str, opcode: Optional[int] = None, fatal: bool = False) -> None:
        super().__init__(message)
        self.message: str = message
        self.opcode: Optional[int] = None if opcode is None else int(opcode)  # never an enum
        self.fatal: bool = bool(fatal)

    def __reduce__(self) -> Tuple[type, Tuple[str, Optional[int], bool]]:
        # keep ``opcode`` and ``fatal`` across pickling (multiprocessing, logging)
        return (type(self), (self.message, self.opcode, self.fatal))


class CsvError(ValueError):
    """A CSV record the client cannot send; ``line`` is where the record starts."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.message: str = message
        self.line: int = line

    def __reduce__(self) -> Tuple[type, Tuple[str, int]]:
        return (type(self), (self.message, self.line))
