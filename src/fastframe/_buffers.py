"""Byte views of caller buffers, in a shape every interpreter reads fast."""
from __future__ import annotations

from typing import Any


def byte_view(buf: Any) -> memoryview:
    """``buf`` as a flat memoryview of bytes: ``len`` and offsets count bytes.

    A view that already is one is returned uncast. On PyPy (7.3.11, Debian's)
    a slice of a ``cast()`` view is read one byte at a time whenever it is read
    whole: each ``struct.unpack_from``, ``bytes()`` or regex search on it
    copies the whole rest of the buffer, which made decoding a DataBatch
    quadratic there. Slices of an uncast view have no such cost.
    """
    view = memoryview(buf)
    if view.format == "B" and view.ndim == 1 and view.c_contiguous:
        return view
    return view.cast("B")
