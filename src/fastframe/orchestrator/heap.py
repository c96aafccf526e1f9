"""The server's heap policy under glibc: frames reuse heap memory, the idle server returns it.

By default glibc serves each block of a MiB or so (every frame buffer, every
projected DataBatch) with its own mmap and hands it back with munmap, and
trims the heap's top whenever 128 KiB or more of it is free. The next frame
then touches fresh pages: about 30,000 page faults per 100 MB ingested,
which were 40% of the server's time. Raising both thresholds keeps frame-sized
blocks on the heap and its top in place while traffic flows; ``Heap.trim``
returns the memory once the last connection has gone.

One arena for every thread: ``malloc_trim`` gives back the main arena's top
but not a thread arena's, so with the projection threads' own arenas each
kept up to TRIM_THRESHOLD after the server went idle. The threads allocate
once or twice per frame, so sharing the arena's lock costs nothing measurable.

Elsewhere (musl, macOS, Windows) both are no-ops. A ``MALLOC_*`` or
``GLIBC_TUNABLES`` setting in the environment wins over the policy here.
"""
from __future__ import annotations

import ctypes
import os
import sys
from typing import Any, Optional

__all__ = ["Heap"]

# mallopt parameters (malloc.h) and their values here.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
MMAP_THRESHOLD = 4 * 2**20    # above the largest frame (1 MiB) and its projection
TRIM_THRESHOLD = 16 * 2**20   # free space kept at the heap's top while serving

_OPERATOR_SETTINGS = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                      "GLIBC_TUNABLES")


def _glibc() -> Optional[Any]:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):   # musl and others: nothing to call
        return None
    return libc


class Heap:
    def __init__(self) -> None:
        self._libc = _glibc()

    @property
    def trims(self) -> bool:
        return self._libc is not None

    def keep_frames_on_heap(self) -> None:
        """Called once when the server starts, before its threads allocate."""
        if self._libc is None or any(name in os.environ for name in _OPERATOR_SETTINGS):
            return
        self._libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        self._libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        self._libc.mallopt(_M_ARENA_MAX, 1)

    def trim(self) -> None:
        """``malloc_trim(0)``: every free page back to the system, as after a crowd
        of connections has gone (glibc otherwise keeps them while fragmented)."""
        if self._libc is not None:
            self._libc.malloc_trim(0)
