"""Deadlines for many connections on a few timers.

A connection's deadline falls into a 0.1 s slot; each slot with a
connection in it has one event-loop timer, and a connection moving to its
next state leaves one slot's set for another's. Re-arming costs no timer
object, so 10,000 idle connections hold 10,000 set entries rather than
10,000 timer handles, and a frame's two deadlines (its body, then the idle
wait after it) create nothing.
"""
from __future__ import annotations

import asyncio
import math
from typing import Dict, Optional, Set

__all__ = ["Deadlines", "RESOLUTION"]

RESOLUTION = 0.1   # seconds: a deadline passes at most this much late


class Deadlines:
    """``arm(who, seconds)`` -> a slot key, to ``disarm(who, key)`` before it passes;
    ``who.deadline_passed()`` is called once it has passed."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._slots: Dict[int, Set[object]] = {}

    def arm(self, who: object, seconds: float) -> int:
        key = math.ceil((self._loop.time() + seconds) / RESOLUTION)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = set()
            self._loop.call_at(key * RESOLUTION, self._fire, key)
        slot.add(who)
        return key

    def disarm(self, who: object, key: Optional[int]) -> None:
        if key is not None:
            slot = self._slots.get(key)
            if slot is not None:
                slot.discard(who)
                if not slot:   # its timer finds nothing; the set goes now, not then
                    del self._slots[key]

    def _fire(self, key: int) -> None:
        for who in self._slots.pop(key, ()):
            who.deadline_passed()  # type: ignore[attr-defined]
