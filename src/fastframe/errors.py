"""Exceptions shared by both codec implementations.

Defined once, in Python, so the Cython and the pure-Python codec raise the very
same types (``except fastframe.ProtocolError`` works whichever one is loaded).
"""
from __future__ import annotations

from typing import Optional

__all__ = ["ProtocolError", "CsvError"]


class ProtocolError(Exception):
    """Malformed bytes on the wire.

    ``opcode`` is the frame's opcode when it was known at the point of failure,
    else ``None``. When the frame could be delimited, it has been consumed whole,
    so the stream stays aligned on the next frame.
    """

    def __init__(self, message: str, opcode: Optional[int] = None) -> None:
        super().__init__(message)
        self.message = message
        self.opcode = None if opcode is None else int(opcode)  # never an enum member

    def __reduce__(self):  # keep ``opcode`` across pickling (multiprocessing, logging)
        return (type(self), (self.message, self.opcode))


class CsvError(ValueError):
    """A CSV record the client cannot send; ``line`` is where the record starts."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.message = message
        self.line = line

    def __reduce__(self):
        return (type(self), (self.message, self.line))
